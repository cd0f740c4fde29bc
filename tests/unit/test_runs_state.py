"""The run number only grows and is never given twice: across ``RunState`` objects, across processes racing for
numbers, after a crash; the state directory is resolved as docs/DAEMON.md says."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from types import SimpleNamespace

import pytest

from ringstream.runs import OutputFolderError, RunState, RunStateError, state_dir_of
from ringstream.runs.state import NUMBER_FILE

pytestmark = pytest.mark.timeout(60)


def test_numbers_grow_across_objects(tmp_path):
    assert RunState(tmp_path / "s").last_number() == 0
    a = RunState(tmp_path / "s")
    assert [a.next_number() for _ in range(3)] == [1, 2, 3]
    b = RunState(tmp_path / "s")  # a restart
    assert b.last_number() == 3 and b.next_number() == 4 and a.next_number() == 5
    assert (tmp_path / "s" / NUMBER_FILE).read_text() == "5\n"
    assert b.next_number(above=10) == 11 and a.next_number() == 12


def test_no_temporary_file_is_left_behind(tmp_path):
    RunState(tmp_path).next_number()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_number", "run_number.lock"]


def test_a_left_temporary_file_does_not_matter(tmp_path):
    """kill -9 between writing the temporary file and renaming it: the old number stands, the next is above it."""
    state = RunState(tmp_path)
    state.next_number()
    (tmp_path / ".run_number.99999.tmp").write_text("7")
    assert state.next_number() == 2


def _take(folder: str, n: int, out) -> None:
    state = RunState(folder)
    out.put([state.next_number() for _ in range(n)])


def test_two_processes_racing_never_share_a_number(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(str(tmp_path), 50, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=50) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    numbers = got[0] + got[1]
    assert len(set(numbers)) == 100 and sorted(numbers) == list(range(1, 101))
    assert all(a < b for a, b in zip(got[0], got[0][1:], strict=False))


def test_a_corrupt_number_file_is_an_error_naming_it(tmp_path):
    (tmp_path / NUMBER_FILE).write_text("seven\n")
    with pytest.raises(RunStateError, match=r"run_number: expected the last run number, got 'seven'") as info:
        RunState(tmp_path).next_number()
    assert info.value.exit_code == 2


def test_a_state_folder_that_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputFolderError, match=r"file/state: state folder cannot be created or written \(Not a "):
        RunState(blocker / "state").next_number()


def cfg(output_h5: str = "ringstream.h5", state_dir: str = "") -> SimpleNamespace:
    return SimpleNamespace(output_h5=output_h5, state_dir=state_dir)


@pytest.mark.parametrize(
    ("run", "environ", "expected"),
    [
        (cfg(state_dir="/srv/state"), {"STATE_DIRECTORY": "/var/lib/x"}, "/srv/state"),
        (cfg(), {"STATE_DIRECTORY": "/var/lib/ringstream/beamline"}, "/var/lib/ringstream/beamline"),
        (cfg(), {"STATE_DIRECTORY": "/var/lib/ringstream:/var/lib/ringstream/beamline"},
         "/var/lib/ringstream/beamline"),
        (cfg("/data/ringstream/{date}/run_{run:05d}.h5"), {}, "/data/ringstream/.ringstream"),
        (cfg("run_{run}.h5"), {}, ".ringstream"),
        (cfg("out/ringstream.h5"), {"STATE_DIRECTORY": ""}, "out/.ringstream"),
    ],
)
def test_state_dir_resolution(run, environ, expected):
    assert state_dir_of(run, environ) == Path(expected)

"""The omega-sum groups named beside the run (ringstream/writer/namer.py): a process names them in a file of its own
while the run goes on, and the close copies them in whole; the datasets are those the close makes itself, and
anything that goes wrong (the process dies, the writer dies) leaves the close to name them and no file behind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from outputs_common import N_PEAKS, make, records

from ringstream.writer import namer, repair
from ringstream.writer.outputs import RunOutputs

pytestmark = pytest.mark.timeout(120)


def _run(path, imap, p, n: int, every: int = 10, during=None) -> RunOutputs:
    out = RunOutputs(path, imap, p, engine_name="cpu", n_peaks=N_PEAKS, expected_frames=n)
    for k, r in enumerate(records(n, imap, seed=5)):
        out.append(r)
        if (k + 1) % every == 0:
            out.flush()
            if during is not None:
                during(out, k + 1)
    return out


def _named(path) -> dict:
    """Each named dataset: (its values, its attributes, its source's selection)."""
    with h5py.File(path) as f:
        o = f["entry/omega_sum"]
        got = {}
        for name, d in o["named"].items():
            assert d.is_virtual
            (src,) = d.virtual_sources()
            assert (src.file_name, src.dset_name) == (".", "/entry/omega_sum/I")
            g = src.src_space.get_select_bounds()[0][0]
            np.testing.assert_array_equal(d[...], o["I"][g])
            got[name] = (g, dict(d.attrs))
        return got


def test_groups_named_beside_the_run_are_copied_in_and_equal_the_ones_the_close_makes(tmp_path, monkeypatch):
    p, imap = make("OmegaSumFrames 1\n")
    copied = []
    copy = repair._copy_named
    monkeypatch.setattr(repair, "_copy_named", lambda *a: copied.append(copy(*a)) or copied[-1])
    monkeypatch.setattr(namer, "MIN_GROUPS", 10**9)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run(tmp_path / "a" / "at_close.h5", imap, p, 45).close(True)
    assert copied == []
    monkeypatch.setattr(namer, "MIN_GROUPS", 15)  # started at the second flush, with the groups before it
    seen = []
    out = _run(tmp_path / "b" / "beside.h5", imap, p, 45, during=lambda o, k: seen.append(o.h5._namer is not None))
    assert seen == [False, True, True, True]
    out.close(True)
    assert copied == [True]
    want = _named(tmp_path / "a" / "at_close.h5")
    assert len(want) == 45 and _named(tmp_path / "b" / "beside.h5") == want
    assert not list(tmp_path.glob("*/.*naming*"))


def test_a_naming_process_that_dies_leaves_the_close_to_name_the_groups(tmp_path, monkeypatch, caplog):
    p, imap = make("OmegaSumFrames 1\n")
    monkeypatch.setattr(namer, "MIN_GROUPS", 5)

    def kill(out, k):
        if k == 20:
            out.h5._namer._proc.kill()

    out = _run(tmp_path / "d.h5", imap, p, 40, during=kill)
    with caplog.at_level(logging.WARNING, logger="ringstream.writer.namer"):
        out.close(True)
    assert "they are named at the close" in caplog.text
    named = _named(tmp_path / "d.h5")
    assert sorted(g for g, _ in named.values()) == list(range(40))
    assert not list(tmp_path.glob(".*naming*"))


KILLED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from outputs_common import N_PEAKS, make, records
    from ringstream.writer import namer
    from ringstream.writer.outputs import RunOutputs
    namer.MIN_GROUPS = 5
    p, imap = make("OmegaSumFrames 1\\n")
    out = RunOutputs(sys.argv[1], imap, p, engine_name="cpu", n_peaks=N_PEAKS)
    for r in records(30, imap):
        out.append(r)
    out.flush()
    print(out.h5._namer._proc.pid, out.h5._namer.scratch, flush=True)
    os._exit(9)
""")


def test_a_writer_killed_while_the_groups_are_named_beside_it_leaves_no_file(tmp_path):
    """The writer dies (its process ends at once): the naming process sees its input end without the last message,
    removes its file and exits; a file left by both dying at once goes at the next start of that output."""
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "k.h5"), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    pid, scratch = proc.stdout.split()
    deadline = time.monotonic() + 20
    while (os.path.exists(scratch) or _alive(int(pid))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(scratch) and not _alive(int(pid))

    from ringstream.writer.hdf5 import Hdf5Writer

    left = tmp_path / ".n.h5.naming-999999999"  # (no such process)
    left.write_bytes(b"left by a writer and its naming process, both killed")
    p, imap = make("OmegaSumFrames 1\n")
    Hdf5Writer(tmp_path / "n.h5", imap, p, engine_name="cpu", write_2d=False).close()
    assert not left.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # (a zombie: exited, not reaped yet by its dead parent's reaper)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_the_naming_process_names_nothing_it_was_not_told_to_end(tmp_path):
    """Its input ends without the writer's last message (or with another count): exit 2, its file removed."""
    scratch = tmp_path / ".x.h5.naming-1"
    import msgpack

    batch = msgpack.packb({"rows": [0, 1], "names": ["a", "b"], "n_frames": [1, 1], "last_frame": [0, 1],
                           "first_omega": [0.0, 1.0], "last_omega": [0.0, 1.0]})
    for tail in (b"", msgpack.packb({"end": 3})):
        proc = subprocess.run([sys.executable, "-m", "ringstream.writer.namer", str(scratch), "4", "3", "<f4"],
                              input=batch + tail, capture_output=True, timeout=60)
        assert proc.returncode == 2 and not scratch.exists()
    proc = subprocess.run([sys.executable, "-m", "ringstream.writer.namer", str(scratch), "4", "3", "<f4"],
                          input=batch + msgpack.packb({"end": 2}), capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == b"2"
    with h5py.File(scratch) as f:
        assert sorted(f["entry/omega_sum/named"]) == ["a", "b"]
        assert f["entry/omega_sum/named/b"].attrs["LastOme"] == 1.0


def test_a_kill_while_the_names_are_copied_in_spoils_nothing_but_the_names(tmp_path, monkeypatch):
    """As when the close names the groups itself (test_outputs_sinks.py): a process killed at any moment of the
    copy leaves every row readable and equal, and the next naming (a repair's) gives every name."""
    import random
    import shutil

    p, imap = make("OmegaSumFrames 1\n")
    monkeypatch.setattr(namer, "MIN_GROUPS", 5)
    kept = []
    monkeypatch.setattr(repair, "link_omega_groups", lambda path, prepared=None: kept.append(shutil.copy(
        prepared, tmp_path / "prepared.h5")) and 0)  # the run closed, its groups named beside it, not copied in
    _run(tmp_path / "run.h5", imap, p, 300, every=50).close(True)
    monkeypatch.undo()
    assert len(kept) == 1
    with h5py.File(tmp_path / "run.h5", "r") as f:
        want = {k: f["entry/omega_sum"][k][...] for k in ("I", "n_frames", "name")}
    rng = random.Random(8)
    for trial in range(25):
        path = tmp_path / f"t{trial}.h5"
        shutil.copy(tmp_path / "run.h5", path)
        pid = os.fork()
        if pid == 0:  # (the child copies the names in until it is killed)
            try:
                repair.link_omega_groups(path, tmp_path / "prepared.h5")
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        repair.clear_status_flags(path)
        with h5py.File(path, "r") as f:
            for k, v in want.items():
                np.testing.assert_array_equal(f["entry/omega_sum"][k][...], v)
        assert repair.link_omega_groups(path) == 300
        named = _named(path)
        assert sorted(named) == sorted(v.decode() for v in want["name"])
        path.unlink()


def test_a_stop_sent_to_the_process_group_leaves_the_naming_to_finish(tmp_path, monkeypatch):
    """SIGTERM (and SIGINT) to the naming process, as a stop to the daemon's whole process group sends it: ignored;
    the writer's close still gets every name made beside the run."""
    p, imap = make("OmegaSumFrames 1\n")
    monkeypatch.setattr(namer, "MIN_GROUPS", 5)
    copied = []
    copy = repair._copy_named
    monkeypatch.setattr(repair, "_copy_named", lambda *a: copied.append(copy(*a)) or copied[-1])

    def stop(out, k):
        if k == 20:
            for sig in (2, 15):
                os.kill(out.h5._namer._proc.pid, sig)

    out = _run(tmp_path / "s.h5", imap, p, 40, during=stop)
    out.close(True)
    assert copied == [True] and len(_named(tmp_path / "s.h5")) == 40

"""Stop signals and the supervisor's death, with real processes (docs/DAEMON.md, "Stopping the daemon").

SIGTERM, SIGINT and SIGHUP sent to the daemon's whole process group (a shell's ``kill %1``, a closed terminal,
systemd's control-group kill) drain like one SIGTERM to the supervisor: exit 0, the file complete, every frame the
ingest accepted written once, in order. Two of them stop at once (exit 128 + the signal). A ``kill -9`` of the
supervisor takes every child with it within 2 s (their parent-death signal), and the next start leaves no ring of
the first daemon in ``/dev/shm``. Below the daemon: a process set up by ``child_setup`` ignores the stop signals
while its parent lives, ends on the stop-now signal and when its parent dies, its ``finally`` blocks run each time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_daemon import daemons, read_output, write_params  # noqa: F401  (daemons is a fixture)

from ringstream.transport import child as child_module
from ringstream.transport.child import STOP_NOW_SIGNAL, child_setup, end_with_supervisor, stop_now
from ringstream.transport.shm_ring import SHM_DIR

SPAWN = multiprocessing.get_context("spawn")
#: a daemon at this rate is still running when the signal comes
RATE = 100
#: how long the children of a killed supervisor may take to end, s
ORPHAN_DEADLINE_S = 2.0


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def rings_of(pid: int) -> list[str]:
    """The frame rings in /dev/shm that process ``pid`` created (``ringstream-<pid>-<hex>``)."""
    return [name for name in os.listdir(SHM_DIR) if name.startswith(f"ringstream-{pid}-")]


def start_endless(start, tmp_path: Path):
    params = write_params(tmp_path)
    d = start(["--param-file", params, "--simulate", 0, "--rate", RATE, "--workers", 2, "--output-h5", "out.h5"],
                tmp_path)
    d.wait_ready()
    return d


# ------------------------------------------------------------------------------------------- the daemon


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_to_the_whole_group_drains(tmp_path, daemons, sig):  # noqa: F811
    d = start_endless(daemons, tmp_path)
    d.wait_written(30)  # mid-run: frames written and more coming
    os.killpg(d.proc.pid, sig)  # the supervisor, the children and the resource tracker, all at once
    assert d.wait(30) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    out = read_output(tmp_path / "out.h5")
    assert out["run_complete"], d.stderr
    assert out["frames_written"] == out["I"].shape[0] == written == integrated > 30
    assert rejected == 0 and dropped == 0
    assert received - written <= 1  # at most the one frame the pacer held when the stop came
    np.testing.assert_array_equal(out["frame_index"], np.arange(written))  # each frame once, in order
    assert f"{sig.name}: draining" in d.stderr
    assert "died" not in d.stderr and "Traceback" not in d.stderr, d.stderr


@pytest.mark.timeout(60)
def test_two_sighups_stop_at_once_with_129(tmp_path, daemons):  # noqa: F811
    d = start_endless(daemons, tmp_path)
    d.wait_written(10)
    os.killpg(d.proc.pid, signal.SIGHUP)
    # the second once the first is handled (two pending at once are one), during the drain (the writer closes its
    # files, then the supervisor joins every child: some tenths of a second)
    d.line_time(r"SIGHUP: draining")
    os.killpg(d.proc.pid, signal.SIGHUP)
    assert d.wait(30) == 129, d.stderr
    assert "SIGHUP: stopping now" in d.stderr or "SIGHUP while stopping: stopping now" in d.stderr, d.stderr
    assert "died" not in d.stderr, d.stderr
    out = read_output(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["frame_index"], np.unique(out["frame_index"]))  # nothing twice


@pytest.mark.timeout(90)
def test_kill_9_of_the_supervisor_ends_every_child(tmp_path, daemons):  # noqa: F811
    d = start_endless(daemons, tmp_path)
    st = d.wait_written(10)
    children = {name: c["pid"] for name, c in st["children"].items()}
    members = group_members(d.proc.pid)  # the children and multiprocessing's resource tracker
    assert set(children.values()) <= set(members), (children, members)
    ingest = children["ingest"]
    assert rings_of(ingest), os.listdir(SHM_DIR)
    # each child is named for its role, as top and ps -o comm show it
    names = {name: Path(f"/proc/{pid}/comm").read_text().strip() for name, pid in children.items()}
    assert names == {name: f"rs-{name}" for name in children}, names
    os.kill(d.proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    d.wait(10)
    while any(running(pid) for pid in members) and time.monotonic() - t_kill < 10:
        time.sleep(0.02)
    took = time.monotonic() - t_kill
    left = [pid for pid in members if running(pid)]
    assert not left, f"still running {took:.1f} s after the kill: {left}\n{d.stderr}"
    assert took < ORPHAN_DEADLINE_S, f"the children took {took:.2f} s to end\n{d.stderr}"
    print(f"every child ended {took:.3f} s after the supervisor's kill -9")
    # the next start in the same folder: no ring of the first daemon is left
    again = daemons(["--param-file", tmp_path / "setup.txt", "--simulate", 20, "--output-h5", "out.h5"], tmp_path)
    assert again.wait(60) == 0, again.stderr
    assert not rings_of(ingest), os.listdir(SHM_DIR)


# ------------------------------------------------------------------------------------------- one child


CONFIG = SimpleNamespace(logging=SimpleNamespace(level="WARNING"))  # what child_setup reads of the configuration


def supervised(ready, marker: str, without_prctl: bool = False) -> None:
    """A child as the roles run: set up by child_setup, then a loop; its ``finally`` leaves ``marker``.
    ``without_prctl``: as where there is no prctl (the thread watching the parent's pipe)."""
    if without_prctl:
        child_module._set_parent_death_signal = lambda sig: False
    child_setup(CONFIG, "test-child")
    try:
        ready.set()
        while True:
            time.sleep(0.02)
    finally:
        Path(marker).write_text("finally ran")


def middle(pid, ready, marker: str, without_prctl: bool) -> None:
    """A stand-in supervisor: starts :func:`supervised`, tells its pid, waits."""
    proc = SPAWN.Process(target=supervised, args=(ready, marker, without_prctl))
    proc.start()
    pid.value = proc.pid
    proc.join()


@pytest.mark.timeout(60)
def test_a_child_ignores_stop_signals_while_its_parent_lives_and_ends_on_stop_now(tmp_path):
    ready, marker = SPAWN.Event(), tmp_path / "marker"
    child = SPAWN.Process(target=supervised, args=(ready, str(marker)))
    child.start()
    try:
        assert ready.wait(30)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(child.pid, sig)
        child.join(0.5)
        assert child.is_alive() and not marker.exists()
        stop_now(child)
        child.join(10)
        assert child.exitcode == 128 + STOP_NOW_SIGNAL
        assert marker.read_text() == "finally ran"
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("without_prctl", [False, True], ids=["prctl", "pipe"])
def test_a_child_ends_when_its_parent_is_killed(tmp_path, without_prctl):
    pid, ready, marker = SPAWN.Value("i", 0), SPAWN.Event(), tmp_path / "marker"
    parent = SPAWN.Process(target=middle, args=(pid, ready, str(marker), without_prctl))
    parent.start()
    try:
        assert ready.wait(30)
        os.kill(parent.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        parent.join(10)
        while running(pid.value) and time.monotonic() - t_kill < 10:
            time.sleep(0.02)
        took = time.monotonic() - t_kill
        assert not running(pid.value), "the child outlived its parent"
        assert took < ORPHAN_DEADLINE_S, f"the child took {took:.2f} s to end"
        assert marker.read_text() == "finally ran"
    finally:
        if pid.value and running(pid.value):
            os.kill(pid.value, signal.SIGKILL)
        if parent.is_alive():
            parent.kill()
            parent.join(5)


def exits_unless_its_parent_is(supervisor: int) -> None:
    end_with_supervisor(supervisor)
    time.sleep(30)  # never reached when the parent is not ``supervisor``


@pytest.mark.timeout(60)
def test_a_child_whose_supervisor_is_already_gone_ends_at_once():
    """The supervisor may die before the child asks for its parent-death signal: the child checks, and ends."""
    child = SPAWN.Process(target=exits_unless_its_parent_is, args=(os.getpid() + 1_000_000,))
    child.start()
    child.join(20)
    assert child.exitcode == 128 + signal.SIGTERM

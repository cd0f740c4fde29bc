"""A worker killed mid-run is replaced and loses nothing (docs/DAEMON.md, "Delivery"): the real daemon, CPU engine,
2 workers, the simulated source; ``kill -9`` of a random worker at a random moment.

Every run must end with exit 0, every frame in the HDF5 exactly once and in order, lineouts equal to the reference
engine's, and each omega-sum group (4 frames; the workers send partial sums, ``Write2D 0``) equal to the sum of the
reference cakes of its frames: a frame counted twice or lost in a partial sum would show there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from common import SMALL_PARAMS, simulated_reference
from test_daemon import NY, NZ, daemons  # noqa: F401  (daemons: the fixture)

from ringstream.daemon.status import format_status

N_FRAMES = 240
RATE = 120.0
OSF = 4
REPEATS = int(os.environ.get("RS_REPEATS", 20))


def _params(folder: Path) -> Path:
    path = folder / "setup.txt"
    path.write_text(SMALL_PARAMS.format(nz=NZ, ny=NY) + f"OmegaSumFrames {OSF}\n")
    return path


def _reference(params: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    return simulated_reference(params, n)


def _check_file(path: Path, lineouts: np.ndarray, cakes: np.ndarray, groups: int | None = None) -> dict:
    n = lineouts.shape[0]
    groups = n // OSF if groups is None else groups
    with h5py.File(path, "r") as f:
        e = f["/entry"]
        assert bool(e.attrs["run_complete"]) and int(e.attrs["frames_written"]) == n
        np.testing.assert_array_equal(e["data/frame_index"][()], np.arange(n))  # each frame once, in order
        ref = lineouts.astype(np.float32)
        np.testing.assert_allclose(e["data/I"][()], ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))
        sums, counts = e["omega_sum/I"][()], e["omega_sum/n_frames"][()]
        counters = json.loads(e["reduction/source_counters"][()])
    assert list(counts[:groups]) == [OSF] * groups and len(counts) == -(-n // OSF)
    # the workers sum float32 cakes in float64: the group sums agree with the reference's to float32 rounding
    whole = cakes[:groups * OSF].astype(np.float32).astype(np.float64)
    expected = whole.reshape(groups, OSF, *cakes.shape[1:]).sum(axis=1)
    np.testing.assert_allclose(sums[:groups], expected, rtol=1e-6, atol=1e-6 * float(np.abs(expected).max()))
    return counters


def _kill_run(tmp: Path, daemons, rnd: random.Random, lineouts, cakes, params: Path) -> dict:  # noqa: F811
    tmp.mkdir()
    d = daemons(["--param-file", params, "--simulate", N_FRAMES, "--rate", RATE, "--workers", 2, "--engine", "cpu",
                 "--output-h5", "out.h5"], tmp)
    d.wait_ready()
    d.wait_written(rnd.randint(5, N_FRAMES // 2))
    victim = f"worker-{rnd.randint(0, 1)}"
    time.sleep(rnd.uniform(0.0, 0.3))
    after = kill_timed(d, victim)
    assert after < 2.0, f"replaced after {after:.2f} s"
    rc = d.wait(60)
    assert rc == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written == N_FRAMES and rejected == dropped == 0, d.stderr
    assert "worker restarts 1," in d.stderr
    counters = _check_file(tmp / "out.h5", lineouts, cakes)
    assert counters.get("workers_lost") == 1, counters
    return {"resent": counters.get("resent", 0), "replaced_after_s": after}


@pytest.mark.timeout(900)
def test_kill_9_of_a_random_worker_loses_nothing(tmp_path, daemons):  # noqa: F811
    params = _params(tmp_path)
    lineouts, cakes = _reference(params, N_FRAMES)
    # two daemons at a time (each run's moments from its own seed), so that 20 runs fit the suite's time
    with ThreadPoolExecutor(max_workers=2) as pool:
        seen = list(pool.map(lambda k: _kill_run(tmp_path / f"rep{k}", daemons, random.Random(1500 + k), lineouts,
                                                 cakes, params), range(REPEATS)))
    print("re-sent per run:", [s["resent"] for s in seen],
          "replaced after (s):", [round(s["replaced_after_s"], 2) for s in seen])
    # the dead worker held frames in most runs (a worker of two holds some at 120 frames/s): they were re-sent
    assert sum(s["resent"] for s in seen) > 0


def kill_mid_run(d, name: str, written: int, drain: bool) -> None:
    """Once ``written`` frames are written (and, with ``drain``, the daemon told to drain by SIGTERM), ``kill -9`` of
    process ``name``; returns when the supervisor has said it is replaced."""
    d.wait_ready()
    d.wait_written(written)
    if drain:
        os.kill(d.proc.pid, signal.SIGTERM)
        d.line_time("draining")
    kill_timed(d, name)


def kill_timed(d, name: str) -> float:
    """``kill -9`` of process ``name`` of the daemon ``d``: seconds until the supervisor says it is replaced."""
    pid = d.status()["children"][name]["pid"]
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    return d.line_time(rf"{name} \(pid {pid}\) died: killed by signal 9; replaced by pid") - t_kill


def keeps_dying(tmp_path: Path, daemons, name: str, workers: int) -> None:  # noqa: F811
    """Kill process ``name`` (``worker-0``, ``writer``) of a running daemon 5 times, each replacement once it is
    alive: the fifth death stops the daemon with exit 5 and one line naming it and the cause."""
    params = _params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 100, "--workers", workers, "--engine", "cpu",
                 "--output-h5", "out.h5"], tmp_path)
    d.wait_ready()
    killed = []
    while d.proc.poll() is None and len(killed) < 5:
        st = d.wait_status(lambda s: s["children"].get(name, {}).get("pid") not in killed
                           and s["children"][name]["alive"], f"a live {name}", 30)
        pid = st["children"][name]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        d.line_time(rf"{name} \(pid {pid}\) died|{name} keeps dying", 10)
    assert d.wait(60) == 5, d.stderr
    assert f"{name} keeps dying: 5 times in 60 s (last: killed by signal 9)" in d.stderr
    assert len(killed) == 5


@pytest.mark.timeout(120)
def test_a_worker_that_keeps_dying_stops_the_daemon(tmp_path, daemons):  # noqa: F811
    keeps_dying(tmp_path, daemons, "worker-0", workers=2)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["inline", "cakes", "drain"])
def test_kill_9_of_a_worker_in_other_settings(tmp_path, daemons, variant):  # noqa: F811
    """Frames inline (no ring: the ingest keeps their pixels until acknowledged), cakes per frame (``Write2D 1``:
    acknowledged on the Result alone) and a worker killed while the daemon drains after SIGTERM."""
    params = _params(tmp_path)
    if variant == "cakes":
        params.write_text(params.read_text() + "Write2D 1\n")
    args = ["--param-file", params, "--simulate", 0 if variant == "drain" else N_FRAMES, "--rate", RATE,
            "--workers", 2, "--engine", "cpu", "--output-h5", "out.h5"] + (["--no-shm"] if variant == "inline" else [])
    d = daemons(args, tmp_path)
    kill_mid_run(d, "worker-1", 60, drain=variant == "drain")
    if variant != "drain":  # the status counts the restart while the run goes on
        st = d.wait_status(lambda st: st["totals"]["worker_restarts"] == 1, "the restart in the status")
        assert "worker restarts 1, writer restarts 0, ingest restarts 0, re-sent" in format_status(st)
    assert d.wait(60) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written and rejected == dropped == 0, d.stderr
    n = received
    if variant != "drain":
        assert n == N_FRAMES
    n_whole = n - n % OSF  # the last, shorter group of a drained run is checked by its frames alone
    lineouts, cakes = _reference(params, n)
    counters = _check_file(tmp_path / "out.h5", lineouts, cakes, groups=n_whole // OSF)
    assert counters.get("workers_lost") == 1, counters
    if variant == "cakes":
        with h5py.File(tmp_path / "out.h5", "r") as f:
            ref = cakes.astype(np.float32)
            np.testing.assert_allclose(f["/cake/data/I"][()].transpose(0, 2, 1), ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))

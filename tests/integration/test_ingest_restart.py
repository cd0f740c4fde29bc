"""The ingest killed mid-run is replaced and resumes (docs/DAEMON.md, "Delivery"): the real daemon, CPU engine,
2 workers, a folder of small files (single images and 3-frame stacks), ``kill -9`` of the ingest at a random
moment.

Every run must end with exit 0 and every file's frames in the HDF5 exactly once, in order (the source ids name
them), with lineouts equal to the reference engine's on the pixels written, ``run_complete`` true and the restart
counted in the final line and in the run's ``source_counters``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import test_daemon
from test_folder import PARAMS, make_old, reference

daemons = test_daemon.daemons  # the fixture that starts daemons and fails a test that leaks a process

N_FILES = 120
STACK_EVERY = 10  # every 10th file is a stack of 3 frames
RATE = 60.0
REPEATS = int(os.environ.get("RS_REPEATS", 5))


def _folder(tmp: Path) -> tuple[Path, Path, list[str], list[np.ndarray]]:
    """The parameters, a folder of old .npy files, the source ids in order and their pixels."""
    tmp.mkdir()
    params = tmp / "setup.txt"
    params.write_text(PARAMS)
    folder = tmp / "in"
    folder.mkdir()
    rng = np.random.default_rng(len(str(tmp)))
    ids, pixels = [], []
    for i in range(N_FILES):
        n = 3 if i % STACK_EVERY == 5 else 1
        data = rng.integers(0, 2**15, size=(n, 32, 32), dtype=np.int32)
        name = f"img_{i}.npy"
        np.save(folder / name, data if n > 1 else data[0])
        ids += [name] if n == 1 else [f"{name}:{k}" for k in range(n)]
        pixels += list(data)
    make_old(*folder.iterdir())
    return params, folder, ids, pixels


def _kill_run(tmp: Path, daemons, rnd: random.Random) -> dict:  # noqa: F811
    params, folder, ids, pixels = _folder(tmp)
    d = daemons(["--param-file", params, "--folder", folder, "--count", N_FILES, "--rate", RATE, "--workers", 2,
                 "--engine", "cpu", "--output-h5", "out.h5"], tmp)
    d.wait_ready()
    d.wait_written(rnd.randint(3, len(ids) // 2))
    time.sleep(rnd.uniform(0.0, 0.3))
    pid = d.status()["children"]["ingest"]["pid"]
    os.kill(pid, signal.SIGKILL)
    d.line_time(rf"ingest \(pid {pid}\) died: killed by signal 9; replaced by pid")
    rc = d.wait(90)
    assert rc == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert written == len(ids) and rejected == dropped == 0, d.stderr
    assert "ingest restarts 1," in d.stderr
    with h5py.File(tmp / "out.h5", "r") as f:
        data = f["/entry/data"]
        got_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in data["source_id"][()]]
        assert bool(data["I"].attrs["run_complete"])
        np.testing.assert_array_equal(data["frame_index"][()], np.arange(len(ids)))
        lineouts = data["I"][()]
        counters = json.loads(f["/entry/reduction/source_counters"][()])
    assert got_ids == ids  # every file's frames once, in order
    np.testing.assert_array_equal(lineouts, reference(params, pixels))
    assert counters.get("ingest_restarts") == 1, counters
    return {"resent": counters.get("resent", 0)}


@pytest.mark.timeout(600)
def test_kill_9_of_the_ingest_with_a_folder_source_every_file_once(tmp_path, daemons):  # noqa: F811
    rnd = random.Random(4)
    seen = [_kill_run(tmp_path / f"rep{k}", daemons, rnd) for k in range(REPEATS)]
    print("re-sent per run:", [s["resent"] for s in seen])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", ["simulated", "inline", "drain"])
def test_kill_9_of_the_ingest_with_the_simulated_source(tmp_path, daemons, variant):  # noqa: F811
    """The simulated source makes the frames the writer lacks again (through the ring, or inline); killed while
    the daemon drains (after SIGTERM), the replacement sends what is missing and ends the stream."""
    params = test_daemon.write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0 if variant == "drain" else 240, "--rate", 120,
                 "--workers", 2, "--engine", "cpu", "--output-h5", "out.h5"]
                + (["--no-shm"] if variant == "inline" else []), tmp_path)
    d.wait_ready()
    d.wait_written(60)
    if variant == "drain":
        os.kill(d.proc.pid, signal.SIGTERM)
        d.line_time("draining")
    pid = d.status()["children"]["ingest"]["pid"]
    os.kill(pid, signal.SIGKILL)
    d.line_time(rf"ingest \(pid {pid}\) died: killed by signal 9; replaced by pid")
    assert d.wait(60) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written and rejected == dropped == 0, d.stderr
    if variant != "drain":
        assert written == 240
    assert "ingest restarts 1," in d.stderr
    out = test_daemon.read_output(tmp_path / "out.h5")
    assert out["run_complete"]
    test_daemon.assert_equals_reference(out, params, written)

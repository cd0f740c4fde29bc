"""A GPU worker, or the writer of GPU workers, killed mid-run loses nothing (docs/DAEMON.md, "Delivery"): the real
daemon, GPU engine, 2 workers with batches in flight and omega sums on the device (``Write2D 0``, 7 frames a group);
``kill -9`` of a random worker (or of the writer) at a random moment. The file holds every frame once, in order;
lineouts and group sums agree with the reference engine's; the dead worker's frames were sent again (the writer's
replacement got again what the workers kept)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import simulated_reference  # noqa: E402
from test_daemon import Daemon  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402

PARAMS = OUTPUTS_PARAMS + "Write2D 0\nOmegaSumFrames 7\n"  # the 40 x 36 detector of test_outputs.py
N = 1400
OSF = 7


@pytest.mark.parametrize("kind", ["worker", "writer"])
def test_kill_9_of_a_gpu_worker_or_the_writer_loses_nothing(tmp_path, kind):
    params = tmp_path / "setup.txt"
    params.write_text(PARAMS)
    lineouts, cakes = simulated_reference(params, N)
    cakes = cakes.astype(np.float32).astype(np.float64)
    rnd = random.Random(17)
    resent = []
    for rep in range(5):
        run = tmp_path / f"rep{rep}"
        run.mkdir()
        d = Daemon(["--param-file", params, "--simulate", N, "--rate", 700, "--workers", 2, "--engine", "gpu",
                    "--output-h5", "out.h5", "--no-zarr"], run)
        try:
            d.wait_ready(120)
            d.wait_written(rnd.randint(50, N // 2), 60)
            victim = f"worker-{rnd.randint(0, 1)}" if kind == "worker" else "writer"
            pid = d.status()["children"][victim]["pid"]
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            t_line = d.line_time(rf"{victim} \(pid {pid}\) died: killed by signal 9; replaced by pid", 10)
            assert t_line - t_kill < 2.0
            rc = d.wait(180)
        finally:
            if d.proc.poll() is None:
                os.killpg(d.proc.pid, signal.SIGKILL)
                d.proc.wait(10)
        assert rc == 0, d.stderr
        with h5py.File(run / "out.h5") as f:
            e = f["entry"]
            assert bool(e.attrs["run_complete"]) and "gpu" in str(e["reduction/engine"][()])
            np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(N))
            ref = lineouts.astype(np.float32)
            np.testing.assert_allclose(e["data/I"][:], ref, rtol=2e-6, atol=1e-6 * float(np.abs(ref).max()))
            o = e["omega_sum"]
            groups = (N + OSF - 1) // OSF
            assert list(o["n_frames"][:]) == [OSF] * (groups - 1) + [N - OSF * (groups - 1)]
            for g in range(groups):
                want = cakes[OSF * g:OSF * g + OSF].sum(axis=0)
                np.testing.assert_allclose(o["I"][g], want, rtol=2e-6, atol=1e-6 * np.abs(want).max())
            counters = json.loads(e["reduction/source_counters"][()])
        if kind == "writer":
            assert "writer restarts 1," in d.stderr
            resent.append(d.stderr.count("kept messages again"))
            continue
        assert counters["workers_lost"] == 1, counters
        resent.append(counters.get("resent", 0))
    print(f"{kind}: re-sent per run:", resent)
    assert sum(resent) > 0

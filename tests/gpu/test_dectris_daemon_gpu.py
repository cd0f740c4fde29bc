"""The real daemon with GPU workers on a DECTRIS Stream V2 feed (issue 18): ``ringstream dectris-sim`` serves the
same frames three times, uncompressed, bslz4 and lz4 (16- then 32-bit); the bslz4 and lz4 series travel compressed
through the ring and are decoded on the device, and their lineouts are the uncompressed series', bit for bit; each
series is one file with every image once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import NY, NZ, ringstream_command  # noqa: E402
from test_daemon import Daemon, write_params  # noqa: E402

from ringstream.runs.index import RunIndex  # noqa: E402
from ringstream.transport.endpoints import free_tcp_port  # noqa: E402

pytestmark = pytest.mark.timeout(300)
IMAGES = 40


def test_compressed_series_give_the_uncompressed_lineouts_on_the_gpu(tmp_path):
    params = write_params(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    d = Daemon(["--param-file", params, "--dectris-stream", endpoint, "--workers", 2, "--engine", "gpu",
                "--no-zarr", "--output-h5", "s_{run:03d}.h5"], tmp_path)
    try:
        d.wait_ready(120)
        for k, (dtype, scale) in enumerate((("uint16", 3.0), ("uint32", 5.0e5))):
            np.save(tmp_path / f"{dtype}.npy", np.random.default_rng(k).poisson(scale, (IMAGES, NZ, NY)).astype(dtype))
            done = subprocess.run(ringstream_command() + [
                "dectris-sim", "--bind", endpoint, "--stack", f"{dtype}.npy", "--images", str(IMAGES), "--series", "3",
                "--codec", "none", "--codec", "bslz4", "--codec", "lz4", "--send-timeout", "60"],
                cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            d.wait_status(lambda s, n=3 * (k + 1): s["runs"].get("complete", 0) >= n, f"the {dtype} series", 60)
        os.kill(d.proc.pid, signal.SIGTERM)
        assert d.wait(120) == 0, d.stderr
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    runs = RunIndex.in_state_dir(tmp_path / ".ringstream").runs()
    assert len(runs) == 6 and all(r["status"] == "complete" for r in runs), runs
    lineouts = []
    for r in runs:
        with h5py.File(tmp_path / r["files"]["h5"], "r") as f:
            ids = [int(s) for s in f["/entry/data/source_id"].asstr()[()]]
            assert ids == list(range(IMAGES))
            lineouts.append(f["/entry/data/I"][()])
    for k in (0, 3):
        np.testing.assert_array_equal(lineouts[k + 1], lineouts[k], err_msg="bslz4")
        np.testing.assert_array_equal(lineouts[k + 2], lineouts[k], err_msg="lz4")
    assert d.counts()[3:] == (0, 0)  # nothing rejected or dropped

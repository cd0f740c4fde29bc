"""The real daemon with GPU workers (the pipelined loop, batches in flight) on DECTRIS series with and without the
detector's pixel mask (issue 18, ``[source] dectris_pixel_mask``): the workers switch map at each series' first
frame, after finishing what is in flight. The masked series equal the reference engine's integration with the mask as
MaskFile, the unmasked ones without it, within the GPU engine's tolerance; nothing is rejected."""

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
from test_daemon import Daemon, end_group, write_params  # noqa: E402
from test_dectris_stream import reference, sim_mask  # noqa: E402

from ringstream.runs.index import RunIndex  # noqa: E402
from ringstream.transport.endpoints import free_tcp_port  # noqa: E402

pytestmark = pytest.mark.timeout(300)
IMAGES = 64
RTOL = 1e-5  # the GPU engine's written tolerance against the reference (tests/gpu/test_cupy_engine.py)


def test_series_switch_between_masked_and_unmasked_maps_on_the_gpu(tmp_path):
    params = write_params(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    (tmp_path / "mask.toml").write_text("[source]\ndectris_pixel_mask = true\n")
    d = Daemon(["--config", tmp_path / "mask.toml", "--param-file", params, "--dectris-stream", endpoint, "--workers",
                2, "--engine", "gpu", "--no-zarr", "--output-h5", "s_{run:03d}.h5"], tmp_path)
    frames = np.random.default_rng(3).poisson(3000.0, (IMAGES, NZ, NY)).astype("uint16")
    np.save(tmp_path / "f.npy", frames)
    masked = []
    try:
        d.wait_ready(120)
        for k, mask in enumerate((True, False, True, False)):
            done = subprocess.run(ringstream_command() + [
                "dectris-sim", "--bind", endpoint, "--stack", "f.npy", "--images", str(IMAGES), "--series", "1",
                "--series-id", str(k + 1), "--codec", "bslz4", "--rate", "100", "--send-timeout", "60",
                *(["--pixel-mask"] if mask else [])], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            masked.append(mask)
            d.wait_status(lambda s, n=k + 1: s["runs"].get("complete", 0) >= n, f"series {k + 1}", 60)
        os.kill(d.proc.pid, signal.SIGTERM)
        assert d.wait(120) == 0, d.stderr
    finally:  # whatever is left of its process group is killed, and that fails the test
        leaked = end_group(d.proc)
    assert not leaked, leaked
    runs = RunIndex.in_state_dir(tmp_path / ".ringstream").runs()
    assert [r["status"] for r in runs] == ["complete"] * 4, runs
    want = {True: reference(params, frames, sim_mask() != 0), False: reference(params, frames)}
    for r, mask in zip(runs, masked, strict=True):
        with h5py.File(tmp_path / r["files"]["h5"], "r") as f:
            assert [int(s) for s in f["/entry/data/source_id"].asstr()[()]] == list(range(IMAGES))
            got = f["/entry/data/I"][()]
            assert ("pixel_mask" in f["/entry/run_metadata"]) == mask
        ref = want[mask]
        assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max(), (mask, np.abs(got - ref).max())
        other = want[not mask]
        assert np.abs(got - other).max() > RTOL * np.abs(ref).max()  # the other map would not do
    assert d.counts()[3:] == (0, 0)  # nothing rejected or dropped

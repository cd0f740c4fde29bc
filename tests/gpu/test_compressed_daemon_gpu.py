"""The real daemon with GPU workers on compressed frames (issue 17): a replay compressed on load (bslz4, lz4) and an
HDF5 file's bslz4 chunks travel compressed through the ring and are decoded on the device; the lineouts are those of
the same frames replayed raw, bit for bit, every frame written once and in order, none rejected."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_daemon import Daemon  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402

pytestmark = pytest.mark.timeout(300)
N = 240


def _run(tmp_path: Path, params: Path, replay: Path, codec: str) -> np.ndarray:
    run = tmp_path / codec
    run.mkdir()
    d = Daemon(["--param-file", params, "--replay", replay, "--replay-codec", codec, "--frames", N, "--workers", 2,
                "--engine", "gpu", "--output-h5", "out.h5", "--no-zarr"], run)
    try:
        d.wait_ready(120)
        assert d.wait(180) == 0, d.stderr
    finally:
        d.proc.kill()
    with h5py.File(run / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["/entry/data/frame_index"][()], np.arange(N))
        return f["/entry/data/I"][()]


def test_compressed_replays_give_the_raw_lineouts(tmp_path):
    import hdf5plugin

    params = tmp_path / "setup.txt"
    params.write_text(OUTPUTS_PARAMS)
    text = params.read_text()
    nz = int(text.split("NrPixelsZ")[1].split()[0])
    ny = int(text.split("NrPixelsY")[1].split()[0])
    rng = np.random.default_rng(5)
    stack = rng.poisson(3.0, (9, nz, ny)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=stack, chunks=(1, nz, ny), **hdf5plugin.Bitshuffle(cname="lz4"))
    raw = _run(tmp_path, params, tmp_path / "stack.npy", "none")
    for replay, codec in (("stack.npy", "bslz4"), ("stack.npy", "lz4"), ("stack.h5", "stored")):
        np.testing.assert_array_equal(_run(tmp_path, params, tmp_path / replay, codec), raw, err_msg=codec)

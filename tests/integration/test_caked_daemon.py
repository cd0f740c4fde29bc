"""Per-η fits (``[fit] per_eta``) in the real daemon: every frame's cake fitted in every η bin by the workers,
``/entry/fit/caked`` written for every frame, MIDAS's ``out_caked_peaks.h5`` in the ``--midas-binaries`` folder at
the end of the run, and ``ringstream export`` making the same file from the HDF5.

The 128 x 128 simulated detector of ``common.SMALL_PARAMS`` has rings at R 15.5, 26.5, 37.5, 48.5 px.
"""

from __future__ import annotations

import os
import subprocess

import h5py
import numpy as np
import pytest
from common import NY, NZ, SMALL_PARAMS, ringstream_command

RINGS = (26.5, 37.5)
FRAMES = 12


@pytest.mark.timeout(120)
def test_daemon_fits_every_eta_bin_of_every_frame_and_writes_the_midas_caked_peaks_file(tmp_path):
    check_daemon_run(tmp_path, "cpu")


def check_daemon_run(tmp_path, engine: str) -> str:
    """``ringstream run --per-eta`` with the integration ``engine`` (cpu; gpu in tests/gpu) checked as the module
    docstring says; its stderr."""
    (tmp_path / "setup.txt").write_text(SMALL_PARAMS.format(nz=NZ, ny=NY) + "FitROIPadding 5\n"
                                        + "".join(f"PeakLocation {r}\n" for r in RINGS))
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run(ringstream_command() + ["run", "--param-file", "setup.txt", "--output-h5", "out.h5",
                                                 "--engine", engine, "--simulate", str(FRAMES), "--workers", "2",
                                                 "--per-eta", "--midas-binaries", "midas", "--no-zarr"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=100, env=env)
    assert run.returncode == 0, run.stderr
    assert f"written {FRAMES}," in run.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        caked = f["entry/fit/caked"][...]
        area = f["entry/geometry/area"][...]
        tth = f["entry/data/radial_axis"][...]
        rcen = f["entry/fit/peaks"][:, :, 3]
    n_r, n_eta = area.shape
    assert caked.shape == (FRAMES, n_eta, len(RINGS), 7)
    # every η bin that covers both rings is fitted in every frame, on the 2θ of the frame's own per-frame fit
    r_px = np.arange(n_r) + 4.5  # RMin 4, RBinSize 1
    covered = np.ones(n_eta, bool)
    for r in RINGS:
        covered &= area[int(r - 4.5) - 5: int(r - 4.5) + 6].min(axis=0) > 0
    assert covered.sum() >= n_eta // 2
    assert np.isfinite(caked[:, covered]).all()
    want = np.interp(rcen, r_px, tth)  # [frames, peaks]
    err = np.abs(np.median(caked[..., 1][:, covered], axis=1) - want)
    assert np.all(err < 0.3 * (tth[1] - tth[0])), err
    midas = tmp_path / "midas" / "out_caked_peaks.h5"
    with h5py.File(midas, "r") as f:
        assert f["peaks/frame_idx"].shape == (int(np.isfinite(caked[..., 1]).sum()),)
        assert f["metadata/frame_keys"].shape == (FRAMES,)
        ours = {k: f["peaks"][k][...] for k in f["peaks"]}
    again = subprocess.run(ringstream_command() + ["export", "out.h5", "--midas-binaries", "exported"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 0, again.stderr
    assert "out_caked_peaks.h5" in again.stdout
    with h5py.File(tmp_path / "exported" / "out_caked_peaks.h5", "r") as f:
        assert all(np.array_equal(f["peaks"][k][...], v) for k, v in ours.items())
    return run.stderr

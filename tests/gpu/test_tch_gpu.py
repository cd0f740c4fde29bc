"""The TCH model's kernel on the device (``[fit] model = "tch"``) against its NumPy twin and against nlopt. Skipped
without CuPy/a CUDA device (tests/gpu/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.fitting import tch
from ringstream.fitting.batched import CONVERGED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.nlopt_fitter import fit_roi
from ringstream.fitting.synthetic import make_tch_case
from ringstream.params import parse_params

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"
R_PX = np.arange(200.0)
TTH = np.degrees(np.arctan(R_PX * 200.0 / 1e6))  # Lsd 1 m, 200 µm pixels: ~0.0115° a bin


@pytest.fixture(scope="module")
def gpu():
    from ringstream.fitting.gpu_fitter import GpuFitter

    return GpuFitter()


@pytest.fixture(scope="module")
def batch():
    """Single and overlapping TCH peaks at SNR 100, 300 and 2000, each ROI started by tch.guess."""
    rng = np.random.default_rng(22)
    cases = [make_tch_case(rng, kind, snr=snr) for kind in ("single", "double") for snr in (100, 300, 2000)
             for _ in range(20)]
    probs = [tch.guess(c.x, c.y, c.centres) for c in cases]
    return cases, probs, pack(probs, [c.x for c in cases], [c.y for c in cases])


def test_tch_kernel_runs_the_numpy_algorithm(gpu, batch):
    _, _, pk = batch
    ref, got = fit_batch(pk), gpu.fit_packed(pk)
    assert ("tch", 2) in gpu.kernels
    assert np.all(got["status"] == CONVERGED) and np.all(ref["status"] == CONVERGED)
    np.testing.assert_allclose(got["start_cost"], ref["start_cost"], rtol=1e-12)
    np.testing.assert_allclose(got["cost"], ref["cost"], rtol=1e-9)
    span = np.where(pk.hi > pk.lo, pk.hi - pk.lo, 1.0)
    assert np.max(np.abs(got["p"] - ref["p"]) / span) < 1e-5


def test_tch_gpu_agrees_with_nlopt(gpu, batch):
    """Acceptance: the GPU and nlopt agree, centre to 1e-4°, area to 0.1 %, on every peak."""
    cases, probs, pk = batch
    got = gpu.fit_packed(pk)
    n = 0
    for i, (case, prob) in enumerate(zip(cases, probs, strict=True)):
        rf = fit_roi(case.x, case.y, prob)
        assert rf.ok, rf.reason
        q = prob.p0.size
        p = got["p"][i, :q]
        np.testing.assert_array_less(np.abs(p[3::4] - rf.p[3::4]), 1e-4)
        np.testing.assert_array_less(np.abs(p[2::4] / rf.p[2::4] - 1), 1e-3)
        n += len(case.centres)
    assert n == 20 * 3 * 3


def test_tch_fast_path_on_the_device_gives_the_lm_rows(gpu):
    """The worker's path with [fit] model = "tch": the gpu engine's fast path against the NumPy LM, rows
    [area, center, sig, gam, FWHM, eta, chi²/dof] on the bins' 2θ."""
    rng = np.random.default_rng(9)
    truth = np.array([300.0, -40.0, 5000.0, TTH[70] + 0.003, 9.0, 5.0, 2500.0, TTH[130] - 0.004, 6.0, 9.0])
    f, _ = tch.model_jacobian(TTH[None], truth[None], np.array([TTH[100]]), np.array([1.0]), want_jac=False)
    ys = [rng.poisson(f[0] * 100.0) / 100.0 for _ in range(64)]
    p = parse_params(BASE + "PeakLocation 70.2\nPeakLocation 129.7\nFitROIPadding 40\n")
    a = FrameFitter(p, R_PX, engine="gpu", gpu=gpu, model="tch", two_theta=TTH).fit_many(ys)
    b = FrameFitter(p, R_PX, engine="lm", model="tch", two_theta=TTH).fit_many(ys)
    for fa, fb in zip(a, b, strict=True):
        assert np.isfinite(fa.fit).all()
        np.testing.assert_allclose(fa.fit, fb.fit, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_less(np.abs(fa.fit[:, 1] - truth[[3, 7]]), 1e-3)

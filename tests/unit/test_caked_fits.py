"""Per-η ("caked") peak fits on the CPU: lattice strain ε(η) = ε₀·cos 2η recovered from the fitted centres, SNIP,
and what is not fitted (NaN, counted by reason)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from ringstream.fitting.caked import CAKED_COLUMNS, CakedFitter
from ringstream.fitting.snip import snip
from ringstream.params import parse_params

LSD, PX, WAVELENGTH = 1_000_000.0, 200.0, 0.172979  # µm, µm, Å
R_PX = np.arange(100.0, 400.0) + 0.5  # bin centres of RMin 100 .. RMax 400, RBinSize 1
TTH = np.degrees(np.arctan(R_PX * PX / LSD))
N_ETA = 72
ETA = -180.0 + (np.arange(N_ETA) + 0.5) * 5.0
RINGS_PX = (180.3, 251.7, 330.2)  # unstrained ring radii


def params(*lines: str):
    return parse_params("NrPixelsY 1000\nNrPixelsZ 1000\nLsd 1000000\npx 200\nBC 500 500\nRMin 100\nRMax 400\n"
                        "RBinSize 1\nEtaBinSize 5\nFitROIPadding 12\n" + "".join(f"{v}\n" for v in lines))


def pseudo_voigt(x, area, centre, sig, gam):
    """GSAS-II's TCH pseudo-Voigt written out here (sig centideg², gam centideg, x deg), for the synthetic data."""
    fg, fl = math.sqrt(8 * math.log(2) * sig) / 100, gam / 100
    f = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3 + 0.07842 * fg * fl**4
         + fl**5) ** 0.2
    q = fl / f
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    lor = 2 / (math.pi * f) / (1 + 4 * ((x - centre) / f) ** 2)
    gau = 2 * math.sqrt(math.log(2) / math.pi) / f * np.exp(-4 * math.log(2) * ((x - centre) / f) ** 2)
    return area * (eta * lor + (1 - eta) * gau)


def strained_cake(eps0: float, rng: np.random.Generator, counts: float = 4e4) -> np.ndarray:
    """A cake ``[n_r, n_eta]``: three rings whose d-spacing is d₀(1 + ε₀ cos 2η) on a sloped background, Poisson
    noise (peak SNR ≥ 100)."""
    cake = np.empty((TTH.size, N_ETA))
    for j, eta in enumerate(np.radians(ETA)):
        y = 300.0 + 200.0 * (TTH - TTH[0]) / (TTH[-1] - TTH[0])
        for r in RINGS_PX:
            d0 = WAVELENGTH / (2 * math.sin(math.atan(r * PX / LSD) / 2))
            tth = 2 * math.degrees(math.asin(WAVELENGTH / (2 * d0 * (1 + eps0 * math.cos(2 * eta)))))
            y = y + pseudo_voigt(TTH, counts * 0.05, tth, 4.0, 2.5)
        cake[:, j] = rng.poisson(y)
    return cake


def test_strain_eps0_cos_2eta_recovered_within_2_percent_from_fitted_centres():
    eps0 = 1e-3
    cake = strained_cake(eps0, np.random.default_rng(7))
    fitter = CakedFitter(params(*[f"PeakLocation {r}" for r in RINGS_PX]), TTH, R_PX, N_ETA, slots=3)
    (rows,) = fitter.fit_many([cake])
    assert rows.shape == (N_ETA, 3, len(CAKED_COLUMNS))
    assert np.isfinite(rows).all(), fitter.counters
    assert fitter.counters["caked_fits_ok"] == N_ETA * 3
    c2 = np.cos(2 * np.radians(ETA))
    for k, r in enumerate(RINGS_PX):
        d = WAVELENGTH / (2 * np.sin(np.radians(rows[:, k, 1]) / 2))
        # least squares d(η) = d₀ (1 + ε₀ cos 2η): d₀ and d₀ε₀ free
        a = np.stack([np.ones(N_ETA), c2], axis=1)
        (d0, d0e), *_ = np.linalg.lstsq(a, d, rcond=None)
        assert d0e / d0 == pytest.approx(eps0, rel=0.02), (k, r)
    # the widths: sig 4 centideg², gam 2.5 centideg (the median over η), the mixing in [0, 1]
    assert np.median(rows[..., 2]) == pytest.approx(4.0, rel=0.1)
    assert np.median(rows[..., 3]) == pytest.approx(2.5, rel=0.1)
    assert np.all((rows[..., 5] >= 0) & (rows[..., 5] <= 1)) and np.all(rows[..., 6] > 0)


def test_snip_removes_a_smooth_background_and_keeps_the_peaks():
    x = np.arange(400.0)
    bg = 100.0 + 0.2 * x + 200.0 * np.exp(-x / 150.0)  # convex, as air scatter falls off with 2θ
    peak = 500.0 * np.exp(-0.5 * ((x - 200.3) / 2.0) ** 2)
    b = snip(np.stack([bg + peak, bg]), 30)
    assert b.shape == (2, 400)
    assert np.max(np.abs(b[1] - bg)) < 1e-9  # a convex background is left as it is
    assert abs(b[0, 200] - bg[200]) < 2.0  # under the peak: the background, not the peak
    assert np.all(snip(np.zeros((3, 50)), 50) == 0)


def test_masked_and_nan_eta_bins_and_missing_peaks_are_nan_and_counted():
    cake = strained_cake(0.0, np.random.default_rng(1))[:, :8].copy()
    cake[:, 2] = 0.0  # a masked η bin
    cake[5, 3] = np.nan
    fitter = CakedFitter(params(f"PeakLocation {RINGS_PX[0]}", "PeakLocation 999"), TTH, R_PX, 8, slots=3)
    (rows,) = fitter.fit_many([cake])
    c = fitter.counters
    assert np.isnan(rows[2]).all() and np.isnan(rows[3]).all()
    assert np.isfinite(rows[[0, 1, 4, 5, 6, 7], 0]).all()
    assert np.isnan(rows[:, 1:]).all()
    assert c["caked_nan_empty_eta_bin"] == 1 and c["caked_nan_nan_in_profile"] == 1
    assert c["caked_nan_peak_outside_r_range"] == 8 and c["caked_nan_unused_slot"] == 8
    assert c["caked_fits_ok"] == 6 and c["caked_fits_nan"] == 8 * 3 - 6
    (none,) = fitter.fit_many([None])
    assert np.isnan(none).all() and fitter.counters["caked_nan_no_cake"] == 8 * 3


def test_a_gpu_fitter_gets_the_whole_batch_as_one_tch_packed_batch():
    from ringstream.fitting.batched import fit_batch

    class Fitter:  # the GpuFitter's interface, solved here by its NumPy twin
        calls: list = []

        def fit_packed(self, pk):
            self.calls.append((pk.model, pk.size))
            return fit_batch(pk)

    cakes = [strained_cake(1e-3, np.random.default_rng(s)) for s in (1, 2)]
    p = params(*[f"PeakLocation {r}" for r in RINGS_PX])
    dev = CakedFitter(p, TTH, R_PX, N_ETA, slots=3, engine="gpu", gpu=Fitter())
    assert dev.engine == "gpu"
    got = dev.fit_many(cakes)
    assert Fitter.calls == [("tch", 2 * N_ETA * 3)]  # every (frame, η bin, ROI) in one call
    for a, b in zip(CakedFitter(p, TTH, R_PX, N_ETA, slots=3).fit_many(cakes), got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_found_peaks_are_fitted_in_every_eta_bin_in_r_order():
    cake = strained_cake(1e-3, np.random.default_rng(4))
    fitter = CakedFitter(params("DoPeakFit 1", "MultiplePeaks 1"), TTH, R_PX, N_ETA, slots=4)
    (rows,) = fitter.fit_many([cake], [cake.mean(axis=1)], [()])  # no peak list: found in the frame's lineout
    assert np.isfinite(rows[:, :3]).all() and np.isnan(rows[:, 3]).all()
    assert fitter.counters["caked_nan_not_found"] == N_ETA
    tth0 = np.degrees(np.arctan(np.array(RINGS_PX) * PX / LSD))
    np.testing.assert_allclose(np.median(rows[:, :3, 1], axis=0), tth0, atol=0.01)


@pytest.mark.parametrize("lines", [[f"PeakLocation {r}" for r in RINGS_PX], ["DoPeakFit 1", "MultiplePeaks 1"]])
def test_the_worker_s_warm_up_fits_a_made_up_frame_both_ways_and_leaves_the_counters(lines):
    """A GPU worker warms its fitters up before its first frame (kernels compiled while it beats): the per-frame and
    per-η fitters each fit one made-up frame, and nothing it did shows in the counters or the once-only log lines."""
    from ringstream.fitting.frame import FrameFitter
    from ringstream.workers.fitting import WorkerFitting

    p = params(*lines)
    frame = FrameFitter(p, R_PX, 3, engine="lm", two_theta=TTH)
    caked = CakedFitter(p, TTH, R_PX, 8, slots=3)
    wf = WorkerFitting(frame, None, "worker-0", caked=caked)
    calls = []
    for f in (frame, caked):
        real = f.fit_many
        f.fit_many = lambda *a, _real=real, _f=f, **k: calls.append(type(_f).__name__) or _real(*a, **k)
    before = (dict(frame.counters), set(frame._logged), dict(caked.counters), set(caked._logged))
    assert wf.warm_up(R_PX, 8) > 0
    assert calls == ["FrameFitter", "CakedFitter"]
    assert (frame.counters, frame._logged, caked.counters, caked._logged) == before
    # and it fitted: the made-up rings come back where they were put, in every η bin
    centres = p.PeakLocation or tuple(np.quantile(R_PX, (0.25, 0.5, 0.75)))
    line = 100.0 + sum(1e3 * np.exp(-0.5 * ((R_PX - c) / 2.0) ** 2) for c in centres)
    rows = caked.fit_many([np.repeat(line.astype(np.float32)[:, None], 8, axis=1)], [line])[0]
    np.testing.assert_allclose(rows[:, :, 1], np.broadcast_to(np.interp(sorted(centres), R_PX, TTH), (8, 3)),
                               atol=1e-6)


def test_a_worker_beats_while_it_fits_every_eta_bin():
    """A batch's per-η fits can outlast the supervisor's heartbeat timeout (on a CPU worker, hundreds of ROIs a
    frame): the worker beats meanwhile, so it is not killed as hung (it was, with per_eta on an H100 and on a loaded
    CPU box: its replacements fitted the same batch and were killed in turn)."""
    from types import SimpleNamespace

    import zmq

    from ringstream.fitting.frame import FrameFitter
    from ringstream.protocol import decode
    from ringstream.transport.child import HeartbeatSender
    from ringstream.workers.fitting import WorkerFitting
    from ringstream.workers.process import _Worker

    p = params(*[f"PeakLocation {r}" for r in RINGS_PX])
    caked = CakedFitter(p, TTH, R_PX, N_ETA, slots=3)
    wf = WorkerFitting(FrameFitter(p, R_PX, 3, engine="lm", two_theta=TTH), None, "worker-0", caked=caked)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://beats")
    push.connect("inproc://beats")
    try:
        hb = HeartbeatSender(push, "worker", 0, 0.01)
        me = SimpleNamespace(fitting=wf, hb=hb, snapshot=lambda: {"frames": 0})
        cakes = [strained_cake(1e-3, np.random.default_rng(s)) for s in range(12)]
        headers = [SimpleNamespace(metadata={}, frame_index=k) for k in range(12)]
        t0 = time.perf_counter()
        out = _Worker.fit_caked(me, headers, [None] * 12, cakes, None)
        took = time.perf_counter() - t0
        beats = 0
        while pull.poll(0):
            msg, _ = decode(pull.recv_multipart())
            beats += type(msg).__name__ == "Heartbeat"
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
    assert len(out) == 12 and np.isfinite(out[0][..., 1]).mean() > 0.9
    # 2,592 fits take ~0.25 s on the 2-core CI box: tens of beat intervals, a third of them at least beaten
    assert took > 0.05 and beats >= max(2, int(took / 0.01) // 3), (took, beats)

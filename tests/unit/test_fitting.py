"""Peak fitting on the CPU: the model, the nlopt fitter and its fallback, the batched LM algorithm (the GPU kernel's
NumPy twin) against nlopt, peak finding, ROIs, and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ringstream.fitting import AUTO_SLOTS
from ringstream.fitting.batched import CONVERGED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.model import SIGMA_FROM_GAMMA, model_jacobian, n_params, peak_area
from ringstream.fitting.nlopt_fitter import failure_reason, fit_roi
from ringstream.fitting.peaks import MAX_PEAKS_PER_ROI, group_rois, initial_problem, snap_locations
from ringstream.fitting.synthetic import make_case
from ringstream.params import parse_params

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"
X = np.arange(200.0)  # bin centres of RMin 0 .. RMax 200, RBinSize 1, shifted by half a bin (irrelevant here)


def params(*lines: str):
    return parse_params(BASE + "".join(line + "\n" for line in lines))


def located(case, **kw):
    """A fitter whose PeakLocation lines are the case's true centres rounded to 0.01 px."""
    p = params(*[f"PeakLocation {c:.2f}" for c in case.centres], *[f"{k} {v}" for k, v in kw.items()])
    return FrameFitter(p, X, engine="nlopt")


def errors(fit: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per fitted row: [Rcen − true (bins), Γ/Γtrue − 1, Imax/Imax_true − 1, μ − true]."""
    out = []
    for k in range(fit.shape[0]):
        imax, mu, rc, gam = truth[2 + 4 * k: 6 + 4 * k]
        row = fit[k]
        out.append([row[3] - rc, row[4] * SIGMA_FROM_GAMMA / gam - 1, row[0] / imax - 1, row[2] - mu])
    return np.array(out)


# ------------------------------------------------------------------------------------------------------- model


def test_jacobian_matches_finite_differences():
    x = np.linspace(80, 120, 41)[None, :]
    p = np.array([[120.0, -15.0, 900.0, 0.3, 97.3, 6.0, 500.0, 0.8, 104.1, 4.0]])
    f, jac = model_jacobian(x, p, np.array([100.0]), np.array([20.0]))
    for i in range(p.shape[1]):
        h = 1e-6 * max(1.0, abs(p[0, i]))
        dp = np.zeros_like(p)
        dp[0, i] = h
        fp, _ = model_jacobian(x, p + dp, np.array([100.0]), np.array([20.0]), want_jac=False)
        fm, _ = model_jacobian(x, p - dp, np.array([100.0]), np.array([20.0]), want_jac=False)
        np.testing.assert_allclose(jac[0, :, i], (fp - fm)[0] / (2 * h), rtol=1e-6, atol=1e-6 * np.abs(f).max())


def test_area_is_the_integral_of_the_peak():
    x = np.linspace(-4000, 4000, 1_600_001)[None, :]
    for mu, gam in ((0.0, 5.0), (1.0, 3.0), (0.37, 12.0)):
        p = np.array([[0.0, 0.0, 250.0, mu, 0.0, gam]])
        f, _ = model_jacobian(x, p, np.array([0.0]), np.array([1.0]), want_jac=False)
        integral = np.trapz(f[0], x[0]) if hasattr(np, "trapz") else np.trapezoid(f[0], x[0])
        # the Lorentzian's tails beyond ±4000 px hold Imax·Γ²/(2·4000) of its area
        tail = mu * 250.0 * gam * gam / (2 * 4000.0)
        assert integral + tail == pytest.approx(peak_area(250.0, mu, gam), rel=1e-6)


# ---------------------------------------------------------------------------------------------------- accuracy


@pytest.fixture(scope="module")
def accuracy_runs():
    """nlopt fits of the synthetic set: single (Γ 2–20), double and triple (overlapping) peaks, μ 0–1, flat and
    sloped backgrounds, Poisson noise at peak SNR 20, 100 and 1000. Returns {snr: (errors [rows, 4], n_nan)}."""
    rng = np.random.default_rng(2026)
    out = {}
    for snr, counts in ((20, (100, 60, 40)), (100, (300, 200, 120)), (1000, (150, 100, 80))):
        errs, nan = [], 0
        for kind, n in zip(("single", "double", "triple"), counts, strict=False):
            for _ in range(n):
                case = make_case(rng, kind, snr=snr)
                fit = located(case).fit(case.y).fit
                e = errors(fit, case.truth)
                nan += int(np.sum(~np.isfinite(e[:, 0])))
                errs.append(e)
        out[snr] = (np.concatenate(errs), nan)
    return out


def test_convergence_on_at_least_999_per_mille(accuracy_runs):
    rows = sum(len(e) for e, _ in accuracy_runs.values())
    failed = sum(n for _, n in accuracy_runs.values())
    assert rows == 1990  # 100+60·2+40·3 + 300+200·2+120·3 + 150+100·2+80·3
    assert failed <= rows * 0.001, f"{failed} of {rows} fits failed"


@pytest.mark.parametrize("snr", [100, 1000])
def test_accuracy_at_snr_100_and_above(accuracy_runs, snr):
    e, _ = accuracy_runs[snr]
    e = e[np.isfinite(e[:, 0])]
    bias = e.mean(axis=0)
    assert abs(bias[0]) < 0.01, f"Rcen bias {bias[0]:.4f} bins"
    assert abs(bias[1]) < 0.01, f"Γ bias {bias[1]:.4%}"
    assert abs(bias[2]) < 0.01, f"Imax bias {bias[2]:.4%}"
    assert abs(bias[3]) < 0.05, f"μ bias {bias[3]:.4f}"
    if snr == 1000:  # and every single fit, not only on average
        assert np.all(np.abs(e[:, 0]) < 0.1) and np.all(np.abs(e[:, 1]) < 0.05) and np.all(np.abs(e[:, 3]) < 0.15)


def test_batched_lm_agrees_with_nlopt_on_the_same_inputs():
    """The GPU kernel's algorithm (here in NumPy) and nlopt: Rcen within 0.001 bin, Imax within 0.1 %."""
    rng = np.random.default_rng(7)
    cases = [make_case(rng, kind, snr=snr) for kind in ("single", "double", "triple") for snr in (100, 1000)
             for _ in range(25)]
    n_rows = 0
    for case in cases:
        ref = located(case)
        lm = FrameFitter(ref.params, X, engine="lm")
        a, b = ref.fit(case.y).fit, lm.fit(case.y).fit
        assert lm.counters["fit_fallback_nlopt"] == 0
        np.testing.assert_array_less(np.abs(a[:, 3] - b[:, 3]), 1e-3)
        np.testing.assert_array_less(np.abs(a[:, 0] / b[:, 0] - 1), 1e-3)
        n_rows += len(a)
    assert n_rows == 25 * 2 * 6


def test_one_batch_fits_rois_of_many_frames_as_one_at_a_time():
    rng = np.random.default_rng(11)
    cases = [make_case(rng, "double", snr=200) for _ in range(6)]
    probs, xs, ys = [], [], []
    for case in cases:
        bins = snap_locations(case.centres, X, 1.0)
        ((s, e, members),) = group_rois(list(enumerate(bins)), [20, 20], X.size)
        probs.append(initial_problem(X, case.y, s, e, members, bins))
        xs.append(X[s:e])
        ys.append(case.y[s:e])
    together = fit_batch(pack(probs, xs, ys))
    for i in range(len(cases)):
        alone = fit_batch(pack(probs[i:i + 1], xs[i:i + 1], ys[i:i + 1]))
        assert together["status"][i] == alone["status"][0] == CONVERGED
        np.testing.assert_allclose(together["p"][i], alone["p"][0], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------ failures


def test_failure_tests_are_honest():
    x = X[80:121]
    case = make_case(np.random.default_rng(3), "single", snr=300, gamma=6.0)
    prob = initial_problem(X, case.y, 80, 121, [0], [100])
    assert failure_reason(prob.p0 * np.nan, 1.0, 2.0, prob) == "non_finite"
    assert failure_reason(prob.p0, 2.0, 2.0, prob) == "no_improvement"
    pinned = prob.p0.copy()
    pinned[2 + 2] = prob.hi[2 + 2]  # Rcen at its upper bound
    assert failure_reason(pinned, 1.0, 2.0, prob) == "pinned_at_bound"
    mu_at_zero = prob.p0.copy()
    mu_at_zero[2 + 1] = 0.0  # a pure Gaussian is an answer, not a stuck fit
    assert failure_reason(mu_at_zero, 1.0, 2.0, prob) == ""
    assert x.size == 41


def test_pinned_lbfgs_falls_back_to_nelder_mead_and_is_counted():
    """A peak whose true centre lies outside the Rcen window: L-BFGS ends pinned at the bound (and reports success),
    so Nelder–Mead runs; it cannot leave the window either, so the ROI is a failure and its rows NaN."""
    case = make_case(np.random.default_rng(5), "single", snr=500, gamma=4.0)
    c = int(round(case.centres[0]))
    prob = initial_problem(X, case.y, c - 20, c + 21, [0], [c])
    prob.hi[2 + 2] = case.centres[0] - 3.0  # the window ends 3 px before the true centre
    prob.p0 = np.minimum(prob.p0, prob.hi)
    rf = fit_roi(X[c - 20:c + 21], case.y[c - 20:c + 21], prob)
    assert rf.fallback and rf.method == "neldermead"
    assert not rf.ok and rf.reason == "pinned_at_bound"
    ff = FrameFitter(params(f"PeakLocation {case.centres[0]:.2f}"), X)
    (fitted,) = ff.solve([prob], [case.y])
    plan = ff.plan(case.y, None, "frame 0")
    out = ff.assemble(plan, [(prob, fitted)])
    assert ff.counters["fit_fallback_neldermead"] == 1 and ff.counters["fit_nan_fit_failed"] == 1
    assert np.all(np.isnan(out.fit[0])) and out.rois.shape == (0, 2)


def test_pure_gaussian_needs_no_fallback():
    case = make_case(np.random.default_rng(9), "single", snr=1000, gamma=8.0, mu=0.0, slope=False)
    ff = located(case)
    fit = ff.fit(case.y).fit
    assert ff.counters["fit_fallback_neldermead"] == 0
    assert fit[0, 2] < 0.02 and abs(fit[0, 3] - case.centres[0]) < 0.01


@pytest.mark.parametrize("what", ["outside", "roi_too_wide", "zeros", "nan"])
def test_bad_input_gives_nan_rows_and_a_counted_reason_logged_once(what, caplog):
    case = make_case(np.random.default_rng(1), "single", snr=100, gamma=5.0)
    if what == "outside":
        ff = FrameFitter(params(f"PeakLocation {case.centres[0]:.2f}", "PeakLocation 950"), X)
        reason, y = "peak_outside_r_range", case.y
    elif what == "roi_too_wide":
        ff = FrameFitter(params(f"PeakLocation {case.centres[0]:.2f}", "FitROIPadding 150"), X)
        reason, y = "roi_wider_than_lineout", case.y
    elif what == "zeros":
        ff = located(case)
        reason, y = "flat_lineout", np.zeros(X.size)
    else:
        ff = located(case)
        y = case.y.copy()
        y[17] = np.nan
        reason = "nan_in_lineout"
    with caplog.at_level(logging.WARNING, logger="ringstream.fitting"):
        fits = [ff.fit(y, where=f"frame {i}").fit for i in range(3)]
    nan_rows = 1 if what == "outside" else ff.slots
    assert ff.counters[f"fit_nan_{reason}"] == 3 * nan_rows
    assert sum(reason in r.getMessage() for r in caplog.records) == 1
    for fit in fits:
        assert fit.shape == (ff.slots, 7)
        assert int(np.isnan(fit[:, 0]).sum()) == nan_rows
    if what == "outside":
        assert "PeakLocation 950" in caplog.text
        assert abs(fits[0][0, 3] - case.centres[0]) < 0.1  # the other peak is still fitted


def test_fit_rows_read_back_with_the_midas_reshape_including_failed_frames(tmp_path):
    rng = np.random.default_rng(4)
    cases = [make_case(rng, "double", snr=100) for _ in range(5)]
    ff = FrameFitter(params(*[f"PeakLocation {c:.2f}" for c in cases[0].centres], "PeakLocation 999"), X)
    path = tmp_path / "fit.bin"
    with open(path, "wb") as f:
        for i, case in enumerate(cases):
            y = case.y if i != 2 else np.full(X.size, np.nan)  # frame 2: every row NaN
            f.write(ff.fit(y).fit.tobytes())
    data = np.fromfile(path).reshape(-1, 3, 7)
    assert data.shape == (5, 3, 7)
    assert np.all(np.isnan(data[2])) and np.all(np.isnan(data[:, 2]))
    assert np.isfinite(data[0, :2]).all()


# ------------------------------------------------------------------------------------------ peaks and ROIs


def test_automatic_finding_fills_rows_in_r_order_and_counts_the_rest():
    rng = np.random.default_rng(8)
    y = np.zeros(X.size)
    truth = []
    for c in (40.3, 95.7, 150.2):
        case = make_case(rng, "single", snr=300, gamma=5.0, slope=False, n_bins=200)
        y += np.roll(case.y - case.truth[0], int(round(c - case.centres[0])))
        truth.append(case.centres[0] + round(c - case.centres[0]))
    y += rng.poisson(100.0, X.size)
    for smoothing in (0, 1):
        ff = FrameFitter(params("DoPeakFit 1", "MultiplePeaks 1", f"DoSmoothing {smoothing}"), X)
        fit = ff.fit(y).fit
        assert ff.slots == AUTO_SLOTS
        np.testing.assert_allclose(fit[:3, 3], truth, atol=0.1)
        assert np.all(np.isnan(fit[3:]))
        assert ff.counters["fit_nan_not_found"] == AUTO_SLOTS - 3


def test_overlapping_rois_are_merged_and_curves_are_the_model():
    rng = np.random.default_rng(6)
    case = make_case(rng, "double", snr=300)
    far = make_case(rng, "single", snr=300, gamma=4.0, n_bins=200)
    y = case.y + np.roll(far.y - far.truth[0], 70)
    c_far = far.centres[0] + 70 if far.centres[0] + 70 < 200 else far.centres[0] - 130
    ff = FrameFitter(params(*[f"PeakLocation {c:.2f}" for c in (*case.centres, c_far)]), X)
    out = ff.fit(y)
    assert out.rois.shape == (2, 2) and out.rois.dtype == np.int32
    assert out.values.size == int(out.rois[:, 1].sum())
    joint = out.rois[0]
    assert joint[0] <= round(case.centres[0]) - 20 + 1 and joint[0] + joint[1] >= round(case.centres[1]) + 20
    # the curve is the fitted model: its maximum near the fitted peaks, its GoF the residual over those bins
    s, n = out.rois[0]
    assert np.sum((out.values[:n] - y[s:s + n]) ** 2) == pytest.approx(out.fit[0, 5], rel=1e-9)
    assert out.fit[0, 5] == out.fit[1, 5]


def test_long_runs_of_overlapping_peaks_are_cut_at_the_kernel_maximum():
    peaks = [(k, 50 + 6 * k) for k in range(6)]
    rois = group_rois(peaks, [20] * 6, 200)
    assert [len(m) for _, _, m in rois] == [MAX_PEAKS_PER_ROI, 2]
    assert rois[0][1] == rois[1][0] == (peaks[3][1] + peaks[4][1]) // 2 + 1


def test_fit_roi_auto_half_width():
    from ringstream.fitting.peaks import roi_half_width

    for gam, expect in ((4.0, 15), (20.0, 30)):
        case = make_case(np.random.default_rng(2), "single", snr=1000, gamma=gam, slope=False)
        c = int(round(case.centres[0]))
        assert abs(roi_half_width(X, case.y, c, 20, True) - expect) <= 1
        assert roi_half_width(X, case.y, c, 20, False) == 20


def test_snapping_drops_locations_farther_than_two_bins():
    r = np.arange(10.0, 20.0, 0.5) + 0.25
    assert snap_locations([12.3, 9.0, 21.0, 20.5], r, 0.5) == [4, -1, -1, 19]
    assert n_params(3) == 14

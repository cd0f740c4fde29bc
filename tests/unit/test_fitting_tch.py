"""The TCH model (``[fit] model = "tch"``): GSAS-II's equations, the analytic gradient, and recovery of synthetic
peaks by the batched LM (the GPU kernel's NumPy twin) and by nlopt."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ringstream.errors import ConfigError
from ringstream.fitting import tch
from ringstream.fitting.batched import CONVERGED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.models import get_model
from ringstream.fitting.nlopt_fitter import failure_reason, fit_roi
from ringstream.fitting.peaks import initial_problem
from ringstream.fitting.synthetic import make_tch_case
from ringstream.params import parse_params

DX = 0.01  # deg 2θ per bin in the synthetic cases


def gsas_tch(x, area, centre, sig, gam):
    """GSAS-II's pseudo-Voigt written from its published equations, independently of ringstream.fitting.tch:
    Γ_G = sqrt(8 ln2 sig)/100, Γ_L = gam/100 (deg), the TCH FWHM and η, a normal density of FWHM F
    (σ = F / (2 sqrt(2 ln2))) and a Cauchy density of half-width F/2, mixed by η, times the area."""
    g = math.sqrt(8.0 * math.log(2.0) * sig) / 100.0
    lor = gam / 100.0
    fwhm = (g**5 + 2.69269 * g**4 * lor + 2.42843 * g**3 * lor**2 + 4.47163 * g**2 * lor**3
            + 0.07842 * g * lor**4 + lor**5) ** 0.2
    q = lor / fwhm
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    gauss = stats.norm.pdf(x, loc=centre, scale=fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))))
    cauchy = stats.cauchy.pdf(x, loc=centre, scale=fwhm / 2.0)
    return area * (eta * cauchy + (1.0 - eta) * gauss), fwhm, eta


def evaluate(x, p, xmid=0.0, hw=1.0, want_jac=False):
    return tch.model_jacobian(np.atleast_2d(x), np.atleast_2d(p), np.array([xmid]), np.array([hw]), want_jac)


# ------------------------------------------------------------------------------------------------------- model

# (sig centideg², gam centideg): Gaussian-dominated, balanced, Lorentzian-dominated, broad, a tiny Gaussian part
SHAPES = [(12.0, 0.5), (4.0, 3.0), (0.2, 6.0), (60.0, 25.0), (1e-4, 2.0)]


@pytest.mark.parametrize("sig,gam", SHAPES)
def test_model_equals_gsas_equations_at_sampled_points(sig, gam):
    x = np.random.default_rng(1).uniform(5.5, 6.5, 200)
    bg = 37.0 - 4.0 * (x - 6.1) / 0.3
    p = [37.0, -4.0, 250.0, 6.02, sig, gam, 90.0, 6.2, 2.0 * sig + 0.1, 0.5 * gam + 0.1]
    f, _ = evaluate(x, p, 6.1, 0.3)
    first, fw1, eta1 = gsas_tch(x, 250.0, 6.02, sig, gam)
    second, _, _ = gsas_tch(x, 90.0, 6.2, 2.0 * sig + 0.1, 0.5 * gam + 0.1)
    np.testing.assert_allclose(f[0], bg + first + second, rtol=1e-12, atol=1e-12 * np.abs(f).max())
    fw, eta = tch.fwhm_eta(sig, gam)
    assert fw == pytest.approx(fw1, rel=1e-14) and eta == pytest.approx(eta1, rel=1e-14)
    assert 0.0 <= eta <= 1.0


def test_rows_are_area_center_sig_gam_fwhm_eta_chi2dof():
    p = np.array([10.0, 1.0, 250.0, 6.02, 4.0, 3.0, 90.0, 6.2, 2.0, 1.0])
    rows = tch.rows(p, tch.chi2_dof(230.0, 41, 2))
    assert rows.shape == (2, 7) and get_model("tch").columns == tch.COLUMNS
    fw, eta = tch.fwhm_eta(np.array([4.0, 2.0]), np.array([3.0, 1.0]))
    np.testing.assert_array_equal(rows[:, :4], p[2:].reshape(2, 4))
    np.testing.assert_array_equal(rows[:, 4], fw)
    np.testing.assert_array_equal(rows[:, 5], eta)
    np.testing.assert_array_equal(rows[:, 6], [230.0 / 31, 230.0 / 31])
    # a pure Gaussian (gam → 0): FWHM is Γ_G, η 0; a pure Lorentzian (sig → 0): FWHM Γ_L, η exactly 1
    assert tch.fwhm_eta(5.0, 1e-12)[0] == pytest.approx(math.sqrt(8 * math.log(2) * 5.0) / 100, rel=1e-9)
    assert tch.fwhm_eta(1e-20, 4.0)[1] == pytest.approx(1.0, abs=1e-9)


def test_area_is_the_integral_of_the_peak():
    x = 1e-3 * np.sinh(np.linspace(-12.6, 12.6, 200_001))  # to ±148°, steps from 1.3e-7° at the centre
    for sig, gam in ((9.0, 1e-6), (0.5, 4.0)):
        f, _ = evaluate(x, [0.0, 0.0, 250.0, 0.0, sig, gam])
        fw, eta = tch.fwhm_eta(sig, gam)
        tail = eta * 250.0 * (2.0 / math.pi) * math.atan(fw / 2.0 / x[-1])  # the Cauchy mass beyond
        integral = np.trapezoid(f[0], x) if hasattr(np, "trapezoid") else np.trapz(f[0], x)
        assert integral + tail == pytest.approx(250.0, rel=1e-6)


@pytest.mark.parametrize("sig,gam", SHAPES)
def test_gradient_equals_finite_differences(sig, gam):
    x = np.linspace(5.7, 6.5, 81)
    p = np.array([120.0, -15.0, 9.0, 6.03, sig, gam, 5.0, 6.11, 3.0, 2.0])
    f, jac = evaluate(x, p, 6.1, 0.4, want_jac=True)
    for i in range(p.size):
        h = 1e-6 * max(abs(p[i]), 1e-2 if i % 4 != 3 else 1.0)  # the centre (offset 3) moves by 1e-6 deg
        dp = np.zeros_like(p)
        dp[i] = h
        fp, _ = evaluate(x, p + dp, 6.1, 0.4)
        fm, _ = evaluate(x, p - dp, 6.1, 0.4)
        np.testing.assert_allclose(jac[0, :, i], (fp - fm)[0] / (2 * h), rtol=2e-6, atol=2e-7 * np.abs(f).max(),
                                   err_msg=f"parameter {i}")


# ---------------------------------------------------------------------------------------------------- accuracy


def problem_of(case):
    """The one ROI around the case's peaks, started by tch.initial_problem from the case's true centres."""
    start = int(round((case.xmid - case.hw - case.x[0]) / DX))
    stop = int(round((case.xmid + case.hw - case.x[0]) / DX)) + 1
    bins = [int(round((c - case.x[0]) / DX)) for c in case.centres]
    prob = tch.initial_problem(case.x, case.y, start, stop, list(range(len(bins))), bins)
    return prob, case.x[start:stop], case.y[start:stop]


def fit_both(cases):
    """Batched LM (one batch) and nlopt (one ROI at a time) fits of the cases: ([p], [RoiFit]); every LM fit
    converged and passed the failure tests, every nlopt fit ok."""
    work = [problem_of(c) for c in cases]
    res = fit_batch(pack([w[0] for w in work], [w[1] for w in work], [w[2] for w in work]))
    lm, nl = [], []
    for i, (prob, x, y) in enumerate(work):
        q = prob.p0.size
        assert res["status"][i] == CONVERGED
        p = res["p"][i, :q]
        assert failure_reason(p, float(res["cost"][i]), float(res["start_cost"][i]), prob) == ""
        rf = fit_roi(x, y, prob)
        assert rf.ok, rf.reason
        lm.append(p)
        nl.append(rf.p)
    return lm, nl


def relative_errors(case, p):
    """Per peak: [centre − true (deg), area, sig, gam relative errors]."""
    out = []
    for k in range(len(case.centres)):
        a, c, s, g = case.truth[2 + 4 * k: 6 + 4 * k]
        o = 2 + 4 * k
        out.append([p[o + 1] - c, p[o] / a - 1, p[o + 2] / s - 1, p[o + 3] / g - 1])
    return out


@pytest.fixture(scope="module")
def runs():
    """Single and overlapping (two peaks 1–1.5 FWHM apart) cases at peak SNR 100 and 2000, fitted both ways."""
    rng = np.random.default_rng(2026)
    out = {}
    for snr in (100, 2000):
        cases = [make_tch_case(rng, kind, snr=snr) for kind in ("single", "double") for _ in range(12)]
        out[snr] = (cases, *fit_both(cases))
    return out


def test_synthetic_peaks_recovered_at_snr_2000_by_lm_and_nlopt(runs):
    """Centre within 0.001°, area within 1 %, sig and gam within 3 %, every peak, both fitters. (At SNR 100 the
    counting statistics alone allow ~5 % on sig: see the next test; these bounds need SNR ~2000.)"""
    cases, lm, nl = runs[2000]
    for fits in (lm, nl):
        e = np.abs(np.array([row for c, p in zip(cases, fits, strict=True) for row in relative_errors(c, p)]))
        assert e.shape == (12 * 3, 4)
        assert e[:, 0].max() < 1e-3 and e[:, 1].max() < 0.01, e.max(axis=0)
        assert e[:, 2].max() < 0.03 and e[:, 3].max() < 0.03, e.max(axis=0)


def test_snr_100_errors_are_the_counting_statistics(runs):
    """At SNR 100 every parameter lies within 4.5 standard deviations of the truth, the deviations those of an
    unweighted least-squares fit of Poisson data, (JᵀJ)⁻¹ Jᵀ diag(I) J (JᵀJ)⁻¹ at the truth: the fit has no bias
    beyond the noise (which is ~5 % on sig, ~1 % on area, up to 0.002° on the centre of overlapping peaks)."""
    cases, lm, _ = runs[100]
    worst = 0.0
    for case, p in zip(cases, lm, strict=True):
        prob, x, y = problem_of(case)
        f, jac = tch.model_jacobian(x[None], case.truth[None], np.array([prob.xmid]), np.array([prob.hw]))
        a_inv = np.linalg.inv(jac[0].T @ jac[0])
        cov = a_inv @ (jac[0].T @ (jac[0] * f[0][:, None])) @ a_inv
        worst = max(worst, float(np.max(np.abs(p - case.truth) / np.sqrt(np.diag(cov)))))
    assert worst < 4.5


def test_lm_and_nlopt_agree(runs):
    """The GPU kernel's algorithm and nlopt find the same minimum: centre to 1e-5°, area to 0.01 %."""
    for _, lm, nl in runs.values():
        for a, b in zip(lm, nl, strict=True):
            c = slice(3, None, 4)
            np.testing.assert_array_less(np.abs(a[c] - b[c]), 1e-5)
            np.testing.assert_array_less(np.abs(a[2::4] / b[2::4] - 1), 1e-4)


def test_pure_shapes_end_at_the_natural_floor_without_failing():
    """A pure Lorentzian drives sig to its floor: the model's own range, not a stuck fit."""
    rng = np.random.default_rng(4)
    case = make_tch_case(rng, "single", snr=1000, sig=1e-6, gam=5.0)
    prob, x, y = problem_of(case)
    rf = fit_roi(x, y, prob)
    assert rf.ok, rf.reason
    assert rf.p[4] < 0.05 and abs(rf.p[5] / 5.0 - 1) < 0.03
    pinned = rf.p.copy()
    pinned[5] = prob.hi[5]  # gam at its ceiling is a stuck fit
    assert failure_reason(pinned, 1.0, 2.0, prob) == "pinned_at_bound"


def test_a_batch_has_one_model_and_the_model_names_are_checked():
    rng = np.random.default_rng(8)
    case = make_tch_case(rng, "single", snr=300)
    prob, x, y = problem_of(case)
    pv = initial_problem(x, y, 0, x.size, [0], [x.size // 2])
    with pytest.raises(ValueError, match="one peak model"):
        pack([prob, pv], [x, x], [y, y])
    packed = pack([prob], [x], [y])
    assert packed.model == "tch"
    as_pv = fit_batch(packed, model="pv")  # the override is honoured: a different model, a different answer
    assert not np.allclose(as_pv["p"], fit_batch(packed)["p"])
    with pytest.raises(ConfigError, match=r"\[fit\] model 'voigt': expected one of pv, tch"):
        get_model("voigt")


# ------------------------------------------------------------------------------------------- whole lineouts

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"


def test_frame_fitter_writes_tch_rows_on_two_theta_with_every_engine():
    """PeakLocation in px, the fit on the bins' 2θ: nlopt, the batched LM per frame and its fast path give the same
    rows [area, center, sig, gam, FWHM, eta, chi²/dof], the truth's within the acceptance bounds."""
    r_px = np.arange(200.0)
    tth = np.degrees(np.arctan(r_px * 200.0 / 1e6))  # Lsd 1 m, 200 µm pixels: ~0.0115° a bin
    truth = np.array([300.0, -40.0, 5000.0, tth[70] + 0.003, 9.0, 5.0, 2500.0, tth[130] - 0.004, 6.0, 9.0])
    f, _ = tch.model_jacobian(tth[None], truth[None], np.array([tth[100]]), np.array([1.0]), want_jac=False)
    rng = np.random.default_rng(12)
    lineouts = [rng.poisson(f[0] * 100.0) / 100.0 for _ in range(3)]  # peak SNR ~2000: tops of ~4e6 counts
    params = parse_params(BASE + "PeakLocation 70.2\nPeakLocation 129.7\nFitROIPadding 40\n")
    fits = {}
    for engine, fast in (("nlopt", False), ("lm", False), ("lm", True)):
        ff = FrameFitter(params, r_px, engine=engine, fast_path=fast, model="tch", two_theta=tth)
        fits[engine, fast] = ff.fit_many(lineouts)
        assert ff.counters["fit_rows_ok"] == 6 and ff.counters["fit_fast_frames"] == (3 if fast else 0)
    ref = fits["nlopt", False]
    for key, got in fits.items():
        for a, b in zip(ref, got, strict=True):
            assert b.fit.shape == (2, 7)
            np.testing.assert_allclose(b.fit[:, 1], a.fit[:, 1], atol=1e-5, err_msg=str(key))
            np.testing.assert_allclose(b.fit[:, [0, 2, 3, 4, 5]], a.fit[:, [0, 2, 3, 4, 5]], rtol=1e-3, err_msg=str(key))
            np.testing.assert_array_equal(b.rois, a.rois)
    for ff in ref:
        rows = ff.fit
        np.testing.assert_array_less(np.abs(rows[:, 1] - truth[[3, 7]]), 1e-3)
        assert np.all(np.abs(rows[:, [0, 2, 3]] / truth[[[2, 4, 5], [6, 8, 9]]] - 1) < [0.01, 0.03, 0.03]), rows
        np.testing.assert_allclose(rows[:, 4:6], np.stack(tch.fwhm_eta(rows[:, 2], rows[:, 3]), axis=1))
        assert np.all(rows[:, 6] > 0)
        start, n = ff.rois[0]
        assert ff.rois.shape == (1, 2)  # ±40 bins around each: one ROI, both peaks
        model, _ = tch.model_jacobian(tth[None, start:start + n], truth[None],
                                      np.array([tth[100]]), np.array([1.0]), want_jac=False)
        assert np.abs(ff.values - model[0]).max() < 0.003 * model[0].max()  # fit_curves: the model on 2θ
    with pytest.raises(ValueError, match="needs the 2θ of the 200 R bins"):
        FrameFitter(params, r_px, model="tch")

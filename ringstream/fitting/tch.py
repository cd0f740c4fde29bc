"""GSAS-II's area-normalised pseudo-Voigt with Thompson–Cox–Hastings mixing, on the 2θ axis: ``[fit] model = "tch"``.

The model of one ROI at ``x`` (degrees 2θ, the lineout's bin centres), the way GSAS-II and MIDAS's ``PeakFit.c`` write
it. Per peak: area ``A`` (intensity·deg), centre ``c`` (deg), ``sig`` (Gaussian variance, centideg²) and ``gam``
(Lorentzian FWHM, centideg)::

    Γ_G = sqrt(8 ln2 · sig) / 100,   Γ_L = gam / 100                                   (deg)
    F⁵  = Γ_G⁵ + 2.69269 Γ_G⁴Γ_L + 2.42843 Γ_G³Γ_L² + 4.47163 Γ_G²Γ_L³ + 0.07842 Γ_GΓ_L⁴ + Γ_L⁵   (TCH FWHM, deg)
    q   = Γ_L / F,   η = 1.36603 q − 0.47719 q² + 0.11116 q³                           (mixing, 0 = Gaussian)
    t   = (x − c)² / F²
    G(x) = (2 sqrt(ln2/π) / F) · exp(−4 ln2 t)                                          (area 1, FWHM F)
    L(x) = (2 / (π F)) / (1 + 4 t)                                                      (area 1, FWHM F)
    I(x) = b0 + b1 (x − xmid) / hw  +  Σ_k A_k [η_k L_k(x) + (1 − η_k) G_k(x)]

The background ``b0 + b1 u`` with ``u = (x − xmid)/hw ∈ [−1, 1]`` over the ROI is the 2-term Chebyshev series
T0 + T1 of MIDAS (``x_norm = 2 (x − x_lo)/(x_hi − x_lo) − 1``). On ``q ∈ [0, 1]`` η rises monotonically from 0 to
exactly 1 (the coefficients sum to 1), so it needs no clipping and its gradient is smooth.

Parameter vector of a ROI with P peak slots (length ``2 + 4P``, the convention of :mod:`.model`):
``[b0, b1, A_1, c_1, sig_1, gam_1, A_2, ...]``. The cost is ``Σ (I(x) − y)²``; fit.bin's last column is
``cost / max(n_points − n_params, 1)`` (χ²/dof, as MIDAS).

Jacobian, with S = ηL + (1−η)G, d = x − c, and the partial derivatives of the TCH functions:

    dI/dA   = S
    dI/dc   = A [η L · 8d / (F² (1 + 4t)) + (1−η) G · 8 ln2 · d / F²]
    dS/dF   = η L/F · (8t/(1 + 4t) − 1) + (1−η) G/F · (8 ln2 · t − 1)                (at fixed η)
    dI/dsig = A [dS/dF · dF/dsig + (L − G) · dη/dsig],  likewise for gam
    dF/dΓ   = (∂P/∂Γ) / (5 F⁴) with P = F⁵;   dΓ_G/dsig = Γ_G / (2 sig),  dΓ_L/dgam = 1/100
    dη/dsig = η'(q) · (−Γ_L/F²) dF/dsig,     dη/dgam = η'(q) · (1/(100 F) − Γ_L/F² · dF/dgam)

``sig`` and ``gam`` have positive lower bounds (:func:`bounds`: a hundredth of a bin), so the model never meets
``sig = 0`` where dΓ_G/dsig is infinite. fit.bin rows of this model (:func:`rows`):
``[area, center (deg 2θ), sig (centideg²), gam (centideg), FWHM (deg), eta, chi²/dof]``.
"""

from __future__ import annotations

import math

import numpy as np

from . import peaks
from .model import N_BG, PER_PEAK, background, n_params

#: offsets of a peak's parameters inside its block
AREA, CENTER, SIG, GAM = 0, 1, 2, 3
#: the seven columns of a TCH row (fit.bin, ``/entry/fit/peaks``)
COLUMNS = ("area", "center", "sig", "gam", "FWHM", "eta", "chi2_dof")
#: units of those columns
UNITS = ("intensity*deg", "deg", "centideg^2", "centideg", "deg", "", "")

#: Thompson–Cox–Hastings: F⁵ = Σ_i TCH_F[i] Γ_G^(5−i) Γ_L^i and η = Σ_i TCH_ETA[i] q^(i+1)
TCH_F = (1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0)
TCH_ETA = (1.36603, -0.47719, 0.11116)
LN2 = math.log(2.0)
#: Γ_G (deg) = sqrt(SIG_TO_GG2 · sig): 8 ln2 centideg² -> (deg)²
SIG_TO_GG2 = 8.0 * LN2 / 1e4
#: area-1 profiles of FWHM F: G(x) = C_G / F · exp(−4 ln2 t), L(x) = C_L / F / (1 + 4t)
C_G = 2.0 * math.sqrt(LN2 / math.pi)
C_L = 2.0 / math.pi
#: lower bounds of the Gaussian and Lorentzian widths: this fraction of a bin (a pure L or G ends there)
WIDTH_FLOOR = 0.01
#: initial split of the half-maximum width into Γ_G and Γ_L (η ≈ 0.5), scaled so that F equals the width
START_GG, START_GL = 0.7, 0.4


def fwhm_eta(sig, gam) -> tuple[np.ndarray, np.ndarray]:
    """TCH total FWHM (deg) and mixing η of ``sig`` (centideg²) and ``gam`` (centideg); any matching shapes."""
    f, eta, *_ = _tch(np.asarray(sig, dtype=np.float64), np.asarray(gam, dtype=np.float64), derivatives=False)
    return f, eta


def _tch(sig: np.ndarray, gam: np.ndarray, derivatives: bool = True):
    """F, η and (if ``derivatives``) dF/dsig, dF/dgam, dη/dsig, dη/dgam (formulas of the module docstring)."""
    gg = np.sqrt(SIG_TO_GG2 * sig)
    gl = gam / 100.0
    a0, a1, a2, a3, a4, a5 = TCH_F
    g2, l2 = gg * gg, gl * gl
    g3, l3 = g2 * gg, l2 * gl
    g4, l4 = g3 * gg, l3 * gl
    p5 = a0 * g4 * gg + a1 * g4 * gl + a2 * g3 * l2 + a3 * g2 * l3 + a4 * gg * l4 + a5 * l4 * gl
    f = p5 ** 0.2
    q = gl / f
    e1, e2, e3 = TCH_ETA
    eta = q * (e1 + q * (e2 + q * e3))
    if not derivatives:
        return f, eta
    inv5f4 = 1.0 / (5.0 * f ** 4)
    dp_dg = 5.0 * a0 * g4 + 4.0 * a1 * g3 * gl + 3.0 * a2 * g2 * l2 + 2.0 * a3 * gg * l3 + a4 * l4
    dp_dl = a1 * g4 + 2.0 * a2 * g3 * gl + 3.0 * a3 * g2 * l2 + 4.0 * a4 * gg * l3 + 5.0 * a5 * l4
    df_dsig = dp_dg * inv5f4 * (gg / (2.0 * sig))
    df_dgam = dp_dl * inv5f4 / 100.0
    deta_dq = e1 + q * (2.0 * e2 + 3.0 * e3 * q)
    dq_dsig = -gl / (f * f) * df_dsig
    dq_dgam = 1.0 / (100.0 * f) - gl / (f * f) * df_dgam
    return f, eta, df_dsig, df_dgam, deta_dq * dq_dsig, deta_dq * dq_dgam


def model_jacobian(x: np.ndarray, p: np.ndarray, xmid: np.ndarray, hw: np.ndarray,
                   want_jac: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Model values and Jacobian for a batch of ROIs (the signature of :func:`.model.model_jacobian`).

    ``x``: ``[B, N]`` 2θ (deg); ``p``: ``[B, 2 + 4P]``; ``xmid``, ``hw``: ``[B]`` (deg). Returns ``f [B, N]`` and
    ``J [B, N, 2 + 4P]`` (None unless ``want_jac``). A slot with ``A = 0`` contributes nothing.
    """
    x, p, n_pk, f, jac = background(x, p, xmid, hw, want_jac)
    for k in range(n_pk):
        o = N_BG + PER_PEAK * k
        area, c, sig, gam = (p[:, o + j:o + j + 1] for j in range(PER_PEAK))
        fw, eta, df_ds, df_dg, de_ds, de_dg = _tch(sig, gam)
        d = x - c
        inv_f = 1.0 / fw
        t = d * d * inv_f * inv_f
        den = 1.0 / (1.0 + 4.0 * t)
        lor = C_L * inv_f * den
        gau = C_G * inv_f * np.exp(-4.0 * LN2 * t)
        shape = eta * lor + (1.0 - eta) * gau
        f = f + area * shape
        if want_jac:
            ds_df = inv_f * (eta * lor * (8.0 * t * den - 1.0) + (1.0 - eta) * gau * (8.0 * LN2 * t - 1.0))
            lmg = lor - gau
            jac[..., o + AREA] = shape
            jac[..., o + CENTER] = area * (8.0 * d * inv_f * inv_f) * (eta * lor * den + (1.0 - eta) * LN2 * gau)
            jac[..., o + SIG] = area * (ds_df * df_ds + lmg * de_ds)
            jac[..., o + GAM] = area * (ds_df * df_dg + lmg * de_dg)
    return f, jac


def chi2_dof(cost, n_points, n_peaks) -> np.ndarray:
    """χ²/dof of a ROI: ``cost / max(n_points − (2 + 4 n_peaks), 1)`` (MIDAS's ``chi_sq``)."""
    dof = np.maximum(np.asarray(n_points) - (N_BG + PER_PEAK * np.asarray(n_peaks)), 1)
    return np.asarray(cost, dtype=np.float64) / dof


def rows(p: np.ndarray, chi2: np.ndarray) -> np.ndarray:
    """fit.bin rows ``[..., P, 7]`` = ``[area, center, sig, gam, FWHM, eta, chi²/dof]`` of parameter vectors
    ``p [..., 2 + 4P]`` and their ROIs' χ²/dof ``chi2 [...]`` (:func:`chi2_dof`)."""
    p = np.asarray(p, dtype=np.float64)
    blocks = p[..., N_BG:].reshape(p.shape[:-1] + (-1, PER_PEAK))
    fw, eta = fwhm_eta(blocks[..., SIG], blocks[..., GAM])
    out = np.empty(blocks.shape[:-1] + (len(COLUMNS),))
    out[..., :4] = blocks
    out[..., 4], out[..., 5] = fw, eta
    out[..., 6] = np.asarray(chi2, dtype=np.float64)[..., None]
    return out


def start_widths(fwhm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(sig, gam)`` of a peak whose half-maximum width is ``fwhm`` (deg): Γ_G : Γ_L = 0.7 : 0.4
    (η ≈ 0.4), scaled so that the TCH FWHM equals ``fwhm``."""
    f1, _ = fwhm_eta(np.float64(START_GG ** 2 / SIG_TO_GG2), np.float64(START_GL * 100.0))
    s = np.asarray(fwhm, dtype=np.float64) / f1
    gg, gl = START_GG * s, START_GL * s
    return gg * gg / SIG_TO_GG2, 100.0 * gl


def bounds(dx, width) -> tuple[tuple, tuple]:
    """``((sig_lo, sig_hi), (gam_lo, gam_hi))`` of a ROI of mean bin width ``dx`` and width ``width`` (deg): each of
    Γ_G and Γ_L from :data:`WIDTH_FLOOR` of a bin to the ROI's width (arrays broadcast)."""
    dx = np.asarray(dx, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    g_lo = WIDTH_FLOOR * dx
    return (g_lo * g_lo / SIG_TO_GG2, width * width / SIG_TO_GG2), (100.0 * g_lo, 100.0 * width)


def blocks_from_pv(imax0, rc0, rc_lo, rc_hi, g0, span, dx, width) -> np.ndarray:
    """TCH peak blocks ``[3, ..., 4]`` (start, lower, upper bound of ``[A, c, sig, gam]``) from the pseudo-Voigt
    start of :func:`.peaks.initial_problem` on the same 2θ points (all arrays broadcast, deg): the centre and its
    window kept; ``A0 = Imax0 Γ0 (π/4 + sqrt(π/(4 ln2))/2)`` (the area of a μ = 0.5 peak), ``A ∈ [0, 8 span·width]``
    (more than a peak of height ``4 span``, Imax's bound, and FWHM ``width`` holds); sig, gam from
    :func:`start_widths` of Γ0 and :func:`bounds` of the ROI's mean bin width ``dx`` and ``width``."""
    imax0, rc0, rc_lo, rc_hi, g0, span, dx, width = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (imax0, rc0, rc_lo, rc_hi, g0, span, dx, width)))
    (s_lo, s_hi), (g_lo, g_hi) = bounds(dx, width)
    sig0, gam0 = start_widths(g0)
    out = np.empty((3,) + imax0.shape + (PER_PEAK,))
    out[0, ..., AREA] = imax0 * g0 * (0.25 * math.pi + 0.5 * math.sqrt(math.pi / (4.0 * LN2)))
    out[1, ..., AREA], out[2, ..., AREA] = 0.0, 8.0 * span * width
    out[0, ..., CENTER], out[1, ..., CENTER], out[2, ..., CENTER] = rc0, rc_lo, rc_hi
    out[0, ..., SIG], out[1, ..., SIG], out[2, ..., SIG] = sig0, s_lo, s_hi
    out[0, ..., GAM], out[1, ..., GAM], out[2, ..., GAM] = gam0, g_lo, g_hi
    return out


def from_pv(p0: np.ndarray, lo: np.ndarray, hi: np.ndarray, dx: float, width: float):
    """The TCH ``(p0, lo, hi)`` of one ROI from the pseudo-Voigt ones of :func:`.peaks.initial_problem` on the same
    2θ points (``[b0, b1, Imax, μ, Rc, Γ, ...]``): the background kept, each peak block by :func:`blocks_from_pv`
    (span = Imax's upper bound / 4), the start clipped into the bounds."""
    from .model import GAMMA, IMAX, RC

    n_pk = (p0.size - N_BG) // PER_PEAK
    out = np.stack([a.astype(np.float64, copy=True) for a in (p0, lo, hi)])
    if n_pk:
        pv = [a[N_BG:].reshape(n_pk, PER_PEAK) for a in (p0, lo, hi)]
        blocks = blocks_from_pv(pv[0][:, IMAX], pv[0][:, RC], pv[1][:, RC], pv[2][:, RC], pv[0][:, GAMMA],
                                pv[2][:, IMAX] / 4.0, dx, width)
        out[:, N_BG:] = blocks.reshape(3, -1)
    out[0] = np.clip(out[0], out[1], out[2])
    return out[0], out[1], out[2]


def initial_problem(x: np.ndarray, y: np.ndarray, start: int, stop: int, slots: list[int], bins: list[int]):
    """:func:`.peaks.initial_problem` for this model: ``x`` the 2θ bin centres (deg), the ROI bins ``start..stop-1``,
    peaks at ``bins`` (their rows ``slots``). Returns a :class:`.peaks.RoiProblem` with TCH parameters."""
    prob = peaks.initial_problem(x, y, start, stop, slots, bins)
    xs = x[start:stop]
    dx = (float(xs[-1]) - float(xs[0])) / max(1, stop - start - 1)
    width = float(xs[-1] - xs[0]) + dx
    prob.p0, prob.lo, prob.hi = from_pv(prob.p0, prob.lo, prob.hi, dx, width)
    prob.model = "tch"
    return prob


def guess(x: np.ndarray, y: np.ndarray, centres) -> object:
    """The start and bounds of one ROI spanning all of ``x`` (deg, increasing) and ``y`` with peaks near ``centres``
    (deg; each snapped to its nearest bin): a :class:`.peaks.RoiProblem` for :func:`.nlopt_fitter.fit_roi` or
    :func:`.batched.pack` with ``model="tch"``."""
    x = np.asarray(x, dtype=np.float64)
    bins = sorted(int(np.argmin(np.abs(x - float(c)))) for c in centres)
    return initial_problem(x, np.asarray(y, dtype=np.float64), 0, x.size, list(range(len(bins))), bins)


def unused_block(xmid: float) -> tuple[float, float, float, float]:
    """The fixed values of an unused peak slot (area 0: contributes nothing; the rest harmless)."""
    return (0.0, float(xmid), 1.0, 1.0)


__all__ = ["AREA", "CENTER", "SIG", "GAM", "COLUMNS", "UNITS", "fwhm_eta", "model_jacobian", "rows", "chi2_dof",
           "start_widths", "bounds", "blocks_from_pv", "from_pv", "initial_problem", "guess", "unused_block", "n_params"]

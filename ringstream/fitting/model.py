"""The peak model and its analytic Jacobian: the one place both fitters (nlopt, batched LM on CPU and GPU) take it from.

Model of one ROI (docs/MIDAS-FORMATS.md section 6), at radii ``x`` (px, the lineout's bin centres):

    t_k(x)  = (x - Rc_k)^2 / Γ_k^2
    L_k(x)  = 1 / (1 + 4 t_k)                       Lorentzian, height 1 at Rc_k, FWHM Γ_k
    G_k(x)  = exp(-4 ln2 t_k)                       Gaussian, height 1 at Rc_k, the same FWHM Γ_k
    I(x)    = b0 + b1 * (x - xmid) / hw  +  Σ_k Imax_k [μ_k L_k(x) + (1 - μ_k) G_k(x)]

``xmid``/``hw`` are the ROI's centre and half-width (px), so ``b1`` is the background change from the centre to the
edge of the ROI. The background is one per ROI, as in MIDAS, but linear rather than constant: a sloped
background under a peak biases Rcen and Γ of a constant-background fit, and a flat one simply fits ``b1 ≈ 0``. The
``BG`` column of fit.bin is the background under the peak, ``b0 + b1 (Rc_k - xmid) / hw``.

Parameter vector of a ROI with P peak slots (length ``2 + 4P``): ``[b0, b1, Imax_1, μ_1, Rc_1, Γ_1, Imax_2, ...]``.
The cost is the sum of squared residuals ``Σ (I(x) - y)^2`` (the GoF column).

Jacobian columns (d = x - Rc, s = μ(-4 L²) + (1-μ)(-4 ln2 G) = dI/dt / Imax):
    dI/db0 = 1, dI/db1 = (x - xmid)/hw, dI/dImax = μL + (1-μ)G, dI/dμ = Imax (L - G),
    dI/dRc = Imax s (-2 d / Γ²), dI/dΓ = Imax s (-2 d² / Γ³).
"""

from __future__ import annotations

import math

import numpy as np

LN2_4 = 4.0 * math.log(2.0)
#: Γ / SIGMA_FROM_GAMMA is fit.bin's "Sigma" column (MIDAS's σ = Γ / 2.355)
SIGMA_FROM_GAMMA = 2.355
#: ∫ L dx = Γ·π/2 and ∫ G dx = Γ·sqrt(π / (4 ln2)) for height-1 profiles of FWHM Γ
AREA_L = math.pi / 2.0
AREA_G = math.sqrt(math.pi / LN2_4)

#: parameters per peak and their offsets inside a peak's block
PER_PEAK = 4
IMAX, MU, RC, GAMMA = 0, 1, 2, 3
N_BG = 2


def n_params(n_peaks: int) -> int:
    """Length of the parameter vector of a ROI with ``n_peaks`` peak slots."""
    return N_BG + PER_PEAK * int(n_peaks)


def background(x, p, xmid, hw, want_jac: bool):
    """What every model's ``model_jacobian`` starts from (this one's and :func:`.tch.model_jacobian`): ``x``, ``p``
    as float64, the number of peak slots, the background ``f = b0 + b1 (x − xmid)/hw`` ``[B, N]`` and, if
    ``want_jac``, the Jacobian ``[B, N, 2 + 4P]`` with its two background columns filled (the rest to fill)."""
    x = np.asarray(x, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n_pk = (p.shape[-1] - N_BG) // PER_PEAK
    u = (x - xmid[:, None]) / hw[:, None]
    f = p[:, 0:1] + p[:, 1:2] * u
    jac = None
    if want_jac:
        jac = np.empty(x.shape + (p.shape[-1],), dtype=np.float64)
        jac[..., 0] = 1.0
        jac[..., 1] = u
    return x, p, n_pk, f, jac


def model_jacobian(x: np.ndarray, p: np.ndarray, xmid: np.ndarray, hw: np.ndarray,
                   want_jac: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Model values and Jacobian for a batch of ROIs.

    ``x``: ``[B, N]`` radii (px); ``p``: ``[B, 2 + 4P]`` parameters; ``xmid``, ``hw``: ``[B]`` (px).
    Returns ``f [B, N]`` and ``J [B, N, 2 + 4P]`` (None unless ``want_jac``). A peak slot with ``Imax = 0``
    contributes nothing (its Jacobian columns other than dI/dImax are zero).
    """
    x, p, n_pk, f, jac = background(x, p, xmid, hw, want_jac)
    for k in range(n_pk):
        o = N_BG + PER_PEAK * k
        imax, mu, rc, gam = (p[:, o + j:o + j + 1] for j in range(PER_PEAK))
        d = x - rc
        inv_g2 = 1.0 / (gam * gam)
        t = d * d * inv_g2
        lor = 1.0 / (1.0 + 4.0 * t)
        gau = np.exp(-LN2_4 * t)
        shape = mu * lor + (1.0 - mu) * gau
        f = f + imax * shape
        if want_jac:
            s = imax * (mu * (-4.0 * lor * lor) + (1.0 - mu) * (-LN2_4 * gau))
            jac[..., o + IMAX] = shape
            jac[..., o + MU] = imax * (lor - gau)
            jac[..., o + RC] = s * (-2.0 * d * inv_g2)
            jac[..., o + GAMMA] = s * (-2.0 * t / gam)
    return f, jac


def cost_gradient(x: np.ndarray, y: np.ndarray, w: np.ndarray, p: np.ndarray, xmid: float, hw: float,
                  grad: np.ndarray | None = None, jac_fn=None) -> float:
    """Cost ``Σ w (I(x) - y)^2`` of one ROI (1-D ``x``, ``y``, ``w`` of the ROI's points; ``w`` is 1 for a point
    that counts, 0 for padding) and, if ``grad`` (length ``len(p)``) is given, its gradient written into it.
    ``jac_fn``: another model's ``model_jacobian`` (:mod:`.models`; default this one)."""
    f, jac = (jac_fn or model_jacobian)(x[None, :], p[None, :], np.array([xmid]), np.array([hw]), want_jac=grad is not None)
    r = (f[0] - y) * w
    if grad is not None:
        grad[:] = 2.0 * (r @ jac[0])
    return float(r @ r)


def peak_area(imax: np.ndarray, mu: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Integrated area of the peak above the background, ``Imax Γ [μ π/2 + (1-μ) sqrt(π/(4 ln2))]`` (intensity·px)."""
    return imax * gamma * (mu * AREA_L + (1.0 - mu) * AREA_G)

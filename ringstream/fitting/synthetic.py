"""Synthetic lineouts with known peaks, for the accuracy tests and the benchmark.

A case is a lineout of ``n_bins`` bins (x = bin index as px, RBinSize 1) with 1–3 pseudo-Voigt peaks of the model
in :mod:`.model` on a flat or sloped background, with Poisson noise. The peak signal-to-noise ratio is
``SNR = Imax / sqrt(Imax + BG)`` (Poisson noise at the top of the peak), so a case of SNR s has
``Imax = s² (1 + sqrt(1 + 4 BG/s²)) / 2``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .model import model_jacobian, n_params


@dataclasses.dataclass
class Case:
    """One synthetic lineout: ``y`` (noisy counts), ``truth`` (the parameter vector of the one ROI around all its
    peaks, in :mod:`.model` layout), ``centres`` (px), ``snr``, and ``xmid``/``hw`` of that ROI (px)."""

    x: np.ndarray
    y: np.ndarray
    truth: np.ndarray
    centres: list[float]
    snr: float
    xmid: float
    hw: float


def imax_for_snr(snr: float, bg: float) -> float:
    """Peak height above a background ``bg`` (counts) whose Poisson SNR at the top is ``snr``."""
    s2 = snr * snr
    return 0.5 * s2 * (1.0 + np.sqrt(1.0 + 4.0 * bg / s2))


def make_case(rng: np.random.Generator, kind: str = "single", snr: float = 100.0, gamma: float | None = None,
              mu: float | None = None, slope: bool | None = None, n_bins: int = 200, pad: int = 20) -> Case:
    """A random case. ``kind``: "single", "double" (two peaks ~1–1.5 Γ apart: overlapping) or "triple"; Γ drawn in
    [2, 20] bins (for overlapping kinds in [2, 10]), μ in [0, 1], background 50–500 counts, flat or with a slope of up
    to ±30 % of the background across the ROI, unless given. Centres are off-grid (random fractions of a bin)."""
    n_pk = {"single": 1, "double": 2, "triple": 3}[kind]
    x = np.arange(n_bins, dtype=np.float64)
    if gamma is None:
        gamma = rng.uniform(2.0, 20.0 if n_pk == 1 else 10.0)
    gammas = [gamma * rng.uniform(0.85, 1.15) if k else gamma for k in range(n_pk)]
    sep = [rng.uniform(1.0, 1.5) * max(gammas) for _ in range(n_pk - 1)]
    span = float(sum(sep))
    c0 = n_bins / 2.0 - span / 2.0 + rng.uniform(-0.5, 0.5)
    centres = [c0 + float(sum(sep[:k])) for k in range(n_pk)]
    lo_bin = int(np.floor(centres[0])) - pad
    hi_bin = int(np.ceil(centres[-1])) + pad
    xmid = 0.5 * (lo_bin + hi_bin)
    hw = 0.5 * (hi_bin - lo_bin)
    bg = rng.uniform(50.0, 500.0)
    if slope is None:
        slope = bool(rng.integers(0, 2))
    b1 = rng.uniform(-0.3, 0.3) * bg if slope else 0.0
    p = np.empty(n_params(n_pk))
    p[0], p[1] = bg, b1
    for k in range(n_pk):
        m = float(rng.uniform(0.0, 1.0)) if mu is None else float(mu)
        # SNR is that of the first peak; the others within a factor 2 in height
        imax = imax_for_snr(snr, bg) * (rng.uniform(0.5, 1.0) if k else 1.0)
        p[2 + 4 * k: 6 + 4 * k] = (imax, m, centres[k], gammas[k])
    f, _ = model_jacobian(x[None, :], p[None, :], np.array([xmid]), np.array([hw]), want_jac=False)
    y = rng.poisson(np.clip(f[0], 0, None)).astype(np.float64)
    return Case(x, y, p, centres, float(snr), xmid, hw)


def make_tch_case(rng: np.random.Generator, kind: str = "single", snr: float = 100.0,
                  sig: float | None = None, gam: float | None = None, dx: float = 0.01, pad: int = 20,
                  n_bins: int = 120, tth0: float = 6.0) -> Case:
    """A random case of the TCH model (:mod:`.tch`) on a 2θ axis of ``n_bins`` bins of ``dx`` deg from ``tth0``.
    ``kind`` as :func:`make_case` (overlapping peaks 1–1.5 FWHM apart); unless given, sig (centideg²) drawn in
    [1, 11.5] (Γ_G 2.4–8 centideg: a few bins, as measured patterns) and gam (centideg) as Γ_L = 0.3–1.5 Γ_G (η
    0.25–0.75: both parts of the profile matter; where one is a few % of the other its width is not measurable to
    a few %), each further peak's within ±15 %; background 50–500 counts, flat or sloped; ``snr`` that of the first peak's top
    (the others 0.5–1 times as high). ``truth``, ``centres``, ``xmid``, ``hw`` in degrees."""
    from . import tch

    n_pk = {"single": 1, "double": 2, "triple": 3}[kind]
    x = tth0 + dx * np.arange(n_bins, dtype=np.float64)
    sig = rng.uniform(1.0, 11.5) if sig is None else float(sig)
    gam = 100.0 * rng.uniform(0.3, 1.5) * np.sqrt(tch.SIG_TO_GG2 * sig) if gam is None else float(gam)
    sigs = [sig * rng.uniform(0.85, 1.15) if k else sig for k in range(n_pk)]
    gams = [gam * rng.uniform(0.85, 1.15) if k else gam for k in range(n_pk)]
    fw, eta = tch.fwhm_eta(np.array(sigs), np.array(gams))
    sep = [rng.uniform(1.0, 1.5) * float(fw.max()) for _ in range(n_pk - 1)]
    c0 = float(x[n_bins // 2]) - 0.5 * float(sum(sep)) + dx * rng.uniform(-0.5, 0.5)
    centres = [c0 + float(sum(sep[:k])) for k in range(n_pk)]
    lo_bin = int(np.floor((centres[0] - tth0) / dx)) - pad
    hi_bin = int(np.ceil((centres[-1] - tth0) / dx)) + pad
    xmid = 0.5 * (float(x[lo_bin]) + float(x[hi_bin]))
    hw = 0.5 * (float(x[hi_bin]) - float(x[lo_bin]))
    bg = rng.uniform(50.0, 500.0)
    b1 = rng.uniform(-0.3, 0.3) * bg if rng.integers(0, 2) else 0.0
    p = np.empty(n_params(n_pk))
    p[0], p[1] = bg, b1
    for k in range(n_pk):
        height1 = eta[k] * tch.C_L / fw[k] + (1.0 - eta[k]) * tch.C_G / fw[k]  # the top of an area-1 peak
        imax = imax_for_snr(snr, bg) * (rng.uniform(0.5, 1.0) if k else 1.0)
        p[2 + 4 * k: 6 + 4 * k] = (imax / height1, centres[k], sigs[k], gams[k])
    f, _ = tch.model_jacobian(x[None, :], p[None, :], np.array([xmid]), np.array([hw]), want_jac=False)
    y = rng.poisson(np.clip(f[0], 0, None)).astype(np.float64)
    return Case(x, y, p, centres, float(snr), xmid, hw)

"""Bin edges and centres of the (R, η) grid, in R mode or Q mode (docs/MIDAS-FORMATS.md section 2, "Bins";
docs/DESIGN.md, "Bins").

- R mode: edges ``RMin + i·RBinSize``, i = 0..n_R with ``n_R = ceil((RMax - RMin)/RBinSize)``; centres are the
  midpoints; 2θ = atan(R·px/Lsd), Q = 4π/λ·sin θ (NaN when the Wavelength is unknown).
- Q mode (QMin, QMax, QBinSize all > 0 and Wavelength > 0): uniform Q edges ``QMin + i·QBinSize`` mapped to R by
  ``R = (Lsd/px)·tan(2·asin(Qλ/4π))``; centres are the Q midpoints mapped the same way.
- η edges ``EtaMin + i·EtaBinSize`` (deg), centres the midpoints.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ParamError


def _count(lo: float, hi: float, step: float, what: str) -> int:
    """ceil((hi - lo)/step), robust to round-off (``ceil(x - 1e-9)``); ParamError when not positive."""
    if not step > 0:
        raise ParamError(f"{what}BinSize {step}: must be > 0")
    n = math.ceil((hi - lo) / step - 1e-9)
    if n < 1:
        raise ParamError(f"{what}Min {lo}, {what}Max {hi}: {what}Max must be larger than {what}Min")
    return int(n)


def _q_to_r(q: np.ndarray, p) -> np.ndarray:
    """R (px) = (Lsd/px)·tan(2·asin(Qλ/4π)) for Q in Å⁻¹."""
    s = np.asarray(q, dtype=np.float64) * float(p.Wavelength) / (4.0 * np.pi)
    if np.any(s >= 1.0 / math.sqrt(2.0)) or np.any(s < 0):
        raise ParamError(
            f"QMin {p.QMin}, QMax {p.QMax}: Q must lie in [0, 4π·sin(45°)/λ) = "
            f"[0, {4 * np.pi * math.sin(math.pi / 4) / float(p.Wavelength):.6g}) Å⁻¹ (2θ < 90°) "
            f"for Wavelength {p.Wavelength} Å"
        )
    return float(p.Lsd) / float(p.px) * np.tan(2.0 * np.arcsin(s))


def q_edges(p) -> np.ndarray:
    """Q-mode bin edges in Å⁻¹, float64 [n_R + 1]."""
    n = _count(float(p.QMin), float(p.QMax), float(p.QBinSize), "Q")
    return float(p.QMin) + np.arange(n + 1, dtype=np.float64) * float(p.QBinSize)


def radial_edges(p) -> np.ndarray:
    """R bin edges in px of corrected R, float64 [n_R + 1] (R mode or Q mode)."""
    if p.q_mode:
        return _q_to_r(q_edges(p), p)
    n = _count(float(p.RMin), float(p.RMax), float(p.RBinSize), "R")
    return float(p.RMin) + np.arange(n + 1, dtype=np.float64) * float(p.RBinSize)


def eta_edges(p) -> np.ndarray:
    """η bin edges in degrees, float64 [n_η + 1]."""
    n = _count(float(p.EtaMin), float(p.EtaMax), float(p.EtaBinSize), "Eta")
    return float(p.EtaMin) + np.arange(n + 1, dtype=np.float64) * float(p.EtaBinSize)


def bin_centres(p, geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres ``(r_px [n_R], two_theta_deg [n_R], q_inv_A [n_R], eta_deg [n_η])``.

    ``geometry`` is the :class:`~.detector.DetectorGeometry` (for 2θ and Q). q is NaN when no Wavelength is known.
    """
    if p.q_mode:
        qe = q_edges(p)
        qc = 0.5 * (qe[:-1] + qe[1:])
        r = _q_to_r(qc, p)
        q = qc
    else:
        re = radial_edges(p)
        r = 0.5 * (re[:-1] + re[1:])
        q = geometry.q_inv_angstrom(r)
    ee = eta_edges(p)
    eta = 0.5 * (ee[:-1] + ee[1:])
    return r, geometry.two_theta_deg(r), q, eta

"""The peak models a run can fit (``[fit] model``), each declared once with what the fitters need to know about it.

=====  ==============================================  ============  =============================================
name   profile                                         x axis        fit.bin row
=====  ==============================================  ============  =============================================
pv     height-normalised pseudo-Voigt, linear BG       R (px)        Imax, BG, Mu, Rcen, Sigma, GoF, Area
       (:mod:`.model`; the seed manual's, default)
tch    GSAS-II area-normalised pseudo-Voigt, TCH       2θ (deg)      area, center, sig, gam, FWHM, eta, chi2_dof
       mixing, 2-term Chebyshev BG (:mod:`.tch`)
=====  ==============================================  ============  =============================================

Both use the parameter layout ``[b0, b1, 4 per peak]`` and the same background, so ROIs, packing, the LM algorithm and
the failure tests are shared; a model says where a peak's centre sits in its block (for sorting peaks), which bounds
are the model's own range rather than a limit of the search (a fit ending there is valid: μ at 0 or 1 for pv, sig or
gam at their floor, a pure Lorentzian or Gaussian, for tch), and what an unused peak slot holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError
from . import model as pv
from . import tch
from .peaks import NATURAL_BOUNDS as _PV_NATURAL

#: the model a run fits unless ``[fit] model`` says otherwise
DEFAULT_MODEL = "pv"


@dataclasses.dataclass(frozen=True)
class PeakModel:
    """One model: ``model_jacobian(x, p, xmid, hw, want_jac)``; ``center`` the offset of the centre in a peak block;
    ``natural_lo`` / ``natural_hi`` offsets whose lower / upper bound a fit may end at; ``unused`` the four values
    of an unused slot given the ROI's ``xmid``; ``columns``/``units`` of a fit.bin row; ``axis`` the x of the fit
    ("r_px": the lineout's R bin centres, "two_theta_deg": their 2θ)."""

    name: str
    model_jacobian: Callable
    center: int
    natural_lo: tuple[int, ...]
    natural_hi: tuple[int, ...]
    unused: Callable[[float], tuple[float, float, float, float]]
    columns: tuple[str, ...]
    units: tuple[str, ...]
    axis: str

    def pinned_masks(self, n_peaks: int) -> tuple[np.ndarray, np.ndarray]:
        """Which parameters of a ROI of ``n_peaks`` peaks fail the "pinned at a bound" test at their lower and at
        their upper bound (``[2 + 4P]`` bool each)."""
        m = pv.n_params(n_peaks)
        lo, hi = np.ones(m, dtype=bool), np.ones(m, dtype=bool)
        for k in range(int(n_peaks)):
            o = pv.N_BG + pv.PER_PEAK * k
            for j in self.natural_lo:
                lo[o + j] = False
            for j in self.natural_hi:
                hi[o + j] = False
        return lo, hi

    def is_pinned(self, p: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_peaks: int, rel: float = 1e-7) -> bool:
        """True when a parameter sits at a bound (within ``rel`` of its bound interval) that is not the model's own
        range (:meth:`pinned_masks`)."""
        m_lo, m_hi = self.pinned_masks(n_peaks)
        tol = rel * (hi - lo)
        at = ((p <= lo + tol) & m_lo) | ((p >= hi - tol) & m_hi)
        return bool(np.any(at & (hi > lo)))


PV = PeakModel("pv", pv.model_jacobian, pv.RC, _PV_NATURAL, _PV_NATURAL, lambda xmid: (0.0, 0.5, float(xmid), 1.0),
               ("Imax", "BG", "Mu", "Rcen", "Sigma", "GoF", "Area"),
               ("counts", "counts", "", "px", "px", "counts^2", "counts*px"), "r_px")
TCH = PeakModel("tch", tch.model_jacobian, tch.CENTER, (tch.SIG, tch.GAM), (), tch.unused_block, tch.COLUMNS,
                tch.UNITS, "two_theta_deg")

MODELS: dict[str, PeakModel] = {m.name: m for m in (PV, TCH)}


def get_model(name) -> PeakModel:
    """The model called ``name`` (a :class:`PeakModel` passes through); ConfigError naming the choices otherwise."""
    if isinstance(name, PeakModel):
        return name
    try:
        return MODELS[str(name or DEFAULT_MODEL).lower()]
    except KeyError:
        raise ConfigError(f"[fit] model {name!r}: expected one of {', '.join(MODELS)}") from None

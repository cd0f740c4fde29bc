"""The CPU fitter: nlopt LD_LBFGS with the analytic gradient and bounds, LN_NELDERMEAD when L-BFGS fails.

"Fails" is decided by these tests, not by nlopt's result code alone (LD_LBFGS can report success when stuck,
and raises ``RoundoffLimited`` instead of returning its point): an nlopt exception other than RoundoffLimited
or a negative result code, a non-finite result, a parameter pinned at a bound (pv's μ excepted: 0 and 1 are the
model's own range; tch's sig and gam at their floor, a pure Lorentzian or Gaussian: :mod:`.models`), or a final
cost no better than the start. The objective keeps the best point it was called with, so RoundoffLimited returns
that point.

Both optimisers work in scaled coordinates q = (p − lo)/(hi − lo) ∈ [0, 1]^n and on the cost divided by the start
cost, so that a peak height of 1e5 and a mixing of 0.5 weigh alike.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .model import cost_gradient
from .models import get_model
from .peaks import RoiProblem

#: L-BFGS stopping: relative cost change, relative step (in q), evaluations
LBFGS_FTOL, LBFGS_XTOL, LBFGS_MAXEVAL = 1e-13, 1e-10, 3000
#: Nelder–Mead stopping and initial step (in q)
NM_FTOL, NM_XTOL, NM_MAXEVAL, NM_STEP = 1e-14, 1e-10, 20000, 0.05


@dataclasses.dataclass
class RoiFit:
    """What a fitter made of one :class:`~.peaks.RoiProblem`: parameters ``p`` (px, model units), final ``cost``
    (sum of squared residuals), ``start_cost``, ``ok`` (passed the failure tests), ``method`` ("lbfgs",
    "neldermead", "lm"), ``fallback`` (Nelder–Mead was needed), ``reason`` (why not ok, "" when ok)."""

    p: np.ndarray
    cost: float
    start_cost: float
    ok: bool
    method: str
    fallback: bool = False
    reason: str = ""
    evaluations: int = 0


def failure_reason(p, cost: float, start_cost: float, prob: RoiProblem) -> str:
    """"" when the result passes the failure tests of the module docstring, else the first test it fails
    (``non_finite``, ``pinned_at_bound``, ``no_improvement``)."""
    if p is None or not np.all(np.isfinite(p)) or not math.isfinite(cost):
        return "non_finite"
    if get_model(prob.model).is_pinned(p, prob.lo, prob.hi, len(prob.slots)):
        return "pinned_at_bound"
    if not cost < start_cost:
        return "no_improvement"
    return ""


class _Objective:
    """Scaled cost and gradient for nlopt, remembering the best point seen."""

    def __init__(self, x, y, prob: RoiProblem) -> None:
        self.x, self.y, self.prob = x, y, prob
        self.jac_fn = get_model(prob.model).model_jacobian
        self.w = np.ones_like(y)
        self.scale = prob.hi - prob.lo
        self.scale[self.scale <= 0] = 1.0
        self.gp = np.empty(prob.p0.size)
        self.c0 = 1.0
        self.c0 = cost_gradient(x, y, self.w, prob.p0, prob.xmid, prob.hw, jac_fn=self.jac_fn) or 1.0
        self.best_q, self.best_f, self.n = None, math.inf, 0

    def p_of(self, q) -> np.ndarray:
        return self.prob.lo + np.asarray(q) * self.scale

    def __call__(self, q, grad) -> float:
        self.n += 1
        p = self.p_of(q)
        if grad.size:
            c = cost_gradient(self.x, self.y, self.w, p, self.prob.xmid, self.prob.hw, self.gp, self.jac_fn)
            grad[:] = self.gp * self.scale / self.c0
        else:
            c = cost_gradient(self.x, self.y, self.w, p, self.prob.xmid, self.prob.hw, jac_fn=self.jac_fn)
        f = c / self.c0
        if math.isfinite(f) and f < self.best_f:
            self.best_f, self.best_q = f, np.array(q, dtype=np.float64)
        return f if math.isfinite(f) else 1e300


def _run(algorithm, obj: _Objective, q0: np.ndarray, ftol: float, xtol: float, maxeval: int,
         step: float | None = None) -> tuple[np.ndarray | None, str]:
    """One nlopt run from ``q0``; returns (the best q, "" or the nlopt error that makes the run a failure)."""
    import nlopt

    n = q0.size
    opt = nlopt.opt(algorithm, n)
    lo = np.zeros(n)
    hi = np.ones(n)
    fixed = obj.prob.hi <= obj.prob.lo
    hi[fixed] = 0.0
    opt.set_lower_bounds(lo)
    opt.set_upper_bounds(hi)
    opt.set_min_objective(obj)
    opt.set_ftol_rel(ftol)
    opt.set_xtol_rel(xtol)
    opt.set_maxeval(maxeval)
    if step is not None:
        opt.set_initial_step(step)
    obj.best_q, obj.best_f = None, math.inf
    err = ""
    try:
        q = opt.optimize(np.clip(q0, lo, hi))
        code = opt.last_optimize_result()
        if code < 0:
            err = f"nlopt_code_{code}"
        elif obj.best_q is None or obj.best_f > opt.last_optimum_value():
            obj.best_q = np.asarray(q)
    except nlopt.RoundoffLimited:
        pass  # the best point seen is kept by the objective
    except Exception as exc:  # any other nlopt exception (failure, invalid argument, forced stop) is a failure
        err = f"nlopt_{type(exc).__name__}"
    return obj.best_q, err


def fit_roi(x: np.ndarray, y: np.ndarray, prob: RoiProblem) -> RoiFit:
    """Fit one ROI: ``x``, ``y`` its points (px, intensity; deg 2θ for ``prob.model`` "tch"), ``prob`` its model,
    start and bounds. L-BFGS first; Nelder–Mead
    from the same start when L-BFGS fails (see the module docstring); ``ok`` tells whether the result passed."""
    import nlopt

    obj = _Objective(x, y, prob)
    q0 = (prob.p0 - prob.lo) / obj.scale
    start_cost = obj.c0
    q, err = _run(nlopt.LD_LBFGS, obj, q0, LBFGS_FTOL, LBFGS_XTOL, LBFGS_MAXEVAL)
    evals = obj.n
    if q is not None:
        p = obj.p_of(q)
        cost = obj.best_f * obj.c0
        reason = err or failure_reason(p, cost, start_cost, prob)
        if not reason:
            return RoiFit(p, cost, start_cost, True, "lbfgs", evaluations=evals)
    q, err = _run(nlopt.LN_NELDERMEAD, obj, q0, NM_FTOL, NM_XTOL, NM_MAXEVAL, step=NM_STEP)
    evals = obj.n
    if q is None:
        return RoiFit(prob.p0.copy(), math.nan, start_cost, False, "neldermead", True, err or "non_finite", evals)
    p = obj.p_of(q)
    cost = obj.best_f * obj.c0
    reason = err or failure_reason(p, cost, start_cost, prob)
    return RoiFit(p, cost, start_cost, not reason, "neldermead", True, reason, evals)

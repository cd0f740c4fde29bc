"""The batched fitter's algorithm in NumPy: damped Gauss–Newton (Levenberg–Marquardt) over every ROI of a batch at
once, with the same model (:mod:`.model`) and bounds (:mod:`.peaks`) as the nlopt fitter.

This is the readable reference of the CUDA kernel in :mod:`.gpu_fitter`, which runs exactly this algorithm, one
thread per ROI; the tests run it here against nlopt, so only the port needs the device.

Packing (:func:`pack`): B ROIs become padded arrays ``x, y [B, N]`` (N = the longest ROI; padding after the
``npts[b]`` real points is ignored), ``p, lo, hi [B, 2 + 4P]`` (P = the most peaks of any ROI; an unused peak slot
has Imax fixed at 0: lo = hi, so it contributes nothing), ``xmid, hw [B]``, and the batch's peak ``model``
(:mod:`.models`: "pv" on R in px, or "tch" on 2θ in degrees, whose unused slots have area 0): the algorithm below
is the same for both, only the model and its Jacobian differ.

Algorithm, per ROI, with r = model − y over the real points, J the Jacobian, A = JᵀJ, g = Jᵀr, cost = rᵀr:

    λ = LAMBDA0
    repeat up to MAX_ITER times:
        free_i = hi_i > lo_i and not (p_i <= lo_i and g_i > 0) and not (p_i >= hi_i and g_i < 0)   (active set)
        M = A + λ diag(max(A_ii, DIAG_FLOOR·max_j A_jj)) on the free rows/columns, identity on the others
        solve M δ = −g (free rows; δ_i = 0 elsewhere); p' = clip(p + δ, lo, hi); cost' = cost(p')
        cost' < cost:  accept p', recompute r, J, A, g;  λ = max(λ / LAMBDA_DOWN, LAMBDA_MIN)
                       converged when cost − cost' <= FTOL·cost or max_i |p'_i − p_i| / (hi_i − lo_i) <= XTOL
                       (either, as MINPACK's lmder: both at once left 0.3-0.4 % of triple-peak ROIs creeping
                       along a flat valley, a relative cost change of 1e-10 an iteration, to MAX_ITER)
        otherwise:     λ = λ·LAMBDA_UP; converged (no step can lower the cost) when λ > LAMBDA_MAX
        (a non-positive-definite M counts as a rejected step)

A ROI not converged within MAX_ITER, with a non-finite result, a parameter pinned at a bound (μ excepted) or a cost
no better than the start is a failure, as for nlopt (:func:`.nlopt_fitter.failure_reason`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .model import N_BG, PER_PEAK, n_params
from .models import DEFAULT_MODEL, get_model
from .peaks import RoiProblem

LAMBDA0 = 1e-3
LAMBDA_UP, LAMBDA_DOWN = 4.0, 3.0
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 1e10
DIAG_FLOOR = 1e-12
FTOL, XTOL = 1e-12, 1e-9
MAX_ITER = 500

#: status codes of a batched fit (also the CUDA kernel's)
RUNNING, CONVERGED, MAX_ITER_REACHED = 0, 1, 2


@dataclasses.dataclass
class Packed:
    """A batch of ROIs as padded arrays (see the module docstring); ``n_peaks [B]`` real peaks per ROI; ``model``
    the peak model of every ROI ("pv" or "tch")."""

    x: np.ndarray
    y: np.ndarray
    npts: np.ndarray
    p: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    xmid: np.ndarray
    hw: np.ndarray
    n_peaks: np.ndarray
    model: str = DEFAULT_MODEL

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


def pack(problems: list[RoiProblem], xs: list[np.ndarray], ys: list[np.ndarray]) -> Packed:
    """Pad the ROIs ``problems`` with their points ``xs``, ``ys`` (each 1-D, ``n_points`` long) into one batch (every
    problem of one model)."""
    b = len(problems)
    models = {p.model for p in problems} or {DEFAULT_MODEL}
    if len(models) > 1:
        raise ValueError(f"one batch, one peak model: got {sorted(models)}")
    model = get_model(models.pop())
    n = max([p.n_points for p in problems] or [1])
    n_pk = max([len(p.slots) for p in problems] or [1])
    m = n_params(n_pk)
    x = np.zeros((b, n))
    y = np.zeros((b, n))
    p = np.zeros((b, m))
    lo = np.zeros((b, m))
    hi = np.zeros((b, m))
    npts = np.zeros(b, np.int32)
    pk = np.zeros(b, np.int32)
    xmid = np.zeros(b)
    hw = np.ones(b)
    for i, (prob, xi, yi) in enumerate(zip(problems, xs, ys, strict=False)):
        k = prob.n_points
        x[i, :k], y[i, :k] = xi, yi
        x[i, k:] = xi[-1]
        npts[i] = k
        q = prob.p0.size
        p[i, :q], lo[i, :q], hi[i, :q] = prob.p0, prob.lo, prob.hi
        for s in range(len(prob.slots), n_pk):  # unused slot: Imax (area) 0, fixed; harmless shape values
            o = N_BG + PER_PEAK * s
            p[i, o:o + 4] = lo[i, o:o + 4] = hi[i, o:o + 4] = model.unused(prob.xmid)
        pk[i] = len(prob.slots)
        xmid[i], hw[i] = prob.xmid, prob.hw
    return Packed(x, y, npts, p, lo, hi, xmid, hw, pk, model.name)


def _residuals(pk: Packed, p: np.ndarray, mask: np.ndarray, want_jac: bool, model_jacobian):
    f, jac = model_jacobian(pk.x, p, pk.xmid, pk.hw, want_jac=want_jac)
    r = (f - pk.y) * mask
    if jac is not None:
        jac *= mask[..., None]
    return r, jac, np.einsum("bn,bn->b", r, r)


def fit_batch(pk: Packed, max_iter: int = MAX_ITER, model: str | None = None) -> dict[str, np.ndarray]:
    """Run the algorithm of the module docstring on every ROI of ``pk`` with its peak model (``model``: another one,
    "pv" or "tch"). Returns ``p [B, 2+4P]``, ``cost [B]``, ``start_cost [B]``, ``status [B]`` (CONVERGED or
    MAX_ITER_REACHED), ``iterations [B]``."""
    jac_fn = get_model(model or pk.model).model_jacobian
    b, m = pk.p.shape
    mask = (np.arange(pk.x.shape[1])[None, :] < pk.npts[:, None]).astype(np.float64)
    p = pk.p.copy()
    r, jac, cost = _residuals(pk, p, mask, True, jac_fn)
    start_cost = cost.copy()
    a = np.einsum("bni,bnj->bij", jac, jac)
    g = np.einsum("bni,bn->bi", jac, r)
    lam = np.full(b, LAMBDA0)
    status = np.zeros(b, np.int32)
    iters = np.zeros(b, np.int32)
    fixed_param = pk.hi <= pk.lo
    eye = np.eye(m)
    for _ in range(max_iter):
        act = status == RUNNING
        if not act.any():
            break
        iters[act] += 1
        free = ~fixed_param & ~((p <= pk.lo) & (g > 0)) & ~((p >= pk.hi) & (g < 0))
        diag = np.einsum("bii->bi", a)
        dmax = np.max(np.where(free, diag, 0.0), axis=1, keepdims=True)
        d = np.maximum(diag, DIAG_FLOOR * dmax)
        ff = free[:, :, None] & free[:, None, :]
        mat = np.where(ff, a + (lam[:, None] * d)[:, :, None] * eye, eye)
        rhs = np.where(free, -g, 0.0)
        # Cholesky (as the kernel): a non-positive-definite matrix is a rejected step
        ok = np.ones(b, dtype=bool)
        delta = np.zeros_like(p)
        try:
            chol = np.linalg.cholesky(mat[act])
            sol = np.linalg.solve(np.swapaxes(chol, 1, 2), np.linalg.solve(chol, rhs[act][..., None]))[..., 0]
            delta[act] = sol
        except np.linalg.LinAlgError:
            for i in np.flatnonzero(act):
                try:
                    c = np.linalg.cholesky(mat[i])
                    delta[i] = np.linalg.solve(c.T, np.linalg.solve(c, rhs[i]))
                except np.linalg.LinAlgError:
                    ok[i] = False
        pn = np.clip(p + delta, pk.lo, pk.hi)
        rn, jn, cn = _residuals(pk, pn, mask, True, jac_fn)
        better = act & ok & np.isfinite(cn) & (cn < cost)
        worse = act & ~better
        if better.any():
            span = np.where(pk.hi > pk.lo, pk.hi - pk.lo, 1.0)
            step = np.max(np.abs(pn - p) / span, axis=1)
            small = (cost - cn <= FTOL * cost) | (step <= XTOL)  # either, as MINPACK's lmder
            p[better], r[better], cost[better] = pn[better], rn[better], cn[better]
            jac[better] = jn[better]
            a[better] = np.einsum("bni,bnj->bij", jn[better], jn[better])
            g[better] = np.einsum("bni,bn->bi", jn[better], rn[better])
            lam[better] = np.maximum(lam[better] / LAMBDA_DOWN, LAMBDA_MIN)
            status[better & small] = CONVERGED
        lam[worse] *= LAMBDA_UP
        status[worse & (lam > LAMBDA_MAX)] = CONVERGED
    status[status == RUNNING] = MAX_ITER_REACHED
    return {"p": p, "cost": cost, "start_cost": start_cost, "status": status, "iterations": iters}

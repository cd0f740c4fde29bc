"""The batched GPU fitter: the Levenberg–Marquardt algorithm of :mod:`.batched`, one CUDA thread per ROI, every ROI of
a batch of frames in one launch (a ``cupy.RawKernel``), float64 throughout.

The NumPy expression the kernel computes is :func:`ringstream.fitting.batched.fit_batch` (same model, bounds, active
set, damping schedule, Cholesky solve and stopping rules; the module docstring there states them); the GPU tests check
the two agree. At most :data:`~.peaks.MAX_PEAKS_PER_ROI` peaks per ROI (``MAXP``), so a thread's normal matrix is at
most 18 × 18. Device buffers come from CuPy's memory pool and are reused from batch to batch.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import batched
from .peaks import MAX_PEAKS_PER_ROI

GPU_INSTALL_HINT = "pip install 'ringstream[gpu]'"

_SOURCE = r"""
#define MAXP %(maxp)d
#define MAXM (2 + 4 * MAXP)
#define LN2_4 %(ln2_4).17g

__device__ __forceinline__ double roi_pass(const double* xb, const double* yb, int n, const double* p, int P,
                                           double xmid, double hw, double* A, double* g, int M, bool want)
{
    // cost = sum_n r^2 with r = model - y; if want: A = J^T J (upper triangle), g = J^T r
    double J[MAXM];
    double cost = 0.0;
    if (want) {
        for (int i = 0; i < M * M; ++i) A[i] = 0.0;
        for (int i = 0; i < M; ++i) g[i] = 0.0;
    }
    for (int q = 0; q < n; ++q) {
        const double xv = xb[q];
        const double u = (xv - xmid) / hw;
        double f = p[0] + p[1] * u;
        J[0] = 1.0; J[1] = u;
        for (int k = 0; k < P; ++k) {
            const int o = 2 + 4 * k;
            const double imax = p[o], mu = p[o + 1], rc = p[o + 2], gam = p[o + 3];
            const double d = xv - rc;
            const double ig2 = 1.0 / (gam * gam);
            const double t = d * d * ig2;
            const double lor = 1.0 / (1.0 + 4.0 * t);
            const double gau = exp(-LN2_4 * t);
            const double shape = mu * lor + (1.0 - mu) * gau;
            f += imax * shape;
            const double s = imax * (mu * (-4.0 * lor * lor) + (1.0 - mu) * (-LN2_4 * gau));
            J[o] = shape;
            J[o + 1] = imax * (lor - gau);
            J[o + 2] = s * (-2.0 * d * ig2);
            J[o + 3] = s * (-2.0 * t / gam);
        }
        const double r = f - yb[q];
        cost += r * r;
        if (want) {
            for (int i = 0; i < M; ++i) {
                g[i] += J[i] * r;
                for (int j = i; j < M; ++j) A[i * M + j] += J[i] * J[j];
            }
        }
    }
    if (want)
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < i; ++j) A[i * M + j] = A[j * M + i];
    return cost;
}

extern "C" __global__ void lm_fit(const double* __restrict__ x, const double* __restrict__ y,
                                  const int* __restrict__ npts, const double* __restrict__ xmid_,
                                  const double* __restrict__ hw_, double* __restrict__ p_io,
                                  const double* __restrict__ lo_, const double* __restrict__ hi_,
                                  double* __restrict__ cost_out, double* __restrict__ cost0_out,
                                  int* __restrict__ status_out, int* __restrict__ iters_out,
                                  const int B, const int N, const int M, const int max_iter)
{
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double* xb = x + (long long)b * N;
    const double* yb = y + (long long)b * N;
    const int n = npts[b];
    const double xmid = xmid_[b], hw = hw_[b];
    const int P = (M - 2) / 4;
    double p[MAXM], lo[MAXM], hi[MAXM], pn[MAXM], g[MAXM], rhs[MAXM];
    double A[MAXM * MAXM], L[MAXM * MAXM];
    bool fr[MAXM];
    for (int i = 0; i < M; ++i) {
        p[i] = p_io[(long long)b * M + i]; lo[i] = lo_[(long long)b * M + i]; hi[i] = hi_[(long long)b * M + i];
    }
    double cost = roi_pass(xb, yb, n, p, P, xmid, hw, A, g, M, true);
    cost0_out[b] = cost;
    double lam = %(lambda0).17g;
    int status = 0, it = 0;
    while (status == 0 && it < max_iter) {
        ++it;
        double dmax = 0.0;
        for (int i = 0; i < M; ++i) {
            fr[i] = (hi[i] > lo[i]) && !(p[i] <= lo[i] && g[i] > 0.0) && !(p[i] >= hi[i] && g[i] < 0.0);
            if (fr[i] && A[i * M + i] > dmax) dmax = A[i * M + i];
        }
        for (int i = 0; i < M; ++i) {
            for (int j = 0; j < M; ++j) {
                double v;
                if (fr[i] && fr[j]) {
                    v = A[i * M + j];
                    if (i == j) v += lam * fmax(A[i * M + i], %(diag_floor).17g * dmax);
                } else {
                    v = (i == j) ? 1.0 : 0.0;
                }
                L[i * M + j] = v;
            }
            rhs[i] = fr[i] ? -g[i] : 0.0;
        }
        bool ok = true;  // Cholesky L L^T = M in place (lower triangle)
        for (int j = 0; j < M && ok; ++j) {
            double s = L[j * M + j];
            for (int k = 0; k < j; ++k) s -= L[j * M + k] * L[j * M + k];
            if (!(s > 0.0) || !isfinite(s)) { ok = false; break; }
            const double djj = sqrt(s);
            L[j * M + j] = djj;
            for (int i = j + 1; i < M; ++i) {
                double t = L[i * M + j];
                for (int k = 0; k < j; ++k) t -= L[i * M + k] * L[j * M + k];
                L[i * M + j] = t / djj;
            }
        }
        double cn = 0.0;
        if (ok) {
            for (int i = 0; i < M; ++i) {  // forward: L z = rhs
                double t = rhs[i];
                for (int k = 0; k < i; ++k) t -= L[i * M + k] * rhs[k];
                rhs[i] = t / L[i * M + i];
            }
            for (int i = M - 1; i >= 0; --i) {  // back: L^T delta = z
                double t = rhs[i];
                for (int k = i + 1; k < M; ++k) t -= L[k * M + i] * rhs[k];
                rhs[i] = t / L[i * M + i];
            }
            for (int i = 0; i < M; ++i) pn[i] = fmin(fmax(p[i] + rhs[i], lo[i]), hi[i]);
            cn = roi_pass(xb, yb, n, pn, P, xmid, hw, A, g, M, false);
        }
        if (ok && isfinite(cn) && cn < cost) {
            double step = 0.0;
            for (int i = 0; i < M; ++i) {
                const double span = (hi[i] > lo[i]) ? hi[i] - lo[i] : 1.0;
                step = fmax(step, fabs(pn[i] - p[i]) / span);
                p[i] = pn[i];
            }
            const bool small = (cost - cn <= %(ftol).17g * cost) && (step <= %(xtol).17g);
            cost = roi_pass(xb, yb, n, p, P, xmid, hw, A, g, M, true);
            lam = fmax(lam / %(down).17g, %(lmin).17g);
            if (small) status = 1;
        } else {
            lam *= %(up).17g;
            if (lam > %(lmax).17g) status = 1;
        }
    }
    if (status == 0) status = 2;
    for (int i = 0; i < M; ++i) p_io[(long long)b * M + i] = p[i];
    cost_out[b] = cost;
    status_out[b] = status;
    iters_out[b] = it;
}
"""


def kernel_source() -> str:
    """The CUDA source with the constants of :mod:`.batched` filled in."""
    from .model import LN2_4

    return _SOURCE % dict(maxp=MAX_PEAKS_PER_ROI, ln2_4=LN2_4, lambda0=batched.LAMBDA0, diag_floor=batched.DIAG_FLOOR,
                          ftol=batched.FTOL, xtol=batched.XTOL, down=batched.LAMBDA_DOWN, up=batched.LAMBDA_UP,
                          lmin=batched.LAMBDA_MIN, lmax=batched.LAMBDA_MAX)


class GpuFitter:
    """Runs :func:`~ringstream.fitting.batched.fit_batch`'s algorithm on the current CUDA device.

    Raises :class:`~ringstream.errors.ConfigError` with the install line when CuPy or a device is missing.
    ``threads``: CUDA threads per block.
    """

    def __init__(self, threads: int = 64) -> None:
        try:
            import cupy
        except ImportError as exc:
            raise ConfigError(f"fit engine gpu: CuPy is not installed ({exc}); {GPU_INSTALL_HINT}") from None
        try:
            self.device_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
            self.device_name = self.device_name.decode() if isinstance(self.device_name, bytes) else str(
                self.device_name)
        except Exception as exc:
            raise ConfigError(f"fit engine gpu: no usable CUDA device ({exc}); {GPU_INSTALL_HINT}") from None
        self.cp = cupy
        self.kernel = cupy.RawKernel(kernel_source(), "lm_fit")
        self.threads = int(threads)

    def fit_packed(self, pk: batched.Packed, max_iter: int = batched.MAX_ITER) -> dict[str, np.ndarray]:
        """Fit every ROI of ``pk`` in one launch; the same result dict as :func:`.batched.fit_batch`."""
        res = self.fit_device(pk, max_iter)
        return {k: self.cp.asnumpy(v) for k, v in res.items()}

    def fit_device(self, pk: batched.Packed, max_iter: int = batched.MAX_ITER) -> dict:
        """As :meth:`fit_packed`, leaving the results on the device (CuPy arrays), for timing the kernel alone."""
        cp = self.cp
        b, m = pk.p.shape
        if b == 0:
            return {"p": cp.zeros((0, m)), "cost": cp.zeros(0), "start_cost": cp.zeros(0),
                    "status": cp.zeros(0, np.int32), "iterations": cp.zeros(0, np.int32)}
        if (m - 2) // 4 > MAX_PEAKS_PER_ROI:
            raise ValueError(f"{(m - 2) // 4} peaks in a ROI; the kernel takes at most {MAX_PEAKS_PER_ROI}")
        x = cp.asarray(np.ascontiguousarray(pk.x))
        y = cp.asarray(np.ascontiguousarray(pk.y))
        npts = cp.asarray(pk.npts.astype(np.int32))
        xmid, hw = cp.asarray(pk.xmid), cp.asarray(pk.hw)
        p = cp.asarray(np.ascontiguousarray(pk.p))
        lo, hi = cp.asarray(np.ascontiguousarray(pk.lo)), cp.asarray(np.ascontiguousarray(pk.hi))
        cost, cost0 = cp.empty(b), cp.empty(b)
        status, iters = cp.empty(b, np.int32), cp.empty(b, np.int32)
        blocks = (b + self.threads - 1) // self.threads
        self.kernel((blocks,), (self.threads,), (x, y, npts, xmid, hw, p, lo, hi, cost, cost0, status, iters,
                                                  np.int32(b), np.int32(pk.x.shape[1]), np.int32(m),
                                                  np.int32(max_iter)))
        return {"p": p, "cost": cost, "start_cost": cost0, "status": status, "iterations": iters}

"""The batched GPU fitter: the Levenberg–Marquardt algorithm of :mod:`.batched`, one CUDA thread per ROI, every ROI of
a batch of frames in one launch (a ``cupy.RawKernel``), float64 throughout.

The NumPy expression the kernel computes is :func:`ringstream.fitting.batched.fit_batch` (same model, bounds, active
set, damping schedule, Cholesky solve and stopping rules; the module docstring there states them); the GPU tests check
the two agree. At most :data:`~.peaks.MAX_PEAKS_PER_ROI` peaks per ROI (``MAXP``), so a thread's normal matrix is at
most 18 × 18. One kernel per (peak model, peak slots): the model's per-peak terms are spliced into the one source
(:data:`PEAK_TERMS`), the "pv" ones from :mod:`.model` and the "tch" ones from :mod:`.tch`, each line the NumPy line of
its ``model_jacobian``; the rest of the algorithm is shared. The inputs of a batch go to the device in one copy from a pinned staging buffer that, with its device
twin, is allocated once and grown as batches need (:meth:`GpuFitter._staging`); the results come from CuPy's memory
pool. One GpuFitter per thread (the worker fits from one).
"""

from __future__ import annotations

import numpy as np

from ..engines.base import GPU_INSTALL_HINT
from ..errors import ConfigError
from . import batched
from .models import get_model
from .peaks import MAX_PEAKS_PER_ROI

_SOURCE = r"""
// One thread per ROI; MAXP peaks per ROI fixed at compile time (one kernel per model and peak count), so M = 2 + 4 MAXP is a
// constant, every loop unrolls and the small matrices live in registers. A: upper triangle of J^T J, L: lower
// triangle of the damped matrix and its Cholesky factor.
#define MAXP %(maxp)d
#define M (2 + 4 * MAXP)
#define LN2_4 %(ln2_4).17g
%(model_defs)s

__device__ __forceinline__ double roi_pass(const double* xb, const double* yb, int n, const double* p,
                                           double xmid, double hw, double* A, double* g, bool want)
{
    // cost = sum_n r^2 with r = model - y; if want: A = J^T J (upper triangle), g = J^T r
    double J[M];
    double cost = 0.0;
    if (want) {
#pragma unroll
        for (int i = 0; i < M; ++i) {
            g[i] = 0.0;
#pragma unroll
            for (int j = i; j < M; ++j) A[i * M + j] = 0.0;
        }
    }
%(peak_setup)s
    for (int q = 0; q < n; ++q) {
        const double xv = xb[q];
        const double u = (xv - xmid) / hw;
        double f = p[0] + p[1] * u;
        J[0] = 1.0; J[1] = u;
#pragma unroll
        for (int k = 0; k < MAXP; ++k) {
            const int o = 2 + 4 * k;
%(peak_terms)s
        }
        const double r = f - yb[q];
        cost += r * r;
        if (want) {
#pragma unroll
            for (int i = 0; i < M; ++i) {
                g[i] += J[i] * r;
#pragma unroll
                for (int j = i; j < M; ++j) A[i * M + j] += J[i] * J[j];
            }
        }
    }
    return cost;
}

extern "C" __global__ void lm_fit(const double* __restrict__ x, const double* __restrict__ y,
                                  const int* __restrict__ npts, const double* __restrict__ xmid_,
                                  const double* __restrict__ hw_, const double* __restrict__ p_in,
                                  const double* __restrict__ lo_, const double* __restrict__ hi_,
                                  double* __restrict__ p_out, double* __restrict__ cost_out,
                                  double* __restrict__ cost0_out, double* __restrict__ status_out,
                                  double* __restrict__ iters_out, const int B, const int N, const int max_iter)
{
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double* xb = x + (long long)b * N;
    const double* yb = y + (long long)b * N;
    const int n = npts[b];
    const double xmid = xmid_[b], hw = hw_[b];
    double p[M], lo[M], hi[M], pn[M], g[M], rhs[M];
    double A[M * M], L[M * M];
    bool fr[M];
#pragma unroll
    for (int i = 0; i < M; ++i) {
        p[i] = p_in[(long long)b * M + i]; lo[i] = lo_[(long long)b * M + i]; hi[i] = hi_[(long long)b * M + i];
    }
    double cost = roi_pass(xb, yb, n, p, xmid, hw, A, g, true);
    cost0_out[b] = cost;
    double lam = %(lambda0).17g;
    int status = 0, it = 0;
    while (status == 0 && it < max_iter) {
        ++it;
        double dmax = 0.0;
#pragma unroll
        for (int i = 0; i < M; ++i) {
            fr[i] = (hi[i] > lo[i]) && !(p[i] <= lo[i] && g[i] > 0.0) && !(p[i] >= hi[i] && g[i] < 0.0);
            if (fr[i] && A[i * M + i] > dmax) dmax = A[i * M + i];
        }
#pragma unroll
        for (int i = 0; i < M; ++i) {
#pragma unroll
            for (int j = 0; j <= i; ++j) {
                double v;
                if (fr[i] && fr[j]) {
                    v = A[j * M + i];
                    if (i == j) v += lam * fmax(A[i * M + i], %(diag_floor).17g * dmax);
                } else {
                    v = (i == j) ? 1.0 : 0.0;
                }
                L[i * M + j] = v;
            }
            rhs[i] = fr[i] ? -g[i] : 0.0;
        }
        bool ok = true;  // Cholesky L L^T = M in place (lower triangle)
#pragma unroll
        for (int j = 0; j < M; ++j) {
            double s = L[j * M + j];
#pragma unroll
            for (int k = 0; k < j; ++k) s -= L[j * M + k] * L[j * M + k];
            if (!(s > 0.0) || !isfinite(s)) { ok = false; s = 1.0; }
            const double djj = sqrt(s);
            L[j * M + j] = djj;
#pragma unroll
            for (int i = j + 1; i < M; ++i) {
                double t = L[i * M + j];
#pragma unroll
                for (int k = 0; k < j; ++k) t -= L[i * M + k] * L[j * M + k];
                L[i * M + j] = t / djj;
            }
        }
        double cn = 0.0;
        if (ok) {
#pragma unroll
            for (int i = 0; i < M; ++i) {  // forward: L z = rhs
                double t = rhs[i];
#pragma unroll
                for (int k = 0; k < i; ++k) t -= L[i * M + k] * rhs[k];
                rhs[i] = t / L[i * M + i];
            }
#pragma unroll
            for (int i = M - 1; i >= 0; --i) {  // back: L^T delta = z
                double t = rhs[i];
#pragma unroll
                for (int k = i + 1; k < M; ++k) t -= L[k * M + i] * rhs[k];
                rhs[i] = t / L[i * M + i];
            }
#pragma unroll
            for (int i = 0; i < M; ++i) pn[i] = fmin(fmax(p[i] + rhs[i], lo[i]), hi[i]);
            cn = roi_pass(xb, yb, n, pn, xmid, hw, A, g, false);
        }
        if (ok && isfinite(cn) && cn < cost) {
            double step = 0.0;
#pragma unroll
            for (int i = 0; i < M; ++i) {
                const double span = (hi[i] > lo[i]) ? hi[i] - lo[i] : 1.0;
                step = fmax(step, fabs(pn[i] - p[i]) / span);
                p[i] = pn[i];
            }
            const bool small = (cost - cn <= %(ftol).17g * cost) || (step <= %(xtol).17g);
            cost = roi_pass(xb, yb, n, p, xmid, hw, A, g, true);
            lam = fmax(lam / %(down).17g, %(lmin).17g);
            if (small) status = 1;
        } else {
            lam *= %(up).17g;
            if (lam > %(lmax).17g) status = 1;
        }
    }
    if (status == 0) status = 2;
#pragma unroll
    for (int i = 0; i < M; ++i) p_out[(long long)b * M + i] = p[i];
    cost_out[b] = cost;
    status_out[b] = (double)status;
    iters_out[b] = (double)it;
}
"""


#: the "pv" model (:func:`.model.model_jacobian`): Imax, μ, Rc, Γ
_PV_TERMS = r"""
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
            J[o + 3] = s * (-2.0 * t / gam);"""

#: the "tch" model (:func:`.tch.model_jacobian` and :func:`.tch._tch`): A, c, sig, gam on 2θ
_TCH_DEFS = r"""
#define LN2 %(ln2).17g
#define SIG_TO_GG2 %(sig_to_gg2).17g
#define C_G %(c_g).17g
#define C_L %(c_l).17g
#define TF1 %(tf1).17g
#define TF2 %(tf2).17g
#define TF3 %(tf3).17g
#define TF4 %(tf4).17g
#define TE1 %(te1).17g
#define TE2 %(te2).17g
#define TE3 %(te3).17g
// F, eta of (sig, gam) and dF/dsig, dF/dgam, deta/dsig, deta/dgam (tch._tch, line for line)
__device__ __forceinline__ void tch_widths(double sig, double gam, double* F, double* ETA, double* DFS,
                                           double* DFG, double* DES, double* DEG)
{
    const double gg = sqrt(SIG_TO_GG2 * sig);
    const double gl = gam / 100.0;
    const double g2 = gg * gg, l2 = gl * gl;
    const double g3 = g2 * gg, l3 = l2 * gl;
    const double g4 = g3 * gg, l4 = l3 * gl;
    const double p5 = g4 * gg + TF1 * g4 * gl + TF2 * g3 * l2 + TF3 * g2 * l3 + TF4 * gg * l4 + l4 * gl;
    const double f = pow(p5, 0.2);
    const double q = gl / f;
    const double eta = q * (TE1 + q * (TE2 + q * TE3));
    const double inv5f4 = 1.0 / (5.0 * pow(f, 4.0));
    const double dp_dg = 5.0 * g4 + 4.0 * TF1 * g3 * gl + 3.0 * TF2 * g2 * l2 + 2.0 * TF3 * gg * l3 + TF4 * l4;
    const double dp_dl = TF1 * g4 + 2.0 * TF2 * g3 * gl + 3.0 * TF3 * g2 * l2 + 4.0 * TF4 * gg * l3 + 5.0 * l4;
    const double df_dsig = dp_dg * inv5f4 * (gg / (2.0 * sig));
    const double df_dgam = dp_dl * inv5f4 / 100.0;
    const double deta_dq = TE1 + q * (2.0 * TE2 + 3.0 * TE3 * q);
    const double dq_dsig = -gl / (f * f) * df_dsig;
    const double dq_dgam = 1.0 / (100.0 * f) - gl / (f * f) * df_dgam;
    *F = f; *ETA = eta; *DFS = df_dsig; *DFG = df_dgam; *DES = deta_dq * dq_dsig; *DEG = deta_dq * dq_dgam;
}"""

_TCH_SETUP = r"""
    // per peak, once a pass (they depend on sig and gam only): F, eta and their derivatives
    double fw[MAXP], eta_[MAXP], dfs[MAXP], dfg[MAXP], des[MAXP], deg[MAXP];
#pragma unroll
    for (int k = 0; k < MAXP; ++k)
        tch_widths(p[2 + 4 * k + 2], p[2 + 4 * k + 3], fw + k, eta_ + k, dfs + k, dfg + k, des + k, deg + k);"""

_TCH_TERMS = r"""
            const double area = p[o], c = p[o + 1], eta = eta_[k];
            const double d = xv - c;
            const double inv_f = 1.0 / fw[k];
            const double t = d * d * inv_f * inv_f;
            const double den = 1.0 / (1.0 + 4.0 * t);
            const double lor = C_L * inv_f * den;
            const double gau = C_G * inv_f * exp(-4.0 * LN2 * t);
            const double shape = eta * lor + (1.0 - eta) * gau;
            f += area * shape;
            const double ds_df = inv_f * (eta * lor * (8.0 * t * den - 1.0) + (1.0 - eta) * gau * (8.0 * LN2 * t - 1.0));
            const double lmg = lor - gau;
            J[o] = shape;
            J[o + 1] = area * (8.0 * d * inv_f * inv_f) * (eta * lor * den + (1.0 - eta) * LN2 * gau);
            J[o + 2] = area * (ds_df * dfs[k] + lmg * des[k]);
            J[o + 3] = area * (ds_df * dfg[k] + lmg * deg[k]);"""

#: per model: (definitions before roi_pass, per-pass setup, the per-point terms of peak k at offset o)
PEAK_TERMS = {"pv": ("", "", _PV_TERMS), "tch": (_TCH_DEFS, _TCH_SETUP, _TCH_TERMS)}


def kernel_source(n_peaks: int = MAX_PEAKS_PER_ROI, model: str = "pv") -> str:
    """The CUDA source for ROIs of ``n_peaks`` peak slots of the peak ``model`` ("pv" or "tch"), with the constants
    of :mod:`.batched` (and of :mod:`.tch`) filled in."""
    from . import tch
    from .model import LN2_4

    defs, setup, terms = PEAK_TERMS[get_model(model).name]
    consts = dict(ln2=tch.LN2, sig_to_gg2=tch.SIG_TO_GG2, c_g=tch.C_G, c_l=tch.C_L,
                  **{f"tf{i}": v for i, v in enumerate(tch.TCH_F[:5]) if i}, te1=tch.TCH_ETA[0],
                  te2=tch.TCH_ETA[1], te3=tch.TCH_ETA[2])
    return _SOURCE % dict(maxp=int(n_peaks), ln2_4=LN2_4, lambda0=batched.LAMBDA0, diag_floor=batched.DIAG_FLOOR,
                          ftol=batched.FTOL, xtol=batched.XTOL, down=batched.LAMBDA_DOWN, up=batched.LAMBDA_UP,
                          lmin=batched.LAMBDA_MIN, lmax=batched.LAMBDA_MAX, model_defs=defs % consts,
                          peak_setup=setup, peak_terms=terms)


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
        from cupyx import empty_pinned

        self.cp = cupy
        self.empty_pinned = empty_pinned
        self.kernels: dict[tuple[str, int], object] = {}  # (peak model, peak slots per ROI) -> compiled kernel
        self.threads = int(threads)
        self._host = None  # pinned input staging buffer and its device twin (uint8), see _staging
        self._dev = None

    def kernel(self, n_peaks: int, model: str = "pv"):
        """The kernel for ROIs of ``n_peaks`` slots of the peak ``model`` (compiled on first use)."""
        key = (get_model(model).name, int(n_peaks))
        k = self.kernels.get(key)
        if k is None:
            k = self.kernels[key] = self.cp.RawKernel(kernel_source(n_peaks, key[0]), "lm_fit")
        return k

    def fit_packed(self, pk: batched.Packed, max_iter: int = batched.MAX_ITER) -> dict[str, np.ndarray]:
        """Fit every ROI of ``pk`` in one launch; the same result dict as :func:`.batched.fit_batch`. Inputs go to the
        device in one copy from a reused pinned buffer (one float64 block and the point counts) and results come
        back in one."""
        b, m = pk.p.shape
        out = self.cp.asnumpy(self._launch(pk, max_iter))
        return self._split(out, b, m, np)

    def fit_device(self, pk: batched.Packed, max_iter: int = batched.MAX_ITER) -> dict:
        """As :meth:`fit_packed`, leaving the results on the device (CuPy arrays), for timing the kernel alone. Waits
        for the kernel (the staging buffers it read are the next call's)."""
        b, m = pk.p.shape
        out = self._launch(pk, max_iter)
        self.cp.cuda.get_current_stream().synchronize()
        return self._split(out, b, m, self.cp)

    @staticmethod
    def _split(out, b: int, m: int, xp) -> dict:
        p = out[: b * m].reshape(b, m)
        rest = out[b * m:].reshape(4, b)
        return {"p": p, "cost": rest[0], "start_cost": rest[1], "status": rest[2].astype(np.int32),
                "iterations": rest[3].astype(np.int32)}

    def _staging(self, nbytes: int):
        """A pinned host buffer and a device buffer of at least ``nbytes`` bytes (uint8), kept and grown (to the next
        power of two) as batches need, so that a batch costs no allocation and its inputs go over in one copy from
        pinned memory. Safe to reuse: every call ends with the blocking copy of its results, after the kernel that
        read these."""
        if self._host is None or self._host.size < nbytes:
            size = 1 << max(16, (int(nbytes) - 1).bit_length())
            self._host = self.empty_pinned((size,), dtype=np.uint8)
            self._dev = self.cp.empty((size,), dtype=np.uint8)
        return self._host, self._dev

    def _launch(self, pk: batched.Packed, max_iter: int):
        cp = self.cp
        b, m = pk.p.shape
        n_peaks = (m - 2) // 4
        if n_peaks > MAX_PEAKS_PER_ROI:
            raise ValueError(f"{n_peaks} peaks in a ROI; the kernel takes at most {MAX_PEAKS_PER_ROI}")
        if b == 0:
            return cp.zeros(0)
        kernel = self.kernel(n_peaks, pk.model)  # compiled before the staging buffers are touched
        n = pk.x.shape[1]
        # one float64 block [x, y, xmid, hw, p, lo, hi] followed by the int32 point counts, copied over in one go
        cuts = np.cumsum([0, b * n, b * n, b, b, b * m, b * m, b * m])
        nf = int(cuts[-1])
        nbytes = 8 * nf + 4 * b
        host, dev = self._staging(nbytes)
        np.concatenate([pk.x.ravel(), pk.y.ravel(), pk.xmid, pk.hw, pk.p.ravel(), pk.lo.ravel(), pk.hi.ravel()],
                       out=host[: 8 * nf].view(np.float64))
        host[8 * nf: nbytes].view(np.int32)[:] = pk.npts
        dev[:nbytes].set(host[:nbytes])
        block = dev[: 8 * nf].view(cp.float64)
        npts = dev[8 * nf: nbytes].view(cp.int32)
        x, y, xmid, hw, p, lo, hi = (block[cuts[i]:cuts[i + 1]] for i in range(7))
        out = cp.empty(b * m + 4 * b)
        p_out, cost, cost0, status, iters = (out[: b * m], out[b * m: b * m + b], out[b * m + b: b * m + 2 * b],
                                             out[b * m + 2 * b: b * m + 3 * b], out[b * m + 3 * b:])
        blocks = (b + self.threads - 1) // self.threads
        kernel((blocks,), (self.threads,), (x, y, npts, xmid, hw, p, lo, hi, p_out, cost, cost0, status, iters,
                                            np.int32(b), np.int32(n), np.int32(max_iter)))
        return out

"""SNIP background of diffraction profiles (Ryan et al. 1988; Morháč et al. 1997), over many profiles at once.

The per-η fits (:mod:`.caked`) subtract it before fitting, as MIDAS's ``utils/fit_caked_peaks.py`` does. On each
profile ``y [n]`` (an η bin of a cake, along 2θ):

    v = log(log(sqrt(max(y, 0) + 1) + 1) + 1)                          the LLS transform (Poisson-like range)
    for m = iterations, iterations - 1, ..., 1:                       clipping windows, widest first
        v[i] = min(v[i], (v[i - m] + v[i + m]) / 2)   for m <= i < n - m
    bg = max((exp(exp(v) - 1) - 1)^2 - 1, 0)                          the exact inverse of the transform

``iterations`` is the widest window's half-width in bins: it should exceed a peak's half-width at its base (50,
MIDAS's default, suits peaks a few bins wide).
"""

from __future__ import annotations

import numpy as np

#: MIDAS's default (``--snip-iter 50``)
DEFAULT_ITERATIONS = 50


def snip(y, iterations: int = DEFAULT_ITERATIONS, xp=np):
    """The SNIP background of every profile of ``y [..., n]`` (float64, the same shape), along the last axis; a
    window wider than a profile allows (``2m >= n``) is skipped. ``xp``: the array module of ``y`` (NumPy, or CuPy
    for an array on the device: one launch of :data:`SNIP_SOURCE` for profiles of up to :data:`KERNEL_MAX_BINS`)."""
    if xp is not np and 0 < np.shape(y)[-1] <= KERNEL_MAX_BINS and hasattr(xp, "RawKernel"):
        return _snip_device(y, iterations, xp)
    v = xp.maximum(xp.asarray(y, dtype=xp.float64), 0.0)
    v = xp.log(xp.log(xp.sqrt(v + 1.0) + 1.0) + 1.0)
    n = v.shape[-1]
    avg = xp.empty_like(v)
    for m in range(min(int(iterations), (n - 1) // 2), 0, -1):
        a = avg[..., : n - 2 * m]
        xp.add(v[..., : n - 2 * m], v[..., 2 * m:], out=a)
        a *= 0.5
        xp.minimum(v[..., m: n - m], a, out=v[..., m: n - m])
    bg = (xp.exp(xp.exp(v) - 1.0) - 1.0) ** 2 - 1.0
    return xp.maximum(bg, 0.0)


#: the same SNIP as one CUDA kernel for the device path: one thread block per profile, the profile and its clipped
#: copy in shared memory, a barrier between clipping windows (CuPy array operations would launch three kernels per
#: window, ~150 for MIDAS's 50, per call). ``SNIP_SCRATCH`` and ``__syncthreads`` are macros so that the same C
#: compiles for the host in the tests (tests/unit/test_snip.py: one thread a block, blocks one after another).
SNIP_SOURCE = r"""
#ifndef SNIP_SCRATCH
#define SNIP_SCRATCH(name) extern __shared__ double name[]
#endif
extern "C" __global__ void snip_rows(const double* y, double* bg, const int n, const int iterations) {
    SNIP_SCRATCH(scratch);
    double* v = scratch;
    double* w = scratch + n;
    const long long row = (long long)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double t = fmax(y[row + i], 0.0);
        v[i] = log(log(sqrt(t + 1.0) + 1.0) + 1.0);
    }
    __syncthreads();
    const int widest = iterations < (n - 1) / 2 ? iterations : (n - 1) / 2;
    for (int m = widest; m >= 1; --m) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            double x = v[i];
            if (i >= m && i < n - m) {
                const double a = (v[i - m] + v[i + m]) * 0.5;
                x = a < x ? a : x;
            }
            w[i] = x;
        }
        __syncthreads();
        double* t = v; v = w; w = t;
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double e = exp(exp(v[i]) - 1.0) - 1.0;
        bg[row + i] = fmax(e * e - 1.0, 0.0);
    }
}
"""
#: the most bins a profile may have for the kernel (its two copies in the 48 KiB of shared memory a block may take
#: without opting in); longer profiles take the array-operation path
KERNEL_MAX_BINS = 48 * 1024 // 16
_THREADS = 128
_kernels: dict = {}


def _snip_kernel(cupy):
    """The compiled kernel of the current device (compiled once per device)."""
    dev = cupy.cuda.Device().id
    k = _kernels.get(dev)
    if k is None:
        k = _kernels[dev] = cupy.RawKernel(SNIP_SOURCE, "snip_rows")
    return k


def _snip_device(y, iterations: int, cupy):
    """:func:`snip` of a CuPy array by :data:`SNIP_SOURCE`, one launch."""
    y = cupy.ascontiguousarray(y, dtype=cupy.float64)
    n = y.shape[-1]
    rows = y.size // n if n else 0
    bg = cupy.empty_like(y)
    if rows:
        _snip_kernel(cupy)((rows,), (_THREADS,), (y, bg, cupy.int32(n), cupy.int32(max(0, int(iterations)))),
                           shared_mem=16 * n)
    return bg

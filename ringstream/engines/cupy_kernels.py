"""The CUDA source of the CuPy engine's kernels, and their compilation (once per process and device).

What each kernel computes, as NumPy (frames ``X`` ``[n, nZ, nY]`` of any integer or float dtype ``T``, the map
``W`` as CSR by bin row, ``A`` the bin areas ``[n_bins]``, ``Aw`` = ``A`` on non-empty bins else 0)::

    # integrate_rows<T, BMAX>
    x    = X.reshape(n, -1).astype(np.float64) - dark.ravel()
    cake = x @ W.T                                                        # [n, n_bins]
    cake = np.where(A > EMPTY_BIN_AREA, cake / A, 0)                      # only when normalize
    # lineout_rows
    lineout = (cake.reshape(n, n_r, n_eta) * Aw).sum(-1) / Aw.sum(-1)     # 0 where a ring has no area
    # omega_add
    acc += cake[k0:k1].astype(np.float32).astype(np.float64).sum(0)       # [n_bins]
    # omega_take
    out[g] = (parts[g][0] + parts[g][1] + ...).astype(out.dtype)         # float64 sums, float32 or float64 out

How:

- ``integrate_rows<T, BMAX>`` (compiled per input dtype with ``cupy.RawModule`` name expressions): one warp per
  bin row; the lanes stride over the row's nonzeros (coalesced reads of ``indices`` int32 and ``weights``
  float32), and every nonzero is applied to up to ``BMAX`` frames at once (``img[k, col]`` read through the
  read-only cache, cast from ``T`` to float64, dark subtracted), so the map is read once per ``BMAX`` frames. Each
  product and the row sum are accumulated in float64. A warp shuffle reduces the sums, which are divided by the
  bin area (0 for an empty bin) and written to the cake.
- ``lineout_rows``: one thread per (frame, ring).
- ``omega_add``: one thread per bin; adds the cakes of frames ``k0..k1-1`` (each rounded to float32, as the cake a
  Result carries) into a float64 accumulator of one omega-sum group.
- ``omega_take``: one thread per (bin, group); adds a group's accumulators (a table of device pointers, a row per
  group, 0 after its last) in the table's order, and writes the float64 total, or it rounded to float32 (round to
  nearest, as NumPy's ``astype``), into row ``g`` of the output.
"""

from __future__ import annotations

import numpy as np

from .reference import EMPTY_BIN_AREA

#: numpy dtype (native byte order) -> the C type of the kernel's template argument
CTYPES = {
    "u1": "unsigned char", "u2": "unsigned short", "u4": "unsigned int", "u8": "unsigned long long",
    "i1": "signed char", "i2": "short", "i4": "int", "i8": "long long",
    "f4": "float", "f8": "double",
}

#: frames one warp applies each nonzero to (compile-time: the per-frame sums live in registers)
BMAX = 8
#: warps (bin rows) per block of ``integrate_rows``
WARPS_PER_BLOCK = 8
#: compiled kernels, shared by the engines of a process: (device, dtype code, bmax), (device, "lineout_rows"),
#: (device, "omega_add") or (device, "omega_take")
_KERNEL_CACHE: dict = {}

KERNEL_SOURCE = r"""
template<typename T, int BMAX>
__global__ void __launch_bounds__(256)
integrate_rows(const T* __restrict__ img, const long long npix, const int nframes,
               const int* __restrict__ indptr, const int* __restrict__ indices,
               const float* __restrict__ weights, const double* __restrict__ dark, const int has_dark,
               const double* __restrict__ bin_area, const int n_bins, const int normalize,
               double* __restrict__ cake)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n_bins) return;                    // a whole warp has one row
    const int f0 = blockIdx.y * BMAX;
    int nb = nframes - f0;
    if (nb > BMAX) nb = BMAX;
    const T* __restrict__ base = img + (long long)f0 * npix;
    double acc[BMAX];
#pragma unroll
    for (int k = 0; k < BMAX; ++k) acc[k] = 0.0;
    const int start = __ldg(indptr + row), end = __ldg(indptr + row + 1);
    for (int j = start + lane; j < end; j += 32) {
        const int c = __ldg(indices + j);
        const double w = (double)__ldg(weights + j);
        const double d = has_dark ? __ldg(dark + c) : 0.0;
#pragma unroll
        for (int k = 0; k < BMAX; ++k) {
            if (k < nb) acc[k] = fma(w, (double)__ldg(base + (long long)k * npix + c) - d, acc[k]);
        }
    }
#pragma unroll
    for (int k = 0; k < BMAX; ++k) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], off);
    }
    double a = 0.0;
    if (normalize) a = __ldg(bin_area + row);
#pragma unroll
    for (int k = 0; k < BMAX; ++k) {
        if (lane == k && k < nb) {
            double v = acc[k];
            if (normalize) v = (a > EMPTY_BIN_AREA) ? v / a : 0.0;
            cake[(long long)(f0 + k) * n_bins + row] = v;
        }
    }
}

extern "C" __global__ void
lineout_rows(const double* __restrict__ cake, const double* __restrict__ lw, const double* __restrict__ ring_area,
             const int n_r, const int n_eta, const int nframes, double* __restrict__ lineout)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)nframes * n_r) return;
    const int r = (int)(t % n_r);
    const double* c = cake + t * n_eta;           // cake[f, r, :] starts at (f*n_r + r)*n_eta = t*n_eta
    const double* w = lw + (long long)r * n_eta;
    double num = 0.0;
    for (int e = 0; e < n_eta; ++e) num = fma(c[e], w[e], num);
    const double ra = ring_area[r];
    lineout[t] = ra > 0.0 ? num / ra : 0.0;
}

extern "C" __global__ void
omega_add(const double* __restrict__ cake, const int k0, const int k1, const int n_bins, double* __restrict__ acc)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_bins) return;
    double s = acc[i];
    for (int k = k0; k < k1; ++k) s += (double)(float)cake[(long long)k * n_bins + i];
    acc[i] = s;
}

extern "C" __global__ void
omega_take(const unsigned long long* __restrict__ parts, const int n_parts, const int n_bins, const int as_float,
           void* __restrict__ out)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int g = blockIdx.y;
    if (i >= n_bins) return;
    const unsigned long long* p = parts + (long long)g * n_parts;
    double s = ((const double*)p[0])[i];
    for (int k = 1; k < n_parts && p[k]; ++k) s += ((const double*)p[k])[i];
    const long long o = (long long)g * n_bins + i;
    if (as_float) ((float*)out)[o] = (float)s;
    else ((double*)out)[o] = s;
}
"""
KERNEL_SOURCE = f"#define EMPTY_BIN_AREA {EMPTY_BIN_AREA!r}\n" + KERNEL_SOURCE


def row_kernel(cp, device, device_id: int, dtype: np.dtype, bmax: int):
    """``integrate_rows<T, bmax>`` for frames of ``dtype`` (native byte order, a key of :data:`CTYPES`) on CUDA
    device ``device`` (ordinal ``device_id``), compiled on first use."""
    key = (device_id, dtype.str[1:], bmax)
    k = _KERNEL_CACHE.get(key)
    if k is None:
        ctype = CTYPES[key[1]]
        expr = f"integrate_rows<{ctype},{bmax}>"
        with device:
            mod = cp.RawModule(code=KERNEL_SOURCE, options=("-std=c++17",), name_expressions=[expr])
            k = mod.get_function(expr)
        _KERNEL_CACHE[key] = k
    return k


def lineout_and_omega_kernels(cp, device_id: int):
    """(``lineout_rows``, ``omega_add``, ``omega_take``) on the current CUDA device (ordinal ``device_id``), compiled
    on first use."""
    names = ("lineout_rows", "omega_add", "omega_take")
    if (device_id, names[0]) not in _KERNEL_CACHE:
        mod = cp.RawModule(code=KERNEL_SOURCE, options=("-std=c++17",))
        for name in names:
            _KERNEL_CACHE[(device_id, name)] = mod.get_function(name)
    return tuple(_KERNEL_CACHE[(device_id, name)] for name in names)

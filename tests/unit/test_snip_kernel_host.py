"""The per-eta fits' SNIP kernel (``ringstream.fitting.snip.SNIP_SOURCE``), compiled for the host (g++, the CUDA
built-ins emulated: one thread a block, blocks one after another, the shared scratch a static array) and held to
the NumPy SNIP on profiles with peaks, windows wider than a profile, and profiles of 1 to 3 bins; the device runs
the same C in tests/gpu/test_caked_gpu.py. Skipped without a C++ compiler."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from ringstream.fitting.snip import KERNEL_MAX_BINS, SNIP_SOURCE, snip

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile the kernel for the host")]

_PRELUDE = rf"""
#include <cmath>
using std::fmax; using std::log; using std::exp; using std::sqrt;
struct Dim {{ int x; }};
static Dim blockIdx, threadIdx, blockDim;
#define __global__
static inline void __syncthreads() {{}}
#define SNIP_SCRATCH(name) static double name[2 * {KERNEL_MAX_BINS}]
"""

_DRIVER = r"""
extern "C" void run_rows(const double* y, double* bg, int rows, int n, int iterations) {
    blockDim.x = 1; threadIdx.x = 0;
    for (int r = 0; r < rows; ++r) { blockIdx.x = r; snip_rows(y, bg, n, iterations); }
}
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    d = tmp_path_factory.mktemp("snip")
    src = d / "snip.cpp"
    src.write_text(_PRELUDE + SNIP_SOURCE.replace('extern "C" __global__', "__global__") + _DRIVER)
    lib = d / "snip.so"
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-fsanitize=undefined", "-o", str(lib),
                    str(src)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def run_kernel(lib, y: np.ndarray, iterations: int) -> np.ndarray:
    y = np.ascontiguousarray(y, dtype=np.float64)
    rows, n = y.shape
    bg = np.full((rows, n), np.nan)
    p = ctypes.c_void_p
    lib.run_rows(p(y.ctypes.data), p(bg.ctypes.data), ctypes.c_int(rows), ctypes.c_int(n), ctypes.c_int(iterations))
    return bg


def profiles(rng, rows: int, n: int) -> np.ndarray:
    """Poisson profiles: a sloped background and a few Gaussian peaks, some rows with negative values."""
    x = np.arange(n)
    base = 50 + 0.05 * x
    y = np.empty((rows, n))
    for r in range(rows):
        peaks = sum(rng.uniform(100, 5000) * np.exp(-0.5 * ((x - c) / rng.uniform(1, 4)) ** 2)
                    for c in rng.uniform(0, n, 3))
        y[r] = rng.poisson(base + peaks)
    y[::7] -= 60  # some values below zero: clipped to zero first
    return y


@pytest.mark.parametrize(("n", "iterations"), [(990, 50), (200, 20), (64, 50), (41, 8), (3, 50), (2, 5), (1, 5),
                                                (500, 0)])
def test_kernel_equals_the_numpy_snip(kernel, n, iterations):
    y = profiles(np.random.default_rng(n), 12, n)
    ref = snip(y, iterations)
    got = run_kernel(kernel, y, iterations)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-10)
    assert np.isfinite(got).all()
    if n > 2 * 8 and iterations:
        assert (got <= np.maximum(y, 0) + 1e-6).mean() > 0.9  # a background: under the profile almost everywhere


def test_the_array_path_takes_profiles_longer_than_the_kernel_takes():
    class FakeCupy:  # an array module with a RawKernel: the kernel would be used, but not past KERNEL_MAX_BINS
        RawKernel = None

        def __getattr__(self, name):
            return getattr(np, name)

    y = profiles(np.random.default_rng(1), 2, KERNEL_MAX_BINS + 1)
    np.testing.assert_array_equal(snip(y, 30, FakeCupy()), snip(y, 30))

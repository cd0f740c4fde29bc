"""The CUDA kernel's source, built as plain C++ on the CPU (one loop over the "threads"), runs the same algorithm as
its NumPy twin :func:`ringstream.fitting.batched.fit_batch`: the port is checked here, the device only has
to run it. Skipped when no C++ compiler is installed."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from ringstream.fitting import tch
from ringstream.fitting.batched import CONVERGED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.gpu_fitter import kernel_source
from ringstream.fitting.synthetic import make_case, make_tch_case
from ringstream.params import parse_params

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the kernel source on the CPU")

PRE = r"""
#include <cmath>
using std::isfinite; using std::fmax; using std::fmin; using std::fabs; using std::sqrt; using std::exp; using std::pow;
#define __device__
#define __forceinline__ inline
#define __global__
#define __restrict__
struct D3 { int x; };
static D3 blockIdx, blockDim, threadIdx;
"""
POST = r"""
extern "C" void run_all(const double* x, const double* y, const int* npts, const double* xmid, const double* hw,
                        const double* p_in, const double* lo, const double* hi, double* p_out, double* cost,
                        double* cost0, double* status, double* iters, int B, int N, int max_iter) {
    blockDim.x = 1; threadIdx.x = 0;
    for (int b = 0; b < B; ++b) {
        blockIdx.x = b;
        lm_fit_cpu(x, y, npts, xmid, hw, p_in, lo, hi, p_out, cost, cost0, status, iters, B, N, max_iter);
    }
}
"""
BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"
X = np.arange(200.0)


def build(tmp_path, n_peaks: int, model: str = "pv", source: str | None = None):
    """The kernel source (``kernel_source(n_peaks, model)`` unless given) built as a shared library on the CPU."""
    src = (source or kernel_source(n_peaks, model)).replace('extern "C" __global__ void lm_fit',
                                                            "static void lm_fit_cpu")
    cpp, so = tmp_path / f"k{model}{n_peaks}.cpp", tmp_path / f"k{model}{n_peaks}.so"
    cpp.write_text(PRE + src + POST)
    subprocess.run([CXX, "-O2", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-o", str(so), str(cpp)], check=True,
                   capture_output=True, timeout=120)
    return ctypes.CDLL(str(so))


@pytest.mark.parametrize("kind", ["single", "double", "triple"])
def test_kernel_source_runs_the_numpy_algorithm(tmp_path, kind):
    rng = np.random.default_rng(1)
    probs, xs, ys = [], [], []
    for snr in (20, 100, 1000):
        for _ in range(15):
            c = make_case(rng, kind, snr=snr)
            ff = FrameFitter(parse_params(BASE + "".join(f"PeakLocation {v:.2f}\n" for v in c.centres)), X)
            for pr in ff.plan(c.y, None, "").problems:
                probs.append(pr)
                xs.append(X[pr.start:pr.stop])
                ys.append(c.y[pr.start:pr.stop])
    assert len(probs) == 45
    check_against_numpy(tmp_path, pack(probs, xs, ys))


@pytest.mark.parametrize("kind", ["single", "double"])
def test_tch_kernel_source_runs_the_numpy_algorithm(tmp_path, kind):
    """The "tch" kernel (its per-peak terms spliced into the same LM) on TCH peaks on 2θ, as fit_batch fits them."""
    rng = np.random.default_rng(5)
    probs, xs, ys = [], [], []
    for snr in (100, 2000):
        for _ in range(8):
            c = make_tch_case(rng, kind, snr=snr)
            probs.append(tch.guess(c.x, c.y, c.centres))
            xs.append(c.x)
            ys.append(c.y)
    pk = pack(probs, xs, ys)
    assert pk.model == "tch"
    check_against_numpy(tmp_path, pk)


def check_against_numpy(tmp_path, pk, max_iter: int = 200):
    """The kernel source built on the CPU and fit_batch on ``pk``: every ROI converged, the same start cost, cost
    and parameters (to 1e-5 of their bound interval)."""
    ref = fit_batch(pk, max_iter=max_iter)
    b, m = pk.p.shape
    lib = build(tmp_path, (m - 2) // 4, pk.model)
    out = {k: np.empty(b) for k in ("cost", "cost0", "status", "iters")}
    p_out = np.empty_like(pk.p)
    x, y, npts = np.ascontiguousarray(pk.x), np.ascontiguousarray(pk.y), pk.npts.astype(np.int32)
    ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in (x, y, npts, pk.xmid, pk.hw, pk.p, pk.lo, pk.hi, p_out,
                                                        out["cost"], out["cost0"], out["status"], out["iters"])]
    lib.run_all(*ptr, ctypes.c_int(b), ctypes.c_int(x.shape[1]), ctypes.c_int(max_iter))
    assert np.all(out["status"] == CONVERGED) and np.all(ref["status"] == CONVERGED)
    np.testing.assert_allclose(out["cost0"], ref["start_cost"], rtol=1e-12)
    np.testing.assert_allclose(out["cost"], ref["cost"], rtol=1e-10)
    span = np.where(pk.hi > pk.lo, pk.hi - pk.lo, 1.0)
    assert np.max(np.abs(p_out - ref["p"]) / span) < 1e-5


class _DeviceArray(np.ndarray):
    """A stand-in for a CuPy array: a NumPy array with ``set`` (the host-to-device copy)."""

    def set(self, arr):
        assert arr.dtype == self.dtype and arr.shape == self.shape
        self[...] = arr


class _FakeCupy:
    """Just enough of CuPy for GpuFitter's host side, with the kernel source built on the CPU as its RawKernel."""

    float64, int32 = np.float64, np.int32

    def __init__(self, tmp_path):
        self.tmp_path, self.launches, self.copies = tmp_path, 0, 0
        outer = self

        class _Stream:
            def synchronize(self):
                pass

        class _Cuda:
            @staticmethod
            def get_current_stream():
                return _Stream()

        self.cuda = _Cuda()

        class _Kernel:
            def __init__(self, src, name):
                assert name == "lm_fit"
                model = "tch" if "tch_widths" in src else "pv"
                self.lib = build(outer.tmp_path, int(src.split("#define MAXP ")[1].split()[0]), model, src)

            def __call__(self, grid, block, args):
                outer.launches += 1
                *arrays, b, n, max_iter = args
                assert all(isinstance(a, _DeviceArray) and a.flags.c_contiguous for a in arrays)
                assert arrays[2].dtype == np.int32 and all(a.dtype == np.float64 for i, a in enumerate(arrays)
                                                           if i != 2)
                ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
                self.lib.run_all(*ptr, ctypes.c_int(int(b)), ctypes.c_int(int(n)), ctypes.c_int(int(max_iter)))

        self.RawKernel = _Kernel

    def empty(self, shape, dtype=np.float64):
        return np.full(shape, 0xFF if np.dtype(dtype) == np.uint8 else np.nan, dtype=dtype).view(_DeviceArray)

    def zeros(self, shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype).view(_DeviceArray)

    def asnumpy(self, a):
        self.copies += 1
        return np.array(a)


def test_gpu_fitter_host_side_packs_one_copy_that_the_kernel_reads_right(tmp_path):
    """GpuFitter's staging (one float64 block and the int32 point counts in one pinned buffer, one copy, buffers
    grown and reused) with a stand-in for CuPy whose kernel is the CUDA source built on the CPU: the same results as
    the NumPy algorithm, for batches of several sizes and peak counts in any order, and through the fast path."""
    from ringstream.fitting.gpu_fitter import GpuFitter

    gpu = object.__new__(GpuFitter)
    gpu.cp, gpu.empty_pinned, gpu.kernels, gpu.threads, gpu._host, gpu._dev = (
        _FakeCupy(tmp_path), lambda shape, dtype: np.full(shape, 0xFF, dtype), {}, 64, None, None)
    rng = np.random.default_rng(3)
    for kind, n in (("single", 3), ("triple", 40), ("double", 2), ("single", 300), ("double", 9)):
        probs, xs, ys = [], [], []
        for _ in range(n):
            c = make_case(rng, kind, snr=100)
            ff = FrameFitter(parse_params(BASE + "".join(f"PeakLocation {v:.2f}\n" for v in c.centres)), X)
            for pr in ff.plan(c.y, None, "").problems:
                probs.append(pr)
                xs.append(X[pr.start:pr.stop])
                ys.append(c.y[pr.start:pr.stop])
        pk = pack(probs, xs, ys)
        ref, got = fit_batch(pk), gpu.fit_packed(pk)
        assert set(got) == set(ref) and got["status"].dtype == got["iterations"].dtype == np.int32
        np.testing.assert_array_equal(got["status"], ref["status"])
        np.testing.assert_allclose(got["start_cost"], ref["start_cost"], rtol=1e-12)
        np.testing.assert_allclose(got["cost"], ref["cost"], rtol=1e-9)
        span = np.where(pk.hi > pk.lo, pk.hi - pk.lo, 1.0)
        assert np.max(np.abs(got["p"] - ref["p"]) / span) < 1e-5
    assert gpu.cp.launches == gpu.cp.copies == 5 and gpu._host.size >= 8 * 300 * 41 * 2
    # the worker's path: the fast path with engine gpu against the NumPy LM
    cases = [make_case(rng, "double", snr=300) for _ in range(16)]
    p = parse_params(BASE + "".join(f"PeakLocation {v:.2f}\n" for v in cases[0].centres))
    a = FrameFitter(p, X, engine="gpu", gpu=gpu).fit_many([c.y for c in cases])
    b = FrameFitter(p, X, engine="lm").fit_many([c.y for c in cases])
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa.fit, fb.fit, rtol=1e-6, atol=1e-6, equal_nan=True)
    # and the tch model: its own kernel, on the bins' 2θ (Lsd 1 m, 200 µm pixels)
    tth = np.degrees(np.arctan(X * 200.0 / 1e6))
    a = FrameFitter(p, X, engine="gpu", gpu=gpu, model="tch", two_theta=tth).fit_many([c.y for c in cases])
    b = FrameFitter(p, X, engine="lm", model="tch", two_theta=tth).fit_many([c.y for c in cases])
    assert ("tch", 2) in gpu.kernels and np.isfinite(b[0].fit).all()
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa.fit, fb.fit, rtol=1e-6, atol=1e-6, equal_nan=True)

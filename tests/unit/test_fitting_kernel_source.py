"""The CUDA kernel's source, built as plain C++ on the CPU (one loop over the "threads"), runs the same algorithm as
its NumPy twin :func:`ringstream.fitting.batched.fit_batch` (issue 5): the port is checked here, the device only has
to run it. Skipped when no C++ compiler is installed."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from ringstream.fitting.batched import CONVERGED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.gpu_fitter import kernel_source
from ringstream.fitting.synthetic import make_case
from ringstream.params import parse_params

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the kernel source on the CPU")

PRE = r"""
#include <cmath>
using std::isfinite; using std::fmax; using std::fmin; using std::fabs; using std::sqrt; using std::exp;
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


def build(tmp_path, n_peaks: int):
    src = kernel_source(n_peaks).replace('extern "C" __global__ void lm_fit', "static void lm_fit_cpu")
    cpp, so = tmp_path / f"k{n_peaks}.cpp", tmp_path / f"k{n_peaks}.so"
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
    pk = pack(probs, xs, ys)
    ref = fit_batch(pk)
    b, m = pk.p.shape
    lib = build(tmp_path, (m - 2) // 4)
    out = {k: np.empty(b) for k in ("cost", "cost0", "status", "iters")}
    p_out = np.empty_like(pk.p)
    x, y, npts = np.ascontiguousarray(pk.x), np.ascontiguousarray(pk.y), pk.npts.astype(np.int32)
    ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in (x, y, npts, pk.xmid, pk.hw, pk.p, pk.lo, pk.hi, p_out,
                                                        out["cost"], out["cost0"], out["status"], out["iters"])]
    lib.run_all(*ptr, ctypes.c_int(b), ctypes.c_int(x.shape[1]), ctypes.c_int(200))
    assert b == 45 and np.all(out["status"] == CONVERGED) and np.all(ref["status"] == CONVERGED)
    np.testing.assert_allclose(out["cost0"], ref["start_cost"], rtol=1e-12)
    np.testing.assert_allclose(out["cost"], ref["cost"], rtol=1e-10)
    span = np.where(pk.hi > pk.lo, pk.hi - pk.lo, 1.0)
    assert np.max(np.abs(p_out - ref["p"]) / span) < 1e-5

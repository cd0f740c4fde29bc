"""The GPU decoder's CUDA C source itself, compiled for the host (g++, the CUDA built-ins emulated: one thread a
block, blocks one after another) and run on the cases of test_gpu_decode_reference.py: the kernels' C is held to
bitshuffle / lz4 here, before a device runs it (tests/gpu/test_gpu_decode.py). Skipped without a C++ compiler."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from test_gpu_decode_reference import encoded, frame

from ringstream.engines import gpu_decode
from ringstream.engines.gpu_decode import EncodedFrame, plan_batch

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile the kernels for the host")]

_PRELUDE = r"""
#include <cstdint>
struct Dim { long long x; };
static Dim blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline void __syncwarp() {}
static inline int atomicOr(int* p, int v) { int o = *p; *p |= v; return o; }
"""

_DRIVER = r"""
typedef long long i64;
extern "C" void run_all(const unsigned char* comp, const i64* table, int n, i64 raw, int itemsize, i64* rows,
                        i64 n_rows, unsigned char* tmp, unsigned char* out, int* err) {
    blockDim.x = 1; threadIdx.x = 0;
    for (int f = 0; f < n; ++f) { blockIdx.x = f; scan_blocks(comp, table, n, raw, itemsize, rows, err); }
    for (i64 r = 0; r < n_rows; ++r) { blockIdx.x = r; lz4_blocks(comp, tmp, out, rows, n_rows, raw, err); }
    for (i64 r = 0; r < n_rows; ++r) { blockIdx.x = r; bitunshuffle(tmp, out, rows, n_rows, raw, itemsize, err); }
}
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    src = d / "k.cpp"
    src.write_text(_PRELUDE + gpu_decode._SOURCE.replace('extern "C" __global__', "__global__") + _DRIVER)
    lib = d / "k.so"
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-fsanitize=undefined", "-o", str(lib),
                    str(src)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def run_kernels(lib, batch: list[EncodedFrame], guard: int = 256):
    plan = plan_batch(batch)
    comp = np.zeros(plan.comp_total + guard, np.uint8)
    for f, fr in enumerate(batch):
        comp[plan.comp_off[f]:plan.comp_off[f] + plan.comp_len[f]] = fr.payload
    table = np.ascontiguousarray(plan.table())
    rows = np.zeros((plan.n_rows, 6), np.int64)
    n, raw = plan.n_frames, plan.raw_bytes
    tmp = np.zeros(n * raw + guard, np.uint8)
    out = np.full(n * raw + guard, 0xAB, np.uint8)
    err = np.zeros(n, np.int32)
    p = ctypes.c_void_p
    lib.run_all(p(comp.ctypes.data), p(table.ctypes.data), ctypes.c_int(n), ctypes.c_longlong(raw),
                ctypes.c_int(plan.itemsize), p(rows.ctypes.data), ctypes.c_longlong(plan.n_rows), p(tmp.ctypes.data),
                p(out.ctypes.data), p(err.ctypes.data))
    assert (out[n * raw:] == 0xAB).all() and (tmp[n * raw:] == 0).all(), "a kernel wrote past its buffer"
    return out[:n * raw].reshape(n, raw), err


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32"])
@pytest.mark.parametrize(("codec", "header", "block"), [
    ("bslz4", True, 0), ("bslz4", False, 0), ("bslz4", True, 64), ("lz4", True, 100), ("lz4", False, 0)])
def test_kernels_bit_exact(kernels, dtype, codec, header, block):
    itemsize = np.dtype(dtype).itemsize
    if codec == "bslz4" and block:
        block = max(block, 8 * itemsize) // (8 * itemsize) * 8 * itemsize
    imgs = [frame(dtype, seed=s) for s in range(3)] + [np.zeros((29, 43), dtype)]
    imgs[3][3:9] = 9  # long runs
    out, err = run_kernels(kernels, [encoded(img, codec, header, block) for img in imgs])
    assert not err.any()
    for f, img in enumerate(imgs):
        np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img)


@pytest.mark.parametrize(("codec", "header", "block"), [("bslz4", True, 0), ("bslz4", False, 0),
                                                         ("lz4", True, 256), ("lz4", False, 0)])
def test_kernels_flag_corrupt_input_like_the_reference(kernels, codec, header, block):
    img = frame("uint16", (32, 33))
    good = encoded(img, codec, header, block)
    p = good.payload
    cases = [p[: p.size // 2], p[:-1], np.append(p, np.uint8(0)), p[:1]]
    rng = np.random.default_rng(1)
    for _ in range(30):
        noisy = p.copy()
        noisy[good.header + 4:] = rng.integers(0, 256, noisy.size - good.header - 4)
        cases.append(noisy)
        flipped = p.copy()
        flipped[rng.integers(0, p.size)] ^= np.uint8(1 << int(rng.integers(0, 8)))
        cases.append(flipped)
    batch = [good] + [EncodedFrame(c, codec, good.header, good.block, img.shape, img.dtype, "bad") for c in cases]
    out, err = run_kernels(kernels, batch)
    ref_out, ref_err = gpu_decode.decode_batch_reference(batch)
    np.testing.assert_array_equal(err != 0, ref_err != 0)  # the C and the NumPy agree on every case
    assert err[0] == 0 and all(err[1:5])
    np.testing.assert_array_equal(out[0].view(img.dtype).reshape(img.shape), img)
    ok = np.flatnonzero(err == 0)
    np.testing.assert_array_equal(out[ok], ref_out[ok])

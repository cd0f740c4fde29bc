"""The GPU decoder (ringstream.engines.gpu_decode) on a device: bit-exact against bitshuffle / lz4 on the CPU for
uint8/uint16/uint32/int32, several block sizes, frames that leave trailing bytes, both LZ4 framings; corrupt input
flagged, its neighbours intact and nothing written outside the output; and the engine's compressed_input path
(ring slots in, lineouts identical to the raw frames', decode_failed, integrate_many's CodecError). The same cases
run on the CPU against the NumPy form of the algorithm in tests/unit/test_gpu_decode_reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_cupy_engine import _random_map

from ringstream.engines.gpu_decode import EncodedFrame, GpuDecoder
from ringstream.images.frame_codecs import CodecError, encode_frame
from ringstream.transport.shm_ring import FrameRing

pytestmark = pytest.mark.timeout(300)

DTYPES = ["uint8", "uint16", "uint32", "int32"]
GUARD = 4096


def frame(dtype, shape=(29, 43), seed=0, lam=5.0):
    rng = np.random.default_rng(seed)
    img = rng.poisson(lam, shape).astype(dtype)
    img.flat[::101] = np.iinfo(np.dtype(dtype)).max
    return img


def encoded(img, codec, header, block=0, where="test"):
    payload, head, blk = encode_frame(img, codec, header, block)
    return EncodedFrame(payload, codec, head, blk, img.shape, img.dtype, where)


def decode_on_device(batch):
    """(decoded bytes [n, raw] uint8, error flags [n]) from the kernels; the guard after the output checked."""
    import cupy as cp

    raw = batch[0].nbytes
    n = len(batch)
    d_out = cp.full(n * raw + GUARD, 0xAB, cp.uint8)
    stream = cp.cuda.Stream(non_blocking=True)
    err = GpuDecoder(cp, cp.cuda.Device().id).decode(batch, d_out, stream)
    stream.synchronize()
    out = cp.asnumpy(d_out)
    assert (out[n * raw:] == 0xAB).all(), "the decoder wrote past its output"
    return out[:n * raw].reshape(n, raw), np.array(err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("codec", "header", "block"), [
    ("bslz4", True, 0), ("bslz4", False, 0), ("bslz4", True, 64), ("bslz4", True, 1024), ("bslz4", False, 4096),
    ("lz4", True, 100), ("lz4", True, 0), ("lz4", False, 0)])
@pytest.mark.parametrize("shape", [(29, 43), (256, 250)])  # 1247 pixels: 7 trailing; 64000: none
def test_bit_exact_against_the_libraries(dtype, codec, header, block, shape):
    itemsize = np.dtype(dtype).itemsize
    if codec == "bslz4" and block:
        block = max(block, 8 * itemsize) // (8 * itemsize) * 8 * itemsize
    imgs = [frame(dtype, shape, seed=s) for s in range(5)]
    out, err = decode_on_device([encoded(img, codec, header, block) for img in imgs])
    assert not err.any()
    for f, img in enumerate(imgs):
        np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img)


def test_detector_sized_frames_and_runs():
    rng = np.random.default_rng(2)
    big = rng.poisson(0.3, (2162, 2068)).astype(np.uint16)  # EIGER2 4M, sparse counts
    runs = np.zeros((1679, 1475), np.int32)  # PILATUS 2M: long runs, overlapping matches, extended lengths
    runs[100:300] = 7
    for img, codec, header, block in ((big, "bslz4", True, 0), (big, "lz4", True, 65536), (runs, "bslz4", False, 0),
                                      (runs, "lz4", False, 0)):
        out, err = decode_on_device([encoded(img, codec, header, block)] * 3)
        assert not err.any()
        for f in range(3):
            np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img)


@pytest.mark.parametrize(("codec", "header", "block"), [("bslz4", True, 0), ("bslz4", False, 0),
                                                         ("lz4", True, 256), ("lz4", False, 0)])
def test_corrupt_inputs_are_flagged_and_never_fault(codec, header, block):
    img = frame("uint16", (32, 33))
    good = encoded(img, codec, header, block)
    p = good.payload
    cases = {"truncated": p[: p.size // 2], "one byte short": p[:-1], "one byte long": np.append(p, np.uint8(0)),
             "empty": p[:1]}
    if good.header or codec == "bslz4":
        for name, value in (("block length", [0x7F, 0xFF, 0xFF, 0xFF]), ("empty block", [0, 0, 0, 0])):
            smashed = p.copy()
            smashed[good.header:good.header + 4] = value
            cases[name] = smashed
    if good.header:
        wrong = p.copy()
        wrong[7] ^= 1
        cases["header size"] = wrong
    rng = np.random.default_rng(0)
    for k in range(20):  # random bytes after the framing: any LZ4 garbage
        noisy = p.copy()
        noisy[good.header + 4:] = rng.integers(0, 256, noisy.size - good.header - 4)
        cases[f"noise {k}"] = noisy
    names = list(cases)
    batch = [good] + [EncodedFrame(cases[nm], codec, good.header, good.block, img.shape, img.dtype, nm)
                      for nm in names] + [good]
    out, err = decode_on_device(batch)
    assert err[0] == err[-1] == 0
    for f in (0, len(batch) - 1):
        np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img)
    for k, nm in enumerate(names, start=1):
        if not nm.startswith("noise"):  # random bytes may, rarely, decode to something of the right size
            assert err[k], nm


def test_engine_integrates_compressed_ring_slots_as_the_raw_frames():
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(7)
    shape = (120, 136)
    imap = _random_map(rng, shape, 12, 18)
    eng = CupyEngine(imap, batch=4, n_streams=2)
    stack = [rng.poisson(6.0, shape).astype(np.uint32) for _ in range(4)]
    payloads = [encode_frame(img, "bslz4", True)[0] for img in stack]
    ring = FrameRing.create(4, max(p.size for p in payloads))
    try:
        for s, p in enumerate(payloads):
            ring.view(s, (p.size,), np.uint8)[...] = p
        eng.register_host_memory(ring._segment.buf)
        views = [EncodedFrame(ring.view(s, (p.size,), np.uint8), "bslz4", 12, 8192, shape, np.dtype(np.uint32),
                              f"frame {s}") for s, p in enumerate(payloads)]
        raw_lines, raw_cakes = eng.integrate_many(stack)
        sub = eng.submit(views)
        lines, cakes = eng.collect(sub)
        assert eng.decode_failed(sub) == []
        np.testing.assert_array_equal(lines, raw_lines)  # the same kernels on the same pixels
        np.testing.assert_array_equal(cakes, raw_cakes)
        bad = EncodedFrame(views[1].payload[:-5], "bslz4", 12, 8192, shape, np.dtype(np.uint32), "frame bad")
        sub = eng.submit([views[0], bad, views[2]])
        lines, _ = eng.collect(sub)
        assert eng.decode_failed(sub) == [1]
        np.testing.assert_allclose(lines[[0, 2]], raw_lines[[0, 2]], rtol=1e-12, atol=0)
        with pytest.raises(CodecError, match="frame bad"):
            eng.integrate_many([views[0], bad])
        with pytest.raises(CodecError, match="frame bad"):
            eng.integrate(bad)
        line, _ = eng.integrate(views[3])  # decoded on the CPU, integrated alone
        np.testing.assert_allclose(line, raw_lines[3], rtol=1e-12, atol=0)
        del views, bad
        eng.unregister_host_memory(ring._segment.buf)
    finally:
        eng.close()
        ring.close()
        ring.unlink()

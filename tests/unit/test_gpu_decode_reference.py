"""The GPU decoder's algorithm (ringstream.engines.gpu_decode), run in its NumPy form: bit-exact against the
bitshuffle and lz4 libraries for every framing, and every corrupt input flagged without touching anything outside
its frame. tests/gpu/test_gpu_decode.py holds the kernels to the same cases on a device."""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.engines.gpu_decode import (
    ERR_FRAMING,
    ERR_LZ4,
    EncodedFrame,
    decode_batch_reference,
    plan_batch,
    unshuffle_reference,
)
from ringstream.images.frame_codecs import encode_frame

pytestmark = pytest.mark.timeout(120)

DTYPES = ["uint8", "uint16", "uint32", "int32"]


def frame(dtype, shape=(29, 43), seed=0, lam=5.0):
    """Counts (compressible) with a few large values; 29 x 43 = 1247 pixels: 1247 % 8 = 7 trailing pixels."""
    rng = np.random.default_rng(seed)
    img = rng.poisson(lam, shape).astype(dtype)
    img.flat[::101] = np.iinfo(np.dtype(dtype)).max
    return img


def encoded(img, codec, header, block=0):
    payload, head, blk = encode_frame(img, codec, header, block)
    return EncodedFrame(payload, codec, head, blk, img.shape, img.dtype, "test")


def check(frames_in, batch):
    out, err = decode_batch_reference(batch)
    assert not err.any(), err
    for f, img in enumerate(frames_in):
        np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("codec", "header", "block"), [
    ("bslz4", True, 0), ("bslz4", False, 0), ("bslz4", True, 64), ("bslz4", True, 1024),
    ("lz4", True, 100), ("lz4", True, 0), ("lz4", False, 0)])
def test_bit_exact_against_the_libraries(dtype, codec, header, block):
    itemsize = np.dtype(dtype).itemsize
    if codec == "bslz4" and block:
        block = max(block, 8 * itemsize) // (8 * itemsize) * 8 * itemsize
    imgs = [frame(dtype, seed=s) for s in range(3)]
    check(imgs, [encoded(img, codec, header, block) for img in imgs])


def test_a_batch_of_mixed_framings_and_incompressible_blocks():
    rng = np.random.default_rng(3)
    imgs = [frame("uint16", (64, 40), seed=s) for s in range(4)]
    imgs[3] = rng.integers(0, 2**16, (64, 40)).astype(np.uint16)  # noise: lz4 blocks stored raw
    batch = [encoded(imgs[0], "bslz4", True), encoded(imgs[1], "bslz4", False, 256), encoded(imgs[2], "lz4", False),
             encoded(imgs[3], "lz4", True, 512)]
    assert batch[3].payload.size > imgs[3].nbytes  # some blocks went raw
    check(imgs, batch)


def test_long_runs_use_extended_lengths_and_overlapping_matches():
    img = np.zeros((300, 200), np.uint32)
    img[100:110] = 7  # runs far longer than 15 + 255 bytes: extended literal and match lengths, offset < length
    img[5, 5] = 1
    for codec, header in (("bslz4", True), ("lz4", False), ("lz4", True)):
        check([img], [encoded(img, codec, header, 4096 if codec == "lz4" and header else 0)])


def test_unshuffle_is_bitshuffles_inverse():
    bitshuffle = pytest.importorskip("bitshuffle")
    for dt in DTYPES:
        a = frame(dt, (1, 64)).reshape(-1)
        shuffled = bitshuffle.bitshuffle(a).view(np.uint8)
        np.testing.assert_array_equal(unshuffle_reference(shuffled, a.itemsize), a.view(np.uint8))


def _flags(batch):
    out, err = decode_batch_reference(batch)
    return out, [int(e) for e in err]


@pytest.mark.parametrize(("codec", "header", "block"), [("bslz4", True, 0), ("bslz4", False, 0),
                                                         ("lz4", True, 256), ("lz4", False, 0)])
def test_corrupt_inputs_are_flagged_and_their_neighbours_decode(codec, header, block):
    img = frame("uint16", (32, 33))
    good = encoded(img, codec, header, block)
    p = good.payload
    cases = {"truncated": p[: p.size // 2], "one byte short": p[:-1], "one byte long": np.append(p, np.uint8(0))}
    if good.header or codec == "bslz4":
        smashed = p.copy()
        smashed[good.header:good.header + 4] = [0x7F, 0xFF, 0xFF, 0xFF]  # a block length far past the end
        cases["block length"] = smashed
        zero = p.copy()
        zero[good.header:good.header + 4] = 0  # an empty first block
        cases["empty block"] = zero
    if good.header:
        wrong = p.copy()
        wrong[7] ^= 1  # the header's decoded size
        cases["header size"] = wrong
    garbage = p.copy()
    garbage[good.header + 4:] = 0xFF  # every LZ4 byte: literal lengths that never end
    cases["garbage"] = garbage
    for name, bad in cases.items():
        batch = [good, EncodedFrame(bad, codec, good.header, good.block, img.shape, img.dtype, name), good]
        out, err = _flags(batch)
        assert err[1] & (ERR_FRAMING | ERR_LZ4), name
        assert err[0] == err[2] == 0, name
        for f in (0, 2):
            np.testing.assert_array_equal(out[f].view(img.dtype).reshape(img.shape), img, err_msg=name)


def test_bad_offsets_are_flagged():
    img = np.tile(np.arange(16, dtype=np.uint8), (16, 4))  # repeats: matches with offsets
    good = encoded(img, "lz4", False)
    p = good.payload.copy()
    # the first match's offset: after the token and its literals; set it past the start of the block
    lit = p[0] >> 4
    pos = 1 + int(lit) + (0 if lit < 15 else 1)
    p[pos:pos + 2] = [0xFF, 0x7F]
    out, err = _flags([EncodedFrame(p, "lz4", 0, 0, img.shape, img.dtype, "offset")])
    assert err[0] & ERR_LZ4


def test_plan_counts_blocks_and_rows():
    img = frame("int32", (29, 43))
    plan = plan_batch([encoded(img, "bslz4", True, 256), encoded(img, "lz4", False)])
    part = (img.size - img.size % 8) * 4
    assert plan.n_blocks.tolist() == [-(-part // 256), 1]
    assert plan.n_rows == int(plan.n_blocks.sum()) + 2 and plan.comp_off[1] % 16 == 0

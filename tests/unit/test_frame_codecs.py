"""Compressed frames (bslz4, lz4 in both framings): encode_frame / framing_of / decode_frame round trips, and
corrupt bytes raising CodecError, never reading past the buffer."""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.images.frame_codecs import CodecError, decode_frame, encode_frame, framing_of

pytestmark = pytest.mark.timeout(60)

DTYPES = ["uint8", "uint16", "uint32", "int32"]


def _frame(dtype, shape=(37, 53), seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0, shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("codec", "header", "block"), [
    ("bslz4", True, 0), ("bslz4", False, 0), ("bslz4", True, 256), ("bslz4", False, 512),
    ("lz4", True, 1000), ("lz4", True, 0), ("lz4", False, 0)])
def test_round_trip(dtype, codec, header, block):
    frame = _frame(dtype)  # 37 x 53 = 1961 pixels: a partial last block and 1961 % 8 = 1 trailing pixel
    if codec == "bslz4" and block % (8 * frame.itemsize):
        block = 8 * frame.itemsize * 4
    payload, head, blk = encode_frame(frame, codec, header, block)
    name = codec if codec == "bslz4" or not header else "lz4hdf5"
    assert framing_of(name, payload, frame.nbytes)[1] == head
    out = np.empty_like(frame)
    decode_frame(codec, payload, out, head, blk)
    np.testing.assert_array_equal(out, frame)


def test_hdf5_filter_chunk_decodes_as_bslz4():
    """The bytes hdf5plugin's filter stores (read back with read_direct_chunk) are what decode_frame reads."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    import io

    frames = np.stack([_frame("uint16", seed=s) for s in range(2)])
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_dataset("d", data=frames, chunks=(1, *frames.shape[1:]), **hdf5plugin.Bitshuffle(cname="lz4"))
        f.create_dataset("e", data=frames, chunks=(1, *frames.shape[1:]), **hdf5plugin.LZ4())
    with h5py.File(bio, "r") as f:
        for name, codec in (("d", "bslz4"), ("e", "lz4hdf5")):
            _, chunk = f[name].id.read_direct_chunk((1, 0, 0))
            payload = np.frombuffer(chunk, np.uint8)
            c, head, block = framing_of(codec, payload, frames[1].nbytes)
            out = np.empty_like(frames[1])
            decode_frame(c, payload, out, head, block)
            np.testing.assert_array_equal(out, frames[1])


@pytest.mark.parametrize(("codec", "header"), [("bslz4", True), ("bslz4", False), ("lz4", True), ("lz4", False)])
def test_corrupt_inputs_raise(codec, header):
    frame = _frame("uint16", (64, 64))
    payload, head, block = encode_frame(frame, codec, header, 1024 if codec == "lz4" else 0)
    out = np.empty_like(frame)
    bad = [payload[: len(payload) // 2], payload[:-1], np.concatenate([payload, np.zeros(3, np.uint8)])]
    if head or codec == "bslz4":
        smashed = payload.copy()
        smashed[head:head + 4] = 0xFF  # the first block's length: far past the end
        bad.append(smashed)
    for b in bad:
        with pytest.raises(CodecError):
            decode_frame(codec, b, out, head, block)
    small = np.empty((64, 32), np.uint16)  # a decoded size that is not the frame's
    with pytest.raises(CodecError):
        decode_frame(codec, payload, small, head, block)


def _params(shape):
    from types import SimpleNamespace

    return SimpleNamespace(NrPixelsZ=shape[0], NrPixelsY=shape[1])


def _h5(path, frames, **filters):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames, chunks=(1, *frames.shape[1:]), **filters)


def test_hdf5_chunks_read_as_stored_only_for_one_frame_a_chunk_bslz4_or_lz4(tmp_path):
    """read_encoded gives the stored chunk of a bslz4 / lz4 dataset chunked one frame a chunk, None otherwise."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from ringstream.images.formats import open_image

    frames = np.stack([_frame("int32", seed=s) for s in range(3)])
    cases = {"bs.h5": (dict(hdf5plugin.Bitshuffle(cname="lz4")), "bslz4"), "lz.h5": (dict(hdf5plugin.LZ4()), "lz4"),
             "zs.h5": (dict(hdf5plugin.Bitshuffle(cname="zstd")), None), "gz.h5": ({"compression": "gzip"}, None)}
    for name, (filters, codec) in cases.items():
        _h5(tmp_path / name, frames, **filters)
        with open_image(tmp_path / name) as f:
            got = f.read_encoded(2)
            np.testing.assert_array_equal(f.read(2), frames[2])  # decoded as before either way
        if codec is None:
            assert got is None, name
            continue
        payload, c, head, block = got
        assert c == codec and head == 12 and payload.size < frames[2].nbytes
        out = np.empty_like(frames[2])
        decode_frame(c, payload, out, head, block)
        np.testing.assert_array_equal(out, frames[2])


@pytest.mark.parametrize("codec", ["bslz4", "lz4", "stored"])
def test_replay_frames_travel_compressed(tmp_path, codec):
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from ringstream.ingest.replay import ReplaySource

    frames = np.stack([_frame("uint16", (16, 24), seed=s) for s in range(3)])
    if codec == "stored":
        path = tmp_path / "s.h5"
        _h5(path, frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    else:
        path = tmp_path / "s.npy"
        np.save(path, frames)
    src = ReplaySource(path, _params((16, 24)), loop=False, codec=codec)
    assert src.keeps_compressed
    got = list(src.frames())
    assert [f.codec for f in got] == ["lz4" if codec == "lz4" else "bslz4"] * 3
    for f, raw in zip(got, frames, strict=True):
        assert f.frame_shape() == (16, 24) and f.frame_dtype() == np.uint16
        out = np.empty_like(raw)
        decode_frame(f.codec, f.pixels, out, f.codec_header, f.codec_block)
        np.testing.assert_array_equal(out, raw)
    if codec != "stored":
        assert src.compression_ratio > 1
    again = src.frame_again(got[1].source_id)
    np.testing.assert_array_equal(again.pixels, got[1].pixels)

"""Compressed NTNDArray payloads decode bit-exact (ringstream/ingest/ntnd_codecs.py).

Streams are made by the codec libraries themselves; the HDF5-framed ones (bslz4 with its 12-byte header, lz4hdf5)
are the raw chunks that h5py + hdf5plugin's filters write, so the framing is the real one, not our own guess.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ringstream.ingest.ntnd_codecs import CodecError, decode_into, has_hdf5_header

bitshuffle = pytest.importorskip("bitshuffle")
blosc = pytest.importorskip("blosc")
lz4_block = pytest.importorskip("lz4.block")

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
SHAPE = (67, 45)  # odd sizes: the last bitshuffle block is partial


def frame(dtype: str, shape=SHAPE, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(dt)
    info = np.iinfo(dt)
    # mostly small counts (compressible), a few extreme values (all bits exercised)
    img = rng.poisson(3.0, shape).astype(dt)
    img.flat[::97] = info.max
    img.flat[5::101] = info.min
    return img


def hdf5_chunk(img: np.ndarray, compression) -> bytes:
    """The raw chunk h5py + hdf5plugin write for ``img`` stored as one chunk with filter ``compression``."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("hdf5plugin")
    import io

    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        ds = f.create_dataset("d", data=img[None], chunks=(1, *img.shape), **compression)
        _mask, chunk = ds.id.read_direct_chunk((0, 0, 0))
    return bytes(chunk)


def decoded(codec: str, payload, img: np.ndarray) -> np.ndarray:
    out = np.empty_like(img)
    decode_into(codec, np.frombuffer(payload, np.uint8), img.nbytes, out)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_lz4_raw_block(dtype):
    img = frame(dtype)
    payload = lz4_block.compress(img.tobytes(), store_size=False)
    np.testing.assert_array_equal(decoded("lz4", payload, img), img)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bslz4_without_header(dtype):
    img = frame(dtype)
    payload = bitshuffle.compress_lz4(img.reshape(-1)).tobytes()
    assert not has_hdf5_header(payload, img.nbytes)
    np.testing.assert_array_equal(decoded("bslz4", payload, img), img)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bslz4_with_hdf5_header(dtype):
    import hdf5plugin

    img = frame(dtype)
    payload = hdf5_chunk(img, hdf5plugin.Bitshuffle(cname="lz4"))
    assert has_hdf5_header(payload, img.nbytes)
    np.testing.assert_array_equal(decoded("bslz4", payload, img), img)


def test_bslz4_header_with_explicit_block_size():
    """A non-default block size in the header is honoured (a wrong one would scramble the pixels)."""
    import hdf5plugin

    img = frame("uint16", (300, 211))
    payload = hdf5_chunk(img, hdf5plugin.Bitshuffle(nelems=1024, cname="lz4"))
    assert int.from_bytes(payload[8:12], "big") == 1024 * 2
    np.testing.assert_array_equal(decoded("bslz4", payload, img), img)


@pytest.mark.parametrize("dtype", ("uint16", "int32", "float64"))
def test_lz4hdf5(dtype):
    import hdf5plugin

    img = frame(dtype, (256, 300))
    payload = hdf5_chunk(img, hdf5plugin.LZ4(nbytes=16384))
    np.testing.assert_array_equal(decoded("lz4hdf5", payload, img), img)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shuffle", (blosc.NOSHUFFLE, blosc.SHUFFLE, blosc.BITSHUFFLE))
def test_blosc(dtype, shuffle):
    img = frame(dtype)
    payload = blosc.compress(img.tobytes(), typesize=img.dtype.itemsize, shuffle=shuffle, cname="lz4")
    np.testing.assert_array_equal(decoded("blosc", payload, img), img)


def test_zlib():
    img = frame("uint32")
    np.testing.assert_array_equal(decoded("zlib", zlib.compress(img.tobytes()), img), img)


def test_decodes_into_the_given_array_in_place():
    img = frame("uint16")
    out = np.zeros_like(img)
    address = out.ctypes.data
    decode_into("bslz4", bitshuffle.compress_lz4(img.reshape(-1)), img.nbytes, out)
    assert out.ctypes.data == address
    np.testing.assert_array_equal(out, img)


# ------------------------------------------------------------------------------------------------- bad input


def test_unknown_codec_names_it():
    img = frame("uint16")
    with pytest.raises(CodecError, match=r"codec 'jpeg' is not supported; expected one of lz4, lz4hdf5, bslz4"):
        decode_into("jpeg", b"xx", img.nbytes, np.empty_like(img))


def test_uncompressed_size_must_match_the_frame():
    img = frame("uint16")
    with pytest.raises(CodecError, match=r"lz4: uncompressedSize is 100 bytes but the frame \(67, 45\) uint16 "
                                         r"needs 6030"):
        decode_into("lz4", lz4_block.compress(img.tobytes(), store_size=False), 100, np.empty_like(img))


def test_blosc_frame_of_another_size_is_rejected():
    img = frame("uint16")
    payload = blosc.compress(img[:10].tobytes(), typesize=2)
    with pytest.raises(CodecError, match=r"blosc: the frame header says 900 bytes, expected 6030"):
        decode_into("blosc", payload, img.nbytes, np.empty_like(img))


@pytest.mark.parametrize("codec", ("lz4", "bslz4", "lz4hdf5", "zlib"))
def test_truncated_streams_raise(codec):
    import hdf5plugin

    img = frame("int32", (128, 128))
    full = {
        "lz4": lambda: lz4_block.compress(img.tobytes(), store_size=False),
        "bslz4": lambda: hdf5_chunk(img, hdf5plugin.Bitshuffle(cname="lz4")),
        "lz4hdf5": lambda: hdf5_chunk(img, hdf5plugin.LZ4(nbytes=8192)),
        "zlib": lambda: zlib.compress(img.tobytes()),
    }[codec]()
    with pytest.raises(CodecError, match=codec):
        decode_into(codec, full[: len(full) // 2], img.nbytes, np.empty_like(img))


def test_truncated_blosc_raises():
    img = frame("int32", (128, 128))
    full = blosc.compress(img.tobytes(), typesize=4)
    with pytest.raises(CodecError, match=r"blosc: the frame header says \d+ compressed bytes, got"):
        decode_into("blosc", full[: len(full) // 2], img.nbytes, np.empty_like(img))


@pytest.mark.parametrize("header", (False, True))
def test_corrupt_bslz4_raises_and_never_crashes(header):
    """Random damage to the block lengths or the LZ4 data: a CodecError or, when the damage happens to decode,
    some array; never a crash (bitshuffle itself does not bound its reads)."""
    import hdf5plugin

    img = frame("uint16", (64, 200))
    good = (hdf5_chunk(img, hdf5plugin.Bitshuffle(cname="lz4")) if header
            else bitshuffle.compress_lz4(img.reshape(-1)).tobytes())
    rng = np.random.default_rng(7)
    errors = 0
    for _ in range(200):
        bad = bytearray(good)
        for pos in rng.integers(12 if header else 0, len(bad), 3):
            bad[pos] = int(rng.integers(0, 256))
        try:
            decoded("bslz4", bytes(bad), img)
        except CodecError:
            errors += 1
    assert errors > 0

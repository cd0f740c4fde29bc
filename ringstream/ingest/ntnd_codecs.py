"""Decoders for compressed areaDetector NTNDArrays (NDPluginCodec and the EIGER/HDF5 framings).

An NTNDArray whose ``codec.name`` is not empty carries its pixels compressed in ``value`` (usually the
``ubyteValue`` member), the original pixel type in ``codec.parameters`` and the original size in bytes in
``uncompressedSize``. :func:`decode_into` writes the decoded pixels straight into a caller's array (a ring slot):

- ``lz4``: one raw LZ4 block (``LZ4_compress_default``, no size prefix), as NDPluginCodec writes it;
- ``lz4hdf5``: the HDF5 LZ4 filter framing (8-byte big-endian total size, 4-byte big-endian block size, then
  blocks each preceded by a 4-byte big-endian compressed length);
- ``bslz4``: bitshuffle + LZ4. NDPluginCodec writes the bare bitshuffle stream (blocks with a 4-byte big-endian
  length each, default block size); the EIGER file writer / HDF5 bitshuffle filter prepend a 12-byte header
  (8-byte big-endian total size, 4-byte big-endian block size in bytes). The header is detected: its first 8 bytes
  equal ``uncompressedSize``, which a bare stream cannot start with (its first 4 bytes are a non-zero block
  length);
- ``blosc``: a self-describing Blosc frame (its header says the decoded size, checked against ``out``);
- ``zlib``: a zlib stream.

Decoding uses the maintained codec packages ``lz4``, ``bitshuffle`` and ``blosc`` (the ``[pva]`` extra); a codec
whose package is missing or that is not listed (``jpeg``) raises :class:`CodecError` naming it. Every size mismatch
raises :class:`CodecError` with what was expected: nothing is ever padded or truncated silently.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..errors import InputError

#: codec names this module decodes
CODECS = ("lz4", "lz4hdf5", "bslz4", "blosc", "zlib")

#: bytes of the HDF5-filter header of bslz4 / lz4hdf5: 8-byte big-endian total size, 4-byte big-endian block size
HDF5_HEADER_BYTES = 12


class CodecError(InputError):
    """A compressed frame that cannot be decoded into the expected size (message names codec and sizes)."""


def _as_bytes_view(payload: Any) -> memoryview:
    """``payload`` (ndarray of any integer type, bytes, memoryview) as a flat byte view, without copying."""
    if isinstance(payload, np.ndarray):
        return memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
    return memoryview(payload).cast("B")


def has_hdf5_header(payload: Any, uncompressed_size: int) -> bool:
    """True when ``payload`` starts with the 12-byte HDF5-filter header of a frame of ``uncompressed_size`` bytes:
    big-endian uint64 total size equal to it, and a big-endian uint32 block size that is positive."""
    buf = _as_bytes_view(payload)
    if len(buf) < HDF5_HEADER_BYTES:
        return False
    total = int.from_bytes(buf[0:8], "big")
    block = int.from_bytes(buf[8:12], "big")
    return total == int(uncompressed_size) and block > 0


def _check_out(codec: str, out: np.ndarray, uncompressed_size: int) -> None:
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("decode_into: out must be a writable C-contiguous array")
    if out.nbytes != int(uncompressed_size):
        raise CodecError(f"{codec}: uncompressedSize is {int(uncompressed_size)} bytes but the frame "
                         f"{tuple(out.shape)} {out.dtype} needs {out.nbytes}")


def _need(module: str, codec: str):
    try:
        if module == "lz4.block":
            import lz4.block as mod
        elif module == "bitshuffle":
            import bitshuffle as mod
        else:
            import blosc as mod
    except ImportError:
        raise CodecError(f"{codec}: the Python package {module.split('.')[0]!r} is needed to decode it: "
                         "pip install 'ringstream[pva]'") from None
    return mod


def decode_into(codec: str, payload: Any, uncompressed_size: int, out: np.ndarray) -> None:
    """Decode the compressed ``payload`` of codec ``codec`` into ``out``.

    ``out``: writable C-contiguous array of the frame's shape and original dtype, ``out.nbytes`` must equal
    ``uncompressed_size`` (bytes). Raises :class:`CodecError` for an unknown codec, a missing codec package, a
    corrupt stream or a decoded size that differs from ``uncompressed_size``.
    """
    name = str(codec).strip().lower()
    if name not in CODECS:
        raise CodecError(f"codec {codec!r} is not supported; expected one of {', '.join(CODECS)}")
    _check_out(name, out, uncompressed_size)
    buf = _as_bytes_view(payload)
    flat = out.reshape(-1).view(np.uint8)
    try:
        if name == "lz4":
            lz4_block = _need("lz4.block", name)
            data = lz4_block.decompress(buf, uncompressed_size=int(uncompressed_size))
            _copy_exact(name, data, flat)
        elif name == "lz4hdf5":
            _lz4_hdf5(buf, int(uncompressed_size), flat)
        elif name == "bslz4":
            _bslz4(buf, int(uncompressed_size), out)
        elif name == "blosc":
            blosc = _need("blosc", name)
            if len(buf) < 16:
                raise CodecError(f"blosc: {len(buf)} bytes is shorter than a blosc header (16)")
            nbytes, cbytes, _bs = blosc.get_cbuffer_sizes(bytes(buf[:16]))
            if nbytes != out.nbytes:
                raise CodecError(f"blosc: the frame header says {nbytes} bytes, expected {out.nbytes}")
            if cbytes > len(buf):  # the library would read past the buffer
                raise CodecError(f"blosc: the frame header says {cbytes} compressed bytes, got {len(buf)}")
            written = blosc.decompress_ptr(buf, out.ctypes.data)
            if written != out.nbytes:
                raise CodecError(f"blosc: decoded {written} bytes, expected {out.nbytes}")
        else:  # zlib
            data = zlib.decompress(buf, bufsize=max(1, int(uncompressed_size)))
            _copy_exact(name, data, flat)
    except CodecError:
        raise
    except Exception as exc:  # the codec libraries raise their own types (lz4: LZ4BlockError, ValueError, ...)
        raise CodecError(f"{name}: cannot decode {len(buf)} compressed bytes into {out.nbytes} "
                         f"({type(exc).__name__}: {exc})") from None


def _copy_exact(codec: str, data: Any, flat: np.ndarray) -> None:
    src = np.frombuffer(data, dtype=np.uint8)
    if src.size != flat.size:
        raise CodecError(f"{codec}: decoded {src.size} bytes, expected {flat.size}")
    flat[...] = src


def _lz4_hdf5(buf: memoryview, size: int, flat: np.ndarray) -> None:
    """The HDF5 LZ4 filter framing: header, then blocks ``<u4 BE compressed length><LZ4 block>``; a block whose
    compressed length equals its raw length is stored uncompressed."""
    lz4_block = _need("lz4.block", "lz4hdf5")
    if not has_hdf5_header(buf, size):
        raise CodecError(f"lz4hdf5: no 12-byte header announcing {size} bytes")
    block = int.from_bytes(buf[8:12], "big")
    pos, done = HDF5_HEADER_BYTES, 0
    while done < size:
        raw = min(block, size - done)
        if pos + 4 > len(buf):
            raise CodecError(f"lz4hdf5: stream ends after {done} of {size} bytes")
        clen = int.from_bytes(buf[pos:pos + 4], "big")
        pos += 4
        chunk = buf[pos:pos + clen]
        if len(chunk) != clen:
            raise CodecError(f"lz4hdf5: block at byte {pos} needs {clen} bytes, {len(chunk)} left")
        pos += clen
        data = chunk if clen == raw else lz4_block.decompress(chunk, uncompressed_size=raw)
        _copy_exact("lz4hdf5", data, flat[done:done + raw])
        done += raw


def _bslz4_block_elems(itemsize: int) -> int:
    """bitshuffle's default block size in pixels for ``itemsize``-byte pixels (``bshuf_default_block_size``:
    8192 bytes, a multiple of 8 pixels, at least 128)."""
    return max(128, (8192 // itemsize) // 8 * 8)


def _check_bslz4_framing(buf: memoryview, start: int, n: int, itemsize: int, block_elems: int) -> None:
    """Walk the blocks of a bitshuffle-LZ4 stream: each full block of ``block_elems`` pixels, then the last
    partial block (rounded down to 8 pixels), is ``<u4 BE length><LZ4 data>``; the last ``n % 8`` pixels follow raw.
    The bitshuffle library trusts these lengths (it is not told the stream's size), so a truncated or corrupt
    frame would make it read past the buffer: check them all first."""
    sizes = [block_elems] * (n // block_elems)
    tail = (n % block_elems) // 8 * 8
    if tail:
        sizes.append(tail)
    pos, end = start, len(buf)
    for k in range(len(sizes)):
        if pos + 4 > end:
            raise CodecError(f"bslz4: stream ends at block {k} of {len(sizes)} ({end - start} bytes)")
        pos += 4 + int.from_bytes(buf[pos:pos + 4], "big")
        if pos > end:
            raise CodecError(f"bslz4: block {k} of {len(sizes)} runs past the end of the {end - start}-byte stream")
    leftover = (n % 8) * itemsize
    if end - pos != leftover:
        raise CodecError(f"bslz4: {end - pos} bytes after the last block, expected {leftover} "
                         f"(the {n % 8} trailing pixels)")


def _bslz4(buf: memoryview, size: int, out: np.ndarray) -> None:
    """Bitshuffle-LZ4, with or without the 12-byte HDF5-filter header (see the module docstring)."""
    bitshuffle = _need("bitshuffle", "bslz4")
    itemsize = out.dtype.itemsize
    block_elems, start = 0, 0  # 0: bitshuffle's default block size
    if has_hdf5_header(buf, size):
        block_bytes = int.from_bytes(buf[8:12], "big")
        if block_bytes % (8 * itemsize):
            raise CodecError(f"bslz4: header block size {block_bytes} bytes is not a multiple of 8 "
                             f"{itemsize}-byte pixels")
        block_elems, start = block_bytes // itemsize, HDF5_HEADER_BYTES
    _check_bslz4_framing(buf, start, out.size, itemsize, block_elems or _bslz4_block_elems(itemsize))
    arr = np.frombuffer(buf, dtype=np.uint8, offset=start)
    decoded = bitshuffle.decompress_lz4(arr, (out.size,), out.dtype, block_elems)
    out.reshape(-1)[...] = decoded

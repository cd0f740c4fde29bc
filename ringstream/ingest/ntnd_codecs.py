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

The ingest no longer decodes ``lz4``, ``lz4hdf5`` and ``bslz4`` frames from PVA: they travel compressed and the
workers decode them (:mod:`ringstream.images.frame_codecs`, which also holds the framings used here). Decoding uses
the maintained codec packages ``lz4``, ``bitshuffle`` and ``blosc`` (the ``[pva]`` extra); a codec
whose package is missing or that is not listed (``jpeg``) raises :class:`CodecError` naming it. Every size mismatch
raises :class:`CodecError` with what was expected: nothing is ever padded or truncated silently.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..images.frame_codecs import (
    HDF5_HEADER_BYTES,
    CodecError,
    bslz4_into,
    copy_exact,
    has_hdf5_header,
    lz4_hdf5_into,
    need,
)
from ..images.frame_codecs import as_bytes_view as _as_bytes_view

__all__ = ["CODECS", "HDF5_HEADER_BYTES", "CodecError", "decode_into", "has_hdf5_header"]

#: codec names this module decodes
CODECS = ("lz4", "lz4hdf5", "bslz4", "blosc", "zlib")


def _check_out(codec: str, out: np.ndarray, uncompressed_size: int) -> None:
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("decode_into: out must be a writable C-contiguous array")
    if out.nbytes != int(uncompressed_size):
        raise CodecError(f"{codec}: uncompressedSize is {int(uncompressed_size)} bytes but the frame "
                         f"{tuple(out.shape)} {out.dtype} needs {out.nbytes}")


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
            data = need("lz4.block", name).decompress(buf, uncompressed_size=int(uncompressed_size))
            copy_exact(name, data, flat)
        elif name == "lz4hdf5":
            lz4_hdf5_into(buf, int(uncompressed_size), flat)
        elif name == "bslz4":
            bslz4_into(buf, int(uncompressed_size), out)
        elif name == "blosc":
            blosc = need("blosc", name)
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
            copy_exact(name, data, flat)
    except CodecError:
        raise
    except Exception as exc:  # the codec libraries raise their own types (lz4: LZ4BlockError, ValueError, ...)
        raise CodecError(f"{name}: cannot decode {len(buf)} compressed bytes into {out.nbytes} "
                         f"({type(exc).__name__}: {exc})") from None

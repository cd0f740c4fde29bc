"""Bitshuffle-LZ4 and LZ4 frames (HDF5 filters 32008 / 32004, and the NDPluginCodec framings): their layout, and
their decoding on the CPU with the maintained codec libraries (``bitshuffle``, ``lz4``).

Layouts (every integer big-endian):

- the HDF5-filter header (12 bytes, optional for bslz4, present for framed lz4): uint64 decoded size, uint32 block
  size in bytes;
- ``bslz4``: the pixels in blocks of ``block`` bytes (the header's, else bitshuffle's default of 8192 bytes), then
  one last partial block rounded down to 8 pixels; each block bit-shuffled and stored as ``<uint32 length><LZ4
  block>``; the last ``n % 8`` pixels follow raw (bitshuffle leaves them as they are);
- ``lz4`` with the header (filter 32004): blocks of ``block`` raw bytes (the last shorter), each ``<uint32
  length><LZ4 block>``, a block whose length equals its raw size stored raw;
- ``lz4`` without it (NDPluginCodec): one raw LZ4 block holding the whole frame.

:func:`framing_of` reads which of these a compressed frame from a source is (the ingest puts it in the frame's
header, so a worker never guesses); :func:`decode_frame` decodes one into a caller's array. Every problem (an unknown
codec, a missing package, a truncated or corrupt stream, a decoded size that is not the frame's) raises
:class:`CodecError` with one line saying what was expected: nothing is padded or truncated silently, and the
libraries are never handed lengths that would make them read past the buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

#: bytes of the HDF5-filter header: 8-byte big-endian total size, 4-byte big-endian block size
HDF5_HEADER_BYTES = 12

#: bitshuffle's default block (``bshuf_default_block_size``), in bytes
BSHUF_BLOCK_BYTES = 8192


class CodecError(InputError):
    """A compressed frame that cannot be decoded into the expected size (message names codec and sizes)."""


def as_bytes_view(payload: Any) -> memoryview:
    """``payload`` (ndarray of any integer type, bytes, memoryview) as a flat byte view, without copying."""
    if isinstance(payload, np.ndarray):
        return memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
    return memoryview(payload).cast("B")


def has_hdf5_header(payload: Any, uncompressed_size: int) -> bool:
    """True when ``payload`` starts with the 12-byte HDF5-filter header of a frame of ``uncompressed_size`` bytes:
    big-endian uint64 total size equal to it, and a big-endian uint32 block size that is positive."""
    buf = as_bytes_view(payload)
    if len(buf) < HDF5_HEADER_BYTES:
        return False
    total = int.from_bytes(buf[0:8], "big")
    block = int.from_bytes(buf[8:12], "big")
    return total == int(uncompressed_size) and block > 0


def framing_of(codec: str, payload: Any, uncompressed_size: int) -> tuple[str, int, int]:
    """``(codec, codec_header, codec_block)`` of a compressed frame as a source names it (``bslz4``, ``lz4``,
    ``lz4hdf5``), for its FrameHeader: the header is detected (its first 8 bytes equal the decoded size, which a bare
    bitshuffle stream cannot start with: its first 4 bytes are a non-zero block length). CodecError for any other
    codec, or lz4hdf5 without its header."""
    name = str(codec).strip().lower()
    if name not in ("bslz4", "lz4", "lz4hdf5"):
        raise CodecError(f"codec {codec!r} does not travel compressed; expected bslz4, lz4 or lz4hdf5")
    if name == "lz4":
        return "lz4", 0, 0
    if not has_hdf5_header(payload, uncompressed_size):
        if name == "lz4hdf5":
            raise CodecError(f"lz4hdf5: no 12-byte header announcing {int(uncompressed_size)} bytes")
        return "bslz4", 0, 0
    buf = as_bytes_view(payload)
    return ("bslz4" if name == "bslz4" else "lz4"), HDF5_HEADER_BYTES, int.from_bytes(buf[8:12], "big")


def need(module: str, codec: str):
    """The codec package ``module`` (``lz4.block``, ``bitshuffle``, ``blosc``), or CodecError naming the extra."""
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


def copy_exact(codec: str, data: Any, flat: np.ndarray) -> None:
    """``data`` (decoded bytes) into ``flat`` (uint8), which it must fill exactly."""
    src = np.frombuffer(data, dtype=np.uint8)
    if src.size != flat.size:
        raise CodecError(f"{codec}: decoded {src.size} bytes, expected {flat.size}")
    flat[...] = src


def lz4_hdf5_into(buf: memoryview, size: int, flat: np.ndarray, block: int = 0) -> None:
    """The HDF5 LZ4 filter framing (module docstring) into ``flat`` (uint8 ``[size]``); ``block``: the block size
    the frame's header announced (0: take the stream's)."""
    lz4_block = need("lz4.block", "lz4hdf5")
    if not has_hdf5_header(buf, size):
        raise CodecError(f"lz4hdf5: no 12-byte header announcing {size} bytes")
    own = int.from_bytes(buf[8:12], "big")
    if block and own != block:
        raise CodecError(f"lz4: the stream's blocks are {own} bytes, its frame header says {block}")
    pos, done = HDF5_HEADER_BYTES, 0
    while done < size:
        raw = min(own, size - done)
        if pos + 4 > len(buf):
            raise CodecError(f"lz4hdf5: stream ends after {done} of {size} bytes")
        clen = int.from_bytes(buf[pos:pos + 4], "big")
        pos += 4
        chunk = buf[pos:pos + clen]
        if len(chunk) != clen:
            raise CodecError(f"lz4hdf5: block at byte {pos} needs {clen} bytes, {len(chunk)} left")
        pos += clen
        data = chunk if clen == raw else lz4_block.decompress(chunk, uncompressed_size=raw)
        copy_exact("lz4hdf5", data, flat[done:done + raw])
        done += raw
    if pos != len(buf):
        raise CodecError(f"lz4hdf5: {len(buf) - pos} bytes after the last block")


def bslz4_block_elems(itemsize: int) -> int:
    """bitshuffle's default block size in pixels for ``itemsize``-byte pixels (``bshuf_default_block_size``:
    8192 bytes, a multiple of 8 pixels, at least 128)."""
    return max(128, (BSHUF_BLOCK_BYTES // itemsize) // 8 * 8)


def bslz4_block_sizes(n: int, block_elems: int) -> list[int]:
    """The pixels of each LZ4 block of an ``n``-pixel bslz4 frame: full blocks, then the last partial one rounded
    down to 8 pixels (the ``n % 8`` pixels after it are stored raw)."""
    sizes = [block_elems] * (n // block_elems)
    tail = (n % block_elems) // 8 * 8
    if tail:
        sizes.append(tail)
    return sizes


def check_bslz4_framing(buf: memoryview, start: int, n: int, itemsize: int, block_elems: int) -> None:
    """Walk the blocks of a bitshuffle-LZ4 stream (module docstring). The bitshuffle library trusts these lengths
    (it is not told the stream's size), so a truncated or corrupt frame would make it read past the buffer: check
    them all first."""
    sizes = bslz4_block_sizes(n, block_elems)
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


def bslz4_into(buf: memoryview, size: int, out: np.ndarray, header: int | None = None, block: int = 0) -> None:
    """Bitshuffle-LZ4 into ``out``. ``header``: bytes of the HDF5-filter header the stream starts with (None:
    detect it); ``block``: the block size in bytes the frame's header announced (0: the stream's header's, else
    bitshuffle's default)."""
    bitshuffle = need("bitshuffle", "bslz4")
    itemsize = out.dtype.itemsize
    if header is None:
        header = HDF5_HEADER_BYTES if has_hdf5_header(buf, size) else 0
    if header:
        if not has_hdf5_header(buf, size):
            raise CodecError(f"bslz4: no 12-byte header announcing {size} bytes")
        own = int.from_bytes(buf[8:12], "big")
        if block and own != block:
            raise CodecError(f"bslz4: the stream's blocks are {own} bytes, its frame header says {block}")
        block = own
    if block % (8 * itemsize):
        raise CodecError(f"bslz4: block size {block} bytes is not a multiple of 8 {itemsize}-byte pixels")
    block_elems = block // itemsize  # 0: bitshuffle's default
    check_bslz4_framing(buf, header, out.size, itemsize, block_elems or bslz4_block_elems(itemsize))
    arr = np.frombuffer(buf, dtype=np.uint8, offset=header)
    decoded = bitshuffle.decompress_lz4(arr, (out.size,), out.dtype, block_elems)
    out.reshape(-1)[...] = decoded


def decode_frame(codec: str, payload: Any, out: np.ndarray, header: int = 0, block: int = 0) -> None:
    """Decode a frame that travelled compressed (``codec`` ``bslz4`` or ``lz4``, ``header`` and ``block`` as its
    FrameHeader's ``codec_header`` / ``codec_block``) into ``out``: a writable C-contiguous array of the frame's
    shape and dtype. Raises :class:`CodecError` for anything wrong with the bytes."""
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("decode_frame: out must be a writable C-contiguous array")
    buf = as_bytes_view(payload)
    flat = out.reshape(-1).view(np.uint8)
    try:
        if codec == "bslz4":
            bslz4_into(buf, out.nbytes, out, header, block)
        elif codec == "lz4" and header:
            lz4_hdf5_into(buf, out.nbytes, flat, block)
        elif codec == "lz4":
            data = need("lz4.block", codec).decompress(buf, uncompressed_size=out.nbytes)
            copy_exact(codec, data, flat)
        else:
            raise CodecError(f"codec {codec!r}: expected bslz4 or lz4")
    except CodecError:
        raise
    except Exception as exc:  # the codec libraries raise their own types (lz4: LZ4BlockError, ValueError, ...)
        raise CodecError(f"{codec}: cannot decode {len(buf)} compressed bytes into {out.nbytes} "
                         f"({type(exc).__name__}: {exc})") from None


def encode_frame(frame: np.ndarray, codec: str, header: bool = True, block: int = 0) -> tuple[np.ndarray, int, int]:
    """``frame`` compressed as a detector would send it, for replay and tests: ``(bytes uint8 [n], codec_header,
    codec_block)``. ``codec`` ``bslz4`` (``header``: the HDF5-filter header first, as EIGER files and Stream V2
    have it; ``block`` bytes a block, 0 = bitshuffle's default) or ``lz4`` (``header``: the filter-32004 framing with
    ``block`` bytes a block, default 1 MiB; else one raw LZ4 block, as NDPluginCodec sends it)."""
    arr = np.ascontiguousarray(frame)
    raw = arr.reshape(-1).view(np.uint8)
    if codec == "bslz4":
        bitshuffle = need("bitshuffle", codec)
        if block % (8 * arr.itemsize):
            raise ValueError(f"bslz4: block {block} bytes is not a multiple of 8 {arr.itemsize}-byte pixels")
        body = bitshuffle.compress_lz4(arr.reshape(-1), block // arr.itemsize).view(np.uint8)
        if not header:
            return body, 0, block
        block = block or bslz4_block_elems(arr.itemsize) * arr.itemsize
        head = np.frombuffer(raw.size.to_bytes(8, "big") + block.to_bytes(4, "big"), np.uint8)
        return np.concatenate([head, body]), HDF5_HEADER_BYTES, block
    if codec != "lz4":
        raise ValueError(f"codec {codec!r}: expected bslz4 or lz4")
    lz4_block = need("lz4.block", codec)
    if not header:
        return np.frombuffer(lz4_block.compress(raw.tobytes(), store_size=False), np.uint8), 0, 0
    block = block or (1 << 20)
    parts = [raw.size.to_bytes(8, "big") + block.to_bytes(4, "big")]
    for start in range(0, raw.size, block):
        chunk = raw[start:start + block].tobytes()
        packed = lz4_block.compress(chunk, store_size=False)
        if len(packed) >= len(chunk):  # stored raw, as the filter does
            packed = chunk
        parts += [len(packed).to_bytes(4, "big"), packed]
    return np.frombuffer(b"".join(parts), np.uint8), HDF5_HEADER_BYTES, block

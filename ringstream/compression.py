"""The compressed chunks of the stored cakes and omega sums, byte for byte as the files store them: what the writer
writes with direct chunk writes, and what a worker makes of a whole omega-sum group so that the sum travels once,
compressed, and the writer only places it (docs/OUTPUTS.md, "Compression").

- HDF5 (:func:`hdf5_chunk`): filter 32008, bitshuffle + LZ4 (what EIGER files use): a 12-byte header (uncompressed
  size uint64, block size uint32, big-endian), then the bitshuffle library's LZ4 blocks.
- zarr.zip (:func:`zarr_encode`): numcodecs Blosc, LZ4 with bit shuffle (:func:`zarr_compressor`, the codec each
  array's ``.zarray`` names): a 16-byte Blosc header (its bytes 4..8: the uncompressed size, uint32 little-endian),
  then Blosc's blocks.

The two are not the same bytes, but the LZ4 blocks can be: :func:`zarr_from_hdf5` makes the zarr chunk of a value
out of its HDF5 chunk without compressing again (:func:`zarr_pieces`: the same as pieces, views of the HDF5 chunk's
blocks, for a writer that never joins them). Both formats bit-shuffle each block of 8 kB on its own with the
same transposition (the bitshuffle library's, which c-blosc carries) and compress it with LZ4; only the framing
differs (a big-endian length before each block here; a Blosc header, a table of block offsets and little-endian
lengths there). So the HDF5 chunk's LZ4 blocks are placed, unchanged, in a Blosc frame that declares 8 kB blocks,
bit shuffle, LZ4 and no split streams (the header's "don't split" flag, which c-blosc reads since 1.16 and which
numcodecs' Blosc therefore decodes; zarr 2.18 and zarr 3 read through it). Values that do not divide into such
blocks exactly (a last block of a number of elements that is not a multiple of 8, whose shuffle Blosc versions
treat differently, or a block whose LZ4 length equals its raw length, which Blosc reads as stored raw) are
compressed by :func:`zarr_encode` instead. :func:`decoded_size` reads either header, so that a receiver can check a
chunk's size without decompressing it. Used by the workers and the writer; imports neither.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

import numpy as np

__all__ = ["BLOSC_LEVEL", "CODECS", "decode_hdf5_chunk", "decoded_size", "hdf5_chunk", "zarr_compressor",
           "zarr_encode", "zarr_from_hdf5", "zarr_pieces", "blocks_carry_over"]

#: Blosc's compression level of the zarr.zip arrays (LZ4 gains little above 5, and costs time)
BLOSC_LEVEL = 5

#: the chunk formats, by the name a message gives them: ``hdf5`` (filter 32008 with its header), ``zarr`` (Blosc)
CODECS = ("hdf5", "zarr")

#: the bitshuffle filter's block: 8 kB of elements (``bshuf_default_block_size``), recorded in each chunk's header
_BSHUF_BLOCK_BYTES = 8192
_HDF5_HEADER = struct.Struct(">QI")
_BLOSC_HEADER = 16

_THREAD = threading.local()
_CODEC = threading.local()


def zarr_compressor() -> Any:
    """The numcodecs Blosc codec of the zarr.zip arrays (LZ4, bit shuffle): written in each array's ``.zarray``;
    ``encode`` of a C-contiguous array gives the chunk's bytes as zarr writes them."""
    import numcodecs

    return numcodecs.Blosc(cname="lz4", clevel=BLOSC_LEVEL, shuffle=numcodecs.Blosc.BITSHUFFLE)


def zarr_encode(a: np.ndarray) -> bytes:
    """The zarr.zip chunk of ``a`` (C-contiguous): :func:`zarr_compressor`'s ``encode`` (one codec per thread)."""
    codec = getattr(_CODEC, "codec", None)
    if codec is None:
        codec = _CODEC.codec = zarr_compressor()
    return codec.encode(np.ascontiguousarray(a))


def hdf5_chunk(a: np.ndarray) -> bytes:
    """The bytes HDF5's bitshuffle + LZ4 filter (32008, with the writer's ``create_dataset`` settings) stores for
    the chunk ``a`` (C-contiguous, little-endian): the uncompressed size (8 bytes) and block size (4 bytes),
    big-endian, then the bitshuffle library's LZ4 blocks. For a direct chunk write."""
    import bitshuffle

    _openmp_alone()
    a = np.ascontiguousarray(a)
    return _HDF5_HEADER.pack(a.nbytes, _BSHUF_BLOCK_BYTES) + bitshuffle.compress_lz4(a).tobytes()


#: Blosc's header: format version 2, LZ4 format version 1, flags, typesize; then nbytes, blocksize, cbytes (LE)
_BLOSC_FRAME = struct.Struct("<BBBBIII")
#: the flags of a transcoded chunk: bit shuffle (0x4), no split streams (0x10), LZ4 (codec 1 in bits 5-7)
_BLOSC_FLAGS = 0x04 | 0x10 | (1 << 5)
_BE32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


def blocks_carry_over(n_values: int) -> bool:
    """Whether :func:`zarr_from_hdf5` places the blocks of a value of ``n_values`` elements as they are (a multiple
    of 8 elements: every block, the last one too, is shuffled alike by both formats), so that a worker sends the
    HDF5 chunk alone."""
    return int(n_values) > 0 and int(n_values) % 8 == 0


def zarr_pieces(chunk: Any, itemsize: int) -> list[Any] | None:
    """The zarr.zip chunk (Blosc: LZ4, bit shuffle) of the value whose :func:`hdf5_chunk` is ``chunk`` (elements of
    ``itemsize`` bytes), made from its LZ4 blocks without compressing again (see the module docstring), as the
    pieces that follow one another in it: Blosc's header and table of block starts, then for each block its length
    (4 bytes, little-endian) and a view of its LZ4 bytes in ``chunk`` (no copy: a writer hands them to one
    ``pwritev``, :class:`~ringstream.writer.zip_append.GrowingZip`). None where the blocks cannot be carried over as
    they are (then :func:`zarr_encode` the value). ValueError for a chunk whose framing is broken."""
    view = memoryview(chunk).cast("B")
    if len(view) < _HDF5_HEADER.size:
        raise ValueError(f"an HDF5 chunk of {len(view)} bytes has no header")
    total, block = _HDF5_HEADER.unpack_from(view)
    if block != _BSHUF_BLOCK_BYTES or itemsize < 1 or block % itemsize or total % itemsize or not 0 < total < 2**31 - 64:
        return None
    n = total // itemsize
    if not blocks_carry_over(n):  # elements past the last multiple of 8: stored raw by bitshuffle, shuffled by Blosc
        return None
    per_block = block // itemsize
    last = n % per_block  # elements of bitshuffle's last, shorter block (a multiple of 8, as the blocks are)
    n_blocks = n // per_block + (last > 0)
    end = len(view)
    head = _BLOSC_FRAME.size + 4 * n_blocks
    pieces: list[Any] = [None]
    starts = []
    pos = _HDF5_HEADER.size
    unpack, le32 = _BE32.unpack_from, _LE32.pack
    full = n // per_block
    for k in range(n_blocks):
        if pos + 4 > end:
            raise ValueError(f"HDF5 chunk of {end} bytes: block {k} of {n_blocks} is cut off")
        size = unpack(view, pos)[0]
        if size == (block if k < full else last * itemsize):  # Blosc would read it as stored raw
            return None
        starts.append(pos - _HDF5_HEADER.size + head)
        pieces += (le32(size), view[pos + 4:pos + 4 + size])
        pos += 4 + size
    if pos != end:
        raise ValueError(f"HDF5 chunk of {end} bytes: its {n_blocks} blocks end at byte {pos}")
    # (a value of one short block declares it whole: Blosc refuses a block larger than the value)
    pieces[0] = _BLOSC_FRAME.pack(2, 1, _BLOSC_FLAGS, itemsize, total, min(block, total),
                                  head + end - _HDF5_HEADER.size) + struct.pack(f"<{n_blocks}i", *starts)
    return pieces


def zarr_from_hdf5(chunk: Any, itemsize: int) -> bytes | None:
    """:func:`zarr_pieces` joined: the zarr.zip chunk as one bytes object (None where the blocks do not carry
    over)."""
    pieces = zarr_pieces(chunk, itemsize)
    return None if pieces is None else b"".join(pieces)


def decode_hdf5_chunk(chunk: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array an :func:`hdf5_chunk` holds (``shape``, ``dtype``); ValueError if its size is not theirs."""
    import bitshuffle

    _openmp_alone()
    dtype = np.dtype(dtype)
    want = int(np.prod(shape)) * dtype.itemsize
    if decoded_size("hdf5", chunk) != want:
        raise ValueError(f"an HDF5 chunk of {decoded_size('hdf5', chunk)} bytes for {shape} {dtype}")
    raw = np.frombuffer(chunk, dtype=np.uint8)[_HDF5_HEADER.size:]
    return bitshuffle.decompress_lz4(raw, tuple(shape), dtype, _BSHUF_BLOCK_BYTES // dtype.itemsize)


def decoded_size(codec: str, chunk: Any) -> int:
    """The uncompressed bytes a chunk of ``codec`` (:data:`CODECS`) says it holds, from its header; -1 when it is too
    short to have one."""
    view = memoryview(chunk).cast("B")
    if codec == "hdf5":
        return _HDF5_HEADER.unpack_from(view)[0] if len(view) >= _HDF5_HEADER.size else -1
    if codec == "zarr":
        return struct.unpack_from("<I", view, 4)[0] if len(view) >= _BLOSC_HEADER else -1
    raise ValueError(f"chunk codec {codec!r}: expected one of {', '.join(CODECS)}")


def _openmp_alone() -> None:
    """:func:`_one_openmp_thread`, once per thread (before its first bitshuffle call, which would otherwise start a
    team of OpenMP threads: in a process forked after that, the first call hangs)."""
    if not getattr(_THREAD, "one_openmp_thread", False):
        _one_openmp_thread()
        _THREAD.one_openmp_thread = True


def _one_openmp_thread() -> None:
    """The calling thread runs bitshuffle's OpenMP loops on itself alone (:func:`hdf5_chunk` calls it once per
    thread): a pool of threads or of processes is the parallelism (a team of OpenMP threads per thread would
    oversubscribe the CPUs), and a process with no OpenMP team threads can fork safely (libgomp's are lost in a forked
    child, which then hangs in its first parallel loop)."""
    import ctypes
    import ctypes.util
    import glob

    import bitshuffle

    here = os.path.dirname(bitshuffle.__file__)
    for lib in [*glob.glob(os.path.join(here, "..", "bitshuffle.libs", "libgomp*.so*")), ctypes.util.find_library("gomp")]:
        if lib:
            try:
                ctypes.CDLL(lib).omp_set_num_threads(1)
            except (OSError, AttributeError):
                continue

"""The compressed chunks of the stored cakes and omega sums, byte for byte as the files store them: what the writer
writes with direct chunk writes, and what a worker makes of a whole omega-sum group so that the sum travels once,
compressed, and the writer only places it (docs/OUTPUTS.md, "Compression").

- HDF5 (:func:`hdf5_chunk`): filter 32008, bitshuffle + LZ4 (what EIGER files use): a 12-byte header (uncompressed
  size uint64, block size uint32, big-endian), then the bitshuffle library's LZ4 blocks.
- zarr.zip (:func:`zarr_encode`): numcodecs Blosc, LZ4 with bit shuffle (:func:`zarr_compressor`, the codec each
  array's ``.zarray`` names): a 16-byte Blosc header (its bytes 4..8: the uncompressed size, uint32 little-endian),
  then Blosc's blocks.

The two are not the same bytes, but the LZ4 blocks can be: :func:`zarr_from_hdf5` makes the zarr chunk of a value
out of its HDF5 chunk without compressing again (:func:`zarr_of_hdf5`: the same, written straight where it goes, as
a writer gathers it). Both formats bit-shuffle each block of 8 kB on its own with the
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

__all__ = ["BLOCK_BYTES", "BLOSC_LEVEL", "CODECS", "decode_hdf5_chunk", "decoded_size", "hdf5_chunk", "zarr_compressor",
           "zarr_encode", "zarr_from_hdf5", "zarr_of_hdf5", "ZarrOfHdf5", "block_starts", "blocks_carry_over"]

#: Blosc's compression level of the zarr.zip arrays (LZ4 gains little above 5, and costs time)
BLOSC_LEVEL = 5

#: the chunk formats, by the name a message gives them: ``hdf5`` (filter 32008 with its header), ``zarr`` (Blosc)
CODECS = ("hdf5", "zarr")

#: the bitshuffle filter's block: 8 kB of elements (``bshuf_default_block_size``), recorded in each chunk's header
BLOCK_BYTES = 8192
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
    return _HDF5_HEADER.pack(a.nbytes, BLOCK_BYTES) + bitshuffle.compress_lz4(a).tobytes()


#: Blosc's header: format version 2, LZ4 format version 1, flags, typesize; then nbytes, blocksize, cbytes (LE)
_BLOSC_FRAME = struct.Struct("<BBBBIII")
#: the flags of a transcoded chunk: bit shuffle (0x4), no split streams (0x10), LZ4 (codec 1 in bits 5-7)
_BLOSC_FLAGS = 0x04 | 0x10 | (1 << 5)
_BE32 = struct.Struct(">I")


def blocks_carry_over(n_values: int) -> bool:
    """Whether :func:`zarr_from_hdf5` places the blocks of a value of ``n_values`` elements as they are (a multiple
    of 8 elements: every block, the last one too, is shuffled alike by both formats), so that a worker sends the
    HDF5 chunk alone."""
    return int(n_values) > 0 and int(n_values) % 8 == 0


class ZarrOfHdf5:
    """The zarr.zip chunk (Blosc: LZ4, bit shuffle) of the value whose :func:`hdf5_chunk` is ``chunk``, made from
    its LZ4 blocks without compressing again (see the module docstring; :func:`zarr_of_hdf5` makes it). ``nbytes``:
    its size; :meth:`into` writes it into a buffer: Blosc's header and table of block starts, then the HDF5 chunk's
    bytes after its header in one copy, each block's length then made little-endian in place (a few NumPy calls,
    whatever the number of blocks: a writer thread gathering chunks holds Python's lock that little)."""

    __slots__ = ("_body", "_head", "_at", "_lengths", "nbytes")

    def __init__(self, body: memoryview, head: bytes, at: np.ndarray, lengths: np.ndarray) -> None:
        self._body, self._head, self._at, self._lengths = body, head, at, lengths
        self.nbytes = len(head) + len(body)

    def __len__(self) -> int:
        return self.nbytes

    def into(self, out: Any) -> None:
        """Write the chunk into ``out[:nbytes]`` (a writable buffer of at least ``nbytes`` bytes)."""
        m = memoryview(out).cast("B")
        h = len(self._head)
        m[:h] = self._head
        m[h:self.nbytes] = self._body
        np.frombuffer(m, np.uint8, self.nbytes)[self._at] = self._lengths

    def tobytes(self) -> bytes:
        buf = bytearray(self.nbytes)
        self.into(buf)
        return bytes(buf)


def block_starts(chunk: Any) -> np.ndarray:
    """Where each LZ4 block of an :func:`hdf5_chunk` starts (its 4-byte length), int32 offsets in the chunk: what a
    worker sends with a sum's HDF5 chunk so that the writer makes the zarr chunk of it without walking the blocks
    (:func:`zarr_of_hdf5`). ValueError for a chunk whose framing is broken."""
    view = memoryview(chunk).cast("B")
    if len(view) < _HDF5_HEADER.size:
        raise ValueError(f"an HDF5 chunk of {len(view)} bytes has no header")
    total, block = _HDF5_HEADER.unpack_from(view)
    n_blocks = -(-total // block) if block else 0
    end = len(view)
    starts = []
    pos = _HDF5_HEADER.size
    unpack, append = _BE32.unpack_from, starts.append
    for k in range(n_blocks):  # (each block's place follows from the last one's length)
        if pos + 4 > end:
            raise ValueError(f"HDF5 chunk of {end} bytes: block {k} of {n_blocks} is cut off")
        append(pos)
        pos += 4 + unpack(view, pos)[0]
    if pos != end:
        raise ValueError(f"HDF5 chunk of {end} bytes: its {n_blocks} blocks end at byte {pos}")
    return np.array(starts, dtype="<i4")


def zarr_of_hdf5(chunk: Any, itemsize: int, starts: Any = None) -> ZarrOfHdf5 | None:
    """The zarr.zip chunk of the value whose :func:`hdf5_chunk` is ``chunk`` (elements of ``itemsize`` bytes), to be
    written where it goes (:class:`ZarrOfHdf5`; it views ``chunk``). ``starts``: the chunk's :func:`block_starts`
    (int32 little-endian, any buffer), checked against the chunk in a few NumPy calls, else found here (a Python
    loop over the blocks). None where the blocks cannot be carried over as they are (then :func:`zarr_encode` the
    value). ValueError for a chunk whose framing is broken, or starts that are not its blocks'."""
    view = memoryview(chunk).cast("B")
    if len(view) < _HDF5_HEADER.size:
        raise ValueError(f"an HDF5 chunk of {len(view)} bytes has no header")
    total, block = _HDF5_HEADER.unpack_from(view)
    if block != BLOCK_BYTES or itemsize < 1 or block % itemsize or total % itemsize or not 0 < total < 2**31 - 64:
        return None
    n = total // itemsize
    if not blocks_carry_over(n):  # elements past the last multiple of 8: stored raw by bitshuffle, shuffled by Blosc
        return None
    per_block = block // itemsize
    last = n % per_block  # elements of bitshuffle's last, shorter block (a multiple of 8, as the blocks are)
    n_blocks = n // per_block + (last > 0)
    end = len(view)
    if starts is None:
        at = block_starts(view).astype(np.int64)
    else:
        at = np.frombuffer(starts, "<i4").astype(np.int64)
        if at.size != n_blocks or at[0] != _HDF5_HEADER.size or at.max() + 4 > end:
            raise ValueError(f"HDF5 chunk of {end} bytes: {at.size} block starts given for its {n_blocks} blocks, "
                             f"not all in it")
    lengths = np.frombuffer(view, np.uint8)[(at[:, None] + _BYTES4).ravel()].view(">u4")
    if starts is not None:  # each block ends where the next one starts, the last one at the chunk's end
        ends = at + 4 + lengths
        if (ends[:-1] != at[1:]).any() or ends[-1] != end:
            raise ValueError(f"HDF5 chunk of {end} bytes: the block starts given are not its blocks'")
    raw = np.full(n_blocks, block, dtype=np.int64)
    if last:
        raw[-1] = last * itemsize
    if (lengths == raw).any():  # Blosc would read such a block as stored raw
        return None
    head = _BLOSC_FRAME.size + 4 * n_blocks
    at += head - _HDF5_HEADER.size  # where each length goes in the zarr chunk (its block's start)
    # (a value of one short block declares it whole: Blosc refuses a block larger than the value)
    header = _BLOSC_FRAME.pack(2, 1, _BLOSC_FLAGS, itemsize, total, min(block, total), head + end - _HDF5_HEADER.size)
    return ZarrOfHdf5(view[_HDF5_HEADER.size:], header + at.astype("<i4").tobytes(), (at[:, None] + _BYTES4).ravel(),
                      lengths.astype("<u4").view(np.uint8))


#: the 4 bytes of a block's length
_BYTES4 = np.arange(4, dtype=np.int64)


def zarr_from_hdf5(chunk: Any, itemsize: int) -> bytes | None:
    """:func:`zarr_of_hdf5` as one bytes object (None where the blocks do not carry over)."""
    z = zarr_of_hdf5(chunk, itemsize)
    return None if z is None else z.tobytes()


def decode_hdf5_chunk(chunk: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array an :func:`hdf5_chunk` holds (``shape``, ``dtype``); ValueError if its size is not theirs."""
    import bitshuffle

    _openmp_alone()
    dtype = np.dtype(dtype)
    want = int(np.prod(shape)) * dtype.itemsize
    if decoded_size("hdf5", chunk) != want:
        raise ValueError(f"an HDF5 chunk of {decoded_size('hdf5', chunk)} bytes for {shape} {dtype}")
    raw = np.frombuffer(chunk, dtype=np.uint8)[_HDF5_HEADER.size:]
    return bitshuffle.decompress_lz4(raw, tuple(shape), dtype, BLOCK_BYTES // dtype.itemsize)


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

"""The compressed chunks of the stored cakes and omega sums, byte for byte as the files store them: what the writer
writes with direct chunk writes, and what a worker makes of a whole omega-sum group so that the sum travels once,
compressed, and the writer only places it (docs/OUTPUTS.md, "Compression").

- HDF5 (:func:`hdf5_chunk`): filter 32008, bitshuffle + LZ4 (what EIGER files use): a 12-byte header (uncompressed
  size uint64, block size uint32, big-endian), then the bitshuffle library's LZ4 blocks.
- zarr.zip (:func:`zarr_encode`): numcodecs Blosc, LZ4 with bit shuffle (:func:`zarr_compressor`, the codec each
  array's ``.zarray`` names): a 16-byte Blosc header (its bytes 4..8: the uncompressed size, uint32 little-endian),
  then Blosc's blocks.

The two are not the same bytes (Blosc shuffles and frames its blocks its own way), so a chunk stored in both files is
compressed twice. :func:`decoded_size` reads either header, so that a receiver can check a chunk's size without
decompressing it. Used by the workers and the writer; imports neither.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

import numpy as np

__all__ = ["BLOSC_LEVEL", "CODECS", "decode_hdf5_chunk", "decoded_size", "hdf5_chunk", "zarr_compressor",
           "zarr_encode"]

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

    if not getattr(_THREAD, "one_openmp_thread", False):
        _one_openmp_thread()
        _THREAD.one_openmp_thread = True
    a = np.ascontiguousarray(a)
    return _HDF5_HEADER.pack(a.nbytes, _BSHUF_BLOCK_BYTES) + bitshuffle.compress_lz4(a).tobytes()


def decode_hdf5_chunk(chunk: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array an :func:`hdf5_chunk` holds (``shape``, ``dtype``); ValueError if its size is not theirs."""
    import bitshuffle

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

"""How cakes, omega sums and geometry planes are stored: their dtype and their compression (docs/OUTPUTS.md,
"Compression").

- dtype: ``[output] cake_dtype`` (:data:`CAKE_DTYPES`), float32 by default. The per-frame cakes and the omega sums
  are stored in it; the sums are accumulated in float64 and rounded once, when written (:func:`stored`: exactly
  ``np.float32(sum64)``), so the float32 mode stores the correctly rounded float64 sums and the float64 mode the
  float64 sums bit for bit.
- HDF5: bitshuffle + LZ4 (the filter EIGER files use; hdf5plugin registers it in the process: ``import hdf5plugin``
  before h5py opens a compressed dataset; importing this module does it for ringstream's own readers).
- zarr.zip (zarr format 2): numcodecs Blosc, LZ4 with bit shuffle (:func:`zarr_compressor`), which zarr 2.18 with
  numcodecs (GSAS-II's importer) and zarr 3 both read.
- precision: ``[output] cake_noise_fraction`` f > 0 rounds each stored value to a power of two no coarser than
  ``2 f`` times its bin's counting noise (:mod:`~ringstream.writer.precision`), so that the compression removes
  the bits below the noise; :func:`precision_note` is what the files say about it.
- Who compresses: a cake or sum row is one chunk in each file; :class:`Chunks` compresses it for both in a small
  pool of threads (:func:`encode_pool`; the compressors release the GIL), while the writer's own thread goes on
  receiving. The HDF5 chunk is made here (:func:`hdf5_chunk`: the bitshuffle library's LZ4 blocks behind the
  12-byte header of HDF5 filter 32008, byte for byte what the filter writes) and written with a direct chunk write,
  so HDF5's filter pipeline does not run in the writer's thread.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import hdf5plugin  # noqa: F401 - registers the bitshuffle filter with HDF5 for every h5py open in this process
import numpy as np

from ..config.schema import CAKE_DTYPES  # the stored dtypes of cakes and omega sums, the default first
from .precision import MIN_COUNTS, SAFETY

__all__ = ["BLOSC_LEVEL", "CAKE_DTYPES", "Chunks", "cake_dtype", "encode_pool", "hdf5_chunk", "hdf5_compression",
           "precision_note", "stored", "zarr_compressor"]

#: Blosc's compression level of the zarr.zip arrays (LZ4 gains little above 5, and costs time)
BLOSC_LEVEL = 5


def cake_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a ``cake_dtype`` name; ValueError for a name not in :data:`CAKE_DTYPES`."""
    if str(name) not in CAKE_DTYPES:
        raise ValueError(f"cake dtype {name!r}: expected one of {', '.join(CAKE_DTYPES)}")
    return np.dtype("<f4" if str(name) == "float32" else "<f8")


def stored(a: Any, dtype: np.dtype, rounding: Callable[[Any, np.dtype], np.ndarray] | None = None) -> np.ndarray:
    """``a`` as it is stored: C-contiguous ``dtype``, rounded once from whatever precision it has (float64 sums
    to float32 round to nearest, as ``np.float32(x)``); no copy when it already is. With ``rounding`` (the
    precision-bounded mode, :class:`~ringstream.writer.precision.NoiseRounding`), ``rounding(a, dtype)``: a new
    array, rounded to a fraction of each bin's counting noise (call it once per value: it is not idempotent)."""
    if rounding is not None:
        return rounding(a, dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def precision_note(fraction: float) -> str:
    """The ``precision`` attribute of the stored cakes and omega sums: how far a stored value may be from the
    float64 value it stores (docs/OUTPUTS.md, "Precision-bounded cakes")."""
    if not fraction:
        return "lossless: each value is the float64 value rounded to nearest in the stored dtype"
    return (f"precision-bounded (cake_noise_fraction {float(fraction):g}): each value x is rounded to a multiple of "
            f"a power of two q <= 2 f sigma, so |stored - x| <= max(f sigma, ulp(x)/2); sigma = sqrt(s g x) is the "
            f"bin's Poisson counting noise (g: /entry/reduction/cake_noise_model, s = {SAFETY:g} a safety factor; "
            f"values below x_min (fewer than {MIN_COUNTS:g} counts a pixel) and empty bins are stored losslessly; "
            f"docs/OUTPUTS.md)")


def hdf5_compression() -> dict[str, Any]:
    """The ``create_dataset`` keywords of bitshuffle + LZ4 (HDF5 filter 32008)."""
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


def zarr_compressor() -> Any:
    """The numcodecs Blosc codec of the zarr.zip arrays (LZ4, bit shuffle): written in each array's ``.zarray``;
    ``encode`` of a C-contiguous array gives the chunk's bytes as zarr writes them."""
    import numcodecs

    return numcodecs.Blosc(cname="lz4", clevel=BLOSC_LEVEL, shuffle=numcodecs.Blosc.BITSHUFFLE)


#: the bitshuffle filter's block: 8 kB of elements (``bshuf_default_block_size``), recorded in each chunk's header
_BSHUF_BLOCK_BYTES = 8192


def hdf5_chunk(a: np.ndarray) -> bytes:
    """The bytes HDF5's bitshuffle + LZ4 filter (32008, as :func:`hdf5_compression` configures it) stores for the
    chunk ``a`` (C-contiguous, little-endian): the uncompressed size (8 bytes) and block size (4 bytes), big-endian,
    then the bitshuffle library's LZ4 blocks. For a direct chunk write."""
    import bitshuffle

    if not getattr(_THREAD, "one_openmp_thread", False):
        _one_openmp_thread()
        _THREAD.one_openmp_thread = True
    a = np.ascontiguousarray(a)
    return struct.pack(">QI", a.nbytes, _BSHUF_BLOCK_BYTES) + bitshuffle.compress_lz4(a).tobytes()


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: compression threads of a writer process (each cake or sum is compressed for the HDF5 and the zarr.zip)
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))


_THREAD = threading.local()


def _one_openmp_thread() -> None:
    """The calling thread runs bitshuffle's OpenMP loops on itself alone (:func:`hdf5_chunk` calls it once per
    thread): the pool is the parallelism (a team of OpenMP threads per pool thread would oversubscribe the CPUs),
    and a process with no OpenMP team threads can fork safely (libgomp's are lost in a forked child, which then hangs
    in its first parallel loop)."""
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


def _forget_pool() -> None:
    """In a forked child: the parent's threads are not there; the child starts its own on first use."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def encode_pool() -> ThreadPoolExecutor:
    """The process's compression threads (:data:`ENCODE_THREADS`), started on first use (again in a forked
    child)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="ringstream-compress")
        return _POOL


class Chunks:
    """One stored row (a cake or an omega sum, already in its stored dtype) and its compressed chunks, made in
    :func:`encode_pool`: :meth:`hdf5` the HDF5 chunk (:func:`hdf5_chunk`), :meth:`zarr` the zarr.zip chunk
    (:func:`zarr_compressor`; only when ``zarr``). Each call waits for its chunk and raises what compressing it
    raised."""

    __slots__ = ("array", "_h5", "_zarr")

    def __init__(self, array: np.ndarray, zarr: bool = False) -> None:
        self.array = array
        pool = encode_pool()
        self._h5: Future = pool.submit(hdf5_chunk, array)
        self._zarr: Future | None = pool.submit(_zarr_encode, array) if zarr else None

    def hdf5(self) -> bytes:
        return self._h5.result()

    def zarr(self) -> bytes:
        if self._zarr is None:
            self._zarr = encode_pool().submit(_zarr_encode, self.array)
        return self._zarr.result()


_CODEC: Any = None


def _zarr_encode(a: np.ndarray) -> bytes:
    global _CODEC
    if _CODEC is None:
        _CODEC = zarr_compressor()
    return _CODEC.encode(np.ascontiguousarray(a))

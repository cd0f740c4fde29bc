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
- Who compresses: a cake or sum row is one chunk in each file, made by :mod:`ringstream.compression`
  (:func:`hdf5_chunk`: the bitshuffle library's LZ4 blocks behind the 12-byte header of HDF5 filter 32008, byte for
  byte what the filter writes) and written with a direct chunk write, so HDF5's filter pipeline does not run in the
  writer's thread. A row is compressed once: its zarr.zip chunk is made of the HDF5 chunk's LZ4 blocks in a Blosc
  frame (:func:`zarr_from_hdf5`; :func:`zarr_encode` only for the rows whose blocks do not carry over). A worker
  compresses the whole omega sums it sends (``OmegaSumFrames`` groups it summed alone, so one per frame with
  ``OmegaSumFrames 1``), their HDF5 chunk only: :meth:`Chunks.made` takes it as it came and makes the zarr chunk
  from it. The writer compresses the rest (per-frame cakes, sums it added up, precision-bounded ones):
  :class:`Chunks` compresses a row in a small pool of threads (:func:`encode_pool`; the compressors release the
  GIL), while the writer's own thread goes on receiving.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import hdf5plugin  # noqa: F401 - registers the bitshuffle filter with HDF5 for every h5py open in this process
import numpy as np

from ..compression import (
    BLOSC_LEVEL,
    ZarrOfHdf5,
    decode_hdf5_chunk,
    hdf5_chunk,
    zarr_compressor,
    zarr_encode,
    zarr_from_hdf5,
    zarr_of_hdf5,
)
from ..config.schema import CAKE_DTYPES  # the stored dtypes of cakes and omega sums, the default first
from .precision import MIN_COUNTS, SAFETY

__all__ = ["BLOSC_LEVEL", "CAKE_DTYPES", "Chunks", "cake_dtype", "encode_pool", "hdf5_chunk", "hdf5_compression",
           "precision_note", "stored", "stored_row_chunks", "zarr_compressor", "zarr_encode", "CakeChunks"]


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


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: compression threads of a writer process (each cake or sum is compressed for the HDF5 and the zarr.zip)
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))


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


def _both_chunks(array: np.ndarray, zarr: bool) -> tuple[bytes, bytes | memoryview | None]:
    """The HDF5 chunk of ``array`` and, with ``zarr``, its zarr chunk made from it (:func:`zarr_from_hdf5`), else
    compressed again."""
    h5 = hdf5_chunk(array)
    if not zarr:
        return h5, None
    z = zarr_from_hdf5(h5, array.dtype.itemsize)
    return h5, zarr_encode(array) if z is None else z


class Chunks:
    """One stored row (a cake or an omega sum, already in its stored dtype) and its compressed chunks: :meth:`hdf5`
    the HDF5 chunk (:func:`hdf5_chunk`), :meth:`zarr` the zarr.zip chunk (made from the HDF5 chunk's LZ4 blocks,
    :func:`zarr_from_hdf5`, where they carry over, else :func:`zarr_encode`; made only when ``zarr`` or asked for).
    Compressed once in :func:`encode_pool` from ``array``, or taken as a worker made them (:meth:`made`). Each call
    waits for its chunk and raises what compressing it raised."""

    __slots__ = ("_array", "_h5", "_zarr", "_starts", "shape", "dtype")

    def __init__(self, array: np.ndarray, zarr: bool = False) -> None:
        self._array = array
        self.shape, self.dtype = array.shape, array.dtype
        both = encode_pool().submit(_both_chunks, array, zarr)
        self._h5: Future | bytes | memoryview = both
        self._zarr: Future | bytes | memoryview | None = both if zarr else None
        self._starts = None

    @classmethod
    def made(cls, hdf5: bytes | memoryview, zarr: bytes | memoryview | None, shape: tuple[int, ...],
             dtype: Any, starts: bytes | memoryview | None = None) -> Chunks:
        """The chunks of a row of ``shape`` ``dtype`` compressed elsewhere (a worker): ``hdf5`` an
        :func:`hdf5_chunk`, ``zarr`` its zarr chunk (None: made from the HDF5 chunk when asked for, by the thread
        that publishes the zarr.zip; a hand-off to the pool for each row cost the writer more than it saved), with
        ``starts`` the HDF5 chunk's :func:`~ringstream.compression.block_starts` where the worker sent them."""
        self = cls.__new__(cls)
        self._array, self._h5, self._zarr, self._starts = None, hdf5, zarr, starts
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        return self

    @property
    def array(self) -> np.ndarray:
        """The row itself (decoded from the HDF5 chunk for chunks made elsewhere)."""
        if self._array is None:
            self._array = decode_hdf5_chunk(self.hdf5(), self.shape, self.dtype)
        return self._array

    def hdf5(self) -> bytes | memoryview:
        h5 = self._h5
        if type(h5) is Future:
            h5 = self._h5 = h5.result()[0]
        return h5

    def zarr(self) -> bytes | memoryview:
        z = self._zarr
        if z is None:
            z = self._zarr = self._zarr_of_hdf5()
        elif type(z) is Future:
            z = z.result()
            z = self._zarr = z[1] if type(z) is tuple else z
        return z

    def zarr_member(self) -> bytes | memoryview | ZarrOfHdf5:
        """The zarr chunk for a ZIP member: its bytes where made, else the HDF5 chunk's blocks to be placed as it
        (:func:`zarr_of_hdf5`: :class:`~.zip_append.GrowingZip` writes it straight into its buffer), else (blocks
        that do not carry over) its bytes, compressed now."""
        z = self._zarr
        if z is None:
            made = zarr_of_hdf5(self.hdf5(), self.dtype.itemsize, self._starts)
            if made is not None:
                return made
        return self.zarr()

    def size_hint(self) -> int:
        """About the bytes of the zarr chunk, without waiting for it: its own where made, else the HDF5 chunk's
        (the same LZ4 blocks) where that is here, else the row's uncompressed bytes."""
        for chunk in (self._zarr, self._h5):
            if chunk is not None and type(chunk) is not Future:
                return memoryview(chunk).nbytes
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def _zarr_of_hdf5(self) -> bytes | memoryview:
        z = zarr_of_hdf5(self.hdf5(), self.dtype.itemsize, self._starts)
        return zarr_encode(self.array) if z is None else z.tobytes()


#: HDF5's filter id of bitshuffle (+ LZ4): the stored cakes' and sums' only filter
BSHUF_FILTER = 32008


def stored_row_chunks(ds: Any) -> Callable[[int], Chunks | None] | None:
    """For ``ds`` (an h5py dataset of rows chunked one a chunk, bitshuffle + LZ4 its only filter: the stored omega
    sums and cakes), a function giving row ``k`` as the chunk the file holds (:meth:`Chunks.made`, read with
    ``read_direct_chunk``, not decoded; None for a chunk stored unfiltered): what a zarr.zip made from the file takes,
    so that it holds the bytes the run's own zarr.zip held. None for a dataset stored otherwise (then read the rows)."""
    if ds.chunks != (1, *ds.shape[1:]):
        return None
    dcpl = ds.id.get_create_plist()
    if dcpl.get_nfilters() != 1 or dcpl.get_filter(0)[0] != BSHUF_FILTER:
        return None
    dsid, zeros, row = ds.id, (0,) * (ds.ndim - 1), ds.shape[1:]

    def read(k: int) -> Chunks | None:
        mask, raw = dsid.read_direct_chunk((int(k), *zeros))
        return None if mask else Chunks.made(raw, None, row, ds.dtype)

    return read


class CakeChunks:
    """A frame's cake as a worker compressed it (``Result.cake_chunks``): ``cake`` the ``/cake/data/I`` chunk (the
    stored cake transposed, ``[n_eta, n_r]``), ``sum`` its omega sum's chunks (``OmegaSumFrames 1``: the frame's
    group is the frame; ``[n_r, n_eta]``, NaN made 0), each a :class:`Chunks` made elsewhere."""

    __slots__ = ("cake", "sum")

    def __init__(self, cake: Chunks, sum: Chunks) -> None:  # noqa: A002 - the omega sum
        self.cake, self.sum = cake, sum

    @property
    def dtype(self) -> np.dtype:
        return self.cake.dtype

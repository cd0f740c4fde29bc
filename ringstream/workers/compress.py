"""What a worker compresses for the files, so that a cake or an omega sum travels once, small, and the writer only
places it (docs/OUTPUTS.md, "Compression and precision"): a group's whole sum (:func:`sum_chunks`) and, when each
frame is its own group, a frame's cake with its sum (:func:`cake_chunks`), byte for byte the chunks the HDF5 file and
the zarr.zip store (:mod:`ringstream.compression`). :class:`SumCompressor` compresses sums in a few threads of the
worker (the codecs release Python's lock) and hands them back in the order they were given.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..compression import block_starts, hdf5_chunk, zarr_encode

#: threads a worker compresses whole omega sums in, so that its own thread goes on with the frames: ~0.3 ms of CPU a
#: 990 x 72 float32 sum for both files
COMPRESS_THREADS = 2


def sum_chunks(total: np.ndarray, zarr: bool, starts: bool = False) -> list:
    """A group's whole sum (stored dtype) as the files store it: NaN made 0 (as the writer does to every sum), then
    the HDF5 chunk and, with ``zarr``, the zarr chunk, or with ``starts`` its blocks' starts
    (:func:`~ringstream.compression.block_starts`, of which the writer makes the zarr chunk)."""
    if not np.isfinite(total).all():
        total = np.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0)
    h5 = hdf5_chunk(total)
    if zarr:
        return [h5, zarr_encode(total)]
    return [h5, block_starts(h5)] if starts else [h5]


def cake_chunks(cake: np.ndarray, dtype: str, zarr: bool) -> list[bytes]:
    """A frame's cake ``[n_r, n_eta]`` as the files store it, for a run whose omega-sum groups are single frames:
    the ``/cake/data/I`` HDF5 chunk (the cake in ``dtype``, transposed to ``[n_eta, n_r]``), then its omega sum's
    chunks (:func:`sum_chunks`: the cake in ``dtype``, ``[n_r, n_eta]``, NaN made 0)."""
    stored = np.ascontiguousarray(cake, dtype=dtype)
    return [hdf5_chunk(np.ascontiguousarray(stored.T)), *sum_chunks(stored, zarr)]


class SumCompressor:
    """Whole sums compressed in :data:`COMPRESS_THREADS` threads (started on first use), each with the message it
    goes out with; :meth:`done` yields them in the order they were given. ``zarr``, ``starts``: as
    :func:`sum_chunks`."""

    def __init__(self, zarr: bool, starts: bool = False) -> None:
        self.zarr = bool(zarr)
        self.starts = bool(starts)  # (sum_chunks)
        self._queue: collections.deque[tuple[Any, Future]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, msg: Any, total: np.ndarray) -> None:
        """Compress ``total`` (:func:`sum_chunks`), to go out with ``msg``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="rs-compress")
        self._queue.append((msg, self._pool.submit(sum_chunks, total, self.zarr, self.starts)))

    def done(self, wait: bool = False) -> Iterator[tuple[Any, list[bytes]]]:
        """``(msg, chunks)`` of the sums compressed so far, in order, up to the first not done (``wait``: every one);
        raises what compressing one raised."""
        queue = self._queue
        while queue and (wait or queue[0][1].done()):
            msg, chunks = queue.popleft()
            yield msg, chunks.result()

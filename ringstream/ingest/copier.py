"""Copying frames into ring slots on several threads, announcing them in order.

One thread copies a PILATUS 2M int32 frame (9.9 MB) into shared memory at ~7–13 GB/s (``bench/host_copy.py``), so a
single-threaded ingest tops out near 1,000 frames/s, far under the ~5,500 frames/s a 55 GB/s host→device link takes.
``np.copyto`` (and a file read into a slot) releases the GIL, so the copies of several frames can run at once on
``threads`` threads while the ingest's own thread acquires slots and sends headers.

The ingest submits ``(frame, slot)`` jobs; :meth:`SlotCopier.done` hands completed jobs back strictly in submission
order (first in, first out), so frame indices — assigned when a frame is announced — stay in source order, and a job
that failed (a ``fill`` that raised) gives back its slot without using up an index. At most ``depth`` jobs are in
flight; :meth:`SlotCopier.submit` waits for the oldest when that many are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CopyJob:
    """One frame being copied into ``slot``; ``error`` is set (and the slot unused) when the copy failed."""

    frame: Any  # the SourceFrame
    slot: int
    future: Future | None = None
    error: BaseException | None = None


class SlotCopier:
    """``threads`` copy threads, at most ``depth`` jobs in flight (default ``2 * threads``).

    ``copy(frame, out)`` does the work of one job (``out`` is the slot's view, the frame's shape and dtype); it runs on
    a pool thread and may raise, which marks the job failed.
    """

    def __init__(self, threads: int, copy: Callable[[Any, np.ndarray], None],
                 view: Callable[[int, tuple, Any], np.ndarray], depth: int = 0) -> None:
        self.threads = max(1, int(threads))
        self.depth = max(1, int(depth or 2 * self.threads))
        self._copy, self._view = copy, view
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ringstream-slot-copy")
        self._jobs: deque[CopyJob] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def _run(self, job: CopyJob) -> None:
        out = self._view(job.slot, job.frame.frame_shape(), job.frame.frame_dtype())
        try:
            self._copy(job.frame, out)
        finally:
            del out  # no view of the slot outlives the copy

    def submit(self, frame, slot: int) -> Iterator[CopyJob]:
        """Start copying ``frame`` into ``slot``; yields the jobs that had to complete first to make room
        (in order), which the caller announces (or drops) as it would those from :meth:`done`."""
        while len(self._jobs) >= self.depth:
            yield self._finish(self._jobs.popleft())
        job = CopyJob(frame, int(slot))
        job.future = self._pool.submit(self._run, job)
        self._jobs.append(job)

    def done(self, wait: bool = False) -> Iterator[CopyJob]:
        """The completed jobs at the head of the queue, in submission order; with ``wait``, all of them."""
        while self._jobs and (wait or self._jobs[0].future.done()):
            yield self._finish(self._jobs.popleft())

    @staticmethod
    def _finish(job: CopyJob) -> CopyJob:
        try:
            job.future.result()
        except Exception as exc:  # a file that went bad between listing and reading
            job.error = exc
        job.future = None
        return job

    def close(self) -> None:
        """Wait for every copy still running (their slots are still the caller's) and stop the threads."""
        for job in self._jobs:
            if job.future is not None:
                try:
                    job.future.result()
                except Exception:
                    pass
        self._jobs.clear()
        self._pool.shutdown(wait=True)


def auto_threads(cpus: int | None) -> int:
    """Copy threads for ``[transport] copy_threads = 0``: 1 (copy on the ingest's own thread) below 8 CPUs,
    else half the CPUs, at most 8 (the workers and the writer need the rest)."""
    cpus = int(cpus or 1)
    return 1 if cpus < 8 else min(8, cpus // 2)

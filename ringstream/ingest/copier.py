"""Copying frames into ring slots on several threads, announcing them in order.

One thread copying every frame into shared memory would hold the ingest to one memcpy's bandwidth, well under
what a host→device link takes (``bench/host_copy.py`` measures both). ``np.copyto`` (and a file read into a
slot) releases the GIL, so the copies of several frames can run at once on ``threads`` threads while the
ingest's own thread acquires slots and sends headers.

The ingest submits ``(frame, slot)`` jobs; :meth:`SlotCopier.done` hands completed jobs back strictly in submission
order (first in, first out), so frame indices — assigned when a frame is announced — stay in source order, and a job
that failed (a ``fill`` that raised) gives back its slot without using up an index. At most ``depth`` jobs are in
flight; :meth:`SlotCopier.submit` waits for the oldest when that many are.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class CopyJob:
    """One frame being copied into ``slot``; ``error`` is set (and the slot unused) when the copy failed."""

    __slots__ = ("frame", "slot", "done", "error")

    def __init__(self, frame, slot: int) -> None:
        self.frame, self.slot = frame, int(slot)
        self.done = False
        self.error: BaseException | None = None


class SlotCopier:
    """``threads`` copy threads, at most ``depth`` jobs in flight (default ``2 * threads``).

    ``copy(frame, out)`` does the work of one job (``out`` is the slot's view, the frame's shape and dtype); it runs on
    a copy thread and may raise, which marks the job failed. The threads take jobs from one queue and report each
    finished job on another (C ``SimpleQueue`` s: no futures or condition variables per frame, so the ingest thread
    and the copiers take the GIL as briefly as possible).
    """

    def __init__(self, threads: int, copy: Callable[[Any, np.ndarray], None],
                 view: Callable[[int, tuple, Any], np.ndarray], depth: int = 0) -> None:
        self.threads = max(1, int(threads))
        self.depth = max(1, int(depth or 2 * self.threads))
        self._copy, self._view = copy, view
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: deque[CopyJob] = deque()
        self._workers = [threading.Thread(target=self._work, name=f"ringstream-slot-copy-{i}", daemon=True)
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()

    def __len__(self) -> int:
        return len(self._jobs)

    def _work(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            try:
                out = self._view(job.slot, *job.frame.slot_layout())
                try:
                    self._copy(job.frame, out)
                finally:
                    del out  # no view of the slot outlives the copy
            except BaseException as exc:  # a file that went bad between listing and reading
                job.error = exc
            job.done = True
            self._finished.put(None)

    def submit(self, frame, slot: int) -> Iterator[CopyJob]:
        """Start copying ``frame`` into ``slot``; yields the jobs that had to complete first to make room
        (in order), which the caller announces (or drops) as it would those from :meth:`done`."""
        while len(self._jobs) >= self.depth:
            yield self._wait_head()
        job = CopyJob(frame, slot)
        self._jobs.append(job)
        self._todo.put(job)

    def done(self, wait: bool = False) -> Iterator[CopyJob]:
        """The completed jobs at the head of the queue, in submission order; with ``wait``, all of them."""
        self._drain()
        while self._jobs:
            if self._jobs[0].done:
                yield self._jobs.popleft()
            elif wait:
                yield self._wait_head()
            else:
                return

    def _drain(self) -> None:
        """Drop the wake-up tokens of jobs already seen done (a token only says "look again"; without this they
        would pile up, one per frame). Safe: a job's token is put after its ``done`` is set."""
        try:
            while True:
                self._finished.get_nowait()
        except queue.Empty:
            pass

    def _wait_head(self) -> CopyJob:
        """The oldest job, once it is done (each finished job puts one token on ``_finished``)."""
        head = self._jobs[0]
        while not head.done:
            self._finished.get()
        return self._jobs.popleft()

    def close(self) -> None:
        """Wait for every copy still running (their slots are still the caller's) and stop the threads."""
        for _ in self._workers:
            self._todo.put(None)
        for t in self._workers:
            t.join()
        self._jobs.clear()


def auto_threads(cpus: int | None) -> int:
    """Copy threads for ``[transport] copy_threads = 0``: 1 (copy on the ingest's own thread) below 8 CPUs,
    else half the CPUs, at most 8 (the workers and the writer need the rest)."""
    cpus = int(cpus or 1)
    return 1 if cpus < 8 else min(8, cpus // 2)

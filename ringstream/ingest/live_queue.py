"""The loop the queued live sources share: frames arrive in threads of their own and ``frames()`` hands them on.

A queued live source (the PVA monitor, :mod:`.pva`; the MIDAS socket senders, :mod:`.midas_socket`; the DECTRIS
Stream V2 receiver, :mod:`.dectris`) takes each frame in a thread the ingest does not run (pvapy's callback, one
thread per sender, the ZeroMQ receiving thread), copies it once into a ring slot
leased from the ingest's allocator, and puts the :class:`~.source_base.SourceFrame` on a queue.
:meth:`QueuedLiveSource.frames` starts the receiving, then yields the queued frames, or
:data:`~.source_base.IDLE` every :data:`IDLE_S` while none come (the ingest then reads slot releases and sends its
heartbeat), until ``stop`` is set or ``n_frames`` were yielded when that is > 0; it always stops the receiving.
Frames still queued when the receiving stops give their slots back (:meth:`QueuedLiveSource.release_queued`).

The counters are ints under one lock (the receiving threads count while the ingest reads them): ``count(key)`` adds,
``counters()`` is a snapshot, merged into the ingest's heartbeat and so shown by ``ringstream status``. Their
warnings about bad frames go through :class:`RateLimitedLog` (the first of each kind at once, then one summary per
:data:`LOG_EVERY_S`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .source_base import IDLE, HeapAllocator, SlotAllocator, SlotLease, SourceFrame, StopFlag, stopped

#: how often the generator wakes up with nothing to yield (the ingest then reads releases and beats), in s
IDLE_S = 0.01

#: how often a thread waiting for a free ring slot asks the allocator again, in s
SLOT_POLL_S = 0.001

#: after the first log message of a kind, at most one summary line per this many seconds, in s
LOG_EVERY_S = 10.0


class QueuedLiveSource:
    """The shared part of a live source that queues frames taken in its own threads (see the module docstring).

    A subclass sets ``name``, ``shape``, ``dtype`` and ``pausable``, and implements :meth:`start_receiving` and
    :meth:`stop_receiving` (which must call :meth:`release_queued` once nothing more will be queued). ``counter_names``:
    the counters, all 0 at the start; ``n_frames`` > 0: ``frames()`` ends after that many.
    """

    rate = 0.0  # a live stream comes at the detector's pace; the ingest never paces it

    def __init__(self, counter_names: Sequence[str], n_frames: int = 0) -> None:
        self.n_frames = int(n_frames)
        self._counters: dict[str, int] = dict.fromkeys(counter_names, 0)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._alloc: SlotAllocator | None = None

    # ---------------------------------------------------------------------------------------------- interface
    def attach_ring(self, allocator: SlotAllocator) -> None:
        """Frames are copied into slots of ``allocator`` in the receiving threads (see
        :class:`~.source_base.Source`)."""
        self._alloc = allocator

    def counters(self) -> dict[str, int]:
        """The source's counters (ints), a snapshot."""
        self.refresh_counters()
        with self._lock:
            return dict(self._counters)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + n

    def frames(self, stop: StopFlag | None = None) -> Iterator[SourceFrame]:
        """Start receiving, then yield the queued frames (or :data:`~.source_base.IDLE` every :data:`IDLE_S` while
        none come) until ``stop`` is set, or ``n_frames`` were yielded when that is > 0; then stop receiving."""
        if self._alloc is None:
            self._alloc = HeapAllocator()  # no ring (inline frames): slots on the heap
        self.start_receiving()
        n = 0
        try:
            while not stopped(stop) and (self.n_frames <= 0 or n < self.n_frames):
                try:
                    frame = self._queue.get(timeout=IDLE_S)
                except queue.Empty:
                    self.on_idle()
                    yield IDLE
                    continue
                n += 0 if frame.end_run else 1  # (a marker is not a frame)
                yield frame
        finally:
            self.stop_receiving()

    # ------------------------------------------------------------------------------------- for the subclasses
    def start_receiving(self) -> None:
        """Start the threads (or the subscription) that queue frames."""
        raise NotImplementedError

    def stop_receiving(self) -> None:
        """Stop queueing frames and give back the slots of those never yielded (:meth:`release_queued`)."""
        raise NotImplementedError

    def on_idle(self) -> None:
        """Called each time ``frames()`` found nothing queued for :data:`IDLE_S`, before it yields IDLE."""

    def refresh_counters(self) -> None:
        """Called before each :meth:`counters` snapshot: bring counters kept elsewhere up to date."""

    def queue_frame(self, frame: SourceFrame) -> None:
        """Hand a frame (its pixels in a leased slot) to ``frames()``; called from a receiving thread."""
        self._queue.put(frame)

    def wait_for_slot(self, shape: tuple[int, int], dtype: Any, give_up: Callable[[], bool],
                      timeout: float | None = None) -> SlotLease | None:
        """A slot for one frame from the allocator, asking every :data:`SLOT_POLL_S`: the lease, or None once
        ``give_up()`` is true (the source is closing) or after ``timeout`` s (None: no limit, the sender waits)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            lease = self._alloc.acquire(shape, dtype)
            if lease is not None or give_up() or (deadline is not None and time.monotonic() >= deadline):
                return lease
            time.sleep(SLOT_POLL_S)

    def release_queued(self) -> None:
        """Give back the slots of the frames queued but never yielded."""
        while True:
            try:
                frame = self._queue.get_nowait()
            except queue.Empty:
                break
            if frame.lease is not None and self._alloc is not None:
                self._alloc.release(frame.lease)


class RateLimitedLog:
    """Logs the first message of each kind, then one summary per ``every`` s (counts in between)."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY_S) -> None:
        self.log, self.every = logger, every
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self.last.get(kind)
        if last is not None and now - last < self.every:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        more = self.suppressed.pop(kind, 0)
        self.last[kind] = now
        self.log.warning("%s%s", message, f" ({more} more like it since the last message)" if more else "")

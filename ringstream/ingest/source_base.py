"""What every frame source is: the :class:`Source` interface and the records it yields, for the ingest process.

A :class:`Source` yields raw detector frames ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)`` as
:class:`SourceFrame` records. The ingest process sizes its shared-memory ring from ``shape`` and ``dtype``, paces the
source at ``rate`` Hz when that is positive (0: as fast as the source yields), and uses ``pausable`` to decide what a
full ring means: a pausable source (files, simulation) waits for a free slot; a non-pausable one (a live detector
stream) keeps going and the frame is dropped and counted.

The sources themselves live in their own modules and :mod:`.sources` makes the one a configuration names; they
all import this module, which imports none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class StopFlag(Protocol):
    """What ``frames(stop)`` reads: a ``multiprocessing.Event`` / ``threading.Event`` (or None: never stop)."""

    def is_set(self) -> bool: ...


@dataclass
class SourceFrame:
    """One frame from a source, in one of three forms (the ingest copies a frame at most once on the host):

    - ``pixels``: ``[NrPixelsZ, NrPixelsY]`` in the source's dtype (may be a read-only view: the ingest copies it
      once into the ring, or with inline frames sends it by reference, so a source never writes into an array it
      has yielded: a source that reuses a buffer yields a copy);
    - ``pixels=None`` with ``shape``, ``dtype`` and ``fill``: ``fill(out)`` writes the frame into ``out``, a
      writable C-contiguous array of that shape and dtype (a ring slot, or a fresh array for inline frames), so a
      file is read straight into shared memory. An exception from ``fill`` drops the frame; the ingest logs it
      with the source id and counts ``dropped_read_error``;
    - ``lease``: the pixels already sit in a ring slot handed out by the :class:`SlotAllocator` the ingest gave
      :meth:`Source.attach_ring` (a live stream copies each frame once, in its callback, into the slot);
      ``pixels`` is then ``lease.array``.

    ``source_id``: where it came from (``simulated:17``, ``stack.npy:3``, a PVA uniqueId); ``timestamp``: seconds
    since the epoch (the time it was produced when the source has no clock of its own); ``metadata``:
    ``{str: number | str}``, carried in the FrameHeader. ``new_run``: why this frame starts a new acquisition ("" when
    it does not; PVA's ``uniqueId`` going back); the ingest then ends the current run before it (:mod:`.runs`);
    ``run_meta``: the RunStart metadata of the run such a frame opens (a DECTRIS series' start fields). A record
    with ``end_run`` set is not a frame but a marker: the source says its acquisition ended (a DECTRIS ``end``), and
    the ingest ends the current run at once with that reason.

    A frame that arrived compressed travels compressed (``codec`` ``"bslz4"`` or ``"lz4"``, ``codec_header`` and
    ``codec_block`` as :class:`~ringstream.protocol.FrameHeader` has them): ``pixels`` (or ``lease.array``) is then
    the compressed bytes, uint8 ``[nbytes]``, and ``shape`` / ``dtype`` the decoded frame's; such a frame has no
    ``fill``. The workers decode it; the ingest never does.
    """

    pixels: np.ndarray | None
    source_id: str
    timestamp: float
    metadata: dict[str, Any] = field(default_factory=dict)
    fill: Callable[[np.ndarray], None] | None = None
    shape: tuple[int, int] | None = None
    dtype: Any = None
    lease: SlotLease | None = None
    new_run: str = ""
    run_meta: dict[str, Any] = field(default_factory=dict)
    end_run: str = ""
    codec: str = "none"
    codec_header: int = 0
    codec_block: int = 0

    def frame_shape(self) -> tuple[int, int]:
        """The decoded frame's shape."""
        if self.pixels is not None and self.codec == "none":
            return self.pixels.shape  # already a tuple of ints
        return tuple(int(n) for n in self.shape)

    def frame_dtype(self) -> np.dtype:
        """The decoded frame's pixel type."""
        return np.dtype(self.pixels.dtype if self.pixels is not None and self.codec == "none" else self.dtype)

    def slot_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of what goes into a ring slot: the frame, or its compressed bytes ``[nbytes]`` uint8."""
        if self.codec == "none":
            return self.frame_shape(), self.frame_dtype()
        return (int(self.pixels.size),), np.dtype(np.uint8)


@dataclass
class SlotLease:
    """A ring slot lent to a source: ``array`` (writable, the requested shape and dtype) views slot ``slot``."""

    slot: int
    array: np.ndarray


class SlotAllocator(Protocol):
    """What :meth:`Source.attach_ring` receives. Both calls are thread-safe and never block.

    ``acquire(shape, dtype)``: a :class:`SlotLease`, or None when every slot is busy (a live source then drops the
    frame and counts it) or the frame does not fit a slot. ``release(lease)``: give back a lease the source will
    not yield (a frame it rejected after copying). A yielded lease belongs to the ingest.
    """

    def acquire(self, shape: tuple[int, int], dtype: Any) -> SlotLease | None: ...

    def release(self, lease: SlotLease) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A stream of frames. ``frames(stop)`` returns when the source is exhausted or ``stop.is_set()``."""

    name: str
    pausable: bool
    shape: tuple[int, int]
    dtype: np.dtype
    rate: float  # Hz the ingest paces this source at; 0 = as fast as it yields
    resumable: bool  # it can go on after an ingest restart: resume() and frame_again() (below)

    def frames(self, stop: StopFlag | None = None) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...


# Optional source methods, looked up with getattr by the ingest:
#   attach_ring(allocator: SlotAllocator) -> None   called before frames() when frames go through the ring; the
#                                                    source may then yield SourceFrame(lease=...) frames
#   keeps_compressed: bool                          it may yield compressed frames (codec set): the ring's slots
#                                                    are then sized for a frame's worst compressed length
#                                                    (protocol.compressed_bound)
#   counters() -> dict[str, int | float]             the source's own counters (gaps, overruns, rejected frames,
#                                                    connection state), merged into the ingest's heartbeat and
#                                                    so shown by `ringstream status`
#
# A source that declares ``resumable = True`` has two more methods, used by a replacement ingest (ingest/resume.py):
#   resume(last_ids: list[str], announced: int) -> None  called before frames(): the ingest that died announced
#                                                    ``announced`` frames, the last of each file (the stem of its
#                                                    id: split_frame_id) ``last_ids``; frames() goes on after them
#   frame_again(source_id: str) -> SourceFrame | None  one announced frame made again (None: it cannot be; the
#                                                    ingest writes it as lost and counts dropped_ingest_restart)


#: what a live source's ``frames()`` yields when it has had nothing new for a moment: the ingest then reads slot
#: releases and sends its heartbeat, and asks again (it is not a frame and is not counted)
IDLE = SourceFrame(pixels=None, source_id="", timestamp=0.0)


class HeapAllocator:
    """A :class:`SlotAllocator` on the heap, for a leasing source when the ingest has no ring (inline frames):
    every lease is a fresh array (slot -1); releasing does nothing."""

    def acquire(self, shape: tuple[int, int], dtype: Any) -> SlotLease | None:
        return SlotLease(-1, np.empty(tuple(int(n) for n in shape), np.dtype(dtype)))

    def release(self, lease: SlotLease) -> None:
        pass


def stopped(stop: StopFlag | None) -> bool:
    """True when ``stop`` is set (None never is)."""
    return stop is not None and stop.is_set()


class Pacer:
    """A monotonic schedule: frame k is released at ``t0 + k / rate`` (no drift, no catch-up bursts beyond it).

    ``wait(k, stop)`` sleeps until frame k's time in short steps so that ``stop`` is noticed within ~50 ms; it
    returns False when stopped. ``rate <= 0`` never waits.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate or 0.0)
        self.clock = clock
        self.t0: float | None = None

    def wait(self, k: int, stop: StopFlag | None = None) -> bool:
        if self.rate <= 0:
            return not stopped(stop)
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + k / self.rate
        while True:
            if stopped(stop):
                return False
            left = due - self.clock()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))


def split_frame_id(source_id: str) -> tuple[str, int]:
    """(file, frame) of a source id: ``path`` is frame 0 of its file, ``path:k`` frame k (a multi-frame file's, or
    ``simulated:k``). The journal keeps the last frame of each file, so that a resumed source goes on after it."""
    head, sep, tail = source_id.rpartition(":")
    if sep and tail.isdigit():
        return head, int(tail)
    return source_id, 0

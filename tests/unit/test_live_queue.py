"""The queue loop the live sources share: IDLE while nothing comes, n_frames, slots given back, waiting for a slot."""

from __future__ import annotations

import threading

import numpy as np

from ringstream.ingest.live_queue import QueuedLiveSource
from ringstream.ingest.source_base import IDLE, SlotLease, SourceFrame


class _Slots:
    """An allocator of ``n`` slots that records what was given back."""

    def __init__(self, n: int) -> None:
        self.free = list(range(n))
        self.released: list[int] = []

    def acquire(self, shape, dtype):
        return SlotLease(self.free.pop(0), np.zeros(shape, dtype)) if self.free else None

    def release(self, lease: SlotLease) -> None:
        self.released.append(lease.slot)
        self.free.append(lease.slot)


class _Source(QueuedLiveSource):
    pausable = False
    shape = (2, 3)
    dtype = np.dtype("uint16")

    def __init__(self, n_frames: int = 0) -> None:
        super().__init__(("received",), n_frames)
        self.calls: list[str] = []

    def start_receiving(self) -> None:
        self.calls.append("start")

    def stop_receiving(self) -> None:
        self.calls.append("stop")
        self.release_queued()

    def on_idle(self) -> None:
        self.calls.append("idle")

    def receive(self, k: int) -> None:
        lease = self.wait_for_slot(self.shape, self.dtype, lambda: False, timeout=0.05)
        assert lease is not None
        lease.array[...] = k
        self.count("received")
        self.queue_frame(SourceFrame(pixels=lease.array, source_id=str(k), timestamp=0.0, lease=lease))


def test_frames_yields_queued_frames_then_stops_after_n_frames():
    src, slots = _Source(n_frames=2), _Slots(4)
    src.attach_ring(slots)
    for k in range(3):
        src.receive(k)
    got = [f.source_id for f in src.frames()]
    assert got == ["0", "1"]
    assert src.calls == ["start", "stop"]
    assert slots.released == [2]  # the third frame was queued but never yielded: its slot went back
    assert src.counters() == {"received": 3}


def test_idle_while_nothing_comes_and_stop_ends_it():
    src, stop = _Source(), threading.Event()
    src.attach_ring(_Slots(1))
    frames = src.frames(stop)
    assert next(frames) is IDLE and src.calls == ["start", "idle"]
    stop.set()
    assert list(frames) == []
    assert src.calls[-1] == "stop"


def test_wait_for_slot_gives_up_after_the_timeout_or_when_told():
    src, slots = _Source(), _Slots(0)
    src.attach_ring(slots)
    assert src.wait_for_slot((2, 3), "uint16", lambda: False, timeout=0.01) is None
    assert src.wait_for_slot((2, 3), "uint16", lambda: True) is None


def test_without_a_ring_slots_come_from_the_heap():
    src = _Source(n_frames=1)
    frames = src.frames()
    assert next(frames) is IDLE  # frames() has put a heap allocator in place
    src.receive(7)
    frame = next(f for f in frames if f is not IDLE)
    assert frame.lease.slot == -1 and int(frame.pixels[0, 0]) == 7

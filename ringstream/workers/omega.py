"""A worker's partial omega sums: the cakes it integrated, summed per omega-sum group, sent to the writer as
:class:`~ringstream.protocol.OmegaPartial` messages when no per-frame cake goes on the wire (``Write2D 0``).

The groups are those of :class:`~ringstream.protocol.omega.OmegaGrouping`, the rule the writer completes them by
(:mod:`ringstream.writer.omega`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import numpy as np

from ..protocol.omega import FrameSpan, OmegaGrouping


@dataclasses.dataclass
class PartialSum:
    """One group's partial sum on this worker: the frames counted, their summed cakes (float64 ``[n_r, n_eta]``;
    None while every frame was summed on the device) and since when it is held (monotonic s). ``group`` is the group
    within its run ``run_id``; ``key`` the ``frame_index`` of the group's first frame, unique across runs."""

    group: int
    run_id: str = ""
    key: int = 0
    frames: FrameSpan = dataclasses.field(default_factory=FrameSpan)
    indices: list[int] = dataclasses.field(default_factory=list)  # the daemon-wide frame_index of each frame
    total: np.ndarray | None = None
    since: float = 0.0


class OmegaPartials:
    """This worker's running sums of its cakes per omega-sum group, float64 ``[n_r, n_eta]``. A group's sum is due
    when a frame of a later group arrives, when it has been held for ``MAX_AGE`` s, when it holds ``max_frames``
    frames (the ring slots of its frames stay taken until the writer has the sum), or when the worker is idle or
    stopping; a group may thus go out in several parts.

    Cakes come two ways: ``add(header, cake)`` sums a host cake here; ``count(headers)`` counts frames whose cakes
    the engine summed on the device (``engine.omega_add`` under :meth:`key`), whose sum ``engine.omega_take(key)``
    brings back when the group is due (``device``: that engine). A partial sum carries its run and its frames'
    indices within the run. A group may hold both (a batch the GPU failed, integrated
    one by one on the host): its sum is their total."""

    MAX_AGE = 0.5

    def __init__(self, omega_sum_frames: int, n_r: int, n_eta: int, device=None, max_frames: int = 2**62) -> None:
        self.grouping = OmegaGrouping.of(omega_sum_frames)
        self.max_frames = max(1, int(max_frames))
        self.shape = (n_r, n_eta)
        self.device = device
        self.held: dict[int, PartialSum] = {}

    def key(self, header) -> int:
        """The key of the group of the frame of ``header`` (a FrameHeader): the ``frame_index`` of that group's first
        frame. Groups are counted from each run's first frame (``header.run_start``), so the keys of different runs
        never meet, and a later run's keys are larger."""
        start = int(header.run_start)
        size = self.grouping.size
        return start + self.grouping.group_of(int(header.frame_index) - start) * size

    def _held(self, header) -> PartialSum:
        k = self.key(header)
        h = self.held.get(k)
        if h is None:
            start = int(header.run_start)
            h = self.held[k] = PartialSum(self.grouping.group_of(int(header.frame_index) - start), str(header.run_id),
                                          k, since=time.monotonic())
        h.frames.add(int(header.frame_index) - int(header.run_start))
        h.indices.append(int(header.frame_index))
        return h

    def add(self, header, cake) -> None:
        """Sum the cake of the frame of ``header`` (a FrameHeader) into its group."""
        h = self._held(header)
        if h.total is None:
            h.total = np.zeros(self.shape, dtype="<f8")
        h.total += np.asarray(cake, dtype=np.float32)  # the float32 cake a Result carries, summed in float64

    def whole(self, h: PartialSum) -> bool:
        """Whether ``h`` holds every frame of its group (nothing else will be added to it at the writer)."""
        return h.frames.n_frames >= self.grouping.size

    def count(self, headers: Iterable) -> None:
        """Count the frames of ``headers`` whose cakes the engine summed on the device (under :meth:`key`)."""
        for h in headers:
            self._held(h)

    def due(self, idle: bool = False, whole_dtype="<f8") -> list[PartialSum]:
        """Pop every due group, in order, its ``total`` the whole sum (host and device; zeros when empty): float64,
        or ``whole_dtype`` for a group whose frames are all here (:meth:`whole`) and were all summed on the device
        (the device rounds it, and brings back half the bytes). The device's sums come back in one call."""
        if not self.held:
            return []
        newest, now = max(self.held), time.monotonic()
        due = [h for g, h in sorted(self.held.items())
               if idle or g < newest or now - h.since >= self.MAX_AGE or h.frames.n_frames >= self.max_frames]
        for h in due:
            del self.held[h.key]
        if self.device is not None and due:
            narrow = np.dtype(whole_dtype)
            rounded = [h.total is None and self.whole(h) for h in due] if narrow != np.float64 else [False] * len(due)
            for want, dtype in ((True, narrow), (False, np.dtype("<f8"))):
                hs = [h for h, r in zip(due, rounded, strict=True) if r is want]
                if hs:
                    for h, dev in zip(hs, self.device.omega_take([h.key for h in hs], dtype), strict=True):
                        if dev is not None:
                            h.total = dev if h.total is None else h.total + dev
        for h in due:
            if h.total is None:
                h.total = np.zeros(self.shape, dtype="<f8")
        return due

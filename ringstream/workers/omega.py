"""A worker's partial omega sums: the cakes it integrated, summed per omega-sum group, sent to the writer as
:class:`~ringstream.protocol.OmegaPartial` messages when no per-frame cake goes on the wire (``Write2D 0``).

The groups are those of :class:`~ringstream.protocol.omega.OmegaGrouping`, the rule the writer completes them by
(:mod:`ringstream.writer.omega`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator

import numpy as np

from ..protocol.omega import FrameSpan, OmegaGrouping


@dataclasses.dataclass
class PartialSum:
    """One group's partial sum on this worker: the frames counted, their summed cakes (float64 ``[n_r, n_eta]``;
    None while every frame was summed on the device) and since when it is held (monotonic s)."""

    group: int
    frames: FrameSpan = dataclasses.field(default_factory=FrameSpan)
    total: np.ndarray | None = None
    since: float = 0.0


class OmegaPartials:
    """This worker's running sums of its cakes per omega-sum group, float64 ``[n_r, n_eta]``. A group's sum is due
    when a frame of a later group arrives, when it has been held for ``MAX_AGE`` s, or when the worker is idle or
    stopping.

    Cakes come two ways: ``add(frame_index, cake)`` sums a host cake here; ``count(frame_indices)`` counts frames
    whose cakes the engine summed on the device (``engine.omega_add``), whose sum ``engine.omega_take(group)`` brings
    back when the group is due (``device``: that engine). A group may hold both (a batch the GPU failed, integrated
    one by one on the host): its sum is their total."""

    MAX_AGE = 0.5

    def __init__(self, omega_sum_frames: int, n_r: int, n_eta: int, device=None) -> None:
        self.grouping = OmegaGrouping.of(omega_sum_frames)
        self.shape = (n_r, n_eta)
        self.device = device
        self.held: dict[int, PartialSum] = {}

    def group(self, frame_index: int) -> int:
        return self.grouping.group_of(frame_index)

    def _held(self, frame_index: int) -> PartialSum:
        g = self.grouping.group_of(frame_index)
        h = self.held.get(g)
        if h is None:
            h = self.held[g] = PartialSum(g, since=time.monotonic())
        h.frames.add(frame_index)
        return h

    def add(self, frame_index: int, cake) -> None:
        h = self._held(int(frame_index))
        if h.total is None:
            h.total = np.zeros(self.shape, dtype="<f8")
        h.total += np.asarray(cake, dtype=np.float32)  # the float32 cake a Result carries, summed in float64

    def count(self, frame_indices: Iterable[int]) -> None:
        for i in frame_indices:
            self._held(int(i))

    def due(self, idle: bool = False) -> Iterator[PartialSum]:
        """Pop and yield every due group, its ``total`` the whole sum (host and device; zeros when empty)."""
        if not self.held:
            return
        newest, now = max(self.held), time.monotonic()
        for g in sorted(self.held):
            h = self.held[g]
            if idle or g < newest or now - h.since >= self.MAX_AGE:
                del self.held[g]
                dev = self.device.omega_take(g) if self.device is not None else None
                if dev is not None:
                    h.total = dev if h.total is None else h.total + dev
                if h.total is None:
                    h.total = np.zeros(self.shape, dtype="<f8")
                yield h

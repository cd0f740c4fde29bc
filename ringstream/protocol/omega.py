"""Omega-sum groups: which frames go into which group (docs/MIDAS-FORMATS.md section 7), the one rule shared
by the workers, which send partial sums of their cakes per group (:class:`~ringstream.protocol.OmegaPartial`
carries the group number), and the writer, which completes each group's sum.

Group ``g`` holds frames ``g*N .. (g+1)*N - 1`` by run-wide ``frame_index``, ``N`` = ``OmegaSumFrames``; -1 makes the
whole run one group, and 0 or less is taken as 1. Pure: no I/O, no arrays.
"""

from __future__ import annotations

import dataclasses

#: the group size of ``OmegaSumFrames -1``: larger than any run, so every frame is in group 0
WHOLE_RUN = 2**62


@dataclasses.dataclass(frozen=True)
class OmegaGrouping:
    """The grouping of a run: ``size`` frames per group (:meth:`of` builds it from ``OmegaSumFrames``)."""

    size: int

    @classmethod
    def of(cls, omega_sum_frames: int) -> OmegaGrouping:
        """The grouping for the parameter ``OmegaSumFrames`` (-1: the whole run; 0 or less: 1 frame a group)."""
        n = int(omega_sum_frames)
        return cls(WHOLE_RUN if n == -1 else max(1, n))

    def group_of(self, frame_index: int) -> int:
        """The group that holds ``frame_index``."""
        return int(frame_index) // self.size

    def end_of(self, group: int) -> int:
        """The first frame_index after the range of ``group``."""
        return (int(group) + 1) * self.size

    def ends_group(self, frame_index: int) -> bool:
        """True when ``frame_index`` is the last frame of its group's range."""
        return (int(frame_index) + 1) % self.size == 0


@dataclasses.dataclass
class FrameSpan:
    """The frames counted into one group: how many, and the smallest and largest ``frame_index`` (-1 while none);
    the fields an :class:`~ringstream.protocol.OmegaPartial` carries."""

    n_frames: int = 0
    first_frame: int = -1
    last_frame: int = -1

    def add(self, frame_index: int) -> None:
        """Count one frame."""
        idx = int(frame_index)
        if self.n_frames == 0:
            self.first_frame = self.last_frame = idx
        else:
            self.first_frame, self.last_frame = min(self.first_frame, idx), max(self.last_frame, idx)
        self.n_frames += 1

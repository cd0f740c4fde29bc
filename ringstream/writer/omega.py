"""Omega sums: the per-frame cakes of each ``OmegaSumFrames`` group added up (docs/MIDAS-FORMATS.md
section 7).

Group ``g`` holds frames ``g*N .. (g+1)*N - 1`` by run-wide ``frame_index`` (N = ``OmegaSumFrames``; -1 = the whole
run is one group; 0 is taken as 1): :class:`~ringstream.protocol.omega.OmegaGrouping`, the rule the workers' partial
sums follow too. A group's sum is float64 ``[n_r, n_eta]``: the sum of the normalised cakes of its frames that were
integrated (rejected frames add nothing and are not counted).

The sums come from one of two places, which :class:`OmegaSums` accepts in any order:

- the cakes themselves (:meth:`OmegaSums.add_cake`; the writer has them when ``Write2D 1``, the offline path always);
- partial sums the workers made of the cakes they integrated (:meth:`OmegaSums.add_partial`; the daemon with
  ``Write2D 0``, so that no per-frame cake crosses the socket);
- a group's whole sum, stored and compressed by the worker that summed every frame of it
  (:meth:`OmegaSums.add_chunks`): handed out as those chunks, never decompressed here.

The writer also reports every frame it accounts for, in frame_index order (:meth:`OmegaSums.note_frame`), with its
ω; a group is complete once every frame of its range has been accounted for and the frames summed equal the frames
integrated. :meth:`OmegaSums.pop_complete` hands out complete groups in order; :meth:`OmegaSums.pop_all` (end of
run) also hands out the groups that are not, with the frames actually summed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..protocol.omega import FrameSpan, OmegaGrouping

#: digits of ``LastFrameNumber_<k>`` when the run's length is not known (up to 10**9 frames in string order)
DEFAULT_NAME_DIGITS = 9

#: the metadata key a source uses for a frame's ω, in degrees
OMEGA_KEY = "omega"


@dataclasses.dataclass
class OmegaGroup:
    """One summed group. ``sum`` float64 ``[n_r, n_eta]`` (None when a worker sent it compressed: ``chunks``);
    ``n_frames`` frames summed (≥ 1); frame indices and ω (deg) of the first and last frame integrated in the
    group."""

    index: int
    sum: np.ndarray | None
    n_frames: int
    first_frame: int
    last_frame: int
    first_omega: float
    last_omega: float
    #: the sum's compressed chunks for the files (:class:`~ringstream.writer.storage.Chunks`), once it is stored
    chunks: Any = dataclasses.field(default=None, compare=False, repr=False)

    def name(self, digits: int = DEFAULT_NAME_DIGITS) -> str:
        """The zarr.zip / HDF5 name ``LastFrameNumber_<last_frame>``, zero-padded to ``digits``."""
        return f"LastFrameNumber_{self.last_frame:0{digits}d}"


def name_digits(expected_frames: int = 0) -> int:
    """Zero-padding of group names: enough for ``expected_frames`` (when known and > 0), else 9 digits."""
    if expected_frames and expected_frames > 0:
        return max(1, len(str(int(expected_frames) - 1)))
    return DEFAULT_NAME_DIGITS


class OmegaStamps:
    """ω of a frame in degrees: the frame metadata ``omega`` when the source gives it, else the parameter file's
    ``Omega`` (fixed), else ``OmegaStart + frame_index * OmegaStep`` when either was set, else the frame index
    (MIDAS's fallback)."""

    def __init__(self, params: Any) -> None:
        given = {k for k, _ in getattr(params, "locations", ())}
        self.fixed = getattr(params, "Omega", None)
        self.start = float(getattr(params, "OmegaStart", 0.0) or 0.0)
        self.step = float(getattr(params, "OmegaStep", 0.0) or 0.0)
        self.ramp = bool(self.step) or "OmegaStart" in given or "OmegaStep" in given

    def __call__(self, frame_index: int, metadata: Mapping[str, Any] | None = None) -> float:
        if metadata:
            value = metadata.get(OMEGA_KEY)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
        if self.fixed is not None:
            return float(self.fixed)
        if self.ramp:
            return self.start + int(frame_index) * self.step
        return float(frame_index)


@dataclasses.dataclass
class _Pending:
    sum: np.ndarray | None = None  # made by the first cake or partial sum (a group's frames are noted before)
    summed: int = 0  # frames added (cakes or partial counts)
    integrated: FrameSpan = dataclasses.field(default_factory=FrameSpan)  # ok frames accounted for by the writer
    chunks: Any = None  # the group's whole sum, stored and compressed by a worker (add_chunks): no sum then
    first_omega: float = 0.0
    last_omega: float = 0.0


class OmegaSums:
    """Collects the groups of one run (see the module docstring). ``shape`` = ``(n_r, n_eta)``."""

    def __init__(self, omega_sum_frames: int, shape: tuple[int, int]) -> None:
        self.grouping = OmegaGrouping.of(omega_sum_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        self._pending: dict[int, _Pending] = {}
        self._accounted = 0  # frames 0 .. _accounted-1 have been noted
        self._done_below = 0  # groups < this have been handed out

    def group_of(self, frame_index: int) -> int:
        return self.grouping.group_of(frame_index)

    def resume(self, frame: int, done_below: int) -> None:
        """Continue a run from ``frame`` (W): frames below it are accounted for, groups below ``done_below`` were
        written (at least those below ``group_of(frame)``), nothing is pending."""
        self._pending.clear()
        self._accounted = int(frame)
        self._done_below = max(int(done_below), self.group_of(frame))

    def _get(self, g: int) -> _Pending:
        p = self._pending.get(g)
        if p is None:
            p = self._pending[g] = _Pending()
        return p

    def _add(self, p: _Pending, x: np.ndarray, whole: bool = False) -> None:
        """``p.sum += x`` in float64; the first time into a new array, written once (0.0 + x, as a sum started
        from zeros would give, -0.0 included), not zeros read and then written (twice the page faults)."""
        if p.sum is None:
            if whole:  # the group's whole sum, rounded once by the worker (summed from zeros: no -0.0): kept as it came
                p.sum = x
                return
            p.sum = np.empty(self.shape, dtype=np.float64)
            np.add(x, 0.0, out=p.sum, dtype=np.float64)
        else:
            if p.sum.dtype != np.float64:  # (a second contribution to a group sent whole: never from one worker)
                p.sum = p.sum.astype(np.float64)
            np.add(p.sum, x, out=p.sum)  # float32 cakes added in float64, no temporary

    def add_cake(self, frame_index: int, cake: np.ndarray) -> None:
        """Add one frame's normalised cake ``[n_r, n_eta]`` to its group (a bin that is NaN in any frame is 0 in
        the sum: GSAS-II reads no NaN)."""
        g = self.group_of(frame_index)
        if g < self._done_below:
            raise ValueError(f"frame {frame_index}: its omega-sum group {g} was already written")
        p = self._get(g)
        self._add(p, cake)
        p.summed += 1

    def add_partial(self, group: int, n_frames: int, partial: np.ndarray) -> None:
        """Add a worker's partial sum of ``n_frames`` cakes of group ``group``."""
        g = int(group)
        if g < self._done_below:
            raise ValueError(f"partial sum of group {g} arrived after the group was written")
        if partial.shape != self.shape:
            raise ValueError(f"partial sum of group {g}: shape {partial.shape} != {self.shape}")
        p = self._get(g)
        if p.chunks is not None:
            raise ValueError(f"partial sum of group {g}: the group's whole sum came already")
        self._add(p, partial, whole=partial.dtype != np.float64 and int(n_frames) >= self.grouping.size)
        p.summed += int(n_frames)

    def add_chunks(self, group: int, n_frames: int, chunks: Any) -> None:
        """Take group ``group``'s whole sum of ``n_frames`` cakes as a worker stored and compressed it (``chunks``:
        a :class:`~ringstream.writer.storage.Chunks` of ``shape`` ``[n_r, n_eta]``, NaN already 0)."""
        g = int(group)
        if g < self._done_below:
            raise ValueError(f"partial sum of group {g} arrived after the group was written")
        if tuple(chunks.shape) != self.shape:
            raise ValueError(f"partial sum of group {g}: shape {tuple(chunks.shape)} != {self.shape}")
        if int(n_frames) < self.grouping.size:
            raise ValueError(f"compressed partial sum of group {g}: {n_frames} frames, a whole group has "
                             f"{self.grouping.size}")
        p = self._get(g)
        if p.sum is not None or p.chunks is not None:
            raise ValueError(f"compressed partial sum of group {g}: the group has a sum already")
        p.chunks = chunks
        p.summed += int(n_frames)

    def note_frame(self, frame_index: int, ok: bool, omega: float) -> None:
        """The writer accounted for ``frame_index`` (in increasing order; gaps allowed at a stop)."""
        idx = int(frame_index)
        self._accounted = max(self._accounted, idx + 1)
        if not ok:
            return
        p = self._get(self.group_of(idx))
        if p.integrated.n_frames == 0:
            p.first_omega = float(omega)
        p.last_omega = float(omega)
        p.integrated.add(idx)

    def waiting(self, end: int | None = None) -> int:
        """Frames integrated in finished frame ranges whose sums have not all arrived yet; with ``end`` (the run's
        frame count, once known) the last, shorter range counts as finished too."""
        done = self._accounted if end is None or self._accounted < end else 2**63
        return sum(p.integrated.n_frames - p.summed for g, p in self._pending.items()
                   if (self.grouping.end_of(g) <= done or done == 2**63) and p.integrated.n_frames > p.summed)

    def _emit(self, g: int) -> OmegaGroup | None:
        p = self._pending.pop(g)
        if p.summed <= 0 or p.integrated.n_frames == 0 or (p.sum is None and p.chunks is None):
            return None
        if p.chunks is not None:
            return OmegaGroup(g, None, p.summed, p.integrated.first_frame, p.integrated.last_frame, p.first_omega,
                              p.last_omega, chunks=p.chunks)
        if not np.isfinite(p.sum).all():  # no NaN in the outputs: a bin that was NaN in a frame is 0
            p.sum = np.nan_to_num(p.sum, copy=not p.sum.flags.writeable, nan=0.0, posinf=0.0, neginf=0.0)
        return OmegaGroup(g, p.sum, p.summed, p.integrated.first_frame, p.integrated.last_frame, p.first_omega,
                          p.last_omega)

    def handed_out_below(self) -> int:
        """The first frame not covered by what was handed out: every frame below it is accounted for and every group
        that holds one of them was handed out (:meth:`pop_complete`); the frames of a group still summing are not."""
        return min(self._accounted, self._done_below * self.grouping.size)

    def pop_complete(self) -> list[OmegaGroup]:
        """Complete groups (every frame of the range accounted for, every integrated frame summed), in order."""
        out: list[OmegaGroup] = []
        for g in sorted(self._pending):
            p = self._pending[g]
            if self.grouping.end_of(g) > self._accounted or p.summed < p.integrated.n_frames:
                break
            group = self._emit(g)
            self._done_below = g + 1
            if group is not None:
                out.append(group)
        return out

    def pop_all(self) -> list[OmegaGroup]:
        """Every group still held, complete or not (the end of a run), in order."""
        out = [grp for g in sorted(self._pending) if (grp := self._emit(g)) is not None]
        self._done_below = max([self._done_below] + [g.index + 1 for g in out])
        return out

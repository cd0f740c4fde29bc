"""Where one run ends and the next begins: the ingest cuts the stream of frames into runs (docs/DAEMON.md, "Runs").

A run is one acquisition and one set of output files. ``frame_index`` counts every frame of the daemon's life; a run
is the range ``first_frame .. first_frame + n - 1`` of it, announced to the writer by a :class:`RunStart` before its
first frame goes to a worker and closed by an :class:`EndOfStream` (``final`` false while the stream goes on). A run
ends, and the next frame starts a new one, when:

- the source marks a frame as the start of a new acquisition (``SourceFrame.new_run``: PVA's ``uniqueId`` going
  back, with ``[run] split_on_restart``);
- the value of the frame metadata ``[run] split_attribute`` changes (an NDAttribute such as a scan number);
- the run holds ``[run] max_frames`` frames, or its first frame is ``[run] max_seconds`` old (a long acquisition in
  parts);
- no frame came for ``[run] idle_split_s`` seconds (the run ends at once; the next frame starts a new one);
- ``ringstream runs start`` (ends the current run; the next frame starts a run with the given name and metadata) or
  ``ringstream runs stop`` (ends the current run).

Pure bookkeeping: it returns the messages to send and never touches a socket.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..protocol import EndOfStream, RunStart

#: reasons a run ends, as they appear in EndOfStream.reason, the HDF5 and the index of runs
END_OF_SOURCE = "end of source"
STOPPED = "stop"


@dataclasses.dataclass
class _Open:
    run_id: str
    first_frame: int
    t_first: float
    counters_at_start: dict[str, int]
    n_frames: int = 0
    split_value: Any = None
    start: dict[str, Any] = dataclasses.field(default_factory=dict)  # its RunStart's name, meta, reason


class RunSplitter:
    """The ingest's runs. ``run_cfg``: the frozen ``[run]`` section; ``base_id``: the daemon's run id (the first
    run's id; later runs get ``BASE.2``, ``BASE.3`` ...); ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(self, run_cfg, base_id: str, clock=time.monotonic) -> None:
        self.base_id = base_id
        self.max_frames = int(run_cfg.max_frames or 0)
        self.max_seconds = float(run_cfg.max_seconds or 0.0)
        self.idle_split_s = float(run_cfg.idle_split_s or 0.0)
        self.split_attribute = str(run_cfg.split_attribute or "")
        self.split_on_restart = bool(run_cfg.split_on_restart)
        self.clock = clock
        self.current: _Open | None = None
        self.runs_started = 0
        self.t_last_frame = 0.0
        self.pending_start: dict[str, Any] | None = None  # a ``runs start`` for the next frame: name, meta
        self.counted: dict[str, int] = {}  # the counters when the last run ended: each run's own are the rest

    @property
    def run_start_fields(self) -> dict[str, Any]:
        """The current run's RunStart fields (name, meta, reason): its first frame carries them too."""
        return dict(self.current.start) if self.current is not None else {}

    @property
    def run_id(self) -> str:
        return self.current.run_id if self.current is not None else ""

    def _next_id(self) -> str:
        self.runs_started += 1
        return self.base_id if self.runs_started == 1 else f"{self.base_id}.{self.runs_started}"

    def before_frame(self, frame_index: int, new_run: str, metadata: dict, counters: dict,
                     run_meta: dict | None = None) -> tuple[list, str, int]:
        """The frame about to get ``frame_index``: returns (messages to send to the writer first, in order; the
        frame's run_id; its run_start). ``new_run``: the source's reason to start a new run at this frame ("" for
        none); ``metadata``: the frame's metadata; ``counters``: the ingest's counters now.

        A run's own counters (in its EndOfStream) are the ingest's and the source's counts since the run before it
        ended, as the ingest saw them when it cut the stream: they add up to the daemon's totals, and what the
        source did between two runs (a reconnect, frames rejected) is counted in the next run."""
        now = self.clock()
        out: list = []
        cur = self.current
        reason = ""
        if cur is not None:
            if self.pending_start is not None:
                reason = "runs start"
            elif new_run and self.split_on_restart:
                reason = new_run
            elif self.split_attribute and self.split_attribute in metadata and \
                    metadata[self.split_attribute] != cur.split_value and cur.n_frames > 0:
                reason = f"attribute {self.split_attribute} changed"
            elif self.max_frames and cur.n_frames >= self.max_frames:
                reason = "max_frames"
            elif self.max_seconds and now - cur.t_first >= self.max_seconds:
                reason = "max_seconds"
            if reason:
                out.append(self.end(frame_index, reason, counters, final=False))
        if self.current is None:
            start = self.pending_start or {}
            self.pending_start = None
            self.current = _Open(self._next_id(), int(frame_index), now, dict(self.counted),
                                 split_value=metadata.get(self.split_attribute) if self.split_attribute else None)
            self.current.start = dict(name=str(start.get("name", "")),
                                      meta={**(run_meta or {}), **dict(start.get("meta") or {})},
                                      reason=reason or start.get("reason", "") or ("first frame" if
                                                                                   self.runs_started == 1 else
                                                                                   "next frame"))
            out.append(RunStart(run_id=self.current.run_id, first_frame=int(frame_index), **self.current.start))
        cur = self.current
        if cur.n_frames == 0 and self.split_attribute:
            cur.split_value = metadata.get(self.split_attribute)
        cur.n_frames += 1
        self.t_last_frame = now
        return out, cur.run_id, cur.first_frame

    def resume(self, run_id: str, first_frame: int, next_index: int, run_open: bool) -> None:
        """Go on where a dead ingest stopped (its journal: :mod:`.journal`): ``run_id`` was its last run, begun at
        ``first_frame``; ``run_open``: its EndOfStream was not sent, so the frame ``next_index`` continues it;
        otherwise the next frame starts the run after it. The run's counters count from its first frame."""
        if not run_id:
            return
        self.runs_started = _run_number(self.base_id, run_id)
        if run_open:
            start = {"received": int(first_frame), "sent": int(first_frame)}
            self.current = _Open(run_id, int(first_frame), self.clock(), start,
                                 n_frames=int(next_index) - int(first_frame))
            self.t_last_frame = self.clock()

    def frame_not_sent(self) -> None:
        """The frame :meth:`before_frame` counted was dropped on its way out (its index goes to the next frame)."""
        if self.current is not None and self.current.n_frames > 0:
            self.current.n_frames -= 1

    def on_idle(self, next_index: int, counters: dict) -> EndOfStream | None:
        """No frame now: the run ends when none came for ``idle_split_s``."""
        cur = self.current
        if cur is None or not self.idle_split_s or cur.n_frames == 0:
            return None
        if self.clock() - self.t_last_frame >= self.idle_split_s:
            return self.end(next_index, "idle", counters, final=False)
        return None

    def source_end(self, next_index: int, reason: str, counters: dict) -> EndOfStream | None:
        """The source says its acquisition ended (a DECTRIS ``end``): the current run ends now (None when no run
        with frames is open)."""
        if self.current is None or self.current.n_frames == 0:
            return None
        return self.end(next_index, reason, counters, final=False)

    def request(self, action: str, name: str = "", meta: dict | None = None, next_index: int = 0,
                counters: dict | None = None) -> EndOfStream | None:
        """``runs start`` / ``runs stop`` from the control socket: the current run ends now (its EndOfStream is
        returned); after a start, the next frame opens a run named ``name`` with ``meta``."""
        eos = None
        if self.current is not None and self.current.n_frames > 0:
            eos = self.end(next_index, f"runs {action}", counters or {}, final=False)
        if action == "start":
            self.pending_start = {"name": name, "meta": dict(meta or {}), "reason": "runs start"}
        return eos

    def end(self, next_index: int, reason: str, counters: dict, final: bool) -> EndOfStream:
        """End the current run at ``next_index`` (the first index not in it); with no run open, the final
        EndOfStream of an empty stream."""
        cur, self.current = self.current, None
        if cur is None:
            return EndOfStream(run_id="", n_frames=0, first_frame=int(next_index), final=final, reason=reason)
        now = _ints(counters)
        own = {k: v - cur.counters_at_start.get(k, 0) for k, v in now.items()}
        self.counted = now
        n = int(next_index) - cur.first_frame
        return EndOfStream(run_id=cur.run_id, n_frames=n, first_frame=cur.first_frame, final=final,
                           reason=reason, counters=own)


def _run_number(base_id: str, run_id: str) -> int:
    """The number of the run ``run_id`` among the runs of the daemon whose first run is ``base_id`` (1, 2 ...)."""
    head, _, tail = run_id.rpartition(".")
    if run_id != base_id and head == base_id and tail.isdigit():
        return int(tail)
    return 1


def _ints(counters: dict) -> dict[str, int]:
    return {k: int(v) for k, v in counters.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

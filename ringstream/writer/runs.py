"""The writer's runs: one set of output files per run, named from the ``[run]`` templates and recorded in the index
of runs (:mod:`ringstream.runs`; docs/DAEMON.md, "Runs and file names").

The ingest announces each run (:class:`~ringstream.protocol.RunStart`) and ends it
(:class:`~ringstream.protocol.EndOfStream`); Results carry their run's id. A :class:`Run` holds what the writer knows
of one run: its first ``frame_index``, name and metadata, its outputs once its first frame is written, its end, its
own counters. Frames are written in files by their index within the run (``frame_index - first_frame``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from typing import Any

from ..protocol import EndOfStream
from ..runs.index import RunIndex
from ..runs.naming import RunPaths, RunTemplates, choose_run, make_folders
from ..runs.state import RunState, state_dir_of
from .repair import cut_zarr_tail, repair

log = logging.getLogger("ringstream.writer")

#: live sources serve runs until stopped: their outputs are numbered even without {run} in the template
LIVE_SOURCES = ("pva", "midas_socket", "dectris")


@dataclasses.dataclass
class Run:
    """One run as the writer sees it (see the module docstring)."""

    run_id: str
    first_frame: int
    name: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""
    number: int = 0
    paths: RunPaths | None = None
    outputs: Any = None  # RunOutputs once the first frame is written
    eos: EndOfStream | None = None
    written: int = 0
    rejected: int = 0
    early: list = dataclasses.field(default_factory=list)  # partial sums / peak updates before the outputs exist
    t_first: float = 0.0  # time stamp of the first and last frame written (s since the epoch)
    t_last: float = 0.0
    t_frames_done: float = 0.0  # monotonic time every frame was accounted for (waiting for partial sums)
    eos_guessed: bool = False  # its end was taken from the next run's first frame; its EndOfStream is on its way
    failed: str = ""  # why the run's outputs failed (a full disk, a folder that cannot be written)
    dropped: int = 0  # frames of a failed run not written
    workers_lost: int = 0  # worker processes that died while the run was open (their frames went to others)
    skip_below: int = 0  # frames of the run below this are in its files already (a replacement writer reopened them)

    @property
    def end(self) -> int | None:
        """The first frame_index after the run (None while its end is not known)."""
        return None if self.eos is None else int(self.eos.first_frame) + int(self.eos.n_frames)

    @property
    def n_frames(self) -> int:
        return self.written + self.rejected + self.dropped

    def summary(self) -> dict[str, Any]:
        """The run for the index, the status and the heartbeat."""
        out: dict[str, Any] = {"run": self.number, "name": self.name, "run_id": self.run_id,
                               "first_frame": self.first_frame, "frames": self.n_frames, "written": self.written,
                               "rejected": self.rejected}
        if self.paths is not None:
            out["files"] = {k: os.path.abspath(v) for k, v in self.paths.as_record().items()}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.t_first:
            out["first_frame_time"] = _iso(self.t_first)
            out["last_frame_time"] = _iso(self.t_last)
        if self.meta:
            out["meta"] = self.meta
        return out


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


class RunBook:
    """Names the runs and keeps the index of runs: ``config`` is the daemon's configuration."""

    def __init__(self, config) -> None:
        run_cfg = config.run
        self.templates = RunTemplates.from_config(run_cfg)
        self.state_dir = state_dir_of(run_cfg)
        self.state = RunState(self.state_dir)
        self.index = RunIndex.in_state_dir(self.state_dir)
        split = bool(run_cfg.max_frames or run_cfg.max_seconds or run_cfg.idle_split_s or run_cfg.split_attribute)
        self.multi_run = str(config.source.kind) in LIVE_SOURCES or split
        self.opened = 0

    def name(self, run: Run, attrs: dict[str, Any]) -> None:
        """Give ``run`` its number and paths (folders created and checked; OutputFolderError if one cannot be
        written) and record it "open" in the index."""
        multi = self.multi_run or self.opened > 0
        above = self.index.last_run()
        number, paths = choose_run(self.templates, _Above(self.state, above), multi_run=multi, name=run.name,
                                   run_id=run.run_id, when=dt.datetime.now(), attrs={**attrs, **run.meta},
                                   create=False)
        run.number, run.paths = number, paths
        self.opened += 1
        self.record(run, "open", reason=run.reason)
        make_folders(paths)

    def record(self, run: Run, status: str, **fields: Any) -> None:
        """Append ``run``'s state to the index (a failure to write it is logged, never fatal)."""
        try:
            summary = {k: v for k, v in run.summary().items() if k != "run"}
            self.index.append(run.number, status, **{**summary, **fields})
        except Exception as exc:  # the index is a convenience: the run's files are the record of truth
            log.warning("run %d: %s", run.number, exc)

    def recover(self) -> list[dict[str, Any]]:
        """Runs a previous service left "open" (killed, crashed, power lost): their files repaired (as ``ringstream
        repair`` does) and marked "interrupted" in the index. Returns them."""
        found = self.index.open_runs()
        for entry in found:
            h5 = (entry.get("files") or {}).get("h5")
            reason = "the service stopped before the run ended"
            cut_zarr_tail((entry.get("files") or {}).get("zarr"))
            if h5:
                try:
                    if os.path.exists(h5):
                        repair(h5, interrupted=True)
                    else:
                        reason += " (no file had been written)"
                except Exception as exc:  # a file that cannot be repaired: say so, keep serving
                    reason += f" (repair failed: {exc})"
                    log.warning("run %s: %s: repair failed: %s", entry["run"], h5, exc)
            fields = {k: v for k, v in entry.items() if k not in ("run", "status", "time", "reason")}
            self.index.append(int(entry["run"]), "interrupted", **fields, reason=reason)
            log.warning("run %s (%s) was interrupted: %s", entry["run"], h5 or "no file", reason)
        return found


class _Above:
    """A RunState whose numbers are also above the index's highest run (in case the number file was lost)."""

    def __init__(self, state: RunState, above: int) -> None:
        self.state, self.above = state, above

    def next_number(self) -> int:
        return self.state.next_number(above=self.above)

"""Per-frame stage stamps: when each frame reached each stage of the daemon, in every process, to find where frames
wait (``[supervisor] trace_dir``, ``--trace-dir``; off by default; ``bench/stage_trace.py`` prints the intervals).

Each process that has a trace folder keeps its stamps in memory (a frame index, a stage and the time of
``time.monotonic()``, which on Linux is the same clock in every process of the host) and writes them at its end as
``<role>-<pid>.npz`` in the folder; a process that is killed writes nothing. A stamp costs about a microsecond.
A stage that sends a message is stamped just before the send (the receiver may have it before the send returns).
The stages, in the order a frame passes them (:data:`STAGES`):

- ``slot`` (ingest): a ring slot was taken for the frame (stamped with the frame's index once it is announced);
- ``sent`` (ingest): its header went to a worker;
- ``received`` (worker): the worker took it off the frames socket;
- ``result_sent`` (worker): its Result went to the writer;
- ``partial_sent`` (worker): the partial omega sum holding it went to the writer;
- ``result_in``, ``partial_in`` (writer): the writer received its Result, the partial sum holding it;
- ``acked`` (writer): the writer acknowledged it to the ingest (it holds the Result and, with omega sums, the sum);
- ``released`` (ingest): its slot was free again.

A frame sent again (its worker died) has more than one stamp of a stage; :func:`table` keeps the last.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from pathlib import Path

import numpy as np

log = logging.getLogger("ringstream.trace")

STAGES = ("slot", "sent", "received", "result_sent", "partial_sent", "result_in", "partial_in", "acked", "released")
SLOT, SENT, RECEIVED, RESULT_SENT, PARTIAL_SENT, RESULT_IN, PARTIAL_IN, ACKED, RELEASED = range(len(STAGES))

#: stamps a process keeps at most (~17 bytes each): past it, the rest of the run is not traced (logged once)
MAX_STAMPS = 20_000_000


class StageTrace:
    """The stamps of one process (``role``: ingest, worker-<k>, writer), written to ``folder`` by :meth:`save`."""

    def __init__(self, folder: str | os.PathLike, role: str) -> None:
        self.folder = Path(folder)
        self.role = role
        self._frame, self._stage, self._t = array("q"), array("B"), array("d")
        self._full = False

    def mark(self, stage: int, frame: int, t: float | None = None) -> None:
        """Frame ``frame`` reached ``stage`` now (or at ``t``, of ``time.monotonic()``)."""
        if len(self._t) >= MAX_STAMPS:
            if not self._full:
                self._full = True
                log.warning("%s: %d stage stamps kept, no more are", self.role, MAX_STAMPS)
            return
        self._frame.append(frame)
        self._stage.append(stage)
        self._t.append(time.monotonic() if t is None else t)

    def mark_many(self, stage: int, frames, t: float | None = None) -> None:
        """Every frame of ``frames`` reached ``stage`` now (or at ``t``)."""
        t = time.monotonic() if t is None else t
        for f in frames:
            self.mark(stage, int(f), t)

    def save(self) -> Path | None:
        """Write the stamps to ``<folder>/<role>-<pid>.npz`` (None, logged, where that fails: a trace never stops
        the process that keeps it)."""
        path = self.folder / f"{self.role}-{os.getpid()}.npz"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            np.savez(path, frame=np.frombuffer(self._frame, np.int64), stage=np.frombuffer(self._stage, np.uint8),
                     t=np.frombuffer(self._t, np.float64))
        except OSError as exc:
            log.warning("%s: stage stamps not written to %s (%s)", self.role, path, exc)
            return None
        return path


def open_trace(config, role: str) -> StageTrace | None:
    """The trace of a process of the daemon (``config``: its DaemonConfig), or None when ``trace_dir`` is empty."""
    folder = str(getattr(config.supervisor, "trace_dir", "") or "")
    return StageTrace(folder, role) if folder else None


def table(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Every process's stamps in ``folder`` as ``(frames, times)``: the frame indices stamped (sorted) and a
    ``[n_frames, len(STAGES)]`` array of the time each reached each stage (the last stamp of a stage where there are
    several; NaN where there is none)."""
    parts = [np.load(p) for p in sorted(Path(folder).glob("*.npz"))]
    if not parts:
        raise FileNotFoundError(f"{folder}: no stage stamps (*.npz)")
    frame = np.concatenate([p["frame"] for p in parts])
    stage = np.concatenate([p["stage"] for p in parts]).astype(np.int64)
    t = np.concatenate([p["t"] for p in parts])
    order = np.argsort(t, kind="stable")  # (later stamps overwrite earlier ones below)
    frame, stage, t = frame[order], stage[order], t[order]
    frames, row = np.unique(frame, return_inverse=True)
    key = row * len(STAGES) + stage
    _, last = np.unique(key[::-1], return_index=True)  # the last stamp of each (frame, stage)
    last = len(key) - 1 - last
    times = np.full((len(frames), len(STAGES)), np.nan)
    times.flat[key[last]] = t[last]
    return frames, times


#: the intervals :func:`summary` reports: (name, from stage, to stage); ``hold`` is the whole time a slot is taken
INTERVALS = (
    ("ring slot -> sent to a worker", SLOT, SENT),
    ("sent -> the worker took it", SENT, RECEIVED),
    ("taken -> Result sent", RECEIVED, RESULT_SENT),
    ("Result sent -> the writer has it", RESULT_SENT, RESULT_IN),
    ("taken -> partial sum sent", RECEIVED, PARTIAL_SENT),
    ("partial sent -> the writer has it", PARTIAL_SENT, PARTIAL_IN),
    ("the writer has both -> acknowledged", -1, ACKED),
    ("acknowledged -> slot free", ACKED, RELEASED),
    ("hold: ring slot -> slot free", SLOT, RELEASED),
)


def summary(times: np.ndarray) -> list[dict]:
    """Per interval of :data:`INTERVALS` over the frames of :func:`table`'s ``times`` that have both ends: the count
    and the 50th, 90th and 99th percentiles and the largest value, in ms (``-1`` as the start: the later of
    ``result_in`` and ``partial_in``, or ``result_in`` alone where no partial sums were stamped)."""
    rows = []
    for name, a, b in INTERVALS:
        if a == -1:
            start = times[:, RESULT_IN]
            if not np.all(np.isnan(times[:, PARTIAL_IN])):
                start = np.fmax(start, times[:, PARTIAL_IN])
        else:
            start = times[:, a]
        d = (times[:, b] - start) * 1e3
        d = d[np.isfinite(d)]
        row = {"interval": name, "frames": int(d.size)}
        if d.size:
            p50, p90, p99 = np.percentile(d, [50, 90, 99])
            row.update(p50_ms=round(float(p50), 3), p90_ms=round(float(p90), 3), p99_ms=round(float(p99), 3),
                       max_ms=round(float(d.max()), 3))
        rows.append(row)
    return rows


#: the pairs of stages every frame passes in this order (a partial sum goes after its frame's Result)
CAUSAL = ((SLOT, SENT), (SENT, RECEIVED), (RECEIVED, RESULT_SENT), (RESULT_SENT, RESULT_IN), (RECEIVED, PARTIAL_SENT),
          (PARTIAL_SENT, PARTIAL_IN), (RESULT_IN, ACKED), (PARTIAL_IN, ACKED), (ACKED, RELEASED))


def out_of_order(frames: np.ndarray, times: np.ndarray) -> list[str]:
    """What :func:`table`'s stamps break of :data:`CAUSAL`, one line a pair (empty: every frame in order; a pair
    where either stamp is missing is not checked)."""
    bad = []
    for a, b in CAUSAL:
        late = np.nonzero(times[:, b] < times[:, a])[0]
        if late.size:
            bad.append(f"{STAGES[b]} before {STAGES[a]} for {late.size} frames, e.g. {frames[late[:5]].tolist()}")
    return bad

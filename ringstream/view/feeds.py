"""Where the page's data comes from: a running daemon (:class:`DaemonFeed`) or an HDF5 results file
(:class:`FileFeed`), each a thread writing a :class:`~ringstream.view.state.ViewState`.

A daemon: its ``status`` (every ``STATUS_PERIOD`` s, on the control socket, as ``ringstream status`` asks) names the
writer's view endpoint; a SUB socket there receives the :class:`~ringstream.protocol.ViewUpdate` s. The feed reads
everything that arrives at once (it never makes the writer wait: a viewer that stalls loses updates there, see
:mod:`ringstream.writer.view_feed`). A message that does not decode is counted (``bad_updates``), logged once and
ignored.

A file: opened read-only (SWMR when the file allows it) every ``FILE_PERIOD`` s until its run is complete; at most
``rows`` of its rows are read, evenly spaced, always with the last one (a whole run, decimated to the screen).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..daemon.status import NoDaemon, query_status
from ..protocol import FIT_COLUMNS, ProtocolError, ViewUpdate, decode
from .state import ViewState

log = logging.getLogger("ringstream.view")

#: how often the daemon's status is asked for, in s
STATUS_PERIOD = 1.0
#: how often a growing file is read again, in s
FILE_PERIOD = 1.0


class DaemonFeed(threading.Thread):
    """Keeps ``state`` up to date from the daemon answering on ``control``."""

    def __init__(self, control: str, state: ViewState, stop: threading.Event) -> None:
        super().__init__(name="view-daemon-feed", daemon=True)
        self.control, self.state, self.stop = control, state, stop
        self.bad_updates = 0

    def run(self) -> None:
        ctx = zmq.Context()
        sub, endpoint, next_status = None, "", 0.0
        clock = threading.Event()  # (only waited on: the stop event ends the loop)
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + STATUS_PERIOD
                    found = self.ask_status()
                    if found and found != endpoint:
                        if sub is not None:
                            sub.close(linger=0)
                        sub, endpoint = self.subscribe(ctx, found), found
                if sub is None:
                    clock.wait(0.1)
                elif sub.poll(100, zmq.POLLIN):
                    self.take(sub)
        finally:
            ctx.destroy(linger=0)

    def ask_status(self) -> str:
        """The daemon's status into the state; returns its view endpoint ("" when none answers)."""
        try:
            status = query_status(self.control, timeout=1.0)
        except NoDaemon as exc:
            self.state.set_info(status={"state": "no daemon", "error": str(exc)})
            return ""
        peaks = status.get("peaks") or {}
        self.state.set_info(status=status, peaks=list(peaks.get("peaks") or []),
                            peaks_seq=int(peaks.get("seq", 0) or 0), peaks_from=int(peaks.get("from_frame", 0) or 0))
        return str((status.get("endpoints") or {}).get("view_endpoint") or "")

    @staticmethod
    def subscribe(ctx: Any, endpoint: str) -> Any:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 16)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        return sub

    def take(self, sub: Any) -> None:
        """Every update waiting on ``sub`` into the state."""
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg, buffers = decode(frames)
                if not isinstance(msg, ViewUpdate):
                    raise ProtocolError("unknown_type", f"a {type(msg).__name__} on the view socket")
            except ProtocolError as exc:
                self.bad_updates += 1
                if self.bad_updates == 1:
                    log.warning("view socket: %s; ignored (and counted, bad_updates)", exc)
                continue
            rows = len(msg.frames)
            axes = np.frombuffer(buffers[0], np.float64).reshape(3, msg.n_r)
            lineouts = np.frombuffer(buffers[1], np.float32).reshape(rows, msg.n_r)
            fits = (np.frombuffer(buffers[2], np.float64).reshape(rows, msg.n_peaks, FIT_COLUMNS)
                    if msg.n_peaks else None)
            self.state.append(axes, msg.frames, lineouts, fits, run=msg.run, name=msg.name, file=msg.file,
                              written=msg.written, source="daemon", fit_model=msg.fit_model)


class FileFeed(threading.Thread):
    """Keeps ``state`` up to date from the results file ``path`` (at most ``rows`` rows)."""

    def __init__(self, path: str | Path, state: ViewState, stop: threading.Event, rows: int) -> None:
        super().__init__(name="view-file-feed", daemon=True)
        self.path, self.state, self.stop, self.rows = Path(path), state, stop, max(2, int(rows))
        self.seen = -1

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.read():
                    return  # the run is complete: nothing more will come
            except (OSError, KeyError, ValueError) as exc:
                self.state.set_info(status={"state": "unreadable", "error": f"{self.path}: {exc}"})
            self.stop.wait(FILE_PERIOD)

    def read(self) -> bool:
        """Read the file once (when it has new rows); True when its run is complete."""
        import h5py

        try:
            f = h5py.File(self.path, "r", swmr=True)
        except OSError:
            f = h5py.File(self.path, "r")
        with f:
            data = f["entry/data"]
            intensity = data["I"]
            n = int(intensity.attrs.get("frames_written", intensity.shape[0]))
            n = min(n, intensity.shape[0])
            complete = bool(intensity.attrs.get("run_complete", f["entry"].attrs.get("run_complete", False)))
            if n == self.seen:
                return complete
            rows = _spaced(n, self.rows)
            axes = np.stack([data["r_px"][()], data["radial_axis"][()],
                             data["q"][()] if "q" in data else np.full(intensity.shape[1], np.nan)])
            fits = f["entry/fit/peaks"][rows] if "entry/fit/peaks" in f and n else None
            model = f["entry/fit"].attrs.get("model", "pv") if "entry/fit" in f else "pv"  # (pv before the key)
            model = model.decode() if isinstance(model, bytes) else str(model)
            peaks, seq, start = _peaks_in_force(f)
            self.state.replace(axes, data["frame_index"][rows] if n else np.zeros(0, np.int64),
                               intensity[rows] if n else np.zeros((0, intensity.shape[1]), np.float32), fits,
                               run=0, name=self.path.stem, file=str(self.path.resolve()), written=n, source="file",
                               fit_model=model,
                               peaks=peaks, peaks_seq=seq, peaks_from=start,
                               status={"state": "complete" if complete else "growing"})
            self.seen = n
            return complete


def _spaced(n: int, most: int) -> list[int]:
    """At most ``most`` row numbers of ``0 .. n - 1``, evenly spaced, increasing, the last one always in."""
    if n <= most:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, most).round()]  # (distinct: the step is > 1)


def _peaks_in_force(f: Any) -> tuple[list[float], int, int]:
    """(peaks, seq, from_frame) of the file's last peak-list change, or its configured peaks."""
    fit = f.get("entry/fit")
    if fit is None:
        return [], 0, 0
    upd = fit.get("peak_updates")
    if upd is not None and "seq" in upd and len(upd["seq"]):
        return ([float(v) for v in upd["peaks"][-1] if np.isfinite(v)], int(upd["seq"][-1]),
                int(upd["from_frame"][-1]))
    locations = fit["peak_locations"][()] if "peak_locations" in fit else []
    return [float(v) for v in locations if np.isfinite(v)], 0, 0

"""The writer process: Results (and the EndOfStream) in, one NeXus HDF5 file out (docs/DAEMON.md, "writer").

Sockets: results PULL (bind; the workers' Results and the ingest's EndOfStream arrive here), heartbeat PUSH
(connect to the supervisor). Results arrive in any order; the writer keeps the next expected ``frame_index`` and a
dict of early arrivals, and appends rows to :class:`~ringstream.writer.hdf5.Hdf5Writer` strictly in frame_index
order (a rejected frame is accounted for but writes no row). Rows are flushed to SWMR readers every
``run.save_interval`` frames and at least every second.

The HDF5 file is created on the first Result, so that ``reduction/engine`` records the engine the workers actually
used (the layout must exist before SWMR mode starts, and attributes cannot be added later); a run that ends before
any Result creates it at the end with the configured engine name.

Ending: once ``EndOfStream(n)`` has arrived and every index < n is written or rejected, the file is closed with
``run_complete = True``, a final heartbeat says "done" and ``run`` returns 0. On ``stop`` before that (a failure
elsewhere) the writer takes what is already queued, writes every result it holds in increasing frame_index order
(gaps allowed), closes with ``run_complete = False`` and returns 0.

Anything on the socket that does not decode (garbage, another protocol version, buffers that do not match the
header) is counted under ``protocol_errors_<kind>`` (logged once per kind) and ignored: the output is unaffected.
Counters: ``written``, ``rejected``, ``pending`` (held out of order), ``protocol_errors_<kind>``, ``duplicates``.
"""

from __future__ import annotations

import logging
import time

import zmq

from ..errors import RingstreamError
from ..geometry.cache import load_or_build
from ..ingest.process import HeartbeatSender, child_setup
from ..protocol import EndOfStream, PeakUpdate, ProtocolError, Result, Stop, result_arrays, result_curves
from ..transport.sockets import RejectLog, make_socket, recv_message
from .fit_hook import FitHook
from .hdf5 import Hdf5Writer, check_output_path

log = logging.getLogger("ringstream.writer")

#: the longest a written row waits before it is flushed to readers, in s (OUTPUTS.md: a reader sees it within 1 s)
FLUSH_PERIOD = 0.5

#: how long one wait for a message lasts before timers and ``stop`` are looked at, in ms
POLL_MS = 100

#: the longest the writer handles queued messages before it looks at its timers (flush, heartbeat), in s
BATCH_S = 0.1


def run(config, ready, stop) -> int:
    """Entry point of the writer process (see the module docstring). Returns the exit code."""
    child_setup(config, "writer")
    try:
        return _Writer(config).run(ready, stop)
    except RingstreamError as exc:
        log.error("%s", exc)
        return int(getattr(exc, "exit_code", 1))


class _Writer:
    def __init__(self, config) -> None:
        self.config = config
        self.save_interval = max(1, int(config.run.save_interval))
        self.counters: dict[str, int] = {"written": 0, "rejected": 0, "duplicates": 0}
        self.held: dict[int, tuple[Result, list]] = {}  # frame_index -> (result, buffers), early arrivals
        self.next_index = 0
        self.eos: EndOfStream | None = None
        self.h5: Hdf5Writer | None = None
        self.unflushed = 0
        self.first_unflushed = 0.0
        self.t_first = 0.0  # monotonic time of the first result
        self.fits: FitHook | None = None  # issue 5 interim fit streams
        self.peaks_sub = None

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def snapshot(self) -> dict:
        out = {**self.counters, **self.rejects.counters(), "pending": len(self.held), "next_index": self.next_index}
        if self.eos is not None:
            out["eos_frames"] = int(self.eos.n_frames)
        return out

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self, ready, stop) -> int:
        cfg = self.config
        self.params = cfg.load_params()
        self.imap, _ = load_or_build(self.params)
        self.path = check_output_path(cfg.run.output_h5, overwrite=bool(getattr(cfg.run, "overwrite", False)))
        self.write_2d = bool(self.params.Write2D)
        t = cfg.transport
        hwm = max(1, int(t.queue_depth or t.ring_slots))
        ctx = zmq.Context()
        self.rejects = RejectLog(log, "writer results socket")
        complete = False
        try:
            sock = make_socket(ctx, zmq.PULL, t.results_endpoint, bind=True, hwm=hwm)
            hb = HeartbeatSender(make_socket(ctx, zmq.PUSH, t.events_endpoint, bind=False, hwm=16), "writer", 0,
                                 cfg.supervisor.heartbeat_interval)
            hb.beat(self.snapshot(), state="starting", force=True)
            self.open_fitting(ctx)  # issue 5: PeakUpdates in, fit rows out (interim hook until issue 8)
            ready.set()
            while not self.finished():
                self.take_peak_updates()
                if stop.is_set():
                    while sock.poll(0, zmq.POLLIN) and not self.finished():
                        self.take_waiting(sock)  # what is already queued still counts
                    break
                if sock.poll(POLL_MS, zmq.POLLIN):
                    self.take_waiting(sock)
                self.maybe_flush()
                hb.beat(self.snapshot())
            complete = self.finished()
            if not complete:
                self.write_held()
                log.warning("stopped before the end of the run: %d frames written, run_complete false",
                            self.counters["written"])
            self.close(complete)
            n = self.next_index
            dt = time.monotonic() - self.t_first if self.t_first else 0.0
            log.info("%s: %d frames written, %d rejected, run_complete %s (%.1f frames/s after the first)",
                     self.path, self.counters["written"], self.counters["rejected"], complete,
                     (n - 1) / dt if dt > 0 else 0.0)
            hb.beat(self.snapshot(), state="done", force=True)
            return 0
        finally:
            if self.h5 is not None:  # an exception on the way: keep what was written, marked incomplete
                self.h5.close(run_complete=False)
            if getattr(self, "fits", None) is not None:
                self.fits.close()
            ctx.destroy(linger=500)

    def finished(self) -> bool:
        return self.eos is not None and self.next_index >= int(self.eos.n_frames)

    def take_waiting(self, sock) -> None:
        """Handle the messages already queued on ``sock`` (without waiting), for at most ``BATCH_S`` seconds so
        that flushes and heartbeats keep their pace under a continuous stream."""
        t_end = time.monotonic() + BATCH_S
        while not self.finished() and time.monotonic() < t_end:
            try:
                msg, buffers = recv_message(sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError as exc:
                self.rejects.record(exc)
                continue
            self.on_message(msg, buffers)

    def on_message(self, msg, buffers) -> None:
        if isinstance(msg, Result):
            self.on_result(msg, buffers)
        elif isinstance(msg, EndOfStream):
            if self.eos is None:
                log.info("end of stream: %d frames", msg.n_frames)
                self.eos = msg
                self.drop_beyond_eos()
            else:
                self.count("duplicates")
        elif isinstance(msg, Stop):
            log.info("stop message: %s", msg.reason or "(no reason)")
            self.eos = self.eos or EndOfStream(run_id="", n_frames=self.next_index)
        else:
            self.rejects.record(ProtocolError("unknown_type", f"unexpected {type(msg).__name__} message"))

    def on_result(self, msg: Result, buffers) -> None:
        idx = int(msg.frame_index)
        if not self.t_first:
            self.t_first = time.monotonic()
        if idx < self.next_index or idx in self.held:
            self.count("duplicates")
            return
        if self.eos is not None and idx >= int(self.eos.n_frames):
            self.count("beyond_eos")
            return
        self.held[idx] = (msg, buffers)
        while self.next_index in self.held:
            self.emit(*self.held.pop(self.next_index))
            self.next_index += 1

    def drop_beyond_eos(self) -> None:
        n = int(self.eos.n_frames)
        for idx in [i for i in self.held if i >= n]:
            del self.held[idx]
            self.count("beyond_eos")

    # ------------------------------------------------------------------------------------------- the file
    def writer(self, engine_name: str) -> Hdf5Writer:
        if self.h5 is None:
            self.h5 = Hdf5Writer(self.path, self.imap, self.params, engine_name=engine_name or
                                 str(self.config.workers.engine), write_2d=self.write_2d)
            log.info("writing %s (engine %s, %d x %d bins%s)", self.path, engine_name, self.imap.n_r,
                     self.imap.n_eta, ", cakes" if self.write_2d else "")
        return self.h5

    def emit(self, msg: Result, buffers) -> None:
        """Append one result's row (ok) or account for it (rejected); in frame_index order."""
        h5 = self.writer(msg.engine)
        if msg.status != "ok":
            self.count("rejected")
            if self.counters["rejected"] <= 5:
                log.warning("frame %d rejected: %s", msg.frame_index, msg.reason)
            return
        try:
            lineout, cake, _ = result_arrays(msg, buffers)
            if msg.n_r != h5.n_r or (self.write_2d and (cake is None or msg.n_eta != h5.n_eta)):
                raise ProtocolError("size", f"result {msg.frame_index}: n_r {msg.n_r}, n_eta {msg.n_eta}, "
                                            f"has_cake {msg.has_cake}; the file has {h5.n_r} x {h5.n_eta} bins"
                                            f"{' and cakes' if self.write_2d else ''}")
        except ProtocolError as exc:
            self.rejects.record(exc)
            self.count("rejected")
            return
        h5.append(msg.frame_index, msg.source_id, msg.timestamp or None, lineout,
                  cake if self.write_2d else None)
        if self.fits is not None:
            self.fits.append(msg.frame_index, result_arrays(msg, buffers)[2], result_curves(msg, buffers))
        self.count("written")
        if self.unflushed == 0:
            self.first_unflushed = time.monotonic()
        self.unflushed += 1
        if self.unflushed >= self.save_interval:
            self.flush()

    def flush(self) -> None:
        if self.h5 is not None:
            self.h5.flush()
        if self.fits is not None:
            self.fits.flush()
        self.unflushed = 0

    # ----------------------------------------------------------------------------- fitting (issue 5, interim)
    def open_fitting(self, ctx) -> None:
        """With fitting on: the fit streams beside the HDF5 file and a SUB socket for PeakUpdates."""
        from ..fitting import peak_slots

        self.fits, self.peaks_sub = None, None
        slots = peak_slots(self.params, int(getattr(self.config.fit, "slots", 0) or 0))
        if not slots:
            return
        self.fits = FitHook(self.path.parent, slots)
        endpoint = str(getattr(self.config.transport, "peaks_endpoint", "") or "")
        if endpoint and endpoint != "auto":
            self.peaks_sub = ctx.socket(zmq.SUB)
            self.peaks_sub.setsockopt(zmq.LINGER, 0)
            self.peaks_sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.peaks_sub.connect(endpoint)

    def take_peak_updates(self) -> None:
        while self.peaks_sub is not None:
            try:
                msg, _ = recv_message(self.peaks_sub, zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError:
                continue
            if isinstance(msg, PeakUpdate):
                self.fits.peak_update(msg, self.h5)

    def maybe_flush(self) -> None:
        if self.unflushed and time.monotonic() - self.first_unflushed >= FLUSH_PERIOD:
            self.flush()

    def write_held(self) -> None:
        """Write every held result in increasing frame_index order, leaving gaps (a stop before the end)."""
        for idx in sorted(self.held):
            self.emit(*self.held.pop(idx))
            self.next_index = idx + 1

    def close(self, complete: bool) -> None:
        h5 = self.writer(str(self.config.workers.engine))
        self.h5 = None
        h5.close(run_complete=complete)

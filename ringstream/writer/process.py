"""The writer process: Results (and the EndOfStream) in, the run's output files out (docs/DAEMON.md, "writer").

Every output goes through :class:`~ringstream.writer.outputs.RunOutputs`, the same sinks as the offline
``ringstream integrate``: the NeXus HDF5 file, the GSAS-II zarr.zip (``[run] zarr_output``, unless ``no_zarr``),
fit.bin / fit_curves.bin when fitting, and the MIDAS binaries with ``[run] midas_binaries``. With ``Write2D 0`` the
workers send partial omega sums (:class:`~ringstream.protocol.OmegaPartial`) instead of per-frame cakes; the
writer waits up to ``SUMS_WAIT_S`` after the last frame for the last of them. PeakUpdates are recorded under
``/entry/fit/peak_updates``. The zarr.zip is published every ``run.save_interval`` frames and at the end; the
other files are flushed then and at least every ``FLUSH_PERIOD``. A full disk stops the writer with exit code 3
after closing what it could (one error line names the file and the frames flushed).

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
Counters: ``written``, ``rejected``, ``pending`` (held out of order), ``protocol_errors_<kind>``, ``duplicates``,
``omega_groups``, ``omega_partials``, ``zarr_published``, ``peak_updates`` (``peak_updates_ignored`` without
fitting).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import zmq

from ..errors import OutputExists, RingstreamError
from ..fitting import peak_slots
from ..geometry.cache import load_or_build
from ..protocol import (
    EndOfStream,
    OmegaPartial,
    PeakUpdate,
    ProtocolError,
    Result,
    Stop,
)
from ..transport.child import HeartbeatSender, receive, run_child
from ..transport.sockets import RejectLog, make_socket, recv_message, results_hwm
from .hdf5 import check_output_path
from .outputs import FrameRecord, OutputError, RunOutputs, default_zarr_path, numeric_keys, record_from_result
from .repair import clear_if_crashed

log = logging.getLogger("ringstream.writer")

#: the longest a written row waits before it is flushed to readers, in s (docs/OUTPUTS.md: a reader sees it
#: within 1 s)
FLUSH_PERIOD = 0.5

#: what ``ringstream run`` says of an output file that exists: it has no ``--overwrite``, since a rerun or a
#: restart must not destroy the last run's results
KEEP_RESULTS = ("ringstream run never replaces results: move it away or choose other outputs "
                "(--output-h5, --zarr-output or --no-zarr, --midas-binaries)")

#: how long one wait for a message lasts before timers and ``stop`` are looked at, in ms
POLL_MS = 100

#: the longest the writer handles queued messages before it looks at its timers (flush, heartbeat), in s
BATCH_S = 0.1

#: after the last frame, how long the writer waits for the workers' last partial omega sums, in s
SUMS_WAIT_S = 5.0


def run(config, ready, stop) -> int:
    """Entry point of the writer process (see the module docstring). Returns the exit code."""
    return run_child(config, "writer", lambda: _Writer(config).run(ready, stop), log)


def prepare_outputs(config) -> None:
    """What the supervisor checks before any child starts: a results file a killed writer left is made readable
    again (:func:`~.repair.clear_if_crashed`; it is still not replaced), and the output path is free and writable
    (:func:`~.hdf5.check_output_path`), so that a problem with it stops the run before it starts."""
    clear_if_crashed(config.run.output_h5)
    with never_replace():
        check_output_path(config.run.output_h5, overwrite=False)


@contextmanager
def never_replace() -> Iterator[None]:
    """Around the daemon's creation of output files: an :class:`~ringstream.errors.OutputExists` names
    :data:`KEEP_RESULTS` as the remedy, not ``--overwrite`` (which only ``integrate`` and ``export`` have)."""
    try:
        yield
    except OutputExists as exc:
        raise OutputExists(exc.path, KEEP_RESULTS) from None


class _Writer:
    def __init__(self, config) -> None:
        self.config = config
        self.save_interval = max(1, int(config.run.save_interval))
        self.counters: dict[str, int] = {"written": 0, "rejected": 0, "duplicates": 0}
        self.held: dict[int, tuple[Result, list]] = {}  # frame_index -> (result, buffers), early arrivals
        self.next_index = 0
        self.eos: EndOfStream | None = None
        self.outputs: RunOutputs | None = None
        self.early: list[tuple[str, tuple]] = []  # partial sums and peak updates that came before the first Result
        self.t_frames_done = 0.0  # monotonic time every frame was accounted for (waiting for partial sums)
        self.unsaved = 0
        self.unflushed = 0
        self.first_unflushed = 0.0
        self.t_first = 0.0  # monotonic time of the first result
        self.sums_missing = 0
        self.peaks_sub = None  # PeakUpdates published by the supervisor
        self.peak_seqs: set[int] = set()  # recorded once each (the supervisor publishes them again)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def snapshot(self) -> dict:
        out = {**self.counters, **self.rejects.counters(), "pending": len(self.held), "next_index": self.next_index}
        outputs = self.outputs
        if outputs is not None:
            out.update(omega_groups=outputs.counters["omega_groups"], zarr_published=outputs.counters["zarr_published"],
                       sums_waiting=outputs.sums_waiting)
        if self.eos is not None:
            out["eos_frames"] = int(self.eos.n_frames)
        return out

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self, ready, stop) -> int:
        cfg = self.config
        self.params = cfg.load_params()
        self.imap, _ = load_or_build(self.params)
        with never_replace():  # a rerun or a restart must not destroy the last run's results
            self.path = check_output_path(cfg.run.output_h5)
        self.write_2d = bool(self.params.Write2D)
        self.n_peaks = peak_slots(self.params, cfg.fit.slots)
        self.zarr_path = None if cfg.run.no_zarr else (cfg.run.zarr_output or default_zarr_path(self.path))
        self.midas_dir = cfg.run.midas_binaries or None
        t = cfg.transport
        hwm = max(1, int(t.queue_depth or t.ring_slots))
        ctx = zmq.Context()
        self.rejects = RejectLog(log, "writer results socket")
        complete = False
        try:
            sock = make_socket(ctx, zmq.PULL, t.results_endpoint, bind=True,
                               hwm=results_hwm(t.results_queue_mb, hwm, self.imap.n_r, self.imap.n_eta,
                                               self.write_2d, self.n_peaks))
            hb = HeartbeatSender(make_socket(ctx, zmq.PUSH, t.events_endpoint, bind=False, hwm=16), "writer", 0,
                                 cfg.supervisor.heartbeat_interval)
            hb.beat(self.snapshot(), state="starting", force=True)
            self.open_peaks(ctx)  # peak-list changes, recorded under /entry/fit
            gc.collect()
            gc.freeze()  # what exists now (modules, the map, the files) lives as long as the process: not rescanned
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
            with hb.beating(self.snapshot()):  # closing (the last omega groups, the zarr.zip) can take seconds
                self.close(complete)
            if self.sums_missing:
                log.warning("%d integrated frames had no partial omega sum after %.0f s (a worker stopped?); "
                            "their groups hold the frames that arrived", self.sums_missing, SUMS_WAIT_S)
            n = self.next_index
            dt = time.monotonic() - self.t_first if self.t_first else 0.0
            log.info("%s: %d frames written, %d rejected, run_complete %s (%.1f frames/s after the first)",
                     self.path, self.counters["written"], self.counters["rejected"], complete,
                     (n - 1) / dt if dt > 0 else 0.0)
            hb.beat(self.snapshot(), state="done", force=True)
            return 0
        except OutputError as exc:  # a full disk: close what can be closed, one error line, exit 3
            log.error("%s; the files hold what was flushed before it (run 'ringstream repair %s' if it does not "
                      "open)", exc, self.path)
            self.abort(quiet=True)
            logging.shutdown()
            # HDF5 may crash tearing down a file whose last writes failed: leave now, the file is as flushed
            os._exit(int(exc.exit_code))
        finally:
            self.abort()  # an exception on the way: keep what was written, marked incomplete
            ctx.destroy(linger=500)

    def abort(self, quiet: bool = False) -> None:
        """Close the files marked incomplete (``quiet``: a failure to close is not reported again)."""
        outputs, self.outputs = self.outputs, None
        if outputs is not None:
            try:
                outputs.close(run_complete=False)
            except (RingstreamError, OSError, RuntimeError) as exc:
                (log.debug if quiet else log.error)("%s", exc)

    def finished(self) -> bool:
        if self.eos is None or self.next_index < int(self.eos.n_frames):
            return False
        waiting = self.outputs.sums_waiting_at_end(int(self.eos.n_frames)) if self.outputs is not None else 0
        if not waiting:
            return True
        now = time.monotonic()
        self.t_frames_done = self.t_frames_done or now
        if now - self.t_frames_done < SUMS_WAIT_S:
            return False
        self.sums_missing = waiting
        return True

    def take_waiting(self, sock) -> None:
        """Handle the messages already queued on ``sock`` (without waiting), for at most ``BATCH_S`` seconds so
        that flushes and heartbeats keep their pace under a continuous stream."""
        t_end = time.monotonic() + BATCH_S
        copy = not self.write_2d  # lineouts: small frames, received as bytes (cheaper than Frame objects)
        on_result, on_message = self.on_result, self.on_message
        k = 0
        while True:
            if self.eos is not None and self.finished():  # (nothing is finished before the end of stream)
                return
            k += 1
            if k % 16 == 0 and time.monotonic() >= t_end:  # the clock every 16 messages, not every one
                return
            try:
                msg, buffers = recv_message(sock, zmq.NOBLOCK, copy)
            except zmq.Again:
                return
            except ProtocolError as exc:
                self.rejects.record(exc)
                continue
            if type(msg) is Result:
                on_result(msg, buffers)
            else:
                on_message(msg, buffers)

    def on_message(self, msg, buffers) -> None:
        if isinstance(msg, Result):
            self.on_result(msg, buffers)
        elif isinstance(msg, OmegaPartial):
            self.count("omega_partials")
            self.on_side(("partial", (msg, buffers)))
        elif isinstance(msg, PeakUpdate):
            self.on_peak_update(msg)
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
        if idx == self.next_index:  # in order: written now, without a stay in the dict
            self.emit(msg, buffers)
            self.next_index = idx + 1
            if not self.held:
                return
        else:
            self.held[idx] = (msg, buffers)
        while self.next_index in self.held:
            self.emit(*self.held.pop(self.next_index))
            self.next_index += 1

    def on_side(self, item) -> None:
        """A partial omega sum or a PeakUpdate: handled now, or kept until the files exist."""
        if self.outputs is None:
            self.early.append(item)
            return
        kind, args = item
        if kind == "partial":
            msg, buffers = args
            partial = np.frombuffer(buffers[0], dtype="<f8").reshape(msg.n_r, msg.n_eta)
            try:
                self.outputs.add_partial(msg.group, msg.n_frames, partial)
            except ValueError as exc:
                self.rejects.record(ProtocolError("size", f"omegasum from worker {msg.worker}: {exc}"))
        else:
            (msg,) = args
            ok = self.outputs.peak_update(msg.seq, msg.from_frame, msg.peaks, msg.origin)
            self.count("peak_updates" if ok else "peak_updates_ignored")
            if ok:
                log.info("peak update %d from frame %d (%s): %s", msg.seq, msg.from_frame, msg.origin, msg.peaks)

    def drop_beyond_eos(self) -> None:
        n = int(self.eos.n_frames)
        for idx in [i for i in self.held if i >= n]:
            del self.held[idx]
            self.count("beyond_eos")

    # ------------------------------------------------------------------------------------------- the file
    def open_outputs(self, engine_name: str, metadata=None) -> RunOutputs:
        """The run's outputs, created by the first call (with the engine the workers used)."""
        if self.outputs is None:
            frames = int(self.config.source.frames or 0) if self.config.source.kind == "simulated" else 0
            with never_replace():
                self.outputs = RunOutputs(self.path, self.imap, self.params, engine_name=engine_name or
                                          str(self.config.workers.engine), n_peaks=self.n_peaks,
                                          zarr_path=self.zarr_path, midas_dir=self.midas_dir,
                                          metadata_keys=numeric_keys(metadata), expected_frames=frames,
                                          sums_from_workers=not self.write_2d)
            log.info("writing %s (engine %s, %d x %d bins%s%s%s)", self.path, engine_name, self.imap.n_r,
                     self.imap.n_eta, ", cakes" if self.write_2d else "", f", {self.n_peaks} peaks" if self.n_peaks
                     else "", f", zarr {self.zarr_path}" if self.zarr_path else "")
            early, self.early = self.early, []
            for item in early:
                self.on_side(item)
        return self.outputs

    def emit(self, msg: Result, buffers) -> None:
        """Append one result's row (ok) or account for it (rejected); in frame_index order."""
        out = self.outputs if self.outputs is not None else self.open_outputs(msg.engine, msg.metadata)
        if msg.status != "ok":
            self.count("rejected")
            if self.counters["rejected"] <= 5:
                log.warning("frame %d rejected: %s", msg.frame_index, msg.reason)
            out.append(FrameRecord(int(msg.frame_index), None, msg.source_id, metadata=msg.metadata,
                                   reason=msg.reason))
            return
        try:
            rec = record_from_result(msg, buffers)
            h5 = out.h5
            if msg.n_r != h5.n_r or (self.write_2d and (rec.cake is None or msg.n_eta != h5.n_eta)):
                raise ProtocolError("size", f"result {msg.frame_index}: n_r {msg.n_r}, n_eta {msg.n_eta}, "
                                            f"has_cake {msg.has_cake}; the file has {h5.n_r} x {h5.n_eta} bins"
                                            f"{' and cakes' if self.write_2d else ''}")
            if msg.n_peaks > self.n_peaks:
                raise ProtocolError("size", f"result {msg.frame_index}: {msg.n_peaks} peak rows, the run has "
                                            f"{self.n_peaks} (fitting.peak_slots)")
        except ProtocolError as exc:
            self.rejects.record(exc)
            self.count("rejected")
            out.append(FrameRecord(int(msg.frame_index), None, msg.source_id, metadata=msg.metadata,
                                   reason=str(exc)))
            return
        if not self.write_2d:
            rec.cake = None
        out.append(rec)
        self.count("written")
        if self.unflushed == 0:
            self.first_unflushed = time.monotonic()
        self.unflushed += 1
        self.unsaved += 1
        if self.unsaved >= self.save_interval:
            self.save()

    def save(self) -> None:
        if self.outputs is not None:
            self.outputs.save()
        self.unflushed = self.unsaved = 0

    def flush(self) -> None:
        if self.outputs is not None:
            self.outputs.flush()
        self.unflushed = 0

    # ------------------------------------------------------------------------------------- peak-list updates
    def open_peaks(self, ctx) -> None:
        """With fitting on: a SUB socket for the PeakUpdates the supervisor publishes."""
        self.peaks_sub = None
        endpoint = self.config.transport.peaks_endpoint
        if not self.n_peaks or not endpoint or endpoint == "auto":
            return
        self.peaks_sub = ctx.socket(zmq.SUB)
        self.peaks_sub.setsockopt(zmq.LINGER, 0)
        self.peaks_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.peaks_sub.connect(endpoint)

    def take_peak_updates(self) -> None:
        """Record each PeakUpdate waiting on the SUB socket once (the same socket carries the ingest's requests)."""
        while self.peaks_sub is not None:
            try:
                got = receive(self.peaks_sub, self.rejects, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if got is not None and isinstance(got[0], PeakUpdate):
                self.on_peak_update(got[0])

    def on_peak_update(self, msg: PeakUpdate) -> None:
        """Record a PeakUpdate once per seq, whichever socket it came on (the supervisor publishes it again)."""
        if int(msg.seq) not in self.peak_seqs:
            self.peak_seqs.add(int(msg.seq))
            self.on_side(("peaks", (msg,)))

    def maybe_flush(self) -> None:
        if self.unflushed and time.monotonic() - self.first_unflushed >= FLUSH_PERIOD:
            self.flush()

    def write_held(self) -> None:
        """Write every held result in increasing frame_index order, leaving gaps (a stop before the end)."""
        for idx in sorted(self.held):
            self.emit(*self.held.pop(idx))
            self.next_index = idx + 1

    def close(self, complete: bool) -> None:
        outputs = self.open_outputs(str(self.config.workers.engine))
        self.outputs = None
        if self.eos is not None and self.eos.counters:
            outputs.source_counters(self.eos.counters)  # PVA gaps, frames missed, drops by reason: into the file
        outputs.close(run_complete=complete)

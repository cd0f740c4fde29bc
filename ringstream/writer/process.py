"""The writer process: Results (and the EndOfStream) in, the run's output files out (docs/DAEMON.md, "writer").

Every output goes through :class:`~ringstream.writer.outputs.RunOutputs`, the same sinks as the offline
``ringstream integrate``: the NeXus HDF5 file, the GSAS-II zarr.zip (``[run] zarr_output``, unless ``no_zarr``),
fit.bin / fit_curves.bin when fitting, and the MIDAS binaries with ``[run] midas_binaries``. With ``Write2D 0`` the
workers send partial omega sums (:class:`~ringstream.protocol.OmegaPartial`) instead of per-frame cakes; the
writer waits up to ``SUMS_WAIT_S`` after the last frame for the last of them. PeakUpdates are recorded under
``/entry/fit/peak_updates``. The zarr.zip is published every ``run.save_interval`` frames and at the end; the
other files are flushed then and at least every ``FLUSH_PERIOD``. A full disk stops the writer with exit code 3
after closing what it could (one error line names the file and the frames flushed).

Sockets: results PULL (bind; the workers' Results and the ingest's EndOfStream arrive here), acknowledgements PUSH
(connect to the ingest's ``release_endpoint``), peaks SUB (the supervisor's PeakUpdates and WorkerGone notices),
heartbeat PUSH (connect to the supervisor), and the view XPUB (bind; :mod:`ringstream.writer.view_feed`: decimated
lineouts and fits for ``ringstream view``, nothing while no viewer subscribes).

Delivery (docs/DAEMON.md, "Delivery"): the writer acknowledges each frame to the ingest once it holds the frame's
Result (and, when workers send partial omega sums, the sum that holds the frame: a partial sum follows the Results
of its frames), so that the ingest frees its ring slot; an unacknowledged frame is sent again should its worker
die. On a WorkerGone from the supervisor the writer ignores every later message of that worker process
(``fenced_dropped``), then passes the notice on to the ingest behind the acknowledgements already sent. A replacement
ingest's :class:`~ringstream.protocol.ResumeQuery` is answered (:class:`~ringstream.protocol.Missing`, on the
acknowledgement socket, after the acknowledgements) once every worker process it names is fenced: the frames asked
about whose Result, or whose partial omega sum, the writer does not hold (:func:`missing_frames`).

After each flush the writer tells the ingest, which tells every worker, below which frame its files hold everything
for good (:class:`~ringstream.protocol.Flushed`: rows flushed and the omega-sum groups of those frames written):
the workers keep what they sent until then. A writer that dies (``kill -9``) is replaced by the supervisor with
``resume``: the replacement reopens every run the index of runs says is open where its files were flushed
(:meth:`~ringstream.writer.outputs.RunOutputs.resume`: the file repaired and cut to its durable frames, the
MIDAS streams and the zarr.zip to match), announces that point (``Flushed(restart=True)``), and gets again from the
workers everything from there on and from the ingest the RunStart and EndOfStream messages of the runs not written
in full; frames its files already hold are dropped as duplicates, a partial sum whose frames were already summed
too (``duplicate_partials``).

A partial omega sum goes to the run it names, and to no other: group numbers count within each run. One of a run not
known yet waits for the run (:meth:`_Writer.run_of`): its RunStart comes from the ingest on another connection, and
a replacement writer gets it again only once its Flushed has reached the ingest, while the workers' new partial sums
come at once. One of a run written and closed is dropped (``stale_run_messages``).

Results arrive in any order; the writer keeps the next expected ``frame_index`` and a dict of early arrivals, and
appends rows to :class:`~ringstream.writer.hdf5.Hdf5Writer` strictly in frame_index order (a rejected frame is
accounted for but writes no row). Rows are flushed to SWMR readers every
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
Counters: ``written``, ``rejected``, ``pending`` (held out of order), ``protocol_errors_<kind>``, ``duplicates`` (a
frame's Result again: a frame sent again after its worker died), ``fenced_dropped``, ``acknowledged``,
``omega_groups``, ``omega_partials``, ``zarr_published``, ``peak_updates`` (``peak_updates_ignored`` without
fitting).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import zmq

from ..compression import blocks_carry_over
from ..errors import OutputExists, RingstreamError
from ..fitting import peak_slots
from ..geometry.cache import load_or_build
from ..geometry.mask_store import ExtraMask, flagged, load_stored_mask, store_dir
from ..procs import return_free_memory
from ..protocol import (
    MASK_KEY,
    RUN_START_KEY,
    EndOfStream,
    Flushed,
    FrameAck,
    Missing,
    OmegaPartial,
    PeakUpdate,
    ProtocolError,
    Resent,
    Result,
    ResumeQuery,
    RunStart,
    Stop,
    WorkerGone,
)
from ..runs.naming import OutputFolderError, make_folders
from ..runs.state import state_dir_of
from ..trace import ACKED, PARTIAL_IN, RESULT_IN, StageTrace, open_trace
from ..transport.child import HeartbeatSender, receive, run_child
from ..transport.ring_size import CPU_SLOTS
from ..transport.security import refused_counters, serve_remote, stop_authenticator
from ..transport.sockets import (
    RejectLog,
    cake_itemsize,
    frames_per_partial,
    make_socket,
    partial_itemsize,
    recv_message,
    results_hwm,
    send_message,
)
from .midas_binaries import FIT_BIN
from .outputs import FrameRecord, OutputError, RunOutputs, numeric_keys, record_from_result
from .precision import map_noise_model
from .runs import Run, RunBook
from .storage import CakeChunks, Chunks
from .view_feed import ViewFeed

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

#: the writer's exit code when the last run's outputs failed (a full disk, a folder that cannot be written)
EXIT_OUTPUT_FAILED = 3

#: the writer's Flushed watermark goes out again this often even when it has not moved, in s
FLUSHED_AGAIN_S = 1.0

#: after the last frame, how long the writer waits for the workers' last partial omega sums, in s
SUMS_WAIT_S = 5.0

#: after a worker died, how long the writer waits for the partial sums of the frames it held (they are integrated
#: again by another worker, which may itself be starting), in s
RESENT_SUMS_WAIT_S = 60.0

#: how long a ResumeQuery waits for the WorkerGone notices of the workers it names before it is answered anyway, s
FENCE_WAIT_S = 10.0


def missing_frames(first: int, end: int, next_index: int, held, awaiting_sum) -> list[int]:
    """The frames ``first .. end - 1`` the writer lacks, in increasing order: those not written (every index below
    ``next_index`` is) and not ``held`` (early arrivals), and those whose Result is here but whose partial omega sum
    is not (``awaiting_sum``: the worker that would have sent it is gone)."""
    lacking = {i for i in range(max(int(first), int(next_index)), int(end)) if i not in held}
    lacking.update(i for i in awaiting_sum if first <= i < end)
    return sorted(lacking)


def run(config, ready, stop, resume: bool = False, stream_end: int = -1) -> int:
    """Entry point of the writer process (see the module docstring); ``resume``: a replacement for a writer that
    died, continuing the open runs in their files; ``stream_end``: the stream's end when the ingest had already
    ended (-1: it has not). Returns the exit code."""
    return run_child(config, "writer", lambda: _Writer(config, resume, stream_end).run(ready, stop), log)


def prepare_outputs(config) -> list[dict]:
    """What the supervisor does before any child starts: the output templates and the state directory are checked
    (a problem stops the daemon before it starts), and the runs a previous service left open (killed, crashed,
    power lost) are repaired and marked interrupted (:meth:`~.runs.RunBook.recover`). Returns those runs."""
    return RunBook(config).recover()


@contextmanager
def never_replace() -> Iterator[None]:
    """Around the daemon's creation of output files: an :class:`~ringstream.errors.OutputExists` names
    :data:`KEEP_RESULTS` as the remedy, not ``--overwrite`` (which only ``integrate`` and ``export`` have)."""
    try:
        yield
    except OutputExists as exc:
        raise OutputExists(exc.path, KEEP_RESULTS) from None


def _run_start_fields(text) -> dict:
    """The RunStart fields a run's first frame carries (JSON text under ``RUN_START_KEY``); {} for none or junk."""
    if not isinstance(text, str):
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) and isinstance(fields.get("meta", {}), dict) else {}


class _Writer:
    #: per-frame stage stamps ([supervisor] trace_dir, ringstream/trace.py), or None
    trace: StageTrace | None = None

    def __init__(self, config, resume: bool = False, stream_end: int = -1) -> None:
        self.auth = None  # the ZAP handler of the results socket's remote endpoint
        self.config = config
        self.resume = bool(resume)
        self.stream_end = int(stream_end)
        self.peaks_from = 0  # PeakUpdates from before this frame are not recorded (set by a replacement writer)
        self.flushed_below = -1  # the last Flushed watermark (the files hold every frame below it for good)
        self.t_flushed = 0.0  # and when it was sent (0: not sent yet, the ingest took nothing)
        self.restart_untold = False  # a replacement writer's first Flushed (restart) did not go out yet
        self.summed_frames: set[int] = set()  # frames in the partial sums taken, not yet below the watermark
        self.resent_from: set[int] = set()  # worker processes that sent again what they kept (Resent)
        self.save_interval = max(1, int(config.run.save_interval))
        self.noise_model: np.ndarray | None = None  # per-bin noise model of [output] cake_noise_fraction (run())
        self.counters: dict[str, int] = {"written": 0, "rejected": 0, "duplicates": 0, "runs_complete": 0,
                                         "runs_failed": 0, "dropped_output_failed": 0}
        self.held: dict[int, tuple[Result, list]] = {}  # frame_index -> (result, buffers), early arrivals
        self.next_index = 0
        self.eos: EndOfStream | None = None  # the final EndOfStream: the daemon stops after its run
        self.runs: dict[str, Run] = {}  # announced or seen, not yet closed
        # partial sums of runs not known yet (their RunStart and first frame are still on their way): run_id -> items
        self.partials_ahead: dict[str, list] = {}
        self.current: Run | None = None  # the run the in-order frames go to
        self.closing: list[Run] = []  # runs whose frames are all written, waiting for their last partial sums
        self.unsaved = 0
        self.unflushed = 0
        self.first_unflushed = 0.0
        self.t_first = 0.0  # monotonic time of the first result
        self.sums_missing = 0
        self.peaks_sub = None  # PeakUpdates published by the supervisor
        self.peak_seqs: set[int] = set()  # recorded once each (the supervisor publishes them again)
        self.last_failed = False  # the last run's outputs failed (the exit code says so at the end)
        self.pending_peaks: list = []  # peak updates that came between runs (for the next run)
        self.broken: list = []  # outputs of failed runs, never closed (HDF5 may crash closing a file that failed)
        self.acks = None  # PUSH to the ingest: FrameAcks and WorkerGone notices
        self.view: ViewFeed | None = None  # decimated results for live viewers
        self.hb: HeartbeatSender | None = None
        self.to_ack: list[int] = []  # frames held now, to acknowledge
        self.trace = open_trace(config, "writer")
        self.awaiting_sum: set[int] = set()  # frames whose Result is here and whose partial omega sum is not
        self.summed: set[int] = set()  # frames in a partial sum whose Result is not here yet
        self.fenced: set[tuple[int, int]] = set()  # (worker, pid) of dead worker processes
        self.last_fence = 0.0  # monotonic time of the last WorkerGone
        self.resume_queries: list[tuple[ResumeQuery, float]] = []  # waiting for their fences: (query, when)

    @property
    def outputs(self) -> RunOutputs | None:
        """The outputs of the run the in-order frames go to (None between runs)."""
        return self.current.outputs if self.current is not None else None

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def snapshot(self) -> dict:
        out = {**self.counters, **self.rejects.counters(), "pending": len(self.held), "next_index": self.next_index,
               **refused_counters(self.auth)}
        if self.view is not None:
            out.update(self.view.counters)
        outputs = self.outputs
        if outputs is not None:
            out.update(omega_groups=outputs.counters["omega_groups"], zarr_published=outputs.counters["zarr_published"],
                       sums_waiting=outputs.sums_waiting)
        if self.eos is not None:
            out["eos_frames"] = int(self.eos.first_frame) + int(self.eos.n_frames)
        run = self.current
        if run is not None and run.paths is not None:  # (numbers only: the file and name are in the index of runs)
            out.update(run_number=run.number, run_frames=run.n_frames)
        return out

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self, ready, stop) -> int:
        cfg = self.config
        self.params = cfg.load_params()
        self.imap, _ = load_or_build(self.params)
        # the precision-bounded mode's per-bin noise model, made once for the geometry (None: lossless)
        self.noise_model = map_noise_model(self.imap, self.params.Normalize) if cfg.output.cake_noise_fraction \
            else None
        self.book = RunBook(cfg)
        self.write_2d = bool(self.params.Write2D)
        self.n_peaks = peak_slots(self.params, cfg.fit.slots)
        self.caked = int(cfg.fit.snip_iterations) if cfg.fit.per_eta and self.n_peaks else 0
        t = cfg.transport
        hwm = max(1, int(t.queue_depth or t.ring_slots or CPU_SLOTS))
        ctx = zmq.Context()
        # what the workers send: whole sums (and, one frame a group, cakes) compressed unless precision-bounded
        # (the zarr chunks travel only where the writer cannot make them of the HDF5 chunks' blocks)
        itemsize, lossless, zarr = 4 if cfg.output.cake_dtype == "float32" else 8, \
            not cfg.output.cake_noise_fraction, \
            not cfg.run.no_zarr and not blocks_carry_over(self.imap.n_r * self.imap.n_eta)
        self.rejects = RejectLog(log, "writer results socket")
        complete = False
        code = None
        try:
            sock = make_socket(ctx, zmq.PULL, t.results_endpoint, bind=True,
                               hwm=results_hwm(t.results_queue_mb, hwm, self.imap.n_r, self.imap.n_eta,
                                               self.write_2d, self.n_peaks * (1 + self.imap.n_eta * bool(self.caked)),
                                               frames_per_partial=frames_per_partial(
                                                   self.write_2d, self.params.OmegaSumFrames, cfg.workers.count),
                                               partial_itemsize=partial_itemsize(
                                                   self.params.OmegaSumFrames, itemsize, lossless, zarr),
                                               cake_itemsize=cake_itemsize(itemsize, lossless and int(
                                                   self.params.OmegaSumFrames) in (0, 1) and not
                                                   cfg.run.midas_binaries, zarr)))
            self.auth = serve_remote(ctx, sock, t, "results", "writer results socket")  # joined workers
            hb = self.hb = HeartbeatSender(make_socket(ctx, zmq.PUSH, t.events_endpoint, bind=False, hwm=16),
                                           "writer", 0, cfg.supervisor.heartbeat_interval)
            hb.beat(self.snapshot(), state="starting", force=True)
            self.open_peaks(ctx)  # peak-list changes (recorded under /entry/fit) and dead workers
            self.view = ViewFeed.open(ctx, cfg, self.imap, self.n_peaks)
            if t.release_endpoint and t.release_endpoint != "auto":
                self.acks = make_socket(ctx, zmq.PUSH, t.release_endpoint, bind=False, hwm=100_000)
            if self.resume:
                with hb.beating(self.snapshot()):  # (reopening a long run's files, its zarr.zip, takes seconds)
                    self.resume_runs()
            if not cfg.run.no_zarr:  # (zarr's import, ~0.6 s on a GPU host, is paid before ready, not in the run)
                import zarr.storage  # noqa: F401
            gc.collect()
            gc.freeze()  # what exists now (modules, the map, the files) lives as long as the process: not rescanned
            ready.set()
            if self.resume:  # the workers send again what they kept from here on, the ingest the runs' messages
                self.publish_flushed(restart=True)
            while not self.finished():
                self.take_peak_updates()
                if stop.is_set():
                    while sock.poll(0, zmq.POLLIN) and not self.finished():
                        self.take_waiting(sock)  # what is already queued still counts
                    break
                if sock.poll(POLL_MS, zmq.POLLIN):
                    self.take_waiting(sock)
                self.send_acks()
                if self.resume_queries:
                    self.answer_resume_queries()
                self.close_finished_runs()
                self.maybe_flush()
                self.publish_flushed()
                if self.view is not None:
                    self.view.tick(self.current)
                hb.beat(self.snapshot())
            self.send_acks()
            complete = self.finished()
            if not complete:
                self.write_held()
                log.warning("stopped before the end of the run: %d frames written, run_complete false",
                            self.counters["written"])
            with hb.beating(self.snapshot()):  # closing (the last omega groups, the zarr.zip) can take seconds
                self.close(complete)
            self.publish_flushed()  # the ingest waits for it before it ends
            if self.sums_missing:
                log.warning("%d integrated frames had no partial omega sum after %.0f s (a worker stopped?); "
                            "their groups hold the frames that arrived", self.sums_missing, SUMS_WAIT_S)
            n = self.next_index
            dt = time.monotonic() - self.t_first if self.t_first else 0.0
            log.info("%d frames written, %d rejected in %d run(s), the last complete %s (%.1f frames/s after the "
                     "first)", self.counters["written"], self.counters["rejected"], self.book.opened, complete,
                     (n - 1) / dt if dt > 0 else 0.0)
            hb.beat(self.snapshot(), state="done", force=True)
            code = EXIT_OUTPUT_FAILED if self.last_failed else 0
            return code
        except SystemExit as exc:  # stopped at once or the supervisor is gone (child_setup): files closed below
            code = exc.code if isinstance(exc.code, int) else 1
            raise
        finally:
            if self.trace is not None:
                self.trace.save()
            self.abort()  # an exception on the way: keep what was written, marked incomplete
            stop_authenticator(self.auth)
            ctx.destroy(linger=500)
            if self.broken:
                logging.shutdown()
                # HDF5 may crash tearing down a file whose writes failed: leave now, each such file is as flushed
                os._exit(code if code is not None else EXIT_OUTPUT_FAILED)

    def abort(self, quiet: bool = False) -> None:
        """Close the open runs' files marked incomplete (``quiet``: a failure to close is not reported again)."""
        runs = ([self.current] if self.current is not None else []) + self.closing
        self.current, self.closing = None, []
        for run in runs:
            outputs, run.outputs = run.outputs, None
            if outputs is not None:
                try:
                    outputs.close(run_complete=False)
                except (RingstreamError, OSError, RuntimeError) as exc:
                    (log.debug if quiet else log.error)("%s", exc)

    def finished(self) -> bool:
        """The final run is written and closed (or nothing is left to wait for)."""
        if self.eos is None or self.next_index < int(self.eos.first_frame) + int(self.eos.n_frames):
            return False
        self.close_finished_runs()
        return not self.closing

    def end_current(self) -> None:
        """The current run's frames are all written (its end is known and reached): it waits for its sums."""
        run = self.current
        if run is not None and run.end is not None and self.next_index >= run.end:
            self.current = None
            self.closing.append(run)

    def close_finished_runs(self) -> None:
        """Close each run whose frames are all written once its partial omega sums are in (or ``SUMS_WAIT_S``
        after its last frame; ``RESENT_SUMS_WAIT_S`` after the last worker death while frames of the run await
        their sums: a dead worker's frames are integrated again, and their sums come late but come)."""
        self.end_current()
        for run in list(self.closing):
            if run.eos_guessed:  # its EndOfStream (its end's reason, the source's counters) is still on its way
                now = time.monotonic()
                run.t_frames_done = run.t_frames_done or now
                if now - run.t_frames_done < SUMS_WAIT_S:
                    continue
            waiting = 0
            if run.outputs is not None and run.end is not None:
                waiting = run.outputs.sums_waiting_at_end(run.end - run.first_frame)
            if waiting:
                now = time.monotonic()
                run.t_frames_done = run.t_frames_done or now
                since = max(run.t_frames_done, self.last_fence)
                resent = self.last_fence and any(run.first_frame <= f < run.end for f in self.awaiting_sum)
                if now - since < (RESENT_SUMS_WAIT_S if resent else SUMS_WAIT_S):
                    continue
                self.sums_missing += waiting
            self.closing.remove(run)
            # closing a long run (its zarr.zip, its last groups) can take seconds: the heartbeat goes on meanwhile
            with self.hb.beating(self.snapshot()) if self.hb is not None else contextlib.nullcontext():
                self.close_run(run, complete=True)

    def take_waiting(self, sock) -> None:
        """Handle the messages already queued on ``sock`` (without waiting), for at most ``BATCH_S`` seconds so
        that flushes and heartbeats keep their pace under a continuous stream."""
        t_end = time.monotonic() + BATCH_S
        # lineouts: small frames, received as bytes (cheaper than Frame objects); cakes, or a partial sum every few
        # frames (OmegaSumFrames 1: one a frame), viewed in place (a copy of each would cost more than it saves)
        copy = not self.write_2d and frames_per_partial(False, self.params.OmegaSumFrames, self.config.workers.count) \
            not in range(1, 8)
        on_result, on_message = self.on_result, self.on_message
        k = 0
        while True:
            if self.eos is not None and self.finished():  # (nothing is finished before the end of stream)
                return
            k += 1
            if k % 8 == 0:
                self.send_acks()  # the ingest reuses the slots of frames acknowledged: every few messages
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
            if (int(msg.worker), int(msg.worker_pid)) in self.fenced:
                self.count("fenced_dropped")
                return
            frames = [int(f) for f in msg.frames]
            if self.trace is not None:
                self.trace.mark_many(PARTIAL_IN, frames)
            run = self.runs.get(msg.run_id)
            below = max(self.flushed_below, run.skip_below if run is not None else 0)  # in the files already
            # a run not known whose frames are all before the next one to write was written and closed
            stale = run is None and bool(msg.run_id) and bool(frames) and max(frames) < self.next_index
            again = stale or bool(frames) and (max(frames) < below or not self.summed_frames.isdisjoint(frames))
            if stale:
                self.count("stale_run_messages")
            elif again:
                self.count("duplicate_partials")  # sent again for a replacement writer, and had arrived before
            else:
                self.summed_frames.update(frames)
                self.count("omega_partials")
                self.on_side(("partial", (msg, buffers)))
            for f in frames:
                if f in self.awaiting_sum:
                    self.awaiting_sum.discard(f)
                    self.to_ack.append(f)
                elif not again:
                    self.summed.add(f)
        elif isinstance(msg, PeakUpdate):
            self.on_peak_update(msg)
        elif isinstance(msg, RunStart):
            if msg.run_id not in self.runs and int(msg.first_frame) < self.next_index:
                self.count("stale_run_messages")  # of a run written and closed (sent again for a new writer)
                return
            run = self.run_of(msg.run_id, int(msg.first_frame))
            run.first_frame, run.name, run.meta, run.reason = int(msg.first_frame), msg.name, dict(msg.meta), \
                msg.reason
        elif isinstance(msg, EndOfStream):
            closed = msg.run_id and msg.run_id not in self.runs and \
                int(msg.first_frame) + int(msg.n_frames) <= self.next_index
            if closed:
                self.count("stale_run_messages")  # of a run written and closed (sent again for a new writer)
                if not msg.final:
                    return
            elif msg.run_id:
                run = self.run_of(msg.run_id, int(msg.first_frame))
                if run.eos is not None and not run.eos_guessed:
                    self.count("duplicates")
                    return
                run.eos, run.eos_guessed = msg, False
            if msg.final:
                if self.eos is not None:
                    self.count("duplicates")
                    return
                log.info("end of stream: %d frames", int(msg.first_frame) + int(msg.n_frames))
                self.eos = msg
                self.drop_beyond_eos()
            self.end_current()
        elif isinstance(msg, ResumeQuery):
            self.resume_queries.append((msg, time.monotonic()))
        elif isinstance(msg, Resent):
            self.resent_from.add(int(msg.worker_pid))
        elif isinstance(msg, Stop):
            log.info("stop message: %s", msg.reason or "(no reason)")
            if self.eos is None:
                run = self.current
                first = run.first_frame if run is not None else self.next_index
                self.eos = EndOfStream(run_id=run.run_id if run is not None else "", first_frame=first,
                                       n_frames=self.next_index - first)
                if run is not None and run.eos is None:
                    run.eos = self.eos
        else:
            self.rejects.record(ProtocolError("unknown_type", f"unexpected {type(msg).__name__} message"))

    def on_result(self, msg: Result, buffers) -> None:
        idx = int(msg.frame_index)
        if self.fenced and (int(msg.worker), int(msg.worker_pid)) in self.fenced:
            self.count("fenced_dropped")  # its frame went to another worker
            return
        if self.trace is not None:
            self.trace.mark(RESULT_IN, idx)
        if not self.write_2d and msg.status == "ok":  # acknowledged with the partial sum that holds it
            if idx in self.summed:
                self.summed.discard(idx)
                self.to_ack.append(idx)
            else:
                self.awaiting_sum.add(idx)
        else:
            self.to_ack.append(idx)
        if not self.t_first:
            self.t_first = time.monotonic()
        if idx < self.next_index or idx in self.held:
            self.count("duplicates")
            return
        if self.eos is not None and idx >= int(self.eos.first_frame) + int(self.eos.n_frames):
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

    def run_of(self, run_id: str, first_frame: int) -> Run:
        """The run ``run_id`` (made when first heard of, with the partial sums of it that came before)."""
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = Run(run_id, first_frame)
            run.early.extend(self.partials_ahead.pop(run_id, ()))
        return run

    def on_side(self, item) -> None:
        """A partial omega sum (to its run) or a PeakUpdate (to the current run): handled now, or kept until the
        run's files exist."""
        kind, args = item
        if kind == "partial":  # to its own run, never to another one: group numbers are counted within each run
            run_id = args[0].run_id
            run = self.runs.get(run_id)
            if run is None and run_id:  # its run's RunStart and first frame are still on their way (from the
                # ingest, on other connections; to a replacement writer only once its Flushed reached the ingest)
                self.partials_ahead.setdefault(run_id, []).append(item)
                return
            if run is None:  # (a sender that names no run: the current one)
                run = self.current or self.run_of(run_id, 0)
        else:
            run = self.current
            if run is None:  # between runs: it applies to the next one (its frames are after it)
                self.pending_peaks.append(item)
                return
        if run.outputs is None:
            if not run.failed:
                run.early.append(item)
            return
        if kind == "partial":
            msg, buffers = args
            shape = (int(msg.n_r), int(msg.n_eta))
            if msg.compressed:  # the group's whole sum as the files store it (the codec checked the chunks' sizes)
                starts = buffers[1] if msg.block_starts else None
                partial = Chunks.made(buffers[0], buffers[1] if len(buffers) > 1 and starts is None else None, shape,
                                      msg.dtype, starts=starts)
            else:
                partial = np.frombuffer(buffers[0], dtype=msg.dtype).reshape(shape)
            try:
                run.outputs.add_partial(msg.group, msg.n_frames, partial)
            except ValueError as exc:
                self.rejects.record(ProtocolError("size", f"omegasum from worker {msg.worker}: {exc}"))
            except OutputError as exc:
                self.fail_run(run, exc)
        else:
            (msg,) = args
            ok = run.outputs.peak_update(msg.seq, max(0, int(msg.from_frame) - run.first_frame), msg.peaks,
                                         msg.origin)
            self.count("peak_updates" if ok else "peak_updates_ignored")
            if ok:
                log.info("peak update %d from frame %d (%s): %s", msg.seq, msg.from_frame, msg.origin, msg.peaks)

    def drop_beyond_eos(self) -> None:
        n = int(self.eos.first_frame) + int(self.eos.n_frames)
        for idx in [i for i in self.held if i >= n]:
            del self.held[idx]
            self.count("beyond_eos")

    # ------------------------------------------------------------------------------------------- the file
    def open_outputs(self, run: Run, engine_name: str, metadata=None) -> RunOutputs | None:
        """Name ``run`` and create its outputs (with the engine the workers used); None when that fails (the run
        is failed: counted, logged, the service goes on)."""
        engine = engine_name or str(self.config.workers.engine)
        try:
            attrs = {k: v for k, v in (metadata or {}).items() if isinstance(v, (int, float, str))}
            if run.paths is None:
                self.book.name(run, attrs)
            else:  # named by the writer before this one, which died before it made the files
                make_folders(run.paths)
            paths = run.paths
            frames = int(self.config.source.frames or 0) if self.config.source.kind == "simulated" and \
                not self.book.multi_run else 0
            fit_prefix = "" if paths.fit_bin.name == FIT_BIN else paths.fit_bin.name[: -len(FIT_BIN)]
            imap, mask = self.map_of(run)
            with never_replace():
                run.outputs = RunOutputs(paths.h5, imap, self.params, engine_name=engine, n_peaks=self.n_peaks,
                                         zarr_path=paths.zarr, midas_dir=paths.midas_dir,
                                         metadata_keys=numeric_keys(metadata), expected_frames=frames,
                                         sums_from_workers=not self.write_2d, fit_prefix=fit_prefix,
                                         fit_model=self.config.fit.model, run_metadata=run.meta, pixel_mask=mask,
                                         **self.storage_options())
        except (OutputError, OutputFolderError, OutputExists) as exc:
            self.fail_run(run, exc)
            return None
        log.info("run %d%s: writing %s (engine %s, %d x %d bins%s%s%s)", run.number,
                 f" {run.name!r}" if run.name else "", paths.h5, engine, self.imap.n_r, self.imap.n_eta,
                 ", cakes" if self.write_2d else "", f", {self.n_peaks} peaks" if self.n_peaks else "",
                 f", zarr {paths.zarr}" if paths.zarr else "")
        self.take_early(run)
        pending, self.pending_peaks = self.pending_peaks, []
        for item in pending:
            self.on_side(item)
        return run.outputs

    def map_of(self, run: Run) -> tuple[Any, np.ndarray | None]:
        """(the map, the detector's uint32 pixel mask or None) of ``run``: a run whose frames were integrated with a
        stored pixel mask (its metadata's ``MASK_KEY``: a DECTRIS series) gets that mask's map (the workers'; its
        bin areas are the file's geometry) and the mask itself, stored in the file. A mask that cannot be read is
        logged; the run is then described with the parameter file's map."""
        digest = run.meta.get(MASK_KEY) if run.meta else None
        if not digest:
            return self.imap, None
        shape = (int(self.params.NrPixelsZ), int(self.params.NrPixelsY))
        try:
            folder = store_dir(state_dir_of(self.config.run))
            mask = load_stored_mask(folder, str(digest), shape)
            imap, _ = load_or_build(self.params, extra_mask=ExtraMask(str(digest), flagged(mask)), base=self.imap)
        except RingstreamError as exc:
            log.error("run %d: %s; its file records the parameter file's map and no pixel mask", run.number, exc)
            return self.imap, None
        return imap, mask

    def take_early(self, run: Run) -> None:
        """Handle what came for ``run`` before its outputs existed (partial sums, peak updates), in arrival order."""
        early, run.early = run.early, []
        for item in early:
            self.on_side(item)

    def start_run(self, msg: Result, start: str | None) -> Run:
        """The first in-order frame of a run that is not the current one: the current run (all of whose frames
        are written) waits for its sums, and ``msg``'s run becomes the current one. ``start``: the RunStart fields
        the frame carries (its run's first frame), used when the RunStart itself is still on its way."""
        run = self.current
        if run is not None:
            if run.eos is None:  # its EndOfStream is still on its way: the run ends where this frame begins (it
                # waits, closing, for the EndOfStream: the reason and the source's counters are in it)
                run.eos = EndOfStream(run_id=run.run_id, first_frame=run.first_frame,
                                      n_frames=int(msg.frame_index) - run.first_frame, final=False)
                run.eos_guessed = True
            self.current = None
            self.closing.append(run)
        run = self.runs.get(msg.run_id)
        if run is None:  # its RunStart is still on its way: this is its first frame, which carries its fields
            run = self.run_of(msg.run_id, int(msg.frame_index))
            fields = _run_start_fields(start)
            if fields:
                run.name, run.reason = str(fields.get("name", "")), str(fields.get("reason", ""))
                run.meta = dict(fields.get("meta") or {})
        self.current = run
        if run.outputs is None and not run.failed:
            # making a run's files (the HDF5 layout, the zarr.zip's fixed part) takes a second or more on a loaded
            # box: the heartbeat goes on meanwhile
            with self.hb.beating(self.snapshot()) if self.hb is not None else contextlib.nullcontext():
                self.open_outputs(run, msg.engine, msg.metadata)
        return run

    def emit(self, msg: Result, buffers) -> None:
        """Append one result's row (ok) or account for it (rejected) in its run's files; in frame_index order."""
        start = msg.metadata.pop(RUN_START_KEY, None) if msg.metadata else None  # (not the source's metadata)
        run = self.current
        if run is None or msg.run_id != run.run_id:
            run = self.start_run(msg, start)
        if int(msg.frame_index) < run.skip_below:  # in the run's files already (a replacement writer reopened them)
            self.count("duplicates")
            return
        out = run.outputs
        local = int(msg.frame_index) - run.first_frame
        ts = float(msg.timestamp)
        run.t_first = run.t_first or ts
        run.t_last = ts
        if out is None:  # the run failed: its frames are counted, not written
            run.dropped += 1
            self.count("dropped_output_failed")
            return
        try:
            if msg.status != "ok":
                self.count("rejected")
                run.rejected += 1
                if self.counters["rejected"] <= 5:
                    log.warning("frame %d rejected: %s", msg.frame_index, msg.reason)
                out.append(FrameRecord(local, None, msg.source_id, metadata=msg.metadata, reason=msg.reason))
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
                if msg.caked_peaks and (not self.caked or msg.caked_peaks != self.n_peaks):
                    raise ProtocolError("size", f"result {msg.frame_index}: per-eta fits of {msg.caked_peaks} "
                                                f"peaks, the run has {self.n_peaks if self.caked else 0} "
                                                "([fit] per_eta, fitting.peak_slots)")
                if self.write_2d and type(rec.cake) is CakeChunks and out.packed_cake_problem(rec.cake):
                    raise ProtocolError("size", f"result {msg.frame_index}: {out.packed_cake_problem(rec.cake)}")
            except ProtocolError as exc:
                self.rejects.record(exc)
                self.count("rejected")
                run.rejected += 1
                out.append(FrameRecord(local, None, msg.source_id, metadata=msg.metadata, reason=str(exc)))
                return
            rec.frame_index = local
            if not self.write_2d:
                rec.cake = None
            out.append(rec)
            if self.view is not None:
                self.view.offer(local, rec.lineout, rec.fit)
        except OutputError as exc:
            self.fail_run(run, exc)
            run.dropped += 1
            self.count("dropped_output_failed")
            return
        self.count("written")
        run.written += 1
        if self.unflushed == 0:
            self.first_unflushed = time.monotonic()
        self.unflushed += 1
        self.unsaved += 1
        if self.unsaved >= self.save_interval:
            self.save()

    def fail_run(self, run: Run, exc: Exception) -> None:
        """``run``'s outputs cannot be written (a full disk, a folder that cannot be written): its files are left
        as flushed (repairable), the rest of its frames are counted as dropped, the service goes on and tries again
        at the next run."""
        if run.failed:
            return
        run.failed = str(exc)
        self.count("runs_failed")
        self.last_failed = True
        log.error("run %d failed: %s; its files hold what was flushed before it ('ringstream repair' makes them "
                  "readable); its remaining frames are dropped and counted; the next run starts new files",
                  run.number, exc)
        if run.outputs is not None:
            run.outputs.h5.stop_naming()  # (its groups' naming process and file go)
            self.broken.append(run.outputs)  # never closed: HDF5 may crash closing a file whose writes failed
            run.outputs = None
        self.book.record(run, "failed", reason=run.failed)

    def save(self) -> None:
        """Publish the current run's outputs (zarr.zip) and flush them."""
        self._sync("save")
        self.unflushed = self.unsaved = 0

    def flush(self) -> None:
        """Flush the current run's outputs to readers."""
        self._sync("flush")
        self.unflushed = 0

    def _sync(self, how: str) -> None:
        self.send_acks()  # the ingest's ring slots are not held up by the flush
        run = self.current
        if run is not None and run.outputs is not None:
            try:
                getattr(run.outputs, how)()
            except OutputError as exc:
                self.fail_run(run, exc)

    # ------------------------------------------------------------------------------------- peak-list updates
    def open_peaks(self, ctx) -> None:
        """A SUB socket for what the supervisor publishes: PeakUpdates (recorded with fitting on) and WorkerGone."""
        self.peaks_sub = None
        endpoint = self.config.transport.peaks_endpoint
        if not endpoint or endpoint == "auto":
            return
        self.peaks_sub = ctx.socket(zmq.SUB)
        self.peaks_sub.setsockopt(zmq.LINGER, 0)
        self.peaks_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.peaks_sub.connect(endpoint)

    def take_peak_updates(self) -> None:
        """Record each PeakUpdate waiting on the SUB socket once, and act on each WorkerGone (the same socket carries
        the ingest's requests)."""
        while self.peaks_sub is not None:
            try:
                got = receive(self.peaks_sub, self.rejects, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if got is not None and isinstance(got[0], PeakUpdate):
                self.on_peak_update(got[0])
            elif got is not None and isinstance(got[0], WorkerGone):
                self.on_worker_gone(got[0])

    def on_worker_gone(self, msg: WorkerGone) -> None:
        """A worker process died: from now on its messages are ignored, and the ingest, told after every
        acknowledgement of its frames, sends the frames it held again (once per process: the supervisor publishes
        the notice more than once)."""
        key = (int(msg.worker), int(msg.pid))
        if key in self.fenced:
            return
        self.fenced.add(key)
        self.count("workers_fenced")
        self.last_fence = time.monotonic()
        for run in self.runs.values():  # the runs not closed yet: their files record it
            run.workers_lost += 1
        log.info("worker-%d (pid %d) is gone: its later messages are ignored; its unacknowledged frames go to "
                 "another worker", key[0], key[1])
        self.send_acks()
        if self.acks is not None:
            try:
                send_message(self.acks, msg, flags=zmq.NOBLOCK)
            except zmq.Again:
                log.warning("the ingest takes no acknowledgements: worker-%d's frames cannot be sent again", key[0])

    # ------------------------------------------------------------------------------------------ durability
    def durable_below(self) -> int:
        """The daemon-wide frame below which the files hold everything for good: the first frame of the earliest
        open run that is not (a failed run's frames are counted as dropped: nothing to keep for it)."""
        for run in sorted([*self.closing, *([self.current] if self.current is not None else [])],
                          key=lambda r: r.first_frame):
            if run.outputs is not None:
                return run.first_frame + max(int(run.outputs.durable_frames), run.skip_below - run.first_frame)
            if not run.failed:
                return run.first_frame
        return self.next_index

    def publish_flushed(self, restart: bool = False) -> None:
        """Tell the ingest (and through it the workers) where :meth:`durable_below` stands, when it moved and every
        ``FLUSHED_AGAIN_S`` (a replacement ingest learns it so), and once at the start of a replacement writer
        (``restart``)."""
        below = self.durable_below()
        now = time.monotonic()
        restart = restart or self.restart_untold
        if below == self.flushed_below and not restart and now - self.t_flushed < FLUSHED_AGAIN_S:
            return
        self.t_flushed = now
        if below > self.flushed_below and self.summed_frames:
            self.summed_frames = {f for f in self.summed_frames if f >= below}
        self.flushed_below = below
        if self.acks is not None:
            try:
                send_message(self.acks, Flushed(below=below, writer_pid=os.getpid(), restart=restart),
                             flags=zmq.NOBLOCK)
                self.restart_untold = False
            except zmq.Again:  # told next time; the watermark stands (the duplicate partial sums are known by it)
                self.t_flushed, self.restart_untold = 0.0, restart

    def resume_runs(self) -> None:
        """A replacement writer: the runs the index of runs says are open (this daemon's) are reopened where their
        files were flushed, the earliest one current; the frames the files hold are counted as written."""
        base = str(self.config.run.run_id)
        mine = [r for r in self.book.index.runs() if str(r.get("run_id", "")) == base or
                str(r.get("run_id", "")).startswith(base + ".")]
        self.book.opened = len(mine)
        ends = [int(r.get("first_frame", 0)) + int(r.get("frames", 0)) for r in mine if r.get("status") != "open"]
        self.next_index = max(ends, default=0)
        for entry in mine:
            if entry.get("status") == "open":
                continue
            self.count("written", int(entry.get("written", 0)))
            self.count("rejected", int(entry.get("rejected", 0)))
            self.count(f"runs_{entry.get('status')}" if entry.get("status") in ("complete", "failed", "interrupted")
                       else "runs_other")
        resumed = []
        for entry in (r for r in mine if r.get("status") == "open"):
            run = Run(str(entry["run_id"]), int(entry.get("first_frame", 0)), name=str(entry.get("name", "")),
                      meta=dict(entry.get("meta") or {}), reason=str(entry.get("reason", "")),
                      number=int(entry["run"]))
            self.runs[run.run_id] = run
            try:
                run.paths = self.book.templates.recorded(run.number, entry["files"])
                if not run.paths.h5.exists():  # named, not made yet: made at its first frame, as it would have been
                    run.skip_below = run.first_frame
                    resumed.append(run)
                    continue
                run.outputs = self.resume_outputs(run, str(entry.get("engine", "")))
            # (RuntimeError: what h5py raises for a file HDF5 cannot read, e.g. one whose omega-sum groups were being
            # named when the writer was killed: that run fails, and the service goes on instead of a writer that dies
            # at every start)
            except (KeyError, RingstreamError, OSError, ValueError, RuntimeError) as exc:
                self.fail_run(run, OutputError(f"run {run.number}: cannot continue its files after the writer's "
                                               f"death: {exc}"))
                continue
            done = int(run.outputs.durable_frames)
            run.skip_below = run.first_frame + done
            self.peak_seqs.update(run.outputs.h5.peak_update_seqs())  # recorded already: not again
            run.written = int(run.outputs.counters["written"])
            self.count("written", run.written)
            resumed.append(run)
            log.warning("run %d: the writer before this one died: %s reopened at frame %d of the run (%d rows); "
                        "the frames from there on come again", run.number, run.paths.h5, done, run.written)
        if resumed:
            resumed.sort(key=lambda r: r.first_frame)
            if resumed[0].outputs is not None:  # (else its first frame makes its files)
                self.current = resumed[0]
            self.next_index = resumed[0].skip_below
        # the supervisor publishes every peak-list change again and again: one from before the runs reopened here
        # was recorded (or not) by the writer before this one, never by this one
        self.peaks_from = resumed[0].first_frame if resumed else self.next_index
        if self.stream_end >= 0:  # the ingest had ended: nobody sends the end again
            last = resumed[-1] if resumed else None
            first = last.first_frame if last is not None else self.stream_end
            self.eos = EndOfStream(run_id=last.run_id if last is not None else "", first_frame=first,
                                   n_frames=self.stream_end - first, final=True)
            if last is not None:
                last.eos = self.eos

    def storage_options(self) -> dict[str, Any]:
        """How the cakes and sums are stored (``[output]``) and whether per-η fits are (``[fit] per_eta``: their
        SNIP iterations), as :class:`RunOutputs` takes it."""
        out = self.config.output
        return {"cake_dtype": out.cake_dtype, "cake_noise_fraction": out.cake_noise_fraction,
                "noise_model": self.noise_model, "caked": self.caked}

    def resume_outputs(self, run: Run, engine_name: str) -> RunOutputs:
        """``run``'s outputs, reopened where they were flushed (:meth:`RunOutputs.resume`)."""
        paths = run.paths
        fit_prefix = "" if paths.fit_bin.name == FIT_BIN else paths.fit_bin.name[: -len(FIT_BIN)]
        frames = int(self.config.source.frames or 0) if self.config.source.kind == "simulated" and \
            not self.book.multi_run else 0
        return RunOutputs.resume(paths.h5, self.imap, self.params,
                                 engine_name=engine_name or str(self.config.workers.engine), n_peaks=self.n_peaks,
                                 zarr_path=paths.zarr, midas_dir=paths.midas_dir, expected_frames=frames,
                                 sums_from_workers=not self.write_2d, fit_prefix=fit_prefix,
                                 **self.storage_options())

    def answer_resume_queries(self) -> None:
        """Answer each ResumeQuery whose worker processes are all fenced (so that no later message of theirs
        counts), or that waited ``FENCE_WAIT_S`` for it; behind the acknowledgements sent so far."""
        fenced = {pid for _, pid in self.fenced}
        waiting = []
        for query, t in self.resume_queries:
            unfenced = set(int(p) for p in query.pids) - fenced
            unfenced |= {int(p) for p in query.resent} - self.resent_from - fenced  # (a worker dead meanwhile)
            if unfenced and time.monotonic() - t < FENCE_WAIT_S:
                waiting.append((query, t))
                continue
            if unfenced:
                log.warning("no notice of the end of worker processes %s after %.0f s; answering the ingest all the "
                            "same", sorted(unfenced), FENCE_WAIT_S)
            lacking = [f for f in missing_frames(query.first_frame, query.end, self.next_index, self.held,
                                                 self.awaiting_sum) if not self.in_files(f)]
            log.info("the ingest asks about frames %d..%d: %d missing", query.first_frame, query.end - 1,
                     len(lacking))
            self.send_acks()
            if self.acks is not None:
                try:
                    send_message(self.acks, Missing(run_id=query.run_id, frames=lacking), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the ingest asks again
        self.resume_queries = waiting

    def in_files(self, frame: int) -> bool:
        """Frame ``frame`` is in the files of a run a replacement writer reopened (below where it went on)."""
        return any(r.first_frame <= frame < r.skip_below for r in self.runs.values())

    def send_acks(self) -> None:
        """Acknowledge the frames held since the last call to the ingest (dropped when it takes nothing: gone)."""
        if not self.to_ack:
            return
        frames, self.to_ack = self.to_ack, []
        self.count("acknowledged", len(frames))
        if self.trace is not None:  # (stamped before the send: the ingest may free the slots before it returns)
            self.trace.mark_many(ACKED, frames)
        if self.acks is not None:
            try:
                send_message(self.acks, FrameAck(frames=frames), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def on_peak_update(self, msg: PeakUpdate) -> None:
        """Record a PeakUpdate once per seq, whichever socket it came on (the supervisor publishes it again)."""
        if int(msg.seq) not in self.peak_seqs:
            self.peak_seqs.add(int(msg.seq))
            if int(msg.from_frame) >= self.peaks_from:
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
        """The end of the daemon's stream: every run still open is closed (the current one ``complete`` or not);
        a stream that brought no frame at all still leaves one (empty) run's files, as a record that it ran."""
        run = self.current
        self.current = None
        if run is not None:
            self.closing.insert(0, run)
        closing, self.closing = self.closing, []
        for r in closing:
            self.close_run(r, complete=complete or r is not run)
        if self.book.opened == 0 and self.eos is not None:
            empty = self.run_of(self.eos.run_id or "empty", int(self.eos.first_frame))
            empty.eos = empty.eos or self.eos
            if self.open_outputs(empty, str(self.config.workers.engine)) is not None:
                self.close_run(empty, complete=complete)

    def close_run(self, run: Run, complete: bool) -> None:
        """Close ``run``'s files (``run_complete`` = ``complete``) and record it in the index of runs."""
        self.runs.pop(run.run_id, None)
        outputs, run.outputs = run.outputs, None
        if outputs is not None:
            counters = dict(run.eos.counters) if run.eos is not None else {}
            if run.workers_lost or "workers_lost" in counters:  # a worker may die after the run's EndOfStream
                counters["workers_lost"] = run.workers_lost
            if counters:
                outputs.source_counters(counters)  # PVA gaps, frames missed, drops by reason: into the file
            try:
                outputs.close(run_complete=complete)
            except OutputError as exc:
                self.broken.append(outputs)
                self.fail_run(run, exc)
                return
        if run.number == 0:
            return
        counters = dict(run.eos.counters) if run.eos is not None else {}
        if run.failed:  # its end: the frames it dropped, counted
            self.book.record(run, "failed", reason=run.failed, counters=counters)
            return
        self.last_failed = False
        status = "complete" if complete else "interrupted"
        self.count("runs_complete" if complete else "runs_interrupted")
        reason = run.eos.reason if run.eos is not None else ""
        self.book.record(run, status, reason=reason or ("stopped" if not complete else ""), counters=counters)
        log.info("run %d %s: %s, %d frames written, %d rejected%s", run.number, status,
                 run.paths.h5 if run.paths else "-", run.written, run.rejected, f" ({reason})" if reason else "")
        return_free_memory()  # the run's buffers, freed, back to the system (the service runs for days)

"""The ingest process: source -> shared-memory ring -> FrameHeaders to the workers (docs/DAEMON.md, "ingest").

Sockets: frames ROUTER (bind; the workers connect DEALERs and send credit on them), acknowledgements PULL (bind,
``release_endpoint``: the writer's FrameAcks, WorkerGone notices and Missing answers), eos PUSH (connect to the
writer's results PULL), heartbeat PUSH (connect to the supervisor's events PULL). Which worker gets which frame,
and what is sent again when a worker dies: :mod:`.dispatch`. Each frame gets the next ``frame_index`` (0, 1, 2 … as a Python int),
is copied once into a free ring slot (or read or copied straight into it by the source: see
:class:`~.source_base.SourceFrame`) and announced by a ``FrameHeader`` (location "shm"); with
``transport.shared_memory = false`` the pixels travel inline in the message instead. A frame that arrived
compressed (bslz4 / lz4 from PVA, HDF5 chunks, a compressed replay) goes into the ring as it came and the workers
decode it; its header says how (``codec``, ``codec_header``, ``codec_block``; ``nbytes`` its compressed length).

A frame's slot is free again once the writer acknowledges the frame (its results are in the writer's hands), not
when a worker has read it: until then the pixels may have to go to another worker. No free slot: a pausable source
waits, reading acknowledgements until one frees a slot (backpressure); a non-pausable source drops the frame and
counts ``dropped_ring_full``. No worker with credit: the same, counted ``dropped_queue_full``. At the end of the
source, or on ``stop``, the ingest sends ``EndOfStream(n_frames = frames sent)`` to the writer, then waits (up to
``supervisor.drain_timeout``) until the writer has acknowledged every frame; the segment is unlinked at exit.

Every frame and every EndOfStream is written to the journal (:mod:`.journal`) before it is sent; the frames the writer
acknowledges leave it at its next compaction, which keeps it under a bound. An ingest started with ``resume=True``
replaces one that died: it goes on from the journal (:mod:`.resume`).

Counters: ``received`` (frames from the source), ``sent``, ``resent`` (frames of dead workers sent again),
``workers_lost``, ``unacknowledged``, ``dropped_<reason>``, ``protocol_errors_<kind>`` (anything on the frames or
acknowledgement sockets that is not a valid Credit, FrameAck or WorkerGone: rejected, counted and ignored),
``acks_unexpected`` (an acknowledgement of a frame not in flight), ``ingest_restarts`` (replacement ingests so far),
``dropped_ingest_restart`` (frames a replacement could not make again: a live source's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid

import numpy as np
import zmq

from ..protocol import PEAK_SEQ_KEY, RUN_START_KEY, EndOfStream, FrameHeader, compressed_bound
from ..trace import RELEASED, SENT, SLOT, StageTrace, open_trace
from ..transport.child import NONTEMPORAL_TUNABLE, HeartbeatSender, run_child, supervisor_gone
from ..transport.ring_size import CPU_SLOTS
from ..transport.security import refused_counters, serve_remote, stop_authenticator
from ..transport.shm_ring import FrameRing
from ..transport.sockets import RejectLog, make_socket, send_message
from .copier import SlotCopier, auto_threads
from .dispatch import Dispatcher
from .journal import Announced, Journal, journal_path, read_journal
from .peaks import IngestPeaks
from .resume import after_writer_restart, resume_from
from .runs import END_OF_SOURCE, STOPPED, RunSplitter
from .source_base import IDLE, Pacer, SlotLease
from .sources import make_source

log = logging.getLogger("ringstream.ingest")

#: how long one blocking wait (for a slot, for a send) lasts before ``stop`` is checked again, in ms
POLL_MS = 50

#: before the first frame, how long the ingest waits for a worker to connect to its frames socket, in s
WORKERS_WAIT_S = 10.0

#: after the EndOfStream, stop waiting for the writer's acknowledgements when none came for this long, in s; the whole
#: wait is bounded by ``supervisor.drain_timeout``
RELEASE_IDLE_S = 10.0

#: frames acknowledged and not yet flushed whose source ids the ingest keeps (for a replacement writer), at most
UNFLUSHED_MAX = 200_000

#: after a stop, how long a frame already taken from the source waits for a ring slot and a worker's credit (the
#: workers go on until the ingest has ended) before it is dropped and counted (``dropped_stopping``)
STOP_GRACE_S = 5.0


def _past_grace(stop, deadline: float | None) -> bool:
    """Whether a wait that began its grace at ``deadline - STOP_GRACE_S`` (None: not begun) is over."""
    return stop.is_set() and deadline is not None and time.monotonic() >= deadline

#: the frames socket's high-water mark: credit, not the queue, bounds what each worker holds
FRAMES_HWM = 100_000


def run_id_of(config) -> str:
    return config.run.run_id or uuid.uuid4().hex[:12]


def run(config, ready, stop, resume: bool = False, pids: tuple[int, ...] = ()) -> int:
    """Entry point of the ingest process (see the module docstring). ``resume``: this ingest replaces one that died
    (the supervisor ended the worker processes ``pids`` with it). Returns the exit code."""
    return run_child(config, "ingest", lambda: _Ingest(config, resume, pids).run(ready, stop), log)


class _Ingest:
    #: per-frame stage stamps ([supervisor] trace_dir, ringstream/trace.py), or None
    trace: StageTrace | None = None

    def __init__(self, config, resume: bool = False, pids: tuple[int, ...] = ()) -> None:
        self.config = config
        self.resume = bool(resume)
        self.gone_pids = [int(p) for p in pids]
        t = config.transport
        self.shm = bool(t.shared_memory)
        self.n_slots = max(1, int(t.ring_slots) or CPU_SLOTS)  # (0: sized by the supervisor; alone, the floor)
        self.hwm = max(1, int(t.queue_depth or self.n_slots))
        self.counters: dict[str, int] = {"received": 0, "sent": 0}
        self.run_id = run_id_of(config)
        self.runs = RunSplitter(config.run, self.run_id)
        self.in_flight: dict[int, int] = {}  # slot -> frame_index
        self.run_messages: list = []  # RunStart / EndOfStream sent, kept until the writer has their runs for good
        self.run_ends: dict[str, int] = {}  # run_id -> the first frame after the run (its EndOfStream was sent)
        self.durable_below = 0  # the writer's files hold every frame below this for good (its Flushed notices)
        self.unflushed: dict[int, Announced] = {}  # frames acknowledged, not yet below durable_below
        self.writer_restart: tuple[int, list[int]] | None = None  # a replacement writer's (below, workers told)
        self.ring = None
        self.source = None
        self.copier = None
        self.journal = None
        self.auth = None  # the ZAP handler of the frames socket's remote endpoint
        self.trace = open_trace(config, "ingest")
        self.slot_taken: dict[int, float] = {}  # slot -> when it was taken (traced runs only)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # --------------------------------------------------------------------------------------------------- setup
    def run(self, ready, stop) -> int:
        cfg = self.config
        params = cfg.load_params()
        source = make_source(cfg, params)
        shape = tuple(int(s) for s in source.shape)
        dtype = np.dtype(source.dtype)
        slot_bytes = math.prod(shape) * dtype.itemsize
        compressed = bool(getattr(source, "keeps_compressed", False))
        if compressed:  # compressed frames travel compressed: a slot holds the worst case (the workers decode)
            slot_bytes = compressed_bound(slot_bytes)
        log.info("source %s: %s %s%s, pausable=%s, rate=%s Hz; ring %s", source.name, shape, dtype,
                 " (compressed frames kept compressed)" if compressed else "", source.pausable, source.rate or "max",
                 f"{self.n_slots} x {slot_bytes} bytes" if self.shm else "off (inline frames)")
        ctx = zmq.Context()
        self.rejects = RejectLog(log, "ingest frames and acknowledgement sockets")
        path = journal_path(cfg.run)
        journaled = read_journal(path) if self.resume else None
        self.journal = Journal(path, fresh=not self.resume, files=source.resumable)
        self.stop = stop
        try:
            if self.shm:
                self.ring = FrameRing.create(self.n_slots, slot_bytes)
                attach = getattr(source, "attach_ring", None)
                if attach is not None:
                    attach(_RingAllocator(self.ring))
                threads = cfg.transport.copy_threads or auto_threads(os.cpu_count())
                if threads > 1:
                    # in flight: at most half the ring, so copied frames never hold every slot
                    self.copier = SlotCopier(threads, self.copy_into, self.ring.view,
                                             depth=min(2 * threads, max(1, self.n_slots // 2)))
                    log.info("ingest: %d copy threads", threads)
                tunables = os.environ.get("GLIBC_TUNABLES", "")
                if NONTEMPORAL_TUNABLE in tunables:  # set by the supervisor ([transport] nontemporal_copy)
                    log.info("ingest: frame copies bypass the CPU caches (GLIBC_TUNABLES=%s)", tunables)
            self.source = source
            t = cfg.transport
            self.frames = make_socket(ctx, zmq.ROUTER, t.frames_endpoint, bind=True, hwm=FRAMES_HWM)
            self.auth = serve_remote(ctx, self.frames, t, "frames", "ingest frames socket")  # joined workers
            acks = make_socket(ctx, zmq.PULL, t.release_endpoint, bind=True, hwm=max(self.hwm, self.n_slots))
            self.dispatch = Dispatcher(self.frames, acks, self.rejects, self.on_acknowledged, self.count,
                                       flushed=self.on_flushed, inline=self.inline if self.shm else None)
            self.eos = make_socket(ctx, zmq.PUSH, t.results_endpoint, bind=False, hwm=self.hwm)
            hb = make_socket(ctx, zmq.PUSH, t.events_endpoint, bind=False, hwm=16)
            self.hb = HeartbeatSender(hb, "ingest", 0, cfg.supervisor.heartbeat_interval)
            self.peaks = IngestPeaks(ctx, cfg, self.run_id, hb)  # peak-list seqs stamped into frames
            self.hb.beat(self.snapshot(), state="starting", force=True)
            ready.set()
            self.wait_for_workers(stop)
            ended = journaled is not None and resume_from(self, journaled)
            if not ended:
                t0 = time.monotonic()
                self.stream(source, stop)
                n = self.counters["sent"]
                self.send_eos(self.runs.end(n, STOPPED if stop.is_set() else END_OF_SOURCE, self.snapshot(),
                                            final=True))
                dt = time.monotonic() - t0
                log.info("end of stream after %d frames in %.2f s (%.1f frames/s)", n, dt, n / dt if dt > 0 else 0.0)
            self.drain_acknowledgements()
            self.hb.beat(self.snapshot(), state="done", force=True)
            return 0
        finally:
            if self.trace is not None:
                self.trace.save()
            if self.copier is not None:
                self.copier.close()
            source.close()
            self.journal.close()
            stop_authenticator(self.auth)
            # the EOS must reach the writer; once the supervisor is gone the writer goes too and nothing waits for it
            ctx.destroy(linger=0 if supervisor_gone() else 2000)
            if self.ring is not None:
                try:
                    self.ring.close()
                except BufferError as exc:  # a source still holds a lease's array: unlink all the same
                    log.warning("%s", exc)
                finally:
                    self.ring.unlink()

    def wait_for_workers(self, stop) -> None:
        """Before the first frame, wait (up to ``WORKERS_WAIT_S``) until a worker has announced its credit on the
        frames socket: the workers connect only once this process has bound it, and a live source's frames would
        otherwise find nobody to take them and be dropped (``dropped_queue_full``) in the first moments of a run."""
        deadline = time.monotonic() + WORKERS_WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            self.dispatch.poll(POLL_MS)
            if self.dispatch.credit:
                return
            self.hb.beat(self.snapshot)
        if not stop.is_set():
            log.warning("no worker connected to the frames socket within %.0f s; starting anyway", WORKERS_WAIT_S)

    def snapshot(self) -> dict:
        own = getattr(self.source, "counters", None)
        extra = own() if own is not None else {}
        dispatch = self.dispatch.counters() if getattr(self, "dispatch", None) is not None else {}
        return {**extra, **self.counters, **self.rejects.counters(), **dispatch, "in_flight": len(self.in_flight),
                **refused_counters(self.auth)}

    def inline(self, msg) -> tuple:
        """A frame of the ring as a joined worker gets it (it cannot see this host's shared memory): the header with
        ``location="inline"`` and a copy of the slot's bytes (compressed ones stay compressed). A copy, not a view:
        the slot's memory must not be on its way out when the ring is unmapped at the end."""
        payload = self.ring.view(int(msg.slot), (int(msg.nbytes),), np.uint8, offset=int(msg.offset))
        data = bytes(payload)
        del payload
        return dataclasses.replace(msg, location="inline", shm_name="", slot=0, offset=0), (data,)

    # -------------------------------------------------------------------------------------------- the loop
    def stream(self, source, stop) -> None:
        self.stop = stop
        pacer = Pacer(getattr(source, "rate", 0.0))
        frames = iter(source.frames(stop))
        k = 0  # frames taken from the source (the pacing schedule)
        while pacer.wait(k, stop):  # wait first, so that a frame is made (and time-stamped) when it is due
            frame = next(frames, None)
            if frame is None:
                break
            if frame.end_run:  # the source's acquisition ended: its run ends after the frames before it
                self.announce_copies(source.pausable, stop, wait=True)
                eos = self.runs.source_end(self.counters["sent"], frame.end_run, self.snapshot())
                if eos is not None:
                    self.send_eos(eos)
                continue
            if frame is IDLE:  # a live source with nothing new: keep releases, copies and heartbeats going
                self.dispatch.poll(0)
                self.announce_copies(source.pausable, stop)
                self.hb.beat(self.snapshot)
                self.poll_requests()
                if self.copier is None or len(self.copier) == 0:  # copies under way: frames still coming
                    eos = self.runs.on_idle(self.counters["sent"], self.snapshot())
                    if eos is not None:
                        self.send_eos(eos)
                continue
            k += 1
            self.count("received")
            self.dispatch.poll(0)
            self.hb.beat(self.snapshot)
            self.poll_requests()
            self.publish(frame, source.pausable, stop)
            if stop.is_set():
                break
        self.announce_copies(source.pausable, stop, wait=True)  # every accepted frame goes out before the EOS

    def publish(self, frame, pausable: bool, stop, again: dict | None = None) -> bool:
        """Put one frame in the ring (or inline) and send its header; False if it was dropped. ``again``: the
        header fields of a frame a dead ingest announced (:mod:`.resume`): it goes out as that frame again.

        The three forms of :class:`~.source_base.SourceFrame`: pixels (copied once into a slot), ``fill`` (the source
        writes into the slot), ``lease`` (already in a slot the source took from the allocator). With copy threads
        (:class:`~.copier.SlotCopier`) a pixels or fill frame is handed to them and announced once its copy is done,
        in source order; a True return then means "accepted", and a fill that fails later is dropped and counted.
        """
        lease = frame.lease
        shape, dtype = frame.slot_layout()
        if not self.shm:
            pixels = frame.pixels
            if pixels is None:
                pixels = np.empty(shape, dtype)
                if not self.fill(frame, pixels):
                    return False
            msg = FrameHeader(location="inline", shm_name="", slot=0, offset=0, **self.header(frame, again))
            if not self.send(msg, (np.ascontiguousarray(pixels),), pausable, stop):
                if again is None:
                    self.runs.frame_not_sent()
                return False
            self.count("sent" if again is None else "resent")
            return True
        if lease is not None:
            self.announce_copies(pausable, stop, wait=True)  # frames before it go first
            return self.announce(frame, int(lease.slot), pausable, stop)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.ring.slot_bytes:
            self.count("dropped_too_large")
            log.warning("frame %s: %d bytes do not fit a %d-byte ring slot; dropped",
                        frame.source_id, nbytes, self.ring.slot_bytes)
            return False
        slot = self.acquire(pausable, stop)
        if slot is None:
            self.count("dropped_stopping" if stop.is_set() else "dropped_ring_full")
            if stop.is_set():
                log.warning("frame %s: no ring slot came free within %.0f s of the stop; dropped",
                            frame.source_id, STOP_GRACE_S)
            return False
        if self.copier is not None and again is None:
            for job in self.copier.submit(frame, slot):
                self.announce_job(job, pausable, stop)
            self.announce_copies(pausable, stop)
            return True
        if frame.pixels is not None:
            self.ring.write(slot, np.asarray(frame.pixels))
        else:
            view = self.ring.view(slot, shape, dtype)
            ok = self.fill(frame, view)
            del view
            if not ok:
                self.ring.release(slot)
                return False
        return self.announce(frame, slot, pausable, stop, again)

    def header(self, frame, again: dict | None = None) -> dict:
        """The FrameHeader fields of ``frame`` as the next frame (its index: frames sent so far). Where the frame
        starts a new run (:mod:`.runs`), the EndOfStream of the run before it and the RunStart of its run go to the
        writer first. ``again``: the index and run of a frame announced before (its header goes out again as it
        was); every other frame is written to the journal."""
        shape, dtype = frame.frame_shape(), frame.frame_dtype()
        if frame.codec == "none":
            codec = dict(codec="none", nbytes=math.prod(shape) * dtype.itemsize)
        else:  # the compressed bytes travel: nbytes is their length
            codec = dict(codec=frame.codec, codec_header=int(frame.codec_header), codec_block=int(frame.codec_block),
                         nbytes=int(frame.slot_layout()[0][0]))
        metadata = frame.metadata or {}
        if again is not None:
            idx, run_id, run_start = again["frame_index"], again["run_id"], again["run_start"]
        else:
            idx = self.counters["sent"]
            messages, run_id, run_start = self.runs.before_frame(idx, frame.new_run, metadata, self.counters,
                                                                 frame.run_meta)
            for msg in messages:
                self.send_eos(msg)
            self.journal.frame(idx, run_id, run_start, str(frame.source_id))
        metadata = {**metadata, PEAK_SEQ_KEY: self.peaks.seq_for(idx)}
        if again is None and idx == run_start:  # a run's first frame: its RunStart's fields too (which arrives first?)
            metadata[RUN_START_KEY] = json.dumps(self.runs.run_start_fields)
        return dict(
            run_id=run_id, run_start=run_start, frame_index=idx, source_id=str(frame.source_id),
            timestamp=float(frame.timestamp), shape=list(shape), dtype=dtype.str, metadata=metadata, **codec,
        )

    def announce(self, frame, slot: int, pausable: bool, stop, again: dict | None = None) -> bool:
        """Send the header of ``frame``, whose pixels are in ``slot``; on failure the slot is free again."""
        fields = self.header(frame, again)
        idx = fields["frame_index"]
        msg = FrameHeader(location="shm", shm_name=self.ring.name, slot=slot, offset=self.ring.slot_offset(slot),
                          **fields)
        self.in_flight[slot] = idx
        if self.trace is not None:
            self.trace.mark(SLOT, idx, self.slot_taken.pop(slot, None))
        if not self.send(msg, (), pausable, stop):
            if again is None:
                self.runs.frame_not_sent()
            del self.in_flight[slot]
            self.ring.release(slot)
            return False
        self.count("sent" if again is None else "resent")
        return True

    def announce_job(self, job, pausable: bool, stop) -> bool:
        """Announce a finished copy (or, if it failed, count and log it and free its slot)."""
        if job.error is not None:
            self.count("dropped_read_error")
            log.warning("frame %s: cannot read its pixels (%s); dropped", job.frame.source_id, job.error)
            self.ring.release(job.slot)
            return False
        return self.announce(job.frame, job.slot, pausable, stop)

    def announce_copies(self, pausable: bool, stop, wait: bool = False) -> None:
        """Announce the copies that are done (``wait``: all of them, waiting for those still running)."""
        if self.copier is not None:
            for job in self.copier.done(wait=wait):
                self.announce_job(job, pausable, stop)

    @staticmethod
    def copy_into(frame, out: np.ndarray) -> None:
        """A copy thread's job: the frame's pixels into ``out`` (its slot), from its array or its ``fill``."""
        if frame.pixels is not None:
            np.copyto(out, frame.pixels, casting="no")
        else:
            frame.fill(out)

    def fill(self, frame, out: np.ndarray) -> bool:
        """``frame.fill(out)``; False (logged, counted ``dropped_read_error``) when it raises."""
        try:
            frame.fill(out)
            return True
        except Exception as exc:  # a file that went bad between listing and reading: drop it, keep going
            self.count("dropped_read_error")
            log.warning("frame %s: cannot read its pixels (%s); dropped", frame.source_id, exc)
            return False

    def acquire(self, pausable: bool, stop):
        """A free slot; when none: wait for releases (pausable; after a stop, no longer than ``STOP_GRACE_S``: the
        frame was taken from the source, and the workers free slots until the ingest ends) or give up at once (not
        pausable)."""
        slot = self.ring.acquire()
        deadline = None
        t_wait = time.monotonic() if slot is None else 0.0
        while slot is None:
            if not pausable or _past_grace(stop, deadline):
                self.count("ring_wait_us", int((time.monotonic() - t_wait) * 1e6))
                return None
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            self.announce_copies(pausable, stop)  # copied frames hold slots until announced
            self.dispatch.poll(POLL_MS)
            self.hb.beat(self.snapshot)
            self.poll_requests()
            slot = self.ring.acquire()
        if t_wait:
            self.count("ring_wait_us", int((time.monotonic() - t_wait) * 1e6))  # (the ring was full that long)
        if self.trace is not None:
            self.slot_taken[slot] = time.monotonic()
        return slot

    def send(self, msg, buffers, pausable: bool, stop) -> bool:
        """Send a frame message to a worker with credit (frames of dead workers first); none: wait (pausable; after
        a stop, no longer than ``STOP_GRACE_S``: the workers return credit until the ingest ends) or drop (not
        pausable). Every frame not sent is counted: ``dropped_queue_full``, ``dropped_stopping``."""
        dispatch = self.dispatch
        deadline = None
        t_wait = 0.0
        while True:
            t_send = time.monotonic()  # (stamped before the send: the worker may have the frame before it returns)
            if not dispatch.resend and dispatch.try_send(msg, buffers):
                if t_wait:  # (no worker had credit that long)
                    self.count("credit_wait_us", int((t_send - t_wait) * 1e6))
                if self.trace is not None:
                    self.trace.mark(SENT, int(msg.frame_index), t_send)
                return True
            t_wait = t_wait or t_send
            if not pausable:
                self.count("dropped_queue_full")
                return False
            if _past_grace(stop, deadline):
                self.count("dropped_stopping")
                log.warning("frame %s: no worker took it within %.0f s of the stop; dropped", msg.frame_index,
                            STOP_GRACE_S)
                return False
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            dispatch.poll(POLL_MS)
            self.hb.beat(self.snapshot)

    # ------------------------------------------------------------------------------------ acknowledgements
    def on_acknowledged(self, idx: int, msg) -> None:
        """The writer has frame ``idx`` (its header ``msg``; None: not in flight): its slot is free again, and a
        replacement ingest would not ask about it (:mod:`.journal`). Until the writer has flushed it, its run and
        source id are kept (a replacement writer may lack it: :meth:`on_flushed`)."""
        self.journal.acknowledged(idx)
        if msg is None:
            return
        if idx >= self.durable_below:
            self.unflushed[idx] = Announced(msg.run_id, int(msg.run_start), msg.source_id)
            if len(self.unflushed) > UNFLUSHED_MAX:  # (the writer flushes nothing: OmegaSumFrames -1 ...)
                del self.unflushed[next(iter(self.unflushed))]
                self.count("unflushed_forgotten")
        if msg.location != "shm":
            return
        slot = int(msg.slot)
        if self.in_flight.get(slot) == idx:
            del self.in_flight[slot]
            self.ring.release(slot)
            if self.trace is not None:
                self.trace.mark(RELEASED, idx)

    def send_eos(self, msg) -> None:
        """A RunStart or EndOfStream to the writer (a run's start or end: :mod:`.runs`), kept until the writer has
        the run's frames for good (a replacement writer gets it again: :meth:`on_flushed`)."""
        if isinstance(msg, EndOfStream):
            self.journal.end(msg.run_id, msg.first_frame, msg.n_frames, msg.final)
            self.run_ends[msg.run_id] = int(msg.first_frame) + int(msg.n_frames)
            if msg.run_id:
                log.info("run %s ended (%s): frames %d..%d", msg.run_id, msg.reason, msg.first_frame,
                         msg.first_frame + msg.n_frames - 1)
        self.run_messages.append(msg)
        send_message(self.eos, msg)

    def on_flushed(self, msg, told: list[int]) -> None:
        """The writer's files hold every frame below ``msg.below`` for good (the workers were told): the messages
        of the runs that end there are no longer kept; a replacement writer (``msg.restart``) gets the others
        again, in order."""
        below = int(msg.below)
        self.durable_below = max(self.durable_below, below) if not msg.restart else below
        ends = self.run_ends
        kept = [m for m in self.run_messages if (isinstance(m, EndOfStream) and m.final) or
                ends.get(m.run_id) is None or ends[m.run_id] > below]
        if len(kept) < len(self.run_messages):
            self.run_messages = kept
            live = {m.run_id for m in kept}
            self.run_ends = {k: v for k, v in ends.items() if k in live}
        if any(i < below for i in self.unflushed):
            self.unflushed = {i: a for i, a in self.unflushed.items() if i >= below}
        if msg.restart:
            log.warning("a new writer (pid %d) reopened its files at frame %d: sending it the %d run messages of "
                        "the runs not written in full", msg.writer_pid, below, len(kept))
            for m in kept:
                send_message(self.eos, m)
            self.writer_restart = (below, told)  # what it still lacks: asked from the loop (not from a callback)

    def poll_requests(self) -> None:
        """Peak-list changes and ``ringstream runs start|stop`` from the supervisor (never blocks); after a writer's
        restart, the frames it lacks sent again (:func:`.resume.after_writer_restart`)."""
        if self.writer_restart is not None:
            (below, told), self.writer_restart = self.writer_restart, None
            after_writer_restart(self, below, told, self.unflushed)
        for args in self.peaks.poll(self.counters["sent"]):
            action = str(args.get("action", ""))
            if action not in ("start", "stop"):
                continue
            self.announce_copies(self.source.pausable, self.stop, wait=True)  # the frames before it end the run
            eos = self.runs.request(action, str(args.get("name", "")), dict(args.get("meta") or {}),
                                    self.counters["sent"], self.snapshot())
            if eos is not None:
                self.send_eos(eos)
            log.info("runs %s%s", action, f" {args.get('name')!r}" if args.get("name") else "")

    def drain_acknowledgements(self) -> None:
        """Wait until the writer has acknowledged every frame sent (frames of a worker that dies meanwhile go to
        another) and has them in its files for good (a writer that dies meanwhile gets them again from the workers
        through this process), or the grace period."""
        pending = self.dispatch.pending
        grace = self.config.supervisor.drain_timeout
        now = time.monotonic()
        deadline, last_progress = now + grace, now
        sent = self.counters["sent"]
        while pending or self.durable_below < sent:
            now = time.monotonic()
            if now >= deadline or now - last_progress >= RELEASE_IDLE_S:
                log.warning("%d frames sent were not acknowledged by the writer (nothing for %.0f s); ending with "
                            "them unacknowledged", len(pending), now - last_progress)
                return
            if self.dispatch.poll(POLL_MS):
                last_progress = time.monotonic()
            self.hb.beat(self.snapshot)
            if self.writer_restart is not None:
                self.poll_requests()


class _RingAllocator:
    """The :class:`~.source_base.SlotAllocator` a source gets from :meth:`Source.attach_ring`: thread-safe, never
    blocks (the ring's free list has its own lock)."""

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring

    def acquire(self, shape, dtype) -> SlotLease | None:
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if math.prod(shape) * dtype.itemsize > self.ring.slot_bytes:
            return None
        slot = self.ring.acquire()
        if slot is None:
            return None
        return SlotLease(slot, self.ring.view(slot, shape, dtype))

    def release(self, lease: SlotLease) -> None:
        self.ring.release(int(lease.slot))

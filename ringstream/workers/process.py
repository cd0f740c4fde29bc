"""The worker process: FrameHeaders in, Results out (docs/DAEMON.md, "worker i").

Sockets: frames DEALER (connect to the ingest's ROUTER: FrameHeaders in; the worker's Credit out, first its queue
depth, then the frames finished, a few at a time while more wait: docs/DAEMON.md, "Delivery"), results PUSH (connect to the writer), heartbeat PUSH
(connect to the supervisor). For each frame the worker views the pixels in place (the ring segment is
attached by name on first sight and kept, untracked by the resource tracker) or in the inline buffer, checks the
shape against the map, integrates with the engine of ``create_engine(config.workers.engine, imap, dark)``, gives
the ingest one credit back and sends a Result (the ingest frees the slot once the writer has the Result): lineout
float32 ``[n_r]`` (and the cake float32 ``[n_r, n_eta]`` with ``Write2D 1``),
``timings = {"integrate": s, "queue": s from the ingest timestamp to the start of integration, "total": s}``.
The worker reads the engine's declared capabilities (:class:`~ringstream.engines.base.Capabilities`) once and
branches on them. With ``batch`` (``integrate_many``; the GPU engine) the worker takes the waiting frame and up to
``engine.batch - 1`` more arriving within ``GATHER_S``, integrates them in one call (``integrate`` is the batch's
time per frame), then returns the batch's credit and sends one Result per frame; with ``asynchronous`` and
``[workers] batches_in_flight`` > 1 it runs the pipelined loop (:mod:`.pipeline`) instead; with ``host_memory`` each
ring it attaches is page-locked with ``engine.register_host_memory`` (unregistered before it is unmapped) so frames
go to the device by DMA.

A frame that travelled compressed (``codec`` bslz4 / lz4) is decoded here on the CPU with the codec libraries
before the engine sees it (:meth:`_Worker.decoded`), so the engine integrates exactly the raw frame; an engine that
declares ``compressed_input`` (the GPU engine) gets it still compressed (an
:class:`~ringstream.engines.gpu_decode.EncodedFrame` viewing the slot) and decodes it on the device; a frame it
flags (``decode_failed``) is integrated one by one, decoded on the CPU, which rejects it with the reason.

A frame it cannot use (a shape other than the map's, an unsupported dtype, compressed bytes that do not decode to the
frame, an engine exception) becomes a Result with ``status="rejected"`` and a one-line reason, so the writer can
account for every index; the worker carries on.
Garbage on the frames socket (no frame_index to answer for) is counted under ``protocol_errors_<kind>``.
Every Result and partial sum sent is kept until the writer has flushed its frames (:mod:`.kept`): the ingest passes
the writer's :class:`~ringstream.protocol.Flushed` notices on over the frames socket, and a replacement writer's
notice (``restart``) has the worker send again what it kept from where that writer reopened its files.
Counters: ``integrated``, ``rejected`` (of them ``rejected_decode_error``: compressed bytes that do not decode),
``protocol_errors_<kind>``, ``kept_resent``, ``kept_over_limit``. The
worker exits when ``stop`` is set and no message arrived for ~0.2 s.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import zmq

from ..compression import blocks_carry_over
from ..engines.base import Capabilities, check_capabilities
from ..engines.gpu_decode import EncodedFrame
from ..engines.registry import ENGINES, create_engine, device_for_worker
from ..engines.topology import place_worker
from ..errors import RingstreamError
from ..geometry.cache import load_or_build
from ..geometry.mask_store import store_dir
from ..images.files import load_dark
from ..images.frame_codecs import CodecError, decode_frame
from ..protocol import (
    MASK_KEY,
    PEAK_SEQ_KEY,
    Credit,
    Flushed,
    FrameHeader,
    OmegaPartial,
    Resent,
    Result,
    frame_array,
    frame_payload,
    result_buffers,
    worker_identity,
)
from ..runs.state import state_dir_of
from ..trace import PARTIAL_SENT, RECEIVED, RESULT_SENT, StageTrace, open_trace
from ..transport.child import HeartbeatSender, receive, run_child, supervisor_gone
from ..transport.ring_size import CPU_SLOTS
from ..transport.security import REMOTE_INDEX_BASE, client_context
from ..transport.shm_ring import FrameRing
from ..transport.sockets import (
    RejectLog,
    cake_itemsize,
    frames_per_partial,
    make_socket,
    partial_itemsize,
    results_hwm,
    send_message,
)
from .compress import SumCompressor, cake_chunks
from .fitting import WorkerFitting
from .kept import KeptResults
from .masks import MaskedEngines
from .omega import OmegaPartials
from .pipeline import PipelinedLoop, batch_of_one_kind

log = logging.getLogger("ringstream.worker")

#: how long the worker waits for a frame before looking at ``stop`` again, in ms
IDLE_MS = 50

#: with a batching engine: how long the worker waits for more frames to fill a batch after the first, in s
GATHER_S = 0.002

#: after ``stop``, a message that could not be sent for this long (the peer is gone) is dropped, in s
GIVE_UP_S = 5.0

#: while frames wait on its frames socket, a worker returns their credit in Credits of up to this many frames (one
#: a frame costs the worker a send and the ingest a receive per frame); with none waiting, at once
CREDIT_BATCH = 4


def run(config, ready, stop, index: int = 0, fetch_mask=None, dark_path: str | None = None) -> int:
    """Entry point of worker ``index`` (see the module docstring). Returns the exit code. ``fetch_mask(digest) ->
    folder``: where a pixel mask named by frames is (default: the daemon's mask store); ``dark_path``: the dark
    frame's file (default ``[run] dark``, else the parameter file's ``Dark``): a joined worker's copies."""
    return run_child(config, f"worker-{index}",
                     lambda: _Worker(config, int(index), fetch_mask, dark_path).run(ready, stop), log,
                     prefix=f"worker-{index}: ")


def choose_path(caps: Capabilities, batch: int, batches_in_flight: int) -> str:
    """How a worker integrates with an engine that declares ``caps`` and takes ``batch`` frames a call:
    ``"pipelined"`` (asynchronous, and ``[workers] batches_in_flight`` > 1: :class:`.pipeline.PipelinedLoop`),
    ``"batched"`` (several frames a call: ``_Worker.handle_many``) or ``"single"`` (``_Worker.handle``)."""
    if batches_in_flight > 1 and caps.asynchronous:
        return "pipelined"
    return "batched" if batch > 1 else "single"


class _Worker:
    #: per-frame stage stamps ([supervisor] trace_dir, ringstream/trace.py), or None
    trace: StageTrace | None = None

    def __init__(self, config, index: int, fetch_mask=None, dark_path: str | None = None) -> None:
        self.config = config
        self.index = index
        self.fetch_mask = fetch_mask
        self.dark_path = dark_path
        self.counters: dict[str, int] = {"integrated": 0, "rejected": 0}
        self.rings: dict[str, FrameRing] = {}
        mb = int(config.transport.kept_results_mb) if config is not None else 512
        self.kept = KeptResults(mb * 1_000_000)  # what was sent to the writer, until it is flushed
        self._registered: set[str] = set()  # rings page-locked with the engine (register_host_memory)
        self.unreturned = 0  # credit of frames finished, held back while more frames were waiting (give_credit)
        self.compressing = SumCompressor(zarr=config is not None and not config.run.no_zarr)  # whole sums, in order
        self.block_starts = False  # (set with the map: whole sums go with their blocks' starts)
        self.trace = open_trace(config, f"worker-{index}") if config is not None else None

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def snapshot(self) -> dict:
        fitting = self.fitting.snapshot() if getattr(self, "fitting", None) is not None else {}
        return {**self.counters, **self.kept.counters, "kept": len(self.kept), **self.rejects.counters(), **fitting}

    def run(self, ready, stop) -> int:
        cfg = self.config
        device = device_for_worker(cfg.workers.gpus, self.index)
        # first: pinned near the GPU before anything is allocated (the map, the engine's pinned buffers, the CUDA
        # context), since memory lands on the node of the CPU that first touches it
        self.placement = place_worker(cfg.workers.numa_affinity, cfg.workers.engine, device, f"worker-{self.index}")
        params = cfg.load_params()
        imap, from_cache = load_or_build(params)
        self.shape = (int(imap.shape[0]), int(imap.shape[1]))
        self.n_r, self.n_eta = int(imap.n_r), int(imap.n_eta)
        dark_path = self.dark_path if self.dark_path is not None else cfg.run.dark or params.Dark
        dark = load_dark(dark_path, self.shape) if dark_path else None

        def make(m):
            return create_engine(cfg.workers.engine, m, dark, normalize=params.Normalize, device=device)

        self.use_engine(make(imap))
        # what `ringstream status` shows of this worker: its GPU (-1: the CPU engine) and the NUMA node it is pinned
        # to (-1: not pinned)
        self.counters["gpu"] = device if ENGINES[self.engine_name].device == "cuda" else -1
        self.counters["numa_node"] = self.placement.node if self.placement.pinned else -1
        store = store_dir(state_dir_of(cfg.run))
        self.masks = MaskedEngines(self.engine, make, params, self.fetch_mask or (lambda digest: store),
                                   f"worker-{self.index}", beating=lambda: self.hb.beating(self.snapshot()),
                                   base_map=imap)
        self.write_2d = bool(params.Write2D)
        # without per-frame cakes on the wire, the worker sums its cakes per OmegaSumFrames group (workers/omega.py)
        # frames whose Results or partial sum this worker holds keep their ring slots until the writer has them: at
        # most half the ring, over the workers
        self.hold_limit = max(1, (int(cfg.transport.ring_slots) or CPU_SLOTS) // (2 * max(1, int(cfg.workers.count))))
        self.partials = None if self.write_2d else OmegaPartials(int(params.OmegaSumFrames), self.n_r, self.n_eta,
                                                                 max_frames=self.hold_limit)
        self.stored_dtype = "<f4" if cfg.output.cake_dtype == "float32" else "<f8"
        # a group's whole sum goes as the chunks the files store (not in the precision-bounded mode: its rounding is
        # the writer's): the HDF5 chunk, and the zarr chunk only when the run writes a zarr.zip and the writer cannot
        # make it of the HDF5 chunk's blocks (compression.blocks_carry_over)
        self.compress_sums = not cfg.output.cake_noise_fraction
        self.zarr_chunks = not cfg.run.no_zarr and not blocks_carry_over(self.n_r * self.n_eta)
        # otherwise, with a zarr.zip, the starts of the HDF5 chunk's blocks go with it: the writer, whose threads
        # share one lock, then makes the zarr chunk of them without walking the blocks in Python
        self.block_starts = not cfg.run.no_zarr and not self.zarr_chunks
        self.compressing.zarr, self.compressing.starts = self.zarr_chunks, self.block_starts
        # with per-frame cakes, each frame its own omega-sum group: the cake and its sum go as the files store them
        # (not when the writer needs the values: MIDAS Int2D.bin, or sums of several cakes that it adds up)
        self.compress_cakes = self.write_2d and self.compress_sums and int(params.OmegaSumFrames) in (0, 1) and \
            not cfg.run.midas_binaries
        log.info("worker-%d: engine %s (asked %r), map %s (%s), %d x %d bins%s", self.index, self.engine_name,
                 cfg.workers.engine, imap.key[:12], "cache" if from_cache else "built", self.n_r, self.n_eta,
                 f", dark {dark_path}" if dark_path else "")
        t = cfg.transport
        hwm = max(1, int(t.queue_depth or t.ring_slots or CPU_SLOTS))
        ctx = zmq.Context()
        if self.index >= REMOTE_INDEX_BASE:  # joined from another host: CURVE on every socket (docs/REMOTE.md)
            client_context(t, ctx)
        self.rejects = RejectLog(log, f"worker-{self.index} frames socket")
        try:
            # peak fitting: None when the parameter file asks for none
            self.fitting = WorkerFitting.create(cfg, params, imap, self.engine_name, ctx, f"worker-{self.index}")
            self.pid = os.getpid()
            frames = ctx.socket(zmq.DEALER)
            frames.setsockopt(zmq.ROUTING_ID, worker_identity(self.index, self.pid))  # how the ingest knows it
            frames.setsockopt(zmq.LINGER, 0)
            frames.setsockopt(zmq.RCVHWM, 0)  # credit bounds what the ingest sends
            frames.connect(t.frames_endpoint)
            self.frames = frames
            n_peaks = self.fitting.fitter.slots if self.fitting is not None else 0
            if self.fitting is not None and self.fitting.caked is not None:
                n_peaks *= 1 + self.n_eta  # the per-η fits: as many rows again in each η bin
            self.results = make_socket(ctx, zmq.PUSH, t.results_endpoint, bind=False,
                                       hwm=results_hwm(t.results_queue_mb, hwm, self.n_r, self.n_eta, self.write_2d,
                                                       n_peaks, frames_per_partial=frames_per_partial(
                                                           self.write_2d, params.OmegaSumFrames, cfg.workers.count),
                                                       partial_itemsize=partial_itemsize(
                                                           params.OmegaSumFrames, int(self.stored_dtype[-1]),
                                                           self.compress_sums, self.zarr_chunks),
                                                       cake_itemsize=cake_itemsize(
                                                           int(self.stored_dtype[-1]), self.compress_cakes,
                                                           self.zarr_chunks)))
            self.hb = hb = HeartbeatSender(make_socket(ctx, zmq.PUSH, t.events_endpoint, bind=False, hwm=16),
                                           "worker", self.index, cfg.supervisor.heartbeat_interval)
            hb.beat(self.snapshot(), state="starting", force=True)
            if self.fitting is not None and self.fitting.engine == "gpu":  # its kernels compiled, beating meanwhile
                with hb.beating(self.snapshot(), state="starting"):
                    took = self.fitting.warm_up(imap.r_px, imap.n_eta)
                log.info("worker-%d: fitting warmed up in %.2f s", self.index, took)
            self.stop = stop
            depth = cfg.workers.batches_in_flight
            path = choose_path(self.caps, self.batch, depth)
            # the frames this worker may hold at once: its queue, and enough for every batch it keeps in flight
            self.send(frames, Credit(worker=self.index, pid=self.pid,
                                     n=max(hwm, self.batch * (depth if path == "pipelined" else 1))))
            ready.set()
            if path == "pipelined":
                log.info("worker-%d: up to %d batches of %d frames in flight", self.index, depth, self.batch)
                PipelinedLoop(self, depth).run(frames, stop, IDLE_MS)
            else:
                while True:
                    if frames.poll(IDLE_MS, zmq.POLLIN):
                        if path == "batched":
                            self.handle_many(frames)
                        else:
                            self.handle(frames)
                    elif stop.is_set():
                        break
                    else:
                        self.send_partials(idle=True)
                    self.send_partials()
                    if self.kept.owed or self.unreturned:  # credit withheld (kept results over their limit,
                        self.give_credit(0)  # or held back while frames were waiting)
                    hb.beat(self.snapshot)
            self.send_partials(idle=True)
            hb.beat(self.snapshot(), state="done", force=True)
            fitting = getattr(self, "fitting", None)
            calls = fitting.counters["fit_calls"] if fitting is not None else 0
            log.info("worker-%d: done: integrated %d, rejected %d%s", self.index, self.counters["integrated"],
                     self.counters["rejected"], f", fitted in {calls} calls "
                     f"({self.counters['integrated'] / calls:.1f} frames a call)" if calls else "")
            return 0
        finally:
            if self.trace is not None:
                self.trace.save()
            t0 = time.monotonic()
            # results and credit already queued must go out, unless the supervisor is gone (and the others with it)
            ctx.destroy(linger=0 if supervisor_gone() else 2000)
            for ring in self.rings.values():
                self.unregister(ring)
                ring.close()
            log.info("worker-%d: sockets closed and %d ring(s) released in %.3f s", self.index, len(self.rings),
                     time.monotonic() - t0)

    def use_engine(self, engine) -> None:
        """Take ``engine`` in use: its name (recorded in every Result), its declared capabilities (checked against
        its methods, once) and the frames one call takes (``engine.batch`` for a batch engine, else 1)."""
        self.engine = engine
        self.engine_name = str(engine.name)
        self.caps = check_capabilities(engine)
        # a batch engine (the GPU one) takes up to engine.batch frames from different slots at once
        self.batch = int(engine.batch) if self.caps.batch else 1

    # ------------------------------------------------------------------------------------------------ a frame
    def receive(self, sock, flags: int = 0):
        """The next FrameHeader on ``sock`` and its buffers, or None for a message rejected (counted);
        ``zmq.Again`` with ``flags=zmq.NOBLOCK`` when nothing is waiting."""
        got = receive(sock, self.rejects, (FrameHeader, Flushed), flags=flags, where="on the frames socket")
        if got is not None and type(got[0]) is Flushed:
            self.on_flushed(got[0])
            return None
        return got

    def on_flushed(self, msg: Flushed) -> None:
        """The writer's watermark (passed on by the ingest): forget what it has for good; a replacement writer
        gets again what was kept from where it reopened its files."""
        if not msg.restart:
            self.kept.flushed(msg.below, msg.writer_pid)
        else:
            self.send_compressed(wait=True)  # (every sum due is kept, so that the Resent below follows it)
            again = self.kept.to_resend(msg.below)
            self.kept.flushed(msg.below, msg.writer_pid)
            log.warning("worker-%d: a new writer (pid %d) reopened its files at frame %d: sending it %d kept "
                        "messages again", self.index, msg.writer_pid, msg.below, len(again))
            for m, buffers in again:
                self.send(self.results, m, buffers)
            # behind them: the writer knows what it still lacks was held by a worker that died too
            self.send(self.results, Resent(worker=self.index, worker_pid=self.pid, writer_pid=msg.writer_pid))
        self.give_credit(0)  # credit owed while over the kept limit, now that some is freed

    def receive_frame(self, sock, flags: int = 0) -> list | None:
        """The next frame on ``sock`` as a batch item ``[header, t_start, pixels or None, reason]`` (pixels: a view
        of its slot after the checks; None with the reason it is rejected), or None for a message rejected."""
        got = self.receive(sock, flags)
        if got is None:
            return None
        msg, buffers = got
        t_start = time.time()
        if self.trace is not None:
            self.trace.mark(RECEIVED, int(msg.frame_index))
        try:
            return [msg, t_start, self.pixels(msg, buffers), ""]
        except RingstreamError as exc:
            return [msg, t_start, None, str(exc)]

    def handle(self, sock) -> None:
        got = self.receive(sock)
        if got is None:
            return
        msg, buffers = got
        t_start = time.time()
        if self.trace is not None:
            self.trace.mark(RECEIVED, int(msg.frame_index))
        lineout = cake = None
        reason = ""
        t_int = 0.0
        try:
            pixels = self.pixels(msg, buffers)
            engine = self.masks.engine_of(msg)
            t0 = time.perf_counter()
            lineout, cake = engine.integrate(pixels)
            t_int = time.perf_counter() - t0
            del pixels  # drop the view of the slot before releasing it
        except RingstreamError as exc:
            reason = str(exc)
        except Exception as exc:  # an engine failure on one frame must never kill the worker
            reason = f"frame {msg.frame_index}: engine {self.engine_name} failed: {type(exc).__name__}: {exc}"
            log.exception("worker-%d: frame %d", self.index, msg.frame_index)
        finally:
            self.give_credit(1, waiting=bool(sock.get(zmq.EVENTS) & zmq.POLLIN))
        timings = {"queue": max(0.0, t_start - float(msg.timestamp)) if msg.timestamp else 0.0,
                   "integrate": t_int, "total": time.time() - t_start}
        fitted = self.fit([msg], [lineout], timings)[0] if not reason else None
        caked = self.fit_caked([msg], [lineout], [cake], timings)[0] if not reason else None
        self.send_result(msg, reason, lineout, cake, timings, fitted, caked)

    # ------------------------------------------------------------------------------------- a batch of frames
    def handle_many(self, sock) -> None:
        """Take the waiting frame and up to ``batch - 1`` more that arrive within ``GATHER_S``, integrate the usable
        ones in one ``integrate_many`` call, release their slots and send one Result per frame (as :meth:`handle`)."""
        got: list = []  # (header, t_start, pixels or None, reason)
        deadline = time.monotonic() + GATHER_S
        while len(got) < self.batch:
            try:
                item = self.receive_frame(sock, zmq.NOBLOCK)
            except zmq.Again:
                left = deadline - time.monotonic()
                if not got:  # poll() said a message was waiting
                    left = max(left, IDLE_MS / 1e3)
                if left <= 0 or not sock.poll(max(1, int(left * 1e3)), zmq.POLLIN):
                    break
                continue
            if item is not None:
                got.append(item)
        if not got:
            return
        # frames of the batch's first usable kind go together; any others one by one
        together = batch_of_one_kind(got)
        results: dict[int, tuple] = {}
        t_int = 0.0
        if together:
            t0 = time.perf_counter()
            try:
                engine = self.masks.engine_of(together[0][0])
                lines, cakes = engine.integrate_many([g[2] for g in together])
                t_int = (time.perf_counter() - t0) / len(together)
                for i, g in enumerate(together):
                    results[id(g)] = (lines[i], cakes[i], t_int)
            except Exception:  # find the frame(s) at fault: one by one, as handle() would
                log.debug("worker-%d: batch of %d failed; integrating one by one", self.index, len(together),
                          exc_info=True)
        del together
        self.finish_batch(got, results)

    def finish_batch(self, got: list, results: dict, hold: list | None = None) -> None:
        """The end of a batch (``handle_many`` and the pipelined loop): usable frames of ``got`` (``[header,
        t_start, pixels or None, reason]``) that ``results`` (``id(item) -> (lineout, cake, seconds)``) lacks are
        integrated one by one (an engine error rejects that frame alone), the views of the slots are dropped and
        the slots released; then the batch is fitted in one call and one Result per frame goes out, in ``got``
        order (:meth:`send_batches`) — or, with ``hold`` (a list), the batch is appended to it to be fitted and
        sent later with the batches after it (its results must then own their memory)."""
        for g in got:
            if g[2] is None or id(g) in results:
                continue
            t0 = time.perf_counter()
            try:
                lineout, cake = self.masks.engine_of(g[0]).integrate(g[2])
                results[id(g)] = (lineout, cake, time.perf_counter() - t0)
            except RingstreamError as exc:
                g[3] = str(exc)
                if isinstance(exc, CodecError):  # a compressed frame the engine could not decode
                    self.count("rejected_decode_error")
            except Exception as exc:  # an engine failure on one frame must never kill the worker
                g[3] = f"frame {g[0].frame_index}: engine {self.engine_name} failed: {type(exc).__name__}: {exc}"
                log.exception("worker-%d: frame %d", self.index, g[0].frame_index)
        for g in got:
            g[2] = None  # drop the views of the slots: the ingest may reuse them once the writer has the Results
        self.give_credit(len(got))
        if hold is not None:
            hold.append((got, results))
        else:
            self.send_batches([(got, results)])

    def send_batches(self, batches: list) -> None:
        """Fit the integrated frames of ``batches`` (``[(got, results)]``, as :meth:`finish_batch`) in one call (peak
        fitting), then send one Result per frame, batch by batch in ``got`` order."""
        ok = [(g, results) for got, results in batches for g in got if not g[3] and id(g) in results]
        fits = self.fit([g[0] for g, _ in ok], [results[id(g)][0] for g, results in ok], None)
        fitted = {id(g): f for (g, _), f in zip(ok, fits, strict=True)}
        cakeds = self.fit_caked([g[0] for g, _ in ok], [results[id(g)][0] for g, results in ok],
                                [results[id(g)][1] for g, results in ok], None)
        caked = {id(g): c for (g, _), c in zip(ok, cakeds, strict=True)}
        for got, results in batches:
            for g in got:
                msg, t_start, _, reason = g
                lineout, cake, t = results.get(id(g), (None, None, 0.0))
                timings = {"queue": max(0.0, t_start - float(msg.timestamp)) if msg.timestamp else 0.0,
                           "integrate": t, "total": time.time() - t_start}
                self.send_result(msg, reason, lineout, cake, timings, fitted.get(id(g)), caked.get(id(g)))

    def fit(self, headers, lineouts, timings) -> list:
        """The FrameFits of frames just integrated (one call per frame or batch), or Nones without fitting."""
        if self.fitting is None or not headers:
            return [None] * len(headers)
        t0 = time.perf_counter()
        fits = self.fitting.fit_frames(headers, lineouts, beat=lambda: self.hb.beat(self.snapshot))
        if timings is not None:
            timings["fit"] = time.perf_counter() - t0
        return fits

    def fit_caked(self, headers, lineouts, cakes, timings) -> list:
        """The per-η fits of frames just fitted (``[fit] per_eta``), or Nones."""
        if self.fitting is None or self.fitting.caked is None or not headers:
            return [None] * len(headers)
        t0 = time.perf_counter()
        # a batch's per-η fits can take longer than the supervisor waits for a beat (hundreds of ROIs a frame on a
        # loaded CPU): beat meanwhile, or a busy worker is killed as hung and its replacement does the same
        with self.hb.beating(self.snapshot()):
            out = self.fitting.fit_caked(headers, lineouts, cakes)
        if timings is not None:
            timings["fit_caked"] = time.perf_counter() - t0
        return out

    def send_result(self, msg, reason, lineout, cake, timings, fitted=None, caked=None) -> None:
        common = dict(run_id=msg.run_id, frame_index=msg.frame_index, source_id=msg.source_id,
                      timestamp=msg.timestamp, engine=self.engine_name, worker=self.index, worker_pid=self.pid,
                      timings=timings,
                      metadata={k: v for k, v in msg.metadata.items() if k not in _OURS})  # the source's own
        if reason:
            self.count("rejected")
            if self.counters["rejected"] <= 5:
                log.warning("worker-%d: rejected %s", self.index, reason)
            result, bufs = Result(status="rejected", reason=reason, **common), ()
        else:
            self.count("integrated")
            fit = fitted.fit if fitted is not None else None
            packed = cake_chunks(cake, self.stored_dtype, self.zarr_chunks) if self.compress_cakes else []
            bufs = result_buffers(lineout, cake if self.write_2d and not packed else None, fit,
                                  fitted.curves if fitted is not None else None, caked)
            bufs[1:1] = packed  # (the compressed cake where the cake goes)
            result = Result(status="ok", n_r=self.n_r, n_eta=self.n_eta, has_cake=self.write_2d,
                            cake_chunks=len(packed),
                            n_peaks=0 if fit is None else int(fit.shape[0]),
                            n_rois=0 if fitted is None else int(fitted.rois.shape[0]),
                            n_curve_points=0 if fitted is None else int(fitted.values.size),
                            caked_peaks=0 if caked is None else int(caked.shape[1]), **common)
        t_send = time.monotonic() if self.trace is not None else 0.0  # (stamped before the send: the writer may
        self.send(self.results, result, bufs)  # have it before the send returns)
        if self.trace is not None:
            self.trace.mark(RESULT_SENT, int(msg.frame_index), t_send)
        self.kept.keep(int(msg.frame_index), result, bufs)
        if not reason and self.partials is not None and cake is not None:
            self.partials.add(msg, cake)
            self.send_partials()

    def send_partials(self, idle: bool = False) -> None:
        """Send the partial omega sums that are due (another group started, held too long, or ``idle``)."""
        if self.partials is None:
            return
        for p in self.partials.due(idle, whole_dtype=self.stored_dtype):
            # a group's whole sum goes rounded to the stored dtype, as the writer would store it (half the bytes; the
            # device rounds what it summed alone), and compressed as the files store it, in the worker's compression
            # threads: the writer only places the chunks
            whole = self.partials.whole(p)
            dtype = self.stored_dtype if whole else "<f8"
            total = np.ascontiguousarray(p.total, dtype=dtype)
            msg = OmegaPartial(run_id=p.run_id, group=p.group, n_frames=p.frames.n_frames,
                               first_frame=p.frames.first_frame, last_frame=p.frames.last_frame, worker=self.index,
                               worker_pid=self.pid, frames=p.indices, n_r=self.n_r, n_eta=self.n_eta, dtype=dtype,
                               compressed=whole and self.compress_sums,
                               block_starts=whole and self.compress_sums and self.block_starts)
            if msg.compressed:
                self.compressing.submit(msg, total)
            else:
                self.send_partial(msg, [total])
        self.send_compressed(wait=idle)

    def send_compressed(self, wait: bool = False) -> None:
        """Send the compressed sums whose chunks are made, in the order they fell due (``wait``: all of them)."""
        for msg, chunks in self.compressing.done(wait):
            self.send_partial(msg, chunks)

    def send_partial(self, msg: OmegaPartial, buffers: list) -> None:
        t_send = time.monotonic() if self.trace is not None else 0.0
        self.send(self.results, msg, buffers)
        if self.trace is not None:
            self.trace.mark_many(PARTIAL_SENT, msg.frames, t_send)
        self.kept.keep(max(msg.frames), msg, buffers)
        self.count("omega_partials")

    def register(self, ring: FrameRing) -> None:
        """Page-lock the ring's segment for the engine (when it declares ``host_memory``), so frames go to the
        device by DMA."""
        if not self.caps.host_memory:
            return
        try:
            self.engine.register_host_memory(ring._segment.buf)
            self._registered.add(ring.name)
            log.info("worker-%d: registered ring %s (%d bytes) with the engine", self.index, ring.name,
                     len(ring._segment.buf))
        except Exception as exc:  # not fatal: pageable frames go through the engine's staging buffer
            log.warning("worker-%d: cannot register ring %s with the engine (%s); staging instead", self.index,
                        ring.name, exc)

    def unregister(self, ring: FrameRing) -> None:
        if ring.name not in self._registered:
            return
        try:
            self.engine.unregister_host_memory(ring._segment.buf)
        except Exception as exc:  # pragma: no cover
            log.warning("worker-%d: cannot unregister ring %s (%s)", self.index, ring.name, exc)
        self._registered.discard(ring.name)

    def pixels(self, msg, buffers) -> np.ndarray:
        """The frame's pixels as ``[nZ, nY]`` (a view of the slot or of the inline buffer), after the checks."""
        where = f"frame {msg.frame_index} ({msg.source_id})"
        shape = tuple(int(s) for s in msg.shape)
        if shape != self.shape:
            raise FrameRejected(f"{where}: shape {shape} differs from the map's (NrPixelsZ, NrPixelsY) = {self.shape}")
        dtype = np.dtype(msg.dtype)
        if dtype.kind not in "uif":
            raise FrameRejected(f"{where}: dtype {msg.dtype} is not an integer or float image")
        if msg.codec != "none":
            payload = self.payload(msg, buffers, where)
            if self.caps.compressed_input:  # the engine decodes it (the GPU engine: on the device)
                return EncodedFrame(payload, msg.codec, int(msg.codec_header), int(msg.codec_block), self.shape,
                                    dtype, where)
            return self.decoded(msg, payload, where)
        if msg.location == "inline":
            return frame_array(msg, buffers[0])
        return self.slot_view(msg, where, shape, dtype)

    def payload(self, msg, buffers, where: str) -> np.ndarray:
        """The compressed bytes of a frame that travelled compressed, uint8 ``[nbytes]`` (a view, no copy)."""
        if msg.location == "inline":
            return frame_payload(msg, buffers[0])
        return self.slot_view(msg, where, (int(msg.nbytes),), np.uint8)

    def decoded(self, msg, payload: np.ndarray, where: str) -> np.ndarray:
        """A compressed frame decoded on the CPU (:func:`~ringstream.images.frame_codecs.decode_frame`): a new
        ``[nZ, nY]`` array. Bad bytes reject the frame, counted ``rejected_decode_error``."""
        out = np.empty(self.shape, np.dtype(msg.dtype))
        try:
            decode_frame(msg.codec, payload, out, int(msg.codec_header), int(msg.codec_block))
        except CodecError as exc:
            self.count("rejected_decode_error")
            raise FrameRejected(f"{where}: {exc}") from None
        return out

    def slot_view(self, msg, where: str, shape: tuple, dtype) -> np.ndarray:
        """A view of the frame's ring slot (the ring attached on first sight) as ``shape`` ``dtype``."""
        ring = self.rings.get(msg.shm_name)
        if ring is None:
            try:
                ring = FrameRing.attach(msg.shm_name)
            except (OSError, ValueError) as exc:
                raise FrameRejected(f"{where}: cannot attach shared memory {msg.shm_name!r} ({exc})") from None
            self.rings[msg.shm_name] = ring
            self.register(ring)
        try:
            return ring.view(int(msg.slot), shape, dtype, offset=msg.offset)
        except (ValueError, IndexError) as exc:
            raise FrameRejected(f"{where}: slot {msg.slot} of {msg.shm_name!r} cannot hold it ({exc})") from None

    def give_credit(self, n: int, waiting: bool = False) -> None:
        """Tell the ingest this worker can take ``n`` more frames (it finished ``n``), with the credit held back
        and the credit owed while the kept results were over their limit (:meth:`.kept.KeptResults.credit_now`).
        ``waiting``: more frames wait on the frames socket, so the ingest is not starved: the credit is held back
        until it reaches :data:`CREDIT_BATCH` frames (a Credit a frame costs both sides a message a frame)."""
        self.unreturned += n
        if waiting and self.unreturned < CREDIT_BATCH:
            return
        n, self.unreturned = self.kept.credit_now(self.unreturned), 0
        if n > 0:
            self.send(self.frames, Credit(worker=self.index, pid=self.pid, n=int(n)))

    def send(self, sock, msg, buffers=()) -> None:
        """Send, waiting while the peer's queue is full (backpressure) but never so long that heartbeats stop;
        after ``stop``, a peer that takes nothing for ``GIVE_UP_S`` seconds (gone) gets the message dropped."""
        waited_since = None
        while True:
            try:
                send_message(sock, msg, buffers, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            now = time.monotonic()
            waited_since = waited_since or now
            if self.stop.is_set() and now - waited_since > GIVE_UP_S:
                self.count(f"dropped_{type(msg).__name__.lower()}")
                return
            self.hb.beat(self.snapshot)
            sock.poll(IDLE_MS // 2, zmq.POLLOUT)


#: the metadata keys the ingest adds for the worker (not the source's: left out of the Result)
_OURS = (PEAK_SEQ_KEY, MASK_KEY)


class FrameRejected(RingstreamError):
    """A frame this worker cannot integrate; its message is the Result's one-line reason."""


"""The pipelined GPU worker loop: several batches of frames in flight on the engine's CUDA streams at once.

The plain batching loop (``_Worker.handle_many``) integrates a batch and waits for it before it takes the next, so
the host→device copy of batch k+1 never overlaps the kernels and copy-back of batch k, and the worker's own Python
work (receiving headers, sending results) adds to every batch. Here, with an engine that declares ``asynchronous``
(``submit`` / ``collect``, :class:`~ringstream.engines.base.AsyncEngine`; the CuPy engine), the worker keeps up to
``depth`` batches submitted, one per stream; it gathers the next batch from the frames socket while the device
works, and finishes a batch (gives its credit back, sends its Results, in frame order within the batch) as soon as
the device is done with it, oldest first. ``[workers] batches_in_flight`` sets ``depth`` (1: the plain loop).

Frames the batch cannot take (a shape or dtype the map does not fit, a second dtype in one batch) are handled as
``handle_many`` does: rejected with a reason, or integrated one by one with ``engine.integrate``, once the batches
submitted after theirs are finished and their own batch's results copied (the engine's one-frame path uses the
streams' buffers: a GPU engine refuses it while a submission is outstanding, and it overwrites a stream's results).

With peak fitting and no per-frame cakes, finished batches are held (their credit given back, their lineouts, and
with ``[fit] per_eta`` their cakes, copied out of the pinned buffers) and fitted together, up to :data:`FIT_FRAMES` frames per fit call (fewer when
the worker's share of the ring is smaller: held frames keep their slots until the writer has their Results): a fit
call costs a fixed part per call (the GPU fitter's launch and copy back, NumPy's per-call overhead) that an
engine batch of 8 frames pays 8 times more often. Held frames go out as soon as that many are held,
the oldest has been held :data:`HOLD_S`, or no frame arrived while nothing was in flight (a slow stream waits
at most :data:`HOLD_S`). An empty pipeline is no reason to send: with a shared ring of 32 slots, two workers
often drain theirs between frames, and fitting each of those small batches on its own would pay the fixed part
of a fit call for every few frames.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import zmq

from ..engines.gpu_decode import EncodedFrame
from ..fitting import FIT_FRAMES
from .masks import mask_of

log = logging.getLogger("ringstream.worker")

#: the longest a finished batch is held for fitting with later ones, in s
HOLD_S = 0.05


class PipelinedLoop:
    """Drives ``worker`` (a ``_Worker``: its ``receive_frame``, ``finish_batch``, ``engine``, ``caps``) with up to
    ``depth`` submitted batches of at most ``engine.batch`` frames; the engine must declare ``asynchronous``."""

    def __init__(self, worker, depth: int) -> None:
        self.w = worker
        self.engine = worker.engine
        caps = worker.caps
        if not caps.asynchronous:
            raise TypeError(f"the pipelined loop needs an asynchronous engine; {self.engine.name} is not")
        self.depth = max(1, min(int(depth), int(self.engine.n_streams)))
        self.batch = max(1, int(self.engine.batch))
        # cakes come back when they are written (Write2D 1); the omega sums of a worker that writes none are summed
        # on the device by an engine that declares device_omega_sums (engine.omega_add), else on this side
        partials = getattr(worker, "partials", None)
        # per-η fits ([fit] per_eta) need every cake on this side: the sums are then made here too
        fitting = getattr(worker, "fitting", None)
        per_eta = fitting is not None and fitting.caked is not None
        self.device_sums = partials is not None and not worker.write_2d and caps.device_omega_sums and not per_eta
        if self.device_sums:
            partials.device = self.engine
        self.want_cake = bool(worker.write_2d or per_eta or (partials is not None and not self.device_sums))
        # finished batches held to be fitted together: without cakes coming back (a held cake would be a copy), or
        # when they come back only for the per-η fits and the omega sums: then the cakes are copied with the
        # lineouts (a fit call's fixed part, kernel launches and copies, costs more than the copy of 8 cakes)
        self.hold_fits = fitting is not None and (not self.want_cake or (per_eta and not worker.write_2d))
        self.copy_cakes = self.hold_fits and self.want_cake
        self.held: list = []
        self.held_frames = 0
        # held frames keep their ring slots until the writer has their Results: no more than the worker's share
        self.fit_frames = max(1, min(FIT_FRAMES, int(getattr(worker, "hold_limit", FIT_FRAMES))))
        self.held_since = 0.0
        self.inflight: deque = deque()  # (submission or None, [[header, t_start, pixels, reason], ...])
        self.mask = ""  # the pixel mask of self.engine's map ("" = the parameter file's alone)

    def run(self, sock, stop, idle_ms: int) -> None:
        """Until ``stop`` is set and nothing is waiting or in flight."""
        w = self.w
        while True:
            # wait for input only when the device has nothing of ours to finish
            timeout = 0 if self.inflight else idle_ms
            if self.held and not self.inflight:  # wait for more frames no longer than the held ones may wait
                timeout = max(0, min(idle_ms, int((self.held_since + HOLD_S - time.monotonic()) * 1e3)))
            if sock.poll(timeout, zmq.POLLIN):
                got = self.gather(sock)
                if got:
                    if len(self.inflight) >= self.depth:
                        self.finish(self.inflight.popleft())
                    self.start(got)
            elif self.inflight:
                sub = self.inflight[0][0]
                if sub is None or sub.ready() or not sock.poll(1, zmq.POLLIN):
                    self.finish(self.inflight.popleft())
                del sub
            elif stop.is_set():
                self.send_held()
                return
            else:  # nothing arrived and nothing is in flight: the held Results, then the omega sums, go out
                self.send_held()
                w.send_partials(idle=True)
            while self.inflight and (self.inflight[0][0] is None or self.inflight[0][0].ready()):
                self.finish(self.inflight.popleft())
            if self.held and (self.held_frames >= self.fit_frames or time.monotonic() - self.held_since >= HOLD_S):
                self.send_held()
            if not self.held:  # a group's omega sum goes out after the Results of its frames
                w.send_partials()
            if w.kept.owed:  # credit withheld while the kept results were over their limit
                w.give_credit(0)
            w.hb.beat(w.snapshot)

    def gather(self, sock) -> list:
        """Every frame header waiting, up to ``batch``, each with its pixels (a view of its slot) or a reason."""
        w = self.w
        got: list = []
        while len(got) < self.batch:
            try:
                item = w.receive_frame(sock, zmq.NOBLOCK)
            except zmq.Again:
                break
            if item is not None:
                got.append(item)
        return got

    def start(self, got: list) -> None:
        """Submit the usable frames of ``got`` of its first usable dtype; queue the batch to be finished."""
        together = batch_of_one_kind(got)
        sub = None
        if together and mask_of(together[0][0]) != self.mask:
            self.switch(together[0][0])
            if mask_of(together[0][0]) != self.mask:  # its mask cannot be had: rejected one by one in finish()
                together = []
        if together:
            try:
                sub = self.engine.submit([g[2] for g in together], want_cake=self.want_cake)
            except Exception:  # find the frame(s) at fault one by one in finish(), as handle_many does
                log.debug("worker-%d: submit of %d frames failed; integrating one by one", self.w.index,
                          len(together), exc_info=True)
                sub = None
        self.inflight.append((sub, got, together if sub is not None else []))

    def switch(self, header) -> None:
        """Frames of another pixel mask (a new series): everything in flight is finished and sent, the device's
        omega sums too, before the engine of that mask's map takes over (:mod:`.masks`)."""
        while self.inflight:
            self.finish(self.inflight.popleft())
        self.send_held()
        self.w.send_partials(idle=True)
        try:
            engine = self.w.masks.engine_of(header)
        except Exception:  # its mask cannot be had: the frames are rejected one by one in finish(), with the reason
            return
        self.engine, self.mask = engine, mask_of(header)
        if self.device_sums:
            self.w.partials.device = engine

    def finish(self, item) -> None:
        """Collect a submitted batch (its frames the batch could not take are integrated one by one), then give back
        its credit and send its Results (``_Worker.finish_batch``). The results are views of the stream's pinned
        buffers: they are encoded before the stream is used again."""
        sub, got, together = item
        results: dict[int, tuple] = {}
        if sub is not None:
            t0 = time.perf_counter()
            lines, cakes = self.engine.collect(sub)
            t_int = (time.perf_counter() - t0) / max(1, len(together))
            # compressed frames whose bytes did not decode on the device: integrated (decoded on the CPU, which
            # rejects them with the reason) one by one in finish_batch, never summed here
            failed = set(self.engine.decode_failed(sub)) if self.w.caps.compressed_input else set()
            for i, g in enumerate(together):
                if i in failed:
                    continue
                # held for fitting: the lineout is copied out of the stream's pinned buffer (reused at its next
                # submit); otherwise the Result is encoded from the view before that
                line = lines[i].copy() if self.hold_fits else lines[i]
                cake = cakes[i] if cakes is not None else None
                if self.copy_cakes and cake is not None:
                    cake = cake.copy()
                results[id(g)] = (line, cake, t_int)
            if self.device_sums:  # before the stream's next submit: the adds read this submission's cakes
                partials = self.w.partials
                headers = [g[0] for g in together]
                self.engine.omega_add(sub, [-1 if i in failed else partials.key(h) for i, h in enumerate(headers)])
                partials.count([h for i, h in enumerate(headers) if i not in failed])
        if any(g[2] is not None and id(g) not in results for g in got):
            # frames to integrate one by one (another kind than the batch's, a failed decode or submit): the engine's
            # one-frame path uses its streams' buffers, which must then hold nothing still wanted (CupyEngine: it
            # refuses while a submission is outstanding, and overwrites a stream's pinned results). So this batch's
            # results, views of such a buffer unless held, are copied, and the later batches finished first
            if not self.hold_fits:
                results = {k: (line.copy(), None if cake is None else cake.copy(), t)
                           for k, (line, cake, t) in results.items()}
            while self.inflight:
                self.finish(self.inflight.popleft())
        if not self.hold_fits:
            self.w.finish_batch(got, results)
            return
        if not self.held:
            self.held_since = time.monotonic()
        self.w.finish_batch(got, results, hold=self.held)
        self.held_frames += len(got)

    def send_held(self) -> None:
        """Fit the held batches in one call and send their Results."""
        if self.held:
            batches, self.held, self.held_frames = self.held, [], 0
            self.w.send_batches(batches)


def batch_of_one_kind(got: list) -> list:
    """The usable items of ``got`` (``[header, t_start, pixels or None, reason]``) that go to the engine in one
    call: those of the first usable one's dtype, compressed (EncodedFrame) or not as it is, and pixel mask."""
    usable = [g for g in got if g[2] is not None]
    if not usable:
        return []
    kind = (usable[0][2].dtype, isinstance(usable[0][2], EncodedFrame), mask_of(usable[0][0]))
    return [g for g in usable if (g[2].dtype, isinstance(g[2], EncodedFrame), mask_of(g[0])) == kind]

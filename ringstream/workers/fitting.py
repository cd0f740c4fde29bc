"""The worker's peak fitting: one call per frame or batch that fills the Result's fit buffers.

:meth:`WorkerFitting.fit_frames` takes the FrameHeaders and lineouts of the frames just integrated and returns one
:class:`~ringstream.fitting.frame.FrameFit` per frame (fit float64 ``[slots, 7]``, ROI table int32 ``[n_rois, 2]``,
model values float64 ``[n_curve_points]``). Each frame is fitted with the peak list of its
``metadata["peak_seq"]`` (stamped by the ingest; see :mod:`ringstream.daemon.peaks`): seq 0 is the parameter
file's list; a higher seq comes as a PeakUpdate on the peaks SUB socket. A frame whose seq has not arrived yet is
held until it does (up to :data:`PEAK_WAIT_S`, heartbeats going on), never fitted with another list; after that its
rows are NaN, counted ``fit_nan_peak_list_unknown``.

Fit engine (``[fit] engine``): ``nlopt``; ``gpu`` (the batched LM kernel on the worker's device, every ROI of a batch
of frames in one launch; a ConfigError with the install line without CuPy/a device); ``auto``: gpu when the worker
integrates on the GPU, else nlopt. Model (``[fit] model``): ``pv`` on the bins' R (px), or ``tch`` on their 2θ (deg,
``imap.two_theta``).

With ``[fit] per_eta``, :meth:`WorkerFitting.fit_caked` also fits every peak in every η bin of the frames' cakes
(:class:`~ringstream.fitting.caked.CakedFitter`, the same peak lists, always the TCH model on 2θ): float64
``[n_eta, slots, 7]`` per frame, on the GPU fitter's TCH kernel where the per-frame fits use the GPU fitter, else
the NumPy batched LM.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from ..fitting import choose_engine, peak_slots
from ..fitting.frame import FrameFit, FrameFitter
from ..protocol import PEAK_SEQ_KEY, PeakUpdate, ProtocolError
from ..transport.sockets import recv_message

log = logging.getLogger("ringstream.worker")

#: the longest a frame waits for the PeakUpdate of its peak_seq, in s
PEAK_WAIT_S = 5.0


class WorkerFitting:
    """Fitting for one worker. Build with :meth:`create` (None when the run fits nothing)."""

    def __init__(self, fitter: FrameFitter, sub, label: str, wait_s: float = PEAK_WAIT_S, caked=None) -> None:
        self.fitter = fitter
        self.caked = caked
        self.sub = sub
        self.label = label
        self.wait_s = float(wait_s)
        self.lists: dict[int, tuple[float, ...] | None] = {0: None}
        self.counters = {"peak_updates_received": 0, "peak_waits": 0, "fit_calls": 0}

    @classmethod
    def create(cls, config, params, imap, integration_engine: str, ctx, label: str = "worker"):
        slots = peak_slots(params, config.fit.slots)
        if slots == 0:
            if config.fit.per_eta:
                log.warning("%s: [fit] per_eta is on, but the parameter file fits no peaks (no PeakLocation, "
                            "DoPeakFit 0): no per-eta fits", label)
            return None
        engine = choose_engine(config.fit.engine, integration_engine)
        gpu = None
        if engine == "gpu":
            from ..fitting.gpu_fitter import GpuFitter

            gpu = GpuFitter()
        fitter = FrameFitter(params, imap.r_px, slots, engine=engine, gpu=gpu, model=config.fit.model,
                             two_theta=imap.two_theta)
        caked = None
        if config.fit.per_eta:
            from ..fitting.caked import CakedFitter, gpu_takes_tch

            caked = CakedFitter(params, imap.two_theta, imap.r_px, imap.n_eta, slots,
                                snip_iterations=config.fit.snip_iterations,
                                engine="gpu" if gpu_takes_tch(gpu) else "lm", gpu=gpu,
                                array_module="cupy" if gpu is not None else "numpy")
            log.info("%s: per-eta fits: %d peaks x %d eta bins a frame with %s, SNIP %d iterations", label, slots,
                     imap.n_eta, caked.engine, caked.snip_iterations)
        sub = None
        endpoint = config.transport.peaks_endpoint
        if ctx is not None and endpoint and endpoint != "auto":
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
        log.info("%s: fitting %d peak rows per frame, model %s, with %s (asked %r)%s", label, slots,
                 fitter.model.name, engine, config.fit.engine,
                 f", peaks {', '.join(f'{v:g}' for v in fitter.default_peaks)}" if fitter.default_peaks else
                 ", peaks found automatically")
        return cls(fitter, sub, label, caked=caked)

    @property
    def engine(self) -> str:
        return self.fitter.engine

    def snapshot(self) -> dict:
        caked = self.caked.counters if self.caked is not None else {}
        return {**self.fitter.counters, **caked, **self.counters}

    def warm_up(self, r_px, n_eta: int) -> float:
        """Fit one made-up frame (rings at the parameter file's peaks, or at three radii of the lineout when peaks
        are found) through the calls a real frame takes, per-η fits included, so that the GPU fitter's kernels are
        compiled before the first frame: seconds on a host that has not cached them, during which the worker must
        go on beating (the caller's ``beating``), or the supervisor takes it for hung and replaces it, whose
        replacement compiles again. Counters and once-only log lines are left as they were. Returns the seconds."""
        t0 = time.perf_counter()
        fitters = [self.fitter] + ([self.caked] if self.caked is not None else [])
        saved = [(dict(f.counters), set(f._logged)) for f in fitters]
        r = np.asarray(r_px, dtype=np.float64)
        step = abs(float(r[1] - r[0])) if r.size > 1 else 1.0
        centres = self.fitter.default_peaks or tuple(np.quantile(r, (0.25, 0.5, 0.75)))
        lineout = 100.0 + sum(1e3 * np.exp(-0.5 * ((r - c) / (2.0 * step)) ** 2) for c in centres)
        try:
            self.fitter.fit_many([lineout], [None], lambda k: f"{self.label}: warm-up")
            if self.caked is not None:
                cake = np.repeat(lineout.astype(np.float32)[:, None], int(n_eta), axis=1)
                self.caked.fit_many([cake], [lineout], [None], [f"{self.label}: warm-up"])
        except Exception as exc:  # (the frames will say what fails; the warm-up only saves time)
            log.warning("%s: the fitting warm-up failed (%s: %s)", self.label, type(exc).__name__, exc)
        finally:
            for f, (counters, logged) in zip(fitters, saved, strict=True):
                f.counters.clear()
                f.counters.update(counters)
                f._logged.clear()
                f._logged.update(logged)
        return time.perf_counter() - t0

    def fit_caked(self, headers, lineouts, cakes) -> list:
        """The per-η fits ``[n_eta, slots, 7]`` of frames just fitted by :meth:`fit_frames` (their peak lists known),
        or Nones without ``[fit] per_eta``; a frame whose cake did not come back is NaN (``no_cake``)."""
        if self.caked is None or not headers:
            return [None] * len(headers)
        seqs = [int((h.metadata or {}).get(PEAK_SEQ_KEY, 0) or 0) for h in headers]
        known = [i for i, s in enumerate(seqs) if s in self.lists]
        out = [None] * len(headers)
        fits = self.caked.fit_many([cakes[i] for i in known], [lineouts[i] for i in known],
                                   [self.lists[seqs[i]] for i in known],
                                   [f"{self.label}: frame {headers[i].frame_index}" for i in known])
        for i, f in zip(known, fits, strict=True):
            out[i] = f
        return self._unknown_lists(out, seqs, headers, self.caked)

    def poll(self, timeout_ms: int = 0) -> bool:
        """Take the PeakUpdates waiting (waiting up to ``timeout_ms`` for the first); True if one was new."""
        if self.sub is None:
            if timeout_ms:
                time.sleep(timeout_ms / 1e3)
            return False
        new = False
        while self.sub.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            try:
                msg, _ = recv_message(self.sub, zmq.NOBLOCK)
            except (zmq.Again, ProtocolError):
                continue
            new |= self.take(msg)
        return new

    def take(self, msg) -> bool:
        """Keep a PeakUpdate's list under its seq (once); True if it was new."""
        if not isinstance(msg, PeakUpdate) or int(msg.seq) in self.lists:
            return False
        self.lists[int(msg.seq)] = tuple(float(v) for v in msg.peaks)
        self.counters["peak_updates_received"] += 1
        return True

    def fit_frames(self, headers, lineouts, beat=None) -> list[FrameFit]:
        """One FrameFit per (header, lineout); ``beat()`` is called while waiting for a peak list."""
        self.poll(0)
        self.counters["fit_calls"] += 1
        seqs = [int((h.metadata or {}).get(PEAK_SEQ_KEY, 0) or 0) for h in headers]
        if any(s not in self.lists for s in seqs):
            self.counters["peak_waits"] += 1
            deadline = time.monotonic() + self.wait_s
            while any(s not in self.lists for s in seqs) and time.monotonic() < deadline:
                self.poll(100)
                if beat is not None:
                    beat()
        known = [i for i, s in enumerate(seqs) if s in self.lists]
        out: list[FrameFit | None] = [None] * len(headers)
        if known:
            every = len(known) == len(headers)
            try:
                # the frames' names are built only for a frame that is logged
                fits = self.fitter.fit_many(list(lineouts) if every else [lineouts[i] for i in known],
                                            [self.lists[seqs[i]] for i in known],
                                            lambda k: f"{self.label}: frame {headers[known[k]].frame_index}")
            except Exception as exc:  # a fitting bug must never stop the worker: NaN rows, counted, logged once
                log.debug("%s: fitting failed", self.label, exc_info=True)
                fits = [self.fitter.nan_frame("fit_error", f"{self.label}: frame {headers[i].frame_index}: "
                                              f"{type(exc).__name__}: {exc}") for i in known]
            for i, f in zip(known, fits, strict=False):
                out[i] = f
        return self._unknown_lists(out, seqs, headers, self.fitter)

    def _unknown_lists(self, out: list, seqs: list[int], headers, fitter) -> list:
        """``out`` with the frames whose peak list never arrived (None in it) made NaN by ``fitter``, counted
        ``peak_list_unknown``."""
        for i, s in enumerate(seqs):
            if out[i] is None:
                out[i] = fitter.nan_frame("peak_list_unknown", f"{self.label}: frame {headers[i].frame_index}"
                                          f" (peak list {s} never arrived)")
        return out

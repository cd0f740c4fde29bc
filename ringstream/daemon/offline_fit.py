"""Fitting in offline ``ringstream integrate``: the worker's code on each batch of lineouts.

Each batch's lineouts go through the same :class:`~ringstream.fitting.frame.FrameFitter` the daemon's workers use
(engine ``[fit] engine`` semantics: ``auto`` = gpu with the GPU integration engine, else nlopt; the environment
variable ``RINGSTREAM_FIT_ENGINE``, ``RINGSTREAM_FIT_SLOTS`` and ``RINGSTREAM_FIT_MODEL`` apply as for the daemon);
the Result-shaped arrays
(fit ``[slots, 7]``, ROI table, model values) go into each frame's
:class:`~ringstream.writer.outputs.FrameRecord`, so the offline run writes fit.bin, fit_curves.bin and
``/entry/fit`` through the same sinks as the daemon's writer. With ``--per-eta`` (or ``RINGSTREAM_FIT_PER_ETA``;
``--snip-iterations`` / ``RINGSTREAM_FIT_SNIP_ITERATIONS``) every cake's per-η fits go the same way
(:class:`~ringstream.fitting.caked.CakedFitter`, as a worker makes them).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import ConfigError
from ..fitting import choose_engine, peak_slots
from ..fitting.models import DEFAULT_MODEL, get_model

log = logging.getLogger("ringstream.integrate")


class OfflineFitting:
    """Fits every frame of an offline run; build with :meth:`create` (None when the parameters ask for no fit)."""

    def __init__(self, fitter, slots: int, caked=None) -> None:
        self.fitter, self.slots, self.caked = fitter, int(slots), caked

    @property
    def model(self) -> str:
        """The peak model fitted ("pv" or "tch")."""
        return self.fitter.model.name

    @classmethod
    def create(cls, params, imap, integration_engine: str, per_eta: bool | None = None,
               snip_iterations: int | None = None):
        from ..config.schema import option_of
        from ..fitting.caked import CakedFitter, gpu_takes_tch
        from ..fitting.frame import FrameFitter

        slots = peak_slots(params, int(os.environ.get("RINGSTREAM_FIT_SLOTS", "0") or 0))
        if not slots:
            if per_eta:
                log.warning("--per-eta: the parameter file fits no peaks (no PeakLocation, DoPeakFit 0): no per-eta "
                            "fits")
            return None
        engine = choose_engine(os.environ.get("RINGSTREAM_FIT_ENGINE", "auto"), integration_engine)
        gpu = None
        if engine == "gpu":
            from ..fitting.gpu_fitter import GpuFitter

            gpu = GpuFitter()
        try:
            model = get_model(os.environ.get("RINGSTREAM_FIT_MODEL", "") or DEFAULT_MODEL)
        except ConfigError as exc:
            raise ConfigError(f"environment (RINGSTREAM_FIT_MODEL): {exc}") from None
        fitter = FrameFitter(params, imap.r_px, slots, engine=engine, gpu=gpu, model=model,
                             two_theta=imap.two_theta)
        log.info("fitting %d peak rows per frame, model %s, with %s", slots, model.name, engine)
        if per_eta is None:
            per_eta = os.environ.get("RINGSTREAM_FIT_PER_ETA", "").strip().lower() in ("1", "true", "yes", "on")
        caked = None
        if per_eta:
            if snip_iterations is None:
                env = os.environ.get("RINGSTREAM_FIT_SNIP_ITERATIONS", "")
                snip_iterations = int(env) if env else int(option_of("fit", "snip_iterations").default)
            if int(snip_iterations) < 1:
                raise ConfigError(f"--snip-iterations {snip_iterations}: expected at least 1")
            caked = CakedFitter(params, imap.two_theta, imap.r_px, imap.n_eta, slots,
                                snip_iterations=int(snip_iterations), engine="gpu" if gpu_takes_tch(gpu) else "lm",
                                gpu=gpu, array_module="cupy" if gpu is not None else "numpy")
            log.info("per-eta fits: %d peaks x %d eta bins a frame with %s", slots, imap.n_eta, caked.engine)
        return cls(fitter, slots, caked)

    def fit_batch(self, first_index: int, ids, lineouts: np.ndarray) -> list:
        """The fits (``.fit [slots, 7]``, ``.curves``) of a batch of lineouts ``[n, n_r]``, frames ``first_index ..``."""
        return self.fitter.fit_many(list(np.asarray(lineouts, dtype=np.float64)), None,
                                    [f"frame {first_index + i} ({sid})" for i, sid in enumerate(ids)])

    def fit_caked(self, first_index: int, ids, lineouts: np.ndarray, cakes: np.ndarray) -> list:
        """The per-η fits ``[n_eta, slots, 7]`` of a batch of cakes ``[n, n_r, n_eta]`` (Nones without them)."""
        if self.caked is None:
            return [None] * len(ids)
        return self.caked.fit_many(list(cakes), list(np.asarray(lineouts, dtype=np.float64)), None,
                                   [f"frame {first_index + i} ({sid})" for i, sid in enumerate(ids)])

    def close(self) -> None:
        c = self.fitter.counters
        log.info("fitted %d frames: %d rows ok, %d NaN, %d Nelder-Mead fallbacks", c["fit_frames"], c["fit_rows_ok"],
                 c["fit_rows_nan"], c["fit_fallback_neldermead"])
        if self.caked is not None:
            c = self.caked.counters
            log.info("per-eta fits of %d frames: %d ok, %d NaN (%s)", c["caked_frames"], c["caked_fits_ok"],
                     c["caked_fits_nan"], ", ".join(f"{k[10:]} {v}" for k, v in c.items()
                                                    if k.startswith("caked_nan_")) or "none")

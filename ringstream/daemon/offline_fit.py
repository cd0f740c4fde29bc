"""Fitting in offline ``ringstream integrate``: the worker's code on each batch of lineouts.

Each batch's lineouts go through the same :class:`~ringstream.fitting.frame.FrameFitter` the daemon's workers use
(engine ``[fit] engine`` semantics: ``auto`` = gpu with the GPU integration engine, else nlopt; the environment
variable ``RINGSTREAM_FIT_ENGINE``, ``RINGSTREAM_FIT_SLOTS`` and ``RINGSTREAM_FIT_MODEL`` apply as for the daemon);
the Result-shaped arrays
(fit ``[slots, 7]``, ROI table, model values) go into each frame's
:class:`~ringstream.writer.outputs.FrameRecord`, so the offline run writes fit.bin, fit_curves.bin and
``/entry/fit`` through the same sinks as the daemon's writer.
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

    def __init__(self, fitter, slots: int) -> None:
        self.fitter, self.slots = fitter, int(slots)

    @property
    def model(self) -> str:
        """The peak model fitted ("pv" or "tch")."""
        return self.fitter.model.name

    @classmethod
    def create(cls, params, imap, integration_engine: str):
        from ..fitting.frame import FrameFitter

        slots = peak_slots(params, int(os.environ.get("RINGSTREAM_FIT_SLOTS", "0") or 0))
        if not slots:
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
        return cls(fitter, slots)

    def fit_batch(self, first_index: int, ids, lineouts: np.ndarray) -> list:
        """The fits (``.fit [slots, 7]``, ``.curves``) of a batch of lineouts ``[n, n_r]``, frames ``first_index ..``."""
        return self.fitter.fit_many(list(np.asarray(lineouts, dtype=np.float64)), None,
                                    [f"frame {first_index + i} ({sid})" for i, sid in enumerate(ids)])

    def close(self) -> None:
        c = self.fitter.counters
        log.info("fitted %d frames: %d rows ok, %d NaN, %d Nelder-Mead fallbacks", c["fit_frames"], c["fit_rows_ok"],
                 c["fit_rows_nan"], c["fit_fallback_neldermead"])

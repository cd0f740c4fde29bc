"""What the page shows, shared by every browser session: the latest lineouts and fits, and the service's state.

A feed thread writes it (:mod:`ringstream.view.feeds`); each session's periodic callback reads a
:class:`Snapshot` when :attr:`ViewState.version` has moved. Fits are kept as the three columns the page plots.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

import numpy as np

#: the fit columns (of ``Imax, BG, Mu, Rcen, Sigma, GoF, Area``) the page plots: Rcen, Sigma (as FWHM), Imax
RCEN, SIGMA, IMAX = 3, 4, 0
#: FWHM = Γ = 2.355 σ (docs/MIDAS-FORMATS.md, the pseudo-Voigt's shared width)
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: per peak model (``[fit] model``), the (column, factor) of the position, FWHM and size the page plots, and their
#: titles: pv Rcen, Sigma·2.355, Imax; tch (area, center, sig, gam, FWHM, eta, chi2_dof) center, FWHM, area
PLOTTED = {"pv": ((RCEN, 1.0), (SIGMA, FWHM_PER_SIGMA), (IMAX, 1.0)), "tch": ((1, 1.0), (4, 1.0), (0, 1.0))}
PLOT_TITLES = {"pv": ("Rcen (px)", "FWHM (px)", "Imax"), "tch": ("center (deg 2θ)", "FWHM (deg)", "area")}
#: the most rows kept for a live daemon (the page's history depth is at most this)
MAX_ROWS = 5000


@dataclasses.dataclass
class Snapshot:
    """One reading of the state. ``axes`` f8 ``[3, n_r]`` (R px, 2θ deg, Q 1/Å); ``frames`` int ``[n]`` and
    ``lineouts`` f4 ``[n, n_r]`` (oldest first); ``fits`` f8 ``[n, n_peaks, 3]`` (:data:`PLOTTED`: Rcen px, FWHM
    px, Imax, or with the tch model centre deg 2θ, FWHM deg, area); ``info``: run, name, file, written (frames),
    source ("daemon" | "file"), fit_model ("pv" | "tch"), status (the daemon's, or {})."""

    version: int
    axes: np.ndarray
    frames: np.ndarray
    lineouts: np.ndarray
    fits: np.ndarray
    info: dict[str, Any]


class ViewState:
    """Thread-safe store of rows (``append`` for a live daemon, ``replace`` for a file) and the service's state."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self._lock = threading.Lock()
        self.version = 0
        self._axes = np.zeros((3, 0))
        self._rows: collections.deque = collections.deque(maxlen=max_rows)  # (frame, lineout, fit3 or None)
        self._n_peaks = 0
        self._info: dict[str, Any] = {"run": 0, "name": "", "file": "", "written": 0, "source": "",
                                      "fit_model": "pv", "status": {}}

    def append(self, axes: np.ndarray, frames, lineouts: np.ndarray, fits: np.ndarray | None, **info: Any) -> None:
        """Rows of a :class:`~ringstream.protocol.ViewUpdate`; a new run starts the history again."""
        with self._lock:
            if info.get("run") != self._info.get("run") or axes.shape != self._axes.shape:
                self._rows.clear()
            self._axes = np.array(axes, dtype=np.float64)
            self._n_peaks = 0 if fits is None else int(fits.shape[1])
            model = info.get("fit_model", "pv")
            for i, frame in enumerate(frames):
                self._rows.append((int(frame), np.array(lineouts[i], np.float32),
                                   None if fits is None else _plotted(fits[i], model)))
            self._info.update(info)
            self.version += 1

    def replace(self, axes: np.ndarray, frames: np.ndarray, lineouts: np.ndarray, fits: np.ndarray | None,
                **info: Any) -> None:
        """Every row at once (a file, decimated)."""
        with self._lock:
            self._rows = collections.deque(maxlen=max(len(frames), 1))
            self._axes = np.array(axes, dtype=np.float64)
            self._n_peaks = 0 if fits is None else int(fits.shape[1])
            model = info.get("fit_model", "pv")
            for i, frame in enumerate(frames):
                self._rows.append((int(frame), lineouts[i], None if fits is None else _plotted(fits[i], model)))
            self._info.update(info)
            self.version += 1

    def set_info(self, **info: Any) -> None:
        with self._lock:
            self._info.update(info)
            self.version += 1

    def snapshot(self, last: int) -> Snapshot:
        """The state, with at most the ``last`` rows."""
        with self._lock:
            rows = list(self._rows)[-last:] if last > 0 else []
            n_r = self._axes.shape[1]
            frames = np.array([r[0] for r in rows], dtype=np.int64)
            lineouts = np.stack([r[1] for r in rows]) if rows else np.zeros((0, n_r), np.float32)
            fits = np.full((len(rows), self._n_peaks, 3), np.nan)
            for i, r in enumerate(rows):
                if r[2] is not None:
                    fits[i] = r[2]
            return Snapshot(self.version, self._axes.copy(), frames, lineouts, fits,
                            {**self._info, "status": dict(self._info.get("status") or {})})


def _plotted(fit: np.ndarray, model: str = "pv") -> np.ndarray:
    """``[n_peaks, 3]`` (position, FWHM, size: :data:`PLOTTED` of ``model``) of fit rows ``[n_peaks, 7]``."""
    fit = np.asarray(fit, dtype=np.float64)
    return np.stack([fit[:, col] * k for col, k in PLOTTED[model]], axis=1)

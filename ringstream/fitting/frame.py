"""Fitting whole frames: a lineout and the peak list in force -> the Result's fit buffers.

:class:`FrameFitter` turns each frame's lineout (float64 ``[n_r]`` on the bin centres ``r_px``) into

- ``fit``: float64 ``[slots, 7]``, one row per peak slot ``[Imax, BG, Mu, Rcen, Sigma = Γ/2.355, GoF, Area]``
  (Rcen and Sigma in px, GoF the ROI's sum of squared residuals, Area the integrated peak area above the background
  in intensity·px), a NaN row for a slot not fitted;
- ``rois``: int32 ``[n_rois, 2]`` = (start_bin, n_points) of every ROI fitted, and ``values``: float64
  ``[Σ n_points]``, the fitted model on those bins (fit_curves.bin).

Rows follow the peak list sorted by R (PeakLocation mode) or the peaks found, sorted by R (automatic mode). Every slot
not fitted is NaN with one counted reason (``fit_nan_<reason>``), logged once per reason:
``peak_outside_r_range``, ``more_peaks_than_slots``, ``roi_wider_than_lineout``, ``roi_too_short``,
``nan_in_lineout``, ``flat_lineout``, ``not_found`` (automatic mode: fewer peaks than slots) and ``unused_slot`` (a
peak list shorter than the slots; both not errors, counted only), ``fit_failed`` (both optimisers failed the honest tests), ``fit_error`` (an exception in the fitting code: a bug, logged), ``peak_list_unknown`` (the daemon could not learn the
frame's peak list). Engines: ``"nlopt"`` (one ROI at a time, :mod:`.nlopt_fitter`), ``"lm"`` (the batched algorithm in
NumPy, :mod:`.batched`) and ``"gpu"`` (the same on the device, :mod:`.gpu_fitter`); a ROI the batched fitters fail
is refitted with nlopt (counted ``fit_fallback_nlopt``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import FIT_COLUMNS, peak_slots
from .model import GAMMA, IMAX, MU, N_BG, PER_PEAK, RC, SIGMA_FROM_GAMMA, model_jacobian, peak_area
from .nlopt_fitter import RoiFit, failure_reason, fit_roi
from .peaks import (
    RoiProblem,
    bg_under_peaks,
    find_peaks_auto,
    group_rois,
    initial_problem,
    roi_half_width,
    snap_locations,
)

log = logging.getLogger("ringstream.fitting")

FIT_ENGINES = ("nlopt", "lm", "gpu")

#: reasons of a NaN row that are not problems (counted, never logged as warnings)
QUIET_REASONS = ("not_found", "unused_slot")


@dataclasses.dataclass
class FrameFit:
    """One frame's fit buffers (see the module docstring)."""

    fit: np.ndarray
    rois: np.ndarray
    values: np.ndarray

    @property
    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rois, self.values


@dataclasses.dataclass
class _Plan:
    fit: np.ndarray
    problems: list[RoiProblem]
    where: str


class FrameFitter:
    """Fits frames for one run. ``params``: the run's :class:`~ringstream.params.Params` (PeakLocation, RBinSize,
    FitROIPadding, FitROIAuto, DoSmoothing, MultiplePeaks); ``r_px``: the lineout's bin centres ``[n_r]`` (px);
    ``slots``: rows per frame (``[fit] slots``, 0 = :func:`~ringstream.fitting.peak_slots`); ``engine``: one of
    :data:`FIT_ENGINES`; ``gpu``: an object with ``fit_packed(Packed) -> dict`` (a :class:`.gpu_fitter.GpuFitter`)
    for ``engine="gpu"``."""

    def __init__(self, params, r_px: np.ndarray, slots: int = 0, engine: str = "nlopt", gpu=None) -> None:
        if engine not in FIT_ENGINES:
            raise ValueError(f"fit engine {engine!r}: expected one of {', '.join(FIT_ENGINES)}")
        self.params = params
        self.r_px = np.asarray(r_px, dtype=np.float64)
        self.slots = peak_slots(params, slots)
        self.engine = engine
        self.gpu = gpu
        self.pad = int(params.FitROIPadding)
        self.auto_roi = bool(params.FitROIAuto)
        self.smoothing = bool(getattr(params, "DoSmoothing", False))
        self.max_auto = self.slots if params.MultiplePeaks else min(1, self.slots)
        self.bin_size = float(params.RBinSize)
        self.default_peaks = tuple(sorted(float(v) for v in params.PeakLocation))
        self.counters: dict[str, int] = {"fit_frames": 0, "fit_rows_ok": 0, "fit_rows_nan": 0, "fit_rois": 0,
                                         "fit_fallback_neldermead": 0, "fit_fallback_nlopt": 0}
        self._logged: set[str] = set()

    # ----------------------------------------------------------------------------------------------- public
    def fit(self, lineout: np.ndarray, peaks=None, where: str = "") -> FrameFit:
        """Fit one lineout with the peak list ``peaks`` (px; None = the parameter file's; empty = find them)."""
        return self.fit_many([lineout], [peaks], [where])[0]

    def fit_many(self, lineouts, peak_lists=None, wheres=None) -> list[FrameFit]:
        """Fit several lineouts; the batched engines fit every ROI of every frame in one call."""
        n = len(lineouts)
        peak_lists = list(peak_lists) if peak_lists is not None else [None] * n
        wheres = list(wheres) if wheres is not None else [""] * n
        plans = [self.plan(np.asarray(y, dtype=np.float64), pl, w) for y, pl, w in zip(lineouts, peak_lists, wheres, strict=False)]
        work = [(k, prob) for k, plan in enumerate(plans) for prob in plan.problems]
        ys = [np.asarray(y, dtype=np.float64) for y in lineouts]
        fits = self.solve([prob for _, prob in work], [ys[k] for k, _ in work])
        per_frame: list[list[tuple[RoiProblem, RoiFit]]] = [[] for _ in range(n)]
        for (k, prob), rf in zip(work, fits, strict=False):
            per_frame[k].append((prob, rf))
        return [self.assemble(plans[k], per_frame[k]) for k in range(n)]

    def nan_frame(self, reason: str, where: str = "") -> FrameFit:
        """Every row NaN for ``reason`` (counted and logged like any other), no curves."""
        out = np.full((self.slots, len(FIT_COLUMNS)), np.nan)
        self.reject(reason, self.slots, where)
        self.counters["fit_frames"] += 1
        self.counters["fit_rows_nan"] += self.slots
        return FrameFit(out, np.zeros((0, 2), np.int32), np.zeros(0))

    def counters_snapshot(self) -> dict[str, int]:
        return dict(self.counters)

    # ----------------------------------------------------------------------------------------------- steps
    def reject(self, reason: str, n: int, where: str, detail: str = "") -> None:
        if n <= 0:
            return
        key = f"fit_nan_{reason}"
        self.counters[key] = self.counters.get(key, 0) + n
        # once per reason; a location outside the R range once per location (the warning names it)
        once = reason + detail if reason == "peak_outside_r_range" else reason
        if once not in self._logged and reason not in QUIET_REASONS:
            self._logged.add(once)
            log.warning("%s: %d peak row(s) not fitted: %s%s (logged once per reason; counted as %s)",
                        where or "frame", n, reason, f" ({detail})" if detail else "", key)

    def plan(self, y: np.ndarray, peaks, where: str) -> _Plan:
        """The ROIs to fit in lineout ``y`` and the NaN rows (counted) of the slots that cannot be fitted."""
        out = np.full((self.slots, len(FIT_COLUMNS)), np.nan)
        plan = _Plan(out, [], where)
        n = y.size
        if self.slots == 0:
            return plan
        if n != self.r_px.size:
            self.reject("lineout_size", self.slots, where, f"{n} bins, expected {self.r_px.size}")
            return plan
        if not np.all(np.isfinite(y)):
            self.reject("nan_in_lineout", self.slots, where)
            return plan
        if not float(y.max()) > float(y.min()):
            self.reject("flat_lineout", self.slots, where, f"every bin is {float(y.min()):g}")
            return plan
        peaks = self.default_peaks if peaks is None else tuple(sorted(float(v) for v in peaks))
        if peaks:
            if len(peaks) > self.slots:
                self.reject("more_peaks_than_slots", len(peaks) - self.slots, where,
                            f"{len(peaks)} peaks for {self.slots} rows; the largest R dropped")
                peaks = peaks[: self.slots]
            self.reject("unused_slot", self.slots - len(peaks), where)
            bins = snap_locations(peaks, self.r_px, self.bin_size)
            for loc, b in zip(peaks, bins, strict=False):
                if b < 0:
                    self.reject("peak_outside_r_range", 1, where,
                                f"PeakLocation {loc:g} px has no R bin within 2·RBinSize = {2 * self.bin_size:g} px "
                                f"(R {self.r_px[0]:g}..{self.r_px[-1]:g} px)")
            found = [(s, b) for s, b in enumerate(bins) if b >= 0]
        else:
            bins = find_peaks_auto(y, self.max_auto, self.smoothing)
            found = list(enumerate(bins))
            self.reject("not_found", self.slots - len(found), where)
        if not found:
            return plan
        halves = [roi_half_width(self.r_px, y, b, self.pad, self.auto_roi) for _, b in found]
        if min(2 * h + 1 for h in halves) > n:
            self.reject("roi_wider_than_lineout", len(found), where,
                        f"ROI of {2 * min(halves) + 1} bins, lineout of {n}")
            return plan
        found.sort(key=lambda sb: sb[1])
        for start, stop, members in group_rois(found, halves, n):
            slots = [found[j][0] for j in members]
            bins_ = [found[j][1] for j in members]
            if stop - start < N_BG + PER_PEAK * len(slots) + 3:
                self.reject("roi_too_short", len(slots), where, f"bins {start}..{stop - 1} for {len(slots)} peak(s)")
                continue
            plan.problems.append(initial_problem(self.r_px, y, start, stop, slots, bins_))
        return plan

    def solve(self, problems: list[RoiProblem], lineouts: list[np.ndarray]) -> list[RoiFit]:
        """Fit every ROI with the configured engine (batched engines: one call; failures refitted with nlopt)."""
        if not problems:
            return []
        xs = [self.r_px[p.start:p.stop] for p in problems]
        ys = [y[p.start:p.stop] for p, y in zip(problems, lineouts, strict=False)]
        if self.engine == "nlopt":
            fits = [fit_roi(x, y, p) for x, y, p in zip(xs, ys, problems, strict=False)]
            self.counters["fit_fallback_neldermead"] += sum(f.fallback for f in fits)
            return fits
        from .batched import CONVERGED, fit_batch, pack

        packed = pack(problems, xs, ys)
        res = self.gpu.fit_packed(packed) if self.engine == "gpu" else fit_batch(packed)
        fits = []
        for i, prob in enumerate(problems):
            q = prob.p0.size
            p = np.asarray(res["p"][i, :q], dtype=np.float64)
            cost, c0 = float(res["cost"][i]), float(res["start_cost"][i])
            reason = failure_reason(p, cost, c0, prob) if int(res["status"][i]) == CONVERGED else "max_iter"
            if reason:
                rf = fit_roi(xs[i], ys[i], prob)
                rf.fallback = True
                self.counters["fit_fallback_nlopt"] += 1
                self.counters["fit_fallback_neldermead"] += int(rf.method == "neldermead")
            else:
                rf = RoiFit(p, cost, c0, True, "lm")
            fits.append(rf)
        return fits

    def assemble(self, plan: _Plan, fitted: list[tuple[RoiProblem, RoiFit]]) -> FrameFit:
        """The frame's rows and curves from its fitted ROIs."""
        out = plan.fit
        rois, values = [], []
        for prob, rf in fitted:
            self.counters["fit_rois"] += 1
            if not rf.ok:
                self.reject("fit_failed", len(prob.slots), plan.where, rf.reason)
                continue
            p = sort_peaks(rf.p)
            bg = bg_under_peaks(p, prob.xmid, prob.hw)
            for k, slot in enumerate(prob.slots):
                o = N_BG + PER_PEAK * k
                imax, mu, rc, gam = p[o + IMAX], p[o + MU], p[o + RC], p[o + GAMMA]
                out[slot] = (imax, bg[k], mu, rc, gam / SIGMA_FROM_GAMMA, rf.cost, peak_area(imax, mu, gam))
            x = self.r_px[prob.start:prob.stop]
            f, _ = model_jacobian(x[None, :], p[None, :], np.array([prob.xmid]), np.array([prob.hw]), want_jac=False)
            rois.append((prob.start, prob.n_points))
            values.append(f[0])
        n_ok = int(np.sum(np.isfinite(out[:, 0])))
        self.counters["fit_frames"] += 1
        self.counters["fit_rows_ok"] += n_ok
        self.counters["fit_rows_nan"] += out.shape[0] - n_ok
        table = np.array(rois, dtype=np.int32).reshape(-1, 2)
        vals = np.concatenate(values) if values else np.zeros(0)
        return FrameFit(out, table, vals)


def sort_peaks(p: np.ndarray) -> np.ndarray:
    """The parameter vector with its peak blocks in increasing Rc. Peaks of one ROI may swap places during a fit (the
    model is symmetric in them and their Rc windows overlap); the rows follow the peak list in R order, so must the
    fitted peaks."""
    n_pk = (p.size - N_BG) // PER_PEAK
    blocks = p[N_BG:].reshape(n_pk, PER_PEAK)
    order = np.argsort(blocks[:, RC], kind="stable")
    return np.concatenate([p[:N_BG], blocks[order].reshape(-1)])

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
peak list shorter than the slots; both not errors, counted only), ``fit_failed`` (both optimisers failed the tests
of :mod:`.nlopt_fitter`), ``fit_error`` (an exception in the fitting code: a bug, logged), ``peak_list_unknown``
(the daemon could not learn the frame's peak list). Engines: ``"nlopt"`` (one ROI at a time, :mod:`.nlopt_fitter`), ``"lm"`` (the batched algorithm in
NumPy, :mod:`.batched`) and ``"gpu"`` (the same on the device, :mod:`.gpu_fitter`); a ROI the batched fitters fail
is refitted with nlopt (counted ``fit_fallback_nlopt``).

With the "tch" model (``[fit] model``, :mod:`.tch`) the same ROIs are fitted on the bins' 2θ (degrees, ``x``) and
the rows are ``[area, center (deg), sig (centideg²), gam (centideg), FWHM (deg), eta, chi²/dof]``; PeakLocation
stays in px (snapped on ``r_px``, as for pv), so a peak list means the same bins for either model.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import FIT_COLUMNS, fastpath, peak_slots, tch
from .model import GAMMA, IMAX, MU, N_BG, PER_PEAK, RC, SIGMA_FROM_GAMMA, n_params, peak_area
from .models import DEFAULT_MODEL, get_model
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
#: peak lists whose ROI layout a fitter keeps (the cache starts afresh when full)
LAYOUT_CACHE = 64


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
    for ``engine="gpu"``; ``fast_path``: let the batched engines use :mod:`.fastpath` where it applies (see
    :meth:`fit_many`; False plans every frame on its own, the reference the tests compare it with); ``model``: the
    peak model (:mod:`.models`, ``[fit] model``); ``two_theta``: the bins' 2θ ``[n_r]`` (deg), the abscissa of the
    "tch" model (required for it)."""

    def __init__(self, params, r_px: np.ndarray, slots: int = 0, engine: str = "nlopt", gpu=None,
                 fast_path: bool = True, model: str = DEFAULT_MODEL, two_theta: np.ndarray | None = None) -> None:
        if engine not in FIT_ENGINES:
            raise ValueError(f"fit engine {engine!r}: expected one of {', '.join(FIT_ENGINES)}")
        self.params = params
        self.r_px = np.asarray(r_px, dtype=np.float64)
        self.model = get_model(model)
        if self.model.axis == "two_theta_deg":
            if two_theta is None or np.shape(two_theta) != self.r_px.shape:
                raise ValueError(f"fit model {self.model.name}: needs the 2θ of the {self.r_px.size} R bins")
            self.x = np.asarray(two_theta, dtype=np.float64)
        else:
            self.x = self.r_px
        self.slots = peak_slots(params, slots)
        self.engine = engine
        self.gpu = gpu
        self.fast_path = bool(fast_path)
        self.pad = int(params.FitROIPadding)
        self.auto_roi = bool(params.FitROIAuto)
        self.smoothing = bool(getattr(params, "DoSmoothing", False))
        self.max_auto = self.slots if params.MultiplePeaks else min(1, self.slots)
        self.bin_size = float(params.RBinSize)
        self.default_peaks = tuple(sorted(float(v) for v in params.PeakLocation))
        self.counters: dict[str, int] = {"fit_frames": 0, "fit_rows_ok": 0, "fit_rows_nan": 0, "fit_rois": 0,
                                         "fit_fallback_neldermead": 0, "fit_fallback_nlopt": 0,
                                         "fit_fast_frames": 0}
        self._logged: set[str] = set()
        self._layouts: dict = {}

    # ----------------------------------------------------------------------------------------------- public
    def fit(self, lineout: np.ndarray, peaks=None, where: str = "") -> FrameFit:
        """Fit one lineout with the peak list ``peaks`` (px; None = the parameter file's; empty = find them)."""
        return self.fit_many([lineout], [peaks], [where])[0]

    def fit_many(self, lineouts, peak_lists=None, wheres=None) -> list[FrameFit]:
        """Fit several lineouts; the batched engines fit every ROI of every frame in one call. ``wheres``: the frames'
        names for log lines, a sequence of str or a callable ``k -> str`` (called only for a frame that is logged).

        With a batched engine, a peak list and FitROIAuto 0, the frames of one peak list take the fast path
        (:mod:`.fastpath`: the ROI layout cached per list, planning, packing, failure tests and assembly over the
        whole batch; counted ``fit_fast_frames``); the others (automatic peak finding, FitROIAuto 1, a lineout of
        another size, engine nlopt, ``fast_path=False``) are planned frame by frame."""
        n = len(lineouts)
        peak_lists = list(peak_lists) if peak_lists is not None else [None] * n
        where = _namer(wheres)
        out: list[FrameFit | None] = [None] * n
        slow = list(range(n))
        if self.fast_path and self.engine in ("lm", "gpu") and not self.auto_roi and self.slots > 0:
            groups: dict[int, tuple[object, list[int]]] = {}
            slow = []
            shape = self.r_px.shape
            first = peak_lists[0] if n else None
            if all(pl is first for pl in peak_lists):  # the usual batch: one peak list for every frame
                lay = self.layout(first)
                for k, y in enumerate(lineouts):
                    if lay is None or _shape(y) != shape:
                        slow.append(k)
                    else:
                        groups.setdefault(id(lay), (lay, []))[1].append(k)
            else:
                for k, pl in enumerate(peak_lists):
                    lay = self.layout(pl)
                    if lay is None or _shape(lineouts[k]) != shape:
                        slow.append(k)
                    else:
                        groups.setdefault(id(lay), (lay, []))[1].append(k)
            for lay, ks in groups.values():
                for k, fit in zip(ks, self.fit_fast(lay, [lineouts[k] for k in ks], [peak_lists[k] for k in ks],
                                                    lambda i, ks=ks: where(ks[i])), strict=True):
                    out[k] = fit
        if slow:
            ys = [np.asarray(lineouts[k], dtype=np.float64) for k in slow]
            plans = [self.plan(y, peak_lists[k], where(k)) for y, k in zip(ys, slow, strict=True)]
            work = [(i, prob) for i, plan in enumerate(plans) for prob in plan.problems]
            fits = self.solve([prob for _, prob in work], [ys[i] for i, _ in work])
            per_frame: list[list[tuple[RoiProblem, RoiFit]]] = [[] for _ in slow]
            for (i, prob), rf in zip(work, fits, strict=True):
                per_frame[i].append((prob, rf))
            for i, k in enumerate(slow):
                out[k] = self.assemble(plans[i], per_frame[i])
        return out  # type: ignore[return-value]

    def layout(self, peaks) -> fastpath.RoiLayout | None:
        """The cached ROI layout of peak list ``peaks`` (None = the parameter file's) on this fitter's bins, or None
        when the ROIs depend on the data (automatic peak finding: an empty list)."""
        key = peaks if peaks is None or isinstance(peaks, tuple) else tuple(peaks)
        try:
            return self._layouts[key]
        except KeyError:
            pass
        resolved = self.default_peaks if peaks is None else tuple(sorted(float(v) for v in peaks))
        lay = fastpath.build_layout(self.r_px, resolved, self.slots, self.pad, self.bin_size, self.model.name,
                                    self.x) if resolved else None
        if len(self._layouts) >= LAYOUT_CACHE:
            self._layouts.clear()
        self._layouts[key] = lay
        return lay

    def fit_fast(self, lay: fastpath.RoiLayout, lineouts, peak_lists, where) -> list[FrameFit]:
        """The fast path (see :meth:`fit_many`) for lineouts of ``n_r`` bins sharing the layout ``lay``; a frame that
        is not finite or flat goes through :meth:`plan`'s reject path; ``where(i) -> str`` names frame ``i``."""
        y = np.asarray(lineouts, dtype=np.float64)
        out: list[FrameFit | None] = [None] * len(lineouts)
        with np.errstate(invalid="ignore"):  # a NaN frame's max and min are NaN: not valid
            valid = np.isfinite(y).all(axis=1) & (y.max(axis=1) > y.min(axis=1))
        good = np.flatnonzero(valid)
        for i in np.flatnonzero(~valid):
            out[i] = self.assemble(self.plan(y[i], peak_lists[i], where(i)), [])
        if good.size == 0:
            return out  # type: ignore[return-value]
        if good.size < y.shape[0]:
            y = y[good]
        f_n, r_n = good.size, lay.n_rois
        self.counters["fit_fast_frames"] += f_n
        if any(rows > 0 for _, rows, _ in lay.rejects):
            w0 = where(int(good[0]))
            for reason, rows, detail in lay.rejects:
                self.reject(reason, rows, w0, detail)  # logs as the per-frame path does, once
                if rows > 0:
                    self.counters[f"fit_nan_{reason}"] += rows * (f_n - 1)
        if r_n == 0:  # no ROI to fit (every peak outside the R range, ROIs too wide or too short)
            fit = np.full((f_n, self.slots, len(FIT_COLUMNS)), np.nan)
            fits = [FrameFit(fit[i], np.zeros((0, 2), np.int32), np.zeros(0)) for i in range(f_n)]
            self.counters["fit_rows_nan"] += f_n * self.slots
        else:
            fits = self._fit_layout(lay, y, lambda i: where(int(good[i])))
        self.counters["fit_frames"] += f_n
        for i, ff in zip(good, fits, strict=True):
            out[i] = ff
        return out  # type: ignore[return-value]

    def _fit_layout(self, lay: fastpath.RoiLayout, y: np.ndarray, where) -> list[FrameFit]:
        """Fit every ROI of ``lay`` in the valid lineouts ``y [F, n_r]``: one batched call, failures refitted with
        nlopt one by one, the rows and curves assembled over the batch."""
        from .batched import fit_batch

        f_n, r_n, m = y.shape[0], lay.n_rois, lay.n_params
        params, yg = fastpath.initial_guesses(lay, self.r_px, y)
        packed = fastpath.pack_batch(lay, yg, params)
        res = self.gpu.fit_packed(packed) if self.engine == "gpu" else fit_batch(packed)
        p = np.asarray(res["p"], dtype=np.float64).reshape(f_n, r_n, m)
        cost = np.asarray(res["cost"], dtype=np.float64).reshape(f_n, r_n)
        p0, lo, hi = params
        bad = fastpath.failed(lay, p, cost, np.asarray(res["start_cost"], dtype=np.float64).reshape(f_n, r_n),
                              np.asarray(res["status"]).reshape(f_n, r_n), lo, hi)
        ok = ~bad
        failures = []
        if bad.any():
            p, cost = p.copy(), cost.copy()
        for i, j in zip(*np.nonzero(bad), strict=True):  # rare: refitted one by one, as the per-frame path does
            q = n_params(int(lay.n_peaks[j]))
            prob = RoiProblem(int(lay.starts[j]), int(lay.stops[j]), list(lay.slots[j]), list(lay.bins[j]),
                              p0[i, j, :q].copy(), lo[i, j, :q].copy(), hi[i, j, :q].copy(), float(lay.xmid[j]),
                              float(lay.hw[j]), lay.model)
            rf = fit_roi(self.x[prob.start:prob.stop], y[i, prob.start:prob.stop], prob)
            self.counters["fit_fallback_nlopt"] += 1
            self.counters["fit_fallback_neldermead"] += int(rf.method == "neldermead")
            p[i, j, :q], cost[i, j], ok[i, j] = rf.p, rf.cost, rf.ok
            if not rf.ok:
                failures.append((i, j, rf.reason))
        self.counters["fit_rois"] += f_n * r_n
        for i, j, reason in failures:
            self.reject("fit_failed", int(lay.n_peaks[j]), where(i), reason)
        fit, curves = fastpath.assemble_rows(lay, p, cost, ok)
        n_ok = int(np.count_nonzero(np.isfinite(fit[:, :, 0])))
        self.counters["fit_rows_ok"] += n_ok
        self.counters["fit_rows_nan"] += fit.shape[0] * fit.shape[1] - n_ok
        # each frame's ROIs' points, ROI after ROI: [F, Σ n_points]
        vals = curves.reshape(f_n, -1) if lay.dense else curves[:, lay.mask]
        if not failures:
            return [FrameFit(fit[i], lay.table, vals[i]) for i in range(f_n)]
        every = ok.all(axis=1)
        return [FrameFit(fit[i], lay.table, vals[i]) if every[i] else
                FrameFit(fit[i], lay.table[ok[i]], curves[i][lay.mask & ok[i][:, None]]) for i in range(f_n)]

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
            start_of = tch.initial_problem if self.model.name == "tch" else initial_problem
            plan.problems.append(start_of(self.x, y, start, stop, slots, bins_))
        return plan

    def solve(self, problems: list[RoiProblem], lineouts: list[np.ndarray]) -> list[RoiFit]:
        """Fit every ROI with the configured engine (batched engines: one call; failures refitted with nlopt)."""
        if not problems:
            return []
        xs = [self.x[p.start:p.stop] for p in problems]
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
            p = sort_peaks(rf.p, self.model.center)
            if self.model.name == "tch":
                out[prob.slots] = tch.rows(p, tch.chi2_dof(rf.cost, prob.n_points, len(prob.slots)))
            else:
                bg = bg_under_peaks(p, prob.xmid, prob.hw)
                for k, slot in enumerate(prob.slots):
                    o = N_BG + PER_PEAK * k
                    imax, mu, rc, gam = p[o + IMAX], p[o + MU], p[o + RC], p[o + GAMMA]
                    out[slot] = (imax, bg[k], mu, rc, gam / SIGMA_FROM_GAMMA, rf.cost, peak_area(imax, mu, gam))
            x = self.x[prob.start:prob.stop]
            f, _ = self.model.model_jacobian(x[None, :], p[None, :], np.array([prob.xmid]), np.array([prob.hw]),
                                             want_jac=False)
            rois.append((prob.start, prob.n_points))
            values.append(f[0])
        n_ok = int(np.sum(np.isfinite(out[:, 0])))
        self.counters["fit_frames"] += 1
        self.counters["fit_rows_ok"] += n_ok
        self.counters["fit_rows_nan"] += out.shape[0] - n_ok
        table = np.array(rois, dtype=np.int32).reshape(-1, 2)
        vals = np.concatenate(values) if values else np.zeros(0)
        return FrameFit(out, table, vals)


def _shape(y) -> tuple[int, ...]:
    return y.shape if isinstance(y, np.ndarray) else np.shape(y)


def _namer(wheres):
    """``wheres`` (None, a sequence of str, or a callable ``k -> str``) as a callable ``k -> str``."""
    if callable(wheres):
        return wheres
    if wheres is None:
        return lambda k: ""
    names = list(wheres)
    return names.__getitem__


def sort_peaks(p: np.ndarray, center: int = RC) -> np.ndarray:
    """The parameter vector with its peak blocks in increasing centre (offset ``center`` in a block: pv's Rc, tch's
    2θ centre). Peaks of one ROI may swap places during a fit (the model is symmetric in them and their windows
    overlap); the rows follow the peak list in R order, so must the fitted peaks."""
    n_pk = (p.size - N_BG) // PER_PEAK
    blocks = p[N_BG:].reshape(n_pk, PER_PEAK)
    order = np.argsort(blocks[:, center], kind="stable")
    return np.concatenate([p[:N_BG], blocks[order].reshape(-1)])

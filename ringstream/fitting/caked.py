"""Per-η ("caked") peak fits: every peak of the frame's peak list fitted in every η bin of its cake.

``[fit] per_eta = true`` (docs/MIDAS-FORMATS.md, "Caked peak fits"). For a batch of cakes ``[n_r, n_eta]`` (the
worker's, or ``ringstream integrate``'s), :meth:`CakedFitter.fit_many` gives each frame a float64 array
``[n_eta, slots, 7]``, one row per (η bin, peak slot), NaN where not fitted, in the columns of
:data:`CAKED_COLUMNS`, the TCH model's fit.bin row (:mod:`.tch`):

    area      integrated intensity of the peak above the background (intensity·deg)
    center    peak position, 2θ (deg)
    sig       Gaussian variance (centideg², GSAS-II's σ²)
    gam       Lorentzian FWHM (centideg, GSAS-II's γ)
    FWHM      total FWHM of the Thompson–Cox–Hastings profile (deg)
    eta       TCH Lorentzian mixing fraction (0 = Gaussian, 1 = Lorentzian)
    chi2_dof  the ROI's sum of squared residuals / (points − parameters) (:func:`.tch.chi2_dof`)

The steps, per frame (the peak list and the ROIs are the per-frame fits' own: :mod:`.peaks`):

1. peaks: the frame's peak list (PeakLocation, or the list a ``ringstream peaks`` change put in force) snapped to R
   bins, or with no list the peaks found in the frame's lineout (:func:`.peaks.find_peaks_auto`); ROIs of
   ±FitROIPadding bins, overlapping ones fitted jointly (:func:`.peaks.group_rois`);
2. every η bin's profile along 2θ loses its SNIP background (:func:`.snip.snip`, ``[fit] snip_iterations``);
3. each (η bin, ROI) is one fit of the TCH model on the 2θ bin centres with a 2-term Chebyshev background
   (``b0 + b1·u``, ``u = (2θ − mid)/half-width``); the start: the profile's maximum near each peak's bin (a ring
   shifted by strain moves it), its height, the half-maximum width split between σ and γ
   (:func:`.tch.start_widths`), the bounds of :func:`.tch.bounds`; all fits of the batch are solved in one call
   (:func:`solve`: the NumPy batched Levenberg–Marquardt on the CPU, the batched GPU fitter on a GPU worker).

A fit not made is NaN with one counted reason (``caked_nan_<reason>``, logged once per reason), counted per
(η bin, peak slot): ``unused_slot`` and ``not_found`` (quiet, as for the per-frame fits), ``more_peaks_than_slots``,
``peak_outside_r_range``, ``roi_too_short``, ``nan_in_profile`` (a NaN or inf in the η bin's profile),
``empty_eta_bin`` (nothing above zero, or flat: a masked or shadowed η bin), ``fit_failed`` (not converged, not
finite, no better than the start, or pinned at a bound other than sig's and gam's floor), ``fit_error`` (an
exception: a bug).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import tch
from .batched import CONVERGED, Packed, fit_batch
from .model import N_BG, PER_PEAK, n_params
from .models import TCH
from .peaks import find_peaks_auto, group_rois, snap_locations
from .snip import DEFAULT_ITERATIONS, snip
from .tch import AREA, CENTER, GAM, SIG

log = logging.getLogger("ringstream.fitting")

#: the columns of a caked-fit row (``/entry/fit/caked``), and their units: the TCH model's fit.bin row
CAKED_COLUMNS = tch.COLUMNS
CAKED_UNITS = tch.UNITS
N_COLUMNS = len(CAKED_COLUMNS)

QUIET_REASONS = ("not_found", "unused_slot")


def solve(pk: Packed, engine: str = "lm", gpu=None) -> dict[str, np.ndarray]:
    """Fit every ROI of ``pk`` (a TCH batch: ``pk.model == "tch"``): ``p [B, M]``, ``cost``, ``start_cost``,
    ``status [B]``. The one place the solver is chosen: on a GPU worker the GPU fitter's TCH kernel
    (``gpu.fit_packed``, which takes the model from the batch), else the NumPy batched Levenberg–Marquardt
    (:func:`.batched.fit_batch`, the kernel's twin)."""
    if engine == "gpu" and gpu is not None:
        return gpu.fit_packed(pk)
    return fit_batch(pk, model="tch")


def gpu_takes_tch(gpu) -> bool:
    """Whether ``gpu`` (a :class:`~ringstream.fitting.gpu_fitter.GpuFitter` or None) has a TCH kernel: the models
    its module declares (``gpu_fitter.PEAK_TERMS``); without it the per-η fits are solved on the CPU."""
    if gpu is None:
        return False
    from . import gpu_fitter

    return "tch" in getattr(gpu_fitter, "PEAK_TERMS", {})


# ------------------------------------------------------------------------------------------------- the fitter
@dataclasses.dataclass(frozen=True)
class _Layout:
    """The ROIs of one peak list: ``rois`` = (start, stop, slots, bins) per ROI; ``rejects`` = (reason, slots)."""

    rois: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...]
    rejects: tuple[tuple[str, int, str], ...]


class CakedFitter:
    """Per-η fits of one run (see the module docstring). ``params``: PeakLocation, RBinSize, FitROIPadding,
    MultiplePeaks, DoSmoothing; ``two_theta``, ``r_px`` ``[n_r]`` the R bins' 2θ (deg) and R (px); ``n_eta``;
    ``slots`` peak rows (the per-frame fits' :func:`~ringstream.fitting.peak_slots`); ``snip_iterations``;
    ``engine`` ``"lm"`` or ``"gpu"`` (with ``gpu``, an object with ``fit_packed``); ``array_module`` ``"numpy"``
    or ``"cupy"``: where the profiles' SNIP background and the fits' starts are computed (a GPU worker: on its
    device, which the host could not keep up with: ~5 ms a PILATUS frame of 72 η bins on one core)."""

    def __init__(self, params, two_theta: np.ndarray, r_px: np.ndarray, n_eta: int, slots: int,
                 snip_iterations: int = DEFAULT_ITERATIONS, engine: str = "lm", gpu=None,
                 array_module: str = "numpy") -> None:
        self.tth = np.asarray(two_theta, dtype=np.float64)
        self.r_px = np.asarray(r_px, dtype=np.float64)
        self.n_eta = int(n_eta)
        self.slots = int(slots)
        self.snip_iterations = int(snip_iterations)
        self.engine = "gpu" if engine == "gpu" and gpu is not None else "lm"
        self.gpu = gpu
        if array_module == "cupy":  # the profiles, their background and the starts on the device
            import cupy

            self.xp = cupy
        else:
            self.xp = np
        self.pad = int(params.FitROIPadding)
        self.bin_size = float(params.RBinSize)
        self.smoothing = bool(getattr(params, "DoSmoothing", False))
        self.max_auto = self.slots if params.MultiplePeaks else min(1, self.slots)
        self.default_peaks = tuple(sorted(float(v) for v in params.PeakLocation))
        self.counters: dict[str, int] = {"caked_frames": 0, "caked_fits_ok": 0, "caked_fits_nan": 0}
        self._logged: set[str] = set()
        self._layouts: dict = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """One frame's rows: ``(n_eta, slots, 7)``."""
        return (self.n_eta, self.slots, N_COLUMNS)

    def reject(self, reason: str, n: int, where: str, detail: str = "") -> None:
        """Count ``n`` fits not made for ``reason`` (logged once per reason, except the quiet ones)."""
        if n <= 0:
            return
        key = f"caked_nan_{reason}"
        self.counters[key] = self.counters.get(key, 0) + n
        if reason not in self._logged and reason not in QUIET_REASONS:
            self._logged.add(reason)
            log.warning("%s: %d per-eta fit(s) not made: %s%s (logged once per reason; counted as %s)",
                        where or "frame", n, reason, f" ({detail})" if detail else "", key)

    def layout(self, peaks) -> _Layout:
        """The ROIs of peak list ``peaks`` (px, sorted or not; None = the parameter file's), cached."""
        key = peaks if peaks is None or isinstance(peaks, tuple) else tuple(peaks)
        lay = self._layouts.get(key)
        if lay is None:
            resolved = self.default_peaks if peaks is None else tuple(sorted(float(v) for v in peaks))
            rejects = []
            if len(resolved) > self.slots:
                rejects.append(("more_peaks_than_slots", len(resolved) - self.slots, ""))
                resolved = resolved[: self.slots]
            rejects.append(("unused_slot", self.slots - len(resolved), ""))
            bins = snap_locations(resolved, self.r_px, self.bin_size)
            lost = [f"{v:g} px" for v, b in zip(resolved, bins, strict=True) if b < 0]
            if lost:
                rejects.append(("peak_outside_r_range", len(lost), ", ".join(lost)))
            lay = self._rois([(s, b) for s, b in enumerate(bins) if b >= 0], rejects)
            if len(self._layouts) >= 64:
                self._layouts.clear()
            self._layouts[key] = lay
        return lay

    def _rois(self, found: list[tuple[int, int]], rejects: list) -> _Layout:
        found = sorted(found, key=lambda sb: sb[1])
        rois = []
        n = self.tth.size
        for start, stop, members in group_rois(found, [self.pad] * len(found), n) if found else []:
            slots = tuple(found[j][0] for j in members)
            bins = tuple(found[j][1] for j in members)
            if stop - start < n_params(len(slots)) + 3:
                rejects.append(("roi_too_short", len(slots), f"bins {start}..{stop - 1}"))
                continue
            rois.append((start, stop, slots, bins))
        return _Layout(tuple(rois), tuple(rejects))

    def nan_frame(self, reason: str, where: str = "") -> np.ndarray:
        """Every fit of a frame NaN for ``reason`` (counted)."""
        self.reject(reason, self.n_eta * self.slots, where)
        self.counters["caked_frames"] += 1
        self.counters["caked_fits_nan"] += self.n_eta * self.slots
        return np.full(self.shape, np.nan)

    def fit_many(self, cakes, lineouts=None, peak_lists=None, wheres=None) -> list[np.ndarray]:
        """``[n_eta, slots, 7]`` per cake of ``cakes`` (each ``[n_r, n_eta]``; None: NaN, ``no_cake``); the
        lineouts ``[n_r]`` are needed only to find peaks (no peak list); ``peak_lists[k]`` the frame's list (None:
        the parameter file's; empty: found); ``wheres[k]`` names the frame in log lines. The frames of one peak
        list are fitted together: the work per call does not grow with the number of frames, only its arrays."""
        n = len(cakes)
        peak_lists = list(peak_lists) if peak_lists is not None else [None] * n
        wheres = list(wheres) if wheres is not None else [""] * n
        out = np.full((n,) + self.shape, np.nan)
        groups: dict[int, tuple[_Layout, list[int]]] = {}
        shape = (self.tth.size, self.n_eta)
        self.counters["caked_frames"] += n
        for k in range(n if self.slots else 0):
            if cakes[k] is None:
                self.reject("no_cake", self.n_eta * self.slots, wheres[k])
                continue
            if np.shape(cakes[k]) != shape:
                self.reject("cake_shape", self.n_eta * self.slots, wheres[k], f"{np.shape(cakes[k])}, expected {shape}")
                continue
            pl = peak_lists[k]
            if self.default_peaks if pl is None else len(pl):
                lay = self.layout(pl)
            else:  # found in the frame's lineout (the cake's mean over η when there is none)
                line = lineouts[k] if lineouts is not None and lineouts[k] is not None else \
                    np.nanmean(np.asarray(cakes[k], dtype=np.float64), axis=1)
                line = np.asarray(line, dtype=np.float64)
                bins = find_peaks_auto(line, self.max_auto, self.smoothing) if np.all(np.isfinite(line)) else []
                lay = self._rois(list(enumerate(bins)), [("not_found", self.slots - len(bins), "")])
            for reason, rows, detail in lay.rejects:
                self.reject(reason, rows * self.n_eta, wheres[k], detail)
            if lay.rois:
                groups.setdefault(id(lay), (lay, []))[1].append(k)
        for lay, ks in groups.values():
            try:
                self._fit_group(lay, ks, cakes, out, wheres)
            except Exception as exc:  # a fitting bug must never stop the worker: NaN, counted, logged once
                log.debug("caked fitting failed", exc_info=True)
                out[ks] = np.nan
                self.reject("fit_error", len(ks) * self.n_eta * self.slots, wheres[ks[0]],
                            f"{type(exc).__name__}: {exc}")
        ok = int(np.count_nonzero(np.isfinite(out[..., 1])))
        self.counters["caked_fits_ok"] += ok
        self.counters["caked_fits_nan"] += n * self.n_eta * self.slots - ok
        return list(out)

    def _fit_group(self, lay: _Layout, ks: list[int], cakes, out: np.ndarray, wheres) -> None:
        """Fit the frames ``ks`` (one layout) into ``out [n, n_eta, slots, 7]``: the profiles of every (frame, η
        bin) as rows ``[G·n_eta, n_r]`` on the array module (the device with CuPy), their SNIP background, each ROI's
        start for all rows at once, one solve for every (ROI, row) and the rows scattered back."""
        xp = self.xp
        g, e, n_r = len(ks), self.n_eta, self.tth.size
        host = np.stack([np.asarray(cakes[k]) for k in ks])  # [G, n_r, n_eta], as the cakes came (float32)
        y = xp.asarray(host).astype(xp.float64).transpose(0, 2, 1).reshape(g * e, n_r)
        finite = xp.isfinite(y).all(axis=1)
        y = xp.where(finite[:, None], y, 0.0)
        usable = finite & (y.max(axis=1) > 0) & (y.max(axis=1) > y.min(axis=1))
        fin_h, use_h = _to_host(finite), _to_host(usable)
        n_rows = sum(len(r[2]) for r in lay.rois)
        for reason, bad in (("nan_in_profile", ~fin_h), ("empty_eta_bin", fin_h & ~use_h)):
            if bad.any():
                self.reject(reason, int(bad.sum()) * n_rows, wheres[ks[int(np.argmax(bad)) // e]])
        rows_u = np.flatnonzero(use_h)  # (frame, η) rows fitted
        if rows_u.size == 0:
            return
        y = y[xp.asarray(rows_u)] if rows_u.size < g * e else y
        corr = y - snip(y, self.snip_iterations, xp)
        u = rows_u.size
        width = max(stop - start for start, stop, _, _ in lay.rois)
        m = max(n_params(len(r[2])) for r in lay.rois)
        parts, xs = [], []  # per ROI: y, p0, lo, hi [U, ...] padded to width / m (on xp); x [width] (host)
        for roi in lay.rois:
            start, stop, slots, _ = roi
            p0, lo, hi, seg = _guess(self.tth, corr, roi, self.pad, xp)
            xmid = 0.5 * (self.tth[start] + self.tth[stop - 1])
            pad_w, pad_m = width - (stop - start), m - p0.shape[1]
            unused = xp.asarray(np.tile(tch.unused_block(xmid), pad_m // PER_PEAK)[None, :].repeat(u, axis=0))
            xs.append(np.concatenate([self.tth[start:stop], np.full(pad_w, self.tth[stop - 1])]))
            parts.append((xp.concatenate([seg, xp.zeros((u, pad_w))], axis=1),
                          *(xp.concatenate([a, unused], axis=1) for a in (p0, lo, hi))))
        y_, p_, lo_, hi_ = (_to_host(xp.concatenate([pt[i] for pt in parts])) for i in range(4))
        x_ = np.repeat(np.stack(xs), u, axis=0)
        npts = np.repeat([stop - start for start, stop, _, _ in lay.rois], u).astype(np.int32)
        npk = np.repeat([len(r[2]) for r in lay.rois], u).astype(np.int32)
        xmid = np.repeat([0.5 * (self.tth[r[0]] + self.tth[r[1] - 1]) for r in lay.rois], u)
        hw = np.repeat([max(0.5 * (self.tth[r[1] - 1] - self.tth[r[0]]), 1e-12) for r in lay.rois], u)
        res = solve(Packed(x_, y_, npts, p_, lo_, hi_, xmid, hw, npk, "tch"), self.engine, self.gpu)
        pf = np.asarray(_to_host(res["p"]), dtype=np.float64)
        cost = np.asarray(_to_host(res["cost"]), dtype=np.float64)
        good = (np.asarray(_to_host(res["status"])) == CONVERGED) & np.isfinite(cost) & np.isfinite(pf).all(axis=1)
        good &= cost < np.asarray(_to_host(res["start_cost"]), dtype=np.float64) * (1.0 + 1e-12) + 1e-300
        chi = tch.chi2_dof(cost, npts, npk)
        fk = np.asarray(ks)[rows_u // e]  # each fitted row's frame and η bin
        fe = rows_u % e
        failed = 0
        for r, (_, _, slots, _) in enumerate(lay.rois):
            i, j, q = r * u, (r + 1) * u, n_params(len(slots))
            # pinned at a bound that is not the model's own range (sig, gam at their floor are): failed
            m_lo, m_hi = TCH.pinned_masks(len(slots))
            pq, lq, hq = pf[i:j, :q], lo_[i:j, :q], hi_[i:j, :q]
            tol = 1e-7 * (hq - lq)
            pinned = ((((pq <= lq + tol) & m_lo) | ((pq >= hq - tol) & m_hi)) & (hq > lq)).any(axis=1)
            ok = good[i:j] & ~pinned
            blocks = pq[:, N_BG:].reshape(u, len(slots), PER_PEAK)
            order = np.argsort(blocks[:, :, CENTER], axis=1, kind="stable")  # the rows follow the peaks in 2θ
            blocks = np.take_along_axis(blocks, order[:, :, None], axis=1)
            rows = tch.rows(np.concatenate([pq[:, :N_BG], blocks.reshape(u, -1)], axis=1), chi[i:j])
            rows[~ok] = np.nan
            out[fk[:, None], fe[:, None], np.asarray(slots)[None, :]] = rows
            failed += int(np.count_nonzero(~ok)) * len(slots)
        if failed:
            self.reject("fit_failed", failed, wheres[ks[0]])


def _to_host(a):
    """A NumPy array of ``a`` (a CuPy array is copied from the device)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _guess(tth: np.ndarray, corr, roi, pad: int, xp=np):
    """Start and bounds of one ROI's fits in the rows of ``corr [U, n_r]`` (background-subtracted profiles, on the
    array module ``xp``): ``p0, lo, hi [U, 2 + 4P]`` and the ROI's points ``[U, n]`` (see the module docstring,
    step 3)."""
    start, stop, _, bins = roi
    seg = corr[:, start:stop]
    e, n = seg.shape
    xs_h = tth[start:stop]
    xs = xp.asarray(xs_h)
    dx = float(xs_h[-1] - xs_h[0]) / max(1, n - 1)
    width = float(xs_h[-1] - xs_h[0]) + dx
    ymin, ymax = seg.min(axis=1), seg.max(axis=1)
    span = xp.maximum(ymax - ymin, 1e-12 * xp.maximum(xp.abs(ymax), 1.0))
    ne = min(5, max(1, n // 4))
    left, right = seg[:, :ne].mean(axis=1), seg[:, -ne:].mean(axis=1)
    b0, b1 = 0.5 * (left + right), 0.5 * (right - left)
    xmid, hw = 0.5 * float(xs_h[0] + xs_h[-1]), max(0.5 * float(xs_h[-1] - xs_h[0]), 1e-12)
    m = n_params(len(bins))
    p0, lo, hi = xp.empty((e, m)), xp.empty((e, m)), xp.empty((e, m))
    p0[:, 0], lo[:, 0], hi[:, 0] = b0, ymin - span, ymax + span
    p0[:, 1], lo[:, 1], hi[:, 1] = b1, -2.0 * span, 2.0 * span
    rel = [b - start for b in bins]
    rows = xp.arange(e)
    idx = xp.arange(n)[None, :]
    (sig_lo, sig_hi), (gam_lo, gam_hi) = tch.bounds(dx, width)
    sig1, gam1 = (float(v) for v in tch.start_widths(1.0))  # sig ∝ FWHM², gam ∝ FWHM
    for k, c in enumerate(rel):
        # the maximum near the peak's bin, not past the midpoints to its neighbours
        a = max(0, c - max(2, pad // 3), (rel[k - 1] + c) // 2 + 1 if k else 0)
        z = min(n, c + max(2, pad // 3) + 1, (c + rel[k + 1]) // 2 + 1 if k + 1 < len(rel) else n)
        cj = a + xp.argmax(seg[:, a:z], axis=1)
        bg_c = b0 + b1 * (xs[cj] - xmid) / hw
        h = xp.maximum(seg[rows, cj] - bg_c, 0.05 * span)
        # the run of bins above half maximum around the maximum, each side
        below = seg <= (bg_c + 0.5 * h)[:, None]
        lo_run = xp.where(below & (idx < cj[:, None]), idx, -1).max(axis=1)
        hi_run = xp.where(below & (idx > cj[:, None]), idx, n).min(axis=1)
        fw = xp.clip((hi_run - lo_run - 1) * dx, 1.5 * dx, 0.9 * width)
        o = N_BG + PER_PEAK * k
        # the area of a peak of that height and width, η ≈ 0.5 (as tch.from_pv); at most 8 span·width
        p0[:, o + AREA] = h * fw * (0.25 * np.pi + 0.5 * np.sqrt(np.pi / (4.0 * np.log(2.0))))
        lo[:, o + AREA], hi[:, o + AREA] = 0.0, 8.0 * span * width
        w = xp.maximum(3.0 * dx, fw)
        c0 = xs[cj]
        p0[:, o + CENTER] = c0
        lo[:, o + CENTER] = xp.maximum(c0 - w, float(xs_h[0]))
        hi[:, o + CENTER] = xp.minimum(c0 + w, float(xs_h[-1]))
        p0[:, o + SIG], p0[:, o + GAM] = sig1 * fw * fw, gam1 * fw
        lo[:, o + SIG], hi[:, o + SIG] = float(sig_lo), float(sig_hi)
        lo[:, o + GAM], hi[:, o + GAM] = float(gam_lo), float(gam_hi)
    return xp.clip(p0, lo, hi), lo, hi, seg

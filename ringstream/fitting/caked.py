"""Per-η ("caked") peak fits: every peak of the frame's peak list fitted in every η bin of its cake.

``[fit] per_eta = true`` (docs/MIDAS-FORMATS.md, "Caked peak fits"). For a batch of cakes ``[n_r, n_eta]`` (the
worker's, or ``ringstream integrate``'s), :meth:`CakedFitter.fit_many` gives each frame a float64 array
``[n_eta, slots, 7]``, one row per (η bin, peak slot), NaN where not fitted, in the columns of
:data:`CAKED_COLUMNS`:

    area      integrated intensity of the peak above the background (intensity·deg)
    center    peak position, 2θ (deg)
    sig       Gaussian variance (centideg², GSAS-II's σ²)
    gam       Lorentzian FWHM (centideg, GSAS-II's γ)
    FWHM      total FWHM of the Thompson–Cox–Hastings profile (deg)
    eta       TCH Lorentzian mixing fraction (0 = Gaussian, 1 = Lorentzian)
    chi2_dof  Σ r² / max(|y|, 1) over the ROI, divided by (points − parameters) (MIDAS's chi_sq)

The steps, per frame (the peak list and the ROIs are the per-frame fits' own: :mod:`.peaks`):

1. peaks: the frame's peak list (PeakLocation, or the list a ``ringstream peaks`` change put in force) snapped to R
   bins, or with no list the peaks found in the frame's lineout (:func:`.peaks.find_peaks_auto`); ROIs of
   ±FitROIPadding bins, overlapping ones fitted jointly (:func:`.peaks.group_rois`);
2. every η bin's profile along 2θ loses its SNIP background (:func:`.snip.snip`, ``[fit] snip_iterations``);
3. each (η bin, ROI) is one fit of the TCH model on the 2θ bin centres with a 2-term Chebyshev background
   (``b0 + b1·u``, ``u = (2θ − mid)/half-width``); the start: the profile's maximum near each peak's bin (a ring
   shifted by strain moves it), its height, the half-maximum width split between σ and γ; all fits of the batch
   are solved in one call (:func:`solve`: the NumPy batched Levenberg–Marquardt on the CPU, the batched GPU
   fitter on a GPU worker).

A fit not made is NaN with one counted reason (``caked_nan_<reason>``, logged once per reason), counted per
(η bin, peak slot): ``unused_slot`` and ``not_found`` (quiet, as for the per-frame fits), ``more_peaks_than_slots``,
``peak_outside_r_range``, ``roi_too_short``, ``nan_in_profile`` (a NaN or inf in the η bin's profile),
``empty_eta_bin`` (nothing above zero, or flat: a masked or shadowed η bin), ``fit_failed`` (not converged, not
finite, no better than the start, or the centre pinned at its bound), ``fit_error`` (an exception: a bug).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from .batched import Packed
from .peaks import find_peaks_auto, group_rois, snap_locations
from .snip import DEFAULT_ITERATIONS, snip

log = logging.getLogger("ringstream.fitting")

#: the columns of a caked-fit row (``/entry/fit/caked``), and their units
CAKED_COLUMNS = ("area", "center", "sig", "gam", "FWHM", "eta", "chi2_dof")
CAKED_UNITS = ("intensity*deg", "deg", "centideg^2", "centideg", "deg", "1", "1")
N_COLUMNS = len(CAKED_COLUMNS)

#: parameters: ``[b0, b1, area_1, center_1, sig_1, gam_1, ...]``
N_BG, PER_PEAK = 2, 4
AREA, CENTER, SIG, GAM = 0, 1, 2, 3

QUIET_REASONS = ("not_found", "unused_slot")
LN2_8 = 8.0 * math.log(2.0)


def n_params(n_peaks: int) -> int:
    return N_BG + PER_PEAK * int(n_peaks)


# --------------------------------------------------------------------------------------------------- the model
def fwhm_eta(sig: np.ndarray, gam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TCH total FWHM (deg) and mixing η of GSAS-II's σ² (centideg²) and γ (centideg):
    ``fg = sqrt(8 ln2 σ²)/100``, ``fl = γ/100``, ``FWHM⁵ = fg⁵ + 2.69269 fg⁴fl + 2.42843 fg³fl² + 4.47163 fg²fl³
    + 0.07842 fg fl⁴ + fl⁵``, ``η = 1.36603 q − 0.47719 q² + 0.11116 q³`` with ``q = fl/FWHM``."""
    fg = np.sqrt(LN2_8 * np.maximum(sig, 0.0)) / 100.0
    fl = np.maximum(gam, 0.0) / 100.0
    f5 = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
          + 0.07842 * fg * fl**4 + fl**5)
    fwhm = np.maximum(f5, 1e-300) ** 0.2
    q = fl / fwhm
    return fwhm, np.clip(1.36603 * q - 0.47719 * q * q + 0.11116 * q**3, 0.0, 1.0)


def tch_profile(x: np.ndarray, area, center, sig, gam) -> np.ndarray:
    """Area-normalised TCH pseudo-Voigt (no background) at 2θ ``x`` (deg): ``area (η L + (1 − η) G)``, L and G of
    unit area and the same FWHM."""
    fwhm, eta = fwhm_eta(sig, gam)
    d2 = (x - center) ** 2
    hwhm = 0.5 * fwhm
    lor = (hwhm / math.pi) / (d2 + hwhm * hwhm)
    gau = math.sqrt(4.0 * math.log(2.0) / math.pi) / fwhm * np.exp(-4.0 * math.log(2.0) * d2 / (fwhm * fwhm))
    return area * (eta * lor + (1.0 - eta) * gau)


def model(x: np.ndarray, p: np.ndarray, xmid: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """The model of a batch of ROIs: ``x [B, N]`` (deg), ``p [B, 2 + 4P]``, ``xmid, hw [B]`` → ``[B, N]``."""
    u = (x - xmid[:, None]) / hw[:, None]
    f = p[:, 0:1] + p[:, 1:2] * u
    for k in range((p.shape[1] - N_BG) // PER_PEAK):
        o = N_BG + PER_PEAK * k
        f = f + tch_profile(x, p[:, o + AREA, None], p[:, o + CENTER, None], p[:, o + SIG, None],
                            p[:, o + GAM, None])
    return f


# -------------------------------------------------------------------------------------------------- the solver
CONVERGED, MAX_ITER_REACHED = 1, 2
MAX_ITER = 200


def solve(pk: Packed, engine: str = "lm", gpu=None) -> dict[str, np.ndarray]:
    """Fit every ROI of ``pk`` with the TCH model: ``p [B, M]``, ``cost``, ``start_cost``, ``status [B]``
    (CONVERGED or not). The one place the solver is chosen: on a GPU worker ``gpu.fit_packed(pk, model="tch")``,
    else the NumPy batched Levenberg–Marquardt."""
    if engine == "gpu" and gpu is not None:
        return gpu.fit_packed(pk, model="tch")
    return _lm(pk)


def gpu_takes_tch(gpu) -> bool:
    """Whether ``gpu`` (a :class:`~ringstream.fitting.gpu_fitter.GpuFitter` or None) fits the TCH model
    (``fit_packed(pk, model="tch")``); without it the per-η fits run on the CPU."""
    if gpu is None:
        return False
    import inspect

    try:
        return "model" in inspect.signature(gpu.fit_packed).parameters
    except (TypeError, ValueError):
        return False


def _lm(pk: Packed, max_iter: int = MAX_ITER) -> dict[str, np.ndarray]:
    """Damped Gauss–Newton over every ROI at once, the Jacobian by forward differences; bounds by clipping and an
    active set (a parameter at a bound that the gradient pushes out of it is held this step); a step is accepted when it lowers the cost (λ/3), else λ·4; converged on a relative cost change ≤ 1e-12, a
    step ≤ 1e-10 of the bounds' span, or λ > 1e10."""
    b, m = pk.p.shape
    mask = (np.arange(pk.x.shape[1])[None, :] < pk.npts[:, None]).astype(np.float64)
    free = pk.hi > pk.lo
    span = np.where(free, pk.hi - pk.lo, 1.0)

    def resid(p):
        return (model(pk.x, p, pk.xmid, pk.hw) - pk.y) * mask

    p = pk.p.copy()
    r = resid(p)
    cost = np.einsum("bn,bn->b", r, r)
    start = cost.copy()
    lam = np.full(b, 1e-3)
    status = np.zeros(b, np.int32)
    eye = np.eye(m)
    for _ in range(max_iter):
        act = status == 0
        if not act.any():
            break
        ia = np.flatnonzero(act)
        pa, ra = p[ia], r[ia]
        jac = np.zeros(ra.shape + (m,))
        h = 1e-7 * np.maximum(np.abs(pa), 1e-3 * span[ia])
        sub = Packed(pk.x[ia], pk.y[ia], pk.npts[ia], pa, pk.lo[ia], pk.hi[ia], pk.xmid[ia], pk.hw[ia],
                     pk.n_peaks[ia])
        for i in range(m):
            if not free[ia, i].any():
                continue
            q = pa.copy()
            q[:, i] += h[:, i]
            jac[..., i] = (model(sub.x, q, sub.xmid, sub.hw) - sub.y) * mask[ia] - ra
            jac[..., i] /= h[:, i, None]
        g = np.einsum("bni,bn->bi", jac, ra)
        # the active set: a parameter at a bound whose gradient pushes it out stays there this step
        act_free = free[ia] & ~((pa <= pk.lo[ia]) & (g > 0)) & ~((pa >= pk.hi[ia]) & (g < 0))
        jac *= act_free[:, None, :]
        g *= act_free
        a = np.einsum("bni,bnj->bij", jac, jac)
        diag = np.einsum("bii->bi", a)
        d = np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300)
        mat = a + (lam[ia, None] * d)[:, :, None] * eye + (~act_free)[:, :, None] * eye
        try:
            delta = np.linalg.solve(mat, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            delta = np.stack([np.linalg.lstsq(mat[k], -g[k], rcond=None)[0] for k in range(len(ia))])
        pn = np.clip(pa + delta, pk.lo[ia], pk.hi[ia])
        rn = (model(sub.x, pn, sub.xmid, sub.hw) - sub.y) * mask[ia]
        cn = np.einsum("bn,bn->b", rn, rn)
        better = np.isfinite(cn) & (cn < cost[ia])
        step = np.max(np.abs(pn - pa) / span[ia], axis=1)
        small = better & ((cost[ia] - cn <= 1e-12 * cost[ia]) | (step <= 1e-10))
        ib = ia[better]
        p[ib], r[ib], cost[ib] = pn[better], rn[better], cn[better]
        lam[ib] = np.maximum(lam[ib] / 3.0, 1e-12)
        iw = ia[~better]
        lam[iw] *= 4.0
        status[ia[small]] = CONVERGED
        status[iw[lam[iw] > 1e10]] = CONVERGED
    status[status == 0] = MAX_ITER_REACHED
    return {"p": p, "cost": cost, "start_cost": start, "status": status}


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
    ``engine`` ``"lm"`` or ``"gpu"`` (with ``gpu``, an object with ``fit_packed``)."""

    def __init__(self, params, two_theta: np.ndarray, r_px: np.ndarray, n_eta: int, slots: int,
                 snip_iterations: int = DEFAULT_ITERATIONS, engine: str = "lm", gpu=None) -> None:
        self.tth = np.asarray(two_theta, dtype=np.float64)
        self.r_px = np.asarray(r_px, dtype=np.float64)
        self.n_eta = int(n_eta)
        self.slots = int(slots)
        self.snip_iterations = int(snip_iterations)
        self.engine = "gpu" if engine == "gpu" and gpu is not None else "lm"
        self.gpu = gpu
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
        the parameter file's; empty: found); ``wheres[k]`` names the frame in log lines."""
        n = len(cakes)
        peak_lists = list(peak_lists) if peak_lists is not None else [None] * n
        wheres = list(wheres) if wheres is not None else [""] * n
        out = [np.full(self.shape, np.nan) for _ in range(n)]
        jobs = []  # (frame k, layout, profiles [n_eta, n_r] corrected, usable [n_eta])
        for k in range(n):
            self.counters["caked_frames"] += 1
            if self.slots == 0:
                continue
            if cakes[k] is None:
                self.reject("no_cake", self.n_eta * self.slots, wheres[k])
                continue
            y = np.asarray(cakes[k], dtype=np.float64).T  # [n_eta, n_r]
            if y.shape != (self.n_eta, self.tth.size):
                self.reject("cake_shape", self.n_eta * self.slots, wheres[k],
                            f"{y.shape[::-1]}, expected ({self.tth.size}, {self.n_eta})")
                continue
            pl = peak_lists[k]
            resolved = self.default_peaks if pl is None else tuple(pl)
            if resolved:
                lay = self.layout(pl)
            else:
                line = lineouts[k] if lineouts is not None and lineouts[k] is not None else np.nanmean(y, axis=0)
                line = np.asarray(line, dtype=np.float64)
                bins = find_peaks_auto(line, self.max_auto, self.smoothing) if np.all(np.isfinite(line)) else []
                lay = self._rois(list(enumerate(bins)), [("not_found", self.slots - len(bins), "")])
            for reason, rows, detail in lay.rejects:
                self.reject(reason, rows * self.n_eta, wheres[k], detail)
            if not lay.rois:
                continue
            finite = np.isfinite(y).all(axis=1)
            ys = np.where(finite[:, None], y, 0.0)
            usable = finite & (ys.max(axis=1) > 0) & (ys.max(axis=1) > ys.min(axis=1))
            n_rows = sum(len(r[2]) for r in lay.rois)
            self.reject("nan_in_profile", int(np.count_nonzero(~finite)) * n_rows, wheres[k])
            self.reject("empty_eta_bin", int(np.count_nonzero(finite & ~usable)) * n_rows, wheres[k])
            if usable.any():
                jobs.append((k, lay, ys - snip(ys, self.snip_iterations), usable))
        if jobs:
            try:
                self._fit_jobs(jobs, out, wheres)
            except Exception as exc:  # a fitting bug must never stop the worker: NaN, counted, logged once
                log.debug("caked fitting failed", exc_info=True)
                for k, *_ in jobs:
                    out[k][:] = np.nan
                    self.reject("fit_error", self.n_eta * self.slots, wheres[k], f"{type(exc).__name__}: {exc}")
        for k in range(n):
            ok = int(np.count_nonzero(np.isfinite(out[k][..., 1])))
            self.counters["caked_fits_ok"] += ok
            self.counters["caked_fits_nan"] += self.n_eta * self.slots - ok
        return out

    def _fit_jobs(self, jobs, out, wheres) -> None:
        parts = []  # (k, roi, eta indices, p0, lo, hi, y segment, npts)
        for k, lay, corr, usable in jobs:
            etas = np.flatnonzero(usable)
            for roi in lay.rois:
                parts.append((k, roi, etas) + _guess(self.tth, corr[etas], roi, self.pad))
        b = sum(len(p[2]) for p in parts)
        width = max(r[1][1] - r[1][0] for r in parts)
        m = max(n_params(len(r[1][2])) for r in parts)
        x, y = np.zeros((b, width)), np.zeros((b, width))
        p, lo, hi = np.zeros((b, m)), np.zeros((b, m)), np.zeros((b, m))
        npts, npk = np.zeros(b, np.int32), np.zeros(b, np.int32)
        xmid, hw = np.zeros(b), np.ones(b)
        i = 0
        for _, (start, stop, slots, _), etas, p0, l0, h0, seg in parts:
            j, w, q = i + len(etas), stop - start, p0.shape[1]
            x[i:j, :w] = self.tth[start:stop]
            x[i:j, w:] = self.tth[stop - 1]
            y[i:j, :w] = seg
            p[i:j, :q], lo[i:j, :q], hi[i:j, :q] = p0, l0, h0
            for s in range(len(slots), (m - N_BG) // PER_PEAK):  # unused peak slot: area 0, fixed
                o = N_BG + PER_PEAK * s
                p[i:j, o:o + 4] = lo[i:j, o:o + 4] = hi[i:j, o:o + 4] = (0.0, self.tth[start], 1.0, 1.0)
            npts[i:j], npk[i:j] = w, len(slots)
            xmid[i:j] = 0.5 * (self.tth[start] + self.tth[stop - 1])
            hw[i:j] = max(0.5 * (self.tth[stop - 1] - self.tth[start]), 1e-12)
            i = j
        pk = Packed(x, y, npts, p, lo, hi, xmid, hw, npk)
        res = solve(pk, self.engine, self.gpu)
        pf = np.asarray(res["p"], dtype=np.float64)
        cost = np.asarray(res["cost"], dtype=np.float64)
        good = (np.asarray(res["status"]) == CONVERGED) & np.isfinite(cost) & np.isfinite(pf).all(axis=1)
        good &= cost < np.asarray(res["start_cost"], dtype=np.float64) * (1.0 + 1e-12) + 1e-300
        mask = np.arange(width)[None, :] < npts[:, None]
        f = model(x, pf, xmid, hw)
        chi = np.sum(np.where(mask, (f - y) ** 2 / np.maximum(np.abs(y), 1.0), 0.0), axis=1)
        i = 0
        for k, (_, _, slots, _), etas, *_ in parts:
            j = i + len(etas)
            q = n_params(len(slots))
            blocks = pf[i:j, N_BG:q].reshape(j - i, len(slots), PER_PEAK)
            order = np.argsort(blocks[:, :, CENTER], axis=1, kind="stable")  # the rows follow the peaks in R
            blocks = np.take_along_axis(blocks, order[:, :, None], axis=1)
            tol = 1e-7 * (hi[i:j, N_BG:q] - lo[i:j, N_BG:q]).reshape(j - i, len(slots), PER_PEAK)[:, :, CENTER]
            c_lo = lo[i:j, N_BG:q].reshape(j - i, len(slots), PER_PEAK)[:, :, CENTER]
            c_hi = hi[i:j, N_BG:q].reshape(j - i, len(slots), PER_PEAK)[:, :, CENTER]
            pinned = ((blocks[:, :, CENTER] <= c_lo + tol) | (blocks[:, :, CENTER] >= c_hi - tol)).any(axis=1)
            ok = good[i:j] & ~pinned
            fwhm, eta = fwhm_eta(blocks[:, :, SIG], blocks[:, :, GAM])
            dof = max(int(npts[i]) - q, 1)
            rows = np.stack([blocks[:, :, AREA], blocks[:, :, CENTER], blocks[:, :, SIG], blocks[:, :, GAM],
                             fwhm, eta, np.repeat((chi[i:j] / dof)[:, None], len(slots), axis=1)], axis=-1)
            rows[~ok] = np.nan
            out[k][etas[:, None], np.asarray(slots)[None, :]] = rows
            if (~ok).any():
                self.reject("fit_failed", int(np.count_nonzero(~ok)) * len(slots), wheres[k])
            i = j


def _guess(tth: np.ndarray, corr: np.ndarray, roi, pad: int):
    """Start and bounds of one ROI's fits in the η bins of ``corr [E, n_r]`` (background-subtracted profiles):
    ``p0, lo, hi [E, 2 + 4P]`` and the ROI's points ``[E, n]`` (see the module docstring, step 3)."""
    start, stop, _, bins = roi
    seg = corr[:, start:stop]
    e, n = seg.shape
    xs = tth[start:stop]
    dx = (xs[-1] - xs[0]) / max(1, n - 1)
    width = xs[-1] - xs[0] + dx
    ymin, ymax = seg.min(axis=1), seg.max(axis=1)
    span = np.maximum(ymax - ymin, 1e-12 * np.maximum(np.abs(ymax), 1.0))
    ne = min(5, max(1, n // 4))
    left, right = seg[:, :ne].mean(axis=1), seg[:, -ne:].mean(axis=1)
    b0, b1 = 0.5 * (left + right), 0.5 * (right - left)
    xmid, hw = 0.5 * (xs[0] + xs[-1]), max(0.5 * (xs[-1] - xs[0]), 1e-12)
    m = n_params(len(bins))
    p0, lo, hi = np.empty((e, m)), np.empty((e, m)), np.empty((e, m))
    p0[:, 0], lo[:, 0], hi[:, 0] = b0, ymin - span, ymax + span
    p0[:, 1], lo[:, 1], hi[:, 1] = b1, -2.0 * span, 2.0 * span
    rel = [b - start for b in bins]
    rows = np.arange(e)
    for k, c in enumerate(rel):
        # the maximum near the peak's bin, not past the midpoints to its neighbours
        a = max(0, c - max(2, pad // 3), (rel[k - 1] + c) // 2 + 1 if k else 0)
        z = min(n, c + max(2, pad // 3) + 1, (c + rel[k + 1]) // 2 + 1 if k + 1 < len(rel) else n)
        cj = a + np.argmax(seg[:, a:z], axis=1)
        bg_c = b0 + b1 * (xs[cj] - xmid) / hw
        h = np.maximum(seg[rows, cj] - bg_c, 0.05 * span)
        half = bg_c + 0.5 * h
        # the run of bins above half maximum around the maximum, each side
        above = seg > half[:, None]
        idx = np.arange(n)[None, :]
        lo_run = np.where(~above & (idx < cj[:, None]), idx, -1).max(axis=1)
        hi_run = np.where(~above & (idx > cj[:, None]), idx, n).min(axis=1)
        fw = np.clip((hi_run - lo_run - 1) * dx, 1.5 * dx, 0.9 * width)
        fg = fl = fw / 1.64  # equal Gaussian and Lorentzian widths give a TCH FWHM of ~1.64 each
        o = N_BG + PER_PEAK * k
        a0 = h * fw * 1.3
        p0[:, o + AREA], lo[:, o + AREA], hi[:, o + AREA] = a0, 0.0, 4.0 * span * width
        w = np.maximum(3.0 * dx, fw)
        c0 = xs[cj]
        p0[:, o + CENTER] = c0
        lo[:, o + CENTER] = np.maximum(c0 - w, xs[0])
        hi[:, o + CENTER] = np.minimum(c0 + w, xs[-1])
        p0[:, o + SIG] = (100.0 * fg) ** 2 / LN2_8
        lo[:, o + SIG], hi[:, o + SIG] = (100.0 * 0.02 * dx) ** 2 / LN2_8, (100.0 * width) ** 2 / LN2_8
        p0[:, o + GAM] = 100.0 * fl
        lo[:, o + GAM], hi[:, o + GAM] = 100.0 * 0.02 * dx, 100.0 * width
    return np.clip(p0, lo, hi), lo, hi, seg

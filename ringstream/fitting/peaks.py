"""From a lineout and a peak list to fit problems: snapping, automatic peak finding, ROIs, initial guesses, bounds.

docs/MIDAS-FORMATS.md section 6, in the order a frame goes through it:

1. peaks: each PeakLocation (px) snapped to the nearest R bin centre, dropped (a NaN row, reason
   ``peak_outside_r_range``) when no bin centre is within 2·RBinSize; or, with no list (``DoPeakFit 1`` +
   ``MultiplePeaks 1``), local maxima above the noise (:func:`find_peaks_auto`, optionally Savitzky–Golay smoothed);
2. ROIs: ±FitROIPadding bins around each peak, or with FitROIAuto ±max(15, 1.5·FWHM) bins, clipped to the lineout;
   overlapping ROIs merged and their peaks fitted jointly, at most :data:`MAX_PEAKS_PER_ROI` per ROI (a longer run of
   overlapping peaks is cut between neighbours);
3. initial guess: background from the mean of up to 5 points at each edge, Imax = y(peak) − BG, Γ from the
   half-maximum crossings, μ = 0.5; bounds (the same for every fitter) from the ROI's data range.

Everything here is in bins (indices into the lineout) except the model's parameters, which are in px (``x`` = the
lineout's bin centres ``r_px``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .model import GAMMA, IMAX, MU, N_BG, PER_PEAK, RC, n_params

#: most peaks fitted jointly in one ROI (the GPU kernel's fixed maximum; the CPU fitter uses the same)
MAX_PEAKS_PER_ROI = 4
#: edge points averaged for the initial background (MIDAS: "up to 5")
EDGE_POINTS = 5
#: FitROIAuto: half-width max(AUTO_ROI_MIN, AUTO_ROI_FWHM · FWHM) bins
AUTO_ROI_MIN, AUTO_ROI_FWHM = 15, 1.5
#: automatic finding: a maximum counts when its prominence exceeds this many noise sigmas
PROMINENCE_SIGMAS = 5.0
#: Savitzky–Golay windows tried by DoSmoothing, polynomial order 2
SMOOTHING_WINDOWS = (5, 7, 9)


@dataclasses.dataclass
class RoiProblem:
    """One ROI to fit: lineout bins ``start .. stop-1``, its peaks and where their rows go.

    ``slots``: output row of each peak; ``peak_bins``: the bin of each peak; ``p0``, ``lo``, ``hi``: parameter vector
    (length ``2 + 4·len(slots)``, see :mod:`.model`), its lower and upper bounds; ``xmid``, ``hw``: the ROI's centre
    and half-width in px; ``model``: the peak model of ``p0`` (:mod:`.models`: "pv", or "tch" with x in deg 2θ).
    """

    start: int
    stop: int
    slots: list[int]
    peak_bins: list[int]
    p0: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    xmid: float
    hw: float
    model: str = "pv"

    @property
    def n_points(self) -> int:
        return self.stop - self.start


def snap_locations(locations, r_px: np.ndarray, r_bin_size: float) -> list[int]:
    """Nearest bin of each location (px), or -1 where no bin centre lies within ``2·r_bin_size`` px."""
    out = []
    tol = 2.0 * float(r_bin_size)
    for loc in locations:
        i = int(np.argmin(np.abs(r_px - float(loc)))) if len(r_px) else -1
        out.append(i if i >= 0 and abs(float(r_px[i]) - float(loc)) <= tol else -1)
    return out


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise level of a lineout: the MAD of its first difference, scaled to a Gaussian σ (/√2)."""
    d = np.diff(y)
    if d.size < 3:
        return 0.0
    mad = np.median(np.abs(d - np.median(d)))
    return float(1.4826 * mad / math.sqrt(2.0))


def smooth(y: np.ndarray) -> np.ndarray:
    """Savitzky–Golay smoothing (order 2) with the smallest of :data:`SMOOTHING_WINDOWS` (5, 7, 9 bins) for which
    the next larger window finds the same number of maxima (the count has settled), else 9."""
    from scipy.signal import savgol_filter

    windows = [w for w in SMOOTHING_WINDOWS if w <= y.size]
    if not windows:
        return y
    counts = []
    smoothed = []
    for w in windows:
        s = savgol_filter(y, w, 2)
        smoothed.append(s)
        counts.append(len(_maxima(s, PROMINENCE_SIGMAS * noise_sigma(s))))
    for i in range(len(windows) - 1):
        if counts[i] == counts[i + 1]:
            return smoothed[i]
    return smoothed[-1]


def _maxima(y: np.ndarray, prominence: float) -> list[tuple[int, float]]:
    from scipy.signal import find_peaks

    if not np.isfinite(prominence) or prominence <= 0:
        prominence = 1e-300
    idx, props = find_peaks(y, prominence=prominence)
    return [(int(i), float(p)) for i, p in zip(idx, props["prominences"], strict=False)]


def find_peaks_auto(y: np.ndarray, max_peaks: int, smoothing: bool = False) -> list[int]:
    """Bins of the (at most ``max_peaks``) most prominent local maxima whose prominence exceeds
    :data:`PROMINENCE_SIGMAS` noise sigmas, in increasing bin order; 2 bins from either end are ignored."""
    ys = smooth(y) if smoothing else y
    thr = PROMINENCE_SIGMAS * noise_sigma(ys)
    found = [(i, p) for i, p in _maxima(ys, thr) if 2 <= i < y.size - 2]
    found.sort(key=lambda ip: -ip[1])
    return sorted(i for i, _ in found[: max(0, int(max_peaks))])


def half_max_width(x: np.ndarray, y: np.ndarray, c: int, bg: float, lo: int, hi: int) -> float:
    """FWHM estimate (px) of the peak at bin ``c`` from its half-maximum crossings above ``bg``, searched within bins
    ``lo .. hi-1`` (linear interpolation); one side found: twice its half-width; none: NaN."""
    half = bg + 0.5 * (y[c] - bg)
    sides = []
    for step in (-1, 1):
        i = c
        while lo <= i + step < hi and y[i + step] > half:
            i += step
        j = i + step
        if not lo <= j < hi:
            continue
        y1, y2 = y[i], y[j]
        frac = (y1 - half) / (y1 - y2) if y1 != y2 else 0.5
        sides.append(abs(x[i] + frac * (x[j] - x[i]) - x[c]))
    if not sides:
        return math.nan
    return sides[0] + sides[1] if len(sides) == 2 else 2.0 * sides[0]


def roi_half_width(x, y, c: int, pad: int, auto: bool) -> int:
    """Half-width of the ROI around bin ``c`` in bins: ``pad``, or with FitROIAuto max(15, 1.5·FWHM in bins)."""
    if not auto:
        return int(pad)
    n = y.size
    lo, hi = max(0, c - 4 * pad), min(n, c + 4 * pad + 1)
    seg = y[lo:hi]
    bg = float(np.median(np.sort(seg)[: max(1, seg.size // 5)]))
    fwhm = half_max_width(x, y, c, bg, lo, hi)
    dx = float(np.mean(np.diff(x[lo:hi]))) if hi - lo > 1 else 1.0
    fwhm_bins = fwhm / dx if np.isfinite(fwhm) and dx > 0 else 0.0
    return int(max(AUTO_ROI_MIN, math.ceil(AUTO_ROI_FWHM * fwhm_bins)))


def group_rois(peaks: list[tuple[int, int]], half_widths: list[int], n: int) -> list[tuple[int, int, list[int]]]:
    """ROIs ``(start, stop, [indices into peaks])`` from peaks ``(slot, bin)`` sorted by bin: ±half-width intervals
    clipped to ``0 .. n-1``, overlapping ones merged, runs longer than :data:`MAX_PEAKS_PER_ROI` cut midway between
    neighbouring peaks."""
    groups: list[list[int]] = []
    spans: list[list[int]] = []
    for k, ((_, b), h) in enumerate(zip(peaks, half_widths, strict=False)):
        s, e = max(0, b - h), min(n, b + h + 1)
        if spans and s < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
            groups[-1].append(k)
        else:
            spans.append([s, e])
            groups.append([k])
    out = []
    for (s, e), members in zip(spans, groups, strict=False):
        chunks = [members[i:i + MAX_PEAKS_PER_ROI] for i in range(0, len(members), MAX_PEAKS_PER_ROI)]
        start = s
        for j, chunk in enumerate(chunks):
            if j + 1 < len(chunks):
                stop = (peaks[chunk[-1]][1] + peaks[chunks[j + 1][0]][1]) // 2 + 1
            else:
                stop = e
            out.append((start, stop, chunk))
            start = stop
    return out


def initial_problem(x: np.ndarray, y: np.ndarray, start: int, stop: int, slots: list[int],
                    bins: list[int]) -> RoiProblem:
    """The initial guess and bounds of one ROI (step 3 of the module docstring).

    Bounds, with span = max(y) − min(y) over the ROI and dx its mean bin width (px): b0 ∈ [min − span, max + span],
    b1 ∈ [−2 span, 2 span], Imax ∈ [0, 4 span], μ ∈ [0, 1], Rc ∈ Rc0 ± max(3 dx, Γ0) (inside the ROI),
    Γ ∈ [0.5 dx, ROI width]. The start lies inside the bounds (nlopt refuses anything else).
    """
    xs, ys = x[start:stop], y[start:stop]
    ymin, ymax = float(ys.min()), float(ys.max())
    span = max(ymax - ymin, 1e-12 * max(abs(ymax), 1.0))
    ne = min(EDGE_POINTS, max(1, (stop - start) // 4))
    left, right = float(ys[:ne].mean()), float(ys[-ne:].mean())
    xmid = 0.5 * (float(xs[0]) + float(xs[-1]))
    hw = max(0.5 * (float(xs[-1]) - float(xs[0])), 1e-9)
    dx = (float(xs[-1]) - float(xs[0])) / max(1, stop - start - 1)
    width = float(xs[-1] - xs[0]) + dx
    bg0 = 0.5 * (left + right)
    n = n_params(len(slots))
    p0, lo, hi = np.empty(n), np.empty(n), np.empty(n)
    p0[0], lo[0], hi[0] = bg0, ymin - span, ymax + span
    # the slope from the two edges: the edge means sit ~ (ne-1)/2 bins in from the ends
    p0[1], lo[1], hi[1] = 0.5 * (right - left), -2.0 * span, 2.0 * span
    for k, c in enumerate(bins):
        o = N_BG + PER_PEAK * k
        u = (float(x[c]) - xmid) / hw
        bg_c = bg0 + p0[1] * u
        imax0 = max(float(y[c]) - bg_c, 0.05 * span)
        g0 = half_max_width(x, y, c, bg_c, start, stop)
        if not np.isfinite(g0) or g0 <= 0:
            g0 = width / 4.0
        # an overlapping neighbour stretches the half-maximum crossings: Γ0 at most the distance to it
        gaps = [abs(float(x[c]) - float(x[o])) for o in bins if o != c]
        if gaps:
            g0 = min(g0, min(gaps))
        g_lo, g_hi = 0.5 * dx, width
        g0 = min(max(g0, g_lo * 1.5), g_hi * 0.9)
        w = max(3.0 * dx, g0)
        rc0 = float(x[c])
        p0[o + IMAX], lo[o + IMAX], hi[o + IMAX] = imax0, 0.0, 4.0 * span
        p0[o + MU], lo[o + MU], hi[o + MU] = 0.5, 0.0, 1.0
        p0[o + RC], lo[o + RC], hi[o + RC] = rc0, max(rc0 - w, float(xs[0])), min(rc0 + w, float(xs[-1]))
        p0[o + GAMMA], lo[o + GAMMA], hi[o + GAMMA] = g0, g_lo, g_hi
    p0 = np.clip(p0, lo, hi)
    return RoiProblem(start, stop, list(slots), list(bins), p0, lo, hi, xmid, hw)


def bg_under_peaks(p: np.ndarray, xmid: float, hw: float) -> np.ndarray:
    """Background under each peak of a parameter vector, ``b0 + b1 (Rc_k − xmid)/hw`` (fit.bin's BG column)."""
    rc = p[N_BG + RC::PER_PEAK]
    return p[0] + p[1] * (rc - xmid) / hw


#: parameter offsets (within a peak block) whose bounds are the model's own range, not a limit of the search: a
#: fit ending there is a valid answer (μ = 0: a pure Gaussian, μ = 1: a pure Lorentzian), not a stuck one (the pv
#: model's; :meth:`.models.PeakModel.is_pinned` is the test)
NATURAL_BOUNDS = (MU,)

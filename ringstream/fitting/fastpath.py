"""The batched engines' fast path: a batch of frames with one fixed peak list, planned, packed, tested and assembled
with array operations over the whole batch instead of per frame and per ROI (issue 5).

With a peak list and FitROIAuto 0 the ROIs of a frame (snapping, ±FitROIPadding intervals, merging, cutting, the
``roi_too_short`` / ``peak_outside_r_range`` / ... rejections) depend only on the peak list and the lineout's bins,
not on the intensities: :func:`build_layout` computes them once (a :class:`RoiLayout`, cached by the
:class:`~.frame.FrameFitter` per peak list). Per batch of F valid lineouts ``Y [F, n]`` (finite, not flat; the
others go through the per-frame reject path):

- :func:`initial_guesses`: ``p0, lo, hi [F, R, M]`` for the R ROIs of the layout, exactly the arithmetic of
  :func:`.peaks.initial_problem` (and :func:`.peaks.half_max_width`'s walk to the half-maximum crossings: the number
  of consecutive bins above the half maximum is the index of the first bin that is not, ``argmax`` over a boolean
  mask), with M = 2 + 4·(most peaks of any ROI) and the unused peak slots of a ROI set as :func:`.batched.pack` sets
  them;
- :func:`pack_batch`: the :class:`~.batched.Packed` batch, ROI ``r`` of frame ``f`` in row ``f·R + r`` (the order the
  per-frame path packs them in, so the same batch gives the same fit);
- :func:`failed`: :func:`.nlopt_fitter.failure_reason` (non-finite, pinned at a bound other than μ, no improvement)
  or not converged, for every row at once;
- :func:`assemble_rows`: peak blocks sorted by Rc per ROI (:func:`.frame.sort_peaks`), the rows
  ``[Imax, BG, Mu, Rcen, Sigma, GoF, Area]`` scattered into ``fit [F, slots, 7]``, and the model on every ROI's bins
  from one :func:`.model.model_jacobian` call (fit_curves.bin).

Everything here is pure (no counters, no logging); :meth:`.frame.FrameFitter.fit_many` does the bookkeeping.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .batched import CONVERGED, Packed
from .model import GAMMA, IMAX, MU, N_BG, PER_PEAK, RC, SIGMA_FROM_GAMMA, model_jacobian, n_params, peak_area
from .peaks import EDGE_POINTS, NATURAL_BOUNDS, group_rois, snap_locations


@dataclasses.dataclass(frozen=True, eq=False)
class RoiLayout:
    """The ROIs of one peak list on one lineout's bins (``r_px [n]``), what every valid frame rejects, and the index
    arrays that gather each ROI's points from a batch of lineouts.

    ROIs (R of them, in bin order): ``starts``, ``stops``, ``npts`` int ``[R]``, ``slots`` / ``bins`` (per ROI, its
    peaks' output rows and bins), ``n_peaks [R]``, ``table`` int32 ``[R, 2]`` (start, n_points), ``idx [R, N]`` the
    lineout bin of each padded point (the last real point repeated, as :func:`.batched.pack` pads ``x``),
    ``mask [R, N]`` the real points, ``x [R, N]`` = ``r_px[idx]``, ``xmid``, ``hw``, ``dx``, ``width``, ``x0``,
    ``x1`` ``[R]`` (px, as :func:`.peaks.initial_problem` computes them), ``base [R, M]`` (zeros, and in each
    ROI's unused peak slots the fixed values :func:`.batched.pack` gives them: Imax 0 = lo = hi), ``edges``: (ne, ROIs, left bins
    ``[R_ne, ne]``, right bins) per edge-point count. Peaks (Q, ROI by ROI): ``q_roi``, ``q_k`` (position in its
    ROI), ``q_slot``, ``q_bin``, ``q_u`` ((x_c − xmid)/hw), ``q_gap`` (px to the nearest other peak of its ROI, inf
    when alone), ``q_xc``; the half-maximum walks: ``left_idx [Q, WL+1]`` = bins c−1, c−2, … down to the ROI's
    start, ``left_ok`` (real entries; the last column is always False), ``left_len [Q]``, and ``right_*`` likewise
    c+1 … stop−1. ``rejects``: (reason, rows, detail) that every valid frame counts, in the per-frame path's order.
    """

    peaks: tuple[float, ...]
    n_slots: int
    rejects: tuple[tuple[str, int, str], ...]
    starts: np.ndarray
    stops: np.ndarray
    npts: np.ndarray
    slots: tuple[tuple[int, ...], ...]
    bins: tuple[tuple[int, ...], ...]
    n_peaks: np.ndarray
    table: np.ndarray
    idx: np.ndarray
    mask: np.ndarray
    x: np.ndarray
    xmid: np.ndarray
    hw: np.ndarray
    dx: np.ndarray
    width: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    base: np.ndarray
    edges: tuple
    q_roi: np.ndarray
    q_k: np.ndarray
    q_slot: np.ndarray
    q_bin: np.ndarray
    q_u: np.ndarray
    q_gap: np.ndarray
    q_xc: np.ndarray
    left_idx: np.ndarray
    left_ok: np.ndarray
    left_len: np.ndarray
    right_idx: np.ndarray
    right_ok: np.ndarray
    right_len: np.ndarray

    @property
    def n_rois(self) -> int:
        return int(self.starts.size)

    @property
    def n_params(self) -> int:
        return n_params(int(self.n_peaks.max()) if self.n_peaks.size else 1)


def build_layout(r_px: np.ndarray, peaks: tuple[float, ...], n_slots: int, pad: int, bin_size: float) -> RoiLayout:
    """The layout of ``peaks`` (px, sorted by R, non-empty) on bins ``r_px`` with ``n_slots`` rows per frame and
    ROIs of ±``pad`` bins (FitROIAuto 0): the steps of :meth:`.frame.FrameFitter.plan` after the lineout checks."""
    n = int(r_px.size)
    rejects: list[tuple[str, int, str]] = []
    if len(peaks) > n_slots:
        rejects.append(("more_peaks_than_slots", len(peaks) - n_slots,
                        f"{len(peaks)} peaks for {n_slots} rows; the largest R dropped"))
        peaks = peaks[:n_slots]
    rejects.append(("unused_slot", n_slots - len(peaks), ""))
    bins = snap_locations(peaks, r_px, bin_size)
    for loc, b in zip(peaks, bins, strict=True):
        if b < 0:
            rejects.append(("peak_outside_r_range", 1,
                            f"PeakLocation {loc:g} px has no R bin within 2·RBinSize = {2 * bin_size:g} px "
                            f"(R {r_px[0]:g}..{r_px[-1]:g} px)"))
    found = [(s, b) for s, b in enumerate(bins) if b >= 0]
    rois: list[tuple[int, int, list[int], list[int]]] = []
    if found:
        halves = [int(pad)] * len(found)  # roi_half_width without FitROIAuto
        if 2 * int(pad) + 1 > n:
            rejects.append(("roi_wider_than_lineout", len(found), f"ROI of {2 * int(pad) + 1} bins, lineout of {n}"))
        else:
            found.sort(key=lambda sb: sb[1])
            for start, stop, members in group_rois(found, halves, n):
                slots = [found[j][0] for j in members]
                bins_ = [found[j][1] for j in members]
                if stop - start < N_BG + PER_PEAK * len(slots) + 3:
                    rejects.append(("roi_too_short", len(slots), f"bins {start}..{stop - 1} for {len(slots)} peak(s)"))
                    continue
                rois.append((start, stop, slots, bins_))
    return _layout_arrays(r_px, tuple(peaks), n_slots, tuple(rejects), rois)


def _layout_arrays(x: np.ndarray, peaks, n_slots: int, rejects, rois) -> RoiLayout:
    n_r = len(rois)
    starts = np.array([r[0] for r in rois], dtype=np.intp)
    stops = np.array([r[1] for r in rois], dtype=np.intp)
    npts = stops - starts
    n_pts = int(npts.max()) if n_r else 1
    t = np.arange(n_pts)
    idx = starts[:, None] + np.minimum(t[None, :], npts[:, None] - 1)
    mask = t[None, :] < npts[:, None]
    # the ROI's constants, with initial_problem's own float arithmetic
    xmid, hw, dx, width, x0, x1 = (np.empty(n_r) for _ in range(6))
    edges: dict[int, list[int]] = {}
    q_roi, q_k, q_slot, q_bin, q_u, q_gap = [], [], [], [], [], []
    for j, (start, stop, slots, bins) in enumerate(rois):
        xs = x[start:stop]
        xmid[j] = 0.5 * (float(xs[0]) + float(xs[-1]))
        hw[j] = max(0.5 * (float(xs[-1]) - float(xs[0])), 1e-9)
        dx[j] = (float(xs[-1]) - float(xs[0])) / max(1, stop - start - 1)
        width[j] = float(xs[-1] - xs[0]) + dx[j]
        x0[j], x1[j] = float(xs[0]), float(xs[-1])
        edges.setdefault(min(EDGE_POINTS, max(1, (stop - start) // 4)), []).append(j)
        for k, (s, c) in enumerate(zip(slots, bins, strict=True)):
            gaps = [abs(float(x[c]) - float(x[o])) for o in bins if o != c]
            q_roi.append(j)
            q_k.append(k)
            q_slot.append(s)
            q_bin.append(c)
            q_u.append((float(x[c]) - xmid[j]) / hw[j])
            q_gap.append(min(gaps) if gaps else np.inf)
    edge_groups = []
    for ne, members in sorted(edges.items()):
        js = np.array(members, dtype=np.intp)
        left = starts[js, None] + np.arange(ne)[None, :]
        right = stops[js, None] - ne + np.arange(ne)[None, :]
        edge_groups.append((ne, js, left, right))
    q_roi_a = np.array(q_roi, dtype=np.intp)
    q_bin_a = np.array(q_bin, dtype=np.intp)
    walks = []
    for step in (-1, 1):
        # bins the walk of half_max_width visits from c in direction step, inside [start, stop)
        length = (q_bin_a - starts[q_roi_a]) if step < 0 else (stops[q_roi_a] - 1 - q_bin_a)
        w = int(length.max()) if length.size else 0
        s = np.arange(1, w + 2)
        ok = (s[None, :] <= length[:, None]) & (s[None, :] <= w)
        wi = np.where(ok, q_bin_a[:, None] + step * s[None, :], q_bin_a[:, None])
        walks.append((wi, ok, length))
    (li, lok, llen), (ri, rok, rlen) = walks
    n_pk = np.array([len(r[2]) for r in rois], dtype=np.int32)
    base = np.zeros((n_r, n_params(int(n_pk.max()) if n_r else 1)))
    for j in range(n_r):
        for s_ in range(int(n_pk[j]), (base.shape[1] - N_BG) // PER_PEAK):
            o = N_BG + PER_PEAK * s_
            base[j, o:o + 4] = (0.0, 0.5, xmid[j], 1.0)
    return RoiLayout(
        peaks=peaks, n_slots=int(n_slots), rejects=rejects, starts=starts, stops=stops, npts=npts.astype(np.int32),
        slots=tuple(tuple(r[2]) for r in rois), bins=tuple(tuple(r[3]) for r in rois),
        n_peaks=n_pk,
        table=_readonly(np.stack([starts, npts], axis=1).astype(np.int32).reshape(-1, 2)),
        idx=idx, mask=mask, x=x[idx], xmid=xmid, hw=hw, dx=dx, width=width, x0=x0, x1=x1, base=base,
        edges=tuple(edge_groups),
        q_roi=q_roi_a, q_k=np.array(q_k, dtype=np.intp), q_slot=np.array(q_slot, dtype=np.intp), q_bin=q_bin_a,
        q_u=np.array(q_u), q_gap=np.array(q_gap), q_xc=x[q_bin_a].astype(np.float64),
        left_idx=li, left_ok=lok, left_len=llen, right_idx=ri, right_ok=rok, right_len=rlen)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def half_max_widths(lay: RoiLayout, x: np.ndarray, y: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """:func:`.peaks.half_max_width` of every peak of the layout in every lineout: ``y [F, n]``, ``bg [F, Q]`` ->
    FWHM ``[F, Q]`` (px; NaN where neither crossing lies inside the ROI)."""
    c = lay.q_bin
    yc = y[:, c]
    half = bg + 0.5 * (yc - bg)
    rows = np.arange(y.shape[0])[:, None]
    sides = []
    for wi, ok, length, step in ((lay.left_idx, lay.left_ok, lay.left_len, -1),
                                 (lay.right_idx, lay.right_ok, lay.right_len, 1)):
        above = (y[:, wi] > half[:, :, None]) & ok  # [F, Q, W+1]; the last column is never "above"
        cnt = np.argmax(~above, axis=2)  # bins walked: the first that is not above the half maximum
        found = cnt < length  # the crossing's outer bin j = i + step is inside the ROI
        i = c + step * cnt
        j = np.where(found, i + step, i)
        y1, y2 = y[rows, i], y[rows, j]
        xi, xj = x[i], x[j]
        same = y1 == y2
        frac = np.where(same, 0.5, (y1 - half) / np.where(same, 1.0, y1 - y2))
        sides.append((found, np.abs(xi + frac * (xj - xi) - x[c])))
    (fl, sl), (fr, sr) = sides
    return np.where(fl & fr, sl + sr, np.where(fl, 2.0 * sl, np.where(fr, 2.0 * sr, np.nan)))


def initial_guesses(lay: RoiLayout, x: np.ndarray, y: np.ndarray):
    """:func:`.peaks.initial_problem` for every ROI of the layout in every lineout ``y [F, n]`` (valid: finite, not
    flat) on bins ``x [n]``. Returns ``p0, lo, hi [F, R, M]`` and the gathered points ``yg [F, R, N]``."""
    f_n, r_n = y.shape[0], lay.n_rois
    yg = y[:, lay.idx]
    ymin = np.where(lay.mask, yg, np.inf).min(axis=2)
    ymax = np.where(lay.mask, yg, -np.inf).max(axis=2)
    span = np.maximum(ymax - ymin, 1e-12 * np.maximum(np.abs(ymax), 1.0))
    left, right = np.empty((f_n, r_n)), np.empty((f_n, r_n))
    for _, js, li, ri in lay.edges:
        left[:, js] = y[:, li].mean(axis=2)
        right[:, js] = y[:, ri].mean(axis=2)
    bg0 = 0.5 * (left + right)
    b1 = 0.5 * (right - left)
    # zeros, and in unused peak slots the fixed values batched.pack gives them
    p0, lo, hi = (np.repeat(lay.base[None], f_n, axis=0) for _ in range(3))
    p0[:, :, 0], lo[:, :, 0], hi[:, :, 0] = bg0, ymin - span, ymax + span
    p0[:, :, 1], lo[:, :, 1], hi[:, :, 1] = b1, -2.0 * span, 2.0 * span
    # peaks [F, Q]
    j = lay.q_roi
    o = N_BG + PER_PEAK * lay.q_k
    bg_c = bg0[:, j] + b1[:, j] * lay.q_u
    imax0 = np.maximum(y[:, lay.q_bin] - bg_c, 0.05 * span[:, j])
    g0 = half_max_widths(lay, x, y, bg_c)
    g0 = np.where(np.isfinite(g0) & (g0 > 0), g0, lay.width[j] / 4.0)
    g0 = np.minimum(g0, lay.q_gap)  # an overlapping neighbour stretches the crossings
    g_lo, g_hi = 0.5 * lay.dx[j], lay.width[j]
    g0 = np.minimum(np.maximum(g0, g_lo * 1.5), g_hi * 0.9)
    w = np.maximum(3.0 * lay.dx[j], g0)
    rc0 = lay.q_xc
    p0[:, j, o + IMAX], hi[:, j, o + IMAX] = imax0, 4.0 * span[:, j]  # lo 0
    p0[:, j, o + MU], hi[:, j, o + MU] = 0.5, 1.0  # lo 0
    p0[:, j, o + RC] = rc0
    lo[:, j, o + RC], hi[:, j, o + RC] = np.maximum(rc0 - w, lay.x0[j]), np.minimum(rc0 + w, lay.x1[j])
    p0[:, j, o + GAMMA] = g0
    lo[:, j, o + GAMMA], hi[:, j, o + GAMMA] = g_lo, g_hi
    return np.clip(p0, lo, hi), lo, hi, yg


def pack_batch(lay: RoiLayout, yg: np.ndarray, p0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Packed:
    """The :class:`~.batched.Packed` batch of every ROI of every frame (row f·R + r), as :func:`.batched.pack`
    builds it from the same problems."""
    f_n, r_n, n = yg.shape
    b, m = f_n * r_n, p0.shape[2]
    return Packed(x=np.broadcast_to(lay.x, (f_n, r_n, n)).reshape(b, n), y=np.where(lay.mask, yg, 0.0).reshape(b, n),
                  npts=np.tile(lay.npts, f_n), p=p0.reshape(b, m), lo=lo.reshape(b, m), hi=hi.reshape(b, m),
                  xmid=np.tile(lay.xmid, f_n), hw=np.tile(lay.hw, f_n), n_peaks=np.tile(lay.n_peaks, f_n))


def used_params(lay: RoiLayout) -> np.ndarray:
    """``[R, M]``: the parameters each ROI really has (2 + 4·its peaks)."""
    return np.arange(lay.n_params)[None, :] < (N_BG + PER_PEAK * lay.n_peaks)[:, None]


def failed(lay: RoiLayout, p: np.ndarray, cost: np.ndarray, start_cost: np.ndarray, status: np.ndarray,
           lo: np.ndarray, hi: np.ndarray, rel: float = 1e-7) -> np.ndarray:
    """``[F, R]`` True where the batched fit failed: not converged, or :func:`.nlopt_fitter.failure_reason` is not
    "" (a non-finite parameter or cost, a parameter other than μ within ``rel`` of its bound interval of a bound,
    :func:`.peaks.is_pinned`, or a cost no lower than the start). ``p``, ``lo``, ``hi`` ``[F, R, M]``."""
    used = used_params(lay)
    pin = used.copy()
    for k in range(pin.shape[1]):
        if k >= N_BG and (k - N_BG) % PER_PEAK in NATURAL_BOUNDS:
            pin[:, k] = False
    finite = np.all(np.isfinite(p) | ~used, axis=2) & np.isfinite(cost)
    with np.errstate(invalid="ignore"):
        tol = rel * (hi - lo)
        at = (p <= lo + tol) | (p >= hi - tol)
        pinned = np.any(at & pin & (hi > lo), axis=2)
        improved = cost < start_cost
    return (status != CONVERGED) | ~finite | pinned | ~improved


def sort_blocks(lay: RoiLayout, p: np.ndarray) -> np.ndarray:
    """``p [F, R, M]`` with each ROI's real peak blocks in increasing Rc (:func:`.frame.sort_peaks`; the unused
    blocks stay behind them)."""
    f_n, r_n, m = p.shape
    n_pk = (m - N_BG) // PER_PEAK
    blocks = p[:, :, N_BG:].reshape(f_n, r_n, n_pk, PER_PEAK)
    real = np.arange(n_pk)[None, :] < lay.n_peaks[:, None]
    key = np.where(real, blocks[..., RC], np.inf)
    order = np.argsort(key, axis=2, kind="stable")
    out = p.copy()
    out[:, :, N_BG:] = np.take_along_axis(blocks, order[..., None], axis=2).reshape(f_n, r_n, m - N_BG)
    return out


def assemble_rows(lay: RoiLayout, p: np.ndarray, cost: np.ndarray, ok: np.ndarray, want_curves: bool = True):
    """The frames' rows ``fit [F, slots, 7]`` (NaN where the ROI is not ``ok [F, R]`` and in slots no ROI fills) and
    the model on every ROI's points ``curves [F, R, N]`` (None unless ``want_curves``), from the fitted ``p [F, R, M]``
    (sorted here) and ``cost [F, R]``."""
    f_n, r_n, m = p.shape
    ps = sort_blocks(lay, p)
    j, o = lay.q_roi, N_BG + PER_PEAK * lay.q_k
    imax, mu, rc, gam = (ps[:, j, o + a] for a in (IMAX, MU, RC, GAMMA))
    bg = ps[:, j, 0] + ps[:, j, 1] * (rc - lay.xmid[j]) / lay.hw[j]  # bg_under_peaks
    rows = np.stack([imax, bg, mu, rc, gam / SIGMA_FROM_GAMMA, cost[:, j], peak_area(imax, mu, gam)], axis=2)
    fit = np.full((f_n, lay.n_slots, 7), np.nan)
    fit[:, lay.q_slot] = np.where(ok[:, j, None], rows, np.nan)
    curves = None
    if want_curves:
        b = f_n * r_n
        f, _ = model_jacobian(np.broadcast_to(lay.x, (f_n, r_n, lay.x.shape[1])).reshape(b, -1), ps.reshape(b, m),
                              np.tile(lay.xmid, f_n), np.tile(lay.hw, f_n), want_jac=False)
        curves = f.reshape(f_n, r_n, -1)
    return fit, curves

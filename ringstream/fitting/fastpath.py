"""The batched engines' fast path: a batch of frames with one fixed peak list, planned, packed, tested and assembled
with array operations over the whole batch instead of per frame and per ROI.

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

A layout of the "tch" model (:mod:`.tch`) is the same ROIs on the 2θ of the bins (``x`` in degrees): the pseudo-Voigt
start is computed as above on those points and converted (:func:`.tch.blocks_from_pv`), the rows are the TCH ones
(:func:`.tch.rows`) and the model is :func:`.tch.model_jacobian`.

Everything here is pure (no counters, no logging); :meth:`.frame.FrameFitter.fit_many` does the bookkeeping.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import tch
from .batched import CONVERGED, Packed
from .model import GAMMA, IMAX, MU, N_BG, PER_PEAK, RC, SIGMA_FROM_GAMMA, n_params, peak_area
from .models import DEFAULT_MODEL, get_model
from .peaks import EDGE_POINTS, group_rois, snap_locations

#: batch sizes whose shared Packed arrays a layout keeps (:meth:`RoiLayout.tiles`; starts afresh when full)
TILE_CACHE = 16


@dataclasses.dataclass(frozen=True, eq=False)
class RoiLayout:
    """The ROIs of one peak list on one lineout's bins (``r_px [n]``), what every valid frame rejects, and the index
    arrays and constants that gather each ROI's points from a batch of lineouts and place the parameters.

    ROIs (R of them, in bin order): ``starts``, ``stops``, ``npts`` ``[R]``, ``slots`` / ``bins`` (per ROI, its
    peaks' output rows and bins), ``n_peaks [R]``, ``table`` int32 ``[R, 2]`` (start, n_points; read-only),
    ``idx [R, N]`` the lineout bin of each padded point (the last real point repeated, as :func:`.batched.pack` pads
    ``x``), ``mask [R, N]`` the real points, ``x [R, N]`` = ``r_px[idx]``, ``xmid``, ``hw`` ``[R]`` (px),
    ``base3 [3, 1, R·M]`` (p0, lo, hi: zeros, and in each ROI's unused peak slots the fixed values pack() gives
    them), ``edges``: (ne, ROIs, bins ``[2, R_ne, ne]`` of the left and right edge points) per edge-point count
    (``edges_all``: one count for every ROI, in ROI order). Peaks (Q of them, ROI by ROI): ``q_roi``, ``q_k``
    (position in its ROI), ``q_slot``, ``q_bin``, ``q_u`` = (x_c − xmid)/hw, ``q_gap`` (px to the nearest other peak
    of its ROI, inf when alone), ``q_xc``, and their ROI's ``q_xmid``, ``q_hw``, ``q_dx`` (mean bin width),
    ``q_glo`` (0.5·dx, Γ's lower bound), ``q_width`` (Γ's upper bound), ``q_x0``, ``q_x1`` (the ROI's first and last
    x), all computed with :func:`.peaks.initial_problem`'s own float arithmetic; ``walk_idx [2, Q, W+1]``: the bins
    :func:`.peaks.half_max_width` visits from c, down to the ROI's start (side 0) and up to its end (side 1),
    ``walk_ok`` the real ones (the last column never), ``walk_len [2, Q]``, ``walk_step [2, 1]`` (−1, +1);
    ``pk_const [3, 1, Q, 4]`` the constant parts of each peak block's p0, lo, hi and ``cols_pk [Q·4]`` where the
    blocks go in a frame's ``R·M`` parameters; ``cols_rows [6, Q]`` the columns of (b0, b1, Imax, μ, Rc, Γ) of each
    peak; ``unused [R, M]`` the padding parameters;
    ``pin_lo``, ``pin_hi`` ``[R, M]`` those the pinned test looks at, at the lower and at the upper bound
    (:meth:`.models.PeakModel.pinned_masks`); ``real_blocks [R, P]``; ``single_peak`` (one peak per ROI: nothing to sort), ``slots_direct`` (the peaks fill
    the slots in order), ``dense`` (every ROI has N points). ``rejects``: (reason, rows, detail) that every valid
    frame counts, in the per-frame path's order. ``model``: the peak model ("pv": ``x`` are the bins' R in px;
    "tch": their 2θ in degrees).
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
    base3: np.ndarray
    edges: tuple
    edges_all: bool
    q_roi: np.ndarray
    q_k: np.ndarray
    q_slot: np.ndarray
    q_bin: np.ndarray
    q_u: np.ndarray
    q_gap: np.ndarray
    q_xc: np.ndarray
    q_xmid: np.ndarray
    q_hw: np.ndarray
    q_dx: np.ndarray
    q_glo: np.ndarray
    q_width: np.ndarray
    q_x0: np.ndarray
    q_x1: np.ndarray
    walk_idx: np.ndarray
    walk_ok: np.ndarray
    walk_len: np.ndarray
    walk_step: np.ndarray
    pk_const: np.ndarray
    cols_pk: np.ndarray
    cols_rows: np.ndarray
    unused: np.ndarray
    pin_lo: np.ndarray
    pin_hi: np.ndarray
    real_blocks: np.ndarray
    single_peak: bool
    slots_direct: bool
    dense: bool
    model: str = DEFAULT_MODEL
    _tiles: dict = dataclasses.field(default_factory=dict, repr=False)

    def tiles(self, f_n: int) -> dict[str, np.ndarray]:
        """The Packed arrays that depend only on the layout and the batch's F frames (``x [F·R, N]``, ``npts``,
        ``xmid``, ``hw``, ``n_peaks [F·R]``), built once per F and shared (read-only)."""
        t = self._tiles.get(f_n)
        if t is None:
            if len(self._tiles) >= TILE_CACHE:
                self._tiles.clear()
            r_n, n = self.x.shape
            t = self._tiles[f_n] = {k: _readonly(v) for k, v in (
                ("x", np.broadcast_to(self.x, (f_n, r_n, n)).reshape(f_n * r_n, n)),
                ("npts", np.tile(self.npts, f_n)), ("xmid", np.tile(self.xmid, f_n)), ("hw", np.tile(self.hw, f_n)),
                ("n_peaks", np.tile(self.n_peaks, f_n)))}
        return t

    @property
    def n_rois(self) -> int:
        return int(self.starts.size)

    @property
    def n_params(self) -> int:
        return int(self.base3.shape[2] // self.n_rois) if self.n_rois else n_params(1)


def build_layout(r_px: np.ndarray, peaks: tuple[float, ...], n_slots: int, pad: int, bin_size: float,
                 model: str = DEFAULT_MODEL, x: np.ndarray | None = None) -> RoiLayout:
    """The layout of ``peaks`` (px, sorted by R, non-empty) on bins ``r_px`` with ``n_slots`` rows per frame and
    ROIs of ±``pad`` bins (FitROIAuto 0): the steps of :meth:`.frame.FrameFitter.plan` after the lineout checks.
    ``model``: the peak model; ``x``: the bins' abscissa of the fit when it is not ``r_px`` (tch: 2θ, deg)."""
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
    return _layout_arrays(r_px if x is None else np.asarray(x, dtype=np.float64), tuple(peaks), n_slots,
                          tuple(rejects), rois, get_model(model))


def _layout_arrays(x: np.ndarray, peaks, n_slots: int, rejects, rois, model) -> RoiLayout:
    n_r = len(rois)
    starts = np.array([r[0] for r in rois], dtype=np.intp)
    stops = np.array([r[1] for r in rois], dtype=np.intp)
    npts = stops - starts
    n_pts = int(npts.max()) if n_r else 1
    n_pk = np.array([len(r[2]) for r in rois], dtype=np.int32)
    p_max = int(n_pk.max()) if n_r else 1
    m = n_params(p_max)
    t = np.arange(n_pts)
    idx = starts[:, None] + np.minimum(t[None, :], npts[:, None] - 1)
    mask = t[None, :] < npts[:, None]
    # the ROI's constants, with initial_problem's own float arithmetic
    xmid, hw, dx, width, x0, x1 = (np.empty(n_r) for _ in range(6))
    edges: dict[int, list[int]] = {}
    peaks_of: list[tuple[int, int, int, int, float, float]] = []  # roi, k, slot, bin, u, gap
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
            peaks_of.append((j, k, s, c, (float(x[c]) - xmid[j]) / hw[j], min(gaps) if gaps else np.inf))
    edge_groups = []
    for ne, members in sorted(edges.items()):
        js = np.array(members, dtype=np.intp)
        e = np.arange(ne)[None, :]
        edge_groups.append((ne, js, np.stack([starts[js, None] + e, stops[js, None] - ne + e])))
    q_roi = np.array([q[0] for q in peaks_of], dtype=np.intp)
    q_k = np.array([q[1] for q in peaks_of], dtype=np.intp)
    q_slot = np.array([q[2] for q in peaks_of], dtype=np.intp)
    q_bin = np.array([q[3] for q in peaks_of], dtype=np.intp)
    q_xc = x[q_bin].astype(np.float64)
    # the walks of half_max_width from c, inside [start, stop): down (side 0) and up (side 1)
    lengths = np.stack([q_bin - starts[q_roi], stops[q_roi] - 1 - q_bin]) if n_r else np.zeros((2, 0), np.intp)
    w = int(lengths.max()) if lengths.size else 0
    steps = np.array([[-1], [1]])
    s_ = np.arange(1, w + 2)
    walk_ok = s_[None, None, :] <= np.minimum(lengths, w)[:, :, None]
    walk_ok[:, :, -1] = False
    walk_idx = np.where(walk_ok, q_bin[None, :, None] + steps[:, :, None] * s_[None, None, :], q_bin[None, :, None])
    base = np.zeros((n_r, m))
    for j in range(n_r):
        for k in range(int(n_pk[j]), p_max):
            o = N_BG + PER_PEAK * k
            base[j, o:o + 4] = model.unused(xmid[j])
    q_n = q_bin.size
    pk_const = np.zeros((3, 1, q_n, PER_PEAK))
    pk_const[0, 0, :, MU], pk_const[2, 0, :, MU] = 0.5, 1.0
    pk_const[0, 0, :, RC] = q_xc
    pk_const[1, 0, :, GAMMA], pk_const[2, 0, :, GAMMA] = 0.5 * dx[q_roi], width[q_roi]
    block = q_roi * m + N_BG + PER_PEAK * q_k
    cols_pk = (block[:, None] + np.arange(PER_PEAK)[None, :]).reshape(-1)
    cols_rows = np.stack([q_roi * m, q_roi * m + 1, block + IMAX, block + MU, block + RC, block + GAMMA])
    used = np.arange(m)[None, :] < (N_BG + PER_PEAK * n_pk)[:, None]
    lo_mask, hi_mask = model.pinned_masks(p_max)  # per parameter, of the longest ROI: a shorter one's rest unused
    return RoiLayout(
        peaks=peaks, n_slots=int(n_slots), rejects=rejects, starts=starts, stops=stops, npts=npts.astype(np.int32),
        slots=tuple(tuple(r[2]) for r in rois), bins=tuple(tuple(r[3]) for r in rois), n_peaks=n_pk,
        table=_readonly(np.stack([starts, npts], axis=1).astype(np.int32).reshape(-1, 2)),
        idx=idx, mask=mask, x=x[idx], xmid=xmid, hw=hw, base3=base.reshape(1, 1, -1).repeat(3, axis=0),
        edges=tuple(edge_groups), edges_all=len(edge_groups) == 1,
        q_roi=q_roi, q_k=q_k, q_slot=q_slot, q_bin=q_bin,
        q_u=np.array([q[4] for q in peaks_of]), q_gap=np.array([q[5] for q in peaks_of]), q_xc=q_xc,
        q_xmid=xmid[q_roi], q_hw=hw[q_roi], q_dx=dx[q_roi], q_glo=0.5 * dx[q_roi], q_width=width[q_roi],
        q_x0=x0[q_roi], q_x1=x1[q_roi],
        walk_idx=walk_idx, walk_ok=walk_ok, walk_len=lengths, walk_step=steps,
        pk_const=pk_const, cols_pk=cols_pk, cols_rows=cols_rows, unused=~used,
        pin_lo=used & lo_mask, pin_hi=used & hi_mask,
        real_blocks=np.arange(p_max)[None, :] < n_pk[:, None], single_peak=bool(np.all(n_pk == 1)),
        slots_direct=bool(q_n == n_slots and np.array_equal(q_slot, np.arange(n_slots))),
        dense=bool(np.all(npts == n_pts)), model=model.name)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def half_max_widths(lay: RoiLayout, x: np.ndarray, y: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """:func:`.peaks.half_max_width` of every peak of the layout in every lineout: ``y [F, n]``, ``bg [F, Q]`` ->
    FWHM ``[F, Q]`` (px; NaN where neither crossing lies inside the ROI). Both sides at once: side 0 walks down
    from the peak's bin c, side 1 up; the walk's length is the number of bins above the half maximum before the
    first that is not (``argmin`` over the mask, whose last column is always False)."""
    c = lay.q_bin
    half = bg + 0.5 * (y[:, c] - bg)
    above = (y[:, lay.walk_idx] > half[:, None, :, None]) & lay.walk_ok  # [F, 2, Q, W+1]
    cnt = np.argmin(above, axis=3)  # [F, 2, Q]: bins walked
    found = cnt < lay.walk_len  # the crossing's outer bin j = i + step is inside the ROI
    step = lay.walk_step  # [2, 1]
    i = c + step * cnt
    j = np.where(found, i + step, i)
    rows = np.arange(y.shape[0])[:, None, None]
    y1, y2 = y[rows, i], y[rows, j]
    xi = x[i]
    same = y1 == y2
    frac = np.where(same, 0.5, (y1 - half[:, None]) / np.where(same, 1.0, y1 - y2))
    side = np.abs(xi + frac * (x[j] - xi) - x[c])
    # both crossings: left + right; one: twice its side (side + side, exactly 2·side); none: NaN
    side = np.where(found, side, side[:, ::-1])
    return np.where(found.any(axis=1), side[:, 0] + side[:, 1], np.nan)


def initial_guesses(lay: RoiLayout, x: np.ndarray, y: np.ndarray):
    """:func:`.peaks.initial_problem` for every ROI of the layout in every lineout ``y [F, n]`` (valid: finite, not
    flat) on bins ``x [n]``. Returns ``params [3, F, R, M]`` (p0, lo, hi) and the gathered points ``yg [F, R, N]``;
    each line below is the one of initial_problem it is named after."""
    f_n, r_n, m = y.shape[0], lay.n_rois, lay.n_params
    yg = y[:, lay.idx]
    ymin, ymax = yg.min(axis=2), yg.max(axis=2)  # the padding repeats a real point
    span = np.maximum(ymax - ymin, 1e-12 * np.maximum(np.abs(ymax), 1.0))
    if lay.edges_all:  # every ROI has the same number of edge points (np.mean = sum / count)
        ne, _, lr = lay.edges[0]
        means = y[:, lr].sum(axis=3) / ne  # [F, 2, R]
        left, right = means[:, 0], means[:, 1]
    else:
        left, right = np.empty((f_n, r_n)), np.empty((f_n, r_n))
        for ne, js, lr in lay.edges:
            means = y[:, lr].sum(axis=3) / ne
            left[:, js], right[:, js] = means[:, 0], means[:, 1]
    bg0 = 0.5 * (left + right)
    b1 = 0.5 * (right - left)  # p0[1]
    out = np.empty((3, f_n, r_n * m))
    out[:] = lay.base3
    a4 = out.reshape(3, f_n, r_n, m)
    a4[0, :, :, 0], a4[1, :, :, 0], a4[2, :, :, 0] = bg0, ymin - span, ymax + span
    a4[0, :, :, 1], a4[1, :, :, 1], a4[2, :, :, 1] = b1, -2.0 * span, 2.0 * span
    # peaks [F, Q]
    j = lay.q_roi
    span_q = span.take(j, axis=1)
    bg_c = bg0.take(j, axis=1) + b1.take(j, axis=1) * lay.q_u
    imax0 = np.maximum(y[:, lay.q_bin] - bg_c, 0.05 * span_q)
    g0 = half_max_widths(lay, x, y, bg_c)
    g0 = np.where(np.isfinite(g0) & (g0 > 0), g0, lay.q_width / 4.0)
    g0 = np.minimum(g0, lay.q_gap)  # an overlapping neighbour stretches the crossings
    g0 = np.minimum(np.maximum(g0, lay.q_glo * 1.5), lay.q_width * 0.9)
    w = np.maximum(3.0 * lay.q_dx, g0)
    pk = np.empty((3, f_n, lay.q_bin.size, PER_PEAK))
    pk[:] = lay.pk_const  # mu 0.5 in [0, 1], Imax >= 0, Rc0, Γ in [g_lo, g_hi]
    pk[0, :, :, IMAX], pk[2, :, :, IMAX] = imax0, 4.0 * span_q
    pk[1, :, :, RC], pk[2, :, :, RC] = np.maximum(lay.q_xc - w, lay.q_x0), np.minimum(lay.q_xc + w, lay.q_x1)
    pk[0, :, :, GAMMA] = g0
    if lay.model == "tch":  # the same start on 2θ, as TCH parameters (tch.from_pv)
        pk = tch.blocks_from_pv(pk[0, ..., IMAX], pk[0, ..., RC], pk[1, ..., RC], pk[2, ..., RC], g0, span_q,
                                lay.q_dx, lay.q_width)
    out[:, :, lay.cols_pk] = pk.reshape(3, f_n, -1)
    np.clip(out[0], out[1], out[2], out=out[0])
    return a4, yg


def pack_batch(lay: RoiLayout, yg: np.ndarray, params: np.ndarray) -> Packed:
    """The :class:`~.batched.Packed` batch of every ROI of every frame (row f·R + r), as :func:`.batched.pack`
    builds it from the same problems; ``params [3, F, R, M]`` from :func:`initial_guesses`. The arrays that depend
    only on the layout and F are shared between batches (read-only)."""
    f_n, r_n, n = yg.shape
    b, m = f_n * r_n, params.shape[3]
    t = lay.tiles(f_n)
    p0, lo, hi = (a.reshape(b, m) for a in params)
    return Packed(x=t["x"], y=np.where(lay.mask, yg, 0.0).reshape(b, n), npts=t["npts"], p=p0, lo=lo, hi=hi,
                  xmid=t["xmid"], hw=t["hw"], n_peaks=t["n_peaks"], model=lay.model)


def failed(lay: RoiLayout, p: np.ndarray, cost: np.ndarray, start_cost: np.ndarray, status: np.ndarray,
           lo: np.ndarray, hi: np.ndarray, rel: float = 1e-7) -> np.ndarray:
    """``[F, R]`` True where the batched fit failed: not converged, or :func:`.nlopt_fitter.failure_reason` is not
    "" (a non-finite parameter or cost, a parameter other than μ within ``rel`` of its bound interval of a bound,
    :meth:`.models.PeakModel.is_pinned`, or a cost no lower than the start). ``p``, ``lo``, ``hi`` ``[F, R, M]``."""
    finite = (np.isfinite(p) | lay.unused).all(axis=2) & np.isfinite(cost)
    with np.errstate(invalid="ignore"):
        tol = rel * (hi - lo)
        at = ((p <= lo + tol) & lay.pin_lo) | ((p >= hi - tol) & lay.pin_hi)
        pinned = (at & (hi > lo)).any(axis=2)
        improved = cost < start_cost
    return (status != CONVERGED) | ~finite | pinned | ~improved


def sort_blocks(lay: RoiLayout, p: np.ndarray) -> np.ndarray:
    """``p [F, R, M]`` with each ROI's real peak blocks in increasing Rc (:func:`.frame.sort_peaks`; the unused
    blocks stay behind them). A layout of one peak per ROI has nothing to sort."""
    if lay.single_peak:
        return p
    f_n, r_n, m = p.shape
    n_pk = (m - N_BG) // PER_PEAK
    blocks = p[:, :, N_BG:].reshape(f_n, r_n, n_pk, PER_PEAK)
    key = np.where(lay.real_blocks, blocks[..., get_model(lay.model).center], np.inf)
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
    # [F, Q] each; the four of a peak block are (Imax, μ, Rc, Γ) for pv, (A, c, sig, gam) for tch
    b0, b1, v0, v1, v2, v3 = ps.reshape(f_n, r_n * m)[:, lay.cols_rows].transpose(1, 0, 2)
    rows = np.empty((f_n, lay.q_bin.size, 7))
    if lay.model == "tch":
        rows[..., :4] = np.stack([v0, v1, v2, v3], axis=-1)
        rows[..., 4], rows[..., 5] = tch.fwhm_eta(v2, v3)
        rows[..., 6] = tch.chi2_dof(cost, lay.npts, lay.n_peaks).take(lay.q_roi, axis=1)
    else:
        imax, mu, rc, gam = v0, v1, v2, v3
        rows[..., 0], rows[..., 2], rows[..., 3] = imax, mu, rc
        rows[..., 1] = b0 + b1 * (rc - lay.q_xmid) / lay.q_hw  # bg_under_peaks
        rows[..., 4] = gam / SIGMA_FROM_GAMMA
        rows[..., 5] = cost.take(lay.q_roi, axis=1)
        rows[..., 6] = peak_area(imax, mu, gam)
    if not ok.all():
        rows[~ok.take(lay.q_roi, axis=1)] = np.nan
    if lay.slots_direct:  # every slot filled, in order
        fit = rows
    else:
        fit = np.full((f_n, lay.n_slots, 7), np.nan)
        fit[:, lay.q_slot] = rows
    curves = None
    if want_curves:
        t = lay.tiles(f_n)
        f, _ = get_model(lay.model).model_jacobian(t["x"], ps.reshape(f_n * r_n, m), t["xmid"], t["hw"],
                                                   want_jac=False)
        curves = f.reshape(f_n, r_n, -1)
    return fit, curves

"""Exact-area pixel splitting onto an (R, eta) grid of annular sectors.

For every pixel quadrilateral P (corners already mapped into the corrected plane, px) and every bin
``B_ij = {r_edges[i] <= r < r_edges[i+1], eta_edges[j] <= eta < eta_edges[j+1]}`` we compute the exact
area |P ∩ B_ij| (arcs integrated exactly, no polygonal approximation; only rounding noise is dropped).

Coordinates
-----------
Corrected plane: x = -R sin(eta), y = R cos(eta), so eta = atan2(-x, y).  Internally we use the rotated frame
``u = y, v = -x`` (a proper rotation, determinant +1: areas and orientations are unchanged) in which
eta = atan2(v, u) is the ordinary polar angle and increasing eta is counter-clockwise.

Mathematics
-----------
For a simple polygon with vertices c_0..c_{n-1} and any region S that is star-shaped w.r.t. the origin O in the
sense used here (S = wedge ∩ disk), the signed area is the sum over the edges (a -> b) of

    area(P ∩ S) = Σ_edges  signed_area( triangle(O, a, b) ∩ S )                                     (1)

(the usual shoelace decomposition: every point of P is covered by the triangles a net +1 times (CCW polygon),
every point outside a net 0 times).  The annular sector is a difference of two wedge∩disk regions:

    |P ∩ B_ij| = σ · Σ_edges [ T(a, b; W_j, R_{i+1}) - T(a, b; W_j, R_i) ]                         (2)

where σ = ±1 is the polygon's orientation (sign of the shoelace area), W_j the wedge
eta_edges[j] <= eta < eta_edges[j+1] and T the signed area of triangle(O,a,b) ∩ W_j ∩ disk(R).

* Triangle ∩ wedge.  Along the segment a->b the polar angle is monotone; it sweeps from φ_a by
  Δ = wrap(φ_b - φ_a) ∈ (-π, π].  The sign of Δ must be the sign of cross(a, b); the two can disagree only when
  a, b and O are collinear to rounding, and the two collinear cases are told apart by a·b: O between a and b
  (a·b < 0, Δ ≈ ±π) takes the side of cross(a, b); a and b on one ray from O (a·b > 0, Δ ≈ 0) make a degenerate
  origin triangle and the edge is dropped.  The second case is common, not contrived: with a half-integer beam
  centre every pixel edge on the centre's row or column maps onto a ray through O, and its cross product comes
  out as ±1e-12 instead of 0.  The angular interval [min, max](φ_a, φ_a + Δ) is intersected
  with [η0 + 2πk, η1 + 2πk] for k = -2..2 (the 2π shifts handle the ±180° seam and polygons that contain O; since
  the edges span at most 360° the shifted windows are disjoint).  The clipped part is triangle(O, a', b') where
  a', b' are the points of segment ab on the clamped rays: a' = a + s d, d = b - a, s = cross(a, e)/cross(e, d)
  for the ray direction e = (cos η, sin η) (clamped to [0, 1]).  Ray directions are computed from the bin edges
  in degrees reduced modulo 360, so that e.g. -180° and +180° give bit-identical directions (exact seam).
* Triangle ∩ disk.  For the triangle (O, p, q) with p, q on one line, G(p, q, R) = signed area ∩ disk(R):
  the segment p->q is split at its intersections with the circle (roots of |p + s d|² = R²); parts inside the
  disk contribute cross(P_s, P_t)/2 = (t - s)·cross(p, d)/2, parts outside contribute R²/2 · (signed angle they
  subtend), atan2(cross, dot).  Shortcuts: whole segment inside -> cross(p, d)/2; line misses the disk ->
  R²/2·angle(p, q).  Moving a split point by rounding changes the two terms by equal and opposite first-order
  amounts, so the result is insensitive to it.
* Cumulative trick.  For one clipped triangle and bin column j we evaluate G once per candidate radius edge and
  accumulate S_j(R_i) = Σ_edges G; the bin areas are the differences S_j(R_{i+1}) - S_j(R_i).  Hence the radial
  sum telescopes exactly.  When the origin is outside P and R <= r_min (distance from O to the boundary of P),
  disk(R) ∩ P = ∅, so S_j(R) = 0 is set exactly instead of a sum of cancelling sector terms.

Candidates: radial bins from the pixel's [r_min, r_max] (binary search in r_edges; r_min = 0 if O is inside P,
detected from the winding Σ Δ: ±2π inside, 0 outside; only a pixel whose boundary passes within rounding of O can
land in between, and its r_min is then 0 to rounding, so either answer gives the same candidates), η bins as the
union, over the edges, of the bins hit by each edge's angular interval (binary search in eta_edges for every 2π
shift) - a pixel containing O therefore gets all η bins.

Rounding noise: a candidate bin the pixel does not reach has an exact area of 0 but comes out as a difference of
sums of terms of size ~ r_max·ℓ (ℓ: the pixel's longest edge), i.e. as a few eps·r_max·ℓ of either sign.  Areas
up to 16·eps·r_max·ℓ (~5e-12 px² at r_max = 1500 px, ℓ = 1 px) are dropped as noise, and so are all negative
values.  A genuine sliver that small is lost with them, which moves the pixel's total by less than that.

Conservation: for a pixel inside [r_edges[0], r_edges[-1]] and eta edges spanning 360°, Σ areas = |shoelace|
to ~1e-10 relative at r ~ 1000 px (rounding and the noise threshold only).  Parts of a pixel outside the edge
ranges are dropped (partial coverage).

Triplets with area above the noise threshold are returned.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["split_pixels"]

_TWO_PI = 2.0 * math.pi
_CHUNK = 1 << 18  # pixels per kernel call (bounds the size of the temporary triplet buffers)
_BLOCK = 512  # pixels per parallel work item (scratch arrays are per block)
# bin areas up to _NOISE·eps·rmax·(longest edge) px² are rounding noise and dropped (see the module docstring)
_NOISE = 16.0 * np.finfo(np.float64).eps


@numba.njit(cache=True, inline="always")
def _bs_right(a, x):
    """Number of elements of sorted ``a`` that are <= x (np.searchsorted side='right')."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _bs_left(a, x):
    """Number of elements of sorted ``a`` that are < x (np.searchsorted side='left')."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _ang(s, t, cad, aa, B, A):
    """Signed angle subtended at O by the points a + s d and a + t d of one line.

    cross(a + s d, a + t d) = (t - s) cross(a, d), dot = |a|² + (s + t) a·d + s t |d|²  (no cancellation)."""
    return math.atan2((t - s) * cad, aa + (s + t) * B + s * t * A)


@numba.njit(cache=True)
def _disk_tri(sa, sb, cad, aa, B, A, R, arc):
    """Signed area of triangle(O, a + sa d, a + sb d) ∩ disk(O, R), for 0 <= sa < sb <= 1.

    With the edge a -> b parameterised as a + s d (d = b - a; cad = cross(a, d), aa = |a|², B = a·d,
    A = |d|²) the part of the segment inside the disk is the root interval [s1, s2] of
    A s² + 2 B s + (aa - R²) = 0.  Inside parts give (t - s)·cad/2, outside parts R²/2·(angle subtended).
    Working with the parameters s (shared by neighbouring pieces) keeps the pieces' sum telescoping exactly.
    ``arc`` is the angle subtended by the whole piece (used when the piece lies entirely outside the disk)."""
    R2 = R * R
    fa = aa + sa * (2.0 * B + sa * A)
    fb = aa + sb * (2.0 * B + sb * A)
    if fa <= R2 and fb <= R2:  # convex disk: the whole piece is inside
        return 0.5 * (sb - sa) * cad
    C = aa - R2
    disc = B * B - A * C
    if disc <= 0.0:  # the line misses (or touches) the disk: a circular sector
        return 0.5 * R2 * arc
    sq = math.sqrt(disc)
    # numerically stable roots
    if B >= 0.0:
        t = -(B + sq)
    else:
        t = -B + sq
    s1 = t / A
    s2 = C / t if t != 0.0 else s1
    if s1 > s2:
        s1, s2 = s2, s1
    if s1 >= sb or s2 <= sa:  # piece entirely outside
        return 0.5 * R2 * arc
    lo = s1 if s1 > sa else sa
    hi = s2 if s2 < sb else sb
    res = 0.5 * (hi - lo) * cad  # chord part inside the disk
    if s1 > sa:
        res += 0.5 * R2 * _ang(sa, s1, cad, aa, B, A)
    if s2 < sb:
        res += 0.5 * R2 * _ang(s2, sb, cad, aa, B, A)
    return res


@numba.njit(cache=True)
def _pixel_setup(p, cx, cy, r_edges, el, sc):
    """Per-pixel geometry.  Fills el[e] = (ax, ay, bx, by, lo, hi, delta) for the 4 edges (delta = 0: inactive).

    Returns (twice signed shoelace area, ilo, ihi, rmin, inside)."""
    n_r = r_edges.shape[0] - 1
    us = sc[0]
    vs = sc[1]
    ph = sc[2]
    for k in range(4):
        us[k] = cy[p, k]
        vs[k] = 0.0 - cx[p, k]
        ph[k] = math.atan2(vs[k], us[k])
    a2 = 0.0
    wind = 0.0
    rmax2 = 0.0
    rmin2 = np.inf
    for e in range(4):
        f = (e + 1) & 3
        ax = us[e]
        ay = vs[e]
        bx = us[f]
        by = vs[f]
        dx = bx - ax
        dy = by - ay
        crs = ax * dy - ay * dx  # = cross(a, b), twice the signed origin-triangle area
        # shoelace relative to corner 0 (no cancellation for pixels far from O)
        a2 += (ax - us[0]) * (by - vs[0]) - (ay - vs[0]) * (bx - us[0])
        r2 = ax * ax + ay * ay
        if r2 > rmax2:
            rmax2 = r2
        # squared distance from O to segment ab
        dd = dx * dx + dy * dy
        s = 0.0
        if dd > 0.0:
            s = -(ax * dx + ay * dy) / dd
            if s < 0.0:
                s = 0.0
            elif s > 1.0:
                s = 1.0
        mx = ax + s * dx
        my = ay + s * dy
        m2 = mx * mx + my * my
        if m2 < rmin2:
            rmin2 = m2
        el[e, 0] = ax
        el[e, 1] = ay
        el[e, 2] = bx
        el[e, 3] = by
        if crs == 0.0:  # degenerate origin triangle: contributes nothing
            el[e, 4] = 0.0
            el[e, 5] = 0.0
            el[e, 6] = 0.0
            continue
        dphi = ph[f] - ph[e]
        if dphi > math.pi:
            dphi -= _TWO_PI
        elif dphi <= -math.pi:
            dphi += _TWO_PI
        # The sweep direction must agree with the sign of the triangle.  They can disagree only when cross(a, b)
        # is rounding-level, i.e. a, b and O are collinear to rounding: if O lies between a and b (a·b < 0) the
        # sweep is ±π and its side is taken from the cross product; if a and b lie on one ray (a·b > 0) the
        # origin triangle is degenerate and the edge contributes nothing (forcing a full turn there would make
        # the pixel look as if it contained O).
        if (crs > 0.0 and dphi <= 0.0) or (crs < 0.0 and dphi >= 0.0):
            if ax * bx + ay * by > 0.0:
                el[e, 4] = 0.0
                el[e, 5] = 0.0
                el[e, 6] = 0.0
                continue
            dphi += _TWO_PI if crs > 0.0 else -_TWO_PI
        wind += dphi
        if dphi > 0.0:
            el[e, 4] = ph[e]
            el[e, 5] = ph[e] + dphi
        else:
            el[e, 4] = ph[e] + dphi
            el[e, 5] = ph[e]
        el[e, 6] = dphi
    inside = abs(wind) > math.pi
    rmin = 0.0 if inside else math.sqrt(rmin2)
    rmax = math.sqrt(rmax2)
    ilo = _bs_right(r_edges, rmin) - 1
    if ilo < 0:
        ilo = 0
    ihi = _bs_left(r_edges, rmax) - 1
    if ihi > n_r - 1:
        ihi = n_r - 1
    return a2, ilo, ihi, rmin, inside


@numba.njit(cache=True)
def _eta_candidates(el, E, stamp, token, jmap, cand):
    """Union over the active edges of the η bins their angular interval hits (any 2π shift)."""
    n_eta = E.shape[0] - 1
    ncand = 0
    for e in range(4):
        if el[e, 6] == 0.0:
            continue
        lo = el[e, 4]
        hi = el[e, 5]
        for k in range(-2, 3):
            lok = lo - _TWO_PI * k
            hik = hi - _TWO_PI * k
            if hik <= E[0] or lok >= E[n_eta]:
                continue
            jlo = _bs_right(E, lok) - 1
            if jlo < 0:
                jlo = 0
            jhi = _bs_left(E, hik) - 1
            if jhi > n_eta - 1:
                jhi = n_eta - 1
            for j in range(jlo, jhi + 1):
                if stamp[j] != token:
                    stamp[j] = token
                    jmap[j] = ncand
                    cand[ncand] = j
                    ncand += 1
    return ncand


@numba.njit(cache=True, parallel=True)
def _count(cx, cy, r_edges, E, counts, quad_area):
    n = cx.shape[0]
    n_eta = E.shape[0] - 1
    nblk = (n + _BLOCK - 1) // _BLOCK
    for blk in numba.prange(nblk):
        el = np.empty((4, 7))
        sc = np.empty((3, 4))
        stamp = np.full(n_eta, -1, np.int64)
        jmap = np.empty(n_eta, np.int64)
        cand = np.empty(n_eta, np.int64)
        p0 = blk * _BLOCK
        p1 = min(n, p0 + _BLOCK)
        for p in range(p0, p1):
            a2, ilo, ihi, rmin, inside = _pixel_setup(p, cx, cy, r_edges, el, sc)
            quad_area[p] = 0.5 * abs(a2)
            if a2 == 0.0 or ihi < ilo:
                counts[p] = 0
                continue
            ncand = _eta_candidates(el, E, stamp, p, jmap, cand)
            counts[p] = ncand * (ihi - ilo + 1)


@numba.njit(cache=True, parallel=True)
def _fill(cx, cy, r_edges, E, wu, wv, n_eta_total, offsets, pix_ids, out_pix, out_bin, out_area, acc_size):
    n = cx.shape[0]
    n_eta = E.shape[0] - 1
    nblk = (n + _BLOCK - 1) // _BLOCK
    for blk in numba.prange(nblk):
        el = np.empty((4, 7))
        sc = np.empty((3, 4))
        stamp = np.full(n_eta, -1, np.int64)
        jmap = np.empty(n_eta, np.int64)
        cand = np.empty(n_eta, np.int64)
        acc = np.zeros(acc_size)  # ncand * nrad <= 2 * count <= acc_size for every pixel
        p0 = blk * _BLOCK
        p1 = min(n, p0 + _BLOCK)
        for p in range(p0, p1):
            o0 = offsets[p]
            if offsets[p + 1] == o0:
                continue
            a2, ilo, ihi, rmin, inside = _pixel_setup(p, cx, cy, r_edges, el, sc)
            ncand = _eta_candidates(el, E, stamp, p, jmap, cand)
            nrad = ihi - ilo + 2  # radius edges ilo .. ihi+1
            need = ncand * nrad
            for t in range(need):
                acc[t] = 0.0
            # first radius index that needs evaluating: radii <= rmin give S = 0 exactly (O outside P)
            ifirst = 0
            if not inside:
                while ifirst < nrad and r_edges[ilo + ifirst] <= rmin:
                    ifirst += 1
            # "far" pixels (O well outside, angular extent < ~60°): per-pixel angles relative to corner 0
            rx = el[0, 0]
            ry = el[0, 1]
            emax2 = 0.0
            rmax2 = 0.0
            for e in range(4):
                ddx = el[e, 2] - el[e, 0]
                ddy = el[e, 3] - el[e, 1]
                emax2 = max(emax2, ddx * ddx + ddy * ddy)
                rmax2 = max(rmax2, el[e, 0] * el[e, 0] + el[e, 1] * el[e, 1])
            # rounding noise of one bin area: the terms summed are origin triangles and sectors of size
            # ~ rmax·edge, so a difference that is exactly zero comes out as a few eps·rmax·edge
            noise = _NOISE * math.sqrt(rmax2 * emax2)
            far = (not inside) and rmin * rmin > 4.0 * emax2
            rr = rx * rx + ry * ry
            for e in range(4):
                dphi = el[e, 6]
                if dphi == 0.0:
                    continue
                ax = el[e, 0]
                ay = el[e, 1]
                dx = el[e, 2] - ax
                dy = el[e, 3] - ay
                cad = ax * dy - ay * dx
                aa = ax * ax + ay * ay
                B = ax * dx + ay * dy
                A = dx * dx + dy * dy
                lo = el[e, 4]
                hi = el[e, 5]
                for k in range(-2, 3):
                    lok = lo - _TWO_PI * k
                    hik = hi - _TWO_PI * k
                    if hik <= E[0] or lok >= E[n_eta]:
                        continue
                    jlo = _bs_right(E, lok) - 1
                    if jlo < 0:
                        jlo = 0
                    jhi = _bs_left(E, hik) - 1
                    if jhi > n_eta - 1:
                        jhi = n_eta - 1
                    for j in range(jlo, jhi + 1):
                        w0 = E[j]
                        w1 = E[j + 1]
                        if hik <= w0 or lok >= w1:
                            continue
                        # parameters along a->b of the piece start (near a) and end (near b)
                        # parameters along a->b of the piece start (near a) and end (near b), and the
                        # ray (edge index) each end is clamped to (-1: the corner itself)
                        s_a = 0.0
                        s_b = 1.0
                        ja = -1
                        jb = -1
                        if dphi > 0.0:
                            if lok < w0:  # enters the wedge through ray w0
                                ja = j
                            if hik > w1:
                                jb = j + 1
                        else:
                            if hik > w1:  # a lies beyond ray w1: enters through it
                                ja = j + 1
                            if lok < w0:
                                jb = j
                        if ja >= 0:
                            ex = wu[ja]
                            ey = wv[ja]
                            s_a = (ax * ey - ay * ex) / (ex * dy - ey * dx)
                            s_a = min(max(s_a, 0.0), 1.0)
                        if jb >= 0:
                            ex = wu[jb]
                            ey = wv[jb]
                            s_b = (ax * ey - ay * ex) / (ex * dy - ey * dx)
                            s_b = min(max(s_b, 0.0), 1.0)
                        if s_b <= s_a:
                            continue
                        # angle subtended by the whole piece (used where it lies outside the disk)
                        arc = _ang(s_a, s_b, cad, aa, B, A)
                        # Seam-snapping corrections for far pixels.  The clamped end point P(s) lies on the
                        # computed ray only to ~eps·R, i.e. ~1e-16 rad; times R²/2 that is ~1e-10 px² at
                        # R ~ 1e3, and the arcs of the different edges crossing one ray would not cancel.
                        # We add the sliver triangle(O, ray, P(s)) ∩ disk(R) = min(R², |P|²)/2 · (δP - δray),
                        # with all angles δ measured from corner 0 (δP from the small vector P - c0, δray
                        # computed once per ray): every piece then refers to the same ray angle.
                        ca = 0.0
                        cb = 0.0
                        ra2 = 0.0
                        rb2 = 0.0
                        if far:
                            if ja >= 0:
                                dray = math.atan2(rx * wv[ja] - ry * wu[ja], rx * wu[ja] + ry * wv[ja])
                                tx = ax - rx + s_a * dx
                                ty = ay - ry + s_a * dy
                                ra2 = aa + s_a * (2.0 * B + s_a * A)
                                ca = math.atan2(rx * ty - ry * tx, rr + rx * tx + ry * ty) - dray
                            if jb >= 0:
                                dray = math.atan2(rx * wv[jb] - ry * wu[jb], rx * wu[jb] + ry * wv[jb])
                                tx = ax - rx + s_b * dx
                                ty = ay - ry + s_b * dy
                                rb2 = aa + s_b * (2.0 * B + s_b * A)
                                cb = dray - math.atan2(rx * ty - ry * tx, rr + rx * tx + ry * ty)
                        base = jmap[j] * nrad
                        f_max = max(aa + s_a * (2.0 * B + s_a * A), aa + s_b * (2.0 * B + s_b * A))
                        full = 0.5 * (s_b - s_a) * cad + 0.5 * (ra2 * ca + rb2 * cb)
                        for ir in range(ifirst, nrad):
                            R = r_edges[ilo + ir]
                            R2 = R * R
                            if R2 >= f_max:
                                for ir2 in range(ir, nrad):
                                    acc[base + ir2] += full
                                break
                            acc[base + ir] += _disk_tri(s_a, s_b, cad, aa, B, A, R, arc) + 0.5 * (
                                min(R2, ra2) * ca + min(R2, rb2) * cb
                            )
            sgn = 1.0 if a2 > 0.0 else -1.0
            pid = pix_ids[p]
            o = o0
            for c in range(ncand):
                j = cand[c]
                base = c * nrad
                for ir in range(nrad - 1):
                    out_pix[o] = pid
                    out_bin[o] = (ilo + ir) * n_eta_total + j
                    v = sgn * (acc[base + ir + 1] - acc[base + ir])
                    out_area[o] = v if v > noise else 0.0
                    o += 1


@numba.njit(cache=True)
def _compact(out_pix, out_bin, out_area):
    k = 0
    for t in range(out_area.shape[0]):
        if out_area[t] > 0.0:
            out_pix[k] = out_pix[t]
            out_bin[k] = out_bin[t]
            out_area[k] = out_area[t]
            k += 1
    return k


def _edge_directions(eta_edges_deg):
    """Unit ray directions (u, v) of the η edges, reduced mod 360° first so equal directions are bit-identical."""
    red = np.mod(eta_edges_deg, 360.0)
    rad = np.deg2rad(red)
    return np.cos(rad), np.sin(rad)


def split_pixels(cx, cy, r_edges, eta_edges, pixel_ids, n_threads=None):
    """Exact areas of pixel quadrilaterals inside (R, η) annular-sector bins.

    cx, cy: float64 [n, 4] corner coordinates of each pixel quadrilateral (px, corrected plane: x = -R sin η,
    y = R cos η), corners in order around the pixel (either orientation); pixel_ids: int64 [n].
    r_edges: increasing radius edges (px, >= 0, not necessarily uniform); eta_edges: increasing η edges (deg),
    total span <= 360°.

    Returns (pix int64[k], bins int64[k], area float64[k], quad_area float64[n]) with bin index
    b = r*n_eta + e, area > 0 (above the rounding-noise threshold of the module docstring) for every returned
    triplet, quad_area = |shoelace area| of each quadrilateral.
    Triplets are grouped by pixel (in input order).
    """
    cx = np.ascontiguousarray(cx, dtype=np.float64)
    cy = np.ascontiguousarray(cy, dtype=np.float64)
    r_edges = np.ascontiguousarray(r_edges, dtype=np.float64).ravel()
    eta_edges = np.ascontiguousarray(eta_edges, dtype=np.float64).ravel()
    pixel_ids = np.ascontiguousarray(pixel_ids, dtype=np.int64).ravel()
    if cx.ndim != 2 or cx.shape[1] != 4 or cy.shape != cx.shape:
        raise ValueError("cx, cy must be float arrays of shape [n, 4]")
    n = cx.shape[0]
    if pixel_ids.shape[0] != n:
        raise ValueError("pixel_ids must have length n")
    if r_edges.size < 2 or eta_edges.size < 2:
        raise ValueError("need at least one radial and one eta bin")
    if np.any(np.diff(r_edges) <= 0) or r_edges[0] < 0:
        raise ValueError("r_edges must be non-negative and strictly increasing")
    if np.any(np.diff(eta_edges) <= 0):
        raise ValueError("eta_edges must be strictly increasing")
    if eta_edges[-1] - eta_edges[0] > 360.0 + 1e-9:
        raise ValueError("eta_edges span more than 360 degrees")
    if not (np.all(np.isfinite(cx)) and np.all(np.isfinite(cy))):
        raise ValueError("non-finite pixel corner coordinates")
    n_eta = eta_edges.size - 1
    E = np.deg2rad(eta_edges)
    wu, wv = _edge_directions(eta_edges)

    old_threads = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        quad_area = np.empty(n, dtype=np.float64)
        pieces = []
        for c0 in range(0, n, _CHUNK):
            c1 = min(n, c0 + _CHUNK)
            ccx = cx[c0:c1]
            ccy = cy[c0:c1]
            counts = np.empty(c1 - c0, dtype=np.int64)
            _count(ccx, ccy, r_edges, E, counts, quad_area[c0:c1])
            offsets = np.zeros(c1 - c0 + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            tot = int(offsets[-1])
            o_pix = np.empty(tot, dtype=np.int64)
            o_bin = np.empty(tot, dtype=np.int64)
            o_area = np.empty(tot, dtype=np.float64)
            if tot:
                _fill(ccx, ccy, r_edges, E, wu, wv, n_eta, offsets, pixel_ids[c0:c1], o_pix, o_bin, o_area,
                      2 * int(counts.max()))
            k = _compact(o_pix, o_bin, o_area)
            pieces.append((o_pix[:k].copy(), o_bin[:k].copy(), o_area[:k].copy()))
    finally:
        numba.set_num_threads(old_threads)
    if not pieces:
        return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64), quad_area)
    pix = np.concatenate([t[0] for t in pieces])
    bins = np.concatenate([t[1] for t in pieces])
    area = np.concatenate([t[2] for t in pieces])
    return pix, bins, area, quad_area

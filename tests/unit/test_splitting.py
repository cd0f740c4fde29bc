"""Exact-area pixel splitting (ringstream.geometry.splitting.split_pixels)."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

from ringstream.geometry.splitting import split_pixels


def grid(a, b, step):
    """Edges a..b inclusive (linspace: np.arange accumulates error and would leave a gap at the seam)."""
    return np.linspace(a, b, int(round((b - a) / step)) + 1)


FULL_ETA = grid(-180.0, 180.0, 5.0)


# ----------------------------------------------------------------------------------------------------------
# helpers and an independent reference (polar integration of the polygon indicator, Cyrus-Beck ray clipping)
# ----------------------------------------------------------------------------------------------------------
def squares(xc, yc, h=0.5):
    xc = np.atleast_1d(np.asarray(xc, float))
    yc = np.atleast_1d(np.asarray(yc, float))
    cx = xc[:, None] + np.array([-h, h, h, -h])
    cy = yc[:, None] + np.array([-h, -h, h, h])
    return cx, cy


def shoelace(cx, cy):
    return 0.5 * np.abs(np.sum(cx * np.roll(cy, -1, axis=1) - np.roll(cx, -1, axis=1) * cy, axis=1))


def run(cx, cy, r_edges, eta_edges, ids=None):
    cx = np.asarray(cx, float)
    cy = np.asarray(cy, float)
    if ids is None:
        ids = np.arange(cx.shape[0], dtype=np.int64)
    return split_pixels(cx, cy, np.asarray(r_edges, float), np.asarray(eta_edges, float), ids)


def per_pixel_sum(pix, area, n):
    return np.bincount(pix, weights=area, minlength=n)


def dense(pix, bins, area, n_pix, n_bins):
    out = np.zeros((n_pix, n_bins))
    np.add.at(out, (pix, bins), area)
    return out


def _ray_interval(cx, cy, eta_deg):
    th = math.radians(eta_deg)
    ex, ey = -math.sin(th), math.cos(th)  # x = -R sin(eta), y = R cos(eta)
    n = len(cx)
    s = 1.0 if sum(cx[i] * cy[(i + 1) % n] - cx[(i + 1) % n] * cy[i] for i in range(n)) > 0 else -1.0
    t0, t1 = 0.0, math.inf
    for i in range(n):
        ax, ay, bx, by = cx[i], cy[i], cx[(i + 1) % n], cy[(i + 1) % n]
        dx, dy = bx - ax, by - ay
        c0 = s * (dx * (-ay) - dy * (-ax))
        c1 = s * (dx * ey - dy * ex)
        if c1 == 0.0:
            if c0 < 0.0:
                return None
        elif c1 > 0.0:
            t0 = max(t0, -c0 / c1)
        else:
            t1 = min(t1, -c0 / c1)
    return (t0, t1) if t1 > t0 else None


def ref_area(cx, cy, r0, r1, e0, e1):
    """|convex quad ∩ {r0 <= r < r1, e0 <= eta < e1}| by adaptive quadrature of ½(ρ_out² - ρ_in²) over eta."""

    def f(eta):
        iv = _ray_interval(cx, cy, eta)
        if iv is None:
            return 0.0
        a, b = max(iv[0], r0), min(iv[1], r1)
        return 0.5 * (b * b - a * a) if b > a else 0.0

    pts = [math.degrees(math.atan2(-x, y)) + k * 360.0 for x, y in zip(cx, cy, strict=False) for k in (-1, 0, 1)]
    pts = sorted(p for p in pts if e0 < p < e1)
    v, _ = quad(f, e0, e1, points=pts or None, limit=500, epsabs=1e-14, epsrel=1e-11)
    return v * math.pi / 180.0


def random_quads(rng, n, centre_scale, convex=True, size=(0.3, 2.0)):
    """Random rotated/skewed quadrilaterals (parallelograms plus perturbation) at random positions."""
    xc = rng.uniform(-centre_scale, centre_scale, n)
    yc = rng.uniform(-centre_scale, centre_scale, n)
    a = rng.uniform(*size, n)
    b = rng.uniform(*size, n)
    rot = rng.uniform(0, 2 * np.pi, n)
    skew = rng.uniform(-0.6, 0.6, n)
    base = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    u = base[None, :, 0] * a[:, None] + skew[:, None] * base[None, :, 1] * b[:, None]
    v = base[None, :, 1] * b[:, None]
    pert = 0.08 if convex else 0.45
    u = u + rng.uniform(-pert, pert, u.shape) * a[:, None]
    v = v + rng.uniform(-pert, pert, v.shape) * b[:, None]
    c, s = np.cos(rot)[:, None], np.sin(rot)[:, None]
    cx = xc[:, None] + c * u - s * v
    cy = yc[:, None] + s * u + c * v
    flip = rng.random(n) < 0.5  # both orientations
    cx[flip] = cx[flip, ::-1]
    cy[flip] = cy[flip, ::-1]
    return cx, cy


def _seg_cross(p1, p2, p3, p4):
    def orient(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (orient(p1, p2, p3) * orient(p1, p2, p4) < 0) and (orient(p3, p4, p1) * orient(p3, p4, p2) < 0)


def is_simple(cx, cy):
    """Quadrilateral without self-intersection (opposite edges do not cross)."""
    out = []
    for x, y in zip(cx, cy, strict=False):
        c = list(zip(x, y, strict=False))
        out.append(not (_seg_cross(c[0], c[1], c[2], c[3]) or _seg_cross(c[1], c[2], c[3], c[0])))
    return np.array(out)


def is_convex(cx, cy):
    out = []
    for x, y in zip(cx, cy, strict=False):
        cr = [(x[(i + 1) % 4] - x[i]) * (y[(i + 2) % 4] - y[(i + 1) % 4])
              - (y[(i + 1) % 4] - y[i]) * (x[(i + 2) % 4] - x[(i + 1) % 4]) for i in range(4)]
        out.append(all(c > 0 for c in cr) or all(c < 0 for c in cr))
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------
# API
# ----------------------------------------------------------------------------------------------------------
def test_api_types_and_ids():
    cx, cy = squares([3.2, -7.1, 0.0], [5.6, 2.2, -9.3])
    ids = np.array([17, 4, 99], dtype=np.int64)
    pix, bins, area, qa = run(cx, cy, np.arange(0, 20.0, 1.0), FULL_ETA, ids)
    assert pix.dtype == np.int64 and bins.dtype == np.int64 and area.dtype == np.float64
    assert qa.dtype == np.float64 and qa.shape == (3,)
    assert len(pix) == len(bins) == len(area)
    np.testing.assert_allclose(qa, 1.0, rtol=0, atol=1e-15)
    assert set(pix.tolist()) == {17, 4, 99}
    assert np.all(area > 0)
    assert bins.min() >= 0 and bins.max() < 19 * 72
    s = {i: area[pix == i].sum() for i in (17, 4, 99)}
    for v in s.values():
        assert abs(v - 1.0) < 1e-12


def test_orientation_and_threads_invariant():
    rng = np.random.default_rng(1)
    cx, cy = random_quads(rng, 300, 12.0)
    r = np.arange(0.0, 20.0, 0.7)
    a1 = run(cx, cy, r, FULL_ETA)
    a2 = run(cx[:, ::-1], cy[:, ::-1], r, FULL_ETA)
    a3 = split_pixels(cx, cy, r, FULL_ETA, np.arange(300, dtype=np.int64), n_threads=1)
    d1 = dense(a1[0], a1[1], a1[2], 300, (len(r) - 1) * 72)
    d2 = dense(a2[0], a2[1], a2[2], 300, (len(r) - 1) * 72)
    d3 = dense(a3[0], a3[1], a3[2], 300, (len(r) - 1) * 72)
    np.testing.assert_allclose(d1, d2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d1, d3)
    np.testing.assert_allclose(a1[3], shoelace(cx, cy), rtol=1e-13)


def test_empty_and_outside():
    cx, cy = squares([500.0], [500.0])
    pix, bins, area, qa = run(cx, cy, [0.0, 10.0, 20.0], FULL_ETA)
    assert len(pix) == 0 and qa[0] == pytest.approx(1.0)
    pix, bins, area, qa = run(np.zeros((0, 4)), np.zeros((0, 4)), [0.0, 1.0], FULL_ETA)
    assert len(pix) == 0 and len(qa) == 0


# ----------------------------------------------------------------------------------------------------------
# closed-form cases
# ----------------------------------------------------------------------------------------------------------
def test_pixel_inside_one_bin():
    # centre at r = 50, eta = 30 deg (x = -R sin, y = R cos); bins r 40..60, eta 20..40
    x0, y0 = -50 * math.sin(math.radians(30)), 50 * math.cos(math.radians(30))
    cx, cy = squares([x0], [y0], h=0.3)
    pix, bins, area, qa = run(cx, cy, [40.0, 60.0], [20.0, 40.0])
    assert bins.tolist() == [0]
    assert area[0] == pytest.approx(0.36, rel=1e-13)


def test_square_split_by_ray_eta0():
    # eta = 0 is the +y axis; the square x in [-0.5, 0.5], y in [10, 11] is halved by it
    cx, cy = squares([0.0], [10.5])
    pix, bins, area, _ = run(cx, cy, [0.0, 100.0], [-90.0, 0.0, 90.0])
    assert sorted(bins.tolist()) == [0, 1]
    np.testing.assert_allclose(area, 0.5, rtol=1e-14)


def test_square_on_origin_four_quadrants():
    cx, cy = squares([0.0], [0.0], h=1.0)
    pix, bins, area, qa = run(cx, cy, [0.0, 5.0], [-180.0, -90.0, 0.0, 90.0, 180.0])
    assert sorted(bins.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(area, 1.0, rtol=1e-14)
    # and cut by a circle of radius 1: the inscribed disk has area pi
    pix, bins, area, qa = run(cx, cy, [0.0, 1.0, 5.0], [-180.0, -90.0, 0.0, 90.0, 180.0])
    d = dense(pix, bins, area, 1, 8)[0]
    np.testing.assert_allclose(d[:4], math.pi / 4, rtol=1e-14)
    np.testing.assert_allclose(d[4:], 1 - math.pi / 4, rtol=1e-13)


def test_seam_halves():
    # eta = +-180 is the -y axis; a square centred on it splits into equal halves in the first and last bins
    cx, cy = squares([0.0], [-20.5])
    pix, bins, area, _ = run(cx, cy, [0.0, 100.0], FULL_ETA)
    assert sorted(bins.tolist()) == [0, 71]
    np.testing.assert_allclose(area, 0.5, rtol=1e-14)


def test_partial_radial_coverage():
    # square straddling r_edges[0] and r_edges[-1]: only the part inside is kept
    cx, cy = squares([0.0], [10.0], h=1.0)
    pix, bins, area, qa = run(cx, cy, [10.0, 10.5], [-90.0, 90.0])
    expect = ref_area(cx[0], cy[0], 10.0, 10.5, -90.0, 90.0)
    assert area.sum() == pytest.approx(expect, rel=1e-9)
    assert area.sum() < 0.6 * qa[0]
    # eta range not covering 360: a pixel across 90 deg keeps only eta < 90
    x0 = -20.0
    cx, cy = squares([x0], [0.3])  # centre at eta ~ 89.1 deg, crossing eta = 90
    pix, bins, area, qa = run(cx, cy, [0.0, 50.0], [0.0, 45.0, 90.0])
    expect = ref_area(cx[0], cy[0], 0.0, 50.0, 0.0, 90.0)
    assert 0.5 < area.sum() < 1.0
    assert area.sum() == pytest.approx(expect, rel=1e-9)


# ----------------------------------------------------------------------------------------------------------
# conservation
# ----------------------------------------------------------------------------------------------------------
def _conserved(cx, cy, r_edges, eta_edges, tol=1e-9):
    pix, bins, area, qa = run(cx, cy, r_edges, eta_edges)
    assert np.all(area > 0)
    s = per_pixel_sum(pix, area, cx.shape[0])
    rel = np.abs(s - qa) / qa
    return rel, pix, bins, area


@pytest.mark.parametrize("eta_edges", [FULL_ETA, grid(-200.0, 160.0, 7.5),
                                       grid(0.0, 360.0, 1.0),
                                       np.sort(np.r_[-180.0, 180.0, np.random.default_rng(5).uniform(-180, 180, 40)])])
def test_conservation_random_quads(eta_edges):
    rng = np.random.default_rng(1234)
    parts = [random_quads(rng, 3000, 30.0), random_quads(rng, 1000, 3.0), random_quads(rng, 3000, 30.0, convex=False),
             random_quads(rng, 500, 600.0)]
    cx = np.concatenate([p[0] for p in parts])
    cy = np.concatenate([p[1] for p in parts])
    r = np.sqrt(cx ** 2 + cy ** 2)
    keep = (r.max(axis=1) < 640.0) & is_simple(cx, cy)
    assert (~is_convex(cx, cy)[keep]).sum() > 150  # non-convex (but simple) quads are in the mix
    cx, cy = cx[keep], cy[keep]
    r_edges = np.r_[0.0, np.cumsum(rng.uniform(0.05, 3.0, 500))]  # non-uniform, first edge 0
    assert r_edges[-1] > 650
    rel, *_ = _conserved(cx, cy, r_edges, eta_edges)
    assert rel.max() < 1e-9, rel.max()


def test_conservation_origin_and_seam():
    # pixels containing / touching the origin, and straddling the -y axis (eta = +-180)
    xs = np.r_[np.linspace(-1.2, 1.2, 25), np.zeros(5), np.linspace(-0.5, 0.5, 11)]
    ys = np.r_[np.linspace(-0.9, 1.1, 25), np.linspace(-3, 3, 5), np.full(11, -7.3)]
    cx, cy = squares(xs, ys, h=0.5)
    for eta in (FULL_ETA, grid(-180.0, 180.0, 0.1), grid(-275.0, 85.0, 10.0)):
        rel, *_ = _conserved(cx, cy, np.arange(0.0, 12.0, 0.05), eta)
        assert rel.max() < 1e-12, rel.max()
    # a square whose corner is exactly the origin
    cx = np.array([[0.0, 1.0, 1.0, 0.0], [0.0, -1.0, -1.0, 0.0]])
    cy = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, -1.0, -1.0]])
    rel, pix, bins, area = _conserved(cx, cy, [0.0, 0.5, 1.0, 2.0], FULL_ETA)
    assert rel.max() < 1e-13


def test_conservation_edges_on_bin_edges():
    # unit squares with half-integer corners on a grid centred on the origin: pixel edges lie on the rays
    # eta = 0, +-90, 180 and corners on circles (e.g. 3-4-5); integer radial edges
    g = np.arange(-40, 41, dtype=float) + 0.5
    X, Y = np.meshgrid(g, g)
    cx, cy = squares(X.ravel(), Y.ravel())
    rel, pix, bins, area = _conserved(cx, cy, np.arange(0.0, 60.0, 1.0), FULL_ETA)
    assert rel.max() < 1e-12
    # the same with the first radial edge exactly at a corner radius: partial pixels are excluded exactly
    cx2, cy2 = squares([3.5], [4.5])  # corners (3,4) at r = 5
    pix, bins, area, qa = run(cx2, cy2, [5.0, 10.0], FULL_ETA)
    assert area.sum() == pytest.approx(1.0, rel=1e-13)
    # integer centres (edges at half-integers), 2048-detector-like layout, r step 1, eta step 5
    g = np.arange(-30, 31, dtype=float)
    X, Y = np.meshgrid(g, g)
    cx, cy = squares(X.ravel(), Y.ravel())
    rel, *_ = _conserved(cx, cy, np.arange(0.0, 50.0, 1.0), FULL_ETA)
    assert rel.max() < 1e-12


def test_conservation_far_pixels_large_r():
    # far from the origin (R ~ 1e3) with bins much smaller than the pixel
    rng = np.random.default_rng(7)
    cx, cy = random_quads(rng, 400, 900.0, size=(0.8, 1.2))
    rel, *_ = _conserved(cx, cy, np.arange(0.0, 1400.0, 0.25), grid(-180.0, 180.0, 0.05))
    assert rel.max() < 1e-11, rel.max()


def test_small_bins_at_small_r():
    # RBinSize 0.05, EtaBinSize 0.1 deg near the centre: bins far smaller than the pixel
    cx, cy = squares([0.7, -2.1, 0.0, 3.3], [1.9, -0.4, 2.5, -3.3])
    r = np.arange(0.0, 8.0, 0.05)
    eta = grid(-180.0, 180.0, 0.1)
    rel, pix, bins, area = _conserved(cx, cy, r, eta)
    assert rel.max() < 1e-12
    assert np.bincount(pix).min() > 20  # really split into many bins


def test_slivers_kept():
    # a square poking 1e-7 past the ray eta = 0 (+y axis): the sliver 1e-7 * 1 is kept exactly
    eps = 1e-7
    cx = np.array([[-1.0 + eps - 1.0, eps, eps, -1.0 + eps - 1.0]]) * 1.0
    cx = np.array([[-1.0 + eps, eps, eps, -1.0 + eps]])
    cy = np.array([[10.0, 10.0, 11.0, 11.0]])
    pix, bins, area, qa = run(cx, cy, [0.0, 100.0], [-90.0, 0.0, 90.0])
    d = dense(pix, bins, area, 1, 2)[0]
    assert d[0] == pytest.approx(eps, rel=1e-8)
    assert d.sum() == pytest.approx(1.0, rel=1e-14)
    # radial sliver of ~2e-13 px^2: a tiny square whose top edge pokes 1e-9 past the circle r = 20
    w, R, dlt = 1e-4, 20.0, 1e-9
    cx, cy = squares([0.0], [R + dlt - w], h=w)
    pix, bins, area, qa = run(cx, cy, [0.0, R, 30.0], [-90.0, 90.0])
    d = dense(pix, bins, area, 1, 2)[0]
    expect = 2 * w * dlt + w ** 3 / (3 * R) + w ** 5 / (20 * R ** 3)  # series of the circular segment
    assert 1e-13 < d[1] < 1e-12
    assert d[1] == pytest.approx(expect, rel=1e-4)
    assert d.sum() == pytest.approx(qa[0], rel=1e-12)
    # a 1e-14 px² sliver across the ray eta = 0 at r ~ 100 is below the rounding of the coordinates there
    # (eps·r ~ 2e-14 px): it is dropped as noise, and the pixel still conserves its area
    cx = np.array([[-1.0 + 1e-14, 1e-14, 1e-14, -1.0 + 1e-14]])
    cy = np.array([[100.0, 100.0, 101.0, 101.0]])
    pix, bins, area, qa = run(cx, cy, [0.0, 200.0], [-90.0, 0.0, 90.0])
    d = dense(pix, bins, area, 1, 2)[0]
    assert d[0] == 0.0
    assert d.sum() == pytest.approx(1.0, rel=1e-13)


# ----------------------------------------------------------------------------------------------------------
# exactness against the independent reference
# ----------------------------------------------------------------------------------------------------------
def test_against_reference_random():
    rng = np.random.default_rng(99)
    cx, cy = random_quads(rng, 400, 8.0, size=(0.5, 2.5))
    cx, cy = cx[is_convex(cx, cy)][:40], cy[is_convex(cx, cy)][:40]
    r_edges = np.r_[0.0, np.cumsum(rng.uniform(0.2, 1.5, 15))]
    eta = grid(-180.0, 180.0, 22.5)
    pix, bins, area, qa = run(cx, cy, r_edges, eta)
    n_eta = len(eta) - 1
    d = dense(pix, bins, area, len(cx), (len(r_edges) - 1) * n_eta)
    checked = 0
    for p in range(len(cx)):
        nz = np.nonzero(d[p])[0]
        # also check a zero neighbour bin
        cand = list(nz[:3]) + [int(nz[-1]) + 1] if nz[-1] + 1 < d.shape[1] else list(nz[:3])
        for b in cand:
            i, j = divmod(int(b), n_eta)
            ref = ref_area(cx[p], cy[p], r_edges[i], r_edges[i + 1], eta[j], eta[j + 1])
            assert abs(d[p, b] - ref) <= 1e-6 * qa[p] + 1e-9 * ref, (p, b, d[p, b], ref)
            checked += 1
    assert checked > 80


def test_against_reference_far_and_tilted():
    # tilted-detector-like corners: slightly non-square pixels far from the centre
    rng = np.random.default_rng(3)
    cx, cy = random_quads(rng, 30, 500.0, size=(0.9, 1.1))
    r_edges = np.arange(0.0, 800.0, 0.3)
    eta = grid(-180.0, 180.0, 0.2)
    pix, bins, area, qa = run(cx, cy, r_edges, eta)
    for p in range(0, 30, 3):
        m = pix == p
        for b, a in list(zip(bins[m], area[m], strict=False))[:6]:
            i, j = divmod(int(b), len(eta) - 1)
            ref = ref_area(cx[p], cy[p], r_edges[i], r_edges[i + 1], eta[j], eta[j + 1])
            assert abs(a - ref) <= 1e-6 * max(ref, 1e-3), (p, b, a, ref)

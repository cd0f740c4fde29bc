"""Pixel edges on a ray through the beam centre: not mistaken for pixels that contain the centre.

With a half-integer beam centre every pixel edge on the centre's row or column maps onto a ray through the origin
of the corrected plane; its cross product comes out as rounding (±1e-12) instead of 0. Taking such a pixel as
containing the origin makes every radial bin from 0 outward a candidate and keeps their rounding noise as areas.
"""

from __future__ import annotations

import numpy as np

from ringstream.geometry import DetectorGeometry, build_map
from ringstream.geometry.splitting import split_pixels
from ringstream.params import parse_params

FULL_ETA = np.linspace(-180.0, 180.0, 73)

# 64² detector, half-integer centre, the three tilts of the 2048² case in which the defect was found
PARAMS = """NrPixels 64
Lsd 1000000
px 200
BC 31.5 31.5
tx 0.3
ty 0.2
tz 0.1
RMin 0
RMax 45
RBinSize 1
EtaBinSize 5
"""
# map records with the defect: 17,571 (2,308 of them areas below 1e-12 px²)
RECORDS = 15263
# lineout of frame() through the map built by the splitting with the defect (it differs only by noise records)
LINEOUT_BEFORE = np.array([
    579.8665286281617, 536.276416745971, 538.5837512580092, 519.6859112926433, 417.031508280911,
    557.3124486554001, 474.6785607149694, 475.00034975714084, 503.7828906880199, 451.00555858679303,
    483.55926581218586, 480.7724095108862, 529.1502842347787, 519.1467681567694, 467.7219512679705,
    494.5258201880637, 486.463606146555, 474.2342639248072, 480.7125064441898, 515.8525113496701,
    520.1355772723589, 501.1843876411497, 549.4940602743795, 479.4068296854892, 472.13756368475845,
    479.2077422067871, 489.2998522652174, 490.628673427784, 507.9847071435328, 498.358321880934,
    502.38193192238606, 531.925237680732, 509.0503704233065, 496.5442542834956, 544.0696786873406,
    545.5245470374024, 523.9043084002958, 532.1497043922441, 547.0102111914358, 461.08821299690106,
    453.5696370227812, 548.8387622999263, 491.90618426139014, 641.3570827490026, 653.6827166457884,
])


def frame(shape):
    return np.random.default_rng(13).random(shape) * 1000


def shoelace(cx, cy):
    return 0.5 * np.abs(np.sum(cx * np.roll(cy, -1, axis=1) - np.roll(cx, -1, axis=1) * cy, axis=1))


def test_edge_on_a_ray_does_not_make_the_pixel_contain_the_origin():
    # unit squares with their edge a -> b on the ray at angle phi, from r = 5 to r = 6 (cross(a, b) is rounding)
    phi = np.random.default_rng(3).uniform(-np.pi, np.pi, 200)
    u = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    n = np.stack([-u[:, 1], u[:, 0]], axis=1)
    corners = np.stack([5 * u, 6 * u, 6 * u + n, 5 * u + n], axis=1)
    cx, cy = np.ascontiguousarray(corners[..., 0]), np.ascontiguousarray(corners[..., 1])
    r_edges = np.arange(0.0, 8.01, 0.25)
    pix, bins, area, quad = split_pixels(cx, cy, r_edges, FULL_ETA, np.arange(200, dtype=np.int64))
    assert np.all(bins // 72 >= 20)  # nothing below r = 5, the pixels' smallest radius
    per_pixel = np.bincount(pix, weights=area, minlength=200)
    assert np.max(np.abs(per_pixel / quad - 1)) < 1e-12
    assert area.min() > 1e-12


def test_half_integer_centre_with_tilts_pins_the_map():
    p = parse_params(PARAMS)
    imap = build_map(p)
    assert imap.areas.nnz == RECORDS
    assert imap.areas.data.min() > 1e-12  # no rounding noise kept

    cx, cy = DetectorGeometry.from_params(p).pixel_corners()
    r = np.hypot(cx, cy)
    inside = r.max(axis=1) < imap.r_edges[-1]  # pixels wholly inside the radial range
    per_pixel = np.asarray(imap.areas.sum(axis=0)).ravel()
    assert np.max(np.abs(per_pixel[inside] / shoelace(cx, cy)[inside] - 1)) < 1e-9

    # the pixels along the centre's row and column get the radial bins they cover, not all from 0
    per_pixel_records = np.bincount(imap.areas.indices, minlength=64 * 64)
    r_min = r.min(axis=1)
    r_max = r.max(axis=1)
    n_radial = np.ceil(np.minimum(r_max, 45.0)) - np.floor(r_min) + 1
    eta = np.degrees(np.arctan2(-cx, cy))
    extent = np.ptp((eta - eta[:, :1] + 180.0) % 360.0, axis=1)  # corners' η spread, seam-safe off the centre
    n_eta = np.ceil(extent / 5.0) + 1
    far = r_min > 2.0
    assert np.all(per_pixel_records[far] <= (n_radial * n_eta)[far])

    s = (imap.weights @ frame(p.shape).ravel()).reshape(imap.n_r, imap.n_eta)
    lineout = s.sum(axis=1) / imap.bin_area.sum(axis=1)
    np.testing.assert_allclose(lineout, LINEOUT_BEFORE, rtol=1e-9, atol=0)

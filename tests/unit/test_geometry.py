"""Geometry (docs/MIDAS-FORMATS.md section 2), ImTransOpt, DistortionFile, bins and masks, against direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ringstream.errors import InputError, ParamError
from ringstream.geometry.bins import bin_centres, eta_edges, radial_edges
from ringstream.geometry.detector import DetectorGeometry, polarization
from ringstream.geometry.masks import load_mask
from ringstream.geometry.transforms import (
    apply_transforms,
    raw_index_map,
    transform_vectors,
    transformed_shape,
)
from ringstream.params import parse_params

BASE = {
    "NrPixelsY": 48, "NrPixelsZ": 40, "Lsd": 250000, "BC": "23.4 18.9", "px": 172,
    "RMin": 1, "RMax": 30, "RBinSize": 0.5, "EtaBinSize": 10,
}


def make_params(**kw):
    d = dict(BASE)
    d.update(kw)
    lines = []
    for k, v in d.items():
        if k == "ImTransOpt":
            lines += [f"ImTransOpt {o}" for o in v]
        else:
            lines.append(f"{k} {v}")
    return parse_params("\n".join(lines) + "\n")


# ------------------------------------------------------------------ a direct scalar implementation of section 2
def _matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def scalar_r_eta(y, z, lsd, ycen, zcen, tx, ty, tz, px, rhod, pp, parallax):
    c, s = math.cos(math.radians(tx)), math.sin(math.radians(tx))
    rx = [[1, 0, 0], [0, c, -s], [0, s, c]]
    c, s = math.cos(math.radians(ty)), math.sin(math.radians(ty))
    ry = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    c, s = math.cos(math.radians(tz)), math.sin(math.radians(tz))
    rz = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    t = _matmul(_matmul(rx, ry), rz)
    y0 = (ycen - y) * px
    z0 = (z - zcen) * px
    v = [t[i][1] * y0 + t[i][2] * z0 for i in range(3)]
    xx, yy, zz = lsd + v[0], v[1], v[2]
    rad = lsd * math.sqrt(yy * yy + zz * zz) / xx
    eta = math.degrees(math.atan2(-yy, zz))
    rho = rad / rhod
    psi = math.radians(90.0 - eta)
    p = pp

    def cs(k, ph):
        return math.cos(k * psi + math.radians(ph))

    d = (p[0] * rho**2 * cs(2, p[6]) + p[1] * rho**4 * cs(4, p[3]) + p[2] * rho**2 + p[4] * rho**6
         + p[5] * rho**4 + p[7] * rho**4 * cs(1, p[8]) + p[9] * rho**3 * cs(3, p[10])
         + p[11] * rho**5 * cs(5, p[12]) + p[13] * rho**6 * cs(6, p[14]))
    r = rad * (1 + d)
    r += parallax * math.sin(math.atan(r / lsd))
    return r / px, eta


P15 = (0.013, -0.021, 0.034, 17.0, 0.011, -0.007, 33.0, 0.019, 41.0, -0.015, 12.0, 0.009, -70.0, 0.006, 5.0)


@pytest.mark.parametrize("tilts", [(0, 0, 0), (0.7, 0, 0), (0, 3.1, 0), (0, 0, -4.2), (1.3, -2.9, 4.8)])
@pytest.mark.parametrize("pp,parallax", [((0.0,) * 15, 0.0), (P15, 0.0), ((0.0,) * 15, 300.0), (P15, 450.0)])
def test_r_eta_matches_scalar_section2(tilts, pp, parallax):
    g = DetectorGeometry(lsd=250000.0, bc=(23.4, 18.9), tilts=tilts, px=172.0, shape=(40, 48), rhod=5000.0,
                         p=pp, parallax=parallax)
    rng = np.random.default_rng(1)
    y = rng.uniform(-5, 53, 200)
    z = rng.uniform(-5, 45, 200)
    r, eta = g.r_eta(y, z)
    for k in range(y.size):
        rr, ee = scalar_r_eta(y[k], z[k], 250000.0, 23.4, 18.9, *tilts, 172.0, 5000.0, pp, parallax)
        assert r[k] == pytest.approx(rr, rel=1e-12, abs=1e-12)
        assert eta[k] == pytest.approx(ee, abs=1e-10)


def test_untilted_radius_and_eta_directions():
    g = DetectorGeometry(lsd=1e6, bc=(10.0, 20.0), tilts=(0, 0, 0), px=200.0, shape=(40, 40))
    r, eta = g.r_eta(np.array([13.0, 10.0, 7.0, 10.0]), np.array([24.0, 25.0, 20.0, 15.0]))
    assert np.allclose(r, [5.0, 5.0, 3.0, 5.0], rtol=0, atol=1e-12)
    # η: 0 toward +Z (larger row), +90 toward larger column, 180 (not -180) toward smaller row
    _, e = g.r_eta(np.array([10.0, 15.0, 10.0, 5.0]), np.array([25.0, 20.0, 15.0, 20.0]))
    assert np.allclose(e, [0.0, 90.0, 180.0, -90.0], atol=1e-12)
    assert g.two_theta_deg(np.array([5.0]))[0] == pytest.approx(math.degrees(math.atan(5 * 200 / 1e6)), rel=1e-14)


def test_distortion_terms_individually():
    # p2 alone: isotropic, R = R0·(1 + p2·ρ²); p0 alone with phase p6: cos(2ψ + p6)
    g = DetectorGeometry(lsd=1e6, bc=(0.0, 0.0), tilts=(0, 0, 0), px=100.0, shape=(10, 10), rhod=1e4,
                         p=(0, 0, 0.05) + (0,) * 12)
    r, _ = g.r_eta(np.array([-30.0]), np.array([40.0]))
    rad = 50 * 100.0
    assert r[0] == pytest.approx(rad * (1 + 0.05 * (rad / 1e4) ** 2) / 100.0, rel=1e-14)
    pp = [0.0] * 15
    pp[0], pp[6] = 0.1, 30.0
    g = DetectorGeometry(lsd=1e6, bc=(0.0, 0.0), tilts=(0, 0, 0), px=100.0, shape=(10, 10), rhod=1e4, p=pp)
    r, eta = g.r_eta(np.array([-30.0]), np.array([40.0]))
    psi = math.radians(90 - eta[0])
    assert r[0] == pytest.approx(50 * (1 + 0.1 * 0.25 * math.cos(2 * psi + math.radians(30))), rel=1e-14)


def test_parallax_term():
    g0 = DetectorGeometry(lsd=2e5, bc=(0.0, 0.0), tilts=(0, 0, 0), px=100.0, shape=(10, 10))
    g1 = DetectorGeometry(lsd=2e5, bc=(0.0, 0.0), tilts=(0, 0, 0), px=100.0, shape=(10, 10), parallax=500.0)
    y, z = np.array([-300.0]), np.array([400.0])
    r0, _ = g0.r_eta(y, z)
    r1, _ = g1.r_eta(y, z)
    assert r1[0] - r0[0] == pytest.approx(500.0 * math.sin(math.atan(500 * 100 / 2e5)) / 100.0, rel=1e-12)


def test_tilt_about_beam_only_rotates_eta():
    g0 = DetectorGeometry(lsd=1e6, bc=(20.0, 20.0), tilts=(0, 0, 0), px=200.0, shape=(40, 40))
    g1 = DetectorGeometry(lsd=1e6, bc=(20.0, 20.0), tilts=(12.0, 0, 0), px=200.0, shape=(40, 40))
    y, z = np.array([3.0, 31.0, 17.5]), np.array([8.0, 25.0, 39.0])
    r0, e0 = g0.r_eta(y, z)
    r1, e1 = g1.r_eta(y, z)
    assert np.allclose(r0, r1, rtol=1e-13)
    # with T = Rx(tx) (docs/MIDAS-FORMATS.md section 2) the rotated point is yy = c·y0 − s·z0, zz = s·y0 + c·z0, so
    # zz − i·yy = (c + i·s)(z0 − i·y0) = e^(i·tx)(z0 − i·y0): η = atan2(−yy, zz) grows by exactly +tx
    np.testing.assert_allclose(((e1 - e0 + 180) % 360) - 180, 12.0, rtol=0, atol=1e-10)


def test_solid_angle_and_polarization():
    g = DetectorGeometry(lsd=1e5, bc=(20.0, 20.0), tilts=(0, 0, 0), px=200.0, shape=(40, 40))
    y, z = np.array([20.0, 0.0, 35.0]), np.array([20.0, 3.0, 39.0])
    r, eta = g.r_eta(y, z)
    tth = np.radians(g.two_theta_deg(r))
    assert np.allclose(g.solid_angle(y, z), np.cos(tth) ** 3, rtol=1e-13)
    # tilted: SA is 1 where the detector normal meets it, and (n·P/|P|)³ elsewhere
    gt = DetectorGeometry(lsd=1e5, bc=(20.0, 20.0), tilts=(2.0, 4.0, -3.0), px=200.0, shape=(40, 40))
    n = gt.rot[:, 0]
    ys, zs = np.array([5.0, 33.0]), np.array([12.0, 2.0])
    xl, yl, zl = gt._lab(ys, zs)
    pvec = np.stack([xl, yl, zl], axis=1)
    expect = (pvec @ n / np.linalg.norm(pvec, axis=1)) ** 3
    assert np.allclose(gt.solid_angle(ys, zs), expect, rtol=1e-13)
    assert np.all(gt.solid_angle(ys, zs) < 1)
    assert polarization(np.array([30.0]), np.array([60.0]), 0.9)[0] == pytest.approx(
        1 - 0.9 * math.sin(math.radians(30)) ** 2 * math.cos(math.radians(60)) ** 2, rel=1e-15)


def test_q_and_two_theta():
    g = DetectorGeometry(lsd=1e6, bc=(0, 0), tilts=(0, 0, 0), px=200.0, shape=(4, 4), wavelength=0.2)
    r = np.array([100.0, 500.0])
    tth = np.radians(g.two_theta_deg(r))
    assert np.allclose(g.q_inv_angstrom(r), 4 * np.pi / 0.2 * np.sin(tth / 2), rtol=1e-15)
    g0 = DetectorGeometry(lsd=1e6, bc=(0, 0), tilts=(0, 0, 0), px=200.0, shape=(4, 4))
    assert np.all(np.isnan(g0.q_inv_angstrom(r)))


# ------------------------------------------------------------------ ImTransOpt
@pytest.mark.parametrize("opts", [(), (0,), (1,), (2,), (3,), (1, 2), (3, 1), (1, 3), (2, 3, 1), (3, 3), (1, 0, 2)])
def test_raw_index_map_and_apply_transforms(opts):
    n = 6
    img = np.arange(n * n, dtype=np.float64).reshape(n, n) * 1.5
    expect = img
    for o in opts:
        expect = {0: lambda a: a, 1: lambda a: a[:, ::-1], 2: lambda a: a[::-1, :], 3: lambda a: a.T}[o](expect)
    t = raw_index_map(n, n, opts)
    assert t.dtype == np.int64
    assert np.array_equal(apply_transforms(img, opts), expect)
    assert np.array_equal(img.ravel()[t], expect)
    assert np.array_equal(np.sort(t.ravel()), np.arange(n * n))


def test_flips_on_non_square_and_transpose_refused():
    img = np.arange(12).reshape(3, 4)
    assert np.array_equal(apply_transforms(img, (1,)), img[:, ::-1])
    assert np.array_equal(img.ravel()[raw_index_map(3, 4, (2, 1))], img[::-1, ::-1])
    assert transformed_shape(3, 4, (1, 2)) == (3, 4)
    with pytest.raises(ParamError, match="square"):
        raw_index_map(3, 4, (3,))
    with pytest.raises(ParamError, match="unknown"):
        raw_index_map(3, 3, (4,))


def test_transform_vectors():
    dy, dz = np.array([1.0, 2.0]), np.array([10.0, 20.0])
    assert [a.tolist() for a in transform_vectors(dy, dz, (1,))] == [[-1, -2], [10, 20]]
    assert [a.tolist() for a in transform_vectors(dy, dz, (2,))] == [[1, 2], [-10, -20]]
    assert [a.tolist() for a in transform_vectors(dy, dz, (3,))] == [[10, 20], [1, 2]]
    # in file order: flip Y, then transpose -> (dz, -dy)
    assert [a.tolist() for a in transform_vectors(dy, dz, (1, 3))] == [[10, 20], [-1, -2]]
    assert [a.tolist() for a in transform_vectors(dy, dz, (3, 1))] == [[-10, -20], [1, 2]]


def test_transform_vectors_is_consistent_with_moving_points():
    """A displacement applied in the raw frame, then transformed, equals the transformed displacement."""
    n = 9
    for opts in [(1,), (2,), (3,), (1, 3), (3, 2), (2, 1, 3)]:
        t = raw_index_map(n, n, opts)
        # a raw pixel (z, y) sits at transformed (zt, yt) with t[zt, yt] = z*n + y: the map of coordinates is affine
        zt_of_raw = np.empty(n * n)
        yt_of_raw = np.empty(n * n)
        zt_of_raw[t.ravel()] = np.repeat(np.arange(n), n)
        yt_of_raw[t.ravel()] = np.tile(np.arange(n), n)
        # moving the raw point by (ΔY, ΔZ) = (1, 0) moves the transformed point by transform_vectors(1, 0)
        p0 = 4 * n + 4
        py = 4 * n + 5  # raw neighbour at y + 1
        pz = 5 * n + 4  # raw neighbour at z + 1
        dyt, dzt = transform_vectors(np.array(1.0), np.array(0.0), opts)
        assert (yt_of_raw[py] - yt_of_raw[p0], zt_of_raw[py] - zt_of_raw[p0]) == (dyt, dzt)
        dyt, dzt = transform_vectors(np.array(0.0), np.array(1.0), opts)
        assert (yt_of_raw[pz] - yt_of_raw[p0], zt_of_raw[pz] - zt_of_raw[p0]) == (dyt, dzt)


# ------------------------------------------------------------------ DistortionFile
def _write_dist(path, dy, dz):
    np.concatenate([dy.ravel(), dz.ravel()]).astype("<f8").tofile(path)


def test_distortion_file_moves_centres_and_corners(tmp_path):
    nz, ny = 40, 48
    rng = np.random.default_rng(3)
    dy = rng.uniform(-0.4, 0.4, (nz, ny))
    dz = rng.uniform(-0.4, 0.4, (nz, ny))
    f = tmp_path / "dist.bin"
    _write_dist(f, dy, dz)
    p = make_params(DistortionFile=f, ty=2.0, tz=-1.0)
    g = DetectorGeometry.from_params(p)
    assert np.array_equal(g.dy, dy) and np.array_equal(g.dz, dz)
    y, z = g.pixel_centres()
    zz, yy = np.divmod(np.arange(nz * ny), ny)
    assert np.allclose(y, yy + dy.ravel(), rtol=0, atol=1e-15)
    assert np.allclose(z, zz + dz.ravel(), rtol=0, atol=1e-15)
    cx, cy = g.pixel_corners()
    k = 7 * ny + 11
    for c, (oy, oz) in enumerate([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]):
        r, eta = g.r_eta(np.array(11 + oy + dy[7, 11]), np.array(7 + oz + dz[7, 11]))
        assert cx[k, c] == pytest.approx(-r * math.sin(math.radians(eta)), abs=1e-12)
        assert cy[k, c] == pytest.approx(r * math.cos(math.radians(eta)), abs=1e-12)


def test_distortion_file_with_transform(tmp_path):
    nz, ny = 40, 48
    dy = np.zeros((nz, ny))
    dz = np.zeros((nz, ny))
    dy[5, 7], dz[5, 7] = 0.25, -0.125
    f = tmp_path / "dist.bin"
    _write_dist(f, dy, dz)
    g = DetectorGeometry.from_params(make_params(DistortionFile=f, ImTransOpt=(1, 2)))
    y, z = g.pixel_centres()
    # raw (5, 7) is transformed (nz-1-5, ny-1-7), and both components flip
    assert y[5 * ny + 7] == ny - 1 - 7 - 0.25
    assert z[5 * ny + 7] == nz - 1 - 5 + 0.125


def test_distortion_file_bad_size(tmp_path):
    f = tmp_path / "short.bin"
    np.zeros(100, dtype="<f8").tofile(f)
    with pytest.raises(InputError) as e:
        DetectorGeometry.from_params(make_params(DistortionFile=f))
    msg = str(e.value)
    assert "short.bin" in msg and "800 bytes" in msg and str(2 * 40 * 48 * 8) in msg
    with pytest.raises(InputError, match="missing.bin"):
        DetectorGeometry.from_params(make_params(DistortionFile=tmp_path / "missing.bin"))


def test_pixel_corners_grid_matches_direct():
    p = make_params(ty=3.0, tz=1.5, tx=-2.0, RhoD=5000, p0=0.01, p6=20, p2=0.02, ImTransOpt=(2, 1))
    g = DetectorGeometry.from_params(p)
    cx, cy = g.pixel_corners()
    t = g.raw_index_map()
    for zt, yt in [(0, 0), (13, 29), (39, 47)]:
        k = t[zt, yt]
        for c, (oy, oz) in enumerate([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]):
            r, eta = g.r_eta(np.array(yt + oy), np.array(zt + oz))
            assert cx[k, c] == pytest.approx(-r * math.sin(math.radians(eta)), abs=1e-12)
            assert cy[k, c] == pytest.approx(r * math.cos(math.radians(eta)), abs=1e-12)


# ------------------------------------------------------------------ bins
def test_radial_and_eta_edges():
    p = make_params(RMin=10, RMax=10.7, RBinSize=0.1, EtaMin=-180, EtaMax=180, EtaBinSize=7)
    r = radial_edges(p)
    assert len(r) == 8 and r[0] == 10 and r[-1] == pytest.approx(10.7)
    e = eta_edges(p)
    assert len(e) == 53 and e[-1] == pytest.approx(184.0)  # ceil(360/7) = 52 bins
    g = DetectorGeometry.from_params(p)
    rc, tth, q, eta = bin_centres(p, g)
    assert np.allclose(rc, r[:-1] + 0.05) and np.all(np.isnan(q))
    assert np.allclose(tth, np.degrees(np.arctan(rc * 172 / 250000)))
    assert np.allclose(eta, e[:-1] + 3.5)


def test_q_mode_edges():
    p = make_params(QMin=0.5, QMax=2.0, QBinSize=0.05, Wavelength=0.3)
    assert p.q_mode
    r = radial_edges(p)
    assert len(r) == 31
    qe = 0.5 + 0.05 * np.arange(31)
    assert np.allclose(r, 250000 / 172 * np.tan(2 * np.arcsin(qe * 0.3 / (4 * np.pi))), rtol=1e-14)
    g = DetectorGeometry.from_params(p)
    rc, tth, q, _ = bin_centres(p, g)
    assert np.allclose(q, qe[:-1] + 0.025, rtol=1e-14)
    assert np.allclose(g.q_inv_angstrom(rc), q, rtol=1e-12)  # centres are Q midpoints mapped to R
    assert np.all(np.diff(r) > 0)


# ------------------------------------------------------------------ masks
def test_masks_files_and_panel_gaps(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    nz, ny = 40, 48
    m = np.zeros((nz, ny), dtype=np.uint8)
    m[3, 4] = 1
    m[10, 11] = 2  # anything other than 1 is valid
    tifffile.imwrite(tmp_path / "mask.tif", m)
    b = np.zeros((nz, ny), dtype=np.uint8)
    b[0, 0] = 1
    tifffile.imwrite(tmp_path / "bad.tif", b)
    p = make_params(MaskFile=tmp_path / "mask.tif", BadPxFile=tmp_path / "bad.tif")
    mask = load_mask(p)
    assert mask.dtype == bool and mask.shape == (nz, ny)
    assert set(zip(*np.nonzero(mask), strict=True)) == {(3, 4), (0, 0)}
    # panel gaps, transformed frame: 2 panels of 20 columns, gap 3 -> columns 20, 21, 22 (transformed)
    p = make_params(NPanelsY=2, NPanelsZ=1, PanelSizeY=20, PanelSizeZ=40, PanelGapsY=3, ImTransOpt=(1,))
    mask = load_mask(p)
    cols = np.nonzero(mask.all(axis=0))[0]
    assert mask.sum() == 3 * nz
    assert sorted(cols.tolist()) == sorted(ny - 1 - c for c in (20, 21, 22))  # raw columns after the Y flip


def test_mask_wrong_shape_and_unreadable(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "mask.tif", np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(InputError) as e:
        load_mask(make_params(MaskFile=tmp_path / "mask.tif"))
    assert "mask.tif: shape (10, 12) does not match the detector (NrPixelsZ, NrPixelsY) = (40, 48)" in str(e.value)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="junk.tif"):
        load_mask(make_params(MaskFile=tmp_path / "junk.tif"))

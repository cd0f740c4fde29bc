"""The integration map: conservation, flat response, ring positions, ImTransOpt, masks, Q mode, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.errors import MapError
from ringstream.geometry import DetectorGeometry, IntegrationMap, build_map
from ringstream.geometry.bins import radial_edges
from ringstream.geometry.detector import polarization
from ringstream.geometry.transforms import apply_transforms, raw_index_map, transform_vectors
from ringstream.params import parse_params

tifffile = pytest.importorskip("tifffile")

BASE = {
    "NrPixelsY": 48, "NrPixelsZ": 40, "Lsd": 200000, "BC": "22.3 18.6", "px": 200,
    "RMin": 1, "RMax": 40, "RBinSize": 0.5, "EtaBinSize": 10,
}
DISTORTION = {"RhoD": 6000, "p0": 0.02, "p6": 25, "p1": -0.01, "p3": 10, "p2": 0.015, "p7": 0.01, "p8": 40,
              "p9": 0.008, "p10": 15}


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


def cake_of(imap: IntegrationMap, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lineout [n_r], cake [n_r, n_eta]) as DESIGN.md defines them."""
    s = (imap.weights @ np.asarray(frame, dtype=np.float64).ravel()).reshape(imap.n_r, imap.n_eta)
    a = imap.bin_area
    cake = np.where(a > 1e-9, s / np.where(a > 1e-9, a, 1.0), 0.0)
    ring = a.sum(axis=1)
    line = np.where(ring > 0, (cake * a).sum(axis=1) / np.where(ring > 0, ring, 1.0), 0.0)
    return line, cake


def shoelace(cx, cy):
    return 0.5 * np.abs(np.sum(cx * np.roll(cy, -1, axis=1) - np.roll(cx, -1, axis=1) * cy, axis=1))


def write_dist(path, dy, dz):
    np.concatenate([dy.ravel(), dz.ravel()]).astype("<f8").tofile(path)


def smooth_displacements(nz, ny, amp=0.3):
    z, y = np.mgrid[0:nz, 0:ny].astype(float)
    dy = amp * np.sin(2 * np.pi * z / nz + 0.3) * np.cos(2 * np.pi * y / ny)
    dz = amp * np.cos(2 * np.pi * (y + z) / (ny + nz) + 1.1)
    return dy, dz


# ------------------------------------------------------------------ conservation and flat response
@pytest.mark.parametrize("with_file", [False, True])
def test_each_pixel_conserves_its_area(tmp_path, with_file):
    kw = dict(DISTORTION, tx=1.0, ty=3.0, tz=-2.0, RMin=0, RMax=200, RBinSize=0.37, EtaBinSize=7.5)
    if with_file:
        write_dist(tmp_path / "d.bin", *smooth_displacements(40, 48))
        kw["DistortionFile"] = tmp_path / "d.bin"
    p = make_params(**kw)
    imap = build_map(p)
    cx, cy = DetectorGeometry.from_params(p).pixel_corners()
    quad = shoelace(cx, cy)
    per_pixel = np.asarray(imap.areas.sum(axis=0)).ravel()
    assert np.max(np.abs(per_pixel / quad - 1)) < 1e-9  # every pixel, incl. the one holding the beam centre
    assert imap.areas.has_sorted_indices and imap.weights.has_sorted_indices
    assert np.array_equal(imap.areas.indices, imap.weights.indices)
    assert np.allclose(imap.bin_area.sum(), quad.sum(), rtol=1e-12)


def test_uniform_image_gives_flat_lineout_and_cake():
    p = make_params(**DISTORTION, tx=2.0, ty=-4.0, tz=3.0, RBinSize=0.25, EtaBinSize=5)
    imap = build_map(p)
    line, cake = cake_of(imap, np.full((40, 48), 7.0))
    has = imap.bin_area > 1e-9
    assert has.sum() > 100
    assert np.max(np.abs(cake[has] - 7.0)) < 1e-9 * 7
    ring = imap.bin_area.sum(axis=1) > 0
    assert np.max(np.abs(line[ring] - 7.0)) < 1e-9 * 7


def test_corrections_divide_the_weights():
    p = make_params(ty=4.0, tz=-3.0, SolidAngleCorrection=1, PolarizationCorrection=1, PolarizationFraction=0.95,
                    Lsd=20000)
    imap = build_map(p)
    g = DetectorGeometry.from_params(p)
    y, z = g.pixel_centres()
    r, eta = g.r_eta(y, z)
    factor = g.solid_angle(y, z) * polarization(g.two_theta_deg(r), eta, 0.95)
    assert factor.min() < 0.9  # the corrections matter here
    a = imap.areas.tocoo()
    w = imap.weights.tocoo()
    assert np.array_equal(a.col, w.col) and np.array_equal(a.row, w.row)
    assert np.allclose(w.data, a.data / factor[a.col], rtol=1e-14)
    assert imap.info["corrections"]["SolidAngleCorrection"] is True


# ------------------------------------------------------------------ ring positions
def ring_image(g: DetectorGeometry, radii, sigma, sub=8):
    """Raw frame whose pixels hold the mean, over sub×sub points, of Σ_k exp(-(R - R_k)²/2σ²) of the corrected R."""
    nz, ny = g.shape
    y, z = g.pixel_centres()  # raw-id order, DistortionFile applied
    off = (np.arange(sub) + 0.5) / sub - 0.5
    oy, oz = np.meshgrid(off, off)
    r, _ = g.r_eta(y[:, None] + oy.ravel(), z[:, None] + oz.ravel())
    val = sum(np.exp(-0.5 * ((r - rk) / sigma) ** 2) for rk in radii)
    return val.mean(axis=1).reshape(nz, ny)


@pytest.mark.parametrize("tilts", [(0.0, 0.0, 0.0), (5.0, 3.0, -5.0), (-2.0, -5.0, 4.0)])
def test_sharp_rings_centred_on_analytic_radius(tmp_path, tilts):
    n = 128
    write_dist(tmp_path / "d.bin", *smooth_displacements(n, n, 0.3))
    p = make_params(NrPixelsY=n, NrPixelsZ=n, BC="63.2 64.7", Lsd=100000, px=200,
                    tx=tilts[0], ty=tilts[1], tz=tilts[2], RhoD=12800, p0=0.004, p6=30, p2=0.006, p9=0.003,
                    p10=20, DistortionFile=tmp_path / "d.bin", RMin=10, RMax=62, RBinSize=0.1, EtaBinSize=10)
    g = DetectorGeometry.from_params(p)
    radii = (22.0, 37.3, 52.6)
    sigma = 1.0
    imap = build_map(p)
    line, _ = cake_of(imap, ring_image(g, radii, sigma))
    for rk in radii:
        win = np.abs(imap.r_px - rk) < 5 * sigma
        centroid = np.sum(imap.r_px[win] * line[win]) / np.sum(line[win])
        assert abs(centroid - rk) < 0.02, (rk, centroid)


# ------------------------------------------------------------------ ImTransOpt
@pytest.mark.parametrize("opts", [(1,), (2,), (3,), (1, 2), (1, 3), (3, 2), (2, 3, 1)])
def test_imtransopt_equals_transformed_frame(tmp_path, opts):
    n = 40
    rng = np.random.default_rng(5)
    dy, dz = smooth_displacements(n, n, 0.35)
    mask = (rng.random((n, n)) < 0.05).astype(np.uint8)
    write_dist(tmp_path / "raw.bin", dy, dz)
    tifffile.imwrite(tmp_path / "raw.tif", mask)
    # the same detector described in its transformed frame: maps re-indexed, displacement components transformed
    dyt, dzt = transform_vectors(apply_transforms(dy, opts), apply_transforms(dz, opts), opts)
    write_dist(tmp_path / "t.bin", dyt, dzt)
    tifffile.imwrite(tmp_path / "t.tif", apply_transforms(mask, opts))
    common = dict(DISTORTION, NrPixelsY=n, NrPixelsZ=n, BC="17.3 21.8", tx=1.0, ty=2.5, tz=-3.5, RMin=0.5, RMax=30,
                  RBinSize=0.4, EtaBinSize=15, NPanelsY=2, NPanelsZ=1, PanelSizeY=19, PanelSizeZ=40, PanelGapsY=2,
                  SolidAngleCorrection=1, PolarizationCorrection=1)
    pk = make_params(**common, ImTransOpt=opts, DistortionFile=tmp_path / "raw.bin", MaskFile=tmp_path / "raw.tif")
    p0 = make_params(**common, DistortionFile=tmp_path / "t.bin", MaskFile=tmp_path / "t.tif")
    mk, m0 = build_map(pk), build_map(p0)
    t = raw_index_map(n, n, opts).ravel()
    assert np.array_equal(mk.mask.ravel()[t], m0.mask.ravel())
    frame = rng.random((n, n)) * 1000
    lk, ck = cake_of(mk, frame)
    l0, c0 = cake_of(m0, apply_transforms(frame, opts))
    assert np.max(np.abs(ck - c0)) <= 1e-12 * np.max(np.abs(c0))
    assert np.max(np.abs(lk - l0)) <= 1e-12 * np.max(np.abs(l0))
    assert np.allclose(mk.bin_area, m0.bin_area, rtol=1e-13, atol=1e-15)  # summation order differs
    # column-wise: raw column T[zt, yt] of map k is column (zt, yt) of map 0
    assert abs(mk.weights[:, t] - m0.weights).max() <= 1e-15


# ------------------------------------------------------------------ masks
def test_masked_pixels_are_absent_and_all_others_present(tmp_path):
    rng = np.random.default_rng(11)
    m = (rng.random((40, 48)) < 0.1).astype(np.uint8)
    m[rng.random((40, 48)) < 0.05] = 7  # not 1: valid
    tifffile.imwrite(tmp_path / "m.tif", m)
    p = make_params(ty=2.0, MaskFile=tmp_path / "m.tif", NPanelsY=2, NPanelsZ=2, PanelSizeY=23, PanelSizeZ=19,
                    PanelGapsY=2, PanelGapsZ=2, ImTransOpt=(2,), RMin=3, RMax=20)
    imap = build_map(p)
    masked = set(np.flatnonzero(imap.mask).tolist())
    assert masked >= set(np.flatnonzero(m.ravel() == 1).tolist())
    assert len(masked) > (m == 1).sum()  # the panel gaps too
    cols = set(np.unique(imap.weights.indices).tolist())
    assert not (cols & masked)
    # every unmasked pixel lying entirely inside [RMin, RMax] is in the map
    cx, cy = DetectorGeometry.from_params(p).pixel_corners()
    r = np.hypot(cx, cy)
    inside = set(np.flatnonzero((r.min(axis=1) > 3.5) & (r.max(axis=1) < 19.5)).tolist())
    assert len(inside) > 500
    assert inside - masked <= cols
    assert inside - masked == (inside & cols)
    # and a uniform image still reads flat: masked pixels contribute nothing, bins keep their unmasked mean
    _, cake = cake_of(imap, np.where(imap.mask, 1e6, 3.0))
    assert np.allclose(cake[imap.bin_area > 1e-9], 3.0, rtol=1e-9)


# ------------------------------------------------------------------ Q mode
def test_q_mode_map():
    p = make_params(Lsd=50000, Wavelength=0.5, QMin=0.2, QMax=1.2, QBinSize=0.02, ty=2.0)
    imap = build_map(p)
    assert imap.n_r == 50
    assert np.array_equal(imap.r_edges, radial_edges(p))
    qe = 0.2 + 0.02 * np.arange(51)
    assert np.allclose(imap.q, 0.5 * (qe[1:] + qe[:-1]), rtol=1e-14)
    assert np.allclose(imap.q, 4 * np.pi / 0.5 * np.sin(np.radians(imap.two_theta) / 2), rtol=1e-12)
    # an image holding each pixel's Q reads back ~ the bin's Q
    g = DetectorGeometry.from_params(p)
    y, z = g.pixel_centres()
    qpix = g.q_inv_angstrom(g.r_eta(y, z)[0]).reshape(40, 48)
    line, _ = cake_of(imap, qpix)
    ok = imap.bin_area.sum(axis=1) > 5
    assert ok.sum() > 20
    assert np.max(np.abs(line[ok] - imap.q[ok])) < 0.02


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("corrections", [0, 1])
def test_save_load_round_trip(tmp_path, corrections):
    p = make_params(ty=1.5, SolidAngleCorrection=corrections, Wavelength=0.2)
    imap = build_map(p)
    path = tmp_path / "map.tmp"  # no suffix added
    imap.save(path)
    assert path.is_file()
    back = IntegrationMap.load(path)
    assert back.shape == imap.shape and (back.n_r, back.n_eta) == (imap.n_r, imap.n_eta)
    for name in ("weights", "areas"):
        a, b = getattr(imap, name), getattr(back, name)
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.data, b.data)
    for name in ("bin_area", "r_edges", "eta_edges", "r_px", "two_theta", "q", "eta", "mask"):
        assert np.array_equal(getattr(imap, name), getattr(back, name), equal_nan=name != "mask"), name
    assert back.key == imap.key and back.build_seconds == imap.build_seconds and back.info == imap.info
    assert back.mask.dtype == bool


def test_key_is_the_cache_key():
    cache = pytest.importorskip("ringstream.geometry.cache")
    p = make_params(ty=1.0)
    assert build_map(p).key == cache.map_cache_key(p)


def test_load_refuses_corrupt_or_foreign_files(tmp_path):
    imap = build_map(make_params())
    good = tmp_path / "good.npz"
    imap.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage" * 100)
    np.savez(tmp_path / "foreign.npz", a=np.arange(3))
    for name in ("trunc.npz", "junk.npz", "foreign.npz", "missing.npz"):
        with pytest.raises(MapError, match=name):
            IntegrationMap.load(tmp_path / name)

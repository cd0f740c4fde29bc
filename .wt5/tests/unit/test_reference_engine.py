"""The reference engine: dtypes, dark, batches, hand-checked numbers, the lineout definition, errors, conservation."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from ringstream.engines import Engine, ReferenceEngine, create_engine
from ringstream.errors import ConfigError, InputError


def _fake_map(weights, areas, bin_area, shape, n_r, n_eta):
    """An IntegrationMap-like object with the attributes an engine reads."""
    return SimpleNamespace(
        shape=shape,
        n_r=n_r,
        n_eta=n_eta,
        weights=sp.csr_matrix(weights),
        areas=sp.csr_matrix(areas),
        bin_area=np.asarray(bin_area, dtype=np.float64).reshape(n_r, n_eta),
    )


def _random_map(rng, shape=(6, 5), n_r=4, n_eta=3, density=0.4, correction=True):
    """Small random CSR map: areas in [0, 1), weights = areas / random correction, one empty bin."""
    n_pix, n_bins = shape[0] * shape[1], n_r * n_eta
    areas = sp.random(n_bins, n_pix, density=density, random_state=rng, format="csr")
    areas = areas.tolil()
    areas[n_bins - 1, :] = 0.0  # one empty bin
    areas = areas.tocsr()
    areas.eliminate_zeros()
    corr = rng.uniform(0.7, 1.0, n_pix) if correction else np.ones(n_pix)
    weights = areas @ sp.diags(1.0 / corr)
    bin_area = np.asarray(areas.sum(axis=1)).ravel()
    return _fake_map(weights, areas, bin_area, shape, n_r, n_eta)


# ------------------------------------------------------------------------------------------- hand-checked numbers
def test_hand_checked_tiny_map():
    # 1 x 3 detector, pixels p0, p1, p2; 2 rings x 2 eta bins
    #   bin 0 (r0,e0): p0 area 1.0, p1 area 0.5      -> A = 1.5
    #   bin 1 (r0,e1): p1 area 0.5                   -> A = 0.5
    #   bin 2 (r1,e0): p2 area 0.25                  -> A = 0.25
    #   bin 3 (r1,e1): empty                         -> A = 0
    # weights = area (no corrections) except p2 halved by a correction of 2 -> weight 0.125
    areas = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25], [0.0, 0.0, 0.0]])
    weights = areas.copy()
    weights[2, 2] = 0.125
    imap = _fake_map(weights, areas, [1.5, 0.5, 0.25, 0.0], (1, 3), 2, 2)
    eng = ReferenceEngine(imap)
    frame = np.array([[10.0, 20.0, 40.0]])
    lineout, cake = eng.integrate(frame)
    # bin 0: (1*10 + 0.5*20) / 1.5 = 40/3; bin 1: 0.5*20 / 0.5 = 20; bin 2: 0.125*40 / 0.25 = 20; bin 3: 0
    np.testing.assert_allclose(cake, [[40 / 3, 20.0], [20.0, 0.0]], rtol=1e-15)
    # ring 0: (40/3*1.5 + 20*0.5) / 2 = 15; ring 1: 20*0.25/0.25 = 20
    np.testing.assert_allclose(lineout, [15.0, 20.0], rtol=1e-15)

    # with a dark of 10 everywhere: x = (0, 10, 30)
    eng = ReferenceEngine(imap, dark=np.full((1, 3), 10.0))
    lineout, cake = eng.integrate(frame)
    np.testing.assert_allclose(cake, [[5 / 1.5, 10.0], [15.0, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(lineout, [(5 + 5) / 2.0, 15.0], rtol=1e-15)

    # Normalize 0: raw weighted sums
    eng = ReferenceEngine(imap, normalize=False)
    lineout, cake = eng.integrate(frame)
    np.testing.assert_allclose(cake, [[20.0, 10.0], [5.0, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(lineout, [(20 * 1.5 + 10 * 0.5) / 2.0, 5.0], rtol=1e-15)


def test_ring_without_area_gives_zero():
    areas = np.array([[1.0, 0.0], [0.0, 0.0]])
    imap = _fake_map(areas, areas, [1.0, 0.0], (1, 2), 2, 1)
    lineout, cake = ReferenceEngine(imap).integrate(np.array([[3.0, 7.0]]))
    assert lineout.tolist() == [3.0, 0.0]
    assert cake.tolist() == [[3.0], [0.0]]


# -------------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64, np.float32, np.float64])
def test_every_dtype_matches_float64(dtype):
    rng = np.random.default_rng(1)
    imap = _random_map(rng)
    eng = ReferenceEngine(imap)
    frame = rng.integers(0, 200, size=imap.shape).astype(dtype)
    lo, cake = eng.integrate(frame)
    lo64, cake64 = eng.integrate(frame.astype(np.float64))
    assert lo.dtype == np.float64 and cake.dtype == np.float64
    assert cake.shape == (imap.n_r, imap.n_eta) and lo.shape == (imap.n_r,)
    np.testing.assert_array_equal(cake, cake64)
    np.testing.assert_array_equal(lo, lo64)
    los, cakes = eng.integrate_batch(np.stack([frame, frame]))
    np.testing.assert_array_equal(cakes[1], cake64)


def test_unsupported_dtype_is_input_error():
    imap = _random_map(np.random.default_rng(2))
    with pytest.raises(InputError, match="complex"):
        ReferenceEngine(imap).integrate(np.zeros(imap.shape, dtype=np.complex128))


# ----------------------------------------------------------------------------------------------- dark and batch
def test_dark_subtraction_equals_subtracted_frame():
    rng = np.random.default_rng(3)
    imap = _random_map(rng)
    frame = rng.integers(100, 1000, size=imap.shape).astype(np.uint16)
    dark = rng.uniform(0, 90, size=imap.shape)
    lo, cake = ReferenceEngine(imap, dark=dark).integrate(frame)
    lo2, cake2 = ReferenceEngine(imap).integrate(frame.astype(np.float64) - dark)
    np.testing.assert_allclose(cake, cake2, rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(lo, lo2, rtol=1e-14, atol=1e-12)


def test_batch_equals_per_frame():
    rng = np.random.default_rng(4)
    imap = _random_map(rng)
    dark = rng.uniform(0, 5, size=imap.shape)
    frames = rng.integers(0, 60000, size=(7, *imap.shape)).astype(np.uint16)
    eng = ReferenceEngine(imap, dark=dark)
    los, cakes = eng.integrate_batch(frames)
    assert los.shape == (7, imap.n_r) and cakes.shape == (7, imap.n_r, imap.n_eta)
    for k in range(7):
        lo, cake = eng.integrate(frames[k])
        np.testing.assert_allclose(cakes[k], cake, rtol=1e-13, atol=1e-10)
        np.testing.assert_allclose(los[k], lo, rtol=1e-13, atol=1e-10)
    # Normalize 0 too
    eng0 = ReferenceEngine(imap, dark=dark, normalize=False)
    los0, cakes0 = eng0.integrate_batch(frames)
    np.testing.assert_allclose(cakes0[3], eng0.integrate(frames[3])[1], rtol=1e-13, atol=1e-10)


# ------------------------------------------------------------------------------------------- lineout definition
def test_lineout_is_pixel_area_weighted_ring_mean():
    rng = np.random.default_rng(5)
    imap = _random_map(rng, correction=False)
    frame = rng.uniform(0, 100, size=imap.shape)
    lineout, _ = ReferenceEngine(imap).integrate(frame)
    # a_pr = Σ_e a_p(r,e); I(r) = Σ_p a_pr x_p / Σ_p a_pr
    a = imap.areas.toarray().reshape(imap.n_r, imap.n_eta, -1).sum(axis=1)  # [n_r, n_pix]
    expected = (a @ frame.ravel()) / a.sum(axis=1)
    np.testing.assert_allclose(lineout, expected, rtol=1e-13)


def test_normalize_false_gives_raw_sums():
    rng = np.random.default_rng(6)
    imap = _random_map(rng)
    frame = rng.uniform(0, 100, size=imap.shape)
    _, cake = ReferenceEngine(imap, normalize=False).integrate(frame)
    np.testing.assert_allclose(cake.ravel(), imap.weights @ frame.ravel(), rtol=1e-14)


# -------------------------------------------------------------------------------------------------------- errors
def test_wrong_shapes_are_input_errors():
    imap = _random_map(np.random.default_rng(7))  # shape (6, 5)
    eng = ReferenceEngine(imap)
    with pytest.raises(InputError, match=r"expected shape .*\(6, 5\).*found \(5, 6\)"):
        eng.integrate(np.zeros((5, 6)))
    with pytest.raises(InputError, match=r"found \(30,\)"):
        eng.integrate(np.zeros(30))
    with pytest.raises(InputError, match=r"found \(6, 5\)"):
        eng.integrate_batch(np.zeros((6, 5)))
    with pytest.raises(InputError, match=r"found \(2, 6, 6\)"):
        eng.integrate_batch(np.zeros((2, 6, 6)))
    with pytest.raises(InputError, match=r"dark: expected shape .*found \(5, 5\)"):
        ReferenceEngine(imap, dark=np.zeros((5, 5)))


# ------------------------------------------------------------------------------------------------------ registry
def _no_cupy():
    raise ConfigError("engine 'gpu': CuPy is not installed: pip install 'ringstream[gpu]'")


def test_registry(caplog, monkeypatch):
    from ringstream.engines import cupy_engine

    imap = _random_map(np.random.default_rng(8))
    # a machine without a usable GPU: auto says why it takes the CPU, gpu is an error with the install line
    monkeypatch.setattr(cupy_engine, "gpu_available", lambda: (False, "CuPy is not installed"))
    monkeypatch.setattr(cupy_engine, "_import_cupy", _no_cupy)
    with caplog.at_level(logging.INFO, logger="ringstream.engines"):
        eng = create_engine("auto", imap)
    assert isinstance(eng, ReferenceEngine) and isinstance(eng, Engine)
    assert "engine: auto -> cpu (reference NumPy/SciPy); no usable GPU here: CuPy is not installed" in caplog.text
    assert isinstance(create_engine("cpu", imap, dark=np.zeros(imap.shape), normalize=False), ReferenceEngine)
    with pytest.raises(ConfigError, match=r"pip install 'ringstream\[gpu\]'"):
        create_engine("gpu", imap)
    # RINGSTREAM_GPU=0 forces the CPU whatever the machine has
    monkeypatch.setattr(cupy_engine, "gpu_available", lambda: (True, "a GPU"))
    monkeypatch.setenv("RINGSTREAM_GPU", "0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ringstream.engines"):
        assert isinstance(create_engine("auto", imap), ReferenceEngine)
    assert "RINGSTREAM_GPU=0 forces the CPU" in caplog.text
    with pytest.raises(ConfigError, match="unknown engine"):
        create_engine("tpu", imap)


# ------------------------------------------------------------------------------------ conservation on a real map
def test_total_intensity_conservation_with_real_map():
    params = pytest.importorskip("ringstream.params")
    map_mod = pytest.importorskip("ringstream.geometry.map")
    # 48 x 40 detector, beam centre inside, R range covering every pixel, full 360° in eta, no corrections
    text = "\n".join(
        [
            "NrPixelsY 40",
            "NrPixelsZ 48",
            "px 200",
            "Lsd 1000000",
            "BC 17.3 21.6",
            "tx 0.5",
            "ty 0.8",
            "tz -0.6",
            "RMin 0",
            "RMax 60",
            "RBinSize 1.5",
            "EtaMin -180",
            "EtaMax 180",
            "EtaBinSize 10",
        ]
    )
    p = params.parse_params(text)
    imap = map_mod.build_map(p)
    rng = np.random.default_rng(9)
    frame = rng.uniform(0, 1000, size=imap.shape)
    _, cake = ReferenceEngine(imap).integrate(frame)
    # Σ_b I_b·A_b = Σ_p I_p·a_p, a_p the pixel's total area (its quadrilateral area)
    a_p = np.asarray(imap.areas.sum(axis=0)).ravel()
    lhs = float((cake * imap.bin_area).sum())
    rhs = float(frame.ravel() @ a_p)
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # and every pixel is fully covered: its areas sum to ~1 px² (tilts change it a little)
    assert np.all(a_p > 0.9) and np.all(a_p < 1.1)

"""The CuPy engine agrees with the reference engine (relative error <= 1e-5) on the same map: every input dtype,
with dark and mask, random frames (never zeros), several detector sizes, batches cut across streams; every output
element written (outputs poisoned with NaN first)."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from ringstream.engines.reference import ReferenceEngine

pytestmark = pytest.mark.gpu

DTYPES = ["u1", "u2", "u4", "i4", "i8", "f4", "f8"]
RTOL = 1e-5


def _random_map(rng, shape, n_r, n_eta, mask_frac=0.1, per_pixel=3):
    """A random map with split pixels (each unmasked pixel in 1..per_pixel bins), masked pixels (no entries),
    corrections in the weights, and a few empty bins."""
    nz, ny = shape
    n_pix, n_bins = nz * ny, n_r * n_eta
    mask = rng.random(n_pix) < mask_frac
    rows, cols, vals = [], [], []
    for k in range(per_pixel):
        keep = (~mask) & (rng.random(n_pix) < (1.0 if k == 0 else 0.5))
        p = np.flatnonzero(keep)
        rows.append(rng.integers(0, n_bins, p.size))
        cols.append(p)
        vals.append(rng.uniform(0.05, 1.0, p.size))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    empty = rng.choice(n_bins, size=max(1, n_bins // 20), replace=False)
    keep = ~np.isin(rows, empty)
    areas = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n_bins, n_pix))
    areas.sum_duplicates()
    corr = rng.uniform(0.7, 1.0, n_pix)
    weights = (areas @ sp.diags(1.0 / corr)).tocsr()
    bin_area = np.asarray(areas.sum(axis=1)).ravel().reshape(n_r, n_eta)
    return SimpleNamespace(shape=shape, n_r=n_r, n_eta=n_eta, weights=weights, areas=areas, bin_area=bin_area,
                           mask=mask.reshape(shape))


def _frames(rng, dtype, n, shape):
    """Random nonzero frames of ``dtype`` spanning much of its range."""
    dt = np.dtype(dtype)
    size = (n,) + tuple(shape)
    if dt.kind == "u":
        hi = min(np.iinfo(dt).max, 2**32 - 1)
        return rng.integers(1, hi, size=size, endpoint=True, dtype=np.uint64).astype(dt)
    if dt.kind == "i":
        lim = min(np.iinfo(dt).max, 10**12)
        x = rng.integers(1, lim, size=size, dtype=np.int64)
        sign = np.where(rng.random(size) < 0.2, -1, 1)
        return (x * sign).astype(dt)
    return (rng.uniform(0.5, 5e4, size=size) * np.where(rng.random(size) < 0.2, -1, 1)).astype(dt)


def _rel(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def _check(eng, ref, frames):
    eng._poison()
    lines, cakes = eng.integrate_batch(frames)
    assert np.isfinite(lines).all() and np.isfinite(cakes).all(), "an output element was not written"
    rl, rc = ref.integrate_batch(frames)
    assert lines.shape == rl.shape and cakes.shape == rc.shape
    assert lines.dtype == np.float64 and cakes.dtype == np.float64
    assert _rel(cakes, rc) <= RTOL, _rel(cakes, rc)
    assert _rel(lines, rl) <= RTOL, _rel(lines, rl)
    # element-wise too, on a scale of the frame's own magnitude
    scale = np.abs(rc).max()
    assert np.abs(cakes - rc).max() <= RTOL * scale
    # empty bins are exactly 0 when normalising
    if ref.normalize:
        assert (cakes[:, ~ref.nonempty] == 0).all()
    return lines, cakes


@pytest.mark.parametrize("shape,n_r,n_eta", [((37, 53), 7, 6), ((128, 96), 20, 36), ((301, 257), 50, 72)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_all_dtypes(shape, n_r, n_eta, dtype):
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype)).encode()))
    imap = _random_map(rng, shape, n_r, n_eta)
    dark = rng.uniform(0.5, 40.0, shape)
    # batch 3 and 2 streams: 11 frames cut into 4 chunks, streams reused, a ragged last chunk, BMAX groups ragged
    eng = CupyEngine(imap, dark=dark, n_streams=2, batch=3)
    ref = ReferenceEngine(imap, dark=dark)
    frames = _frames(rng, dtype, 11, shape)
    _check(eng, ref, frames)
    # single frames through integrate()
    eng._poison()
    lo, ca = eng.integrate(frames[4])
    rlo, rca = ref.integrate(frames[4])
    assert _rel(ca, rca) <= RTOL and _rel(lo, rlo) <= RTOL


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("with_dark", [True, False])
def test_normalize_and_dark_options(normalize, with_dark):
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(7 + 2 * normalize + with_dark)
    shape = (200, 190)
    imap = _random_map(rng, shape, 30, 24)
    dark = rng.uniform(1.0, 100.0, shape).astype(np.float32) if with_dark else None
    eng = CupyEngine(imap, dark=dark, normalize=normalize, batch=16)
    ref = ReferenceEngine(imap, dark=dark, normalize=normalize)
    _check(eng, ref, _frames(rng, "u2", 37, shape))  # 37 frames: chunks of 16 + BMAX groups of 8, ragged


def test_pinned_input_and_out_arrays():
    import cupyx

    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(11)
    shape = (160, 170)
    imap = _random_map(rng, shape, 25, 18)
    eng = CupyEngine(imap, batch=4)
    ref = ReferenceEngine(imap)
    host = _frames(rng, "i4", 19, shape)
    pinned = cupyx.empty_pinned(host.shape, host.dtype)
    pinned[...] = host
    assert eng.staging.is_pinned(pinned) and not eng.staging.is_pinned(host)
    lines = np.full((19, 25), np.nan)
    cakes = np.full((19, 25, 18), np.nan)
    l2, c2 = eng.integrate_batch(pinned, out=(lines, cakes))
    assert l2 is lines and c2 is cakes
    rl, rc = ref.integrate_batch(host)
    assert _rel(cakes, rc) <= RTOL and _rel(lines, rl) <= RTOL


def test_registered_host_memory():
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(12)
    shape = (64, 80)
    imap = _random_map(rng, shape, 10, 12)
    eng = CupyEngine(imap)
    buf = bytearray(6 * 64 * 80 * 2 + 4096)
    arr = np.frombuffer(buf, dtype=np.uint16, count=6 * 64 * 80).reshape(6, 64, 80)
    arr[...] = _frames(rng, "u2", 6, shape)
    eng.register_host_memory(buf)
    try:
        assert eng.staging.is_pinned(arr)
        lines, cakes = eng.integrate_batch(arr)
    finally:
        eng.close()
    rl, rc = ReferenceEngine(imap).integrate_batch(arr)
    assert _rel(cakes, rc) <= RTOL and _rel(lines, rl) <= RTOL


def test_device_resident_api():
    import cupy as cp

    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(13)
    shape = (90, 110)
    imap = _random_map(rng, shape, 12, 30)
    dark = rng.uniform(0, 10, shape)
    eng = CupyEngine(imap, dark=dark)
    frames = _frames(rng, "u4", 10, shape)
    lines, cakes = eng.integrate_device(cp.asarray(frames))
    rl, rc = ReferenceEngine(imap, dark=dark).integrate_batch(frames)
    assert _rel(cp.asnumpy(cakes), rc) <= RTOL and _rel(cp.asnumpy(lines), rl) <= RTOL


def test_real_map_with_mask():
    """A map built by ringstream's own geometry code (tilted detector, mask), a non-native byte order input."""
    from ringstream.engines.cupy_engine import CupyEngine
    from ringstream.geometry.map import build_map
    from ringstream.params import parse_params

    p = parse_params("NrPixelsY 240\nNrPixelsZ 200\npx 200\nLsd 1000000\nBC 120 95\nty 2\n"
                     "RMin 5\nRMax 110\nRBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\n")
    imap = build_map(p)
    rng = np.random.default_rng(14)
    frames = _frames(rng, "u2", 9, imap.shape)
    dark = rng.uniform(0.5, 20, imap.shape)
    eng = CupyEngine(imap, dark=dark, batch=4)
    ref = ReferenceEngine(imap, dark=dark)
    _check(eng, ref, frames)
    _check(eng, ref, frames.astype(">u2"))


def test_registry_picks_gpu(monkeypatch, caplog):
    import logging

    from ringstream.engines import create_engine
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(15)
    imap = _random_map(rng, (20, 30), 4, 5)
    monkeypatch.delenv("RINGSTREAM_GPU", raising=False)
    with caplog.at_level(logging.INFO, logger="ringstream.engines"):
        assert isinstance(create_engine("auto", imap), CupyEngine)
        assert isinstance(create_engine("gpu", imap), CupyEngine)
    assert "engine: auto -> gpu (CuPy) on" in caplog.text
    monkeypatch.setenv("RINGSTREAM_GPU", "0")
    assert isinstance(create_engine("auto", imap), ReferenceEngine)


def test_large_pageable_frames_threaded_staging():
    """Chunks over the threaded-copy threshold: pageable input split over several staging threads."""
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(16)
    shape = (1030, 1100)
    imap = _random_map(rng, shape, 40, 36, per_pixel=2)
    dark = rng.uniform(0.5, 9.0, shape)
    eng = CupyEngine(imap, dark=dark, batch=4, copy_threads=3)
    ref = ReferenceEngine(imap, dark=dark)
    try:
        _check(eng, ref, _frames(rng, "u4", 9, shape))
        _check(eng, ref, _frames(rng, "f8", 5, shape))
    finally:
        eng.close()

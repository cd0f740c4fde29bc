"""The precision-bounded mode against the real thing: simulated Poisson frames (the ``simulated`` source's rings) on
a small tilted detector, integrated by the reference engine in float64, written by RunOutputs with
``cake_noise_fraction`` 0.01 and read back. Every stored cake value must be within 0.01 of its bin's exact counting
noise, ``sqrt(sum_p W_bp^2 c_p) / A_b``, computed here from the frame's pixel counts and the map (not the writer's
equal-counts model), and every omega sum within 0.01 of the exact noise of its frames' sum (plus the float32
rounding of the cakes the sums are made of)."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
import zarr

from ringstream.engines.reference import ReferenceEngine
from ringstream.geometry.map import build_map
from ringstream.ingest.simulated import SimulatedSource
from ringstream.params import parse_params
from ringstream.writer.export import export_zarr
from ringstream.writer.outputs import FrameRecord, RunOutputs

pytestmark = pytest.mark.timeout(300)

FRACTION = 0.01

#: a 256 x 256 detector of 172 um pixels at 0.3 m, tilted 1 deg, rings over R 8..125 px; 1 px x 5 deg bins
PARAMS = """\
NrPixelsY 256
NrPixelsZ 256
px 172
Lsd 300000
BC 127.3 128.6
ty 1.0
Wavelength 0.1729
RMin 8
RMax 125
RBinSize 1
EtaBinSize 5
Write2D 1
OmegaSumFrames 2
"""


def _exact_sigma(imap, normalize: bool, counts: np.ndarray) -> np.ndarray:
    """sqrt(sum_p W_bp^2 c_p) / A_b (Normalize 0: without / A_b), [n_r, n_eta]; 0 for an empty bin."""
    w = imap.weights.tocsr()
    var = w.multiply(w) @ counts.astype(np.float64).ravel()
    sigma = np.sqrt(var).reshape(imap.n_r, imap.n_eta)
    if normalize:
        area = np.asarray(imap.bin_area, dtype=np.float64).reshape(imap.n_r, imap.n_eta)
        sigma = np.divide(sigma, area, out=np.zeros_like(sigma), where=area > 1e-9)
    return sigma


@pytest.mark.parametrize(("extra", "scale"), [
    ("", 1.0),  # the simulated source's counts: 50 a pixel of background, rings of 1,000
    ("", 0.02),  # 1 count a pixel of background: the equal-counts model is furthest from the truth
    ("SolidAngleCorrection 1\nPolarizationCorrection 1\nNormalize 0\n", 1.0),  # weights != areas, raw sums
])
def test_stored_error_is_within_a_fraction_of_the_exact_counting_noise(tmp_path, extra, scale):
    p = parse_params(PARAMS + extra, source="counts.txt")
    imap = build_map(p)
    normalize = bool(p.Normalize)
    engine = ReferenceEngine(imap, normalize=normalize)
    source = SimulatedSource(p, precompute=False)
    rng = np.random.default_rng(11)
    frames = [rng.poisson(source.mean * scale) for _ in range(4)]
    cakes = [engine.integrate(f)[1] for f in frames]  # float64
    out = RunOutputs(tmp_path / "r.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "r.zarr.zip",
                     cake_noise_fraction=FRACTION)
    for i, cake in enumerate(cakes):
        lineout = (cake * imap.bin_area).sum(axis=1) / np.maximum(imap.bin_area.sum(axis=1), 1e-9)
        out.append(FrameRecord(i, lineout.astype(np.float32), f"sim:{i}", 1.7e9 + i, cake))
    out.close(run_complete=True)

    with h5py.File(tmp_path / "r.h5", "r") as f:
        stored = f["cake/data/I"][...].transpose(0, 2, 1)  # (stored [nImg, nEta, nR]: NXazint2d)
        sums = f["entry/omega_sum/I"][...]
        assert f["cake/data/I"].attrs["cake_noise_fraction"] == FRACTION == \
            f["entry/omega_sum/I"].attrs["cake_noise_fraction"] == f["entry/reduction/cake_noise_fraction"][()]
        assert "precision-bounded" in f["cake/data/I"].attrs["precision"]
        assert f["entry/reduction/cake_noise_model"].shape == (2, imap.n_r, imap.n_eta)
    rounded = 0
    for k, (frame, cake) in enumerate(zip(frames, cakes, strict=True)):
        sigma = _exact_sigma(imap, normalize, frame)
        err = np.abs(stored[k].astype(np.float64) - cake)
        assert np.all(err <= FRACTION * sigma), np.max(err / np.maximum(FRACTION * sigma, 1e-300))
        rounded += np.count_nonzero(stored[k] != cake.astype(np.float32))
    assert rounded > 0.5 * stored.size if scale == 1.0 else rounded > 0.1 * stored.size  # (it did round)

    root = zarr.open_group(zarr.storage.ZipStore(str(tmp_path / "r.zarr.zip"), mode="r"), mode="r", zarr_format=2)
    names = sorted(root["OmegaSumFrame"].array_keys())
    assert len(names) == 2
    for g in range(2):  # OmegaSumFrames 2: frames 2g, 2g + 1
        pair = slice(2 * g, 2 * g + 2)
        exact = sum(cakes[pair])
        sigma = _exact_sigma(imap, normalize, sum(frames[pair]))
        made_of = sum(c.astype(np.float32).astype(np.float64) for c in cakes[pair])  # the sums' input
        slack = np.abs(made_of - exact)
        assert np.all(np.abs(sums[g].astype(np.float64) - exact) <= FRACTION * sigma + slack)
        z = root[f"OmegaSumFrame/{names[g]}"]
        assert np.array_equal(z[...], sums[g]) and z.attrs["cake_noise_fraction"] == FRACTION

    # ringstream export makes the same zarr.zip from the HDF5 file: the sums as stored, and the precision said
    assert export_zarr(tmp_path / "r.h5", tmp_path / "again.zarr.zip") == 2
    with zipfile.ZipFile(tmp_path / "r.zarr.zip") as a, zipfile.ZipFile(tmp_path / "again.zarr.zip") as b:
        for name in names:
            for member in (".zattrs", "0.0"):
                key = f"OmegaSumFrame/{name}/{member}"
                assert a.read(key) == b.read(key), key

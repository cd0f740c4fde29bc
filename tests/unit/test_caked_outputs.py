"""Per-η fits in the outputs: the Result that carries them, ``/entry/fit/caked`` ``[frames, n_eta, peaks, 7]``, MIDAS's
``NAME_caked_peaks.h5`` (its dataset names and dtypes) from a run and from ``ringstream export``, and offline
``ringstream integrate --per-eta`` on ring images."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from outputs_common import N_PEAKS, make, records

from ringstream.fitting.caked import CAKED_COLUMNS
from ringstream.protocol import Result, decode, encode, result_buffers
from ringstream.writer.caked_peaks import caked_peaks_name
from ringstream.writer.export import export_caked_peaks
from ringstream.writer.outputs import RunOutputs, record_from_result

#: MIDAS utils/fit_caked_peaks.py: what it writes, with its dtypes (frame_key, frame_keys: variable-length str)
MIDAS_PEAKS = {"frame_idx": "int32", "eta_idx": "int32", "peak_nr": "int32", "eta_deg": "float64",
               "center_2theta": "float64", "area": "float64", "sig": "float64", "gam": "float64",
               "FWHM_deg": "float64", "eta_mix": "float64", "d_spacing_A": "float64", "chi_sq": "float64"}


def caked_rows(rng, n_eta: int) -> np.ndarray:
    rows = rng.random((n_eta, N_PEAKS, len(CAKED_COLUMNS))) + 1.0
    rows[1, 2] = np.nan  # a fit not made
    return rows


def assert_midas_schema(path, n_frames, n_r, n_eta):
    with h5py.File(path, "r") as f:
        assert set(f) == {"metadata", "peaks"}
        assert set(f["metadata"]) == {"tth_axis", "eta_axis", "frame_keys"}
        assert f["metadata/tth_axis"].dtype == np.float64 and f["metadata/tth_axis"].shape == (n_r,)
        assert f["metadata/eta_axis"].dtype == np.float64 and f["metadata/eta_axis"].shape == (n_eta,)
        assert h5py.check_string_dtype(f["metadata/frame_keys"].dtype) is not None
        assert f["metadata/frame_keys"].shape == (n_frames,)
        assert set(f["peaks"]) == set(MIDAS_PEAKS) | {"frame_key"}
        for name, dtype in MIDAS_PEAKS.items():
            assert f["peaks"][name].dtype == np.dtype(dtype), name
        assert h5py.check_string_dtype(f["peaks/frame_key"].dtype) is not None
        return {k: f["peaks"][k][...] for k in f["peaks"]}, [k.decode() for k in f["metadata/frame_keys"][...]]


def test_result_carries_the_per_eta_fits_to_the_writer_record():
    rng = np.random.default_rng(0)
    rows = caked_rows(rng, 4)
    fit = rng.random((N_PEAKS, 7))
    curves = (np.array([[2, 3]], np.int32), rng.random(3))
    bufs = result_buffers(rng.random(10), None, fit, curves, rows)
    msg = Result(run_id="r", frame_index=5, n_r=10, n_eta=4, n_peaks=N_PEAKS, n_rois=1, n_curve_points=3,
                 caked_peaks=N_PEAKS)
    got, views = decode(encode(msg, bufs))
    rec = record_from_result(got, views)
    np.testing.assert_array_equal(rec.caked, rows)
    np.testing.assert_array_equal(rec.fit, fit)
    np.testing.assert_array_equal(rec.curves[1], curves[1])


def test_run_writes_entry_fit_caked_and_the_midas_caked_peaks_file(tmp_path):
    p, imap = make()
    recs = records(5, imap, rejected=(2,))
    rng = np.random.default_rng(3)
    for r in recs:
        if r.lineout is not None:
            r.caked = caked_rows(rng, imap.n_eta)
    recs[3].caked = None  # a frame whose per-eta fits are missing: NaN
    (tmp_path / "midas").mkdir()
    out = RunOutputs(tmp_path / "run.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, midas_dir=tmp_path / "midas",
                     caked=50)
    for r in recs:
        out.append(r)
    out.close(run_complete=True)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        d = f["entry/fit/caked"]
        assert d.shape == (4, imap.n_eta, N_PEAKS, 7)
        assert d.attrs["columns"] == ",".join(CAKED_COLUMNS) and d.attrs["snip_iterations"] == 50
        np.testing.assert_array_equal(d[0], recs[0].caked)
        np.testing.assert_array_equal(d[2], np.full((imap.n_eta, N_PEAKS, 7), np.nan))
        np.testing.assert_array_equal(d[3], recs[4].caked)
    path = tmp_path / "midas" / caked_peaks_name("run.h5")
    assert path.name == "run_caked_peaks.h5"
    peaks, keys = assert_midas_schema(path, 4, imap.n_r, imap.n_eta)
    assert keys == ["LastFrameNumber_000000000", "LastFrameNumber_000000001", "LastFrameNumber_000000003",
                    "LastFrameNumber_000000004"]
    fitted = 3 * (imap.n_eta * N_PEAKS - 1)  # three frames with fits, each one NaN
    assert peaks["frame_idx"].size == fitted
    assert sorted(set(peaks["frame_idx"].tolist())) == [0, 1, 3]
    k = (peaks["frame_idx"] == 3) & (peaks["eta_idx"] == 1) & (peaks["peak_nr"] == 0)
    assert peaks["center_2theta"][k] == recs[4].caked[1, 0, 1] and peaks["frame_key"][k][0].decode() == keys[3]
    lam = float(p.Wavelength)
    np.testing.assert_allclose(peaks["d_spacing_A"], lam / (2 * np.sin(np.radians(peaks["center_2theta"]) / 2)))
    # ringstream export writes the same file from the HDF5
    again = export_caked_peaks(tmp_path / "run.h5", tmp_path / "exported")
    peaks2, keys2 = assert_midas_schema(again, 4, imap.n_r, imap.n_eta)
    assert keys2 == keys and all(np.array_equal(peaks[k], peaks2[k]) for k in MIDAS_PEAKS)
    with pytest.raises(Exception, match="--overwrite"):
        export_caked_peaks(tmp_path / "run.h5", tmp_path / "exported")


def test_integrate_per_eta_fits_every_eta_bin_of_ring_images(tmp_path, monkeypatch):
    from ringstream.daemon.cli import main

    monkeypatch.setenv("RINGSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "setup.txt").write_text("NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63.3 61.2\n"
                                        "RMin 4\nRMax 60\nRBinSize 1\nEtaBinSize 30\nWavelength 0.2\n"
                                        "FitROIPadding 8\nPeakLocation 30\nPeakLocation 45\n")
    zz, yy = np.mgrid[:128, :128]
    r = np.hypot(zz - 61.2, yy - 63.3)
    rng = np.random.default_rng(5)
    for k in range(2):
        img = 200 + 4000 * (np.exp(-((r - 30) ** 2) / 3.0) + np.exp(-((r - 45) ** 2) / 3.0))
        tifffile.imwrite(tmp_path / f"img_{k}.tif", rng.poisson(img).astype(np.uint16))
    rc = main(["integrate", "--param-file", "setup.txt", "--per-eta", "--snip-iterations", "20", "--no-zarr",
               "--output-h5", "out.h5", "--midas-binaries", "midas", "img_0.tif", "img_1.tif"])
    assert rc == 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        caked = f["entry/fit/caked"][...]
        area = f["entry/geometry/area"][...]
        assert f["entry/fit/caked"].attrs["snip_iterations"] == 20
    n_eta = area.shape[1]
    assert caked.shape == (2, n_eta, 2, 7)
    # every η bin the detector covers at both rings is fitted, each centre on its ring's 2θ
    covered = (area[26:34].min(axis=0) > 0) & (area[41:49].min(axis=0) > 0)
    assert covered.sum() >= 8
    assert np.isfinite(caked[:, covered]).all()
    tth = np.degrees(np.arctan(np.array([30.0, 45.0]) * 200 / 1e6))
    np.testing.assert_allclose(caked[:, covered, :, 1], np.broadcast_to(tth, caked[:, covered, :, 1].shape),
                               atol=0.2 * 200 / 1e6 * 180 / np.pi)
    peaks, _ = assert_midas_schema(tmp_path / "midas" / "out_caked_peaks.h5", 2, area.shape[0], n_eta)
    assert peaks["frame_idx"].size == int(np.isfinite(caked[..., 1]).sum())

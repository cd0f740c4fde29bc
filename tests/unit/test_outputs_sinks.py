"""RunOutputs: the one set of sinks: HDF5 (fit, curves, metadata, omega, omega sums, peak updates), zarr.zip and the
MIDAS streams, written from Result-like records, agree with each other and with the records bit for bit."""

from __future__ import annotations

import dataclasses
import errno
import zipfile

import h5py
import numpy as np
import pytest
import zarr
from outputs_common import N_PEAKS, make, records

from ringstream.protocol import ProtocolError, Result, decode, encode, result_buffers
from ringstream.writer import midas_binaries as mb
from ringstream.writer.hdf5 import Hdf5Writer
from ringstream.writer.outputs import FrameRecord, OutputError, RunOutputs, record_from_result
from ringstream.writer.storage import CAKE_DTYPES

#: the HDF5 filter id of bitshuffle (hdf5plugin)
BITSHUFFLE = 32008


@pytest.fixture(scope="module")
def geo():
    return make("Write2D 1\nOmegaSumFrames 4\nOmegaStart 10\nOmegaStep 0.5\n")


def _zarr(path):
    return zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r", zarr_format=2)


@pytest.mark.parametrize("dtype", CAKE_DTYPES)
def test_every_sink_agrees_with_the_records(tmp_path, geo, dtype):
    """... the cakes and omega sums stored in ``cake_dtype``, the sums rounded once from float64 (float32:
    exactly ``np.float32(sum64)``; float64: the sums bit for bit), compressed with bitshuffle + LZ4."""
    p, imap = geo
    recs = records(11, imap, rejected=(5,))
    out = RunOutputs(tmp_path / "r.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, zarr_path=tmp_path / "r.zarr.zip",
                     midas_dir=tmp_path, metadata_keys=["I0", "omega"], expected_frames=11, cake_dtype=dtype)
    for r in recs:
        out.append(r)
    out.peak_update(1, 7, [6.5, 11.0], "control")
    out.close(run_complete=True)
    ok = [r for r in recs if r.lineout is not None]
    with h5py.File(tmp_path / "r.h5", "r") as f:
        e = f["entry"]
        assert e.attrs["frames_written"] == 10 and bool(e.attrs["run_complete"])
        np.testing.assert_array_equal(e["data/frame_index"][:], [r.frame_index for r in ok])
        np.testing.assert_array_equal(e["data/I"][:], np.stack([r.lineout for r in ok]))
        cakes = f["cake/data/I"]  # the NXazint2d entry: [nImg, nEta, nR]
        np.testing.assert_array_equal(cakes[:], np.stack([r.cake.T for r in ok]))
        for d in (cakes, e["omega_sum/I"], e["geometry/area"]):
            code, _, opts, _ = d.id.get_create_plist().get_filter(0)
            assert code == BITSHUFFLE and opts[-1] == 2, d.name  # (2: LZ4)
        assert cakes.dtype == e["omega_sum/I"].dtype == np.dtype(dtype)
        assert cakes.chunks == (1, imap.n_eta, imap.n_r) and e["omega_sum/I"].chunks == (1, imap.n_r, imap.n_eta)
        np.testing.assert_array_equal(e["fit/peaks"][:], np.stack([r.fit for r in ok]))
        assert np.isnan(e["fit/peaks"][0, 1]).all() and not np.isnan(e["fit/peaks"][1]).any()
        assert e["fit/peaks"].attrs["columns"] == "Imax,BG,Mu,Rcen,Sigma,GoF,Area"
        np.testing.assert_array_equal(e["fit/peak_locations"][:], [6, 11, 15])
        # the omega of each frame: the metadata value wins over OmegaStart + i * OmegaStep
        np.testing.assert_array_equal(e["data/omega"][:], [0.25 * r.frame_index for r in ok])
        np.testing.assert_array_equal(e["data/metadata/I0"][:], [1000.0 + r.frame_index for r in ok])
        assert "note" not in e["data/metadata"] and '"note": "x"' in e["data/metadata/metadata_json"][0].decode()
        rois = e["fit/curve_rois"][:]
        exp = np.concatenate([np.column_stack([np.full(len(r.curves[0]), r.frame_index), r.curves[0]]) for r in ok])
        np.testing.assert_array_equal(rois, exp)
        np.testing.assert_array_equal(e["fit/curve_values"][:], np.concatenate([r.curves[1] for r in ok]))
        u = e["fit/peak_updates"]
        assert list(u["seq"][:]) == [1] and list(u["from_frame"][:]) == [7] and u["origin"][0] == b"control"
        np.testing.assert_array_equal(u["peaks"][0], [6.5, 11.0])
        # omega sums: groups of 4 frames by frame_index; frame 5 was rejected
        o = e["omega_sum"]
        assert list(o["n_frames"][:]) == [4, 3, 3] and list(o["last_frame"][:]) == [3, 7, 10]
        assert list(o["first_frame"][:]) == [0, 4, 8]
        np.testing.assert_array_equal(o["first_omega"][:], [0.0, 1.0, 2.0])
        cakes = {r.frame_index: r.cake.astype(np.float64) for r in ok}
        for g, frames in enumerate(([0, 1, 2, 3], [4, 6, 7], [8, 9, 10])):
            want = np.zeros_like(cakes[0])
            for i in frames:
                want += cakes[i]
            assert o["I"][g].tobytes() == want.astype(dtype).tobytes()  # np.float32(sum64) exactly
            name = f"LastFrameNumber_{frames[-1]:02d}"
            d = o["named"][name]
            assert d.dtype == np.dtype(dtype) and d[...].tobytes() == want.astype(dtype).tobytes()
            assert d.attrs["Number Of Frames Summed"] == len(frames)
        h5_sums = o["I"][:]
        lines = np.stack([r.lineout for r in ok]).astype(np.float64)
        r_px = e["data/r_px"][:]
    # zarr.zip: same sums, zero-padded names in order
    z = _zarr(tmp_path / "r.zarr.zip")
    assert sorted(z.keys()) == ["InstrumentParameters", "OmegaSumFrame", "REtaMap"]
    assert list(z["OmegaSumFrame"].keys()) == ["LastFrameNumber_03", "LastFrameNumber_07", "LastFrameNumber_10"]
    for g, name in enumerate(z["OmegaSumFrame"].keys()):
        assert z["OmegaSumFrame"][name][...].tobytes() == h5_sums[g].tobytes()
    assert dict(z["OmegaSumFrame/LastFrameNumber_07"].attrs) == {
        "Number Of Frames Summed": 3, "LastFrameNumber": 7, "FirstOme": 1.0, "LastOme": 1.75}
    # MIDAS streams
    fit = np.fromfile(tmp_path / "fit.bin").reshape(-1, N_PEAKS, 7)
    np.testing.assert_array_equal(fit, np.stack([r.fit for r in ok]))
    lo = np.fromfile(tmp_path / "lineout.bin").reshape(-1, imap.n_r, 2)
    np.testing.assert_array_equal(lo[:, :, 1], lines)
    np.testing.assert_array_equal(lo[:, :, 0], np.broadcast_to(r_px, lo[:, :, 0].shape))
    int2d = np.fromfile(tmp_path / "Int2D.bin").reshape(-1, imap.n_r, imap.n_eta)
    np.testing.assert_array_equal(int2d, np.stack([r.cake for r in ok]).astype(np.float64))
    m = np.fromfile(tmp_path / "RTthEtaAreaMap.bin").reshape(4, imap.n_r, imap.n_eta)
    np.testing.assert_array_equal(m[3], imap.bin_area)
    curves = list(mb.read_fit_curves(tmp_path / "fit_curves.bin"))
    want = [(r.frame_index, int(s), r.curves[1][a:a + int(n)]) for r in ok
            for (s, n), a in zip(r.curves[0], np.concatenate([[0], np.cumsum(r.curves[0][:, 1])[:-1]]), strict=True)]
    assert [(c[0], c[1]) for c in curves] == [(w[0], w[1]) for w in want]
    for c, w in zip(curves, want, strict=True):
        np.testing.assert_array_equal(c[2], w[2])


def test_partial_sums_from_workers_equal_cake_sums(tmp_path):
    p, imap = make("OmegaSumFrames 3\n")  # Write2D 0: the writer has no cakes, the workers sum them
    recs = records(8, imap, seed=3)
    out = RunOutputs(tmp_path / "w.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "w.zarr.zip",
                     sums_from_workers=True, expected_frames=8)
    # two workers: even and odd frames, partial sums arrive before and after the frames
    for g in range(3):
        for parity in (0, 1):
            frames = [r for r in recs if r.frame_index // 3 == g and r.frame_index % 2 == parity]
            if frames and parity == 0:
                out.add_partial(g, len(frames), sum(r.cake.astype(np.float64) for r in frames))
        for r in recs[g * 3:(g + 1) * 3]:
            out.append(type(r)(r.frame_index, r.lineout, r.source_id, r.timestamp, None, None, None, r.metadata))
        odd = [r for r in recs if r.frame_index // 3 == g and r.frame_index % 2 == 1]
        assert out.counters["omega_groups"] == g  # group g waits for the second worker's sum
        if odd:
            out.add_partial(g, len(odd), sum(r.cake.astype(np.float64) for r in odd))
        assert out.counters["omega_groups"] == (g + 1 if g < 2 else 2)  # the last group ends with the run
    assert out.sums_waiting == 0
    out.close(True)
    with h5py.File(tmp_path / "w.h5") as f:
        o = f["entry/omega_sum"]
        assert list(o["n_frames"][:]) == [3, 3, 2] and "cake" not in f
        for g in range(3):
            # float32 by default: the float64 sum (of any order) rounded once, within half a float32 ulp
            np.testing.assert_allclose(o["I"][g], sum(r.cake.astype(np.float64) for r in recs[g * 3:g * 3 + 3]),
                                       rtol=2.0**-24)


def test_zarr_grown_in_place_stays_valid_between_saves(tmp_path, geo):
    p, imap = geo
    zpath = tmp_path / "s.zarr.zip"
    out = RunOutputs(tmp_path / "s.h5", imap, p, engine_name="cpu", zarr_path=zpath, n_peaks=N_PEAKS)
    out.zarr.NEW_PER_DIRECTORY = 0.0  # publish at every save, however small the new groups against the directory
    recs = records(13, imap)
    for r in recs[:6]:
        out.append(r)
    out.save()  # one complete group (0..3), published in the background
    out.wait_published()
    assert list(_zarr(zpath)["OmegaSumFrame"].keys()) == ["LastFrameNumber_000000003"]
    inode = zpath.stat().st_ino
    for r in recs[6:11]:
        out.append(r)
    assert list(_zarr(zpath)["OmegaSumFrame"].keys()) == ["LastFrameNumber_000000003"]  # not yet published
    out.save()
    out.wait_published()
    assert zpath.stat().st_ino == inode  # the same file, grown in place
    assert list(_zarr(zpath)["OmegaSumFrame"].keys()) == ["LastFrameNumber_000000003", "LastFrameNumber_000000007"]
    for r in recs[11:]:
        out.append(r)
    out.close(True)
    z = _zarr(zpath)
    assert list(z["OmegaSumFrame"].keys())[2:] == ["LastFrameNumber_000000011", "LastFrameNumber_000000012"]
    assert z["OmegaSumFrame/LastFrameNumber_000000012"].attrs["Number Of Frames Summed"] == 1
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]  # no temporary left


def test_disk_full_is_one_clear_error_and_the_file_stays_readable(tmp_path, geo, monkeypatch):
    p, imap = geo
    out = RunOutputs(tmp_path / "d.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, block=4)
    recs = records(12, imap)
    for r in recs[:8]:
        out.append(r)
    out.flush()
    real = Hdf5Writer._write_buffer

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Hdf5Writer, "_write_buffer", full)
    with pytest.raises(OutputError, match=r"d\.h5: disk full .*8 frames were flushed"):
        for r in recs[8:]:
            out.append(r)
    monkeypatch.setattr(Hdf5Writer, "_write_buffer", real)
    out.close(run_complete=False)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert f["entry"].attrs["frames_written"] == 8 and not f["entry"].attrs["run_complete"]
        np.testing.assert_array_equal(f["entry/data/frame_index"][:], np.arange(8))
    assert np.fromfile(tmp_path / "fit.bin").reshape(-1, N_PEAKS, 7).shape[0] == 8


def test_zarr_copies_are_throttled_and_leftovers_of_a_killed_writer_removed(tmp_path, geo):
    p, imap = geo
    zpath = tmp_path / "t.zarr.zip"
    (tmp_path / ".t.zarr.zip.abc123").mkdir()  # what a killed writer leaves: its folder and a temporary ZIP
    (tmp_path / ".t.zarr.zip.def456.tmp").write_bytes(b"partial")
    out = RunOutputs(tmp_path / "t.h5", imap, p, engine_name="cpu", zarr_path=zpath, n_peaks=N_PEAKS)
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".")) == [out.zarr._work.name]
    recs = records(12, imap)
    for r in recs[:4]:
        out.append(r)
    out.save()
    out.wait_published()
    out.zarr._last_seconds = 3600.0  # as if the last copy took an hour: the next saves wait
    for r in recs[4:8]:
        out.append(r)
    out.save()
    out.wait_published()
    assert out.zarr.skipped == 1 and list(_zarr(zpath)["OmegaSumFrame"].keys()) == ["LastFrameNumber_000000003"]
    for r in recs[8:]:
        out.append(r)
    out.close(True)  # the end of the run always publishes
    assert list(_zarr(zpath)["OmegaSumFrame"].keys())[-1] == "LastFrameNumber_000000011"


def test_record_from_result_views_the_buffers_and_names_the_frame_on_a_mismatch():
    fit, table, values = np.arange(14.0).reshape(2, 7), np.array([[3, 4]], dtype=np.int32), np.arange(4.0)
    msg = Result(run_id="r", frame_index=9, source_id="s", timestamp=1.5, n_r=5, n_eta=3, has_cake=True,
                 n_peaks=2, n_rois=1, n_curve_points=4, metadata={"I0": 2.0})
    bufs = result_buffers(np.arange(5.0), np.ones((5, 3)), fit, (table, values))
    back, views = decode(encode(msg, bufs))
    rec = record_from_result(back, views)
    assert (rec.frame_index, rec.source_id, rec.timestamp, rec.metadata) == (9, "s", 1.5, {"I0": 2.0})
    assert rec.lineout.dtype == np.dtype("<f4") and rec.lineout.shape == (5,)
    assert rec.cake.shape == (5, 3) and rec.fit.shape == (2, 7) and rec.curves[0].shape == (1, 2)
    np.testing.assert_array_equal(rec.fit, fit)
    np.testing.assert_array_equal(rec.curves[1], values)
    assert np.shares_memory(rec.lineout, np.frombuffer(views[0], np.uint8))  # a view, no copy
    cases = [(dict(), bufs[:-1], "4 buffers, expected 5"),
             (dict(n_r=6), bufs, "buffers do not match the header"),
             (dict(n_curve_points=5), bufs, "4 model values for n_curve_points 5"),
             (dict(n_peaks=3), bufs, "buffers do not match the header")]
    for change, buffers, text in cases:
        with pytest.raises(ProtocolError, match=f"^result 9: .*{text}") as info:
            record_from_result(dataclasses.replace(msg, **change), [memoryview(b).cast("B") for b in buffers])
        assert info.value.kind == "size"


def test_fit_rows_of_every_shape_survive_block_growth_and_flushes(tmp_path, geo):
    p, imap = geo
    out = RunOutputs(tmp_path / "f.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, block=32)
    rng = np.random.default_rng(5)
    want = []
    for i in range(150):  # more rows than the MIDAS block holds before it grows, across flushes
        kind = i % 4
        fit = (None, rng.normal(size=(N_PEAKS, 7)).astype(np.float32), rng.normal(size=(1, 7)),
               np.zeros((0, 7)))[kind]
        row = np.full((N_PEAKS, 7), np.nan)
        if fit is not None and len(fit):
            row[: len(fit)] = fit
        want.append(row)
        out.append(FrameRecord(i, rng.random(imap.n_r).astype(np.float32), f"f{i}", 1.0 + i,
                               rng.random((imap.n_r, imap.n_eta)).astype(np.float32), fit))
        if i in (20, 99):
            out.flush()
    out.close(True)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "fit.bin").reshape(-1, N_PEAKS, 7), np.stack(want))
    with h5py.File(tmp_path / "f.h5") as f:
        np.testing.assert_array_equal(f["entry/fit/peaks"][:], np.stack(want))
        assert list(f["entry/data/source_id"].asstr()[:]) == [f"f{i}" for i in range(150)]
        np.testing.assert_array_equal(f["entry/data/timestamp"][:], 1.0 + np.arange(150))


@pytest.mark.parametrize("path", ["C", "h5py"])
def test_named_omega_groups_are_virtual_rows_with_typed_attributes(tmp_path, geo, monkeypatch, path):
    """Named through HDF5's C calls (ringstream/writer/hdf5_c.py) or, where they cannot be reached, h5py's objects:
    the same datasets and attributes."""
    from ringstream.writer import hdf5_c

    if path == "C":
        assert hdf5_c.library() is not None  # (the wheels h5py installs bundle the library: the C path is taken)
    else:
        monkeypatch.setattr(hdf5_c, "library", lambda: None)
    p, imap = geo
    out = RunOutputs(tmp_path / "n.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, expected_frames=10)
    for r in records(10, imap):
        out.append(r)
    out.close(True)
    with h5py.File(tmp_path / "n.h5") as f:
        o = f["entry/omega_sum"]
        assert sorted(o["named"]) == ["LastFrameNumber_3", "LastFrameNumber_7", "LastFrameNumber_9"]
        assert not [k for k in o if k.startswith("Last")]  # (the links of omega_sum itself do not change)
        for g, name in enumerate(["LastFrameNumber_3", "LastFrameNumber_7", "LastFrameNumber_9"]):
            d = o["named"][name]
            assert d.is_virtual and d.shape == (imap.n_r, imap.n_eta) and d.dtype == np.float32  # (cake_dtype)
            assert d.fillvalue == 0.0
            (src,) = d.virtual_sources()
            assert (src.file_name, src.dset_name) == (".", "/entry/omega_sum/I")
            assert src.src_space.get_select_bounds() == ((g, 0, 0), (g, imap.n_r - 1, imap.n_eta - 1))
            np.testing.assert_array_equal(d[...], o["I"][g])
            a = d.attrs
            assert list(a) == ["FirstOme", "LastFrameNumber", "LastOme", "Number Of Frames Summed"]
            assert [a.get_id(k).dtype for k in a] == [np.dtype("<f8"), np.dtype("<i8"), np.dtype("<f8"),
                                                      np.dtype("<i8")]
            assert [a.get_id(k).shape for k in a] == [()] * 4
            assert (a["Number Of Frames Summed"], a["LastFrameNumber"]) == (o["n_frames"][g], o["last_frame"][g])
            assert (a["FirstOme"], a["LastOme"]) == (o["first_omega"][g], o["last_omega"][g])


def test_zarr_group_with_nan_is_zero_there_and_the_sum_handed_in_is_unchanged(tmp_path):
    from ringstream.writer.omega import OmegaGroup
    from ringstream.writer.zarr_zip import ZarrZipSink

    sink = ZarrZipSink(tmp_path / "n.zarr.zip", np.zeros((5, 3, 2)), {"Lam": 0.2}, 2)
    sums = [np.arange(6.0).reshape(3, 2) + g for g in range(3)]
    sums[1][0, 1], sums[2][2, 0] = np.nan, np.inf
    for g, s in enumerate(sums):
        sink.add_group(OmegaGroup(g, s, 2, 2 * g, 2 * g + 1, 0.0, 1.0))
    sink.close()
    assert np.isnan(sums[1][0, 1]) and np.isinf(sums[2][2, 0])
    z = _zarr(tmp_path / "n.zarr.zip")
    for g, s in enumerate(sums):
        np.testing.assert_array_equal(z[f"OmegaSumFrame/LastFrameNumber_{2 * g + 1:02d}"][...],
                                      np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0))


def test_repair_cuts_a_zarr_publication_a_killed_writer_left(tmp_path, geo, capsys):
    from ringstream.daemon.cli import main

    p, imap = geo
    out = RunOutputs(tmp_path / "k.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "k.zarr.zip",
                     n_peaks=N_PEAKS)
    for r in records(9, imap):
        out.append(r)
    out.close(True)
    with open(tmp_path / "k.zarr.zip", "ab") as f:  # what a writer killed while the file grew leaves
        f.write(b"\0" * 70_000)
    assert main(["repair", str(tmp_path / "k.h5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{tmp_path / 'k.zarr.zip'}: 70000 bytes of an unfinished publication cut"
    assert list(_zarr(tmp_path / "k.zarr.zip")["OmegaSumFrame"].keys())
    assert main(["repair", str(tmp_path / "k.h5")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("k.zarr.zip: whole")


@pytest.mark.parametrize("dtype", CAKE_DTYPES)
def test_export_regenerates_the_runs_zarr_zip_and_binaries_from_the_compressed_file(tmp_path, geo, dtype):
    """``ringstream export`` reads the compressed cakes and sums (the file's dtype) and writes the run's zarr.zip and
    MIDAS binaries byte for byte."""
    from ringstream.writer.export import export_midas, export_zarr

    p, imap = geo
    run = tmp_path / "run"
    run.mkdir()
    out = RunOutputs(run / "r.h5", imap, p, engine_name="cpu", zarr_path=run / "r.zarr.zip", midas_dir=run,
                     expected_frames=9, cake_dtype=dtype, n_peaks=N_PEAKS)
    for r in records(9, imap, seed=11, rejected=(4,)):
        out.append(r)
    out.close(run_complete=True)
    assert export_zarr(run / "r.h5", tmp_path / "x.zarr.zip") == 3
    with zipfile.ZipFile(run / "r.zarr.zip") as a, zipfile.ZipFile(tmp_path / "x.zarr.zip") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert all(a.read(n) == b.read(n) for n in a.namelist())
    export_midas(run / "r.h5", tmp_path / "m")
    for name in ("Int2D.bin", "lineout.bin", "RTthEtaAreaMap.bin", "fit.bin", "fit_curves.bin"):
        assert (tmp_path / "m" / name).read_bytes() == (run / name).read_bytes(), name


def test_an_unknown_wavelength_gives_no_lam_in_the_zarr_zip_nor_in_its_export(tmp_path):
    from ringstream.writer.export import export_zarr

    p, imap = make("Write2D 1\nOmegaSumFrames 4\nWavelength 0\n")
    out = RunOutputs(tmp_path / "u.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "u.zarr.zip", n_peaks=N_PEAKS)
    for r in records(4, imap):
        out.append(r)
    out.close(run_complete=True)
    export_zarr(tmp_path / "u.h5", tmp_path / "x.zarr.zip")
    for path in (tmp_path / "u.zarr.zip", tmp_path / "x.zarr.zip"):
        ip = _zarr(path)["InstrumentParameters"]
        assert "Lam" not in ip and sorted(ip.keys()) == ["Distance", "Polariz", "SH_L", "U", "V", "W", "X", "Y", "Z"]


def test_a_kill_while_the_groups_are_named_spoils_nothing_but_the_names(tmp_path, monkeypatch):
    """The names are added without SWMR after the run (``link_omega_groups``): a process killed at any moment of it
    leaves every row of the run readable and equal, and the next naming (the replacement writer's, or a repair's)
    gives every name. Before the names had a group of their own, about 1 kill in 100 here left /entry/omega_sum's own
    links half written ('wrong fractal heap header signature'): the whole run unreadable."""
    import os
    import random
    import shutil
    import signal
    import time

    from ringstream.writer import repair

    p, imap = make("OmegaSumFrames 1\n")
    monkeypatch.setattr(repair, "link_omega_groups", lambda path, prepared=None: 0)  # closed, its groups unnamed
    out = RunOutputs(tmp_path / "run.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS, expected_frames=24)
    for r in records(24, imap):
        out.append(r)
    out.close(True)
    monkeypatch.undo()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        want = {k: f["entry/omega_sum"][k][...] for k in ("I", "n_frames", "name")}
        rows = f["entry/data/I"][...]
    assert len(want["name"]) == 24
    rng = random.Random(3)
    for trial in range(40):
        path = tmp_path / f"t{trial}.h5"
        shutil.copy(tmp_path / "run.h5", path)
        pid = os.fork()
        if pid == 0:  # (the child names the groups until it is killed)
            try:
                repair.link_omega_groups(path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.01))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        repair.clear_status_flags(path)
        with h5py.File(path, "r") as f:
            o = f["entry/omega_sum"]
            for k, v in want.items():
                np.testing.assert_array_equal(o[k][...], v)
            np.testing.assert_array_equal(f["entry/data/I"][...], rows)
        assert repair.link_omega_groups(path) == 24
        with h5py.File(path, "r") as f:
            named = f["entry/omega_sum/named"]
            assert sorted(named) == sorted(v.decode() for v in want["name"])
            np.testing.assert_array_equal(named[want["name"][5].decode()][...], want["I"][5])
        path.unlink()

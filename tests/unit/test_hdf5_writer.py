"""The HDF5 results file: the OUTPUTS.md layout, block appends, progress attributes and SWMR readers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ringstream.errors import InputError
from ringstream.params import parse_params
from ringstream.writer.hdf5 import HC_KEV_A, Hdf5Writer

PARAMS = """\
NrPixelsY 48
NrPixelsZ 40
Lsd 1000000
px 200
BC 24 20
RMin 2
RMax 20
RBinSize 1
EtaBinSize 30
Wavelength {wl}
MaskFile mask.tif   # a path key: recorded as text
Write2D 1
"""


@pytest.fixture(scope="module")
def built():
    from ringstream.geometry.map import build_map

    p = parse_params(PARAMS.format(wl=0.2).replace("MaskFile mask.tif", ""), source="setup.txt")
    return p, build_map(p)


def _rows(n, n_r, n_eta, start=0):
    rng = np.random.default_rng(start)
    return (np.arange(start, start + n), [f"img_{k}.tif" for k in range(start, start + n)],
            1.7e9 + np.arange(start, start + n, dtype=np.float64), rng.random((n, n_r)),
            rng.random((n, n_r, n_eta)))


def test_layout_complete(tmp_path, built):
    p, imap = built
    path = tmp_path / "out.h5"
    w = Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=True, block=4)
    idx, sids, ts, lo, ck = _rows(10, imap.n_r, imap.n_eta)
    for k in range(10):
        w.append(int(idx[k]), sids[k], ts[k], lo[k], ck[k])
    w.close()
    nR, nE = imap.n_r, imap.n_eta
    with h5py.File(path, "r") as f:
        e = f["entry"]
        assert e.attrs["NX_class"] == "NXentry"
        assert e["definition"][()].decode() == "NXazint1d"
        for key in ("solid_angle_applied", "polarization_applied", "normalization_applied"):
            assert e[key].dtype == np.bool_
        assert bool(e["normalization_applied"][()]) is True and bool(e["solid_angle_applied"][()]) is False
        assert e["instrument"].attrs["NX_class"] == "NXinstrument" and "name" in e["instrument"]
        mono = e["instrument/monochromator"]
        assert mono["wavelength"][()] == pytest.approx(0.2)
        assert mono["energy"][()] == pytest.approx(HC_KEV_A / 0.2) and mono["energy"].attrs["units"] == "keV"
        red = e["reduction"]
        assert red.attrs["NX_class"] == "NXprocess"
        assert red["program"][()].decode() == "ringstream"
        for key in ("version", "date", "note", "reference"):
            assert red[key][()].decode()
        assert red["engine"][()].decode() == "cpu"
        inp = red["input"]
        assert inp.attrs["NX_class"] == "NXparameters"
        assert inp["parameter_file"][()].decode() == p.text
        assert inp["Lsd"][()] == 1e6 and inp["NrPixelsY"][()] == 48 and inp["Write2D"][()] == 1
        assert [float(v) for v in inp["BC"][()].decode().split()] == [24.0, 20.0]  # lists as text
        assert set(p.used()) <= set(inp)

        d = e["data"]
        assert d.attrs["NX_class"] == "NXdata" and d.attrs["signal"] == "I"
        assert list(d.attrs["axes"]) == [".", "radial_axis"] and d.attrs["interpretation"] == "spectrum"
        assert d["I"].shape == (10, nR) and d["I"].dtype == np.float32 and d["I"].maxshape == (None, nR)
        assert d["I"].chunks == (4, nR)
        assert dict(d["I"].attrs).items() >= {"long_name": "intensity", "units": "arbitrary units"}.items()
        np.testing.assert_array_equal(d["I"][()], lo.astype(np.float32))
        assert d["radial_axis"].shape == (nR,) and d["radial_axis"].dtype == np.float64
        assert d["radial_axis"].attrs["long_name"] == "2theta" and d["radial_axis"].attrs["units"] == "deg"
        np.testing.assert_array_equal(d["radial_axis"][()], imap.two_theta)
        np.testing.assert_array_equal(d["r_px"][()], imap.r_px)
        np.testing.assert_allclose(d["q"][()], imap.q)
        assert d["frame_index"].dtype == np.uint64 and d["frame_index"][()].tolist() == list(range(10))
        assert d["source_id"].asstr()[()].tolist() == sids
        assert h5py.check_string_dtype(d["source_id"].dtype).encoding == "utf-8"
        assert d["timestamp"].dtype == np.float64 and np.array_equal(d["timestamp"][()], ts)

        # the cakes: their own NXentry, NXazint2d, [nImg, nEta, nR]; the rest is /entry's (hard links)
        assert "cake" not in e and f["cake"].attrs["NX_class"] == "NXentry"
        assert f["cake/definition"][()].decode() == "NXazint2d"
        for key in ("instrument", "reduction", "solid_angle_applied", "data/radial_axis", "data/frame_index"):
            assert f["cake"][key] == e[key], key
        c = f["cake/data"]
        assert c.attrs["NX_class"] == "NXdata" and c.attrs["signal"] == "I" and c.attrs["interpretation"] == "image"
        assert list(c.attrs["axes"]) == [".", "azimuthal_axis", "radial_axis"]
        assert c["I"].shape == (10, nE, nR) and c["I"].dtype == np.float32 and c["I"].chunks == (1, nE, nR)
        np.testing.assert_array_equal(c["I"][()], ck.astype(np.float32).transpose(0, 2, 1))
        np.testing.assert_array_equal(c["radial_axis"][()], imap.two_theta)
        np.testing.assert_array_equal(c["azimuthal_axis"][()], imap.eta)
        assert c["azimuthal_axis"].attrs["long_name"] == "azimuthal bin center"

        g = e["geometry"]
        for key in ("r_px", "two_theta", "eta", "area", "q"):
            assert g[key].shape == (nR, nE) and g[key].dtype == np.float64
        np.testing.assert_array_equal(g["area"][()], imap.bin_area)
        np.testing.assert_array_equal(g["r_px"][:, 0], imap.r_px)
        np.testing.assert_array_equal(g["eta"][0], imap.eta)
        np.testing.assert_array_equal(g["two_theta"][:, -1], imap.two_theta)

        assert int(e.attrs["frames_written"]) == 10 and bool(e.attrs["run_complete"]) is True


def test_no_wavelength_no_cake(tmp_path):
    from ringstream.geometry.map import build_map

    p = parse_params(PARAMS.format(wl=0).replace("MaskFile mask.tif", "").replace("Write2D 1", ""))
    imap = build_map(p)
    path = tmp_path / "o.h5"
    with Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=False) as w:
        w.append(0, "a", None, np.ones(imap.n_r))
    with h5py.File(path, "r") as f:
        assert "cake" not in f and "q" not in f["entry/data"]
        mono = f["entry/instrument/monochromator"]  # (NXazint1d requires them: NaN, unknown)
        assert np.isnan(mono["wavelength"][()]) and np.isnan(mono["energy"][()])
        assert f["entry/geometry/q"].shape == (imap.n_r, imap.n_eta)
        assert f["entry/data/timestamp"][0] > 1.6e9  # ingest time when the source has none


def test_frames_written_and_run_complete(tmp_path, built):
    p, imap = built
    path = tmp_path / "o.h5"
    w = Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=False, block=8)
    idx, sids, ts, lo, _ = _rows(20, imap.n_r, imap.n_eta)
    w.append_many(idx[:3], sids[:3], ts[:3], lo[:3])
    assert w.frames_written == 0  # buffered
    w.flush()
    assert w.frames_written == 3
    w.append_many(idx[3:], sids[3:], ts[3:], lo[3:])  # large: written straight through
    assert w.frames_written == 20
    w.close(run_complete=False)
    with h5py.File(path, "r") as f:
        assert int(f["entry"].attrs["frames_written"]) == 20
        assert bool(f["entry"].attrs["run_complete"]) is False
        assert f["entry/data/frame_index"][()].tolist() == list(range(20))
        np.testing.assert_array_equal(f["entry/data/I"][()], lo.astype(np.float32))


def test_non_increasing_frame_index_refused(tmp_path, built):
    p, imap = built
    w = Hdf5Writer(tmp_path / "o.h5", imap, p, engine_name="cpu", write_2d=False)
    w.append(5, "a", None, np.zeros(imap.n_r))
    with pytest.raises(ValueError, match="frame_index 5"):
        w.append(5, "b", None, np.zeros(imap.n_r))
    with pytest.raises(ValueError, match="frame_index 3"):
        w.append(3, "b", None, np.zeros(imap.n_r))
    with pytest.raises(ValueError, match="strictly increasing"):
        w.append_many([6, 8, 7], ["a", "b", "c"], None, np.zeros((3, imap.n_r)))
    w.append(6, "c", None, np.zeros(imap.n_r))
    w.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["entry/data/frame_index"][()].tolist() == [5, 6]


def test_existing_file_refused_unless_overwrite(tmp_path, built):
    p, imap = built
    path = tmp_path / "o.h5"
    path.write_bytes(b"precious")
    with pytest.raises(InputError, match=r"o\.h5.*exists"):
        Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=False)
    assert path.read_bytes() == b"precious"
    Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=False, overwrite=True).close()
    with h5py.File(path, "r") as f:
        assert "entry" in f


READER = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], "r", swmr=True)
    I = f["entry/data/I"]
    idx = f["entry/data/frame_index"]
    print("open", int(f["entry"].attrs["frames_written"]), flush=True)
    for line in sys.stdin:
        I.refresh(); idx.refresh()
        n = int(I.attrs["frames_written"])
        print(I.shape[0], n, int(idx[n - 1]) if n else -1, bool(I.attrs["run_complete"]), flush=True)
""")


@pytest.mark.timeout(60)
def test_swmr_reader_sees_frames_grow(tmp_path, built):
    p, imap = built
    path = tmp_path / "live.h5"
    w = Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=True, block=4)
    idx, sids, ts, lo, ck = _rows(30, imap.n_r, imap.n_eta)
    w.append_many(idx[:5], sids[:5], ts[:5], lo[:5], ck[:5])
    w.flush()

    # a fresh reader in another process, opened while the writer holds the file
    code = ("import sys,h5py; f=h5py.File(sys.argv[1],'r',swmr=True); e=f['entry'];"
            "print(e['data/I'].shape[0], int(e.attrs['frames_written']), bool(e.attrs['run_complete']))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "5", "False"]

    # a long-lived reader follows the run by refreshing /entry/data/I
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().split() == ["open", "5"]
        seen = []
        for a, b in ((5, 12), (12, 30)):
            w.append_many(idx[a:b], sids[a:b], ts[a:b], lo[a:b], ck[a:b])
            w.flush()
            reader.stdin.write("next\n")
            reader.stdin.flush()
            seen.append(reader.stdout.readline().split())
        w.close()
        reader.stdin.write("next\n")
        reader.stdin.flush()
        seen.append(reader.stdout.readline().split())
        reader.stdin.close()
        assert reader.wait(timeout=30) == 0, reader.stderr.read()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert seen == [["12", "12", "11", "False"], ["30", "30", "29", "False"], ["30", "30", "29", "True"]]


def test_layout_is_made_under_a_hidden_name_and_renamed_once_in_swmr_mode(tmp_path, built, monkeypatch):
    import os

    import ringstream.writer.hdf5 as hdf5

    p, imap = built
    path = tmp_path / "o.h5"
    # a draft a writer killed while making the layout left (pid 2**22 + 7: not a running process)
    stale = tmp_path / ".o.h5.making-4194311"
    stale.write_bytes(b"\x89HDF\r\n\x1a\n half-made")
    seen = {}
    real = os.replace

    def spy(src, dst):  # when the rename comes, the draft is complete and already in SWMR mode
        with open(src, "rb") as fh:
            seen["flags"] = fh.read(12)[11]
        seen["src"] = Path(src).name
        return real(src, dst)

    monkeypatch.setattr(hdf5.os, "replace", spy)
    with Hdf5Writer(path, imap, p, engine_name="cpu", write_2d=False) as w:
        assert path.exists() and not stale.exists()
        assert sorted(q.name for q in tmp_path.iterdir()) == ["o.h5"]
        w.append(0, "a", None, np.ones(imap.n_r))
    assert seen["src"] == f".o.h5.making-{os.getpid()}" and seen["flags"] & 4  # SWMR-write flag set
    with h5py.File(path, "r") as f:
        assert f["entry/data/I"].shape == (1, imap.n_r)


def test_a_layout_that_fails_leaves_no_file(tmp_path, built, monkeypatch):
    import ringstream.writer.hdf5 as hdf5

    p, imap = built

    def boom(self, *a, **k):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(hdf5.Hdf5Writer, "_create_layout", boom)
    with pytest.raises(RuntimeError, match="disk gone"):
        Hdf5Writer(tmp_path / "o.h5", imap, p, engine_name="cpu", write_2d=False)
    assert list(tmp_path.iterdir()) == []


def test_chunk_rows_writes_compressed_rows_in_a_thread_and_hands_back_its_error(tmp_path, monkeypatch):
    """``ChunkRows``: the compressed rows put (in batches of consecutive rows) are in the file, byte for byte, once
    ``wait`` returns, the dataset grown to take them; a write that fails (a full disk) is raised by ``wait`` (every
    time), the rows put after it are refused, and ``discard`` drops rows not written yet."""
    import errno

    from ringstream.compression import hdf5_chunk
    from ringstream.writer import hdf5_c
    from ringstream.writer.hdf5 import ChunkRows
    from ringstream.writer.storage import Chunks, hdf5_compression

    rng = np.random.default_rng(2)
    rows = [rng.poisson(30, (16, 8)).astype(np.float32) for _ in range(21)]
    chunks = [Chunks.made(hdf5_chunk(r), None, (16, 8), "<f4") for r in rows]
    with h5py.File(tmp_path / "c.h5", "w", libver="latest") as f:
        ds = f.create_dataset("I", shape=(0, 16, 8), maxshape=(None, 16, 8), dtype="f4", chunks=(1, 16, 8),
                              **hdf5_compression())
        w = ChunkRows(ds)
        for k in range(13):
            assert w.put(k, chunks[k])
        w.wait()
        assert ds.shape == (13, 16, 8)
        for k in range(13):
            assert ds.id.read_direct_chunk((k, 0, 0))[1] == chunks[k].hdf5()
        np.testing.assert_array_equal(ds[:13], np.stack(rows[:13]))
        w.close()
        assert not w.put(13, chunks[13])  # closed

        w = ChunkRows(ds)
        full = OSError(errno.ENOSPC, "No space left on device")

        def refuse(dsid, first, made):
            raise full

        monkeypatch.setattr(hdf5_c, "write_chunks", refuse)
        assert w.put(13, chunks[13])
        for _ in range(2):
            with pytest.raises(OSError) as e:
                w.wait()
            assert e.value is full
        assert not w.put(14, chunks[14])
        w.close()
        monkeypatch.undo()

        w = ChunkRows(ds)
        entered, gate = threading.Event(), threading.Event()
        first = hdf5_c.write_chunks

        def held(*a):
            entered.set()
            return gate.wait(10) and first(*a)

        monkeypatch.setattr(hdf5_c, "write_chunks", held)
        assert w.put(13, chunks[13])
        assert entered.wait(10)  # 13 is being written (held at the gate); 14..20 wait in the queue
        for k in range(14, 21):
            assert w.put(k, chunks[k])
        threading.Timer(0.2, gate.set).start()
        w.discard()
        w.wait()
        w.close()
        assert ds.shape == (14, 16, 8)
        np.testing.assert_array_equal(ds[13], rows[13])

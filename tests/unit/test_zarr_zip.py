"""The zarr.zip members ringstream writes itself are byte for byte what zarr 3 writes for the same arrays."""

from __future__ import annotations

import json
import types
import zipfile

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from ringstream.writer.omega import OmegaGroup
from ringstream.writer.storage import CAKE_DTYPES, zarr_compressor
from ringstream.writer.zarr_zip import ZarrZipSink, group_attrs, instrument_parameters


def _chunk(z: zipfile.ZipFile, member: str, shape=(6, 4), dtype="<f4") -> np.ndarray:
    """A chunk member of the ZIP, decompressed."""
    return np.frombuffer(zarr_compressor().decode(z.read(member)), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("dtype", CAKE_DTYPES)
def test_group_members_equal_what_zarr_writes(tmp_path, dtype):
    rng = np.random.default_rng(0)
    remap = rng.random((5, 6, 4))
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(3)]
    groups[2].sum[0, 0] = 0.0
    sink = ZarrZipSink(tmp_path / "a.zarr.zip", remap, {"Lam": 0.2, "Distance": 1e6}, 4, dtype=dtype)
    for g in groups:
        sink.add_group(g)
    sink.close()
    # the same arrays through zarr 3 alone: the sums rounded once to the stored dtype, Blosc LZ4 bit-shuffled
    root = zarr.open_group(LocalStore(str(tmp_path / "ref")), mode="w", zarr_format=2)
    osf = root.create_group("OmegaSumFrame")
    for g in groups:
        a = osf.create_array(g.name(4), shape=(6, 4), dtype=dtype, chunks=(6, 4), compressors=zarr_compressor(),
                             fill_value=0.0, attributes=group_attrs(g), config={"write_empty_chunks": True})
        a[...] = g.sum.astype(dtype)
    with zipfile.ZipFile(tmp_path / "a.zarr.zip") as z:
        for g in groups:
            for member in (".zarray", ".zattrs", "0.0"):
                name = f"OmegaSumFrame/{g.name(4)}/{member}"
                assert z.read(name) == (tmp_path / "ref" / name).read_bytes(), name
        assert [n for n in z.namelist() if n.startswith("OmegaSumFrame/") and n.endswith("/.zarray")] == [
            f"OmegaSumFrame/LastFrameNumber_{k:04d}/.zarray" for k in (2, 5, 8)]


def test_each_publication_appends_to_a_private_copy_and_the_last_copies_nothing(tmp_path, monkeypatch):
    from ringstream.writer import zarr_zip

    copies = []
    real_copy = zarr_zip.shutil.copyfile
    monkeypatch.setattr(zarr_zip.shutil, "copyfile", lambda a, b: copies.append((a, b)) or real_copy(a, b))
    rng = np.random.default_rng(1)
    path = tmp_path / "p.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(4)]

    def private():
        return sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))

    for k, g in enumerate(groups[:3]):
        sink.add_group(g)
        assert sink.publish(wait=True)
        assert len(copies) == k + 1 and copies[-1][0] == path  # the published ZIP, copied for the next one
        (nxt,) = private()
        with zipfile.ZipFile(path) as z, zipfile.ZipFile(tmp_path / nxt) as c:
            assert z.namelist() == c.namelist() and [z.read(n) for n in z.namelist()] == [c.read(n) for n in
                                                                                          c.namelist()]
            assert f"OmegaSumFrame/{g.name(4)}/0.0" in z.namelist()
    inode = path.stat().st_ino
    sink.add_group(groups[3])
    assert sink.publish(wait=False, force=True, final=True)
    sink.close()
    assert len(copies) == 3 and private() == []  # the last publication renamed the private ZIP: no copy
    assert path.stat().st_ino != inode
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        for g in groups:
            assert np.array_equal(_chunk(z, f"OmegaSumFrame/{g.name(4)}/0.0"), np.float32(g.sum))


def test_a_failed_copy_for_the_next_publication_is_made_again_by_it(tmp_path, monkeypatch):
    from ringstream.writer import zarr_zip

    rng = np.random.default_rng(2)
    path = tmp_path / "q.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.0, 1.0) for g in range(2)]
    real_copy = zarr_zip.shutil.copyfile

    def full(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr_zip.shutil, "copyfile", full)
    sink.add_group(groups[0])
    assert sink.publish(wait=True)  # published; the copy for the next one failed and was removed
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    sink.add_group(groups[1])
    try:
        sink.publish(wait=True)  # the disk is still full: this publication says so, the last ZIP stays
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("a publication that cannot copy the last ZIP must fail")
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None and f"OmegaSumFrame/{groups[1].name(4)}/0.0" not in z.namelist()
    monkeypatch.setattr(zarr_zip.shutil, "copyfile", real_copy)
    sink.add_group(OmegaGroup(2, rng.random((6, 4)), 3, 6, 8, 0.0, 1.0))
    assert sink.publish(wait=True, final=True)
    sink.close()
    with zipfile.ZipFile(path) as z:  # made from a fresh copy of the last published ZIP
        assert z.testzip() is None
        assert {"OmegaSumFrame/LastFrameNumber_0002/0.0", "OmegaSumFrame/LastFrameNumber_0008/0.0"} <= set(
            z.namelist())


def test_skipped_publications_spool_their_groups_into_the_next_zip_without_a_copy(tmp_path, monkeypatch):
    from ringstream.writer import zarr_zip

    copies = []
    real_copy = zarr_zip.shutil.copyfile
    monkeypatch.setattr(zarr_zip.shutil, "copyfile", lambda a, b: copies.append((a, b)) or real_copy(a, b))
    rng = np.random.default_rng(3)
    path = tmp_path / "s.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(5)]
    sink.add_group(groups[0])
    assert sink.publish(wait=True) and len(copies) == 1
    sink._last_seconds = 3600.0  # as if the last copy took an hour: the next saves do not publish
    for g in groups[1:4]:
        sink.add_group(g)
        assert not sink.publish(wait=False)
        sink._join(True)
        assert sink._pending == []  # written into the next ZIP: nothing of it held here any more
    assert sink.skipped == 3 and sink.spooled == 3 and len(copies) == 1  # no copy for a spool
    with zipfile.ZipFile(path) as z:  # the published file is the one of the first publication
        assert [n for n in z.namelist() if n.endswith("/0.0")] == [f"OmegaSumFrame/{groups[0].name(4)}/0.0"]
    sink.add_group(groups[4])
    assert sink.publish(wait=False, force=True, final=True)
    sink.close()
    assert len(copies) == 1 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        names = [n for n in z.namelist() if n.endswith("/0.0")]
        assert names == [f"OmegaSumFrame/{g.name(4)}/0.0" for g in groups]  # each once, in order
        for g in groups:
            assert np.array_equal(_chunk(z, f"OmegaSumFrame/{g.name(4)}/0.0"), np.float32(g.sum))
    z = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r", zarr_format=2)
    assert list(z["OmegaSumFrame"].keys()) == [g.name(4) for g in groups]
    assert z["OmegaSumFrame"][groups[2].name(4)].attrs["LastFrameNumber"] == 8


def test_a_failed_spool_is_raised_and_leaves_the_published_zip_whole(tmp_path, monkeypatch):
    import pytest

    from ringstream.writer import zarr_zip

    rng = np.random.default_rng(4)
    path = tmp_path / "f.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.0, 1.0) for g in range(3)]
    sink.add_group(groups[0])
    assert sink.publish(wait=True)
    published = path.read_bytes()
    sink._last_seconds = 3600.0

    class Full(zipfile.ZipFile):
        def writestr(self, *a, **k):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr_zip.zipfile, "ZipFile", Full)
    sink.add_group(groups[1])
    assert not sink.publish(wait=False)  # the spool runs, and fails, in the background
    with pytest.raises(OSError) as first:
        sink._join(True)
    assert first.value.errno == 28
    monkeypatch.setattr(zarr_zip.zipfile, "ZipFile", zipfile.ZipFile)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # the next ZIP is gone
    sink.add_group(groups[2])
    with pytest.raises(OSError, match=r"f\.zarr\.zip: the omega-sum groups after the last publication were lost "
                                      r".*the published file holds 1 groups"):
        sink.publish(wait=True, final=True)
    assert path.read_bytes() == published  # whole, untouched
    sink.abandon()


def _members(path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        return [n for n in z.namelist() if n.endswith("/0.0")]


def test_groups_spooled_since_the_last_publication_are_published_at_the_end_without_new_ones(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "s.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(3)]
    sink.add_group(groups[0])
    assert sink.publish(wait=True)
    sink._last_seconds = 3600.0  # the next saves only spool
    for g in groups[1:]:
        sink.add_group(g)
        assert not sink.publish(wait=False)
    assert sink.publish(wait=False, force=True, final=True)  # no group since the last save: its spool counts
    sink.close()
    assert _members(path) == [f"OmegaSumFrame/{g.name(4)}/0.0" for g in groups]


def test_restore_publishes_exactly_the_groups_given_then_goes_on(tmp_path):
    rng = np.random.default_rng(5)
    remap = rng.random((5, 6, 4))
    groups = [OmegaGroup(g, rng.random((6, 4)), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(4)]
    want = ZarrZipSink(tmp_path / "w.zarr.zip", remap, {"Lam": 0.2}, 4)
    for g in groups:
        want.add_group(g)
    want.close()
    path = tmp_path / "r.zarr.zip"
    path.write_bytes(b"a half-written file of a killed writer")
    sink = ZarrZipSink(path, remap, {"Lam": 0.2}, 4)
    taken = []
    sink.restore(taken.append(g) or g for g in groups[:3])
    assert len(taken) == 3 and sink.groups_published == 3
    assert _members(path) == [f"OmegaSumFrame/{g.name(4)}/0.0" for g in groups[:3]]
    sink.add_group(groups[3])
    sink.close()
    with zipfile.ZipFile(path) as got, zipfile.ZipFile(tmp_path / "w.zarr.zip") as ref:
        assert sorted(got.namelist()) == sorted(ref.namelist())
        assert all(got.read(n) == ref.read(n) for n in ref.namelist())
    empty = ZarrZipSink(tmp_path / "e.zarr.zip", remap, {"Lam": 0.2}, 4)
    empty.restore([])
    assert _members(tmp_path / "e.zarr.zip") == []
    empty.close()


@pytest.mark.parametrize("dtype", CAKE_DTYPES)
def test_zarr_open_decodes_the_float64_sums_rounded_once(tmp_path, dtype):
    """zarr.open on the ZIP (as GSAS-II's importer reads it) gives each sum as ``np.float32(sum64)`` exactly (float64:
    the sum itself); REtaMap and the sums are Blosc LZ4 bit-shuffled, InstrumentParameters are not compressed."""
    rng = np.random.default_rng(7)
    remap = rng.random((5, 30, 8))
    # sums of float32 cakes in float64: more mantissa bits than float32 holds, so the rounding is visible
    sums = [np.sum(rng.random((5, 30, 8)).astype(np.float32), axis=0, dtype=np.float64) * 1e3 for _ in range(3)]
    groups = [OmegaGroup(g, sums[g], 5, 5 * g, 5 * g + 4, 0.0, 1.0) for g in range(3)]
    path = tmp_path / "d.zarr.zip"
    sink = ZarrZipSink(path, remap, {"Lam": 0.2}, 2, dtype=dtype)
    for g in groups[:2]:
        sink.add_group(g)
    sink.publish(wait=True)
    sink.add_group(groups[2])  # (written by the sink itself, not by zarr)
    sink.close()
    with zipfile.ZipFile(path) as z:
        meta = {n: json.loads(z.read(n)) for n in z.namelist() if n.endswith(".zarray")}
    codec = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 2, "blocksize": 0}
    assert meta["REtaMap/.zarray"]["compressor"] == codec
    assert all(meta[f"OmegaSumFrame/{g.name(2)}/.zarray"]["compressor"] == codec for g in groups)
    assert meta["InstrumentParameters/Lam/.zarray"]["compressor"] is None
    root = zarr.open(zarr.storage.ZipStore(str(path), mode="r"), mode="r")  # (zarr 2.18: zarr.open(path))
    np.testing.assert_array_equal(root["REtaMap"][...], remap)
    for g, s in zip(groups, sums, strict=True):
        got = root["OmegaSumFrame"][g.name(2)][...]
        want = np.float32(s) if dtype == "float32" else s
        assert got.dtype == np.dtype(dtype) and got.tobytes() == want.tobytes()
    if dtype == "float32":
        rel = np.abs(got.astype(np.float64) - s) / np.abs(s)
        assert rel.max() <= 2.0**-24 and rel.max() > 0


def test_an_unknown_wavelength_writes_no_lam(tmp_path, caplog):
    class P:
        Wavelength = 0.0
        Lsd = 9e5

    caplog.set_level("INFO", logger="ringstream.writer.zarr_zip")
    ip = instrument_parameters(P())
    assert "Lam" not in ip and ip["Distance"] == 9e5 and ip["Polariz"] == 0.99
    assert sum("wavelength is unknown" in r.getMessage() for r in caplog.records) == 1
    P.Wavelength = 0.1665
    assert instrument_parameters(P())["Lam"] == 0.1665
    path = tmp_path / "l.zarr.zip"
    ZarrZipSink(path, np.zeros((5, 3, 2)), instrument_parameters(types.SimpleNamespace(Wavelength=0)), 2).close()
    root = zarr.open(zarr.storage.ZipStore(str(path), mode="r"), mode="r")  # (zarr 2.18: zarr.open(path))
    assert "Lam" not in root["InstrumentParameters"] and "Distance" in root["InstrumentParameters"]

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


def _groups(rng, n, shape=(6, 4)):
    return [OmegaGroup(g, rng.random(shape), 3, 3 * g, 3 * g + 2, 0.5 * g, 0.5 * g + 1.0) for g in range(n)]


def _check_groups(path, groups) -> None:
    z = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r", zarr_format=2)
    assert list(z["OmegaSumFrame"].keys()) == [g.name(4) for g in groups]
    for g in groups:
        np.testing.assert_array_equal(z["OmegaSumFrame"][g.name(4)][...], np.float32(g.sum))  # the default dtype
        assert z["OmegaSumFrame"][g.name(4)].attrs["LastFrameNumber"] == g.last_frame


def test_each_publication_adds_to_the_published_file_in_place_and_copies_nothing(tmp_path, monkeypatch):
    from ringstream.writer import zarr_zip

    monkeypatch.setattr(zarr_zip.shutil, "copyfile", None)  # a copy would fail
    rng = np.random.default_rng(1)
    path = tmp_path / "p.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 60, 40)), {"Lam": 0.2}, 4)
    groups = _groups(rng, 6, (60, 40))
    sink.add_group(groups[0])
    assert sink.publish(wait=True)
    inode, size = path.stat().st_ino, path.stat().st_size
    for k, g in enumerate(groups[1:5], 1):
        sink.add_group(g)
        assert sink.publish(wait=False)  # (19 kB of new sum against a directory of < 2 kB)
        sink._join(True)
        assert path.stat().st_ino == inode
        _check_groups(path, groups[:k + 1])
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    # the file grew by about the new groups: no second copy of it anywhere
    assert path.stat().st_size - size < 4 * (60 * 40 * 8 + 1000) + 2 * sink._zip.directory_bytes
    sink.add_group(groups[5])
    assert sink.publish(wait=False, force=True, final=True)
    sink.close()
    assert path.stat().st_ino == inode and sink.groups_published == 6
    _check_groups(path, groups)
    assert [p.name for p in tmp_path.iterdir()] == ["p.zarr.zip"]


def test_the_end_of_a_run_with_no_new_group_still_leaves_a_compact_file(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "c.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = _groups(rng, 2)
    for g in groups:
        sink.add_group(g)
    assert sink.publish(wait=True) and sink._zip.free_bytes > 0  # a hole for the next groups
    assert sink.publish(wait=False, force=True, final=True)  # none came: the hole is cut away
    sink.close()
    with zipfile.ZipFile(path) as z:
        compact = sum(30 + 46 + 2 * len(i.filename) + i.file_size for i in z.infolist()) + 22
    assert path.stat().st_size == compact
    _check_groups(path, groups)


def test_a_save_interval_with_less_new_than_the_directory_waits_for_more(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = _groups(rng, 5)
    sink.add_group(groups[0])
    assert sink.publish(wait=True)
    for g in groups[1:3]:  # ~500 bytes of sum and zarr metadata each, against a directory of ~1 kB
        sink.add_group(g)
        assert not sink.publish(wait=False)
    assert sink.skipped == 2 and sink.groups_published == 1
    _check_groups(path, groups[:1])
    sink.add_group(groups[3])
    assert sink.publish(wait=False)  # now more new bytes than the directory
    sink._join(True)
    _check_groups(path, groups[:4])
    sink.add_group(groups[4])
    assert sink.publish(wait=False, force=True, final=True)  # the end of the run always publishes
    sink.close()
    _check_groups(path, groups)


def test_a_failed_publication_leaves_the_zip_whole_and_the_next_one_has_its_groups(tmp_path, monkeypatch):
    import errno

    import pytest

    from ringstream.writer import zip_append

    rng = np.random.default_rng(2)
    path = tmp_path / "q.zarr.zip"
    sink = ZarrZipSink(path, rng.random((5, 6, 4)), {"Lam": 0.2}, 4)
    groups = _groups(rng, 3)
    sink.add_group(groups[0])
    assert sink.publish(wait=True)
    published = path.read_bytes()
    real = zip_append.os.pwritev

    def full(fd, buffers, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zip_append.os, "pwritev", full)
    sink.add_group(groups[1])
    assert sink.publish(wait=False, force=True)
    with pytest.raises(OSError) as exc:
        sink._join(True)
    assert exc.value.errno == errno.ENOSPC and path.read_bytes() == published
    monkeypatch.setattr(zip_append.os, "pwritev", real)
    sink.add_group(groups[2])
    assert sink.publish(wait=True, final=True)
    sink.close()
    _check_groups(path, groups)


def _members(path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        return [n for n in z.namelist() if n.endswith("/0.0")]


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


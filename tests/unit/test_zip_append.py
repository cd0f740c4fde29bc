"""GrowingZip: a stored ZIP grown in place, read by Python's zipfile (what zarr 2 and 3 use) after every
publication, never copied, cut back to the published ZIP after a failed or killed publication."""

from __future__ import annotations

import errno
import itertools
import os
import zipfile

import numpy as np
import pytest

from ringstream.writer import zip_append
from ringstream.writer.zip_append import GrowingZip, cut_partial_publication


def _member(k: int, n: int = 1000) -> tuple[str, bytes]:
    return f"OmegaSumFrame/LastFrameNumber_{k:06d}/0.0", np.random.default_rng(k).random(n).tobytes()


def _check(path, members) -> None:
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert z.namelist() == [name for name, _ in members]
        for name, data in members:
            assert z.read(name) == data


def _compact(members) -> int:
    """The size of a ZIP of ``members`` written at once (headers, data, directory, end record)."""
    return sum(30 + 46 + 2 * len(n) + len(d) for n, d in members) + 22


def test_publications_go_into_the_hole_and_the_last_leaves_a_compact_file(tmp_path):
    path = tmp_path / "g.zarr.zip"
    members = [_member(k) for k in range(3)]
    z = GrowingZip.create(path, members, expect=200_000)
    inode = path.stat().st_ino
    _check(path, members)
    assert [p.name for p in tmp_path.iterdir()] == ["g.zarr.zip"]  # the private file was renamed
    assert z.free_bytes >= 200_000 and path.stat().st_blocks * 512 < 100_000  # the hole takes no disk
    for start in range(3, 18, 3):
        new = [_member(k) for k in range(start, start + 3)]
        before = z.size
        z.append(new)
        members += new
        _check(path, members)
        # into the hole; the file is cut after the new directory, below the old one: it never grows here
        assert path.stat().st_ino == inode and path.stat().st_size == z.size < before
    z.append([_member(99)], final=True)
    members.append(_member(99))
    _check(path, members)
    assert z.free_bytes == 0 and z.size == _compact(members)
    z.close()


def test_a_full_hole_grows_the_file_first(tmp_path):
    path = tmp_path / "w.zarr.zip"
    z = GrowingZip.create(path, [_member(0)], expect=0)  # a hole of a quarter of the file: 2 kB
    assert 0 < z.free_bytes < 8100
    new = [_member(k) for k in range(1, 4)]
    size = z.size
    z.append(new, expect=50_000)  # grown by what they need and the 50 kB expected, then published into the hole
    _check(path, [_member(0)] + new)
    assert z.size > size and z.free_bytes >= 50_000
    z.close()


def test_a_reader_that_opened_before_keeps_reading_its_members(tmp_path):
    path = tmp_path / "r.zarr.zip"
    first = [_member(k) for k in range(4)]
    z = GrowingZip.create(path, first, expect=10_000)
    early = zipfile.ZipFile(path)
    for k in range(4, 40):  # (the file grows several times: later members go over the old directories)
        z.append([_member(k)], expect=10_000)
    z.append([], final=True)
    for name, data in first:
        assert early.read(name) == data
    early.close()
    with zipfile.ZipFile(path) as f:
        assert f.testzip() is None and len(f.namelist()) <= 40
    z.close()


def test_a_failed_publication_cuts_the_file_back_and_the_next_one_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "f.zarr.zip"
    z = GrowingZip.create(path, [_member(0)], expect=0)
    size = path.stat().st_size
    real = os.pwritev
    calls = []

    def full(fd, buffers, offset):
        calls.append(offset)
        real(fd, [b"\0" * 100], offset)  # (a part of it)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zip_append.os, "pwritev", full)
    with pytest.raises(OSError) as exc:  # the directory written past the end, for a larger hole
        z.append([_member(1)], final=True)
    assert exc.value.errno == errno.ENOSPC and calls[0] > size
    monkeypatch.setattr(zip_append.os, "pwritev", real)
    assert path.stat().st_size == size
    _check(path, [_member(0)])
    z.append([_member(1)], expect=100_000)
    calls.clear()
    monkeypatch.setattr(zip_append.os, "pwritev", full)
    with pytest.raises(OSError):  # into the hole this time: the file is as it was
        z.append([_member(2)])
    monkeypatch.setattr(zip_append.os, "pwritev", real)
    _check(path, [_member(0), _member(1)])
    z.append([_member(2)], final=True)
    _check(path, [_member(0), _member(1), _member(2)])
    z.close()


def test_a_killed_publication_is_cut_to_the_last_published_zip(tmp_path):
    path = tmp_path / "k.zarr.zip"
    members = [_member(k) for k in range(5)]
    z = GrowingZip.create(path, members, expect=0)
    z.close()
    assert cut_partial_publication(path) == 0
    size = path.stat().st_size
    with open(path, "ab") as f:  # what a writer killed while writing the members past the end leaves
        f.write(zip_append.local_header(b"x", 0, 0, 200_000) + b"\x01" * 100_000)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)
    assert cut_partial_publication(path) == 100_000 + 31
    assert path.stat().st_size == size
    _check(path, members)
    path.write_bytes(b"not a zip at all")
    assert cut_partial_publication(path) is None


def test_zip64_past_65535_members_and_4_gib(tmp_path):
    path = tmp_path / "big.zarr.zip"
    z = GrowingZip.create(path, [(f"a/{k}", b"%d" % k) for k in range(70_000)], expect=(1 << 32) + 10)
    z._hole = z._cd_offset  # (as if the hole were full: the last member goes past it, where its offset needs zip64)
    z.append([("b/far", b"past 4 GiB (a hole)")], final=True)
    z.close()
    with zipfile.ZipFile(path) as f:
        assert len(f.namelist()) == 70_001
        assert f.read("a/69999") == b"69999" and f.read("b/far") == b"past 4 GiB (a hole)"
        assert f.getinfo("b/far").header_offset > 1 << 32
    assert os.stat(path).st_blocks * 512 < 100 << 20  # the hole takes no disk
    assert cut_partial_publication(path) == 0


def test_the_next_start_and_repair_cut_a_killed_publication(tmp_path, caplog):
    from ringstream.writer.repair import cut_zarr_tail

    path = tmp_path / "run.zarr.zip"
    GrowingZip.create(path, [_member(0)]).close()
    with open(path, "ab") as f:
        f.write(b"\x01" * 70_000)  # past the 64 KiB in which zipfile looks for the end record
    assert cut_zarr_tail(path) == 70_000 and "cut 70000 bytes" in caplog.text
    _check(path, [_member(0)])
    assert cut_zarr_tail(path) == 0 and cut_zarr_tail(tmp_path / "none.zarr.zip") is None


def test_members_given_as_pieces_are_written_whole_past_one_pwritev(tmp_path, monkeypatch):
    """A member's data may be a list of pieces (a zarr chunk made of an HDF5 chunk's blocks): written one after the
    other, their CRC the whole member's, whether gathered in the arena (which fills and is used again) or written as
    pieces (larger than the arena), also when a publication needs more than one ``pwritev`` (IOV_MAX buffers, or a
    batch of bytes)."""
    monkeypatch.setattr(zip_append, "_IOV_MAX", 16)
    monkeypatch.setattr(zip_append, "_BATCH_BYTES", 5000)
    monkeypatch.setattr(GrowingZip, "ARENA_BYTES", 2000)  # gathered 2 at a time; the 4,000-byte ones as pieces
    rng = np.random.default_rng(4)
    whole = [(f"m/{k}", rng.integers(0, 256, 4000 if k in (2, 6, 7) else 700 + 37 * k, dtype=np.uint8).tobytes())
             for k in range(12)]

    def pieces(data):  # bytes and read-only byte views, of uneven sizes
        cuts = [0, 1, 5, 64, 65, 300, len(data)]
        return [data[a:b] if i % 2 else memoryview(data)[a:b] for i, (a, b) in enumerate(itertools.pairwise(cuts))]

    z = GrowingZip.create(tmp_path / "p.zip", [(n, pieces(d)) for n, d in whole[:4]], expect=1000)
    _check(tmp_path / "p.zip", whole[:4])
    z.append([(n, pieces(d)) for n, d in whole[4:9]])  # grows: more than the hole holds
    _check(tmp_path / "p.zip", whole[:9])
    z.append([(n, pieces(d)) for n, d in whole[9:]], final=True)
    z.close()
    _check(tmp_path / "p.zip", whole)
    assert os.path.getsize(tmp_path / "p.zip") == _compact(whole)


def test_zarr_chunks_made_of_hdf5_chunks_are_gathered_byte_for_byte(tmp_path, monkeypatch):
    """Members given as :class:`~ringstream.compression.ZarrOfHdf5` (a sum's zarr chunk made of its HDF5 chunk's
    blocks, as the writer publishes them) are written as ``zarr_from_hdf5`` makes them, and numcodecs' Blosc decodes
    them to the values: gathered in the arena (which fills and is used again, beside members of other kinds) or,
    larger than the arena, made whole on their own."""
    from numcodecs import Blosc

    from ringstream.compression import hdf5_chunk, zarr_from_hdf5, zarr_of_hdf5

    monkeypatch.setattr(GrowingZip, "ARENA_BYTES", 60_000)
    rng = np.random.default_rng(9)
    values = [rng.poisson(40.0, n).astype(np.float32) for n in (8, 2048, 2056, 9000, 30_000, 4096, 70_000)]
    chunks = [hdf5_chunk(v) for v in values]
    members = [(f"s/{k}", zarr_of_hdf5(c, 4)) for k, c in enumerate(chunks)]
    assert all(m is not None for _, m in members)
    assert sum(m.nbytes > GrowingZip.ARENA_BYTES for _, m in members) == 1
    z = GrowingZip.create(tmp_path / "z.zip", members[:3] + [("b/0", b"plain bytes")], expect=100)
    z.append(members[3:], final=True)
    z.close()
    with zipfile.ZipFile(tmp_path / "z.zip") as f:
        assert f.testzip() is None and f.read("b/0") == b"plain bytes"
        for k, (c, v) in enumerate(zip(chunks, values, strict=True)):
            got = f.read(f"s/{k}")
            assert got == zarr_from_hdf5(c, 4)
            np.testing.assert_array_equal(np.frombuffer(Blosc().decode(got), np.float32), v)

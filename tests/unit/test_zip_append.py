"""GrowingZip: a stored ZIP grown in place, read by Python's zipfile (what zarr 2 and 3 use) after every
publication, never copied, cut back to the published ZIP after a failed or killed publication."""

from __future__ import annotations

import errno
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


def test_appends_in_place_reuse_the_old_directory_and_the_reserve(tmp_path):
    path = tmp_path / "g.zarr.zip"
    members = [_member(k) for k in range(3)]
    z = GrowingZip.create(path, members, expect=30_000)
    inode = path.stat().st_ino
    _check(path, members)
    assert [p.name for p in tmp_path.iterdir()] == ["g.zarr.zip"]  # the private file was renamed
    for start in range(3, 30, 3):
        new = [_member(k) for k in range(start, start + 3)]
        before = z.size
        z.append(new, expect=30_000)
        members += new
        _check(path, members)
        assert path.stat().st_ino == inode and path.stat().st_size == z.size
        # grows by at most what is new, the reserve and the directory: never by a copy
        assert z.size - before <= 3 * 8100 + 30_000 + z.directory_bytes + 22
        assert z.free_bytes <= 30_000 + z.directory_bytes + 3 * 8100
    z.append([_member(99)], expect=0)
    members.append(_member(99))
    _check(path, members)
    live = sum(30 + len(n) + len(d) for n, d in members) + z.directory_bytes + 22
    # dead: about one reserve and one directory, and pieces too small for a member
    assert z.size - live == z.free_bytes <= 30_000 + z.directory_bytes + 3 * 8100
    z.close()


def test_a_reader_that_opened_before_keeps_reading_its_members(tmp_path):
    path = tmp_path / "r.zarr.zip"
    first = [_member(k) for k in range(4)]
    z = GrowingZip.create(path, first, expect=10_000)
    early = zipfile.ZipFile(path)
    for k in range(4, 40):
        z.append([_member(k)], expect=10_000)  # every later member goes into the old directories and reserves
    for name, data in first:
        assert early.read(name) == data
    early.close()
    _check(path, [_member(k) for k in range(40)])
    z.close()


def test_a_failed_publication_cuts_the_file_back_and_the_next_one_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "f.zarr.zip"
    z = GrowingZip.create(path, [_member(0)], expect=0)
    published = path.read_bytes()
    real = os.pwritev
    calls = []

    def full(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 2:  # the directory, after the member went past the end
            real(fd, [b"\0" * 100], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(zip_append.os, "pwritev", full)
    with pytest.raises(OSError) as exc:
        z.append([_member(1)], expect=0)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.setattr(zip_append.os, "pwritev", real)
    assert path.read_bytes() == published
    _check(path, [_member(0)])
    z.append([_member(1)], expect=0)
    _check(path, [_member(0), _member(1)])
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
    z._free.clear()  # (forget the hole: the next member goes past it, where its offset needs the zip64 extra)
    z.append([("b/far", b"past 4 GiB (a hole)")], expect=0)
    z.close()
    with zipfile.ZipFile(path) as f:
        assert len(f.namelist()) == 70_001
        assert f.read("a/69999") == b"69999" and f.read("b/far") == b"past 4 GiB (a hole)"
        assert f.getinfo("b/far").header_offset > 1 << 32
    assert os.stat(path).st_blocks * 512 < 100 << 20  # the hole takes no disk
    assert cut_partial_publication(path) == 0


def test_the_next_start_and_repair_cut_a_killed_publication(tmp_path, caplog):
    from ringstream.writer.runs import cut_zarr_tail

    path = tmp_path / "run.zarr.zip"
    GrowingZip.create(path, [_member(0)]).close()
    with open(path, "ab") as f:
        f.write(b"\x01" * 70_000)  # past the 64 KiB in which zipfile looks for the end record
    assert cut_zarr_tail(path) == 70_000 and "cut 70000 bytes" in caplog.text
    _check(path, [_member(0)])
    assert cut_zarr_tail(path) == 0 and cut_zarr_tail(tmp_path / "none.zarr.zip") is None

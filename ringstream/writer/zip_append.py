"""A stored (uncompressed) ZIP that grows in place: each publication writes what is new and a new central
directory, never a copy of the file (the GSAS-II zarr.zip, :mod:`ringstream.writer.zarr_zip`).

A ZIP is read from its end: the reader (Python's :mod:`zipfile`, which zarr 2 and 3 use) takes the end record in
the last 22 bytes, or the last one in the last 64 KiB, and the central directory must lie just before it; the
directory gives each member's offset. Bytes no directory entry points to are ignored. :class:`GrowingZip` keeps
that true at every moment but one short write:

1. the new members go into *free space below the end of the file*: the old directory and end record left by the
   publication before the last one, and a *reserve* (a hole: no disk blocks until written) left before the
   directory at the last publication, as large as the caller expects the next members to be, less the free space
   there is. The published directory does not point there and the file does not grow, so
   a reader opening the file meanwhile, and a writer killed meanwhile, see the last published ZIP, whole;
2. members that do not fit there go after the end, then the reserve hole, then the new directory (every member)
   and the end records, in one write;
3. the old directory and end record, and the new reserve, are the free space of the next publication (first fit,
   in file order; a piece too small for the next members stays dead).

While step 2 writes past the end, a reader that opens the file finds no end record and raises
``zipfile.BadZipFile`` (tests/integration/test_zarr_zip_append.py measures it: never a wrong member); it is the
time to write the directory (~1 ms per MB) plus the members that did not fit in the free space. A writer killed
during it leaves the last published ZIP whole on disk followed by a partial tail: :func:`cut_partial_publication`
cuts the tail (``ringstream repair``), and a continued run rebuilds the file anyway. A failed write (a full disk)
cuts the tail itself. Members are never overwritten, so a reader that opened the file before keeps reading it.

The directory is rewritten at every publication: the caller publishes when what is new is at least as large as
it (:attr:`GrowingZip.directory_bytes`) so time and dead bytes stay in proportion to what is new.
No fsync: this protects against a killed process, not a power cut.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

#: (name, bytes of the member): a member to add
Member = tuple[str, "bytes | bytearray | memoryview"]

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header (zipfile.structFileHeader)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry (zipfile.structCentralDir)
_END = struct.Struct("<4s4H2LH")  # end of central directory (zipfile.structEndArchive)
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end of central directory locator
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_DOS_DATE = (2020 - 1980) << 9 | 1 << 5 | 1  # 2020-01-01 00:00: members carry no meaningful time
_UNIX_FILE = 0o100644 << 16
#: a free extent smaller than this is forgotten (no member is that small: a header and a zarr name)
_SMALLEST = 64


def _name_bytes(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), 0x800  # flag bit 11: the name is UTF-8


def local_header(name: bytes, flags: int, crc: int, size: int) -> bytes:
    """The 30-byte local header of a stored member of ``size`` bytes (< 4 GiB), then its name."""
    if size >= _U32:
        raise ValueError(f"ZIP member {name!r}: {size} bytes, more than a stored member without zip64 holds")
    return _LOCAL.pack(b"PK\x03\x04", 20, 0, flags, 0, 0, _DOS_DATE, crc, size, size, len(name), 0) + name


def central_entry(name: bytes, flags: int, crc: int, size: int, offset: int) -> bytes:
    """The directory entry of a stored member whose local header is at ``offset`` (zip64 extra field past 4 GiB)."""
    extra = b""
    version = 20
    if offset >= _U32:
        extra, offset, version = struct.pack("<HHQ", 1, 8, offset), _U32, 45
    return _CENTRAL.pack(b"PK\x01\x02", version, 3, version, 0, flags, 0, 0, _DOS_DATE, crc, size, size,
                         len(name), len(extra), 0, 0, 0, _UNIX_FILE, offset) + name + extra


def end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    """The end records of a directory of ``count`` entries and ``cd_size`` bytes at ``cd_offset``, written right
    after it: zip64 ones first when a field does not fit in the 22-byte record."""
    if count < _U16 and cd_offset < _U32 and cd_size < _U32:
        return _END.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)
    end64 = cd_offset + cd_size
    return (_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0, count, count, cd_size, cd_offset)
            + _LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1)
            + _END.pack(b"PK\x05\x06", 0, 0, min(count, _U16), min(count, _U16), min(cd_size, _U32),
                        min(cd_offset, _U32), 0))


def _stored_size(member: Member) -> int:
    """The bytes a member takes in the file: its local header, name and data."""
    name, data = member
    return _LOCAL.size + len(_name_bytes(name)[0]) + memoryview(data).nbytes


def _pwrite_all(fd: int, buffers: list, offset: int) -> int:
    """Write ``buffers`` one after the other at ``offset``; returns the bytes written."""
    total = sum(memoryview(b).nbytes for b in buffers)
    done = os.pwritev(fd, buffers, offset)
    if done < total:  # (a signal or a nearly full disk: write the rest from where it stopped)
        rest = memoryview(b"".join(bytes(memoryview(b).cast("B")) for b in buffers))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]
    return total


class GrowingZip:
    """A stored ZIP at ``path`` that :meth:`append` grows in place (see the module docstring). Made by
    :meth:`create`, which publishes the first version by rename; holds the file open until :meth:`close`."""

    def __init__(self, path: Path, fd: int, end: int, cd_offset: int, directory: bytearray, count: int,
                 free: list[list[int]]) -> None:
        self.path = path
        self._fd = fd
        self._end = end  # the size of the published file: its end records end there
        self._cd_offset = cd_offset  # where the published directory starts
        self._cd = directory  # the published directory (every entry), kept to write the next one
        self._count = count
        self._free = free  # [start, end) extents below _cd_offset that no entry points to

    @classmethod
    def create(cls, path: str | os.PathLike, members: Iterable[Member], expect: int = 0) -> GrowingZip:
        """Write a ZIP of ``members`` (taken one at a time) under a private name beside ``path``, leave a hole of
        ``expect`` bytes before its directory for the next members, and rename it over ``path``."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            z = cls(path, fd, 0, 0, bytearray(), 0, [])
            z._commit(z._place(members, 0, True)[0], expect)
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            os.replace(tmp, path)  # atomic for readers; a killed writer leaves the file before whole
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        return z

    @property
    def directory_bytes(self) -> int:
        """The size of the published directory: what every publication writes besides its members."""
        return len(self._cd)

    @property
    def size(self) -> int:
        """The published file's size, bytes (members, the holes and dead bytes between them, directory)."""
        return self._end

    @property
    def free_bytes(self) -> int:
        """Bytes below the directory that no entry points to (the old directory, the reserve)."""
        return sum(e - s for s, e in self._free)

    def append(self, members: Iterable[Member], expect: int = 0, spill: bool = True) -> list[Member]:
        """Add ``members`` and publish the new directory (see the module docstring), with free space for
        ``expect`` bytes of next members below the end. ``spill=False``: members that do not fit in the free space
        are not written past the end; the first folder (a zarr array: its members go together) that does not fit
        and every one after it are returned, not published, and room is left for them. On any error the file is
        cut back to the published ZIP and the error raised; none of ``members`` is then in it."""
        saved = (len(self._cd), self._count, [list(x) for x in self._free])
        try:
            tail, rest = self._place(members, self._end, spill)
            self._commit(tail, expect + sum(_stored_size(m) for m in rest))
        except BaseException:
            n, self._count, self._free = saved
            del self._cd[n:]
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:  # (the tail stays: cut_partial_publication removes it)
                pass
            raise
        return rest

    def _place(self, members: Iterable[Member], tail: int, spill: bool) -> tuple[int, list[Member]]:
        """Write the members, folder by folder, into the free space, or at ``tail`` (which grows) with ``spill``,
        and add their entries to the directory. Returns the new tail and the members not written (from the first
        folder that did not fit, without ``spill``)."""
        if spill:  # (one at a time: create() takes them from a generator, a whole run's worth)
            batches: Iterable[list[Member]] = ([m] for m in members)
        else:
            members = list(members)
            batches = [list(b) for _, b in itertools.groupby(members, key=lambda m: m[0].rpartition("/")[0])]
        done = 0
        for batch in batches:
            offsets = self._fit([_stored_size(m) for m in batch])
            if offsets is None and not spill:
                return tail, members[done:]
            done += len(batch)
            for k, (name, data) in enumerate(batch):
                raw, flags = _name_bytes(name)
                view = memoryview(data).cast("B")
                crc = zlib.crc32(view)
                header = local_header(raw, flags, crc, view.nbytes)
                if offsets is None:
                    offset = tail
                    tail += len(header) + view.nbytes
                else:
                    offset = offsets[k]
                _pwrite_all(self._fd, [header, view], offset)
                self._cd += central_entry(raw, flags, crc, view.nbytes, offset)
                self._count += 1
        return tail, []

    def _fit(self, sizes: list[int]) -> list[int] | None:
        """Offsets for members of ``sizes`` bytes, all taken from the free extents (first fit), or None (and
        nothing taken) if one does not fit."""
        trial = [list(e) for e in self._free]
        offsets = []
        for need in sizes:
            for extent in trial:
                if extent[1] - extent[0] >= need:
                    offsets.append(extent[0])
                    extent[0] += need
                    break
            else:
                return None
        self._free = trial
        return offsets

    def _commit(self, tail: int, expect: int) -> None:
        """Write the directory and end records after ``tail`` and a hole that makes the free space ``expect``
        bytes: the new members are published."""
        free = self.free_bytes + self._end - self._cd_offset  # (the directory now published is free after this)
        cd_offset = tail + max(0, int(expect) - free)
        end = end_records(self._count, cd_offset, len(self._cd))
        _pwrite_all(self._fd, [self._cd, end], cd_offset)
        old_cd, old_end = self._cd_offset, self._end
        self._cd_offset, self._end = cd_offset, cd_offset + len(self._cd) + len(end)
        freed = [[old_cd, old_end]] if old_end > old_cd else []
        if cd_offset > tail:
            freed.append([tail, cd_offset])
        extents = sorted([e for e in self._free if e[1] - e[0] >= _SMALLEST] + freed)
        self._free = []
        for s, e in extents:  # (the old directory and the reserve are adjacent when nothing went past the end)
            if self._free and self._free[-1][1] == s:
                self._free[-1][1] = e
            else:
                self._free.append([s, e])

    def close(self) -> None:
        """Close the file (what is published stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _valid_end(f, at: int) -> bool:
    """True if an end record at ``at`` has its directory just before it, starting with an entry."""
    f.seek(at)
    rec = f.read(_END.size)
    if len(rec) < _END.size:
        return False
    _, disk, _, _, count, cd_size, cd_offset, _ = _END.unpack(rec)
    before = at
    if at >= _LOCATOR64.size + _END64.size:
        f.seek(at - _LOCATOR64.size)
        loc = f.read(_LOCATOR64.size)
        if loc[:4] == b"PK\x06\x07":
            f.seek(at - _LOCATOR64.size - _END64.size)
            rec64 = f.read(_END64.size)
            if rec64[:4] != b"PK\x06\x06":
                return False
            count, cd_size, cd_offset = _END64.unpack(rec64)[7:10]
            before = at - _LOCATOR64.size - _END64.size
    if disk != 0 or cd_offset + cd_size != before:
        return False
    if count == 0:
        return cd_size == 0
    f.seek(cd_offset)
    return f.read(4) == b"PK\x01\x02"


def cut_partial_publication(path: str | os.PathLike, block: int = 1 << 20) -> int | None:
    """Cut what a writer killed while publishing left after the last whole end record of the ZIP at ``path``, so
    that it opens again. Returns the bytes cut, 0 if the file ends with a whole end record, None if it has none
    (not a ZIP this module wrote)."""
    path = Path(path)
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size >= _END.size and _valid_end(f, size - _END.size):
            return 0
        hi = size
        while hi > 0:  # backwards, block by block (3 bytes of overlap for a signature across two blocks)
            lo = max(0, hi - block)
            f.seek(lo)
            data = f.read(min(hi + 3, size) - lo)
            at = data.rfind(b"PK\x05\x06")
            while at >= 0:
                if _valid_end(f, lo + at):
                    f.truncate(lo + at + _END.size)
                    return size - (lo + at + _END.size)
                at = data.rfind(b"PK\x05\x06", 0, at)
            hi = lo
    return None

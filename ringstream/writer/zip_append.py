"""A stored (uncompressed) ZIP that grows in place: each publication writes what is new and a new central
directory, never a copy of the file (the GSAS-II zarr.zip, :mod:`ringstream.writer.zarr_zip`).

A ZIP is read from its end: the reader (Python's :mod:`zipfile`, which zarr 2 and 3 use) takes the end record in
the last 22 bytes (or the last one in the last 64 KiB), and the central directory must lie just before it; the
directory gives each member's offset, and bytes no entry points to are ignored. The file is kept as

    [published members][hole: free, no disk blocks until written][directory][end record]  <- end of file

and a publication (:meth:`GrowingZip.append`) goes:

1. the new members are written into the hole, from its bottom. The published directory does not point there and
   the file does not change size, so a reader that opens the file meanwhile, and a writer killed meanwhile, see
   the last published ZIP, whole;
2. the new directory (every member) and end record are written into the hole too: at its top, just below the
   published directory (at the end of the run: just after the new members, which leaves no hole);
3. the file is cut (``ftruncate``) at the end of the new end record: one atomic step, after which a reader finds
   the new end record at the end of the file. The old directory is cut away.

So publishing never copies the file, and while the hole has room a reader sees either ZIP, whole (one that is
reading the old directory at the very moment of the cut gets ``zipfile.BadZipFile``). When the hole cannot take the new
members and the directory, the file *grows* first: the directory is written again past the end, after new space
(what the members need, what the caller expects the next publications to add, or a quarter of the file if that is
more): the old hole, the old directory and the new space are the new hole. While that write is under way a reader
that opens the file finds no end record (``zipfile.BadZipFile``: never a wrong member;
tests/integration/test_zarr_zip_append.py), and a writer killed then leaves the last published ZIP whole followed by
an unfinished tail, which :func:`cut_partial_publication` cuts (``ringstream repair``, the next start; a continued
run rebuilds the file anyway). The file grows a few tens of times in a run, each time for the time to write the
directory (~1 ms per MB, ~90 bytes a member). A failed write (a full disk) cuts the tail itself.
Members are never overwritten, so a reader that opened the file before keeps reading it. No fsync: this protects
against a killed process, not a power cut.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from ..compression import ZarrOfHdf5

try:  # ISA-L's CRC-32 (the ZIP one): ~50 GB/s against zlib's ~4 here, on every byte a publication writes
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    crc32 = zlib.crc32

#: (name, data): a member to add; its data bytes-like, a list of bytes-like pieces that follow one another (written
#: without a join), or a :class:`~ringstream.compression.ZarrOfHdf5` (a zarr chunk made of an HDF5 chunk's blocks,
#: written straight into the buffer the members are gathered in)
Member = tuple[str, "bytes | bytearray | memoryview | list | ZarrOfHdf5"]

#: the most buffers one ``pwritev`` takes (the system's IOV_MAX)
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024)
#: a batch of members is written once it holds this many bytes (fewer, larger writes; bounded memory)
_BATCH_BYTES = 32 << 20

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header (zipfile.structFileHeader)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry (zipfile.structCentralDir)
_END = struct.Struct("<4s4H2LH")  # end of central directory (zipfile.structEndArchive)
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end of central directory locator
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_MAX_END = _END64.size + _LOCATOR64.size + _END.size  # the most the end records take
_DOS_DATE = (2020 - 1980) << 9 | 1 << 5 | 1  # 2020-01-01 00:00: members carry no meaningful time
_UNIX_FILE = 0o100644 << 16


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


def _pieces(data) -> list:
    """A member's data as a list of buffers whose ``len`` is their bytes (a list of pieces is taken as it is: bytes
    and byte views)."""
    if type(data) is list:
        return data
    if type(data) is ZarrOfHdf5:
        return [data.tobytes()]
    return [memoryview(data).cast("B")]


def data_size(data) -> int:
    """The bytes of a member's data (bytes-like, a list of pieces or a :class:`ZarrOfHdf5`)."""
    if type(data) is list:
        return sum(map(len, data))
    return data.nbytes if type(data) is ZarrOfHdf5 else memoryview(data).nbytes


def _stored_size(member: Member) -> int:
    """The bytes a member takes in the file: its local header, name and data."""
    name, data = member
    return _LOCAL.size + len(_name_bytes(name)[0]) + data_size(data)


def _pwrite_all(fd: int, buffers: list, offset: int) -> int:
    """Write ``buffers`` one after the other at ``offset`` (in calls of at most IOV_MAX buffers); returns the bytes
    written."""
    total = 0
    for i in range(0, len(buffers), _IOV_MAX):
        part = buffers[i:i + _IOV_MAX]
        size = sum(map(len, part))
        done = os.pwritev(fd, part, offset + total)
        if done < size:  # (a signal or a nearly full disk: write the rest from where it stopped)
            rest = memoryview(b"".join(bytes(memoryview(b).cast("B")) for b in part))[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + total + done)
                done += n
                rest = rest[n:]
        total += size
    return total


class GrowingZip:
    """A stored ZIP at ``path`` that :meth:`append` grows in place (see the module docstring). Made by
    :meth:`create`, which publishes the first version by rename; holds the file open until :meth:`close`."""

    #: when the file grows, the new hole is at least this share of the file
    GROWTH = 0.25
    #: the buffer members given as pieces are gathered in (kept while the file is open)
    ARENA_BYTES = 8 << 20

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._end = 0  # the size of the published file: its end record ends there
        self._cd_offset = 0  # where the published directory starts: the top of the hole
        self._hole = 0  # the bottom of the hole: where the next member goes
        self._cd = bytearray()  # the published directory (every entry), kept to write the next one
        self._count = 0
        self._arena: memoryview | None = None  # (allocated with the first member given as pieces)

    @classmethod
    def create(cls, path: str | os.PathLike, members: Iterable[Member], expect: int = 0) -> GrowingZip:
        """Write a ZIP of ``members`` (taken one at a time) under a private name beside ``path``, leave a hole of
        ``expect`` bytes before its directory for the next members, and rename it over ``path``."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            z = cls(path, fd)
            z._end = z._hole = z._cd_offset = z._write_members(members, 0)
            z._grow(expect)
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
        """The published file's size, bytes (members, the hole, the directory)."""
        return self._end

    @property
    def free_bytes(self) -> int:
        """The hole: bytes below the directory that no entry points to."""
        return self._cd_offset - self._hole

    def append(self, members: Iterable[Member], expect: int = 0, final: bool = False) -> None:
        """Add ``members`` and publish the new directory (see the module docstring). When the hole cannot take
        them and the directory, the file grows first, by what they need and ``expect`` more (the caller's guess of
        the next publications), or a quarter of the file if that is more. ``final`` (the last publication): no
        hole is left. On any error the file is cut back to the published ZIP and the error raised; none of
        ``members`` is then in it (the file may have grown)."""
        members = list(members)
        size = sum(_stored_size(m) for m in members)
        directory = len(self._cd) + _MAX_END + sum(_CENTRAL.size + 12 + len(_name_bytes(n)[0]) for n, _ in members)
        state = self._state()
        try:
            if self._hole + size + directory > self._cd_offset:
                self._grow(size + directory + expect)
                state = self._state()
            self._commit(self._write_members(members, self._hole), final)
        except BaseException:
            n, self._count, self._hole, self._cd_offset, self._end = state
            del self._cd[n:]
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:  # (the tail stays: cut_partial_publication removes it)
                pass
            raise

    def _state(self) -> tuple[int, int, int, int, int]:
        return len(self._cd), self._count, self._hole, self._cd_offset, self._end

    def _write_members(self, members: Iterable[Member], offset: int) -> int:
        """Write ``members`` (each: local header, data) one after the other from ``offset``, a batch of them a
        ``pwritev``, and add their entries to the directory; returns where the last one ends.

        A member given as pieces, or as a :class:`~ringstream.compression.ZarrOfHdf5`, is first gathered into a buffer
        kept for the next batches (``ARENA_BYTES``; no new memory, so no page faults): one CRC call over it instead
        of one a piece, since each call on more than 5 kB lets go of the GIL and must take it back (with the
        writer's main thread busy, each taking-back can wait for Python's switch interval)."""
        buffers: list = []
        start = pos = offset
        used = 0
        for name, data in members:
            raw, flags = _name_bytes(name)
            kind = type(data)
            size = sum(map(len, data)) if kind is list else data.nbytes if kind is ZarrOfHdf5 else -1
            if 0 <= size <= self.ARENA_BYTES:
                if used + size > self.ARENA_BYTES:  # the arena is full: write the batch, then use it again
                    _pwrite_all(self._fd, buffers, start)
                    buffers, start, used = [], pos, 0
                if self._arena is None:
                    self._arena = memoryview(bytearray(self.ARENA_BYTES))
                if kind is ZarrOfHdf5:
                    data.into(self._arena[used:used + size])
                else:
                    k = used
                    for v in data:
                        self._arena[k:k + len(v)] = v
                        k += len(v)
                pieces = [self._arena[used:used + size]]
                used += size
            else:
                pieces = _pieces(data)
                size = sum(map(len, pieces))
            crc = 0
            for v in pieces:
                crc = crc32(v, crc)
            header = local_header(raw, flags, crc, size)
            buffers.append(header)
            buffers += pieces
            self._cd += central_entry(raw, flags, crc, size, pos)
            self._count += 1
            pos += len(header) + size
            if pos - start >= _BATCH_BYTES:
                _pwrite_all(self._fd, buffers, start)
                buffers, start, used = [], pos, 0
        if buffers:
            _pwrite_all(self._fd, buffers, start)
        return pos

    def _grow(self, need: int) -> None:
        """Publish the same members with a hole of at least ``need`` bytes: the directory written again past the
        end, after new space (the only write during which a reader finds no end record at the end)."""
        cd_offset = self._end + max(int(need), int(self.GROWTH * self._end))
        end = end_records(self._count, cd_offset, len(self._cd))
        _pwrite_all(self._fd, [self._cd, end], cd_offset)
        self._cd_offset, self._end = cd_offset, cd_offset + len(self._cd) + len(end)

    def _commit(self, pos: int, final: bool) -> None:
        """Write the directory and end record into the hole, at its top (``final``: just after the members, which
        end at ``pos``), and cut the file after them: the new members are published."""
        cd_offset = pos if final else self._cd_offset - len(self._cd) - _MAX_END
        end = end_records(self._count, cd_offset, len(self._cd))
        _pwrite_all(self._fd, [self._cd, end], cd_offset)
        os.ftruncate(self._fd, cd_offset + len(self._cd) + len(end))  # the atomic step
        self._hole, self._cd_offset = pos, cd_offset
        self._end = cd_offset + len(self._cd) + len(end)

    def close(self) -> None:
        """Close the file (what is published stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._arena = None


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

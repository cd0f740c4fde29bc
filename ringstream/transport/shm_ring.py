"""The shared-memory frame ring: ingest copies each frame once into a slot, workers view it in place.

Layout of the segment: a 64-byte header (magic, ``n_slots``, ``slot_bytes``, ``stride``), then ``n_slots`` slots of
``stride`` = ``slot_bytes`` rounded up to 64 bytes; slot ``i`` starts at byte ``64 + i * stride``.

Slot lifecycle (ingest owns the ring, workers only read it):

1. ingest ``acquire()`` s a free slot (``None``: the ring is full, wait for a release or drop the frame);
2. ingest ``write(slot, frame)`` s the pixels (one copy) and sends a ``FrameHeader`` with ``location="shm"``, the
   ring's ``name``, the slot and the returned offset;
3. a worker ``attach(name)`` es once and ``view(slot, shape, dtype, offset=...)`` s the pixels in place;
4. ingest ``release(slot)`` s once the writer acknowledges the frame (its results are safe: docs/DAEMON.md,
   "Delivery"); only then can ``acquire()`` hand the slot out again.

So a slot is never rewritten while a worker may still read it, and its frame can go to another worker should the
first one die.

Resource tracking: the creator's segment is registered with multiprocessing's resource tracker, which unlinks it
(with a "leaked shared_memory" warning) should the creator die without ``unlink()``. A ``kill -9`` of the whole
daemon kills the tracker too, and the ring stays in ``/dev/shm`` (hundreds of MB of memory): :meth:`FrameRing.create`
first removes the rings whose creator (the pid in the name) is no longer running (:func:`remove_stale_rings`). Attaching does *not* register
(Python < 3.13 registers every attachment, and the tracker of a process that attached would unlink the segment at
its exit, or, shared with the creator by a ``spawn`` parent, forget the creator's registration).
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import secrets
import struct
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from ..procs import pid_alive

log = logging.getLogger(__name__)

#: where POSIX shared memory lives on Linux
SHM_DIR = "/dev/shm"

_MAGIC = b"RSRING01"
_HEADER = struct.Struct("<8sQQQ")
_DATA_START = 64
_ALIGN = 64


def remove_stale_rings(prefix: str = "ringstream", folder: str = SHM_DIR) -> list[str]:
    """Unlink the rings named ``<prefix>-<pid>-<hex>`` whose creator ``pid`` is not running (a daemon killed with
    ``kill -9`` could not unlink its ring) and that hold a ring's header; returns their names. A ring of a running
    process is never touched."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:  # no /dev/shm (not Linux): nothing to look at
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or pid_alive(pid):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(_MAGIC))
            size = os.path.getsize(path)
            if magic != _MAGIC:
                continue
            os.unlink(path)
        except OSError as exc:
            log.debug("cannot remove stale ring %s (%s)", path, exc)
            continue
        log.warning("removed the frame ring %s (%.0f MB), left by process %d that is no longer running "
                    "(killed?)", path, size / 1e6, pid)
        removed.append(name)
    return removed


class _AttachedSegment:
    """A POSIX shared-memory segment opened without telling the resource tracker (Python < 3.13)."""

    def __init__(self, name: str) -> None:
        import _posixshmem  # CPython's own module behind multiprocessing.shared_memory (POSIX only)

        self.name = name
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)  # the mapping stays valid without the descriptor
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


def _attach_untracked(name: str) -> Any:
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        pass
    if os.name == "posix":
        return _AttachedSegment(name)
    return shared_memory.SharedMemory(name=name)  # Windows: no resource tracker involved


class FrameRing:
    """``n_slots`` fixed-size slots in one shared-memory segment (see the module docstring for the lifecycle).

    Build with :meth:`create` (ingest: owns the segment and the free list) or :meth:`attach` (workers). As a
    context manager it closes on exit, and the creator also unlinks.
    """

    def __init__(
        self, segment: Any, name: str, n_slots: int, slot_bytes: int, stride: int, owner: bool
    ) -> None:
        self._segment = segment
        self.name = name
        self.n_slots = n_slots
        self.slot_bytes = slot_bytes
        self.stride = stride
        self.owner = owner
        self._closed = False
        self._unlinked = False
        self._free = list(
            range(n_slots - 1, -1, -1)
        )  # a stack: the most recently released slot is still warm
        self._busy: set[int] = set()
        self._lock = threading.Lock()  # acquire/release may come from a source's callback thread too

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, n_slots: int, slot_bytes: int, prefix: str = "ringstream") -> FrameRing:
        """A new ring named ``<prefix>-<pid>-<random>`` (unique per run) with every slot free."""
        if n_slots < 1 or slot_bytes < 1:
            raise ValueError(f"a ring needs n_slots >= 1 and slot_bytes >= 1, got {n_slots}, {slot_bytes}")
        stride = -(-slot_bytes // _ALIGN) * _ALIGN
        size = _DATA_START + n_slots * stride
        remove_stale_rings(prefix)
        while True:
            name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                segment = shared_memory.SharedMemory(name=name, create=True, size=size)
                break
            except FileExistsError:
                continue
        _HEADER.pack_into(segment.buf, 0, _MAGIC, n_slots, slot_bytes, stride)
        return cls(segment, name, n_slots, slot_bytes, stride, owner=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """The existing ring ``name``, untracked (this process's exit never unlinks it).

        Raises ``FileNotFoundError`` when there is no such segment and ``ValueError`` when it is not a ring.
        """
        segment = _attach_untracked(name)
        try:
            if segment.size < _DATA_START:
                raise ValueError(f"shared memory {name!r} is not a ringstream frame ring")
            magic, n_slots, slot_bytes, stride = _HEADER.unpack_from(segment.buf, 0)
            if magic != _MAGIC or segment.size < _DATA_START + n_slots * stride or stride < slot_bytes:
                raise ValueError(f"shared memory {name!r} is not a ringstream frame ring")
        except BaseException:
            segment.close()
            raise
        return cls(segment, name, n_slots, slot_bytes, stride, owner=False)

    # -- pixels ------------------------------------------------------------------------------------------------

    def _check_slot(self, slot: int) -> None:
        if self._closed:
            raise ValueError(f"ring {self.name} is closed")
        if not isinstance(slot, (int, np.integer)) or isinstance(slot, bool) or not 0 <= slot < self.n_slots:
            raise ValueError(f"ring {self.name}: no slot {slot!r} (it has {self.n_slots})")

    def slot_offset(self, slot: int) -> int:
        """Byte offset of ``slot`` in the segment."""
        self._check_slot(slot)
        return _DATA_START + int(slot) * self.stride

    def view(self, slot: int, shape: tuple[int, ...], dtype: Any, offset: int | None = None) -> np.ndarray:
        """A writable ``shape`` array of ``dtype`` viewing the pixels in ``slot`` (no copy).

        ``offset`` (from the frame header) is checked to lie in ``slot``; the array must fit in the slot
        (``ValueError`` otherwise, e.g. for a bad header). Delete every view before :meth:`close`.
        """
        start = self.slot_offset(slot)
        dtype = np.dtype(dtype)
        nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
        if offset is None:
            offset = start
        if not start <= offset or offset + nbytes > start + self.slot_bytes:
            raise ValueError(
                f"ring {self.name}: {nbytes} bytes at offset {offset} do not fit in slot {slot} "
                f"([{start}, {start + self.slot_bytes}))"
            )
        # frombuffer on the mmap itself holds an export on it, so close() cannot unmap memory an array still uses
        # (np.ndarray(buffer=memoryview) would not: the array would dangle and crash the process on access).
        array = np.frombuffer(self._segment._mmap, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        return array.reshape(shape)

    def write(self, slot: int, array: np.ndarray) -> tuple[int, int]:
        """Copy ``array`` into ``slot`` (one copy, any layout) and return ``(offset, nbytes)`` for the header.

        The creator may only write a slot it has acquired. Raises ``ValueError`` when the array does not fit.
        """
        array = np.asarray(array)
        self._check_slot(slot)
        if self.owner and slot not in self._busy:
            raise ValueError(f"ring {self.name}: slot {slot} is not acquired")
        if array.nbytes > self.slot_bytes:
            raise ValueError(
                f"ring {self.name}: {array.nbytes} bytes do not fit in a slot of {self.slot_bytes}"
            )
        target = self.view(slot, array.shape, array.dtype)
        np.copyto(target, array, casting="no")
        offset = self.slot_offset(slot)
        del target
        return offset, array.nbytes

    # -- free list (creator only) ------------------------------------------------------------------------------

    def _check_owner(self) -> None:
        if not self.owner:
            raise RuntimeError(f"ring {self.name}: only the ring's creator hands out slots")

    def acquire(self) -> int | None:
        """A free slot, now busy until :meth:`release`; ``None`` when every slot is busy."""
        self._check_owner()
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
            self._busy.add(slot)
            return slot

    def release(self, slot: int) -> None:
        """Make ``slot`` free again (the writer acknowledged its frame); ``ValueError`` if it is not busy."""
        self._check_owner()
        with self._lock:
            if slot not in self._busy:
                state = "free already" if slot in self._free else "not a slot of this ring"
                raise ValueError(f"ring {self.name}: cannot release slot {slot!r}: {state}")
            self._busy.remove(slot)
            self._free.append(slot)

    @property
    def n_free(self) -> int:
        """Slots :meth:`acquire` can still hand out."""
        return len(self._free)

    # -- end of life -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the segment (idempotent). Raises ``BufferError`` while arrays from :meth:`view` are alive."""
        if self._closed:
            return
        try:
            self._segment.close()
        except BufferError:
            raise BufferError(
                f"ring {self.name}: arrays viewing the ring are still alive; delete them before close()"
            ) from None
        self._closed = True

    def unlink(self) -> None:
        """Remove the segment's name (creator only; idempotent). Mappings stay valid until closed."""
        if self._unlinked:
            return
        if not self.owner:
            raise RuntimeError(f"ring {self.name}: only the ring's creator unlinks it")
        try:
            self._segment.unlink()
        except FileNotFoundError:  # removed by someone else: still forget our registration
            resource_tracker.unregister(self._segment._name, "shared_memory")
        self._unlinked = True

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self.owner:
                self.unlink()

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"FrameRing({self.name!r}, {self.n_slots} x {self.slot_bytes} bytes, {role})"

"""A few of HDF5's C calls through ctypes, on the library h5py itself loaded, for the loops whose per-call cost in
h5py's object layer counts: naming each omega-sum group at a run's close (:func:`name_rows`, used by
:func:`ringstream.writer.repair.link_omega_groups`: one virtual dataset and four attributes a group, ~75 µs a group
here against ~150 µs through h5py's low-level objects, on the 2-core CI box), the direct chunk writes of the
compressed sums and cakes (:func:`write_chunks`: a ctypes call lets go of the GIL, which h5py's own calls keep, so
the thread that publishes the zarr.zip runs while HDF5 writes a chunk) and the link-storage setting h5py does not
expose (:func:`set_link_phase_change`).

The identifiers are h5py's own (``obj.id.id``); every call's result is checked and a failure raises
``RuntimeError`` naming the call, after closing what the loop opened. The calls are made holding h5py's global
lock (``h5py._objects.phil``, the one every h5py call takes): the HDF5 of h5py's wheels is not built thread-safe, and
a ctypes call releases the GIL, so without it another thread's h5py call could run inside HDF5 at the same time (a
segmentation fault, seen with repairs run on threads). :func:`library` is None where the symbols or the lock cannot
be found (an h5py built against a system HDF5 that hides them): callers then take h5py's path.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import h5py
import numpy as np

try:
    from h5py._objects import phil
except ImportError:  # (then library() is None and nothing here is called)
    phil = None

_HID = ctypes.c_int64
_HERR = ctypes.c_int
_U64P = ctypes.POINTER(ctypes.c_uint64)
_SIGNATURES = {
    "H5Pcopy": (_HID, [_HID]),
    "H5Pclose": (_HERR, [_HID]),
    "H5Pset_link_phase_change": (_HERR, [_HID, ctypes.c_uint, ctypes.c_uint]),
    "H5Pset_virtual": (_HERR, [_HID, _HID, ctypes.c_char_p, ctypes.c_char_p, _HID]),
    "H5Sselect_hyperslab": (_HERR, [_HID, ctypes.c_int, _U64P, _U64P, _U64P, _U64P]),
    "H5Dcreate2": (_HID, [_HID, ctypes.c_char_p, _HID, _HID, _HID, _HID, _HID]),
    "H5Dclose": (_HERR, [_HID]),
    "H5Acreate2": (_HID, [_HID, ctypes.c_char_p, _HID, _HID, _HID, _HID]),
    "H5Awrite": (_HERR, [_HID, _HID, ctypes.c_void_p]),
    "H5Aclose": (_HERR, [_HID]),
    "H5Dwrite_chunk": (_HERR, [_HID, _HID, ctypes.c_uint32, _U64P, ctypes.c_size_t, ctypes.c_void_p]),
}
H5P_DEFAULT = 0
H5S_SELECT_SET = 0


@functools.cache
def library():
    """The HDF5 library h5py uses (its bundled copy, else through h5py's own extension module), with the calls of
    this module typed; None where they cannot be found."""
    libs = sorted(glob.glob(os.path.join(os.path.dirname(h5py.__file__), os.pardir, "h5py.libs", "libhdf5-*.so*")))
    try:
        from h5py._objects import phil  # noqa: F401 - the lock every caller below takes

        lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL(h5py.h5.__file__)
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
    except (ImportError, OSError, AttributeError):
        return None
    return lib


def _ok(value: int, call: str) -> int:
    if value < 0:
        raise RuntimeError(f"HDF5 {call} failed")
    return value


def set_link_phase_change(gcpl, max_compact: int = 0, min_dense: int = 0) -> bool:
    """``H5Pset_link_phase_change`` on the group-creation property list ``gcpl`` (an h5py ``PropGCID``); False where
    the library cannot be reached."""
    lib = library()
    if lib is None:
        return False
    with phil:
        return lib.H5Pset_link_phase_change(_HID(gcpl.id), max_compact, min_dense) >= 0


def write_chunks(dataset, first: int, chunks) -> bool:
    """Write ``chunks`` (bytes-like, each one chunk as the dataset's filters store it, none filtered out) as rows
    ``first, first + 1, ...`` of ``dataset`` (an h5py ``DatasetID`` chunked one row a chunk, already large enough):
    h5py's ``write_direct_chunk`` without its per-call cost, the GIL released while HDF5 writes. From a chunk HDF5
    refuses on (a full disk), h5py's call writes again, so that the error is h5py's (an OSError with its errno, what
    the writer's disk-full path takes). False (nothing written) where the library cannot be reached."""
    lib = library()
    if lib is None:
        return False
    rank = len(dataset.shape)
    offset = (ctypes.c_uint64 * rank)(*([0] * rank))
    views = [np.frombuffer(c, dtype=np.uint8) for c in chunks]  # (read-only buffers too: zmq frames)
    did = dataset.id
    write = lib.H5Dwrite_chunk
    failed = -1
    with phil:
        for k, v in enumerate(views):
            offset[0] = first + k
            if write(did, H5P_DEFAULT, 0, offset, v.nbytes, v.ctypes.data) < 0:
                failed = k
                break
    if failed >= 0:  # a chunk HDF5 did not take (a full disk): h5py's own call writes it, and the rest, again, and
        for k in range(failed, len(views)):  # raises what h5py raises (OSError with the errno) for the writer's
            dataset.write_direct_chunk((first + k,) + (0,) * (rank - 1), views[k])  # error path
    return True


def name_rows(group, names: list[bytes], rows: list[int], dtype, dcpl, source, source_path: bytes, vspace,
              attrs) -> None:
    """In ``group`` (an h5py ``GroupID``), for each ``names[i]``: a virtual dataset of type ``dtype`` (a ``TypeID``)
    and space ``vspace`` mapping row ``rows[i]`` of the stacked dataset ``source_path`` of this file (``source``: its
    simple space), its creation property list a copy of ``dcpl`` (the virtual layout and fill value) with that
    mapping, and a scalar attribute for each ``(name, TypeID, values)`` of ``attrs`` (``values`` a NumPy array of
    that type, one value per row of the stacked dataset)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the HDF5 library h5py uses cannot be reached through ctypes")
    rank = len(source.shape)
    start = (ctypes.c_uint64 * rank)(*([0] * rank))
    count = (ctypes.c_uint64 * rank)(1, *source.shape[1:])
    scalar = h5py.h5s.create(h5py.h5s.SCALAR)
    values = []
    for attr, tid, vals in attrs:
        vals = np.ascontiguousarray(vals)
        values.append((attr, tid.id, vals, vals.ctypes.data, vals.itemsize))
    gid, sid, vid, tid, d0, sc = group.id, source.id, vspace.id, dtype.id, dcpl.id, scalar.id
    with phil:
        _name_rows(lib, names, rows, gid, sid, vid, tid, d0, sc, source_path, start, count, values)


def _name_rows(lib, names, rows, gid, sid, vid, tid, d0, sc, source_path, start, count, values) -> None:
    for name, row in zip(names, rows, strict=True):
        start[0] = row
        _ok(lib.H5Sselect_hyperslab(sid, H5S_SELECT_SET, start, None, count, None), "H5Sselect_hyperslab")
        pl = _ok(lib.H5Pcopy(d0), "H5Pcopy")
        ds = -1
        try:
            _ok(lib.H5Pset_virtual(pl, vid, b".", source_path, sid), "H5Pset_virtual")
            ds = _ok(lib.H5Dcreate2(gid, name, tid, vid, H5P_DEFAULT, pl, H5P_DEFAULT), "H5Dcreate2")
            for attr, atid, _, base, size in values:
                aid = _ok(lib.H5Acreate2(ds, attr, atid, sc, H5P_DEFAULT, H5P_DEFAULT), "H5Acreate2")
                try:
                    _ok(lib.H5Awrite(aid, atid, base + size * row), "H5Awrite")
                finally:
                    lib.H5Aclose(aid)
        finally:
            if ds >= 0:
                lib.H5Dclose(ds)
            lib.H5Pclose(pl)


"""Make a results file that a crashed writer left behind readable again (``ringstream repair OUT.h5``).

A writer killed while it held the file in SWMR-write mode leaves the superblock's file-consistency flags set, and
every later open without ``swmr=True`` fails ("file is already open for write"). :func:`clear_status_flags` clears
them as ``h5clear -s`` does: it rewrites the flags byte of the version-2/3 superblock and its Jenkins lookup3
checksum (HDF5 file format spec, "Superblock"); no HDF5 tools are needed.

:func:`repair` then makes the file consistent: every per-frame dataset is cut to the rows that were complete in all
of them (and to ``@frames_written``, the count the writer published at its last flush), ``frame_index`` must be
strictly increasing, the fit curves and omega-sum groups are cut to match, ``@frames_written`` is set to the
result, and :func:`link_omega_groups` names each omega-sum group. ``@run_complete`` stays false.

:func:`cut_for_resume` cuts a killed writer's file further, to the frames a replacement writer continues the run
after (the resume frame W: the end of the last omega-sum group written, see
:meth:`~ringstream.writer.outputs.RunOutputs.resume`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5o, h5p, h5s, h5t

from ..errors import InputError
from . import hdf5_c
from . import storage as _storage  # noqa: F401 - registers the HDF5 compression filter (compressed cakes, sums)
from .layout import METADATA_JSON, cake_rows
from .zip_append import cut_partial_publication

_SIGNATURE = b"\x89HDF\r\n\x1a\n"

log = logging.getLogger(__name__)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' ``hashlittle`` (lookup3.c), the checksum of HDF5 metadata: a 32-bit int of ``data``."""
    m = 0xFFFFFFFF
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & m
        a = (a - c) & m; a ^= _rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= _rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 4); b = (b + a) & m  # noqa: E702
        i += 12
    if n - i == 0:
        return c
    tail = data[i:] + b"\0" * (12 - (n - i))
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c


def _superblock_offset(fh) -> int:
    for offset in [0] + [512 << k for k in range(20)]:
        fh.seek(offset)
        if fh.read(8) == _SIGNATURE:
            return offset
        if offset > os.fstat(fh.fileno()).st_size:
            break
    raise InputError(f"{fh.name}: not an HDF5 file (no superblock signature)")


def clear_status_flags(path: str | os.PathLike) -> bool:
    """Clear the superblock's file-consistency flags (``h5clear -s``). True if they were set, False if clear.
    Only superblock versions 2 and 3 have them (files written with ``libver="latest"``, as ringstream's)."""
    path = Path(path)
    try:
        fh = open(path, "r+b")
    except OSError as exc:
        raise InputError(f"{path}: cannot open for repair ({exc})") from exc
    with fh:
        base = _superblock_offset(fh)
        fh.seek(base)
        head = fh.read(12)
        version, size_off = head[8], head[9]
        if version not in (2, 3):
            return False  # versions 0/1 keep no flags a crash could leave set
        n = 12 + 4 * size_off  # signature .. root object header address
        fh.seek(base)
        block = bytearray(fh.read(n + 4))
        # a write that did not fit (a full disk) can leave the file shorter than the end the superblock records,
        # which HDF5 refuses to open: give it back its length (a sparse, zero tail past the flushed rows)
        eof = base + int.from_bytes(block[12 + 2 * size_off:12 + 3 * size_off], "little")
        size = os.fstat(fh.fileno()).st_size
        if eof > size:
            fh.truncate(eof)
            log.warning("%s: %d bytes shorter than its recorded end (a write that did not fit); extended to %d "
                        "bytes", path, eof - size, eof)
        if block[11] == 0:
            return False
        stored = int.from_bytes(block[n:n + 4], "little")
        if lookup3(bytes(block[:n])) != stored:
            raise InputError(f"{path}: superblock checksum does not match; not repairing a damaged file")
        block[11] = 0
        block[n:n + 4] = lookup3(bytes(block[:n])).to_bytes(4, "little")
        fh.seek(base)
        fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def clear_if_crashed(path: str | os.PathLike) -> bool:
    """If ``path`` is an HDF5 file a killed writer left (status flags set), :func:`repair` it and log one line.
    True if it was repaired. Anything else (no file, not HDF5, flags clear) is left alone."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            base = _superblock_offset(fh)
            fh.seek(base + 8)
            head = fh.read(4)
    except (OSError, InputError):
        return False
    if len(head) < 4 or head[0] not in (2, 3) or head[3] == 0:
        return False
    report = repair(path)
    log.warning("repaired the results file a killed writer left: %s", report.line())
    return True


@dataclasses.dataclass
class RepairReport:
    """What :func:`repair` found and did."""

    path: Path
    flags_cleared: bool
    frames: int  # complete frames kept
    cut: int  # rows removed beyond them (partly written rows)
    groups: int  # omega-sum groups kept
    run_complete: bool

    def line(self) -> str:
        return (f"{self.path}: {'status flags cleared, ' if self.flags_cleared else ''}{self.frames} frames "
                f"(frame_index increasing, {self.cut} partial rows cut), {self.groups} omega-sum groups, "
                f"run_complete {str(self.run_complete).lower()}")


def _per_frame(f: h5py.File) -> list[h5py.Dataset]:
    e = f["entry"]
    out = [d for d in e["data"].values() if isinstance(d, h5py.Dataset) and d.maxshape and d.maxshape[0] is None]
    if "metadata" in e["data"]:
        out += list(e["data/metadata"].values())
    if "fit/peaks" in e:
        out.append(e["fit/peaks"])
    if "fit/caked" in e:
        out.append(e["fit/caked"])
    cakes = cake_rows(f)
    if cakes is not None:
        out.append(cakes)
    return out


#: how long :func:`repair` waits for another process's lock on the file to go (seconds)
LOCK_WAIT_S = 3.0


def _open_rw(path: Path, what: str, wait: float | None = None) -> h5py.File:
    """``h5py.File(path, "r+")``, waiting up to ``wait`` s (:data:`LOCK_WAIT_S`) while another process holds the
    file's lock. HDF5 takes an exclusive lock and does not wait; the lock can be held for a moment by a process
    that was forked while this one (or another) had the file open, until that child closes its inherited
    descriptors. A lock held longer is a clear error: some process still has the file open."""
    wait = LOCK_WAIT_S if wait is None else wait
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, "r+")
        except BlockingIOError as exc:
            if time.monotonic() >= deadline:
                raise InputError(f"{path}: locked by another process for {wait:g} s {what} (is a writer or "
                                 f"reader still running on it?)") from exc
            time.sleep(0.05)
        except OSError as exc:
            raise InputError(f"{path}: cannot open {what} ({exc})") from exc


def repair(path: str | os.PathLike, interrupted: bool = False) -> RepairReport:
    """Clear the status flags and cut the file to its complete, increasing frames (see the module docstring).
    ``interrupted``: the service that wrote the file stopped before the run ended; ``/entry@run_status`` says so."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    cleared = clear_status_flags(path)
    with _open_rw(path, "after clearing the status flags") as f:
        e = _entry(f, path)
        n, longest, groups = _cut_consistent(e)
        complete = bool(e.attrs.get("run_complete", False)) and n == longest
        for obj in (e, e["data/I"]):
            obj.attrs.modify("run_complete", np.bool_(complete))
        if interrupted:
            e.attrs["run_status"] = "interrupted"
    link_omega_groups(path)
    return RepairReport(path, cleared, n, longest - n, groups, complete)


def _entry(f: h5py.File, path: Path) -> h5py.Group:
    if "entry/data/frame_index" not in f or "entry/omega_sum/name" not in f:
        raise InputError(f"{path}: not a ringstream results file (no /entry/data/frame_index, /entry/omega_sum)")
    return f["entry"]


def _cut_consistent(e: h5py.Group) -> tuple[int, int, int]:
    """Cut ``/entry`` to the rows complete in every per-frame dataset, at most ``@frames_written``, with an increasing
    frame_index, and the curves, omega-sum groups and peak updates to match; set ``@frames_written``. Returns (rows
    kept, rows of the longest dataset before, omega-sum groups kept)."""
    rows = _per_frame(e.file)
    longest = max(d.shape[0] for d in rows)
    n = min([d.shape[0] for d in rows] + [int(e.attrs.get("frames_written", longest))])
    idx = e["data/frame_index"][:n].astype(np.int64)
    bad = np.nonzero(np.diff(idx) <= 0)[0]
    if bad.size:
        n = int(bad[0]) + 1
    end = int(idx[n - 1]) + 1 if n else 0
    _cut_rows(e, rows, n, end)
    groups = _cut_to_common(e["omega_sum"], _GROUP_ROWS)
    # a group is kept only with every frame of it: a writer killed after a flush wrote the rows and the groups, before
    # @frames_written counted those rows, leaves groups of frames that were just cut
    last = e["omega_sum/last_frame"][:groups]
    keep = int(np.searchsorted(last, end, side="left")) if groups else 0
    if keep < groups:
        for k in _GROUP_ROWS:
            e["omega_sum"][k].resize(keep, axis=0)
        groups = keep
    if "fit/peak_updates" in e:
        _cut_to_common(e["fit/peak_updates"], ("peaks", "origin", "from_frame", "seq"))
    return n, longest, groups


_GROUP_ROWS = ("I", "n_frames", "first_frame", "last_frame", "first_omega", "last_omega", "name")


def _cut_rows(e: h5py.Group, rows: list[h5py.Dataset], n: int, end: int) -> None:
    """Cut the per-frame datasets ``rows`` to ``n`` rows, the fit curves to the ROIs of frames below ``end`` whose
    values are all there, and set ``@frames_written``."""
    for d in rows:
        if d.shape[0] != n:
            d.resize(n, axis=0)
    if "fit/curve_rois" in e:
        rois, vals = e["fit/curve_rois"], e["fit/curve_values"]
        table = rois[...]
        keep = int(np.searchsorted(table[:, 0], end, side="left")) if len(table) else 0
        points = int(table[:keep, 2].sum()) if keep else 0
        while keep and points > vals.shape[0]:  # the values of the last ROIs did not make it
            keep -= 1
            points -= int(table[keep, 2])
        rois.resize(keep, axis=0)
        vals.resize(points, axis=0)
    for obj in (e, e["data/I"]):
        obj.attrs.modify("frames_written", np.int64(n))


def _cut_to_common(group: h5py.Group, names: tuple[str, ...]) -> int:
    n = min(group[k].shape[0] for k in names)
    for k in names:
        if group[k].shape[0] != n:
            group[k].resize(n, axis=0)
    return n


#: above this many groups, :func:`link_omega_groups` leaves the rows unnamed (each name adds to the close)
MAX_NAMED_GROUPS = 20000

#: file bytes one named group takes, at most (a virtual dataset with four attributes), and the free space
#: :func:`link_omega_groups` leaves on the disk: below their sum it names none
NAMED_GROUP_BYTES = 2048
FREE_MARGIN = 1 << 20


#: the group of the named omega-sum datasets, in ``/entry/omega_sum`` (made with the file's layout)
NAMED = "named"


def _links_dense(gcpl) -> None:
    """The group keeps its links in a heap from the start (``H5Pset_link_phase_change(0, 0)``, which h5py does not
    expose): adding names later writes the heap and its index, never the group's own header, which stays readable
    (and the group removable) whatever a kill leaves. Best effort: HDF5's default otherwise."""
    hdf5_c.set_link_phase_change(gcpl, 0, 0)


def named_group(osum: h5py.Group, path: str | os.PathLike) -> h5py.Group | None:
    """``/entry/omega_sum/named``, made if missing (a file written before it existed). The names are added to the
    file after the run, without SWMR: a writer killed meanwhile can leave this group's links half written (HDF5:
    "wrong fractal heap header signature", "addr overflow"), and nothing else, because every link added is this
    group's. Such a group is moved aside (``named_spoilt_<k>``) and made anew: the rows of ``/entry/omega_sum``
    hold the same data."""
    if NAMED in osum:
        try:
            grp = osum[NAMED]
            list(grp.keys())  # every link of it read
            return grp
        except (RuntimeError, OSError, KeyError) as exc:
            log.warning("%s: the named omega-sum datasets were being added when the writer stopped (%s): made again",
                        path, exc)
        # moved aside, not deleted: a deletion frees the group's storage, which HDF5 cannot read (it fails at close)
        k = 1
        while f"{NAMED}_spoilt_{k}" in osum:
            k += 1
        try:
            osum.move(NAMED, f"{NAMED}_spoilt_{k}")
        except (RuntimeError, OSError, KeyError, ValueError) as exc:  # (its own header unreadable)
            log.warning("%s: /entry/omega_sum/%s cannot be made again (%s): the groups stay unnamed (the rows of "
                        "/entry/omega_sum hold them)", path, NAMED, exc)
            return None
    gcpl = h5p.create(h5p.GROUP_CREATE)
    _links_dense(gcpl)
    grp = h5py.Group(h5g.create(osum.id, NAMED.encode(), gcpl=gcpl))
    grp.attrs["NX_class"] = "NXcollection"
    grp.attrs["description"] = ("row g of ../I under its zarr.zip name, with the zarr.zip attributes (virtual "
                                "datasets, added after the run)")
    return grp


def link_omega_groups(path: str | os.PathLike, prepared: str | os.PathLike | None = None) -> int:
    """Give each row g of ``/entry/omega_sum/I`` its own name, ``/entry/omega_sum/named/LastFrameNumber_<k>`` (a
    virtual dataset of that row, with the zarr.zip attributes), so the file has one dataset per group. Run on a
    closed file (it opens it without SWMR): only the links of ``named`` change (:func:`named_group`), so a kill
    meanwhile leaves the rest of the file whole. ``prepared``: a file whose ``/entry/omega_sum/named`` names every
    group already (:mod:`.namer`, made while the run streamed): its datasets are copied into the file's ``named``
    while that is empty (as the layout made it) and when it holds as many names as the file has groups, else the
    groups are named here. Returns the number of groups named (0 above :data:`MAX_NAMED_GROUPS`)."""
    with _open_rw(Path(path), "to name the omega-sum groups") as f:
        g = f["entry/omega_sum"]
        n = min(g[k].shape[0] for k in ("I", "n_frames", "first_frame", "last_frame", "first_omega", "last_omega",
                                        "name"))
        if n > MAX_NAMED_GROUPS:
            log.info("%s: %d omega-sum groups: rows of /entry/omega_sum/I only (named datasets up to %d groups)",
                     path, n, MAX_NAMED_GROUPS)
            return 0
        free = shutil.disk_usage(Path(path).parent).free
        if free < NAMED_GROUP_BYTES * n + FREE_MARGIN:  # (a disk that filled up: a failed close would spoil the file)
            log.warning("%s: %d bytes free on its disk: the omega-sum groups are left unnamed (rows of "
                        "/entry/omega_sum/I; 'ringstream repair %s' names them once there is room)", path, free, path)
            return 0
        if prepared is not None and NAMED in g and not len(g[NAMED]) and _copy_named(g[NAMED], Path(prepared), n,
                                                                                      path):
            return n
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in g["name"][:n]]
        shape = g["I"].shape
        # HDF5's own calls (what create_virtual_dataset and attrs[...] = make of the same arguments), without the
        # high-level selection and attribute machinery, whose per-group cost counts at close
        scalar = h5s.create(h5s.SCALAR)
        f8, i8 = h5t.py_create(np.dtype("<f8")), h5t.py_create(np.dtype("<i8"))
        stored = h5t.py_create(g["I"].dtype)  # the sums' dtype (``cake_dtype``)
        attrs = [(b"Number Of Frames Summed", i8, g["n_frames"][:n].astype("<i8")),
                 (b"LastFrameNumber", i8, g["last_frame"][:n].astype("<i8")),
                 (b"FirstOme", f8, g["first_omega"][:n].astype("<f8")),
                 (b"LastOme", f8, g["last_omega"][:n].astype("<f8"))]
        vspace = h5s.create_simple(shape[1:])  # the whole [n_r, n_eta] of the named dataset ...
        source = h5s.create_simple(shape)  # ... maps row k of /entry/omega_sum/I
        dcpl0 = h5p.create(h5p.DATASET_CREATE)
        dcpl0.set_layout(h5d.VIRTUAL)
        dcpl0.set_fill_value(np.array([0.0]))
        named = named_group(g, path)
        if named is None:
            return 0
        gid = named.id
        seen = set(named.keys()) if len(named) else set()  # (a repair names what a kill left unnamed)
        todo = []
        for k, name in enumerate(names):  # each name once, as its first row
            if name not in seen:
                seen.add(name)
                todo.append((k, name.encode()))
        if hdf5_c.library() is not None:  # HDF5's C calls: half the time of h5py's objects, which count at close
            hdf5_c.name_rows(gid, [key for _, key in todo], [k for k, _ in todo], stored, dcpl0, source,
                             b"/entry/omega_sum/I", vspace, attrs)
            return n
        for k, key in todo:
            source.select_hyperslab((k,) + (0,) * (len(shape) - 1), (1,) + shape[1:])
            dcpl = dcpl0.copy()
            dcpl.set_virtual(vspace, b".", b"/entry/omega_sum/I", source)
            dsid = h5d.create(gid, key, stored, vspace, dcpl=dcpl)
            for attr, tid, values in attrs:
                h5a.create(dsid, attr, tid, scalar).write(values[k : k + 1].reshape(()))
        return n


def _copy_named(named: h5py.Group, prepared: Path, n: int, path) -> bool:
    """Copy each dataset of ``prepared``'s ``/entry/omega_sum/named`` into ``named`` (this file's, empty):
    ``H5Ocopy``, each virtual dataset keeping its source ``"."``, which is then this file; only ``named``'s links
    change, as when the groups are named here. False where ``prepared`` does not hold ``n`` names or a copy fails
    (the names copied stay; the caller names the rest)."""
    try:
        with h5py.File(prepared, "r") as src:
            made = src["entry/omega_sum"][NAMED]
            if len(made) != n:
                log.warning("%s: %d groups named beside the run, the file has %d: named at the close", path,
                            len(made), n)
                return False
            sid, did = made.id, named.id
            for name in made:
                key = name.encode()
                h5o.copy(sid, key, did, key)
        return True
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        log.warning("%s: the groups named beside the run cannot be copied in (%s): named at the close", path, exc)
        return False


@dataclasses.dataclass
class ResumeCut:
    """Where :func:`cut_for_resume` cut a run's file: ``frame`` (W) the run continues from (every frame below it is
    in the file or was rejected, every omega-sum group below it is written), ``rows`` frames kept, ``curve_rois``
    fit-curve ROIs kept, ``groups`` omega-sum groups kept (the last one's index ``last_group``, -1: none),
    ``metadata_keys`` the numeric metadata datasets, ``name_digits`` the padding of the group names."""

    frame: int
    rows: int
    curve_rois: int
    groups: int
    last_group: int
    metadata_keys: tuple[str, ...]
    name_digits: int


def file_layout(e: h5py.Group) -> dict[str, int | str | float]:
    """The layout of a results file that must match a run continuing it: n_r, n_eta, n_peaks, per_eta, Write2D,
    OmegaSumFrames, cake_dtype (the stored dtype of the omega sums: "float32" or "float64"), cake_noise_fraction
    (0: lossless; a file from before the precision-bounded mode has none: 0)."""
    osum = e["omega_sum"]
    return {"n_r": int(e["data/I"].shape[1]), "n_eta": int(osum["I"].shape[2]),
            "n_peaks": int(e["fit/peaks"].shape[1]) if "fit/peaks" in e else 0, "per_eta": int("fit/caked" in e),
            "Write2D": int(cake_rows(e.file) is not None),
            "OmegaSumFrames": int(osum.attrs.get("omega_sum_frames", 1)), "cake_dtype": osum["I"].dtype.name,
            "cake_noise_fraction": float(osum["I"].attrs.get("cake_noise_fraction", 0.0))}


def check_resumable(path: str | os.PathLike, layout: dict[str, int | str | float]) -> None:
    """InputError naming ``path`` unless it is a ringstream results file of ``layout`` (:func:`file_layout`) that
    opens once its status flags are cleared (as a killed writer leaves them set)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; cannot continue its run")
    clear_status_flags(path)
    with _open_rw(path, "to continue its run") as f:
        e = _entry(f, path)
        if not str(f.attrs.get("creator", "")).startswith("ringstream"):
            raise InputError(f"{path}: not a ringstream results file (creator {f.attrs.get('creator', 'unknown')!r})")
        found = file_layout(e)
    differ = [f"{k} {found[k]} in the file, {v} in the run" for k, v in layout.items() if found.get(k) != v]
    if differ:
        raise InputError(f"{path}: the file's layout differs from the run's ({'; '.join(differ)}); cannot continue it")


def cut_for_resume(path: str | os.PathLike, layout: dict[str, int | str | float],
                   streams: tuple[int | None, int | None] = (None, None)) -> ResumeCut:
    """Cut the file a killed writer left to what a replacement continues from, the run's resume point W.

    As :func:`repair` (status flags cleared, rows complete and increasing, at most ``@frames_written``), then to the
    frames of complete durable omega-sum groups: a frame's row is durable only once its group's sum is written too
    (the sum of the rest died with the writer). ``streams`` = (frames whole in every fixed-size MIDAS stream, records
    whole in fit_curves.bin), None where there is none: the streams are flushed after the HDF5 file, so they can
    hold fewer frames. The groups kept are those whose frames all have rows (in the file and in the streams); W is
    the end of the last group kept (0: none), and every row, ROI and group from W on is cut. ``@run_complete`` is
    false. ``layout`` (:func:`file_layout`) must equal the file's: InputError naming the file if not, or if it is
    not a ringstream results file."""
    from ..protocol.omega import OmegaGrouping

    path = Path(path)
    check_resumable(path, layout)
    with _open_rw(path, "to continue its run") as f:
        e = _entry(f, path)
        found = file_layout(e)
        n, _, groups = _cut_consistent(e)
        idx = e["data/frame_index"][:n].astype(np.int64)
        durable = int(idx[-1]) + 1 if n else 0  # frames below this have their rows in every file
        stream_rows, curve_records = streams
        if stream_rows is not None and stream_rows < n:
            durable = min(durable, int(idx[stream_rows]))
        if curve_records is not None and "fit/curve_rois" in e and curve_records < e["fit/curve_rois"].shape[0]:
            durable = min(durable, int(e["fit/curve_rois"][curve_records, 0]))
        osum = e["omega_sum"]
        grouping = OmegaGrouping.of(found["OmegaSumFrames"])
        kept = int(np.searchsorted(osum["last_frame"][:groups].astype(np.int64), durable, side="left"))
        last_group = grouping.group_of(int(osum["first_frame"][kept - 1])) if kept else -1
        # W: the end of the last group kept. Frames of that group past its last row were rejected (a frame with a
        # row would be in the group): nothing from them is sent again, and no partial sum of a written group comes
        w = grouping.end_of(last_group) if kept else 0
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in osum["name"][kept:groups]]
        # the names of the groups cut: in named/ (by a repair, or half made by a writer killed at the run's close),
        # or in omega_sum itself (a file of a version before named/)
        named = named_group(osum, path) if NAMED in osum else None
        for where in (osum, named) if named is not None else (osum,):
            for name in names:
                if name in where:
                    del where[name]
        for k in _GROUP_ROWS:
            osum[k].resize(kept, axis=0)
        rows = int(np.searchsorted(idx, w, side="left"))
        _cut_rows(e, _per_frame(f), rows, w)
        for obj in (e, e["data/I"]):
            obj.attrs.modify("run_complete", np.bool_(False))
        curves = e["fit/curve_rois"].shape[0] if "fit/curve_rois" in e else 0
        keys = tuple(k for k in e["data/metadata"] if k != METADATA_JSON) if "metadata" in e["data"] else ()
        return ResumeCut(w, rows, curves, kept, last_group, keys, int(osum.attrs.get("name_digits", 9)))


def cut_zarr_tail(path: str | os.PathLike | None) -> int | None:
    """Cut what a writer killed while publishing the zarr.zip at ``path`` left after its last published ZIP
    (:func:`~ringstream.writer.zip_append.cut_partial_publication`); logs and returns the bytes cut (None: no such
    file, or not a ZIP this writer made). Never raises: the zarr.zip can be made again (``ringstream export``)."""
    if not path or not os.path.exists(path):
        return None
    try:
        cut = cut_partial_publication(path)
    except OSError as exc:
        log.warning("%s: cannot check the end of the zarr.zip (%s)", path, exc)
        return None
    if cut:
        log.warning("%s: cut %d bytes a killed writer was publishing; the last published ZIP is whole", path, cut)
    elif cut is None:
        log.warning("%s: no whole ZIP directory found ('ringstream export' makes the zarr.zip from the HDF5)", path)
    return cut

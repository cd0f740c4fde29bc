"""The NeXus HDF5 results file (docs/OUTPUTS.md), written with SWMR: the lineouts in ``/entry`` (NXazint1d) and, with
``Write2D 1``, the cakes in ``/cake`` (NXazint2d, an NXentry of its own that shares the rest with ``/entry``), both
valid by pynxtools' ``pynx validate`` (tests/unit/test_nexus_valid.py).

The whole layout (every group, dataset and attribute) is created up front, then the file switches to SWMR
mode, so a reader opened with ``swmr=True`` can follow the run: it refreshes ``/entry/data/I`` and reads
``/entry@frames_written`` (the number of complete rows). A long-lived reader cannot refresh a group's
attributes, so ``@frames_written`` and ``@run_complete`` are mirrored on ``/entry/data/I``: call
``I.refresh()`` and read ``I.attrs["frames_written"]`` (or reopen the file). Rows are buffered and appended in
blocks (each HDF5 write has a fixed cost that one row at a time would pay per frame); :meth:`Hdf5Writer.flush`
publishes the buffered rows.

This module knows nothing of processes or sockets: the offline ``ringstream integrate`` and the daemon's writer
process both drive :class:`Hdf5Writer`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5p, h5s

from .. import __version__
from ..errors import InputError, OutputExists
from ..geometry.mask_store import MASKED_BITS
from ..procs import pid_alive
from ..protocol import MASK_KEY
from . import hdf5_c, namer
from .layout import CAKE_ENTRY, CAKE_I, METADATA_JSON
from .omega import OmegaGroup
from .precision import MIN_COUNTS, NoiseRounding
from .run_metadata import write_run_metadata
from .storage import Chunks, cake_dtype, hdf5_compression, precision_note, stored, stored_row_chunks

log = logging.getLogger(__name__)

#: hc in keV·Å: E [keV] = HC_KEV_A / λ [Å].
HC_KEV_A = 12.398419843320026

#: Chunk cache of the file, bytes.
_CHUNK_CACHE = 64 << 20

_STR = h5py.string_dtype("utf-8")


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; :class:`~ringstream.errors.OutputExists` if it exists and ``overwrite`` is
    false, InputError if its folder is missing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(path)
    if path.is_dir():
        raise InputError(f"{path}: output path is a folder")
    if not path.parent.exists() and str(path.parent) != "":
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    return path


def _param_value(value: Any) -> Any:
    """A parameter value as an HDF5-storable value: numbers stay numbers, everything else becomes text."""
    if isinstance(value, (bool, np.bool_)):
        return np.int64(int(value))
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(_scalar_text(v)) for v in value)
    return str(value)


def _scalar_text(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(_scalar_text(x)) for x in v)
    return v


def _params_used(params: Any) -> Mapping[str, Any]:
    used = getattr(params, "used", None)
    if callable(used):
        return dict(used())
    return {}


def _flag(params: Any, key: str, default: float = 0) -> bool:
    try:
        return bool(float(getattr(params, key, default) or 0))
    except (TypeError, ValueError):
        return False


def _wavelength(params: Any) -> float:
    try:
        lam = float(getattr(params, "Wavelength", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return lam if np.isfinite(lam) and lam > 0 else 0.0


#: the per-group datasets of /entry/omega_sum beside the sums ``I``, and their types ("name" last: a reader that sees
#: a group's name sees the group)
OMEGA_SUM_ROWS = {"n_frames": np.int64, "first_frame": np.uint64, "last_frame": np.uint64,
                  "first_omega": np.float64, "last_omega": np.float64, "name": _STR}

#: bytes of the fixed-length JSON string /entry/reduction/source_counters
SOURCE_COUNTERS_BYTES = 4096

#: /entry/reduction/reference (NXazint1d and NXazint2d require one: what the processing follows)
REFERENCE = ("MIDAS (Microstructural Imaging using Diffraction Analysis Software, Advanced Photon Source): "
             "azimuthal integration with exact-area pixel splitting, lineout.bin / Int2D.bin definitions; "
             "ringstream docs/MIDAS-FORMATS.md, sections 2 and 3")

#: the NXDL-enumerated long_name and units of I (NXazint1d and NXazint2d)
INTENSITY_ATTRS = {"long_name": "intensity", "units": "arbitrary units"}

#: what the cake entry shares with /entry (hard links: one object, two names)
_CAKE_LINKS = ("solid_angle_applied", "polarization_applied", "normalization_applied", "instrument", "reduction",
               "data/radial_axis", "data/frame_index")


class _Col:
    """One per-frame dataset and its block buffer (``buf`` rows of the dataset's row shape, or a list for text).

    ``rows``: ``buf`` is a list of C-contiguous rows of the dataset's dtype, each written by a call of its own (the
    compressed cakes and sums: one row a chunk, opened without a chunk cache, so each call compresses and writes
    its chunk; no copy of the rows into a block buffer; a None row is skipped: written already)."""

    __slots__ = ("ds", "buf", "rows")

    def __init__(self, ds: h5py.Dataset, block: int, rows: bool = False) -> None:
        self.ds = ds
        self.rows = rows
        self.buf: Any = [] if ds.dtype.kind == "O" or rows else np.zeros((block,) + ds.shape[1:], dtype=ds.dtype)

    def write(self, a: int, b: int, rows: Any) -> None:
        """Grow the dataset to ``b`` rows and write ``rows`` (``b - a`` of them) at ``a``. Numbers go through
        HDF5's own write of one hyperslab (what ``ds[a:b] = rows`` ends in, without h5py's selection
        machinery, whose per-call cost a flush pays a dozen times); text through h5py."""
        ds = self.ds
        dsid = ds.id
        row = dsid.shape[1:]
        dsid.set_extent((b,) + row)
        if b == a:
            return
        if self.rows:
            if all(type(r) is Chunks for r in rows) and hdf5_c.write_chunks(dsid, a, [r.hdf5() for r in rows]):
                return  # (compressed already: each chunk as the filter would store it, the GIL let go meanwhile)
            fspace, mspace = dsid.get_space(), h5s.create_simple((1,) + row)
            zeros = (0,) * len(row)
            for k, r in enumerate(rows):
                if r is None:  # (written already: ChunkRows)
                    continue
                if type(r) is Chunks:  # compressed already: the chunk as the filter would store it
                    dsid.write_direct_chunk((a + k, *zeros), r.hdf5())
                    continue
                fspace.select_hyperslab((a + k, *zeros), (1,) + row)
                dsid.write(mspace, fspace, r)
        elif ds.dtype.kind == "O":
            ds[a:b] = np.array(rows, dtype=object)
        else:
            arr = np.ascontiguousarray(rows, dtype=ds.dtype)
            if arr.shape != (b - a,) + row:
                raise ValueError(f"{ds.name}: {arr.shape} rows written to rows {a}..{b} of {row}")
            fspace = dsid.get_space()
            fspace.select_hyperslab((a,) + (0,) * len(row), arr.shape)
            dsid.write(h5s.create_simple(arr.shape), fspace, arr)


class ChunkRows:
    """A thread that writes rows of a dataset chunked one row a chunk (``/entry/omega_sum/I``) as their compressed
    chunks come (:class:`~.storage.Chunks`, made by a worker or the writer's pool), growing the dataset to take
    them: the writer's main thread hands a chunk over (:meth:`put`) and goes on receiving while HDF5 copies it into
    the file (the copy into the page cache, ~90 µs a 200 kB chunk, is most of a flush's time), and waits for them
    only at a flush (:meth:`wait`), before the rows are counted. The calls hold h5py's lock, in batches of at most
    :data:`BATCH` chunks, and let go of the GIL while HDF5 writes (:func:`.hdf5_c.write_chunks`). A write that
    fails (a full disk) stops the thread: :meth:`wait` raises its error, and the rows put since are dropped with it
    (the run fails; what the file counts was written)."""

    #: chunks written under one hold of h5py's lock (the main thread's HDF5 calls wait no longer than that)
    BATCH = 8

    def __init__(self, ds: h5py.Dataset) -> None:
        self._ds = ds
        self._rows: deque[tuple[int, Any]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="hdf5-chunks", daemon=True)
        self._thread.start()

    def put(self, row: int, chunks: Chunks) -> bool:
        """Queue ``chunks`` for row ``row`` (rows are put in increasing order); False (nothing queued) once a write
        failed or the thread is closed: the caller then writes the row itself, or meets the error at :meth:`wait`."""
        with self._cond:
            if self._error is not None or self._closing:
                return False
            self._rows.append((int(row), chunks))
            self._cond.notify()
        return True

    def wait(self) -> None:
        """Until every row put is written; raises the error of a write that failed (every time, once failed)."""
        with self._cond:
            while (self._rows or self._busy) and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def discard(self) -> None:
        """Drop the rows put and not written yet (a failed run writes nothing more); returns once the batch being
        written, if any, is done."""
        with self._cond:
            self._rows.clear()
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Stop the thread once the rows put are written (or a write failed; :meth:`wait` for its error)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        dsid = self._ds.id
        row_shape = tuple(dsid.shape[1:])
        while True:
            with self._cond:
                while not self._rows and not self._closing:
                    self._cond.wait()
                if not self._rows:
                    return
                batch = [self._rows.popleft()]
                while self._rows and len(batch) < self.BATCH and self._rows[0][0] == batch[-1][0] + 1:
                    batch.append(self._rows.popleft())
                self._busy = True
            try:
                first, end = batch[0][0], batch[-1][0] + 1
                chunks = [c.hdf5() for _, c in batch]  # (a chunk the writer's pool makes: waited for here)
                if dsid.shape[0] < end:
                    dsid.set_extent((end,) + row_shape)
                if not hdf5_c.write_chunks(dsid, first, chunks):
                    for k, c in enumerate(chunks):
                        dsid.write_direct_chunk((first + k,) + (0,) * len(row_shape), c)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread at wait()
                with self._cond:
                    self._error = exc
                    self._rows.clear()
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()


#: ``/entry/fit@description`` of each peak model (``[fit] model``)
FIT_DESCRIPTIONS = {
    "pv": "pseudo-Voigt peak fits of the lineouts (MIDAS fit.bin); NaN row = not fitted",
    "tch": "GSAS-II area-normalised pseudo-Voigt (Thompson-Cox-Hastings mixing, 2-term Chebyshev background) fits "
           "of the lineouts on 2theta (MIDAS fit.bin); NaN row = not fitted",
}


class Hdf5Writer:
    """Write one run's results to ``path`` in the docs/OUTPUTS.md layout.

    Parameters: ``imap`` the IntegrationMap (bins and geometry planes), ``params`` the Params used (recorded under
    ``/entry/reduction/input``), ``engine_name`` recorded in ``reduction/engine``, ``write_2d`` whether cakes
    ``[n, n_r, n_eta]`` are stored, ``swmr`` turn on SWMR after creating the layout, ``block`` rows buffered per
    append (0: a few MB worth; chunks hold at most 64 rows), ``overwrite`` replace an existing file, ``note`` free text for ``reduction/note``.
    ``n_peaks`` peak rows per frame (``fitting.peak_slots``; 0 = no ``/entry/fit``), ``fit_model`` the peak model
    (``[fit] model``: "pv" or "tch", recorded with its columns as ``/entry/fit`` attributes), ``peak_locations`` the R (px)
    of the configured peaks, ``metadata_keys`` numeric per-frame metadata stored as ``/entry/data/metadata/<key>``
    (every frame's whole metadata is also kept as JSON text in ``/entry/data/metadata/metadata_json``),
    ``omega_sum_frames`` and ``name_digits`` describe ``/entry/omega_sum``, ``cake_dtype`` (``"float32"`` or
    ``"float64"``) is the stored dtype of the cakes and omega sums (both bitshuffle + LZ4 compressed,
    :mod:`~ringstream.writer.storage`), ``rounding`` the precision-bounded mode's rounding of the cakes
    (:class:`~ringstream.writer.precision.NoiseRounding`; None: lossless), recorded with its per-bin noise factor
    (the omega sums come to :meth:`add_omega_group` already rounded: :class:`~ringstream.writer.outputs.RunOutputs`
    rounds each sum once, for both files), ``run_metadata`` what the source said of the whole run and
    ``pixel_mask`` the detector's mask it was integrated with (``/entry/run_metadata``: :mod:`.run_metadata`);
    ``caked`` > 0 stores per-η fits ``/entry/fit/caked`` ``[n, n_eta, n_peaks,
    7]`` (``[fit] per_eta``), made with that many SNIP iterations (recorded).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        imap: Any,
        params: Any,
        *,
        engine_name: str,
        write_2d: bool,
        swmr: bool = True,
        block: int = 0,
        overwrite: bool = False,
        note: str = "",
        n_peaks: int = 0,
        peak_locations: Sequence[float] = (),
        metadata_keys: Sequence[str] = (),
        omega_sum_frames: int | None = None,
        name_digits: int = 9,
        cake_dtype: str = "float32",
        rounding: NoiseRounding | None = None,
        caked: int = 0,
        fit_model: str = "pv",
        run_metadata: Mapping[str, Any] | None = None,
        pixel_mask: np.ndarray | None = None,
    ) -> None:
        self.fit_model = str(fit_model)
        self._setup(check_output_path(path, overwrite), int(imap.n_r), int(imap.n_eta), write_2d, swmr, block,
                    n_peaks, metadata_keys, name_digits, cake_dtype, rounding, caked)
        # The layout is made under a hidden name and renamed to the output's once it is complete, flushed and in SWMR
        # mode: a writer killed while making it (before SWMR, HDF5 keeps most of the new metadata in memory and the
        # superblock's end of file at 2 KB) leaves no half-made output file, only the hidden one, which the next
        # writer in that folder removes. Once renamed, the file is never in a state a kill -9 cannot leave.
        making = making_path(self.path)
        remove_stale_making(self.path)
        try:
            # a chunk cache that holds every partly filled chunk (a flush can end a block mid-chunk)
            self._f = h5py.File(making, "w", libver="latest", rdcc_nbytes=_CHUNK_CACHE, rdcc_nslots=10007)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot create output file ({exc})") from exc
        try:
            osf = int(getattr(params, "OmegaSumFrames", 1) if omega_sum_frames is None else omega_sum_frames)
            self._create_layout(imap, params, engine_name, note, peak_locations, osf, int(name_digits))
            meta = dict(run_metadata or {})
            write_run_metadata(self._f["entry"], meta, pixel_mask, str(meta.get(MASK_KEY, "")), MASKED_BITS)
            self._bind()
            self._f.flush()
            if self.swmr:
                self._f.swmr_mode = True
            os.replace(making, self.path)
        except BaseException:
            self._f.close()
            making.unlink(missing_ok=True)
            raise

    def _setup(self, path: Path, n_r: int, n_eta: int, write_2d: bool, swmr: bool, block: int, n_peaks: int,
               metadata_keys: Sequence[str], name_digits: int, dtype: str,
               rounding: NoiseRounding | None, caked: int = 0) -> None:
        """The writer's state before its file is open: an empty run (:meth:`reopen` then sets the counts)."""
        self.path = path
        self.rounding = rounding
        self.n_r = n_r
        self.n_eta = n_eta
        self.write_2d = bool(write_2d)
        self.dtype = cake_dtype(dtype)  # of the cakes and omega sums
        # rows buffered per write: a few MB of the widest row (each h5py call per dataset per block costs the
        # same whatever its size)
        cake_bytes = self.dtype.itemsize * self.n_r * self.n_eta if self.write_2d else 0
        self.n_peaks = max(0, int(n_peaks))
        # per-eta fits [n_eta, n_peaks, 7] per frame ([fit] per_eta; only with fitting); caked = their SNIP iterations
        self.caked = int(caked) > 0 and self.n_peaks > 0
        self.snip_iterations = int(caked)
        row_bytes = 4 * self.n_r + cake_bytes + 56 * self.n_peaks * (1 + self.n_eta * self.caked)
        self.block = max(1, int(block)) if block else max(16, min(1024, (8 << 20) // max(row_bytes, 1)))
        self.chunk_rows = min(self.block, 64)
        self.swmr = bool(swmr)
        # (a key named like the JSON dataset beside them is in the JSON only)
        self.metadata_keys = tuple(dict.fromkeys(str(k) for k in metadata_keys if str(k) != METADATA_JSON))
        self._written = 0
        self._last_index = -1
        self._closed = False
        self._buf_n = 0
        self._rois: list[np.ndarray] = []  # buffered fit-curve ROI rows [k, 3] (frame_index, start_bin, n_points)
        self._vals: list[np.ndarray] = []  # buffered fit-curve model values
        self._n_groups = 0
        self._groups: list[tuple[Any, str, bool]] = []  # omega-sum groups waiting for the next flush (, row put)
        self._chunk_rows: ChunkRows | None = None  # (started with the first compressed omega sum)
        # the groups' names made beside the run (namer.py): a file made here, live (not one reopened to continue)
        self._namer: namer.Namer | None = None
        self._naming = bool(swmr)
        self._digits = int(name_digits)
        self._n_updates = 0

    @classmethod
    def reopen(cls, path: str | os.PathLike, *, n_r: int, n_eta: int, write_2d: bool, n_peaks: int,
               metadata_keys: Sequence[str], next_frame: int, block: int = 0, name_digits: int = 9,
               swmr: bool = True, cake_dtype: str = "float32",
               rounding: NoiseRounding | None = None, caked: int = 0) -> Hdf5Writer:
        """Continue writing ``path``, a results file of this layout that a killed writer left and
        :func:`~ringstream.writer.repair.cut_for_resume` cut to its durable frames: appended rows follow the file's,
        the next frame must be at least ``next_frame``, ``@run_complete`` is false until :meth:`close`."""
        self = cls.__new__(cls)
        self._setup(Path(path), int(n_r), int(n_eta), write_2d, swmr, block, n_peaks, metadata_keys, name_digits,
                    cake_dtype, rounding, caked)
        try:
            self._f = h5py.File(self.path, "r+", libver="latest", rdcc_nbytes=_CHUNK_CACHE, rdcc_nslots=10007)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot reopen the results file to continue its run ({exc})") from exc
        self._naming = False  # (its groups are named at the close, as they were)
        remove_stale_making(self.path)  # (the killed writer's naming file, if its process died with it)
        try:
            self._bind()
            self._written = self._I.shape[0]
            self._last_index = int(next_frame) - 1
            self._n_groups = self._osum["name"].shape[0]
            self._n_updates = self._upd["seq"].shape[0] if self.n_peaks else 0
            for obj in self._progress:
                obj.attrs.modify("frames_written", np.int64(self._written))
                obj.attrs.modify("run_complete", np.bool_(False))
            self._f.flush()
            if self.swmr:
                self._f.swmr_mode = True
        except BaseException:
            self._f.close()
            raise
        return self

    # --- layout ------------------------------------------------------------------------------------------------

    def _rows(self, group: h5py.Group, name: str, row: tuple[int, ...], dtype: Any, chunk_rows: int,
              compressed: bool = False) -> h5py.Dataset:
        return group.create_dataset(name, shape=(0,) + row, maxshape=(None,) + row, dtype=dtype,
                                    chunks=(max(1, chunk_rows),) + tuple(max(1, n) for n in row),
                                    **(hdf5_compression() if compressed else {}))

    def _create_layout(self, imap: Any, params: Any, engine_name: str, note: str,
                       peak_locations: Sequence[float], osf: int, digits: int) -> None:
        f = self._f
        nR, nE, blk = self.n_r, self.n_eta, self.chunk_rows
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        f.attrs["default"] = "entry"
        f.attrs["creator"] = f"ringstream {__version__}"
        entry.create_dataset("definition", data="NXazint1d")
        entry.create_dataset("solid_angle_applied", data=np.bool_(_flag(params, "SolidAngleCorrection")))
        entry.create_dataset("polarization_applied", data=np.bool_(_flag(params, "PolarizationCorrection")))
        entry.create_dataset("normalization_applied", data=np.bool_(_flag(params, "Normalize", 1)))

        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        inst.create_dataset("name", data=str(getattr(params, "InstrumentName", "") or "unknown"))
        mono = inst.create_group("monochromator")
        mono.attrs["NX_class"] = "NXmonochromator"
        lam = _wavelength(params)
        # NXazint1d requires both; NaN says an unknown wavelength is unknown (no value is made up)
        d = mono.create_dataset("wavelength", data=np.float64(lam if lam > 0 else np.nan))
        d.attrs["units"] = "angstrom"
        d = mono.create_dataset("energy", data=np.float64(HC_KEV_A / lam if lam > 0 else np.nan))
        d.attrs["units"] = "keV"
        # NXazint1d requires the source too; ringstream knows only that it integrates X-ray diffraction
        src = inst.create_group("source")
        src.attrs["NX_class"] = "NXsource"
        src.create_dataset("name", data="unknown")
        d = src.create_dataset("type", data="unknown")
        d.attrs["custom"] = True  # (NeXus: a value outside the open enumeration of NXsource/type)
        src.create_dataset("probe", data="x-ray")

        red = entry.create_group("reduction")
        red.attrs["NX_class"] = "NXprocess"
        red.create_dataset("program", data="ringstream")
        red.create_dataset("version", data=__version__)
        red.create_dataset("date", data=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        red.create_dataset(
            "note", data=note or "azimuthal integration with exact-area pixel splitting (MIDAS-compatible)"
        )
        red.create_dataset("reference", data=REFERENCE)
        red.create_dataset("engine", data=str(engine_name))
        # the ingest's counters at the end of the stream (frames received, PVA uniqueId gaps and frames missed,
        # overruns, drops by reason): JSON, written by set_source_counters; created now, as SWMR needs
        d = red.create_dataset("source_counters", shape=(), dtype=h5py.string_dtype(length=SOURCE_COUNTERS_BYTES))
        d[()] = b"{}"
        d.attrs["note"] = "JSON: the ingest's counters (received, sent, dropped_<reason>, the source's own)"
        self._add_precision(red, nR, nE)
        inp = red.create_group("input")
        inp.attrs["NX_class"] = "NXparameters"
        for key, value in _params_used(params).items():
            if key in inp:
                continue
            inp.create_dataset(str(key), data=_param_value(value))
        if "parameter_file" not in inp:
            inp.create_dataset("parameter_file", data=str(getattr(params, "text", "") or ""))
        src = getattr(params, "source", None)
        if src is not None and "parameter_file_path" not in inp:
            inp.create_dataset("parameter_file_path", data=str(src))

        two_theta = np.asarray(imap.two_theta, dtype=np.float64)
        r_px = np.asarray(imap.r_px, dtype=np.float64)
        eta = np.asarray(imap.eta, dtype=np.float64)
        q = np.asarray(imap.q, dtype=np.float64) if getattr(imap, "q", None) is not None else None
        q_known = lam > 0 and q is not None and q.shape == (nR,) and bool(np.all(np.isfinite(q)))

        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "I"
        data.attrs["axes"] = np.array([".", "radial_axis"], dtype=_STR)
        data.attrs["interpretation"] = "spectrum"
        lineouts = self._rows(data, "I", (nR,), np.float32, blk)  # the area-weighted mean over eta (MIDAS lineout)
        lineouts.attrs.update(INTENSITY_ATTRS)
        self._add_radial(data, two_theta)
        d = data.create_dataset("r_px", data=r_px)
        d.attrs["units"] = "pixel"
        d.attrs["long_name"] = "bin-centre radius"
        if q_known:
            d = data.create_dataset("q", data=q)
            d.attrs["units"] = "1/angstrom"
        c1 = 1024
        self._rows(data, "frame_index", (), np.uint64, c1)
        self._rows(data, "source_id", (), _STR, c1)
        ts = self._rows(data, "timestamp", (), np.float64, c1)
        ts.attrs["units"] = "s"
        ts.attrs["long_name"] = "seconds since the epoch"
        om = self._rows(data, "omega", (), np.float64, c1)
        om.attrs["units"] = "deg"
        om.attrs["long_name"] = "omega of the frame (metadata 'omega', else Omega / OmegaStart + i*OmegaStep)"
        meta = data.create_group("metadata")
        meta.attrs["NX_class"] = "NXcollection"
        mj = self._rows(meta, METADATA_JSON, (), _STR, c1)
        mj.attrs["long_name"] = "the frame's metadata from the source, as JSON"
        for key in self.metadata_keys:
            self._rows(meta, key, (), np.float64, c1)

        if self.write_2d:
            self._create_cake_entry(f, entry, eta)

        if self.n_peaks:
            from ..fitting.models import get_model

            model = get_model(self.fit_model)
            fit = entry.create_group("fit")
            fit.attrs["NX_class"] = "NXprocess"
            fit.attrs["description"] = FIT_DESCRIPTIONS[model.name]
            # which model and which columns (the pv dataset's own attributes are as they always were)
            fit.attrs["model"] = model.name
            fit.attrs["columns"] = ",".join(model.columns)
            fit.attrs["units"] = ",".join(model.units)
            fit.attrs["x_axis"] = model.axis
            d = self._rows(fit, "peaks", (self.n_peaks, 7), np.float64, blk)
            d.attrs["columns"] = ",".join(model.columns)
            locs = np.full(self.n_peaks, np.nan)
            given = np.asarray(list(peak_locations), dtype=np.float64)[: self.n_peaks]
            locs[: given.size] = given
            d = fit.create_dataset("peak_locations", data=locs)
            d.attrs["units"] = "pixel"
            d.attrs["note"] = "PeakLocation of the parameter file (NaN: found automatically)"
            if self.caked:
                from ..fitting.caked import CAKED_COLUMNS, CAKED_UNITS

                d = self._rows(fit, "caked", (self.n_eta, self.n_peaks, 7), np.float64, min(blk, 16))
                d.attrs["columns"] = ",".join(CAKED_COLUMNS)
                d.attrs["units"] = ",".join(CAKED_UNITS)
                d.attrs["model"] = "tch"
                d.attrs["snip_iterations"] = np.int64(self.snip_iterations)
                d.attrs["description"] = ("per-eta fits ([fit] per_eta): [frame, eta bin, peak, column], GSAS-II TCH "
                                          "pseudo-Voigt on 2theta after a SNIP background; NaN = not fitted")
            d = self._rows(fit, "curve_rois", (3,), np.int64, c1)
            d.attrs["columns"] = "frame_index,start_bin,n_points"
            d = self._rows(fit, "curve_values", (), np.float64, 1 << 14)
            d.attrs["note"] = "model values of every ROI, in curve_rois order (MIDAS fit_curves.bin)"
            upd = fit.create_group("peak_updates")
            upd.attrs["NX_class"] = "NXcollection"
            upd.attrs["description"] = "the peak list in force from from_frame onward (ringstream peaks)"
            self._rows(upd, "peaks", (), h5py.vlen_dtype(np.float64), 64)
            for name, dtype in (("origin", _STR), ("from_frame", np.uint64), ("seq", np.uint64)):
                self._rows(upd, name, (), dtype, 64)

        geo = entry.create_group("geometry")
        geo.attrs["NX_class"] = "NXcollection"
        geo.attrs["description"] = "REtaMap planes: bin centres broadcast to [n_r, n_eta]; area 0 = empty bin"
        ones = np.ones((nR, nE), dtype=np.float64)
        planes = {"chunks": (nR, nE), **hdf5_compression()}  # one chunk a plane
        for name, vec, units in (("r_px", r_px, "pixel"), ("two_theta", two_theta, "deg")):
            d = geo.create_dataset(name, data=vec[:, None] * ones, **planes)
            d.attrs["units"] = units
        d = geo.create_dataset("eta", data=eta[None, :] * ones, **planes)
        d.attrs["units"] = "deg"
        d = geo.create_dataset("area", data=np.asarray(imap.bin_area, dtype=np.float64).reshape(nR, nE), **planes)
        d.attrs["units"] = "pixel^2"
        qv = q if q_known else np.full(nR, np.nan)
        d = geo.create_dataset("q", data=qv[:, None] * ones, **planes)
        d.attrs["units"] = "1/angstrom"
        if not q_known:
            d.attrs["note"] = "Wavelength unknown: q is NaN"

        osum = entry.create_group("omega_sum")
        osum.attrs["NX_class"] = "NXcollection"
        osum.attrs["description"] = ("sums of the normalised cakes of each OmegaSumFrames group (zarr.zip "
                                     "OmegaSumFrame); row g of every dataset is group g; after the run, in named/, "
                                     "one dataset per group named like the zarr.zip member")
        osum.attrs["omega_sum_frames"] = np.int64(osf)
        osum.attrs["name_digits"] = np.int64(digits)
        self._mark_precision(self._rows(osum, "I", (nR, nE), self.dtype, 1, compressed=True))
        for name, dtype in OMEGA_SUM_ROWS.items():
            self._rows(osum, name, (), dtype, 256)
        from .repair import named_group

        named_group(osum, self.path)  # now, so that naming the groups after the run changes no link of omega_sum

        # The run's progress lives on /entry (the contract) and is mirrored on /entry/data/I, because a SWMR reader
        # can refresh a dataset (and with it the dataset's attributes) but not a group.
        for obj in (entry, lineouts):
            obj.attrs["frames_written"] = np.int64(0)
            obj.attrs["run_complete"] = np.bool_(False)

    def _create_cake_entry(self, f: h5py.File, entry: h5py.Group, eta: np.ndarray) -> None:
        """The NXazint2d entry :data:`CAKE_ENTRY`: its own definition and NXdata (the cakes, ``[nImg, nEta, nR]``,
        one a chunk, compressed; the azimuthal axis); the rest hard links to /entry's objects."""
        cake = f.create_group(CAKE_ENTRY)
        cake.attrs["NX_class"] = "NXentry"
        cake.attrs["default"] = "data"
        cake.create_dataset("definition", data="NXazint2d")
        data = cake.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "I"
        data.attrs["axes"] = np.array([".", "azimuthal_axis", "radial_axis"], dtype=_STR)
        data.attrs["interpretation"] = "image"
        d = self._rows(data, "I", (self.n_eta, self.n_r), self.dtype, 1, compressed=True)  # one cake per chunk
        self._mark_precision(d)
        d.attrs.update(INTENSITY_ATTRS)
        d = data.create_dataset("azimuthal_axis", data=eta)
        d.attrs["long_name"] = "azimuthal bin center"
        d.attrs["units"] = "deg"
        for name in _CAKE_LINKS:
            cake[name] = entry[name]
            entry[name].attrs["target"] = entry[name].name  # (NeXus: a linked object names its first path)

    def _bind(self) -> None:
        """Bind the writer to the layout's datasets: those :meth:`_create_layout` just made, or those of the file
        :meth:`reopen` continues."""
        e = self._f["entry"]
        data = e["data"]
        self._I = data["I"]
        self._index = data["frame_index"]
        self._source_counters = e["reduction/source_counters"]
        self._meta = {key: data[f"metadata/{key}"] for key in self.metadata_keys}
        # every per-frame dataset, written in this order; frame_index last (a reader that sees row k sees its data)
        cols = {name: data[name] for name in ("I", "timestamp", "source_id", "omega")}
        cols[METADATA_JSON] = data["metadata"][METADATA_JSON]
        cols.update({f"metadata/{k}": d for k, d in self._meta.items()})
        if self.write_2d:
            cols["cake"] = _uncached(self._f[CAKE_I].parent, "I")
        if self.n_peaks:
            fit = e["fit"]
            cols["fit"] = fit["peaks"]
            if self.caked:
                cols["caked"] = fit["caked"]
            self._curve_rois = fit["curve_rois"]
            self._curve_vals = fit["curve_values"]
            self._upd = {name: fit["peak_updates"][name] for name in ("peaks", "origin", "from_frame", "seq")}
        self._osum = {name: e["omega_sum"][name] for name in OMEGA_SUM_ROWS}
        self._osum["I"] = _uncached(e["omega_sum"], "I")
        self._progress = [e, self._I]
        self._cols = {k: _Col(d, self.block, rows=(k == "cake")) for k, d in cols.items()}
        self._meta_bufs = [(key, self._cols[f"metadata/{key}"].buf) for key in self.metadata_keys]
        self._idx_col = _Col(self._index, self.block)
        # the block buffers append() fills, bound once (the lists are emptied in place after each block write)
        c = self._cols
        self._I_buf, self._ts_buf, self._omega_buf = c["I"].buf, c["timestamp"].buf, c["omega"].buf
        self._sid_rows, self._json_rows = c["source_id"].buf, c[METADATA_JSON].buf
        self._cake_rows = c["cake"].buf if "cake" in c else None
        self._fit_buf = c["fit"].buf if "fit" in c else None
        self._fit_shape = (self.n_peaks, 7)
        self._caked_buf = c["caked"].buf if "caked" in c else None
        self._idx_buf = self._idx_col.buf
        self._json = json.JSONEncoder(default=str).encode  # one encoder for every row (json.dumps makes one a row)

    @property
    def noise_fraction(self) -> float:
        """``[output] cake_noise_fraction`` of the stored cakes and sums (0: lossless)."""
        return self.rounding.fraction if self.rounding is not None else 0.0

    def _add_precision(self, red: h5py.Group, nR: int, nE: int) -> None:
        """``/entry/reduction/cake_noise_fraction`` and, when it is not 0, the per-bin noise model."""
        d = red.create_dataset("cake_noise_fraction", data=np.float64(self.noise_fraction))
        d.attrs["note"] = precision_note(self.noise_fraction)
        if self.rounding is not None:
            d = red.create_dataset("cake_noise_model", data=self.rounding.model.reshape(2, nR, nE),
                                   chunks=(1, nR, nE), **hdf5_compression())
            d.attrs["planes"] = "g,x_min"
            d.attrs["note"] = ("g: a cake value V of the bin has Poisson variance g V (an omega sum: g times the "
                               "sum), counts taken as equal within the bin; x_min: values below it (fewer than "
                               f"{MIN_COUNTS:g} counts a pixel) are stored losslessly (docs/OUTPUTS.md)")

    def _mark_precision(self, d: h5py.Dataset) -> None:
        d.attrs["cake_noise_fraction"] = np.float64(self.noise_fraction)
        d.attrs["precision"] = precision_note(self.noise_fraction)

    @staticmethod
    def _add_radial(group: h5py.Group, two_theta: np.ndarray) -> None:
        d = group.create_dataset("radial_axis", data=two_theta)
        d.attrs["long_name"] = "2theta"
        d.attrs["units"] = "deg"

    # --- appending ---------------------------------------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        """Rows written to the datasets (published to readers at the next :meth:`flush`)."""
        return self._written

    @property
    def frames_buffered(self) -> int:
        return self._buf_n

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")

    def append(
        self,
        frame_index: int,
        source_id: str,
        timestamp: float | None,
        lineout: np.ndarray,
        cake: np.ndarray | None = None,
        *,
        fit: np.ndarray | None = None,
        curves: tuple[np.ndarray, np.ndarray] | None = None,
        metadata: Mapping[str, Any] | None = None,
        omega: float = float("nan"),
        caked: np.ndarray | None = None,
    ) -> None:
        """Buffer one frame's row: lineout ``[n_r]``; cake ``[n_r, n_eta]`` (required when ``write_2d``); fit
        ``[k <= n_peaks, 7]`` (missing rows are NaN); curves = (ROI table int ``[n_rois, 2]`` of (start_bin,
        n_points), model values float64 ``[sum n_points]``); the source's metadata; ω in degrees; ``caked`` the
        per-η fits ``[n_eta, n_peaks, 7]`` (None: NaN; ignored in a file without them)."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        idx = int(frame_index)
        if idx <= self._last_index:  # (the first index is -1: a negative one is caught here too)
            if idx < 0:
                raise ValueError(f"frame_index {idx} is negative")
            raise ValueError(
                f"frame_index {idx} is not greater than the previous one ({self._last_index}); "
                "rows must be appended in strictly increasing frame_index order"
            )
        if type(lineout) is not np.ndarray:
            lineout = np.asarray(lineout)
        if lineout.shape != (self.n_r,):
            raise ValueError(f"frame {idx}: lineout shape {lineout.shape} != ({self.n_r},)")
        k = self._buf_n
        if self.write_2d:
            if cake is None:
                raise ValueError(f"frame {idx}: write_2d is on: a cake is required for every frame")
            if type(cake) is Chunks:  # compressed by a worker as stored: [nEta, nR] of the stored dtype
                if cake.shape != (self.n_eta, self.n_r) or cake.dtype != self.dtype or self.rounding is not None:
                    raise ValueError(f"frame {idx}: compressed cake {cake.shape} {cake.dtype}; the file stores "
                                     f"({self.n_eta}, {self.n_r}) {self.dtype}")
                self._cake_rows.append(cake)
            elif np.shape(cake) != (self.n_r, self.n_eta):
                raise ValueError(f"frame {idx}: cake shape {np.shape(cake)} != ({self.n_r}, {self.n_eta})")
            else:  # rounded as [nR, nEta] (the noise model's shape), stored [nEta, nR] as NXazint2d orders it
                self._cake_rows.append(Chunks(np.ascontiguousarray(np.transpose(stored(cake, self.dtype,
                                                                                         self.rounding)))))
        if self.n_peaks:
            fits = self._fit_buf
            if fit is None or not len(fit):
                fits[k] = np.nan
            elif type(fit) is np.ndarray and fit.shape == self._fit_shape:
                fits[k] = fit  # (cast to float64 on the copy, as np.asarray(fit, float64) would)
            else:
                fit = np.asarray(fit, dtype=np.float64)
                if fit.shape == self._fit_shape:
                    fits[k] = fit
                elif fit.ndim == 2 and fit.shape[1] == 7 and fit.shape[0] <= self.n_peaks:
                    fits[k] = np.nan
                    fits[k, : fit.shape[0]] = fit
                else:
                    raise ValueError(f"frame {idx}: fit shape {fit.shape} does not fit [{self.n_peaks}, 7]")
            if self._caked_buf is not None:
                if caked is None:
                    self._caked_buf[k] = np.nan
                elif np.shape(caked) == self._caked_buf.shape[1:]:
                    self._caked_buf[k] = caked
                else:
                    raise ValueError(f"frame {idx}: per-eta fits of shape {np.shape(caked)}, expected "
                                     f"{self._caked_buf.shape[1:]}")
            if curves is not None and len(curves[0]):
                table = np.asarray(curves[0]).reshape(-1, 2)
                values = np.asarray(curves[1], dtype=np.float64).reshape(-1)
                counts = table[:, 1]
                points = int(counts[0]) if len(counts) == 1 else int(counts.sum())  # (one ROI: no ufunc call)
                if points != values.size:
                    raise ValueError(f"frame {idx}: the ROI table counts {points} points, the model values hold "
                                     f"{values.size}")
                self._rois.append((idx, table))
                self._vals.append(values)
        elif fit is not None and len(fit):
            raise ValueError(f"frame {idx}: a fit arrived but the file was created without fitting (n_peaks 0)")
        self._idx_buf[k] = idx
        self._ts_buf[k] = time.time() if timestamp is None else timestamp
        self._sid_rows.append(source_id if type(source_id) is str else str(source_id))
        self._I_buf[k] = lineout
        self._omega_buf[k] = omega
        if metadata:
            self._json_rows.append(self._json(metadata))
            for key, buf in self._meta_bufs:
                v = metadata.get(key)
                buf[k] = v if (type(v) is float or type(v) is int
                               or (isinstance(v, (int, float)) and not isinstance(v, bool))) else np.nan
        else:
            self._json_rows.append("")
            for _, buf in self._meta_bufs:
                buf[k] = np.nan
        self._buf_n = k + 1
        self._last_index = idx
        if k + 1 == self.block:
            self._write_buffer()

    def append_many(
        self,
        frame_indices: Sequence[int] | np.ndarray,
        source_ids: Sequence[str],
        timestamps: Sequence[float] | np.ndarray | None,
        lineouts: np.ndarray,
        cakes: np.ndarray | None = None,
    ) -> None:
        """Append n rows at once: ``lineouts [n, n_r]``, ``cakes [n, n_r, n_eta]`` (when ``write_2d``)."""
        self._check_open()
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        n = idx.size
        if n == 0:
            return
        if idx[0] <= self._last_index or (n > 1 and np.any(np.diff(idx) <= 0)):
            raise ValueError(
                f"frame_index values {idx.tolist()[:8]}... are not strictly increasing after {self._last_index}"
            )
        if len(source_ids) != n:
            raise ValueError(f"{len(source_ids)} source ids for {n} frames")
        ts = np.full(n, time.time()) if timestamps is None else np.asarray(timestamps, dtype=np.float64).ravel()
        if ts.size != n:
            raise ValueError(f"{ts.size} timestamps for {n} frames")
        if np.shape(lineouts) != (n, self.n_r):
            raise ValueError(f"lineouts shape {np.shape(lineouts)} != ({n}, {self.n_r})")
        if self.write_2d and (cakes is None or np.shape(cakes) != (n, self.n_r, self.n_eta)):
            raise ValueError(f"cakes shape {np.shape(cakes)} != ({n}, {self.n_r}, {self.n_eta})")
        for k in range(n):
            self.append(int(idx[k]), source_ids[k], float(ts[k]), lineouts[k], None if cakes is None else cakes[k])
        if n >= self.block:  # a large batch goes straight to the datasets
            self._write_buffer()

    def _write_buffer(self) -> None:
        n = self._buf_n
        if n == 0:
            return
        a, b = self._written, self._written + n
        if self._rois:  # the curves first: a reader that sees frame_index row k sees its curves
            vals = np.concatenate(self._vals)
            tables = np.concatenate([t for _, t in self._rois])
            rois = np.empty((len(tables), 3), dtype=np.int64)
            rois[:, 0] = np.repeat([i for i, _ in self._rois], [len(t) for _, t in self._rois])
            rois[:, 1:] = tables
            n0, m0 = self._curve_vals.shape[0], self._curve_rois.shape[0]
            _Col(self._curve_vals, 0).write(n0, n0 + vals.size, vals)
            _Col(self._curve_rois, 0).write(m0, m0 + len(rois), rois)
            self._rois, self._vals = [], []
        for col in self._cols.values():
            col.write(a, b, col.buf if isinstance(col.buf, list) else col.buf[:n])
            if isinstance(col.buf, list):
                col.buf.clear()  # (the cakes: drop the references to the rows just written)
        self._idx_col.write(a, b, self._idx_col.buf[:n])
        self._written = b
        self._buf_n = 0

    def discard_buffer(self) -> None:
        """Drop the rows not yet written (after a disk-full error: the file keeps what was flushed)."""
        self._buf_n = 0
        self._groups = []
        self.stop_naming()
        if self._chunk_rows is not None:
            self._chunk_rows.discard()
        self._rois, self._vals = [], []
        for col in self._cols.values():
            if isinstance(col.buf, list):
                col.buf.clear()

    def add_omega_group(self, group: Any, digits: int | None = None) -> None:
        """Queue one omega-sum group (an :class:`~ringstream.writer.omega.OmegaGroup`); it is written, and seen
        by readers, at the next :meth:`flush`."""
        self._check_open()
        shape = np.shape(group.sum) if group.sum is not None else tuple(group.chunks.shape)
        if shape != (self.n_r, self.n_eta):
            raise ValueError(f"omega-sum group {group.index}: shape {shape} != ({self.n_r}, {self.n_eta})")
        put = False
        if type(getattr(group, "chunks", None)) is Chunks:  # its row goes into the file now, in a thread
            if self._chunk_rows is None:
                self._chunk_rows = ChunkRows(self._osum["I"])
            put = self._chunk_rows.put(self._n_groups + len(self._groups), group.chunks)
        self._groups.append((group, group.name(int(digits or self._digits)), put))

    def _write_groups(self) -> None:
        if not self._groups:
            return
        g0, groups = self._n_groups, self._groups
        g1 = g0 + len(groups)
        d = self._osum
        if self._chunk_rows is not None:
            self._chunk_rows.wait()  # the rows handed to the thread are in the file (or its error is raised)
        rows = [None if put else g.chunks if type(getattr(g, "chunks", None)) is Chunks else stored(g.sum, self.dtype)
                for g, _, put in groups]
        if any(r is not None for r in rows):
            _Col(d["I"], 0, rows=True).write(g0, g1, rows)
        values = {"n_frames": [g.n_frames for g, _, _ in groups], "first_frame": [g.first_frame for g, _, _ in groups],
                  "last_frame": [g.last_frame for g, _, _ in groups],
                  "first_omega": [g.first_omega for g, _, _ in groups],
                  "last_omega": [g.last_omega for g, _, _ in groups], "name": [name for _, name, _ in groups]}
        for key, rows in values.items():  # "name" last: a reader that sees the name sees the group
            _Col(d[key], 0).write(g0, g1, rows if key == "name" else np.asarray(rows, dtype=d[key].dtype))
        self._n_groups = g1
        self._groups = []
        if self._naming:
            self._name_beside(g0, g1, values)

    def _name_beside(self, g0: int, g1: int, values: dict) -> None:
        """Hand groups ``g0 .. g1 - 1`` (just written; ``values`` their columns) to the naming process, started once
        the run has :data:`.namer.MIN_GROUPS` groups (with the groups before); stopped past MAX_NAMED_GROUPS (none
        are named then)."""
        from .repair import MAX_NAMED_GROUPS

        if g1 > MAX_NAMED_GROUPS:
            self.stop_naming()
            return
        if self._namer is None:
            if g1 < namer.MIN_GROUPS:
                return
            self._namer = namer.Namer(self.path, self.n_r, self.n_eta, self.dtype.str)
            if g0:  # the groups written before it started, read back (a thousand rows of six columns)
                d = self._osum
                before = {k: d[k][:g0] for k in ("n_frames", "last_frame", "first_omega", "last_omega")}
                names = [v.decode() if isinstance(v, bytes) else str(v) for v in d["name"][:g0]]
                self._namer.add(range(g0), names, before["n_frames"], before["last_frame"], before["first_omega"],
                                before["last_omega"])
        self._namer.add(range(g0, g1), values["name"], values["n_frames"], values["last_frame"],
                        values["first_omega"], values["last_omega"])

    def stop_naming(self) -> None:
        """No naming beside the run any more (a failed run, past MAX_NAMED_GROUPS): its process and file go."""
        self._naming = False
        if self._namer is not None:
            self._namer.close()
            self._namer = None

    def omega_groups(self, group_of: Callable[[int], int]) -> Iterator[OmegaGroup]:
        """The omega-sum groups written to the file, in order, read one at a time (``group_of`` gives a group's
        index from its first frame)."""
        d = self._osum
        n = self._n_groups
        meta = {key: d[key][:n] for key in ("n_frames", "first_frame", "last_frame", "first_omega", "last_omega")}
        stored_row = stored_row_chunks(d["I"])  # (the rows as stored: the run's zarr.zip chunks are made of these)
        for k in range(n):
            first = int(meta["first_frame"][k])
            chunks = stored_row(k) if stored_row is not None else None
            yield OmegaGroup(group_of(first), d["I"][k] if chunks is None else None, int(meta["n_frames"][k]), first,
                             int(meta["last_frame"][k]), float(meta["first_omega"][k]), float(meta["last_omega"][k]),
                             chunks=chunks)

    def peak_update_seqs(self) -> list[int]:
        """The seqs of the PeakUpdates recorded in the file (a reopened one included)."""
        return [int(v) for v in self._upd["seq"][: self._n_updates]] if self.n_peaks else []

    def add_peak_update(self, seq: int, from_frame: int, peaks: Sequence[float], origin: str) -> None:
        """Record a PeakUpdate under ``/entry/fit/peak_updates`` (only in a file with fitting)."""
        self._check_open()
        if not self.n_peaks:
            raise ValueError("peak update in a file without fitting (n_peaks 0)")
        u = self._n_updates
        values = {"peaks": [np.asarray(list(peaks), dtype=np.float64)], "origin": [str(origin)],
                  "from_frame": [int(from_frame)], "seq": [int(seq)]}
        for key, ds in self._upd.items():
            if key == "peaks":
                ds.resize(u + 1, axis=0)
                ds[u] = values["peaks"][0]
            else:
                _Col(ds, 0).write(u, u + 1, values[key])
        self._n_updates = u + 1

    def set_source_counters(self, counters: Mapping[str, Any]) -> None:
        """Record the ingest's counters (``EndOfStream.counters``) in ``/entry/reduction/source_counters`` as JSON
        (numbers only; cut to the dataset's fixed size, keeping whole entries)."""
        self._check_open()
        items = {str(k): v for k, v in sorted(counters.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
        text = json.dumps(items, separators=(",", ":"))
        while len(text) > SOURCE_COUNTERS_BYTES and items:
            items.popitem()
            text = json.dumps(items, separators=(",", ":"))
        self._source_counters[()] = text.encode()

    def flush(self) -> None:
        """Write the buffered rows, flush them into the file, then update ``@frames_written`` and flush again, so
        SWMR readers see them. The count goes into the file only after the rows it covers: a disk that fills during
        a flush leaves the count of the flush before (what ``ringstream repair`` keeps), not one that covers rows
        whose data or strings the file never got."""
        self._check_open()
        self._write_buffer()
        self._write_groups()
        self._f.flush()
        for obj in self._progress:
            obj.attrs.modify("frames_written", np.int64(self._written))
        self._f.flush()

    def close(self, run_complete: bool = True) -> None:
        """Flush, set ``@run_complete`` (true only after a clean end of run) and close the file. Idempotent.
        Then name each omega-sum group (:func:`~ringstream.writer.repair.link_omega_groups`; skipped with a
        warning while another process holds the file open, e.g. a SWMR reader)."""
        if self._closed:
            return
        done = False
        try:
            self.flush()
            for obj in self._progress:
                obj.attrs.modify("run_complete", np.bool_(bool(run_complete)))
            self._f.flush()
            done = True
        finally:
            self._closed = True
            if self._chunk_rows is not None:
                self._chunk_rows.close()
            self._f.close()
            if not done:
                self.stop_naming()
        prepared = self._namer.finish() if self._namer is not None else None
        try:
            if self._n_groups:
                from .repair import link_omega_groups

                try:
                    link_omega_groups(self.path, prepared)
                except OSError as exc:  # a reader still has it open (HDF5 file lock): the rows hold the same data
                    log.warning("%s: per-group /entry/omega_sum datasets not added (%s); 'ringstream repair %s' "
                                "adds them once no reader has the file open", self.path, exc, self.path)
        finally:
            self.stop_naming()
        log.debug("closed %s: %d frames, run_complete=%s", self.path, self._written, run_complete)

    def __enter__(self) -> Hdf5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(run_complete=exc_type is None)


def _uncached(group: h5py.Group, name: str) -> h5py.Dataset:
    """``group[name]`` opened without a chunk cache: the compressed cakes and sums (written a whole chunk at a time)
    are compressed and written by the write call itself, not held in the cache until a flush: a disk that fills
    fails that write, before ``@frames_written`` counts its rows, and no copy into the cache is made."""
    dapl = h5p.create(h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(0, 0, 1.0)  # (slots, bytes, w0): no cache
    return h5py.Dataset(h5d.open(group.id, name.encode(), dapl=dapl))


def making_path(path: Path) -> Path:
    """The hidden name an output file is made under before it is renamed to ``path`` (see ``Hdf5Writer``)."""
    return path.with_name(f".{path.name}.making-{os.getpid()}")


def remove_stale_making(path: Path) -> list[Path]:
    """Remove the hidden half-made files of ``path`` that writers no longer running left (a kill -9 while making
    the layout), and the files their groups were named in beside the run (:mod:`.namer`); returns them."""
    gone = []
    for p in [*path.parent.glob(f".{path.name}.making-*"), *path.parent.glob(f".{path.name}.naming-*")]:
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and pid_alive(pid):
            continue
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone

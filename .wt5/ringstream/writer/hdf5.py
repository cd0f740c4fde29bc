"""The NeXus HDF5 results file (OUTPUTS.md): NXazint1d lineouts, optional NXazint2d cakes, written with SWMR.

The whole layout (every group, dataset and attribute) is created up front, then the file switches to SWMR mode, so a
reader opened with ``swmr=True`` can follow the run: it refreshes ``/entry/data/I`` and reads
``/entry@frames_written`` (the number of complete rows). A long-lived reader cannot refresh a group's attributes, so
``@frames_written`` and ``@run_complete`` are mirrored on ``/entry/data/I``: call ``I.refresh()`` and read
``I.attrs["frames_written"]`` (or reopen the file). Rows are buffered and appended in blocks (one row at a
time is ~30x slower); :meth:`Hdf5Writer.flush` publishes the buffered rows.

This module knows nothing of processes or sockets: the offline ``ringstream integrate`` and the daemon's writer
process both drive :class:`Hdf5Writer`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import InputError

log = logging.getLogger(__name__)

#: hc in keV·Å: E [keV] = HC_KEV_A / λ [Å].
HC_KEV_A = 12.398419843320026

#: Largest cake chunk, in bytes (the chunk holds several frames' cakes).
_CAKE_CHUNK_BYTES = 4 << 20

_STR = h5py.string_dtype("utf-8")


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; InputError if it exists and ``overwrite`` is false, or its folder is missing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output file already exists; pass --overwrite to replace it")
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


class Hdf5Writer:
    """Write one run's results to ``path`` in the OUTPUTS.md layout.

    Parameters: ``imap`` the IntegrationMap (bins and geometry planes), ``params`` the Params used (recorded under
    ``/entry/reduction/input``), ``engine_name`` recorded in ``reduction/engine``, ``write_2d`` whether cakes
    ``[n, n_r, n_eta]`` are stored, ``swmr`` turn on SWMR after creating the layout, ``block`` rows per append
    (and per chunk), ``overwrite`` replace an existing file, ``note`` free text for ``reduction/note``.
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
        block: int = 64,
        overwrite: bool = False,
        note: str = "",
    ) -> None:
        self.path = check_output_path(path, overwrite)
        self.n_r = int(imap.n_r)
        self.n_eta = int(imap.n_eta)
        self.write_2d = bool(write_2d)
        self.block = max(1, int(block))
        self.swmr = bool(swmr)
        self._written = 0
        self._last_index = -1
        self._closed = False
        self._buf_n = 0
        self._buf_index = np.zeros(self.block, dtype=np.uint64)
        self._buf_ts = np.zeros(self.block, dtype=np.float64)
        self._buf_sid: list[str] = []
        self._buf_I = np.zeros((self.block, self.n_r), dtype=np.float32)
        self._buf_cake = (
            np.zeros((self.block, self.n_r, self.n_eta), dtype=np.float32) if self.write_2d else None
        )
        try:
            self._f = h5py.File(self.path, "w", libver="latest")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot create output file ({exc})") from exc
        try:
            self._create_layout(imap, params, engine_name, note)
            self._f.flush()
            if self.swmr:
                self._f.swmr_mode = True
        except BaseException:
            self._f.close()
            raise

    # --- layout ------------------------------------------------------------------------------------------------

    def _create_layout(self, imap: Any, params: Any, engine_name: str, note: str) -> None:
        f = self._f
        nR, nE, blk = self.n_r, self.n_eta, self.block
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
        if lam > 0:
            d = mono.create_dataset("wavelength", data=np.float64(lam))
            d.attrs["units"] = "angstrom"
            d = mono.create_dataset("energy", data=np.float64(HC_KEV_A / lam))
            d.attrs["units"] = "keV"

        red = entry.create_group("reduction")
        red.attrs["NX_class"] = "NXprocess"
        red.create_dataset("program", data="ringstream")
        red.create_dataset("version", data=__version__)
        red.create_dataset("date", data=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        red.create_dataset(
            "note", data=note or "azimuthal integration with exact-area pixel splitting (MIDAS-compatible)"
        )
        red.create_dataset("engine", data=str(engine_name))
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
        d = data.create_dataset(
            "I", shape=(0, nR), maxshape=(None, nR), dtype=np.float32, chunks=(blk, max(nR, 1))
        )
        d.attrs["long_name"] = "area-weighted mean intensity over eta (MIDAS lineout)"
        self._add_radial(data, two_theta)
        d = data.create_dataset("r_px", data=r_px)
        d.attrs["units"] = "pixel"
        d.attrs["long_name"] = "bin-centre radius"
        if q_known:
            d = data.create_dataset("q", data=q)
            d.attrs["units"] = "1/angstrom"
        c1 = max(blk, 1024)
        data.create_dataset("frame_index", shape=(0,), maxshape=(None,), dtype=np.uint64, chunks=(c1,))
        data.create_dataset("source_id", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(c1,))
        d = data.create_dataset("timestamp", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(c1,))
        d.attrs["units"] = "s"
        d.attrs["long_name"] = "seconds since the epoch"
        self._I, self._index = data["I"], data["frame_index"]
        self._sid, self._ts = data["source_id"], data["timestamp"]

        self._cake = None
        if self.write_2d:
            cake = entry.create_group("cake")
            cake.attrs["NX_class"] = "NXdata"
            cake.attrs["signal"] = "I"
            cake.attrs["axes"] = np.array([".", "radial_axis", "azimuthal_axis"], dtype=_STR)
            cake.attrs["interpretation"] = "image"
            cake.attrs["definition"] = "NXazint2d"
            row_bytes = max(nR * nE * 4, 1)
            crows = max(1, min(blk, _CAKE_CHUNK_BYTES // row_bytes))
            self._cake = cake.create_dataset(
                "I", shape=(0, nR, nE), maxshape=(None, nR, nE), dtype=np.float32,
                chunks=(crows, max(nR, 1), max(nE, 1)),
            )
            self._add_radial(cake, two_theta)
            d = cake.create_dataset("azimuthal_axis", data=eta)
            d.attrs["long_name"] = "eta"
            d.attrs["units"] = "deg"

        geo = entry.create_group("geometry")
        geo.attrs["NX_class"] = "NXcollection"
        geo.attrs["description"] = "REtaMap planes: bin centres broadcast to [n_r, n_eta]; area 0 = empty bin"
        ones = np.ones((nR, nE), dtype=np.float64)
        for name, vec, units in (("r_px", r_px, "pixel"), ("two_theta", two_theta, "deg")):
            d = geo.create_dataset(name, data=vec[:, None] * ones)
            d.attrs["units"] = units
        d = geo.create_dataset("eta", data=eta[None, :] * ones)
        d.attrs["units"] = "deg"
        d = geo.create_dataset("area", data=np.asarray(imap.bin_area, dtype=np.float64).reshape(nR, nE))
        d.attrs["units"] = "pixel^2"
        qv = q if q_known else np.full(nR, np.nan)
        d = geo.create_dataset("q", data=qv[:, None] * ones)
        d.attrs["units"] = "1/angstrom"
        if not q_known:
            d.attrs["note"] = "Wavelength unknown: q is NaN"

        # The run's progress lives on /entry (the contract) and is mirrored on /entry/data/I, because a SWMR reader
        # can refresh a dataset (and with it the dataset's attributes) but not a group.
        self._progress = [entry, self._I]
        for obj in self._progress:
            obj.attrs["frames_written"] = np.int64(0)
            obj.attrs["run_complete"] = np.bool_(False)

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

    def _check_next_index(self, frame_index: int) -> int:
        idx = int(frame_index)
        if idx < 0:
            raise ValueError(f"frame_index {idx} is negative")
        if idx <= self._last_index:
            raise ValueError(
                f"frame_index {idx} is not greater than the previous one ({self._last_index}); "
                "rows must be appended in strictly increasing frame_index order"
            )
        return idx

    def append(
        self,
        frame_index: int,
        source_id: str,
        timestamp: float | None,
        lineout: np.ndarray,
        cake: np.ndarray | None = None,
    ) -> None:
        """Buffer one frame's row: lineout ``[n_r]``, cake ``[n_r, n_eta]`` (required when ``write_2d``)."""
        self._check_open()
        idx = self._check_next_index(frame_index)
        lineout = np.asarray(lineout)
        if lineout.shape != (self.n_r,):
            raise ValueError(f"lineout shape {lineout.shape} != ({self.n_r},)")
        if self.write_2d:
            if cake is None:
                raise ValueError("write_2d is on: a cake is required for every frame")
            cake = np.asarray(cake)
            if cake.shape != (self.n_r, self.n_eta):
                raise ValueError(f"cake shape {cake.shape} != ({self.n_r}, {self.n_eta})")
        k = self._buf_n
        self._buf_index[k] = idx
        self._buf_ts[k] = time.time() if timestamp is None else float(timestamp)
        self._buf_sid.append(str(source_id))
        self._buf_I[k] = lineout
        if self._buf_cake is not None:
            self._buf_cake[k] = cake
        self._buf_n = k + 1
        self._last_index = idx
        if self._buf_n == self.block:
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
        if n and (idx[0] <= self._last_index or (n > 1 and np.any(np.diff(idx) <= 0))):
            raise ValueError(
                f"frame_index values {idx.tolist()[:8]}... are not strictly increasing after {self._last_index}"
            )
        if idx[0] < 0:
            raise ValueError(f"frame_index {int(idx[0])} is negative")
        sids = [str(s) for s in source_ids]
        if len(sids) != n:
            raise ValueError(f"{len(sids)} source ids for {n} frames")
        ts = (
            np.full(n, time.time())
            if timestamps is None
            else np.asarray(timestamps, dtype=np.float64).reshape(-1)
        )
        if ts.size != n:
            raise ValueError(f"{ts.size} timestamps for {n} frames")
        lineouts = np.asarray(lineouts)
        if lineouts.shape != (n, self.n_r):
            raise ValueError(f"lineouts shape {lineouts.shape} != ({n}, {self.n_r})")
        if self.write_2d:
            if cakes is None:
                raise ValueError("write_2d is on: cakes are required")
            cakes = np.asarray(cakes)
            if cakes.shape != (n, self.n_r, self.n_eta):
                raise ValueError(f"cakes shape {cakes.shape} != ({n}, {self.n_r}, {self.n_eta})")
        if n < self.block - self._buf_n:
            for k in range(n):
                self.append(int(idx[k]), sids[k], float(ts[k]), lineouts[k], None if cakes is None else cakes[k])
            return
        self._write_buffer()
        self._write_rows(idx.astype(np.uint64), sids, ts, lineouts, cakes if self.write_2d else None)
        self._last_index = int(idx[-1])

    def _write_buffer(self) -> None:
        n = self._buf_n
        if n == 0:
            return
        self._write_rows(
            self._buf_index[:n], self._buf_sid, self._buf_ts[:n], self._buf_I[:n],
            None if self._buf_cake is None else self._buf_cake[:n],
        )
        self._buf_n = 0
        self._buf_sid = []

    def _write_rows(self, idx, sids, ts, lineouts, cakes) -> None:
        n = len(sids)
        a, b = self._written, self._written + n
        # Data first, the index datasets last: a reader that sees frame_index row k sees its data.
        self._I.resize(b, axis=0)
        self._I[a:b] = lineouts
        if self._cake is not None:
            self._cake.resize(b, axis=0)
            self._cake[a:b] = cakes
        self._ts.resize(b, axis=0)
        self._ts[a:b] = ts
        self._sid.resize(b, axis=0)
        self._sid[a:b] = np.array(sids, dtype=object)
        self._index.resize(b, axis=0)
        self._index[a:b] = idx
        self._written = b

    def flush(self) -> None:
        """Write the buffered rows, update ``@frames_written`` and flush the file so SWMR readers see them."""
        self._check_open()
        self._write_buffer()
        for obj in self._progress:
            obj.attrs.modify("frames_written", np.int64(self._written))
        self._f.flush()

    def close(self, run_complete: bool = True) -> None:
        """Flush, set ``@run_complete`` (true only after a clean end of run) and close the file. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
            for obj in self._progress:
                obj.attrs.modify("run_complete", np.bool_(bool(run_complete)))
            self._f.flush()
        finally:
            self._closed = True
            self._f.close()
        log.debug("closed %s: %d frames, run_complete=%s", self.path, self._written, run_complete)

    def __enter__(self) -> Hdf5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(run_complete=exc_type is None)

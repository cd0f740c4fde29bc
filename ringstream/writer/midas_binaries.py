"""MIDAS binary streams (docs/MIDAS-FORMATS.md section 6), appended in frame_index order, little-endian.

- ``fit.bin``: float64, per frame ``n_peaks`` rows of (Imax, BG, Mu, Rcen, Sigma, GoF, Area); a peak not fitted is a
  row of NaN, so ``np.fromfile("fit.bin").reshape(-1, n_peaks, 7)`` always works. Written whenever fitting.
- ``fit_curves.bin``: per ROI per frame ``int32 frame_index, int32 start_bin, int32 n_points`` then ``n_points``
  float64 model values.
- with ``--midas-binaries``: ``lineout.bin`` (per frame ``n_r`` pairs (R px, I) float64), ``Int2D.bin`` (per frame
  the cake, ``n_r * n_eta`` float64 in bin order r*n_eta + e; needs the cakes: ``Write2D 1``) and
  ``RTthEtaAreaMap.bin`` (written once: float64 planes R, 2θ, η, area, each ``[n_r, n_eta]``).

Rows are buffered and written at :meth:`MidasStreams.flush` (the writer's save points), so the files grow with the
HDF5 file. :func:`read_fit_curves` reads fit_curves.bin back.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExists

FIT_BIN = "fit.bin"
FIT_CURVES_BIN = "fit_curves.bin"
LINEOUT_BIN = "lineout.bin"
INT2D_BIN = "Int2D.bin"
MAP_BIN = "RTthEtaAreaMap.bin"

_CURVE_HEAD = np.dtype([("frame_index", "<i4"), ("start_bin", "<i4"), ("n_points", "<i4")])
_HEAD = struct.Struct("<iii")

#: bytes each file keeps in memory before a write
_BUFFER = 8 << 20

log = logging.getLogger(__name__)


def _open(path: Path, overwrite: bool, resume: bool = False):
    """``path`` opened to write a run's stream: created (OutputExists unless ``overwrite``), or with ``resume``
    the existing stream of a run being continued, to be cut (:meth:`MidasStreams.cut`) and appended to (one the
    writer died before making is made empty: it holds no frame, so the run is continued from its first)."""
    if resume and not path.is_file():  # the writer died before it made it: it holds no frame (the run goes on
        log.warning("%s: missing; made again, empty (the run continues from its first frame)", path)  # from 0)
        resume = False
    if path.exists() and not (overwrite or resume):
        raise OutputExists(path)
    try:
        return open(path, "r+b" if resume else "wb", buffering=_BUFFER)
    except OSError as exc:
        raise InputError(f"{path}: cannot {'open' if resume else 'create'} output file ({exc})") from exc


def _curve_ends(raw: bytes | memoryview) -> list[int]:
    """The end offset of each whole record of fit_curves.bin bytes ``raw`` (a cut last record is left out)."""
    ends, at, size = [], 0, len(raw)
    while at + _HEAD.size <= size:
        n = _HEAD.unpack_from(raw, at)[2]
        if n < 0 or at + _HEAD.size + 8 * n > size:
            break
        at += _HEAD.size + 8 * n
        ends.append(at)
    return ends


class MidasStreams:
    """The MIDAS streams of one run in ``folder``.

    ``n_peaks`` > 0 writes fit.bin and fit_curves.bin; ``binaries`` also writes lineout.bin, RTthEtaAreaMap.bin and,
    with ``cakes``, Int2D.bin. ``r_px`` ``[n_r]`` are the bin-centre radii of lineout.bin; ``remap`` the REtaMap
    ``(>=4, n_r, n_eta)`` whose first four planes make RTthEtaAreaMap.bin. ``fit_prefix`` goes before the names
    fit.bin and fit_curves.bin (``STEM_``: runs that share a folder never share these files). ``resume``: the
    streams exist, from a run whose writer died: :meth:`whole` says how much of them is whole, :meth:`cut` cuts
    them to the frames the run continues after (RTthEtaAreaMap.bin is kept as it is).
    """

    def __init__(self, folder: str | os.PathLike, *, n_r: int, n_eta: int, r_px: np.ndarray, remap: np.ndarray,
                 n_peaks: int, binaries: bool, cakes: bool, overwrite: bool = False, fit_prefix: str = "",
                 resume: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: MIDAS output folder does not exist")
        self.n_r, self.n_eta, self.n_peaks = int(n_r), int(n_eta), int(n_peaks)
        self.files: dict[str, Any] = {}
        self._r = np.asarray(r_px, dtype="<f8")
        self._lines: list[np.ndarray] = []
        self._cakes: list[np.ndarray] = []
        # fit.bin rows of the frames since the last flush, in a block that grows by doubling (no array per frame)
        self._fits = np.empty((64 if self.n_peaks else 0, self.n_peaks, 7), dtype="<f8")
        self._n_fits = 0
        self._curves: list[bytes] = []
        self.frames = 0
        names = ([FIT_BIN, FIT_CURVES_BIN] if self.n_peaks else []) + ([LINEOUT_BIN] if binaries else []) + (
            [INT2D_BIN] if binaries and cakes else [])
        try:
            for name in names:
                on_disk = fit_prefix + name if name in (FIT_BIN, FIT_CURVES_BIN) else name
                self.files[name] = _open(self.folder / on_disk, overwrite, resume)
            if binaries and not (resume and (self.folder / MAP_BIN).is_file()):
                with _open(self.folder / MAP_BIN, overwrite) as fh:
                    fh.write(np.ascontiguousarray(remap[:4], dtype="<f8").tobytes())
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    def _record(self, name: str) -> int:
        """Bytes of one frame in the fixed-size stream ``name``."""
        return {FIT_BIN: 56 * self.n_peaks, LINEOUT_BIN: 16 * self.n_r, INT2D_BIN: 8 * self.n_r * self.n_eta}[name]

    def whole(self) -> tuple[int | None, int | None]:
        """(frames whole in every fixed-size stream, records whole in fit_curves.bin) of streams opened to
        ``resume``; None where there is no such stream."""
        frames = [os.fstat(fh.fileno()).st_size // self._record(name) for name, fh in self.files.items()
                  if name != FIT_CURVES_BIN]
        records = None
        if FIT_CURVES_BIN in self.files:
            fh = self.files[FIT_CURVES_BIN]
            fh.seek(0)
            records = len(_curve_ends(fh.read()))
        return (min(frames) if frames else None), records

    def cut(self, frames: int, curve_records: int) -> None:
        """Cut streams opened to ``resume`` to their first ``frames`` frames and ``curve_records`` fit_curves.bin
        records (at most what :meth:`whole` said), and append from there."""
        for name, fh in self.files.items():
            if name == FIT_CURVES_BIN:
                fh.seek(0)
                ends = _curve_ends(fh.read())
                size = ends[curve_records - 1] if curve_records else 0
            else:
                size = frames * self._record(name)
            fh.truncate(size)
            fh.seek(size)
        self.frames = int(frames)

    def append(self, frame_index: int, lineout: np.ndarray, cake: np.ndarray | None = None,
               fit: np.ndarray | None = None, curves: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Buffer one frame (in frame_index order): lineout ``[n_r]``, cake ``[n_r, n_eta]``, fit ``[k, 7]``
        (rows k..n_peaks-1 become NaN), curves (ROI table ``[n_rois, 2]`` of (start_bin, n_points), values)."""
        if LINEOUT_BIN in self.files:
            pair = np.empty((self.n_r, 2), dtype="<f8")
            pair[:, 0] = self._r
            pair[:, 1] = lineout
            self._lines.append(pair)
        if INT2D_BIN in self.files:
            if cake is None:
                raise ValueError(f"frame {frame_index}: Int2D.bin needs the cake of every frame")
            self._cakes.append(np.asarray(cake, dtype="<f8").reshape(-1))
        if self.n_peaks:
            k = self._n_fits
            if k == len(self._fits):
                grown = np.empty((2 * k, self.n_peaks, 7), dtype="<f8")
                grown[:k] = self._fits
                self._fits = grown
            row = self._fits[k]
            if fit is None or not len(fit):
                row[...] = np.nan
            elif np.shape(fit) == (self.n_peaks, 7):
                row[...] = fit
            else:
                row[...] = np.nan
                row[: len(fit)] = fit
            self._n_fits = k + 1
            if curves is not None and len(curves[0]):
                values = np.asarray(curves[1], dtype="<f8")
                table = np.asarray(curves[0]).reshape(-1, 2)
                if len(table) == 1:  # (one ROI: no list of rows)
                    self._curves.append(_HEAD.pack(frame_index, int(table[0, 0]), int(table[0, 1]))
                                        + values[: int(table[0, 1])].tobytes())
                else:
                    at = 0
                    for start, n in table.tolist():
                        self._curves.append(_HEAD.pack(frame_index, start, n) + values[at:at + n].tobytes())
                        at += n
        self.frames += 1

    def flush(self) -> None:
        """Write the buffered frames and flush the files (OSError, e.g. ENOSPC, propagates)."""
        for name, parts in ((LINEOUT_BIN, self._lines), (INT2D_BIN, self._cakes)):
            if parts and name in self.files:
                self.files[name].write(np.concatenate([p.reshape(-1) for p in parts]).tobytes())
        if self._n_fits and FIT_BIN in self.files:
            self.files[FIT_BIN].write(memoryview(self._fits[: self._n_fits]).cast("B"))
        if self._curves:
            self.files[FIT_CURVES_BIN].write(b"".join(self._curves))
        self.discard()
        for fh in self.files.values():
            fh.flush()

    def discard(self) -> None:
        """Drop the buffered frames (after a failure elsewhere, so the streams hold what the HDF5 file holds)."""
        self._lines, self._cakes, self._curves = [], [], []
        self._n_fits = 0

    def close(self) -> None:
        """Flush and close every file (idempotent)."""
        try:
            if self.files:
                self.flush()
        finally:
            for fh in self.files.values():
                try:
                    fh.close()
                except OSError:
                    pass
            self.files = {}


def read_fit_curves(path: str | os.PathLike) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(frame_index, start_bin, values float64 [n_points])`` of each record of a fit_curves.bin file."""
    raw = Path(path).read_bytes()
    at = 0
    while at + _CURVE_HEAD.itemsize <= len(raw):
        head = np.frombuffer(raw, dtype=_CURVE_HEAD, count=1, offset=at)[0]
        at += _CURVE_HEAD.itemsize
        n = int(head["n_points"])
        if at + 8 * n > len(raw):
            raise InputError(f"{path}: truncated record of frame {int(head['frame_index'])} at byte {at}")
        yield int(head["frame_index"]), int(head["start_bin"]), np.frombuffer(raw, "<f8", n, at).copy()
        at += 8 * n

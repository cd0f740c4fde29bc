"""The one set of sinks every path writes through: the offline ``ringstream integrate`` and the daemon's writer.

A run hands :class:`RunOutputs` one :class:`FrameRecord` per frame in frame_index order (integrated or rejected)
and, from the daemon, the workers' partial omega sums and the PeakUpdates. :class:`RunOutputs` feeds:

- the NeXus HDF5 file (:class:`~ringstream.writer.hdf5.Hdf5Writer`): lineouts, cakes, fits and curves, metadata,
  ω, omega-sum groups, peak updates;
- the omega sums (:class:`~ringstream.writer.omega.OmegaSums`): from each record's cake, or from the partial sums;
- the GSAS-II zarr.zip (:class:`~ringstream.writer.zarr_zip.ZarrZipSink`), published at every :meth:`RunOutputs.save`;
- the MIDAS streams (:class:`~ringstream.writer.midas_binaries.MidasStreams`): fit.bin and fit_curves.bin when
  fitting, lineout.bin, Int2D.bin and RTthEtaAreaMap.bin with ``midas_dir``.

:meth:`RunOutputs.resume` continues a run whose writer was killed, in the same files, from the end of its last
omega-sum group written (:attr:`RunOutputs.resume_frame`); the frames from there on are appended again.

:meth:`RunOutputs.flush` makes every frame so far visible (HDF5 flush, binaries written); :meth:`RunOutputs.save`
also publishes the zarr.zip. A full disk (ENOSPC, EDQUOT, EFBIG) is an :class:`OutputError` naming the file and
the frames safely written; the caller stops the run and calls :meth:`RunOutputs.close` with ``run_complete=False``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..compression import decoded_size
from ..errors import InputError
from ..protocol import ProtocolError
from .hdf5 import Hdf5Writer
from .midas_binaries import INT2D_BIN, MidasStreams
from .omega import OmegaStamps, OmegaSums, name_digits
from .precision import NoiseRounding, map_noise_model
from .repair import check_resumable, cut_for_resume
from .storage import CakeChunks, Chunks, stored
from .zarr_zip import ZarrZipSink, instrument_parameters, reta_map

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputError(InputError):
    """An output file cannot be written (disk full, quota, file size limit); exit code 3."""


def default_zarr_path(h5_path: str | os.PathLike) -> Path:
    """``NAME.zarr.zip`` beside ``NAME.h5`` (docs/OUTPUTS.md)."""
    p = Path(h5_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.zarr.zip")


def numeric_keys(metadata: Mapping[str, Any] | None) -> list[str]:
    """The keys of ``metadata`` whose values are numbers (stored as ``/entry/data/metadata/<key>``)."""
    return sorted(k for k, v in (metadata or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k.isidentifier())


@dataclasses.dataclass(slots=True)
class FrameRecord:
    """One frame's results. ``lineout`` float ``[n_r]`` (None: the frame was rejected, ``reason`` says why);
    ``cake`` ``[n_r, n_eta]`` or None; ``fit`` float64 ``[k <= n_peaks, 7]`` or None; ``curves`` = (ROI table
    int ``[n_rois, 2]`` of (start_bin, n_points), model values float64) or None; ``timestamp`` s since the epoch;
    ``caked`` the per-η fits float64 ``[n_eta, n_peaks, 7]`` (``[fit] per_eta``) or None."""

    frame_index: int
    lineout: np.ndarray | None
    source_id: str = ""
    timestamp: float | None = None
    cake: np.ndarray | None = None
    fit: np.ndarray | None = None
    curves: tuple[np.ndarray, np.ndarray] | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""
    caked: np.ndarray | None = None


def record_from_result(msg: Any, buffers: Sequence[Any]) -> FrameRecord:
    """The :class:`FrameRecord` of an ok :class:`~ringstream.protocol.Result` and its buffers (views, no copy):
    lineout f4 ``[n_r]``, cake f4 ``[n_r, n_eta]`` if ``has_cake`` (a :class:`~.storage.CakeChunks` when it came
    compressed: ``cake_chunks``), fit f8 ``[n_peaks, 7]`` if ``n_peaks``, ROI
    table i4 ``[n_rois, 2]`` and model values f8 if ``n_rois``, per-η fits f8 ``[n_eta, caked_peaks, 7]`` if
    ``caked_peaks``. ``decode`` has checked every buffer's size against
    the header; a count or size that still does not match is a ProtocolError of kind "size"."""
    n_r, n_eta, n_peaks, n_rois = int(msg.n_r), int(msg.n_eta), int(msg.n_peaks), int(msg.n_rois)
    n_caked = int(msg.caked_peaks)
    cake_ = bool(msg.has_cake)
    packed = int(msg.cake_chunks) if cake_ else 0  # the cake compressed by the worker, in so many chunks
    want = 1 + (packed or cake_) + (n_peaks > 0) + (2 if n_rois else 0) + (n_caked > 0)
    if len(buffers) != want:
        raise ProtocolError("size", f"result {msg.frame_index}: {len(buffers)} buffers, expected {want}")
    frombuffer = np.frombuffer
    try:
        lineout = frombuffer(buffers[0], _F4)
        if lineout.size != n_r:
            raise ValueError(f"lineout of {lineout.size} values for n_r {n_r}")
        i, cake, fit, curves = 1, None, None, None
        if packed:  # (the codec checked the chunks' headers: n_r x n_eta values of float32 or float64 each)
            dtype = _F4 if decoded_size("hdf5", buffers[1]) == 4 * n_r * n_eta else _F8
            cake = CakeChunks(Chunks.made(buffers[1], None, (n_eta, n_r), dtype),
                              Chunks.made(buffers[2], buffers[3] if packed > 2 else None, (n_r, n_eta), dtype))
            i = 1 + packed
        elif cake_:
            cake = frombuffer(buffers[1], _F4).reshape(n_r, n_eta)
            i = 2
        if n_peaks:
            fit = frombuffer(buffers[i], _F8).reshape(n_peaks, 7)
            i += 1
        if n_rois:
            table = frombuffer(buffers[i], _I4).reshape(n_rois, 2)
            values = frombuffer(buffers[i + 1], _F8)
            if values.size != msg.n_curve_points:
                raise ValueError(f"{values.size} model values for n_curve_points {msg.n_curve_points}")
            curves = (table, values)
            i += 2
        caked = frombuffer(buffers[i], _F8).reshape(n_eta, n_caked, 7) if n_caked else None
    except ValueError as exc:
        raise ProtocolError("size", f"result {msg.frame_index}: buffers do not match the header ({exc})") from None
    return FrameRecord(int(msg.frame_index), lineout, msg.source_id, msg.timestamp or None, cake, fit, curves,
                       msg.metadata, caked=caked)


_F4, _F8, _I4 = np.dtype("<f4"), np.dtype("<f8"), np.dtype("<i4")


def _short(exc: BaseException) -> str:
    """One line for an OS or HDF5 write error: the OS's message when HDF5 quotes it, else the text collapsed."""
    text = " ".join(str(exc).split())
    m = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    if m:
        return f"[Errno {m.group(1)}] {m.group(2)}"
    return text if len(text) <= 160 else text[:157] + "..."


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc).lower()
    return "no space left" in text or "file too large" in text or "quota" in text


class RunOutputs:
    """Every output file of one run (see the module docstring).

    ``h5_path`` the HDF5 file; ``imap`` the IntegrationMap; ``params`` the Params; ``engine_name`` recorded in the
    file; ``n_peaks`` fit rows per frame (``fitting.peak_slots``; 0 = no fitting); ``zarr_path`` the zarr.zip
    (None: none); ``midas_dir`` folder of lineout.bin/Int2D.bin/RTthEtaAreaMap.bin (None: only fit.bin and
    fit_curves.bin, beside the HDF5 file, when fitting); ``metadata_keys`` numeric metadata datasets;
    ``expected_frames`` the run's length when known (0: not; sets the zero-padding of group names);
    ``sums_from_workers`` the omega sums come from :meth:`add_partial`, not from the records' cakes;
    ``fit_prefix`` goes before the names fit.bin and fit_curves.bin; ``cake_dtype`` (``"float32"`` or
    ``"float64"``) the stored dtype of the cakes and omega sums (``[output] cake_dtype``);
    ``cake_noise_fraction`` f > 0 stores them precision-bounded (``[output] cake_noise_fraction``,
    :mod:`~ringstream.writer.precision`), with the per-bin ``noise_model`` ``[2, n_r, n_eta]`` when the caller made
    it once for the geometry (None: made here from ``imap.weights``, ``imap.bin_area`` and ``params.Normalize``);
    ``fit_model`` the peak model of the fit rows (``[fit] model``, recorded under ``/entry/fit``);
    ``run_metadata`` and ``pixel_mask``: the run's own metadata and the detector mask it was integrated with
    (``/entry/run_metadata``);
    ``caked`` > 0: the records carry per-η fits (``[fit] per_eta``, made with that many SNIP iterations), stored as
    ``/entry/fit/caked`` and, with ``midas_dir``, written at the end as ``NAME_caked_peaks.h5`` there.
    """

    def __init__(self, h5_path: str | os.PathLike, imap: Any, params: Any, *, engine_name: str,
                 n_peaks: int = 0, zarr_path: str | os.PathLike | None = None,
                 midas_dir: str | os.PathLike | None = None, overwrite: bool = False, note: str = "",
                 metadata_keys: Sequence[str] = (), expected_frames: int = 0, sums_from_workers: bool = False,
                 block: int = 0, fit_prefix: str = "", cake_dtype: str = "float32",
                 cake_noise_fraction: float = 0.0, noise_model: np.ndarray | None = None,
                 fit_model: str = "pv", run_metadata: Mapping[str, Any] | None = None,
                 pixel_mask: np.ndarray | None = None, caked: int = 0) -> None:
        self._start(imap, params, expected_frames, sums_from_workers, cake_noise_fraction, noise_model)
        self.caked_dir = Path(midas_dir) if caked and n_peaks and midas_dir is not None else None
        self.h5 = Hdf5Writer(h5_path, imap, params, engine_name=engine_name, write_2d=self.write_2d,
                             overwrite=overwrite, note=note, n_peaks=n_peaks, block=block, fit_model=fit_model,
                             peak_locations=tuple(getattr(params, "PeakLocation", ()) or ()),
                             metadata_keys=metadata_keys, name_digits=self.digits, cake_dtype=cake_dtype,
                             rounding=self.rounding, run_metadata=run_metadata, pixel_mask=pixel_mask,
                             caked=caked)
        self.path = self.h5.path
        try:
            if zarr_path is not None:
                self.zarr = ZarrZipSink(zarr_path, self._remap, instrument_parameters(params), self.digits,
                                        overwrite=overwrite or not Path(zarr_path).exists(), dtype=cake_dtype,
                                        noise_fraction=cake_noise_fraction)
            if n_peaks or midas_dir is not None:
                self.midas = self._midas(imap, n_peaks, midas_dir, fit_prefix, overwrite=overwrite)
        except BaseException:
            self._abort()
            raise

    def _start(self, imap: Any, params: Any, expected_frames: int, sums_from_workers: bool,
               noise_fraction: float, model: np.ndarray | None) -> None:
        """The state of a run before its files are open."""
        self.rounding: NoiseRounding | None = None  # the precision-bounded mode's rounding (None: lossless)
        if noise_fraction:
            if model is None:
                model = map_noise_model(imap, getattr(params, "Normalize", True))
            self.rounding = NoiseRounding(noise_fraction, model)
        self.write_2d = bool(getattr(params, "Write2D", False))
        self.digits = name_digits(expected_frames)
        self.sums_from_workers = bool(sums_from_workers)
        self.omega_of = OmegaStamps(params)
        self.sums = OmegaSums(int(getattr(params, "OmegaSumFrames", 1)), (imap.n_r, imap.n_eta))
        self.counters = {"written": 0, "rejected": 0, "omega_groups": 0, "zarr_published": 0}
        self.h5: Hdf5Writer | None = None
        self.zarr: ZarrZipSink | None = None
        self.midas: MidasStreams | None = None
        q = np.asarray(imap.q, dtype=np.float64) if getattr(imap, "q", None) is not None else None
        self._remap = reta_map(imap.r_px, imap.two_theta, imap.eta,
                               np.asarray(imap.bin_area).reshape(imap.n_r, imap.n_eta), q)
        self.resume_frame = 0  # the frame the run continues from (:meth:`resume`)
        self.frames_flushed = 0
        self.durable_frames = 0  # run-local frames below this are in the files for good (rows and groups flushed)
        self.failed = False  # a disk-full error happened: close keeps only what was flushed

    def _midas(self, imap: Any, n_peaks: int, midas_dir: str | os.PathLike | None, fit_prefix: str, *,
               overwrite: bool = False, resume: bool = False) -> MidasStreams:
        streams = MidasStreams(midas_dir if midas_dir is not None else self.path.parent,
                               n_r=imap.n_r, n_eta=imap.n_eta, r_px=imap.r_px, remap=self._remap, n_peaks=n_peaks,
                               binaries=midas_dir is not None, cakes=self.write_2d, overwrite=overwrite,
                               fit_prefix=fit_prefix, resume=resume)
        if midas_dir is not None and not self.write_2d:
            log.warning("%s: Int2D.bin needs per-frame cakes (Write2D 1); not written", midas_dir)
        return streams

    @classmethod
    def resume(cls, h5_path: str | os.PathLike, imap: Any, params: Any, *, engine_name: str, n_peaks: int = 0,
               zarr_path: str | os.PathLike | None = None, midas_dir: str | os.PathLike | None = None,
               note: str = "", metadata_keys: Sequence[str] = (), expected_frames: int = 0,
               sums_from_workers: bool = False, block: int = 0, fit_prefix: str = "",
               cake_dtype: str = "float32", cake_noise_fraction: float = 0.0,
               noise_model: np.ndarray | None = None, caked: int = 0) -> RunOutputs:
        """Continue the run whose writer died: the same arguments as the run's (``engine_name``, ``note`` and
        ``metadata_keys`` are the file's already). The files are cut to the run's durable frames
        (:func:`~ringstream.writer.repair.cut_for_resume`: the HDF5 file, the MIDAS streams; the zarr.zip is
        rebuilt from the HDF5's omega-sum groups and published by rename) and reopened to append. The run
        continues from :attr:`resume_frame` (W): every frame from W on must be appended again (and, with
        ``sums_from_workers``, the partial sums of the groups from W's on), in frame order, as in a fresh run;
        the files then end as an uninterrupted run's would. InputError naming the file if it is missing, not a
        ringstream results file, or made for another layout (n_r, n_eta, n_peaks, Write2D, OmegaSumFrames,
        cake_dtype, cake_noise_fraction)."""
        del engine_name, note, metadata_keys  # (what the file already records)
        self = cls.__new__(cls)
        self._start(imap, params, expected_frames, sums_from_workers, cake_noise_fraction, noise_model)
        self.caked_dir = Path(midas_dir) if caked and n_peaks and midas_dir is not None else None
        self.path = Path(h5_path)
        layout = {"n_r": int(imap.n_r), "n_eta": int(imap.n_eta), "n_peaks": int(n_peaks),
                  "per_eta": int(bool(caked) and int(n_peaks) > 0),
                  "Write2D": int(self.write_2d), "OmegaSumFrames": int(getattr(params, "OmegaSumFrames", 1)),
                  "cake_dtype": str(cake_dtype), "cake_noise_fraction": float(cake_noise_fraction)}
        check_resumable(self.path, layout)
        try:
            if n_peaks or midas_dir is not None:
                self.midas = self._midas(imap, n_peaks, midas_dir, fit_prefix, resume=True)
            cut = cut_for_resume(self.path, layout, self.midas.whole() if self.midas is not None else (None, None))
            if self.midas is not None:
                self.midas.cut(cut.rows, cut.curve_rois)
            self.digits = cut.name_digits
            self.h5 = Hdf5Writer.reopen(self.path, n_r=imap.n_r, n_eta=imap.n_eta, write_2d=self.write_2d,
                                        n_peaks=n_peaks, metadata_keys=cut.metadata_keys, next_frame=cut.frame,
                                        block=block, name_digits=self.digits, cake_dtype=cake_dtype,
                                        rounding=self.rounding, caked=caked)
            self.sums.resume(cut.frame, cut.last_group + 1)
            if zarr_path is not None:
                self.zarr = ZarrZipSink(zarr_path, self._remap, instrument_parameters(params), self.digits,
                                        dtype=cake_dtype, noise_fraction=cake_noise_fraction)
                self.zarr.restore(self.h5.omega_groups(self.sums.group_of))
                self.counters["zarr_published"] += 1
        except BaseException:
            self._abort()
            raise
        self.counters.update(written=cut.rows, omega_groups=cut.groups, rejected=cut.frame - cut.rows)
        self.frames_flushed = cut.rows
        self.resume_frame = self.durable_frames = cut.frame
        log.info("%s: continuing the run from frame %d (%d frames and %d omega-sum groups kept)", self.path,
                 cut.frame, cut.rows, cut.groups)
        return self

    def _abort(self) -> None:
        for sink in (self.midas, self.h5):
            try:
                if sink is not None:
                    sink.close(*(() if sink is self.midas else (False,)))
            except Exception:  # noqa: BLE001 - already failing: keep the first error
                pass
        if self.zarr is not None:
            self.zarr.abandon()

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, RuntimeError) as exc:
            self._raise_full(what, exc)
            raise

    def _raise_full(self, what: str, exc: BaseException) -> None:
        """Raise the OutputError of a write to ``what`` that failed with ``exc`` if the disk is full (else return:
        the caller re-raises ``exc``)."""
        if _disk_full(exc):
            self.failed = True
            raise OutputError(f"{what}: disk full or file size limit ({_short(exc)}); {self.frames_flushed} "
                              f"frames were flushed before it") from exc

    # ------------------------------------------------------------------------------------------------- input
    def append(self, rec: FrameRecord) -> None:
        """One frame, in increasing frame_index order; a rejected frame (``lineout`` None) writes no row."""
        idx = int(rec.frame_index)
        omega = self.omega_of(idx, rec.metadata)
        sums = self.sums
        if rec.lineout is None:
            self.counters["rejected"] += 1
            sums.note_frame(idx, False, omega)
            if sums.grouping.ends_group(idx):  # the last frame of a group: it may be complete now
                self._take_groups(sums.pop_complete())
            return
        cake = rec.cake
        packed = type(cake) is CakeChunks  # compressed by the worker, with its one-frame omega sum
        if packed and self.packed_cake_problem(cake):
            raise ValueError(f"frame {idx}: {self.packed_cake_problem(cake)}")
        try:  # (what _guard does, without a closure per frame)
            self.h5.append(idx, rec.source_id, rec.timestamp, rec.lineout,
                           (cake.cake if packed else cake) if self.write_2d else None,
                           fit=rec.fit, curves=rec.curves, metadata=rec.metadata, omega=omega, caked=rec.caked)
        except (OSError, RuntimeError) as exc:
            self._raise_full(str(self.path), exc)
            raise
        if self.midas is not None:
            if packed:  # (Int2D.bin wants the values: the cake decoded, [n_r, n_eta])
                cake = np.transpose(cake.cake.array) if INT2D_BIN in self.midas.files else None
            self.midas.append(idx, rec.lineout, cake, rec.fit, rec.curves)
        if not self.sums_from_workers:
            if rec.cake is None:
                raise ValueError(f"frame {idx}: omega sums need the cake (or partial sums from the workers)")
            if packed:  # the frame's group is the frame: its sum, as the worker stored and compressed it
                sums.add_chunks(sums.group_of(idx), 1, rec.cake.sum)
            else:
                sums.add_cake(idx, np.asarray(rec.cake, dtype=np.float32))  # as stored, as the workers sum
        sums.note_frame(idx, True, omega)
        self.counters["written"] += 1
        if sums.grouping.ends_group(idx):  # the last frame of a group: it may be complete now
            self._take_groups(sums.pop_complete())

    def packed_cake_problem(self, cake: CakeChunks) -> str:
        """What keeps a cake compressed by a worker out of this run ("" for nothing): its dtype not the stored one,
        a precision-bounded run (the rounding is the writer's), or omega-sum groups of more than one frame."""
        if cake.dtype == self.h5.dtype and self.rounding is None and self.sums.grouping.size == 1:
            return ""
        return (f"a compressed cake of {cake.dtype}; the run stores {self.h5.dtype}"
                f"{', precision-bounded' if self.rounding is not None else ''}, OmegaSumFrames "
                f"{self.sums.grouping.size}")

    def add_partial(self, group: int, n_frames: int, partial: np.ndarray | Chunks) -> None:
        """A worker's partial sum of ``n_frames`` cakes of omega-sum group ``group``: an array, or the group's whole
        sum as the worker stored and compressed it (:class:`~.storage.Chunks`, of the stored dtype: ValueError if
        not, or in the precision-bounded mode, whose rounding is the writer's)."""
        if type(partial) is Chunks:
            if partial.dtype != self.h5.dtype or self.rounding is not None:
                raise ValueError(f"compressed partial sum of group {group}: {partial.dtype}, the run stores "
                                 f"{self.h5.dtype}{' precision-bounded' if self.rounding is not None else ''}")
            self.sums.add_chunks(group, n_frames, partial)
        else:
            self.sums.add_partial(group, n_frames, partial)
        self._take_groups(self.sums.pop_complete())

    def peak_update(self, seq: int, from_frame: int, peaks: Sequence[float], origin: str) -> bool:
        """Record a PeakUpdate; False (and nothing recorded) when the run does not fit peaks."""
        if not self.h5.n_peaks:
            return False
        self.h5.add_peak_update(seq, from_frame, peaks, origin)
        return True

    def _take_groups(self, groups) -> None:
        for g in groups:
            if g.chunks is None:  # (else a worker stored and compressed it)
                g.sum = stored(g.sum, self.h5.dtype, self.rounding)  # the float64 sum rounded once, for both files
                g.chunks = Chunks(g.sum, zarr=self.zarr is not None)  # compressed for both, in the background
            self.h5.add_omega_group(g, self.digits)
            if self.zarr is not None:
                self.zarr.add_group(g)
            self.counters["omega_groups"] += 1

    @property
    def sums_waiting(self) -> int:
        """Integrated frames of finished groups whose partial sums have not arrived."""
        return self.sums.waiting()

    def sums_waiting_at_end(self, n_frames: int) -> int:
        """:attr:`sums_waiting` at the end of a run of ``n_frames`` (the last group counts as finished)."""
        return self.sums.waiting(end=n_frames)

    # ------------------------------------------------------------------------------------------------ output
    def flush(self) -> None:
        """Make every frame so far visible: HDF5 flush (``@frames_written``), MIDAS streams written;
        :attr:`durable_frames` moves to the frames whose rows and omega-sum groups this flush wrote."""
        durable = self.sums.handed_out_below()
        self._guard(str(self.path), self.h5.flush)
        if self.midas is not None:
            self._guard(str(self.midas.folder), self.midas.flush)
        self.frames_flushed = self.h5.frames_written
        self.durable_frames = durable

    def save(self) -> None:
        """:meth:`flush` and publish the zarr.zip (the save interval)."""
        self.flush()
        if self.zarr is not None and self._guard(str(self.zarr.path), lambda: self.zarr.publish(wait=False)):
            self.counters["zarr_published"] += 1

    def wait_published(self) -> None:
        """Wait until a zarr.zip publication running in the background is done (errors raised here)."""
        if self.zarr is not None:
            self.zarr._join(True)

    def source_counters(self, counters: Mapping[str, Any]) -> None:
        """The ingest's counters at the end of the stream, into the HDF5 (``/entry/reduction/source_counters``)."""
        if not self.failed:
            self.h5.set_source_counters(counters)

    def close(self, run_complete: bool) -> None:
        """End of run: every group still held (complete or not) is written, everything saved and closed.
        After a disk-full error, closes what can be closed and keeps the last published zarr.zip."""
        failed: BaseException | None = None
        if self.failed:  # the disk filled up: keep what was flushed, write nothing more
            if self.midas is not None:
                self.midas.discard()
            self.h5.discard_buffer()
        else:
            try:
                self._take_groups(self.sums.pop_all())
                self.flush()
                if self.zarr is not None:  # the last copy runs while the HDF5 file is closed; joined below
                    self.zarr.publish(wait=False, force=True, final=True)
            except BaseException as exc:  # noqa: BLE001 - close the rest, then report the first error
                failed = exc
        for step in ("midas", "h5", "zarr"):
            try:
                if step == "midas" and self.midas is not None:
                    self.midas.close()
                elif step == "h5":
                    self.h5.close(run_complete=run_complete and failed is None)
                elif step == "zarr" and self.zarr is not None:
                    self.zarr.abandon() if failed else self.zarr.close()
            except BaseException as exc:  # noqa: BLE001
                failed = failed or exc
        if failed is None and not self.failed and self.caked_dir is not None:
            try:  # MIDAS's caked-peaks file: a table of the whole run, made once from the closed HDF5 file
                from .export import export_caked_peaks

                export_caked_peaks(self.path, self.caked_dir, overwrite=True)
            except (OSError, RuntimeError) as exc:
                failed = exc
        if failed is not None:
            if isinstance(failed, OutputError) or not _disk_full(failed):
                raise failed
            raise OutputError(f"{self.path}: disk full while closing ({_short(failed)})") from failed

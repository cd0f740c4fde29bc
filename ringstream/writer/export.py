"""Regenerate the other products from the HDF5 file, the record of truth (``ringstream export``).

- :func:`export_zarr`: the GSAS-II zarr.zip from ``/entry/geometry`` (REtaMap), ``/entry/omega_sum`` (the groups,
  same names and attributes as the run's) and ``/entry/reduction/input`` (InstrumentParameters);
- :func:`export_midas`: lineout.bin, RTthEtaAreaMap.bin, Int2D.bin (when the file has cakes), fit.bin and
  fit_curves.bin (when it has fits), ``NAME_caked_peaks.h5`` (when it has per-η fits:
  :mod:`~ringstream.writer.caked_peaks`);
- :func:`export_csv`: ``lineouts.csv`` (one row per frame: frame_index, source_id, timestamp, omega, then I at each
  radial bin; the header gives 2θ), ``radial_axis.csv`` (r_px, 2θ, q per bin) and, with fits, ``peaks.csv``.

Everything is read in blocks of frames, so a file larger than memory exports. The file may be one a run is still
writing (opened with SWMR; ``@frames_written`` rows are taken).
"""

from __future__ import annotations

import csv
import os
import types
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError, OutputExists
from .caked_peaks import write_caked_peaks
from .layout import cake_rows
from .midas_binaries import MidasStreams
from .omega import OmegaGroup
from .storage import stored_row_chunks
from .zarr_zip import INSTRUMENT_KEYS, ZarrZipSink, instrument_parameters, reta_map

#: frames read at a time
BLOCK = 1024


def open_results(path: str | os.PathLike) -> h5py.File:
    """Open a ringstream results file for reading (SWMR, so a growing file works); InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r", swmr=True, libver="latest")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5 ({exc}); if a writer was killed, run "
                         f"'ringstream repair {path}'") from exc
    if "entry/data/I" not in f or "entry/geometry" not in f:
        f.close()
        raise InputError(f"{path}: not a ringstream results file (no /entry/data/I or /entry/geometry)")
    return f


def _frames(f: h5py.File) -> int:
    e = f["entry"]
    return min(int(e["data/I"].attrs.get("frames_written", e["data/I"].shape[0])), e["data/I"].shape[0],
               e["data/frame_index"].shape[0])


def _remap(f: h5py.File) -> np.ndarray:
    g = f["entry/geometry"]
    q = g["q"][:, 0]
    return reta_map(g["r_px"][:, 0], g["two_theta"][:, 0], g["eta"][0, :], g["area"][...],
                    None if not np.all(np.isfinite(q)) else q)


def _instrument(f: h5py.File) -> dict[str, float]:
    inp = f["entry/reduction/input"]
    values = {}
    for key, _ in INSTRUMENT_KEYS.values():
        if key in inp:
            try:
                values[key] = float(inp[key][()])
            except (TypeError, ValueError):
                pass
    return instrument_parameters(types.SimpleNamespace(**values))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def omega_groups(f: h5py.File):
    """Yield the file's omega-sum groups as :class:`~ringstream.writer.omega.OmegaGroup`, in order."""
    g = f["entry/omega_sum"]
    n = min(g[k].shape[0] for k in ("I", "n_frames", "first_frame", "last_frame", "first_omega", "last_omega", "name"))
    stored_row = stored_row_chunks(g["I"])  # (as stored, not decoded: the zarr chunk is made of their blocks)
    for k in range(n):
        chunks = stored_row(k) if stored_row is not None else None
        yield OmegaGroup(k, g["I"][k] if chunks is None else None, int(g["n_frames"][k]), int(g["first_frame"][k]),
                         int(g["last_frame"][k]), float(g["first_omega"][k]), float(g["last_omega"][k]),
                         chunks=chunks)


def export_zarr(h5_path: str | os.PathLike, zarr_path: str | os.PathLike, overwrite: bool = False) -> int:
    """Write the zarr.zip of ``h5_path`` to ``zarr_path`` (the sums in the file's dtype, as stored: a
    precision-bounded file's sums keep their rounding and say so); returns the number of groups."""
    with open_results(h5_path) as f:
        digits = int(f["entry/omega_sum"].attrs.get("name_digits", 9))
        sums = f["entry/omega_sum/I"]
        sink = ZarrZipSink(zarr_path, _remap(f), _instrument(f), digits, overwrite=overwrite,
                           dtype=sums.dtype.name, noise_fraction=float(sums.attrs.get("cake_noise_fraction", 0.0)))
        n = 0
        try:
            for group in omega_groups(f):
                sink.add_group(group)
                n += 1
            sink.close()
        except BaseException:
            sink.abandon()
            raise
    return n


def export_midas(h5_path: str | os.PathLike, folder: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Write the MIDAS binaries of ``h5_path`` into ``folder`` (created if missing); returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open_results(h5_path) as f:
        e = f["entry"]
        n = _frames(f)
        r_px = e["data/r_px"][...]
        n_r, n_eta = e["geometry/area"].shape
        cake_ds = cake_rows(f)
        has_cake = cake_ds is not None
        n_peaks = e["fit/peaks"].shape[1] if "fit/peaks" in e else 0
        out = MidasStreams(folder, n_r=n_r, n_eta=n_eta, r_px=r_px, remap=_remap(f), n_peaks=n_peaks,
                           binaries=True, cakes=has_cake, overwrite=overwrite)
        try:
            rois = e["fit/curve_rois"][...] if n_peaks else np.zeros((0, 3), dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(rois[:, 2])]) if len(rois) else np.zeros(1, dtype=np.int64)
            for a in range(0, n, BLOCK):
                b = min(n, a + BLOCK)
                idx = e["data/frame_index"][a:b]
                lines = e["data/I"][a:b]
                cakes = cake_ds[a:b].transpose(0, 2, 1) if has_cake else None  # (stored [nEta, nR])
                fits = e["fit/peaks"][a:b] if n_peaks else None
                for k in range(b - a):
                    curves = None
                    if n_peaks and len(rois):
                        lo, hi = np.searchsorted(rois[:, 0], [idx[k], idx[k] + 1])
                        if hi > lo:
                            curves = (rois[lo:hi, 1:], e["fit/curve_values"][starts[lo]:starts[hi]])
                    out.append(int(idx[k]), lines[k], None if cakes is None else cakes[k],
                               None if fits is None else fits[k], curves)
                out.flush()
            names = out.names
        finally:
            out.close()
    caked = export_caked_peaks(h5_path, folder, overwrite=overwrite)  # a file with per-eta fits: MIDAS's table
    return sorted(names + ["RTthEtaAreaMap.bin"] + ([caked.name] if caked is not None else []))


def export_caked_peaks(h5_path: str | os.PathLike, folder: str | os.PathLike,
                       overwrite: bool = False) -> Path | None:
    """Write MIDAS's ``folder/NAME_caked_peaks.h5`` from ``h5_path``'s per-η fits (:mod:`.caked_peaks`); None when
    it has none."""
    with open_results(h5_path) as f:
        return write_caked_peaks(f, h5_path, folder, overwrite=overwrite)


def export_csv(h5_path: str | os.PathLike, folder: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Write ``lineouts.csv``, ``radial_axis.csv`` and (with fits) ``peaks.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["lineouts.csv", "radial_axis.csv"]
    with open_results(h5_path) as f:
        e = f["entry"]
        n = _frames(f)
        if "fit/peaks" in e:
            names.append("peaks.csv")
        for name in names:
            if (folder / name).exists() and not overwrite:
                raise OutputExists(folder / name)
        tth = e["data/radial_axis"][...]
        q = e["data/q"][...] if "data/q" in e else np.full(tth.shape, np.nan)
        with open(folder / "radial_axis.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["bin", "r_px", "two_theta_deg", "q_inv_angstrom"])
            for k, (r, t, qq) in enumerate(zip(e["data/r_px"][...], tth, q, strict=True)):
                w.writerow([k, repr(float(r)), repr(float(t)), repr(float(qq))])
        with open(folder / "lineouts.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame_index", "source_id", "timestamp", "omega"] + [f"I@{t:.6f}deg" for t in tth])
            for a in range(0, n, BLOCK):
                b = min(n, a + BLOCK)
                d = e["data"]
                for idx, sid, ts, om, row in zip(d["frame_index"][a:b], d["source_id"][a:b], d["timestamp"][a:b],
                                                 d["omega"][a:b], d["I"][a:b], strict=True):
                    w.writerow([int(idx), _text(sid), repr(float(ts)), repr(float(om))]
                               + [repr(float(v)) for v in row])
        if "fit/peaks" in e:
            cols = str(_text(e["fit/peaks"].attrs["columns"])).split(",")
            with open(folder / "peaks.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["frame_index", "peak"] + cols)
                for a in range(0, n, BLOCK):
                    b = min(n, a + BLOCK)
                    for idx, rows in zip(e["data/frame_index"][a:b], e["fit/peaks"][a:b], strict=True):
                        for p, row in enumerate(rows):
                            w.writerow([int(idx), p] + [repr(float(v)) for v in row])
    return names

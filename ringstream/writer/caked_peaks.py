"""MIDAS's caked-peaks HDF5 (``NAME_caked_peaks.h5``) from the per-η fits in a results file.

The layout is what MIDAS's ``utils/fit_caked_peaks.py`` writes and ``gui/viewers/plot_caked_peaks.py`` reads: one
row per fitted peak (NaN fits of ``/entry/fit/caked`` are left out), in (frame, η bin, peak) order:

    /metadata/tth_axis    float64 [n_r]      2θ of the R bins (deg)
    /metadata/eta_axis    float64 [n_eta]    η of the η bins (deg)
    /metadata/frame_keys  str [n_frames]     the frames' keys (attribute zarr_source: the results file)
    /peaks/frame_idx      int32              the frame's row in the results file (= its run-local frame index when
                                             no frame was rejected)
    /peaks/eta_idx        int32              η bin
    /peaks/peak_nr        int32              the peak's slot (its row in fit.bin)
    /peaks/eta_deg, center_2theta, area, sig, gam, FWHM_deg, eta_mix, d_spacing_A, chi_sq   float64
    /peaks/frame_key      str                the frame's key

A frame's key is ``LastFrameNumber_<frame_index>`` zero-padded as the zarr.zip's ``OmegaSumFrame`` members
(``/entry/omega_sum@name_digits``): with ``OmegaSumFrames 1`` it names the zarr.zip array of that frame's cake, as
MIDAS's viewer expects. ``d_spacing_A`` is λ / (2 sin θ), 0 when the wavelength is unknown (as MIDAS writes it).
Strings are variable-length UTF-8 (``h5py.string_dtype()``), as MIDAS's.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import OutputExists

#: frames read at a time
BLOCK = 1024

#: the float columns of /peaks and the /entry/fit/caked column each comes from (None: computed)
FLOAT_COLUMNS = (("eta_deg", None), ("center_2theta", "center"), ("area", "area"), ("sig", "sig"),
                 ("gam", "gam"), ("FWHM_deg", "FWHM"), ("eta_mix", "eta"), ("d_spacing_A", None),
                 ("chi_sq", "chi2_dof"))
INT_COLUMNS = ("frame_idx", "eta_idx", "peak_nr")


def caked_peaks_name(h5_path: str | os.PathLike) -> str:
    """``NAME_caked_peaks.h5`` for ``NAME.h5`` (MIDAS: ``NAME.caked.hdf.zarr.zip`` → ``NAME_caked_peaks.h5``)."""
    p = Path(h5_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return f"{stem}_caked_peaks.h5"


def write_caked_peaks(f: h5py.File, h5_path: str | os.PathLike, folder: str | os.PathLike,
                      overwrite: bool = False) -> Path | None:
    """Write ``folder/NAME_caked_peaks.h5`` from the results file ``f`` (open, at ``h5_path``): its
    ``/entry/fit/caked``; None (nothing written) when it has no per-η fits. OutputExists unless ``overwrite``
    (:func:`~ringstream.writer.export.export_caked_peaks` opens the file)."""
    e = f["entry"]
    if "fit/caked" not in e:
        return None
    out = Path(folder) / caked_peaks_name(h5_path)
    if out.exists() and not overwrite:
        raise OutputExists(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    caked = e["fit/caked"]
    n = min(caked.shape[0], e["data/frame_index"].shape[0],
            int(e["data/I"].attrs.get("frames_written", caked.shape[0])))
    digits = int(e["omega_sum"].attrs.get("name_digits", 9))
    tth = e["data/radial_axis"][...] if "data/radial_axis" in e else e["geometry/two_theta"][:, 0]
    eta = e["geometry/eta"][0, :]
    lam = float(e["reduction/input/Wavelength"][()]) if "reduction/input/Wavelength" in e else 0.0
    cols = {name: i for i, name in enumerate(str(_text(caked.attrs["columns"])).split(","))}
    index = e["data/frame_index"][:n]
    keys = [f"LastFrameNumber_{int(k):0{digits}d}" for k in index]
    tmp = out.with_name(out.name + ".part")
    with h5py.File(tmp, "w") as g:
        meta = g.create_group("metadata")
        meta.attrs["zarr_source"] = str(Path(h5_path))
        meta.create_dataset("tth_axis", data=np.asarray(tth, dtype=np.float64))
        meta.create_dataset("eta_axis", data=np.asarray(eta, dtype=np.float64))
        meta.create_dataset("frame_keys", data=np.array(keys, dtype=object), dtype=h5py.string_dtype())
        pk = g.create_group("peaks")
        ds = {name: pk.create_dataset(name, (0,), maxshape=(None,), dtype=np.int32, chunks=(65536,))
              for name in INT_COLUMNS}
        ds.update({name: pk.create_dataset(name, (0,), maxshape=(None,), dtype=np.float64, chunks=(65536,))
                   for name, _ in FLOAT_COLUMNS})
        ds["frame_key"] = pk.create_dataset("frame_key", (0,), maxshape=(None,), dtype=h5py.string_dtype(),
                                            chunks=(65536,))
        for a in range(0, n, BLOCK):
            b = min(n, a + BLOCK)
            rows = caked[a:b]  # [f, n_eta, peaks, columns]
            f_i, e_i, p_i = np.nonzero(np.isfinite(rows[..., cols["center"]]))
            got = rows[f_i, e_i, p_i]
            values = {"frame_idx": a + f_i, "eta_idx": e_i, "peak_nr": p_i, "eta_deg": eta[e_i],
                      "d_spacing_A": _d_spacing(got[:, cols["center"]], lam),
                      "frame_key": np.array([keys[a + i] for i in f_i], dtype=object)}
            values.update({name: got[:, cols[src]] for name, src in FLOAT_COLUMNS if src is not None})
            m0 = ds["frame_idx"].shape[0]
            for name, d in ds.items():
                d.resize((m0 + f_i.size,))
                d[m0:] = values[name]
    os.replace(tmp, out)
    return out


def _d_spacing(center_2theta: np.ndarray, wavelength: float) -> np.ndarray:
    if not wavelength > 0:
        return np.zeros_like(center_2theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = wavelength / (2.0 * np.sin(np.radians(center_2theta) / 2.0))
    return np.where(center_2theta > 0, d, 0.0)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)

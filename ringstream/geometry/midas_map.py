"""MIDAS ``Map.bin`` / ``nMap.bin`` (v3): export a map for MIDAS, import a MIDAS-built map
(docs/MIDAS-FORMATS.md section 4).

Both files start with the same 64-byte little-endian header::

    u32 magic 0x3050414D ("MAP0") | u32 version 3 | u8[32] SHA-256 of the canonical parameter string |
    u8 q_mode | u8 gradient_mode (1) | 6 pad | f64 wavelength (Å; 0 in R mode) | 8 pad

``Map.bin`` then holds 24-byte records ``{f32 y, f32 z, f64 frac, f32 deltaR, f32 areaWeight}`` grouped by bin
``b = r·n_eta + e``: y, z the raw-frame pixel column and row, frac the map weight ``area/(SA·P)``, areaWeight the
area (px²), deltaR = R(pixel centre) − R(bin centre) in px. ``nMap.bin`` holds int32 pairs ``(count, offset)`` per
bin, the offset counted in records. A file without the magic is a *legacy* map: it cannot be validated.

MIDAS itself never checks the hash; we do, since a stale map is a silent wrong answer.
"""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, MapError

MAGIC = 0x3050414D
VERSION = 3
HEADER_SIZE = 64
GRADIENT_MODE = 1
#: magic, version, hash, q_mode, gradient_mode, 6 pad, wavelength, 8 pad
HEADER_STRUCT = struct.Struct("<II32sBB6xd8x")
assert HEADER_STRUCT.size == HEADER_SIZE

#: one Map.bin record (24 bytes, packed, little-endian)
RECORD_DTYPE = np.dtype([("y", "<f4"), ("z", "<f4"), ("frac", "<f8"), ("deltaR", "<f4"), ("areaWeight", "<f4")])
assert RECORD_DTYPE.itemsize == 24

#: one nMap.bin entry per bin: (count, offset in records)
NMAP_DTYPE = np.dtype([("count", "<i4"), ("offset", "<i4")])

MAP_NAME = "Map.bin"
NMAP_NAME = "nMap.bin"


# ------------------------------------------------------------------------------------------------ the hash
def midas_canonical_string(p, version: int = VERSION) -> str:
    """The parameter string MIDAS ``MapHeader.h`` hashes (v3; ``version=2`` omits p6), C ``%.6f`` == ``{:.6f}``.

    ``BC=%.6f,%.6f|EtaBinSize=%.6f|EtaMax=%.6f|EtaMin=%.6f|Lsd=%.6f|NrPixelsY=%d|NrPixelsZ=%d|RBinSize=%.6f|``
    ``RMax=%.6f|RMin=%.6f|RhoD=%.6f|TransOpt=%d[,%d...]|p0=%.6f|p1=%.6f|p2=%.6f|p3=%.6f|p4=%.6f|p6=%.6f|``
    ``pxY=%.6f|pxZ=%.6f|tx=%.6f|ty=%.6f|tz=%.6f`` then ``|qMode=1|Wavelength=%.8f`` in Q mode.
    """

    def f(x) -> str:
        return f"{float(x):.6f}"

    opts = [int(o) for o in (p.ImTransOpt or ())]
    transopt = f"TransOpt={len(opts)}" + "".join(f",{o}" for o in opts[:10])  # MIDAS keeps at most 10
    pp = [float(v) for v in p.p]
    parts = [
        f"BC={f(p.BC[0])},{f(p.BC[1])}",
        f"EtaBinSize={f(p.EtaBinSize)}",
        f"EtaMax={f(p.EtaMax)}",
        f"EtaMin={f(p.EtaMin)}",
        f"Lsd={f(p.Lsd)}",
        f"NrPixelsY={int(p.NrPixelsY)}",
        f"NrPixelsZ={int(p.NrPixelsZ)}",
        f"RBinSize={f(p.RBinSize)}",
        f"RMax={f(p.RMax)}",
        f"RMin={f(p.RMin)}",
        f"RhoD={f(p.RhoD)}",
        transopt,
        *(f"p{i}={f(pp[i])}" for i in range(5)),
    ]
    if version >= 3:
        parts.append(f"p6={f(pp[6])}")
    parts += [f"pxY={f(p.pxY)}", f"pxZ={f(p.pxZ)}", f"tx={f(p.tx)}", f"ty={f(p.ty)}", f"tz={f(p.tz)}"]
    if p.q_mode:
        parts.append(f"qMode=1|Wavelength={float(p.Wavelength):.8f}")
    return "|".join(parts)


def midas_param_hash(p, version: int = VERSION) -> bytes:
    """SHA-256 (32 bytes) of :func:`midas_canonical_string`."""
    return hashlib.sha256(midas_canonical_string(p, version).encode("ascii")).digest()


def pack_header(p) -> bytes:
    """The 64-byte v3 header for parameters ``p``."""
    q_mode = 1 if p.q_mode else 0
    wavelength = float(p.Wavelength) if q_mode else 0.0
    return HEADER_STRUCT.pack(MAGIC, VERSION, midas_param_hash(p), q_mode, GRADIENT_MODE, wavelength)


def unpack_header(data: bytes) -> dict | None:
    """The header fields of a file's first bytes, or None for a legacy file (no magic)."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, phash, q_mode, gradient_mode, wavelength = HEADER_STRUCT.unpack_from(data, 0)
    if magic != MAGIC:
        return None
    return {"version": version, "hash": phash, "q_mode": q_mode, "gradient_mode": gradient_mode,
            "wavelength": wavelength}


# ---------------------------------------------------------------------------------------------- helpers
def _bins(p):
    """(r_edges, eta_edges, r_px, two_theta, q, eta) of ``p`` from :mod:`ringstream.geometry.bins`."""
    from . import bins
    from .detector import DetectorGeometry

    r_px, two_theta, q, eta = bins.bin_centres(p, DetectorGeometry.from_params(p))
    return bins.radial_edges(p), bins.eta_edges(p), r_px, two_theta, q, eta


def _pixel_centre_r(p) -> np.ndarray:
    """R (px, corrected) of every raw pixel's centre, float64 ``[nZ·nY]`` indexed by raw flat index.

    The centres are the transformed-frame coordinates of each raw pixel (ImTransOpt undone, DistortionFile
    displacement applied), mapped through the full geometry (tilts, 15-term distortion, parallax).
    """
    from .detector import DetectorGeometry

    geom = DetectorGeometry.from_params(p)
    y, z = geom.pixel_centres()
    r, _ = geom.r_eta(y, z)
    return r


def _param_source(p) -> str:
    src = getattr(p, "source", None)
    return str(src) if src else "<parameters>"


# ------------------------------------------------------------------------------------------------ export
def export_midas(imap, p, out_dir) -> tuple[Path, Path]:
    """Write ``imap`` (built from ``p``) as MIDAS v3 ``Map.bin`` and ``nMap.bin`` in ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nz, ny = (int(s) for s in imap.shape)
    if (nz, ny) != (int(p.NrPixelsZ), int(p.NrPixelsY)):
        raise MapError(f"export to {out}: the map is for a ({nz}, {ny}) detector but the parameters give "
                       f"(NrPixelsZ, NrPixelsY) = ({p.NrPixelsZ}, {p.NrPixelsY})")
    n_bins = int(imap.n_r) * int(imap.n_eta)

    w = sp.csr_matrix(imap.weights, dtype=np.float64)
    w.sum_duplicates()
    w.sort_indices()
    a = sp.csr_matrix(imap.areas, dtype=np.float64)
    a.sum_duplicates()
    a.sort_indices()
    if not (np.array_equal(w.indptr, a.indptr) and np.array_equal(w.indices, a.indices)):
        # maps from build_map share one pattern; otherwise put both on the union of the two patterns
        u = (abs(w) + abs(a)).tocoo()
        order = np.lexsort((u.col, u.row))
        rows_u, cols_u = u.row[order].astype(np.int64), u.col[order].astype(np.int64)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows_u, minlength=n_bins))])
        w = sp.csr_matrix((np.asarray(w[rows_u, cols_u]).ravel(), cols_u, indptr), shape=w.shape)
        a = sp.csr_matrix((np.asarray(a[rows_u, cols_u]).ravel(), cols_u, indptr), shape=a.shape)
    if w.nnz > np.iinfo(np.int32).max:
        raise MapError(f"{out / MAP_NAME}: {w.nnz} records do not fit nMap.bin's int32 offsets")

    counts = np.diff(w.indptr)
    rows = np.repeat(np.arange(n_bins, dtype=np.int64), counts)  # bin of each record
    cols = w.indices.astype(np.int64)  # raw flat pixel index p = z·nY + y
    r_centre = _pixel_centre_r(p)

    rec = np.empty(w.nnz, dtype=RECORD_DTYPE)
    rec["y"] = cols % ny
    rec["z"] = cols // ny
    rec["frac"] = w.data
    rec["deltaR"] = r_centre[cols] - np.asarray(imap.r_px, dtype=np.float64)[rows // int(imap.n_eta)]
    rec["areaWeight"] = a.data

    nmap = np.empty(n_bins, dtype=NMAP_DTYPE)
    nmap["count"] = counts
    nmap["offset"] = w.indptr[:-1]
    header = pack_header(p)
    map_path, nmap_path = out / MAP_NAME, out / NMAP_NAME
    with open(map_path, "wb") as fh:
        fh.write(header)
        fh.write(rec.tobytes())
    with open(nmap_path, "wb") as fh:
        fh.write(header)
        fh.write(nmap.tobytes())
    return map_path, nmap_path


# ------------------------------------------------------------------------------------------------ import
def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the MIDAS map file ({exc.strerror or exc})") from None


def _check_header(path: Path, hdr: dict | None, p, force: bool) -> None:
    """Refuse (MapError) a legacy or stale file unless ``force``."""
    src = _param_source(p)
    if hdr is None:
        if not force:
            raise MapError(f"{path}: legacy MIDAS map without a parameter header: it cannot be validated against "
                           f"--param-file {src}; use --force to integrate anyway")
        return
    if hdr["version"] not in (2, 3):
        raise MapError(f"{path}: MIDAS map header version {hdr['version']} is not supported (expected 2 or 3)")
    if hdr["hash"] != midas_param_hash(p, hdr["version"]) and not force:
        raise MapError(f"{path}: parameter hash does not match --param-file {src} (map built for other "
                       "parameters); use --force to integrate anyway")


def import_midas(directory, p, force: bool = False):
    """Read ``Map.bin`` and ``nMap.bin`` from ``directory`` as an :class:`~ringstream.geometry.map.IntegrationMap`.

    The header hash must match ``p`` (else :class:`MapError`, unless ``force``); a legacy file (no header) is
    accepted only with ``force``. Sizes are checked: nMap.bin must have one entry per bin (n_r·n_eta of ``p``) and
    every (count, offset) must lie inside Map.bin.
    """
    from .map import IntegrationMap

    t0 = time.perf_counter()
    d = Path(directory)
    map_path, nmap_path = d / MAP_NAME, d / NMAP_NAME
    map_bytes, nmap_bytes = _read(map_path), _read(nmap_path)
    map_hdr, nmap_hdr = unpack_header(map_bytes), unpack_header(nmap_bytes)
    _check_header(map_path, map_hdr, p, force)
    _check_header(nmap_path, nmap_hdr, p, force)
    if map_hdr is not None and nmap_hdr is not None and map_hdr["hash"] != nmap_hdr["hash"] and not force:
        raise MapError(f"{nmap_path}: parameter hash differs from that of {map_path} (files from different "
                       "builds); use --force to integrate anyway")

    # -- sizes
    map_off = HEADER_SIZE if map_hdr is not None else 0
    nmap_off = HEADER_SIZE if nmap_hdr is not None else 0
    if (len(map_bytes) - map_off) % RECORD_DTYPE.itemsize:
        raise MapError(f"{map_path}: size {len(map_bytes)} bytes is not a {map_off}-byte header plus whole "
                       f"{RECORD_DTYPE.itemsize}-byte records (truncated or corrupt)")
    if (len(nmap_bytes) - nmap_off) % NMAP_DTYPE.itemsize:
        raise MapError(f"{nmap_path}: size {len(nmap_bytes)} bytes is not a {nmap_off}-byte header plus whole "
                       f"{NMAP_DTYPE.itemsize}-byte (count, offset) pairs (truncated or corrupt)")
    rec = np.frombuffer(map_bytes, dtype=RECORD_DTYPE, offset=map_off)
    nmap = np.frombuffer(nmap_bytes, dtype=NMAP_DTYPE, offset=nmap_off)

    r_edges, eta_edges, r_px, two_theta, q, eta = _bins(p)
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    n_bins = n_r * n_eta
    if len(nmap) != n_bins:
        raise MapError(f"{nmap_path}: holds {len(nmap)} bins, --param-file {_param_source(p)} gives "
                       f"n_r·n_eta = {n_r}·{n_eta} = {n_bins}")
    counts = nmap["count"].astype(np.int64)
    offsets = nmap["offset"].astype(np.int64)
    if np.any(counts < 0) or np.any(offsets < 0):
        raise MapError(f"{nmap_path}: negative count or offset (corrupt)")
    ends = offsets + counts
    if n_bins and int(ends.max(initial=0)) > len(rec):
        b = int(np.argmax(ends > len(rec)))
        raise MapError(f"{nmap_path}: bin {b} needs records up to {int(ends[b])} but {map_path} holds "
                       f"{len(rec)} records (truncated Map.bin?)")

    # -- records -> (bin, pixel) triplets: record index of the k-th entry of bin b = offset_b + k
    total = int(counts.sum())
    rows = np.repeat(np.arange(n_bins, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    idx = np.repeat(offsets - starts, counts) + np.arange(total, dtype=np.int64)
    r = rec[idx]
    nz, ny = int(p.NrPixelsZ), int(p.NrPixelsY)
    y = np.rint(r["y"]).astype(np.int64)
    z = np.rint(r["z"]).astype(np.int64)
    if total and (y.min() < 0 or y.max() >= ny or z.min() < 0 or z.max() >= nz):
        raise MapError(f"{map_path}: pixel coordinates outside the detector (NrPixelsZ, NrPixelsY) = ({nz}, {ny})")
    cols = z * ny + y
    shape = (n_bins, nz * ny)
    weights = sp.csr_matrix((r["frac"].astype(np.float64), (rows, cols)), shape=shape)
    areas = sp.csr_matrix((r["areaWeight"].astype(np.float64), (rows, cols)), shape=shape)
    weights.sum_duplicates()
    areas.sum_duplicates()
    # bin area A_b = Σ areaWeight over the bin's records
    bin_area = np.bincount(rows, weights=r["areaWeight"].astype(np.float64), minlength=n_bins)

    if map_hdr is not None:
        key = "midas:" + map_hdr["hash"].hex()
    else:
        key = "midas:legacy:" + hashlib.sha256(map_bytes).hexdigest()
    return IntegrationMap(
        shape=(nz, ny),
        n_r=n_r,
        n_eta=n_eta,
        weights=weights,
        areas=areas,
        bin_area=bin_area.reshape(n_r, n_eta),
        r_edges=np.asarray(r_edges, dtype=np.float64),
        eta_edges=np.asarray(eta_edges, dtype=np.float64),
        r_px=np.asarray(r_px, dtype=np.float64),
        two_theta=np.asarray(two_theta, dtype=np.float64),
        q=np.asarray(q, dtype=np.float64),
        eta=np.asarray(eta, dtype=np.float64),
        mask=_mask(p),
        key=key,
        build_seconds=time.perf_counter() - t0,
        info={
            "source": "midas",
            "map_file": str(map_path),
            "nmap_file": str(nmap_path),
            "header_version": None if map_hdr is None else int(map_hdr["version"]),
            "legacy": map_hdr is None,
            "forced": bool(force),
            "records": int(len(rec)),
        },
    )


def _mask(p) -> np.ndarray:
    """The raw-frame mask (True = masked) the parameters describe, for the record (the map already excludes it)."""
    from . import masks

    return masks.load_mask(p)

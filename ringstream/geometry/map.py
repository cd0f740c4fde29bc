"""The integration map: for every (R, η) bin, which raw pixels fall in it and with what weight.

``build_map(p)`` runs the whole chain (docs/DESIGN.md, docs/MIDAS-FORMATS.md sections 2-3)::

    geometry (tilts, distortion, parallax, DistortionFile)  ->  pixel quadrilaterals in the corrected plane
    -> exact area of each quadrilateral ∩ annular sector (split_pixels), unmasked pixels only
    -> areas  A[b, p] = area_pb                (px²)
       weights W[b, p] = area_pb / (SA_p · P_p)  (SA, P at the pixel centre, when the corrections are enabled)
    -> bin_area[b] = Σ_p A[b, p]

The reference engine then computes ``cake[b] = (W @ (frame - dark))[b] / bin_area[b]`` (0 where bin_area <= 1e-9).
Both matrices are scipy CSR ``[n_r·n_eta, nZ·nY]`` (bin ``b = r·n_eta + e``, columns = raw flat pixel index),
float64, with sorted indices and one shared sparsity pattern.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from ..errors import InputError, MapError
from .bins import bin_centres, eta_edges, radial_edges
from .detector import DetectorGeometry, polarization
from .map_key import map_cache_key
from .masks import load_mask

#: the tag and layout version written into every saved map
FILE_TAG = "ringstream-integration-map"
FILE_VERSION = 1


@dataclass
class IntegrationMap:
    """A built (or imported) integration map; see the module docstring for the meaning of each array."""

    shape: tuple[int, int]         # raw frame (NrPixelsZ, NrPixelsY)
    n_r: int
    n_eta: int
    weights: sp.csr_matrix         # [n_r*n_eta, nZ*nY] float64: area_pb / (SA_p * P_p); masked pixels absent
    areas: sp.csr_matrix           # same pattern, float64: area_pb (px²) without corrections
    bin_area: np.ndarray           # [n_r, n_eta] float64: Σ_p area_pb over unmasked pixels
    r_edges: np.ndarray            # [n_r+1] px of corrected R
    eta_edges: np.ndarray          # [n_eta+1] deg
    r_px: np.ndarray               # [n_r] bin centres, px
    two_theta: np.ndarray          # [n_r] deg
    q: np.ndarray                  # [n_r] Å⁻¹ (NaN when Wavelength unknown)
    eta: np.ndarray                # [n_eta] bin centres, deg
    mask: np.ndarray               # [nZ, nY] bool, raw frame, True = masked
    key: str = ""                  # SHA-256 cache key (hex)
    build_seconds: float = 0.0
    info: dict = field(default_factory=dict)  # what was used: geometry keys, corrections, file names

    @property
    def n_bins(self) -> int:
        return int(self.n_r) * int(self.n_eta)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the map to ``path`` exactly (uncompressed .npz; no suffix is added)."""
        w = sp.csr_matrix(self.weights)
        a = sp.csr_matrix(self.areas)
        same = (w.indptr.shape == a.indptr.shape and w.indices.shape == a.indices.shape
                and np.array_equal(w.indptr, a.indptr) and np.array_equal(w.indices, a.indices))
        arrays = {
            "tag": np.array(FILE_TAG),
            "version": np.array(FILE_VERSION, dtype=np.int64),
            "shape": np.array(self.shape, dtype=np.int64),
            "n_r_eta": np.array([self.n_r, self.n_eta], dtype=np.int64),
            "w_indptr": w.indptr, "w_indices": w.indices, "w_data": np.asarray(w.data, dtype=np.float64),
            "a_data": np.asarray(a.data, dtype=np.float64),
            "shared_pattern": np.array(same),
            "weights_are_areas": np.array(same and np.array_equal(w.data, a.data)),
            "bin_area": np.asarray(self.bin_area, dtype=np.float64),
            "r_edges": self.r_edges, "eta_edges": self.eta_edges, "r_px": self.r_px,
            "two_theta": self.two_theta, "q": self.q, "eta": self.eta,
            "mask": np.asarray(self.mask, dtype=bool),
            "key": np.array(str(self.key)),
            "build_seconds": np.array(float(self.build_seconds)),
            "info": np.array(json.dumps(self.info, default=str)),
        }
        if arrays["weights_are_areas"]:
            del arrays["w_data"]
        if not same:
            arrays["a_indptr"] = a.indptr
            arrays["a_indices"] = a.indices
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path) -> IntegrationMap:
        """Read a map written by :meth:`save`; MapError when the file is missing, corrupt or not a map."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "tag" not in z.files or str(z["tag"]) != FILE_TAG:
                    raise ValueError("not a ringstream integration map")
                version = int(z["version"])
                if version != FILE_VERSION:
                    raise ValueError(f"map file version {version}; this ringstream reads version {FILE_VERSION}")
                shape = tuple(int(s) for s in z["shape"])
                n_r, n_eta = (int(s) for s in z["n_r_eta"])
                mshape = (n_r * n_eta, shape[0] * shape[1])
                indptr, indices = z["w_indptr"], z["w_indices"]
                a_data = z["a_data"]
                w_data = a_data if bool(z["weights_are_areas"]) else z["w_data"]
                weights = sp.csr_matrix((w_data, indices, indptr), shape=mshape)
                if bool(z["shared_pattern"]):
                    areas = sp.csr_matrix((a_data, indices, indptr), shape=mshape)
                else:
                    areas = sp.csr_matrix((a_data, z["a_indices"], z["a_indptr"]), shape=mshape)
                imap = cls(
                    shape=shape, n_r=n_r, n_eta=n_eta, weights=weights, areas=areas,
                    bin_area=z["bin_area"], r_edges=z["r_edges"], eta_edges=z["eta_edges"], r_px=z["r_px"],
                    two_theta=z["two_theta"], q=z["q"], eta=z["eta"], mask=z["mask"], key=str(z["key"]),
                    build_seconds=float(z["build_seconds"]), info=json.loads(str(z["info"])),
                )
            _check_consistent(imap)
        except MapError:
            raise
        except FileNotFoundError:
            raise MapError(f"{path}: map file not found") from None
        except Exception as exc:  # zipfile, numpy, scipy and json raise many kinds for a corrupt file
            raise MapError(f"{path}: not a readable ringstream map ({type(exc).__name__}: {exc})") from None
        return imap


def _check_consistent(imap: IntegrationMap) -> None:
    nb, npx = imap.n_bins, imap.shape[0] * imap.shape[1]
    for name, m in (("weights", imap.weights), ("areas", imap.areas)):
        if m.shape != (nb, npx) or (m.nnz and (m.indices.min() < 0 or m.indices.max() >= npx)):
            raise ValueError(f"{name} matrix is inconsistent with the map shape")
    checks = {
        "bin_area": (imap.bin_area.shape, (imap.n_r, imap.n_eta)),
        "r_edges": (imap.r_edges.shape, (imap.n_r + 1,)),
        "eta_edges": (imap.eta_edges.shape, (imap.n_eta + 1,)),
        "r_px": (imap.r_px.shape, (imap.n_r,)),
        "eta": (imap.eta.shape, (imap.n_eta,)),
        "mask": (imap.mask.shape, tuple(imap.shape)),
    }
    for name, (found, expected) in checks.items():
        if tuple(found) != tuple(expected):
            raise ValueError(f"{name} has shape {tuple(found)}, expected {tuple(expected)}")


# ---------------------------------------------------------------------------------------------- building
@numba.njit(cache=True, parallel=True)
def _candidates(cx, cy, r_lo, r_hi, out):  # pragma: no cover - compiled
    for i in numba.prange(cx.shape[0]):
        xmin = xmax = cx[i, 0]
        ymin = ymax = cy[i, 0]
        r2max = cx[i, 0] * cx[i, 0] + cy[i, 0] * cy[i, 0]
        for c in range(1, 4):
            x = cx[i, c]
            y = cy[i, c]
            xmin = min(xmin, x)
            xmax = max(xmax, x)
            ymin = min(ymin, y)
            ymax = max(ymax, y)
            r2max = max(r2max, x * x + y * y)
        dx = max(max(xmin, -xmax), 0.0)
        dy = max(max(ymin, -ymax), 0.0)
        out[i] = (math.sqrt(r2max) >= r_lo) and (math.sqrt(dx * dx + dy * dy) <= r_hi)


def candidate_pixels(cx: np.ndarray, cy: np.ndarray, r_lo: float, r_hi: float) -> np.ndarray:
    """bool [n]: pixels whose quadrilateral (corners ``cx, cy`` [n, 4], px) may reach the annulus r_lo <= R <= r_hi.

    The largest R of a quadrilateral is at a corner; the smallest is bounded below by the distance from the origin
    to the quadrilateral's bounding box.
    """
    cx = np.ascontiguousarray(cx, dtype=np.float64)
    cy = np.ascontiguousarray(cy, dtype=np.float64)
    out = np.empty(cx.shape[0], dtype=np.bool_)
    _candidates(cx, cy, float(r_lo), float(r_hi), out)
    return out


def _drop_columns(m: sp.csr_matrix, flagged: np.ndarray) -> sp.csr_matrix:
    """``m`` without the entries of the columns (pixels) ``flagged`` (bool, one per column); the kept entries keep
    their values and order."""
    keep = ~flagged[m.indices]
    kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    indptr = kept_before[m.indptr].astype(m.indptr.dtype)
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def with_extra_mask(base: IntegrationMap, extra_mask, key: str = "") -> IntegrationMap:
    """The map :func:`build_map` makes with ``extra_mask`` too, derived from ``base`` (the map of the same parameters
    without it) in a fraction of a second instead of a build of seconds: pixel splitting treats every pixel on its
    own, so masking pixels only removes their entries; the bin areas are summed again over the entries kept, in the
    same order, so the result equals a fresh build exactly."""
    t0 = time.perf_counter()
    flagged = np.asarray(extra_mask.flagged, dtype=bool)
    if tuple(flagged.shape) != tuple(base.shape):
        raise InputError(f"pixel mask {extra_mask.digest[:12]}: shape {tuple(flagged.shape)}, the detector "
                         f"(NrPixelsZ, NrPixelsY) is {tuple(base.shape)}")
    flat = flagged.ravel()
    areas = _drop_columns(sp.csr_matrix(base.areas), flat)
    weights = _drop_columns(sp.csr_matrix(base.weights), flat)
    mask = base.mask | flagged
    info = dict(base.info)
    info.update(n_masked=int(mask.sum()), extra_mask=extra_mask.digest, nnz=int(areas.nnz),
                n_pixels_split=int(np.unique(areas.indices).size), derived_from=base.key)
    return IntegrationMap(
        shape=base.shape, n_r=base.n_r, n_eta=base.n_eta, weights=weights, areas=areas,
        bin_area=np.asarray(areas.sum(axis=1)).reshape(base.n_r, base.n_eta), r_edges=base.r_edges,
        eta_edges=base.eta_edges, r_px=base.r_px, two_theta=base.two_theta, q=base.q, eta=base.eta, mask=mask,
        key=key, build_seconds=time.perf_counter() - t0, info=info,
    )


def build_map(p, extra_mask=None) -> IntegrationMap:
    """Build the integration map of a :class:`~ringstream.params.Params` (see the module docstring);
    ``extra_mask`` (a :class:`~ringstream.geometry.mask_store.ExtraMask`) leaves its pixels out too."""
    from .splitting import split_pixels

    t0 = time.perf_counter()
    geom = DetectorGeometry.from_params(p)
    mask = load_mask(p)
    if extra_mask is not None:
        if tuple(extra_mask.flagged.shape) != tuple(mask.shape):
            raise InputError(f"pixel mask {extra_mask.digest[:12]}: shape {tuple(extra_mask.flagged.shape)}, the "
                             f"detector (NrPixelsZ, NrPixelsY) is {tuple(mask.shape)}")
        mask = mask | extra_mask.flagged
    r_edges = radial_edges(p)
    e_edges = eta_edges(p)
    r_px, two_theta, q, eta = bin_centres(p, geom)
    n_r, n_eta = len(r_edges) - 1, len(e_edges) - 1
    nz, ny = geom.shape
    n_pix = nz * ny

    cx, cy = geom.pixel_corners()
    keep = candidate_pixels(cx, cy, float(r_edges[0]), float(r_edges[-1]))
    keep &= ~mask.ravel()
    ids = np.flatnonzero(keep).astype(np.int64)
    cx = np.ascontiguousarray(cx[ids])
    cy = np.ascontiguousarray(cy[ids])
    pix, b, area, _quad = split_pixels(cx, cy, r_edges, e_edges, ids)
    del cx, cy
    pos = area > 0.0
    if not pos.all():
        pix, b, area = pix[pos], b[pos], area[pos]

    # areas: CSR [bins, pixels]; coo -> csr keeps the input order inside a row, so columns come out sorted when
    # split_pixels emits pixels in ascending order; sort_indices is a no-op check then.
    areas = sp.csr_matrix((area, (b, pix)), shape=(n_r * n_eta, n_pix))
    areas.sum_duplicates()
    areas.sort_indices()

    use_sa = bool(getattr(p, "SolidAngleCorrection", 0))
    use_pol = bool(getattr(p, "PolarizationCorrection", 0))
    if use_sa or use_pol:
        yc, zc = geom.pixel_centres()
        factor = np.ones(n_pix)
        if use_sa:
            factor *= geom.solid_angle(yc, zc)
        if use_pol:
            rc, ec = geom.r_eta(yc, zc)
            factor *= polarization(geom.two_theta_deg(rc), ec, float(p.PolarizationFraction),
                                   float(p.PolarizationAngle))
        weights = sp.csr_matrix((areas.data / factor[areas.indices], areas.indices.copy(), areas.indptr.copy()),
                                shape=areas.shape)
    else:
        weights = sp.csr_matrix((areas.data.copy(), areas.indices.copy(), areas.indptr.copy()), shape=areas.shape)

    bin_area = np.asarray(areas.sum(axis=1)).reshape(n_r, n_eta)
    info = {
        "geometry": geom.info(),
        "bins": {
            "q_mode": bool(p.q_mode), "RMin": float(p.RMin), "RMax": float(p.RMax), "RBinSize": float(p.RBinSize),
            "QMin": float(p.QMin), "QMax": float(p.QMax), "QBinSize": float(p.QBinSize),
            "EtaMin": float(p.EtaMin), "EtaMax": float(p.EtaMax), "EtaBinSize": float(p.EtaBinSize),
        },
        "corrections": {
            "SolidAngleCorrection": use_sa, "PolarizationCorrection": use_pol,
            "PolarizationFraction": float(p.PolarizationFraction), "PolarizationAngle": float(p.PolarizationAngle),
            "solid_angle_form": "tilt-aware (n.P/|P|)^3",
        },
        "files": {k: (str(getattr(p, k)) if getattr(p, k, None) else None)
                  for k in ("MaskFile", "GapFile", "BadPxFile", "DistortionFile")},
        "n_masked": int(mask.sum()),
        "extra_mask": extra_mask.digest if extra_mask is not None else None,
        "n_pixels_split": int(ids.size),
        "nnz": int(areas.nnz),
        "map_file_version": FILE_VERSION,
    }
    return IntegrationMap(
        shape=(nz, ny), n_r=n_r, n_eta=n_eta, weights=weights, areas=areas, bin_area=bin_area,
        r_edges=r_edges, eta_edges=e_edges, r_px=r_px, two_theta=two_theta, q=q, eta=eta, mask=mask,
        key=map_cache_key(p, extra_mask.digest if extra_mask is not None else ""), build_seconds=time.perf_counter() - t0, info=info,
    )

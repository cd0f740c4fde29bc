"""The pixel mask: which raw pixels never contribute (docs/MIDAS-FORMATS.md section 1).

Sources, combined with OR:

- ``MaskFile``, ``GapFile``, ``BadPxFile``: uint8 TIFFs in the *raw* frame, shape (NrPixelsZ, NrPixelsY);
  value 1 = masked, anything else valid.
- Panel gaps: ``NPanelsY`` panels of ``PanelSizeY`` columns separated by ``PanelGapsY`` columns (one value per gap,
  or one value for all), likewise in Z; defined in the *transformed* frame and carried back to raw pixels with
  :func:`~.transforms.raw_index_map`. The gap columns/rows between panels are masked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, ParamError
from .transforms import raw_index_map

_MASK_KEYS = ("MaskFile", "GapFile", "BadPxFile")


def read_mask_file(path: Path, shape: tuple[int, int], key: str = "MaskFile") -> np.ndarray:
    """bool ``[nZ, nY]``, True where the TIFF at ``path`` holds 1."""
    import tifffile

    path = Path(path)
    try:
        arr = np.asarray(tifffile.imread(str(path)))
    except Exception as exc:  # tifffile raises many kinds: missing file, not a TIFF, truncated
        raise InputError(f"{key} {path}: cannot read the mask as a TIFF ({exc})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise InputError(
            f"{path}: shape {tuple(arr.shape)} does not match the detector (NrPixelsZ, NrPixelsY) = "
            f"{tuple(shape)}"
        )
    return arr == 1


def _gap_flags(n_pixels: int, n_panels: int, size: int, gaps, axis: str) -> np.ndarray:
    """bool [n_pixels]: True for the pixels in the gaps between panels along one axis."""
    flags = np.zeros(n_pixels, dtype=bool)
    if n_panels <= 1 or size <= 0:
        return flags
    gaps = [int(g) for g in (gaps or ())]
    if len(gaps) == 1:
        gaps = gaps * (n_panels - 1)
    if len(gaps) != n_panels - 1:
        raise ParamError(
            f"PanelGaps{axis}: {len(gaps)} values for NPanels{axis} {n_panels}; expected {n_panels - 1} "
            "(one per gap) or 1"
        )
    pos = 0
    for i in range(n_panels - 1):
        pos += size
        flags[max(pos, 0):max(pos + gaps[i], 0)] = True
        pos += gaps[i]
    return flags


def panel_gap_mask(p) -> np.ndarray:
    """bool ``[nZ, nY]`` in the raw frame: True on the panel-gap pixels (defined in the transformed frame)."""
    nz, ny = int(p.NrPixelsZ), int(p.NrPixelsY)
    gy = _gap_flags(ny, int(p.NPanelsY or 0), int(p.PanelSizeY or 0), p.PanelGapsY, "Y")
    gz = _gap_flags(nz, int(p.NPanelsZ or 0), int(p.PanelSizeZ or 0), p.PanelGapsZ, "Z")
    out = np.zeros(nz * ny, dtype=bool)
    if gy.any() or gz.any():
        gt = gz[:, None] | gy[None, :]
        out[raw_index_map(nz, ny, p.ImTransOpt)[gt]] = True
    return out.reshape(nz, ny)


def load_mask(p) -> np.ndarray:
    """bool ``[NrPixelsZ, NrPixelsY]`` in the raw frame, True = masked (mask files and panel gaps)."""
    shape = (int(p.NrPixelsZ), int(p.NrPixelsY))
    mask = panel_gap_mask(p)
    for key in _MASK_KEYS:
        path = getattr(p, key, None)
        if path:
            mask |= read_mask_file(Path(path), shape, key)
    return mask

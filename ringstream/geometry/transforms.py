"""ImTransOpt: the flips and transposes that turn a raw detector frame into the frame where the geometry lives.

A raw frame is ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)``; raw flat pixel index ``p = z * NrPixelsY + y``.
``ImTransOpt`` is a list of operations applied in file order to give the *transformed* frame, where BC, tilts and
panel gaps are defined (docs/MIDAS-FORMATS.md section 2):

====  =========================================  ==============================
0     nothing
1     flip Y (columns)                            ``img[:, ::-1]``
2     flip Z (rows)                               ``img[::-1, :]``
3     transpose (square detectors only)           ``img.T``
====  =========================================  ==============================

The map stores raw flat indices, so streamed frames are never transformed: :func:`raw_index_map` gives, for each
transformed-frame pixel ``(zt, yt)``, the raw flat index it came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ParamError

#: the ImTransOpt values understood, with their meaning
TRANSFORM_NAMES = {0: "none", 1: "flip Y", 2: "flip Z", 3: "transpose"}


def _check_opts(nz: int, ny: int, opts: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(o) for o in (opts or ()))
    for o in out:
        if o not in TRANSFORM_NAMES:
            raise ParamError(f"ImTransOpt {o}: unknown transform; expected 0 (none), 1 (flip Y), 2 (flip Z) "
                             "or 3 (transpose)")
        if o == 3 and nz != ny:
            raise ParamError(f"ImTransOpt 3 (transpose) needs a square detector; found (NrPixelsZ, NrPixelsY) "
                             f"= ({nz}, {ny})")
    return out


def transformed_shape(nz: int, ny: int, opts: Sequence[int]) -> tuple[int, int]:
    """Shape ``(nZt, nYt)`` of the transformed frame (equal to the raw shape: transposes need a square detector)."""
    _check_opts(nz, ny, opts)
    return (int(nz), int(ny))


def raw_index_map(nz: int, ny: int, opts: Sequence[int]) -> np.ndarray:
    """int64 ``T[zt, yt]`` = raw flat index of the transformed-frame pixel ``(zt, yt)``.

    ``apply_transforms(img, opts) == img.ravel()[T]`` for every raw frame ``img`` of shape ``(nz, ny)``.
    """
    t = np.arange(int(nz) * int(ny), dtype=np.int64).reshape(int(nz), int(ny))
    for o in _check_opts(nz, ny, opts):
        if o == 1:
            t = t[:, ::-1]
        elif o == 2:
            t = t[::-1, :]
        elif o == 3:
            t = t.T
    return np.ascontiguousarray(t)


def apply_transforms(img: np.ndarray, opts: Sequence[int]) -> np.ndarray:
    """The transformed frame of a raw ``img[z, y]`` (a new contiguous array, same dtype)."""
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"apply_transforms: expected a 2D image, found shape {img.shape}")
    out = img
    for o in _check_opts(img.shape[0], img.shape[1], opts):
        if o == 1:
            out = out[:, ::-1]
        elif o == 2:
            out = out[::-1, :]
        elif o == 3:
            out = out.T
    return np.ascontiguousarray(out)


def transform_vectors(dy: np.ndarray, dz: np.ndarray, opts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Carry displacement *components* (ΔY, ΔZ) from the raw frame to the transformed frame.

    Only the components change (a Y flip negates ΔY, a Z flip negates ΔZ, a transpose swaps them); the arrays keep
    their shape and order. To move a raw-frame displacement map ``[nZ, nY]`` onto the transformed pixel grid, also
    re-index it: ``apply_transforms(map, opts)`` or ``map.ravel()[raw_index_map(...)]``.
    """
    dy = np.asarray(dy, dtype=np.float64)
    dz = np.asarray(dz, dtype=np.float64)
    for o in tuple(int(o) for o in (opts or ())):
        if o == 1:
            dy = -dy
        elif o == 2:
            dz = -dz
        elif o == 3:
            dy, dz = dz, dy
        elif o != 0:
            raise ParamError(f"ImTransOpt {o}: unknown transform; expected 0, 1, 2 or 3")
    return dy, dz

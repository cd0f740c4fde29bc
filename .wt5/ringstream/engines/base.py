"""The one interface every integration engine implements, and the input checks they share.

An engine holds an :class:`~ringstream.geometry.map.IntegrationMap` (and optionally a dark frame) and turns raw
detector frames ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)`` into

- a 2D *cake* ``[n_r, n_eta]`` float64: the area-normalised mean intensity of each (R, η) bin, and
- a 1D *lineout* ``[n_r]`` float64: the area-weighted mean of the cake over η.

The NumPy/SciPy :class:`~ringstream.engines.reference.ReferenceEngine` defines the numbers; any other engine must
agree with it within its written tolerances.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError

#: dtype kinds an engine accepts: unsigned and signed integers, floats (u8, u16, u32, i32, i64, f32, f64, ...).
ACCEPTED_KINDS = "uif"


@runtime_checkable
class Engine(Protocol):
    """An integration engine: frames in, (lineout, cake) out."""

    name: str

    def integrate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw frame ``[nZ, nY]`` -> (lineout ``[n_r]`` f64, cake ``[n_r, n_eta]`` f64)."""
        ...

    def integrate_batch(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[n, nZ, nY]`` -> (lineouts ``[n, n_r]`` f64, cakes ``[n, n_r, n_eta]`` f64)."""
        ...


def check_dtype(arr: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` unless ``arr`` holds real integers or floats."""
    if arr.dtype.kind not in ACCEPTED_KINDS:
        raise InputError(
            f"{what}: dtype {arr.dtype} is not supported; expected an integer or float image "
            "(u8, u16, u32, i32, i64, f32, f64)"
        )


def check_frame(frame: np.ndarray, shape: tuple[int, int], what: str = "frame") -> np.ndarray:
    """Return ``frame`` as an array after checking it is one ``shape`` = (nZ, nY) image of a supported dtype."""
    frame = np.asarray(frame)
    if frame.shape != tuple(shape):
        raise InputError(
            f"{what}: expected shape (NrPixelsZ, NrPixelsY) = {tuple(shape)}, found {frame.shape}"
        )
    check_dtype(frame, what)
    return frame


def check_batch(frames: np.ndarray, shape: tuple[int, int], what: str = "frames") -> np.ndarray:
    """Return ``frames`` as an array after checking it is ``[n, nZ, nY]`` of a supported dtype."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != tuple(shape):
        raise InputError(
            f"{what}: expected shape (n_frames, NrPixelsZ, NrPixelsY) = (n, {shape[0]}, {shape[1]}), "
            f"found {frames.shape}"
        )
    check_dtype(frames, what)
    return frames


def check_dark(dark: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Return the dark frame as float64 ``[nZ, nY]`` (or None), or raise :class:`InputError` on a wrong shape."""
    if dark is None:
        return None
    dark = np.asarray(dark)
    if dark.shape != tuple(shape):
        raise InputError(
            f"dark: expected shape (NrPixelsZ, NrPixelsY) = {tuple(shape)}, found {dark.shape}"
        )
    check_dtype(dark, "dark")
    return np.ascontiguousarray(dark, dtype=np.float64)

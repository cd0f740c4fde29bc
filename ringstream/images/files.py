"""Detector image files for offline integration: TIFF, npy, HDF5, GE, CBF; and dark frames.

The files are read by :mod:`.formats` (one reader per format, shared with the folder source).

Frames are raw detector images ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)``, yielded in the dtype stored in
the file (never converted, so a round trip is bit-exact). Each frame carries a *source id*: the file name for a
file holding one image, ``name:k`` (k from 0) for the k-th frame of a file holding a stack (multi-page TIFF,
3-D npy or HDF5 dataset, multi-frame GE file).

Every problem a user can cause is an :class:`~ringstream.errors.InputError` whose one-line message names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .formats import GE_HEADER_BYTES, FormatOptions, natural_key, open_image

#: Extensions read as images, by reader.
TIFF_EXTS = (".tif", ".tiff")
NPY_EXTS = (".npy",)
HDF5_EXTS = (".h5", ".hdf5", ".nxs")
GE_EXTS = (".ge", ".ge1", ".ge2", ".ge3", ".ge4", ".ge5")
CBF_EXTS = (".cbf",)
IMAGE_EXTS = TIFF_EXTS + NPY_EXTS + HDF5_EXTS + GE_EXTS + CBF_EXTS

__all__ = ["GE_HEADER_BYTES", "IMAGE_EXTS", "iter_images", "iter_stored", "load_dark", "natural_key"]


def _ext(path: Path) -> str:
    return path.suffix.lower()


def _supported() -> str:
    return " ".join(IMAGE_EXTS)


def _expand(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files to read, in order: a folder stands for its image files in natural sort order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                (f for f in path.iterdir() if f.is_file() and _ext(f) in IMAGE_EXTS),
                key=lambda f: natural_key(f.name),
            )
            if not found:
                raise InputError(f"{path}: folder holds no image files (supported: {_supported()})")
            files.extend(found)
        elif not path.exists():
            raise InputError(f"{path}: no such image file")
        elif _ext(path) not in IMAGE_EXTS:
            raise InputError(
                f"{path}: unsupported image file extension '{path.suffix}'; supported: {_supported()}"
            )
        else:
            files.append(path)
    return files


def _cannot_read(path: Path, exc: BaseException) -> InputError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"{path}: "
    if reason.startswith(prefix):  # the readers of .formats name the file already
        reason = reason[len(prefix):]
    return InputError(f"{path}: cannot read image ({reason})")


def _check_2d(path: Path, sid: str, frame: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    if frame.ndim != 2:
        raise InputError(f"{sid}: expected a 2-D image, found an array of shape {frame.shape} in {path}")
    if shape is not None and frame.shape != tuple(shape):
        raise InputError(
            f"{sid}: image shape {frame.shape} does not match the detector "
            f"(NrPixelsZ, NrPixelsY) = {tuple(shape)}"
        )
    return frame


# --- reading one file: the readers of .formats, one frame at a time ------------------------------------------


def _read_file(path: Path, shape: tuple[int, int] | None, encoded: bool = False) -> Iterator[tuple[str, Any]]:
    """``(source_id, frame)`` for every image of ``path`` (:func:`~.formats.open_image`: TIFF, CBF, GE, HDF5 with
    the hdf5plugin filters, npy), each frame a new array in the stored dtype (``encoded``: or the stored bytes of
    a compressed chunk, as :func:`iter_stored` says)."""
    if _ext(path) not in IMAGE_EXTS:
        raise InputError(f"{path}: unsupported image file extension '{path.suffix}'; supported: {_supported()}")
    try:
        f = open_image(path, FormatOptions(detector_shape=shape))
    except InputError as exc:
        raise _cannot_read(path, exc) from exc
    if encoded and shape is not None and f.shape != tuple(shape):
        f.close()
        raise InputError(f"{path}: image shape {f.shape} does not match the detector (NrPixelsZ, NrPixelsY) = "
                         f"{tuple(shape)}")
    with f:
        for k in range(f.n_frames):
            try:
                frame = (f.read_encoded(k) if encoded else None) or f.read(k)
            except InputError as exc:
                raise _cannot_read(path, exc) from exc
            yield f.frame_id(k), frame


def iter_images(
    paths: Sequence[str | os.PathLike], shape: tuple[int, int] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(source_id, frame)`` for every image in ``paths``, in order.

    A folder stands for its image files in natural sort order. ``shape`` = (NrPixelsZ, NrPixelsY) is needed for GE
    files and, when given, every frame is checked against it. Frames keep their stored dtype. All paths are checked
    (existence, extension) before the first frame is yielded.
    """
    files = _expand(paths)
    return _iter_files(files, None if shape is None else (int(shape[0]), int(shape[1])))


def iter_stored(paths: Sequence[str | os.PathLike], shape: tuple[int, int]) -> Iterator[tuple[str, Any]]:
    """As :func:`iter_images`, but a frame an HDF5 file stores as one bslz4 / lz4 chunk comes as it is stored, not
    decoded: ``(source_id, (bytes uint8 [n], codec, codec_header, codec_block))`` (:meth:`~.formats.ImageFile.
    read_encoded`); every other frame as an array."""
    return _iter_files(_expand(paths), (int(shape[0]), int(shape[1])), encoded=True)


def _iter_files(files: list[Path], shape: tuple[int, int] | None, encoded: bool = False) -> Iterator[tuple[str, Any]]:
    for path in files:
        n = 0
        for sid, frame in _read_file(path, shape, encoded):
            n += 1
            yield sid, frame if isinstance(frame, tuple) else _check_2d(path, sid, frame, shape)
        if n == 0:
            raise InputError(f"{path}: cannot read image (the file holds no frames)")


# --- dark frames -----------------------------------------------------------------------------------------------


def load_dark(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read a dark frame (or a stack of them, averaged) as float64 ``[NrPixelsZ, NrPixelsY]``.

    TIFF, npy, HDF5, GE and CBF files are read as images (:mod:`.formats`, one frame at a time, so a long GE
    stack is never in memory at once); any other file (``.bin``, no extension, ...) is MIDAS raw binary:
    little-endian int64 frames of NrPixelsZ x NrPixelsY pixels (the MIDAS GPU dark), averaged if several. A size
    that is no whole number of frames is an InputError naming the file, the frame size expected and the size found.
    """
    path = Path(path)
    shape = (int(shape[0]), int(shape[1]))
    if path.is_dir():
        raise InputError(f"{path}: dark must be a file, not a folder")
    if not path.exists():
        raise InputError(f"{path}: no such dark file")
    if _ext(path) in IMAGE_EXTS:
        try:
            f = open_image(path, FormatOptions(detector_shape=shape))
        except InputError as exc:
            raise _cannot_read(path, exc) from exc
        with f:
            if f.shape != shape:
                raise InputError(f"{path}: dark frame {f.frame_id(0)} has shape {f.shape}; expected "
                                 f"(NrPixelsZ, NrPixelsY) = {shape}")
            total = np.zeros(shape, dtype=np.float64)
            buf = np.empty(f.shape, f.dtype)
            for k in range(f.n_frames):
                f.read_into(k, buf)
                total += buf
            return total / f.n_frames
    return _load_raw_dark(path, shape)


def _load_raw_dark(path: Path, shape: tuple[int, int]) -> np.ndarray:
    frame_bytes = shape[0] * shape[1] * 8
    size = path.stat().st_size
    if size == 0 or size % frame_bytes:
        raise InputError(
            f"{path}: raw int64 dark of {size} bytes is not a whole number of frames of "
            f"{shape[0]}x{shape[1]} int64 = {frame_bytes} bytes each (NrPixelsZ x NrPixelsY)"
        )
    try:
        data = np.fromfile(path, dtype="<i8")
    except Exception as exc:
        raise InputError(f"{path}: cannot read dark ({exc})") from exc
    stack = data.reshape(-1, shape[0], shape[1])
    return stack.mean(axis=0, dtype=np.float64)

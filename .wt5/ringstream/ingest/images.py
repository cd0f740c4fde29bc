"""Detector image files for offline integration: TIFF, npy, HDF5, GE, CBF; and dark frames.

Frames are raw detector images ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)``, yielded in the dtype stored in
the file (never converted, so a round trip is bit-exact). Each frame carries a *source id*: the file name for a
file holding one image, ``name:k`` (k from 0) for the k-th frame of a file holding a stack (multi-page TIFF,
3-D npy or HDF5 dataset, multi-frame GE file).

Every problem a user can cause is an :class:`~ringstream.errors.InputError` whose one-line message names the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError

#: Extensions read as images, by reader.
TIFF_EXTS = (".tif", ".tiff")
NPY_EXTS = (".npy",)
HDF5_EXTS = (".h5", ".hdf5", ".nxs")
GE_EXTS = (".ge", ".ge1", ".ge2", ".ge3", ".ge4", ".ge5")
CBF_EXTS = (".cbf",)
IMAGE_EXTS = TIFF_EXTS + NPY_EXTS + HDF5_EXTS + GE_EXTS + CBF_EXTS

#: Size of the header at the start of a GE (``.geN``) file, in bytes; frames are uint16 after it.
GE_HEADER_BYTES = 8192

#: Where an image is looked for inside an HDF5 file, in this order.
HDF5_DATASET_PATHS = ("/entry/data/data", "/data")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str | os.PathLike) -> tuple:
    """Sort key that orders embedded numbers numerically: ``img_9`` before ``img_10``."""
    parts = _DIGITS.split(str(name))
    return tuple((0, int(s), s) if s.isdigit() else (1, 0, s) for s in parts if s != "")


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


# --- readers: each yields (source_id, frame) for one file ------------------------------------------------------


def _read_tiff(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise _cannot_read(path, exc) from exc
    with tif:
        pages = tif.pages
        n = len(pages)
        for k in range(n):
            try:
                frame = pages[k].asarray()
            except Exception as exc:
                raise _cannot_read(path, exc) from exc
            yield (path.name if n == 1 else f"{path.name}:{k}"), frame


def _read_npy(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise _cannot_read(path, exc) from exc
    if arr.ndim == 2:
        yield path.name, np.array(arr)
    elif arr.ndim == 3:
        for k in range(arr.shape[0]):
            yield f"{path.name}:{k}", np.array(arr[k])
    else:
        raise InputError(f"{path}: expected a 2-D image or a 3-D stack, found an array of shape {arr.shape}")


def _h5_dataset(path: Path, h5):
    import h5py

    for name in HDF5_DATASET_PATHS:
        obj = h5.get(name)
        if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3):
            return obj
    raise InputError(
        f"{path}: no 2-D or 3-D image dataset at {' or '.join(HDF5_DATASET_PATHS)}"
    )


def _read_hdf5(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise _cannot_read(path, exc) from exc
    with h5:
        ds = _h5_dataset(path, h5)
        try:
            if ds.ndim == 2:
                yield path.name, ds[()]
            else:
                for k in range(ds.shape[0]):
                    yield f"{path.name}:{k}", ds[k]
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise _cannot_read(path, exc) from exc


def ge_frame_count(path: Path, shape: tuple[int, int]) -> int:
    """Number of uint16 frames of ``shape`` after the 8192-byte header; InputError if it is not whole."""
    size = path.stat().st_size
    frame_bytes = int(shape[0]) * int(shape[1]) * 2
    body = size - GE_HEADER_BYTES
    if body <= 0 or body % frame_bytes:
        raise InputError(
            f"{path}: cannot read image (GE file of {size} bytes is not an {GE_HEADER_BYTES}-byte header "
            f"plus whole uint16 frames of {shape[0]}x{shape[1]} = {frame_bytes} bytes)"
        )
    return body // frame_bytes


def _read_ge(path: Path, shape: tuple[int, int] | None) -> Iterator[tuple[str, np.ndarray]]:
    if shape is None:
        raise InputError(f"{path}: reading a GE file needs the detector shape (NrPixelsY, NrPixelsZ)")
    n = ge_frame_count(path, shape)
    count = int(shape[0]) * int(shape[1])
    for k in range(n):
        try:
            frame = np.fromfile(path, dtype="<u2", count=count, offset=GE_HEADER_BYTES + k * count * 2)
        except Exception as exc:
            raise _cannot_read(path, exc) from exc
        if frame.size != count:
            raise InputError(f"{path}: cannot read image (file truncated in frame {k})")
        yield (path.name if n == 1 else f"{path.name}:{k}"), frame.reshape(shape)


def _read_cbf(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import fabio
    except ImportError as exc:
        raise InputError(f"{path}: reading CBF files needs fabio: pip install fabio") from exc
    try:
        img = fabio.open(str(path))
        n = int(getattr(img, "nframes", 1) or 1)
        if n == 1:
            yield path.name, np.asarray(img.data)
        else:
            for k in range(n):
                yield f"{path.name}:{k}", np.asarray(img.getframe(k).data)
    except InputError:
        raise
    except Exception as exc:
        raise _cannot_read(path, exc) from exc


def _read_file(path: Path, shape: tuple[int, int] | None) -> Iterator[tuple[str, np.ndarray]]:
    ext = _ext(path)
    if ext in TIFF_EXTS:
        return _read_tiff(path)
    if ext in NPY_EXTS:
        return _read_npy(path)
    if ext in HDF5_EXTS:
        return _read_hdf5(path)
    if ext in GE_EXTS:
        return _read_ge(path, shape)
    if ext in CBF_EXTS:
        return _read_cbf(path)
    raise InputError(f"{path}: unsupported image file extension '{path.suffix}'; supported: {_supported()}")


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


def _iter_files(files: list[Path], shape: tuple[int, int] | None) -> Iterator[tuple[str, np.ndarray]]:
    for path in files:
        n = 0
        for sid, frame in _read_file(path, shape):
            n += 1
            yield sid, _check_2d(path, sid, frame, shape)
        if n == 0:
            raise InputError(f"{path}: cannot read image (the file holds no frames)")


# --- dark frames -----------------------------------------------------------------------------------------------


def load_dark(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read a dark frame (or a stack of them, averaged) as float64 ``[NrPixelsZ, NrPixelsY]``.

    TIFF, npy, HDF5, GE and CBF files are read as images; any other file (``.bin``, no extension, ...) is MIDAS raw
    binary: little-endian int64 frames of NrPixelsZ x NrPixelsY pixels (the MIDAS GPU dark), averaged if several.
    """
    path = Path(path)
    shape = (int(shape[0]), int(shape[1]))
    if path.is_dir():
        raise InputError(f"{path}: dark must be a file, not a folder")
    if not path.exists():
        raise InputError(f"{path}: no such dark file")
    if _ext(path) in IMAGE_EXTS:
        total = np.zeros(shape, dtype=np.float64)
        n = 0
        for sid, frame in _read_file(path, shape):
            if frame.ndim != 2 or frame.shape != shape:
                raise InputError(
                    f"{path}: dark frame {sid} has shape {frame.shape}; expected (NrPixelsZ, NrPixelsY) = {shape}"
                )
            total += frame
            n += 1
        if n == 0:
            raise InputError(f"{path}: dark file holds no frames")
        return total / n
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

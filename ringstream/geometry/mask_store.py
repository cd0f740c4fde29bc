"""Pixel masks a source hands over during a run (a DECTRIS series' ``pixel_mask``), stored by content.

A detector's mask is a uint32 ``[nZ, nY]`` image of flag bits. The ingest saves it once, as ``<sha256>.npy`` in the
mask store (``<state dir>/masks``: :func:`store_dir`), written atomically; its SHA-256 (of the ``.npy`` bytes) names
it everywhere after: in the frames integrated with it (:data:`~ringstream.protocol.MASK_KEY`), in the run's
metadata, in the map's cache key (:func:`extra_mask`, :func:`~ringstream.geometry.map_key.map_cache_key`). Workers
and the writer read it by that name; a joined worker on another host fetches it from the daemon (docs/REMOTE.md).

Which bits leave a pixel out (:data:`MASKED_BITS`): the detector's pixel mask uses the NeXus NXdetector
``pixel_mask`` bits (DECTRIS FileWriter: ``/entry/instrument/detector/..._channel/pixel_mask``; Stream V2: "32-bit
pixel mask"): bit 0 gap (no sensor), 1 dead, 2 under-responding, 3 over-responding (hot), 4 noisy, 6 part of a dark
region, 8 user-defined mask. Bit 31 (virtual pixel: a pixel between chips whose value is interpolated) and the
undefined bits do not mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError

#: the flag bits that leave a pixel out of the integration (see the module docstring)
MASKED_BITS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8)

_SHA = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class ExtraMask:
    """A mask on top of the parameter file's: ``digest`` its name in the store, ``flagged`` bool ``[nZ, nY]``
    (True = left out)."""

    digest: str
    flagged: np.ndarray


def store_dir(state_dir: str | os.PathLike) -> Path:
    """The mask store of a daemon whose state directory is ``state_dir``."""
    return Path(state_dir) / "masks"


def is_digest(text: str) -> bool:
    """Whether ``text`` is a mask's name (64 lowercase hex digits): nothing else is ever opened by name."""
    return bool(_SHA.fullmatch(str(text)))


def encode_mask(mask: np.ndarray) -> tuple[str, bytes]:
    """(SHA-256, .npy bytes) of a detector mask (stored uint32 little-endian, C order)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(mask, dtype="<u4"), allow_pickle=False)
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def save_mask(folder: str | os.PathLike, mask: np.ndarray) -> str:
    """Store ``mask`` in ``folder`` (atomically; kept when already there) and return its SHA-256."""
    digest, data = encode_mask(mask)
    put_mask_bytes(folder, digest, data)
    return digest


def put_mask_bytes(folder: str | os.PathLike, digest: str, data: bytes) -> Path:
    """Write the .npy bytes of mask ``digest`` into ``folder`` after checking they are it (InputError if not)."""
    if not is_digest(digest) or hashlib.sha256(data).hexdigest() != digest:
        raise InputError(f"pixel mask {digest[:16]}: its bytes do not have that SHA-256")
    folder = Path(folder)
    path = folder / f"{digest}.npy"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mask.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: the store's record of the last series started with a mask (for an ingest that replaces one killed mid-series)
LAST_SERIES = "last_series.json"


def remember_series(folder: str | os.PathLike, series_id: int, unique_id: str, digest: str) -> None:
    """Record that series ``series_id`` (``unique_id``) is integrated with mask ``digest`` (atomically)."""
    folder = Path(folder)
    tmp = folder / f".{LAST_SERIES}.tmp"
    tmp.write_text(json.dumps({"series_id": int(series_id), "series_unique_id": str(unique_id), "mask": digest}))
    os.replace(tmp, folder / LAST_SERIES)


def remembered_mask(folder: str | os.PathLike, series_id: int, unique_id: str) -> str:
    """The mask recorded for series ``series_id`` (``unique_id``) by :func:`remember_series`; "" when another
    series (or none) was recorded."""
    try:
        last = json.loads((Path(folder) / LAST_SERIES).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(last, dict) or not unique_id:
        return ""
    same = last.get("series_id") == int(series_id) and last.get("series_unique_id") == str(unique_id)
    return str(last["mask"]) if same and is_digest(str(last.get("mask", ""))) else ""


def mask_path(folder: str | os.PathLike, digest: str) -> Path:
    """Where mask ``digest`` is in ``folder`` (InputError for a name that is not a digest)."""
    if not is_digest(digest):
        raise InputError(f"pixel mask {str(digest)[:70]!r}: not a SHA-256 name")
    return Path(folder) / f"{digest}.npy"


def load_stored_mask(folder: str | os.PathLike, digest: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The uint32 mask ``digest`` of the store ``folder``, its bytes checked against the name; InputError naming it
    when it is missing, altered or of another shape than ``shape``."""
    path = mask_path(folder, digest)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"pixel mask {path}: cannot read it ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise InputError(f"pixel mask {path}: its contents do not match its name (altered or cut short)")
    mask = np.load(io.BytesIO(data), allow_pickle=False)
    if mask.ndim != 2 or (shape is not None and tuple(mask.shape) != tuple(shape)):
        raise InputError(f"pixel mask {path}: shape {mask.shape}, the detector is {shape}")
    return mask


def flagged(mask: np.ndarray) -> np.ndarray:
    """bool: the pixels a detector mask leaves out (any of :data:`MASKED_BITS`)."""
    return (np.asarray(mask).astype(np.uint32) & np.uint32(MASKED_BITS)) != 0


def extra_mask(folder: str | os.PathLike, digest: str, shape: tuple[int, int]) -> ExtraMask:
    """The stored mask ``digest`` as the map's extra mask."""
    return ExtraMask(digest, flagged(load_stored_mask(folder, digest, shape)))

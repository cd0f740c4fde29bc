"""A run's own metadata in its HDF5 file: ``/entry/run_metadata`` (docs/OUTPUTS.md).

What the source said about the whole run once, at its start (the :class:`~ringstream.protocol.RunStart` ``meta``:
a DECTRIS series' ``series_id``, ``series_unique_id``, ``number_of_images``, beam centre, distance, wavelength,
image size, count and frame time; the ``--meta KEY=VALUE`` of ``ringstream runs start``) is written once per run,
with the file's layout (before SWMR): one scalar field per key (numbers as int64 / float64, text as UTF-8, anything
else as JSON text), and the detector's own pixel mask, when the run had one, as ``pixel_mask`` (uint32 ``[nZ, nY]``,
the detector's bits as it sent them, bitshuffle + LZ4) with ``@sha256`` (its digest in the mask store,
:mod:`ringstream.geometry.mask_store`) and ``@masked_bits`` (the bits that left a pixel out of the integration).
The group exists in every file, empty for a run without metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from .storage import hdf5_compression

#: the group, under /entry
GROUP = "run_metadata"

_STR = h5py.string_dtype("utf-8")


def _field(value: Any) -> tuple[Any, Any]:
    """(data, dtype) of one metadata value as a scalar HDF5 field."""
    if isinstance(value, bool):
        return np.int64(value), np.int64
    if isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        return np.int64(value), np.int64
    if isinstance(value, float):
        return np.float64(value), np.float64
    if isinstance(value, str):
        return value, _STR
    return json.dumps(value, default=str, sort_keys=True), _STR


def write_run_metadata(entry: h5py.Group, meta: Mapping[str, Any] | None, pixel_mask: np.ndarray | None = None,
                       mask_sha256: str = "", masked_bits: int = 0) -> h5py.Group:
    """Create ``entry/run_metadata`` (see the module docstring) holding ``meta`` and ``pixel_mask``."""
    group = entry.create_group(GROUP)
    group.attrs["NX_class"] = "NXcollection"
    group.attrs["description"] = "what the source said about the whole run at its start (one value per run)"
    for key, value in sorted((meta or {}).items()):
        name = str(key).replace("/", "_")
        if not name or name == "pixel_mask":
            continue
        data, dtype = _field(value)
        group.create_dataset(name, data=data, dtype=dtype)
    if pixel_mask is not None:
        mask = np.ascontiguousarray(pixel_mask, dtype="<u4")
        d = group.create_dataset("pixel_mask", data=mask, chunks=mask.shape, **hdf5_compression())
        d.attrs["sha256"] = str(mask_sha256)
        d.attrs["masked_bits"] = np.uint32(masked_bits)
        d.attrs["note"] = ("the detector's pixel mask (DECTRIS/NXdetector bits); pixels with any of masked_bits set "
                           "were left out of the integration")
    return group

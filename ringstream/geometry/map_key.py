"""The map's cache key: a SHA-256 over every input that changes the integration map.

The key is the SHA-256 (hex) of a canonical JSON (sorted keys, floats as ``repr``) of every input that changes
the map: detector shape, geometry (Lsd, BC, tilts, pixel pitch, wavelength, RhoD, p0..p14, Parallax), panels,
bins (R, η, Q), ImTransOpt, corrections, the SHA-256 of the *contents* of MaskFile / GapFile / BadPxFile /
DistortionFile (the same content under another name gives the same key), :data:`MAP_FORMAT_VERSION` and, for a
map with a mask on top of the parameter file's (a detector's pixel mask for one series:
:mod:`~ringstream.geometry.mask_store`), that mask's SHA-256.
Both the map (which records its key) and the map cache (which names files by it) use it.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import InputError

#: bump when the meaning or layout of a saved map changes: every cached map is then rebuilt.
MAP_FORMAT_VERSION = 2

_FILE_KEYS = ("MaskFile", "GapFile", "BadPxFile", "DistortionFile")


def _f(x) -> str:
    """A float, canonically: ``repr(float(x))`` (so 1000000 and 1e6 give the same text)."""
    return repr(float(x))


def _floats(xs) -> list[str]:
    return [_f(x) for x in (xs or ())]


def _ints(xs) -> list[int]:
    return [int(x) for x in (xs or ())]


def file_sha256(path, key: str) -> str | None:
    """SHA-256 (hex) of the contents of the file named by parameter ``key``; None when not set.

    Raises :class:`InputError` naming the key and the path when the file cannot be read.
    """
    if path is None or str(path) == "":
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"{key} {path}: cannot read the file ({exc.strerror or exc})") from None
    return h.hexdigest()


def canonical_inputs(p) -> dict:
    """Every input of ``p`` (a :class:`~ringstream.params.Params`) that changes the map, as JSON-ready values."""
    return {
        "format": MAP_FORMAT_VERSION,
        "shape": [int(p.NrPixelsZ), int(p.NrPixelsY)],
        "Lsd": _f(p.Lsd),
        "BC": _floats(p.BC),
        "tx": _f(p.tx),
        "ty": _f(p.ty),
        "tz": _f(p.tz),
        "px": _f(p.px),
        "pxY": _f(p.pxY),
        "pxZ": _f(p.pxZ),
        "Wavelength": _f(p.Wavelength),
        "RhoD": _f(p.RhoD),
        "p": _floats(p.p),
        "Parallax": _f(p.Parallax),
        "NPanelsY": int(p.NPanelsY),
        "NPanelsZ": int(p.NPanelsZ),
        "PanelSizeY": int(p.PanelSizeY),
        "PanelSizeZ": int(p.PanelSizeZ),
        "PanelGapsY": _ints(p.PanelGapsY),
        "PanelGapsZ": _ints(p.PanelGapsZ),
        "RMin": _f(p.RMin),
        "RMax": _f(p.RMax),
        "RBinSize": _f(p.RBinSize),
        "EtaMin": _f(p.EtaMin),
        "EtaMax": _f(p.EtaMax),
        "EtaBinSize": _f(p.EtaBinSize),
        "QMin": _f(p.QMin),
        "QMax": _f(p.QMax),
        "QBinSize": _f(p.QBinSize),
        "q_mode": bool(p.q_mode),
        "ImTransOpt": _ints(p.ImTransOpt),
        "SolidAngleCorrection": int(p.SolidAngleCorrection),
        "PolarizationCorrection": int(p.PolarizationCorrection),
        "PolarizationFraction": _f(p.PolarizationFraction),
        "PolarizationAngle": _f(p.PolarizationAngle),
        "files": {k: file_sha256(getattr(p, k), k) for k in _FILE_KEYS},
    }


def map_cache_key(p, extra_mask: str = "") -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`canonical_inputs` of ``p`` (and of ``extra_mask``, the digest
    of a mask on top of the parameter file's, when given)."""
    inputs = canonical_inputs(p)
    if extra_mask:
        inputs["extra_mask"] = str(extra_mask)
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

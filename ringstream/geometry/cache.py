"""The map cache: a map is built once per set of inputs and loaded from disk afterwards.

The key is the SHA-256 (hex) of a canonical JSON (sorted keys, floats as ``repr``) of every input that changes
the map: detector shape, geometry (Lsd, BC, tilts, pixel pitch, wavelength, RhoD, p0..p14, Parallax), panels,
bins (R, η, Q), ImTransOpt, corrections, the SHA-256 of the *contents* of MaskFile / GapFile / BadPxFile /
DistortionFile (the same content under another name gives the same key) and :data:`MAP_FORMAT_VERSION`.
A cached map lives in ``<cache dir>/<key>.npz``, written atomically (temp file in the same folder, then
``os.replace``); a file that cannot be read, or reads as another map, is rebuilt with a warning, never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from ..errors import InputError

log = logging.getLogger("ringstream.map")

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


def map_cache_key(p) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`canonical_inputs` of ``p``."""
    text = json.dumps(canonical_inputs(p), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``$RINGSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ringstream/maps``, else ``~/.cache/ringstream/maps``."""
    env = os.environ.get("RINGSTREAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ringstream" / "maps"
    return Path.home() / ".cache" / "ringstream" / "maps"


def _load_cached(path: Path, key: str, shape: tuple[int, int]):
    """The map stored at ``path`` if it loads and is the map of ``key``; None (with a warning) otherwise."""
    from .map import IntegrationMap

    try:
        imap = IntegrationMap.load(path)
        ok = imap.key == key and tuple(int(s) for s in imap.shape) == tuple(shape)
        n_bins = int(imap.n_r) * int(imap.n_eta)
        ok = ok and imap.weights.shape == (n_bins, shape[0] * shape[1]) and imap.areas.shape == imap.weights.shape
        ok = ok and tuple(imap.bin_area.shape) == (int(imap.n_r), int(imap.n_eta))
        if not ok:
            raise ValueError("it holds another map")
    except Exception as exc:  # any failure to read means: not usable, rebuild
        log.warning("map cache: %s is unreadable or corrupt (%s); rebuilding it", path, exc)
        return None
    return imap


def _save_atomic(imap, path: Path) -> None:
    """Write ``imap`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        imap.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_or_build(p, cache_dir=None, use_cache: bool = True):
    """The map of ``p``: loaded from the cache when there, else built (and saved when ``use_cache``).

    Returns ``(imap, from_cache)``. A cache that cannot be written is a warning: the built map is still returned.
    """
    from .map import build_map

    key = map_cache_key(p)
    shape = (int(p.NrPixelsZ), int(p.NrPixelsY))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{key}.npz"

    if use_cache and path.is_file():
        t0 = time.perf_counter()
        imap = _load_cached(path, key, shape)
        if imap is not None:
            log.info("map: loaded from cache %s in %.2f s", path, time.perf_counter() - t0)
            return imap, True

    imap = build_map(p)
    imap.key = key
    log.info("map: built in %.2f s (key %s)", getattr(imap, "build_seconds", float("nan")), key[:16])
    if use_cache:
        try:
            _save_atomic(imap, path)
            log.info("map: saved to cache %s", path)
        except OSError as exc:
            log.warning("map cache: cannot write %s (%s); continuing without caching", path, exc)
    return imap, False

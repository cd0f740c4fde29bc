"""The map cache: a map is built once per set of inputs and loaded from disk afterwards.

A cached map lives in ``<cache dir>/<key>.npz`` (the key of :mod:`ringstream.geometry.map_key`), written atomically
(temp file in the same folder, then ``os.replace``); a file that cannot be read, or reads as another map, is rebuilt
with a warning, never served.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from .map import IntegrationMap, build_map, with_extra_mask
from .map_key import map_cache_key

log = logging.getLogger("ringstream.map")

def default_cache_dir() -> Path:
    """``$RINGSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ringstream/maps``, else ``~/.cache/ringstream/maps``."""
    env = os.environ.get("RINGSTREAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ringstream" / "maps"
    return Path.home() / ".cache" / "ringstream" / "maps"


def load_cached(path: Path, key: str, shape: tuple[int, int]):
    """The map stored at ``path`` if it loads and is the map of ``key``; None (with a warning) otherwise."""
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


def load_or_build(p, cache_dir=None, use_cache: bool = True, extra_mask=None, base=None):
    """The map of ``p``: loaded from the cache when there, else built (and saved when ``use_cache``);
    ``extra_mask`` (a :class:`~ringstream.geometry.mask_store.ExtraMask`) masks its pixels too (another key), and
    ``base``, the map of ``p`` without it, is then masked instead of building anew (:func:`.map.with_extra_mask`).

    Returns ``(imap, from_cache)``. A cache that cannot be written is a warning: the built map is still returned.
    """
    key = map_cache_key(p, extra_mask.digest if extra_mask is not None else "")
    shape = (int(p.NrPixelsZ), int(p.NrPixelsY))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{key}.npz"

    if use_cache and path.is_file():
        t0 = time.perf_counter()
        imap = load_cached(path, key, shape)
        if imap is not None:
            log.info("map: loaded from cache %s in %.2f s", path, time.perf_counter() - t0)
            return imap, True

    if extra_mask is not None and base is not None and base.key == map_cache_key(p):
        imap = with_extra_mask(base, extra_mask, key)
        log.info("map: masked from the parameter file's map in %.2f s (key %s)", imap.build_seconds, key[:16])
    else:
        imap = build_map(p, extra_mask)
        imap.key = key
        log.info("map: built in %.2f s (key %s)", getattr(imap, "build_seconds", float("nan")), key[:16])
    if use_cache:
        try:
            _save_atomic(imap, path)
            log.info("map: saved to cache %s", path)
        except OSError as exc:
            log.warning("map cache: cannot write %s (%s); continuing without caching", path, exc)
    return imap, False

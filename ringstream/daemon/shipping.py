"""Files a joined worker may take from the daemon over the join socket (docs/REMOTE.md, "What a joined worker
takes from the daemon").

A worker on another host has the daemon's configuration and parameter file text from its join, but not the files
they name. The daemon ships, on request, exactly these (and nothing else: a request names an entry, never a path):

- the files the parameter file names (``MaskFile``, ``GapFile``, ``BadPxFile``, ``DistortionFile``, ``Dark``) and
  ``[run] dark`` (``run.dark``): named in the join's answer with their SHA-256 and size, fetched by every joined
  worker (the map's key hashes the mask files' contents, so the copies give the daemon's key);
- ``map``: the daemon's map as its cache holds it (``<key>.npz``), for a worker that cannot build it or is told
  ``--fetch-map``; the join's answer gives its size only (hashing it would hold the supervisor up at every join),
  the fetch its SHA-256 (every part's answer the same), then the worker checks the key it records;
- ``mask:<sha256>``: a pixel mask a series was integrated with (the mask store,
  :mod:`ringstream.geometry.mask_store`), named by its digest.

A ``fetch`` request (``{"name", "offset"}``) is answered with the entry's ``sha256``, ``size`` and ``file`` name and
one buffer, the next part (at most :data:`PART_BYTES`) from ``offset``. Digests are computed once per file version
(path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..geometry.cache import default_cache_dir
from ..geometry.mask_store import is_digest, mask_path, store_dir
from ..runs.state import state_dir_of

#: the largest part of a file one fetch answer carries, in bytes
PART_BYTES = 4 << 20

#: the parameter-file keys whose files are shipped (their copies replace the paths in a joined worker's parameters)
PARAM_FILE_KEYS = ("MaskFile", "GapFile", "BadPxFile", "DistortionFile", "Dark")

#: the entry of ``[run] dark``
RUN_DARK = "run.dark"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShippedFiles:
    """The files the daemon (``config``, parameters ``params``, map key ``map_key``) ships to joined workers."""

    def __init__(self, config: Any, params: Any, map_key: str) -> None:
        self.paths: dict[str, Path] = {}
        for key in PARAM_FILE_KEYS:
            path = getattr(params, key, None)
            if path:
                self.paths[key] = Path(path)
        if config.run.dark:
            self.paths[RUN_DARK] = Path(config.run.dark)
        self.files = dict(self.paths)  # what every joined worker takes
        self.paths["map"] = default_cache_dir() / f"{map_key}.npz"
        self.masks = store_dir(state_dir_of(config.run))
        self._digests: dict[Path, tuple[tuple[int, int], str]] = {}
        self.parts = 0  # answers sent
        self.bytes = 0  # bytes shipped

    def path_of(self, name: str) -> Path:
        """The file of entry ``name``; InputError for a name that is not an entry."""
        if name.startswith("mask:") and is_digest(name[5:]):
            return mask_path(self.masks, name[5:])
        if name not in self.paths:
            raise InputError(f"no file {name!r} is shipped; expected one of {', '.join(sorted(self.paths))} or "
                             "mask:<sha256>")
        return self.paths[name]

    def describe(self, name: str) -> dict[str, Any]:
        """``{"sha256", "size", "file"}`` of entry ``name`` (InputError naming it when it cannot be read)."""
        path = self.path_of(name)
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            known = self._digests.get(path)
            if known is None or known[0] != stamp:
                known = (stamp, _digest(path))
                self._digests[path] = known
        except OSError as exc:
            raise InputError(f"{name} {path}: the daemon cannot read it ({exc.strerror or exc})") from None
        return {"sha256": known[1], "size": st.st_size, "file": path.name}

    def available(self, name: str) -> dict[str, Any] | None:
        """``{"size", "file"}`` of entry ``name`` when its file is there (not hashed), else None (a map the daemon
        could not cache)."""
        try:
            path = self.path_of(name)
            return {"size": path.stat().st_size, "file": path.name}
        except (OSError, InputError):
            return None

    def listing(self) -> dict[str, dict[str, Any]]:
        """What every joined worker takes (the parameter file's files, ``[run] dark``), described."""
        return {name: self.describe(name) for name in self.files}

    def part(self, name: str, offset: int) -> tuple[dict[str, Any], bytes]:
        """(description with ``offset``, the bytes from ``offset``, at most :data:`PART_BYTES`) of entry ``name``."""
        info = self.describe(name)
        offset = int(offset)
        if offset < 0 or offset > info["size"]:
            raise InputError(f"{name}: offset {offset} outside the file's {info['size']} bytes")
        path = self.path_of(name)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(min(PART_BYTES, info["size"] - offset))
        except OSError as exc:
            raise InputError(f"{name} {path}: the daemon cannot read it ({exc.strerror or exc})") from None
        self.parts += 1
        self.bytes += len(data)
        return {**info, "offset": offset}, data


def fetch_file(ask_part, name: str, dest: Path, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fetch entry ``name`` through ``ask_part(name, offset) -> (data dict, bytes)`` into ``dest`` (written through a
    temp file beside it and renamed once its SHA-256 is checked, against ``expect["sha256"]`` when given). Returns
    the entry's description; InputError when the daemon refuses, the file changes meanwhile or the digest
    differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    h = hashlib.sha256()
    info: dict[str, Any] | None = None
    try:
        with open(tmp, "wb") as fh:
            offset = 0
            while True:
                data, chunk = ask_part(name, offset)
                if info is None:
                    info = data
                elif (data.get("sha256"), data.get("size")) != (info["sha256"], info["size"]):
                    raise InputError(f"{name}: the daemon's file changed while it was fetched; join again")
                fh.write(chunk)
                h.update(chunk)
                offset += len(chunk)
                if offset >= int(info["size"]) or not chunk:
                    break
        assert info is not None
        want = (expect or {}).get("sha256") or info["sha256"]
        if offset != int(info["size"]) or h.hexdigest() != info["sha256"] or info["sha256"] != want:
            raise InputError(f"{name}: {offset} bytes fetched with SHA-256 {h.hexdigest()[:16]}, expected "
                             f"{int(info['size'])} bytes with {str(want)[:16]}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return info

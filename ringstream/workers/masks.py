"""The engines of a worker, one per pixel mask in use (a DECTRIS series' ``pixel_mask``; docs/DAEMON.md, "DECTRIS
Stream V2").

A frame whose metadata names a mask (:data:`~ringstream.protocol.MASK_KEY`: its SHA-256 in the daemon's mask store,
:mod:`ringstream.geometry.mask_store`) is integrated with the map of the parameter file *and* that mask: the map is
loaded from the map cache under its own key (the parameter file's inputs and the mask's digest) or, when not
there, derived from the parameter file's map (a fraction of a second: the same map a build gives in seconds) and
cached, and an engine is made for it. A frame without the key gets the parameter file's map. The engine of the
last mask used is kept beside the parameter file's (a series' frames all name the same mask), so a new series
with another mask, or none, switches at its first frame. ``fetch(digest)`` gives the folder holding the mask: the
daemon's store for a local worker, a folder the mask was fetched into for a joined one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RingstreamError
from ..geometry.cache import load_or_build
from ..geometry.mask_store import extra_mask
from ..protocol import MASK_KEY

log = logging.getLogger("ringstream.worker")


def mask_of(header: Any) -> str:
    """The mask digest a frame is to be integrated with ("" = the parameter file's map alone)."""
    meta = getattr(header, "metadata", None) or {}
    value = meta.get(MASK_KEY, "")
    return value if isinstance(value, str) else ""


class MaskedEngines:
    """``base``: the engine of the parameter file's map (``base_map``); ``make(imap)`` makes an engine for another
    map; ``params`` the parameters; ``fetch(digest) -> folder`` where the mask is; ``beating``: a context manager that
    keeps the heartbeat going while a map is had (built: seconds for a large detector; derived from ``base_map``:
    a fraction of a second)."""

    def __init__(self, base: Any, make: Callable[[Any], Any], params: Any, fetch: Callable[[str], Path],
                 label: str, beating: Callable[[], Any] | None = None, base_map: Any = None) -> None:
        self.base, self.make, self.params, self.fetch, self.label = base, make, params, fetch, label
        self.base_map = base_map  # the parameter file's map: a mask's map is derived from it, not built anew
        self.beating = beating
        self.digest = ""  # of the other engine kept
        self.other: Any = None
        self.failed: dict[str, str] = {}  # digest -> why its map could not be had (each frame naming it rejected)
        self.switches = 0

    def engine_of(self, header: Any) -> Any:
        """The engine for the frame ``header``; :class:`MaskUnavailable` when its mask cannot be had."""
        digest = mask_of(header)
        if not digest:
            return self.base
        if digest == self.digest:
            return self.other
        if digest in self.failed:
            raise MaskUnavailable(f"frame {header.frame_index} ({header.source_id}): {self.failed[digest]}")
        shape = (int(self.params.NrPixelsZ), int(self.params.NrPixelsY))
        try:
            with self.beating() if self.beating is not None else contextlib.nullcontext():
                imap, cached = load_or_build(self.params, extra_mask=extra_mask(self.fetch(digest), digest, shape),
                                             base=self.base_map)
            engine = self.make(imap)
        except RingstreamError as exc:
            self.failed[digest] = f"pixel mask {digest[:12]} cannot be used ({exc})"
            log.error("%s: %s; the frames integrated with it are rejected", self.label, self.failed[digest])
            raise MaskUnavailable(f"frame {header.frame_index} ({header.source_id}): {self.failed[digest]}") \
                from None
        self.digest, self.other = digest, engine
        self.switches += 1
        origin = ("the cache" if cached else "the parameter file's map" if imap.info.get("derived_from")
                  else "a fresh build")
        log.info("%s: pixel mask %s in use (%d pixels masked in all; map %s from %s)", self.label, digest[:12],
                 int(imap.mask.sum()), imap.key[:12], origin)
        return engine


class MaskUnavailable(RingstreamError):
    """A frame's pixel mask cannot be had (missing, altered, another shape): the frame is rejected with this."""

"""The registry of frame sources: :func:`make_source` makes the source that ``[source] kind`` names.

Kinds (:data:`~ringstream.source_kinds.SOURCE_KINDS`): ``simulated`` (:mod:`.simulated`), ``replay``
(:mod:`.replay`), ``folder`` (:mod:`.folder`), ``pva`` (:mod:`.pva`), ``midas_socket`` (:mod:`.midas_socket`),
``dectris`` (:mod:`.dectris`).
Each source class makes itself from the configuration with ``from_config(config, params)``; what a source is and
what it yields: :mod:`.source_base`.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..source_kinds import SOURCE_KINDS
from .dectris import DectrisSource
from .folder import FolderSource
from .midas_socket import MidasSocketSource
from .pva import PvaSource
from .replay import ReplaySource
from .simulated import SimulatedSource
from .source_base import Source

#: ``[source] kind`` -> the source class; the keys are :data:`SOURCE_KINDS`, in its order
SOURCE_CLASSES: dict[str, type] = {
    "simulated": SimulatedSource,
    "replay": ReplaySource,
    "folder": FolderSource,
    "pva": PvaSource,
    "midas_socket": MidasSocketSource,
    "dectris": DectrisSource,
}


def make_source(config, params) -> Source:
    """The source named by ``config.source.kind`` for the detector of ``params`` (a Params)."""
    kind = str(config.source.kind).strip().lower()
    cls = SOURCE_CLASSES.get(kind)
    if cls is None:
        raise ConfigError(f"source.kind {kind!r}: unknown source; expected one of {', '.join(SOURCE_KINDS)}")
    return cls.from_config(config, params)

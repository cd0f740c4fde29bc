"""Pick an integration engine by name and say which one was picked.

Names: ``"cpu"`` (the NumPy/SciPy reference engine), ``"gpu"`` (CuPy; not available on this install yet) and
``"auto"`` (the GPU engine when it can run, else the CPU one, with a log line saying so: never a silent change).
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError
from .base import Engine
from .reference import ReferenceEngine

log = logging.getLogger("ringstream.engines")

ENGINE_NAMES = ("auto", "cpu", "gpu")

GPU_INSTALL_HINT = "pip install 'ringstream[gpu]'"


def create_engine(name: str, imap, dark: np.ndarray | None = None, normalize: bool = True) -> Engine:
    """Return the engine called ``name`` for map ``imap`` (optionally with a dark frame ``[nZ, nY]``).

    Raises :class:`~ringstream.errors.ConfigError` for an unknown name, or for ``"gpu"`` when the GPU engine is
    not available.
    """
    key = str(name).strip().lower()
    if key == "cpu":
        log.info("engine: cpu (reference NumPy/SciPy)")
        return ReferenceEngine(imap, dark=dark, normalize=normalize)
    if key == "auto":
        log.info("engine: auto -> cpu (reference NumPy/SciPy); GPU engine not available yet")
        return ReferenceEngine(imap, dark=dark, normalize=normalize)
    if key == "gpu":
        raise ConfigError(
            f"engine 'gpu': the GPU engine is not available on this install (it needs CuPy and a CUDA device: "
            f"{GPU_INSTALL_HINT}); use engine 'cpu' or 'auto'"
        )
    raise ConfigError(f"engine {name!r}: unknown engine; expected one of {', '.join(ENGINE_NAMES)}")

"""Pick an integration engine by name and say which one was picked.

Names: ``"cpu"`` (the NumPy/SciPy reference engine), ``"gpu"`` (the CuPy engine, :mod:`.cupy_engine`; a
:class:`ConfigError` with the install line when CuPy is missing or sees no CUDA device) and ``"auto"`` (the GPU
engine when CuPy sees a device and ``RINGSTREAM_GPU`` is not ``0``, else the CPU one, with a log line saying which
and why: never a silent change).
"""

from __future__ import annotations

import logging
import os

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
        if os.environ.get("RINGSTREAM_GPU", "").strip() == "0":
            log.info("engine: auto -> cpu (reference NumPy/SciPy); RINGSTREAM_GPU=0 forces the CPU")
            return ReferenceEngine(imap, dark=dark, normalize=normalize)
        from .cupy_engine import gpu_available

        ok, what = gpu_available()
        if not ok:
            log.info("engine: auto -> cpu (reference NumPy/SciPy); no usable GPU here: %s", what)
            return ReferenceEngine(imap, dark=dark, normalize=normalize)
        from .cupy_engine import CupyEngine

        eng = CupyEngine(imap, dark=dark, normalize=normalize)
        log.info("engine: auto -> gpu (CuPy) on %s", eng.device_name)
        return eng
    if key == "gpu":
        # CupyEngine raises ConfigError with the install line without CuPy or a device
        from .cupy_engine import CupyEngine

        eng = CupyEngine(imap, dark=dark, normalize=normalize)
        log.info("engine: gpu (CuPy) on %s", eng.device_name)
        return eng
    raise ConfigError(f"engine {name!r}: unknown engine; expected one of {', '.join(ENGINE_NAMES)}")

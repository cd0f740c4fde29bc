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


def create_engine(name: str, imap, dark: np.ndarray | None = None, normalize: bool = True,
                  device: int = 0) -> Engine:
    """Return the engine called ``name`` for map ``imap`` (optionally with a dark frame ``[nZ, nY]``); a GPU engine
    runs on CUDA device ``device``.

    Raises :class:`~ringstream.errors.ConfigError` for an unknown name, for ``"gpu"`` when the GPU engine is
    not available, or for a ``device`` this machine does not have.
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

        eng = CupyEngine(imap, dark=dark, normalize=normalize, device=_check_device(device))
        log.info("engine: auto -> gpu (CuPy) on device %d, %s", eng.device_id, eng.device_name)
        return eng
    if key == "gpu":
        # CupyEngine raises ConfigError with the install line without CuPy or a device
        from .cupy_engine import CupyEngine

        eng = CupyEngine(imap, dark=dark, normalize=normalize, device=_check_device(device))
        log.info("engine: gpu (CuPy) on device %d, %s", eng.device_id, eng.device_name)
        return eng
    raise ConfigError(f"engine {name!r}: unknown engine; expected one of {', '.join(ENGINE_NAMES)}")


def _check_device(device: int) -> int:
    """``device`` when CuPy sees that many CUDA devices, else a ConfigError naming ``[workers] gpus``."""
    from .cupy_engine import _import_cupy

    n = int(_import_cupy().cuda.runtime.getDeviceCount())
    device = int(device)
    if not 0 <= device < n:
        raise ConfigError(f"[workers] gpus: CUDA device {device} does not exist here; this machine has {n} "
                          f"(0..{n - 1})")
    return device


def device_for_worker(gpus, index: int) -> int:
    """The CUDA device of worker ``index`` for ``[workers] gpus``: ``gpus[index % len(gpus)]``, or 0 when empty
    (several workers may share one GPU)."""
    gpus = tuple(int(g) for g in (gpus or ()))
    return gpus[int(index) % len(gpus)] if gpus else 0

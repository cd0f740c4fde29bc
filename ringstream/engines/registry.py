"""Pick an integration engine by name and say which one was picked.

The engines are one table, :data:`ENGINES` (in the spirit of pyFAI's ``method_registry``): each entry says its
name, where its class lives, the kind of device it runs on, how it is described in the log, how to tell whether it
can run here and what to install when it cannot. Its capabilities are the class's own declaration
(:class:`~ringstream.engines.base.Capabilities`), read through the entry. A class is imported only when its entry
is used, so the table loads without CuPy.

Names: ``"cpu"`` (the NumPy/SciPy reference engine), ``"gpu"`` (the CuPy engine, :mod:`.cupy_engine`; a
:class:`ConfigError` with the install line when CuPy is missing or sees no CUDA device) and ``"auto"`` (the GPU
engine when CuPy sees a device and ``RINGSTREAM_GPU`` is not ``0``, else the CPU one, with a log line saying which
and why: never a silent change). The engine's ``name`` (``"cpu"`` or ``"gpu"``) is what the outputs record.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .base import GPU_INSTALL_HINT, Capabilities, Engine
from .topology import resolve_gpus

log = logging.getLogger("ringstream.engines")

__all__ = ["ENGINES", "ENGINE_NAMES", "GPU_INSTALL_HINT", "EngineEntry", "create_engine", "device_for_worker"]


@dataclass(frozen=True)
class EngineEntry:
    """One engine of the table.

    ``name``: the engine's name (configuration, log, output files); ``module`` / ``cls``: where its class lives;
    ``device``: ``"cpu"`` or ``"cuda"`` (a CUDA engine takes a ``device`` ordinal); ``describe``: the words the log
    puts after the name; ``available``: the name of a function of ``module`` returning ``(ok, device name or the
    reason it cannot run)``, None when it can always run; ``install_hint``: the command that installs what it needs.
    """

    name: str
    module: str
    cls: str
    device: str
    describe: str
    available: str | None = None
    install_hint: str | None = None

    def load(self) -> type:
        """The engine class (imports its module)."""
        return getattr(importlib.import_module(self.module), self.cls)

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities the engine class declares."""
        return self.load().capabilities

    def check(self) -> tuple[bool, str]:
        """``(True, what)`` when the engine can run here, else ``(False, why not)``."""
        if self.available is None:
            return True, self.describe
        return getattr(importlib.import_module(self.module), self.available)()

    def make(self, imap, dark: np.ndarray | None, normalize: bool, device: int) -> Engine:
        """An instance for map ``imap``; a CUDA engine on device ``device`` (checked to exist first)."""
        if self.device == "cuda":
            return self.load()(imap, dark=dark, normalize=normalize, device=_check_device(device))
        return self.load()(imap, dark=dark, normalize=normalize)

    def placement(self, engine) -> str:
        """Where ``engine`` runs, for the log line: nothing on the CPU, `` on device N, NAME`` on a GPU."""
        if self.device == "cuda":
            return f" on device {engine.device_id}, {engine.device_name}"
        return ""


#: every engine, by name
ENGINES: dict[str, EngineEntry] = {e.name: e for e in (
    EngineEntry("cpu", "ringstream.engines.reference", "ReferenceEngine", device="cpu",
                describe="reference NumPy/SciPy"),
    EngineEntry("gpu", "ringstream.engines.cupy_engine", "CupyEngine", device="cuda", describe="CuPy",
                available="gpu_available", install_hint=GPU_INSTALL_HINT),
)}

#: the names ``create_engine`` takes: ``"auto"`` and every engine's
ENGINE_NAMES = ("auto", *ENGINES)


def create_engine(name: str, imap, dark: np.ndarray | None = None, normalize: bool = True,
                  device: int = 0) -> Engine:
    """Return the engine called ``name`` for map ``imap`` (optionally with a dark frame ``[nZ, nY]``); a GPU engine
    runs on CUDA device ``device``.

    Raises :class:`~ringstream.errors.ConfigError` for an unknown name, for ``"gpu"`` when the GPU engine is
    not available, or for a ``device`` this machine does not have.
    """
    key = str(name).strip().lower()
    if key == "auto":
        return _create_auto(imap, dark, normalize, device)
    entry = ENGINES.get(key)
    if entry is None:
        raise ConfigError(f"engine {name!r}: unknown engine; expected one of {', '.join(ENGINE_NAMES)}")
    # an engine that cannot run here raises ConfigError with its install line while it is made
    eng = entry.make(imap, dark, normalize, device)
    log.info("engine: %s (%s)%s", entry.name, entry.describe, entry.placement(eng))
    return eng


def _create_auto(imap, dark, normalize, device) -> Engine:
    """``"auto"``: the GPU engine when it can run here and ``RINGSTREAM_GPU`` is not ``0``, else the CPU one."""
    gpu, cpu = ENGINES["gpu"], ENGINES["cpu"]
    if os.environ.get("RINGSTREAM_GPU", "").strip() == "0":
        why = "RINGSTREAM_GPU=0 forces the CPU"
    else:
        ok, what = gpu.check()
        if ok:
            eng = gpu.make(imap, dark, normalize, device)
            log.info("engine: auto -> %s (%s)%s", gpu.name, gpu.describe, gpu.placement(eng))
            return eng
        why = f"no usable GPU here: {what}"
    eng = cpu.make(imap, dark, normalize, device)
    log.info("engine: auto -> %s (%s)%s; %s", cpu.name, cpu.describe, cpu.placement(eng), why)
    return eng


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
    (several workers may share one GPU); ``"all"`` is every device CuPy sees (:func:`.topology.resolve_gpus`)."""
    gpus = resolve_gpus(gpus)
    return gpus[int(index) % len(gpus)] if gpus else 0

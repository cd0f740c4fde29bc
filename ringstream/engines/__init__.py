"""Integration engines behind one interface: the NumPy/SciPy reference and the CuPy (CUDA) engine, chosen by a
registry; each engine class declares its :class:`Capabilities` beyond the interface."""

from .base import Capabilities, Engine
from .reference import ReferenceEngine
from .registry import ENGINE_NAMES, ENGINES, create_engine

__all__ = ["ENGINES", "ENGINE_NAMES", "Capabilities", "Engine", "ReferenceEngine", "create_engine"]

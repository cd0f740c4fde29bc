"""Integration engines behind one interface: the NumPy/SciPy reference (CuPy to come), chosen by a registry."""

from .base import Engine
from .reference import ReferenceEngine
from .registry import ENGINE_NAMES, create_engine

__all__ = ["ENGINE_NAMES", "Engine", "ReferenceEngine", "create_engine"]

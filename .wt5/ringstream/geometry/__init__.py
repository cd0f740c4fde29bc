"""geometry: pixel -> (R, η, 2θ, Q); exact-area pixel splitting; the CSR integration map; Map.bin; the map cache."""

from .detector import DetectorGeometry
from .map import IntegrationMap, build_map

__all__ = ["DetectorGeometry", "IntegrationMap", "build_map"]

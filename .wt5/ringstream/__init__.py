"""ringstream: live azimuthal integration of X-ray detector streams, MIDAS-compatible."""

__version__ = "0.1.0"

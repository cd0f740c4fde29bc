"""SNIP background of diffraction profiles (Ryan et al. 1988; Morháč et al. 1997), over many profiles at once.

The per-η fits (:mod:`.caked`) subtract it before fitting, as MIDAS's ``utils/fit_caked_peaks.py`` does. On each
profile ``y [n]`` (an η bin of a cake, along 2θ):

    v = log(log(sqrt(max(y, 0) + 1) + 1) + 1)                          the LLS transform (Poisson-like range)
    for m = iterations, iterations - 1, ..., 1:                       clipping windows, widest first
        v[i] = min(v[i], (v[i - m] + v[i + m]) / 2)   for m <= i < n - m
    bg = max((exp(exp(v) - 1) - 1)^2 - 1, 0)                          the exact inverse of the transform

``iterations`` is the widest window's half-width in bins: it should exceed a peak's half-width at its base (50,
MIDAS's default, suits peaks a few bins wide).
"""

from __future__ import annotations

import numpy as np

#: MIDAS's default (``--snip-iter 50``)
DEFAULT_ITERATIONS = 50


def snip(y, iterations: int = DEFAULT_ITERATIONS, xp=np):
    """The SNIP background of every profile of ``y [..., n]`` (float64, the same shape), along the last axis; a
    window wider than a profile allows (``2m >= n``) is skipped. ``xp``: the array module of ``y`` (NumPy, or CuPy
    for an array on the device)."""
    v = xp.maximum(xp.asarray(y, dtype=xp.float64), 0.0)
    v = xp.log(xp.log(xp.sqrt(v + 1.0) + 1.0) + 1.0)
    n = v.shape[-1]
    avg = xp.empty_like(v)
    for m in range(min(int(iterations), (n - 1) // 2), 0, -1):
        a = avg[..., : n - 2 * m]
        xp.add(v[..., : n - 2 * m], v[..., 2 * m:], out=a)
        a *= 0.5
        xp.minimum(v[..., m: n - m], a, out=v[..., m: n - m])
    bg = (xp.exp(xp.exp(v) - 1.0) - 1.0) ** 2 - 1.0
    return xp.maximum(bg, 0.0)

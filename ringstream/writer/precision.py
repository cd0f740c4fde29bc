"""Precision-bounded storage of cakes and omega sums (``[output] cake_noise_fraction``; docs/OUTPUTS.md,
"Precision-bounded cakes").

A cake value is a weighted sum of photon counts, so it carries counting noise; the digits far below that noise are
noise themselves, and they are what keeps a float32 cake from compressing. With a fraction ``f > 0`` every stored
value ``x`` of bin ``b`` is rounded to the nearest multiple of a power of two ``q <= 2 f sigma_b(x)``, which zeroes
its low mantissa bits (bitshuffle + LZ4 and Blosc then store them as runs of zeros), so that

    |stored - x| <= max(f * sigma_b(x), ulp(x) / 2)

exactly, ``ulp(x)`` being the spacing of the stored dtype at ``x`` (``ulp / 2`` is what lossless rounding to that dtype
does anyway: a value whose noise is finer than the dtype is stored as in lossless mode).

The noise model (:func:`noise_model`): bin ``b`` holds pixels ``p`` with map weights ``W_bp`` (area fraction over the
solid-angle and polarization corrections, :mod:`ringstream.geometry.map`) and area ``A_b = sum_p a_bp``. A cake value
``V = sum_p W_bp c_p / A_b`` (``Normalize 1``; ``Normalize 0``: ``V = sum_p W_bp c_p``) of Poisson counts ``c_p`` has
variance ``sum_p W_bp^2 c_p / A_b^2``; with the counts taken as equal within the bin this is ``g_b V`` with

    g_b = S2_b / (SW_b A_b)      (Normalize 1)        g_b = S2_b / SW_b      (Normalize 0)
    S2_b = sum_p W_bp^2,  SW_b = sum_p W_bp           (S2 / A^2 without corrections, where SW = A)

and an omega sum of n normalised cakes of the same bins has variance ``sum_k g_b V_k = g_b V_sum``: the same factor.
So ``sigma_b(x) = sqrt(s g_b x)``, with ``s`` = :data:`SAFETY`, for ``x >= x_min_b``: the value of a bin whose pixels
hold :data:`MIN_COUNTS` counts each (``x_min_b = MIN_COUNTS SW_b / A_b``; Normalize 0: ``MIN_COUNTS SW_b``). The
counts within a bin are not equal, and the fewer they are the more the model can overestimate the true noise (a bin
whose only counts sit in a sliver of a pixel); ``s`` and ``MIN_COUNTS`` are what keeps the bound on the true noise
on the simulated rings at every count level (docs/OUTPUTS.md gives the figures). Values below ``x_min_b`` (x <= 0
included), empty bins (``A_b = 0``) and non-finite values are stored as in lossless mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_COUNTS", "SAFETY", "NoiseRounding", "map_noise_model", "noise_model"]

#: the noise model's variance is multiplied by this before ``q`` is chosen: the equal-counts approximation can
#: overestimate a bin's true counting noise where its counts sit in the pixels of small weight (on the simulated
#: rings, bins of >= 3 counts a pixel: by up to 1.35 in sigma; docs/OUTPUTS.md)
SAFETY = 0.5

#: a bin's value is rounded only when its pixels hold at least this many counts each on average (below it the
#: equal-counts model can overestimate the noise without limit: stored losslessly)
MIN_COUNTS = 3.0

#: ``q`` is chosen from ``(2 f sigma)^2`` shrunk by this much, so that the float64 rounding of that product never
#: makes ``q`` a power of two larger than ``2 f sigma``
_SHRINK = 1.0 - 2.0**-30

#: a bin of at most this area (px²) is empty (the engines' cake value there is 0)
_EMPTY_AREA = 1e-9


def noise_model(weights: Any, bin_area: np.ndarray, normalize: bool = True) -> np.ndarray:
    """The per-bin noise model, float64 ``[2, n_r, n_eta]`` (``bin_area``'s shape ``[n_r, n_eta]``), from the map's
    CSR ``weights`` ``[n_bins, n_pixels]`` and ``bin_area`` (px²) (module docstring): plane 0 ``g_b``, a cake value
    ``V`` of bin ``b`` has variance ``g_b V`` under the equal-counts model (0 for an empty bin); plane 1 ``x_min_b``,
    the smallest value that is rounded (:data:`MIN_COUNTS` counts a pixel; inf for an empty bin)."""
    import scipy.sparse as sp

    w = sp.csr_matrix(weights)
    area = np.asarray(bin_area, dtype=np.float64)
    data = np.asarray(w.data, dtype=np.float64)
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    sw = np.bincount(rows, weights=data, minlength=w.shape[0]).reshape(area.shape)
    s2 = np.bincount(rows, weights=data * data, minlength=w.shape[0]).reshape(area.shape)
    den = sw * area if normalize else sw
    ok = (area > _EMPTY_AREA) & (den > 0)
    out = np.zeros((2,) + area.shape, dtype=np.float64)
    np.divide(s2, den, out=out[0], where=ok)
    out[1] = np.inf
    np.divide(MIN_COUNTS * sw, area if normalize else 1.0, out=out[1], where=ok)
    return out


def map_noise_model(imap: Any, normalize: bool) -> np.ndarray:
    """:func:`noise_model` of an IntegrationMap (its ``weights`` and ``bin_area``) with ``Normalize``."""
    return noise_model(imap.weights, np.reshape(imap.bin_area, (imap.n_r, imap.n_eta)), bool(normalize))


class NoiseRounding:
    """Rounds a cake or an omega sum ``[n_r, n_eta]`` to ``fraction`` of its counting noise (module docstring).

    ``fraction`` f (0 < f <= 0.5), ``model`` the per-bin ``g_b`` and ``x_min_b`` of :func:`noise_model`
    ``[2, n_r, n_eta]``. An instance keeps scratch arrays: call it from one thread at a time (the writer's)."""

    def __init__(self, fraction: float, model: np.ndarray) -> None:
        f = float(fraction)
        if not 0.0 < f <= 0.5:
            raise ValueError(f"cake noise fraction {fraction!r}: expected 0 < f <= 0.5")
        self.fraction = f
        model = np.asarray(model, dtype=np.float64)
        if model.ndim != 3 or model.shape[0] != 2:
            raise ValueError(f"noise model of shape {model.shape}: expected [2, n_r, n_eta]")
        self.model = model
        self.shape = model.shape[1:]
        g = model[0]
        self.factor = np.where(np.isfinite(g) & (g > 0), g, 0.0)
        self.x_min = np.where(np.isnan(model[1]), np.inf, model[1])
        # (2 f sigma)^2 = 4 f^2 SAFETY g x: the per-bin constant, shrunk (see _SHRINK)
        self._k = 4.0 * f * f * SAFETY * self.factor * _SHRINK
        self._work: dict[np.dtype, tuple] = {}  # scratch arrays of __call__ by working dtype (_scratch)

    def sigma(self, x: np.ndarray) -> np.ndarray:
        """The noise the rounding is bounded by, ``sqrt(SAFETY g x)`` (``|stored - x| <= f sigma``); 0 where no
        rounding is done (x < x_min, x <= 0, empty bins)."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.sqrt(np.where((x > 0) & (x >= self.x_min), SAFETY * self.factor * x, 0.0))

    def __call__(self, a: Any, dtype: np.dtype) -> np.ndarray:
        """``a`` ``[n_r, n_eta]`` rounded as described and stored as a new C-contiguous ``dtype`` (float32 or
        float64) array.

        Bit arithmetic on IEEE 754 numbers (exponent field at bit ``m``, bias ``B``: 23 and 127 in float32, 52 and
        1023 in float64), in float32 when ``dtype`` is and ``a``'s values are (a float32 cake, a one-frame sum),
        else in float64, in scratch arrays made once (fresh arrays of this size cost more in page faults than the
        arithmetic)::

            eq = floor(log2 sqrt t) = floor(log2 t) >> 1      t = (2 f sigma)^2 (shrunk), q = 2^eq
            eu = floor(log2 |x|) - mantissa bits of dtype      2^eu = ulp(x)
            e  = max(eq, eu)                                   (t <= 0 or x < x_min: no eq, e = eu)
            stored = rint(x * 2^-e) * 2^e                      (both products exact: powers of two)

        A multiple of ``2^e >= ulp(x)`` no larger than ``|x| + 2^e / 2`` is a value of the dtype, so the cast adds
        no error; ``e = eu`` is the dtype's own rounding (ties to even, as a cast)."""
        dtype = np.dtype(dtype)
        if np.shape(a) != self.shape:
            raise ValueError(f"rounding {np.shape(a)}: the bins are {self.shape}")
        a = np.asarray(a)
        if dtype == np.float32 and a.dtype == np.float64:  # float32 values in float64 (a one-frame omega sum)?
            with np.errstate(over="ignore"):
                a32 = a.astype(np.float32)
            if np.array_equal(a32, a):
                a = a32
        work = np.dtype(np.float32) if dtype == np.float32 and a.dtype == np.float32 else np.dtype(np.float64)
        k, x_min, (x, t, e, eu, low) = self._scratch(work)
        m, bias = np.finfo(work).nmant, -np.finfo(work).minexp + 1  # (23, 127) or (52, 1023)
        ints = e.dtype
        np.copyto(x, a, casting="unsafe")
        np.multiply(k, x, out=t)  # (an overflow to inf gives eq = 2^(B + 1) >> 1, still <= log2 sqrt t)
        np.right_shift(t.view(ints), m, out=e)
        e -= bias
        e >>= 1
        np.less(x, x_min, out=low)
        low |= t < 2.0 ** (2 - bias)  # (t <= 0, or below the normal numbers)
        np.copyto(e, -4 * bias, where=low)  # no q: below x_min, t <= 0
        np.right_shift(x.view(ints), m, out=eu)
        eu &= 2 * bias + 1  # (the exponent field)
        eu -= bias + np.finfo(dtype).nmant
        np.maximum(e, eu, out=e)
        tiny = e < 1 - bias  # 0 and values near the smallest normal number: stored as they are
        np.maximum(e, 1 - bias, out=e)  # (2^e and 2^-e normal numbers)
        np.minimum(e, bias - 1, out=e)
        np.subtract(bias, e, out=eu)  # the exponent field of 2^-e ...
        eu <<= m
        x *= eu.view(work)
        np.rint(x, out=x)
        e += bias  # ... and of 2^e
        e <<= m
        x *= e.view(work)
        with np.errstate(over="ignore"):
            out = x.astype(dtype)  # (a copy: the scratch array is used again)
            bad = ~np.isfinite(out)
            bad |= tiny
            if bad.any():  # NaN, inf, 0 and the tiny values as they came (the lossless cast)
                out[bad] = np.asarray(a)[bad]
        return out

    def _scratch(self, work: np.dtype) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """The per-bin constant of ``t``, ``x_min`` and the scratch arrays of :meth:`__call__` in ``work`` (float32
        or float64), made at the first call of each."""
        if work not in self._work:
            ints = np.int32 if work == np.float32 else np.int64
            k, x_min = self._k, self.x_min
            if work == np.float32:
                k = (k * (1.0 - 2.0**-20)).astype(np.float32)  # (k and k x are rounded, 2^-24 each: shrunk more)
                with np.errstate(over="ignore"):
                    x_min = x_min.astype(np.float32)
                up = x_min < self.x_min  # rounded up, so that a value below x_min is never rounded
                x_min[up] = np.nextafter(x_min[up], np.float32(np.inf))
            self._work[work] = (k, x_min, (np.empty(self.shape, work), np.empty(self.shape, work),
                                           np.empty(self.shape, ints), np.empty(self.shape, ints),
                                           np.empty(self.shape, bool)))
        return self._work[work]

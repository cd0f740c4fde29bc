"""The precision-bounded mode's rounding (``[output] cake_noise_fraction``, ringstream/writer/precision.py): the
bound |stored - x| <= max(f sigma, ulp(x)/2) exactly, over many decades, both stored dtypes, odd values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ringstream.writer.precision import MIN_COUNTS, SAFETY, NoiseRounding, noise_model
from ringstream.writer.storage import stored

pytestmark = pytest.mark.timeout(60)

SHAPE = (60, 36)


def _model(g: np.ndarray, x_min: float | np.ndarray = 0.0) -> np.ndarray:
    """A noise model [2, *SHAPE]: the factor g, every value from x_min on rounded."""
    return np.stack([g, np.broadcast_to(x_min, SHAPE)])


def _values(rng: np.random.Generator) -> np.ndarray:
    """Values over 16 decades, a quarter negative, and the odd ones: zeros of both signs, NaN, infinities, the
    smallest and largest floats, powers of two and the float32 values next to them."""
    x = 10.0 ** rng.uniform(-8, 8, SHAPE) * np.where(rng.random(SHAPE) < 0.25, -1, 1)
    odd = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-300, 5e-324, 1e300, 2.0**-149, 2.0**-126, 3.4e38, 1.0, 2.0,
           1024.0, np.nextafter(np.float32(1024), np.float32(0)), np.nextafter(np.float32(1024), np.float32(2048))]
    x.flat[: len(odd)] = odd
    return x


@pytest.mark.parametrize("fraction", [0.01, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("source", [np.float64, np.float32])
def test_the_error_is_at_most_f_sigma_or_the_dtypes_own_rounding(fraction, dtype, source):
    rng = np.random.default_rng([7, int(fraction * 100), np.dtype(dtype).itemsize, np.dtype(source).itemsize])
    g = 10.0 ** rng.uniform(-6, 1, SHAPE)
    g[0, 20:24] = [0.0, np.nan, -1.0, np.inf]  # empty or broken bins: stored losslessly
    r = NoiseRounding(fraction, _model(g))
    for _ in range(5):
        with np.errstate(over="ignore"):  # (1e300 as float32: inf)
            x = _values(rng).astype(source)
            lossless = x.astype(dtype)
        out = stored(x, dtype, r)
        assert out.dtype == dtype and out.flags.c_contiguous and out.shape == SHAPE
        x64 = x.astype(np.float64)
        finite = np.isfinite(x64) & np.isfinite(lossless)
        sigma = np.sqrt(np.where(x64 > 0, SAFETY * np.nan_to_num(g, nan=0, posinf=0).clip(0) * x64, 0))
        assert np.array_equal(r.sigma(x), sigma, equal_nan=True)
        half_ulp = np.spacing(np.abs(lossless[finite]).astype(dtype)).astype(np.float64) / 2
        err = np.abs(out[finite].astype(np.float64) - x64[finite])
        assert np.all(err <= np.maximum(fraction * sigma[finite], half_ulp))
        # what is not rounded is the lossless cast, bit for bit: NaN, infinities, x <= 0, empty bins
        keep = ~finite | (x64 <= 0) | ~(np.nan_to_num(g, nan=0, posinf=0) > 0)
        assert np.array_equal(out[keep].view(np.uint8), lossless[keep].view(np.uint8))
        # values with noise coarser than the dtype lost bits: at least half of them below the noise's half
        coarse = finite & (x64 > 0) & (fraction * sigma > 4 * np.spacing(np.abs(lossless)).astype(np.float64))
        assert coarse.sum() > 100
        assert np.count_nonzero(out[coarse] != lossless[coarse]) > coarse.sum() // 2


def test_rounded_values_zero_the_low_mantissa_bits():
    """Counts of ~10,000 a bin (sigma ~ 100 in the model's g = 1): with f = 0.01, q <= 2 f sigma = 1.4 (s = 0.5)
    ends at 1: the values are whole numbers, 14 bits of mantissa, the 9 low bits of the float32 zero."""
    rng = np.random.default_rng(3)
    x = rng.uniform(8192, 16383, SHAPE)
    out = stored(x, np.float32, NoiseRounding(0.01, _model(np.ones(SHAPE))))
    assert np.array_equal(out, np.rint(x).astype(np.float32))
    assert not np.any(out.view(np.uint32) & 0x1FF)


def test_rounding_is_deterministic_and_leaves_its_input_alone():
    rng = np.random.default_rng(4)
    x = rng.uniform(1, 1e4, SHAPE)
    before = x.copy()
    r = NoiseRounding(0.05, _model(rng.uniform(0.01, 1, SHAPE)))
    a, b = r(x, np.float32), r(x, np.float32)
    assert np.array_equal(a, b) and a is not b and np.array_equal(x, before)
    # float32 values held in float64 (a one-frame omega sum) round as the float32 cake they are
    x32 = x.astype(np.float32)
    assert np.array_equal(r(x32.astype(np.float64), np.float32), r(x32, np.float32))
    with pytest.raises(ValueError, match="the bins are"):
        r(x[:10], np.float32)
    for bad in (0.0, -0.1, 0.6, np.nan):
        with pytest.raises(ValueError, match="noise fraction"):
            NoiseRounding(bad, _model(np.ones(SHAPE)))
    with pytest.raises(ValueError, match="expected \\[2, n_r, n_eta\\]"):
        NoiseRounding(0.01, np.ones(SHAPE))


@pytest.mark.parametrize("source", [np.float64, np.float32])  # (float32 in, float32 out: computed in float32)
def test_values_below_x_min_are_stored_losslessly(source):
    rng = np.random.default_rng(5)
    x_min = rng.uniform(10, 100, SHAPE)
    x = (x_min * rng.uniform(0.5, 1.5, SHAPE)).astype(source)
    x.flat[:50] = x_min.flat[:50]  # (at x_min exactly: rounded, or below it in float32)
    r = NoiseRounding(0.1, _model(np.ones(SHAPE), x_min))
    out = r(x, np.float32)
    below = x < x_min
    assert below.sum() > 100 and (~below).sum() > 100
    assert np.array_equal(out[below], x[below].astype(np.float32))
    assert np.all(r.sigma(x)[below] == 0) and np.all(r.sigma(x)[~below] > 0)
    assert np.count_nonzero(out[~below] != x[~below].astype(np.float32)) > (~below).sum() // 2


def test_noise_model_of_a_map():
    """g = S2 / (SW A) with Normalize 1 (S2 / A^2 when the weights are the areas), S2 / SW with Normalize 0; 0 for
    an empty bin; x_min the value of MIN_COUNTS counts in each pixel (inf for an empty bin)."""
    # 3 bins over 4 pixels: bin 0 whole pixels 0, 1; bin 1 halves of pixels 2, 3; bin 2 empty
    w = sp.csr_matrix(np.array([[1.0, 1.0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 0]]))
    area = np.array([[2.0, 1.0, 0.0]])
    m = noise_model(w, area, True)
    assert m.shape == (2, 1, 3) and np.allclose(m[0], [[2 / 4, 0.5 / 1, 0]])
    assert np.allclose(m[1], [[MIN_COUNTS, MIN_COUNTS, np.inf]])
    m = noise_model(w, area, False)
    assert np.allclose(m[0], [[1.0, 0.5, 0]]) and np.allclose(m[1], [[2 * MIN_COUNTS, MIN_COUNTS, np.inf]])
    # corrections: weights = area / (SA P) != areas: V = c SW / A, var = c S2 / A^2 = V S2 / (SW A)
    wc = sp.csr_matrix(np.array([[2.0, 1.0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 0]]))
    m = noise_model(wc, area, True)
    assert np.allclose(m[0], [[5 / (3 * 2), 0.5 / 1, 0]]) and np.allclose(m[1], [[MIN_COUNTS * 3 / 2, MIN_COUNTS, np.inf]])

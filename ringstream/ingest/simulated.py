"""A synthetic powder pattern for the configured detector: Debye–Scherrer rings on a smooth background.

The noise-free mean of raw pixel p, with 2θ_p its scattering angle (deg) from the detector geometry:

    μ_p = B(2θ_p) + Σ_j A · exp(−(2θ_p − 2θ_j)² / (2σ²))          (rings at ``source.rings_2theta``)
    B(2θ) = b0 · (1 + exp(−(2θ − 2θ_lo) / w))                         (a smooth decreasing background)

and frame k is a Poisson draw ``img = Poisson(μ)`` from ``numpy.random.default_rng([seed, k % K])``, cast to
``source.dtype``. Drawing megapixels of Poisson noise takes longer than a frame may, so the source draws its
``K = 8`` realisations once at start and frame k is realisation ``k % K``; :meth:`SimulatedSource.make_frame`
recomputes any frame from scratch (same seed, same numbers), which is what tests compare the daemon's output
against.

Without ``rings_2theta`` the rings sit at 20 %, 40 %, 60 % and 80 % of the 2θ span of the radial range
[RMin, RMax]; σ is the 2θ width of ~1.5 px at mid-range.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from ..geometry.detector import DetectorGeometry
from .source_base import SourceFrame, StopFlag, stopped

#: number of distinct noise realisations the source cycles through
K = 8

#: ring peak height above background (counts), background level (counts), for integer dtypes of >= 16 bits
_PEAK, _BG = 1000.0, 50.0


def _amplitudes(dtype: np.dtype) -> tuple[float, float]:
    """(ring height, background) scaled so a Poisson draw stays inside the dtype's range."""
    if dtype.kind in "ui" and dtype.itemsize == 1:
        return 100.0, 10.0
    return _PEAK, _BG


class SimulatedSource:
    """Synthetic frames of ``shape`` = (NrPixelsZ, NrPixelsY) with rings at ``rings_2theta`` (deg).

    ``n_frames`` 0 = forever; ``rate`` Hz (0 = as fast as possible: the ingest paces it); ``seed`` fixes every
    frame. Frame k is realisation ``k % K``; see the module docstring for the model.
    """

    name = "simulated"
    pausable = True
    resumable = True  # frame k is made again from (seed, k): see resume() and frame_again()

    def __init__(
        self,
        params,
        *,
        n_frames: int = 0,
        rate: float = 0.0,
        dtype: str | np.dtype = "int32",
        seed: int = 0,
        rings_2theta: Sequence[float] | None = None,
        precompute: bool = True,
    ) -> None:
        self.shape = (int(params.NrPixelsZ), int(params.NrPixelsY))
        try:
            self.dtype = np.dtype(dtype)
        except TypeError as exc:
            raise ConfigError(f"source.dtype {dtype!r}: not a numpy dtype ({exc})") from None
        if self.dtype.kind not in "uif":
            raise ConfigError(f"source.dtype {dtype!r}: expected an integer or float dtype")
        self.n_frames = int(n_frames)
        if self.n_frames < 0:
            raise ConfigError(f"source.frames {n_frames}: must be >= 0 (0 = forever)")
        self.rate = float(rate or 0.0)
        self.seed = int(seed)
        geom = DetectorGeometry.from_params(params)
        y, z = geom.pixel_centres()
        r, _ = geom.r_eta(y, z)
        tth = geom.two_theta_deg(r).reshape(self.shape)
        lo, hi = (float(v) for v in geom.two_theta_deg(np.array([params.RMin, params.RMax])))
        if rings_2theta:
            self.rings_2theta = tuple(float(v) for v in rings_2theta)
        else:
            self.rings_2theta = tuple(lo + f * (hi - lo) for f in (0.2, 0.4, 0.6, 0.8))
        mid = 0.5 * (params.RMin + params.RMax)
        sigma = float(geom.two_theta_deg(mid + 0.75) - geom.two_theta_deg(mid - 0.75))
        self.sigma_2theta = max(sigma, 1e-6)
        peak, bg = _amplitudes(self.dtype)
        width = max(hi - lo, 1e-6) / 3.0
        mean = bg * (1.0 + np.exp(-(tth - lo) / width).clip(max=3.0))
        for t in self.rings_2theta:
            mean += peak * np.exp(-((tth - t) ** 2) / (2.0 * self.sigma_2theta**2))
        self.mean = mean  # float64 [nZ, nY], the noise-free pattern
        self._frames: list[np.ndarray] | None = None
        self._first = 0  # the first frame frames() yields (after a resume)
        if precompute:
            self._frames = [self.make_frame(k) for k in range(K)]

    @classmethod
    def from_config(cls, config, params) -> SimulatedSource:
        s = config.source
        return cls(
            params,
            n_frames=int(s.frames),
            rate=float(s.rate),
            dtype=s.dtype,
            seed=int(s.seed),
            rings_2theta=list(s.rings_2theta or ()),
        )

    def make_frame(self, k: int) -> np.ndarray:
        """Frame k, recomputed from (seed, k % K): ``Poisson(mean)`` cast to ``dtype``, ``[nZ, nY]``."""
        rng = np.random.default_rng([self.seed, int(k) % K])
        counts = rng.poisson(self.mean)
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            counts = np.clip(counts, info.min, info.max)
        return counts.astype(self.dtype)

    def frames(self, stop: StopFlag | None = None) -> Iterator[SourceFrame]:
        """Frames 0, 1, … up to ``n_frames`` (forever when 0), until ``stop`` is set."""
        if self._frames is None:
            self._frames = [self.make_frame(k) for k in range(K)]
        k = self._first
        while self.n_frames == 0 or k < self.n_frames:
            if stopped(stop):
                return
            yield self._frame(k)
            k += 1

    def _frame(self, k: int) -> SourceFrame:
        pixels = self._frames[k % K] if self._frames is not None else self.make_frame(k)
        return SourceFrame(pixels, f"simulated:{k}", time.time(), {"realisation": k % K})

    def resume(self, last_ids: list[str], announced: int) -> None:
        """Before :meth:`frames`: an ingest that died announced frames up to these ids (``simulated:k``);
        frames() goes on after the last of them."""
        ks = [int(sid.rpartition(":")[2]) for sid in last_ids if sid.rpartition(":")[2].isdigit()]
        self._first = max(ks) + 1 if ks else 0

    def frame_again(self, source_id: str) -> SourceFrame | None:
        """Frame ``simulated:k`` made again (the same pixels: they depend on (seed, k) alone)."""
        tail = source_id.rpartition(":")[2]
        return self._frame(int(tail)) if tail.isdigit() else None

    def close(self) -> None:
        self._frames = None

"""The reference integration engine: NumPy/SciPy, float64 throughout. It defines the numbers.

Notation (docs/MIDAS-FORMATS.md section 3):

- ``x_p``      intensity of raw pixel p (flat index ``p = z * NrPixelsY + y``) after dark subtraction,
               ``x_p = img_p − dark_p``;
- ``W_bp``     map weight of pixel p in bin b: ``a_pb / (SA_p · P_p)``, where ``a_pb`` is the exact area (px²) of
               (pixel p ∩ annular sector b) and SA, P are the solid-angle and polarization corrections (1 when off);
               masked pixels have no entries;
- ``A_b``      bin area ``Σ_p a_pb`` over unmasked pixels (``imap.bin_area``), bin ``b = r · n_eta + e``.

Cake (``Normalize 1``):   ``I_b = Σ_p W_bp · x_p / A_b``   when ``A_b > 1e-9``, else 0 (an empty bin).
Cake (``Normalize 0``):   ``I_b = Σ_p W_bp · x_p``         (raw weighted sums).
Lineout:                  ``I(r) = Σ_e I(r,e) · A(r,e) / Σ_e A(r,e)``, 0 when the ring has no area.

With ``Normalize 1`` and no corrections the lineout equals the pixel-area-weighted ring mean
``Σ_p a_pr · x_p / Σ_p a_pr`` (``a_pr = Σ_e a_p(r,e)``), since ``I(r,e)·A(r,e) = Σ_p a_p(r,e) · x_p``.

A batch of n frames is one sparse × dense product ``S = W · X`` with ``X = [x¹ … xⁿ]`` of shape ``[n_pixels, n]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Capabilities, check_batch, check_dark, check_frame

#: a bin whose area (px²) is at most this is empty: its cake value is 0 (docs/MIDAS-FORMATS.md section 3).
EMPTY_BIN_AREA = 1e-9


class ReferenceEngine:
    """Integrate frames with the CSR map on the CPU (SciPy sparse × NumPy dense, float64).

    Parameters
    ----------
    imap:
        the :class:`~ringstream.geometry.map.IntegrationMap` (``weights`` ``[n_r·n_eta, nZ·nY]``, ``bin_area``
        ``[n_r, n_eta]``, ``shape`` ``(nZ, nY)``).
    dark:
        optional dark frame ``[nZ, nY]``, subtracted from every frame before integration (converted to float64).
    normalize:
        True (``Normalize 1``): the cake is the area-normalised mean; False (``Normalize 0``): raw weighted sums.
    """

    name = "cpu"
    #: one frame or one stacked array per call, synchronously: nothing beyond :class:`~.base.Engine`
    capabilities = Capabilities()

    def __init__(self, imap, dark: np.ndarray | None = None, normalize: bool = True) -> None:
        self.imap = imap
        self.shape: tuple[int, int] = (int(imap.shape[0]), int(imap.shape[1]))
        self.n_r = int(imap.n_r)
        self.n_eta = int(imap.n_eta)
        self.normalize = bool(normalize)
        self.dark = check_dark(dark, self.shape)
        n_bins, n_pix = self.n_r * self.n_eta, self.shape[0] * self.shape[1]

        # W: [n_bins, n_pixels] CSR, float64 (one row per bin b = r·n_eta + e, columns are raw flat indices)
        self.W = sp.csr_matrix(imap.weights, dtype=np.float64)
        if self.W.shape != (n_bins, n_pix):
            raise ValueError(f"map weights have shape {self.W.shape}, expected {(n_bins, n_pix)}")

        # A(r, e): bin areas; a bin is non-empty when A > 1e-9
        self.bin_area = np.asarray(imap.bin_area, dtype=np.float64).reshape(self.n_r, self.n_eta)
        self.nonempty = self.bin_area > EMPTY_BIN_AREA
        # the areas used as lineout weights: A(r,e) for non-empty bins, 0 for empty ones
        self.lineout_weight = np.where(self.nonempty, self.bin_area, 0.0)
        # Σ_e A(r,e), the area of each ring
        self.ring_area = self.lineout_weight.sum(axis=1)

    # ------------------------------------------------------------------------------------------------ one frame
    def integrate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw frame ``[nZ, nY]`` (any integer or float dtype) -> (lineout ``[n_r]``, cake ``[n_r, n_eta]``)."""
        frame = check_frame(frame, self.shape)
        # x_p = img_p − dark_p, float64
        x = frame.astype(np.float64, copy=False).ravel()
        if self.dark is not None:
            x = x - self.dark.ravel()
        # s_b = Σ_p W_bp · x_p
        s = self.W @ x
        cake = self._cake(s.reshape(self.n_r, self.n_eta))
        return self._lineout(cake), cake

    # ---------------------------------------------------------------------------------------------- many frames
    def integrate_batch(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[n, nZ, nY]`` -> (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``), one sparse × dense product."""
        frames = check_batch(frames, self.shape)
        n = frames.shape[0]
        # X: [n_pixels, n], column k = x^k = img^k − dark
        X = frames.reshape(n, -1).astype(np.float64, copy=False).T
        if self.dark is not None:
            X = X - self.dark.reshape(-1, 1)
        # S = W · X: [n_bins, n]
        S = self.W @ X
        # -> [n, n_r, n_eta]
        cakes = self._cake(np.ascontiguousarray(S.T).reshape(n, self.n_r, self.n_eta))
        return self._lineout(cakes), cakes

    # ---------------------------------------------------------------------------------------------- the maths
    def _cake(self, sums: np.ndarray) -> np.ndarray:
        """Sums ``s(r, e)`` (``[..., n_r, n_eta]``) -> cake: ``s / A`` where ``A > 1e-9`` else 0, or ``s`` (raw)."""
        if not self.normalize:
            return sums
        # I(r,e) = s(r,e) / A(r,e) on non-empty bins, 0 on empty ones
        cake = np.zeros_like(sums)
        np.divide(sums, self.bin_area, out=cake, where=np.broadcast_to(self.nonempty, sums.shape))
        return cake

    def _lineout(self, cake: np.ndarray) -> np.ndarray:
        """Cake ``[..., n_r, n_eta]`` -> lineout ``[..., n_r]``: ``Σ_e I(r,e)·A(r,e) / Σ_e A(r,e)``, 0 if no area."""
        # numerator Σ_e I(r,e)·A(r,e) (empty bins have weight 0)
        num = (cake * self.lineout_weight).sum(axis=-1)
        lineout = np.zeros_like(num)
        has_area = np.broadcast_to(self.ring_area > 0.0, num.shape)
        np.divide(num, np.broadcast_to(self.ring_area, num.shape), out=lineout, where=has_area)
        return lineout

"""Shared by the output tests: a small geometry and Result-like records with fits, NaN rows, ROIs and metadata."""

from __future__ import annotations

import numpy as np

from ringstream.params import parse_params
from ringstream.writer.outputs import FrameRecord

PARAMS = """\
NrPixelsY 40
NrPixelsZ 36
Lsd 1000000
px 200
BC 19.6 17.3
RMin 2
RMax 18
RBinSize 1
EtaBinSize 30
Wavelength 0.2
PeakLocation 6
PeakLocation 11
PeakLocation 15
"""

N_PEAKS = 3


def make(extra: str = ""):
    """(params, imap) for :data:`PARAMS` plus ``extra`` lines."""
    from ringstream.geometry.map import build_map

    p = parse_params(PARAMS + extra, source="setup.txt")
    return p, build_map(p)


def records(n: int, imap, seed: int = 0, start: int = 0, rejected: tuple[int, ...] = ()) -> list[FrameRecord]:
    """``n`` records from ``start``: random lineouts and cakes (float32, as the workers send), fits [3, 7] with a
    NaN row every third frame, one or two ROIs of model values, metadata with omega and I0; ``rejected`` indices
    have no lineout."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        if i in rejected:
            out.append(FrameRecord(i, None, f"f{i}", metadata={"omega": 0.25 * i}, reason="test reject"))
            continue
        fit = rng.normal(size=(N_PEAKS, 7))
        if i % 3 == 0:
            fit[1] = np.nan
        k = 1 + i % 2
        table = np.array([[3 + j * 6, 4 + j] for j in range(k)], dtype=np.int32)
        values = rng.random(int(table[:, 1].sum()))
        out.append(FrameRecord(i, rng.random(imap.n_r).astype(np.float32), f"img_{i:04d}.tif", 1.7e9 + i,
                               rng.random((imap.n_r, imap.n_eta)).astype(np.float32), fit, (table, values),
                               {"omega": 0.25 * i, "I0": 1000.0 + i, "note": "x"}))
    return out

"""How far the precision-bounded mode's noise model is from each bin's exact counting noise, by counts per pixel.

The writer bounds its rounding by ``sigma_model = sqrt(g_b V)`` (ringstream/writer/precision.py: the counts taken as
equal within a bin); the exact counting noise of a cake value is ``sqrt(sum_p W_bp^2 c_p) / A_b`` from the frame's
own pixel counts. On the demo geometry (``configs/demo-pilatus2m.txt``, PILATUS 2M, 990 x 72 bins) this draws
Poisson frames of the simulated source's rings scaled to several count levels (``--scales``: 1 = 50 counts a pixel of
background, rings of 1,000), integrates them with the reference engine, and reports the ratio sigma_model / sigma_exact
per bin, grouped by the bin's mean counts a pixel (``V A / SW``): what sets ``SAFETY`` (the variance factor) and
``MIN_COUNTS`` (no rounding below) in ringstream/writer/precision.py. Also, for the bins the writer rounds, the largest
error seen over 0.01 of the exact noise with f = 0.01 (<= 1 is the bound holding).

    python bench/noise_model.py [--frames 2] [--scales 1,0.1,0.03,0.01,0.003,0.001] [--machine vm]

Writes ``bench/results/noise_model-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from ringstream.engines.reference import ReferenceEngine
from ringstream.geometry.cache import load_or_build
from ringstream.ingest.simulated import SimulatedSource
from ringstream.params import load_params
from ringstream.writer.precision import MIN_COUNTS, SAFETY, NoiseRounding, map_noise_model

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "configs" / "demo-pilatus2m.txt"
#: edges of the mean-counts-a-pixel classes
EDGES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, np.inf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2, help="frames per count level")
    ap.add_argument("--scales", default="1,0.1,0.03,0.01,0.003,0.001", help="count levels (1 = the source's)")
    ap.add_argument("--machine", default="vm")
    args = ap.parse_args()

    p = load_params(DEMO)
    imap, _ = load_or_build(p)
    model = map_noise_model(imap, p.Normalize)
    g, x_min = model[0].ravel(), model[1].ravel()
    rounding = NoiseRounding(0.01, model)
    w = imap.weights.tocsr()
    w2 = w.multiply(w).tocsr()
    area = np.asarray(imap.bin_area, dtype=np.float64).reshape(-1)
    sw = np.asarray(w.sum(axis=1)).ravel()
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    mean = SimulatedSource(p, precompute=False).mean
    rng = np.random.default_rng(5)
    ratios, counts, worst = [], [], 0.0
    for scale in (float(s) for s in args.scales.split(",")):
        for _ in range(args.frames):
            frame = rng.poisson(mean * scale)
            cake = engine.integrate(frame)[1]
            v = cake.ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                exact = np.sqrt(w2 @ frame.astype(np.float64).ravel()) / area
                ok = (v > 0) & (exact > 0) & (area > 1e-9)
                ratios.append(np.sqrt(g[ok] * v[ok]) / exact[ok])
                counts.append((v * area / sw)[ok])
            err = np.abs(rounding(cake, np.float32).astype(np.float64).ravel() - v)
            rounded = ok & (v >= x_min)
            worst = max(worst, float(np.max(err[rounded] / (0.01 * exact[rounded]), initial=0.0)))
    ratio, mean_counts = np.concatenate(ratios), np.concatenate(counts)
    rows = []
    print(f"{'counts a pixel':>16} {'bins':>8} {'min':>7} {'99.9 %':>8} {'99.99 %':>8} {'max':>10}")
    for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
        sel = (mean_counts >= lo) & (mean_counts < hi)
        if not sel.any():
            continue
        r = ratio[sel]
        row = {"counts_from": lo, "counts_to": None if np.isinf(hi) else hi, "bins": int(sel.sum()),
               "ratio_min": round(float(r.min()), 3), "ratio_p99_9": round(float(np.percentile(r, 99.9)), 3),
               "ratio_p99_99": round(float(np.percentile(r, 99.99)), 3), "ratio_max": round(float(r.max()), 3)}
        rows.append(row)
        print(f"{lo:7g} .. {hi:<6g} {row['bins']:8d} {row['ratio_min']:7.3f} {row['ratio_p99_9']:8.3f} "
              f"{row['ratio_p99_99']:8.3f} {row['ratio_max']:10.3f}")
    print(f"SAFETY {SAFETY} (sigma x {np.sqrt(SAFETY):.3f}), MIN_COUNTS {MIN_COUNTS}: largest error of a rounded "
          f"value over 0.01 of its exact noise, f = 0.01: {worst:.3f}")
    result = {"benchmark": "noise_model", "what": __doc__.split("\n\n")[1].replace("\n", " "),
              "scales": args.scales, "frames_per_scale": args.frames, "safety": SAFETY, "min_counts": MIN_COUNTS,
              "max_error_over_f_exact_sigma": round(worst, 4), "classes": rows,
              "machine": {"hostname": args.machine, "python": platform.python_version(), "numpy": np.__version__,
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}}
    path = HERE / "results" / f"noise_model-{args.machine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Where frames wait: the stage stamps a daemon run with ``--trace-dir DIR`` left (ringstream/trace.py), as
intervals between stages, percentiles over the frames, and each stage's rate (frames over the span from the first
to the last stamp of that stage).

    ringstream run ... --trace-dir /tmp/trace
    python bench/stage_trace.py /tmp/trace [--json OUT.json]

A ring slot is held from ``slot`` to ``released``: with a ring of S slots, a hold of H ms allows at most
S / H * 1000 frames/s, which is what the ingest's ``ring_wait_us`` counter then shows it waiting for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ringstream.trace import STAGES, summary, table


def stage_rates(times: np.ndarray) -> dict[str, float]:
    """Frames over the span of each stage's stamps, frames/s (stages with fewer than two stamps left out)."""
    out = {}
    for k, name in enumerate(STAGES):
        t = times[:, k]
        t = t[np.isfinite(t)]
        if t.size >= 2 and t.max() > t.min():
            out[name] = round(float((t.size - 1) / (t.max() - t.min())), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path, help="also write the tables here")
    args = ap.parse_args()
    frames, times = table(args.folder)
    rows = summary(times)
    rates = stage_rates(times)
    print(f"{len(frames)} frames stamped ({frames.min()}..{frames.max()}), "
          f"{sorted(p.name for p in args.folder.glob('*.npz'))}")
    print(f"{'interval':<40} {'frames':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for r in rows:
        if r["frames"]:
            print(f"{r['interval']:<40} {r['frames']:7d} {r['p50_ms']:9.3f} {r['p90_ms']:9.3f} {r['p99_ms']:9.3f} "
                  f"{r['max_ms']:9.3f}")
    print("rate of each stage, frames/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    if args.json:
        args.json.write_text(json.dumps({"frames": int(len(frames)), "intervals": rows, "stage_rates": rates},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: the end-to-end GPU daemon with and without 3 fitted peaks per frame (issue 5's "keeps the integration
rate" check), for several worker counts, on simulated PILATUS 2M int32 frames (``configs/demo-pilatus2m.txt``,
rings at its simulated ring radii). Uses ``bench/fitting.py``'s ``daemon_run`` (the real ``ringstream run
--engine gpu``, zarr.zip and HDF5 written, fit.bin read back). Needs CuPy and a GPU.

    python bench/fitting_daemon.py [--frames 10000] [--workers 1,2] [--source simulated|replay] [--out DIR]

Writes ``<out>/fitting_daemon-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from fitting import daemon_run, machine, ring_radii  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--omega-sum-frames", type=int, default=-1,
                    help="OmegaSumFrames of the runs (-1: one running sum, as a fast stream would use)")
    ap.add_argument("--source", choices=("simulated", "replay"), default="simulated",
                    help="simulated detector, or 32 of its frames replayed (the ingest only copies)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    radii = ring_radii(REPO / "configs" / "demo-pilatus2m.txt")
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        for peaks in ([], radii):
            r = daemon_run(args.frames, w, peaks, args.omega_sum_frames, args.source)
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.source == "simulated" else f"-{args.source}"
    path = out / f"fitting_daemon-{re.sub(r'[^A-Za-z0-9]+', '-', dev).strip('-')}{tag}.json"
    path.write_text(json.dumps({"benchmark": "fitting_daemon", "machine": machine(dev), "results": rows}, indent=2)
                    + "\n")
    print(f"\n{'workers':>7} {'peaks':>5} {'frames/s':>9} {'sustained':>9} {'written':>8} {'fit rows ok':>11}")
    for r in rows:
        fb = r.get("fit_bin") or {}
        print(f"{r.get('workers', '?'):>7} {len(r.get('peaks', [])):>5} {r.get('frames_per_s', 0):>9} "
              f"{r.get('sustained_fps') or 0:>9} "
              f"{r.get('written', 0):>8} {fb.get('rows_ok', '-'):>11}  {r.get('error', '')[:200]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

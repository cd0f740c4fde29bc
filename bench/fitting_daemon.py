"""Benchmark: the end-to-end GPU daemon with and without 3 fitted peaks per frame (the "fitting keeps the
integration rate" check), for several worker counts, on simulated PILATUS 2M int32 frames
(``configs/demo-pilatus2m.txt``, rings at its simulated ring radii). Uses ``bench/fitting.py``'s ``daemon_run``
(the real ``ringstream run --engine gpu``, HDF5 written, fit.bin read back). Needs CuPy and a GPU.

Each worker count and peak list runs with the default settings first (the headline rows: ``OmegaSumFrames`` as the
demo parameter file gives it, the zarr.zip written) and then with the fast-path settings (``OmegaSumFrames -1``,
``--no-zarr``); ``bench/workload.py`` defines both.

    python bench/fitting_daemon.py [--frames 10000] [--workers 1,2] [--settings default,fast-path]
                                   [--source simulated|replay] [--out DIR]

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
from workload import daemon_settings  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--settings", default="default,fast-path",
                    help="daemon settings of each case, the first the headline row (default,fast-path)")
    ap.add_argument("--omega-sum-frames", default="-1",
                    help="comma-separated OmegaSumFrames of the fast-path rows (-1: one running sum)")
    ap.add_argument("--source", choices=("simulated", "replay"), default="simulated",
                    help="simulated detector, or its frames replayed (the ingest only copies; at least 32 frames, "
                         "and at least twice the last-level cache)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    radii = ring_radii(REPO / "configs" / "demo-pilatus2m.txt")
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        for peaks in ([], radii):
            for s in daemon_settings(args.settings, args.omega_sum_frames):
                r = daemon_run(args.frames, w, peaks, s.omega_sum_frames, args.source, zarr=s.zarr, settings=s.name)
                rows.append(r)
                print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.source == "simulated" else f"-{args.source}"
    path = out / f"fitting_daemon-{re.sub(r'[^A-Za-z0-9]+', '-', dev).strip('-')}{tag}.json"
    path.write_text(json.dumps({"benchmark": "fitting_daemon", "machine": machine(dev), "results": rows}, indent=2)
                    + "\n")
    print(f"\n{'settings':<12} {'workers':>7} {'peaks':>5} {'frames/s':>9} {'sustained':>9} {'written':>8} "
          f"{'fit rows ok':>11}")
    for r in rows:
        fb = r.get("fit_bin") or {}
        print(f"{r.get('settings', '?'):<12} {r.get('workers', '?'):>7} {len(r.get('peaks', [])):>5} "
              f"{r.get('frames_per_s', 0):>9} "
              f"{r.get('sustained_fps') or 0:>9} "
              f"{r.get('written', 0):>8} {fb.get('rows_ok', '-'):>11}  {r.get('error', '')[:200]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

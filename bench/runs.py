"""Benchmark: switching between runs. The real ``ringstream run`` (CPU engine, 2 workers) on a simulated 512 x 512
detector at a fixed frame rate, cut into runs by ``[run] max_frames``; every switch closes one run's files and opens
the next's while frames keep coming.

Reported, from the run's final counts line, the index of runs (``<state>/runs.jsonl``) and the files:

- frames in (received by the ingest) and out (rows in the runs' files, summed), and the frames lost (in - out);
- the rate the source kept over the whole stream (frames / (last frame time - first frame time)) against the rate
  asked for, and the longest gap between two consecutive frame timestamps across a switch against the frame period
  (the source never stalls for a switch: the simulated source is pausable, so a stall would show here);
- per switch, the time from run k's last frame (its timestamp at the source) to run k+1's files opened by the writer
  (the index's "open" record) and to run k's files closed ("complete" record): median and worst.

The headline row uses the default settings (the demo-like parameter file's ``OmegaSumFrames`` 1: a summed cake per
frame; the zarr.zip written); the fast-path row (``OmegaSumFrames -1``, ``--no-zarr``) goes beside it.

Run: ``python bench/runs.py [--frames 2100] [--rate 500] [--switches 20] [--size 512]``; writes
``<out>/runs-<hostname>.json`` (``--out``, default ``bench/results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"finished: received (\d+), integrated (\d+), written (\d+), rejected (\d+), dropped (\d+) "
                    r"\([^)]*\), worker restarts \d+, writer restarts \d+, ingest restarts \d+, re-sent \d+, ([\d.]+) s, ([\d.]+) frames/s")


def params_text(size: int) -> str:
    c = size / 2 - 0.5
    return (f"NrPixelsY {size}\nNrPixelsZ {size}\nLsd 1000000\npx 200\nBC {c:.1f} {c + 0.3:.1f}\ntx 0.2\nty 0.1\n"
            f"RMin 8\nRMax {size // 2 - 4}\nRBinSize 1\nEtaBinSize 5\nWavelength 0.2\n")


def _iso(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def one(folder: Path, frames: int, rate: float, per_run: int, fast: bool, workers: int) -> dict:
    folder.mkdir(parents=True)
    (folder / "p.txt").write_text(params_text(SIZE) + ("OmegaSumFrames -1\n" if fast else ""))
    (folder / "c.toml").write_text(f'[run]\nmax_frames = {per_run}\noutput_h5 = "r_{{run:05d}}.h5"\n')
    cmd = [sys.executable, "-m", "ringstream.daemon.cli", "run", "--config", "c.toml", "--param-file", "p.txt",
           "--simulate", str(frames), "--rate", str(rate), "--workers", str(workers), "--engine", "cpu",
           "--log-level", "WARNING"] + (["--no-zarr"] if fast else [])
    # the map first, so the timed run does not build it
    subprocess.run([sys.executable, "-m", "ringstream.daemon.cli", "map", "--param-file", "p.txt"], cwd=folder,
                   check=True, capture_output=True)
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "rc": done.returncode}
    m = COUNTS.search(done.stderr)
    received = int(m.group(1)) if m else -1
    records = [json.loads(x) for x in (folder / ".ringstream" / "runs.jsonl").read_text().splitlines() if x.strip()]
    by_run: dict[int, dict] = {}
    for r in records:
        by_run.setdefault(r["run"], {})[r["status"]] = r
    stamps, rows = [], 0
    for n in sorted(by_run):
        with h5py.File(by_run[n]["complete"]["files"]["h5"], "r") as f:
            ts = f["/entry/data/timestamp"][()]
            rows += ts.shape[0]
            stamps.append(ts)
    to_open, to_close, gaps = [], [], []
    runs = sorted(by_run)
    for a, b in zip(runs, runs[1:], strict=False):
        last = _iso(by_run[a]["complete"]["last_frame_time"])
        to_open.append(_iso(by_run[b]["open"]["time"]) - last)
        to_close.append(_iso(by_run[a]["complete"]["time"]) - last)
    for s, t in zip(stamps, stamps[1:], strict=False):
        gaps.append(float(t[0] - s[-1]))
    every = np.concatenate(stamps)
    span = float(every[-1] - every[0]) if every.size > 1 else 0.0
    within = np.diff(every)
    return {
        "settings": "fast-path" if fast else "default", "frames": frames, "rate_asked": rate, "workers": workers,
        "runs": len(runs), "switches": len(runs) - 1, "received": received, "rows_in_files": rows,
        "lost": received - rows, "all_complete": all("complete" in by_run[n] for n in runs),
        "source_rate": round((every.size - 1) / span, 1) if span > 0 else None,
        "frames_per_s_run": float(m.group(7)) if m else None, "wall_s": round(wall, 2),
        "frame_period_s": round(1.0 / rate, 5),
        "gap_across_switch_s": {"median": round(statistics.median(gaps), 5), "max": round(max(gaps), 5)} if gaps
        else None,
        "gap_within_runs_s": {"median": round(float(np.median(within)), 5), "max": round(float(within.max()), 5)},
        "last_frame_to_next_open_s": {"median": round(statistics.median(to_open), 4), "max": round(max(to_open), 4)}
        if to_open else None,
        "last_frame_to_closed_s": {"median": round(statistics.median(to_close), 4), "max": round(max(to_close), 4)}
        if to_close else None,
    }


SIZE = 512


def main() -> int:
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2100)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--switches", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", default="default,fast-path")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    SIZE = args.size
    per_run = -(-args.frames // (args.switches + 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        for k, name in enumerate(args.settings.split(",")):
            r = one(Path(tmp) / f"{k}-{name}", args.frames, args.rate, per_run, name == "fast-path", args.workers)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\nruns of {per_run} frames of {SIZE} x {SIZE} int32 at {args.rate:g} frames/s asked, CPU engine, "
          f"{args.workers} workers")
    print(f"{'settings':<10} {'runs':>4} {'in':>6} {'out':>6} {'lost':>4} {'src fps':>8} {'gap@switch max':>15} "
          f"{'last->open med/max s':>21} {'last->closed med/max s':>23}")
    for r in rows:
        if "error" in r:
            print(f"{'?':<10} failed: {r['error'][-300:]}")
            continue
        print(f"{r['settings']:<10} {r['runs']:>4} {r['received']:>6} {r['rows_in_files']:>6} {r['lost']:>4} "
              f"{r['source_rate'] or 0:>8.1f} {r['gap_across_switch_s']['max'] if r['gap_across_switch_s'] else 0:>15.4f} "
              f"{r['last_frame_to_next_open_s']['median']:>10.4f}/{r['last_frame_to_next_open_s']['max']:<10.4f} "
              f"{r['last_frame_to_closed_s']['median']:>11.4f}/{r['last_frame_to_closed_s']['max']:<11.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    path = out / f"runs-{host}.json"
    path.write_text(json.dumps({
        "benchmark": "runs", "machine": {"hostname": host, "nproc": os.cpu_count(), "python": platform.python_version(),
                                         "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        "command": " ".join(sys.argv), "size": SIZE, "frames_per_run": per_run, "results": rows}, indent=1))
    print(f"wrote {path}")
    return 0 if all("error" not in r and r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

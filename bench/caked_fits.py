"""Benchmark: per-η ("caked") fits in the live daemon: ``[fit] per_eta`` with 3 peaks in each of the 72 η bins of
every PILATUS 2M frame (216 TCH fits a frame; ``configs/demo-pilatus2m.txt``, EtaBinSize 5, its simulated rings),
frames replayed from an .npy stack (the ingest only copies). Target on the H200: ≥ 2,000 frames/s, i.e. ≥ 430,000
fits/s in the stream (issue 22).

Each worker count runs with the default settings first (the headline rows: the demo file's OmegaSumFrames, the
zarr.zip written), then the fast-path settings (``OmegaSumFrames -1``, ``--no-zarr``; ``bench/workload.py``), each
without per-η fits (the baseline: the 3 per-frame fits only) and with them. The rows give frames/s (the daemon's final
line), the per-η fits made and not made (``/entry/fit/caked``) and fits/s.

    python bench/caked_fits.py [--frames 20000] [--workers 1,2] [--settings default,fast-path]
                               [--engine gpu|cpu] [--no-baseline] [--out DIR]

On a machine without a GPU, ``--engine cpu --frames 20 --workers 1`` checks that it runs end to end. Writes
``<out>/caked_fits-<machine>.json`` (the GPU's name, or "vm" on the CPU) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from fitting import COUNTS, machine, ring_radii  # noqa: E402
from workload import daemon_settings, frames_to_exceed, last_level_cache  # noqa: E402

PEAKS = 3


def replay_stack(param_file: Path, folder: Path) -> Path:
    """PILATUS 2M int32 frames of the simulated detector as ``folder/stack.npy``: at least 32, and at least twice the
    last-level cache, so that replaying them in a loop reads memory, not cache."""
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    sim = SimulatedSource(load_params(param_file), n_frames=32, seed=0, dtype="int32", precompute=False)
    count = frames_to_exceed(sim.mean.size * 4, last_level_cache(), minimum=32)
    path = folder / "stack.npy"
    np.save(path, np.stack([sim.make_frame(k) for k in range(count)]))
    return path


def run_case(folder: Path, stack: Path, frames: int, workers: int, engine: str, per_eta: bool, settings) -> dict:
    """One ``ringstream run`` of ``frames`` replayed frames, in a folder of its own (its files and run state); its
    row of the table."""
    folder = folder / f"case-{workers}-{int(per_eta)}-{settings.name}"
    folder.mkdir()
    src = (REPO / "configs" / "demo-pilatus2m.txt").read_text()
    pf = folder / "setup.txt"
    radii = ring_radii(REPO / "configs" / "demo-pilatus2m.txt", PEAKS)
    pf.write_text(src + "".join(f"PeakLocation {r:.3f}\n" for r in radii)
                  + ("" if settings.omega_sum_frames is None else f"OmegaSumFrames {settings.omega_sum_frames}\n"))
    out = folder / "caked.h5"
    exe = Path(sys.executable).with_name("ringstream")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ringstream.daemon.cli"]
    cmd += ["run", "--param-file", str(pf), "--replay", str(stack), "--frames", str(frames), "--workers",
            str(workers), "--engine", engine, "--output-h5", str(out), "--control", "auto",
            *(["--per-eta"] if per_eta else []), *([] if settings.zarr else ["--no-zarr"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=590)
    row = {"settings": settings.name, "workers": workers, "engine": engine, "per_eta": per_eta, "frames": frames,
           "peaks": [round(r, 3) for r in radii], "wall_s": round(time.perf_counter() - t0, 2)}
    m = COUNTS.search(proc.stderr)
    if proc.returncode != 0 or not m:
        return {**row, "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    fps = float(m.group(7))
    row.update(written=int(m.group(3)), run_s=float(m.group(6)), frames_per_s=fps)
    engine_line = re.search(r"per-eta fits: .* with (\w+)", proc.stderr)
    if engine_line:
        row["caked_engine"] = engine_line.group(1)
    if per_eta and out.exists():
        import h5py

        with h5py.File(out, "r") as f:
            caked = f["entry/fit/caked"]
            n_eta = int(caked.shape[1])
            ok = sum(int(np.isfinite(caked[a:a + 1024, ..., 1]).sum()) for a in range(0, caked.shape[0], 1024))
        row.update(n_eta=n_eta, fits_per_frame=n_eta * PEAKS, caked_fits_ok=ok,
                   caked_fits_nan=int(row["written"]) * n_eta * PEAKS - ok,
                   fits_per_s=round(fps * n_eta * PEAKS))
    shutil.rmtree(folder, ignore_errors=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--settings", default="default,fast-path")
    ap.add_argument("--engine", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--no-baseline", action="store_true", help="only the runs with per-η fits")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    dev = None
    if args.engine == "gpu":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        stack = replay_stack(REPO / "configs" / "demo-pilatus2m.txt", Path(d))
        for w in (int(x) for x in args.workers.split(",")):
            for s in daemon_settings(args.settings):
                for per_eta in ((True,) if args.no_baseline else (False, True)):
                    r = run_case(Path(d), stack, args.frames, w, args.engine, per_eta, s)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    name = re.sub(r"[^A-Za-z0-9]+", "-", dev).strip("-") if dev else "vm"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"caked_fits-{name}.json"
    path.write_text(json.dumps({"benchmark": "caked_fits", "machine": {"name": name, **machine(dev)},
                                "target": {"frames_per_s": 2000, "fits_per_s": 430000}, "results": rows},
                               indent=2) + "\n")
    print(f"\n{'settings':<10} {'workers':>7} {'per_eta':>7} {'frames/s':>9} {'fits/s':>9} {'fits ok':>9} "
          f"{'fits NaN':>8} {'engine':>6}")
    for r in rows:
        print(f"{r['settings']:<10} {r['workers']:>7} {str(r['per_eta']):>7} {r.get('frames_per_s', 0):>9} "
              f"{r.get('fits_per_s', '-'):>9} {r.get('caked_fits_ok', '-'):>9} {r.get('caked_fits_nan', '-'):>8} "
              f"{r.get('caked_engine', '-'):>6}  {r.get('error', '')[:300]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The daemon's host-side cost per frame, role by role: CPU milliseconds per frame of the supervisor, the ingest, the
workers and the writer, on small frames, where integration costs little and what each message costs shows.

The real ``ringstream run`` (simulated source, reference engine ``--engine cpu``, 2 workers) runs on a
``--size`` x ``--size`` detector (256 x 256 by default; RMin 10 .. RMax size/2 - 8, 1 px x 5 deg bins) twice per
setting: with ``--short`` frames and with ``--frames``. Every process of its tree is sampled from ``/proc`` every
0.1 s (``bench/cpu_sampler.py``), and each role's CPU seconds are its processes' last sampled CPU time. The CPU per
frame is the difference of the two runs over the difference of their frames, so that start-up and closing costs
that do not grow with the run (imports, the map, the files' layout) cancel; what grows with the frames (a message,
a row, an omega-sum group, naming a group at the close) stays. ``frames/s`` is the long run's own figure (ready
-> last frame written). Settings: ``default`` (the parameter file's ``OmegaSumFrames 1``, MIDAS's default: a sum
per frame; the zarr.zip written) and ``fast-path`` (``OmegaSumFrames -1``, ``--no-zarr``).

    python bench/daemon_roles.py [--size 256] [--frames 8000] [--short 1000] [--settings default,fast-path]
                                 [--repeat 2] [--machine vm] [--tag TAG]

Prints a table; writes ``bench/results/daemon_roles-<machine>[-<tag>].json``. Other load on the machine inflates
frames/s differences more than CPU per frame: compare the CPU per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpu_sampler import TICK, snapshot  # noqa: E402

FPS = re.compile(r"written (\d+), .* ([\d.]+) s, ([\d.]+) frames/s")
ROLES = ("supervisor", "ingest", "worker", "writer")


def params(size: int, osf: int) -> str:
    c = size // 2
    return (f"NrPixelsY {size}\nNrPixelsZ {size}\npx 172\nLsd 1000000\nBC {c} {c}\nWavelength 0.1729\nRMin 10\n"
            f"RMax {c - 8}\nRBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\nWrite2D 0\nOmegaSumFrames {osf}\n")


def role(name: str) -> str | None:
    if name.startswith("rs-worker"):
        return "worker"
    if name.startswith("rs-"):
        return name[3:]
    return "supervisor" if name.startswith("ringstream") else None


def run_daemon(folder: Path, param_file: Path, frames: int, zarr: bool) -> dict:
    """One ``ringstream run``; CPU seconds per role (last sample of each process) and the run's frames/s."""
    exe = Path(sys.executable).with_name("ringstream")
    out = folder / f"out-{frames}-{time.monotonic_ns()}.h5"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "ringstream.daemon.cli"]),
           "run", "--param-file", str(param_file), "--simulate", str(frames), "--workers", "2", "--engine", "cpu",
           "--output-h5", str(out), "--control", "auto", "--log-level", "WARNING", *([] if zarr else ["--no-zarr"])]
    err = folder / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL)
        last: dict[int, tuple[str, int]] = {}
        while proc.poll() is None:
            for pid, (name, ticks, _) in snapshot(proc.pid).items():
                last[pid] = (name, ticks)
            time.sleep(0.1)
    text = err.read_text()
    m = FPS.search(text)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"ringstream run exit {proc.returncode}: {text[-2000:]}")
    cpu = dict.fromkeys(ROLES, 0.0)
    for name, ticks in last.values():
        r = role(name)
        if r is not None:
            cpu[r] += ticks / TICK
    return {"frames": frames, "written": int(m.group(1)), "run_s": float(m.group(2)),
            "frames_per_s": float(m.group(3)), "cpu_s": {k: round(v, 3) for k, v in cpu.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8000)
    ap.add_argument("--short", type=int, default=1000)
    ap.add_argument("--settings", default="default,fast-path")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--tag", default="")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name in args.settings.split(","):
            osf, zarr = (1, True) if name == "default" else (-1, False)
            pf = folder / f"{name}.txt"
            pf.write_text(params(args.size, osf))
            run_daemon(folder, pf, 10, zarr)  # the map, built once and cached
            for _ in range(args.repeat):
                short = run_daemon(folder, pf, args.short, zarr)
                long = run_daemon(folder, pf, args.frames, zarr)
                n = long["written"] - short["written"]
                ms = {k: round(1e3 * (long["cpu_s"][k] - short["cpu_s"][k]) / n, 4) for k in ROLES}
                rows.append({"settings": name, "omega_sum_frames": osf, "zarr": zarr, "size": args.size,
                             "frames_per_s": long["frames_per_s"], "cpu_ms_per_frame": ms,
                             "cpu_ms_per_frame_total": round(sum(ms.values()), 4), "short": short, "long": long})
    print(f"{'settings':>10} {'frames/s':>9} " + " ".join(f"{r + ' ms':>14}" for r in ROLES) + f" {'total ms':>9}")
    for r in rows:
        print(f"{r['settings']:>10} {r['frames_per_s']:9.0f} "
              + " ".join(f"{r['cpu_ms_per_frame'][k]:14.3f}" for k in ROLES) + f" {r['cpu_ms_per_frame_total']:9.3f}")
    print("(worker: the two workers together; the CPU per frame is (long - short) / (frames difference))")
    result = {"benchmark": "daemon_roles",
              "what": "CPU ms per frame of each role of ringstream run (simulated source, --engine cpu, 2 workers) "
                      f"on {args.size}x{args.size} frames: (CPU of a {args.frames}-frame run - CPU of a "
                      f"{args.short}-frame run) / the frames difference; worker = both workers",
              "rows": rows,
              "machine": {"hostname": args.machine, "nproc": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "loadavg": os.getloadavg(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}}
    if args.note:
        result["note"] = args.note
    path = HERE / "results" / f"daemon_roles-{args.machine}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

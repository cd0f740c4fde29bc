"""``make demo``: the streaming daemon on a simulated PILATUS 2M, with progress and a summary.

Runs the real ``ringstream run`` as a subprocess on ``configs/demo-pilatus2m.txt`` (1475 x 1679 pixels, 172 um, 1 m,
a 1 deg tilt) with the simulated source, engine ``auto`` (the GPU when there is one), two workers, and writes
``out/demo/pilatus2m.h5`` (the daemon's log goes to ``out/demo/daemon.log``). While it runs it asks the daemon's
control socket once a second how many frames are written and how fast; at the end it prints where the files are and
how to look at them. Ctrl-C stops the daemon the usual way (first: drain, second: stop now).

    python -m ringstream.daemon.demo [--frames N] [--workers N] [--engine auto|cpu|gpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..transport.endpoints import free_tcp_endpoint
from .status import NoDaemon, query_status

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "configs" / "demo-pilatus2m.txt"
#: a few minutes of streaming on a small machine with the CPU engine, long enough to watch the status change;
#: much less on a GPU
DEFAULT_FRAMES = 10000


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("ringstream")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ringstream")
    return [found] if found else [sys.executable, "-m", "ringstream.daemon.cli"]


def _progress(text: str, tty: bool) -> None:
    if tty:
        sys.stdout.write("\r" + text.ljust(78))
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ringstream-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"frames to simulate ({DEFAULT_FRAMES})")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    ap.add_argument("--engine", default="auto", help="auto, cpu or gpu (auto)")
    ap.add_argument("--out", default=str(REPO / "out" / "demo"), help="output folder (out/demo)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h5 = out / "pilatus2m.h5"
    log_path = out / "daemon.log"
    for old in [log_path, *out.glob("pilatus2m*")]:  # the last demo's run (its files would push this one to _00002)
        old.unlink(missing_ok=True)
    shutil.rmtree(out / ".ringstream", ignore_errors=True)  # its run number and index of runs
    control = free_tcp_endpoint()
    cmd = _command() + ["run", "--param-file", str(PARAMS), "--simulate", str(args.frames),
                        "--workers", str(args.workers), "--engine", args.engine, "--output-h5", str(h5),
                        "--control", control]
    print(f"ringstream demo: {args.frames} simulated PILATUS 2M frames (1679 x 1475 int32), {args.workers} workers, "
          f"engine {args.engine}")
    print(f"  {' '.join(cmd)}")
    print(f"  daemon log: {log_path}   (in another shell: ringstream status --control {control})")
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        last_line = 0.0
        status: dict = {}
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                try:
                    status = query_status(control, timeout=1.0)
                except NoDaemon:
                    if not status and (time.monotonic() - last_line > 10 or tty):
                        _progress(f"  starting (building or loading the map, spawning) {time.monotonic() - t0:.0f} s",
                                  tty)
                        last_line = time.monotonic()
                    continue
                written = status.get("totals", {}).get("written", 0)
                text = (f"  {status.get('state', '?'):<9} written {written:>6}/{args.frames}  "
                        f"{status.get('frames_per_s', 0):6.1f} frames/s  {time.monotonic() - t0:5.0f} s")
                if tty or time.monotonic() - last_line >= 10:
                    _progress(text, tty)
                    last_line = time.monotonic()
        except KeyboardInterrupt:
            print("\n  interrupted: the daemon drains (Ctrl-C again stops it now)")
            try:
                proc.wait()
            except KeyboardInterrupt:
                proc.wait()
        code = proc.wait()
    if tty:
        sys.stdout.write("\n")
    wall = time.monotonic() - t0
    final = [line for line in log_path.read_text(errors="replace").splitlines()
             if line.startswith("ringstream: ") or " ERROR " in line]
    for line in final:
        print(f"  {line}")
    if code != 0:
        print(f"ringstream demo: the daemon exited with code {code}; see {log_path}")
        return code
    frames, rate = _summary(h5)
    files = sorted(p for p in out.iterdir() if p.is_file() and p != log_path)
    print(f"\n{frames} frames integrated and written in {wall:.0f} s wall time (start-up included); "
          f"the run itself: {rate}, {bytes_per_frame(files, frames)}")
    print("\nfiles:")
    for f in files:
        print(f"  {f}  ({f.stat().st_size / 1e6:.1f} MB)")
    print(f"""
look at them:
  h5ls -r {h5}
  silx view {h5}     # pip install silx: browse and plot the lineouts (NXazint1d)
  or in Python (lineouts I [frames, n_r] against radial_axis):

import h5py
with h5py.File("{h5}", "r") as f:
    I = f["/entry/data/I"]; print(I.shape, I.attrs["run_complete"], f["/entry/data/radial_axis"][:3], I[-1, :3])
""")
    return 0


def bytes_per_frame(files: list[Path], frames: int) -> str:
    """"<n> bytes written per frame (<file kind> <n>, ...)": the size of every output file of the run over its
    frames, in kB (1000 bytes), with each file's share."""
    if frames <= 0:
        return "no frame written"
    sizes = {f.name: f.stat().st_size for f in files}
    parts = ", ".join(f"{name} {size / frames / 1e3:.1f}" for name, size in sizes.items())
    return f"{sum(sizes.values()) / frames / 1e3:.1f} kB written per frame ({parts})"


def _summary(h5: Path) -> tuple[int, str]:
    try:
        import h5py

        with h5py.File(h5, "r") as f:
            n = int(f["/entry/data/I"].shape[0])
    except Exception as exc:  # the summary must not hide where the file is
        return 0, f"(cannot read {h5}: {exc})"
    line = ""
    log_path = h5.parent / "daemon.log"
    for text in log_path.read_text(errors="replace").splitlines():
        if text.startswith("ringstream: run "):
            line = text.split("), ", 1)[-1]  # "<s> s, <fps> frames/s"
    return n, line or "?"


if __name__ == "__main__":
    raise SystemExit(main())

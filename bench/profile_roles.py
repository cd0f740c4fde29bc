"""Where each role of a daemon spends its main thread: run a command (a benchmark that starts daemons) with
``RINGSTREAM_PROFILE_DIR`` set, so that every ingest, worker and writer runs its main thread under cProfile and
writes ``ROLE-PID.prof`` when it ends (``ringstream.transport.child.run_child``); then print, per profile, the
functions with the most time of their own and the most cumulative time.

    python bench/profile_roles.py [--top 25] [--keep DIR] -- python bench/gpu_engine.py --daemon 6000 ...

A diagnosis, not a measurement of speed: cProfile slows Python-bound code (often by a third or more), and threads
other than the main one (copy threads, heartbeats) are not seen. ``bench/cpu_sampler.py`` gives the unprofiled CPU
of each process and thread.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringstream.transport.child import PROFILE_ENV  # noqa: E402


def report(path: Path, top: int) -> str:
    """The top ``top`` functions of one profile by own time and by cumulative time, as text."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    out.write(f"===== {path.name}: {stats.total_tt:.2f} s profiled\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", default="", help="folder for the .prof files and the report (default: a temporary one)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given (put it after --)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rc = subprocess.call(cmd, env={**os.environ, PROFILE_ENV: str(folder)})
        profiles = sorted(folder.glob("*.prof"))
        text = "".join(report(p, args.top) for p in profiles) or f"no profile was written in {folder}\n"
        print(text)
        if args.keep:
            (folder / "report.txt").write_text(text)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

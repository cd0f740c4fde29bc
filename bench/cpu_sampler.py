"""Where a daemon's CPU time goes: run a command (a benchmark that starts daemons) and sample, every ``--interval``
seconds, the CPU time of each ringstream process and of each of its threads from ``/proc``.

The daemon's children name themselves (``prctl(PR_SET_NAME)``): ``rs-ingest``, ``rs-worker-0``..., ``rs-writer``;
the supervisor is the ``ringstream`` console script (or ``python``, as is the benchmark itself). Only the command's
own process tree is sampled. A process at ~100 % of one core on its busiest thread is the
one that bounds the stream. Per interval, each process's CPU % (user + system, 100 = one core) and its busiest
thread's; the summary is per process name over the intervals in which it ran: the mean and the 90th percentile, of
the process and of its busiest thread.

    python bench/cpu_sampler.py [--interval 0.5] [--out cpu.json] -- python bench/gpu_engine.py --daemon 20000 ...

Prints the summary table; ``--out`` writes every sample and the summary as JSON (Linux only).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

TICK = os.sysconf("SC_CLK_TCK")
NAMES = ("rs-", "ringstream", "python")


def _cpu_ticks(stat_path: str) -> int | None:
    """utime + stime of a /proc stat file, in clock ticks (None if it is gone)."""
    try:
        with open(stat_path) as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def descendants(root: int) -> set[int]:
    """The pids of ``root``'s process tree (itself included), from the parent pids in /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
                parent[int(entry)] = int(text[text.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, pp in parent.items() if pp in tree and pid not in tree}
        tree |= more
        grew = bool(more)
    return tree


def snapshot(root: int) -> dict[int, tuple[str, int, dict[int, int]]]:
    """{pid: (name, process ticks, {tid: ticks})} of every process of ``root``'s tree whose name is a ringstream
    one (or ``python``: a benchmark's own process)."""
    out = {}
    for pid in descendants(root):
        entry = str(pid)
        try:
            with open(f"/proc/{entry}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if not name.startswith(NAMES):
            continue
        total = _cpu_ticks(f"/proc/{entry}/stat")
        if total is None:
            continue
        threads = {}
        try:
            for tid in os.listdir(f"/proc/{entry}/task"):
                t = _cpu_ticks(f"/proc/{entry}/task/{tid}/stat")
                if t is not None:
                    threads[int(tid)] = t
        except OSError:
            pass
        out[int(entry)] = (name, total, threads)
    return out


def sample(prev: dict, t_prev: float, now: dict, t_now: float) -> dict:
    """One interval's row: per process of ``now`` also in ``prev``, its CPU % and its busiest thread's."""
    dt = t_now - t_prev
    row = {"t": round(time.time(), 3), "procs": {}}
    for pid, (name, total, threads) in now.items():
        if pid not in prev:
            continue
        _, total0, threads0 = prev[pid]
        busiest = max((threads[t] - threads0.get(t, threads[t]) for t in threads), default=0)
        row["procs"][f"{name}:{pid}"] = {"name": name, "cpu_pct": round(100.0 * (total - total0) / TICK / dt, 1),
                                          "busiest_thread_pct": round(100.0 * busiest / TICK / dt, 1),
                                          "threads": len(threads)}
    return row


def summarize(samples: list[dict]) -> dict[str, dict]:
    """Per process name, over the intervals in which it worked (> 5 % CPU): the mean and 90th percentile of its CPU
    % and of its busiest thread's."""
    summary: dict[str, dict] = {}
    by_name: dict[str, list] = {}
    for row in samples:
        for v in row["procs"].values():
            by_name.setdefault(v["name"], []).append((v["cpu_pct"], v["busiest_thread_pct"]))
    for name, vals in sorted(by_name.items()):
        a = np.asarray(vals, dtype=np.float64)
        busy = a[a[:, 0] > 5.0] if (a[:, 0] > 5.0).any() else a  # the intervals in which it worked
        summary[name] = {"samples": int(len(busy)), "cpu_pct_mean": round(float(busy[:, 0].mean()), 1),
                         "cpu_pct_p90": round(float(np.percentile(busy[:, 0], 90)), 1),
                         "busiest_thread_pct_mean": round(float(busy[:, 1].mean()), 1),
                         "busiest_thread_pct_p90": round(float(np.percentile(busy[:, 1], 90)), 1)}
    return summary


class Sampler:
    """Samples ``root``'s process tree every ``interval`` s from a thread, between ``start()`` and ``stop()`` (which
    returns :func:`summarize` of the samples); a benchmark samples the daemons it starts with ``root =
    os.getpid()``."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        import threading

        self.root, self.interval = root, interval
        self.samples: list[dict] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _loop(self) -> None:
        prev, t_prev = snapshot(self.root), time.monotonic()
        while not self._done.wait(self.interval):
            now, t_now = snapshot(self.root), time.monotonic()
            row = sample(prev, t_prev, now, t_now)
            if row["procs"]:
                self.samples.append(row)
            prev, t_prev = now, t_now

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict]:
        self._done.set()
        self._thread.join()
        return summarize(self.samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--out", default="")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command to run after --")
    proc = subprocess.Popen(cmd)
    samples = []
    prev, t_prev = snapshot(proc.pid), time.monotonic()
    while proc.poll() is None:
        time.sleep(args.interval)
        now, t_now = snapshot(proc.pid), time.monotonic()
        row = sample(prev, t_prev, now, t_now)
        if row["procs"]:
            samples.append(row)
        prev, t_prev = now, t_now
    summary = summarize(samples)
    print(f"{'process':<16} {'samples':>7} {'cpu % mean':>10} {'p90':>7} {'busiest thread % mean':>22} {'p90':>7}")
    for name, s in summary.items():
        print(f"{name:<16} {s['samples']:>7} {s['cpu_pct_mean']:>10} {s['cpu_pct_p90']:>7} "
              f"{s['busiest_thread_pct_mean']:>22} {s['busiest_thread_pct_p90']:>7}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmark": "cpu_sampler", "machine": socket.gethostname(), "command": cmd,
                       "interval_s": args.interval, "summary": summary, "samples": samples}, f, indent=1)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: a soak of the real daemon with processes killed on a schedule. ``ringstream run`` (CPU engine, 2
workers, simulated 512 x 512 int32 detector at a fixed ``--rate``, runs rotated by ``[run] max_frames``) runs for
``--seconds`` (30 minutes by default) in its own session; a random worker is killed with SIGKILL every
``--kill-worker-every`` s and the writer every ``--kill-writer-every`` s; at the end it is stopped with SIGTERM to the
supervisor (a drain).

Sampled every ``--sample-every`` s, per role (ingest, worker-0, worker-1, writer, supervisor): the resident memory
(``VmRSS`` of ``/proc/PID/status``) and the open descriptors (entries of ``/proc/PID/fd``), with the pid each sample
is from: a replacement process continues its role's series. The pids come from the daemon's status (the control
request ``ringstream status --json --control ...`` makes).

Checked, each a PASS/FAIL line (any FAIL: exit 1):

- exit: the daemon exits 0 after the stop and leaves no process of its group (a daemon that ends early fails, with
  its own error line);
- frames: frames in (``received`` of the final counts line) = frames out (rows over every run's HDF5 in the index of
  runs, plus the frames rejected), none dropped; each file's ``frame_index`` is 0..n-1 (rejected indices aside) and
  the source ids over all runs are each frame once, in order;
- runs: every run in the index of runs is ``complete``;
- rss: per role, the median private resident memory (``VmRSS`` less ``RssShmem``) over a window at the end grows
  less than 10 % over the median over a window right after the warm-up (the first 20 %, or ``--warmup``); a
  replacement's first ``--settle`` s are left out of both. The shared-memory ring is left out because its pages
  count in the RSS of every process that has touched them, and a process touches more of them whenever more frames
  are in flight at once (a backlog behind a loaded CPU or a killed worker): that share grows in steps up to the
  ring's size (``ring_slots`` x the frame size, shared by the ingest and every worker), which is not a leak. Both
  are in the table and the JSON;
- fds: per role, the lowest descriptor count over the window at the end is no higher than over the window right
  after the warm-up (a descriptor open for a moment is no growth; a leak raises the lowest count);
- restarts: every killed process was replaced (a new pid in its role).

Each run's files are checked once the index says the run ended, then deleted (``--keep-files`` keeps them), so a
30-minute soak with the default settings (a summed cake per frame, the zarr.zip written) needs little disk.

Run: ``python bench/soak.py [--seconds 1800] [--rate 100] [--kill-worker-every 60] [--kill-writer-every 300]
[--sample-every 10] [--warmup S] [--settings default|fast-path] [--dir DIR] [--tag -TAG]``; writes
``<out>/soak-<hostname><tag>.json`` (``--out``, default ``bench/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from daemon_cpu import _script, machine_info  # noqa: E402
from runs import COUNTS, params_text  # noqa: E402
from workload import DEFAULT, FAST_PATH  # noqa: E402

from ringstream.daemon.status import NoDaemon, is_healthy, query_status  # noqa: E402
from ringstream.runs.index import RunIndex  # noqa: E402
from ringstream.transport.endpoints import free_tcp_endpoint  # noqa: E402

SETTINGS = {s.name: s for s in (DEFAULT, FAST_PATH)}
#: largest RSS growth from after the warm-up to the end, per role
RSS_GROWTH_LIMIT = 0.10
ENDED = ("complete", "failed", "interrupted")


# ------------------------------------------------------------------------------------------------ /proc samples


def memory_kb(pid: int) -> tuple[int, int] | None:
    """Resident memory of ``pid`` in KiB: (``VmRSS``, its shared-memory part ``RssShmem``); None when it is gone or
    a zombie."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssShmem"):
                    found[key] = int(line.split()[1])
    except OSError:
        return None
    return (found["VmRSS"], found.get("RssShmem", 0)) if "VmRSS" in found else None


def open_fds(pid: int) -> int | None:
    """Number of open descriptors of ``pid``; None when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Series:
    """One role's samples over time: ``t`` s after ready, the pid sampled, its RSS (KiB) and descriptors."""

    t: list[float] = field(default_factory=list)
    pid: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    shmem_kb: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    first_seen: dict[int, float] = field(default_factory=dict)  # pid -> t of its first sample

    def add(self, t: float, pid: int) -> None:
        mem, fds = memory_kb(pid), open_fds(pid)
        if mem is None or fds is None:
            return
        self.first_seen.setdefault(pid, t)
        self.t.append(round(t, 2))
        self.pid.append(pid)
        self.rss_kb.append(mem[0])
        self.shmem_kb.append(mem[1])
        self.fds.append(fds)

    def settled(self, k: int, settle: float) -> bool:
        """Sample ``k`` is from the role's first process, or from a replacement at least ``settle`` s old."""
        first = self.pid[0]
        return self.pid[k] == first or self.t[k] - self.first_seen[self.pid[k]] >= settle

    def window(self, lo: float, hi: float, settle: float) -> list[int]:
        """Indices of the settled samples with ``lo <= t <= hi``."""
        return [k for k, t in enumerate(self.t) if lo <= t <= hi and self.settled(k, settle)]

    def to_json(self) -> dict:
        return {"t": self.t, "pid": self.pid, "rss_kb": self.rss_kb, "shmem_kb": self.shmem_kb, "fds": self.fds}


def summarize(s: Series, warmup: float, end: float, width: float, settle: float) -> dict:
    """RSS and descriptors right after the warm-up (``[warmup, warmup + width]``) and at the end (``[end - width,
    end]``) over the settled samples of each window (the nearest settled sample when a window has none): the median
    RSS, and the lowest descriptor count (a descriptor open for a moment, the index of runs being read, a run's
    files opened before the last run's are closed, is no growth; a leak raises the lowest count)."""
    settled = [k for k in range(len(s.t)) if s.settled(k, settle)]
    base = s.window(warmup, warmup + width, settle) or [k for k in settled if s.t[k] >= warmup][:1]
    last = s.window(end - width, end, settle) or settled[-1:]
    out = {"pids": list(s.first_seen), "samples": len(s.t), "restarts_seen": max(0, len(s.first_seen) - 1)}
    if not base or not last or s.t[last[-1]] < warmup:
        return {**out, "problem": "no sample after the warm-up"}
    rss0 = statistics.median(s.rss_kb[k] for k in base)
    rss1 = statistics.median(s.rss_kb[k] for k in last)
    own0 = statistics.median(s.rss_kb[k] - s.shmem_kb[k] for k in base)
    own1 = statistics.median(s.rss_kb[k] - s.shmem_kb[k] for k in last)
    return {**out, "rss_after_warmup_kb": rss0, "rss_end_kb": rss1, "private_after_warmup_kb": own0,
            "private_end_kb": own1, "rss_growth": (own1 - own0) / own0, "vmrss_growth": (rss1 - rss0) / rss0,
            "fds_after_warmup": min(s.fds[k] for k in base), "fds_end": min(s.fds[k] for k in last),
            "fds_max": max(s.fds), "windows_s": [[s.t[base[0]], s.t[base[-1]]], [s.t[last[0]], s.t[last[-1]]]]}


# ------------------------------------------------------------------------------------------------ runs' files


@dataclass
class RunCheck:
    """What one run's HDF5 holds against its record in the index of runs."""

    run: int
    status: str
    frames: int  # the index's count: rows + rejected (+ dropped of a failed run)
    rejected: int
    rows: int = 0
    indices_ok: bool = False
    problem: str = ""
    source_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_json(self) -> dict:
        return {"run": self.run, "status": self.status, "frames": self.frames, "rows": self.rows,
                "rejected": self.rejected, "indices_ok": self.indices_ok, "problem": self.problem}


def check_run(record: dict) -> RunCheck:
    """Read the run's HDF5: its frame indices increase from 0 and stay below the run's frame count, and rows plus
    rejected frames make that count (with none rejected: exactly 0..n-1)."""
    c = RunCheck(run=int(record["run"]), status=str(record.get("status")), frames=int(record.get("frames", 0)),
                 rejected=int(record.get("rejected", 0)))
    path = (record.get("files") or {}).get("h5", "")
    try:
        with h5py.File(path, "r") as f:
            fi = f["/entry/data/frame_index"][()].astype(np.int64)
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["/entry/data/source_id"][()]]
    except (OSError, KeyError) as exc:
        c.problem = f"{path}: unreadable ({exc})"
        return c
    c.rows = int(fi.size)
    c.source_numbers = np.array([int(s.rsplit(":", 1)[1]) for s in ids], dtype=np.int64)
    n = c.frames if c.status in ENDED else c.rows + c.rejected
    increasing = bool(np.all(np.diff(fi) > 0))
    c.indices_ok = bool(increasing and (fi.size == 0 or (fi[0] >= 0 and fi[-1] < n)) and c.rows + c.rejected == n)
    if not c.indices_ok:
        span = f"{fi[0]}..{fi[-1]}" if fi.size else "none"
        c.problem = (f"{Path(path).name}: frame_index {span} ({'increasing' if increasing else 'NOT increasing'}) "
                     f"in {c.rows} rows + {c.rejected} rejected; the run has {n} frames")
    return c


class RunFiles:
    """Checks each run once the index of runs says it ended, then deletes its files (unless ``keep``)."""

    def __init__(self, state_dir: Path, keep: bool) -> None:
        self.index = RunIndex.in_state_dir(state_dir)
        self.keep = keep
        self.checked: dict[int, RunCheck] = {}

    def poll(self, final: bool = False) -> None:
        """Check the runs that ended since the last call (``final``: every run left, open ones too)."""
        try:
            records = self.index.runs()
        except (OSError, ValueError):
            return  # read again at the next poll; at the end a missing index shows as no runs
        for r in records:
            if r["run"] in self.checked or not (final or r.get("status") in ENDED):
                continue
            c = check_run(r)
            self.checked[c.run] = c
            if not self.keep and c.status in ENDED and not c.problem:
                for path in (r.get("files") or {}).values():
                    Path(path).unlink(missing_ok=True)

    def runs(self) -> list[RunCheck]:
        return [self.checked[k] for k in sorted(self.checked)]


# ------------------------------------------------------------------------------------------------ the soak


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def restart_counters(status: dict, path: str = "") -> dict[str, float]:
    """Every number in the daemon's status whose key speaks of restarts, re-sent or duplicate frames, by its path."""
    out: dict[str, float] = {}
    for k, v in status.items():
        where = f"{path}.{k}" if path else str(k)
        if isinstance(v, dict):
            out.update(restart_counters(v, where))
        elif isinstance(v, (int, float)) and any(w in str(k) for w in ("restart", "resen", "re_sen", "duplicate")):
            out[where] = v
    return out


class Soak:
    """One daemon, its kill schedule and its samples."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.control = free_tcp_endpoint()
        self.rnd = random.Random(args.seed)
        self.series: dict[str, Series] = {}
        self.totals: dict[str, list] = {"t": [], "received": [], "written": []}
        self.kills: list[dict] = []
        self.pids: dict[str, int] = {}
        self.last_status: dict = {}
        self.files = RunFiles(folder / ".ringstream", args.keep_files)
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0
        self.log = open(folder / "daemon.log", "w")  # noqa: SIM115 (the caller closes it once read)

    def start(self, settings) -> None:
        a = self.args
        (self.folder / "p.txt").write_text(params_text(a.size) + settings.param_lines())
        (self.folder / "c.toml").write_text(f'[run]\nmax_frames = {self.frames_per_run}\n'
                                            f'output_h5 = "soak_{{run:05d}}.h5"\n')
        subprocess.run(_script() + ["map", "--param-file", "p.txt"], cwd=self.folder, check=True,
                       stdout=subprocess.DEVNULL, stderr=self.log)  # the map first, so the start does not build it
        cmd = _script() + ["run", "--config", "c.toml", "--param-file", "p.txt", "--simulate", "0", "--rate",
                           str(a.rate), "--workers", str(a.workers), "--engine", "cpu", "--control", self.control,
                           "--log-level", a.log_level, *settings.flags()]
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)

    @property
    def frames_per_run(self) -> int:
        return max(1, round(self.args.rate * self.args.run_seconds))

    def status(self) -> dict | None:
        try:
            st = query_status(self.control, timeout=2.0)
        except NoDaemon:
            return None
        self.last_status = st
        self.pids = {"supervisor": int(st["pid"])}
        self.pids.update({name: int(c["pid"]) for name, c in (st.get("children") or {}).items()
                          if c.get("pid") and c.get("alive")})
        return st

    def wait_ready(self) -> str | None:
        """None once every child runs; else why not."""
        deadline = time.monotonic() + self.args.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"the daemon exited ({self.proc.returncode}) during its start"
            st = self.status()
            if st is not None and is_healthy(st):
                self.t0 = time.monotonic()
                return None
            time.sleep(0.2)
        return f"the daemon was not ready within {self.args.ready_timeout:g} s"

    def sample(self, t: float) -> None:
        # the processes first (the pids of the last status), then the status: the status request's own connection,
        # which the supervisor closes a moment after it answers, is not counted among its descriptors
        for role, pid in self.pids.items():
            self.series.setdefault(role, Series()).add(t, pid)
        st = self.status()  # when the daemon does not answer in time, the last pids known are sampled next time
        if st is not None:
            tot = st.get("totals") or {}
            for key, col in self.totals.items():
                col.append(round(t, 2) if key == "t" else int(tot.get(key, 0)))

    def kill(self, t: float, which: str) -> None:
        self.status()
        names = sorted(n for n in self.pids if n.startswith("worker-")) if which == "worker" else ["writer"]
        names = [n for n in names if n in self.pids]
        if not names:
            self.kills.append({"t": round(t, 2), "role": which, "pid": None, "note": "no live process to kill"})
            return
        name = self.rnd.choice(names)
        pid = self.pids[name]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.kills.append({"t": round(t, 2), "role": name, "pid": pid})
        print(f"  {t:7.1f} s  killed {name} (pid {pid})", flush=True)

    def loop(self) -> float | None:
        """Sample and kill until ``--seconds``; the time the daemon ended by itself, else None."""
        a = self.args
        every = {"worker": a.kill_worker_every, "writer": a.kill_writer_every}
        due = {k: (v if v > 0 else float("inf")) for k, v in every.items()}
        next_sample = 0.0
        next_files = 0.0
        while True:
            t = time.monotonic() - self.t0
            if self.proc.poll() is not None:
                return t
            if t >= a.seconds:
                self.sample(t)  # the end sample, just before the stop
                return None
            if t >= next_sample:
                self.sample(t)
                next_sample += a.sample_every
            for which in ("worker", "writer"):
                if t >= due[which]:
                    self.kill(t, which)
                    due[which] += every[which]
            if t >= next_files:
                self.files.poll()
                next_files = t + 5.0
            wake = min(next_sample, *due.values(), a.seconds)
            time.sleep(max(0.01, min(0.5, wake - (time.monotonic() - self.t0))))

    def stop(self) -> str:
        """SIGTERM to the supervisor and wait; '' when it exited and left no process, else what went wrong."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.args.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(10)
                return f"the daemon did not stop within {self.args.stop_timeout:g} s of SIGTERM (killed)"
        deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            return "processes of the daemon were left running after it exited (killed)"
        return ""

    def kill_all(self) -> None:
        if self.proc is not None and group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stderr(self) -> str:
        self.log.flush()
        return (self.folder / "daemon.log").read_text(errors="replace")


# ------------------------------------------------------------------------------------------------ checks


def daemon_failure(stderr: str) -> str:
    """The daemon's own error lines (the supervisor names the child that failed), joined."""
    lines = [ln.split(": ", 1)[-1] for ln in stderr.splitlines() if " ERROR " in ln or "ringstream: error" in ln]
    return "; ".join(lines[-3:])


def check_exit(rc: int | None, ended_at: float | None, stop_problem: str, seconds: float, stderr: str) -> tuple:
    if ended_at is not None:
        why = daemon_failure(stderr) or "no error line"
        return False, f"the daemon ended by itself at {ended_at:.1f} s of {seconds:g} with exit {rc}: {why}"
    if stop_problem:
        why = daemon_failure(stderr)
        return False, stop_problem + (f": {why}" if why else "")
    if rc != 0:
        return False, f"exit {rc} after SIGTERM: {daemon_failure(stderr) or 'no error line'}"
    return True, f"exit 0 after SIGTERM at {seconds:g} s; no process of the daemon left"


def check_frames(received: int | None, dropped: int, rejected: int, runs: list[RunCheck]) -> tuple:
    if received is None:
        return False, "no frames received known (no final counts line, no status)"
    rows = sum(r.rows for r in runs)
    out = rows + sum(r.rejected for r in runs)
    problems = [r.problem for r in runs if r.problem][:3]
    numbers = np.concatenate([r.source_numbers for r in runs]) if runs else np.zeros(0, np.int64)
    ordered = bool(np.all(np.diff(numbers) > 0))  # no frame twice, none out of order, across runs
    ids = "source ids in order, none twice" if ordered else "source ids NOT in order or some twice"
    if ordered and rejected == 0 and dropped == 0:  # then every frame received has a row
        missing = np.setdiff1d(np.arange(received), numbers)
        extra = numbers.size - (received - missing.size)
        ordered = missing.size == 0 and extra == 0
        if missing.size:
            ids += f", {missing.size} missing (first {int(missing[0])})"
        if extra:
            ids += f", {extra} beyond the frames received"
    ok = received == out and dropped == 0 and ordered and not problems
    detail = (f"in {received} (received) {'=' if received == out else '!='} out {out} (rows {rows} in {len(runs)} "
              f"runs + {out - rows} rejected); dropped {dropped}; {ids}")
    return ok, detail + ("; " + "; ".join(problems) if problems else "")


def check_runs(runs: list[RunCheck]) -> tuple:
    bad = [f"run {r.run} {r.status}" for r in runs if r.status != "complete"]
    if not runs:
        return False, "no run in the index of runs"
    return not bad, f"{len(runs)} runs, " + (f"not complete: {', '.join(bad[:5])}" if bad else "all complete")


def check_rss(summary: dict[str, dict]) -> tuple:
    worst, bad = None, []
    for role, s in summary.items():
        if "problem" in s:
            bad.append(f"{role}: {s['problem']}")
            continue
        if worst is None or s["rss_growth"] > summary[worst]["rss_growth"]:
            worst = role
        if s["rss_growth"] >= RSS_GROWTH_LIMIT:
            bad.append(f"{role} {100 * s['rss_growth']:+.1f} %")
    head = f"every role's private RSS < {100 * RSS_GROWTH_LIMIT:.0f} % growth after the warm-up"
    most = f"largest {worst} {100 * summary[worst]['rss_growth']:+.1f} %" if worst else "no role measured"
    return not bad and worst is not None, f"{head}: {'; '.join(bad) if bad else most}"


def check_fds(summary: dict[str, dict]) -> tuple:
    bad = [f"{role} {s['fds_after_warmup']:g} -> {s['fds_end']:g}" for role, s in summary.items()
           if "problem" not in s and s["fds_end"] > s["fds_after_warmup"]]
    measured = [r for r, s in summary.items() if "problem" not in s]
    if not measured:
        return False, "no role measured"
    return not bad, "descriptors grew: " + "; ".join(bad) if bad else f"no growth ({len(measured)} roles)"


def check_restarts(kills: list[dict], series: dict[str, Series], counted: dict[str, float]) -> tuple:
    made = [k for k in kills if k["pid"] is not None]
    said = f" (the daemon's counters: {', '.join(f'{k} {v:g}' for k, v in counted.items())})" if counted else ""
    if not made:
        return True, "no process killed" + said
    missing = []
    for k in made:
        s = series.get(k["role"])
        if s is None or not any(pid != k["pid"] and t > k["t"] for pid, t in s.first_seen.items()):
            missing.append(f"{k['role']} (pid {k['pid']}) at {k['t']:.0f} s")
    return not missing, (f"{len(made)} killed, each replaced by a new pid" if not missing else
                         f"{len(missing)} of {len(made)} killed not replaced: {', '.join(missing[:4])}") + said


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1800.0, help="soak length after the daemon is ready (1800)")
    ap.add_argument("--rate", type=float, default=100.0, help="simulated frames/s (100)")
    ap.add_argument("--kill-worker-every", type=float, default=60.0, help="SIGKILL a random worker every S s (60; "
                    "0 = never)")
    ap.add_argument("--kill-writer-every", type=float, default=300.0, help="SIGKILL the writer every S s (300; "
                    "0 = never)")
    ap.add_argument("--sample-every", type=float, default=10.0, help="RSS and descriptor sample period, s (10)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up, s (default: the first 20 %% of --seconds)")
    ap.add_argument("--settle", type=float, default=10.0, help="a replacement process's samples count after S s (10)")
    ap.add_argument("--run-seconds", type=float, default=5.0, help="frames per run = rate x S ([run] max_frames; 5)")
    ap.add_argument("--size", type=int, default=512, help="detector side, pixels (512)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", choices=sorted(SETTINGS), default="default",
                    help="daemon settings (default; see bench/workload.py)")
    ap.add_argument("--seed", type=int, default=15, help="seed of the choice of worker to kill")
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--stop-timeout", type=float, default=120.0, help="wait for the drain after SIGTERM, s (120)")
    ap.add_argument("--log-level", default="WARNING", help="the daemon's log level (its log: DIR/daemon.log)")
    ap.add_argument("--dir", default="", help="work folder (kept; default a temporary one)")
    ap.add_argument("--keep-files", action="store_true", help="keep each run's files after checking them")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. -nokill)")
    args = ap.parse_args()
    warmup = 0.2 * args.seconds if args.warmup is None else args.warmup
    width = max(3 * args.sample_every, 0.1 * args.seconds)  # the windows the medians are taken over
    settings = SETTINGS[args.settings]
    # a SIGTERM to this script ends it through the finally below, which kills the daemon's process group
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with tempfile.TemporaryDirectory(prefix="ringstream-soak-") as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        soak = Soak(args, folder)
        print(f"soak: {args.seconds:g} s, {args.size} x {args.size} int32 at {args.rate:g} frames/s, runs of "
              f"{soak.frames_per_run} frames, {args.workers} workers (CPU), {settings.name} settings; kill a worker "
              f"every {args.kill_worker_every:g} s, the writer every {args.kill_writer_every:g} s (0 = never); "
              f"work folder {folder}", flush=True)
        ended_at, stop_problem = None, ""
        try:
            soak.start(settings)
            not_ready = soak.wait_ready()
            if not_ready:
                stop_problem = not_ready
            else:
                ended_at = soak.loop()
                before_stop = soak.last_status
                stop_problem = soak.stop()
                soak.last_status = before_stop
        finally:
            soak.kill_all()
        rc = soak.proc.returncode if soak.proc is not None else None
        stderr = soak.stderr()
        soak.log.close()
        soak.files.poll(final=True)
        runs = soak.files.runs()

    end = ended_at if ended_at is not None else args.seconds
    summary = {role: summarize(s, warmup, end, width, args.settle) for role, s in sorted(soak.series.items())}
    m = COUNTS.search(stderr)
    tot = soak.last_status.get("totals") or {}
    received = int(m.group(1)) if m else (int(tot["received"]) if "received" in tot else None)
    rejected = int(m.group(4)) if m else int(tot.get("rejected", 0))
    dropped = int(m.group(5)) if m else int(tot.get("dropped", 0))
    checks = {
        "exit": check_exit(rc, ended_at, stop_problem, args.seconds, stderr),
        "frames": check_frames(received, dropped, rejected, runs),
        "runs": check_runs(runs),
        "rss": check_rss(summary),
        "fds": check_fds(summary),
        "restarts": check_restarts(soak.kills, soak.series, restart_counters(soak.last_status)),
    }
    if ended_at is not None:  # the windows are cut short: say over what they were read
        for name in ("rss", "fds"):
            ok, detail = checks[name]
            checks[name] = ok, f"{detail} (until the daemon ended, at {ended_at:.0f} s)"

    kills_of = {role: sum(1 for k in soak.kills if k["role"] == role) for role in summary}
    print(f"\n{'':<11} {'RSS MB (VmRSS)':>15} {'private MB (no ring)':>27}")
    print(f"{'role':<11} {'warm':>7} {'end':>7} {'warm':>7} {'end':>7} {'growth':>7} {'fds warm':>9} {'fds end':>7} "
          f"{'kills':>5} {'restarts':>8}")
    for role, s in summary.items():
        tail = f"{kills_of[role]:>5} {s['restarts_seen']:>8}"
        if "problem" in s:
            print(f"{role:<11} {s['problem']:<63} {tail}")
            continue
        print(f"{role:<11} {s['rss_after_warmup_kb'] / 1024:>7.1f} {s['rss_end_kb'] / 1024:>7.1f} "
              f"{s['private_after_warmup_kb'] / 1024:>7.1f} {s['private_end_kb'] / 1024:>7.1f} "
              f"{100 * s['rss_growth']:>6.1f}% {s['fds_after_warmup']:>9g} {s['fds_end']:>7g} {tail}")
    rate_kept = received / end if received and end > 0 else 0.0
    print(f"frames received {received}, {rate_kept:.1f} frames/s over {end:.0f} s ({args.rate:g} asked)")
    for name, (ok, detail) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{socket.gethostname()}{args.tag}.json"
    path.write_text(json.dumps({
        "benchmark": "soak", "machine": machine_info(), "command": " ".join(sys.argv),
        "config": {"seconds": args.seconds, "rate": args.rate, "size": args.size, "workers": args.workers,
                   "settings": settings.name, "zarr": settings.zarr,
                   "frames_per_run": soak.frames_per_run, "kill_worker_every": args.kill_worker_every,
                   "kill_writer_every": args.kill_writer_every, "sample_every": args.sample_every,
                   "warmup_s": warmup, "window_s": width, "settle_s": args.settle, "seed": args.seed},
        "passed": all(ok for ok, _ in checks.values()),
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        "daemon": {"exit": rc, "ended_by_itself_at_s": ended_at, "final_line": m.group(0) if m else None,
                   "failure": daemon_failure(stderr), "restart_counters": restart_counters(soak.last_status),
                   "log_tail": stderr[-3000:]},
        "frames": {"received": received, "rejected": rejected, "dropped": dropped,
                   "rows": sum(r.rows for r in runs), "rate_kept": round(rate_kept, 2)},
        "kills": soak.kills, "runs": [r.to_json() for r in runs],
        "roles": {role: {**summary[role], "series": soak.series[role].to_json()} for role in summary},
        "totals": soak.totals,
    }, indent=1) + "\n")
    print(f"wrote {path}")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what a live viewer costs the daemon, and how often the page updates.

The real ``ringstream run`` on ``configs/demo-pilatus2m.txt`` (PILATUS 2M int32, simulated source, CPU engine,
``--workers 2``, default settings: the same run as the headline row of ``bench/daemon_cpu.py``), N frames, in three
ways, interleaved and repeated:

- ``none``: no viewer (the writer's view socket has no subscriber: it copies and sends nothing);
- ``viewer``: a ``ringstream view --control`` process attached (started and serving before the daemon starts, as a
  page left open is: it subscribes once the daemon answers, so the writer copies up to ``[view] rows`` lineouts and
  publishes ``[view] rate`` updates a second for the whole run);
- ``browser``: the same with a headless Chromium page open on it (Playwright, opened before the daemon starts),
  which reads the page's update counter (the ``status`` data source's ``tick``) every 50 ms: the page's updates per
  second while frames arrive.

frames/s is the daemon's own number from its final line (ready -> last frame written). On a 2-core box the viewer
process and the browser share the cores with the daemon, so ``browser`` measures their CPU as well; ``viewer`` is
the daemon's side of the cost. On a box shared with other work frames/s varies from run to run by much more than a
viewer could cost, so each row also has the CPU seconds the daemon's processes used per frame (the supervisor and
every child it reaped: ``RUSAGE_CHILDREN`` of this process around the daemon's run), which other work barely moves.

``--micro`` (always run first, a few seconds) times the writer's side alone, which other work on the box barely
moves: the microseconds per frame (the feed's calls alone, timed around them) :class:`~ringstream.writer.view_feed.ViewFeed` adds (``offer`` of each
frame's lineout and fit, ``tick`` once per frame as the writer's loop would, publishing at ``[view] rate``), with no
subscriber and with one that reads everything, for the demo's 990-bin lineouts and 3 fitted peaks at 1,000
frames/s (a frame every millisecond of simulated time).

Prints a table and writes ``<out>/view_overhead-<machine>.json``.

Run: ``python bench/view_overhead.py [--frames 1500] [--repeat 3] [--modes none,viewer,browser] [--machine vm]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from daemon_cpu import COUNTS, PARAMS, _script, machine_info  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TICK = ("() => { const d = window.Bokeh && Bokeh.documents[0]; const s = d && d.get_model_by_name('status');"
        " return s ? [s.data.tick[0], s.data.frames[0]] : null }")


def _viewer(control: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(_script() + ["view", "--control", control, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_page(port: int, deadline_s: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"ringstream view on port {port} did not answer within {deadline_s} s")


def _page_rate(samples: list[tuple[float, int, int]]) -> float:
    """Page updates a second over the samples (time, tick, frames) from the first with frames to the last whose
    frames changed (while frames arrived)."""
    moving = [s for s in samples if s[2] > 0]
    last = max((i for i in range(1, len(moving)) if moving[i][2] != moving[i - 1][2]), default=0)
    if last == 0:
        return 0.0
    (t0, k0, _), (t1, k1, _) = moving[0], moving[last]
    return (k1 - k0) / (t1 - t0)


def micro(frames: int = 20_000, n_r: int = 990, n_peaks: int = 3, fps: float = 1000.0) -> dict:
    """µs per frame of the writer's view feed, unwatched and watched (see the module's docstring)."""
    import numpy as np
    import zmq

    from ringstream.writer import view_feed
    from ringstream.writer.view_feed import ViewFeed

    ctx = zmq.Context()
    out = {}
    clock = [0.0]
    real = view_feed.time.monotonic
    view_feed.time.monotonic = lambda: clock[0]  # simulated time: a frame every 1/fps s
    try:
        for watched in (False, True):
            pub = ctx.socket(zmq.XPUB)
            pub.setsockopt(zmq.SNDHWM, 2)
            pub.bind(f"inproc://view-micro-{watched}")
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            if watched:
                sub.connect(f"inproc://view-micro-{watched}")
            feed = ViewFeed(pub, np.vstack([np.arange(n_r)] * 3).astype(np.float64), n_peaks, rate=10.0, rows=16)
            run = type("Run", (), {"run_id": "r", "number": 1, "name": "", "paths": None, "written": 0})()
            clock[0] = 0.0
            time.sleep(0.05)  # (the subscription on its way)
            feed.tick(run)
            lineout = np.random.default_rng(0).random(n_r, dtype=np.float32)
            fit = np.ones((n_peaks, 7))
            received, spent = 0, 0
            for k in range(frames):
                clock[0] = k / fps
                t0 = time.perf_counter_ns()
                feed.offer(k, lineout, fit)
                feed.tick(run)
                spent += time.perf_counter_ns() - t0
                while sub.poll(0):
                    sub.recv_multipart()
                    received += 1
            out["watched" if watched else "unwatched"] = {
                "us_per_frame": round(spent / 1e3 / frames, 3), "updates_published": feed.counters["view_updates"],
                "updates_received": received}
            sub.close(linger=0)
            pub.close(linger=0)
    finally:
        view_feed.time.monotonic = real
        ctx.destroy(linger=0)
    return {"frames": frames, "n_r": n_r, "n_peaks": n_peaks, "simulated_fps": fps, **out}


def trial(mode: str, frames: int, folder: Path, browser) -> dict:
    from ringstream.transport.endpoints import free_tcp_endpoint, free_tcp_port

    out = folder / f"view-{mode}.h5"
    for old in folder.glob("view-*"):
        old.unlink()
    control, port = free_tcp_endpoint(), free_tcp_port()
    viewer = page = None
    if mode != "none":
        viewer = _viewer(control, port)
        _wait_page(port)
    if mode == "browser":
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
    daemon = subprocess.Popen(_script() + ["run", "--param-file", str(PARAMS), "--simulate", str(frames),
                                           "--workers", "2", "--engine", "cpu", "--output-h5", str(out),
                                           "--control", control, "--log-level", "WARNING"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    samples: list[tuple[float, int, int]] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if page is not None:
            while daemon.poll() is None:
                got = page.evaluate(TICK)
                if got:
                    samples.append((time.monotonic(), int(got[0]), int(got[1])))
                time.sleep(0.05)
            page.close()
        _, err = daemon.communicate(timeout=3600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # (the daemon's processes only: the viewer lives on)
    finally:
        for p in (daemon, viewer):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
    m = COUNTS.search(err)
    if daemon.returncode != 0 or not m:
        raise SystemExit(f"daemon run ({mode}) failed (exit {daemon.returncode}):\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"mode": mode, "frames": int(m.group(3)), "run_s": float(m.group(6)), "frames_per_s": float(m.group(7)),
           "daemon_cpu_ms_per_frame": round(1000 * cpu / int(m.group(3)), 3)}
    if mode == "browser":
        row["page_updates_per_s"] = round(_page_rate(samples), 2)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="none,viewer,browser")
    ap.add_argument("--machine", default="vm", help="the name in the results file (default vm)")
    ap.add_argument("--micro", action="store_true", help="only the writer's side (no daemon runs)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    modes = args.modes.split(",")
    load = os.getloadavg()
    feed = micro()
    print(f"the writer's view feed, per frame: {feed['unwatched']['us_per_frame']:.2f} µs with no viewer, "
          f"{feed['watched']['us_per_frame']:.2f} µs with one ({feed['watched']['updates_received']} updates "
          f"received for {feed['frames']} frames)", flush=True)
    if args.micro:
        dest = Path(args.out) / f"view_overhead-micro-{args.machine}.json"
        dest.write_text(json.dumps({"machine": {**machine_info(), "name": args.machine}, "load_at_start": load,
                                    "feed": feed}, indent=2) + "\n")
        print(f"wrote {dest}")
        return 0
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ringstream-view-bench-") as tmp:
        pw = chromium = None
        if "browser" in modes:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            trial("none", min(args.frames, 200), Path(tmp), chromium)  # warm-up: the map cache, page cache
            for r in range(args.repeat):
                for mode in modes:
                    row = {**trial(mode, args.frames, Path(tmp), chromium), "repeat": r}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if chromium is not None:
                chromium.close()
                pw.stop()
    summary = {}
    base = statistics.median(r["frames_per_s"] for r in rows if r["mode"] == modes[0])
    base_cpu = statistics.median(r["daemon_cpu_ms_per_frame"] for r in rows if r["mode"] == modes[0])
    print(f"\n{'mode':<10}{'frames/s (median)':>20}{'min':>10}{'max':>10}{'vs ' + modes[0]:>12}"
          f"{'CPU ms/frame':>14}{'vs ' + modes[0]:>10}{'page upd/s':>12}")
    for mode in modes:
        fps = [r["frames_per_s"] for r in rows if r["mode"] == mode]
        upd = [r["page_updates_per_s"] for r in rows if r["mode"] == mode and "page_updates_per_s" in r]
        cpu = statistics.median(r["daemon_cpu_ms_per_frame"] for r in rows if r["mode"] == mode)
        summary[mode] = {"daemon_cpu_ms_per_frame_median": cpu, "cpu_vs_first": round(cpu / base_cpu - 1, 4),
                         "frames_per_s_median": statistics.median(fps), "frames_per_s_min": min(fps),
                         "frames_per_s_max": max(fps), "vs_first": round(statistics.median(fps) / base - 1, 4),
                         **({"page_updates_per_s_median": statistics.median(upd)} if upd else {})}
        s = summary[mode]
        print(f"{mode:<10}{s['frames_per_s_median']:>20.1f}{s['frames_per_s_min']:>10.1f}"
              f"{s['frames_per_s_max']:>10.1f}{s['vs_first']:>+12.1%}{cpu:>14.2f}{s['cpu_vs_first']:>+10.1%}"
              f"{s.get('page_updates_per_s_median', float('nan')):>12.1f}")
    dest = Path(args.out) / f"view_overhead-{args.machine}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"machine": {**machine_info(), "name": args.machine}, "feed": feed,
                                "params": str(PARAMS.name),
                                "frames": args.frames, "workers": 2, "engine": "cpu", "settings": "default",
                                "load_at_start": load, "load_at_end": os.getloadavg(), "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"\nwrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

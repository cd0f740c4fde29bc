"""Benchmark: end-to-end frames/s of the streaming daemon on PILATUS 2M int32 frames, CPU engine, and where the time
goes (ingest, transport, integration, writing).

1. End to end: the real ``ringstream run`` on ``configs/demo-pilatus2m.txt`` (1679 x 1475 int32, 990 R x 72 eta bins)
   with the simulated source, ``--workers 2 --engine cpu``, N frames (1,000 by default), through the shared-memory
   ring. The first (headline) row has the default settings (``OmegaSumFrames`` as the demo parameter file gives it,
   the zarr.zip written); the next the fast-path settings (``OmegaSumFrames -1``, ``--no-zarr``; see
   ``bench/workload.py``); then the default settings once more with ``--no-shm`` (pixels inline in the zmq message)
   for comparison. frames/s is the run's own number from the final counts line (ready -> last frame written;
   start-up excluded); start-up is reported apart.
2. Stages, timed one at a time in this process (the daemon's heartbeats carry counts, not times): ingest = copy a
   frame into a ring slot + encode its FrameHeader, over distinct frames and slots that each total at least twice
   the last-level cache (read from sysfs, printed); transport = FrameHeader -> worker, Credit ->
   ingest, Result (lineout) -> writer, FrameAck -> ingest over tcp loopback zmq (and, for comparison, the 9.9 MB inline frame);
   integration = ``ReferenceEngine.integrate`` of one frame; writing = ``Hdf5Writer.append`` + flush per frame.
   The share of each is its CPU seconds per frame over their sum.

Prints a table and writes ``<out>/daemon_cpu-<hostname>.json`` (``--out``, default ``bench/results``).

Run: ``python bench/daemon_cpu.py [--frames N] [--settings default,fast-path] [--no-inline]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from workload import (  # noqa: E402
    DEFAULT,
    DEMO_PARAMS,
    DaemonSettings,
    HeldSlots,
    daemon_settings,
    describe_llc,
    distinct_frames,
    frames_to_exceed,
    last_level_cache,
    working_set,
)

PARAMS = DEMO_PARAMS
COUNTS = re.compile(r"finished: received (\d+), integrated (\d+), written (\d+), rejected (\d+), dropped (\d+) "
                    r"\([^)]*\), worker restarts \d+, writer restarts \d+, ingest restarts \d+, re-sent \d+, ([\d.]+) s, ([\d.]+) frames/s")


def machine_info() -> dict:
    import numpy
    import scipy
    import zmq

    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pyzmq": zmq.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("ringstream")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ringstream")
    return [found] if found else [sys.executable, "-m", "ringstream.daemon.cli"]


def end_to_end(frames: int, workers: int, shm: bool, folder: Path, settings: DaemonSettings = DEFAULT) -> dict:
    """One daemon run with ``settings``; its counts line and wall time."""
    out = folder / f"bench-{settings.name}-{'shm' if shm else 'inline'}.h5"
    out.unlink(missing_ok=True)
    for stale in folder.glob("bench-*.zarr.zip"):
        stale.unlink()
    cmd = _script() + ["run", "--param-file", str(PARAMS), "--simulate", str(frames), "--workers", str(workers),
                       "--engine", "cpu", "--output-h5", str(out), "--control", "auto", "--log-level", "WARNING",
                       *settings.flags()]
    if not shm:
        cmd.append("--no-shm")
    cmd += settings.overrides()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    m = COUNTS.search(proc.stderr)
    row = {**settings.describe(PARAMS), "transport": "shm" if shm else "inline"}
    if proc.returncode != 0 or not m:  # reported in its row (a run of these settings that fails is a result too)
        print(f"daemon run ({settings.name}, {row['transport']}) failed (exit {proc.returncode}):\n"
              f"{proc.stderr[-3000:]}", file=sys.stderr)
        return {**row, "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}", "frames": 0, "run_s": 0.0,
                "frames_per_s": 0.0, "wall_s": round(wall, 2), "startup_and_exit_s": 0.0}
    written, run_s, fps = int(m.group(3)), float(m.group(6)), float(m.group(7))
    return {**row, "frames": written,
            "run_s": run_s, "frames_per_s": fps, "wall_s": round(wall, 2),
            "startup_and_exit_s": round(wall - run_s, 2)}


def _per_frame(fn, n: int) -> tuple[float, float]:
    """(wall s, CPU s) per call of ``fn(k)`` over ``n`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        fn(k)
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def stages(n: int, folder: Path, llc: dict) -> dict:
    import numpy as np
    import zmq

    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params
    from ringstream.protocol import Credit, FrameAck, FrameHeader, Result, encode, result_buffers
    from ringstream.transport.endpoints import free_tcp_endpoint
    from ringstream.transport.shm_ring import FrameRing
    from ringstream.transport.sockets import make_socket, recv_message, send_message
    from ringstream.writer.hdf5 import Hdf5Writer

    p = load_params(PARAMS)
    imap, _ = load_or_build(p)
    src = SimulatedSource(p, n_frames=0, dtype="int32")
    frames = src._frames  # the 8 realisations the source cycles through
    shape, dtype = frames[0].shape, frames[0].dtype
    nbytes = frames[0].nbytes
    out: dict[str, dict] = {}

    # ingest: ring copy + header, from distinct frames into slots held as workers hold them, each set at least
    # twice the last-level cache
    n_set = frames_to_exceed(nbytes, llc, minimum=8)
    sources = distinct_frames(n_set, shape, dtype, seed=5)
    ring = FrameRing.create(n_set, nbytes)
    try:
        held = HeldSlots(ring.release, n_set - 1)  # the writer's acknowledgements, oldest frame first

        def ingest(k):
            slot = ring.acquire()
            offset, nb = ring.write(slot, sources[k % n_set])
            encode(FrameHeader(run_id="b", frame_index=k, shape=shape, dtype=dtype.str, location="shm",
                               shm_name=ring.name, slot=slot, offset=offset, nbytes=nb))
            held.add(slot)
        for k in range(n_set):  # every slot written once (first touch of its pages) before timing
            ingest(k)
        w, c = _per_frame(ingest, max(n, 2 * n_set))
        out["ingest"] = {"wall_s": w, "cpu_s": c, "what": "copy into a ring slot + FrameHeader",
                         "working_set": working_set(n_set, nbytes, llc)}
    finally:
        sources = None  # the frame set's memory back before the next stage
        ring.close()
        ring.unlink()

    # integration
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    m = max(10, n // 5)
    lineouts = []

    def integrate(k):
        lineouts.append(engine.integrate(frames[k % 8])[0])
    w, c = _per_frame(integrate, m)
    out["integration"] = {"wall_s": w, "cpu_s": c, "what": "ReferenceEngine.integrate (one frame, CPU)"}

    # transport: header -> worker, credit -> ingest, result -> writer, acknowledgement -> ingest (tcp loopback)
    ctx = zmq.Context()
    try:
        socks = {}
        for name in ("frames", "credit", "ack", "results"):
            ep = free_tcp_endpoint()
            socks[name] = (make_socket(ctx, zmq.PUSH, ep, bind=True, hwm=64),
                           make_socket(ctx, zmq.PULL, ep, bind=False, hwm=64))
        time.sleep(0.3)
        lineout = np.asarray(lineouts[0], dtype=np.float32)
        header = FrameHeader(run_id="b", frame_index=0, shape=shape, dtype=dtype.str, location="shm",
                             shm_name="x", slot=0, offset=0, nbytes=nbytes)

        def transport(k):
            send_message(socks["frames"][0], header)
            recv_message(socks["frames"][1])
            send_message(socks["credit"][0], Credit(worker=0, pid=1, n=1))
            recv_message(socks["credit"][1])
            send_message(socks["results"][0], Result(run_id="b", frame_index=k, n_r=imap.n_r, n_eta=imap.n_eta,
                                                     timings={"integrate": 0.1}), result_buffers(lineout, None))
            recv_message(socks["results"][1])
            send_message(socks["ack"][0], FrameAck(frames=[k]))
            recv_message(socks["ack"][1])
        w, c = _per_frame(transport, n)
        out["transport"] = {"wall_s": w, "cpu_s": c,
                            "what": "FrameHeader + Credit + Result + FrameAck over tcp loopback (both ends)"}
        inline = FrameHeader(run_id="b", frame_index=0, shape=shape, dtype=dtype.str, location="inline",
                             nbytes=nbytes)

        def transport_inline(k):
            send_message(socks["frames"][0], inline, (frames[k % 8],), copy=False)
            recv_message(socks["frames"][1])
        w, c = _per_frame(transport_inline, max(10, n // 5))
        out["transport_inline_frame"] = {"wall_s": w, "cpu_s": c,
                                         "what": "for comparison: the 9.9 MB frame inline (no ring)"}
    finally:
        ctx.destroy(linger=0)

    # writing
    h5 = folder / "stage-writer.h5"
    h5.unlink(missing_ok=True)
    writer = Hdf5Writer(h5, imap, p, engine_name="cpu", write_2d=False, overwrite=True)
    stamp = time.time()

    def write(k):
        writer.append(k, f"simulated:{k}", stamp, lineouts[k % len(lineouts)])
        if (k + 1) % 64 == 0:
            writer.flush()
    try:
        w, c = _per_frame(write, n)
    finally:
        writer.close(run_complete=True)
    out["writing"] = {"wall_s": w, "cpu_s": c, "what": "Hdf5Writer.append + flush every 64 (lineouts, SWMR)"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1000, help="frames per daemon run (1000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", default="default,fast-path",
                    help="daemon settings, the first is the headline row (default,fast-path; see bench/workload.py)")
    ap.add_argument("--no-inline", action="store_true", help="skip the --no-shm daemon run")
    ap.add_argument("--stage-frames", type=int, default=200, help="calls per timed stage (200)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    llc = last_level_cache()
    print(describe_llc(llc))

    with tempfile.TemporaryDirectory(prefix="ringstream-bench-") as tmp:
        folder = Path(tmp)
        # the map is built once here (cached for the children); not part of the numbers
        subprocess.run(_script() + ["map", "--param-file", str(PARAMS)], check=True, capture_output=True)
        chosen = daemon_settings(args.settings)
        runs = [end_to_end(args.frames, args.workers, True, folder, s) for s in chosen]
        if not args.no_inline:
            runs.append(end_to_end(args.frames, args.workers, False, folder, chosen[0]))
        st = stages(args.stage_frames, folder, llc)

    core = ("ingest", "transport", "integration", "writing")
    total_cpu = sum(st[k]["cpu_s"] for k in core)
    for k in core:
        st[k]["share"] = st[k]["cpu_s"] / total_cpu
    bound = args.workers / st["integration"]["wall_s"]

    print(f"ringstream daemon, PILATUS 2M int32 (1679 x 1475), {args.workers} workers, CPU engine, "
          f"{os.cpu_count()} cores")
    print(f"{'settings':<12} {'OmegaSum':>8} {'zarr':>5} {'transport':<10} {'frames':>7} {'run s':>7} "
          f"{'frames/s':>9} {'start+exit s':>13}")
    for r in runs:
        print(f"{r['settings']:<12} {r['omega_sum_frames']:>8} {'on' if r['zarr'] else 'off':>5} "
              f"{r['transport']:<10} {r['frames']:>7} {r['run_s']:>7.1f} {r['frames_per_s']:>9.1f} "
              f"{r['startup_and_exit_s']:>13.1f}{'  FAILED: ' + r['error'][:60] if 'error' in r else ''}")
    print(f"\n{'stage':<24} {'ms/frame (wall)':>16} {'ms/frame (CPU)':>15} {'share':>7}")
    for k in (*core, "transport_inline_frame"):
        share = f"{100 * st[k]['share']:6.1f}%" if "share" in st[k] else "      -"
        print(f"{k:<24} {1e3 * st[k]['wall_s']:>16.2f} {1e3 * st[k]['cpu_s']:>15.2f} {share:>7}  {st[k]['what']}")
    print(f"ingest working set: {st['ingest']['working_set']['distinct_frames']} distinct frames and slots, "
          f"{st['ingest']['working_set']['times_llc']} x the last-level cache")
    print(f"\nintegration bound with {args.workers} workers on dedicated cores: {bound:.1f} frames/s; "
          f"measured {runs[0]['frames_per_s']:.1f} frames/s with the {runs[0]['settings']} settings "
          f"({os.cpu_count()} cores shared by the ingest, "
          f"{args.workers} workers, the writer and the supervisor)")

    result = {"benchmark": "daemon_cpu", "config": {"params": str(PARAMS.relative_to(REPO)), "frames": args.frames,
              "workers": args.workers, "engine": "cpu", "dtype": "int32", "shape": [1679, 1475],
              "settings": args.settings.split(",")},
              "machine": {**machine_info(), "last_level_cache": llc}, "runs": runs, "stages": st,
              "integration_bound_frames_per_s": bound}
    dest = Path(args.out) / f"daemon_cpu-{socket.gethostname()}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())

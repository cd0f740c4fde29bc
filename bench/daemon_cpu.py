"""Benchmark: end-to-end frames/s of the streaming daemon on PILATUS 2M int32 frames, CPU engine, and where the time
goes (ingest, transport, integration, writing).

1. End to end: the real ``ringstream run`` on ``configs/demo-pilatus2m.txt`` (1679 x 1475 int32, 990 R x 72 eta bins)
   with the simulated source, ``--workers 2 --engine cpu``, N frames (1,000 by default), through the shared-memory
   ring; and once more with ``--no-shm`` (pixels inline in the zmq message) for comparison. frames/s is the run's own
   number from the final counts line (ready -> last frame written; start-up excluded); start-up is reported apart.
2. Stages, timed one at a time in this process on the same frames (the daemon's heartbeats carry counts, not times):
   ingest = copy a frame into a ring slot + encode its FrameHeader; transport = FrameHeader -> worker, SlotRelease ->
   ingest, Result (lineout) -> writer over tcp loopback zmq (and, for comparison, the 9.9 MB inline frame);
   integration = ``ReferenceEngine.integrate`` of one frame; writing = ``Hdf5Writer.append`` + flush per frame.
   The share of each is its CPU seconds per frame over their sum.

Prints a table and writes ``bench/results/daemon_cpu-<hostname>.json``.

Run: ``python bench/daemon_cpu.py [--frames N] [--no-inline]``
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
PARAMS = REPO / "configs" / "demo-pilatus2m.txt"
COUNTS = re.compile(r"finished: received (\d+), integrated (\d+), written (\d+), rejected (\d+), dropped (\d+) "
                    r"\([^)]*\), ([\d.]+) s, ([\d.]+) frames/s")


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


def end_to_end(frames: int, workers: int, shm: bool, folder: Path) -> dict:
    """One daemon run; its counts line and wall time."""
    out = folder / f"bench-{'shm' if shm else 'inline'}.h5"
    out.unlink(missing_ok=True)
    cmd = _script() + ["run", "--param-file", str(PARAMS), "--simulate", str(frames), "--workers", str(workers),
                       "--engine", "cpu", "--output-h5", str(out), "--control", "auto", "--log-level", "WARNING"]
    if not shm:
        cmd.append("--no-shm")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    m = COUNTS.search(proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"daemon run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    written, run_s, fps = int(m.group(3)), float(m.group(6)), float(m.group(7))
    return {"transport": "shm" if shm else "inline", "frames": written, "run_s": run_s, "frames_per_s": fps,
            "wall_s": round(wall, 2), "startup_and_exit_s": round(wall - run_s, 2)}


def _per_frame(fn, n: int) -> tuple[float, float]:
    """(wall s, CPU s) per call of ``fn(k)`` over ``n`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        fn(k)
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def stages(n: int, folder: Path) -> dict:
    import numpy as np
    import zmq

    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params
    from ringstream.protocol import FrameHeader, Result, SlotRelease, encode, result_buffers
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

    # ingest: ring copy + header
    ring = FrameRing.create(8, nbytes)
    try:
        def ingest(k):
            slot = ring.acquire()
            offset, nb = ring.write(slot, frames[k % 8])
            encode(FrameHeader(run_id="b", frame_index=k, shape=shape, dtype=dtype.str, location="shm",
                               shm_name=ring.name, slot=slot, offset=offset, nbytes=nb))
            ring.release(slot)  # the worker's SlotRelease, in the daemon
        w, c = _per_frame(ingest, n)
        out["ingest"] = {"wall_s": w, "cpu_s": c, "what": "copy into a ring slot + FrameHeader"}
    finally:
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

    # transport: header -> worker, release -> ingest, result -> writer (tcp loopback)
    ctx = zmq.Context()
    try:
        socks = {}
        for name in ("frames", "release", "results"):
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
            send_message(socks["release"][0], SlotRelease(shm_name="x", slot=0, frame_index=k))
            recv_message(socks["release"][1])
            send_message(socks["results"][0], Result(run_id="b", frame_index=k, n_r=imap.n_r, n_eta=imap.n_eta,
                                                     timings={"integrate": 0.1}), result_buffers(lineout, None))
            recv_message(socks["results"][1])
        w, c = _per_frame(transport, n)
        out["transport"] = {"wall_s": w, "cpu_s": c,
                            "what": "FrameHeader + SlotRelease + Result over tcp loopback (both ends)"}
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
    ap.add_argument("--no-inline", action="store_true", help="skip the --no-shm daemon run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ringstream-bench-") as tmp:
        folder = Path(tmp)
        # the map is built once here (cached for the children); not part of the numbers
        subprocess.run(_script() + ["map", "--param-file", str(PARAMS)], check=True, capture_output=True)
        runs = [end_to_end(args.frames, args.workers, True, folder)]
        if not args.no_inline:
            runs.append(end_to_end(args.frames, args.workers, False, folder))
        st = stages(200, folder)

    core = ("ingest", "transport", "integration", "writing")
    total_cpu = sum(st[k]["cpu_s"] for k in core)
    for k in core:
        st[k]["share"] = st[k]["cpu_s"] / total_cpu
    bound = args.workers / st["integration"]["wall_s"]

    print(f"ringstream daemon, PILATUS 2M int32 (1679 x 1475), {args.workers} workers, CPU engine, "
          f"{os.cpu_count()} cores")
    print(f"{'run':<10} {'frames':>7} {'run s':>7} {'frames/s':>9} {'start+exit s':>13}")
    for r in runs:
        print(f"{r['transport']:<10} {r['frames']:>7} {r['run_s']:>7.1f} {r['frames_per_s']:>9.1f} "
              f"{r['startup_and_exit_s']:>13.1f}")
    print(f"\n{'stage':<24} {'ms/frame (wall)':>16} {'ms/frame (CPU)':>15} {'share':>7}")
    for k in (*core, "transport_inline_frame"):
        share = f"{100 * st[k]['share']:6.1f}%" if "share" in st[k] else "      -"
        print(f"{k:<24} {1e3 * st[k]['wall_s']:>16.2f} {1e3 * st[k]['cpu_s']:>15.2f} {share:>7}  {st[k]['what']}")
    print(f"\nintegration bound with {args.workers} workers on dedicated cores: {bound:.1f} frames/s; "
          f"measured {runs[0]['frames_per_s']:.1f} frames/s ({os.cpu_count()} cores shared by the ingest, "
          f"{args.workers} workers, the writer and the supervisor)")

    result = {"benchmark": "daemon_cpu", "config": {"params": str(PARAMS.relative_to(REPO)), "frames": args.frames,
              "workers": args.workers, "engine": "cpu", "dtype": "int32", "shape": [1679, 1475]},
              "machine": machine_info(), "runs": runs, "stages": st,
              "integration_bound_frames_per_s": bound}
    dest = REPO / "bench" / "results" / f"daemon_cpu-{socket.gethostname()}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ingest process alone: frames/s when every frame is released the moment it arrives.

Runs the real `ringstream.ingest.process.run` (shared-memory ring) in a spawned child, with this process standing
in for the workers (it counts headers and releases each slot as busy workers do, in order, once ``--hold`` newer
slots are out) and for the writer (it receives EndOfStream). This is the ceiling the ingest puts on the whole
daemon, whatever the engine; with `--profile` the child runs under cProfile and the top entries are printed, to say
where its time goes.

The copies must not run from and into the CPU caches: the source frames are distinct and, with the ring slots they
rotate over, each total at least twice the last-level cache (read from sysfs or ``lscpu``; printed and in the JSON).
``--source replay`` (the default) replays an .npy stack of that many distinct random int32 frames, looped;
``--source simulated`` is the simulated detector, whose 8 noise realisations may fit in a large cache (the row says
how many times the cache its frames are).

    python bench/ingest_only.py [--frames 3000] [--params configs/demo-pilatus2m.txt] [--copy-threads 1,4]
                                [--source replay|simulated] [--slots N] [--hold N] [--profile]

``--copy-threads`` runs once per value (``[transport] copy_threads``: 1 = copy on the ingest's own thread).
Writes bench/results/ingest_only-<hostname>.json (one row per copy-thread count).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ringstream.config import DaemonConfig  # noqa: E402
from ringstream.geometry.cache import load_or_build  # noqa: E402
from ringstream.ingest import process as ingest_process  # noqa: E402
from ringstream.protocol import EndOfStream, FrameHeader  # noqa: E402
from ringstream.transport import free_tcp_endpoint, recv_message  # noqa: E402
from ringstream.transport.child import environment, nontemporal_env  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from workload import (  # noqa: E402
    HeldSlots,
    PlayWorker,
    describe_llc,
    distinct_frames,
    frames_to_exceed,
    last_level_cache,
    working_set,
)


def _profiled_ingest(config, ready, stop, out_path):
    import cProfile
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(ingest_process.run, config, ready, stop)
    finally:
        with open(out_path, "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("tottime").print_stats(18)


def run_one(args, tmp: Path, threads: int, llc: dict) -> dict:
    """One ingest run with ``threads`` copy threads; its row of the table."""
    shape = tuple(DaemonConfig.from_dict({"run": {"param_file": args.params}}).load_params().shape)
    frame_bytes = int(np.prod(shape)) * 4
    if args.source == "replay":
        n_source = frames_to_exceed(frame_bytes, llc, minimum=16)
        stack_path = tmp / "replay-stack.npy"
        if not stack_path.exists():
            np.save(stack_path, distinct_frames(n_source, shape, np.int32, seed=3))
        source = {"kind": "replay", "replay_path": str(stack_path), "frames": args.frames, "loop": True}
    else:
        from ringstream.ingest.simulated import K

        n_source = K  # the realisations the simulated source cycles through
        source = {"kind": "simulated", "frames": args.frames, "dtype": "int32"}
    ep = {k: free_tcp_endpoint() for k in ("frames_endpoint", "results_endpoint", "release_endpoint",
                                           "events_endpoint")}
    # slots held by the stand-in workers: a set of at least twice the cache, with a few free for the ingest
    slots = args.slots or frames_to_exceed(frame_bytes, llc, minimum=28) + 4
    hold = args.hold if args.hold is not None else slots - 4
    config = DaemonConfig.from_dict({
        "run": {"param_file": args.params, "output_h5": str(tmp / "unused.h5")},
        "source": source,
        "workers": {"count": 1, "engine": "cpu"},
        "transport": dict(ep, ring_slots=slots, queue_depth=slots, copy_threads=threads),
        "logging": {"level": "WARNING"},
    })
    load_or_build(config.load_params())

    ctx = zmq.Context()
    player = PlayWorker(ctx, ep["frames_endpoint"], ep["release_endpoint"], slots)
    frames = player.frames
    results = ctx.socket(zmq.PULL)
    results.bind(ep["results_endpoint"])
    events = ctx.socket(zmq.PULL)
    events.bind(ep["events_endpoint"])

    spawn = mp.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    prof_path = tmp / f"profile-{threads}.txt"
    target, extra = (_profiled_ingest, (str(prof_path),)) if args.profile else (ingest_process.run, ())
    child = spawn.Process(target=target, args=(config, ready, stop, *extra), daemon=True)
    env = nontemporal_env() if not args.no_nontemporal else {}  # as the supervisor starts the ingest
    with environment(env):
        child.start()
    if not ready.wait(120):
        raise SystemExit("ingest did not become ready")

    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    held = HeldSlots(player.acknowledge, hold)
    n, t_first, eos, t_end = 0, None, None, None
    while eos is None or n < eos.n_frames:
        for sock, _ in poller.poll(5000):
            if sock is frames:
                msg, _ = recv_message(frames)
                assert isinstance(msg, FrameHeader)
                if t_first is None:
                    t_first = time.perf_counter()
                n += 1
                t_end = time.perf_counter()
                held.add(msg)
            else:
                msg, _ = recv_message(results)
                if isinstance(msg, EndOfStream):
                    eos = msg
    held.flush()
    child.join(60)
    fps = (n - 1) / (t_end - t_first) if n > 1 else 0.0
    row = {"source": args.source, "copy_threads": threads, "nontemporal": not args.no_nontemporal, "frames": n,
           "shape": list(shape), "dtype": "int32", "ring_slots": slots, "slots_held": hold,
           "source_set": working_set(n_source, frame_bytes, llc), "slot_set": working_set(hold + 1, frame_bytes, llc),
           "ingest_fps": round(fps, 1), "GB_s": round(fps * frame_bytes / 1e9, 2), "exit_code": child.exitcode}
    row["copy_only_fps"] = copy_only_fps(shape, llc)
    if args.profile and prof_path.exists():
        row["profile_top"] = prof_path.read_text()
    player.close()
    for sock in (results, events):
        sock.close(0)
    ctx.term()
    return row


def copy_only_fps(shape, llc: dict, copies: int = 50) -> float:
    """For comparison, the copy alone: ``np.copyto`` from distinct frames into distinct buffers, each set at least
    twice the last-level cache (frames/s)."""
    n_set = frames_to_exceed(int(np.prod(shape)) * 4, llc, minimum=2)
    src = distinct_frames(n_set, shape, np.int32, seed=4)
    dst = np.ones_like(src)  # touched: no first-touch page faults in the timing
    copies = max(copies, 2 * n_set)
    t0 = time.perf_counter()
    for k in range(copies):
        np.copyto(dst[(k + 1) % n_set], src[k % n_set])
    return round(copies / (time.perf_counter() - t0), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--params", default=str(REPO / "configs" / "demo-pilatus2m.txt"))
    ap.add_argument("--slots", type=int, default=0,
                    help="ring slots (0: enough that the held slots total at least twice the last-level cache, >= 32)")
    ap.add_argument("--hold", type=int, default=None,
                    help="slots the stand-in workers hold before releasing the oldest (default: slots - 4)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--copy-threads", default="1", help="comma-separated [transport] copy_threads values (1)")
    ap.add_argument("--no-nontemporal", action="store_true",
                    help="start the ingest without the non-temporal copy tunable ([transport] nontemporal_copy = false)")
    ap.add_argument("--source", choices=("replay", "simulated"), default="replay",
                    help="replay: distinct frames, at least twice the last-level cache (default); simulated: the "
                         "simulated detector's 8 realisations")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)

    llc = last_level_cache()
    print(describe_llc(llc))
    tmp = Path(tempfile.mkdtemp(prefix="ingest-only-"))
    try:
        rows = [run_one(args, tmp, int(t), llc) for t in args.copy_threads.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = {"hostname": socket.gethostname(), "nproc": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "pyzmq": zmq.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "last_level_cache": llc}
    print(f"{'source':>9} {'threads':>7} {'frames':>7} {'ingest fps':>11} {'GB/s':>6} {'copy-only fps':>14} "
          f"{'frames x LLC':>12} {'slots x LLC':>11}")
    for row in rows:
        print(f"{row['source']:>9} {row['copy_threads']:>7} {row['frames']:>7} {row['ingest_fps']:>11} "
              f"{row['GB_s']:>6} {row['copy_only_fps']:>14} {row['source_set']['times_llc']:>12} "
              f"{row['slot_set']['times_llc']:>11}")
        if row.get("profile_top"):
            print(row["profile_top"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ingest_only-{machine['hostname']}.json"
    path.write_text(json.dumps({"benchmark": "ingest_only", "machine": machine, "results": rows}, indent=2))
    print(f"wrote {path}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

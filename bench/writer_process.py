"""The writer process itself, fed over ZeroMQ as fast as it takes them: what ``bench/writer.py`` leaves out (the
socket receive, the reordering, heartbeats, the process's own flush and save rules) on top of its sinks.

The real ``ringstream.writer.process.run`` runs in a child process, as the daemon starts it, bound to a loopback TCP
port; this process connects a PUSH socket and sends pre-encoded Results of 2,000 bins with 3 fitted peaks and one ROI
of 40 model values each (what a worker sends), frame indices interleaved as two workers would send them
(0, 2, 4, ... from one, 1, 3, 5, ... from the other, alternating blocks of 8), then the one partial omega sum of
``OmegaSumFrames -1`` and the EndOfStream. The rate is the number of frames over the time from the first send to the
writer's exit (close included). Both processes share this machine's CPUs, as workers and writer do in the daemon.

    python bench/writer_process.py [--frames 40000] [--repeat 3] [--machine vm] [--dir /tmp]

Prints a table; writes ``bench/results/writer_process-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from ringstream.config import DaemonConfig
from ringstream.protocol import EndOfStream, OmegaPartial, Result, encode, result_buffers
from ringstream.transport.endpoints import free_tcp_endpoint
from ringstream.transport.sockets import results_hwm

HERE = Path(__file__).resolve().parent

#: a 512 x 512 detector with 2,000 radial bins of 0.1 px and 72 of 5 degrees (2,000 x 72, as bench/writer.py)
PARAMS = """\
NrPixelsY 512
NrPixelsZ 512
Lsd 1000000
px 200
BC 256 256
Wavelength 0.2
RMin 10
RMax 210
RBinSize 0.1
EtaBinSize 5
Write2D 0
OmegaSumFrames -1
OmegaStep 0.1
PeakLocation 50
PeakLocation 100
PeakLocation 150
"""
N_R, N_ETA, N_PEAKS = 2000, 72, 3


def config(folder: Path, queue_mb: int = 8) -> dict:
    (folder / "setup.txt").write_text(PARAMS)
    return {"run": {"param_file": str(folder / "setup.txt"), "output_h5": str(folder / "out.h5"),
                    "save_interval": 500},
            "source": {"kind": "simulated", "frames": 0},  # (the writer reads only the run length, from the EOS)
            "transport": {"results_endpoint": free_tcp_endpoint(), "events_endpoint": free_tcp_endpoint(),
                          "results_queue_mb": queue_mb},
            "supervisor": {"heartbeat_interval": 0.5}, "logging": {"level": "INFO"}}


def _child(data: dict, ready, stop, log_path: str) -> None:
    import logging
    import sys

    from ringstream.writer import process

    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - the child's log, read by the parent
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    sys.exit(process.run(DaemonConfig.from_dict(data), ready, stop))


def messages(n: int) -> tuple[list, list]:
    """``n`` encoded Results in the order two workers would send them, and the partial sum and EOS after them."""
    rng = np.random.default_rng(0)
    k = 64
    lines = rng.random((k, N_R), dtype=np.float32)
    fits = rng.normal(size=(k, N_PEAKS, 7))
    table, values = np.array([[80, 40]], dtype=np.int32), rng.random(40)
    order = []
    for base in range(0, n, 16):  # two workers' batches of 8: [0, 2, ..., 14] then [1, 3, ..., 15], alternating
        block = [i for i in range(base, min(n, base + 16))]
        order += block[0::2] + block[1::2]
    out = []
    for i in order:
        j = i % k
        msg = Result(run_id="bench", frame_index=i, source_id=f"bench:{i}", timestamp=1.7e9 + i, engine="gpu",
                     worker=i % 2, n_r=N_R, n_eta=N_ETA, n_peaks=N_PEAKS, n_rois=1, n_curve_points=40,
                     metadata={"I0": 1.0 * i})
        out.append(encode(msg, result_buffers(lines[j], None, fits[j], (table, values))))
    tail = [encode(OmegaPartial(group=0, n_frames=n, n_r=N_R, n_eta=N_ETA), [rng.random((N_R, N_ETA))]),
            encode(EndOfStream(run_id="bench", n_frames=n))]
    return out, tail


def run_once(n: int, folder: Path, msgs: list, tail: list, queue_mb: int = 8) -> dict:
    work = Path(tempfile.mkdtemp(dir=folder, prefix="writer-process-"))
    data = config(work, queue_mb)
    from ringstream.geometry.cache import load_or_build

    load_or_build(DaemonConfig.from_dict(data).load_params())  # the map is cached: the child only loads it
    ctx = zmq.Context()
    spawn = mp.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    events = ctx.socket(zmq.PULL)
    events.bind(data["transport"]["events_endpoint"])
    log_path = str(work / "writer.log")
    proc = spawn.Process(target=_child, args=(data, ready, stop, log_path), name="ringstream-writer")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.start()
    push = ctx.socket(zmq.PUSH)
    t = DaemonConfig.from_dict(data).transport  # the high-water mark a worker's results socket gets
    push.setsockopt(zmq.SNDHWM, results_hwm(t.results_queue_mb, t.queue_depth, N_R, N_ETA, False, N_PEAKS, 40))
    try:
        if not ready.wait(120):
            raise RuntimeError(f"the writer did not start: {Path(log_path).read_text()[-2000:]}")
        push.connect(data["transport"]["results_endpoint"])
        time.sleep(0.2)  # connected
        t0 = time.perf_counter()
        for m in msgs:
            push.send_multipart(m, copy=False)
        t_sent = time.perf_counter()
        for m in tail:
            push.send_multipart(m, copy=False)
        proc.join(300)
        t_end = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the writer's CPU time, its start included
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        text = Path(log_path).read_text()
        if proc.exitcode != 0:
            raise RuntimeError(f"writer exit {proc.exitcode}: {text[-2000:]}")
        m = re.search(r"(\d+) frames written, (\d+) rejected in \d+ run\(s\), the last complete (\w+) "
                      r"\(([0-9.]+) frames/s", text)
        import h5py

        with h5py.File(work / "out.h5", "r") as f:
            in_file = int(f["entry"].attrs["frames_written"])
            ordered = bool(np.array_equal(f["entry/data/frame_index"][:], np.arange(n)))
        size = sum(p.stat().st_size for p in work.iterdir() if p.is_file())
    finally:
        push.close(linger=0)
        events.close(linger=0)
        ctx.destroy(linger=0)
        if proc.is_alive():
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {"frames": n, "seconds": round(t_end - t0, 3), "frames_per_s": round(n / (t_end - t0), 1),
            "send_s": round(t_sent - t0, 3), "writer_cpu_s": round(cpu, 3), "writer_log_frames_per_s": float(m.group(4)) if m else None,
            "written": int(m.group(1)) if m else None, "run_complete": m.group(3) == "True" if m else None,
            "frames_in_file": in_file, "in_order": ordered, "bytes_written": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=40000)
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported, every run is kept")
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary output files")
    ap.add_argument("--results-queue-mb", default="8",
                    help="[transport] results_queue_mb (comma-separated: each value in turn, every repeat)")
    ap.add_argument("--note", default="", help="what to know about the machine or the run, kept in the JSON")
    args = ap.parse_args()
    msgs, tail = messages(args.frames)
    sizes = [int(v) for v in args.results_queue_mb.split(",")]
    runs = []
    for _ in range(args.repeat):  # the sizes interleaved, so that each sees the same moments of a noisy machine
        for mb in sizes:
            runs.append({"results_queue_mb": mb, **run_once(args.frames, Path(args.dir), msgs, tail, mb)})
    best = max((r for r in runs if r["results_queue_mb"] == sizes[0]), key=lambda r: r["frames_per_s"])
    print(f"{'run':>4} {'queue MB':>8} {'frames':>7} {'s':>6} {'frames/s':>9} {'writer cpu s':>12} {'writer log fps':>14} "
          f"{'in file':>8} {'in order':>8}")
    for k, r in enumerate(runs):
        print(f"{k:4d} {r['results_queue_mb']:8d} {r['frames']:7d} {r['seconds']:6.2f} {r['frames_per_s']:9.0f} {r['writer_cpu_s']:12.2f} "
              f"{r['writer_log_frames_per_s'] or 0:14.0f} {r['frames_in_file']:8d} {str(r['in_order']):>8}")
    for mb in sizes:
        b = max(r["frames_per_s"] for r in runs if r["results_queue_mb"] == mb)
        print(f"best with results_queue_mb {mb}: {b:.0f} frames/s (target 20,000)")
    import h5py
    import zarr

    result = {"benchmark": "writer_process",
              "what": "the writer process fed pre-encoded Results over loopback TCP (2,000 bins, 3 peaks, one ROI), "
                      "two workers' interleaved order; frames over first send to writer exit",
              "target_per_s": 20000, "best": best, "runs": runs,
              "machine": {"hostname": args.machine, "nproc": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "h5py": h5py.__version__, "zarr": zarr.__version__,
                          "pyzmq": zmq.__version__, "platform": platform.platform(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}}
    if args.note:
        result["note"] = args.note
    path = HERE / "results" / f"writer_process-{args.machine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

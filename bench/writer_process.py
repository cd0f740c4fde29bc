"""The writer process itself, fed over ZeroMQ as fast as it takes them: what ``bench/writer.py`` leaves out (the
socket receive, the reordering, heartbeats, the process's own flush and save rules) on top of its sinks.

The real ``ringstream.writer.process.run`` runs in a child process, as the daemon starts it, bound to an ipc://
socket in a private folder (the daemon's default; ``--transport tcp``: a loopback TCP port); this process connects a
PUSH socket and sends pre-encoded Results of 2,000 bins with 3 fitted peaks and one ROI
of 40 model values each (what a worker sends), frame indices interleaved as two workers would send them
(0, 2, 4, ... from one, 1, 3, 5, ... from the other, alternating blocks of 8), then the one partial omega sum of
``OmegaSumFrames -1`` and the EndOfStream. The rate is the number of frames over the time from the first send to the
writer's exit (close included). Both processes share this machine's CPUs, as workers and writer do in the daemon.

Cases (``--cases``): ``lineouts`` (the above); ``sums-osf1``, the demo's settings (``OmegaSumFrames 1``, MIDAS's
default, ``Write2D 0``, zarr.zip on): 990 x 72 bins as in ``configs/demo-pilatus2m.txt``, each frame's Result followed
by its group's whole partial sum, float32 and compressed as workers send it (its HDF5 chunk and the starts of its
LZ4 blocks, of which the writer makes the zarr.zip chunk; made before the timed part), Poisson counts over rings normalised by bin area;
``cakes-osf1``: the same with ``Write2D 1``, the cake in each Result compressed as workers send it (its
``/cake/data/I`` chunk and its one-frame sum's HDF5 chunk, made before the timed part). The table gives the bytes a
frame takes on the wire and in the files. The messages cycle distinct frames whose wire bytes are at least twice the
last-level cache (printed; in the JSON's ``working_sets``).

    python bench/writer_process.py [--cases lineouts,sums-osf1,cakes-osf1] [--frames 40000] [--repeat 3]
                                   [--transport ipc,tcp] [--machine vm] [--dir /tmp]

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
from workload import describe_llc, frames_to_exceed, last_level_cache

from ringstream.compression import blocks_carry_over
from ringstream.config import DaemonConfig
from ringstream.protocol import EndOfStream, OmegaPartial, Result, encode, result_buffers
from ringstream.transport.endpoints import free_tcp_endpoint
from ringstream.transport.sockets import cake_itemsize, partial_itemsize, results_hwm
from ringstream.workers.compress import cake_chunks, sum_chunks

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
#: the per-frame sum cases: 990 x 72 bins (RMin 10, RMax 1000, 1 px; 5 deg), as the demo parameter file gives
CAKE_PARAMS = (PARAMS.replace("RMax 210", "RMax 1000").replace("RBinSize 0.1", "RBinSize 1")
               .replace("OmegaSumFrames -1", "OmegaSumFrames 1"))
CASES = {
    "lineouts": {"params": PARAMS, "n_r": N_R, "sums": False, "cakes": False},
    "sums-osf1": {"params": CAKE_PARAMS, "n_r": 990, "sums": True, "cakes": False},
    "cakes-osf1": {"params": CAKE_PARAMS.replace("Write2D 0", "Write2D 1"), "n_r": 990, "sums": False,
                   "cakes": True},
}


def config(folder: Path, queue_mb: int = 8, case: str = "lineouts", transport: str = "ipc") -> dict:
    c = CASES[case]
    if transport == "ipc":  # the daemon's default ([transport] auto_endpoints = "ipc"): Unix sockets
        results, events = f"ipc://{folder}/results", f"ipc://{folder}/events"
    else:
        results, events = free_tcp_endpoint(), free_tcp_endpoint()
    (folder / "setup.txt").write_text(c["params"])
    return {"run": {"param_file": str(folder / "setup.txt"), "output_h5": str(folder / "out.h5"),
                    "save_interval": 500},
            "source": {"kind": "simulated", "frames": 0},  # (the writer reads only the run length, from the EOS)
            "transport": {"results_endpoint": results, "events_endpoint": events,
                          "results_queue_mb": queue_mb},
            "supervisor": {"heartbeat_interval": 0.5}, "logging": {"level": "INFO"}}


def _child(data: dict, ready, stop, log_path: str) -> None:
    import logging
    import sys

    from ringstream.writer import process

    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - the child's log, read by the parent
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    sys.exit(process.run(DaemonConfig.from_dict(data), ready, stop))


def zarr_travels(n_r: int) -> bool:
    """Whether a worker sends a whole sum's zarr chunk beside its HDF5 chunk (workers/process.py: only where the
    writer cannot make it of the HDF5 chunk's blocks)."""
    return not blocks_carry_over(n_r * N_ETA)


def poisson_cakes(k: int, n_r: int, n_eta: int, rng) -> np.ndarray:
    """``k`` area-normalised cakes of Poisson counts: rings every 100 bins over a flat background, bins of 5-15 px²."""
    r = np.arange(n_r)[:, None]
    mean = 50.0 + 400.0 * np.exp(-((r % 100) - 50.0) ** 2 / 8.0)
    area = 5.0 + r / 100.0
    return np.stack([(rng.poisson(mean * area * np.ones((1, n_eta))) / area).astype(np.float32) for _ in range(k)])


def distinct(n: int, case: str, llc: dict) -> int:
    """How many distinct frames the messages of ``case`` cycle: their wire bytes at least twice the last-level cache
    (a compressed cake or sum counted at half its float32 bytes, fewer than it takes), at most ``n``."""
    c = CASES[case]
    cake = c["n_r"] * N_ETA * 4 // 2
    frame = c["n_r"] * 4 + N_PEAKS * 7 * 8 + 40 * 8 + cake * (c["sums"] + 2 * c["cakes"])
    return min(int(n), frames_to_exceed(frame, llc, minimum=64))


def messages(n: int, case: str = "lineouts", k: int = 64) -> tuple[list, list]:
    """``n`` encoded Results in the order two workers would send them (``sums-osf1``: each followed by its frame's
    float32 sum), and the partial sum (``lineouts``) and EOS after them; ``k`` distinct frames, cycled."""
    c = CASES[case]
    n_r = c["n_r"]
    rng = np.random.default_rng(0)
    lines = rng.random((k, n_r), dtype=np.float32)
    cakes = poisson_cakes(k, n_r, N_ETA, rng) if c["sums"] or c["cakes"] else None
    fits = rng.normal(size=(k, N_PEAKS, 7))
    # compressed as the workers do, before the timed part: each sum, or each cake and its one-frame sum
    zarr = zarr_travels(n_r)  # (as workers do: the zarr chunk only where the writer cannot make it of the HDF5 one)
    chunks = [sum_chunks(cakes[j], zarr=zarr, starts=not zarr) for j in range(k)] if c["sums"] else None
    packed = [cake_chunks(cakes[j], "<f4", zarr=zarr) for j in range(k)] if c["cakes"] else None
    table, values = np.array([[80, 40]], dtype=np.int32), rng.random(40)
    order = []
    for base in range(0, n, 16):  # two workers' batches of 8: [0, 2, ..., 14] then [1, 3, ..., 15], alternating
        block = [i for i in range(base, min(n, base + 16))]
        order += block[0::2] + block[1::2]
    out = []
    for i in order:
        j = i % k
        msg = Result(run_id="bench", frame_index=i, source_id=f"bench:{i}", timestamp=1.7e9 + i, engine="gpu",
                     worker=i % 2, n_r=n_r, n_eta=N_ETA, has_cake=c["cakes"], cake_chunks=len(packed[j]) if c["cakes"] else 0,
                     n_peaks=N_PEAKS, n_rois=1, n_curve_points=40, metadata={"I0": 1.0 * i})
        bufs = result_buffers(lines[j], None, fits[j], (table, values))
        bufs[1:1] = packed[j] if c["cakes"] else []
        out.append(encode(msg, bufs))
        if c["sums"]:  # the frame's group is whole: float32 and compressed for both files, as a worker sends it
            out.append(encode(OmegaPartial(run_id="bench", group=i, n_frames=1, first_frame=i, last_frame=i,
                                           worker=i % 2, frames=[i], n_r=n_r, n_eta=N_ETA, dtype="<f4",
                                           compressed=True, block_starts=not zarr), chunks[j]))
    tail = [] if c["sums"] or c["cakes"] else [
        encode(OmegaPartial(run_id="bench", group=0, n_frames=n, n_r=N_R, n_eta=N_ETA), [rng.random((N_R, N_ETA))])]
    return out, tail + [encode(EndOfStream(run_id="bench", n_frames=n))]


def run_once(n: int, folder: Path, msgs: list, tail: list, queue_mb: int = 8, case: str = "lineouts",
             transport: str = "ipc") -> dict:
    work = Path(tempfile.mkdtemp(dir=folder, prefix="writer-process-"))
    data = config(work, queue_mb, case, transport)
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
    c = CASES[case]
    push.setsockopt(zmq.SNDHWM, results_hwm(t.results_queue_mb, t.queue_depth, c["n_r"], N_ETA, c["cakes"], N_PEAKS, 40,
                                            frames_per_partial=1 if c["sums"] else 0,
                                            partial_itemsize=partial_itemsize(1, 4, True, zarr_travels(c["n_r"])),
                                            cake_itemsize=cake_itemsize(4, c["cakes"], zarr_travels(c["n_r"]))))
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
    ap.add_argument("--cases", default="lineouts,sums-osf1,cakes-osf1", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--frames", type=int, default=40000, help="frames of the lineouts case (40,000)")
    ap.add_argument("--cake-frames", type=int, default=10000, help="frames of the per-frame sum cases (10,000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported, every run is kept")
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary output files")
    ap.add_argument("--results-queue-mb", default="8",
                    help="[transport] results_queue_mb (comma-separated: each value in turn, every repeat)")
    ap.add_argument("--transport", default="ipc",
                    help="ipc (the daemon's default: Unix sockets) or tcp (loopback), comma-separated: each in turn")
    ap.add_argument("--note", default="", help="what to know about the machine or the run, kept in the JSON")
    args = ap.parse_args()
    sizes = [int(v) for v in args.results_queue_mb.split(",")]
    transports = [t for t in args.transport.split(",") if t]
    if any(t not in ("ipc", "tcp") for t in transports):
        ap.error(f"--transport {args.transport}: ipc or tcp")
    cases = [c for c in args.cases.split(",") if c]
    targets = {"lineouts": 20000, "sums-osf1": 3000, "cakes-osf1": 3000}
    runs = []
    llc = last_level_cache()
    print(describe_llc(llc))
    working_sets = {}
    for case in cases:
        n = args.frames if case == "lineouts" else args.cake_frames
        k = distinct(n, case, llc)
        msgs, tail = messages(n, case, k)
        wire = sum(memoryview(b).nbytes for m in msgs for b in m) / n  # bytes a frame from workers to writer
        working_sets[case] = {"distinct_frames": k, "bytes": round(wire * k), "times_llc": round(wire * k /
                                                                                                 llc["total_bytes"], 2)}
        print(f"{case}: {k} distinct frames, {wire * k / 2**20:.0f} MiB on the wire ({working_sets[case]['times_llc']}x "
              f"the last-level cache)")
        for _ in range(args.repeat):  # the settings interleaved, so that each sees the same moments of a noisy machine
            for transport in transports:
                for mb in sizes:
                    runs.append({"case": case, "transport": transport, "results_queue_mb": mb,
                                 "wire_bytes_per_frame": round(wire),
                                 **run_once(n, Path(args.dir), msgs, tail, mb, case, transport)})
        del msgs, tail
    print(f"{'case':>10} {'via':>4} {'queue MB':>8} {'frames':>7} {'s':>6} {'frames/s':>9} {'writer cpu s':>12} "
          f"{'writer log fps':>14} {'in file':>8} {'in order':>8} {'wire kB/frame':>13} {'file kB/frame':>13}")
    for r in runs:
        print(f"{r['case']:>10} {r['transport']:>4} {r['results_queue_mb']:8d} {r['frames']:7d} {r['seconds']:6.2f} "
              f"{r['frames_per_s']:9.0f} {r['writer_cpu_s']:12.2f} {r['writer_log_frames_per_s'] or 0:14.0f} "
              f"{r['frames_in_file']:8d} {str(r['in_order']):>8} {r['wire_bytes_per_frame'] / 1e3:13.1f} "
              f"{r['bytes_written'] / r['frames'] / 1e3:13.1f}")
    best = {}
    for case in cases:  # the headline: the first transport and queue size given (the defaults: ipc, 8 MB)
        best[case] = max((r for r in runs if r["case"] == case and r["results_queue_mb"] == sizes[0]
                          and r["transport"] == transports[0]), key=lambda r: r["frames_per_s"])
        for transport in transports:
            for mb in sizes:
                b = max(r["frames_per_s"] for r in runs if r["case"] == case and r["results_queue_mb"] == mb
                        and r["transport"] == transport)
                print(f"{case}: best over {transport} with results_queue_mb {mb}: {b:.0f} frames/s "
                      f"(target {targets[case]:,})")
    import h5py
    import zarr

    result = {"benchmark": "writer_process",
              "what": "the writer process fed pre-encoded Results over ipc:// (the default) or loopback TCP "
                      "(each run's 'transport'), two workers' interleaved order; "
                      "lineouts: 2,000 bins, 3 peaks, one ROI, OmegaSumFrames -1; sums-osf1: 990 x 72 bins, "
                      "OmegaSumFrames 1, each frame's float32 sum compressed into the HDF5 and the zarr.zip; "
                      "cakes-osf1: the same with Write2D 1 (the cake in the Result); frames over first send to "
                      "writer exit",
              "targets_per_s": {c: targets[c] for c in cases}, "best": best, "runs": runs,
              "last_level_cache": llc, "working_sets": working_sets,
              "machine": {"hostname": args.machine, "nproc": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "h5py": h5py.__version__, "zarr": zarr.__version__,
                          "pyzmq": zmq.__version__, "platform": platform.platform(),
                          "loadavg": os.getloadavg(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}}
    if args.note:
        result["note"] = args.note
    path = HERE / "results" / f"writer_process-{args.machine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

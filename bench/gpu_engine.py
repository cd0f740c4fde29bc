"""Benchmark: the CuPy engine against the host→device copy ceiling, on the GPU machine.

Detectors (RBinSize 1 × EtaBinSize 5, RMin 10, RMax ~1000: ~1,000 R bins × 72 η bins):
PILATUS 2M int32 (1679 × 1475), EIGER2 4M uint16 (2162 × 2068), 2048² uint32 (3° tilt, the map_build geometry).

For each: (1) the pinned host→device copy ceiling in frames/s (one large cudaMemcpyAsync from pinned memory, CUDA
events, median); (2) engine frames/s from pinned host memory (``integrate_batch`` on a pinned array: copy in,
integrate, copy the lineouts and cakes back into caller-owned arrays; wall clock) and its ratio to the ceiling
(target >= 0.9); also from pageable memory; (3) GPU-resident throughput in Gpixel/s (``integrate_device`` on frames
already on the GPU, rotating over several input sets, CUDA events, median; target >= 100 Gpx/s for 2048²) for a
few ``bmax``; (4) agreement with the float64 reference engine on random frames. Random frames, never zeros.
Optionally (``--daemon N``) the end-to-end ``ringstream run`` with ``--engine gpu`` on N PILATUS 2M int32 frames
replayed from an .npy stack of distinct frames (at least 32, and at least twice the last-level cache) or simulated,
for each combination of workers, ingest copy threads and batches in flight given, each with the default settings
first (the headline row: ``OmegaSumFrames`` as the demo parameter file gives it, the zarr.zip written) and then
the fast-path settings (``OmegaSumFrames -1``, ``--no-zarr``; ``bench/workload.py``), with the frames lost (must be
0), whether the HDF5 is complete and in order, the run's own frames/s (start of running to the end, closing
included) and the sustained frames/s between the first and last frame's timestamps; and the ingest's copy ceiling
(distinct frames into rotating ring slots, each set at least twice the last-level cache, which is printed).

Writes ``<out>/gpu_engine-<device>.json`` and prints a table. Run: ``python bench/gpu_engine.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import workload  # noqa: E402

GEOMS = {
    "pilatus2m_int32": ("int32", "NrPixelsY 1475\nNrPixelsZ 1679\npx 172\nLsd 1000000\nBC 737 839\nty 1\n"
                                 "RMin 10\nRMax 1000\nRBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\n"),
    "eiger2_4m_uint16": ("uint16", "NrPixelsY 2068\nNrPixelsZ 2162\npx 75\nLsd 1000000\nBC 1034 1081\nty 1\n"
                                   "RMin 10\nRMax 1010\nRBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\n"),
    "2048sq_uint32": ("uint32", "NrPixelsY 2048\nNrPixelsZ 2048\npx 200\nLsd 1000000\nBC 1024 1024\nty 3\n"
                                "RMin 10\nRMax 1010\nRBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\n"),
}


def _median(xs):
    return float(np.median(np.asarray(xs)))


def random_frames(rng, n, shape, dtype):
    # counts-like values, never zero
    return rng.integers(1, 4000, size=(n,) + tuple(shape), dtype=np.int32).astype(dtype)


def copy_ceiling(cp, pinned, reps=7) -> float:
    """Seconds for one pinned host→device copy of ``pinned`` (median over reps, CUDA events)."""
    rt = cp.cuda.runtime
    d = cp.cuda.alloc(pinned.nbytes)
    s = cp.cuda.Stream(non_blocking=True)
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for i in range(reps + 1):
        e0.record(s)
        rt.memcpyAsync(d.ptr, int(pinned.ctypes.data), pinned.nbytes, rt.memcpyHostToDevice, s.ptr)
        e1.record(s)
        e1.synchronize()
        if i:
            ts.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
    del d
    return _median(ts)


def resident(cp, eng, d_sets, reps=20) -> float:
    """Seconds per ``integrate_device`` call over one set of frames (median, rotating over the sets)."""
    n = d_sets[0].shape[0]
    out = (cp.empty((n, eng.n_r), np.float64), cp.empty((n, eng.n_r, eng.n_eta), np.float64))
    s = cp.cuda.Stream(non_blocking=True)
    for d in d_sets:  # warm-up (compiles the kernel for this dtype / bmax)
        eng.integrate_device(d, out=out, stream=s)
    s.synchronize()
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for i in range(reps):
        e0.record(s)
        eng.integrate_device(d_sets[i % len(d_sets)], out=out, stream=s)
        e1.record(s)
        e1.synchronize()
        ts.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
    return _median(ts)


def time_pinned(eng, pinned, reps) -> float:
    """Median wall seconds of ``integrate_batch`` on a pinned array (after one warm-up call)."""
    n = pinned.shape[0]
    lines = np.empty((n, eng.n_r))
    cakes = np.empty((n, eng.n_r, eng.n_eta))
    eng.integrate_batch(pinned, out=(lines, cakes))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        eng.integrate_batch(pinned, out=(lines, cakes))
        ts.append(time.perf_counter() - t)
    return _median(ts)


def bench_one(cp, cupyx, name, dtype, params_text, n_frames, reps, rng, sweep=False) -> dict:
    from ringstream.engines.cupy_engine import CupyEngine
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.map import build_map
    from ringstream.params import parse_params

    p = parse_params(params_text)
    t = time.perf_counter()
    imap = build_map(p)
    build_s = time.perf_counter() - t
    shape, npix = imap.shape, imap.shape[0] * imap.shape[1]
    itemsize = np.dtype(dtype).itemsize
    fbytes = npix * itemsize
    res = {"detector": name, "dtype": dtype, "shape": list(shape), "n_r": int(imap.n_r), "n_eta": int(imap.n_eta),
           "nnz": int(imap.weights.nnz), "map_build_s": round(build_s, 2), "frame_bytes": fbytes,
           "frames_per_call": n_frames}

    # correctness against the float64 reference (with a dark frame)
    check = random_frames(rng, 4, shape, dtype)
    dark = rng.uniform(0.5, 20.0, shape)
    eng_d = CupyEngine(imap, dark=dark)
    ref = ReferenceEngine(imap, dark=dark)
    gl, gc = eng_d.integrate_batch(check)
    rl, rc = ref.integrate_batch(check)
    res["rel_err_cake"] = float(np.linalg.norm(gc - rc) / np.linalg.norm(rc))
    res["rel_err_lineout"] = float(np.linalg.norm(gl - rl) / np.linalg.norm(rl))

    # (1) copy ceiling
    host = random_frames(rng, n_frames, shape, dtype)
    pinned = cupyx.empty_pinned(host.shape, host.dtype)
    pinned[...] = host
    t_copy = copy_ceiling(cp, pinned)
    res["h2d_GBps"] = pinned.nbytes / t_copy / 1e9
    res["ceiling_fps"] = n_frames / t_copy

    # (2) engine from pinned memory (no dark: the bench's pipeline numbers), results into caller-owned arrays
    eng = CupyEngine(imap, n_streams=4)  # the default chunk of 8 frames per stream
    lines = np.empty((n_frames, eng.n_r))
    cakes = np.empty((n_frames, eng.n_r, eng.n_eta))
    eng.integrate_batch(pinned, out=(lines, cakes))  # warm-up: kernels compiled, buffers allocated, pages touched
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        eng.integrate_batch(pinned, out=(lines, cakes))
        ts.append(time.perf_counter() - t)
    res["engine_pinned_fps"] = n_frames / _median(ts)
    res["engine_pinned_fps_best"] = n_frames / min(ts)
    res["ratio_to_ceiling"] = res["engine_pinned_fps"] / res["ceiling_fps"]
    # same from pageable memory (staged through pinned buffers)
    eng.integrate_batch(host, out=(lines, cakes))
    ts = []
    for _ in range(max(2, reps // 2)):
        t = time.perf_counter()
        eng.integrate_batch(host, out=(lines, cakes))
        ts.append(time.perf_counter() - t)
    res["engine_pageable_fps"] = n_frames / _median(ts)
    # single frames through integrate() (what the worker does), pageable
    t = time.perf_counter()
    k = min(64, n_frames)
    for i in range(k):
        eng.integrate(host[i])
    res["engine_single_frame_fps"] = k / (time.perf_counter() - t)
    if sweep:  # chunk size per stream, and frames per call
        res["pipeline_sweep"] = []
        for batch in (8, 16, 32):
            e = CupyEngine(imap, n_streams=4, batch=batch)
            t_b = time_pinned(e, pinned, reps)
            res["pipeline_sweep"].append({"batch": batch, "frames_per_call": n_frames, "fps": n_frames / t_b,
                                          "ratio": n_frames / t_b / res["ceiling_fps"]})
            del e
        big = cupyx.empty_pinned((2 * n_frames,) + tuple(shape), host.dtype)
        big[:n_frames] = host
        big[n_frames:] = host
        t_b = time_pinned(eng, big, max(2, reps // 2))
        res["pipeline_sweep"].append({"batch": eng.batch, "frames_per_call": 2 * n_frames,
                                      "fps": 2 * n_frames / t_b, "ratio": 2 * n_frames / t_b / res["ceiling_fps"]})
        del big
    del pinned

    # (3) GPU-resident throughput
    n_res = 32
    d_sets = [cp.asarray(random_frames(rng, n_res, shape, dtype)) for _ in range(3)]
    res["resident"] = {}
    for bmax in (4, 8, 16):
        e = CupyEngine(imap, bmax=bmax, n_streams=1, batch=1)
        t_r = resident(cp, e, d_sets)
        res["resident"][f"bmax{bmax}"] = {"s_per_call": t_r, "fps": n_res / t_r, "Gpx_per_s": n_res * npix / t_r / 1e9}
        if bmax == 8:
            ed = CupyEngine(imap, dark=dark, bmax=bmax, n_streams=1, batch=1)
            t_d = resident(cp, ed, d_sets)
            res["resident"]["bmax8_dark"] = {"s_per_call": t_d, "fps": n_res / t_d,
                                             "Gpx_per_s": n_res * npix / t_d / 1e9}
    best = max(res["resident"].values(), key=lambda r: r["Gpx_per_s"])
    res["resident_best_Gpx_per_s"] = best["Gpx_per_s"]
    res["resident_best_fps"] = best["fps"]
    # floor: frames read once + the map (4 B index + 4 B weight per nonzero) once per bmax=8 frames + cakes written
    bytes_per_frame = fbytes + res["nnz"] * 8 / 8 + eng.n_bins * 8
    res["bytes_per_frame_floor"] = bytes_per_frame
    res["resident_GBps_effective"] = bytes_per_frame * res["resident"]["bmax8"]["fps"] / 1e9
    del d_sets
    cp.get_default_memory_pool().free_all_blocks()
    return res


COUNTS = re.compile(r"finished: received (\d+), integrated (\d+), written (\d+), rejected (\d+), dropped (\d+) "
                    r"\([^)]*\), worker restarts \d+, writer restarts \d+, ingest restarts \d+, re-sent \d+, ([\d.]+) s, ([\d.]+) frames/s")


def ingest_ceiling(llc: dict, seconds: float = 1.5) -> dict:
    """Frames/s of the ingest's one copy per frame (``FrameRing.write`` of a PILATUS 2M int32 frame into a slot),
    the most the single-threaded ingest can feed the workers: distinct frames into slots held as workers hold them,
    each set at least twice the last-level cache ``llc``."""
    from ringstream.transport.shm_ring import FrameRing

    shape = (1679, 1475)
    nbytes = int(np.prod(shape)) * 4
    n_set = workload.frames_to_exceed(nbytes, llc, minimum=32)
    frames = workload.distinct_frames(n_set, shape, np.int32, seed=5)
    ring = FrameRing.create(n_set, nbytes, prefix="ringstream-bench")
    held = workload.HeldSlots(ring.release, n_set - 1)
    try:
        for k in range(n_set):  # first touch of every slot's pages, untimed
            slot = ring.acquire()
            ring.write(slot, frames[k])
            held.add(slot)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            slot = ring.acquire()
            ring.write(slot, frames[n % n_set])
            held.add(slot)
            n += 1
        dt = time.perf_counter() - t0
    finally:
        del frames
        ring.close()
        ring.unlink()
    return {"ring_write_fps": round(n / dt, 1), "GB_s": round(n * nbytes / dt / 1e9, 2),
            "working_set": workload.working_set(n_set, nbytes, llc)}


def daemon_run(frames: int, workers: int, source: str = "replay", copy_threads: int = 0,
               in_flight: int = 1, gpus: str = "", settings: workload.DaemonSettings = workload.DEFAULT,
               timeline: bool = False, replay_frames: int = 32, param_file: Path | None = None,
               stack: np.ndarray | None = None, replay_codec: str = "none", trace: bool = False) -> dict:
    """End-to-end ``ringstream run --engine gpu`` on PILATUS 2M int32 frames through the shared-memory ring:
    ``source`` "replay" (an .npy stack of ``replay_frames`` distinct frames, looped: replay -> ingest -> ring -> GPU
    workers -> writer, as the issue asks) or "simulated"; ``copy_threads`` (0 = auto), ``in_flight`` batches per
    worker, ``gpus`` ("" = device 0), ``settings`` (OmegaSumFrames and zarr.zip: the default ones sum every frame's
    cake on its own, OmegaSumFrames 1, so a cake per frame, float32 and compressed, goes to /entry/omega_sum and the
    zarr.zip; the fast path keeps one running sum and writes no zarr.zip). frames/s is the run's own figure (ready -> last frame written);
    lost = frames the source produced that the HDF5 does not hold. ``timeline``: run at log level INFO and split the
    run into stages from the supervisor's log stamps and the frames' source stamps (see :func:`timeline_of`).
    ``param_file``, ``stack`` and ``replay_codec`` replace the demo PILATUS 2M parameter file, the replayed frames
    and ``--replay-codec none`` (bench/gpu_decode.py: compressed frames). ``trace``: ``--trace-dir`` on, and the
    intervals between the stages of each frame (ringstream/trace.py, bench/stage_trace.py) and the ingest's waits for
    ring slots and for workers' credit (its counters in the file) reported."""
    import h5py

    exe = Path(sys.executable).with_name("ringstream")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ringstream.daemon.cli"]
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench-gpu.h5"
        cmd += ["run", "--param-file", str(param_file or REPO / "configs" / "demo-pilatus2m.txt")]
        if source == "replay":
            path = Path(d) / "replay.npy"
            np.save(path, stack if stack is not None else
                    workload.distinct_frames(replay_frames, (1679, 1475), np.int32, seed=9))
            cmd += ["--replay", str(path), "--frames", str(frames), "--replay-codec", replay_codec]
        else:
            cmd += ["--simulate", str(frames)]
        cmd += ["--workers", str(workers), "--engine", "gpu", "--output-h5", str(out), "--control", "auto",
                "--log-level", "INFO" if timeline else "WARNING", "--copy-threads", str(copy_threads),
                *settings.flags()]
        if gpus:
            cmd += ["--gpus", gpus]
        if trace:
            cmd += ["--trace-dir", str(Path(d) / "trace")]
        cmd += settings.overrides()  # parameter overrides (after every flag)
        env = dict(os.environ, RINGSTREAM_WORKERS_BATCHES_IN_FLIGHT=str(in_flight))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        wall = time.perf_counter() - t0
        t_end = time.time()
        m = COUNTS.search(proc.stderr)
        if proc.returncode != 0 or not m:
            return {**settings.describe(), "source": source, "workers": workers,
                    "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        with h5py.File(out, "r") as f:
            idx = f["/entry/data/frame_index"][()]
            stamps = f["/entry/data/timestamp"][()]
            complete = bool(f["/entry"].attrs["run_complete"])
            counters = json.loads(f["/entry/reduction/source_counters"][()] or b"{}") if trace else {}
        if trace:
            from stage_trace import stage_rates

            from ringstream.trace import summary, table

            _, times = table(Path(d) / "trace")
            traced = {"intervals": summary(times), "stage_rates": stage_rates(times),
                      "ring_wait_s": counters.get("ring_wait_us", 0) / 1e6,
                      "credit_wait_s": counters.get("credit_wait_us", 0) / 1e6}
    written = int(m.group(3))
    return {**settings.describe(), "source": source, "workers": workers, "copy_threads": copy_threads,
            "batches_in_flight": in_flight,
            **({"replay_frames": replay_frames if stack is None else len(stack), "replay_codec": replay_codec}
               if source == "replay" else {}),
            "gpus": gpus or "0", "frames": frames, "written": written, "lost": frames - written,
            "in_order": bool(np.array_equal(idx, np.arange(frames))), "run_complete": complete,
            "run_s": float(m.group(6)), "frames_per_s": float(m.group(7)), "wall_s": round(wall, 2),
            "sustained_fps": sustained(stamps),
            **({"timeline": timeline_of(proc.stderr, stamps, t_end)} if timeline else {}),
            **({"trace": traced} if trace else {})}


LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?: (.*)$", re.M)


def timeline_of(log_text: str, stamps, t_end: float) -> dict:
    """Where a daemon run's time goes, in s, from the supervisor's INFO log (local-time stamps to the ms) and the
    frames' source stamps (``time.time()`` when the replay yields a frame): ready -> first frame yielded,
    first -> last frame yielded (the stream), last frame -> the writer's exit (drain + closing the files), writer
    exit -> the end of the command (stopping the workers), and when each worker's loop ended and its process exited,
    counted from the writer's exit."""
    events = {}
    for when, text in LOG_STAMP.findall(log_text):
        t = datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if ": ready (" in text:
            events.setdefault("ready", t)
        elif m := re.match(r"(\S+) \(pid \d+\) (?:exited cleanly|stopped)", text):
            events.setdefault(f"{m.group(1)}_exit", t)
        elif m := re.match(r"(worker-\d+): (done|sockets closed)", text):
            events.setdefault(f"{m.group(1)}_{m.group(2).replace(' ', '_')}", t)
    stamps = np.asarray(stamps, dtype=np.float64)
    out = {"stream_s": round(float(stamps[-1] - stamps[0]), 3)}
    if "ready" in events:
        out["ready_to_first_frame_s"] = round(float(stamps[0]) - events["ready"], 3)
    if "writer_exit" in events:
        w = events["writer_exit"]
        out["last_frame_to_writer_exit_s"] = round(w - float(stamps[-1]), 3)
        out["writer_exit_to_end_s"] = round(t_end - w, 3)
        # each worker: its loop's end ("done") and its process's exit (engine and ring teardown), after the writer's
        out["after_writer_exit_s"] = {k: round(v - w, 3) for k, v in sorted(events.items())
                                      if k.startswith(("worker", "ingest"))}
    return out


def sustained(stamps) -> float:
    """Frames/s between the first and the last frame's source timestamp (the replay source stamps a frame when it
    yields it, and the ring bounds how far it runs ahead): the steady rate of the whole pipeline, without the
    start-up and the end of run (draining, the last omega sums, closing the files) that the run's own figure
    includes."""
    stamps = np.asarray(stamps, dtype=np.float64)
    span = float(stamps[-1] - stamps[0]) if stamps.size > 1 else 0.0
    return round((stamps.size - 1) / span, 1) if span > 0 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--frames", type=int, default=128, help="frames per integrate_batch call (128)")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--only", default="", help="comma-separated detector names")
    ap.add_argument("--daemon", type=int, default=0, help="also run the daemon end to end on N frames")
    ap.add_argument("--daemon-workers", default="1,2", help="comma-separated worker counts for --daemon (1,2)")
    ap.add_argument("--daemon-source", default="replay", choices=("replay", "simulated"))
    ap.add_argument("--daemon-copy-threads", default="0", help="comma-separated [transport] copy_threads (0 = auto)")
    ap.add_argument("--daemon-in-flight", default="1,4", help="comma-separated [workers] batches_in_flight (1,4)")
    ap.add_argument("--daemon-gpus", default="", help="[workers] gpus for the daemon runs, e.g. 0,1")
    ap.add_argument("--daemon-settings", default="default,fast-path",
                    help="daemon settings of each combination, the first the headline row (default,fast-path)")
    ap.add_argument("--daemon-omega-sum-frames", default="-1",
                    help="comma-separated OmegaSumFrames of the fast-path rows (-1: one running sum)")
    ap.add_argument("--daemon-timeline", action="store_true",
                    help="run the daemon at log level INFO and report where its time goes (ready, stream, drain, stop)")
    ap.add_argument("--daemon-trace", action="store_true",
                    help="run the daemon with --trace-dir and report how long each stage holds a frame "
                         "(bench/stage_trace.py) and how long the ingest waited for ring slots and credit")
    ap.add_argument("--no-engine", action="store_true", help="skip the engine benchmarks (daemon runs only)")
    ap.add_argument("--sweep", action="store_true", help="also time chunk sizes 8/16/32 and 2x frames per call")
    args = ap.parse_args(argv)

    import cupy as cp
    import cupyx

    props = cp.cuda.runtime.getDeviceProperties(0)
    dev = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    info = {"device": dev, "hostname": socket.gethostname(), "cupy": cp.__version__, "numpy": np.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    rng = np.random.default_rng(2026)
    results = []
    names = [n for n in GEOMS if (not args.only or n in args.only.split(",")) and not args.no_engine]
    for name in names:
        dtype, text = GEOMS[name]
        r = bench_one(cp, cupyx, name, dtype, text, args.frames, args.reps, rng, sweep=args.sweep)
        results.append(r)
        print(json.dumps(r), flush=True)
    out = {"benchmark": "gpu_engine", "machine": info, "results": results,
           "targets": {"ratio_to_ceiling": 0.9, "resident_Gpx_per_s_2048sq": 100}}
    if args.daemon:
        llc = workload.last_level_cache()
        print(workload.describe_llc(llc), flush=True)
        out["machine"]["last_level_cache"] = llc
        out["ingest_ceiling"] = ingest_ceiling(llc)
        print("ingest ceiling (one ring write per frame, PILATUS 2M int32):", out["ingest_ceiling"], flush=True)
        replay_frames = workload.frames_to_exceed(1679 * 1475 * 4, llc, minimum=32)
        out["daemon"] = [daemon_run(args.daemon, int(w), args.daemon_source, int(c), int(q), args.daemon_gpus, s,
                                    args.daemon_timeline, replay_frames, trace=args.daemon_trace)
                         for w in args.daemon_workers.split(",") for c in args.daemon_copy_threads.split(",")
                         for q in args.daemon_in_flight.split(",")
                         for s in workload.daemon_settings(args.daemon_settings, args.daemon_omega_sum_frames)]
        for d in out["daemon"]:
            print("daemon:", d, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", dev).strip("-")
    path = Path(args.out) / f"gpu_engine-{tag}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")

    print(f"\nCuPy engine on {dev} (RBinSize 1 x EtaBinSize 5), {args.frames} frames per call")
    print(f"{'detector':18s} {'H2D GB/s':>8s} {'ceil fps':>9s} {'eng fps':>8s} {'ratio':>6s} {'pageable':>8s} "
          f"{'1-frame':>8s} {'res Gpx/s':>9s} {'res fps':>8s} {'relerr':>8s}")
    for r in results:
        print(f"{r['detector']:18s} {r['h2d_GBps']:8.1f} {r['ceiling_fps']:9.0f} {r['engine_pinned_fps']:8.0f} "
              f"{r['ratio_to_ceiling']:6.3f} {r['engine_pageable_fps']:8.0f} {r['engine_single_frame_fps']:8.0f} "
              f"{r['resident_best_Gpx_per_s']:9.1f} {r['resident_best_fps']:8.0f} "
              f"{max(r['rel_err_cake'], r['rel_err_lineout']):8.1e}")
    for r in results:
        for sw in r.get("pipeline_sweep", []):
            print(f"  {r['detector']:18s} batch {sw['batch']:3d}, {sw['frames_per_call']:4d} frames/call: "
                  f"{sw['fps']:7.0f} fps, ratio {sw['ratio']:.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writer throughput alone: how many frames per second the writer's sinks take, so writing never limits the GPU.

Three cases:

- ``lineouts``: 2,000 radial bins, ``Write2D 0``, 3 fitted peaks per frame (fit [3, 7] float64 and one ROI of 40
  model values), ``OmegaSumFrames -1`` (one sum of the run, from the workers, as in the GPU daemon benchmarks);
  outputs: HDF5 (lineout, fit, curves, metadata, omega), fit.bin, fit_curves.bin, zarr.zip. Target 20,000/s.
- ``lineouts-sums100``: the same with a worker's partial sum every ``OmegaSumFrames`` = 100 frames: a 576 KB sum
  (float32, compressed: less) per 100 frames into the HDF5 and again into the zarr.zip, at most 12 KB a frame on top
  of the lineout's 8 KB.
  Shown for the cost of the sums (what a beamline writes at 20,000 frames/s with groups of 100: 460 MB/s).
- ``cakes``: 1,000 x 72 bins, ``Write2D 1``, no fitting, ``OmegaSumFrames`` 10 summed by the writer from the
  cakes; outputs: HDF5 (lineouts and cakes), zarr.zip. Target 2,000/s.
- ``cakes-osf1``: a cake per frame, MIDAS's default: 990 x 72 bins (the PILATUS 2M demo's), ``Write2D 1``,
  ``OmegaSumFrames 1`` (each frame's cake is also its own omega-sum group, in the HDF5 and in the zarr.zip), cakes of
  Poisson counts as a detector gives them (counts of each bin's area, divided by the area: values with every
  mantissa bit used, which compress less than the uniform noise of ``cakes``' values would suggest), stored
  float32 (the default ``cake_dtype``); ``cakes-osf1-f64`` the same stored float64; ``cakes-osf1-noise0.01`` the same
  precision-bounded (``cake_noise_fraction`` 0.01, the noise model of those counts: g = 1 / area, every value rounded),
  for what the rounding costs the writer (bench/precision_bytes.py measures its bytes on the demo's real map).
  Shown for the bytes written per frame (``bytes/frame``, HDF5 + zarr.zip) and the compression ratio (``ratio``: the stored values' own bytes, cake
  and sum of every frame in the HDF5 plus the sum in the zarr.zip, over the bytes written).

Each case is timed two ways, from pre-built inputs (what is timed is the writer's work, not making inputs):
``sinks`` = ``RunOutputs.append`` per frame, ``save`` every 500 frames (the default save interval: HDF5 flush,
MIDAS streams, zarr.zip published) and ``close``, reported as the steady rate (appends and saves up to the last
frame: what keeps up with the GPU), the close (the last flush, the last zarr.zip publication, the named omega-sum
datasets: once per run) and the total rate including the close (the target is judged on the total); ``messages`` = the same plus what the writer process does per
message before that: ``decode`` of the zmq frames (msgpack header + buffer views) and
``record_from_result`` (the buffers checked against the header and viewed as arrays), the writer process's code.
The prebuilt inputs are frozen out of the garbage collector's scans (``gc.freeze``) during the timing: tens of
thousands of live input objects are the harness's, not the writer's, and would otherwise be rescanned. Both wall time and the process's CPU time (all its threads) are reported: this 2-core box is
shared, so the wall time depends on what else runs. The files go to a temporary folder on the box's disk (``--dir``), and the time includes
closing them (data handed to the OS page cache, as during a run). Prints a table; writes
``bench/results/writer-<machine>.json``.

    python bench/writer.py [--frames N] [--machine vm] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from ringstream.params import parse_params
from ringstream.protocol import (
    OmegaPartial,
    Result,
    decode,
    encode,
    result_buffers,
)
from ringstream.writer.outputs import RunOutputs, record_from_result

HERE = Path(__file__).resolve().parent

CASES = {
    "lineouts": dict(n_r=2000, n_eta=72, write_2d=False, n_peaks=3, osf=-1, target=20000),
    "lineouts-sums100": dict(n_r=2000, n_eta=72, write_2d=False, n_peaks=3, osf=100, target=20000),
    "cakes": dict(n_r=1000, n_eta=72, write_2d=True, n_peaks=0, osf=10, target=2000),
    "cakes-osf1": dict(n_r=990, n_eta=72, write_2d=True, n_peaks=0, osf=1, target=3000, counts=True),
    "cakes-osf1-f64": dict(n_r=990, n_eta=72, write_2d=True, n_peaks=0, osf=1, target=3000, counts=True,
                           cake_dtype="float64"),
    "cakes-osf1-noise0.01": dict(n_r=990, n_eta=72, write_2d=True, n_peaks=0, osf=1, target=3000, counts=True,
                                 cake_noise_fraction=0.01),
}


def params_for(case: dict):
    lines = [
        "NrPixelsY 2048", "NrPixelsZ 2048", "Lsd 1000000", "px 200", "BC 1024 1024", "Wavelength 0.2",
        "RMin 10", f"RMax {10 + case['n_r']}", "RBinSize 1", f"EtaBinSize {360 / case['n_eta']}",
        f"Write2D {int(case['write_2d'])}", f"OmegaSumFrames {case['osf']}", "OmegaStep 0.1",
    ]
    if case["n_peaks"]:
        lines += [f"PeakLocation {100 + 500 * k}" for k in range(case["n_peaks"])]
    return parse_params("\n".join(lines) + "\n", source="bench.txt")


def fake_map(n_r: int, n_eta: int):
    """The IntegrationMap attributes the writer reads (no pixel map needed to measure writing)."""
    r = 10.5 + np.arange(n_r, dtype=np.float64)
    return types.SimpleNamespace(n_r=n_r, n_eta=n_eta, r_px=r, two_theta=np.degrees(np.arctan(r * 200 / 1e6)),
                                 eta=-180 + (np.arange(n_eta) + 0.5) * 360 / n_eta, q=0.01 * r,
                                 bin_area=np.ones((n_r, n_eta)))


def counted_cakes(rng: np.random.Generator, k: int, n_r: int, n_eta: int) -> np.ndarray:
    """``k`` float32 cakes ``[n_r, n_eta]`` as an engine makes them from counting-detector frames: each bin the
    Poisson counts of its area (px², RBinSize 1 at radius 10.5 + i px: 2πr/n_eta) over a background and three rings,
    divided by the area (the normalised cake)."""
    r = 10.5 + np.arange(n_r, dtype=np.float64)
    area = (2 * np.pi * r / n_eta)[:, None] * rng.uniform(0.95, 1.05, (n_r, n_eta))  # pixel splitting: not whole px
    rate = 20.0 + sum(500.0 * np.exp(-0.5 * ((r - c) / 2.0) ** 2) for c in (150, 400, 700))  # counts/px
    return (rng.poisson(rate[:, None] * area, size=(k, n_r, n_eta)) / area).astype(np.float32)


def precision(case: dict) -> dict:
    """The RunOutputs keywords of a precision-bounded case: its fraction and the noise model of
    :func:`counted_cakes` (a bin's value is counts over its area: variance value / area), every value rounded."""
    if not case.get("cake_noise_fraction"):
        return {}
    r = 10.5 + np.arange(case["n_r"], dtype=np.float64)
    g = np.broadcast_to((case["n_eta"] / (2 * np.pi * r))[:, None], (case["n_r"], case["n_eta"]))
    return {"cake_noise_fraction": case["cake_noise_fraction"], "noise_model": np.stack([g, np.zeros_like(g)])}


def inputs(case: dict, n: int, seed: int = 0):
    """``n`` (Result, buffers) pairs as a worker sends them, plus the partial omega sums (Write2D 0)."""
    rng = np.random.default_rng(seed)
    n_r, n_eta = case["n_r"], case["n_eta"]
    k = min(n, 64)  # a few distinct arrays, reused: making inputs is not what is timed
    lines = rng.random((k, n_r), dtype=np.float32)
    cakes = None
    if case["write_2d"]:
        cakes = counted_cakes(rng, k, n_r, n_eta) if case.get("counts") else rng.random((k, n_r, n_eta), np.float32)
    fits = rng.normal(size=(k, case["n_peaks"], 7)) if case["n_peaks"] else None
    table = np.array([[80, 40]], dtype=np.int32)
    values = rng.random(40)
    out = []
    for i in range(n):
        j = i % k
        curves = (table, values) if fits is not None else None
        bufs = result_buffers(lines[j], None if cakes is None else cakes[j], None if fits is None else fits[j],
                              curves)
        msg = Result(run_id="bench", frame_index=i, source_id=f"bench:{i}", timestamp=1.7e9 + i, engine="gpu",
                     n_r=n_r, n_eta=n_eta, has_cake=cakes is not None, n_peaks=case["n_peaks"],
                     n_rois=1 if curves else 0, n_curve_points=40 if curves else 0, metadata={"I0": 1.0 * i})
        out.append((msg, bufs))
    partials = []
    if not case["write_2d"]:
        total = rng.random((n_r, n_eta))
        size = group_frames(case, n)
        for g in range((n + size - 1) // size):
            m = min(size, n - g * size)
            partials.append((OmegaPartial(group=g, n_frames=m, n_r=n_r, n_eta=n_eta), [total]))
    return out, partials


def raw_bytes(case: dict, n: int) -> int:
    """The stored values' own bytes, uncompressed: every cake and omega sum in the HDF5, every sum in the zarr.zip
    (lineouts and the rest not counted)."""
    item = 8 if case.get("cake_dtype") == "float64" else 4
    groups = -(-n // group_frames(case, n))
    return item * case["n_r"] * case["n_eta"] * (n + 2 * groups)


def group_frames(case: dict, n: int) -> int:
    """Frames per omega-sum group (``OmegaSumFrames -1``: the whole run)."""
    return case["osf"] if case["osf"] > 0 else n


def run_case(name: str, case: dict, n: int, folder: Path, messages: bool) -> dict:
    p = params_for(case)
    imap = fake_map(case["n_r"], case["n_eta"])
    results, partials = inputs(case, n)
    if messages:  # what arrives on the socket: lists of frames
        results = [encode(m, b) for m, b in results]
        partials = [encode(m, b) for m, b in partials]
    else:  # the sinks alone: the records the writer process makes of each message, made beforehand
        results = [record_from_result(m, b) for m, b in results]
    osf = group_frames(case, n)
    work = Path(tempfile.mkdtemp(dir=folder, prefix=f"writer-{name}-"))
    try:
        # the prebuilt inputs (tens of thousands of live objects) are not the writer's: keep the cyclic GC from
        # rescanning them during the timing (a writer process holds a handful of messages at a time)
        gc.collect()
        gc.freeze()
        t0, c0 = time.perf_counter(), time.process_time()
        out = RunOutputs(work / "out.h5", imap, p, engine_name="gpu", n_peaks=case["n_peaks"],
                         zarr_path=work / "out.zarr.zip", metadata_keys=["I0"], expected_frames=n,
                         sums_from_workers=not case["write_2d"],
                         **({"cake_dtype": case["cake_dtype"]} if "cake_dtype" in case else {}),
                         **precision(case))
        for i, item in enumerate(results):
            if messages:  # as writer/process.py does with each message
                msg, bufs = decode(item)
                item = record_from_result(msg, bufs)
            out.append(item)
            if partials and (i + 1) % osf == 0:
                pm, pb = decode(partials[i // osf]) if messages else partials[i // osf]
                out.add_partial(pm.group, pm.n_frames, np.frombuffer(pb[0], "<f8").reshape(pm.n_r, pm.n_eta))
            if (i + 1) % 500 == 0:
                out.save()
        if partials and n % osf:
            pm, pb = decode(partials[-1]) if messages else partials[-1]
            out.add_partial(pm.group, pm.n_frames, np.frombuffer(pb[0], "<f8").reshape(pm.n_r, pm.n_eta))
        t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
        out.close(run_complete=True)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = sum(f.stat().st_size for f in work.iterdir() if f.is_file())
        sizes = {f.name: f.stat().st_size for f in work.iterdir() if f.is_file()}
    finally:
        gc.unfreeze()
        shutil.rmtree(work, ignore_errors=True)
    return {"case": name, "timed": "messages" if messages else "sinks", "frames": n, "seconds": round(seconds, 3),
            "frames_per_s": round(n / seconds, 1), "run_s": round(t_run, 3), "run_cpu_s": round(c_run, 3),
            "steady_frames_per_s": round(n / t_run, 1), "close_s": round(seconds - t_run, 3), "cpu_s": round(cpu, 3),
            "frames_per_cpu_s": round(n / cpu, 1), "target_per_s": case["target"],
            "meets_target": n / seconds >= case["target"], "bytes_written": size,
            "MB_per_s": round(size / seconds / 1e6, 1), "bytes_per_frame": round(size / n),
            "bytes_per_frame_h5": round(sizes.get("out.h5", 0) / n),
            "bytes_per_frame_zarr": round(sizes.get("out.zarr.zip", 0) / n),
            "compression": round(raw_bytes(case, n) / size, 2) if case["write_2d"] else None,
            "omega_groups": out.counters["omega_groups"],
            "zarr_published": out.counters["zarr_published"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=0, help="frames per case (default 40,000 lineouts, 6,000 cakes)")
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary output files")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case and way; the best is reported")
    ap.add_argument("--note", default="", help="what to know about the machine or the run, kept in the JSON")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases to run (default: all)")
    args = ap.parse_args()
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}")
    import zarr  # imported once, as the writer process does at start, not inside the timing

    rows = []
    for name, case in CASES.items():
        if name not in args.cases.split(","):
            continue
        n = args.frames or (6000 if name == "cakes" else 2000 if name.startswith("cakes-") else 40000)
        for messages in (False, True):
            best = max((run_case(name, case, n, Path(args.dir), messages) for _ in range(args.repeat)),
                       key=lambda r: r["frames_per_s"])
            rows.append(best)
    print(f"{'case':16} {'timed':9} {'frames':>7} {'run s':>6} {'steady/s':>9} {'close s':>8} {'total/s':>8} "
          f"{'cpu s':>6} {'frames/cpu-s':>12} {'target':>7} {'ok':>4} {'MB/s':>6} {'bytes/frame':>11} {'ratio':>5}")
    for r in rows:
        ratio = f"{r['compression']:5.2f}" if r["compression"] else f"{'-':>5}"
        print(f"{r['case']:16} {r['timed']:9} {r['frames']:7d} {r['run_s']:6.2f} {r['steady_frames_per_s']:9.0f} "
              f"{r['close_s']:8.2f} {r['frames_per_s']:8.0f} {r['cpu_s']:6.2f} {r['frames_per_cpu_s']:12.0f} "
              f"{r['target_per_s']:7d} {'yes' if r['meets_target'] else 'NO':>4} {r['MB_per_s']:6.1f} "
              f"{r['bytes_per_frame']:11d} {ratio}")
    import h5py

    result = {
        "benchmark": "writer",
        "what": "RunOutputs (the writer's sinks) alone, and with the per-message decode, from pre-built inputs; "
                "save every 500 frames; time includes close",
        "cases": CASES,
        "machine": {"hostname": args.machine, "nproc": os.cpu_count(), "sched_cpus": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "numpy": np.__version__, "h5py": h5py.__version__,
                    "hdf5": h5py.version.hdf5_version, "zarr": zarr.__version__, "platform": platform.platform(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())},
        "runs": rows,
    }
    if args.note:
        result["note"] = args.note
    path = HERE / "results" / f"writer-{args.machine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

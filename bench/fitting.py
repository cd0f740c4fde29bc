"""Benchmark: per-frame peak fitting: nlopt on one CPU core, the batched LM in NumPy, and on a GPU the
batched LM kernel and the daemon end to end with 3 peaks per frame.

1. CPU, one core (BLAS/OpenMP threads pinned to 1, the process pinned to one CPU where possible): ``FrameFitter``
   with engine nlopt on synthetic lineouts (``ringstream.fitting.synthetic``: single, overlapping double and triple
   peaks, Γ 2–20 bins, μ 0–1, flat and sloped backgrounds, Poisson noise at SNR 100), the whole per-frame path
   (planning, L-BFGS, fallbacks, rows and curves). peak fits/s = peak rows fitted / CPU seconds. The same frames with
   engine "lm" (the kernel's algorithm in NumPy, all ROIs of a batch of frames at once) for comparison.
2. ``--gpu``: (a) the kernel alone: B ROIs already packed and on the device, ``GpuFitter.fit_device`` timed with a
   device synchronize (best of 5); peak fits/s = B · peaks per ROI / s; (b) the whole ``FrameFitter(engine="gpu")``
   path (plan, pack, copy, kernel, copy back, rows) on batches of frames; (c) agreement with nlopt on the same
   lineouts (max |ΔRcen| in bins, max relative ΔImax).
3. ``--micro``: the host-side cost of fitting per frame, as a worker pays it: ``WorkerFitting.fit_frames`` (the real
   path: FrameHeaders with ``peak_seq`` 0, float64 lineouts of the daemon's 3-ring case, 990 bins) on batches of 8
   (the GPU engine's default batch, so what a GPU worker fits per call), 16 and 64 frames, µs per frame (best of 3), once with the fast path (fixed peak list: cached ROI layout, planning,
   packing, failure tests and assembly vectorized over the batch) and once with the per-frame planning
   (``FrameFitter(fast_path=False)``). Solvers: ``lm`` (the NumPy LM, whose solve costs CPU), ``host only`` (the
   solver replaced by a replay of the lm results recorded on the same batches: everything but the solve, i.e. what
   the worker's host pays around the GPU kernel), ``lm solve`` (``fit_batch`` alone on the same packed batches) and
   with ``--gpu`` the ``gpu`` engine (kernel, copies and host work). Writes ``fitting-micro-<machine>.json``.
4. ``--daemon N``: ``ringstream run --engine gpu`` on N simulated PILATUS 2M frames (configs/demo-pilatus2m.txt), once
   without fitting and once with 3 PeakLocation lines (3 of the simulated rings); frames/s from the run's own final
   line and whether every frame was written (no growing backlog: the run with fitting keeps the rate without).

Prints a table and writes ``bench/results/fitting-<machine>.json`` (``--name`` sets the machine name; default "vm",
or the GPU's name with ``--gpu``).

Run: ``python bench/fitting.py [--frames 300] [--gpu] [--daemon 3000] [--out DIR]``;
``python bench/fitting.py --micro [--gpu]`` for the host-side micro-benchmark alone.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ringstream.fitting.frame import FrameFitter  # noqa: E402
from ringstream.fitting.synthetic import make_case  # noqa: E402
from ringstream.params import parse_params  # noqa: E402

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"
X = np.arange(200.0)
COUNTS = re.compile(r"finished: received (\d+), integrated (\d+), written (\d+), rejected (\d+), dropped (\d+) "
                    r"\([^)]*\), worker restarts \d+, writer restarts \d+, ingest restarts \d+, re-sent \d+, ([\d.]+) s, ([\d.]+) frames/s")


def cases(n: int, kind: str, snr: float = 100.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [make_case(rng, kind, snr=snr) for _ in range(n)]


def fitter_for(case, engine: str, gpu=None) -> FrameFitter:
    p = parse_params(BASE + "".join(f"PeakLocation {c:.2f}\n" for c in case.centres))
    return FrameFitter(p, X, engine=engine, gpu=gpu)


def cpu_rate(frames, engine: str, batch: int = 1, gpu=None) -> dict:
    """Fit ``frames`` (cases of one kind: same peak count) with ``engine``; rates per CPU second and wall second."""
    ff = fitter_for(frames[0], engine, gpu)
    lists = [tuple(c.centres) for c in frames]
    ys = [c.y for c in frames]
    c0, w0 = time.process_time(), time.perf_counter()
    out = []
    for i in range(0, len(frames), batch):
        out += ff.fit_many(ys[i:i + batch], lists[i:i + batch])
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    peaks = sum(len(c.centres) for c in frames)
    ok = sum(int(np.isfinite(f.fit[:, 0]).sum()) for f in out)
    return {"engine": engine, "frames": len(frames), "peaks": peaks, "rows_ok": ok,
            "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "peak_fits_per_cpu_s": round(peaks / cpu, 1),
            "peak_fits_per_s": round(peaks / wall, 1), "frames_per_s": round(len(frames) / wall, 1),
            "fallback_neldermead": ff.counters["fit_fallback_neldermead"],
            "fallback_nlopt": ff.counters["fit_fallback_nlopt"], "fits": out}


def agreement(a, b) -> dict:
    ra = np.stack([f.fit for f in a])
    rb = np.stack([f.fit for f in b])
    d_rc = np.abs(ra[..., 3] - rb[..., 3])
    d_i = np.abs(ra[..., 0] / rb[..., 0] - 1)
    return {"max_abs_dRcen_bins": float(np.nanmax(d_rc)), "max_rel_dImax": float(np.nanmax(d_i)),
            "rows_compared": int(np.isfinite(ra[..., 0] + rb[..., 0]).sum()),
            "rows_beyond_0.001bin_or_0.1pct": int(np.sum((d_rc > 1e-3) | (d_i > 1e-3)))}


def kernel_rate(gpu, kind: str, n_rois: int) -> dict:
    """The kernel alone on ``n_rois`` packed ROIs (copies of 1024 distinct cases), best of 5."""
    import cupy as cp

    from ringstream.fitting.batched import CONVERGED, pack

    base = cases(1024, kind, seed=3)
    probs, xs, ys = [], [], []
    for c in base:
        ff = fitter_for(c, "lm")
        plan = ff.plan(c.y, None, "")
        for pr in plan.problems:
            probs.append(pr)
            xs.append(X[pr.start:pr.stop])
            ys.append(c.y[pr.start:pr.stop])
    big, res, best = time_kernel(gpu, pack(probs, xs, ys), n_rois)
    status = cp.asnumpy(res["status"])
    peaks_per_roi = int(big.n_peaks.mean().round())
    return {"kind": kind, "rois": n_rois, "points_per_roi": int(big.npts.mean()), "peaks_per_roi": peaks_per_roi,
            "kernel_s": round(best, 5), "roi_fits_per_s": round(n_rois / best, 1),
            "peak_fits_per_s": round(n_rois * peaks_per_roi / best, 1),
            "converged_fraction": float(np.mean(status == CONVERGED)),
            "iterations_mean": float(cp.asnumpy(res["iterations"]).mean())}


RING_X = np.arange(990.0) + 10.5
RING_PARAMS = (BASE.replace("RMax 200", "RMax 1000").replace("RMin 0", "RMin 10")
               + "PeakLocation 206.1\nPeakLocation 402.8\nPeakLocation 600.3\n")


def ring_lineouts(frames: int, seed: int = 0) -> list[np.ndarray]:
    """The daemon's case: lineouts of 990 bins (R 10.5 .. 999.5 px) with 3 separate rings at 206.1, 402.8 and
    600.3 px (Γ 3.5 bins, SNR 300) on a background of 100 counts."""
    rng = np.random.default_rng(seed)
    ys = []
    for _ in range(frames):
        y = np.full(990, 100.0)
        for c in (206.1, 402.8, 600.3):
            cs = make_case(rng, "single", snr=300, gamma=3.5, slope=False, n_bins=990)
            y += np.roll(cs.y - cs.truth[0], int(round(c - 10.5 - cs.centres[0])))
        ys.append(y)
    return ys


def per_frame_latency(engine: str, gpu=None, batch: int = 8, frames: int = 96) -> dict:
    """The daemon's case (:func:`ring_lineouts`), fitted ``batch`` frames per call as a worker does (the GPU worker
    integrates up to 8 frames per call); ms per frame, wall clock."""
    ys = ring_lineouts(frames)
    x = RING_X
    p = parse_params(RING_PARAMS)
    ff = FrameFitter(p, x, engine=engine, gpu=gpu)
    ff.fit_many(ys[:batch])  # warm-up (kernel compilation)
    t0 = time.perf_counter()
    for i in range(0, frames, batch):
        ff.fit_many(ys[i:i + batch])
    dt = (time.perf_counter() - t0) / frames
    return {"engine": engine, "frames_per_call": batch, "peaks_per_frame": 3, "ms_per_frame": round(dt * 1e3, 3),
            "frames_per_s": round(1 / dt, 1), "fallback_nlopt": ff.counters["fit_fallback_nlopt"],
            "rows_nan": ff.counters["fit_rows_nan"]}


class ReplaySolver:
    """A stand-in for the GPU fitter (``fit_packed``) that costs no solve: while ``recording`` it runs the NumPy LM
    (``fit_batch``) and keeps each batch's result; afterwards it hands the kept results back in the same order. The
    fitter then does all its host work (planning, packing, failure tests, nlopt refits of failed ROIs, assembly) on
    real results. Bench only: the numbers it gives are labelled "host only"."""

    def __init__(self) -> None:
        self.recording = True
        self.kept: list[dict] = []
        self.packed: list = []
        self.next = 0

    def fit_packed(self, pk) -> dict:
        from ringstream.fitting.batched import fit_batch

        if self.recording:
            res = fit_batch(pk)
            self.kept.append(res)
            self.packed.append(pk)
            return res
        res = self.kept[self.next % len(self.kept)]
        self.next += 1
        return {k: v.copy() for k, v in res.items()}


def _time_calls(calls, repeat: int = 3) -> float:
    """Best wall time (s) of running every call of ``calls`` in turn, over ``repeat`` rounds."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for c in calls:
            c()
        best = min(best, time.perf_counter() - t0)
    return best


def micro(gpu=None, batches=(8, 16, 64), frames: int = 512, repeat: int = 3) -> list[dict]:
    """The host-side micro-benchmark (module docstring, item 3): µs per frame of ``WorkerFitting.fit_frames``."""
    from ringstream.fitting.batched import fit_batch
    from ringstream.protocol import FrameHeader
    from ringstream.workers.fitting import WorkerFitting

    params = parse_params(RING_PARAMS)
    ys = ring_lineouts(frames, seed=5)  # float64, as the engines return them
    headers = [FrameHeader(run_id="bench", frame_index=k, shape=(1, 1), dtype="<i4", metadata={"peak_seq": 0})
               for k in range(frames)]
    rows = []
    for batch in batches:
        spans = [(i, min(frames, i + batch)) for i in range(0, frames, batch)]
        for fast in (False, True):
            path = "fast" if fast else "per-frame"

            def worker(engine, solver, fast=fast):
                return WorkerFitting(FrameFitter(params, RING_X, engine=engine, gpu=solver, fast_path=fast),
                                     None, "bench")

            def calls(wf, spans=spans):
                return [lambda a=a, b=b: wf.fit_frames(headers[a:b], ys[a:b]) for a, b in spans]

            runs = []
            lm = worker("lm", None)
            runs.append(("lm", lm, _time_calls(calls(lm), repeat)))
            replay = ReplaySolver()
            host = worker("gpu", replay)
            for c in calls(host):  # record the lm results of these very batches
                c()
            replay.recording = False
            runs.append(("host only (solve replayed)", host, _time_calls(calls(host), repeat)))
            solve = _time_calls([lambda pk=pk: fit_batch(pk) for pk in replay.packed], repeat)
            runs.append(("lm solve alone (fit_batch)", None, solve))
            if gpu is not None:
                g = worker("gpu", gpu)
                calls(g)[0]()  # warm-up: kernel compilation, memory pool
                runs.append(("gpu", g, _time_calls(calls(g), repeat)))
            for solver, wf, dt in runs:
                c = wf.snapshot() if wf is not None else {}
                rows.append({"batch": batch, "path": path, "solver": solver, "frames": frames,
                             "us_per_frame": round(dt / frames * 1e6, 2),
                             "fast_path_frames": c.get("fit_fast_frames"),
                             "fallback_nlopt": c.get("fit_fallback_nlopt"), "rows_nan": c.get("fit_rows_nan")})
    return rows


def ring_radii(param_file: Path, n: int = 3) -> list[float]:
    """R (px) of the first ``n`` simulated rings (20/40/60 % of the 2θ span of [RMin, RMax], 2θ = atan(R·px/Lsd))."""
    p = parse_params(param_file.read_text(), param_file)
    t = [math.atan(r * p.px / p.Lsd) for r in (p.RMin, p.RMax)]
    return [p.Lsd * math.tan(t[0] + f * (t[1] - t[0])) / p.px for f in (0.2, 0.4, 0.6, 0.8)[:n]]


#: a worker's last line with fitting: "worker-0: done: integrated N, rejected M, fitted in C calls (F frames a call)"
FIT_CALLS = re.compile(r"worker-\d+: done: .*fitted in \d+ calls \(([0-9.]+) frames a call\)")


def daemon_run(frames: int, workers: int, peaks: list[float], omega_sum_frames: int | None = 1,
               source: str = "simulated", zarr: bool = True, settings: str = "") -> dict:
    """The real ``ringstream run --engine gpu`` on ``frames`` PILATUS 2M frames: ``source`` "simulated" (the
    simulated detector, computed by the ingest) or "replay" (frames of that detector saved as an .npy stack of at
    least 32, and at least twice the last-level cache, replayed in a loop: the ingest only copies, so the source does
    not limit the rate); ``omega_sum_frames`` None
    keeps the demo parameter file's OmegaSumFrames, ``zarr`` False passes ``--no-zarr``; ``settings`` names them in
    the row."""
    exe = Path(sys.executable).with_name("ringstream")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ringstream.daemon.cli"]
    src = REPO / "configs" / "demo-pilatus2m.txt"
    with tempfile.TemporaryDirectory() as d:
        pf = Path(d) / "setup.txt"
        pf.write_text(src.read_text() + "".join(f"PeakLocation {r:.3f}\n" for r in peaks)
                      + ("" if omega_sum_frames is None else f"OmegaSumFrames {omega_sum_frames}\n"))
        if omega_sum_frames is None:
            omega_sum_frames = int(parse_params(pf.read_text(), pf).OmegaSumFrames)
        out = Path(d) / "bench.h5"
        if source == "replay":
            from workload import frames_to_exceed, last_level_cache

            from ringstream.ingest.simulated import SimulatedSource
            from ringstream.params import load_params

            sim = SimulatedSource(load_params(pf), n_frames=32, seed=0, dtype="int32", precompute=False)
            n_stack = frames_to_exceed(sim.mean.size * 4, last_level_cache(), minimum=32)
            np.save(Path(d) / "stack.npy", np.stack([sim.make_frame(k) for k in range(n_stack)]))
            feed = ["--replay", str(Path(d) / "stack.npy"), "--frames", str(frames)]
        else:
            feed = ["--simulate", str(frames)]
        cmd += ["run", "--param-file", str(pf), *feed, "--workers", str(workers), "--engine",
                "gpu", "--output-h5", str(out), "--control", "auto", "--log-level", "INFO",
                *([] if zarr else ["--no-zarr"])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
        fit_rows = None
        rate = None
        if out.exists():
            import h5py

            with h5py.File(out, "r") as f:
                ts = f["/entry/data/timestamp"][()]
            rate = round((ts.size - 1) / float(ts[-1] - ts[0]), 1) if ts.size > 1 and ts[-1] > ts[0] else None
        if peaks and (Path(d) / "fit.bin").exists():
            fit = np.fromfile(Path(d) / "fit.bin").reshape(-1, len(peaks), 7)
            fit_rows = {"frames": int(fit.shape[0]), "rows_ok": int(np.isfinite(fit[..., 0]).sum()),
                        "rcen_mean": [round(float(v), 3) for v in np.nanmean(fit[..., 3], axis=0)]}
    m = COUNTS.search(proc.stderr)
    if proc.returncode != 0 or not m:
        return {**({"settings": settings} if settings else {}), "peaks": peaks, "workers": workers,
                "omega_sum_frames": omega_sum_frames, "zarr": zarr,
                "error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    return {**({"settings": settings} if settings else {}), "peaks": [round(r, 3) for r in peaks],
            "workers": workers, "frames": frames, "source": source, "omega_sum_frames": omega_sum_frames,
            "zarr": zarr,
            "written": int(m.group(3)), "run_s": float(m.group(6)), "frames_per_s": float(m.group(7)),
            "sustained_fps": rate,
            # each worker's frames per fit call (its "done" line): few frames a call cost more per frame
            "frames_per_fit_call": [float(v) for v in FIT_CALLS.findall(proc.stderr)],
            "fit_bin": fit_rows}


def machine(gpu_name: str | None) -> dict:
    import nlopt
    import scipy

    info = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "nlopt": getattr(nlopt, "__version__", "?"), "nproc": os.cpu_count(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if gpu_name:
        import cupy

        info.update(device=gpu_name, cupy=cupy.__version__)
    return info





def time_kernel(gpu, pk, n_rois: int):
    """The batch ``pk`` (a :class:`~ringstream.fitting.batched.Packed`) repeated to ``n_rois`` ROIs (``big``),
    fitted on the device 6 times: ``(big, the last result, the best time of the last 5)`` (the first includes the
    kernel's compilation)."""
    import cupy as cp

    from ringstream.fitting.batched import Packed

    reps = int(math.ceil(n_rois / pk.size))
    big = Packed(*(np.concatenate([getattr(pk, f)] * reps)[:n_rois] for f in
                   ("x", "y", "npts", "p", "lo", "hi", "xmid", "hw", "n_peaks")), model=pk.model)
    times = []
    for _ in range(6):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        res = gpu.fit_device(big)
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return big, res, min(times[1:])

def save_result(result: dict, path: Path) -> None:
    """Write a benchmark's ``result`` as JSON at ``path`` (its folder made) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")

def one_core_and_gpu(want_gpu: bool, name: str = "") -> tuple[object | None, str]:
    """Pin this process to one CPU (the CPU figures are per core), make the GPU fitter when ``want_gpu``, and the
    machine's name for the results file (``name``, else the GPU's, else "vm")."""
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        except OSError:
            pass
    gpu = None
    if want_gpu:
        from ringstream.fitting.gpu_fitter import GpuFitter

        gpu = GpuFitter()
    return gpu, name or (re.sub(r"[^A-Za-z0-9]+", "-", gpu.device_name).strip("-") if gpu else "vm")

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="synthetic frames per kind on the CPU (300)")
    ap.add_argument("--gpu", action="store_true", help="also the GPU kernel and the GPU FrameFitter path")
    ap.add_argument("--rois", type=int, default=1 << 18, help="ROIs per kernel launch for --gpu (262144)")
    ap.add_argument("--micro", action="store_true", help="only the host-side micro-benchmark (µs/frame)")
    ap.add_argument("--micro-frames", type=int, default=512, help="frames per batch size for --micro (512)")
    ap.add_argument("--daemon", type=int, default=0, help="also the daemon end to end on N frames (GPU engine)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--name", default="", help="machine name in the JSON file name")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    gpu, name = one_core_and_gpu(args.gpu, args.name)
    if args.micro:
        rows = micro(gpu, frames=args.micro_frames)
        print(f"{'batch':>5} {'path':10} {'solver':28} {'us/frame':>9} {'fast frames':>11} "
              f"{'nlopt refits (all rounds)':>25}")
        for r in rows:
            print(f"{r['batch']:5d} {r['path']:10} {r['solver']:28} {r['us_per_frame']:9.2f} "
                  f"{'' if r['fast_path_frames'] is None else r['fast_path_frames']:>11} "
                  f"{'' if r['fallback_nlopt'] is None else r['fallback_nlopt']:>25}")
        out = Path(args.out) / f"fitting-micro-{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": "fitting-micro", "case": "3 rings, 990 bins, WorkerFitting.fit_frames, float64 "
                  "lineouts; us_per_frame = best of 3 wall times / frames", "machine": machine(
                      gpu.device_name if gpu else None), "micro": rows}
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    result = {"benchmark": "fitting", "machine": machine(gpu.device_name if gpu else None), "cpu": [], "gpu": []}
    if gpu is not None:
        for k in (1, 2, 3):  # compile the kernels before anything is timed
            fitter_for(cases(1, ("single", "double", "triple")[k - 1])[0], "gpu", gpu).fit(
                cases(1, ("single", "double", "triple")[k - 1])[0].y)
    print(f"{'kind':8} {'engine':7} {'frames':>6} {'peaks':>6} {'ok':>6} {'peak fits/CPU s':>16} {'frames/s':>9} "
          f"{'NM fallbacks':>12}")
    for kind in ("single", "double", "triple"):
        frames = cases(args.frames, kind)
        runs = {}
        for engine, batch in (("nlopt", 1), ("lm", 64)):
            r = cpu_rate(frames, engine, batch)
            runs[engine] = r.pop("fits")
            r["kind"] = kind
            result["cpu"].append(r)
            print(f"{kind:8} {engine:7} {r['frames']:6d} {r['peaks']:6d} {r['rows_ok']:6d} "
                  f"{r['peak_fits_per_cpu_s']:16.1f} {r['frames_per_s']:9.1f} {r['fallback_neldermead']:12d}")
        result["cpu"][-1]["agreement_with_nlopt"] = agreement(runs["lm"], runs["nlopt"])
        if gpu is not None:
            g = cpu_rate(frames, "gpu", batch=256, gpu=gpu)
            g["kind"] = kind
            g["agreement_with_nlopt"] = agreement(g.pop("fits"), runs["nlopt"])
            result["gpu"].append({"path": "FrameFitter(engine=gpu), 256 frames per call", **g})
            print(f"{kind:8} {'gpu':7} {g['frames']:6d} {g['peaks']:6d} {g['rows_ok']:6d} "
                  f"{'(wall) ' + str(g['peak_fits_per_s']):>16} {g['frames_per_s']:9.1f} "
                  f"{g['fallback_nlopt']:12d}  vs nlopt {g['agreement_with_nlopt']}")
    if gpu is not None:
        print(f"\n{'kernel':8} {'ROIs':>8} {'pts':>4} {'peaks':>5} {'s':>9} {'peak fits/s':>14} {'converged':>9}")
        for kind in ("single", "double", "triple"):
            k = kernel_rate(gpu, kind, args.rois)
            result["gpu"].append({"path": "kernel only (packed, on the device)", **k})
            print(f"{kind:8} {k['rois']:8d} {k['points_per_roi']:4d} {k['peaks_per_roi']:5d} {k['kernel_s']:9.5f} "
                  f"{k['peak_fits_per_s']:14.1f} {k['converged_fraction']:9.4f}")
    print(f"\n{'per-frame latency':18} {'engine':7} {'frames/call':>11} {'ms/frame':>9} {'frames/s':>9}")
    result["latency"] = []
    for engine, batch in (("nlopt", 1), ("lm", 1), ("lm", 8)) + ((("gpu", 1), ("gpu", 8)) if gpu else ()):
        r = per_frame_latency(engine, gpu, batch)
        result["latency"].append(r)
        print(f"{'3 rings, 990 bins':18} {engine:7} {batch:11d} {r['ms_per_frame']:9.3f} {r['frames_per_s']:9.1f}")
    if args.daemon:
        radii = ring_radii(REPO / "configs" / "demo-pilatus2m.txt")
        result["daemon"] = [daemon_run(args.daemon, args.workers, []), daemon_run(args.daemon, args.workers, radii)]
        for d in result["daemon"]:
            print("daemon:", d, flush=True)
    save_result(result, Path(args.out) / f"fitting-{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the TCH model (``[fit] model = "tch"``) against the pv model, the same fitters, the same ROI sizes.

1. CPU, one core (BLAS/OpenMP threads pinned to 1): TCH cases (``ringstream.fitting.synthetic.make_tch_case``:
   single and overlapping double peaks on 2θ, 0.01° bins, ROIs of ~45 bins, Poisson noise at SNR 300) fitted one ROI
   at a time with nlopt (``fit_roi``) and in one batch with the NumPy LM (``fit_batch``); peak fits per CPU second.
   The pv model on pv cases of the same peak counts and ROI size alongside, for the cost of the model itself.
2. ``--gpu``: the kernel alone (``GpuFitter.fit_device``, ROIs packed and on the device, best of 5 after a warm-up
   launch) for both models on ``--rois`` ROIs (copies of 1024 distinct cases); peak fits/s, the fraction converged;
   and the agreement of the GPU with nlopt on the 1024 TCH ROIs of each kind (max |Δcentre| in deg, max relative
   Δarea: the acceptance is 1e-4° and 0.1 %).

Prints a table and writes ``bench/results/fitting-tch-<machine>.json`` (``--name`` sets the machine; default "vm",
or the GPU's name with ``--gpu``).

Run: ``python bench/fitting_tch.py [--rois-cpu 200] [--gpu [--rois 262144]] [--out DIR]``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fitting import one_core_and_gpu, save_result, time_kernel  # noqa: E402  (bench/fitting.py)

from ringstream.fitting import tch  # noqa: E402
from ringstream.fitting.batched import CONVERGED, fit_batch, pack  # noqa: E402
from ringstream.fitting.nlopt_fitter import fit_roi  # noqa: E402
from ringstream.fitting.peaks import initial_problem  # noqa: E402
from ringstream.fitting.synthetic import make_case, make_tch_case  # noqa: E402

KINDS = ("single", "double")
SNR = 300.0


def problems(model: str, kind: str, n: int, seed: int = 3):
    """``n`` ROIs of one kind: (problems, xs, ys). tch: make_tch_case's whole 120-bin lineout is cut to the ROI of
    ±20 bins around its peaks; pv: make_case with Γ 4 bins (the TCH cases' few bins) and the same padding."""
    rng = np.random.default_rng(seed)
    out = ([], [], [])
    for _ in range(n):
        if model == "tch":
            c = make_tch_case(rng, kind, snr=SNR)
            dx = float(c.x[1] - c.x[0])
            start, stop = (int(round((c.xmid + s * c.hw - c.x[0]) / dx)) for s in (-1, 1))
            bins = [int(round((v - c.x[0]) / dx)) for v in c.centres]
            prob = tch.initial_problem(c.x, c.y, start, stop + 1, list(range(len(bins))), bins)
        else:
            c = make_case(rng, kind, snr=SNR, gamma=4.0)
            start, stop = int(c.xmid - c.hw), int(c.xmid + c.hw)
            bins = [int(round(v)) for v in c.centres]
            prob = initial_problem(c.x, c.y, start, stop + 1, list(range(len(bins))), bins)
        for lst, v in zip(out, (prob, c.x[prob.start:prob.stop], c.y[prob.start:prob.stop]), strict=True):
            lst.append(v)
    return out


def cpu_rates(model: str, kind: str, n: int) -> list[dict]:
    probs, xs, ys = problems(model, kind, n)
    peaks = sum(len(p.slots) for p in probs)
    rows = []
    c0 = time.process_time()
    fits = [fit_roi(x, y, p) for x, y, p in zip(xs, ys, probs, strict=True)]
    cpu = time.process_time() - c0
    rows.append({"model": model, "kind": kind, "engine": "nlopt", "rois": n, "peaks": peaks,
                 "points_per_roi": round(float(np.mean([x.size for x in xs])), 1),
                 "ok": int(sum(f.ok for f in fits)), "neldermead": int(sum(f.fallback for f in fits)),
                 "cpu_s": round(cpu, 3), "peak_fits_per_cpu_s": round(peaks / cpu, 1)})
    pk = pack(probs, xs, ys)
    c0 = time.process_time()
    res = fit_batch(pk)
    cpu = time.process_time() - c0
    rows.append({"model": model, "kind": kind, "engine": "lm (NumPy, one batch)", "rois": n, "peaks": peaks,
                 "points_per_roi": rows[0]["points_per_roi"], "ok": int(np.sum(res["status"] == CONVERGED)),
                 "neldermead": 0, "cpu_s": round(cpu, 3), "peak_fits_per_cpu_s": round(peaks / cpu, 1)})
    return rows


def kernel_rate(gpu, model: str, kind: str, n_rois: int) -> dict:
    import cupy as cp

    probs, xs, ys = problems(model, kind, 1024)
    pk = pack(probs, xs, ys)
    big, res, best = time_kernel(gpu, pk, n_rois)
    per_roi = int(big.n_peaks.mean().round())
    row = {"model": model, "kind": kind, "rois": n_rois, "points_per_roi": int(big.npts.mean()),
           "peaks_per_roi": per_roi, "kernel_s": round(best, 5), "peak_fits_per_s": round(n_rois * per_roi / best, 1),
           "converged_fraction": float(np.mean(cp.asnumpy(res["status"]) == CONVERGED)),
           "iterations_mean": float(cp.asnumpy(res["iterations"]).mean())}
    if model == "tch":  # the acceptance: the GPU and nlopt on the same 1024 ROIs
        got = gpu.fit_packed(pk)
        dc, da = 0.0, 0.0
        for i, (x, y, prob) in enumerate(zip(xs, ys, probs, strict=True)):
            rf = fit_roi(x, y, prob)
            p = got["p"][i, :prob.p0.size]
            dc = max(dc, float(np.max(np.abs(p[3::4] - rf.p[3::4]))))
            da = max(da, float(np.max(np.abs(p[2::4] / rf.p[2::4] - 1))))
        row.update(gpu_vs_nlopt_max_dcenter_deg=dc, gpu_vs_nlopt_max_rel_darea=da)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois-cpu", type=int, default=200, help="ROIs per kind and model on the CPU (200)")
    ap.add_argument("--gpu", action="store_true", help="also the kernels on the GPU and GPU-vs-nlopt agreement")
    ap.add_argument("--rois", type=int, default=1 << 18, help="ROIs per kernel launch for --gpu (262144)")
    ap.add_argument("--name", default="", help="machine name in the JSON file name")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    gpu, name = one_core_and_gpu(args.gpu, args.name)
    result = {"benchmark": "fitting-tch", "snr": SNR,
              "machine": {"python": platform.python_version(), "numpy": np.__version__, "nproc": os.cpu_count(),
                          "platform": platform.platform(), **({"device": gpu.device_name} if gpu else {}),
                          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
              "cpu": [], "gpu": []}
    print(f"{'model':5} {'kind':7} {'engine':22} {'ROIs':>5} {'pts':>5} {'ok':>5} {'NM':>4} {'peak fits/CPU s':>16}")
    for kind in KINDS:
        for model in ("pv", "tch"):
            for r in cpu_rates(model, kind, args.rois_cpu):
                result["cpu"].append(r)
                print(f"{model:5} {kind:7} {r['engine']:22} {r['rois']:5d} {r['points_per_roi']:5.0f} {r['ok']:5d} "
                      f"{r['neldermead']:4d} {r['peak_fits_per_cpu_s']:16.1f}")
    if gpu is not None:
        print(f"\n{'model':5} {'kind':7} {'ROIs':>8} {'pts':>4} {'s':>9} {'peak fits/s':>14} {'converged':>9} "
              f"{'GPU-nlopt dc (deg), darea':>28}")
        for kind in KINDS:
            for model in ("pv", "tch"):
                k = kernel_rate(gpu, model, kind, args.rois)
                result["gpu"].append(k)
                agree = (f"{k['gpu_vs_nlopt_max_dcenter_deg']:.2e}, {k['gpu_vs_nlopt_max_rel_darea']:.2e}"
                         if model == "tch" else "")
                print(f"{model:5} {kind:7} {k['rois']:8d} {k['points_per_roi']:4d} {k['kernel_s']:9.5f} "
                      f"{k['peak_fits_per_s']:14.1f} {k['converged_fraction']:9.4f} {agree:>28}")
    save_result(result, Path(args.out) / f"fitting-tch-{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the daemon on 1 GPU and on 2 GPUs of one host, in the same call (issue 21), on a two-GPU machine.

Cases (``--cases``): raw PILATUS 2M int32 and EIGER2 4M uint16 frames replayed as they are, and EIGER2 4M uint16
frames replayed compressed (``--replay-codec bslz4``: the frames travel compressed through the ring and the GPU
workers decode them; issue 17). The frames are distinct Poisson draws of the simulated pattern
(``bench/gpu_decode.py``'s ``pattern_frames``, counts scale 1), the geometries ``bench/gpu_engine.py``'s.

For each case, the daemon end to end (``ringstream run --engine gpu``, the fast-path settings: ``OmegaSumFrames
-1``, no zarr.zip; ``bench/gpu_engine.py``'s ``daemon_run``) with ``--gpus 0`` and with ``--gpus 0,1``, the same
number of workers per GPU (``--workers-per-gpu``), [workers] numa_affinity auto; frames/s (the run's own and the
sustained rate between the first and last frame), frames lost (must be 0) and the ratio 2 GPUs / 1 GPU (the issue's
target: >= 1.7 for the compressed EIGER2 4M frames). While each daemon runs, every process's CPU and its busiest
thread's are sampled (``bench/cpu_sampler.py``): a role whose busiest thread is near 100 % of a core is the host-side
bound that limits the run, reported as ``bound_by``. Then the engine alone on each GPU (``submit`` / ``collect``
with every stream busy, the bench pinned to the GPU's NUMA node as a worker is): raw frames from pinned memory and,
for the compressed case, pinned compressed bytes.

Refuses with one line on a machine with fewer than 2 CUDA devices; ``--allow-one`` runs everything on one GPU (the
"2-GPU" daemon then puts its workers on device 0 twice, ``--gpus 0,0``) as a dry run of the script, marked
``dry_run`` in the JSON.

Writes ``<out>/multi_gpu-<GPU name>.json`` (``-dry-run`` added for a dry run) and prints a table. Run::

    python bench/multi_gpu.py [--frames 20000] [--workers-per-gpu 2] [--cases pilatus_raw,eiger_raw,eiger_bslz4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import cpu_sampler  # noqa: E402
import gpu_decode  # noqa: E402
import gpu_engine  # noqa: E402
import workload  # noqa: E402

#: case -> (detector of gpu_engine.GEOMS, replay codec)
CASES = {
    "pilatus_raw": ("pilatus2m_int32", "none"),
    "eiger_raw": ("eiger2_4m_uint16", "none"),
    "eiger_bslz4": ("eiger2_4m_uint16", "bslz4"),
}
#: the issue's target for the compressed case: 2 GPUs >= 1.7 x 1 GPU
TARGET = {"eiger_bslz4": 1.7}
#: a busiest thread at this % of one core or more bounds the run
BOUND_PCT = 85.0


def gpu_count() -> tuple[int, str]:
    """``(CUDA devices CuPy sees, why none)``."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()), ""
    except Exception as exc:  # no CuPy, no driver, no device
        return 0, f" ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"


def roles(summary: dict[str, dict]) -> dict[str, dict]:
    """The sampler's summary by role: ingest, writer, supervisor, each worker (``rs-worker-N``), and the bound: the
    role whose busiest thread is busiest, when it is at ``BOUND_PCT`` or more of a core."""
    out = {}
    for name, s in summary.items():
        role = name[3:] if name.startswith("rs-") else "supervisor" if name == "ringstream" else name
        out[role] = {"cpu_pct": s["cpu_pct_mean"], "busiest_thread_pct": s["busiest_thread_pct_mean"],
                     "busiest_thread_pct_p90": s["busiest_thread_pct_p90"]}
    daemon = {k: v for k, v in out.items() if not k.startswith("python")}  # the bench itself is not a role
    top = max(daemon, key=lambda k: daemon[k]["busiest_thread_pct"], default="")
    bound = top if top and daemon[top]["busiest_thread_pct"] >= BOUND_PCT else "none (the GPUs, or the source's pace)"
    return {"roles": out, "bound_by": bound}


def daemon_case(case: str, n_gpus: int, args, stack: np.ndarray, pfile: Path, dry_run: bool) -> dict:
    """One daemon run of ``case`` on ``n_gpus`` GPUs (device 0 twice in a dry run), its CPU sampled."""
    detector, codec = CASES[case]
    gpus = ",".join("0" if dry_run else str(g) for g in range(n_gpus))
    sampler = cpu_sampler.Sampler(os.getpid(), args.interval).start()
    r = gpu_engine.daemon_run(args.frames, n_gpus * args.workers_per_gpu, in_flight=args.in_flight, gpus=gpus,
                              settings=workload.daemon_settings("fast-path")[0], param_file=pfile, stack=stack,
                              replay_codec=codec)
    r.update(case=case, detector=detector, n_gpus=n_gpus, workers_per_gpu=args.workers_per_gpu,
             cpu=roles(sampler.stop()))
    return r


def engine_alone(cp, cupyx, device: int, imap, stack: np.ndarray, codec: str, total: int) -> dict:
    """The engine on ``device`` alone, the bench pinned to the GPU's NUMA node: frames/s from pinned raw frames
    and, with a ``codec``, from pinned compressed bytes (``gpu_decode.submit_rate``)."""
    from ringstream.engines.cupy_engine import CupyEngine
    from ringstream.engines.topology import pin_process, place_worker

    allowed = os.sched_getaffinity(0)
    placement = place_worker("auto", "gpu", device, f"bench GPU {device}")
    try:
        with cp.cuda.Device(device):
            eng = CupyEngine(imap, device=device, batch=16, n_streams=4)
            raw = cupyx.empty_pinned(stack.shape, stack.dtype)
            raw[...] = stack
            out = {"device": device, "numa_node": placement.node, "pinned_cpus": len(placement.cpus),
                   "raw_fps": round(gpu_decode.submit_rate(eng, list(raw), total))}
            if codec != "none":
                payloads, ratio = gpu_decode.compress(stack, codec)
                items = gpu_decode.pinned_items(cupyx, payloads, codec, stack.shape[1:], stack.dtype)
                out.update(ratio=round(ratio, 2), compressed_fps=round(gpu_decode.submit_rate(eng, items, total)))
            eng.close()
    finally:
        pin_process(allowed)
    return out


def machine(cp, n: int) -> dict:
    from ringstream.engines.topology import Topology, gpu_bus_id

    topo = Topology.from_env()
    gpus = []
    for d in range(n):
        name = cp.cuda.runtime.getDeviceProperties(d)["name"]
        bus, _ = gpu_bus_id(d)
        gpus.append({"device": d, "name": name.decode() if isinstance(name, bytes) else str(name), "bus_id": bus,
                     "numa_node": topo.device_node(bus) if bus else None})
    return {"hostname": socket.gethostname(), "gpus": gpus, "numa_nodes": len(topo.nodes()),
            "nproc": os.cpu_count(), "cupy": cp.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--frames", type=int, default=20000, help="frames per daemon run (20000)")
    ap.add_argument("--workers-per-gpu", type=int, default=2, help="daemon workers per GPU (2)")
    ap.add_argument("--in-flight", type=int, default=4, help="[workers] batches_in_flight (4)")
    ap.add_argument("--distinct", type=int, default=32, help="distinct frames replayed (32)")
    ap.add_argument("--engine-frames", type=int, default=4096, help="frames timed per engine-alone figure (4096)")
    ap.add_argument("--interval", type=float, default=0.5, help="CPU sampling interval, s (0.5)")
    ap.add_argument("--allow-one", action="store_true",
                    help="dry run on a machine of one GPU: the '2-GPU' daemon uses device 0 twice")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)}; expected some of {', '.join(CASES)}")
    n, why = gpu_count()
    if n < 2 and not (args.allow_one and n == 1):
        print(f"multi_gpu: needs 2 CUDA devices to compare 1 and 2 GPUs, this machine has {n}{why}"
              f"{'; --allow-one runs a dry run on one' if n == 1 else ''}", file=sys.stderr)
        return 2
    dry_run = n < 2
    import cupy as cp
    import cupyx

    from ringstream.geometry.cache import load_or_build
    from ringstream.params import parse_params

    info = machine(cp, n)
    devices = [0] if dry_run else [0, 1]
    rows, engines = [], []
    stacks: dict[str, np.ndarray] = {}  # the frames of each detector, made once
    print(f"{'case':12} {'GPUs':>4} {'workers':>7} {'fps':>8} {'sustained':>9} {'lost':>5} {'bound by':>14} "
          f"{'busiest %':>9}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        for case in cases:
            detector, codec = CASES[case]
            dtype, text = gpu_engine.GEOMS[detector]
            params = parse_params(text)
            pfile = Path(d) / f"{detector}.txt"
            pfile.write_text(text)
            if detector not in stacks:
                stacks[detector] = gpu_decode.pattern_frames(params, dtype, args.distinct, 1.0)
            stack = stacks[detector]
            for n_gpus in (1, 2):
                r = daemon_case(case, n_gpus, args, stack, pfile, dry_run)
                rows.append(r)
                bound = r["cpu"]["bound_by"]
                busiest = r["cpu"]["roles"].get(bound, {}).get("busiest_thread_pct", 0.0)
                print(f"{case:12} {n_gpus:4d} {r['workers']:7d} {r.get('frames_per_s', 0):8.0f} "
                      f"{r.get('sustained_fps', 0):9.0f} {r.get('lost', '?'):>5} {bound[:14]:>14} {busiest:9.1f}"
                      f"{'  ' + r['error'][-300:] if 'error' in r else ''}", flush=True)
            imap, _ = load_or_build(params)  # the daemon's map cache
            for dev in devices:
                e = engine_alone(cp, cupyx, dev, imap, stack, codec, args.engine_frames)
                e.update(case=case, detector=detector)
                engines.append(e)
                print(f"  engine alone on GPU {dev} (NUMA node {e['numa_node']}): raw {e['raw_fps']:,} frames/s"
                      + (f", {codec} {e['compressed_fps']:,} frames/s (ratio {e['ratio']})" if codec != "none"
                         else ""), flush=True)
    scaling = {}
    for case in cases:
        one, two = ([r for r in rows if r["case"] == case and r["n_gpus"] == k] for k in (1, 2))
        if one and two and one[0].get("frames_per_s") and two[0].get("frames_per_s"):
            ratio = two[0]["frames_per_s"] / one[0]["frames_per_s"]
            sustained = (two[0]["sustained_fps"] / one[0]["sustained_fps"]) if one[0]["sustained_fps"] else None
            scaling[case] = {"ratio": round(ratio, 2), "ratio_sustained": round(sustained, 2) if sustained else None,
                             "target": TARGET.get(case), "bound_by_1gpu": one[0]["cpu"]["bound_by"],
                             "bound_by_2gpu": two[0]["cpu"]["bound_by"],
                             "meets_target": (ratio >= TARGET[case]) if case in TARGET else None}
            print(f"{case}: 2 GPUs / 1 GPU = {ratio:.2f} (sustained {scaling[case]['ratio_sustained']})"
                  f"{f', target {TARGET[case]}' if case in TARGET else ''}; bound by "
                  f"{scaling[case]['bound_by_2gpu']} with 2 GPUs", flush=True)
    name = info["gpus"][0]["name"]
    tag = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ("-dry-run" if dry_run else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"multi_gpu-{tag}.json"
    path.write_text(json.dumps({"benchmark": "multi_gpu", "dry_run": dry_run, "machine": info,
                                "settings": {"frames": args.frames, "workers_per_gpu": args.workers_per_gpu,
                                             "batches_in_flight": args.in_flight, "distinct": args.distinct},
                                "daemon": rows, "engine_alone": engines, "scaling": scaling}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

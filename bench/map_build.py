"""Benchmark: integration-map build and cached load for a 2048×2048 detector.

Geometry: px 200 µm, Lsd 1 m, BC (1024, 1024), 3° tilt (ty); bins RMin 10, RMax 1010, RBinSize 1 (1,000 R bins)
× EtaBinSize 5 (72 η bins). Prints a table and writes ``bench/results/map_build-<hostname>.json``.
Targets: build <= 60 s on 2 cores, cached load <= 2 s.

Run: ``python bench/map_build.py [--repeat N] [--tilt-axis ty|tz] [--profile]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

PARAMS = """NrPixelsY 2048
NrPixelsZ 2048
px 200
Lsd 1000000
BC 1024 1024
{axis} 3
RMin 10
RMax 1010
RBinSize 1
EtaMin -180
EtaMax 180
EtaBinSize 5
"""


def machine_info() -> dict:
    import numba
    import numpy
    import scipy

    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def stage_times(p) -> dict:
    """Time the stages of build_map separately (geometry corners, candidate selection, splitting, CSR)."""
    import numpy as np
    import scipy.sparse as sp

    from ringstream.geometry.bins import eta_edges, radial_edges
    from ringstream.geometry.detector import DetectorGeometry
    from ringstream.geometry.map import candidate_pixels
    from ringstream.geometry.splitting import split_pixels

    out = {}
    t = time.perf_counter()
    g = DetectorGeometry.from_params(p)
    cx, cy = g.pixel_corners()
    out["corners_s"] = time.perf_counter() - t
    re, ee = radial_edges(p), eta_edges(p)
    t = time.perf_counter()
    keep = candidate_pixels(cx, cy, re[0], re[-1])
    ids = np.flatnonzero(keep)
    cx, cy = np.ascontiguousarray(cx[ids]), np.ascontiguousarray(cy[ids])
    out["select_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pix, b, a, _ = split_pixels(cx, cy, re, ee, ids)
    out["split_s"] = time.perf_counter() - t
    t = time.perf_counter()
    m = sp.csr_matrix((a, (b, pix)), shape=((len(re) - 1) * (len(ee) - 1), p.NrPixelsY * p.NrPixelsZ))
    m.sort_indices()
    out["csr_s"] = time.perf_counter() - t
    out["pixels_split"] = int(ids.size)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="builds to time (the best is reported)")
    ap.add_argument("--tilt-axis", default="ty", choices=("ty", "tz"))
    ap.add_argument("--profile", action="store_true", help="also time each stage of the build")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    import numpy as np

    from ringstream.geometry.map import IntegrationMap, build_map
    from ringstream.geometry.splitting import split_pixels
    from ringstream.params import parse_params

    p = parse_params(PARAMS.format(axis=args.tilt_axis))

    # warm the numba JIT (or its on-disk cache) on a tiny problem so it is not counted in the build
    t = time.perf_counter()
    cx = np.array([[0.0, 1.0, 1.0, 0.0]]) + 20
    split_pixels(cx, cx[:, ::-1].copy(), np.array([10.0, 30.0]), np.array([-180.0, 180.0]), np.array([0]))
    jit_s = time.perf_counter() - t

    builds = []
    imap = None
    for _ in range(max(1, args.repeat)):
        imap = None
        t = time.perf_counter()
        imap = build_map(p)
        builds.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "map.npz"
        t = time.perf_counter()
        imap.save(path)
        save_s = time.perf_counter() - t
        size = path.stat().st_size
        loads = []
        for _ in range(3):
            t = time.perf_counter()
            m2 = IntegrationMap.load(path)
            loads.append(time.perf_counter() - t)
        assert m2.weights.nnz == imap.weights.nnz
        cache_note = "IntegrationMap.save/load"
        try:
            from ringstream.geometry.cache import load_or_build

            load_or_build(p, cache_dir=d)  # builds and writes the cache entry (not timed)
            t = time.perf_counter()
            _, hit = load_or_build(p, cache_dir=d)
            cache_s = time.perf_counter() - t
            cache_note += f"; cache.load_or_build hit={hit}"
        except ImportError:
            cache_s = None

    result = {
        "benchmark": "map_build",
        "config": {"shape": [2048, 2048], "px": 200, "Lsd": 1e6, "BC": [1024, 1024], args.tilt_axis: 3,
                   "RMin": 10, "RMax": 1010, "RBinSize": 1, "EtaBinSize": 5},
        "machine": machine_info(),
        "jit_warmup_s": jit_s,
        "build_s": min(builds),
        "build_s_all": builds,
        "nnz": int(imap.weights.nnz),
        "n_r": imap.n_r,
        "n_eta": imap.n_eta,
        "bins": imap.n_r * imap.n_eta,
        "pixels_split": imap.info.get("n_pixels_split"),
        "save_s": save_s,
        "file_bytes": size,
        "load_s": min(loads),
        "load_s_all": loads,
        "load_or_build_hit_s": cache_s,
        "load_note": cache_note,
        "targets": {"build_s": 60.0, "load_s": 2.0},
    }
    if args.profile:
        result["stages"] = stage_times(p)

    rows = [
        ("machine", f"{result['machine']['hostname']} ({result['machine']['nproc']} cpus, "
                    f"numba threads {result['machine']['numba_threads']})"),
        ("build (s)", f"{result['build_s']:.2f}  (target <= 60 on 2 cores)"),
        ("nnz", f"{result['nnz']:,}"),
        ("bins (n_r x n_eta)", f"{result['bins']:,} ({imap.n_r} x {imap.n_eta})"),
        ("pixels split", f"{result['pixels_split']:,}"),
        ("save (s) / file MB", f"{save_s:.2f} / {size / 1e6:.0f}"),
        ("cached load (s)", f"{result['load_s']:.2f}  (target <= 2)"),
        ("load_or_build hit (s)", "n/a" if cache_s is None else f"{cache_s:.2f}"),
    ]
    for k, v in (result.get("stages") or {}).items():
        rows.append((f"  stage {k}", f"{v:.2f}" if isinstance(v, float) else f"{v:,}"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fn = out / f"map_build-{socket.gethostname()}.json"
    fn.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {fn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

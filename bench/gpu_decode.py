"""Benchmark: compressed frames decoded on the GPU (issue 17), on the GPU machine.

Frames: the simulated diffraction pattern (``SimulatedSource.mean``: rings on a smooth background) on EIGER2 4M
uint16 and PILATUS 2M int32 (the geometries of ``bench/gpu_engine.py``), as Poisson draws of the pattern times each
``--counts`` scale (1: a background of ~50 counts a pixel; 0.02: ~1 count, a short EIGER exposure), distinct frames,
compressed with ``--codec`` (bslz4 with the HDF5-filter header and bitshuffle's default block, as EIGER files and
Stream V2 carry them; or lz4 in the filter-32004 framing with 64 KiB blocks). For each detector and scale, in one
run: the compression ratio (raw bytes / compressed bytes); (1) the raw host→device copy bound in frames/s (one large
pinned cudaMemcpyAsync, CUDA events, median: ``gpu_engine.copy_ceiling``); (2) the engine from pinned raw frames and
(3) from pinned compressed bytes, both through ``submit`` / ``collect`` with every stream in flight (as the
pipelined worker drives it): frames/s, and (3) over (1), the raw-equivalent gain (target >= 2 for the issue); every
compressed frame decoded without a flag and its lineout equal to the raw frame's. ``--daemon N``: the daemon end to
end (``ringstream run --engine gpu``) on N frames replayed from an .npy stack of distinct frames of the EIGER2 4M
pattern at the first scale, ``--replay-codec <codec>`` (the frames travel compressed through the ring and are
decoded on the GPU) and, for comparison, ``none``: frames/s, frames lost (must be 0), against the raw bound.

Writes ``<out>/gpu_decode-<device>.json`` and prints a table. Run: ``python bench/gpu_decode.py [--daemon 20000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import gpu_engine  # noqa: E402
import workload  # noqa: E402

DETECTORS = ("eiger2_4m_uint16", "pilatus2m_int32")


def pattern_frames(params, dtype: str, n: int, scale: float, seed: int = 3) -> np.ndarray:
    """``n`` distinct Poisson draws of the simulated pattern times ``scale``, ``[n, nZ, nY]`` of ``dtype``."""
    from ringstream.ingest.simulated import SimulatedSource

    mean = SimulatedSource(params, dtype=dtype, precompute=False).mean * float(scale)
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.dtype(dtype))
    return np.stack([np.clip(rng.poisson(mean), info.min, info.max).astype(dtype) for _ in range(n)])


def compress(stack: np.ndarray, codec: str) -> tuple[list[tuple[np.ndarray, int, int]], float]:
    """Each frame as ``(bytes, codec_header, codec_block)`` and the ratio raw / compressed over the stack."""
    from ringstream.images.frame_codecs import encode_frame

    block = 65536 if codec == "lz4" else 0
    out = [encode_frame(f, codec, header=True, block=block) for f in stack]
    return out, stack.nbytes / sum(p.size for p, _, _ in out)


def pinned_items(cupyx, payloads: list, codec: str, shape, dtype) -> list:
    """The compressed frames ``payloads`` (from :func:`compress`) copied one after another, 64-byte aligned, into
    one pinned buffer (as ring slots hold them), each as an ``EncodedFrame`` of ``shape`` and ``dtype``."""
    from ringstream.engines.gpu_decode import EncodedFrame

    offsets = np.cumsum([0] + [-(-p.size // 64) * 64 for p, _, _ in payloads])
    comp = cupyx.empty_pinned((int(offsets[-1]),), np.uint8)
    items = []
    for k, (p, head, block) in enumerate(payloads):
        view = comp[offsets[k]:offsets[k] + p.size]
        view[...] = p
        items.append(EncodedFrame(view, codec, head, block, tuple(shape), dtype, f"frame {k}"))
    return items


def submit_rate(eng, items: list, total: int) -> float:
    """Frames/s of ``total`` frames through ``submit`` / ``collect``, batches of ``eng.batch`` taken in turn from
    ``items``, every stream kept busy (after one warm-up batch)."""
    b = eng.batch
    batches = [items[i:i + b] for i in range(0, len(items) - b + 1, b)]
    eng.collect(eng.submit(batches[0]))  # warm-up: kernels compiled, buffers grown
    inflight: deque = deque()
    done = 0
    k = 0
    t0 = time.perf_counter()
    while done < total:
        if len(inflight) == eng.n_streams:
            eng.collect(inflight.popleft())
        inflight.append(eng.submit(batches[k % len(batches)]))
        k += 1
        done += b
    while inflight:
        eng.collect(inflight.popleft())
    return done / (time.perf_counter() - t0)


def bench_one(cp, cupyx, name: str, scale: float, codec: str, n_distinct: int, total: int) -> dict:
    from ringstream.engines.cupy_engine import CupyEngine
    from ringstream.geometry.map import build_map
    from ringstream.params import parse_params

    dtype, text = gpu_engine.GEOMS[name]
    params = parse_params(text)
    imap = build_map(params)
    stack = pattern_frames(params, dtype, n_distinct, scale)
    payloads, ratio = compress(stack, codec)
    eng = CupyEngine(imap, batch=16, n_streams=4)
    # pinned: the raw frames, and the compressed bytes one after another (as ring slots hold them)
    raw = cupyx.empty_pinned(stack.shape, stack.dtype)
    raw[...] = stack
    items = pinned_items(cupyx, payloads, codec, stack.shape[1:], stack.dtype)
    bound_fps = 1.0 / (gpu_engine.copy_ceiling(cp, raw) / len(stack))
    raw_fps = submit_rate(eng, list(raw), total)
    comp_fps = submit_rate(eng, items, total)
    # correctness: every frame decodes, lineouts equal the raw frames'
    sub = eng.submit(items[:eng.batch])
    lines, _ = eng.collect(sub)
    failed = eng.decode_failed(sub)
    lines = lines.copy()
    ref, _ = eng.collect(eng.submit(list(raw[:eng.batch])))
    eng.close()
    return {"detector": name, "dtype": dtype, "counts_scale": scale, "codec": codec,
            "raw_bytes_per_frame": int(stack[0].nbytes),
            "compressed_bytes_per_frame": round(stack.nbytes / ratio / len(stack)), "ratio": round(ratio, 2),
            "copy_bound_fps": round(bound_fps), "engine_raw_pinned_fps": round(raw_fps),
            "engine_compressed_pinned_fps": round(comp_fps), "gain_over_bound": round(comp_fps / bound_fps, 2),
            "decode_failed": len(failed), "lineouts_equal": bool(np.array_equal(lines, ref))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--only", default="", help="comma-separated detector names (eiger2_4m_uint16, pilatus2m_int32)")
    ap.add_argument("--counts", default="1,0.1,0.02", help="comma-separated scales of the simulated counts")
    ap.add_argument("--codec", default="bslz4", choices=("bslz4", "lz4"))
    ap.add_argument("--distinct", type=int, default=32, help="distinct frames per case (32)")
    ap.add_argument("--frames", type=int, default=4096, help="frames timed per engine measurement (4096)")
    ap.add_argument("--daemon", type=int, default=0, help="also run the daemon end to end on N frames")
    ap.add_argument("--daemon-workers", default="1,2", help="comma-separated worker counts for --daemon (1,2)")
    ap.add_argument("--daemon-in-flight", type=int, default=4, help="[workers] batches_in_flight (4)")
    args = ap.parse_args(argv)
    import cupy as cp
    import cupyx

    device = cp.cuda.runtime.getDeviceProperties(0)["name"]
    device = device.decode() if isinstance(device, bytes) else str(device)
    names = [n for n in args.only.split(",") if n] or list(DETECTORS)
    scales = [float(x) for x in args.counts.split(",") if x]
    rows = []
    print(f"{'detector':18} {'counts':>6} {'codec':6} {'ratio':>6} {'bound fps':>10} {'raw fps':>9} "
          f"{'comp fps':>9} {'gain':>5} ok")
    for name in names:
        for scale in scales:
            r = bench_one(cp, cupyx, name, scale, args.codec, args.distinct, args.frames)
            rows.append(r)
            print(f"{name:18} {scale:6g} {args.codec:6} {r['ratio']:6.2f} {r['copy_bound_fps']:10,} "
                  f"{r['engine_raw_pinned_fps']:9,} {r['engine_compressed_pinned_fps']:9,} "
                  f"{r['gain_over_bound']:5.2f} {r['decode_failed'] == 0 and r['lineouts_equal']}")
    daemon = []
    if args.daemon:
        from ringstream.params import parse_params

        dtype, text = gpu_engine.GEOMS["eiger2_4m_uint16"]
        stack = pattern_frames(parse_params(text), dtype, args.distinct, scales[0])
        _, ratio = compress(stack, args.codec)
        with tempfile.TemporaryDirectory() as d:
            pfile = Path(d) / "eiger2_4m.txt"
            pfile.write_text(text)
            for workers in [int(w) for w in args.daemon_workers.split(",") if w]:
                for codec in (args.codec, "none"):
                    r = gpu_engine.daemon_run(args.daemon, workers, in_flight=args.daemon_in_flight,
                                              settings=workload.daemon_settings("fast-path")[0], param_file=pfile,
                                              stack=stack, replay_codec=codec)
                    r.update(detector="eiger2_4m_uint16", counts_scale=scales[0],
                             ratio=round(ratio, 2) if codec != "none" else 1.0)
                    daemon.append(r)
                    print(f"daemon eiger2_4m_uint16 workers {workers} replay_codec {codec}: "
                          f"{r.get('frames_per_s', 'error')} frames/s, lost {r.get('lost', '?')} "
                          f"{r.get('error', '')}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_decode-{device.replace(' ', '-')}.json"
    path.write_text(json.dumps({"device": device, "engine": rows, "daemon": daemon,
                                "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bytes written per frame, lossless and precision-bounded (``[output] cake_noise_fraction``), on the demo.

The demo parameter file (``configs/demo-pilatus2m.txt``: PILATUS 2M, 990 x 72 bins), ``OmegaSumFrames 1`` (MIDAS's
default: a summed cake per frame), zarr.zip on; ``Write2D`` 0 (the file's own) and 1. The frames are the simulated
source's (its 8 Poisson realisations, cycled as the daemon's ``simulated`` source does), integrated once each by the
reference engine and sent as the workers send cakes (float32); :class:`~ringstream.writer.outputs.RunOutputs` writes
``--frames`` of them (the daemon's writer, without the processes around it), saving every 500 frames. Reported per
case: bytes per frame (HDF5 + zarr.zip, and each), the compression ratio (the stored values' own bytes over the
bytes written), the writer's frames/s (CPU box, shared: for scale only), and for the precision-bounded cases the
bits kept per value (significant bits from the leading one down to the rounding step q: what bitshuffle cannot
remove) and the largest error seen, over f times the writer's noise bound.

Per precision-bounded case, also what other lossless codecs would make of the same rounded sums, one copy (the
HDF5 and the zarr.zip each hold one): bitshuffle + LZ4 (what is written), bitshuffle + Zstandard (hdf5plugin's
filter 32008 with zstd; readable where the bitshuffle plugin was built with zstd) and Blosc Zstandard with bit
shuffle at its highest level (numcodecs, readable by GSAS-II's zarr), and a floor no lossless coder of these values
goes below: each rounded value taken as its bin's mean (known to the coder for free) plus Gaussian noise of the
noise model's sigma (s = 1, the counting noise itself) on the grid of its step q, sum over values of
log2(sqrt(2 pi e) sigma / q) bits (values stored unrounded counted as 0 bytes). At f = 0.01 the floor is below
75 KB a copy (150 KB a frame for two copies); the bit-plane codecs stay well above it, since they cannot predict a
value from its neighbours.

    python bench/precision_bytes.py [--frames 200] [--fractions 0,0.01] [--machine vm]

Writes ``bench/results/precision_bytes-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ringstream.compression import BLOCK_BYTES
from ringstream.engines.reference import ReferenceEngine
from ringstream.geometry.cache import load_or_build
from ringstream.ingest.simulated import K, SimulatedSource
from ringstream.params import load_params
from ringstream.writer.outputs import FrameRecord, RunOutputs
from ringstream.writer.precision import SAFETY, NoiseRounding, map_noise_model

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "configs" / "demo-pilatus2m.txt"


def bits_kept(x: np.ndarray, rounding: NoiseRounding) -> np.ndarray:
    """Per non-zero value of a cake ``[n_r, n_eta]``: the significant bits kept, from the leading one down to the
    rounding step q (24 where the value is stored as float32 losslessly)."""
    sigma = rounding.sigma(x)
    kept = np.full(x.shape, 24.0)
    ok = sigma > 0
    q = np.floor(np.log2(2 * rounding.fraction * sigma[ok] * (1 - 2.0**-30)))
    kept[ok] = np.clip(np.floor(np.log2(x[ok])) - q + 1, 1, 24)
    return kept[x != 0]


def worst_error(cake: np.ndarray, rounding: NoiseRounding) -> float:
    """The largest |stored - x| over its bound max(f sigma, ulp/2) in one cake (<= 1)."""
    err = np.abs(rounding(cake, np.float32).astype(np.float64) - cake)
    bound = np.maximum(rounding.fraction * rounding.sigma(cake), np.spacing(np.abs(cake).astype(np.float32)) / 2)
    return float(np.max(np.divide(err, bound, out=np.zeros_like(err), where=bound > 0)))


def codec_sizes(cakes: list[np.ndarray], rounding: NoiseRounding) -> dict:
    """Mean bytes per copy of each one-frame sum ``[n_r, n_eta]`` (its cake, float32), rounded as the writer rounds
    it, under a few lossless codecs, and the floor of any lossless coder of those values (module docstring)."""
    import bitshuffle
    import numcodecs

    block = BLOCK_BYTES // 4
    best = numcodecs.Blosc(cname="zstd", clevel=9, shuffle=numcodecs.Blosc.BITSHUFFLE)
    sizes = {"bitshuffle_lz4": [], "bitshuffle_zstd": [], "blosc_zstd9_bitshuffle": [], "floor": []}
    for cake in cakes:
        x = np.nan_to_num(cake.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        s = np.ascontiguousarray(rounding(x, np.float32))
        sizes["bitshuffle_lz4"].append(bitshuffle.compress_lz4(s, block).nbytes + 12)  # (+ the filter's header)
        sizes["bitshuffle_zstd"].append(bitshuffle.compress_zstd(s, block).nbytes + 12)
        sizes["blosc_zstd9_bitshuffle"].append(len(best.encode(s)))
        sigma = rounding.sigma(x)  # sqrt(SAFETY g x) where rounded, else 0
        ok = sigma > 0
        q = 2.0 ** np.floor(np.log2(2 * rounding.fraction * sigma[ok] * (1 - 2.0**-30)))
        q = np.maximum(q, np.spacing(np.abs(s[ok])))  # (the dtype's own step, where that is coarser)
        bits = np.log2(np.sqrt(2 * np.pi * np.e) * sigma[ok] / np.sqrt(SAFETY) / q)
        sizes["floor"].append(float(np.maximum(bits, 0).sum()) / 8)
    return {k: round(float(np.mean(v))) for k, v in sizes.items()}


def run_case(p, imap, cakes: list[np.ndarray], write_2d: bool, fraction: float, n: int, folder: Path,
             model: np.ndarray | None) -> dict:
    lineouts = [(c * imap.bin_area).sum(axis=1).astype(np.float32) for c in cakes]  # (not what is measured)
    work = Path(tempfile.mkdtemp(dir=folder, prefix="precision-"))
    try:
        t0 = time.perf_counter()
        out = RunOutputs(work / "out.h5", imap, p, engine_name="cpu", zarr_path=work / "out.zarr.zip",
                         expected_frames=n, cake_noise_fraction=fraction, noise_model=model)
        for i in range(n):
            k = i % len(cakes)
            out.append(FrameRecord(i, lineouts[k], f"simulated:{i}", 1.7e9 + i, cakes[k]))
            if (i + 1) % 500 == 0:
                out.save()
        out.close(run_complete=True)
        seconds = time.perf_counter() - t0
        sizes = {f.name: f.stat().st_size for f in work.iterdir() if f.is_file()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(sizes.values())
    copies = (2 if write_2d else 1) + 1  # stored values per frame: cake (Write2D 1) and sum in the HDF5, sum in zarr
    row = {"write_2d": int(write_2d), "cake_noise_fraction": fraction, "frames": n, "seconds": round(seconds, 3),
           "frames_per_s": round(n / seconds, 1), "bytes_per_frame": round(total / n),
           "bytes_per_frame_h5": round(sizes.get("out.h5", 0) / n),
           "bytes_per_frame_zarr": round(sizes.get("out.zarr.zip", 0) / n),
           "compression": round(4 * imap.n_r * imap.n_eta * copies * n / total, 2), "meets_150KB": total / n <= 150e3}
    if fraction:
        r = NoiseRounding(fraction, model)
        kept = np.concatenate([bits_kept(c.astype(np.float64), r) for c in cakes])
        worst = max(worst_error(c.astype(np.float64), r) for c in cakes)
        row.update(bits_kept_mean=round(float(kept.mean()), 2), bits_kept_median=float(np.median(kept)),
                   lossless_share=round(float(np.mean(kept == 24)), 4), max_error_over_bound=round(worst, 4))
        if not write_2d:
            per_copy = codec_sizes(cakes, r)
            row.update(bytes_per_copy=per_copy, copies_per_frame=copies,
                       floor_bytes_per_frame=copies * per_copy["floor"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--fractions", default="0,0.01", help="comma-separated cake_noise_fraction values")
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary output files")
    args = ap.parse_args()
    import zarr  # (imported once, as the writer process does, not inside the timing)

    rows = []
    for write_2d in (False, True):
        p = load_params(DEMO, ["OmegaSumFrames", "1", "Write2D", str(int(write_2d))])
        imap, _ = load_or_build(p)
        model = map_noise_model(imap, p.Normalize)
        source = SimulatedSource(p, precompute=False)
        engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
        cakes = [engine.integrate(source.make_frame(k))[1].astype(np.float32) for k in range(K)]
        for f in (float(v) for v in args.fractions.split(",")):
            rows.append(run_case(p, imap, cakes, write_2d, f, args.frames, Path(args.dir), model if f else None))
            r = rows[-1]
            print(f"Write2D {r['write_2d']}  f {f:<5g} {r['bytes_per_frame']:>9,d} B/frame  (HDF5 "
                  f"{r['bytes_per_frame_h5']:,d} + zarr {r['bytes_per_frame_zarr']:,d})  ratio {r['compression']:5.2f}"
                  f"  {r['frames_per_s']:7.0f} frames/s" + (f"  bits kept {r['bits_kept_mean']:.1f} (median "
                                                            f"{r['bits_kept_median']:g}), max err/bound "
                                                            f"{r['max_error_over_bound']:.3f}" if f else ""))
            if "bytes_per_copy" in r:
                print("    one copy of a frame's sum: " + ", ".join(f"{k} {v:,d} B" for k, v in r["bytes_per_copy"].items())
                      + f"; floor x {r['copies_per_frame']} copies = {r['floor_bytes_per_frame']:,d} B/frame")
    import h5py

    result = {
        "benchmark": "precision_bytes",
        "what": "bytes written per frame (HDF5 + zarr.zip) by RunOutputs, demo parameter file, OmegaSumFrames 1, "
                "zarr on, simulated PILATUS 2M frames (8 Poisson realisations) integrated by the reference engine, "
                "float32 cakes as the workers send them; lossless and cake_noise_fraction f",
        "machine": {"hostname": args.machine, "nproc": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                    "zarr": zarr.__version__, "platform": platform.platform(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())},
        "runs": rows,
    }
    path = HERE / "results" / f"precision_bytes-{args.machine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""PVA ingest of bslz4 frames: frames/s the PVA source takes when the detector sends bitshuffle-LZ4 NTNDArrays.

A server process (an in-process ``pvaccess.PvaServer`` in a child, loopback, non-default ports) publishes, as fast
as it can, ``--distinct`` prebuilt NTNDArrays of the simulated EIGER2 4M uint16 pattern (counts scaled by
``--counts``) compressed with bslz4 (the HDF5-filter header, as the EIGER driver sends it), only ``uniqueId``
changing. This process runs the real :class:`ringstream.ingest.pva.PvaSource` with a real shared-memory ring and its
allocator, releasing the slots in order (all but 4 held, as busy workers do), for ``--seconds``: frames/s taken,
the raw-equivalent GB/s, and what the callback did per frame.

The code measured is the ``ringstream`` on the path, so the same script measures the ingest before issue 17 (it
decoded every bslz4 frame into its slot) and after (the compressed bytes are copied into the slot; the workers
decode)::

    PYTHONPATH=<tree before> python bench/pva_compressed.py --label before
    PYTHONPATH=<tree after>  python bench/pva_compressed.py --label after

Prints a line and writes bench/results/pva_compressed-<name>-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

from pva_common import epics_env, free_port_pair, ntnd  # noqa: E402

EIGER = ("NrPixelsY 2068\nNrPixelsZ 2162\npx 75\nLsd 1000000\nBC 1034 1081\nty 1\nRMin 10\nRMax 1010\nRBinSize 1\n"
         "EtaMin -180\nEtaMax 180\nEtaBinSize 5\n")


def serve(channel: str, env: dict, distinct: int, counts: float, ready, stop) -> None:
    """The server child: prebuilt compressed NTNDArrays published in a loop, uniqueId 1, 2, 3 ..."""
    os.environ.update(env)
    import bitshuffle
    import pvaccess as pva

    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import parse_params

    mean = SimulatedSource(parse_params(EIGER), dtype="uint16", precompute=False).mean * counts
    rng = np.random.default_rng(1)
    frames = [rng.poisson(mean).astype(np.uint16) for _ in range(distinct)]
    # the EIGER framing: 8-byte big-endian size, 4-byte big-endian block bytes, then bitshuffle's LZ4 blocks (made
    # here, not with ringstream's encoder, so that a tree from before issue 17 runs this script too)
    payloads = [np.frombuffer(f.nbytes.to_bytes(8, "big") + (8192).to_bytes(4, "big")
                              + bitshuffle.compress_lz4(f.reshape(-1)).tobytes(), np.uint8) for f in frames]
    nts = [ntnd(k + 1, f, codec="bslz4", payload=p.tobytes()) for k, (f, p) in enumerate(zip(frames, payloads, strict=False))]
    ratio = sum(f.nbytes for f in frames) / sum(p.size for p in payloads)
    server = pva.PvaServer()
    server.addRecord(channel, pva.NtNdArray())
    ready.put(ratio)
    uid = 0
    while not stop.is_set():
        uid += 1
        nt = nts[uid % distinct]
        nt["uniqueId"] = uid
        server.update(channel, nt)
    server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--counts", type=float, default=0.1, help="scale of the simulated counts (0.1)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--name", default="vm")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    env = epics_env(*free_port_pair())
    os.environ.update(env)
    from ringstream.ingest.process import _RingAllocator
    from ringstream.ingest.pva import PvaSource
    from ringstream.ingest.source_base import IDLE
    from ringstream.transport.shm_ring import FrameRing

    channel = f"benchc{os.getpid()}:Image"
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(channel, env, args.distinct, args.counts, ready, stop))
    server.start()
    ratio = None
    while ratio is None:
        try:
            ratio = ready.get(timeout=1)
        except queue.Empty:
            if not server.is_alive():
                raise SystemExit(f"the server process ended (exit {server.exitcode}) before publishing") from None
    shape, raw = (2162, 2068), 2162 * 2068 * 2
    src = PvaSource(channel, shape, dtype="uint16", queue_size=16)
    ring = FrameRing.create(32, raw + raw // 64 + 4096)  # as the ingest sizes it for a compressed source
    src.attach_ring(_RingAllocator(ring))
    flag = mp.Event()
    frames = src.frames(flag)
    held: list[int] = []
    n, t0, compressed = 0, None, 0
    try:
        while True:
            f = next(frames)
            if f is IDLE:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            n += 1
            compressed += int(getattr(f, "codec", "none") != "none")
            slot = f.lease.slot
            del f
            held.append(slot)
            if len(held) > 28:
                ring.release(held.pop(0))
            if time.perf_counter() - t0 >= args.seconds:
                break
        dt = time.perf_counter() - t0
    finally:
        stop.set()
        flag.set()
        counters = src.counters()
        src.close()
        server.join(10)
        frames.close()
        for slot in held:
            ring.release(slot)
        try:
            ring.close()
        except BufferError:  # a lease's array the source still holds: the segment goes with the process
            pass
        ring.unlink()
    fps = n / dt
    res = {"label": args.label, "machine": platform.node(), "frames": n, "seconds": round(dt, 2),
           "frames_per_s": round(fps, 1), "raw_equivalent_GB_s": round(fps * raw / 1e9, 2), "ratio": round(ratio, 2),
           "kept_compressed": compressed, "dropped_decode_error": counters.get("dropped_decode_error", 0),
           "pva_overruns": counters.get("pva_overruns", 0), "pva_missed": counters.get("pva_missed", 0)}
    print(f"{args.label}: {fps:.1f} bslz4 EIGER2 4M frames/s ({res['raw_equivalent_GB_s']} GB/s raw-equivalent, "
          f"ratio {ratio:.2f}), {compressed} of {n} kept compressed, missed {res['pva_missed']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pva_compressed-{args.name}-{args.label}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""DECTRIS Stream V2 input: the source alone (this box), and the daemon fed by the simulator (``--daemon``, the GPU
machine).

Frames: ``ringstream dectris-sim``'s built-in ring pattern on an EIGER2 4M (2162 x 2068 uint16), ``--distinct``
Poisson draws, compressed with ``--codec`` (bslz4 with the 12-byte header, as the detector sends it; lz4; or none)
once, before the first send. The simulator is a process of its own (``ringstream dectris-sim``), binding a
loopback PUSH socket, sending as fast as the receiver takes the messages.

- Default: the real :class:`ringstream.ingest.dectris.DectrisSource` in this process, with a real shared-memory ring
  and its allocator, the slots released in order (all but 4 held, as busy workers do), for ``--frames`` images:
  messages/s, the wire GB/s (compressed bytes) and the raw-equivalent GB/s (decoded pixels), frames lost; and the
  source's own ceiling: ms of ``on_message`` (decode, checks, the copy into a slot) per message made beforehand,
  without ZeroMQ or the simulator.
- ``--daemon``: ``ringstream run --dectris-stream ... --engine gpu --frames N`` (``--workers``), the daemon's own
  frames/s (ready -> last frame written), frames lost, and the ratio to the raw host->device copy bound of the same
  frames (one pinned cudaMemcpyAsync, ``bench/gpu_engine.copy_ceiling``; target >= 1.2).

Prints a table and writes ``bench/results/dectris_source-<machine>.json`` (``--machine``, default the host's name;
this CPU box is "vm"). Run: ``python bench/dectris_source.py [--codec bslz4] [--frames 2000] [--daemon]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ringstream.ingest.dectris_sim import DETECTORS, ring_frames  # noqa: E402
from ringstream.transport.endpoints import free_tcp_port  # noqa: E402

EIGER = ("NrPixelsY 2068\nNrPixelsZ 2162\npx 75\nLsd 1000000\nBC 1034 1081\nty 1\nRMin 10\nRMax 1010\n"
         "RBinSize 1\nEtaMin -180\nEtaMax 180\nEtaBinSize 5\n")
COUNTS = re.compile(r"written (\d+), rejected (\d+), dropped (\d+).*?([\d.]+) s, ([\d.]+) frames/s")


def ringstream() -> list[str]:
    exe = Path(sys.executable).with_name("ringstream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ringstream.daemon.cli"]


def start_simulator(endpoint: str, codec: str, frames: int, distinct: int) -> subprocess.Popen:
    cmd = ringstream() + ["dectris-sim", "--bind", endpoint, "--detector", "eiger2-4m", "--codec", codec,
                          "--images", str(frames), "--distinct", str(distinct), "--send-timeout", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = proc.stdout.readline()  # "bound ...": the frames are compressed, the socket is up
    if not line.startswith("bound"):
        raise SystemExit(f"dectris-sim did not start: {line}{proc.stdout.read()}")
    return proc


def compressed_ratio(codec: str, distinct: int) -> float:
    from ringstream.images.frame_codecs import encode_frame

    stack = ring_frames(DETECTORS["eiger2-4m"], "uint16", n=distinct)
    if codec == "none":
        return 1.0
    return stack.nbytes / sum(encode_frame(f, codec, header=True)[0].size for f in stack)


def source_alone(codec: str, frames: int, distinct: int, slots: int = 16) -> dict:
    """The DectrisSource on a real ring, fed by the simulator process."""
    from ringstream.ingest.dectris import DectrisSource
    from ringstream.ingest.process import _RingAllocator
    from ringstream.protocol import compressed_bound
    from ringstream.transport.shm_ring import FrameRing

    shape = DETECTORS["eiger2-4m"]
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    sim = start_simulator(endpoint, codec, frames, distinct)
    ring = FrameRing.create(slots, compressed_bound(shape[0] * shape[1] * 4))
    src = DectrisSource(endpoint, shape, n_frames=frames)
    src.attach_ring(_RingAllocator(ring))
    held: list[int] = []
    n = wire = 0
    t0 = t1 = 0.0
    try:
        for f in src.frames(None):
            if f.lease is None:
                continue
            if n == 0:
                t0 = time.perf_counter()
            n += 1
            wire += f.lease.array.nbytes
            t1 = time.perf_counter()
            held.append(f.lease.slot)
            del f
            if len(held) > 4:
                ring.release(held.pop(0))
    finally:
        counters = src.counters()
        src.close()
        sim.wait(60)
        ring.close()
        ring.unlink()
    dt = max(t1 - t0, 1e-9)
    raw = shape[0] * shape[1] * 2
    return {"mode": "source", "codec": codec, "frames": frames, "taken": n, "lost": frames - n,
            "seconds": round(dt, 3), "messages_per_s": round((n - 1) / dt, 1),
            "wire_GB_per_s": round(wire * (n - 1) / n / dt / 1e9, 3),
            "raw_GB_per_s": round(raw * (n - 1) / dt / 1e9, 3),
            "bytes_per_message": round(wire / max(n, 1)), "counters": {k: v for k, v in counters.items() if v}}


def source_ceiling(codec: str, distinct: int, rounds: int = 10, per_round: int = 20, slots: int = 8) -> dict:
    """The source's own work per message, without ZeroMQ or a simulator: ``on_message`` (decode, checks, the copy
    into a ring slot) on messages made beforehand, ``rounds`` series of ``per_round`` images."""
    from ringstream.ingest.dectris import DectrisSource
    from ringstream.ingest.dectris_sim import Simulator
    from ringstream.ingest.process import _RingAllocator
    from ringstream.ingest.stream_v2 import encode_end, encode_start
    from ringstream.protocol import compressed_bound
    from ringstream.transport.shm_ring import FrameRing

    shape = DETECTORS["eiger2-4m"]
    frames = ring_frames(shape, "uint16", n=min(distinct, 4))
    sim = Simulator("tcp://127.0.0.1:1", frames, codec=codec)
    messages = [bytes(sim.template(i, codec, 1, "u", None, {}).message(i, i, i + 1)) for i in range(per_round)]
    ring = FrameRing.create(slots, compressed_bound(shape[0] * shape[1] * 4))
    src = DectrisSource("tcp://127.0.0.1:1", shape)
    src.attach_ring(_RingAllocator(ring))
    spent = 0.0
    for _ in range(rounds):
        src.on_message(encode_start(1, "u", per_round, shape))
        for m in messages:
            t = time.perf_counter()
            src.on_message(m)
            spent += time.perf_counter() - t
            while src._queue.qsize():
                lease = src._queue.get().lease
                if lease is not None:
                    ring.release(lease.slot)
                del lease
        src.on_message(encode_end(1, "u"))
    src.release_queued()
    taken = src.counters()["dectris_received"]
    ring.close()
    ring.unlink()
    per = spent / (rounds * per_round)
    return {"source_ms_per_message": round(per * 1e3, 3), "source_ceiling_msg_per_s": round(1 / per),
            "source_ceiling_raw_GB_per_s": round(shape[0] * shape[1] * 2 / per / 1e9, 2),
            "ceiling_taken": taken}


def daemon_run(codec: str, frames: int, distinct: int, workers: int) -> dict:
    """``ringstream run --dectris-stream`` on the GPU, fed by the simulator; its frames/s against the copy bound."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    with tempfile.TemporaryDirectory() as d:
        pfile = Path(d) / "eiger2_4m.txt"
        pfile.write_text(EIGER)
        sim = start_simulator(endpoint, codec, frames, distinct)
        cmd = ringstream() + ["run", "--param-file", str(pfile), "--dectris-stream", endpoint, "--frames",
                              str(frames), "--workers", str(workers), "--engine", "gpu", "--no-zarr",
                              "--output-h5", str(Path(d) / "out.h5"), "--control", "auto"]
        env = dict(os.environ, RINGSTREAM_SOURCE_DECTRIS_DTYPE="uint16")  # the ring's slots sized for 16 bits
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=d, env=env)
        sim.kill()
        sim.wait(10)
    m = COUNTS.search(proc.stderr)
    if proc.returncode != 0 or not m:
        return {"mode": "daemon", "codec": codec, "workers": workers,
                "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return {"mode": "daemon", "codec": codec, "workers": workers, "frames": frames, "written": int(m.group(1)),
            "lost": frames - int(m.group(1)), "run_s": float(m.group(4)), "frames_per_s": float(m.group(5))}


def copy_bound_fps(distinct: int) -> float:
    """Frames/s of the raw EIGER2 4M uint16 frames by one pinned host->device copy (bench/gpu_engine.py)."""
    import cupy as cp
    import cupyx

    sys.path.insert(0, str(REPO / "bench"))
    import gpu_engine

    stack = ring_frames(DETECTORS["eiger2-4m"], "uint16", n=distinct)
    pinned = cupyx.empty_pinned(stack.shape, stack.dtype)
    pinned[...] = stack
    return len(stack) / gpu_engine.copy_ceiling(cp, pinned)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", action="append", default=[], choices=("bslz4", "lz4", "none"),
                    help="compression (repeatable; default bslz4 and none)")
    ap.add_argument("--frames", type=int, default=2000, help="images sent per measurement (2000)")
    ap.add_argument("--distinct", type=int, default=8, help="distinct frames (8)")
    ap.add_argument("--daemon", action="store_true", help="the daemon with GPU workers (the GPU machine)")
    ap.add_argument("--workers", default="1,2", help="--daemon: comma-separated worker counts (1,2)")
    ap.add_argument("--machine", default="", help="the machine's name in the results file (default the host's)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    codecs = args.codec or ["bslz4", "none"]
    machine = args.machine or platform.node()
    rows = []
    ratios = {c: round(compressed_ratio(c, args.distinct), 2) for c in codecs}
    if not args.daemon:
        print(f"{'codec':6} {'ratio':>6} {'frames':>7} {'lost':>5} {'msg/s':>9} {'wire GB/s':>10} {'raw GB/s':>9} "
              f"{'source ms/msg':>13} {'ceiling msg/s':>13}")
        for codec in codecs:
            r = source_alone(codec, args.frames, args.distinct)
            r.update(ratio=ratios[codec], **source_ceiling(codec, args.distinct))
            rows.append(r)
            print(f"{codec:6} {r['ratio']:6.2f} {r['frames']:7} {r['lost']:5} {r['messages_per_s']:9,.0f} "
                  f"{r['wire_GB_per_s']:10.2f} {r['raw_GB_per_s']:9.2f} {r['source_ms_per_message']:13.3f} "
                  f"{r['source_ceiling_msg_per_s']:13,}")
    else:
        bound = copy_bound_fps(args.distinct)
        print(f"raw host->device copy bound: {bound:,.0f} frames/s")
        print(f"{'codec':6} {'ratio':>6} {'workers':>7} {'frames/s':>9} {'lost':>5} {'x bound':>8}")
        for codec in codecs:
            for w in [int(x) for x in args.workers.split(",") if x]:
                r = daemon_run(codec, args.frames, args.distinct, w)
                r.update(ratio=ratios[codec], copy_bound_fps=round(bound))
                if "frames_per_s" in r:
                    r["over_bound"] = round(r["frames_per_s"] / bound, 2)
                rows.append(r)
                print(f"{codec:6} {r['ratio']:6.2f} {w:7} {r.get('frames_per_s', 0):9,.0f} {r.get('lost', '?'):>5} "
                      f"{r.get('over_bound', 0):8.2f} {r.get('error', '')[:200]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dectris_source-{machine}{'-daemon' if args.daemon else ''}.json"
    path.write_text(json.dumps({"machine": machine, "cpus": os.cpu_count(), "detector": "eiger2-4m uint16",
                                "distinct": args.distinct, "rows": rows,
                                "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                                "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

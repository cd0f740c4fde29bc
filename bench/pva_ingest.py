"""PVA ingest: frames/s and GB/s the PVA source takes from ``pvapy-ad-sim-server``, and frames lost at a fixed rate.

The server runs as a subprocess on loopback (non-default ports); this process runs the real
:class:`ringstream.ingest.pva.PvaSource` with a real shared-memory :class:`FrameRing` and its allocator, and
stands in for the ingest loop with fast workers: it takes each frame the source yields and releases the slots in
order, holding all but 4 of them, as busy workers do (released at once, the ring's last-in-first-out free list would
hand one hot slot back over and over). The server cycles through distinct frames and the held slots rotate; each
set totals at least twice the last-level cache (read from sysfs or ``lscpu``, printed and in the JSON), so the
copies go to memory. So the figure is what the PVA path (pvapy receive + the one copy into shared memory in the
callback) can take, the ceiling the source puts on the daemon. Cases:

- full rate (``-fps 100000``: as fast as the server publishes): PILATUS 2M int32 (1475 x 1679) and 2048² uint16;
- fixed 100 frames/s of 2048² uint32 for ``--seconds``: frames lost = uniqueIds the server published (first to
  last seen) that never arrived, plus drops and pvapy overruns. Must be 0.

    python bench/pva_ingest.py [--seconds 10] [--queue-size 16] [--name vm]

Prints a table and writes bench/results/pva_ingest-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from pva_common import epics_env, free_port_pair  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from workload import HeldSlots, describe_llc, frames_to_exceed, last_level_cache, working_set  # noqa: E402

CASES = [
    # name, nx (cols), ny (rows), dtype, fps (0: full rate)
    ("PILATUS 2M int32 full rate", 1475, 1679, "int32", 0),
    ("2048^2 uint16 full rate", 2048, 2048, "uint16", 0),
    ("2048^2 uint32 at 100 fps", 2048, 2048, "uint32", 100),
]


def run_case(name: str, nx: int, ny: int, dtype: str, fps: int, seconds: float, queue_size: int,
             env: dict, llc: dict) -> dict:
    from ringstream.ingest.process import _RingAllocator
    from ringstream.ingest.pva import PvaSource
    from ringstream.ingest.source_base import IDLE
    from ringstream.transport.shm_ring import FrameRing

    channel = f"bench{os.getpid()}:{nx}x{ny}{dtype}:Image"
    src = PvaSource(channel, (ny, nx), dtype=dtype, queue_size=queue_size)
    frame_bytes = nx * ny * np.dtype(dtype).itemsize
    n_server = frames_to_exceed(frame_bytes, llc, minimum=8)  # distinct frames the server cycles through
    ring = FrameRing.create(frames_to_exceed(frame_bytes, llc, minimum=28) + 4, frame_bytes)
    held = HeldSlots(ring.release, ring.n_slots - 4)
    src.attach_ring(_RingAllocator(ring))

    class Stop:
        flag = False

        def is_set(self):
            return self.flag

    stop = Stop()
    frames = src.frames(stop)
    argv = [str(Path(sys.executable).with_name("pvapy-ad-sim-server")), "-cn", channel, "-nx", str(nx),
            "-ny", str(ny), "-dt", dtype, "-fps", str(fps or 100000), "-nf", str(n_server), "-cs", str(n_server),
            "-rt", str(seconds + 2), "-std", "1.0", "-dc", "-rp", "1000000"]
    server = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received, nbytes, first_id, last_id = 0, 0, None, None
    t_first = t_last = None
    try:
        deadline = time.monotonic() + seconds + 30
        quiet_since = None
        while time.monotonic() < deadline:
            f = next(frames)
            now = time.monotonic()
            if f is IDLE:
                if t_first is not None and server.poll() is not None:
                    quiet_since = quiet_since or now
                    if now - quiet_since > 1.0:
                        break  # the server finished and nothing more is queued
                continue
            quiet_since = None
            uid, size, slot = int(f.source_id), f.pixels.nbytes, f.lease.slot
            del f  # the ingest's part: the header is sent, the workers release the slot (here: in order)
            held.add(slot)
            if first_id is None:
                first_id, t_first = uid, now
            if now - t_first > seconds:
                break
            last_id, t_last = uid, now
            received += 1
            nbytes += size
    finally:
        server.kill()
        server.wait(10)
        stop.flag = True
        next(frames, None)
        frames.close()
        held.flush()
        c = src.counters()
        src.close()
        ring.close()
        ring.unlink()
    dt = (t_last - t_first) if (t_first is not None and t_last is not None and t_last > t_first) else float("nan")
    published = (last_id - first_id + 1) if first_id is not None else 0
    # frames/s over the interval from the first to the last frame: (received - 1) intervals
    fps_meas = (received - 1) / dt if received > 1 else 0.0
    lost = published - received
    return {
        "case": name, "nx": nx, "ny": ny, "dtype": dtype, "server_fps": fps or "full",
        "frame_bytes": nx * ny * np.dtype(dtype).itemsize, "received": received, "seconds": round(dt, 3),
        "frames_per_s": round(fps_meas, 1), "GB_per_s": round(fps_meas * nx * ny * np.dtype(dtype).itemsize / 1e9, 3),
        "unique_ids_first_last": [first_id, last_id], "lost": lost, "pva_missed": c["pva_missed"],
        "pva_overruns": c["pva_overruns"], "dropped_ring_full": c["dropped_ring_full"],
        "queue_size": queue_size, "server_frames": working_set(n_server, frame_bytes, llc),
        "ring_slots": ring.n_slots, "slots_held": held.hold, "slot_set": working_set(held.hold + 1, frame_bytes, llc),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per case (s)")
    ap.add_argument("--queue-size", type=int, default=16, help="[source] pva_queue_size")
    ap.add_argument("--name", default="vm", help="machine name in the results file")
    args = ap.parse_args()
    env = epics_env(*free_port_pair())
    os.environ.update(env)  # before pvaccess is imported: its client context reads them once
    llc = last_level_cache()
    print(describe_llc(llc))
    rows = [run_case(*case, seconds=args.seconds, queue_size=args.queue_size, env=env, llc=llc) for case in CASES]
    head = f"{'case':<28} {'frames':>7} {'s':>6} {'frames/s':>9} {'GB/s':>6} {'lost':>5} {'overruns':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<28} {r['received']:>7} {r['seconds']:>6.2f} {r['frames_per_s']:>9.1f} "
              f"{r['GB_per_s']:>6.2f} {r['lost']:>5} {r['pva_overruns']:>8}")
    import pvaccess  # noqa: F401  (version below)

    out = {
        "benchmark": "pva_ingest", "machine": args.name, "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "pvapy": _version("pvapy"), "numpy": np.__version__,
        "last_level_cache": llc,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds_per_case": args.seconds,
        "note": "pvapy-ad-sim-server subprocess on loopback, same cores; PvaSource + FrameRing, slots released "
                "in order, all but 4 held (no workers). frames_per_s = (received - 1) / (last arrival - first "
                "arrival). At full rate the "
                "server publishes far faster than one consumer can take (pvapy coalesces updates: the uniqueId "
                "gaps and overruns), so 'lost' there is the server outrunning the receiver; at 100 fps it must be 0.",
        "results": rows,
    }
    path = REPO / "bench" / "results" / f"pva_ingest-{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if rows[-1]["lost"] == 0 else 1


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())

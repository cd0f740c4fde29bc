"""Benchmark: the host side of the frame path — how fast frames can be copied into the shared-memory ring.

The daemon copies every frame once on the host (source buffer -> ring slot), and the GPU then reads the slot by DMA
from the registered ring. So the end-to-end ceiling is min(host copy rate, host->device copy rate), and the two share
the host's memory bandwidth. This measures, for PILATUS 2M int32 frames (9.9 MB):

- ``copy``: frames/s of ``np.copyto`` from distinct source frames (at least 16) into the slots (at least 32) of a
  shared-memory segment, with 1, 2, 4, 8 threads, each thread copying whole frames (numpy releases the GIL for the
  copy); the source frames and the slots each total at least twice the last-level cache (read from sysfs or
  ``lscpu``, printed and in the JSON), so that the copies go to and from memory, as the ingest's do;
- ``copy+dma`` (only with CuPy and a device): the same while another thread keeps the GPU reading the registered
  ring by ``cudaMemcpyAsync`` host->device as fast as it can, and the DMA rate achieved meanwhile.

Random frames, never zeros. Writes ``<out>/host_copy-<hostname>.json`` and prints a table.

    python bench/host_copy.py [--seconds 1.5] [--threads 1,2,4,8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1679, 1475)
sys.path.insert(0, str(REPO / "bench"))

from workload import describe_llc, distinct_frames, frames_to_exceed, last_level_cache, working_set  # noqa: E402


def copy_rate(ring, frames, threads: int, seconds: float) -> float:
    """Frames/s copied into the ring's slots by ``threads`` threads, each copying whole frames round-robin."""
    n_slots = ring.n_slots
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(t: int) -> None:
        k = t
        while time.perf_counter() < stop:
            dst = ring.view(k % n_slots, SHAPE, np.int32)
            np.copyto(dst, frames[k % len(frames)])
            counts[t] += 1
            k += threads

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(counts) / (time.perf_counter() - t0)


class DmaLoad:
    """A thread that keeps host->device copies of ring slots in flight; ``rate()`` is its GB/s while it ran."""

    def __init__(self, ring) -> None:
        import cupy as cp

        self.cp = cp
        self.ring = ring
        buf = np.frombuffer(ring._segment.buf, np.uint8)
        self.base = int(buf.ctypes.data)
        cp.cuda.runtime.hostRegister(self.base, buf.nbytes, 0)
        self.nbytes = int(np.prod(SHAPE)) * 4
        self.dev = cp.cuda.alloc(self.nbytes * 4)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.moved = 0
        self.t = 0.0
        self._stop = threading.Event()
        self._th: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self.moved, self.t = 0, 0.0
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        rt = self.cp.cuda.runtime
        t0 = time.perf_counter()
        k = 0
        while not self._stop.is_set():
            for j in range(8):
                src = self.base + self.ring.slot_offset((k + j) % self.ring.n_slots)
                rt.memcpyAsync(self.dev.ptr + (j % 4) * self.nbytes, src, self.nbytes, rt.memcpyHostToDevice,
                               self.stream.ptr)
            self.stream.synchronize()
            self.moved += 8 * self.nbytes
            k += 8
        self.t = time.perf_counter() - t0

    def stop(self) -> float:
        self._stop.set()
        self._th.join()
        return self.moved / self.t / 1e9 if self.t else 0.0

    def close(self) -> None:
        self.stream.synchronize()
        self.cp.cuda.runtime.hostUnregister(self.base)


def thp_settings() -> dict:
    """The kernel's transparent-huge-page settings and the huge pages in use (what --hugepage can get)."""
    out = {}
    for name in ("enabled", "shmem_enabled"):
        try:
            out[name] = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text().strip()
        except OSError:
            out[name] = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("AnonHugePages", "ShmemHugePages", "HugePages_Total", "Hugepagesize")):
                k, v = line.split(":", 1)
                out[k] = v.strip()
    except OSError:
        pass
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from ringstream.transport.shm_ring import FrameRing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--hugepage", action="store_true",
                    help="madvise(MADV_HUGEPAGE) on the ring before touching it (transparent huge pages for shmem)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. -hugepage)")
    args = ap.parse_args(argv)
    llc = last_level_cache()
    print(describe_llc(llc))
    fbytes = int(np.prod(SHAPE)) * 4
    frames = distinct_frames(frames_to_exceed(fbytes, llc, minimum=16), SHAPE, np.int32, seed=7)
    ring = FrameRing.create(frames_to_exceed(fbytes, llc, minimum=32), fbytes, prefix="ringstream-bench")
    sets = {"source_frames": working_set(len(frames), fbytes, llc),
            "ring_slots": working_set(ring.n_slots, fbytes, llc)}
    print(f"{len(frames)} distinct source frames ({sets['source_frames']['times_llc']} x LLC) into {ring.n_slots} "
          f"slots ({sets['ring_slots']['times_llc']} x LLC)")
    dma = None
    try:
        import cupy  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() > 0:
            dma = DmaLoad(ring)
    except Exception:
        dma = None
    rows = []
    hugepage = None
    if args.hugepage:
        import mmap

        try:
            ring._segment._mmap.madvise(mmap.MADV_HUGEPAGE)
            hugepage = "madvised"
        except (AttributeError, OSError) as exc:
            hugepage = f"madvise refused: {exc}"
    try:
        for ring_slot in range(ring.n_slots):  # touch every page once
            ring.view(ring_slot, SHAPE, np.int32)[:] = 1
        if dma is not None:
            dma.start()
            time.sleep(args.seconds)
            alone = dma.stop()
            rows.append({"threads": 0, "copy_fps": 0.0, "copy_GBps": 0.0, "dma_GBps": round(alone, 2)})
        for t in (int(x) for x in args.threads.split(",")):
            fps = copy_rate(ring, frames, t, args.seconds)
            row = {"threads": t, "copy_fps": round(fps, 1), "copy_GBps": round(fps * fbytes / 1e9, 2)}
            if dma is not None:
                dma.start()
                fps2 = copy_rate(ring, frames, t, args.seconds)
                row["copy_fps_with_dma"] = round(fps2, 1)
                row["dma_GBps"] = round(dma.stop(), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if dma is not None:
            dma.close()
        ring.close()
        ring.unlink()
    machine = {"hostname": socket.gethostname(), "nproc": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "gpu": dma is not None, "thp": thp_settings(), "hugepage": hugepage, "last_level_cache": llc,
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"host_copy-{machine['hostname']}{args.tag}.json"
    path.write_text(json.dumps({"benchmark": "host_copy", "frame": "PILATUS 2M int32", "frame_bytes": fbytes,
                                "working_sets": sets, "machine": machine, "results": rows}, indent=2) + "\n")
    print(f"\n{'threads':>7} {'copy fps':>9} {'GB/s':>6} {'fps w/ DMA':>10} {'DMA GB/s':>8}")
    for r in rows:
        print(f"{r['threads']:>7} {r['copy_fps']:>9.0f} {r['copy_GBps']:>6.1f} {r.get('copy_fps_with_dma', 0):>10.0f} "
              f"{r.get('dma_GBps', 0):>8.1f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

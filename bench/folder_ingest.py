"""Folder ingest: frames/s reading detector files from the page cache, alone and through the real ingest process.

Cases (data: Poisson background plus rings, so that the compressed formats compress as real frames do):

- ``tiff``: 2048 x 2048 uint32 TIFF, one frame per file (uncompressed, as flat panels and areaDetector write them);
- ``cbf``: PILATUS 2M, 1475 x 1679 (cols x rows) int32 CBF, byte-offset compressed, one frame per file;
- ``hdf5``: a multi-frame HDF5 file, 2048 x 2048 uint32 frames, bitshuffle-LZ4 chunks of one frame (as EIGER);
- ``ge``: 2048 x 2048 uint16 frames in one GE ``.ge2`` file (8192-byte header), read frame by frame.

Every file is read once before timing, so it is in the page cache. Every frame is distinct, and each case has at
least enough frames to total twice the last-level cache (read from sysfs or ``lscpu``, printed and in the JSON), so
that no copy runs from the CPU caches. Two rates per case:

- *reader*: ``open_image`` + ``read_into`` preallocated arrays (rotating over a set of at least twice the
  last-level cache), for every frame, in this process (what the format costs: parse, decode, copy);
- *ingest*: the real ``ringstream.ingest.process.run`` with the folder source over the same folder, in a spawned
  child, its ring slots freed in order as the writer acknowledges frames, all but 4 held (as ``bench/ingest_only.py``
  does; the held slots total at least twice the last-level cache): the rate at which the folder source can feed the
  daemon, whatever the engine.

    python bench/folder_ingest.py [--files N] [--cases tiff,cbf,hdf5,ge] [--repeat 5] [--slots N] [--profile]

Each rate is the median of ``--repeat`` runs (the runs are in the JSON too).

Writes bench/results/folder_ingest-<hostname>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ringstream.config import DaemonConfig  # noqa: E402
from ringstream.images.formats import open_image  # noqa: E402
from ringstream.ingest import process as ingest_process  # noqa: E402
from ringstream.protocol import EndOfStream, FrameHeader  # noqa: E402
from ringstream.transport import free_tcp_endpoint, recv_message  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from workload import HeldSlots, PlayWorker, describe_llc, frames_to_exceed, last_level_cache, working_set  # noqa: E402

PARAMS = """NrPixelsY {ny}
NrPixelsZ {nz}
Lsd 1000000
px 172
BC {bcy} {bcz}
RMin 10
RMax 1000
RBinSize 1
EtaBinSize 5
Wavelength 0.2
"""

#: case -> (rows NrPixelsZ, cols NrPixelsY, dtype, what)
CASES = {
    "tiff": (2048, 2048, np.uint32, "2048x2048 uint32 TIFF, 1 frame/file"),
    "cbf": (1679, 1475, np.int32, "PILATUS 2M 1475x1679 int32 CBF (byte offset), 1 frame/file"),
    "hdf5": (2048, 2048, np.uint32, "2048x2048 uint32 HDF5 bitshuffle-LZ4, multi-frame"),
    "ge": (2048, 2048, np.uint16, "2048x2048 uint16 GE .ge2, multi-frame"),
}


#: frames per case by default: enough that one timed pass lasts ~0.1 s or more on the 2-core VM
DEFAULT_FRAMES = {"tiff": 128, "cbf": 96, "hdf5": 128, "ge": 256}


def make_frames(shape, dtype, n: int, seed: int = 0):
    """``n`` distinct frames, one at a time: Poisson background (mean 3) plus three rings of a few hundred counts,
    with 2,000 random pixels of frame k raised by k + 1."""
    rng = np.random.default_rng(seed)
    z, y = np.indices(shape)
    r = np.hypot(z - shape[0] / 2, y - shape[1] / 2)
    rings = sum(400 * np.exp(-((r - r0) / 3.0) ** 2) for r0 in (300, 550, 800))
    base = rng.poisson(3 + rings).astype(dtype)
    for k in range(n):
        f = base.copy()
        f.flat[rng.integers(0, f.size, 2000)] += dtype(k + 1)  # frames differ
        yield f


def write_case(case: str, folder: Path, n: int) -> int:
    """Write case ``case`` (``n`` distinct frames) into ``folder``; returns the number of frames."""
    nz, ny, dtype, _ = CASES[case]
    frames = make_frames((nz, ny), dtype, n)
    if case == "tiff":
        import tifffile

        for k, frame in enumerate(frames):
            tifffile.imwrite(folder / f"img_{k:05d}.tif", frame)
    elif case == "cbf":
        from fabio.cbfimage import CbfImage

        for k, frame in enumerate(frames):
            CbfImage(data=frame).write(str(folder / f"img_{k:05d}.cbf"))
    elif case == "hdf5":
        import h5py
        import hdf5plugin

        with h5py.File(folder / "scan_000001.h5", "w") as f:
            ds = f.create_dataset("entry/data/data", shape=(n, nz, ny), dtype=dtype, chunks=(1, nz, ny),
                                  **hdf5plugin.Bitshuffle(cname="lz4"))
            for k, frame in enumerate(frames):
                ds[k] = frame
    else:
        with open(folder / "scan_00001.ge2", "wb") as fh:
            fh.write(b"\0" * 8192)
            for frame in frames:
                fh.write(frame.astype("<u2").tobytes())
    return n


def warm(folder: Path) -> int:
    """Read every file once (into the page cache) and date it a minute back (files that were there before the
    source started are read at once; younger ones wait for a stable size first); returns the bytes on disk."""
    total = 0
    past = time.time() - 60
    for p in folder.iterdir():
        os.utime(p, (past, past))
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    return total


def reader_rate(folder: Path, shape, dtype, llc: dict) -> tuple[float, int]:
    """frames/s of open_image + read_into over every file of ``folder`` (sorted), into destination arrays taken in
    turn from a set of at least twice the last-level cache."""
    from ringstream.images.formats import FormatOptions

    opts = FormatOptions(detector_shape=shape)
    files = sorted(folder.iterdir())
    dest = np.ones((frames_to_exceed(int(np.prod(shape)) * np.dtype(dtype).itemsize, llc, minimum=2),) + shape,
                   dtype)  # touched: no first-touch page faults in the timing
    n = 0
    t0 = time.perf_counter()
    for p in files:
        with open_image(p, opts) as f:
            for k in range(f.n_frames):
                buf = dest[n % len(dest)]
                f.read_into(k, buf if buf.dtype == f.dtype else np.empty(f.shape, f.dtype))
                n += 1
    return n / (time.perf_counter() - t0), n


def _profiled_ingest(config, ready, stop, out_path):
    import cProfile
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(ingest_process.run, config, ready, stop)
    finally:
        with open(out_path, "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("tottime").print_stats(14)


def ingest_rate(folder: Path, params: Path, n_frames: int, n_files: int, slots: int, tmp: Path,
                profile: bool = False) -> dict:
    """frames/s of the real ingest process with the folder source; this process plays the worker (credit) and the
    writer (acknowledgements in order, all but 4 frames held)."""
    ep = {k: free_tcp_endpoint() for k in ("frames_endpoint", "results_endpoint", "release_endpoint",
                                           "events_endpoint")}
    config = DaemonConfig.from_dict({
        "run": {"param_file": str(params), "output_h5": str(tmp / "unused.h5")},
        "source": {"kind": "folder", "folder": str(folder), "file_count": n_files, "dtype": "uint16"},
        "workers": {"count": 1, "engine": "cpu"},
        "transport": dict(ep, ring_slots=slots, queue_depth=slots),
        "logging": {"level": "WARNING"},
    })
    ctx = zmq.Context()
    player = PlayWorker(ctx, ep["frames_endpoint"], ep["release_endpoint"], slots)
    frames = player.frames
    results = ctx.socket(zmq.PULL)
    results.bind(ep["results_endpoint"])
    events = ctx.socket(zmq.PULL)
    events.bind(ep["events_endpoint"])
    spawn = mp.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    prof_path = tmp / f"profile-{folder.name}.txt"
    target, extra = (_profiled_ingest, (str(prof_path),)) if profile else (ingest_process.run, ())
    child = spawn.Process(target=target, args=(config, ready, stop, *extra), daemon=True)
    child.start()
    if not ready.wait(120):
        raise SystemExit("ingest did not become ready")
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    held = HeldSlots(player.acknowledge, slots - 4)
    n, t_first, t_end, eos = 0, None, None, None
    while eos is None or n < eos.n_frames:
        events_ready = poller.poll(10000)
        if not events_ready:
            break
        for sock, _ in events_ready:
            if sock is frames:
                msg, _ = recv_message(frames)
                assert isinstance(msg, FrameHeader)
                now = time.perf_counter()
                t_first = t_first or now
                t_end = now
                n += 1
                held.add(msg)
            else:
                msg, _ = recv_message(results)
                if isinstance(msg, EndOfStream):
                    eos = msg
    held.flush()
    child.join(60)
    player.close()
    for s in (results, events):
        s.close(0)
    ctx.term()
    fps = (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else 0.0
    if profile and prof_path.exists():
        print(f"--- ingest profile, {folder.name}\n{prof_path.read_text()}")
    return {"ingest_frames": n, "ingest_fps": round(fps, 1), "ingest_exit_code": child.exitcode,
            "expected_frames": n_frames}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=0, help="files (tiff, cbf) or frames (hdf5, ge) per case "
                    f"(default {DEFAULT_FRAMES})")
    ap.add_argument("--cases", default="tiff,cbf,hdf5,ge")
    ap.add_argument("--slots", type=int, default=0,
                    help="ring slots (0: enough that the held slots total at least twice the last-level cache, >= 16)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is reported")
    ap.add_argument("--profile", action="store_true", help="print where the ingest child's time goes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    rows = []
    load_at_start = list(os.getloadavg())  # the box is shared: say how busy it was
    llc = last_level_cache()
    print(describe_llc(llc))
    root = Path(tempfile.mkdtemp(prefix="folder-ingest-"))
    try:
        for case in args.cases.split(","):
            nz, ny, dtype, what = CASES[case]
            folder = root / case
            folder.mkdir()
            params = root / f"{case}.txt"
            params.write_text(PARAMS.format(ny=ny, nz=nz, bcy=ny / 2, bcz=nz / 2))
            frame_bytes = nz * ny * np.dtype(dtype).itemsize
            n = write_case(case, folder, frames_to_exceed(frame_bytes, llc, args.files or DEFAULT_FRAMES[case]))
            disk = warm(folder)
            reader_rate(folder, (nz, ny), dtype, llc)  # once more: warm imports and caches
            reads = [reader_rate(folder, (nz, ny), dtype, llc) for _ in range(args.repeat)]
            fps, n_read = float(np.median([r[0] for r in reads])), reads[0][1]
            n_files = len(list(folder.iterdir()))
            slots = args.slots or frames_to_exceed(frame_bytes, llc, minimum=12) + 4
            runs = [ingest_rate(folder, params, n, n_files, slots, root, args.profile and j == 0)
                    for j in range(args.repeat)]
            ing = dict(runs[0], ingest_fps=float(np.median([r["ingest_fps"] for r in runs])),
                       ingest_fps_runs=[r["ingest_fps"] for r in runs],
                       ingest_frames=min(r["ingest_frames"] for r in runs),
                       ingest_exit_code=max(r["ingest_exit_code"] or 0 for r in runs))
            rows.append({"case": case, "what": what, "frames": n_read, "files": n_files,
                         "frame_set": working_set(n, frame_bytes, llc), "ring_slots": slots,
                         "slot_set": working_set(slots - 3, frame_bytes, llc),
                         "MB_on_disk_per_frame": round(disk / n / 1e6, 2), "frame_MB": round(frame_bytes / 1e6, 2),
                         "reader_fps": round(fps, 1), "reader_fps_runs": [round(r[0], 1) for r in reads],
                         "reader_GB_s": round(fps * frame_bytes / 1e9, 2), **ing,
                         "ingest_GB_s": round(ing["ingest_fps"] * frame_bytes / 1e9, 2)})
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = {"hostname": socket.gethostname(), "nproc": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
               "last_level_cache": llc}
    for mod in ("tifffile", "fabio", "h5py", "hdf5plugin"):
        m = __import__(mod)
        machine[mod] = getattr(m, "__version__", None) or str(getattr(m, "version", ""))
    head = (f"{'case':<6} {'frames':>6} {'MB/frame on disk':>16} {'reader fps':>10} {'GB/s':>6} "
            f"{'ingest fps':>10} {'GB/s':>6}")
    print(head)
    for r in rows:
        print(f"{r['case']:<6} {r['frames']:>6} {r['MB_on_disk_per_frame']:>16} {r['reader_fps']:>10} "
              f"{r['reader_GB_s']:>6} {r['ingest_fps']:>10} {r['ingest_GB_s']:>6}   {r['what']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"folder_ingest-{machine['hostname']}.json"
    path.write_text(json.dumps({"benchmark": "folder_ingest", "machine": machine, "results": rows}, indent=2))
    print(f"wrote {path}")
    bad = [r for r in rows if r["ingest_frames"] != r["expected_frames"] or r["ingest_exit_code"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

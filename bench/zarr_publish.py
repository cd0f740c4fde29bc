"""zarr.zip publication: time per publication against the length of the run, and the disk it takes meanwhile.

A run of ``--groups`` omega-sum groups of ``--shape`` float64 (default 10,000 of [100, 36]: 28.8 kB of sum each,
with ``OmegaSumFrames 1`` what a lineout-sized cake per frame gives) goes through ``ZarrZipSink`` (the writer's
zarr.zip sink) with a publication every ``--every`` groups, waited for (``publish(wait=True)``: the whole cost of each
publication is timed in this thread), then ``close``. Reported: each publication's time against the groups already
in the file (it must not grow with the run), and the *extra disk*: the blocks of every file in the output folder
(the private files the sink keeps beside the output included) less the bytes of the published sums, sampled every
5 ms by a thread, peak and at the end; and the file's size (apparent and on disk) against a compact ZIP of the same
members (``compact_zip_MB``).

The ringstream that is imported is measured, so the code before a change is measured with the same script by
putting its tree first on the path:

    PYTHONPATH=/path/to/old/tree python bench/zarr_publish.py --label before
    python bench/zarr_publish.py --label after       # results merged into bench/results/zarr_publish-<machine>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

import ringstream
from ringstream.writer.omega import OmegaGroup
from ringstream.writer.zarr_zip import ZarrZipSink

HERE = Path(__file__).resolve().parent


def _disk(folder: Path) -> int:
    """Bytes of disk blocks of every file under ``folder``."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # (a private file renamed or removed meanwhile)
                pass
    return total


def _commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def run(groups: int, shape: tuple[int, int], every: int, folder: Path) -> dict:
    path = folder / "bench.zarr.zip"
    rng = np.random.default_rng(0)
    sums = [rng.random(shape) * 1000 for _ in range(16)]  # (group g holds sums[g % 16]: inputs are not timed)
    sink = ZarrZipSink(path, rng.random((5, *shape)), {"Lam": 0.2}, 6)
    live = [0]  # bytes the published groups need (sums only: the zarr metadata is a few hundred bytes a group)
    peak = [0, 0]  # extra disk, groups when it was seen
    stop = threading.Event()

    def sample():
        while not stop.wait(0.005):
            extra = _disk(folder) - live[0]
            if extra > peak[0]:
                peak[:] = [extra, sink.groups_published]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pubs = []
    t0 = time.perf_counter()
    for g in range(groups):
        sink.add_group(OmegaGroup(g, sums[g % 16], 1, g, g, 0.0, 0.0))
        if g % every == every - 1 and g != groups - 1:
            t = time.perf_counter()
            sink.publish(wait=True)
            pubs.append((g + 1, time.perf_counter() - t))
            live[0] = (g + 1) * sums[0].nbytes
    t = time.perf_counter()
    sink.close()
    close_s = time.perf_counter() - t
    total_s = time.perf_counter() - t0
    live[0] = groups * sums[0].nbytes
    stop.set()
    sampler.join()
    end_extra = _disk(folder) - live[0]
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:  # what a compact ZIP of the same members needs: headers, data, directory
        needed = sum(30 + len(i.filename.encode()) + len(i.extra) + i.compress_size for i in z.infolist())
        needed += sum(46 + len(i.filename.encode()) + len(i.extra) for i in z.infolist()) + 22
    times = [s for _, s in pubs]
    tenth = max(1, len(times) // 10)
    return {
        "groups": groups, "shape": list(shape), "dtype": "float64", "publish_every": every,
        "publications": len(pubs) + 1, "total_s": round(total_s, 3), "close_s": round(close_s, 4),
        "publish_ms_first_tenth": round(1e3 * float(np.mean(times[:tenth])), 3),
        "publish_ms_last_tenth": round(1e3 * float(np.mean(times[-tenth:])), 3),
        "publish_ms_max": round(1e3 * max(times), 3),
        "publish_ms_by_groups": [[n, round(1e3 * s, 3)] for n, s in pubs[::max(1, len(pubs) // 20)]],
        "peak_extra_disk_MB": round(peak[0] / 1e6, 2), "peak_extra_disk_at_groups": peak[1],
        "end_extra_disk_MB": round(end_extra / 1e6, 2),
        "file_MB": round(size / 1e6, 2), "sums_MB": round(live[0] / 1e6, 2),
        "file_disk_MB": round(path.stat().st_blocks * 512 / 1e6, 2), "compact_zip_MB": round(needed / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--shape", type=int, nargs=2, default=[100, 36])
    ap.add_argument("--every", type=int, default=250, help="groups between publications (250)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--machine", default="vm")
    ap.add_argument("--dir", default=None, help="where the files go (a temporary folder in /tmp)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="zarr_publish.", dir=args.dir))
    load = os.getloadavg()[0]  # (a 2-core box shared with other work: say how busy it was)
    try:
        result = run(args.groups, tuple(args.shape), args.every, folder)
        result["load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    tree = Path(ringstream.__file__).resolve().parents[1]
    result["code"] = {"tree": str(tree), "commit": _commit(tree)}
    print(json.dumps(result, indent=1))
    out = HERE / "results" / f"zarr_publish-{args.machine}.json"
    data = json.loads(out.read_text()) if out.exists() else {
        "benchmark": "zarr_publish",
        "what": "ZarrZipSink: publish(wait=True) every N groups of float64 sums, then close; extra disk = blocks of "
                "every file in the output folder less the published sums, sampled every 5 ms",
        "command": "PYTHONPATH=<tree> python bench/zarr_publish.py --label <label>", "runs": {}}
    data["machine"] = {"hostname": args.machine, "nproc": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                                              time.gmtime())}
    data["runs"][args.label] = result
    out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()

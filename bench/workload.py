"""What the benchmarks run: the daemon's settings they compare, and working sets that do not fit in the CPU caches.

Daemon settings. The headline row of every daemon benchmark is :data:`DEFAULT`: what a user who starts
``ringstream run`` on the demo parameter file gets (``OmegaSumFrames`` as the file gives it, so MIDAS's default of
1 for ``configs/demo-pilatus2m.txt``; the zarr.zip written). :data:`FAST_PATH` is the configuration tuned for a fast
stream (``OmegaSumFrames -1``: one running sum; ``--no-zarr``), reported beside it and named as such.

Working sets. A copy benchmark that copies one frame into one buffer over and over measures the last-level cache,
not memory. :func:`last_level_cache` reads the LLC from sysfs (or ``lscpu``), and :func:`frames_to_exceed` gives
how many distinct frames make a working set of at least twice its size; :func:`distinct_frames` makes them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_PARAMS = REPO / "configs" / "demo-pilatus2m.txt"


@dataclasses.dataclass(frozen=True)
class DaemonSettings:
    """One configuration of a daemon benchmark run: ``omega_sum_frames`` None = the parameter file's own value."""

    name: str
    omega_sum_frames: int | None
    zarr: bool

    def flags(self) -> list[str]:
        """``ringstream run`` flags of these settings (place before any parameter override)."""
        return [] if self.zarr else ["--no-zarr"]

    def overrides(self) -> list[str]:
        """Parameter overrides (``KEY VALUE`` after every flag of ``ringstream run``)."""
        return [] if self.omega_sum_frames is None else ["OmegaSumFrames", str(self.omega_sum_frames)]

    def param_lines(self) -> str:
        """The same as lines appended to a parameter file."""
        return "" if self.omega_sum_frames is None else f"OmegaSumFrames {self.omega_sum_frames}\n"

    def describe(self, param_file: Path = DEMO_PARAMS) -> dict:
        """What the settings are, in the JSON rows: the effective OmegaSumFrames and where it comes from."""
        if self.omega_sum_frames is None:
            from ringstream.params import load_params

            osf, origin = int(load_params(param_file).OmegaSumFrames), f"from {param_file.name}"
        else:
            osf, origin = self.omega_sum_frames, "override"
        return {"settings": self.name, "omega_sum_frames": osf, "omega_sum_frames_origin": origin,
                "zarr": self.zarr}


DEFAULT = DaemonSettings("default", None, True)
FAST_PATH = DaemonSettings("fast-path", -1, False)


def daemon_settings(names: str, fast_omega_sum_frames: str = "-1") -> list[DaemonSettings]:
    """The settings named in ``names`` (comma-separated ``default``, ``fast-path``), in that order; the fast path once
    per comma-separated OmegaSumFrames value of ``fast_omega_sum_frames`` (named ``fast-path-osf<N>`` unless -1)."""
    out: list[DaemonSettings] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name == "default":
            out.append(DEFAULT)
        elif name == "fast-path":
            for v in (int(x) for x in fast_omega_sum_frames.split(",")):
                out.append(FAST_PATH if v == -1 else DaemonSettings(f"fast-path-osf{v}", v, False))
        else:
            raise SystemExit(f"unknown settings {name!r}: expected default and/or fast-path")
    return out


# ------------------------------------------------------------------------------------------------ working sets
def _sysfs_llc() -> dict | None:
    """The highest-level data or unified cache of sysfs: size of one instance, number of instances, total."""
    instances: dict[tuple[int, str], int] = {}
    level = 0
    for cache in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            if (cache / "type").read_text().strip() == "Instruction":
                continue
            lv = int((cache / "level").read_text())
            size = (cache / "size").read_text().strip()
            shared = (cache / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        nbytes = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        if lv > level:
            level, instances = lv, {}
        if lv == level:
            instances[(lv, shared)] = nbytes
    if not instances:
        return None
    sizes = list(instances.values())
    return {"level": level, "instance_bytes": max(sizes), "instances": len(sizes), "total_bytes": sum(sizes),
            "source": "sysfs"}


def _lscpu_llc() -> dict | None:
    try:
        text = subprocess.run(["lscpu", "-B", "-C=NAME,ONE-SIZE,ALL-SIZE,LEVEL,TYPE"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    best = None
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5 or parts[4] == "Instruction":
            continue
        try:
            one, total, lv = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            continue
        if best is None or lv > best["level"]:
            best = {"level": lv, "instance_bytes": one, "instances": max(1, total // one), "total_bytes": total,
                    "source": "lscpu"}
    return best


def last_level_cache() -> dict:
    """The last-level cache: ``level``, ``instance_bytes``, ``instances``, ``total_bytes`` (all instances: what a
    copy spread over every core could keep resident), ``source`` (sysfs, lscpu; 64 MiB assumed when neither says)."""
    return _sysfs_llc() or _lscpu_llc() or {"level": None, "instance_bytes": 64 << 20, "instances": 1,
                                            "total_bytes": 64 << 20, "source": "unknown (64 MiB assumed)"}


def describe_llc(llc: dict) -> str:
    """One line for the benchmark's output."""
    return (f"last-level cache: L{llc['level']} {llc['instance_bytes'] / 2**20:g} MiB x {llc['instances']} = "
            f"{llc['total_bytes'] / 2**20:g} MiB ({llc['source']})")


def frames_to_exceed(frame_bytes: int, llc: dict, minimum: int = 1, factor: float = 2.0) -> int:
    """Distinct frames of ``frame_bytes`` whose total is at least ``factor`` times the whole last-level cache."""
    return max(int(minimum), math.ceil(factor * llc["total_bytes"] / frame_bytes))


def distinct_frames(n: int, shape, dtype, seed: int = 0, high: int = 4000) -> np.ndarray:
    """``[n, *shape]`` frames, each in its own memory and with its own values: one random frame plus ``k`` in frame
    ``k`` (random values in [1, high), never zeros; the content of each frame differs)."""
    dtype = np.dtype(dtype)
    base = np.random.default_rng(seed).integers(1, high, size=tuple(shape), dtype=dtype)
    out = np.empty((int(n),) + tuple(shape), dtype)
    for k in range(int(n)):
        np.add(base, dtype.type(k % (np.iinfo(dtype).max - high) if dtype.kind in "ui" else k), out=out[k])
    return out


def working_set(n: int, frame_bytes: int, llc: dict) -> dict:
    """The JSON record of a working set of ``n`` distinct frames."""
    total = int(n) * int(frame_bytes)
    return {"distinct_frames": int(n), "bytes": total, "llc_total_bytes": llc["total_bytes"],
            "times_llc": round(total / llc["total_bytes"], 2)}


class HeldSlots:
    """Ring slots held as busy workers hold them: each new slot is kept, and the oldest is released (``release(x)``)
    once more than ``hold`` are kept. An ingest that gets its slots back at once reuses one or two hot slots (the
    ring's free list is last in, first out); holding ``hold`` of them makes its copies rotate over ``hold + 1``
    slots, as in the daemon."""

    def __init__(self, release, hold: int) -> None:
        self.release, self.hold = release, max(0, int(hold))
        self.kept: collections.deque = collections.deque()

    def add(self, item) -> None:
        self.kept.append(item)
        while len(self.kept) > self.hold:
            self.release(self.kept.popleft())

    def flush(self) -> None:
        """Release every slot still kept (the end of a run)."""
        while self.kept:
            self.release(self.kept.popleft())


class PlayWorker:
    """A benchmark's stand-in for a worker and the writer, facing a real ingest process: a DEALER on the frames
    endpoint that announces ``credit`` (the ingest sends a frame only against credit) and a PUSH on the
    acknowledgement endpoint (``release_endpoint``). :meth:`acknowledge` of a FrameHeader frees its slot and gives
    one credit back, as the writer's FrameAck and the worker's Credit do (and says the frame is in the files for good:
the writer's Flushed, which the ingest waits for at the end)."""

    def __init__(self, ctx, frames_endpoint: str, release_endpoint: str, credit: int) -> None:
        import os

        import zmq

        from ringstream.protocol import Credit, worker_identity
        from ringstream.transport.sockets import send_message

        self.pid, self._send, self._credit = os.getpid(), send_message, Credit
        self.frames = ctx.socket(zmq.DEALER)
        self.frames.setsockopt(zmq.ROUTING_ID, worker_identity(0, self.pid))
        self.frames.connect(frames_endpoint)
        self.acks = ctx.socket(zmq.PUSH)
        self.acks.connect(release_endpoint)
        send_message(self.frames, Credit(worker=0, pid=self.pid, n=int(credit)))

    def acknowledge(self, header) -> None:
        from ringstream.protocol import Flushed, FrameAck

        self._send(self.acks, FrameAck(frames=[int(header.frame_index)]))
        self._send(self.acks, Flushed(below=int(header.frame_index) + 1, writer_pid=self.pid))  # (kept for good)
        self._send(self.frames, self._credit(worker=0, pid=self.pid, n=1))

    def close(self) -> None:
        self.frames.close(0)
        self.acks.close(0)

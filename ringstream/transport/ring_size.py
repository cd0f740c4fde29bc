"""How many slots the shared-memory frame ring gets when ``[transport] ring_slots = 0`` (auto, the default).

A slot is held from the ingest's copy until the writer acknowledges the frame's Result (docs/DAEMON.md,
"Delivery"), so the ring must cover every frame in flight: those queued for a worker, those on its device, and
those whose Results are on their way to the writer. A CPU worker integrates one frame at a time: 32 slots cover
it. A GPU worker keeps ``batches_in_flight`` batches of ``gpu_batch`` frames (the CuPy engine's batch, 8) on its
device and as many again finishing; 32 slots starve two of them (measured: docs/DAEMON.md, "Delivery"). So a GPU
daemon gets

    4 x workers x batches_in_flight x gpu_batch slots      (256 for 2 workers, 4 batches in flight)

and, with ``[fit] per_eta``, at least 2 x workers x fit_frames (a worker holds up to half its share of the ring
to fit that many frames in one call: ``ringstream.fitting.FIT_FRAMES``, 128). Never more than a quarter of the memory
available, nor half of what ``/dev/shm`` has free (a PILATUS 2M int32 slot is 9.9 MB: 256 slots are 2.5 GB), and
never fewer than :data:`CPU_SLOTS`. The supervisor resolves the number once, before any child starts, and logs it.
"""

from __future__ import annotations

import dataclasses
import os

#: slots of a CPU daemon, and the floor of every auto-sized ring
CPU_SLOTS = 32


@dataclasses.dataclass(frozen=True)
class RingSize:
    """The resolved ring: ``slots``, and ``why`` (one line for the log)."""

    slots: int
    why: str


def mem_available(meminfo: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes (None where it cannot be read)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def shm_free(folder: str = "/dev/shm") -> int | None:
    """Bytes free in ``folder`` (None where there is none)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def auto_ring_slots(*, gpu: bool, workers: int, batches_in_flight: int, gpu_batch: int, per_eta: bool,
                    fit_frames: int, slot_bytes: int, available: int | None, shm: int | None) -> RingSize:
    """The ring's slots for ``[transport] ring_slots = 0`` (see the module docstring). ``gpu``: the workers run the
    GPU engine, ``gpu_batch`` frames a batch; ``fit_frames``: the most frames a per-eta fit call takes;
    ``slot_bytes``: one frame's slot (the largest pixel type the source may send); ``available``, ``shm``: bytes of
    memory available and free in /dev/shm (None: not known, no cap from it)."""
    workers = max(1, int(workers))
    if not gpu:
        return RingSize(CPU_SLOTS, f"{CPU_SLOTS} (CPU workers)")
    flight, batch = max(1, int(batches_in_flight)), max(1, int(gpu_batch))
    want = 4 * workers * flight * batch
    what = f"4 x {workers} GPU worker(s) x {flight} batches in flight x {batch} frames"
    if per_eta and 2 * workers * fit_frames > want:
        want, what = 2 * workers * fit_frames, f"2 x {workers} GPU worker(s) x {fit_frames} frames fitted per eta"
    caps = []
    if available:
        caps.append((available // 4 // max(1, slot_bytes), "a quarter of the memory available"))
    if shm:
        caps.append((shm // 2 // max(1, slot_bytes), "half of /dev/shm's free space"))
    slots, why = want, what
    for cap, name in caps:
        if cap < slots:
            slots, why = cap, f"{what} = {want}, capped at {name}"
    if slots < CPU_SLOTS:
        slots, why = CPU_SLOTS, f"{CPU_SLOTS}, the floor ({why})"
    return RingSize(int(slots), why)

"""Where each GPU sits on the host, and where its worker runs: the GPU's NUMA node and that node's CPUs.

On a host of several CPU sockets each GPU hangs off one socket's PCIe root. A worker whose CPUs and host memory
(the pinned staging buffers, the results' pinned buffers, the CUDA context's own) lie on the other socket sends
every frame over the inter-socket link twice. So a GPU worker (``[workers] numa_affinity = "auto"``) pins itself,
every thread it has and every thread it starts later (ZeroMQ's I/O threads, the staging copy threads), to the CPUs
of its GPU's node before it loads the map or makes its engine: memory is placed where it is first touched, so
everything it allocates lands on that node.

What is read (sysfs; its root is ``$RINGSTREAM_SYSFS_ROOT``, default ``/sys``, so that tests can point it at a
folder of real files shaped like it):

- ``bus/pci/devices/<bus id>/numa_node``: the node of a PCI device; ``-1`` when the firmware does not say;
- ``devices/system/node/node<N>/cpulist``: the CPUs of node N, as the kernel lists them (``0-15,32-47``).

A GPU's PCI bus id (lower case, ``0000:41:00.0``) comes from CuPy (``cudaDeviceGetPCIBusId``: CUDA's numbering of
the devices, ``CUDA_VISIBLE_DEVICES`` applied), else from ``nvidia-smi --query-gpu=index,pci.bus_id`` (the driver's
numbering, mapped through a numeric ``CUDA_VISIBLE_DEVICES``; it equals CUDA's only with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so it is the fallback). A node that is ``-1``, unreadable or absent is unknown:
the worker is not pinned and says so in one line.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .base import GPU_INSTALL_HINT

log = logging.getLogger("ringstream.engines")

__all__ = ["SYSFS_ENV", "Placement", "Topology", "decide_affinity", "format_cpulist", "gpu_bus_id",
           "normalize_bus_id", "parse_cpulist", "pin_process", "place_worker", "resolve_gpus"]

#: the environment variable naming the sysfs root (tests: a folder of real files)
SYSFS_ENV = "RINGSTREAM_SYSFS_ROOT"
#: ``[workers] gpus`` meaning every device CuPy sees
ALL = "all"

_BUS_ID = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


# ------------------------------------------------------------------------------------------------ text formats


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The CPUs of a kernel cpulist (``"0-15,32-47"``, ``"3"``, ``""``), sorted; ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"cpulist {text.strip()!r}: {part!r} is not N or N-M")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"cpulist {text.strip()!r}: range {part!r} runs backwards")
        cpus.update(range(a, b + 1))
    return tuple(sorted(cpus))


def format_cpulist(cpus: Iterable[int]) -> str:
    """CPUs as the kernel lists them: ``{0, 1, 2, 3, 8}`` -> ``"0-3,8"``."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(int(c) for c in cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def normalize_bus_id(text: str) -> str:
    """A PCI bus id as sysfs names it: ``"00000000:41:00.0"`` (nvidia-smi, CUDA) -> ``"0000:41:00.0"``;
    ValueError when it is not one."""
    s = text.strip().lower()
    m = _BUS_ID.match(s)
    if not m:
        raise ValueError(f"{text.strip()!r} is not a PCI bus id (DOMAIN:BUS:DEVICE.FUNCTION)")
    return f"{int(m.group(1), 16):04x}:{m.group(2)}:{m.group(3)}.{m.group(4)}"


# ------------------------------------------------------------------------------------------------ the host


@dataclass(frozen=True)
class Topology:
    """The NUMA facts of a host under sysfs root ``root``."""

    root: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Topology:
        """The host's (``/sys``), or the folder ``$RINGSTREAM_SYSFS_ROOT`` names."""
        return cls(Path(env.get(SYSFS_ENV) or "/sys"))

    def nodes(self) -> dict[int, tuple[int, ...]]:
        """``{node: its CPUs}`` of every node whose cpulist reads (a node without CPUs is left out)."""
        out: dict[int, tuple[int, ...]] = {}
        base = self.root / "devices" / "system" / "node"
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return out
        for entry in entries:
            m = re.fullmatch(r"node(\d+)", entry.name)
            if not m:
                continue
            try:
                cpus = parse_cpulist((entry / "cpulist").read_text())
            except (OSError, ValueError) as exc:
                log.info("NUMA node %s: cpulist not read (%s)", m.group(1), exc)
                continue
            if cpus:
                out[int(m.group(1))] = cpus
        return out

    def device_node(self, bus_id: str) -> int | None:
        """The NUMA node of PCI device ``bus_id``; None when unknown (``-1``, unreadable, absent)."""
        try:
            node = int((self.root / "bus" / "pci" / "devices" / normalize_bus_id(bus_id) / "numa_node").read_text())
        except (OSError, ValueError):
            return None
        return node if node >= 0 else None


def gpu_bus_id(device: int, env: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """``(bus id, how it was found)`` of CUDA device ``device``, or ``(None, why not)``: CuPy first, then
    nvidia-smi (module docstring)."""
    try:
        import cupy

        if int(cupy.cuda.runtime.getDeviceCount()) > device:
            return normalize_bus_id(cupy.cuda.runtime.deviceGetPCIBusId(device)), "CUDA"
    except Exception:  # no CuPy or no device: the driver's tool may still know
        pass
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, env=dict(env))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"no CuPy device and no nvidia-smi ({type(exc).__name__})"
    ids: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        index, _, bus = line.partition(",")
        try:
            ids[int(index)] = normalize_bus_id(bus)
        except ValueError:
            continue
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    index = device
    if visible:
        if not all(v.isdigit() for v in visible) or device >= len(visible):
            return None, f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} is not a list of nvidia-smi indices"
        index = int(visible[device])
    if index not in ids:
        return None, f"nvidia-smi lists no GPU {index}"
    return ids[index], "nvidia-smi"


# ------------------------------------------------------------------------------------------------ the decision


@dataclass(frozen=True)
class Placement:
    """Where a worker runs: CUDA ``device`` (-1: none), its ``node`` (-1: unknown or not asked), the ``cpus`` it
    is pinned to (empty: not pinned) and one line saying why."""

    device: int
    node: int
    cpus: tuple[int, ...]
    why: str

    @property
    def pinned(self) -> bool:
        return bool(self.cpus)


def decide_affinity(mode: str, gpu_worker: bool, device: int, nodes: Mapping[int, tuple[int, ...]],
                    node: int | None, allowed: Iterable[int], where: str = "") -> Placement:
    """Whether, and to which CPUs, a worker on CUDA ``device`` is pinned (``[workers] numa_affinity`` ``mode``):
    only with ``auto``, a GPU worker, a host of more than one NUMA node (``nodes``), a known ``node`` of the GPU
    (``where`` says how its bus id was found) and some of that node's CPUs among those the process may use
    (``allowed``: a cpuset or taskset is respected)."""
    if not gpu_worker:
        return Placement(-1, -1, (), "not pinned: engine cpu")
    if mode == "off":
        return Placement(device, -1, (), "not pinned: [workers] numa_affinity = \"off\"")
    if len(nodes) < 2:
        return Placement(device, -1, (), f"not pinned: the host has {len(nodes) or 'no known'} NUMA node"
                                         f"{'' if len(nodes) == 1 else 's'}")
    if node is None or node not in nodes:
        return Placement(device, -1, (), f"not pinned: the NUMA node of GPU {device} is unknown{where}")
    cpus = tuple(sorted(set(nodes[node]) & set(allowed)))
    if not cpus:
        return Placement(device, node, (), f"not pinned: none of NUMA node {node}'s CPUs "
                                           f"({format_cpulist(nodes[node])}) is allowed to this process "
                                           f"({format_cpulist(allowed)})")
    return Placement(device, node, cpus, f"pinned to NUMA node {node} of GPU {device}{where}: CPUs "
                                         f"{format_cpulist(cpus)}")


def pin_process(cpus: Iterable[int]) -> None:
    """Pin every thread of this process (and so every thread it starts later) to ``cpus``."""
    cpus = set(cpus)
    os.sched_setaffinity(0, cpus)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (OSError, ValueError):  # a thread that ended meanwhile
            pass


def place_worker(mode: str, engine: str, device: int, name: str, env: Mapping[str, str] = os.environ) -> Placement:
    """Decide where worker ``name`` (CUDA ``device``, ``[workers] engine`` ``engine``) runs, pin it there and log
    one line. A worker whose engine may be the GPU one (``gpu``, ``auto``) counts as a GPU worker: the decision is
    taken before the engine exists, so that what the engine allocates is placed by it."""
    gpu_worker = engine != "cpu"
    if not gpu_worker or mode == "off":
        placement = decide_affinity(mode, gpu_worker, device, {}, None, ())
    else:
        topo = Topology.from_env(env)
        nodes = topo.nodes()
        node, where = None, ""
        if len(nodes) > 1:
            bus, how = gpu_bus_id(device, env)
            node = topo.device_node(bus) if bus else None
            where = f" ({bus}, from {how})" if bus else f" ({how})"
        placement = decide_affinity(mode, True, device, nodes, node, os.sched_getaffinity(0), where)
    if placement.pinned:
        pin_process(placement.cpus)
    log.info("%s: %s", name, placement.why)
    return placement


# ------------------------------------------------------------------------------------------------ [workers] gpus


def resolve_gpus(gpus, count: int | None = None) -> tuple[int, ...]:
    """``[workers] gpus`` as device numbers: a list as it is; ``"all"``: every device CuPy sees (``count`` when
    given, else asked of CuPy), a ConfigError naming the key when it sees none."""
    if gpus != ALL:
        return tuple(int(g) for g in (gpus or ()))
    why = ""
    if count is None:
        try:
            import cupy

            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # ImportError, or CUDA's error when there is no device or driver
            count, why = 0, f" ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"
    if count < 1:
        raise ConfigError(f"[workers] gpus = \"all\": CuPy sees no CUDA device here{why}; name the devices "
                          f"(--gpus 0,1) on a GPU host with {GPU_INSTALL_HINT}, or use engine cpu")
    return tuple(range(count))

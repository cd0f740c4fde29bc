"""Workers near their GPU (docs/MULTIGPU.md): sysfs cpulists and NUMA nodes read from a fake sysfs tree of real
files, GPU bus ids from a fake ``nvidia-smi`` on PATH, the pinning decision, and ``[workers] gpus = "all"``."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from ringstream.config import add_config_arguments, config_from_args
from ringstream.daemon.status import placement_lines
from ringstream.engines.registry import device_for_worker
from ringstream.engines.topology import (
    SYSFS_ENV,
    Topology,
    decide_affinity,
    format_cpulist,
    gpu_bus_id,
    normalize_bus_id,
    parse_cpulist,
    place_worker,
    resolve_gpus,
)
from ringstream.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def fake_sysfs(root: Path, nodes: dict[int, str], devices: dict[str, str]) -> Path:
    """A sysfs tree under ``root``: ``nodes`` {N: cpulist text}, ``devices`` {bus id: numa_node text}."""
    for n, cpulist in nodes.items():
        d = root / "devices" / "system" / "node" / f"node{n}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")
    (root / "devices" / "system" / "node" / "possible").parent.mkdir(parents=True, exist_ok=True)
    (root / "devices" / "system" / "node" / "possible").write_text("0-1\n")  # a file beside the nodes: ignored
    for bus, node in devices.items():
        d = root / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(node + "\n")
    return root


def fake_nvidia_smi(folder: Path, lines: str) -> Path:
    """An ``nvidia-smi`` script in ``folder`` printing ``lines`` (the csv of --query-gpu=index,pci.bus_id)."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{lines}\nEOF\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return folder


def test_cpulists_read_as_the_kernel_writes_them():
    assert parse_cpulist("0-15,32-47\n") == tuple(range(16)) + tuple(range(32, 48))
    assert parse_cpulist("3") == (3,) and parse_cpulist("") == () and parse_cpulist("4,0-1") == (0, 1, 4)
    assert format_cpulist(parse_cpulist("0-15,32-47")) == "0-15,32-47"
    assert format_cpulist({8, 0, 1, 2, 3, 10}) == "0-3,8,10" and format_cpulist(()) == ""
    with pytest.raises(ValueError, match=r"cpulist '0-x': '0-x' is not N or N-M"):
        parse_cpulist("0-x")
    with pytest.raises(ValueError, match="runs backwards"):
        parse_cpulist("7-3")


def test_bus_ids_as_sysfs_names_them():
    assert normalize_bus_id("00000000:41:00.0") == "0000:41:00.0"  # nvidia-smi, CUDA: 8-digit domain
    assert normalize_bus_id("0000:C1:00.0\n") == "0000:c1:00.0"
    with pytest.raises(ValueError, match=r"'GPU-1234' is not a PCI bus id"):
        normalize_bus_id("GPU-1234")


def test_topology_reads_nodes_and_device_nodes(tmp_path):
    topo = Topology(fake_sysfs(tmp_path, {0: "0-15,32-47", 1: "16-31,48-63", 2: ""},
                               {"0000:41:00.0": "0", "0000:c1:00.0": "1", "0000:01:00.0": "-1"}))
    assert topo.nodes() == {0: tuple(range(16)) + tuple(range(32, 48)), 1: tuple(range(16, 32)) + tuple(range(48, 64))}
    assert topo.device_node("00000000:C1:00.0") == 1 and topo.device_node("0000:41:00.0") == 0
    assert topo.device_node("0000:01:00.0") is None  # -1: the firmware does not say
    assert topo.device_node("0000:99:00.0") is None  # no such device
    assert Topology(tmp_path / "nothing").nodes() == {}
    assert Topology.from_env({SYSFS_ENV: str(tmp_path)}).root == tmp_path
    assert Topology.from_env({}).root == Path("/sys")


def test_the_affinity_decision():
    nodes = {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    p = decide_affinity("auto", True, 1, nodes, 1, range(8), " (0000:c1:00.0, from CUDA)")
    assert (p.device, p.node, p.cpus, p.pinned) == (1, 1, (4, 5, 6, 7), True)
    assert p.why == "pinned to NUMA node 1 of GPU 1 (0000:c1:00.0, from CUDA): CPUs 4-7"
    # a cpuset / taskset is respected: only the node's CPUs the process may use
    assert decide_affinity("auto", True, 0, nodes, 0, (1, 2, 5), "").cpus == (1, 2)
    unpinned = {
        "not pinned: engine cpu": decide_affinity("auto", False, 0, nodes, 0, range(8)),
        "not pinned: [workers] numa_affinity = \"off\"": decide_affinity("off", True, 0, nodes, 0, range(8)),
        "not pinned: the host has 1 NUMA node": decide_affinity("auto", True, 0, {0: (0, 1)}, 0, range(2)),
        "not pinned: the host has no known NUMA nodes": decide_affinity("auto", True, 0, {}, None, range(2)),
        "not pinned: the NUMA node of GPU 0 is unknown (no CuPy device and no nvidia-smi (FileNotFoundError))":
            decide_affinity("auto", True, 0, nodes, None, range(8),
                            " (no CuPy device and no nvidia-smi (FileNotFoundError))"),
        "not pinned: none of NUMA node 1's CPUs (4-7) is allowed to this process (0-3)":
            decide_affinity("auto", True, 0, nodes, 1, range(4)),
    }
    for why, p in unpinned.items():
        assert p.why == why and not p.pinned and p.cpus == ()
    assert unpinned["not pinned: engine cpu"].device == -1
    assert unpinned["not pinned: the host has 1 NUMA node"].node == -1


def test_gpu_bus_ids_from_nvidia_smi(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "0, 00000000:41:00.0\n1, 00000000:C1:00.0")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert gpu_bus_id(1, env) == ("0000:c1:00.0", "nvidia-smi")
    # CUDA's device 0 is the driver's GPU 1 when only it is visible
    assert gpu_bus_id(0, {**env, "CUDA_VISIBLE_DEVICES": "1"}) == ("0000:c1:00.0", "nvidia-smi")
    assert gpu_bus_id(2, env) == (None, "nvidia-smi lists no GPU 2")
    assert gpu_bus_id(0, {**env, "CUDA_VISIBLE_DEVICES": "GPU-5d1e"})[0] is None
    assert gpu_bus_id(0, {"PATH": str(tmp_path / "empty")}) == \
        (None, "no CuPy device and no nvidia-smi (FileNotFoundError)")


def test_place_worker_pins_this_process_to_its_gpus_node(tmp_path):
    """In a child process (the test's own affinity stays): GPU 1 sits on node 1, whose CPU is this box's first."""
    import multiprocessing

    allowed = sorted(os.sched_getaffinity(0))
    sysfs = fake_sysfs(tmp_path / "sys", {0: "999", 1: str(allowed[0])}, {"0000:c1:00.0": "1"})
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "0, 00000000:41:00.0\n1, 00000000:C1:00.0")
    env = {SYSFS_ENV: str(sysfs), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_place_and_report, ("off", "auto", 1, env)) == (False, -1, [], allowed)
        assert pool.apply(_place_and_report, ("auto", "cpu", 1, env)) == (False, -1, [], allowed)
        assert pool.apply(_place_and_report, ("auto", "auto", 1, env)) == (True, 1, [allowed[0]], [allowed[0]])


def _place_and_report(mode, engine, device, env):
    p = place_worker(mode, engine, device, "worker-1", env)
    return p.pinned, p.node, list(p.cpus), sorted(os.sched_getaffinity(0))


def test_gpus_all_from_every_layer_and_resolved(tmp_path):
    pfile = tmp_path / "p.txt"
    pfile.write_text("NrPixelsY 8\nNrPixelsZ 8\n")
    ap = argparse.ArgumentParser()
    add_config_arguments(ap)
    assert config_from_args(ap.parse_args(["--param-file", str(pfile), "--gpus", "all"]), env={}).workers.gpus == "all"
    assert config_from_args(ap.parse_args(["--param-file", str(pfile)]),
                            env={"RINGSTREAM_WORKERS_GPUS": "ALL"}).workers.gpus == "all"
    toml = tmp_path / "c.toml"
    toml.write_text(f'[run]\nparam_file = "{pfile}"\n[workers]\ngpus = "all"\nnuma_affinity = "off"\n')
    cfg = config_from_args(ap.parse_args(["--config", str(toml)]), env={})
    assert (cfg.workers.gpus, cfg.workers.numa_affinity) == ("all", "off")
    with pytest.raises(ConfigError, match=r"command line \(--gpus\): expected comma-separated CUDA device numbers "
                                          r"such as 0,1, or all, got '0,all'"):
        config_from_args(ap.parse_args(["--param-file", str(pfile), "--gpus", "0,all"]), env={})
    toml.write_text(f'[run]\nparam_file = "{pfile}"\n[workers]\ngpus = "some"\n')
    with pytest.raises(ConfigError, match=rf"{toml}:4: \[workers\] gpus: expected a list of integers or \"all\", "
                                          r"got 'some'"):
        config_from_args(ap.parse_args(["--config", str(toml)]), env={})
    toml.write_text(f'[run]\nparam_file = "{pfile}"\n[workers]\nnuma_affinity = "on"\n')
    with pytest.raises(ConfigError, match=r"\[workers\] numa_affinity: expected one of 'auto', 'off'"):
        config_from_args(ap.parse_args(["--config", str(toml)]), env={})

    assert resolve_gpus("all", count=2) == (0, 1) and resolve_gpus((1, 0)) == (1, 0) and resolve_gpus(()) == ()
    # each worker on its own device, round robin over every device
    assert [device_for_worker(resolve_gpus("all", count=2), i) for i in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match=r'^\[workers\] gpus = "all": CuPy sees no CUDA device here'):
        resolve_gpus("all", count=0)
    try:
        import cupy  # noqa: F401
    except ImportError:  # this box: the real question to CuPy gets the one-line error
        with pytest.raises(ConfigError, match=r'^\[workers\] gpus = "all": CuPy sees no CUDA device here '
                                              r"\(ModuleNotFoundError: No module named 'cupy'\); name the devices"):
            device_for_worker("all", 0)


def test_status_shows_each_workers_gpu_node_and_cpus():
    status = {"children": {
        "ingest": {"counters": {"received": 1}, "cpus": "0-63"},
        "worker-0": {"counters": {"gpu": 0, "numa_node": 0}, "cpus": "0-15,32-47"},
        "worker-1": {"counters": {"gpu": 1, "numa_node": -1}, "cpus": "0-63"},
        "worker-2": {"counters": {"gpu": -1, "numa_node": -1}, "cpus": "0-63"},
        "worker-3": {"counters": {}, "cpus": ""},  # not started yet
    }}
    assert placement_lines(status) == [
        "  worker-0   placement: GPU 0, NUMA node 0, CPUs 0-15,32-47",
        "  worker-1   placement: GPU 1, not pinned, CPUs 0-63",
        "  worker-2   placement: engine cpu, CPUs 0-63",
    ]

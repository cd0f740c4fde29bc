"""The real daemon places its workers by their GPU's NUMA node (docs/MULTIGPU.md), on a host described by a fake
topology: ``RINGSTREAM_SYSFS_ROOT`` names a folder of real files shaped like sysfs (two nodes, each GPU's
``numa_node``) and a fake ``nvidia-smi`` on PATH gives the GPUs' bus ids (there is no CuPy here, so the workers
fall back to the CPU engine after being placed, as ``engine auto`` does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from common import ringstream_command
from test_daemon import daemons, write_params  # noqa: F401  (daemons: the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_numa_placement import fake_nvidia_smi, fake_sysfs  # noqa: E402

from ringstream.daemon.status import format_status  # noqa: E402
from ringstream.engines.topology import SYSFS_ENV, parse_cpulist  # noqa: E402


def _allowed(pid: int) -> set[tuple[int, ...]]:
    """The distinct CPU sets of every thread of process ``pid``."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out.add(parse_cpulist(line.split(":", 1)[1]))
    return out


@pytest.mark.timeout(60)
def test_each_worker_runs_on_its_gpus_node(tmp_path, daemons, monkeypatch):  # noqa: F811
    cpus = sorted(os.sched_getaffinity(0))
    first, last = cpus[0], cpus[-1]  # this box's CPUs 0 and 1: node 0 and node 1 of the fake host
    sysfs = fake_sysfs(tmp_path / "sys", {0: str(first), 1: str(last)},
                       {"0000:41:00.0": "0", "0000:c1:00.0": "1"})
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "0, 00000000:41:00.0\n1, 00000000:C1:00.0")
    monkeypatch.setenv(SYSFS_ENV, str(sysfs))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 50, "--workers", 2, "--gpus", "1,0",
                 "--engine", "auto", "--output-h5", "out.h5"], tmp_path)
    d.wait_ready()
    status = d.wait_status(lambda st: all("numa_node" in st["children"][f"worker-{i}"]["counters"] for i in (0, 1)),
                           "both workers placed")
    w0, w1 = status["children"]["worker-0"], status["children"]["worker-1"]
    # worker 0 on GPU 1 (node 1), worker 1 on GPU 0 (node 0): every thread of each on its node's CPU
    assert _allowed(w0["pid"]) == {(last,)} and _allowed(w1["pid"]) == {(first,)}
    assert (w0["counters"]["numa_node"], w1["counters"]["numa_node"]) == (1, 0)
    assert (w0["counters"]["gpu"], w1["counters"]["gpu"]) == (-1, -1)  # then the CPU engine (no CuPy)
    assert (w0["cpus"], w1["cpus"]) == (str(last), str(first))
    assert "  worker-0   placement: engine cpu, CPUs " + str(last) in format_status(status)
    assert _allowed(status["children"]["ingest"]["pid"]) == {tuple(cpus)}  # only the workers are placed
    d.wait_written(5)
    os.killpg(d.proc.pid, signal.SIGTERM)
    assert d.wait(30) == 0, d.stderr
    assert (f"worker-0: pinned to NUMA node 1 of GPU 1 (0000:c1:00.0, from nvidia-smi): CPUs {last}" in d.stderr
            and f"worker-1: pinned to NUMA node 0 of GPU 0 (0000:41:00.0, from nvidia-smi): CPUs {first}"
            in d.stderr), d.stderr


@pytest.mark.timeout(60)
def test_gpus_all_without_a_device_is_one_line_at_start(tmp_path):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is importable here: 'all' may resolve")
    except ImportError:
        pass
    params = write_params(tmp_path)
    proc = subprocess.run(ringstream_command() + ["run", "--param-file", str(params), "--simulate", "5", "--gpus",
                                                  "all", "--output-h5", "out.h5"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2
    assert proc.stderr == ("ringstream: error: [workers] gpus = \"all\": CuPy sees no CUDA device here "
                           "(ModuleNotFoundError: No module named 'cupy'); name the devices (--gpus 0,1) on a GPU "
                           "host with pip install 'ringstream[gpu]', or use engine cpu\n")
    assert not (tmp_path / "out.h5").exists()  # nothing started

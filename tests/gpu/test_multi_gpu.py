"""Several GPUs of one host (issue 21, docs/MULTIGPU.md): skipped cleanly unless CuPy sees at least 2 devices.

The engine made on each device lives there and gives the reference engine's numbers; the real daemon with ``--gpus
all`` puts worker i on device i (each worker says so in its heartbeat, which ``ringstream status`` shows, and in its
log line), is pinned to its GPU's NUMA node where the host has several, and writes every frame once, in order, with
the reference engine's lineouts."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import simulated_reference  # noqa: E402
from test_daemon import Daemon  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402

from ringstream.daemon.status import format_status  # noqa: E402
from ringstream.engines.topology import Topology, gpu_bus_id, parse_cpulist  # noqa: E402


def _devices() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(_devices() < 2, reason=f"needs 2 CUDA devices, CuPy sees {_devices()}")]
N = 600


def test_an_engine_on_each_device_gives_the_reference_numbers(tmp_path):
    from ringstream.engines.cupy_engine import CupyEngine
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    params = tmp_path / "setup.txt"
    params.write_text(OUTPUTS_PARAMS)
    imap, _ = load_or_build(load_params(params))
    frames = np.random.default_rng(3).integers(0, 4000, (12, *imap.shape)).astype(np.uint16)
    ref_lines, ref_cakes = ReferenceEngine(imap).integrate_batch(frames)
    for dev in range(_devices()):
        eng = CupyEngine(imap, device=dev, n_streams=2, batch=4)
        assert eng.device_id == dev and eng._weights.device.id == dev  # the map lives on its device
        lines, cakes = eng.integrate_batch(frames)
        scale = float(np.abs(ref_cakes).max())
        np.testing.assert_allclose(cakes, ref_cakes, rtol=1e-5, atol=1e-5 * scale, err_msg=f"device {dev}")
        np.testing.assert_allclose(lines, ref_lines, rtol=1e-5, atol=1e-5 * float(np.abs(ref_lines).max()))
        eng.close()


def test_daemon_with_gpus_all_puts_each_worker_on_its_own_device(tmp_path):
    n_gpus = _devices()
    params = tmp_path / "setup.txt"
    params.write_text(OUTPUTS_PARAMS)
    lineouts, _ = simulated_reference(params, N)
    d = Daemon(["--param-file", params, "--simulate", N, "--rate", 300, "--workers", n_gpus, "--engine", "gpu",
                "--gpus", "all", "--output-h5", "out.h5", "--no-zarr"], tmp_path)
    try:
        d.wait_ready(120)
        names = [f"worker-{i}" for i in range(n_gpus)]
        status = d.wait_status(lambda st: all("gpu" in st["children"][w]["counters"] for w in names),
                               "every worker on its GPU", 60)
        # worker i on device i (gpus = all = 0..n-1)
        assert [int(status["children"][w]["counters"]["gpu"]) for w in names] == list(range(n_gpus))
        text = format_status(status)
        topo = Topology.from_env()
        for i, w in enumerate(names):
            c = status["children"][w]
            bus, _ = gpu_bus_id(i)
            node = topo.device_node(bus) if bus else None
            if len(topo.nodes()) > 1 and node is not None:  # several NUMA nodes: pinned to the GPU's node
                assert int(c["counters"]["numa_node"]) == node
                assert set(parse_cpulist(c["cpus"])) <= set(topo.nodes()[node])
                assert f"  {w:<10} placement: GPU {i}, NUMA node {node}, CPUs {c['cpus']}" in text
            else:
                assert int(c["counters"]["numa_node"]) == -1
            print(f"{w}: GPU {i} bus {bus} node {node}; status: {c['cpus']}")
        rc = d.wait(180)
    finally:
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
    assert rc == 0, d.stderr
    for i in range(n_gpus):  # each worker's own log line names its device
        assert re.search(rf"worker-{i}\[\d+\] INFO ringstream\.engines: engine: gpu \(CuPy\) on device {i},",
                         d.stderr), d.stderr
    assert "[workers] gpus = \"all\": devices " + ",".join(str(i) for i in range(n_gpus)) in d.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        e = f["entry"]
        assert bool(e.attrs["run_complete"]) and "gpu" in str(e["reduction/engine"][()])
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(N))  # each frame once, in order
        ref = lineouts.astype(np.float32)
        np.testing.assert_allclose(e["data/I"][:], ref, rtol=2e-6, atol=1e-6 * float(np.abs(ref).max()))

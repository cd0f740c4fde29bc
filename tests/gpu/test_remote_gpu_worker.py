"""A GPU worker joined over loopback TCP with CURVE (issue 20): a daemon without local workers (``--workers 0``) sends
a bslz4 replay inline, still compressed, to one ``ringstream worker --join --engine gpu``, which decodes on the
device; the lineouts are those of the same frames replayed raw to a local GPU worker on the ring, bit for bit, every
frame written once and in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import ringstream_command  # noqa: E402
from test_daemon import Daemon  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402
from test_remote_workers import _free_ports  # noqa: E402

from ringstream.transport.security import generate_keys  # noqa: E402

pytestmark = pytest.mark.timeout(400)
N = 240


def _lineouts(run: Path) -> np.ndarray:
    with h5py.File(run / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["/entry/data/frame_index"][()], np.arange(N))
        return f["/entry/data/I"][()]


def test_a_joined_gpu_worker_writes_the_ring_workers_lineouts(tmp_path):
    params = tmp_path / "setup.txt"
    params.write_text(OUTPUTS_PARAMS)
    text = params.read_text()
    nz, ny = (int(text.split(key)[1].split()[0]) for key in ("NrPixelsZ", "NrPixelsY"))
    np.save(tmp_path / "stack.npy", np.random.default_rng(5).poisson(3.0, (9, nz, ny)).astype(np.uint16))
    common = ["--param-file", params, "--replay", tmp_path / "stack.npy", "--frames", N, "--engine", "gpu",
              "--output-h5", "out.h5", "--no-zarr"]

    ring = tmp_path / "ring"
    ring.mkdir()
    d = Daemon([*common, "--workers", 1], ring)
    try:
        assert d.wait(180) == 0, d.stderr
    finally:
        d.proc.kill()

    generate_keys(tmp_path / "server", "server")
    generate_keys(tmp_path / "worker", "worker")
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "w.key").write_bytes((tmp_path / "worker" / "worker.key").read_bytes())
    (tmp_path / "worker" / "server.key").write_bytes((tmp_path / "server" / "server.key").read_bytes())
    port = _free_ports(5)
    joined = tmp_path / "joined"
    joined.mkdir()
    d = Daemon([*common, "--replay-codec", "bslz4", "--workers", 0, "--remote-endpoint", f"tcp://127.0.0.1:{port}",
                "--keys-dir", tmp_path / "server", "--authorized-keys-dir", tmp_path / "auth"], joined)
    worker = subprocess.Popen(ringstream_command() + ["worker", "--join", f"tcp://127.0.0.1:{port}", "--keys-dir",
                                                      str(tmp_path / "worker"), "--engine", "gpu", "--timeout", "60"],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert d.wait(240) == 0, d.stderr
        assert worker.wait(60) == 0, worker.stderr.read()
    finally:
        d.proc.kill()
        worker.kill()
    np.testing.assert_array_equal(_lineouts(joined), _lineouts(ring))

"""Runs of the real ``ringstream run --pva`` daemon: one file per acquisition.

A PVA server of the channel started three times in a row against one running daemon (each start counts ``uniqueId``
from 1 again) gives three complete files, each holding exactly the frames of its acquisition in ``uniqueId`` order; a
change of the NDAttribute named by ``[run] split_attribute`` starts a new run too. The servers are PVA servers in
processes of their own that publish the frames the test asks for (:class:`ServerProcess`), so that each frame goes
out once the daemon is connected (``pvapy-ad-sim-server``, which publishes on its own clock, is run by
test_pva_daemon.py). The daemon keeps running between runs and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import pytest

pytest.importorskip("pvaccess")
from common import NY, NZ  # noqa: E402
from pva_common import stop_process  # noqa: E402
from test_daemon import daemons, write_params  # noqa: E402,F401  (daemons: the fixture)
from test_pva_daemon import loopback_epics  # noqa: E402,F401  (the module's EPICS environment, autouse)

from ringstream.runs.index import RunIndex  # noqa: E402


def runs_of(folder) -> list[dict]:
    return RunIndex.in_state_dir(folder / ".ringstream").runs()


def source_ids(path) -> list[int]:
    with h5py.File(path, "r") as f:
        assert bool(f["/entry/data/I"].attrs["run_complete"])
        return [int(s.decode() if isinstance(s, bytes) else s) for s in f["/entry/data/source_id"][()]]


SERVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import pvaccess as pva
    from pva_common import ntnd
    name = sys.argv[1]
    server = pva.PvaServer()
    server.addRecord(name, pva.NtNdArray())
    print("up", flush=True)
    for line in sys.stdin:  # one frame per line: [uniqueId, seed, {attributes}]
        uid, seed, attrs = json.loads(line)
        img = np.random.default_rng(seed).poisson(30.0, (int(sys.argv[2]), int(sys.argv[3]))).astype(np.uint16)
        server.update(name, ntnd(uid, img, attrs))
        print("sent", flush=True)
""")


class ServerProcess:
    """A PVA server in a process of its own (fresh for each test: PVA servers left in the test process from other
    tests must not answer this test's channel search), publishing on ``name`` the frames :meth:`send` asks for."""

    def __init__(self, name: str) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, name, str(NZ), str(NY)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=here, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")})
        assert self.proc.stdout.readline().strip() == "up"

    def send(self, uid: int, attrs: dict | None = None) -> None:
        self.proc.stdin.write(json.dumps([uid, 2, attrs or {}]) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "sent"

    def close(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def pva_server():
    servers = []

    def start(name: str) -> ServerProcess:
        servers.append(ServerProcess(name))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def served(tmp_path, daemons, server, toml: str, workers: int = 1):  # noqa: F811
    """A daemon of ``workers`` workers on the channel of ``server`` (``toml``: its configuration), connected."""
    params = write_params(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    d = daemons(["--config", cfg, "--param-file", params, "--pva", "--pva-channel", server.name, "--workers", workers,
                 "--no-zarr"], tmp_path)
    d.wait_ready(60)
    d.wait_status(lambda s: s["children"]["ingest"]["counters"].get("pva_connected") == 1, "the PVA connection")
    return d


def wait_runs(d, pred, what: str, timeout: float = 30.0) -> dict:
    return d.wait_status(lambda s: pred(s["runs"], s["children"]["ingest"]["counters"]), what, timeout)


@pytest.mark.timeout(180)
def test_three_acquisitions_three_files(tmp_path, daemons, pva_server):  # noqa: F811
    """Three servers of the channel in a row, each counting uniqueId from 1: three runs. Each server publishes only
    once the daemon is connected to it, so that the daemon sees each count start again (with pvapy-ad-sim-server,
    which publishes on its own clock, a reconnect later than the previous acquisition's length saw only higher
    uniqueIds: a gap, not a restart; CI once failed so)."""
    chan = f"rsruns{os.getpid()}:Pva1:Image"
    server = pva_server(chan)
    d = served(tmp_path, daemons, server, '[run]\noutput_h5 = "acq_{run:03d}.h5"\n[source]\npva_dtype = "uint16"\n',
               workers=2)
    sizes = [40, 50, 60]  # each acquisition its own length
    total = 0
    for k, n in enumerate(sizes):
        if k:
            server.close()
            wait_runs(d, lambda r, c, k=k: c.get("pva_disconnects", 0) >= k and c.get("pva_connected") == 0,
                      f"disconnect {k}")
            server = pva_server(chan)
            wait_runs(d, lambda r, c, k=k: c.get("pva_connects", 0) >= k + 1 and c.get("pva_connected") == 1,
                      f"connect {k + 1}")
        for uid in range(1, n + 1):  # at 100 frames/s, the detector rate this test always had (the monitor's
            server.send(uid)  # queue of 16 frames is then not outrun on a loaded box)
            time.sleep(0.01)
        total += n
        wait_runs(d, lambda r, c, want=total: c.get("received", 0) >= want, f"acquisition {k + 1}", 60)
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    runs = runs_of(tmp_path)
    assert [(r["run"], r["status"]) for r in runs] == [(1, "complete"), (2, "complete"), (3, "complete")], runs
    assert [r["reason"] for r in runs] == ["acquisition restarted", "acquisition restarted", "stop"]
    for r, n in zip(runs, sizes, strict=True):
        # every frame of this acquisition, in uniqueId order, none of another acquisition
        assert source_ids(tmp_path / f"acq_{r['run']:03d}.h5") == list(range(1, n + 1))
        assert r["frames"] == n


@pytest.mark.timeout(120)
def test_an_attribute_change_starts_a_run(tmp_path, daemons, pva_server):  # noqa: F811
    server = pva_server(f"rsattr{os.getpid()}:Image")
    d = served(tmp_path, daemons, server, '[run]\nsplit_attribute = "ScanNumber"\n'
                       'output_h5 = "scan_{attr[ScanNumber]}.h5"\n[source]\npva_attributes = ["ScanNumber"]\n'
                       'pva_dtype = "uint16"\n')
    scans = [7] * 5 + [8] * 4 + [9] * 6
    for k, scan in enumerate(scans):
        server.send(100 + k, {"ScanNumber": scan})
        d.wait_status(lambda s, k=k: s["totals"]["received"] >= k + 1, f"frame {k}")
    d.wait_written(len(scans))
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    runs = runs_of(tmp_path)
    assert [(r["status"], r["frames"]) for r in runs] == [("complete", 5), ("complete", 4), ("complete", 6)], runs
    assert [r["reason"] for r in runs[:2]] == ["attribute ScanNumber changed"] * 2
    first = 100
    for scan, r in zip((7, 8, 9), runs, strict=True):
        ids = source_ids(tmp_path / f"scan_{scan}_{r['run']:05d}.h5")
        assert ids == list(range(first, first + r["frames"]))
        first += r["frames"]


@pytest.mark.timeout(120)
def test_no_frame_for_idle_split_s_ends_the_run(tmp_path, daemons, pva_server):  # noqa: F811
    """[run] idle_split_s 1: frames, a pause of 2 s, frames: two runs; the first ends during the pause."""
    server = pva_server(f"rsidle{os.getpid()}:Image")
    d = served(tmp_path, daemons, server,
                       '[run]\nidle_split_s = 1.0\noutput_h5 = "i_{run:02d}.h5"\n[source]\npva_dtype = "uint16"\n')
    uid = 1
    for burst in (6, 4):
        for _ in range(burst):
            server.send(uid)
            d.wait_status(lambda s, u=uid: s["totals"]["received"] >= u, f"frame {uid}")
            uid += 1
        # the run ends after 1 s without a frame: the writer closes it while no frame comes
        d.wait_status(lambda s, m=(1 if burst == 6 else 2): s["runs"]["complete"] >= m, "the idle split", 20)
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    runs = runs_of(tmp_path)
    assert [(r["status"], r["frames"], r["reason"]) for r in runs] == [("complete", 6, "idle"), ("complete", 4, "idle")]
    assert source_ids(tmp_path / "i_01.h5") == list(range(1, 7))
    assert source_ids(tmp_path / "i_02.h5") == list(range(7, 11))

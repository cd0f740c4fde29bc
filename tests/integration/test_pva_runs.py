"""Runs of the real ``ringstream run --pva`` daemon: one file per acquisition.

``pvapy-ad-sim-server`` started three times in a row against one running daemon (each start restarts ``uniqueId``)
gives three complete files, each holding exactly the frames of its acquisition in ``uniqueId`` order; a change of
the NDAttribute named by ``[run] split_attribute`` (an in-process PVA server here, so the test sets the values)
starts a new run too. The daemon keeps running between runs and exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time

import h5py
import numpy as np
import pytest

pva = pytest.importorskip("pvaccess")
from common import NY, NZ  # noqa: E402
from pva_common import ntnd, session_epics_env, start_sim_server, stop_process  # noqa: E402
from test_daemon import daemons, write_params  # noqa: E402,F401  (daemons: the fixture)

from ringstream.runs.index import RunIndex  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def loopback_epics(pytestconfig):
    """Every EPICS address variable on loopback with non-default ports (children inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        env = session_epics_env(pytestconfig)
        for key, value in env.items():
            mp.setenv(key, value)
        yield env


def runs_of(folder) -> list[dict]:
    return RunIndex.in_state_dir(folder / ".ringstream").runs()


def source_ids(path) -> list[int]:
    with h5py.File(path, "r") as f:
        assert bool(f["/entry/data/I"].attrs["run_complete"])
        return [int(s.decode() if isinstance(s, bytes) else s) for s in f["/entry/data/source_id"][()]]


def wait_runs(d, pred, what: str, timeout: float = 30.0) -> dict:
    return d.wait_status(lambda s: pred(s["runs"], s["children"]["ingest"]["counters"]), what, timeout)


@pytest.mark.timeout(180)
def test_three_acquisitions_three_files(tmp_path, daemons, loopback_epics):  # noqa: F811
    params = write_params(tmp_path)
    chan = f"rsruns{os.getpid()}:Pva1:Image"
    log = tmp_path / "sim.log"
    d = daemons(["--param-file", params, "--pva", "--pva-channel", chan, "--workers", 2, "--output-h5",
                 "acq_{run:03d}.h5", "--no-zarr"], tmp_path)
    d.wait_ready(60)
    sent = []
    for k in range(3):
        n = 40 + 10 * k  # each acquisition its own length
        srv = start_sim_server(chan, "-nx", NY, "-ny", NZ, "-dt", "uint16", "-fps", 100, "-nf", 8, "-cs", 8,
                               "-rt", n / 100 + 1.5, env=loopback_epics, log=log)
        try:
            wait_runs(d, lambda r, c, k=k: c.get("received", 0) >= sum(sent) + n, f"acquisition {k + 1}", 60)
        finally:
            stop_process(srv, signal.SIGKILL)
        c = wait_runs(d, lambda r, c: c.get("pva_connected") == 0, f"disconnect {k + 1}")
        sent.append(c["children"]["ingest"]["counters"]["received"] - sum(sent))
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    runs = runs_of(tmp_path)
    assert [(r["run"], r["status"]) for r in runs] == [(1, "complete"), (2, "complete"), (3, "complete")], runs
    assert [r["reason"] for r in runs] == ["acquisition restarted", "acquisition restarted", "stop"]
    for r, n in zip(runs, sent, strict=True):
        ids = source_ids(tmp_path / f"acq_{r['run']:03d}.h5")
        # every frame the daemon received of this acquisition, in uniqueId order, none of another acquisition
        assert len(ids) == r["frames"] == n, (ids, n)
        np.testing.assert_array_equal(np.diff(ids), 1)


@pytest.mark.timeout(120)
def test_an_attribute_change_starts_a_run(tmp_path, daemons):  # noqa: F811
    params = write_params(tmp_path)
    name = f"rsattr{os.getpid()}:Image"
    server = pva.PvaServer()
    server.addRecord(name, pva.NtNdArray())
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nsplit_attribute = "ScanNumber"\noutput_h5 = "scan_{attr[ScanNumber]}.h5"\n'
                   '[source]\npva_attributes = ["ScanNumber"]\npva_dtype = "uint16"\n')
    d = daemons(["--config", cfg, "--param-file", params, "--pva", "--pva-channel", name, "--workers", 1, "--no-zarr"], tmp_path)
    d.wait_ready(60)
    d.wait_status(lambda s: s["children"]["ingest"]["counters"].get("pva_connected") == 1, "the PVA connection")
    scans = [7] * 5 + [8] * 4 + [9] * 6
    img = np.random.default_rng(2).poisson(30.0, (NZ, NY)).astype(np.uint16)
    for k, scan in enumerate(scans):
        server.update(name, ntnd(100 + k, img, {"ScanNumber": scan}))
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
    del server


@pytest.mark.timeout(120)
def test_no_frame_for_idle_split_s_ends_the_run(tmp_path, daemons):  # noqa: F811
    """[run] idle_split_s 1: frames, a pause of 2 s, frames: two runs; the first ends during the pause."""
    params = write_params(tmp_path)
    name = f"rsidle{os.getpid()}:Image"
    server = pva.PvaServer()
    server.addRecord(name, pva.NtNdArray())
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nidle_split_s = 1.0\noutput_h5 = "i_{run:02d}.h5"\n[source]\npva_dtype = "uint16"\n')
    d = daemons(["--config", cfg, "--param-file", params, "--pva", "--pva-channel", name, "--workers", 1, "--no-zarr"],
                tmp_path)
    d.wait_ready(60)
    d.wait_status(lambda s: s["children"]["ingest"]["counters"].get("pva_connected") == 1, "the PVA connection")
    img = np.random.default_rng(4).poisson(30.0, (NZ, NY)).astype(np.uint16)
    uid = 1
    for burst in (6, 4):
        for _ in range(burst):
            server.update(name, ntnd(uid, img))
            d.wait_status(lambda s, u=uid: s["totals"]["received"] >= u, f"frame {uid}")
            uid += 1
        # the run ends after 1 s without a frame: the writer closes it while no frame comes
        d.wait_status(lambda s: s["runs"]["complete"] >= (1 if burst == 6 else 2), "the idle split", 20)
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    runs = runs_of(tmp_path)
    assert [(r["status"], r["frames"], r["reason"]) for r in runs] == [("complete", 6, "idle"), ("complete", 4, "idle")]
    assert source_ids(tmp_path / "i_01.h5") == list(range(1, 7))
    assert source_ids(tmp_path / "i_02.h5") == list(range(7, 11))
    del server

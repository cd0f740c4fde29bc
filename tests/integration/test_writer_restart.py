"""A writer killed mid-run is replaced and the run goes on in the same files, losing nothing (docs/DAEMON.md,
"Delivery"): the real daemon, CPU engine, 2 workers, the simulated source; ``kill -9`` of the writer at a random
moment, no manual repair.

Every run must end with exit 0, one HDF5 file holding every frame exactly once and in order with lineouts equal to the
reference engine's, each omega-sum group (4 frames, partial sums from the workers) equal to the sum of the reference
cakes of its frames, and a zarr.zip holding the same groups: a frame lost or counted twice across the restart would
show in the rows or in a group's sum.
"""

from __future__ import annotations

import os
import random
import signal
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_daemon import daemons  # noqa: F401  (daemons: the fixture)
from test_worker_restart import (
    N_FRAMES,
    OSF,
    RATE,
    _check_file,
    _params,
    _reference,
    keeps_dying,
    kill_mid_run,
    kill_timed,
)

from ringstream.daemon.status import format_status
from ringstream.writer.storage import zarr_compressor

REPEATS = int(os.environ.get("RS_REPEATS_WRITER", 10))


def _check_zarr(h5: Path, zarr: Path) -> None:
    """The zarr.zip holds exactly the HDF5 file's omega-sum groups, each with the same sum."""
    with h5py.File(h5, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["/entry/omega_sum/name"][()]]
        sums = f["/entry/omega_sum/I"][()]
    with zipfile.ZipFile(zarr) as z:
        members = {m.split("/")[1] for m in z.namelist() if m.startswith("OmegaSumFrame/LastFrameNumber_")}
        assert members == set(names)
        for name, expected in zip(names, sums, strict=True):
            raw = zarr_compressor().decode(z.read(f"OmegaSumFrame/{name}/0.0"))  # (Blosc, as the .zarray says)
            assert np.frombuffer(raw, dtype=expected.dtype).reshape(expected.shape).tobytes() == expected.tobytes()


def _kill_writer(d, rnd: random.Random) -> float:
    """``kill -9`` of the writer after a random number of frames; returns seconds until the replacement's line."""
    d.wait_written(rnd.randint(5, N_FRAMES // 2))
    time.sleep(rnd.uniform(0.0, 0.5))
    return kill_timed(d, "writer")


def _kill_run(tmp: Path, daemons, rnd: random.Random, lineouts, cakes, params: Path) -> dict:  # noqa: F811
    tmp.mkdir()
    d = daemons(["--param-file", params, "--simulate", N_FRAMES, "--rate", RATE, "--workers", 2, "--engine", "cpu",
                 "--output-h5", "out.h5"], tmp)
    d.wait_ready()
    after = _kill_writer(d, rnd)
    assert after < 2.0, f"replaced after {after:.2f} s"
    rc = d.wait(90)
    assert rc == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written == N_FRAMES and rejected == dropped == 0, d.stderr
    assert "writer restarts 1," in d.stderr
    assert sorted(p.name for p in tmp.glob("*.h5")) == ["out.h5"]  # the same file, continued
    _check_file(tmp / "out.h5", lineouts, cakes)
    _check_zarr(tmp / "out.h5", tmp / "out.zarr.zip")
    reopened = d.line_time(r"reopened at frame (\d+) of the run", 1)
    assert reopened
    return {"replaced_after_s": after}


@pytest.mark.timeout(900)
def test_kill_9_of_the_writer_loses_nothing(tmp_path, daemons):  # noqa: F811
    params = _params(tmp_path)
    lineouts, cakes = _reference(params, N_FRAMES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        seen = list(pool.map(lambda k: _kill_run(tmp_path / f"rep{k}", daemons, random.Random(2500 + k), lineouts,
                                                 cakes, params), range(REPEATS)))
    print("replaced after (s):", [round(s["replaced_after_s"], 2) for s in seen])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["cakes", "runs", "drain"])
def test_kill_9_of_the_writer_in_other_settings(tmp_path, daemons, variant):  # noqa: F811
    """Cakes per frame (``Write2D 1``: the writer sums them itself), a run split every 50 frames (the replacement
    continues the open run and names the next ones as the first writer would) and a writer killed while the daemon
    drains after SIGTERM."""
    params = _params(tmp_path)
    if variant == "cakes":
        params.write_text(params.read_text() + "Write2D 1\n")
    args = ["--param-file", params, "--simulate", 0 if variant == "drain" else N_FRAMES, "--rate", RATE,
            "--workers", 2, "--engine", "cpu", "--output-h5", "out.h5"]
    if variant == "runs":
        (tmp_path / "c.toml").write_text("[run]\nmax_frames = 48\n")
        args += ["--config", tmp_path / "c.toml"]
    d = daemons(args, tmp_path)
    kill_mid_run(d, "writer", 70, drain=variant == "drain")
    if variant != "drain":
        st = d.wait_status(lambda st: st["totals"]["writer_restarts"] == 1, "the restart in the status")
        assert "writer restarts 1," in format_status(st)
    assert d.wait(90) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written and rejected == dropped == 0, d.stderr
    n = received
    lineouts, cakes = _reference(params, n)
    if variant == "runs":
        files = sorted(tmp_path.glob("out_*.h5"))
        assert [f.name for f in files] == [f"out_{k:05d}.h5" for k in range(1, 6)]
        for k, f in enumerate(files):
            lo, hi = 48 * k, min(n, 48 * (k + 1))
            _check_file(f, lineouts[lo:hi], cakes[lo:hi])
            _check_zarr(f, f.with_name(f.name[:-3] + ".zarr.zip"))
        return
    n_whole = n - n % OSF  # the last, shorter group of a drained run is checked by its frames alone
    _check_file(tmp_path / "out.h5", lineouts, cakes, groups=n_whole // OSF)
    _check_zarr(tmp_path / "out.h5", tmp_path / "out.zarr.zip")
    if variant == "cakes":
        with h5py.File(tmp_path / "out.h5", "r") as f:
            ref = cakes.astype(np.float32)
            np.testing.assert_allclose(f["/cake/data/I"][()].transpose(0, 2, 1), ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shm", [True, False], ids=["ring", "inline"])
def test_kill_9_of_the_writer_and_a_worker_at_once_loses_nothing(tmp_path, daemons, shm):  # noqa: F811
    """The writer and a worker killed together: what that worker kept for a replacement writer is gone with it, so
    the frames the dead writer had acknowledged and not flushed that the new writer still lacks (once the other
    worker sent it what it kept) are made again from the source by the ingest: every frame once, sums exact."""
    params = _params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", N_FRAMES, "--rate", RATE, "--workers", 2, "--engine", "cpu",
                 "--output-h5", "out.h5"] + ([] if shm else ["--no-shm"]), tmp_path)
    d.wait_ready()
    d.wait_written(70)
    children = d.status()["children"]
    writer, worker = children["writer"]["pid"], children["worker-0"]["pid"]
    os.kill(worker, signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    d.line_time(rf"writer \(pid {writer}\) died: killed by signal 9; replaced by pid")
    assert d.wait(90) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == written == N_FRAMES and rejected == dropped == 0, d.stderr
    assert "writer restarts 1," in d.stderr and "worker restarts 1," in d.stderr
    lineouts, cakes = _reference(params, N_FRAMES)
    _check_file(tmp_path / "out.h5", lineouts, cakes)
    _check_zarr(tmp_path / "out.h5", tmp_path / "out.zarr.zip")


@pytest.mark.timeout(120)
def test_a_writer_that_keeps_dying_stops_the_daemon(tmp_path, daemons):  # noqa: F811
    keeps_dying(tmp_path, daemons, "writer", workers=1)


@pytest.mark.timeout(120)
def test_a_replacement_writer_makes_the_files_of_a_run_named_but_not_made(tmp_path):
    """The writer died between recording its run "open" in the index and making the run's file: the replacement
    makes the file at the run's first frame, under the same number, and says where the workers start again."""
    import zmq
    from test_crash_outputs import N_ETA, N_PEAKS, N_R, PARAMS, spawn_writer
    from test_crash_outputs import OSF as CRASH_OSF

    from ringstream.config import DaemonConfig
    from ringstream.protocol import EndOfStream, Flushed, OmegaPartial, Result, decode, encode, result_buffers
    from ringstream.runs.index import RunIndex
    from ringstream.runs.state import state_dir_of
    from ringstream.transport.endpoints import free_tcp_endpoint

    (tmp_path / "setup.txt").write_text(PARAMS)
    data = {"run": {"param_file": str(tmp_path / "setup.txt"), "output_h5": str(tmp_path / "out.h5"),
                    "run_id": "d"},
            "source": {"kind": "simulated", "frames": 0},
            "transport": {"results_endpoint": free_tcp_endpoint(), "events_endpoint": free_tcp_endpoint(),
                          "release_endpoint": free_tcp_endpoint()},
            "supervisor": {"heartbeat_interval": 0.2}, "logging": {"level": "WARNING"}}
    index = RunIndex.in_state_dir(state_dir_of(DaemonConfig.from_dict(data).run))
    index.append(1, "open", name="", run_id="d", first_frame=0, frames=0, written=0, rejected=0,
                 files={"h5": str(tmp_path / "out.h5"), "zarr": str(tmp_path / "out.zarr.zip")}, reason="first frame")
    ctx = zmq.Context()
    acks = ctx.socket(zmq.PULL)
    acks.bind(data["transport"]["release_endpoint"])
    proc, events = spawn_writer(data, ctx, resume=True)
    push = ctx.socket(zmq.PUSH)
    try:
        assert acks.poll(10_000)
        first, _ = decode(acks.recv_multipart())
        assert isinstance(first, Flushed) and first.restart and first.below == 0  # nothing of the run is in files
        push.connect(data["transport"]["results_endpoint"])
        rng = np.random.default_rng(0)
        total = np.zeros((N_R, N_ETA))
        for k in range(CRASH_OSF):
            msg = Result(run_id="d", frame_index=k, source_id=f"d:{k}", timestamp=time.time(), n_r=N_R,
                         n_eta=N_ETA, n_peaks=N_PEAKS)
            push.send_multipart(encode(msg, result_buffers(rng.random(N_R, dtype=np.float32), None,
                                                           rng.normal(size=(N_PEAKS, 7)))))
            total += k
        push.send_multipart(encode(OmegaPartial(run_id="d", group=0, n_frames=CRASH_OSF, n_r=N_R, n_eta=N_ETA,
                                                frames=list(range(CRASH_OSF))), [total]))
        push.send_multipart(encode(EndOfStream(run_id="d", first_frame=0, n_frames=CRASH_OSF, final=True)))
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        push.close(linger=1000)
        acks.close(linger=0)
        events.close(linger=0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["out.h5"]
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["/entry/data/frame_index"][()].tolist() == list(range(CRASH_OSF))
        assert bool(f["/entry"].attrs["run_complete"])
        np.testing.assert_array_equal(f["/entry/omega_sum/I"][0], np.float32(total))
    runs = index.runs()
    assert [(r["run"], r["status"], r["frames"]) for r in runs] == [(1, "complete", CRASH_OSF)]

"""kill -9 at random moments, 20 times each: the writer process alone (fed Results by this test) and the whole
``ringstream run`` daemon. After each kill the HDF5 file opens with h5py after ``repair`` (or the next run), its frames
are contiguous from 0 and equal to what was sent, none is duplicated, at most the last second is lost, and the last
published zarr.zip is valid and holds the right sums."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
import zmq
from test_daemon import Daemon, _group_alive

from ringstream.config import DaemonConfig
from ringstream.protocol import EndOfStream, OmegaPartial, Result, decode, encode, result_buffers
from ringstream.transport.endpoints import free_tcp_endpoint
from ringstream.writer.repair import repair

REPEATS = 20

#: processes killed at once (their startups overlap; each kill is at its own random moment)
BATCH = 4

PARAMS = """\
NrPixelsY 24
NrPixelsZ 24
Lsd 1000000
px 200
BC 11.6 12.3
RMin 1
RMax 11
RBinSize 1
EtaBinSize 45
Wavelength 0.2
OmegaSumFrames 10
PeakLocation 4
PeakLocation 8
"""
N_R, N_ETA, N_PEAKS, OSF = 10, 8, 2, 10

#: a flush every 0.5 s at the latest, a save every 50 frames; the bound on what a kill may lose (s), with slack
#: for this shared 2-core box (the time between a frame's timestamp and its arrival at the writer)
LOSS_BOUND_S = 1.0
SLACK_S = 0.4

HARNESS = textwrap.dedent("""
    import json, sys, threading
    from ringstream.config import DaemonConfig
    from ringstream.writer import process

    class Ready(threading.Event):
        def set(self):
            super().set()
            print("READY", flush=True)

    config = DaemonConfig.from_dict(json.loads(sys.argv[1]))
    sys.exit(process.run(config, Ready(), threading.Event(), resume=sys.argv[2:] == ["resume"]))
""")


def spawn_writer(data: dict, ctx: zmq.Context, resume: bool = False) -> tuple[subprocess.Popen, zmq.Socket]:
    """The real writer process for the configuration ``data`` (a dict for ``DaemonConfig.from_dict``; ``resume``:
    a replacement writer), ready: its map in the cache, the events endpoint bound here (the returned PULL socket).
    The caller closes the socket and ends the process."""
    import json

    from ringstream.geometry.cache import load_or_build

    load_or_build(DaemonConfig.from_dict(data).load_params())  # the child hits the cache
    events = ctx.socket(zmq.PULL)
    events.bind(data["transport"]["events_endpoint"])
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, json.dumps(data)] + (["resume"] if resume else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "READY":
        proc.wait(30)
        events.close(linger=0)
        raise AssertionError(f"the writer did not start: {proc.stderr.read()}")
    return proc, events


def _frame(k: int) -> tuple:
    """What a worker would send for frame k: a lineout, a fit with a NaN row every third frame, one ROI."""
    rng = np.random.default_rng(k)
    lineout = rng.random(N_R, dtype=np.float32)
    fit = rng.normal(size=(N_PEAKS, 7))
    if k % 3 == 0:
        fit[1] = np.nan
    return lineout, fit, (np.array([[2, 3]], dtype=np.int32), rng.random(3)), rng.random((N_R, N_ETA))


def _killed_while_making(path: Path) -> bool:
    """True when ``path`` does not exist because its writer was killed while making it: nothing of it but the hidden
    draft (``.out.h5.making-<pid>``), which the next writer in the folder removes."""
    if path.exists():
        return False
    others = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert all(n.startswith(f".{path.name}.making-") for n in others), others
    return True


def _check_h5(path: Path, sent: int, t_kill: float, sent_at: list[float], t_file: float | None = None) -> int:
    """Repair, then: contiguous from 0, equal to what was sent, at most the last second lost. Returns n.
    No file: the writer was killed while making the layout, before its first frame; only its hidden draft is left.
    ``t_file``: when the file was first seen. The bound holds for a writer that has its file: one still making it
    (slow on a loaded box: several writers at once, CI's other test process) has flushed nothing yet, by design."""
    assert sent == len(sent_at) > 0, (sent, len(sent_at))  # the harness sends until the kill, at least once
    # every frame sent more than LOSS_BOUND_S before the kill is in the file, once the writer had it that long
    had_file = t_file is not None and t_kill - t_file > LOSS_BOUND_S + SLACK_S
    old = sum(1 for t in sent_at if t < t_kill - LOSS_BOUND_S - SLACK_S) if had_file else 0
    if _killed_while_making(path):
        assert old == 0, f"no file, yet {old} frames were sent more than {LOSS_BOUND_S} s before the kill"
        return 0
    report = repair(path)
    # (no HDF5 lock: a writer another thread is starting may hold this file's descriptor, inherited, until it execs)
    with h5py.File(path, "r", locking=False) as f:
        e = f["entry"]
        n = int(e.attrs["frames_written"])
        assert n == report.frames and e["data/I"].shape[0] == n and e["fit/peaks"].shape[0] == n
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(n))  # contiguous, no duplicate
        assert n <= sent
        for k in range(n):
            lineout, fit, _, _ = _frame(k)
            np.testing.assert_array_equal(e["data/I"][k], lineout)
            np.testing.assert_array_equal(e["fit/peaks"][k], fit)
        assert e["fit/curve_rois"].shape[0] == n and e["fit/curve_values"].shape[0] == 3 * n
        assert n >= old, f"{n} frames in the file, {old} were sent more than {LOSS_BOUND_S} s before the kill"
        groups = e["omega_sum/n_frames"][:]
        assert list(groups) == [OSF] * len(groups) and len(groups) <= n // OSF
    return n


def _check_zarr(path: Path, expected: dict[int, np.ndarray]) -> int:
    """The published zarr.zip (if any yet) opens and its groups are complete, right sums. Returns their count."""
    if not path.exists():
        return 0
    z = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r", zarr_format=2)
    names = list(z["OmegaSumFrame"].keys())
    for k, name in enumerate(names):
        assert name == f"LastFrameNumber_{OSF * k + OSF - 1:09d}"
        np.testing.assert_array_equal(z["OmegaSumFrame"][name][...], np.float32(expected[k]))  # rounded once
        assert z["OmegaSumFrame"][name].attrs["Number Of Frames Summed"] == OSF
    assert z["REtaMap"].shape == (5, N_R, N_ETA)
    return len(names)


def _writer_config(tmp: Path) -> dict:
    (tmp / "setup.txt").write_text(PARAMS)
    return {"run": {"param_file": str(tmp / "setup.txt"), "output_h5": str(tmp / "out.h5"), "save_interval": 50},
            "source": {"kind": "simulated", "frames": 0},
            "transport": {"results_endpoint": free_tcp_endpoint(), "events_endpoint": free_tcp_endpoint()},
            "supervisor": {"heartbeat_interval": 0.2}, "logging": {"level": "WARNING"}}


def _writer_rep(tmp: Path, seed: int, ctx: zmq.Context) -> tuple[int, int, int]:
    """One repetition: start the writer, send it Results (and a partial sum per group) until a random moment,
    kill -9 it, check the files. Returns (frames in the file, frames sent, zarr groups)."""
    rnd = random.Random(seed)
    tmp.mkdir()
    data = _writer_config(tmp)
    proc, events = spawn_writer(data, ctx)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        push.connect(data["transport"]["results_endpoint"])
        t_kill = time.time() + rnd.uniform(0.3, 2.5)  # (past 1.4 s after the file appears: the bound is checked)
        sent_at, k, partial, t_file = [], 0, {}, None
        while time.time() < t_kill:
            lineout, fit, curves, cake = _frame(k)
            msg = Result(run_id="c", frame_index=k, source_id=f"c:{k}", timestamp=time.time(), n_r=N_R,
                         n_eta=N_ETA, n_peaks=N_PEAKS, n_rois=1, n_curve_points=3)
            push.send_multipart(encode(msg, result_buffers(lineout, None, fit, curves)))
            g = k // OSF
            partial[g] = partial.get(g, 0) + cake
            if k % OSF == OSF - 1:  # one worker's partial sum per group
                push.send_multipart(encode(OmegaPartial(group=g, n_frames=OSF, n_r=N_R, n_eta=N_ETA), [partial[g]]))
            sent_at.append(time.time())
            if t_file is None and (tmp / "out.h5").exists():
                t_file = time.time()
            k += 1
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        t_kill = time.time()
        proc.wait(10)
    finally:
        push.close()
        events.close(linger=0)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    n = _check_h5(tmp / "out.h5", k, t_kill, sent_at, t_file)
    return n, k, _check_zarr(tmp / "out.zarr.zip", partial)


@pytest.mark.timeout(240)
def test_kill_9_of_the_writer_alone(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ctx = zmq.Context()
    try:
        # BATCH writers at a time, each killed on its own. A writer started in one thread while another thread's
        # repair has its file open inherits that descriptor, and with it HDF5's lock, until it execs: repair waits
        # for such a lock to go (``LOCK_WAIT_S``) instead of failing with BlockingIOError, as it did in CI
        with ThreadPoolExecutor(max_workers=BATCH) as pool:
            totals = list(pool.map(lambda rep: _writer_rep(tmp_path / f"rep{rep}", 800 + rep, ctx), range(REPEATS)))
    finally:
        ctx.destroy(linger=0)
    assert len(totals) == REPEATS and sum(n for n, _, _ in totals) > 0, totals
    assert sum(g for _, _, g in totals) > 0, totals  # some kills came after a published zarr.zip


def _reference(params: Path, n: int):
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.ingest.simulated import K, SimulatedSource
    from ringstream.params import load_params

    p = load_params(params)
    imap, _ = load_or_build(p)
    src = SimulatedSource(p, n_frames=n, seed=0, dtype="int32", precompute=False)
    lines, cakes = ReferenceEngine(imap, normalize=bool(p.Normalize)).integrate_batch(
        np.stack([src.make_frame(k) for k in range(K)]))
    return lines.astype(np.float32), cakes.astype(np.float32).astype(np.float64), K


def _ready(d: Daemon, timeout: float = 90.0) -> float | None:
    """When (monotonic) the daemon logged that it is ready; None if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, line in list(d.lines):
            if "ready (writer=" in line:
                return t
        if d.proc.poll() is not None:
            time.sleep(0.2)  # the last lines
            return None
        time.sleep(0.02)
    raise AssertionError(f"daemon not ready within {timeout} s:\n{d.stderr}")


def _kill_batch(tmp_path: Path, params: Path, reps: range, rnd: random.Random) -> list[tuple[Path, float, Daemon]]:
    args = ["--param-file", params, "--simulate", 0, "--rate", 100, "--workers", 1, "--output-h5", "out.h5",
            "--save-interval", 50]
    ds = []
    for rep in reps:
        tmp = tmp_path / f"rep{rep}"
        tmp.mkdir()
        ds.append((tmp, Daemon(args, tmp)))
    out = []
    try:
        plan = []
        for i, (tmp, d) in enumerate(ds):
            t_ready = _ready(d)
            if t_ready is None and "Address already in use" in d.stderr:  # two daemons drew the same free port
                d.proc.wait(10)
                for name in ("out.h5", "out.zarr.zip"):  # what the failed start may have created
                    (tmp / name).unlink(missing_ok=True)
                d = Daemon(args, tmp)
                ds[i] = (tmp, d)
                t_ready = _ready(d)
            assert t_ready is not None, f"{tmp.name}: daemon exited before it was ready:\n{d.stderr}"
            plan.append((t_ready + rnd.uniform(0.3, 1.5), tmp, d))
        for t_at, tmp, d in sorted(plan, key=lambda x: x[0]):
            time.sleep(max(0.0, t_at - time.monotonic()))
            os.killpg(d.proc.pid, signal.SIGKILL)
            out.append((tmp, time.time(), d))
    finally:
        for _, d in ds:
            pgid = d.proc.pid
            if d.proc.poll() is None and not any(x[2] is d for x in out):
                os.killpg(pgid, signal.SIGKILL)
            d.proc.wait(10)
            deadline = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _group_alive(pgid), "processes left after kill -9 of the daemon's group"
    return out


@pytest.mark.timeout(240)
def test_kill_9_of_the_whole_daemon(tmp_path):
    rnd = random.Random(9)
    params = tmp_path / "setup.txt"
    params.write_text(PARAMS.replace("PeakLocation 4\nPeakLocation 8\n", ""))
    lines, cakes, K = _reference(params, 8)
    totals = []
    for first in range(0, REPEATS, BATCH):
        for tmp, t_kill, d in _kill_batch(tmp_path, params, range(first, min(REPEATS, first + BATCH)), rnd):
            path = tmp / "out.h5"
            if _killed_while_making(path):  # before the first frame: no output file, no frame lost beyond the bound
                totals.append((0, 0))
                continue
            if tmp.name == "rep0":  # the next start repairs the file, marks it interrupted and writes the next run
                args = list(d.proc.args[:-2])
                args[args.index("--simulate") + 1] = "5"
                again = subprocess.run(args + ["--control", free_tcp_endpoint()], cwd=tmp,
                                       capture_output=True, text=True, timeout=60)
                assert again.returncode == 0, again.stderr
                with h5py.File(path, "r") as f:
                    assert f["entry"].attrs["run_status"] == "interrupted"
                with h5py.File(tmp / "out_00002.h5", "r") as f:
                    assert f["entry/data/I"].shape[0] == 5 and f["entry"].attrs["run_complete"]
            else:
                with pytest.raises(OSError):
                    h5py.File(path, "r")  # a kill -9 in SWMR-write mode leaves the status flag
                repair(path)
            with h5py.File(path, "r") as f:
                e = f["entry"]
                n = int(e.attrs["frames_written"])
                np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(n))  # contiguous, no duplicate
                np.testing.assert_allclose(e["data/I"][:], lines[np.arange(n) % K], rtol=1e-6, atol=1e-5)
                if n:  # at most the last second before the kill is lost
                    lag = t_kill - float(e["data/timestamp"][n - 1])
                    assert lag < LOSS_BOUND_S + SLACK_S, (tmp.name, n, lag)
                assert not e.attrs["run_complete"]
            zpath = tmp / "out.zarr.zip"
            groups = 0
            if zpath.exists():
                z = zarr.open_group(zarr.storage.ZipStore(str(zpath), mode="r"), mode="r", zarr_format=2)
                for g, name in enumerate(z["OmegaSumFrame"].keys()):
                    want = cakes[np.arange(OSF * g, OSF * g + OSF) % K].sum(axis=0)
                    np.testing.assert_allclose(z["OmegaSumFrame"][name][...], want, rtol=6e-8, atol=1e-9)  # float32
                    groups += 1
            totals.append((n, groups))
    assert len(totals) == REPEATS and sum(n for n, _ in totals) > 0 and sum(g for _, g in totals) > 0, totals


@pytest.mark.timeout(60)
def test_a_full_disk_fails_the_run_with_one_clear_error(tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes fail with EFBIG, as with a full disk, no root needed): the run fails
    with one error line naming the file, the writer goes on (its frames counted as dropped) and, the stream ending
    with that run, exits with code 3; what was flushed stays readable."""
    import json
    import resource

    from ringstream.geometry.cache import load_or_build

    data = _writer_config(tmp_path)
    data["run"]["save_interval"] = 20
    load_or_build(DaemonConfig.from_dict(data).load_params())
    limit = 400 << 10

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.bind(data["transport"]["events_endpoint"])
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, json.dumps(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        push.connect(data["transport"]["results_endpoint"])
        k, failed = 0, False
        while proc.poll() is None and k < 20000 and not failed:
            lineout, fit, curves, _ = _frame(k)
            msg = Result(run_id="c", frame_index=k, timestamp=time.time(), n_r=N_R, n_eta=N_ETA, n_peaks=N_PEAKS,
                         n_rois=1, n_curve_points=3)
            try:
                push.send_multipart(encode(msg, result_buffers(lineout, None, fit, curves)), zmq.NOBLOCK)
                k += 1
            except zmq.Again:
                time.sleep(0.01)
            time.sleep(0.0005)
            while events.poll(0):  # the run fails; the writer goes on (ready for the next run)
                beat, _ = decode(events.recv_multipart())
                failed = failed or beat.counters.get("runs_failed", 0) >= 1
        assert failed and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no failure"
        push.send_multipart(encode(EndOfStream(run_id="c", n_frames=k)))  # the end: the last run failed, exit 3
        rc = proc.wait(20)
        err = proc.stderr.read()
    finally:
        push.close()
        events.close(linger=0)
        ctx.destroy(linger=0)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 3, (rc, err)
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "out.h5" in errors[0] and "file size limit" in errors[0], err
    assert (tmp_path / "out.h5").stat().st_size <= limit  # nothing was written past the limit
    repair(tmp_path / "out.h5")  # clears the status flag and restores a length the last write did not reach
    with h5py.File(tmp_path / "out.h5", "r") as f:
        e = f["entry"]
        n = int(e.attrs["frames_written"])
        assert 0 < n < k and not e.attrs["run_complete"]
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(n))
        for i in range(n):
            np.testing.assert_array_equal(e["data/I"][i], _frame(i)[0])


@pytest.mark.timeout(60)
def test_the_writer_process_records_every_result_buffer(tmp_path):
    """The real writer process, fed out of order: fits with NaN rows, ROI curves, a rejected frame, partial omega
    sums, a PeakUpdate and the EndOfStream: every buffer lands in the HDF5 file, fit.bin, fit_curves.bin and the
    zarr.zip, in frame_index order, and the run completes (exit 0, run_complete)."""
    from ringstream.protocol import EndOfStream, PeakUpdate
    from ringstream.writer.midas_binaries import read_fit_curves

    data = _writer_config(tmp_path)
    ctx = zmq.Context()
    proc, events = spawn_writer(data, ctx)
    push = ctx.socket(zmq.PUSH)
    n, rejected = 30, 17
    order = list(range(n))
    random.Random(3).shuffle(order[:12])  # early frames arrive out of order
    try:
        push.connect(data["transport"]["results_endpoint"])
        partial: dict[int, np.ndarray] = {}
        for k in order:
            lineout, fit, curves, cake = _frame(k)
            if k == rejected:
                push.send_multipart(encode(Result(run_id="c", frame_index=k, status="rejected", reason="test")))
                continue
            msg = Result(run_id="c", frame_index=k, source_id=f"c:{k}", timestamp=1.7e9 + k, n_r=N_R, n_eta=N_ETA,
                         n_peaks=N_PEAKS, n_rois=1, n_curve_points=3, metadata={"omega": 0.5 * k, "I0": 7.0})
            push.send_multipart(encode(msg, result_buffers(lineout, None, fit, curves)))
            partial[k // OSF] = partial.get(k // OSF, 0) + cake
        push.send_multipart(encode(PeakUpdate(seq=1, from_frame=12, peaks=[4.5, 8.0], origin="control")))
        for g, total in partial.items():
            m = sum(1 for k in range(OSF * g, min(n, OSF * g + OSF)) if k != rejected)
            push.send_multipart(encode(OmegaPartial(group=g, n_frames=m, n_r=N_R, n_eta=N_ETA), [total]))
        push.send_multipart(encode(EndOfStream(run_id="c", n_frames=n)))
        rc = proc.wait(30)
        err = proc.stderr.read()
    finally:
        push.close(linger=0)
        events.close(linger=0)
        ctx.destroy(linger=0)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 0, err
    keep = [k for k in range(n) if k != rejected]
    with h5py.File(tmp_path / "out.h5", "r") as f:  # opens without repair: a clean end
        e = f["entry"]
        assert bool(e.attrs["run_complete"]) and int(e.attrs["frames_written"]) == n - 1
        np.testing.assert_array_equal(e["data/frame_index"][:], keep)
        np.testing.assert_array_equal(e["data/I"][:], np.stack([_frame(k)[0] for k in keep]))
        np.testing.assert_array_equal(e["fit/peaks"][:], np.stack([_frame(k)[1] for k in keep]))
        np.testing.assert_array_equal(e["data/omega"][:], [0.5 * k for k in keep])
        np.testing.assert_array_equal(e["data/metadata/I0"][:], np.full(n - 1, 7.0))
        np.testing.assert_array_equal(e["fit/curve_rois"][:], [[k, 2, 3] for k in keep])
        u = e["fit/peak_updates"]
        assert list(u["seq"][:]) == [1] and list(u["from_frame"][:]) == [12] and u["origin"][0] == b"control"
        np.testing.assert_array_equal(u["peaks"][0], [4.5, 8.0])
        assert list(e["omega_sum/n_frames"][:]) == [10, 9, 10]
        for g in range(3):
            np.testing.assert_array_equal(e["omega_sum/I"][g], np.float32(partial[g]))  # the float64 sum, rounded
    fits = np.fromfile(tmp_path / "fit.bin").reshape(-1, N_PEAKS, 7)
    np.testing.assert_array_equal(fits, np.stack([_frame(k)[1] for k in keep]))
    curves = list(read_fit_curves(tmp_path / "fit_curves.bin"))
    assert [(c[0], c[1]) for c in curves] == [(k, 2) for k in keep]
    for c, k in zip(curves, keep, strict=True):
        np.testing.assert_array_equal(c[2], _frame(k)[2][1])
    z = zarr.open_group(zarr.storage.ZipStore(str(tmp_path / "out.zarr.zip"), mode="r"), mode="r", zarr_format=2)
    names = list(z["OmegaSumFrame"].keys())
    assert names == [f"LastFrameNumber_{k:09d}" for k in (9, 19, 29)]
    assert [z["OmegaSumFrame"][x].attrs["Number Of Frames Summed"] for x in names] == [10, 9, 10]
    for g, name in enumerate(names):
        np.testing.assert_array_equal(z["OmegaSumFrame"][name][...], np.float32(partial[g]))

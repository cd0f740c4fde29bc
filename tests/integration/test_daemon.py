"""The real ``ringstream run`` daemon, started as a subprocess on a 128 x 128 simulated detector.

Each test starts the console script in its own session (process group), polls its control socket for readiness
with a deadline, and a fixture kills whatever is left of the group at teardown; a test whose daemon leaves a process
behind fails. Covered (docs/DAEMON.md): a complete run equal to the reference engine; a SWMR reader following the
file; SIGTERM and a ``stop`` request drain; ``kill -9`` of a worker is detected within 2 s and stops the run with exit 5; garbage, wrong
versions and wrong sizes on the writer's results socket and the control socket are rejected, counted and logged
once; bad configuration is one line with exit 2; ``ringstream status`` exit codes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import zmq
from common import NY, NZ, SMALL_PARAMS, ringstream_command

from ringstream.daemon.status import NoDaemon, is_healthy, query_status
from ringstream.protocol import ControlRequest, Result, encode, result_buffers
from ringstream.transport.endpoints import free_tcp_endpoint

PARAMS = SMALL_PARAMS
COUNTS = re.compile(r"ringstream: run (\S+) finished: received (\d+), integrated (\d+), written (\d+), "
                    r"rejected (\d+), dropped (\d+) \(([^)]*)\), worker restarts \d+, writer restarts \d+, ingest restarts \d+, re-sent \d+, ([\d.]+) s, ([\d.]+) frames/s")


_script = ringstream_command


def write_params(folder: Path) -> Path:
    path = folder / "setup.txt"
    path.write_text(PARAMS.format(nz=NZ, ny=NY))
    return path


class Daemon:
    """One ``ringstream run`` subprocess: its stderr lines (with arrival times) are collected by a thread."""

    def __init__(self, args, cwd: Path) -> None:
        self.control = free_tcp_endpoint()
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(_script() + ["run", *map(str, args), "--control", self.control], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_ready(self, deadline_s: float = 40.0) -> dict:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited early ({self.proc.returncode}):\n{self.stderr}"
            try:
                status = query_status(self.control, timeout=0.5)
            except NoDaemon:
                time.sleep(0.2)
                continue
            if is_healthy(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready within {deadline_s} s:\n{self.stderr}")

    def status(self) -> dict:
        return query_status(self.control, timeout=2.0)

    def wait_status(self, condition, what: str, deadline_s: float = 20.0) -> dict:
        """Poll the status until ``condition(status)`` holds; fail after ``deadline_s`` naming ``what``."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                status = self.status()
            except NoDaemon:  # one slow answer on a loaded box: ask again until the deadline
                assert self.proc.poll() is None, f"daemon exited ({self.proc.returncode}) before {what}:\n{self.stderr}"
                assert time.monotonic() < deadline, f"no answer within {deadline_s} s waiting for {what}\n{self.stderr}"
                continue
            if condition(status):
                return status
            assert self.proc.poll() is None, f"daemon exited ({self.proc.returncode}) before {what}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {what} within {deadline_s} s: {status}\n{self.stderr}"
            time.sleep(0.05)

    def wait_written(self, n: int, deadline_s: float = 20.0) -> dict:
        """Wait until the writer has written at least ``n`` frames."""
        return self.wait_status(lambda st: st["totals"]["written"] >= n, f"{n} frames written", deadline_s)

    def wait(self, timeout: float = 40.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        self.stdout = self.proc.stdout.read()
        return rc

    def counts(self) -> tuple[int, ...]:
        m = COUNTS.search(self.stderr)
        assert m, f"no counts line in:\n{self.stderr}"
        return tuple(int(m.group(i)) for i in range(2, 7))  # received, integrated, written, rejected, dropped

    def line_time(self, pattern: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if rx.search(line):
                    return t
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.stderr}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(proc: subprocess.Popen) -> list[str]:
    """Kill a daemon still running and whatever is left of its process group (its children): what was found, as
    one line each (a leak, which fails the test that started it)."""
    leaked = []
    pgid = proc.pid
    if proc.poll() is None:
        leaked.append(f"daemon pid {pgid} still running")
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        leaked.append(f"processes left in group {pgid}")
        os.killpg(pgid, signal.SIGKILL)
    return leaked


@pytest.fixture
def daemons():
    """Start daemons with ``daemons(args, cwd)``; at teardown kill every process left in their groups (a leak
    fails the test)."""
    started: list[Daemon] = []

    def start(args, cwd) -> Daemon:
        d = Daemon(args, cwd)
        started.append(d)
        return d

    yield start
    leaked = [line for d in started for line in end_group(d.proc)]
    assert not leaked, "; ".join(leaked)


def reference_lineouts(params_path: Path, n: int) -> np.ndarray:
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    p = load_params(params_path)
    imap, _ = load_or_build(p)
    source = SimulatedSource(p, n_frames=n, seed=0, dtype="int32", precompute=False)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    frames = np.stack([source.make_frame(k) for k in range(n)])
    lineouts, _ = engine.integrate_batch(frames)
    return lineouts


def read_output(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        data = f["/entry/data"]
        return {
            "I": data["I"][()],
            "frame_index": data["frame_index"][()],
            "frames_written": int(data["I"].attrs["frames_written"]),
            "run_complete": bool(data["I"].attrs["run_complete"]),
        }


def assert_equals_reference(out: dict, params_path: Path, n: int) -> None:
    assert out["I"].shape[0] == n
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    ref = reference_lineouts(params_path, n).astype(np.float32)
    np.testing.assert_allclose(out["I"], ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
def test_complete_run_equals_reference(tmp_path, daemons):
    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 300, "--workers", 2, "--output-h5", "out.h5"], tmp_path)
    rc = d.wait(50)
    assert rc == 0, d.stderr
    assert d.counts() == (300, 300, 300, 0, 0)
    # the ingest started with glibc's non-temporal copy threshold ([transport] nontemporal_copy, the default)
    assert "ingest: frame copies bypass the CPU caches (GLIBC_TUNABLES=glibc.cpu.x86_non_temporal_threshold=0x40000)" \
        in d.stderr, d.stderr
    out = read_output(tmp_path / "out.h5")
    assert out["frames_written"] == 300 and out["run_complete"]
    assert_equals_reference(out, params, 300)


READER = textwrap.dedent("""
    import json, sys, time
    import h5py
    path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    seen = []
    f = None
    while time.monotonic() < deadline:
        if f is None:
            try:
                f = h5py.File(path, "r", libver="latest", swmr=True)
                ds = f["/entry/data/I"]
            except (OSError, KeyError):
                f = None
                time.sleep(0.05)
                continue
        ds.refresh()
        n = int(ds.shape[0])
        if not seen or n != seen[-1]:
            seen.append(n)
        if bool(ds.attrs["run_complete"]):
            break
        time.sleep(0.1)
    print(json.dumps(seen))
""")


@pytest.mark.timeout(60)
def test_swmr_reader_sees_the_file_grow(tmp_path, daemons, monkeypatch):
    params = write_params(tmp_path)
    monkeypatch.setenv("RINGSTREAM_TRANSPORT_NONTEMPORAL_COPY", "false")  # the plain copy (checked below)
    d = daemons(["--param-file", params, "--simulate", 500, "--rate", 100, "--output-h5", "out.h5",
                 "--save-interval", 20], tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "out.h5"), "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = reader.communicate(timeout=50)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert d.wait(30) == 0, d.stderr
    seen = json.loads(out)
    assert len(seen) >= 4, (seen, err)  # at 100 Hz over 5 s the reader sees several sizes
    assert seen == sorted(seen) and seen[-1] == 500, seen
    assert "bypass the CPU caches" not in d.stderr, d.stderr


@pytest.mark.timeout(60)
def test_sigterm_drains_and_status_exit_codes(tmp_path, daemons):
    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 100, "--output-h5", "out.h5"], tmp_path)
    d.wait_ready()
    d.wait_written(50)
    st = subprocess.run(_script() + ["status", "--control", d.control], capture_output=True, text=True, timeout=20)
    assert st.returncode == 0, st.stderr
    assert "running" in st.stdout and "worker-1" in st.stdout
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    out = read_output(tmp_path / "out.h5")
    assert out["run_complete"]
    assert out["frames_written"] == out["I"].shape[0] == written == integrated > 50
    assert rejected == 0 and dropped == 0
    assert received == integrated  # the frame the ingest held when the stop came goes out too
    np.testing.assert_array_equal(out["frame_index"], np.arange(written))
    after = subprocess.run(_script() + ["status", "--control", d.control], capture_output=True, text=True, timeout=20)
    assert after.returncode == 1
    assert after.stderr.strip() == f"ringstream: error: no daemon answering on {d.control}"


@pytest.mark.timeout(90)
def test_a_frame_held_for_a_workers_credit_when_the_stop_comes_is_written_not_lost(tmp_path, daemons):
    """An unpaced source and one worker: the ingest nearly always holds a frame, waiting for that worker's credit.
    A SIGTERM then lets that frame go out (the worker returns credit until the ingest ends): every frame received
    is written, none dropped, none lost without a count."""
    params = write_params(tmp_path)
    for k in range(3):
        d = daemons(["--param-file", params, "--simulate", 0, "--workers", 1, "--output-h5", f"out{k}.h5"], tmp_path)
        d.wait_ready()
        d.wait_written(40 + 30 * k)
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(40) == 0, d.stderr
        received, integrated, written, rejected, dropped = d.counts()
        assert received == integrated == written > 40 and rejected == dropped == 0, d.stderr[-2000:]
        out = read_output(tmp_path / f"out{k}.h5")
        assert out["run_complete"] and out["I"].shape[0] == written
        np.testing.assert_array_equal(out["frame_index"], np.arange(written))


@pytest.mark.timeout(60)
def test_stop_request_drains_like_sigterm(tmp_path, daemons):
    from ringstream.daemon.status import request

    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 100, "--output-h5", "out.h5"], tmp_path)
    d.wait_ready()
    d.wait_written(20)  # mid-run: frames written and more coming
    reply = request(d.control, "stop")
    assert reply.ok and reply.data["state"] == "draining"
    assert d.wait(30) == 0, d.stderr
    _, integrated, written, _, _ = d.counts()
    out = read_output(tmp_path / "out.h5")
    assert out["run_complete"] and out["frames_written"] == written == integrated >= 20


def _bad_messages(kind: str) -> list[list[bytes]]:
    """Garbage, a wrong protocol version and a header whose size does not match its buffers."""
    if kind == "result":
        lineout = np.arange(56, dtype=np.float32)
        good = [bytes(f) for f in encode(Result(run_id="intruder", frame_index=10**9, n_r=56, n_eta=18),
                                         result_buffers(lineout, None))]
        short = [good[0], good[1][:40]]
    else:
        good = [bytes(f) for f in encode(ControlRequest(command="status"))]
        short = [good[0], b"\x00" * 16]  # a request carries no buffer
    header = msgpack.unpackb(good[0], raw=False)
    header["version"] = 99
    wrong_version = [msgpack.packb(header, use_bin_type=True), *good[1:]]
    return [[b"\xde\xad\xbe\xef garbage"], wrong_version, short]


@pytest.mark.timeout(60)
def test_bad_messages_are_rejected_counted_and_logged_once(tmp_path, daemons):
    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 400, "--rate", 100, "--output-h5", "out.h5"], tmp_path)
    d.wait_ready()
    endpoints = json.loads(subprocess.run(_script() + ["status", "--control", d.control, "--json"],
                                          capture_output=True, text=True, timeout=20).stdout)["endpoints"]
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(endpoints["results_endpoint"])
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoints["control_endpoint"])
        for _ in range(2):  # twice each: counted twice, logged once
            for msg in _bad_messages("result"):
                push.send_multipart(msg)
            for msg in _bad_messages("request"):
                dealer.send_multipart([b"", *msg])
                assert dealer.poll(5000), "no reply to a bad control request"
                dealer.recv_multipart()  # an error reply: the control socket stays up
        kinds = ("malformed", "version", "size")
        # the writer's counters arrive with its heartbeats: wait for the last of them, then check each exactly
        status = d.wait_status(lambda st: all(st["children"]["writer"]["counters"].get(f"protocol_errors_{k}", 0)
                                              >= 2 for k in kinds), "writer protocol error counts")
    finally:
        ctx.destroy(linger=0)
    writer = status["children"]["writer"]["counters"]
    for k in ("malformed", "version", "size"):
        assert writer[f"protocol_errors_{k}"] == 2, writer
        assert status["supervisor"][f"control_protocol_errors_{k}"] == 2, status["supervisor"]
    assert status["totals"]["protocol_errors"] == 12
    assert d.wait(40) == 0, d.stderr
    for place in ("writer", "supervisor control socket"):
        for k in ("malformed", "version", "size"):
            hits = [line for _, line in d.lines if place in line and f"rejected a message ({k})" in line]
            assert len(hits) == 1, (place, k, d.stderr)
    out = read_output(tmp_path / "out.h5")
    assert out["run_complete"] and out["frames_written"] == 400
    assert_equals_reference(out, params, 400)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "missing_param_file", "missing_folder"])
def test_bad_configuration_is_one_line_exit_2(tmp_path, case):
    params = write_params(tmp_path)
    toml = tmp_path / "daemon.toml"
    args = ["run", "--param-file", params, "--simulate", 10, "--control", free_tcp_endpoint()]
    expect: tuple[str, ...]
    if case == "unknown_key":
        toml.write_text("[workers]\ncount = 2\ncuont = 3\n")
        args += ["--config", toml]
        expect = (str(toml), "cuont")
    elif case == "wrong_type":
        toml.write_text("[workers]\ncount = \"two\"\n")
        args += ["--config", toml]
        expect = (str(toml), "count")
    elif case == "missing_param_file":
        args[2] = tmp_path / "nope.txt"
        expect = ("nope.txt", "param_file")
    else:
        args = [a for a in args if a != "--simulate" and a != 10] + ["--folder", tmp_path / "nope"]
        expect = ("--folder", "nope", "is not an existing folder")
    out = subprocess.run(_script() + [str(a) for a in args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringstream: error: "), out.stderr
    for word in expect:
        assert word in lines[0], lines[0]


@pytest.mark.timeout(30)
def test_status_with_nothing_running_exits_1(tmp_path):
    endpoint = free_tcp_endpoint()
    out = subprocess.run(_script() + ["status", "--control", endpoint, "--timeout", "0.5"], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 1
    assert out.stderr.strip() == f"ringstream: error: no daemon answering on {endpoint}"


@pytest.mark.timeout(60)
def test_trace_dir_stamps_every_frame_at_every_stage_in_causal_order(tmp_path, daemons):
    """``--trace-dir``: each process writes its stage stamps at its end; every frame has every stage once the run is
    over (a partial sum a frame: OmegaSumFrames 1), and the stamps of one frame follow its path through the processes
    (one clock for all of them)."""
    from ringstream.trace import STAGES, out_of_order, summary, table

    params = write_params(tmp_path)
    trace = tmp_path / "trace"
    d = daemons(["--param-file", params, "--simulate", 200, "--workers", 2, "--output-h5", "out.h5",
                 "--trace-dir", trace], tmp_path)
    assert d.wait(50) == 0, d.stderr
    assert d.counts() == (200, 200, 200, 0, 0)
    roles = sorted(p.name.rsplit("-", 1)[0] for p in trace.glob("*.npz"))
    assert roles == ["ingest", "worker-0", "worker-1", "writer"], roles
    frames, times = table(trace)
    assert frames.tolist() == list(range(200))
    assert not np.isnan(times).any(), [STAGES[k] for k in np.nonzero(np.isnan(times).any(axis=0))[0]]
    assert out_of_order(frames, times) == []
    rows = {r["interval"]: r for r in summary(times)}
    hold = rows["hold: ring slot -> slot free"]
    assert hold["frames"] == 200 and 0 < hold["p50_ms"] <= hold["max_ms"]

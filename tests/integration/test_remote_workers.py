"""Workers joined from "other hosts" (loopback here), with CURVE: real processes, one daemon for the module.

The daemon (one local worker, CPU engine, an endless simulated source) takes two joined workers: one through a relay
that records every byte the daemon sends on its frames port, one directly. A third worker, whose key the daemon does
not know, and a fourth without CURVE are refused and counted while the run goes on. The direct worker is then killed (SIGKILL) mid-run; after a
stop request the file holds every frame once, in order, equal to the reference engine's, and the relay's recording
holds none of the frames' pixels.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ringstream.daemon.status import NoDaemon, query_status, request
from ringstream.transport.security import generate_keys
from tests.integration.common import NY, NZ, SMALL_PARAMS, ringstream_command, simulated_reference

pytestmark = pytest.mark.timeout(150)


def _free_ports(n: int) -> int:
    """A port P with P .. P+n-1 free on 127.0.0.1 now (below the ephemeral range)."""
    for _ in range(200):
        base = random.randint(20000, 30000)
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                socks.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no 5 free ports in a row")


class Relay:
    """Forwards 127.0.0.1 ports Q .. Q+4 to P .. P+4, recording what the daemon sends on its frames port (P+1)."""

    def __init__(self, listen: int, target: int) -> None:
        self.recorded = bytearray()
        self.lock = threading.Lock()
        self.listeners = []
        for k in range(5):
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", listen + k))
            srv.listen(8)
            self.listeners.append(srv)
            threading.Thread(target=self._accept, args=(srv, target + k, k == 1), daemon=True).start()

    def _accept(self, srv, port: int, record: bool) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", port))
            except OSError:  # the daemon has closed the port (the end of the run)
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, record), daemon=True).start()

    def _pump(self, src, dst, record: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if record:
                    with self.lock:
                        self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for srv in self.listeners:
            srv.close()


def _worker(base: Path, join: str, keys: Path | None, name: str) -> subprocess.Popen:
    key = ["--keys-dir", str(keys)] if keys is not None else ["--insecure"]
    return subprocess.Popen(ringstream_command() + ["worker", "--join", join, *key, "--engine", "cpu", "--timeout",
                                                    "8"],
                            cwd=base, stdout=subprocess.DEVNULL, stderr=open(base / f"{name}.log", "w"),
                            start_new_session=True)


def _wait(control: str, what: str, condition, deadline_s: float = 40.0) -> dict:
    deadline = time.monotonic() + deadline_s
    st = None
    while time.monotonic() < deadline:
        try:
            st = query_status(control, timeout=1.0)
            if condition(st):
                return st
        except NoDaemon:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {deadline_s} s: {st}")


def _remote(st: dict) -> dict:
    return (st.get("remote") or {}).get("workers") or {}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    (base / "setup.txt").write_text(SMALL_PARAMS.format(nz=NZ, ny=NY))
    generate_keys(base / "server", "server")
    (base / "authorized").mkdir()
    for name in ("a", "b", "stranger"):
        generate_keys(base / name, "worker")
        (base / name / "server.key").write_bytes((base / "server" / "server.key").read_bytes())
    for name in ("a", "b"):
        (base / "authorized" / f"{name}.key").write_bytes((base / name / "worker.key").read_bytes())
    port = _free_ports(5)
    relay_port = _free_ports(5)
    relay = Relay(relay_port, port)
    control = f"ipc://{base}/rt/control"
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_TRANSPORT_RUNTIME_DIR=str(base / "rt"))
    daemon = subprocess.Popen(ringstream_command() + [
        "run", "--param-file", "setup.txt", "--simulate", "0", "--rate", "40", "--engine", "cpu", "--workers", "1",
        "--output-h5", "out.h5", "--no-zarr", "--remote-endpoint", f"tcp://127.0.0.1:{port}", "--keys-dir",
        str(base / "server"), "--authorized-keys-dir", str(base / "authorized")],
        cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    procs = [daemon]
    try:
        _wait(control, "first frames", lambda st: st["totals"]["written"] >= 5)
        a = _worker(base, f"tcp://127.0.0.1:{relay_port}", base / "a", "a")
        b = _worker(base, f"tcp://127.0.0.1:{port}", base / "b", "b")
        stranger = _worker(base, f"tcp://127.0.0.1:{port}", base / "stranger", "stranger")
        nokey = _worker(base, f"tcp://127.0.0.1:{port}", None, "nokey")  # no CURVE at all
        procs += [a, b, stranger, nokey]
        both = _wait(control, "two joined workers integrating",
                     lambda st: len(_remote(st)) == 2 and all(w["integrated"] >= 20 for w in _remote(st).values()))
        stranger_rc, nokey_rc = stranger.wait(30), nokey.wait(30)
        refused = _wait(control, "the stranger refused",
                        lambda st: st["remote"]["refused"] >= 1 and st["remote"]["handshake_failed"] >= 1)
        before_kill = refused["totals"]["written"]
        os.kill(b.pid, signal.SIGKILL)  # mid-run: what it held goes to the others
        t_kill = time.monotonic()
        _wait(control, "the killed worker noticed", lambda st: st["remote"]["gone"] == 1)
        noticed_s = time.monotonic() - t_kill
        b.wait(10)
        gone = _wait(control, "frames after the kill", lambda st: st["totals"]["written"] >= before_kill + 40)
        assert request(control, "stop").ok
        err = daemon.communicate(timeout=60)[1]
        a_rc = a.wait(30)
        yield {"base": base, "rc": daemon.returncode, "stderr": err, "both": both, "refused": refused,
               "gone": gone, "noticed_s": noticed_s, "stranger_rc": stranger_rc, "nokey_rc": nokey_rc, "a_rc": a_rc, "relay": relay}
    finally:
        relay.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_every_frame_once_in_order_equal_to_the_reference(run):
    assert run["rc"] == 0, run["stderr"]
    with h5py.File(run["base"] / "out.h5", "r") as f:
        lineouts = f["/entry/data/I"][()]
        index = f["/entry/data/frame_index"][()]
    n = len(index)
    np.testing.assert_array_equal(index, np.arange(n))
    ref = simulated_reference(run["base"] / "setup.txt", n)[0].astype(np.float32)
    np.testing.assert_allclose(lineouts, ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))
    final = run["stderr"].strip().splitlines()[-1]
    assert f"received {n}, integrated" in final and f"written {n}, rejected 0, dropped 0" in final, final
    # the joined workers did a share of it, and the one killed mid-run held frames that went out again
    workers = run["both"]["remote"]["workers"]
    assert sorted(w["host"] for w in workers.values()) == [socket.gethostname()] * 2
    assert run["a_rc"] == 0  # the relayed worker ended by itself once the daemon stopped


def test_an_unknown_key_is_refused_counted_and_logged_while_the_run_goes_on(run):
    assert run["stranger_rc"] == 2 and run["nokey_rc"] == 2
    for name in ("stranger", "nokey"):
        line = (run["base"] / f"{name}.log").read_text().strip().splitlines()[-1]
        assert line.startswith("ringstream: error: worker: no answer from tcp://127.0.0.1:"), line
    assert "a connection failed the CURVE handshake" in run["stderr"]  # the one without CURVE
    assert run["refused"]["state"] == "running" and run["refused"]["totals"]["refused"] >= 1
    assert "refused a connection from 127.0.0.1" in run["stderr"]


def test_a_killed_worker_is_noticed_and_loses_nothing(run):
    assert run["gone"]["remote"]["gone"] == 1 and len(run["gone"]["remote"]["workers"]) == 1
    # [supervisor] heartbeat_timeout (2 s) of silence, seen here through status polls on a loaded box
    assert run["noticed_s"] < 3.0, run["noticed_s"]
    assert "silent for" in run["stderr"] and "gone; the frames it held go to the other workers" in run["stderr"]


def test_the_frames_port_carries_no_pixels_in_clear(run):
    recorded = bytes(run["relay"].recorded)
    integrated_by_a = max(w["integrated"] for w in run["both"]["remote"]["workers"].values())
    assert len(recorded) > 20 * NZ * NY * 4 and integrated_by_a >= 20  # frames went through the relay
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    source = SimulatedSource(load_params(run["base"] / "setup.txt"), n_frames=8, seed=0, dtype="int32",
                             precompute=False)
    for k in range(8):
        row = source.make_frame(k)[NZ // 2].tobytes()
        assert recorded.find(row) < 0 and recorded.find(row[:64]) < 0, k

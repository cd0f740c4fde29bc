"""Local isolation: another user of the host can neither reach the daemon's internal sockets nor control it; the
owner's ``ringstream status``, ``peaks`` and ``runs`` work without naming the control socket.

One daemon (default ``auto`` endpoints: ``ipc://`` sockets; its runtime folder named by
``RINGSTREAM_TRANSPORT_RUNTIME_DIR``, which the clients read too) serves every test of the module. The stranger is
this test process forked and switched to ``nobody`` (the interpreter lives where ``nobody`` may not run it, so no
new process is started); it needs root to switch, and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ringstream.daemon.status import NoDaemon, is_healthy, query_status
from tests.integration.common import NY, NZ, SMALL_PARAMS, ringstream_command

pytestmark = pytest.mark.timeout(120)

PARAMS = SMALL_PARAMS + "PeakLocation 26.5\nFitROIPadding 5\n"
CONTROL_ENV = "RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT"


@pytest.fixture(scope="module")
def daemon():
    base = Path(tempfile.mkdtemp(prefix="rs-iso-", dir="/tmp"))
    os.chmod(base, 0o755)  # the stranger may walk up to the runtime folder: only the daemon's own modes stop it
    runtime = base / "rt"
    (base / "setup.txt").write_text(PARAMS.format(nz=NZ, ny=NY))
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_TRANSPORT_RUNTIME_DIR=str(runtime))
    env.pop(CONTROL_ENV, None)
    proc = subprocess.Popen(ringstream_command() + ["run", "--param-file", "setup.txt", "--simulate", "0", "--rate",
                                                    "40", "--engine", "cpu", "--workers", "1", "--output-h5",
                                                    "out.h5", "--no-zarr"],
                            cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    control = f"ipc://{runtime}/control"
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = query_status(control, timeout=0.5)
            if is_healthy(status) and status["totals"]["written"] >= 2:
                break
        except NoDaemon:
            pass
        time.sleep(0.2)
    try:
        assert status is not None and status["totals"]["written"] >= 2, proc.stderr.read() if proc.poll() else status
        yield {"base": base, "runtime": runtime, "env": env, "status": status, "control": control}
    finally:
        proc.terminate()
        try:
            err = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        assert proc.returncode == 0, err
        assert not list(runtime.iterdir()), "the daemon left sockets or its private folder behind"
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _as_nobody(probe) -> dict:
    """Run ``probe()`` (returns a JSON-ready dict) in a fork of this process switched to the user ``nobody``."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = probe()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data or b"{}")
    assert os.WEXITSTATUS(status) == 0, result
    return result


def _connect(path: str) -> str:
    """What connecting to the Unix socket ``path`` gives: "connected" or the errno's name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return "connected"
        except OSError as exc:
            return os.strerror(exc.errno)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root (the test runs as a user)")
def test_another_user_reaches_no_socket_and_cannot_control(daemon, tmp_path):
    endpoints = daemon["status"]["endpoints"]
    paths = {k: v[len("ipc://"):] for k, v in endpoints.items()}
    assert all(v.startswith("ipc://") for v in endpoints.values()), endpoints
    # a socket the stranger may reach, to show the probe itself works
    open_dir = Path(tempfile.mkdtemp(prefix="rs-open-", dir="/tmp"))
    os.chmod(open_dir, 0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(open_dir / "open"))
    os.chmod(open_dir / "open", 0o666)
    listener.listen(1)
    rings = [str(p) for p in Path("/dev/shm").glob("ringstream-*")]

    def probe() -> dict:
        import zmq

        out = {"open": _connect(str(open_dir / "open")), "sockets": {k: _connect(p) for k, p in paths.items()}}
        shm = {}
        for ring in rings:
            try:
                with open(ring, "rb"):
                    shm[ring] = "opened"
            except OSError as exc:
                shm[ring] = os.strerror(exc.errno)
        out["shm"] = shm
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoints["control_endpoint"])
        sock.send_multipart([b"", b"stop"])  # never answered: the connection cannot be made
        out["control_answered"] = bool(sock.poll(1500))
        sock.close()
        ctx.term()
        return out

    try:
        seen = _as_nobody(probe)
    finally:
        listener.close()
        subprocess.run(["rm", "-rf", str(open_dir)], check=False)
    assert seen["open"] == "connected"
    assert seen["sockets"] == dict.fromkeys(paths, os.strerror(13)), seen  # Permission denied, every one
    assert seen["control_answered"] is False
    assert rings and seen["shm"] == dict.fromkeys(rings, os.strerror(13)), seen
    assert stat.S_IMODE(os.stat(paths["control_endpoint"]).st_mode) == 0o600
    assert query_status(daemon["control"])["state"] == "running"  # still running: the stranger stopped nothing


def _client(daemon, *args) -> subprocess.CompletedProcess:
    return subprocess.run(ringstream_command() + list(args), capture_output=True, text=True, timeout=30,
                          env=daemon["env"], cwd=daemon["base"])


def test_the_owner_controls_it_without_naming_the_socket(daemon):
    st = _client(daemon, "status")
    assert st.returncode == 0 and st.stdout.startswith(f"run {daemon['status']['run_id']}: running"), st
    peaks = _client(daemon, "peaks", "set", "37.5")
    assert peaks.returncode == 0 and "in force from frame" in peaks.stdout and peaks.stdout.rstrip().endswith(
        ": 37.5"), peaks
    runs = _client(daemon, "runs", "list", "--json")
    assert runs.returncode == 0 and [r["status"] for r in json.loads(runs.stdout)] == ["open"], runs

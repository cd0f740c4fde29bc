"""sd_notify datagrams on a real AF_UNIX socket: READY, STATUS, WATCHDOG, STOPPING; no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

from ringstream.daemon.notify import Notifier

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


def recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_stopping_arrive(listener):
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_enabled and n.watchdog_interval == 5.0
    assert n.ready("4 workers ready")
    assert recv(sock) == {"READY": "1", "STATUS": "4 workers ready"}
    assert n.status("running: 120 frames\n 30 fps")
    assert recv(sock) == {"STATUS": "running: 120 frames 30 fps"}  # one line
    assert n.watchdog()
    assert recv(sock) == {"WATCHDOG": "1"}
    assert n.extend_timeout(30)
    assert recv(sock) == {"EXTEND_TIMEOUT_USEC": "30000000"}
    assert n.stopping("draining")
    assert recv(sock) == {"STOPPING": "1", "STATUS": "draining"}
    n.close()


def test_watchdog_due_pings_every_half_period(listener):
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval == 1.0
    assert n.watchdog_due(now=100.0) is True  # nothing sent yet
    assert recv(sock) == {"WATCHDOG": "1"}
    assert n.watchdog_due(now=100.5) is False
    assert n.watchdog_due(now=100.99) is False
    assert n.watchdog_due(now=101.0) is True
    assert recv(sock) == {"WATCHDOG": "1"}
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)  # exactly two pings


def test_abstract_socket_name():
    name = f"ringstream-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv(sock) == {"READY": "1"}
        assert n.stopping()
        assert recv(sock) == {"STOPPING": "1"}
    finally:
        sock.close()


def test_no_op_without_notify_socket():
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and not n.watchdog_enabled
    assert n.ready("x") is False and n.status("x") is False and n.stopping() is False
    assert n.watchdog() is False and n.watchdog_due() is False and n.extend_timeout(5) is False


def test_watchdog_off_for_another_pid_or_without_usec(listener):
    path, sock = listener
    other = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None and other.watchdog() is False
    none = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert none.watchdog_interval is None and none.watchdog() is False
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)  # nothing was sent


def test_failure_never_raises_and_logs_once(tmp_path, caplog):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.DEBUG, logger="ringstream.notify"):
        assert n.ready() is False
        assert n.status("x") is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nobody-listens.sock" in warnings[0].getMessage()
    bad = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert bad.ready() is False  # unsupported address: logged, not raised

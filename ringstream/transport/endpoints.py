"""ZeroMQ endpoint strings: free loopback ports for ``"auto"``."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_SCHEMES = ("tcp://", "ipc://", "inproc://")
_LOW_PORT = 10000
_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[tuple[str, int]] = set()
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it gives to outgoing connections and ``bind(0)`` (Linux default 32768-60999)."""
    try:
        lo, hi = (int(v) for v in _EPHEMERAL_FILE.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ's listener does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``"tcp://HOST:PORT"`` with the port of :func:`free_tcp_port`."""
    return f"tcp://{host}:{free_tcp_port(host)}"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now and that the kernel will not hand out by itself.

    The port is chosen below the kernel's ephemeral range: a port from ``bind(0)`` lies inside that range, where
    any outgoing TCP connection of this host (another ZeroMQ ``connect``) may take it between this call and the
    caller's bind. Below the range only an explicit bind can take it, and this process never hands the same port
    out twice. Should the bind still fail, it fails loudly (``zmq.ZMQError``, address in use).
    """
    lo, _hi = _ephemeral_range()
    rnd = random.SystemRandom()
    if lo - 1 > _LOW_PORT:
        with _lock:
            for _ in range(200):
                port = rnd.randint(_LOW_PORT, lo - 1)
                if (host, port) not in _handed_out and _bindable(host, port):
                    _handed_out.add((host, port))
                    return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below the range: the kernel's choice
        sock.bind((host, 0))
        return sock.getsockname()[1]


def resolve(endpoint: str, host: str = "127.0.0.1") -> str:
    """``endpoint`` itself, or a free ``tcp://host:PORT`` for ``"auto"``; ``ValueError`` for an unknown scheme."""
    if endpoint == "auto":
        return free_tcp_endpoint(host)
    if not endpoint.startswith(_SCHEMES):
        raise ValueError(
            f"endpoint {endpoint!r} is neither 'auto' nor {', '.join(s + '...' for s in _SCHEMES)}"
        )
    return endpoint

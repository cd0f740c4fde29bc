"""ZeroMQ endpoint strings: free loopback ports for ``"auto"``."""

from __future__ import annotations

import socket

_SCHEMES = ("tcp://", "ipc://", "inproc://")


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``"tcp://HOST:PORT"`` with a port the kernel just reported free on ``host``.

    The port is released before this returns, so another process could take it before the caller binds; on a
    loopback address that is rare, and the bind then fails loudly (``zmq.ZMQError``, address in use).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"tcp://{host}:{port}"


def resolve(endpoint: str, host: str = "127.0.0.1") -> str:
    """``endpoint`` itself, or a free ``tcp://host:PORT`` for ``"auto"``; ``ValueError`` for an unknown scheme."""
    if endpoint == "auto":
        return free_tcp_endpoint(host)
    if not endpoint.startswith(_SCHEMES):
        raise ValueError(
            f"endpoint {endpoint!r} is neither 'auto' nor {', '.join(s + '...' for s in _SCHEMES)}"
        )
    return endpoint

"""ZeroMQ sockets carrying protocol messages, endpoint helpers and the shared-memory frame ring.

See docs/DAEMON.md, "Transport". The ring needs no zmq: import :mod:`ringstream.transport.shm_ring` directly
where only it is needed.
"""

from ringstream.transport.endpoints import free_tcp_endpoint, resolve
from ringstream.transport.shm_ring import FrameRing
from ringstream.transport.sockets import RejectLog, make_socket, recv_message, send_message

__all__ = [
    "FrameRing",
    "RejectLog",
    "free_tcp_endpoint",
    "make_socket",
    "recv_message",
    "resolve",
    "send_message",
]

"""CURVE on the sockets that remote workers reach (docs/REMOTE.md).

libzmq's CURVE mechanism authenticates both ends by their elliptic-curve key pairs and encrypts the connection. The
daemon holds a server key pair (``server.key_secret`` in ``[transport] keys_dir``, made by ``ringstream keys
generate``); it accepts a client only when the client's public key is one of the ``*.key`` files of
``[transport] authorized_keys_dir`` (pyzmq's :mod:`zmq.auth`: a ZAP handler thread in each binding process). A
worker joining from another host holds its own pair (``worker.key_secret``) and the daemon's public key
(``server.key``) in its ``keys_dir``.

The security of a socket is chosen per endpoint: libzmq copies a socket's options into each listener when it binds,
so one socket binds its ``ipc://`` endpoint without CURVE and then, with the CURVE server options set, its remote
``tcp://`` endpoint (:func:`bind_remote`). A client refused by the ZAP handler (unknown key) is counted and logged
with its address (:class:`CountingAuthenticator`); a client without CURVE, or with another server key, fails the
handshake before ZAP and never gets a connection.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import ConfigError

log = logging.getLogger("ringstream.security")

SERVER_NAME = "server"
WORKER_NAME = "worker"
#: the port offsets from ``[transport] remote_endpoint``'s port of the remote sockets (docs/REMOTE.md, "Ports")
REMOTE_PORTS = {"join": 0, "frames": 1, "results": 2, "events": 3, "peaks": 4}
#: the first worker index given to a joined (remote) worker; local workers are 0 .. count - 1
REMOTE_INDEX_BASE = 1000

_TCP = re.compile(r"^tcp://(\*|[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def tcp_host_port(endpoint: str) -> tuple[str, int] | None:
    """``("HOST", PORT)`` of a ``tcp://`` endpoint (brackets of an IPv6 host removed); None for another scheme."""
    m = _TCP.match(endpoint)
    if not m:
        return None
    return m.group(1).strip("[]"), int(m.group(2))


def is_loopback(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` endpoints and ``tcp://`` ones on a loopback address (127.0.0.0/8, ::1,
    ``localhost``); False for ``*``, another address or a host name."""
    hp = tcp_host_port(endpoint)
    if hp is None:
        return not endpoint.startswith("tcp://")
    host = hp[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_endpoints(remote: str, host: str | None = None) -> dict[str, str]:
    """The remote sockets of ``[transport] remote_endpoint`` = ``tcp://HOST:P``: ``{"join": P, "frames": P+1,
    "results": P+2, "events": P+3, "peaks": P+4}`` as ``tcp://HOST:PORT`` (``host`` replaces HOST: the address a
    joined worker connects to)."""
    hp = tcp_host_port(remote)
    if hp is None:
        raise ConfigError(f"[transport] remote_endpoint: expected tcp://HOST:PORT, got {remote!r}")
    name = host if host is not None else hp[0]
    name = f"[{name}]" if ":" in name else name
    return {k: f"tcp://{name}:{hp[1] + off}" for k, off in REMOTE_PORTS.items()}


def generate_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A new CURVE key pair in ``folder`` (made 0700 if missing): ``NAME.key`` (public: give it to the other side)
    and ``NAME.key_secret`` (mode 0600). An existing pair is never replaced (ConfigError)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"keys generate: {path} exists; remove it first to make a new pair")
    public_s, secret_s = zmq.auth.create_certificates(str(folder), name)
    Path(secret_s).chmod(0o600)
    return Path(public_s), Path(secret_s)


def load_secret(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` of ``keys_dir/NAME.key_secret``; ConfigError naming the file when it is missing or bad."""
    path = Path(keys_dir) / f"{name}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[transport] keys_dir: cannot read the key pair {path} ({exc}); make one with "
                          f"`ringstream keys generate {keys_dir} --name {name}`") from None
    if not secret:
        raise ConfigError(f"[transport] keys_dir: {path} holds no secret key")
    return public, secret


def load_public(keys_dir: str, name: str) -> bytes:
    """The public key of ``keys_dir/NAME.key``; ConfigError naming the file."""
    path = Path(keys_dir) / f"{name}.key"
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[transport] keys_dir: cannot read the public key {path} ({exc})") from None
    return public


def uses_curve(transport) -> bool:
    """Whether the remote sockets of ``[transport]`` use CURVE: not with ``insecure_remote``."""
    return bool(transport.remote_endpoint) and not transport.insecure_remote


class CountingAuthenticator(ThreadAuthenticator):
    """The ZAP handler of one process: CURVE clients whose public key is in ``authorized_keys_dir``; every refusal
    is counted (:attr:`refused`) and logged with the client's address (the first ten at WARNING)."""

    def __init__(self, ctx: zmq.Context, where: str) -> None:
        super().__init__(ctx, log=logging.getLogger("ringstream.security.zap"))
        self.where = where
        self.refused = 0
        self._address = ""
        self._lock = threading.Lock()

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 4:
            self._address = msg[3].decode("utf-8", "replace")
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous") -> None:
        if status_code != b"200":
            with self._lock:
                self.refused += 1
                n = self.refused
            (log.warning if n <= 10 else log.debug)(
                "%s: refused a connection from %s (%s); %d refused so far", self.where, self._address or "?",
                status_text.decode("utf-8", "replace"), n)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def start_authenticator(ctx: zmq.Context, transport, where: str) -> CountingAuthenticator | None:
    """The ZAP handler of a process that binds remote sockets (None without CURVE)."""
    if not uses_curve(transport):
        return None
    folder = Path(transport.authorized_keys_dir)
    if not transport.authorized_keys_dir or not folder.is_dir():
        raise ConfigError(f"[transport] authorized_keys_dir: {str(folder)!r} is not a folder of workers' public "
                          "keys (*.key)")
    auth = CountingAuthenticator(ctx, where)
    auth.start()
    auth.configure_curve(domain="*", location=str(folder))
    return auth


def bind_remote(sock: zmq.Socket, endpoint: str, transport) -> None:
    """Bind ``sock`` also to the remote ``endpoint``: as a CURVE server (with the daemon's key pair) unless
    ``insecure_remote``. The options apply to this bind only (libzmq copies them into the listener); they are
    reset afterwards so that a later bind of the socket is not affected."""
    if uses_curve(transport):
        public, secret = load_secret(transport.keys_dir, SERVER_NAME)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"[transport] remote_endpoint: cannot bind {endpoint} ({exc})") from None
    finally:
        if uses_curve(transport):
            sock.setsockopt(zmq.CURVE_SERVER, 0)  # back to NULL for any later bind


def client_context(transport, ctx: zmq.Context) -> zmq.Context:
    """``ctx`` with the CURVE client options of a joined worker as the defaults of its new sockets (its own key pair
    ``worker.key_secret`` and the daemon's ``server.key`` from ``keys_dir``); unchanged without CURVE."""
    if not uses_curve(transport):
        return ctx
    public, secret = load_secret(transport.keys_dir, WORKER_NAME)
    ctx.setsockopt(zmq.CURVE_SERVERKEY, load_public(transport.keys_dir, SERVER_NAME))
    ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return ctx


def serve_remote(ctx: zmq.Context, sock: zmq.Socket, transport, name: str, where: str) -> CountingAuthenticator | None:
    """In a process that binds one of the remote sockets (``name``: a key of :data:`REMOTE_PORTS`): with
    ``[transport] remote_endpoint``, start its ZAP handler and bind ``sock`` also to that remote endpoint. Returns
    the handler (its ``refused`` count goes into the heartbeat as ``curve_refused``; stop it before the context is
    destroyed), or None."""
    if not transport.remote_endpoint:
        return None
    auth = start_authenticator(ctx, transport, where)
    bind_remote(sock, remote_endpoints(transport.remote_endpoint)[name], transport)
    return auth


def refused_counters(auth: CountingAuthenticator | None) -> dict[str, int]:
    """``{"curve_refused": n}`` for a heartbeat, or nothing without a ZAP handler."""
    return {"curve_refused": auth.refused} if auth is not None else {}


def stop_authenticator(auth: CountingAuthenticator | None) -> None:
    if auth is not None:
        auth.stop()

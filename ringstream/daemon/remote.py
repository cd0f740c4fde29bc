"""The supervisor's side of workers on other hosts (docs/REMOTE.md).

With ``[transport] remote_endpoint = tcp://HOST:P`` the supervisor binds the *join* ROUTER on port P and, on its
events PULL and peaks PUB, the remote endpoints P+3 and P+4 (the ingest binds frames on P+1, the writer results on
P+2), each with CURVE unless ``insecure_remote`` (:mod:`ringstream.transport.security`).

A worker started with ``ringstream worker --join tcp://HOST:P`` sends a ``join`` ControlRequest (its host, pid,
GPUs, engine) and gets its worker index (from :data:`~ringstream.transport.security.REMOTE_INDEX_BASE` on), the
daemon's configuration (endpoints replaced by the remote ones), the parameter file's text, the map key and the files
it must take from the daemon (:mod:`.shipping`: the parameter file's mask and dark files, ``[run] dark``, each with
its SHA-256); it fetches those (``fetch`` requests), then builds or loads the map from its own cache, or fetches
the daemon's map when it cannot build it, its own key differs, or it is told ``--fetch-map``. It then asks ``ping`` every second;
the answer carries the daemon's state, and a worker whose daemon is stopping (or silent) ends.

:class:`RemoteWorkers` keeps what is known of each joined worker from its join and its heartbeats. A worker silent for
``[supervisor] heartbeat_timeout`` (host down, network cut, process killed) is gone: the supervisor publishes its
``WorkerGone`` as for a local worker, and the frames it held go to the others (docs/DAEMON.md, "Delivery").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..errors import RingstreamError
from ..protocol import ControlReply, ControlRequest, ProtocolError, decode, encode
from ..transport.security import (
    REMOTE_INDEX_BASE,
    bind_remote,
    is_loopback,
    remote_endpoints,
    start_authenticator,
    uses_curve,
)
from .shipping import ShippedFiles

log = logging.getLogger("ringstream.supervisor")


@dataclass
class RemoteWorker:
    """One joined worker: what it said at its join and its last heartbeat."""

    index: int
    pid: int
    host: str
    address: str
    gpus: list = field(default_factory=list)
    engine: str = ""
    joined: float = 0.0  # monotonic
    last_beat: float = 0.0  # monotonic
    state: str = "joining"
    counters: dict = field(default_factory=dict)
    rate: float = 0.0  # frames/s over the last few seconds
    _mark: tuple[float, float] = (0.0, 0.0)

    def beat(self, state: str, counters: dict) -> None:
        now = time.monotonic()
        done = float(counters.get("integrated", 0) or 0)
        t0, n0 = self._mark
        if t0 == 0.0:
            self._mark = (now, done)
        elif now - t0 >= 1.0:
            self.rate = (done - n0) / (now - t0)
            self._mark = (now, done)
        self.last_beat, self.state, self.counters = now, state, dict(counters)


class RemoteWorkers:
    """The join socket, the remote binds of the supervisor's sockets, and the table of joined workers."""

    def __init__(self, config: Any, ctx: zmq.Context, events: zmq.Socket, peaks_pub: zmq.Socket,
                 shipped: ShippedFiles | None = None) -> None:
        t = config.transport
        self.config = config
        self.shipped = shipped  # the files joined workers may fetch (:mod:`.shipping`)
        self.endpoints = remote_endpoints(t.remote_endpoint)
        self.auth = start_authenticator(ctx, t, "supervisor (join, events, peaks)")
        self.join = ctx.socket(zmq.ROUTER)
        self.join.setsockopt(zmq.LINGER, 0)
        bind_remote(self.join, self.endpoints["join"], t)
        bind_remote(events, self.endpoints["events"], t)
        bind_remote(peaks_pub, self.endpoints["peaks"], t)
        # a client without CURVE, or with another server key, fails the handshake before the ZAP handler sees it:
        # the join socket's monitor counts those attempts
        self.monitor = self.join.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self.handshake_failed = 0
        self.workers: dict[int, RemoteWorker] = {}
        self.next_index = REMOTE_INDEX_BASE
        self.gone = 0
        self.rejected_joins = 0
        if not uses_curve(t):
            log.warning("remote workers join on %s WITHOUT CURVE ([transport] insecure_remote = true): no "
                        "authentication, no encryption%s", t.remote_endpoint,
                        "" if is_loopback(t.remote_endpoint) else "; anyone who reaches the port can push results")
        else:
            log.info("remote workers join on %s (CURVE; keys of %s)", t.remote_endpoint, t.authorized_keys_dir)

    @property
    def refused(self) -> int:
        """Connections the ZAP handler refused (unknown key)."""
        return self.auth.refused if self.auth is not None else 0

    def close(self) -> None:
        self.join.disable_monitor()
        self.monitor.close(linger=0)
        if self.auth is not None:
            self.auth.stop()

    def drain_monitor(self) -> None:
        """Count (and log, the first ten at WARNING) the failed handshakes the join socket's monitor reports."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handshake_failed += 1
            (log.warning if self.handshake_failed <= 10 else log.debug)(
                "join socket %s: a connection failed the CURVE handshake (no CURVE, or another server key: error "
                "%s); %d so far", self.endpoints["join"], event.get("value"), self.handshake_failed)

    # ------------------------------------------------------------------------------------------------ requests
    def drain(self, state: str, params_text: str, map_key: str) -> None:
        """Answer every waiting request on the join socket (``join``, ``ping``); ``state`` is the daemon's."""
        while True:
            try:
                frames = self.join.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, rest = frames[0].bytes, frames[1:]
            address = rest[-1].get("Peer-Address") if rest else ""
            try:
                msg, _ = decode([f.buffer for f in rest])
                if not isinstance(msg, ControlRequest):
                    raise ProtocolError("unknown_type", f"expected a request, got {type(msg).__name__}")
            except ProtocolError as exc:
                self.rejected_joins += 1
                reply = ControlReply(ok=False, error=f"rejected ({exc.kind}): {exc}")
            else:
                reply = self._answer(msg, address, state, params_text, map_key)
            buffers = ()
            if isinstance(reply, tuple):  # a fetch's answer and the part of the file
                reply, buffers = reply[0], (reply[1],)
            try:
                self.join.send_multipart([identity, *encode(reply, buffers)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the worker went away

    def _answer(self, msg: ControlRequest, address: str, state: str, params_text: str,
                map_key: str) -> ControlReply | tuple[ControlReply, bytes]:
        if msg.command == "ping":
            return ControlReply(ok=True, data={"state": state})
        if msg.command == "fetch":
            return self._fetch(msg, address)
        if msg.command != "join":
            return ControlReply(ok=False, error=f"unknown request {msg.command!r} on the join socket; expected "
                                                "'join', 'ping' or 'fetch'")
        if state not in ("starting", "running"):
            return ControlReply(ok=False, error=f"the daemon is {state}: it takes no new worker")
        cfg = self.config
        files: dict[str, Any] = {}
        map_file = None
        if self.shipped is not None:
            try:
                files = self.shipped.listing()
            except RingstreamError as exc:
                return ControlReply(ok=False, error=f"the daemon cannot ship a file its workers use: {exc}")
            # its size only: the map (hundreds of MB for a large detector) is hashed when a worker fetches it
            map_file = self.shipped.available("map")
        a = msg.args
        index = self.next_index
        self.next_index += 1
        host = str(a.get("host", "")) or address
        w = RemoteWorker(index=index, pid=int(a.get("pid", 0)), host=host, address=address,
                         gpus=list(a.get("gpus", [])), engine=str(a.get("engine", "")), joined=time.monotonic(),
                         last_beat=time.monotonic())
        self.workers[index] = w
        log.info("remote worker-%d joined from %s (host %s, pid %d, engine %s, GPUs %s)", index, address, host,
                 w.pid, w.engine or "as configured", w.gpus or "-")
        return ControlReply(ok=True, data={"index": index, "config": cfg.to_dict(),
                                           "params": params_text, "map_key": map_key,
                                           "endpoints": self.endpoints, "files": files, "map_file": map_file})

    def _fetch(self, msg: ControlRequest, address: str) -> ControlReply | tuple[ControlReply, bytes]:
        """A part of a file the daemon ships (:mod:`.shipping`), asked for by a joined worker."""
        name, offset = str(msg.args.get("name", "")), msg.args.get("offset", 0)
        if self.shipped is None or not isinstance(offset, int):
            return ControlReply(ok=False, error=f"fetch {name!r}: nothing is shipped, or offset {offset!r} is not an "
                                                "integer")
        try:
            data, part = self.shipped.part(name, offset)
        except RingstreamError as exc:
            log.warning("join socket: a fetch from %s refused: %s", address, exc)
            return ControlReply(ok=False, error=f"fetch: {exc}")
        if offset == 0:
            log.info("join socket: %s (%d bytes, SHA-256 %s) shipped to %s", name, data["size"],
                     data["sha256"][:12], address)
        return ControlReply(ok=True, data=data), part

    # ------------------------------------------------------------------------------------------------ liveness
    def on_heartbeat(self, msg) -> bool:
        """Take ``msg`` (a Heartbeat) when it is a joined worker's; False when it is not one."""
        if msg.role != "worker" or int(msg.index) < REMOTE_INDEX_BASE:
            return False
        w = self.workers.get(int(msg.index))
        if w is not None and int(msg.pid) == w.pid:
            w.beat(str(msg.state), msg.counters)
        return True

    def vanished(self, timeout: float) -> list[RemoteWorker]:
        """The joined workers silent for more than ``timeout`` s (or that said they are done), removed from the
        table."""
        now = time.monotonic()
        out = [w for w in self.workers.values() if w.state == "done" or now - w.last_beat > timeout]
        for w in out:
            del self.workers[w.index]
            self.gone += 1
            if w.state == "done":
                log.info("remote worker-%d (host %s, pid %d) left", w.index, w.host, w.pid)
            else:
                log.error("remote worker-%d (host %s, pid %d) silent for %.1f s: gone; the frames it held go to the "
                          "other workers", w.index, w.host, w.pid, now - w.last_beat)
        return out

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "endpoint": self.config.transport.remote_endpoint,
            "curve": uses_curve(self.config.transport),
            "refused": self.refused,
            "handshake_failed": self.handshake_failed,
            "gone": self.gone,
            "shipped_parts": self.shipped.parts if self.shipped is not None else 0,
            "shipped_bytes": self.shipped.bytes if self.shipped is not None else 0,
            "workers": {f"worker-{w.index}": {"host": w.host, "address": w.address, "pid": w.pid, "gpus": w.gpus,
                                              "engine": w.engine, "state": w.state,
                                              "frames_per_s": round(w.rate, 2),
                                              "integrated": int(w.counters.get("integrated", 0) or 0),
                                              "heartbeat_age": round(now - w.last_beat, 3)}
                        for w in self.workers.values()},
        }


def params_text(config: Any) -> str:
    """The parameter file's text, shipped to joining workers (they have no copy of it)."""
    return Path(config.run.param_file).read_text()

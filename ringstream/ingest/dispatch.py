"""Which worker holds which frame: the ingest's side of delivery (docs/DAEMON.md, "Delivery").

The ingest binds a ROUTER socket for frames; each worker connects a DEALER and announces itself with a
:class:`~ringstream.protocol.Credit` (its queue depth), then returns one credit per frame it has finished. A frame
goes to a worker only against credit, round-robin over the workers that have some, so the ingest knows at every
moment which process holds which frame.

A frame stays the ingest's until the writer acknowledges it (:class:`~ringstream.protocol.FrameAck`: its Result,
and with partial omega sums its sum, are in the writer's hands); only then is its ring slot free again. When a
worker dies, the supervisor tells the writer (:class:`~ringstream.protocol.WorkerGone`), which from then on ignores
that process and passes the news on, on the same socket as its acknowledgements (so after every acknowledgement of
that process's frames). The frames the dead process held and the writer has not acknowledged then go to the other
workers again, oldest first, before any new frame. Every frame the ingest accepted is thus integrated and written
once: a frame's results count only from the one process that held it when they reached the writer.

A worker joined from another host (``ringstream worker --join``, a worker index from ``REMOTE_INDEX_BASE`` on) cannot
see the ring: its frames go with the slot's bytes inline (still compressed when they are), through ``inline``; the
frame is held, and re-sent after the worker's death, exactly as a local worker's. Credit balances the load: each worker
announces what it can take and earns credit back as it finishes, so a slow or distant worker gets fewer frames.

This class is the bookkeeping and the sockets' traffic; the ingest process (:mod:`.process`) owns the ring.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from ..protocol import (
    Credit,
    Flushed,
    FrameAck,
    Missing,
    ProtocolError,
    WorkerGone,
    decode,
    encode,
    worker_identity,
)
from ..transport.child import receive
from ..transport.security import REMOTE_INDEX_BASE
from ..transport.sockets import RejectLog

log = logging.getLogger("ringstream.ingest")


@dataclass
class Peer:
    """One worker process as the ingest sees it: its credit and the frames it holds (sent, not acknowledged)."""

    worker: int
    pid: int
    credit: int = 0
    frames: set[int] = field(default_factory=set)
    unreachable: bool = False  # a send failed: the process is gone (its WorkerGone is on its way)

    @property
    def remote(self) -> bool:
        """A worker joined from another host (``ringstream worker --join``): frames go to it inline."""
        return self.worker >= REMOTE_INDEX_BASE


class Dispatcher:
    """Frames to workers against credit, acknowledgements from the writer, re-sending after a worker's death.

    ``frames``: the ROUTER socket (bound; ``ROUTER_MANDATORY`` is set here); ``acks``: the PULL socket the writer's
    acknowledgements and WorkerGone notices arrive on; ``freed(frame_index, message)`` is called once per frame
    acknowledged (the ingest frees its slot; ``message`` None: a frame not in flight, such as one a replacement
    ingest sent as lost); ``count(key, n)`` counts; ``flushed(message, pids)`` is called with each of the writer's
    :class:`~ringstream.protocol.Flushed` notices, once they are passed on to every worker (``pids``: those told).
    """

    def __init__(self, frames: zmq.Socket, acks: zmq.Socket, rejects: RejectLog,
                 freed: Callable[[int, object], None], count: Callable[..., None],
                 flushed: Callable[[Flushed, list[int]], None] | None = None,
                 inline: Callable[[object], tuple] | None = None) -> None:
        self.frames, self.acks, self.rejects = frames, acks, rejects
        self.flushed = flushed
        self.inline = inline  # a ring frame as a joined worker gets it: (header, buffers) with its bytes inline
        frames.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a process that is gone raises instead of vanishing
        self.freed, self.count = freed, count
        self.peers: dict[bytes, Peer] = {}
        self.order: deque[bytes] = deque()  # round-robin over the peers
        self.gone: set[bytes] = set()  # processes declared dead: a late Credit of theirs is ignored
        self.pending: dict[int, tuple[object, tuple]] = {}  # frame_index -> (FrameHeader, buffers), unacknowledged
        self.holder: dict[int, bytes] = {}  # frame_index -> the peer holding it
        self.resend: deque[int] = deque()  # frames of dead workers, to go out again before new ones
        self.missing: Missing | None = None  # the writer's answer to a replacement ingest's ResumeQuery
        self.poller = zmq.Poller()
        self.poller.register(frames, zmq.POLLIN)
        self.poller.register(acks, zmq.POLLIN)

    # ------------------------------------------------------------------------------------------------ state
    @property
    def credit(self) -> int:
        """Frames the live workers can take now."""
        return sum(p.credit for p in self.peers.values() if not p.unreachable)

    def counters(self) -> dict[str, int]:
        return {"unacknowledged": len(self.pending), "workers_connected": sum(not p.unreachable
                                                                              for p in self.peers.values())}

    # ------------------------------------------------------------------------------------------------ sending
    def _next_peer(self) -> bytes | None:
        for _ in range(len(self.order)):
            ident = self.order[0]
            self.order.rotate(-1)
            peer = self.peers.get(ident)
            if peer is not None and peer.credit > 0 and not peer.unreachable:
                return ident
        return None

    def try_send(self, msg, buffers=()) -> bool:
        """Send ``msg`` (a FrameHeader; ``buffers``: its inline pixels) to a worker with credit; False when none
        has any. The frame is then held by that worker until acknowledged."""
        encoded: dict[bool, list] = {}
        while True:
            ident = self._next_peer()
            if ident is None:
                return False
            remote = self.peers[ident].remote and self.inline is not None and msg.location == "shm"
            if remote not in encoded:  # a joined worker cannot see the ring: the slot's bytes go with the header
                encoded[remote] = encode(*self.inline(msg)) if remote else encode(msg, buffers)
            frames = encoded[remote]
            try:
                self.frames.send_multipart([ident, *frames], zmq.NOBLOCK, copy=not buffers)  # pixels by reference
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the process is gone; EAGAIN: its queue is full
                peer = self.peers[ident]
                if exc.errno == zmq.EHOSTUNREACH:
                    peer.unreachable = True
                    log.info("worker-%d (pid %d) is unreachable; its %d frames go to the others once the writer "
                             "has its last results", peer.worker, peer.pid, len(peer.frames))
                else:
                    peer.credit = 0
                continue
            peer = self.peers[ident]
            peer.credit -= 1
            idx = int(msg.frame_index)
            peer.frames.add(idx)
            self.holder[idx] = ident
            self.pending[idx] = (msg, tuple(buffers))
            return True

    def send_resends(self) -> int:
        """Send the frames of dead workers again, as far as credit goes; returns how many went."""
        n = 0
        while self.resend:
            idx = self.resend[0]
            entry = self.pending.pop(idx, None)
            if entry is None:  # acknowledged meanwhile
                self.resend.popleft()
                continue
            if not self.try_send(*entry):
                self.pending[idx] = entry
                break
            self.resend.popleft()
            n += 1
        if n:
            self.count("resent", n)
        return n

    # ------------------------------------------------------------------------------------------------ receiving
    def poll(self, timeout_ms: int) -> int:
        """Handle every message waiting on both sockets (waiting up to ``timeout_ms`` for the first); then send what
        is to be sent again. Returns the number of messages handled."""
        n = 0
        while True:
            events = dict(self.poller.poll(timeout_ms if n == 0 else 0))
            if not events:
                break
            if self.frames in events:
                n += self._take_credits()
            if self.acks in events:
                n += self._take_acks()
        if self.resend:
            self.send_resends()
        return n

    def _take_credits(self) -> int:
        n = 0
        while True:
            try:
                parts = self.frames.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return n
            n += 1
            ident, rest = parts[0], parts[1:]
            try:
                msg, _ = decode(rest)
            except ProtocolError as exc:
                self.rejects.record(exc)
                continue
            if not isinstance(msg, Credit) or worker_identity(msg.worker, msg.pid) != ident:
                self.rejects.record(ProtocolError("unknown_type", f"unexpected {type(msg).__name__} message on the "
                                                                  f"frames socket from {ident!r}"))
                continue
            if ident in self.gone:
                continue
            peer = self.peers.get(ident)
            if peer is None:
                peer = self.peers[ident] = Peer(int(msg.worker), int(msg.pid))
                self.order.append(ident)
                log.info("worker-%d (pid %d) connected with %d credit", peer.worker, peer.pid, int(msg.n))
            peer.credit += int(msg.n)

    def _take_acks(self) -> int:
        n = 0
        while True:
            try:
                got = receive(self.acks, self.rejects, (FrameAck, WorkerGone, Flushed, Missing), flags=zmq.NOBLOCK,
                              where="on the acknowledgement socket")
            except zmq.Again:
                return n
            n += 1
            if got is None:
                continue
            msg = got[0]
            if isinstance(msg, FrameAck):
                for idx in msg.frames:
                    self._acknowledged(int(idx))
            elif isinstance(msg, Flushed):
                told = self.broadcast(msg)
                if self.flushed is not None:
                    self.flushed(msg, told)
            elif isinstance(msg, Missing):
                self.missing = self.missing or msg  # the first answer counts (the query may go out more than once)
            else:
                self._worker_gone(int(msg.worker), int(msg.pid))

    def broadcast(self, msg) -> list[int]:
        """``msg`` to every worker connected (behind the frames already sent to it); one that is gone misses it.
        Returns the pids of the workers it went to."""
        frames = encode(msg)
        sent = []
        for ident, peer in self.peers.items():
            if peer.unreachable:
                continue
            try:
                self.frames.send_multipart([ident, *frames], zmq.NOBLOCK)
                sent.append(peer.pid)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    peer.unreachable = True
        return sent

    def _acknowledged(self, idx: int) -> None:
        entry = self.pending.pop(idx, None)
        if entry is None:
            self.count("acks_unexpected")
            self.freed(idx, None)
            return
        ident = self.holder.pop(idx, None)
        peer = self.peers.get(ident) if ident is not None else None
        if peer is not None:
            peer.frames.discard(idx)
        self.freed(idx, entry[0])

    def _worker_gone(self, worker: int, pid: int) -> None:
        ident = worker_identity(worker, pid)
        if ident in self.gone:  # told again (the supervisor publishes a death again for a replacement writer)
            return
        self.gone.add(ident)
        peer = self.peers.pop(ident, None)
        try:
            self.order.remove(ident)
        except ValueError:
            pass
        self.count("workers_lost")
        held = sorted(peer.frames) if peer is not None else []
        for idx in held:
            self.holder.pop(idx, None)
        self.resend.extend(held)
        if len(self.resend) > len(held):  # earlier re-sends still waiting: oldest first
            self.resend = deque(sorted(set(self.resend)))
        if peer is not None:
            log.warning("worker-%d (pid %d) is gone: %d frames it held go to the other workers", worker, pid,
                        len(held))
        else:  # a worker of an ingest that died before this one (the writer passes every notice on)
            log.info("worker-%d (pid %d) is gone; it held none of this ingest's frames", worker, pid)
        self.send_resends()

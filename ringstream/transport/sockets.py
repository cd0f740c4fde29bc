"""ZeroMQ sockets carrying protocol messages: creation with bounded queues, send/receive, counting bad messages.

Zero-copy sending and buffer reuse: ``send_message(..., copy=False)`` hands numpy buffers to libzmq by reference
and returns *before* they are on the wire. The caller must not write to those arrays afterwards (allocate a new
array per frame, or pass ``copy=True``); writing to them corrupts the message in flight. Shared-memory frames avoid
the question: only the header travels, and the ring slot is reused only after the writer's ``FrameAck``.
Headers and small messages are always copied (cheaper than tracking them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import zmq

from ringstream.protocol import ERROR_KINDS, Message, ProtocolError, decode, encode

_KINDS = {
    "PUSH": zmq.PUSH,
    "PULL": zmq.PULL,
    "ROUTER": zmq.ROUTER,
    "DEALER": zmq.DEALER,
    "REQ": zmq.REQ,
    "REP": zmq.REP,
    "PUB": zmq.PUB,
    "SUB": zmq.SUB,
    "PAIR": zmq.PAIR,
}

ZERO_COPY_MIN_BYTES = 65536
"""Buffers smaller than this are copied even with ``copy=False`` (pyzmq's own threshold)."""


def make_socket(
    ctx: zmq.Context, kind: int | str, endpoint: str, *, bind: bool, hwm: int, linger: int = 0
) -> zmq.Socket:
    """A ``kind`` socket (``zmq.PUSH`` or ``"PUSH"``) bound or connected to ``endpoint``.

    SNDHWM and RCVHWM are both ``hwm`` messages (set before bind/connect, when libzmq reads them); ``linger`` is
    in ms (0: pending messages are dropped at close, so a dead peer never blocks shutdown). A failed bind or
    connect closes the socket and raises ``zmq.ZMQError``.
    """
    sock_type = _KINDS[kind.upper()] if isinstance(kind, str) else kind
    sock = ctx.socket(sock_type)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, linger)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def send_message(
    sock: zmq.Socket, msg: Message, buffers: Iterable[Any] = (), copy: bool = False, flags: int = 0
) -> None:
    """Send ``msg`` and its buffers as one multipart message.

    With ``copy=False`` buffers of ``ZERO_COPY_MIN_BYTES`` or more are sent by reference: do not write to them
    afterwards (see the module docstring). ``flags=zmq.NOBLOCK`` raises ``zmq.Again`` when the queue is full (HWM);
    the message is then not sent, in whole. Raises :class:`ProtocolError` for a message the peer would reject.
    """
    frames = encode(msg, buffers)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        more = zmq.SNDMORE if i < last else 0
        small = i == 0 or frame.nbytes < ZERO_COPY_MIN_BYTES
        sock.send(frame, flags | more, copy=copy or small)


#: the most Results a workers -> writer queue holds, whatever their size
MAX_RESULTS_HWM = 4096


def results_hwm(queue_mb: float, floor: int, n_r: int, n_eta: int, cakes: bool, n_peaks: int,
                curve_points: int = 0, frames_per_partial: int = 0, partial_itemsize: float = 8,
                cake_itemsize: float = 4) -> int:
    """The high-water mark of the workers -> writer queue: about ``queue_mb`` MB of Results of ``n_r`` bins
    (and ``n_r x n_eta`` cakes of ``cake_itemsize`` bytes a value when ``cakes``: :func:`cake_itemsize`, ``n_peaks`` fit rows, ``curve_points`` model values) and of the
    partial omega sums among them (``n_r x n_eta`` of ``partial_itemsize`` bytes, one every ``frames_per_partial``
    frames: :func:`frames_per_partial`; 0: none; :func:`partial_itemsize`: compressed ones count their chunks), at least ``floor`` (``queue_depth``), at most
    :data:`MAX_RESULTS_HWM`. A shallow queue (32 lineouts) makes the writer wake up for every few messages; a deeper
    one lets it take them in runs, and absorbs a slow flush without holding up the workers and the ring. It is also
    what a kill -9 of the writer can lose beyond its last flush: 8 MB (the default) of 2,000-bin lineouts is ~890
    messages a side."""
    size = int(512 + 4 * n_r + (cake_itemsize * n_r * n_eta if cakes else 0) + 56 * n_peaks + 8 * curve_points + 16)
    if frames_per_partial > 0:  # the mean message: k Results and one partial sum per k frames
        k = int(frames_per_partial)
        size = int(k * size + 512 + partial_itemsize * n_r * n_eta) // (k + 1)
    return int(max(int(floor), min(MAX_RESULTS_HWM, int(float(queue_mb) * 1e6) // size)))


#: about how much smaller a whole omega sum's chunk is than the float32 sum (a float32 cake of Poisson counts: ~1.5x
#: with bitshuffle + LZ4 or Blosc), for the results queue's byte bound
SUM_COMPRESSION = 1.5


def partial_itemsize(omega_sum_frames: int, stored_itemsize: int, compressed: bool, zarr: bool) -> float:
    """About the bytes a value of a partial omega sum takes on the wire (for :func:`results_hwm`): float64 (8), or
    with ``OmegaSumFrames 1`` (every sum is a group's whole one) the stored dtype's ``stored_itemsize``, and when
    ``compressed`` its HDF5 chunk and, with ``zarr``, its zarr chunk, each :data:`SUM_COMPRESSION` times smaller."""
    if int(omega_sum_frames) not in (0, 1):
        return 8.0
    if not compressed:
        return float(stored_itemsize)
    return (2 if zarr else 1) * stored_itemsize / SUM_COMPRESSION


def cake_itemsize(stored_itemsize: int, compressed: bool, zarr: bool) -> float:
    """About the bytes a value of a Result's cake takes on the wire (for :func:`results_hwm`): float32 (4), or when
    the worker sends it ``compressed`` its HDF5 chunk and its sum's (and, with ``zarr``, the sum's zarr chunk),
    each :data:`SUM_COMPRESSION` times smaller than the ``stored_itemsize`` values."""
    return (2 + bool(zarr)) * stored_itemsize / SUM_COMPRESSION if compressed else 4.0


def frames_per_partial(write_2d: bool, omega_sum_frames: int, workers: int) -> int:
    """About how many frames a worker's partial omega sum holds (for :func:`results_hwm`): none are sent with
    per-frame cakes (``Write2D 1``) nor, nearly, with one group a run (``OmegaSumFrames -1``: 0); otherwise a group's
    frames shared among the workers, at least 1."""
    n = int(omega_sum_frames)
    if write_2d or n == -1:
        return 0
    return max(1, n // max(1, int(workers)))


def recv_message(sock: zmq.Socket, flags: int = 0, copy: bool = False) -> tuple[Message, list[memoryview]]:
    """The next message on ``sock`` and its buffers (views of the received frames, no copy).

    ``flags=zmq.NOBLOCK`` raises ``zmq.Again`` when nothing is waiting. A message that does not decode raises
    :class:`ProtocolError`; it has been consumed whole, so the socket stays usable. ``copy``: receive the frames
    as bytes (a copy each): half the time a message of small frames takes (no pyzmq Frame objects), for messages
    of a few kB (lineouts); large frames (cakes, pixels) are better viewed in place (the default).
    """
    if copy:
        return decode(sock.recv_multipart(flags, copy=True))
    frames = sock.recv_multipart(flags, copy=False)
    return decode([frame.buffer for frame in frames])


class RejectLog:
    """Counts protocol errors by kind for one receiving place (``where``, e.g. ``"writer results"``).

    The first error of each kind is logged at WARNING, later ones at DEBUG, so a misbehaving peer cannot flood
    the log; the counts go into heartbeats as ``protocol_errors_<kind>``.
    """

    def __init__(self, logger: logging.Logger, where: str) -> None:
        self._logger = logger
        self._where = where
        self._counts = dict.fromkeys(ERROR_KINDS, 0)

    def record(self, err: ProtocolError) -> None:
        """Count ``err`` and log it (WARNING the first time for its kind, DEBUG after)."""
        self._counts[err.kind] += 1
        if self._counts[err.kind] == 1:
            self._logger.warning(
                "%s: rejected a message (%s): %s; further %s errors are counted and logged at DEBUG",
                self._where,
                err.kind,
                err,
                err.kind,
            )
        else:
            self._logger.debug("%s: rejected a message (%s): %s", self._where, err.kind, err)

    def counters(self) -> dict[str, int]:
        """``{"protocol_errors_<kind>": count}`` for every kind (zeros included)."""
        return {f"protocol_errors_{kind}": n for kind, n in self._counts.items()}

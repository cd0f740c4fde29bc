"""The MIDAS socket source: frames over TCP in MIDAS's stream protocol (``[source] kind = "midas_socket"``).

Wire protocol (docs/MIDAS-FORMATS.md section 5; what MIDAS's ``integrator_server.py`` senders speak): per
frame a 4-byte little-endian header ``<uint16 dataset_num><uint16 dtype>``, then exactly NrPixelsY·NrPixelsZ
pixels row-major; no length field, no reply; dataset_num wraps at 65536. dtype (:data:`WIRE_DTYPES`): 0 u8, 1
u16, 2 u32, 3 i64, 4 f32, 5 f64, 6 hybrid = ``<u32 C>``, N × u16 base pixels, C × i32 flat indices, C × i64
values that replace those pixels (the frame is then int64).

The source listens on ``[source] midas_listen`` (127.0.0.1 unless configured) port ``[source] midas_port``
(60439); the socket is bound when the source is made, so a port in use fails the start with one line. Any number of
senders may be connected at once, each served by its own thread, which reads every frame straight into a ring
slot leased from the ingest's allocator (one copy; the hybrid base is widened into the slot). A sender waits for a
free slot (TCP then pushes back on it): the stream is never dropped for a slow pipeline.

A sender whose header names an unknown dtype, whose hybrid part is inconsistent (C > N, an index outside
0..N-1), that closes the connection inside a frame, or that stops for :data:`STALL_S` inside a frame (a short
frame) is disconnected with a logged reason naming it and the frame; its partial frame is dropped and counted
(``midas_malformed`` / ``midas_truncated``); the other senders carry on. Frames: source id
``HOST:PORT#dataset_num``, timestamp the arrival time, metadata ``{"dataset_num": n}``.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time

import numpy as np

from ..errors import InputError
from .live_queue import QueuedLiveSource
from .source_base import SourceFrame

log = logging.getLogger("ringstream.ingest.midas_socket")

DEFAULT_PORT = 60439

#: the wire dtype codes -> pixel types; 6 (hybrid) arrives as int64
WIRE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<u1"), 1: np.dtype("<u2"), 2: np.dtype("<u4"), 3: np.dtype("<i8"), 4: np.dtype("<f4"),
    5: np.dtype("<f8"),
}
HYBRID = 6

#: a sender that sends nothing for this long inside a frame has sent a short frame: it is disconnected, in s
STALL_S = 5.0

#: how often blocked reads and the accept loop look at the stop flag, in s
POLL_S = 0.2

_HEADER = struct.Struct("<HH")
_COUNT = struct.Struct("<I")

COUNTER_NAMES = ("midas_connected", "midas_senders", "midas_received", "midas_malformed", "midas_truncated")


class _Disconnect(Exception):
    """End of one sender: ``counter`` (or None for a clean close between frames) and the reason."""

    def __init__(self, counter: str | None, message: str) -> None:
        super().__init__(message)
        self.counter = counter


class MidasSocketSource(QueuedLiveSource):
    """Frames of ``shape`` = (NrPixelsZ, NrPixelsY) from MIDAS-protocol senders on ``host:port`` (see the module
    docstring). ``n_frames`` > 0: end after that many frames."""

    pausable = True
    resumable = False  # live: after an ingest restart it goes on with its new frames

    def __init__(self, shape: tuple[int, int], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 n_frames: int = 0) -> None:
        super().__init__(COUNTER_NAMES, n_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_pixels = self.shape[0] * self.shape[1]
        self.dtype = np.dtype("<f8")  # ring slots fit the widest wire type (8 bytes a pixel)
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        try:
            self._listener = socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host
                                                  else socket.AF_INET, backlog=16)
        except OSError as exc:
            raise InputError(f"[source] midas_listen/midas_port: cannot listen on {host}:{port} ({exc.strerror or exc})"
                             ) from None
        self.address = self._listener.getsockname()[:2]
        self.name = f"midas_socket:{self.address[0]}:{self.address[1]}"
        log.info("MIDAS socket: listening on %s:%d for %d x %d frames (dtypes 0-6)", self.address[0],
                 self.address[1], self.shape[1], self.shape[0])
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            log.warning("MIDAS socket: bound to %s, not loopback: anyone who reaches port %d can send frames "
                        "(the protocol has no authentication)", host, self.address[1])

    @classmethod
    def from_config(cls, config, params) -> MidasSocketSource:
        s = config.source
        return cls((int(params.NrPixelsZ), int(params.NrPixelsY)), host=str(s.midas_listen or "127.0.0.1"),
                   port=int(s.midas_port), n_frames=int(s.frames))

    # ---------------------------------------------------------------------------------------------- interface
    # attach_ring, counters and frames (accept senders, yield their frames, close): QueuedLiveSource
    def start_receiving(self) -> None:
        self._start(self._accept_loop, "midas-accept")

    def stop_receiving(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, disconnect every sender, give back the slots of frames never yielded."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(2 * POLL_S + 1)
        self.release_queued()

    # ---------------------------------------------------------------------------------------------- threads
    def _start(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], POLL_S)
                if not ready:
                    continue
                conn, peer = self._listener.accept()
            except (OSError, ValueError):  # closed under us
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(POLL_S)
            name = f"{peer[0]}:{peer[1]}"
            with self._lock:
                self._conns.add(conn)
                self._counters["midas_senders"] += 1
                self._counters["midas_connected"] += 1
            log.info("MIDAS socket: sender %s connected", name)
            self._start(self._serve, f"midas-{name}", conn, name)

    def _serve(self, conn: socket.socket, name: str) -> None:
        """One sender: frames until it closes, misbehaves or the source closes."""
        frames = 0
        base = np.empty(self.n_pixels, np.dtype("<u2"))  # hybrid scratch, reused
        counter = None
        try:
            while True:
                self._read_frame(conn, name, base)
                frames += 1
        except _Disconnect as exc:
            counter = exc.counter
            if counter is None:
                log.info("MIDAS socket: sender %s disconnected after %d frames%s", name, frames,
                         f" ({exc})" if str(exc) else "")
            else:
                log.warning("MIDAS socket: sender %s disconnected after %d good frames: %s", name, frames, exc)
        finally:
            with self._lock:  # the reason and the disconnection in one update: a snapshot never has one alone
                self._conns.discard(conn)
                self._counters["midas_connected"] -= 1
                if counter is not None:
                    self._counters[counter] = self._counters.get(counter, 0) + 1
            conn.close()

    def _read_frame(self, conn: socket.socket, name: str, base: np.ndarray) -> None:
        header = bytearray(_HEADER.size)
        self._recv_into(conn, memoryview(header), None)
        dataset, code = _HEADER.unpack(header)
        where = f"frame dataset_num {dataset}"
        if code != HYBRID and code not in WIRE_DTYPES:
            raise _Disconnect("midas_malformed", f"{where}: dtype {code} is not a MIDAS socket dtype (0..6)")
        dtype = WIRE_DTYPES.get(code, np.dtype("<i8"))
        lease = self.wait_for_slot(self.shape, dtype, self._closing.is_set)  # the sender waits: TCP pushes back
        if lease is None:
            raise _Disconnect(None, "the source is closing")
        try:
            out = lease.array.reshape(-1)
            if code == HYBRID:
                count = bytearray(_COUNT.size)
                self._recv_into(conn, memoryview(count), where)
                (c,) = _COUNT.unpack(count)
                if c > self.n_pixels:
                    raise _Disconnect("midas_malformed", f"{where}: hybrid count {c} exceeds the {self.n_pixels} "
                                                         f"pixels of the frame")
                self._recv_into(conn, memoryview(base).cast("B"), where)
                out[...] = base
                idx = np.empty(c, np.dtype("<i4"))
                vals = np.empty(c, np.dtype("<i8"))
                self._recv_into(conn, memoryview(idx).cast("B"), where)
                self._recv_into(conn, memoryview(vals).cast("B"), where)
                if c and (int(idx.min()) < 0 or int(idx.max()) >= self.n_pixels):
                    raise _Disconnect("midas_malformed", f"{where}: hybrid index outside 0..{self.n_pixels - 1}")
                out[idx] = vals
            else:
                self._recv_into(conn, memoryview(out).cast("B"), where)
        except BaseException:
            self._alloc.release(lease)
            raise
        self.count("midas_received")
        self.queue_frame(SourceFrame(pixels=lease.array, source_id=f"{name}#{dataset}", timestamp=time.time(),
                                     metadata={"dataset_num": int(dataset)}, lease=lease))

    def _recv_into(self, conn: socket.socket, view: memoryview, where: str | None) -> None:
        """Fill ``view`` from ``conn``. ``where`` None: at a frame boundary (a close there is clean)."""
        got, total = 0, len(view)
        last = time.monotonic()
        while got < total:
            if self._closing.is_set():
                raise _Disconnect(None, "the source is closing")
            try:
                n = conn.recv_into(view[got:], total - got)
            except TimeoutError:
                if (where is not None or got) and time.monotonic() - last > STALL_S:
                    raise _Disconnect("midas_truncated", f"{where or 'frame header'}: nothing for {STALL_S:g} s "
                                                         f"inside the frame (a short frame); dropped") from None
                continue
            except OSError as exc:
                raise _Disconnect("midas_truncated" if (where or got) else None, f"connection error ({exc})") from None
            if n == 0:
                if where is None and got == 0:
                    raise _Disconnect(None, "")
                raise _Disconnect("midas_truncated", f"{where or 'frame header'}: connection closed after {got} "
                                                     f"of {total} bytes of this part (a short frame); dropped")
            got += n
            last = time.monotonic()


def expand_hybrid(base: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The int64 frame a hybrid (dtype 6) message stands for: ``base`` (u16, flat) with ``values`` at
    ``indices``; shape of ``base``."""
    out = np.asarray(base).astype(np.int64)
    out.reshape(-1)[np.asarray(indices, np.int64)] = np.asarray(values, np.int64)
    return out


def encode_frame(dataset_num: int, frame: np.ndarray, hybrid_threshold: int | None = None) -> bytes:
    """The wire bytes of one frame (what a MIDAS sender writes): dtype from ``frame.dtype`` (one of
    :data:`WIRE_DTYPES`), or hybrid when ``hybrid_threshold`` is given: pixels above it (or outside u16) travel as
    (index, int64 value) pairs over a u16 base. For tests and tools; the header's dataset_num wraps at 65536."""
    flat = np.ascontiguousarray(frame).reshape(-1)
    if hybrid_threshold is None:
        code = {v.str: k for k, v in WIRE_DTYPES.items()}.get(flat.dtype.newbyteorder("<").str)
        if code is None:
            raise ValueError(f"dtype {frame.dtype} has no MIDAS wire code (0 u8, 1 u16, 2 u32, 3 i64, 4 f32, 5 f64)")
        return _HEADER.pack(dataset_num & 0xFFFF, code) + flat.astype(WIRE_DTYPES[code]).tobytes()
    wide = flat.astype(np.int64)
    over = np.flatnonzero((wide > hybrid_threshold) | (wide < 0) | (wide > 0xFFFF))
    base = np.where((wide >= 0) & (wide <= 0xFFFF), wide, 0).astype("<u2")
    base[over] = 0
    return (_HEADER.pack(dataset_num & 0xFFFF, HYBRID) + _COUNT.pack(over.size) + base.tobytes()
            + over.astype("<i4").tobytes() + wide[over].astype("<i8").tobytes())

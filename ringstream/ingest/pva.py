"""The EPICS PVA source: an areaDetector NTNDArray channel monitored with pvapy (``[source] kind = "pva"``).

The monitor (request ``record[queueSize=N]field()``, N = ``[source] pva_queue_size``: the server keeps up to N
updates for us, so a short stall of the pipeline pushes back into that queue instead of losing frames) calls
:meth:`PvaSource.on_update` in pvapy's thread. pvapy reuses the object it hands over, so everything is taken there:

- the image is the union member that is set (``ubyteValue`` … ``doubleValue``, see :data:`UNION_DTYPES`), its
  shape ``(dimension[1].size, dimension[0].size)`` = (rows, cols) = (NrPixelsZ, NrPixelsY);
- it is copied once, straight into a ring slot leased from the ingest's allocator, and queued as
  ``SourceFrame(lease=...)``; a frame compressed with ``bslz4``, ``lz4`` or ``lz4hdf5`` (:data:`KEPT_COMPRESSED`)
  is copied compressed, its framing in its header (the workers decode it), the other codecs (``blosc``, ``zlib``)
  are decoded into the slot (:mod:`.ntnd_codecs`);
- ``uniqueId`` is the source id, ``timeStamp`` the timestamp (s since the epoch), the NDAttributes named in
  ``[source] pva_attributes`` (``["*"]``: every scalar one) the per-frame metadata (a configured attribute missing
  from a frame is NaN, counted ``pva_attribute_missing``).

Robustness, all counted (``counters()``, shown by ``ringstream status``) and logged (the first of each kind at once,
then at most one summary line per :data:`~.live_queue.LOG_EVERY_S`):

- ``uniqueId`` jumping forward by k+1: a gap of k frames the detector sent and we never got (``pva_gaps`` += 1,
  ``pva_missed`` += k); going back: a new acquisition (``pva_resets``); repeating: the same update again after a
  reconnect (``pva_duplicates``, not integrated twice);
- the channel going away and coming back (IOC restart): pvapy resubscribes by itself; each transition is a log line
  and ``pva_connected`` / ``pva_connects`` / ``pva_disconnects``; the source never ends for it;
- a frame whose shape differs from the detector's (``dropped_wrong_shape``), whose pixel type differs from
  ``[source] pva_dtype`` (``dropped_wrong_dtype``), that cannot be decoded (``dropped_decode_error``) or has no
  image (``pva_empty``; the first update of a fresh IOC) is rejected with its reason;
- no free ring slot within :data:`RING_WAIT_S`: the frame is dropped (``dropped_ring_full``): a live stream cannot
  be paused; the wait lets pvapy's queues absorb a short stall first. Overruns pvapy reports (its monitor queue
  overflowed: updates lost before they reached us) are ``pva_overruns``.

The ring slot size: the detector's pixels times the size of ``pva_dtype`` (8 bytes when any type is accepted),
plus the worst case of LZ4 (``protocol.compressed_bound``).

Counters (all ints): ``pva_updates`` monitor updates seen; ``pva_received`` of them with an image and a new
uniqueId (accepted or rejected after); ``pva_gaps`` / ``pva_missed`` / ``pva_resets`` / ``pva_duplicates`` as above;
``pva_overruns``; ``pva_connected`` (0/1), ``pva_connects``, ``pva_disconnects``; ``pva_empty``;
``pva_attribute_missing``; ``dropped_ring_full``, ``dropped_wrong_shape``, ``dropped_wrong_dtype``,
``dropped_decode_error`` (these four join the daemon's "dropped" total and its final line).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..images.frame_codecs import framing_of
from .live_queue import QueuedLiveSource, RateLimitedLog
from .ntnd_codecs import CodecError, decode_into
from .source_base import SourceFrame

log = logging.getLogger("ringstream.ingest.pva")

#: NTNDArray union member -> pixel type
UNION_DTYPES: dict[str, np.dtype] = {
    "ubyteValue": np.dtype("uint8"), "byteValue": np.dtype("int8"),
    "ushortValue": np.dtype("uint16"), "shortValue": np.dtype("int16"),
    "uintValue": np.dtype("uint32"), "intValue": np.dtype("int32"),
    "ulongValue": np.dtype("uint64"), "longValue": np.dtype("int64"),
    "floatValue": np.dtype("float32"), "doubleValue": np.dtype("float64"),
}

#: pvData ScalarType numbers (pvaccess.BYTE … DOUBLE), as ``codec.parameters`` gives the original type
SCALAR_TYPE_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("int8"), 2: np.dtype("int16"), 3: np.dtype("int32"), 4: np.dtype("int64"),
    5: np.dtype("uint8"), 6: np.dtype("uint16"), 7: np.dtype("uint32"), 8: np.dtype("uint64"),
    9: np.dtype("float32"), 10: np.dtype("float64"),
}

#: NTNDArray codecs whose frames travel to the workers compressed (the others are decoded here, into the slot)
KEPT_COMPRESSED = ("bslz4", "lz4", "lz4hdf5")

#: how long the monitor callback waits for a free ring slot before it drops the frame, in s
RING_WAIT_S = 0.25

#: pvapy's overrun counter is read at most this often (counters() is called for every heartbeat attempt), in s
OVERRUN_POLL_S = 0.25

#: the EPICS address variables a loopback or single-subnet setup sets (README "EPICS PVA")
EPICS_ADDRESS_VARIABLES = (
    "EPICS_PVA_ADDR_LIST", "EPICS_PVA_AUTO_ADDR_LIST", "EPICS_PVA_SERVER_PORT", "EPICS_PVA_BROADCAST_PORT",
    "EPICS_PVAS_INTF_ADDR_LIST", "EPICS_PVAS_BEACON_ADDR_LIST", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST",
)

COUNTER_NAMES = (
    "pva_connected", "pva_connects", "pva_disconnects", "pva_updates", "pva_received", "pva_gaps", "pva_missed",
    "pva_resets", "pva_duplicates", "pva_overruns", "pva_empty", "pva_attribute_missing", "dropped_ring_full",
    "dropped_wrong_shape", "dropped_wrong_dtype", "dropped_decode_error",
)


class _Reject(Exception):
    """A frame the callback will not queue: ``counter`` names what is counted, the message says why."""

    def __init__(self, counter: str, message: str) -> None:
        super().__init__(message)
        self.counter = counter


def apply_pva_address(pva_ip: str, environ: dict | None = None) -> None:
    """``[source] pva_ip`` (host or host:port list): search only there (``EPICS_PVA_ADDR_LIST``, auto list off).
    Called in the ingest process before pvaccess is imported; "" leaves the EPICS variables as they are."""
    env = os.environ if environ is None else environ
    if pva_ip.strip():
        env["EPICS_PVA_ADDR_LIST"] = " ".join(pva_ip.replace(",", " ").split())
        env["EPICS_PVA_AUTO_ADDR_LIST"] = "NO"


def attribute_value(attr: Any) -> Any:
    """The scalar value of one NTAttribute as pvapy gives it (``{'value': x}`` in a variant union), or None."""
    v = attr.get("value") if isinstance(attr, dict) else None
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    while isinstance(v, dict):  # the variant union: {'value': x} or {'<member>': x}
        v = next(iter(v.values()), None) if v else None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, float, str, np.integer, np.floating)):
        return v.item() if isinstance(v, np.generic) else v
    return None


class PvaSource(QueuedLiveSource):
    """Frames from an NTNDArray PVA channel (see the module docstring). ``shape``: the detector's
    ``(NrPixelsZ, NrPixelsY)``; ``dtype``: the expected pixel type, or None for any (the ring is then sized for
    8-byte pixels); ``attributes``: NDAttribute names to keep (``("*",)``: all scalar ones)."""

    pausable = False
    resumable = False  # live: after an ingest restart it goes on with its new frames
    keeps_compressed = True  # bslz4 / lz4 frames go to the workers as they came

    def __init__(self, channel: str, shape: tuple[int, int], dtype: Any = None, queue_size: int = 16,
                 attributes: Sequence[str] = (), n_frames: int = 0) -> None:
        if not channel:
            raise ConfigError("[source] pva_channel: the PVA source needs a channel name (e.g. 13SIM1:Pva1:Image)")
        super().__init__(COUNTER_NAMES, n_frames)
        self.channel_name = str(channel)
        self.name = f"pva:{self.channel_name}"
        self.shape = (int(shape[0]), int(shape[1]))
        self.expected_dtype = np.dtype(dtype) if dtype else None
        self.dtype = self.expected_dtype if self.expected_dtype is not None else np.dtype("float64")
        self.queue_size = max(1, int(queue_size))
        self.attributes = tuple(str(a) for a in attributes)
        self.request = f"record[queueSize={self.queue_size}]field()"
        self._channel = None
        self._last_id: int | None = None
        self._restarted = ""  # set when uniqueId went back: the reason the next accepted frame starts a run
        self._reconnected = False  # set at a reconnect, until the next frame: a jump in uniqueId is logged as across it
        self._overrun_base = 0  # overruns pvapy counted before its counters were last reset
        self._overrun_polled = 0.0
        self._logs = RateLimitedLog(log)
        self._closed = False

    @classmethod
    def from_config(cls, config, params) -> PvaSource:
        s = config.source
        apply_pva_address(s.pva_ip)  # before pvaccess reads the EPICS variables
        try:
            import pvaccess  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"[source] kind = 'pva': pvapy is not importable ({exc}); install it with "
                              "pip install 'ringstream[pva]'") from None
        return cls(s.pva_channel, (int(params.NrPixelsZ), int(params.NrPixelsY)), dtype=s.pva_dtype or None,
                   queue_size=int(s.pva_queue_size), attributes=tuple(s.pva_attributes), n_frames=int(s.frames))

    # ---------------------------------------------------------------------------------------------- interface
    # attach_ring, counters (``pva_*`` and ``dropped_*``) and frames (subscribe, yield the frames the callback
    # queued, unsubscribe): QueuedLiveSource
    def start_receiving(self) -> None:
        self.subscribe()

    def stop_receiving(self) -> None:
        self.unsubscribe()

    def on_idle(self) -> None:
        self._poll_overruns()

    def refresh_counters(self) -> None:
        self._poll_overruns()

    def close(self) -> None:
        """Stop the monitor and give back the slots of frames never yielded."""
        self.unsubscribe()
        self._closed = True

    # ----------------------------------------------------------------------------------------------- channel
    def subscribe(self) -> None:
        import pvaccess as pva

        if self._channel is not None:
            return
        ch = pva.Channel(self.channel_name, pva.PVA)
        log.info("monitoring PVA channel %s (request %s, detector %s, pixel type %s, attributes %s)",
                 self.channel_name, self.request, self.shape,
                 self.expected_dtype or "any", ", ".join(self.attributes) or "none")
        ch.monitor(self.on_update, self.request)
        # The connection callback is set only once monitor() has returned: the ingest aborted inside monitor()
        # ("PyThreadState_Get: ... the GIL is released") when the callback ran on pvapy's thread at that moment
        # (seen under load in test runs; not reproduced on demand). A connection made meanwhile is read here.
        ch.setConnectionCallback(self.on_connection)
        self._channel = ch
        if ch.isConnected():
            self.on_connection(True)

    def unsubscribe(self) -> None:
        ch, self._channel = self._channel, None
        if ch is not None:
            self._poll_overruns(ch, force=True)
            try:
                ch.stopMonitor()
            except Exception as exc:  # stopping a monitor of a channel that never connected
                log.debug("stopMonitor: %s", exc)
        self.release_queued()

    def on_connection(self, connected: bool) -> None:
        """pvapy's connection callback: log and count each transition."""
        with self._lock:
            was = self._counters["pva_connected"]
            self._counters["pva_connected"] = int(bool(connected))
            if connected and not was:
                self._counters["pva_connects"] += 1
                self._reconnected = self._counters["pva_connects"] > 1
            elif was and not connected:
                self._counters["pva_disconnects"] += 1
        if connected and not was:
            log.info("PVA channel %s connected%s", self.channel_name,
                     " again; monitor resumed" if self._counters["pva_connects"] > 1 else "")
        elif was and not connected:
            log.warning("PVA channel %s disconnected (IOC stopped or network lost); waiting for it to come back",
                        self.channel_name)

    def _poll_overruns(self, ch=None, force: bool = False) -> None:
        ch = ch or self._channel
        now = time.monotonic()
        if ch is None or (not force and now - self._overrun_polled < OVERRUN_POLL_S):
            return
        self._overrun_polled = now
        try:
            n = int(ch.getMonitorCounters().get("nOverruns", 0))
        except Exception:  # the channel is being torn down
            return
        with self._lock:
            before = self._counters["pva_overruns"]
            self._counters["pva_overruns"] = max(before, self._overrun_base + n)
            new = self._counters["pva_overruns"] - before
        if new:
            self._logs.warning("overrun", f"PVA channel {self.channel_name}: pvapy reports {new} monitor "
                                          f"overrun(s) (updates lost before they reached us; "
                                          f"{self._counters['pva_overruns']} in all)")

    # ---------------------------------------------------------------------------------------------- callback
    def on_update(self, pv) -> None:
        """The monitor callback (pvapy's thread): take one NTNDArray update; never raises."""
        try:
            self.count("pva_updates")
            frame = self.take(pv)
        except _Reject as rej:
            self.count(rej.counter)
            if rej.counter != "pva_empty":
                self._logs.warning(rej.counter, f"PVA channel {self.channel_name}: {rej}")
            return
        except Exception as exc:  # a malformed structure: must not kill pvapy's thread
            self.count("dropped_decode_error")
            self._logs.warning("malformed", f"PVA channel {self.channel_name}: unreadable update "
                                            f"({type(exc).__name__}: {exc}); dropped")
            return
        if frame is not None:
            self.queue_frame(frame)

    def take(self, pv) -> SourceFrame | None:
        """One update -> a SourceFrame in a leased slot, None (a duplicate), or :class:`_Reject`."""
        member = pv.getSelectedUnionFieldName()
        if not member:
            raise _Reject("pva_empty", "update without an image")
        uid = int(pv["uniqueId"])
        where = f"frame uniqueId {uid}"
        if not self.track_id(uid):
            return None
        self.count("pva_received")
        dims = [int(d["size"]) for d in pv["dimension"]]
        if len(dims) != 2:
            raise _Reject("dropped_wrong_shape", f"{where}: {len(dims)} dimensions {dims}, expected a 2-D "
                                                 f"mono image {self.shape[1]} x {self.shape[0]}; rejected")
        shape = (dims[1], dims[0])
        if shape != self.shape:
            raise _Reject("dropped_wrong_shape", f"{where}: shape {shape} (rows, cols) differs from the "
                                                 f"detector's (NrPixelsZ, NrPixelsY) = {self.shape}; rejected")
        codec = pv["codec"]
        codec_name = str(codec.get("name", "") or "") if isinstance(codec, dict) else ""
        if codec_name:
            dtype = self._codec_dtype(codec, where)
        else:
            dtype = UNION_DTYPES.get(member)
            if dtype is None:
                raise _Reject("dropped_wrong_dtype", f"{where}: union member {member!r} is not an image type")
        if self.expected_dtype is not None and dtype != self.expected_dtype:
            raise _Reject("dropped_wrong_dtype", f"{where}: pixel type {dtype} differs from [source] pva_dtype "
                                                 f"{self.expected_dtype}; rejected")
        data = pv["value"][0][member]
        framing = None
        if codec_name in KEPT_COMPRESSED:
            payload = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
            raw_bytes = shape[0] * shape[1] * dtype.itemsize
            if int(pv["uncompressedSize"]) != raw_bytes:
                raise _Reject("dropped_decode_error", f"{where}: uncompressedSize {int(pv['uncompressedSize'])} "
                                                      f"bytes, the {shape} {dtype} frame has {raw_bytes}; dropped")
            try:
                framing = framing_of(codec_name, payload, raw_bytes)
            except CodecError as exc:
                raise _Reject("dropped_decode_error", f"{where}: {exc}; dropped") from None
            lease = self.wait_for_slot((1, payload.size), np.uint8, lambda: self._closed, timeout=RING_WAIT_S)
        else:
            lease = self.wait_for_slot(shape, dtype, lambda: self._closed, timeout=RING_WAIT_S)
        if lease is None:
            raise _Reject("dropped_ring_full", f"{where}: no free ring slot for {RING_WAIT_S:g} s (the pipeline "
                                               f"is slower than the detector); dropped")
        try:
            if framing is not None:  # kept compressed: the workers decode it
                np.copyto(lease.array.reshape(-1), payload, casting="no")
            elif codec_name:
                decode_into(codec_name, data, int(pv["uncompressedSize"]), lease.array)
            else:
                if data.size != lease.array.size:
                    raise CodecError(f"{data.size} pixels for a {shape[0]} x {shape[1]} image")
                np.copyto(lease.array.reshape(-1), data, casting="no")
        except CodecError as exc:
            self._alloc.release(lease)
            raise _Reject("dropped_decode_error", f"{where}: {exc}; dropped") from None
        except BaseException:
            self._alloc.release(lease)
            raise
        new_run, self._restarted = self._restarted, ""
        frame = SourceFrame(pixels=lease.array, source_id=str(uid), timestamp=self._timestamp(pv),
                            metadata=self._metadata(pv, where), lease=lease, new_run=new_run)
        if framing is not None:
            frame.pixels = lease.array.reshape(-1)
            frame.shape, frame.dtype = shape, dtype
            frame.codec, frame.codec_header, frame.codec_block = framing
        return frame

    def track_id(self, uid: int) -> bool:
        """Gap, reset and duplicate accounting of ``uniqueId``; False for a duplicate (drop it)."""
        last, self._last_id = self._last_id, uid
        across, self._reconnected = self._reconnected, False
        if last is None or uid == last + 1:
            return True
        if uid == last:
            self.count("pva_duplicates")
            log.info("PVA channel %s: uniqueId %d again (re-sent after a reconnect); skipped",
                     self.channel_name, uid)
            return False
        if uid > last:
            missed = uid - last - 1
            with self._lock:
                self._counters["pva_gaps"] += 1
                self._counters["pva_missed"] += missed
                total = self._counters["pva_missed"]
            if across:  # (a detector server that restarted and published before this connection looks the same;
                # its own kind of warning, never held back by the rate limit of the gaps before the disconnect)
                kind, text = "gap_across_reconnect", (f" across the reconnect: {missed} frame(s) published while not "
                                                      f"connected never arrived ({total} in all); the count did not "
                                                      f"go back, so this run goes on")
            else:
                kind, text = "gap", f": {missed} frame(s) sent by the detector never arrived ({total} in all)"
            self._logs.warning(kind, f"PVA channel {self.channel_name}: uniqueId {last} -> {uid}{text}")
            return True
        self.count("pva_resets")
        self._restarted = "acquisition restarted"  # the next frame accepted starts a new run
        log.info("PVA channel %s: uniqueId went back from %d to %d: a new acquisition", self.channel_name, last, uid)
        return True

    def _codec_dtype(self, codec: dict, where: str) -> np.dtype:
        params = codec.get("parameters")
        value = attribute_value({"value": params}) if params is not None else None
        dtype = SCALAR_TYPE_DTYPES.get(int(value)) if isinstance(value, (int, float)) else None
        if dtype is None:
            raise _Reject("dropped_decode_error", f"{where}: codec {codec.get('name')!r} without a known original "
                                                  f"pixel type in codec.parameters ({params!r}); dropped")
        return dtype

    @staticmethod
    def _timestamp(pv) -> float:
        ts = pv["timeStamp"]
        sec = int(ts.get("secondsPastEpoch", 0) or 0)
        return sec + int(ts.get("nanoseconds", 0) or 0) * 1e-9 if sec > 0 else time.time()

    def _metadata(self, pv, where: str) -> dict[str, Any]:
        if not self.attributes:
            return {}
        found: dict[str, Any] = {}
        for attr in pv["attribute"] if pv.hasField("attribute") else ():
            name = str(attr.get("name", ""))
            if name and ("*" in self.attributes or name in self.attributes):
                value = attribute_value(attr)
                if value is not None:
                    found[name] = value
        for name in self.attributes:
            if name != "*" and name not in found:
                found[name] = math.nan
                self.count("pva_attribute_missing")
                self._logs.warning("attribute", f"PVA channel {self.channel_name}: {where} has no NDAttribute "
                                                f"{name!r} (kept as NaN)")
        return found

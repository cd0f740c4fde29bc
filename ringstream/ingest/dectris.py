"""The DECTRIS Stream V2 source: EIGER2 / PILATUS4 series read from the detector's ZeroMQ PUSH socket
(``[source] kind = "dectris"``, ``ringstream run --dectris-stream tcp://DCU:31001``).

A receiving thread holds a ZeroMQ PULL socket connected to ``[source] dectris_stream`` (ZeroMQ reconnects by
itself; a socket monitor logs and counts each connection and disconnection) and decodes each message
(:mod:`.stream_v2`):

- ``start``: a series opens; the next image accepted starts a new run (:mod:`.runs`; one set of output files per
  series, reason ``series N``), whose RunStart carries the series' fields (``series_id``, ``number_of_images``,
  ``beam_center_x/y`` ...: the index of runs, ``{attr[series_id]}`` in the output template). Geometry that
  disagrees with the parameter file (beam centre vs ``BC``, distance vs ``Lsd``, wavelength vs ``Wavelength``,
  image size vs ``NrPixelsY/Z``) is warned about once (again only when it disagrees differently). ``[source]
  dectris_pixel_mask``: the integrated channel's ``pixel_mask`` is stored by content (the daemon's mask store,
  :mod:`ringstream.geometry.mask_store`) and named in every frame of the series (``MASK_KEY``) and in its run's
  metadata: the workers integrate the series with the parameter file's masks and the pixels the detector flags
  (counted: ``dectris_masked_pixels``); a series without a mask, or with another, switches back or over;
- ``image``: the channel ``[source] dectris_channel`` ("" = the first) is taken. Its bytes, compressed (bslz4 /
  lz4 with their 12-byte header) or not, are copied once into a leased ring slot and travel as they came (the
  workers decode them). ``image_id`` is the source id; ``series_date + start_time`` the timestamp; the per-frame
  metadata holds ``series_id``, ``series_unique_id``, ``image_id``, ``real_time`` (s) and the series'
  :data:`FRAME_FIELDS` (``number_of_images``, ``image_size_x/y``, the geometry, ``count_time``, ``frame_time``), and
  ``user_data`` (``[source] dectris_user_data``: numbers and text kept, a map flattened to ``user_data_KEY``,
  anything else as JSON text);
- ``end``: the series' run ends at once (its files are closed); images the detector announced
  (``number_of_images``) and never sent are counted as missed.

An image whose series was never started (the service started mid-series, or its ``start`` was lost) is still
taken: it opens the series (``dectris_starts_missed``). ``image_id`` going forward by k+1 within a series is a gap
of k images (``dectris_gaps`` += 1, ``dectris_missed`` += k); an id already seen is dropped
(``dectris_duplicates``). A message that is not valid CBOR, of an unknown type, with an unknown tag or compression,
a column-major array, an image of the wrong shape or pixel type, or sizes that disagree with its data is rejected
with one logged line and counted (``dropped_*``); the series goes on.

Counters (ints): ``dectris_connected`` (0/1), ``dectris_connects``, ``dectris_disconnects``, ``dectris_messages``,
``dectris_series``, ``dectris_ends``, ``dectris_starts_missed``, ``dectris_ends_missed``, ``dectris_received``,
``dectris_gaps``, ``dectris_missed``, ``dectris_duplicates``, ``dectris_masked_pixels``, ``dropped_malformed``,
``dropped_unknown_type``, ``dropped_unsupported``, ``dropped_wrong_shape``, ``dropped_wrong_dtype``,
``dropped_ring_full``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from ..errors import ConfigError
from ..geometry.mask_store import flagged, remember_series, remembered_mask, save_mask, store_dir
from ..protocol import MASK_KEY
from .live_queue import QueuedLiveSource, RateLimitedLog
from .source_base import SourceFrame
from .stream_v2 import End, Image, Start, StreamV2Error, decode, decode_mask

log = logging.getLogger("ringstream.ingest.dectris")

#: how long the receiving thread waits for a message before it checks whether it should stop, in ms
POLL_MS = 50

#: the PULL socket's receive high-water mark, in messages (the detector's PUSH queue holds the rest)
RCVHWM = 64

#: how long the receiving thread waits for a free ring slot before it drops the image, in s (as PVA's)
RING_WAIT_S = 0.25

#: relative differences below which the detector's geometry agrees with the parameter file's
GEOMETRY_TOLERANCE = {"beam centre": 0.5, "distance": 1e-3, "wavelength": 1e-4}

COUNTER_NAMES = (
    "dectris_connected", "dectris_connects", "dectris_disconnects", "dectris_messages", "dectris_series",
    "dectris_ends", "dectris_starts_missed", "dectris_ends_missed", "dectris_received", "dectris_gaps",
    "dectris_missed", "dectris_duplicates", "dectris_masked_pixels", "dropped_malformed", "dropped_unknown_type",
    "dropped_unsupported", "dropped_wrong_shape", "dropped_wrong_dtype", "dropped_ring_full",
)

#: the start fields that go into every frame's metadata (numbers)
FRAME_FIELDS = ("number_of_images", "image_size_x", "image_size_y", "beam_center_x", "beam_center_y",
                "detector_distance", "incident_wavelength", "count_time", "frame_time")


class _Series:
    """The series being received: its start (None when it was missed) and the last image_id taken."""

    def __init__(self, series_id: int, unique_id: str, start: Start | None) -> None:
        self.series_id, self.unique_id, self.start = series_id, unique_id, start
        self.last_id: int | None = None
        self.new_run = f"series {series_id}" + ("" if start is not None else " (start missed)")
        self.meta: dict[str, Any] = dict(start.fields) if start is not None else {
            "series_id": series_id, "series_unique_id": unique_id}
        self.frame_meta = {"series_id": series_id, "series_unique_id": unique_id,
                           **{k: v for k, v in self.meta.items() if k in FRAME_FIELDS and isinstance(v, (int, float))}}

    def use_mask(self, digest: str) -> None:
        """The series is integrated with the stored pixel mask ``digest`` (its frames and its run name it)."""
        self.meta[MASK_KEY] = digest
        self.frame_meta[MASK_KEY] = digest

    def same(self, series_id: int, unique_id: str) -> bool:
        return series_id == self.series_id and (not unique_id or not self.unique_id or unique_id == self.unique_id)


class DectrisSource(QueuedLiveSource):
    """Images of a DECTRIS Stream V2 detector (see the module docstring). ``endpoint``: the detector's PUSH
    socket, ``tcp://HOST:31001``; ``shape``: the detector's ``(NrPixelsZ, NrPixelsY)``; ``params``: the parameter
    file (geometry and masks compared with the detector's), or None."""

    pausable = False
    resumable = False
    keeps_compressed = True
    def __init__(self, endpoint: str, shape: tuple[int, int], channel: str = "", user_data: bool = False,
                 pixel_mask: bool = False, params: Any = None, n_frames: int = 0, dtype: Any = None,
                 mask_store: Any = None) -> None:
        if not endpoint:
            raise ConfigError("[source] dectris_stream: the DECTRIS source needs the detector's endpoint, e.g. "
                              "tcp://10.0.0.5:31001")
        super().__init__(COUNTER_NAMES, n_frames)
        self.endpoint = str(endpoint)
        self.name = f"dectris:{self.endpoint}"
        self.shape = (int(shape[0]), int(shape[1]))
        self.expected_dtype = np.dtype(dtype).newbyteorder("<") if dtype else None
        # the ring's slots are sized for this: the expected pixel type, else the widest a detector sends
        self.dtype = self.expected_dtype if self.expected_dtype is not None else np.dtype("uint32")
        self.channel = str(channel)
        self.keep_user_data = bool(user_data)
        self.check_mask = bool(pixel_mask)
        self.mask_store = mask_store  # folder of the mask store (None: masks are counted, not applied)
        self.params = params
        self.series: _Series | None = None
        self.pending_end = False
        self._logs = RateLimitedLog(log)
        self._geometry_warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config, params) -> DectrisSource:
        from ..runs.state import state_dir_of
        from . import stream_v2

        if stream_v2.cbor2 is None:
            raise ConfigError("[source] kind = 'dectris': the Python package cbor2 is not importable; install it "
                              "with pip install cbor2 (a dependency of ringstream)")
        s = config.source
        return cls(s.dectris_stream, (int(params.NrPixelsZ), int(params.NrPixelsY)), channel=s.dectris_channel,
                   user_data=bool(s.dectris_user_data), pixel_mask=bool(s.dectris_pixel_mask), params=params,
                   n_frames=int(s.frames), dtype=s.dectris_dtype or None,
                   mask_store=store_dir(state_dir_of(config.run)) if s.dectris_pixel_mask else None)

    # ---------------------------------------------------------------------------------------------- interface
    def start_receiving(self) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="dectris-stream", daemon=True)
        self._thread.start()

    def stop_receiving(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.release_queued()

    def close(self) -> None:
        self.stop_receiving()

    # ------------------------------------------------------------------------------------------- the thread
    def _receive(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        log.info("DECTRIS Stream V2: PULL connected to %s (channel %s)", self.endpoint, self.channel or "the first")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._closed:
                events = dict(poller.poll(POLL_MS))
                if monitor in events:
                    self._on_monitor(monitor.recv_multipart())
                if sock in events:
                    self.on_message(sock.recv())  # bytes: cbor2 copies any other buffer into bytes first
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()

    def _on_monitor(self, parts: list[bytes]) -> None:
        event = int.from_bytes(parts[0][:2], "little")
        connected = event == zmq.EVENT_CONNECTED
        with self._lock:
            was = self._counters["dectris_connected"]
            self._counters["dectris_connected"] = int(connected)
            if connected and not was:
                self._counters["dectris_connects"] += 1
            elif was and not connected:
                self._counters["dectris_disconnects"] += 1
            n = self._counters["dectris_connects"]
        if connected and not was:
            log.info("DECTRIS detector at %s connected%s", self.endpoint, " again" if n > 1 else "")
        elif was and not connected:
            log.warning("DECTRIS detector at %s disconnected; waiting for it to come back", self.endpoint)

    # ------------------------------------------------------------------------------------------ messages
    def on_message(self, buf: Any) -> None:
        """One message from the detector (the receiving thread); never raises."""
        self.count("dectris_messages")
        try:
            msg = decode(buf, self.channel)
            if isinstance(msg, Image):
                frame = self.take(msg)
                if frame is not None:
                    self.queue_frame(frame)
            elif isinstance(msg, Start):
                self.on_start(msg)
            elif isinstance(msg, End):
                self.on_end(msg)
        except StreamV2Error as exc:
            self.count(f"dropped_{exc.counter}")
            self._logs.warning(exc.counter, f"DECTRIS stream {self.endpoint}: {exc}; rejected")
        except Exception as exc:  # a bug here must not end the receiving thread
            self.count("dropped_malformed")
            self._logs.warning("error", f"DECTRIS stream {self.endpoint}: cannot take a message "
                                        f"({type(exc).__name__}: {exc}); rejected")

    def on_start(self, msg: Start) -> None:
        if self.series is not None and not self.pending_end:
            self.count("dectris_ends_missed")
            log.warning("DECTRIS series %d: a start for series %d came before its end; it ends here",
                        self.series.series_id, msg.series_id)
        self.count("dectris_series")
        self.series = _Series(msg.series_id, msg.series_unique_id, msg)
        self.pending_end = False
        f = msg.fields
        log.info("DECTRIS series %d (%s) starts: %s images of %s x %s, channels %s", msg.series_id,
                 msg.series_unique_id, f.get("number_of_images", "?"), f.get("image_size_y", "?"),
                 f.get("image_size_x", "?"), ", ".join(msg.channels) or "?")
        if self.channel and msg.channels and self.channel not in msg.channels:
            log.warning("DECTRIS series %d: channel %r is not among its channels (%s)", msg.series_id,
                        self.channel, ", ".join(msg.channels))
        self.check_geometry(msg)
        if self.check_mask:
            self.check_pixel_mask(msg)

    def on_end(self, msg: End) -> None:
        s = self.series
        self.count("dectris_ends")
        if s is None or not s.same(msg.series_id, msg.series_unique_id):
            log.info("DECTRIS series %d ends (none of its images was taken)", msg.series_id)
            return
        total = s.meta.get("number_of_images")
        if isinstance(total, int) and s.start is not None:
            taken_up_to = -1 if s.last_id is None else s.last_id
            missed = total - 1 - taken_up_to
            if missed > 0:
                self._gap(missed, f"series {s.series_id}: its last {missed} image(s) of {total} never arrived")
        log.info("DECTRIS series %d ends", s.series_id)
        self.pending_end = True
        self.queue_frame(SourceFrame(pixels=None, source_id="", timestamp=0.0, end_run=f"series {s.series_id} end"))

    def take(self, msg: Image) -> SourceFrame | None:
        """An image message -> a SourceFrame in a leased slot, None (a duplicate), or StreamV2Error."""
        where = f"series {msg.series_id} image {msg.image_id}"
        if msg.shape != self.shape:
            raise StreamV2Error("wrong_shape", f"{where}: shape {msg.shape} (rows, cols) differs from the "
                                               f"detector's (NrPixelsZ, NrPixelsY) = {self.shape}")
        if self.expected_dtype is not None and msg.dtype != self.expected_dtype:
            raise StreamV2Error("wrong_dtype", f"{where}: pixel type {msg.dtype.name} differs from [source] "
                                               f"dectris_dtype {self.expected_dtype.name}")
        s = self.series
        if s is None or not s.same(msg.series_id, msg.series_unique_id) or self.pending_end:
            if s is not None and not self.pending_end:
                self.count("dectris_ends_missed")
            self.count("dectris_starts_missed")
            log.warning("DECTRIS %s: its series' start was not received; taking its images as they come", where)
            s = self.series = _Series(msg.series_id, msg.series_unique_id, None)
            self.pending_end = False
            self.resume_mask(s)
        if not self.track_id(s, msg.image_id):
            return None
        self.count("dectris_received")
        payload = np.frombuffer(msg.payload, np.uint8)
        if msg.codec == "none":
            lease = self.wait_for_slot(msg.shape, msg.dtype, lambda: self._closed, timeout=RING_WAIT_S)
        else:
            lease = self.wait_for_slot((1, payload.size), np.uint8, lambda: self._closed, timeout=RING_WAIT_S)
        if lease is None:
            self.count("dropped_ring_full")
            self._logs.warning("ring_full", f"DECTRIS {where}: no free ring slot for {RING_WAIT_S:g} s (the "
                                            "pipeline is slower than the detector); dropped")
            return None
        np.copyto(lease.array.reshape(-1).view(np.uint8), payload, casting="no")
        new_run, s.new_run = s.new_run, ""
        frame = SourceFrame(pixels=lease.array, source_id=str(msg.image_id),
                            timestamp=msg.timestamp if msg.timestamp is not None else time.time(),
                            metadata=self.frame_metadata(s, msg), lease=lease, new_run=new_run,
                            run_meta=dict(s.meta) if new_run else {})
        if msg.codec != "none":
            frame.pixels = lease.array.reshape(-1)
            frame.shape, frame.dtype = msg.shape, msg.dtype
            frame.codec, frame.codec_header, frame.codec_block = msg.codec, 12, msg.block
        return frame

    def track_id(self, s: _Series, image_id: int) -> bool:
        """Gap and duplicate accounting of ``image_id`` within a series; False: drop it (already taken)."""
        last = s.last_id
        if last is not None and image_id <= last:
            self.count("dectris_duplicates")
            self._logs.warning("duplicate", f"DECTRIS series {s.series_id}: image {image_id} after image {last} "
                                            "(already taken or out of order); dropped")
            return False
        s.last_id = image_id
        first = 0 if s.start is not None else None
        expected = last + 1 if last is not None else first
        if expected is not None and image_id > expected:
            self._gap(image_id - expected, f"series {s.series_id}: image_id {expected if last is None else last} -> "
                                           f"{image_id}: {image_id - expected} image(s) never arrived")
        return True

    def _gap(self, missed: int, message: str) -> None:
        with self._lock:
            self._counters["dectris_gaps"] += 1
            self._counters["dectris_missed"] += missed
            total = self._counters["dectris_missed"]
        self._logs.warning("gap", f"DECTRIS {message} ({total} in all)")

    def frame_metadata(self, s: _Series, msg: Image) -> dict[str, Any]:
        meta: dict[str, Any] = {**s.frame_meta, "image_id": msg.image_id}
        if msg.real_time is not None:
            meta["real_time"] = msg.real_time
        if self.keep_user_data and msg.user_data is not None:
            meta.update(flatten_user_data(msg.user_data))
        return meta

    # ------------------------------------------------------------------------------- geometry and mask
    def check_geometry(self, msg: Start) -> None:
        """Warn where the detector's geometry disagrees with the parameter file's (each disagreement once)."""
        p, f = self.params, msg.fields
        if p is None:
            return
        problems = []
        size = (f.get("image_size_y"), f.get("image_size_x"))
        if all(isinstance(v, int) for v in size) and size != self.shape:
            problems.append(f"image size {size[0]} x {size[1]} vs NrPixelsZ x NrPixelsY {self.shape}")
        bc = getattr(p, "BC", None)
        bcx, bcy = f.get("beam_center_x"), f.get("beam_center_y")
        if bc is not None and isinstance(bcx, (int, float)) and isinstance(bcy, (int, float)):
            if max(abs(bcx - float(bc[0])), abs(bcy - float(bc[1]))) > GEOMETRY_TOLERANCE["beam centre"]:
                problems.append(f"beam centre ({bcx:g}, {bcy:g}) px vs BC ({float(bc[0]):g}, {float(bc[1]):g})")
        dist, lsd = f.get("detector_distance"), getattr(p, "Lsd", None)
        if isinstance(dist, (int, float)) and lsd and _off(dist * 1e6, float(lsd), GEOMETRY_TOLERANCE["distance"]):
            problems.append(f"detector_distance {dist:g} m vs Lsd {float(lsd):g} um")
        wl, pwl = f.get("incident_wavelength"), getattr(p, "Wavelength", None)
        if isinstance(wl, (int, float)) and pwl and _off(wl, float(pwl), GEOMETRY_TOLERANCE["wavelength"]):
            problems.append(f"incident_wavelength {wl:g} A vs Wavelength {float(pwl):g} A")
        text = "; ".join(problems)
        if problems and text not in self._geometry_warned:  # once, not again for every series
            self._geometry_warned.add(text)
            log.warning("DECTRIS series %d: the detector's geometry disagrees with the parameter file (which is "
                        "used): %s", msg.series_id, text)

    def check_pixel_mask(self, msg: Start) -> None:
        """The integrated channel's pixel mask of a series start: stored by content in the mask store (for the
        workers, the writer and joined workers) and named in every frame of the series (``MASK_KEY``) and in its
        run's metadata, so the pixels it flags (:data:`~ringstream.geometry.mask_store.MASKED_BITS`) are left out
        of the series' integration. A start without a usable mask: the series is integrated with the parameter
        file's masks alone (warned)."""
        masks = msg.pixel_masks
        name = self.channel or (msg.channels[0] if msg.channels else next(iter(masks), ""))
        if name not in masks:
            log.warning("DECTRIS series %d: [source] dectris_pixel_mask, but its start has no pixel_mask for "
                        "channel %r (the detector's header_detail must be \"all\"); integrated with the parameter "
                        "file's masks alone", msg.series_id, name)
            return
        try:
            mask = decode_mask(masks[name], f"series {msg.series_id} pixel_mask {name}")
        except Exception as exc:
            log.warning("DECTRIS series %d: its pixel mask is unusable (%s); integrated with the parameter file's "
                        "masks alone", msg.series_id, exc)
            return
        if mask.shape != self.shape:
            log.warning("DECTRIS series %d: pixel mask of shape %s, the detector is %s; integrated with the "
                        "parameter file's masks alone", msg.series_id, mask.shape, self.shape)
            return
        n = int(flagged(mask).sum())
        with self._lock:
            self._counters["dectris_masked_pixels"] = n
        if self.mask_store is None:
            return
        try:
            digest = save_mask(self.mask_store, mask)
        except OSError as exc:
            log.warning("DECTRIS series %d: cannot store its pixel mask in %s (%s); integrated with the parameter "
                        "file's masks alone", msg.series_id, self.mask_store, exc)
            return
        assert self.series is not None
        self.series.use_mask(digest)
        try:  # a replacement ingest (this one killed mid-series) takes the rest of the series with the same mask
            remember_series(self.mask_store, msg.series_id, msg.series_unique_id, digest)
        except OSError as exc:
            log.warning("DECTRIS series %d: cannot record its mask in %s (%s)", msg.series_id, self.mask_store, exc)
        log.info("DECTRIS series %d: the detector flags %d pixels (mask %s); they are left out of its integration",
                 msg.series_id, n, digest[:12])


    def resume_mask(self, s: _Series) -> None:
        """A series whose start this ingest did not receive: the mask of the series the ingest before it started
        (killed and replaced mid-series), when it is this one."""
        digest = remembered_mask(self.mask_store, s.series_id, s.unique_id) if self.mask_store is not None else ""
        if digest:
            s.use_mask(digest)
            log.info("DECTRIS series %d: its start came before this ingest; integrated with the mask %s its start "
                     "gave", s.series_id, digest[:12])


def _off(a: float, b: float, rel: float) -> bool:
    return abs(a - b) > rel * max(abs(a), abs(b))


def plain(v: Any) -> Any:
    """``v`` with cbor2's immutable maps and tuples as dicts and lists (for JSON)."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def flatten_user_data(value: Any) -> dict[str, Any]:
    """``user_data`` as per-frame metadata: a number or text as ``user_data``, a map's numbers and texts as
    ``user_data_KEY`` (anything else in it as JSON text), any other value as JSON text."""
    def scalar(v: Any) -> Any:
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, (int, float, str)):
            return v
        return json.dumps(plain(v), default=str)

    if isinstance(value, Mapping):  # (identifiers: the numeric ones become HDF5 datasets of that name)
        return {"user_data_" + re.sub(r"\W", "_", str(k)): scalar(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {"user_data": json.dumps(plain(value), default=str)}
    return {"user_data": scalar(value)}


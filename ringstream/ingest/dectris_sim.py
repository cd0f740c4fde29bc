"""A DECTRIS Stream V2 detector simulator: ``ringstream dectris-sim`` (or ``python -m ringstream.ingest.dectris_sim``).

It binds a ZeroMQ PUSH socket, as the detector's DCU does (port 31001; 127.0.0.1 unless told), and sends series
after series of ``start``, ``image`` … ``image``, ``end`` messages (:mod:`.stream_v2`), the images compressed as the
detector compresses them (``--codec bslz4|lz4|none``, repeated: one per series in turn; uint8/16/32 pixels). Each distinct frame is encoded once,
so the simulator can feed a daemon at detector rates.

Frames: an ``.npy`` stack ``[n, rows, cols]`` or an HDF5 dataset (``--stack FILE [--dataset PATH]``), or built-in
rings on a detector of a given size (``--detector eiger2-4m|eiger2-16m|pilatus3-2m|ROWSxCOLS``, ``--dtype``).
Image ``i`` of series ``k`` (both from 0) is frame ``(k * images + i) % n`` of the stack.

Faults, for the tests and the demos: ``--drop ID`` never sends image ID (a gap); ``--bad KIND`` sends a bad message
before image ``--bad-at`` of each series (``garbage``: not CBOR; ``unknown-type``; ``column-major``: tag 1040;
``unknown-tag``: a typed array of an unregistered tag; ``unknown-compression``; ``wrong-shape``; ``wrong-dtype``:
float32 pixels; ``bad-size``: a bslz4 header announcing the wrong size); ``--no-start K`` / ``--no-end K`` leave
out series K's start or end; ``--disconnect-after K`` closes the socket after series K and binds again ``--down``
seconds later. ``--rate`` paces the images (Hz; 0: as fast as the receiver takes them), ``--pause`` waits between
series. A send blocks while no receiver is connected (as the detector's does), for at most ``--send-timeout`` s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, RingstreamError
from .stream_v2 import (
    IMAGE_TAGS,
    TAG_COLUMN_MAJOR,
    TAG_COMPRESSION,
    TAG_ROW_MAJOR,
    cbor2,
    dumps,
    encode_end,
    encode_image,
    encode_start,
    image_value,
)

#: built-in detectors: (rows, cols)
DETECTORS = {"eiger2-4m": (2162, 2068), "eiger2-16m": (4362, 4148), "pilatus3-2m": (1679, 1475),
             "eiger2-1m": (1062, 1028)}

BAD_KINDS = ("garbage", "unknown-type", "column-major", "unknown-tag", "unknown-compression", "wrong-shape",
             "wrong-dtype", "bad-size")


def ring_frames(shape: tuple[int, int], dtype: Any = "uint16", n: int = 4, seed: int = 0) -> np.ndarray:
    """``n`` Poisson realisations ``[n, rows, cols]`` of a few rings around the centre (built-in frames)."""
    rows, cols = shape
    z, y = np.mgrid[0:rows, 0:cols]
    r = np.hypot(z - rows / 2.0, y - cols / 2.0)
    rmax = max(r.max(), 1.0)
    mean = 5.0 + 10.0 * np.exp(-r / rmax)
    for f in (0.2, 0.35, 0.5, 0.7):
        mean += 60.0 * np.exp(-((r - f * rmax) ** 2) / (2.0 * (0.01 * rmax + 1.0) ** 2))
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.dtype(dtype))
    return np.stack([np.clip(rng.poisson(mean), 0, info.max).astype(dtype) for _ in range(n)])


def load_stack(path: str, dataset: str = "") -> np.ndarray:
    """An ``.npy`` stack or an HDF5 dataset (``dataset``; default /entry/data/data) as ``[n, rows, cols]``."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            arr = np.load(p, mmap_mode="r")
        else:
            import h5py

            with h5py.File(p, "r") as f:
                arr = f[dataset or "/entry/data/data"][()]
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"dectris-sim: {path}: cannot read its frames ({exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or np.dtype(arr.dtype).newbyteorder("<") not in IMAGE_TAGS:
        raise InputError(f"dectris-sim: {path}: expected [n, rows, cols] uint8/16/32 frames, got {arr.shape} "
                         f"{arr.dtype}")
    return arr


def bad_message(kind: str, series_id: int, unique_id: str, image_id: int, frame: np.ndarray) -> bytes:
    """A message of kind ``kind`` (BAD_KINDS) that the source must reject, about image ``image_id``."""
    head = {"type": "image", "series_id": series_id, "series_unique_id": unique_id, "image_id": image_id,
            "series_date": dt.datetime.now(dt.UTC)}
    tag = IMAGE_TAGS[np.dtype(frame.dtype).newbyteorder("<") if frame.dtype.itemsize > 1 else frame.dtype]
    raw = np.ascontiguousarray(frame).tobytes()
    if kind == "garbage":
        return b"\xff\x00 not a CBOR message"
    if kind == "unknown-type":
        return dumps({**head, "type": "status"})
    if kind == "column-major":
        data = cbor2.CBORTag(TAG_COLUMN_MAJOR, [list(frame.shape[::-1]), cbor2.CBORTag(tag, raw)])
    elif kind == "unknown-tag":
        data = cbor2.CBORTag(TAG_ROW_MAJOR, [list(frame.shape), cbor2.CBORTag(9999, raw)])
    elif kind == "unknown-compression":
        data = cbor2.CBORTag(TAG_ROW_MAJOR, [list(frame.shape), cbor2.CBORTag(
            tag, cbor2.CBORTag(TAG_COMPRESSION, ["zstd", 0, raw]))])
    elif kind == "wrong-shape":
        data = image_value(np.ascontiguousarray(frame[:-1]), "bslz4")
    elif kind == "wrong-dtype":
        data = cbor2.CBORTag(TAG_ROW_MAJOR, [list(frame.shape), cbor2.CBORTag(85, frame.astype("<f4").tobytes())])
    elif kind == "bad-size":
        good = image_value(frame, "bslz4")
        comp = good.value[1].value
        body = comp.value[2]
        lie = (len(raw) + 8).to_bytes(8, "big") + body[8:]
        data = cbor2.CBORTag(TAG_ROW_MAJOR, [list(frame.shape), cbor2.CBORTag(
            good.value[1].tag, cbor2.CBORTag(TAG_COMPRESSION, [comp.value[0], comp.value[1], lie]))])
    else:
        raise ValueError(f"bad message kind {kind!r}: expected one of {', '.join(BAD_KINDS)}")
    return dumps({**head, "data": {"threshold_1": data}})


#: the time base of the rationals (Hz), as the detector's
TIME_BASE = 100_000_000

#: values encoded as 9-byte CBOR integers in a message template, then overwritten per image (image_id, start_time
#: and stop_time numerators): each distinct frame is serialised once, not once per image
_SENTINELS = (0xFEEDFACECAFE0001, 0xFEEDFACECAFE0002, 0xFEEDFACECAFE0003)


class _Template:
    """An image message with its image_id and start/stop times at fixed places (9-byte CBOR integers: valid, not
    the shortest form), filled in per image."""

    def __init__(self, message: bytes) -> None:
        self.buf = bytearray(message)
        self.at = []
        for value in _SENTINELS:
            pos = self.buf.find(b"\x1b" + value.to_bytes(8, "big"))
            if pos < 0:
                raise AssertionError("message template without its sentinel")
            self.at.append(pos + 1)

    def message(self, *values: int) -> bytearray:
        for pos, v in zip(self.at, values, strict=True):
            self.buf[pos:pos + 8] = int(v).to_bytes(8, "big")
        return self.buf


class Simulator:
    """Serves ``frames`` ``[n, rows, cols]`` as Stream V2 series on ``endpoint`` (see the module docstring)."""

    def __init__(self, endpoint: str, frames: np.ndarray, *, codec: str | Sequence[str] = "bslz4", images: int = 10,
                 series: int = 1, first_series_id: int = 1, rate: float = 0.0, pause: float = 0.0,
                 drop: Sequence[int] = (), bad: Sequence[str] = (), bad_at: int = 1, no_start: Sequence[int] = (),
                 no_end: Sequence[int] = (), disconnect_after: Sequence[int] = (), down: float = 1.0,
                 channels: Sequence[str] = ("threshold_1",), user_data: Any = None, start_fields: dict | None = None,
                 pixel_mask: np.ndarray | None = None, send_timeout: float = 60.0, log=None) -> None:
        self.endpoint, self.frames = endpoint, frames
        self.codecs = [codec] if isinstance(codec, str) else list(codec)  # series k: codecs[k % len]
        self.images, self.series, self.first_series_id = int(images), int(series), int(first_series_id)
        self.rate, self.pause = float(rate), float(pause)
        self.drop, self.bad, self.bad_at = set(drop), list(bad), int(bad_at)
        self.no_start, self.no_end, self.disconnect_after = set(no_start), set(no_end), set(disconnect_after)
        self.down, self.channels, self.user_data = float(down), tuple(channels), user_data
        self.start_fields = dict(start_fields or {})
        self.pixel_mask = pixel_mask
        self.send_timeout = float(send_timeout)
        self.log = log or (lambda line: print(line, flush=True))
        self._encoded: dict[tuple[int, str], Any] = {}
        self.sent = 0

    def value(self, k: int, codec: str) -> Any:
        """Frame ``k`` of the stack, encoded with ``codec`` once."""
        key = (k % len(self.frames), codec)
        if key not in self._encoded:
            self._encoded[key] = image_value(np.asarray(self.frames[key[0]]), codec)
        return self._encoded[key]

    def run(self) -> int:
        import zmq

        for k in range(min(len(self.frames), self.series * self.images)):  # compressed before the first send
            self.value(k, self.codecs[(k // self.images) % len(self.codecs)])
        ctx = zmq.Context()
        sock = self._bind(ctx)
        shape = tuple(int(n) for n in self.frames.shape[1:])
        try:
            for k in range(self.series):
                number = k + 1
                sid = self.first_series_id + k
                uid = f"sim-{sid}-{time.time_ns()}"
                codec = self.codecs[k % len(self.codecs)]
                if number not in self.no_start:
                    self._send(sock, encode_start(sid, uid, self.images, shape, self.channels, self.pixel_mask,
                                                  **self.start_fields))
                date = dt.datetime.now(dt.UTC)
                templates: dict = {}
                t0 = time.monotonic()
                for i in range(self.images):
                    if self.rate > 0:
                        time.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
                    frame_k = k * self.images + i
                    if i == self.bad_at:
                        for kind in self.bad:
                            self._send(sock, bad_message(kind, sid, uid, i, np.asarray(self.frames[frame_k %
                                                                                                   len(self.frames)])))
                    if i in self.drop:
                        continue
                    template = self.template(frame_k, codec, sid, uid, date, templates)
                    sock.send(template.message(i, i * TIME_BASE // 1000, (i * 1000 + 900) * TIME_BASE // 1_000_000),
                              copy=True)  # (copied by ZeroMQ, so the template is patched again at once)
                    self.sent += 1
                if number not in self.no_end:
                    self._send(sock, encode_end(sid, uid))
                self.log(f"series {sid} sent ({self.images - len(self.drop & set(range(self.images)))} images, "
                         f"{codec})")
                if number in self.disconnect_after:
                    sock.close(linger=int(self.send_timeout * 1000))
                    self.log(f"disconnected for {self.down:g} s")
                    time.sleep(self.down)
                    sock = self._bind(ctx)
                if self.pause and number < self.series:
                    time.sleep(self.pause)
        except zmq.Again:
            self.log(f"dectris-sim: no receiver took a message for {self.send_timeout:g} s; giving up")
            return 1
        finally:
            sock.close(linger=int(self.send_timeout * 1000))
            ctx.term()
        self.log(f"done: {self.sent} images")
        return 0

    def _bind(self, ctx):
        import zmq

        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
        sock.setsockopt(zmq.SNDHWM, 64)
        for attempt in range(50):  # the port of a socket just closed may take a moment to be free again
            try:
                sock.bind(self.endpoint)
                break
            except zmq.ZMQError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self.log(f"bound {self.endpoint}")
        return sock

    def template(self, k: int, codec: str, sid: int, uid: str, date, cache: dict) -> _Template:
        """The image message of frame ``k`` in series ``sid`` with its image_id and times to fill in."""
        key = (k % len(self.frames), codec)
        if key not in cache:
            cache[key] = _Template(encode_image(
                sid, uid, _SENTINELS[0], {c: self.value(k, codec) for c in self.channels}, codec,
                series_date=date, time_base=TIME_BASE, user_data=self.user_data,
                times=(_SENTINELS[1], _SENTINELS[2], 9 * TIME_BASE // 10_000)))
        return cache[key]

    @staticmethod
    def _send(sock, message: bytes) -> None:
        sock.send(message, copy=False)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="ringstream dectris-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default="tcp://127.0.0.1:31001", metavar="ENDPOINT",
                   help="where the PUSH socket binds (default tcp://127.0.0.1:31001)")
    p.add_argument("--stack", metavar="FILE", help="frames: an .npy stack [n, rows, cols] or an HDF5 file")
    p.add_argument("--dataset", default="", metavar="PATH", help="the HDF5 dataset (default /entry/data/data)")
    p.add_argument("--detector", default="eiger2-4m", metavar="NAME",
                   help=f"built-in ring frames: {', '.join(DETECTORS)} or ROWSxCOLS (default eiger2-4m)")
    p.add_argument("--dtype", default="uint16", choices=("uint8", "uint16", "uint32"), help="built-in frames' type")
    p.add_argument("--distinct", type=int, default=4, metavar="N", help="built-in frames: distinct ones (4)")
    p.add_argument("--codec", action="append", default=[], choices=("bslz4", "lz4", "none"),
                   help="compression (default bslz4); repeated: series k uses the k-th, in turn")
    p.add_argument("--images", type=int, default=10, metavar="N", help="images per series")
    p.add_argument("--series", type=int, default=1, metavar="K", help="series to send")
    p.add_argument("--series-id", type=int, default=1, metavar="N", help="the first series' series_id")
    p.add_argument("--rate", type=float, default=0.0, metavar="HZ", help="images per second (0 = max)")
    p.add_argument("--pause", type=float, default=0.0, metavar="S", help="seconds between series")
    p.add_argument("--drop", type=int, action="append", default=[], metavar="ID", help="never send image ID")
    p.add_argument("--bad", action="append", default=[], choices=BAD_KINDS, help="send a bad message of this kind")
    p.add_argument("--bad-at", type=int, default=1, metavar="ID", help="the bad messages go before image ID")
    p.add_argument("--no-start", type=int, action="append", default=[], metavar="K", help="series K has no start")
    p.add_argument("--no-end", type=int, action="append", default=[], metavar="K", help="series K has no end")
    p.add_argument("--disconnect-after", type=int, action="append", default=[], metavar="K",
                   help="close the socket after series K, bind again after --down s")
    p.add_argument("--down", type=float, default=1.0, metavar="S")
    p.add_argument("--channel", action="append", default=[], metavar="NAME", help="channels (default threshold_1)")
    p.add_argument("--user-data", default=None, metavar="JSON", help="user_data of every image (JSON)")
    p.add_argument("--start-field", action="append", default=[], metavar="KEY=VALUE",
                   help="a start field, e.g. beam_center_x=1034.5 (a number when it parses as one)")
    p.add_argument("--pixel-mask", action="store_true", help="send a pixel mask (every 97th pixel flagged)")
    p.add_argument("--send-timeout", type=float, default=60.0, metavar="S")
    return p


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run_from_args(a: argparse.Namespace) -> int:
    import json

    if cbor2 is None:
        raise ConfigError("dectris-sim: the Python package cbor2 is needed: pip install cbor2")

    if a.stack:
        frames = load_stack(a.stack, a.dataset)
    else:
        shape = DETECTORS.get(a.detector)
        if shape is None:
            try:
                rows, cols = (int(v) for v in a.detector.lower().split("x"))
            except ValueError:
                raise ConfigError(f"dectris-sim: --detector {a.detector!r}: expected one of "
                                  f"{', '.join(DETECTORS)} or ROWSxCOLS") from None
            shape = (rows, cols)
        frames = ring_frames(shape, a.dtype, n=max(1, a.distinct))
    mask = None
    if a.pixel_mask:
        mask = np.zeros(frames.shape[1:], np.uint32)
        mask.reshape(-1)[::97] = 1
    fields = {}
    for item in a.start_field:
        key, _, value = item.partition("=")
        fields[key] = _number(value)
    sim = Simulator(a.bind, frames, codec=a.codec or "bslz4", images=a.images, series=a.series, first_series_id=a.series_id,
                    rate=a.rate, pause=a.pause, drop=a.drop, bad=a.bad, bad_at=a.bad_at, no_start=a.no_start,
                    no_end=a.no_end, disconnect_after=a.disconnect_after, down=a.down,
                    channels=tuple(a.channel) or ("threshold_1",),
                    user_data=json.loads(a.user_data) if a.user_data else None, start_fields=fields,
                    pixel_mask=mask, send_timeout=a.send_timeout)
    return sim.run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ringstream.ingest.dectris_sim``: errors are one line, as ``ringstream dectris-sim``'s."""
    try:
        return run_from_args(build_parser().parse_args(argv))
    except RingstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())

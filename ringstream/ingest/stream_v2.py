"""DECTRIS Stream V2 messages (EIGER2, PILATUS4): CBOR bytes in, typed records out, and back (sans I/O).

The detector's DCU binds a ZeroMQ PUSH socket (port 31001) and sends one CBOR map per message (the public
``dectris/documentation`` repository: ``stream_v2/README.md``, ``cbor/dectris-compression-tag.md``), ``type``:

- ``start`` (arm): the series (``series_id``, ``series_unique_id``, ``number_of_images``, ``channels``), the
  geometry (``beam_center_x/y`` in px, ``detector_distance`` in m, ``incident_wavelength`` in Å), ``image_size_x/y``,
  ``count_time`` / ``frame_time`` in s, ``pixel_mask`` {channel: uint32 image} with ``header_detail = all``;
- ``image``: ``image_id``, ``series_id``, ``series_unique_id``, ``series_date`` (tag 0), ``start_time`` /
  ``stop_time`` / ``real_time`` as rationals ``[numerator, denominator]`` in s (relative to ``series_date``),
  ``data`` {channel: image}, ``user_data``;
- ``end`` (disarm): ``series_id``, ``series_unique_id``.

An image is ``tag 40 [[rows, cols], typed array]`` (RFC 8746, row-major; tag 1040, column-major, is rejected);
the typed array is one of tags 64–87 (RFC 8746 §2; the detector sends 64/68 uint8, 69 uint16 little-endian, 70
uint32 little-endian) over a byte string, or over the DECTRIS compression tag 56500 ``[algorithm, modifier, bytes]``
standing for one: ``["bslz4", element size, bytes]`` (the bitshuffle HDF5 filter's framing) or ``["lz4", 0,
bytes]`` (the HDF5 LZ4 filter's framing). Both framings start with the 12-byte header (big-endian uint64 decoded
size, big-endian uint32 block size in bytes), checked here against the image's shape and type; the bytes are kept
compressed (:attr:`Image.codec`, the workers decode them: :mod:`ringstream.images.frame_codecs`).

:func:`decode` never trusts a size: every length, shape, element size and header is compared with the data before
a record is returned; anything else raises :class:`StreamV2Error`, whose ``counter`` names what the source counts
(``malformed``, ``unknown_type``, ``unsupported``, ``wrong_shape``, ``wrong_dtype``) and whose message is one line.
:func:`encode_start`, :func:`encode_image` and :func:`encode_end` make the messages as the detector does (the
simulator, :mod:`.dectris_sim`, and the tests).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

try:
    import cbor2
except ImportError:  # a core dependency; without it only this source is unavailable (DectrisSource says so)
    cbor2 = None

from ..images.frame_codecs import HDF5_HEADER_BYTES, as_bytes_view, encode_frame

#: RFC 8746 typed-array tags -> dtype (76 is reserved; 83 and 87, binary128, have no portable numpy type)
TYPED_ARRAY_DTYPES: dict[int, np.dtype] = {tag: np.dtype(s) for tag, s in {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8"}.items()}

#: the pixel types a detector image may have, and the typed-array tag the detector uses for each
IMAGE_TAGS: dict[np.dtype, int] = {np.dtype("u1"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70}

TAG_SELF_DESCRIBE = 55799
TAG_ROW_MAJOR = 40
TAG_COLUMN_MAJOR = 1040
TAG_COMPRESSION = 56500
#: a tag of this module's own, standing for a byte string :func:`carve` took out of a message before cbor2 reads it
TAG_HOLE = 55801

#: byte strings of this many bytes or more are taken out before cbor2 decodes a message (see :func:`carve`)
BIG_BYTES = 1 << 16

#: at most this many CBOR items in one message (an image message has ~40; a start message's arrays are typed)
MAX_ITEMS = 100_000

_BYTES = (bytes, memoryview)

#: compression algorithms of tag 56500 (both framings carry the 12-byte HDF5-filter header)
ALGORITHMS = ("bslz4", "lz4")

#: the fields of ``start`` a series keeps (numbers and text), in the order they are logged
START_FIELDS = ("series_id", "series_unique_id", "number_of_images", "image_size_x", "image_size_y",
                "beam_center_x", "beam_center_y", "detector_distance", "incident_wavelength", "incident_energy",
                "count_time", "frame_time", "pixel_size_x", "pixel_size_y", "saturation_value",
                "detector_description", "detector_serial_number", "sensor_material", "sensor_thickness")


class StreamV2Error(ValueError):
    """A message that is not a valid Stream V2 message: ``counter`` says what kind of problem (module docstring)."""

    def __init__(self, counter: str, message: str) -> None:
        super().__init__(message)
        self.counter = counter


@dataclasses.dataclass(frozen=True)
class Compressed:
    """Tag 56500: ``data`` compressed with ``algorithm`` (``elem_size``: bitshuffle's element size)."""

    algorithm: str
    elem_size: int
    data: bytes | memoryview


@dataclasses.dataclass(frozen=True)
class TypedArray:
    """A typed array (tags 64–87): elements of ``dtype`` in ``payload`` (bytes, or :class:`Compressed`)."""

    tag: int
    dtype: np.dtype
    payload: bytes | memoryview | Compressed


@dataclasses.dataclass(frozen=True)
class MultiDimArray:
    """Tag 40: ``array`` as a row-major array of ``shape``."""

    shape: tuple[int, ...]
    array: Any


@dataclasses.dataclass(frozen=True)
class ColumnMajor:
    """Tag 1040 (a column-major array): kept to be rejected with its reason where it is used."""

    shape: Any


@dataclasses.dataclass
class Start:
    series_id: int
    series_unique_id: str
    fields: dict[str, Any]  # START_FIELDS present (numbers and text)
    channels: list[str]
    pixel_masks: dict[str, Any]  # channel -> MultiDimArray (or whatever came: checked where used)
    user_data: Any = None


@dataclasses.dataclass
class Image:
    """One channel of an image message: ``payload`` holds the pixels (``codec`` ``none``) or their compressed
    bytes (``bslz4`` / ``lz4``, with the 12-byte header, ``block`` bytes a block)."""

    image_id: int
    series_id: int
    series_unique_id: str
    channel: str
    shape: tuple[int, int]
    dtype: np.dtype
    codec: str
    block: int
    payload: bytes | memoryview
    timestamp: float | None  # s since the epoch: series_date + start_time, None when the message lacks either
    real_time: float | None
    user_data: Any = None


@dataclasses.dataclass
class End:
    series_id: int
    series_unique_id: str


def _tag_hook(holes: list[memoryview], *args: Any) -> Any:
    """cbor2's tag hook, for tags it has no decoder of its own for: ``(decoder, tag)`` in cbor2 5, ``(tag,
    immutable)`` in cbor2 6; ``holes``: the byte strings :func:`carve` took out of the message."""
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    n, v = tag.tag, tag.value
    if n == TAG_HOLE and _is_int(v) and 0 <= v < len(holes):
        return holes[v]
    if n == TAG_COMPRESSION:
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str) and _is_int(v[1])
                and isinstance(v[2], _BYTES)):
            raise StreamV2Error("malformed", "tag 56500: expected [algorithm, modifier, byte string]")
        return Compressed(v[0], int(v[1]), v[2])
    if n in TYPED_ARRAY_DTYPES:
        if not isinstance(v, (*_BYTES, Compressed)):
            raise StreamV2Error("malformed", f"typed array tag {n}: expected a byte string, got {type(v).__name__}")
        return TypedArray(n, TYPED_ARRAY_DTYPES[n], v)
    if n == TAG_ROW_MAJOR:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], (list, tuple))
                and all(_is_int(d) and d >= 0 for d in v[0])):
            raise StreamV2Error("malformed", "tag 40: expected [[dimensions], array]")
        return MultiDimArray(tuple(int(d) for d in v[0]), v[1])
    if n == TAG_COLUMN_MAJOR:
        return ColumnMajor(v[0] if isinstance(v, (list, tuple)) and v else None)
    return tag  # an unknown tag: rejected where its value is needed


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def carve(buf: Any) -> tuple[bytes, list[memoryview]]:
    """``buf`` (one CBOR data item) with each byte string of :data:`BIG_BYTES` or more replaced by tag
    :data:`TAG_HOLE` over its index, and those byte strings as views of ``buf`` (not copied).

    cbor2 copies a long byte string in chunks (~0.6 GB/s here: 15 ms for an uncompressed EIGER2 4M image); this walk
    reads only the items' heads, checking every length against the buffer: an item that runs past the end,
    indefinite lengths (which Stream V2 does not use), reserved heads or bytes after the item raise StreamV2Error."""
    view = as_bytes_view(buf)
    n = len(view)
    pos, todo, items = 0, 1, 0
    parts: list[Any] = []
    holes: list[memoryview] = []
    last = 0
    while todo:
        if pos >= n:
            raise StreamV2Error("malformed", f"CBOR message ends inside an item ({n} bytes)")
        items += 1
        if items > MAX_ITEMS:
            raise StreamV2Error("malformed", f"more than {MAX_ITEMS} CBOR items in one message")
        head = pos
        major, info = view[pos] >> 5, view[pos] & 31
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > n:
                raise StreamV2Error("malformed", f"CBOR message ends inside an item's head at byte {head}")
            arg = int.from_bytes(view[pos:pos + width], "big")
            pos += width
        else:
            raise StreamV2Error("malformed", f"CBOR head 0x{view[head]:02x} at byte {head}: indefinite lengths and "
                                             "reserved values are not read")
        todo -= 1
        if major in (2, 3):
            if arg > n - pos:
                raise StreamV2Error("malformed", f"CBOR string at byte {head} of {arg} bytes runs past the end of "
                                                 f"the {n}-byte message")
            if major == 2 and arg >= BIG_BYTES:
                parts += [view[last:head], cbor2.dumps(cbor2.CBORTag(TAG_HOLE, len(holes)))]
                holes.append(view[pos:pos + arg])
                last = pos + arg
            pos += arg
        elif major == 4:
            todo += arg
        elif major == 5:
            todo += 2 * arg
        elif major == 6:
            todo += 1
        elif major == 7 and info >= 24:
            pass  # (simple value or float: its bytes were the argument)
    if pos != n:
        raise StreamV2Error("malformed", f"{n - pos} bytes after the CBOR message")
    if not holes:
        return bytes(view), holes
    parts.append(view[last:])
    return b"".join(parts), holes


def loads(buf: Any) -> Mapping:
    """The top-level map of one message (tag 55799 allowed); StreamV2Error ``malformed`` for anything else."""
    small, holes = carve(buf)
    try:
        msg = cbor2.loads(small, tag_hook=functools.partial(_tag_hook, holes))
    except Exception as exc:  # cbor2 wraps what the hook raised
        cause = exc
        while cause is not None and not isinstance(cause, StreamV2Error):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise StreamV2Error("malformed", f"not a CBOR message ({type(exc).__name__}: {exc})") from None
    if isinstance(msg, cbor2.CBORTag) and msg.tag == TAG_SELF_DESCRIBE:
        msg = msg.value
    if not isinstance(msg, Mapping):
        raise StreamV2Error("malformed", f"expected a CBOR map, got {type(msg).__name__}")
    return msg


def decode(buf: Any, channel: str = "") -> Start | Image | End:
    """One message -> :class:`Start`, :class:`Image` (the channel ``channel``; "" = the first of the message) or
    :class:`End`; StreamV2Error otherwise."""
    msg = loads(buf)
    kind = msg.get("type")
    if kind == "image":
        return _image(msg, channel)
    if kind == "start":
        return _start(msg)
    if kind == "end":
        sid, uid = _series(msg, "end")
        return End(sid, uid)
    raise StreamV2Error("unknown_type", f"message type {kind!r}: expected start, image or end")


def _series(msg: Mapping, what: str) -> tuple[int, str]:
    sid = msg.get("series_id")
    if not _is_int(sid) or sid < 0:
        raise StreamV2Error("malformed", f"{what} message: series_id {sid!r}, expected an unsigned integer")
    uid = msg.get("series_unique_id", "")
    return int(sid), uid if isinstance(uid, str) else str(uid)


def _start(msg: Mapping) -> Start:
    sid, uid = _series(msg, "start")
    fields = {}
    for key in START_FIELDS:
        v = msg.get(key)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            fields[key] = v
    channels = msg.get("channels")
    channels = [str(c) for c in channels] if isinstance(channels, (list, tuple)) else []
    masks = msg.get("pixel_mask")
    return Start(sid, uid, fields, channels, dict(masks) if isinstance(masks, Mapping) else {}, msg.get("user_data"))


def _rational(v: Any) -> float | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and _is_int(v[0]) and _is_int(v[1]) and v[1] > 0:
        return v[0] / v[1]
    return None


def _epoch(date: Any) -> float | None:
    if isinstance(date, str):
        try:
            date = dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(date, dt.datetime):
        if date.tzinfo is None:
            date = date.replace(tzinfo=dt.UTC)
        return date.timestamp()
    return None


def _image(msg: Mapping, channel: str) -> Image:
    image_id = msg.get("image_id")
    if not _is_int(image_id) or image_id < 0:
        raise StreamV2Error("malformed", f"image message: image_id {image_id!r}, expected an unsigned integer")
    where = f"image {image_id}"
    sid, uid = _series(msg, where)
    data = msg.get("data")
    if not isinstance(data, Mapping) or not data:
        raise StreamV2Error("malformed", f"{where}: data is not a map of channels")
    name = channel or next(iter(data))
    if name not in data:
        raise StreamV2Error("malformed", f"{where}: no channel {name!r} (it has {', '.join(map(str, data))})")
    shape, dtype, codec, block, payload = image_array(data[name], f"{where} channel {name}")
    start = _rational(msg.get("start_time"))
    t0 = _epoch(msg.get("series_date"))
    return Image(int(image_id), sid, uid, str(name), shape, dtype, codec, block, payload,
                 None if start is None or t0 is None else t0 + start, _rational(msg.get("real_time")),
                 msg.get("user_data"))


def image_array(value: Any, where: str) -> tuple[tuple[int, int], np.dtype, str, int, bytes]:
    """(shape, dtype, codec, block bytes, payload) of one image (a channel's data or a pixel mask), every size
    checked: an uncompressed payload holds exactly the pixels; a compressed one starts with the 12-byte header
    announcing exactly their bytes (and, for bslz4, the element size is the pixel's)."""
    if isinstance(value, ColumnMajor):
        raise StreamV2Error("unsupported", f"{where}: a column-major array (tag 1040); only row-major (tag 40) "
                                           "images are read")
    if not isinstance(value, MultiDimArray):
        raise StreamV2Error("unsupported", f"{where}: expected a tag-40 array, got {_describe(value)}")
    if len(value.shape) != 2:
        raise StreamV2Error("wrong_shape", f"{where}: {len(value.shape)} dimensions {list(value.shape)}, expected "
                                           "2 (rows, cols)")
    shape = (value.shape[0], value.shape[1])
    arr = value.array
    if not isinstance(arr, TypedArray):
        raise StreamV2Error("unsupported", f"{where}: expected a typed array (tags 64-87), got {_describe(arr)}")
    dtype = arr.dtype
    if dtype not in IMAGE_TAGS:
        raise StreamV2Error("wrong_dtype", f"{where}: pixel type {dtype.str} (tag {arr.tag}), expected uint8, "
                                           "uint16 or uint32 little-endian (tags 64/68, 69, 70)")
    raw = shape[0] * shape[1] * dtype.itemsize
    p = arr.payload
    if isinstance(p, _BYTES):
        if len(p) != raw:
            raise StreamV2Error("malformed", f"{where}: {len(p)} bytes for a {shape[0]} x {shape[1]} {dtype.name} "
                                             f"image of {raw}")
        return shape, dtype, "none", 0, p
    if p.algorithm not in ALGORITHMS:
        raise StreamV2Error("unsupported", f"{where}: compression {p.algorithm!r}, expected bslz4 or lz4")
    if p.algorithm == "bslz4" and p.elem_size != dtype.itemsize:
        raise StreamV2Error("malformed", f"{where}: bslz4 element size {p.elem_size}, the pixels have "
                                         f"{dtype.itemsize} bytes")
    head = as_bytes_view(p.data)[:HDF5_HEADER_BYTES]
    if len(head) < HDF5_HEADER_BYTES:
        raise StreamV2Error("malformed", f"{where}: {p.algorithm} stream of {len(p.data)} bytes, shorter than "
                                         "its 12-byte header")
    total, block = int.from_bytes(head[:8], "big"), int.from_bytes(head[8:], "big")
    if total != raw:
        raise StreamV2Error("malformed", f"{where}: {p.algorithm} header announces {total} bytes, the "
                                         f"{shape[0]} x {shape[1]} {dtype.name} image has {raw}")
    if block <= 0 or (p.algorithm == "bslz4" and block % (8 * dtype.itemsize)):
        raise StreamV2Error("malformed", f"{where}: {p.algorithm} block size {block} bytes, expected a positive "
                                         f"multiple of {8 * dtype.itemsize if p.algorithm == 'bslz4' else 1}")
    return shape, dtype, p.algorithm, block, p.data


def decode_mask(value: Any, where: str) -> np.ndarray:
    """A pixel mask of a ``start`` message as a ``[rows, cols]`` array (decoded when compressed)."""
    from ..images.frame_codecs import decode_frame

    shape, dtype, codec, block, payload = image_array(value, where)
    if codec == "none":
        return np.frombuffer(payload, dtype).reshape(shape)
    out = np.empty(shape, dtype)
    decode_frame(codec, payload, out, HDF5_HEADER_BYTES, block)
    return out


def _describe(v: Any) -> str:
    if isinstance(v, cbor2.CBORTag):
        return f"unknown tag {v.tag}"
    return type(v).__name__


# -------------------------------------------------------------------------------------------------- encoding
def image_value(frame: np.ndarray, codec: str = "bslz4") -> cbor2.CBORTag:
    """``frame`` (uint8/16/32 ``[rows, cols]``) as the detector sends an image: tag 40 over its typed array, the
    bytes compressed (``bslz4`` / ``lz4``, 12-byte header first) or not (``none``)."""
    arr = np.ascontiguousarray(frame)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    arr = arr.astype(dtype, copy=False)
    tag = IMAGE_TAGS[np.dtype(dtype)]
    if codec == "none":
        payload: Any = arr.tobytes()
    else:
        data, _, _ = encode_frame(arr, codec, header=True)
        payload = cbor2.CBORTag(TAG_COMPRESSION, [codec, arr.itemsize if codec == "bslz4" else 0, data.tobytes()])
    return cbor2.CBORTag(TAG_ROW_MAJOR, [list(arr.shape), cbor2.CBORTag(tag, payload)])


def dumps(msg: dict) -> bytes:
    """A message map as the detector serialises it (self-described, tag 55799)."""
    return cbor2.dumps(cbor2.CBORTag(TAG_SELF_DESCRIBE, msg))


def encode_start(series_id: int, series_unique_id: str, number_of_images: int, shape: tuple[int, int],
                 channels: tuple[str, ...] = ("threshold_1",), pixel_mask: np.ndarray | None = None,
                 **fields: Any) -> bytes:
    """A ``start`` message; ``fields``: more START_FIELDS (beam_center_x, detector_distance ...) or user_data."""
    msg = {"type": "start", "series_id": int(series_id), "series_unique_id": str(series_unique_id),
           "number_of_images": int(number_of_images), "image_size_x": int(shape[1]),
           "image_size_y": int(shape[0]), "channels": list(channels),
           "arm_date": dt.datetime.now(dt.UTC), **fields}
    if pixel_mask is not None:
        msg["pixel_mask"] = {c: image_value(pixel_mask.astype("<u4"), "none") for c in channels}
    return dumps(msg)


def encode_image(series_id: int, series_unique_id: str, image_id: int, frames: dict[str, Any],
                 codec: str = "bslz4", series_date: dt.datetime | None = None, time_base: int = 100_000_000,
                 start_time: float = 0.0, real_time: float = 0.0, user_data: Any = None,
                 times: tuple[int, int, int] | None = None) -> bytes:
    """An ``image`` message with one image per channel (``frames``: channel -> frame, or an :func:`image_value`
    made before: a simulator encodes each distinct frame once); ``times``: the numerators of start_time, stop_time
    and real_time as given (else from the seconds ``start_time`` and ``real_time``)."""
    msg = {"type": "image", "series_id": int(series_id), "series_unique_id": str(series_unique_id),
           "image_id": int(image_id), "series_date": series_date or dt.datetime.now(dt.UTC),
           "start_time": [times[0] if times else round(start_time * time_base), time_base],
           "stop_time": [times[1] if times else round((start_time + real_time) * time_base), time_base],
           "real_time": [times[2] if times else round(real_time * time_base), time_base],
           "data": {c: f if isinstance(f, cbor2.CBORTag) else image_value(f, codec) for c, f in frames.items()}}
    if user_data is not None:
        msg["user_data"] = user_data
    return dumps(msg)


def encode_end(series_id: int, series_unique_id: str) -> bytes:
    return dumps({"type": "end", "series_id": int(series_id), "series_unique_id": str(series_unique_id)})

"""Messages <-> lists of zmq frames: a msgpack header frame followed by raw array buffers (sans-I/O).

``encode(msg, buffers)`` gives ``[header_bytes, *memoryviews]``; ``decode(frames)`` gives ``(msg, [memoryview])``
and validates everything a peer could get wrong, raising :class:`ProtocolError` with a ``kind``:

- ``"malformed"``: not msgpack, not a map, no str ``type`` / int ``version``, a required field missing, a field of
  the wrong type or out of range (``frame_index`` outside ``[0, 2**64)``, a shape that is not two positive ints,
  a dtype outside u1..u8, i1..i8, f4, f8 with byte order);
- ``"unknown_type"``: a ``type`` this version does not know;
- ``"version"``: a ``version`` other than :data:`PROTOCOL_VERSION`;
- ``"size"``: the buffers do not match the header (count or bytes), or the header itself is too large.

A Result (one per frame) that is exactly what :func:`encode` writes takes a fast path of exact-type checks that
accepts a subset of what the field table accepts, with the same values; anything else goes through the table, so
every error reads the same. Encoding applies the same rules, so a sender's mistake fails at the sender. Nothing
here touches a socket; the buffers returned by :func:`decode` are views of the frames given (no copy).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
import numpy as np

from ringstream.compression import BLOCK_BYTES, decoded_size
from ringstream.compression import CODECS as CHUNK_CODECS
from ringstream.errors import RingstreamError
from ringstream.protocol.messages import (
    FIT_COLUMNS,
    FRAME_CODECS,
    HDF5_FILTER_HEADER,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    FrameHeader,
    Message,
    Result,
)

ERROR_KINDS = ("malformed", "unknown_type", "version", "size")

MAX_HEADER_BYTES = 1 << 20
"""A header larger than this (1 MiB) is rejected with kind ``"size"`` before it is parsed."""

FRAME_DTYPES = frozenset(
    [f"{order}{kind}{size}" for order in "<>" for kind in "ui" for size in (1, 2, 4, 8)]
    + [f"{order}f{size}" for order in "<>" for size in (4, 8)]
    + ["|u1", "|i1"]
)
"""Pixel dtypes a frame may carry, as numpy dtype strings with byte order (``|`` only for one-byte types)."""

_MAX_DIM = 2**31 - 1
#: the dtypes of an OmegaPartial's buffer and their item sizes: float64 sums, or a whole group's sum already stored
PARTIAL_DTYPES = {"<f8": 8, "<f4": 4}
_U64 = 2**64


class ProtocolError(RingstreamError):
    """A message that cannot be encoded or decoded; ``kind`` is one of :data:`ERROR_KINDS`, the message one line."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ProtocolError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return (type(self), (self.kind, self.message))


# ---------------------------------------------------------------------------------------------------------------
# Field checks: (predicate, what was expected). Predicates never raise on any msgpack-decodable value.


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    t = type(v)  # exact types first: msgpack gives plain int/float, and this runs for every field of every message
    return t is int or (t is not bool and isinstance(v, int))


def _is_num(v: Any) -> bool:
    t = type(v)
    return t is float or t is int or (t is not bool and isinstance(v, (int, float)))


def _map_of(value_ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not isinstance(v, dict):
            return False
        for k, x in v.items():
            if type(k) is not str and not isinstance(k, str):
                return False
            if not value_ok(x):
                return False
        return True

    return ok


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in choices), "one of " + ", ".join(repr(c) for c in choices)


_STR = (lambda v: isinstance(v, str)), "a str"
_BOOL = (lambda v: isinstance(v, bool)), "a bool"
_NUM = _is_num, "a number"
_COUNT = (lambda v: _is_int(v) and 0 <= v < _U64), "a non-negative int"
_INDEX = (lambda v: _is_int(v) and 0 <= v < _U64), "a non-negative int < 2**64"
_SHAPE = (
    (
        lambda v: (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(n) and 0 < n <= _MAX_DIM for n in v)
        )
    ),
    "a list of 2 positive ints",
)
_DTYPE = (
    (lambda v: isinstance(v, str) and v in FRAME_DTYPES),
    "a dtype string among "
    + "/".join(sorted({d[1:] for d in FRAME_DTYPES}))
    + " with byte order (e.g. '<i4')",
)
_OPT_STR = _optional(lambda v: isinstance(v, str)), "a str or nil"
_OPT_COUNT = _optional(lambda v: _is_int(v) and 0 <= v < _U64), "a non-negative int or nil"
_METADATA = _map_of(lambda x: isinstance(x, (int, float, str))), "a map of str to number or str"
_INT_COUNTERS = _map_of(_is_int), "a map of str to int"
_NUM_COUNTERS = _map_of(_is_num), "a map of str to number"
_ANY_MAP = _map_of(lambda x: True), "a map with str keys"
_INDEX_LIST = (lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and 0 <= x < _U64 for x in v)), \
    "a list of non-negative ints"
_NUM_LIST = (lambda v: isinstance(v, (list, tuple)) and all(_is_num(x) for x in v)), "a list of numbers"

_CHECKS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "frame": {
        "run_id": _STR,
        "frame_index": _INDEX,
        "run_start": _INDEX,
        "source_id": _STR,
        "timestamp": _NUM,
        "shape": _SHAPE,
        "dtype": _DTYPE,
        "codec": _one_of(*FRAME_CODECS),
        "codec_block": _COUNT,
        "codec_header": _COUNT,
        "location": _one_of("inline", "shm"),
        "shm_name": _OPT_STR,
        "slot": _OPT_COUNT,
        "offset": _OPT_COUNT,
        "nbytes": _COUNT,
        "metadata": _METADATA,
    },
    "result": {
        "run_id": _STR,
        "frame_index": _INDEX,
        "source_id": _STR,
        "timestamp": _NUM,
        "status": _one_of("ok", "rejected"),
        "reason": _STR,
        "engine": _STR,
        "worker": _COUNT,
        "worker_pid": _COUNT,
        "n_r": _COUNT,
        "n_eta": _COUNT,
        "has_cake": _BOOL,
        "cake_chunks": _COUNT,
        "n_peaks": _COUNT,
        "n_rois": _COUNT,
        "n_curve_points": _COUNT,
        "caked_peaks": _COUNT,
        "timings": _NUM_COUNTERS,
        "metadata": _METADATA,
    },
    "peaks": {"run_id": _STR, "seq": _COUNT, "from_frame": _INDEX, "peaks": _NUM_LIST, "origin": _STR},
    "omegasum": {"run_id": _STR, "group": _COUNT, "n_frames": _COUNT, "first_frame": _INDEX, "last_frame": _INDEX,
                 "worker": _COUNT, "worker_pid": _COUNT, "frames": _INDEX_LIST, "n_r": _COUNT, "n_eta": _COUNT,
                 "dtype": _one_of(*PARTIAL_DTYPES), "compressed": _BOOL, "block_starts": _BOOL},
    "eos": {"run_id": _STR, "n_frames": _COUNT, "first_frame": _INDEX, "final": _BOOL, "reason": _STR,
            "counters": _INT_COUNTERS},
    "runstart": {"run_id": _STR, "first_frame": _INDEX, "name": _STR, "reason": _STR, "meta": _METADATA},
    "credit": {"worker": _COUNT, "pid": _COUNT, "n": _COUNT},
    "ack": {"frames": _INDEX_LIST},
    "gone": {"worker": _COUNT, "pid": _COUNT},
    "flushed": {"below": _INDEX, "writer_pid": _COUNT, "restart": _BOOL},
    "resume": {"run_id": _STR, "first_frame": _INDEX, "end": _INDEX, "pids": _INDEX_LIST, "resent": _INDEX_LIST},
    "resent": {"worker": _COUNT, "worker_pid": _COUNT, "writer_pid": _COUNT},
    "missing": {"run_id": _STR, "frames": _INDEX_LIST},
    "heartbeat": {
        "role": _one_of("ingest", "worker", "writer"),
        "index": _COUNT,
        "pid": _COUNT,
        "state": _one_of("starting", "running", "done"),
        "time": _NUM,
        "counters": _NUM_COUNTERS,
    },
    "stop": {"reason": _STR},
    "request": {"command": _one_of("status", "stop", "peaks", "runs", "join", "ping", "fetch"), "args": _ANY_MAP},
    "reply": {"ok": _BOOL, "data": _ANY_MAP, "error": _STR},
    "view": {"run_id": _STR, "run": _COUNT, "name": _STR, "file": _STR, "written": _COUNT, "frames": _INDEX_LIST,
             "n_r": _COUNT, "n_peaks": _COUNT, "fit_model": _one_of("pv", "tch")},  # [fit] model's choices
}

_TAGS: dict[type, str] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
_REQUIRED: dict[str, frozenset[str]] = {
    tag: frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    for tag, cls in MESSAGE_TYPES.items()
}
assert all(
    set(_CHECKS[tag]) == {f.name for f in dataclasses.fields(cls)} for tag, cls in MESSAGE_TYPES.items()
)


#: per tag, (name, predicate, expected, required) of each field: the loop below reads this flat table
_FIELD_TABLE: dict[str, tuple[tuple[str, Callable[[Any], bool], str, bool], ...]] = {
    tag: tuple((name, ok, expected, name in _REQUIRED[tag]) for name, (ok, expected) in checks.items())
    for tag, checks in _CHECKS.items()
}
_MISSING = object()


def _check_fields(tag: str, header: dict) -> dict[str, Any]:
    """The dataclass keyword arguments of a header of type ``tag``; unknown keys are ignored."""
    kwargs: dict[str, Any] = {}
    for name, ok, expected, required in _FIELD_TABLE[tag]:
        value = header.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise ProtocolError("malformed", f"{tag} message: required field {name!r} is missing")
            continue
        if not ok(value):
            raise ProtocolError(
                "malformed", f"{tag} message: field {name!r} must be {expected}, got {_short(value)}"
            )
        kwargs[name] = value
    return kwargs


def _frame_nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _check_encoding(kwargs: dict[str, Any], where: str) -> int:
    """The bytes a compressed frame's buffer holds (``nbytes``), after the codec fields' checks."""
    codec, block, head = kwargs["codec"], kwargs.get("codec_block", 0), kwargs.get("codec_header", 0)
    nbytes = kwargs.get("nbytes")
    if nbytes is None or nbytes < 1:
        raise ProtocolError("malformed", f"{where}: a {codec} frame needs nbytes, its compressed length (> 0)")
    if head not in (0, HDF5_FILTER_HEADER):
        raise ProtocolError("malformed", f"{where}: codec_header {head} must be 0 or {HDF5_FILTER_HEADER}")
    itemsize = np.dtype(kwargs["dtype"]).itemsize
    if codec == "bslz4" and block % (8 * itemsize):
        raise ProtocolError("malformed", f"{where}: bslz4 codec_block {block} bytes is not a multiple of 8 "
                                         f"{itemsize}-byte pixels")
    if codec == "lz4" and bool(head) != bool(block):
        raise ProtocolError("malformed", f"{where}: lz4 with codec_header {head} needs codec_block "
                                         f"{'> 0' if head else '0 (one raw block)'}, got {block}")
    return nbytes


def _check_frame(kwargs: dict[str, Any], sizes: list[int]) -> None:
    where = f"frame {kwargs['frame_index']}"
    if kwargs.get("codec", "none") != "none":
        expected = _check_encoding(kwargs, where)
    else:
        expected = _frame_nbytes(kwargs["shape"], kwargs["dtype"])
        nbytes = kwargs.get("nbytes", expected)
        if nbytes != expected or kwargs.get("codec_block", 0) or kwargs.get("codec_header", 0):
            raise ProtocolError(
                "size",
                f"{where}: nbytes {nbytes} != {expected} for shape {list(kwargs['shape'])} {kwargs['dtype']} "
                "(or codec_block / codec_header set without a codec)",
            )
    if kwargs.get("location", "inline") == "shm":
        for name in ("shm_name", "slot", "offset"):
            if kwargs.get(name) is None:
                raise ProtocolError("malformed", f"{where}: a shared-memory frame needs {name!r}")
        if sizes:
            raise ProtocolError("size", f"{where}: a shared-memory frame carries no buffer, got {len(sizes)}")
    elif sizes != [expected]:
        raise ProtocolError(
            "size", f"{where}: an inline frame needs 1 buffer of {expected} bytes, got {sizes}"
        )


def _result_sizes(
    n_r: int, n_eta: int, has_cake: bool, n_peaks: int, n_rois: int = 0, n_curve_points: int = 0,
    caked_peaks: int = 0,
) -> list[int]:
    sizes = [n_r * 4]
    if has_cake:
        sizes.append(n_r * n_eta * 4)
    if n_peaks:
        sizes.append(n_peaks * FIT_COLUMNS * 8)
    if n_rois:
        sizes += [n_rois * 2 * 4, n_curve_points * 8]
    if caked_peaks:
        sizes.append(n_eta * caked_peaks * FIT_COLUMNS * 8)
    return sizes


#: how many chunks a compressed cake travels as (Result.cake_chunks): the cake's and its sum's HDF5 chunks, and the
#: sum's zarr chunk when the run writes a zarr.zip
CAKE_CHUNKS = (2, 3)


def _check_result(kwargs: dict[str, Any], sizes: list[int]) -> None:
    k = kwargs.get("cake_chunks", 0)
    if k and kwargs.get("status", "ok") == "ok" and kwargs.get("has_cake", False):
        if k not in CAKE_CHUNKS or len(sizes) < 1 + k:
            raise ProtocolError("size", f"result {kwargs['frame_index']}: cake_chunks {k} with {len(sizes)} buffers "
                                        f"(the cake travels as {' or '.join(map(str, CAKE_CHUNKS))} chunks)")
        sizes = sizes[:1] + sizes[1 + k:]  # (the chunks: their headers are checked with the buffers)
        kwargs = {**kwargs, "has_cake": False}
    if kwargs.get("status", "ok") == "ok":
        expected = _result_sizes(
            kwargs.get("n_r", 0),
            kwargs.get("n_eta", 0),
            kwargs.get("has_cake", False),
            kwargs.get("n_peaks", 0),
            kwargs.get("n_rois", 0),
            kwargs.get("n_curve_points", 0),
            kwargs.get("caked_peaks", 0),
        )
    else:
        expected = []
    if sizes != expected:
        raise ProtocolError(
            "size",
            f"result {kwargs['frame_index']}: buffers of {sizes} bytes, expected {expected} "
            f"(status {kwargs.get('status', 'ok')!r}, n_r, n_eta, has_cake, n_peaks, n_rois, n_curve_points)",
        )


def _check_buffers(tag: str, kwargs: dict[str, Any], sizes: list[int]) -> None:
    if tag == "frame":
        _check_frame(kwargs, sizes)
    elif tag == "result":
        _check_result(kwargs, sizes)
    elif tag == "omegasum":
        dtype = kwargs.get("dtype", "<f8")
        expected = [kwargs["n_r"] * kwargs["n_eta"] * PARTIAL_DTYPES[dtype]]
        if kwargs.get("compressed", False):
            return  # (the chunks' own headers are checked with the buffers: _check_chunks)
        if sizes != expected:
            raise ProtocolError("size", f"omegasum of group {kwargs['group']}: buffers of {sizes} bytes, expected "
                                        f"{expected} (n_r x n_eta {dtype})")
    elif tag == "view":
        rows, n_r, n_peaks = len(kwargs.get("frames", ())), kwargs["n_r"], kwargs.get("n_peaks", 0)
        expected = [3 * n_r * 8, rows * n_r * 4] + ([rows * n_peaks * FIT_COLUMNS * 8] if n_peaks else [])
        if sizes != expected:
            raise ProtocolError("size", f"view update of {rows} rows: buffers of {sizes} bytes, expected "
                                        f"{expected} (axes, lineouts, fits)")
    elif tag == "reply":  # the answer to a "fetch" carries the part of the file asked for
        if len(sizes) > 1:
            raise ProtocolError("size", f"reply message: carries at most one buffer (a file's part), got {len(sizes)}")
    elif sizes:
        raise ProtocolError("size", f"{tag} message: carries no buffers, got {len(sizes)}")


def _as_bytes_view(buffer: Any) -> memoryview:
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ---------------------------------------------------------------------------------------------------------------


def _builtin(value: Any) -> Any:
    """msgpack ``default``: numpy scalars and arrays to Python values; anything else cannot be encoded."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(msg: Message, buffers: Iterable[Any] = ()) -> list[bytes | memoryview]:
    """``[header, *buffers]`` for ``msg``: the header packed with msgpack, each buffer a byte view (no copy).

    ``buffers`` are C-contiguous objects with the buffer protocol (numpy arrays, bytes, memoryviews); their sizes
    must match the message (see :func:`result_buffers` for a Result's). Raises :class:`ProtocolError` for a message
    :func:`decode` would reject, ``TypeError`` for an object that is not a message, ``ValueError`` for a
    non-contiguous buffer.
    """
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    header: dict[str, Any] = {"type": tag, "version": PROTOCOL_VERSION}
    for name in _CHECKS[tag]:
        value = getattr(msg, name)
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, tuple):
            value = list(value)
        header[name] = value
    kwargs = _check_fields(tag, header)
    views = []
    for i, buffer in enumerate(buffers):
        try:
            views.append(_as_bytes_view(buffer))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{tag} message: buffer {i} is not a C-contiguous buffer ({exc})") from None
    _check_payload(tag, kwargs, views)
    try:
        packed = msgpack.packb(header, use_bin_type=True, default=_builtin)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("malformed", f"{tag} message cannot be encoded: {exc}") from None
    return [packed, *views]


def decode(frames: Sequence[Any]) -> tuple[Message, list[memoryview]]:
    """The message and its buffers (byte views of ``frames[1:]``, no copy) from ``[header, *buffers]``.

    Raises :class:`ProtocolError` (never anything else) for anything a peer could get wrong.
    """
    try:
        # zmq frames' buffers are already 1-d byte views: taken as they are, without a call each
        # (and bytes, as recv_multipart(copy=True) gives them, are viewed without a call each)
        views = [memoryview(f) if type(f) is bytes else
                 f if type(f) is memoryview and f.ndim == 1 and f.format == "B" else _as_bytes_view(f)
                 for f in frames]
    except (TypeError, ValueError) as exc:
        raise ProtocolError("malformed", f"message frames are not byte buffers ({exc})") from None
    if not views:
        raise ProtocolError("malformed", "empty message: no header frame")
    head, buffers = views[0], views[1:]
    if head.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("size", f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(head, raw=False, use_list=True, strict_map_key=True)
    except (
        Exception
    ) as exc:  # msgpack raises many classes (ExtraData, FormatError, StackError, ValueError, ...)
        raise ProtocolError("malformed", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", f"header is a msgpack {type(header).__name__}, not a map")
    tag, version = header.get("type"), header.get("version")
    if not isinstance(tag, str):
        raise ProtocolError("malformed", f"header has no str 'type' (got {_short(tag)})")
    if not _is_int(version):
        raise ProtocolError(
            "malformed", f"{_short(tag)} message has no int 'version' (got {_short(version)})"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version",
            f"{_short(tag)} message of protocol version {version}, this side speaks {PROTOCOL_VERSION}",
        )
    if tag == "result":  # one per frame: the exact-type fast path; anything it does not accept is checked below
        msg = _fast_result(header, buffers)
        if msg is not None:
            return msg, buffers
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {_short(tag)}")
    return _checked(tag, cls, header, buffers), buffers


def _checked(tag: str, cls: type, header: dict, buffers: list[memoryview]) -> Message:
    """The message of type ``tag`` from a parsed header, every field and the buffer sizes checked (the general
    path, which names what is wrong)."""
    kwargs = _check_fields(tag, header)
    _check_payload(tag, kwargs, buffers)
    try:
        msg = cls(**kwargs)
    except Exception as exc:  # validation above should make this unreachable; a peer must never crash us
        raise ProtocolError("malformed", f"{tag} message: {type(exc).__name__}: {exc}") from None
    return msg


def _check_payload(tag: str, kwargs: dict[str, Any], buffers: list[memoryview]) -> None:
    """The buffers of a message against its checked fields: their sizes, and a compressed sum's chunk headers."""
    _check_buffers(tag, kwargs, [b.nbytes for b in buffers])
    if tag == "omegasum" and kwargs.get("compressed", False):
        _check_chunks(kwargs, buffers)
    elif tag == "result" and kwargs.get("cake_chunks", 0) and kwargs.get("has_cake", False) and \
            kwargs.get("status", "ok") == "ok":
        _check_cake_chunks(kwargs, buffers[1:1 + kwargs["cake_chunks"]])


def _check_cake_chunks(kwargs: dict[str, Any], chunks: list[memoryview]) -> None:
    """A compressed cake: each chunk's header says n_r x n_eta values of one stored dtype (float32 or float64)."""
    n = kwargs["n_r"] * kwargs["n_eta"]
    got = [decoded_size(codec, c) for codec, c in zip(("hdf5", "hdf5", "zarr"), chunks, strict=False)]
    if len(set(got)) != 1 or got[0] not in (4 * n, 8 * n):
        raise ProtocolError("size", f"result {kwargs['frame_index']}: the cake's chunk headers say {got} bytes, "
                                    f"expected {4 * n} or {8 * n} each (n_r x n_eta float32 or float64)")


def _check_chunks(kwargs: dict[str, Any], buffers: list[memoryview]) -> None:
    """A compressed OmegaPartial: the HDF5 chunk and, optionally, the zarr chunk of one whole ``n_r x n_eta`` sum
    of ``dtype``, each header saying so (:func:`ringstream.compression.decoded_size`; the bytes are not decoded)."""
    want = kwargs["n_r"] * kwargs["n_eta"] * PARTIAL_DTYPES[kwargs.get("dtype", "<f8")]
    where = f"compressed omegasum of group {kwargs['group']}"
    if kwargs.get("block_starts", False):  # the HDF5 chunk, then an int32 start of each of its 8 kB blocks
        n_blocks = -(-want // BLOCK_BYTES)
        if len(buffers) != 2 or buffers[1].nbytes != 4 * n_blocks:
            raise ProtocolError("size", f"{where}: {len(buffers)} buffers, expected the HDF5 chunk and the starts of "
                                        f"its {n_blocks} blocks ({4 * n_blocks} bytes)")
        buffers = buffers[:1]
    if len(buffers) not in (1, 2):
        raise ProtocolError("size", f"{where}: {len(buffers)} buffers, expected the HDF5 chunk and optionally the "
                                    f"zarr chunk")
    for codec, buf in zip(CHUNK_CODECS, buffers, strict=False):
        got = decoded_size(codec, buf)
        if got != want:
            raise ProtocolError("size", f"{where}: its {codec} chunk's header says {got} bytes, expected {want} "
                                        f"(n_r x n_eta {kwargs.get('dtype', '<f8')})")


#: the Result fields in declaration order, and each one's slot descriptor (what the frozen ``__init__`` sets)
_RESULT_SLOTS = tuple((f.name, getattr(Result, f.name).__set__) for f in dataclasses.fields(Result))
assert not hasattr(Result, "__post_init__"), "_fast_result fills Result's slots without calling __init__"
_STATUSES = ("ok", "rejected")


def _fast_result(h: dict, buffers: list[memoryview]) -> Result | None:
    """A Result header as :func:`encode` writes it (every field present, of its exact type, buffers of the right
    sizes) made into a :class:`Result` without the per-field table walk; None for anything else, which the general
    path then accepts or rejects with its message. Accepts a subset of what :func:`_checked` accepts, with the same
    values (bool is not taken for an int here: the general path decides)."""
    try:
        index, n_r, n_eta = h["frame_index"], h["n_r"], h["n_eta"]
        n_peaks, n_rois, n_points, caked = h["n_peaks"], h["n_rois"], h["n_curve_points"], h["caked_peaks"]
        worker, ts, status, cake = h["worker"], h["timestamp"], h["status"], h["has_cake"]
        wpid = h["worker_pid"]
        if type(h["cake_chunks"]) is not int or h["cake_chunks"] != 0:  # (a compressed cake: the general path)
            return None
        timings, metadata = h["timings"], h["metadata"]
        if not (type(h["run_id"]) is str and type(h["source_id"]) is str and type(h["reason"]) is str
                and type(h["engine"]) is str):
            return None
    except KeyError:
        return None
    int_ = int
    if not (type(index) is int_ and type(n_r) is int_ and type(n_eta) is int_ and type(n_peaks) is int_
            and type(n_rois) is int_ and type(n_points) is int_ and type(worker) is int_ and type(wpid) is int_
            and type(caked) is int_ and 0 <= caked < _U64
            and 0 <= index < _U64 and 0 <= n_r < _U64 and 0 <= n_eta < _U64 and 0 <= n_peaks < _U64
            and 0 <= n_rois < _U64 and 0 <= n_points < _U64 and 0 <= worker < _U64 and 0 <= wpid < _U64):
        return None
    if not ((type(ts) is float or type(ts) is int_) and type(status) is str and status in _STATUSES
            and type(cake) is bool and type(timings) is dict and type(metadata) is dict):
        return None
    for k, v in timings.items():
        if type(k) is not str or (type(v) is not float and type(v) is not int_):
            return None
    for k, v in metadata.items():
        if type(k) is not str or (type(v) is not float and type(v) is not int_ and type(v) is not str):
            return None
    n = len(buffers)
    if status == "ok":
        if n != 1 + cake + (n_peaks > 0) + 2 * (n_rois > 0) + (caked > 0) or buffers[0].nbytes != 4 * n_r:
            return None
        i = 1
        if cake:
            if buffers[1].nbytes != 4 * n_r * n_eta:
                return None
            i = 2
        if n_peaks:
            if buffers[i].nbytes != 8 * FIT_COLUMNS * n_peaks:
                return None
            i += 1
        if n_rois:
            if buffers[i].nbytes != 8 * n_rois or buffers[i + 1].nbytes != 8 * n_points:
                return None
            i += 2
        if caked and buffers[i].nbytes != 8 * FIT_COLUMNS * n_eta * caked:
            return None
    elif n:
        return None
    msg = _new(Result)
    for name, put in _RESULT_SLOTS:
        put(msg, h[name])
    return msg


_new = object.__new__


# ---------------------------------------------------------------------------------------------------------------
# Array helpers


def frame_array(header: FrameHeader, buffer: Any) -> np.ndarray:
    """The pixels of an inline frame: a ``header.shape`` array of ``header.dtype`` viewing ``buffer`` (no copy).

    Read-only when ``buffer`` is. Raises :class:`ProtocolError` (kind ``"size"``) when the sizes disagree and
    ``ValueError`` for a shared-memory frame (view those with ``FrameRing.view``).
    """
    if header.location != "inline":
        raise ValueError(f"frame {header.frame_index} is in shared memory, not inline")
    if header.codec != "none":
        raise ValueError(f"frame {header.frame_index} is {header.codec}-compressed: decode its frame_payload")
    view = _as_bytes_view(buffer)
    expected = _frame_nbytes(header.shape, header.dtype)
    if view.nbytes != expected:
        raise ProtocolError(
            "size", f"frame {header.frame_index}: buffer of {view.nbytes} bytes, expected {expected}"
        )
    return np.frombuffer(view, dtype=header.dtype).reshape(header.shape)


def frame_payload(header: FrameHeader, buffer: Any) -> np.ndarray:
    """The compressed bytes of an inline frame: uint8 ``[nbytes]`` viewing ``buffer`` (no copy). Raises
    :class:`ProtocolError` (kind ``"size"``) when the sizes disagree, ``ValueError`` for a frame in shared memory."""
    if header.location != "inline":
        raise ValueError(f"frame {header.frame_index} is in shared memory, not inline")
    view = _as_bytes_view(buffer)
    if view.nbytes != header.nbytes:
        raise ProtocolError("size", f"frame {header.frame_index}: buffer of {view.nbytes} bytes, expected "
                                    f"{header.nbytes}")
    return np.frombuffer(view, dtype=np.uint8)


def compressed_bound(raw_bytes: int) -> int:
    """The most bytes a bslz4 / lz4 frame of ``raw_bytes`` decoded bytes takes with blocks of 2 KiB or more (LZ4's
    worst case, ``n + n/255 + 16`` a block, plus a 4-byte length a block and the 12-byte header): what a ring slot
    of a source that keeps frames compressed holds. A larger frame is dropped (``dropped_too_large``)."""
    return int(raw_bytes) + int(raw_bytes) // 64 + 4096


def result_arrays(
    result: Result, buffers: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(lineout [n_r] f4, cake [n_r, n_eta] f4 or None, fit [n_peaks, 7] f8 or None)`` viewing ``buffers``.

    Raises ``ValueError`` for a rejected result (it has no arrays) and :class:`ProtocolError` (kind ``"size"``)
    when the buffers do not match the result.
    """
    if result.status != "ok":
        raise ValueError(f"result {result.frame_index} is {result.status!r}: it has no arrays")
    views = [_as_bytes_view(b) for b in buffers]
    if result.has_cake and result.cake_chunks:  # the cake compressed (its chunks: record_from_result)
        views = views[:1] + views[1 + result.cake_chunks:]
    expected = _result_sizes(
        result.n_r, result.n_eta, result.has_cake and not result.cake_chunks, result.n_peaks, result.n_rois,
        result.n_curve_points, result.caked_peaks,
    )
    sizes = [v.nbytes for v in views]
    if sizes != expected:
        raise ProtocolError(
            "size", f"result {result.frame_index}: buffers of {sizes} bytes, expected {expected}"
        )
    lineout = np.frombuffer(views[0], dtype="<f4")
    cake = fit = None
    rest = views[1:]
    if result.has_cake and not result.cake_chunks:
        cake = np.frombuffer(rest.pop(0), dtype="<f4").reshape(result.n_r, result.n_eta)
    if result.n_peaks:
        fit = np.frombuffer(rest.pop(0), dtype="<f8").reshape(result.n_peaks, FIT_COLUMNS)
    return lineout, cake, fit


def result_buffers(
    lineout: np.ndarray,
    cake: np.ndarray | None = None,
    fit: np.ndarray | None = None,
    curves: tuple[np.ndarray, np.ndarray] | None = None,
    caked: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The buffers of an ok :class:`Result`: C-contiguous little-endian f4 lineout ``[n_r]``, f4 cake
    ``[n_r, n_eta]`` (if given), f8 fit ``[n_peaks, 7]`` (if given and non-empty), and ``curves`` = (i4 table
    ``[n_rois, 2]`` of (start_bin, n_points), f8 values ``[n_curve_points]``) if given with at least one ROI, and
    the per-η fits f8 ``[n_eta, caked_peaks, 7]`` if given. Copies only what is not already in that form. Set
    ``n_r``, ``n_eta``, ``has_cake``, ``n_peaks``, ``n_rois``, ``n_curve_points``, ``caked_peaks`` of the Result
    to match.
    """
    out = [np.ascontiguousarray(lineout, dtype="<f4").reshape(-1)]
    if cake is not None:
        out.append(np.ascontiguousarray(cake, dtype="<f4"))
    if fit is not None and len(fit):
        out.append(np.ascontiguousarray(fit, dtype="<f8"))
    if curves is not None and len(curves[0]):
        rois = np.ascontiguousarray(curves[0], dtype="<i4").reshape(-1, 2)
        values = np.ascontiguousarray(curves[1], dtype="<f8").reshape(-1)
        if int(rois[:, 1].sum()) != values.size:
            raise ValueError(f"curves: the ROI table counts {int(rois[:, 1].sum())} points, values hold {values.size}")
        out += [rois, values]
    if caked is not None:
        out.append(np.ascontiguousarray(caked, dtype="<f8"))
    return out


def result_caked(result: Result, buffers: Sequence[Any]) -> np.ndarray | None:
    """The per-η fits ``[n_eta, caked_peaks, 7]`` f8 viewing ``buffers``, or None when the result carries none."""
    result_arrays(result, buffers)
    if not result.caked_peaks:
        return None
    return np.frombuffer(_as_bytes_view(buffers[-1]), dtype="<f8").reshape(result.n_eta, result.caked_peaks,
                                                                            FIT_COLUMNS)


def result_curves(result: Result, buffers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(table [n_rois, 2] i4 of (start_bin, n_points), values [n_curve_points] f8)`` viewing ``buffers``, or None
    when the result carries no curves. Buffers are checked as :func:`result_arrays` does."""
    result_arrays(result, buffers)
    if not result.n_rois:
        return None
    views = [_as_bytes_view(b) for b in buffers[1 + result.has_cake + (result.n_peaks > 0):][:2]]
    table = np.frombuffer(views[0], dtype="<i4").reshape(result.n_rois, 2)
    return table, np.frombuffer(views[1], dtype="<f8")

"""The wire protocol: every message round-trips; every way a peer can get it wrong is one ProtocolError kind."""

from __future__ import annotations

import dataclasses
import pickle
import random
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from ringstream.errors import RingstreamError
from ringstream.protocol import (
    ERROR_KINDS,
    PROTOCOL_VERSION,
    ControlReply,
    ControlRequest,
    Credit,
    EndOfStream,
    Flushed,
    FrameAck,
    FrameHeader,
    Heartbeat,
    Missing,
    PeakUpdate,
    ProtocolError,
    Resent,
    Result,
    ResumeQuery,
    Stop,
    WorkerGone,
    codec,
    decode,
    encode,
    frame_array,
    result_arrays,
    result_buffers,
    result_curves,
)

pytestmark = pytest.mark.timeout(10)


def _frame(**kw) -> FrameHeader:
    base = dict(
        run_id="run-1",
        frame_index=7,
        source_id="sim",
        timestamp=1.7e9,
        shape=(3, 4),
        dtype="<i4",
        metadata={"exposure": 0.1, "detector": "pilatus", "n": 3},
    )
    base.update(kw)
    return FrameHeader(**base)


def _result(**kw) -> Result:
    base = dict(
        run_id="run-1",
        frame_index=7,
        source_id="sim",
        timestamp=1.7e9,
        engine="numpy",
        worker=1,
        n_r=5,
        n_eta=3,
        has_cake=True,
        n_peaks=2,
        timings={"integrate": 0.001},
        metadata={"a": 1},
    )
    base.update(kw)
    return Result(**base)


def _header(frames) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def _pack(header: dict, *buffers) -> list:
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _kind(frames) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert "\n" not in str(info.value)
    return info.value.kind


# --- purity ----------------------------------------------------------------------------------------------------


def test_import_loads_no_io_or_gpu_modules():
    code = (
        "import sys, ringstream.protocol; "
        "print(','.join(m for m in ('zmq', 'cupy', 'h5py', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == ""


# --- round trips -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["<i4", ">u2", "|u1", "<f8", "<i8", ">f4"])
def test_inline_frame_round_trip(dtype):
    pixels = (np.arange(12) * 3).astype(dtype).reshape(3, 4)
    msg = _frame(dtype=dtype)
    assert msg.nbytes == pixels.nbytes
    back, buffers = decode(encode(msg, [pixels]))
    assert back == msg and isinstance(back, FrameHeader)
    array = frame_array(back, buffers[0])
    assert array.dtype == np.dtype(dtype) and array.shape == (3, 4)
    np.testing.assert_array_equal(array, pixels)


def test_frame_dtype_is_normalised_and_index_may_reach_2_64_minus_1():
    msg = _frame(dtype=np.int32, frame_index=2**64 - 1)
    assert msg.dtype == "<i4" and msg.nbytes == 48
    back, _ = decode(encode(msg, [np.zeros((3, 4), "<i4")]))
    assert back.frame_index == 2**64 - 1


def test_shm_frame_round_trip():
    msg = _frame(location="shm", shm_name="ringstream-1-ab", slot=3, offset=64 + 3 * 64)
    back, buffers = decode(encode(msg))
    assert back == msg and buffers == []


def test_result_round_trip_with_arrays():
    lineout = np.linspace(0, 1, 5)
    cake = np.arange(15, dtype=np.float64).reshape(5, 3)
    fit = np.arange(14, dtype=np.float32).reshape(2, 7)
    msg = _result()
    back, buffers = decode(encode(msg, result_buffers(lineout, cake, fit)))
    assert back == msg
    lo, ck, ft = result_arrays(back, buffers)
    assert (
        lo.dtype == np.dtype("<f4")
        and ck.shape == (5, 3)
        and ft.dtype == np.dtype("<f8")
        and ft.shape == (2, 7)
    )
    np.testing.assert_array_equal(lo, lineout.astype(np.float32))
    np.testing.assert_array_equal(ck, cake.astype(np.float32))
    np.testing.assert_array_equal(ft, fit)


def test_result_round_trip_with_fit_curves():
    table = np.array([[10, 4], [30, 3]])
    values = np.arange(7, dtype=np.float64) * 0.5
    fit = np.full((3, 7), np.nan)
    msg = _result(n_peaks=3, n_rois=2, n_curve_points=7)
    back, buffers = decode(encode(msg, result_buffers(np.ones(5), np.ones((5, 3)), fit, (table, values))))
    assert back == msg
    lo, ck, ft = result_arrays(back, buffers)
    assert ft.shape == (3, 7) and np.isnan(ft).all()
    got_table, got_values = result_curves(back, buffers)
    assert got_table.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(got_table, table)
    np.testing.assert_array_equal(got_values, values)
    assert result_curves(*decode(encode(_result(), result_buffers(np.ones(5), np.ones((5, 3)), np.ones((2, 7)))))) is None
    with pytest.raises(ProtocolError, match="n_curve_points"):  # the table counts 7 points, the header 6
        encode(_result(n_peaks=3, n_rois=2, n_curve_points=6), result_buffers(np.ones(5), np.ones((5, 3)), fit,
                                                                               (table, values)))
    with pytest.raises(ValueError, match="counts 7 points"):
        result_buffers(np.ones(5), None, None, (table, values[:6]))


def test_result_lineout_only_and_rejected():
    msg = _result(has_cake=False, n_peaks=0, n_eta=0)
    back, buffers = decode(encode(msg, result_buffers(np.ones(5))))
    lo, ck, ft = result_arrays(back, buffers)
    assert lo.shape == (5,) and ck is None and ft is None
    rejected = Result(
        run_id="r", frame_index=9, status="rejected", reason="shape (2, 2) differs from the map"
    )
    back, buffers = decode(encode(rejected))
    assert back == rejected and buffers == []
    with pytest.raises(ValueError, match="rejected"):
        result_arrays(back, buffers)


@pytest.mark.parametrize(
    "msg",
    [
        EndOfStream(run_id="r", n_frames=100, counters={"sent": 100, "dropped_ring_full": 0}),
        Credit(worker=1, pid=4242, n=32),
        FrameAck(frames=[12, 13, 2**40]),
        WorkerGone(worker=0, pid=17),
        Flushed(below=2**40, writer_pid=99, restart=True),
        Resent(worker=1, worker_pid=4242, writer_pid=99),
        ResumeQuery(run_id="r", first_frame=0, end=120, pids=[17, 18]),
        Missing(run_id="r", frames=[3, 7, 2**40]),
        Heartbeat(
            role="worker",
            index=2,
            pid=123,
            state="running",
            time=1.7e9,
            counters={"integrated": 5, "fps": 9.5},
        ),
        Heartbeat(role="writer"),
        Stop(reason="interrupted"),
        Stop(),
        ControlRequest(command="status"),
        ControlRequest(command="stop", args={"reason": "user", "force": True}),
        ControlRequest(command="peaks", args={"action": "set", "peaks": [245.3, 347.1], "from_frame": 100}),
        PeakUpdate(run_id="r", seq=1, from_frame=100, peaks=[245.3, 347.1], origin="control"),
        PeakUpdate(seq=2, from_frame=0),
        ControlReply(ok=True, data={"workers": [{"pid": 1, "fps": 1.5}], "state": "running"}),
        ControlReply(ok=False, error="no such command"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_small_messages_round_trip(msg):
    frames = encode(msg)
    assert len(frames) == 1
    assert _header(frames)["version"] == PROTOCOL_VERSION
    back, buffers = decode(frames)
    assert back == msg and type(back) is type(msg) and buffers == []


def test_decode_accepts_memoryviews_and_numpy_scalars_encode():
    msg = Result(run_id="r", frame_index=np.uint64(3), n_r=np.int64(2), worker=np.int32(1))
    frames = encode(msg, result_buffers(np.zeros(2)))
    back, _ = decode([memoryview(bytes(f)) for f in frames])
    assert back.frame_index == 3 and back.n_r == 2 and type(back.n_r) is int


def test_missing_optional_fields_take_defaults():
    back, _ = decode(_pack({"type": "stop", "version": 1}))
    assert back == Stop()
    back, _ = decode(
        _pack(
            {"type": "frame", "version": 1, "run_id": "r", "frame_index": 0, "shape": [1, 2], "dtype": "<u2"},
            b"\0" * 4,
        )
    )
    assert back.location == "inline" and back.nbytes == 4 and back.codec == "none"


def test_unknown_fields_are_ignored():
    back, _ = decode(_pack({"type": "stop", "version": 1, "reason": "x", "added_in_a_later_minor": 1}))
    assert back == Stop(reason="x")


# --- errors ----------------------------------------------------------------------------------------------------


def test_protocol_error_is_a_ringstream_error_and_pickles():
    err = ProtocolError("size", "frame 3: bad")
    assert isinstance(err, RingstreamError)
    back = pickle.loads(pickle.dumps(err))
    assert back.kind == "size" and str(back) == "frame 3: bad"
    with pytest.raises(ValueError):
        ProtocolError("other", "x")


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"\xc1"],  # never-used msgpack byte
        [b"\x93\x01"],  # truncated array
        [b"\x81\xa4type"],  # truncated map
        [msgpack.packb({"type": "stop", "version": 1}) + b"\x00"],  # extra data
        [b"\xff" * 64],
        [bytes(range(256))],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb("stop")],
        [msgpack.packb(None)],
        [msgpack.packb({1: 2})],  # non-str key
        [msgpack.packb({"version": 1})],
        [msgpack.packb({"type": 3, "version": 1})],
        [msgpack.packb({"type": "stop"})],
        [msgpack.packb({"type": "stop", "version": "1"})],
        [msgpack.packb({"type": "stop", "version": True})],
        [msgpack.packb({"type": "stop", "version": 1, "reason": b"\xff"}, use_bin_type=True)],
        [msgpack.packb(msgpack.ExtType(1, b"x"))],
        [msgpack.packb({"type": "stop", "version": 1, "reason": msgpack.ExtType(1, b"x")})],
        ["not bytes"],
    ],
)
def test_garbage_is_malformed(frames):
    assert _kind(frames) == "malformed"


def test_random_garbage_bytes_are_protocol_errors():
    rng = random.Random(1234)
    for _ in range(500):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        with pytest.raises(ProtocolError) as info:  # a valid message needs type and version: never random
            decode([junk])
        assert info.value.kind in ERROR_KINDS


def test_unknown_type_and_version():
    assert _kind(_pack({"type": "frobnicate", "version": 1})) == "unknown_type"
    assert _kind(_pack({"type": "stop", "version": 2})) == "version"
    assert _kind(_pack({"type": "frobnicate", "version": 2})) == "version"
    assert _kind(_pack({"type": "stop", "version": 0})) == "version"


def test_frame_size_mismatches():
    frames = encode(_frame(), [np.zeros((3, 4), "<i4")])
    assert _kind([frames[0], b"\0" * 47]) == "size"
    assert _kind([frames[0]]) == "size"
    assert _kind([frames[0], frames[1], b"x"]) == "size"
    header = _header(frames)
    assert _kind(_pack({**header, "nbytes": 40}, b"\0" * 40)) == "size"
    shm = _header(encode(_frame(location="shm", shm_name="x", slot=0, offset=64)))
    assert _kind(_pack(shm, b"\0" * 48)) == "size"
    with pytest.raises(ProtocolError) as info:
        encode(_frame(), [np.zeros((3, 3), "<i4")])
    assert info.value.kind == "size"


def test_result_size_mismatches():
    header = _header(encode(_result(), result_buffers(np.zeros(5), np.zeros((5, 3)), np.zeros((2, 7)))))
    lineout, cake, fit = b"\0" * 20, b"\0" * 60, b"\0" * 112
    assert decode(_pack(header, lineout, cake, fit))[0] == _result()
    assert _kind(_pack(header, lineout, cake)) == "size"
    assert _kind(_pack(header, lineout, b"\0" * 56, fit)) == "size"
    assert _kind(_pack(header, lineout, cake, b"\0" * 56)) == "size"
    assert _kind(_pack({**header, "has_cake": False}, lineout, cake, fit)) == "size"
    assert _kind(_pack({**header, "status": "rejected"}, lineout, cake, fit)) == "size"
    assert _kind(_pack({"type": "stop", "version": 1}, b"x")) == "size"
    with pytest.raises(ProtocolError) as info:
        result_arrays(_result(), [lineout, cake])
    assert info.value.kind == "size"


def test_header_too_large():
    assert _kind(_pack({"type": "stop", "version": 1, "reason": "x" * (1 << 20)})) == "size"


_GOOD_FRAME = {
    "type": "frame",
    "version": 1,
    "run_id": "r",
    "frame_index": 0,
    "shape": [3, 4],
    "dtype": "<i4",
}


@pytest.mark.parametrize(
    "change",
    [
        {"run_id": None},
        {"frame_index": None},
        {"shape": None},
        {"dtype": None},
        {"run_id": 5},
        {"frame_index": -1},
        {"frame_index": 1.0},
        {"frame_index": True},
        {"frame_index": "3"},
        {"shape": [3]},
        {"shape": [3, 4, 1]},
        {"shape": [0, 4]},
        {"shape": [-3, 4]},
        {"shape": [3.0, 4]},
        {"shape": "3x4"},
        {"dtype": "i4"},
        {"dtype": "<c8"},
        {"dtype": "<f2"},
        {"dtype": "int32"},
        {"dtype": "|i4"},
        {"dtype": "<O"},
        {"codec": "zstd"},
        {"location": "gpu"},
        {"timestamp": "now"},
        {"metadata": [1]},
        {"metadata": {"a": [1, 2]}},
        {"metadata": {"a": None}},
        {"slot": -1},
        {"location": "shm", "shm_name": "x", "slot": 0},  # no offset
        {"location": "shm", "slot": 0, "offset": 64},  # no shm_name
    ],
    ids=repr,
)
def test_frame_missing_fields_and_wrong_types(change):
    header = {k: v for k, v in {**_GOOD_FRAME, **change}.items() if v is not None}
    buffers = [] if header.get("location") == "shm" else [b"\0" * 48]
    assert _kind(_pack(header, *buffers)) == "malformed"


def test_frame_index_2_64_is_rejected():
    # msgpack cannot even hold 2**64; a sender that tries is stopped at encode, a uint64 max passes
    with pytest.raises(ProtocolError) as info:
        encode(_frame(frame_index=2**64), [np.zeros((3, 4), "<i4")])
    assert info.value.kind == "malformed" and "frame_index" in str(info.value)
    assert decode(_pack({**_GOOD_FRAME, "frame_index": 2**64 - 1}, b"\0" * 48))[0].frame_index == 2**64 - 1


@pytest.mark.parametrize(
    ("tag", "header"),
    [
        ("result", {"run_id": "r"}),
        ("result", {"run_id": "r", "frame_index": 0, "status": "maybe"}),
        ("result", {"run_id": "r", "frame_index": 0, "has_cake": 1}),
        ("result", {"run_id": "r", "frame_index": 0, "n_r": -5}),
        ("result", {"run_id": "r", "frame_index": 0, "timings": {"a": "slow"}}),
        ("eos", {"run_id": "r"}),
        ("eos", {"run_id": "r", "n_frames": 3, "counters": {"sent": 1.5}}),
        ("ack", {}),
        ("ack", {"frames": [1, -2]}),
        ("credit", {"worker": 0, "pid": 1}),
        ("gone", {"worker": "0", "pid": 1}),
        ("flushed", {"writer_pid": 1}),
        ("resent", {"worker": 0, "worker_pid": 1}),
        ("flushed", {"below": -1, "writer_pid": 1}),
        ("flushed", {"below": 3, "writer_pid": 1, "restart": "yes"}),
        ("resume", {"run_id": "r", "first_frame": 0}),
        ("resume", {"run_id": "r", "first_frame": 0, "end": 5, "pids": [-1]}),
        ("missing", {"frames": "1,2"}),
        ("heartbeat", {"role": "janitor"}),
        ("heartbeat", {"role": "worker", "state": "sleeping"}),
        ("heartbeat", {"role": "worker", "counters": {"x": None}}),
        ("stop", {"reason": 3}),
        ("request", {"command": "reboot"}),
        ("request", {"command": "status", "args": [1]}),
        ("reply", {"data": {}}),
        ("reply", {"ok": 1}),
        ("reply", {"ok": True, "data": {1: 2}}),
    ],
)
def test_other_messages_missing_fields_and_wrong_types(tag, header):
    frames = [msgpack.packb({"type": tag, "version": 1, **header}, use_bin_type=True, strict_types=False)]
    assert _kind(frames) == "malformed"


def test_encode_refuses_what_decode_would_refuse():
    with pytest.raises(ProtocolError):
        encode(Heartbeat(role="janitor"))
    with pytest.raises(ProtocolError):
        encode(ControlReply(ok=True, data={"x": object()}))
    with pytest.raises(TypeError):
        encode({"type": "stop"})
    with pytest.raises(ValueError, match="contiguous"):
        encode(_frame(shape=(3, 2)), [np.zeros((3, 4), "<i4")[:, ::2]])


# --- the Result fast path ---------------------------------------------------------------------------------------


def _outcome(decoder, frames):
    """What decoding gives: the message, each field's type and the buffer sizes, or the error's kind and text."""
    try:
        msg, buffers = decoder(frames)
    except ProtocolError as err:
        return ("error", err.kind, str(err))
    types = {f.name: type(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    return ("ok", type(msg), repr(msg), types, [b.nbytes for b in buffers])  # (repr: NaN != NaN)


def _general(frames):
    """decode through the per-field table only (the path every message but a well-formed Result takes)."""
    header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    views = [memoryview(f).cast("B") for f in frames[1:]]
    return codec._checked(header["type"], Result, header, views), views


_FIELD_VALUES = [True, False, 0, 1, -1, 2**64 - 1, 1.5, float("nan"), "", "ok", "rejected", "x", None, [1], {},
                 {"a": 1}, {"a": True}, {"a": "s"}, {"a": None}, {"a": [1]}, {"a": 1.5}]


def _result_variants():
    """Well-formed Results (every kind of buffer list) and every field of them replaced by odd values or left out,
    with the right and with wrong buffers."""
    fit, table, values = np.ones((2, 7)), np.array([[1, 3]]), np.arange(3.0)
    goods = [
        encode(_result(), result_buffers(np.zeros(5), np.zeros((5, 3)), fit)),
        encode(_result(has_cake=False, n_peaks=2, n_rois=1, n_curve_points=3),
               result_buffers(np.zeros(5), None, fit, (table, values))),
        encode(_result(has_cake=False, n_peaks=0, timings={}, metadata={}), result_buffers(np.zeros(5))),
        encode(Result(run_id="r", frame_index=2**64 - 1, status="rejected", reason="bad")),
    ]
    for frames in goods:
        header, buffers = _header(frames), list(frames[1:])
        yield frames
        yield [frames[0], *buffers[:-1]]  # a buffer short
        yield [*frames, b"\0" * 8]  # one too many
        if buffers:
            yield [frames[0], *buffers[:-1], bytes(buffers[-1].nbytes + 8)]
        for name in header:
            if name in ("type", "version"):
                continue
            yield _pack({k: v for k, v in header.items() if k != name}, *buffers)
            for value in _FIELD_VALUES:
                yield _pack({**header, name: value}, *buffers)
        yield _pack({**header, "added_later": 1}, *buffers)
        yield _pack({**header, "metadata": {"a": 1, "b": 2.5, "c": "s", "d": False}}, *buffers)


def test_result_fast_path_agrees_with_the_field_checks():
    n = 0
    for frames in _result_variants():
        assert _outcome(decode, frames) == _outcome(_general, frames), _header(frames)
        n += 1
    assert n > 1000


def test_result_fast_path_takes_a_well_formed_result_and_makes_a_frozen_message(monkeypatch):
    frames = encode(_result(n_peaks=2, n_rois=1, n_curve_points=3),
                    result_buffers(np.zeros(5), np.zeros((5, 3)), np.ones((2, 7)), (np.array([[1, 3]]), np.ones(3))))

    def walked(*args):
        raise AssertionError("the field table was walked for a well-formed Result")

    monkeypatch.setattr(codec, "_check_fields", walked)
    msg, buffers = decode(frames)
    assert msg == _result(n_peaks=2, n_rois=1, n_curve_points=3) and type(msg) is Result
    assert repr(msg) == repr(_result(n_peaks=2, n_rois=1, n_curve_points=3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.frame_index = 8
    assert dataclasses.replace(msg, frame_index=8).frame_index == 8
    assert [b.nbytes for b in buffers] == [20, 60, 112, 8, 24]
    with pytest.raises(AssertionError, match="walked"):  # anything else still goes through the table
        decode(_pack({**_header(frames), "worker": True}, *frames[1:]))


def test_result_fuzz_fast_path_agrees_with_the_field_checks():
    rng = random.Random(8)
    frames = encode(_result(), result_buffers(np.zeros(5), np.zeros((5, 3)), np.ones((2, 7))))
    for _ in range(2000):
        data = bytearray(frames[0])
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        mutated = [bytes(data), *frames[1:]]
        try:
            header = msgpack.unpackb(mutated[0], raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 - not msgpack: not the fast path's business
            continue
        if not isinstance(header, dict) or header.get("type") != "result" or header.get("version") != 1:
            continue
        assert _outcome(decode, mutated) == _outcome(_general, mutated), header


# --- fuzz ------------------------------------------------------------------------------------------------------


def _valid_messages() -> list[list]:
    return [
        encode(_frame(), [np.zeros((3, 4), "<i4")]),
        encode(_frame(location="shm", shm_name="ringstream-1-ab", slot=3, offset=256)),
        encode(_result(), result_buffers(np.zeros(5), np.zeros((5, 3)), np.zeros((2, 7)))),
        encode(Result(run_id="r", frame_index=1, status="rejected", reason="bad")),
        encode(EndOfStream(run_id="r", n_frames=3, counters={"sent": 3})),
        encode(FrameAck(frames=[1, 2])),
        encode(Credit(worker=0, pid=1, n=2)),
        encode(Heartbeat(role="ingest", counters={"sent": 1})),
        encode(Stop(reason="x")),
        encode(ControlRequest(command="status", args={"v": 1})),
        encode(ControlReply(ok=True, data={"a": [1, {"b": 2.0}]})),
    ]


def test_fuzz_mutated_headers_decode_or_raise_protocol_error():
    rng = random.Random(20240601)
    kinds: set[str] = set()
    decoded = 0
    for frames in _valid_messages():
        header = frames[0]
        for _ in range(400):
            data = bytearray(header)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                pos = rng.randrange(len(data) + 1)
                if op < 0.5 and data:
                    data[min(pos, len(data) - 1)] = rng.getrandbits(8)
                elif op < 0.75:
                    data.insert(pos, rng.getrandbits(8))
                elif data:
                    del data[min(pos, len(data) - 1)]
            if rng.random() < 0.1:
                data = data[: rng.randrange(len(data) + 1)]
            try:
                msg, _ = decode([bytes(data), *frames[1:]])
            except ProtocolError as err:
                assert err.kind in ERROR_KINDS and "\n" not in str(err)
                kinds.add(err.kind)
            else:
                assert dataclasses.is_dataclass(msg)
                decoded += 1
    assert "malformed" in kinds and "size" in kinds
    assert decoded > 0

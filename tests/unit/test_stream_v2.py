"""DECTRIS Stream V2 messages (ringstream.ingest.stream_v2) and the source's bookkeeping (ringstream.ingest.dectris),
without sockets: messages made as the detector makes them decode to the same pixels; every bad message is rejected
with the counter it belongs to; image_id gaps, duplicates, a series' end and a missed start are what the source
yields and counts."""

from __future__ import annotations

import logging

import cbor2
import numpy as np
import pytest

from ringstream.images.frame_codecs import decode_frame, framing_of
from ringstream.ingest.dectris import DectrisSource, flatten_user_data
from ringstream.ingest.dectris_sim import BAD_KINDS, bad_message
from ringstream.ingest.source_base import HeapAllocator
from ringstream.ingest.stream_v2 import (
    End,
    Image,
    Start,
    StreamV2Error,
    decode,
    decode_mask,
    encode_end,
    encode_image,
    encode_start,
)

SHAPE = (24, 20)


def frame(dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(50.0, SHAPE).astype(dtype)


def pixels(img: Image) -> np.ndarray:
    """The image's pixels, decoded as a worker decodes a frame that travelled compressed."""
    if img.codec == "none":
        return np.frombuffer(img.payload, img.dtype).reshape(img.shape)
    out = np.empty(img.shape, img.dtype)
    decode_frame(img.codec, img.payload, out, 12, img.block)
    return out


@pytest.mark.parametrize("codec", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_an_image_decodes_to_its_pixels_and_its_framing_is_the_hdf5_filters(dtype, codec):
    f = frame(dtype)
    img = decode(encode_image(4, "u4", 7, {"threshold_1": f, "threshold_2": f + 1}, codec,
                              start_time=0.25, real_time=0.001), "threshold_2")
    assert (img.image_id, img.series_id, img.series_unique_id, img.channel) == (7, 4, "u4", "threshold_2")
    assert (img.shape, img.dtype, img.codec) == (SHAPE, np.dtype(dtype), codec)
    np.testing.assert_array_equal(pixels(img), f + 1)
    assert img.real_time == pytest.approx(0.001)
    if codec != "none":  # what the ingest's frame_codecs reads from the same bytes
        name = "lz4hdf5" if codec == "lz4" else codec
        assert framing_of(name, np.frombuffer(img.payload, np.uint8), f.nbytes) == (codec, 12, img.block)


def test_the_first_channel_by_default_start_fields_mask_and_end():
    img = decode(encode_image(1, "u", 0, {"a": frame("uint16"), "b": frame("uint16", 1)}))
    assert img.channel == "a"
    mask = np.zeros(SHAPE, np.uint32)
    mask[3, 4] = 1
    start = decode(encode_start(2, "u2", 9, SHAPE, ("a",), mask, beam_center_x=10.5, detector_distance=0.2,
                                user_data={"scan": 3}))
    assert isinstance(start, Start) and (start.series_id, start.series_unique_id, start.channels) == (2, "u2", ["a"])
    assert start.fields["number_of_images"] == 9 and start.fields["beam_center_x"] == 10.5
    assert (start.fields["image_size_y"], start.fields["image_size_x"]) == SHAPE
    np.testing.assert_array_equal(decode_mask(start.pixel_masks["a"], "mask"), mask)
    assert decode(encode_end(2, "u2")) == End(2, "u2")
    with pytest.raises(StreamV2Error, match="no channel 'c'"):
        decode(encode_image(1, "u", 0, {"a": frame("uint8")}), "c")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_message_is_rejected_with_its_counter(kind):
    expected = {"garbage": "malformed", "unknown-type": "unknown_type", "column-major": "unsupported",
                "unknown-tag": "unsupported", "unknown-compression": "unsupported", "wrong-shape": None,
                "wrong-dtype": "wrong_dtype", "bad-size": "malformed"}[kind]
    msg = bad_message(kind, 1, "u", 3, frame("uint16"))
    if expected is None:  # a well-formed image of another shape: the source rejects it (below)
        assert decode(msg).shape == (SHAPE[0] - 1, SHAPE[1])
        return
    with pytest.raises(StreamV2Error) as err:
        decode(msg)
    assert err.value.counter == expected, err.value


def test_sizes_are_checked_against_the_data():
    f = frame("uint16")
    ok = encode_image(1, "u", 0, {"t": f}, "none")
    short = ok.replace(f.tobytes(), f.tobytes()[:-2])  # (the byte string's length prefix still says the full size)
    with pytest.raises(StreamV2Error):
        decode(short)
    img = cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 4, b"\0" * 40]))])
    with pytest.raises(StreamV2Error, match="element size 4, the pixels have 2 bytes"):
        decode(cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"t": img}}))
    img = cbor2.CBORTag(40, [[SHAPE[0], SHAPE[1], 1], cbor2.CBORTag(69, f.tobytes())])
    with pytest.raises(StreamV2Error, match="3 dimensions") as err:
        decode(cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"t": img}}))
    assert err.value.counter == "wrong_shape"
    with pytest.raises(StreamV2Error, match="image_id -1"):
        decode(cbor2.dumps({"type": "image", "series_id": 1, "image_id": -1, "data": {}}))


def test_user_data_as_metadata():
    assert flatten_user_data({"scan": 3, "ok": True, "pos": [1, 2]}) == {"user_data_scan": 3, "user_data_ok": 1,
                                                                        "user_data_pos": "[1, 2]"}
    assert flatten_user_data("note") == {"user_data": "note"}


class _Params:
    NrPixelsZ, NrPixelsY = SHAPE
    BC = (10.0, 12.0)
    Lsd = 200_000.0
    Wavelength = 0.5


def source(**kw) -> DectrisSource:
    s = DectrisSource("tcp://127.0.0.1:1", SHAPE, **kw)
    s.attach_ring(HeapAllocator())
    return s


def queued(s: DectrisSource) -> list:
    out = []
    while not s._queue.empty():
        out.append(s._queue.get())
    return out


def test_the_source_counts_gaps_duplicates_rejects_and_ends_the_series(caplog):
    s = source(user_data=True)
    f = frame("uint16")
    s.on_message(encode_start(5, "s5", 6, SHAPE, beam_center_x=1.0))
    for i in (0, 1, 3, 3, 2):
        s.on_message(encode_image(5, "s5", i, {"threshold_1": f}, "bslz4", user_data={"scan": 9}))
    s.on_message(bad_message("wrong-shape", 5, "s5", 4, f))
    s.on_message(bad_message("column-major", 5, "s5", 4, f))
    s.on_message(encode_end(5, "s5"))  # images 4 and 5 never came
    got = queued(s)
    assert [g.source_id for g in got] == ["0", "1", "3", ""] and got[-1].end_run == "series 5 end"
    assert got[0].new_run == "series 5" and got[0].run_meta["number_of_images"] == 6
    assert got[1].new_run == "" and got[1].run_meta == {}
    assert got[0].metadata == {"series_id": 5, "series_unique_id": "s5", "number_of_images": 6, "image_size_x": 20,
                               "image_size_y": 24, "beam_center_x": 1.0, "image_id": 0, "real_time": 0.0,
                               "user_data_scan": 9}
    assert (got[0].codec, got[0].codec_header, got[0].shape, got[0].dtype) == ("bslz4", 12, SHAPE, np.uint16)
    c = s.counters()
    assert (c["dectris_received"], c["dectris_gaps"], c["dectris_missed"], c["dectris_duplicates"]) == (3, 2, 3, 2)
    assert (c["dropped_wrong_shape"], c["dropped_unsupported"], c["dectris_series"], c["dectris_ends"]) == (1, 1, 1, 1)
    # a series whose start was missed: taken as it comes, its first image opens its run
    s.on_message(encode_image(6, "s6", 2, {"threshold_1": f}, "none"))
    (g,) = queued(s)
    assert (g.source_id, g.new_run, g.codec, g.run_meta) == ("2", "series 6 (start missed)", "none",
                                                             {"series_id": 6, "series_unique_id": "s6"})
    np.testing.assert_array_equal(g.pixels, f)
    assert s.counters()["dectris_starts_missed"] == 1


def test_a_series_pixel_mask_is_stored_and_named_by_its_frames_and_a_replacement_ingest_keeps_it(tmp_path):
    from ringstream.geometry.mask_store import load_stored_mask
    from ringstream.protocol import MASK_KEY

    mask = np.zeros(SHAPE, np.uint32)
    mask[2, 3], mask[4, 5], mask[6, 7] = 1 << 1, 1 << 31, 1 << 5  # dead (masked); virtual and undefined (kept)
    f = frame("uint16")
    s = source(pixel_mask=True, mask_store=tmp_path)
    s.on_message(encode_start(7, "s7", 3, SHAPE, pixel_mask=mask))
    s.on_message(encode_image(7, "s7", 0, {"threshold_1": f}, "bslz4"))
    (g,) = queued(s)
    digest = g.metadata[MASK_KEY]
    assert g.run_meta[MASK_KEY] == digest and s.counters()["dectris_masked_pixels"] == 1
    np.testing.assert_array_equal(load_stored_mask(tmp_path, digest, SHAPE), mask)
    # the ingest is replaced mid-series: the rest of series 7 keeps its mask; series 8 (no start seen) has none
    again = source(pixel_mask=True, mask_store=tmp_path)
    again.on_message(encode_image(7, "s7", 1, {"threshold_1": f}, "bslz4"))
    again.on_message(encode_image(8, "s8", 0, {"threshold_1": f}, "bslz4"))
    a, b = queued(again)
    assert a.metadata[MASK_KEY] == digest and a.run_meta[MASK_KEY] == digest and MASK_KEY not in b.metadata
    # a start without a mask: its series is integrated without one
    again.on_message(encode_start(9, "s9", 3, SHAPE))
    again.on_message(encode_image(9, "s9", 0, {"threshold_1": f}, "bslz4"))
    (c,) = queued(again)
    assert MASK_KEY not in c.metadata and MASK_KEY not in c.run_meta


def test_dectris_dtype_rejects_other_pixel_types():
    s = source(dtype="uint16")
    assert s.dtype == np.dtype("<u2")
    s.on_message(encode_image(1, "u", 0, {"t": frame("uint32")}, "bslz4"))
    s.on_message(encode_image(1, "u", 1, {"t": frame("uint16")}, "bslz4"))
    assert [f.source_id for f in queued(s)] == ["1"] and s.counters()["dropped_wrong_dtype"] == 1


def test_geometry_that_disagrees_with_the_parameter_file_is_warned_about(caplog):
    s = source(params=_Params())
    with caplog.at_level(logging.WARNING, "ringstream.ingest.dectris"):
        s.on_message(encode_start(1, "a", 2, SHAPE, beam_center_x=10.2, beam_center_y=12.1, detector_distance=0.2,
                                  incident_wavelength=0.5))
        assert not caplog.records
        s.on_message(encode_start(2, "b", 2, SHAPE, beam_center_x=14.0, beam_center_y=12.0, detector_distance=0.25,
                                  incident_wavelength=0.5))
    (rec,) = [r for r in caplog.records if "geometry" in r.getMessage()]
    assert "beam centre (14, 12) px vs BC (10, 12)" in rec.getMessage()
    assert "detector_distance 0.25 m vs Lsd 200000 um" in rec.getMessage()
    with caplog.at_level(logging.WARNING, "ringstream.ingest.dectris"):  # the same disagreement: not again
        s.on_message(encode_start(3, "c", 2, SHAPE, beam_center_x=14.0, beam_center_y=12.0, detector_distance=0.25,
                                  incident_wavelength=0.5))
    assert len([r for r in caplog.records if "geometry" in r.getMessage()]) == 1
    assert s.counters()["dectris_ends_missed"] == 2  # series 1 and 2 had no end


def test_the_simulators_message_template_gives_each_images_id_and_times():
    from ringstream.ingest.dectris_sim import TIME_BASE, Simulator

    f = frame("uint16")
    sim = Simulator("tcp://127.0.0.1:1", f[None], codec="lz4")
    t = sim.template(0, "lz4", 3, "u3", None, {})
    for i in (0, 7, 2**40):
        img = decode(bytes(t.message(i, i * 10, i * 10 + 5)))
        assert (img.image_id, img.series_id, img.codec) == (i, 3, "lz4")
        np.testing.assert_array_equal(pixels(img), f)
    assert img.real_time == pytest.approx(0.0009) and TIME_BASE == 100_000_000


@pytest.mark.parametrize("codec", ["bslz4", "lz4", "none"])
def test_big_byte_strings_are_views_of_the_message_and_lengths_are_checked(codec):
    from ringstream.ingest.stream_v2 import BIG_BYTES, carve

    f = np.random.default_rng(1).integers(0, 2**32, (256, 256), dtype=np.uint32)  # incompressible: > BIG_BYTES
    msg = encode_image(1, "u", 5, {"t": f}, codec)
    small, holes = carve(msg)
    assert len(holes) == 1 and holes[0].nbytes >= BIG_BYTES and len(small) < 1000
    img = decode(msg)
    assert isinstance(img.payload, memoryview) and img.payload.obj is msg  # not copied
    np.testing.assert_array_equal(pixels(img), f)
    for bad, what in ((msg[:-1], "runs past the end"), (msg + b"\0", "1 bytes after"),
                      (b"\xbf\x61a\x01\xff", "indefinite lengths")):
        with pytest.raises(StreamV2Error, match=what) as err:
            decode(bad)
        assert err.value.counter == "malformed"


def test_status_shows_the_dectris_channel():
    from ringstream.daemon.status import channel_line

    counters = dict.fromkeys(("dectris_connected", "dectris_connects", "dectris_series", "dectris_received",
                              "dectris_gaps", "dectris_missed", "dropped_malformed", "dropped_unsupported"), 1)
    line = channel_line({"source_channel": "tcp://10.0.0.5:31001",
                         "children": {"ingest": {"counters": {**counters, "dectris_received": 40,
                                                              "dropped_wrong_shape": 2}}}})
    assert line.startswith("channel dectris tcp://10.0.0.5:31001: connected (connects 1, disconnects 0), series 1")
    assert "received 40, gaps 1 (missed 1)" in line and "rejected 4 (malformed 1, unsupported 1, shape 2, type 0)" in line

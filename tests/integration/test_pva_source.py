"""The PVA source against a real pvapy server on loopback (an in-process ``pvaccess.PvaServer`` serving NTNDArray).

Proves: every pixel type and several shapes arrive bit-exact in the ring slot, with uniqueId, timeStamp and the
configured NDAttributes; compressed frames (lz4, bslz4 with and without the 12-byte header) travel compressed and
decode bit-exact, blosc ones are decoded by the source; a uniqueId gap of k frames counts k, a reset and a duplicate are noticed; wrong shapes and types are
rejected and counted; a full ring drops and counts. The EPICS variables are loopback with session-unique ports.
"""

from __future__ import annotations

import itertools
import math
import os
import time

import numpy as np
import pytest

pva = pytest.importorskip("pvaccess")
from pva_common import Consumer, hdf5_chunk, ntnd, session_epics_env  # noqa: E402

from ringstream.ingest.pva import PvaSource  # noqa: E402

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def loopback_epics(pytestconfig):
    """Every EPICS address variable on loopback, non-default ports, for the whole session (pvapy's client
    context reads them once per process)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in session_epics_env(pytestconfig).items():
            mp.setenv(key, value)
        yield dict(os.environ)


@pytest.fixture(scope="module")
def server(loopback_epics):
    srv = pva.PvaServer()
    yield srv
    srv.stop()


def channel(server) -> str:
    name = f"rstest:{os.getpid()}:{next(_names)}:Image"
    server.addRecord(name, pva.NtNdArray())
    return name


def frame(dtype: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1e4).astype(dt)
    info = np.iinfo(dt)
    img = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    img.flat[0], img.flat[-1] = info.min, info.max
    return img


def source_for(server, shape, dtype=None, **kw):
    name = channel(server)
    n_slots = kw.pop("n_slots", 8)
    src = PvaSource(name, shape, dtype=dtype, queue_size=kw.pop("queue_size", 32), **kw)
    cons = Consumer(src, n_slots=n_slots)
    cons.idle(0.3)  # subscribed and connected before anything is published
    assert src.counters()["pva_connected"] == 1
    return name, src, cons


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", [(5, 7), (128, 96), (1679, 1475)])
def test_every_dtype_arrives_bit_exact(server, shape):
    dtypes = DTYPES if shape != (1679, 1475) else ("int32", "uint16", "float64")
    name, src, cons = source_for(server, shape, attributes=("omega", "I0"))
    try:
        sent = []
        for k, dt in enumerate(dtypes):
            img = frame(dt, shape, k)
            server.update(name, ntnd(100 + k, img, {"omega": 0.25 * k, "I0": 1000 + k, "ignored": 3.0}))
            sent.append(img)
            got = cons.take(1)
            assert len(got) == 1, f"{dt}: nothing received"
            pixels, sid, ts, meta, _slot = got[0]
            assert pixels.dtype == img.dtype and pixels.shape == shape
            np.testing.assert_array_equal(pixels, img)
            assert sid == str(100 + k)
            assert abs(ts - time.time()) < 5
            assert meta == {"omega": 0.25 * k, "I0": 1000 + k}
        c = src.counters()
        assert c["pva_received"] == len(dtypes) and c["pva_gaps"] == 0 and c["dropped_wrong_dtype"] == 0
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_compressed_frames_decode_bit_exact(server):
    bitshuffle = pytest.importorskip("bitshuffle")
    blosc = pytest.importorskip("blosc")
    lz4_block = pytest.importorskip("lz4.block")
    import hdf5plugin

    shape = (256, 200)
    name, src, cons = source_for(server, shape)
    try:
        cases = []
        for dt in ("uint16", "int32", "uint32", "float32"):
            img = np.random.default_rng(5).poisson(20.0, shape).astype(dt)  # counts: compressible
            img.flat[::997] = frame(dt, (img.size,), 6)[::997]  # and a few values of every magnitude
            cases += [
                ("lz4", img, lz4_block.compress(img.tobytes(), store_size=False)),
                ("bslz4", img, bitshuffle.compress_lz4(img.reshape(-1)).tobytes()),  # NDPluginCodec: no header
                ("bslz4", img, hdf5_chunk(img, hdf5plugin.Bitshuffle(cname="lz4"))),  # EIGER: 12-byte header
                ("blosc", img, blosc.compress(img.tobytes(), typesize=img.dtype.itemsize, shuffle=blosc.SHUFFLE)),
            ]
        for uid, (codec, img, payload) in enumerate(cases, start=1):
            assert len(payload) < img.nbytes
            server.update(name, ntnd(uid, img, codec=codec, payload=payload))
            got = cons.take(1)
            assert got, f"frame {uid} ({codec}, {img.dtype}) not received"
            assert got[0][0].dtype == img.dtype
            np.testing.assert_array_equal(got[0][0], img, err_msg=f"{codec} {img.dtype}")
        assert src.counters()["dropped_decode_error"] == 0
        assert cons.codecs == [c if c != "blosc" else "none" for c, _, _ in cases]  # the ingest decoded only blosc
        # a truncated one travels as it came (the worker rejects it), a blosc one that does not decode is rejected
        # here with its reason, and the stream goes on
        img = cases[1][1]
        server.update(name, ntnd(len(cases) + 1, img, codec="bslz4", payload=cases[1][2][:-100]))
        server.update(name, ntnd(len(cases) + 2, img, codec="blosc", payload=cases[3][2][:-100]))
        server.update(name, ntnd(len(cases) + 3, img, codec="lz4", payload=cases[0][2]))
        got = cons.take(2)
        assert got[0][0] is None and got[0][1] == str(len(cases) + 1)
        np.testing.assert_array_equal(got[1][0], img)
        assert got[1][1] == str(len(cases) + 3)
        assert src.counters()["dropped_decode_error"] == 1
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_unique_id_gaps_resets_and_duplicates(server):
    shape = (16, 24)
    name, src, cons = source_for(server, shape, dtype="uint16")
    try:
        img = frame("uint16", shape, 0)
        ids = [1, 2, 3, 4, 5, 12, 13, 13, 20, 1, 2]  # gap 6, duplicate 13, gap 6, reset to 1
        for uid in ids:
            server.update(name, ntnd(uid, img))
        got = cons.take(len(ids) - 1)
        assert [g[1] for g in got] == ["1", "2", "3", "4", "5", "12", "13", "20", "1", "2"]
        c = src.counters()
        assert (c["pva_gaps"], c["pva_missed"], c["pva_duplicates"], c["pva_resets"]) == (2, 6 + 6, 1, 1)
        assert c["pva_received"] == len(ids) - 1
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_a_jump_in_unique_id_across_a_reconnect_says_so(server, caplog):
    """A gap at the first frame after a reconnect is counted as any gap, and its warning says it was across the
    reconnect (frames published while not connected, or a restarted server that published before this connection):
    the run goes on. That warning is not held back by the rate limit of the gap warnings before it; later gaps are
    (counted, one warning per 10 s). The reconnect is pvapy's connection callback, called here as pvapy calls it when
    the IOC comes back."""
    shape = (8, 8)
    name, src, cons = source_for(server, shape, dtype="uint16")
    try:
        img = frame("uint16", shape, 0)
        for uid in (1, 2, 5):  # a gap of 2
            server.update(name, ntnd(uid, img))
        cons.take(3)
        src.on_connection(False)
        src.on_connection(True)
        for uid in (40, 41, 45):  # across the reconnect: 34 missed; then a gap of 3 within the rate limit
            server.update(name, ntnd(uid, img))
        assert [g[1] for g in cons.take(3)] == ["40", "41", "45"]
        c = src.counters()
        assert (c["pva_connects"], c["pva_disconnects"], c["pva_gaps"], c["pva_missed"], c["pva_resets"]) == \
            (2, 1, 3, 2 + 34 + 3, 0)
        text = caplog.text
        assert f"PVA channel {name}: uniqueId 2 -> 5: 2 frame(s) sent by the detector never arrived (2 in all)" in text
        assert f"PVA channel {name}: uniqueId 5 -> 40 across the reconnect: 34 frame(s) published while not " \
               "connected never arrived (36 in all); the count did not go back, so this run goes on" in text
        assert "uniqueId 41 -> 45" not in text
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_wrong_shape_and_type_rejected_and_counted(server, caplog):
    shape = (32, 48)
    name, src, cons = source_for(server, shape, dtype="int32")
    try:
        good = frame("int32", shape, 1)
        server.update(name, ntnd(1, good))
        server.update(name, ntnd(2, frame("int32", (48, 32), 2)))  # transposed
        server.update(name, ntnd(3, frame("int32", (32, 47), 3)))
        server.update(name, ntnd(4, frame("uint16", shape, 4)))  # right shape, wrong type
        server.update(name, ntnd(5, good))
        got = cons.take(2)
        assert [g[1] for g in got] == ["1", "5"]
        np.testing.assert_array_equal(got[1][0], good)
        c = src.counters()
        assert c["dropped_wrong_shape"] == 2 and c["dropped_wrong_dtype"] == 1 and c["pva_received"] == 5
        text = caplog.text
        assert "frame uniqueId 2: shape (48, 32) (rows, cols) differs from the detector's (NrPixelsZ, NrPixelsY) " \
               "= (32, 48); rejected" in text
        assert "frame uniqueId 4: pixel type uint16 differs from [source] pva_dtype int32; rejected" in text
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_missing_attribute_is_nan_and_counted(server):
    shape = (8, 8)
    name, src, cons = source_for(server, shape, attributes=("omega", "I0"))
    try:
        server.update(name, ntnd(1, frame("uint8", shape, 0), {"omega": 1.5}))
        (got,) = cons.take(1)
        assert got[3]["omega"] == 1.5 and math.isnan(got[3]["I0"])
        assert src.counters()["pva_attribute_missing"] == 1
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_full_ring_drops_and_counts(server, monkeypatch):
    import ringstream.ingest.pva as pva_mod

    monkeypatch.setattr(pva_mod, "RING_WAIT_S", 0.05)
    shape = (64, 64)
    name, src, cons = source_for(server, shape, dtype="uint16", n_slots=2)
    try:
        img = frame("uint16", shape, 0)
        for uid in range(1, 6):  # nobody releases: 2 slots fill, 3 frames find none
            server.update(name, ntnd(uid, img))
        deadline = time.monotonic() + 5
        while src.counters()["dropped_ring_full"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        c = src.counters()
        assert c["dropped_ring_full"] == 3 and c["pva_received"] == 5
        got = cons.take(2)
        assert [g[1] for g in got] == ["1", "2"]
    finally:
        cons.close()


@pytest.mark.timeout(60)
def test_a_stalled_pipeline_backs_up_into_pvapy_and_its_overruns_are_counted(server, monkeypatch):
    """The callback waits for a slot (the ring stays full: nobody releases), so the server-side queue
    (queueSize=2) overflows: pvapy reports overruns, the uniqueId gaps count the frames lost, and every uniqueId up
    to the last one that arrived is accounted for as received or missed."""
    import ringstream.ingest.pva as pva_mod

    monkeypatch.setattr(pva_mod, "RING_WAIT_S", 0.1)
    shape = (1024, 1024)  # 2 MiB frames: more than the socket buffers hold
    name, src, cons = source_for(server, shape, dtype="uint16", n_slots=2, queue_size=2)
    try:
        img = frame("uint16", shape, 0)
        for uid in range(1, 31):
            server.update(name, ntnd(uid, img))
            time.sleep(0.005)
        last, still = None, 0
        while still < 10:  # until nothing changed for 0.5 s
            time.sleep(0.05)
            now = src.counters()
            still = still + 1 if now == last else 0
            last = now
        c = src.counters()
        assert c["pva_overruns"] >= 1 and c["pva_gaps"] >= 1
        assert c["pva_received"] + c["pva_missed"] == src._last_id
        assert c["dropped_ring_full"] == c["pva_received"] - 2
        assert [g[1] for g in cons.take(2)] == ["1", "2"]
    finally:
        cons.close()

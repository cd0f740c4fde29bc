"""Whole omega sums and single-frame cakes travel once, compressed by the worker: the OmegaPartial (or the Result)
carries the HDF5 and zarr chunks the files store, the codec checks their headers, and the writer places them as they
came (no decompression, no second compression), the stored values the float64 sums rounded once to float32."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
from outputs_common import N_PEAKS, make, records

from ringstream.compression import decode_hdf5_chunk, hdf5_chunk, zarr_compressor
from ringstream.protocol import OmegaPartial, ProtocolError, Result, decode, encode, result_buffers
from ringstream.workers.compress import cake_chunks, sum_chunks
from ringstream.writer.outputs import RunOutputs, record_from_result
from ringstream.writer.storage import Chunks


def partial(group: int, n_r: int, n_eta: int, chunks: list, **kw) -> OmegaPartial:
    return OmegaPartial(run_id="r", group=group, n_frames=1, first_frame=group, last_frame=group, frames=[group],
                        n_r=n_r, n_eta=n_eta, dtype="<f4", compressed=True, **kw)


def test_the_worker_chunks_are_the_files_chunks_and_nan_is_zero():
    a = (np.random.default_rng(1).poisson(200, (7, 5)) / 3).astype(np.float32)
    a[2, 3] = np.nan
    h5, z = sum_chunks(a, zarr=True)
    clean = np.nan_to_num(a)
    assert h5 == hdf5_chunk(clean) and z == zarr_compressor().encode(clean)
    np.testing.assert_array_equal(decode_hdf5_chunk(h5, (7, 5), "<f4"), clean)
    assert len(sum_chunks(a, zarr=False)) == 1  # no zarr.zip: the HDF5 chunk only


def test_a_compressed_partial_round_trips_and_a_wrong_chunk_is_one_size_error():
    a = np.arange(35, dtype=np.float32).reshape(7, 5)
    h5, z = sum_chunks(a, zarr=True)
    msg, bufs = decode(encode(partial(4, 7, 5, [h5, z]), [h5, z]))
    assert msg.compressed and [bytes(b) for b in bufs] == [h5, z]
    other = sum_chunks(np.zeros((7, 4), np.float32), zarr=True)
    for bad, says in (([h5, other[1]], "its zarr chunk's header says 112 bytes, expected 140"),
                      ([other[0]], "its hdf5 chunk's header says 112 bytes, expected 140"),
                      ([h5, z, z], "3 buffers"), ([b"short"], "says -1 bytes")):
        frames = encode(partial(4, 7, 5, []), [h5])
        with pytest.raises(ProtocolError) as e:
            decode([frames[0], *bad])
        assert e.value.kind == "size" and "compressed omegasum of group 4" in str(e.value) and says in str(e.value)
        with pytest.raises(ProtocolError):  # the sender's mistake fails at the sender
            encode(partial(4, 7, 5, []), bad)


def test_the_writer_places_the_workers_chunks_as_they_came(tmp_path):
    p, imap = make("OmegaSumFrames 1\n")
    recs = records(5, imap, seed=2)
    out = RunOutputs(tmp_path / "w.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "w.zarr.zip",
                     sums_from_workers=True, expected_frames=5)
    sent = {}
    shape = (imap.n_r, imap.n_eta)
    for r in recs:
        out.append(type(r)(r.frame_index, r.lineout, r.source_id, r.timestamp, None, None, None, r.metadata))
        total = np.float32(r.cake.astype(np.float64))  # the group's whole sum, rounded once, as the worker does
        with_zarr = r.frame_index != 3  # (a worker of a run without a zarr.zip: the writer makes that chunk)
        sent[r.frame_index] = sum_chunks(total, with_zarr)
        out.add_partial(r.frame_index, 1, Chunks.made(*sent[r.frame_index], *(() if with_zarr else (None,)),
                                                      shape, "<f4"))
    with pytest.raises(ValueError, match="float64, the run stores float32"):  # a dtype not the run's: refused
        out.add_partial(5, 1, Chunks.made(hdf5_chunk(np.zeros(shape)), None, shape, "<f8"))
    out.close(True)
    with h5py.File(tmp_path / "w.h5") as f:
        o = f["entry/omega_sum"]
        assert list(o["n_frames"][:]) == [1] * 5 and o.attrs["omega_sum_frames"] == 1
        for g, r in enumerate(recs):
            assert o["I"].id.read_direct_chunk((g, 0, 0))[1] == sent[g][0]  # the bytes placed, not made again
            np.testing.assert_array_equal(o["I"][g], r.cake)  # one float32 cake: its sum is itself
    with zipfile.ZipFile(tmp_path / "w.zarr.zip") as z:
        for g, r in enumerate(recs):
            chunk = z.read(f"OmegaSumFrame/LastFrameNumber_{g}/0.0")
            if g not in (0, 3):  # (the first group's members are zarr's own; group 3 came without its zarr chunk)
                assert chunk == sent[g][1]
            np.testing.assert_array_equal(np.frombuffer(zarr_compressor().decode(chunk), "<f4").reshape(shape),
                                          r.cake)


def test_a_sum_that_came_whole_takes_no_other_part(tmp_path):
    p, imap = make("OmegaSumFrames 2\n")
    out = RunOutputs(tmp_path / "x.h5", imap, p, engine_name="cpu", sums_from_workers=True)
    shape = (imap.n_r, imap.n_eta)
    z = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match="1 frames, a whole group has 2"):
        out.add_partial(0, 1, Chunks.made(*sum_chunks(z, False), None, shape, "<f4"))
    out.add_partial(0, 2, Chunks.made(*sum_chunks(z, False), None, shape, "<f4"))
    with pytest.raises(ValueError, match="the group's whole sum came already"):
        out.add_partial(0, 1, np.zeros(shape))
    out.close(True)


def test_a_compressed_cake_travels_in_the_result_and_is_placed_as_it_came(tmp_path):
    p, imap = make("Write2D 1\nOmegaSumFrames 1\n")
    recs = records(4, imap, seed=4)
    recs[2].cake[1, 2] = np.nan  # (stored as NaN in the cake, as 0 in its sum)
    out = RunOutputs(tmp_path / "c.h5", imap, p, engine_name="cpu", zarr_path=tmp_path / "c.zarr.zip",
                     expected_frames=4, n_peaks=N_PEAKS)
    sent = {}
    for r in recs:
        packed = cake_chunks(r.cake, "<f4", zarr=True)
        sent[r.frame_index] = packed
        bufs = result_buffers(r.lineout, None, r.fit, r.curves)
        bufs[1:1] = packed
        msg = Result(run_id="r", frame_index=r.frame_index, n_r=imap.n_r, n_eta=imap.n_eta, has_cake=True,
                     cake_chunks=3, n_peaks=len(r.fit), n_rois=len(r.curves[0]), n_curve_points=len(r.curves[1]),
                     metadata=dict(r.metadata))
        got, views = decode(encode(msg, bufs))
        rec = record_from_result(got, views)
        rec.frame_index = r.frame_index
        out.append(rec)
    wide = record_from_result(*decode(encode(msg, [bufs[0], *cake_chunks(recs[0].cake, "<f8", True), *bufs[4:]])))
    problem = out.packed_cake_problem(wide.cake)  # float64 chunks in a float32 run: refused, with why
    assert problem == "a compressed cake of float64; the run stores float32, OmegaSumFrames 1"
    wide.frame_index = 4
    with pytest.raises(ValueError, match=problem):
        out.append(wide)
    frames = encode(msg, bufs)
    with pytest.raises(ProtocolError, match=r"the cake's chunk headers say \[.*\] bytes, expected") as e:
        decode([frames[0], frames[1], frames[2], sum_chunks(np.zeros((2, 2), np.float32), False)[0], *frames[4:]])
    assert e.value.kind == "size"
    out.close(True)
    with h5py.File(tmp_path / "c.h5") as f:
        cakes, sums = f["cake/data/I"], f["entry/omega_sum/I"]
        for k, r in enumerate(recs):
            assert cakes.id.read_direct_chunk((k, 0, 0))[1] == sent[k][0]  # the worker's bytes, placed
            assert sums.id.read_direct_chunk((k, 0, 0))[1] == sent[k][1]
            np.testing.assert_array_equal(cakes[k], r.cake.T)  # NaN where it was
            np.testing.assert_array_equal(sums[k], np.nan_to_num(r.cake))  # the float32 cake is its own sum
    with zipfile.ZipFile(tmp_path / "c.zarr.zip") as z:
        for k in (1, 2, 3):  # (the first group's members are zarr's own)
            assert z.read(f"OmegaSumFrame/LastFrameNumber_{k}/0.0") == sent[k][2]


def test_the_worker_sends_its_sums_compressed_in_the_order_they_fell_due():
    from ringstream.protocol import FrameHeader
    from ringstream.workers.compress import SumCompressor
    from ringstream.workers.omega import OmegaPartials
    from ringstream.workers.process import _Worker

    w = _Worker(None, 1)
    w.partials, w.stored_dtype, w.compress_sums, w.compressing = OmegaPartials(1, 7, 5), "<f4", True, \
        SumCompressor(zarr=True)
    w.n_r, w.n_eta, w.pid, w.results = 7, 5, 99, "results-socket"
    sent = []
    w.send = lambda sock, msg, buffers=(): sent.append((sock, msg, [bytes(b) for b in buffers]))
    cakes = np.random.default_rng(3).random((6, 7, 5), dtype=np.float32)
    for k in range(6):
        w.partials.add(FrameHeader(run_id="r", frame_index=k, shape=(1, 1), dtype="<i4"), cakes[k])
        w.send_partials()  # (group k - 1 falls due when frame k arrives; it goes once compressed)
    w.send_partials(idle=True)  # idle: every sum due goes, compressed
    assert [m.group for _, m, _ in sent] == list(range(6)) and not w.compressing
    for k, (sock, m, bufs) in enumerate(sent):
        assert sock == "results-socket" and m.compressed and m.dtype == "<f4" and m.frames == [k]
        assert bufs == sum_chunks(cakes[k], zarr=True)
    assert len(w.kept) == 6 and w.counters["omega_partials"] == 6


def test_a_sum_may_travel_with_its_blocks_starts_of_which_the_writer_makes_the_zarr_chunk(tmp_path):
    """With a zarr.zip whose chunks carry the HDF5 chunk's blocks over, a worker sends the HDF5 chunk and the
    starts of its blocks (``block_starts``): the codec checks their number, the writer makes the zarr chunk of them
    without walking the blocks, and checks them against the chunk (starts that are not its blocks' are refused)."""
    from ringstream.compression import block_starts, zarr_from_hdf5, zarr_of_hdf5

    a = np.random.default_rng(6).poisson(300, (64, 72)).astype(np.float32)  # 18,432 bytes: 3 blocks of 8 kB
    h5, starts = sum_chunks(a, zarr=False, starts=True)
    assert h5 == hdf5_chunk(a) and list(starts) == list(block_starts(h5)) and len(starts) == 3
    assert starts[0] == 12 and zarr_of_hdf5(h5, 4, starts).tobytes() == zarr_from_hdf5(h5, 4)
    msg, bufs = decode(encode(partial(2, 64, 72, [], block_starts=True), [h5, starts]))
    assert msg.block_starts and bytes(bufs[1]) == starts.tobytes()
    with pytest.raises(ProtocolError, match="the starts of its 3 blocks \\(12 bytes\\)"):
        decode(encode(partial(2, 64, 72, [], block_starts=True), [h5, starts])[:-1] + [starts[:2].tobytes()])
    wrong = starts.copy()
    wrong[1] += 1
    with pytest.raises(ValueError, match="the block starts given are not its blocks'"):
        zarr_of_hdf5(h5, 4, wrong)
    with pytest.raises(ValueError, match="2 block starts given for its 3 blocks"):
        zarr_of_hdf5(h5, 4, starts[:2])
    chunks = Chunks.made(bufs[0], None, (64, 72), "<f4", starts=bufs[1])
    assert zarr_compressor().decode(chunks.zarr_member().tobytes()) == a.tobytes()
    assert bytes(chunks.zarr()) == zarr_from_hdf5(h5, 4)

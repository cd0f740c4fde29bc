"""Omega-sum grouping and stamps, the OmegaPartial message, and repairing a file a killed writer left."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from outputs_common import N_PEAKS, make, records

from ringstream.errors import InputError
from ringstream.params import parse_params
from ringstream.protocol import OmegaPartial, ProtocolError, decode, encode
from ringstream.writer.omega import OmegaStamps, OmegaSums, name_digits
from ringstream.writer.repair import clear_status_flags, lookup3, repair


def test_lookup3_matches_the_reference_vectors():
    # lookup3.c driver: hashlittle("", 0) = 0xdeadbeef; "Four score and seven years ago" with 0 and 1
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago", 0) == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_omega_partial_round_trip_and_size_check():
    msg = OmegaPartial(run_id="r", group=3, n_frames=2, first_frame=6, last_frame=8, worker=1, n_r=4, n_eta=3)
    buf = np.arange(12, dtype="<f8").reshape(4, 3)
    back, views = decode(encode(msg, [buf]))
    assert back == msg
    np.testing.assert_array_equal(np.frombuffer(views[0], "<f8").reshape(4, 3), buf)
    with pytest.raises(ProtocolError) as err:
        encode(msg, [buf[:2]])
    assert err.value.kind == "size" and "n_r x n_eta <f8" in str(err.value)


def test_a_whole_groups_partial_travels_in_the_stored_dtype():
    """A partial that is its group's whole sum goes as float32 (half the bytes); the size check follows its dtype."""
    msg = OmegaPartial(run_id="r", group=3, n_frames=1, first_frame=3, last_frame=3, n_r=4, n_eta=3, dtype="<f4")
    buf = np.arange(12, dtype="<f4").reshape(4, 3)
    frames = encode(msg, [buf])
    assert sum(memoryview(f).nbytes for f in frames[1:]) == 48
    back, views = decode(frames)
    assert back == msg and back.dtype == "<f4"
    np.testing.assert_array_equal(np.frombuffer(views[0], back.dtype).reshape(4, 3), buf)
    with pytest.raises(ProtocolError) as err:  # float64 bytes under a float32 header
        encode(msg, [buf.astype("<f8")])
    assert err.value.kind == "size" and "n_r x n_eta <f4" in str(err.value)
    with pytest.raises(ProtocolError) as err:
        encode(OmegaPartial(run_id="r", group=3, n_frames=1, n_r=4, n_eta=3, dtype="<f2"), [buf])
    assert err.value.kind == "malformed" and "dtype" in str(err.value)


def test_group_completion_waits_for_every_integrated_frame():
    s = OmegaSums(3, (2, 2))
    one = np.ones((2, 2))
    for i in range(3):
        s.note_frame(i, ok=(i != 1), omega=10.0 + i)
    s.add_partial(0, 1, one)
    assert s.pop_complete() == [] and s.waiting() == 1  # frames 0 and 2 integrated, one summed
    s.add_partial(0, 1, 2 * one)
    (g,) = s.pop_complete()
    assert (g.n_frames, g.first_frame, g.last_frame, g.first_omega, g.last_omega) == (2, 0, 2, 10.0, 12.0)
    np.testing.assert_array_equal(g.sum, 3 * one)
    with pytest.raises(ValueError, match="after the group was written"):
        s.add_partial(0, 1, one)
    s.note_frame(3, True, 13.0)
    s.add_cake(3, np.full((2, 2), np.nan))  # NaN counts as 0 (GSAS-II reads no NaN)
    (last,) = s.pop_all()
    assert last.n_frames == 1 and last.name(4) == "LastFrameNumber_0003" and not np.isnan(last.sum).any()
    assert OmegaSums(-1, (1, 1)).group_of(10**12) == 0 and name_digits(1000) == 3 and name_digits(0) == 9


def test_sums_are_float64_sums_from_zero_bit_for_bit_whatever_arrives_first():
    rng = np.random.default_rng(4)
    cakes = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(3)]
    cakes[0][0, 0], cakes[0][1, 1] = -0.0, 1e-45  # the first contribution: -0.0 becomes 0.0 as in 0.0 + x
    partial = rng.normal(size=(3, 2))
    partial[2, 0] = -0.0
    s = OmegaSums(3, (3, 2))
    for i, c in enumerate(cakes):
        s.note_frame(i, True, 0.0)
        s.add_cake(i, c)
    s.note_frame(3, True, 0.0)
    s.add_partial(1, 1, partial)
    g0, g1 = s.pop_all()
    want0 = np.zeros((3, 2))
    for c in cakes:
        want0 += c.astype(np.float64)
    assert g0.sum.dtype == np.float64 and g0.sum.tobytes() == want0.tobytes()
    assert np.signbit(g0.sum[0, 0]) == np.signbit(0.0 + cakes[0][0, 0].astype(np.float64) + cakes[1][0, 0]
                                                   + cakes[2][0, 0])
    assert g1.sum.tobytes() == (np.zeros((3, 2)) + partial).tobytes() and not np.signbit(g1.sum[2, 0])
    empty = OmegaSums(3, (3, 2))
    empty.note_frame(0, True, 0.0)
    assert empty.waiting(end=1) == 1 and empty.pop_all() == []  # a frame noted, nothing summed: no group


def test_omega_stamps_precedence():
    base = "NrPixelsY 8\nNrPixelsZ 8\nLsd 1e6\npx 200\nBC 4 4\nRMin 1\nRMax 4\nRBinSize 1\n"
    assert OmegaStamps(parse_params(base))(7) == 7.0  # nothing given: the frame index (MIDAS)
    ramp = OmegaStamps(parse_params(base + "OmegaStart -5\nOmegaStep 0.25\n"))
    assert ramp(8) == -3.0 and ramp(8, {"omega": 1.5}) == 1.5  # the source's omega wins
    assert OmegaStamps(parse_params(base + "Omega 30\nOmegaStep 1\n"))(4) == 30.0


_KILL = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from outputs_common import make, records, N_PEAKS
    from ringstream.writer.outputs import RunOutputs
    p, imap = make("Write2D 1\\nOmegaSumFrames 4\\n")
    out = RunOutputs({path!r}, imap, p, engine_name="cpu", n_peaks=N_PEAKS, block=4)
    recs = records(23, imap)
    for r in recs[:13]:
        out.append(r)
    out.flush()             # 13 frames published
    for r in recs[13:]:
        out.append(r)       # 10 more: 8 in the datasets (two blocks), 2 buffered, none flushed
    os._exit(9)             # the writer dies holding the file in SWMR-write mode
""")


def test_repair_a_file_a_killed_writer_left(tmp_path):
    path = tmp_path / "k.h5"
    tests = os.path.dirname(__file__)
    subprocess.run([sys.executable, "-c", _KILL.format(tests=tests, path=str(path))], check=False, timeout=60)
    with pytest.raises(OSError):
        h5py.File(path, "r")  # the status flags block a normal open
    report = repair(path)
    assert report.flags_cleared and report.frames >= 13 and not report.run_complete
    p, imap = make("Write2D 1\nOmegaSumFrames 4\n")
    recs = records(23, imap)
    with h5py.File(path, "r") as f:
        e = f["entry"]
        n = int(e.attrs["frames_written"])
        assert n == report.frames and not e.attrs["run_complete"]
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(n))
        for name in ("data/I", "fit/peaks", "data/timestamp", "data/source_id", "data/omega",
                     "data/metadata/metadata_json", "/cake/data/I"):
            assert e[name].shape[0] == n, name
        np.testing.assert_array_equal(e["data/I"][:], np.stack([r.lineout for r in recs[:n]]))
        np.testing.assert_array_equal(e["fit/peaks"][:], np.stack([r.fit for r in recs[:n]]))
        assert e["fit/curve_rois"][-1, 0] == n - 1
        assert e["fit/curve_values"].shape[0] == int(e["fit/curve_rois"][:, 2].sum())
        assert list(e["omega_sum/last_frame"][:]) == [3, 7, 11][: len(e["omega_sum/last_frame"])]
        assert "LastFrameNumber_000000003" in e["omega_sum/named"]
    assert not clear_status_flags(path)  # a second repair finds nothing to clear
    assert repair(path).frames == n

    # another process holds the file's lock: repair waits for it to go, and names the file when it does not
    hold = ("import h5py, sys, time\nf = h5py.File(sys.argv[1], 'r')\nprint('open', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n")
    reader = subprocess.Popen([sys.executable, "-c", hold, str(path), "0.6"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError):
            h5py.File(path, "r+")  # HDF5 itself does not wait
        assert repair(path).frames == n  # returns once the reader has closed the file
        assert time.monotonic() - t0 >= 0.5 and reader.wait(10) == 0
    finally:
        reader.kill()
        reader.wait(10)
    reader = subprocess.Popen([sys.executable, "-c", hold, str(path), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        import ringstream.writer.repair as rep
        old, rep.LOCK_WAIT_S = rep.LOCK_WAIT_S, 0.3
        try:
            with pytest.raises(InputError, match=r"k\.h5: locked by another process for 0\.3 s"):
                repair(path)
        finally:
            rep.LOCK_WAIT_S = old
    finally:
        reader.kill()
        reader.wait(10)


def test_repair_keeps_no_group_of_frames_it_cut(tmp_path):
    """A writer killed after a flush wrote rows and groups, before @frames_written counted the rows: repair cuts to
    the count, and the groups of the frames cut go with them (a group's sum holds those frames)."""
    from ringstream.writer.outputs import RunOutputs

    p, imap = make("Write2D 0\nOmegaSumFrames 4\n")
    out = RunOutputs(tmp_path / "g.h5", imap, p, engine_name="cpu", n_peaks=N_PEAKS)
    for r in records(12, imap):
        out.append(r)
    out.close(run_complete=False)
    with h5py.File(tmp_path / "g.h5", "r+") as f:
        assert list(f["entry/omega_sum/last_frame"][:]) == [3, 7, 11]
        for obj in (f["entry"], f["entry/data/I"]):
            obj.attrs.modify("frames_written", np.int64(6))  # the count of the flush before
    report = repair(tmp_path / "g.h5")
    assert report.frames == 6 and report.groups == 1
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["entry/data/I"].shape[0] == 6 and list(f["entry/omega_sum/last_frame"][:]) == [3]
        assert all(f["entry/omega_sum"][k].shape[0] == 1 for k in ("I", "n_frames", "first_frame", "name"))


def test_repair_refuses_what_it_cannot_fix(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(InputError, match="x.h5: not an HDF5 file"):
        repair(tmp_path / "x.h5")
    with pytest.raises(InputError, match="no such file"):
        repair(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w", libver="latest") as f:
        f["a"] = 1
    with pytest.raises(InputError, match="not a ringstream results file"):
        repair(tmp_path / "other.h5")



def test_a_file_shorter_than_its_recorded_end_is_given_back_its_length(tmp_path):
    # a full disk: HDF5 recorded a larger end of file than the last write reached; h5py then refuses the file
    path = tmp_path / "short.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("x", data=np.arange(1000.0))
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        block = bytearray(fh.read(12 + 4 * 8 + 4))
        assert block[8] in (2, 3) and block[9] == 8
        eof = int.from_bytes(block[28:36], "little")
        block[28:36] = (eof + 4096).to_bytes(8, "little")
        block[44:48] = lookup3(bytes(block[:44])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(block)
    with pytest.raises(OSError, match="truncated file"):
        h5py.File(path, "r")
    assert clear_status_flags(path) is False  # the flags were clear; the length is restored all the same
    assert path.stat().st_size == eof + 4096 and eof == size
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(1000.0))


class _SumsOut:
    """A run's outputs as the writer's partial-sum handling sees them: the real :class:`OmegaSums` behind
    ``add_partial``, and every call recorded."""

    def __init__(self) -> None:
        self.sums = OmegaSums(4, (2, 3))
        self.calls: list[tuple[int, int]] = []

    def add_partial(self, group: int, n_frames: int, partial: np.ndarray) -> None:
        self.sums.add_partial(group, n_frames, partial)
        self.calls.append((int(group), int(n_frames)))


def _partial_msg(run_id: str, group: int, frames: list[int], worker: int):
    return OmegaPartial(run_id=run_id, group=group, n_frames=len(frames), first_frame=0, last_frame=0,
                        worker=worker, worker_pid=100 + worker, frames=frames, n_r=2, n_eta=3), [np.ones((2, 3))]


def test_a_partial_sum_goes_to_its_own_run_even_before_the_writer_knows_that_run():
    """The sequence of messages that gave the failure of test_kill_9_of_the_writer_in_other_settings[runs] (run 3's
    group 6 counting 6 frames of 4): runs of 48 frames, ``OmegaSumFrames 4``; the writer was killed while run 3
    (frames 96..143) was its current run, the workers already at run 4, which it had not begun. The replacement
    reopened run 3 at frame 120 (its group 6) and knows no run 4. A worker's new partial of run 4's group 6 (frames
    168, 169) reaches it first: the worker sends it at once, while run 4's RunStart comes again from the ingest only
    once the new writer's Flushed has gone to it. That partial must wait for run 4, never go to run 3's group 6 (the
    current run's); then run 3's own partials of group 6 come again (the workers kept them), and run 4's partial
    again, counted once. A partial of run 2, written and closed (its frames are below the next frame to write), is a
    stale message, not a part of run 3's group 11."""
    from ringstream.protocol import RunStart
    from ringstream.writer.process import _Writer
    from ringstream.writer.runs import Run

    w = object.__new__(_Writer)  # the message handling alone: no config, no sockets, no files
    w.counters, w.to_ack, w.fenced, w.summed_frames, w.awaiting_sum, w.summed = {}, [], set(), set(), set(), set()
    w.closing, w.flushed_below, w.next_index, w.partials_ahead = [], 120, 120, {}
    run3 = Run("r.3", 96, number=3, skip_below=120, outputs=_SumsOut())
    w.runs, w.current = {"r.3": run3}, run3

    w.on_message(*_partial_msg("r.4", 6, [168, 169], worker=0))  # before run 4's RunStart
    assert run3.outputs.calls == [] and 6 not in run3.outputs.sums._pending
    w.on_message(*_partial_msg("r.3", 6, [120, 121], worker=0))  # sent again (kept)
    w.on_message(*_partial_msg("r.3", 6, [122, 123], worker=1))
    assert run3.outputs.calls == [(6, 2), (6, 2)] and run3.outputs.sums._pending[6].summed == 4
    w.flushed_below = 64  # (a watermark not told again yet: a run closed amid a batch of messages)
    w.on_message(*_partial_msg("r.2", 11, [92, 93], worker=0))  # of run 2, written and closed
    assert run3.outputs.calls == [(6, 2), (6, 2)] and w.counters["stale_run_messages"] == 1
    w.flushed_below = 120

    w.on_message(RunStart(run_id="r.4", first_frame=144), [])
    run4 = w.runs["r.4"]
    assert run4.first_frame == 144 and len(run4.early) == 1  # held until its files exist, then added
    run4.outputs = _SumsOut()
    w.take_early(run4)
    assert run4.outputs.calls == [(6, 2)] and run4.early == []
    w.on_message(*_partial_msg("r.4", 6, [168, 169], worker=0))  # sent again (kept): counted once
    assert run4.outputs.calls == [(6, 2)] and w.counters["duplicate_partials"] == 1


class _FullAcks:
    """The writer's acknowledgement socket while the ingest takes nothing (``full``), then again."""

    def __init__(self) -> None:
        self.full, self.parts, self.messages = True, [], []

    def send(self, data, flags=0, copy=True) -> None:
        import zmq

        if self.full:
            raise zmq.Again()
        self.parts.append(bytes(data))
        if not flags & zmq.SNDMORE:
            self.messages.append(decode(self.parts)[0])
            self.parts = []


def test_a_watermark_the_ingest_did_not_take_still_marks_the_partial_sums_in_the_files():
    """A replacement writer whose Flushed could not go out (the ingest's queue full) keeps its watermark: a partial
    sum sent again whose frames are in the files is a duplicate (the frames summed before it are no longer kept, once
    below the watermark), and the Flushed goes out later still as the restart's, so the workers send what they kept."""
    from ringstream.protocol import Flushed
    from ringstream.writer.process import _Writer
    from ringstream.writer.runs import Run

    w = object.__new__(_Writer)
    w.counters, w.to_ack, w.fenced, w.summed_frames, w.awaiting_sum, w.summed = {}, [], set(), {100, 130}, set(), set()
    w.closing, w.current, w.next_index, w.partials_ahead, w.acks = [], None, 120, {}, _FullAcks()
    w.flushed_below, w.t_flushed, w.restart_untold = -1, 0.0, False
    run = Run("r", 96, outputs=_SumsOut())
    w.runs = {"r": run}
    w.publish_flushed(restart=True)
    assert w.flushed_below == 120 and w.summed_frames == {130} and w.acks.messages == []
    w.on_message(*_partial_msg("r", 1, [100, 101], worker=0))  # in the files (the run's frames below 120)
    assert run.outputs.calls == [] and w.counters["duplicate_partials"] == 1
    w.acks.full = False
    w.publish_flushed()
    assert [type(m) for m in w.acks.messages] == [Flushed] and w.acks.messages[0].restart
    assert w.acks.messages[0].below == 120 and not w.restart_untold

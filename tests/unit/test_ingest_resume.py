"""What a replacement ingest reads and asks (docs/DAEMON.md, "Delivery"): the journal, the resumed run, the folder
source ids, and the writer's answer of the frames it lacks. No sockets."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from test_formats_folder_source import collect, image, old, source

from ringstream.ingest.journal import Journal, read_journal
from ringstream.ingest.runs import RunSplitter
from ringstream.ingest.source_base import split_frame_id
from ringstream.writer.process import missing_frames


def test_the_journal_records_frames_runs_and_restarts(tmp_path):
    path = tmp_path / "state" / "ingest-journal.tsv"
    j = Journal(path, fresh=True)
    j.frame(0, "r", 0, "a.tif")
    j.frame(1, "r", 0, "b\tc.tif:3")  # a tab in a name is escaped
    j.end("r", 0, 2, final=False)
    j.frame(2, "r.2", 2, "x\\y\n.tif")
    j.frame(3, "r.2", 2, "dropped on its way out")
    j.frame(3, "r.2", 2, "d.tif")  # the index went to the next frame: the last line counts
    j.close()
    state = read_journal(path)
    assert state.next_index == 4 and (state.run_id, state.run_start, state.run_open) == ("r.2", 2, True)
    assert [state.frames[i].source_id for i in sorted(state.frames)] == ["a.tif", "b\tc.tif:3", "x\\y\n.tif", "d.tif"]
    assert state.last_ids() == ["a.tif", "b\tc.tif:3", "d.tif", "x\\y\n.tif"]  # the last frame of each file
    assert state.frames[1].run_id == "r" and state.frames[2].run_start == 2
    assert not state.final and state.restarts == 0

    j = Journal(path, fresh=False)  # a replacement appends
    j.resumed()
    j.end("r.2", 2, 2, final=True)
    j.close()
    with open(path, "ab") as f:
        f.write(b"F\t4\tr.2\t2\thalf a li")  # never finished: ignored
    state = read_journal(path)
    assert state.restarts == 1 and state.final and state.final_eos == ("r.2", 2, 2)
    assert not state.run_open and state.next_index == 4

    Journal(path, fresh=True).close()  # a new daemon starts a new journal
    assert os.path.getsize(path) == 0 and read_journal(path).next_index == 0
    assert read_journal(tmp_path / "none.tsv").frames == {}


def _run_cfg(**kw):
    base = dict(max_frames=0, max_seconds=0.0, idle_split_s=0.0, split_attribute="", split_on_restart=False)
    return SimpleNamespace(**{**base, **kw})


def test_a_resumed_run_goes_on_and_the_next_one_is_numbered_after_it():
    runs = RunSplitter(_run_cfg(max_frames=10), "base")
    runs.resume("base.2", 5, 12, run_open=True)
    out, run_id, run_start = runs.before_frame(12, "", {}, {"sent": 12})
    assert (out, run_id, run_start) == ([], "base.2", 5)  # no RunStart: the run is open at the writer
    for idx in (13, 14):
        runs.before_frame(idx, "", {}, {"sent": idx})
    out, run_id, _ = runs.before_frame(15, "", {}, {"sent": 15})  # max_frames counts the dead ingest's frames too
    assert [type(m).__name__ for m in out] == ["EndOfStream", "RunStart"] and run_id == "base.3"
    assert out[0].first_frame == 5 and out[0].n_frames == 10 and out[0].counters["sent"] == 10

    ended = RunSplitter(_run_cfg(), "base")
    ended.resume("base", 0, 7, run_open=False)
    out, run_id, run_start = ended.before_frame(7, "", {}, {})
    assert run_id == "base.2" and run_start == 7 and out[0].first_frame == 7


def test_folder_source_ids_name_a_file_and_a_frame():
    assert split_frame_id("sub/img_0001.tif") == ("sub/img_0001.tif", 0)
    assert split_frame_id("stack.h5:12") == ("stack.h5", 12)
    assert split_frame_id("odd:name.tif") == ("odd:name.tif", 0)


def test_the_writer_lacks_what_it_has_not_and_what_awaits_its_sum():
    # written below 10; 12 and 14 held early; 3 and 12 wait for the partial sum of a worker that is gone
    assert missing_frames(0, 16, 10, {12: None, 14: None}, {3, 12}) == [3, 10, 11, 12, 13, 15]
    assert missing_frames(5, 8, 10, {}, {3}) == []  # outside the range asked about
    assert missing_frames(0, 10, 10, {}, set()) == []


@pytest.mark.timeout(20)
def test_a_resumed_folder_source_goes_on_after_the_frames_announced_and_reads_one_again(tmp_path):
    tifffile.imwrite(tmp_path / "a_1.tif", image(1))
    np.save(tmp_path / "a_2.npy", np.stack([image(20), image(21), image(22)]))  # a stack of 3
    tifffile.imwrite(tmp_path / "a_3.tif", image(3))
    old(*tmp_path.iterdir())
    announced = ["a_1.tif", "a_2.npy:0", "a_2.npy:1"]  # the dead ingest stopped inside the stack

    src = source(tmp_path, count=3)
    src.resume(["a_1.tif", "a_2.npy:1"], len(announced))  # the last frame of each file
    again = src.frame_again("a_2.npy:1")
    out = np.empty(again.shape, again.dtype)
    again.fill(out)
    np.testing.assert_array_equal(out, image(21))
    assert src.frame_again("a_9.tif") is None  # gone: the ingest counts it lost
    got = collect(src)
    assert [sid for sid, _ in got] == ["a_2.npy:2", "a_3.tif"]
    np.testing.assert_array_equal(got[0][1], image(22))


def test_a_resumed_simulated_source_makes_frame_k_again_and_goes_on_after_the_last(tmp_path):
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    (tmp_path / "setup.txt").write_text("NrPixelsY 16\nNrPixelsZ 16\nLsd 1000000\npx 200\nBC 7.5 7.5\nRMin 2\n"
                                       "RMax 7\nRBinSize 1\nEtaBinSize 30\nWavelength 0.2\n")
    src = SimulatedSource(load_params(tmp_path / "setup.txt"), n_frames=6, precompute=False)
    src.resume(["simulated:2"], 3)
    np.testing.assert_array_equal(src.frame_again("simulated:1").pixels, src.make_frame(1))
    assert [f.source_id for f in src.frames()] == ["simulated:3", "simulated:4", "simulated:5"]


class _Sent:
    """Stands in for the writer's acknowledgement socket: keeps what is sent, decoded."""

    def __init__(self) -> None:
        self.parts: list = []
        self.messages: list = []

    def send(self, data, flags=0, copy=True) -> None:
        import zmq

        from ringstream.protocol import decode

        self.parts.append(bytes(data))
        if not flags & zmq.SNDMORE:
            self.messages.append(decode(self.parts)[0])
            self.parts = []


def test_the_writer_answers_a_resume_query_once_the_workers_it_names_are_fenced():
    from ringstream.protocol import Missing, ResumeQuery, WorkerGone
    from ringstream.writer.process import _Writer

    w = object.__new__(_Writer)  # the bookkeeping alone: no config, no sockets but a stand-in
    w.counters, w.to_ack, w.fenced, w.resume_queries, w.resent_from = {}, [7], set(), [], set()
    w.next_index, w.held, w.awaiting_sum = 5, {6: None}, {4}
    w.acks, w.runs, w.closing, w.current = _Sent(), {}, [], None
    w.on_message(ResumeQuery(run_id="r", first_frame=0, end=8, pids=[101, 102]), [])
    w.on_worker_gone(WorkerGone(worker=0, pid=101))
    w.answer_resume_queries()
    assert not any(isinstance(m, Missing) for m in w.acks.messages)  # worker 1 (pid 102) not fenced yet
    w.on_worker_gone(WorkerGone(worker=1, pid=102))
    w.answer_resume_queries()
    kinds = [type(m).__name__ for m in w.acks.messages]
    assert kinds.index("FrameAck") < kinds.index("Missing")  # behind the acknowledgements already due
    assert w.acks.messages[-1] == Missing(run_id="r", frames=[4, 5, 7]) and w.resume_queries == []


def test_after_a_writer_restart_the_query_is_answered_once_every_worker_has_sent_what_it_kept():
    from ringstream.protocol import Missing, Resent, ResumeQuery, WorkerGone
    from ringstream.writer.process import _Writer

    w = object.__new__(_Writer)
    w.counters, w.to_ack, w.fenced, w.resume_queries, w.resent_from = {}, [], set(), [], set()
    w.next_index, w.held, w.awaiting_sum = 10, {12: None}, set()
    w.acks, w.runs, w.closing, w.current = _Sent(), {}, [], None
    w.on_message(ResumeQuery(first_frame=10, end=14, resent=[201, 202]), [])
    w.on_message(Resent(worker=0, worker_pid=201, writer_pid=1), [])
    w.answer_resume_queries()
    assert not w.acks.messages  # worker pid 202 has not sent what it kept yet
    w.on_worker_gone(WorkerGone(worker=1, pid=202))  # ... and never will: it died
    w.answer_resume_queries()
    answers = [m for m in w.acks.messages if isinstance(m, Missing)]
    assert [m.frames for m in answers] == [[10, 11, 13]]  # 12 is here (held)


class _Stream:
    """Feeds the same events to a journal that compacts (``bound``) and to one that never does, as an ingest
    would: frames of files of ``per_file`` frames (every tenth file a single image), a run ended every ``run_len``
    frames, a frame now and then dropped on its way out (its index goes to the next frame), acknowledgements
    ``lag`` frames behind and out of order."""

    def __init__(self, tmp_path, bound: int, lag: int = 48, run_len: int = 997, per_file: int = 500) -> None:
        self.paths = (tmp_path / "compacted.tsv", tmp_path / "whole.tsv")
        self.bound, self.lag, self.run_len, self.per_file = bound, lag, run_len, per_file
        self.j = Journal(self.paths[0], fresh=True, bound=bound)
        self.ref = Journal(self.paths[1], fresh=True, bound=1 << 40)
        self.rng = np.random.default_rng(7)
        self.next, self.file, self.k, self.run, self.run_start = 0, 0, 0, "r", 0
        self.unacked: set[int] = set()
        self.sizes: list[int] = []
        self.compactions = 0  # of the journals before the last restart

    def both(self, name: str, *args) -> None:
        getattr(self.j, name)(*args)
        getattr(self.ref, name)(*args)
        self.sizes.append(os.path.getsize(self.paths[0]))

    def frames(self, n: int) -> None:
        for _ in range(n):
            if self.next - self.run_start >= self.run_len:
                self.both("end", self.run, self.run_start, self.next - self.run_start, False)
                self.run, self.run_start = f"r.{self.next}", self.next
            sid = f"scan/f_{self.file:06d}.h5:{self.k}" if self.file % 10 else f"scan/f_{self.file:06d}.tif"
            self.k += 1
            if not self.file % 10 or self.k == self.per_file:
                self.file, self.k = self.file + 1, 0
            self.both("frame", self.next, self.run, self.run_start, sid)
            if self.rng.random() < 0.01:
                continue  # dropped on its way out: the next frame gets this index
            self.unacked.add(self.next)
            self.next += 1
            while len(self.unacked) > self.lag:
                idx = int(self.rng.choice(sorted(self.unacked)[: self.lag // 2]))
                self.unacked.discard(idx)
                self.j.acknowledged(idx)  # the writer's FrameAck reaches the ingest

    def restart(self) -> None:
        """A replacement ingest: both journals read and continued; the frames the writer holds acknowledged."""
        self.j.close()
        self.ref.close()
        self.compactions += self.j.compactions
        self.j = Journal(self.paths[0], fresh=False, bound=self.bound)
        self.ref = Journal(self.paths[1], fresh=False, bound=1 << 40)
        for idx in [i for i in self.j.state.frames if i not in self.unacked]:
            self.j.acknowledged(idx)
        self.both("resumed")

    def check(self) -> None:
        got, want = read_journal(self.paths[0]), read_journal(self.paths[1])
        for key in ("next_index", "run_id", "run_start", "run_open", "final", "final_eos", "restarts"):
            assert getattr(got, key) == getattr(want, key), key
        assert got.last_ids() == want.last_ids()  # where a resumed source goes on
        assert self.unacked <= set(got.frames)
        assert all(want.frames[i] == a for i, a in got.frames.items())
        for run_id, (first, n, _) in want.ended.items():  # the ended runs the writer may still lack frames of
            if any(first <= i < first + n for i in self.unacked):
                assert got.ended[run_id] == want.ended[run_id]
        # what a replacement sends again, from a writer that holds every frame acknowledged
        held = {i: None for i in range(want.next_index) if i not in self.unacked}
        for state in (got, want):
            first = min(state.frames, default=state.next_index)
            again = missing_frames(first, state.next_index, min(self.unacked, default=state.next_index), held, set())
            assert again == sorted(self.unacked)


def test_a_compacted_journal_stays_under_its_bound_and_resumes_as_the_whole_one(tmp_path):
    bound = 16 * 1024
    s = _Stream(tmp_path, bound)
    for _ in range(6):
        s.frames(5000)
        s.check()
    s.restart()
    s.frames(7000)
    s.check()
    s.both("end", s.run, s.run_start, s.next - s.run_start, True)
    s.check()
    assert s.compactions + s.j.compactions > 50 and max(s.sizes) <= bound
    whole = os.path.getsize(s.paths[1])
    assert whole > 50 * bound  # some 37 000 frames: the whole journal is 2 MB
    assert not (tmp_path / "compacted.tsv.tmp").exists()


def test_a_journal_that_cannot_be_compacted_goes_on_growing_and_reads_the_same(tmp_path, monkeypatch):
    import ringstream.ingest.journal as journal_mod

    s = _Stream(tmp_path, 4096, per_file=5)
    s.frames(300)  # compacted a few times
    n = s.j.compactions

    def killed(src, dst):  # as if the process died between writing the new journal and the replace
        raise OSError("no replace")

    monkeypatch.setattr(journal_mod.os, "replace", killed)
    s.frames(300)
    assert s.j.compactions == n and (tmp_path / "compacted.tsv.tmp").exists()  # left behind, ignored
    s.check()
    monkeypatch.undo()
    s.frames(600)  # past twice the size: compacted again, over the .tmp left behind
    assert s.j.compactions > n and not (tmp_path / "compacted.tsv.tmp").exists()
    s.check()


def test_a_folder_of_single_images_keeps_one_line_per_file_in_its_compacted_journal(tmp_path):
    s = _Stream(tmp_path, 8192, per_file=1)  # every file one frame: the source goes on after each
    s.frames(3000)
    s.check()
    whole, compacted = os.path.getsize(s.paths[1]), os.path.getsize(s.paths[0])
    assert s.j.compactions >= 3 and compacted < 0.8 * whole  # the L lines (one per file) are shorter than F lines

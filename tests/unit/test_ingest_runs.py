"""Where the ingest cuts the stream into runs (:class:`ringstream.ingest.runs.RunSplitter`), without sockets: each
rule of ``[run]``, the messages it makes (RunStart before a run's first frame, EndOfStream at its end), the runs'
frame ranges and their own counters."""

from __future__ import annotations

import dataclasses

from ringstream.ingest.runs import RunSplitter
from ringstream.protocol import EndOfStream, RunStart


@dataclasses.dataclass(frozen=True)
class RunCfg:
    max_frames: int = 0
    max_seconds: float = 0.0
    idle_split_s: float = 0.0
    split_attribute: str = ""
    split_on_restart: bool = True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def feed(splitter, frames, clock=None, dt=0.0):
    """``frames``: (new_run, metadata) per frame. Returns the messages and each frame's (run_id, run_start)."""
    out, where = [], []
    for k, (new_run, meta) in enumerate(frames):
        msgs, run_id, start = splitter.before_frame(k, new_run, meta, {"received": k + 1})
        out += msgs
        where.append((run_id, start))
        if clock is not None:
            clock.t += dt
    return out, where


def ranges(msgs) -> list[tuple[int, int, str]]:
    return [(m.first_frame, m.n_frames, m.reason) for m in msgs if isinstance(m, EndOfStream)]


def test_one_run_by_default_and_its_final_end():
    s = RunSplitter(RunCfg(), "base")
    msgs, where = feed(s, [("", {})] * 5)
    assert [type(m) for m in msgs] == [RunStart] and msgs[0].first_frame == 0 and msgs[0].run_id == "base"
    assert where == [("base", 0)] * 5
    eos = s.end(5, "end of source", {"received": 5}, final=True)
    assert (eos.run_id, eos.first_frame, eos.n_frames, eos.final, eos.counters) == ("base", 0, 5, True,
                                                                                  {"received": 5})


def test_max_frames_cuts_runs_of_that_length():
    s = RunSplitter(RunCfg(max_frames=4), "b")
    msgs, where = feed(s, [("", {})] * 10)
    assert ranges(msgs) == [(0, 4, "max_frames"), (4, 4, "max_frames")]
    assert [m.run_id for m in msgs if isinstance(m, RunStart)] == ["b", "b.2", "b.3"]
    assert [w[1] for w in where] == [0] * 4 + [4] * 4 + [8] * 2
    assert not any(m.final for m in msgs if isinstance(m, EndOfStream))


def test_max_seconds_and_idle():
    clock = Clock()
    s = RunSplitter(RunCfg(max_seconds=1.0, idle_split_s=0.5), "b", clock=clock)
    msgs, _ = feed(s, [("", {})] * 6, clock, dt=0.3)  # frames at 0, .3, .6, .9 | 1.2, 1.5
    assert ranges(msgs) == [(0, 4, "max_seconds")]
    assert s.on_idle(6, {}) is None  # the last frame just came
    clock.t += 0.6
    eos = s.on_idle(6, {"received": 6})
    assert (eos.first_frame, eos.n_frames, eos.reason, eos.final) == (4, 2, "idle", False)
    assert s.on_idle(6, {}) is None and s.current is None  # no run open: nothing more to end
    msgs, _, where = s.before_frame(6, "", {}, {})
    assert [type(m) for m in msgs] == [RunStart] and where == 6


def test_a_restart_of_the_acquisition_and_an_attribute_change():
    s = RunSplitter(RunCfg(split_attribute="scan"), "b")
    frames = [("", {"scan": 1}), ("", {"scan": 1}), ("acquisition restarted", {"scan": 1}), ("", {"scan": 2}),
              ("", {"scan": 2}), ("", {})]  # a frame without the attribute stays in the run
    msgs, _ = feed(s, frames)
    assert ranges(msgs) == [(0, 2, "acquisition restarted"), (2, 1, "attribute scan changed")]
    off = RunSplitter(RunCfg(split_on_restart=False), "b")
    msgs, _ = feed(off, [("", {}), ("acquisition restarted", {})])
    assert ranges(msgs) == []


def test_runs_start_and_stop_requests():
    s = RunSplitter(RunCfg(), "b")
    feed(s, [("", {})] * 3)
    eos = s.request("start", "ramp", {"T": "300"}, next_index=3, counters={"received": 3})
    assert (eos.first_frame, eos.n_frames, eos.reason) == (0, 3, "runs start")
    msgs, run_id, start = s.before_frame(3, "", {}, {"received": 4})
    assert msgs == [RunStart(run_id="b.2", first_frame=3, name="ramp", reason="runs start", meta={"T": "300"})]
    # the run's first frame carries the same fields (the writer may get it before the RunStart)
    assert s.run_start_fields == {"name": "ramp", "reason": "runs start", "meta": {"T": "300"}}
    eos = s.request("stop", next_index=4, counters={"received": 4})
    assert (eos.run_id, eos.first_frame, eos.n_frames, eos.reason) == ("b.2", 3, 1, "runs stop")
    assert s.request("stop", next_index=4) is None  # no run open: nothing to end
    assert eos.counters == {"received": 1}  # a run's own counts: since the run before it ended


def test_a_frame_dropped_on_its_way_out_is_not_counted():
    s = RunSplitter(RunCfg(max_frames=2), "b")
    s.before_frame(0, "", {}, {})
    s.frame_not_sent()  # the index goes to the next frame
    msgs, run_id, start = s.before_frame(0, "", {}, {})
    assert msgs == [] and (run_id, start) == ("b", 0)
    msgs, _, _ = s.before_frame(1, "", {}, {})
    assert msgs == []
    msgs, _, start = s.before_frame(2, "", {}, {})
    assert ranges(msgs) == [(0, 2, "max_frames")] and start == 2

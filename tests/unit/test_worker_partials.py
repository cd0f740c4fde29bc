"""The worker's omega-sum bookkeeping (``OmegaPartials``): host cakes summed here, frames whose cakes the engine
summed on the device counted here and their sum taken from the engine when the group is due, both in one group."""

from __future__ import annotations

import numpy as np

from ringstream.protocol import FrameHeader
from ringstream.protocol.omega import FrameSpan, OmegaGrouping
from ringstream.workers.omega import OmegaPartials
from ringstream.writer.omega import OmegaSums


def header(k: int, run_start: int = 0, run_id: str = "r") -> FrameHeader:
    return FrameHeader(run_id=run_id, frame_index=k, run_start=run_start, shape=(1, 1), dtype="<i4")


class FakeDevice:
    """Stands for CupyEngine's omega_add/omega_take: holds a sum per group."""

    def __init__(self) -> None:
        self.sums: dict[int, np.ndarray] = {}
        self.taken: list[int] = []

    def add(self, group: int, cake) -> None:
        self.sums[group] = self.sums.get(group, 0) + np.asarray(cake, np.float32).astype(np.float64)

    def omega_take(self, groups, dtype=np.float64):
        self.taken.extend(groups)
        sums = [self.sums.pop(g, None) for g in groups]
        return [None if s is None else np.asarray(s).astype(dtype) for s in sums]


def test_device_counted_frames_and_host_cakes_sum_per_group():
    rng = np.random.default_rng(5)
    cakes = rng.uniform(0, 100, (20, 3, 4))
    dev = FakeDevice()
    p = OmegaPartials(5, 3, 4, device=dev)
    for k in range(12):  # frames 0..11 on the device, frame 12 integrated on the host (a failed batch)
        dev.add(p.key(header(k)), cakes[k])
    p.count([header(k) for k in range(12)])
    p.add(header(12), cakes[12])
    due = {h.group: h for h in p.due(idle=False)}  # groups 0 and 1 are due (group 2 is the newest and young)
    assert sorted(due) == [0, 1] and dev.taken == [0, 5]  # the keys: each group's first frame_index
    for g in (0, 1):
        assert due[g].frames == FrameSpan(5, 5 * g, 5 * g + 4)
        np.testing.assert_array_equal(due[g].total,
                                      cakes[5 * g:5 * g + 5].astype(np.float32).astype(np.float64).sum(0))
    (last,) = list(p.due(idle=True))
    assert last.group == 2 and last.frames == FrameSpan(3, 10, 12)
    want = cakes[10:12].astype(np.float32).astype(np.float64).sum(0) + cakes[12].astype(np.float32)
    np.testing.assert_array_equal(last.total, want)
    assert not p.held


def test_host_only_partials_unchanged():
    cakes = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) + 0.1
    p = OmegaPartials(-1, 3, 4)
    p.add(header(0), cakes[0])
    p.add(header(1), cakes[1])
    (h,) = list(p.due(idle=True))
    assert h.group == 0 and h.frames == FrameSpan(2, 0, 1)
    np.testing.assert_array_equal(h.total, cakes.astype(np.float32).astype(np.float64).sum(0))


def test_a_partial_is_whole_when_it_holds_every_frame_of_its_group():
    p = OmegaPartials(3, 1, 1)
    for k in (0, 1, 2, 4):  # group 0 whole, group 1 one frame of three
        p.add(header(k), np.ones((1, 1)))
    got = {h.group: p.whole(h) for h in p.due(idle=True)}
    assert got == {0: True, 1: False}
    one = OmegaPartials(1, 1, 1)
    one.add(header(7), np.ones((1, 1)))
    assert [one.whole(h) for h in one.due(idle=True)] == [True]
    run = OmegaPartials(-1, 1, 1)  # one group a run: never known whole
    run.add(header(0), np.ones((1, 1)))
    assert [run.whole(h) for h in run.due(idle=True)] == [False]


def test_workers_and_writer_group_frames_by_one_rule():
    """The worker's partial sums and the writer's complete ones put a frame in the same group, -1 and 0 included."""
    for n in (-1, 0, 1, 3, 10):
        worker, writer = OmegaPartials(n, 1, 1), OmegaSums(n, (1, 1))
        grouping = OmegaGrouping.of(n)
        for k in (0, 1, 2, 3, 9, 10, 11, 10**12):
            assert worker._held(header(k)).group == writer.group_of(k) == grouping.group_of(k)
            assert grouping.ends_group(k) == (grouping.group_of(k + 1) != grouping.group_of(k))
    assert OmegaGrouping.of(-1).group_of(10**15) == 0 and OmegaGrouping.of(0).size == 1


def test_frame_span_counts_frames_in_any_order():
    span = FrameSpan()
    for k in (7, 5, 9, 6):
        span.add(k)
    assert span == FrameSpan(n_frames=4, first_frame=5, last_frame=9)


def test_groups_of_two_runs_never_meet():
    """Frames of two runs (the second starting at frame_index 7) are grouped from each run's first frame: the
    partial sums carry their run and the frames' indices within it, and the device keys of the runs differ."""
    cakes = np.arange(14 * 2, dtype=np.float64).reshape(14, 1, 2)
    for n in (-1, 3):
        dev = FakeDevice()
        p = OmegaPartials(n, 1, 2, device=dev)
        heads = [header(k, 0, "a") for k in range(7)] + [header(k, 7, "b") for k in range(7, 14)]
        for h in heads:
            dev.add(p.key(h), cakes[h.frame_index])
        p.count(heads)
        got = list(p.due(idle=True))
        grouping = OmegaGrouping.of(n)
        want = {}
        for h in heads:
            local = h.frame_index - h.run_start
            want.setdefault((h.run_id, grouping.group_of(local)), []).append(local)
        assert {(g.run_id, g.group): (g.frames.n_frames, g.frames.first_frame, g.frames.last_frame) for g in got} \
            == {k: (len(v), min(v), max(v)) for k, v in want.items()}
        for g in got:
            start = 0 if g.run_id == "a" else 7
            rows = [start + i for i in range(g.frames.first_frame, g.frames.last_frame + 1)]
            np.testing.assert_array_equal(g.total, cakes[rows].sum(0))
        assert len({g.key for g in got}) == len(got)


def test_whole_groups_summed_on_the_device_come_back_in_the_stored_dtype_the_others_in_float64():
    """``due(whole_dtype=float32)``: a whole group whose frames the device alone summed comes back float32, the
    device's rounding of its float64 sum; a group short of frames, or one with a frame summed here, comes back
    float64 (the writer adds parts in float64). Every due group's device sum is taken in one call per dtype."""
    rng = np.random.default_rng(11)
    cakes = rng.uniform(0, 1e4, (9, 3, 4))
    dev = FakeDevice()
    calls = []
    take = dev.omega_take
    dev.omega_take = lambda groups, dtype=np.float64: calls.append((list(groups), np.dtype(dtype))) or take(groups,
                                                                                                          dtype)
    p = OmegaPartials(3, 3, 4, device=dev)
    on_device = [0, 1, 2, 3, 4, 5, 6]  # groups 0 and 1 on the device; group 2 short of frames (6, then 7 here)
    for k in on_device:
        dev.add(p.key(header(k)), cakes[k])
    p.count([header(k) for k in on_device])
    p.add(header(7), cakes[7])
    got = p.due(idle=True, whole_dtype="<f4")
    assert [h.group for h in got] == [0, 1, 2]
    assert calls == [([0, 3], np.dtype("<f4")), ([6], np.dtype("<f8"))]
    for g in (0, 1):
        want = cakes[3 * g:3 * g + 3].astype(np.float32).astype(np.float64).sum(0)
        assert got[g].total.dtype == np.float32
        np.testing.assert_array_equal(got[g].total, want.astype(np.float32))
    assert got[2].total.dtype == np.float64 and not p.whole(got[2])
    np.testing.assert_array_equal(got[2].total, cakes[6].astype(np.float32).astype(np.float64)
                                  + cakes[7].astype(np.float32))

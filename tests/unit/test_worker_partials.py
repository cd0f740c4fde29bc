"""The worker's omega-sum bookkeeping (``OmegaPartials``): host cakes summed here, frames whose cakes the engine
summed on the device counted here and their sum taken from the engine when the group is due, both in one group."""

from __future__ import annotations

import numpy as np

from ringstream.protocol.omega import FrameSpan, OmegaGrouping
from ringstream.workers.omega import OmegaPartials
from ringstream.writer.omega import OmegaSums


class FakeDevice:
    """Stands for CupyEngine's omega_add/omega_take: holds a sum per group."""

    def __init__(self) -> None:
        self.sums: dict[int, np.ndarray] = {}
        self.taken: list[int] = []

    def add(self, group: int, cake) -> None:
        self.sums[group] = self.sums.get(group, 0) + np.asarray(cake, np.float32).astype(np.float64)

    def omega_take(self, group: int):
        self.taken.append(group)
        return self.sums.pop(group, None)


def test_device_counted_frames_and_host_cakes_sum_per_group():
    rng = np.random.default_rng(5)
    cakes = rng.uniform(0, 100, (20, 3, 4))
    dev = FakeDevice()
    p = OmegaPartials(5, 3, 4, device=dev)
    for k in range(12):  # frames 0..11 on the device, frame 12 integrated on the host (a failed batch)
        dev.add(p.group(k), cakes[k])
    p.count(range(12))
    p.add(12, cakes[12])
    due = {h.group: h for h in p.due(idle=False)}  # groups 0 and 1 are due (group 2 is the newest and young)
    assert sorted(due) == [0, 1] and dev.taken == [0, 1]
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
    p.add(0, cakes[0])
    p.add(1, cakes[1])
    (h,) = list(p.due(idle=True))
    assert h.group == 0 and h.frames == FrameSpan(2, 0, 1)
    np.testing.assert_array_equal(h.total, cakes.astype(np.float32).astype(np.float64).sum(0))


def test_workers_and_writer_group_frames_by_one_rule():
    """The worker's partial sums and the writer's complete ones put a frame in the same group, -1 and 0 included."""
    for n in (-1, 0, 1, 3, 10):
        worker, writer = OmegaPartials(n, 1, 1), OmegaSums(n, (1, 1))
        grouping = OmegaGrouping.of(n)
        for k in (0, 1, 2, 3, 9, 10, 11, 10**12):
            assert worker.group(k) == writer.group_of(k) == grouping.group_of(k)
            assert grouping.ends_group(k) == (grouping.group_of(k + 1) != grouping.group_of(k))
    assert OmegaGrouping.of(-1).group_of(10**15) == 0 and OmegaGrouping.of(0).size == 1


def test_frame_span_counts_frames_in_any_order():
    span = FrameSpan()
    for k in (7, 5, 9, 6):
        span.add(k)
    assert span == FrameSpan(n_frames=4, first_frame=5, last_frame=9)

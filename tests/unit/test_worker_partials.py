"""The worker's omega-sum bookkeeping (``_OmegaPartials``): host cakes summed here, frames whose cakes the engine
summed on the device counted here and their sum taken from the engine when the group is due, both in one group."""

from __future__ import annotations

import numpy as np

from ringstream.workers.process import _OmegaPartials


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
    p = _OmegaPartials(5, 3, 4, device=dev)
    for k in range(12):  # frames 0..11 on the device, frame 12 integrated on the host (a failed batch)
        dev.add(p.group(k), cakes[k])
    p.count(range(12))
    p.add(12, cakes[12])
    due = dict(p.due(idle=False))  # groups 0 and 1 are due (group 2 is the newest and young)
    assert sorted(due) == [0, 1] and dev.taken == [0, 1]
    for g in (0, 1):
        n, first, last, total = due[g]
        assert (n, first, last) == (5, 5 * g, 5 * g + 4)
        np.testing.assert_array_equal(total, cakes[5 * g:5 * g + 5].astype(np.float32).astype(np.float64).sum(0))
    n, first, last, total = dict(p.due(idle=True))[2]
    assert (n, first, last) == (3, 10, 12)
    want = cakes[10:12].astype(np.float32).astype(np.float64).sum(0) + cakes[12].astype(np.float32)
    np.testing.assert_array_equal(total, want)
    assert not p.held


def test_host_only_partials_unchanged():
    cakes = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) + 0.1
    p = _OmegaPartials(-1, 3, 4)
    p.add(0, cakes[0])
    p.add(1, cakes[1])
    ((g, (n, first, last, total)),) = list(p.due(idle=True))
    assert (g, n, first, last) == (0, 2, 0, 1)
    np.testing.assert_array_equal(total, cakes.astype(np.float32).astype(np.float64).sum(0))

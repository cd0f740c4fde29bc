"""What a worker keeps for a replacement writer (ringstream.workers.kept): kept until flushed, sent again in frame
order from where the replacement reopened its files, credit owed past the memory limit and given once the writer
catches up (or after a stall)."""

from __future__ import annotations

import numpy as np

from ringstream.workers import kept as kept_mod
from ringstream.workers.kept import KeptResults


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_kept_until_flushed_then_sent_again_in_frame_order():
    k = KeptResults(10**9)
    for idx in (3, 1, 2, 5, 4):  # a worker's results need not be in order (frames re-sent after a death)
        k.keep(idx, f"result {idx}", [np.zeros(10, np.float32)])
    k.keep(5, "partial of 4..5", [np.zeros(4)])  # a partial sum is kept until its last frame is flushed
    assert len(k) == 6 and k.bytes == 6 * 256 + 5 * 40 + 32
    k.flushed(3, writer_pid=7)  # frames 0..2 are in the files for good
    assert len(k) == 4
    k.flushed(2, writer_pid=7)  # an older notice changes nothing
    assert len(k) == 4
    again = k.to_resend(4)  # a replacement writer reopened its files at frame 4
    assert [m for m, _ in again] == ["result 4", "result 5", "partial of 4..5"]
    assert k.counters["kept_resent"] == 3
    k.keep(3, "result 3 again", [])  # below the watermark: the writer has it, nothing kept
    assert len(k) == 3


def test_credit_is_owed_past_the_limit_and_given_when_the_writer_flushes():
    clock = Clock()
    k = KeptResults(1000, clock=clock)
    assert k.credit_now(1) == 1
    k.keep(0, "big", [np.zeros(200)])  # 1,856 bytes: over the limit
    assert k.credit_now(1) == 0 and k.credit_now(2) == 0 and k.owed == 3
    clock.t += 1.0
    k.flushed(1, writer_pid=9)  # the writer flushed it: memory freed
    assert k.bytes == 0 and k.credit_now(0) == 3 and k.owed == 0


def test_credit_is_given_anyway_when_the_watermark_stands_still():
    clock = Clock()
    k = KeptResults(1000, clock=clock)
    k.keep(0, "big", [np.zeros(200)])
    assert k.credit_now(1) == 0
    clock.t += kept_mod.STALL_S - 0.1
    assert k.credit_now(1) == 0
    clock.t += 0.2  # the stall: credit goes out (counted) and keeps going out until the watermark moves
    assert k.credit_now(0) == 2 and k.counters["kept_over_limit"] == 1
    assert k.credit_now(1) == 1 and k.counters["kept_over_limit"] == 1
    k.flushed(0, writer_pid=9)  # the watermark moved (nothing freed): owed again, a new stall counted from now
    assert k.credit_now(1) == 0

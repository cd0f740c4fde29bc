"""The ingest's copy threads: copies run concurrently, finished jobs come back in submission order, failures are
reported on their job (never lost, never out of order), and no more than ``depth`` jobs are ever in flight."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ringstream.ingest.copier import SlotCopier, auto_threads

pytestmark = pytest.mark.timeout(60)


def frame(k: int, shape=(4, 5), delay: float = 0.0, fail: bool = False):
    pixels = np.full(shape, k, np.int32)

    def fill(out):
        time.sleep(delay)
        if fail:
            raise OSError(f"frame {k}: truncated")
        out[...] = pixels

    return SimpleNamespace(k=k, pixels=None, fill=fill, frame_shape=lambda: shape, frame_dtype=lambda: np.dtype("i4"),
                           slot_layout=lambda: (shape, np.dtype("i4")))


def make(threads, depth, slots=16):
    ring = np.full((slots, 4, 5), -1, np.int32)
    running, peak = [0], [0]
    lock = threading.Lock()

    def copy(fr, out):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            fr.fill(out)
        finally:
            with lock:
                running[0] -= 1

    copier = SlotCopier(threads, copy, lambda slot, shape, dtype: ring[slot], depth=depth)
    return copier, ring, peak


def test_jobs_come_back_in_submission_order_with_their_pixels():
    copier, ring, peak = make(threads=4, depth=6, slots=60)
    rng = np.random.default_rng(1)
    done = []
    try:
        for k in range(60):  # later frames often finish first: the delays are random
            done += list(copier.submit(frame(k, delay=float(rng.uniform(0, 0.004))), k))
            done += list(copier.done())
            assert len(copier) <= 6
            for job in done:  # a job handed back has its pixels in its slot
                np.testing.assert_array_equal(ring[job.slot], job.frame.k)
        done += list(copier.done(wait=True))
    finally:
        copier.close()
    assert [j.frame.k for j in done] == list(range(60))
    assert all(j.error is None for j in done)
    np.testing.assert_array_equal(ring[:, 0, 0], np.arange(60))
    assert 1 < peak[0] <= 4  # copies overlapped, never more than the threads


def test_a_failed_copy_is_reported_on_its_own_job_and_the_rest_carry_on():
    copier, ring, _ = make(threads=3, depth=4)
    try:
        jobs = []
        for k in range(10):
            jobs += list(copier.submit(frame(k, fail=(k == 4), delay=0.001), k))
        jobs += list(copier.done(wait=True))
    finally:
        copier.close()
    assert [j.frame.k for j in jobs] == list(range(10))
    assert [k for k, j in enumerate(jobs) if j.error is not None] == [4]
    assert "frame 4: truncated" in str(jobs[4].error)
    for j in jobs:
        if j.error is None:
            np.testing.assert_array_equal(ring[j.slot], j.frame.k)


def test_depth_bounds_the_jobs_in_flight():
    copier, _, _ = make(threads=2, depth=2)
    try:
        out = list(copier.submit(frame(0, delay=0.05), 0)) + list(copier.submit(frame(1, delay=0.05), 1))
        assert out == [] and len(copier) == 2
        # the third submission must first hand back the oldest job (waiting for it)
        out = list(copier.submit(frame(2), 2))
        assert [j.frame.k for j in out] == [0] and len(copier) == 2
    finally:
        copier.close()


def test_auto_threads():
    assert [auto_threads(n) for n in (None, 1, 2, 4, 7, 8, 16, 32, 128)] == [1, 1, 1, 1, 1, 4, 8, 8, 8]


def test_wake_up_tokens_do_not_pile_up():
    # most jobs are harvested by done() without waiting; their tokens must not accumulate over a long run
    copier, ring, _ = make(threads=2, depth=4, slots=8)
    try:
        n = 0
        for k in range(400):
            for job in list(copier.submit(frame(k), k % 8)) + list(copier.done()):
                n += 1
                assert job.frame.k == n - 1
        n += len(list(copier.done(wait=True)))
        assert n == 400 and copier._finished.qsize() <= 4
    finally:
        copier.close()


def test_nontemporal_env_sets_the_threshold_and_keeps_the_users():
    from ringstream.transport.child import NONTEMPORAL_THRESHOLD, nontemporal_env

    assert NONTEMPORAL_THRESHOLD == 256 * 1024
    assert nontemporal_env({}) == {"GLIBC_TUNABLES": "glibc.cpu.x86_non_temporal_threshold=0x40000"}
    # other tunables the user set are kept, the threshold appended
    assert nontemporal_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.cpu.x86_non_temporal_threshold=0x40000"}
    # a threshold the user chose wins: nothing changes
    assert nontemporal_env({"GLIBC_TUNABLES": "glibc.cpu.x86_non_temporal_threshold=0x100000"}) == {}

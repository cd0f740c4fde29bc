"""CupyEngine.submit / collect (the asynchronous API the pipelined GPU worker uses): every stream in flight at once,
results equal to the reference engine, pinned ring slots and pageable frames, cakes skipped on request, and the
guards (a stream is not reused before it is collected; integrate_many refuses to run over open submissions)."""

from __future__ import annotations

import numpy as np
import pytest
from test_cupy_engine import RTOL, _frames, _random_map, _rel

from ringstream.engines.reference import ReferenceEngine
from ringstream.transport.shm_ring import FrameRing


def test_four_submissions_in_flight_equal_the_reference():
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(41)
    shape = (80, 96)
    imap = _random_map(rng, shape, 10, 16)
    eng = CupyEngine(imap, batch=3, n_streams=4)
    ref = ReferenceEngine(imap)
    stack = _frames(rng, "u2", 12, shape)
    rl, rc = ref.integrate_batch(stack)
    ring = FrameRing.create(12, stack[0].nbytes)
    try:
        slots = rng.permutation(12)
        for i, s in enumerate(slots):
            ring.view(int(s), shape, np.uint16)[...] = stack[i]
        eng.register_host_memory(ring._segment.buf)
        views = [ring.view(int(s), shape, np.uint16) for s in slots]
        eng._poison()
        subs = [eng.submit(views[3 * k:3 * k + 3], want_cake=(k != 2)) for k in range(4)]  # all 4 streams busy
        with pytest.raises(RuntimeError, match="uncollected"):
            eng.submit(views[:1])
        with pytest.raises(RuntimeError, match="outstanding submissions"):
            eng.integrate_many(views[:2])
        for k, sub in enumerate(subs):
            lines, cakes = eng.collect(sub)
            assert np.isfinite(lines).all() and _rel(lines, rl[3 * k:3 * k + 3]) <= RTOL
            if k == 2:
                assert cakes is None
            else:
                assert np.isfinite(cakes).all() and _rel(cakes, rc[3 * k:3 * k + 3]) <= RTOL
            assert sub.ready()
        with pytest.raises(RuntimeError, match="already collected"):
            eng.collect(subs[0])
        # pageable frames go through the staging buffers; a ragged batch of 2
        lines, cakes = eng.collect(eng.submit([stack[5].copy(), stack[7].copy()]))
        assert _rel(lines, rl[[5, 7]]) <= RTOL and _rel(cakes, rc[[5, 7]]) <= RTOL
        del views
        eng.unregister_host_memory(ring._segment.buf)
    finally:
        eng.close()
        ring.close()
        ring.unlink()

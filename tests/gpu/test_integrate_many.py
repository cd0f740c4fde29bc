"""CupyEngine.integrate_many: separate frames (different ring slots), pageable and registered, equal to the stack."""

from __future__ import annotations

import numpy as np
from test_cupy_engine import RTOL, _frames, _random_map, _rel

from ringstream.engines.reference import ReferenceEngine
from ringstream.transport.shm_ring import FrameRing


def test_integrate_many_pageable_and_registered_ring():
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(31)
    shape = (96, 112)
    imap = _random_map(rng, shape, 12, 18)
    eng = CupyEngine(imap, batch=4, n_streams=2)
    ref = ReferenceEngine(imap)
    stack = _frames(rng, "i4", 11, shape)  # 11 frames: chunks of 4, 4, 3 over 2 streams
    rl, rc = ref.integrate_batch(stack)
    # pageable, separate arrays
    eng._poison()
    lines, cakes = eng.integrate_many([stack[i].copy() for i in range(len(stack))])
    assert np.isfinite(lines).all() and np.isfinite(cakes).all()
    assert _rel(cakes, rc) <= RTOL and _rel(lines, rl) <= RTOL
    # frames in shuffled slots of a registered shared-memory ring
    ring = FrameRing.create(16, stack[0].nbytes)
    try:
        slots = rng.permutation(16)[: len(stack)]
        for i, s in enumerate(slots):
            ring.view(int(s), shape, np.int32)[...] = stack[i]
        eng.register_host_memory(ring._segment.buf)
        views = [ring.view(int(s), shape, np.int32) for s in slots]
        assert all(eng.staging.is_pinned(v) for v in views)
        eng._poison()
        lines, cakes = eng.integrate_many(views)
        assert _rel(cakes, rc) <= RTOL and _rel(lines, rl) <= RTOL
        one_l, one_c = eng.integrate(views[3])
        assert _rel(one_c, rc[3]) <= RTOL
        del views
        eng.unregister_host_memory(ring._segment.buf)
        assert not eng.staging.registered
    finally:
        eng.close()
        ring.close()
        ring.unlink()
    assert eng.integrate_many([])[0].shape == (0, 12)

"""Omega sums on the device (``CupyEngine.omega_add`` / ``omega_take``, used by a GPU worker that writes no per-frame
cakes): equal to the float64 sum of the reference engine's float32-rounded cakes, per group, across streams and
groups split inside a batch; and end to end, a GPU daemon's /entry/omega_sum equals the reference sums."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from test_cupy_engine import _frames, _random_map

from ringstream.engines.reference import ReferenceEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import ringstream_command, simulated_reference  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402


def test_device_omega_sums_equal_the_reference_sums():
    """Every cake is added twice, under group g and g + 100: the sums taken in float64 match the reference, and the
    ones taken in float32 are exactly those float64 sums rounded as NumPy rounds them."""
    from ringstream.engines.cupy_engine import CupyEngine

    rng = np.random.default_rng(73)
    shape = (64, 72)
    imap = _random_map(rng, shape, 12, 18)
    eng = CupyEngine(imap, batch=4, n_streams=4)
    ref = ReferenceEngine(imap)
    stack = _frames(rng, "i4", 30, shape)
    _, rc = ref.integrate_batch(stack)
    size = 7  # OmegaSumFrames: groups split inside batches of 4

    def add(sub, ids):
        eng.omega_add(sub, [i // size for i in ids])
        eng.omega_add(sub, [100 + i // size for i in ids])

    try:
        eng._poison()
        pending = []
        for k0 in range(0, 30, 4):
            idx = list(range(k0, min(30, k0 + 4)))
            pending.append((eng.submit([stack[i] for i in idx], want_cake=False), idx))
            if len(pending) == 4:  # every stream busy, then oldest first, as the pipelined worker does
                sub, ids = pending.pop(0)
                lines, cakes = eng.collect(sub)
                assert cakes is None
                add(sub, ids)
        for sub, ids in pending:
            eng.collect(sub)
            add(sub, ids)
        assert eng.omega_groups() == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
        wide = eng.omega_take([0, 1, 2, 3, 4, 7], np.float64)  # group 7: nothing added
        narrow = eng.omega_take([104, 100, 101, 102, 103], np.float32)
        narrow = narrow[1:] + narrow[:1]
        assert wide[5] is None
        for g in range(5):
            want = rc[size * g:size * g + size].astype(np.float32).astype(np.float64).sum(axis=0)
            assert wide[g].shape == narrow[g].shape == want.shape == (12, 18)
            assert wide[g].dtype == np.float64 and narrow[g].dtype == np.float32
            np.testing.assert_allclose(wide[g], want, rtol=2e-6, atol=1e-6 * np.abs(want).max())
            np.testing.assert_array_equal(narrow[g], wide[g].astype(np.float32))
        assert eng.omega_groups() == [] and eng.omega_take([0]) == [None]
    finally:
        eng.close()


PARAMS = OUTPUTS_PARAMS + "Write2D 0\nOmegaSumFrames 7\n"  # the 40 x 36 detector of test_outputs.py


def test_gpu_daemon_omega_sums_match_the_reference(tmp_path):
    params = tmp_path / "setup.txt"
    params.write_text(PARAMS)
    n = 200
    out = subprocess.run(ringstream_command() + ["run", "--param-file", str(params), "--simulate", str(n),
                                                 "--workers", "2", "--engine", "gpu", "--output-h5", "out.h5",
                                                 "--no-zarr", "--control", "auto"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    _, cakes = simulated_reference(params, n)
    cakes = cakes.astype(np.float32).astype(np.float64)
    with h5py.File(tmp_path / "out.h5") as f:
        e = f["entry"]
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(n))
        assert "gpu" in str(e["reduction/engine"][()])
        o = e["omega_sum"]
        groups = (n + 6) // 7
        assert list(o["n_frames"][:]) == [7] * (groups - 1) + [n - 7 * (groups - 1)]
        assert list(o["first_frame"][:]) == list(range(0, n, 7))
        for g in range(groups):
            want = cakes[7 * g:7 * g + 7].sum(axis=0)
            np.testing.assert_allclose(o["I"][g], want, rtol=2e-6, atol=1e-6 * np.abs(want).max())

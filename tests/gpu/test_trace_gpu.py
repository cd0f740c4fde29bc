"""Stage stamps (``--trace-dir``, ringstream/trace.py) on the GPU path: the pipelined worker loop (batches in flight,
omega sums on the device, sums compressed in the worker's threads) stamps every frame at every stage, in causal
order, as the CPU test in tests/integration/test_daemon.py checks for the CPU engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ringstream.trace import STAGES, out_of_order, summary, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from common import ringstream_command  # noqa: E402
from test_outputs import PARAMS as OUTPUTS_PARAMS  # noqa: E402


def test_gpu_daemon_stamps_every_frame_at_every_stage_in_order(tmp_path):
    params = tmp_path / "setup.txt"
    params.write_text(OUTPUTS_PARAMS + "Write2D 0\nOmegaSumFrames 1\n")  # a partial sum a frame, as the demo
    n = 400
    out = subprocess.run(ringstream_command() + ["run", "--param-file", str(params), "--simulate", str(n),
                                                 "--workers", "2", "--engine", "gpu", "--output-h5", "out.h5",
                                                 "--trace-dir", str(tmp_path / "trace"), "--control", "auto"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert re.search(r"worker-0: up to \d+ batches of \d+ frames in flight", out.stderr), out.stderr  # (pipelined)
    frames, times = table(tmp_path / "trace")
    assert frames.tolist() == list(range(n))
    assert not np.isnan(times).any(), [STAGES[k] for k in np.nonzero(np.isnan(times).any(axis=0))[0]]
    assert out_of_order(frames, times) == []
    hold = {r["interval"]: r for r in summary(times)}["hold: ring slot -> slot free"]
    assert hold["frames"] == n and 0 < hold["p50_ms"] <= hold["max_ms"]

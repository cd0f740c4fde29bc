"""The 60-second soak: ``bench/soak.py`` on the real daemon (CPU engine, 2 workers, simulated 256 x 256 detector at a
fixed rate, runs of 10 s) with a random worker killed every 20 s and the writer after 30 s; every check of its JSON
passes: exit 0 after the stop, every frame received once in the runs' files, every run complete, resident memory of
each role flat after the warm-up, no descriptor growth, each killed process replaced. The full soak (30 minutes) is
run by hand: see bench/README.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
SECONDS = 60
KILL_WORKER_EVERY_S = 20
KILL_WRITER_EVERY_S = 30


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_60_s_with_killed_workers_and_writer_loses_nothing_and_stays_flat(tmp_path):
    cmd = [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--rate", "100", "--size", "256",
           "--run-seconds", "10", "--sample-every", "1", "--kill-worker-every", str(KILL_WORKER_EVERY_S),
           "--kill-writer-every", str(KILL_WRITER_EVERY_S), "--dir", str(tmp_path / "work"),
           "--out", str(tmp_path), "--tag=-ci", "--stop-timeout", "60", "--ready-timeout", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script kills the daemon's process group on SIGTERM
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"bench/soak.py did not finish within 150 s:\n{output[-3000:]}")
    found = sorted(tmp_path.glob("soak-*-ci.json"))
    assert found, f"no JSON written (exit {proc.returncode}):\n{output[-3000:]}"
    result = json.loads(found[0].read_text())
    failed = {name: c["detail"] for name, c in result["checks"].items() if not c["ok"]}
    assert not failed, f"{failed}\n{output[-3000:]}\ndaemon log tail:\n{result['daemon']['log_tail']}"
    assert proc.returncode == 0, output[-3000:]
    kills = [k for k in result["kills"] if k["pid"] is not None]
    assert len(kills) == sum(math.ceil(SECONDS / every) - 1 for every in (KILL_WORKER_EVERY_S, KILL_WRITER_EVERY_S)
                             if every), result["kills"]
    assert result["frames"]["received"] >= 0.8 * 100 * SECONDS  # the source kept (nearly) its rate

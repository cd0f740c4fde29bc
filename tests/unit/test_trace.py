"""ringstream/trace.py: stamps written by each process and read back as one table; a frame sent again keeps its last
stamp of each stage, a stage never reached is NaN; the summary's intervals."""

from __future__ import annotations

import numpy as np
import pytest

from ringstream.trace import (
    ACKED,
    PARTIAL_IN,
    RECEIVED,
    RELEASED,
    RESULT_IN,
    SENT,
    SLOT,
    StageTrace,
    out_of_order,
    summary,
    table,
)


def test_table_merges_processes_and_keeps_the_last_stamp(tmp_path):
    ingest, worker = StageTrace(tmp_path, "ingest"), StageTrace(tmp_path, "worker-0")
    ingest.mark(SLOT, 0, 1.0)
    ingest.mark(SENT, 0, 1.5)
    worker.mark(RECEIVED, 0, 2.0)
    ingest.mark(SENT, 1, 3.0)
    worker.mark(RECEIVED, 1, 4.0)
    worker.mark(RECEIVED, 1, 9.0)  # sent again (its first worker died): the later stamp counts
    worker.mark_many(RESULT_IN, [0, 1], 10.0)
    assert ingest.save().name.startswith("ingest-") and worker.save().name.startswith("worker-0-")
    frames, times = table(tmp_path)
    assert frames.tolist() == [0, 1]
    assert times[0, SLOT] == 1.0 and times[0, SENT] == 1.5 and times[0, RECEIVED] == 2.0
    assert times[1, RECEIVED] == 9.0 and times[1, SENT] == 3.0 and times[:, RESULT_IN].tolist() == [10.0, 10.0]
    assert np.isnan(times[1, SLOT]) and np.isnan(times[:, RELEASED]).all()


def test_summary_intervals_in_ms(tmp_path):
    t = StageTrace(tmp_path, "x")
    for f in range(100):
        t.mark(SLOT, f, f)
        t.mark(RESULT_IN, f, f + 0.010)
        t.mark(PARTIAL_IN, f, f + 0.020 + 0.001 * (f % 2))  # the later of the two starts the acknowledgement
        t.mark(ACKED, f, f + 0.030)
        t.mark(RELEASED, f, f + 0.050)
    t.save()
    rows = {r["interval"]: r for r in summary(table(tmp_path)[1])}
    ack = rows["the writer has both -> acknowledged"]
    assert ack["frames"] == 100 and ack["p50_ms"] == pytest.approx(9.5) and ack["max_ms"] == pytest.approx(10)
    hold = rows["hold: ring slot -> slot free"]
    assert hold["frames"] == 100 and hold["p50_ms"] == pytest.approx(50) and hold["max_ms"] == pytest.approx(50)
    assert rows["sent -> the worker took it"]["frames"] == 0


def test_no_stamps_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stage stamps"):
        table(tmp_path)


def test_out_of_order_names_the_stages_and_frames(tmp_path):
    t = StageTrace(tmp_path, "x")
    for f in range(3):
        t.mark(SLOT, f, 10.0 * f)
        t.mark(SENT, f, 10.0 * f + 1)
        t.mark(RECEIVED, f, 10.0 * f + (0.5 if f == 2 else 2))  # frame 2 taken before it was sent
    t.save()
    frames, times = table(tmp_path)
    assert out_of_order(frames, times) == ["received before sent for 1 frames, e.g. [2]"]

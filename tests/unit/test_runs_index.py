"""The index of runs (``runs.jsonl``): whole lines appended, readable while another process appends, a torn last
line skipped, records of a run merged (the last status wins), the runs a stopped service left open."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from ringstream.runs import RunIndex

pytestmark = pytest.mark.timeout(60)


def test_append_and_merge(tmp_path):
    index = RunIndex.in_state_dir(tmp_path / "state")
    assert index.runs() == [] and index.last_run() == 0
    index.append(1, "open", name="a", run_id="r1", files={"h5": "/d/run_00001.h5"}, first_frame_time=10.0)
    index.append(2, "open", name="b", run_id="r2", files={"h5": "/d/run_00002.h5"})
    index.append(1, "complete", last_frame_time=12.5, frames=25, counters={"written": 25, "rejected": 0})
    runs = index.runs()
    assert [r["run"] for r in runs] == [1, 2]
    one = runs[0]
    assert one["status"] == "complete" and one["name"] == "a" and one["files"] == {"h5": "/d/run_00001.h5"}
    assert one["first_frame_time"] == 10.0 and one["last_frame_time"] == 12.5 and one["frames"] == 25
    assert one["counters"] == {"written": 25, "rejected": 0} and one["time"].endswith("+00:00")
    assert [r["run"] for r in index.open_runs()] == [2]
    index.append(2, "interrupted", reason="the service stopped before the run ended")
    assert index.open_runs() == [] and index.runs()[1]["status"] == "interrupted"
    assert index.last_run() == 2
    lines = index.path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["run"] in (1, 2) for line in lines)


def test_unknown_status_is_refused(tmp_path):
    with pytest.raises(ValueError, match="run status 'done'"):
        RunIndex(tmp_path / "runs.jsonl").append(1, "done")


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    index = RunIndex(tmp_path / "runs.jsonl")
    index.append(1, "open", name="a")
    with open(index.path, "ab") as fh:
        fh.write(b'{"run": 1, "status": "compl')  # a crash in the middle of a write
    assert [r["status"] for r in index.records()] == ["open"]
    index.append(2, "open")
    assert [(r["run"], r["status"]) for r in index.records()] == [(1, "open"), (2, "open")]
    assert [r["run"] for r in index.open_runs()] == [1, 2]


def test_lines_that_are_not_records_are_skipped(tmp_path, caplog):
    index = RunIndex(tmp_path / "runs.jsonl")
    index.path.write_text('[1, 2]\n{"status": "open"}\nnot json\n')
    index.append(3, "failed", reason="disk full")
    assert [r["run"] for r in index.runs()] == [3]
    assert len(caplog.records) == 3


def _append(path: str, n: int) -> None:
    index = RunIndex(path)
    for i in range(1, n + 1):
        index.append(i, "open", name="x" * (i % 50), counters={"written": i})
        index.append(i, "complete", frames=i)


def test_read_while_another_process_appends(tmp_path):
    path = tmp_path / "runs.jsonl"
    proc = mp.get_context("spawn").Process(target=_append, args=(str(path), 150))
    proc.start()
    seen, deadline = [], time.monotonic() + 50
    try:
        while proc.is_alive() and time.monotonic() < deadline:
            records = RunIndex(path).records()  # never a partial record
            assert all(set(r) >= {"run", "status", "time"} for r in records)
            seen.append(len(records))
    finally:
        proc.join(timeout=20)
    assert proc.exitcode == 0
    assert seen == sorted(seen)
    runs = RunIndex(path).runs()
    assert len(runs) == 150 and all(r["status"] == "complete" and r["frames"] == r["run"] for r in runs)

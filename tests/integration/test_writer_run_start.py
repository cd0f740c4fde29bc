"""The writer process names a run's files after its RunStart whichever comes first: the RunStart (straight from the
ingest) or the run's first frame (through a worker, carrying the RunStart's fields under ``RUN_START_KEY``).

On a loaded 2-core CI box the frame once overtook the RunStart and the run ``blocked`` was written as
``x_00002.h5`` instead of failing on its folder; this drives a real writer process with the two in both orders."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import zmq
from test_crash_outputs import N_ETA, N_PEAKS, N_R, PARAMS, spawn_writer

from ringstream.protocol import RUN_START_KEY, EndOfStream, Result, RunStart, encode, result_buffers
from ringstream.transport.endpoints import free_tcp_endpoint


def _result(run_id: str, k: int, metadata: dict) -> list:
    rng = np.random.default_rng(k)
    msg = Result(run_id=run_id, frame_index=k, source_id=f"t:{k}", timestamp=time.time(), n_r=N_R, n_eta=N_ETA,
                 n_peaks=N_PEAKS, metadata=metadata)
    return encode(msg, result_buffers(rng.random(N_R, dtype=np.float32), None, rng.normal(size=(N_PEAKS, 7))))


@pytest.mark.timeout(120)
def test_a_runs_name_reaches_its_files_when_its_first_frame_overtakes_its_run_start(tmp_path):
    (tmp_path / "setup.txt").write_text(PARAMS)
    data = {"run": {"param_file": str(tmp_path / "setup.txt"), "output_h5": str(tmp_path / "{name}.h5")},
            "source": {"kind": "simulated", "frames": 0},
            "transport": {"results_endpoint": free_tcp_endpoint(), "events_endpoint": free_tcp_endpoint()},
            "supervisor": {"heartbeat_interval": 0.2}, "logging": {"level": "WARNING"}}
    ctx = zmq.Context()
    proc, events = spawn_writer(data, ctx)
    push = ctx.socket(zmq.PUSH)
    try:
        push.connect(data["transport"]["results_endpoint"])
        first = {"name": "first", "meta": {"T": "300"}, "reason": "runs start"}
        second = {"name": "second", "meta": {}, "reason": "runs start"}
        # run "first": its RunStart, then its frames (the usual order)
        push.send_multipart(encode(RunStart(run_id="r", first_frame=0, **first)))
        push.send_multipart(_result("r", 0, {"omega": 1.0, RUN_START_KEY: json.dumps(first)}))
        push.send_multipart(_result("r", 1, {"omega": 2.0}))
        push.send_multipart(encode(EndOfStream(run_id="r", first_frame=0, n_frames=2, final=False)))
        # run "second": its first frame before its RunStart
        push.send_multipart(_result("r.2", 2, {"omega": 3.0, RUN_START_KEY: json.dumps(second)}))
        push.send_multipart(_result("r.2", 3, {"omega": 4.0}))
        push.send_multipart(encode(RunStart(run_id="r.2", first_frame=2, **second)))
        push.send_multipart(encode(EndOfStream(run_id="r.2", first_frame=2, n_frames=2, final=True)))
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        push.close(linger=1000)
        events.close(linger=0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["first.h5", "second_00002.h5"]  # (a later run: its number)
    for file, omegas in (("first.h5", [1.0, 2.0]), ("second_00002.h5", [3.0, 4.0])):
        with h5py.File(tmp_path / file, "r") as f:
            data_ = f["/entry/data"]
            assert data_["I"].shape[0] == 2
            assert list(data_["omega"][:]) == omegas
            rows = [json.loads(s) for s in data_["metadata/metadata_json"].asstr()[:]]
            assert [sorted(r) for r in rows] == [["omega"], ["omega"]]  # the run's fields are not frame metadata

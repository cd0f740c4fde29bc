"""PVA frames through the real ingest and worker processes (spawn) to Results: NDAttributes kept by name arrive in
FrameHeader.metadata and from there in Result.metadata (what the writer records per frame), with the uniqueId as
source id and lineouts equal to the reference engine's. This test binds the results socket in the writer's place.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

pva = pytest.importorskip("pvaccess")
from common import NY, NZ  # noqa: E402
from pva_common import ntnd, session_epics_env  # noqa: E402
from test_pipeline import Pipeline, reference_lineouts, setup_run  # noqa: E402

from ringstream.ingest import process as ingest_process  # noqa: E402
from ringstream.protocol import (  # noqa: E402
    RUN_START_KEY,
    EndOfStream,
    OmegaPartial,
    Result,
    RunStart,
    decode,
    result_arrays,
)
from ringstream.workers import process as worker_process  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def loopback_epics(pytestconfig):
    """Every EPICS address variable on loopback, non-default ports (the spawned ingest inherits them)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in session_epics_env(pytestconfig).items():
            mp.setenv(key, value)
        yield


@pytest.mark.timeout(120)
def test_attributes_reach_result_metadata(tmp_path):
    name = f"rspipe{os.getpid()}:Image"
    server = pva.PvaServer()
    server.addRecord(name, pva.NtNdArray())
    n = 6
    config = setup_run(tmp_path, source={"kind": "pva", "pva_channel": name, "pva_dtype": "uint32",
                                         "pva_attributes": ["omega", "I0"], "frames": n},
                       workers={"count": 1})
    pipe = Pipeline(config, n_workers=1)
    results = pipe.zctx.socket(zmq.PULL)
    results.setsockopt(zmq.LINGER, 0)
    results.bind(config.transport.results_endpoint)
    try:
        pipe._start("worker-0", worker_process.run, index=0)
        pipe._start("ingest", ingest_process.run)
        deadline = time.monotonic() + 30
        while pipe.counters("ingest").get("pva_connected") != 1:
            assert time.monotonic() < deadline, f"ingest never connected: {pipe.counters('ingest')}"
            time.sleep(0.05)
        rng = np.random.default_rng(11)
        frames = [rng.poisson(25.0, (NZ, NY)).astype(np.uint32) for _ in range(n)]
        for k, img in enumerate(frames):
            server.update(name, ntnd(500 + k, img, {"omega": 0.1 * k, "I0": 20000 + k, "Other": "x"}))
        got: list[tuple[Result, np.ndarray]] = []
        eos = None
        while len(got) < n or eos is None:
            assert results.poll(30000), f"only {len(got)} results; ingest {pipe.counters('ingest')}"
            msg, buffers = decode(results.recv_multipart())
            if isinstance(msg, EndOfStream):
                eos = msg
                continue
            if isinstance(msg, (OmegaPartial, RunStart)):  # omega sums (Write2D 0) and run starts share the socket
                continue
            assert isinstance(msg, Result) and msg.status == "ok", msg
            got.append((msg, result_arrays(msg, buffers)[0].copy()))
        assert eos.n_frames == n and eos.counters["pva_received"] == n and eos.counters["pva_gaps"] == 0
        got.sort(key=lambda r: r[0].frame_index)
        assert [r.source_id for r, _ in got] == [str(500 + k) for k in range(n)]
        for k, (r, _) in enumerate(got):
            run_start = r.metadata.pop(RUN_START_KEY, None)  # the run's first frame carries its RunStart's fields
            assert (run_start is not None) == (k == 0)
            assert r.metadata == {"omega": 0.1 * k, "I0": 20000 + k}
        expected = reference_lineouts(config, frames)
        np.testing.assert_allclose(np.stack([lo for _, lo in got]), expected, rtol=1e-6, atol=1e-6)
        assert pipe.wait_for("ingest", 30) == 0
        pipe.stops["worker-0"].set()
        assert pipe.wait_for("worker-0", 30) == 0
    finally:
        results.close(linger=0)
        leaked = pipe.cleanup()
        server.stop()
    assert not leaked

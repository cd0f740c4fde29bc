"""The three daemon roles end to end, started here as spawn processes (no supervisor) on loopback TCP ports.

Ingest (simulated or replay source, shared-memory ring or inline frames) -> 1..2 workers (reference engine) -> the
writer's HDF5 file, checked row by row against the reference engine applied to the same frames recomputed in the
test. The test binds the events PULL itself and reads the children's counters from their heartbeats. Every test
has a timeout, and a child still alive at the end is killed and fails the test.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import zmq
from common import NY, NZ, SMALL_PARAMS

from ringstream.config import DaemonConfig
from ringstream.engines.base import Capabilities
from ringstream.engines.reference import ReferenceEngine
from ringstream.geometry.cache import load_or_build
from ringstream.ingest import process as ingest_process
from ringstream.ingest.simulated import SimulatedSource
from ringstream.protocol import Credit, EndOfStream, FrameAck, FrameHeader, Heartbeat, Result, decode, encode
from ringstream.transport import free_tcp_endpoint
from ringstream.workers import process as worker_process
from ringstream.writer import process as writer_process

pytestmark = pytest.mark.timeout(120)

PARAMS = SMALL_PARAMS

CTX = mp.get_context("spawn")


def slow_worker_run(config, ready, stop, index=0):
    """A worker whose engine takes >= 20 ms per frame (importable by name, so a spawn child can run it)."""
    real = worker_process.create_engine

    class Slow:
        capabilities = Capabilities()

        def __init__(self, engine):
            self.engine, self.name = engine, engine.name

        def integrate(self, frame):
            time.sleep(0.02)
            return self.engine.integrate(frame)

    worker_process.create_engine = lambda *a, **k: Slow(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


class _DeferredEngine:
    """The reference engine behind the GPU engine's asynchronous API (submit / collect / ready, ``batch`` frames,
    ``n_streams`` submissions open at most). It reads a submission's frames only when collected, as a device may
    read them until it is done, so a worker that released slots early would integrate overwritten pixels."""

    capabilities = Capabilities(asynchronous=True)

    def __init__(self, engine, batch=4, n_streams=3):
        self.engine, self.name, self.batch, self.n_streams = engine, engine.name, batch, n_streams
        self.open: list = []
        self.rng = np.random.default_rng(5)

    def integrate(self, frame):
        return self.engine.integrate(frame)

    def submit(self, frames, want_cake=True):
        assert 0 < len(frames) <= self.batch and len(self.open) < self.n_streams
        sub = types_ns(frames=list(frames), want_cake=want_cake,
                       due=time.monotonic() + float(self.rng.uniform(0, 0.003)))
        sub.ready = lambda: time.monotonic() >= sub.due
        self.open.append(sub)
        return sub

    def collect(self, sub):
        self.open.remove(sub)
        time.sleep(max(0.0, sub.due - time.monotonic()))
        lines, cakes = self.engine.integrate_batch(np.stack(sub.frames))
        sub.frames = None  # no view of a slot outlives its collection
        return lines, (cakes if sub.want_cake else None)


class _DeviceSumEngine(_DeferredEngine):
    """``_DeferredEngine`` with the GPU engine's result buffers and device omega sums: ``collect`` returns views of
    its stream's result buffers, which the next ``submit`` on that stream poisons with NaN (as the next copy back
    overwrites a CupyEngine stream's pinned buffers), and ``omega_add`` / ``omega_take`` sum float32-rounded cakes
    per (stream, group) on this side."""

    capabilities = Capabilities(asynchronous=True, device_omega_sums=True)

    def __init__(self, engine, batch=4, n_streams=3):
        super().__init__(engine, batch, n_streams)
        self.next, self.buffers, self.cakes, self.sums = 0, {}, {}, {}

    def submit(self, frames, want_cake=True):
        sub = super().submit(frames, want_cake)
        sub.stream, self.next = self.next, (self.next + 1) % self.n_streams
        if sub.stream in self.buffers:
            self.buffers[sub.stream][...] = np.nan
        return sub

    def collect(self, sub):
        want = sub.want_cake
        sub.want_cake = True  # the device has the cakes either way
        lines, cakes = super().collect(sub)
        sub.want_cake = want
        self.buffers[sub.stream] = buf = np.array(lines)
        self.cakes[sub.stream] = cakes.astype(np.float32).astype(np.float64)
        return buf, (cakes if want else None)

    def omega_add(self, sub, groups):
        for k, g in enumerate(groups):
            key = (sub.stream, g)
            self.sums[key] = self.sums.get(key, 0.0) + self.cakes[sub.stream][k]

    def omega_take(self, groups, dtype=np.float64):
        out = []
        for group in groups:
            parts = [self.sums.pop(k) for k in sorted(self.sums) if k[1] == group]
            out.append(sum(parts[1:], parts[0]).astype(dtype) if parts else None)
        return out


class _PinnedCakesEngine(_DeviceSumEngine):
    """``_DeviceSumEngine`` whose ``collect`` returns the cakes as views of its stream's buffer too, poisoned with NaN
    at the stream's next submit (as a CupyEngine stream's pinned cake buffer is overwritten)."""

    def __init__(self, engine, batch=4, n_streams=3):
        super().__init__(engine, batch, n_streams)
        self.cake_buffers = {}

    def submit(self, frames, want_cake=True):
        sub = super().submit(frames, want_cake)
        if sub.stream in self.cake_buffers:
            self.cake_buffers[sub.stream][...] = np.nan
        return sub

    def collect(self, sub):
        lines, cakes = super().collect(sub)
        if cakes is not None:
            self.cake_buffers[sub.stream] = cakes = np.array(cakes)
        return lines, cakes


def pinned_cakes_worker_run(config, ready, stop, index=0):
    """A worker whose engine hands out cakes it overwrites later (see _PinnedCakesEngine)."""
    real = worker_process.create_engine
    worker_process.create_engine = lambda *a, **k: _PinnedCakesEngine(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


def device_sum_worker_run(config, ready, stop, index=0):
    """A worker whose engine has the GPU engine's result buffers and device omega sums (see _DeviceSumEngine)."""
    real = worker_process.create_engine
    worker_process.create_engine = lambda *a, **k: _DeviceSumEngine(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def deferred_worker_run(config, ready, stop, index=0):
    """A worker whose engine has the GPU engine's asynchronous API (importable by name for a spawn child)."""
    real = worker_process.create_engine
    worker_process.create_engine = lambda *a, **k: _DeferredEngine(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


class Pipeline:
    """Writer, workers and ingest as spawn children of this process, plus the events PULL they report to."""

    def __init__(self, config: DaemonConfig, n_workers: int = 2, worker_target=worker_process.run) -> None:
        self.config = config
        self.zctx = zmq.Context()
        self.events = self.zctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(config.transport.events_endpoint)
        self.beats: dict[tuple[str, int], Heartbeat] = {}
        self.procs: dict[str, mp.Process] = {}
        self.stops: dict[str, object] = {}
        self.n_workers = n_workers
        self.worker_target = worker_target

    def _start(self, name, target, **kwargs):
        ready, stop = CTX.Event(), CTX.Event()
        proc = CTX.Process(target=target, args=(self.config, ready, stop), kwargs=kwargs, name=name, daemon=True)
        proc.start()
        self.procs[name], self.stops[name] = proc, stop
        deadline = time.monotonic() + 60
        while not ready.wait(0.05):
            self.pump()
            assert proc.is_alive(), f"{name} exited with {proc.exitcode} before it was ready"
            assert time.monotonic() < deadline, f"{name} not ready within 60 s"

    def start(self, ingest: bool = True) -> Pipeline:
        self._start("writer", writer_process.run)
        for i in range(self.n_workers):
            self._start(f"worker-{i}", self.worker_target, index=i)
        self.t0 = time.monotonic()
        if ingest:
            self._start("ingest", ingest_process.run)
        return self

    def pump(self, timeout_ms: int = 0) -> None:
        """Read every heartbeat waiting on the events socket (keeping the latest per child)."""
        while self.events.poll(timeout_ms):
            timeout_ms = 0
            msg, _ = decode(self.events.recv_multipart())
            assert isinstance(msg, Heartbeat)
            self.beats[(msg.role, msg.index)] = msg

    def counters(self, role: str, index: int = 0) -> dict:
        self.pump()
        beat = self.beats.get((role, index))
        return dict(beat.counters) if beat else {}

    def wait_for(self, name: str, timeout: float = 60) -> int:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while proc.is_alive():
            self.pump(50)
            assert time.monotonic() < deadline, f"{name} still running after {timeout} s"
        proc.join()
        return proc.exitcode

    def finish(self, timeout: float = 60) -> dict[str, int]:
        """Wait for the writer (end of run), then stop the workers; every exit code, by name."""
        codes = {"writer": self.wait_for("writer", timeout)}
        self.seconds = time.monotonic() - self.t0
        if "ingest" in self.procs:
            codes["ingest"] = self.wait_for("ingest", timeout)
        for name in self.procs:
            if name.startswith("worker"):
                self.stops[name].set()
        for name in self.procs:
            if name.startswith("worker"):
                codes[name] = self.wait_for(name, 10)
        self.pump(100)
        return codes

    def cleanup(self) -> list[str]:
        """Kill whatever is still running; the names of the leaked children."""
        leaked = []
        for name, proc in self.procs.items():
            if proc.is_alive():
                leaked.append(name)
                proc.kill()
                proc.join(5)
        self.events.close(linger=0)
        self.zctx.term()
        return leaked


@pytest.fixture
def pipelines():
    made: list[Pipeline] = []

    def make(config, ingest: bool = True, **kwargs) -> Pipeline:
        pipe = Pipeline(config, **kwargs)
        made.append(pipe)
        return pipe.start(ingest=ingest)

    yield make
    leaked = [name for pipe in made for name in pipe.cleanup()]
    assert not leaked, f"child processes left running (killed): {leaked}"


def setup_run(tmp_path: Path, name: str = "out.h5", extra_params: str = "", **sections) -> DaemonConfig:
    """A config over a 128 x 128 detector with fresh loopback endpoints; the map is built here (children hit it)."""
    pfile = tmp_path / "setup.txt"
    pfile.write_text(PARAMS.format(nz=NZ, ny=NY) + extra_params)
    data = {
        "run": {"param_file": str(pfile), "output_h5": str(tmp_path / name), "save_interval": 50},
        "source": {"kind": "simulated", "frames": 200},
        "workers": {"count": 2, "engine": "cpu"},
        "transport": {k: free_tcp_endpoint() for k in
                      ("frames_endpoint", "results_endpoint", "release_endpoint", "events_endpoint")},
        "supervisor": {"heartbeat_interval": 0.1},
        "logging": {"level": "WARNING"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config = DaemonConfig.from_dict(data)
    load_or_build(config.load_params())
    return config


def reference_lineouts(config: DaemonConfig, frames) -> np.ndarray:
    params = config.load_params()
    imap, from_cache = load_or_build(params)
    assert from_cache
    engine = ReferenceEngine(imap, normalize=params.Normalize)
    return np.stack([engine.integrate(f)[0] for f in frames])


def read_h5(path) -> dict:
    with h5py.File(path, "r") as f:
        data = f["/entry/data"]
        out = {
            "I": data["I"][()],
            "frame_index": data["frame_index"][()],
            "source_id": [s.decode() if isinstance(s, bytes) else s for s in data["source_id"][()]],
            "run_complete": bool(f["/entry"].attrs["run_complete"]),
            "frames_written": int(f["/entry"].attrs["frames_written"]),
            "engine": f["/entry/reduction/engine"][()].decode(),
        }
        if "cake" in f:
            out["cake"] = f["/cake/data/I"][()].transpose(0, 2, 1)  # (stored [nImg, nEta, nR], NXazint2d)
    return out


def my_shm_segments(pipe: Pipeline | None = None) -> list[str]:
    """Frame-ring segments in /dev/shm; with ``pipe``, only those its children created (a ring is named
    ``ringstream-<creator pid>-<random>``), so rings of other test runs on the same machine do not count."""
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith("ringstream-")]
    except FileNotFoundError:
        return []
    if pipe is None:
        return names
    pids = {str(p.pid) for p in pipe.procs.values()}
    return [n for n in names if n.split("-")[1] in pids]


def assert_clean_exit(codes: dict[str, int]) -> None:
    assert all(code == 0 for code in codes.values()), codes


# ------------------------------------------------------------------------------------------------------ tests


def test_simulated_two_workers_every_frame_once_in_order(tmp_path, pipelines):
    # paced at 500 Hz (0.4 s), so that the second worker's connection (retried every 100 ms until the ingest binds)
    # is up long before the end and both workers take part
    config = setup_run(tmp_path, source={"rate": 500.0})
    pipe = pipelines(config, n_workers=2)
    codes = pipe.finish()
    assert_clean_exit(codes)
    out = read_h5(config.run.output_h5)
    n = 200
    np.testing.assert_array_equal(out["frame_index"], np.arange(n, dtype=np.uint64))
    assert out["run_complete"] and out["frames_written"] == n
    assert out["engine"] == "cpu"
    assert out["source_id"][:2] == ["simulated:0", "simulated:1"]
    source = SimulatedSource.from_config(config, config.load_params())
    ref = reference_lineouts(config, [source.make_frame(k) for k in range(n)])
    assert out["I"].dtype == np.float32
    np.testing.assert_allclose(out["I"], ref, rtol=1e-6, atol=0)
    # both workers took part, nothing was dropped or rejected, the ring is gone
    done = [pipe.counters("worker", i).get("integrated", 0) for i in range(2)]
    assert sum(done) == n and min(done) > 0, done
    ingest = pipe.counters("ingest")
    assert ingest["sent"] == n and ingest["received"] == n
    assert not any(v for k, v in ingest.items() if k.startswith("dropped_"))
    writer = pipe.counters("writer")
    assert writer["written"] == n and writer["rejected"] == 0 and writer["pending"] == 0
    assert pipe.beats[("writer", 0)].state == "done"
    assert my_shm_segments(pipe) == []


def test_replay_npy_stack_looped_with_cakes(tmp_path, pipelines):
    rng = np.random.default_rng(3)
    stack = rng.poisson(200, size=(5, NZ, NY)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    n = 23
    config = setup_run(tmp_path, extra_params="Write2D 1\n",
                       source={"kind": "replay", "replay_path": str(tmp_path / "stack.npy"), "frames": n,
                               "loop": True})
    codes = pipelines(config, n_workers=2).finish()
    assert_clean_exit(codes)
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    assert out["source_id"] == [f"stack.npy:{k % 5}" for k in range(n)]
    params = config.load_params()
    engine = ReferenceEngine(load_or_build(params)[0])
    refs = [engine.integrate(stack[k % 5]) for k in range(n)]
    np.testing.assert_allclose(out["I"], np.stack([lineout for lineout, _ in refs]), rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["cake"], np.stack([cake for _, cake in refs]), rtol=1e-6, atol=0)
    assert out["run_complete"]


def test_replay_once_through_without_loop(tmp_path, pipelines):
    stack = np.random.default_rng(4).poisson(100, size=(4, NZ, NY)).astype(np.int32)
    np.save(tmp_path / "stack.npy", stack)
    config = setup_run(tmp_path, source={"kind": "replay", "replay_path": str(tmp_path / "stack.npy"),
                                         "frames": 0, "loop": False})
    assert_clean_exit(pipelines(config, n_workers=1).finish())
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(4))
    np.testing.assert_allclose(out["I"], reference_lineouts(config, stack), rtol=1e-6, atol=0)


def test_inline_frames_give_identical_lineouts(tmp_path, pipelines):
    n = 40
    shm_dir, inline_dir = tmp_path / "shm", tmp_path / "inline"
    shm_dir.mkdir()
    inline_dir.mkdir()
    results = {}
    for folder, shared in ((shm_dir, True), (inline_dir, False)):
        config = setup_run(folder, source={"frames": n, "seed": 7, "dtype": "uint16"},
                           transport={"shared_memory": shared})
        assert_clean_exit(pipelines(config).finish())
        results[shared] = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(results[False]["frame_index"], np.arange(n))
    np.testing.assert_array_equal(results[True]["I"], results[False]["I"])
    assert results[False]["run_complete"]


def _garbage_messages(kind: str) -> list[list[bytes]]:
    """Three bad messages for a socket: not msgpack, another protocol version, buffers not matching the header."""
    if kind == "result":
        good = encode(Result(run_id="x", frame_index=10**6, status="ok", n_r=4), [np.zeros(4, "<f4")])
        bad_size = [bytes(good[0]), b"\x00" * 3]
    else:
        good = encode(FrameAck(frames=[10**6]))
        bad_size = [bytes(good[0]), b"unexpected buffer"]
    header = msgpack.unpackb(bytes(good[0]))
    header["version"] = 99
    return [[b"\xc1 this is not msgpack"], [msgpack.packb(header)], bad_size]


def test_garbage_is_counted_and_ignored(tmp_path, pipelines):
    n = 60
    config = setup_run(tmp_path, source={"frames": n, "rate": 40.0})
    pipe = pipelines(config, n_workers=1)
    push = {}
    for name, endpoint, kind in (("writer", config.transport.results_endpoint, "result"),
                                 ("ingest", config.transport.release_endpoint, "release")):
        sock = pipe.zctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(endpoint)
        for msg in _garbage_messages(kind):
            sock.send_multipart(msg)
        push[name] = sock
    # a well-formed acknowledgement of a frame that is not in flight is not taken for a real one
    push["ingest"].send_multipart(encode(FrameAck(frames=[10**6])))
    codes = pipe.finish()
    for sock in push.values():
        sock.close()
    assert_clean_exit(codes)
    for role in ("writer", "ingest"):
        c = pipe.counters(role)
        for kind in ("malformed", "version", "size"):
            assert c[f"protocol_errors_{kind}"] == 1, (role, c)
    assert pipe.counters("ingest")["acks_unexpected"] == 1
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    source = SimulatedSource.from_config(config, config.load_params())
    ref = reference_lineouts(config, [source.make_frame(k) for k in range(n)])
    np.testing.assert_allclose(out["I"], ref, rtol=1e-6, atol=0)
    assert out["run_complete"]


def test_backpressure_small_ring_slow_worker_loses_nothing(tmp_path, pipelines):
    n = 40
    config = setup_run(tmp_path, source={"frames": n}, transport={"ring_slots": 2, "queue_depth": 2})
    pipe = pipelines(config, n_workers=1, worker_target=slow_worker_run)
    assert_clean_exit(pipe.finish())
    assert pipe.seconds >= n * 0.02
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    ingest = pipe.counters("ingest")
    assert ingest["sent"] == n and not any(v for k, v in ingest.items() if k.startswith("dropped_"))
    assert out["run_complete"]


def test_stop_mid_run_sends_eos_and_everything_is_written(tmp_path, pipelines):
    config = setup_run(tmp_path, source={"frames": 0, "rate": 100.0})  # forever, until stopped
    pipe = pipelines(config, n_workers=2)
    deadline = time.monotonic() + 30
    while pipe.counters("writer").get("written", 0) < 20:
        pipe.pump(50)
        assert time.monotonic() < deadline, "nothing written"
    pipe.stops["ingest"].set()
    codes = pipe.finish()
    assert_clean_exit(codes)
    sent = pipe.counters("ingest")["sent"]
    assert sent >= 20
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(sent))
    assert out["run_complete"]
    assert pipe.counters("writer")["eos_frames"] == sent


def test_writer_stopped_early_keeps_what_it_has(tmp_path, pipelines):
    config = setup_run(tmp_path, source={"frames": 0, "rate": 50.0})
    pipe = pipelines(config, n_workers=1)
    deadline = time.monotonic() + 30
    while pipe.counters("writer").get("written", 0) < 5:
        pipe.pump(50)
        assert time.monotonic() < deadline, "nothing written"
    # a failure elsewhere: the supervisor stops ingest, workers, then the writer without waiting for the EOS
    for name in ("ingest", "worker-0", "writer"):
        pipe.stops[name].set()
    for name in ("ingest", "worker-0", "writer"):
        assert pipe.wait_for(name, 30) == 0
    out = read_h5(config.run.output_h5)
    idx = out["frame_index"]
    assert len(idx) >= 5 and np.all(np.diff(idx.astype(np.int64)) > 0)


def test_worker_rejects_a_frame_of_the_wrong_shape_and_carries_on(tmp_path, pipelines):
    """The test plays the ingest: inline frames 0 (wrong shape), 1 (good), 2 (good); EOS(3) to the writer."""
    config = setup_run(tmp_path, source={"frames": 3}, transport={"shared_memory": False})
    zctx = zmq.Context.instance()
    frames = zctx.socket(zmq.ROUTER)
    frames.setsockopt(zmq.LINGER, 1000)
    frames.bind(config.transport.frames_endpoint)
    try:
        pipe = pipelines(config, ingest=False, n_workers=1)
        assert frames.poll(30_000), "the worker announced no credit"
        identity, *hello = frames.recv_multipart()
        credit = decode(hello)[0]
        assert isinstance(credit, Credit) and credit.n >= 3 and identity == f"worker-0-{credit.pid}".encode()
        good = SimulatedSource.from_config(config, config.load_params())
        pixels = [np.zeros((NZ // 2, NY), np.int32), good.make_frame(1), good.make_frame(2)]
        for k, img in enumerate(pixels):
            header = FrameHeader(run_id="t", frame_index=k, source_id=f"t:{k}", timestamp=time.time(),
                                 shape=img.shape, dtype=img.dtype.str)
            frames.send_multipart([identity, *encode(header, [img])])
        eos = zctx.socket(zmq.PUSH)
        eos.setsockopt(zmq.LINGER, 1000)
        eos.connect(config.transport.results_endpoint)
        eos.send_multipart(encode(EndOfStream(run_id="t", n_frames=3)))
        codes = pipe.finish()
        eos.close()
    finally:
        frames.close()
    assert_clean_exit(codes)
    assert pipe.counters("worker")["rejected"] == 1 and pipe.counters("worker")["integrated"] == 2
    writer = pipe.counters("writer")
    assert writer["rejected"] == 1 and writer["written"] == 2
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], [1, 2])
    assert out["run_complete"]
    np.testing.assert_allclose(out["I"], reference_lineouts(config, pixels[1:]), rtol=1e-6, atol=0)


class _FormsSource:
    """Frames of SimulatedSource in the three SourceFrame forms: k % 3 == 0 pixels, 1 fill (into the slot or a
    fresh array), 2 lease (copied into a slot from the allocator); frame 7's fill raises, as a file gone bad."""

    name = "forms"
    pausable = True
    resumable = False  # (a replacement ingest could not go on with it: see ringstream.ingest.source_base)
    rate = 0.0

    def __init__(self, params, n: int) -> None:
        self.sim = SimulatedSource(params, dtype="uint16")
        self.shape, self.dtype, self.n = self.sim.shape, self.sim.dtype, n
        self.allocator = None
        self.leases = 0

    def attach_ring(self, allocator) -> None:
        self.allocator = allocator

    def counters(self) -> dict:
        return {"source_leases": self.leases}

    def frames(self, stop=None):
        from ringstream.ingest.source_base import IDLE, SourceFrame

        for k in range(self.n):
            img = self.sim.make_frame(k)
            sid = f"forms:{k}"
            if k == 7:
                def bad(out):
                    raise OSError("forms:7 truncated")
                yield SourceFrame(None, sid, 0.0, fill=bad, shape=self.shape, dtype=self.dtype)
            elif k % 3 == 1 or (k % 3 == 2 and self.allocator is None):
                yield SourceFrame(None, sid, 0.0, fill=lambda out, img=img: np.copyto(out, img),
                                  shape=self.shape, dtype=self.dtype)
            elif k % 3 == 2:
                # this generator runs on the ingest's own thread, which frees slots only between frames: waiting
                # here for a lease could wait forever, so a full ring sends the frame as pixels instead
                lease = self.allocator.acquire(self.shape, self.dtype)
                while lease is None:  # the ring is full: let the ingest read the workers' releases meanwhile
                    yield IDLE
                    lease = self.allocator.acquire(self.shape, self.dtype)
                np.copyto(lease.array, img)
                self.leases += 1
                yield SourceFrame(lease.array, sid, 0.0, lease=lease)
            else:
                yield SourceFrame(img, sid, 0.0)

    def close(self) -> None:
        pass


def forms_ingest_run(config, ready, stop):
    """The real ingest with make_source replaced by _FormsSource (importable by name for a spawn child)."""
    ingest_process.make_source = lambda cfg, params: _FormsSource(params, 30)
    return ingest_process.run(config, ready, stop)


@pytest.mark.parametrize("shared_memory", [True, False], ids=["ring", "inline"])
def test_fill_and_lease_frames_arrive_intact_and_a_failed_fill_is_counted(tmp_path, shared_memory):
    config = setup_run(tmp_path, transport={"shared_memory": shared_memory, "ring_slots": 4})
    pipe = Pipeline(config, n_workers=2)
    try:
        pipe.start(ingest=False)
        pipe._start("ingest", forms_ingest_run)
        codes = pipe.finish()
        assert_clean_exit(codes)
        ingest = pipe.counters("ingest")
        assert ingest["received"] == 30 and ingest["sent"] == 29 and ingest["dropped_read_error"] == 1
        assert ingest["source_leases"] == (10 if shared_memory else 0)  # k = 2, 5, ... 29
        out = read_h5(config.run.output_h5)
        keep = [k for k in range(30) if k != 7]
        assert out["source_id"] == [f"forms:{k}" for k in keep]
        np.testing.assert_array_equal(out["frame_index"], np.arange(29))
        sim = SimulatedSource(config.load_params(), dtype="uint16", precompute=False)
        expected = reference_lineouts(config, [sim.make_frame(k) for k in keep])
        np.testing.assert_allclose(out["I"], expected, rtol=1e-5, atol=1e-6)
        assert my_shm_segments(pipe) == []
    finally:
        assert not pipe.cleanup()


def test_replay_through_copy_threads_bit_exact_in_order(tmp_path, pipelines):
    # three ingest copy threads (the path a many-core GPU host takes by default) on this small box: frames are copied
    # into the ring concurrently but announced in source order, so indices, ids and lineouts are as with one thread
    rng = np.random.default_rng(11)
    stack = rng.integers(1, 60000, size=(7, NZ, NY)).astype(np.int32)
    np.save(tmp_path / "stack.npy", stack)
    n = 150
    config = setup_run(tmp_path, extra_params="Write2D 1\n",
                       source={"kind": "replay", "replay_path": str(tmp_path / "stack.npy"), "frames": n,
                               "loop": True},
                       transport={"copy_threads": 3, "ring_slots": 8})
    pipe = pipelines(config, n_workers=2)
    codes = pipe.finish()
    assert_clean_exit(codes)
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    assert out["source_id"] == [f"stack.npy:{k % 7}" for k in range(n)]
    engine = ReferenceEngine(load_or_build(config.load_params())[0])
    refs = [engine.integrate(stack[k]) for k in range(7)]
    np.testing.assert_allclose(out["cake"], np.stack([refs[k % 7][1] for k in range(n)]), rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["I"], np.stack([refs[k % 7][0] for k in range(n)]), rtol=1e-6, atol=0)
    ingest = pipe.counters("ingest")
    assert ingest["sent"] == n and ingest["received"] == n and ingest["in_flight"] == 0
    assert not any(v for k, v in ingest.items() if k.startswith("dropped_"))


def test_pipelined_worker_keeps_batches_in_flight_and_releases_slots_only_when_done(tmp_path, pipelines):
    # [workers] batches_in_flight = 3 with an engine that reads a batch's slots until it is collected: with a ring
    # of 6 slots the ingest reuses slots at once, so any early release would show as wrong lineouts or cakes
    rng = np.random.default_rng(12)
    stack = rng.integers(1, 30000, size=(9, NZ, NY)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    n = 120
    config = setup_run(tmp_path, extra_params="Write2D 1\n",
                       source={"kind": "replay", "replay_path": str(tmp_path / "stack.npy"), "frames": n},
                       workers={"batches_in_flight": 3}, transport={"ring_slots": 6})
    pipe = pipelines(config, n_workers=2, worker_target=deferred_worker_run)
    codes = pipe.finish()
    assert_clean_exit(codes)
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    assert out["source_id"] == [f"stack.npy:{k % 9}" for k in range(n)]
    engine = ReferenceEngine(load_or_build(config.load_params())[0])
    refs = [engine.integrate(stack[k]) for k in range(9)]
    np.testing.assert_allclose(out["I"], np.stack([refs[k % 9][0] for k in range(n)]), rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["cake"], np.stack([refs[k % 9][1] for k in range(n)]), rtol=1e-6, atol=0)
    done = [pipe.counters("worker", i).get("integrated", 0) for i in range(2)]
    assert sum(done) == n
    assert pipe.counters("writer")["rejected"] == 0


def test_pipelined_worker_fits_held_batches_together_and_sums_omega_on_the_device(tmp_path, pipelines):
    # Write2D 0 with two peaks: the pipelined worker sums the cakes with the engine (omega_add) and holds finished
    # batches to fit several in one call; their lineouts must be copies (the engine's buffers are poisoned at the
    # next submit), every frame's fit equal to fitting the reference lineout, every omega group's sum exact
    n, osf = 240, 10
    config = setup_run(tmp_path, extra_params=f"Write2D 0\nOmegaSumFrames {osf}\nPeakLocation 20\nPeakLocation 35\n",
                       source={"kind": "simulated", "frames": n}, workers={"batches_in_flight": 3})
    pipe = pipelines(config, n_workers=2, worker_target=device_sum_worker_run)
    codes = pipe.finish()
    assert_clean_exit(codes)
    params = config.load_params()
    imap = load_or_build(params)[0]
    sim = SimulatedSource(params, n_frames=n, seed=0, dtype="int32", precompute=False)
    lines, cakes = ReferenceEngine(imap, normalize=params.Normalize).integrate_batch(
        np.stack([sim.make_frame(k) for k in range(n)]))
    with h5py.File(config.run.output_h5, "r") as f:
        e = f["entry"]
        np.testing.assert_array_equal(e["data/frame_index"][()], np.arange(n))
        np.testing.assert_allclose(e["data/I"][()], lines, rtol=1e-6, atol=0)
        from ringstream.fitting.frame import FrameFitter

        want = FrameFitter(params, imap.r_px, engine="nlopt").fit_many(list(lines))
        rows = e["fit/peaks"][()]
        assert rows.shape == (n, 2, 7) and np.isfinite(rows[:, :, 3]).all()
        np.testing.assert_allclose(rows, np.stack([w.fit for w in want]), rtol=1e-6, atol=1e-9)
        o = e["omega_sum"]
        assert list(o["n_frames"][()]) == [osf] * (n // osf)
        ref = cakes.astype(np.float32).astype(np.float64).reshape(n // osf, osf, *cakes.shape[1:]).sum(axis=1)
        np.testing.assert_allclose(o["I"][()], ref, rtol=6e-8, atol=0)  # float32: the float64 sums rounded once
    workers = [pipe.counters("worker", i) for i in range(2)]
    assert sum(w["integrated"] for w in workers) == n
    # held batches were fitted together: fewer fit calls than batches of 4
    assert sum(w["fit_calls"] for w in workers) < n / 4, workers


def test_pipelined_worker_holds_batches_for_per_eta_fits_with_their_cakes_copied(tmp_path, pipelines):
    # [fit] per_eta with Write2D 0: the cakes come back for the per-eta fits (and the omega sums, then made on this
    # side); finished batches are still held and fitted together, so their cakes must be copies (the engine poisons
    # its buffers at the next submit): every per-eta fit equals fitting the reference cakes, every sum exact
    n, osf = 48, 8
    config = setup_run(tmp_path, extra_params=f"Write2D 0\nOmegaSumFrames {osf}\nPeakLocation 20\nPeakLocation 35\n",
                       source={"kind": "simulated", "frames": n}, workers={"batches_in_flight": 3},
                       fit={"per_eta": True})
    pipe = pipelines(config, n_workers=2, worker_target=pinned_cakes_worker_run)
    assert_clean_exit(pipe.finish())
    params = config.load_params()
    imap = load_or_build(params)[0]
    sim = SimulatedSource(params, n_frames=n, seed=0, dtype="int32", precompute=False)
    lines, cakes = ReferenceEngine(imap, normalize=params.Normalize).integrate_batch(
        np.stack([sim.make_frame(k) for k in range(n)]))
    from ringstream.fitting.caked import CakedFitter

    want = CakedFitter(params, imap.two_theta, imap.r_px, imap.n_eta, 2).fit_many(list(cakes), list(lines))
    with h5py.File(config.run.output_h5, "r") as f:
        e = f["entry"]
        got = e["fit/caked"][()]
        assert got.shape == (n, imap.n_eta, 2, 7) and np.isfinite(got[..., 1]).sum() > n * imap.n_eta
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-9, atol=1e-12)
        ref = cakes.astype(np.float32).astype(np.float64).reshape(n // osf, osf, *cakes.shape[1:]).sum(axis=1)
        np.testing.assert_allclose(e["omega_sum/I"][()], ref, rtol=6e-8, atol=0)
    workers = [pipe.counters("worker", i) for i in range(2)]
    assert sum(w["integrated"] for w in workers) == n
    assert sum(w["fit_calls"] for w in workers) < n / 4, workers  # held: fewer fit calls than batches of 4


class _DecodingEngine(_DeviceSumEngine):
    """``_DeviceSumEngine`` that takes compressed frames as the GPU engine does (``compressed_input``): a submission
    of EncodedFrames is decoded with the GPU decoder's algorithm in NumPy (gpu_decode.decode_batch_reference), a
    frame it flags integrated as garbage and named by ``decode_failed``; ``integrate`` of one decodes on the CPU."""

    capabilities = Capabilities(asynchronous=True, device_omega_sums=True, compressed_input=True)

    def submit(self, frames, want_cake=True):
        from ringstream.engines.gpu_decode import decode_batch_reference

        out, err = decode_batch_reference(list(frames))
        raw = [out[k].view(f.dtype).reshape(f.shape) for k, f in enumerate(frames)]
        sub = super().submit(raw, want_cake)
        sub.failed = [int(k) for k in np.flatnonzero(err)]
        return sub

    def decode_failed(self, sub):
        return sub.failed

    def integrate(self, frame):
        return super().integrate(frame.decode() if hasattr(frame, "decode") else frame)

    def omega_add(self, sub, groups):
        super().omega_add(sub, [g for g in groups])
        self.sums.pop((sub.stream, -1), None)  # -1: a frame summed nowhere


def play_ingest(config, pipelines, worker_target, messages: list) -> tuple:
    """Be the ingest for one worker (``worker_target``) and the writer: send it ``messages`` (``(FrameHeader,
    payload)``, inline, all at once: its credit must cover them), then the EndOfStream; returns (exit codes, the
    Pipeline)."""
    zctx = zmq.Context.instance()
    frames = zctx.socket(zmq.ROUTER)
    frames.setsockopt(zmq.LINGER, 1000)
    frames.bind(config.transport.frames_endpoint)
    try:
        pipe = pipelines(config, ingest=False, n_workers=1, worker_target=worker_target)
        assert frames.poll(30_000), "the worker announced no credit"
        identity, *hello = frames.recv_multipart()
        assert decode(hello)[0].n >= len(messages)
        for header, payload in messages:
            frames.send_multipart([identity, *encode(header, [payload])])
        eos = zctx.socket(zmq.PUSH)
        eos.setsockopt(zmq.LINGER, 1000)
        eos.connect(config.transport.results_endpoint)
        eos.send_multipart(encode(EndOfStream(run_id="t", n_frames=len(messages))))
        codes = pipe.finish()
        eos.close()
    finally:
        frames.close()
    return codes, pipe


class _OneFrameEngine(_DeviceSumEngine):
    """``_DeviceSumEngine`` whose one-frame ``integrate`` has CupyEngine's limits: refused (RuntimeError) while a
    submission is outstanding, and it overwrites stream 0's result buffer, as the real one-frame path does."""

    def integrate(self, frame):
        if self.open:
            raise RuntimeError("integrate_batch/integrate_many: collect the outstanding submissions first")
        if 0 in self.buffers:
            self.buffers[0][...] = np.nan
        return super().integrate(frame)


def one_frame_worker_run(config, ready, stop, index=0):
    """A worker whose engine's one-frame path has the GPU engine's limits (see _OneFrameEngine)."""
    real = worker_process.create_engine
    worker_process.create_engine = lambda *a, **k: _OneFrameEngine(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


def test_frames_of_another_kind_in_a_batch_are_integrated_one_by_one_without_harm(tmp_path, pipelines):
    """The test plays the ingest: frames of two dtypes, mixed, so that most batches the pipelined worker gathers
    hold both; the frames of the other kind are integrated one by one, which the GPU engine refuses while batches
    are in flight and which overwrites a stream's results (a DECTRIS daemon on an H100 once wrote one frame with
    another's lineout). Every frame is integrated, none rejected, each lineout its own."""
    n = 32  # (the worker's credit: all of them sent at once)
    config = setup_run(tmp_path, source={"frames": n}, transport={"shared_memory": False},
                       workers={"batches_in_flight": 3})
    rng = np.random.default_rng(21)
    pixels = [rng.integers(0, 4000, (NZ, NY)).astype(np.uint16 if k else np.int32) for k in rng.integers(0, 2, n)]
    codes, pipe = play_ingest(config, pipelines, one_frame_worker_run, [
        (FrameHeader(run_id="t", frame_index=k, source_id=f"t:{k}", timestamp=time.time(), shape=img.shape,
                     dtype=img.dtype.str, nbytes=img.nbytes), img) for k, img in enumerate(pixels)])
    assert_clean_exit(codes)
    worker = pipe.counters("worker")
    assert worker["rejected"] == 0 and worker["integrated"] == n, worker
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], range(n))
    np.testing.assert_allclose(out["I"], reference_lineouts(config, pixels), rtol=1e-6, atol=0)


def decoding_worker_run(config, ready, stop, index=0):
    """A worker whose engine decodes compressed frames itself, with the GPU decoder's algorithm (_DecodingEngine)."""
    real = worker_process.create_engine
    worker_process.create_engine = lambda *a, **k: _DecodingEngine(real(*a, **k))
    return worker_process.run(config, ready, stop, index=index)


@pytest.mark.parametrize("engine_decodes", [False, True], ids=["worker decodes", "engine decodes"])
def test_worker_decodes_compressed_frames_and_rejects_corrupt_ones(tmp_path, pipelines, engine_decodes):
    """The test plays the ingest: inline frames compressed in each framing (bslz4 with and without the HDF5-filter
    header, lz4 raw and framed) and three corrupt ones (truncated, a smashed block length, a frame of the wrong
    size): the good ones give the raw frames' lineouts, the bad ones are rejected and counted, the worker carries on;
    decoded by the worker on the CPU, or by an engine that declares compressed_input (the pipelined loop)."""
    from ringstream.images.frame_codecs import encode_frame

    framings = [("bslz4", True, 0), ("bslz4", False, 0), ("lz4", False, 0), ("lz4", True, 4096)]
    n = len(framings) + 3
    config = setup_run(tmp_path, source={"frames": n}, transport={"shared_memory": False},
                       workers={"batches_in_flight": 3} if engine_decodes else {})
    sim = SimulatedSource.from_config(config, config.load_params())
    pixels = [sim.make_frame(k) for k in range(len(framings))]
    sent = [encode_frame(img, *f) + (f[0],) for img, f in zip(pixels, framings, strict=True)]
    good, head, block, _ = sent[0]
    smashed = good.copy()
    smashed[head:head + 4] = 0x7F
    half = encode_frame(pixels[0][: NZ // 2], "bslz4", True)
    sent += [(good[:-7], head, block, "bslz4"), (smashed, head, block, "bslz4"), (half[0], half[1], half[2], "bslz4")]
    codes, pipe = play_ingest(config, pipelines, decoding_worker_run if engine_decodes else worker_process.run, [
        (FrameHeader(run_id="t", frame_index=k, source_id=f"t:{k}", timestamp=time.time(), shape=pixels[0].shape,
                     dtype=pixels[0].dtype.str, codec=codec, codec_header=head, codec_block=block,
                     nbytes=payload.size), payload) for k, (payload, head, block, codec) in enumerate(sent)])
    assert_clean_exit(codes)
    worker = pipe.counters("worker")
    assert worker["rejected"] == 3 and worker["rejected_decode_error"] == 3 and worker["integrated"] == len(framings)
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], range(len(framings)))
    np.testing.assert_allclose(out["I"], reference_lineouts(config, pixels), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("codec", "copy_threads"), [("bslz4", 1), ("lz4", 3), ("stored", 1)])
def test_compressed_replay_travels_compressed_and_gives_the_raw_lineouts(tmp_path, pipelines, codec, copy_threads):
    # replay_codec bslz4 / lz4 (compressed on load) and stored (an HDF5 file's bslz4 chunks, read_direct_chunk):
    # the ring holds the compressed bytes, the workers decode, and the lineouts are those of the raw frames
    import hdf5plugin

    rng = np.random.default_rng(13)
    stack = rng.poisson(4.0, size=(5, NZ, NY)).astype(np.uint16)
    if codec == "stored":
        path = tmp_path / "stack.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry/data/data", data=stack, chunks=(1, NZ, NY), **hdf5plugin.Bitshuffle(cname="lz4"))
        name = "stack.h5"
    else:
        path, name = tmp_path / "stack.npy", "stack.npy"
        np.save(path, stack)
    n = 23
    config = setup_run(tmp_path, source={"kind": "replay", "replay_path": str(path), "frames": n, "loop": True,
                                         "replay_codec": codec},
                       transport={"copy_threads": copy_threads, "ring_slots": 8})
    pipe = pipelines(config, n_workers=2)
    codes = pipe.finish()
    assert_clean_exit(codes)
    out = read_h5(config.run.output_h5)
    np.testing.assert_array_equal(out["frame_index"], np.arange(n))
    assert out["source_id"] == [f"{name}:{k % 5}" for k in range(n)]
    refs = reference_lineouts(config, stack)
    np.testing.assert_allclose(out["I"], np.stack([refs[k % 5] for k in range(n)]), rtol=1e-6, atol=0)
    workers = [pipe.counters("worker", i) for i in range(2)]
    assert sum(w.get("integrated", 0) for w in workers) == n and not any(w.get("rejected") for w in workers)


def test_roles_write_their_profiles_when_asked(tmp_path, pipelines, monkeypatch):
    """``RINGSTREAM_PROFILE_DIR`` (bench/profile_roles.py): each role's main thread ran under cProfile and wrote
    ``ROLE-PID.prof`` when it ended, naming the role's own loop."""
    import pstats

    from ringstream.transport.child import PROFILE_ENV

    folder = tmp_path / "prof"
    folder.mkdir()
    monkeypatch.setenv(PROFILE_ENV, str(folder))
    config = setup_run(tmp_path, source={"frames": 20})
    pipe = pipelines(config, n_workers=1)
    assert_clean_exit(pipe.finish())
    assert read_h5(config.run.output_h5)["frames_written"] == 20
    written = {p.name.rsplit("-", 1)[0]: p for p in folder.glob("*.prof")}
    assert set(written) == {"ingest", "worker-0", "writer"}
    for role, path in written.items():
        assert path.name == f"{role}-{pipe.procs[role].pid}.prof"
        files = {func[0] for func in pstats.Stats(str(path)).stats}
        assert any(f.endswith(f"ringstream/{role.split('-')[0]}s/process.py" if role.startswith("worker")
                              else f"ringstream/{role}/process.py") for f in files), (role, sorted(files)[:20])

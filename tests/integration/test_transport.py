"""Transport: real ZeroMQ sockets on 127.0.0.1 (random ports) and inproc, and the shared-memory frame ring."""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
import textwrap
import uuid
from multiprocessing import shared_memory

import msgpack
import numpy as np
import pytest
import zmq

from ringstream.protocol import (
    EndOfStream,
    FrameHeader,
    ProtocolError,
    Result,
    encode,
    frame_array,
    result_arrays,
    result_buffers,
)
from ringstream.transport import (
    FrameRing,
    RejectLog,
    free_tcp_endpoint,
    make_socket,
    recv_message,
    resolve,
    send_message,
)

pytestmark = pytest.mark.timeout(10)

RECV_TIMEOUT_MS = 2000


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _endpoint(transport: str) -> str:
    return free_tcp_endpoint() if transport == "tcp" else f"inproc://test-{uuid.uuid4().hex}"


def _pair(ctx, transport: str, hwm: int = 8):
    endpoint = _endpoint(transport)
    pull = make_socket(ctx, zmq.PULL, endpoint, bind=True, hwm=hwm)
    push = make_socket(ctx, "PUSH", endpoint, bind=False, hwm=hwm)
    pull.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    return push, pull


# --- endpoints -------------------------------------------------------------------------------------------------


def test_free_tcp_endpoint_and_resolve():
    endpoint = free_tcp_endpoint()
    assert endpoint.startswith("tcp://127.0.0.1:") and int(endpoint.rsplit(":", 1)[1]) > 0
    assert resolve("auto").startswith("tcp://127.0.0.1:")
    # below the kernel's ephemeral range, so no outgoing connection of this host takes it before the bind; and
    # never the same port twice from one process
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [int(free_tcp_endpoint().rsplit(":", 1)[1]) for _ in range(200)]
    assert all(10000 <= p < lo for p in ports) and len(set(ports)) == len(ports)
    assert resolve("ipc:///tmp/x") == "ipc:///tmp/x"
    assert resolve("tcp://127.0.0.1:5557") == "tcp://127.0.0.1:5557"
    with pytest.raises(ValueError, match="auto"):
        resolve("http://example.org")


def test_make_socket_sets_hwm_and_linger(ctx):
    sock = make_socket(ctx, "PULL", free_tcp_endpoint(), bind=True, hwm=3, linger=5)
    try:
        assert sock.getsockopt(zmq.SNDHWM) == 3 and sock.getsockopt(zmq.RCVHWM) == 3
        assert sock.getsockopt(zmq.LINGER) == 5
    finally:
        sock.close()


def test_make_socket_closes_on_failed_bind(ctx):
    endpoint = free_tcp_endpoint()
    first = make_socket(ctx, zmq.PULL, endpoint, bind=True, hwm=1)
    try:
        with pytest.raises(zmq.ZMQError):
            make_socket(ctx, zmq.PULL, endpoint, bind=True, hwm=1)
    finally:
        first.close()


# --- messages over real sockets --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_push_pull_inline_frame_and_result(ctx, transport):
    push, pull = _pair(ctx, transport)
    try:
        pixels = np.arange(256 * 300, dtype="<u2").reshape(256, 300)  # > 64 KiB: really sent by reference
        header = FrameHeader(
            run_id="r", frame_index=41, shape=pixels.shape, dtype=pixels.dtype, metadata={"e": 1.5}
        )
        send_message(push, header, [pixels])
        msg, buffers = recv_message(pull)
        assert msg == header
        np.testing.assert_array_equal(frame_array(msg, buffers[0]), pixels)

        result = Result(run_id="r", frame_index=41, engine="numpy", n_r=10, n_eta=4, has_cake=True, n_peaks=1)
        lineout, cake, fit = np.arange(10.0), np.ones((10, 4)), np.full((1, 7), 2.5)
        send_message(push, result, result_buffers(lineout, cake, fit))
        msg, buffers = recv_message(pull)
        assert msg == result
        got = result_arrays(msg, buffers)
        for a, b in zip(got, (lineout, cake, fit), strict=True):
            np.testing.assert_array_equal(a, b)

        send_message(push, EndOfStream(run_id="r", n_frames=42), copy=True)
        assert recv_message(pull)[0] == EndOfStream(run_id="r", n_frames=42)
    finally:
        push.close()
        pull.close()


def test_garbage_raises_protocol_error_and_is_counted_once_per_kind(ctx, caplog):
    push, pull = _pair(ctx, "tcp")
    raw = push  # a plain socket: sends whatever bytes we like
    good = encode(EndOfStream(run_id="r", n_frames=1))
    garbage = [
        [b"\xc1"],
        [msgpack.packb([1, 2])],
        [b""],
        [msgpack.packb({"type": "frobnicate", "version": 1})],
        [msgpack.packb({"type": "stop", "version": 2})],
        [msgpack.packb({"type": "stop", "version": 2})],
        [good[0], b"unexpected buffer"],
    ]
    log = RejectLog(logging.getLogger("ringstream.test"), "writer results")
    try:
        with caplog.at_level(logging.DEBUG, logger="ringstream.test"):
            for frames in garbage:
                raw.send_multipart(frames)
            for _ in garbage:
                with pytest.raises(ProtocolError) as info:
                    recv_message(pull)
                log.record(info.value)
            raw.send_multipart(good)
            assert recv_message(pull)[0] == EndOfStream(run_id="r", n_frames=1)  # the socket is still usable
    finally:
        push.close()
        pull.close()
    assert log.counters() == {
        "protocol_errors_malformed": 3,
        "protocol_errors_unknown_type": 1,
        "protocol_errors_version": 2,
        "protocol_errors_size": 1,
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert {w.getMessage().split("(")[1].split(")")[0] for w in warnings} == {
        "malformed",
        "unknown_type",
        "version",
        "size",
    }
    assert all("writer results" in w.getMessage() and "\n" not in w.getMessage() for w in warnings)
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 3


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_hwm_bounds_the_queue(ctx, transport):
    push, pull = _pair(ctx, transport, hwm=2)  # pull never reads
    big = np.zeros(256 * 1024, dtype=np.uint8)
    header = FrameHeader(run_id="r", frame_index=0, shape=(1, big.size), dtype="|u1")
    sent = 0
    try:
        with pytest.raises(zmq.Again):
            while sent < 2000:
                sent += 1
                send_message(push, header, [big], flags=zmq.NOBLOCK)
        assert sent < 2000
        if transport == "inproc":
            assert sent <= 5  # sndhwm + rcvhwm, plus the one that failed
    finally:
        push.close()
        pull.close()


# --- the shared-memory ring ------------------------------------------------------------------------------------


def _pattern(seed: int, shape=(64, 48), dtype="<u2") -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(dtype)


def _child_check_and_write(name: str, read_slot: int, read_offset: int, write_slot: int) -> None:
    """Spawned child: check the parent's pattern in one slot, write another pattern into a second slot."""
    ring = FrameRing.attach(name)
    seen = ring.view(read_slot, (64, 48), "<u2", offset=read_offset)
    ok = np.array_equal(seen, _pattern(1))
    del seen
    ring.write(write_slot, _pattern(2))
    ring.close()
    sys.exit(0 if ok else 3)


def test_ring_shared_with_a_spawned_child_is_bit_exact():
    with FrameRing.create(n_slots=4, slot_bytes=64 * 48 * 2) as ring:
        first, second = ring.acquire(), ring.acquire()
        offset, nbytes = ring.write(first, _pattern(1))
        assert nbytes == 64 * 48 * 2 and offset == ring.slot_offset(first) and offset % 64 == 0
        child = multiprocessing.get_context("spawn").Process(
            target=_child_check_and_write, args=(ring.name, first, offset, second)
        )
        child.start()
        child.join(timeout=8)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail("ring child did not finish")
        assert child.exitcode == 0
        got = ring.view(second, (64, 48), "<u2")
        assert got.tobytes() == _pattern(2).tobytes()
        del got


def test_ring_free_list_bookkeeping():
    with FrameRing.create(n_slots=3, slot_bytes=100) as ring:
        assert ring.n_free == 3
        slots = [ring.acquire() for _ in range(3)]
        assert sorted(slots) == [0, 1, 2] and ring.n_free == 0
        assert ring.acquire() is None
        ring.release(slots[1])
        assert ring.n_free == 1 and ring.acquire() == slots[1]
        ring.release(slots[0])
        with pytest.raises(ValueError, match="free already"):
            ring.release(slots[0])
        with pytest.raises(ValueError, match="not a slot"):
            ring.release(7)
        with pytest.raises(ValueError, match="not acquired"):
            ring.write(slots[0], np.zeros(4, np.uint8))
        with pytest.raises(ValueError, match="do not fit"):
            ring.write(slots[2], np.zeros(101, np.uint8))
        assert ring.write(slots[2], np.zeros(100, np.uint8)) == (ring.slot_offset(slots[2]), 100)
        with pytest.raises(ValueError, match="no slot"):
            ring.view(3, (1,), "u1")
        with pytest.raises(ValueError, match="do not fit"):
            ring.view(0, (1,), "u1", offset=ring.slot_offset(1))
        with pytest.raises(ValueError, match="do not fit"):
            ring.view(0, (101,), "u1")


def test_ring_close_unlink_idempotent_and_attach_errors():
    ring = FrameRing.create(n_slots=2, slot_bytes=64)
    other = FrameRing.attach(ring.name)
    with pytest.raises(RuntimeError):
        other.acquire()
    with pytest.raises(RuntimeError):
        other.unlink()
    view = other.view(0, (8,), "<f8")
    with pytest.raises(BufferError, match="still alive"):
        other.close()
    del view
    other.close()
    other.close()
    own = ring.view(1, (8,), "<f8")
    with pytest.raises(BufferError, match="still alive"):
        ring.close()
    del own
    ring.close()
    ring.close()
    ring.unlink()
    ring.unlink()
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(ring.name)
    with pytest.raises(ValueError, match="closed"):
        ring.view(0, (1,), "u1")


def test_attach_refuses_a_segment_that_is_not_a_ring():
    plain = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match="not a ringstream frame ring"):
            FrameRing.attach(plain.name)
    finally:
        plain.close()
        plain.unlink()


_CREATOR = textwrap.dedent(
    """
    import multiprocessing, sys
    import numpy as np
    from ringstream.transport.shm_ring import FrameRing

    def child(name):
        ring = FrameRing.attach(name)
        ok = ring.view(0, (4,), "<i8")[0] == 42
        ring.close()
        sys.exit(0 if ok else 3)

    if __name__ == "__main__":
        ring = FrameRing.create(2, 32, prefix="rstest")
        ring.write(ring.acquire(), np.array([42, 1, 2, 3], "<i8"))
        proc = multiprocessing.get_context("spawn").Process(target=child, args=(ring.name,))
        proc.start()
        proc.join(8)
        print(ring.name, proc.exitcode, flush=True)
        sys.stdin.readline()
        ring.close()
        ring.unlink()
    """
)

_ATTACHER = textwrap.dedent(
    """
    import sys
    from ringstream.transport.shm_ring import FrameRing
    ring = FrameRing.attach(sys.argv[1])
    print(int(ring.view(0, (4,), "<i8")[0]))
    ring.close()
    """
)


def _clean(stderr: str) -> bool:
    return not any(s in stderr for s in ("leaked shared_memory", "Traceback", "KeyError", "Warning"))


def test_attaching_processes_neither_unlink_nor_warn(tmp_path):
    script = tmp_path / "creator.py"
    script.write_text(_CREATOR)
    creator = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        name, child_exit = creator.stdout.readline().split()
        assert child_exit == "0"
        attacher = subprocess.run(
            [sys.executable, "-c", _ATTACHER, name], capture_output=True, text=True, timeout=8
        )
        assert attacher.returncode == 0 and attacher.stdout.strip() == "42"
        assert _clean(attacher.stderr), attacher.stderr
        # both attachers have exited: the segment must still be there
        still = FrameRing.attach(name)
        still.close()
        _, stderr = creator.communicate("go\n", timeout=8)
        assert creator.returncode == 0
        assert _clean(stderr), stderr
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(name)


def test_a_ring_left_by_a_killed_daemon_is_removed_by_the_next_one(caplog):
    """kill -9 of the whole daemon kills the resource tracker too: the ring stays in /dev/shm until the next
    ring's creation removes it; a ring whose creator runs, and a segment that is not a ring, stay."""
    from ringstream.transport import shm_ring

    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os
        from ringstream.transport.shm_ring import FrameRing
        ring = FrameRing.create(2, 4096, prefix="rstest")
        print(ring.name, flush=True)
        os.killpg(0, 9)  # the whole group, its resource tracker too, as kill -9 of a daemon's group does
    """)], capture_output=True, text=True, timeout=60, start_new_session=True)
    name = child.stdout.strip()
    assert child.returncode == -9 and name.startswith("rstest-"), child.stderr
    # an impostor with a dead pid that is not a ring
    other = shared_memory.SharedMemory(name=f"rstest-{name.split('-')[1]}-00000000", create=True, size=4096)
    live = None
    try:
        ring = FrameRing.attach(name)  # still there after the kill
        assert ring.n_slots == 2
        ring.close()
        with caplog.at_level(logging.WARNING, logger="ringstream.transport.shm_ring"):
            live = FrameRing.create(1, 64, prefix="rstest")  # the next daemon's ring
        assert f"/dev/shm/{name}" in caplog.text and "no longer running" in caplog.text
        with pytest.raises(FileNotFoundError):
            FrameRing.attach(name)
        assert shm_ring.remove_stale_rings("rstest") == []  # the live ring's creator runs; the impostor stays
        assert FrameRing.attach(live.name).n_slots == 1
        assert shared_memory.SharedMemory(name=other.name).size >= 4096
    finally:
        if live is not None:
            live.close()
            live.unlink()
        other.close()
        other.unlink()

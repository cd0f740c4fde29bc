"""The MIDAS socket source (docs/MIDAS-FORMATS.md section 5) in the real ``ringstream run --midas-socket`` daemon.

Senders speaking the protocol send frames of every wire dtype (0 u8 … 5 f64) and the hybrid dtype 6, several
at once; the HDF5 lineouts equal the same frames integrated offline (ringstream.engines.reference). Senders that
send an unknown dtype, a bad hybrid count, or a frame cut short by closing or by stalling are disconnected with a
logged reason and counted, while the others carry on.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import h5py
import numpy as np
import pytest
from common import NY, NZ
from test_daemon import daemons, read_output, write_params  # noqa: F401  (daemons: the fixture)

from ringstream.ingest.midas_socket import WIRE_DTYPES, encode_frame, expand_hybrid
from ringstream.transport.endpoints import free_tcp_port

N_PIX = NZ * NY


def free_port() -> int:
    return free_tcp_port()


def make_frames(seed: int = 0) -> list[tuple[int, np.ndarray, bytes]]:
    """(dataset_num, the frame as integrated, wire bytes): two frames of each dtype 0..5 and three hybrids."""
    rng = np.random.default_rng(seed)
    out = []
    num = 65533  # dataset_num wraps at 65536 during the run
    for dt in WIRE_DTYPES.values():
        for _ in range(2):
            img = rng.poisson(30.0, (NZ, NY)).astype(dt)
            if dt.kind == "f":
                img = (img + rng.random((NZ, NY))).astype(dt)
            out.append((num & 0xFFFF, img, encode_frame(num, img)))
            num += 1
    for k in range(3):
        img = rng.poisson(30.0, (NZ, NY)).astype(np.int64)
        img.flat[rng.choice(N_PIX, 40 * (k + 1), replace=False)] = rng.integers(70_000, 2**40, 40 * (k + 1))
        wire = encode_frame(num, img, hybrid_threshold=60_000)
        (count,) = struct.unpack_from("<I", wire, 4)
        assert count >= 40 * (k + 1) and struct.unpack_from("<HH", wire)[1] == 6
        base = np.frombuffer(wire, "<u2", N_PIX, 8)
        idx = np.frombuffer(wire, "<i4", count, 8 + 2 * N_PIX)
        vals = np.frombuffer(wire, "<i8", count, 8 + 2 * N_PIX + 4 * count)
        np.testing.assert_array_equal(expand_hybrid(base, idx, vals).reshape(NZ, NY), img)
        out.append((num & 0xFFFF, img, wire))
        num += 1
    return out


def reference(params_path, frames: list[np.ndarray]) -> np.ndarray:
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    p = load_params(params_path)
    imap, _ = load_or_build(p)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    return np.stack([engine.integrate_batch(f[None])[0][0] for f in frames]).astype(np.float32)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The other end closed ``sock`` (an orderly close, or a reset when our unread bytes were pending there)."""
    sock.settimeout(5)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    sock.close()


def ingest_counters(d) -> dict:
    return d.status()["children"]["ingest"]["counters"]


def wait_counter(d, key: str, value: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = ingest_counters(d)
        if c.get(key, 0) >= value:
            return c
        time.sleep(0.1)
    raise AssertionError(f"{key} did not reach {value}: {ingest_counters(d)}\n{d.stderr}")


@pytest.mark.timeout(120)
def test_several_senders_every_dtype_lineouts_equal_offline(tmp_path, daemons):  # noqa: F811
    params = write_params(tmp_path)
    port = free_port()
    frames = make_frames()
    d = daemons(["--param-file", params, "--midas-socket", port, "--frames", len(frames), "--workers", 2,
                 "--output-h5", "out.h5", "--no-zarr"], tmp_path)
    d.wait_ready(60)
    d.line_time(rf"MIDAS socket: listening on 127\.0\.0\.1:{port} ")

    # misbehaving senders first, while a good one stays connected: each is cut off alone
    good = connect(port)
    bad_dtype = connect(port)
    bad_dtype.sendall(struct.pack("<HH", 1, 9) + b"\0" * 64)
    bad_count = connect(port)
    bad_count.sendall(struct.pack("<HHI", 2, 6, N_PIX + 1))
    short = connect(port)
    short.sendall(frames[2][2][: len(frames[2][2]) // 2])
    short.close()
    c = wait_counter(d, "midas_truncated", 1)
    c = wait_counter(d, "midas_malformed", 2)
    assert c["received"] == 0 and c["midas_senders"] == 4
    d.line_time(r"sender 127\.0\.0\.1:\d+ disconnected after 0 good frames: frame dataset_num 1: dtype 9 is not "
                r"a MIDAS socket dtype \(0\.\.6\)")
    d.line_time(r"frame dataset_num 2: hybrid count 16385 exceeds the 16384 pixels")
    d.line_time(r"frame dataset_num 65535: connection closed after \d+ of 32768 bytes of this part \(a short "
                r"frame\); dropped")
    for s in (bad_dtype, bad_count):
        assert_closed_by_peer(s)

    # the good frames from three senders at once (one of them connected all along)
    senders = [good, connect(port), connect(port)]
    errors: list[BaseException] = []

    def send(sock, part):
        try:
            for _num, _img, wire in part:
                sock.sendall(wire)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s, frames[k::3])) for k, s in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert d.wait(60) == 0, d.stderr
    for s in senders:
        s.close()
    assert d.counts() == (len(frames), len(frames), len(frames), 0, 0)

    out = read_output(tmp_path / "out_00001.h5")
    assert out["frames_written"] == len(frames) and out["run_complete"]
    ref = reference(params, [img for _n, img, _w in frames])
    # the senders interleave; each row's source id HOST:PORT#dataset_num names the frame it must equal
    with h5py.File(tmp_path / "out_00001.h5", "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["/entry/data/source_id"][()]]
    by_num = {num: k for k, (num, _img, _w) in enumerate(frames)}
    assert len(by_num) == len(frames)
    matched = [by_num[int(sid.rsplit("#", 1)[1])] for sid in ids]
    assert sorted(matched) == list(range(len(frames)))
    for row, k in zip(out["I"], matched, strict=True):
        np.testing.assert_array_equal(row, ref[k], err_msg=f"frame {k} ({frames[k][1].dtype})")


@pytest.mark.timeout(60)
def test_a_stalled_short_frame_is_cut_off(monkeypatch):
    """Source level (no daemon): a sender that stops inside a frame is disconnected after STALL_S."""
    import ringstream.ingest.midas_socket as ms
    from ringstream.ingest.source_base import IDLE

    monkeypatch.setattr(ms, "STALL_S", 0.5)
    src = ms.MidasSocketSource((NZ, NY), port=0, n_frames=1)
    port = src.address[1]
    gen = src.frames(None)
    try:
        stalled = connect(port)
        img = np.arange(N_PIX, dtype=np.uint16).reshape(NZ, NY)
        stalled.sendall(encode_frame(7, img)[:1000])
        ok = connect(port)
        ok.sendall(encode_frame(8, img))
        frame = next(f for f in gen if f is not IDLE)
        np.testing.assert_array_equal(frame.pixels, img)
        assert frame.source_id.endswith("#8") and frame.metadata == {"dataset_num": 8}
        deadline = time.monotonic() + 5
        while src.counters()["midas_truncated"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        c = src.counters()
        assert c["midas_truncated"] == 1 and c["midas_received"] == 1 and c["midas_connected"] == 1
        assert_closed_by_peer(stalled)
        ok.close()
    finally:
        gen.close()
        src.close()


def test_port_in_use_is_one_clear_error():
    from ringstream.errors import InputError
    from ringstream.ingest.midas_socket import MidasSocketSource

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=rf"\[source\] midas_listen/midas_port: cannot listen on "
                                             rf"127\.0\.0\.1:{port} \("):
            MidasSocketSource((NZ, NY), port=port)

"""What the PVA tests share: loopback EPICS settings, an in-process NTNDArray server, a ring-backed consumer of a
PvaSource, and pvapy-ad-sim-server as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ringstream.transport.endpoints import free_tcp_port

#: the EPICS address variables: everything on loopback; ports picked per test session
LOOPBACK = {
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
}


def free_port_pair() -> tuple[int, int]:
    """Two free, non-default ports (TCP server port, UDP broadcast port), away from EPICS' 5075/5076."""
    while True:
        port = free_tcp_port()  # below the ephemeral range: no outgoing connection takes it meanwhile
        if port in (5075, 5076) or port >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port + 1))
            return port, port + 1
        except OSError:
            continue


#: where the session's port pair is kept (pytest's per-session stash)
PORTS_KEY = pytest.StashKey[tuple]()


def session_epics_env(pytestconfig) -> dict[str, str]:
    """The loopback EPICS settings of this test session: one port pair picked on first use and kept in the
    session's stash, because pvAccess reads the variables once per process (a second server in the same process
    would keep the first ports)."""
    ports = pytestconfig.stash.get(PORTS_KEY, None)
    if ports is None:
        ports = pytestconfig.stash[PORTS_KEY] = free_port_pair()
    return epics_env(*ports)


def epics_env(server_port: int, broadcast_port: int) -> dict[str, str]:
    return {**LOOPBACK, "EPICS_PVA_SERVER_PORT": str(server_port), "EPICS_PVA_BROADCAST_PORT": str(broadcast_port)}


def ntnd(uid: int, img: np.ndarray, attributes: dict | None = None, *, codec: str = "", payload=None,
         shape: tuple[int, int] | None = None):
    """An NTNDArray of ``img`` (rows, cols), or of the compressed ``payload`` (uint8) with ``codec`` for an image of
    ``img``'s shape and dtype; ``attributes``: name -> float/int/str NDAttributes."""
    import pvaccess as pva
    from pvapy.utility.adImageUtility import AdImageUtility

    ny, nx = shape or img.shape
    if codec:
        data = np.frombuffer(payload, np.uint8)
        nt = AdImageUtility.generateNtNdArray2D(uid, data, nx=nx, ny=ny, dtype=img.dtype, compressorName=codec)
    else:
        nt = AdImageUtility.generateNtNdArray2D(uid, img)
        if shape is not None:
            nt["dimension"] = [pva.PvDimension(nx, 0, nx, 1, False), pva.PvDimension(ny, 0, ny, 1, False)]
    attrs = []
    for name, value in (attributes or {}).items():
        pv = (pva.PvDouble(value) if isinstance(value, float) else pva.PvInt(value) if isinstance(value, int)
              else pva.PvString(value))
        attrs.append(pva.NtAttribute(name, pv))
    if attrs:
        nt["attribute"] = attrs
    return nt


class Consumer:
    """A PvaSource drained like the ingest does: a real FrameRing and its allocator; ``take(n)`` copies the next
    n frames out (pixels, source id, timestamp, metadata) and releases their slots. A frame that travels compressed
    is decoded as a worker decodes it (pixels None when it does not decode; ``self.codecs`` lists each frame's)."""

    def __init__(self, source, n_slots: int = 8) -> None:
        from ringstream.ingest.process import _RingAllocator
        from ringstream.protocol import compressed_bound
        from ringstream.transport.shm_ring import FrameRing

        self.source = source
        slot = compressed_bound(int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize)
        self.codecs: list[str] = []
        self.ring = FrameRing.create(n_slots, slot)
        source.attach_ring(_RingAllocator(self.ring))
        self.stop = _Flag()
        self.frames = source.frames(self.stop)

    def take(self, n: int, timeout: float = 10.0) -> list[tuple]:
        from ringstream.ingest.source_base import IDLE

        out: list[tuple] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            f = next(self.frames)
            if f is IDLE:
                continue
            self.codecs.append(f.codec)
            out.append((self.decoded(f), f.source_id, f.timestamp, dict(f.metadata), f.lease.slot))
            del f.pixels
            self.ring.release(f.lease.slot)
        return out

    @staticmethod
    def decoded(f):
        from ringstream.images.frame_codecs import CodecError, decode_frame

        if f.codec == "none":
            return f.pixels.copy()
        out = np.empty(f.shape, f.dtype)
        try:
            decode_frame(f.codec, f.pixels, out, f.codec_header, f.codec_block)
        except CodecError:
            return None
        return out

    def idle(self, seconds: float) -> None:
        """Keep the generator turning for ``seconds`` (nothing is expected)."""
        from ringstream.ingest.source_base import IDLE

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            f = next(self.frames)
            assert f is IDLE, f"unexpected frame {f.source_id}"

    def close(self) -> None:
        self.stop.set()
        next(self.frames, None)
        self.frames.close()
        self.source.close()
        self.ring.close()
        self.ring.unlink()


class _Flag:
    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


def sim_server_command() -> list[str]:
    exe = Path(sys.executable).with_name("pvapy-ad-sim-server")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pvapy.cli.adSimServer"]


def start_sim_server(channel: str, *args, env: dict, log: Path) -> subprocess.Popen:
    """pvapy-ad-sim-server on ``channel`` with ``args`` (always -nf/-cs and -std 0.5 given by the caller or
    here), its output in ``log``, in its own process group."""
    argv = list(map(str, args))
    if "-std" not in argv:
        argv += ["-std", "0.5"]
    assert "-nf" in argv and "-cs" in argv, "always pass -nf and -cs (its default cache is huge)"
    return subprocess.Popen(sim_server_command() + ["-cn", channel, "-dc", *argv], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen, sig: int | None = None) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, sig or signal.SIGKILL)
    proc.wait(10)


def hdf5_chunk(img: np.ndarray, compression) -> bytes:
    """The raw chunk h5py + hdf5plugin write for ``img`` stored as one chunk with filter ``compression`` (the
    real HDF5-filter framing, as an EIGER stream carries it)."""
    import io

    import h5py

    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        ds = f.create_dataset("d", data=img[None], chunks=(1, *img.shape), **compression)
        _mask, chunk = ds.id.read_direct_chunk((0, 0, 0))
    return bytes(chunk)

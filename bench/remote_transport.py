"""Benchmark: inline frames over ZeroMQ TCP on loopback (with and without CURVE, raw and bslz4-compressed), and the
daemon with its internal sockets on ipc:// against tcp://127.0.0.1 (issue 20).

1. Transport: a sender process sends ``--frames`` frames (2048 x 2048 uint16, the simulated diffraction pattern at
   ``--counts``, raw or bslz4 with the HDF5-filter header) as ``FrameHeader`` + one inline buffer, the way the ingest
   sends a joined worker its frames (``send_message``, zero-copy), over PUSH -> PULL to this process, which
   receives them (``recv_message``, viewed in place) without decoding. Endpoints: ipc://, tcp://127.0.0.1, and
   tcp://127.0.0.1 with CURVE (a ZAP handler accepting the client's key, as the daemon's). frames/s over the time
   from the first frame received to the last; GB/s on the wire and raw-equivalent (the decoded frame's bytes).
2. Daemon: the real ``ringstream run`` (simulated source, ``--daemon-frames`` frames of 128 x 128 int32, CPU engine,
   2 workers, ``--no-zarr``), with ``[transport] auto_endpoints`` ipc and tcp, through the ring and inline
   (``--no-shm``), alternating, ``--repeat`` times each: frames/s from the final counts line (ready -> last frame
   written). Small frames, so that the messages and not the integration set the pace.

3. Joined against local (``--joined N``; on the GPU machine with ``--joined-engine gpu``): the same daemon on the demo
   PILATUS 2M parameter file (``configs/demo-pilatus2m.txt``, simulated int32 frames, ``OmegaSumFrames -1``,
   ``--no-zarr``), once with one local worker on the ring and once with ``--workers 0`` and one worker joined over
   loopback TCP with CURVE (``ringstream worker --join``), N frames each: frames/s from the writer's line (first frame
   written -> last), which leaves out the joined worker's start.

Prints a table and writes ``<out>/remote_transport-<machine>.json`` (``--machine``, default the host name; this CPU box
is "vm").

Run: ``python bench/remote_transport.py [--frames 300] [--counts 0.1] [--daemon-frames 3000] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (2048, 2048)
COUNTS = re.compile(r"finished: received (\d+), integrated \d+, written (\d+).*?, ([\d.]+) s, ([\d.]+) frames/s")
SMALL_PARAMS = """\
NrPixelsY 128
NrPixelsZ 128
Lsd 1000000
px 200
BC 63.3 61.2
RMin 4
RMax 60
RBinSize 1
EtaBinSize 20
Wavelength 0.2
OmegaSumFrames -1
"""


def make_frames(counts: float, codec: str):
    """8 realisations of the simulated pattern (uint16), and the payloads sent: raw or bslz4-compressed."""
    import numpy as np

    from ringstream.images.frame_codecs import encode_frame

    rng = np.random.default_rng(1)
    yy, xx = np.indices(SHAPE)
    r = np.hypot(yy - 1024.3, xx - 1011.7)
    mean = counts * (50 + 2000 * np.exp(-((r % 180) - 90) ** 2 / 20.0))
    frames = [rng.poisson(mean).astype(np.uint16) for _ in range(8)]
    if codec == "none":
        return frames, [(f, 0, 0) for f in frames]
    return frames, [encode_frame(f, "bslz4") for f in frames]


def _sender(endpoint: str, n: int, counts: float, codec: str, keys: dict | None, ready) -> None:
    import zmq

    from ringstream.protocol import FrameHeader
    from ringstream.transport.sockets import send_message

    frames, payloads = make_frames(counts, codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 8)
    if keys:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (keys["server_public"],
                                                                              keys["client_public"],
                                                                              keys["client_secret"])
    sock.connect(endpoint)
    ready.set()
    for k in range(n):
        data, header, block = payloads[k % 8]
        msg = FrameHeader(run_id="b", frame_index=k, shape=SHAPE, dtype="<u2", location="inline", codec=codec,
                          codec_header=header, codec_block=block, nbytes=int(data.nbytes))
        send_message(sock, msg, [data], copy=False)
    sock.close(linger=-1)
    ctx.term()


def transport(endpoint: str, curve: bool, codec: str, n: int, counts: float) -> dict:
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    from ringstream.transport.sockets import recv_message

    ctx = zmq.Context()
    keys = None
    auth = None
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 8)
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_Accept(client_public))
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = server_secret, server_public, True
        keys = {"server_public": server_public, "client_public": client_public, "client_secret": client_secret}
    sock.bind(endpoint)
    mp = multiprocessing.get_context("spawn")
    ready = mp.Event()
    proc = mp.Process(target=_sender, args=(endpoint, n, counts, codec, keys, ready))
    proc.start()
    wire = 0
    t0 = None
    for k in range(n):
        if not sock.poll(60_000):
            raise RuntimeError(f"{endpoint}: frame {k} did not arrive within 60 s")
        msg, buffers = recv_message(sock)
        if t0 is None:
            t0 = time.perf_counter()
            first = buffers[0].nbytes
        else:
            wire += buffers[0].nbytes
        del buffers
    dt = time.perf_counter() - t0
    proc.join(30)
    if auth is not None:
        auth.stop()
    sock.close(linger=0)
    ctx.term()
    raw = SHAPE[0] * SHAPE[1] * 2
    fps = (n - 1) / dt
    scheme = endpoint.split("://")[0] + ("+curve" if curve else "")
    return {"transport": scheme, "codec": codec, "frames": n, "frame_bytes_raw": raw,
            "frame_bytes_wire_mean": round((wire + first) / n), "frames_per_s": round(fps, 1),
            "wire_GB_per_s": round(wire / dt / 1e9, 3), "raw_GB_per_s": round(fps * raw / 1e9, 3)}


class _Accept:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def callback(self, domain, key) -> bool:
        return key == self.key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_run(folder: Path, frames: int, internal: str, shm: bool) -> dict:
    exe = Path(sys.executable).with_name("ringstream")
    cmd = [str(exe) if exe.exists() else "ringstream", "run", "--param-file", str(folder / "p.txt"), "--simulate",
           str(frames), "--engine", "cpu", "--workers", "2", "--no-zarr", "--output-h5",
           str(folder / f"out-{internal}-{'shm' if shm else 'inline'}-{time.monotonic_ns()}.h5"), "--log-level",
           "WARNING"]
    if not shm:
        cmd.append("--no-shm")
    env = dict(os.environ, RINGSTREAM_TRANSPORT_AUTO_ENDPOINTS=internal,
               RINGSTREAM_TRANSPORT_RUNTIME_DIR=str(folder / "rt"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    m = COUNTS.search(proc.stderr)
    if proc.returncode != 0 or not m:
        return {"internal": internal, "frames_path": "shm" if shm else "inline",
                "error": f"exit {proc.returncode}: {proc.stderr[-800:]}"}
    return {"internal": internal, "frames_path": "shm" if shm else "inline", "frames": int(m.group(2)),
            "run_s": float(m.group(3)), "frames_per_s": float(m.group(4))}


WRITER_RATE = re.compile(r"(\d+) frames written, \d+ rejected .*\(([\d.]+) frames/s after the first\)")


def joined_run(folder: Path, frames: int, engine: str, joined: bool) -> dict:
    """The daemon on the demo parameter file with one local worker, or none and one joined over loopback TCP."""
    from ringstream.transport.security import generate_keys

    exe = Path(sys.executable).with_name("ringstream")
    script = str(exe) if exe.exists() else "ringstream"
    params = folder / "demo.txt"
    params.write_text((REPO / "configs" / "demo-pilatus2m.txt").read_text() + "\nOmegaSumFrames -1\n")
    cmd = [script, "run", "--param-file", str(params), "--simulate", str(frames), "--engine", engine, "--no-zarr",
           "--output-h5", str(folder / f"joined-{joined}-{time.monotonic_ns()}.h5")]
    env = dict(os.environ, RINGSTREAM_TRANSPORT_RUNTIME_DIR=str(folder / "rt"))
    worker = None
    if joined:
        keys = folder / "keys"
        if not (keys / "server" / "server.key").exists():
            generate_keys(keys / "server", "server")
            generate_keys(keys / "worker", "worker")
            (keys / "auth").mkdir()
            (keys / "auth" / "w.key").write_bytes((keys / "worker" / "worker.key").read_bytes())
            (keys / "worker" / "server.key").write_bytes((keys / "server" / "server.key").read_bytes())
        port = _free_port()
        cmd += ["--workers", "0", "--remote-endpoint", f"tcp://127.0.0.1:{port}", "--keys-dir",
                str(keys / "server"), "--authorized-keys-dir", str(keys / "auth")]
    else:
        cmd += ["--workers", "1"]
    daemon = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    if joined:
        time.sleep(3)
        worker = subprocess.Popen([script, "worker", "--join", f"tcp://127.0.0.1:{port}", "--keys-dir",
                                   str(keys / "worker"), "--engine", engine, "--timeout", "60"],
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        err = daemon.communicate(timeout=1800)[1]
    finally:
        if worker is not None:
            worker.wait(60)
    m = WRITER_RATE.search(err)
    row = {"case": "joined over TCP with CURVE" if joined else "local, on the ring", "engine": engine}
    if daemon.returncode != 0 or not m:
        return {**row, "error": f"exit {daemon.returncode}: {err[-800:]}"}
    return {**row, "frames": int(m.group(1)), "frames_per_s": float(m.group(2))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--counts", type=float, default=0.1)
    ap.add_argument("--daemon-frames", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-daemon", action="store_true")
    ap.add_argument("--skip-transport", action="store_true")
    ap.add_argument("--joined", type=int, default=0, metavar="N", help="frames of the joined-vs-local daemons")
    ap.add_argument("--joined-engine", default="gpu", choices=("cpu", "gpu"))
    ap.add_argument("--machine", default=socket.gethostname())
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    rows = []
    load = [os.getloadavg()[0]]
    joined = []
    with tempfile.TemporaryDirectory(prefix="rs-bench-") as tmp:
        for codec in () if args.skip_transport else ("none", "bslz4"):
            for endpoint, curve in ((f"ipc://{tmp}/t.sock", False), (f"tcp://127.0.0.1:{_free_port()}", False),
                                    (f"tcp://127.0.0.1:{_free_port()}", True)):
                row = transport(endpoint, curve, codec, args.frames, args.counts)
                rows.append(row)
                print(f"{row['transport']:<10} {codec:<6} {row['frames_per_s']:>8.1f} frames/s  wire "
                      f"{row['wire_GB_per_s']:.2f} GB/s  raw-equivalent {row['raw_GB_per_s']:.2f} GB/s  "
                      f"({row['frame_bytes_wire_mean']} bytes a frame)", flush=True)
        daemon = []
        if not args.skip_daemon:
            folder = Path(tmp)
            (folder / "p.txt").write_text(SMALL_PARAMS)
            for _ in range(args.repeat):
                for shm in (True, False):
                    for internal in ("ipc", "tcp"):
                        row = daemon_run(folder, args.daemon_frames, internal, shm)
                        daemon.append(row)
                        print(f"daemon {internal:<4} {row['frames_path']:<7} "
                              + (f"{row['frames_per_s']:>8.1f} frames/s ({row['frames']} frames)"
                                 if "error" not in row else row["error"]), flush=True)
        for flag in (False, True) if args.joined else ():
            row = joined_run(Path(tmp), args.joined, args.joined_engine, flag)
            joined.append(row)
            print(f"{row['case']:<28} {row['engine']} " + (f"{row['frames_per_s']:>8.1f} frames/s ({row['frames']} "
                  "frames)" if "error" not in row else row["error"]), flush=True)
    load.append(os.getloadavg()[0])
    out = Path(args.out) / f"remote_transport-{args.machine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": args.machine, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "nproc": os.cpu_count(), "counts": args.counts, "transport": rows,
                               "daemon": daemon, "joined": joined, "load_average_start_end": load},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a joined worker takes from the daemon over its CURVE connection: the files the parameter file and ``[run]
dark`` name, the map when asked (``--fetch-map``), a series' pixel mask. Real processes, two daemons.

The daemon has no local worker, a dark frame (``--dark``) and a MaskFile, both given by paths relative to its own
folder. Two workers join from folders of their own, each with an empty map cache: one builds the map from the
copies it was shipped, the other is told ``--fetch-map``. Every frame in the file was integrated by one of them, and
equals the reference engine's integration with the same dark and mask; the fetched map is the daemon's file, byte
for byte, in the worker's cache. A stored pixel mask is fetched by its digest; a name outside the shipped entries
is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import tifffile

from ringstream.daemon.status import request
from ringstream.transport.security import generate_keys
from tests.integration.common import NY, NZ, SMALL_PARAMS, ringstream_command
from tests.integration.test_remote_workers import _free_ports, _remote, _wait

pytestmark = pytest.mark.timeout(150)

DARK_LEVEL = 3


def _join(base: Path, name: str, join: str, *extra: str) -> subprocess.Popen:
    """``ringstream worker --join`` from ``base/name`` (its own folder and empty map cache)."""
    home = base / name
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_CACHE_DIR=str(home / "cache"))
    return subprocess.Popen(ringstream_command() + ["worker", "--join", join, "--keys-dir", str(home), "--engine",
                                                    "cpu", "--timeout", "8", *extra],
                            cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "w"),
                            start_new_session=True)


def keys(base: Path, workers) -> list[str]:
    """The daemon's key pair in ``base/server``, each worker's in ``base/NAME`` (with the server's public key), all
    authorized: the daemon's key options."""
    generate_keys(base / "server", "server")
    (base / "authorized").mkdir()
    for name in workers:
        generate_keys(base / name, "worker")
        (base / name / "server.key").write_bytes((base / "server" / "server.key").read_bytes())
        (base / "authorized" / f"{name}.key").write_bytes((base / name / "worker.key").read_bytes())
    return ["--keys-dir", str(base / "server"), "--authorized-keys-dir", str(base / "authorized")]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    base = tmp_path_factory.mktemp("shipping")
    (base / "setup.txt").write_text(SMALL_PARAMS.format(nz=NZ, ny=NY) + "MaskFile mask.tif\n")
    mask = np.zeros((NZ, NY), np.uint8)
    mask[40:60, 70:90] = 1  # a block across several rings
    tifffile.imwrite(base / "mask.tif", mask)
    np.save(base / "dark.npy", np.full((NZ, NY), DARK_LEVEL, np.int32))
    keys(base, ("a", "b"))
    port = _free_ports(5)
    join = f"tcp://127.0.0.1:{port}"
    control = f"ipc://{base}/rt/control"
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_TRANSPORT_RUNTIME_DIR=str(base / "rt"),
               RINGSTREAM_CACHE_DIR=str(base / "daemon-cache"))
    daemon = subprocess.Popen(ringstream_command() + [
        "run", "--param-file", "setup.txt", "--simulate", "0", "--rate", "40", "--engine", "cpu", "--workers", "0",
        "--dark", "dark.npy", "--output-h5", "out.h5", "--no-zarr", "--remote-endpoint", join, "--keys-dir",
        str(base / "server"), "--authorized-keys-dir", str(base / "authorized")],
        cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    procs = [daemon]
    try:
        _wait(control, "the daemon running", lambda st: st.get("state") == "running")
        procs += [_join(base, "a", join), _join(base, "b", join, "--fetch-map")]
        both = _wait(control, "two joined workers integrating",
                     lambda st: len(_remote(st)) == 2 and all(w["integrated"] >= 15 for w in _remote(st).values()))
        fetched = fetch_checks(base, join)
        assert request(control, "stop").ok
        err = daemon.communicate(timeout=60)[1]
        for p in procs[1:]:  # (they would end by themselves once the daemon is silent for 10 s)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        rcs = [p.wait(30) for p in procs[1:]]
        yield {"base": base, "rc": daemon.returncode, "stderr": err, "both": both, "rcs": rcs, "fetched": fetched,
               "join": join}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def fetch_checks(base: Path, join: str) -> dict:
    """A stored pixel mask fetched by its digest, and a path that is not a shipped entry refused, as worker a."""
    import zmq

    from ringstream.daemon.join import request_on
    from ringstream.daemon.shipping import fetch_file
    from ringstream.errors import RingstreamError
    from ringstream.geometry.mask_store import load_stored_mask, save_mask
    from ringstream.transport.security import client_context

    detector_mask = np.zeros((NZ, NY), np.uint32)
    detector_mask[5, 7] = 2  # dead
    digest = save_mask(base / ".ringstream" / "masks", detector_mask)
    ctx = client_context(SimpleNamespace(remote_endpoint=join, insecure_remote=False, keys_dir=str(base / "a")),
                         zmq.Context())
    try:
        def ask_part(name, offset):
            reply, buffers = request_on(ctx, join, "fetch", {"name": name, "offset": offset}, 8.0)
            if not reply.ok:
                raise RingstreamError(reply.error)
            return reply.data, bytes(buffers[0])

        fetch_file(ask_part, f"mask:{digest}", base / "a" / "masks" / f"{digest}.npy")
        got = load_stored_mask(base / "a" / "masks", digest, (NZ, NY))
        refused = []
        for name in ("../setup.txt", "/etc/passwd", "mask:" + "0" * 63):
            with pytest.raises(RingstreamError) as info:
                ask_part(name, 0)
            refused.append(str(info.value))
        return {"mask_equal": bool(np.array_equal(got, detector_mask)), "refused": refused}
    finally:
        ctx.destroy(linger=0)


def test_joined_workers_integrate_with_the_daemons_dark_and_mask(shipped):
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.images.files import load_dark
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    assert shipped["rc"] == 0, shipped["stderr"]
    assert set(shipped["rcs"]) <= {0, 143}  # ended by themselves, or by the SIGTERM that saves waiting for that
    base = shipped["base"]
    with h5py.File(base / "out.h5", "r") as f:
        lineouts = f["/entry/data/I"][()]
        index = f["/entry/data/frame_index"][()]
    n = len(index)
    np.testing.assert_array_equal(index, np.arange(n))
    p = load_params(base / "setup.txt")
    imap, _ = load_or_build(p)
    assert int(imap.mask.sum()) == 400  # the MaskFile is in the map the reference uses
    engine = ReferenceEngine(imap, dark=load_dark(base / "dark.npy", (NZ, NY)), normalize=bool(p.Normalize))
    source = SimulatedSource(p, n_frames=n, seed=0, dtype="int32", precompute=False)
    ref = engine.integrate_batch(np.stack([source.make_frame(k) for k in range(n)]))[0].astype(np.float32)
    # no local worker: every frame was integrated by a joined one, with the shipped dark and mask
    np.testing.assert_array_equal(lineouts, ref)
    assert sum(w["integrated"] for w in shipped["both"]["remote"]["workers"].values()) >= 30
    for name in ("a", "b"):
        log = (base / name / "worker.log").read_text()
        assert "took MaskFile from the daemon" in log and "took run.dark from the daemon" in log, log


def test_a_worker_told_to_fetch_the_map_takes_the_daemons_file(shipped):
    base = shipped["base"]
    daemon_maps = list((base / "daemon-cache").glob("*.npz"))
    assert len(daemon_maps) == 1
    key = daemon_maps[0].stem
    b_map = base / "b" / "cache" / f"{key}.npz"
    assert b_map.read_bytes() == daemon_maps[0].read_bytes()  # fetched, checked, kept in its own cache
    log_a, log_b = ((base / n / "worker.log").read_text() for n in ("a", "b"))
    assert "from a fresh build" in log_a and "fetching the daemon's map (--fetch-map)" not in log_a
    assert "fetching the daemon's map (--fetch-map)" in log_b and f"map {key[:12]} from the daemon" in log_b
    assert f"map ({b_map.stat().st_size} bytes, SHA-256" in shipped["stderr"]  # the daemon's log of it
    assert shipped["both"]["remote"]["shipped_bytes"] >= b_map.stat().st_size


def test_a_series_mask_is_fetched_by_digest_and_nothing_else_is_shipped(shipped):
    f = shipped["fetched"]
    assert f["mask_equal"]
    assert all("no file" in r or "cannot read" in r for r in f["refused"]), f["refused"]
    assert "a fetch from" in shipped["stderr"] and "refused" in shipped["stderr"]


@pytest.fixture(scope="module")
def dectris_joined(tmp_path_factory):
    from test_daemon import Daemon, end_group, write_params
    from test_dectris_stream import simulate

    from ringstream.transport.endpoints import free_tcp_port

    base = tmp_path_factory.mktemp("dectris-joined")
    params = write_params(base)
    stream = f"tcp://127.0.0.1:{free_tcp_port()}"
    join = f"tcp://127.0.0.1:{_free_ports(5)}"
    (base / "mask.toml").write_text("[source]\ndectris_pixel_mask = true\n")
    frames = np.random.default_rng(5).poisson(3000.0, (6, NZ, NY)).astype("uint16")
    np.save(base / "f.npy", frames)
    d = Daemon(["--config", base / "mask.toml", "--param-file", params, "--dectris-stream", stream, "--workers", 0,
                "--engine", "cpu", "--no-zarr", "--output-h5", "s_{run:03d}.h5", "--remote-endpoint", join,
                *keys(base, ("w",))], base)
    worker = None
    try:
        d.wait_ready(60)
        worker = _join(base, "w", join)
        d.wait_status(lambda st: len(_remote(st)) == 1, "the joined worker", 40)
        for k, mask in enumerate((["--pixel-mask"], [])):
            simulate(base, stream, "--stack", "f.npy", "--images", 6, "--series", 1, "--series-id", k + 1, "--codec",
                     "bslz4", *mask)
            d.wait_status(lambda st, n=k + 1: st["runs"].get("complete", 0) >= n, f"series {k + 1}", 40)
        os.kill(d.proc.pid, signal.SIGTERM)
        rc = d.wait(60)
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    finally:
        leaked = end_group(d.proc)
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert not leaked, leaked
    return {"base": base, "params": params, "rc": rc, "stderr": d.stderr, "frames": frames, "counts": d.counts()}


def test_a_joined_worker_fetches_a_series_mask_and_switches_back_without_it(dectris_joined):
    from test_dectris_stream import reference, sim_mask

    from ringstream.runs.index import RunIndex

    j = dectris_joined
    assert j["rc"] == 0, j["stderr"]
    assert j["counts"][2:] == (12, 0, 0), j["stderr"]  # written, rejected, dropped: all by the joined worker
    runs = RunIndex.in_state_dir(j["base"] / ".ringstream").runs()
    assert [r["status"] for r in runs] == ["complete"] * 2
    for r, mask in zip(runs, (sim_mask() != 0, None), strict=True):
        with h5py.File(j["base"] / r["files"]["h5"], "r") as f:
            np.testing.assert_array_equal(f["/entry/data/I"][()], reference(j["params"], j["frames"], mask))
    log = (j["base"] / "w" / "worker.log").read_text()
    assert f"pixel mask {runs[0]['meta']['pixel_mask_sha256'][:12]} in use" in log, log
    assert f"mask:{runs[0]['meta']['pixel_mask_sha256']}" in j["stderr"]  # shipped by the daemon

"""``ringstream worker --join tcp://HOST:PORT`` and ``ringstream keys generate`` (docs/REMOTE.md).

A worker on another host joins a running daemon: it asks the daemon's join socket (CURVE, with its own key pair
``worker.key_secret`` and the daemon's ``server.key`` from ``--keys-dir``) for a worker index, the configuration,
the parameter file's text, the map key and the files the daemon ships (:mod:`.shipping`: the parameter file's mask
and dark files, ``[run] dark``); fetches those over the same connection, each checked against its SHA-256; loads the
map from its own cache (``RINGSTREAM_CACHE_DIR``) or builds it, and fetches the daemon's map into that cache when it
cannot build it, builds another key, or is told ``--fetch-map``; then runs the worker role in this process,
connected to the daemon's remote frames, results, events and peaks ports (pixel masks a series names are fetched
when its first frame arrives). It ends when the daemon stops (or stays silent for ``SILENT_S``), on SIGTERM or
SIGINT; its frames then go to the other workers.

Exit codes as ``ringstream run``: 0 the daemon stopped; 2 configuration (keys, a refused join or fetch, a fetched file or
map that is not what the daemon announced); 4 map.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from ..errors import ConfigError
from .shipping import fetch_file

log = logging.getLogger("ringstream.join")

#: a joined worker whose daemon answers no ping for this long ends, s
SILENT_S = 10.0
#: seconds between pings
PING_S = 1.0


def add_worker_parser(sub) -> None:
    p = sub.add_parser(
        "worker", allow_abbrev=False, help="join a running daemon from another host as a worker",
        description="Join the daemon whose [transport] remote_endpoint is ENDPOINT: frames arrive inline over TCP "
        "(CURVE), results go to its writer. Ends when the daemon stops.")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    p.add_argument("--join", required=True, metavar="tcp://HOST:PORT", help="the daemon's remote_endpoint")
    p.add_argument("--keys-dir", default=os.environ.get("RINGSTREAM_TRANSPORT_KEYS_DIR", ""), metavar="DIR",
                   help="this worker's worker.key_secret and the daemon's server.key (default "
                        "$RINGSTREAM_TRANSPORT_KEYS_DIR)")
    p.add_argument("--insecure", action="store_true",
                   help="no CURVE (only with a daemon whose [transport] insecure_remote = true)")
    p.add_argument("--engine", default="", choices=("", "auto", "cpu", "gpu"), help="default: the daemon's")
    p.add_argument("--gpus", default="", metavar="LIST", help="CUDA devices, e.g. 0,1 (default: the daemon's)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the join answer")
    p.add_argument("--fetch-map", action="store_true",
                   help="take the daemon's map (kept in this host's map cache) instead of building it; without it the "
                        "map is fetched only when this host cannot build it or builds another")


def add_keys_parser(sub) -> None:
    p = sub.add_parser(
        "keys", allow_abbrev=False, help="make a CURVE key pair for remote workers (keys generate DIR)",
        description="Write NAME.key (public: copy it to the other side) and NAME.key_secret (mode 0600) into DIR. "
        "The daemon's pair is 'server'; a worker host's is 'worker', and the daemon accepts it once its "
        "NAME.key is in [transport] authorized_keys_dir.")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    p.add_argument("action", choices=("generate",))
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--name", default="worker", help="file name of the pair: server, worker (default) or another")


def cmd_keys(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..transport.security import generate_keys

    if extra:
        raise ConfigError(f"keys: unexpected arguments: {' '.join(extra)}")
    public, secret = generate_keys(Path(args.folder), args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600; never copy it off this host)", flush=True)
    return 0


def _gpus(text: str) -> list[int]:
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise ConfigError(f"worker: --gpus {text!r}: expected comma-separated CUDA device numbers such as 0,1") \
            from None


def ask(ctx, endpoint: str, command: str, args: dict, timeout: float):
    """One request on the join socket: the ControlReply, or None when nothing answers within ``timeout`` s."""
    got = request_on(ctx, endpoint, command, args, timeout)
    return None if got is None else got[0]


def request_on(ctx, endpoint: str, command: str, args: dict, timeout: float):
    """One request on the join socket: (the ControlReply, its buffers), or None when nothing answers within
    ``timeout`` s."""
    import zmq

    from ..protocol import ControlReply, ControlRequest, ProtocolError, decode, encode

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(encode(ControlRequest(command=command, args=args)))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        try:
            reply, buffers = decode(sock.recv_multipart())
        except ProtocolError:
            return None
        return (reply, buffers) if isinstance(reply, ControlReply) else None
    finally:
        sock.close(linger=0)


def joined_config(data: dict, join: str, keys_dir: str, insecure: bool, engine: str, gpus: list[int], folder: Path,
                  files: dict[str, Path] | None = None):
    """The configuration a joined worker runs with: the daemon's, with the parameter file written to ``folder``, the
    files it names replaced by their copies ``files`` (entry -> path, :mod:`.shipping`), the remote endpoints (on
    the host it joined) instead of the internal ones, and its own keys and engine choice."""
    import dataclasses

    from ..config import DaemonConfig
    from ..transport.security import remote_endpoints, tcp_host_port
    from .shipping import PARAM_FILE_KEYS, RUN_DARK

    files = files or {}
    params = folder / "params.txt"
    params.write_text(data["params"])
    sections = data["config"]
    # the copies win over the parameter file's paths (and the daemon's own overrides): applied last
    overrides = [*sections["run"].get("overrides", ()), *(f"{k} {files[k]}" for k in PARAM_FILE_KEYS if k in files)]
    sections["run"] = {**sections["run"], "param_file": str(params), "dark": str(files.get(RUN_DARK, "")),
                       "overrides": overrides}
    sections["transport"] = {**sections["transport"], "keys_dir": keys_dir, "insecure_remote": insecure,
                             "runtime_dir": "", "remote_endpoint": join}
    if engine:
        sections["workers"] = {**sections["workers"], "engine": engine}
    if gpus:
        sections["workers"] = {**sections["workers"], "gpus": gpus}
    cfg = DaemonConfig.from_dict(sections, origin=f"the daemon at {join}")
    host = tcp_host_port(join)[0]
    ep = remote_endpoints(join, host)
    # connect endpoints, not binds: set after validation (which checks what the daemon binds)
    transport = dataclasses.replace(cfg.transport, frames_endpoint=ep["frames"], results_endpoint=ep["results"],
                                    events_endpoint=ep["events"], peaks_endpoint=ep["peaks"])
    return dataclasses.replace(cfg, transport=transport)


def cmd_worker(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import zmq

    from ..transport.security import client_context, tcp_host_port
    from ..workers.process import run as run_worker

    if extra:
        raise ConfigError(f"worker: unexpected arguments: {' '.join(extra)}")
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))  # a service's log: the join's steps, as the worker role's
    if tcp_host_port(args.join) is None:
        raise ConfigError(f"worker: --join {args.join!r}: expected tcp://HOST:PORT (the daemon's remote_endpoint)")
    if not args.keys_dir and not args.insecure:
        raise ConfigError("worker: --keys-dir DIR is needed (worker.key_secret and the daemon's server.key; "
                          "`ringstream keys generate DIR`), or --insecure for a daemon without CURVE")
    gpus = _gpus(args.gpus)
    security = SimpleNamespace(remote_endpoint=args.join, insecure_remote=bool(args.insecure),
                               keys_dir=args.keys_dir)
    ctx = client_context(security, zmq.Context())
    try:
        reply = ask(ctx, args.join, "join", {"host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus,
                                             "engine": args.engine}, float(args.timeout))
        if reply is None:
            raise ConfigError(f"worker: no answer from {args.join} within {args.timeout:g} s: no daemon there, or it "
                              "refused this worker's key or this server key (the daemon logs refusals with the "
                              "address)")
        if not reply.ok:
            raise ConfigError(f"worker: {args.join} refused the join: {reply.error}")
        data = dict(reply.data)
        with tempfile.TemporaryDirectory(prefix="ringstream-worker-") as tmp:
            folder = Path(tmp)

            def ask_part(name: str, offset: int):
                got = request_on(ctx, args.join, "fetch", {"name": name, "offset": int(offset)}, float(args.timeout))
                if got is None:
                    raise ConfigError(f"worker: {args.join} did not answer a fetch of {name} within "
                                      f"{args.timeout:g} s")
                answer, buffers = got
                if not answer.ok or len(buffers) != 1:
                    raise ConfigError(f"worker: {args.join} refused to ship {name}: {answer.error or 'no data'}")
                return answer.data, bytes(buffers[0])

            files = take_files(ask_part, dict(data.get("files") or {}), folder / "files")
            cfg = joined_config(data, args.join, args.keys_dir, bool(args.insecure), args.engine, gpus, folder,
                                files)
            imap, origin = worker_map(cfg.load_params(), data, ask_part, bool(args.fetch_map))
            index = int(data["index"])
            log.info("joined %s as worker-%d (map %s from %s; %d file(s) taken from the daemon)", args.join, index,
                     imap.key[:12], origin, len(files))
            del imap  # the worker loads it again from the cache

            def fetch_mask(digest: str) -> Path:
                masks = folder / "masks"
                if not (masks / f"{digest}.npy").is_file():
                    fetch_file(ask_part, f"mask:{digest}", masks / f"{digest}.npy")
                return masks

            ready, stop = threading.Event(), threading.Event()
            watch = threading.Thread(target=_watch_daemon, args=(ctx, args.join, stop), name="daemon-watch",
                                     daemon=True)
            watch.start()
            try:
                return run_worker(cfg, ready, stop, index=index, fetch_mask=fetch_mask)
            finally:
                stop.set()
                watch.join(2 * PING_S)
    finally:
        ctx.destroy(linger=0)


def take_files(ask_part, listing: dict[str, dict], folder: Path) -> dict[str, Path]:
    """Fetch every file of the join's ``listing`` (entry -> ``{"sha256", "size", "file"}``) into ``folder``, each
    checked against its SHA-256; entry -> the copy (named after the entry, with the original's suffix: a dark
    frame's format is read from it)."""
    out = {}
    for name, info in listing.items():
        dest = folder / (name + "".join(Path(str(info.get("file", ""))).suffixes))
        fetch_file(ask_part, name, dest, info)
        out[name] = dest
        log.info("took %s from the daemon (%d bytes, SHA-256 %s)", name, int(info["size"]), str(info["sha256"])[:12])
    return out


def worker_map(params, data: dict, ask_part, fetch: bool):
    """(the map, where it came from) for a joined worker: this host's map cache when it has the daemon's key; else
    built here, unless ``fetch`` (``--fetch-map``), the build fails, or it gives another key: then the daemon's
    map file is fetched into this host's cache (checked by its SHA-256, then by the key it records)."""
    from ..errors import RingstreamError
    from ..geometry.cache import default_cache_dir, load_cached, load_or_build

    key = str(data["map_key"])
    shape = (int(params.NrPixelsZ), int(params.NrPixelsY))
    path = default_cache_dir() / f"{key}.npz"
    if path.is_file():
        imap = load_cached(path, key, shape)
        if imap is not None:
            return imap, "this host's cache"
    why = "--fetch-map"
    if not fetch:
        try:
            imap, from_cache = load_or_build(params)
            if imap.key == key:
                return imap, "the cache" if from_cache else "a fresh build"
            why = f"this host's map {imap.key[:12]} differs from the daemon's {key[:12]}"
        except (RingstreamError, MemoryError) as exc:
            why = f"this host cannot build the map ({exc})"
    if not data.get("map_file"):
        raise ConfigError(f"worker: {why}, and the daemon has no map file to ship (its map cache could not be written)")
    log.info("fetching the daemon's map (%s)", why)
    fetch_file(ask_part, "map", path)  # checked against the digest every part's answer gives, then by its key
    imap = load_cached(path, key, shape)
    if imap is None:
        path.unlink(missing_ok=True)
        raise ConfigError(f"worker: the map fetched from the daemon does not load as the map {key[:12]} (another "
                          "ringstream version?)")
    return imap, "the daemon"


def _watch_daemon(ctx, endpoint: str, stop: threading.Event) -> None:
    """Ping the daemon every ``PING_S``; set ``stop`` when it is stopping or has not answered for ``SILENT_S``."""
    heard = time.monotonic()
    while not stop.wait(PING_S):
        reply = ask(ctx, endpoint, "ping", {}, PING_S)
        now = time.monotonic()
        if reply is not None and reply.ok:
            heard = now
            if reply.data.get("state") == "stopping":
                log.info("the daemon at %s is stopping: this worker ends once idle", endpoint)
                stop.set()
        elif now - heard > SILENT_S:
            log.warning("the daemon at %s has not answered for %.0f s: this worker ends", endpoint, now - heard)
            stop.set()

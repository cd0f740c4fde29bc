"""``ringstream status``: ask a running daemon's control socket how it is doing.

The client is a DEALER that sends ``["", *encode(ControlRequest)]`` (the envelope a REQ socket would send) to the
supervisor's control ROUTER and waits up to ``timeout`` s for the ControlReply. Exit status of the command: 0 when the
daemon answers, its state is ``running`` or ``draining`` and every child is alive; 1 otherwise, including when
nothing answers (one line: ``ringstream: error: no daemon answering on tcp://…``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import zmq

from ..protocol import ControlReply, ControlRequest, ProtocolError, decode, encode

HEALTHY_STATES = ("running", "draining")


class NoDaemon(Exception):
    """Nothing answered on the control endpoint within the timeout."""


def request(endpoint: str, command: str = "status", timeout: float = 2.0, args: dict | None = None) -> ControlReply:
    """Send one ControlRequest to ``endpoint`` and return the ControlReply; :class:`NoDaemon` on timeout."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", *encode(ControlRequest(command=command, args=dict(args or {})))])
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise NoDaemon(f"no daemon answering on {endpoint}")
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    if frames and frames[0] == b"":
        frames = frames[1:]
    try:
        reply, _ = decode(frames)
    except ProtocolError as exc:
        raise NoDaemon(f"{endpoint} answered with something that is not a ringstream reply ({exc})") from None
    if not isinstance(reply, ControlReply):
        raise NoDaemon(f"{endpoint} answered with a {type(reply).__name__}, not a reply")
    return reply


def query_status(endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
    """The daemon's status (see :meth:`ringstream.daemon.supervisor.Supervisor.status`); NoDaemon if none."""
    reply = request(endpoint, "status", timeout)
    if not reply.ok:
        raise NoDaemon(f"{endpoint}: status request refused: {reply.error}")
    return dict(reply.data)


def is_healthy(status: dict[str, Any]) -> bool:
    """True when the state is running or draining, every child is alive and the last run did not fail (its
    outputs could not be written: the service goes on and tries again with the next run)."""
    children = status.get("children") or {}
    runs = status.get("runs") or {}
    return status.get("state") in HEALTHY_STATES and bool(children) and all(
        c.get("alive") for c in children.values()) and not runs.get("last_failed")


def format_status(status: dict[str, Any]) -> str:
    """Human-readable lines for a status dict."""
    tot = status.get("totals", {})
    lines = [
        f"run {status.get('run_id')}: {status.get('state')}, up {status.get('uptime', 0):.0f} s, "
        f"{status.get('frames_per_s', 0):.1f} frames/s, output {status.get('output')}",
        f"frames: received {tot.get('received', 0)}, sent {tot.get('sent', 0)}, integrated "
        f"{tot.get('integrated', 0)}, written {tot.get('written', 0)}, rejected {tot.get('rejected', 0)}, "
        f"dropped {tot.get('dropped', 0)}, protocol errors {tot.get('protocol_errors', 0)}",
        f"delivery: worker restarts {tot.get('worker_restarts', 0)}, writer restarts {tot.get('writer_restarts', 0)}, "
        f"ingest restarts {tot.get('ingest_restarts', 0)}, re-sent {tot.get('resent', 0)}, duplicates dropped "
        f"{tot.get('duplicates', 0)}",
    ]
    channel = channel_line(status)
    if channel:
        lines.append(channel)
    runs = status.get("runs") or {}
    cur = runs.get("current") or {}
    if cur:
        lines.append(f"current run {cur.get('run')}{' ' + repr(cur.get('name')) if cur.get('name') else ''}: "
                     f"{cur.get('frames', 0)} frames, {cur.get('frames_per_s', 0):.1f} frames/s, {cur.get('file')}")
    elif runs:
        lines.append("between runs")
    for r in runs.get("last") or []:
        lines.append(f"  run {r.get('run')} {r.get('status')}: {r.get('frames', 0)} frames, "
                     f"{(r.get('files') or {}).get('h5', '-')}{' (' + r['reason'] + ')' if r.get('reason') else ''}")
    for name, c in (status.get("children") or {}).items():
        alive = "alive" if c.get("alive") else f"exited ({c.get('exitcode')})"
        counters = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                             for k, v in sorted((c.get("counters") or {}).items())
                             if not (k.startswith("protocol_errors_") and not v))
        lines.append(f"  {name:<10} pid {c.get('pid')}  {alive:<12} {c.get('state', '?'):<8} "
                     f"heartbeat {c.get('heartbeat_age', 0):.1f} s ago  {counters}")
    lines.extend(placement_lines(status))
    lines.extend(remote_lines(status))
    return "\n".join(lines)


def placement_lines(status: dict[str, Any]) -> list[str]:
    """Where each worker runs: its GPU (from its heartbeat), the NUMA node it was pinned to and the CPUs the kernel
    lets it use (docs/MULTIGPU.md)."""
    lines = []
    for name, c in (status.get("children") or {}).items():
        counters = c.get("counters") or {}
        if not name.startswith("worker-") or "gpu" not in counters:
            continue
        gpu, node = int(counters["gpu"]), int(counters.get("numa_node", -1))
        where = "engine cpu" if gpu < 0 else f"GPU {gpu}, " + (f"NUMA node {node}" if node >= 0 else "not pinned")
        lines.append(f"  {name:<10} placement: {where}, CPUs {c.get('cpus') or '?'}")
    return lines


def remote_lines(status: dict[str, Any]) -> list[str]:
    """The joined workers (docs/REMOTE.md): where they join, how many were refused or gone, one line each."""
    remote = status.get("remote") or {}
    if not remote:
        return []
    lines = [f"remote workers on {remote.get('endpoint')} ({'CURVE' if remote.get('curve') else 'NO CURVE'}): "
             f"{len(remote.get('workers') or {})} joined, refused {remote.get('refused', 0)} (unknown key), failed "
             f"handshakes {remote.get('handshake_failed', 0)} (no CURVE or another server key), gone "
             f"{remote.get('gone', 0)}"]
    for name, w in (remote.get("workers") or {}).items():
        gpus = ",".join(str(g) for g in w.get("gpus") or []) or "-"
        lines.append(f"  {name:<11} host {w.get('host')} pid {w.get('pid')} GPU {gpus} {w.get('state', '?'):<8} "
                     f"{w.get('frames_per_s', 0):.1f} frames/s, integrated {w.get('integrated', 0)}, heartbeat "
                     f"{w.get('heartbeat_age', 0):.1f} s ago")
    return lines


def channel_line(status: dict[str, Any]) -> str:
    """One line on a live source's channel from the ingest's counters (``pva_*``, ``midas_*``), or ""."""
    c = ((status.get("children") or {}).get("ingest") or {}).get("counters") or {}
    where = status.get("source_channel") or ""

    def n(key: str) -> int:
        return int(c.get(key, 0) or 0)

    if "pva_connected" in c:
        state = "connected" if n("pva_connected") else "DISCONNECTED"
        return (f"channel pva {where}: {state} (connects {n('pva_connects')}, disconnects {n('pva_disconnects')}), "
                f"received {n('pva_received')}, gaps {n('pva_gaps')} (missed {n('pva_missed')}), resets "
                f"{n('pva_resets')}, overruns {n('pva_overruns')}, rejected: shape {n('dropped_wrong_shape')}, "
                f"type {n('dropped_wrong_dtype')}, decode {n('dropped_decode_error')}; ring full "
                f"{n('dropped_ring_full')}")
    if "dectris_connected" in c:
        state = "connected" if n("dectris_connected") else "DISCONNECTED"
        rejected = sum(n(f"dropped_{k}") for k in ("malformed", "unknown_type", "unsupported", "wrong_shape",
                                                    "wrong_dtype"))
        return (f"channel dectris {where}: {state} (connects {n('dectris_connects')}, disconnects "
                f"{n('dectris_disconnects')}), series {n('dectris_series')} (starts missed "
                f"{n('dectris_starts_missed')}), received {n('dectris_received')}, gaps {n('dectris_gaps')} (missed "
                f"{n('dectris_missed')}), duplicates {n('dectris_duplicates')}, rejected {rejected} (malformed "
                f"{n('dropped_malformed')}, unsupported {n('dropped_unsupported')}, shape "
                f"{n('dropped_wrong_shape')}, type {n('dropped_wrong_dtype')}); ring full {n('dropped_ring_full')}")
    if "midas_connected" in c:
        return (f"channel midas_socket {where}: {n('midas_connected')} sender(s) connected "
                f"({n('midas_senders')} in all), received {n('midas_received')}, cut off: malformed "
                f"{n('midas_malformed')}, short {n('midas_truncated')}")
    return ""


def print_status(endpoint: str, as_json: bool = False, timeout: float = 2.0, out: TextIO | None = None) -> int:
    """Print the status of the daemon on ``endpoint``; return 0 when healthy, else 1."""
    out = out or sys.stdout
    try:
        status = query_status(endpoint, timeout)
    except NoDaemon as exc:
        print(f"ringstream: error: {exc}", file=sys.stderr, flush=True)
        return 1
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True), file=out, flush=True)
    else:
        print(format_status(status), file=out, flush=True)
    return 0 if is_healthy(status) else 1

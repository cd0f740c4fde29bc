"""``ringstream runs start|stop|list``: end the current run of a running daemon and name the next, or list its runs.

``start [--name NAME] [--meta KEY=VALUE ...]`` ends the current run; the next frame starts a run with that name and
metadata (the name and metadata can appear in the output file names: ``{name}``, ``{attr[KEY]}``). ``stop`` ends
the current run; the next frame starts a new, unnamed one. ``list`` prints the runs of the service from its index of
runs (``--json`` for the records). Exit 0 on success; 3 when the daemon refuses; 1 when no daemon answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import ConfigError, InputError
from .control import add_control_argument, control_endpoint


def add_runs_parser(sub) -> None:
    """The ``runs`` sub-command on the ``ringstream`` parser's subparsers ``sub``."""
    p = sub.add_parser(
        "runs", allow_abbrev=False, help="end the current run and name the next (start), end it (stop), or list "
        "the runs of a running daemon",
        description="Runs of a running daemon: 'start' ends the current run and names the next, 'stop' ends the "
        "current run, 'list' prints the index of runs.")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    p.add_argument("action", choices=("start", "stop", "list"))
    p.add_argument("--name", default="", help="start: the next run's name ({name} in the output templates)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="start: metadata of the next run ({attr[KEY]} in the templates), repeatable")
    p.add_argument("--json", action="store_true", help="list: the index records as JSON")
    add_control_argument(p)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer")


def _meta(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"runs: --meta {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def cmd_runs(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .status import NoDaemon, request

    if extra:
        raise ConfigError(f"runs: unexpected arguments: {' '.join(extra)}")
    if args.action != "start" and (args.name or args.meta):
        raise ConfigError(f"runs {args.action}: --name and --meta go with 'start'")
    payload = {"action": args.action, "name": args.name, "meta": _meta(args.meta)}
    try:
        reply = request(control_endpoint(args.control_endpoint), "runs", timeout=float(args.timeout), args=payload)
    except NoDaemon as exc:
        print(f"ringstream: error: {exc}", file=sys.stderr)
        return 1
    if not reply.ok:
        raise InputError(reply.error)
    if args.action != "list":
        what = "the current run ends; the next frame starts " + (f"run {args.name!r}" if args.name else "a new run")
        print(what if args.action == "start" else "the current run ends", flush=True)
        return 0
    runs = reply.data.get("runs") or []
    if args.json:
        print(json.dumps(runs, indent=1), flush=True)
        return 0
    for r in runs:
        files = (r.get("files") or {}).get("h5", "-")
        print(f"{r.get('run'):>6}  {r.get('status', '?'):<11} {r.get('frames', 0):>8} frames  "
              f"{r.get('first_frame_time', '-'):<29} {files}{'  ' + repr(r['name']) if r.get('name') else ''}"
              f"{'  (' + r['reason'] + ')' if r.get('reason') else ''}", flush=True)
    return 0

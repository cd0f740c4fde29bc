"""``ringstream peaks set|add|remove|clear``: change a running daemon's peak list from a stated frame on.

``set R...`` replaces the list, ``add R...`` adds to it, ``remove R...`` takes out the peak nearest each R (what a
shift-click on ``ringstream view``'s lineout does), ``clear`` empties it (automatic finding, or no fitting, as
the parameter file says); ``--from-frame N`` asks for a start no earlier than frame N (default: the next frame the
ingest sends). The command waits for the ingest's confirmation and prints the frame the list is in force from:
``peak list 2 in force from frame 1234: 245.3, 347.1``. Exit 0 on success; 3 when the daemon refuses the change
(one line saying why: fitting off, more peaks than the run's rows, a bad radius); 1 when no daemon answers.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from ..errors import InputError
from .control import add_control_argument, control_endpoint

#: a reply waits for the ingest's confirmation (up to 5 s at the supervisor), so the client waits a little longer
TIMEOUT_S = 8.0


def _radius(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a radius in px") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive radius in px")
    return v


def add_peaks_parser(sub) -> None:
    """The ``peaks`` sub-command on the ``ringstream`` parser's subparsers ``sub``."""
    p = sub.add_parser(
        "peaks", allow_abbrev=False,
        help="change a running daemon's peak list (set|add|remove|clear) from a stated frame on",
        description="Change the peak list of a running daemon. It takes effect from --from-frame N or from the "
        "next frame the ingest sends, whichever is later, and is recorded with that frame index.",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    p.add_argument("action", choices=("set", "add", "remove", "clear"),
                   help="replace, extend, take the nearest peaks out of, or empty the list")
    p.add_argument("radii", nargs="*", type=_radius, metavar="R", help="peak locations in px")
    p.add_argument("--from-frame", type=int, default=None, metavar="N", help="first frame_index to use the list")
    add_control_argument(p)
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="S", help="seconds to wait for an answer")


def cmd_peaks(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..errors import ConfigError
    from .status import NoDaemon, request

    if extra:
        raise ConfigError(f"peaks: unexpected arguments: {' '.join(extra)}")
    if args.action in ("set", "add", "remove") and not args.radii:
        raise ConfigError(f"peaks {args.action}: give at least one radius R (px)")
    if args.action == "clear" and args.radii:
        raise ConfigError("peaks clear: takes no radii")
    if args.from_frame is not None and args.from_frame < 0:
        raise ConfigError(f"peaks: --from-frame {args.from_frame}: expected a frame_index >= 0")
    endpoint = control_endpoint(args.control_endpoint)
    payload = {"action": args.action, "peaks": list(args.radii)}
    if args.from_frame is not None:
        payload["from_frame"] = int(args.from_frame)
    try:
        reply = request(endpoint, "peaks", timeout=float(args.timeout), args=payload)
    except NoDaemon as exc:
        print(f"ringstream: error: {exc}", file=sys.stderr)
        return 1
    if not reply.ok:
        raise InputError(reply.error)
    d = reply.data
    peaks = ", ".join(f"{v:g}" for v in d.get("peaks", [])) or "none (automatic finding)"
    print(f"peak list {d.get('seq')} in force from frame {d.get('from_frame')}: {peaks}", flush=True)
    return 0

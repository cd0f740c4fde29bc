"""``ringstream view [OUT.h5] [--control EP] [--listen HOST:PORT] [--token T] [--history N]``: the live web page of
a running daemon (its control endpoint, as ``ringstream status`` finds it) or of a results file, growing or
finished. Defaults come from the ``[view]`` keys' defaults; ``$RINGSTREAM_VIEW_TOKEN`` gives the token."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from ..config.schema import option_of
from ..daemon.control import add_control_argument, control_endpoint

TOKEN_ENV = "RINGSTREAM_VIEW_TOKEN"


def add_view_parser(sub) -> None:
    """The ``view`` sub-command on the ``ringstream`` parser's subparsers ``sub``."""
    what = ("Serve a web page (Bokeh, no internet needed) showing the latest lineout, a waterfall of the last "
            "lineouts, each peak's Rcen, FWHM and Imax against frame, and the daemon's state. Clicks on the lineout "
            "add (shift: remove) peaks, only in a page opened with the token printed at start.")
    p = sub.add_parser("view", allow_abbrev=False, description=what,
                       help="a live web page of a running daemon or of a results file (lineouts, waterfall, fits)")
    p.add_argument("h5", nargs="?", metavar="OUT.h5", help="a results file instead of a daemon (growing or finished)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    add_control_argument(p)
    p.add_argument("--listen", default=option_of("view", "listen").default, metavar="HOST:PORT",
                   help="where the page is served (default %(default)s)")
    p.add_argument("--token", default=None, metavar="T",
                   help=f"the token that lets a page change peaks (default ${TOKEN_ENV}, else a new one)")
    p.add_argument("--history", type=int, default=option_of("view", "history").default, metavar="N",
                   help="lineouts in the waterfall at first (default %(default)s)")


def cmd_view(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..errors import ConfigError
    from .server import serve

    if extra:
        raise ConfigError(f"view: unexpected arguments: {' '.join(extra)}")
    if args.history < 2:
        raise ConfigError(f"view: --history {args.history}: expected at least 2")
    logging.getLogger("ringstream.view").setLevel(logging.INFO)
    return serve(args.listen, control="" if args.h5 else control_endpoint(args.control_endpoint),
                 path=args.h5 or "", token=args.token or os.environ.get(TOKEN_ENV, ""), history=args.history)

"""The control endpoint that the client commands (``status``, ``peaks``, ``runs``) talk to, and their ``--control``
option."""

from __future__ import annotations

import argparse
import os

from ..transport.runtime_dir import client_control_endpoint

#: the environment variable that names the control endpoint (the ``[transport] control_endpoint`` env name)
CONTROL_ENV = "RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT"


def add_control_argument(parser: argparse.ArgumentParser) -> None:
    """``--control`` / ``--control-endpoint ENDPOINT`` on a client sub-command's ``parser``."""
    parser.add_argument("--control", "--control-endpoint", dest="control_endpoint", metavar="ENDPOINT",
                        help=f"control endpoint (default ${CONTROL_ENV}, else the control socket of this user's "
                             "runtime folder or of the one system service: docs/DAEMON.md, \"Who can reach the "
                             "daemon\")")


def control_endpoint(given: str | None) -> str:
    """The endpoint to ask: ``given`` (the ``--control`` value), else ``$RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT``,
    else :func:`~ringstream.transport.runtime_dir.client_control_endpoint`."""
    return given or os.environ.get(CONTROL_ENV) or client_control_endpoint()

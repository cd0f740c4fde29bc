"""The control endpoint that the client commands (``status``, ``peaks``) talk to, and their ``--control`` option."""

from __future__ import annotations

import argparse
import os

#: the environment variable that names the control endpoint (the ``[transport] control_endpoint`` env name)
CONTROL_ENV = "RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT"
DEFAULT_CONTROL = "tcp://127.0.0.1:5557"


def add_control_argument(parser: argparse.ArgumentParser) -> None:
    """``--control`` / ``--control-endpoint ENDPOINT`` on a client sub-command's ``parser``."""
    parser.add_argument("--control", "--control-endpoint", dest="control_endpoint", metavar="ENDPOINT",
                        help=f"control endpoint (default ${CONTROL_ENV}, else {DEFAULT_CONTROL})")


def control_endpoint(given: str | None) -> str:
    """The endpoint to ask: ``given`` (the ``--control`` value), else ``$RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT``,
    else :data:`DEFAULT_CONTROL`."""
    return given or os.environ.get(CONTROL_ENV) or DEFAULT_CONTROL

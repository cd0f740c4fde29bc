"""The Bokeh server of ``ringstream view`` and of a daemon with ``[view] enabled``.

BokehJS and every style sheet are served by this server from the installed ``bokeh`` package
(``BOKEH_RESOURCES=server``): the page needs no internet. The token that lets a page change peaks is given
(``--token``, ``[view] token``) or made at start (``secrets.token_urlsafe``), printed with the page's address and
logged, as Jupyter does; the page is read-only without it.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ConfigError
from .feeds import DaemonFeed, FileFeed
from .page import PageContext, make_document
from .state import ViewState

log = logging.getLogger("ringstream.view")

#: a file's waterfall: at most this many of its rows, evenly spaced (the whole run, decimated to the screen)
FILE_ROWS = 1000


def parse_listen(listen: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``; ConfigError naming the value otherwise."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[view] listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def page_address(host: str, port: int, token: str = "") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(listen: str, control: str = "", path: str = "", token: str = "", history: int = 200,
          handle_signals: bool = True) -> int:
    """Serve the page of the daemon on ``control`` or of the results file ``path`` on ``listen`` until SIGTERM or
    SIGINT (``handle_signals``; a daemon's page process leaves them to its supervisor and ends on SystemExit);
    returns 0."""
    from bokeh.server.server import Server
    from tornado.ioloop import IOLoop

    host, port = parse_listen(listen)
    if path and not Path(path).is_file():
        raise ConfigError(f"view: {path}: no such results file")
    token = token or secrets.token_urlsafe(18)
    os.environ["BOKEH_RESOURCES"] = "server"  # BokehJS from this server, never a CDN
    state, stop = ViewState(), threading.Event()
    feed = FileFeed(path, state, stop, FILE_ROWS) if path else DaemonFeed(control, state, stop)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="view-control")
    ctx = PageContext(state=state, control="" if path else control, token=token,
                      history=FILE_ROWS if path else int(history), executor=executor)
    wide = host in ("0.0.0.0", "::", "")
    origins = ["*"] if wide else [f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    loop = IOLoop.current()
    try:
        server = Server({"/": make_document(ctx)}, io_loop=loop, address=host, port=port,
                        allow_websocket_origin=origins)
    except OSError as exc:
        raise ConfigError(f"[view] listen {listen}: cannot listen ({exc.strerror or exc})") from None
    feed.start()
    server.start()
    what = f"the results file {path}" if path else f"the daemon on {control}"
    print(f"ringstream view of {what}: {page_address(host, port, token)}", flush=True)
    print(f"read-only: {page_address(host, port)}", flush=True)
    log.info("serving the page of %s on %s (token %s; without it the page is read-only)", what,
             page_address(host, port), token)

    def _stop(signum, frame) -> None:
        loop.add_callback_from_signal(loop.stop)

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)} if handle_signals else {}
    try:
        loop.start()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop.set()
        server.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        feed.join(timeout=2.0)
    return 0

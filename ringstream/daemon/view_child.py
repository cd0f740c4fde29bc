"""``[view] enabled``: the daemon serves its own live page (``ringstream view --control``, docs/VIEW.md) from one
more child process.

The page is no part of the pipeline: it is not one of the supervised children (its death is logged, never restarted
and never a failure of the daemon), it talks to the daemon only as any ``ringstream view`` does (the control socket
and the writer's view feed), and it is ended with the daemon. The token is ``[view] token`` or a new one, logged by
the supervisor and printed by the child with the page's address.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from ..transport.child import run_child, stop_now

log = logging.getLogger("ringstream.supervisor")


def start_view(mp: Any, config: Any) -> Any:
    """The started page process of ``config`` (its endpoints resolved), or None when ``[view] enabled`` is off."""
    if not config.view.enabled:
        return None
    from ..view.server import page_address, parse_listen

    host, port = parse_listen(config.view.listen)
    token = config.view.token or secrets.token_urlsafe(18)
    proc = mp.Process(target=_serve, args=(config, token), name="view", daemon=True)
    proc.start()
    log.info("view: the page is on %s (read-only), %s (peaks may be changed); pid %d",
             page_address(host, port), page_address(host, port, token), proc.pid)
    return proc


def _serve(config: Any, token: str) -> int:
    from ..view.server import serve

    vlog = logging.getLogger("ringstream.view")
    return run_child(config, "view", lambda: serve(config.view.listen, control=config.transport.control_endpoint,
                                                    token=token, history=config.view.history,
                                                    handle_signals=False), vlog)


def end_view(proc: Any) -> None:
    """End the page process (at once: it holds nothing to flush)."""
    if proc is None or proc.pid is None:
        return
    if proc.is_alive():
        stop_now(proc)
        proc.join(3.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)

"""systemd notification (``sd_notify``): READY, STATUS, WATCHDOG, STOPPING, without libsystemd.

The protocol (``man sd_notify``): one datagram of newline-separated ``NAME=value`` assignments sent on an
``AF_UNIX``/``SOCK_DGRAM`` socket whose address is ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux abstract
namespace, sent as a leading NUL byte). systemd sets ``$NOTIFY_SOCKET`` for ``Type=notify`` units and
``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``) when ``WatchdogSec=`` is set; the service must then send ``WATCHDOG=1``
more often than every ``WATCHDOG_USEC`` µs (here: every half of it).

Outside systemd (no ``$NOTIFY_SOCKET``) every method is a no-op. Nothing here raises into the caller: a failed send
is logged once as a warning (then at DEBUG) and the daemon goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("ringstream.notify")

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify datagrams to ``address`` (None: do nothing).

    ``watchdog_usec``: the watchdog period systemd expects (µs), None when the watchdog is off for this process.
    ``watchdog_interval``: seconds between ``WATCHDOG=1`` pings (half the period), None when off.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.watchdog_interval = self.watchdog_usec / 2e6 if self.watchdog_usec else None
        self._sock: socket.socket | None = None
        self._failed = False
        self._last_ping = float("-inf")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` of ``env`` (default os.environ).

        The watchdog is on only when ``WATCHDOG_USEC`` is a positive integer and ``WATCHDOG_PID``, if set, is this
        process (``pid``, default ``os.getpid()``); a child that inherits the variables does not ping.
        """
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "").strip()
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        owner = env.get("WATCHDOG_PID", "").strip()
        if usec and owner:
            try:
                if int(owner) != (os.getpid() if pid is None else pid):
                    usec = None
            except ValueError:
                log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", owner)
                usec = None
        return cls(address, usec)

    # ----------------------------------------------------------------------------------------------- public

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (running under systemd with Type=notify)."""
        return self.address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.address is not None and self.watchdog_interval is not None

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up finished), with an optional STATUS line."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """``STATUS=<text>`` (one line, shown by ``systemctl status``)."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, when the watchdog is on for this process; else nothing (returns False)."""
        return self._ping(time.monotonic())

    def watchdog_due(self, now: float | None = None) -> bool:
        """Ping the watchdog if ``watchdog_interval`` s (``time.monotonic``) have passed since the last ping.

        For the supervisor's main loop; True if a ping was sent.
        """
        if self.watchdog_interval is None or self.address is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval:
            return False
        return self._ping(now)

    def _ping(self, now: float) -> bool:
        if self.watchdog_interval is None:
            return False
        self._last_ping = now
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for ``seconds`` more before the start (or stop) timeout fires."""
        return self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (shutdown has begun), with an optional STATUS line."""
        return self._send("STOPPING=1", status)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- sending

    def _address(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def _send(self, state: str | None, status: str | None = None) -> bool:
        """Send one datagram; True if it went out. Never raises."""
        if self.address is None:
            return False
        lines = [state] if state else []
        if status is not None:
            lines.append("STATUS=" + " ".join(str(status).split()))
        if not lines:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self.address[0] not in "/@":
                raise OSError(f"unsupported NOTIFY_SOCKET address {self.address!r} (expected /path or @name)")
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message, self._address())
            return True
        except Exception as exc:  # never into the caller: the daemon runs on without systemd's view of it
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(level, "sd_notify to %s failed (%s); further failures are logged at DEBUG", self.address, exc)
            self.close()
            return False

"""What the writer publishes for live viewers (``ringstream view``, docs/VIEW.md): decimated lineouts and fits.

The writer sees every Result in frame order, so it is where a viewer's data comes from; but a viewer must never slow
the frames. Hence:

- an **XPUB** socket (``[transport] view_endpoint``, bound): ZeroMQ tells it when the first viewer subscribes and
  when the last one leaves (a disconnect unsubscribes). While nobody watches, :meth:`ViewFeed.offer` returns at its
  first line: no copy, no message.
- a send high-water mark of 2 and non-blocking sends: a slow or hung viewer (one that never reads) fills its queue
  and the updates for it are dropped by ZeroMQ (PUB never blocks); the writer does not wait.
- at most ``[view] rate`` updates a second, each with at most ``[view] rows`` of the lineouts written since the last
  one, evenly spaced (:class:`~ringstream.protocol.ViewUpdate`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import zmq

from ..protocol import FIT_COLUMNS, ViewUpdate, encode

log = logging.getLogger("ringstream.writer")

#: rows kept between two updates before every other one is dropped (times ``[view] rows``)
_KEEP_FACTOR = 4
#: how often the socket is asked whether a viewer came or went, in s
_CHECK_S = 0.05


class ViewFeed:
    """The writer's view publisher. ``axes`` f8 ``[3, n_r]`` (R px, 2θ deg, Q 1/Å or NaN); ``n_peaks``: fit rows per
    frame (0 without fitting)."""

    def __init__(self, sock: Any, axes: np.ndarray, n_peaks: int, rate: float, rows: int,
                 fit_model: str = "pv") -> None:
        self.fit_model = str(fit_model)
        self.sock = sock
        self.axes = np.ascontiguousarray(axes, dtype=np.float64)
        self.n_r = int(self.axes.shape[1])
        self.n_peaks = int(n_peaks)
        self.period = 1.0 / float(rate)
        self.rows = int(rows)
        self.watched = False  # a viewer subscribes (XPUB subscription messages)
        self.pending: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self.next_t = 0.0
        self.next_check = 0.0
        self.counters = {"view_updates": 0, "view_subscribed": 0}

    @classmethod
    def open(cls, ctx: Any, config: Any, imap: Any, n_peaks: int) -> ViewFeed | None:
        """The feed on ``config.transport.view_endpoint``, or None when it is "auto" (a writer started without the
        supervisor, which resolves it) or cannot be bound (logged: viewers are never worth stopping the writer)."""
        endpoint = str(config.transport.view_endpoint)
        if not endpoint or endpoint == "auto":
            return None
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 2)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            log.warning("[transport] view_endpoint %s: cannot bind (%s); no live view this time", endpoint, exc)
            return None
        q = getattr(imap, "q", None)
        axes = np.stack([np.asarray(imap.r_px, np.float64), np.asarray(imap.two_theta, np.float64),
                         np.asarray(q, np.float64) if q is not None else np.full(len(imap.r_px), np.nan)])
        return cls(sock, axes, n_peaks, config.view.rate, config.view.rows, config.fit.model)

    def offer(self, frame: int, lineout: np.ndarray, fit: np.ndarray | None) -> None:
        """A row written (in-run ``frame``, lineout f ``[n_r]``, fit ``[k, 7]`` or None): kept for the next update
        while a viewer watches. Kept by reference, not copied: they are views of a received message, which nothing
        writes to, and at most ``_KEEP_FACTOR * rows`` of them are held."""
        if not self.watched:
            return
        self.pending.append((frame, lineout, fit))
        if len(self.pending) >= _KEEP_FACTOR * self.rows:
            self.pending = self.pending[1::2]  # (the newest stays)

    def tick(self, run: Any) -> None:
        """Every turn of the writer's loop: take (un)subscriptions (every ``_CHECK_S``), and publish when an update
        is due."""
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + _CHECK_S
            while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                event = self.sock.recv()
                if event[:1] in (b"\x00", b"\x01"):
                    self.watched = event[:1] == b"\x01"
                    self.counters["view_subscribed"] = int(self.watched)
                    if not self.watched:
                        self.pending.clear()
        if not self.watched or now < self.next_t:
            return
        self.next_t = now + self.period
        try:
            self.publish(run)
        except Exception as exc:  # a viewer is never worth a frame: the writer goes on, and says so once
            self.counters["view_errors"] = self.counters.get("view_errors", 0) + 1
            if self.counters["view_errors"] == 1:
                log.exception("view update not sent (%s); the frames are not affected", exc)

    def publish(self, run: Any) -> None:
        rows, self.pending = self.pending, []
        if len(rows) > self.rows:
            rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, self.rows).round()]
        buffers: list = [self.axes, np.stack([r[1] for r in rows]).astype(np.float32, copy=False) if rows else b""]
        if self.n_peaks:
            fits = np.full((len(rows), self.n_peaks, FIT_COLUMNS), np.nan)
            for i, (_, _, fit) in enumerate(rows):
                if fit is not None:
                    k = min(len(fit), self.n_peaks)
                    fits[i, :k] = fit[:k]
            buffers.append(fits if rows else b"")
        paths = getattr(run, "paths", None)
        msg = ViewUpdate(run_id=str(run.run_id) if run is not None else "", run=int(run.number) if run else 0,
                         name=str(run.name) if run is not None else "",
                         file=os.path.abspath(str(paths.h5)) if paths is not None else "",
                         written=int(run.written) if run is not None else 0, frames=[int(r[0]) for r in rows],
                         n_r=self.n_r, n_peaks=self.n_peaks, fit_model=self.fit_model)
        try:
            self.sock.send_multipart(encode(msg, buffers), zmq.NOBLOCK, copy=False)
            self.counters["view_updates"] += 1
        except zmq.ZMQError:  # (PUB drops for a full queue rather than raise; this is belt and braces)
            pass

    def close(self) -> None:
        self.sock.close(linger=0)

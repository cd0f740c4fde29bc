"""The supervisor's side of changing the peak list while running (docs/DAEMON.md, "Peak fitting and
peak-list updates").

Why it is built this way: frames are already in flight to several workers when a change is made, and a worker must
never fit frame k with a list other than the one in force for k. So the **ingest** decides where a change starts and
stamps it into every frame:

1. a change (``ringstream peaks set|add|remove|clear`` or a click on ``ringstream view``'s page, on the control
   socket, or ``peak_update.txt`` appearing in the output folder) gets the next ``seq`` here and is published as
   a ``ControlRequest("peaks", {seq, peaks, from_frame, origin})`` on the peaks PUB socket
   (``transport.peaks_endpoint``);
2. the ingest (SUB) takes it before its next frame: ``from_frame`` = max(asked, next frame_index), stamps
   ``metadata["peak_seq"]`` into every FrameHeader from there on (the highest seq in force for that index), and
   confirms with a ``PeakUpdate(seq, from_frame, peaks, origin)`` on its events socket;
3. the supervisor publishes the confirmed ``PeakUpdate`` to the workers and the writer (the same PUB socket), answers
   the waiting client with ``{seq, from_frame, peaks}``, and writes MIDAS's ``active_peaks.txt``;
4. a worker fits frame k with the list of k's ``peak_seq``; one it has not received yet it waits for (up to
   ``workers.fitting.PEAK_WAIT_S``) rather than guess, else NaN rows counted ``fit_nan_peak_list_unknown``.

PUB/SUB drops messages to a subscriber that is not connected yet, so every confirmed update, and every request not
yet confirmed, is published again every ``REPUBLISH_S``; receivers keep them by seq (duplicates are harmless).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fitting import peak_slots
from ..fitting.peaklist import apply_action, check_list, parse_peak_update, write_active_peaks
from ..protocol import ControlReply, ControlRequest, PeakUpdate, encode

log = logging.getLogger("ringstream.supervisor")

#: how often confirmed updates and unconfirmed requests are published again, and peak_update.txt looked for, in s
REPUBLISH_S = 0.5
#: a client waiting for the ingest's confirmation gets an error after this long (the request stays queued), in s
ACK_TIMEOUT_S = 5.0
PEAK_UPDATE_FILE = "peak_update.txt"


@dataclasses.dataclass
class _Pending:
    request: ControlRequest
    since: float
    waiters: list = dataclasses.field(default_factory=list)


class PeakControl:
    """Peak-list changes of one run. ``pub``: the bound PUB socket; ``reply(waiter, ControlReply)`` answers a
    control client (``waiter`` = its ROUTER identity and envelope)."""

    def __init__(self, config: Any, params: Any, pub, reply) -> None:
        self.run_id = str(config.run.run_id)
        self.slots = peak_slots(params, config.fit.slots)
        self.initial: tuple[float, ...] = tuple(sorted(float(v) for v in params.PeakLocation))
        self.current = self.initial
        self.seq = 0
        self.pending: dict[int, _Pending] = {}
        self.confirmed: dict[int, PeakUpdate] = {}
        self.folder = Path(os.path.abspath(config.run.output_h5)).parent
        self.pub, self.reply = pub, reply
        self.counters = {"peak_updates": 0, "peak_update_file_rejected": 0}
        self.next_tick = 0.0

    # ------------------------------------------------------------------------------------------- requests
    def request(self, args: dict, waiter, ingest_running: bool) -> ControlReply | None:
        """A ``peaks`` control request: an error reply at once, or None (the reply follows the confirmation)."""
        try:
            if not ingest_running:
                raise InputError("peaks: the ingest is not running (the run is ending): no frame is left to apply "
                                 "a peak list to")
            action = str(args.get("action", ""))
            new = apply_action(self.current, action, args.get("peaks") or ())
            check_list(new, self.slots)
            start = args.get("from_frame")
            if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
                raise InputError(f"peaks: from_frame {start!r}: expected a frame_index >= 0")
        except (InputError, TypeError, ValueError) as exc:
            return ControlReply(ok=False, error=str(exc))
        seq = self.issue(new, int(start or 0), "control")
        self.pending[seq].waiters.append(waiter)
        return None

    def issue(self, peaks: tuple[float, ...], from_frame: int, origin: str) -> int:
        """Give the change the next seq and publish it to the ingest; returns the seq."""
        self.seq += 1
        self.current = peaks
        req = ControlRequest(command="peaks", args={"seq": self.seq, "peaks": list(peaks), "from_frame": from_frame,
                                                    "origin": origin})
        self.pending[self.seq] = _Pending(req, time.monotonic())
        self._send(req)
        log.info("peak list %d (%s) asked from frame %d: %s", self.seq, origin, from_frame,
                 ", ".join(f"{v:g}" for v in peaks) or "none (automatic finding)")
        return self.seq

    def on_confirmed(self, msg: PeakUpdate) -> None:
        """The ingest's confirmation (a PeakUpdate on the events socket): publish it, answer the waiting clients."""
        if msg.seq in self.confirmed:
            return
        pend = self.pending.pop(int(msg.seq), None)
        self.confirmed[int(msg.seq)] = msg
        self.counters["peak_updates"] += 1
        self._send(msg)
        log.info("peak list %d (%s) in force from frame %d: %s", msg.seq, msg.origin, msg.from_frame,
                 ", ".join(f"{v:g}" for v in msg.peaks) or "none (automatic finding)")
        if max(self.confirmed) == msg.seq:
            try:
                write_active_peaks(self.folder, tuple(msg.peaks))
            except OSError as exc:
                log.warning("cannot write %s/active_peaks.txt: %s", self.folder, exc)
        if pend is not None:
            data = {"seq": int(msg.seq), "from_frame": int(msg.from_frame), "peaks": list(msg.peaks),
                    "origin": msg.origin}
            for waiter in pend.waiters:
                self.reply(waiter, ControlReply(ok=True, data=data))

    # ------------------------------------------------------------------------------------------- the loop
    def tick(self, ingest_running: bool) -> None:
        """Every turn of the supervisor's loop: republish, time out waiting clients, look for peak_update.txt."""
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + REPUBLISH_S
        for msg in self.confirmed.values():
            self._send(msg)
        for pend in self.pending.values():
            self._send(pend.request)
            if pend.waiters and now - pend.since > ACK_TIMEOUT_S:
                err = (f"peaks: the ingest did not confirm peak list {pend.request.args['seq']} within "
                       f"{ACK_TIMEOUT_S:g} s; it stays queued and takes effect when it does (ringstream status)")
                for waiter in pend.waiters:
                    self.reply(waiter, ControlReply(ok=False, error=err))
                pend.waiters.clear()
        if ingest_running:
            self.check_file()

    def check_file(self) -> None:
        """Honour MIDAS's ``peak_update.txt`` in the output folder: read it, delete it, apply it."""
        path = self.folder / PEAK_UPDATE_FILE
        if not path.is_file():
            return
        try:
            action, peaks = parse_peak_update(path)
            new = apply_action(self.current, action, peaks)
            check_list(new, self.slots, what=str(path))
        except InputError as exc:
            self.counters["peak_update_file_rejected"] += 1
            log.error("%s; ignored", exc)
            new = None
        try:
            path.unlink()
        except OSError as exc:
            log.warning("cannot delete %s (%s)", path, exc)
        if new is not None:
            self.issue(new, 0, PEAK_UPDATE_FILE)

    def _send(self, msg) -> None:
        import zmq

        try:
            self.pub.send_multipart(encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # a full PUB queue drops; the next republish sends it again
            log.debug("peaks PUB: %s", exc)

    def status(self) -> dict:
        """The ``peaks`` block of ``ringstream status``."""
        last = self.confirmed[max(self.confirmed)] if self.confirmed else None
        return {
            "slots": self.slots,
            "seq": int(last.seq) if last else 0,
            "from_frame": int(last.from_frame) if last else 0,
            "peaks": list(last.peaks) if last else list(self.initial),
            "pending": sorted(self.pending),
            **self.counters,
        }

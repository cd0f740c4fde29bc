"""The ingest's side of peak-list updates: decide where each change starts and stamp it into every frame.

See :mod:`ringstream.daemon.peaks` for the whole protocol. The same socket carries ``ControlRequest("runs",
{seq, action, name, meta})`` (``ringstream runs start|stop``), handed to the ingest's runs by :meth:`IngestPeaks.poll`. The ingest subscribes to ``transport.peaks_endpoint``;
for each ``ControlRequest("peaks", {seq, peaks, from_frame, origin})`` not seen before it fixes
``from_frame = max(asked, next frame_index)`` and confirms with a ``PeakUpdate`` on its events socket (again when the
request is published again, in case the confirmation was lost). :meth:`IngestPeaks.seq_for` is the
``metadata["peak_seq"]`` of a frame: the highest seq whose from_frame <= its index (0: the parameter file's list).
"""

from __future__ import annotations

import logging

import zmq

from ..fitting.peaklist import peak_list_for_frame
from ..protocol import ControlRequest, PeakUpdate, ProtocolError
from ..transport.sockets import recv_message, send_message

log = logging.getLogger("ringstream.ingest")

class IngestPeaks:
    """Peak-list requests in, confirmations out, seqs onto frames. ``ctx``: the ingest's zmq context;
    ``events``: its PUSH socket to the supervisor (the heartbeats' socket)."""

    def __init__(self, ctx, config, run_id: str, events) -> None:
        self.run_id = run_id
        self.events = events
        self.updates: dict[int, tuple[int, tuple[float, ...]]] = {}  # seq -> (from_frame, peaks)
        self.origins: dict[int, str] = {}
        self.sub = None
        endpoint = config.transport.peaks_endpoint
        if endpoint and endpoint != "auto":
            self.sub = ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.sub.connect(endpoint)
        self.errors = 0
        self.run_requests: set = set()  # seqs of the ``runs`` requests taken (the supervisor may publish them again)

    def poll(self, next_index: int) -> list[dict]:
        """Take every request waiting (never blocks); ``next_index`` is the frame_index the next frame will get.
        Returns the ``runs`` requests (their args: action, name, meta), once each, for the ingest's runs."""
        runs: list[dict] = []
        if self.sub is None:
            return runs
        while True:
            try:
                msg, _ = recv_message(self.sub, zmq.NOBLOCK)
            except zmq.Again:
                return runs
            except ProtocolError:
                self.errors += 1
                continue
            if isinstance(msg, ControlRequest) and msg.command == "runs":
                seq = msg.args.get("seq")
                if seq not in self.run_requests:
                    self.run_requests.add(seq)
                    runs.append(dict(msg.args))
                continue
            if isinstance(msg, PeakUpdate):  # confirmed (for the workers and the writer); one this ingest has not
                if int(msg.seq) not in self.updates:  # seen was confirmed by an ingest that died: still in force
                    self.updates[int(msg.seq)] = (int(msg.from_frame), tuple(float(v) for v in msg.peaks))
                    self.origins[int(msg.seq)] = str(msg.origin)
                continue
            if not isinstance(msg, ControlRequest) or msg.command != "peaks":
                continue
            try:
                seq = int(msg.args["seq"])
                peaks = tuple(float(v) for v in msg.args.get("peaks") or ())
                asked = int(msg.args.get("from_frame") or 0)
                origin = str(msg.args.get("origin") or "control")
            except (KeyError, TypeError, ValueError):
                self.errors += 1
                continue
            if seq not in self.updates:
                self.updates[seq] = (max(asked, int(next_index)), peaks)
                self.origins[seq] = origin
                log.info("peak list %d in force from frame %d", seq, self.updates[seq][0])
            start, peaks = self.updates[seq]
            update = PeakUpdate(run_id=self.run_id, seq=seq, from_frame=start, peaks=list(peaks),
                                origin=self.origins[seq])
            try:
                send_message(self.events, update, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # the supervisor publishes the request again until it is confirmed

    def seq_for(self, frame_index: int) -> int:
        """The peak-list seq in force for ``frame_index``."""
        return peak_list_for_frame(self.updates, frame_index) if self.updates else 0

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close(0)

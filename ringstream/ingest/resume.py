"""A replacement ingest goes on where the dead one stopped (docs/DAEMON.md, "Delivery").

The supervisor ends every worker with a dead ingest (they hold frames of its ring), publishes their ``WorkerGone``
and starts a new ingest with ``resume=True``. That ingest, once a worker has given credit:

1. reads the journal (:mod:`.journal`): the next ``frame_index``, the run the dead ingest had open, every frame it
   announced with its run and source id;
2. asks the writer which of those frames it does not hold (:class:`~ringstream.protocol.ResumeQuery`, naming the
   ended workers' pids: the writer answers once it ignores them) and waits for the
   :class:`~ringstream.protocol.Missing` answer (the query goes out again every ``QUERY_PERIOD_S``);
3. makes each missing frame again from its source id (a source that declares ``resumable``: the folder source
   reads it from its file, the simulated source computes it) and announces it with its original index and run;
   a frame that cannot be made again (a live source's, a file gone meanwhile) is written as rejected, with the
   reason :data:`LOST_REASON`, and counted ``dropped_ingest_restart``, so the writer does not wait for it;
4. resumes the run (:meth:`~.runs.RunSplitter.resume`) and tells a resumable source how many frames were
   announced and the last of each file, so that it goes on after them; a live source goes on with its new frames.

The frames the writer holds are acknowledged in the journal (:meth:`~.journal.Journal.acknowledged`), so that its
next compaction drops them; a frame made again is acknowledged when the writer has it, a lost one when the writer
has its rejected Result.

When the dead ingest had already sent the stream's last EndOfStream, the replacement sends it again (the writer
ignores a second one) and takes no frame from the source.
"""

from __future__ import annotations

import logging
import threading
import time

from ..protocol import EndOfStream, Result, ResumeQuery
from ..transport.sockets import send_message
from .journal import Announced, JournalState

log = logging.getLogger("ringstream.ingest")

#: how often the query goes out again while the writer has not answered, in s
QUERY_PERIOD_S = 1.0

#: the reason written for a frame the replacement ingest could not make again
LOST_REASON = "lost: a process restarted and the source cannot send this frame again"


def resume_from(ingest, state: JournalState) -> bool:
    """Go on from ``state`` (the dead ingest's journal) in ``ingest`` (the process's :class:`_Ingest`, its sockets
    up and a worker connected). Returns True when the dead ingest had ended the stream (nothing more to take from
    the source)."""
    counters = ingest.counters
    restarts = state.restarts + 1
    ingest.journal.resumed()
    counters["ingest_restarts"] = restarts
    counters["received"] = counters["sent"] = state.next_index
    ingest.runs.resume(state.run_id, state.run_start, state.next_index, state.run_open)
    source = ingest.source
    resumable = bool(source.resumable)
    if resumable:
        source.resume(state.last_ids(), state.next_index)
    end = state.next_index
    if state.final:
        end = min(end, state.final_eos[1] + state.final_eos[2])
    first = min(state.frames, default=end)
    missing = _ask_writer(ingest, ResumeQuery(run_id=state.run_id, first_frame=first, end=end,
                                              pids=ingest.gone_pids))
    lacking = set(missing)
    for idx in [i for i in ingest.journal.state.frames if i not in lacking]:
        ingest.journal.acknowledged(idx)  # the writer holds it: its line goes at the next compaction
    log.warning("resuming after an ingest that died (restart %d): %d frames announced, %d of them missing at the "
                "writer; run %s %s", restarts, state.next_index, len(missing), state.run_id or "-",
                "ended" if not state.run_open else "goes on")
    send_again(ingest, missing, state.frames, Announced(state.run_id, state.run_start, ""))
    if state.final:
        run_id, first_frame, n = state.final_eos
        ingest.send_eos(EndOfStream(run_id=run_id, first_frame=first_frame, n_frames=n, final=True,
                                    reason="end of stream (sent again after an ingest restart)"))
    return state.final


def send_again(ingest, missing, announced: dict, default: Announced, counter: str = "dropped_ingest_restart") -> None:
    """Make each frame of ``missing`` again from its source id (``announced``: frame_index -> :class:`Announced`,
    ``default`` for a frame not in it) and announce it with its original index and run; one the source cannot make
    again is written as rejected (:data:`LOST_REASON`) and counted under ``counter``."""
    source = ingest.source
    never = threading.Event()  # the frames the writer waits for go out even while the daemon drains
    for idx in missing:
        known = announced.get(idx, default)
        frame = source.frame_again(known.source_id) if source.resumable and known.source_id else None
        again = {"frame_index": idx, "run_id": known.run_id, "run_start": known.run_start}
        if frame is None or not ingest.publish(frame, True, never, again):
            _lost(ingest, idx, known.run_id, known.source_id, counter)


def after_writer_restart(ingest, below: int, told: list[int], unflushed: dict) -> None:
    """A replacement writer reopened its files at ``below`` and the workers ``told`` send it again what they kept:
    the frames the dead writer had acknowledged and not flushed (``unflushed``: frame_index -> :class:`Announced`)
    that the writer still lacks once they have (their worker died too) are made again from the source, or written
    as lost (docs/DAEMON.md, "Delivery")."""
    asked = {i: a for i, a in unflushed.items() if i >= below}
    if not asked:
        return
    ingest.dispatch.missing = None
    missing = [i for i in _ask_writer(ingest, ResumeQuery(first_frame=min(asked), end=max(asked) + 1, resent=told))
               if i in asked]
    if missing:
        log.warning("a new writer lacks %d frames the writer before it had acknowledged (their worker died too): "
                    "%s", len(missing), "made again from the source" if ingest.source.resumable else
                    "written as lost (the source cannot send them again)")
    send_again(ingest, missing, asked, Announced("", 0, ""), "dropped_writer_restart")


def _ask_writer(ingest, query: ResumeQuery) -> list[int]:
    """Send ``query`` to the writer until it answers; the frames it lacks (none, with a warning, when it has not
    answered within ``supervisor.drain_timeout``)."""
    dispatch = ingest.dispatch
    deadline = time.monotonic() + float(ingest.config.supervisor.drain_timeout)
    next_query = 0.0
    while dispatch.missing is None:
        now = time.monotonic()
        if now >= deadline:
            log.warning("the writer did not say which frames it lacks; going on without sending any again")
            return []
        if now >= next_query:
            send_message(ingest.eos, query)
            next_query = now + QUERY_PERIOD_S
        dispatch.poll(50)
        ingest.hb.beat(ingest.snapshot)
        ingest.poll_requests()  # the peak lists in force (republished by the supervisor) before frames go out
    return sorted(int(i) for i in dispatch.missing.frames if query.first_frame <= int(i) < query.end)


def _lost(ingest, idx: int, run_id: str, source_id: str, counter: str) -> None:
    """Frame ``idx`` cannot be made again: the writer writes it as rejected (:data:`LOST_REASON`); counted."""
    ingest.count(counter)
    send_message(ingest.eos, Result(run_id=run_id, frame_index=idx, source_id=source_id, status="rejected",
                                    reason=LOST_REASON))

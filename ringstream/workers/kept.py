"""What a worker keeps for a replacement writer: every Result and partial omega sum it sent, until the writer says
their frames are in its files for good (:class:`~ringstream.protocol.Flushed`).

A writer killed between two flushes loses what it had received since the last one; its replacement reopens the
runs' files where they were flushed and announces where that is (``Flushed(restart=True, below=W)``): every worker
then sends again what it kept from frame W on, in frame order, and the writer keeps each frame once. A frame's Result
is kept until its frame is below the watermark; a partial sum until every frame in it is.

Kept messages cost memory (``limit_bytes``, ``[transport] kept_results_mb``): past the limit the worker owes the
ingest the credit of the frames it finishes instead of giving it (:meth:`KeptResults.credit_now`), so the ingest
sends it nothing new until the writer's next flush frees some; the writer catches up, or the source waits. Should the
watermark not move for ``STALL_S`` seconds while credit is owed (one omega-sum group larger than what the workers
may keep: the writer cannot flush it before more of its frames come), credit is given again until the watermark
moves, with a warning and ``kept_over_limit`` counted: a stream never stops for want of memory to keep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("ringstream.worker")

#: seconds the watermark may stand still while credit is owed before the credit is given anyway
STALL_S = 5.0


@dataclass(slots=True)
class _Kept:
    last_frame: int  # the message is needed until this frame is below the watermark
    msg: object
    buffers: tuple
    nbytes: int


class KeptResults:
    """The messages a worker sent to the writer and keeps (see the module docstring). ``limit_bytes``: the memory
    they may take before the credit is owed; ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(self, limit_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, int(limit_bytes))
        self.clock = clock
        self.items: list[_Kept] = []
        self.bytes = 0
        self.below = 0  # the writer's last watermark
        self.writer_pid = 0  # the writer process that sent it
        self.owed = 0  # credit not given yet (over the limit)
        self.owed_since = 0.0
        self.stalled = False  # over the limit with the watermark standing still: credit given anyway
        self.counters = {"kept_resent": 0, "kept_over_limit": 0}

    def __len__(self) -> int:
        return len(self.items)

    def keep(self, last_frame: int, msg, buffers=()) -> None:
        """``msg`` (with ``buffers``, which the sender no longer writes to) was sent; its frames end at
        ``last_frame``."""
        if last_frame < self.below:  # (a frame the writer already has for good: re-integrated after a death)
            return
        buffers = tuple(buffers)
        n = 256 + sum(memoryview(b).nbytes for b in buffers)
        self.items.append(_Kept(int(last_frame), msg, buffers, n))
        self.bytes += n

    def flushed(self, below: int, writer_pid: int) -> None:
        """The writer (process ``writer_pid``) has every frame below ``below`` for good: forget what is below."""
        below, writer_pid = int(below), int(writer_pid)
        if writer_pid == self.writer_pid and below <= self.below:
            return
        self.below, self.writer_pid = below, writer_pid
        if any(k.last_frame < below for k in self.items):
            self.items = [k for k in self.items if k.last_frame >= below]
            self.bytes = sum(k.nbytes for k in self.items)
        self.stalled = False
        if self.owed:
            self.owed_since = self.clock()  # the watermark moved: a stall is counted from here

    def to_resend(self, below: int) -> list[tuple[object, tuple]]:
        """What a replacement writer that reopened its files at ``below`` gets again, in frame order."""
        self.below = max(self.below, int(below))
        self.items = sorted((k for k in self.items if k.last_frame >= self.below), key=lambda k: k.last_frame)
        self.bytes = sum(k.nbytes for k in self.items)
        self.counters["kept_resent"] += len(self.items)
        return [(k.msg, k.buffers) for k in self.items]

    def credit_now(self, n: int) -> int:
        """The credit of ``n`` frames just finished plus any owed, to give now (0: owed, while over the limit)."""
        self.owed += int(n)
        if not self.owed:
            return 0
        if self.bytes > self.limit and not self.stalled:
            if not self.owed_since:
                self.owed_since = self.clock()
            if self.clock() - self.owed_since < STALL_S:
                return 0
            self.stalled = True
            self.counters["kept_over_limit"] += 1
            log.warning("the kept results (%.0f MB, %d messages) passed [transport] kept_results_mb (%.0f) and the "
                        "writer has flushed nothing for %.0f s: taking frames anyway (a writer killed now loses "
                        "what is past its last flush)", self.bytes / 1e6, len(self.items), self.limit / 1e6, STALL_S)
        n, self.owed, self.owed_since = self.owed, 0, 0.0
        return n

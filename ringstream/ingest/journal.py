"""The ingest's journal: what it announced, so that a replacement ingest knows where the dead one stood.

A file ``ingest-journal.tsv`` in the runs' state directory (:func:`~ringstream.runs.state.state_dir_of`), one
tab-separated line per event, each written by one ``os.write`` on an ``O_APPEND`` descriptor *before* the message it
describes leaves the process: a process that dies (``kill -9``) loses no line it wrote. There is no fsync: the
journal serves a replacement ingest within one daemon, not a power loss (the next daemon start repairs the runs and
begins a new journal; a daemon never resumes another daemon's run). The lines:

- ``F frame_index run_id run_start source_id``: a frame is about to be announced (a frame dropped on its way out
  gives its index to the next frame: an index journaled twice counts with its last line);
- ``E run_id first_frame n_frames final``: a run's EndOfStream is about to be sent (``final`` 1: the stream ends);
- ``R``: a replacement ingest resumed here (their number is the daemon's ``ingest_restarts``).

A source id with a tab, a newline or a backslash is written with backslash escapes. The journal grows by one line
(some 50 bytes) per frame over the daemon's life.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.state import state_dir_of

JOURNAL_NAME = "ingest-journal.tsv"

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPED = re.compile(r"\\[\\tnr]")


def journal_path(run_cfg) -> Path:
    """The journal of the daemon whose ``[run]`` section is ``run_cfg``."""
    return state_dir_of(run_cfg) / JOURNAL_NAME


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text) if any(c in text for c in _ESCAPES) else text


def _unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group(0)], text) if "\\" in text else text


class Journal:
    """The journal file open for appending; ``fresh``: start a new one (a daemon's first ingest), else continue."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        self.fd = os.open(self.path, flags, 0o644)

    def _line(self, *fields) -> None:
        os.write(self.fd, ("\t".join(str(f) for f in fields) + "\n").encode())

    def frame(self, frame_index: int, run_id: str, run_start: int, source_id: str) -> None:
        self._line("F", int(frame_index), _escape(run_id), int(run_start), _escape(source_id))

    def end(self, run_id: str, first_frame: int, n_frames: int, final: bool) -> None:
        self._line("E", _escape(run_id), int(first_frame), int(n_frames), int(bool(final)))

    def resumed(self) -> None:
        self._line("R")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Announced:
    """A frame the journal says was announced: its run and its source id."""

    run_id: str
    run_start: int
    source_id: str


@dataclass
class JournalState:
    """What a journal says (:func:`read_journal`). ``frames``: frame_index -> :class:`Announced`; ``next_index``:
    the first index never announced; ``run_id`` / ``run_start``: the last run a frame was announced in, and
    ``run_open`` whether its EndOfStream was not sent; ``final``: the stream's last EndOfStream was sent (then
    ``final_eos`` = (run_id, first_frame, n_frames)); ``restarts``: the replacement ingests before this one."""

    frames: dict[int, Announced] = field(default_factory=dict)
    next_index: int = 0
    run_id: str = ""
    run_start: int = 0
    run_open: bool = False
    final: bool = False
    final_eos: tuple[str, int, int] = ("", 0, 0)
    restarts: int = 0

    def source_ids(self) -> list[str]:
        """The source ids announced, in frame_index order."""
        return [self.frames[i].source_id for i in sorted(self.frames)]


def read_journal(path: Path) -> JournalState:
    """The state the journal at ``path`` records (an empty state when there is none). A last line without its
    newline (never written whole) is ignored."""
    state = JournalState()
    try:
        text = Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return state
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is incomplete (or empty)
        parts = line.split("\t")
        kind = parts[0]
        if kind == "F" and len(parts) == 5:
            idx, run_id, run_start = int(parts[1]), _unescape(parts[2]), int(parts[3])
            state.frames[idx] = Announced(run_id, run_start, _unescape(parts[4]))
            state.next_index = max(state.next_index, idx + 1)
            state.run_id, state.run_start, state.run_open = run_id, run_start, True
        elif kind == "E" and len(parts) == 5:
            run_id = _unescape(parts[1])
            if run_id == state.run_id:
                state.run_open = False
            if parts[4] == "1":
                state.final = True
                state.final_eos = (run_id, int(parts[2]), int(parts[3]))
        elif kind == "R":
            state.restarts += 1
    return state

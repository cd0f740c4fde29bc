"""The ingest's journal: what it announced, so that a replacement ingest knows where the dead one stood.

A file ``ingest-journal.tsv`` in the runs' state directory (:func:`~ringstream.runs.state.state_dir_of`), one
tab-separated line per event, each written by one ``os.write`` on an ``O_APPEND`` descriptor *before* the message it
describes leaves the process: a process that dies (``kill -9``) loses no line it wrote. There is no fsync: the
journal serves a replacement ingest within one daemon, not a power loss (the next daemon start repairs the runs and
begins a new journal; a daemon never resumes another daemon's run). The lines:

- ``F frame_index run_id run_start source_id``: a frame is about to be announced (a frame dropped on its way out
  gives its index to the next frame: an index journaled twice counts with its last line);
- ``E run_id first_frame n_frames final``: a run's EndOfStream is about to be sent (``final`` 1: the stream ends);
- ``R``: a replacement ingest resumed here (their number is the daemon's ``ingest_restarts``);
- ``L source_id``: the last frame of a file (:func:`~.source_base.split_frame_id`) whose F lines a compaction
  dropped, for a resumable source to go on after it;
- ``S next_index run_id run_start run_open final final_run final_first final_n restarts``: a checkpoint, the state
  of the stream (what the F, E and R lines before it said), which replaces what the lines before it said of it.

The journal is bounded: when the next line would take it past :data:`COMPACT_BYTES`, the ingest writes a compacted
journal to ``ingest-journal.tsv.tmp`` beside it and ``os.replace`` s it over the old one, then appends to the new
one. A compacted journal holds what a replacement needs and nothing else: the L lines of a resumable source, the F
lines of the frames the writer has not acknowledged (:meth:`Journal.acknowledged`: a frame the writer holds is never
asked about again), the E lines of the ended runs with such a frame, and the S line. Read, it gives the same
:func:`read_journal` answer as the whole journal would, but for the frames acknowledged. A ``kill -9`` at any moment
leaves a readable journal: the old one before the replace (a ``.tmp`` left behind is ignored and overwritten), the
new one after it. The journal stays under :data:`COMPACT_BYTES` (some 1 ms to compact, every ~20 000 frames), unless
what a compaction keeps takes half of it: the unacknowledged frames are at most the frames in flight, but a folder
source keeps one L line per file it read (one per frame for single-image files: some 30 bytes, against the image
file's own size; the source's memory keeps one entry per file too); the journal is then compacted at twice the size
the last compaction left.

A source id with a tab, a newline or a backslash is written with backslash escapes.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.state import state_dir_of
from .source_base import split_frame_id

log = logging.getLogger("ringstream.ingest")

JOURNAL_NAME = "ingest-journal.tsv"

#: the size past which the journal is compacted, in bytes (some 20 000 frame lines)
COMPACT_BYTES = 1 << 20

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


@dataclass
class Announced:
    """A frame the journal says was announced: its run and its source id."""

    run_id: str
    run_start: int
    source_id: str


@dataclass
class JournalState:
    """What a journal says (:func:`read_journal`). ``frames``: frame_index -> :class:`Announced` (in a compacted
    journal: those unacknowledged at the last compaction, and every one since); ``next_index``: the first index
    never announced; ``run_id`` / ``run_start``: the last run a frame was announced in, and ``run_open`` whether
    its EndOfStream was not sent; ``final``: the stream's last EndOfStream was sent (then ``final_eos`` = (run_id,
    first_frame, n_frames)); ``restarts``: the replacement ingests before this one; ``ended``: run_id ->
    (first_frame, n_frames, final) of the runs whose EndOfStream was sent (in a compacted journal: those with an
    unacknowledged frame); ``last``: file (stem of the source id) -> (frame, source id) of the last frame of it
    whose line a compaction dropped (:meth:`last_ids` adds those of ``frames``)."""

    frames: dict[int, Announced] = field(default_factory=dict)
    next_index: int = 0
    run_id: str = ""
    run_start: int = 0
    run_open: bool = False
    final: bool = False
    final_eos: tuple[str, int, int] = ("", 0, 0)
    restarts: int = 0
    ended: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    last: dict[str, tuple[int, str]] = field(default_factory=dict)

    def last_ids(self) -> list[str]:
        """The source id of the last frame announced of each file, in file order: a resumable source goes on
        after them (:meth:`~.source_base.Source` ``resume``)."""
        last = dict(self.last)
        for a in self.frames.values():
            _fold(last, a.source_id)
        return [sid for _, (_, sid) in sorted(last.items())]

    def announce(self, idx: int, run_id: str, run_start: int, source_id: str) -> None:
        """An F line on top of this state."""
        self.frames[idx] = Announced(run_id, run_start, source_id)
        if idx >= self.next_index:
            self.next_index = idx + 1
        self.run_id, self.run_start, self.run_open = run_id, run_start, True

    def apply(self, parts: list[str], files: bool = True) -> None:
        """One journal line (its tab-separated fields, unescaped here) on top of this state; a line of an unknown
        kind or the wrong number of fields is ignored. ``files``: keep :attr:`last`."""
        kind, n = parts[0], len(parts)
        if kind == "F" and n == 5:
            self.announce(int(parts[1]), _unescape(parts[2]), int(parts[3]), _unescape(parts[4]))
        elif kind == "E" and n == 5:
            run_id, first, n_frames, final = _unescape(parts[1]), int(parts[2]), int(parts[3]), parts[4] == "1"
            self.ended[run_id] = (first, n_frames, final)
            if run_id == self.run_id:
                self.run_open = False
            if final:
                self.final, self.final_eos = True, (run_id, first, n_frames)
        elif kind == "R" and n == 1:
            self.restarts += 1
        elif kind == "L" and n == 2 and files:
            _fold(self.last, _unescape(parts[1]))
        elif kind == "S" and n == 10:
            self.next_index, self.run_id, self.run_start = int(parts[1]), _unescape(parts[2]), int(parts[3])
            self.run_open, self.final = parts[4] == "1", parts[5] == "1"
            self.final_eos = (_unescape(parts[6]), int(parts[7]), int(parts[8]))
            self.restarts = int(parts[9])

    def checkpoint(self, files: bool) -> list[tuple]:
        """The lines of a compacted journal that says what this state says (see the module docstring)."""
        lines: list[tuple] = [("L", _escape(sid)) for _, (_, sid) in sorted(self.last.items())] if files else []
        indices = sorted(self.frames)
        for idx in indices:
            a = self.frames[idx]
            lines.append(("F", idx, _escape(a.run_id), a.run_start, _escape(a.source_id)))
        for run_id, (first, n, final) in self.ended.items():
            if _any_between(indices, first, first + n):
                lines.append(("E", _escape(run_id), first, n, int(final)))
        final_run, final_first, final_n = self.final_eos
        lines.append(("S", self.next_index, _escape(self.run_id), self.run_start, int(self.run_open),
                      int(self.final), _escape(final_run), final_first, final_n, self.restarts))
        return lines


def _fold(last: dict[str, tuple[int, str]], source_id: str) -> None:
    """``source_id`` into ``last`` (file -> (frame, source id) of its last frame)."""
    stem, k = split_frame_id(source_id)
    got = last.get(stem)
    if got is None or k >= got[0]:
        last[stem] = (k, source_id)


def _any_between(ordered: list[int], lo: int, hi: int) -> bool:
    """Whether the sorted list ``ordered`` holds a value in ``lo .. hi - 1``."""
    i = bisect.bisect_left(ordered, lo)
    return i < len(ordered) and ordered[i] < hi


def _text(*fields) -> bytes:
    return ("\t".join(str(f) for f in fields) + "\n").encode()


class Journal:
    """The journal file open for appending; ``fresh``: start a new one (a daemon's first ingest), else continue
    (a replacement). ``files``: the source is resumable, so the journal keeps the last frame of each file (L lines).
    ``bound``: the size past which it is compacted, bytes.

    :attr:`state` is what a compacted journal would say now: the lines written, less the frames the writer has
    acknowledged (and the ended runs with none left)."""

    def __init__(self, path: Path, fresh: bool, files: bool = True, bound: int = COMPACT_BYTES) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.files, self.bound = bool(files), int(bound)
        self.state = JournalState() if fresh else read_journal(self.path, files=self.files)
        if fresh:
            self.tmp.unlink(missing_ok=True)  # an earlier daemon's compaction cut short
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        self.fd = os.open(self.path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.limit = self.bound  # compact when a line would take the file past this
        self.compactions = 0

    def _write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            self.compact()
        os.write(self.fd, data)
        self.size += len(data)

    def _line(self, *fields) -> None:
        self._write(_text(*fields))
        self.state.apply([str(f) for f in fields], self.files)

    def frame(self, frame_index: int, run_id: str, run_start: int, source_id: str) -> None:
        idx, run_start = int(frame_index), int(run_start)
        self._write(_text("F", idx, _escape(run_id), run_start, _escape(source_id)))
        self.state.announce(idx, run_id, run_start, source_id)  # (the hot path: not parsed back from the line)

    def end(self, run_id: str, first_frame: int, n_frames: int, final: bool) -> None:
        self._line("E", _escape(run_id), int(first_frame), int(n_frames), int(bool(final)))

    def resumed(self) -> None:
        self._line("R")

    def acknowledged(self, frame_index: int) -> None:
        """The writer holds frame ``frame_index``: a replacement never needs to ask about it (its line goes at the
        next compaction; a resumable source's file keeps its last frame)."""
        got = self.state.frames.pop(int(frame_index), None)
        if got is not None and self.files:
            _fold(self.state.last, got.source_id)

    def compact(self) -> None:
        """Replace the journal by one that holds only what :attr:`state` says (the module docstring); on failure
        (a full disk) the old one goes on growing, with a warning, until the next try at twice its size."""
        data = b"".join(_text(*line) for line in self.state.checkpoint(self.files))
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)  # atomic: a reader finds the old journal or the new one, whole
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            log.warning("%s: cannot compact the journal (%s); it goes on growing", self.path, exc)
            self.limit = 2 * max(self.size, self.bound)
            return
        os.close(self.fd)
        self.fd, self.size = new, len(data)
        self.limit = max(self.bound, 2 * self.size)  # a compacted journal near the bound is not compacted again
        self.compactions += 1
        indices = sorted(self.state.frames)
        self.state.ended = {r: e for r, e in self.state.ended.items() if _any_between(indices, e[0], e[0] + e[1])}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_journal(path: Path, files: bool = True) -> JournalState:
    """The state the journal at ``path`` records (an empty state when there is none). A last line without its
    newline (never written whole) is ignored. ``files``: keep the last frame of each file."""
    state = JournalState()
    try:
        text = Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return state
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is incomplete (or empty)
        state.apply(line.split("\t"), files)
    return state

"""The index of runs: ``runs.jsonl`` in the state directory, one JSON object per line and per event.

A record: ``{"run": N, "status": "open" | "complete" | "interrupted" | "failed", "name", "run_id", "files":
{"h5", "zarr", "midas_dir"}, "first_frame_time", "last_frame_time" (s since the epoch), "frames", "counters":
{...}, "reason", "time"}`` (``time``: when the record was written, ISO 8601 UTC). Only ``run``, ``status`` and
``time`` are always there; a later record of the same run adds or replaces fields (:meth:`RunIndex.runs`).

Each record is one ``os.write`` of the whole line to a file opened with ``O_APPEND``, under an ``flock``, then
fsync: a reader (``ringstream runs list``, ``tail -f``) sees whole lines, except perhaps a torn last line after a
crash, which it skips. The next append starts on a new line.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from .naming import OutputFolderError

log = logging.getLogger(__name__)

__all__ = ["INDEX_FILE", "STATUSES", "RunIndex"]

INDEX_FILE = "runs.jsonl"
#: a run is "open" from its first frame until it ends; then "complete", "failed" (an output could not be
#: written) or "interrupted" (the service stopped before closing it: marked at the next start)
STATUSES = ("open", "complete", "interrupted", "failed")


class RunIndex:
    """The index file ``path`` (see the module docstring); :meth:`in_state_dir` for the default place."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike) -> RunIndex:
        """The index ``<state_dir>/runs.jsonl``."""
        return cls(Path(state_dir) / INDEX_FILE)

    def __repr__(self) -> str:
        return f"RunIndex({str(self.path)!r})"

    def append(self, run: int, status: str, **fields: Any) -> dict[str, Any]:
        """Append one record of run ``run`` with ``status`` and ``fields`` (JSON-serialisable; anything else is
        written as its text) and return it. ValueError for an unknown status."""
        if status not in STATUSES:
            raise ValueError(f"run status {status!r}: expected one of {', '.join(STATUSES)}")
        record = {"run": int(run), "status": status, **fields,
                  "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
        line = json.dumps(record, default=str, separators=(", ", ": ")).encode() + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputFolderError(f"{self.path}: cannot open the index of runs ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line (a crash mid-write) stays a line of its own
            written = os.write(fd, line)
            while written < len(line):  # a short write: the rest follows at once, still under the lock
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as exc:
            raise OutputFolderError(f"{self.path}: cannot append to the index of runs ({exc.strerror or exc})") \
                from None
        finally:
            os.close(fd)
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every whole record, in file order. A torn last line is skipped; so is any other line that is not a
        JSON object with a run number (logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: "" or a line still being written
        out = []
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if isinstance(record, dict) and isinstance(record.get("run"), int):
                    out.append(record)
                    continue
            except ValueError:
                pass
            log.warning("%s:%d: not a record of a run, skipped", self.path, n)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """One entry per run, in run-number order: its records merged, later fields replacing earlier ones (the
        last status wins)."""
        merged: dict[int, dict[str, Any]] = {}
        for record in self.records():
            merged.setdefault(record["run"], {}).update(record)
        return [merged[k] for k in sorted(merged)]

    def open_runs(self) -> list[dict[str, Any]]:
        """The runs whose last status is "open": runs a previous service did not close (the next start repairs
        their files and marks them "interrupted")."""
        return [r for r in self.runs() if r.get("status") == "open"]

    def last_run(self) -> int:
        """The highest run number in the index (0: none)."""
        return max((r["run"] for r in self.records()), default=0)

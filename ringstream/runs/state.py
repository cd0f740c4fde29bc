"""The run number: one integer that only grows, kept in the state directory across restarts, crashes and kill -9.

The state directory is ``[run] state_dir`` when set, else ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``;
of a colon-separated list, the last folder), else ``.ringstream`` in the folder of the fixed part of the
``output_h5`` template (:func:`state_dir_of`). It holds ``run_number`` (the last number given, as text),
``run_number.lock``, the index of runs ``runs.jsonl`` (:mod:`.index`) and the ingest's journal
(``ringstream.ingest.journal``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .naming import OutputFolderError, OutputTemplate

__all__ = ["NUMBER_FILE", "RunState", "RunStateError", "state_dir_of"]

NUMBER_FILE = "run_number"
LOCK_FILE = "run_number.lock"


class RunStateError(ConfigError):
    """The run-number file holds something that is not a number: a person has to look (a restart cannot fix it,
    and guessing could give a number twice)."""


def state_dir_of(run_cfg: Any, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory of the ``[run]`` section ``run_cfg`` (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if run_cfg.state_dir:
        return Path(run_cfg.state_dir)
    systemd = [p for p in environ.get("STATE_DIRECTORY", "").split(":") if p]
    if systemd:
        return Path(systemd[-1])
    return OutputTemplate(run_cfg.output_h5, "[run] output_h5").fixed_folder() / ".ringstream"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunState:
    """The run number kept in ``state_dir`` (created when missing).

    :meth:`next_number` reserves a number durably: under an ``flock`` on ``run_number.lock`` it reads the last
    number, writes the next one to a temporary file, fsyncs it and renames it over ``run_number`` (then fsyncs the
    folder), so two processes never get the same number and no number is given twice, even after kill -9 or a
    power loss.
    """

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / NUMBER_FILE

    def __repr__(self) -> str:
        return f"RunState({str(self.dir)!r})"

    def last_number(self) -> int:
        """The last number given (0: none yet)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise RunStateError(f"{self.path}: cannot read the run number ({exc})") from None
        if not text.isdigit():
            raise RunStateError(f"{self.path}: expected the last run number, got {text[:40]!r}; write the highest "
                                "run number of the existing files into it")
        return int(text)

    def next_number(self, above: int = 0) -> int:
        """Reserve and return the next run number: one more than the last given (and than ``above``, e.g. the
        highest number in the index of runs)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputFolderError(f"{self.dir}: state folder cannot be created or written "
                                    f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            number = max(self.last_number(), int(above)) + 1
            self._write(number)
            return number
        finally:
            os.close(fd)  # releases the lock

    def _write(self, number: int) -> None:
        tmp = self.dir / f".{NUMBER_FILE}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{number}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise OutputFolderError(f"{self.path}: cannot record run number {number} ({exc.strerror or exc})") \
                from None

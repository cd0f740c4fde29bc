"""Peak-list changes while running: the ``ringstream peaks set|add|clear`` actions and MIDAS's ``peak_update.txt``.

Pure (no sockets). ``peak_update.txt`` (MIDAS live_viewer protocol, written atomically into the output folder):

    mode replace          (or "mode append"; the line may be left out: replace)
    245.3                 one R (px) per line; blank lines and "#" comments ignored
    347.1

``apply_action`` computes the new list from the current one; ``check_list`` validates it against the run (the rows
per frame are fixed for a run: a list longer than the run's peak slots is refused, never silently cut).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError

ACTIONS = ("set", "add", "remove", "clear")
MIDAS_MODES = {"replace": "set", "append": "add"}


def apply_action(current: tuple[float, ...], action: str, peaks) -> tuple[float, ...]:
    """The peak list after ``action`` ("set": ``peaks``; "add": current + ``peaks``; "remove": current without the
    peak nearest each of ``peaks``; "clear": empty = automatic finding, or no fitting, as the parameter file says),
    sorted by R, duplicates (within 1e-9 px) removed."""
    if action not in ACTIONS:
        raise InputError(f"peaks: unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    values = [] if action == "clear" else [float(v) for v in peaks]
    if action == "remove":
        kept = list(current)
        for v in values:
            if not kept:
                raise InputError(f"peaks remove {v:g}: the peak list is empty")
            kept.pop(min(range(len(kept)), key=lambda i: abs(kept[i] - v)))
        values = kept
    if action == "add":
        values = list(current) + values
    out: list[float] = []
    for v in sorted(values):
        if not out or abs(v - out[-1]) > 1e-9:
            out.append(v)
    return tuple(out)


def check_list(peaks: tuple[float, ...], slots: int, what: str = "peaks") -> None:
    """Raise :class:`InputError` (one line) unless every R is finite and positive and the list fits ``slots``."""
    if slots <= 0:
        raise InputError(f"{what}: peak fitting is off for this run (no DoPeakFit/PeakLocation in the parameter "
                         "file), so fit.bin has no rows to put peaks in; restart with PeakLocation or DoPeakFit 1")
    bad = [v for v in peaks if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InputError(f"{what}: peak location {bad[0]!r} is not a positive radius in px")
    if len(peaks) > slots:
        raise InputError(f"{what}: {len(peaks)} peaks do not fit the run's {slots} rows per frame ([fit] slots; "
                         f"fit.bin rows are fixed for a run); give at most {slots} or restart with a larger "
                         "[fit] slots")


def parse_peak_update(path: str | Path) -> tuple[str, tuple[float, ...]]:
    """(action "set" | "add", peaks) from a MIDAS ``peak_update.txt``; :class:`InputError` naming the file and line
    when a line is neither a mode line nor a number."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    action, peaks = "set", []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0].lower() == "mode":
            mode = words[1].lower() if len(words) > 1 else ""
            if mode not in MIDAS_MODES:
                raise InputError(f"{path}:{n}: mode {mode!r}: expected 'mode replace' or 'mode append'")
            action = MIDAS_MODES[mode]
            continue
        try:
            peaks.append(float(words[0]))
        except ValueError:
            raise InputError(f"{path}:{n}: {line!r}: expected a radius in px or 'mode replace|append'") from None
    return action, tuple(peaks)


def write_active_peaks(folder: str | Path, peaks: tuple[float, ...]) -> Path:
    """Write MIDAS's ``active_peaks.txt`` (one R per line, px) atomically into ``folder``; returns its path."""
    folder = Path(folder)
    path = folder / "active_peaks.txt"
    tmp = folder / ".active_peaks.txt.tmp"
    tmp.write_text("".join(f"{v:.4f}\n" for v in peaks))
    tmp.replace(path)
    return path


def peak_list_for_frame(updates: dict[int, tuple[int, tuple[float, ...]]], frame_index: int) -> int:
    """The seq in force for ``frame_index``: the highest seq among ``updates`` {seq: (from_frame, peaks)} whose
    from_frame <= frame_index; 0 (the parameter file's list) when none."""
    best = 0
    for seq, (start, _) in updates.items():
        if start <= frame_index and seq > best:
            best = seq
    return best

"""The smallest hook between fitting (issue 5) and the writers: fit rows, curves and PeakUpdates, in frame order.

INTERIM: issue 8 owns ``fit.bin``, ``fit_curves.bin``, ``/entry/fit/peaks`` and the recording of PeakUpdates in the
HDF5. Until its writer is merged this hook writes the two MIDAS streams (MIDAS-COMPAT section 6) into the output
folder, so that the daemon and ``ringstream integrate`` produce them and the tests can read them:

- ``fit.bin``: per frame ``[slots, 7]`` float64 rows (``np.fromfile(f).reshape(-1, slots, 7)``);
- ``fit_curves.bin``: per ROI per frame ``int32 frame_index, int32 start_bin, int32 n_points`` then n_points float64;
- PeakUpdates are kept in :attr:`FitHook.updates` (seq order) and passed to the HDF5 writer's ``record_peak_update``
  when it has one (issue 8's).

Both callers hand it exactly what a Result carries (:func:`ringstream.protocol.result_arrays` /
:func:`~ringstream.protocol.result_curves` output), one frame at a time, in frame_index order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("ringstream.writer")


class FitHook:
    """Appends fits to ``folder/fit.bin`` and ``folder/fit_curves.bin`` (created, truncated, at construction)."""

    def __init__(self, folder: str | os.PathLike, slots: int) -> None:
        self.folder = Path(folder)
        self.slots = int(slots)
        self.fit = open(self.folder / "fit.bin", "wb")
        self.curves = open(self.folder / "fit_curves.bin", "wb")
        self.updates: dict[int, object] = {}
        self.frames = 0

    def append(self, frame_index: int, fit: np.ndarray | None, curves=None) -> None:
        """One frame's rows ``[slots, 7]`` (None: a frame with no fit, written as NaN rows so the reshape holds) and
        ``curves`` = (table int32 ``[n_rois, 2]``, values float64 ``[n_curve_points]``) or None."""
        if fit is None or fit.shape != (self.slots, 7):
            fit = np.full((self.slots, 7), np.nan)
        self.fit.write(np.ascontiguousarray(fit, dtype="<f8").tobytes())
        if curves is not None:
            table, values = curves
            at = 0
            for start, n in np.asarray(table).reshape(-1, 2):
                self.curves.write(np.array([frame_index, start, n], dtype="<i4").tobytes())
                self.curves.write(np.ascontiguousarray(values[at:at + n], dtype="<f8").tobytes())
                at += int(n)
        self.frames += 1

    def peak_update(self, msg, h5=None) -> None:
        """Keep a PeakUpdate (once per seq) and hand it to ``h5.record_peak_update`` when the writer has it."""
        if msg.seq in self.updates:
            return
        self.updates[int(msg.seq)] = msg
        record = getattr(h5, "record_peak_update", None)
        if record is not None:
            record(msg)
        log.info("peak list %d (%s) from frame %d: %s", msg.seq, msg.origin, msg.from_frame,
                 ", ".join(f"{v:g}" for v in msg.peaks) or "automatic")

    def flush(self) -> None:
        self.fit.flush()
        self.curves.flush()

    def close(self) -> None:
        for f in (self.fit, self.curves):
            if not f.closed:
                f.close()

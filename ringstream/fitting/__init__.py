"""Per-frame peak fitting of the 1D lineout (docs/MIDAS-FORMATS.md section 6).

The one rule every part of the product shares: how many peak rows each frame has (fit.bin is read with
``np.fromfile(f).reshape(-1, n_peaks, 7)``, so the number is fixed for a run and known before the first frame).
"""

from __future__ import annotations

from ..errors import ConfigError

#: peak rows per frame when peaks are found automatically (DoPeakFit 1 + MultiplePeaks 1, no PeakLocation)
AUTO_SLOTS = 16

#: the seven columns of a peak row, in fit.bin / ``/entry/fit/peaks`` order
FIT_COLUMNS = ("Imax", "BG", "Mu", "Rcen", "Sigma", "GoF", "Area")

#: frames fitted in one call when a GPU worker holds finished batches to fit them together
#: (ringstream/workers/pipeline.py); the auto-sized ring leaves room for it (ringstream/transport/ring_size.py)
FIT_FRAMES = 128


def fitting_enabled(params) -> bool:
    """True when the parameter file asks for peak fitting (PeakLocation implies DoPeakFit)."""
    return bool(params.DoPeakFit or params.PeakLocation)


def peak_slots(params, configured: int = 0) -> int:
    """Peak rows per frame for a run: ``configured`` (``[fit] slots``) when > 0, else ``len(PeakLocation)``, else
    :data:`AUTO_SLOTS` when peaks are found automatically (one peak when ``MultiplePeaks`` is 0), else 0 (no fitting).
    A frame with fewer fitted peaks fills the remaining rows with NaN."""
    if not fitting_enabled(params):
        return 0
    if configured and int(configured) > 0:
        return int(configured)
    if params.PeakLocation:
        return len(params.PeakLocation)
    return AUTO_SLOTS if params.MultiplePeaks else 1


def choose_engine(asked: str, integration_engine: str) -> str:
    """The fit engine for ``[fit] engine = asked`` on a worker whose integration engine is ``integration_engine``:
    ``auto`` is gpu with the GPU integration engine, else nlopt; the offline ``ringstream integrate`` chooses alike."""
    asked = str(asked or "auto").lower()
    if asked == "auto":
        return "gpu" if str(integration_engine).lower().startswith(("gpu", "cupy")) else "nlopt"
    if asked not in ("nlopt", "gpu"):
        raise ConfigError(f"[fit] engine {asked!r}: expected auto, nlopt or gpu")
    return asked

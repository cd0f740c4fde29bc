"""What the integration tests share: a small tilted detector and the way to run the real console script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

NZ = NY = 128

#: a 128 x 128 detector, slightly tilted, beam centre off the pixel grid; format with ny=, nz=
SMALL_PARAMS = """\
NrPixelsY {ny}
NrPixelsZ {nz}
Lsd 1000000
px 200
BC 63.3 61.2
ty 0.3
tz -0.2
RMin 4
RMax 60
RBinSize 1
EtaBinSize 20
Wavelength 0.2
"""


def ringstream_command() -> list[str]:
    """The installed `ringstream` console script of this interpreter's environment (or the module as a fallback)."""
    exe = Path(sys.executable).with_name("ringstream")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ringstream")
    return [found] if found else [sys.executable, "-m", "ringstream.daemon.cli"]


def simulated_reference(params_path, n: int):
    """(lineouts, cakes) of the reference engine over the first ``n`` frames of the simulated source (seed 0, int32)
    for the parameter file ``params_path``: what a daemon run with ``--simulate n`` must write."""
    import numpy as np

    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import load_params

    p = load_params(params_path)
    imap, _ = load_or_build(p)
    source = SimulatedSource(p, n_frames=n, seed=0, dtype="int32", precompute=False)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    return engine.integrate_batch(np.stack([source.make_frame(k) for k in range(n)]))

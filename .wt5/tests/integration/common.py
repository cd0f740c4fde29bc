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

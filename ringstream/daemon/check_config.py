"""``ringstream check-config``: validate a daemon configuration and its parameter file; start nothing.

Loads the configuration exactly as ``ringstream run`` does (defaults < ``--config`` TOML < ``RINGSTREAM_*`` environment
< command line), reads and validates the parameter file with the overrides, computes the map cache key (hashing
the mask / gap / bad-pixel / distortion files, so an unreadable one is found now) and says whether that map is
already cached. It never builds the map, opens a source, binds a socket or spawns a process.

Prints the effective configuration as TOML, each key commented with where its value came from, then the
parameter summary. Exit 0; or one line ``ringstream: error: ...`` on stderr and the error's exit code
(2 configuration / parameter file, 3 an unreadable input file).

Wiring (``ringstream/daemon/cli.py``)::

    from .check_config import add_check_config_parser, check_config
    add_check_config_parser(sub)                 # in build_parser()
    COMMANDS["check-config"] = check_config      # called as check_config(args, extra)
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..config import DaemonConfig, add_config_arguments, config_from_args
from ..errors import RingstreamError

log = logging.getLogger("ringstream.check_config")

__all__ = ["add_check_config_parser", "check_config", "describe_params"]


def add_check_config_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``check-config`` subcommand (the same configuration options as ``run``) to ``subparsers``."""
    p = subparsers.add_parser(
        "check-config", allow_abbrev=False,
        help="validate the daemon configuration and parameter file; start nothing",
        description="Load the configuration as 'ringstream run' would (defaults < --config < RINGSTREAM_<SECTION>_<KEY> "
        "< options), validate the parameter file, compute the map cache key, and print the effective "
        "configuration with the origin of each value. Trailing 'Key Value' tokens override the parameter file.",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    add_config_arguments(p)
    p.add_argument("--cache-dir", metavar="D", help="map cache folder to look in (default $RINGSTREAM_CACHE_DIR, "
                   "else ~/.cache/ringstream/maps)")
    p.add_argument("--json", action="store_true", help="print the configuration as JSON instead of TOML")
    return p


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def describe_params(p) -> list[str]:
    """A few lines summarising Params ``p``: file, detector, geometry, bins, corrections, files, fitting."""
    from ..geometry.bins import eta_edges, radial_edges

    r = radial_edges(p)
    eta = eta_edges(p)
    n_r, n_eta = len(r) - 1, len(eta) - 1
    if p.q_mode:
        radial = (f"Q {p.QMin:g}..{p.QMax:g} 1/A step {p.QBinSize:g} ({n_r} bins, R {r[0]:.6g}..{r[-1]:.6g} px)")
    else:
        radial = f"R {p.RMin:g}..{p.RMax:g} px step {p.RBinSize:g} ({n_r} bins)"
    polarization = _yes(p.PolarizationCorrection)
    if p.PolarizationCorrection:
        polarization += (f" (PolarizationFraction {p.PolarizationFraction:g}, "
                         f"PolarizationAngle {p.PolarizationAngle:g} deg)")
    lines = [
        f"parameter file: {p.source}",
        f"detector: {p.NrPixelsZ} x {p.NrPixelsY} pixels (NrPixelsZ x NrPixelsY), px {p.px:g} um, "
        f"Lsd {p.Lsd:g} um, BC {p.BC[0]:g} {p.BC[1]:g} px, tilts {p.tx:g} {p.ty:g} {p.tz:g} deg, "
        f"Wavelength {p.Wavelength:g} A",
        f"bins: {radial} x eta {p.EtaMin:g}..{p.EtaMax:g} deg step {p.EtaBinSize:g} ({n_eta} bins) "
        f"= {n_r * n_eta} bins",
        f"corrections: solid angle {_yes(p.SolidAngleCorrection)}, polarization {polarization}, "
        f"normalize {_yes(p.Normalize)}, ImTransOpt {list(p.ImTransOpt) or [0]}, write 2D {_yes(p.Write2D)}",
    ]
    files = [f"{k} {getattr(p, k)}" for k in ("MaskFile", "GapFile", "BadPxFile", "DistortionFile", "Dark")
             if getattr(p, k) is not None]
    if files:
        lines.append("files: " + ", ".join(files))
    if p.DoPeakFit:
        where = f" at {', '.join(f'{x:g}' for x in p.PeakLocation)} px" if p.PeakLocation else ""
        lines.append(f"peak fit: yes{where}")
    for key in p.unknown_keys:
        lines.append(f"unknown key (ignored): {key[2]} ({key[0]}:{key[1]})")
    return lines


def _report(config: DaemonConfig, cache_dir: str | None, as_json: bool) -> str:
    from ..geometry.cache import default_cache_dir, map_cache_key

    params = config.load_params()
    for line in params.warnings:
        log.warning("%s", line)
    key = map_cache_key(params)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = folder / f"{key}.npz"
    state = f"cached ({cached})" if cached.is_file() else f"not cached: built at start, saved in {folder}"
    summary = describe_params(params) + [f"map cache key: {key}, {state}"]
    if as_json:
        import json

        return json.dumps({"config": config.to_dict(), "sources": config.describe_sources(),
                           "config_file": config.config_file or None, "params": params.used(),
                           "map_cache_key": key, "map_cached": cached.is_file()}, indent=2, default=str) + "\n"
    out = ["# ringstream check-config: configuration OK (nothing was started)", config.to_toml()]
    out.append("# " + "\n# ".join(summary))
    return "\n".join(out) + "\n"


def check_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> int:
    """Validate and print the effective configuration (see the module docstring); return the exit code."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        config = config_from_args(args, extra)
        text = _report(config, getattr(args, "cache_dir", None), bool(getattr(args, "json", False)))
    except RingstreamError as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"ringstream: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0

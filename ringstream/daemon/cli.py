"""The ``ringstream`` command line.

Subcommands::

    ringstream map --param-file P [--export-midas DIR] [--cache-dir D] [--no-cache] [Key Value ...]
    ringstream integrate --param-file P [--dark D] [--output-h5 OUT.h5] [--import-midas DIR [--force]]
                         [--engine auto|cpu|gpu] [--per-eta [--snip-iterations N]] [--overwrite] IMAGE... [Key Value ...]
    ringstream run --param-file P (--simulate N | --replay PATH | --pva --pva-channel PV [--pva-ip ADDR]
                   | --midas-socket [PORT] [--listen ADDR] | --dectris-stream tcp://DCU:31001) [--rate HZ] [--workers N] [--engine E]
                   [--output-h5 OUT.h5] [--config FILE.toml] [--control ENDPOINT] [Key Value ...]
    ringstream run --param-file P (--folder DIR [--extension EXT] [--recursive] [--count N] [--idle-timeout S]
                   | --file PATH) [the options above]
    ringstream status [--control ENDPOINT] [--json]
    ringstream worker --join tcp://HOST:PORT [--keys-dir DIR] [--engine E] [--gpus LIST]
    ringstream keys generate DIR [--name server|worker]
    ringstream export OUT.h5 [--zarr-zip Z] [--midas-binaries DIR] [--csv DIR] [--overwrite]
    ringstream repair OUT.h5
    ringstream dectris-sim [--bind ENDPOINT] [--stack FILE | --detector NAME] [--codec C] [--images N] [--series K]
                           [--rate HZ] [faults: --drop ID --bad KIND --no-start K --no-end K --disconnect-after K]
    ringstream check-config [the options of run]

Trailing ``Key Value`` or ``--Key Value`` tokens override the parameter file, as in MIDAS's integrator
scripts. For ``integrate``, the images come first: they end at the first token that is a parameter key or
starts with ``--``.

Errors are the interface: any :class:`~ringstream.errors.RingstreamError` is printed as one line
``ringstream: error: <message>`` on stderr and the process exits with the error's documented code (see
``ringstream/errors.py``); ``-v`` adds the traceback and DEBUG logs. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import EXIT_INTERNAL, InputError, RingstreamError
from .control import add_control_argument, control_endpoint

log = logging.getLogger("ringstream.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Frames integrated per engine call in ``integrate``.
BATCH = 16

EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringstream",
        description="Live azimuthal integration of X-ray detector streams, MIDAS-compatible.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="DEBUG logs and tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"ringstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="DEBUG logs and tracebacks on errors")
        p.add_argument("--param-file", required=True, metavar="P", help="MIDAS parameter file")

    m = sub.add_parser(
        "map", allow_abbrev=False,
        help="build (or load from the cache) the integration map and describe it",
        description="Build or load the integration map of a parameter file and print its size, bins, build time "
        "and cache key. Trailing 'Key Value' tokens override the parameter file.",
    )
    common(m)
    m.add_argument("--export-midas", metavar="DIR", help="also write MIDAS v3 Map.bin and nMap.bin into DIR")
    m.add_argument("--cache-dir", metavar="D", help="map cache folder (default $RINGSTREAM_CACHE_DIR, "
                   "else ~/.cache/ringstream/maps)")
    m.add_argument("--no-cache", action="store_true", help="always build; neither read nor write the cache")

    i = sub.add_parser(
        "integrate", allow_abbrev=False,
        help="integrate image files into a NeXus HDF5 file",
        description="Integrate image files (a folder means its images in natural order) and write the HDF5 "
        "results file. Usage: integrate --param-file P [options] IMAGE... [Key Value overrides].",
    )
    common(i)
    i.add_argument("--dark", metavar="D", help="dark frame(s): TIFF/CBF/GE/HDF5/npy (a stack is averaged) or "
                   "MIDAS raw int64 (overrides the Dark key)")
    i.add_argument("--output-h5", metavar="OUT.h5", help="results file (default: first image's stem + "
                   "'_integrated.h5' in the current folder)")
    i.add_argument("--import-midas", metavar="DIR", help="use MIDAS Map.bin/nMap.bin from DIR instead of "
                   "building the map")
    i.add_argument("--force", action="store_true", help="with --import-midas: accept a map whose parameter "
                   "hash does not match (or a legacy map without a header)")
    i.add_argument("--engine", default="auto", choices=("auto", "cpu", "gpu"), help="integration engine")
    i.add_argument("--cache-dir", metavar="D", help="map cache folder")
    i.add_argument("--no-cache", action="store_true", help="always build the map; do not use the cache")
    i.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    i.add_argument("--zarr-output", metavar="Z.zarr.zip", help="GSAS-II zarr.zip (default: the HDF5 name with "
                   ".zarr.zip)")
    i.add_argument("--no-zarr", action="store_true", help="write no zarr.zip")
    from ..config.schema import option_of

    dtype = option_of("output", "cake_dtype")  # (the daemon's [output] cake_dtype)
    i.add_argument("--cake-dtype", default=dtype.default, choices=dtype.choices, help=dtype.help)
    noise = option_of("output", "cake_noise_fraction")
    i.add_argument("--cake-noise-fraction", type=_noise_fraction, default=noise.default, metavar="F",
                   help=noise.describe())
    i.add_argument("--midas-binaries", metavar="DIR", help="also write MIDAS lineout.bin, Int2D.bin and "
                   "RTthEtaAreaMap.bin into DIR (and NAME_caked_peaks.h5 with --per-eta)")
    per_eta, snip_it = option_of("fit", "per_eta"), option_of("fit", "snip_iterations")  # (the daemon's [fit] keys)
    i.add_argument("--per-eta", action="store_true", default=None, help=per_eta.help)
    i.add_argument("--snip-iterations", type=int, default=None, metavar="N", help=snip_it.help)

    r = sub.add_parser(
        "run", allow_abbrev=False,
        help="run the streaming daemon: source -> workers -> HDF5 (docs/DAEMON.md)",
        description="Start the supervisor, the ingest, the workers and the writer; stop at the end of the source, "
        "on SIGTERM/SIGINT/SIGHUP (first: drain, second: stop now) or on 'ringstream status'-side 'stop'. "
        "Trailing 'Key Value' tokens override the parameter file. Exit: 0 ok, 2 configuration, 3 input, 4 map, "
        "5 a child process failed, 129/130/143 interrupted twice.",
    )
    r.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    _add_run_arguments(r)

    s = sub.add_parser(
        "status", allow_abbrev=False,
        help="ask a running daemon how it is doing (exit 0 healthy, 1 otherwise)",
        description="Query the control socket of a running daemon. Exit 0 when it runs (or drains) and every "
        "child is alive; 1 otherwise, or when no daemon answers.",
    )
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    add_control_argument(s)
    s.add_argument("--json", action="store_true", help="print the whole status as JSON")
    s.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for an answer")

    x = sub.add_parser(
        "export", allow_abbrev=False,
        help="regenerate the zarr.zip, MIDAS binaries or CSV files from a results HDF5 file",
        description="Regenerate the other products from the HDF5 file, the record of truth.",
    )
    x.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="DEBUG logs and tracebacks on errors")
    x.add_argument("h5", metavar="OUT.h5", help="ringstream results file")
    x.add_argument("--zarr-zip", metavar="Z.zarr.zip", help="write the GSAS-II zarr.zip")
    x.add_argument("--midas-binaries", metavar="DIR", help="write lineout.bin, Int2D.bin, RTthEtaAreaMap.bin, "
                   "fit.bin, fit_curves.bin into DIR")
    x.add_argument("--csv", metavar="DIR", help="write lineouts.csv, radial_axis.csv (and peaks.csv) into DIR")
    x.add_argument("--overwrite", action="store_true", help="replace existing output files")

    rp = sub.add_parser(
        "repair", allow_abbrev=False,
        help="make a results file a killed writer left readable (clears the SWMR status flag, cuts partial rows)",
        description="Clear the HDF5 status flags a killed writer left and cut every per-frame dataset to the "
        "frames that were complete; cut the zarr.zip to its last published ZIP; prints what it found.",
    )
    rp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                    help="DEBUG logs and tracebacks on errors")
    rp.add_argument("h5", metavar="OUT.h5", help="ringstream results file")
    rp.add_argument("--zarr-output", metavar="Z", help="its zarr.zip, whose unfinished publication is cut "
                    "(default: OUT.zarr.zip beside it, when it exists)")

    from ..ingest.dectris_sim import build_parser as build_sim_parser

    ds = sub.add_parser(
        "dectris-sim", allow_abbrev=False,
        help="a DECTRIS Stream V2 detector simulator: series of images from a stack or built-in rings, compressed "
        "as the detector does, on a ZeroMQ PUSH socket",
        description="Serve series of Stream V2 messages (start, images, end) on a ZeroMQ PUSH socket, as an "
        "EIGER2 / PILATUS4 DCU does; faults on request (dropped images, bad messages, a disconnect).",
    )
    ds.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                    help="DEBUG logs and tracebacks on errors")
    build_sim_parser(ds)

    try:
        from .check_config import add_check_config_parser
    except ImportError:  # pragma: no cover - the check-config module is part of the package
        add_check_config_parser = None
    if add_check_config_parser is not None:
        add_check_config_parser(sub)
    from .join import add_keys_parser, add_worker_parser
    from .peaks_cli import add_peaks_parser
    from .runs_cli import add_runs_parser

    add_peaks_parser(sub)
    add_runs_parser(sub)
    add_worker_parser(sub)
    add_keys_parser(sub)
    from ..view.cli import add_view_parser

    add_view_parser(sub)
    return parser



def _noise_fraction(text: str) -> float:
    """``--cake-noise-fraction`` of ``integrate``: a number in the range of ``[output] cake_noise_fraction``."""
    from ..config.schema import option_of

    o = option_of("output", "cake_noise_fraction")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not o.at_least <= value <= o.at_most:  # (NaN too)
        raise argparse.ArgumentTypeError(f"expected {o.limit}, got {text}")
    return value


def _add_run_arguments(r: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments

    add_config_arguments(r)  # --control is one of them: [transport] control_endpoint


def split_images(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split leftover tokens into (images, overrides): images end at the first key or ``--`` token."""
    from ..params import KNOWN_KEYS

    images: list[str] = []
    for k, token in enumerate(tokens):
        if token.startswith("--") or token in KNOWN_KEYS:
            return images, list(tokens[k:])
        images.append(token)
    return images, []


# --------------------------------------------------------------------------------------------------- commands


def _load_params(args: argparse.Namespace, overrides: Sequence[str]):
    from ..params import load_params

    p = load_params(args.param_file, overrides=list(overrides))
    for line in p.warnings:
        log.warning("%s", line)
    return p


def _load_map(p, cache_dir: str | None, use_cache: bool):
    from ..geometry.cache import load_or_build

    t0 = time.perf_counter()
    imap, from_cache = load_or_build(p, cache_dir=cache_dir, use_cache=use_cache)
    return imap, from_cache, time.perf_counter() - t0


def _map_megabytes(imap) -> float:
    total = 0
    for mat in (imap.weights, imap.areas):
        for arr in (mat.data, mat.indices, mat.indptr):
            total += arr.nbytes
    return total / 1e6


def cmd_map(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    p = _load_params(args, overrides)
    imap, from_cache, seconds = _load_map(p, args.cache_dir, not args.no_cache)
    nz, ny = (int(s) for s in imap.shape)
    r_edges, eta_edges = imap.r_edges, imap.eta_edges
    q_mode = bool(getattr(p, "q_mode", False))
    mode = (f"Q mode {p.QMin:g}..{p.QMax:g} 1/A step {p.QBinSize:g} at {p.Wavelength:g} A"
            if q_mode else "R mode (Q mode: no)")
    out = [
        f"map: detector {nz} x {ny} pixels (NrPixelsZ x NrPixelsY), {imap.weights.nnz} nonzeros, "
        f"{_map_megabytes(imap):.1f} MB in memory",
        f"bins: {imap.n_r} x {imap.n_eta} (n_r x n_eta), R {r_edges[0]:g}..{r_edges[-1]:g} px, "
        f"eta {eta_edges[0]:g}..{eta_edges[-1]:g} deg, {mode}",
        (f"time: loaded from cache in {seconds:.2f} s" if from_cache
         else f"time: built in {float(getattr(imap, 'build_seconds', seconds)):.2f} s"),
        f"cache key: {imap.key}",
    ]
    if args.export_midas:
        from ..geometry.midas_map import export_midas

        map_path, nmap_path = export_midas(imap, p, args.export_midas)
        out.append(f"MIDAS map: {map_path} {nmap_path}")
    print("\n".join(out), flush=True)
    return 0


def _default_output(images: Sequence[str]) -> Path:
    first = Path(images[0])
    stem = first.name if first.is_dir() else first.stem
    return Path.cwd() / f"{stem or 'images'}_integrated.h5"


def cmd_integrate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import numpy as np

    from ..engines.registry import create_engine
    from ..images.files import iter_images, load_dark
    from ..writer.hdf5 import check_output_path
    from ..writer.outputs import FrameRecord, RunOutputs, default_zarr_path

    images, overrides = split_images(extra)
    if not images:
        raise InputError("integrate: no images given (IMAGE... after the options, before any Key Value overrides)")
    if args.force and not args.import_midas:
        log.warning("--force has no effect without --import-midas")
    p = _load_params(args, overrides)
    output = check_output_path(args.output_h5 or _default_output(images), args.overwrite)
    shape = tuple(int(s) for s in p.shape)
    frames = iter_images(images, shape=shape)  # checks every path (existence, extension) now

    if args.import_midas:
        from ..geometry.midas_map import import_midas

        imap = import_midas(args.import_midas, p, force=args.force)
        log.info("map: imported MIDAS map from %s", args.import_midas)
    else:
        imap, _, _ = _load_map(p, args.cache_dir, not args.no_cache)

    dark_path = args.dark if args.dark else getattr(p, "Dark", None)
    dark = load_dark(dark_path, shape) if dark_path else None
    engine = create_engine(args.engine, imap, dark=dark, normalize=bool(p.Normalize))

    t0 = time.perf_counter()
    n = 0
    from .offline_fit import OfflineFitting

    fitting = OfflineFitting.create(p, imap, engine.name, per_eta=args.per_eta,
                                    snip_iterations=args.snip_iterations)  # None without peak fitting
    if args.midas_binaries:
        Path(args.midas_binaries).mkdir(parents=True, exist_ok=True)
    zarr_path = None if args.no_zarr else (args.zarr_output or default_zarr_path(output))
    writer = RunOutputs(output, imap, p, engine_name=engine.name, n_peaks=fitting.slots if fitting else 0,
                        fit_model=fitting.model if fitting else "pv",
                        zarr_path=zarr_path, midas_dir=args.midas_binaries or None, overwrite=args.overwrite,
                        note="ringstream integrate (offline, image files)", cake_dtype=args.cake_dtype,
                        cake_noise_fraction=args.cake_noise_fraction,
                        caked=fitting.caked.snip_iterations if fitting and fitting.caked else 0)
    ok = False
    try:
        batch: list[np.ndarray] = []
        ids: list[str] = []

        def run_batch() -> None:
            nonlocal n
            if not batch:
                return
            lineouts, cakes = engine.integrate_batch(np.stack(batch))
            # fitted in float64 as a worker fits them, then float32 as a worker's Result carries them
            fits = fitting.fit_batch(n, ids, lineouts) if fitting is not None else [None] * len(batch)
            cakeds = fitting.fit_caked(n, ids, lineouts, cakes) if fitting is not None else [None] * len(batch)
            lineouts, cakes = np.asarray(lineouts, dtype=np.float32), np.asarray(cakes, dtype=np.float32)
            stamp = time.time()
            for k, fit in enumerate(fits):  # the same sinks as the daemon's writer (ringstream/writer/outputs.py)
                writer.append(FrameRecord(n + k, lineouts[k], ids[k], stamp, cakes[k],
                                          fit=fit.fit if fit is not None else None,
                                          curves=fit.curves if fit is not None else None, caked=cakeds[k]))
            n += len(batch)
            log.debug("integrated %d frames (last %s)", n, ids[-1])
            batch.clear()
            ids.clear()

        source = iter(frames)
        while True:
            try:
                sid, frame = next(source)
            except StopIteration:
                break
            except RingstreamError:
                run_batch()  # the frames read before the bad file still go into the results
                raise
            if batch and frame.dtype != batch[0].dtype:
                run_batch()
            batch.append(frame)
            ids.append(sid)
            if len(batch) == BATCH:
                run_batch()
        run_batch()
        ok = True
    except RingstreamError as exc:
        if n:  # say where the partial results are, still on the one error line
            raise type(exc)(f"{exc} ({n} frames before it are in {output}, run_complete false)") from exc
        raise
    finally:
        writer.close(run_complete=ok)
        if fitting is not None:
            fitting.close()
        if not ok and n == 0:
            output.unlink(missing_ok=True)  # nothing in it: do not leave a file that blocks the rerun
            if zarr_path is not None:
                Path(zarr_path).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"integrated {n} frames in {seconds:.2f} s ({rate:.1f} frames/s) -> {output}", flush=True)
    return 0


def _run_logging(level: str, verbose: bool) -> None:
    """Logs of the run: stderr, INFO (or the configured level; DEBUG with -v), the process role in every line."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else getattr(logging, str(level).upper(), logging.INFO))
    for h in root.handlers:
        h.setFormatter(logging.Formatter("%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s"))


def cmd_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..config import config_from_args
    from ..params import parse_overrides
    from .supervisor import run_daemon

    parse_overrides(extra)  # a stray token is a ParamError naming it, before anything starts
    config = config_from_args(args, extra)
    _run_logging(config.logging.level, bool(args.verbose))
    return run_daemon(config)


def cmd_status(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .status import print_status

    if extra:
        from ..errors import ConfigError

        raise ConfigError(f"status: unexpected arguments: {' '.join(extra)}")
    endpoint = control_endpoint(args.control_endpoint)
    return print_status(endpoint, as_json=bool(args.json), timeout=float(args.timeout))


def cmd_check_config(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .check_config import check_config

    return check_config(args, extra)


def cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..errors import ConfigError
    from ..writer.export import export_csv, export_midas, export_zarr

    if extra:
        raise ConfigError(f"export: unexpected arguments: {' '.join(extra)}")
    if not (args.zarr_zip or args.midas_binaries or args.csv):
        raise ConfigError("export: nothing to do; give --zarr-zip Z, --midas-binaries DIR and/or --csv DIR")
    lines = []
    if args.zarr_zip:
        n = export_zarr(args.h5, args.zarr_zip, overwrite=args.overwrite)
        lines.append(f"zarr.zip: {args.zarr_zip} ({n} omega-sum groups)")
    if args.midas_binaries:
        names = export_midas(args.h5, args.midas_binaries, overwrite=args.overwrite)
        lines.append(f"MIDAS binaries in {args.midas_binaries}: {' '.join(names)}")
    if args.csv:
        names = export_csv(args.h5, args.csv, overwrite=args.overwrite)
        lines.append(f"CSV in {args.csv}: {' '.join(names)}")
    print("\n".join(lines), flush=True)
    return 0


def cmd_repair(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..errors import ConfigError
    from ..writer.outputs import default_zarr_path
    from ..writer.repair import cut_zarr_tail, repair

    if extra:
        raise ConfigError(f"repair: unexpected arguments: {' '.join(extra)}")
    print(repair(args.h5).line(), flush=True)
    zarr = args.zarr_output or default_zarr_path(args.h5)
    cut = cut_zarr_tail(zarr)
    if cut is not None:
        print(f"{zarr}: " + (f"{cut} bytes of an unfinished publication cut" if cut else "whole"), flush=True)
    return 0


def cmd_runs(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .runs_cli import cmd_runs as run_runs

    return run_runs(args, extra)


def cmd_dectris_sim(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..errors import ConfigError
    from ..ingest.dectris_sim import run_from_args

    if extra:
        raise ConfigError(f"dectris-sim: unexpected arguments {' '.join(extra)}")
    return run_from_args(args)


def cmd_peaks(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .peaks_cli import cmd_peaks as run_peaks

    return run_peaks(args, extra)


def cmd_worker(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .join import cmd_worker as run_worker

    return run_worker(args, extra)


def cmd_keys(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .join import cmd_keys as run_keys

    return run_keys(args, extra)


def cmd_view(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ..view.cli import cmd_view as run_view

    return run_view(args, extra)


COMMANDS = {"map": cmd_map, "integrate": cmd_integrate, "run": cmd_run, "status": cmd_status,
            "check-config": cmd_check_config, "peaks": cmd_peaks, "runs": cmd_runs, "export": cmd_export, "repair": cmd_repair,
            "worker": cmd_worker, "keys": cmd_keys,
            "dectris-sim": cmd_dectris_sim,
            "view": cmd_view}


# --------------------------------------------------------------------------------------------------- main


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("numba", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Image readers log their own complaints about a bad file; ringstream reports the file as one error line.
    for reader in ("tifffile", "fabio"):
        logging.getLogger(reader).setLevel(logging.WARNING if verbose else logging.CRITICAL)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 internal error, 2 config, 3 input, 4 map, 130 ^C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbose = bool(args.verbose)
    _setup_logging(verbose)
    try:
        if args.command == "map":
            from ..params import parse_overrides

            parse_overrides(extra)  # a stray non-key token is a ParamError naming it
        return COMMANDS[args.command](args, extra)
    except KeyboardInterrupt:
        print("ringstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RingstreamError as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"ringstream: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except Exception as exc:  # a bug: one line, traceback with -v
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"ringstream: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(run with -v for the traceback and please report it)", file=sys.stderr, flush=True)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())

"""Daemon configuration (TOML file + environment + command line) -> one frozen, validated :class:`DaemonConfig`.

Precedence, lowest first: the defaults below < the TOML file (``--config``) < the environment
(``RINGSTREAM_<SECTION>_<KEY>``, e.g. ``RINGSTREAM_WORKERS_COUNT=4``) < the command line. A later layer replaces a
key's value (lists included: command-line ``overrides`` replace the file's). Sections and defaults (docs/DAEMON.md)::

    [run]        param_file, overrides, output_h5 ("ringstream.h5"), zarr_output, no_zarr, save_interval (500), dark,
                 run_id ("" = generated)
    [source]     kind ("simulated"), frames (0 = forever), rate (0 = max, Hz), dtype ("int32"), seed (0),
                 rings_2theta ([] deg), replay_path, loop (true), folder, pva_ip, pva_channel
    [workers]    count (2), engine ("auto")
    [transport]  frames_endpoint, results_endpoint, release_endpoint, events_endpoint ("auto" each),
                 control_endpoint ("tcp://127.0.0.1:5557"), shared_memory (true), ring_slots (32),
                 queue_depth (= ring_slots unless given)
    [supervisor] heartbeat_interval (0.5 s), heartbeat_timeout (2.0 s), ready_timeout (120 s), drain_timeout (60 s)
    [logging]    level ("INFO")

Strings that name nothing yet are ``""`` (TOML has no null). Environment values are text: integers and numbers as
written, booleans ``1/0/true/false/yes/no/on/off``, lists comma-separated (``RINGSTREAM_RUN_OVERRIDES="RBinSize
0.5,EtaBinSize 10"``); an empty variable counts as unset. A ``RINGSTREAM_<SECTION>_<KEY>`` variable naming a
section but no key of it is an error (a typo in an EnvironmentFile must not be ignored); other ``RINGSTREAM_*``
variables (``RINGSTREAM_CACHE_DIR``) are left alone. Relative input paths in the TOML file (``param_file``,
``dark``, ``replay_path``, ``folder``) are resolved against the file's folder when they exist there, else they are
kept (relative to the working directory), as ``params.py`` does for paths in a parameter file.

Every error is a :class:`~ringstream.errors.ConfigError` (exit 2) with a one-line message naming where the value
came from (``/etc/ringstream/beamline.toml:7``, ``environment (RINGSTREAM_WORKERS_COUNT)``, ``command line
(--workers)``, ``defaults``), the key (``[workers] count``) and what was expected. Problems found after the layers
are merged are reported together on that one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .source_kinds import SOURCE_KINDS

__all__ = [
    "CLI_FLAGS",
    "DaemonConfig",
    "LoggingConfig",
    "RunConfig",
    "SourceConfig",
    "SupervisorConfig",
    "TransportConfig",
    "WorkersConfig",
    "add_config_arguments",
    "cli_layer",
    "config_from_args",
    "load_config",
]

ENV_PREFIX = "RINGSTREAM_"
DEFAULTS = "defaults"

ENGINES = ("auto", "cpu", "gpu")
DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENDPOINT_KEYS = ("frames_endpoint", "results_endpoint", "release_endpoint", "events_endpoint", "control_endpoint")
#: keys holding input paths: relative ones in a TOML file are resolved against its folder when they exist there
INPUT_PATH_KEYS = (("run", "param_file"), ("run", "dark"), ("source", "replay_path"), ("source", "folder"))
INPUT_PATH_KEYS += (("source", "file"),)


def _opt(default: object, kind: str, doc: str) -> Any:
    """A config field: its default, value kind (int, float, bool, str, list[str], list[float]) and a short doc."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True)
class RunConfig:
    """What to integrate and where the results go."""

    param_file: str = _opt("", "str", "MIDAS parameter file (required)")
    overrides: tuple[str, ...] = _opt((), "list[str]", "'Key Value' tokens applied over the parameter file")
    output_h5: str = _opt("ringstream.h5", "str", "NeXus HDF5 results file")
    zarr_output: str = _opt("", "str", "zarr.zip output (\"\" = next to output_h5)")
    no_zarr: bool = _opt(False, "bool", "write no zarr.zip")
    save_interval: int = _opt(500, "int", "flush the outputs every N frames (and at least every second)")
    midas_binaries: str = _opt("", "str", "folder for MIDAS lineout.bin, Int2D.bin, RTthEtaAreaMap.bin (\"\" = none)")
    dark: str = _opt("", "str", "dark frame file (\"\" = the parameter file's Dark key, if any)")
    run_id: str = _opt("", "str", "run identifier (\"\" = generated)")


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from."""

    kind: str = _opt("simulated", "str", " | ".join(SOURCE_KINDS))
    frames: int = _opt(0, "int", "frames to take, 0 = until stopped")
    rate: float = _opt(0.0, "float", "frames per second, 0 = as fast as possible (Hz)")
    dtype: str = _opt("int32", "str", "pixel type of simulated frames")
    seed: int = _opt(0, "int", "random seed of simulated frames")
    rings_2theta: tuple[float, ...] = _opt((), "list[float]", "ring positions of simulated frames (deg 2theta)")
    replay_path: str = _opt("", "str", "image file or folder to replay (kind = replay)")
    loop: bool = _opt(True, "bool", "replay: start again at the end")
    folder: str = _opt("", "str", "folder to watch for new images (kind = folder)")
    # folder source (issue 7): ringstream/ingest/folder.py, ringstream/ingest/formats.py
    file: str = _opt("", "str", "folder: read this one image file and end (kind = folder)")
    extensions: tuple[str, ...] = _opt((), "list[str]", "folder: extensions to read ([] = every supported format)")
    recursive: bool = _opt(False, "bool", "folder: also watch the subfolders")
    file_count: int = _opt(0, "int", "folder: end after N files (processed, rejected or skipped); 0 = no limit")
    idle_timeout: float = _opt(0.0, "float", "folder: end after this long without a new file (s); 0 = never")
    watch: str = _opt("auto", "str", "folder: auto | inotify | poll (poll: network file systems)")
    poll_interval: float = _opt(1.0, "float", "folder: a file is complete when its size is stable this long (s)")
    retry_time: float = _opt(10.0, "float", "folder: retry a truncated or corrupt file this long, then skip it (s)")
    hdf5_dataset: str = _opt("", "str", "folder: HDF5 dataset or group path (\"\" = /entry/data/data or /data)")
    raw_dtype: str = _opt("uint16", "str", "folder: pixel type of raw .bin/.raw files (numpy name, e.g. <u2)")
    raw_shape: str = _opt("", "str", "folder: frame shape of raw files, ROWSxCOLS (\"\" = the detector)")
    raw_header: int = _opt(0, "int", "folder: bytes to skip at the start of a raw file")
    pva_ip: str = _opt("", "str", "PVA server address (\"\" = EPICS_PVA_ADDR_LIST)")
    pva_channel: str = _opt("", "str", "PVA channel of the NTNDArray (kind = pva)")
    # live sources (issue 6): ringstream/ingest/pva.py and midas_socket.py
    pva_dtype: str = _opt("", "str", "PVA: the detector's pixel type, other frames are rejected (\"\" = any)")
    pva_queue_size: int = _opt(16, "int", "PVA: server-side monitor queue, record[queueSize=N] (frames)")
    pva_attributes: tuple[str, ...] = _opt((), "list[str]", "PVA: NDAttributes kept as frame metadata "
                                           "(e.g. omega, I0; \"*\" = all)")
    midas_port: int = _opt(60439, "int", "MIDAS socket: TCP port to listen on (kind = midas_socket)")
    midas_listen: str = _opt("127.0.0.1", "str", "MIDAS socket: interface address to bind (0.0.0.0 = all)")


@dataclass(frozen=True)
class WorkersConfig:
    """The integrating processes."""

    count: int = _opt(2, "int", "worker processes")
    engine: str = _opt("auto", "str", " | ".join(ENGINES))
    gpus: tuple[int, ...] = _opt((), "list[int]", "CUDA devices for GPU workers: worker i uses gpus[i % len]; [] = device 0")
    batches_in_flight: int = _opt(4, "int", "GPU engine: batches submitted at once, one per CUDA stream (1 = one at a time)")


@dataclass(frozen=True)
class TransportConfig:
    """ZeroMQ endpoints and the shared-memory frame ring."""

    frames_endpoint: str = _opt("auto", "str", "ingest -> workers (\"auto\" = a free tcp://127.0.0.1 port)")
    results_endpoint: str = _opt("auto", "str", "workers -> writer")
    release_endpoint: str = _opt("auto", "str", "workers -> ingest (ring slots freed)")
    events_endpoint: str = _opt("auto", "str", "children -> supervisor (heartbeats)")
    control_endpoint: str = _opt("tcp://127.0.0.1:5557", "str", "ringstream status / stop")
    peaks_endpoint: str = _opt("auto", "str", "supervisor -> ingest, workers, writer (peak-list updates, PUB)")
    shared_memory: bool = _opt(True, "bool", "pass frames through the shared-memory ring (false: inline)")
    ring_slots: int = _opt(32, "int", "frames in flight (shared-memory slots)")
    copy_threads: int = _opt(0, "int", "ingest threads copying frames into the ring (0 = auto: 1 under 8 CPUs, else CPUs/2, at most 8)")
    nontemporal_copy: bool = _opt(True, "bool", "start the ingest with glibc's non-temporal memcpy threshold at 256 KiB, so frame copies into the ring bypass the CPU caches (x86-64 glibc)")
    queue_depth: int = _opt(32, "int", "ZeroMQ high-water mark of every queue (default: ring_slots)")
    results_queue_mb: int = _opt(8, "int", "the workers -> writer queue holds about this many MB of Results on each "
                                           "side (its high-water mark: at least queue_depth, at most 4096 messages); "
                                           "what a kill -9 of the writer can lose beyond the last flush")


@dataclass(frozen=True)
class SupervisorConfig:
    """Liveness and shutdown timing, in seconds."""

    heartbeat_interval: float = _opt(0.5, "float", "children report every ... s")
    heartbeat_timeout: float = _opt(2.0, "float", "a child silent this long has failed (s)")
    ready_timeout: float = _opt(120.0, "float", "a child must be ready within ... s")
    drain_timeout: float = _opt(60.0, "float", "first SIGTERM: finish in-flight frames within ... s")


FIT_ENGINES = ("auto", "nlopt", "gpu")


@dataclass(frozen=True)
class FitConfig:
    """Per-frame peak fitting (issue 5). Whether to fit, and which peaks, comes from the parameter file
    (DoPeakFit, MultiplePeaks, PeakLocation, manual 2.5); these keys say how."""

    engine: str = _opt("auto", "str", " | ".join(FIT_ENGINES) + " (auto: gpu on a GPU worker, else nlopt)")
    slots: int = _opt(0, "int", "peak rows per frame in fit.bin (0 = len(PeakLocation), or 16 when finding peaks)")


@dataclass(frozen=True)
class LoggingConfig:
    """Log output (stderr; journald collects it under systemd)."""

    level: str = _opt("INFO", "str", " | ".join(LOG_LEVELS))


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "source": SourceConfig,
    "workers": WorkersConfig,
    "transport": TransportConfig,
    "supervisor": SupervisorConfig,
    "fit": FitConfig,
    "logging": LoggingConfig,
}

#: the option that sets each key on the command line (for messages); others are ``--<key-with-dashes>``
CLI_FLAGS: dict[str, str] = {
    "run.param_file": "--param-file",
    "run.overrides": "Key Value overrides",
    "run.output_h5": "--output-h5",
    "run.zarr_output": "--zarr-output",
    "run.no_zarr": "--no-zarr",
    "run.save_interval": "--save-interval",
    "run.midas_binaries": "--midas-binaries",
    "run.dark": "--dark",
    "run.run_id": "--run-id",
    "source.kind": "--source",
    "source.frames": "--frames",
    "source.rate": "--rate",
    "source.replay_path": "--replay",
    "source.pva_channel": "--pva-channel",
    "source.pva_ip": "--pva-ip",
    "source.midas_port": "--midas-socket",
    "source.midas_listen": "--listen",
    "workers.count": "--workers",
    "workers.engine": "--engine",
    "workers.gpus": "--gpus",
    "transport.copy_threads": "--copy-threads",
    "transport.control_endpoint": "--control-endpoint",
    "transport.shared_memory": "--no-shm",
    "transport.ring_slots": "--ring-slots",
    "logging.level": "--log-level",
}


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _label(section: str, key: str | None = None) -> str:
    return f"[{section}] {key}" if key else f"[{section}]"


@dataclass(frozen=True)
class DaemonConfig:
    """Every setting of one daemon run, validated. Build with :func:`load_config`; picklable (sent to children)."""

    run: RunConfig = field(default_factory=RunConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    config_file: str = field(default="", compare=False)  # the TOML file read ("" = none)
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # ("section.key", origin) per key

    def to_dict(self) -> dict[str, dict[str, object]]:
        """``{section: {key: value}}`` with lists for tuples: TOML/JSON-ready, accepted back by :meth:`from_dict`."""
        out: dict[str, dict[str, object]] = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            out[section] = {
                f.name: list(getattr(obj, f.name)) if isinstance(getattr(obj, f.name), tuple) else getattr(obj, f.name)
                for f in dataclasses.fields(obj)
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, object]], origin: str = "<dict>",
                  require_param_file: bool = False) -> DaemonConfig:
        """A config from ``{section: {key: value}}`` over the defaults (as a TOML file would give), validated."""
        return _build([_Layer(origin, _typed_layer(data, lambda s, k: origin, allow_path=True))],
                      require_param_file=require_param_file)

    def to_toml(self, comments: bool = True) -> str:
        """The configuration as TOML text; with ``comments``, each key's origin (``# environment (...)``)."""
        origins = dict(self.sources)
        lines: list[str] = []
        if self.config_file and comments:
            lines.append(f"# configuration file: {self.config_file}")
        for section, values in self.to_dict().items():
            if lines:
                lines.append("")
            lines.append(f"[{section}]")
            rows = [(f"{key} = {_toml_value(value)}", origins.get(f"{section}.{key}", DEFAULTS))
                    for key, value in values.items()]
            width = max(len(r) for r, _ in rows)
            for text, origin in rows:
                lines.append(f"{text:<{width}}  # {origin}" if comments else text)
        return "\n".join(lines) + "\n"

    def describe_sources(self) -> dict[str, str]:
        """``{"workers.count": "environment (RINGSTREAM_WORKERS_COUNT)", ...}``: where each value came from."""
        origins = dict(self.sources)
        return {f"{s}.{f.name}": origins.get(f"{s}.{f.name}", DEFAULTS)
                for s in SECTIONS for f in dataclasses.fields(SECTIONS[s])}

    def override_tokens(self) -> list[str]:
        """``run.overrides`` as parameter-file tokens (each entry split on whitespace)."""
        return [tok for item in self.run.overrides for tok in str(item).split()]

    def load_params(self):
        """The :class:`~ringstream.params.Params` of ``run.param_file`` with ``run.overrides`` applied.

        ConfigError ``--param-file is required`` when none is set; a :class:`~ringstream.errors.ParamError`
        (exit 2, naming file, line and key) propagates as it is.
        """
        from .params import load_params

        if not self.run.param_file:
            raise ConfigError(_PARAM_FILE_REQUIRED)
        return load_params(self.run.param_file, self.override_tokens())


_PARAM_FILE_REQUIRED = ("--param-file is required (or [run] param_file in the --config file, "
                        "or RINGSTREAM_RUN_PARAM_FILE)")


def _toml_value(value: object) -> str:
    """One TOML value: bool, int, float, str (basic string) or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = json.dumps(str(value), ensure_ascii=False)
    return text.replace("\x7f", "\\u007f")


# --------------------------------------------------------------------------------------------------- layers


@dataclass
class _Layer:
    """One precedence layer: its name and ``{(section, key): (value, origin)}`` of typed values."""

    name: str
    values: dict[tuple[str, str], tuple[object, str]]


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), 1, 0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(origin: str, section: str, key: str) -> ConfigError:
    keys = list(_fields(section))
    hint = _did_you_mean(key, keys)
    if not hint:
        elsewhere = [s for s in SECTIONS if key in _fields(s)]
        if elsewhere:
            hint = f"; it belongs in [{elsewhere[0]}]"
    return ConfigError(f"{origin}: {_label(section, key)}: unknown key{hint} (keys of [{section}]: {', '.join(keys)})")


def _unknown_section(origin: str, section: str) -> ConfigError:
    hint = _did_you_mean(section, list(SECTIONS))
    return ConfigError(f"{origin}: [{section}]: unknown section{hint} (sections: {', '.join(SECTIONS)})")


_NOUN = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list[str]": "a list of strings",
    "list[float]": "a list of numbers",
    "list[int]": "a list of integers",
}
_ENV_NOUN = {
    "bool": "1/0/true/false/yes/no/on/off",
    "list[str]": "comma-separated strings",
    "list[float]": "comma-separated numbers",
    "list[int]": "comma-separated integers",
}


def _coerce(value: object, kind: str, allow_path: bool) -> object:
    """``value`` as ``kind`` (no conversion from text), or raise ValueError."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            x = float(value)
            if math.isfinite(x):
                return x
    elif kind == "str":
        if isinstance(value, str):
            return value
        if allow_path and isinstance(value, os.PathLike):
            return os.fspath(value)
    elif kind.startswith("list["):
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, kind[5:-1], allow_path) for v in value)
    raise ValueError(kind)


def _describe(value: object) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed_layer(data: Mapping[str, object], origin_of, allow_path: bool) -> dict[tuple[str, str], tuple[object, str]]:
    """Check sections, keys and types of ``{section: {key: value}}``; ``origin_of(section, key)`` names the place."""
    out: dict[tuple[str, str], tuple[object, str]] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            if not isinstance(table, Mapping):
                elsewhere = [s for s in SECTIONS if section in _fields(s)]
                hint = f"; did you mean [{elsewhere[0]}] {section}?" if elsewhere else ""
                raise ConfigError(f"{origin_of(section, None)}: {section!r}: keys belong in a section "
                                  f"({', '.join(f'[{s}]' for s in SECTIONS)}){hint}")
            raise _unknown_section(origin_of(section, None), section)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin_of(section, None)}: [{section}]: expected a table of keys, "
                              f"got {_describe(table)}")
        fields = _fields(section)
        for key, value in table.items():
            origin = origin_of(section, key)
            if key not in fields:
                raise _unknown_key(origin, section, key)
            if value is None:  # "not given" (argparse defaults)
                continue
            kind = fields[key].metadata["kind"]
            try:
                out[(section, key)] = (_coerce(value, kind, allow_path), origin)
            except ValueError:
                raise ConfigError(f"{origin}: {_label(section, key)}: expected {_NOUN[kind]}, "
                                  f"got {_describe(value)}") from None
    return out


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*\]")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


def _toml_lines(text: str) -> dict[tuple[str, str | None], int]:
    """Line numbers of ``[section]`` headers ``(section, None)`` and keys ``(section, key)`` (best effort)."""
    lines: dict[tuple[str, str | None], int] = {}
    current = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            current = re.sub(r"\s+", "", m.group(1))
            lines.setdefault((current, None), lineno)
            continue
        m = _KEYLINE.match(line)
        if m:
            parts = [p.strip() for p in m.group(1).split(".")]
            if current:
                lines.setdefault((current, parts[-1]), lineno)
            elif len(parts) >= 2:
                lines.setdefault((parts[0], parts[1]), lineno)
                lines.setdefault((parts[0], None), lineno)
            else:
                lines.setdefault((parts[0], None), lineno)
    return lines


def _resolve_input(raw: str, base: Path) -> str:
    """A relative input path from a TOML file: against the file's folder if it exists there, else as written."""
    path = Path(raw).expanduser()
    if not raw or path.is_absolute():
        return str(path) if raw else raw
    candidate = base / path
    return str(candidate) if candidate.exists() else raw


def _toml_layer(config_file: str | os.PathLike) -> _Layer:
    path = Path(config_file)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: configuration file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot parse TOML: {exc}") from None
    lines = _toml_lines(text)

    def origin_of(section: str, key: str | None) -> str:
        n = lines.get((section, key)) or lines.get((section, None))
        return f"{path}:{n}" if n else str(path)

    values = _typed_layer(data, origin_of, allow_path=False)
    base = path.absolute().parent
    for sk in INPUT_PATH_KEYS:
        if sk in values:
            raw, origin = values[sk]
            values[sk] = (_resolve_input(str(raw), base), origin)
    return _Layer(str(path), values)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _from_text(text: str, kind: str) -> object:
    """An environment string as ``kind``; ValueError if it does not read as one."""
    s = text.strip()
    if kind == "str":
        return text
    if kind == "int":
        body = s[1:] if s[:1] in "+-" else s
        if not (body.isascii() and body.isdigit()):
            raise ValueError(kind)
        return int(s)
    if kind == "float":
        x = float(s)  # ValueError when not a number
        if not math.isfinite(x) or "_" in s:
            raise ValueError(kind)
        return x
    if kind == "bool":
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ValueError(kind)
    items = [item.strip() for item in text.split(",")]
    return tuple(_from_text(item, kind[5:-1]) for item in items if item)


def _env_layer(env: Mapping[str, str]) -> _Layer:
    names = {f"{ENV_PREFIX}{s.upper()}_{k.upper()}": (s, k) for s in SECTIONS for k in _fields(s)}
    values: dict[tuple[str, str], tuple[object, str]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        text = env[var]
        origin = f"environment ({var})"
        if var not in names:
            rest = var[len(ENV_PREFIX):]
            section = rest.split("_", 1)[0].lower()
            if section in SECTIONS:
                key = rest.split("_", 1)[1].lower() if "_" in rest else ""
                if key:
                    raise _unknown_key(origin, section, key)
                raise ConfigError(f"{origin}: [{section}]: name a key: {ENV_PREFIX}{section.upper()}_<KEY>")
            close = difflib.get_close_matches(var, list(names), 1, 0.85)
            if close:
                raise ConfigError(f"{origin}: not a configuration variable; did you mean {close[0]}?")
            continue  # another ringstream variable (RINGSTREAM_CACHE_DIR)
        if text == "":
            continue
        section, key = names[var]
        kind = _fields(section)[key].metadata["kind"]
        try:
            values[(section, key)] = (_from_text(text, kind), origin)
        except ValueError:
            raise ConfigError(f"{origin}: {_label(section, key)}: expected {_ENV_NOUN.get(kind, _NOUN[kind])}, "
                              f"got {_describe(text)}") from None
    return _Layer("environment", values)


def _cli_layer(cli: Mapping[str, Mapping[str, object]], flags: Mapping[str, str]) -> _Layer:
    def origin_of(section: str, key: str | None) -> str:
        if key is None:
            return "command line"
        return f"command line ({flags.get(f'{section}.{key}', '--' + key.replace('_', '-'))})"

    return _Layer("command line", _typed_layer(cli, origin_of, allow_path=True))


# --------------------------------------------------------------------------------------------------- checks

_TCP = re.compile(r"^tcp://(\*|[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def _endpoint_problem(value: str) -> str | None:
    if value == "auto":
        return None
    m = _TCP.match(value)
    if m:
        return None if 1 <= int(m.group(2)) <= 65535 else f"port {m.group(2)} is not in 1..65535"
    if value.startswith("ipc://") and len(value) > len("ipc://") and not any(c.isspace() for c in value):
        return None
    return "expected \"auto\", tcp://HOST:PORT or ipc://PATH"


def _problems(cfg: dict[str, dict[str, object]], origin: dict[tuple[str, str], str], given: set) -> list[str]:
    """Every range / choice / consistency problem of the merged values, one line each."""
    out: list[str] = []

    def bad(section: str, key: str, expected: str) -> None:
        out.append(f"{origin[(section, key)]}: {_label(section, key)}: expected {expected}, "
                   f"got {_describe(cfg[section][key])}")

    def at_least(section: str, key: str, low: float, strict: bool = False) -> None:
        v = cfg[section][key]
        if v < low or (strict and v == low):  # type: ignore[operator]
            bad(section, key, f"{'>' if strict else '>='} {low:g}")

    def one_of(section: str, key: str, choices: Sequence[str]) -> None:
        if cfg[section][key] not in choices:
            hint = _did_you_mean(str(cfg[section][key]), choices)
            bad(section, key, "one of " + ", ".join(repr(c) for c in choices) + (f" ({hint[2:]})" if hint else ""))

    at_least("run", "save_interval", 1)
    one_of("source", "kind", SOURCE_KINDS)
    at_least("source", "frames", 0)
    at_least("source", "rate", 0)
    one_of("source", "dtype", DTYPES)
    at_least("source", "seed", 0)
    if any(not 0 < t < 180 for t in cfg["source"]["rings_2theta"]):  # type: ignore[union-attr]
        bad("source", "rings_2theta", "angles in 0 < 2theta < 180 (deg)")
    kind = cfg["source"]["kind"]
    needs = {"replay": "replay_path", "folder": "folder", "pva": "pva_channel"}
    if kind in needs and not cfg["source"][needs[kind]] and not (kind == "folder" and cfg["source"]["file"]):
        out.append(f"{origin[('source', 'kind')]}: [source] kind = {kind!r} needs [source] {needs[kind]}")
    if kind == "folder":
        out.extend(_folder_problems(cfg, origin))
    if cfg["source"]["pva_dtype"]:
        one_of("source", "pva_dtype", DTYPES)
    at_least("source", "pva_queue_size", 1)
    if not 1 <= cfg["source"]["midas_port"] <= 65535:  # type: ignore[operator]
        bad("source", "midas_port", "a TCP port in 1..65535")
    at_least("workers", "count", 1)
    one_of("workers", "engine", ENGINES)
    at_least("workers", "batches_in_flight", 1)
    if any(g < 0 for g in cfg["workers"]["gpus"]):  # type: ignore[union-attr]
        bad("workers", "gpus", "CUDA device numbers >= 0")
    seen: dict[str, str] = {}
    for key in ENDPOINT_KEYS:
        value = str(cfg["transport"][key])
        problem = _endpoint_problem(value)
        if problem:
            out.append(f"{origin[('transport', key)]}: [transport] {key}: {problem}, got {value!r}")
        elif value != "auto" and value in seen:
            first, second = seen[value], key
            if ("transport", second) not in given and ("transport", first) in given:
                first, second = second, first  # blame the one that was set, not a default
            out.append(f"{origin[('transport', second)]}: [transport] {second}: {value!r} is also [transport] "
                       f"{first} ({origin[('transport', first)]}); each endpoint needs its own address")
        seen.setdefault(value, key)
    at_least("transport", "ring_slots", 2)
    at_least("transport", "queue_depth", 1)
    at_least("transport", "results_queue_mb", 0)
    at_least("transport", "copy_threads", 0)
    for key in ("heartbeat_interval", "heartbeat_timeout", "ready_timeout", "drain_timeout"):
        at_least("supervisor", key, 0, strict=True)
    sup = cfg["supervisor"]
    if 0 < sup["heartbeat_interval"] and sup["heartbeat_timeout"] <= sup["heartbeat_interval"]:  # type: ignore
        key = "heartbeat_timeout" if ("supervisor", "heartbeat_timeout") in given else "heartbeat_interval"
        out.append(f"{origin[('supervisor', key)]}: [supervisor] heartbeat_timeout ({sup['heartbeat_timeout']:g} s) "
                   f"must be longer than heartbeat_interval ({sup['heartbeat_interval']:g} s)")
    one_of("fit", "engine", FIT_ENGINES)
    at_least("fit", "slots", 0)
    cfg["logging"]["level"] = str(cfg["logging"]["level"]).upper()
    one_of("logging", "level", LOG_LEVELS)
    return out


def _folder_problems(cfg: dict[str, dict[str, object]], origin: dict[tuple[str, str], str]) -> list[str]:
    """The folder source's keys (issue 7): paths that exist, times and sizes in range, formats it can read."""
    import numpy as np

    src, out = cfg["source"], []

    def bad(key: str, expected: str) -> None:
        out.append(f"{origin[('source', key)]}: [source] {key}: expected {expected}, got {_describe(src[key])}")

    if src["file"] and not Path(str(src["file"])).is_file():
        out.append(f"{origin[('source', 'file')]}: [source] file: {str(src['file'])!r} is not an existing file")
    elif not src["file"] and src["folder"] and not Path(str(src["folder"])).is_dir():
        out.append(f"{origin[('source', 'folder')]}: [source] folder: {str(src['folder'])!r} is not an existing "
                   "folder")
    for key in ("file_count", "raw_header"):
        if src[key] < 0:  # type: ignore[operator]
            bad(key, ">= 0")
    for key in ("idle_timeout", "retry_time"):
        if src[key] < 0:  # type: ignore[operator]
            bad(key, ">= 0 (s)")
    if src["poll_interval"] <= 0:  # type: ignore[operator]
        bad("poll_interval", "> 0 (s)")
    if src["watch"] not in ("auto", "inotify", "poll"):
        bad("watch", "one of 'auto', 'inotify', 'poll'")
    try:
        if np.dtype(str(src["raw_dtype"])).kind not in "uif":
            bad("raw_dtype", "an integer or float numpy dtype (uint16, <i4, float32, ...)")
    except TypeError:
        bad("raw_dtype", "an integer or float numpy dtype (uint16, <i4, float32, ...)")
    from .ingest.folder import normalize_extensions, parse_shape

    for key, check in (("raw_shape", parse_shape), ("extensions", normalize_extensions)):
        try:
            check(src[key])
        except ConfigError as exc:
            out.append(f"{origin[('source', key)]}: {exc}")
    return out


def _build(layers: Sequence[_Layer], require_param_file: bool, config_file: str = "") -> DaemonConfig:
    """Merge ``layers`` (lowest first) over the defaults, validate, and build the DaemonConfig."""
    cfg: dict[str, dict[str, object]] = {
        s: {f.name: f.default for f in dataclasses.fields(cls)} for s, cls in SECTIONS.items()
    }
    origin: dict[tuple[str, str], str] = {(s, k): DEFAULTS for s in SECTIONS for k in cfg[s]}
    given: set[tuple[str, str]] = set()
    for layer in layers:
        for (section, key), (value, where) in layer.values.items():
            cfg[section][key] = value
            origin[(section, key)] = where
            given.add((section, key))
    if ("transport", "queue_depth") not in given:
        cfg["transport"]["queue_depth"] = cfg["transport"]["ring_slots"]
        if ("transport", "ring_slots") in given:
            origin[("transport", "queue_depth")] = f"{DEFAULTS} (= [transport] ring_slots)"

    problems = _problems(cfg, origin, given)
    param_file = str(cfg["run"]["param_file"])
    if require_param_file and not param_file:
        problems.insert(0, _PARAM_FILE_REQUIRED)
    elif param_file and not Path(param_file).is_file():
        what = "is not a file" if Path(param_file).exists() else "does not exist"
        problems.insert(0, f"{origin[('run', 'param_file')]}: [run] param_file: parameter file {param_file!r} {what}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} configuration problems: " + "; ".join(problems))

    sections = {s: SECTIONS[s](**cfg[s]) for s in SECTIONS}
    sources = tuple((f"{s}.{k}", origin[(s, k)]) for s in SECTIONS for k in cfg[s] if origin[(s, k)] != DEFAULTS)
    return DaemonConfig(**sections, config_file=config_file, sources=sources)


def load_config(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] = os.environ,
    cli: Mapping[str, Mapping[str, object]] | None = None,
    cli_flags: Mapping[str, str] | None = None,
    *,
    require_param_file: bool = True,
) -> DaemonConfig:
    """The validated configuration: defaults < ``config_file`` (TOML) < ``env`` < ``cli``.

    ``cli`` holds already-typed values, ``{"workers": {"count": 4}}``; a value of None means "not given".
    ``cli_flags`` (``{"workers.count": "--workers"}``, over :data:`CLI_FLAGS`) names the options in messages.
    ``require_param_file``: a run needs ``[run] param_file``; it must exist whenever it is given.
    Raises :class:`~ringstream.errors.ConfigError` (exit 2) with one line naming origin and key.
    """
    layers = []
    if config_file is not None and str(config_file) != "":
        layers.append(_toml_layer(config_file))
    layers.append(_env_layer(env))
    if cli:
        layers.append(_cli_layer(cli, {**CLI_FLAGS, **(cli_flags or {})}))
    return _build(layers, require_param_file, config_file=str(config_file or ""))


# --------------------------------------------------------------------------------------------------- argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``ringstream run`` and ``ringstream check-config`` (every default None = not given)."""
    g = parser.add_argument_group("configuration (over --config, over RINGSTREAM_<SECTION>_<KEY>)")
    g.add_argument("--config", metavar="FILE.toml", help="daemon configuration file (TOML)")
    g.add_argument("--param-file", metavar="P", help="MIDAS parameter file ([run] param_file)")
    g.add_argument("--output-h5", metavar="OUT.h5", help="results file ([run] output_h5)")
    g.add_argument("--zarr-output", metavar="OUT.zarr.zip", help="[run] zarr_output")
    g.add_argument("--no-zarr", action="store_true", default=None, help="write no zarr.zip ([run] no_zarr)")
    g.add_argument("--save-interval", type=int, metavar="N", help="flush every N frames ([run] save_interval)")
    g.add_argument("--midas-binaries", metavar="DIR", help="also write MIDAS lineout.bin, Int2D.bin and "
                   "RTthEtaAreaMap.bin into DIR ([run] midas_binaries)")
    g.add_argument("--dark", metavar="D", help="dark frame file ([run] dark)")
    g.add_argument("--run-id", metavar="ID", help="[run] run_id")
    g.add_argument("--source", metavar="KIND", help="frame source: " + ", ".join(SOURCE_KINDS) + " ([source] kind)")
    g.add_argument("--simulate", type=int, metavar="N", help="simulated frames, N of them (0 = until stopped)")
    g.add_argument("--replay", metavar="PATH", help="replay an image file or folder ([source] replay_path)")
    g.add_argument("--frames", type=int, metavar="N", help="[source] frames (0 = until stopped)")
    g.add_argument("--rate", type=float, metavar="HZ", help="[source] rate (0 = as fast as possible)")
    g.add_argument("--workers", type=int, metavar="N", help="worker processes ([workers] count)")
    g.add_argument("--engine", metavar="ENGINE", help="auto, cpu or gpu ([workers] engine)")
    g.add_argument("--gpus", metavar="LIST", help="CUDA devices for the workers, e.g. 0,1: worker i uses the "
                                                   "(i mod n)-th ([workers] gpus)")
    g.add_argument("--copy-threads", type=int, metavar="N", help="ingest copy threads, 0 = auto "
                                                                 "([transport] copy_threads)")
    g.add_argument("--control-endpoint", metavar="EP", help="[transport] control_endpoint")
    g.add_argument("--no-shm", action="store_true", default=None,
                   help="send pixels inline, not through shared memory ([transport] shared_memory = false)")
    g.add_argument("--ring-slots", type=int, metavar="N", help="[transport] ring_slots")
    g.add_argument("--log-level", metavar="LEVEL", help="[logging] level")
    f = parser.add_argument_group("folder input: --folder DIR or --file PATH")
    f.add_argument("--folder", metavar="DIR", help="watch DIR: its images first, in natural order, then new ones "
                   "([source] kind = folder, folder)")
    f.add_argument("--file", dest="folder_file", metavar="PATH", help="read this one image file and end "
                   "([source] kind = folder, file)")
    f.add_argument("--extension", dest="extensions", action="append", metavar="EXT", help="only files ending .EXT "
                   "(repeatable or comma-separated; [source] extensions)")
    f.add_argument("--recursive", action="store_true", default=None, help="also the subfolders ([source] recursive)")
    f.add_argument("--count", dest="file_count", type=int, metavar="N", help="end after N files, processed, "
                   "rejected or skipped ([source] file_count)")
    f.add_argument("--idle-timeout", type=float, metavar="S", help="end after S s without a new file "
                   "([source] idle_timeout)")
    f.add_argument("--hdf5-dataset", metavar="PATH", help="dataset inside HDF5 files ([source] hdf5_dataset)")
    f.add_argument("--watch", metavar="MODE", help="auto, inotify or poll ([source] watch)")
    live = parser.add_argument_group("live detector input")
    live.add_argument("--pva", action="store_true", default=None,
                      help="EPICS PVA NTNDArray stream ([source] kind = pva; needs --pva-channel)")
    live.add_argument("--pva-channel", metavar="PV", help="NTNDArray channel, e.g. 16pil-idb:Pva1:Image "
                      "([source] pva_channel)")
    live.add_argument("--pva-ip", metavar="ADDR", help="search the channel only at ADDR ([source] pva_ip; "
                      "default: EPICS_PVA_ADDR_LIST)")
    live.add_argument("--midas-socket", nargs="?", type=int, const=60439, metavar="PORT",
                      help="MIDAS socket stream on TCP PORT (default 60439; give PORT when Key Value overrides "
                      "follow) ([source] kind = midas_socket)")
    live.add_argument("--listen", metavar="ADDR", help="interface the MIDAS socket binds ([source] midas_listen, "
                      "default 127.0.0.1)")


def cli_layer(args: argparse.Namespace, extra: Sequence[str] = ()) -> tuple[dict, dict]:
    """``(cli, cli_flags)`` for :func:`load_config` from the options of :func:`add_config_arguments`.

    ``extra``: trailing ``Key Value`` parameter overrides (they replace ``[run] overrides``).
    """
    a = vars(args)
    cli: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
    flags: dict[str, str] = {}
    plain = {
        "param_file": ("run", "param_file"), "output_h5": ("run", "output_h5"),
        "zarr_output": ("run", "zarr_output"), "no_zarr": ("run", "no_zarr"),
        "save_interval": ("run", "save_interval"), "dark": ("run", "dark"), "run_id": ("run", "run_id"),
        "midas_binaries": ("run", "midas_binaries"),
        "source": ("source", "kind"), "frames": ("source", "frames"), "rate": ("source", "rate"),
        "workers": ("workers", "count"), "engine": ("workers", "engine"),
        "control_endpoint": ("transport", "control_endpoint"), "ring_slots": ("transport", "ring_slots"),
        "copy_threads": ("transport", "copy_threads"),
        "log_level": ("logging", "level"),
    }
    for name, (section, key) in plain.items():
        if a.get(name) is not None:
            cli[section][key] = a[name]
    if a.get("no_shm"):
        cli["transport"]["shared_memory"] = False
    if a.get("gpus") is not None:
        try:
            cli["workers"]["gpus"] = list(_from_text(str(a["gpus"]), "list[int]"))  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(f"command line (--gpus): expected comma-separated CUDA device numbers such as 0,1, "
                              f"got {a['gpus']!r}") from None
    if a.get("simulate") is not None:
        if a.get("source") is not None or a.get("replay") is not None:
            raise ConfigError("command line (--simulate): give one of --simulate, --replay and --source")
        cli["source"]["kind"] = "simulated"
        flags["source.kind"] = "--simulate"
        if a.get("frames") is None:
            cli["source"]["frames"] = a["simulate"]
            flags["source.frames"] = "--simulate"
    if a.get("replay") is not None:
        if a.get("source") is not None:
            raise ConfigError("command line (--replay): give one of --simulate, --replay and --source")
        cli["source"]["kind"] = "replay"
        cli["source"]["replay_path"] = a["replay"]
        flags["source.kind"] = "--replay"
    _folder_cli(a, cli, flags)
    for name, key in (("pva_channel", "pva_channel"), ("pva_ip", "pva_ip"), ("listen", "midas_listen")):
        if a.get(name) is not None:
            cli["source"][key] = a[name]
    for name, kind in (("pva", "pva"), ("midas_socket", "midas_socket")):
        if a.get(name) in (None, False):
            continue
        others = [f"--{o}" for o in ("simulate", "replay", "source", "pva", "midas_socket")
                  if o != name and a.get(o) not in (None, False)]
        if others:
            raise ConfigError(f"command line (--{name.replace('_', '-')}): give one source, not also "
                              f"{others[0].replace('_', '-')}")
        cli["source"]["kind"] = kind
        flags["source.kind"] = f"--{name.replace('_', '-')}"
        if name == "midas_socket":
            cli["source"]["midas_port"] = a[name]
    if extra:
        cli["run"]["overrides"] = list(extra)
    return {s: v for s, v in cli.items() if v}, flags


def _folder_cli(a: dict, cli: dict, flags: dict) -> None:
    """The folder source's options (issue 7) into the command-line layer."""
    chosen = [f for f, name in (("--folder", "folder"), ("--file", "folder_file")) if a.get(name) is not None]
    if chosen:
        others = [f"--{n.replace('_', '-')}" for n in ("simulate", "replay", "source", "pva", "midas_socket")
                  if a.get(n) not in (None, False)]
        if others:
            raise ConfigError(f"command line ({chosen[0]}): give one source, not also {others[0]}")
        cli["source"]["kind"] = "folder"
        flags["source.kind"] = chosen[0]
    if a.get("folder") is not None:
        cli["source"]["folder"] = a["folder"]
    if a.get("folder_file") is not None:
        cli["source"]["file"] = a["folder_file"]
    if a.get("extensions") is not None:
        cli["source"]["extensions"] = [e.strip() for item in a["extensions"] for e in str(item).split(",") if e.strip()]
    for name in ("recursive", "file_count", "idle_timeout", "hdf5_dataset", "watch"):
        if a.get(name) is not None:
            cli["source"][name] = a[name]
    flags.update({"source.folder": "--folder", "source.file": "--file", "source.extensions": "--extension",
                  "source.file_count": "--count",
                  "source.idle_timeout": "--idle-timeout", "source.hdf5_dataset": "--hdf5-dataset"})


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = (), env: Mapping[str, str] = os.environ,
                     require_param_file: bool = True) -> DaemonConfig:
    """:func:`load_config` for parsed command-line ``args`` (``args.config`` the TOML file, may be None)."""
    cli, flags = cli_layer(args, extra)
    return load_config(getattr(args, "config", None), env, cli, flags, require_param_file=require_param_file)

"""The layers merged over the defaults, validated, into one frozen :class:`DaemonConfig`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ringstream.config.schema as schema  # the section classes ("from . import schema" would import the package)

from ..errors import ConfigError
from .layers import DEFAULTS, Layer, cli_values_layer, env_layer, toml_layer, typed_values
from .schema import OPTIONS, SECTIONS
from .validate import problems

PARAM_FILE_REQUIRED = ("--param-file is required (or [run] param_file in the --config file, "
                       "or RINGSTREAM_RUN_PARAM_FILE)")


@dataclass(frozen=True)
class DaemonConfig:
    """Every setting of one daemon run, validated. Build with :func:`load_config`; picklable (sent to children)."""

    run: schema.RunConfig = field(default_factory=schema.RunConfig)
    output: schema.OutputConfig = field(default_factory=schema.OutputConfig)
    source: schema.SourceConfig = field(default_factory=schema.SourceConfig)
    workers: schema.WorkersConfig = field(default_factory=schema.WorkersConfig)
    transport: schema.TransportConfig = field(default_factory=schema.TransportConfig)
    supervisor: schema.SupervisorConfig = field(default_factory=schema.SupervisorConfig)
    fit: schema.FitConfig = field(default_factory=schema.FitConfig)
    logging: schema.LoggingConfig = field(default_factory=schema.LoggingConfig)
    view: schema.ViewConfig = field(default_factory=schema.ViewConfig)
    config_file: str = field(default="", compare=False)  # the TOML file read ("" = none)
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # ("section.key", origin) per key

    def to_dict(self) -> dict[str, dict[str, object]]:
        """``{section: {key: value}}`` with lists for tuples: TOML/JSON-ready, accepted back by :meth:`from_dict`."""
        out: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
        for o in OPTIONS:
            value = getattr(getattr(self, o.section), o.key)
            out[o.section][o.key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, object]], origin: str = "<dict>",
                  require_param_file: bool = False) -> DaemonConfig:
        """A config from ``{section: {key: value}}`` over the defaults (as a TOML file would give), validated."""
        return build([Layer(origin, typed_values(data, lambda s, k: origin, allow_path=True))],
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
            rows = [(f"{key} = {toml_value(value)}", origins.get(f"{section}.{key}", DEFAULTS))
                    for key, value in values.items()]
            width = max(len(r) for r, _ in rows)
            for text, origin in rows:
                lines.append(f"{text:<{width}}  # {origin}" if comments else text)
        return "\n".join(lines) + "\n"

    def describe_sources(self) -> dict[str, str]:
        """``{"workers.count": "environment (RINGSTREAM_WORKERS_COUNT)", ...}``: where each value came from."""
        origins = dict(self.sources)
        return {o.name: origins.get(o.name, DEFAULTS) for o in OPTIONS}

    def override_tokens(self) -> list[str]:
        """``run.overrides`` as parameter-file tokens (each entry split on whitespace)."""
        return [tok for item in self.run.overrides for tok in str(item).split()]

    def load_params(self):
        """The :class:`~ringstream.params.Params` of ``run.param_file`` with ``run.overrides`` applied.

        ConfigError ``--param-file is required`` when none is set; a :class:`~ringstream.errors.ParamError`
        (exit 2, naming file, line and key) propagates as it is.
        """
        from ..params import load_params

        if not self.run.param_file:
            raise ConfigError(PARAM_FILE_REQUIRED)
        return load_params(self.run.param_file, self.override_tokens())


def toml_value(value: object) -> str:
    """One TOML value: bool, int, float, str (basic string) or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = json.dumps(str(value), ensure_ascii=False)
    return text.replace("\x7f", "\\u007f")


def build(layers: Sequence[Layer], require_param_file: bool, config_file: str = "") -> DaemonConfig:
    """Merge ``layers`` (lowest first) over the defaults, validate, and build the DaemonConfig.

    Raises one :class:`~ringstream.errors.ConfigError` naming every problem found.
    """
    cfg: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    for o in OPTIONS:
        cfg[o.section][o.key] = o.default
        origin[(o.section, o.key)] = DEFAULTS
    given: set[tuple[str, str]] = set()
    for layer in layers:
        for (section, key), (value, where) in layer.values.items():
            cfg[section][key] = value
            origin[(section, key)] = where
            given.add((section, key))
    if ("transport", "queue_depth") not in given:  # its default is the ring's size (0 until an auto ring is sized)
        cfg["transport"]["queue_depth"] = cfg["transport"]["ring_slots"]
        if ("transport", "ring_slots") in given:
            origin[("transport", "queue_depth")] = f"{DEFAULTS} (= [transport] ring_slots)"

    found = problems(cfg, origin, given)
    param_file = str(cfg["run"]["param_file"])
    if require_param_file and not param_file:
        found.insert(0, PARAM_FILE_REQUIRED)
    elif param_file and not Path(param_file).is_file():
        what = "is not a file" if Path(param_file).exists() else "does not exist"
        found.insert(0, f"{origin[('run', 'param_file')]}: [run] param_file: parameter file {param_file!r} {what}")
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} configuration problems: " + "; ".join(found))

    sections = {s: cls(**cfg[s]) for s, cls in SECTIONS.items()}
    sources = tuple((o.name, origin[(o.section, o.key)]) for o in OPTIONS if origin[(o.section, o.key)] != DEFAULTS)
    return DaemonConfig(**sections, config_file=config_file, sources=sources)  # type: ignore[arg-type]


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
    ``cli_flags`` (``{"workers.count": "--workers"}``, over each key's flag in the option table) names the options
    in messages. ``require_param_file``: a run needs ``[run] param_file``; it must exist whenever it is given.
    Raises :class:`~ringstream.errors.ConfigError` (exit 2) with one line naming origin and key.
    """
    layers = []
    if config_file is not None and str(config_file) != "":
        layers.append(toml_layer(config_file))
    layers.append(env_layer(env))
    if cli:
        layers.append(cli_values_layer(cli, cli_flags or {}))
    return build(layers, require_param_file, config_file=str(config_file or ""))

"""The precedence layers: a TOML file, the environment and the command line, each read into typed values.

A layer is ``{(section, key): (value, origin)}``; ``origin`` names where the value came from, as every message
does: ``/etc/ringstream/beamline.toml:7``, ``environment (RINGSTREAM_WORKERS_COUNT)``, ``command line
(--workers)``. Types are checked here (the option table says each key's kind); ranges and choices are checked
once the layers are merged (:mod:`.validate`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .schema import ENV_PREFIX, OPTIONS, SECTIONS, option_of, options_of

DEFAULTS = "defaults"
#: the value of a ``devices`` key (``[workers] gpus``) meaning every CUDA device CuPy sees
ALL_DEVICES = "all"

Values = dict[tuple[str, str], tuple[object, str]]


@dataclass
class Layer:
    """One precedence layer: its name and ``{(section, key): (value, origin)}`` of typed values."""

    name: str
    values: Values


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), 1, 0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(origin: str, section: str, key: str) -> ConfigError:
    keys = list(options_of(section))
    hint = did_you_mean(key, keys)
    if not hint:
        elsewhere = [s for s in SECTIONS if key in options_of(s)]
        if elsewhere:
            hint = f"; it belongs in [{elsewhere[0]}]"
    return ConfigError(f"{origin}: [{section}] {key}: unknown key{hint} (keys of [{section}]: {', '.join(keys)})")


def _unknown_section(origin: str, section: str) -> ConfigError:
    hint = did_you_mean(section, list(SECTIONS))
    return ConfigError(f"{origin}: [{section}]: unknown section{hint} (sections: {', '.join(SECTIONS)})")


_NOUN = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list[str]": "a list of strings",
    "list[float]": "a list of numbers",
    "list[int]": "a list of integers",
    "devices": "a list of integers or \"all\"",
}
_TEXT_NOUN = {
    "bool": "1/0/true/false/yes/no/on/off",
    "list[str]": "comma-separated strings",
    "list[float]": "comma-separated numbers",
    "list[int]": "comma-separated integers",
    "devices": "comma-separated integers or all",
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
    elif kind == "devices":
        if isinstance(value, str) and value.strip().lower() == ALL_DEVICES:
            return ALL_DEVICES
        return _coerce(value, "list[int]", allow_path)
    raise ValueError(kind)


def describe_value(value: object) -> str:
    """A value as messages quote it (``true``, ``'x'``, ``[1, 2]``), cut to 60 characters."""
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def typed_values(data: Mapping[str, object], origin_of: Callable[[str, str | None], str], allow_path: bool) -> Values:
    """Check sections, keys and types of ``{section: {key: value}}``; ``origin_of(section, key)`` names the place."""
    out: Values = {}
    for section, table in data.items():
        if section not in SECTIONS:
            if not isinstance(table, Mapping):
                elsewhere = [s for s in SECTIONS if section in options_of(s)]
                hint = f"; did you mean [{elsewhere[0]}] {section}?" if elsewhere else ""
                raise ConfigError(f"{origin_of(section, None)}: {section!r}: keys belong in a section "
                                  f"({', '.join(f'[{s}]' for s in SECTIONS)}){hint}")
            raise _unknown_section(origin_of(section, None), section)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin_of(section, None)}: [{section}]: expected a table of keys, "
                              f"got {describe_value(table)}")
        options = options_of(section)
        for key, value in table.items():
            origin = origin_of(section, key)
            if key not in options:
                raise _unknown_key(origin, section, key)
            if value is None:  # "not given" (argparse defaults)
                continue
            o = options[key]
            try:
                out[(section, key)] = (_coerce(value, o.kind, allow_path), origin)
            except ValueError:
                raise ConfigError(f"{origin}: {o.label}: expected {_NOUN[o.kind]}, "
                                  f"got {describe_value(value)}") from None
    return out


# --------------------------------------------------------------------------------------------------- TOML file

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


def toml_layer(config_file: str | os.PathLike) -> Layer:
    """The TOML file's values; relative input paths (the table's ``path`` keys) resolved next to the file."""
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

    values = typed_values(data, origin_of, allow_path=False)
    base = path.absolute().parent
    for o in OPTIONS:
        if o.path and (o.section, o.key) in values:
            raw, origin = values[(o.section, o.key)]
            values[(o.section, o.key)] = (_resolve_input(str(raw), base), origin)
    return Layer(str(path), values)


# --------------------------------------------------------------------------------------------------- text values

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def from_text(text: str, kind: str) -> object:
    """A string (an environment variable, a command-line list) as ``kind``; ValueError if it does not read as one.

    Booleans are ``1/0/true/false/yes/no/on/off``; lists are comma-separated, blank items dropped; devices are a
    list of integers or ``all``.
    """
    s = text.strip()
    if kind == "devices":
        return ALL_DEVICES if s.lower() == ALL_DEVICES else from_text(text, "list[int]")
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
    return tuple(from_text(item, kind[5:-1]) for item in items if item)


def text_noun(section: str, key: str) -> str:
    """What text for ``[section] key`` must look like, for messages."""
    o = option_of(section, key)
    return o.expected or _TEXT_NOUN.get(o.kind, _NOUN[o.kind])


# --------------------------------------------------------------------------------------------------- environment


def env_layer(env: Mapping[str, str]) -> Layer:
    """The ``RINGSTREAM_<SECTION>_<KEY>`` variables of ``env``; an empty one counts as unset.

    A variable naming a section but no key of it is an error (a typo in an EnvironmentFile must not be ignored);
    other ``RINGSTREAM_*`` variables (``RINGSTREAM_CACHE_DIR``) are left alone.
    """
    names = {o.env: o for o in OPTIONS}
    values: Values = {}
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
        o = names[var]
        try:
            values[(o.section, o.key)] = (from_text(text, o.kind), origin)
        except ValueError:
            raise ConfigError(f"{origin}: {o.label}: expected {text_noun(o.section, o.key)}, "
                              f"got {describe_value(text)}") from None
    return Layer("environment", values)


# --------------------------------------------------------------------------------------------------- command line


def cli_values_layer(cli: Mapping[str, Mapping[str, object]], flags: Mapping[str, str]) -> Layer:
    """Already-typed command-line values ``{section: {key: value}}``; ``flags`` (``{"workers.count": "--workers"}``)
    names the option that gave each, over the table's own flag of the key."""

    def origin_of(section: str, key: str | None) -> str:
        if key is None:
            return "command line"
        name = f"{section}.{key}"
        if name in flags:
            return f"command line ({flags[name]})"
        try:
            return f"command line ({option_of(section, key).flag})"
        except KeyError:  # an unknown key: typed_values reports it
            return f"command line (--{key.replace('_', '-')})"

    return Layer("command line", typed_values(cli, origin_of, allow_path=True))

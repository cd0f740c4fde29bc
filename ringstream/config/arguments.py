"""The configuration options of ``ringstream run`` and ``ringstream check-config``, made from the option table.

Each key with ``flags`` in the table becomes one argparse option (help text, metavar and group from its row); the
parsed values become the command-line layer of :func:`~.load.load_config`. A few flags choose the source
(``[source] kind``): ``--source KIND`` itself, the flags of keys that only one source uses (``--replay PATH``,
``--folder DIR``, ``--file PATH``, ``--midas-socket [PORT]``) and two that are no key's flag (:data:`SWITCHES`:
``--simulate N``, ``--pva``). At most one source may be chosen.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .layers import from_text, text_noun
from .load import DaemonConfig, load_config, toml_value
from .schema import OPTIONS, SECTIONS, Option

#: the --help group of each ``Option.group``
GROUPS = {
    "": "configuration (over --config, over RINGSTREAM_<SECTION>_<KEY>)",
    "folder": "folder input: --folder DIR or --file PATH",
    "live": "live detector input",
}
_CLASSIC = ("--simulate", "--replay", "--source")  # the first three ways to choose a source, one message


@dataclass(frozen=True)
class Switch:
    """A flag that chooses the source without being a key's own flag; ``key``: the [source] key its value sets."""

    flag: str
    kind: str
    help: str
    group: str = ""
    key: str = ""
    metavar: str = ""

    @property
    def dest(self) -> str:
        return "switch_" + self.flag[2:].replace("-", "_")


SWITCHES = (
    Switch("--simulate", "simulated", "simulated frames, N of them (0 = until stopped); --frames wins "
           "([source] kind = simulated, frames)", key="frames", metavar="N"),
    Switch("--pva", "pva", "EPICS PVA NTNDArray stream ([source] kind = pva; needs --pva-channel)", group="live"),
)


def dest(o: Option) -> str:
    """The argparse destination of an option's flags."""
    return f"{o.section}_{o.key}"


def flag_help(o: Option) -> str:
    """The ``--help`` text of an option's flags: its description and what it sets."""
    if o.kind == "bool":
        sets = f"{o.label} = {toml_value(not o.default)}"
    elif o.selects:
        sets = f"[{o.section}] kind = {o.selects}, {o.key}"
    else:
        sets = o.label
    return f"{o.describe()} ({sets})"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``ringstream run`` and ``ringstream check-config`` (every default None = not given)."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    groups[""].add_argument("--config", metavar="FILE.toml", help="daemon configuration file (TOML)")
    for s in SWITCHES:
        if s.key:
            groups[s.group].add_argument(s.flag, dest=s.dest, type=int, metavar=s.metavar, help=s.help)
        else:
            groups[s.group].add_argument(s.flag, dest=s.dest, action="store_true", default=None, help=s.help)
    for o in OPTIONS:
        if not o.flags:
            continue
        kw: dict[str, object] = {"dest": dest(o), "help": flag_help(o).replace("%", "%%")}
        if o.kind == "bool":
            kw.update(action="store_const", const=not o.default)
        else:
            kw["metavar"] = o.metavar
            if o.kind.startswith("list[") or o.kind == "devices":
                kw["action"] = "append"  # repeatable, each comma-separated
            else:
                kw["type"] = {"int": int, "float": float, "str": str}[o.kind]
            if o.optional_value:
                kw.update(nargs="?", const=o.default)
        groups[o.group].add_argument(*o.flags, **kw)  # type: ignore[arg-type]


def _chosen_kind(a: Mapping[str, object]) -> tuple[str, str] | None:
    """``(kind, flag)`` of the source the flags choose, None if none does; ConfigError if they choose several."""
    chosen = [(s.flag, s.kind) for s in SWITCHES if a.get(s.dest) not in (None, False)]
    chosen += [(o.flag, o.selects or str(a[dest(o)])) for o in OPTIONS
               if (o.selects or o.name == "source.kind") and a.get(dest(o)) is not None]
    classic = [flag for flag in _CLASSIC if flag in dict(chosen)]
    if len(classic) > 1:
        raise ConfigError(f"command line ({classic[0]}): give one of --simulate, --replay and --source")
    for flag, kind in chosen:
        if flag in _CLASSIC:
            continue
        # --folder and --file choose the same source and go together; --source beside any other is a second choice
        others = [f for f, k in chosen if f != flag and (k != kind or "--source" in (f, flag))]
        if others:
            raise ConfigError(f"command line ({flag}): give one source, not also {others[0]}")
    return (chosen[0][1], chosen[0][0]) if chosen else None


def cli_layer(args: argparse.Namespace, extra: Sequence[str] = ()) -> tuple[dict, dict]:
    """``(cli, cli_flags)`` for :func:`~.load.load_config` from the options of :func:`add_config_arguments`.

    ``extra``: trailing ``Key Value`` parameter overrides (they replace ``[run] overrides``).
    """
    a = vars(args)
    cli: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
    flags: dict[str, str] = {}
    for o in OPTIONS:
        value = a.get(dest(o)) if o.flags else None
        if value is None:
            continue
        if o.kind.startswith("list[") or o.kind == "devices":
            text = ",".join(str(v) for v in value)  # type: ignore[union-attr]
            try:
                value = from_text(text, o.kind)
                value = list(value) if isinstance(value, tuple) else value
            except ValueError:
                raise ConfigError(f"command line ({o.flag}): expected {text_noun(o.section, o.key)}, "
                                  f"got {text!r}") from None
        cli[o.section][o.key] = value
        flags[o.name] = o.flag
    chosen = _chosen_kind(a)
    if chosen is not None:
        cli["source"]["kind"], flags["source.kind"] = chosen
    for s in SWITCHES:
        if s.key and a.get(s.dest) is not None and s.key not in cli["source"]:
            cli["source"][s.key] = a[s.dest]
            flags[f"source.{s.key}"] = s.flag
    if extra:
        cli["run"]["overrides"] = list(extra)
        flags["run.overrides"] = "Key Value overrides"
    return {s: v for s, v in cli.items() if v}, flags


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = (), env: Mapping[str, str] = os.environ,
                     require_param_file: bool = True) -> DaemonConfig:
    """:func:`~.load.load_config` for parsed command-line ``args`` (``args.config`` the TOML file, may be None)."""
    cli, flags = cli_layer(args, extra)
    return load_config(args.config, env, cli, flags, require_param_file=require_param_file)

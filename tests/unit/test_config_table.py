"""The option table is the one declaration of every setting: systemd/example.toml, the --help of ``ringstream run``
and ``check-config``, the environment names and the command-line flags must all agree with it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ringstream.config import OPTIONS, SECTIONS, DaemonConfig, add_config_arguments, cli_layer, load_config
from ringstream.config.arguments import SWITCHES, flag_help
from ringstream.config.example import example_toml
from ringstream.daemon.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(30)

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "example.toml"
#: options of run / check-config that are not the table's: help, verbose, the file, the source switches, the cache
NOT_KEYS = {"-h", "--help", "-v", "--verbose", "--config", "--cache-dir", "--json"} | {s.flag for s in SWITCHES}


def _subparser(name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_committed_example_toml_is_the_generated_one():
    assert EXAMPLE.read_text() == example_toml(), \
        "systemd/example.toml differs from the option table: python -m ringstream.config.example > systemd/example.toml"


def test_example_toml_shows_every_key_with_its_default_or_an_example():
    data = tomllib.loads(EXAMPLE.read_text())
    assert list(data) == list(SECTIONS)
    for o in OPTIONS:
        shown = data[o.section].pop(o.key)
        expected = o.default if o.example is None else o.example
        assert shown == (list(expected) if isinstance(expected, tuple) else expected), o.name
    assert all(not rest for rest in data.values()), data
    assert DaemonConfig().to_dict().keys() == data.keys()


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_help_lists_every_flag_of_the_table_with_its_help(command):
    parser = _subparser(command)
    text = " ".join(parser.format_help().split())
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    declared = set(NOT_KEYS)
    for o in OPTIONS:
        for flag in o.flags:
            action = by_flag[flag]
            assert action.dest == f"{o.section}_{o.key}" and tuple(action.option_strings) == o.flags, o.name
            assert action.help.replace("%%", "%") == flag_help(o)
            declared.add(flag)
        if o.flags:
            assert " ".join(flag_help(o).split()) in text, o.name
    assert set(by_flag) <= declared, set(by_flag) - declared  # no flag outside the table


def test_every_flag_sets_its_key():
    samples = {"int": ("3", 3), "float": ("1.5", 1.5), "str": ("x", "x"), "list[str]": ("a,b", ["a", "b"]),
               "list[int]": ("0,1", [0, 1]), "list[float]": ("1,2", [1.0, 2.0]), "devices": ("0,1", [0, 1])}
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    for o in OPTIONS:
        for flag in o.flags:
            text, expected = (None, not o.default) if o.kind == "bool" else samples[o.kind]
            cli, flags = cli_layer(parser.parse_args([flag] if text is None else [flag, text]))
            assert cli[o.section][o.key] == expected and flags[o.name] == o.flag, o.name
            if o.selects:
                assert cli["source"]["kind"] == o.selects and flags["source.kind"] == o.flag


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def test_every_key_reads_from_its_environment_variable():
    env = {o.env: _text(o.default) for o in OPTIONS}
    cfg = load_config(None, env, require_param_file=False)
    assert cfg == DaemonConfig()
    origins = cfg.describe_sources()
    for o in OPTIONS:
        if env[o.env]:  # an empty variable counts as unset
            assert origins[o.name] == f"environment ({o.env})", o.name

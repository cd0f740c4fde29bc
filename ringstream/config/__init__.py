"""Daemon configuration (TOML file + environment + command line) -> one frozen, validated :class:`DaemonConfig`.

Every option is declared once, in the option table (:mod:`.schema`: a field of a frozen section dataclass with its
default, type, help, flags, choices and limits); the rest is derived from it. ``systemd/example.toml`` lists every
section and key with its default and meaning (generated: ``python -m ringstream.config.example``).

Precedence, lowest first: the table's defaults < the TOML file (``--config``) < the environment
(``RINGSTREAM_<SECTION>_<KEY>``, e.g. ``RINGSTREAM_WORKERS_COUNT=4``) < the command line. A later layer replaces a
key's value (lists included: command-line ``overrides`` replace the file's). Sections: ``[run]``, ``[output]``,
``[source]``, ``[workers]``, ``[transport]``, ``[supervisor]``, ``[fit]``, ``[logging]``, ``[view]`` (what each holds:
:mod:`.schema`).

Strings that name nothing yet are ``""`` (TOML has no null). Environment values are text: integers and numbers as
written, booleans ``1/0/true/false/yes/no/on/off``, lists comma-separated (``RINGSTREAM_RUN_OVERRIDES="RBinSize
0.5,EtaBinSize 10"``); an empty variable counts as unset. A ``RINGSTREAM_<SECTION>_<KEY>`` variable naming a
section but no key of it is an error (a typo in an EnvironmentFile must not be ignored); other ``RINGSTREAM_*``
variables (``RINGSTREAM_CACHE_DIR``) are left alone. Relative input paths in the TOML file (``param_file``,
``dark``, ``replay_path``, ``folder``, ``file``) are resolved against the file's folder when they exist there, else
they are kept (relative to the working directory), as ``params.py`` does for paths in a parameter file.

Every error is a :class:`~ringstream.errors.ConfigError` (exit 2) with a one-line message naming where the value
came from (``/etc/ringstream/beamline.toml:7``, ``environment (RINGSTREAM_WORKERS_COUNT)``, ``command line
(--workers)``, ``defaults``), the key (``[workers] count``) and what was expected. Problems found after the layers
are merged are reported together on that one line.

Modules: :mod:`.schema` the table and the section dataclasses, :mod:`.layers` reading the file, environment and
command-line values, :mod:`.validate` the checks, :mod:`.load` merging them into :class:`DaemonConfig`,
:mod:`.arguments` the argparse options, :mod:`.example` the example file.
"""

from .arguments import add_config_arguments, cli_layer, config_from_args
from .load import DaemonConfig, load_config
from .schema import (
    OPTIONS,
    SECTIONS,
    FitConfig,
    LoggingConfig,
    Option,
    OutputConfig,
    RunConfig,
    SourceConfig,
    SupervisorConfig,
    TransportConfig,
    ViewConfig,
    WorkersConfig,
)

__all__ = [
    "OPTIONS",
    "SECTIONS",
    "DaemonConfig",
    "FitConfig",
    "LoggingConfig",
    "Option",
    "OutputConfig",
    "RunConfig",
    "SourceConfig",
    "SupervisorConfig",
    "TransportConfig",
    "ViewConfig",
    "WorkersConfig",
    "add_config_arguments",
    "cli_layer",
    "config_from_args",
    "load_config",
]

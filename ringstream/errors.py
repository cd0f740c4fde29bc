"""One root exception class and the documented exit codes of the CLI.

Every error a user can cause is a :class:`RingstreamError` (or a subclass) whose message is one line naming the
file, key or frame at fault and what was expected. The CLI prints that line on stderr and exits with the class's
``exit_code``; ``-v`` adds the traceback.

Exit codes (also in the README):

====  ======================================================================
0     success
1     internal error (a bug: please report it with the ``-v`` traceback)
2     bad parameter file, configuration or command line
3     bad input data: unreadable image, mask or dark of the wrong shape
4     map problem: a MIDAS map that does not match the parameters, a corrupt cache
====  ======================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_MAP = 4


class RingstreamError(Exception):
    """Root of every error ringstream reports to a user."""

    exit_code = EXIT_INTERNAL


class ParamError(RingstreamError):
    """A parameter file (or a `Key Value` override) is malformed, inconsistent or incomplete."""

    exit_code = EXIT_CONFIG


class ConfigError(RingstreamError):
    """The daemon configuration (TOML, environment, command line) is invalid."""

    exit_code = EXIT_CONFIG


class InputError(RingstreamError):
    """An input file (image, dark, mask, distortion map) cannot be read or has the wrong shape or size."""

    exit_code = EXIT_INPUT


class OutputExists(InputError):
    """An output file exists and may not be replaced. ``how`` says what the user can do: the default is the
    remedy of the commands that can replace files (``integrate``, ``export``); ``ringstream run`` never
    replaces results and says so instead."""

    def __init__(self, path: object, how: str = "pass --overwrite to replace it") -> None:
        self.path = path
        super().__init__(f"{path}: output file already exists; {how}")


class MapError(RingstreamError):
    """An integration map cannot be used: stale MIDAS map, corrupt cache file, inconsistent layout."""

    exit_code = EXIT_MAP

"""Runs: the naming, numbering and index of the runs a service writes (below every process role).

A run is one acquisition and one set of output files. :mod:`.naming` turns the ``[run]`` output templates into
the paths of one run and picks the next run number whose files do not exist; :mod:`.state` keeps the run number
across restarts; :mod:`.index` appends one line per run event to ``runs.jsonl``. Imports no process role.
"""

from .index import INDEX_FILE, STATUSES, RunIndex
from .naming import (
    OutputFolderError,
    OutputTemplate,
    RunPaths,
    RunTemplates,
    choose_run,
    make_folders,
    numbered,
    resolve_run_paths,
)
from .state import RunState, RunStateError, state_dir_of

__all__ = [
    "INDEX_FILE",
    "STATUSES",
    "OutputFolderError",
    "OutputTemplate",
    "RunIndex",
    "RunPaths",
    "RunState",
    "RunStateError",
    "RunTemplates",
    "choose_run",
    "make_folders",
    "numbered",
    "resolve_run_paths",
    "state_dir_of",
]

"""Output file names of runs: the templates of ``[run] output_h5``, ``zarr_output`` and ``midas_binaries``, the
paths of one run, and the choice of the next run number whose files do not exist yet.

A template is a path with fields in braces (Python format syntax): ``{run}`` the run number (an int: format specs
such as ``{run:05d}`` work), ``{name}`` the run's name ("" when unnamed), ``{date}`` YYYYMMDD and ``{time}``
HHMMSS of the run's start (local time), ``{run_id}`` the run identifier, and ``{attr[NAME]}`` the value of the
NDAttribute (or metadata key) NAME of the run's first frame. ``{{`` and ``}}`` are literal braces.

An output without ``{run}`` or ``{run_id}`` that the service needs for a second run gets ``_{run:05d}`` before its
suffix (``ringstream.h5`` -> ``ringstream_00007.h5``; ``.zarr.zip`` counts as one suffix; a folder gets it at the
end). Existing files are never overwritten: :func:`choose_run` moves on to the next run number instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, InputError, RingstreamError

log = logging.getLogger(__name__)

__all__ = [
    "FIELDS", "MIDAS_BINARIES", "OutputFolderError", "OutputTemplate", "RunPaths", "RunTemplates", "choose_run",
    "make_folders", "numbered", "resolve_run_paths",
]

#: the plain fields of a template; ``attr[NAME]`` comes on top
FIELDS = ("run", "name", "date", "time", "run_id")
KNOWN = "run, name, date, time, run_id, attr[NAME]"
#: what a missing ``{attr[NAME]}`` renders as
MISSING_ATTR = "unknown"
#: the files the writer puts in the MIDAS binaries folder (docs/MIDAS-FORMATS.md), besides fit.bin and
#: fit_curves.bin
MIDAS_BINARIES = ("lineout.bin", "Int2D.bin", "RTthEtaAreaMap.bin")
FIT_BIN, FIT_CURVES_BIN = "fit.bin", "fit_curves.bin"
#: suffixes made of two parts, kept whole when ``_{run:05d}`` goes in front of the suffix
COMPOUND_SUFFIXES = (".zarr.zip",)
#: a value of each field to try format specs on at check time (an attribute may be a number or text)
_SAMPLES: dict[str, tuple[Any, ...]] = {"run": (1,), "name": ("x",), "date": ("20260101",), "time": ("120000",),
                                        "run_id": ("x",), "attr": (1, 1.5, "x")}
_MAX_TRIES = 100_000  # run numbers tried before giving up (only a broken file system gets there)


class RunNumbers(Protocol):
    """What :func:`choose_run` needs of the run state: a new run number each call, never one given before."""

    def next_number(self) -> int: ...


class OutputFolderError(InputError):
    """An output or state folder cannot be created or written; the message names the folder and the OS reason."""


class OutputTemplate:
    """One output path template (see the module docstring), checked when made.

    ``text`` the template; ``key`` the configuration key it came from, named in every error
    (``"[run] output_h5"``); ``folder`` true for a folder template (``midas_binaries``: no suffix).
    Raises :class:`~ringstream.errors.ConfigError` for an unknown field, a bad format spec or a malformed template.
    """

    def __init__(self, text: str, key: str = "[run] output_h5", *, folder: bool = False) -> None:
        self.text = str(text)
        self.key = key
        self.folder = folder
        self.pieces = self.check()

    def __repr__(self) -> str:
        return f"OutputTemplate({self.text!r}, key={self.key!r})"

    def _error(self, what: str) -> ConfigError:
        return ConfigError(f"{self.key}: {what} in {self.text!r}")

    def check(self) -> list[tuple[str, str | None, str, str | None]]:
        """The template as ``(literal, field, format_spec, attr_name)`` pieces (field None: text only);
        ConfigError naming the key if a field is unknown, a spec does not fit its field or the text is malformed."""
        if not self.text.strip():
            raise ConfigError(f"{self.key}: expected a path template, got an empty string")
        if not self.folder and self.text.endswith(("/", "/.", "/..")):
            raise self._error("no file name")
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as exc:
            raise self._error(f"malformed template ({exc}; write {{{{ and }}}} for literal braces)") from None
        pieces = []
        for literal, field, spec, conversion in parsed:
            if field is None:
                pieces.append((literal, None, "", None))
                continue
            base, attr = field, None
            if field.startswith("attr[") and field.endswith("]") and len(field) > 6:
                base, attr = "attr", field[5:-1]
            if base not in _SAMPLES or (base == "attr" and attr is None):
                what = f"unknown field {{{field}}}" if field else "empty field {}"
                raise ConfigError(f"{self.key}: {what} in {self.text!r}; known: {KNOWN}")
            if conversion is not None:
                raise self._error(f"conversion !{conversion} in {{{field}}} is not supported")
            if "{" in (spec or ""):
                raise self._error(f"nested field in the format spec of {{{field}}}")
            if spec and not any(_formats(v, spec) for v in _SAMPLES[base]):
                raise self._error(f"bad format spec {{{field}:{spec}}}")
            pieces.append((literal, base, spec or "", attr))
        return pieces

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the template uses, in order (``attr[NAME]`` as written)."""
        return tuple(f"attr[{a}]" if f == "attr" else f for _, f, _, a in self.pieces if f is not None)

    @property
    def has_run_field(self) -> bool:
        """True when the template names ``{run}`` or ``{run_id}``: each run gets its own name."""
        return any(f in ("run", "run_id") for _, f, _, _ in self.pieces)

    @property
    def has_run_number(self) -> bool:
        """True when the template names ``{run}``."""
        return any(f == "run" for _, f, _, _ in self.pieces)

    @property
    def is_fixed(self) -> bool:
        """True when the template has no field at all (a plain file name)."""
        return all(f is None for _, f, _, _ in self.pieces)

    def fixed_folder(self) -> Path:
        """The folder of the template's fixed part: the leading folders before the first field
        (``/data/rs/{date}/run_{run}.h5`` -> ``/data/rs``; ``run_{run}.h5`` -> ``.``)."""
        prefix = ""
        for literal, f, _, _ in self.pieces:
            prefix += literal
            if f is not None:
                break
        else:
            if self.folder:
                return Path(prefix)
        head = prefix.rpartition("/")[0] if "/" in prefix else "."
        return Path(head or "/")

    def render(self, run: int, name: str = "", run_id: str = "", when: dt.datetime | None = None,
               attrs: Mapping[str, Any] | None = None) -> Path:
        """The path of run ``run``: ``name`` the run's name; ``run_id`` its identifier; ``when`` its start (default:
        now; a naive datetime is local time); ``attrs`` the NDAttribute / metadata values of its first frame.
        A missing ``attr[NAME]`` renders as ``"unknown"``; in every value, ``/`` and NUL become ``_`` and so does
        a leading dot, so a value never adds a folder or hides the file; an empty value never makes a relative
        template absolute (``{name}/x.h5`` of an unnamed run is ``x.h5``)."""
        when = when or dt.datetime.now()
        values = {"run": int(run), "name": str(name), "run_id": str(run_id), "date": when.strftime("%Y%m%d"),
                  "time": when.strftime("%H%M%S")}
        attrs = attrs or {}
        out = []
        for literal, f, spec, attr in self.pieces:
            out.append(literal)
            if f is None:
                continue
            value = attrs.get(attr, MISSING_ATTR) if f == "attr" else values[f]
            try:
                text = format(value, spec)
            except (TypeError, ValueError):
                text = str(value)  # an attribute whose value does not fit the spec: its plain text
            out.append(_file_name_safe(text))
        path = Path("".join(out))
        if path.is_absolute() and not self.text.startswith("/"):
            # an empty value at the start ({name} of an unnamed run): the path stays relative, never at the root
            path = Path(*path.parts[1:]) if len(path.parts) > 1 else Path(".")
        return path


def _formats(value: Any, spec: str) -> bool:
    try:
        format(value, spec)
        return True
    except (TypeError, ValueError):
        return False


def _file_name_safe(text: str) -> str:
    """``text`` with ``/`` and NUL replaced by ``_``, and a leading dot too."""
    text = text.replace("/", "_").replace("\0", "_")
    return "_" + text[1:] if text.startswith(".") else text


def numbered(path: Path, run: int, folder: bool = False) -> Path:
    """``path`` with ``_{run:05d}`` before its suffix (``a.h5`` -> ``a_00007.h5``, ``a.zarr.zip`` ->
    ``a_00007.zarr.zip``), or at the end of a folder's name."""
    name = path.name
    suffix = "" if folder else next((s for s in COMPOUND_SUFFIXES if name.endswith(s) and name != s), path.suffix)
    stem = name[: len(name) - len(suffix)]
    return path.with_name(f"{stem}_{run:05d}{suffix}")


def stem_of(path: Path) -> str:
    """The file name without its suffix (``run_00007.h5`` -> ``run_00007``)."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Every output path of one run.

    ``h5`` the NeXus file; ``zarr`` the GSAS-II zarr.zip (None: none); ``midas_dir`` the folder of the MIDAS
    binaries (None: none); ``stem`` the h5's name without suffix; ``fit_bin`` / ``fit_curves_bin`` where fit.bin
    and fit_curves.bin go when fitting: in ``midas_dir`` when there is one, else beside the h5 -- as ``fit.bin``
    and ``fit_curves.bin`` for a template with no field at all in its plain form, else as ``STEM_fit.bin`` and
    ``STEM_fit_curves.bin``, so that runs sharing a folder never share these files.
    """

    h5: Path
    zarr: Path | None
    midas_dir: Path | None
    stem: str
    fit_bin: Path
    fit_curves_bin: Path

    def all_files(self) -> tuple[Path, ...]:
        """Every file the run may create: the h5, the zarr.zip, fit.bin, fit_curves.bin and the MIDAS binaries."""
        out = [self.h5] + ([self.zarr] if self.zarr is not None else []) + [self.fit_bin, self.fit_curves_bin]
        if self.midas_dir is not None:
            out += [self.midas_dir / n for n in MIDAS_BINARIES]
        return tuple(out)

    def existing(self) -> list[Path]:
        """The files of :meth:`all_files` that exist."""
        return [p for p in self.all_files() if os.path.lexists(p)]

    def folders(self) -> tuple[Path, ...]:
        """The folders the run writes into, each once."""
        found = [p.parent for p in self.all_files()]
        return tuple(dict.fromkeys(found))

    def as_record(self) -> dict[str, str]:
        """``{"h5": ..., "zarr": ..., "midas_dir": ...}`` as text, for the index of runs (absent: none)."""
        out = {"h5": str(self.h5)}
        if self.zarr is not None:
            out["zarr"] = str(self.zarr)
        if self.midas_dir is not None:
            out["midas_dir"] = str(self.midas_dir)
        return out


@dataclasses.dataclass(frozen=True)
class RunTemplates:
    """The output templates of the ``[run]`` section, checked: ``h5`` from ``output_h5``; ``zarr`` from
    ``zarr_output`` (None: beside the h5, or no zarr.zip when ``no_zarr``); ``midas`` from ``midas_binaries``
    (None: no MIDAS binaries)."""

    h5: OutputTemplate
    zarr: OutputTemplate | None
    midas: OutputTemplate | None
    no_zarr: bool

    @classmethod
    def from_config(cls, run_cfg: Any) -> RunTemplates:
        """The templates of the frozen ``[run]`` section (ConfigError naming the key of a bad one)."""
        zarr = run_cfg.zarr_output
        midas = run_cfg.midas_binaries
        return cls(OutputTemplate(run_cfg.output_h5, "[run] output_h5"),
                   OutputTemplate(zarr, "[run] zarr_output") if zarr else None,
                   OutputTemplate(midas, "[run] midas_binaries", folder=True) if midas else None,
                   bool(run_cfg.no_zarr))

    def resolve(self, run: int, name: str = "", run_id: str = "", when: dt.datetime | None = None,
                attrs: Mapping[str, Any] | None = None, number: str = "needed") -> RunPaths:
        """The paths of run ``run``. ``number`` says which outputs get ``_{run:05d}``: ``"never"`` (the plain
        names), ``"needed"`` (those without ``{run}`` / ``{run_id}``) or ``"no_run"`` (those without ``{run}``:
        when ``run_id`` does not change between runs)."""
        when = when or dt.datetime.now()

        def path(t: OutputTemplate) -> Path:
            p = t.render(run, name, run_id, when, attrs)
            wanted = {"never": False, "needed": not t.has_run_field, "no_run": not t.has_run_number}[number]
            return numbered(p, run, t.folder) if wanted else p

        h5 = path(self.h5)
        stem = stem_of(h5)
        zarr = None if self.no_zarr else (path(self.zarr) if self.zarr else h5.with_name(f"{stem}.zarr.zip"))
        midas = path(self.midas) if self.midas else None
        return self._with_fit(h5, zarr, midas, self.h5.is_fixed and h5 == self.h5.render(run))

    def recorded(self, run: int, files: Mapping[str, str]) -> RunPaths:
        """The paths of run ``run`` from its ``files`` in the index of runs (absolute paths), where fit.bin goes
        included (a replacement writer continues the run in them)."""
        h5 = Path(files["h5"])
        zarr = Path(files["zarr"]) if files.get("zarr") else None
        midas = Path(files["midas_dir"]) if files.get("midas_dir") else None
        plain = self.h5.is_fixed and h5 == Path(os.path.abspath(self.h5.render(run)))
        return self._with_fit(h5, zarr, midas, plain)

    @staticmethod
    def _with_fit(h5: Path, zarr: Path | None, midas: Path | None, plain: bool) -> RunPaths:
        """The RunPaths of these outputs: fit.bin and fit_curves.bin in ``midas``, else beside the h5 (their plain
        names when ``plain``: a template with no field, unnumbered; else after the h5's stem)."""
        stem = stem_of(h5)
        if midas is not None:
            fit, curves = midas / FIT_BIN, midas / FIT_CURVES_BIN
        elif plain:
            fit, curves = h5.with_name(FIT_BIN), h5.with_name(FIT_CURVES_BIN)
        else:
            fit, curves = h5.with_name(f"{stem}_{FIT_BIN}"), h5.with_name(f"{stem}_{FIT_CURVES_BIN}")
        return RunPaths(h5, zarr, midas, stem, fit, curves)


def resolve_run_paths(run_cfg: Any, run: int, name: str = "", run_id: str = "", when: dt.datetime | None = None,
                      attrs: Mapping[str, Any] | None = None, multi_run: bool = True) -> RunPaths:
    """The paths of run ``run`` from the ``[run]`` section ``run_cfg`` (``output_h5``, ``zarr_output``,
    ``no_zarr``, ``midas_binaries``). The zarr.zip follows the h5's stem unless ``zarr_output`` is set; with
    ``multi_run`` every output without ``{run}`` / ``{run_id}`` gets ``_{run:05d}`` before its suffix."""
    return RunTemplates.from_config(run_cfg).resolve(run, name, run_id, when, attrs,
                                                     "needed" if multi_run else "never")


def make_folders(paths: RunPaths) -> None:
    """Create the run's folders (``mkdir -p``) and check each can be written (a file is created and removed);
    :class:`OutputFolderError` naming the folder and the OS reason if not."""
    for folder in paths.folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".ringstream-write-check-"):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OutputFolderError(f"{folder}: output folder cannot be created or written ({reason})") from None


def choose_run(templates: RunTemplates, state: RunNumbers, *, multi_run: bool, name: str = "",
               run_id: str = "", when: dt.datetime | None = None, attrs: Mapping[str, Any] | None = None,
               create: bool = True) -> tuple[int, RunPaths]:
    """The next run: its number and paths, none of whose files exist.

    ``state`` reserves the run numbers (a :class:`~ringstream.runs.state.RunState`).
    Without ``multi_run`` the plain names are used when none of their files exist; otherwise, and with
    ``multi_run``, outputs without ``{run}`` / ``{run_id}`` get ``_{run:05d}``. A number whose files exist is
    skipped (never overwritten) and the next one tried; the skipped numbers are logged once. With ``create``
    the folders are created and checked (:func:`make_folders`; :class:`OutputFolderError` if one cannot be
    written). ``when`` defaults to now.
    """
    when = when or dt.datetime.now()
    skipped: list[int] = []
    first_existing: Path | None = None
    number = "needed" if multi_run else "never"
    previous: RunPaths | None = None
    for _ in range(_MAX_TRIES):
        run = state.next_number()
        paths = templates.resolve(run, name, run_id, when, attrs, number)
        existing = paths.existing()
        if existing and number == "never":
            number = "needed"  # the plain names are taken: the numbered ones, with this same number
            paths = templates.resolve(run, name, run_id, when, attrs, number)
            existing = paths.existing()
        if existing and paths == previous:
            number = "no_run"  # only {run_id} names the run and it does not change: number the names
            paths = templates.resolve(run, name, run_id, when, attrs, number)
            existing = paths.existing()
        if not existing:
            if skipped:
                log.warning("run numbers %s skipped: their files exist (first %s); existing files are never "
                            "replaced", _ranges(skipped), first_existing)
            if create:
                make_folders(paths)
            return run, paths
        skipped.append(run)
        first_existing = first_existing or existing[0]
        previous = paths
    raise RingstreamError(f"{templates.h5.key}: no free run number in {_MAX_TRIES} tries (first taken: "
                          f"{first_existing})")


def _ranges(numbers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(out)

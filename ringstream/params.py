"""MIDAS parameter files -> one typed, validated, frozen :class:`Params`.

The reader accepts everything any MIDAS reader accepts (docs/MIDAS-FORMATS.md section 1):

- one ``Key value [value ...]`` per line, separated by any whitespace; keys are case-sensitive;
- ``#`` starts a comment anywhere on a line; blank lines are ignored; a trailing ``;`` on a value is dropped;
- a scalar key given twice: the last one wins; ``ImTransOpt`` and ``PeakLocation`` accumulate, one value per line;
  ``BC``, ``PanelGapsY`` and ``PanelGapsZ`` take several values on one line;
- aliases: ``NrPixels`` sets ``NrPixelsY`` and ``NrPixelsZ``; ``MaxRingRad`` = ``RhoD``; ``MinRad`` / ``MaxRad`` /
  ``RadBinSize`` = ``RMin`` / ``RMax`` / ``RBinSize`` (an alias and its key obey "last line wins" together);
- unknown keys are not an error (MIDAS files often carry FF-HEDM keys): they are listed in ``unknown_keys`` and in
  ``warnings``, one line per key;
- a malformed known key, a missing required key (``NrPixelsY``/``NrPixelsZ``, ``Lsd``, ``px``, ``BC``, ``RBinSize``
  unless Q bins are complete) or an inconsistent set of keys raises :class:`~ringstream.errors.ParamError` whose
  one-line message names the file (and line) and the key(s), and says what was expected.

Pixel pitch: MIDAS geometry uses one pitch. ``px`` is used; without ``px``, ``pxY`` (else ``pxZ``) gives it.
``pxY``/``pxZ`` default to ``px``; a warning is given if the three differ.

Paths (``MaskFile``, ``GapFile``, ``BadPxFile``, ``DistortionFile``, ``Dark``): the rest of the line, so a path may
contain spaces. A relative path from the file is resolved against the parameter file's folder if the file exists
there, else against the current directory; a relative path from the command line is resolved against the current
directory if it exists there, else against the parameter file's folder. Files are not read here.

Command-line overrides, as MIDAS's integrator scripts take them: ``Key Value [Value ...]`` or
``--Key Value ...`` (``--Key=Value`` too) replace the file's value; for a repeatable key, the overrides
replace the whole list. Errors name ``<command line>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ringstream.errors import ParamError

__all__ = ["KNOWN_KEYS", "Params", "load_params", "parse_overrides", "parse_params"]

CMDLINE = "<command line>"
STRING_SOURCE = "<string>"


@dataclass(frozen=True)
class _Key:
    """How one parameter key is read: value kind, values per line (0 = one or more), default, unit."""

    kind: str  # "float" | "int" | "bool" | "path" | "imtrans"
    count: int = 1
    default: object = None
    unit: str = ""
    repeatable: bool = False


def _num(default: float | None, unit: str = "") -> _Key:
    return _Key("float", 1, default, unit)


def _int(default: int | None, unit: str = "") -> _Key:
    return _Key("int", 1, default, unit)


def _flag(default: bool) -> _Key:
    return _Key("bool", 1, default)


_PATH = _Key("path")
_PHASES = (3, 6, 8, 10, 12, 14)  # distortion terms that are phases, in degrees

# The one table of keys (docs/MIDAS-FORMATS.md section 1; defaults are MIDAS DetectorMapper's).
_SPEC: dict[str, _Key] = {
    "NrPixelsY": _int(None, "columns"),
    "NrPixelsZ": _int(None, "rows"),
    "Lsd": _num(1e6, "µm"),
    "BC": _Key("float", 2, (1024.0, 1024.0), "px"),
    "tx": _num(0.0, "deg"),
    "ty": _num(0.0, "deg"),
    "tz": _num(0.0, "deg"),
    "px": _num(200.0, "µm"),
    "pxY": _num(None, "µm"),
    "pxZ": _num(None, "µm"),
    "Wavelength": _num(0.0, "Å"),
    "RhoD": _num(2e5, "µm"),
    **{f"p{i}": _num(0.0, "deg" if i in _PHASES else "") for i in range(15)},
    "Parallax": _num(0.0, "µm"),
    "DistortionFile": _PATH,
    "NPanelsY": _int(0),
    "NPanelsZ": _int(0),
    "PanelSizeY": _int(0, "px"),
    "PanelSizeZ": _int(0, "px"),
    "PanelGapsY": _Key("int", 0, (), "px"),
    "PanelGapsZ": _Key("int", 0, (), "px"),
    "RMin": _num(10.0, "px"),
    "RMax": _num(1524.0, "px"),
    "RBinSize": _num(0.25, "px"),
    "EtaMin": _num(-180.0, "deg"),
    "EtaMax": _num(180.0, "deg"),
    "EtaBinSize": _num(5.0, "deg"),
    "QMin": _num(0.0, "Å⁻¹"),
    "QMax": _num(0.0, "Å⁻¹"),
    "QBinSize": _num(0.0, "Å⁻¹"),
    "ImTransOpt": _Key("imtrans", 1, (), repeatable=True),
    "MaskFile": _PATH,
    "GapFile": _PATH,
    "BadPxFile": _PATH,
    "Dark": _PATH,
    "SolidAngleCorrection": _flag(False),
    "PolarizationCorrection": _flag(False),
    "PolarizationFraction": _num(0.99),
    "PolarizationAngle": _num(0.0, "deg"),
    "Normalize": _flag(True),
    "Write2D": _flag(False),
    "OmegaSumFrames": _int(1, "frames, -1 = all"),
    "OmegaStart": _num(0.0, "deg"),
    "OmegaStep": _num(0.0, "deg"),
    "Omega": _num(None, "deg"),
    "Polariz": _num(0.99),
    "SHpL": _num(0.002),
    "U": _num(1.163),
    "V": _num(-0.126),
    "W": _num(0.063),
    "X": _num(0.0),
    "Y": _num(0.0),
    "Z": _num(0.0),
    "GapIntensity": _num(0.0),
    "DoPeakFit": _flag(False),
    "MultiplePeaks": _flag(False),
    "PeakLocation": _Key("float", 1, (), "px", repeatable=True),
    "DoSmoothing": _flag(False),
    "FitROIPadding": _int(20, "radial bins"),
    "FitROIAuto": _flag(False),
}

_ALIASES: dict[str, tuple[str, ...]] = {
    "NrPixels": ("NrPixelsY", "NrPixelsZ"),
    "MaxRingRad": ("RhoD",),
    "MinRad": ("RMin",),
    "MaxRad": ("RMax",),
    "RadBinSize": ("RBinSize",),
}

KNOWN_KEYS: frozenset[str] = frozenset(_SPEC) | frozenset(_ALIASES)

_PATH_KEYS = tuple(k for k, s in _SPEC.items() if s.kind == "path")
_REQUIRED_EXAMPLES = {
    "NrPixelsY": "'NrPixelsY 2048' (or 'NrPixels 2048')",
    "NrPixelsZ": "'NrPixelsZ 2048' (or 'NrPixels 2048')",
    "Lsd": "'Lsd 1000000'",
    "px": "'px 200'",
    "BC": "'BC 1024 1024'",
    "RBinSize": "'RBinSize 0.25' (or QMin, QMax, QBinSize and Wavelength)",
}
_COUNT_WORDS = {1: "one", 2: "two"}
_NOUNS = {"float": "number", "int": "integer", "imtrans": "integer 0..3 (0 none, 1 flip Y, 2 flip Z, 3 transpose)"}


@dataclass(frozen=True)
class Params:
    """Every MIDAS parameter in force, typed and validated. Lengths in µm unless noted, angles in degrees.

    Build with :func:`load_params` or :func:`parse_params`; change with :meth:`replace` (which re-validates).
    """

    source: Path | None  # parameter file path (None for a string)
    text: str  # raw parameter-file text
    NrPixelsY: int  # columns (fast axis)
    NrPixelsZ: int  # rows (slow axis)
    Lsd: float  # sample-detector distance, µm
    BC: tuple[float, float]  # beam centre (y, z), px, transformed frame
    tx: float
    ty: float
    tz: float
    px: float  # the pixel pitch the geometry uses, µm
    pxY: float
    pxZ: float
    Wavelength: float  # Å; 0.0 when unknown
    RhoD: float  # distortion normalisation radius, µm
    p: tuple[float, ...]  # p0..p14
    Parallax: float  # µm
    DistortionFile: Path | None
    NPanelsY: int
    NPanelsZ: int
    PanelSizeY: int  # px
    PanelSizeZ: int
    PanelGapsY: tuple[int, ...]  # px, NPanelsY - 1 values
    PanelGapsZ: tuple[int, ...]
    RMin: float  # px of corrected R
    RMax: float
    RBinSize: float
    EtaMin: float  # deg
    EtaMax: float
    EtaBinSize: float
    QMin: float  # Å⁻¹; 0.0 when unset
    QMax: float
    QBinSize: float
    ImTransOpt: tuple[int, ...]  # applied in order: 0 none, 1 flip Y, 2 flip Z, 3 transpose
    MaskFile: Path | None
    GapFile: Path | None
    BadPxFile: Path | None
    Dark: Path | None
    SolidAngleCorrection: bool
    PolarizationCorrection: bool
    PolarizationFraction: float
    PolarizationAngle: float  # deg: η of the polarization direction; 0 = MIDAS's form (docs/POLARIZATION.md)
    Normalize: bool
    Write2D: bool
    OmegaSumFrames: int  # frames per summed cake; -1 = all
    OmegaStart: float  # deg
    OmegaStep: float  # deg
    Omega: float | None  # deg
    Polariz: float  # GSAS-II instrument parameters
    SHpL: float
    U: float
    V: float
    W: float
    X: float
    Y: float
    Z: float
    GapIntensity: float
    DoPeakFit: bool
    MultiplePeaks: bool
    PeakLocation: tuple[float, ...]  # px
    DoSmoothing: bool
    FitROIPadding: int  # radial bins
    FitROIAuto: bool
    unknown_keys: tuple[tuple[str, int, str], ...] = ()  # (file, line, key)
    warnings: tuple[str, ...] = ()
    path_strings: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (key, path as written)
    locations: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (key, "file:line")

    @property
    def q_mode(self) -> bool:
        """True when radial bins are uniform in Q: QMin, QMax, QBinSize and Wavelength all > 0."""
        return self.QMin > 0 and self.QMax > 0 and self.QBinSize > 0 and self.Wavelength > 0

    @property
    def shape(self) -> tuple[int, int]:
        """Raw frame shape ``(NrPixelsZ, NrPixelsY)``."""
        return (self.NrPixelsZ, self.NrPixelsY)

    def used(self) -> dict[str, object]:
        """Every parameter in force, MIDAS key -> JSON-able value (bools as 0/1, tuples as lists).

        A path key gives the resolved path; ``<key>_as_written`` keeps the string of the file or command line.
        Unset optional keys (paths, ``Omega``) are left out.
        """
        written = dict(self.path_strings)
        out: dict[str, object] = {}
        for key in _SPEC:
            value = self.p[int(key[1:])] if key[0] == "p" and key[1:].isdigit() else getattr(self, key)
            if value is None:
                continue
            if isinstance(value, Path):
                out[key] = str(value)
                out[f"{key}_as_written"] = written.get(key, str(value))
                continue
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def replace(self, **changes: object) -> Params:
        """A copy with ``changes`` applied (field names), with PeakLocation implications and checks re-run."""
        fixed: dict[str, object] = {}
        for name, value in changes.items():
            if isinstance(value, list):
                value = tuple(value)
            if name in _PATH_KEYS and isinstance(value, str):
                value = Path(value)
            fixed[name] = value
        new = dataclasses.replace(self, **fixed)
        new = dataclasses.replace(new, locations=tuple(kv for kv in self.locations if kv[0] not in changes))
        new = _derive(new)
        stale = set(_check(self))
        fresh = _check(new)
        kept = tuple(w for w in self.warnings if w not in stale)
        return dataclasses.replace(new, warnings=kept + tuple(fresh))


# --------------------------------------------------------------------------- reading


def _lex(text: str) -> Iterator[tuple[int, str, list[str], str]]:
    """Yield ``(line number, key, values, rest of line)`` for each non-blank line, comments and ``;`` removed."""
    for lineno, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        rest = parts[1].strip().rstrip(";").strip() if len(parts) > 1 else ""
        values = [t for t in (tok.rstrip(";") for tok in rest.split()) if t]
        yield lineno, parts[0], values, rest


def _expectation(spec: _Key) -> str:
    """What a key expects, e.g. ``one number (µm)`` or ``0 or 1``."""
    if spec.kind == "bool":
        return "0 or 1"
    if spec.kind == "path":
        return "a path"
    noun = _NOUNS[spec.kind]
    if spec.count == 0:
        text = f"one or more {noun}s"
    else:
        text = f"{_COUNT_WORDS[spec.count]} {noun}{'s' if spec.count > 1 else ''}"
    if spec.unit:
        text += f" ({spec.unit})"
    if spec.repeatable:
        text += " per line"
    return text


def _is_float(token: str) -> bool:
    try:
        return math.isfinite(float(token)) and "_" not in token
    except ValueError:
        return False


def _is_int(token: str) -> bool:
    body = token[1:] if token[:1] in "+-" else token
    return body.isdigit() and body.isascii()


def _convert(key: str, spec: _Key, values: list[str], where: str) -> object:
    """Typed value of one line of ``key`` (a tuple for multi-value keys); ParamError naming ``where`` if malformed."""

    def bad() -> ParamError:
        got = repr(" ".join(values)) if values else "nothing"
        return ParamError(f"{where}: key {key!r} expects {_expectation(spec)}, got {got}")

    if not values or (spec.count and len(values) != spec.count):
        raise bad()
    out: list[object] = []
    for token in values:
        if spec.kind == "float":
            if not _is_float(token):
                raise bad()
            out.append(float(token))
        elif spec.kind == "bool":
            if token not in ("0", "1"):
                raise bad()
            out.append(token == "1")
        else:  # int, imtrans
            if not _is_int(token) or (spec.kind == "imtrans" and int(token) not in range(4)):
                raise bad()
            out.append(int(token))
    return out[0] if spec.count == 1 else tuple(out)


def _hint(key: str) -> str:
    known = sorted(KNOWN_KEYS)
    close = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, 1, 0.85)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Split command-line overrides into ``(key, values)`` pairs, in order.

    A token starting with ``--`` (``--Key`` or ``--Key=Value``) or equal to a known key starts a new key; the
    following tokens are its values. Keys are returned as written (aliases and unknown keys are judged later).
    """
    out: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            out.append((name, [value] if sep else []))
        elif token in KNOWN_KEYS:
            out.append((token, []))
        elif not out:
            raise ParamError(f"{CMDLINE}: expected a parameter key ('Lsd 1000000' or '--Lsd 1000000'), got {token!r}")
        else:
            out[-1][1].append(token)
    return out


def _resolve(raw: str, base: Path | None, from_cmdline: bool) -> Path:
    """Resolve a relative path (see the module docstring); nothing is read."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    bases = [Path.cwd(), base] if from_cmdline else [base, Path.cwd()]
    for folder in bases:
        if folder is not None and (folder / path).exists():
            return folder / path
    return Path.cwd() / path


def parse_params(text: str, source: str | Path | None = None, overrides: Sequence[str] = ()) -> Params:
    """Read parameter-file ``text`` (from ``source``, used in messages and to resolve paths), then ``overrides``."""
    label = str(source) if source is not None else STRING_SOURCE
    base = Path(source).absolute().parent if source is not None else None
    given: dict[str, list[tuple[object, str]]] = {}  # canonical key -> [(value, "file:line")]
    raw_paths: dict[str, tuple[str, bool]] = {}  # key -> (string as written, from command line)
    unknown: list[tuple[str, int, str]] = []

    def put(name: str, values: list[str], rest: str, where: str, cmdline: bool, fresh: set[str]) -> None:
        for key in _ALIASES.get(name, (name,)):
            spec = _SPEC[key]
            if spec.kind == "path":
                if not rest:
                    raise ParamError(f"{where}: key {key!r} expects a path, got nothing")
                raw_paths[key] = (rest, cmdline)
                given[key] = [(rest, where)]
            elif spec.repeatable:
                if not cmdline:
                    items = [(_convert(key, spec, values, where), where)]
                else:  # one entry per value; the overrides replace the file's whole list
                    if not values:
                        _convert(key, spec, values, where)  # raises "got nothing"
                    items = [(_convert(key, spec, [v], where), where) for v in values]
                    if key not in fresh:
                        given[key] = []
                        fresh.add(key)
                given.setdefault(key, []).extend(items)
            else:
                given[key] = [(_convert(key, spec, values, where), where)]

    for lineno, key, values, rest in _lex(text):
        if key not in KNOWN_KEYS:
            unknown.append((label, lineno, key))
            continue
        put(key, values, rest, f"{label}:{lineno}", False, set())

    fresh: set[str] = set()
    for key, values in parse_overrides(overrides):
        if key not in KNOWN_KEYS:
            raise ParamError(f"{CMDLINE}: unknown key {key!r}{_hint(key)}")
        values = [t for t in (v.rstrip(";") for v in values) if t]
        put(key, values, " ".join(values), CMDLINE, True, fresh)

    # Required keys, reported together.
    q_given = all(key in given for key in ("QMin", "QMax", "QBinSize", "Wavelength"))
    missing = [k for k in ("NrPixelsY", "NrPixelsZ", "Lsd") if k not in given]
    if not any(k in given for k in ("px", "pxY", "pxZ")):
        missing.append("px")
    if "BC" not in given:
        missing.append("BC")
    if "RBinSize" not in given and not q_given:
        missing.append("RBinSize")
    if missing:
        examples = ", ".join(_REQUIRED_EXAMPLES[k] for k in missing)
        raise ParamError(f"{label}: missing required keys: {', '.join(missing)} (expected e.g. {examples})")

    def value(key: str) -> object:
        entries = given.get(key)
        if _SPEC[key].repeatable:
            return tuple(v for v, _ in entries or ())
        return entries[-1][0] if entries else _SPEC[key].default

    values_: dict[str, object] = {key: value(key) for key in _SPEC if not (key[0] == "p" and key[1:].isdigit())}
    values_["p"] = tuple(float(value(f"p{i}")) for i in range(15))  # type: ignore[arg-type]
    pitch = next(values_[k] for k in ("px", "pxY", "pxZ") if k in given)
    values_["px"] = pitch
    values_["pxY"] = values_["pxY"] if "pxY" in given else pitch
    values_["pxZ"] = values_["pxZ"] if "pxZ" in given else pitch
    for key in _PATH_KEYS:
        if key in raw_paths:
            values_[key] = _resolve(raw_paths[key][0], base, raw_paths[key][1])

    warnings = _unknown_warnings(unknown)
    peaks = bool(values_["PeakLocation"])
    if peaks and "DoSmoothing" in given and values_["DoSmoothing"]:
        warnings.append(f"{given['DoSmoothing'][-1][1]}: DoSmoothing 1 ignored: PeakLocation is given "
                        "(smoothing serves only the peak search)")
    if peaks and "DoPeakFit" in given and not values_["DoPeakFit"]:
        warnings.append(f"{given['DoPeakFit'][-1][1]}: DoPeakFit 0 overridden: PeakLocation is given "
                        "(the named peaks are fitted)")

    params = Params(
        source=Path(source) if source is not None else None,
        text=text,
        unknown_keys=tuple(unknown),
        path_strings=tuple((k, raw) for k, (raw, _) in raw_paths.items()),
        locations=tuple((k, entries[-1][1]) for k, entries in given.items() if entries),
        **values_,  # type: ignore[arg-type]
    )
    params = _derive(params)
    return dataclasses.replace(params, warnings=tuple(warnings) + tuple(_check(params)))


def load_params(path: str | Path, overrides: Sequence[str] = ()) -> Params:
    """Read and validate the parameter file at ``path`` (UTF-8, Latin-1 accepted); ParamError if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ParamError(f"{path}: cannot read parameter file ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_params(text, source=path, overrides=overrides)


def _unknown_warnings(unknown: list[tuple[str, int, str]]) -> list[str]:
    """One warning per unknown key name, at its first line, e.g. ``setup.txt:12: unknown key 'Foo' (ignored)``."""
    lines: dict[str, list[tuple[str, int]]] = {}
    for file, lineno, key in unknown:
        lines.setdefault(key, []).append((file, lineno))
    out = []
    for key, where in lines.items():
        more = f"; also on {len(where) - 1} more line{'s' if len(where) > 2 else ''}" if len(where) > 1 else ""
        out.append(f"{where[0][0]}:{where[0][1]}: unknown key {key!r} (ignored{more}{_hint(key)})")
    return out


# --------------------------------------------------------------------------- derived values and checks


def _derive(p: Params) -> Params:
    """PeakLocation given -> DoPeakFit = MultiplePeaks = 1 and DoSmoothing = 0 (the peaks to fit are named;
    smoothing serves only the peak search)."""
    if p.PeakLocation:
        return dataclasses.replace(p, DoPeakFit=True, MultiplePeaks=True, DoSmoothing=False)
    return p


def _check(p: Params) -> list[str]:
    """Raise ParamError on inconsistent keys; return the warnings (one line each)."""
    label = str(p.source) if p.source is not None else STRING_SOURCE
    lines = dict(p.locations)

    def where(*keys: str) -> str:
        return next((lines[k] for k in keys if k in lines), label)

    def fail(keys: tuple[str, ...], message: str) -> None:
        raise ParamError(f"{where(*keys)}: {message}")

    for key in ("NrPixelsY", "NrPixelsZ"):
        if getattr(p, key) <= 0:
            fail((key,), f"{key} must be > 0 (pixels), got {getattr(p, key)}")
    for key in ("Lsd", "px", "pxY", "pxZ", "RhoD"):
        if getattr(p, key) <= 0:
            fail((key,), f"{key} must be > 0 (µm), got {getattr(p, key):g}")
    if not p.q_mode:
        if p.RBinSize <= 0:
            fail(("RBinSize",), f"RBinSize must be > 0 (px), got {p.RBinSize:g}")
        if p.RMax <= p.RMin:
            fail(("RMax", "RMin"), f"RMax ({p.RMax:g}) must be greater than RMin ({p.RMin:g})")
    if p.EtaBinSize <= 0:
        fail(("EtaBinSize",), f"EtaBinSize must be > 0 (deg), got {p.EtaBinSize:g}")
    if p.EtaMax <= p.EtaMin:
        fail(("EtaMax", "EtaMin"), f"EtaMax ({p.EtaMax:g}) must be greater than EtaMin ({p.EtaMin:g})")

    q_keys = ("QMin", "QMax", "QBinSize")
    if any(getattr(p, k) != 0 for k in q_keys):
        got = ", ".join(f"{k}={getattr(p, k):g}" for k in q_keys)
        if p.Wavelength <= 0:
            fail(q_keys, f"QMin/QMax/QBinSize given but no Wavelength: Q bins need 'Wavelength' (Å) > 0 ({got})")
        if not p.q_mode:
            fail(q_keys, f"Q bins need QMin, QMax and QBinSize all > 0 (Å⁻¹), got {got}")
        if p.QMax <= p.QMin:
            fail(("QMax", "QMin"), f"QMax ({p.QMax:g}) must be greater than QMin ({p.QMin:g})")
        s = p.QMax * p.Wavelength / (4 * math.pi)
        if s >= 1:
            fail(("QMax", "Wavelength"), f"QMax {p.QMax:g} Å⁻¹ is beyond 4π/λ = {4 * math.pi / p.Wavelength:g} "
                 f"Å⁻¹ for Wavelength {p.Wavelength:g} Å (Qλ/4π = {s:.4g} ≥ 1)")
        if s >= math.sqrt(0.5):
            fail(("QMax", "Wavelength"), f"QMax {p.QMax:g} Å⁻¹ at Wavelength {p.Wavelength:g} Å means "
                 f"2θ = {4 * math.degrees(math.asin(s)):.4g}° ≥ 90°, which a flat detector cannot see")

    if 3 in p.ImTransOpt and p.NrPixelsY != p.NrPixelsZ:
        fail(("ImTransOpt",), f"ImTransOpt 3 (transpose) needs a square detector, "
             f"got NrPixelsY={p.NrPixelsY} NrPixelsZ={p.NrPixelsZ}")

    for axis in ("Y", "Z"):
        n, size = getattr(p, f"NPanels{axis}"), getattr(p, f"PanelSize{axis}")
        gaps, nr = getattr(p, f"PanelGaps{axis}"), getattr(p, f"NrPixels{axis}")
        keys = (f"PanelGaps{axis}", f"NPanels{axis}")
        if n < 0 or size < 0 or any(g < 0 for g in gaps):
            fail(keys, f"NPanels{axis}, PanelSize{axis} and PanelGaps{axis} must be ≥ 0")
        if (n > 0 or gaps) and len(gaps) != max(n - 1, 0):
            fail(keys, f"PanelGaps{axis} has {len(gaps)} values but NPanels{axis} {n} needs {max(n - 1, 0)}")
        if n > 0 and size == 0:
            fail((f"PanelSize{axis}", f"NPanels{axis}"), f"NPanels{axis} {n} needs PanelSize{axis} > 0 (px)")
        if n * size + sum(gaps) > nr:
            fail(keys, f"panels span {n * size + sum(gaps)} px in {axis} (NPanels{axis} × PanelSize{axis} + "
                 f"PanelGaps{axis}) but NrPixels{axis} is {nr}")

    if p.OmegaSumFrames == 0 or p.OmegaSumFrames < -1:
        fail(("OmegaSumFrames",), f"OmegaSumFrames must be ≥ 1, or -1 for all frames, got {p.OmegaSumFrames}")
    if not 0 <= p.PolarizationFraction <= 1:
        fail(("PolarizationFraction",), f"PolarizationFraction must be in 0..1, got {p.PolarizationFraction:g}")
    if not -180 <= p.PolarizationAngle <= 180:
        fail(("PolarizationAngle",), f"PolarizationAngle must be in -180..180 (deg, the η of the polarization "
             f"direction: 0 for MIDAS's form, 90 for a horizontally polarized beam with Z up), "
             f"got {p.PolarizationAngle:g}")
    if p.FitROIPadding < 1:
        fail(("FitROIPadding",), f"FitROIPadding must be ≥ 1 (radial bins), got {p.FitROIPadding}")

    warnings = []
    if len({p.px, p.pxY, p.pxZ}) > 1:
        warnings.append(f"{where('pxY', 'pxZ', 'px')}: px {p.px:g}, pxY {p.pxY:g}, pxZ {p.pxZ:g} differ; "
                        f"MIDAS geometry uses one pitch: using {p.px:g} µm")
    if p.RhoD < 2 * max(p.NrPixelsY, p.NrPixelsZ) and p.px > 1:
        warnings.append(f"{where('RhoD')}: RhoD {p.RhoD:g} looks like pixels; MIDAS expects µm "
                        f"(e.g. RhoD {p.RhoD * p.px:g} for {p.RhoD:g} px of {p.px:g} µm)")
    return warnings

"""The checks of the merged configuration: the option table's choices and limits, then what one key alone cannot say
(endpoints, the source a kind needs, heartbeat timing, the folder source's paths and formats, the output path
templates).

Every problem is one line naming where the value came from and the key; :func:`problems` returns them all, so they
are reported together.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from ..errors import ConfigError
from ..runs.naming import OutputTemplate
from .layers import ALL_DEVICES, describe_value, did_you_mean
from .schema import OPTIONS, Option

Merged = dict[str, dict[str, object]]
Origins = dict[tuple[str, str], str]

ENDPOINT_KEYS = ("frames_endpoint", "results_endpoint", "release_endpoint", "events_endpoint", "control_endpoint",
                 "peaks_endpoint", "view_endpoint")
#: the key a source kind cannot do without
_NEEDS = {"replay": "replay_path", "folder": "folder", "pva": "pva_channel", "dectris": "dectris_stream"}

_MODE = re.compile(r"^[0-7]{3,4}$")  # as ringstream.transport.runtime_dir.parse_mode reads it
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


def _table_problem(o: Option, value: object) -> str | None:
    """What is wrong with ``value`` by the row's choices and limits, as ``expected ...``; None if nothing."""
    if o.choices and not (value == "" and o.default == ""):  # "" = not set, where that is the default
        if value not in o.choices:
            hint = did_you_mean(str(value), o.choices)
            return "one of " + ", ".join(repr(c) for c in o.choices) + (f" ({hint[2:]})" if hint else "")
    low = o.above if o.above is not None else o.at_least
    if (low is not None and (value < low or (o.above is not None and value == low))  # type: ignore[operator]
            or (o.at_most is not None and value > o.at_most)  # type: ignore[operator]
            or (o.limit and value != value)):  # (NaN, which no comparison catches)
        return o.limit + (f" ({o.unit})" if o.unit else "")
    return None


def problems(cfg: Merged, origin: Origins, given: set[tuple[str, str]]) -> list[str]:
    """Every choice / range / consistency problem of the merged values ``cfg``, one line each.

    ``origin`` names where each value came from; ``given`` holds the keys some layer set (not defaults).
    ``[logging] level`` is upper-cased in ``cfg``.
    """
    out: list[str] = []

    def bad(section: str, key: str, expected: str) -> None:
        out.append(f"{origin[(section, key)]}: [{section}] {key}: expected {expected}, "
                   f"got {describe_value(cfg[section][key])}")

    cfg["logging"]["level"] = str(cfg["logging"]["level"]).upper()
    for o in OPTIONS:
        expected = _table_problem(o, cfg[o.section][o.key])
        if expected:
            bad(o.section, o.key, expected)

    out.extend(_template_problems(cfg, origin))
    src = cfg["source"]
    if any(not 0 < t < 180 for t in src["rings_2theta"]):  # type: ignore[union-attr]
        bad("source", "rings_2theta", "angles in 0 < 2theta < 180 (deg)")
    kind = src["kind"]
    if kind in _NEEDS and not src[_NEEDS[kind]] and not (kind == "folder" and src["file"]):
        out.append(f"{origin[('source', 'kind')]}: [source] kind = {kind!r} needs [source] {_NEEDS[kind]}")
    if kind == "folder":
        out.extend(_folder_problems(cfg, origin))
    if src["dectris_stream"]:
        problem = _endpoint_problem(str(src["dectris_stream"]))
        if problem or src["dectris_stream"] == "auto" or str(src["dectris_stream"]).startswith("tcp://*"):
            bad("source", "dectris_stream", "the detector's tcp://HOST:PORT (e.g. tcp://10.0.0.5:31001) or ipc://PATH")
    if not 1 <= src["midas_port"] <= 65535:  # type: ignore[operator]
        bad("source", "midas_port", "a TCP port in 1..65535")
    gpus = cfg["workers"]["gpus"]
    if gpus != ALL_DEVICES and any(g < 0 for g in gpus):  # type: ignore[union-attr]
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

    if cfg["transport"]["ring_slots"] == 1:  # a slot for the frame being copied and one in flight, at least
        bad("transport", "ring_slots", "0 (auto) or at least 2")
    out.extend(_remote_problems(cfg, origin))
    if not _MODE.match(str(cfg["transport"]["control_mode"])):
        bad("transport", "control_mode", "an octal file mode such as 0600 or 0660")

    sup = cfg["supervisor"]
    if 0 < sup["heartbeat_interval"] and sup["heartbeat_timeout"] <= sup["heartbeat_interval"]:  # type: ignore
        key = "heartbeat_timeout" if ("supervisor", "heartbeat_timeout") in given else "heartbeat_interval"
        out.append(f"{origin[('supervisor', key)]}: [supervisor] heartbeat_timeout ({sup['heartbeat_timeout']:g} s) "
                   f"must be longer than heartbeat_interval ({sup['heartbeat_interval']:g} s)")
    return out


def _loopback(endpoint: str) -> bool:
    """An endpoint only this host reaches: ipc://, or tcp:// on 127.0.0.0/8, ::1 or localhost."""
    m = _TCP.match(endpoint)
    if not m:
        return True
    host = m.group(1).strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remote_problems(cfg: Merged, origin: Origins) -> list[str]:
    """Nothing listens beyond loopback without CURVE unless ``insecure_remote`` says so; remote workers need the
    key folders (docs/REMOTE.md)."""
    t = cfg["transport"]
    out = []
    if not t["insecure_remote"]:
        for key in ENDPOINT_KEYS:
            value = str(t[key])
            if value != "auto" and not _loopback(value):
                out.append(f"{origin[('transport', key)]}: [transport] {key}: {value!r} listens beyond loopback and "
                           "internal sockets have no CURVE; workers of other hosts join through [transport] "
                           "remote_endpoint (or set insecure_remote = true)")
    remote = str(t["remote_endpoint"])
    if cfg["workers"]["count"] == 0 and not remote:
        out.append(f"{origin[('workers', 'count')]}: [workers] count = 0 needs [transport] remote_endpoint (workers "
                   "that join from other hosts)")
    if remote:
        m = _TCP.match(remote)
        if not m or not 1 <= int(m.group(2)) <= 65535 - 4:
            out.append(f"{origin[('transport', 'remote_endpoint')]}: [transport] remote_endpoint: expected "
                       f"tcp://HOST:PORT with PORT in 1..65531 (it binds PORT..PORT+4), got {remote!r}")
        elif not t["insecure_remote"]:
            for key in ("keys_dir", "authorized_keys_dir"):
                if not t[key]:
                    out.append(f"{origin[('transport', 'remote_endpoint')]}: [transport] remote_endpoint needs "
                               f"[transport] {key} (CURVE keys), or insecure_remote = true")
    return out


#: the ``[run]`` keys that are output path templates, and whether each names a folder; "" = not set (none, or
#: derived from output_h5), except for output_h5
TEMPLATE_KEYS = (("output_h5", False), ("zarr_output", False), ("midas_binaries", True))


def _template_problems(cfg: Merged, origin: Origins) -> list[str]:
    """Each output template names known fields with format specs that fit them (docs/DAEMON.md)."""
    out = []
    for key, folder in TEMPLATE_KEYS:
        text = cfg["run"][key]
        if not isinstance(text, str) or (not text and key != "output_h5"):
            continue
        try:
            OutputTemplate(text, f"[run] {key}", folder=folder)
        except ConfigError as exc:
            out.append(f"{origin[('run', key)]}: {exc}")
    return out


def _folder_problems(cfg: Merged, origin: Origins) -> list[str]:
    """The folder source's paths exist and its raw-file and extension settings name formats it can read."""
    import numpy as np

    from ..images.formats import normalize_extensions, parse_shape

    src, out = cfg["source"], []
    if src["file"] and not Path(str(src["file"])).is_file():
        out.append(f"{origin[('source', 'file')]}: [source] file: {str(src['file'])!r} is not an existing file")
    elif not src["file"] and src["folder"] and not Path(str(src["folder"])).is_dir():
        out.append(f"{origin[('source', 'folder')]}: [source] folder: {str(src['folder'])!r} is not an existing "
                   "folder")
    try:
        if np.dtype(str(src["raw_dtype"])).kind not in "uif":
            raise TypeError(src["raw_dtype"])
    except TypeError:
        out.append(f"{origin[('source', 'raw_dtype')]}: [source] raw_dtype: expected an integer or float numpy dtype "
                   f"(uint16, <i4, float32, ...), got {describe_value(src['raw_dtype'])}")
    for key, check in (("raw_shape", parse_shape), ("extensions", normalize_extensions)):
        try:
            check(src[key])
        except ConfigError as exc:
            out.append(f"{origin[('source', key)]}: {exc}")
    return out

"""Where the daemon's ``ipc://`` sockets live, and who may reach them (docs/DAEMON.md, "Who can reach the daemon").

A Unix socket is reached through its file: connecting needs search permission on every folder of its path and write
permission on the socket itself. The daemon therefore puts its internal sockets (frames, results, release, events,
peaks) in a folder of its own, mode 0700, made fresh at each start inside the *runtime folder*; only the service's
user reaches them. The control socket sits in the runtime folder itself, with the mode and group of
``[transport] control_mode`` / ``control_group``: the runtime folder then gets the search bit (never the read bit)
for that group or for others, so they can reach the control socket by its name and nothing else.

The runtime folder is ``[transport] runtime_dir``, else (in this order) ``$RUNTIME_DIRECTORY`` (systemd's
``RuntimeDirectory=``; its last folder when it lists several), ``$XDG_RUNTIME_DIR/ringstream``, or
``/tmp/ringstream-<uid>``. It must belong to the service's user; one owned by another user is refused (someone
could otherwise have made it to read what the sockets carry).
"""

from __future__ import annotations

import errno
import grp
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError

#: the name of the control socket in the runtime folder
CONTROL_NAME = "control"
#: the internal sockets' names in the daemon's private folder, by configuration key
INTERNAL_NAMES = {"frames_endpoint": "frames", "results_endpoint": "results", "release_endpoint": "release",
                  "events_endpoint": "events", "peaks_endpoint": "peaks", "view_endpoint": "view"}
#: the longest path of a Unix socket (sun_path is 108 bytes on Linux, with its terminating NUL)
MAX_SOCKET_PATH = 107


def default_runtime_dir(environ: dict | None = None) -> Path:
    """The runtime folder when ``[transport] runtime_dir`` is empty (see the module docstring)."""
    env = os.environ if environ is None else environ
    given = [p for p in str(env.get("RUNTIME_DIRECTORY", "")).split(":") if p]
    if given:
        return Path(given[-1])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "ringstream"
    return Path(tempfile.gettempdir()) / f"ringstream-{os.geteuid()}"


def runtime_dir_of(transport) -> Path:
    """The runtime folder of a ``[transport]`` configuration (absolute)."""
    return Path(transport.runtime_dir).absolute() if transport.runtime_dir else default_runtime_dir()


def parse_mode(text: str) -> int:
    """``"0660"`` -> 0o660; ValueError when it is not three or four octal digits."""
    text = str(text).strip()
    if not 3 <= len(text) <= 4 or any(c not in "01234567" for c in text):
        raise ValueError(f"expected an octal file mode such as 0600 or 0660, got {text!r}")
    return int(text, 8) & 0o777


def group_id(name: str) -> int:
    """The gid of group ``name`` ("" = this process's group); ConfigError naming the key when there is none."""
    if not name:
        return os.getegid()
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"[transport] control_group: no group {name!r} on this host") from None


def prepare_runtime_dir(path: Path, control_mode: int, gid: int) -> Path:
    """Make the runtime folder ``path`` (and its parents) if missing; check that it is ours; set its mode: 0700,
    plus the search bit for the group (and the group ``gid``) or others when ``control_mode`` lets them reach the
    control socket. ConfigError for a folder that belongs to another user or cannot be made."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"[transport] runtime_dir {path}: cannot make the folder ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"[transport] runtime_dir {path}: not a folder")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"[transport] runtime_dir {path}: belongs to uid {st.st_uid}, not to this user "
                          f"(uid {os.geteuid()}); give a folder of this user's")
    mode = 0o700 | (0o010 if control_mode & 0o060 else 0) | (0o001 if control_mode & 0o006 else 0)
    try:
        if control_mode & 0o060 and st.st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as exc:
        raise ConfigError(f"[transport] runtime_dir {path}: cannot set mode {mode:04o} / group {gid} "
                          f"({exc.strerror})") from None
    return path


def make_private_dir(runtime: Path) -> Path:
    """A new folder of mode 0700 in ``runtime`` for one daemon's internal sockets (removed by
    :func:`remove_private_dir`)."""
    return Path(tempfile.mkdtemp(prefix="d-", dir=runtime))


def remove_private_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


#: a private folder younger than this is never taken for a dead daemon's (its sockets may not be bound yet), s
STALE_AFTER_S = 60.0


def remove_stale_private_dirs(runtime: Path, now: float | None = None) -> list[Path]:
    """Remove the private folders of daemons that are gone (killed before they could remove theirs): those older
    than :data:`STALE_AFTER_S` in which no socket answers. Returns the folders removed."""
    now = time.time() if now is None else now
    removed = []
    for folder in runtime.glob("d-*"):
        try:
            if not folder.is_dir() or now - folder.stat().st_mtime < STALE_AFTER_S:
                continue
            if any(socket_answers(p) for p in folder.iterdir() if stat.S_ISSOCK(p.stat().st_mode)):
                continue
        except OSError:
            continue
        remove_private_dir(folder)
        removed.append(folder)
    return removed


def ipc_endpoint(path: Path, key: str) -> str:
    """``ipc://PATH``; ConfigError naming ``key`` when the path is too long for a Unix socket."""
    text = str(path)
    if len(text.encode()) > MAX_SOCKET_PATH:
        raise ConfigError(f"[transport] {key}: the socket path {text} is longer than {MAX_SOCKET_PATH} bytes; "
                          "give a shorter [transport] runtime_dir")
    return "ipc://" + text


def ipc_path(endpoint: str) -> Path | None:
    """The file of an ``ipc://`` endpoint; None for any other."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def socket_answers(path: Path) -> bool:
    """True when a process listens on the Unix socket ``path`` (a daemon runs there), False when there is no such
    file or nothing listens (a file a killed daemon left: binding replaces it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
    return True


def set_socket_access(path: Path, mode: int, gid: int) -> None:
    """Give the bound control socket ``path`` its ``mode`` and group ``gid`` (ConfigError when that fails)."""
    try:
        if gid != os.stat(path).st_gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as exc:
        raise ConfigError(f"[transport] control_mode/control_group: cannot give {path} mode {mode:04o} and group "
                          f"{gid} ({exc.strerror})") from None


def client_control_endpoint() -> str:
    """The control endpoint a client (``ringstream status``) asks when none is given: the ``control`` socket of the
    first runtime folder that has one among ``$RINGSTREAM_TRANSPORT_RUNTIME_DIR``, the default runtime folder of
    this user, and ``/run/ringstream/*`` (the system service's: ``RuntimeDirectory=ringstream/%i``, when there is
    exactly one); else the default runtime folder's (nothing answers there)."""
    candidates = []
    if os.environ.get("RINGSTREAM_TRANSPORT_RUNTIME_DIR"):
        candidates.append(Path(os.environ["RINGSTREAM_TRANSPORT_RUNTIME_DIR"]) / CONTROL_NAME)
    candidates.append(default_runtime_dir() / CONTROL_NAME)
    system = sorted(Path("/run/ringstream").glob(f"*/{CONTROL_NAME}"))
    if len(system) == 1:
        candidates.append(system[0])
    for path in candidates:
        try:
            if stat.S_ISSOCK(path.stat().st_mode):
                return "ipc://" + str(path.absolute())
        except OSError:
            continue
    return "ipc://" + str(candidates[0].absolute())

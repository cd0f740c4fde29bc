"""CURVE keys, what counts as loopback, the remote ports, and where the runtime folder is (no sockets)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ringstream.errors import ConfigError
from ringstream.transport.runtime_dir import (
    default_runtime_dir,
    make_private_dir,
    parse_mode,
    prepare_runtime_dir,
    remove_stale_private_dirs,
)
from ringstream.transport.security import (
    generate_keys,
    is_loopback,
    load_public,
    load_secret,
    remote_endpoints,
)


def test_keys_generate_writes_a_pair_with_a_private_secret_and_never_replaces_one(tmp_path):
    public, secret = generate_keys(tmp_path / "keys", "server")
    assert (public.name, secret.name) == ("server.key", "server.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    pub, sec = load_secret(str(tmp_path / "keys"), "server")
    assert load_public(str(tmp_path / "keys"), "server") == pub and len(pub) == len(sec) == 40  # Z85 of 32 bytes
    with pytest.raises(ConfigError, match=r"keys generate: .*server.key exists; remove it first"):
        generate_keys(tmp_path / "keys", "server")
    with pytest.raises(ConfigError, match=r"\[transport\] keys_dir: cannot read the key pair .*worker.key_secret"):
        load_secret(str(tmp_path / "keys"), "worker")


@pytest.mark.parametrize(("endpoint", "loopback"), [
    ("ipc:///run/ringstream/x", True), ("tcp://127.0.0.1:5", True), ("tcp://127.3.2.1:5", True),
    ("tcp://[::1]:5", True), ("tcp://localhost:5", True), ("tcp://*:5", False), ("tcp://0.0.0.0:5", False),
    ("tcp://10.1.2.3:5", False), ("tcp://daq01:5", False), ("tcp://[fe80::1]:5", False)])
def test_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_remote_ports_follow_the_join_port():
    assert remote_endpoints("tcp://0.0.0.0:5560", "daq01") == {
        "join": "tcp://daq01:5560", "frames": "tcp://daq01:5561", "results": "tcp://daq01:5562",
        "events": "tcp://daq01:5563", "peaks": "tcp://daq01:5564"}


def test_the_runtime_folder_follows_systemd_then_xdg_then_tmp():
    assert default_runtime_dir({"RUNTIME_DIRECTORY": "/run/ringstream:/run/ringstream/bl", "XDG_RUNTIME_DIR": "/x"}) \
        == Path("/run/ringstream/bl")
    assert default_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/ringstream")
    assert default_runtime_dir({}).name.startswith("ringstream-")


def test_the_runtime_folder_is_private_unless_the_control_mode_opens_it(tmp_path):
    folder = prepare_runtime_dir(tmp_path / "rt", parse_mode("0600"), gid=(tmp_path).stat().st_gid)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    prepare_runtime_dir(folder, parse_mode("0666"), gid=(tmp_path).stat().st_gid)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o711  # reach the control socket by name, list nothing
    with pytest.raises(ValueError, match="expected an octal file mode"):
        parse_mode("rw")


def test_only_old_private_folders_where_nothing_answers_are_removed(tmp_path):
    import os
    import socket

    dead, young, live = (make_private_dir(tmp_path) for _ in range(3))
    for folder in (dead, young, live):
        (folder / "events").touch()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    (live / "events").unlink()
    listener.bind(str(live / "events"))
    listener.listen(1)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:  # a socket file nobody listens on
            (dead / "events").unlink()
            gone.bind(str(dead / "events"))
        old = 1_000_000.0
        for folder in (dead, live):
            os.utime(folder, (old, old))
        assert remove_stale_private_dirs(tmp_path, now=old + 3600) == [dead]
        assert young.exists() and live.exists() and not dead.exists()
    finally:
        listener.close()

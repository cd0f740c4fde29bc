"""``"auto"`` endpoints: ipc:// sockets in a private folder (the default), or free ports chosen around the endpoints
the configuration gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ringstream.config import DaemonConfig
from ringstream.daemon import supervisor


def test_an_auto_endpoint_never_takes_a_port_another_endpoint_was_given(monkeypatch):
    """The control socket is bound after the ports are chosen: its port is free when they are, yet taken."""
    given = "tcp://127.0.0.1:23456"
    offers = iter([given, given, "tcp://127.0.0.1:23457", given, "tcp://127.0.0.1:23458", "tcp://127.0.0.1:23459",
                   "tcp://127.0.0.1:23460", "tcp://127.0.0.1:23461", given, "tcp://127.0.0.1:23462"])
    monkeypatch.setattr(supervisor, "free_tcp_endpoint", lambda: next(offers))
    cfg = DaemonConfig.from_dict({"transport": {"control_endpoint": given, "auto_endpoints": "tcp"}})
    t = supervisor.resolve_config(cfg).transport
    chosen = [t.frames_endpoint, t.results_endpoint, t.release_endpoint, t.events_endpoint, t.peaks_endpoint,
              t.view_endpoint]
    assert t.control_endpoint == given and given not in chosen
    assert len(set(chosen)) == len(chosen) == 6


def test_auto_endpoints_are_sockets_in_a_private_folder_and_control_in_the_runtime_folder(tmp_path):
    runtime = tmp_path / "rt"
    cfg = DaemonConfig.from_dict({"transport": {"runtime_dir": str(runtime), "control_mode": "0660",
                                                "results_endpoint": "tcp://127.0.0.1:23999"}})
    t = supervisor.resolve_config(cfg).transport
    private = Path(t.runtime_dir)
    assert private.parent == runtime and private.name.startswith("d-")
    assert t.control_endpoint == f"ipc://{runtime}/control" and t.results_endpoint == "tcp://127.0.0.1:23999"
    assert [t.frames_endpoint, t.release_endpoint, t.events_endpoint, t.peaks_endpoint] == [
        f"ipc://{private}/{name}" for name in ("frames", "release", "events", "peaks")]
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    # the group may reach the control socket by its name (search bit), never list the folder or enter the private one
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o710 and runtime.stat().st_gid == os.getegid()

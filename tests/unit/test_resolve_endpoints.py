"""``"auto"`` endpoints are chosen around the endpoints the configuration gives."""

from __future__ import annotations

from ringstream.config import DaemonConfig
from ringstream.daemon import supervisor


def test_an_auto_endpoint_never_takes_a_port_another_endpoint_was_given(monkeypatch):
    """The control socket is bound after the ports are chosen: its port is free when they are, yet taken."""
    given = "tcp://127.0.0.1:23456"
    offers = iter([given, given, "tcp://127.0.0.1:23457", given, "tcp://127.0.0.1:23458", "tcp://127.0.0.1:23459",
                   "tcp://127.0.0.1:23460", "tcp://127.0.0.1:23461", given, "tcp://127.0.0.1:23462"])
    monkeypatch.setattr(supervisor, "free_tcp_endpoint", lambda: next(offers))
    cfg = DaemonConfig.from_dict({"transport": {"control_endpoint": given}})
    t = supervisor.resolve_config(cfg).transport
    chosen = [t.frames_endpoint, t.results_endpoint, t.release_endpoint, t.events_endpoint, t.peaks_endpoint,
              t.view_endpoint]
    assert t.control_endpoint == given and given not in chosen
    assert len(set(chosen)) == len(chosen) == 6

"""systemd/ringstream@.service passes ``systemd-analyze verify`` with no output at all (it only warns on bad keys)."""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ringstream@.service"
EXEC = "/opt/ringstream/.venv/bin/ringstream"


def _script() -> str:
    exe = Path(sys.executable).with_name("ringstream")
    return str(exe if exe.exists() else shutil.which("ringstream") or sys.executable)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_unit_has_the_required_settings():
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC} run --config /etc/ringstream/%i.toml"]
    assert s["EnvironmentFile"] == ["-/etc/ringstream/%i.env"]
    assert s["WatchdogSec"] == ["10"] and s["Restart"] == ["on-failure"]
    assert int(s["TimeoutStopSec"][0]) > 60  # above [supervisor] drain_timeout
    assert int(s["TimeoutStartSec"][0]) > 120  # above [supervisor] ready_timeout, room for the map build
    assert s["KillMode"] == ["mixed"] and s["LimitMEMLOCK"] == ["infinity"]
    assert s["DevicePolicy"] == ["closed"]
    assert any(v.startswith("char-nvidia-frontend") for v in s["DeviceAllow"])
    assert any(v.startswith("char-nvidia-uvm") for v in s["DeviceAllow"])
    assert "MemoryDenyWriteExecute" not in s and "PrivateDevices" not in s
    # only what a restart cannot fix keeps the service down: configuration (2) and map (4) errors
    assert s["RestartPreventExitStatus"] == ["2 4"]
    # the run number and the index of runs of each instance; the per-instance folder is $STATE_DIRECTORY's last
    assert s["StateDirectory"] == ["ringstream ringstream/%i"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_is_silent(tmp_path):
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} " in text
    text = text.replace(f"ExecStart={EXEC} ", f"ExecStart={_script()} ")
    if not _user_exists("ringstream"):
        text = re.sub(r"^User=ringstream$", "User=root", text, flags=re.M)
        text = re.sub(r"^Group=ringstream$", "Group=root", text, flags=re.M)
    unit = tmp_path / "ringstream@beamline.service"  # an instance, so %i expands
    unit.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=50)
    assert out.stderr == "", out.stderr
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_verify_does_report_a_bad_key(tmp_path):
    """The check above is worth something: a misspelt key does produce stderr output."""
    text = UNIT.read_text().replace(f"ExecStart={EXEC} ", f"ExecStart={_script()} ")
    text = text.replace("WatchdogSec=10", "WatchdogSecs=10")
    unit = tmp_path / "ringstream@beamline.service"
    unit.write_text(re.sub(r"^(User|Group)=ringstream$", r"\1=root", text, flags=re.M))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=50)
    assert "WatchdogSecs" in out.stderr

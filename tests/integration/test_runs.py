"""Runs of the real daemon (``ringstream run`` as a subprocess): one set of files per run, cut where the ingest cuts
the stream (rotation by frame count, ``ringstream runs start|stop``), every frame in exactly one run, run numbers
that only grow across starts, the index of runs, and a start after a kill -9 of the whole process group."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from common import ringstream_command
from test_daemon import daemons, reference_lineouts, write_params  # noqa: F401  (daemons is a fixture)

from ringstream.daemon.status import is_healthy
from ringstream.runs.index import RunIndex


def read_run(path) -> dict:
    with h5py.File(path, "r") as f:
        e = f["/entry"]
        return {"I": e["data/I"][()], "frame_index": e["data/frame_index"][()],
                "source_id": [s.decode() if isinstance(s, bytes) else str(s) for s in e["data/source_id"][()]],
                "run_complete": bool(e["data/I"].attrs["run_complete"]),
                "run_status": e.attrs.get("run_status", "")}


def wait_flushed(path, n: int, deadline_s: float = 20.0) -> int:
    """Wait until a SWMR reader of ``path`` sees at least ``n`` rows; returns the rows seen."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                rows = int(f["/entry/data/I"].shape[0])
            if rows >= n:
                return rows
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} rows flushed within {deadline_s} s")


def index_of(folder) -> list[dict]:
    return RunIndex.in_state_dir(folder / ".ringstream").runs()


@pytest.mark.timeout(90)
def test_rotation_cuts_runs_of_max_frames_and_loses_nothing(tmp_path, daemons):  # noqa: F811
    """250 simulated frames with [run] max_frames 100: three runs of 100, 100 and 50 frames, each in its own file
    numbered from the state, each frame once, in order, equal to the reference engine's lineouts."""
    params = write_params(tmp_path)
    env_file = tmp_path / "c.toml"
    env_file.write_text('[run]\nmax_frames = 100\noutput_h5 = "scan.h5"\n')
    d = daemons(["--config", env_file, "--param-file", params, "--simulate", 250, "--workers", 2], tmp_path)
    rc = d.wait(70)
    assert rc == 0, d.stderr
    runs = index_of(tmp_path)
    assert [(r["run"], r["status"], r["frames"]) for r in runs] == [(1, "complete", 100), (2, "complete", 100),
                                                                     (3, "complete", 50)], runs
    ref = reference_lineouts(params, 250).astype(np.float32)
    start = 0
    for r in runs:
        path = tmp_path / f"scan_{r['run']:05d}.h5"
        assert r["files"]["h5"] == str(path)
        out = read_run(path)
        n = r["frames"]
        assert out["run_complete"]
        np.testing.assert_array_equal(out["frame_index"], np.arange(n))
        assert out["source_id"] == [f"simulated:{k}" for k in range(start, start + n)]
        np.testing.assert_allclose(out["I"], ref[start:start + n], rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))
        start += n
    assert "max_frames" in runs[0]["reason"]


def _runs_cmd(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*ringstream_command(), "runs", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=20)


@pytest.mark.timeout(120)
def test_runs_start_stop_list_and_numbers_across_starts(tmp_path, daemons):  # noqa: F811
    """An endless simulated source: ``runs start --name`` and ``runs stop`` cut runs at once; ``runs list`` prints
    them; every frame sent is in exactly one file; a second start with yesterday's files there goes on with the
    next run numbers."""
    params = write_params(tmp_path)
    args = ["--param-file", params, "--simulate", 0, "--rate", 100, "--workers", 2, "--output-h5", "s_{run:03d}.h5"]
    d = daemons(args, tmp_path)
    control = d.control
    d.wait_ready()
    d.wait_written(30)
    r = _runs_cmd(tmp_path, "start", "--name", "ramp", "--meta", "T=300", "--control", control)
    assert r.returncode == 0, r.stderr
    d.wait_status(lambda s: (s.get("runs") or {}).get("current", {}).get("name") == "ramp", "run 'ramp' open")
    time.sleep(0.3)
    r = _runs_cmd(tmp_path, "stop", "--control", control)
    assert r.returncode == 0, r.stderr
    d.wait_status(lambda s: (s.get("runs") or {}).get("current", {}).get("run", 0) >= 3, "run 3 open")
    listed = _runs_cmd(tmp_path, "list", "--json", "--control", control)
    assert listed.returncode == 0, listed.stderr
    assert [e["run"] for e in json.loads(listed.stdout)][:2] == [1, 2]
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(40) == 0, d.stderr
    runs = index_of(tmp_path)
    assert [r["status"] for r in runs] == ["complete", "complete", "complete"], runs  # SIGTERM drains
    assert runs[2]["reason"] == "stop"
    assert runs[1]["name"] == "ramp" and runs[1]["meta"] == {"T": "300"}
    assert runs[1]["reason"] == "runs stop" and runs[0]["reason"] == "runs start"
    ids = []
    for r in runs:
        out = read_run(tmp_path / f"s_{r['run']:03d}.h5")
        assert len(out["source_id"]) == r["frames"] > 0
        np.testing.assert_array_equal(out["frame_index"], np.arange(r["frames"]))
        ids += out["source_id"]
    assert ids == [f"simulated:{k}" for k in range(len(ids))]  # every frame once, in order, across the runs

    # a second start in the same folder: the numbers go on, nothing is replaced
    d2 = daemons([*args[:2], "--simulate", 20, *args[4:]], tmp_path)  # a finite source this time
    assert d2.wait(60) == 0, d2.stderr
    runs = index_of(tmp_path)
    assert [r["run"] for r in runs] == [1, 2, 3, 4] and runs[-1]["frames"] == 20


@pytest.mark.timeout(120)
def test_kill_9_of_the_group_then_the_next_start_repairs_and_moves_on(tmp_path, daemons):  # noqa: F811
    """SIGKILL to the whole process group mid-run: the next start repairs the run's file, marks it interrupted in
    the file and in the index, and serves the next run under the next number."""
    params = write_params(tmp_path)
    args = ["--param-file", params, "--workers", 2, "--output-h5", "k.h5"]
    d = daemons([*args, "--simulate", 0, "--rate", 200], tmp_path)
    d.wait_ready()
    d.wait_written(50)
    flushed = wait_flushed(tmp_path / "k.h5", 20)
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    runs = index_of(tmp_path)
    assert [(r["run"], r["status"]) for r in runs] == [(1, "open")]
    d2 = daemons([*args, "--simulate", 30], tmp_path)
    assert d2.wait(60) == 0, d2.stderr
    runs = index_of(tmp_path)
    assert [(r["run"], r["status"]) for r in runs] == [(1, "interrupted"), (2, "complete")], runs
    first = read_run(tmp_path / "k.h5")
    assert first["run_status"] == "interrupted" and not first["run_complete"]
    assert len(first["frame_index"]) >= flushed  # what a reader saw flushed before the kill is still there
    np.testing.assert_array_equal(first["frame_index"], np.arange(len(first["frame_index"])))
    second = read_run(tmp_path / "k_00002.h5")
    assert second["run_complete"] and len(second["frame_index"]) == 30


@pytest.mark.timeout(120)
def test_a_folder_that_cannot_be_written_fails_that_run_and_the_next_run_goes_on(tmp_path, daemons):  # noqa: F811
    """``{name}/x.h5`` with a run named after a regular file: that run fails (one error line naming the folder, its
    frames counted as dropped, the status unhealthy), the daemon keeps serving, and the next run is written."""
    params = write_params(tmp_path)
    (tmp_path / "blocked").write_text("a file, not a folder")
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 100, "--workers", 1, "--output-h5",
                 "{name}/x.h5", "--no-zarr"], tmp_path)
    d.wait_ready()
    assert _runs_cmd(tmp_path, "start", "--name", "blocked", "--control", d.control).returncode == 0
    st = d.wait_status(lambda s: s["runs"]["last_failed"], "the failed run")
    assert not is_healthy(st)
    d.wait_status(lambda s: s["children"]["writer"]["counters"].get("dropped_output_failed", 0) >= 10,
                  "frames of the failed run counted")
    assert _runs_cmd(tmp_path, "start", "--name", "ok", "--control", d.control).returncode == 0
    d.wait_status(lambda s: s["runs"]["current"].get("name") == "ok" and s["runs"]["current"]["frames"] >= 10,
                  "the next run written")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(40) == 0, d.stderr
    runs = index_of(tmp_path)
    assert [(r["name"], r["status"]) for r in runs] == [("", "complete"), ("blocked", "failed"), ("ok", "complete")]
    assert "blocked: output folder cannot be created or written" in runs[1]["reason"]
    received, integrated, written, rejected, dropped = d.counts()  # the failed run's frames: dropped, with the reason
    assert dropped == runs[1]["frames"] >= 10 and written == runs[0]["frames"] + runs[2]["frames"]
    assert re.search(rf"output_failed={dropped}\b", d.stderr), d.stderr[-500:]
    errors = [line for line in d.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "blocked" in errors[0], errors
    assert runs[2]["files"]["h5"] == str(tmp_path / "ok" / "x_00003.h5")  # a second run: numbered
    assert read_run(runs[2]["files"]["h5"])["run_complete"]


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs made by the test (needs root and a kernel that lets this process mount; skipped otherwise)."""
    where = tmp_path / "small"
    where.mkdir()  # the run named "small" writes here
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {got.stderr.strip() or got.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.timeout(120)
def test_a_disk_that_fills_fails_that_run_and_the_next_run_goes_on(tmp_path, daemons, small_fs):  # noqa: F811
    """A run whose folder is a small file system that fills: the run fails (its file repairable), the daemon keeps
    serving, and the next run, in a folder with room, is complete."""
    from ringstream.writer.repair import repair

    params = write_params(tmp_path)
    (tmp_path / "room").mkdir()
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 200, "--workers", 1, "--output-h5",
                 "{name}/r_{run:03d}.h5", "--no-zarr"], tmp_path)
    d.wait_ready()
    assert _runs_cmd(tmp_path, "start", "--name", "small", "--control", d.control).returncode == 0
    d.wait_status(lambda s: s["runs"]["last_failed"], "the run that fills the disk", 60)
    assert _runs_cmd(tmp_path, "start", "--name", "room", "--control", d.control).returncode == 0
    d.wait_status(lambda s: s["runs"]["current"].get("name") == "room" and s["runs"]["current"]["frames"] >= 10,
                  "the next run written", 60)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(40) == 0, d.stderr
    runs = index_of(tmp_path)
    assert [(r["name"], r["status"]) for r in runs] == [("", "complete"), ("small", "failed"), ("room", "complete")]
    assert "No space left on device" in runs[1]["reason"], runs[1]
    # once there is room again (repair writes: a cut and the groups' names; on the full disk it may not)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True, capture_output=True)
    report = repair(runs[1]["files"]["h5"])  # what was flushed before the disk filled
    assert report.frames > 0 and read_run(runs[1]["files"]["h5"])["frame_index"].tolist() == list(range(report.frames))
    assert read_run(runs[2]["files"]["h5"])["run_complete"]


@pytest.mark.timeout(120)
def test_twenty_switches_at_500_frames_per_s_lose_no_frame(tmp_path, daemons):  # noqa: F811
    """512 x 512 frames at 500 frames/s cut every 50 frames: 21 runs, every frame sent in exactly one file, in
    order (the switch rate and timing are measured by bench/runs.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from runs import params_text

    (tmp_path / "p.txt").write_text(params_text(512) + "OmegaSumFrames -1\n")
    (tmp_path / "c.toml").write_text('[run]\nmax_frames = 50\noutput_h5 = "r_{run:03d}.h5"\n')
    d = daemons(["--config", "c.toml", "--param-file", "p.txt", "--simulate", 1050, "--rate", 500, "--workers", 2,
                 "--no-zarr"], tmp_path)
    assert d.wait(100) == 0, d.stderr
    received, integrated, written, rejected, dropped = d.counts()
    assert received == integrated == written == 1050 and rejected == dropped == 0
    runs = index_of(tmp_path)
    assert [(r["run"], r["status"], r["frames"]) for r in runs] == [(k, "complete", 50) for k in range(1, 22)]
    ids = []
    for r in runs:
        ids += read_run(r["files"]["h5"])["source_id"]
    assert ids == [f"simulated:{k}" for k in range(1050)]


@pytest.mark.timeout(180)
def test_the_example_configuration_started_stopped_killed_and_started_again(tmp_path, daemons):  # noqa: F811
    """systemd/example.toml with its paths moved here (the output template with a {date} folder and {run:05d}, a
    simulated detector for the PVA channel): start, SIGTERM, start, SIGKILL to the whole process group, start.
    Every start serves; the killed run's file is readable and marked interrupted; run numbers never repeat."""
    import tomllib

    params = write_params(tmp_path)
    example = tomllib.loads((Path(__file__).resolve().parents[2] / "systemd" / "example.toml").read_text())
    run = example["run"]
    assert "{run:05d}" in run["output_h5"] and "{date}" in run["output_h5"]
    lines = [f'[run]\nparam_file = "{params}"\noutput_h5 = "{tmp_path}/data/{{date}}/run_{{run:05d}}.h5"\n',
             f'state_dir = "{tmp_path}/state"\nsave_interval = {run["save_interval"]}\n',
             '[source]\nkind = "simulated"\nrate = 100\n', '[workers]\ncount = 2\n']
    (tmp_path / "service.toml").write_text("".join(lines))
    served = []
    for how in ("SIGTERM", "SIGKILL", "SIGTERM"):
        d = daemons(["--config", tmp_path / "service.toml"], tmp_path)
        d.wait_ready()
        served.append(d.wait_written(20)["runs"]["current"]["run"])
        if how == "SIGTERM":
            d.proc.send_signal(signal.SIGTERM)
            assert d.wait(40) == 0, d.stderr
        else:
            wait_flushed(Path(d.status()["runs"]["current"]["file"]), 1)
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
    assert served == [1, 2, 3]  # each start served a run under a new number
    runs = RunIndex.in_state_dir(tmp_path / "state").runs()
    assert [(r["run"], r["status"]) for r in runs] == [(1, "complete"), (2, "interrupted"), (3, "complete")], runs
    killed = read_run(runs[1]["files"]["h5"])
    assert killed["run_status"] == "interrupted" and not killed["run_complete"]
    np.testing.assert_array_equal(killed["frame_index"], np.arange(len(killed["frame_index"])))
    for r in (runs[0], runs[2]):
        assert read_run(r["files"]["h5"])["run_complete"]
    assert len({r["files"]["h5"] for r in runs}) == 3


@pytest.mark.timeout(90)
def test_the_systemd_status_line_names_the_current_run(tmp_path, daemons, monkeypatch):  # noqa: F811
    """Under systemd (NOTIFY_SOCKET: a datagram socket of this test) the STATUS= line shows the current run: its
    number, name, file and frames."""
    import socket as so

    sock = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    params = write_params(tmp_path)
    d = daemons(["--param-file", params, "--simulate", 0, "--rate", 50, "--workers", 1, "--output-h5",
                 "n_{run:02d}.h5", "--no-zarr"], tmp_path)
    d.wait_ready()
    assert _runs_cmd(tmp_path, "start", "--name", "ramp", "--control", d.control).returncode == 0
    want = re.compile(r"running: run 2 'ramp' \S*n_02\.h5 \(\d+ frames\); \d+ frames written")
    deadline = time.monotonic() + 20
    seen = []
    while time.monotonic() < deadline:
        fields = dict(x.split("=", 1) for x in sock.recv(4096).decode().splitlines() if "=" in x)
        if "STATUS" in fields:
            seen.append(fields["STATUS"])
            if want.match(fields["STATUS"]):
                break
    else:
        raise AssertionError(f"no STATUS line naming run 2: {seen[-3:]}")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(40) == 0, d.stderr
    sock.close()

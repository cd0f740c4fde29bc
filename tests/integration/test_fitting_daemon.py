"""Fitting in the real daemon: every frame fitted with the peak list in force for its frame_index while the
list changes under a running stream (``ringstream peaks set`` and MIDAS's ``peak_update.txt``), fit.bin readable
with the MIDAS reshape, the TCH model (``[fit] model = "tch"``) in the daemon, and fitting in offline
``ringstream integrate`` with either model.

The 128 x 128 simulated detector of ``common.SMALL_PARAMS`` has rings at R bins 11, 22, 33, 44 (R = 15.5, 26.5,
37.5, 48.5 px; Γ ≈ 3.5 px). Each test starts the console script in its own session and kills its group at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from common import NY, NZ, SMALL_PARAMS, ringstream_command
from test_daemon import end_group

from ringstream.daemon.status import NoDaemon, query_status
from ringstream.transport.endpoints import free_tcp_endpoint

RINGS = (15.5, 26.5, 37.5, 48.5)
FIT = "FitROIPadding 5\n"


def start(tmp: Path, params: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    (tmp / "setup.txt").write_text(SMALL_PARAMS.format(nz=NZ, ny=NY) + params)
    control = free_tcp_endpoint()
    proc = subprocess.Popen(ringstream_command() + ["run", "--param-file", "setup.txt", "--output-h5", "out.h5",
                                                    "--engine", "cpu", "--control", control, *args],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})), start_new_session=True)
    return proc, control


@pytest.fixture
def procs():
    """Daemons started by a test; at teardown whatever is left of their process groups is killed, and a leak (a
    group still alive 5 s after the daemon exited) fails the test."""
    started: list[subprocess.Popen] = []
    yield started
    leaked = [line for p in started for line in end_group(p)]
    assert not leaked, "; ".join(leaked)


def wait_frames(control: str, n: int, deadline_s: float = 40.0) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            st = query_status(control, timeout=0.5)
            if st["state"] == "running" and st["totals"]["sent"] >= n:
                return st
        except NoDaemon:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not send {n} frames within {deadline_s} s")


def peaks_cmd(control: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ringstream_command() + ["peaks", *args, "--control", control], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.timeout(120)
def test_peak_list_changes_take_effect_exactly_from_their_frame(tmp_path, procs):
    proc, control = start(tmp_path, f"PeakLocation {RINGS[0]}\n{FIT}", "--simulate", "0", "--rate", "150",
                          "--workers", "2", env={"RINGSTREAM_FIT_SLOTS": "2"})
    procs.append(proc)
    wait_frames(control, 60)
    done = peaks_cmd(control, "set", str(RINGS[2]))
    assert done.returncode == 0, done.stderr
    first = int(done.stdout.split("from frame ")[1].split(":")[0])
    assert done.stdout.strip() == f"peak list 1 in force from frame {first}: {RINGS[2]:g}"
    refused = peaks_cmd(control, "add", "20", "30")  # 3 peaks for 2 rows: refused, the run goes on
    assert refused.returncode == 3 and "do not fit the run's 2 rows per frame" in refused.stderr
    wait_frames(control, first + 100)
    (tmp_path / "peak_update.txt").write_text(f"mode append\n{RINGS[3]:g}\n")
    deadline = time.monotonic() + 10
    while (tmp_path / "peak_update.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "peak_update.txt").exists(), "peak_update.txt was not taken"
    st = wait_frames(control, 1)
    wait_frames(control, st["totals"]["sent"] + 100)  # frames well past the second change
    proc.send_signal(signal.SIGTERM)  # drain: every frame sent is fitted and written
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    written = int(err.split("written ")[-1].split(",")[0])
    with h5py.File(tmp_path / "out.h5", "r") as f:  # the writer's record of the changes
        upd = f["/entry/fit/peak_updates"]
        updates = {int(q): int(k) for q, k in zip(upd["seq"][()], upd["from_frame"][()], strict=True)}
        origins = [o.decode() if isinstance(o, bytes) else o for o in upd["origin"][()]]
        lists = [list(v) for v in upd["peaks"][()]]
    assert sorted(updates) == [1, 2] and updates[1] == first and updates[2] > first
    assert origins == ["control", "peak_update.txt"] and lists == [[RINGS[2]], [RINGS[2], RINGS[3]]]
    fit = np.fromfile(tmp_path / "fit.bin").reshape(-1, 2, 7)
    assert fit.shape == (written, 2, 7) and written > updates[2] + 50
    for k in range(written):
        want = [RINGS[0]] if k < updates[1] else [RINGS[2]] if k < updates[2] else [RINGS[2], RINGS[3]]
        got = fit[k, :, 3]
        assert np.all(np.abs(got[:len(want)] - want) < 0.5), (k, got, want)
        assert np.all(np.isnan(fit[k, len(want):])), (k, fit[k])
    assert (tmp_path / "active_peaks.txt").read_text() == f"{RINGS[2]:.4f}\n{RINGS[3]:.4f}\n"
    curves = (tmp_path / "fit_curves.bin").read_bytes()
    assert len(curves) > 0


@pytest.mark.timeout(120)
def test_status_counts_fit_reasons_and_bad_peak_update_files(tmp_path, procs):
    proc, control = start(tmp_path, f"PeakLocation {RINGS[1]}\nPeakLocation 900\n{FIT}", "--simulate", "0",
                          "--rate", "50", "--workers", "1")
    procs.append(proc)
    wait_frames(control, 20)
    (tmp_path / "peak_update.txt").write_text("mode sideways\n12\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = query_status(control)
        if st["peaks"]["peak_update_file_rejected"] == 1:
            break
        time.sleep(0.1)
    st = query_status(control)
    assert st["peaks"]["peak_update_file_rejected"] == 1 and st["peaks"]["seq"] == 0
    counters = st["children"]["worker-0"]["counters"]
    assert counters["fit_nan_peak_outside_r_range"] == counters["fit_frames"] >= 10
    assert counters["fit_rows_ok"] == counters["fit_frames"]
    assert subprocess.run(ringstream_command() + ["status", "--control", control, "--json"], capture_output=True,
                          text=True, timeout=30).returncode == 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.count("PeakLocation 900") == 1  # logged once, not per frame
    assert "mode 'sideways'" in err
    n = json.loads(json.dumps(counters))["fit_frames"]
    assert np.fromfile(tmp_path / "fit.bin").reshape(-1, 2, 7).shape[0] >= n


@pytest.mark.timeout(120)
def test_a_tch_run_writes_tch_rows_and_the_file_says_so(tmp_path, procs):
    """[fit] model = "tch": fit.bin rows [area, center (deg 2θ), sig, gam, FWHM, eta, chi²/dof] at the rings' 2θ,
    the same rows in /entry/fit/peaks, and /entry/fit naming the model and its columns."""
    from ringstream.fitting import tch

    proc, control = start(tmp_path, f"PeakLocation {RINGS[1]}\nPeakLocation {RINGS[3]}\n{FIT}", "--simulate", "0",
                          "--rate", "100", "--workers", "1", env={"RINGSTREAM_FIT_MODEL": "tch"})
    procs.append(proc)
    wait_frames(control, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "model tch" in err
    written = int(err.split("written ")[-1].split(",")[0])
    fit = np.fromfile(tmp_path / "fit.bin").reshape(-1, 2, 7)
    assert fit.shape == (written, 2, 7) and written >= 10 and np.isfinite(fit).all()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        e = f["entry"]
        attrs = dict(e["fit"].attrs)
        assert attrs["model"] == "tch" and attrs["x_axis"] == "two_theta_deg"
        assert attrs["columns"] == e["fit/peaks"].attrs["columns"] == "area,center,sig,gam,FWHM,eta,chi2_dof"
        np.testing.assert_array_equal(e["fit/peaks"][()], fit)
        centres = np.interp(RINGS[1::2], e["data/r_px"][()], e["data/radial_axis"][()])  # the rings' 2θ
    np.testing.assert_array_less(np.abs(fit[:, :, 1] - centres), 0.006)  # within half a bin (~0.0115°)
    fw, eta = tch.fwhm_eta(fit[:, :, 2], fit[:, :, 3])
    np.testing.assert_array_equal(fit[:, :, 4], fw)
    np.testing.assert_array_equal(fit[:, :, 5], eta)
    assert np.all((fit[:, :, 0] > 0) & (fit[:, :, 6] > 0) & (eta >= 0) & (eta <= 1))
    assert np.all((fw > 0.01) & (fw < 0.1))  # the simulated rings: ~3.5 px FWHM, ~0.04°


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["pv", "tch"])
def test_offline_integrate_fits_with_the_same_code(tmp_path, model):
    import tifffile

    from ringstream.ingest.simulated import SimulatedSource
    from ringstream.params import parse_params

    text = SMALL_PARAMS.format(nz=NZ, ny=NY) + f"PeakLocation {RINGS[1]}\nPeakLocation {RINGS[3]}\n{FIT}"
    (tmp_path / "setup.txt").write_text(text)
    src = SimulatedSource(parse_params(text), n_frames=3)
    for k in range(3):
        tifffile.imwrite(tmp_path / f"img_{k:03d}.tif", src.make_frame(k))
    done = subprocess.run(ringstream_command() + ["integrate", "--param-file", "setup.txt", "--output-h5", "o.h5",
                                                  "--engine", "cpu", "img_000.tif", "img_001.tif", "img_002.tif"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100,
                          env=dict(os.environ, RINGSTREAM_FIT_MODEL=model))
    assert done.returncode == 0, done.stderr
    fit = np.fromfile(tmp_path / "fit.bin").reshape(-1, 2, 7)
    assert fit.shape == (3, 2, 7)
    imap = _map(text)
    if model == "pv":
        np.testing.assert_allclose(fit[:, :, 3], [[RINGS[1], RINGS[3]]] * 3, atol=0.5)
    else:  # the centre column is 2θ
        np.testing.assert_allclose(fit[:, :, 1], [np.interp(RINGS[1::2], imap.r_px, imap.two_theta)] * 3,
                                   atol=0.006)
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["entry/fit"].attrs["model"] == model
    # the same code as the daemon's workers: FrameFitter on the same lineouts
    from ringstream.fitting.frame import FrameFitter

    ff = FrameFitter(parse_params(text), imap.r_px, model=model, two_theta=imap.two_theta)
    ref = np.stack([ff.fit(y).fit for y in _lineouts(text, tmp_path)])
    np.testing.assert_allclose(fit, ref, rtol=1e-6, atol=1e-9)


def _map(text):
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import parse_params

    return load_or_build(parse_params(text))[0]


def _lineouts(text, folder):
    import tifffile

    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import parse_params

    p = parse_params(text)
    eng = ReferenceEngine(load_or_build(p)[0], normalize=p.Normalize)
    return [eng.integrate(tifffile.imread(folder / f"img_{k:03d}.tif"))[0] for k in range(3)]

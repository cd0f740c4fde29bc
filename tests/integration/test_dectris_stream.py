"""DECTRIS Stream V2 input in the real ``ringstream run --dectris-stream`` daemon, fed by ``ringstream dectris-sim``.

One daemon (CPU engine, one worker) stays up for the whole module while the simulator, a process of its own each
time, serves series of 8-, 16- and 32-bit frames compressed with bslz4, lz4 or not at all; then a series with a
dropped image and one bad message of every kind; then a disconnect; then a series whose start was missed. Every
series is one run and one file holding every image_id once, in order, whose lineouts equal (array_equal) the
offline integration of the same frames; the gap and the bad messages are counted; the daemon drains and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from common import NY, NZ, ringstream_command
from test_daemon import Daemon, end_group, write_params

from ringstream.ingest.dectris_sim import BAD_KINDS
from ringstream.runs.index import RunIndex
from ringstream.transport.endpoints import free_tcp_port

IMAGES = 5
DTYPES = ("uint8", "uint16", "uint32")
CODECS = ("bslz4", "lz4", "none")


def stack(dtype: str, seed: int) -> np.ndarray:
    """IMAGES * 3 frames of ``dtype`` (values that use the type's range), [n, NZ, NY]."""
    rng = np.random.default_rng(seed)
    scale = {"uint8": 40.0, "uint16": 3000.0, "uint32": 2.0e6}[dtype]
    return rng.poisson(scale, (IMAGES * 3, NZ, NY)).astype(dtype)


def sim_mask() -> np.ndarray:
    """The pixel mask ``ringstream dectris-sim --pixel-mask`` sends: every 97th pixel flagged (bit 0, a gap)."""
    mask = np.zeros((NZ, NY), np.uint32)
    mask.reshape(-1)[::97] = 1
    return mask


def reference(params_path: Path, frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The reference engine's lineouts of ``frames``, float32 as the file stores them; with ``mask`` (bool, True =
    masked) the offline integration with that mask as the parameter file's MaskFile."""
    import tifffile

    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    if mask is not None:
        masked = params_path.with_name("masked_setup.txt")
        tifffile.imwrite(masked.with_suffix(".tif"), mask.astype(np.uint8))
        masked.write_text(params_path.read_text() + f"MaskFile {masked.with_suffix('.tif')}\n")
        params_path = masked
    p = load_params(params_path)
    imap, _ = load_or_build(p)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    return np.stack([engine.integrate_batch(f[None])[0][0] for f in frames]).astype(np.float32)


def simulate(folder: Path, endpoint: str, *args) -> str:
    """Run ``ringstream dectris-sim --bind endpoint ARGS`` to its end; its stdout."""
    done = subprocess.run(ringstream_command() + ["dectris-sim", "--bind", endpoint, "--send-timeout", "30",
                                                  *map(str, args)],
                          cwd=folder, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def read_run(folder: Path, run: dict) -> tuple[list[int], np.ndarray, list[dict]]:
    """(source ids, lineouts, per-frame metadata) of a run's file."""
    with h5py.File(folder / run["files"]["h5"], "r") as f:
        data = f["/entry/data"]
        assert bool(data["I"].attrs["run_complete"])
        ids = [int(s.decode() if isinstance(s, bytes) else s) for s in data["source_id"][()]]
        meta = [json.loads(m) for m in data["metadata/metadata_json"][()]]
        return ids, data["I"][()], meta


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The daemon on a free port, and where it writes."""
    folder = tmp_path_factory.mktemp("dectris")
    params = write_params(folder)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = folder / "dectris.toml"
    config.write_text("[source]\ndectris_user_data = true\ndectris_pixel_mask = true\n")
    d = Daemon(["--config", config, "--param-file", params, "--dectris-stream", endpoint, "--workers", 1,
                "--engine", "cpu", "--no-zarr", "--output-h5", "series_{run:03d}.h5"], folder)
    try:
        d.wait_ready(60)
        yield d, folder, params, endpoint
    finally:  # as the daemons fixture: whatever is left of its process group is killed, and that fails the test
        leaked = end_group(d.proc)
        assert not leaked, f"at the end of the module: {'; '.join(leaked)}"


def runs_of(folder: Path) -> list[dict]:
    return RunIndex.in_state_dir(folder / ".ringstream").runs()


def wait_runs(d, n: int, what: str) -> None:
    d.wait_status(lambda s: s["runs"].get("complete", 0) >= n, what, 40)


def ingest(d, ends: int) -> dict:
    """The ingest's counters once its heartbeat has counted ``ends`` end messages (those before are counted too)."""
    s = d.wait_status(lambda s: s["children"]["ingest"]["counters"].get("dectris_ends", 0) >= ends,
                      f"{ends} series ends counted", 20)
    return s["children"]["ingest"]["counters"]


@pytest.mark.timeout(240)
def test_series_of_every_type_and_codec_then_faults_disconnect_and_a_missed_start(served):
    d, folder, params, endpoint = served
    stacks = {}
    n_runs = 0
    # 8-, 16- and 32-bit frames, each type in three series: bslz4, lz4, uncompressed; the geometry of the parameter
    # file (no warning), a pixel mask (its pixels left out: lineouts as offline with it as MaskFile), user_data
    geometry = ["--start-field", "beam_center_x=63.3", "--start-field", "beam_center_y=61.2", "--start-field",
                "detector_distance=1.0", "--start-field", "incident_wavelength=0.2", "--start-field", "count_time=0.5"]
    for k, dtype in enumerate(DTYPES):
        stacks[dtype] = stack(dtype, k)
        np.save(folder / f"{dtype}.npy", stacks[dtype])
        out = simulate(folder, endpoint, "--stack", f"{dtype}.npy", "--images", IMAGES, "--series", 3,
                       "--series-id", 10 * (k + 1), *sum((["--codec", c] for c in CODECS), []), *geometry,
                       "--pixel-mask", "--user-data", json.dumps({"scan": k + 7, "note": "x"}))
        assert out.count(" sent (") == 3, out
        n_runs += 3
        wait_runs(d, n_runs, f"the {dtype} series")
    runs = runs_of(folder)
    assert [r["status"] for r in runs] == ["complete"] * 9, runs
    some = stacks["uint16"][:2]  # the mask changes the lineouts (so the equalities below say it was applied)
    assert not np.array_equal(reference(params, some, sim_mask() != 0), reference(params, some))
    for k, dtype in enumerate(DTYPES):
        for j, codec in enumerate(CODECS):
            run = runs[3 * k + j]
            assert run["meta"]["series_id"] == 10 * (k + 1) + j and run["meta"]["number_of_images"] == IMAGES
            assert run["reason"] == f"series {10 * (k + 1) + j} end", run
            ids, lineouts, meta = read_run(folder, run)
            assert ids == list(range(IMAGES)), (dtype, codec, ids)
            frames = stacks[dtype][j * IMAGES:(j + 1) * IMAGES]
            np.testing.assert_array_equal(lineouts, reference(params, frames, sim_mask() != 0),
                                          err_msg=f"{dtype} {codec}")
            assert [m["image_id"] for m in meta] == ids and {m["series_id"] for m in meta} == {run["meta"]["series_id"]}
            with h5py.File(folder / run["files"]["h5"], "r") as f:  # the series' fields and user_data, per frame
                # timestamps: series_date + start_time, which the simulator sets to image_id ms
                np.testing.assert_allclose(np.diff(f["/entry/data/timestamp"][()]), 0.001, atol=1e-6)
                m = f["/entry/data/metadata"]
                assert list(m["beam_center_x"][()]) == [63.3] * IMAGES and list(m["count_time"][()]) == [0.5] * IMAGES
                assert list(m["user_data_scan"][()]) == [k + 7] * IMAGES and meta[0]["user_data_note"] == "x"
                # the series' fields once for the run, with the detector's mask (the one the frames were
                # integrated with), compressed
                r = f["/entry/run_metadata"]
                assert (r["series_id"][()], r["number_of_images"][()]) == (10 * (k + 1) + j, IMAGES)
                assert (r["beam_center_x"][()], r["detector_distance"][()], r["count_time"][()]) == (63.3, 1.0, 0.5)
                assert r["series_unique_id"][()].decode() == run["meta"]["series_unique_id"]
                np.testing.assert_array_equal(r["pixel_mask"][()], sim_mask())
                assert r["pixel_mask"].id.get_create_plist().get_filter(0)[0] == 32008  # bitshuffle + LZ4
                assert r["pixel_mask"].attrs["sha256"] == run["meta"]["pixel_mask_sha256"]
                assert "pixel_mask_sha256" not in meta[0]  # the worker's, not the source's
    from ringstream.geometry.cache import load_or_build
    from ringstream.geometry.mask_store import ExtraMask
    from ringstream.params import load_params

    p = load_params(params)
    base_area = load_or_build(p)[0].bin_area
    masked_area = load_or_build(p, extra_mask=ExtraMask(runs[0]["meta"]["pixel_mask_sha256"], sim_mask() != 0))[0].bin_area
    assert masked_area.sum() < base_area.sum()
    with h5py.File(folder / runs[0]["files"]["h5"], "r") as f:  # the file describes the map the run was integrated with
        np.testing.assert_array_equal(f["/entry/geometry/area"][()], masked_area)
    c = ingest(d, 9)
    assert (c["dectris_series"], c["dectris_ends"], c["dectris_received"], c["dectris_gaps"]) == (9, 9, 45, 0)
    assert c["dectris_masked_pixels"] == len(range(0, NZ * NY, 97))  # the simulator flags every 97th pixel
    assert "geometry disagrees" not in d.stderr and "they are left out of its integration" in d.stderr

    # a dropped image and one bad message of every kind, then a disconnect of the detector, then another series
    out = simulate(folder, endpoint, "--stack", "uint16.npy", "--images", IMAGES, "--series", 2, "--series-id", 50,
                   "--drop", 3, "--bad-at", 2, *sum((["--bad", b] for b in BAD_KINDS), []),
                   "--disconnect-after", 1, "--down", 1.0, "--start-field", "beam_center_x=70",
                   "--start-field", "beam_center_y=61.2")
    assert "disconnected" in out
    wait_runs(d, n_runs + 2, "the series around the disconnect")
    c = ingest(d, 11)
    assert (c["dectris_gaps"], c["dectris_missed"]) == (2, 2)  # image 3 of both series
    assert c["dectris_disconnects"] >= 1 and c["dectris_connects"] >= 2
    rejected = {k: c[f"dropped_{k}"] for k in ("malformed", "unknown_type", "unsupported", "wrong_shape",
                                                "wrong_dtype")}
    # per series: garbage and bad-size malformed; column-major, unknown-tag, unknown-compression unsupported
    assert rejected == {"malformed": 4, "unknown_type": 2, "unsupported": 6, "wrong_shape": 2, "wrong_dtype": 2}
    for run, first in zip(runs_of(folder)[n_runs:], (0, IMAGES), strict=True):
        ids, lineouts, _ = read_run(folder, run)
        assert ids == [0, 1, 2, 4], ids  # every good image once, in order; image 3 never sent
        want = stacks["uint16"][[first + i for i in ids]]  # no mask sent: every pixel integrated again
        np.testing.assert_array_equal(lineouts, reference(params, want))
        with h5py.File(folder / run["files"]["h5"], "r") as f:
            assert "pixel_mask" not in f["/entry/run_metadata"] and f["/entry/run_metadata/series_id"][()] == 50 + \
                (first // IMAGES)
            np.testing.assert_array_equal(f["/entry/geometry/area"][()], base_area)
    n_runs += 2

    # the service started mid-series: a series without its start is taken as it comes
    simulate(folder, endpoint, "--stack", "uint8.npy", "--images", IMAGES, "--series", 1, "--series-id", 70,
             "--no-start", 1, "--codec", "lz4")
    wait_runs(d, n_runs + 1, "the series without a start")
    run = runs_of(folder)[n_runs]
    assert run["meta"] == {"series_id": 70, "series_unique_id": run["meta"]["series_unique_id"]}
    ids, lineouts, _ = read_run(folder, run)
    assert ids == list(range(IMAGES))
    np.testing.assert_array_equal(lineouts, reference(params, stacks["uint8"][:IMAGES]))
    assert ingest(d, 12)["dectris_starts_missed"] == 1

    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr
    received, integrated, written, rejected_n, dropped = d.counts()
    assert (received, integrated, written, rejected_n) == (45 + 8 + 5,) * 3 + (0,)
    assert dropped == 16, d.stderr  # the bad messages
    assert "column-major" in d.stderr and "image_id 2 -> 4" in d.stderr
    assert d.stderr.count("geometry disagrees") == 1 and "beam centre (70, " in d.stderr

"""The real ``ringstream run --folder`` daemon (console script, subprocess) on a 32 x 32 detector.

Files are written into the watched folder while it runs. Checked: every format (TIFF, multi-page TIFF, CBF, GE,
HDF5 with bitshuffle-LZ4, raw .bin with a header, .npy) arrives bit-exact, in natural order for the files already
there (the lineouts equal the reference engine's on the pixels the test wrote, and the source ids name every
file and frame); files written slowly in chunks are never read half-written, with inotify and with polling; a file
renamed into place is seen once, a rewritten one is not read again; 5,000 small files arrive, none missed or
doubled; a truncated file is retried, skipped and counted, and a wrong-shape file rejected, while the ones after them
are processed; ``--file`` reads exactly one file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import test_daemon
import tifffile
from test_daemon import Daemon

daemons = test_daemon.daemons  # the fixture that starts daemons and fails a test that leaks a process

NZ, NY = 32, 32
PARAMS = """\
NrPixelsY 32
NrPixelsZ 32
Lsd 1000000
px 200
BC 15.3 16.2
ty 0.2
RMin 2
RMax 15
RBinSize 1
EtaBinSize 30
Wavelength 0.2
"""


def setup(tmp_path: Path) -> tuple[Path, Path]:
    params = tmp_path / "setup.txt"
    params.write_text(PARAMS)
    folder = tmp_path / "in"
    folder.mkdir()
    return params, folder


def frames(n: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    high = {np.uint16: 65535, np.int32: 2**20, np.uint32: 2**32 - 1}.get(dtype, 2**15)
    return rng.integers(0, high, size=(n, NZ, NY), endpoint=True, dtype=dtype)


def make_old(*paths: Path) -> None:
    """Files that were there long before the daemon: an mtime a minute ago."""
    t = time.time() - 60
    for p in paths:
        os.utime(p, (t, t))


def run_args(params: Path, *extra) -> list:
    return ["--param-file", params, "--workers", 1, "--engine", "cpu", "--output-h5", "out.h5", *extra]


def read_out(path: Path) -> tuple[list[str], np.ndarray]:
    with h5py.File(path, "r") as f:
        data = f["/entry/data"]
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in data["source_id"][()]]
        assert bool(data["I"].attrs["run_complete"])
        np.testing.assert_array_equal(data["frame_index"][()], np.arange(len(ids)))
        return ids, data["I"][()]


def reference(params: Path, pixels: list[np.ndarray]) -> np.ndarray:
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    p = load_params(params)
    imap, _ = load_or_build(p)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    return np.stack([engine.integrate(np.asarray(f))[0] for f in pixels]).astype(np.float32)


def assert_same_pixels(params: Path, got: np.ndarray, pixels: list[np.ndarray]) -> None:
    """The daemon's lineouts are bit-identical to the reference engine's on exactly these pixels (the daemon runs
    the same engine; one wrong pixel would change a bin)."""
    want = reference(params, pixels)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def finish(d: Daemon, timeout: float = 40) -> tuple[int, ...]:
    rc = d.wait(timeout)
    assert rc == 0, d.stderr
    return d.counts()


def write_slowly(path: Path, data: bytes | list[bytes], chunks: int = 5, pause: float = 0.15) -> None:
    """Write ``data`` to ``path`` in ``chunks`` pieces (or the pieces of a list) with pauses, flushed each time
    (a detector writing a file)."""
    if isinstance(data, bytes):
        step = -(-len(data) // chunks)
        data = [data[k:k + step] for k in range(0, len(data), step)]
    with open(path, "wb") as fh:
        for piece in data:
            fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(pause)


def tiff_bytes(frame: np.ndarray, tmp: Path) -> bytes:
    tifffile.imwrite(tmp, frame)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("copy_threads", [1, 3], ids=["ingest-thread", "3-copy-threads"])
def test_every_format_arrives_bit_exact_in_natural_order(tmp_path, daemons, monkeypatch, copy_threads):
    from fabio.cbfimage import CbfImage

    params, folder = setup(tmp_path)
    tif = frames(1, np.uint32, 1)
    multi = frames(2, np.uint16, 2)
    cbf = frames(1, np.int32, 3)
    ge = frames(3, np.uint16, 4)
    h5 = frames(3, np.uint32, 5)
    raw = frames(2, np.int32, 6)
    npy = frames(2, np.uint16, 7)
    tifffile.imwrite(folder / "img_1.tif", tif[0])
    tifffile.imwrite(folder / "img_2.tiff", multi, photometric="minisblack")
    CbfImage(data=cbf[0]).write(str(folder / "img_3.cbf"))
    (folder / "img_4.ge2").write_bytes(b"\x07" * 8192 + ge.astype("<u2").tobytes())
    with h5py.File(folder / "img_5.h5", "w") as f:
        f.create_dataset("entry/data/data", data=h5, chunks=(1, NZ, NY), **hdf5plugin.Bitshuffle(cname="lz4"))
    (folder / "img_10.bin").write_bytes(b"\xff" * 64 + raw.astype("<i4").tobytes())
    np.save(folder / "img_9.npy", npy)
    (folder / "notes.txt").write_text("not an image")
    make_old(*folder.iterdir())
    monkeypatch.setenv("RINGSTREAM_TRANSPORT_COPY_THREADS", str(copy_threads))  # 3: files read on copy threads
    monkeypatch.setenv("RINGSTREAM_SOURCE_RAW_DTYPE", "<i4")
    monkeypatch.setenv("RINGSTREAM_SOURCE_RAW_HEADER", "64")
    d = daemons(run_args(params, "--folder", folder, "--idle-timeout", 1.0), tmp_path)
    received, integrated, written, rejected, dropped = finish(d)
    assert ("ingest: 3 copy threads" in d.stderr) == (copy_threads == 3), d.stderr
    want_ids = (["img_1.tif", "img_2.tiff:0", "img_2.tiff:1", "img_3.cbf"] + [f"img_4.ge2:{k}" for k in range(3)]
                + [f"img_5.h5:{k}" for k in range(3)] + ["img_9.npy:0", "img_9.npy:1", "img_10.bin:0", "img_10.bin:1"])
    assert (received, written, rejected, dropped) == (len(want_ids), len(want_ids), 0, 0)
    ids, lineouts = read_out(tmp_path / "out.h5")
    assert ids == want_ids
    pixels = [tif[0], *multi, cbf[0], *ge, *h5, *npy, *raw]
    assert_same_pixels(params, lineouts, pixels)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_new_files_after_existing_slow_writes_renames_and_rewrites(tmp_path, daemons, monkeypatch, watch):
    params, folder = setup(tmp_path)
    data = frames(6, np.uint32, 11)
    for k, name in ((0, "a_1.tif"), (1, "a_9.tif"), (2, "a_10.tif")):
        tifffile.imwrite(folder / name, data[k])
    make_old(*folder.iterdir())
    monkeypatch.setenv("RINGSTREAM_SOURCE_POLL_INTERVAL", "0.3")  # poll: complete when stable for 0.3 s
    d = daemons(run_args(params, "--folder", folder, "--count", 6, "--watch", watch), tmp_path)
    d.wait_ready()
    d.wait_written(3)
    # a file written slowly in chunks: never read before its writer is done (inotify: closed; poll: size stable)
    write_slowly(folder / "c_slow.tif", tiff_bytes(data[3], tmp_path / "t.tif"), chunks=6, pause=0.12)
    d.wait_written(4)
    # a GE file written one whole frame at a time: every prefix parses, so only completeness keeps it whole
    ge = frames(3, np.uint16, 12)
    write_slowly(folder / "d_slow.ge2", [b"\0" * 8192 + ge[0].tobytes(), ge[1].tobytes(), ge[2].tobytes()])
    d.wait_written(7)
    # a processed file rewritten in place: ignored; the next file still comes. inotify reports the rewrite (counted
    # once, logged); polling never lists a processed file again, so a re-read would show as a second a_1.tif frame,
    # in natural order before b_5.tif, in the ids checked below
    tifffile.imwrite(folder / "a_1.tif", data[5])
    if watch == "inotify":
        d.wait_status(lambda st: st["children"]["ingest"]["counters"]["files_repeated"] >= 1, "rewrite of a_1.tif")
    # a file renamed into place from a hidden temporary name: seen once
    tifffile.imwrite(folder / ".b_5.tif.part", data[4])
    os.rename(folder / ".b_5.tif.part", folder / "b_5.tif")
    received, integrated, written, rejected, dropped = finish(d)
    assert (received, written, rejected, dropped) == (8, 8, 0, 0)
    ids, lineouts = read_out(tmp_path / "out.h5")
    assert ids == ["a_1.tif", "a_9.tif", "a_10.tif", "c_slow.tif", "d_slow.ge2:0", "d_slow.ge2:1", "d_slow.ge2:2",
                   "b_5.tif"]
    assert_same_pixels(params, lineouts, [*data[:4], *ge, data[4]])
    repeated = [line for _, line in d.lines if "a_1.tif: already processed in this run" in line]
    assert len(repeated) == (1 if watch == "inotify" else 0), d.stderr
    assert not [line for _, line in d.lines if "c_slow.tif" in line and "WARNING" in line], d.stderr


@pytest.mark.timeout(90)
def test_5000_small_files_none_missed_or_doubled(tmp_path, daemons):
    params, folder = setup(tmp_path)
    n = 5000
    base = frames(1, np.uint16, 21)[0]
    d = daemons(run_args(params, "--folder", folder, "--count", n, "--extension", "tif") + ["--save-interval", 1000],
                tmp_path)
    d.wait_ready()
    for k in range(n):
        frame = base.copy()
        frame.flat[:3] = (k, k >> 16, 7)  # each file unique
        tifffile.imwrite(folder / f"s_{k}.tif", frame)
    received, integrated, written, rejected, dropped = finish(d, timeout=70)
    assert (received, written, rejected, dropped) == (n, n, 0, 0)
    ids, lineouts = read_out(tmp_path / "out.h5")
    assert ids == [f"s_{k}.tif" for k in range(n)]  # each once, in the order they were closed
    assert len(set(ids)) == n
    picks = [0, 1, 4999, 2500]
    pix = []
    for k in picks:
        frame = base.copy()
        frame.flat[:3] = (k, k >> 16, 7)
        pix.append(frame)
    assert_same_pixels(params, lineouts[picks], pix)


@pytest.mark.timeout(60)
def test_corrupt_file_is_retried_skipped_counted_and_the_rest_processed(tmp_path, daemons, monkeypatch):
    params, folder = setup(tmp_path)
    data = frames(4, np.uint32, 31)
    tifffile.imwrite(folder / "c_1.tif", data[0])
    whole = tiff_bytes(data[1], tmp_path / "t.tif")
    (folder / "c_2.tif").write_bytes(whole[: len(whole) // 2])  # truncated: data ends past the end of file
    tifffile.imwrite(folder / "c_3.tif", data[2])
    tifffile.imwrite(folder / "c_4.tif", np.zeros((16, 48), np.uint32))  # wrong shape
    make_old(*folder.iterdir())
    monkeypatch.setenv("RINGSTREAM_SOURCE_RETRY_TIME", "0.6")
    monkeypatch.setenv("RINGSTREAM_SOURCE_POLL_INTERVAL", "0.2")
    d = daemons(run_args(params, "--folder", folder, "--idle-timeout", 3.0), tmp_path)
    d.wait_ready()
    d.wait_written(2)
    tifffile.imwrite(folder / "c_5.tif", data[3])  # a new file after the bad ones
    d.wait_written(3)
    # the skip comes retry_time after the first failure; the counters arrive with the ingest's heartbeats
    counters = d.wait_status(lambda st: st["children"]["ingest"]["counters"].get("dropped_corrupt_file"),
                             "skip of c_2.tif", 10)["children"]["ingest"]["counters"]
    received, integrated, written, rejected, dropped = finish(d)
    assert counters["dropped_corrupt_file"] == 1 and counters["dropped_wrong_shape"] == 1, counters
    assert (received, written, rejected, dropped) == (3, 3, 0, 2)
    assert "corrupt_file=1" in d.stderr and "wrong_shape=1" in d.stderr
    ids, lineouts = read_out(tmp_path / "out.h5")
    assert ids == ["c_1.tif", "c_3.tif", "c_5.tif"]
    assert_same_pixels(params, lineouts, [data[0], data[2], data[3]])
    skipped = [line for _, line in d.lines if "c_2.tif" in line and "skipped after retrying" in line]
    assert len(skipped) == 1, d.stderr
    shape = [line for _, line in d.lines if "c_4.tif" in line and "(16, 48)" in line and "(32, 32)" in line]
    assert len(shape) == 1, d.stderr


@pytest.mark.timeout(60)
def test_file_processes_exactly_one_file(tmp_path, daemons):
    params, folder = setup(tmp_path)
    data = frames(3, np.uint16, 41)
    tifffile.imwrite(folder / "x_1.tif", data[0])
    with h5py.File(folder / "x_2.h5", "w") as f:
        f.create_dataset("entry/data/data", data=data, chunks=(1, NZ, NY), **hdf5plugin.Bitshuffle(cname="lz4"))
    tifffile.imwrite(folder / "x_3.tif", data[2])
    d = daemons(run_args(params, "--file", folder / "x_2.h5"), tmp_path)
    received, integrated, written, rejected, dropped = finish(d)
    assert (received, written, rejected, dropped) == (3, 3, 0, 0)
    ids, lineouts = read_out(tmp_path / "out.h5")
    assert ids == ["x_2.h5:0", "x_2.h5:1", "x_2.h5:2"]
    assert_same_pixels(params, lineouts, list(data))

"""The folder source in-process (ringstream/ingest/folder.py, no daemon, no sockets): order, completeness rules,
filters, recursion, end conditions, retries and counters."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ringstream.errors import ConfigError, InputError
from ringstream.images.formats import FormatOptions
from ringstream.images.frame_codecs import decode_frame
from ringstream.ingest.folder import FolderOptions, FolderSource, normalize_extensions, parse_shape
from ringstream.ingest.source_base import IDLE

SHAPE = (8, 6)


def image(k: int, dtype=np.uint16) -> np.ndarray:
    return (np.arange(SHAPE[0] * SHAPE[1], dtype=np.int64).reshape(SHAPE) * 7 + k).astype(dtype)


def old(*paths: Path) -> None:
    t = time.time() - 60
    for p in paths:
        os.utime(p, (t, t))


def source(folder: Path, **kw) -> FolderSource:
    kw.setdefault("poll_interval", 0.1)
    kw.setdefault("retry_time", 0.3)
    opts = FolderOptions(folder=str(folder), **kw) if "file" not in kw else FolderOptions(**kw)
    return FolderSource(opts, FormatOptions(detector_shape=SHAPE), SHAPE, dtype="uint16")


def collect(src: FolderSource, n: int | None = None, timeout: float = 10.0, during=None):
    """Run ``frames()`` until it ends (or ``n`` frames, or ``timeout``); fill each frame like the ingest does.
    ``during(k)`` is called on every idle tick k (to write files while the source waits)."""
    stop = threading.Event()
    out, ticks = [], 0
    deadline = time.monotonic() + timeout
    try:
        for frame in src.frames(stop):
            if frame is IDLE:
                if during is not None:
                    during(ticks)
                ticks += 1
                assert time.monotonic() < deadline, f"timed out with {[sid for sid, _ in out]}"
                continue
            arr = np.empty(frame.shape, frame.dtype)
            if frame.codec != "none":  # an HDF5 chunk as stored: decoded as a worker decodes it
                decode_frame(frame.codec, frame.pixels, arr, frame.codec_header, frame.codec_block)
            else:
                frame.fill(arr)
            out.append((frame.source_id, arr))
            if n is not None and len(out) >= n:
                break
    finally:
        src.close()
    return out


@pytest.mark.timeout(20)
def test_existing_files_first_in_natural_order_then_new_ones_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, k in (("img_10.tif", 10), ("img_9.tif", 9), ("sub/img_2.tif", 2), ("img_1.tif", 1)):
        tifffile.imwrite(tmp_path / name, image(k))
    (tmp_path / ".hidden.tif").write_bytes(b"x")
    (tmp_path / "img_3.jpg").write_bytes(b"x")
    old(*tmp_path.rglob("*"))

    def during(tick):
        if tick == 2:
            (tmp_path / "later").mkdir()  # a new subfolder: watched, its files seen
            tifffile.imwrite(tmp_path / "later" / "img_0.tif", image(100))

    got = collect(source(tmp_path, recursive=True, count=5), during=during)
    assert [sid for sid, _ in got] == ["img_1.tif", "img_9.tif", "img_10.tif", "sub/img_2.tif", "later/img_0.tif"]
    for (_sid, arr), k in zip(got, (1, 9, 10, 2, 100), strict=True):
        np.testing.assert_array_equal(arr, image(k))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_a_young_existing_file_waits_until_complete(tmp_path, watch):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, image(5))
    data = whole.read_bytes()
    whole.unlink()
    fh = open(tmp_path / "a_1.tif", "wb")  # still being written when the source starts
    fh.write(data[: len(data) // 2])
    fh.flush()

    def during(tick):
        if tick == 3 and not fh.closed:
            fh.write(data[len(data) // 2:])
            fh.close()

    src = source(tmp_path, watch=watch, count=1, retry_time=2.0)
    got = collect(src, during=during)
    assert [sid for sid, _ in got] == ["a_1.tif"] and src.counters()["dropped_corrupt_file"] == 0
    np.testing.assert_array_equal(got[0][1], image(5))


@pytest.mark.timeout(20)
def test_extension_filter_idle_timeout_and_frames_cap(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", image(1))
    np.save(tmp_path / "b.npy", np.stack([image(2), image(3), image(4)]))
    old(*tmp_path.iterdir())
    t0 = time.monotonic()
    got = collect(source(tmp_path, extensions=("npy",), idle_timeout=0.5))
    assert [sid for sid, _ in got] == ["b.npy:0", "b.npy:1", "b.npy:2"]
    assert 0.4 < time.monotonic() - t0 < 5
    got = collect(source(tmp_path, frames=2, idle_timeout=5))
    assert [sid for sid, _ in got] == ["a.tif", "b.npy:0"]


@pytest.mark.timeout(20)
def test_truncated_file_retried_then_skipped_and_wrong_shape_rejected(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "c_1.tif", image(1))
    whole = tmp_path / "x.tif"
    tifffile.imwrite(whole, image(2))
    (tmp_path / "c_2.tif").write_bytes(whole.read_bytes()[:-40])
    whole.unlink()
    tifffile.imwrite(tmp_path / "c_3.tif", np.zeros((4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "c_4.tif", image(4))
    old(*tmp_path.iterdir())
    src = source(tmp_path, count=4, retry_time=0.4)
    t0 = time.monotonic()
    got = collect(src)
    assert [sid for sid, _ in got] == ["c_1.tif", "c_4.tif"]
    assert time.monotonic() - t0 >= 0.4  # the truncated file was retried for retry_time before it was skipped
    c = src.counters()
    assert (c["files_done"], c["dropped_corrupt_file"], c["dropped_wrong_shape"]) == (2, 1, 1)
    assert (c["files_waiting"], c["files_retrying"]) == (0, 0)
    text = caplog.text
    assert "c_2.tif: TIFF page 0 needs" in text and "skipped after retrying for 0.4 s" in text
    assert "c_3.tif: image shape (4, 4) does not match the detector (NrPixelsZ, NrPixelsY) = (8, 6)" in text


@pytest.mark.timeout(20)
def test_a_truncated_file_that_completes_in_time_is_read(tmp_path):
    whole = tmp_path / "x.tif"
    tifffile.imwrite(whole, image(3))
    data = whole.read_bytes()
    whole.unlink()
    path = tmp_path / "d_1.tif"
    path.write_bytes(data[:-40])  # closed short (a writer that closes and reopens)
    src = source(tmp_path, count=1, retry_time=5)

    def during(tick):
        if tick == 3:
            path.write_bytes(data)

    got = collect(src, during=during)
    assert [sid for sid, _ in got] == ["d_1.tif"] and src.counters()["dropped_corrupt_file"] == 0
    np.testing.assert_array_equal(got[0][1], image(3))


@pytest.mark.timeout(20)
def test_rename_seen_once_and_rewrite_not_read_again(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", image(1))
    old(*tmp_path.iterdir())
    src = source(tmp_path, idle_timeout=1.0)

    def during(tick):
        if tick == 1:
            tifffile.imwrite(tmp_path / "a.tif", image(50))  # rewritten in place after being read
            tifffile.imwrite(tmp_path / ".b.tif.tmp", image(2))
            os.rename(tmp_path / ".b.tif.tmp", tmp_path / "b.tif")

    got = collect(src, during=during)
    assert [sid for sid, _ in got] == ["a.tif", "b.tif"]
    np.testing.assert_array_equal(got[0][1], image(1))
    assert src.counters()["files_repeated"] == 1


@pytest.mark.timeout(20)
def test_file_option_reads_one_file_only(tmp_path):
    np.save(tmp_path / "one.npy", np.stack([image(1), image(2)]))
    tifffile.imwrite(tmp_path / "two.tif", image(3))
    got = collect(source(tmp_path, file=str(tmp_path / "one.npy")))
    assert [sid for sid, _ in got] == ["one.npy:0", "one.npy:1"]
    with pytest.raises(InputError, match=r"nope\.tif: no such image file \(\[source\] file\)"):
        source(tmp_path, file=str(tmp_path / "nope.tif"))
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    src = source(tmp_path, file=str(tmp_path / "bad.tif"), retry_time=0.2)
    assert collect(src) == [] and src.counters()["dropped_corrupt_file"] == 1


@pytest.mark.timeout(20)
def test_slot_dtype_is_the_wider_of_the_first_file_and_the_configured_one(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", image(1, np.uint32))
    opts = FolderOptions(folder=str(tmp_path))
    assert FolderSource(opts, FormatOptions(detector_shape=SHAPE), SHAPE, dtype="uint16").dtype == np.uint32
    assert FolderSource(opts, FormatOptions(detector_shape=SHAPE), SHAPE, dtype="float64").dtype == np.float64
    with pytest.raises(InputError, match=r"nowhere: no such folder \(\[source\] folder\)"):
        FolderSource(FolderOptions(folder=str(tmp_path / "nowhere")), FormatOptions(), SHAPE)


def test_option_parsing():
    assert normalize_extensions(["tif", ".CBF", "h5,nxs"]) == (".tif", ".cbf", ".h5", ".nxs")
    with pytest.raises(ConfigError, match=r"'jpg' is not a supported image extension"):
        normalize_extensions(["jpg"])
    assert parse_shape("2048x1024") == (2048, 1024) and parse_shape("") is None
    with pytest.raises(ConfigError, match=r"raw_shape: expected ROWSxCOLS"):
        parse_shape("2048")


@pytest.mark.timeout(20)
def test_fills_on_threads_after_the_generator_moved_on(tmp_path):
    """The ingest's copy threads may fill frames later, in any order, several of one file at once: every frame
    still reads its own pixels, and each file is closed once all its frames are filled."""
    from concurrent.futures import ThreadPoolExecutor

    stacks = {f"m_{j}.npy": np.stack([image(10 * j + k) for k in range(4)]) for j in range(3)}
    for name, data in stacks.items():
        np.save(tmp_path / name, data)
    old(*tmp_path.iterdir())
    src = source(tmp_path, count=3)
    frames = [f for f in src.frames(threading.Event()) if f is not IDLE]  # all yielded before any fill
    assert len(src._open_files) == 3
    outs = [np.empty(f.shape, f.dtype) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: frames[i].fill(outs[i]), reversed(range(len(frames)))))
    for f, out in zip(frames, outs, strict=True):
        name, k = f.source_id.split(":")
        np.testing.assert_array_equal(out, stacks[name][int(k)])
    assert len(src._open_files) == 0  # every file closed by its last fill
    src.close()



@pytest.mark.timeout(20)
def test_a_removed_folder_ends_the_source(tmp_path, caplog):
    import shutil

    watched = tmp_path / "w"
    watched.mkdir()
    tifffile.imwrite(watched / "a.tif", image(1))
    old(*watched.iterdir())

    def during(tick):
        if tick == 2:
            shutil.rmtree(watched)

    got = collect(source(watched, watch="inotify"), during=during)
    assert [sid for sid, _ in got] == ["a.tif"]
    assert f"folder {watched} was removed or unmounted; ending the run" in caplog.text


@pytest.mark.timeout(20)
def test_the_runs_own_output_file_in_the_folder_is_not_read(tmp_path):
    import h5py

    np.save(tmp_path / "a.npy", image(1))
    with h5py.File(tmp_path / "out.h5", "w") as f:  # as the writer leaves it: no image dataset
        f.create_dataset("entry/data/I", data=np.zeros((3, 5), np.float32))
    old(*tmp_path.iterdir())
    src = source(tmp_path, idle_timeout=0.3, exclude=(str(tmp_path / "out.h5"),))
    assert [sid for sid, _ in collect(src)] == ["a.npy"]
    assert src.counters()["dropped_corrupt_file"] == 0


@pytest.mark.timeout(20)
def test_no_inotify_watch_falls_back_to_polling_or_is_an_error(tmp_path, caplog):
    from unittest import mock

    tifffile.imwrite(tmp_path / "a.tif", image(1))
    old(*tmp_path.iterdir())
    limit = OSError(28, "No space left on device")  # what inotify says when max_user_watches is used up
    with mock.patch("inotify_simple.INotify.add_watch", side_effect=limit):
        assert [sid for sid, _ in collect(source(tmp_path, count=1))] == ["a.tif"]
        assert "inotify unavailable" in caplog.text and "polling every 0.1 s" in caplog.text
        with pytest.raises(InputError, match=r"cannot watch with inotify .*use \[source\] watch = 'poll'"):
            collect(source(tmp_path, count=1, watch="inotify"))


# --- configuration: [source] keys and the run flags of the folder source --------------------------------------


def _config(tmp_path, argv, env=None):
    import argparse

    from ringstream.config import add_config_arguments, config_from_args

    params = tmp_path / "setup.txt"
    params.write_text("NrPixelsY 6\nNrPixelsZ 8\nLsd 1000000\npx 200\nBC 3 4\nRMax 5\nWavelength 0.2\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args, extra = parser.parse_known_args(["--param-file", str(params), *map(str, argv)])
    return config_from_args(args, extra, env=env or {})


def test_run_flags_map_to_source_keys(tmp_path):
    cfg = _config(tmp_path, ["--folder", tmp_path, "--extension", "tif,cbf", "--extension", "h5", "--recursive",
                             "--count", 7, "--idle-timeout", 2.5, "--hdf5-dataset", "/entry/data", "--watch", "poll"],
                  env={"RINGSTREAM_SOURCE_RETRY_TIME": "3", "RINGSTREAM_SOURCE_RAW_SHAPE": "8x6"})
    s = cfg.source
    assert (s.kind, s.folder, s.extensions, s.recursive, s.file_count, s.idle_timeout, s.hdf5_dataset, s.watch,
            s.retry_time, s.raw_shape) == ("folder", str(tmp_path), ("tif", "cbf", "h5"), True, 7, 2.5,
                                           "/entry/data", "poll", 3.0, "8x6")
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, image(1))
    cfg = _config(tmp_path, ["--file", one])
    assert (cfg.source.kind, cfg.source.file, cfg.source.folder) == ("folder", str(one), "")


def test_bad_folder_settings_are_reported_together_naming_the_flag_or_variable(tmp_path):
    env = {"RINGSTREAM_SOURCE_POLL_INTERVAL": "0", "RINGSTREAM_SOURCE_RAW_DTYPE": "complex64",
           "RINGSTREAM_SOURCE_RAW_SHAPE": "2048"}
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, ["--folder", tmp_path / "nope", "--extension", "jpg"], env=env)
    msg = str(err.value)
    assert msg.startswith("5 configuration problems: ")
    for part in ("command line (--folder): [source] folder:", "nope' is not an existing folder",
                 "environment (RINGSTREAM_SOURCE_POLL_INTERVAL): [source] poll_interval: expected > 0 (s)",
                 "environment (RINGSTREAM_SOURCE_RAW_DTYPE): [source] raw_dtype: expected an integer or float",
                 "environment (RINGSTREAM_SOURCE_RAW_SHAPE): [source] raw_shape: expected ROWSxCOLS",
                 "command line (--extension): [source] extensions: 'jpg' is not a supported image extension"):
        assert part in msg, msg
    with pytest.raises(ConfigError, match=r"^command line \(--folder\): give one source, not also --simulate$"):
        _config(tmp_path, ["--folder", tmp_path, "--simulate", 3])


@pytest.mark.timeout(20)
def test_hdf5_chunks_of_one_frame_travel_as_stored(tmp_path):
    """A bslz4 dataset of one frame a chunk gives its chunks compressed (read_direct_chunk); a gzip one is decoded
    by HDF5 as before (fill frames)."""
    import h5py
    import hdf5plugin

    stack = np.stack([image(k) for k in range(3)])
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=stack, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=stack, chunks=(1, *SHAPE), compression="gzip")
    old(tmp_path / "a.h5", tmp_path / "b.h5")
    src = source(tmp_path, count=2, idle_timeout=0.3)
    assert src.keeps_compressed
    codecs = []
    stop = threading.Event()
    for frame in src.frames(stop):
        if frame is not IDLE:
            codecs.append((frame.source_id, frame.codec, frame.fill is None))
            if frame.fill is not None:
                frame.fill(np.empty(SHAPE, np.uint16))
    src.close()
    assert codecs == [(f"a.h5:{k}", "bslz4", True) for k in range(3)] + [(f"b.h5:{k}", "none", False)
                                                                           for k in range(3)]
    got = collect(source(tmp_path, file=str(tmp_path / "a.h5")))
    for k, (_, arr) in enumerate(got):
        np.testing.assert_array_equal(arr, stack[k])

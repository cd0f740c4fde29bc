"""Image files and darks: every format round-trips bit-exactly, folders in natural order, errors name the file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from ringstream.errors import InputError
from ringstream.images.files import GE_HEADER_BYTES, iter_images, load_dark, natural_key

SHAPE = (12, 10)  # (NrPixelsZ, NrPixelsY): deliberately not square


def _frames(n, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000 if np.dtype(dtype).kind == "u" else 30000, (n, *SHAPE)).astype(dtype)


def _read(paths, shape=None):
    return list(iter_images(paths, shape=shape))


def test_natural_key_orders_numbers_numerically():
    names = ["img_10.tif", "img_9.tif", "img_100.tif", "img_2.tif", "a.tif"]
    assert sorted(names, key=natural_key) == ["a.tif", "img_2.tif", "img_9.tif", "img_10.tif", "img_100.tif"]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32, np.float32])
def test_tiff_single_page_bit_exact(tmp_path, dtype):
    frame = _frames(1, dtype)[0]
    tifffile.imwrite(tmp_path / "one.tif", frame)
    (sid, got), = _read([tmp_path / "one.tif"], SHAPE)
    assert sid == "one.tif"
    assert got.dtype == frame.dtype and np.array_equal(got, frame)


def test_tiff_multi_page_ids(tmp_path):
    stack = _frames(3)
    with tifffile.TiffWriter(tmp_path / "stack.tiff") as tw:
        for f in stack:
            tw.write(f)
    out = _read([tmp_path / "stack.tiff"])
    assert [s for s, _ in out] == ["stack.tiff:0", "stack.tiff:1", "stack.tiff:2"]
    for (_, got), want in zip(out, stack, strict=True):
        assert np.array_equal(got, want)


def test_npy_2d_and_3d(tmp_path):
    stack = _frames(2, np.int32)
    np.save(tmp_path / "one.npy", stack[0])
    np.save(tmp_path / "many.npy", stack)
    out = _read([tmp_path / "one.npy", tmp_path / "many.npy"], SHAPE)
    assert [s for s, _ in out] == ["one.npy", "many.npy:0", "many.npy:1"]
    assert np.array_equal(out[0][1], stack[0]) and out[0][1].dtype == np.int32
    assert np.array_equal(out[1][1], stack[0]) and np.array_equal(out[2][1], stack[1])


@pytest.mark.parametrize("where", ["/entry/data/data", "/data"])
@pytest.mark.parametrize("ext", [".h5", ".hdf5", ".nxs"])
def test_hdf5_stack(tmp_path, where, ext):
    stack = _frames(3, np.uint32)
    path = tmp_path / f"run{ext}"
    with h5py.File(path, "w") as f:
        f.create_dataset(where, data=stack)
    out = _read([path], SHAPE)
    assert [s for s, _ in out] == [f"run{ext}:{k}" for k in range(3)]
    for (_, got), want in zip(out, stack, strict=True):
        assert got.dtype == np.uint32 and np.array_equal(got, want)


def test_hdf5_without_image_dataset(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    with pytest.raises(InputError, match=r"empty\.h5.*/entry/data/data"):
        _read([path])


@pytest.mark.parametrize("ext", [".ge", ".ge2", ".ge5"])
def test_ge_frames(tmp_path, ext):
    stack = _frames(3, np.uint16)
    path = tmp_path / f"scan{ext}"
    path.write_bytes(b"\x07" * GE_HEADER_BYTES + stack.astype("<u2").tobytes())
    out = _read([path], SHAPE)
    assert [s for s, _ in out] == [f"scan{ext}:{k}" for k in range(3)]
    for (_, got), want in zip(out, stack, strict=True):
        assert got.dtype == np.uint16 and np.array_equal(got, want)


def test_ge_needs_shape_and_whole_frames(tmp_path):
    path = tmp_path / "scan.ge3"
    path.write_bytes(b"\0" * GE_HEADER_BYTES + b"\0" * (SHAPE[0] * SHAPE[1] * 2 + 6))
    with pytest.raises(InputError, match=r"scan\.ge3.*detector shape"):
        _read([path])
    with pytest.raises(InputError, match=r"scan\.ge3: cannot read image"):
        _read([path], SHAPE)


def test_cbf_round_trip(tmp_path):
    fabio = pytest.importorskip("fabio")
    from fabio.cbfimage import CbfImage

    frame = _frames(1, np.int32)[0]
    CbfImage(data=frame).write(str(tmp_path / "p.cbf"))
    (sid, got), = _read([tmp_path / "p.cbf"], SHAPE)
    assert sid == "p.cbf" and np.array_equal(got, frame)
    del fabio


def test_folder_natural_order_and_non_images_skipped(tmp_path):
    stack = _frames(11)
    for k in range(11):
        tifffile.imwrite(tmp_path / f"img_{k}.tif", stack[k])
    (tmp_path / "notes.txt").write_text("not an image")
    out = _read([tmp_path], SHAPE)
    assert [s for s, _ in out] == [f"img_{k}.tif" for k in range(11)]
    for (_, got), want in zip(out, stack, strict=True):
        assert np.array_equal(got, want)


def test_order_of_arguments_kept(tmp_path):
    stack = _frames(2)
    tifffile.imwrite(tmp_path / "b.tif", stack[0])
    tifffile.imwrite(tmp_path / "a.tif", stack[1])
    out = _read([tmp_path / "b.tif", tmp_path / "a.tif"])
    assert [s for s, _ in out] == ["b.tif", "a.tif"]


def test_corrupt_tiff_names_file(tmp_path):
    (tmp_path / "img.tif").write_bytes(b"this is not a tiff at all")
    with pytest.raises(InputError, match=r"img\.tif: cannot read image \(.+\)"):
        _read([tmp_path / "img.tif"])


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "img.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError) as err:
        _read([tmp_path / "img.jpg"])
    msg = str(err.value)
    assert "img.jpg" in msg and ".tif" in msg and ".h5" in msg and ".ge2" in msg and ".cbf" in msg


def test_missing_file_checked_before_first_frame(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", _frames(1)[0])
    with pytest.raises(InputError, match="missing.tif"):
        iter_images([tmp_path / "ok.tif", tmp_path / "missing.tif"])


def test_wrong_frame_shape_named(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match=r"small\.tif.*\(4, 4\).*\(12, 10\)"):
        _read([tmp_path / "small.tif"], SHAPE)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no image files"):
        _read([tmp_path])


# --- darks -------------------------------------------------------------------------------------------------------


def test_dark_tiff_single_and_stack_averaged(tmp_path):
    stack = _frames(3, np.uint16)
    tifffile.imwrite(tmp_path / "d1.tif", stack[0])
    with tifffile.TiffWriter(tmp_path / "d3.tif") as tw:
        for f in stack:
            tw.write(f)
    d1 = load_dark(tmp_path / "d1.tif", SHAPE)
    assert d1.dtype == np.float64 and d1.shape == SHAPE and np.array_equal(d1, stack[0])
    assert np.allclose(load_dark(tmp_path / "d3.tif", SHAPE), stack.mean(axis=0), rtol=0, atol=1e-9)


def test_dark_npy_and_hdf5_stack(tmp_path):
    stack = _frames(4, np.int32)
    np.save(tmp_path / "d.npy", stack)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["entry/data/data"] = stack
    want = stack.astype(np.float64).mean(axis=0)
    assert np.allclose(load_dark(tmp_path / "d.npy", SHAPE), want, atol=1e-9)
    assert np.allclose(load_dark(tmp_path / "d.h5", SHAPE), want, atol=1e-9)


@pytest.mark.parametrize("name", ["dark.bin", "dark_frames", "dark.raw"])
def test_dark_midas_raw_int64(tmp_path, name):
    stack = _frames(3, np.int64)
    (tmp_path / name).write_bytes(stack.astype("<i8").tobytes())
    got = load_dark(tmp_path / name, SHAPE)
    assert got.dtype == np.float64 and np.allclose(got, stack.mean(axis=0), atol=1e-9)
    (tmp_path / "one.bin").write_bytes(stack[1].astype("<i8").tobytes())
    assert np.array_equal(load_dark(tmp_path / "one.bin", SHAPE), stack[1].astype(np.float64))


def test_dark_raw_bad_size_message(tmp_path):
    frame_bytes = SHAPE[0] * SHAPE[1] * 8
    (tmp_path / "dark.bin").write_bytes(b"\0" * (frame_bytes + 100))
    with pytest.raises(InputError) as err:
        load_dark(tmp_path / "dark.bin", SHAPE)
    msg = str(err.value)
    assert "dark.bin" in msg and str(frame_bytes) in msg and str(frame_bytes + 100) in msg
    assert "\n" not in msg


def test_dark_wrong_shape_message(tmp_path):
    tifffile.imwrite(tmp_path / "dark.tif", np.zeros((5, 7), np.uint16))
    with pytest.raises(InputError) as err:
        load_dark(tmp_path / "dark.tif", SHAPE)
    msg = str(err.value)
    assert "dark.tif" in msg and "(5, 7)" in msg and "(12, 10)" in msg


def test_dark_missing_file(tmp_path):
    with pytest.raises(InputError, match="nodark.bin"):
        load_dark(tmp_path / "nodark.bin", SHAPE)


def test_tiff_without_pages_is_an_error(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\0garbage-garbage")
    with pytest.raises(InputError, match=r"broken\.tif: cannot read image"):
        _read([tmp_path / "broken.tif"])

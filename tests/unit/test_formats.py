"""Image readers (ringstream/images/formats.py): every format bit-exact into a caller's array, frame by frame;
short or corrupt files are IncompleteFile naming the file; darks in every format."""

from __future__ import annotations

import logging

import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile

from ringstream.errors import InputError
from ringstream.images.files import load_dark
from ringstream.images.formats import (
    GE_HEADER_BYTES,
    FormatOptions,
    IncompleteFile,
    format_of,
    open_image,
)

SHAPE = (24, 20)  # (NrPixelsZ, NrPixelsY)
OPTS = FormatOptions(detector_shape=SHAPE)


def stack(n: int, dtype, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    rng = np.random.default_rng(seed)
    if info is None:
        return rng.normal(100, 30, size=(n, *SHAPE)).astype(dtype)
    return rng.integers(info.min, info.max, size=(n, *SHAPE), endpoint=True, dtype=dtype)


def write_cbf(path, frame: np.ndarray) -> None:
    from fabio.cbfimage import CbfImage

    CbfImage(data=frame.astype(np.int32)).write(str(path))


def read_all(path, opts=OPTS) -> tuple[list[str], np.ndarray]:
    with open_image(path, opts) as f:
        out = np.empty((f.n_frames, *f.shape), f.dtype)
        for k in range(f.n_frames):
            f.read_into(k, out[k])  # a view of a preallocated block, as a ring slot is
        return [f.frame_id(k) for k in range(f.n_frames)], out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.float32])
def test_tiff_single_and_multipage_bit_exact(tmp_path, dtype):
    data = stack(3, dtype)
    tifffile.imwrite(tmp_path / "one.tif", data[0])
    tifffile.imwrite(tmp_path / "many.tiff", data, photometric="minisblack")
    ids, got = read_all(tmp_path / "one.tif")
    assert ids == ["one.tif"] and got.dtype == dtype
    np.testing.assert_array_equal(got[0], data[0])
    ids, got = read_all(tmp_path / "many.tiff")
    assert ids == ["many.tiff:0", "many.tiff:1", "many.tiff:2"]
    np.testing.assert_array_equal(got, data)


@pytest.mark.timeout(30)
def test_compressed_tiff_bit_exact(tmp_path):
    data = stack(2, np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", data, photometric="minisblack", compression="zlib")
    np.testing.assert_array_equal(read_all(tmp_path / "z.tif")[1], data)


@pytest.mark.timeout(30)
def test_cbf_byte_offset_bit_exact(tmp_path):
    frame = stack(1, np.int32)[0] // 4096  # PILATUS counts, with negative (masked) pixels
    frame[0, :5] = -1
    frame[1, :4] = (2**24, -(2**24), 0, 2**30)  # jumps that need the byte-offset 32-bit escape
    write_cbf(tmp_path / "p.cbf", frame)
    ids, got = read_all(tmp_path / "p.cbf")
    assert ids == ["p.cbf"] and got.dtype == np.int32
    np.testing.assert_array_equal(got[0], frame)


@pytest.mark.timeout(30)
def test_ge_read_frame_by_frame_at_its_offset(tmp_path):
    data = stack(4, np.uint16)
    path = tmp_path / "scan.ge3"
    path.write_bytes(b"\xab" * GE_HEADER_BYTES + data.astype("<u2").tobytes())
    with open_image(path, OPTS) as f:
        assert (f.n_frames, f.shape, f.dtype) == (4, SHAPE, np.uint16)
        reads = []
        real = f._fh

        class Counting:  # records every read: one frame's bytes at a time, never the whole file
            def seek(self, pos):
                reads.append(("seek", pos))
                return real.seek(pos)

            def readinto(self, buf):
                n = real.readinto(buf)
                reads.append(("read", n))
                return n

            def close(self):
                real.close()

        f._fh = Counting()
        out = np.empty(SHAPE, np.uint16)
        f.read_into(2, out)
        np.testing.assert_array_equal(out, data[2])
        frame_bytes = SHAPE[0] * SHAPE[1] * 2
        assert reads == [("seek", GE_HEADER_BYTES + 2 * frame_bytes), ("read", frame_bytes)]
    assert read_all(path)[0] == [f"scan.ge3:{k}" for k in range(4)]
    np.testing.assert_array_equal(read_all(path)[1], data)


@pytest.mark.timeout(30)
def test_hdf5_bitshuffle_lz4_stack_and_dataset_path(tmp_path):
    data = stack(5, np.uint32)
    with h5py.File(tmp_path / "eiger.h5", "w") as h5:
        h5.create_dataset("entry/data/data", data=data, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4"))
        h5.create_dataset("other/img", data=data[1])
    ids, got = read_all(tmp_path / "eiger.h5")
    assert ids == [f"eiger.h5:{k}" for k in range(5)]
    np.testing.assert_array_equal(got, data)
    ids, got = read_all(tmp_path / "eiger.h5", FormatOptions(detector_shape=SHAPE, hdf5_dataset="/other/img"))
    assert ids == ["eiger.h5"]
    np.testing.assert_array_equal(got[0], data[1])
    with pytest.raises(InputError, match=r"eiger\.h5: no 2-D or 3-D image dataset at \[source\] hdf5_dataset '/x'"):
        open_image(tmp_path / "eiger.h5", FormatOptions(hdf5_dataset="/x"))


@pytest.mark.timeout(30)
def test_hdf5_eiger_master_group_with_external_links(tmp_path):
    data = stack(6, np.uint16)
    for j in range(2):
        with h5py.File(tmp_path / f"s_data_{j + 1:06d}.h5", "w") as h5:
            h5.create_dataset("entry/data/data", data=data[3 * j:3 * j + 3], **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(tmp_path / "s_master.h5", "w") as h5:
        grp = h5.create_group("entry/data")
        for j in (1, 0):  # created out of order: read in natural order of the names
            grp[f"data_{j + 1:06d}"] = h5py.ExternalLink(f"s_data_{j + 1:06d}.h5", "/entry/data/data")
    ids, got = read_all(tmp_path / "s_master.h5", FormatOptions(hdf5_dataset="/entry/data"))
    assert ids == [f"s_master.h5:{k}" for k in range(6)]
    np.testing.assert_array_equal(got, data)


@pytest.mark.timeout(30)
def test_raw_with_header_dtype_and_shape(tmp_path):
    data = stack(3, np.int32)
    (tmp_path / "r.bin").write_bytes(b"H" * 100 + data.astype(">i4").tobytes())
    opts = FormatOptions(detector_shape=(1, 1), raw_dtype=">i4", raw_shape=SHAPE, raw_header=100)
    ids, got = read_all(tmp_path / "r.bin", opts)
    assert ids == ["r.bin:0", "r.bin:1", "r.bin:2"] and got.dtype == np.dtype(">i4")
    np.testing.assert_array_equal(got.astype(np.int32), data)
    (tmp_path / "short.bin").write_bytes(b"H" * 100 + data.astype(">i4").tobytes()[:-4])
    with pytest.raises(IncompleteFile, match=r"short\.bin: raw >i4 file of .* bytes is not a 100-byte header"):
        open_image(tmp_path / "short.bin", opts)


@pytest.mark.timeout(30)
def test_npy_read_from_its_data_offset(tmp_path):
    data = stack(3, np.uint16)
    np.save(tmp_path / "s.npy", data)
    np.save(tmp_path / "one.npy", data[0].astype(np.float64))
    np.testing.assert_array_equal(read_all(tmp_path / "s.npy")[1], data)
    ids, got = read_all(tmp_path / "one.npy")
    assert ids == ["one.npy"] and got.dtype == np.float64
    np.testing.assert_array_equal(got[0], data[0])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["t.tif", "t.cbf", "t.ge2", "t.h5", "t.npy"])
def test_truncated_files_are_incomplete_naming_the_file(tmp_path, name):
    data = stack(2, np.uint16)
    path = tmp_path / name
    fmt = format_of(path)
    if fmt == "tiff":
        tifffile.imwrite(path, data, photometric="minisblack")
    elif fmt == "cbf":
        write_cbf(path, data[0])
    elif fmt == "ge":
        path.write_bytes(b"\0" * GE_HEADER_BYTES + data.tobytes())
    elif fmt == "hdf5":
        with h5py.File(path, "w") as h5:
            h5.create_dataset("entry/data/data", data=data, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle())
    else:
        np.save(path, data)
    whole = path.read_bytes()
    np.testing.assert_array_equal(read_all(path)[1][-1], data[-1] if fmt != "cbf" else data[0])
    for cut in (len(whole) // 2, len(whole) - 7):
        path.write_bytes(whole[:cut])
        with pytest.raises(IncompleteFile, match=rf"^{path}: "):
            read_all(path)


def test_a_truncated_tiff_is_incomplete_also_where_the_cli_silenced_tifffile(tmp_path):
    """`ringstream integrate` sets tifffile's logger to CRITICAL; its complaints about a cut file still count."""
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, stack(2, np.uint16), photometric="minisblack")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 7])
    logger = logging.getLogger("tifffile")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with pytest.raises(IncompleteFile, match=rf"^{path}: "):
            read_all(path)
        assert logger.level == logging.CRITICAL
    finally:
        logger.setLevel(before)


@pytest.mark.timeout(30)
def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match=r"a\.jpg: unsupported image file extension '\.jpg'"):
        open_image(tmp_path / "a.jpg")
    with pytest.raises(InputError, match=r"gone\.tif: no such image file"):
        open_image(tmp_path / "gone.tif")


# --- darks in every format -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["d.tif", "d.ge5", "d.h5", "d.npy", "d.cbf"])
def test_dark_stack_is_averaged_in_every_format(tmp_path, name):
    data = (stack(3, np.uint16) // 16).astype(np.uint16)
    path = tmp_path / name
    fmt = format_of(path)
    if fmt == "tiff":
        tifffile.imwrite(path, data, photometric="minisblack")
    elif fmt == "ge":
        path.write_bytes(b"\0" * GE_HEADER_BYTES + data.tobytes())
    elif fmt == "hdf5":
        with h5py.File(path, "w") as h5:
            h5.create_dataset("entry/data/data", data=data, chunks=(1, *SHAPE), **hdf5plugin.Bitshuffle(cname="lz4"))
    elif fmt == "cbf":
        write_cbf(path, data[0])
        data = data[:1]
    else:
        np.save(path, data)
    np.testing.assert_array_equal(load_dark(path, SHAPE), data.astype(np.float64).sum(axis=0) / len(data))


@pytest.mark.timeout(30)
def test_dark_midas_int64_and_sizes_that_fit_no_frame_count(tmp_path):
    data = stack(2, np.int64) // 2**40
    (tmp_path / "dark.bin").write_bytes(data.astype("<i8").tobytes())
    np.testing.assert_array_equal(load_dark(tmp_path / "dark.bin", SHAPE), data.mean(axis=0))
    frame_bytes = SHAPE[0] * SHAPE[1] * 8
    (tmp_path / "bad.bin").write_bytes(b"\0" * (frame_bytes + 24))
    with pytest.raises(InputError) as err:
        load_dark(tmp_path / "bad.bin", SHAPE)
    msg = str(err.value)
    assert "bad.bin" in msg and str(frame_bytes) in msg and str(frame_bytes + 24) in msg
    ge_bytes = SHAPE[0] * SHAPE[1] * 2
    (tmp_path / "bad.ge2").write_bytes(b"\0" * (GE_HEADER_BYTES + ge_bytes + 2))
    with pytest.raises(InputError) as err:
        load_dark(tmp_path / "bad.ge2", SHAPE)
    msg = str(err.value)
    assert "bad.ge2" in msg and f"{ge_bytes} bytes each" in msg and str(GE_HEADER_BYTES + ge_bytes + 2) in msg


@pytest.mark.timeout(30)
def test_cbf_whose_md5_does_not_match_is_incomplete(tmp_path):
    frame = stack(1, np.int32)[0] // 4096
    write_cbf(tmp_path / "p.cbf", frame)
    raw = bytearray((tmp_path / "p.cbf").read_bytes())
    start = raw.find(b"\x0c\x1a\x04\xd5") + 4
    raw[start + 100] ^= 0x01  # one bit flipped in the compressed data: same size, wrong checksum
    (tmp_path / "p.cbf").write_bytes(bytes(raw))
    with pytest.raises(IncompleteFile, match=r"p\.cbf: corrupt CBF \(Content-MD5 \S+ does not match its data\)"):
        open_image(tmp_path / "p.cbf")


@pytest.mark.timeout(30)
def test_cbf_other_element_types_and_unsupported_compression(tmp_path):
    frame = (stack(1, np.uint16)[0] // 4).astype(np.int32)
    write_cbf(tmp_path / "p.cbf", frame)
    raw = (tmp_path / "p.cbf").read_bytes()
    # the byte-offset stream does not depend on the element type: relabel it as unsigned 16-bit
    (tmp_path / "u16.cbf").write_bytes(raw.replace(b'"signed 32-bit integer"', b'"unsigned 16-bit integer"'))
    ids, got = read_all(tmp_path / "u16.cbf")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[0], frame.astype(np.uint16))
    (tmp_path / "packed.cbf").write_bytes(raw.replace(b"x-CBF_BYTE_OFFSET", b"x-CBF_PACKED"))
    with pytest.raises(InputError, match=r"packed\.cbf: CBF compression 'x-cbf_packed' is not supported"):
        open_image(tmp_path / "packed.cbf")


@pytest.mark.timeout(30)
def test_hdf5_master_whose_data_file_is_missing_is_incomplete(tmp_path):
    data = stack(2, np.uint16)
    with h5py.File(tmp_path / "s_data_000001.h5", "w") as h5:
        h5.create_dataset("entry/data/data", data=data)
    with h5py.File(tmp_path / "s_master.h5", "w") as h5:
        grp = h5.create_group("entry/data")
        grp["data_000001"] = h5py.ExternalLink("s_data_000001.h5", "/entry/data/data")
        grp["data_000002"] = h5py.ExternalLink("s_data_000002.h5", "/entry/data/data")  # not written yet
    opts = FormatOptions(hdf5_dataset="/entry/data")
    with pytest.raises(IncompleteFile, match=r"s_master\.h5: /entry/data/data_000002 -> s_data_000002\.h5:"
                                             r"/entry/data/data cannot be opened"):
        open_image(tmp_path / "s_master.h5", opts)
    with h5py.File(tmp_path / "s_data_000002.h5", "w") as h5:
        h5.create_dataset("entry/data/data", data=data[::-1])
    ids, got = read_all(tmp_path / "s_master.h5", opts)
    assert len(ids) == 4
    np.testing.assert_array_equal(got, np.concatenate([data, data[::-1]]))

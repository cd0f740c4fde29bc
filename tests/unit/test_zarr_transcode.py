"""The zarr.zip chunk made of an HDF5 chunk's LZ4 blocks (``compression.zarr_from_hdf5``): numcodecs' Blosc, what
zarr 2.18 and zarr 3 read through, decodes it to the very values the HDF5 chunk holds; the chunks whose blocks cannot
be carried over are refused (None), never made wrong; a broken chunk is an error."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

from ringstream.compression import blocks_carry_over, hdf5_chunk, zarr_compressor, zarr_encode, zarr_from_hdf5
from ringstream.writer.omega import OmegaGroup
from ringstream.writer.storage import Chunks
from ringstream.writer.zarr_zip import ZarrZipSink

SHAPES = [(990, 72), (100, 100), (2048,), (2056,), (4096,), (8,), (16,), (24,), (1001, 71), (2049,), (7,), (3, 5)]


def _values(shape, dtype, rng):
    if np.dtype(dtype).kind == "f":
        a = (rng.poisson(60.0, shape) * rng.random(shape)).astype(dtype)
        a.reshape(-1)[:: 97] = np.nan  # NaN and inf travel bit for bit
        a.reshape(-1)[1:: 89] = -np.inf
        return a
    return rng.poisson(60.0, shape).astype(dtype)


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<u2", "<i4", "<u1"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_blosc_chunk_decodes_to_the_values_of_the_hdf5_chunk(shape, dtype):
    a = _values(shape, dtype, np.random.default_rng(hash((shape, dtype)) % 2**32))
    z = zarr_from_hdf5(hdf5_chunk(a), a.itemsize)
    n = int(np.prod(shape))
    assert (z is not None) == blocks_carry_over(n) == (n % 8 == 0)
    if z is None:
        return
    got = np.frombuffer(zarr_compressor().decode(z), dtype).reshape(shape)
    assert got.tobytes() == a.tobytes()  # bit for bit
    nbytes, blocksize, cbytes = struct.unpack_from("<III", z, 4)
    assert (z[0], z[2], z[3]) == (2, 0x34, a.itemsize) and nbytes == a.nbytes and cbytes == len(z)
    assert blocksize == min(8192, a.nbytes)


def test_the_zarr_chunk_is_no_larger_than_compressing_again():
    rng = np.random.default_rng(4)
    r = np.arange(990)[:, None]
    cake = (rng.poisson((50 + 400 * np.exp(-((r % 100) - 50.0) ** 2 / 8)) * np.ones((1, 72))) / 7).astype("<f4")
    z = zarr_from_hdf5(hdf5_chunk(cake), 4)
    assert len(z) <= 1.05 * len(zarr_encode(cake))  # the same LZ4, framed alike (a little more than Blosc's split)


def test_blocks_that_blosc_would_read_as_raw_are_refused_and_broken_chunks_raise():
    # one block whose LZ4 length equals its raw length: Blosc would take it for a block stored raw
    chunk = struct.pack(">QI", 8192, 8192) + struct.pack(">I", 8192) + bytes(8192)
    assert zarr_from_hdf5(chunk, 4) is None
    good = hdf5_chunk(np.arange(4096, dtype="<f4"))
    for bad in (good[:-1], good[:11], good + b"\0", good[:12] + struct.pack(">I", 10**6) + good[16:]):
        with pytest.raises(ValueError):
            zarr_from_hdf5(bad, 4)
    other_block = struct.pack(">QI", 16384, 4096) + good[12:]  # not the 8 kB blocks this module writes
    assert zarr_from_hdf5(other_block, 4) is None


def test_a_zarr_zip_of_transcoded_sums_reads_back_in_zarr(tmp_path):
    rng = np.random.default_rng(9)
    sums = [_values((990, 72), "<f4", rng) for _ in range(9)]
    sink = ZarrZipSink(tmp_path / "t.zarr.zip", np.zeros((5, 990, 72)), {"Distance": 1e6}, 1)
    for g, s in enumerate(sums):  # as a worker sends them: the HDF5 chunk only, the zarr chunk made here
        sink.add_group(OmegaGroup(g, None, 1, g, g, 0.1 * g, 0.1 * g, chunks=Chunks.made(hdf5_chunk(s), None,
                                                                                          s.shape, s.dtype)))
        if g % 3 == 1:  # publications that append (the chunks written as pieces of their HDF5 chunks), in a thread
            sink.publish(wait=g == 4, force=True)
    sink.close()
    root = zarr.open_group(ZipStore(str(tmp_path / "t.zarr.zip"), mode="r"), mode="r", zarr_format=2)
    for g, s in enumerate(sums):
        assert root["OmegaSumFrame"][f"LastFrameNumber_{g}"][...].tobytes() == s.tobytes()
    with zipfile.ZipFile(tmp_path / "t.zarr.zip") as z:  # every CRC right; each chunk the bytes of one made at once
        assert z.testzip() is None
        for g, s in enumerate(sums[1:], 1):  # (zarr itself writes the first group's array: the template)
            assert z.read(f"OmegaSumFrame/LastFrameNumber_{g}/0.0") == zarr_from_hdf5(hdf5_chunk(s), 4)

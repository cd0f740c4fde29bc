"""The writer compresses cake and sum chunks itself: the bytes it writes directly are the filter's, and the zarr
chunks are the codec's named in the ``.zarray``."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ringstream.compression import zarr_from_hdf5
from ringstream.writer.storage import Chunks, hdf5_chunk, hdf5_compression, zarr_compressor


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
@pytest.mark.parametrize("shape", [(990, 72), (7, 3)])
def test_the_direct_chunk_is_what_the_hdf5_filter_writes(tmp_path, dtype, shape):
    rng = np.random.default_rng(5)
    a = (rng.poisson(300, shape) / 7).astype(dtype)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        by_filter = f.create_dataset("a", shape=(1,) + shape, chunks=(1,) + shape, dtype=dtype, **hdf5_compression())
        by_filter[0] = a
        direct = f.create_dataset("b", shape=(1,) + shape, chunks=(1,) + shape, dtype=dtype, **hdf5_compression())
        direct.id.write_direct_chunk((0, 0, 0), Chunks(a).hdf5())
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["a"].id.read_direct_chunk((0, 0, 0))[1] == hdf5_chunk(a)
        np.testing.assert_array_equal(f["b"][0], a)  # decoded by the filter
        assert f["b"][0].tobytes() == a.tobytes()


def test_zarr_chunks_are_the_codecs_and_errors_come_back(monkeypatch):
    a = np.arange(24, dtype="<f4").reshape(6, 4)  # 24 values: made of the HDF5 chunk's blocks
    c = Chunks(a, zarr=True)
    assert bytes(c.zarr()) == bytes(zarr_from_hdf5(hdf5_chunk(a), 4)) and c.hdf5() == hdf5_chunk(a)
    assert np.frombuffer(zarr_compressor().decode(c.zarr()), "<f4").tobytes() == a.tobytes()
    b = np.arange(21, dtype="<f4").reshape(7, 3)  # 21: compressed by the codec itself
    assert Chunks(b, zarr=True).zarr() == zarr_compressor().encode(b)
    with pytest.raises((TypeError, ValueError)):  # not an array the compressors take: raised where it is wanted
        Chunks(np.array(["x"], dtype=object)).hdf5()


def test_a_forked_child_compresses_with_threads_of_its_own(tmp_path):
    a = np.arange(12, dtype="<f4").reshape(3, 4)
    Chunks(a).hdf5()  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        import faulthandler

        faulthandler.dump_traceback_later(10, exit=True)
        try:
            os._exit(0 if Chunks(a).hdf5() == hdf5_chunk(a) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

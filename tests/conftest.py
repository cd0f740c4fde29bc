"""Shared test fixtures: every test gets its own map cache so nothing is written to the user's ~/.cache. Tests read
the results files as docs/OUTPUTS.md tells users to: with hdf5plugin imported (the cakes and omega sums are
bitshuffle + LZ4 compressed)."""

from __future__ import annotations

import hdf5plugin  # noqa: F401 - registers the HDF5 compression filters for every h5py open in the tests
import pytest


@pytest.fixture(autouse=True)
def _isolated_map_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("map-cache")
    monkeypatch.setenv("RINGSTREAM_CACHE_DIR", str(cache))
    yield cache

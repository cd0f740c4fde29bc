"""Shared test fixtures: every test gets its own map cache so nothing is written to the user's ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_map_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("map-cache")
    monkeypatch.setenv("RINGSTREAM_CACHE_DIR", str(cache))
    yield cache

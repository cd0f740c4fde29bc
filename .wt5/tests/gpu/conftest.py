"""GPU tests: marked ``gpu`` and skipped as a whole, cleanly, unless CuPy imports and sees a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest


def _gpu_reason() -> str | None:
    try:
        from ringstream.engines.cupy_engine import gpu_available

        ok, what = gpu_available()
    except Exception as exc:  # pragma: no cover
        return f"GPU engine unavailable: {type(exc).__name__}: {exc}"
    return None if ok else f"GPU engine unavailable: {what}"


_REASON = _gpu_reason()
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if _REASON is not None:
                item.add_marker(pytest.mark.skip(reason=_REASON))

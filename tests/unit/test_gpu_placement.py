"""Placing GPU workers: ``[workers] gpus`` / ``--gpus 0,1`` puts worker i on gpus[i % n]; a device the machine does
not have is a ConfigError naming the key. CuPy is replaced by a stand-in with two devices, so this runs anywhere."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ringstream.engines import cupy_engine, registry
from ringstream.engines.registry import create_engine, device_for_worker
from ringstream.errors import ConfigError


def test_worker_i_takes_gpus_i_mod_n():
    assert [device_for_worker((), i) for i in range(3)] == [0, 0, 0]
    assert [device_for_worker((0, 1), i) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [device_for_worker([3], i) for i in range(3)] == [3, 3, 3]  # several workers share one GPU
    assert [device_for_worker((1, 0, 1), i) for i in range(4)] == [1, 0, 1, 1]


def test_engine_is_made_on_the_workers_device(monkeypatch):
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)))
    made = []

    class FakeEngine:
        def __init__(self, imap, dark=None, normalize=True, device=0):
            self.device_id, self.device_name = device, f"fake GPU {device}"
            made.append(device)

    monkeypatch.setattr(cupy_engine, "_import_cupy", lambda: fake_cupy)
    monkeypatch.setattr(cupy_engine, "gpu_available", lambda: (True, "fake GPU 0"))
    monkeypatch.setattr(cupy_engine, "CupyEngine", FakeEngine)
    monkeypatch.delenv("RINGSTREAM_GPU", raising=False)
    imap = object()
    assert create_engine("gpu", imap, device=1).device_id == 1
    assert create_engine("auto", imap, device=0).device_id == 0
    assert made == [1, 0]
    with pytest.raises(ConfigError, match=r"\[workers\] gpus: CUDA device 2 does not exist here; this machine has 2"):
        create_engine("gpu", imap, device=2)
    # the CPU engine ignores the device
    assert type(create_engine("cpu", _tiny_map(), device=5)).__name__ == "ReferenceEngine"
    assert registry.GPU_INSTALL_HINT == "pip install 'ringstream[gpu]'"


def _tiny_map():
    import scipy.sparse as sp

    w = sp.csr_matrix(np.eye(4))
    return types.SimpleNamespace(shape=(2, 2), n_r=2, n_eta=2, weights=w, areas=w, bin_area=np.ones((2, 2)),
                                 r_px=np.arange(2.0), eta=np.arange(2.0))

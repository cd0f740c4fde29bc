"""``[transport] ring_slots = 0`` (auto): the ring covers every frame GPU workers hold in flight, within the memory
there is (ringstream/transport/ring_size.py), and the supervisor resolves it once for every child."""

from __future__ import annotations

import logging
import types

import pytest

from ringstream.config import load_config
from ringstream.transport import ring_size
from ringstream.transport.ring_size import CPU_SLOTS, auto_ring_slots, mem_available, shm_free

PILATUS = 1475 * 1679 * 4  # a PILATUS 2M int32 slot, bytes
GB = 1 << 30


@pytest.fixture
def setup_run(tmp_path):
    """A configuration of a PILATUS-sized detector; keyword sections as ``load_config``'s dict layer."""
    path = tmp_path / "setup.txt"
    path.write_text("NrPixelsY 1475\nNrPixelsZ 1679\nLsd 1000000\npx 172\nBC 737 839\nRMin 10\nRMax 100\n"
                    "RBinSize 1\n")
    return lambda **sections: load_config(None, {}, {"run": {"param_file": str(path)}, **sections})


def size(**kw):
    args = dict(gpu=True, workers=2, batches_in_flight=4, gpu_batch=8, per_eta=False, fit_frames=128,
                slot_bytes=PILATUS, available=100 * GB, shm=60 * GB)
    return auto_ring_slots(**{**args, **kw})


def test_cpu_workers_keep_32_slots():
    assert size(gpu=False).slots == CPU_SLOTS == 32
    assert size(gpu=False, workers=16, per_eta=True).slots == 32


def test_gpu_workers_get_four_times_their_frames_on_the_device():
    assert size().slots == 4 * 2 * 4 * 8 == 256
    assert size(workers=1, batches_in_flight=1).slots == 32
    assert size(workers=3, batches_in_flight=2).slots == 192
    assert "4 x 2 GPU worker(s) x 4 batches in flight x 8 frames" in size().why


def test_per_eta_fits_get_room_for_a_fit_call_per_worker():
    assert size(per_eta=True).slots == 2 * 2 * 128 == 512
    assert size(per_eta=True, workers=1, batches_in_flight=1).slots == 256
    assert size(per_eta=True, batches_in_flight=16).slots == 4 * 2 * 16 * 8  # the larger of the two


def test_memory_caps_the_ring_and_32_is_the_floor():
    # a quarter of 2 GB available: 536,870,912 // 9,906,100 = 54 slots
    small = size(available=2 * GB)
    assert small.slots == 2 * GB // 4 // PILATUS == 54 and "a quarter of the memory available" in small.why
    # half of a 1 GB /dev/shm: 54 slots; the smaller cap wins
    assert size(shm=1 * GB, available=100 * GB).slots == GB // 2 // PILATUS
    assert size(shm=1 * GB, available=2 * GB).slots == min(GB // 2, 2 * GB // 4) // PILATUS
    tiny = size(available=256 << 20)
    assert tiny.slots == 32 and "the floor" in tiny.why
    assert size(available=None, shm=None).slots == 256  # nothing known: no cap


def test_this_machines_memory_is_read():
    assert mem_available() > 0 and shm_free() >= 0
    assert mem_available("/nonexistent") is None and shm_free("/nonexistent") is None


def test_the_supervisor_resolves_the_ring_and_queue_depth_follows(setup_run, caplog, monkeypatch):
    from ringstream.daemon import supervisor
    from ringstream.engines import registry

    cfg = setup_run(workers={"engine": "cpu"})
    params = cfg.load_params()
    assert (cfg.transport.ring_slots, cfg.transport.queue_depth) == (0, 0)
    with caplog.at_level(logging.INFO, logger="ringstream.supervisor"):
        t = supervisor.size_ring(cfg, params)
    assert (t.ring_slots, t.queue_depth) == (32, 32)
    assert "[transport] ring_slots = 0 (auto): 32 slots" in caplog.text and "(CPU workers)" in caplog.text
    # "auto" on a machine with a GPU: sized for GPU workers; a queue depth that was set stays
    gpu_entry = types.SimpleNamespace(check=lambda: (True, "a GPU"))
    monkeypatch.setitem(registry.ENGINES, "gpu", gpu_entry)
    monkeypatch.setattr(ring_size, "mem_available", lambda: 3 * GB)  # (fixed: a quarter of it caps the 256 slots at 80)
    monkeypatch.setattr(ring_size, "shm_free", lambda: 60 * GB)
    cfg = setup_run(workers={"engine": "auto", "count": 2, "batches_in_flight": 4}, transport={"queue_depth": 16})
    t = supervisor.size_ring(cfg, cfg.load_params())
    assert t.ring_slots >= 32 and t.queue_depth == 16
    from ringstream.engines.cupy_engine import DEFAULT_BATCH
    from ringstream.fitting import FIT_FRAMES

    assert (DEFAULT_BATCH, FIT_FRAMES) == (8, 128)  # (the numbers docs/DAEMON.md gives)
    expected = auto_ring_slots(gpu=True, workers=2, batches_in_flight=4, gpu_batch=DEFAULT_BATCH, per_eta=False,
                               fit_frames=FIT_FRAMES,
                               slot_bytes=int(params.NrPixelsY) * int(params.NrPixelsZ) * 4 * 101 // 100,
                               available=3 * GB, shm=60 * GB)
    assert t.ring_slots == expected.slots == 3 * GB // 4 // (1475 * 1679 * 4 * 101 // 100) == 80

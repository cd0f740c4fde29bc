"""Engines declare what they can do beyond the base interface (``Capabilities`` on the class), the registry is one
table, and the worker branches on the declaration, never on which methods an engine happens to have.

Every registered engine class is held to its declaration here, so a declaration cannot drift from the methods; the
CuPy engine's class is checked without CuPy (its module imports without it)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import types

import numpy as np
import pytest
from test_gpu_placement import _tiny_map

from ringstream.engines.base import (
    GPU_INSTALL_HINT,
    PROTOCOLS,
    Capabilities,
    Engine,
    check_capabilities,
    protocol_attributes,
    protocol_methods,
)
from ringstream.engines.registry import ENGINE_NAMES, ENGINES
from ringstream.workers.pipeline import PipelinedLoop
from ringstream.workers.process import _Worker, choose_path

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------- the declarations
def test_every_capability_names_one_protocol():
    assert [f.name for f in dataclasses.fields(Capabilities)] == list(PROTOCOLS)
    for flag, proto in PROTOCOLS.items():
        assert protocol_methods(proto), flag  # a capability is something an engine can be asked to do
    assert Capabilities().names() == ()
    assert Capabilities(asynchronous=True, host_memory=True).names() == ("asynchronous", "host_memory")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_registered_engine_declares_exactly_the_protocols_it_implements(name):
    entry = ENGINES[name]
    cls = entry.load()
    caps = cls.capabilities
    assert isinstance(caps, Capabilities)
    assert entry.capabilities == caps  # the table reads the class's declaration, it does not keep its own
    assert cls.name == entry.name  # the name the outputs record
    for flag, proto in PROTOCOLS.items():
        has = [m for m in protocol_methods(proto) if callable(getattr(cls, m, None))]
        if getattr(caps, flag):
            assert has == list(protocol_methods(proto)), f"{cls.__name__} declares {flag} but has only {has}"
        else:
            assert has == [], f"{cls.__name__} has {has} but does not declare {flag}"
    for method in ("integrate", "integrate_batch"):
        assert callable(getattr(cls, method, None)), method


def test_the_registry_table():
    assert ENGINE_NAMES == ("auto", "cpu", "gpu")
    cpu, gpu = ENGINES["cpu"], ENGINES["gpu"]
    assert (cpu.device, cpu.describe, cpu.available, cpu.install_hint) == ("cpu", "reference NumPy/SciPy", None, None)
    assert cpu.check() == (True, "reference NumPy/SciPy")
    assert (gpu.device, gpu.describe, gpu.install_hint) == ("cuda", "CuPy", GPU_INSTALL_HINT)
    assert GPU_INSTALL_HINT == "pip install 'ringstream[gpu]'"
    ok, what = gpu.check()
    if not ok:  # no CuPy or no device here: the reason carries the install line
        assert GPU_INSTALL_HINT in what
    assert ENGINES["cpu"].capabilities == Capabilities()
    assert ENGINES["gpu"].capabilities == Capabilities(batch=True, asynchronous=True, device_omega_sums=True,
                                                       host_memory=True, compressed_input=True)


def test_gpu_log_lines_name_the_device(monkeypatch, caplog):
    """The registry's log lines for the GPU engine, with CuPy and the engine replaced by stand-ins."""
    from ringstream.engines import cupy_engine, registry

    class FakeGpu:
        def __init__(self, imap, dark=None, normalize=True, device=0):
            self.device_id, self.device_name = device, f"fake GPU {device}"

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)))
    monkeypatch.setattr(cupy_engine, "_import_cupy", lambda: fake_cupy)
    monkeypatch.setattr(cupy_engine, "gpu_available", lambda: (True, "fake GPU 0"))
    monkeypatch.setattr(cupy_engine, "CupyEngine", FakeGpu)
    monkeypatch.delenv("RINGSTREAM_GPU", raising=False)
    with caplog.at_level("INFO", logger="ringstream.engines"):
        registry.create_engine("gpu", None, device=1)
        registry.create_engine(" AUTO ", None)
        registry.create_engine("cpu", _tiny_map())
    assert [r.getMessage() for r in caplog.records] == [
        "engine: gpu (CuPy) on device 1, fake GPU 1",
        "engine: auto -> gpu (CuPy) on device 0, fake GPU 0",
        "engine: cpu (reference NumPy/SciPy)",
    ]


def test_reference_instance_passes_the_check():
    from ringstream.engines.reference import ReferenceEngine

    eng = ReferenceEngine(_tiny_map())
    assert isinstance(eng, Engine)
    assert check_capabilities(eng) == Capabilities()


def test_a_declaration_without_the_methods_is_refused():
    class Lying(_Plain):
        capabilities = Capabilities(batch=True, host_memory=True)

    with pytest.raises(TypeError, match=r"declares capabilities it lacks \(batch: integrate_many, batch: batch, "
                                        r"host_memory: register_host_memory, host_memory: unregister_host_memory\)"):
        check_capabilities(Lying())

    class NotCaps(_Plain):
        capabilities = {"batch": True}

    with pytest.raises(TypeError, match="not a Capabilities"):
        check_capabilities(NotCaps())
    assert protocol_attributes(PROTOCOLS["asynchronous"]) == ("batch", "n_streams")


def test_the_engines_load_without_cupy():
    code = ("import sys; import ringstream.engines.registry as r, ringstream.engines.cupy_engine; "
            "[e.capabilities for e in r.ENGINES.values()]; print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True)
    try:
        import cupy  # noqa: F401
    except Exception:
        assert out.stdout.strip() == "False"


def test_the_cuda_source_is_the_one_run_on_a_gpu():
    """The kernel text the GPU tests ran; change it only together with a run of tests/gpu on a device."""
    from ringstream.engines.cupy_kernels import KERNEL_SOURCE

    digest = hashlib.sha256(KERNEL_SOURCE.encode()).hexdigest()
    assert digest == "0d51c5d4aa77bc9b1e4da655cbf80ae39c528c8edbef9d5805a6e05aeb9e3392"


# ----------------------------------------------------------------------------- the worker follows the declaration
class _Plain:
    """An engine with the base interface only."""

    name = "plain"
    capabilities = Capabilities()

    def integrate(self, frame):
        return np.zeros(2), np.zeros((2, 2))

    def integrate_batch(self, frames):
        return np.zeros((len(frames), 2)), np.zeros((len(frames), 2, 2))


class _Undeclared(_Plain):
    """Every optional method, none declared: the worker must use none of them."""

    batch, n_streams = 4, 2

    def __init__(self) -> None:
        self.registered: list = []

    def integrate_many(self, frames, out=None):
        return self.integrate_batch(np.stack(frames))

    def submit(self, frames, want_cake=True):
        return types.SimpleNamespace(ready=lambda: True, frames=frames)

    def collect(self, sub):
        return self.integrate_batch(np.stack(sub.frames))

    def omega_add(self, sub, groups):
        pass

    def omega_take(self, groups, dtype=np.float64):
        return [None] * len(groups)

    def register_host_memory(self, buffer):
        self.registered.append(buffer)

    def unregister_host_memory(self, buffer):
        self.registered.remove(buffer)


class _Declared(_Undeclared):
    capabilities = Capabilities(batch=True, asynchronous=True, device_omega_sums=True, host_memory=True)


class _AsyncOnly(_Undeclared):
    capabilities = Capabilities(asynchronous=True)


def _worker(engine) -> _Worker:
    w = _Worker(None, 0)
    w.use_engine(engine)
    return w


def _ring():
    return types.SimpleNamespace(name="ringstream-test", _segment=types.SimpleNamespace(buf=bytearray(64)))


def test_worker_uses_nothing_undeclared():
    eng = _Undeclared()
    w = _worker(eng)
    assert w.caps == Capabilities() and w.batch == 1 and w.engine_name == "plain"
    assert choose_path(w.caps, w.batch, 1) == "single"
    assert choose_path(w.caps, w.batch, 3) == "single"  # submit exists, but is not declared
    ring = _ring()
    w.register(ring)
    assert eng.registered == [] and not w._registered
    with pytest.raises(TypeError, match="asynchronous"):
        PipelinedLoop(types.SimpleNamespace(engine=eng, caps=w.caps), 3)


def test_worker_uses_what_is_declared():
    eng = _Declared()
    w = _worker(eng)
    assert w.caps == _Declared.capabilities and w.batch == 4
    assert choose_path(w.caps, w.batch, 1) == "batched"
    assert choose_path(w.caps, w.batch, 2) == "pipelined"
    assert choose_path(w.caps, 1, 1) == "single"  # a batch engine made with batch 1
    ring = _ring()
    w.register(ring)
    assert eng.registered == [ring._segment.buf] and w._registered == {ring.name}
    w.unregister(ring)
    assert eng.registered == [] and not w._registered


@pytest.mark.parametrize("engine, device_sums", [(_Declared(), True), (_AsyncOnly(), False)])
def test_pipelined_loop_sums_on_the_device_only_when_declared(engine, device_sums):
    partials = types.SimpleNamespace(device=None)
    worker = types.SimpleNamespace(engine=engine, caps=check_capabilities(engine), partials=partials, write_2d=False,
                                   fitting=None)
    loop = PipelinedLoop(worker, depth=5)
    assert (loop.depth, loop.batch) == (2, 4)  # at most n_streams batches of engine.batch frames
    assert loop.device_sums is device_sums
    assert (partials.device is engine) is device_sums
    assert loop.want_cake is not device_sums  # without device sums the cakes come back to be summed here

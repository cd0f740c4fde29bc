"""The one interface every integration engine implements, and the input checks they share.

An engine holds an :class:`~ringstream.geometry.map.IntegrationMap` (and optionally a dark frame) and turns raw
detector frames ``img[z, y]`` of shape ``(NrPixelsZ, NrPixelsY)`` into

- a 2D *cake* ``[n_r, n_eta]`` float64: the area-normalised mean intensity of each (R, η) bin, and
- a 1D *lineout* ``[n_r]`` float64: the area-weighted mean of the cake over η.

The NumPy/SciPy :class:`~ringstream.engines.reference.ReferenceEngine` defines the numbers; any other engine must
agree with it within its written tolerances.

Beyond :class:`Engine`, an engine may offer more, and says so in its class attribute ``capabilities`` (a
:class:`Capabilities`); each flag stands for one protocol below, whose methods the class then has (a unit test holds
every registered engine to its declaration). Callers branch on the declaration, read once, never on ``hasattr``:

- ``batch`` (:class:`BatchEngine`): ``integrate_many`` takes up to ``engine.batch`` separate frames in one call;
- ``asynchronous`` (:class:`AsyncEngine`): ``submit`` enqueues up to ``engine.batch`` frames and returns at once,
  ``collect`` waits for them; at most ``engine.n_streams`` submissions are open;
- ``device_omega_sums`` (:class:`DeviceOmegaSums`): ``omega_add`` sums a collected submission's cakes per
  omega-sum group where they lie, ``omega_take`` brings a group's sum back;
- ``host_memory`` (:class:`HostMemory`): ``register_host_memory`` page-locks a host buffer (the frame ring) in
  place so frames in it are copied by DMA;
- ``compressed_input`` (:class:`CompressedInput`): ``submit``, ``integrate_many`` and ``integrate`` also take
  frames that travelled compressed (:class:`~ringstream.engines.gpu_decode.EncodedFrame`) and decode them where
  they are integrated; ``decode_failed(sub)`` names the frames of a collected submission whose bytes did not
  decode (their results mean nothing: the worker rejects them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError

#: dtype kinds an engine accepts: unsigned and signed integers, floats (u8, u16, u32, i32, i64, f32, f64, ...).
ACCEPTED_KINDS = "uif"

#: how to install the GPU engine's dependencies
GPU_INSTALL_HINT = "pip install 'ringstream[gpu]'"


@dataclass(frozen=True)
class Capabilities:
    """What an engine offers beyond :class:`Engine`; each flag names one protocol (see :data:`PROTOCOLS`)."""

    #: :class:`BatchEngine`: ``integrate_many`` over up to ``batch`` separate frames
    batch: bool = False
    #: :class:`AsyncEngine`: ``submit`` / ``collect`` on up to ``n_streams`` open submissions
    asynchronous: bool = False
    #: :class:`DeviceOmegaSums`: ``omega_add`` / ``omega_take``
    device_omega_sums: bool = False
    #: :class:`HostMemory`: ``register_host_memory`` / ``unregister_host_memory``
    host_memory: bool = False
    #: :class:`CompressedInput`: EncodedFrames decoded by the engine; ``decode_failed``
    compressed_input: bool = False

    def names(self) -> tuple[str, ...]:
        """The flags that are set, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name))


@runtime_checkable
class Engine(Protocol):
    """An integration engine: frames in, (lineout, cake) out."""

    name: str
    capabilities: Capabilities

    def integrate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw frame ``[nZ, nY]`` -> (lineout ``[n_r]`` f64, cake ``[n_r, n_eta]`` f64)."""
        ...

    def integrate_batch(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[n, nZ, nY]`` -> (lineouts ``[n, n_r]`` f64, cakes ``[n, n_r, n_eta]`` f64)."""
        ...


class BatchEngine(Protocol):
    """``capabilities.batch``: several separate frames (e.g. views of different ring slots) in one call."""

    #: frames one call takes at most
    batch: int

    def integrate_many(self, frames, out=None) -> tuple[np.ndarray, np.ndarray]:
        """A list of frames ``[nZ, nY]`` of one dtype -> (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``)."""
        ...


class AsyncEngine(Protocol):
    """``capabilities.asynchronous``: enqueue frames and return at once; collect the results later, in any order
    of readiness. The frames' memory is read until the submission's ``ready()`` is true."""

    #: frames one submission takes at most
    batch: int
    #: submissions that may be open (submitted, not collected) at once
    n_streams: int

    def submit(self, frames, want_cake: bool = True):
        """Enqueue 1 to ``batch`` frames ``[nZ, nY]``; returns a submission with ``ready() -> bool``."""
        ...

    def collect(self, sub) -> tuple[np.ndarray, np.ndarray | None]:
        """Wait for ``sub``: (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]`` or None without ``want_cake``)."""
        ...


class DeviceOmegaSums(Protocol):
    """``capabilities.device_omega_sums``: omega sums of collected cakes kept where the cakes were made."""

    def omega_add(self, sub, groups) -> None:
        """Add the cakes of the just-collected ``sub`` to the sum of each frame's group (``groups[k]``)."""
        ...

    def omega_take(self, groups, dtype=np.float64) -> list[np.ndarray | None]:
        """The sums of ``groups`` (each ``[n_r, n_eta]``, summed in float64, returned as ``dtype``: float64, or
        float32 rounded to nearest), removed; None for a group nothing was added to. All in one call: a device
        brings them back in one copy."""
        ...


class HostMemory(Protocol):
    """``capabilities.host_memory``: host buffers page-locked in place, so frames in them go to the device by DMA."""

    def register_host_memory(self, buffer) -> None:
        """Page-lock ``buffer`` (anything with the buffer protocol) until unregistered or the engine is closed."""
        ...

    def unregister_host_memory(self, buffer) -> None:
        """Undo :meth:`register_host_memory` for ``buffer``."""
        ...


class CompressedInput(Protocol):
    """``capabilities.compressed_input``: frames that travelled compressed (EncodedFrame) decoded by the engine
    itself (the GPU engine: on the device, in the batch's stream). ``integrate_many`` raises CodecError when any
    frame of the call does not decode; ``integrate`` of one such frame raises it with the reason."""

    def decode_failed(self, sub) -> list[int]:
        """After ``collect(sub)``: the indices (in the submitted list) of the frames whose bytes did not decode."""
        ...


#: each capability flag -> the protocol an engine that declares it implements
PROTOCOLS: dict[str, type] = {
    "batch": BatchEngine,
    "asynchronous": AsyncEngine,
    "device_omega_sums": DeviceOmegaSums,
    "host_memory": HostMemory,
    "compressed_input": CompressedInput,
}


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The methods ``protocol`` requires (its public callables), sorted."""
    return tuple(sorted(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")))


def protocol_attributes(protocol: type) -> tuple[str, ...]:
    """The data attributes ``protocol`` requires (its annotations), sorted."""
    return tuple(sorted(vars(protocol).get("__annotations__", {})))


def check_capabilities(engine) -> Capabilities:
    """``engine``'s declared :class:`Capabilities`, after checking that it has every method and attribute of each
    declared protocol (a TypeError naming what is missing otherwise). Read once, when the engine is taken in use."""
    caps = type(engine).capabilities
    if not isinstance(caps, Capabilities):
        raise TypeError(f"{type(engine).__name__}.capabilities is {caps!r}, not a Capabilities")
    missing = [f"{flag}: {member}" for flag in caps.names() for member in
               (*protocol_methods(PROTOCOLS[flag]), *protocol_attributes(PROTOCOLS[flag]))
               if not hasattr(engine, member)]
    if missing:
        raise TypeError(f"engine {type(engine).__name__} declares capabilities it lacks ({', '.join(missing)})")
    return caps


def check_dtype(arr: np.ndarray, what: str) -> None:
    """Raise :class:`InputError` unless ``arr`` holds real integers or floats."""
    if arr.dtype.kind not in ACCEPTED_KINDS:
        raise InputError(
            f"{what}: dtype {arr.dtype} is not supported; expected an integer or float image "
            "(u8, u16, u32, i32, i64, f32, f64)"
        )


def check_frame(frame: np.ndarray, shape: tuple[int, int], what: str = "frame") -> np.ndarray:
    """Return ``frame`` as an array after checking it is one ``shape`` = (nZ, nY) image of a supported dtype."""
    frame = np.asarray(frame)
    if frame.shape != tuple(shape):
        raise InputError(
            f"{what}: expected shape (NrPixelsZ, NrPixelsY) = {tuple(shape)}, found {frame.shape}"
        )
    check_dtype(frame, what)
    return frame


def check_batch(frames: np.ndarray, shape: tuple[int, int], what: str = "frames") -> np.ndarray:
    """Return ``frames`` as an array after checking it is ``[n, nZ, nY]`` of a supported dtype."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != tuple(shape):
        raise InputError(
            f"{what}: expected shape (n_frames, NrPixelsZ, NrPixelsY) = (n, {shape[0]}, {shape[1]}), "
            f"found {frames.shape}"
        )
    check_dtype(frames, what)
    return frames


def check_dark(dark: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Return the dark frame as float64 ``[nZ, nY]`` (or None), or raise :class:`InputError` on a wrong shape."""
    if dark is None:
        return None
    dark = np.asarray(dark)
    if dark.shape != tuple(shape):
        raise InputError(
            f"dark: expected shape (NrPixelsZ, NrPixelsY) = {tuple(shape)}, found {dark.shape}"
        )
    check_dtype(dark, "dark")
    return np.ascontiguousarray(dark, dtype=np.float64)

"""The CuPy (CUDA) integration engine: the reference engine's numbers, computed on the GPU.

What it computes (the NumPy expression, for frames ``X`` ``[n, nZ, nY]`` of any integer or float dtype ``T``)::

    x      = X.reshape(n, -1).astype(np.float64) - dark.ravel()          # cast + dark, on the device
    S      = x @ W.T                                                     # [n, n_bins], W the CSR map
    cake   = np.where(A > 1e-9, S / A, 0).reshape(n, n_r, n_eta)         # Normalize 1 (else cake = S)
    lineout = (cake * Aw).sum(-1) / Aw.sum(-1)   (0 where a ring has no area; Aw = A on non-empty bins, else 0)

How (one fused kernel per batch of frames, then a tiny one; the CUDA source is in :mod:`.cupy_kernels`, the
pinned host memory in :mod:`.cupy_staging`):

- The map lives on the device as CSR by bin row: ``indptr`` int32 ``[n_bins+1]``, ``indices`` int32, ``weights``
  **float32** (halves the map's bytes; each product and the whole row sum are accumulated in float64, so the error
  stays near 1e-7, far under the 1e-5 the tests allow). Uploaded once.
- ``integrate_rows<T, BMAX>`` computes the cake (one warp per bin row, each nonzero applied to up to ``BMAX``
  frames, so the map is read once per ``BMAX`` frames); ``lineout_rows`` the lineouts.
- ``omega_add`` (:meth:`CupyEngine.omega_add`): the omega sums on the device. A worker that does not write per-frame
  cakes (``Write2D 0``) still sums them per OmegaSumFrames group; adding a collected submission's cakes (each
  rounded to float32, as the cake a Result carries, and summed in float64) into a device accumulator of its group
  saves the copy back of every cake and the host's add; :meth:`CupyEngine.omega_take` brings a group's sum back
  once, when it is sent.
- Raw integer frames go host→device as they are (no host-side cast; float16 alone is widened to float32 on the
  host). Input that is already page-locked (``cupyx.empty_pinned``, or a buffer passed to
  :meth:`CupyEngine.register_host_memory`) is copied straight from where it lies; pageable input is first copied
  into a pinned staging buffer. ``integrate_batch`` cuts the frames into chunks of ``batch`` frames and deals them
  round-robin to ``n_streams`` CUDA streams: on each stream copy-in, the two kernels and the copy-out of the
  results into pinned host buffers, so the copy of chunk k+1 overlaps the integration of chunk k. All device and
  pinned buffers are allocated once (grown only when a larger dtype arrives); nothing is allocated per frame.

Outputs are float64 ndarrays, like the reference engine's; ``integrate_batch(frames, out=(lineouts, cakes))``
fills arrays the caller owns.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError, InputError
from ..images.frame_codecs import CodecError
from .base import GPU_INSTALL_HINT, Capabilities, check_batch, check_dark, check_frame
from .cupy_kernels import BMAX, CTYPES, WARPS_PER_BLOCK, lineout_and_omega_kernels, row_kernel
from .cupy_staging import HostStaging
from .gpu_decode import EncodedFrame, GpuDecoder
from .reference import EMPTY_BIN_AREA

log = logging.getLogger("ringstream.engines")


def _import_cupy():
    """Return the ``cupy`` module when it imports and sees a CUDA device, else raise ConfigError saying why."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising something else
        raise ConfigError(
            f"engine 'gpu': CuPy is not importable ({type(exc).__name__}: {exc}); install it with "
            f"{GPU_INSTALL_HINT}, or use engine 'cpu' or 'auto'"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise ConfigError(
            f"engine 'gpu': CuPy sees no CUDA device ({type(exc).__name__}: {exc}); the GPU engine needs CuPy and "
            f"a CUDA device ({GPU_INSTALL_HINT}); use engine 'cpu' or 'auto'"
        ) from None
    if n < 1:
        raise ConfigError(
            f"engine 'gpu': CuPy sees no CUDA device; the GPU engine needs CuPy and a CUDA device "
            f"({GPU_INSTALL_HINT}); use engine 'cpu' or 'auto'"
        )
    return cupy


def gpu_available() -> tuple[bool, str]:
    """(True, device name) when CuPy imports and sees a CUDA device, else (False, the reason)."""
    try:
        cupy = _import_cupy()
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except ConfigError as exc:
        return False, str(exc)
    except Exception as exc:  # pragma: no cover - odd driver states
        return False, f"{type(exc).__name__}: {exc}"


class Submission:
    """Frames :meth:`CupyEngine.submit` enqueued on stream ``stream``; ``ready()`` says whether the device is done
    with them (their host memory may then be released), :meth:`CupyEngine.collect` returns the results."""

    __slots__ = ("engine", "stream", "n", "want_cake", "errors")

    def __init__(self, engine, stream: int, n: int, want_cake: bool, errors=None) -> None:
        self.engine, self.stream, self.n, self.want_cake = engine, stream, n, want_cake
        self.errors = errors  # compressed frames: the decoder's pinned error flags [n] (read after collect)

    def ready(self) -> bool:
        return bool(self.engine._events[self.stream].done)


#: frames a batch (the frames one CUDA stream integrates at once), unless the caller asks otherwise
DEFAULT_BATCH = 8


class CupyEngine:
    """Integrate frames on a CUDA device with CuPy; same interface and numbers as the reference engine.

    Parameters
    ----------
    imap:
        the :class:`~ringstream.geometry.map.IntegrationMap` (``weights`` CSR ``[n_r·n_eta, nZ·nY]``, ``bin_area``).
    dark:
        optional dark frame ``[nZ, nY]`` (held on the device as float64, subtracted inside the kernel).
    normalize:
        True: area-normalised cake (``Normalize 1``); False: raw weighted sums.
    device:
        CUDA device ordinal.
    n_streams:
        CUDA streams the chunks of a batch are dealt to (copy-in / compute / copy-out overlap).
    batch:
        frames per chunk (per stream); device and pinned buffers hold this many frames (bench/gpu_engine.py
        measures the choice).
    bmax:
        frames each warp applies a nonzero to (the kernel's compile-time ``BMAX``).
    copy_threads:
        host threads that copy pageable input into the pinned staging buffer (:mod:`.cupy_staging`); 1 copies in
        the calling thread.
    """

    name = "gpu"
    capabilities = Capabilities(batch=True, asynchronous=True, device_omega_sums=True, host_memory=True,
                                compressed_input=True)

    def __init__(self, imap, dark: np.ndarray | None = None, normalize: bool = True, device: int = 0,
                 n_streams: int = 4, batch: int = DEFAULT_BATCH, bmax: int = BMAX, copy_threads: int = 4) -> None:
        cp = _import_cupy()
        self._cp = cp
        import cupyx

        self._cupyx = cupyx
        self.shape: tuple[int, int] = (int(imap.shape[0]), int(imap.shape[1]))
        self.n_r, self.n_eta = int(imap.n_r), int(imap.n_eta)
        self.n_bins = self.n_r * self.n_eta
        self.npix = self.shape[0] * self.shape[1]
        self.normalize = bool(normalize)
        self.n_streams = max(1, int(n_streams))
        self.batch = max(1, int(batch))
        self.bmax = max(1, min(32, int(bmax)))  # lane k writes frame k: at most 32
        self.device_id = int(device)
        self.device = cp.cuda.Device(self.device_id)
        dark64 = check_dark(dark, self.shape)

        import scipy.sparse as sp

        W = sp.csr_matrix(imap.weights, dtype=np.float64)
        if W.shape != (self.n_bins, self.npix):
            raise ValueError(f"map weights have shape {W.shape}, expected {(self.n_bins, self.npix)}")
        W.sum_duplicates()
        if W.nnz >= 2**31 or self.npix >= 2**31:
            raise ValueError("map too large for int32 CSR indices")
        bin_area = np.asarray(imap.bin_area, dtype=np.float64).reshape(self.n_r, self.n_eta)
        nonempty = bin_area > EMPTY_BIN_AREA
        lw = np.where(nonempty, bin_area, 0.0)
        ring_area = lw.sum(axis=1)
        self.nnz = int(W.nnz)

        with self.device:
            props = cp.cuda.runtime.getDeviceProperties(self.device_id)
            nm = props["name"]
            self.device_name = nm.decode() if isinstance(nm, bytes) else str(nm)
            # the map, uploaded once
            self._indptr = cp.asarray(W.indptr.astype(np.int32))
            self._indices = cp.asarray(W.indices.astype(np.int32))
            self._weights = cp.asarray(W.data.astype(np.float32))
            self._bin_area = cp.asarray(bin_area.ravel())
            self._lw = cp.asarray(lw.ravel())
            self._ring_area = cp.asarray(ring_area)
            self._dark = cp.asarray(dark64.ravel()) if dark64 is not None else None
            self._streams = [cp.cuda.Stream(non_blocking=True) for _ in range(self.n_streams)]
            self._events = [cp.cuda.Event(disable_timing=True) for _ in range(self.n_streams)]
            # per stream: device results and pinned copies of them (allocated once)
            self._d_cake = [cp.empty((self.batch, self.n_bins), np.float64) for _ in range(self.n_streams)]
            self._d_line = [cp.empty((self.batch, self.n_r), np.float64) for _ in range(self.n_streams)]
            self._h_cake = [cupyx.empty_pinned((self.batch, self.n_bins), np.float64)
                            for _ in range(self.n_streams)]
            self._h_line = [cupyx.empty_pinned((self.batch, self.n_r), np.float64) for _ in range(self.n_streams)]
            self._lineout_kernel, self._omega_kernel, self._omega_take_kernel = \
                lineout_and_omega_kernels(cp, self.device_id)
            # the omega sums (omega_add): per (stream, group) a float64 [n_bins] accumulator; the event recorded
            # after each stream's last add (a sum is read back once the adds before it are done, not the later work);
            # omega_take's own stream, which waits for those events only
            self._omega_acc: dict[tuple[int, int], object] = {}
            self._omega_events = [cp.cuda.Event(disable_timing=True) for _ in range(self.n_streams)]
            self._omega_stream = cp.cuda.Stream(non_blocking=True)
        # per stream, grown on demand: raw device input bytes (and, in staging, pinned staging bytes)
        self._d_in_mem: list = [None] * self.n_streams
        self._d_in_cap = [0] * self.n_streams
        self.staging = HostStaging(cp, cupyx, self.device, self.n_streams, copy_threads)
        # the asynchronous API: the stream the next submit() takes, and each stream's uncollected submission
        self._next_stream = 0
        self._subs: list[Submission | None] = [None] * self.n_streams
        # compressed frames (gpu_decode): one decoder per stream, its buffers reused once the stream is collected
        self._decoders = [GpuDecoder(cp, self.device_id) for _ in range(self.n_streams)]

    # ------------------------------------------------------------------------------------------------ kernels
    @staticmethod
    def _device_dtype(dtype: np.dtype) -> np.dtype:
        """The dtype frames travel as: native byte order; float16 widened to float32 (no half kernel)."""
        dt = np.dtype(dtype).newbyteorder("=")
        if dt.kind == "f" and dt.itemsize == 2:
            return np.dtype(np.float32)
        if dt.str[1:] not in CTYPES:
            raise InputError(f"frames: dtype {dtype} is not supported by the GPU engine")
        return dt

    def _launch(self, d_frames, n: int, d_cake, d_line, stream) -> None:
        """Enqueue the two kernels on ``stream`` for ``n`` frames in ``d_frames`` (device, any supported dtype)."""
        kern = row_kernel(self._cp, self.device, self.device_id, d_frames.dtype, self.bmax)
        has_dark = self._dark is not None
        dark = self._dark if has_dark else self._bin_area
        grid = ((self.n_bins + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK, (n + self.bmax - 1) // self.bmax)
        with stream:
            kern(grid, (32 * WARPS_PER_BLOCK,),
                 (d_frames, np.int64(self.npix), np.int32(n), self._indptr, self._indices, self._weights,
                  dark, np.int32(has_dark), self._bin_area, np.int32(self.n_bins), np.int32(self.normalize),
                  d_cake))
            t = n * self.n_r
            self._lineout_kernel(((t + 255) // 256,), (256,),
                                 (d_cake, self._lw, self._ring_area, np.int32(self.n_r), np.int32(self.n_eta),
                                  np.int32(n), d_line))

    # ------------------------------------------------------------------------------------------- device API
    def integrate_device(self, d_frames, out=None, stream=None):
        """Frames already on the device (cupy ``[n, nZ, nY]``) -> cupy (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``).

        Enqueued on ``stream`` (default: the current stream); nothing is copied to or from the host.
        """
        cp = self._cp
        n = int(d_frames.shape[0])
        if tuple(d_frames.shape[1:]) != self.shape:
            raise InputError(f"frames: expected shape (n, {self.shape[0]}, {self.shape[1]}), found {d_frames.shape}")
        if d_frames.dtype.str[1:] not in CTYPES:
            raise InputError(f"frames: dtype {d_frames.dtype} is not supported by the GPU engine")
        d_frames = cp.ascontiguousarray(d_frames)
        if out is None:
            lines = cp.empty((n, self.n_r), np.float64)
            cakes = cp.empty((n, self.n_r, self.n_eta), np.float64)
        else:
            lines, cakes = out
        self._launch(d_frames, n, cakes, lines, stream or cp.cuda.get_current_stream())
        return lines, cakes

    # ------------------------------------------------------------------------------------------- host memory
    def register_host_memory(self, buffer) -> None:
        """Page-lock an existing host buffer in place (``cudaHostRegister``), e.g. the shared-memory frame ring.

        Frames that lie in a registered buffer are copied to the device straight from it, asynchronously, without
        the pinned staging copy. Call :meth:`close` (or :meth:`unregister_host_memory`) before the buffer goes.
        The worker registers each shared-memory ring it attaches (and unregisters it before unmapping it).
        """
        self.staging.register(buffer)

    def unregister_host_memory(self, buffer) -> None:
        """Undo :meth:`register_host_memory` for ``buffer`` (nothing when it is not registered here)."""
        self.staging.unregister(buffer)

    def close(self) -> None:
        """Synchronise the streams and unregister any host memory registered here."""
        for s in self._streams:
            s.synchronize()
        self.staging.close()

    def _ensure_in(self, s: int, nbytes: int, staging: bool) -> None:
        cp = self._cp
        if self._d_in_cap[s] < nbytes:
            with self.device:
                self._d_in_mem[s] = cp.cuda.alloc(nbytes)
            self._d_in_cap[s] = nbytes
        if staging:
            self.staging.ensure(s, nbytes)

    # ---------------------------------------------------------------------------------------- host API
    def integrate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw frame ``[nZ, nY]`` -> (lineout ``[n_r]``, cake ``[n_r, n_eta]``), float64. An EncodedFrame (the
        worker's one-by-one path, after a batch with a frame that did not decode) is decoded on the CPU, which
        raises CodecError with the reason for bad bytes."""
        if isinstance(frame, EncodedFrame):
            frame = frame.decode()
        frame = check_frame(frame, self.shape)
        lines, cakes = self.integrate_batch(frame[None])
        return lines[0], cakes[0]

    def integrate_batch(self, frames: np.ndarray, out=None) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[n, nZ, nY]`` -> (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``), float64.

        ``out=(lineouts, cakes)`` fills caller-owned arrays of those shapes instead of allocating new ones.
        """
        frames = check_batch(frames, self.shape)
        n = frames.shape[0]
        dt = self._device_dtype(frames.dtype)
        if frames.dtype != dt:
            frames = frames.astype(dt)  # only for non-native byte order or float16
        frames = np.ascontiguousarray(frames)
        lines, cakes = self._outputs(n, out)
        if n == 0:
            return lines, cakes
        pinned = self.staging.is_pinned(frames)
        fbytes = self.npix * dt.itemsize

        def copy_in(s: int, c0: int, cnt: int, dptr: int, stream) -> None:
            nbytes = cnt * fbytes
            chunk = frames[c0:c0 + cnt]
            if pinned:
                src = int(chunk.ctypes.data)
            else:
                src = self.staging.stage(s, 0, chunk.reshape(-1).view(np.uint8))
            rt = self._cp.cuda.runtime
            rt.memcpyAsync(dptr, src, nbytes, rt.memcpyHostToDevice, stream.ptr)

        self._pipeline(n, dt, copy_in, not pinned, lines, cakes)
        return lines, cakes

    def _outputs(self, n: int, out):
        """Host arrays (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``) float64: the caller's ``out`` or new ones."""
        if out is None:
            return np.empty((n, self.n_r), np.float64), np.empty((n, self.n_r, self.n_eta), np.float64)
        lines, cakes = out
        if lines.shape != (n, self.n_r) or cakes.shape != (n, self.n_r, self.n_eta):
            raise InputError("out: arrays of shapes (n, n_r) and (n, n_r, n_eta) expected")
        return lines, cakes

    def integrate_many(self, frames, out=None) -> tuple[np.ndarray, np.ndarray]:
        """A list of separate frames ``[nZ, nY]`` (e.g. views of different shared-memory ring slots) ->
        (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]``), float64, as :meth:`integrate_batch` on their stack.

        Each frame is copied host→device on its own into its place in the chunk's device buffer (asynchronously,
        straight from where it lies when that memory is page-locked or registered with
        :meth:`register_host_memory`, else through the pinned staging buffer); then one kernel launch per chunk of
        ``batch`` frames. Every frame must have the map's shape and all one dtype. On return the frames' memory is
        no longer read (the caller may release it).

        EncodedFrames (all of the call, at most ``batch``) are decoded on the device (:meth:`submit`); CodecError
        when any does not decode.
        """
        if frames and isinstance(frames[0], EncodedFrame):
            sub = self.submit(frames)
            lines, cakes = self.collect(sub)
            bad = self.decode_failed(sub)
            if bad:
                raise CodecError(f"{len(bad)} of {len(frames)} compressed frames did not decode on the device: "
                                 f"{', '.join(frames[i].where for i in bad)}")
            lines, cakes = lines.copy(), cakes.copy()
            if out is not None:
                out[0][...], out[1][...] = lines, cakes
                return out
            return lines, cakes
        frames, dt, pinned = self._prepare_frames(frames)
        n = len(frames)
        lines, cakes = self._outputs(n, out)
        if n == 0:
            return lines, cakes
        staging = not all(pinned)
        fbytes = self.npix * dt.itemsize

        def copy_in(s: int, c0: int, cnt: int, dptr: int, stream) -> None:
            self.staging.copy_frames(frames[c0:c0 + cnt], pinned[c0:c0 + cnt], fbytes, s, dptr, stream)

        self._pipeline(n, dt, copy_in, staging, lines, cakes)
        return lines, cakes

    def _prepare_frames(self, frames) -> tuple[list[np.ndarray], np.dtype, list[bool]]:
        """Checked frames in the device dtype (C-contiguous), that dtype, and which of them are page-locked."""
        frames = [check_frame(f, self.shape) for f in frames]
        if len({f.dtype.str for f in frames}) > 1:
            raise InputError("frames: integrate_many needs frames of one dtype")
        dt = self._device_dtype(frames[0].dtype) if frames else np.dtype(np.float64)
        frames = [np.ascontiguousarray(f if f.dtype == dt else f.astype(dt)) for f in frames]
        return frames, dt, [self.staging.is_pinned(f) for f in frames]

    # ------------------------------------------------------------------------------------ asynchronous API
    def submit(self, frames, want_cake: bool = True) -> Submission:
        """Enqueue up to ``batch`` separate frames ``[nZ, nY]`` (e.g. ring slots) on the next of the ``n_streams``
        streams — copy in, the two kernels, the copy of the lineouts (and, with ``want_cake``, the cakes) into that
        stream's pinned buffers — and return at once. The frames' memory is read until the submission is
        :meth:`Submission.ready`; :meth:`collect` returns its results. At most ``n_streams`` submissions may be
        uncollected: a stream is reused only after its last submission was collected (else RuntimeError).

        EncodedFrames (frames that travelled compressed; all of the submission, one shape and dtype) are decoded on
        the stream first (:class:`~.gpu_decode.GpuDecoder`, into the buffer raw frames are copied to); after
        :meth:`collect`, :meth:`decode_failed` names those whose bytes did not decode.

        NumPy equivalent: ``integrate_many(frames)``.
        """
        if frames and isinstance(frames[0], EncodedFrame):
            return self._submit_encoded(list(frames), want_cake)
        frames, dt, pinned = self._prepare_frames(frames)
        n = len(frames)
        if not 0 < n <= self.batch:
            raise InputError(f"frames: submit takes 1 to {self.batch} frames, got {n}")
        s = self._take_stream()
        fbytes = self.npix * dt.itemsize
        stream = self._streams[s]
        with self.device:
            self._ensure_in(s, n * fbytes, staging=not all(pinned))
            dmem = self._d_in_mem[s]
            self.staging.copy_frames(frames, pinned, fbytes, s, int(dmem.ptr), stream)
            d_frames = self._cp.ndarray((n, self.npix), dtype=dt, memptr=dmem)
            self._enqueue(s, d_frames, n, want_cake, stream)
        sub = Submission(self, s, n, bool(want_cake))
        self._subs[s] = sub
        return sub

    def _enqueue(self, s: int, d_frames, n: int, want_cake: bool, stream) -> None:
        """Stream ``s``'s part of a submission once its frames are on the device: the kernels, the copies of the
        results into its pinned buffers, its event."""
        rt = self._cp.cuda.runtime
        d_cake, d_line = self._d_cake[s], self._d_line[s]
        self._launch(d_frames, n, d_cake, d_line, stream)
        if want_cake:
            rt.memcpyAsync(int(self._h_cake[s].ctypes.data), d_cake.data.ptr, n * self.n_bins * 8,
                           rt.memcpyDeviceToHost, stream.ptr)
        rt.memcpyAsync(int(self._h_line[s].ctypes.data), d_line.data.ptr, n * self.n_r * 8,
                       rt.memcpyDeviceToHost, stream.ptr)
        self._events[s].record(stream)

    def _submit_encoded(self, frames: list[EncodedFrame], want_cake: bool) -> Submission:
        """:meth:`submit` of frames that travelled compressed: bytes in, decoded on the stream, integrated."""
        n = len(frames)
        if not 0 < n <= self.batch:
            raise InputError(f"frames: submit takes 1 to {self.batch} frames, got {n}")
        if any(not isinstance(f, EncodedFrame) for f in frames):
            raise InputError("frames: a submission is all compressed frames or none")
        dt = np.dtype(frames[0].dtype)
        if any(tuple(f.shape) != self.shape or np.dtype(f.dtype) != dt for f in frames):
            raise InputError(f"frames: compressed frames of a submission must all be {self.shape} {dt}")
        if self._device_dtype(dt) != dt:
            raise InputError(f"frames: compressed frames of dtype {dt} are not decoded on the device")
        s = self._take_stream()
        fbytes = self.npix * dt.itemsize
        stream = self._streams[s]
        with self.device:
            self._ensure_in(s, n * fbytes, staging=False)
            dmem = self._d_in_mem[s]
            d_bytes = self._cp.ndarray((n * fbytes,), dtype=np.uint8, memptr=dmem)
            errors = self._decoders[s].decode(frames, d_bytes, stream)
            d_frames = self._cp.ndarray((n, self.npix), dtype=dt, memptr=dmem)
            self._enqueue(s, d_frames, n, want_cake, stream)
        sub = Submission(self, s, n, bool(want_cake), errors)
        self._subs[s] = sub
        return sub

    def _take_stream(self) -> int:
        """The stream the next submission goes to (round robin); RuntimeError while it holds an uncollected one."""
        s = self._next_stream
        if self._subs[s] is not None:
            raise RuntimeError(f"stream {s} still holds an uncollected submission; collect it first")
        self._next_stream = (s + 1) % self.n_streams
        return s

    def decode_failed(self, sub: Submission) -> list[int]:
        """After :meth:`collect` of ``sub``: the indices of its compressed frames whose bytes did not decode."""
        if sub.errors is None:
            return []
        return [int(i) for i in np.flatnonzero(sub.errors[:sub.n])]

    def collect(self, sub: Submission) -> tuple[np.ndarray, np.ndarray | None]:
        """Wait for ``sub`` and return (lineouts ``[n, n_r]``, cakes ``[n, n_r, n_eta]`` or None without
        ``want_cake``), float64 views of the stream's pinned buffers: valid until the next :meth:`submit` on that
        stream, so copy or encode them before submitting ``n_streams`` more."""
        s = sub.stream
        if self._subs[s] is not sub:
            raise RuntimeError("collect: this submission was already collected")
        self._events[s].synchronize()
        self._subs[s] = None
        lines = self._h_line[s][:sub.n]
        cakes = self._h_cake[s][:sub.n].reshape(sub.n, self.n_r, self.n_eta) if sub.want_cake else None
        return lines, cakes

    def omega_add(self, sub: Submission, groups) -> None:
        """Add the cakes of the submission just collected into the device omega sum of each frame's group
        (``groups[k]``: the group of frame ``k`` of ``sub``, or -1 for a frame summed nowhere, one whose bytes did
        not decode; each cake rounded to float32, summed in float64).

        Call it after :meth:`collect` and before the next :meth:`submit` on that stream (the adds are enqueued on the
        submission's stream, so they read its cakes before the next submission there overwrites them). One
        accumulator per (stream, group): the streams' adds never touch the same memory, so need no ordering between
        them. A group's sum comes back with :meth:`omega_take`."""
        cp = self._cp
        s = sub.stream
        groups = [int(g) for g in groups]
        if len(groups) != sub.n:
            raise ValueError(f"omega_add: {len(groups)} groups for {sub.n} frames")
        stream = self._streams[s]
        with self.device, stream:
            k0 = 0
            while k0 < sub.n:  # one launch per run of frames of one group (frames come in order: usually one)
                k1 = k0 + 1
                while k1 < sub.n and groups[k1] == groups[k0]:
                    k1 += 1
                if groups[k0] < 0:
                    k0 = k1
                    continue
                acc = self._omega_acc.get((s, groups[k0]))
                if acc is None:
                    acc = self._omega_acc[(s, groups[k0])] = cp.zeros(self.n_bins, np.float64)
                self._omega_kernel(((self.n_bins + 255) // 256,), (256,),
                                   (self._d_cake[s], np.int32(k0), np.int32(k1), np.int32(self.n_bins), acc))
                k0 = k1
            self._omega_events[s].record(stream)

    def omega_take(self, groups, dtype=np.float64) -> list[np.ndarray | None]:
        """The device omega sums of ``groups`` (each ``[n_r, n_eta]``: every stream's accumulator added in stream
        order, in float64, then written as ``dtype``, float64 or float32: rounded to nearest, as NumPy's ``astype``),
        removed from the device; None for a group no cake was added to. One kernel and one copy into page-locked
        memory for all of them, on a stream of their own that waits for the adds of the streams holding them, not
        for the work enqueued on those streams since. The arrays are views of one page-locked buffer (freed with
        the last of them)."""
        cp = self._cp
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"omega_take: dtype float64 or float32, not {dtype}")
        groups = [int(g) for g in groups]
        parts = [[(s, self._omega_acc.pop((s, g))) for s in range(self.n_streams) if (s, g) in self._omega_acc]
                 for g in groups]
        present = [i for i, p in enumerate(parts) if p]
        out: list[np.ndarray | None] = [None] * len(groups)
        if not present:
            return out
        table = np.zeros((len(present), self.n_streams), dtype=np.uint64)  # device pointers, stream order, 0 after
        for row, i in enumerate(present):
            for k, (_, acc) in enumerate(parts[i]):
                table[row, k] = acc.data.ptr
        stream = self._omega_stream
        host = self._cupyx.empty_pinned((len(present), self.n_bins), dtype)
        with self.device, stream:
            for s in sorted({s for i in present for s, _ in parts[i]}):
                stream.wait_event(self._omega_events[s])
            d_table = cp.asarray(table)
            d_out = cp.empty((len(present), self.n_bins), dtype)
            self._omega_take_kernel(((self.n_bins + 255) // 256, len(present)), (256,),
                                    (d_table, np.int32(self.n_streams), np.int32(self.n_bins),
                                     np.int32(dtype == np.float32), d_out))
            cp.cuda.runtime.memcpyAsync(int(host.ctypes.data), d_out.data.ptr, host.nbytes,
                                        cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
            stream.synchronize()  # (the accumulators, the table and d_out are freed after this only)
        for row, i in enumerate(present):
            out[i] = host[row].reshape(self.n_r, self.n_eta)
        del parts, d_table, d_out
        return out

    def omega_groups(self) -> list[int]:
        """The groups with a device omega sum not yet taken."""
        return sorted({g for _, g in self._omega_acc})

    def _pipeline(self, n: int, dt: np.dtype, copy_in, staging: bool, lines: np.ndarray, cakes: np.ndarray) -> None:
        """Chunks of ``batch`` frames dealt round-robin to the streams: ``copy_in(s, c0, cnt, device_ptr, stream)``
        enqueues the chunk's host→device copies, then the kernels and the copy-out; results land in lines/cakes."""
        if any(sub is not None for sub in self._subs):
            raise RuntimeError("integrate_batch/integrate_many: collect the outstanding submissions first")
        cakes2 = cakes.reshape(n, self.n_bins)
        rt = self._cp.cuda.runtime
        fbytes = self.npix * dt.itemsize
        pending: list = [None] * self.n_streams
        order: list[int] = []

        def collect(s: int) -> None:
            c0, cnt = pending[s]
            self._events[s].synchronize()
            np.copyto(cakes2[c0:c0 + cnt], self._h_cake[s][:cnt])
            np.copyto(lines[c0:c0 + cnt], self._h_line[s][:cnt])
            pending[s] = None

        with self.device:
            for k, c0 in enumerate(range(0, n, self.batch)):
                s = k % self.n_streams
                cnt = min(self.batch, n - c0)
                if pending[s] is not None:
                    collect(s)  # stream s's buffers are free again
                stream = self._streams[s]
                nbytes = cnt * fbytes
                self._ensure_in(s, nbytes, staging=staging)
                dmem = self._d_in_mem[s]
                copy_in(s, c0, cnt, int(dmem.ptr), stream)
                d_frames = self._cp.ndarray((cnt, self.npix), dtype=dt, memptr=dmem)
                d_cake, d_line = self._d_cake[s], self._d_line[s]
                self._launch(d_frames, cnt, d_cake, d_line, stream)
                rt.memcpyAsync(int(self._h_cake[s].ctypes.data), d_cake.data.ptr, cnt * self.n_bins * 8,
                               rt.memcpyDeviceToHost, stream.ptr)
                rt.memcpyAsync(int(self._h_line[s].ctypes.data), d_line.data.ptr, cnt * self.n_r * 8,
                               rt.memcpyDeviceToHost, stream.ptr)
                self._events[s].record(stream)
                pending[s] = (c0, cnt)
                order.append(s)
            # drain in submission order
            for s in order[-self.n_streams:]:
                if pending[s] is not None:
                    collect(s)

    # ------------------------------------------------------------------------------------------- test hook
    def _poison(self, value: float = np.nan) -> None:
        """Fill every device and pinned result buffer with ``value`` (tests check every output is written)."""
        for s in range(self.n_streams):
            self._d_cake[s].fill(value)
            self._d_line[s].fill(value)
            self._h_cake[s].fill(value)
            self._h_line[s].fill(value)
        self._cp.cuda.Device(self.device_id).synchronize()

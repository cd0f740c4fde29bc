"""The host side of the CuPy engine's copies to the device: page-locked (pinned) memory.

A host→device copy runs asynchronously, by DMA, only from page-locked memory. Frames that already lie in it (a
``cupyx.empty_pinned`` array, or a buffer registered in place with :meth:`HostStaging.register`, e.g. the
shared-memory frame ring) are copied straight from where they lie; pageable frames are first copied into a pinned
staging buffer of the stream that takes them (one per stream, allocated once and grown only when a larger chunk
arrives), by ``copy_threads`` host threads when large (one memcpy thread cannot keep up with a PCIe link).
"""

from __future__ import annotations

import numpy as np


class HostStaging:
    """Pinned staging buffers (one per CUDA stream) and host memory registered in place, for one engine.

    ``cp``, ``cupyx``: the CuPy modules; ``device``: the engine's ``cupy.cuda.Device``; ``n_streams``: staging
    buffers; ``copy_threads``: host threads that copy pageable input into staging (1: the calling thread).
    """

    def __init__(self, cp, cupyx, device, n_streams: int, copy_threads: int) -> None:
        self._cp = cp
        self._cupyx = cupyx
        self.device = device
        # per stream, grown on demand: pinned staging bytes
        self._h_in: list = [None] * n_streams
        self._registered: list[int] = []
        #: registered buffers: address -> size in bytes
        self.registered: dict[int, int] = {}
        self.copy_threads = max(1, int(copy_threads))
        self._pool = None

    # ------------------------------------------------------------------------------------------- registration
    def register(self, buffer) -> None:
        """Page-lock an existing host buffer in place (``cudaHostRegister``)."""
        arr = np.frombuffer(buffer, dtype=np.uint8)
        ptr, size = int(arr.ctypes.data), int(arr.nbytes)
        with self.device:
            self._cp.cuda.runtime.hostRegister(ptr, size, 0)
        self._registered.append(ptr)
        self.registered[ptr] = size

    def unregister(self, buffer) -> None:
        """Undo :meth:`register` for ``buffer`` (nothing when it is not registered here)."""
        arr = np.frombuffer(buffer, dtype=np.uint8)
        ptr = int(arr.ctypes.data)
        if ptr in self._registered:
            with self.device:
                self._cp.cuda.runtime.hostUnregister(ptr)
            self._registered.remove(ptr)
            self.registered.pop(ptr, None)

    def close(self) -> None:
        """Unregister every buffer registered here and stop the copy threads (the streams must be idle)."""
        with self.device:
            for ptr in self._registered:
                try:
                    self._cp.cuda.runtime.hostUnregister(ptr)
                except Exception:  # pragma: no cover
                    pass
        self._registered.clear()
        self.registered.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def is_pinned(self, arr: np.ndarray) -> bool:
        """True when the whole of ``arr`` (C-contiguous) is page-locked host memory known to CUDA."""
        ptr = int(arr.ctypes.data)
        for base, size in self.registered.items():  # registered here: no driver query
            if base <= ptr and ptr + arr.nbytes <= base + size:
                return True
        rt = self._cp.cuda.runtime
        host_type = getattr(rt, "memoryTypeHost", 1)
        try:
            for p in (ptr, ptr + max(arr.nbytes, 1) - 1):
                if rt.pointerGetAttributes(p).type != host_type:
                    return False
            return True
        except Exception:
            return False

    # ------------------------------------------------------------------------------------------------ staging
    def ensure(self, s: int, nbytes: int) -> None:
        """Stream ``s``'s staging buffer holds at least ``nbytes`` bytes (grown, never shrunk)."""
        if self._h_in[s] is None or self._h_in[s].nbytes < nbytes:
            self._h_in[s] = self._cupyx.empty_pinned((nbytes,), np.uint8)

    def stage(self, s: int, offset: int, data: np.ndarray) -> int:
        """Copy ``data`` (uint8 ``[nbytes]``) into stream ``s``'s staging buffer at byte ``offset`` (done on return);
        the address of the copy, for the host→device copy that follows."""
        dst = self._h_in[s][offset:offset + data.size]
        self._copy(dst, data)
        return int(dst.ctypes.data)

    def copy_frames(self, frames, pinned, fbytes: int, s: int, dptr: int, stream) -> None:
        """Enqueue frame k's host→device copy to ``dptr + k·fbytes`` on ``stream``: straight from page-locked
        memory (``pinned[k]``), else through stream ``s``'s staging buffer (a host copy done here, before
        returning)."""
        rt = self._cp.cuda.runtime
        for k, f in enumerate(frames):
            if pinned[k]:
                src = int(f.ctypes.data)
            else:
                src = self.stage(s, k * fbytes, f.reshape(-1).view(np.uint8))
            rt.memcpyAsync(dptr + k * fbytes, src, fbytes, rt.memcpyHostToDevice, stream.ptr)

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """``dst[:] = src`` (uint8, same size), split over ``copy_threads`` threads when large."""
        n = src.size
        if self.copy_threads <= 1 or n < (4 << 20):
            np.copyto(dst, src)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.copy_threads, thread_name_prefix="ringstream-h2d-stage")
        step = -(-n // self.copy_threads)
        step = (step + 4095) & ~4095
        futs = [self._pool.submit(np.copyto, dst[i:i + step], src[i:i + step]) for i in range(0, n, step)]
        for f in futs:
            f.result()

"""Replay recorded frames: an ``.npy`` stack (memory-mapped) or image files / a folder (via ``iter_images``).

``source.replay_path`` names the data; ``source.loop`` restarts it at the end; ``source.frames`` caps the count
(0 = once through without looping, forever with looping); ``source.rate`` Hz paces it (0 = as fast as possible).
Frames keep their stored dtype; every frame must have the detector shape (NrPixelsZ, NrPixelsY), else
:class:`~ringstream.errors.InputError` naming the file. Source ids are ``name:k`` for a stack, the file name for a
single image (as :func:`~ringstream.images.files.iter_images` gives them); ``metadata["pass"]`` counts the loops from 0.

``source.replay_codec`` (for benchmarks of compressed frames): ``none`` (as read; an HDF5 file's chunks decoded),
``bslz4`` / ``lz4`` (every frame of the first pass compressed once, on load, and held in memory: bslz4 with the
HDF5-filter header and bitshuffle's default block, lz4 in the filter-32004 framing with :data:`LZ4_BLOCK_BYTES`
blocks), or ``stored`` (an HDF5 file's bslz4 / lz4 chunks as stored, ``read_direct_chunk``, each pass; other frames
raw). Compressed frames travel compressed and the workers decode them.

Resumable (a replacement ingest, ``ringstream.ingest.resume``): frames() goes on after the frames a dead ingest
announced (counted: the replay is pausable, so it announced every frame it yielded); :meth:`ReplaySource.frame_again`
reads an announced frame again by its source id, on the first pass only (a looped replay's later passes repeat
the ids: such a frame is lost and counted by the ingest).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..images.files import NPY_EXTS, iter_images, iter_stored
from ..images.frame_codecs import encode_frame
from .source_base import SourceFrame, StopFlag, stopped

log = logging.getLogger("ringstream.ingest.replay")

#: the block of a replay's lz4 frames (``replay_codec = "lz4"``), in bytes: many blocks a frame, so a GPU decodes
#: them in parallel (NDPluginCodec's one raw block a frame would be decoded by one thread block)
LZ4_BLOCK_BYTES = 65536


class ReplaySource:
    """Frames from ``path`` (an .npy file ``[nZ, nY]`` or ``[n, nZ, nY]``, an image file, or a folder)."""

    name = "replay"
    pausable = True
    resumable = True

    def __init__(self, path, params, *, n_frames: int = 0, loop: bool = True, rate: float = 0.0,
                 codec: str = "none") -> None:
        if path is None or str(path) == "":
            raise ConfigError("source.replay_path: required for source.kind 'replay'")
        self.path = Path(path)
        self.shape = (int(params.NrPixelsZ), int(params.NrPixelsY))
        self.n_frames = int(n_frames)
        if self.n_frames < 0:
            raise ConfigError(f"source.frames {n_frames}: must be >= 0")
        self.loop = bool(loop)
        self.rate = float(rate or 0.0)
        self._stack: np.ndarray | None = None
        self._skip = 0  # frames a dead ingest announced: frames() goes on after them
        self.codec = str(codec or "none")
        if self.codec not in ("none", "bslz4", "lz4", "stored"):
            raise ConfigError(f"source.replay_codec {codec!r}: expected none, bslz4, lz4 or stored")
        self.keeps_compressed = self.codec != "none"
        self._encoded: list[tuple[str, tuple]] | None = None  # (sid, (bytes, codec, header, block)): bslz4 / lz4
        self.compressed_bytes = self.raw_bytes = 0  # of the frames compressed on load (the ratio, for benchmarks)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such replay file or folder")
        if self.path.is_file() and self.path.suffix.lower() in NPY_EXTS:
            self._stack = self._open_npy()
            self.dtype = self._stack.dtype
            self._count = self._stack.shape[0]
        else:
            first = next(iter(iter_images([self.path], self.shape)), None)  # checks names, shape of the first
            if first is None:
                raise InputError(f"{self.path}: holds no frames")
            self.dtype = first[1].dtype
            self._count = None
        if self.codec in ("bslz4", "lz4"):
            self._encoded = [(sid, self._compress(pixels)) for sid, pixels in self._raw_pass()]
            log.info("replay: %d frames compressed with %s on load: %d bytes -> %d (ratio %.2f)", len(self._encoded),
                     self.codec, self.raw_bytes, self.compressed_bytes, self.compression_ratio)

    @classmethod
    def from_config(cls, config, params) -> ReplaySource:
        s = config.source
        return cls(s.replay_path, params, n_frames=int(s.frames), loop=bool(s.loop), rate=float(s.rate),
                   codec=s.replay_codec)

    @property
    def compression_ratio(self) -> float:
        """Raw bytes over compressed bytes of the frames compressed on load (0 when none were)."""
        return self.raw_bytes / self.compressed_bytes if self.compressed_bytes else 0.0

    def _compress(self, pixels: np.ndarray) -> tuple:
        block = LZ4_BLOCK_BYTES if self.codec == "lz4" else 0
        payload, header, block = encode_frame(np.asarray(pixels), self.codec, header=True, block=block)
        self.compressed_bytes += payload.size
        self.raw_bytes += pixels.nbytes
        return payload, self.codec, header, block

    def _open_npy(self) -> np.ndarray:
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{self.path}: cannot read replay stack ({exc})") from exc
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != self.shape or arr.shape[0] == 0:
            raise InputError(
                f"{self.path}: replay stack has shape {arr.shape}; expected (n, NrPixelsZ, NrPixelsY) = "
                f"(n, {self.shape[0]}, {self.shape[1]}) with n >= 1"
            )
        if arr.dtype.kind not in "uif":
            raise InputError(f"{self.path}: replay stack dtype {arr.dtype} is not an integer or float image")
        return arr

    def _one_pass(self) -> Iterator[tuple[str, np.ndarray | tuple]]:
        """``(sid, pixels)`` or, for a frame that travels compressed, ``(sid, (bytes, codec, header, block))``."""
        if self._encoded is not None:
            yield from self._encoded
        elif self.codec == "stored" and self._stack is None:
            yield from iter_stored([self.path], self.shape)
        else:
            yield from self._raw_pass()

    def _raw_pass(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._stack is not None:
            name = self.path.name
            for k in range(self._stack.shape[0]):
                yield f"{name}:{k}", self._stack[k]
        else:
            yield from iter_images([self.path], self.shape)

    def frames(self, stop: StopFlag | None = None) -> Iterator[SourceFrame]:
        """Frames in file order, looped when ``loop``, up to ``n_frames`` (see the module docstring)."""
        k = 0
        n_pass = 0
        while True:
            got = 0
            for sid, pixels in self._one_pass():
                if stopped(stop) or (self.n_frames and k >= self.n_frames):
                    return
                got += 1
                if k >= self._skip:
                    yield self._frame(sid, pixels, n_pass)
                k += 1
            if got == 0 or not self.loop or stopped(stop) or (self.n_frames and k >= self.n_frames):
                return
            n_pass += 1

    def resume(self, last_ids: list[str], announced: int) -> None:
        """Before :meth:`frames`: an ingest that died announced ``announced`` frames; frames() goes on after them
        (``last_ids``, the last of each file, are not needed: a pass yields every frame in order)."""
        self._skip = int(announced)

    def frame_again(self, source_id: str) -> SourceFrame | None:
        """The frame ``source_id`` of the first pass again; None for a looped replay past its first pass."""
        if self.loop and self._skip > (self._count or 0):
            return None
        for sid, pixels in self._one_pass():
            if sid == source_id:
                return self._frame(sid, pixels if isinstance(pixels, tuple) else np.array(pixels), 0)
        return None

    def _frame(self, sid: str, pixels, n_pass: int) -> SourceFrame:
        if not isinstance(pixels, tuple):
            return SourceFrame(pixels, sid, time.time(), {"pass": n_pass})
        payload, codec, header, block = pixels
        return SourceFrame(payload, sid, time.time(), {"pass": n_pass}, shape=self.shape, dtype=self.dtype,
                           codec=codec, codec_header=header, codec_block=block)

    def close(self) -> None:
        self._stack = None

"""Detector image files, one reader per format, each reading one frame at a time straight into a caller's array.

:func:`open_image` validates a file (header parsed, the data it announces present) and returns an
:class:`ImageFile`: ``n_frames`` images of ``shape = (NrPixelsZ, NrPixelsY)`` pixels of ``dtype`` (the stored type,
never converted, so a round trip is bit-exact); ``read_into(k, out)`` writes image ``k`` (from 0) into ``out``, a
writable C-contiguous array of that shape and dtype (a shared-memory ring slot), with no intermediate copy where
the format allows it (uncompressed TIFF strips, GE, raw, npy, HDF5 ``read_direct``).

Formats (by extension, case-insensitive):

- TIFF ``.tif .tiff`` (tifffile): one image per page;
- CBF ``.cbf`` (PILATUS byte-offset, one image per file): the binary section's size, closing boundary and
  Content-MD5 are checked at open; fabio's byte-offset decoder decodes it when it is read, then it is copied;
- GE ``.ge .ge1``–``.ge5``: an 8192-byte header, then little-endian uint16 frames of the detector shape, read frame
  by frame at offset ``8192 + k * frame_bytes`` (never the whole file);
- HDF5 ``.h5 .hdf5 .hdf .nxs`` (h5py; hdf5plugin registers bitshuffle-LZ4, LZ4, Blosc... as in EIGER files): a 2-D
  image or a 3-D stack at the configured dataset path (default: the first of :data:`HDF5_DATASET_PATHS`); a path
  naming a group (EIGER master ``/entry/data``) means its datasets in natural order, external links followed; a
  dataset stored one frame a chunk through the bitshuffle-LZ4 (32008) or LZ4 (32004) filter also gives each frame
  as its stored bytes (``read_encoded``: ``read_direct_chunk``, not decoded), so the frame can travel compressed;
- raw ``.bin .raw``: ``raw_header`` bytes, then frames of ``raw_dtype`` and ``raw_shape`` (default: the detector);
- NumPy ``.npy``: a 2-D image or a 3-D stack (read from the header's data offset, not memory-mapped).

Every problem is an :class:`~ringstream.errors.InputError` whose one-line message names the file;
:class:`IncompleteFile` (a subclass) marks a file that may still be growing or is corrupt (short data, a header that
does not parse), which a watching source retries for a while before it gives up.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from .frame_codecs import CodecError, framing_of

TIFF_EXTS = (".tif", ".tiff")
CBF_EXTS = (".cbf",)
GE_EXTS = (".ge", ".ge1", ".ge2", ".ge3", ".ge4", ".ge5")
HDF5_EXTS = (".h5", ".hdf5", ".hdf", ".nxs")
RAW_EXTS = (".bin", ".raw")
NPY_EXTS = (".npy",)
#: every extension :func:`open_image` reads
FORMAT_EXTS = TIFF_EXTS + CBF_EXTS + GE_EXTS + HDF5_EXTS + RAW_EXTS + NPY_EXTS

#: bytes of the header at the start of a GE ``.geN`` file; uint16 frames follow
GE_HEADER_BYTES = 8192

#: where an image is looked for in an HDF5 file when no dataset path is configured, in this order
HDF5_DATASET_PATHS = ("/entry/data/data", "/entry/instrument/detector/data", "/data")

_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"
_CBF_KEY = re.compile(rb"(X-Binary-[A-Za-z-]+|Content-MD5|conversions)\s*[:=]\s*([^\r\n;]+)")
#: CBF element types read, and their numpy types
_CBF_TYPES = {"signed 32-bit integer": "<i4", "unsigned 32-bit integer": "<u4", "signed 16-bit integer": "<i2",
              "unsigned 16-bit integer": "<u2", "signed 8-bit integer": "i1", "unsigned 8-bit integer": "u1"}
_DIGITS = re.compile(r"(\d+)")


class IncompleteFile(InputError):
    """A file whose data is short or whose header does not parse: still being written, or corrupt."""


class _Complaints(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _complaints(name: str):
    """tifffile logs (and skips) an IFD chain or tag that points past the end of the file instead of raising:
    collect the errors the library ``name`` logs (not passing them on) so that such a file counts as incomplete.
    The logger's level is lowered to ERROR meanwhile: a program that silenced the library (the CLI sets it to
    CRITICAL) would otherwise silence the complaints too, and a truncated file would be read as whole."""
    logger = logging.getLogger(name)
    handler, propagate, level = _Complaints(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


@dataclass(frozen=True)
class FormatOptions:
    """How to read the formats that need settings.

    ``detector_shape``: (NrPixelsZ, NrPixelsY), the frame shape of GE files and the default of raw files;
    ``hdf5_dataset``: dataset (or group) path inside HDF5 files ("" = :data:`HDF5_DATASET_PATHS`);
    ``raw_dtype``: numpy dtype string of raw files (``"uint16"``, ``"<i4"``, ``">u2"``); ``raw_shape``: frame shape
    of raw files (None = ``detector_shape``); ``raw_header``: bytes to skip at the start of a raw file.
    """

    detector_shape: tuple[int, int] | None = None
    hdf5_dataset: str = ""
    raw_dtype: str = "uint16"
    raw_shape: tuple[int, int] | None = None
    raw_header: int = 0


def natural_key(name: str | os.PathLike) -> tuple:
    """Sort key that orders embedded numbers numerically: ``img_9`` before ``img_10``."""
    parts = _DIGITS.split(str(name))
    return tuple((0, int(s), s) if s.isdigit() else (1, 0, s) for s in parts if s != "")


def format_of(path: str | os.PathLike) -> str | None:
    """``"tiff" | "cbf" | "ge" | "hdf5" | "raw" | "npy"`` by extension, None when unsupported."""
    ext = Path(path).suffix.lower()
    for name, exts in (("tiff", TIFF_EXTS), ("cbf", CBF_EXTS), ("ge", GE_EXTS), ("hdf5", HDF5_EXTS),
                       ("raw", RAW_EXTS), ("npy", NPY_EXTS)):
        if ext in exts:
            return name
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ImageFile:
    """An open image file: ``n_frames`` frames of ``shape`` and ``dtype``; ``read_into(k, out)``; ``close()``.

    Thread-safe: reads (and the close) of one file take its lock in turn, so the ingest's copy threads may fill
    slots from several frames of a file at once; different files are read in parallel.
    """

    format: str = ""
    n_frames: int = 0
    shape: tuple[int, int] = (0, 0)
    dtype: np.dtype = np.dtype("uint16")

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.format = path, fmt
        self._lock = threading.Lock()
        self.closed = False

    def read_into(self, k: int, out: np.ndarray) -> None:
        """Write frame ``k`` into ``out`` (writable, C-contiguous, ``shape`` and ``dtype``)."""
        self._check(k, out)
        with self._lock:
            if self.closed:
                raise InputError(f"{self.path}: cannot read frame {k}: the file was closed")
            self._read(k, out)

    def _read(self, k: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def read_encoded(self, k: int) -> tuple[np.ndarray, str, int, int] | None:
        """Frame ``k`` as the file stores it compressed, not decoded: ``(bytes uint8 [n], codec, codec_header,
        codec_block)`` as a FrameHeader carries them, or None when the format (or this frame) is not stored as one
        bslz4 / lz4 frame (then :meth:`read_into` decodes it). Only HDF5 datasets say yes (:class:`_Hdf5`)."""
        return None

    def read(self, k: int) -> np.ndarray:
        """Frame ``k`` as a new array ``[NrPixelsZ, NrPixelsY]``."""
        out = np.empty(self.shape, self.dtype)
        self.read_into(k, out)
        return out

    def frame_id(self, k: int, name: str | None = None) -> str:
        """``name`` (default the file name) for a one-frame file, ``name:k`` for frame k of a stack."""
        name = self.path.name if name is None else name
        return name if self.n_frames == 1 else f"{name}:{k}"

    def close(self) -> None:
        """Close the file (once; later reads raise InputError)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._close()

    def _close(self) -> None:
        pass

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check(self, k: int, out: np.ndarray) -> None:
        if not 0 <= k < self.n_frames:
            raise InputError(f"{self.path}: frame {k} does not exist (the file holds {self.n_frames})")
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise InputError(f"{self.path}: cannot read frame {k} into an array of shape {out.shape} {out.dtype}; "
                             f"expected C-contiguous {self.shape} {self.dtype}")


class _Binary(ImageFile):
    """Frames at ``offset + k * frame_bytes`` of a plain file (GE, raw, npy): ``readinto`` straight into ``out``."""

    def __init__(self, path: Path, fmt: str, offset: int, shape, dtype, what: str) -> None:
        super().__init__(path, fmt)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.frame_bytes = self.shape[0] * self.shape[1] * self.dtype.itemsize
        size = path.stat().st_size
        body = size - self.offset
        if self.frame_bytes <= 0 or body < self.frame_bytes or body % self.frame_bytes:
            raise IncompleteFile(
                f"{path}: {what} of {size} bytes is not a {self.offset}-byte header plus whole frames of "
                f"{self.shape[0]}x{self.shape[1]} {self.dtype} = {self.frame_bytes} bytes each")
        self.n_frames = body // self.frame_bytes
        self._fh = open(path, "rb", buffering=0)

    def _read(self, k: int, out: np.ndarray) -> None:
        self._fh.seek(self.offset + k * self.frame_bytes)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < self.frame_bytes:
            n = self._fh.readinto(view[got:])
            if not n:
                raise IncompleteFile(f"{self.path}: file truncated in frame {k} ({got} of {self.frame_bytes} "
                                     "bytes)")
            got += n

    def _close(self) -> None:
        self._fh.close()


def _open_ge(path: Path, opts: FormatOptions) -> ImageFile:
    if opts.detector_shape is None:
        raise InputError(f"{path}: reading a GE file needs the detector shape (NrPixelsZ, NrPixelsY)")
    return _Binary(path, "ge", GE_HEADER_BYTES, opts.detector_shape, "<u2", "GE file")


def _open_raw(path: Path, opts: FormatOptions) -> ImageFile:
    shape = opts.raw_shape or opts.detector_shape
    if shape is None:
        raise InputError(f"{path}: reading a raw file needs its frame shape ([source] raw_shape or the detector)")
    try:
        dtype = np.dtype(opts.raw_dtype)
    except TypeError as exc:
        raise InputError(f"{path}: raw dtype {opts.raw_dtype!r} is not a numpy dtype") from exc
    return _Binary(path, "raw", opts.raw_header, shape, dtype, f"raw {dtype} file")


def _open_npy(path: Path, opts: FormatOptions) -> ImageFile:
    from numpy.lib import format as npformat

    try:
        with open(path, "rb") as fh:
            version = npformat.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = npformat.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise IncompleteFile(f"{path}: cannot read the .npy header ({_reason(exc)})") from exc
    if dtype.hasobject or dtype.kind not in "uif":
        raise InputError(f"{path}: .npy dtype {dtype} is not an integer or float image")
    if len(shape) not in (2, 3) or fortran:
        raise InputError(f"{path}: expected a C-order 2-D image or 3-D stack, found an array of shape {shape}"
                         f"{' (Fortran order)' if fortran else ''}")
    frame = shape[-2:]
    n = 1 if len(shape) == 2 else int(shape[0])
    f = _Binary(path, "npy", offset, frame, dtype, ".npy file") if n else None
    if f is None or f.n_frames != n:
        if f is not None:
            f.close()
        raise IncompleteFile(f"{path}: .npy header says {shape} {dtype} but the file holds "
                             f"{path.stat().st_size - offset} data bytes")
    return f


class _Tiff(ImageFile):
    def __init__(self, path: Path) -> None:
        import tifffile

        super().__init__(path, "tiff")
        with _complaints("tifffile") as complaints:
            self._open(tifffile, path)
            if complaints:
                self._tif.close()
                raise IncompleteFile(f"{path}: cannot read TIFF ({complaints[0]})")

    def _open(self, tifffile, path: Path) -> None:
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # TiffFileError, ValueError, struct.error, ...
            raise IncompleteFile(f"{path}: cannot read TIFF ({_reason(exc)})") from exc
        try:
            self._pages = self._tif.pages
            self._pages.useframes = False
            self.n_frames = len(self._pages)
            size = path.stat().st_size
            first = None
            for k in range(self.n_frames):
                page = self._pages[k]
                shape = tuple(int(s) for s in page.shape)
                if len(shape) != 2:
                    raise InputError(f"{path}: page {k} is not a 2-D image (shape {shape})")
                if page.dtype is None:
                    raise InputError(f"{path}: page {k} has an unsupported sample format")
                if first is None:
                    first = (shape, np.dtype(page.dtype))
                elif (shape, np.dtype(page.dtype)) != first:
                    raise InputError(f"{path}: page {k} is {shape} {page.dtype}, page 0 is {first[0]} {first[1]}")
                ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
                if not ends or max(ends) > size:
                    raise IncompleteFile(f"{path}: TIFF page {k} needs {max(ends, default=0)} bytes, the file has "
                                         f"{size}")
            if first is None:
                raise IncompleteFile(f"{path}: TIFF holds no pages")
            self.shape, self.dtype = first[0], first[1]
        except InputError:
            self._tif.close()
            raise
        except Exception as exc:  # a page chain that points past the end: still being written, or corrupt
            self._tif.close()
            raise IncompleteFile(f"{path}: cannot read TIFF ({_reason(exc)})") from exc
        except BaseException:
            self._tif.close()
            raise

    def _read(self, k: int, out: np.ndarray) -> None:
        try:
            self._pages[k].asarray(out=out)
        except Exception as exc:
            raise IncompleteFile(f"{self.path}: cannot decode TIFF page {k} ({_reason(exc)})") from exc

    def _close(self) -> None:
        self._tif.close()


class _Cbf(ImageFile):
    """A CBF file (one image): the MIME header of its binary section is parsed here, the data checked (size,
    closing boundary, Content-MD5 when present) at open, and decoded (fabio's byte-offset decoder) when read, so that
    on copy threads several files decode at once."""

    def __init__(self, path: Path) -> None:
        try:
            from fabio.compression import decByteOffset
        except ImportError as exc:  # pragma: no cover - fabio is a dependency
            raise InputError(f"{path}: reading CBF files needs fabio: pip install fabio") from exc
        super().__init__(path, "cbf")
        self._decode = decByteOffset
        with open(path, "rb") as fh:
            raw = fh.read()
        start = raw.find(_CBF_BINARY_START)
        if start < 0:
            raise IncompleteFile(f"{path}: no CBF binary section (no binary start marker)")
        head = raw[raw.rfind(b"--CIF-BINARY-FORMAT-SECTION--", 0, start) + 1:start]
        keys = {k.decode("latin1").lower(): v.decode("latin1").strip()
                for k, v in _CBF_KEY.findall(head)}
        if "x-binary-size" not in keys:
            raise IncompleteFile(f"{path}: CBF binary section without X-Binary-Size")
        need = int(keys["x-binary-size"])
        begin = start + len(_CBF_BINARY_START)
        have = len(raw) - begin
        if have < need:
            raise IncompleteFile(f"{path}: CBF binary section has {have} of its {need} bytes")
        if raw.find(b"--CIF-BINARY-FORMAT-SECTION----", begin + need) < 0:
            raise IncompleteFile(f"{path}: CBF ends before the closing --CIF-BINARY-FORMAT-SECTION---- boundary")
        conversion = keys.get("conversions", "").strip('"').lower()
        if conversion != "x-cbf_byte_offset":
            raise InputError(f"{path}: CBF compression {conversion or '(none)'!r} is not supported "
                             "(x-CBF_BYTE_OFFSET is)")
        element = keys.get("x-binary-element-type", "").strip('"').lower()
        if element not in _CBF_TYPES:
            raise InputError(f"{path}: CBF element type {element!r} is not supported ({', '.join(_CBF_TYPES)})")
        try:
            cols = int(keys["x-binary-size-fastest-dimension"])
            rows = int(keys["x-binary-size-second-dimension"])
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path}: CBF without X-Binary-Size-Fastest/Second-Dimension") from exc
        self._stream = raw[begin:begin + need]
        md5 = keys.get("content-md5")
        if md5 and base64.b64encode(hashlib.md5(self._stream).digest()).decode("ascii") != md5:
            raise IncompleteFile(f"{path}: corrupt CBF (Content-MD5 {md5} does not match its data)")
        self.n_frames, self.shape, self.dtype = 1, (rows, cols), np.dtype(_CBF_TYPES[element])

    def _read(self, k: int, out: np.ndarray) -> None:
        n = self.shape[0] * self.shape[1]
        try:
            data = np.asarray(self._decode(self._stream, size=n, dtype="int32" if self.dtype == np.int32 else "int64"))
        except Exception as exc:
            raise IncompleteFile(f"{self.path}: cannot decode CBF ({_reason(exc)})") from exc
        if data.size != n:
            raise IncompleteFile(f"{self.path}: CBF data decodes to {data.size} pixels, expected {n}")
        np.copyto(out, data.reshape(self.shape), casting="unsafe")

    def _close(self) -> None:
        self._stream = b""


class _Hdf5(ImageFile):
    def __init__(self, path: Path, opts: FormatOptions) -> None:
        import h5py

        try:
            import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4/Blosc/... filters with HDF5)
        except ImportError:  # pragma: no cover - hdf5plugin is a dependency
            pass
        super().__init__(path, "hdf5")
        try:
            self._h5 = h5py.File(path, "r")
        except Exception as exc:
            raise IncompleteFile(f"{path}: cannot open HDF5 ({_reason(exc)})") from exc
        try:
            self._parts = self._datasets(h5py, opts.hdf5_dataset)
            first = self._parts[0]
            self.shape, self.dtype = tuple(int(s) for s in first.shape[-2:]), np.dtype(first.dtype)
            self._starts = []
            n = 0
            for ds in self._parts:
                if tuple(ds.shape[-2:]) != self.shape or np.dtype(ds.dtype) != self.dtype:
                    raise InputError(f"{path}: dataset {ds.name} is {ds.shape} {ds.dtype}, {first.name} is "
                                     f"{first.shape} {first.dtype}")
                self._starts.append(n)
                n += 1 if ds.ndim == 2 else int(ds.shape[0])
            self.n_frames = n
            self._codecs = [_chunk_codec(ds) for ds in self._parts]
            if self.dtype.kind not in "uif":
                raise InputError(f"{path}: dataset {first.name} dtype {self.dtype} is not an integer or float image")
        except BaseException:
            self._h5.close()
            raise

    def _get(self, h5py, group, name: str, where: str):
        """``group[name]``, None when there is no such link; IncompleteFile for a link whose target cannot be
        opened (an EIGER data file not written yet: h5py's ``get`` would say None)."""
        try:
            obj = group.get(name)
            if obj is None and group.get(name, getlink=True) is not None:
                link = group.get(name, getlink=True)
                target = f" -> {link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else ""
                raise IncompleteFile(f"{self.path}: {where}{target} cannot be opened (not written yet?)")
        except (KeyError, OSError) as exc:
            raise IncompleteFile(f"{self.path}: cannot open {where} ({_reason(exc)})") from exc
        return obj

    def _datasets(self, h5py, where: str) -> list:
        candidates = (where,) if where else HDF5_DATASET_PATHS
        for name in candidates:
            obj = self._get(h5py, self._h5, name, name) if name.strip("/") else self._h5
            if isinstance(obj, h5py.Dataset):
                if obj.ndim not in (2, 3):
                    raise InputError(f"{self.path}: dataset {name} has shape {obj.shape}; expected a 2-D image "
                                     "or a 3-D stack")
                return [obj]
            if isinstance(obj, h5py.Group):
                parts = []
                for key in sorted(obj.keys(), key=natural_key):
                    child = self._get(h5py, obj, key, f"{name.rstrip('/')}/{key}")
                    if isinstance(child, h5py.Dataset) and child.ndim in (2, 3):
                        parts.append(child)
                if parts:
                    return parts
            if where:
                break
        key = "[source] hdf5_dataset " + repr(where) if where else " or ".join(HDF5_DATASET_PATHS)
        raise InputError(f"{self.path}: no 2-D or 3-D image dataset at {key}")

    def read_encoded(self, k: int) -> tuple[np.ndarray, str, int, int] | None:
        """Frame ``k``'s chunk as stored (``read_direct_chunk``), when its dataset holds one frame a chunk through
        the bitshuffle-LZ4 (32008) or LZ4 (32004) filter alone (:func:`_chunk_codec`) and the filter ran on it."""
        if not 0 <= k < self.n_frames:
            raise InputError(f"{self.path}: frame {k} does not exist (the file holds {self.n_frames})")
        j = int(np.searchsorted(self._starts, k, side="right")) - 1
        codec = self._codecs[j]
        if codec is None:
            return None
        ds = self._parts[j]
        where = (k - self._starts[j], 0, 0) if ds.ndim == 3 else (0, 0)
        with self._lock:
            if self.closed:
                raise InputError(f"{self.path}: cannot read frame {k}: the file was closed")
            try:
                mask, chunk = ds.id.read_direct_chunk(where)
            except Exception as exc:
                raise IncompleteFile(f"{self.path}: cannot read the chunk of frame {k} of {ds.name} "
                                     f"({_reason(exc)})") from exc
        if mask:  # the filter was skipped for this chunk (stored raw): decode as usual
            return None
        payload = np.frombuffer(chunk, np.uint8)
        try:
            name, header, block = framing_of(codec, payload, self.shape[0] * self.shape[1] * self.dtype.itemsize)
        except CodecError:
            return None  # not the framing expected: read_into decodes it (or says why it cannot)
        return payload, name, header, block

    def _read(self, k: int, out: np.ndarray) -> None:
        j = int(np.searchsorted(self._starts, k, side="right")) - 1
        ds = self._parts[j]
        try:
            if ds.ndim == 2:
                ds.read_direct(out)
            else:
                ds.read_direct(out, np.s_[k - self._starts[j]])
        except Exception as exc:
            raise IncompleteFile(f"{self.path}: cannot read frame {k} of {ds.name} ({_reason(exc)})") from exc

    def _close(self) -> None:
        self._parts = []
        self._h5.close()


#: HDF5 filter ids of the compressions whose chunks travel compressed, and the name a source gives them
_KEPT_FILTERS = {32008: "bslz4", 32004: "lz4hdf5"}


def _chunk_codec(ds) -> str | None:
    """``"bslz4"`` / ``"lz4hdf5"`` when every chunk of ``ds`` is one whole frame stored through the bitshuffle-LZ4
    filter (32008 with LZ4: its 5th parameter 2) or the LZ4 filter (32004) alone; else None."""
    chunks = ds.chunks
    if chunks is None or tuple(chunks[-2:]) != tuple(ds.shape[-2:]) or (ds.ndim == 3 and chunks[0] != 1):
        return None
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    code, _flags, values, _name = plist.get_filter(0)
    if code == 32008 and (len(values) < 5 or values[4] != 2):
        return None  # bitshuffle alone, or with zstd
    return _KEPT_FILTERS.get(code)


def open_image(path: str | os.PathLike, options: FormatOptions | None = None) -> ImageFile:
    """Open and validate the image file ``path`` (see the module docstring); the caller closes it.

    Raises :class:`IncompleteFile` for short or unparsable data, :class:`~ringstream.errors.InputError` for
    anything else (unsupported extension, no image dataset, mixed frame shapes).
    """
    path = Path(path)
    opts = options or FormatOptions()
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    fmt = format_of(path)
    if fmt is None:
        raise InputError(f"{path}: unsupported image file extension '{path.suffix}'; supported: "
                         f"{' '.join(FORMAT_EXTS)}")
    try:
        if fmt == "tiff":
            f: ImageFile = _Tiff(path)
        elif fmt == "cbf":
            f = _Cbf(path)
        elif fmt == "ge":
            f = _open_ge(path, opts)
        elif fmt == "hdf5":
            f = _Hdf5(path, opts)
        elif fmt == "raw":
            f = _open_raw(path, opts)
        else:
            f = _open_npy(path, opts)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such image file") from exc
    except OSError as exc:
        raise IncompleteFile(f"{path}: cannot read ({_reason(exc)})") from exc
    if f.n_frames < 1:
        f.close()
        raise IncompleteFile(f"{path}: the file holds no frames")
    return f


def normalize_extensions(exts) -> tuple[str, ...]:
    """``["tif", ".CBF", "h5,nxs"]`` -> ``(".tif", ".cbf", ".h5", ".nxs")``; ConfigError for an unsupported one."""
    out: list[str] = []
    for item in exts or ():
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            ext = part if part.startswith(".") else "." + part
            if ext not in FORMAT_EXTS:
                raise ConfigError(f"[source] extensions: {part!r} is not a supported image extension; supported: "
                                  f"{' '.join(FORMAT_EXTS)}")
            out.append(ext)
    return tuple(dict.fromkeys(out))


def parse_shape(text: str) -> tuple[int, int] | None:
    """``"2048x2048"`` (NrPixelsZ x NrPixelsY) -> (2048, 2048); ``""`` -> None; ConfigError otherwise."""
    text = str(text).strip().lower()
    if not text:
        return None
    parts = text.replace("*", "x").replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise ConfigError(f"[source] raw_shape: expected ROWSxCOLS (NrPixelsZ x NrPixelsY), e.g. 2048x2048, "
                          f"got {text!r}")
    return shape  # type: ignore[return-value]

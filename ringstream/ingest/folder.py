"""The folder source: images already in a folder first, in natural order, then new ones as they complete.

Order: files present at the start, sorted naturally by their path under the folder (``img_9`` before ``img_10``),
then new files in the order they complete. A file is complete when

- inotify (Linux; ``watch = "auto"`` or ``"inotify"``) reports ``IN_CLOSE_WRITE`` (its writer closed it) or
  ``IN_MOVED_TO`` (it was renamed into the folder); ``IN_CREATE`` is never taken as complete (it is used only to
  watch new subfolders with ``recursive``). A queue overflow triggers a rescan;
- polling (``watch = "poll"``, for network file systems where inotify sees nothing, or where inotify is missing):
  its size and mtime are unchanged over one ``poll_interval`` and it parses.

A file present at the start whose mtime is younger than ``poll_interval`` may still be open for writing: it waits
for its close event or for a stable size, like a polled file. Names starting with ``.`` and extensions outside
``extensions`` (default: every format of :mod:`ringstream.images.formats`) are ignored.

Every file is validated by :func:`~ringstream.images.formats.open_image` before any of its frames is sent. A file that is short or
does not parse is retried (on its next event and every ``poll_interval``) until ``retry_time`` seconds have passed
since its first failure or its last change of size or mtime, then skipped: one warning naming the file and the
reason, counted ``dropped_corrupt_file``. A file whose images are not the detector's shape is rejected at once: a
warning with the expected and found shapes, ``dropped_wrong_shape``. Neither stops the source.

A path is processed at most once per run: a file replaced (by a rename or a rewrite) after it was read is ignored
(the key is the path alone, so a replacement never yields a second copy of an image); with inotify the replacement
is logged and counted ``files_repeated``, polling does not look at a file again once it was read. A watched folder that is removed (or unmounted) ends the run, with a
warning.

Frames: ``fill`` frames, so pixels go straight from the file into the ring slot, except the frames of an HDF5
dataset stored one frame a chunk through the bitshuffle-LZ4 or LZ4 filter: their chunks are read as stored
(``read_direct_chunk``) and travel compressed (the workers decode them); source id: the file's path under
the folder, with ``:k`` for frame k of a multi-frame file; timestamp: the file's mtime; metadata ``file``, ``frame``.
The source is pausable (with a full ring the files simply wait) and resumable: a replacement ingest
(``ringstream.ingest.resume``) gives it the last source id the dead ingest announced of each file
(:meth:`FolderSource.resume`): a file all of whose frames were announced is done, a file announced in part goes on
with its next frame; and
:meth:`FolderSource.frame_again` reads one announced frame again from its file. It ends after ``count`` files (``[source]
file_count``: processed, rejected or skipped), after ``frames`` frames, after ``idle_timeout`` s without a new
file, or never (a service). With ``file`` set it reads that one file and ends. The run's own output files are never
read, should they be written into the folder.

Counters (in the ingest's heartbeat, so in ``ringstream status``): ``files_done``, ``files_repeated``,
``files_waiting``, ``files_retrying``, ``dropped_corrupt_file``, ``dropped_wrong_shape``, ``watch_overflows``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..images.formats import (
    FORMAT_EXTS,
    FormatOptions,
    ImageFile,
    IncompleteFile,
    format_of,
    natural_key,
    normalize_extensions,
    open_image,
    parse_shape,
)
from .source_base import IDLE, SourceFrame, StopFlag, split_frame_id, stopped

log = logging.getLogger("ringstream.ingest.folder")

#: longest time frames() blocks before it yields IDLE (an idle tick: the ingest beats its heartbeat), in s
IDLE_TICK_S = 0.1

WATCH_MODES = ("auto", "inotify", "poll")


@dataclass(frozen=True)
class FolderOptions:
    """What to watch and when to stop (the [source] keys of the same names; times in seconds)."""

    folder: str = ""
    file: str = ""
    extensions: tuple[str, ...] = ()
    recursive: bool = False
    count: int = 0
    frames: int = 0
    idle_timeout: float = 0.0
    watch: str = "auto"
    poll_interval: float = 1.0
    retry_time: float = 10.0
    exclude: tuple[str, ...] = ()  # paths never read: the run's own output files, when they are in the folder


@dataclass
class _Waiting:
    """A file seen but not yet read: the last (size, mtime_ns) seen, and when it first failed to parse."""

    stat: tuple[int, int] | None = None
    failed_since: float | None = None
    reason: str = ""
    ready: bool = False  # complete by an event (or old enough at the start): no stable-size check needed


@dataclass
class _State:
    done: set[str] = field(default_factory=set)
    queue: deque = field(default_factory=deque)  # paths complete, to read in order
    waiting: dict[str, _Waiting] = field(default_factory=dict)


class _Inotify:
    """inotify watches on the folder (and its subfolders when recursive): complete files and new subfolders."""

    def __init__(self, root: Path, recursive: bool) -> None:
        import inotify_simple as ino

        self.ino = ino
        self.flags = ino.flags
        self.fd = ino.INotify()
        self.recursive = recursive
        self.dirs: dict[int, Path] = {}
        try:
            self.add(root, strict=True)  # the root must be watched (no permission, watch limit: OSError)
        except OSError:
            self.fd.close()
            raise
        self.root_wd = next(iter(self.dirs))

    def add(self, folder: Path, strict: bool = False) -> list[Path]:
        """Watch ``folder`` (and, recursive, its subfolders); returns the folders now watched. A folder that
        cannot be watched is logged and left out, or, ``strict``, the top one raises OSError."""
        mask = self.flags.CLOSE_WRITE | self.flags.MOVED_TO
        if self.recursive:
            mask |= self.flags.CREATE  # only to watch new subfolders: a created file is not complete
        added = []
        todo = [folder]
        while todo:
            d = todo.pop()
            try:
                wd = self.fd.add_watch(str(d), mask)
            except OSError as exc:
                if strict and d == folder:
                    raise
                log.warning("%s: cannot watch this folder (%s)", d, exc.strerror or exc)
                continue
            self.dirs[wd] = d
            added.append(d)
            if self.recursive:
                try:
                    todo.extend(Path(e.path) for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
                except OSError:
                    pass
        return added

    def read(self, timeout_s: float) -> tuple[list[Path], list[Path], bool, bool]:
        """(complete files, new folders, overflowed, root gone) from the events of up to ``timeout_s``."""
        files, folders, overflow, gone = [], [], False, False
        for ev in self.fd.read(timeout=int(timeout_s * 1000)):
            if ev.mask & self.flags.Q_OVERFLOW:
                overflow = True
                continue
            base = self.dirs.get(ev.wd)
            if base is None or not ev.name:
                if ev.mask & self.flags.IGNORED:  # the folder was removed (or unmounted)
                    self.dirs.pop(ev.wd, None)
                    gone = gone or ev.wd == self.root_wd
                continue
            path = base / ev.name
            if ev.mask & self.flags.ISDIR:
                if self.recursive and ev.mask & (self.flags.CREATE | self.flags.MOVED_TO):
                    folders.append(path)
            elif ev.mask & (self.flags.CLOSE_WRITE | self.flags.MOVED_TO):
                files.append(path)
        return files, folders, overflow, gone

    def close(self) -> None:
        self.fd.close()


class FolderSource:
    """Frames of the image files in a folder (see the module docstring)."""

    name = "folder"
    pausable = True
    resumable = True
    keeps_compressed = True  # the bslz4 / lz4 chunks of HDF5 files travel as stored

    def __init__(self, options: FolderOptions, formats: FormatOptions, shape: tuple[int, int],
                 dtype: str = "int32", rate: float = 0.0) -> None:
        self.opts = options
        self.formats = formats
        self.shape = (int(shape[0]), int(shape[1]))
        self.rate = float(rate or 0.0)
        self.extensions = normalize_extensions(options.extensions) or FORMAT_EXTS
        if options.watch not in WATCH_MODES:
            raise ConfigError(f"[source] watch: expected one of {', '.join(WATCH_MODES)}, got {options.watch!r}")
        self.counts: dict[str, int] = {"files_done": 0, "files_repeated": 0, "dropped_corrupt_file": 0,
                                       "dropped_wrong_shape": 0, "watch_overflows": 0}
        self._state = _State()
        self._watch: _Inotify | None = None
        self._last_reason = ""
        self._exclude = {os.path.normpath(os.path.abspath(p)) for p in options.exclude}
        self._open_files: set[_OpenFile] = set()
        self._resumed: dict[str, int] = {}  # path under the folder -> frames a dead ingest announced of it
        self._resumed_frames = 0
        if options.file:
            self.root = Path(options.file).parent
            path = Path(options.file)
            if not path.is_file():
                raise InputError(f"{path}: no such image file ([source] file)")
            if format_of(path) is None:
                raise InputError(f"{path}: unsupported image file extension '{path.suffix}'; supported: "
                                 f"{' '.join(FORMAT_EXTS)}")
            first: Path | None = path
        else:
            self.root = Path(options.folder)
            if not self.root.is_dir():
                raise InputError(f"{self.root}: no such folder ([source] folder)")
            first = self._start()
        self.dtype = self._slot_dtype(first, dtype)

    @classmethod
    def from_config(cls, config, params) -> FolderSource:
        """The source of ``config.source`` (kind ``folder``) for the detector of ``params``."""
        s = config.source
        raw_shape = parse_shape(s.raw_shape)
        opts = FolderOptions(
            folder=s.folder, file=s.file, extensions=s.extensions, recursive=s.recursive, count=s.file_count,
            frames=s.frames, idle_timeout=s.idle_timeout, watch=s.watch, poll_interval=s.poll_interval,
            retry_time=s.retry_time, exclude=tuple(str(p) for p in (config.run.output_h5, config.run.zarr_output) if p))
        shape = (int(params.NrPixelsZ), int(params.NrPixelsY))
        fmt = FormatOptions(detector_shape=shape, hdf5_dataset=s.hdf5_dataset, raw_dtype=s.raw_dtype,
                            raw_shape=raw_shape, raw_header=s.raw_header)
        return cls(opts, fmt, shape, dtype=s.dtype, rate=float(s.rate))

    def _slot_dtype(self, first: Path | None, configured: str) -> np.dtype:
        """The ring's pixel type: the larger of the first file's type and ``configured`` (so a later file of a
        wider type still fits a slot)."""
        candidates = [np.dtype(configured)]
        if first is not None:
            try:
                with open_image(first, self.formats) as f:
                    candidates.append(f.dtype)
            except Exception:  # noqa: BLE001 - reported when the file's turn comes
                pass
        return max(candidates, key=lambda d: d.itemsize)

    # ------------------------------------------------------------------------------------------------ files
    def _wanted(self, path: Path) -> bool:
        return (not path.name.startswith(".") and path.suffix.lower() in self.extensions
                and self._key(path) not in self._exclude)

    def _key(self, path: Path) -> str:
        return os.path.normpath(os.path.abspath(path))

    def _rel(self, path: Path) -> str:
        try:
            return os.path.relpath(path, self.root)
        except ValueError:
            return str(path)

    def _sorted(self, paths) -> list[Path]:
        return sorted(paths, key=lambda p: natural_key(self._rel(p)))

    def _listing(self, folder: Path | None = None, sort: bool = True) -> list[Path]:
        """Image files under ``folder`` (default the root), naturally sorted by path under the root."""
        folder = folder or self.root
        found: list[Path] = []
        if self.opts.recursive:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found.extend(Path(dirpath) / n for n in filenames)
        else:
            try:
                found = [Path(e.path) for e in os.scandir(folder) if e.is_file()]
            except OSError as exc:
                log.warning("%s: cannot list this folder (%s)", folder, exc.strerror or exc)
        found = [p for p in found if self._wanted(p)]
        return self._sorted(found) if sort else found

    def _stat(self, path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _seen(self, path: Path, complete: bool) -> None:
        """A file listed or reported: queue it (complete) or let it wait for a stable size."""
        st, key = self._state, self._key(path)
        if key in st.done:
            if complete:
                self.counts["files_repeated"] += 1
                log.info("%s: already processed in this run; the new version is ignored", self._rel(path))
            return
        w = st.waiting.get(key)
        if w is None:
            w = st.waiting[key] = _Waiting()
        if complete and not w.ready:
            w.ready = True
            if w.failed_since is None:
                st.queue.append(path)

    # ------------------------------------------------------------------------------------------------ frames
    def frames(self, stop: StopFlag | None = None) -> Iterator[SourceFrame]:
        """Frames in the order of the module docstring; :data:`~.source_base.IDLE` while waiting (at least every 0.1 s),
        so that the ingest keeps reading releases and beating its heartbeat."""
        if self.opts.file:
            yield from self._one_file(Path(self.opts.file), stop)
            return
        yield from self._watch_folder(stop)

    def _one_file(self, path: Path, stop: StopFlag | None) -> Iterator[SourceFrame]:
        deadline = None
        while not stopped(stop):
            result = self._try(path)
            if result is None:  # IncompleteFile: retry
                now = time.monotonic()
                deadline = deadline or now + self.opts.retry_time
                if now >= deadline:
                    self._skip(path)
                    return
                yield IDLE
                time.sleep(min(self.opts.poll_interval, IDLE_TICK_S))
                continue
            if result is not False:
                yield from self._emit(path, result, stop, n_sent=0, first=self._resumed.pop(self._rel(path), 0))
            return

    def _start(self) -> Path | None:
        """Watch the folder (inotify, else polling), then take stock of the files already there (after the watch
        is set up, so that nothing falls in between): old ones are queued in natural order, young ones wait.
        Runs before the ingest reports ready, so a large folder does not hold up its heartbeat. Returns the first
        file (None: none yet)."""
        opts = self.opts
        if opts.watch in ("auto", "inotify"):
            try:
                self._watch = _Inotify(self.root, opts.recursive)
            except (ImportError, OSError) as exc:
                if opts.watch == "inotify":
                    raise InputError(f"{self.root}: cannot watch with inotify ({exc}); use [source] watch = "
                                     "'poll'") from exc
                log.warning("%s: inotify unavailable (%s); polling every %g s", self.root, exc, opts.poll_interval)
        log.info("folder %s: %s, extensions %s%s", self.root, "inotify" if self._watch else "polling",
                 " ".join(self.extensions), ", recursive" if opts.recursive else "")
        settle_ns = int(opts.poll_interval * 1e9)
        now_ns = time.time_ns()
        listing = self._listing()
        for path in listing:
            stat = self._stat(path)
            old = stat is not None and now_ns - stat[1] >= settle_ns
            self._seen(path, complete=old)
        return listing[0] if listing else None

    def _watch_folder(self, stop: StopFlag | None) -> Iterator[SourceFrame]:
        opts, st = self.opts, self._state
        poll = self._watch is None
        sent = self._resumed_frames
        last_new = time.monotonic()
        next_tick = time.monotonic() + opts.poll_interval
        while not stopped(stop):
            if opts.count and len(st.done) >= opts.count:  # files processed, rejected or skipped
                return
            if st.queue:
                path = st.queue.popleft()
                key = self._key(path)
                w = st.waiting.get(key)
                if key in st.done or w is None:
                    continue
                result = self._try(path)
                if result is None:
                    if w.failed_since is None:
                        w.failed_since = time.monotonic()
                    yield IDLE  # a long run of bad files must not starve the ingest's heartbeat
                    continue
                del st.waiting[key]
                st.done.add(key)
                last_new = time.monotonic()
                if result is not False:
                    emit = self._emit(path, result, stop, sent, self._resumed.pop(self._rel(path), 0))
                    try:
                        for frame in emit:
                            sent += 1
                            yield frame
                            if opts.frames and sent >= opts.frames:
                                return
                    finally:
                        emit.close()
                else:
                    yield IDLE
                continue
            now = time.monotonic()
            if opts.idle_timeout and now - last_new >= opts.idle_timeout and not st.waiting:
                log.info("folder %s: no new file for %g s; ending", self.root, opts.idle_timeout)
                return
            if self._watch is not None:
                files, folders, overflow, gone = self._watch.read(min(IDLE_TICK_S, max(0.0, next_tick - now)))
                if gone:
                    log.warning("folder %s was removed or unmounted; ending the run", self.root)
                    return
                for path in files:
                    if self._wanted(path):
                        self._seen(path, complete=True)
                        last_new = time.monotonic()
                for folder in folders:
                    for d in self._watch.add(folder):
                        for path in self._listing(d) if d == folder else ():
                            self._seen(path, complete=False)
                if overflow:
                    self.counts["watch_overflows"] += 1
                    log.warning("folder %s: inotify queue overflowed; rescanning", self.root)
                    for path in self._listing():
                        self._seen(path, complete=False)
            else:
                time.sleep(min(IDLE_TICK_S, max(0.0, next_tick - now)))
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + opts.poll_interval
                if poll:  # new files of this scan, in natural order (sorting only those: folders grow large)
                    new = [p for p in self._listing(sort=False)
                           if self._key(p) not in st.done and self._key(p) not in st.waiting]
                    for path in self._sorted(new):
                        self._seen(path, complete=False)
                        last_new = time.monotonic()
                self._check_waiting()
            yield IDLE  # an idle tick (also while files are retried): the ingest beats its heartbeat

    def _check_waiting(self) -> None:
        """Every poll_interval: files with a stable size (and files that failed to parse) are tried again;
        those failing for longer than retry_time are skipped."""
        st, now = self._state, time.monotonic()
        for key, w in list(st.waiting.items()):
            path = Path(key)
            stat = self._stat(path)
            if stat is None:  # gone before it completed (a temporary file renamed away)
                del st.waiting[key]
                continue
            if w.failed_since is not None:
                if w.stat is not None and stat != w.stat:
                    w.failed_since = now  # still growing: the retry time counts from its last change
                if now - w.failed_since >= self.opts.retry_time:
                    del st.waiting[key]
                    st.done.add(key)
                    self._skip(path, w.reason)
                elif path not in st.queue:
                    st.queue.append(path)
            elif not w.ready and stat == w.stat and stat[0] > 0:
                w.ready = True
                st.queue.append(path)
            w.stat = stat

    def _try(self, path: Path):
        """The open ImageFile; None when incomplete (to retry); False when rejected for good (counted)."""
        try:
            f = open_image(path, self.formats)
        except IncompleteFile as exc:
            return self._incomplete(path, str(exc))
        except InputError as exc:
            self.counts["dropped_corrupt_file"] += 1
            log.warning("%s; skipped", exc)
            return False
        except Exception as exc:  # an unexpected library error: retried like a corrupt file, never fatal
            return self._incomplete(path, f"{path}: cannot read ({type(exc).__name__}: {exc})")
        if f.shape != self.shape:
            f.close()
            self.counts["dropped_wrong_shape"] += 1
            log.warning("%s: image shape %s does not match the detector (NrPixelsZ, NrPixelsY) = %s; %d frame(s) "
                        "rejected", path, f.shape, self.shape, f.n_frames)
            return False
        return f

    def _incomplete(self, path: Path, reason: str) -> None:
        w = self._state.waiting.get(self._key(path))
        if w is not None:
            w.reason = reason
        self._last_reason = reason
        log.debug("%s", reason)
        return None

    def _skip(self, path: Path, reason: str = "") -> None:
        self.counts["dropped_corrupt_file"] += 1
        reason = reason or self._last_reason or f"{path}: unreadable"
        log.warning("%s; skipped after retrying for %g s", reason, self.opts.retry_time)

    def _emit(self, path: Path, f: ImageFile, stop: StopFlag | None, n_sent: int,
              first: int = 0) -> Iterator[SourceFrame]:
        """The frames ``first ..`` of the open file ``f`` as fill frames. The file is closed once every frame
        yielded has been filled (the ingest may fill on copy threads after this generator has moved on), or at
        :meth:`close`."""
        rel = self._rel(path)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = time.time()
        handle = _OpenFile(f, self._open_files)
        try:
            for k in range(first, f.n_frames):
                if stopped(stop) or (self.opts.frames and n_sent + k - first >= self.opts.frames):
                    return
                encoded = _encoded(f, k)
                if encoded is not None:  # stored compressed (an HDF5 chunk): it travels so, the workers decode
                    payload, codec, header, block = encoded
                    yield SourceFrame(payload, f.frame_id(k, rel), mtime, {"file": rel, "frame": k}, shape=f.shape,
                                      dtype=f.dtype, codec=codec, codec_header=header, codec_block=block)
                    continue
                handle.expect()
                yield SourceFrame(None, f.frame_id(k, rel), mtime, {"file": rel, "frame": k},
                                  fill=_Fill(handle, k), shape=f.shape, dtype=f.dtype)
            self.counts["files_done"] += 1
        finally:
            handle.all_yielded()

    def resume(self, last_ids: list[str], announced: int) -> None:
        """Before :meth:`frames`: an ingest that died announced ``announced`` frames, the last of each file
        ``last_ids``; the files go on after them (the module docstring)."""
        for sid in last_ids:
            rel, k = split_frame_id(sid)
            self._resumed[rel] = max(self._resumed.get(rel, 0), k + 1)
        self._resumed_frames = int(announced)

    def frame_again(self, source_id: str) -> SourceFrame | None:
        """The frame ``source_id`` (announced before) read again from its file as a fill frame; None (logged)
        when the file cannot be read any more or no longer holds that frame."""
        rel, k = split_frame_id(source_id)
        path = self.root / rel
        try:
            f = open_image(path, self.formats)
        except Exception as exc:  # noqa: BLE001 - the frame is then lost, and counted by the ingest
            log.warning("%s: cannot read frame %d again (%s)", rel, k, exc)
            return None
        if f.shape != self.shape or k >= f.n_frames:
            log.warning("%s: no frame %d of shape %s any more", rel, k, self.shape)
            f.close()
            return None
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = time.time()
        handle = _OpenFile(f, self._open_files)
        handle.expect()
        handle.all_yielded()  # closed once filled
        return SourceFrame(None, source_id, mtime, {"file": rel, "frame": k}, fill=_Fill(handle, k), shape=f.shape,
                           dtype=f.dtype)

    def counters(self) -> dict[str, int]:
        """The source's counters (module docstring)."""
        st = self._state
        retrying = sum(1 for w in st.waiting.values() if w.failed_since is not None)
        return {**self.counts, "files_waiting": len(st.waiting) - retrying, "files_retrying": retrying}

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for handle in list(self._open_files):
            handle.f.close()
        self._open_files.clear()


class _OpenFile:
    """An open file and the fills still to come: closed when the generator is done with it and every frame it
    yielded has been filled (or failed). ``registry``: the source's set of open files (closed at its close)."""

    def __init__(self, f: ImageFile, registry: set) -> None:
        self.f, self.registry = f, registry
        self.pending = 0  # frames yielded and not yet filled
        self.yielded_all = False
        self.lock = threading.Lock()
        registry.add(self)

    def expect(self) -> None:
        with self.lock:
            self.pending += 1

    def filled(self) -> None:
        with self.lock:
            self.pending -= 1
            last = self.yielded_all and self.pending <= 0
        if last:
            self._close()

    def all_yielded(self) -> None:
        with self.lock:
            self.yielded_all = True
            last = self.pending <= 0
        if last:
            self._close()

    def _close(self) -> None:
        self.f.close()
        self.registry.discard(self)


def _encoded(f: ImageFile, k: int):
    """``f.read_encoded(k)``, or None when it cannot be read so (the fill then reads it, or says why it cannot)."""
    try:
        return f.read_encoded(k)
    except InputError:
        return None


class _Fill:
    """``fill(out)`` for frame ``k`` of an open file (a callable the ingest calls with the ring slot, possibly on a
    copy thread)."""

    __slots__ = ("handle", "k")

    def __init__(self, handle: _OpenFile, k: int) -> None:
        self.handle, self.k = handle, k

    def __call__(self, out: np.ndarray) -> None:
        try:
            self.handle.f.read_into(self.k, out)
        finally:
            self.handle.filled()

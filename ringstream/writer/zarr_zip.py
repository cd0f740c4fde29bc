"""The GSAS-II ``NAME.zarr.zip`` (docs/MIDAS-FORMATS.md section 7), grown in place at each publication.

Layout (zarr format 2 in an uncompressed ZIP; the arrays Blosc-compressed, LZ4 with bit shuffle)::

    REtaMap                              float64 (5, n_r, n_eta): R px, 2θ deg, η deg, bin area px², Q 1/Å
    OmegaSumFrame/LastFrameNumber_<k>    float32 or float64 (``cake_dtype``) (n_r, n_eta): the sum of a group's
                                         normalised cakes (summed in float64, rounded once), attrs
                                         "Number Of Frames Summed", "LastFrameNumber", "FirstOme", "LastOme" (deg),
                                         and in a precision-bounded run "cake_noise_fraction", "precision"
    InstrumentParameters/{Lam, Polariz, SH_L, U, V, W, X, Y, Z, Distance}   float64 (1,), uncompressed; Distance
                                         in µm; no ``Lam`` when the wavelength is unknown (GSAS-II has its default)

``k`` is zero-padded (``name_digits``) so string order is numeric order. No NaN anywhere: an empty bin is 0 with
area 0, an unknown wavelength gives Q = 0 (:func:`instrument_parameters`).

How it is written: zarr 3 (``zarr_format=2``) builds the fixed part (root, REtaMap, InstrumentParameters, the
OmegaSumFrame group) and the first group's array in a private folder beside the output. Every later group has
the same array metadata, so its members are that ``.zarray`` text, its own ``.zattrs`` (written as zarr writes
them) and its chunk, compressed here with the codec named in the ``.zarray`` (:func:`~.storage.zarr_compressor`):
byte for byte what zarr would write (zarr's own array creation, once per group, cannot keep up with
``OmegaSumFrames 1`` at streaming frame rates). A ZIP member is written once.

Publishing (:meth:`ZarrZipSink.publish`, at save intervals and at the end): the first publication writes the
fixed part and the groups so far under a private name and renames it over the output; every later one writes the
new groups' members into a hole below the end of that file, then the new central directory, and cuts the file after
it (:class:`~ringstream.writer.zip_append.GrowingZip`, whose docstring says what a reader and a killed writer see).
Nothing is copied: a publication costs its new members plus the directory (~90 bytes a member). The hole takes no
disk blocks, and the last publication leaves none: the finished file is as compact as a ZIP written at once. A save
interval whose new members are fewer bytes than the directory does not publish (counted in ``skipped``; its groups
wait, in memory, for the next one), so the directory never takes more than half of what is written; nor does one
that comes while the previous publication is still being written (in a background thread). The end of the run
always publishes. A publication that fails (a full disk) leaves the published ZIP as it was and keeps its groups for
the next one, which raises the error again if it fails too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExists
from .storage import Chunks, cake_dtype, precision_note, stored, zarr_compressor
from .zip_append import GrowingZip, data_size

log = logging.getLogger(__name__)

#: write every chunk, even one equal to the fill value (a zero X, Y, Z or an empty group still has its member)
_EVERY_CHUNK = {"write_empty_chunks": True}

#: GSAS-II instrument parameter -> (parameter-file key, default) (MIDAS integrator_stream_process_h5 defaults;
#: ``Lam`` has none: an unknown wavelength is left out, GSAS-II then uses its own)
INSTRUMENT_KEYS: dict[str, tuple[str, float | None]] = {
    "Lam": ("Wavelength", None),
    "Polariz": ("Polariz", 0.99),
    "SH_L": ("SHpL", 0.002),
    "U": ("U", 1.163),
    "V": ("V", -0.126),
    "W": ("W", 0.063),
    "X": ("X", 0.0),
    "Y": ("Y", 0.0),
    "Z": ("Z", 0.0),
    "Distance": ("Lsd", 1_000_000.0),
}


#: the attributes of each OmegaSumFrame array of a precision-bounded run (none in a lossless one): the
#: ``[output] cake_noise_fraction`` and what it means (:func:`~.storage.precision_note`)
PRECISION_ATTRS = ("cake_noise_fraction", "precision")


def instrument_parameters(params: Any) -> dict[str, float]:
    """The InstrumentParameters values from the parameter file; a missing or non-finite value takes the MIDAS
    default, except ``Lam``: an unknown wavelength (``Wavelength`` missing, 0 or not a positive number) writes no
    ``Lam`` (said once in the log, at INFO) rather than a made-up one."""
    out = {}
    for name, (key, default) in INSTRUMENT_KEYS.items():
        try:
            value = float(getattr(params, key, default))
        except (TypeError, ValueError):
            value = default
        if default is None:  # (the wavelength)
            if value is not None and np.isfinite(value) and value > 0:
                out[name] = value
            else:
                log.info("zarr.zip: the wavelength is unknown (%s %s): InstrumentParameters has no %s (GSAS-II "
                         "uses its own default)", key, getattr(params, key, "not set"), name)
            continue
        out[name] = value if value is not None and np.isfinite(value) else default
    return out


def reta_map(r_px: np.ndarray, two_theta: np.ndarray, eta: np.ndarray, area: np.ndarray,
             q: np.ndarray | None) -> np.ndarray:
    """REtaMap float64 ``(5, n_r, n_eta)`` from bin centres ``[n_r]``, ``[n_r]``, ``[n_eta]``, the bin areas
    ``[n_r, n_eta]`` and Q ``[n_r]`` (None or NaN: 0); NaN anywhere becomes 0."""
    nr, ne = np.shape(area)
    out = np.zeros((5, nr, ne), dtype=np.float64)
    out[0] = np.asarray(r_px, dtype=np.float64)[:, None]
    out[1] = np.asarray(two_theta, dtype=np.float64)[:, None]
    out[2] = np.asarray(eta, dtype=np.float64)[None, :]
    out[3] = area
    if q is not None:
        out[4] = np.asarray(q, dtype=np.float64)[:, None]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def group_attrs(group: Any) -> dict[str, Any]:
    """The four attributes GSAS-II reads from an OmegaSumFrame array."""
    return {"Number Of Frames Summed": int(group.n_frames), "LastFrameNumber": int(group.last_frame),
            "FirstOme": float(group.first_omega), "LastOme": float(group.last_omega)}


def _size_hint(data: Any) -> int:
    """The bytes of a member's data, or about them for a :class:`~.storage.Chunks` whose zarr chunk is not made
    yet (its HDF5 chunk's, the same LZ4 blocks)."""
    return data.size_hint() if type(data) is Chunks else data_size(data)


def _resolved(members: list[tuple[str, Any]]) -> list[tuple[str, bytes | memoryview | list]]:
    """``members`` with each chunk compressed in the background (:class:`~.storage.Chunks`) replaced by its bytes,
    or by the pieces of them its HDF5 chunk gives (:meth:`~.storage.Chunks.zarr_member`)."""
    return [(name, data.zarr_member() if type(data) is Chunks else data) for name, data in members]


class ZarrZipSink:
    """Collect omega-sum groups and publish ``path`` (see the module docstring).

    ``remap`` is the REtaMap ``(5, n_r, n_eta)``, ``instrument`` the InstrumentParameters (:func:`instrument_parameters`),
    ``name_digits`` the zero-padding of group names, ``dtype`` the stored dtype of the sums (``"float32"`` or
    ``"float64"``: :data:`~.storage.CAKE_DTYPES`), ``noise_fraction`` the ``[output] cake_noise_fraction`` the sums
    were rounded with (added groups come rounded; > 0: each array's attributes say so, :data:`PRECISION_ATTRS`).
    """

    #: when the file grows (its hole cannot take a publication), the new hole takes what this publication adds and
    #: RESERVE_FACTOR times that more (or a quarter of the file, if more: GrowingZip.GROWTH)
    RESERVE_FACTOR = 1
    #: a save interval publishes when its new members are at least this many times the directory it writes
    NEW_PER_DIRECTORY = 1.0

    def __init__(self, path: str | os.PathLike, remap: np.ndarray, instrument: dict[str, float],
                 name_digits: int, overwrite: bool = True, dtype: str = "float32",
                 noise_fraction: float = 0.0) -> None:
        try:
            import zarr
            from zarr.storage import LocalStore
        except ImportError as exc:  # pragma: no cover - a dependency
            raise InputError(f"{path}: writing zarr.zip needs zarr >= 3 (pip install 'zarr>=3')") from exc
        self.path = Path(path)
        if not self.path.name.endswith(".zarr.zip"):
            raise InputError(f"{self.path}: a GSAS-II zarr file name must end in .zarr.zip")
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: output folder {self.path.parent} does not exist")
        if self.path.exists() and not overwrite:
            raise OutputExists(self.path)
        self.digits = int(name_digits)
        self.shape = tuple(remap.shape[1:])
        self.dtype = cake_dtype(dtype)
        self._precision = {PRECISION_ATTRS[0]: float(noise_fraction),
                           PRECISION_ATTRS[1]: precision_note(noise_fraction)} if noise_fraction else {}
        self._codec = zarr_compressor()
        self._remove_leftovers()
        self._zarr = zarr
        self._work = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._store = self._work / "store"
        root = zarr.open_group(LocalStore(str(self._store)), mode="w", zarr_format=2)
        a = root.create_array("REtaMap", shape=remap.shape, dtype="float64", chunks=remap.shape,
                              compressors=self._codec, fill_value=0.0, config=_EVERY_CHUNK)
        a[...] = remap
        ip = root.create_group("InstrumentParameters")
        for name, value in instrument.items():
            arr = ip.create_array(name, shape=(1,), dtype="float64", chunks=(1,), compressors=None, fill_value=0.0,
                                  config=_EVERY_CHUNK)
            arr[...] = np.array([value], dtype=np.float64)
        self._groups = root.create_group("OmegaSumFrame")
        self._template: bytes | None = None  # the .zarray text of a group array
        self._indent = zarr.config.get("json_indent")
        self._pending: list[tuple[str, Any]] = []  # members not yet in a published ZIP (data: zip_append.Member)
        self._first: list[str] = []  # members of the first group, written by zarr into the folder
        self._published = False
        self._names: set[str] = set()
        self.groups_published = 0
        self.groups_total = 0
        self.skipped = 0  # save intervals that did not publish (too little new, or the last one still running)
        self.last_publication_s = 0.0  # how long the last publication took
        self._zip: GrowingZip | None = None  # the published file, open, grown in place
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _remove_leftovers(self) -> None:
        """Remove the private folders and temporary ZIPs a killed writer of this output left beside it."""
        for p in self.path.parent.glob(f".{self.path.name}.*"):
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.suffix == ".tmp":
                    p.unlink()
                else:
                    continue
                log.info("removed %s, left by an earlier writer of %s", p, self.path)
            except OSError as exc:
                log.warning("cannot remove %s (%s)", p, exc)

    def add_group(self, group: Any) -> None:
        """Queue one :class:`~ringstream.writer.omega.OmegaGroup` for the next :meth:`publish`: its sum rounded
        once to the stored dtype and compressed (the chunk member holds those bytes until it is published)."""
        chunks = group.chunks if type(group.chunks) is Chunks and group.chunks.dtype == self.dtype else None
        if chunks is None:
            data = stored(group.sum, self.dtype)
            if not np.isfinite(data).all():  # (OmegaSums hands out finite sums: no copy for them)
                data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
            shape = data.shape
        else:  # stored and finite already (OmegaSums hands out finite sums, a worker's are made so)
            data, shape = None, tuple(chunks.shape)
        if shape != self.shape:
            raise ValueError(f"omega-sum group {group.index}: shape {shape} != {self.shape}")
        name = group.name(self.digits)
        if name in self._names:
            raise ValueError(f"{self.path}: group {name} written twice")
        self._names.add(name)
        attrs = group_attrs(group) | self._precision
        if self._template is None:
            data = chunks.array if data is None else data  # (zarr writes the first group: from the row itself)
            arr = self._groups.create_array(name, shape=data.shape, dtype=self.dtype.name, chunks=data.shape,
                                            compressors=self._codec, fill_value=0.0, attributes=attrs,
                                            config=_EVERY_CHUNK)
            arr[...] = data
            folder = self._store / "OmegaSumFrame" / name
            self._template = (folder / ".zarray").read_bytes()
            self._first = sorted(str(p.relative_to(self._store)) for p in folder.rglob("*") if p.is_file())
            if not self._published:  # the first ZIP is built from the folder, this group included
                self.groups_total += 1
                return
            for member in self._first:
                self._pending.append((member, (self._store / member).read_bytes()))
        else:
            chunk = ".".join("0" * len(shape))
            base = f"OmegaSumFrame/{name}/"
            self._pending += [
                (base + ".zarray", self._template),
                (base + ".zattrs", json.dumps(attrs, indent=self._indent, allow_nan=True).encode()),
                # what zarr writes: the codec of the .zarray (compressed by a worker, or in the background, when the
                # group brings it)
                (base + chunk, chunks if chunks is not None else self._codec.encode(data)),
            ]
        self.groups_total += 1

    def restore(self, groups: Iterable[Any]) -> None:
        """Publish, before any other group, a ZIP of exactly ``groups`` (OmegaGroups in order), replacing the
        output: the zarr.zip of a run continued after its writer died, rebuilt from the groups its HDF5 file kept.
        The groups are taken one at a time and written as they come, so a long run's sums are never all in
        memory; later groups are added as usual."""
        if self._published or self.groups_total:
            raise ValueError(f"{self.path}: restore() comes before any other group")
        it = iter(groups)
        first = next(it, None)
        if first is not None:
            self.add_group(first)  # (into the private folder, from which the first ZIP is built)

        def members():
            for group in it:
                self.add_group(group)
                pending, self._pending = self._pending, []
                yield from _resolved(pending)

        self._published = True
        self._write(members(), True, 0, False)
        self.groups_published = self.groups_total

    def publish(self, wait: bool = True, force: bool = False, final: bool = False) -> bool:
        """Add every group so far to the published ZIP (the first time: write it and rename it over the output).
        False if nothing changed, or (``wait=False``) if the previous publication is still being written or what
        is new is fewer bytes than the directory to write (the groups go into a later publication; see the
        module docstring). With ``wait=False`` the work runs in a thread (file I/O, which releases the GIL), so
        the writer keeps taking frames; an error of that thread is raised by the next call. ``force``: wait for
        a running publication and publish now, in the background (the end of a run; :meth:`close` joins it).
        ``final``: no more groups come (the end of a run): no hole is left for them."""
        self._join(wait or force)
        if self._thread is not None:
            self.skipped += 1
            return False
        if self._published and not self._pending and not (final and self._zip is not None and self._zip.free_bytes):
            return False  # (the end of a run with nothing new still cuts the hole away)
        new = sum(_size_hint(data) for _, data in self._pending)
        if not (wait or force or final) and self._zip is not None and new < self.NEW_PER_DIRECTORY * \
                self._zip.directory_bytes:
            self.skipped += 1  # the directory would be most of the write: wait for more
            return False
        pending, self._pending = self._pending, []
        first = not self._published
        self._published = True
        total = self.groups_total
        if wait:
            self._write(_resolved(pending), first, total, final)
        else:  # (the chunks' bytes taken there too: a zarr chunk made of its HDF5 chunk's blocks costs ~15 µs)
            self._thread = threading.Thread(target=self._run, args=(pending, first, total, final),
                                            name="zarr-publish", daemon=True)
            self._thread.start()
        return True

    def _join(self, wait: bool) -> None:
        t = self._thread
        if t is not None and (wait or not t.is_alive()):
            t.join()
            self._thread = None
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def _run(self, pending, first, total, final) -> None:
        try:
            self._write(_resolved(pending), first, total, final)
        except BaseException as exc:  # noqa: BLE001 - handed to the writer's thread
            self._error = exc

    def _reserve(self, members: list[tuple[str, Any]], final: bool) -> int:
        if final:
            return 0
        return self.RESERVE_FACTOR * sum(data_size(data) for _, data in members)

    def _write(self, pending: Iterable[tuple[str, bytes | memoryview]], first: bool, total: int,
               final: bool) -> None:
        t0 = time.monotonic()
        if first:
            fixed = [(str(p.relative_to(self._store)), p.read_bytes()) for p in sorted(self._store.rglob("*"))
                     if p.is_file()]
            try:
                self._zip = GrowingZip.create(self.path, itertools.chain(fixed, pending), self._reserve(fixed, final))
            except BaseException:
                self._published = False  # (the next publication builds the first ZIP again)
                if isinstance(pending, list):
                    self._pending[:0] = pending
                raise
        else:
            pending = list(pending)
            try:
                self._zip.append(pending, self._reserve(pending, final), final=final)
            except BaseException:
                self._pending[:0] = pending  # not published: the next publication takes them again
                raise
        self.groups_published = total
        self.last_publication_s = time.monotonic() - t0

    def close(self) -> None:
        """Publish what is left (waiting for it), close the file and remove the private folder."""
        try:
            self.publish(wait=True, final=True)
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self._join(True)
        except BaseException:  # noqa: BLE001 - closing or abandoning anyway
            pass
        if self._zip is not None:
            self._zip.close()
        shutil.rmtree(self._work, ignore_errors=True)

    def abandon(self) -> None:
        """Close the file and remove the private folder without publishing more (the last published ZIP stays
        whole)."""
        self._release()

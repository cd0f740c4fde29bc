"""The messages the daemon's processes exchange: small typed records, one dataclass per wire ``type``.

Every message travels as ``[header, *buffers]`` (see :mod:`ringstream.protocol.codec`): the header is a msgpack map
holding ``type``, ``version`` and the fields below; array data travel as raw buffers after it, never inside the
header and never pickled. The dataclasses are keyword-only and frozen: build a new one (or
:func:`dataclasses.replace`) rather than mutating a message that may already be on its way.

Fields without a default are required on the wire; the others may be left out by a sender and take their default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
"""The version every header carries; a receiver rejects any other (``ProtocolError`` of kind ``"version"``)."""

FIT_COLUMNS = 7
"""Columns of a :class:`Result`'s fit array, shape ``[n_peaks, 7]`` float64."""

FRAME_CODECS = ("none", "bslz4", "lz4")
"""How a frame's pixels may travel (:attr:`FrameHeader.codec`)."""

#: bytes of the HDF5-filter header a bslz4 / lz4 frame may start with (:attr:`FrameHeader.codec_header`)
HDF5_FILTER_HEADER = 12

PEAK_SEQ_KEY = "peak_seq"
"""The :class:`FrameHeader` metadata key the ingest stamps with the peak-list seq in force for the frame (0: the
parameter file's list); the worker fits the frame with that list and leaves the key out of its Result."""

MASK_KEY = "pixel_mask_sha256"
"""The :class:`FrameHeader` metadata key of a frame to be integrated with a pixel mask on top of the parameter
file's (a DECTRIS series' ``pixel_mask`` with ``[source] dectris_pixel_mask``): the SHA-256 of the mask in the
daemon's mask store (:mod:`ringstream.geometry.mask_store`). The worker integrates the frame with the map of that
mask and leaves the key out of its Result; the run's metadata carries it (``/entry/run_metadata``)."""

RUN_START_KEY = "ringstream.run_start"
"""The metadata key of the first frame of a run: the fields of its :class:`RunStart` (name, meta, reason) as JSON
text, carried through the worker into the frame's Result. The RunStart goes straight from the ingest to the writer
and the frame through a worker, so either can arrive first; the writer opens the run's files from whichever it has
(and leaves the key out of the frame's metadata in the files)."""

_message = dataclasses.dataclass(frozen=True, kw_only=True, slots=True)


@_message
class FrameHeader:
    """One detector frame, ``type = "frame"``.

    ``shape`` is ``(nz, ny)`` pixels, ``dtype`` a numpy dtype string with byte order (``"<i4"``, ``"|u1"``; a dtype
    object or ``"int32"`` is normalised to that form). The pixels are either one inline buffer of ``nbytes`` =
    ``nz * ny * itemsize`` bytes (``location="inline"``) or sit in slot ``slot`` of the shared-memory ring
    ``shm_name`` at byte ``offset`` of the segment (``location="shm"``, no buffer). ``nbytes`` is computed when left
    out. ``timestamp`` is seconds since the epoch; ``metadata`` maps str to numbers or str.

    ``codec`` says how the pixels travel (:data:`FRAME_CODECS`): ``"none"`` (raw), ``"bslz4"`` (bitshuffle + LZ4,
    HDF5 filter 32008; element size = the dtype's item size) or ``"lz4"`` (HDF5 filter 32004, or one raw LZ4 block).
    A compressed frame's buffer (or slot) holds the compressed bytes as the source received them: ``nbytes`` is their
    length (required; ``shape`` and ``dtype`` are the decoded frame's). ``codec_header``: bytes of the HDF5-filter
    header the bytes start with (12: big-endian uint64 decoded size, uint32 block size in bytes; 0: none);
    ``codec_block``: the block size in bytes (bslz4: 0 = bitshuffle's default of 8192 bytes; lz4: 0 = one raw LZ4
    block holding the whole frame, NDPluginCodec's framing). Workers decode (docs/DAEMON.md, "Compressed frames").

    ``frame_index`` counts every frame of the daemon's life (0, 1, 2 ...) across runs; ``run_start`` is the
    ``frame_index`` of the first frame of the frame's run (``run_id``), so ``frame_index - run_start`` is the frame's
    index in its run's files.
    """

    run_id: str
    frame_index: int
    run_start: int = 0
    source_id: str = ""
    timestamp: float = 0.0
    shape: tuple[int, int]
    dtype: str
    codec: str = "none"
    codec_block: int = 0
    codec_header: int = 0
    location: str = "inline"
    shm_name: str | None = None
    slot: int | None = None
    offset: int | None = None
    nbytes: int | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Lenient normalisation only: anything odd is left as it is for the codec's validation to report.
        if isinstance(self.shape, list):
            object.__setattr__(self, "shape", tuple(self.shape))
        if not isinstance(self.dtype, str) or self.dtype[:1] not in ("<", ">", "|"):
            try:
                object.__setattr__(self, "dtype", np.dtype(self.dtype).str)
            except (TypeError, ValueError):
                pass
        if self.nbytes is None and self.codec == "none":
            try:
                nbytes = math.prod(int(n) for n in self.shape) * np.dtype(self.dtype).itemsize
                object.__setattr__(self, "nbytes", nbytes)
            except (TypeError, ValueError):
                pass


@_message
class Result:
    """What a worker made of one frame, ``type = "result"``.

    ``status="ok"``: buffers are the lineout float32 ``[n_r]``, then the cake float32 ``[n_r, n_eta]`` if
    ``has_cake`` (or, with ``cake_chunks`` = 2 or 3, the cake as the files store it, compressed by the worker: the
    HDF5 chunk of ``/cake/data/I`` (the stored cake transposed, ``[n_eta, n_r]``), the HDF5 chunk of its omega sum
    (``OmegaSumFrames 1``: the frame's group is the frame; ``[n_r, n_eta]``, NaN made 0) and, with 3, that sum's
    zarr chunk (only where the writer cannot make it of the HDF5 chunk's blocks,
    :func:`ringstream.compression.blocks_carry_over`); :mod:`ringstream.compression`), then the fit float64 ``[n_peaks, 7]`` if ``n_peaks``, then, if ``n_rois``, the fitted model
    curves: an int32 table ``[n_rois, 2]`` of (start_bin, n_points) and the float64 model values
    ``[n_curve_points]`` (= the sum of n_points) of every ROI in table order, then, if ``caked_peaks``, the
    per-η fits float64 ``[n_eta, caked_peaks, 7]`` (``[fit] per_eta``: :mod:`ringstream.fitting.caked`), all
    little-endian (fit_curves.bin).
    ``status="rejected"``: no buffers, ``reason`` says why. ``timings`` maps a stage name to seconds.
    """

    run_id: str
    frame_index: int
    source_id: str = ""
    timestamp: float = 0.0
    status: str = "ok"
    reason: str = ""
    engine: str = ""
    worker: int = 0
    worker_pid: int = 0
    n_r: int = 0
    n_eta: int = 0
    has_cake: bool = False
    cake_chunks: int = 0
    n_peaks: int = 0
    n_rois: int = 0
    n_curve_points: int = 0
    caked_peaks: int = 0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class PeakUpdate:
    """The peak list in force from frame ``from_frame`` onward, ``type = "peaks"``.

    ``peaks`` are the peak locations R (px) after the change (empty: automatic finding or no fitting, as the
    parameter file says); ``origin`` says where the change came from (``"control"`` for ``ringstream peaks``,
    ``"peak_update.txt"``); ``seq`` numbers the updates of a run from 1. Sent by the supervisor to the workers and
    to the writer, which records it under ``/entry/fit``.
    """

    run_id: str = ""
    seq: int
    from_frame: int
    peaks: list[float] = dataclasses.field(default_factory=list)
    origin: str = "control"


@_message
class OmegaPartial:
    """A worker's partial omega sum, ``type = "omegasum"``: the sum of the ``n_frames`` cakes of omega-sum group
    ``group`` (frames ``group * OmegaSumFrames ..``) that this worker integrated, one little-endian buffer
    ``[n_r, n_eta]`` of ``dtype``: ``"<f8"`` (summed in float64), or the stored dtype (``[output] cake_dtype``) when
    the partial is the group's whole sum (every frame of it) and needs no more adding: the float64 sum rounded
    once, as the writer would store it, in half the bytes for float32. ``compressed``: such a whole sum (stored
    dtype, NaN made 0) travels as the chunks the files store, made by the worker (:mod:`ringstream.compression`):
    buffer 0 the HDF5 chunk (bitshuffle + LZ4, filter 32008, with its 12-byte header), buffer 1, when the run
    writes a zarr.zip and the writer cannot make it of the HDF5 chunk's blocks
    (:func:`ringstream.compression.blocks_carry_over`), the zarr chunk (Blosc); the writer places them as they are.
    ``block_starts``: buffer 1 is instead where each LZ4 block of the HDF5 chunk starts (int32 little-endian,
    :func:`ringstream.compression.block_starts`), so that the writer makes the zarr chunk of those blocks without
    walking them (it checks them against the chunk). Sent to the writer when cakes are
    not sent per frame (``Write2D 0``), always after the Results of its frames; ``first_frame`` / ``last_frame`` are
    the first and last frame_index summed (within the run), ``frames`` the daemon-wide ``frame_index`` of each frame
    summed (what the writer acknowledges to the ingest once the sum is in: :class:`FrameAck`)."""

    run_id: str = ""
    group: int
    n_frames: int
    first_frame: int = 0
    last_frame: int = 0
    worker: int = 0
    worker_pid: int = 0
    frames: list[int] = dataclasses.field(default_factory=list)
    n_r: int
    n_eta: int
    dtype: str = "<f8"
    compressed: bool = False
    block_starts: bool = False


@_message
class EndOfStream:
    """The end of a run, ``type = "eos"``: the ingest sent frames ``first_frame .. first_frame + n_frames - 1`` as
    run ``run_id`` and no more. ``final``: the stream ends too (the daemon stops once this run is written); otherwise
    frames that come later belong to a new run. ``counters``: the ingest's and the source's counters over the run;
    ``reason``: why the run ended (``end of source``, ``stop``, ``idle``, ``max_frames``, ``max_seconds``,
    ``acquisition restarted``, ``attribute NAME changed``, ``runs start``, ``runs stop``)."""

    run_id: str
    n_frames: int
    first_frame: int = 0
    final: bool = True
    reason: str = ""
    counters: dict[str, int] = dataclasses.field(default_factory=dict)


@_message
class RunStart:
    """A run begins, ``type = "runstart"``: sent by the ingest to the writer before the run's first frame goes to a
    worker. ``first_frame`` is that frame's ``frame_index``; ``name`` and ``meta`` come from ``ringstream runs start
    --name --meta`` (empty otherwise); ``reason`` says what started it (see :class:`EndOfStream`)."""

    run_id: str
    first_frame: int
    name: str = ""
    reason: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class Credit:
    """A worker can take ``n`` more frames, ``type = "credit"``: sent by worker ``worker`` (process ``pid``) on its
    frames socket, first when it starts (its queue depth), then for the frames it has finished (while more frames wait on
    its socket, in Credits of up to ``CREDIT_BATCH`` frames: ``ringstream.workers.process``). The ingest sends a
    worker a frame only against credit, so it knows which worker holds which frame (docs/DAEMON.md, "Delivery")."""

    worker: int
    pid: int
    n: int


def worker_identity(worker: int, pid: int) -> bytes:
    """The routing id worker ``worker`` (process ``pid``) connects to the ingest's frames socket with."""
    return f"worker-{int(worker)}-{int(pid)}".encode()


@_message
class FrameAck:
    """The writer holds the results of ``frames`` (daemon-wide ``frame_index``), ``type = "ack"``: their Result, and
    with partial omega sums their sum too. Sent to the ingest, which then frees their ring slots; a frame never
    acknowledged is still the ingest's, and goes to another worker should its worker die."""

    frames: list[int]


@_message
class WorkerGone:
    """Worker ``worker`` (process ``pid``) is dead, ``type = "gone"``. The supervisor publishes it; the writer then
    ignores every later message of that process and passes it on to the ingest, which sends the frames that
    process held and the writer has not acknowledged to the other workers."""

    worker: int
    pid: int


@_message
class Flushed:
    """The writer's files hold every frame below ``below`` (daemon-wide ``frame_index``) for good, ``type =
    "flushed"``: its row is flushed and so is every omega-sum group that holds it (a group still summing in memory
    would die with the writer: its frames are not below). Sent by writer process ``writer_pid`` after each flush to
    the ingest, which passes it on to every worker: a worker keeps each Result and partial sum it sent until its
    frames are below, to send them again to a replacement writer. ``restart``: this writer is a replacement that
    reopened the runs' files at ``below``; every worker sends again what it kept from ``below`` on, and the ingest
    the RunStart and EndOfStream messages of the runs not yet written in full."""

    below: int
    writer_pid: int
    restart: bool = False


@_message
class ResumeQuery:
    """A replacement ingest asks which frames it must send again, ``type = "resume"``: sent to the writer (on the
    results socket, like the EndOfStream) for the frames ``first_frame .. end - 1`` the dead ingest announced.
    ``run_id``: the run the dead ingest had open; ``pids``: the worker processes the supervisor ended with it (the
    writer answers only once it has taken the :class:`WorkerGone` of each, so that no result of theirs counts
    after the answer). The running ingest asks too, after a writer's restart, about the frames the dead writer had
    acknowledged and not flushed: ``resent`` names the worker processes whose :class:`Resent` the writer must have
    first (what they kept has arrived: the frames it still lacks were held by a worker that died too). The writer
    answers with :class:`Missing`."""

    run_id: str = ""
    first_frame: int
    end: int
    pids: list[int] = dataclasses.field(default_factory=list)
    resent: list[int] = dataclasses.field(default_factory=list)


@_message
class Missing:
    """The writer's answer to a :class:`ResumeQuery`, ``type = "missing"``, on its acknowledgement socket: of the
    frames asked about, those it does not hold (no Result, or with partial omega sums no sum), in increasing
    ``frame_index``. The ingest announces each again with its original index and run."""

    run_id: str = ""
    frames: list[int] = dataclasses.field(default_factory=list)


@_message
class Resent:
    """Worker ``worker`` (process ``worker_pid``) has sent again everything it kept for the replacement writer
    ``writer_pid``, ``type = "resent"``: sent on the results socket behind those messages (see :class:`Flushed`)."""

    worker: int
    worker_pid: int
    writer_pid: int


@_message
class Heartbeat:
    """A child is alive, ``type = "heartbeat"``; ``time`` is seconds since the epoch, ``counters`` str to number."""

    role: str
    index: int = 0
    pid: int = dataclasses.field(default_factory=os.getpid)
    state: str = "running"
    time: float = dataclasses.field(default_factory=time.time)
    counters: dict[str, float] = dataclasses.field(default_factory=dict)


@_message
class Stop:
    """Ask the receiver to stop, ``type = "stop"``."""

    reason: str = ""


@_message
class ControlRequest:
    """A client's request to the supervisor's control socket, ``type = "request"``."""

    command: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class ControlReply:
    """The supervisor's answer to a :class:`ControlRequest`, ``type = "reply"``; ``error`` is one line when not ok.
    The answer to a ``fetch`` on the join socket (a joined worker asking for a file the daemon ships: docs/REMOTE.md)
    carries one buffer, the part of the file asked for; any other carries none."""

    ok: bool
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""


@_message
class ViewUpdate:
    """Decimated results for live viewers (``ringstream view``), ``type = "view"``: published by the writer on
    its view PUB socket (``[transport] view_endpoint``) at most ``[view] rate`` times a second, and only while a
    viewer subscribes. ``run``, ``name``, ``file``: the run (number, name, HDF5 path); ``written``: its frames
    written so far; ``frames``: the in-run frame index of each row sent (at most ``[view] rows`` of the frames
    written since the last update, evenly spaced). Buffers: axes f8 ``[3, n_r]`` (R px, 2θ deg, Q 1/Å with NaN
    when the wavelength is unknown), lineouts f4 ``[len(frames), n_r]``, and if ``n_peaks`` the fit rows f8
    ``[len(frames), n_peaks, 7]`` (NaN rows where a frame has none), in the columns of ``fit_model`` (``[fit]
    model``: "pv" Imax, BG, Mu, Rcen, Sigma, GoF, Area; "tch" area, center, sig, gam, FWHM, eta, chi2_dof)."""

    run_id: str = ""
    run: int = 0
    name: str = ""
    file: str = ""
    written: int = 0
    frames: list[int] = dataclasses.field(default_factory=list)
    n_r: int
    n_peaks: int = 0
    fit_model: str = "pv"


MESSAGE_TYPES: dict[str, type] = {
    "frame": FrameHeader,
    "result": Result,
    "peaks": PeakUpdate,
    "omegasum": OmegaPartial,
    "eos": EndOfStream,
    "runstart": RunStart,
    "credit": Credit,
    "ack": FrameAck,
    "gone": WorkerGone,
    "flushed": Flushed,
    "resume": ResumeQuery,
    "missing": Missing,
    "resent": Resent,
    "heartbeat": Heartbeat,
    "stop": Stop,
    "request": ControlRequest,
    "reply": ControlReply,
    "view": ViewUpdate,
}
"""Wire ``type`` tag -> dataclass."""

Message = FrameHeader | Result | PeakUpdate | OmegaPartial | EndOfStream | RunStart | Credit | FrameAck | WorkerGone | Flushed | ResumeQuery | Missing | Resent | Heartbeat | Stop | ControlRequest | ControlReply | ViewUpdate

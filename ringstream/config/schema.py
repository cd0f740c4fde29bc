"""The option table: every daemon setting declared once, as a field of a frozen section dataclass.

Each field carries its default, its type (from the annotation), its help text and, where it has them, its
command-line flag(s), choices and limits. Everything else is derived from it: the TOML keys, the environment names
(``RINGSTREAM_<SECTION>_<KEY>``), the argparse options of ``ringstream run`` / ``check-config``, the range checks,
and ``systemd/example.toml``. :data:`OPTIONS` lists the table row by row (section order, then field order).

Sections (:data:`SECTIONS`, in this order): ``[run]`` what to integrate and where the results go, ``[output]`` how
the results are stored, ``[source]`` where frames come from, ``[workers]`` the integrating processes,
``[transport]`` the ZeroMQ endpoints and the shared-memory frame ring, ``[supervisor]`` liveness and shutdown
timing, ``[fit]`` how peaks are fitted, ``[logging]`` log output, ``[view]`` the live web page. ``systemd/example.toml`` shows every key of each with its default and help.

It imports nothing else of ringstream, so the configuration loads without any process role.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..source_kinds import SOURCE_KINDS

__all__ = [
    "DTYPES", "ENGINES", "ENV_PREFIX", "FIT_ENGINES", "FIT_MODELS", "LOG_LEVELS", "OPTIONS", "SECTIONS", "SOURCE_KINDS",
    "CAKE_DTYPES", "FitConfig", "LoggingConfig", "Option", "OutputConfig", "RunConfig", "SourceConfig", "SupervisorConfig", "TransportConfig", "ViewConfig",
    "WorkersConfig", "option_of", "options_of",
]

ENV_PREFIX = "RINGSTREAM_"

ENGINES = ("auto", "cpu", "gpu")
FIT_ENGINES = ("auto", "nlopt", "gpu")
#: peak models (ringstream.fitting.models): the manual's pseudo-Voigt on R, GSAS-II's TCH pseudo-Voigt on 2θ
FIT_MODELS = ("pv", "tch")
DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WATCH_MODES = ("auto", "inotify", "poll")
#: how a replay's frames travel: as read, compressed on load, or as an HDF5 file stores them
REPLAY_CODECS = ("none", "bslz4", "lz4", "stored")
#: what "auto" endpoints become (``[transport] auto_endpoints``)
AUTO_ENDPOINTS = ("ipc", "tcp")
#: stored dtypes of cakes and omega sums (``[output] cake_dtype``), the default first
CAKE_DTYPES = ("float32", "float64")
#: ``[workers] numa_affinity``: pin GPU workers to the CPUs of their GPU's NUMA node (auto) or never (off)
NUMA_AFFINITY = ("auto", "off")

#: the value kind of each annotation a section field may have
_KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool", "tuple[str, ...]": "list[str]",
          "tuple[int, ...]": "list[int]", "tuple[float, ...]": "list[float]",
          # CUDA devices: a list of device numbers, or "all" (every device CuPy sees)
          "tuple[int, ...] | str": "devices"}


@dataclass(frozen=True)
class Option:
    """One row of the table: a key of a section, how it is typed, shown, given on the command line and checked."""

    section: str
    key: str
    kind: str  # int, float, bool, str, list[str], list[int], list[float], devices (list[int] or "all")
    default: object
    help: str
    flags: tuple[str, ...] = ()  # command-line options setting it (none: file and environment only)
    metavar: str = ""
    group: str = ""  # the --help group of its flags: "" configuration, "folder" or "live"
    selects: str = ""  # its flag also sets [source] kind to this source
    optional_value: bool = False  # the flag may come without a value: then it gives the default
    choices: tuple[str, ...] = ()
    at_least: float | None = None  # value >= at_least
    above: float | None = None  # value > above
    at_most: float | None = None  # value <= at_most
    unit: str = ""  # shown after a limit in messages: "expected > 0 (s)"
    path: bool = False  # an input path: relative in a TOML file = next to the file when it exists there
    expected: str = ""  # what text from the environment or command line must look like, when not the kind's rule
    example: object = None  # the value systemd/example.toml shows instead of the default

    @property
    def name(self) -> str:
        """``"workers.count"``."""
        return f"{self.section}.{self.key}"

    @property
    def label(self) -> str:
        """``"[workers] count"``, as messages name the key."""
        return f"[{self.section}] {self.key}"

    @property
    def env(self) -> str:
        """``"RINGSTREAM_WORKERS_COUNT"``."""
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"

    @property
    def flag(self) -> str:
        """The flag that names this key in messages about command-line values (``--<key-with-dashes>`` if none)."""
        return self.flags[0] if self.flags else "--" + self.key.replace("_", "-")

    @property
    def limit(self) -> str:
        """``">= 1"``, ``"> 0"``, ``">= 0 and <= 0.5"`` or ``""``."""
        low = f"> {self.above:g}" if self.above is not None else \
            f">= {self.at_least:g}" if self.at_least is not None else ""
        high = f"<= {self.at_most:g}" if self.at_most is not None else ""
        return " and ".join(t for t in (low, high) if t)

    def describe(self) -> str:
        """The help text with the choices and the limit: what ``--help`` and systemd/example.toml say."""
        text = self.help
        if self.choices:
            text += " (" + " | ".join(self.choices) + ")"
        if self.limit:
            text += f"; {self.limit}"
        return text


def opt(default: object, help: str, **spec: Any) -> Any:
    """A section field: its default and its row of the table (see :class:`Option` for the keywords)."""
    if isinstance(default, list):
        default = tuple(default)
    if isinstance(spec.get("flags"), str):
        spec["flags"] = (spec["flags"],)
    return field(default=default, metadata={"option": {"help": help, **spec}})


@dataclass(frozen=True)
class RunConfig:
    """What to integrate and where the results go."""

    param_file: str = opt("", "the MIDAS parameter file (required)", flags="--param-file", metavar="P", path=True,
                          example="/etc/ringstream/beamline.txt")
    overrides: tuple[str, ...] = opt((), "\"Key Value\" strings applied over the parameter file, e.g. "
                                     "[\"RBinSize 0.5\"] (command line: trailing Key Value tokens)")
    output_h5: str = opt("ringstream.h5", "NeXus HDF5 results file of each run (SWMR), a template: {run} (e.g. "
                         "{run:05d}), {name}, {date}, {time}, {run_id}, {attr[NAME]}; without {run}/{run_id} a service "
                         "of several runs adds _{run:05d}; an existing file is never replaced (docs/DAEMON.md)",
                         flags="--output-h5", metavar="OUT.h5", example="/data/ringstream/{date}/run_{run:05d}.h5")
    zarr_output: str = opt("", "zarr.zip output, a template as output_h5; \"\" = next to the HDF5 file, same name",
                           flags="--zarr-output", metavar="OUT.zarr.zip")
    no_zarr: bool = opt(False, "write no zarr.zip", flags="--no-zarr")
    save_interval: int = opt(500, "flush the outputs every N frames (and at least every second)",
                             flags="--save-interval", metavar="N", at_least=1)
    midas_binaries: str = opt("", "folder for MIDAS lineout.bin, Int2D.bin, RTthEtaAreaMap.bin (and fit.bin), a "
                              "template as output_h5; \"\" = none", flags="--midas-binaries", metavar="DIR")
    dark: str = opt("", "dark frame file; \"\" = the parameter file's Dark key, if any", flags="--dark", metavar="D",
                    path=True)
    run_id: str = opt("", "run identifier recorded in the outputs; \"\" = generated", flags="--run-id", metavar="ID")
    state_dir: str = opt("", "folder keeping the run number and the index of runs (runs.jsonl) across restarts; "
                         "\"\" = $STATE_DIRECTORY (systemd StateDirectory=), else .ringstream in the first folders "
                         "of output_h5 (those before any {field})", flags="--state-dir", metavar="DIR")
    idle_split_s: float = opt(0.0, "live sources: a run ends after this many seconds without a frame, the next "
                              "frame starts a new run; 0 = never", at_least=0, unit="s")
    max_frames: int = opt(0, "a run ends after this many frames and the next frame starts a new run (a long "
                          "acquisition in parts); 0 = no limit", at_least=0)
    max_seconds: float = opt(0.0, "a run ends this many seconds after its first frame and the next frame starts a "
                             "new run; 0 = no limit", at_least=0, unit="s")
    split_attribute: str = opt("", "pva: a new run starts when the value of this NDAttribute changes (e.g. a scan "
                               "number or file name attribute); \"\" = off")
    split_on_restart: bool = opt(True, "pva: a new run starts when the detector's acquisition starts again "
                                 "(its uniqueId goes back)")


@dataclass(frozen=True)
class OutputConfig:
    """How the results are stored (docs/OUTPUTS.md)."""

    cake_dtype: str = opt("float32", "stored dtype of the per-frame cakes and the omega sums (HDF5 and zarr.zip; "
                          "the sums are accumulated in float64 and rounded once when written)", flags="--cake-dtype",
                          metavar="DTYPE", choices=CAKE_DTYPES)
    cake_noise_fraction: float = opt(0.0, "precision-bounded cakes and omega sums: each stored value is rounded to a "
                                     "power of two so that its error is at most this fraction of the bin's Poisson "
                                     "counting noise (low mantissa bits zeroed, which the compression removes; "
                                     "docs/OUTPUTS.md); 0 = lossless", flags="--cake-noise-fraction", metavar="F",
                                     at_least=0, at_most=0.5)


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: one kind of source, the keys of the others are ignored."""

    kind: str = opt("simulated", "frame source", flags="--source", metavar="KIND", choices=SOURCE_KINDS,
                    example="pva")
    frames: int = opt(0, "frames to take; 0 = until stopped", flags="--frames", metavar="N", at_least=0)
    rate: float = opt(0.0, "frames per second; 0 = as fast as the source gives them", flags="--rate", metavar="HZ",
                      at_least=0)
    dtype: str = opt("int32", "simulated: pixel type", choices=DTYPES)
    seed: int = opt(0, "simulated: random seed", at_least=0)
    rings_2theta: tuple[float, ...] = opt((), "simulated: ring positions, deg 2theta, each in 0..180; [] = a few "
                                          "rings inside the bins")
    replay_path: str = opt("", "replay: an image file (stack) or a folder of images to replay", flags="--replay",
                           metavar="PATH", selects="replay", path=True)
    loop: bool = opt(True, "replay: start again at the end")
    replay_codec: str = opt("none", "replay: frames travel raw (none), compressed on load (bslz4, lz4: the HDF5 "
                            "filters' framings), or as an HDF5 file's bslz4/lz4 chunks store them (stored)",
                            flags="--replay-codec", metavar="CODEC", choices=REPLAY_CODECS)
    folder: str = opt("", "folder: watch this folder, its images first in natural order, then new ones",
                      flags="--folder", metavar="DIR", group="folder", selects="folder", path=True)
    file: str = opt("", "folder: read this one image file and end (\"\" = watch the folder)", flags="--file",
                    metavar="PATH", group="folder", selects="folder", path=True)
    extensions: tuple[str, ...] = opt((), "folder: only these extensions, e.g. [\"tif\", \"cbf\"] (command line: "
                                      "repeatable or comma-separated); [] = every supported format",
                                      flags="--extension", metavar="EXT", group="folder")
    recursive: bool = opt(False, "folder: also the subfolders", flags="--recursive", group="folder")
    file_count: int = opt(0, "folder: end after N files (processed, rejected or skipped); 0 = no limit",
                          flags="--count", metavar="N", group="folder", at_least=0)
    idle_timeout: float = opt(0.0, "folder: end after S s without a new file; 0 = never (a service)",
                              flags="--idle-timeout", metavar="S", group="folder", at_least=0, unit="s")
    watch: str = opt("auto", "folder: auto = inotify, else polling; poll for network file systems",
                     flags="--watch", metavar="MODE", group="folder", choices=WATCH_MODES)
    poll_interval: float = opt(1.0, "folder: s; polled files are complete when their size is stable this long",
                               above=0, unit="s")
    retry_time: float = opt(10.0, "folder: s; a truncated or corrupt file is retried this long, then skipped "
                            "(counted)", at_least=0, unit="s")
    hdf5_dataset: str = opt("", "folder: dataset or group in HDF5 files; \"\" = /entry/data/data, then /data",
                            flags="--hdf5-dataset", metavar="PATH", group="folder")
    raw_dtype: str = opt("uint16", "folder: pixel type of raw .bin/.raw files (numpy name: uint16, <i4, ...)")
    raw_shape: str = opt("", "folder: raw frame shape ROWSxCOLS; \"\" = the detector (NrPixelsZ x NrPixelsY)")
    raw_header: int = opt(0, "folder: bytes before the first frame of a raw file", at_least=0)
    pva_ip: str = opt("", "pva: search the channel only at this server address; \"\" = EPICS_PVA_ADDR_LIST from the "
                      "environment", flags="--pva-ip", metavar="ADDR", group="live")
    pva_channel: str = opt("", "pva: the NTNDArray channel, e.g. 16pil-idb:Pva1:Image", flags="--pva-channel",
                           metavar="PV", group="live", example="13PIL1:Pva1:Image")
    pva_dtype: str = opt("", "pva: the detector's pixel type, other frames are rejected; \"\" = any",
                         choices=DTYPES)
    pva_queue_size: int = opt(16, "pva: server-side monitor queue, record[queueSize=N], frames", at_least=1)
    pva_attributes: tuple[str, ...] = opt((), "pva: NDAttributes kept as per-frame metadata, e.g. [\"omega\", "
                                          "\"I0\"]; [\"*\"] = all")
    dectris_stream: str = opt("", "dectris: the detector's Stream V2 ZeroMQ PUSH socket to connect to, "
                              "tcp://HOST:PORT (the DCU's port 31001)", flags="--dectris-stream", metavar="ENDPOINT",
                              group="live", selects="dectris", example="tcp://10.0.0.5:31001")
    dectris_channel: str = opt("", "dectris: the channel (threshold) integrated, e.g. threshold_1; \"\" = the first "
                               "of each image message")
    dectris_dtype: str = opt("", "dectris: the detector's pixel type (its bit depth); the ring's slots are sized for it "
                             "and images of another type are rejected; \"\" = any (slots sized for uint32)",
                             choices=("uint8", "uint16", "uint32"))
    dectris_user_data: bool = opt(False, "dectris: keep each image's user_data as per-frame metadata (numbers and "
                                  "text; a map as user_data_KEY)")
    dectris_pixel_mask: bool = opt(False, "dectris: leave out of each series' integration the pixels its start's "
                                   "pixel_mask flags (gap, dead, hot, noisy...; the detector's header_detail = all), "
                                   "on top of the parameter file's masks")
    midas_port: int = opt(60439, "midas_socket: TCP port of the MIDAS stream protocol, 1..65535 (command line: "
                          "give PORT when Key Value overrides follow)", flags="--midas-socket", metavar="PORT",
                          group="live", selects="midas_socket", optional_value=True)
    midas_listen: str = opt("127.0.0.1", "midas_socket: interface to bind; \"0.0.0.0\" = every interface",
                            flags="--listen", metavar="ADDR", group="live")


@dataclass(frozen=True)
class WorkersConfig:
    """The integrating processes."""

    count: int = opt(2, "integrating processes on this host (0: only workers that join, [transport] "
                     "remote_endpoint)", flags="--workers", metavar="N", at_least=0)
    engine: str = opt("auto", "integration engine: auto = the GPU when there is one (logged); gpu fails without one",
                      flags="--engine", metavar="ENGINE", choices=ENGINES)
    gpus: tuple[int, ...] | str = opt((), "CUDA devices for GPU workers: worker i uses gpus[i % len]; [] = device 0; "
                                      "\"all\" = every device CuPy sees (e.g. [0, 1]; command line: 0,1 or all)",
                                      flags="--gpus", metavar="LIST",
                                      expected="comma-separated CUDA device numbers such as 0,1, or all")
    numa_affinity: str = opt("auto", "GPU workers (engine gpu or auto) run on the CPUs of their GPU's NUMA node "
                             "(sysfs), their pinned buffers allocated there; auto = when the host has several NUMA "
                             "nodes and the GPU's is known; off = never", choices=NUMA_AFFINITY)
    batches_in_flight: int = opt(4, "GPU engine: batches submitted at once, one per CUDA stream (1 = one at a time)",
                                 at_least=1)


@dataclass(frozen=True)
class TransportConfig:
    """ZeroMQ endpoints and the shared-memory frame ring. Endpoints: "auto" (by ``auto_endpoints``: an ipc:// socket
    in the daemon's private folder, or a free tcp://127.0.0.1 port), tcp://HOST:PORT or ipc://PATH."""

    frames_endpoint: str = opt("auto", "ingest -> workers")
    results_endpoint: str = opt("auto", "workers -> writer")
    release_endpoint: str = opt("auto", "writer -> ingest (frames acknowledged: their shared-memory slots are freed)")
    events_endpoint: str = opt("auto", "every process -> supervisor (heartbeats)")
    control_endpoint: str = opt("auto", "`ringstream status` / stop requests (\"auto\": ipc://RUNTIME_DIR/control "
                                "with auto_endpoints = \"ipc\", else a free port, printed in the log)",
                                flags=("--control-endpoint", "--control"), metavar="ENDPOINT")
    peaks_endpoint: str = opt("auto", "supervisor -> ingest, workers, writer (peak-list updates, `ringstream "
                              "peaks`)")
    auto_endpoints: str = opt("ipc", "what \"auto\" endpoints become: ipc = Unix sockets only this user reaches (the "
                              "internal ones in a fresh 0700 folder inside runtime_dir); tcp = free 127.0.0.1 ports, "
                              "which every local user can reach", choices=AUTO_ENDPOINTS)
    runtime_dir: str = opt("", "folder of the ipc:// sockets (made 0700 if missing, must be this user's); \"\" = "
                           "$RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/ringstream, else /tmp/ringstream-UID",
                           example="/run/ringstream/beamline")
    control_mode: str = opt("0600", "file mode of an ipc:// control socket: who may control the service (0660: its "
                            "group too; connecting needs write permission)", expected="an octal mode such as 0660")
    control_group: str = opt("", "group of an ipc:// control socket; \"\" = the service's group")
    remote_endpoint: str = opt("", "where workers of other hosts join (`ringstream worker --join`): tcp://HOST:P binds "
                               "ports P..P+4 (join, frames, results, events, peaks); \"\" = none (docs/REMOTE.md)",
                               flags="--remote-endpoint", metavar="tcp://HOST:P", example="tcp://0.0.0.0:5560")
    keys_dir: str = opt("", "folder of this side's CURVE key pair (`ringstream keys generate`): the daemon's "
                        "server.key_secret; a joined worker's worker.key_secret and the daemon's server.key",
                        flags="--keys-dir", metavar="DIR", example="/etc/ringstream/keys")
    authorized_keys_dir: str = opt("", "folder of the public keys (*.key) of the workers allowed to join",
                                   flags="--authorized-keys-dir", metavar="DIR",
                                   example="/etc/ringstream/authorized_keys")
    insecure_remote: bool = opt(False, "allow tcp sockets beyond loopback, and remote workers, without CURVE (no "
                                "authentication, no encryption; a warning at every start)")
    view_endpoint: str = opt("auto", "writer -> live viewers (`ringstream view`): decimated lineouts and fits, "
                             "dropped when a viewer is slow")
    shared_memory: bool = opt(True, "frames through the /dev/shm ring; false (--no-shm): pixels inline in the "
                              "messages", flags="--no-shm")
    ring_slots: int = opt(0, "frames in flight (shared-memory slots), at least 2; 0 = auto: 32 with CPU workers, 4 x workers x "
                          "batches_in_flight x 8 with GPU workers (more with [fit] per_eta), at most a quarter of the "
                          "memory available (ringstream/transport/ring_size.py)", flags="--ring-slots", metavar="N",
                          at_least=0)
    copy_threads: int = opt(0, "ingest threads copying frames into the ring; 0 = auto (1 under 8 CPUs, else CPUs/2, "
                            "<= 8)", flags="--copy-threads", metavar="N", at_least=0)
    nontemporal_copy: bool = opt(True, "frame copies into the ring bypass the CPU caches (glibc's non-temporal "
                                 "memcpy threshold at 256 KiB, ingest only, x86-64 glibc)")
    queue_depth: int = opt(0, "ZeroMQ high-water mark of every queue; 0 = ring_slots", at_least=0)
    results_queue_mb: int = opt(8, "workers -> writer: about this many MB of Results queued a side (at least "
                                "queue_depth, at most 4096 messages)", at_least=0)
    kept_results_mb: int = opt(512, "each worker keeps the Results and partial sums it sent until the writer has "
                               "flushed them (a replacement writer gets them again); past this many MB it takes "
                               "no new frame until the writer catches up (backpressure)", at_least=1)


@dataclass(frozen=True)
class SupervisorConfig:
    """Liveness and shutdown timing, in seconds."""

    heartbeat_interval: float = opt(0.5, "s between heartbeats of each process", above=0)
    heartbeat_timeout: float = opt(2.0, "s of silence after which a process has failed (> heartbeat_interval)",
                                   above=0)
    ready_timeout: float = opt(120.0, "s each process has to become ready", above=0)
    drain_timeout: float = opt(60.0, "s the first SIGTERM has to finish the frames in flight (unit: "
                               "TimeoutStopSec=90)", above=0)
    trace_dir: str = opt("", "a folder where every process writes, at its end, when each frame reached each stage "
                         "(ringstream/trace.py; bench/stage_trace.py prints where frames wait); empty: none",
                         flags="--trace-dir", metavar="DIR", path=True)


@dataclass(frozen=True)
class FitConfig:
    """Per-frame peak fitting. Whether to fit, and which peaks, comes from the parameter file (DoPeakFit,
    MultiplePeaks, PeakLocation); these keys say how."""

    engine: str = opt("auto", "fitter: auto = gpu on a GPU worker, else nlopt", choices=FIT_ENGINES)
    slots: int = opt(0, "peak rows per frame in fit.bin; 0 = len(PeakLocation), or 16 when finding peaks",
                     at_least=0)
    model: str = opt("pv", "peak model: pv = the manual's pseudo-Voigt on R (px), rows [Imax, BG, Mu, Rcen, Sigma, "
                     "GoF, Area]; tch = GSAS-II's TCH pseudo-Voigt on 2θ (deg), rows [area, center, sig, gam, "
                     "FWHM, eta, chi2_dof]", choices=FIT_MODELS)
    per_eta: bool = opt(False, "also fit every peak in every eta bin of each frame's cake (TCH on 2theta, after a "
                        "SNIP background): /entry/fit/caked, and *_caked_peaks.h5 with midas_binaries",
                        flags="--per-eta")
    snip_iterations: int = opt(50, "per_eta: SNIP background iterations (the widest clipping half-window, in R bins)",
                               at_least=1)


@dataclass(frozen=True)
class LoggingConfig:
    """Log output (stderr; journald collects it under systemd)."""

    level: str = opt("INFO", "log level", flags="--log-level", metavar="LEVEL", choices=LOG_LEVELS)


@dataclass(frozen=True)
class ViewConfig:
    """The live web page (`ringstream view`, docs/VIEW.md): what the writer publishes for viewers, and the page
    the daemon can serve itself."""

    enabled: bool = opt(False, "the daemon serves the page itself (as `ringstream view --control` would), on listen")
    listen: str = opt("127.0.0.1:8765", "HOST:PORT the page is served on (0.0.0.0 opens it to the network: "
                      "viewing is open to whoever reaches it, changing peaks needs the token)")
    rate: float = opt(10.0, "updates per second the writer publishes to viewers, at most", above=0, at_most=100)
    rows: int = opt(16, "lineouts per update at most (the frames written since the last one, evenly spaced)",
                    at_least=1, at_most=1024)
    history: int = opt(200, "lineouts the page's waterfall shows (its initial depth)", at_least=2)
    token: str = opt("", "the token that lets a page change peaks (?token=...); \"\" = a new one at each start, "
                     "printed and logged")


SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "output": OutputConfig,
    "source": SourceConfig,
    "workers": WorkersConfig,
    "transport": TransportConfig,
    "supervisor": SupervisorConfig,
    "fit": FitConfig,
    "logging": LoggingConfig,
    "view": ViewConfig,
}


def _row(section: str, f: dataclasses.Field) -> Option:
    return Option(section=section, key=f.name, kind=_KINDS[str(f.type)], default=f.default,
                  **f.metadata["option"])


#: every option, in section order then field order
OPTIONS: tuple[Option, ...] = tuple(_row(s, f) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls))
_BY_NAME = {o.name: o for o in OPTIONS}


def option_of(section: str, key: str) -> Option:
    """The row of ``[section] key`` (KeyError if there is none)."""
    return _BY_NAME[f"{section}.{key}"]


def options_of(section: str) -> dict[str, Option]:
    """``{key: Option}`` of one section, in declaration order."""
    return {o.key: o for o in OPTIONS if o.section == section}

"""The supervisor: the ``ringstream run`` process that starts, watches and stops the daemon's children.

See docs/DAEMON.md ("Roles", "Stopping the daemon", "Runs and file names"). In order, :meth:`Supervisor.run`:

1. resolves the configuration into a concrete one (``"auto"`` endpoints become ``ipc://`` sockets in a private
   folder, or free ``tcp://127.0.0.1:<port>`` with ``[transport] auto_endpoints = "tcp"``; an empty run id becomes a
   generated one) so that every child sees the same addresses and the same run id;
2. loads the parameters and builds (or loads) the map through the cache, so the children hit the cache;
3. binds the events PULL (heartbeats) and the control ROUTER (``ringstream status``, ``stop``);
4. starts writer, workers, ingest (start method ``spawn``, from the main thread) with the stop signals blocked around
   each spawn, and waits for each one's ``ready`` within ``supervisor.ready_timeout``; then sd_notify ``READY=1``;
5. loops every <= 0.2 s over the child sentinels, the events and control sockets, sending ``WATCHDOG=1`` each turn
   and a ``STATUS=`` line about once a second.

Stopping: the writer finishing (the end of a finite source's last run, or after a drain) ends the daemon with exit
0. The first SIGTERM, SIGINT or SIGHUP (or a ``stop`` request) drains: ingest stops and sends EndOfStream, the
workers finish what was sent, the writer completes. The second one stops everything at once (exit 128 + the
signal). The children ignore these signals while the supervisor lives, so one sent to the whole process group
drains the same way (``ringstream.transport.child.child_setup``). A worker that dies (or stops answering: it is
killed) is replaced at once: the writer and the ingest are told (``WorkerGone`` on the peaks socket), the frames it
held go to the other workers (docs/DAEMON.md, "Delivery"), and the run goes on; ``MAX_RESTARTS`` deaths of one
worker within ``RESTART_WINDOW_S`` stop the daemon with exit 5 and a line naming the cause. A writer killed by a
signal (or ended by an unexpected exception) is replaced too, with ``resume``: it continues the open runs in their
files and gets again what was not flushed (``writer.process``). An ingest that dies (by a signal or an internal
error) or stops answering is replaced too: the workers, which hold frames of its ring, are ended and replaced with
it (their ``WorkerGone`` published), and the new ingest resumes from its journal (``ringstream.ingest.resume``).
Each within the same limit. Any other child that exits non-zero, dies by a signal or stops answering (no heartbeat
for ``heartbeat_timeout``) is a failure: one line naming it, then ingest, workers and the writer (last: it flushes
and closes) are stopped in that order, exit 5. No child outlives the supervisor: every join has a timeout, followed
by the stop-now signal (``STOP_NOW_SIGNAL``, SIGUSR1), then SIGKILL; a supervisor killed outright takes its
children with it (their parent-death signal).

Exit codes: 0 ok; 1 internal error; 2 configuration; 3 input; 4 map; 5 a child process failed; 129/130/143
interrupted twice (SIGHUP/SIGINT/SIGTERM).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..config.validate import ENDPOINT_KEYS
from ..engines.topology import format_cpulist, resolve_gpus
from ..errors import EXIT_INTERNAL, ConfigError, RingstreamError
from ..protocol import (
    ControlReply,
    ControlRequest,
    Heartbeat,
    PeakUpdate,
    ProtocolError,
    WorkerGone,
    decode,
    encode,
)
from ..transport.child import (
    STOP_NOW_SIGNAL,
    STOP_SIGNALS,
    environment,
    nontemporal_env,
    receive,
    set_process_name,
    stop_now,
)
from ..transport.endpoints import free_tcp_endpoint
from ..transport.runtime_dir import (
    CONTROL_NAME,
    INTERNAL_NAMES,
    group_id,
    ipc_endpoint,
    ipc_path,
    make_private_dir,
    parse_mode,
    prepare_runtime_dir,
    remove_private_dir,
    remove_stale_private_dirs,
    runtime_dir_of,
    set_socket_access,
    socket_answers,
)
from ..transport.security import is_loopback
from ..transport.sockets import RejectLog, make_socket
from .view_child import end_view, start_view

log = logging.getLogger("ringstream.supervisor")

EXIT_OK = 0
EXIT_CHILD_FAILED = 5
EXIT_SIGHUP = 129
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: longest wait of one main-loop turn, s
TICK = 0.2
#: STATUS= line period, s
STATUS_PERIOD = 1.0
#: after a second signal: how long the children get before the stop-now signal, s
KILL_GRACE = 2.0
#: how long each role gets to exit after its ``stop`` in an orderly stop before the stop-now signal, s
JOIN_TIMEOUT = {"ingest": 3.0, "worker": 5.0, "writer": 15.0}
#: a worker that dies this many times within ``RESTART_WINDOW_S`` seconds stops the daemon (exit 5)
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0

#: the WorkerGone notices of the workers dead within RESTART_WINDOW_S go out again this often, in s
GONE_AGAIN_S = 1.0
#: the counters of a worker that are totals over its life (kept when it dies and is replaced)
WORKER_TOTALS = ("integrated", "rejected")
#: the exit codes of an ingest that is replaced when it ends with them while the daemon runs (a signal, an internal
#: error); the others (configuration, input, map: 2, 3, 4) would fail again the same way
INGEST_RESTART_CODES = (1,)

_ROLE_TARGETS = {
    "ingest": "ringstream.ingest.process",
    "worker": "ringstream.workers.process",
    "writer": "ringstream.writer.process",
}


# --------------------------------------------------------------------------------------------------- children


def child_main(role: str, config: Any, ready: Any, stop: Any, kwargs: dict) -> None:
    """The spawned child's target: import the role's module, run it, exit with its return code."""
    import importlib

    set_process_name(f"rs-{role}" + (f"-{kwargs['index']}" if role == "worker" else ""))
    module = importlib.import_module(_ROLE_TARGETS[role])
    code = module.run(config, ready, stop, **kwargs)
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(int(code or 0))


@dataclass
class Child:
    """One child process and what the supervisor knows of it (from its sentinel and its heartbeats)."""

    name: str  # "ingest", "worker-0", "writer"
    role: str
    index: int
    process: Any
    ready: Any
    stop: Any
    started: float = 0.0  # monotonic time of start
    last_beat: float = 0.0  # monotonic time of the last heartbeat received
    state: str = "starting"  # from heartbeats: starting, running, done
    counters: dict[str, float] = field(default_factory=dict)
    exit_seen: bool = False
    ready_seen: bool = False  # the supervisor has seen it ready (its heartbeats are watched from then on)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "is still running"
        if code < 0:
            try:
                sig = signal.Signals(-code).name
                return f"killed by signal {-code} ({sig})"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"


def _exit_text(child: Child) -> str:
    code = child.process.exitcode
    if code is not None and code < 0:
        return f"{child.name} (pid {child.pid}) died: killed by signal {-code}"
    return f"{child.name} (pid {child.pid}) died: {child.describe_exit()}"


# --------------------------------------------------------------------------------------------------- helpers


def resolve_config(config: Any) -> Any:
    """``config`` with every ``"auto"`` endpoint made concrete and a run id filled in.

    With ``[transport] auto_endpoints = "ipc"`` an internal endpoint becomes a socket in a new 0700 folder inside the
    runtime folder (``transport.runtime_dir`` of the result names that folder: the supervisor removes it at exit) and
    the control endpoint ``ipc://RUNTIME_DIR/control``; with ``"tcp"`` each becomes a free loopback port
    (docs/DAEMON.md, "Who can reach the daemon")."""
    t = config.transport
    if t.auto_endpoints == "ipc" and "auto" in {str(getattr(t, key)) for key in ENDPOINT_KEYS}:
        transport = _ipc_endpoints(t)
    else:
        transport = _tcp_endpoints(t)
    run = config.run
    if not run.run_id:
        run = dataclasses.replace(run, run_id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    return dataclasses.replace(config, transport=transport, run=run)


def _tcp_endpoints(t: Any) -> Any:
    changes = {}
    # the endpoints given are taken before any is chosen: a port that is free now because its socket is not bound
    # yet (the control socket, bound after this) must not be chosen for another (CI: the frames socket got the
    # control port, 'Address already in use')
    taken = {str(getattr(t, key)) for key in ENDPOINT_KEYS} - {"auto"}
    for key in ENDPOINT_KEYS:
        if str(getattr(t, key)) == "auto":
            value = free_tcp_endpoint()
            while value in taken:
                value = free_tcp_endpoint()
            changes[key] = value
            taken.add(value)
    return dataclasses.replace(t, **changes) if changes else t


def _ipc_endpoints(t: Any) -> Any:
    runtime = prepare_runtime_dir(runtime_dir_of(t), parse_mode(t.control_mode), group_id(t.control_group))
    changes: dict[str, str] = {}
    if t.control_endpoint == "auto":
        changes["control_endpoint"] = ipc_endpoint(runtime / CONTROL_NAME, "control_endpoint")
    internal = [key for key in INTERNAL_NAMES if getattr(t, key) == "auto"]
    if internal:
        for gone in remove_stale_private_dirs(runtime):
            log.info("removed %s, the socket folder of a daemon that is gone", gone)
        private = make_private_dir(runtime)
        for key in internal:
            changes[key] = ipc_endpoint(private / INTERNAL_NAMES[key], key)
        changes["runtime_dir"] = str(private)
    return dataclasses.replace(t, **changes)


class _NullNotifier:
    """Stands in for :class:`ringstream.daemon.notify.Notifier` outside systemd or when it is missing."""

    watchdog_interval = None

    def ready(self, status: str = "") -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self, status: str = "") -> None: ...


def _notifier():
    try:
        from .notify import Notifier
    except ImportError:
        return _NullNotifier()
    try:
        return Notifier.from_env()
    except Exception as exc:  # a broken NOTIFY_SOCKET must not stop the run
        log.warning("systemd notification disabled: %s", exc)
        return _NullNotifier()


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except TypeError:
        fn()  # a notifier method without the optional status text
    except Exception as exc:  # never let notification break the loop
        log.debug("sd_notify failed: %s", exc)


def interrupted_exit(sig: int) -> int:
    """The exit code after a second stop signal ``sig``: ``128 + sig`` (129 SIGHUP, 130 SIGINT, 143 SIGTERM)."""
    return 128 + int(sig)


def _cpus_of(pid: int | None) -> str:
    """The CPUs process ``pid`` may run on, as the kernel lists them ("" when it is gone)."""
    try:
        return format_cpulist(os.sched_getaffinity(int(pid or 0))) if pid else ""
    except OSError:
        return ""


def _num(counters: dict, key: str) -> float:
    v = counters.get(key, 0)
    return v if isinstance(v, (int, float)) else 0


# --------------------------------------------------------------------------------------------------- supervisor



def size_ring(cfg, params):
    """``cfg.transport`` with ``[transport] ring_slots = 0`` (auto) resolved (:mod:`ringstream.transport.ring_size`),
    and ``queue_depth`` with it when it follows the ring; logged."""
    from ..engines.cupy_engine import DEFAULT_BATCH
    from ..engines.registry import ENGINES
    from ..fitting import FIT_FRAMES
    from ..transport import ring_size

    engine = str(cfg.workers.engine).lower()
    gpu = engine == "gpu" or (engine == "auto" and ENGINES["gpu"].check()[0])
    # the largest slot the source may need: 4-byte pixels (compressed frames: their worst case is a little more)
    slot_bytes = int(params.NrPixelsY) * int(params.NrPixelsZ) * 4 * 101 // 100
    size = ring_size.auto_ring_slots(gpu=gpu, workers=cfg.workers.count, batches_in_flight=cfg.workers.batches_in_flight,
                                     gpu_batch=DEFAULT_BATCH, per_eta=bool(cfg.fit.per_eta), fit_frames=FIT_FRAMES,
                                     slot_bytes=slot_bytes, available=ring_size.mem_available(),
                                     shm=ring_size.shm_free())
    log.info("[transport] ring_slots = 0 (auto): %d slots of up to %.1f MB (%.2f GB): %s", size.slots,
             slot_bytes / 1e6, size.slots * slot_bytes / 1e9, size.why)
    t = cfg.transport
    return dataclasses.replace(t, ring_slots=size.slots, queue_depth=t.queue_depth or size.slots)

class Supervisor:
    """Runs one daemon run for ``config`` (a :class:`~ringstream.config.DaemonConfig`); :meth:`run` -> exit code."""

    def __init__(self, config: Any) -> None:
        self.config = resolve_config(config)
        t = self.config.transport
        #: the daemon's own folder of internal sockets (removed at exit), when it made one
        self.private_dir = Path(t.runtime_dir) if t.runtime_dir != config.transport.runtime_dir else None
        self.children: list[Child] = []
        self.state = "starting"
        self.t_start = time.monotonic()
        self.t_running: float | None = None
        self.signals: list[int] = []
        self.failure: str | None = None
        self.drain_deadline: float | None = None
        self.stop_requested_by: str | None = None
        self.rate = 0.0
        self._rate_mark: tuple[float, float] | None = None
        self.notifier = _notifier()
        self.rejects_events = RejectLog(log, "supervisor events socket")
        self.rejects_control = RejectLog(log, "supervisor control socket")
        self.hard_exit: int | None = None  # interrupted_exit(signal) after a second signal
        self.peaks = None  # PeakControl, set up in run()
        self.control = None  # the control ROUTER, bound in run()
        self.remote = None  # RemoteWorkers, with [transport] remote_endpoint
        self._params_text = ""
        self._map_key = ""
        self.view = None  # the page process of [view] enabled (not a supervised child)
        self._run_seq = 0  # the seq of the last ``runs start|stop`` request
        self._run_cache: tuple[int, dict] = (0, {})  # the current run's index entry
        self.deaths: dict[int | str, list[float]] = {}  # worker index or "ingest" -> monotonic times it died
        self.worker_restarts = 0
        self.writer_restarts = 0
        self.gone_notices: list[tuple[float, list]] = []  # (monotonic time, encoded WorkerGone) of dead workers
        self.next_gone_again = 0.0
        self.ingest_restarts = 0
        self.retired: dict[str, float] = {}  # WORKER_TOTALS of the workers that died
        self.retired_ingest: dict[str, float] = {}  # "resent" and drops of the ingests that died

    # ------------------------------------------------------------------------------------------ public
    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.private_dir is not None:
                remove_private_dir(self.private_dir)
            control = ipc_path(self.config.transport.control_endpoint)
            if control is not None and getattr(self, "control", None) is not None:  # ours: bound by this daemon
                control.unlink(missing_ok=True)

    def _run(self) -> int:
        cfg = self.config
        self._prepare()
        ctx = zmq.Context()
        try:
            t = cfg.transport
            try:
                self.events = make_socket(ctx, zmq.PULL, t.events_endpoint, bind=True, hwm=1000)
            except zmq.ZMQError as exc:
                raise ConfigError(f"[transport] events_endpoint {t.events_endpoint}: cannot bind ({exc})") from None
            self.control = self._bind_control(ctx)
            self._open_peaks(ctx)  # peak-list updates (ringstream peaks, peak_update.txt)
            self.poller = zmq.Poller()
            self.poller.register(self.events, zmq.POLLIN)
            self.poller.register(self.control, zmq.POLLIN)
            if t.remote_endpoint:  # workers of other hosts (docs/REMOTE.md)
                from .remote import RemoteWorkers, params_text
                from .shipping import ShippedFiles

                self.remote = RemoteWorkers(cfg, ctx, self.events, self.peaks.pub,
                                            ShippedFiles(cfg, cfg.load_params(), self._map_key))
                self._params_text = params_text(cfg)
                self.poller.register(self.remote.join, zmq.POLLIN)
                self.poller.register(self.remote.monitor, zmq.POLLIN)
            self._install_handlers()
            try:
                code = self._start_and_loop()
            finally:
                end_view(self.view)
                self._kill_leftovers()
            if self.hard_exit is not None:
                return self.hard_exit
            return code
        finally:
            if self.remote is not None:
                self.remote.close()
            ctx.destroy(linger=0)
            self._restore_handlers()

    def _bind_control(self, ctx) -> zmq.Socket:
        """The control ROUTER, bound; an ipc:// one gets ``[transport] control_mode`` and ``control_group``. A
        socket file where a daemon answers is never taken over (binding would silently replace it)."""
        t = self.config.transport
        where, ask = f"[transport] control_endpoint {t.control_endpoint}", f"ringstream status --control " \
                                                                           f"{t.control_endpoint}"
        path = ipc_path(t.control_endpoint)
        try:
            if path is not None and socket_answers(path):
                raise ConfigError(f"{where}: another daemon is running there ({ask})")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot use {path} ({exc.strerror})") from None
        try:
            sock = make_socket(ctx, zmq.ROUTER, t.control_endpoint, bind=True, hwm=100)
        except zmq.ZMQError as exc:
            raise ConfigError(f"{where}: cannot bind ({exc}); is another daemon running there? ({ask})") from None
        if path is not None:
            set_socket_access(path, parse_mode(t.control_mode), group_id(t.control_group))
        return sock

    # ------------------------------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        """Parameters and the map (through the cache), before any child starts."""
        from ..geometry.cache import load_or_build
        from ..writer.process import prepare_outputs

        cfg = self.config
        if cfg.workers.engine != "cpu" and cfg.workers.gpus == "all":  # every device CuPy sees, or one line now
            cfg = self.config = dataclasses.replace(cfg, workers=dataclasses.replace(
                cfg.workers, gpus=resolve_gpus(cfg.workers.gpus)))
            log.info("[workers] gpus = \"all\": devices %s", ",".join(str(g) for g in cfg.workers.gpus))
        params = cfg.load_params()
        for line in getattr(params, "warnings", ()):
            log.warning("%s", line)
        if cfg.transport.ring_slots == 0:  # auto: sized for the workers, once, before any child starts
            cfg = self.config = dataclasses.replace(cfg, transport=size_ring(cfg, params))
        t0 = time.perf_counter()
        imap, from_cache = load_or_build(params)
        self._map_key = imap.key  # joined workers check theirs against it
        dt = time.perf_counter() - t0
        if from_cache:
            log.info("map: loaded from the cache in %.2f s (%d x %d bins, key %s)", dt, imap.n_r, imap.n_eta,
                     imap.key[:12])
        else:
            log.info("map: built in %.2f s and cached (%d x %d bins, key %s)",
                     float(getattr(imap, "build_seconds", dt)), imap.n_r, imap.n_eta, imap.key[:12])
        prepare_outputs(cfg)  # a file a killed writer left: readable again (it is still not replaced)
        wide = [f"{key} {getattr(cfg.transport, key)}" for key in ENDPOINT_KEYS
                if not is_loopback(getattr(cfg.transport, key))]
        if wide:  # allowed by [transport] insecure_remote only (the configuration's checks)
            log.warning("[transport] insecure_remote = true: %s listen(s) beyond loopback WITHOUT authentication or "
                        "encryption", ", ".join(wide))
        log.info("run %s: source %s, %d workers, engine %s, output %s, control %s", cfg.run.run_id,
                 cfg.source.kind, cfg.workers.count, cfg.workers.engine, cfg.run.output_h5,
                 cfg.transport.control_endpoint)

    def _install_handlers(self) -> None:
        self._old = {}
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_signal)
        # multiprocessing's resource tracker (a child that outlives every other one to unlink what they leaked)
        # ignores SIGINT and SIGTERM but not SIGHUP: started with the stop signals blocked, it keeps SIGHUP blocked
        from multiprocessing import resource_tracker

        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            resource_tracker.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _restore_handlers(self) -> None:
        for sig, old in getattr(self, "_old", {}).items():
            try:
                signal.signal(sig, old)
            except (TypeError, ValueError):
                pass

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)  # handled by the main loop (never do work in a handler)

    def _spawn(self, mp, role: str, index: int = 0, kwargs: dict | None = None) -> Child:
        name = role if role != "worker" else f"worker-{index}"
        ready, stop = mp.Event(), mp.Event()
        kwargs = {"index": index} if role == "worker" else dict(kwargs or {})
        proc = mp.Process(target=child_main, args=(role, self.config, ready, stop, kwargs), name=f"ringstream-{name}",
                          daemon=False)
        blocked = set(STOP_SIGNALS)  # until the child's own handlers are in place (child_setup)
        # the ingest's frame copies bypass the CPU caches (glibc reads its tunables when the process starts)
        env = nontemporal_env() if role == "ingest" and bool(self.config.transport.nontemporal_copy) else {}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            with environment(env):
                proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child = Child(name=name, role=role, index=index, process=proc, ready=ready, stop=stop,
                      started=time.monotonic(), last_beat=time.monotonic())
        self.children.append(child)
        log.info("started %s (pid %d)", name, proc.pid)
        return child

    def _wait_ready(self, child: Child) -> str | None:
        """None once ``child`` is ready; else why not (it died, timed out, or a signal arrived)."""
        timeout = float(self.config.supervisor.ready_timeout)
        deadline = time.monotonic() + timeout
        while not child.ready.is_set():
            if not child.alive():
                child.process.join(0.1)
                return f"{child.name} (pid {child.pid}) {child.describe_exit()} during start"
            if self.signals:
                return "interrupted"
            if time.monotonic() > deadline:
                return f"{child.name} (pid {child.pid}) was not ready within {timeout:g} s"
            self._service(0.1)
        child.last_beat = time.monotonic()
        child.ready_seen = True
        return None

    def _start_and_loop(self) -> int:
        cfg = self.config
        mp = self.mp = multiprocessing.get_context("spawn")
        # The writer and the workers start together (they only connect or bind their own sockets); the ingest
        # starts once they are all ready, so that the first frames find every worker connected.
        consumers = [("writer", 0)] + [("worker", i) for i in range(int(cfg.workers.count))]
        for group in (consumers, [("ingest", 0)]):
            started = [self._spawn(mp, role, index) for role, index in group]
            problem = None
            for child in started:
                problem = self._wait_ready(child)
                if problem is not None:
                    break
            if problem is not None:
                if problem == "interrupted":
                    sig = self.signals[0]
                    log.warning("interrupted by %s during start; stopping", signal.Signals(sig).name)
                    self._orderly_stop()
                    return interrupted_exit(sig)
                log.error("%s; stopping the others", problem)
                self.failure = problem
                self._orderly_stop()
                return EXIT_CHILD_FAILED
        self.state = "running"
        self.t_running = time.monotonic()
        pids = ", ".join(f"{c.name}={c.pid}" for c in self.children)
        log.info("run %s: ready (%s)", cfg.run.run_id, pids)
        _call(self.notifier.ready, self._status_line())
        self.view = start_view(mp, cfg)
        return self._main_loop()

    # ------------------------------------------------------------------------------------------ main loop
    def _main_loop(self) -> int:
        cfg = self.config
        hb_timeout = float(cfg.supervisor.heartbeat_timeout)
        next_status = time.monotonic()
        self._mark_rate()
        while True:
            self._service(TICK)
            now = time.monotonic()
            _call(getattr(self.notifier, "watchdog_due", self.notifier.watchdog))
            if now >= next_status:
                self._update_rate()
                _call(self.notifier.status, self._status_line())
                next_status = now + STATUS_PERIOD

            # signals and stop requests
            while self.signals:
                sig = self.signals.pop(0)
                if self.state == "running":
                    self._begin_drain(f"{signal.Signals(sig).name}")
                else:
                    log.warning("second %s: stopping now", signal.Signals(sig).name)
                    self._hard_stop()
                    return interrupted_exit(sig)

            # children that exited
            for child in list(self.children):
                if child.alive() or child.exit_seen or child not in self.children:
                    continue
                child.process.join(0)
                child.exit_seen = True
                code = child.process.exitcode
                expected = code == 0 and (child.role in ("ingest", "writer") or child.stop.is_set())
                replace = child.role == "worker" or (child.role == "ingest" and code is not None and
                                                     (code < 0 or code in INGEST_RESTART_CODES))
                if not expected and replace and self.state in ("running", "draining"):
                    if (self._replace_worker if child.role == "worker" else self._replace_ingest)(child):
                        continue
                    self._orderly_stop()
                    return EXIT_CHILD_FAILED
                # a writer killed (a signal: kill -9, the OOM killer, a crash) or ended by an unexpected exception
                # is replaced; one that stopped on its outputs (a full disk: exit 3) or its input is not
                if not expected and child.role == "writer" and (code is None or code < 0 or code == EXIT_INTERNAL) \
                        and self.state in ("running", "draining"):
                    if self._replace_writer(child):
                        continue
                    self._orderly_stop()
                    return EXIT_CHILD_FAILED
                if not expected:
                    self.failure = _exit_text(child)
                    log.error("%s", self.failure)
                    self._orderly_stop()
                    return EXIT_CHILD_FAILED
                log.info("%s (pid %d) exited cleanly", child.name, child.pid)
            writer = self._child("writer")
            if writer is not None and writer.exit_seen:
                self.state = "stopping"
                self._orderly_stop()  # the run is complete: workers and ingest are told to stop, then joined
                return EXIT_OK

            # heartbeats
            for child in self.children:
                if child.exit_seen or not child.alive() or child.state == "done":
                    continue
                if not child.ready.is_set():  # a replacement worker starting (the first start waited in order)
                    if now - child.started > float(cfg.supervisor.ready_timeout):
                        self.failure = (f"{child.name} (pid {child.pid}) was not ready within "
                                        f"{cfg.supervisor.ready_timeout:g} s of its restart")
                        log.error("%s", self.failure)
                        self._orderly_stop()
                        return EXIT_CHILD_FAILED
                    continue
                if not child.ready_seen:  # a replacement just ready: its silence is counted from now, not from the
                    child.ready_seen = True  # beat it sent before a long start (a writer reopening its runs)
                    child.last_beat = max(child.last_beat, now)
                age = now - child.last_beat
                if age > hb_timeout and child.role in ("worker", "ingest") and self.state in ("running", "draining"):
                    log.error("%s (pid %d) stopped answering for %.1f s; killing it to replace it", child.name,
                              child.pid, age)
                    child.process.kill()
                    child.last_beat = now  # its exit is handled (and it replaced) on the next turn
                    continue
                if age > hb_timeout:
                    self.failure = f"{child.name} (pid {child.pid}) stopped answering for {age:.1f} s"
                    log.error("%s", self.failure)
                    self._orderly_stop()
                    return EXIT_CHILD_FAILED

            if self.remote is not None:  # joined workers gone silent: their frames go to the others
                for gone in self.remote.vanished(hb_timeout):
                    self._worker_gone(gone)

            # drain deadline
            if self.drain_deadline is not None and now > self.drain_deadline:
                left = ", ".join(c.name for c in self.children if c.alive())
                self.failure = (f"the drain did not finish within {cfg.supervisor.drain_timeout:g} s "
                                f"(still running: {left})")
                log.error("%s; stopping", self.failure)
                self._orderly_stop()
                return EXIT_CHILD_FAILED

    def _replace_worker(self, child: Child) -> bool:
        """``child``, a worker, died during the run: tell the writer and the ingest (``WorkerGone``) and start a
        replacement with the same index. False (with ``self.failure`` set) when it died ``MAX_RESTARTS`` times
        within ``RESTART_WINDOW_S``."""
        times = self._died(child.index)
        what = _exit_text(child)
        self._worker_gone(child)
        if self._dies_too_often(child, times, what):
            return False
        self.children.remove(child)
        self.worker_restarts += 1
        new = self._spawn(self.mp, "worker", child.index)
        log.error("%s; replaced by pid %d (restart %d of %s in %g s); the frames it held go to the other workers",
                  what, new.pid, len(times), child.name, RESTART_WINDOW_S)
        return True

    def _died(self, key: int | str) -> list[float]:
        """Record a death of worker ``key`` (its index), of the ingest or of the writer (``"ingest"``, ``"writer"``);
        its deaths within ``RESTART_WINDOW_S``."""
        now = time.monotonic()
        times = [t for t in self.deaths.get(key, []) if now - t < RESTART_WINDOW_S] + [now]
        self.deaths[key] = times
        return times

    def _dies_too_often(self, child: Child, times: list[float], what: str) -> bool:
        if len(times) < MAX_RESTARTS:
            return False
        self.failure = (f"{child.name} keeps dying: {len(times)} times in {RESTART_WINDOW_S:g} s (last: "
                        f"{what.split(' died: ', 1)[-1]}); stopping")
        log.error("%s", self.failure)
        return True

    def _worker_gone(self, child: Any) -> None:
        """Worker ``child`` (a :class:`Child` or a joined :class:`~.remote.RemoteWorker`) has ended: keep its totals
        and publish its ``WorkerGone`` (the writer fences it)."""
        for key in WORKER_TOTALS:
            self.retired[key] = self.retired.get(key, 0) + _num(child.counters, key)
        self.gone_notices.append((time.monotonic(), encode(WorkerGone(worker=child.index, pid=int(child.pid)))))
        self._publish_gone(self.gone_notices[-1:], 3)  # a SUB may miss one; the writer acts on each process once

    def _publish_gone(self, notices: list, times: int = 1) -> None:
        if self.peaks is None:
            return
        for _, gone in notices:
            for _ in range(times):
                try:
                    self.peaks.pub.send_multipart(gone, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _republish_gone(self) -> None:
        """Every ``GONE_AGAIN_S``, the WorkerGone notices of the last ``RESTART_WINDOW_S`` again: a replacement
        writer (which passes them on to the ingest) may have started after a worker died, and a frame that worker
        held is sent again only once the ingest knows (the writer and the ingest act on each process once)."""
        now = time.monotonic()
        if now < self.next_gone_again:
            return
        self.next_gone_again = now + GONE_AGAIN_S
        self.gone_notices = [(t, g) for t, g in self.gone_notices if now - t < RESTART_WINDOW_S]
        self._publish_gone(self.gone_notices)

    def _replace_ingest(self, child: Child) -> bool:
        """``child``, the ingest, died during the run: end every worker at once (they hold frames of its ring), publish
        their ``WorkerGone``, and start new workers and a new ingest that resumes from the journal (with the
        workers' pids, so that the writer answers it once it ignores them). False (with ``self.failure`` set) when
        it died ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``."""
        times = self._died("ingest")
        what = _exit_text(child)
        for key in child.counters:
            if key == "resent" or key.startswith("dropped_"):
                self.retired_ingest[key] = self.retired_ingest.get(key, 0) + _num(child.counters, key)
        if self._dies_too_often(child, times, what):
            return False
        workers = [c for c in self.children if c.role == "worker" and not c.exit_seen]
        for w in workers:
            stop_now(w.process)
        for w in workers:
            w.process.join(1.0)
            if w.alive():
                w.process.kill()
                w.process.join(2.0)
            w.exit_seen = True
            self._worker_gone(w)
            self.children.remove(w)
        self.children.remove(child)
        self.ingest_restarts += 1
        for w in workers:
            self._spawn(self.mp, "worker", w.index)
        new = self._spawn(self.mp, "ingest", 0, {"resume": True, "pids": [int(w.pid) for w in workers]})
        if self.state == "draining":
            new.stop.set()  # it sends what the writer lacks and ends the stream
        log.error("%s; replaced by pid %d (restart %d of the ingest in %g s), with new workers; the frames the writer "
                  "lacks are sent again", what, new.pid, len(times), RESTART_WINDOW_S)
        return True

    def _replace_writer(self, child: Child) -> bool:
        """``child``, the writer, died during the run: start a replacement that continues the open runs in their
        files (the workers send it again what it lacks, through the ingest). False (with ``self.failure`` set) when
        it died ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``."""
        times = self._died("writer")
        what = _exit_text(child)
        if self._dies_too_often(child, times, what):
            return False
        self.children.remove(child)
        self.writer_restarts += 1
        ingest = self._child("ingest")
        extra = {"resume": True}
        if ingest is not None and ingest.exit_seen and ingest.process.exitcode == 0:
            extra["stream_end"] = int(_num(ingest.counters, "sent"))  # nobody will send the end again
        new = self._spawn(self.mp, "writer", 0, extra)
        log.error("%s; replaced by pid %d (restart %d of the writer in %g s): it continues the open runs in their "
                  "files, and gets again from the workers what was not flushed", what, new.pid, len(times),
                  RESTART_WINDOW_S)
        return True

    def _begin_drain(self, why: str) -> None:
        log.info("%s: draining (ingest stops, the frames already sent are finished; a second signal stops now)",
                 why)
        self.state = "draining"
        self.stop_requested_by = why
        _call(self.notifier.stopping, f"draining after {why}")
        ingest = self._child("ingest")
        if ingest is not None:
            ingest.stop.set()
        self.drain_deadline = time.monotonic() + float(self.config.supervisor.drain_timeout)

    def _child(self, name: str) -> Child | None:
        for c in self.children:
            if c.name == name:
                return c
        return None

    # ------------------------------------------------------------------------------------------ sockets
    def _service(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a message or a child exit; handle every waiting message."""
        sentinels = {c.process.sentinel: c for c in self.children if not c.exit_seen}
        for fd in sentinels:
            self.poller.register(fd, zmq.POLLIN)
        try:
            events = dict(self.poller.poll(int(timeout * 1000)))
        except zmq.ZMQError as exc:
            if exc.errno != getattr(zmq, "EINTR", 4):
                raise
            events = {}
        finally:
            for fd in sentinels:
                self.poller.unregister(fd)
        if self.events in events:
            self._drain_events()
        if self.control in events:
            self._drain_control()
        if self.remote is not None and self.remote.join in events:
            self.remote.drain(self.state, self._params_text, self._map_key)
        if self.remote is not None and self.remote.monitor in events:
            self.remote.drain_monitor()
        if self.peaks is not None:
            self.peaks.tick(self._ingest_running())
            self._republish_gone()

    def _drain_events(self) -> None:
        while True:
            try:
                got = receive(self.events, self.rejects_events, (Heartbeat, PeakUpdate), flags=zmq.NOBLOCK,
                              where="on the events socket")
            except zmq.Again:
                return
            if got is None:
                continue
            msg = got[0]
            if isinstance(msg, PeakUpdate):
                if self.peaks is not None:
                    self.peaks.on_confirmed(msg)  # the ingest fixed where a peak-list change starts
                continue
            if self.remote is not None and self.remote.on_heartbeat(msg):
                continue
            name = msg.role if msg.role != "worker" else f"worker-{msg.index}"
            child = self._child(name)
            if child is None or (child.pid is not None and msg.pid != child.pid):
                continue
            child.last_beat = time.monotonic()
            child.state = str(msg.state)
            child.counters = dict(msg.counters)

    def _drain_control(self) -> None:
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, rest = frames[0], frames[1:]
            envelope = []
            if rest and rest[0] == b"":
                envelope, rest = [b""], rest[1:]
            try:
                msg, _ = decode(rest)
                if not isinstance(msg, ControlRequest):
                    raise ProtocolError("unknown_type", f"expected a request, got {type(msg).__name__}")
            except ProtocolError as exc:
                self.rejects_control.record(exc)
                reply = ControlReply(ok=False, error=f"rejected ({exc.kind}): {exc}")
            else:
                if msg.command == "peaks" and self.peaks is not None:
                    reply = self.peaks.request(dict(msg.args), (identity, envelope), self._ingest_running())
                    if reply is None:
                        continue  # answered once the ingest confirms (PeakControl.on_confirmed)
                else:
                    reply = self._answer(msg)
            try:
                self.control.send_multipart([identity, *envelope, *encode(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away

    def _answer(self, req: ControlRequest) -> ControlReply:
        if req.command == "status":
            return ControlReply(ok=True, data=self.status())
        if req.command == "stop":
            if self.state == "running":
                self._begin_drain("stop request")
                return ControlReply(ok=True, data={"state": self.state})
            if self.state == "starting":
                self.signals.append(signal.SIGTERM)
                return ControlReply(ok=True, data={"state": "stopping"})
            return ControlReply(ok=True, data={"state": self.state})
        if req.command == "runs":
            return self._runs(dict(req.args))
        return ControlReply(ok=False, error=f"unknown command {req.command!r}; expected 'status', 'stop', 'peaks' "
                                            f"or 'runs'")

    # ------------------------------------------------------------------------------------------ runs
    def _runs(self, args: dict) -> ControlReply:
        """``ringstream runs start|stop|list``: start and stop go to the ingest (on the peaks socket, which it
        subscribes to), which ends the current run at once; list reads the index of runs."""
        action = str(args.get("action", ""))
        if action == "list":
            return ControlReply(ok=True, data={"runs": self._run_index().runs()})
        if action not in ("start", "stop"):
            return ControlReply(ok=False, error=f"runs: unknown action {action!r}; expected start, stop or list")
        if self.peaks is None or not self._ingest_running():
            return ControlReply(ok=False, error="runs: the ingest is not running")
        self._run_seq += 1
        meta = args.get("meta") or {}
        request = ControlRequest(command="runs", args={"seq": self._run_seq, "action": action,
                                                       "name": str(args.get("name", "")), "meta": dict(meta)})
        for _ in range(3):  # a SUB that just joined may miss one; the ingest takes each seq once
            try:
                self.peaks.pub.send_multipart(encode(request), zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                return ControlReply(ok=False, error=f"runs: cannot reach the ingest ({exc})")
        log.info("runs %s%s requested", action, f" {args.get('name')!r}" if args.get("name") else "")
        return ControlReply(ok=True, data={"action": action, "name": str(args.get("name", ""))})

    def _run_index(self):
        from ..runs.index import RunIndex
        from ..runs.state import state_dir_of

        return RunIndex.in_state_dir(state_dir_of(self.config.run))

    def _run_entry(self, number: int) -> dict:
        """The index's entry of run ``number`` (read once per run: the STATUS= line asks every second)."""
        if self._run_cache[0] != number:
            try:
                entry = next((r for r in self._run_index().runs() if r.get("run") == number), {})
            except Exception:  # the status never fails for the index
                entry = {}
            self._run_cache = (number, entry)
        return self._run_cache[1]

    def _runs_status(self) -> dict:
        """The current run (from the writer's heartbeat and the index) and the last runs (from the index)."""
        writer = self._child("writer")
        wc = writer.counters if writer else {}
        try:
            runs = self._run_index().runs()
        except Exception:  # the status never fails for the index
            runs = []
        number = int(_num(wc, "run_number"))
        current = {}
        if number:
            entry = next((r for r in runs if r.get("run") == number), {})
            current = {"run": number, "name": entry.get("name", ""), "file": (entry.get("files") or {}).get("h5", ""),
                       "frames": int(_num(wc, "run_frames")), "frames_per_s": round(self.rate, 2)}
        last = [{k: r.get(k) for k in ("run", "name", "status", "frames", "files", "reason")}
                for r in runs if r.get("run") != number][-5:]
        closed = [r for r in runs if r.get("status") != "open"]
        return {"current": current, "last": last, "failed": int(_num(wc, "runs_failed")),
                "complete": int(_num(wc, "runs_complete")),
                "last_failed": bool(closed and closed[-1].get("status") == "failed")}

    # ------------------------------------------------------------------------------------------ peaks
    def _open_peaks(self, ctx) -> None:
        """Bind the peaks PUB socket and set up :class:`~.peaks.PeakControl` (docs/DAEMON.md, "Peak fitting
        and peak-list updates")."""
        from .peaks import PeakControl

        t = self.config.transport
        try:
            pub = make_socket(ctx, zmq.PUB, t.peaks_endpoint, bind=True, hwm=1000)
        except zmq.ZMQError as exc:
            raise ConfigError(f"[transport] peaks_endpoint {t.peaks_endpoint}: cannot bind ({exc})") from None
        self.peaks = PeakControl(self.config, self.config.load_params(), pub, self._reply_later)

    def _reply_later(self, waiter, reply: ControlReply) -> None:
        identity, envelope = waiter
        try:
            self.control.send_multipart([identity, *envelope, *encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away

    def _ingest_running(self) -> bool:
        if self.state == "starting":
            return True  # a request made now is published until the ingest, once up, confirms it
        ingest = self._child("ingest")
        return ingest is not None and ingest.alive() and ingest.state != "done" and self.state in ("starting",
                                                                                                    "running")

    # ------------------------------------------------------------------------------------------ status
    def totals(self) -> dict[str, float]:
        ingest = self._child("ingest")
        writer = self._child("writer")
        ic = ingest.counters if ingest else {}
        wc = writer.counters if writer else {}
        workers = [c for c in self.children if c.role == "worker"]
        dropped = {k[len("dropped_"):]: int(v) for k, v in ic.items() if k.startswith("dropped_")}
        for k, v in self.retired_ingest.items():  # the ingests that died
            if k.startswith("dropped_"):
                dropped[k[len("dropped_"):]] = dropped.get(k[len("dropped_"):], 0) + int(v)
        if _num(wc, "dropped_output_failed"):  # frames of runs whose outputs failed (a full disk ...)
            dropped["output_failed"] = int(_num(wc, "dropped_output_failed"))
        errors = 0
        for c in self.children:
            errors += sum(int(_num(c.counters, k)) for k in c.counters if k.startswith("protocol_errors_"))
        for rl in (self.rejects_events, self.rejects_control):
            errors += sum(rl.counters().values())
        refused = sum(int(_num(c.counters, "curve_refused")) for c in self.children)
        if self.remote is not None:
            workers = workers + list(self.remote.workers.values())
            errors += self.remote.rejected_joins
            refused += self.remote.refused
        rejected = wc.get("rejected")
        if rejected is None:
            rejected = sum(_num(c.counters, "rejected") for c in workers) + self.retired.get("rejected", 0)
        return {
            "received": int(_num(ic, "received")),
            "sent": int(_num(ic, "sent")),
            "integrated": int(sum(_num(c.counters, "integrated") for c in workers) + self.retired.get("integrated", 0)),
            "written": int(_num(wc, "written")),
            "rejected": int(rejected),
            "dropped": int(sum(dropped.values())),
            "dropped_by_reason": dropped,
            "protocol_errors": int(errors),
            "worker_restarts": int(self.worker_restarts),
            "writer_restarts": int(self.writer_restarts),
            "ingest_restarts": int(self.ingest_restarts),
            "resent": int(_num(ic, "resent") + self.retired_ingest.get("resent", 0)),
            "duplicates": int(_num(wc, "duplicates")),
            "refused": int(refused),
        }

    def _mark_rate(self) -> None:
        self._rate_mark = (time.monotonic(), float(self.totals()["written"]))

    def _update_rate(self) -> None:
        now, written = time.monotonic(), float(self.totals()["written"])
        if self._rate_mark is not None:
            t0, w0 = self._rate_mark
            if now - t0 >= 0.5:
                self.rate = (written - w0) / (now - t0)
                self._rate_mark = (now, written)
        else:
            self._rate_mark = (now, written)

    def status(self) -> dict[str, Any]:
        """The reply to a ``status`` request (JSON-ready)."""
        now = time.monotonic()
        cfg = self.config
        children = {}
        for c in self.children:
            children[c.name] = {
                "pid": c.pid,
                "alive": c.alive(),
                "heartbeat_age": round(now - c.last_beat, 3),
                "state": c.state,
                "exitcode": c.process.exitcode,
                "counters": dict(c.counters),
                "cpus": _cpus_of(c.pid) if c.alive() else "",
            }
        t = cfg.transport
        return {
            "state": self.state,
            "run_id": cfg.run.run_id,
            "pid": os.getpid(),
            "uptime": round(now - self.t_start, 3),
            "children": children,
            "totals": self.totals(),
            "frames_per_s": round(self.rate, 2),
            "output": os.path.abspath(cfg.run.output_h5),
            "source": cfg.source.kind,
            "source_channel": (cfg.source.pva_channel if cfg.source.kind == "pva" else
                               f"{cfg.source.midas_listen}:{cfg.source.midas_port}"
                               if cfg.source.kind == "midas_socket" else
                               cfg.source.dectris_stream if cfg.source.kind == "dectris" else ""),
            "engine": cfg.workers.engine,
            "peaks": self.peaks.status() if self.peaks is not None else {},
            "runs": self._runs_status(),
            "supervisor": {**self.rejects_events.counters(),
                           **{k.replace("protocol_errors_", "control_protocol_errors_"): v
                              for k, v in self.rejects_control.counters().items()}},
            "endpoints": {k: getattr(t, k) for k in ("frames_endpoint", "results_endpoint", "release_endpoint",
                                                    "events_endpoint", "control_endpoint", "view_endpoint")},
            "remote": self.remote.status() if self.remote is not None else {},
            "view": {"enabled": bool(cfg.view.enabled), "listen": cfg.view.listen,
                     "alive": bool(self.view is not None and self.view.is_alive())},
        }

    def _status_line(self) -> str:
        tot = self.totals()
        writer = self._child("writer")
        wc = writer.counters if writer else {}
        run = int(_num(wc, "run_number"))
        where = "between runs"
        if run:
            entry = self._run_entry(run)
            name = f" {entry.get('name')!r}" if entry.get("name") else ""
            where = (f"run {run}{name} {(entry.get('files') or {}).get('h5', '')} "
                     f"({int(_num(wc, 'run_frames'))} frames)")
        return (f"{self.state}: {where}; {tot['written']} frames written, {self.rate:.1f} frames/s, "
                f"integrated {tot['integrated']}, rejected {tot['rejected']}, dropped {tot['dropped']}, "
                f"runs complete {int(_num(wc, 'runs_complete'))}, failed {int(_num(wc, 'runs_failed'))}")

    # ------------------------------------------------------------------------------------------ stopping
    def _join(self, child: Child, timeout: float, waited: float | None = None) -> None:
        """Join ``child`` within ``timeout`` s; then the stop-now signal (the children ignore SIGTERM while the
        supervisor lives), then kill."""
        proc = child.process
        if proc.pid is None:
            return
        proc.join(timeout)
        if proc.is_alive():
            log.warning("%s (pid %d) did not exit within %.1f s of its stop; stopping it now (%s)", child.name,
                        proc.pid, timeout if waited is None else waited, STOP_NOW_SIGNAL.name)
            stop_now(proc)
            proc.join(2.0)
        if proc.is_alive():
            log.warning("%s (pid %d) ignored %s; killing it", child.name, proc.pid, STOP_NOW_SIGNAL.name)
            proc.kill()
            proc.join(2.0)
        elif not child.exit_seen:
            log.info("%s (pid %d) stopped (exit code %s)", child.name, proc.pid, proc.exitcode)
        child.exit_seen = True

    def _join_serving(self, child: Child, timeout: float) -> None:
        """Like :meth:`_join`, but keep answering heartbeats and control requests while waiting."""
        deadline = time.monotonic() + timeout
        while child.alive() and time.monotonic() < deadline:
            if self.signals and self.state != "starting":
                sig = self.signals.pop(0)
                log.warning("%s while stopping: stopping now", signal.Signals(sig).name)
                raise _StopNow(sig)
            self._service(min(TICK, max(0.0, deadline - time.monotonic())))
        self._join(child, 0.1, waited=timeout)

    def _orderly_stop(self) -> None:
        """Stop ingest, then the workers, then the writer (last: it flushes and closes the file)."""
        if self.state == "running":
            _call(self.notifier.stopping, f"stopping: {self.failure or 'the run is complete'}")
        if self.state != "starting":
            self.state = "stopping"
        try:
            for role in ("ingest", "worker", "writer"):
                group = [c for c in self.children if c.role == role]
                for c in group:
                    c.stop.set()
                for c in group:
                    self._join_serving(c, JOIN_TIMEOUT[role])
        except _StopNow as stop_now:
            self.hard_exit = interrupted_exit(stop_now.sig)
            self._hard_stop()
        self._drain_events()  # the children's last heartbeats carry the final counters

    def _hard_stop(self) -> None:
        """Second signal: every ``stop`` set, ``KILL_GRACE`` s, then the stop-now signal and kill."""
        self.state = "stopping"
        for c in self.children:
            c.stop.set()
        deadline = time.monotonic() + KILL_GRACE
        for c in self.children:
            c.process.join(max(0.0, deadline - time.monotonic()))
        for c in self.children:
            if c.alive():
                self._join(c, 0.0, waited=KILL_GRACE)
        self._drain_events()

    def _kill_leftovers(self) -> None:
        for c in self.children:
            if c.process.pid is not None and c.alive():
                log.warning("%s (pid %d) still running at exit; killing it", c.name, c.pid)
                c.process.kill()
                c.process.join(2.0)

    def final_line(self, seconds: float) -> str:
        tot = self.totals()
        by_reason = tot["dropped_by_reason"]
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items())) or "ring_full=0"
        fps = tot["written"] / seconds if seconds > 0 else 0.0
        return (f"ringstream: run {self.config.run.run_id} finished: received {tot['received']}, "
                f"integrated {tot['integrated']}, written {tot['written']}, rejected {tot['rejected']}, "
                f"dropped {tot['dropped']} ({reasons}), worker restarts {tot['worker_restarts']}, writer restarts "
                f"{tot['writer_restarts']}, ingest restarts {tot['ingest_restarts']}, re-sent {tot['resent']}, "
                f"{seconds:.1f} s, {fps:.1f} frames/s")


class _StopNow(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


def run_daemon(config: Any) -> int:
    """Run the supervisor for ``config``; print the final counts line on stderr; return the exit code."""
    sup = Supervisor(config)
    code = EXIT_OK
    try:
        code = sup.run()
    except RingstreamError:
        raise
    finally:
        if sup.children:  # a run that started prints its counts, whatever the ending
            t0 = sup.t_running if sup.t_running is not None else sup.t_start
            print(sup.final_line(time.monotonic() - t0), file=sys.stderr, flush=True)
    return code

"""What every process of the daemon shares: child setup, heartbeats, receiving and counting bad messages.

The roles (ingest, workers, writer) and the supervisor all use this module and none of them imports another role:

- :func:`run_child` is the body of each role's ``run(config, ready, stop)``: :func:`child_setup` (stderr logging
  with the role in every line, the stop signals left to the supervisor while it lives, the end of the process when
  it dies), then the role's loop; a :class:`~ringstream.errors.RingstreamError` becomes one error line and its
  exit code.
- :func:`stop_now`: how the supervisor ends a child at once (``STOP_NOW_SIGNAL``; the child's ``finally`` blocks
  run).
- :class:`HeartbeatSender` sends the role's ``Heartbeat`` (state and counters) to the supervisor's events socket.
- :func:`receive` takes one message from a socket and counts what is not a valid message of the expected types in
  a :class:`~ringstream.transport.sockets.RejectLog` (``protocol_errors_<kind>``), so a bad peer never stops a loop.
- :func:`nontemporal_env` and :func:`environment`: the environment the supervisor starts the ingest process with.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait

import zmq

from ringstream.errors import RingstreamError
from ringstream.protocol import Heartbeat, Message, ProtocolError
from ringstream.transport.sockets import RejectLog, recv_message, send_message

# --------------------------------------------------------------------------------------------- process setup

#: the signals that stop the daemon. To the supervisor the first one means "drain", a second "stop now"; a child
#: ignores them while the supervisor lives (a signal to the whole process group, from a shell's ``kill %1``, a
#: closed terminal or systemd, must drain, not end every child at once) and ends when it is gone
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: what the supervisor sends one child to end it now (SystemExit: its ``finally`` blocks run); SIGKILL follows
#: when it does not end
STOP_NOW_SIGNAL: signal.Signals = getattr(signal, "SIGUSR1", signal.SIGTERM)

#: ``prctl(2)`` option: the name of the calling thread (the process's name when called from its main thread)
_PR_SET_NAME = 15
#: ``prctl(2)`` option: the signal the calling process gets when its parent ends (Linux)
_PR_SET_PDEATHSIG = 1


def child_setup(config, role: str) -> None:
    """Per-child process setup: stderr logging with the role in every line, and the signals.

    The supervisor is the process that started this one (``multiprocessing.parent_process()``). While it lives,
    ``STOP_SIGNALS`` are ignored here: the supervisor drains the daemon and stops each child through its ``stop``
    event, or at once through ``STOP_NOW_SIGNAL``. Once it is gone (killed), a stop signal raises SystemExit so that
    ``finally`` blocks run (the ring is unlinked, the HDF5 file closed), and the supervisor's end itself brings one:
    :func:`end_with_supervisor`. A process not started by ``multiprocessing`` has no supervisor: a stop signal ends
    it. Signals need the main thread; elsewhere only the logging is set up."""
    level = config.logging.level
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=getattr(logging, level, logging.INFO),
            format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
        )
    else:
        root.setLevel(getattr(logging, level, logging.INFO))
    if threading.current_thread() is not threading.main_thread():
        return
    parent = multiprocessing.parent_process()
    supervisor = parent.pid if parent is not None else None
    handler = stop_signal_handler(supervisor)
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    signal.signal(STOP_NOW_SIGNAL, _exit_on_signal)
    # the supervisor starts its children with the stop signals blocked: one sent meanwhile reaches the handler now
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*STOP_SIGNALS, STOP_NOW_SIGNAL})
    if supervisor is not None:
        end_with_supervisor(supervisor, parent.sentinel)


def stop_signal_handler(supervisor: int | None) -> Callable:
    """The handler of ``STOP_SIGNALS`` in a child of ``supervisor`` (a pid; None: no supervisor): nothing while
    the supervisor is this process's parent, else SystemExit with the code ``128 + signal``."""

    def handler(signum, frame) -> None:
        if supervisor is not None and os.getppid() == supervisor and not _PIPE_CLOSED.is_set():
            return
        _exit_on_signal(signum, frame)

    return handler


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def end_with_supervisor(supervisor: int, sentinel: int | None = None) -> None:
    """End this process (SIGTERM to itself, which :func:`stop_signal_handler` turns into SystemExit) when the
    ``supervisor`` ends, however it ends.

    On Linux the kernel sends the signal: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``. It comes when the *thread* that
    started this process ends, so the supervisor starts its children from its main thread. The supervisor may
    have ended before the prctl: then this process already has another parent and ends now. Elsewhere a daemon
    thread waits on ``sentinel``, the read end of a pipe whose write end only the supervisor holds
    (``multiprocessing.parent_process().sentinel``), and sends the signal when the pipe closes; without a
    sentinel there is no fallback, and the supervisor's stop signals and ``stop_now`` still work."""
    if not _set_parent_death_signal(signal.SIGTERM) and sentinel is not None:
        threading.Thread(target=_signal_when_closed, args=(sentinel,), name="supervisor-watch", daemon=True).start()
    if os.getppid() != supervisor:
        raise SystemExit(128 + signal.SIGTERM)


def set_process_name(name: str) -> bool:
    """Name the calling process ``name`` (its first 15 bytes: ``prctl(PR_SET_NAME)``), as ``top``, ``ps -o comm`` and
    ``/proc/PID/comm`` show it, so that an operator tells the ingest, each worker and the writer apart (they are all
    ``python`` otherwise). False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through the C library; False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def _signal_when_closed(sentinel: int) -> None:
    wait([sentinel])
    # the dying supervisor's descriptors close before its children are given another parent: getppid() may still
    # name it for a moment, so the handler is told here that it is gone
    _PIPE_CLOSED.set()
    os.kill(os.getpid(), signal.SIGTERM)


#: set by the watching thread once the supervisor's pipe has closed (where there is no prctl)
_PIPE_CLOSED = threading.Event()


def supervisor_gone() -> bool:
    """True in a child whose supervisor (the process that started it) has ended: what is still queued for the
    supervisor and the other children will never be read, so closing sockets need not linger."""
    parent = multiprocessing.parent_process()
    return parent is not None and os.getppid() != parent.pid


def stop_now(process) -> None:
    """End the child ``process`` (a started ``multiprocessing.Process``) at once: ``STOP_NOW_SIGNAL``, which
    :func:`child_setup` turns into SystemExit (its ``finally`` blocks run; a child still starting, before
    :func:`child_setup`, ends by the signal's default action). Follow with ``process.kill()`` if it lingers."""
    try:
        os.kill(process.pid, STOP_NOW_SIGNAL)
    except ProcessLookupError:
        pass


def run_child(config, role: str, body: Callable[[], int], logger: logging.Logger, prefix: str = "") -> int:
    """A role's entry point: :func:`child_setup` for ``role`` (the name in every log line), then ``body()``; a
    :class:`~ringstream.errors.RingstreamError` is logged as one line (after ``prefix``) and gives its exit code."""
    child_setup(config, role)
    profile_dir = os.environ.get(PROFILE_ENV, "")
    prof = None
    if profile_dir:  # a benchmark's diagnosis: the role's main thread under cProfile, dumped when it ends
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        return body()
    except RingstreamError as exc:
        logger.error("%s%s", prefix, exc)
        return int(getattr(exc, "exit_code", 1))
    finally:
        if prof is not None:
            prof.disable()
            try:
                prof.dump_stats(os.path.join(profile_dir, f"{role}-{os.getpid()}.prof"))
            except OSError as exc:
                logger.warning("%s: profile not written: %s", PROFILE_ENV, exc)


#: names a folder: every role's main thread runs under cProfile and writes ``ROLE-PID.prof`` there when it ends
#: (``bench/profile_roles.py``; costs the role's speed, for diagnosis only)
PROFILE_ENV = "RINGSTREAM_PROFILE_DIR"


# ------------------------------------------------------------------------------------------------ heartbeats


class HeartbeatSender:
    """Sends a Heartbeat every ``interval`` s (never blocking: a full queue drops the beat)."""

    def __init__(self, sock, role: str, index: int, interval: float) -> None:
        self.sock, self.role, self.index = sock, role, int(index)
        self.interval = max(0.01, float(interval))
        self.last = 0.0

    @contextlib.contextmanager
    def beating(self, counters: dict, state: str = "running"):
        """Beat with ``counters`` from a background thread while the block runs (a long close must not look like a
        hang to the supervisor); the block must not use this sender meanwhile."""
        done = threading.Event()

        def loop() -> None:
            while not done.wait(self.interval):
                self.beat(counters, state=state, force=True)

        thread = threading.Thread(target=loop, name=f"{self.role}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def beat(self, counters, state: str = "running", force: bool = False) -> None:
        """Send a beat if one is due (or ``force``); ``counters`` is a dict or a function returning one, called
        only when a beat goes out (so a hot loop can pass its snapshot method for free)."""
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if callable(counters):
            counters = counters()
        msg = Heartbeat(role=self.role, index=self.index, pid=os.getpid(), state=state, time=time.time(),
                        counters=dict(counters))
        try:
            send_message(self.sock, msg, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass


# ------------------------------------------------------------------------------------------------- receiving


def receive(sock: zmq.Socket, rejects: RejectLog, expected: type | tuple[type, ...] | None = None, *,
            flags: int = 0, copy: bool = False, where: str = "") -> tuple[Message, list] | None:
    """The next message on ``sock`` and its buffers (:func:`~ringstream.transport.sockets.recv_message`), or None
    when it was rejected: it does not decode, or it is not an instance of ``expected`` (None: any message). A
    rejected message is consumed, counted and logged by ``rejects``; the socket stays usable. ``where`` names the
    socket in the rejection of an unexpected type (``"on the frames socket"``). With ``flags=zmq.NOBLOCK``,
    ``zmq.Again`` when nothing is waiting."""
    try:
        msg, buffers = recv_message(sock, flags, copy)
    except ProtocolError as exc:
        rejects.record(exc)
        return None
    if expected is not None and not isinstance(msg, expected):
        what = f"unexpected {type(msg).__name__} message" + (f" {where}" if where else "")
        rejects.record(ProtocolError("unknown_type", what))
        return None
    return msg, buffers


# ---------------------------------------------------------------------------------------- a child's environment

#: glibc's tunable: copies larger than this many bytes use non-temporal (cache-bypassing) stores
NONTEMPORAL_TUNABLE = "glibc.cpu.x86_non_temporal_threshold"
#: the threshold the ingest runs with (``[transport] nontemporal_copy``): every frame copy, none of the small ones
NONTEMPORAL_THRESHOLD = 0x40000  # 256 KiB


def nontemporal_env(environ=None) -> dict[str, str]:
    """The environment the ingest process starts with so that its frame copies bypass the CPU caches.

    glibc's memcpy switches to non-temporal stores only above ``x86_non_temporal_threshold``, by default 3/4 of the
    shared cache, so on a host with a large last-level cache every frame copy goes through the cache, reading each
    destination line before writing it (3 bytes of memory traffic per byte copied, where 2 suffice) and evicting
    what the other processes use (``bench/host_copy.py`` measures the difference). A frame in its slot is next read
    by the GPU's DMA or another process, never by this one from its cache, so bypassing the cache costs nothing.
    glibc reads tunables only at start-up, so the supervisor passes them to the ingest process it starts. A
    threshold the user already set in ``GLIBC_TUNABLES`` is kept; elsewhere (another libc, another CPU) the variable
    is ignored. Returns the variables to set (empty when nothing changes)."""
    environ = os.environ if environ is None else environ
    current = environ.get("GLIBC_TUNABLES", "")
    if NONTEMPORAL_TUNABLE in current:
        return {}
    item = f"{NONTEMPORAL_TUNABLE}={NONTEMPORAL_THRESHOLD:#x}"
    return {"GLIBC_TUNABLES": f"{current}:{item}" if current else item}


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """``os.environ`` with ``env`` set for the block (a process started inside inherits it), then as it was."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

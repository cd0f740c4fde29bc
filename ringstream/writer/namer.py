"""Name a run's omega-sum groups while the run goes on, in a process of its own (``python -m
ringstream.writer.namer``), so that the close only copies the names in.

Each group of ``/entry/omega_sum/I`` gets its own dataset at the end of a run (``named/LastFrameNumber_<k>``: a
virtual dataset of its row, with the zarr.zip attributes; :func:`~ringstream.writer.repair.link_omega_groups`).
HDF5 cannot add objects to a file in SWMR mode, so they were all made at the close: ~75 µs a group on the 2-core CI box,
~115 µs on a GPU host of the benchmarks (20,000 groups: 2.3 s after the last frame). Made in another file they can be made while the run
streams; HDF5 then copies the whole group into the results file (``H5Ocopy``: ~34 and ~52 µs a group on those
machines), each virtual dataset keeping its source (``"."``: the file that holds it, which is then the results
file).

:class:`Namer` is the writer's side. It starts the process once a run has :data:`MIN_GROUPS` groups (fewer are
named at the close as before: a process costs more than it saves), sends it the groups written at each flush
(:meth:`Namer.add`: msgpack on the process's stdin, never blocking the writer: what the pipe does not take waits
for the next call), and at the close ends the stream (:meth:`Namer.finish`) and gets back the scratch file, named
``.<results file name>.naming-<writer pid>`` beside it, with every group sent. Anything else (the process failed,
fell behind by more than :data:`MAX_BACKLOG` groups or exited with another count) gives None: the close names the
groups itself, as it did. The process ignores SIGINT and SIGTERM (started with them blocked; a stop sent to the daemon's
process group is the writer's to handle: it closes the run, and with it the naming) and ends with its input: reading an end of input
without the writer's last message (the writer died), it removes its file; a file left by a killed process is removed at the next start of that output
(:func:`~ringstream.writer.hdf5.remove_stale_making`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np

log = logging.getLogger(__name__)

#: a run's groups are named in a process of their own from this many on (fewer: at the close, ~75 ms per 1,000)
MIN_GROUPS = 1000
#: groups the process may fall behind by before it is given up (the close then names them itself)
MAX_BACKLOG = 50_000
#: how long the close waits for the process to name what it was sent, at most
FINISH_TIMEOUT_S = 60.0
#: the pipe's size asked for (Linux ``F_SETPIPE_SZ``): ~12,000 groups' messages without a wait
PIPE_BYTES = 1 << 20

_COLUMNS = ("rows", "names", "n_frames", "last_frame", "first_omega", "last_omega")


def scratch_path(path: Path, pid: int | None = None) -> Path:
    """The file the groups of results file ``path`` are named in while its writer (``pid``) runs."""
    return path.with_name(f".{path.name}.naming-{os.getpid() if pid is None else pid}")


class Namer:
    """The writer's side of the naming process of one results file ``path`` whose sums are ``[n_r, n_eta]`` of
    ``dtype`` (see the module docstring)."""

    def __init__(self, path: Path, n_r: int, n_eta: int, dtype: str) -> None:
        self.path = Path(path)
        self.scratch = scratch_path(self.path)
        self.sent = 0
        self._backlog = bytearray()
        self._proc: subprocess.Popen | None = None
        self.failed = ""
        # the stop signals blocked while it starts: it inherits the mask (they stay pending there, never delivered),
        # so that a stop sent to the process group while it starts up does not end it; here they come after
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.scratch.unlink(missing_ok=True)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ringstream.writer.namer", str(self.scratch), str(int(n_r)), str(int(n_eta)),
                 str(np.dtype(dtype).str)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True)
            fd = self._proc.stdin.fileno()
            try:
                fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
            except OSError:  # (a smaller pipe only means more waiting in the backlog)
                pass
            os.set_blocking(fd, False)
        except OSError as exc:
            self._give_up(f"cannot start ({exc})")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def add(self, rows, names, n_frames, last_frame, first_omega, last_omega) -> None:
        """Send the groups just written (their rows of ``/entry/omega_sum``, names and zarr.zip attributes)."""
        if self._proc is None:
            return
        batch = {"rows": [int(r) for r in rows], "names": [str(n) for n in names],
                 "n_frames": [int(v) for v in n_frames], "last_frame": [int(v) for v in last_frame],
                 "first_omega": [float(v) for v in first_omega], "last_omega": [float(v) for v in last_omega]}
        self._backlog += msgpack.packb(batch)
        self.sent += len(batch["rows"])
        self._pump()
        if self._proc is not None and len(self._backlog) > MAX_BACKLOG * 64:
            self._give_up(f"{len(self._backlog)} bytes not taken: it fell behind")

    def _pump(self) -> None:
        """Write what the pipe takes now."""
        while self._backlog and self._proc is not None:
            try:
                n = os.write(self._proc.stdin.fileno(), self._backlog)
            except BlockingIOError:
                return
            except OSError as exc:  # (the process is gone)
                self._give_up(f"its input closed ({exc})")
                return
            del self._backlog[:n]

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> Path | None:
        """End the stream (the last message says so), wait for the process to name what it was sent, and return the
        scratch file, or None (given up, failed, or named another count than was sent: then nothing is kept)."""
        if self._proc is None:
            return None
        deadline = time.monotonic() + timeout
        self._backlog += msgpack.packb({"end": self.sent})
        while self._backlog and self._proc is not None:
            self._pump()
            if self._backlog:
                if time.monotonic() > deadline:
                    self._give_up("it did not take the last groups in time")
                    return None
                time.sleep(0.001)
        if self._proc is None:
            return None
        proc = self._proc
        try:
            proc.stdin.close()
            proc.stdin = None  # (closed: communicate() reads the answer only)
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._give_up(f"it did not end ({exc})")
            return None
        self._proc = None
        named = out.decode(errors="replace").strip()
        if proc.returncode != 0 or named != str(self.sent):
            self.failed = (f"exit {proc.returncode}, named {named or '?'} of {self.sent}: "
                           f"{err.decode(errors='replace').strip()[-300:]}")
            log.warning("%s: naming the omega-sum groups beside the run failed (%s); they are named at the close",
                        self.path, self.failed)
            self.scratch.unlink(missing_ok=True)
            return None
        return self.scratch

    def close(self) -> None:
        """Stop the process and remove its file (a run that ends without :meth:`finish`, or after it)."""
        self._give_up("")
        self.scratch.unlink(missing_ok=True)

    def _give_up(self, why: str) -> None:
        if why:
            self.failed = why
            log.warning("%s: the process naming the omega-sum groups beside the run: %s; they are named at the "
                        "close", self.path, why)
        proc, self._proc = self._proc, None
        self._backlog = bytearray()
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            self.scratch.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """The naming process: ``SCRATCH N_R N_ETA DTYPE``; msgpack batches of groups on stdin, then ``{"end": n}``;
    prints the number of groups named and exits 0; removes its file and exits 2 at an end of input without it."""
    import h5py
    from h5py import h5d, h5p, h5s, h5t

    from . import hdf5_c
    from .repair import MAX_NAMED_GROUPS, named_group

    for sig in (signal.SIGINT, signal.SIGTERM):  # a stop sent to the daemon's process group is the writer's to
        signal.signal(sig, signal.SIG_IGN)  # handle; this process ends when its input does (the writer gone too)
    scratch, n_r, n_eta, dtype = argv if argv is not None else sys.argv[1:]
    scratch, shape = Path(scratch), (MAX_NAMED_GROUPS, int(n_r), int(n_eta))
    unpacker = msgpack.Unpacker(raw=False)
    named = 0
    ended = False
    try:
        with h5py.File(scratch, "w", libver="latest") as f:
            grp = named_group(f.require_group("entry/omega_sum"), scratch)
            stored, f8, i8 = (h5t.py_create(np.dtype(t)) for t in (dtype, "<f8", "<i8"))
            # (a row's mapping selects it in a space of MAX_NAMED_GROUPS rows: HDF5 reads it from the dataset's
            # own extent, whatever that is at the time)
            vspace, source = h5s.create_simple(shape[1:]), h5s.create_simple(shape)
            dcpl0 = h5p.create(h5p.DATASET_CREATE)
            dcpl0.set_layout(h5d.VIRTUAL)
            dcpl0.set_fill_value(np.array([0.0]))
            values = {k: np.zeros(1024, dtype="<f8" if k.endswith("omega") else "<i8") for k in _COLUMNS[2:]}
            stdin = sys.stdin.buffer
            while not ended:
                data = os.read(stdin.fileno(), 1 << 16)
                if not data:
                    break
                unpacker.feed(data)
                for batch in unpacker:
                    if "end" in batch:
                        ended = int(batch["end"]) == named
                        break
                    rows = batch["rows"]
                    top = max(rows) + 1
                    if top > len(values["n_frames"]):
                        size = max(top, 2 * len(values["n_frames"]))
                        values = {k: np.resize(v, size) for k, v in values.items()}
                    for k in _COLUMNS[2:]:
                        values[k][rows] = batch[k]
                    attrs = [(b"Number Of Frames Summed", i8, values["n_frames"]),
                             (b"LastFrameNumber", i8, values["last_frame"]),
                             (b"FirstOme", f8, values["first_omega"]), (b"LastOme", f8, values["last_omega"])]
                    hdf5_c.name_rows(grp.id, [n.encode() for n in batch["names"]], rows, stored, dcpl0, source,
                                     b"/entry/omega_sum/I", vspace, attrs)
                    named += len(rows)
    except Exception as exc:  # noqa: BLE001 - any failure: the writer names the groups itself
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        scratch.unlink(missing_ok=True)
        return 1
    if not ended:  # the writer died, or sent another count
        scratch.unlink(missing_ok=True)
        return 2
    print(named, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

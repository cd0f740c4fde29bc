"""HDF5's C calls of ringstream/writer/hdf5_c.py hold h5py's lock: h5py's HDF5 is not thread-safe and a ctypes call
releases the GIL, so naming omega-sum groups while another thread reads with h5py crashed the process (a segmentation
fault, first seen with repairs run on threads in test_crash_outputs.py). Run in a child process, so that a crash is
this test's failure and not the test runner's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ringstream.writer import hdf5_c

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(hdf5_c.library() is None, reason="h5py's HDF5 cannot be reached through ctypes")]

SCRIPT = textwrap.dedent('''
import threading, h5py, numpy as np, time, sys
from ringstream.writer import hdf5_c
from h5py import h5s, h5p, h5d, h5t, h5g
def make(path, n):
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/omega_sum/I", shape=(n, 50, 8), dtype="f4", chunks=(1,50,8))
        f.create_dataset("/x", data=np.arange(1000.0))
def name(path, n):
    with h5py.File(path, "r+") as f:
        g = f["entry/omega_sum"]; shape = g["I"].shape
        grp = g.create_group("named")
        vspace = h5s.create_simple(shape[1:]); source = h5s.create_simple(shape)
        dcpl0 = h5p.create(h5p.DATASET_CREATE); dcpl0.set_layout(h5d.VIRTUAL); dcpl0.set_fill_value(np.array([0.0]))
        i8 = h5t.py_create(np.dtype("<i8"))
        hdf5_c.name_rows(grp.id, [f"g{k}".encode() for k in range(n)], list(range(n)), h5t.py_create(np.dtype("<f4")),
                         dcpl0, source, b"/entry/omega_sum/I", vspace, [(b"a", i8, np.arange(n, dtype="<i8"))])
n = 3000
make(sys.argv[1], n); make(sys.argv[2], n)
stop = False
def reader():
    k = 0
    with h5py.File(sys.argv[2], "r") as f:
        while not stop:
            f["x"][k % 1000]; f["entry/omega_sum/I"][k % n]; k += 1
threads = [threading.Thread(target=reader) for _ in range(2)]
for t in threads: t.start()
for i in range(3):
    make(sys.argv[1], n); name(sys.argv[1], n)
stop = True
for t in threads: t.join()
print("ok")
''')


def test_naming_groups_while_other_threads_read_does_not_crash(tmp_path):
    script = tmp_path / "threads.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "named.h5"), str(tmp_path / "read.h5")],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])

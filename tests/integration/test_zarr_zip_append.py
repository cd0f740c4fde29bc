"""What a reader and a killed writer see of a zarr.zip that is grown in place (ringstream/writer/zip_append.py).

A writer process adds omega-sum groups every millisecond and publishes at every 20th, as the daemon does at its
save intervals. A reader process opens the file in a loop meanwhile: every open either reads a whole published ZIP
(groups 0..n-1, the newest with their own values) or fails with ``BadZipFile`` (while the file grows: a directory
written past the end, about a millisecond); none reads a wrong or missing member. Then the writer is killed with ``kill -9`` at random moments: the file holds at least
every group published before the kill, right, either at once or after ``cut_partial_publication``."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ringstream.writer.storage import zarr_compressor
from ringstream.writer.zip_append import cut_partial_publication

SHAPE = (100, 36)

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from ringstream.writer.omega import OmegaGroup
    from ringstream.writer.zarr_zip import ZarrZipSink
    path, groups = sys.argv[1], int(sys.argv[2])
    shape = (100, 36)
    sink = ZarrZipSink(path, np.zeros((5, *shape)), {"Lam": 0.2}, 6)
    published = 0
    for g in range(groups):
        sink.add_group(OmegaGroup(g, np.full(shape, float(g)) + np.arange(shape[1]), 1, g, g, 0.0, 0.0))
        if g % 20 == 19:
            sink.publish(wait=g == 19)
        if sink.groups_published != published:
            published = sink.groups_published
            print(published, flush=True)
        time.sleep(0.001)
    sink.close()
    print(sink.groups_published, "skipped", sink.skipped, flush=True)
""")

READER = textwrap.dedent("""
    import json, sys, time, zipfile
    import numpy as np
    from ringstream.writer.storage import zarr_compressor
    codec = zarr_compressor()
    path, seconds = sys.argv[1], float(sys.argv[2])
    ok, bad, wrong, most, failing, since = 0, 0, [], 0, [], None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with zipfile.ZipFile(path) as z:
                names = sorted(n for n in z.namelist() if n.startswith("OmegaSumFrame/") and n.endswith("/0.0"))
                for g, name in enumerate(names[-50:], max(0, len(names) - 50)):  # the newest groups
                    want = f"OmegaSumFrame/LastFrameNumber_{g:06d}/0.0"
                    data = np.frombuffer(codec.decode(z.read(name)), "<f4").reshape(100, 36)
                    if name != want or not np.array_equal(data, np.full((100, 36), float(g)) + np.arange(36)):
                        wrong.append(name)
                ok += 1
                most = max(most, len(names))
            if since is not None:
                failing.append(time.monotonic() - since)
                since = None
        except FileNotFoundError:
            pass
        except zipfile.BadZipFile:
            bad += 1
            since = time.monotonic() if since is None else since
    print(json.dumps({"ok": ok, "bad_zip": bad, "wrong": wrong[:5], "groups": most, "failing_periods": len(failing),
                      "failing_s": sum(failing), "longest_failing_s": max(failing, default=0.0)}))
""")


def _python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _groups(path: Path) -> int:
    """The groups of the zarr.zip at ``path``: 0..n-1, each with its own values. Returns n."""
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        names = sorted(n for n in z.namelist() if n.startswith("OmegaSumFrame/") and n.endswith("/0.0"))
        for g, name in enumerate(names):
            assert name == f"OmegaSumFrame/LastFrameNumber_{g:06d}/0.0"
            want = np.full(SHAPE, float(g)) + np.arange(SHAPE[1])
            np.testing.assert_array_equal(np.frombuffer(zarr_compressor().decode(z.read(name)), "<f4").reshape(SHAPE),
                                          want)  # (float32 and Blosc-compressed: the default cake_dtype)
    return len(names)


@pytest.mark.timeout(120)
def test_a_reader_opening_the_file_in_a_loop_never_reads_a_wrong_zip(tmp_path):
    path = tmp_path / "r.zarr.zip"
    writer = _python(WRITER, path, 3000)
    reader = _python(READER, path, 4.0)
    try:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        wout, werr = writer.communicate(timeout=60)
        assert writer.returncode == 0, werr
    finally:
        for p in (reader, writer):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    seen = json.loads(out)
    print("reader:", seen, "writer:", wout.splitlines()[-1])
    assert seen["wrong"] == [] and seen["ok"] > 0 and seen["groups"] > 0
    # BadZipFile only while the file grows (a directory written past the end: a millisecond), never for long
    assert seen["longest_failing_s"] < 0.5 and seen["failing_s"] < 0.1 * 4.0
    assert _groups(path) == 3000


@pytest.mark.timeout(180)
def test_kill_9_at_random_moments_leaves_every_published_group(tmp_path):
    rnd = random.Random(16)
    cut = []
    for rep in range(12):
        path = tmp_path / f"k{rep}.zarr.zip"
        writer = _python(WRITER, path, 100_000)
        first = writer.stdout.readline()  # the first publication (the file exists from here on)
        assert first.strip() == "20", writer.stderr.read()
        time.sleep(rnd.uniform(0.05, 1.5))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
        published = int(out.split()[-1]) if out.split() else 20
        try:
            _groups(path)
            cut.append(0)
        except zipfile.BadZipFile:  # killed while the file grew: the last published ZIP is before the tail
            cut.append(cut_partial_publication(path))
            assert cut[-1] > 0
        assert _groups(path) >= published
    print("bytes cut after each kill:", cut)

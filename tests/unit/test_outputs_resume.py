"""RunOutputs.resume: a writer killed (kill -9 of a forked child) after a flush, or after rows written but not flushed,
leaves files that a replacement cuts to the resume frame W and continues; once the frames from W on are appended
again, every file equals an uninterrupted run's: every HDF5 dataset and attribute, every byte of the MIDAS streams,
every zarr.zip member."""

from __future__ import annotations

import dataclasses
import os
import signal
import traceback
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from outputs_common import N_PEAKS, make, records

from ringstream.errors import InputError
from ringstream.writer.midas_binaries import FIT_BIN, FIT_CURVES_BIN, INT2D_BIN, LINEOUT_BIN, MAP_BIN
from ringstream.writer.outputs import RunOutputs

pytestmark = pytest.mark.timeout(120)

N = 30
#: frame 5 alone, and 12..15 (with OmegaSumFrames 4, a whole group) are rejected
REJECTED = (5, 12, 13, 14, 15)
STREAMS = (FIT_BIN, FIT_CURVES_BIN, LINEOUT_BIN, INT2D_BIN, MAP_BIN)


@dataclasses.dataclass(frozen=True)
class Run:
    write_2d: int  # 1: the omega sums from the records' cakes; 0: from the workers' partial sums
    fitting: bool  # fit.bin, fit_curves.bin, and lineout.bin, Int2D.bin, RTthEtaAreaMap.bin (--midas-binaries)
    osf: int  # OmegaSumFrames
    dtype: str = "float32"  # [output] cake_dtype
    noise: float = 0.0  # [output] cake_noise_fraction (with a model that rounds every value: g 1, x_min 0)
    caked: int = 0  # [fit] per_eta (its SNIP iterations): /entry/fit/caked and r_caked_peaks.h5


RUNS = [Run(w, fit, osf) for w in (0, 1) for fit in (False, True) for osf in (1, 4)]
RUNS += [Run(w, True, 4, "float64") for w in (0, 1)]
RUNS += [Run(w, False, 4, "float32", 0.01) for w in (0, 1)]
RUNS += [Run(0, True, 4, caked=50)]

_GEOMETRY: dict[Run, tuple] = {}


def _geo(run: Run):
    if run not in _GEOMETRY:
        _GEOMETRY[run] = make(f"Write2D {run.write_2d}\nOmegaSumFrames {run.osf}\nOmegaStart 10\nOmegaStep 0.5\n")
    return _GEOMETRY[run]


def _outputs(folder: Path, run: Run, resume: bool = False) -> RunOutputs:
    p, imap = _geo(run)
    kw = dict(engine_name="cpu", n_peaks=N_PEAKS if run.fitting else 0, zarr_path=folder / "r.zarr.zip",
              midas_dir=folder if run.fitting else None, metadata_keys=["I0", "omega"], expected_frames=N,
              sums_from_workers=not run.write_2d, block=4, cake_dtype=run.dtype, caked=run.caked)
    if run.noise:
        kw.update(cake_noise_fraction=run.noise, noise_model=np.stack([np.ones((imap.n_r, imap.n_eta)),
                                                                       np.zeros((imap.n_r, imap.n_eta))]))
    return (RunOutputs.resume if resume else RunOutputs)(folder / "r.h5", imap, p, **kw)


def _records(run: Run):
    recs = records(N, _geo(run)[1], seed=3, rejected=REJECTED)
    if run.caked:  # per-eta fits [n_eta, peaks, 7], a NaN row in every third frame
        n_eta = _geo(run)[1].n_eta
        for r in recs:
            r.caked = np.random.default_rng(r.frame_index).random((n_eta, N_PEAKS, 7))
            if r.frame_index % 3 == 0:
                r.caked[1, 2] = np.nan
    return recs if run.fitting else [dataclasses.replace(r, fit=None, curves=None) for r in recs]


def _feed(out: RunOutputs, run: Run, recs, every: int = 0) -> None:
    """Append ``recs`` (in order); without Write2D, a worker's partial sum of each group after its last frame (and of
    the last, shorter group at the end); a save every ``every`` frames."""
    for r in recs:
        out.append(r)
        i = r.frame_index
        if not run.write_2d and ((i + 1) % run.osf == 0 or i == N - 1):
            _partial(out, run, i // run.osf)
        if every and (i + 1) % every == 0:
            out.save()


def _partial(out: RunOutputs, run: Run, group: int) -> None:
    cakes = [r.cake for r in _records(run)[group * run.osf:(group + 1) * run.osf] if r.lineout is not None]
    if cakes:
        out.add_partial(group, len(cakes), np.sum(np.asarray(cakes, dtype=np.float64), axis=0))


def _start(out: RunOutputs, run: Run) -> None:
    if run.fitting:
        out.peak_update(1, 0, [6.5, 11.0], "control")
        out.flush()


def _uninterrupted(folder: Path, run: Run) -> Path:
    folder.mkdir()
    out = _outputs(folder, run)
    _start(out, run)
    _feed(out, run, _records(run), every=5)
    out.close(run_complete=True)
    return folder


def _killed(folder: Path, run: Run, frames: int, unflushed: int, resume: bool = False) -> None:
    """A writer (a forked child) that appends ``frames`` frames with a save every 5, flushes, appends ``unflushed``
    more (rows written in blocks of 4, not flushed) and is killed (SIGKILL). ``resume``: it continues the run in
    ``folder`` (from its resume frame to ``frames``) instead of starting one."""
    folder.mkdir(exist_ok=resume)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            out = _outputs(folder, run, resume)
            if not resume:
                _start(out, run)
            recs = _records(run)
            _feed(out, run, recs[out.resume_frame:frames], every=5)
            out.flush()
            _feed(out, run, recs[frames:frames + unflushed])
        except BaseException:  # noqa: BLE001 - reported to the parent through the folder
            (folder / "child-error.txt").write_text(traceback.format_exc())
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (folder / "child-error.txt").exists(), (folder / "child-error.txt").read_text()


def _resume(folder: Path, run: Run) -> int:
    out = _outputs(folder, run, resume=True)
    w = out.resume_frame
    _feed(out, run, [r for r in _records(run) if r.frame_index >= w], every=7)
    out.close(run_complete=True)
    return w


def _same(a, b, where: str) -> None:
    if isinstance(a, np.ndarray) and a.dtype.kind == "O":
        assert isinstance(b, np.ndarray) and a.shape == b.shape, where
        for x, y in zip(a.ravel(), b.ravel(), strict=True):
            _same(x, y, where)
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


def _h5(path: Path) -> dict:
    """Every group and dataset: attributes, and a dataset's dtype, shape, chunks and values (not the file's date)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if name.endswith("reduction/date"):  # (/cake/reduction is /entry/reduction: visited once)
                return
            attrs = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                out[name] = (attrs, str(obj.dtype), obj.shape, obj.chunks, obj.is_virtual, obj[()])
            else:
                out[name] = (attrs,)

        visit("/", f)
        f.visititems(visit)
    return out


def _assert_same_files(got: Path, want: Path) -> None:
    a, b = _h5(got / "r.h5"), _h5(want / "r.h5")
    assert sorted(a) == sorted(b)
    for name in a:
        assert len(a[name]) == len(b[name]), name
        assert sorted(a[name][0]) == sorted(b[name][0]), name
        for key in a[name][0]:
            _same(a[name][0][key], b[name][0][key], f"{name}@{key}")
        assert a[name][1:-1] == b[name][1:-1], name
        if len(a[name]) > 1:
            _same(a[name][-1], b[name][-1], name)
    for stream in STREAMS:
        assert (got / stream).exists() == (want / stream).exists(), stream
        if (want / stream).exists():
            assert (got / stream).read_bytes() == (want / stream).read_bytes(), stream
    with zipfile.ZipFile(got / "r.zarr.zip") as zg, zipfile.ZipFile(want / "r.zarr.zip") as zw:
        assert sorted(zg.namelist()) == sorted(zw.namelist())
        for member in zw.namelist():
            assert zg.read(member) == zw.read(member), member
    assert (got / "r_caked_peaks.h5").exists() == (want / "r_caked_peaks.h5").exists()
    if (want / "r_caked_peaks.h5").exists():  # (its @zarr_source names the folder: the tables are compared)
        with h5py.File(got / "r_caked_peaks.h5", "r") as fg, h5py.File(want / "r_caked_peaks.h5", "r") as fw:
            for name in ("peaks", "metadata"):
                assert sorted(fg[name]) == sorted(fw[name])
                for k in fw[name]:
                    _same(fg[name][k][()], fw[name][k][()], f"r_caked_peaks.h5/{name}/{k}")
    leftovers = [p.name for p in got.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _durable_end(run: Run, flushed: int) -> int:
    """W after a kill once ``flushed`` frames were flushed: the end of the last group written, one whose frames
    all came and not all were rejected."""
    ends = [g + run.osf for g in range(0, flushed - run.osf + 1, run.osf)
            if any(i not in REJECTED for i in range(g, g + run.osf))]
    return max(ends, default=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    return {run: _uninterrupted(base / _name(run), run) for run in RUNS}


def _name(run: Run) -> str:
    return (f"w{run.write_2d}-fit{int(run.fitting)}-osf{run.osf}-{run.dtype}" + (f"-noise{run.noise}" if run.noise else "")
            + (f"-caked{run.caked}" if run.caked else ""))


#: (frames appended and flushed before the kill, frames appended after that flush)
KILLS = [(0, 0), (7, 0), (17, 3), (22, 5), (N, 0)]


@pytest.mark.parametrize("run", RUNS, ids=_name)
def test_a_killed_writer_is_continued_to_the_uninterrupted_files(tmp_path, run, reference):
    if run.noise:  # (the precision-bounded run rounded its sums: low mantissa bits zero, and says so)
        with h5py.File(reference[run] / "r.h5", "r") as f:
            sums = f["entry/omega_sum/I"]
            assert sums.attrs["cake_noise_fraction"] == run.noise
            assert np.all(sums[...].view(np.uint32) & 0x3FF == 0)
    for frames, unflushed in KILLS:
        folder = tmp_path / f"k{frames}-{unflushed}"
        _killed(folder, run, frames, unflushed)
        w = _resume(folder, run)
        assert w == _durable_end(run, frames), (frames, w)
        _assert_same_files(folder, reference[run])
    # killed again after continuing a run, itself killed with rows not flushed
    folder = tmp_path / "twice"
    _killed(folder, run, 11, 3)
    _killed(folder, run, 23, 2, resume=True)
    assert _resume(folder, run) == _durable_end(run, 23)
    _assert_same_files(folder, reference[run])


def test_the_resume_frame_is_the_end_of_the_last_durable_group(tmp_path):
    run = Run(1, True, 4)
    _killed(tmp_path / "a", run, 22, 5)  # flushed 0..21: groups 0..4 are written (group 3 was all rejected)
    out = _outputs(tmp_path / "a", run, resume=True)
    assert out.resume_frame == 20 and out.counters["written"] == 15 and out.counters["omega_groups"] == 4
    assert out.sums._done_below == 5 and out.sums._accounted == 20
    with h5py.File(tmp_path / "a" / "r.h5", "r") as f:
        e = f["entry"]
        assert list(e["data/frame_index"][:]) == [i for i in range(20) if i not in REJECTED]
        assert e.attrs["frames_written"] == 15 and not e.attrs["run_complete"]
        assert list(e["omega_sum/last_frame"][:]) == [3, 7, 11, 19]
        assert set(e["fit/curve_rois"][:, 0]) == set(e["data/frame_index"][:])
    assert (tmp_path / "a" / FIT_BIN).stat().st_size == 15 * N_PEAKS * 7 * 8
    out.close(run_complete=False)
    # without OmegaSumFrames groups written (kill before the first group's end) the run starts again from 0
    _killed(tmp_path / "b", run, 3, 0)
    out = _outputs(tmp_path / "b", run, resume=True)
    assert out.resume_frame == 0 and out.counters["written"] == 0
    out.close(run_complete=False)


def test_a_stream_flushed_less_than_the_hdf5_file_lowers_the_resume_frame(tmp_path, reference):
    run = Run(1, True, 1)
    folder = tmp_path / "s"
    _killed(folder, run, 17, 0)
    with open(folder / FIT_CURVES_BIN, "r+b") as fh:  # as if killed between the HDF5 flush and the streams'
        fh.truncate(fh.seek(0, 2) - 5)
    with open(folder / LINEOUT_BIN, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 3 * 16 * _geo(run)[1].n_r - 1)
    # 12 rows flushed (frames 0..4, 6..11, 16); lineout.bin holds 8 whole: frames 0..4, 6..8
    assert _resume(folder, run) == 9
    _assert_same_files(folder, reference[run])


def test_a_stream_the_dead_writer_had_not_made_is_made_and_the_run_continued_from_its_start(tmp_path, reference):
    run = Run(1, True, 1)
    folder = tmp_path / "m"
    _killed(folder, run, 17, 0)
    (folder / FIT_BIN).unlink()  # as if killed after the HDF5 file was made, before fit.bin was
    assert _resume(folder, run) == 0  # fit.bin holds no frame: every frame again, from the first
    _assert_same_files(folder, reference[run])


def test_a_file_that_is_not_the_runs_is_one_clear_error(tmp_path):
    run = Run(1, True, 4)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match=r"r\.h5: not a ringstream results file") as info:
        _outputs(tmp_path, run, resume=True)
    (tmp_path / "r.h5").write_text("hello")
    with pytest.raises(InputError, match=r"r\.h5: not an HDF5 file"):
        _outputs(tmp_path, run, resume=True)
    _killed(tmp_path / "k", Run(1, False, 4), 9, 0)
    with pytest.raises(InputError, match=r"r\.h5: the file's layout differs from the run's \(n_peaks 0 in the file, "
                                         r"3 in the run\)") as info:
        RunOutputs.resume(tmp_path / "k" / "r.h5", _geo(run)[1], _geo(run)[0], engine_name="cpu", n_peaks=N_PEAKS)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"the file's layout differs from the run's \(cake_dtype float32 in the "
                                         r"file, float64 in the run\)"):
        RunOutputs.resume(tmp_path / "k" / "r.h5", _geo(run)[1], _geo(run)[0], engine_name="cpu", cake_dtype="float64")
    with pytest.raises(InputError, match=r"the file's layout differs from the run's \(cake_noise_fraction 0.0 in the "
                                         r"file, 0.01 in the run\)"):
        RunOutputs.resume(tmp_path / "k" / "r.h5", _geo(run)[1], _geo(run)[0], engine_name="cpu",
                          cake_noise_fraction=0.01)
    p, imap = make("Write2D 1\nOmegaSumFrames 4\nRBinSize 2\n")
    with pytest.raises(InputError, match=r"r\.h5: the file's layout differs from the run's \(n_r 16 in the file, "
                                         r"8 in the run\)"):
        RunOutputs.resume(tmp_path / "k" / "r.h5", imap, p, engine_name="cpu")
    with pytest.raises(InputError, match="no such file"):
        RunOutputs.resume(tmp_path / "none.h5", imap, p, engine_name="cpu")

"""The real ``ringstream`` console script, run as a subprocess on small detectors.

Covers ``map`` (size, bins, time, cache key, cache reuse, MIDAS export), ``integrate`` (HDF5 equal to the reference
engine, cakes, MIDAS import) and the bad-input list: every user error is exactly one line on stderr naming the file
or key, a documented non-zero exit code, and no traceback unless ``-v``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from common import NY, NZ, SMALL_PARAMS, ringstream_command

pytestmark = pytest.mark.timeout(60)

BASE = SMALL_PARAMS


_script = ringstream_command


def run(args, cwd, check=None, timeout=50):
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    out = subprocess.run(_script() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    if check is not None:
        assert out.returncode == check, f"rc={out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def write_params(folder: Path, extra: str = "", name: str = "setup.txt", nz=NZ, ny=NY) -> Path:
    path = folder / name
    path.write_text(BASE.format(nz=nz, ny=ny) + extra)
    return path


def write_images(folder: Path, n: int, seed=1, shape=(NZ, NY)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    zz, yy = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(zz - 61.2, yy - 63.3)
    frames = []
    for k in range(n):
        ring = 1000 * np.exp(-((r - 30 - k) ** 2) / 8.0)
        frame = (ring + rng.poisson(50, shape)).astype(np.uint16)
        tifffile.imwrite(folder / f"img_{k}.tif", frame)
        frames.append(frame)
    return frames


def reference(params_path: Path, frames, dark=None, overrides=()):
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    p = load_params(params_path, overrides=list(overrides))
    imap, _ = load_or_build(p)
    eng = ReferenceEngine(imap, dark=dark, normalize=bool(p.Normalize))
    return eng.integrate_batch(np.stack(frames))


def assert_one_line_error(out, *names, code=None):
    assert out.returncode != 0, out.stderr
    if code is not None:
        assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ringstream: error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------------------------------- map


def test_map_prints_summary_then_loads_from_cache(tmp_path):
    p = write_params(tmp_path)
    first = run(["map", "--param-file", p], tmp_path, check=0)
    text = first.stdout
    assert "128 x 128" in text and "nonzeros" in text and "MB" in text
    assert "56 x 18" in text and "R 4..60 px" in text and "eta -180..180 deg" in text and "Q mode: no" in text
    assert "built in" in text
    key = [ln for ln in text.splitlines() if ln.startswith("cache key:")][0].split()[-1]
    assert len(key) == 64 and (Path(os.environ["RINGSTREAM_CACHE_DIR"]) / f"{key}.npz").is_file()
    second = run(["map", "--param-file", p], tmp_path, check=0)
    assert "loaded from cache in" in second.stdout and key in second.stdout
    assert first.stderr == "" and second.stderr == ""


def test_map_overrides_change_the_map(tmp_path):
    p = write_params(tmp_path)
    out = run(["map", "--param-file", p, "RMax", "40", "--EtaBinSize", "30"], tmp_path, check=0)
    assert "36 x 12" in out.stdout


def test_map_no_cache_and_cache_dir(tmp_path):
    p = write_params(tmp_path)
    run(["map", "--param-file", p, "--cache-dir", tmp_path / "cd"], tmp_path, check=0)
    assert len(list((tmp_path / "cd").glob("*.npz"))) == 1
    out = run(["map", "--param-file", p, "--no-cache", "--cache-dir", tmp_path / "cd2"], tmp_path, check=0)
    assert "built in" in out.stdout and not (tmp_path / "cd2").exists()


# ----------------------------------------------------------------------------------------------------- integrate


def test_integrate_equals_reference_engine(tmp_path):
    p = write_params(tmp_path)
    (tmp_path / "imgs").mkdir()
    frames = write_images(tmp_path / "imgs", 12)
    out = run(["integrate", "--param-file", p, "--output-h5", tmp_path / "out.h5", tmp_path / "imgs"],
              tmp_path, check=0)
    assert "12 frames" in out.stdout and "frames/s" in out.stdout and "out.h5" in out.stdout
    want_lo, _ = reference(p, frames)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        e = f["entry"]
        got = e["data/I"][()]
        assert got.shape == want_lo.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want_lo.astype(np.float32), rtol=1e-6, atol=0)
        # natural order: img_2 before img_10
        assert e["data/source_id"].asstr()[()].tolist() == [f"img_{k}.tif" for k in range(12)]
        assert e["data/frame_index"][()].tolist() == list(range(12))
        assert "cake" not in f
        assert int(e.attrs["frames_written"]) == 12 and bool(e.attrs["run_complete"])
        assert e["reduction/engine"][()].decode() == "cpu"


def test_integrate_write2d_cake_dark_and_default_output(tmp_path):
    p = write_params(tmp_path, "Write2D 1\n")
    frames = write_images(tmp_path, 3)
    dark = np.full((NZ, NY), 7, dtype=np.int64)
    (tmp_path / "dark.bin").write_bytes(np.stack([dark, dark + 2]).astype("<i8").tobytes())
    run(["integrate", "--param-file", p, "--dark", "dark.bin", "img_0.tif", "img_1.tif", "img_2.tif"],
        tmp_path, check=0)
    out_path = tmp_path / "img_0_integrated.h5"
    assert out_path.is_file()
    want_lo, want_cake = reference(p, frames, dark=np.full((NZ, NY), 8.0))
    with h5py.File(out_path, "r") as f:
        cake = f["cake/data/I"][()].transpose(0, 2, 1)  # (stored [nImg, nEta, nR], NXazint2d)
        assert cake.shape == want_cake.shape and cake.dtype == np.float32
        np.testing.assert_allclose(cake, want_cake.astype(np.float32), rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(f["entry/data/I"][()], want_lo.astype(np.float32), rtol=1e-6, atol=1e-3)
        assert f["cake/data/azimuthal_axis"].shape == (18,)
    # a second run refuses to overwrite, then --overwrite replaces
    again = run(["integrate", "--param-file", p, "img_0.tif"], tmp_path)
    assert_one_line_error(again, "img_0_integrated.h5", "--overwrite", code=3)
    run(["integrate", "--param-file", p, "--overwrite", "img_0.tif"], tmp_path, check=0)


def test_integrate_precision_bounded(tmp_path):
    """``--cake-noise-fraction``: the stored cakes within f of the model's counting noise of each value (the file
    holds the model: g and x_min), the lineouts as lossless; a fraction out of range is one line naming the flag."""
    p = write_params(tmp_path, "Write2D 1\n")
    frames = write_images(tmp_path, 2)
    run(["integrate", "--param-file", p, "--cake-noise-fraction", "0.05", "--output-h5", "out.h5", "img_0.tif",
         "img_1.tif"], tmp_path, check=0)
    want_lo, want_cake = reference(p, frames)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        cake = f["cake/data/I"][()].transpose(0, 2, 1).astype(np.float64)  # (stored [nImg, nEta, nR]: NXazint2d)
        g, x_min = f["entry/reduction/cake_noise_model"][()]
        assert f["cake/data/I"].attrs["cake_noise_fraction"] == 0.05 == f["entry/reduction/cake_noise_fraction"][()]
        np.testing.assert_allclose(f["entry/data/I"][()], want_lo.astype(np.float32), rtol=1e-6, atol=1e-3)
    from ringstream.writer.precision import SAFETY

    x = want_cake.astype(np.float32).astype(np.float64)  # (the cakes reach the writer as float32)
    sigma = np.sqrt(np.where(x >= x_min, SAFETY * g * x, 0.0))
    assert np.all(np.abs(cake - x) <= np.maximum(0.05 * sigma, np.spacing(np.abs(x).astype(np.float32)) / 2))
    assert np.count_nonzero(cake != x) > cake.size // 4
    bad = run(["integrate", "--param-file", p, "--cake-noise-fraction", "0.7", "img_0.tif"], tmp_path)
    assert bad.returncode == 2 and "--cake-noise-fraction: expected >= 0 and <= 0.5, got 0.7" in bad.stderr


def test_export_then_import_midas_same_lineouts(tmp_path):
    p = write_params(tmp_path)
    write_images(tmp_path, 4)
    out = run(["map", "--param-file", p, "--export-midas", tmp_path / "mm"], tmp_path, check=0)
    assert "Map.bin" in out.stdout and "nMap.bin" in out.stdout
    assert (tmp_path / "mm" / "Map.bin").is_file() and (tmp_path / "mm" / "nMap.bin").is_file()
    imgs = [f"img_{k}.tif" for k in range(4)]
    run(["integrate", "--param-file", p, "--output-h5", "a.h5", *imgs], tmp_path, check=0)
    run(["integrate", "--param-file", p, "--output-h5", "b.h5", "--import-midas", "mm", *imgs], tmp_path, check=0)
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        a, b = fa["entry/data/I"][()], fb["entry/data/I"][()]
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(np.abs(a).max()))


def test_midas_hash_mismatch_needs_force(tmp_path):
    p = write_params(tmp_path)
    write_images(tmp_path, 1)
    run(["map", "--param-file", p, "--export-midas", "mm"], tmp_path, check=0)
    p2 = write_params(tmp_path, "", name="other.txt")
    p2.write_text(p2.read_text().replace("Lsd 1000000", "Lsd 1000100"))
    out = run(["integrate", "--param-file", p2, "--import-midas", "mm", "img_0.tif"], tmp_path)
    assert_one_line_error(out, "Map.bin", "--force", code=4)
    run(["integrate", "--param-file", p2, "--import-midas", "mm", "--force", "img_0.tif"], tmp_path, check=0)


def test_error_mid_run_keeps_partial_file(tmp_path):
    p = write_params(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_images(folder, 17)
    (folder / "img_99.tif").write_bytes(b"II*\0garbage-garbage")
    out = run(["integrate", "--param-file", p, "--output-h5", "part.h5", folder], tmp_path)
    assert_one_line_error(out, "img_99.tif", "17 frames", "part.h5", code=3)
    with h5py.File(tmp_path / "part.h5", "r") as f:
        assert f["entry/data/I"].shape[0] == 17 and not bool(f["entry"].attrs["run_complete"])


def test_integrate_stack_formats(tmp_path):
    p = write_params(tmp_path)
    frames = write_images(tmp_path, 3)
    np.save(tmp_path / "stack.npy", np.stack(frames))
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["entry/data/data"] = np.stack(frames[:2])
    run(["integrate", "--param-file", p, "--output-h5", "s.h5", "stack.npy", "stack.h5"], tmp_path, check=0)
    want, _ = reference(p, frames + frames[:2])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        np.testing.assert_allclose(f["entry/data/I"][()], want.astype(np.float32), rtol=1e-6)
        assert f["entry/data/source_id"].asstr()[()].tolist() == [
            "stack.npy:0", "stack.npy:1", "stack.npy:2", "stack.h5:0", "stack.h5:1"]


def test_unknown_key_is_only_a_warning(tmp_path):
    p = write_params(tmp_path, "FrobnicateLevel 3\n")
    write_images(tmp_path, 1)
    out = run(["integrate", "--param-file", p, "img_0.tif"], tmp_path, check=0)
    warn = [ln for ln in out.stderr.splitlines() if "FrobnicateLevel" in ln]
    assert len(warn) == 1 and "WARNING" in warn[0] and "setup.txt" in warn[0]
    assert (tmp_path / "img_0_integrated.h5").is_file()


def test_version_and_usage(tmp_path):
    out = run(["--version"], tmp_path, check=0)
    assert out.stdout.startswith("ringstream ")
    out = run(["integrate"], tmp_path)
    assert out.returncode == 2 and "--param-file" in out.stderr
    out = run([], tmp_path)
    assert out.returncode == 2


# ----------------------------------------------------------------------------------------------------- bad input


def _bad_param_file(tmp_path, extra="", drop=None):
    text = BASE.format(nz=NZ, ny=NY) + extra
    if drop:
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(drop)) + "\n"
    path = tmp_path / "bad.txt"
    path.write_text(text)
    return path


CASES = {
    # name: (setup(tmp_path) -> argv, expected names in the message, exit code)
    "bad number": (lambda t: ["map", "--param-file", _bad_param_file(t, "RBinSize abc\n")],
                   ("bad.txt", "RBinSize"), 2),
    "wrong count": (lambda t: ["map", "--param-file", _bad_param_file(t, "BC 64\n")], ("bad.txt", "BC"), 2),
    "missing key": (lambda t: ["map", "--param-file", _bad_param_file(t, drop="Lsd")], ("bad.txt", "Lsd"), 2),
    "RMax <= RMin": (lambda t: ["map", "--param-file", _bad_param_file(t, "RMax 3\n")], ("RMax", "RMin"), 2),
    "transpose non-square": (
        lambda t: ["map", "--param-file", write_params(t, "ImTransOpt 3\n", name="bad.txt", ny=96)],
        ("ImTransOpt",), 2),
    "missing param file": (lambda t: ["map", "--param-file", t / "nope.txt"], ("nope.txt",), 2),
    "mask wrong shape": (
        lambda t: (tifffile.imwrite(t / "mask.tif", np.zeros((10, 10), np.uint8)),
                   ["map", "--param-file", _bad_param_file(t, f"MaskFile {t / 'mask.tif'}\n")])[1],
        ("mask.tif",), 3),
    "dark wrong size": (
        lambda t: (write_images(t, 1), (t / "dark.bin").write_bytes(b"\0" * 1000),
                   ["integrate", "--param-file", write_params(t), "--dark", t / "dark.bin", t / "img_0.tif"])[2],
        ("dark.bin", str(NZ * NY * 8), "1000"), 3),
    "unreadable image": (
        lambda t: ((t / "broken.tif").write_bytes(b"II*\0garbage-garbage"),
                   ["integrate", "--param-file", write_params(t), t / "broken.tif"])[1],
        ("broken.tif",), 3),
    "missing image": (lambda t: ["integrate", "--param-file", write_params(t), t / "gone.tif"], ("gone.tif",), 3),
    "MIDAS map hash mismatch": (
        lambda t: (run(["map", "--param-file", write_params(t), "--export-midas", t / "mm"], t, check=0),
                   write_images(t, 1),
                   ["integrate", "--param-file", write_params(t, "RMax 50\n", name="other.txt"),
                    "--import-midas", t / "mm", t / "img_0.tif"])[2],
        ("Map.bin", "other.txt"), 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(tmp_path, case):
    setup, names, code = CASES[case]
    argv = setup(tmp_path)
    out = run(argv, tmp_path)
    assert_one_line_error(out, *names, code=code)
    assert out.stdout == ""
    verbose = run(["-v", *argv], tmp_path)
    assert verbose.returncode == code
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == out.stderr.strip()

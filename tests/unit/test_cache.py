"""The map cache: keys follow every input that changes the map (file *contents*, not names); loads are identical."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from ringstream.errors import InputError
from ringstream.geometry import map_key
from ringstream.geometry.cache import default_cache_dir, load_or_build
from ringstream.geometry.map_key import MAP_FORMAT_VERSION, map_cache_key
from ringstream.params import parse_params

BASE = """\
NrPixelsY 64
NrPixelsZ 64
px 200
Lsd 500000
BC 30.2 33.7
tx 0.3
ty -0.4
tz 0.2
Wavelength 0.1729
RMin 5
RMax 45
RBinSize 1
EtaMin -180
EtaMax 180
EtaBinSize 20
"""


def _p(*extra: str):
    """Parameters: BASE plus extra lines (a scalar key given again replaces the BASE value)."""
    return parse_params(BASE + "\n".join(extra) + "\n")


def _same_map(a, b) -> None:
    assert a.key == b.key
    assert tuple(a.shape) == tuple(b.shape) and (a.n_r, a.n_eta) == (b.n_r, b.n_eta)
    for m in ("weights", "areas"):
        x, y = getattr(a, m).tocsr(), getattr(b, m).tocsr()
        np.testing.assert_array_equal(x.indptr, y.indptr)
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.data, y.data)
    for f in ("bin_area", "r_edges", "eta_edges", "r_px", "two_theta", "q", "eta", "mask"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_same_inputs_same_key_and_second_call_loads(tmp_path):
    p = _p()
    assert map_cache_key(p) == map_cache_key(_p())
    key = map_cache_key(p)
    assert len(key) == 64 and int(key, 16) >= 0
    built, from_cache = load_or_build(p, cache_dir=tmp_path)
    assert from_cache is False and built.key == key
    assert (tmp_path / f"{key}.npz").is_file()
    assert [f.name for f in tmp_path.iterdir()] == [f"{key}.npz"]  # no temp file left behind
    loaded, from_cache = load_or_build(_p(), cache_dir=tmp_path)
    assert from_cache is True
    _same_map(built, loaded)


def test_format_version_is_part_of_the_key(monkeypatch):
    p = _p()
    k = map_cache_key(p)
    monkeypatch.setattr(map_key, "MAP_FORMAT_VERSION", MAP_FORMAT_VERSION + 1)
    assert map_cache_key(p) != k


@pytest.mark.parametrize(
    "line",
    [
        "NrPixelsY 63",
        "NrPixelsZ 65",
        "Lsd 500001",
        "BC 30.2 33.8",
        "BC 30.3 33.7",
        "tx 0.31",
        "ty -0.41",
        "tz 0.21",
        "px 199",
        "Wavelength 0.2",
        "RhoD 100000",
        "p0 0.0001",
        "p6 10",
        "p14 5",
        "Parallax 20",
        "RMin 6",
        "RMax 44",
        "RBinSize 0.5",
        "EtaMin -170",
        "EtaMax 170",
        "EtaBinSize 10",
        "ImTransOpt 1",
        "SolidAngleCorrection 1",
        "PolarizationCorrection 1",
        "PolarizationFraction 0.5",
        "PolarizationAngle 90",
        "QMin 0.5\nQMax 3\nQBinSize 0.01",
        "NPanelsY 2\nNPanelsZ 1\nPanelSizeY 31\nPanelSizeZ 64\nPanelGapsY 2",
    ],
)
def test_every_map_input_changes_the_key(line):
    assert map_cache_key(_p(line)) != map_cache_key(_p())


def test_changed_geometry_rebuilds(tmp_path):
    a, hit = load_or_build(_p(), cache_dir=tmp_path)
    assert not hit
    b, hit = load_or_build(_p("tx 0.5"), cache_dir=tmp_path)
    assert not hit and b.key != a.key
    c, hit = load_or_build(_p("EtaBinSize 30"), cache_dir=tmp_path)
    assert not hit and c.n_eta == 12
    assert load_or_build(_p("tx 0.5"), cache_dir=tmp_path)[1] is True
    assert len(list(tmp_path.glob("*.npz"))) == 3


def _write_mask(path: Path, masked: list[tuple[int, int]]) -> None:
    import tifffile

    m = np.zeros((64, 64), dtype=np.uint8)
    for z, y in masked:
        m[z, y] = 1
    tifffile.imwrite(path, m)


def test_mask_contents_not_names_make_the_key(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _write_mask(d / "mask_a.tif", [(10, 10), (20, 30)])
    _write_mask(d / "mask_b.tif", [(10, 10), (20, 30)])  # same content, other name
    _write_mask(d / "mask_c.tif", [(10, 10), (20, 31)])  # other content
    ka = map_cache_key(_p(f"MaskFile {d / 'mask_a.tif'}"))
    kb = map_cache_key(_p(f"MaskFile {d / 'mask_b.tif'}"))
    kc = map_cache_key(_p(f"MaskFile {d / 'mask_c.tif'}"))
    assert ka == kb
    assert ka != kc
    assert ka != map_cache_key(_p())
    # the same file under GapFile is another input
    assert map_cache_key(_p(f"GapFile {d / 'mask_a.tif'}")) != ka

    store = tmp_path / "cache"
    m1, hit = load_or_build(_p(f"MaskFile {d / 'mask_a.tif'}"), cache_dir=store)
    assert not hit and m1.mask[20, 30]
    assert load_or_build(_p(f"MaskFile {d / 'mask_b.tif'}"), cache_dir=store)[1] is True
    # rewrite mask_a in place: the key changes, the map is rebuilt with the new mask
    _write_mask(d / "mask_a.tif", [(10, 10), (20, 31)])
    m2, hit = load_or_build(_p(f"MaskFile {d / 'mask_a.tif'}"), cache_dir=store)
    assert not hit and m2.mask[20, 31] and not m2.mask[20, 30]


def test_distortion_file_contents_make_the_key(tmp_path):
    rng = np.random.default_rng(0)
    disp = rng.uniform(-0.05, 0.05, size=(2, 64, 64))
    f1 = tmp_path / "dist1.bin"
    f2 = tmp_path / "dist2.bin"
    disp.astype("<f8").tofile(f1)
    disp.astype("<f8").tofile(f2)
    k1 = map_cache_key(_p(f"DistortionFile {f1}"))
    assert k1 == map_cache_key(_p(f"DistortionFile {f2}"))
    assert k1 != map_cache_key(_p())
    m1, hit = load_or_build(_p(f"DistortionFile {f1}"), cache_dir=tmp_path / "c")
    assert not hit
    disp[0, 5, 5] += 0.01
    disp.astype("<f8").tofile(f1)
    k2 = map_cache_key(_p(f"DistortionFile {f1}"))
    assert k2 != k1
    m2, hit = load_or_build(_p(f"DistortionFile {f1}"), cache_dir=tmp_path / "c")
    assert not hit and m2.key == k2


def test_missing_file_is_input_error_naming_it(tmp_path):
    p = dataclasses.replace(_p(), MaskFile=tmp_path / "no-such-mask.tif")
    with pytest.raises(InputError, match=r"MaskFile .*no-such-mask\.tif"):
        map_cache_key(p)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, caplog, damage):
    p = _p()
    good, _ = load_or_build(p, cache_dir=tmp_path)
    path = tmp_path / f"{good.key}.npz"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a map at all" * 100)
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="ringstream.map"):
        again, hit = load_or_build(p, cache_dir=tmp_path)
    assert hit is False
    assert "corrupt" in caplog.text and str(path) in caplog.text
    _same_map(good, again)
    assert load_or_build(p, cache_dir=tmp_path)[1] is True  # the rebuilt file is good again


def test_cache_file_of_another_map_is_not_served(tmp_path, caplog):
    a, _ = load_or_build(_p(), cache_dir=tmp_path)
    b, _ = load_or_build(_p("tx 0.9"), cache_dir=tmp_path)
    # put b's file under a's name
    (tmp_path / f"{a.key}.npz").write_bytes((tmp_path / f"{b.key}.npz").read_bytes())
    with caplog.at_level(logging.WARNING, logger="ringstream.map"):
        again, hit = load_or_build(_p(), cache_dir=tmp_path)
    assert hit is False and again.key == a.key


def test_use_cache_false_neither_reads_nor_writes(tmp_path):
    m, hit = load_or_build(_p(), cache_dir=tmp_path, use_cache=False)
    assert hit is False and m.key == map_cache_key(_p())
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGSTREAM_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "env"
    m, _ = load_or_build(_p())
    assert (tmp_path / "env" / f"{m.key}.npz").is_file()
    assert load_or_build(_p())[1] is True

    monkeypatch.delenv("RINGSTREAM_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "ringstream" / "maps"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ringstream" / "maps"

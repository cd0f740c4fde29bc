"""Pixel masks stored by content, the map of a parameter file plus such a mask, and the files a daemon ships to
joined workers (no sockets: the fetch goes through a function)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from ringstream.daemon.shipping import PART_BYTES, ShippedFiles, fetch_file
from ringstream.errors import InputError
from ringstream.geometry.cache import load_or_build
from ringstream.geometry.map import build_map
from ringstream.geometry.map_key import map_cache_key
from ringstream.geometry.mask_store import (
    MASKED_BITS,
    ExtraMask,
    extra_mask,
    flagged,
    load_stored_mask,
    save_mask,
)
from ringstream.params import parse_params

PARAMS = """\
NrPixelsY 48
NrPixelsZ 40
px 200
Lsd 500000
BC 22.2 19.7
Wavelength 0.1729
RMin 3
RMax 30
RBinSize 1
EtaBinSize 30
"""


def test_the_masked_bits_are_the_nxdetector_defect_bits_and_not_virtual_pixels():
    mask = np.array([[1 << b for b in range(32)]], np.uint32)
    assert list(np.flatnonzero(flagged(mask))) == [0, 1, 2, 3, 4, 6, 8]
    assert MASKED_BITS == 0b1_0101_1111


def test_a_stored_mask_is_named_by_its_content_and_checked_when_read(tmp_path):
    mask = np.zeros((40, 48), np.uint32)
    mask[3, 4] = 2
    digest = save_mask(tmp_path, mask)
    assert save_mask(tmp_path, mask.copy()) == digest and len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(load_stored_mask(tmp_path, digest, (40, 48)), mask)
    with pytest.raises(InputError, match="shape"):
        load_stored_mask(tmp_path, digest, (48, 40))
    path = tmp_path / f"{digest}.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="do not match its name"):
        load_stored_mask(tmp_path, digest)
    with pytest.raises(InputError, match="not a SHA-256 name"):
        load_stored_mask(tmp_path, "../" + digest[3:])


def test_the_map_with_a_detector_mask_is_the_map_with_it_as_maskfile(tmp_path):
    p = parse_params(PARAMS)
    detector = np.zeros((40, 48), np.uint32)
    detector[10:14, 30:40] = 1 << 1  # dead
    detector[0, :] = 1 << 31  # virtual pixels: kept
    digest = save_mask(tmp_path, detector)
    em = extra_mask(tmp_path, digest, (40, 48))
    assert int(em.flagged.sum()) == 40
    masked = build_map(p, em)
    assert masked.key == map_cache_key(p, digest) != map_cache_key(p) and map_cache_key(p, "") == map_cache_key(p)
    tifffile.imwrite(tmp_path / "mask.tif", em.flagged.astype(np.uint8))
    offline = build_map(parse_params(PARAMS + f"MaskFile {tmp_path / 'mask.tif'}\n"))
    np.testing.assert_array_equal(masked.mask, offline.mask)
    assert (masked.weights != offline.weights).nnz == 0
    np.testing.assert_array_equal(masked.bin_area, offline.bin_area)
    assert masked.bin_area.sum() < build_map(p).bin_area.sum()
    # cached under its own key; the parameter file's map is another entry
    imap, cached = load_or_build(p, tmp_path / "cache", extra_mask=em)
    assert not cached and load_or_build(p, tmp_path / "cache", extra_mask=em)[1] and imap.key == masked.key
    with pytest.raises(InputError, match="shape"):
        build_map(p, ExtraMask(digest, np.zeros((48, 40), bool)))


@pytest.mark.parametrize("corrections", ["", "SolidAngleCorrection 1\nPolarizationCorrection 1\n"])
def test_a_mask_s_map_derived_from_the_parameter_file_s_map_equals_its_build(tmp_path, corrections):
    p = parse_params(PARAMS + corrections)
    detector = np.zeros((40, 48), np.uint32)
    detector[5:25, 20:22] = 1 << 3  # hot columns across several rings
    detector[33, 7] = 1 << 0
    digest = save_mask(tmp_path, detector)
    em = extra_mask(tmp_path, digest, (40, 48))
    base, _ = load_or_build(p, tmp_path / "cache")
    built = build_map(p, em)
    derived, cached = load_or_build(p, tmp_path / "cache", extra_mask=em, base=base)
    assert not cached and derived.info["derived_from"] == base.key and derived.key == built.key
    for name in ("weights", "areas"):
        a, b = getattr(derived, name), getattr(built, name)
        for part in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=f"{name}.{part}")
    np.testing.assert_array_equal(derived.bin_area, built.bin_area)
    np.testing.assert_array_equal(derived.mask, built.mask)
    assert derived.info["nnz"] == built.info["nnz"] < base.info["nnz"]
    assert derived.info["n_pixels_split"] == built.info["n_pixels_split"]
    # saved under the mask's key: the next series with this mask loads it
    assert load_or_build(p, tmp_path / "cache", extra_mask=em, base=base)[1]


def _shipped(tmp_path: Path) -> ShippedFiles:
    (tmp_path / "mask.tif").write_bytes(b"m" * (PART_BYTES + 10))
    params = SimpleNamespace(MaskFile=tmp_path / "mask.tif", GapFile=None, BadPxFile=None, DistortionFile=None,
                             Dark=None)
    config = SimpleNamespace(run=SimpleNamespace(dark=str(tmp_path / "dark.npy"), state_dir=str(tmp_path / "state"),
                                                 output_h5="out.h5"))
    np.save(tmp_path / "dark.npy", np.ones((2, 2)))
    return ShippedFiles(config, params, "0" * 64)


def test_shipped_files_come_in_parts_checked_by_digest_and_only_the_entries(tmp_path):
    shipped = _shipped(tmp_path)
    listing = shipped.listing()
    assert sorted(listing) == ["MaskFile", "run.dark"] and listing["MaskFile"]["size"] == PART_BYTES + 10
    calls = []

    def ask_part(name, offset):
        calls.append(offset)
        return shipped.part(name, offset)

    info = fetch_file(ask_part, "MaskFile", tmp_path / "got" / "MaskFile.tif", listing["MaskFile"])
    assert calls == [0, PART_BYTES] and info["sha256"] == listing["MaskFile"]["sha256"]
    assert (tmp_path / "got" / "MaskFile.tif").read_bytes() == (tmp_path / "mask.tif").read_bytes()
    with pytest.raises(InputError, match="expected"):  # another digest announced: nothing is kept
        fetch_file(ask_part, "run.dark", tmp_path / "got" / "dark.npy", {"sha256": "f" * 64})
    assert not (tmp_path / "got" / "dark.npy").exists() and not list((tmp_path / "got").glob(".*"))
    for name in ("../mask.tif", str(tmp_path / "mask.tif"), "mask:xyz", "dark"):
        with pytest.raises(InputError, match="no file"):
            shipped.part(name, 0)
    with pytest.raises(InputError, match="cannot read"):  # the map the daemon could not cache
        shipped.describe("map")
    assert shipped.available("map") is None and shipped.available("MaskFile")["size"] == PART_BYTES + 10
    digest = save_mask(tmp_path / "state" / "masks", np.ones((2, 3), np.uint32))
    assert shipped.part(f"mask:{digest}", 0)[0]["sha256"] == digest

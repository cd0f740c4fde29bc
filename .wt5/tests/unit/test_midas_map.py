"""MIDAS v3 Map.bin / nMap.bin: the canonical hash string, the header layout, export -> import, refusals."""

from __future__ import annotations

import hashlib
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from ringstream.engines import ReferenceEngine
from ringstream.errors import MapError
from ringstream.geometry.midas_map import (
    RECORD_DTYPE,
    export_midas,
    import_midas,
    midas_canonical_string,
    midas_param_hash,
)
from ringstream.params import parse_params

# --------------------------------------------------------------------------------------- canonical string
KNOWN = """\
NrPixelsY 2048
NrPixelsZ 2048
px 200
Lsd 1000000
BC 1024.5 1023.25
tx 0.1
ty -0.2
tz 0.3
RhoD 200000
p0 0.0001
p1 -0.0002
p2 0.0003
p3 45
p4 0.5
p5 7
p6 90
RMin 10
RMax 1524
RBinSize 0.25
EtaMin -180
EtaMax 180
EtaBinSize 5
ImTransOpt 2
Wavelength 0.1729
"""

KNOWN_STRING = (
    "BC=1024.500000,1023.250000|EtaBinSize=5.000000|EtaMax=180.000000|EtaMin=-180.000000|"
    "Lsd=1000000.000000|NrPixelsY=2048|NrPixelsZ=2048|RBinSize=0.250000|RMax=1524.000000|RMin=10.000000|"
    "RhoD=200000.000000|TransOpt=1,2|p0=0.000100|p1=-0.000200|p2=0.000300|p3=45.000000|p4=0.500000|"
    "p6=90.000000|pxY=200.000000|pxZ=200.000000|tx=0.100000|ty=-0.200000|tz=0.300000"
)


def test_canonical_string_exact_text():
    p = parse_params(KNOWN)
    assert midas_canonical_string(p) == KNOWN_STRING
    assert midas_param_hash(p) == hashlib.sha256(KNOWN_STRING.encode()).digest()


def test_canonical_string_variants():
    # several ImTransOpt, none, and Q mode (the Wavelength with 8 decimals)
    p = parse_params(KNOWN + "ImTransOpt 1\nImTransOpt 0\n")
    assert "|TransOpt=3,2,1,0|" in midas_canonical_string(p)
    p = parse_params(KNOWN.replace("ImTransOpt 2\n", ""))
    assert "|RhoD=200000.000000|TransOpt=0|p0=0.000100|" in midas_canonical_string(p)
    p = parse_params(KNOWN + "QMin 0.5\nQMax 8\nQBinSize 0.001\n")
    assert midas_canonical_string(p) == KNOWN_STRING + "|qMode=1|Wavelength=0.17290000"
    # pxY / pxZ are the pitches as given; MIDAS v2 strings omit p6
    ns = SimpleNamespace(**{k: getattr(parse_params(KNOWN), k) for k in (
        "BC", "EtaBinSize", "EtaMax", "EtaMin", "Lsd", "NrPixelsY", "NrPixelsZ", "RBinSize", "RMax", "RMin",
        "RhoD", "ImTransOpt", "p", "tx", "ty", "tz", "q_mode", "Wavelength")}, pxY=172.0, pxZ=75.5)
    s = midas_canonical_string(ns)
    assert "|pxY=172.000000|pxZ=75.500000|" in s
    assert "|p4=0.500000|pxY=" in midas_canonical_string(ns, version=2)


def test_canonical_string_matches_c_printf_rounding():
    # C's printf("%.6f") and Python's format both round the exact binary value: spot-check awkward values
    ns = SimpleNamespace(
        BC=(0.0000005, -0.0000005), EtaBinSize=2.5e-7, EtaMax=1e15, EtaMin=-0.0, Lsd=999999.9999995,
        NrPixelsY=1, NrPixelsZ=2, RBinSize=0.1234565, RMax=1.0000005, RMin=0.0, RhoD=1.5,
        ImTransOpt=(), p=(0.0,) * 15, pxY=1.0, pxZ=1.0, tx=0.0, ty=0.0, tz=0.0, q_mode=False, Wavelength=0.0,
    )
    s = midas_canonical_string(ns)
    # the output of glibc printf("%.6f") for these values (checked with gcc)
    assert s.startswith(
        "BC=0.000000,-0.000000|EtaBinSize=0.000000|EtaMax=1000000000000000.000000|EtaMin=-0.000000|"
        "Lsd=999999.999999|NrPixelsY=1|NrPixelsZ=2|RBinSize=0.123456|RMax=1.000001|RMin=0.000000|"
    )
    assert "EtaMin=-0.000000" in s  # C prints the sign of -0.0 too


# ------------------------------------------------------------------------------------------- a small map
SMALL = """\
NrPixelsY 40
NrPixelsZ 36
px 200
Lsd 400000
BC 17.4 20.8
tx 0.7
ty 1.1
tz -0.9
p0 0.0002
p2 0.0001
p6 30
RhoD 10000
Wavelength 0.2
RMin 3
RMax 28
RBinSize 0.7
EtaMin -180
EtaMax 180
EtaBinSize 15
ImTransOpt 1
SolidAngleCorrection 1
PolarizationCorrection 1
"""


@pytest.fixture(scope="module")
def small():
    from ringstream.geometry.map import build_map

    p = parse_params(SMALL)
    return p, build_map(p)


@pytest.fixture()
def exported(small, tmp_path):
    p, imap = small
    map_path, nmap_path = export_midas(imap, p, tmp_path / "midas")
    return p, imap, map_path, nmap_path


def test_header_layout(exported):
    p, imap, map_path, nmap_path = exported
    data, ndata = map_path.read_bytes(), nmap_path.read_bytes()
    assert map_path.name == "Map.bin" and nmap_path.name == "nMap.bin"
    for hdr in (data[:64], ndata[:64]):
        assert hdr[0:4] == b"MAP0"
        assert struct.unpack_from("<I", hdr, 0)[0] == 0x3050414D
        assert struct.unpack_from("<I", hdr, 4)[0] == 3
        assert hdr[8:40] == midas_param_hash(p)
        assert hdr[40] == 0  # R mode
        assert hdr[41] == 1  # gradient_mode
        assert hdr[42:48] == b"\0" * 6
        assert struct.unpack_from("<d", hdr, 48)[0] == 0.0  # wavelength is written in Q mode only
        assert hdr[56:64] == b"\0" * 8
    n_bins = imap.n_r * imap.n_eta
    assert len(data) == 64 + 24 * imap.weights.nnz
    assert len(ndata) == 64 + 8 * n_bins
    assert RECORD_DTYPE.itemsize == 24


def test_records_content(exported):
    from ringstream.geometry.detector import DetectorGeometry

    p, imap, map_path, nmap_path = exported
    rec = np.fromfile(map_path, dtype=RECORD_DTYPE, offset=64)
    nmap = np.fromfile(nmap_path, dtype="<i4", offset=64).reshape(-1, 2)
    w = imap.weights.tocsr()
    np.testing.assert_array_equal(nmap[:, 0], np.diff(w.indptr))
    np.testing.assert_array_equal(nmap[:, 1], w.indptr[:-1])
    # pick a well-filled bin and check its records
    b = int(np.argmax(np.diff(w.indptr)))
    cnt, off = nmap[b]
    r = rec[off:off + cnt]
    cols = (r["z"].astype(np.int64) * p.NrPixelsY + r["y"].astype(np.int64))
    np.testing.assert_array_equal(np.sort(cols), np.sort(w.indices[w.indptr[b]:w.indptr[b + 1]]))
    dense_w = w[b].toarray().ravel()
    dense_a = imap.areas.tocsr()[b].toarray().ravel()
    np.testing.assert_array_equal(r["frac"], dense_w[cols])
    np.testing.assert_allclose(r["areaWeight"], dense_a[cols], rtol=1e-7)
    # deltaR = R(pixel centre) - R(bin centre); with ImTransOpt 1 the raw column y is transformed column ny-1-y
    geom = DetectorGeometry.from_params(p)
    rc, _ = geom.r_eta(p.NrPixelsY - 1 - r["y"].astype(np.float64), r["z"].astype(np.float64))
    np.testing.assert_allclose(r["deltaR"], rc - imap.r_px[b // imap.n_eta], atol=1e-5)
    assert np.all(np.abs(r["deltaR"]) < 2.0)


def test_export_import_round_trip(exported):
    p, imap, map_path, nmap_path = exported
    back = import_midas(map_path.parent, p)
    assert back.key == "midas:" + midas_param_hash(p).hex()
    assert (back.n_r, back.n_eta) == (imap.n_r, imap.n_eta) and tuple(back.shape) == tuple(imap.shape)
    np.testing.assert_allclose(back.bin_area, imap.bin_area, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(back.r_px, imap.r_px)
    np.testing.assert_array_equal(back.eta, imap.eta)
    np.testing.assert_array_equal(back.mask, imap.mask)
    rng = np.random.default_rng(11)
    frames = rng.uniform(10, 1000, size=(4, *imap.shape))
    lo_a, cake_a = ReferenceEngine(imap).integrate_batch(frames)
    lo_b, cake_b = ReferenceEngine(back).integrate_batch(frames)
    np.testing.assert_allclose(lo_b, lo_a, rtol=1e-6)
    np.testing.assert_allclose(cake_b, cake_a, rtol=1e-6, atol=1e-9)


def test_q_mode_header(small, tmp_path):
    _, imap = small
    p = parse_params(SMALL + "QMin 0.5\nQMax 2\nQBinSize 0.1\n")
    map_path, _ = export_midas(imap, p, tmp_path)  # (header only matters here)
    hdr = map_path.read_bytes()[:64]
    assert hdr[40] == 1
    assert struct.unpack_from("<d", hdr, 48)[0] == 0.2
    assert hdr[8:40] == hashlib.sha256(midas_canonical_string(p).encode()).digest()
    assert midas_canonical_string(p).endswith("|qMode=1|Wavelength=0.20000000")


def test_hash_mismatch_refused_unless_forced(exported):
    p, imap, map_path, _ = exported
    other = parse_params(SMALL + "Lsd 400001\n", source="other.txt")
    with pytest.raises(MapError, match=r"Map\.bin: parameter hash does not match --param-file other\.txt "
                                       r"\(map built for other parameters\); use --force to integrate anyway"):
        import_midas(map_path.parent, other)
    forced = import_midas(map_path.parent, other, force=True)
    assert forced.weights.nnz == imap.weights.nnz


def test_legacy_files(exported):
    p, imap, map_path, nmap_path = exported
    map_path.write_bytes(map_path.read_bytes()[64:])
    nmap_path.write_bytes(nmap_path.read_bytes()[64:])
    with pytest.raises(MapError, match=r"Map\.bin: legacy .*cannot be validated.*--force"):
        import_midas(map_path.parent, p)
    back = import_midas(map_path.parent, p, force=True)
    assert back.key.startswith("midas:legacy:") and back.info["legacy"]
    frame = np.random.default_rng(3).uniform(0, 100, size=imap.shape)
    np.testing.assert_allclose(ReferenceEngine(back).integrate(frame)[0], ReferenceEngine(imap).integrate(frame)[0],
                               rtol=1e-6)


def test_truncated_map_bin(exported):
    p, _, map_path, _ = exported
    data = map_path.read_bytes()
    map_path.write_bytes(data[:-24])  # one whole record missing
    with pytest.raises(MapError, match=r"Map\.bin holds \d+ records \(truncated"):
        import_midas(map_path.parent, p)
    map_path.write_bytes(data[:-10])  # a partial record
    with pytest.raises(MapError, match=r"Map\.bin: size \d+ bytes .*truncated"):
        import_midas(map_path.parent, p, force=True)


def test_size_inconsistencies(exported):
    p, _, map_path, nmap_path = exported
    ndata = nmap_path.read_bytes()
    # bin count of other parameters
    other = parse_params(SMALL + "EtaBinSize 30\n")
    with pytest.raises(MapError, match=r"nMap\.bin: holds \d+ bins, .* n_r·n_eta = \d+·12 = \d+"):
        import_midas(map_path.parent, other, force=True)
    # nMap.bin with a stray byte
    nmap_path.write_bytes(ndata + b"\0")
    with pytest.raises(MapError, match=r"nMap\.bin: size"):
        import_midas(map_path.parent, p)
    # an offset past the end of Map.bin
    bad = bytearray(ndata)
    struct.pack_into("<ii", bad, 64, 5, 10**8)
    nmap_path.write_bytes(bytes(bad))
    with pytest.raises(MapError, match=r"nMap\.bin: bin 0 needs records"):
        import_midas(map_path.parent, p)


def test_export_of_maps_whose_patterns_differ(small, tmp_path):
    import dataclasses

    p, imap = small
    w = imap.weights.tocsr(copy=True)
    w.data[:5] = 0.0  # five (pixel, bin) pairs with area but no weight
    w.eliminate_zeros()
    odd = dataclasses.replace(imap, weights=w)
    map_path, _ = export_midas(odd, p, tmp_path)
    back = import_midas(tmp_path, p)
    assert back.weights.nnz == imap.weights.nnz  # records on the union of the two patterns
    np.testing.assert_allclose(back.bin_area, imap.bin_area, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(back.weights.toarray(), w.toarray())


def test_export_refuses_other_detector(small, tmp_path):
    _, imap = small
    with pytest.raises(MapError, match="detector"):
        export_midas(imap, parse_params(SMALL + "NrPixelsY 41\n"), tmp_path)

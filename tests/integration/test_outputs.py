"""The files users open, from the real console script: ``ringstream integrate`` (offline) and ``ringstream run``
(the daemon) write the whole docs/OUTPUTS.md layout, the zarr.zip of docs/MIDAS-FORMATS.md section 7 and the MIDAS binaries;
``ringstream export`` regenerates them from the HDF5 file bit for bit; a reader following a growing file never sees
a torn frame and sees each frame within about a second."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from common import ringstream_command
from test_daemon import daemons  # noqa: F401 - the fixture (kills whatever a test leaves)

from ringstream.writer.midas_binaries import read_fit_curves

PARAMS = """\
NrPixelsY 40
NrPixelsZ 36
Lsd 1000000
px 200
BC 19.6 17.3
ty 0.2
RMin 2
RMax 18
RBinSize 1
EtaBinSize 30
Wavelength 0.2
"""

N_R, N_ETA = 16, 12

#: the rings of the simulated frames these tests integrate (px): one on a bin edge, one mid-bin; the fits look there
RINGS_R = (6.0, 11.0)
FIT = "PeakLocation 6\nPeakLocation 11\nFitROIPadding 4\n"


def run_cli(args, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run(ringstream_command() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def _zarr(path: Path):
    return zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r", zarr_format=2)


def check_layout(f: h5py.File, n: int, cakes: bool, n_peaks: int) -> None:
    """Every group, dataset and attribute of OUTPUTS.md (NXazint1d required fields first)."""
    e = f["entry"]
    assert e.attrs["NX_class"] == "NXentry" and e["definition"][()] == b"NXazint1d"
    for flag in ("solid_angle_applied", "polarization_applied", "normalization_applied"):
        assert e[flag].dtype == np.bool_ and e[flag].shape == ()
    inst = e["instrument"]
    assert inst.attrs["NX_class"] == "NXinstrument" and "name" in inst
    mono = inst["monochromator"]
    assert mono["wavelength"][()] == 0.2 and mono["wavelength"].attrs["units"] == "angstrom"
    assert mono["energy"][()] == pytest.approx(12.398419843320026 / 0.2) and mono["energy"].attrs["units"] == "keV"
    red = e["reduction"]
    assert red.attrs["NX_class"] == "NXprocess" and red["program"][()] == b"ringstream"
    for name in ("version", "date", "note", "engine"):
        assert len(red[name][()]) > 0, name
    assert red["input"].attrs["NX_class"] == "NXparameters"
    assert b"RBinSize 1" in red["input/parameter_file"][()] and red["input/RBinSize"][()] == 1.0
    d = e["data"]
    assert d.attrs["NX_class"] == "NXdata" and d.attrs["signal"] == "I" and d.attrs["interpretation"] == "spectrum"
    assert list(d.attrs["axes"]) == [".", "radial_axis"]
    assert d["I"].shape == (n, N_R) and d["I"].dtype == np.float32
    assert d["radial_axis"].attrs["long_name"] == "2theta" and d["radial_axis"].attrs["units"] == "deg"
    for name, dtype in (("radial_axis", np.float64), ("r_px", np.float64), ("q", np.float64)):
        assert d[name].shape == (N_R,) and d[name].dtype == dtype, name
    np.testing.assert_allclose(d["q"][:], 4 * np.pi / 0.2 * np.sin(np.radians(d["radial_axis"][:] / 2)), rtol=1e-12)
    assert d["frame_index"].dtype == np.uint64 and d["frame_index"].shape == (n,)
    assert d["source_id"].shape == (n,) and h5py.check_string_dtype(d["source_id"].dtype)
    assert d["timestamp"].dtype == np.float64 and d["timestamp"].shape == (n,) and d["timestamp"][0] > 1.6e9
    assert d["omega"].shape == (n,) and d["metadata/metadata_json"].shape == (n,)
    if cakes:  # an NXentry of their own, NXazint2d
        assert f["cake"].attrs["NX_class"] == "NXentry" and f["cake/definition"][()] == b"NXazint2d"
        c = f["cake/data"]
        assert c.attrs["NX_class"] == "NXdata" and c.attrs["signal"] == "I"
        assert c["I"].shape == (n, N_ETA, N_R) and c["I"].dtype == np.float32
        assert c["radial_axis"].shape == (N_R,) and c["azimuthal_axis"].shape == (N_ETA,)
    else:
        assert "cake" not in f
    for name in ("r_px", "two_theta", "eta", "area", "q"):
        assert e["geometry"][name].shape == (N_R, N_ETA) and e["geometry"][name].dtype == np.float64
    if n_peaks:
        assert e["fit/peaks"].shape == (n, n_peaks, 7)
        assert e["fit/peaks"].attrs["columns"] == "Imax,BG,Mu,Rcen,Sigma,GoF,Area"
        assert e["fit/peak_locations"].shape == (n_peaks,)
    else:
        assert "fit" not in e
    assert "omega_sum" in e and e["omega_sum/I"].shape[1:] == (N_R, N_ETA)
    assert int(e.attrs["frames_written"]) == n and bool(e.attrs["run_complete"])


def rings_2theta(params) -> list[float]:
    """The 2θ (deg) of :data:`RINGS_R` on the detector of ``params``."""
    from ringstream.geometry.detector import DetectorGeometry

    return [float(t) for t in DetectorGeometry.from_params(params).two_theta_deg(np.array(RINGS_R))]


def ring_source(params, n: int, rings: list[float] | None = None):
    """The simulated frames of these tests: rings at :data:`RINGS_R` (or at ``rings`` 2θ), seed 0, int32."""
    from ringstream.ingest.simulated import SimulatedSource

    return SimulatedSource(params, n_frames=n, seed=0, dtype="int32", precompute=False,
                           rings_2theta=rings_2theta(params) if rings is None else rings)


def check_fits_the_rings(fit: np.ndarray, params_path: Path) -> None:
    """The fit rows ``[n, 2, 7]`` (Imax, BG, Mu, Rcen, Sigma, GoF, Area) of frames with rings at :data:`RINGS_R`
    against the truth of the simulated pattern: the ring radius, its Gaussian width σ (spread over bins of 1 px:
    σ_eff² = σ² + 1/12), and the area, height and background of the noise-free pattern integrated by the reference
    engine, each ring alone (a Poisson draw of it is what the fitter saw)."""
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.geometry.detector import DetectorGeometry
    from ringstream.params import load_params

    p = load_params(params_path)
    imap, _ = load_or_build(p)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    r = np.asarray(imap.r_px, dtype=np.float64)
    rings = ring_source(p, 1)
    bg = engine.integrate(ring_source(p, 1, [179.0]).mean)[0].astype(np.float64)  # no ring on the detector
    tth = DetectorGeometry.from_params(p).two_theta_deg
    assert fit.shape[1:] == (2, 7) and np.isfinite(fit).all(), fit
    for j, (rc, t) in enumerate(zip(RINGS_R, rings.rings_2theta, strict=True)):
        ring = engine.integrate(ring_source(p, 1, [t]).mean)[0].astype(np.float64) - bg
        sigma = rings.sigma_2theta / float(tth(np.array([rc + 0.5]))[0] - tth(np.array([rc - 0.5]))[0])
        sigma_eff = np.sqrt(sigma**2 + 1 / 12)
        area = ring.sum() * float(p.RBinSize)  # the ring's counts·px: pixel splitting conserves it
        imax, bg_at, mu, rcen, sig, _, got_area = fit[:, j].T
        np.testing.assert_allclose(rcen, rc, rtol=0, atol=0.06, err_msg=f"Rcen of ring {j}")
        np.testing.assert_allclose(sig, sigma_eff, rtol=0.05, err_msg=f"Sigma of ring {j}")
        np.testing.assert_allclose(imax, area / (sigma_eff * np.sqrt(2 * np.pi)), rtol=0.06, err_msg=f"Imax {j}")
        np.testing.assert_allclose(got_area, area, rtol=0.15, err_msg=f"Area of ring {j}")
        # over the frames the noise averages out
        assert abs(got_area.mean() / area - 1) < 0.04, (j, got_area, area)
        assert mu.mean() < 0.1, (j, mu)  # a Gaussian ring: the Lorentzian fraction stays small
        assert abs(bg_at.mean() / np.interp(rc, r, bg) - 1) < 0.15, (j, bg_at, np.interp(rc, r, bg))


def check_zarr_equals_h5(zpath: Path, f: h5py.File) -> list[str]:
    """The zarr.zip has exactly the arrays, shapes, attributes and order of docs/MIDAS-FORMATS.md section 7, and its
    OmegaSumFrame groups are the HDF5 file's /entry/omega_sum rows."""
    z = _zarr(zpath)
    assert sorted(z.keys()) == ["InstrumentParameters", "OmegaSumFrame", "REtaMap"]
    g = f["entry/geometry"]
    remap = z["REtaMap"][...]
    assert remap.shape == (5, N_R, N_ETA) and remap.dtype == np.float64 and not np.isnan(remap).any()
    for plane, name in enumerate(("r_px", "two_theta", "eta", "area", "q")):
        np.testing.assert_array_equal(remap[plane], g[name][...])
    ip = z["InstrumentParameters"]
    assert sorted(ip.keys()) == sorted(["Lam", "Polariz", "SH_L", "U", "V", "W", "X", "Y", "Z", "Distance"])
    assert ip["Lam"][...].tolist() == [0.2] and ip["Distance"][...].tolist() == [1000000.0]
    assert all(ip[k].shape == (1,) and ip[k].dtype == np.float64 for k in ip.keys())
    o = f["entry/omega_sum"]
    names = list(z["OmegaSumFrame"].keys())
    assert names == [v.decode() for v in o["name"][:]] and names == sorted(names)
    for k, name in enumerate(names):
        a = z["OmegaSumFrame"][name]
        assert a.shape == (N_R, N_ETA) and a.dtype == np.float32 == o["I"].dtype  # ([output] cake_dtype)
        assert a[...].tobytes() == o["I"][k].tobytes()
        assert dict(a.attrs) == {"Number Of Frames Summed": int(o["n_frames"][k]),
                                 "LastFrameNumber": int(o["last_frame"][k]),
                                 "FirstOme": float(o["first_omega"][k]), "LastOme": float(o["last_omega"][k])}
    with zipfile.ZipFile(zpath) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}  # (the arrays are: Blosc)
        for name in ["REtaMap"] + [f"OmegaSumFrame/{n}" for n in names]:
            assert json.loads(zf.read(f"{name}/.zarray"))["compressor"]["id"] == "blosc", name
        assert len({i.filename for i in zf.infolist()}) == len(zf.infolist())  # every member written once
    return names


def check_export(h5: Path, tmp_path: Path, zpath: Path, mdir: Path, cwd: Path) -> None:
    """``ringstream export`` regenerates the zarr.zip and the MIDAS binaries bit for bit."""
    run_cli(["export", h5, "--zarr-zip", tmp_path / "re.zarr.zip", "--midas-binaries", tmp_path / "re",
             "--csv", tmp_path / "csv"], cwd)
    for p in mdir.iterdir():
        assert (tmp_path / "re" / p.name).read_bytes() == p.read_bytes(), p.name
    with zipfile.ZipFile(zpath) as a, zipfile.ZipFile(tmp_path / "re.zarr.zip") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in a.namelist():
            assert a.read(name) == b.read(name), name
    lines = (tmp_path / "csv" / "lineouts.csv").read_text().splitlines()
    with h5py.File(h5) as f:
        assert len(lines) == 1 + f["entry/data/I"].shape[0]
        row = lines[2].split(",")
        assert int(row[0]) == int(f["entry/data/frame_index"][1])
        np.testing.assert_array_equal(np.array(row[4:], dtype=np.float64), f["entry/data/I"][1])


@pytest.mark.timeout(120)
def test_offline_integrate_writes_every_output(tmp_path):
    import tifffile

    from ringstream.params import load_params

    (tmp_path / "setup.txt").write_text(PARAMS + "Write2D 1\nOmegaSumFrames 3\nOmegaStart 5\nOmegaStep 0.5\n" + FIT)
    source = ring_source(load_params(tmp_path / "setup.txt"), 8)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(8):
        tifffile.imwrite(imgs / f"frame_{k:03d}.tif", source.make_frame(k))
    mdir = tmp_path / "midas"
    run_cli(["integrate", "--param-file", "setup.txt", "--output-h5", "out.h5", "--midas-binaries", mdir,
             "--engine", "cpu", imgs], tmp_path)
    zpath = tmp_path / "out.zarr.zip"
    with h5py.File(tmp_path / "out.h5") as f:
        check_layout(f, 8, cakes=True, n_peaks=2)
        e = f["entry"]
        assert e["data/source_id"][0] == b"frame_000.tif"
        np.testing.assert_array_equal(e["data/omega"][:], 5 + 0.5 * np.arange(8))
        check_fits_the_rings(e["fit/peaks"][:], tmp_path / "setup.txt")
        fits = e["fit/peaks"][:]
        cakes = f["cake/data/I"][:].transpose(0, 2, 1).astype(np.float64)
        for g, (a, b) in enumerate(((0, 3), (3, 6), (6, 8))):  # the sums are the sums of the file's cakes
            want = np.zeros((N_R, N_ETA))
            for k in range(a, b):
                want += cakes[k]
            np.testing.assert_array_equal(e["omega_sum/I"][g], want.astype(np.float32))  # rounded once
        assert list(e["omega_sum/n_frames"][:]) == [3, 3, 2]
        np.testing.assert_array_equal(e["omega_sum/first_omega"][:], [5.0, 6.5, 8.0])
        names = check_zarr_equals_h5(zpath, f)
        assert names == ["LastFrameNumber_000000002", "LastFrameNumber_000000005", "LastFrameNumber_000000007"]
        assert e["omega_sum/named"][names[1]].attrs["Number Of Frames Summed"] == 3
        lines = e["data/I"][:].astype(np.float64)
    np.testing.assert_array_equal(np.fromfile(mdir / "fit.bin").reshape(-1, 2, 7), fits)
    lo = np.fromfile(mdir / "lineout.bin").reshape(8, N_R, 2)
    np.testing.assert_array_equal(lo[:, :, 1], lines)
    np.testing.assert_array_equal(np.fromfile(mdir / "Int2D.bin").reshape(8, N_R, N_ETA), cakes)
    assert (mdir / "RTthEtaAreaMap.bin").stat().st_size == 4 * N_R * N_ETA * 8
    assert [c[0] for c in read_fit_curves(mdir / "fit_curves.bin")] == list(range(8))  # one ROI around both rings
    check_export(tmp_path / "out.h5", tmp_path, zpath, mdir, tmp_path)


def reference_cakes(params_path: Path, n: int) -> np.ndarray:
    from ringstream.engines.reference import ReferenceEngine
    from ringstream.geometry.cache import load_or_build
    from ringstream.params import load_params

    p = load_params(params_path)
    imap, _ = load_or_build(p)
    source = ring_source(p, n)
    engine = ReferenceEngine(imap, normalize=bool(p.Normalize))
    _, cakes = engine.integrate_batch(np.stack([source.make_frame(k) for k in range(n)]))
    return cakes.astype(np.float32)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("write_2d", [0, 1], ids=["worker-sums", "cakes"])
def test_daemon_writes_every_output(tmp_path, daemons, write_2d):  # noqa: F811
    from ringstream.params import load_params

    params = tmp_path / "setup.txt"
    fitting = "" if write_2d else FIT  # /entry/fit and fit.bin in a daemon run
    params.write_text(PARAMS + f"Write2D {write_2d}\nOmegaSumFrames 7\n" + fitting)
    rings = ", ".join(repr(t) for t in rings_2theta(load_params(params)))
    (tmp_path / "daemon.toml").write_text(f"[source]\nrings_2theta = [{rings}]\n")
    mdir = tmp_path / "midas"
    mdir.mkdir()
    d = daemons(["--param-file", params, "--config", tmp_path / "daemon.toml", "--simulate", 40, "--workers", 2,
                 "--output-h5", "out.h5", "--save-interval", 10, "--midas-binaries", mdir], tmp_path)
    assert d.wait(60) == 0, d.stderr
    ref = reference_cakes(params, 40).astype(np.float64)
    zpath = tmp_path / "out.zarr.zip"
    with h5py.File(tmp_path / "out.h5") as f:
        check_layout(f, 40, cakes=bool(write_2d), n_peaks=0 if write_2d else 2)
        e = f["entry"]
        if not write_2d:  # the workers fitted both rings of every frame; fit.bin holds the file's fit rows
            check_fits_the_rings(e["fit/peaks"][:], params)
            np.testing.assert_array_equal(np.fromfile(mdir / "fit.bin").reshape(-1, 2, 7), e["fit/peaks"][:])
        np.testing.assert_array_equal(e["data/frame_index"][:], np.arange(40))
        np.testing.assert_array_equal(e["data/metadata/realisation"][:], np.arange(40) % 8)  # source metadata
        np.testing.assert_array_equal(e["data/omega"][:], np.arange(40))  # no omega keys: the frame index
        o = e["omega_sum"]
        assert list(o["n_frames"][:]) == [7] * 5 + [5] and list(o["last_frame"][:]) == [6, 13, 20, 27, 34, 39]
        for g in range(6):
            want = ref[7 * g:7 * g + 7].sum(axis=0)
            # float32 sums: the float64 sum rounded once (half a float32 ulp, 2**-24), whatever the order of adding
            np.testing.assert_allclose(o["I"][g], want, rtol=6e-8, atol=1e-9 * np.abs(want).max())
            if write_2d:  # the writer summed the file's own cakes, in frame order: bit for bit
                mine = np.zeros((N_R, N_ETA))
                for k in range(7 * g, min(40, 7 * g + 7)):
                    mine += f["cake/data/I"][k].T.astype(np.float64)
                np.testing.assert_array_equal(o["I"][g], mine.astype(np.float32))
        check_zarr_equals_h5(zpath, f)
    assert sorted(p.name for p in mdir.iterdir()) == (
        ["Int2D.bin", "RTthEtaAreaMap.bin", "lineout.bin"] if write_2d
        else ["RTthEtaAreaMap.bin", "fit.bin", "fit_curves.bin", "lineout.bin"])
    check_export(tmp_path / "out.h5", tmp_path, zpath, mdir, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("write_2d", [0, 1], ids=["sums", "cakes"])
def test_daemon_one_frame_a_group_stores_what_the_workers_compressed(tmp_path, daemons, write_2d):  # noqa: F811
    """``OmegaSumFrames 1`` (MIDAS's default): every sum is one frame's, compressed by its worker for both files
    (and, with ``Write2D 1``, the cake too) and placed by the writer; the files hold the float32 cakes exactly,
    byte for byte what compressing them gives, the zarr.zip the HDF5 file's rows."""
    from ringstream.compression import hdf5_chunk
    from ringstream.params import load_params

    params = tmp_path / "setup.txt"
    params.write_text(PARAMS + f"Write2D {write_2d}\nOmegaSumFrames 1\n")
    rings = ", ".join(repr(t) for t in rings_2theta(load_params(params)))
    (tmp_path / "daemon.toml").write_text(f"[source]\nrings_2theta = [{rings}]\n")  # (the reference's frames)
    d = daemons(["--param-file", params, "--config", tmp_path / "daemon.toml", "--simulate", 12, "--workers", 2,
                 "--output-h5", "out.h5"], tmp_path)
    assert d.wait(60) == 0, d.stderr
    ref = reference_cakes(params, 12)
    with h5py.File(tmp_path / "out.h5") as f:
        o = f["entry/omega_sum"]
        assert list(o["n_frames"][:]) == [1] * 12 and list(o["last_frame"][:]) == list(range(12))
        for k in range(12):  # the float64 sum of one float32 cake, rounded once: the cake itself
            np.testing.assert_array_equal(o["I"][k], ref[k])
            assert o["I"].id.read_direct_chunk((k, 0, 0))[1] == hdf5_chunk(ref[k])
            if write_2d:
                np.testing.assert_array_equal(f["cake/data/I"][k], ref[k].T)
                assert f["cake/data/I"].id.read_direct_chunk((k, 0, 0))[1] == hdf5_chunk(np.ascontiguousarray(ref[k].T))
        check_zarr_equals_h5(tmp_path / "out.zarr.zip", f)


@pytest.mark.timeout(120)
def test_daemon_precision_bounded_sums(tmp_path, daemons):  # noqa: F811
    """``--cake-noise-fraction 0.01`` in the daemon (the workers' partial sums): every omega sum within 0.01 of the
    counting noise the file's model gives it (beyond the float32 cakes it is made of), the same numbers and the
    precision attributes in the zarr.zip."""
    from ringstream.params import load_params
    from ringstream.writer.precision import SAFETY

    params = tmp_path / "setup.txt"
    params.write_text(PARAMS + "Write2D 0\nOmegaSumFrames 7\n")
    rings = ", ".join(repr(t) for t in rings_2theta(load_params(params)))  # (the frames reference_cakes makes)
    (tmp_path / "daemon.toml").write_text(f"[source]\nrings_2theta = [{rings}]\n")
    d = daemons(["--param-file", params, "--config", tmp_path / "daemon.toml", "--simulate", 14, "--workers", 2,
                 "--output-h5", "out.h5", "--cake-noise-fraction", "0.01"], tmp_path)
    assert d.wait(60) == 0, d.stderr
    ref = reference_cakes(params, 14).astype(np.float64)  # float32 cakes, as the workers sum them
    with h5py.File(tmp_path / "out.h5") as f:
        o = f["entry/omega_sum/I"]
        assert o.attrs["cake_noise_fraction"] == 0.01 and "precision-bounded" in o.attrs["precision"]
        g, x_min = f["entry/reduction/cake_noise_model"][()]
        for k in range(2):
            want = ref[7 * k:7 * k + 7].sum(axis=0)
            sigma = np.sqrt(np.where(want >= x_min, SAFETY * g * want, 0.0))
            slack = 1e-12 * np.abs(want) + np.spacing(np.abs(want).astype(np.float32))  # (order of adding, ulp)
            assert np.all(np.abs(o[k].astype(np.float64) - want) <= 0.01 * sigma + slack)
            assert np.count_nonzero(o[k] != want.astype(np.float32)) > o[k].size // 4  # (it did round)
        z = _zarr(tmp_path / "out.zarr.zip")["OmegaSumFrame"]
        for k, name in enumerate(sorted(z.keys())):
            assert z[name][...].tobytes() == o[k].tobytes() and z[name].attrs["cake_noise_fraction"] == 0.01


FOLLOW = textwrap.dedent("""
    import json, sys, time
    import h5py, numpy as np
    path, ref_path, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
    ref = np.load(ref_path)                      # the reference lineout of each of the 8 simulated frames
    seen, torn, late, f, checked = [], 0, [], None, 0
    while time.monotonic() < deadline:
        if f is None:
            try:
                f = h5py.File(path, "r", libver="latest", swmr=True)
                I, idx, ts = f["/entry/data/I"], f["/entry/data/frame_index"], f["/entry/data/timestamp"]
            except (OSError, KeyError):
                f = None
                time.sleep(0.02)
                continue
        I.refresh(); idx.refresh(); ts.refresh()
        n = int(I.attrs["frames_written"])
        now = time.time()
        if n > checked:
            rows, ks, stamps = I[checked:n], idx[checked:n], ts[checked:n]
            for row, k, t in zip(rows, ks, stamps):
                if not np.allclose(row, ref[int(k) % 8], rtol=1e-6, atol=1e-6):
                    torn += 1
                late.append(now - float(t))
            if list(ks) != list(range(checked, n)):
                torn += 1
            checked = n
            seen.append(n)
        if bool(I.attrs["run_complete"]):
            break
        time.sleep(0.02)
    print(json.dumps({"seen": seen, "torn": torn, "max_latency": max(late) if late else None,
                      "checked": checked}))
""")


@pytest.mark.timeout(90)
def test_reader_follows_a_growing_file_and_never_sees_a_torn_frame(tmp_path, daemons):  # noqa: F811
    from test_daemon import reference_lineouts

    params = tmp_path / "setup.txt"
    params.write_text(PARAMS + "Write2D 1\n")
    np.save(tmp_path / "ref.npy", reference_lineouts(params, 8).astype(np.float32))
    d = daemons(["--param-file", params, "--simulate", 300, "--rate", 100, "--output-h5", "out.h5"], tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", FOLLOW, str(tmp_path / "out.h5"), str(tmp_path / "ref.npy"),
                               "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert d.wait(30) == 0, d.stderr
    got = json.loads(out)
    print(f"reader: {len(got['seen'])} sizes seen, max latency {got['max_latency']:.3f} s, torn {got['torn']}")
    assert got["checked"] == 300 and got["torn"] == 0, (got, err)
    assert len(got["seen"]) >= 5 and got["seen"] == sorted(got["seen"])  # it grew while the reader watched
    # each frame visible within ~1 s of its ingest (flush every 0.5 s at the latest; slack for this shared box)
    assert got["max_latency"] < 1.5, got

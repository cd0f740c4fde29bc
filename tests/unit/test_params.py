"""MIDAS parameter files: lexical rules, aliases, defaults, overrides, errors, consistency checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ringstream.errors import EXIT_CONFIG, ParamError
from ringstream.params import KNOWN_KEYS, Params, load_params, parse_overrides, parse_params

BASE = "NrPixelsY 2048\nNrPixelsZ 2048\nLsd 1000000\nBC 1024 1024\npx 200\nRBinSize 0.25\n"


def parse(extra: str = "", overrides=(), base: str = BASE) -> Params:
    return parse_params(base + extra, "setup.txt", overrides)


def error(extra: str = "", overrides=(), base: str = BASE) -> str:
    with pytest.raises(ParamError) as info:
        parse(extra, overrides, base)
    return str(info.value)


# --------------------------------------------------------------------------- lexical rules


def test_minimal_file_and_shape():
    p = parse()
    assert (p.NrPixelsY, p.NrPixelsZ, p.Lsd, p.BC, p.px, p.RBinSize) == (2048, 2048, 1e6, (1024.0, 1024.0), 200.0, 0.25)
    assert p.shape == (2048, 2048)
    assert p.source == Path("setup.txt") and p.text == BASE
    assert p.unknown_keys == () and p.warnings == ()
    assert isinstance(p.NrPixelsY, int) and isinstance(p.Lsd, float)


def test_shape_is_rows_then_columns():
    p = parse(base=BASE.replace("NrPixelsZ 2048", "NrPixelsZ 1024"))
    assert p.shape == (1024, 2048)


def test_comments_anywhere_blank_lines_and_tabs():
    text = "# header\n\n   \nNrPixels\t\t512 # both axes\nLsd 500000#no space\n\tBC  256\t 255.5  \npx 172\nRBinSize 1\n"
    p = parse_params(text, "setup.txt")
    assert (p.NrPixelsY, p.NrPixelsZ, p.Lsd, p.BC, p.px) == (512, 512, 5e5, (256.0, 255.5), 172.0)


def test_trailing_semicolon_dropped():
    p = parse("tx 0.5;\nWavelength 0.1729 ;\nBC 1000; 1001;\n")
    assert p.tx == 0.5 and p.Wavelength == 0.1729 and p.BC == (1000.0, 1001.0)


def test_crlf_and_bom():
    p = parse_params("\ufeff" + BASE.replace("\n", "\r\n"), "setup.txt")
    assert p.NrPixelsY == 2048 and p.RBinSize == 0.25


def test_scalar_last_wins():
    assert parse("Lsd 900000\nLsd 800000\n").Lsd == 8e5


def test_keys_are_case_sensitive_with_hint():
    p = parse("lsd 5\n")
    assert p.Lsd == 1e6
    assert p.unknown_keys == (("setup.txt", 7, "lsd"),)
    assert p.warnings == ("setup.txt:7: unknown key 'lsd' (ignored; did you mean 'Lsd'?)",)


def test_repeatables_accumulate_in_order():
    p = parse("ImTransOpt 1\nImTransOpt 2\nPeakLocation 245.3\nPeakLocation 347.1\n")
    assert p.ImTransOpt == (1, 2)
    assert p.PeakLocation == (245.3, 347.1)


def test_list_keys():
    p = parse("NPanelsY 3\nPanelSizeY 600\nPanelGapsY 10 12\nNPanelsZ 2\nPanelSizeZ 1000\nPanelGapsZ 4\n")
    assert (p.NPanelsY, p.PanelSizeY, p.PanelGapsY) == (3, 600, (10, 12))
    assert (p.NPanelsZ, p.PanelSizeZ, p.PanelGapsZ) == (2, 1000, (4,))


def test_tilts_are_separate_scalars_and_distortion_coefficients():
    p = parse("tx 0.1\nty -0.2\ntz 0.3\np0 1e-4\np3 45\np14 7\nParallax 12\n")
    assert (p.tx, p.ty, p.tz, p.Parallax) == (0.1, -0.2, 0.3, 12.0)
    assert len(p.p) == 15 and p.p[0] == 1e-4 and p.p[3] == 45.0 and p.p[14] == 7.0
    assert sum(p.p) == pytest.approx(52.0001)


# --------------------------------------------------------------------------- aliases and defaults


def test_nrpixels_alias_sets_both_and_last_line_wins():
    p = parse_params("NrPixels 1000\nNrPixelsZ 500\nLsd 1\nBC 1 1\npx 1\nRBinSize 1\n", "s.txt")
    assert (p.NrPixelsY, p.NrPixelsZ) == (1000, 500)
    p = parse_params("NrPixelsZ 500\nNrPixels 1000\nLsd 1\nBC 1 1\npx 1\nRBinSize 1\n", "s.txt")
    assert (p.NrPixelsY, p.NrPixelsZ) == (1000, 1000)


@pytest.mark.parametrize(
    ("alias", "key", "value"),
    [("MaxRingRad", "RhoD", 250000.0), ("MinRad", "RMin", 20.0), ("MaxRad", "RMax", 900.0), ("RadBinSize", "RBinSize", 0.5)],
)
def test_aliases(alias, key, value):
    p = parse(f"{alias} {value}\n")
    assert getattr(p, key) == value
    assert alias in KNOWN_KEYS and key in KNOWN_KEYS


def test_alias_and_key_share_last_wins():
    assert parse("RMin 5\nMinRad 7\n").RMin == 7.0
    assert parse("MinRad 7\nRMin 5\n").RMin == 5.0


def test_rbinsize_satisfied_by_alias():
    p = parse_params(BASE.replace("RBinSize 0.25", "RadBinSize 0.5"), "s.txt")
    assert p.RBinSize == 0.5


def test_defaults_are_detectormapper_defaults():
    p = parse()
    assert (p.tx, p.ty, p.tz, p.Wavelength, p.RhoD, p.Parallax) == (0.0, 0.0, 0.0, 0.0, 2e5, 0.0)
    assert p.p == (0.0,) * 15
    assert (p.RMin, p.RMax, p.EtaMin, p.EtaMax, p.EtaBinSize) == (10.0, 1524.0, -180.0, 180.0, 5.0)
    assert (p.QMin, p.QMax, p.QBinSize) == (0.0, 0.0, 0.0) and not p.q_mode
    assert p.ImTransOpt == () and p.PeakLocation == ()
    assert (p.NPanelsY, p.NPanelsZ, p.PanelSizeY, p.PanelSizeZ, p.PanelGapsY, p.PanelGapsZ) == (0, 0, 0, 0, (), ())
    assert (p.MaskFile, p.GapFile, p.BadPxFile, p.Dark, p.DistortionFile) == (None,) * 5
    assert (p.SolidAngleCorrection, p.PolarizationCorrection, p.PolarizationFraction, p.Normalize) == (
        False, False, 0.99, True)
    assert (p.Write2D, p.OmegaSumFrames, p.OmegaStart, p.OmegaStep, p.Omega) == (False, 1, 0.0, 0.0, None)
    assert (p.Polariz, p.SHpL, p.U, p.V, p.W, p.X, p.Y, p.Z) == (0.99, 0.002, 1.163, -0.126, 0.063, 0.0, 0.0, 0.0)
    assert p.GapIntensity == 0.0
    assert (p.DoPeakFit, p.MultiplePeaks, p.DoSmoothing, p.FitROIPadding, p.FitROIAuto) == (
        False, False, False, 20, False)


def test_bools_and_ints_typed():
    p = parse("SolidAngleCorrection 1\nNormalize 0\nWrite2D 1\nOmegaSumFrames -1\nFitROIAuto 1\nOmega 12.5\n")
    assert p.SolidAngleCorrection is True and p.Normalize is False and p.Write2D is True and p.FitROIAuto is True
    assert p.OmegaSumFrames == -1 and p.Omega == 12.5


def test_pixel_pitch_aliases():
    p = parse_params(BASE.replace("px 200", "pxY 172\npxZ 172"), "s.txt")
    assert (p.px, p.pxY, p.pxZ) == (172.0, 172.0, 172.0) and p.warnings == ()
    p = parse("pxY 172\n")  # px 200 is given: it wins for the geometry
    assert (p.px, p.pxY, p.pxZ) == (200.0, 172.0, 200.0)
    assert p.warnings == ("setup.txt:7: px 200, pxY 172, pxZ 200 differ; MIDAS geometry uses one pitch: using 200 µm",)


def test_pxy_used_when_px_absent_and_differing_pitches_warn():
    p = parse_params(BASE.replace("px 200", "pxY 172\npxZ 180"), "s.txt")
    assert (p.px, p.pxY, p.pxZ) == (172.0, 172.0, 180.0)
    assert len(p.warnings) == 1 and "pxZ 180 differ" in p.warnings[0] and "using 172 µm" in p.warnings[0]


def test_polariz_and_polarization_fraction_are_distinct():
    p = parse("Polariz 0.95\nPolarizationFraction 0.5\n")
    assert (p.Polariz, p.PolarizationFraction) == (0.95, 0.5)


# --------------------------------------------------------------------------- unknown keys


def test_unknown_keys_reported_with_file_and_line():
    p = parse("RingThresh 1 100\nFoo\nRingThresh 2 100\n")
    assert p.unknown_keys == (("setup.txt", 7, "RingThresh"), ("setup.txt", 8, "Foo"), ("setup.txt", 9, "RingThresh"))
    assert p.warnings == (
        "setup.txt:7: unknown key 'RingThresh' (ignored; also on 1 more line)",
        "setup.txt:8: unknown key 'Foo' (ignored)",
    )


def test_unknown_key_from_string_source():
    p = parse_params(BASE + "Foo 1\n")
    assert p.source is None and p.unknown_keys == (("<string>", 7, "Foo"),)


# --------------------------------------------------------------------------- malformed keys


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Lsd abc", "setup.txt:7: key 'Lsd' expects one number (µm), got 'abc'"),
        ("Lsd 1 2", "setup.txt:7: key 'Lsd' expects one number (µm), got '1 2'"),
        ("Lsd", "setup.txt:7: key 'Lsd' expects one number (µm), got nothing"),
        ("Lsd nan", "setup.txt:7: key 'Lsd' expects one number (µm), got 'nan'"),
        ("BC 1024", "setup.txt:7: key 'BC' expects two numbers (px), got '1024'"),
        ("NrPixelsY 2048.5", "setup.txt:7: key 'NrPixelsY' expects one integer (columns), got '2048.5'"),
        ("NrPixels x", "setup.txt:7: key 'NrPixelsY' expects one integer (columns), got 'x'"),
        ("Normalize 2", "setup.txt:7: key 'Normalize' expects 0 or 1, got '2'"),
        ("DoPeakFit yes", "setup.txt:7: key 'DoPeakFit' expects 0 or 1, got 'yes'"),
        ("ImTransOpt 4", "setup.txt:7: key 'ImTransOpt' expects one integer 0..3 (0 none, 1 flip Y, 2 flip Z, "
                         "3 transpose) per line, got '4'"),
        ("ImTransOpt 1 2", "setup.txt:7: key 'ImTransOpt' expects one integer 0..3 (0 none, 1 flip Y, 2 flip Z, "
                           "3 transpose) per line, got '1 2'"),
        ("PeakLocation a", "setup.txt:7: key 'PeakLocation' expects one number (px) per line, got 'a'"),
        ("PanelGapsY 1.5", "setup.txt:7: key 'PanelGapsY' expects one or more integers (px), got '1.5'"),
        ("MaskFile", "setup.txt:7: key 'MaskFile' expects a path, got nothing"),
        ("MaxRingRad 1e5 2", "setup.txt:7: key 'RhoD' expects one number (µm), got '1e5 2'"),
    ],
)
def test_malformed_key_messages(line, message):
    assert error(line + "\n") == message


def test_param_error_exit_code():
    assert ParamError.exit_code == EXIT_CONFIG


# --------------------------------------------------------------------------- required keys


def test_missing_required_keys_reported_together():
    message = error(base="NrPixels 2048\nRBinSize 1\n")
    assert message.startswith("setup.txt: missing required keys: Lsd, px, BC (expected e.g. 'Lsd 1000000', 'px 200', "
                              "'BC 1024 1024')")


def test_missing_everything():
    with pytest.raises(ParamError, match=r"^<string>: missing required keys: NrPixelsY, NrPixelsZ, Lsd, px, BC, RBinSize"):
        parse_params("# nothing\n")


def test_rbinsize_not_required_in_complete_q_mode():
    base = BASE.replace("RBinSize 0.25\n", "")
    assert "missing required keys: RBinSize" in error(base=base)
    p = parse("Wavelength 0.2\nQMin 1\nQMax 5\nQBinSize 0.01\n", base=base)
    assert p.q_mode and p.RBinSize == 0.25


def test_pxy_alone_satisfies_px():
    p = parse_params(BASE.replace("px 200", "pxY 150"), "s.txt")
    assert p.px == 150.0


# --------------------------------------------------------------------------- consistency checks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("RMin 100\nRMax 100\n", "setup.txt:8: RMax (100) must be greater than RMin (100)"),
        ("EtaMin 10\nEtaMax -10\n", "setup.txt:8: EtaMax (-10) must be greater than EtaMin (10)"),
        ("RBinSize 0\n", "setup.txt:7: RBinSize must be > 0 (px), got 0"),
        ("EtaBinSize -1\n", "setup.txt:7: EtaBinSize must be > 0 (deg), got -1"),
        ("px 0\n", "setup.txt:7: px must be > 0 (µm), got 0"),
        ("Lsd -5\n", "setup.txt:7: Lsd must be > 0 (µm), got -5"),
        ("NrPixelsY 0\n", "setup.txt:7: NrPixelsY must be > 0 (pixels), got 0"),
        ("NrPixels -1\n", "setup.txt:7: NrPixelsY must be > 0 (pixels), got -1"),
        ("RhoD 0\n", "setup.txt:7: RhoD must be > 0 (µm), got 0"),
        ("OmegaSumFrames 0\n", "setup.txt:7: OmegaSumFrames must be ≥ 1, or -1 for all frames, got 0"),
        ("PolarizationFraction 1.5\n", "setup.txt:7: PolarizationFraction must be in 0..1, got 1.5"),
        ("PolarizationAngle 270\n", "setup.txt:7: PolarizationAngle must be in -180..180 (deg, the η of the "
         "polarization direction: 0 for MIDAS's form, 90 for a horizontally polarized beam with Z up), got 270"),
        ("FitROIPadding 0\n", "setup.txt:7: FitROIPadding must be ≥ 1 (radial bins), got 0"),
    ],
)
def test_consistency_errors(extra, message):
    assert error(extra) == message


def test_imtransopt_3_needs_square_detector():
    base = BASE.replace("NrPixelsZ 2048", "NrPixelsZ 1024")
    assert error("ImTransOpt 3\n", base=base) == (
        "setup.txt:7: ImTransOpt 3 (transpose) needs a square detector, got NrPixelsY=2048 NrPixelsZ=1024")
    assert parse("ImTransOpt 3\n").ImTransOpt == (3,)


def test_panel_gaps_length_must_match():
    assert error("NPanelsY 3\nPanelSizeY 600\nPanelGapsY 10\n") == (
        "setup.txt:9: PanelGapsY has 1 values but NPanelsY 3 needs 2")
    assert error("PanelGapsZ 4\n") == "setup.txt:7: PanelGapsZ has 1 values but NPanelsZ 0 needs 0"
    assert "needs 1" in error("NPanelsZ 2\nPanelSizeZ 100\n")


def test_panels_must_fit_the_detector():
    assert error("NPanelsY 2\nPanelSizeY 1024\nPanelGapsY 10\n") == (
        "setup.txt:9: panels span 2058 px in Y (NPanelsY × PanelSizeY + PanelGapsY) but NrPixelsY is 2048")
    assert error("NPanelsY 2\nPanelGapsY 10\n") == "setup.txt:7: NPanelsY 2 needs PanelSizeY > 0 (px)"


# --------------------------------------------------------------------------- Q mode


def test_q_mode_detection():
    p = parse("Wavelength 0.1729\nQMin 0.5\nQMax 8\nQBinSize 0.005\n")
    assert p.q_mode and (p.QMin, p.QMax, p.QBinSize, p.Wavelength) == (0.5, 8.0, 0.005, 0.1729)
    assert not parse("Wavelength 0.1729\n").q_mode


def test_q_keys_without_wavelength():
    assert error("QMin 1\nQMax 5\nQBinSize 0.01\n").startswith(
        "setup.txt:7: QMin/QMax/QBinSize given but no Wavelength: Q bins need 'Wavelength' (Å) > 0")


def test_partial_q_keys():
    assert error("Wavelength 0.2\nQMax 5\nQBinSize 0.01\n") == (
        "setup.txt:8: Q bins need QMin, QMax and QBinSize all > 0 (Å⁻¹), got QMin=0, QMax=5, QBinSize=0.01")


def test_q_max_not_above_q_min():
    assert error("Wavelength 0.2\nQMin 5\nQMax 5\nQBinSize 0.01\n") == (
        "setup.txt:9: QMax (5) must be greater than QMin (5)")


def test_q_beyond_ewald_limit():
    limit = 4 * math.pi / 0.2  # 62.83 Å⁻¹
    message = error(f"Wavelength 0.2\nQMin 1\nQMax {limit + 1}\nQBinSize 0.1\n")
    assert message.startswith("setup.txt:9: QMax 63.8319 Å⁻¹ is beyond 4π/λ = 62.8319 Å⁻¹")
    assert "≥ 1" in message


def test_q_beyond_flat_detector():
    message = error("Wavelength 0.2\nQMin 1\nQMax 50\nQBinSize 0.1\n")  # Qλ/4π = 0.796: 2θ = 105°
    assert "≥ 90°, which a flat detector cannot see" in message


# --------------------------------------------------------------------------- warnings


def test_rhod_in_pixels_warns():
    p = parse("RhoD 1500\n")
    assert p.RhoD == 1500.0
    assert p.warnings == ("setup.txt:7: RhoD 1500 looks like pixels; MIDAS expects µm (e.g. RhoD 300000 for 1500 px "
                          "of 200 µm)",)
    assert parse("RhoD 300000\n").warnings == ()


# --------------------------------------------------------------------------- peak fitting


def test_peak_location_implies_fit_and_no_smoothing():
    p = parse("DoSmoothing 1\nPeakLocation 245.3\nPeakLocation 347.1\n")
    assert (p.DoPeakFit, p.MultiplePeaks, p.DoSmoothing) == (True, True, False)
    assert p.PeakLocation == (245.3, 347.1)
    assert p.warnings == ("setup.txt:7: DoSmoothing 1 ignored: PeakLocation is given "
                          "(smoothing serves only the peak search)",)


def test_auto_peak_discovery_keeps_flags():
    p = parse("DoPeakFit 1\nMultiplePeaks 1\nDoSmoothing 1\nFitROIPadding 25\n")
    assert (p.DoPeakFit, p.MultiplePeaks, p.DoSmoothing, p.FitROIPadding, p.PeakLocation) == (True, True, True, 25, ())


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_both_syntaxes():
    assert parse_overrides(["MinRad", "10", "MaxRad", "1000", "RadBinSize", "0.5"]) == [
        ("MinRad", ["10"]), ("MaxRad", ["1000"]), ("RadBinSize", ["0.5"])]
    assert parse_overrides(["--MinRad", "10", "--BC", "1", "2", "--Lsd=5", "--EtaMin", "-90"]) == [
        ("MinRad", ["10"]), ("BC", ["1", "2"]), ("Lsd", ["5"]), ("EtaMin", ["-90"])]
    assert parse_overrides([]) == []


def test_parse_overrides_needs_a_key_first():
    with pytest.raises(ParamError, match=r"^<command line>: expected a parameter key .* got '10'$"):
        parse_overrides(["10", "Lsd", "5"])


def test_overrides_replace_file_values():
    p = parse("RMin 5\n", overrides=["MinRad", "10", "MaxRad", "1000", "RadBinSize", "0.5"])
    assert (p.RMin, p.RMax, p.RBinSize) == (10.0, 1000.0, 0.5)
    p = parse(overrides=["--Lsd", "900000", "--BC", "1000", "1001.5", "--NrPixels", "1024"])
    assert (p.Lsd, p.BC, p.NrPixelsY, p.NrPixelsZ) == (9e5, (1000.0, 1001.5), 1024, 1024)


def test_override_supplies_missing_required_key():
    p = parse_params(BASE.replace("Lsd 1000000\n", ""), "setup.txt", ["Lsd", "750000"])
    assert p.Lsd == 7.5e5


def test_override_replaces_whole_repeatable_list():
    p = parse("ImTransOpt 1\nImTransOpt 2\nPeakLocation 1\n", overrides=["ImTransOpt", "0"])
    assert p.ImTransOpt == (0,) and p.PeakLocation == (1.0,)
    p = parse("ImTransOpt 1\n", overrides=["--ImTransOpt", "2", "--ImTransOpt", "1", "PeakLocation", "100", "200"])
    assert p.ImTransOpt == (2, 1) and p.PeakLocation == (100.0, 200.0) and p.DoPeakFit


def test_last_override_wins():
    assert parse(overrides=["Lsd", "1", "--Lsd", "2"]).Lsd == 2.0


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["Lsd", "abc"], "<command line>: key 'Lsd' expects one number (µm), got 'abc'"),
        (["--Lsd"], "<command line>: key 'Lsd' expects one number (µm), got nothing"),
        (["--Lsd", "5", "6"], "<command line>: key 'Lsd' expects one number (µm), got '5 6'"),
        (["--ImTransOpt", "7"], "<command line>: key 'ImTransOpt' expects one integer 0..3 (0 none, 1 flip Y, "
                                "2 flip Z, 3 transpose) per line, got '7'"),
        (["--Lsdd", "5"], "<command line>: unknown key 'Lsdd'; did you mean 'Lsd'?"),
        (["--Frobnicate", "5"], "<command line>: unknown key 'Frobnicate'"),
    ],
)
def test_override_errors_name_command_line(tokens, message):
    assert error(overrides=tokens) == message


def test_consistency_error_from_override_names_command_line():
    assert error(overrides=["--RMax", "5"]) == "<command line>: RMax (5) must be greater than RMin (10)"


# --------------------------------------------------------------------------- paths


def test_relative_path_resolved_against_parameter_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "mask.tif").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    p = parse_params(BASE + "MaskFile mask.tif\nDark darks/dark 1.bin ;\n", folder / "setup.txt")
    assert p.MaskFile == folder / "mask.tif"
    assert p.Dark == tmp_path / "darks/dark 1.bin"  # not next to the file: current directory; spaces kept
    used = p.used()
    assert used["MaskFile"] == str(folder / "mask.tif") and used["MaskFile_as_written"] == "mask.tif"
    assert used["Dark_as_written"] == "darks/dark 1.bin"
    assert "GapFile" not in used


def test_relative_path_falls_back_to_current_directory(tmp_path, monkeypatch):
    (tmp_path / "gaps.tif").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    p = parse_params(BASE + "GapFile gaps.tif\nBadPxFile /abs/bad.tif\n", tmp_path / "elsewhere" / "setup.txt")
    assert p.GapFile == tmp_path / "gaps.tif"
    assert p.BadPxFile == Path("/abs/bad.tif")


def test_override_path_prefers_current_directory(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    for where in (tmp_path, folder):
        (where / "dist.bin").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    p = parse_params(BASE + "DistortionFile dist.bin\n", folder / "setup.txt")
    assert p.DistortionFile == folder / "dist.bin"
    p = parse_params(BASE, folder / "setup.txt", ["--DistortionFile", "dist.bin"])
    assert p.DistortionFile == tmp_path / "dist.bin"


# --------------------------------------------------------------------------- load, used, replace


def test_load_params(tmp_path):
    path = tmp_path / "setup.txt"
    path.write_bytes((BASE + "# µ in a Latin-1 comment\nFoo 1\n").encode("latin-1"))
    p = load_params(path, ["--Lsd", "5e5"])
    assert p.source == path and p.Lsd == 5e5
    assert p.unknown_keys == ((str(path), 8, "Foo"),)


def test_load_params_unreadable(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ParamError, match=r"nope\.txt: cannot read parameter file"):
        load_params(missing)
    with pytest.raises(ParamError, match=r": cannot read parameter file"):
        load_params(tmp_path)


def test_used_is_json_and_complete():
    p = parse("ImTransOpt 1\nPeakLocation 10\nSolidAngleCorrection 1\np2 0.5\n")
    used = json.loads(json.dumps(p.used()))
    assert used["BC"] == [1024.0, 1024.0] and used["ImTransOpt"] == [1] and used["PeakLocation"] == [10.0]
    assert used["SolidAngleCorrection"] == 1 and used["Normalize"] == 1 and used["DoPeakFit"] == 1
    assert used["p2"] == 0.5 and used["p14"] == 0.0 and used["RhoD"] == 2e5
    assert "Omega" not in used and "MaskFile" not in used
    assert {"NrPixelsY", "NrPixelsZ", "Lsd", "px", "pxY", "pxZ", "RMin", "RMax", "RBinSize", "EtaMin", "EtaMax",
            "EtaBinSize", "QMin", "QMax", "QBinSize", "Polariz", "SHpL", "U", "V", "W", "X", "Y", "Z",
            "FitROIPadding", "OmegaSumFrames"} <= set(used)
    assert "NrPixels" not in used and "MaxRingRad" not in used


def test_params_is_frozen_and_hashable():
    p = parse()
    with pytest.raises(AttributeError):
        p.Lsd = 5.0  # type: ignore[misc]
    assert hash(p) == hash(parse()) and p == parse()


def test_replace_revalidates():
    p = parse()
    q = p.replace(Lsd=5e5, BC=[1000, 1001], ImTransOpt=[1])
    assert (q.Lsd, q.BC, q.ImTransOpt, p.Lsd) == (5e5, (1000, 1001), (1,), 1e6)
    with pytest.raises(ParamError, match=r"^setup\.txt: RMax \(5\) must be greater than RMin \(10\)$"):
        p.replace(RMax=5.0)
    with pytest.raises(ParamError, match="needs a square detector"):
        p.replace(NrPixelsZ=1000, ImTransOpt=(3,))
    r = p.replace(PeakLocation=(100.0,))
    assert r.DoPeakFit and r.MultiplePeaks and not r.DoSmoothing


def test_replace_updates_warnings():
    p = parse("RhoD 1500\nFoo 1\n")
    assert len(p.warnings) == 2
    q = p.replace(RhoD=300000.0)
    assert q.warnings == ("setup.txt:8: unknown key 'Foo' (ignored)",)

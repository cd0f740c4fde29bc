"""Output templates and the paths of a run (docs/DAEMON.md, "Runs and file names"): every field, format specs,
errors naming the key, the ``_{run:05d}`` rule, skipping run numbers whose files exist, folders that cannot be
written."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from ringstream.errors import EXIT_CONFIG, ConfigError, RingstreamError
from ringstream.runs import (
    OutputFolderError,
    OutputTemplate,
    RunState,
    RunTemplates,
    choose_run,
    numbered,
    resolve_run_paths,
)

pytestmark = pytest.mark.timeout(30)

WHEN = dt.datetime(2026, 3, 4, 5, 6, 7)


def run_cfg(output_h5: str, zarr_output: str = "", no_zarr: bool = False, midas_binaries: str = "",
            state_dir: str = "") -> SimpleNamespace:
    """A stand-in for the frozen ``[run]`` section with the keys the naming reads."""
    return SimpleNamespace(output_h5=output_h5, zarr_output=zarr_output, no_zarr=no_zarr,
                           midas_binaries=midas_binaries, state_dir=state_dir)


class Counter:
    """Run numbers from ``start`` on, without a state directory."""

    def __init__(self, start: int = 1) -> None:
        self.n = start - 1

    def next_number(self) -> int:
        self.n += 1
        return self.n


# ------------------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run_{run}.h5", "run_7.h5"),
        ("run_{run:05d}.h5", "run_00007.h5"),
        ("run_{run:>4}.h5", "run_   7.h5"),
        ("{name}.h5", "scan a.h5"),
        ("{date}/{time}.h5", "20260304/050607.h5"),
        ("{run_id}.h5", "20260304T050607-abc.h5"),
        ("s{attr[ScanNumber]:04d}.h5", "s0012.h5"),
        ("{attr[FileName]}.h5", "sample_3.h5"),
        ("{attr[Missing]}.h5", "unknown.h5"),
        ("{attr[FileName]:04d}.h5", "sample_3.h5"),  # a value that does not fit the spec: its text
        ("{{literal}}_{run}.h5", "{literal}_7.h5"),
        ("/data/{date}/{name}/run_{run:05d}.h5", "/data/20260304/scan a/run_00007.h5"),
    ],
)
def test_every_field_renders(text, expected):
    t = OutputTemplate(text)
    attrs = {"ScanNumber": 12, "FileName": "sample_3"}
    assert t.render(7, "scan a", "20260304T050607-abc", WHEN, attrs) == Path(expected)


def test_values_cannot_add_folders_or_hide_files():
    t = OutputTemplate("/data/{name}_{attr[F]}.h5")
    assert t.render(1, "a/b", attrs={"F": "x\0y"}, when=WHEN) == Path("/data/a_b_x_y.h5")
    assert OutputTemplate("/data/{name}.h5").render(1, "../etc", when=WHEN) == Path("/data/_._etc.h5")
    assert OutputTemplate("/data/{name}/r.h5").render(1, ".hidden", when=WHEN) == Path("/data/_hidden/r.h5")


def test_fields_and_run_field():
    t = OutputTemplate("/d/{date}/{name}_{attr[S]}_{run:03d}.h5")
    assert t.fields == ("date", "name", "attr[S]", "run")
    assert t.has_run_field and t.has_run_number
    assert OutputTemplate("{run_id}.h5").has_run_field and not OutputTemplate("{run_id}.h5").has_run_number
    assert not OutputTemplate("{date}/{name}.h5").has_run_field
    assert OutputTemplate("ringstream.h5").is_fixed and not OutputTemplate("{name}.h5").is_fixed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scan_{foo}.h5", "[run] output_h5: unknown field {foo} in 'scan_{foo}.h5'; known: run, name, date, time, "
                          "run_id, attr[NAME]"),
        ("{run.real}.h5", "unknown field {run.real}"),
        ("{attr}.h5", "unknown field {attr}"),
        ("{attr[]}.h5", "unknown field {attr[]}"),
        ("{}.h5", "empty field {}"),
        ("{0}.h5", "unknown field {0}"),
        ("run_{run:05s}.h5", "[run] output_h5: bad format spec {run:05s} in 'run_{run:05s}.h5'"),
        ("{date:d}.h5", "bad format spec {date:d}"),
        ("{run:{w}}.h5", "nested field in the format spec of {run}"),
        ("{run!r}.h5", "conversion !r in {run} is not supported"),
        ("run_{run.h5", "malformed template"),
        ("run_}.h5", "malformed template"),
        ("", "expected a path template, got an empty string"),
        ("/data/", "no file name"),
    ],
)
def test_bad_templates_name_the_key(text, expected):
    with pytest.raises(ConfigError) as info:
        OutputTemplate(text, key="[run] output_h5")
    assert expected in str(info.value)
    assert str(info.value).startswith("[run] output_h5: ")
    assert info.value.exit_code == EXIT_CONFIG


def test_a_folder_template_may_end_in_a_slash_and_the_key_is_named():
    assert OutputTemplate("/data/midas_{run}/", "[run] midas_binaries", folder=True).has_run_field
    with pytest.raises(ConfigError, match=r"^\[run\] zarr_output: unknown field \{x\}"):
        RunTemplates.from_config(run_cfg("a_{run}.h5", zarr_output="{x}.zarr.zip"))


@pytest.mark.parametrize(
    ("text", "folder"),
    [
        ("/data/ringstream/{date}/run_{run:05d}.h5", "/data/ringstream"),
        ("/data/ringstream/run.h5", "/data/ringstream"),
        ("/data/x{date}/run.h5", "/data"),
        ("/{date}/run.h5", "/"),
        ("ringstream.h5", "."),
        ("run_{run}.h5", "."),
        ("out/{date}.h5", "out"),
    ],
)
def test_fixed_folder(text, folder):
    assert OutputTemplate(text).fixed_folder() == Path(folder)


# ------------------------------------------------------------------------------------------------ run paths


@pytest.mark.parametrize(
    ("path", "folder", "expected"),
    [
        ("ringstream.h5", False, "ringstream_00007.h5"),
        ("/d/out.zarr.zip", False, "/d/out_00007.zarr.zip"),
        ("/d/a.b.h5", False, "/d/a.b_00007.h5"),
        ("/d/noext", False, "/d/noext_00007"),
        ("/d/midas", True, "/d/midas_00007"),
        ("/d/midas.d", True, "/d/midas.d_00007"),
    ],
)
def test_numbered(path, folder, expected):
    assert numbered(Path(path), 7, folder) == Path(expected)


def test_outputs_follow_the_h5_stem(tmp_path):
    p = resolve_run_paths(run_cfg(f"{tmp_path}/{{date}}/run_{{run:05d}}.h5"), 7, when=WHEN, multi_run=True)
    assert p.h5 == tmp_path / "20260304" / "run_00007.h5"
    assert p.zarr == tmp_path / "20260304" / "run_00007.zarr.zip"
    assert p.stem == "run_00007" and p.midas_dir is None
    assert p.fit_bin == tmp_path / "20260304" / "run_00007_fit.bin"
    assert p.fit_curves_bin == tmp_path / "20260304" / "run_00007_fit_curves.bin"
    assert p.all_files() == (p.h5, p.zarr, p.fit_bin, p.fit_curves_bin)
    assert p.as_record() == {"h5": str(p.h5), "zarr": str(p.zarr)}


def test_multi_run_numbers_each_output_without_a_run_field(tmp_path):
    cfg = run_cfg(f"{tmp_path}/ringstream.h5", zarr_output=f"{tmp_path}/z/out.zarr.zip",
                  midas_binaries=f"{tmp_path}/midas")
    p = resolve_run_paths(cfg, 7, when=WHEN, multi_run=True)
    assert p.h5 == tmp_path / "ringstream_00007.h5"
    assert p.zarr == tmp_path / "z" / "out_00007.zarr.zip"
    assert p.midas_dir == tmp_path / "midas_00007"
    assert p.fit_bin == tmp_path / "midas_00007" / "fit.bin"
    assert p.all_files()[-3:] == tuple(tmp_path / "midas_00007" / n
                                       for n in ("lineout.bin", "Int2D.bin", "RTthEtaAreaMap.bin"))
    one = resolve_run_paths(cfg, 7, when=WHEN, multi_run=False)  # the plain names: as before runs
    assert one.h5 == tmp_path / "ringstream.h5" and one.zarr == tmp_path / "z" / "out.zarr.zip"
    assert one.midas_dir == tmp_path / "midas"


def test_plain_fixed_name_keeps_fit_bin_beside_and_no_zarr(tmp_path):
    p = resolve_run_paths(run_cfg(f"{tmp_path}/ringstream.h5", no_zarr=True), 3, multi_run=False)
    assert p.zarr is None and p.fit_bin == tmp_path / "fit.bin" and p.fit_curves_bin == tmp_path / "fit_curves.bin"
    templated = resolve_run_paths(run_cfg(f"{tmp_path}/{{name}}.h5"), 3, name="a", multi_run=False)
    assert templated.fit_bin == tmp_path / "a_fit.bin"  # a name that changes: runs may share the folder


def test_a_run_field_is_not_numbered_again(tmp_path):
    p = resolve_run_paths(run_cfg(f"{tmp_path}/{{run_id}}.h5"), 7, run_id="abc", multi_run=True)
    assert p.h5 == tmp_path / "abc.h5"


# ------------------------------------------------------------------------------------------------ choosing


def test_numbers_whose_files_exist_are_skipped_and_logged_once(tmp_path, caplog):
    templates = RunTemplates.from_config(run_cfg(f"{tmp_path}/run_{{run:05d}}.h5"))
    (tmp_path / "run_00001.h5").write_bytes(b"x")
    (tmp_path / "run_00002.zarr.zip").write_bytes(b"x")
    (tmp_path / "run_00003_fit.bin").write_bytes(b"x")
    (tmp_path / "run_00005.h5").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="ringstream.runs.naming"):
        run, paths = choose_run(templates, Counter(), multi_run=True, when=WHEN)
    assert run == 4 and paths.h5 == tmp_path / "run_00004.h5"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "run numbers 1-3 skipped" in warnings[0] and "run_00001.h5" in warnings[0]
    assert (tmp_path / "run_00001.h5").read_bytes() == b"x"  # never replaced


def test_plain_name_first_then_the_numbered_form(tmp_path):
    templates = RunTemplates.from_config(run_cfg(f"{tmp_path}/ringstream.h5"))
    state = RunState(tmp_path / "state")
    run, paths = choose_run(templates, state, multi_run=False)
    assert (run, paths.h5) == (1, tmp_path / "ringstream.h5")
    paths.h5.write_bytes(b"x")
    run, paths = choose_run(templates, state, multi_run=False)
    assert (run, paths.h5) == (2, tmp_path / "ringstream_00002.h5")
    run, paths = choose_run(templates, state, multi_run=True)
    assert (run, paths.h5) == (3, tmp_path / "ringstream_00003.h5")


def test_an_unchanging_run_id_gets_numbered(tmp_path):
    templates = RunTemplates.from_config(run_cfg(f"{tmp_path}/{{run_id}}.h5"))
    (tmp_path / "same.h5").write_bytes(b"x")
    run, paths = choose_run(templates, Counter(), multi_run=True, run_id="same")
    assert paths.h5 == tmp_path / f"same_{run:05d}.h5"


def test_folders_are_created(tmp_path):
    templates = RunTemplates.from_config(run_cfg(f"{tmp_path}/{{date}}/run_{{run}}.h5",
                                                 midas_binaries=f"{tmp_path}/m/{{run}}"))
    run, paths = choose_run(templates, Counter(9), multi_run=True, when=WHEN)
    assert (tmp_path / "20260304").is_dir() and (tmp_path / "m" / "9").is_dir() and run == 9
    assert list((tmp_path / "20260304").iterdir()) == []  # the write check leaves nothing behind


def test_a_folder_that_cannot_be_made_names_path_and_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a folder under a regular file cannot be made, not even by root
    templates = RunTemplates.from_config(run_cfg(f"{blocker}/sub/run_{{run}}.h5"))
    with pytest.raises(OutputFolderError) as info:
        choose_run(templates, Counter(), multi_run=True)
    msg = str(info.value)
    assert "\n" not in msg and str(blocker / "sub") in msg and "Not a directory" in msg
    assert isinstance(info.value, RingstreamError) and info.value.exit_code != 1


def test_choosing_without_creating(tmp_path):
    templates = RunTemplates.from_config(run_cfg(f"{tmp_path}/new/run_{{run}}.h5"))
    choose_run(templates, Counter(), multi_run=True, create=False)
    assert not (tmp_path / "new").exists()


def test_an_empty_value_never_makes_a_relative_template_absolute():
    """``{name}/x.h5`` of an unnamed run is ``x.h5`` beside the others, never ``/x.h5`` at the file system's root."""
    import datetime as dt

    from ringstream.runs.naming import OutputTemplate

    when = dt.datetime(2026, 12, 4, 10, 0, 0)
    assert OutputTemplate("{name}/x.h5").render(1, "", "r", when) == Path("x.h5")
    assert OutputTemplate("{name}/x.h5").render(1, "ramp", "r", when) == Path("ramp/x.h5")
    assert OutputTemplate("/data/{name}/x.h5").render(1, "", "r", when) == Path("/data/x.h5")

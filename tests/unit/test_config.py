"""ringstream.config: defaults < TOML < environment < command line; every error names its origin and key."""

from __future__ import annotations

import argparse
import pickle
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from ringstream.config import (
    DaemonConfig,
    add_config_arguments,
    cli_layer,
    config_from_args,
    load_config,
)
from ringstream.errors import EXIT_CONFIG, ConfigError, ParamError

pytestmark = pytest.mark.timeout(30)

PARAMS = "NrPixels 64\nLsd 1000000\npx 200\nBC 32 32\nRMin 4\nRMax 30\nRBinSize 1\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    path = tmp_path / "setup.txt"
    path.write_text(PARAMS)
    return path


def write_toml(folder: Path, text: str, name: str = "daemon.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == EXIT_CONFIG == 2
    return message


# --------------------------------------------------------------------------------------------------- precedence


def test_defaults_match_the_design(setup):
    cfg = load_config(None, {}, {"run": {"param_file": str(setup)}})
    assert cfg.run.output_h5 == "ringstream.h5" and cfg.run.save_interval == 500 and cfg.run.overrides == ()
    assert cfg.source.kind == "simulated" and cfg.source.frames == 0 and cfg.source.loop is True
    assert cfg.workers.count == 2 and cfg.workers.engine == "auto"
    assert cfg.transport.frames_endpoint == "auto" and cfg.transport.control_endpoint == "auto"
    assert (cfg.transport.auto_endpoints, cfg.transport.runtime_dir) == ("ipc", "")
    assert (cfg.transport.control_mode, cfg.transport.control_group) == ("0600", "")
    assert cfg.transport.shared_memory is True and cfg.transport.ring_slots == 0 and cfg.transport.queue_depth == 0
    assert (cfg.supervisor.heartbeat_interval, cfg.supervisor.heartbeat_timeout) == (0.5, 2.0)
    assert (cfg.supervisor.ready_timeout, cfg.supervisor.drain_timeout) == (120.0, 60.0)
    assert cfg.logging.level == "INFO"
    assert cfg.describe_sources()["workers.count"] == "defaults"


def test_four_layers_for_several_keys_and_types(tmp_path, setup):
    toml = write_toml(tmp_path, f"""
[run]
param_file = "{setup}"
save_interval = 100
overrides = ["RBinSize 0.5"]
[workers]
count = 3
engine = "cpu"
[source]
rate = 10
rings_2theta = [3.0, 4]
loop = false
[transport]
shared_memory = false
[supervisor]
drain_timeout = 30
""")
    env = {"RINGSTREAM_WORKERS_COUNT": "5", "RINGSTREAM_SOURCE_RATE": "20.5", "RINGSTREAM_SOURCE_LOOP": "yes",
           "RINGSTREAM_SOURCE_RINGS_2THETA": "5, 6.5", "RINGSTREAM_RUN_SAVE_INTERVAL": "200",
           "RINGSTREAM_TRANSPORT_SHARED_MEMORY": "true"}
    cli = {"workers": {"count": 7}, "source": {"rate": 30.0, "loop": None}, "run": {"overrides": ["EtaBinSize", "10"]}}
    cfg = load_config(toml, env, cli)
    # command line wins over environment over file over defaults, per key
    assert cfg.workers.count == 7  # all four layers set it
    assert cfg.source.rate == 30.0 and isinstance(cfg.source.rate, float)
    assert cfg.source.loop is True  # env over file; None on the command line = not given
    assert cfg.source.rings_2theta == (5.0, 6.5)  # env list over file list
    assert cfg.run.save_interval == 200
    assert cfg.transport.shared_memory is True
    assert cfg.workers.engine == "cpu"  # file only
    assert cfg.supervisor.drain_timeout == 30.0 and isinstance(cfg.supervisor.drain_timeout, float)
    assert cfg.run.overrides == ("EtaBinSize", "10")  # a later layer replaces the list
    assert cfg.source.kind == "simulated"  # default
    src = cfg.describe_sources()
    assert src["workers.count"] == "command line (--workers)"
    assert src["source.loop"] == "environment (RINGSTREAM_SOURCE_LOOP)"
    assert src["workers.engine"] == f"{toml}:8"
    assert src["source.kind"] == "defaults"


def test_each_layer_alone_overrides_the_one_below(tmp_path, setup):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[workers]\ncount = 3\n')
    assert load_config(toml, {}).workers.count == 3
    assert load_config(toml, {"RINGSTREAM_WORKERS_COUNT": "4"}).workers.count == 4
    assert load_config(toml, {"RINGSTREAM_WORKERS_COUNT": "4"}, {"workers": {"count": 6}}).workers.count == 6
    assert load_config(toml, {}, {"workers": {"count": 6}}).workers.count == 6
    assert load_config(None, {"RINGSTREAM_RUN_PARAM_FILE": str(setup)}).workers.count == 2


def test_env_parsing_of_every_kind(setup):
    env = {"RINGSTREAM_RUN_PARAM_FILE": str(setup), "RINGSTREAM_RUN_NO_ZARR": "1",
           "RINGSTREAM_TRANSPORT_SHARED_MEMORY": "No", "RINGSTREAM_SOURCE_LOOP": "off",
           "RINGSTREAM_SOURCE_FRAMES": " +12 ", "RINGSTREAM_SOURCE_RATE": "1e2",
           "RINGSTREAM_RUN_OVERRIDES": "RBinSize 0.5, EtaBinSize 10,", "RINGSTREAM_RUN_RUN_ID": " a b ",
           "RINGSTREAM_TRANSPORT_FRAMES_ENDPOINT": "ipc:///tmp/rs-frames", "RINGSTREAM_LOGGING_LEVEL": "debug",
           "RINGSTREAM_WORKERS_ENGINE": "",  # empty = unset
           "RINGSTREAM_CACHE_DIR": "/elsewhere", "OTHER": "x"}  # not configuration variables: ignored
    cfg = load_config(None, env)
    assert cfg.run.no_zarr is True and cfg.transport.shared_memory is False and cfg.source.loop is False
    assert cfg.source.frames == 12 and cfg.source.rate == 100.0
    assert cfg.run.overrides == ("RBinSize 0.5", "EtaBinSize 10")
    assert cfg.override_tokens() == ["RBinSize", "0.5", "EtaBinSize", "10"]
    assert cfg.run.run_id == " a b "
    assert cfg.transport.frames_endpoint == "ipc:///tmp/rs-frames"
    assert cfg.logging.level == "DEBUG"
    assert cfg.workers.engine == "auto"


def test_queue_depth_follows_ring_slots_unless_given(setup):
    base = {"run": {"param_file": str(setup)}}
    assert load_config(None, {}, {**base, "transport": {"ring_slots": 8}}).transport.queue_depth == 8
    cfg = load_config(None, {}, {**base, "transport": {"ring_slots": 8, "queue_depth": 4}})
    assert (cfg.transport.ring_slots, cfg.transport.queue_depth) == (8, 4)



def test_the_results_queue_is_sized_in_bytes(setup):
    from ringstream.transport.sockets import MAX_RESULTS_HWM, frames_per_partial, results_hwm

    cfg = load_config(None, {}, {"run": {"param_file": str(setup)}})
    assert cfg.transport.results_queue_mb == 8
    # 2,000-bin lineouts with 3 peaks and 40 model values: 9,016 bytes a message -> 887 of them in 8 MB
    assert results_hwm(8, 32, 2000, 72, False, 3, 40) == 8_000_000 // (512 + 8000 + 168 + 320 + 16) == 887
    assert results_hwm(8, 32, 1000, 72, True, 0) == 32  # cakes of 288 kB: 27 fit, queue_depth is the floor
    assert results_hwm(8, 32, 10, 8, False, 0) == MAX_RESULTS_HWM  # tiny lineouts: the cap
    assert results_hwm(0, 5, 2000, 72, False, 0) == 5  # 0 MB: queue_depth, as every other queue
    # partial omega sums count too: one of 1000 x 72 float64 (576 kB) every 4 frames among 4 lineouts of 1000 bins
    mean = (4 * (512 + 4000 + 16) + 512 + 576_000) // 5
    assert results_hwm(8, 5, 1000, 72, False, 0, frames_per_partial=4) == 8_000_000 // mean == 67
    assert frames_per_partial(False, 1, 2) == 1 and frames_per_partial(False, 10, 2) == 5
    assert frames_per_partial(True, 1, 2) == 0 and frames_per_partial(False, -1, 2) == 0


def test_relative_input_paths_in_toml_resolve_next_to_the_file(tmp_path, setup, monkeypatch):
    conf = tmp_path / "etc"
    conf.mkdir()
    shutil.copy(setup, conf / "beam.txt")
    toml = write_toml(conf, '[run]\nparam_file = "beam.txt"\noutput_h5 = "out.h5"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(toml, {})
    assert Path(cfg.run.param_file) == conf / "beam.txt"
    assert cfg.run.output_h5 == "out.h5"  # outputs stay relative to the working directory


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_key_names_file_line_key_and_suggests(tmp_path, setup):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n\n[workers]\ncout = 3\n')
    msg = error(toml, {})
    assert msg.startswith(f"{toml}:5: [workers] cout: unknown key")
    assert "did you mean 'count'" in msg


def test_key_in_the_wrong_section_says_where_it_belongs(tmp_path, setup):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\nring_slots = 8\n')
    msg = error(toml, {})
    assert f"{toml}:3: [run] ring_slots: unknown key" in msg and "belongs in [transport]" in msg


def test_unknown_section_and_top_level_key(tmp_path, setup):
    msg = error(write_toml(tmp_path, "[worker]\ncount = 3\n"), {})
    assert re.search(r"daemon\.toml:1: \[worker\]: unknown section; did you mean 'workers'", msg)
    msg = error(write_toml(tmp_path, "count = 3\n", "top.toml"), {})
    assert "top.toml:1: 'count': keys belong in a section" in msg and "[workers] count" in msg


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[workers]\ncount = \"four\"", "[workers] count: expected an integer, got 'four'"),
        ("[workers]\ncount = 2.0", "[workers] count: expected an integer, got 2.0"),
        ("[workers]\ncount = true", "[workers] count: expected an integer, got true"),
        ("[source]\nloop = 1", "[source] loop: expected true or false, got 1"),
        ("[source]\nrate = \"fast\"", "[source] rate: expected a number, got 'fast'"),
        ("[source]\nrings_2theta = 3.0", "[source] rings_2theta: expected a list of numbers, got 3.0"),
        ("[run]\noverrides = \"RBinSize 1\"", "[run] overrides: expected a list of strings"),
        ("[run]\noutput_h5 = 5", "[run] output_h5: expected a string, got 5"),
        ("[workers]\nengine = 3", "[workers] engine: expected a string, got 3"),
    ],
)
def test_wrong_type_in_toml(tmp_path, setup, line, expected):
    section, rest = line.split("\n", 1)
    text = f'[run]\nparam_file = "{setup}"\n' + (f"{rest}\n" if section == "[run]" else f"{section}\n{rest}\n")
    toml = write_toml(tmp_path, text)
    msg = error(toml, {})
    assert re.match(rf"{re.escape(str(toml))}:\d+: ", msg), msg
    assert expected in msg


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("RINGSTREAM_WORKERS_COUNT", "four", "[workers] count: expected an integer, got 'four'"),
        ("RINGSTREAM_WORKERS_COUNT", "2.5", "[workers] count: expected an integer"),
        ("RINGSTREAM_SOURCE_LOOP", "maybe", "[source] loop: expected 1/0/true/false/yes/no/on/off"),
        ("RINGSTREAM_SOURCE_RATE", "nan", "[source] rate: expected a number"),
        ("RINGSTREAM_SOURCE_RINGS_2THETA", "3,x", "[source] rings_2theta: expected comma-separated numbers"),
        ("RINGSTREAM_WORKERS_CONT", "3", "[workers] cont: unknown key; did you mean 'count'?"),
        ("RINGSTREAM_WORKER_COUNT", "3", "did you mean RINGSTREAM_WORKERS_COUNT?"),
    ],
)
def test_env_errors_name_the_variable(setup, var, value, expected):
    msg = error(None, {"RINGSTREAM_RUN_PARAM_FILE": str(setup), var: value})
    assert msg.startswith(f"environment ({var}): "), msg
    assert expected in msg


@pytest.mark.parametrize(
    ("cli", "flag", "expected"),
    [
        ({"workers": {"count": -1}}, "--workers", "[workers] count: expected >= 0, got -1"),
        ({"workers": {"count": 0}}, "--workers", "[workers] count = 0 needs [transport] remote_endpoint"),
        ({"workers": {"count": "2"}}, "--workers", "[workers] count: expected an integer, got '2'"),
        ({"workers": {"engine": "cuda"}}, "--engine", "[workers] engine: expected one of 'auto', 'cpu', 'gpu'"),
        ({"run": {"save_interval": 0}}, "--save-interval", "[run] save_interval: expected >= 1, got 0"),
        ({"transport": {"ring_slots": 1}}, "--ring-slots", "[transport] ring_slots: expected 0 (auto) or at least 2, got 1"),
        ({"source": {"rate": -1.0}}, "--rate", "[source] rate: expected >= 0, got -1.0"),
        ({"source": {"frames": -1}}, "--frames", "[source] frames: expected >= 0, got -1"),
        ({"output": {"cake_noise_fraction": 0.6}}, "--cake-noise-fraction",
         "[output] cake_noise_fraction: expected >= 0 and <= 0.5, got 0.6"),
        ({"output": {"cake_noise_fraction": -0.01}}, "--cake-noise-fraction",
         "[output] cake_noise_fraction: expected >= 0 and <= 0.5, got -0.01"),
        ({"output": {"cake_noise_fraction": float("nan")}}, "--cake-noise-fraction",
         "[output] cake_noise_fraction: expected a number, got nan"),
        ({"source": {"kind": "simulted"}}, "--source", "did you mean 'simulated'?"),
        ({"source": {"kind": "replay"}}, "--source", "[source] kind = 'replay' needs [source] replay_path"),
        ({"transport": {"control_endpoint": "localhost:5557"}}, "--control-endpoint",
         "[transport] control_endpoint: expected \"auto\", tcp://HOST:PORT or ipc://PATH"),
        ({"transport": {"control_endpoint": "tcp://127.0.0.1:70000"}}, "--control-endpoint",
         "port 70000 is not in 1..65535"),
        ({"logging": {"level": "LOUD"}}, "--log-level", "[logging] level: expected one of 'DEBUG'"),
    ],
)
def test_out_of_range_and_choices_name_the_option(setup, cli, flag, expected):
    cli = {**cli, "run": {"param_file": str(setup), **cli.get("run", {})}}
    msg = error(None, {}, cli)
    assert msg.startswith(f"command line ({flag}): "), msg
    assert expected in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("output_h5", "scan_{foo}.h5", "[run] output_h5: unknown field {foo} in 'scan_{foo}.h5'; known: run, name, "
                                       "date, time, run_id, attr[NAME]"),
        ("output_h5", "run_{run:x5}.h5", "[run] output_h5: bad format spec {run:x5}"),
        ("zarr_output", "run_{run.zarr.zip", "[run] zarr_output: malformed template"),
        ("midas_binaries", "/data/{scan}", "[run] midas_binaries: unknown field {scan}"),
    ],
)
def test_output_templates_are_checked_at_start(tmp_path, setup, key, value, expected):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n{key} = "{value}"\n')
    msg = error(toml, {})
    assert msg.startswith(f"{toml}:3: "), msg
    assert expected in msg


def test_output_templates_and_run_keys_load(tmp_path, setup):
    cli = {"run": {"param_file": str(setup), "output_h5": "/data/{date}/{name}_{run:05d}_{attr[scan]}.h5",
                   "midas_binaries": "/data/{date}/midas_{run}", "idle_split_s": 2.5, "max_frames": 1000,
                   "split_attribute": "ScanNumber", "split_on_restart": False}}
    cfg = load_config(None, {"RINGSTREAM_RUN_STATE_DIR": "/var/lib/ringstream/x"}, cli)
    assert cfg.run.state_dir == "/var/lib/ringstream/x" and cfg.run.idle_split_s == 2.5
    assert cfg.run.max_frames == 1000 and cfg.run.max_seconds == 0.0
    assert cfg.run.split_attribute == "ScanNumber" and cfg.run.split_on_restart is False


def test_fit_model_is_pv_unless_set_and_checked(tmp_path, setup):
    assert load_config(None, {}, {"run": {"param_file": str(setup)}}).fit.model == "pv"
    assert load_config(None, {"RINGSTREAM_RUN_PARAM_FILE": str(setup), "RINGSTREAM_FIT_MODEL": "tch"}).fit.model == "tch"
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[fit]\nmodel = "voigt"\n')
    assert f"{toml}:4: [fit] model: expected one of 'pv', 'tch', got 'voigt'" in error(toml, {})


def test_timeouts_must_be_positive_and_ordered(tmp_path, setup):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[supervisor]\nready_timeout = 0\n')
    assert f"{toml}:4: [supervisor] ready_timeout: expected > 0, got 0.0" in error(toml, {})
    msg = error(None, {"RINGSTREAM_RUN_PARAM_FILE": str(setup), "RINGSTREAM_SUPERVISOR_HEARTBEAT_TIMEOUT": "0.25"})
    assert msg.startswith("environment (RINGSTREAM_SUPERVISOR_HEARTBEAT_TIMEOUT): [supervisor] heartbeat_timeout")
    assert "must be longer than heartbeat_interval" in msg


def test_endpoints(setup):
    ok = {"frames_endpoint": "tcp://127.0.0.2:5600", "results_endpoint": "tcp://[::1]:5601",
          "release_endpoint": "ipc:///run/ringstream/release", "events_endpoint": "auto"}
    cfg = load_config(None, {}, {"run": {"param_file": str(setup)}, "transport": ok})
    assert cfg.transport.results_endpoint == "tcp://[::1]:5601"
    # beyond loopback: only with insecure_remote said explicitly
    wide = {"frames_endpoint": "tcp://*:5600"}
    msg = error(None, {}, {"run": {"param_file": str(setup)}, "transport": wide})
    assert msg == ("command line (--frames-endpoint): [transport] frames_endpoint: 'tcp://*:5600' listens beyond "
                   "loopback and internal sockets have no CURVE; workers of other hosts join through [transport] "
                   "remote_endpoint (or set insecure_remote = true)"), msg
    cfg = load_config(None, {"RINGSTREAM_TRANSPORT_INSECURE_REMOTE": "true"},
                      {"run": {"param_file": str(setup)}, "transport": wide})
    assert cfg.transport.frames_endpoint == "tcp://*:5600" and cfg.transport.insecure_remote is True


def test_remote_workers_need_the_key_folders(setup):
    remote = {"remote_endpoint": "tcp://0.0.0.0:5560"}
    msg = error(None, {}, {"run": {"param_file": str(setup)}, "transport": remote})
    assert msg == ("2 configuration problems: command line (--remote-endpoint): [transport] remote_endpoint needs "
                   "[transport] keys_dir (CURVE "
                   "keys), or insecure_remote = true; command line (--remote-endpoint): [transport] remote_endpoint "
                   "needs [transport] "
                   "authorized_keys_dir (CURVE keys), or insecure_remote = true"), msg
    msg = error(None, {"RINGSTREAM_TRANSPORT_REMOTE_ENDPOINT": "tcp://0.0.0.0:65533"},
                {"run": {"param_file": str(setup)}, "transport": {"insecure_remote": True}})
    assert "[transport] remote_endpoint: expected tcp://HOST:PORT with PORT in 1..65531" in msg, msg
    dup = {"frames_endpoint": "tcp://127.0.0.1:5557"}
    msg = error(None, {"RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT": "tcp://127.0.0.1:5557"},
                {"run": {"param_file": str(setup)}, "transport": dup})
    assert msg.startswith("environment (RINGSTREAM_TRANSPORT_CONTROL_ENDPOINT): [transport] control_endpoint: "
                          "'tcp://127.0.0.1:5557' is also [transport] frames_endpoint (command line "
                          "(--frames-endpoint))"), msg


def test_control_mode_is_an_octal_mode(setup):
    msg = error(None, {"RINGSTREAM_TRANSPORT_CONTROL_MODE": "rw-rw----"}, {"run": {"param_file": str(setup)}})
    assert msg == ("environment (RINGSTREAM_TRANSPORT_CONTROL_MODE): [transport] control_mode: expected an octal "
                   "file mode such as 0600 or 0660, got 'rw-rw----'"), msg
    cfg = load_config(None, {"RINGSTREAM_TRANSPORT_CONTROL_MODE": "0660"}, {"run": {"param_file": str(setup)}})
    assert cfg.transport.control_mode == "0660"


def test_several_problems_are_reported_together_on_one_line(setup):
    msg = error(None, {"RINGSTREAM_WORKERS_COUNT": "0", "RINGSTREAM_RUN_PARAM_FILE": str(setup)},
                {"transport": {"ring_slots": 1}})
    assert msg.startswith("2 configuration problems: ")
    assert "environment (RINGSTREAM_WORKERS_COUNT): [workers] count" in msg
    assert "command line (--ring-slots): [transport] ring_slots" in msg


def test_param_file_required_and_must_exist(tmp_path):
    assert error(None, {}).startswith("--param-file is required")
    missing = tmp_path / "nope.txt"
    msg = error(None, {}, {"run": {"param_file": str(missing)}})
    assert msg == f"command line (--param-file): [run] param_file: parameter file '{missing}' does not exist"
    toml = write_toml(tmp_path, '[run]\nparam_file = "absent.txt"\n')
    assert error(toml, {}).startswith(f"{toml}:2: [run] param_file: parameter file 'absent.txt' does not exist")
    assert load_config(None, {}, require_param_file=False).run.param_file == ""


def test_unreadable_toml(tmp_path):
    msg = error(tmp_path / "missing.toml", {})
    assert msg.startswith(f"{tmp_path / 'missing.toml'}: cannot read configuration file")
    bad = write_toml(tmp_path, '[run]\nparam_file = "x\n')
    msg = error(bad, {})
    assert msg.startswith(f"{bad}: cannot parse TOML: ") and "line 2" in msg


def test_load_params_applies_overrides_and_passes_param_errors(tmp_path, setup):
    cfg = load_config(None, {"RINGSTREAM_RUN_OVERRIDES": "RBinSize 0.5,EtaBinSize 10"},
                      {"run": {"param_file": setup}})  # a Path from argparse is accepted
    p = cfg.load_params()
    assert (p.RBinSize, p.EtaBinSize) == (0.5, 10.0)
    bad = tmp_path / "bad.txt"
    bad.write_text(PARAMS + "Lsd far\n")
    with pytest.raises(ParamError) as info:
        load_config(None, {}, {"run": {"param_file": str(bad)}}).load_params()
    assert f"{bad}:8" in str(info.value) and "'Lsd'" in str(info.value) and info.value.exit_code == 2
    with pytest.raises(ConfigError, match="--param-file is required"):
        load_config(None, {}, require_param_file=False).load_params()


# --------------------------------------------------------------------------------------------------- object


def test_frozen_picklable_and_to_dict_round_trip(tmp_path, setup):
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[source]\nrings_2theta = [3.5]\n')
    cfg = load_config(toml, {"RINGSTREAM_WORKERS_COUNT": "3"}, {"transport": {"shared_memory": False}})
    with pytest.raises(AttributeError):
        cfg.workers.count = 4  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.describe_sources() == cfg.describe_sources()
    d = cfg.to_dict()
    assert d["workers"]["count"] == 3 and d["source"]["rings_2theta"] == [3.5]
    assert DaemonConfig.from_dict(d) == cfg
    assert tomllib.loads(cfg.to_toml()) == d
    assert tomllib.loads(cfg.to_toml(comments=False)) == d
    # the commented TOML names each value's origin
    assert re.search(r"^count = 3\s+# environment \(RINGSTREAM_WORKERS_COUNT\)$", cfg.to_toml(), re.M)
    # and the printed TOML reads back as a config file giving the same configuration
    again = load_config(write_toml(tmp_path, cfg.to_toml(), "printed.toml"), {})
    assert again == cfg


def test_from_dict_validates(setup):
    with pytest.raises(ConfigError, match=r"^<dict>: \[workers\] count: expected an integer"):
        DaemonConfig.from_dict({"workers": {"count": "x"}})


def test_example_toml_is_a_valid_complete_config(tmp_path, setup):
    text = (REPO / "systemd" / "example.toml").read_text()
    data = tomllib.loads(text)
    assert {k: sorted(v) for k, v in data.items()} == {k: sorted(v) for k, v in DaemonConfig().to_dict().items()}
    text = re.sub(r'^param_file = .*$', f'param_file = "{setup}"', text, flags=re.M)
    cfg = load_config(write_toml(tmp_path, text, "example.toml"), {})
    assert cfg.source.kind == "pva" and cfg.source.pva_channel


# --------------------------------------------------------------------------------------------------- argparse


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_known_args(argv)


def test_argparse_options_map_to_keys_and_name_the_flag(tmp_path, setup):
    args, extra = parse(["--param-file", str(setup), "--workers", "4", "--simulate", "100", "--no-shm",
                         "--engine", "cpu", "RBinSize", "0.5"])
    cli, flags = cli_layer(args, extra)
    assert cli["workers"] == {"count": 4, "engine": "cpu"}
    assert cli["source"] == {"kind": "simulated", "frames": 100}
    assert cli["transport"] == {"shared_memory": False}
    cfg = config_from_args(args, extra, env={"RINGSTREAM_WORKERS_COUNT": "9"})
    assert cfg.workers.count == 4 and cfg.source.frames == 100 and cfg.transport.shared_memory is False
    assert cfg.override_tokens() == ["RBinSize", "0.5"]
    assert cfg.describe_sources()["source.frames"] == "command line (--simulate)"
    args, extra = parse(["--param-file", str(setup), "--simulate", "-1"])
    with pytest.raises(ConfigError, match=r"^command line \(--simulate\): \[source\] frames: expected >= 0"):
        config_from_args(args, extra, env={})
    args, extra = parse(["--param-file", str(setup), "--replay", str(setup)])
    assert config_from_args(args, extra, env={}).source.kind == "replay"
    args, extra = parse(["--param-file", str(setup), "--replay", "x", "--simulate", "3"])
    with pytest.raises(ConfigError, match="give one of --simulate, --replay and --source"):
        config_from_args(args, extra, env={})


# --------------------------------------------------------------------------------------------------- check-config


def test_check_config_prints_the_effective_config_and_starts_nothing(tmp_path, setup, capsys, monkeypatch):
    from ringstream.daemon.check_config import add_check_config_parser, check_config

    parser = argparse.ArgumentParser()
    add_check_config_parser(parser.add_subparsers(dest="command"))
    toml = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[workers]\ncount = 3\n')
    monkeypatch.setenv("RINGSTREAM_WORKERS_ENGINE", "cpu")
    args, extra = parser.parse_known_args(["check-config", "--config", str(toml), "--simulate", "5", "RBinSize", "2"])
    assert check_config(args, extra) == 0
    out = capsys.readouterr().out
    data = tomllib.loads(out)  # the report is TOML (the summary is in comments)
    assert data["workers"] == {"count": 3, "engine": "cpu", "gpus": [], "numa_affinity": "auto", "batches_in_flight": 4} and data["source"]["frames"] == 5
    assert "# environment (RINGSTREAM_WORKERS_ENGINE)" in out and f"# {toml}:4" in out
    assert "R 4..30 px step 2 (13 bins)" in out
    assert re.search(r"map cache key: [0-9a-f]{64}, not cached", out)
    assert not any(Path(tmp_path).glob("**/*.npz"))  # no map was built

    args, extra = parser.parse_known_args(["check-config", "--config", str(toml), "--workers", "0"])
    assert check_config(args, extra) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("ringstream: error: command line (--workers): [workers] count = 0 needs [transport] "
                            "remote_endpoint (workers that join from other hosts)\n")

    args, extra = parser.parse_known_args(["check-config", "--config", str(toml), "Lsd", "x"])
    assert check_config(args, extra) == 2
    assert "'Lsd'" in capsys.readouterr().err

    bad = write_toml(tmp_path, f'[run]\nparam_file = "{setup}"\n[output]\ncake_noise_fraction = 0.75\n', "bad.toml")
    args, extra = parser.parse_known_args(["check-config", "--config", str(bad)])
    assert check_config(args, extra) == 2
    assert capsys.readouterr().err == (f"ringstream: error: {bad}:4: [output] cake_noise_fraction: expected >= 0 "
                                       "and <= 0.5, got 0.75\n")


def test_gpus_and_copy_threads_from_every_layer(tmp_path):
    import argparse

    from ringstream.config import add_config_arguments, config_from_args

    pfile = tmp_path / "p.txt"
    pfile.write_text("NrPixelsY 8\nNrPixelsZ 8\n")
    ap = argparse.ArgumentParser()
    add_config_arguments(ap)
    args = ap.parse_args(["--param-file", str(pfile), "--gpus", "0,1", "--copy-threads", "6"])
    cfg = config_from_args(args, env={})
    assert cfg.workers.gpus == (0, 1) and cfg.transport.copy_threads == 6
    cfg = config_from_args(ap.parse_args(["--param-file", str(pfile)]),
                           env={"RINGSTREAM_WORKERS_GPUS": "1, 0, 1", "RINGSTREAM_TRANSPORT_COPY_THREADS": "2"})
    assert cfg.workers.gpus == (1, 0, 1) and cfg.transport.copy_threads == 2
    with pytest.raises(ConfigError, match=r"command line \(--gpus\): expected comma-separated CUDA device numbers"):
        config_from_args(ap.parse_args(["--param-file", str(pfile), "--gpus", "zero"]), env={})
    with pytest.raises(ConfigError, match=r"\[workers\] gpus: expected CUDA device numbers >= 0"):
        config_from_args(ap.parse_args(["--param-file", str(pfile), "--gpus", "-1"]), env={})
    with pytest.raises(ConfigError, match=r"RINGSTREAM_TRANSPORT_COPY_THREADS.*expected an integer"):
        config_from_args(ap.parse_args(["--param-file", str(pfile)]), env={"RINGSTREAM_TRANSPORT_COPY_THREADS": "x"})

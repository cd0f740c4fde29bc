"""Configuration of the live sources: the [source] pva_* / midas_* keys, the --pva / --midas-socket
flags, their errors, and the registry making the sources (no sockets opened except the MIDAS listener on port 0)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from ringstream.config import add_config_arguments, config_from_args, load_config
from ringstream.errors import ConfigError
from ringstream.ingest.pva import apply_pva_address, attribute_value

PARAMS = "NrPixelsY 40\nNrPixelsZ 30\nLsd 1000000\npx 200\nBC 20 15\nRMin 1\nRMax 20\nRBinSize 1\nEtaBinSize 30\n"


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    path = tmp_path / "setup.txt"
    path.write_text(PARAMS)
    return path


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_known_args([str(a) for a in argv])


def test_defaults(setup):
    s = load_config(None, {}, {"run": {"param_file": str(setup)}}).source
    assert (s.pva_dtype, s.pva_queue_size, s.pva_attributes) == ("", 16, ())
    assert (s.midas_port, s.midas_listen) == (60439, "127.0.0.1")


def test_pva_flags_and_precedence(tmp_path, setup):
    toml = tmp_path / "d.toml"
    toml.write_text('[source]\npva_channel = "FILE:Image"\npva_queue_size = 8\npva_attributes = ["omega"]\n')
    args, extra = parse(["--config", toml, "--param-file", setup, "--pva", "--pva-channel", "CLI:Pva1:Image",
                         "--pva-ip", "10.0.0.5"])
    cfg = config_from_args(args, extra, env={"RINGSTREAM_SOURCE_PVA_QUEUE_SIZE": "64",
                                             "RINGSTREAM_SOURCE_PVA_ATTRIBUTES": "omega,I0"})
    s = cfg.source
    assert (s.kind, s.pva_channel, s.pva_ip, s.pva_queue_size, s.pva_attributes) == (
        "pva", "CLI:Pva1:Image", "10.0.0.5", 64, ("omega", "I0"))
    assert cfg.describe_sources()["source.kind"] == "command line (--pva)"
    assert cfg.describe_sources()["source.pva_channel"] == "command line (--pva-channel)"


def test_pva_needs_a_channel(setup):
    args, extra = parse(["--param-file", setup, "--pva"])
    with pytest.raises(ConfigError, match=r"^command line \(--pva\): \[source\] kind = 'pva' needs \[source\] "
                                          r"pva_channel$"):
        config_from_args(args, extra, env={})


@pytest.mark.parametrize("env, expected", [
    ({"RINGSTREAM_SOURCE_PVA_DTYPE": "uint12"}, r"environment \(RINGSTREAM_SOURCE_PVA_DTYPE\): \[source\] "
                                                r"pva_dtype: expected one of 'uint8'"),
    ({"RINGSTREAM_SOURCE_PVA_QUEUE_SIZE": "0"}, r"\[source\] pva_queue_size: expected >= 1, got 0"),
    ({"RINGSTREAM_SOURCE_MIDAS_PORT": "70000"}, r"\[source\] midas_port: expected a TCP port in 1\.\.65535"),
])
def test_bad_values_name_origin_and_key(setup, env, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, env, {"run": {"param_file": str(setup)}})


def test_midas_socket_flag_port_default_and_listen(setup):
    args, extra = parse(["--param-file", setup, "--midas-socket"])
    s = config_from_args(args, extra, env={}).source
    assert (s.kind, s.midas_port, s.midas_listen) == ("midas_socket", 60439, "127.0.0.1")
    args, extra = parse(["--param-file", setup, "--midas-socket", "7000", "--listen", "0.0.0.0"])
    cfg = config_from_args(args, extra, env={})
    assert (cfg.source.midas_port, cfg.source.midas_listen) == (7000, "0.0.0.0")
    assert cfg.describe_sources()["source.midas_port"] == "command line (--midas-socket)"


@pytest.mark.parametrize("argv", [["--pva", "--pva-channel", "X", "--simulate", "3"],
                                  ["--midas-socket", "--pva", "--pva-channel", "X"],
                                  ["--midas-socket", "--replay", "x.tif"]])
def test_one_source_only(setup, argv):
    args, extra = parse(["--param-file", setup, *argv])
    with pytest.raises(ConfigError, match=r"give one (source|of --simulate)"):
        config_from_args(args, extra, env={})


def test_registry_makes_the_sources(setup):
    from ringstream.ingest.midas_socket import MidasSocketSource
    from ringstream.ingest.pva import PvaSource
    from ringstream.ingest.sources import make_source

    cfg = load_config(None, {}, {"run": {"param_file": str(setup)},
                                 "source": {"kind": "pva", "pva_channel": "A:Image", "pva_dtype": "uint16"}})
    src = make_source(cfg, cfg.load_params())
    assert isinstance(src, PvaSource) and src.shape == (30, 40) and str(src.dtype) == "uint16"
    assert src.request == "record[queueSize=16]field()" and src.pausable is False
    import socket

    from ringstream.errors import InputError

    with socket.socket() as busy:  # the registry path to the MIDAS source: it binds at once, so a busy port fails
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = load_config(None, {}, {"run": {"param_file": str(setup)},
                                     "source": {"kind": "midas_socket", "midas_port": port}})
        with pytest.raises(InputError, match=rf"cannot listen on 127\.0\.0\.1:{port} "):
            make_source(cfg, cfg.load_params())
    src = MidasSocketSource((30, 40), port=0)
    try:
        assert src.address[0] == "127.0.0.1" and src.address[1] > 0 and src.shape == (30, 40)
    finally:
        src.close()


def test_pva_ip_sets_the_search_list_only_when_given():
    env: dict = {"EPICS_PVA_ADDR_LIST": "1.2.3.4"}
    apply_pva_address("", env)
    assert env == {"EPICS_PVA_ADDR_LIST": "1.2.3.4"}
    apply_pva_address("10.0.0.5, 10.0.0.6:5075", env)
    assert env == {"EPICS_PVA_ADDR_LIST": "10.0.0.5 10.0.0.6:5075", "EPICS_PVA_AUTO_ADDR_LIST": "NO"}


@pytest.mark.parametrize("attr, value", [
    ({"name": "omega", "value": ({"value": 1.5},)}, 1.5),
    ({"name": "I0", "value": ({"value": 7},)}, 7),
    ({"name": "s", "value": ({"value": "x"},)}, "x"),
    ({"name": "b", "value": ({"value": True},)}, 1),
    ({"name": "none", "value": ({},)}, None),
    ({"name": "arr", "value": ({"value": [1, 2]},)}, None),
])
def test_attribute_values(attr, value):
    assert attribute_value(attr) == value


def test_registry_has_one_source_class_per_kind():
    """The configuration's kinds (``ringstream.source_kinds``) and the ingest's registry name the same sources."""
    from types import SimpleNamespace

    from ringstream.ingest.sources import SOURCE_CLASSES, make_source
    from ringstream.source_kinds import SOURCE_KINDS

    assert tuple(SOURCE_CLASSES) == SOURCE_KINDS
    assert all(callable(getattr(cls, "from_config", None)) for cls in SOURCE_CLASSES.values())
    with pytest.raises(ConfigError, match=r"^source\.kind 'camera': unknown source; expected one of simulated, "):
        make_source(SimpleNamespace(source=SimpleNamespace(kind="camera")), None)


def test_dectris_flag_keys_precedence_and_registry(tmp_path, setup):
    from ringstream.ingest.dectris import DectrisSource
    from ringstream.ingest.sources import make_source

    s = load_config(None, {}, {"run": {"param_file": str(setup)}}).source
    assert (s.dectris_stream, s.dectris_channel, s.dectris_user_data, s.dectris_pixel_mask, s.dectris_dtype) == (
        "", "", False, False, "")
    toml = tmp_path / "d.toml"
    toml.write_text('[source]\ndectris_stream = "tcp://10.0.0.9:31001"\ndectris_channel = "threshold_2"\n')
    args, extra = parse(["--config", toml, "--param-file", setup, "--dectris-stream", "tcp://127.0.0.1:31001"])
    cfg = config_from_args(args, extra, env={"RINGSTREAM_SOURCE_DECTRIS_USER_DATA": "true"})
    s = cfg.source
    assert (s.kind, s.dectris_stream, s.dectris_channel, s.dectris_user_data) == (
        "dectris", "tcp://127.0.0.1:31001", "threshold_2", True)
    assert cfg.describe_sources()["source.kind"] == "command line (--dectris-stream)"
    src = make_source(cfg, cfg.load_params())  # (connects only when frames() starts its thread)
    assert isinstance(src, DectrisSource) and src.shape == (30, 40) and src.pausable is False
    assert (src.endpoint, src.channel, src.keep_user_data, src.keeps_compressed) == (
        "tcp://127.0.0.1:31001", "threshold_2", True, True)
    assert src.dtype == np.uint32  # any pixel type: the ring's slots are sized for the widest
    cfg = load_config(None, {"RINGSTREAM_SOURCE_DECTRIS_DTYPE": "uint16"}, {"run": {"param_file": str(setup)},
                                                                          "source": {"kind": "dectris",
                                                                                     "dectris_stream": "ipc:///tmp/d"}})
    assert make_source(cfg, cfg.load_params()).dtype == np.uint16
    with pytest.raises(ConfigError, match=r"\[source\] dectris_dtype: expected one of 'uint8'"):
        load_config(None, {"RINGSTREAM_SOURCE_DECTRIS_DTYPE": "float32"}, {"run": {"param_file": str(setup)}})


@pytest.mark.parametrize("source, expected", [
    ({"kind": "dectris"}, r"\[source\] kind = 'dectris' needs \[source\] dectris_stream$"),
    ({"kind": "dectris", "dectris_stream": "10.0.0.5:31001"},
     r"\[source\] dectris_stream: expected the detector's tcp://HOST:PORT"),
    ({"kind": "dectris", "dectris_stream": "tcp://*:31001"}, r"\[source\] dectris_stream: expected the detector's"),
])
def test_dectris_stream_errors(setup, source, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, {}, {"run": {"param_file": str(setup)}, "source": source})


def test_without_cbor2_only_the_dectris_source_is_unavailable(setup, monkeypatch):
    from ringstream.ingest import stream_v2
    from ringstream.ingest.sources import make_source

    monkeypatch.setattr(stream_v2, "cbor2", None)
    cfg = load_config(None, {}, {"run": {"param_file": str(setup)},
                                 "source": {"kind": "dectris", "dectris_stream": "tcp://127.0.0.1:31001"}})
    with pytest.raises(ConfigError, match=r"^\[source\] kind = 'dectris': the Python package cbor2 is not importable"):
        make_source(cfg, cfg.load_params())

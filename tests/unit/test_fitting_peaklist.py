"""Peak-list changes without sockets: the set/add/clear rules, MIDAS peak_update.txt, the seq in force for a
frame, the supervisor's PeakControl bookkeeping and the worker waiting for a list it has not received."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from ringstream.daemon.peaks import PeakControl
from ringstream.errors import InputError
from ringstream.fitting import choose_engine
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.peaklist import apply_action, check_list, parse_peak_update, peak_list_for_frame
from ringstream.params import parse_params
from ringstream.protocol import ControlRequest, FrameHeader, PeakUpdate, decode
from ringstream.workers.fitting import WorkerFitting

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"


def test_actions_sort_dedupe_and_clear():
    assert apply_action((300.0,), "set", [200, 100]) == (100.0, 200.0)
    assert apply_action((300.0,), "add", [100, 300]) == (100.0, 300.0)
    assert apply_action((300.0,), "clear", [5]) == ()
    assert apply_action((100.0, 200.0, 300.0), "remove", [190, 310]) == (100.0,)  # the nearest of each
    with pytest.raises(InputError, match="peaks remove 5: the peak list is empty"):
        apply_action((), "remove", [5])
    with pytest.raises(InputError, match="unknown action 'move'"):
        apply_action((), "move", [])


def test_check_list_refuses_what_the_run_cannot_hold():
    check_list((1.0, 2.0), 2)
    with pytest.raises(InputError, match=r"3 peaks do not fit the run's 2 rows per frame"):
        check_list((1.0, 2.0, 3.0), 2)
    with pytest.raises(InputError, match="peak fitting is off"):
        check_list((1.0,), 0)
    with pytest.raises(InputError, match="not a positive radius"):
        check_list((-4.0,), 3)


def test_peak_update_file(tmp_path):
    f = tmp_path / "peak_update.txt"
    f.write_text("mode append\n245.3\n\n# a comment\n347.1  \n")
    assert parse_peak_update(f) == ("add", (245.3, 347.1))
    f.write_text("425.8\n")
    assert parse_peak_update(f) == ("set", (425.8,))
    f.write_text("mode replace\n12\nabc\n")
    with pytest.raises(InputError, match=r"peak_update.txt:3: 'abc': expected a radius"):
        parse_peak_update(f)


def test_seq_in_force_is_the_latest_update_that_has_started():
    updates = {1: (100, (1.0,)), 2: (250, (2.0,)), 3: (180, (3.0,))}
    assert [peak_list_for_frame(updates, k) for k in (0, 99, 100, 179, 180, 249, 250, 10**9)] == [0, 0, 1, 1, 3, 3,
                                                                                                  3, 3]


class _Pub:
    def __init__(self) -> None:
        self.sent = []

    def send_multipart(self, frames, flags=0) -> None:
        self.sent.append(decode(frames)[0])


def _control(tmp_path, slots=0, peaks=("PeakLocation 100",)):
    cfg = SimpleNamespace(run=SimpleNamespace(run_id="r", output_h5=str(tmp_path / "out.h5")),
                          fit=SimpleNamespace(slots=slots))
    replies = []
    pc = PeakControl(cfg, parse_params(BASE + "".join(p + "\n" for p in peaks)), _Pub(),
                     lambda w, r: replies.append((w, r)))
    return pc, replies


def test_peak_control_waits_for_the_ingest_then_answers_and_publishes(tmp_path):
    pc, replies = _control(tmp_path, slots=2)
    assert pc.request({"action": "add", "peaks": [150.0]}, "client-1", ingest_running=True) is None
    (req,) = pc.pub.sent
    assert isinstance(req, ControlRequest) and req.args == {"seq": 1, "peaks": [100.0, 150.0], "from_frame": 0,
                                                            "origin": "control"}
    refused = pc.request({"action": "add", "peaks": [170.0]}, "client-2", ingest_running=True)
    assert not refused.ok and "3 peaks do not fit the run's 2 rows" in refused.error
    pc.on_confirmed(PeakUpdate(run_id="r", seq=1, from_frame=42, peaks=[100.0, 150.0], origin="control"))
    ((who, reply),) = replies
    assert who == "client-1" and reply.ok and reply.data["from_frame"] == 42
    assert isinstance(pc.pub.sent[-1], PeakUpdate) and pc.pub.sent[-1].from_frame == 42
    assert (tmp_path / "active_peaks.txt").read_text() == "100.0000\n150.0000\n"
    st = pc.status()
    assert st["seq"] == 1 and st["from_frame"] == 42 and st["peaks"] == [100.0, 150.0] and st["pending"] == []
    assert not pc.request({"action": "set", "peaks": [1.0]}, "c", ingest_running=False).ok


def test_peak_control_takes_peak_update_txt_and_rejects_a_bad_one(tmp_path):
    pc, _ = _control(tmp_path, slots=3)
    (tmp_path / "peak_update.txt").write_text("mode replace\n120\n80\n")
    pc.tick(ingest_running=True)
    assert not (tmp_path / "peak_update.txt").exists()
    assert pc.pub.sent[-1].args["peaks"] == [80.0, 120.0] and pc.pub.sent[-1].args["origin"] == "peak_update.txt"
    (tmp_path / "peak_update.txt").write_text("mode sideways\n")
    pc.next_tick = 0
    pc.tick(ingest_running=True)
    assert pc.counters["peak_update_file_rejected"] == 1 and not (tmp_path / "peak_update.txt").exists()


def _header(k: int, seq: int) -> FrameHeader:
    return FrameHeader(run_id="r", frame_index=k, shape=(1, 1), dtype="<i4", metadata={"peak_seq": seq})


def test_worker_fits_each_frame_with_its_own_list_and_never_guesses():
    from ringstream.fitting.synthetic import make_case

    p = parse_params(BASE + "PeakLocation 100.0\nFitROIPadding 15\n")
    x = np.arange(200.0)
    two = [make_case(np.random.default_rng(s), "single", snr=500, gamma=5.0) for s in (1, 2)]
    y = two[0].y + np.roll(two[1].y - two[1].truth[0], 50)
    c0, c1 = two[0].centres[0], two[1].centres[0] + 50
    wf = WorkerFitting(FrameFitter(p, x, 1), None, "worker-0", wait_s=0.3)
    wf.take(PeakUpdate(seq=1, from_frame=5, peaks=[round(c1, 1)]))
    fits = wf.fit_frames([_header(4, 0), _header(5, 1)], [y, y])
    assert abs(fits[0].fit[0, 3] - c0) < 0.05 and abs(fits[1].fit[0, 3] - c1) < 0.05
    t0 = time.monotonic()
    (late,) = wf.fit_frames([_header(6, 2)], [y])  # seq 2 never arrives: NaN, counted, after the wait
    assert time.monotonic() - t0 >= 0.3
    assert np.all(np.isnan(late.fit)) and wf.snapshot()["fit_nan_peak_list_unknown"] == 1
    assert wf.snapshot()["peak_waits"] == 1


def test_auto_engine_follows_the_integration_engine():
    assert choose_engine("auto", "gpu") == "gpu" and choose_engine("auto", "cpu") == "nlopt"
    assert choose_engine("nlopt", "gpu") == "nlopt"

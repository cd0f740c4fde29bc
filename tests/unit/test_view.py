"""``ringstream view`` without sockets or a browser: the ViewUpdate message, the shared state, the file's decimation,
the token check, the waterfall's column decimation and the status text."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from ringstream.protocol import ProtocolError, ViewUpdate, decode, encode
from ringstream.view.feeds import _spaced
from ringstream.view.page import PageContext, _decimate_columns, may_change, session_token, status_text
from ringstream.view.state import FWHM_PER_SIGMA, ViewState


def _update(rows: int, n_r: int = 5, n_peaks: int = 2):
    axes = np.arange(3 * n_r, dtype=np.float64).reshape(3, n_r)
    lineouts = np.arange(rows * n_r, dtype=np.float32).reshape(rows, n_r)
    fits = np.arange(rows * n_peaks * 7, dtype=np.float64).reshape(rows, n_peaks, 7)
    msg = ViewUpdate(run_id="r", run=3, name="scan", file="/d/run.h5", written=40, frames=list(range(rows)),
                     n_r=n_r, n_peaks=n_peaks)
    return msg, axes, lineouts, fits


def test_a_view_update_round_trips_and_a_wrong_size_is_a_size_error():
    msg, axes, lineouts, fits = _update(3)
    got, buffers = decode(encode(msg, [axes, lineouts, fits]))
    assert got == msg
    assert np.array_equal(np.frombuffer(buffers[1], np.float32).reshape(3, 5), lineouts)
    assert np.array_equal(np.frombuffer(buffers[2], np.float64).reshape(3, 2, 7), fits)
    empty = ViewUpdate(run_id="r", n_r=5, n_peaks=2)  # no rows since the last update: empty buffers
    assert decode(encode(empty, [axes, b"", b""]))[0] == empty
    with pytest.raises(ProtocolError) as err:
        decode(encode(msg, [axes, lineouts[:2], fits]))
    assert err.value.kind == "size" and "view update of 3 rows" in str(err.value)


def test_the_state_keeps_the_last_rows_of_a_run_and_starts_again_with_the_next():
    state = ViewState(max_rows=4)
    msg, axes, lineouts, fits = _update(3)
    state.append(axes, [0, 1, 2], lineouts, fits, run=1, written=3)
    state.append(axes, [3, 4, 5], lineouts, fits, run=1, written=6)
    snap = state.snapshot(10)
    assert list(snap.frames) == [2, 3, 4, 5] and snap.info["written"] == 6 and snap.version == 2
    assert np.array_equal(snap.lineouts[1], lineouts[0])
    assert np.array_equal(snap.fits[1, :, 0], fits[0, :, 3])  # Rcen
    assert np.allclose(snap.fits[1, :, 1], fits[0, :, 4] * FWHM_PER_SIGMA)  # FWHM from sigma
    assert np.array_equal(snap.fits[1, :, 2], fits[0, :, 0])  # Imax
    assert list(state.snapshot(2).frames) == [4, 5]
    state.append(axes, [0], lineouts[:1], None, run=2, written=1)  # a new run: its rows only, no fits
    snap = state.snapshot(10)
    assert list(snap.frames) == [0] and snap.fits.shape == (1, 0, 3)


def test_a_tch_run_plots_centre_fwhm_and_area_and_says_so():
    """[fit] model = "tch": the update names the model, the state plots its centre (deg 2θ), FWHM (deg) and area."""
    msg, axes, lineouts, fits = _update(3)
    msg = dataclasses.replace(msg, fit_model="tch")
    got, _ = decode(encode(msg, [axes, lineouts, fits]))
    assert got.fit_model == "tch" and ViewUpdate(n_r=5).fit_model == "pv"
    state = ViewState()
    state.append(axes, [0, 1, 2], lineouts, fits, run=1, written=3, fit_model=got.fit_model)
    snap = state.snapshot(10)
    assert snap.info["fit_model"] == "tch"
    np.testing.assert_array_equal(snap.fits, fits[:, :, [1, 4, 0]])  # center, FWHM, area
    bad = encode(msg, [axes, lineouts, fits])
    bad[0] = bytes(bad[0]).replace(b"tch", b"xyz")
    with pytest.raises(ProtocolError):
        decode(bad)


def test_a_file_is_read_at_most_rows_evenly_spaced_with_its_last_row():
    assert _spaced(5, 10) == [0, 1, 2, 3, 4]
    rows = _spaced(2035, 1000)
    assert len(rows) == len(set(rows)) == 1000 and rows[0] == 0 and rows[-1] == 2034 and rows == sorted(rows)
    assert _spaced(0, 10) == []


def test_only_the_exact_token_may_change_peaks_and_only_of_a_daemon():
    with ThreadPoolExecutor(1) as ex:
        ctx = PageContext(ViewState(), "tcp://127.0.0.1:1", "s3cret", 200, ex)
        assert may_change(ctx, "s3cret")
        assert not may_change(ctx, "") and not may_change(ctx, "s3cre") and not may_change(ctx, "s3cret ")
        assert not may_change(PageContext(ViewState(), "", "s3cret", 200, ex), "s3cret")  # a file
    doc = SimpleNamespace(session_context=SimpleNamespace(request=SimpleNamespace(arguments={"token": [b"abc"]})))
    assert session_token(doc) == "abc"
    assert session_token(SimpleNamespace(session_context=None)) == ""


def test_the_waterfall_is_averaged_in_blocks_of_columns():
    img = np.arange(2 * 7, dtype=np.float64).reshape(2, 7)
    assert _decimate_columns(img, 10) is img
    out = _decimate_columns(img, 3)  # blocks of 3, the last padded with its edge value
    assert np.allclose(out, [[1, 4, 6], [8, 11, 13]])


def test_the_status_text_names_the_state_the_run_and_the_counts():
    state = ViewState()
    status = {"state": "running", "frames_per_s": 99.5, "children": {"writer": {"alive": True}},
              "runs": {"current": {"run": 4}},
              "totals": {"dropped": 2, "rejected": 1, "worker_restarts": 1, "writer_restarts": 1}}
    state.set_info(run=4, name="scan", file="/d/run.h5", written=1200, source="daemon", status=status,
                   peaks=[15.5, 26.5], peaks_seq=2, peaks_from=900)
    text = status_text(state.snapshot(1), editable=False)
    assert text.startswith("<b>running</b> · run 4 scan · /d/run.h5")
    assert "frames 1200 · 99.5 frames/s · dropped 2 · rejected 1 · restarts 2" in text
    assert "peaks (list 2, from frame 900): 15.50, 26.50" in text and "read-only" in text
    state.set_info(status={**status, "runs": {}})
    assert status_text(state.snapshot(1), editable=True).startswith("<b>idle between runs</b>")
    state.set_info(status={**status, "children": {"writer": {"alive": False}}})
    assert status_text(state.snapshot(1), editable=True).startswith("<b>unhealthy</b>")
    state.set_info(status={"state": "no daemon", "error": "no daemon answering on tcp://127.0.0.1:1"})
    text = status_text(state.snapshot(1), editable=True)
    assert text.startswith("<b>no daemon</b>") and "<b>no daemon answering on tcp://127.0.0.1:1</b>" in text


def test_the_state_is_safe_to_read_while_a_feed_writes():
    state = ViewState(max_rows=50)
    msg, axes, lineouts, fits = _update(4)
    done = threading.Event()

    def feed() -> None:
        for k in range(300):
            state.append(axes, [4 * k + i for i in range(4)], lineouts, fits, run=1, written=4 * k + 4)
        done.set()

    t = threading.Thread(target=feed)
    t.start()
    while not done.is_set():
        snap = state.snapshot(50)
        assert len(snap.frames) == len(snap.lineouts) == len(snap.fits)
        assert np.all(np.diff(snap.frames) == 1)
    t.join()
    assert state.snapshot(50).frames[-1] == 1199


def test_a_click_always_gets_an_answer_on_the_page(monkeypatch):
    """A control request that fails in any way says so on the page (never "asking..." for ever), and a click with
    nothing to ask about says why."""
    import ringstream.view.page as page_mod
    from ringstream.daemon.status import NoDaemon

    page = object.__new__(page_mod.Page)
    page.message = SimpleNamespace(text="asking the daemon: peaks add 100.00 ...")
    page.doc = SimpleNamespace(add_next_tick_callback=lambda cb: cb())
    page.ctx = PageContext(ViewState(), "tcp://127.0.0.1:1", "t", 200, None)
    for exc, said in ((NoDaemon("no daemon answering on tcp://127.0.0.1:1"),
                       "error: no daemon answering on tcp://127.0.0.1:1"),
                      (RuntimeError("the socket broke"), "error: the request failed (RuntimeError: the socket broke)")):
        def fail(*args, exc=exc, **kwargs):
            raise exc
        monkeypatch.setattr(page_mod, "request", fail)
        page.ask("add", 100.0)
        assert page.message.text == said
    page.editable = True
    page.on_tap(SimpleNamespace(x=3.0, modifiers={}))  # no lineout yet: nothing to map the click onto
    assert page.message.text == "nothing asked: no lineout has arrived yet"

"""``ringstream view`` in a real headless browser (Chromium from the distribution, driven by Playwright).

One daemon for the module (the 128 x 128 simulated detector of ``common.SMALL_PARAMS`` at 100 frames/s, fitting
its first ring), serving its own page (``[view] enabled``, a known token), and one ``ringstream view --control``
beside it (a token it makes and prints). The tests read the plots' data from the page's Bokeh models, by name, so
"the waterfall grows" is a count; a click on the lineout must reach the daemon (``ringstream status``, then
``/entry/fit/peak_updates`` in the file) only with the token; the finished file opens with all its frames. A
screenshot of the page under load is saved under ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from common import NY, NZ, SMALL_PARAMS, ringstream_command
from test_daemon import end_group

from ringstream.daemon.status import NoDaemon, query_status
from ringstream.transport.endpoints import free_tcp_endpoint, free_tcp_port

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no {CHROMIUM} (.ci/run installs it)")

RINGS = (15.5, 26.5, 37.5, 48.5)
TOKEN = "t0ken-for-the-test"
RATE = 100
NR = 56  # radial bins of SMALL_PARAMS (RMin 4, RMax 60, RBinSize 1)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

READ = """() => { const d = Bokeh.documents[0]; const s = d.get_model_by_name('status').data;
  const w = d.get_model_by_name('waterfall').data;
  return {frames: s.frames[0], tick: s.tick[0], shown: s.rows[0], rows: w.image[0].shape[0], first: w.first[0], last: w.last[0],
          points: d.get_model_by_name('lineout').data.x.length,
          message: d.get_model_by_name('message').text, text: d.get_model_by_name('status_text').text} }"""
LOADED = ("() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].get_model_by_name('lineout') "
          "&& Bokeh.documents[0].get_model_by_name('lineout').data.x.length > 0")


def _wait_http(url: str, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the page's server exited: {proc.communicate()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {deadline_s} s")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The daemon (serving its page on ``page``) and a ``ringstream view`` of it (on ``viewer``, token printed)."""
    tmp = tmp_path_factory.mktemp("view")
    (tmp / "setup.txt").write_text(SMALL_PARAMS.format(nz=NZ, ny=NY) + f"PeakLocation {RINGS[0]}\nFitROIPadding 5\n")
    control, page_port, viewer_port = free_tcp_endpoint(), free_tcp_port(), free_tcp_port()
    env = dict(os.environ, PYTHONWARNINGS="ignore", RINGSTREAM_CACHE_DIR=str(tmp / "cache"), RINGSTREAM_FIT_SLOTS="3",
               RINGSTREAM_VIEW_ENABLED="1", RINGSTREAM_VIEW_LISTEN=f"127.0.0.1:{page_port}",
               RINGSTREAM_VIEW_TOKEN=TOKEN)
    daemon = subprocess.Popen(ringstream_command() + ["run", "--param-file", "setup.txt", "--output-h5", "out.h5",
                                                      "--engine", "cpu", "--control", control, "--simulate", "0",
                                                      "--rate", str(RATE), "--workers", "1"],
                              cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    viewer = subprocess.Popen(ringstream_command() + ["view", "--control", control, "--listen",
                                                      f"127.0.0.1:{viewer_port}"],
                              cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"), start_new_session=True)
    site = {"tmp": tmp, "daemon": daemon, "control": control, "page": f"http://127.0.0.1:{page_port}/",
            "viewer": f"http://127.0.0.1:{viewer_port}/", "procs": [daemon, viewer]}
    try:
        first = viewer.stdout.readline()
        site["viewer_token"] = re.search(r"\?token=(\S+)", first).group(1)
        _wait_http(site["viewer"], viewer)
        _wait_http(site["page"], daemon)
        yield site
    finally:
        # the viewers run until killed here (not a leak); the last test stops the daemon
        leaked = [line for p in site["procs"] for line in end_group(p) if "still running" not in line]
        assert not leaked, "; ".join(leaked)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_function(LOADED, timeout=30_000)
    return page, requests


def _click_lineout(page, shift: bool = False) -> str:
    """Click the middle of the lineout plot; the page's message once the daemon has answered."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    before = page.evaluate(READ)["message"]
    box = page.locator("div.bk-Figure").first.bounding_box()
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
    if shift:
        page.keyboard.up("Shift")
    # two waits, so that a failure says which half went missing: the click reaching the page's server (the
    # message changes, to "asking..." or to a refusal), then the daemon's answer
    for js, what in (("(before) => Bokeh.documents[0].get_model_by_name('message').text !== before",
                      "the click changed nothing on the page (it never reached the page's server)"),
                     ("() => !Bokeh.documents[0].get_model_by_name('message').text.startsWith('asking')",
                      "the daemon's answer never reached the page")):
        try:
            page.wait_for_function(js, arg=before, timeout=15_000)
        except PlaywrightTimeout:
            raise AssertionError(f"{what}: the message is still {page.evaluate(READ)['message']!r}") from None
    return page.evaluate(READ)["message"]


def _peaks(control: str) -> dict:
    return query_status(control, timeout=2.0)["peaks"]


@pytest.mark.timeout(90)
def test_the_page_follows_the_daemon_from_its_own_server_and_is_read_only_without_the_token(site, browser):
    page, requests = _open(browser, site["viewer"])  # the standalone `ringstream view --control`, no token
    t0, first = time.monotonic(), page.evaluate(READ)
    time.sleep(2.0)
    now = page.evaluate(READ)
    rate = (now["tick"] - first["tick"]) / (time.monotonic() - t0)  # (>= 5/s: bench/view_overhead.py measures it)
    assert rate >= 2, f"{rate:.1f} page updates/s"
    assert now["frames"] > first["frames"] + RATE and now["last"] > first["last"] + RATE
    assert now["points"] == first["points"] == NR
    page.evaluate("() => { Bokeh.documents[0].get_model_by_name('depth').value = 5000 }")  # the history control
    page.wait_for_function("() => { const w = Bokeh.documents[0].get_model_by_name('waterfall').data; "
                           "return w.last[0] - w.first[0] + 1 > 200 }")
    deep = page.evaluate(READ)
    page.wait_for_function("(n) => { const w = Bokeh.documents[0].get_model_by_name('waterfall').data; "
                           "return w.last[0] - w.first[0] > n + 50 }", arg=deep["last"] - deep["first"],
                           timeout=20_000)
    now = page.evaluate(READ)  # the waterfall grows: over more frames, in rows up to the plot's height
    assert now["last"] - now["first"] > deep["last"] - deep["first"] + 50 >= 250  # (deep: over at least 200 frames)
    assert now["rows"] == min(300, len(range(now["first"], now["last"] + 1)))
    assert "running" in now["text"] and "read-only" in now["text"]
    local = (site["viewer"], site["viewer"].replace("http://", "ws://"))
    assert requests and all(u.startswith(local) for u in requests), [u for u in requests if not u.startswith(local)]
    seq = _peaks(site["control"])["seq"]
    assert _click_lineout(page).startswith("read-only")
    time.sleep(0.5)
    assert _peaks(site["control"])["seq"] == seq == 0
    page.close()


@pytest.mark.timeout(90)
def test_a_click_with_the_token_adds_a_peak_and_shift_click_removes_it(site, browser):
    page, _ = _open(browser, site["page"] + "?token=wrong")  # the daemon's own page ([view] enabled)
    assert _click_lineout(page).startswith("read-only")
    assert _peaks(site["control"])["seq"] == 0
    page.close()
    page, _ = _open(browser, site["page"] + f"?token={TOKEN}")
    added = _click_lineout(page)
    m = re.fullmatch(r"peak list 1 in force from frame (\d+): ([\d., ]+)", added)
    assert m, added
    listed = [float(v) for v in m.group(2).split(", ")]
    peaks = _peaks(site["control"])
    assert peaks["seq"] == 1 and peaks["from_frame"] == int(m.group(1)) and len(listed) == 2
    assert np.allclose(peaks["peaks"], listed, atol=5e-6) and RINGS[0] in listed
    site["lists"] = [peaks["peaks"], [RINGS[0]]]  # (the daemon's own numbers, as the file must hold them)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "view-under-load.png"
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('status_text').text.includes('list 1')")
    page.screenshot(path=str(shot))
    print(f"screenshot of the page under load: {shot}")
    assert shot.stat().st_size > 20_000
    removed = _click_lineout(page, shift=True)
    assert re.fullmatch(rf"peak list 2 in force from frame \d+: {RINGS[0]:g}", removed), removed
    peaks = _peaks(site["control"])
    assert peaks["seq"] == 2 and peaks["peaks"] == [RINGS[0]]
    page.close()


@pytest.mark.timeout(60)
def test_a_viewer_that_hangs_or_comes_and_goes_never_stops_or_slows_the_daemon(site):
    st = query_status(site["control"])
    endpoint = st["endpoints"]["view_endpoint"]
    ctx = zmq.Context()
    try:
        hung = ctx.socket(zmq.SUB)  # subscribes, never reads
        hung.setsockopt(zmq.RCVHWM, 1)
        hung.setsockopt(zmq.RCVBUF, 4096)
        hung.setsockopt(zmq.SUBSCRIBE, b"")
        hung.connect(endpoint)
        t0, w0 = time.monotonic(), st["totals"]["written"]
        u0 = st["children"]["writer"]["counters"].get("view_updates", 0)
        for _ in range(20):  # viewers that come and go
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(endpoint)
            time.sleep(0.1)
            s.close(linger=0)
        time.sleep(1.0)
        st = query_status(site["control"])
        dt, written = time.monotonic() - t0, st["totals"]["written"] - w0
        assert written >= 0.8 * RATE * dt, f"{written} frames in {dt:.1f} s at {RATE} frames/s"
        assert st["children"]["writer"]["counters"]["view_updates"] > u0  # and still publishes
        assert st["state"] == "running" and all(c["alive"] for c in st["children"].values())
        assert st["totals"]["dropped"] == 0 and st["totals"]["writer_restarts"] == 0
        assert st["view"]["alive"]
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(90)
def test_the_peak_updates_reach_the_file_and_the_finished_file_shows_all_its_frames(site, browser):
    daemon = site["daemon"]
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    written = int(err.split("written ")[-1].split(",")[0])
    out = site["tmp"] / "out.h5"
    with h5py.File(out, "r") as f:
        upd = f["/entry/fit/peak_updates"]
        assert list(upd["seq"][()]) == [1, 2]
        assert [list(v) for v in upd["peaks"][()]] == site["lists"]
        index = f["/entry/data/frame_index"][()]
    assert len(index) == written > RATE
    with pytest.raises(NoDaemon):
        query_status(site["control"], timeout=0.3)
    port = free_tcp_port()
    viewer = subprocess.Popen(ringstream_command() + ["view", str(out), "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"), start_new_session=True)
    site["procs"].append(viewer)
    _wait_http(f"http://127.0.0.1:{port}/", viewer)
    page, _ = _open(browser, f"http://127.0.0.1:{port}/")
    page.wait_for_function(f"() => Bokeh.documents[0].get_model_by_name('status').data.frames[0] == {written}",
                           timeout=20_000)
    got = page.evaluate(READ)
    assert got["last"] == int(index[-1]) and got["first"] == int(index[0])
    assert got["shown"] == min(written, 1000) and got["rows"] == min(written, 300)  # (decimated to the screen)
    assert "complete" in got["text"]
    assert f"peaks (list 2, from frame {int(upd_from(out))})" in got["text"]
    with h5py.File(out, "r") as f:
        two_theta, last = f["/entry/data/radial_axis"][()], f["/entry/data/I"][-1]
    page.evaluate("() => { const d = Bokeh.documents[0]; d.get_model_by_name('axis').value = '2θ (deg)'; "
                  "d.get_model_by_name('log').active = true }")  # the axis and log controls
    page.wait_for_function("() => { const l = Bokeh.documents[0].get_model_by_name('lineout').data; "
                           "return l.x[0] < 1 && Math.max(...l.y) < 4 }")  # (both changes drawn: 2θ in deg, log10)
    line = page.evaluate("() => { const l = Bokeh.documents[0].get_model_by_name('lineout').data; "
                         "return [Array.from(l.x), Array.from(l.y)] }")
    assert np.array_equal(line[0], two_theta)
    assert np.allclose(line[1], np.log10(last.astype(np.float64)), rtol=1e-6)
    page.close()


def upd_from(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["/entry/fit/peak_updates/from_frame"][-1])

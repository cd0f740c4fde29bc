"""The Bokeh document of one browser session: the latest lineout, a waterfall of the last lineouts against frame
index, each peak's Rcen / FWHM / Imax against frame (a ``[fit] model = "tch"`` run: centre in 2θ / FWHM / area), the
run and the service's state; pause, history depth, axis
(R, 2θ, Q), log scale, colour map. All of it is Python: BokehJS (served by the Bokeh server from the installed
package) draws it, and no JavaScript is written here.

Clicks on the lineout change the daemon's peak list through its control socket, as ``ringstream peaks add|remove``
does (a click adds a peak at that R, shift-click removes the nearest), and only in a session opened with the
server's token (``?token=...``); without it the page is read-only and says so. The request waits for the ingest's
confirmation on a worker thread, so no session waits for another's click.

The page's data sources carry names, so a test or a script reads them from the browser
(``Bokeh.documents[0].get_model_by_name("waterfall")``): ``status`` (frames written, page updates ``tick``, rows
shown), ``lineout`` (x, y), ``waterfall`` (the image), ``fits`` (frame, peak, rcen, fwhm, imax), ``peaks`` (x).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..daemon.status import NoDaemon, is_healthy, request
from .state import MAX_ROWS, PLOT_TITLES, Snapshot, ViewState

log = logging.getLogger("ringstream.view")

#: how often a session looks for new data, in ms (the page updates at most this often)
UPDATE_MS = 100
#: the waterfall is sent at most this many columns wide (bins averaged in blocks) and rows high (evenly spaced
#: lineouts): about the plot's pixels, so that a deep history costs the browser no more than a shallow one
MAX_COLUMNS = 600
MAX_IMAGE_ROWS = 300
#: the waterfall and the fit plots (the costly ones to send and draw) are redrawn at most this often, in s; the
#: lineout and the status at every update
SLOW_PLOTS_S = 0.4
AXES = ("R (px)", "2θ (deg)", "Q (1/Å)")
PALETTES = ("Viridis256", "Inferno256", "Greys256", "Turbo256")
PEAK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


@dataclasses.dataclass(frozen=True)
class PageContext:
    """What every session shares: the ``state``, the daemon's ``control`` endpoint ("" for a file), the server's
    ``token``, the initial waterfall depth ``history`` and the ``executor`` that control requests run on."""

    state: ViewState
    control: str
    token: str
    history: int
    executor: Executor


def session_token(doc: Any) -> str:
    """The ``token`` query argument the session was opened with ("" without one)."""
    ctx = doc.session_context
    args = ctx.request.arguments if ctx is not None and ctx.request is not None else {}
    given = args.get("token") or [b""]
    value = given[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def may_change(ctx: PageContext, given: str) -> bool:
    """True when a session with token ``given`` may change peaks (a daemon, and the right token)."""
    return bool(ctx.control) and bool(ctx.token) and secrets.compare_digest(given.encode(), ctx.token.encode())


def _decimate_columns(img: np.ndarray, most: int) -> np.ndarray:
    """``img`` ``[rows, n]`` with its columns averaged in blocks so that at most ``most`` remain."""
    n = img.shape[1]
    if n <= most:
        return img
    block = -(-n // most)
    pad = (-n) % block
    if pad:
        img = np.concatenate([img, np.repeat(img[:, -1:], pad, axis=1)], axis=1)
    return img.reshape(img.shape[0], -1, block).mean(axis=2)


def status_text(snap: Snapshot, editable: bool) -> str:
    """The page's status block (HTML) from a snapshot."""
    info, st = snap.info, snap.info.get("status") or {}
    tot = st.get("totals") or {}
    runs = st.get("runs") or {}
    if info.get("source") == "file" or st.get("state") in ("complete", "growing", "unreadable", "no daemon"):
        state = st.get("state", "?")
        fps = ""
    else:
        state = ("unhealthy" if st and not is_healthy(st) else
                 "idle between runs" if st and not runs.get("current") else st.get("state", "connecting"))
        fps = f"{float(st.get('frames_per_s', 0) or 0):.1f} frames/s · "
    restarts = sum(int(tot.get(k, 0) or 0) for k in ("worker_restarts", "writer_restarts", "ingest_restarts"))
    peaks = ", ".join(f"{v:.2f}" for v in info.get("peaks") or []) or "none"
    mode = ("editing: click the lineout to add a peak, shift-click to remove the nearest" if editable else
            "read-only (open the address the service printed, with its ?token=, to change peaks)")
    error = f"<br><b>{st['error']}</b>" if st.get("error") else ""
    return (f"<b>{state}</b> · run {info.get('run', 0)} {info.get('name') or ''} · {info.get('file') or '-'}<br>"
            f"frames {int(info.get('written', 0))} · {fps}dropped {int(tot.get('dropped', 0) or 0)} · rejected "
            f"{int(tot.get('rejected', 0) or 0)} · restarts {restarts}<br>"
            f"peaks (list {info.get('peaks_seq', 0)}, from frame {info.get('peaks_from', 0)}): {peaks}<br>"
            f"<i>{mode}</i>{error}")


class Page:
    """One session's document and its update callback."""

    def __init__(self, doc: Any, ctx: PageContext) -> None:
        from bokeh import events
        from bokeh.layouts import column, row
        from bokeh.models import (
            ColorBar,
            ColumnDataSource,
            Div,
            LinearColorMapper,
            Select,
            Spinner,
            Toggle,
        )
        from bokeh.plotting import figure

        self.doc, self.ctx = doc, ctx
        self.editable = may_change(ctx, session_token(doc))
        self.seen = (-1, None)
        self.ticks = 0
        self.slow_due = 0.0  # monotonic time the waterfall and fits are next redrawn
        self.drawn_with = None  # the (axis, log, depth) they were last drawn with
        self.status = ColumnDataSource({"frames": [0], "tick": [0], "rows": [0], "run": [0]}, name="status")
        self.line = ColumnDataSource({"x": [], "y": []}, name="lineout")
        self.wf = ColumnDataSource({"image": [np.zeros((1, 1), np.float32)], "x": [0.0], "y": [0.0], "dw": [1.0],
                                    "dh": [1.0], "first": [0], "last": [0]}, name="waterfall")
        self.fits = ColumnDataSource({"frame": [], "peak": [], "rcen": [], "fwhm": [], "imax": [], "colour": []},
                                     name="fits")
        self.peaks = ColumnDataSource({"x": []}, name="peaks")
        self.axis = Select(title="axis", value=AXES[0], options=list(AXES), width=110, name="axis")
        self.log = Toggle(label="log", active=False, width=60, name="log")
        self.pause = Toggle(label="pause", active=False, width=70)
        self.depth = Spinner(title="history (lineouts)", low=2, high=MAX_ROWS, step=10, value=ctx.history, width=130,
                             name="depth")
        self.palette = Select(title="colours", value=PALETTES[0], options=list(PALETTES), width=110)
        self.text = Div(text="connecting", name="status_text", width=1200)
        self.message = Div(text="", name="message", width=1200)
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.fig = figure(height=300, width=600, title="latest lineout", tools=tools, name="lineout_plot",
                          x_axis_label=AXES[0], y_axis_label="intensity")
        self.fig.line("x", "y", source=self.line)
        self.fig.vspan(x="x", source=self.peaks, line_color="red", line_dash="dashed")
        self.mapper = LinearColorMapper(palette=PALETTES[0])
        self.wfig = figure(height=300, width=600, title="waterfall", tools=tools, x_axis_label=AXES[0],
                           y_axis_label="frame")
        self.wfig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.wf, color_mapper=self.mapper)
        self.wfig.add_layout(ColorBar(color_mapper=self.mapper, width=8), "right")
        fit_figs = self.fit_figs = []
        for col, label in zip(("rcen", "fwhm", "imax"), PLOT_TITLES["pv"], strict=True):
            f = figure(height=220, width=400, title=label, tools=tools, x_axis_label="frame")
            f.scatter("frame", col, source=self.fits, color="colour", size=4)
            fit_figs.append(f)
        self.fig.on_event(events.Tap, self.on_tap)
        for widget in (self.axis, self.log, self.depth):
            widget.on_change("value" if widget is not self.log else "active", self.invalidate)
        self.palette.on_change("value", lambda attr, old, new: setattr(self.mapper, "palette", new))
        doc.title = "ringstream view"
        doc.add_root(column(row(self.axis, self.log, self.pause, self.depth, self.palette), self.text,
                            row(self.fig, self.wfig), row(*fit_figs), self.message))
        doc.add_root(self.status)  # (drawn by nothing: a root, so that the browser has it)
        doc.add_periodic_callback(self.update, UPDATE_MS)

    def invalidate(self, attr: str, old: Any, new: Any) -> None:
        """A control changed: the next update redraws (a Bokeh on_change callback)."""
        self.seen = (-1, None)

    def axis_index(self) -> int:
        return AXES.index(self.axis.value)

    # ------------------------------------------------------------------------------------------------ updates
    def update(self) -> None:
        """Every UPDATE_MS: new data in, unless paused (the status block goes on)."""
        state = self.ctx.state
        key = (state.version, (self.axis.value, bool(self.log.active), int(self.depth.value or 2)))
        if key == self.seen:
            return
        snap = state.snapshot(int(self.depth.value or 2))
        self.text.text = status_text(snap, self.editable)
        if self.pause.active:
            return
        self.seen = key
        self.ticks += 1
        self.status.data = {"frames": [int(snap.info.get("written", 0))], "tick": [self.ticks],
                            "rows": [len(snap.frames)], "run": [int(snap.info.get("run", 0))]}
        if snap.axes.shape[1] == 0:
            return
        x = snap.axes[self.axis_index()]
        if not np.all(np.isfinite(x)):
            x = snap.axes[0]
        log = bool(self.log.active)
        scaled = self.scaled(snap.lineouts, log)
        self.fig.xaxis.axis_label = self.wfig.xaxis.axis_label = self.axis.value
        self.fig.yaxis.axis_label = "log10 intensity" if log else "intensity"
        self.line.data = {"x": x, "y": scaled[-1] if len(scaled) else np.zeros(0)}
        self.peaks.data = {"x": np.interp(np.asarray(snap.info.get("peaks") or [], float), snap.axes[0], x)}
        now = time.monotonic()
        if now < self.slow_due and key[1] == self.drawn_with:
            return
        self.slow_due, self.drawn_with = now + SLOW_PLOTS_S, key[1]
        if len(scaled):
            if len(scaled) > MAX_IMAGE_ROWS:
                scaled = scaled[np.linspace(0, len(scaled) - 1, MAX_IMAGE_ROWS).round().astype(int)]
            img = _decimate_columns(scaled, MAX_COLUMNS).astype(np.float32)
            finite = img[np.isfinite(img)]
            if finite.size:
                self.mapper.low, self.mapper.high = (float(v) for v in np.percentile(finite, (1, 99.5)))
            first, last = int(snap.frames[0]), int(snap.frames[-1])
            self.wf.data = {"image": [img], "x": [float(x[0])], "y": [float(first)], "dw": [float(x[-1] - x[0])],
                            "dh": [float(max(last - first, 0) + 1)], "first": [first], "last": [last]}
        for f, title in zip(self.fit_figs, PLOT_TITLES[snap.info.get("fit_model", "pv")], strict=True):
            f.title.text = title  # the run's peak model decides what the three plots show
        n, k = snap.fits.shape[:2]
        if n and k:
            peak = np.tile(np.arange(k), n)
            self.fits.data = {"frame": np.repeat(snap.frames, k), "peak": peak,
                              "rcen": snap.fits[:, :, 0].ravel(), "fwhm": snap.fits[:, :, 1].ravel(),
                              "imax": snap.fits[:, :, 2].ravel(),
                              "colour": np.array(PEAK_COLOURS)[peak % len(PEAK_COLOURS)]}

    @staticmethod
    def scaled(lineouts: np.ndarray, log: bool) -> np.ndarray:
        if not log:
            return lineouts
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.where(lineouts > 0, lineouts, np.nan))

    # ------------------------------------------------------------------------------------------------ clicks
    def on_tap(self, event: Any) -> None:
        """A click on the lineout: add (shift: remove the nearest) a peak at the clicked R, with the token."""
        if not self.editable:
            self.message.text = ("read-only: this page was opened without the service's token, so clicks change "
                                 "nothing")
            return
        snap = self.ctx.state.snapshot(0)
        if snap.axes.shape[1] == 0 or event.x is None:
            self.message.text = ("nothing asked: no lineout has arrived yet" if snap.axes.shape[1] == 0 else
                                 "nothing asked: the click had no position on the lineout's axis")
            return
        x = snap.axes[self.axis_index()]
        if not np.all(np.isfinite(x)):
            x = snap.axes[0]
        radius = float(np.interp(float(event.x), x, snap.axes[0]))
        action = "remove" if (event.modifiers or {}).get("shift") else "add"
        self.message.text = f"asking the daemon: peaks {action} {radius:.2f} ..."
        self.ctx.executor.submit(self.ask, action, radius)

    def ask(self, action: str, radius: float) -> None:
        """On a worker thread: the control request, then its answer onto the page."""
        try:
            reply = request(self.ctx.control, "peaks", timeout=8.0, args={"action": action, "peaks": [radius]})
            if reply.ok:
                d = reply.data
                peaks = ", ".join(f"{v:g}" for v in d.get("peaks", [])) or "none (automatic finding)"
                text = f"peak list {d.get('seq')} in force from frame {d.get('from_frame')}: {peaks}"
                self.ctx.state.set_info(peaks=list(d.get("peaks", [])), peaks_seq=int(d.get("seq", 0)),
                                        peaks_from=int(d.get("from_frame", 0)))
            else:
                text = f"refused: {reply.error}"
        except NoDaemon as exc:
            text = f"error: {exc}"
        except Exception as exc:  # whatever it was, the page must not say "asking" for ever
            log.exception("peaks %s %g: the control request failed", action, radius)
            text = f"error: the request failed ({type(exc).__name__}: {exc})"
        self.doc.add_next_tick_callback(lambda: setattr(self.message, "text", text))


def make_document(ctx: PageContext):
    """The Bokeh application function for ``ctx``."""
    def modify(doc: Any) -> None:
        Page(doc, ctx)

    return modify

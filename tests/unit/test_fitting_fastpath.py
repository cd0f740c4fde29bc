"""The batched engines' fast path: a batch of frames with one fixed peak list planned, packed, tested and
assembled over the whole batch gives the same FrameFits, counters and log lines as planning every frame on its own
(``FrameFitter(fast_path=False)``, the reference), and it is the path actually taken."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ringstream.fitting import fastpath, frame
from ringstream.fitting.batched import CONVERGED, MAX_ITER_REACHED, fit_batch, pack
from ringstream.fitting.frame import FrameFitter
from ringstream.fitting.nlopt_fitter import RoiFit
from ringstream.fitting.synthetic import make_case
from ringstream.params import parse_params

BASE = "NrPixelsY 128\nNrPixelsZ 128\nLsd 1000000\npx 200\nBC 63 61\nRMin 0\nRMax 200\nRBinSize 1\n"
X = np.arange(200.0)


def params(peaks, *lines: str):
    return parse_params(BASE + "".join(f"PeakLocation {c:.2f}\n" for c in peaks) + "".join(f"{v}\n" for v in lines))


def frames_of(kind: str, n: int, seed: int, snr: float = 100.0):
    """``n`` noisy lineouts of one kind and the peak list of the first (the others' peaks lie near it)."""
    rng = np.random.default_rng(seed)
    cases = [make_case(rng, kind, snr=snr) for _ in range(n)]
    return [c.y for c in cases], tuple(cases[0].centres)


def ring_frames(n: int, seed: int, centres=(40.3, 95.7, 150.2), gamma: float = 5.0):
    """Lineouts with separate single peaks near ``centres`` on a flat background."""
    rng = np.random.default_rng(seed)
    ys = []
    for _ in range(n):
        y = rng.poisson(100.0, X.size).astype(np.float64)
        for c in centres:
            case = make_case(rng, "single", snr=300, gamma=gamma, slope=False)
            y += np.roll(case.y - case.truth[0], int(round(c - case.centres[0])))
        ys.append(y)
    return ys


def both(p, ys, peak_lists=None, slots: int = 0, engine: str = "lm", gpu=None, wheres=None):
    """(fast fitter, its FrameFits, reference fitter, its FrameFits) on the same inputs."""
    out = []
    for fast in (True, False):
        ff = FrameFitter(p, X, slots, engine=engine, gpu=gpu, fast_path=fast)
        out += [ff, ff.fit_many([y.copy() for y in ys], peak_lists, wheres)]
    return out


def assert_same(fast_fits, ref_fits, fast: FrameFitter, ref: FrameFitter, n_fast: int) -> None:
    assert len(fast_fits) == len(ref_fits)
    for a, b in zip(fast_fits, ref_fits, strict=True):
        assert a.fit.shape == b.fit.shape and a.fit.dtype == b.fit.dtype == np.float64
        np.testing.assert_array_equal(np.isnan(a.fit), np.isnan(b.fit))
        scale = np.nanmax(np.abs(b.fit)) if np.isfinite(b.fit).any() else 1.0
        np.testing.assert_allclose(a.fit, b.fit, rtol=1e-10, atol=1e-12 * scale, equal_nan=True)
        assert a.rois.dtype == b.rois.dtype == np.int32 and a.rois.shape == b.rois.shape
        np.testing.assert_array_equal(a.rois, b.rois)
        assert a.values.dtype == np.float64 and a.values.size == int(a.rois[:, 1].sum())
        np.testing.assert_allclose(a.values, b.values, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(b.values).max(
            initial=0.0)))
    counts = dict(fast.counters)
    assert counts.pop("fit_fast_frames") == n_fast
    assert ref.counters.pop("fit_fast_frames") == 0
    assert counts == ref.counters


# ------------------------------------------------------------------------------------------- initial guesses


@pytest.mark.parametrize("case", ["single", "double", "triple", "merged_and_apart", "long_run", "edges"])
def test_initial_guesses_and_packing_equal_the_per_roi_planning(case):
    if case in ("single", "double", "triple"):
        ys, peaks = frames_of(case, 12, seed={"single": 1, "double": 2, "triple": 3}[case])
        lines = ()
    elif case == "merged_and_apart":  # an overlapping pair and a peak far away: ROIs of 2 and 1 peaks
        ys, peaks = frames_of("double", 12, seed=4)
        peaks = (*peaks, peaks[0] + 70 if peaks[0] + 70 < 190 else peaks[0] - 70)
        lines = ()
    elif case == "long_run":  # six close peaks: one ROI cut at MAX_PEAKS_PER_ROI (4 + 2)
        ys = ring_frames(12, seed=5, centres=tuple(60.0 + 7.0 * k for k in range(6)), gamma=3.0)
        peaks, lines = tuple(60.0 + 7.0 * k for k in range(6)), ()
    else:  # ROIs clipped at both ends of the lineout, narrow ROIs (the half-maximum walk reaches the edges)
        ys = ring_frames(12, seed=6, centres=(2.4, 100.0, 197.3), gamma=8.0)
        peaks, lines = (2.4, 100.0, 197.3), ("FitROIPadding 6",)
    p = params(peaks, *lines)
    ref = FrameFitter(p, X, engine="lm", fast_path=False)
    lay = FrameFitter(p, X, engine="lm").layout(None)
    y = np.asarray(ys)
    (p0, lo, hi), yg = fastpath.initial_guesses(lay, X, y)
    probs, xs, yss = [], [], []
    for i, yi in enumerate(ys):
        plan = ref.plan(yi, None, "")
        assert len(plan.problems) == lay.n_rois
        for j, prob in enumerate(plan.problems):
            assert (prob.start, prob.stop, tuple(prob.slots), tuple(prob.peak_bins)) == (
                lay.starts[j], lay.stops[j], lay.slots[j], lay.bins[j])
            q = prob.p0.size
            np.testing.assert_allclose(p0[i, j, :q], prob.p0, rtol=1e-12, atol=0)
            np.testing.assert_allclose(lo[i, j, :q], prob.lo, rtol=1e-12, atol=0)
            np.testing.assert_allclose(hi[i, j, :q], prob.hi, rtol=1e-12, atol=0)
            assert lay.xmid[j] == prob.xmid and lay.hw[j] == prob.hw
            probs.append(prob)
            xs.append(X[prob.start:prob.stop])
            yss.append(yi[prob.start:prob.stop])
    want = pack(probs, xs, yss)
    got = fastpath.pack_batch(lay, yg, np.stack([p0, lo, hi]))
    for name in ("x", "y", "npts", "p", "lo", "hi", "xmid", "hw", "n_peaks"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=name)


def test_half_max_widths_equal_the_walk_of_half_max_width():
    from ringstream.fitting.peaks import half_max_width

    rng = np.random.default_rng(12)
    ys = ring_frames(20, seed=7, centres=(20.0, 60.5, 61.0, 140.0, 190.0), gamma=6.0)
    ys += [rng.normal(100.0, 30.0, X.size) for _ in range(5)]  # noise: crossings anywhere, or none
    p = params((20.0, 60.5, 61.0, 140.0, 190.0), "FitROIPadding 9")
    lay = FrameFitter(p, X, engine="lm").layout(None)
    y = np.asarray(ys)
    for bg in (np.full((y.shape[0], lay.q_bin.size), 100.0), rng.uniform(-50, 400, (y.shape[0], lay.q_bin.size))):
        got = fastpath.half_max_widths(lay, X, y, bg)
        for i in range(y.shape[0]):
            for q, c in enumerate(lay.q_bin):
                j = lay.q_roi[q]
                want = half_max_width(X, y[i], int(c), float(bg[i, q]), int(lay.starts[j]), int(lay.stops[j]))
                if np.isnan(want):
                    assert np.isnan(got[i, q])
                else:
                    assert got[i, q] == pytest.approx(want, rel=1e-12, abs=0)


# ----------------------------------------------------------------------------------------- whole frames


@pytest.mark.parametrize("kind,seed", [("single", 11), ("double", 12), ("triple", 13)])
def test_fast_path_gives_the_per_frame_fits(kind, seed):
    ys, peaks = frames_of(kind, 16, seed)
    fast, a, ref, b = both(params(peaks), ys)
    assert_same(a, b, fast, ref, n_fast=16)
    assert fast.counters["fit_rows_ok"] > 0


def test_bad_frames_and_odd_peak_lists_take_the_reject_path_with_the_same_counts_and_logs(caplog):
    ys = ring_frames(14, seed=21)
    ys[2] = ys[2].copy()
    ys[2][17] = np.nan  # nan_in_lineout
    ys[5] = np.zeros(X.size)  # flat_lineout
    ys[9] = np.full(X.size, 7.0)  # flat_lineout
    ys[11] = ys[11].copy()
    ys[11][3] = np.inf  # nan_in_lineout (not finite)
    cases = [
        ((40.3, 95.7, 150.2, 950.0), ()),  # a peak outside the R range
        ((40.3, 95.7, 150.2), ("FitROIPadding 150",)),  # roi_wider_than_lineout
        ((0.3, 95.7), ("FitROIPadding 3",)),  # roi_too_short at the lineout's start
    ]
    for peaks, lines in cases:
        for slots in (0, 2, 5):  # as many rows as peaks, fewer (more_peaks_than_slots), more (unused_slot)
            logs, fits = [], []
            for fast_path in (True, False):
                caplog.clear()
                ff = FrameFitter(params(peaks, *lines), X, slots, engine="lm", fast_path=fast_path)
                with caplog.at_level(logging.WARNING, logger="ringstream.fitting"):
                    fits += [ff, ff.fit_many([y.copy() for y in ys], None, [f"frame {i}" for i in range(len(ys))])]
                logs.append(sorted(r.getMessage() for r in caplog.records))
            fast, a, ref, b = fits
            fast_log, ref_log = logs
            assert_same(a, b, fast, ref, n_fast=10)
            assert fast_log == ref_log and fast_log
            for i in (2, 5, 9, 11):
                assert np.all(np.isnan(a[i].fit)) and a[i].rois.shape == (0, 2) and a[i].values.size == 0


def test_several_peak_lists_in_one_batch_and_automatic_finding_beside_them():
    ys = ring_frames(12, seed=31)
    lists = [None, (40.3, 95.7), [150.2, 95.7, 40.3], (), None, (40.3, 95.7)] * 2
    p = params((40.3, 95.7, 150.2), "DoPeakFit 1", "MultiplePeaks 1")
    fast, a, ref, b = both(p, ys, lists)
    assert_same(a, b, fast, ref, n_fast=10)  # the two empty lists: automatic finding, frame by frame
    assert len(fast._layouts) == 4  # None, the pair, the list given as a list, the empty one (no layout)
    assert fast._layouts[()] is None


def test_fitroiauto_and_nlopt_plan_frame_by_frame():
    ys, peaks = frames_of("single", 4, seed=41)
    for lines, engine in (((), "nlopt"), (("FitROIAuto 1",), "lm")):
        ff = FrameFitter(params(peaks, *lines), X, engine=engine)
        ff.fit_many(ys)
        assert ff.counters["fit_fast_frames"] == 0 and ff.counters["fit_frames"] == 4


def test_a_lineout_of_another_size_is_rejected_as_before():
    ys = ring_frames(3, seed=42)
    ys[1] = ys[1][:150]
    fast, a, ref, b = both(params((40.3, 95.7, 150.2)), ys)
    assert_same(a, b, fast, ref, n_fast=2)
    assert fast.counters["fit_nan_lineout_size"] == 3


class Spoiler:
    """A batched solver (``fit_packed``) that runs the NumPy LM and then spoils some ROIs in each of the ways the
    failure tests catch: not converged, a NaN parameter, a cost no better than the start, Rcen at its bound."""

    def fit_packed(self, pk):
        res = fit_batch(pk)
        res["status"][0::7] = MAX_ITER_REACHED
        res["p"][1::7, 0] = np.nan
        res["cost"][2::7] = res["start_cost"][2::7]
        res["p"][3::7, 4] = pk.hi[3::7, 4]  # Rcen of the first peak at its upper bound
        res["p"][4::7, 3] = pk.hi[4::7, 3]  # μ at 1: a natural bound, not a failure
        assert np.all(res["status"][5::7] == CONVERGED)
        return res


def test_failed_rois_are_refitted_one_by_one_with_nlopt_as_before(monkeypatch, caplog):
    ys = ring_frames(10, seed=51)
    real = frame.fit_roi

    def flaky(x, y, prob):  # the refit of every third failed ROI fails too: fit_failed rows
        flaky.n += 1
        if flaky.n % 3 == 0:
            return RoiFit(prob.p0.copy(), 1.0, 2.0, False, "neldermead", True, "pinned_at_bound")
        return real(x, y, prob)

    rows = {}
    for fast in (True, False):
        flaky.n = 0
        monkeypatch.setattr(frame, "fit_roi", flaky)
        ff = FrameFitter(params((40.3, 95.7, 150.2)), X, engine="gpu", gpu=Spoiler(), fast_path=fast)
        with caplog.at_level(logging.WARNING, logger="ringstream.fitting"):
            rows[fast] = (ff, ff.fit_many(ys, None, lambda k: f"frame {k}"))
    (fast, a), (ref, b) = rows[True], rows[False]
    assert_same(a, b, fast, ref, n_fast=10)
    n_spoiled = len(range(0, 30, 7)) + len(range(1, 30, 7)) + len(range(2, 30, 7)) + len(range(3, 30, 7))
    assert fast.counters["fit_fallback_nlopt"] == n_spoiled
    assert fast.counters["fit_nan_fit_failed"] == n_spoiled // 3
    failed = [k for k, f in enumerate(a) if np.isnan(f.fit[:, 0]).any()]
    assert failed and all(a[k].rois.shape[0] == 3 - int(np.isnan(a[k].fit[:, 0]).sum()) for k in failed)


def test_the_gpu_engine_takes_the_fast_path_with_one_call_per_batch():
    calls = []

    class Solver:
        def fit_packed(self, pk):
            calls.append(pk.size)
            return fit_batch(pk)

    ys, peaks = frames_of("triple", 8, seed=61)
    fast, a, ref, b = both(params(peaks), ys, engine="gpu", gpu=Solver())
    assert_same(a, b, fast, ref, n_fast=8)
    assert calls == [8, 8]  # one ROI per frame (three overlapping peaks): one call on each path


def test_the_worker_names_a_frame_only_when_it_logs_it(caplog):
    from ringstream.protocol import FrameHeader
    from ringstream.workers.fitting import WorkerFitting

    ys = [y.astype(np.float32) for y in ring_frames(6, seed=71)]
    ys[4][10] = np.nan
    wf = WorkerFitting(FrameFitter(params((40.3, 95.7, 150.2)), X, engine="lm"), None, "worker-3")
    headers = [FrameHeader(run_id="r", frame_index=100 + k, shape=(1, 1), dtype="<i4") for k in range(6)]
    with caplog.at_level(logging.WARNING, logger="ringstream.fitting"):
        fits = wf.fit_frames(headers, ys)
    assert "worker-3: frame 104: 3 peak row(s) not fitted: nan_in_lineout" in caplog.text
    assert wf.snapshot()["fit_fast_frames"] == 5 and wf.snapshot()["fit_rows_ok"] == 15
    ref = FrameFitter(params((40.3, 95.7, 150.2)), X, engine="lm", fast_path=False)
    assert_same(fits, ref.fit_many(ys), wf.fitter, ref, n_fast=5)

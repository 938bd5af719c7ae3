"""benchmarks.memory_baselines: the PromQL 2.42 port on small hand-computed series (no
Prometheus needed; ``python -m benchmarks.promql_check`` compares with a real one)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import memory_baselines as mb

S = 1000  # ms per second


def series(points: list[tuple[float, float]]) -> mb.Series:
    return mb.Series((), np.array([int(t * S) for t, _ in points], np.int64),
                     np.array([v for _, v in points], float))


def at(*seconds: float) -> np.ndarray:
    return np.array([int(s * S) for s in seconds], np.int64)


def test_linear_regression_reference_hand_cases() -> None:
    # y = 2 + 0.5 t at t = 0, 10, 20: slope 0.5/s, value at t = 20 is 12, at t = 60 is 32.
    assert mb.linear_regression([0, 10 * S, 20 * S], [2.0, 7.0, 12.0], 20 * S) == (0.5, 12.0)
    assert mb.linear_regression([0, 10 * S, 20 * S], [2.0, 7.0, 12.0], 60 * S) == (0.5, 32.0)
    # constant series: slope exactly 0 and the value, whatever the intercept time
    assert mb.linear_regression([0, 10 * S, 30 * S], [7.0, 7.0, 7.0], 99 * S) == (0, 7.0)
    assert all(math.isnan(x) for x in mb.linear_regression([0, S], [math.inf, math.inf], 0))
    # least squares of (0, 0), (10, 10), (20, 5): slope = cov/var = 50/200 = 0.25/s, mean 5 at 10
    slope, icpt = mb.linear_regression([0, 10 * S, 20 * S], [0.0, 10.0, 5.0], 10 * S)
    assert slope == pytest.approx(0.25) and icpt == pytest.approx(5.0)


def test_deriv_constant_linear_and_too_few_points() -> None:
    const = series([(t, 100.0) for t in range(0, 600, 10)])
    lin = series([(t, 1000.0 + 3.0 * t) for t in range(0, 600, 10)])
    d_const = mb.deriv(const, at(300, 590), 600 * S)
    d_lin = mb.deriv(lin, at(300, 590), 600 * S)
    assert d_const.tolist() == [0.0, 0.0]
    assert d_lin == pytest.approx([3.0, 3.0], rel=1e-12)
    # one sample in range, or none: no result
    assert np.isnan(mb.deriv(lin, at(0), 600 * S)).all()
    assert np.isnan(mb.deriv(lin, at(1000), 60 * S)).all()


def test_range_is_closed_on_both_ends_in_2_42_and_left_open_in_3() -> None:
    s = series([(0, 0.0), (60, 60.0), (120, 0.0)])
    # at t = 120 with [2m]: 2.42 includes the sample at exactly t - 2m -> 3 samples, slope 0;
    # left-open (3.x) drops it -> (60, 60), (120, 0): slope -1/s.
    assert mb.deriv(s, at(120), 120 * S).tolist() == [0.0]
    assert mb.deriv(s, at(120), 120 * S, left_open=True).tolist() == [-1.0]
    lo, hi = mb.range_bounds(s.t, at(120), 120 * S)
    assert (lo.tolist(), hi.tolist()) == ([0], [3])


def test_predict_linear_intercept_is_at_the_evaluation_time() -> None:
    # y = 10 t on t = 0..100 s; at eval time 130 s (30 s after the last sample):
    # value at 130 s is 1300, + 10/s x 3600 s.
    s = series([(t, 10.0 * t) for t in range(0, 101, 10)])
    v = mb.predict_linear(s, at(130), 3600 * S, 3600.0)
    assert v.tolist() == pytest.approx([1300.0 + 36_000.0], rel=1e-12)


def test_gap_in_a_series() -> None:
    # samples at 0..100 s, a gap, then 400..500 s; all y = 2 t. The regression over [0, 500] is
    # exact on a line whatever the spacing; a window inside the gap has only what it holds.
    pts = [(t, 2.0 * t) for t in list(range(0, 101, 10)) + list(range(400, 501, 10))]
    s = series(pts)
    assert mb.deriv(s, at(500), 500 * S).tolist() == pytest.approx([2.0], rel=1e-12)
    # window (250, 350]: no samples -> no result; [150, 450]: samples 400..450 only
    assert np.isnan(mb.deriv(s, at(350), 100 * S)).all()
    assert mb.deriv(s, at(450), 300 * S).tolist() == pytest.approx([2.0], rel=1e-12)
    # a step across the gap: 0 before, 100 after: least squares over 4 points
    step = series([(0, 0.0), (10, 0.0), (400, 100.0), (410, 100.0)])
    xs = np.array([0.0, 10.0, 400.0, 410.0])
    ys = np.array([0.0, 0.0, 100.0, 100.0])
    expected = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
    assert mb.deriv(step, at(410), 410 * S).tolist() == pytest.approx([expected], rel=1e-12)


def test_vectorised_regressions_match_the_reference_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.integers(5_000, 15_000, 400)).astype(np.int64) + 1_767_600_000_000
    v = np.round(3e8 + np.cumsum(rng.normal(0, 2e6, 400)))
    evals = np.arange(t[0], t[-1] + 30_000, 30_000, dtype=np.int64)
    for range_ms in (600_000, 3_600_000):
        lo, hi = mb.range_bounds(t, evals, range_ms)
        slope, icpt = mb.regressions(t, v, lo, hi, evals)
        for k in range(0, evals.size, 7):
            a, b = int(lo[k]), int(hi[k])
            if b - a < 2:
                assert math.isnan(slope[k])
                continue
            ref = mb.linear_regression(t[a:b].tolist(), v[a:b].tolist(), int(evals[k]))
            assert (slope[k], icpt[k]) == ref  # same operations, same order: identical


def test_rate_extrapolation_hand_cases() -> None:
    # counter 0, 10, 20, 30 at 10 s steps, eval at 40 s, [40s]: range [0, 40], samples 0..30 s.
    # increase 30 over 30 s sampled; to start 0 s (< 1.1 x 10 s: extrapolate 0), to end 10 s
    # (< 11 s: extrapolate 10 s) -> 40 s -> 30 x 40/30 = 40 over 40 s = 1/s.
    c = series([(0, 0.0), (10, 10.0), (20, 20.0), (30, 30.0)])
    assert mb.rate(c, at(40), 40 * S).tolist() == pytest.approx([1.0])
    # counter reset: 5, 8, 2 -> increase (2 - 5) + 8 = 5
    r = series([(0, 5.0), (10, 8.0), (20, 2.0)])
    # range [0, 20]: sampled 20 s, to start 0, to end 0; zero point: 20 x 5/5 = 20 >= 0
    assert mb.rate(r, at(20), 20 * S).tolist() == pytest.approx([5.0 / 20.0])
    # far from both edges: extrapolate half an average interval on each side;
    # samples 100, 110 (values 50, 60) in [0, 300]: interval 10 + 5 + 5 = 20 -> 10 x 2 / 300
    far = series([(100, 50.0), (110, 60.0)])
    assert mb.rate(far, at(300), 300 * S).tolist() == pytest.approx([20.0 / 300.0])
    # the zero point limits extrapolation at the start: 1, 2 at 100, 110 in [0, 110]:
    # to zero 10 x 1/1 = 10 s (< 100 s to start and < 11 s threshold) -> 10 + 10 + 0 = 20 s
    z = series([(100, 1.0), (110, 2.0)])
    assert mb.rate(z, at(110), 110 * S).tolist() == pytest.approx([1.0 * 20 / 10 / 110])
    assert np.isnan(mb.rate(z, at(100), 110 * S)).all()  # one sample


def test_instant_lookback_and_recorded_sum() -> None:
    a = series([(0, 1.0), (30, 2.0)])
    b = series([(10, 10.0)])
    # instant at t: latest sample in [t - 5m, t]
    assert mb.instant(a, at(0, 29, 30, 330, 331)).tolist()[:4] == [1.0, 1.0, 2.0, 2.0]
    assert math.isnan(mb.instant(a, at(331))[0])
    rec = mb.recorded([a, b], at(0, 30, 320, 400))
    # 0: a only (b not yet); 30: 2 + 10; 320: a (30 s old) + b (310 s old: gone) -> 2;
    # 400: a is 370 s old, b 390 s: nothing -> no sample
    assert rec.t.tolist() == at(0, 30, 320).tolist() and rec.v.tolist() == [1.0, 12.0, 2.0]


def test_eval_grid_is_aligned_to_absolute_multiples() -> None:
    g = mb.eval_grid(1_767_600_005 * 10**9, 1_767_600_100 * 10**9, 30.0)
    assert (g % 30_000 == 0).all() and g[0] == 1_767_600_030_000 and g[-1] == 1_767_600_090_000


def test_alert_episodes_pending_firing_resolved() -> None:
    evals = at(0, 30, 60, 90, 120, 150, 180, 210, 240)
    holds = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    # for 60 s: active at 0 -> fires at 60; resolved at 90; active at 120 -> fires at 180
    assert mb.alert_episodes(evals, holds, 60.0, 30.0) == [60 * S, 180 * S]
    assert mb.alert_episodes(evals, holds, 0.0, 30.0) == [0, 120 * S]
    assert mb.alert_episodes(evals, np.zeros(9, bool), 0.0, 30.0) == []


def _instance(heap: list[mb.Series], runtime: str = "java", limit: float = 1000.0,
              ) -> mb.InstanceMemory:
    im = mb.InstanceMemory("svc", "id-1", "shop/svc", runtime, heap=heap)
    im.limit = series([(t, limit) for t in range(0, 7200, 10)])
    return im


def test_predict_linear_rule_fires_on_a_line_towards_the_limit() -> None:
    # heap = 100 + 0.05 t bytes (t s): at t, predict_linear(4 h) = 100 + 0.05 (t + 14400)
    # > 1000 once t > 3600 s. for 30 min, warm-up 15 min, 30 s evaluations -> fires at 5400 s.
    comps = [series([(t, 50.0 + 0.025 * t) for t in range(0, 7200, 10)])] * 2
    table = mb.MemoryTable([_instance(comps)], 0, 7200 * 10**9)
    alerts = mb.predict_linear_alerts(table)
    assert alerts == [({"service": "svc", "instance": "id-1"}, (3600 + 30 + 1800) * 10**9)]
    flat = [series([(t, 400.0) for t in range(0, 7200, 10)])]
    assert mb.predict_linear_alerts(mb.MemoryTable([_instance(flat)], 0, 7200 * 10**9)) == []


def test_deriv_threshold_from_the_warmup_and_rule() -> None:
    # warm-up slope 0.01/s, later 0.1/s; threshold 1.5 x 0.01. Note the recorded sum is what
    # the rule differentiates.
    pts = [(t, 0.01 * t if t <= 1200 else 12.0 + 0.1 * (t - 1200)) for t in range(0, 3600, 10)]
    table = mb.MemoryTable([_instance([series(pts)])], 0, 3600 * 10**9)
    th = mb.deriv_thresholds(table)
    assert th == {"java": pytest.approx(0.015)}
    alerts = mb.deriv_alerts(table)
    assert len(alerts) == 1
    # the 10 m slope passes 0.015 shortly after 1200 s and holds; fires 10 min after that
    fired_s = alerts[0][1] / 10**9
    assert 1200 + 600 <= fired_s <= 1200 + 600 + 120


def test_gc_time_rule() -> None:
    # two GC histograms' _sum: 0.06 s/s and 0.05 s/s -> 0.11 > 0.1 from the start
    gc = [series([(t, 0.06 * t) for t in range(0, 3600, 10)]),
          series([(t, 0.05 * t) for t in range(0, 3600, 10)])]
    im = _instance([series([(t, 1.0) for t in range(0, 3600, 10)])])
    im.gc = gc
    cfg = mb.RuleSettings()
    g = mb.gc_time(im, at(1800), cfg)
    assert g.tolist() == pytest.approx([0.11])
    alerts = mb.gc_time_alerts(mb.MemoryTable([im], 0, 3600 * 10**9))
    assert [a[1] for a in alerts] == [(900 + 300) * 10**9]


def test_registered_in_accuracy() -> None:
    from benchmarks.accuracy import BASELINES

    for name in ("predict_linear", "deriv", "gc_time"):
        assert BASELINES[name] is mb.BUILTIN[name]

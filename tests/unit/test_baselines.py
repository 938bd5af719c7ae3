"""benchmarks.baselines: Prometheus' histogram_quantile, the spanmetrics p99 rule and
HalfSpaceTrees, on small synthetic span lists (plus one tiny simulator run for the extraction)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from benchmarks import accuracy
from benchmarks.baselines import (
    BUILTIN,
    KIND,
    SPANMETRICS_BUCKETS_MS,
    SpanTable,
    halfspacetrees,
    halfspacetrees_alerts,
    histogram_quantile,
    histogram_quantiles,
    p99_static_alerts,
    simulated_spans,
    window_stats,
)
from pipeline.simulate import Simulator, build_scenario

S = 10**9
T0 = 1_767_600_000 * S
INF = math.inf
H = [(1, 2), (2, 6), (INF, 8)]  # cumulative: 2 in (0, 1], 4 in (1, 2], 2 above 2

Latency = float | Callable[[float], float]


def spans(
    minutes: float,
    ops: dict[tuple[str, str], Latency],
    per_s: float = 4,
    seed: int = 1,
    sigma: float = 0.2,
    poisson: bool = False,
) -> SpanTable:
    """``per_s`` spans a second per operation (Poisson if asked), lognormal around the
    operation's median ms (a function of the start second for a jump); seen at their end."""
    rng = np.random.default_rng(seed)
    rows = []
    for (service, name), median in ops.items():
        for sec in range(int(minutes * 60)):
            n = int(rng.poisson(per_s)) if poisson else int(per_s)
            offsets = np.sort(rng.random(n)) if poisson else np.arange(n) / n
            for off in offsets.tolist():
                t = sec + off
                m = median(t) if callable(median) else median
                start = T0 + int(t * S)
                rows.append((service, name, start,
                             start + int(m * math.exp(sigma * rng.standard_normal()) * 1e6)))
    return SpanTable.from_spans(rows, T0, T0 + int(minutes * 60 * S))


def jump(before: float, after: float, *windows: tuple[float, float]) -> Callable[[float], float]:
    """Median ``after`` while the start second is inside one of ``windows`` (minutes)."""
    return lambda t: after if any(a * 60 <= t < b * 60 for a, b in windows) else before


def minutes(alerts: list[tuple[dict[str, str], int]]) -> list[tuple[str, float]]:
    return [(e["operation"], (at - T0) / S / 60) for e, at in alerts]


# ---------------------------------------------------------------------------------------------
# histogram_quantile


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    (0.5, H, 1.5),  # rank 4: 2 of the 4 in (1, 2]
    (0.25, H, 1.0),  # rank 2: exactly the first bucket's count -> its upper bound
    (0.1, H, 0.4),  # rank 0.8: 0.8/2 of the first bucket, interpolated from 0
    (0.75, H, 2.0),  # rank 6: top of (1, 2]
    (0.76, H, 2.0),  # rank 6.08 falls in +Inf: the highest finite bound
    (0.99, H, 2.0),
    (1.0, H, 2.0),
    (0.0, H, 0.0),
    (0.5, list(reversed(H)), 1.5),  # order of the samples does not matter
    (0.5, [(1, 1), (1, 1), (2, 6), (INF, 8)], 1.5),  # equal bounds are summed (coalesced)
    (0.5, [(1, 5), (2, 3), (INF, 10)], 1.0),  # a decrease is forced monotonic: (2, 5)
    (0.2, [(0, 5), (1, 10), (INF, 10)], 0.0),  # first bound <= 0: returned as is
    (0.99, [(10, 0), (50, 90), (100, 100), (INF, 100)], 95.0),  # rank 99: 9/10 of (50, 100]
    (0.5, [(1, 2), (2, 6)], math.nan),  # no +Inf bucket
    (0.5, [(INF, 8)], math.nan),  # fewer than two buckets
    (0.5, [(1, 0), (2, 0), (INF, 0)], math.nan),  # no observations
    (math.nan, H, math.nan),
    (-0.1, H, -INF),
    (1.1, H, INF),
])
def test_histogram_quantile_hand_cases(q: float, buckets: list, expected: float) -> None:
    got = histogram_quantile(q, buckets)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_histogram_quantile_spanmetrics_buckets() -> None:
    # 100 spans: 60 in (10, 50] ms, 39 in (50, 100], 1 in (15 s, +Inf).
    counts = np.zeros(len(SPANMETRICS_BUCKETS_MS) + 1)
    counts[SPANMETRICS_BUCKETS_MS.index(50)] = 60
    counts[SPANMETRICS_BUCKETS_MS.index(100)] = 39
    counts[-1] = 1
    cum = np.cumsum(counts)
    buckets = [*zip(SPANMETRICS_BUCKETS_MS, cum[:-1], strict=True), (INF, cum[-1])]
    # rank 99 = 60 + 39: the top of (50, 100]; rank 50 = 50/60 of (10, 50]; rank 99.5: +Inf
    assert histogram_quantile(0.99, buckets) == pytest.approx(100.0)
    assert histogram_quantile(0.5, buckets) == pytest.approx(10 + 40 * 50 / 60)
    assert histogram_quantile(0.995, buckets) == 15000.0
    assert histogram_quantiles(0.99, SPANMETRICS_BUCKETS_MS, counts) == pytest.approx(100.0)


def test_vectorised_quantiles_match_prometheus() -> None:
    rng = np.random.default_rng(3)
    bounds = (0.5, 1.0, 2.5, 5.0, 10.0)
    counts = rng.poisson(rng.choice([0.0, 0.3, 3.0], size=(400, 1)), size=(400, 6))
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        fast = histogram_quantiles(q, bounds, counts)
        for row, got in zip(counts, fast, strict=True):
            cum = np.cumsum(row)
            want = histogram_quantile(q, [*zip(bounds, cum[:-1], strict=True), (INF, cum[-1])])
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want)


# ---------------------------------------------------------------------------------------------
# p99_static

STABLE = ("a", "SELECT stable")
SLOW = ("a", "SELECT slow")


def test_p99_static_fires_on_a_jump_and_not_on_a_stable_operation() -> None:
    table = spans(40, {STABLE: 20.0, SLOW: jump(20.0, 200.0, (25, 40))})
    alerts = p99_static_alerts(table)
    # The threshold is 1.5 x p99 over the warm-up; the first evaluation whose 5 m window holds
    # slow spans is 25:30 (spans seen in (25:00, 25:30]), and `for: 2m` fires it at 27:30.
    assert minutes(alerts) == [(SLOW[1], 27.5)]
    assert alerts[0][0] == {"service": "a", "operation": SLOW[1]}


def test_p99_static_for_duration_and_episodes() -> None:
    brief = ("a", "GET brief")  # slow for 1 minute: above threshold < 2 minutes
    twice = ("a", "GET twice")  # slow for 3 minutes, twice
    table = spans(45, {brief: jump(20.0, 200.0, (20, 21)), STABLE: 20.0,
                       twice: jump(20.0, 200.0, (25, 28), (35, 38))})
    # A 30 s rate window, so the expression is true only while slow spans are being seen.
    alerts = p99_static_alerts(table, rate_window_s=30)
    assert minutes(alerts) == [(twice[1], 27.5), (twice[1], 37.5)]
    # Without `for`, the brief jump fires at its first evaluation, and only once per episode.
    alerts = p99_static_alerts(table, rate_window_s=30, for_s=0)
    assert minutes(alerts) == [(brief[1], 20.5), (twice[1], 25.5), (twice[1], 35.5)]


def test_p99_static_warmup_and_operations_without_warmup_traffic() -> None:
    late = ("b", "HGET late")  # first seen after the warm-up: no threshold, no rule
    table = SpanTable.from_spans(
        [(*STABLE, T0 + k * S, T0 + k * S + 5_000_000) for k in range(1800)]
        + [(*late, T0 + k * S, T0 + k * S + 900_000_000) for k in range(1000, 1800)],
        T0, T0 + 1800 * S,
    )
    assert p99_static_alerts(table) == []
    # A jump inside the warm-up is part of "normal": it only raises the threshold.
    table = spans(30, {SLOW: jump(20.0, 200.0, (5, 30))})
    assert p99_static_alerts(table) == []
    with pytest.raises(ValueError, match="whole number"):
        p99_static_alerts(table, warmup_s=100)


# ---------------------------------------------------------------------------------------------
# halfspacetrees

OPS: dict[tuple[str, str], Latency] = {
    ("a", "SELECT"): 5.0, ("a", "GET /x"): 40.0, ("b", "HGET"): 2.0,
}


def test_window_stats() -> None:
    rows = [("a", "op", T0 + k * S // 10, T0 + k * S // 10 + (k + 1) * 1_000_000)
            for k in range(10)]  # 1..10 ms, all seen in the first 30 s window
    rows.append(("a", "op", T0 + 31 * S, T0 + 31 * S + 7_000_000))
    st = window_stats(SpanTable.from_spans(rows, T0, T0 + 90 * S))
    assert st.window.tolist() == [0, 1]
    assert st.count.tolist() == [10, 1]
    assert st.p50_ms.tolist() == pytest.approx([5.5, 7.0])
    assert st.p99_ms.tolist() == pytest.approx([9.91, 7.0])


def test_halfspacetrees_quiet_on_stationary_noise() -> None:
    table = spans(60, OPS, per_s=2, seed=1, sigma=0.25, poisson=True)
    assert halfspacetrees_alerts(table) == []


def test_halfspacetrees_fires_on_a_big_jump() -> None:
    ops = {**OPS, ("a", "SELECT"): jump(5.0, 60.0, (35, 60))}
    table = spans(60, ops, per_s=2, seed=1, sigma=0.25, poisson=True)
    scores: dict = {}
    alerts = halfspacetrees_alerts(table, scores=scores)
    # Windows closing 35:30 and 36:00 are the first two with slow spans.
    assert ("SELECT", 36.0) in minutes(alerts)
    assert all(at > T0 + 900 * S for _, at in alerts)  # never inside the warm-up
    # Scores exist from the first full reference window (10 windows) on, for every operation.
    assert {op for op in scores} == set(OPS)
    assert min(t for t, _ in scores[("a", "SELECT")]) == T0 + 11 * 30 * S


# ---------------------------------------------------------------------------------------------
# Simulator extraction and registration


def test_simulated_spans_match_the_model() -> None:
    sc = build_scenario("healthy", seed=2, duration="40s", rate=5)
    table = simulated_spans(sc)
    assert simulated_spans(sc) is table  # memoised for the same scenario object
    seen, durations, names = [], [], set()
    for tick in Simulator(sc).ticks():
        for trace in tick.traces:
            for sp in trace:
                seen.append(tick.time_ns)
                durations.append(sp.end_ns - sp.start_ns)
                names.add((dict(sp.resource.attributes)["service.name"], sp.template.name))
    assert table.seen_ns.tolist() == seen
    assert table.duration_ns.tolist() == durations
    assert set(table.operations) == names
    assert (table.start_ns, table.end_ns) == (sc.start_ns, sc.end_ns)
    kind, alerts = halfspacetrees(sc)  # shorter than the warm-up: nothing to alert on
    assert (kind, alerts) == (KIND, [])


def test_registered_in_accuracy() -> None:
    assert set(BUILTIN) == {"p99_static", "halfspacetrees"}
    for name, fn in BUILTIN.items():
        assert accuracy.BASELINES[name] is fn

"""benchmarks.timewait_baselines: static TIME_WAIT thresholds with Prometheus alerting semantics,
on hand-made series, and the series they read from the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import accuracy, scoring
from benchmarks import memory_baselines as mb
from benchmarks import timewait_baselines as tb
from pipeline.simulate import Simulator, build_scenario, label_lines

S = 1000  # ms per second
NS = 10**9


def host(points: list[tuple[float, float]], name: str = "node-9") -> tb.HostTimeWait:
    t = np.array([int(s * S) for s, _ in points], np.int64)
    v = np.array([v for _, v in points], float)
    return tb.HostTimeWait(name, tb.NODE_EXPORTER, mb.Series((), t, v))


def steps(*segments: tuple[float, float, float], every: float = 10.0) -> list[tuple[float, float]]:
    """Samples every ``every`` s: ``(from_s, to_s, value)`` segments, end exclusive."""
    return [(t, v) for lo, hi, v in segments for t in np.arange(lo, hi, every).tolist()]


def fired(rule: tb.StaticRule, h: tb.HostTimeWait, end_s: float) -> list[float]:
    return [at / NS for _, at in rule.alerts([h], 0, int(end_s * NS))]


RULE = tb.StaticRule("r", 5000.0, 60.0)  # > 5000 for 1m, every 15 s

CASES = [
    # (name, samples, end_s, fired_at_s)
    ("fires once the condition held for the whole 'for'",
     steps((0, 100, 80.0), (100, 400, 6000.0)), 400, [165.0]),  # pending at 105 s
    ("exactly the threshold does not hold (>)",
     steps((0, 100, 80.0), (100, 400, 5000.0)), 400, []),
    ("a 30-second blip never fires",
     steps((0, 100, 80.0), (100, 130, 9000.0), (130, 400, 80.0)), 400, []),
    ("one evaluation below resets the pending alert",
     # above from 100 s; the sample at 150 s is below, seen by the evaluation at 150 s only
     steps((0, 100, 80.0), (100, 150, 6000.0), (150, 160, 4000.0), (160, 400, 6000.0)), 400,
     [225.0]),  # pending again at 165 s
    ("two episodes fire twice",
     steps((0, 100, 80.0), (100, 300, 6000.0), (300, 400, 80.0), (400, 600, 6000.0)), 600,
     [165.0, 465.0]),
    ("a firing alert stays one alert while it holds",
     steps((0, 100, 80.0), (100, 1200, 30000.0)), 1200, [165.0]),
]


@pytest.mark.parametrize(("samples", "end_s", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_static_rule_cases(samples: list[tuple[float, float]], end_s: float,
                           expected: list[float]) -> None:
    assert fired(RULE, host(samples), end_s) == expected


def test_for_is_measured_between_evaluations() -> None:
    # 10 minutes: pending at 105 s, firing at the first evaluation >= 705 s (every 15 s: 705 s)
    rule = tb.StaticRule("r", 1000.0, 600.0)
    h = host(steps((0, 100, 80.0), (100, 800, 1500.0)))
    assert fired(rule, h, 800) == [705.0]
    assert fired(rule, h, 700) == []  # run ends first
    # a 30-second evaluation interval: pending at 120 s, firing at 720 s
    assert fired(tb.StaticRule("r", 1000.0, 600.0, interval_s=30.0), h, 800) == [720.0]


def test_a_sample_is_visible_for_the_five_minute_lookback() -> None:
    # one sample above at 100 s, then the series stops: visible at [100, 400] s (2.42: closed)
    h = host([(0.0, 80.0), (100.0, 6000.0)])
    assert fired(RULE, h, 1000) == [165.0]
    rule = tb.StaticRule("r", 5000.0, 300.0)  # needs 300 s: 105 + 300 = 405 > 400: too late
    assert fired(rule, h, 1000) == []
    assert fired(tb.StaticRule("r", 5000.0, 285.0), h, 1000) == [390.0]


def test_alerts_are_per_host_in_time_order() -> None:
    a = host(steps((0, 200, 6000.0)), "node-a")
    b = host(steps((0, 100, 80.0), (100, 400, 6000.0)), "node-b")
    out = RULE.alerts([b, a], 0, 400 * NS)
    assert out == [({"host": "node-a"}, 60 * NS), ({"host": "node-b"}, 165 * NS)]


def test_series_come_from_node_exporter_or_hostmetrics_and_match_the_full_run() -> None:
    sc = build_scenario("healthy", seed=5, duration="4m", rate=20, extra_faults=[
        "time_wait_buildup:node-1/frontend>cart:1m:2m:3",
        "time_wait_buildup:node-4/cart>redis:1m:2m:1",
    ])
    table = {h.host: h for h in tb.time_wait_table(sc)}
    assert tb.time_wait_table(sc) is tb.time_wait_table(sc)  # memoised per scenario
    assert {h: t.metric for h, t in table.items()} == {
        "node-1": "system_network_connections", "node-2": "system_network_connections",
        "node-3": "node_sockstat_TCP_tw", "node-4": "node_sockstat_TCP_tw",
    }
    # the full run (spans on) has the very same TIME_WAIT points
    full: dict[str, list[tuple[int, float]]] = {h: [] for h in table}
    styles = {h.name: h.metrics_style for h in sc.topology.hosts}
    for tick in Simulator(sc).ticks():
        for m in tick.metrics:
            name = dict(m.resource.attributes).get("host.name")
            if m.name == "node_sockstat_TCP_tw" or (
                m.name == "system.network.connections"
                and ("state", "TIME_WAIT") in m.attributes and styles[name] == "hostmetrics"
            ):
                full[name].append((m.time_ns // 10**6, float(m.value)))
    for h, t in table.items():
        assert list(zip(t.series.t.tolist(), t.series.v.tolist(), strict=True)) == full[h]
        assert t.series.t.size == 24  # every 10 s for 4 min
    on = table["node-1"].series
    assert on.v[(on.t >= sc.start_ns // 10**6 + 75 * S) & (on.t < sc.start_ns // 10**6
                                                            + 180 * S)].min() > 300


def test_registered_baselines_score_like_findings() -> None:
    assert {n for n in accuracy.BASELINES if n.startswith("tw_static_")} == {
        "tw_static_5000_1m", "tw_static_1000_10m", "tw_static_20000_2m"}
    sc = build_scenario("healthy", seed=2, duration="10m", rate=20, extra_faults=[
        # 20 x (20/s x 0.95 / 2 instances) ~ 190 closes/s: ~11,400 in TIME_WAIT
        "time_wait_buildup:node-4/cart>redis:2m:5m:20",
    ])
    truth = scoring.LabelSet.from_lines(label_lines(sc))
    kind, alerts = accuracy.BASELINES["tw_static_5000_1m"](sc)
    assert kind == "time_wait_buildup" and [e for e, _ in alerts] == [{"host": "node-4"}]
    delay = (alerts[0][1] - sc.start_ns) / NS - 120
    assert 60 < delay <= 60 + 30 + 15  # above 5000 within ~30 s, then 'for' and the interval
    s = scoring.score_rule("tw_static_5000_1m", kind, alerts, truth).to_dict()
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0)
    assert accuracy.BASELINES["tw_static_20000_2m"](sc)[1] == []  # the plateau stays below

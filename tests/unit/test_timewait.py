"""TIME_WAIT buildup on golden host series (``tests.support.tcp``): what must be found, what
must not (traffic spikes, the daily curve, reconnect storms), time to exhaustion, attribution,
the inputs it reads, its bounds and its state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from pipeline import connections as conn
from pipeline.detectors.client_calls import OTHER, ClientCallCounter
from pipeline.detectors.timewait import COUNT_GAUGE, KIND, TTE_GAUGE, TimeWaitDetector
from pipeline.findings import Finding
from pipeline.records import (
    HostCalls,
    MetricPoint,
    Resource,
    Span,
    point_partition,
)
from pipeline.settings import ConfigError, Settings
from tests.support import tcp
from tests.support.tcp import T0, S, const, step

PORTS = 28_232


def run(
    batches: Sequence[Sequence[MetricPoint]],
    det: TimeWaitDetector | None = None,
    calls: Sequence[HostCalls] = (),
) -> tuple[list[Finding], TimeWaitDetector]:
    """Feed scrapes in order (calls of a minute once it is over, as the span stage sends
    them), advancing the watermark 5 s behind the newest point."""
    d = det or TimeWaitDetector()
    pending = sorted(calls, key=lambda c: c.minute_ns)
    out: list[Finding] = []
    for batch in batches:
        t = max(p.time_ns for p in batch)
        while pending and pending[0].minute_ns + 70 * S <= t:
            d.update_side([pending.pop(0)])
        d.update(batch)
        out += d.advance(t - 5 * S)
    return out, d


def firing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "firing"]


def at_s(ns: int) -> float:
    return (ns - T0) / S


# -- what must be found --------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["hostmetrics", "node"])
def test_lost_reuse_is_found_within_two_minutes(style: str) -> None:
    found, _ = run(tcp.host_batches(25, closes=step(1.5, 30.0, 600, 1200), style=style))
    fired = firing(found)
    assert len(fired) == 1
    f = fired[0]
    assert f.kind == KIND and f.entity == {"host": "node-9"}
    assert 600 < at_s(f.detected_at_ns) <= 720
    ev = f.evidence
    assert 1500 <= ev["time_wait"] <= 2100  # ~60 s x 30 closes/s
    assert ev["baseline_time_wait"] < 150 and ev["expected_time_wait"] < 200
    assert ev["time_to_exhaustion_s"] is None  # 1,800 sockets level off far under 28,232
    assert ev["plateau_share_of_ports"] < 0.1 and f.severity == "warning"
    if style == "node":  # the open rate is read from ActiveOpens
        assert 25 <= ev["open_rate_per_s"] <= 35
        assert 50 <= ev["time_wait_per_open_rate_s"] <= 75
    text = " ".join(f.next_steps)
    assert "ss -Htan state time-wait" in text and "tcp_tw_reuse" in text
    resolved = [x for x in found if x.status == "resolved"]
    assert len(resolved) == 1 and 1260 <= at_s(resolved[0].resolved_at_ns) <= 1420


def test_a_small_loss_of_reuse_is_found_as_info() -> None:
    """2.5 extra closes/s (TIME_WAIT ~90 -> ~240): reuse is lost, the ports are far from
    running out: a finding to look at, not a page."""
    found, _ = run(tcp.host_batches(20, closes=step(1.5, 4.0, 600)))
    f = firing(found)[0]
    assert f.severity == "info" and f.evidence["plateau_share_of_ports"] < 0.05


def test_state_values_in_any_case() -> None:
    found, _ = run(tcp.host_batches(20, closes=step(1.5, 30.0, 600), state_case="lower"))
    assert len(firing(found)) == 1


def test_steady_growth_gives_time_to_exhaustion_within_20_percent() -> None:
    """Reuse lost progressively: closes/s rise linearly to 600 over 30 minutes. TIME_WAIT holds
    the last 60 s of closes, so the ports run out when that sum reaches 28,232."""
    ramp_start, ramp_s, top = 600.0, 1800.0, 600.0

    def closes(t: float) -> float:
        return 1.5 + top * min(max(t - ramp_start, 0.0), ramp_s) / ramp_s

    exhausted = next(  # the first second whose last 60 s of closes fill the range
        t for t in range(int(ramp_start), 4000)
        if sum(closes(s) for s in range(t - 59, t + 1)) >= PORTS
    )
    found, _ = run(tcp.host_batches(40, closes=closes))
    first = firing(found)[0]
    truth = exhausted - at_s(first.detected_at_ns)
    est = first.evidence["time_to_exhaustion_s"]
    assert est is not None and truth > 600
    assert abs(est - truth) / truth <= 0.2
    assert first.severity == ("critical" if est <= 3600 else "warning")


def test_a_step_gives_no_time_to_exhaustion_even_with_a_short_sustain() -> None:
    """Opened while TIME_WAIT is still in the 60 s climb that follows a step up in the close
    rate: that climb is not a growing close rate (found with real sockets)."""
    d = TimeWaitDetector(sustain_s=20)
    f = firing(run(tcp.host_batches(20, closes=step(1.5, 100.0, 600)), d)[0])[0]
    assert f.evidence["time_to_exhaustion_s"] is None and f.severity == "warning"


def test_the_baseline_follows_a_small_drift_of_the_usual_level() -> None:
    """The usual level goes from ~30 to ~80 sockets (2.7x, but only 50 over): normal, and
    learnt, so that lost reuse later is judged against ~80."""
    closes = lambda t: (0.5 if t < 600 else 1.3) + (30.0 if t >= 1500 else 0.0)  # noqa: E731
    found, _ = run(tcp.host_batches(30, closes=closes))
    f = firing(found)[0]
    assert at_s(f.detected_at_ns) > 1500
    assert 60 <= f.evidence["baseline_time_wait"] <= 100


def test_a_rate_over_the_range_is_critical_at_once() -> None:
    found, _ = run(tcp.host_batches(20, closes=step(1.5, 600.0, 600)))
    f = firing(found)[0]
    assert f.severity == "critical" and f.evidence["plateau_share_of_ports"] > 1
    assert f.evidence["time_to_exhaustion_s"] is not None
    assert f.evidence["time_to_exhaustion_s"] < 60


def test_port_range_from_config_and_from_the_sysctl_metric() -> None:
    d = TimeWaitDetector(port_ranges=conn.parse_port_ranges("node-9=50000-51999"))
    f = firing(run(tcp.host_batches(20, closes=step(1.5, 40.0, 600)), d)[0])[0]
    assert f.evidence["ephemeral_ports"] == 2000
    assert f.evidence["ephemeral_ports_from"] == "PORT_RANGES"
    assert f.evidence["plateau_share_of_ports"] > 1 and f.severity == "critical"

    batches = tcp.host_batches(20, closes=step(1.5, 40.0, 600), style="node")
    res = batches[0][0].resource
    for b in batches:
        t = b[0].time_ns
        b += [MetricPoint(conn.NODE_PORTS, "gauge", "", 0, False, t, 0, v, {"index": i}, res)
              for i, v in (("0", 10000.0), ("1", 11999.0))]
    f = firing(run(batches)[0])[0]
    assert f.evidence["ephemeral_ports"] == 2000
    assert f.evidence["ephemeral_ports_from"] == conn.NODE_PORTS


# -- what must not be found ----------------------------------------------------------------------
def test_traffic_spike_with_proportional_time_wait_is_not_a_finding() -> None:
    """3x traffic for 6 minutes: pools grow (ESTABLISHED x3) and churn with it (closes x3)."""
    spike = step(1.0, 3.0, 900, 1260)
    found, _ = run(tcp.host_batches(
        30, closes=lambda t: 4.0 * spike(t), established=lambda t: 60.0 * spike(t)))
    assert found == []


def test_the_call_rate_explains_a_spike_that_established_connections_miss() -> None:
    """Short calls through a pool of fixed size: ESTABLISHED stays flat while calls and
    churn quadruple. Judged on ESTABLISHED alone this would fire; the client spans say why
    not."""
    spike = step(1.0, 4.0, 900, 1260)
    batches = tcp.host_batches(30, closes=lambda t: 10.0 * spike(t))
    alone, _ = run(batches)
    assert len(firing(alone)) == 1
    with_calls, _ = run(batches, calls=tcp.calls(30, lambda t: 100.0 * spike(t)))
    assert with_calls == []


def test_calls_far_ahead_of_the_samples_are_held_for_them() -> None:
    """Reading a backlog, the span stage can finish long before the metrics stage starts: the
    host's calls for the whole hour arrive before its first sample. They are held for the
    samples, so the spike is judged exactly as when both stages keep pace."""
    spike = step(1.0, 4.0, 3000, 3360)
    batches = tcp.host_batches(75, closes=lambda t: 10.0 * spike(t))
    calls = tcp.calls(75, lambda t: 100.0 * spike(t))
    paced, _ = run(batches, calls=calls)
    assert paced == []
    ahead = TimeWaitDetector()
    ahead.update_side(calls)
    found, ahead = run(batches, ahead)
    assert found == []
    assert ahead.stats().evicted["calls_dropped"] == 0


def test_calls_too_far_ahead_are_dropped_and_their_samples_not_judged() -> None:
    """Past ``calls_ahead_s`` the calls are dropped (counted). The samples they would have
    served are not judged on the connections alone (that would fire on the spike the calls
    explain); they are counted."""
    spike = step(1.0, 4.0, 3000, 3360)
    batches = tcp.host_batches(75, closes=lambda t: 10.0 * spike(t))
    calls = tcp.calls(75, lambda t: 100.0 * spike(t))
    det = TimeWaitDetector(calls_ahead_s=1800)
    det.update_side(calls)
    found, det = run(batches, det)
    counts = det.stats().evicted
    assert found == []
    assert counts["calls_dropped"] > 0 and counts["calls_unknown"] > 0
    alone, _ = run(batches, TimeWaitDetector(calls_ahead_s=1800))  # no calls at all: judged
    assert len(firing(alone)) == 1


def test_daily_curve_is_not_a_finding() -> None:
    """Load swinging +-60% (compressed to a 1-hour period) moves TIME_WAIT and ESTABLISHED
    together."""
    def load(t: float) -> float:
        return 1.0 + 0.6 * math.sin(2 * math.pi * t / 3600)

    found, _ = run(tcp.host_batches(
        130, closes=lambda t: 6.0 * load(t), established=lambda t: 80.0 * load(t)))
    assert found == []


@pytest.mark.parametrize("storm_s", [20, 40, 50])
def test_reconnect_storm_that_recovers_is_not_a_finding(storm_s: int) -> None:
    """After a deploy every client reopens its pool: a burst of closes for tens of seconds,
    drained 60 s later."""
    found, _ = run(tcp.host_batches(20, closes=step(1.5, 60.0, 600, 600 + storm_s)))
    assert found == []


def test_nothing_before_the_baseline_is_learnt() -> None:
    found, _ = run(tcp.host_batches(8, closes=step(1.5, 30.0, 60)))
    assert found == []


# -- attribution ---------------------------------------------------------------------------------
def test_attribution_names_the_client_whose_call_rate_matches_the_extra_closes() -> None:
    batches = tcp.host_batches(20, closes=step(1.5, 29.5, 600))
    calls = [
        *tcp.calls(20, const(28.0), service="catalog", destination="redis"),
        *tcp.calls(20, const(6.0), service="catalog", destination="postgres"),
        *tcp.calls(20, const(90.0), service="frontend", destination="catalog"),
    ]
    f = firing(run(batches, calls=calls)[0])[0]
    ev = f.evidence
    assert ev["candidates"][0]["service"] == "catalog"
    assert ev["candidates"][0]["destination"] == "redis"
    assert 0.8 <= ev["candidates"][0]["extra_closes_per_call"] <= 1.2
    assert ev["top_services"][0] == "catalog" and ev["top_destinations"][0] == "redis"
    assert "one new connection per call" in ev["likely_cause"]
    assert "catalog" in " ".join(f.next_steps) and "redis" in f.summary


def test_calls_that_arrive_after_the_finding_opened_amend_it() -> None:
    """Replaying a backlog, the span stage runs behind the metrics: the finding opens unnamed
    and is published again, same id, once the client calls of its minutes are in."""
    batches = tcp.host_batches(16, closes=step(1.5, 29.5, 600))
    found, d = run(batches)
    assert [f.status for f in found] == ["firing"]
    d.update_side(tcp.calls(16, const(28.0), service="catalog", destination="redis"))
    amended = d.advance(max(p.time_ns for p in batches[-1]) - 5 * S)
    assert len(amended) == 1 and amended[0].id == found[0].id
    assert amended[0].status == "firing" and amended[0].severity == found[0].severity
    assert amended[0].evidence["candidates"][0]["service"] == "catalog"
    assert "catalog -> redis" in amended[0].summary
    assert d.advance(max(p.time_ns for p in batches[-1])) == []  # once


def test_clients_with_similar_call_rates_are_all_named() -> None:
    """Two clients whose call rates both match the extra closes: the spans cannot tell them
    apart, so the summary and the next steps name both (ss by peer tells)."""
    batches = tcp.host_batches(20, closes=step(1.5, 11.5, 600))
    calls = [
        *tcp.calls(20, const(10.0), service="frontend", destination="cart"),
        *tcp.calls(20, const(10.8), service="frontend", destination="catalog"),
        *tcp.calls(20, const(40.0), service="frontend", destination="users"),
    ]
    f = firing(run(batches, calls=calls)[0])[0]
    assert "frontend -> cart" in f.summary and "frontend -> catalog" in f.summary
    assert "users" not in f.summary
    assert [c["tied"] for c in f.evidence["candidates"]][:3] == [True, True, False]
    assert "cart" in f.next_steps[1] and "catalog" in f.next_steps[1]


def test_churn_no_traced_client_can_explain_is_put_on_an_untraced_process() -> None:
    """The real corpus's case: an untraced client churning ~230 connections a second while
    the host's only traced client makes 7 calls a second (it would need 30 per call)."""
    batches = tcp.host_batches(20, closes=step(1.5, 230.0, 600))
    calls = tcp.calls(20, const(7.0), service="frontend", destination="127.0.0.1")
    f = firing(run(batches, calls=calls)[0])[0]
    assert "likely a process without traces" in f.summary
    assert "frontend" not in f.summary
    assert f.evidence["likely_cause"].startswith("no traced client explains")
    assert f.evidence["candidates"][0]["extra_closes_per_call"] > 8


def test_attribution_says_pool_too_small_when_connections_last_a_few_calls() -> None:
    batches = tcp.host_batches(20, closes=step(1.5, 31.5, 600))
    calls = tcp.calls(20, const(150.0), service="api", destination="postgres")
    ev = firing(run(batches, calls=calls)[0])[0].evidence
    assert "pool too small" in ev["likely_cause"]


def test_without_client_spans_the_cause_is_unknown_and_says_why() -> None:
    ev = firing(run(tcp.host_batches(20, closes=step(1.5, 30.0, 600)))[0])[0].evidence
    assert ev["candidates"] == [] and ev["likely_cause"].startswith("unknown")


# -- inputs ---------------------------------------------------------------------------------------
def test_classify() -> None:
    c = conn.classify
    assert c("system.network.connections", {"protocol": "tcp", "state": "TIME-WAIT"}) == "tw"
    assert c("system.network.connections", {"protocol": "tcp", "state": "Established"}) == "est"
    assert c("system.network.connections", {"protocol": "tcp", "state": "LISTEN"}) is None
    assert c("node_sockstat_TCP_tw", {}) == "tw"
    assert c("node_netstat_Tcp_ActiveOpens", {}) == "opens"
    assert c("node_sysctl_net_ipv4_ip_local_port_range", {"value": "low"}) == "plo"
    assert c("system.cpu.time", {}) is None


def test_host_identity_and_routing() -> None:
    hm = Resource("unknown_service", "node-3", "node-3", "", {})
    ne = Resource("node", "node-3:9100", "", "", {"server.address": "node-3"})
    scraped = Resource("node", "10.0.0.7:9100", "", "", {})
    app = Resource("api", "3f2b", "", "", {})
    assert conn.host_of(hm) == conn.host_of(ne) == "node-3"
    assert conn.host_of(scraped) == "10.0.0.7" and conn.host_of(app) == ""

    def point(name: str, res: Resource) -> MetricPoint:
        return MetricPoint(name, "gauge", "", 0, False, T0, 0, 1.0, {}, res)

    parts = {point_partition(point(n, r), 64) for n, r in (
        ("system.network.connections", hm), ("node_sockstat_TCP_tw", ne),
        ("node_netstat_Tcp_ActiveOpens", ne))}
    assert len(parts) == 1


def test_one_emitter_per_host_is_read() -> None:
    """hostmetrics and node_exporter on one host report the same count: not summed."""
    both = [a + b for a, b in zip(
        tcp.host_batches(20, closes=step(1.5, 30.0, 600)),
        tcp.host_batches(20, closes=step(1.5, 30.0, 600), style="node"), strict=True)]
    found, d = run(both)
    f = firing(found)[0]
    assert f.evidence["time_wait"] < 2200  # one count of ~1,800, not two
    assert d.stats().evicted["other_sources"] > 0


def test_per_destination_breakdown_is_used_where_sent() -> None:
    batches = tcp.host_batches(20, closes=step(1.5, 30.0, 600))
    for b in batches:
        tw = next(p for p in b if p.attrs.get("state") == "TIME_WAIT")
        tw.attrs = {**tw.attrs, "server.address": "redis"}
        b.append(MetricPoint(tw.name, tw.type, tw.unit, tw.temporality, False, tw.time_ns,
                             tw.start_ns, 3.0, {"protocol": "tcp", "state": "TIME_WAIT",
                                                "server.address": "postgres"}, tw.resource))
    ev = firing(run(batches)[0])[0].evidence
    assert ev["top_destinations"][0]["destination"] == "redis"
    assert ev["top_destinations"][1] == {"destination": "postgres", "time_wait": 3}


def test_port_range_config_errors() -> None:
    assert conn.parse_port_ranges("") == {}
    with pytest.raises(ValueError, match="32768-60999"):
        conn.parse_port_ranges("60999-32768")
    with pytest.raises(ConfigError, match="TIME_WAIT_PORT_RANGES"):
        Settings(time_wait_port_ranges="node-1=abc").validate()
    with pytest.raises(ConfigError, match="TIME_WAIT_FACTOR"):
        Settings(time_wait_factor=1.0).validate()


# -- bounds, state, metrics ------------------------------------------------------------------------
def test_late_points_are_counted_not_folded() -> None:
    batches = tcp.host_batches(3)
    _, d = run(batches)
    d.update(batches[1])
    # TIME_WAIT and ESTABLISHED: the other states and UDP are not read at all
    assert d.stats().evicted["late_points"] == 2


def test_hosts_are_capped_and_expire() -> None:
    d = TimeWaitDetector(max_hosts=2, host_ttl_s=600)
    merged = [a + b + c for a, b, c in zip(
        tcp.host_batches(5, host="a"), tcp.host_batches(5, host="b"),
        tcp.host_batches(5, host="c"), strict=True)]
    run(merged, d)
    assert d.stats().tracked == 2 and d.stats().evicted["evicted_hosts"] > 0
    evicted = d.stats().evicted["evicted_hosts"]
    late = tcp.host_batches(30, host="d")[-5:]  # 25 minutes later: one makes room, one expires
    run(late, d)
    st = d.stats()
    assert st.tracked == 1 and st.evicted["evicted_hosts"] == evicted + 1
    assert st.evicted["expired_hosts"] == 1


def test_gauges_while_firing() -> None:
    _, d = run(tcp.host_batches(12, closes=step(1.5, 600.0, 600)))
    st = d.stats()
    labels = (("host", "node-9"),)
    assert st.active == {(KIND, "critical"): 1}
    assert st.gauges[(COUNT_GAUGE, labels)] > 10_000
    assert (TTE_GAUGE, labels) in st.gauges
    assert [(k, s, e) for k, s, _, e in st.firing] == [(KIND, "critical", {"host": "node-9"})]


def test_snapshot_restore_mid_buildup_with_calls() -> None:
    batches = tcp.host_batches(20, closes=step(1.5, 29.5, 600))
    calls = tcp.calls(20, const(28.0), service="catalog", destination="redis")
    whole, _ = run(batches, calls=calls)
    first, d = run(batches[:62], calls=[c for c in calls if c.minute_ns + 70 * S <= T0 + 610 * S])
    resumed = TimeWaitDetector()
    resumed.restore(orjson.loads(orjson.dumps(d.snapshot())))
    rest, _ = run(batches[62:], resumed, [c for c in calls if c.minute_ns + 70 * S > T0 + 610 * S])
    assert [f.to_dict() for f in first + rest] == [f.to_dict() for f in whole]


# -- client calls (the span side) -----------------------------------------------------------------
def _client(t_s: float, service: str, dest: str, host: str = "node-1", kind: int = 3) -> Span:
    res = Resource(service, f"{service}-1", host, "", {})
    t = T0 + int(t_s * S)
    return Span("a" * 32, f"{int(t_s * 1000):016x}", "", "GET", kind, t, t + S // 100, 0,
                {"server.address": dest}, res)


def _drive(c: ClientCallCounter, spans: list[Span], wm_s: float) -> list[Any]:
    c.update(spans)
    c.advance(T0 + int(wm_s * S))
    return c.drain()


def test_client_calls_are_counted_per_host_minute_service_and_destination() -> None:
    c = ClientCallCounter()
    spans = [_client(i * 0.5, "catalog", "redis") for i in range(240)]  # 2 minutes, 2/s
    spans += [_client(10, "catalog", "redis", host="node-2"), _client(11, "web", "", kind=2)]
    out = _drive(c, spans, 65)
    assert out == [HostCalls("node-1", T0, "catalog", "redis", 120),
                   HostCalls("node-2", T0, "catalog", "redis", 1)]
    assert _drive(c, [_client(30, "catalog", "redis")], 125) == [
        HostCalls("node-1", T0, "catalog", "redis", 1),  # late: sent again, receiver adds
        HostCalls("node-1", T0 + 60 * S, "catalog", "redis", 120),
    ]
    assert c.stats().tracked == 0


def test_client_call_pairs_are_capped() -> None:
    c = ClientCallCounter(max_pairs=2)
    out = _drive(c, [_client(i, "api", f"d{i}") for i in range(5)], 61)
    assert [(x.destination, x.calls) for x in out] == [(OTHER, 3), ("d0", 1), ("d1", 1)]
    assert c.stats().evicted["folded_pairs"] == 3


def test_side_input_is_ignored_by_detectors_that_do_not_use_it() -> None:
    d = TimeWaitDetector()
    d.update_side(["not a HostCalls"])
    assert d.stats().tracked == 0



def test_which_of_two_emitters_arrives_first_changes_nothing() -> None:
    """hostmetrics and node_exporter both report the host (from different input partitions):
    the one read is chosen in event time, when a sample is folded, not by arrival."""
    from tests.support import tcp as T

    hm = T.host_batches(20, closes=T.step(1.5, 30.0, 600), host="node-3")
    ne = T.host_batches(20, closes=T.step(1.5, 30.0, 600), style="node_exporter",
                        host="node-3", seed=2)

    def run(first_ne: bool) -> tuple[list, dict]:
        d = TimeWaitDetector()
        out = []
        for a, b in zip(hm, ne, strict=True):
            for batch in ((b, a) if first_ne else (a, b)):
                d.update(batch)
            out += d.advance(a[0].time_ns - 5 * 10**9)
        return [f.to_dict() for f in out], d.stats().evicted

    (x, ex), (y, ey) = run(False), run(True)
    assert x == y and x
    assert ex["other_sources"] == ey["other_sources"] > 0


def test_samples_waiting_for_a_stalled_span_stage_are_bounded_and_counted() -> None:
    """The span stage never gets past the start: the host's samples wait for its client
    calls, but no more than MAX_PENDING_SAMPLES of them; the oldest are judged without."""
    from pipeline.detectors.timewait import MAX_PENDING_SAMPLES

    det = TimeWaitDetector()
    det.side_watermark_ns = T0
    batches = tcp.host_batches(90, closes=step(1.5, 30.0, 600, 1200))
    found, det = run(batches, det)
    held = sum(len(h.pending) for _, h in det._hosts.items())
    assert held == MAX_PENDING_SAMPLES
    # The first sample (at T0, not after the side watermark) was judged in the usual way.
    assert det.stats().evicted["side_wait_exceeded"] == len(batches) - 1 - MAX_PENDING_SAMPLES
    assert firing(found)  # the judged ones still find the buildup

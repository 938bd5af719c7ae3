"""Trace assembly and the bottleneck detector, on seeded streams (tests/support/traces.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline.detectors.bottleneck import (
    EXCESS_GAUGE,
    RATIO_GAUGE,
    BottleneckDetector,
    quantile,
)
from pipeline.detectors.trace_assembly import CALLEE, INBOUND, TraceAssembler
from pipeline.findings import Finding, fingerprint
from pipeline.records import Span, TraceSample, decode_samples_wire, encode_samples
from tests.support import traces
from tests.support.traces import MS, T0, S

SLOW_QUERY = ("api", "SELECT users")


def run(d: Any, batches: list[list[Any]], lateness_s: float = 5) -> list[Finding]:
    out: list[Finding] = []
    for batch in batches:
        d.update(batch)
        out += d.advance(max(r.event_time_ns for r in batch) - int(lateness_s * S))
    return out


def minute(ns: int) -> float:
    return (ns - T0) / S / 60


def slow(target: tuple[str, str], ms: float, start: float = 15, end: float = 20) -> Callable:
    return lambda s, o, m: ms if (s, o) == target and start <= m < end else 0.0


# -- trace assembly ---------------------------------------------------------------------------
def test_assembles_traces_split_across_batches() -> None:
    asm = TraceAssembler()
    batches = traces.span_batches(minutes=2, per_s=4)
    out: list[TraceSample] = []
    for b in batches:
        asm.update(b)
        asm.advance(max(s.end_ns for s in b) - 5 * S)
        out += asm.drain()
    n_traces = 2 * 60 * 4
    by_trace: dict[str, list[TraceSample]] = {}
    for sample in out:
        by_trace.setdefault(sample.trace_id, []).append(sample)
    # Every trace completed except the last quiet period's, each once, one sample per service.
    assert n_traces - 4 * 11 <= len(by_trace) < n_traces
    assert all(sorted(s.service for s in v) == ["api", "web"] for v in by_trace.values())
    sample = next(s for s in out if s.service == "api")
    ops = {o.operation: o for o in sample.ops}
    assert set(ops) == {"GET /users/{id}", "SELECT users", "render", INBOUND}
    assert ops["SELECT users"].attrs == {"db.system": "postgresql", "db.name": "users"}
    assert ops["SELECT users"].cp_ns == ops["SELECT users"].self_ns > 3 * MS
    # web's calls into api, outside api's server span, travel with api's sample
    web = next(s for s in out if s.service == "web" and s.trace_id == sample.trace_id)
    call = next(o for o in web.ops if o.attrs.get(CALLEE) == "api")
    inbound = ops[INBOUND]
    assert (inbound.detail, inbound.attrs) == ("web", {"caller.service": "web"})
    assert (inbound.cp_ns, inbound.self_ns, inbound.spans) == (call.cp_ns, call.self_ns,
                                                               call.spans)
    assert not any(o.operation == INBOUND for o in web.ops)  # nobody calls web
    assert asm.stats().evicted["no_root"] == 0
    assert asm.stats().tracked > 0  # the newest traces are still waiting for quiet


def test_trace_waits_for_its_root_and_counts_what_it_cannot_use() -> None:
    asm = TraceAssembler(quiet_s=5, max_age_s=30)
    rng = random.Random(1)
    spans = traces.shop_trace(rng, T0)
    root = next(s for s in spans if not s.parent_id)
    asm.update([s for s in spans if s is not root])
    asm.advance(T0 + 20 * S)
    assert asm.drain() == []  # no root yet: still open
    asm.update([root])
    asm.advance(T0 + 25 * S)
    assert {s.service for s in asm.drain()} == {"api", "web"}
    asm.update([spans[0]])  # a straggler of the completed trace
    orphan = traces.shop_trace(rng, T0 + S)[1:2]  # a trace whose root never comes
    asm.update(orphan)
    asm.advance(T0 + 40 * S)
    assert asm.drain() == []
    counts = asm.stats().evicted
    assert counts["late_spans"] == 1 and counts["no_root"] == 1


class _ScanAssembler(TraceAssembler):
    """Completion as a scan of every open trace at every step (the first release's way)."""

    def advance(self, watermark_ns: int) -> list[Any]:
        meta = self._meta
        meta["watermark_ns"] = max(meta["watermark_ns"], watermark_ns)
        if watermark_ns - meta["scanned_ns"] < 100_000_000:
            return []
        meta["scanned_ns"] = watermark_ns
        done = [tid for tid, o in self._open.items()
                if (o.has_root and o.last_ns <= watermark_ns - self.quiet_ns)
                or o.first_ns <= watermark_ns - self.max_age_ns]
        for tid in done:
            self._complete(tid, self._open.pop(tid))
        return []


def test_traces_complete_in_deadline_order_as_a_full_scan_would() -> None:
    """Roots late or missing, spans arriving out of order and late, a restore mid-stream: the
    deadline heap completes the same traces, at the same watermarks, in the same order."""
    rng = random.Random(5)
    spans = [s for i in range(300) for s in traces.shop_trace(rng, T0 + i * S // 3)]
    rng.shuffle(spans)
    spans = [s for s in spans if rng.random() > 0.03]  # some roots never come
    heap, scan = TraceAssembler(quiet_s=2, max_age_s=20), _ScanAssembler(quiet_s=2, max_age_s=20)
    got: list[list[tuple[str, str]]] = []
    want: list[list[tuple[str, str]]] = []
    wm = T0
    for i in range(0, len(spans), 40):
        batch = spans[i:i + 40]
        wm = max(wm, min(s.end_ns for s in batch) - 2 * S)
        for asm, out in ((heap, got), (scan, want)):
            asm.update(batch)
            asm.advance(wm)
            out.append([(t.trace_id, t.service) for t in asm.drain()])
        if i == 800:  # a restart: the heap is rebuilt from the saved open traces
            heap2 = TraceAssembler(quiet_s=2, max_age_s=20)
            heap2.restore(orjson.loads(orjson.dumps(heap.snapshot())))
            heap2._closed = dict(heap._closed)  # (kept in memory, as a worker that goes on)
            heap = heap2
    for asm, out in ((heap, got), (scan, want)):
        asm.advance(wm + 60 * S)
        out.append([(t.trace_id, t.service) for t in asm.drain()])
    assert sum(map(len, want)) > 300 and got == want


def test_open_trace_cap_completes_the_oldest_early() -> None:
    asm = TraceAssembler(max_open=3, max_spans=2)
    rng = random.Random(2)
    for i in range(5):
        asm.update(traces.shop_trace(rng, T0 + i * S))
    assert asm.stats().tracked == 3
    counts = asm.stats().evicted
    assert counts["evicted_open"] == 2 and counts["span_cap"] == 5 * 3


def test_samples_round_trip_the_wire() -> None:
    batches = traces.samples(minutes=1)
    data = encode_samples(batches[0], ("t", 3, 9, 0), watermark_ns=T0)
    routed = decode_samples_wire(data)
    assert routed.items == batches[0] and routed.source == ("t", 3, 9, 0)
    assert routed.watermark_ns == T0


# -- bottleneck detector ----------------------------------------------------------------------
def test_slow_query_is_a_bottleneck_with_evidence_and_resolves() -> None:
    d = BottleneckDetector()
    batches = traces.samples(minutes=30, added_ms=slow(SLOW_QUERY, 80))
    out = run(d, batches)
    kinds = [(f.kind, f.status, f.entity["service"], f.entity["operation"]) for f in out]
    assert kinds == [
        ("bottleneck_span", "firing", "api", "SELECT users"),
        ("bottleneck_span", "resolved", "api", "SELECT users"),
    ]
    fired, resolved = out
    assert 15 < minute(fired.detected_at_ns) <= 16.5  # two 30 s windows after the onset
    assert 20 < minute(resolved.resolved_at_ns) <= 22
    ev = fired.evidence
    assert ev["baseline"]["p50_ms"] == pytest.approx(6, rel=0.15)
    assert ev["observed"]["p50_ms"] == pytest.approx(86, rel=0.1)
    assert ev["added_latency_ms_per_trace"] == pytest.approx(80, rel=0.1)
    assert ev["share_of_traces_affected"] > 0.9 and ev["dominant_in_share_of_traces"] > 0.9
    ids = {s.trace_id for b in batches for s in b}
    assert 1 <= len(ev["exemplar_trace_ids"]) <= 5 and set(ev["exemplar_trace_ids"]) <= ids
    assert "← BOTTLENECK" in fired.summary and "SELECT users" in fired.summary
    assert resolved.summary.startswith("Resolved: ") and "BOTTLENECK" not in resolved.summary


def test_a_sub_millisecond_baseline_is_not_rounded_to_zero_in_the_summary() -> None:
    """A 0.4 ms query (and a 2.5 ms one) slowed by 60 ms: the summary's baseline is the
    evidence's, to its significant digits, never "baseline 0 ms"."""
    for base_ms in (0.4, 2.5):
        ops = {"api": [("GET /users/{id}", 4.0), ("SELECT users", base_ms), ("render", 3.0)]}
        out = run(BottleneckDetector(),
                  traces.samples(minutes=30, services=ops, added_ms=slow(SLOW_QUERY, 60)))
        fired = out[0]
        baseline = fired.evidence["baseline"]["p50_ms"]
        assert baseline == pytest.approx(base_ms, rel=0.2)
        assert f"(baseline {baseline:g} ms," in fired.summary
        assert "baseline 0 ms" not in fired.summary


# Two callers into one callee: each caller's call, and the callee's copy of it (the calls'
# time outside the callee's server span, from trace assembly).
CALLERS = {
    "frontend": [("GET /", 5.0), ("GET|catalog:80", 2.0)],
    "orders": [("POST /order", 6.0), ("GET|catalog:80", 2.0)],
    "catalog": [("GET /item", 8.0), (f"{INBOUND}|frontend", 2.0), (f"{INBOUND}|orders", 2.0)],
}


def between(callers: set[str], ms: float) -> Callable:
    """``ms`` more between ``callers`` and catalog from minute 15 to 20 (a slow proxy)."""
    def added(service: str, op: str, m: float) -> float:
        hit = (op == "GET|catalog:80" and service in callers) or (
            service == "catalog" and op.partition("|")[2] in callers)
        return ms if hit and 15 <= m < 20 else 0.0
    return added


def test_several_callers_slow_into_one_callee_name_the_callee() -> None:
    out = run(BottleneckDetector(), traces.samples(minutes=30, per_s=3, services=CALLERS,
                                                   added_ms=between({"frontend", "orders"}, 150)))
    callee = [f for f in out if f.entity.get("service") == "catalog"]
    assert [(f.status, f.entity) for f in callee] == [
        ("firing", {"service": "catalog", "operation": INBOUND}),
        ("resolved", {"service": "catalog", "operation": INBOUND}),
    ]
    fired = callee[0]
    assert 15 < minute(fired.detected_at_ns) <= 16.5
    ev = fired.evidence
    assert sorted(c["service"] for c in ev["callers"]) == ["frontend", "orders"]
    assert all(c["added_ms"] == pytest.approx(150, rel=0.1) for c in ev["callers"])
    assert ev["downstream"] == {"service": "catalog", "callee_instrumented": True,
                                "time": "between"}
    assert ev["added_latency_ms_per_trace"] == pytest.approx(150, rel=0.1)
    assert 1 <= len(ev["exemplar_trace_ids"]) <= 5
    assert "catalog: calls into it from 2 services slow at once" in fired.summary
    # each caller's call stands on its own too; catalog's own operation is not slower, and
    # its callers' time is never its latency_regression
    firing = {(f.kind, f.entity["service"], f.entity["operation"])
              for f in out if f.status == "firing"}
    assert firing == {("bottleneck_span", "catalog", INBOUND),
                      ("bottleneck_span", "frontend", "GET"), ("bottleneck_span", "orders", "GET")}


def test_one_slow_caller_does_not_blame_the_callee() -> None:
    out = run(BottleneckDetector(), traces.samples(minutes=30, per_s=3, services=CALLERS,
                                                   added_ms=between({"frontend"}, 150)))
    assert {(f.entity["service"], f.entity["operation"]) for f in out} == {("frontend", "GET")}


def test_excess_gauge_while_firing() -> None:
    d = BottleneckDetector()
    run(d, traces.samples(minutes=17, added_ms=slow(SLOW_QUERY, 80)))
    st = d.stats()
    assert st.active == {("bottleneck_span", "warning"): 1}
    ((name, labels), value), = st.gauges.items()
    assert name == EXCESS_GAUGE
    assert dict(labels) == {"service_name": "api", "operation": "SELECT users"}
    assert value == pytest.approx(0.08, rel=0.1)
    ((kind, severity, fp, entity),) = st.firing
    assert (kind, severity, entity) == (
        "bottleneck_span", "warning", {"service": "api", "operation": "SELECT users"}
    )
    assert fp == fingerprint("bottleneck_span", entity)


def test_small_or_off_path_slowdowns_are_not_bottlenecks() -> None:
    # +1.5 ms on a 6 ms query: under the 50% relative threshold.
    assert run(BottleneckDetector(), traces.samples(minutes=25,
                                                   added_ms=slow(SLOW_QUERY, 1.5))) == []


def test_service_wide_slowdown_is_one_latency_regression() -> None:
    d = BottleneckDetector()
    fault = lambda s, o, m: 2.0 if s == "api" and 15 <= m < 20 else 1.0  # noqa: E731
    out = run(d, traces.samples(minutes=30, fault=fault))
    assert {(f.kind, f.status, tuple(f.entity.items())) for f in out} == {
        ("latency_regression", "firing", (("service", "api"),)),
        ("latency_regression", "resolved", (("service", "api"),)),
    }
    fired = out[0]
    assert fired.evidence["operations_slower"] == fired.evidence["operations_evaluated"] == 3
    assert fired.evidence["median_ratio_to_baseline"] == pytest.approx(2, rel=0.15)


def test_regression_ratio_gauge_while_firing() -> None:
    d = BottleneckDetector()
    fault = lambda s, o, m: 2.0 if s == "api" and m >= 15 else 1.0  # noqa: E731
    run(d, traces.samples(minutes=19, fault=fault))
    st = d.stats()
    assert st.active == {("latency_regression", "warning"): 1}
    assert st.gauges == {(RATIO_GAUGE, (("service_name", "api"),)): pytest.approx(2, rel=0.15)}
    assert [(k, e) for k, _, _, e in st.firing] == [("latency_regression", {"service": "api"})]


def test_everything_slower_gives_no_bottleneck() -> None:
    # web's operations 1.5x slower together: 10 + 1 + 5 ms -> ~8 ms added per trace.
    fault = lambda s, o, m: 1.5 if 15 <= m < 20 else 1.0  # noqa: E731
    out = run(BottleneckDetector(regression_min_added_ms=5.0),
              traces.samples(minutes=30, fault=fault))
    assert out and {f.kind for f in out} == {"latency_regression"}
    firing = next(f for f in out if f.status == "firing")
    ops = firing.evidence["slowest_operations"]
    assert firing.evidence["added_ms_per_trace"] == pytest.approx(
        sum(o["added_ms"] for o in firing.evidence["slowest_operations"]), abs=0.01)
    assert all(o["observed_p50_ms"] > o["baseline_p50_ms"] > 0 for o in ops)
    # The same slowdown under an absolute size of 10 ms added per trace: nothing.
    assert run(BottleneckDetector(regression_min_added_ms=10.0),
               traces.samples(minutes=30, fault=fault)) == []


def test_small_operations_slowing_together_are_not_the_whole_service() -> None:
    # web's 1 ms and 5 ms operations twice as slow (2 of its 3 operations, +6 ms per trace):
    # they carry 6 of its 16 ms, under half, so the service as a whole is not slower.
    fault = lambda s, o, m: (  # noqa: E731
        2.0 if s == "web" and o != "GET /checkout" and 15 <= m < 20 else 1.0)
    out = run(BottleneckDetector(), traces.samples(minutes=30, fault=fault))
    assert [f for f in out if f.kind == "latency_regression"] == []
    # The 10 ms and 1 ms ones (11 of 16 ms): a regression, whose evidence says that share.
    fault = lambda s, o, m: (  # noqa: E731
        2.0 if s == "web" and o != "encode" and 15 <= m < 20 else 1.0)
    out = run(BottleneckDetector(), traces.samples(minutes=30, fault=fault))
    firing = [f for f in out if f.kind == "latency_regression" and f.status == "firing"]
    assert [f.entity for f in firing] == [{"service": "web"}]
    assert firing[0].evidence["slower_share_of_baseline_ms"] == pytest.approx(11 / 16, abs=0.06)


def test_regression_with_an_operation_of_zero_baseline() -> None:
    # A cache read under the clock's resolution (0 ns) that takes 1 ms while the service's
    # other operations are twice as slow: a regression (its ratio counts 0 ns as 1 ns).
    svc = {"api": [("GET /users/{id}", 6.0), ("render", 4.0), ("cache get", 0.0)]}
    fault = lambda s, o, m: 2.0 if 15 <= m < 20 else 1.0  # noqa: E731
    added = lambda s, o, m: 1.0 if o == "cache get" and 15 <= m < 20 else 0.0  # noqa: E731
    d = BottleneckDetector()
    out = run(d, traces.samples(minutes=30, fault=fault, added_ms=added, services=svc))
    firing = [f for f in out if f.status == "firing"]
    assert [(f.kind, f.entity) for f in firing] == [("latency_regression", {"service": "api"})]
    assert firing[0].evidence["operations_slower"] == 3
    assert d.stats().counters.get("errors", 0) == 0


def test_no_verdict_during_warm_up() -> None:
    out = run(BottleneckDetector(), traces.samples(minutes=12, added_ms=slow(SLOW_QUERY, 80,
                                                                             start=5)))
    assert out == []  # 20 windows (10 min) of baseline are needed first


def test_healthy_noise_stays_quiet() -> None:
    for seed in range(3):
        assert run(BottleneckDetector(), traces.samples(minutes=40, seed=seed)) == []


def test_lasting_fault_freezes_the_baseline() -> None:
    d = BottleneckDetector(freeze_max_windows=1000)
    run(d, traces.samples(minutes=60, added_ms=slow(SLOW_QUERY, 80, start=15, end=60)))
    assert d.stats().active  # 45 minutes in, still firing: the fault was not learnt as normal


def test_restored_detector_finishes_the_same() -> None:
    batches = traces.samples(minutes=25, added_ms=slow(SLOW_QUERY, 80))
    whole = [f.to_dict() for f in run(BottleneckDetector(), batches)]
    first = BottleneckDetector()
    out = [f.to_dict() for f in run(first, batches[:95])]
    state = orjson.loads(orjson.dumps(first.snapshot()))
    second = BottleneckDetector()
    second.restore(state)
    out += [f.to_dict() for f in run(second, batches[95:])]
    assert out == whole and whole


def test_operation_cap_evicts_idle_operations_and_counts() -> None:
    d = BottleneckDetector(max_operations=4)
    run(d, traces.samples(minutes=2))
    st = d.stats()
    assert st.tracked == 4 and st.evicted["evicted_operations"] > 0


def test_operations_expire() -> None:
    d = BottleneckDetector(operation_ttl_s=120)
    run(d, traces.samples(minutes=2))
    later = traces.samples(minutes=1)[0]
    for s in later:
        s.end_ns += 10 * 60 * S
        s.service = "other"
    run(d, [later])
    d.advance(T0 + 690 * S)
    st = d.stats()
    assert st.evicted["expired_operations"] == 6  # web's and api's, idle for 10 minutes
    assert st.tracked == 5  # other's (two services' operations, one name shared)


def test_late_samples_are_counted() -> None:
    d = BottleneckDetector()
    batches = traces.samples(minutes=3)
    run(d, batches)
    d.update(batches[0])
    assert d.stats().evicted["late_samples"] == len(batches[0])


def test_database_next_steps_are_read_only() -> None:
    d = BottleneckDetector()
    batches = traces.samples(minutes=17, added_ms=slow(SLOW_QUERY, 80))
    for b in batches:
        for s in b:
            for o in s.ops:
                if o.operation == "SELECT users":
                    o.attrs = {"db.system": "postgresql", "db.name": "users"}
    fired = run(d, batches)[0]
    steps = " ".join(fired.next_steps)
    assert "read replica" in steps and "slow-query log" in steps
    assert fired.evidence["resource"] == {"db.system": "postgresql", "db.name": "users"}


def test_quantile() -> None:
    assert quantile([1, 2, 3, 4, 5], 0.95) == pytest.approx(4.8)


def test_end_to_end_from_spans() -> None:
    """Spans → assembly → samples → detector: the slow query is found from raw spans, and a
    clock-skewed callee does not hide it or raise anything else."""
    rng = random.Random(11)
    spans: list[Span] = []
    for i in range(25 * 60 * 3):
        t = T0 + int(i * S / 3)
        m = (t - T0) / S / 60
        spans += traces.shop_trace(rng, t, db_added_ms=60.0 if 15 <= m < 20 else 0.0,
                                   api_skew_ms=-300.0)
    spans.sort(key=lambda s: s.end_ns)
    asm, det = TraceAssembler(), BottleneckDetector()
    out: list[Finding] = []
    for i in range(0, len(spans), 500):
        batch = spans[i:i + 500]
        asm.update(batch)
        asm.advance(max(s.end_ns for s in batch) - 5 * S)
        samples = asm.drain()
        if samples:
            det.update(samples)
            out += det.advance(max(s.end_ns for s in samples))
    assert asm.stats().evicted["skew_adjusted"] > 1000
    assert [(f.kind, f.status, f.entity["operation"]) for f in out] == [
        ("bottleneck_span", "firing", "SELECT users"),
        ("bottleneck_span", "resolved", "SELECT users"),
    ]


def test_saved_trace_writes_each_resource_once_by_value() -> None:
    import copy

    asm = TraceAssembler()
    spans = traces.shop_trace(random.Random(4), T0)
    for s in spans:  # as decoded from separate routed messages: equal, not identical
        s.resource = copy.deepcopy(s.resource)
    asm.update(spans)
    saved = orjson.loads(orjson.dumps(asm.snapshot()))  # as the table holds it
    (doc,) = [v for k, v in saved.items() if k.startswith("t/")]
    assert len(doc["r"]) == 2  # web and api, not one per span
    restored = TraceAssembler()
    restored.restore(saved)
    assert orjson.loads(orjson.dumps(restored.snapshot())) == saved

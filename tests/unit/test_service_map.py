"""The service map: edges from traces, the ``service_map`` records, the servicegraph metrics."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pipeline.detectors.servicemap import ServiceMapDetector
from pipeline.findings import rfc3339
from pipeline.servicegraph import PROM_BOUNDS_S
from pipeline.sinks.metrics import servicegraph_families
from tests.support.traces import T0, S, error_samples


def drive(d: ServiceMapDetector, minutes: float, fail=lambda m: 0.0) -> list[tuple]:
    out = []
    for batch in error_samples(minutes=minutes, fail_rate=fail):
        d.update(batch)
        d.advance(max(s.end_ns for s in batch) - 5 * S)
        out += d.published()
    return out


def test_edges_calls_errors_and_latency_per_minute() -> None:
    """2 requests/s: web -> api (HTTP), api -> its database, and the requests from outside;
    the query fails for every request from minute 6 on (the 500 goes up to web)."""
    recs = drive(ServiceMapDetector(), 9, fail=lambda m: 1.0 if m >= 6 else 0.0)
    latest = {}
    for key, value in recs:
        latest[tuple(orjson.loads(key))] = orjson.loads(value)
    assert set(latest) == {("web", "api", ""), ("api", "users", "database"),
                           ("user", "web", "virtual_node")}
    by_minute = [orjson.loads(v) for k, v in recs if orjson.loads(k) == ["web", "api", ""]]
    first = by_minute[0]  # a young edge is measured from its first minute, not over 5
    assert first["window"]["seconds"] == 60 and first["calls_per_minute"] == first["calls"]
    at5 = by_minute[4]  # minutes 1..5 (event time), before the failures
    assert at5["window"]["seconds"] == 300 and at5["calls"] == 600
    assert at5["calls_per_minute"] == 120.0 and at5["failed"] == 0
    last = latest[("web", "api", "")]
    assert last["error_rate"] > 0.3 and last["failed"] > 0
    db = latest[("api", "users", "database")]
    # the query takes ~5 ms (lognormal): its percentiles, from the fine buckets
    assert 3.5 < db["latency_ms"]["client"]["p50"] < 6.5
    assert db["latency_ms"]["client"]["p50"] <= db["latency_ms"]["client"]["p99"] < 15
    # the server side of web -> api is the api's server span, shorter than the client's
    assert last["latency_ms"]["server"]["p50"] < last["latency_ms"]["client"]["p50"]


def test_an_edge_unseen_for_its_ttl_is_dropped_with_a_tombstone() -> None:
    d = ServiceMapDetector(edge_ttl_s=300.0)
    drive(d, 3)
    assert len(d.edge_totals()) == 3
    d.advance(T0 + 20 * 60 * S)
    out = d.published()
    assert sorted(orjson.loads(k)[0] for k, v in out if v is None) == ["api", "user", "web"]
    assert d.edge_totals() == []


def test_at_the_cap_the_least_recent_edge_goes_and_is_counted() -> None:
    d = ServiceMapDetector(max_edges=2)
    drive(d, 2)
    assert len(d.edge_totals()) == 2 and d.stats().evicted["evicted_edges"] > 0


class _Edges(Collector):
    def __init__(self, d: ServiceMapDetector) -> None:
        self.d = d

    def collect(self):  # type: ignore[no-untyped-def]
        return servicegraph_families(self.d.edge_totals())


def test_servicegraph_metrics_use_the_connector_names_and_buckets() -> None:
    d = ServiceMapDetector()
    drive(d, 4, fail=lambda m: 1.0 if m >= 2 else 0.0)
    reg = CollectorRegistry()
    reg.register(_Edges(d))
    text = generate_latest(reg).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    edge = (("client", "web"), ("connection_type", ""), ("server", "api"))
    total = samples[("traces_service_graph_request_total", edge)]
    failed = samples[("traces_service_graph_request_failed_total", edge)]
    assert total == sum(1 for b in error_samples(minutes=4) for s in b if s.service == "web")
    assert 0 < failed < total
    for side in ("server", "client"):
        name = f"traces_service_graph_request_{side}_seconds"
        les = sorted(float(dict(k[1])["le"]) for k in samples
                     if k[0] == f"{name}_bucket" and dict(k[1])["server"] == "api")
        assert les == sorted([*PROM_BOUNDS_S, float("inf")])
        assert samples[(f"{name}_count", edge)] == total
        inf = dict(edge) | {"le": "+Inf"}
        assert samples[(f"{name}_bucket", tuple(sorted(inf.items())))] == total
    # a database is a virtual node of its own type
    db = (("client", "api"), ("connection_type", "database"), ("server", "users"))
    assert samples[("traces_service_graph_request_total", db)] == total


def test_a_watermark_that_passes_several_minutes_at_once_publishes_their_calls() -> None:
    """The end of the input, a pause or a backlog moves the watermark minutes at a time: the
    calls of a minute that closed before the newest one are published all the same."""
    d = ServiceMapDetector()
    batches = error_samples(minutes=4)
    for batch in batches:
        d.update(batch)
    calls = sum(1 for b in batches for s in b if s.service == "web")  # one per edge and trace
    assert calls > 470
    d.advance(T0 + 3 * 60 * S + 1)  # minutes 0..2 closed
    assert {orjson.loads(v)["calls"] for _, v in d.published()} == {360}
    d.advance(T0 + 5 * 60 * S + 1)  # minutes 3 and 4 at once; minute 4 holds no calls
    out = {tuple(orjson.loads(k)): orjson.loads(v) for k, v in d.published()}
    assert len(out) == 3 and {r["calls"] for r in out.values()} == {calls}
    assert {r["window"]["end"] for r in out.values()} == {rfc3339(T0 + 5 * 60 * S)}


def test_a_service_named_user_keeps_its_own_calls() -> None:
    """A real service called "user" (as the outside caller is named): its call to its
    database stays with its own sample, beside the requests from outside into it."""
    from pipeline.detectors.trace_assembly import TraceAssembler
    from pipeline.records import Resource, Span

    r = Resource("user", "user-1", "h", "", {})
    tid = "cd" * 16
    asm = TraceAssembler(quiet_s=1.0, max_age_s=30.0)
    asm.update([
        Span(tid, "1" * 16, "", "GET /u", 2, T0, T0 + 50 * 10**6, 0, {}, r),
        Span(tid, "2" * 16, "1" * 16, "SELECT", 3, T0 + 10**6, T0 + 9 * 10**6, 0,
             {"db.system": "postgresql", "db.name": "users"}, r),
    ])
    asm.advance(T0 + 5 * S)
    (sample,) = asm.drain()
    assert sorted(tuple(e[:3]) for e in sample.edges) == [
        ("user", "user", "virtual_node"), ("user", "users", "database")]

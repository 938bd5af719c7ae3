"""The service map end to end: simulated traffic through the real broker into a worker, the
compacted ``service_map`` topic it writes, and a real Prometheus (Debian package) scraping its
servicegraph metrics and answering the PromQL Grafana's service graph uses.

What to expect is derived here from the decoded spans, not from the pipeline's code: a CLIENT
span answered by a SERVER span of another service is a call client -> server (connection type
""); a CLIENT span nothing answers is a call to a virtual node (a database, ``database``, named
by ``db.name`` or its address; else ``peer.service``, ``virtual_node``); a root SERVER span is
a call from ``user`` (``virtual_node``). A call failed when either span's status is ERROR (what
the Collector's servicegraph connector counts; the simulator sends no 4xx, where ours differs).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from pipeline import otlp
from pipeline.records import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, Span
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import read_to_end, wait_for
from tests.support import promstack

pytestmark = pytest.mark.integration
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "service_map.schema.json").read_text())
#: The OpenTelemetry Collector servicegraph connector's default histogram bounds (seconds),
#: written out here rather than imported: the test checks the export against them.
CONNECTOR_BOUNDS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0,
                    5.0, 10.0, 15.0)
LABELS = {"client", "server", "connection_type"}
SPEED = 8.0  # 4 minutes of event time in 30 s: Prometheus sees the counters grow
# The input's end is noticed within seconds, then the watermark moves two minutes past it at
# once: the minutes it passes must all be published (the last one holds no calls).
FAST_END = {"SOURCE_IDLE_S": "2", "END_OF_INPUT_S": "3", "END_OF_INPUT_ADVANCE_S": "120"}

Edge = tuple[str, str, str]


@dataclass
class Calls:
    client_ns: list[int] = field(default_factory=list)
    server_ns: list[int] = field(default_factory=list)
    failed: int = 0

    @property
    def n(self) -> int:
        return len(self.client_ns)


def expected_edges(spans: list[Span]) -> dict[Edge, Calls]:
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    out: dict[Edge, Calls] = defaultdict(Calls)
    answered: set[tuple[str, str]] = set()

    def add(edge: Edge, client: Span, server: Span) -> None:
        c = out[edge]
        c.client_ns.append(client.end_ns - client.start_ns)
        c.server_ns.append(server.end_ns - server.start_ns)
        c.failed += client.status == STATUS_ERROR or server.status == STATUS_ERROR

    for s in spans:
        if s.kind != SPAN_KIND_SERVER:
            continue
        if not s.parent_id:
            add(("user", s.resource.service, "virtual_node"), s, s)
            continue
        p = by_id.get((s.trace_id, s.parent_id))
        if p is not None and p.kind == SPAN_KIND_CLIENT and (
                p.resource.service != s.resource.service):
            answered.add((p.trace_id, p.span_id))
            add((p.resource.service, s.resource.service, ""), p, s)
    for s in spans:
        if s.kind != SPAN_KIND_CLIENT or (s.trace_id, s.span_id) in answered:
            continue
        a = s.attrs
        if "db.system" in a:
            name = a.get("db.name") or f"{a['server.address']}:{a['server.port']}"
            add((s.resource.service, str(name), "database"), s, s)
        else:
            assert "peer.service" in a, f"an uninstrumented callee the test cannot name: {s}"
            add((s.resource.service, str(a["peer.service"]), "virtual_node"), s, s)
    return dict(out)


def quantile_ms(ns: list[int], q: float) -> float:
    xs = sorted(ns)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] / 1e6


def cumulative(ns: list[int]) -> dict[float, int]:
    """Bucket counts at the connector's bounds as Prometheus stores them (``le`` inclusive)."""
    xs = sorted(ns)
    out = {b: bisect.bisect_right(xs, round(b * 1e9)) for b in CONNECTOR_BOUNDS}
    out[math.inf] = len(xs)
    return out


def edge_of(metric: dict[str, str]) -> Edge:
    # Prometheus drops a label whose value is empty: connection_type "" arrives absent.
    return metric["client"], metric["server"], metric.get("connection_type", "")


async def test_service_map_topic_and_servicegraph_metrics_match_the_traffic(
    names: dict[str, str], workers, bootstrap: str, tmp_path: Path,
) -> None:
    scenario = build_scenario(
        "healthy", seed=11, duration="4m", rate=6, start=DEFAULT_REPLAY_START,
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    records = list(iter_records(scenario))
    spans = [s for r in records if r.topic == scenario.spans_topic
             for s in otlp.decode_spans(r.value).items]
    want = expected_edges(spans)
    total = sum(c.n for c in want.values())
    assert {t for _, _, t in want} == {"", "database", "virtual_node"}, sorted(want)
    assert sum(c.failed for c in want.values()) > 0, "the scenario should hold some failures"

    worker = workers({**names, **FAST_END, "PIPELINE_DETECTORS": ""})
    prom_proc, prometheus = promstack.start_prometheus(
        tmp_path, [f"127.0.0.1:{worker.port}"], None)
    try:
        await write_records(records, {"bootstrap_servers": bootstrap}, mode="live",
                            speed=SPEED, spans_topic=scenario.spans_topic,
                            progress=lambda line: None)
        await wait_for(
            lambda: worker.metric("anomaly_pipeline_items_detected_total", signal="spans")
            >= len(spans) or not worker.alive(), timeout=120, what="every span applied")
        assert worker.alive(), worker.log()[-3000:]

        # --- a. the compacted service_map topic ---------------------------------------------
        latest: dict[Edge, dict[str, Any]] = {}
        fullest: dict[Edge, dict[str, Any]] = {}

        async def read_map() -> bool:
            for r in await read_to_end(bootstrap, names["SERVICE_MAP_TOPIC"], timeout=30):
                edge = tuple(orjson.loads(r.key))
                assert r.value is not None, f"a tombstone for {edge} within the edge TTL"
                rec = orjson.loads(r.value)
                jsonschema.validate(rec, SCHEMA)
                assert [rec["client"], rec["server"], rec["connection_type"]] == list(edge)
                latest[edge] = rec
                if rec["calls"] >= fullest.get(edge, {"calls": -1})["calls"]:
                    fullest[edge] = rec
            return set(fullest) == set(want) and all(
                fullest[e]["calls"] == c.n for e, c in want.items())

        deadline = time.monotonic() + 60
        while not await read_map() and time.monotonic() < deadline:
            await asyncio.sleep(2)
        assert set(latest) == set(want), (sorted(set(latest) ^ set(want)))
        # 4 minutes of traffic fall in one 5-minute window: some record of every edge holds
        # all of its calls.
        got = {e: r["calls"] for e, r in fullest.items()}
        assert got == {e: c.n for e, c in want.items()}, worker.log()[-2000:]
        for e, c in want.items():
            rec = fullest[e]
            assert rec["window"]["seconds"] == 300
            assert rec["calls_per_minute"] == round(c.n / 5, 3)
            assert rec["failed"] == c.failed, e
            assert rec["error_rate"] == pytest.approx(c.failed / c.n, abs=1e-5)
            for side, ns in (("client", c.client_ns), ("server", c.server_ns)):
                lat = rec["latency_ms"][side]
                assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"], (e, side, lat)
                # the fine buckets are 25 % wide: within 30 % of the exact quantiles
                for q in (0.5, 0.95):
                    exact = quantile_ms(ns, q)
                    assert lat[f"p{int(q * 100)}"] == pytest.approx(exact, rel=0.3), (
                        e, side, q, lat, exact)
            if e[2] == "":  # the callee's server span lies inside the client's
                assert rec["latency_ms"]["server"]["p50"] <= rec["latency_ms"]["client"]["p50"]
        # every edge's latest record is no older than the one with all of its calls
        for e in want:
            assert latest[e]["window"]["end"] >= fullest[e]["window"]["end"]
        assert worker.metric("anomaly_pipeline_partition_state_evictions",
                             detector="service_map", reason="late_calls") == 0

        # --- b. Prometheus scraping the worker ----------------------------------------------
        def q(expr: str, at: float | None = None) -> list[dict[str, Any]]:
            return promstack.query(prometheus, expr, at)

        def scraped_total() -> float:
            res = q("sum(traces_service_graph_request_total)")
            return float(res[0]["value"][1]) if res else 0.0

        await wait_for(lambda: scraped_total() == total, timeout=60,
                       what=f"Prometheus to scrape all {total} calls")
        t_full = time.time()

        def by_edge(expr: str) -> dict[Edge, float]:
            out: dict[Edge, float] = {}
            for s in q(expr, t_full):
                assert set(s["metric"]) - {"__name__", "instance", "job"} <= LABELS, s
                out[edge_of(s["metric"])] = float(s["value"][1])
            return out

        # The series carry exactly the connector's labels (connection_type only when set).
        for name in ("traces_service_graph_request_total",
                     "traces_service_graph_request_failed_total"):
            for s in q(name, t_full):
                extra = set(s["metric"]) - {"__name__", "instance", "job"}
                want_labels = LABELS if edge_of(s["metric"])[2] else LABELS - {"connection_type"}
                assert extra == want_labels, (name, s["metric"])
        assert by_edge("traces_service_graph_request_total") == {
            e: c.n for e, c in want.items()}
        assert by_edge("traces_service_graph_request_failed_total") == {
            e: c.failed for e, c in want.items()}
        for side in ("server", "client"):
            name = f"traces_service_graph_request_{side}_seconds"
            buckets: dict[Edge, dict[float, float]] = defaultdict(dict)
            for s in q(f"{name}_bucket", t_full):
                buckets[edge_of(s["metric"])][float(s["metric"]["le"])] = float(s["value"][1])
            assert set(buckets) == set(want)
            for e, c in want.items():
                ns = c.server_ns if side == "server" else c.client_ns
                assert sorted(buckets[e]) == [*CONNECTOR_BOUNDS, math.inf], (e, buckets[e])
                assert buckets[e] == cumulative(ns), (side, e)
            assert by_edge(f"{name}_count") == {e: c.n for e, c in want.items()}
            sums = by_edge(f"{name}_sum")
            for e, c in want.items():
                ns = c.server_ns if side == "server" else c.client_ns
                assert sums[e] == pytest.approx(sum(ns) / 1e9, rel=1e-6), (side, e)

        # The queries of Grafana's service graph (request rate and failed rate per edge, a
        # latency percentile from the server-side histogram), over the last minute of scrapes.
        rates = by_edge("sum by (client, server, connection_type) "
                        "(rate(traces_service_graph_request_total[1m]))")
        assert set(rates) == set(want) and all(v > 0 for v in rates.values()), rates
        failed_rate = by_edge("sum by (client, server, connection_type) "
                              "(rate(traces_service_graph_request_failed_total[1m]))")
        assert set(failed_rate) == set(want)
        for side in ("server", "client"):
            res = q("histogram_quantile(0.95, sum by (le, client, server) "
                    f"(rate(traces_service_graph_request_{side}_seconds_bucket[1m])))", t_full)
            p95 = {(s["metric"]["client"], s["metric"]["server"]): float(s["value"][1])
                   for s in res}
            assert set(p95) == {(c, sv) for c, sv, _ in want}, (side, sorted(p95))
            for (c, sv, _t), calls in want.items():
                ns = calls.server_ns if side == "server" else calls.client_ns
                exact = quantile_ms(ns, 0.95) / 1000
                # the estimate falls in the connector bucket holding the exact p95 or one
                # next to it (the rate covers the last minute's calls, not all of them)
                i = bisect.bisect_left(CONNECTOR_BOUNDS, exact)
                lo = CONNECTOR_BOUNDS[i - 2] if i >= 2 else 0.0
                hi = CONNECTOR_BOUNDS[min(i + 1, len(CONNECTOR_BOUNDS) - 1)]
                assert lo <= p95[(c, sv)] <= hi, (side, c, sv, p95[(c, sv)], exact)
    finally:
        prom_proc.stop()

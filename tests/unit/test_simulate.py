"""The traffic simulator: determinism, OTLP wire formats, labels, and the physics detectors rely
on (post-GC floors, TIME_WAIT = 60 s x close rate, latency faults). No Kafka needed, except
the writer test, which replaces the producer with a recording fake."""

from __future__ import annotations

import argparse
import base64
import json
import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.simulate import (
    PRESETS,
    Fault,
    SimRecord,
    Simulator,
    add_arguments,
    build_scenario,
    configured_limits,
    iter_records,
    label_lines,
    parse_fault,
    run,
    scenario_from_args,
    write_labels,
)
from pipeline.simulate import writer as writer_mod
from pipeline.simulate.events import MetricPoint, SpanEvent
from pipeline.simulate.labels import expected_operation_calls_per_request
from pipeline.simulate.model import sampler_keeps, sampler_threshold
from pipeline.simulate.timefmt import parse_time_ns

MIB = 2**20
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def attrs_of(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def run_model(scenario: Any) -> tuple[list[list[SpanEvent]], list[tuple[int, MetricPoint]]]:
    traces, points = [], []
    for tick in Simulator(scenario).ticks():
        traces.extend(tick.traces)
        points.extend((tick.index + 1, p) for p in tick.metrics)
    return traces, points


def series(points: list[tuple[int, MetricPoint]], name: str, **match: Any) -> list[tuple]:
    """(t_s, value, resource attrs) of one metric, filtered on resource and point attributes."""
    out = []
    for t, p in points:
        if p.name != name:
            continue
        res, attrs = dict(p.resource.attributes), dict(p.attributes)
        if all(res.get(k, attrs.get(k)) == v for k, v in match.items()):
            out.append((t, p.value, res))
    return out


@pytest.fixture(scope="module")
def demo_short() -> Any:
    return build_scenario("demo", seed=11, duration="5m", rate=30)


@pytest.fixture(scope="module")
def demo_proto(demo_short: Any) -> list[SimRecord]:
    return list(iter_records(demo_short))


# -- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
@pytest.mark.parametrize("keying", ["keyed", "unkeyed"])
def test_same_seed_same_bytes(encoding: str, keying: str) -> None:
    def make(seed: int) -> list[SimRecord]:
        sc = build_scenario(
            "demo", seed=seed, duration="40s", rate=20, encoding=encoding, keying=keying
        )
        return list(iter_records(sc))

    a, b = make(5), make(5)
    assert a == b and len(a) > 10
    assert make(6) != a


def test_labels_are_deterministic(tmp_path: Any) -> None:
    p1 = write_labels(build_scenario("leak", seed=3), tmp_path / "a.jsonl")
    p2 = write_labels(build_scenario("leak", seed=3), tmp_path / "b.jsonl")
    assert p1.read_bytes() == p2.read_bytes()


# -- OTLP protobuf ------------------------------------------------------------------------


def test_proto_records_parse_and_carry_semconv(
    demo_short: Any, demo_proto: list[SimRecord]
) -> None:
    kinds, runtimes, span_attrs, statuses = Counter(), {}, defaultdict(set), Counter()
    metric_names: set[str] = set()
    for rec in demo_proto:
        if rec.topic == demo_short.spans_topic:
            req = ExportTraceServiceRequest.FromString(rec.value)
            for rs in req.resource_spans:
                res = attrs_of(rs.resource.attributes)
                for key in (
                    "service.name",
                    "service.instance.id",
                    "service.version",
                    "host.name",
                    "k8s.pod.name",
                    "process.runtime.name",
                    "telemetry.sdk.language",
                ):
                    assert res.get(key), (key, res)
                runtimes[res["service.name"]] = res["telemetry.sdk.language"]
                for ss in rs.scope_spans:
                    assert ss.scope.name
                    for s in ss.spans:
                        kinds[s.kind] += 1
                        statuses[s.status.code] += 1
                        a = attrs_of(s.attributes)
                        span_attrs[(res["service.name"], s.name)].update(a.items())
                        assert s.end_time_unix_nano >= s.start_time_unix_nano
        else:
            assert rec.topic == demo_short.metrics_topic and rec.key is None
            req = ExportMetricsServiceRequest.FromString(rec.value)
            metric_names.update(
                m.name for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            )
    assert {1, 2, 3} <= set(kinds)  # INTERNAL, SERVER, CLIENT
    assert statuses[2] > 0 and statuses[0] > statuses[2]  # some errors, mostly fine
    assert set(runtimes.values()) == {"java", "go", "python", "nodejs"}
    db = span_attrs[("user-service", "SELECT users")]
    assert {("db.system", "postgresql"), ("db.name", "users"), ("db.operation", "SELECT")} <= db
    assert ("db.system", "redis") in span_attrs[("cart", "HGETALL")]
    vendor = span_attrs[("payment", "POST /v1/charges")]
    assert {
        ("peer.service", "payment-gateway"),
        ("server.address", "api.payments.example"),
    } <= vendor
    server = span_attrs[("frontend", "GET /")]
    assert {
        ("http.route", "/"),
        ("http.request.method", "GET"),
        ("http.response.status_code", 200),
    } <= server
    assert {
        "jvm.memory.used",
        "jvm.memory.used_after_last_gc",
        "jvm.memory.limit",
        "jvm.gc.duration",
        "go.memory.used",
        "go.memory.limit",
        "go.memory.gc.goal",
        "process.runtime.cpython.memory",
        "process.memory.usage",
        "cpython.gc.collections",
        "v8js.memory.heap.used",
        "v8js.memory.heap.limit",
        "v8js.gc.duration",
        "system.network.connections",
        "node_sockstat_TCP_tw",
        "node_netstat_Tcp_ActiveOpens",
        "node_netstat_Tcp_CurrEstab",
    } <= metric_names


def test_metric_types_follow_their_sources(demo_proto: list[SimRecord]) -> None:
    seen: dict[str, Any] = {}
    for rec in demo_proto:
        if rec.topic != "otlp_metrics":
            continue
        for rm in ExportMetricsServiceRequest.FromString(rec.value).resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    seen.setdefault(m.name, m)
    conn = seen["system.network.connections"]
    assert conn.WhichOneof("data") == "sum" and not conn.sum.is_monotonic
    assert conn.sum.aggregation_temporality == 2  # cumulative
    states = {attrs_of(dp.attributes)["state"] for dp in conn.sum.data_points}
    assert {"ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT", "LISTEN"} <= states
    assert attrs_of(conn.sum.data_points[0].attributes)["protocol"] == "tcp"
    assert seen["node_sockstat_TCP_tw"].WhichOneof("data") == "gauge"
    opens = seen["node_netstat_Tcp_ActiveOpens"]
    assert opens.WhichOneof("data") == "sum" and opens.sum.is_monotonic
    assert seen["node_netstat_Tcp_CurrEstab"].WhichOneof("data") == "gauge"
    gc = seen["jvm.gc.duration"]
    assert gc.WhichOneof("data") == "histogram" and gc.unit == "s"
    dp = gc.histogram.data_points[0]
    assert sum(dp.bucket_counts) == dp.count and len(dp.bucket_counts) == 5
    assert "jvm.gc.name" in attrs_of(dp.attributes)
    cpy = seen["cpython.gc.collections"]
    assert cpy.WhichOneof("data") == "sum" and cpy.sum.is_monotonic
    used = seen["jvm.memory.used"].sum.data_points
    assert {"jvm.memory.type", "jvm.memory.pool.name"} <= set(attrs_of(used[0].attributes))


# -- OTLP/JSON ----------------------------------------------------------------------------


def _hex_ids_to_base64(doc: Any) -> Any:
    """OTLP/JSON ids are hex; protobuf's JSON parser expects base64 for bytes fields."""
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return doc


def test_json_is_otlp_json_and_equals_proto() -> None:
    kw = {"seed": 4, "duration": "30s", "rate": 15, "keying": "unkeyed"}
    proto = list(iter_records(build_scenario("demo", encoding="otlp_proto", **kw)))
    js = list(iter_records(build_scenario("demo", encoding="otlp_json", **kw)))
    assert [(r.topic, r.key, r.timestamp_ms) for r in proto] == [
        (r.topic, r.key, r.timestamp_ms) for r in js
    ]
    n_spans = 0
    for p, j in zip(proto, js, strict=True):
        doc = json.loads(j.value)
        if p.topic == "otlp_spans":
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        n_spans += 1
                        assert HEX32.match(s["traceId"]) and HEX16.match(s["spanId"])
                        assert "parentSpanId" not in s or HEX16.match(s["parentSpanId"])
                        assert isinstance(s["startTimeUnixNano"], str)
                        assert isinstance(s["kind"], int)
                        for kv in s.get("attributes", []):
                            if "intValue" in kv["value"]:
                                assert isinstance(kv["value"]["intValue"], str)
            parsed = ParseDict(_hex_ids_to_base64(doc), ExportTraceServiceRequest())
            assert parsed == ExportTraceServiceRequest.FromString(p.value)
        else:
            for rm in doc["resourceMetrics"]:
                for sm in rm["scopeMetrics"]:
                    for m in sm["metrics"]:
                        data = m.get("sum") or m.get("gauge") or m.get("histogram")
                        if "aggregationTemporality" in data:
                            assert data["aggregationTemporality"] == 2
                        for dp in data["dataPoints"]:
                            assert isinstance(dp["timeUnixNano"], str)
                            if "asInt" in dp:
                                assert isinstance(dp["asInt"], str)
                            if "bucketCounts" in dp:
                                assert all(isinstance(c, str) for c in dp["bucketCounts"])
            parsed_m = ParseDict(doc, ExportMetricsServiceRequest())
            assert parsed_m == ExportMetricsServiceRequest.FromString(p.value)
    assert n_spans > 1000


# -- keying -------------------------------------------------------------------------------


def test_keyed_records_hold_one_trace_keyed_by_its_hex_id(demo_proto: list[SimRecord]) -> None:
    n = 0
    for rec in demo_proto:
        if rec.topic != "otlp_spans":
            continue
        req = ExportTraceServiceRequest.FromString(rec.value)
        ids = {
            s.trace_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans
        }
        assert rec.key is not None and HEX32.match(rec.key.decode())
        assert ids == {rec.key.decode()}
        n += 1
    assert n > 1000


def test_unkeyed_records_are_batches_grouped_by_resource_then_scope() -> None:
    sc = build_scenario(
        "healthy", seed=2, duration="20s", rate=40, keying="unkeyed", max_spans_per_record=300
    )
    spans = [r for r in iter_records(sc) if r.topic == "otlp_spans"]
    assert all(r.key is None for r in spans)
    traces_per_record = []
    for rec in spans:
        req = ExportTraceServiceRequest.FromString(rec.value)
        resources = [
            attrs_of(rs.resource.attributes)["service.instance.id"] for rs in req.resource_spans
        ]
        assert len(resources) == len(set(resources))  # each resource once
        for rs in req.resource_spans:
            scopes = [ss.scope.name for ss in rs.scope_spans]
            assert len(scopes) == len(set(scopes))
        traces_per_record.append(
            len(
                {s.trace_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}
            )
        )
        assert rec.items <= 300 or traces_per_record[-1] == 1
    assert max(traces_per_record) > 10


def test_record_timestamps_are_event_time(demo_short: Any, demo_proto: list[SimRecord]) -> None:
    start_ms = demo_short.start_ns // 1_000_000
    stamps = [r.timestamp_ms for r in demo_proto]
    assert stamps == sorted(stamps)
    assert start_ms < stamps[0] and stamps[-1] <= demo_short.end_ns // 1_000_000
    for rec in demo_proto[:3000]:
        if rec.topic != "otlp_metrics":
            continue
        req = ExportMetricsServiceRequest.FromString(rec.value)
        for rm in req.resource_metrics:
            if attrs_of(rm.resource.attributes).get("service.name") == "cart":
                continue  # the demo skews cart's clock
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    data = getattr(m, m.WhichOneof("data"))
                    for dp in data.data_points:
                        assert dp.time_unix_nano == rec.timestamp_ms * 1_000_000


# -- traces -------------------------------------------------------------------------------


def test_traces_nest_and_fan_out_in_parallel(demo_short: Any) -> None:
    traces, _ = run_model(build_scenario("healthy", seed=1, duration="30s", rate=20))
    parallel = nested_remote = 0
    for trace in traces:
        by_id = {s.span_id: s for s in trace}
        roots = [s for s in trace if not s.parent_span_id]
        assert len(roots) == 1 and trace[-1] is roots[0]
        children = defaultdict(list)
        for s in trace:
            if s.parent_span_id:
                assert s.parent_span_id in by_id
                children[s.parent_span_id].append(s)
                parent = by_id[s.parent_span_id]
                if s.template.kind == 2 and parent.template.kind == 3:
                    nested_remote += 1  # a callee's SERVER span under the caller's CLIENT span
        for kids in children.values():
            kids.sort(key=lambda s: s.start_ns)
            if any(b.start_ns < a.end_ns for a, b in zip(kids, kids[1:], strict=False)):
                parallel += 1
    assert parallel > 100 and nested_remote > 100


def test_bottleneck_slows_only_its_operation() -> None:
    sc = build_scenario(
        "healthy",
        seed=3,
        duration="6m",
        rate=15,
        extra_faults=["bottleneck_span:user-service/SELECT users:2m:2m:120"],
    )
    traces, _ = run_model(sc)
    lat = defaultdict(lambda: defaultdict(list))
    t0 = sc.start_ns
    for trace in traces:
        for s in trace:
            phase = "fault" if 120 <= (s.start_ns - t0) / 1e9 < 240 else "normal"
            lat[s.template.name][phase].append((s.end_ns - s.start_ns) / 1e6)
    med = {op: {ph: float(np.median(v)) for ph, v in d.items()} for op, d in lat.items()}
    assert med["SELECT users"]["fault"] - med["SELECT users"]["normal"] == pytest.approx(
        120, rel=0.03
    )
    assert med["HGETALL"]["fault"] == pytest.approx(med["HGETALL"]["normal"], rel=0.1)


def test_head_sampling_keeps_ratio_and_leaves_metrics_alone() -> None:
    full = build_scenario("healthy", seed=9, duration="60s", rate=30)
    some = build_scenario("healthy", seed=9, duration="60s", rate=30, sample_ratio=0.25)
    t_full, m_full = run_model(full)
    t_some, m_some = run_model(some)
    assert len(t_some) / len(t_full) == pytest.approx(0.25, abs=0.05)
    full_ids = {t[0].trace_id for t in t_full}
    assert {t[0].trace_id for t in t_some} <= full_ids
    assert [(t, p.name, p.value) for t, p in m_full] == [(t, p.name, p.value) for t, p in m_some]


def _span_key(s: SpanEvent) -> tuple:
    """A span's content; resources and templates are per-run objects that compare by identity."""
    return (
        dict(s.resource.attributes)["service.instance.id"],
        s.template.service,
        s.template.name,
        s.trace_id,
        s.span_id,
        s.parent_span_id,
        s.start_ns,
        s.end_ns,
        s.status,
    )


def _keys(trace: list[SpanEvent]) -> list[tuple]:
    return [_span_key(s) for s in trace]


def _root_second(sc: Any, trace: list[SpanEvent]) -> float:
    return (trace[-1].start_ns - sc.start_ns) / 1e9  # the root is last, on an unskewed service


def _emission_pair(spec: str) -> tuple[Any, Any, Any, Any]:
    """The same healthy run without and with an emission negative (1-2 min of 3)."""
    kw: dict[str, Any] = {"seed": 12, "duration": "3m", "rate": 30}
    full = run_model(build_scenario("healthy", **kw))
    sc = build_scenario("healthy", extra_faults=[spec], **kw)
    return sc, full, *run_model(sc)


def test_head_sampling_negative_keeps_whole_traces_by_trace_id() -> None:
    sc, (t_full, m_full), t_some, m_some = _emission_pair("head_sampling:*:1m:1m:0.2")
    # The services did the same work: every metric point is unchanged.
    assert [(t, p.name, p.attributes, p.value) for t, p in m_full] == [
        (t, p.name, p.attributes, p.value) for t, p in m_some
    ]
    full = {t[0].trace_id: t for t in t_full}
    inside = {tid for tid, t in full.items() if 60 <= _root_second(sc, t) < 120}
    kept = {t[0].trace_id: t for t in t_some}
    assert set(kept) <= set(full)
    assert set(full) - inside <= set(kept)  # outside the window nothing is dropped
    kept_inside = inside & set(kept)
    assert len(kept_inside) / len(inside) == pytest.approx(0.2, abs=0.03)
    # Whole traces only, decided from the trace id alone as the Collector's sampler does.
    assert all(_keys(kept[tid]) == _keys(full[tid]) for tid in kept)
    threshold = sampler_threshold(0.2)
    assert kept_inside == {tid for tid in inside if sampler_keeps(tid, threshold)}
    # ... so the same trace ids survive in another run (deterministic, not a random draw).
    assert {t[0].trace_id for t in run_model(sc)[0]} == set(kept)
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "head_sampling")
    assert label["truth"]["kept_trace_fraction"] == pytest.approx(0.2, abs=1e-3)


def test_head_sampling_targets_traces_rooted_in_a_service() -> None:
    sc = build_scenario("healthy", duration="30s", extra_faults=["head_sampling:frontend:0s:1m"])
    assert sc.faults[0].entity == {"service": "frontend"}
    assert sc.faults[0].magnitude == {}  # default keep 0.1
    with pytest.raises(ValueError, match="roots no traces"):
        build_scenario("healthy", extra_faults=["head_sampling:cart:0s:1m:0.5"])
    with pytest.raises(ValueError, match="keep must be in"):
        build_scenario("healthy", extra_faults=["head_sampling:*:0s:1m:1.5"])


def test_missing_spans_negative_loses_non_root_spans_only() -> None:
    sc, (t_full, m_full), t_lossy, m_lossy = _emission_pair("missing_spans:*:1m:1m:0.1")
    assert [(t, p.name, p.attributes, p.value) for t, p in m_full] == [
        (t, p.name, p.attributes, p.value) for t, p in m_lossy
    ]
    full = {t[0].trace_id: t for t in t_full}
    lossy = {t[0].trace_id: t for t in t_lossy}
    assert set(lossy) == set(full)  # no trace is lost whole
    non_root = lost = orphans = 0
    for tid, trace in lossy.items():
        whole = full[tid]
        assert _span_key(trace[-1]) == _span_key(whole[-1])  # the root stays, last
        assert not trace[-1].parent_span_id
        ids = {s.span_id for s in trace}
        assert ids <= {s.span_id for s in whole}
        # Survivors are unchanged, parent ids included.
        assert _keys([s for s in whole if s.span_id in ids]) == _keys(trace)
        if not 60 <= _root_second(sc, whole) < 120:
            assert len(trace) == len(whole)
            continue
        non_root += len(whole) - 1
        lost += len(whole) - len(trace)
        orphans += sum(1 for s in trace if s.parent_span_id and s.parent_span_id not in ids)
    assert lost / non_root == pytest.approx(0.1, abs=0.01)
    assert orphans > 100  # children of lost spans point at a parent that never arrives
    assert [_keys(t) for t in run_model(sc)[0]] == [_keys(t) for t in t_lossy]


def test_missing_spans_on_one_service_loses_only_its_spans() -> None:
    sc, (t_full, _), t_lossy, _ = _emission_pair("missing_spans:cart:0s:3m:0.3")
    before = Counter(s.template.service for t in t_full for s in t)
    after = Counter(s.template.service for t in t_lossy for s in t)
    assert after["cart"] / before["cart"] == pytest.approx(0.7, abs=0.03)
    assert {k: v for k, v in after.items() if k != "cart"} == {
        k: v for k, v in before.items() if k != "cart"
    }


def test_emission_negatives_are_deterministic_on_the_wire() -> None:
    def make() -> list[SimRecord]:
        sc = build_scenario(
            "healthy",
            seed=3,
            duration="40s",
            rate=20,
            extra_faults=["head_sampling:*:5s:20s:0.3", "missing_spans:*:10s:25s:0.1"],
        )
        return list(iter_records(sc))

    a = make()
    assert a == make() and len(a) > 10


def test_clock_skew_shifts_one_service() -> None:
    sc = build_scenario(
        "healthy", seed=2, duration="20s", rate=20, extra_faults=["clock_skew:cart:0s:20s:400"]
    )
    traces, _ = run_model(sc)
    offsets = []
    for trace in traces:
        by_id = {s.span_id: s for s in trace}
        for s in trace:
            parent = by_id.get(s.parent_span_id)
            if parent and s.template.service == "cart" and parent.template.service != "cart":
                offsets.append((s.start_ns - parent.start_ns) / 1e6)
    assert offsets and 399 < float(np.median(offsets)) < 402


# -- labels -------------------------------------------------------------------------------


def test_labels_file_has_run_header_and_fault_windows(tmp_path: Any) -> None:
    sc = build_scenario("demo", seed=1)
    path = write_labels(sc, tmp_path / "labels" / "demo.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    run_line, labels = lines[0], lines[1:]
    assert run_line["type"] == "run" and run_line["scenario"] == "demo" and run_line["seed"] == 1
    assert run_line["start_unix_nano"] == parse_time_ns("2026-01-05T08:00:00Z")
    assert run_line["end_unix_nano"] - run_line["start_unix_nano"] == 20 * 60 * 10**9
    assert run_line["entities"]["hosts"] == 4 and run_line["entities"]["instances"] >= 14
    assert run_line["entities"]["operations"] > 10
    assert all(lbl["type"] == "label" for lbl in labels)
    kinds = {lbl["kind"] for lbl in labels}
    assert {
        "bottleneck_span",
        "memory_leak",
        "time_wait_buildup",
        "traffic_spike",
        "deploy",
        "reconnect_storm",
        "clock_skew",
        "gc_sawtooth",
        "cache_warmup",
        "restart",
        "global_slowdown",
    } <= kinds
    for lbl in labels:
        assert lbl["negative"] == bool(lbl["must_not_trigger"])
        assert parse_time_ns(lbl["start"]) == lbl["start_unix_nano"] < lbl["end_unix_nano"]
        assert run_line["start_unix_nano"] <= lbl["start_unix_nano"]
        assert lbl["end_unix_nano"] <= run_line["end_unix_nano"]
    by_kind = {lbl["kind"]: lbl for lbl in labels}
    b = by_kind["bottleneck_span"]
    assert b["entity"] == {"service": "user-service", "operation": "SELECT users"}
    assert b["start_unix_nano"] == run_line["start_unix_nano"] + 11 * 60 * 10**9
    leak = by_kind["memory_leak"]
    assert set(leak["entity"]) == {"service", "instance"}
    incs = {i.instance_id for i in sc.plan.incarnations()}
    assert leak["entity"]["instance"] in incs
    assert leak["truth"]["time_to_oom_s"] > 0
    tw = by_kind["time_wait_buildup"]
    assert tw["entity"] == {"host": "node-2"}
    assert tw["evidence"]["service"] == "frontend" and tw["evidence"]["destination"] == "cart"
    assert tw["truth"]["expected_time_wait"] > 300
    storms = [lbl for lbl in labels if lbl["kind"] == "reconnect_storm"]
    assert {tuple(s["entity"]) for s in storms} == {("host",)}
    assert by_kind["traffic_spike"]["entity"] == {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_labels(name: str) -> None:
    sc = build_scenario(name, seed=1)
    lines = label_lines(sc)
    assert lines[0]["type"] == "run"
    faults = [f for f in sc.faults if not f.negative]
    assert (name in ("healthy", "negatives")) == (not faults)


def test_span_emission_negatives_are_labelled_for_bottleneck_span() -> None:
    for name in ("negatives", "bottleneck"):
        labels = label_lines(build_scenario(name, seed=1))
        by_kind = {lbl["kind"]: lbl for lbl in labels[1:]}
        for kind, key, value in (("head_sampling", "keep", 0.1), ("missing_spans", "drop", 0.05)):
            lbl = by_kind[kind]
            assert lbl["negative"] is True and lbl["must_not_trigger"] == ["bottleneck_span"]
            assert lbl["entity"] == {} and lbl["magnitude"] == {key: value}
            assert lbl["end_unix_nano"] - lbl["start_unix_nano"] >= 5 * 60 * 10**9
    assert parse_fault("head_sampling:*:1m:2m:0.25").magnitude == {"keep": 0.25}
    assert parse_fault("missing_spans:*:1m:2m:0.02").magnitude == {"drop": 0.02}


def test_bottleneck_preset_is_a_clean_accuracy_suite() -> None:
    sc = build_scenario("bottleneck", seed=1)
    assert 70 * 60 <= sc.duration_s <= 100 * 60
    whole_run = [f for f in sc.faults if f.start_s == 0 and f.end_s == sc.duration_s]
    assert [(f.kind, f.entity, f.magnitude) for f in whole_run] == [
        ("clock_skew", {"service": "checkout"}, {"offset_ms": -400.0})
    ]
    windows = sorted((f for f in sc.faults if f not in whole_run), key=lambda f: f.start_s)
    assert windows[0].start_s >= 20 * 60  # healthy warm-up first
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start_s - a.end_s >= 3 * 60, (a, b)  # no overlap, >= 3 min apart
    assert sc.duration_s - windows[-1].end_s >= 3 * 60
    negatives = Counter(
        (f.kind, tuple(f.entity), tuple(f.magnitude.values())) for f in windows if f.negative
    )
    assert negatives == Counter(
        [
            ("global_slowdown", ("service",), (2.0,)),
            ("global_slowdown", (), (1.5,)),
            ("traffic_spike", (), (3.0,)),
            ("head_sampling", (), (0.1,)),
            ("missing_spans", (), (0.05,)),
        ]
    )
    bottlenecks = [f for f in windows if f.kind == "bottleneck_span"]
    assert sorted(f.magnitude["added_ms"] for f in bottlenecks) == [30.0, 60.0, 120.0, 250.0]
    ops = [(f.entity["service"], f.entity["operation"]) for f in bottlenecks]
    assert len(set(ops)) == len(ops) and set(ops) <= set(sc.topology.leaf_operations())
    assert all(6 * 60 <= f.end_s - f.start_s <= 8 * 60 for f in bottlenecks)
    per_request = expected_operation_calls_per_request(sc.topology)
    assert all(per_request[op] >= 0.15 for op in ops), per_request
    # ... and the traffic really reaches them: the share of traces with a span of each.
    traces, _ = run_model(build_scenario("healthy", seed=1, duration="2m", rate=20))
    reached = Counter(
        op for t in traces for op in {(s.template.service, s.template.name) for s in t}
    )
    assert all(reached[op] / len(traces) >= 0.15 for op in ops), reached
    for lbl in label_lines(sc)[1:]:
        if lbl["kind"] == "bottleneck_span":
            op = (lbl["entity"]["service"], lbl["entity"]["operation"])
            assert lbl["truth"]["calls_per_s_at_onset"] == pytest.approx(
                sc.base_rate_at((lbl["start_unix_nano"] - sc.start_ns) / 1e9) * per_request[op],
                rel=0.01,
            )


# -- memory -------------------------------------------------------------------------------


def _java_floors(points: list[tuple[int, MetricPoint]], slot_pod: str) -> list[tuple[int, float]]:
    """Old-gen post-GC values right after a major GC (a drop): the floor samples."""
    vals = [
        (t, v)
        for t, v, r in series(
            points, "jvm.memory.used_after_last_gc", **{"jvm.memory.pool.name": "G1 Old Gen"}
        )
        if r["k8s.pod.name"] == slot_pod
    ]
    return [
        (t, v) for (_, prev), (t, v) in zip(vals, vals[1:], strict=False) if v < prev - 20 * MIB
    ]


def _leak_run(leak_pct: float | None) -> tuple[Any, list[tuple[int, MetricPoint]]]:
    # Low traffic keeps the test fast; the sawtooth negative restores a production-like
    # allocation rate on the instance so that major collections (floor samples) are frequent.
    faults = [
        Fault(
            "gc_sawtooth",
            {"service": "checkout", "instance": "checkout#0"},
            0,
            7200,
            {"alloc_factor": 8.0},
        )
    ]
    if leak_pct is not None:
        faults.append(
            Fault(
                "memory_leak",
                {"service": "checkout", "instance": "checkout#0"},
                0,
                7200,
                {"rate_pct_limit_per_hour": leak_pct},
            )
        )
    sc = build_scenario("healthy", seed=4, duration="100m", rate=10, faults=faults)
    _, points = run_model(sc)
    return sc, points


def test_leak_floor_grows_at_the_set_rate() -> None:
    sc, points = _leak_run(30.0)
    pod = sc.plan.slots["checkout#0"].incarnations[0].pod
    floors = _java_floors(points, pod)
    assert len(floors) >= 6
    t, v = np.array(floors, dtype=float).T
    slope = np.polyfit(t, v, 1)[0]  # bytes per second
    expected = 0.30 * 1024 * MIB / 3600
    assert slope == pytest.approx(expected, rel=0.15)


def test_gc_sawtooth_floor_stays_flat() -> None:
    sc, points = _leak_run(None)
    pod = sc.plan.slots["checkout#0"].incarnations[0].pod
    floors = _java_floors(points, pod)
    assert len(floors) >= 6
    t, v = np.array(floors, dtype=float).T
    slope = np.polyfit(t, v, 1)[0]
    assert abs(slope) < 0.1 * 0.30 * 1024 * MIB / 3600
    # ... while the heap itself saws up and down by much more than the floor moves.
    used = [
        v
        for _, v, r in series(points, "jvm.memory.used", **{"jvm.memory.pool.name": "G1 Old Gen"})
        if r["k8s.pod.name"] == pod
    ]
    assert max(used) - min(used) > 100 * MIB


def test_go_leak_shows_in_gc_goal() -> None:
    sc = build_scenario(
        "healthy",
        seed=4,
        duration="60m",
        rate=10,
        faults=[
            Fault(
                "memory_leak",
                {"service": "user-service", "instance": "user-service#1"},
                0,
                3600,
                {"rate_pct_limit_per_hour": 15.0},
            )
        ],
    )
    _, points = run_model(sc)
    goal = [
        (t, v / 2)
        for t, v, r in series(points, "go.memory.gc.goal")
        if r["k8s.pod.name"] == sc.plan.slots["user-service#1"].incarnations[0].pod
    ]
    t, v = np.array(goal, dtype=float).T
    assert np.polyfit(t, v, 1)[0] == pytest.approx(0.15 * 512 * MIB / 3600, rel=0.15)


def test_oom_kill_restarts_the_process_and_matches_labels() -> None:
    sc = build_scenario(
        "healthy",
        seed=2,
        duration="40m",
        rate=5,
        faults=[
            Fault(
                "memory_leak",
                {"service": "payment", "instance": "payment#0"},
                60,
                2400,
                {"rate_pct_limit_per_hour": 200.0},
            )
        ],
    )
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "memory_leak")
    kills = label["truth"]["oom_kills"]
    assert kills
    _, points = run_model(sc)
    restarts = {
        (t, r["k8s.container.restart_count"], r["service.instance.id"], r["process.pid"])
        for t, _, r in series(points, "go.memory.limit")
        if r["k8s.pod.name"] == label["evidence"]["pod"]
    }
    first = min(t for t, rc, _, _ in restarts if rc == 1)
    kill_s = (parse_time_ns(kills[0]) - sc.start_ns) / 1e9
    assert kill_s <= first <= kill_s + sc.metric_interval_s
    assert {iid for _, _, iid, _ in restarts} == {label["entity"]["instance"]}  # same pod
    assert len({pid for _, rc, _, pid in restarts}) == len({rc for _, rc, _, _ in restarts})
    expected = label["truth"]["time_to_oom_s"]
    assert kill_s - 60 == pytest.approx(expected, abs=2)


def test_deploy_changes_instance_and_version_restart_keeps_instance() -> None:
    sc = build_scenario(
        "healthy",
        seed=1,
        duration="5m",
        faults=[
            Fault("deploy", {"service": "cart"}, 60, 200),
            Fault("restart", {"service": "payment", "instance": "payment#1"}, 120, 240),
        ],
    )
    cart = [sc.plan.slots[f"cart#{i}"].incarnations for i in range(2)]
    assert all(
        len(incs) == 2
        and incs[1].instance_id != incs[0].instance_id
        and incs[1].version != incs[0].version
        and incs[1].pod != incs[0].pod
        for incs in cart
    )
    pay = sc.plan.slots["payment#1"].incarnations
    assert len(pay) == 2 and pay[1].instance_id == pay[0].instance_id
    assert pay[1].container_id != pay[0].container_id and pay[1].restart_count == 1


def _pod(sc: Any, slot: str) -> str:
    return sc.plan.slots[slot].incarnations[0].pod


def _gc_hist(
    points: list, name: str, pod: str, **match: Any
) -> list[tuple[int, int, float, tuple]]:
    """(t_s, count, sum, bucket counts) of one GC duration histogram stream of one pod."""
    out = []
    for t, p in points:
        if p.name != name or dict(p.resource.attributes)["k8s.pod.name"] != pod:
            continue
        if all(dict(p.attributes).get(k) == v for k, v in match.items()):
            out.append((t, p.count, p.total, p.bucket_counts))
    return out


def _rate_between(hist: list[tuple[int, int, float, tuple]], t0: int, t1: int) -> tuple:
    """(collections/s, GC seconds per second, new bucket counts) between two export times."""
    a = max((h for h in hist if h[0] <= t0), key=lambda h: h[0])
    b = max((h for h in hist if h[0] <= t1), key=lambda h: h[0])
    dt = b[0] - a[0]
    buckets = tuple(y - x for x, y in zip(a[3], b[3], strict=True))
    return (b[1] - a[1]) / dt, (b[2] - a[2]) / dt, buckets


@pytest.mark.parametrize(
    ("slot", "name", "minor"),
    [
        ("catalog#0", "jvm.gc.duration", {"jvm.gc.name": "G1 Young Generation"}),
        ("frontend#1", "v8js.gc.duration", {"v8js.gc.type": "minor"}),
    ],
)
def test_gc_pressure_raises_gc_time_frequency_and_pauses(
    slot: str, name: str, minor: dict[str, str]
) -> None:
    service = slot.partition("#")[0]
    fault = Fault("gc_pressure", {"service": service, "instance": slot}, 600, 1500)
    sc = build_scenario("healthy", seed=3, duration="35m", rate=10, faults=[fault])
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "gc_pressure")
    assert label["truth"]["gc_time_fraction"] == 0.15 and label["must_not_trigger"] == []
    assert label["truth"]["gc_duration_metric"] == name
    _, points = run_model(sc)
    pod = _pod(sc, slot)
    young = _gc_hist(points, name, pod, **minor)
    before_n, before_s, _ = _rate_between(young, 60, 590)
    during_n, during_s, buckets = _rate_between(young, 660, 1490)
    _, after_s, _ = _rate_between(young, 1560, 2090)
    assert during_n > 2.5 * before_n  # collections far more frequent
    assert before_s < 0.02 and after_s < 0.02  # healthy: well under 2% of the time in GC
    assert 0.135 <= during_s < 0.2  # young collections alone take about the set share
    assert sum(buckets[2:]) > 0.9 * sum(buckets)  # pauses now over 100 ms (p99 up)
    old = {k: v for k, v in minor.items()}
    old_kind = (
        {"jvm.gc.name": "G1 Old Generation"} if "jvm.gc.name" in old else {"v8js.gc.type": "major"}
    )
    majors = _gc_hist(points, name, pod, **old_kind)
    major_s = _rate_between(majors, 660, 1490)[1] if len(majors) > 1 else 0.0
    assert during_s + major_s >= 0.14  # every collection together: about the set share


def test_gc_pressure_needs_a_runtime_that_exports_gc_pauses() -> None:
    for slot in ("cart#0", "payment#0"):
        fault = Fault("gc_pressure", {"service": slot.partition("#")[0], "instance": slot}, 0, 60)
        with pytest.raises(ValueError, match="java or nodejs"):
            build_scenario("healthy", duration="5m", faults=[fault])
    with pytest.raises(ValueError, match="python or nodejs"):
        build_scenario(
            "healthy",
            duration="5m",
            faults=[Fault("noisy_rss", {"service": "checkout", "instance": "checkout#0"}, 0, 60)],
        )


def test_load_heap_growth_raises_the_floor_with_the_traffic_then_recedes() -> None:
    fault = Fault(
        "load_heap_growth",
        {"service": "catalog"},
        900,
        2100,
        {"factor": 2.5, "rise_pct_limit": 15.0, "tau_s": 240.0},
    )
    sc = build_scenario("healthy", seed=5, duration="65m", rate=10, faults=[fault])
    labels = label_lines(sc)
    kinds = [lbl["kind"] for lbl in labels[1:]]
    assert kinds == ["load_heap_growth", "traffic_spike"]
    assert labels[1]["entity"] == {"service": "catalog"} and labels[2]["entity"] == {}
    assert set(labels[1]["must_not_trigger"]) == {"memory_leak", "gc_pressure"}
    plan = sc.plan.slots["catalog#1"]
    base = plan.live_bytes(850, plan.incarnations[0].start_s)
    peak = plan.live_bytes(2100, plan.incarnations[0].start_s)
    later = plan.live_bytes(2100 + 3 * 240, plan.incarnations[0].start_s)
    assert peak - base == pytest.approx(0.15 * 1024 * MIB, rel=0.02)
    assert later - base < 0.05 * (peak - base)
    _, points = run_model(sc)
    pod = _pod(sc, "catalog#1")
    old = [
        (t, v)
        for t, v, r in series(
            points, "jvm.memory.used_after_last_gc", **{"jvm.memory.pool.name": "G1 Old Gen"}
        )
        if r["k8s.pod.name"] == pod
    ]

    def low(t0: int, t1: int) -> float:
        return min(v for t, v in old if t0 <= t < t1)

    # the post-GC old gen (its minima: the floor) rises with the load and falls back after
    assert low(1500, 2100) - low(0, 900) > 0.10 * 1024 * MIB
    assert low(3300, 3900) - low(0, 900) < 0.04 * 1024 * MIB
    # ... and allocation and young collections rise with the traffic, everywhere
    hist = _gc_hist(
        points, "jvm.gc.duration", _pod(sc, "catalog#1"), **{"jvm.gc.name": "G1 Young Generation"}
    )
    assert _rate_between(hist, 1000, 2090)[0] > 1.8 * _rate_between(hist, 100, 890)[0]
    allocated = {
        t: v
        for t, v, r in series(points, "go.memory.allocated")
        if r["k8s.pod.name"] == _pod(sc, "user-service#0")
    }
    ts = sorted(allocated)

    def alloc_rate(t0: int, t1: int) -> float:
        a, b = max(t for t in ts if t <= t0), max(t for t in ts if t <= t1)
        return (allocated[b] - allocated[a]) / (b - a)

    assert alloc_rate(1000, 2090) > 1.8 * alloc_rate(100, 890)  # another service's too


def test_noisy_rss_is_noise_only() -> None:
    fault = Fault("noisy_rss", {"service": "cart", "instance": "cart#0"}, 1200, 2400)
    sc = build_scenario("healthy", seed=2, duration="40m", rate=10, faults=[fault])
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "noisy_rss")
    assert label["truth"]["rss_noise_sigma"] == pytest.approx(0.1)
    assert set(label["must_not_trigger"]) == {"memory_leak", "gc_pressure"}
    _, points = run_model(sc)
    rss = np.array(
        [
            (t, v)
            for t, v, r in series(points, "process.runtime.cpython.memory", type="rss")
            if r["k8s.pod.name"] == _pod(sc, "cart#0")
        ],
        dtype=float,
    )
    steps = np.diff(np.log(rss[:, 1]))
    quiet, noisy = steps[(rss[1:, 0] > 120) & (rss[1:, 0] < 1200)], steps[rss[1:, 0] > 1210]
    assert np.std(noisy) > 3 * np.std(quiet)
    assert abs(np.median(rss[rss[:, 0] > 1210, 1]) / np.median(rss[rss[:, 0] < 1200, 1]) - 1) < 0.05


def test_metrics_only_mode_builds_no_spans_and_the_same_metric_points() -> None:
    extra = [parse_fault("head_sampling:*:30s:60s:0.2"), parse_fault("missing_spans:*:1m:1m:0.1")]
    full = build_scenario("demo", seed=9, duration="3m", rate=20, extra_faults=extra)
    lean = build_scenario(
        "demo", seed=9, duration="3m", rate=20, extra_faults=extra, emit_spans=False
    )
    traces, _ = run_model(full)
    lean_traces, _ = run_model(lean)
    assert traces and not lean_traces
    full_records, lean_records = list(iter_records(full)), list(iter_records(lean))
    assert {r.topic for r in lean_records} == {"otlp_metrics"}
    # request and call counts are drawn the same way, so the metric records are byte-identical
    assert lean_records == [r for r in full_records if r.topic == "otlp_metrics"]
    assert build_scenario("leak").emit_spans is False
    assert build_scenario("leak", emit_spans=True, duration="1m").emit_spans is True
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scenario", "demo", "--no-spans"])
    assert scenario_from_args(args).emit_spans is False
    assert scenario_from_args(parser.parse_args(["--scenario", "demo"])).emit_spans is True


def test_leak_preset_is_the_memory_accuracy_suite() -> None:
    sc = build_scenario("leak", seed=1)
    assert sc.duration_s == 6 * 3600 and not sc.emit_spans
    assert min(f.start_s for f in sc.faults if f.start_s > 0) >= 20 * 60
    runtime = {s.name: s.runtime for s in sc.topology.services}
    leaks = [f for f in sc.faults if f.kind == "memory_leak"]
    rates = {f.magnitude["rate_pct_limit_per_hour"]: runtime[f.entity["service"]] for f in leaks}
    assert rates[0.5] == "java" and rates[60.0] == "go" and rates[5.0] in ("python", "nodejs")
    assert rates[20.0] in ("java", "nodejs")
    assert {runtime[f.entity["service"]] for f in leaks} == {"java", "go", "python", "nodejs"}
    pressure = [f for f in sc.faults if f.kind == "gc_pressure"]
    assert sorted(runtime[f.entity["service"]] for f in pressure) == ["java", "nodejs"]
    positives = {f.entity["instance"] for f in leaks + pressure}
    assert len(positives) == len(leaks) + len(pressure)  # one positive per instance
    on_positives = [f for f in sc.faults if f.negative and f.entity.get("instance") in positives]
    assert [(f.kind, f.entity["instance"]) for f in on_positives] == [("restart", "payment#0")]
    services_with_positives = {f.entity["service"] for f in leaks + pressure}
    growth = [f for f in sc.faults if f.kind == "load_heap_growth"]
    assert growth and all(
        f.entity["service"] not in services_with_positives - {"catalog"} for f in growth
    )
    kinds = Counter(f.kind for f in sc.faults if f.negative)
    assert {"cache_warmup", "load_heap_growth", "noisy_rss", "deploy", "restart"} <= set(kinds)
    sawtooth = [f for f in sc.faults if f.kind == "gc_sawtooth"]
    for rt in ("java", "go", "python", "nodejs"):
        factors = {
            f.magnitude["alloc_factor"] for f in sawtooth if runtime[f.entity["service"]] == rt
        }
        assert factors == {1.0, 3.0}, rt  # steep and plain in every runtime
    warm = next(f for f in sc.faults if f.kind == "cache_warmup")
    assert warm.magnitude["rise_pct_limit"] >= 20
    labels = label_lines(sc)
    assert labels[0]["configured_limits"] == configured_limits(sc) == {"cart": 512 * MIB}
    assert labels[0]["emit_spans"] is False
    leak_labels = [lbl for lbl in labels[1:] if lbl["kind"] == "memory_leak"]
    assert len(leak_labels) == len(leaks)
    for lbl in leak_labels:
        truth = lbl["truth"]
        assert {
            "limit_bytes",
            "oom_threshold_bytes",
            "floor_at_onset_bytes",
            "time_to_oom_s",
            "rate_bytes_per_s",
            "rate_pct_limit_per_hour",
            "oom_kills",
            "processes",
        } <= set(truth)
        expected = (truth["oom_threshold_bytes"] - truth["floor_at_onset_bytes"]) / truth[
            "rate_bytes_per_s"
        ]
        assert truth["time_to_oom_s"] == pytest.approx(expected, abs=2)
    fast = next(lbl for lbl in leak_labels if lbl["evidence"]["slot"] == "user-service#0")
    kill = parse_time_ns(fast["truth"]["oom_kills"][0])
    assert (kill - fast["start_unix_nano"]) / 1e9 == pytest.approx(
        fast["truth"]["time_to_oom_s"], abs=2
    )
    mid = next(
        lbl
        for lbl in labels[1:]
        if lbl["kind"] == "restart" and lbl["evidence"]["slot"] == "payment#0"
    )
    assert mid["evidence"]["restart_mid_leak"] and "memory_leak" not in mid["must_not_trigger"]


def test_restart_mid_leak_resets_the_heap_and_the_leak_goes_on() -> None:
    sc = build_scenario("leak", seed=1)
    sp = sc.plan.slots["payment#0"]
    label = next(
        lbl
        for lbl in label_lines(sc)[1:]
        if lbl["kind"] == "memory_leak" and lbl["evidence"]["slot"] == "payment#0"
    )
    procs = label["truth"]["processes"]
    assert [p["reason"] for p in procs] == ["running", "restart", "oom"]
    restart_s = (procs[1]["start_unix_nano"] - sc.start_ns) / 1e9
    before = sp.live_bytes(restart_s - 1, sp.incarnation_at(restart_s - 1).start_s)
    after = sp.live_bytes(restart_s + 900, restart_s)
    assert after < before - 0.3 * sp.limit_bytes  # the heap reset ...
    rate = label["truth"]["rate_bytes_per_s"]
    grown = sp.live_bytes(restart_s + 4500, restart_s) - after
    assert grown == pytest.approx(rate * 3600, rel=0.01)  # ... and the leak goes on
    # the true time to OOM in the second process is oom_at - t
    oom_s = (procs[1]["oom_at_unix_nano"] - sc.start_ns) / 1e9
    kill_s = (parse_time_ns(label["truth"]["oom_kills"][0]) - sc.start_ns) / 1e9
    assert oom_s == kill_s
    assert oom_s - (restart_s + 900) == pytest.approx(
        (sp.oom_threshold_bytes - after) / rate, abs=2
    )


def test_leak_labels_split_where_a_deploy_changes_the_instance_id() -> None:
    sc = build_scenario(
        "healthy",
        seed=1,
        duration="60m",
        faults=[
            Fault(
                "memory_leak",
                {"service": "cart", "instance": "cart#1"},
                300,
                3600,
                {"rate_pct_limit_per_hour": 10.0},
            ),
            Fault("deploy", {"service": "cart"}, 1800, 1900),
        ],
    )
    leaks = [lbl for lbl in label_lines(sc)[1:] if lbl["kind"] == "memory_leak"]
    incs = sc.plan.slots["cart#1"].incarnations
    assert [lbl["entity"]["instance"] for lbl in leaks] == [
        incs[0].instance_id,
        incs[1].instance_id,
    ]
    assert leaks[0]["end_unix_nano"] == leaks[1]["start_unix_nano"] == incs[1].start_ns
    assert leaks[1]["truth"]["floor_at_onset_bytes"] < leaks[0]["truth"]["floor_at_onset_bytes"]
    assert leaks[0]["truth"]["limit_source"] == "configured"


def test_node_leak_floor_rises_at_the_labelled_rate() -> None:
    faults = [
        Fault(
            "gc_sawtooth",
            {"service": "frontend", "instance": "frontend#0"},
            0,
            7200,
            {"alloc_factor": 4.0},
        ),
        Fault(
            "memory_leak",
            {"service": "frontend", "instance": "frontend#0"},
            0,
            7200,
            {"rate_pct_limit_per_hour": 20.0},
        ),
    ]
    sc = build_scenario("healthy", seed=4, duration="80m", rate=10, faults=faults, emit_spans=False)
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "memory_leak")
    _, points = run_model(sc)
    old = np.array(
        [
            (t, v)
            for t, v, r in series(
                points, "v8js.memory.heap.used", **{"v8js.heap.space.name": "old_space"}
            )
            if r["k8s.pod.name"] == label["evidence"]["pod"]
        ],
        dtype=float,
    )
    floors = [
        (t0 + 300, old[(old[:, 0] >= t0) & (old[:, 0] < t0 + 600), 1].min())
        for t0 in range(600, 4800, 600)
    ]
    t, v = np.array(floors).T
    assert np.polyfit(t, v, 1)[0] == pytest.approx(label["truth"]["rate_bytes_per_s"], rel=0.2)


# -- TCP ----------------------------------------------------------------------------------


def _host_series(points: list, host: str, name: str, **match: Any) -> dict[int, float]:
    return {t: v for t, v, r in series(points, name, **match) if r.get("host.name") == host}


def test_time_wait_fault_rises_to_60s_times_close_rate() -> None:
    sc = build_scenario(
        "healthy",
        seed=7,
        duration="18m",
        rate=20,
        extra_faults=["time_wait_buildup:node-2/frontend>cart:5m:10m:1"],
    )
    traces, points = run_model(sc)
    tw = _host_series(points, "node-2", "system.network.connections", state="TIME_WAIT")
    # Measured from the spans: the faulty client's calls to cart, each now its own connection.
    calls = 0
    for trace in traces:
        for s in trace:
            res = dict(s.resource.attributes)
            if (
                res["host.name"] == "node-2"
                and s.template.service == "frontend"
                and dict(s.template.attributes).get("server.address") == "cart"
                and 360 <= (s.start_ns - sc.start_ns) / 1e9 < 900
            ):
                calls += 1
    close_rate = calls / 540.0
    before = np.mean([v for t, v in tw.items() if 60 <= t < 300])
    during = np.mean([v for t, v in tw.items() if 370 <= t < 900])
    assert during - before == pytest.approx(60 * close_rate, rel=0.1)
    after = np.mean([v for t, v in tw.items() if t >= 965])  # 60 s after the fault ends
    assert after == pytest.approx(before, rel=0.3)
    label = next(lbl for lbl in label_lines(sc) if lbl.get("kind") == "time_wait_buildup")
    assert label["truth"]["expected_time_wait"] == pytest.approx(60 * close_rate, rel=0.2)


def test_traffic_spike_raises_time_wait_in_proportion_to_opens() -> None:
    sc = build_scenario(
        "healthy", seed=8, duration="12m", rate=20, extra_faults=["traffic_spike:*:5m:5m:4"]
    )
    _, points = run_model(sc)
    tw = _host_series(points, "node-3", "node_sockstat_TCP_tw")
    opens = _host_series(points, "node-3", "node_netstat_Tcp_ActiveOpens")
    ts = sorted(opens)

    def window(lo: float, hi: float) -> tuple[float, float]:
        sel = [t for t in ts if lo <= t < hi]
        rate = (opens[sel[-1]] - opens[sel[0]]) / (sel[-1] - sel[0])
        return float(np.mean([tw[t] for t in sel])), rate

    tw_before, rate_before = window(60, 300)
    tw_during, rate_during = window(370, 600)
    assert rate_during > 1.8 * rate_before
    # TIME_WAIT holds each actively closed connection for 60 s: level = 60 s x close rate.
    assert tw_before == pytest.approx(60 * rate_before, rel=0.15)
    assert tw_during == pytest.approx(60 * rate_during, rel=0.15)
    assert tw_during / tw_before == pytest.approx(rate_during / rate_before, rel=0.15)
    # The hostmetrics series on the same host agrees with node_exporter's.
    hm = _host_series(points, "node-3", "system.network.connections", state="TIME_WAIT")
    assert np.mean(list(hm.values())) == pytest.approx(np.mean(list(tw.values())), rel=0.05)


def test_reconnect_storm_recovers_within_minutes() -> None:
    sc = build_scenario(
        "healthy",
        seed=3,
        duration="10m",
        rate=20,
        extra_faults=["deploy:catalog:3m:3m", "reconnect_storm:catalog:3m:2m:40"],
    )
    _, points = run_model(sc)
    tw = _host_series(points, "node-1", "system.network.connections", state="TIME_WAIT")
    before = np.mean([v for t, v in tw.items() if t < 180])
    peak = max(v for t, v in tw.items() if 180 <= t < 260)
    later = np.mean([v for t, v in tw.items() if t >= 330])
    assert peak > 3 * before and later < 1.5 * before


@pytest.mark.parametrize(
    ("period", "ok"),
    [(86400.0, True), (1800, True), (60, True), (59.9, False), (0, False), (-1800, False),
     (float("inf"), False), (float("nan"), False)],
)
def test_daily_period_is_validated(period: float, ok: bool) -> None:
    if ok:
        assert build_scenario("healthy", daily_period_s=period).daily_period_s == period
    else:
        with pytest.raises(ValueError, match="daily_period_s must be"):
            build_scenario("healthy", daily_period_s=period)


def test_daily_period_default_is_the_utc_day_and_compresses() -> None:
    day = build_scenario("healthy", duration="6h")
    for t in (0.0, 1234.5, 5 * 3600.0):  # the formula before the period existed, bit for bit
        hour = ((day.start_ns / 1e9 + t) % 86400.0) / 3600.0
        assert day.base_rate_at(t) == 50.0 * (
            1 + 0.25 * np.sin(2 * np.pi * (hour - 15.0 + 6.0) / 24.0))
    fast = build_scenario("healthy", daily_period_s=1800, daily_amplitude=0.5)
    # start 08:00 UTC is a multiple of 30 min: the peak (hour 15 of 24) comes 18.75 min in
    assert fast.base_rate_at(18.75 * 60) == pytest.approx(75.0)
    assert fast.base_rate_at(3.75 * 60) == pytest.approx(25.0)
    assert fast.base_rate_at(48.75 * 60) == pytest.approx(75.0)
    assert not [lb for lb in label_lines(day) if lb.get("kind") == "daily_load_curve"]


def test_timewait_preset_is_a_time_wait_accuracy_suite() -> None:
    sc = build_scenario("timewait", seed=1)
    assert sc.duration_s <= 90 * 60 and (sc.daily_period_s, sc.daily_amplitude) == (1800.0, 0.5)
    labels = label_lines(sc)[1:]
    tw = [lb for lb in labels if lb["kind"] == "time_wait_buildup"]
    assert len(tw) >= 5 and all(not lb["negative"] for lb in tw)
    styles = {h.name: h.metrics_style for h in sc.topology.hosts}
    assert {styles[lb["entity"]["host"]] for lb in tw} == {"hostmetrics", "prometheus", "both"}
    assert {lb["entity"]["host"] for lb in tw} == {"node-1", "node-2", "node-3", "node-4"}
    rates = sorted(lb["magnitude"]["close_rate_per_s"] for lb in tw)
    assert rates[0] < 5 and rates[-1] > 500 and len(set(rates)) == len(rates)
    # close-rate classes as benchmarks.scoring groups them: at least two in each
    assert sum(r < 20 for r in rates) >= 2 and sum(20 <= r < 100 for r in rates) >= 2
    assert sum(r >= 100 for r in rates) >= 2
    assert {lb["magnitude"]["connections_per_call"] for lb in tw} >= {1, 3}
    by_host: dict[str, list[dict]] = defaultdict(list)
    for lb in tw:
        assert lb["end_unix_nano"] - lb["start_unix_nano"] >= 6 * 60 * 10**9
        assert lb["magnitude"]["close_rate_per_s"] == lb["truth"]["expected_close_rate_per_s"]
        by_host[lb["entity"]["host"]].append(lb)
    for host_labels in by_host.values():
        host_labels.sort(key=lambda lb: lb["start_unix_nano"])
        for a, b in zip(host_labels, host_labels[1:], strict=False):
            assert b["start_unix_nano"] - a["end_unix_nano"] >= 8 * 60 * 10**9
    # the big ones run the ephemeral range out: 60 s x rate > ports, and ports / rate < 60 s
    big = [lb for lb in tw if lb["truth"]["time_to_exhaustion_s"] is not None]
    assert len(big) >= 2
    for lb in tw:
        t = lb["truth"]
        assert (t["time_to_exhaustion_s"] is not None) == (
            t["max_close_rate_per_s"] * 60 > t["ephemeral_ports"])
    for lb in big:
        t = lb["truth"]
        assert t["expected_time_wait"] > t["ephemeral_ports"]
        if "ramp_s" in lb["magnitude"]:  # reuse lost progressively: minutes to run out
            assert 120 < t["time_to_exhaustion_s"] < lb["magnitude"]["ramp_s"]
        else:  # a steady rate over the range runs it out within the minute
            assert 0 < t["time_to_exhaustion_s"] < 60
            assert t["time_to_exhaustion_s"] == pytest.approx(
                t["ephemeral_ports"] / t["expected_close_rate_per_s"], rel=0.1)
    assert sum("ramp_s" in lb["magnitude"] for lb in big) >= 2
    # negatives: two spikes of 3-4x, a deploy with its reconnect storm, the daily curve
    negs = [lb for lb in labels if lb["negative"]]
    assert all("time_wait_buildup" in lb["must_not_trigger"] or lb["kind"] == "deploy"
               for lb in negs)
    spikes = [lb for lb in negs if lb["kind"] == "traffic_spike"]
    assert len(spikes) >= 2 and all(3 <= lb["magnitude"]["factor"] <= 4 for lb in spikes)
    assert any(lb["kind"] == "deploy" for lb in negs)
    assert {lb["entity"]["host"] for lb in negs if lb["kind"] == "reconnect_storm"}
    daily = [lb for lb in negs if lb["kind"] == "daily_load_curve"]
    assert len(daily) >= 2 and all(lb["entity"] == {} for lb in daily)
    assert all(lb["magnitude"]["to_rate"] >= 2 * lb["magnitude"]["from_rate"] for lb in daily)
    # no buildup overlaps a spike or the deploy
    for lb in tw:
        for n in negs:
            if n["kind"] in ("traffic_spike", "deploy", "reconnect_storm"):
                assert (n["end_unix_nano"] <= lb["start_unix_nano"]
                        or lb["end_unix_nano"] <= n["start_unix_nano"]), (lb["note"], n["kind"])


def test_time_to_exhaustion_truth_matches_the_simulated_time_wait() -> None:
    # metrics only: the TCP model draws from its own stream, so TIME_WAIT is the same as with
    # spans (benchmarks.timewait_baselines relies on it too)
    sc = build_scenario("timewait", seed=1, emit_spans=False)
    _, points = run_model(sc)
    for lb in label_lines(sc)[1:]:
        if lb["kind"] != "time_wait_buildup" or lb["truth"]["time_to_exhaustion_s"] is None:
            continue
        host = lb["entity"]["host"]
        name = ("system.network.connections" if sc.topology.host(host).metrics_style
                == "hostmetrics" else "node_sockstat_TCP_tw")
        match = {"state": "TIME_WAIT"} if name == "system.network.connections" else {}
        tw = sorted(_host_series(points, host, name, **match).items())
        onset = (lb["start_unix_nano"] - sc.start_ns) / 1e9
        before = np.median([v for t, v in tw if onset - 300 <= t <= onset])
        crossed = next(t for t, v in tw if t > onset and v - before >= 28232)
        tte = lb["truth"]["time_to_exhaustion_s"]
        if "ramp_s" in lb["magnitude"]:
            # minutes of climbing: the pools' own churn and probes (not in the truth) bring
            # it a little earlier
            assert crossed - onset == pytest.approx(tte, rel=0.05), (host, crossed - onset, tte)
        else:  # samples every 10 s: the first one at or after the true exhaustion
            assert onset + tte - 2 <= crossed < onset + tte + 12, (host, crossed - onset, tte)


# -- faults and CLI -----------------------------------------------------------------------


def test_fault_specs_parse_and_bad_targets_say_what_to_fix() -> None:
    f = parse_fault("memory_leak:checkout#1:10m:1h:25")
    assert f.entity == {"service": "checkout", "instance": "checkout#1"}
    assert (f.start_s, f.end_s, f.magnitude) == (600, 4200, {"rate_pct_limit_per_hour": 25.0})
    assert parse_fault("traffic_spike:*:1m:2m:factor=3").magnitude == {"factor": 3.0}
    with pytest.raises(ValueError, match="choose one of"):
        build_scenario("healthy", extra_faults=["bottleneck_span:cart/SELECT users:1m:1m:50"])
    with pytest.raises(ValueError, match="checkout#0..checkout#1"):
        build_scenario("healthy", extra_faults=["memory_leak:checkout#7:1m:1m"])
    with pytest.raises(ValueError, match="unknown fault kind|unknown kind"):
        parse_fault("cpu_leak:cart:1m:1m")
    with pytest.raises(ValueError, match="unknown scenario override"):
        build_scenario("healthy", colour="blue")


def test_windows_past_the_end_are_clipped() -> None:
    sc = build_scenario("demo", duration="5m")
    assert all(f.end_s <= 300 for f in sc.faults)
    assert all(f.kind != "time_wait_buildup" for f in sc.faults)  # starts at 10 min


async def test_cli_dry_run_writes_labels(tmp_path: Any, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    labels = tmp_path / "l.jsonl"
    args = parser.parse_args(
        [
            "--scenario",
            "healthy",
            "--mode",
            "replay",
            "--duration",
            "20s",
            "--rate",
            "10",
            "--dry-run",
            "--labels",
            str(labels),
            "--fault",
            "restart:cart#0:5s:10s",
        ]
    )
    await run(args)
    out = capsys.readouterr().out
    assert "dry run" in out and "spans/s" in out
    lines = [json.loads(x) for x in labels.read_text().splitlines()]
    assert lines[0]["start"] == "2026-01-05T08:00:00Z"
    assert [x["kind"] for x in lines[1:]] == ["restart"]


class _FakeProducer:
    """Records sends; stands in for AIOKafkaProducer so the writer runs without a broker."""

    instances: list[_FakeProducer] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[tuple] = []
        _FakeProducer.instances.append(self)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def flush(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, timestamp_ms: int | None = None
    ) -> Any:
        import asyncio

        self.sent.append((topic, key, value, timestamp_ms))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_writer_sends_every_record_with_event_timestamps(monkeypatch: Any) -> None:
    monkeypatch.setattr(writer_mod, "AIOKafkaProducer", _FakeProducer)
    sc = build_scenario("healthy", seed=1, duration="3s", rate=10, start="now")
    records = list(iter_records(sc))
    stats = await writer_mod.write_records(
        records, {"bootstrap_servers": "x:9092"}, mode="live", speed=50.0, progress=lambda _: None
    )
    prod = _FakeProducer.instances[-1]
    assert prod.kwargs["compression_type"] is None and prod.kwargs["linger_ms"] == 20
    assert [(t, k, v, ts) for t, k, v, ts in prod.sent] == [
        (r.topic, r.key, r.value, r.timestamp_ms) for r in records
    ]
    assert stats.records == len(records)
    assert stats.spans == sum(r.items for r in records if r.topic == "otlp_spans")

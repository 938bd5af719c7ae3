"""``analyze``'s pure parts: time ranges, the collector's aggregates and bounds, the report
(ranking, error origins, the dependency tree, which findings it shows), and the file formats
the Collector's file exporter writes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.analyze import report
from pipeline.analyze.collect import Collector, Reservoir
from pipeline.analyze.sources import FileStats, SourceError, classify, read_files, read_messages
from pipeline.analyze.timerange import parse_duration_ns, parse_time_ns, time_range_ns
from pipeline.findings import Finding
from pipeline.records import OpTime, Resource, TraceSample
from pipeline.servicegraph import bucket

MS = 1_000_000
T0 = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z


# -- time ranges ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ns"), [
    ("500ms", 500 * MS), ("1h30m", 5400 * 10**9), ("90", 90 * 10**9), ("2d", 172800 * 10**9),
    ("1.5s", 1500 * MS),
])
def test_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("bad", ["", "fast", "5x", "1h fast", "m"])
def test_bad_durations_say_how_to_write_one(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ns(bad)


def test_times_absolute_and_relative() -> None:
    now = T0 + 3600 * 10**9
    assert parse_time_ns("2026-01-05T08:00:00Z", now) == T0
    assert parse_time_ns("2026-01-05T09:00:00+01:00", now) == T0
    assert parse_time_ns("now", now) == now
    assert parse_time_ns("now-1h", now) == parse_time_ns("-1h", now) == T0
    assert parse_time_ns("1h ago", now) == T0
    with pytest.raises(ValueError, match="offset"):
        parse_time_ns("2026-01-05T08:00:00", now)
    with pytest.raises(ValueError, match="not a time"):
        parse_time_ns("yesterday", now)


def test_ranges() -> None:
    now = T0
    assert time_range_ns(None, None, None, now) == (None, None)
    assert time_range_ns(None, None, None, now, default_since="1h") == (now - 3600 * 10**9, now)
    assert time_range_ns(None, "-10m", None, now) == (now - 600 * 10**9, None)
    with pytest.raises(ValueError, match="not both"):
        time_range_ns("1h", "-2h", None, now)
    with pytest.raises(ValueError, match="after"):
        time_range_ns(None, "-1h", "-2h", now)


# -- the collector ----------------------------------------------------------------------------
def sample(tid: str, service: str, end_ms: int, duration_ms: int, ops: list[OpTime],
           edges: list[list] | None = None) -> TraceSample:
    return TraceSample(tid, service, T0 + end_ms * MS, duration_ms * MS, "", ops, edges or [])


def op(name: str, cp_ms: float, self_ms: float | None = None, detail: str = "",
       **kw: object) -> OpTime:
    return OpTime(name, detail, int(cp_ms * MS), int((cp_ms if self_ms is None else self_ms) * MS),
                  1, {}, **kw)


def edge(client: str, server: str, ms: float, failed: int = 0, ctype: str = "") -> list:
    b = bucket(int(ms * MS))
    return [client, server, ctype, 1, failed, [b, 1], [b, 1], int(ms * MS), int(ms * MS)]


def test_reservoir_is_bounded_and_reproducible() -> None:
    a, b = Reservoir(cap=50, seed=3), Reservoir(cap=50, seed=3)
    for v in range(10_000):
        a.add(v)
        b.add(v)
    assert len(a.values) == 50 and a.seen == 10_000 and a.values == b.values
    assert 2_000 < a.quantile(0.5) < 8_000
    assert Reservoir().quantile(0.5) is None


def test_range_service_and_slow_share() -> None:
    c = Collector(service="api", from_ns=T0, to_ns=T0 + 60_000 * MS, threshold_ns=500 * MS)
    c.add_samples([
        sample("a" * 32, "api", -1, 100, [op("GET /", 100)]),  # before the range
        sample("b" * 32, "api", 60_000, 100, [op("GET /", 100)]),  # at its end: excluded
        sample("c" * 32, "web", 10, 900, [op("GET /", 900)]),  # another service
        sample("d" * 32, "api", 10, 900, [op("GET /", 100), op("SELECT", 800, detail="db")]),
        sample("e" * 32, "api", 20, 100, [op("GET /", 60), op("SELECT", 40, detail="db")]),
    ])
    assert (c.traces, c.slow_traces, c.samples) == (2, 1, 2)
    assert c.overflow["samples_before_range"] == 1 and c.overflow["samples_after_range"] == 1
    assert set(c.ops) == {("api", "GET /", ""), ("api", "SELECT", "db")}
    doc = report.build(c, [], top=5)
    first = doc["slowest_by_critical_path"][0]
    assert (first["operation"], first["detail"], first["calls"]) == ("SELECT", "db", 2)
    assert first["share_of_slow_trace_time"] == pytest.approx(800 / 900, abs=1e-3)
    assert first["exemplar_trace_ids"] == ["d" * 32, "e" * 32]  # slowest first
    assert doc["traces"]["over_threshold"] == 1


def test_a_trace_is_counted_once_over_its_services() -> None:
    c = Collector()
    c.add_samples([sample("a" * 32, "web", 1, 100, [op("GET /", 50)]),
                   sample("a" * 32, "api", 1, 100, [op("GET /x", 50, errors=1)])])
    assert (c.traces, c.failed_traces, len(c.ops)) == (1, 1, 2)


def test_error_origins_keep_causes_exemplars_and_the_first_surfaced_evidence() -> None:
    c = Collector(service="api")
    absorbed = {"exception.type": "Timeout", "chain": ["api: GET db"], "absorbed_by": "api: x"}
    surfaced = {"exception.type": "PgError", "exception.message": "deadlock",
                "chain": ["api: SELECT", "api: GET /"], "reached_root": True,
                "http.status_code": 500}
    c.add_samples([
        sample("1" * 32, "api", 1, 10, [op("SELECT", 5, absorbed=1, error=absorbed)]),
        sample("2" * 32, "api", 2, 10, [op("SELECT", 5, errors=1, error=surfaced)]),
        sample("3" * 32, "api", 3, 10, [op("SELECT", 5)]),
        sample("4" * 32, "api", 4, 10, [op("GET /", 5)]),
    ])
    doc = report.build(c, [])
    [o] = doc["error_origins"]
    assert (o["operation"], o["errors"], o["absorbed"], o["calls"]) == ("SELECT", 1, 1, 3)
    assert o["error_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert o["exception"] == {"type": "PgError", "message": "deadlock"}
    assert o["chain"] == ["api: SELECT", "api: GET /"] and o["reached_root"] is True
    assert o["http_status_code"] == 500
    assert o["causes"] == {"PgError: deadlock": 1, "Timeout": 1}
    assert o["exemplar_trace_ids"] == ["2" * 32]
    text = report.render(doc)
    assert "PgError: deadlock" in text and "api: SELECT ← api: GET /" in text


def test_caps_count_what_does_not_fit() -> None:
    c = Collector(max_operations=1, max_edges=1, max_names=1)
    c.add_samples([sample("1" * 32, "api", 1, 10, [op("A", 1), op("B", 1)],
                          [edge("api", "db", 1), edge("api", "cache", 1)])])
    c.add_resources([Resource("api", "i1", "h1", "", {}), Resource("api", "i2", "h1", "", {})])
    assert len(c.ops) == 1 and len(c.edges) == 1 and c.instances == {"api": {"i1"}}
    assert c.overflow["operations_not_tracked"] == 1
    assert c.overflow["edges_not_tracked"] == 1
    assert c.overflow["names_not_tracked"] == 1
    limits = report.build(c, [])["limits"]
    assert limits["operations_not_tracked"] == 1
    assert "Limits reached" in report.render(report.build(c, []))


def test_dependency_tree_has_callers_above_and_callees_below() -> None:
    c = Collector(service="api", from_ns=T0, to_ns=T0 + 120_000 * MS)
    samples = []
    for i in range(10):
        samples.append(sample(f"{i:032x}", "web", 1000 + i, 50, [op("GET /", 10)],
                              [edge("user", "web", 50), edge("web", "api", 30)]))
        samples.append(sample(f"{i:032x}", "api", 1000 + i, 50, [op("GET /x", 10)],
                              [edge("api", "orders", 20, failed=int(i < 2), ctype="database")]))
    c.add_samples(samples)
    doc = report.build(c, [])
    deps = doc["dependencies"]
    assert [(e["client"], e["server"]) for e in deps["callers"]] == [("web", "api")]
    [db] = deps["callees"]
    assert (db["server"], db["calls"], db["failed"]) == ("orders", 10, 2)
    assert db["calls_per_minute"] == 5.0 and db["error_rate"] == 0.2
    assert 16 < db["client_p95_ms"] <= 21  # (the upper bound of the 20 ms bucket)
    lines = report.render(doc).splitlines()
    start = lines.index("  called by:")
    tree = lines[start:start + 6]
    assert tree[1].startswith("  └─ web") and tree[2].startswith("     └─ user")
    assert tree[3] == "  api"
    assert tree[4].startswith("  └─ orders (database)") and "err  20.0%" in tree[4]


def test_map_without_a_service_starts_from_the_users() -> None:
    c = Collector()
    c.add_samples([sample("1" * 32, "web", 1, 50, [op("GET /", 10)],
                          [edge("user", "web", 50), edge("web", "api", 30)])])
    text = report.render(report.build(c, []))
    i = text.index("  user\n")
    assert "  └─ web" in text[i:] and "     └─ api" in text[i:]


def finding(kind: str, entity: dict, start_s: float, resolved_s: float | None = None,
            status: str | None = None) -> Finding:
    return Finding(kind, status or ("resolved" if resolved_s is not None else "firing"),
                   "warning", entity, T0 + int(start_s * 1e9), T0 + int(start_s * 1e9),
                   f"{kind} on {entity}", {}, [], "test", "1",
                   None if resolved_s is None else T0 + int(resolved_s * 1e9))


def test_findings_grouped_for_the_service_and_its_hosts() -> None:
    fs = [
        finding("error_origin", {"service": "api", "operation": "SELECT"}, 10),
        finding("bottleneck_span", {"service": "web", "operation": "GET api",
                                    "peer_service": "api"}, 20),  # a caller's, naming api
        finding("memory_leak", {"service": "api", "instance": "api-1"}, 30),
        finding("gc_pressure", {"service": "web", "instance": "web-1"}, 30),
        finding("time_wait_buildup", {"host": "node-1"}, 40),
        finding("time_wait_buildup", {"host": "node-9"}, 40),
        finding("bottleneck_span", {"service": "api", "operation": "old"}, -600, -300),
        finding("bottleneck_span", {"service": "api", "operation": "late"}, 4000),
    ]
    opened = finding("latency_regression", {"service": "api"}, 50)
    fs += [opened, finding("latency_regression", {"service": "api"}, 50, 90)]  # same id
    got = report.select_findings(fs, "api", {"node-1"}, T0, T0 + 3600 * 10**9)
    kinds = {g: [(f["kind"], f["status"]) for f in v] for g, v in got.items()}
    assert kinds == {
        "error_origin": [("error_origin", "firing")],
        "latency": [("bottleneck_span", "firing"), ("latency_regression", "resolved")],
        "runtime": [("memory_leak", "firing")],
        "connections": [("time_wait_buildup", "firing")],
        "other": [("gc_pressure", "firing"), ("time_wait_buildup", "firing")],
    }
    assert got["connections"][0]["entity"] == {"host": "node-1"}


# -- files as the Collector's file exporter writes them ---------------------------------------
def trace_request(n: int = 2, start_s: int = 0) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "api"
    for i in range(n):
        s = rs.scope_spans.add().spans.add()
        s.trace_id, s.span_id, s.name = bytes([i + 1] * 16), bytes([i + 1] * 8), "GET /"
        s.kind = 2
        s.start_time_unix_nano = T0 + (start_s + i) * 10**9
        s.end_time_unix_nano = s.start_time_unix_nano + 5 * MS
    return req


def metrics_request(at_s: int = 0) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "api"
    m = rm.scope_metrics.add().metrics.add()
    m.name = "process.memory.usage"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_int = T0 + at_s * 10**9, 1 << 20
    return req


def span_json(start_s: int = 0) -> bytes:
    t = T0 + start_s * 10**9
    return (b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":'
            b'{"stringValue":"api"}}]},"scopeSpans":[{"scope":{},"spans":[{"traceId":"'
            + b"ab" * 16 + b'","spanId":"' + b"cd" * 8 + b'","name":"GET /","kind":2,'
            b'"startTimeUnixNano":"' + str(t).encode() + b'","endTimeUnixNano":"'
            + str(t + 5 * MS).encode() + b'"}]}]}]}')


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(m)) + m for m in messages)


def test_proto_file_is_length_prefixed_and_holds_either_signal(tmp_path: Path) -> None:
    path = tmp_path / "out.pb"
    t, m = trace_request().SerializeToString(), metrics_request().SerializeToString()
    path.write_bytes(framed(t, m, t))
    got = list(read_messages(path))
    assert [(enc, v) for enc, v, _ in got] == [("otlp_proto", t), ("otlp_proto", m),
                                               ("otlp_proto", t)]
    assert sum(size for _, _, size in got) == path.stat().st_size
    assert [classify(v, "otlp_proto")[0] for _, v, _ in got] == ["spans", "metrics", "spans"]
    assert classify(t, "otlp_proto") == ("spans", T0 + 5 * MS, T0 + 10**9 + 5 * MS)


def test_json_lines_gzip_and_time_filter(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.gz"
    metric = b'{"resourceMetrics":[]}'
    with gzip.open(path, "wb") as f:
        f.write(span_json(0) + b"\n\n" + metric + b"\n" + span_json(600) + b"\n")
    assert [v for _, v, _ in read_messages(path)] == [span_json(0), metric, span_json(600)]
    stats = FileStats()
    recs = list(read_files([path], T0 + 300 * 10**9, None, stats))
    assert [(r.signal, r.encoding, r.timestamp_ms) for r in recs] == [
        ("spans", "otlp_json", (T0 + 600 * 10**9 + 5 * MS) // MS)]
    assert (stats.requests, stats.skipped_out_of_range, stats.empty) == (3, 1, 1)


def test_files_are_merged_in_time(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.pb"
    a.write_bytes(span_json(0) + b"\n" + span_json(20) + b"\n")
    b.write_bytes(framed(metrics_request(10).SerializeToString()))
    recs = list(read_files([a, b], None, None, FileStats()))
    assert [r.signal for r in recs] == ["spans", "metrics", "spans"]


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    z = tmp_path / "z.pb"
    z.write_bytes(framed(b"\x28\xb5\x2f\xfd" + b"\0" * 20))
    with pytest.raises(SourceError, match="zstd -d"):
        list(read_messages(z))
    cut = tmp_path / "cut.pb"
    cut.write_bytes(framed(trace_request().SerializeToString())[:-3])
    with pytest.raises(SourceError, match="truncated"):
        list(read_messages(cut))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello world, this is not OTLP at all")
    with pytest.raises(SourceError, match="not a Collector file exporter file"):
        list(read_messages(text))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}\n')
    stats = FileStats()
    assert list(read_files([bad], None, None, stats)) == []
    assert sum(stats.unreadable.values()) == 1


def test_text_fits_100_columns_whatever_the_names() -> None:
    long = "x" * 150
    c = Collector(service="api", threshold_ns=1)
    c.add_samples([sample("1" * 32, "api", 1, 10**6, [
        op(long, 5, detail=long, errors=10**6, error={"exception.type": long,
                                                      "exception.message": long,
                                                      "chain": [long] * 8})],
        [edge("api", long, 5), edge(long, "api", 5)])])
    c.add_resources([Resource("api", long, long, "", {})])
    fs = [finding("error_origin", {"service": "api", "operation": long}, 0)]
    fs[0].summary = long * 3
    doc = report.build(c, fs, run={"source": long, "records": 10**9, "notes": [long],
                                   "stopped_early": long, "dead_letters": {long: 1}})
    text = report.render(doc)
    assert max(len(line) for line in text.splitlines()) <= 100, text


def test_relative_times_on_the_command_line() -> None:
    from pipeline.__main__ import _relative_times

    assert _relative_times(["analyze", "--from", "-2h", "--to", "-30m", "--since", "1h",
                            "--file", "-"]) == [
        "analyze", "--from=-2h", "--to=-30m", "--since", "1h", "--file", "-"]

"""Floods of valid, high-cardinality telemetry, and a canary fault to run alongside. Pure.

Each generator yields Kafka records ``(signal, value, timestamp_ms)``: ``signal`` is
``"spans"`` or ``"metrics"``, ``value`` one OTLP protobuf ``Export*ServiceRequest`` as the
Collector's kafka exporter writes it, ``timestamp_ms`` the record's timestamp (its newest event
time: the exporter sends within a second or two of collection). Every generator takes its size
``n`` (run it scaled down) and a start time in ns, and spreads the flood over ``duration_s`` of
event time, records in time order, so windows and traces close as the flood goes on.

Full sizes (issue 16): ``span_names(1_000_000)``, ``services(100_000)``,
``instances(100_000)``, ``hosts(10_000)``, ``huge_records(n)`` and ``big_trace(15_000)`` /
``big_trace(100_000)``. ``canary`` is a known memory leak the memory detector finds (checked
in ``tests/unit/test_floods.py``), and ``canary_steady`` a healthy span stream to watch for
stalls. No Kafka here: ``benchmarks/flood_run.py`` runs them.

    >>> recs = list(span_names(300, batch=100))
    >>> [r[0] for r in recs], len(recs[0][1]) > 0, recs[0][2] <= recs[-1][2]
    (['spans', 'spans', 'spans'], True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

FloodRecord = tuple[str, bytes, int]

S = 10**9
MIB = 1024 * 1024
#: 2026-01-05T08:00:00Z, as the test fixtures use
T0 = 1_767_600_000 * S
SERVER, CLIENT = 2, 3
CUMULATIVE = 2
#: What the worker accepts (``MAX_RECORD_BYTES``' default, 8 MiB): huge records stay under it.
MAX_RECORD_BYTES = 8 * MIB


def _attrs(target: Any, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        kv = target.add()
        kv.key = k
        if isinstance(v, bool):
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        else:
            kv.value.string_value = str(v)


def _ids(i: int, salt: int) -> tuple[bytes, bytes]:
    """A trace id and a root span id, distinct per ``(i, salt)``, never all zero."""
    tid = (salt << 64 | i | 1 << 127).to_bytes(16, "big")
    return tid, (i + 1 | salt << 40 | 1 << 63).to_bytes(8, "big")


def _ms(t_ns: int) -> int:
    return t_ns // 1_000_000


def _span(ss: Any, trace_id: bytes, span_id: bytes, name: str, start: int, dur: int,
          parent: bytes = b"", kind: int = SERVER, attrs: dict[str, Any] | None = None) -> None:
    s = ss.spans.add()
    s.trace_id, s.span_id, s.name, s.kind = trace_id, span_id, name, kind
    if parent:
        s.parent_span_id = parent
    s.start_time_unix_nano, s.end_time_unix_nano = start, start + dur
    if attrs:
        _attrs(s.attributes, attrs)


def _root_spans(n: int, name_of: Any, service_of: Any, start_ns: int, duration_s: float,
                batch: int, salt: int) -> Iterator[FloodRecord]:
    """``n`` one-span traces (a root SERVER span each), ``batch`` to a record, evenly over
    ``duration_s``; ``name_of(i)`` / ``service_of(i)`` name span ``i``."""
    step = int(duration_s * S / max(n, 1))
    for lo in range(0, n, batch):
        req = ExportTraceServiceRequest()
        by_service: dict[str, Any] = {}
        t = start_ns
        for i in range(lo, min(n, lo + batch)):
            svc = service_of(i)
            ss = by_service.get(svc)
            if ss is None:
                rs = req.resource_spans.add()
                _attrs(rs.resource.attributes, {"service.name": svc,
                                                "service.instance.id": f"{svc}-1"})
                ss = by_service[svc] = rs.scope_spans.add()
                ss.scope.name = "flood"
            t = start_ns + i * step
            tid, sid = _ids(i, salt)
            _span(ss, tid, sid, name_of(i), t, 20_000_000, attrs={"http.request.method": "GET"})
        yield "spans", req.SerializeToString(), _ms(t + 20_000_000)


def span_names(n: int, start_ns: int = T0, duration_s: float = 180.0, services: int = 10,
               batch: int = 500) -> Iterator[FloodRecord]:
    """``n`` distinct span names (an un-templated URL in the span name), over ``services``."""
    return _root_spans(n, lambda i: f"GET /items/{i:08d}", lambda i: f"svc-{i % services}",
                       start_ns, duration_s, batch, 1)


def services(n: int, start_ns: int = T0, duration_s: float = 180.0, batch: int = 500
             ) -> Iterator[FloodRecord]:
    """``n`` distinct services (a per-pod service name), one operation each."""
    return _root_spans(n, lambda i: "GET /health", lambda i: f"flood-svc-{i:07d}",
                       start_ns, duration_s, batch, 2)


def _metrics_request(rows: list[tuple[dict[str, Any], list[tuple[Any, ...]]]]) -> bytes:
    """rows: (resource attributes, [(name, unit, kind, value, attrs, start_ns, t_ns)]);
    kind: gauge, updown (a non-monotonic cumulative Sum), counter, histogram."""
    req = ExportMetricsServiceRequest()
    for resource, points in rows:
        rm = req.resource_metrics.add()
        _attrs(rm.resource.attributes, resource)
        sm = rm.scope_metrics.add()
        sm.scope.name = "flood"
        for name, unit, kind, value, attrs, start, t in points:
            m = sm.metrics.add()
            m.name, m.unit = name, unit
            if kind == "gauge":
                dp = m.gauge.data_points.add()
            elif kind == "histogram":  # value: (count, sum, bounds, bucket counts)
                m.histogram.aggregation_temporality = CUMULATIVE
                dp = m.histogram.data_points.add()
                dp.start_time_unix_nano = start
                dp.count, dp.sum = value[0], value[1]
                dp.explicit_bounds.extend(value[2])
                dp.bucket_counts.extend(value[3])
            else:  # "updown" (a non-monotonic cumulative Sum) or "counter"
                m.sum.aggregation_temporality = CUMULATIVE
                m.sum.is_monotonic = kind == "counter"
                dp = m.sum.data_points.add()
                dp.start_time_unix_nano = start
            dp.time_unix_nano = t
            if kind == "histogram":
                pass
            elif isinstance(value, int):
                dp.as_int = value
            else:
                dp.as_double = value
            _attrs(dp.attributes, attrs)
    return req.SerializeToString()


def _gc(n_minor: int, n_major: int, start: int, t: int) -> list[tuple[Any, ...]]:
    """``jvm.gc.duration`` histograms (cumulative), minor and major, as the Java agent sends."""
    bounds = [0.01, 0.1, 1.0, 10.0]
    return [("jvm.gc.duration", "s", "histogram", (n, 0.01 * n, bounds, [n, 0, 0, 0, 0]),
             {"jvm.gc.name": gc_name, "jvm.gc.action": action}, start, t)
            for n, gc_name, action in ((n_minor, "G1 Young Generation", "end of minor GC"),
                                       (n_major, "G1 Old Generation", "end of major GC"))]


def _jvm_points(old_after: int, t: int, start: int, gcs: int) -> list[tuple[Any, ...]]:
    """A JVM's runtime metrics as the OpenTelemetry Java agent sends them (heap pools, limit,
    committed, collections)."""
    heap = {"jvm.memory.type": "heap"}
    old = {**heap, "jvm.memory.pool.name": "G1 Old Gen"}
    eden = {**heap, "jvm.memory.pool.name": "G1 Eden Space"}
    return [
        ("jvm.memory.used", "By", "updown", old_after + 8 * MIB, old, start, t),
        ("jvm.memory.used", "By", "updown", 30 * MIB, eden, start, t),
        ("jvm.memory.used_after_last_gc", "By", "updown", old_after, old, start, t),
        ("jvm.memory.limit", "By", "updown", 1024 * MIB, old, start, t),
        ("jvm.memory.committed", "By", "updown", 512 * MIB, old, start, t),
        *_gc(gcs, 0, start, t),
    ]


def instances(n: int, start_ns: int = T0, duration_s: float = 180.0, exports: int = 3,
              batch: int = 50) -> Iterator[FloodRecord]:
    """Heap and GC metrics from ``n`` JVM instances of 10 services (autoscaled pods), each
    exporting ``exports`` times over ``duration_s``; ``batch`` instances to a record."""
    interval = int(duration_s * S / exports)
    per_record = int(interval / max(1, -(-n // batch)))
    proc_start = start_ns - 3600 * S
    for e in range(exports):
        for k, lo in enumerate(range(0, n, batch)):
            t = start_ns + e * interval + k * per_record
            rows = []
            for i in range(lo, min(n, lo + batch)):
                svc = f"svc-{i % 10}"
                rows.append(({"service.name": svc, "service.instance.id": f"{svc}-{i:07d}",
                              "host.name": f"node-{i % 500}", "telemetry.sdk.language": "java",
                              "process.pid": 1000 + i % 30000},
                             _jvm_points(200 * MIB + (i % 97) * MIB, t, proc_start, 100 * e)))
            yield "metrics", _metrics_request(rows), _ms(t)


def hosts(n: int, start_ns: int = T0, duration_s: float = 180.0, exports: int = 3,
          batch: int = 50) -> Iterator[FloodRecord]:
    """TCP connection counts by state from ``n`` hosts (the hostmetrics receiver's
    ``system.network.connections``), each exporting ``exports`` times over ``duration_s``."""
    interval = int(duration_s * S / exports)
    per_record = int(interval / max(1, -(-n // batch)))
    for e in range(exports):
        for k, lo in enumerate(range(0, n, batch)):
            t = start_ns + e * interval + k * per_record
            rows = []
            for i in range(lo, min(n, lo + batch)):
                pts = [("system.network.connections", "{connection}", "updown", count,
                        {"protocol": "tcp", "state": state}, start_ns - 3600 * S, t)
                       for state, count in (("ESTABLISHED", 120 + i % 50), ("TIME_WAIT", 300),
                                            ("LISTEN", 12), ("CLOSE_WAIT", 1))]
                rows.append(({"host.name": f"flood-host-{i:06d}", "os.type": "linux"}, pts))
            yield "metrics", _metrics_request(rows), _ms(t)


def huge_records(n: int, start_ns: int = T0, duration_s: float = 60.0,
                 max_bytes: int = MAX_RECORD_BYTES) -> Iterator[FloodRecord]:
    """``n`` valid records just under ``max_bytes``, alternately spans (traces of 20 spans
    whose attributes carry 2 KiB SQL statements) and metrics (JVM instances, 2,000 a record
    at most: big resources pad the rest)."""
    step = int(duration_s * S / max(n, 1))
    budget = max_bytes - 64 * 1024
    sql = "SELECT " + ", ".join(f"column_{c}" for c in range(200)) + " FROM t"
    sql = (sql * (2048 // len(sql) + 1))[:2048]
    for r in range(n):
        t = start_ns + r * step
        if r % 2 == 0:
            req = ExportTraceServiceRequest()
            rs = req.resource_spans.add()
            _attrs(rs.resource.attributes, {"service.name": "huge-svc",
                                            "service.instance.id": "huge-svc-1"})
            ss = rs.scope_spans.add()
            ss.scope.name = "flood"
            i = 0
            while req.ByteSize() < budget - 256 * 1024:
                for _ in range(100):  # 5 traces of 20 spans
                    tid, root = _ids(r * 1_000_000 + i // 20, 3)
                    j = i % 20
                    _span(ss, tid, root if j == 0 else (j + 1).to_bytes(8, "big"),
                          "SELECT orders" if j else "GET /report", t + j * 1000, 5_000_000,
                          parent=b"" if j == 0 else root, kind=SERVER if j == 0 else CLIENT,
                          attrs={"db.statement": sql} if j else None)
                    i += 1
            yield "spans", req.SerializeToString(), _ms(t + 5_000_000)
        else:
            rows = []
            size = 0
            i = 0
            while size < budget - 64 * 1024 and i < 2000:
                svc = f"huge-{i % 10}"
                attrs = {"service.name": svc, "service.instance.id": f"{svc}-{r}-{i}",
                         "telemetry.sdk.language": "java", "process.command_line": sql}
                rows.append((attrs, _jvm_points(300 * MIB, t, t - 3600 * S, 10)))
                size += len(sql) + 700
                i += 1
            yield "metrics", _metrics_request(rows), _ms(t)


def big_trace(n_spans: int, start_ns: int = T0, per_record: int = 512, salt: int = 4
              ) -> Iterator[FloodRecord]:
    """One trace of ``n_spans`` spans (a batch job fanning out), exported ``per_record`` at a
    time as an SDK's batch span processor does (512 by default); the root comes last, as it
    ends last. Its spans cover ``n_spans`` ms of event time."""
    tid, root = _ids(0, salt)
    end = start_ns + n_spans * 1_000_000
    for lo in range(1, n_spans, per_record):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        _attrs(rs.resource.attributes, {"service.name": "batch-job",
                                        "service.instance.id": "batch-job-1"})
        ss = rs.scope_spans.add()
        ss.scope.name = "flood"
        t = start_ns
        for i in range(lo, min(n_spans, lo + per_record)):
            t = start_ns + i * 1_000_000
            _span(ss, tid, (i + 1 | 1 << 62).to_bytes(8, "big"), "process item", t, 800_000,
                  parent=root, kind=CLIENT, attrs={"peer.service": "store"})
        yield "spans", req.SerializeToString(), _ms(t + 800_000)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _attrs(rs.resource.attributes, {"service.name": "batch-job",
                                    "service.instance.id": "batch-job-1"})
    ss = rs.scope_spans.add()
    ss.scope.name = "flood"
    _span(ss, tid, root, "run batch", start_ns, end - start_ns)
    yield "spans", req.SerializeToString(), _ms(end)


def canary(start_ns: int = T0, duration_s: float = 3600.0, interval_s: float = 10.0,
           pct_limit_per_min: float = 1.0) -> Iterator[FloodRecord]:
    """A known fault: one JVM (``canary``/``canary-1``) whose post-GC old generation grows
    ``pct_limit_per_min`` of its 1 GiB limit a minute from the start, with a minor and a
    major collection every 3 minutes. The memory detector reports it as a ``memory_leak``
    within about 30 minutes of event time (``tests/unit/test_floods.py``)."""
    limit = 1024 * MIB
    proc_start = start_ns - 86400 * S
    gc = [0, 0]
    gc_sum = [0.0, 0.0]
    heap = {"jvm.memory.type": "heap"}
    old = {**heap, "jvm.memory.pool.name": "G1 Old Gen"}
    for k in range(int(duration_s / interval_s)):
        t_s = (k + 1) * interval_s
        t = start_ns + int(t_s * S)
        live = 0.3 * limit + pct_limit_per_min / 100 * limit * t_s / 60
        gc[0] += 3
        gc_sum[0] += 0.03
        if k % 18 == 17:
            gc[1] += 1
            gc_sum[1] += 0.2
        pts: list[tuple[Any, ...]] = [
            ("jvm.memory.used", "By", "updown", int(live + 4 * MIB), old, proc_start, t),
            ("jvm.memory.used_after_last_gc", "By", "updown", int(live), old, proc_start, t),
            ("jvm.memory.limit", "By", "updown", limit, old, proc_start, t),
            ("jvm.memory.committed", "By", "updown", limit, old, proc_start, t),
        ]
        pts += [("jvm.gc.duration", "s", "histogram",
                 (gc[i], gc_sum[i], [0.01, 0.1, 1.0], [gc[i], 0, 0, 0]),
                 {"jvm.gc.name": gc_name, "jvm.gc.action": action}, proc_start, t)
                for i, gc_name, action in ((0, "G1 Young Generation", "end of minor GC"),
                                           (1, "G1 Old Generation", "end of major GC"))]
        rows = [({"service.name": "canary", "service.instance.id": "canary-1",
                  "host.name": "canary-node", "telemetry.sdk.language": "java",
                  "process.pid": 4242, "service.version": "1.0.0"}, pts)]
        yield "metrics", _metrics_request(rows), _ms(t)


def canary_steady(start_ns: int = T0, duration_s: float = 600.0, per_s: float = 10.0,
                  first: int = 0) -> Iterator[FloodRecord]:
    """A healthy span stream: ``per_s`` two-span traces a second, one record a second (the
    stream whose progress shows whether a flood elsewhere stalls it); trace ids count from
    ``first`` (a caller writing it a second at a time passes the traces sent so far)."""
    k = first
    for sec in range(int(duration_s)):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        _attrs(rs.resource.attributes, {"service.name": "steady",
                                        "service.instance.id": "steady-1"})
        ss = rs.scope_spans.add()
        ss.scope.name = "flood"
        t = start_ns + sec * S
        for j in range(int(per_s)):
            tid, root = _ids(k, 5)
            k += 1
            ts = t + int(j * S / per_s)
            _span(ss, tid, root, "GET /steady", ts, 30_000_000)
            _span(ss, tid, (k | 1 << 61).to_bytes(8, "big"), "SELECT", ts + 1_000_000,
                  20_000_000, parent=root, kind=CLIENT, attrs={"peer.service": "db"})
        yield "spans", req.SerializeToString(), _ms(t + S)


FLOODS = {
    "span_names": span_names, "services": services, "instances": instances, "hosts": hosts,
    "huge_records": huge_records, "big_trace": big_trace,
}
FULL_SIZES = {"span_names": 1_000_000, "services": 100_000, "instances": 100_000,
              "hosts": 10_000, "huge_records": 20, "big_trace": 100_000}

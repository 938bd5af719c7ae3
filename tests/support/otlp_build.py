"""Build OTLP requests for tests, as protobuf and as spec-conformant OTLP/JSON."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

T0 = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z


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
            kv.value.string_value = v


def span_request(
    spans: list[dict[str, Any]], resource: dict[str, Any] | None = None
) -> ExportTraceServiceRequest:
    """spans: dicts with trace_id/span_id/parent (bytes), name, kind, start, end, attrs, status."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _attrs(rs.resource.attributes, resource if resource is not None else {"service.name": "svc"})
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    for d in spans:
        s = ss.spans.add()
        s.trace_id = d.get("trace_id", bytes(range(1, 17)))
        s.span_id = d["span_id"]
        if d.get("parent"):
            s.parent_span_id = d["parent"]
        s.name = d.get("name", "op")
        s.kind = d.get("kind", 2)
        s.start_time_unix_nano = d.get("start", T0)
        s.end_time_unix_nano = d.get("end", T0 + 10**8)
        s.status.code = d.get("status", 0)
        _attrs(s.attributes, d.get("attrs", {}))
    return req


def metric_request(resource: dict[str, Any] | None = None) -> ExportMetricsServiceRequest:
    """One metric of each shape: gauge, cumulative sum, delta sum, histogram."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, resource if resource is not None else {
        "service.name": "cart", "service.instance.id": "cart-1", "host.name": "node-1"})
    sm = rm.scope_metrics.add()
    g = sm.metrics.add()
    g.name, g.unit = "jvm.memory.used", "By"
    dp = g.gauge.data_points.add()
    dp.time_unix_nano, dp.as_int = T0, 123_456_789
    _attrs(dp.attributes, {"jvm.memory.type": "heap", "jvm.memory.pool.name": "G1 Old Gen"})
    s = sm.metrics.add()
    s.name, s.unit = "system.network.connections", "{connection}"
    s.sum.aggregation_temporality, s.sum.is_monotonic = 2, False
    dp = s.sum.data_points.add()
    dp.time_unix_nano, dp.start_time_unix_nano, dp.as_int = T0, T0 - 10**12, 4200
    _attrs(dp.attributes, {"protocol": "tcp", "state": "TIME_WAIT"})
    d = sm.metrics.add()
    d.name, d.unit = "cpython.gc.collections", "{collection}"
    d.sum.aggregation_temporality, d.sum.is_monotonic = 1, True
    dp = d.sum.data_points.add()
    dp.time_unix_nano, dp.start_time_unix_nano, dp.as_double = T0, T0 - 10**10, 3.0
    h = sm.metrics.add()
    h.name, h.unit = "jvm.gc.duration", "s"
    h.histogram.aggregation_temporality = 2
    dp = h.histogram.data_points.add()
    dp.time_unix_nano, dp.start_time_unix_nano = T0, T0 - 10**12
    dp.count, dp.sum, dp.min, dp.max = 10, 0.5, 0.01, 0.2
    dp.explicit_bounds.extend([0.01, 0.1, 1.0])
    dp.bucket_counts.extend([1, 6, 3, 0])
    return req


def _hex_ids(node: Any) -> Any:
    """MessageToDict writes bytes as base64; OTLP/JSON requires hex for trace and span ids."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                out[k] = base64.b64decode(v).hex()
            else:
                out[k] = _hex_ids(v)
        return out
    if isinstance(node, list):
        return [_hex_ids(x) for x in node]
    return node


def to_otlp_json(req: Any) -> bytes:
    """OTLP/JSON as the spec writes it: lowerCamelCase, hex ids, enums as integers."""
    doc = json_format.MessageToDict(req, use_integers_for_enums=True)
    return orjson.dumps(_hex_ids(doc))

"""Model events -> Kafka record values, as the OpenTelemetry Collector's kafka exporter writes them.

Two encodings (the exporter's ``otlp_proto`` and ``otlp_json``) and two span keyings:

- ``keyed``: one record per trace, key = the trace id as 32 lowercase hex characters, as with
  ``partition_traces_by_id: true`` (the exporter splits each batch by trace id).
- ``unkeyed``: batches of many traces and key None, as a batch processor sends them.

Within a request spans are grouped by resource, then by instrumentation scope.

Per-span work is kept small: the constant part of each span (name, kind, attributes) is
serialised once per operation and merged into each span, resources and scopes are serialised
once per incarnation. For OTLP/JSON, ``json_format.MessageToJson`` cannot be used for spans: it
writes ids as base64, while OTLP/JSON requires hex (and it is slow), so span JSON is built
directly, following the OTLP/JSON rules: lowerCamelCase keys, hex ``traceId``/``spanId``, 64-bit
integers as decimal strings, enums as integers. Metrics have no id fields and are few, so their
JSON comes from ``MessageToDict`` with integer enums.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pipeline.simulate.events import (
    GAUGE,
    HISTOGRAM,
    SCHEMA_URL,
    ErrorInfo,
    MetricPoint,
    ResourceInfo,
    ScopeInfo,
    SpanEvent,
    SpanTemplate,
)
from pipeline.simulate.model import Simulator
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.topology import Attrs

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
MAX_POINTS_PER_RECORD = 2000


class SimRecord(NamedTuple):
    """One Kafka record to produce. ``items`` counts the spans or metric points inside."""

    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    items: int = 0


def any_value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def any_value_json(v: Any) -> dict[str, Any]:
    """OTLP/JSON AnyValue: 64-bit integers are strings, the rest are JSON natives."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def key_values(attrs: Attrs) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs]


def key_values_json(attrs: Attrs) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value_json(v)} for k, v in attrs]


def _group(events: Iterable[Any], scope_of: Any) -> dict[ResourceInfo, dict[ScopeInfo, list]]:
    groups: dict[ResourceInfo, dict[ScopeInfo, list]] = {}
    for ev in events:
        by_scope = groups.get(ev.resource)
        if by_scope is None:
            by_scope = groups[ev.resource] = {}
        scope = scope_of(ev)
        lst = by_scope.get(scope)
        if lst is None:
            lst = by_scope[scope] = []
        lst.append(ev)
    return groups


class Encoder:
    """Encodes spans and metric points; caches per resource, scope and span template."""

    def __init__(self, encoding: str = "otlp_proto") -> None:
        if encoding not in ("otlp_proto", "otlp_json"):
            raise ValueError(f"encoding must be otlp_proto or otlp_json, got {encoding!r}")
        self.encoding = encoding
        self._resource: dict[ResourceInfo, bytes] = {}
        self._scope: dict[ScopeInfo, bytes] = {}
        self._template: dict[SpanTemplate, bytes] = {}
        self._resource_json: dict[ResourceInfo, dict[str, Any]] = {}
        self._attrs_json: dict[SpanTemplate, list[dict[str, Any]]] = {}
        self._status_kv: dict[int, KeyValue] = {}
        self._status_json: dict[int, dict[str, Any]] = {}
        self._error: dict[ErrorInfo, tuple[KeyValue, list[KeyValue]]] = {}
        self._error_json: dict[ErrorInfo, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def spans(self, spans: Iterable[SpanEvent]) -> bytes:
        if self.encoding == "otlp_json":
            return self._spans_json(spans)
        return self._spans_proto(spans)

    def metrics(self, points: Iterable[MetricPoint]) -> bytes:
        req = self.metrics_request(points)
        if self.encoding == "otlp_json":
            return orjson.dumps(MessageToDict(req, use_integers_for_enums=True))
        return req.SerializeToString()

    # -- spans ----------------------------------------------------------------------------

    def _resource_bytes(self, res: ResourceInfo) -> bytes:
        b = self._resource.get(res)
        if b is None:
            b = self._resource[res] = Resource(
                attributes=key_values(res.attributes)
            ).SerializeToString()
        return b

    def _scope_bytes(self, scope: ScopeInfo) -> bytes:
        b = self._scope.get(scope)
        if b is None:
            b = self._scope[scope] = InstrumentationScope(
                name=scope.name, version=scope.version
            ).SerializeToString()
        return b

    def _template_bytes(self, tmpl: SpanTemplate) -> bytes:
        b = self._template.get(tmpl)
        if b is None:
            b = self._template[tmpl] = Span(
                name=tmpl.name,
                kind=tmpl.kind,  # type: ignore[arg-type]
                attributes=key_values(tmpl.attributes),
            ).SerializeToString()
        return b

    def _status_attr(self, code: int) -> KeyValue:
        kv = self._status_kv.get(code)
        if kv is None:
            kv = self._status_kv[code] = KeyValue(
                key="http.response.status_code", value=AnyValue(int_value=code)
            )
        return kv

    def _error_parts(self, err: ErrorInfo) -> tuple[KeyValue, list[KeyValue]]:
        """``error.type``, and the ``exception`` event's attributes (empty: no exception)."""
        parts = self._error.get(err)
        if parts is None:
            parts = self._error[err] = (
                KeyValue(key="error.type", value=AnyValue(string_value=err.error_type)),
                key_values(_exception_attrs(err)),
            )
        return parts

    def _error_parts_json(self, err: ErrorInfo) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        parts = self._error_json.get(err)
        if parts is None:
            parts = self._error_json[err] = (
                {"key": "error.type", "value": {"stringValue": err.error_type}},
                key_values_json(_exception_attrs(err)),
            )
        return parts

    def _spans_proto(self, spans: Iterable[SpanEvent]) -> bytes:
        req = ExportTraceServiceRequest()
        template_bytes, status_attr = self._template_bytes, self._status_attr
        for res, by_scope in _group(spans, lambda ev: ev.template.scope).items():
            rs = req.resource_spans.add(schema_url=SCHEMA_URL)
            rs.resource.MergeFromString(self._resource_bytes(res))
            for scope, evs in by_scope.items():
                ss = rs.scope_spans.add()
                ss.scope.MergeFromString(self._scope_bytes(scope))
                add = ss.spans.add
                for ev in evs:
                    s = add(
                        trace_id=ev.trace_id,
                        span_id=ev.span_id,
                        parent_span_id=ev.parent_span_id,
                        start_time_unix_nano=ev.start_ns,
                        end_time_unix_nano=ev.end_ns,
                    )
                    s.MergeFromString(template_bytes(ev.template))
                    if ev.http_status:
                        s.attributes.append(status_attr(ev.http_status))
                    if ev.error is not None:
                        error_type, event_attrs = self._error_parts(ev.error)
                        s.attributes.append(error_type)
                        if event_attrs:
                            s.events.add(
                                time_unix_nano=_exception_time(ev), name="exception"
                            ).attributes.extend(event_attrs)
                    if ev.status:
                        s.status.code = ev.status  # type: ignore[assignment]
                        if ev.status_message:
                            s.status.message = ev.status_message
        return req.SerializeToString()

    def _span_json(self, ev: SpanEvent) -> dict[str, Any]:
        tmpl = ev.template
        attrs = self._attrs_json.get(tmpl)
        if attrs is None:
            attrs = self._attrs_json[tmpl] = key_values_json(tmpl.attributes)
        if ev.http_status:
            sa = self._status_json.get(ev.http_status)
            if sa is None:
                sa = self._status_json[ev.http_status] = {
                    "key": "http.response.status_code",
                    "value": {"intValue": str(ev.http_status)},
                }
            attrs = [*attrs, sa]
        events = None
        if ev.error is not None:
            error_type, event_attrs = self._error_parts_json(ev.error)
            attrs = [*attrs, error_type]
            if event_attrs:
                events = [
                    {
                        "timeUnixNano": str(_exception_time(ev)),
                        "name": "exception",
                        "attributes": event_attrs,
                    }
                ]
        d: dict[str, Any] = {"traceId": ev.trace_id.hex(), "spanId": ev.span_id.hex()}
        if ev.parent_span_id:
            d["parentSpanId"] = ev.parent_span_id.hex()
        d["name"] = tmpl.name
        d["kind"] = tmpl.kind
        d["startTimeUnixNano"] = str(ev.start_ns)
        d["endTimeUnixNano"] = str(ev.end_ns)
        if attrs:
            d["attributes"] = attrs
        if events:
            d["events"] = events
        if ev.status:
            d["status"] = (
                {"message": ev.status_message, "code": ev.status}
                if ev.status_message
                else {"code": ev.status}
            )
        return d

    def _resource_doc(self, res: ResourceInfo) -> dict[str, Any]:
        d = self._resource_json.get(res)
        if d is None:
            d = self._resource_json[res] = {"attributes": key_values_json(res.attributes)}
        return d

    def _spans_json(self, spans: Iterable[SpanEvent]) -> bytes:
        doc = {
            "resourceSpans": [
                {
                    "resource": self._resource_doc(res),
                    "scopeSpans": [
                        {
                            "scope": _scope_json(scope),
                            "spans": [self._span_json(ev) for ev in evs],
                        }
                        for scope, evs in by_scope.items()
                    ],
                    "schemaUrl": SCHEMA_URL,
                }
                for res, by_scope in _group(spans, lambda ev: ev.template.scope).items()
            ]
        }
        return orjson.dumps(doc)

    # -- metrics --------------------------------------------------------------------------

    def metrics_request(self, points: Iterable[MetricPoint]) -> ExportMetricsServiceRequest:
        req = ExportMetricsServiceRequest()
        for res, by_scope in _group(points, lambda p: p.scope).items():
            rm = req.resource_metrics.add(schema_url=SCHEMA_URL)
            rm.resource.MergeFromString(self._resource_bytes(res))
            for scope, pts in by_scope.items():
                sm = rm.scope_metrics.add()
                sm.scope.MergeFromString(self._scope_bytes(scope))
                metrics: dict[tuple[str, str], Any] = {}
                for p in pts:
                    m = metrics.get((p.name, p.kind))
                    if m is None:
                        m = metrics[(p.name, p.kind)] = sm.metrics.add(
                            name=p.name, unit=p.unit, description=p.description
                        )
                    _add_point(m, p)
        return req


def _exception_attrs(err: ErrorInfo) -> Attrs:
    if not err.exception_type:
        return ()
    return (
        ("exception.type", err.exception_type),
        ("exception.message", err.message),
        ("exception.stacktrace", err.stacktrace),
    )


def _exception_time(ev: SpanEvent) -> int:
    """The exception is recorded as it escapes, just before the span ends."""
    return max(ev.start_ns, ev.end_ns - 20_000)


def _scope_json(scope: ScopeInfo) -> dict[str, str]:
    return {"name": scope.name, "version": scope.version} if scope.version else {"name": scope.name}


def _add_point(m: Any, p: MetricPoint) -> None:
    if p.kind == GAUGE:
        dp = m.gauge.data_points.add()
    elif p.kind == HISTOGRAM:
        m.histogram.aggregation_temporality = CUMULATIVE
        dp = m.histogram.data_points.add(
            count=p.count,
            sum=p.total,
            min=p.minimum,
            max=p.maximum,
            explicit_bounds=p.bounds,
            bucket_counts=p.bucket_counts,
        )
    else:
        m.sum.aggregation_temporality = CUMULATIVE
        m.sum.is_monotonic = p.monotonic
        dp = m.sum.data_points.add()
    if p.attributes:
        dp.attributes.extend(key_values(p.attributes))
    if p.start_ns:
        dp.start_time_unix_nano = p.start_ns
    dp.time_unix_nano = p.time_ns
    if p.kind != HISTOGRAM:
        if isinstance(p.value, int):
            dp.as_int = p.value
        else:
            dp.as_double = p.value


def iter_records(scenario: Scenario) -> Iterator[SimRecord]:
    """Every Kafka record of the scenario, in event-time order; each record's timestamp is the
    event time (ms) of the tick that produced it, which is no earlier than its spans' ends
    (modulo injected clock skew) and equal to its metric points' scrape time."""
    enc = Encoder(scenario.encoding)
    keyed = scenario.keying == "keyed"
    spans_topic, metrics_topic = scenario.spans_topic, scenario.metrics_topic
    max_spans = scenario.max_spans_per_record
    for tick in Simulator(scenario).ticks():
        ts_ms = tick.time_ns // 1_000_000
        if keyed:
            for trace in tick.traces:
                yield SimRecord(
                    spans_topic,
                    trace[0].trace_id.hex().encode(),
                    enc.spans(trace),
                    ts_ms,
                    len(trace),
                )
        else:
            batch: list[SpanEvent] = []
            for trace in tick.traces:
                if batch and len(batch) + len(trace) > max_spans:
                    yield SimRecord(spans_topic, None, enc.spans(batch), ts_ms, len(batch))
                    batch = []
                batch.extend(trace)
            if batch:
                yield SimRecord(spans_topic, None, enc.spans(batch), ts_ms, len(batch))
        pts = tick.metrics
        for i in range(0, len(pts), MAX_POINTS_PER_RECORD):
            chunk = pts[i : i + MAX_POINTS_PER_RECORD]
            yield SimRecord(metrics_topic, None, enc.metrics(chunk), ts_ms, len(chunk))

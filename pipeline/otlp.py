"""Decode OTLP export requests (protobuf or JSON) into compact records. Pure: no Kafka, no clock.

Input is exactly what the OpenTelemetry Collector's kafka exporter writes: one
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` per Kafka record, as protobuf
bytes (``otlp_proto``) or OTLP/JSON (``otlp_json``: lowerCamelCase keys, hex trace and span ids,
64-bit integers as strings; snake_case keys and enum names are accepted too, as the protobuf JSON
mapping allows).

A record that cannot be read at all raises ``DecodeError``. A readable record with some invalid
items (a bad id, a zero timestamp...) follows OTLP's partial-success rule: valid items are
returned, invalid ones are counted in ``Decoded.rejected`` with the first error, and the caller
dead-letters the whole original record flagged as partial.

    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ...     ExportTraceServiceRequest)
    >>> req = ExportTraceServiceRequest()
    >>> span = req.resource_spans.add().scope_spans.add().spans.add()
    >>> span.trace_id, span.span_id, span.name = bytes(range(16)), bytes(range(8)), "GET /"
    >>> span.start_time_unix_nano = 1_700_000_000 * 10**9
    >>> span.end_time_unix_nano = span.start_time_unix_nano + 500_000_000
    >>> out = decode_spans(req.SerializeToString())
    >>> out.items[0].resource.service, out.items[0].duration_ns, out.rejected
    ('unknown_service', 500000000, 0)
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.records import (
    STATUS_ERROR,
    TEMPORALITY_UNSPECIFIED,
    UNKNOWN_SERVICE,
    MetricPoint,
    Resource,
    Routed,
    Segment,
    SourceRecord,
    Span,
    decode_forwarded,
)

OTLP_PROTO, OTLP_JSON = "otlp_proto", "otlp_json"

# Span attributes detectors use (resource naming, operation refinement, attribution). Everything
# else is dropped at decode so that open traces stay small. Extend with ``span_attributes=``.
SPAN_ATTRIBUTES = frozenset(
    {
        "http.route", "http.request.method", "http.method", "http.response.status_code",
        "http.status_code", "url.path", "db.system", "db.system.name", "db.name",
        "db.namespace", "db.operation", "db.operation.name", "db.collection.name", "db.sql.table",
        "peer.service", "server.address", "server.port", "net.peer.name", "net.peer.port",
        "network.peer.address", "rpc.system", "rpc.service", "rpc.method",
        "messaging.system", "messaging.destination.name", "error.type",
        "rpc.grpc.status_code",
        *("http.url", "url.full"),  # read for the destination only, then dropped (URL_KEYS)
    }
)
#: URL attributes (older and current HTTP conventions): a client span that names its
#: destination only by URL (urllib, requests and older instrumentations) gets the
#: ``server.address`` and ``server.port`` the current conventions derive from it, and the URL
#: itself is dropped (its path and query may carry ids and secrets, and it is long).
URL_KEYS = ("url.full", "http.url")
#: Set from the span's first ``exception`` event (the SDKs' ``record_exception``): its
#: ``exception.type`` and ``exception.message``, the message cut to ``MAX_MESSAGE`` characters
#: (messages can be long and carry data; the stack trace is never kept). ``STATUS_MESSAGE``:
#: the status description of an ERROR span, cut the same way.
EXCEPTION_TYPE, EXCEPTION_MESSAGE, STATUS_MESSAGE = (
    "exception.type", "exception.message", "status.message")
EXCEPTION_KEYS = frozenset((EXCEPTION_TYPE, EXCEPTION_MESSAGE))
MAX_MESSAGE = 200
# Resource attributes kept beside the identity fields (restart and runtime detection).
RESOURCE_ATTRIBUTES = frozenset(
    {
        "service.namespace", "service.version", "deployment.environment",
        "deployment.environment.name", "k8s.namespace.name", "k8s.node.name",
        "k8s.deployment.name", "container.id", "process.pid", "process.executable.name",
        "process.runtime.name", "process.runtime.version", "telemetry.sdk.language",
        "process.start_time", "host.id", "server.address",
    }
)

# 2000-01-01T00:00:00Z: anything earlier is a zero or uninitialised clock, not telemetry.
MIN_VALID_TIME_NS = 946_684_800 * 10**9
# Without a record timestamp, reject times past 2100 as far-future.
MAX_VALID_TIME_NS = 4_102_444_800 * 10**9

#: Every reason a record can be dead-lettered for. Bounded: these are metric label values.
REASONS = (
    "empty_value", "record_too_large", "wrong_encoding", "wrong_signal", "invalid_protobuf",
    "invalid_json", "not_otlp", "invalid_trace_id", "invalid_span_id", "invalid_timestamp",
    "timestamp_out_of_range", "invalid_metric", "internal_error", "unroutable",
)


class DecodeError(Exception):
    """A record, or an item in it, is not valid OTLP. ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Limits:
    """Validation limits. ``reference_time_ns`` (the Kafka record's timestamp, when the producer
    set one) bounds far-future timestamps; without it only a fixed sanity bound applies."""

    max_record_bytes: int = 8 * 1024 * 1024
    max_future_skew_ns: int = 3600 * 10**9
    reference_time_ns: int | None = None
    span_attributes: frozenset[str] = SPAN_ATTRIBUTES

    def max_time_ns(self) -> int:
        if self.reference_time_ns and self.reference_time_ns > MIN_VALID_TIME_NS:
            return self.reference_time_ns + self.max_future_skew_ns
        return MAX_VALID_TIME_NS


DEFAULT_LIMITS = Limits()


#: Why a valid point is left out without dead-lettering its record (metric label values):
#: ``no_recorded_value`` — OTLP's DataPointFlags.FLAG_NO_RECORDED_VALUE, the staleness marker
#: the Collector's prometheus receiver writes when a target disappears; ``non_finite`` — a NaN
#: or infinite value or sum. The rest of the record is fine, so it is not a dead letter.
DROP_REASONS = ("no_recorded_value", "non_finite")
FLAG_NO_RECORDED_VALUE = 1


@dataclass(slots=True)
class Decoded:
    """Valid items of one record, plus how many were rejected and why (first error), and how
    many valid points were left out on purpose (``dropped``, by ``DROP_REASONS``)."""

    items: list[Any] = field(default_factory=list)
    rejected: int = 0
    first_error: DecodeError | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def reject(self, error: DecodeError) -> None:
        self.rejected += 1
        if self.first_error is None:
            self.first_error = error

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def keep_point(self, p: MetricPoint, flags: int) -> None:
        """Append ``p`` unless it carries no value (dropped and counted) or its histogram is
        malformed (rejected: partial success)."""
        if flags & FLAG_NO_RECORDED_VALUE:
            self.drop("no_recorded_value")
            return
        if p.value is not None and not math.isfinite(p.value):
            self.drop("non_finite")
            return
        if p.sum is not None and not math.isfinite(p.sum):
            self.drop("non_finite")
            return
        if p.bucket_counts and len(p.bucket_counts) != len(p.bounds or ()) + 1:
            self.reject(DecodeError(
                "invalid_metric",
                f"histogram {p.name!r} has {len(p.bucket_counts)} bucket counts for "
                f"{len(p.bounds or ())} bounds (OTLP needs one more count than bounds)",
            ))
            return
        if p.bounds is not None and any(
            not math.isfinite(b) or (i and b <= p.bounds[i - 1]) for i, b in enumerate(p.bounds)
        ):
            self.reject(DecodeError(
                "invalid_metric", f"histogram {p.name!r} bounds are not finite and increasing"
            ))
            return
        self.items.append(p)


# ---------------------------------------------------------------------------------------------
# Entry points


def decode_spans(
    value: bytes | None, encoding: str = OTLP_PROTO, limits: Limits = DEFAULT_LIMITS
) -> Decoded:
    """Decode one ``otlp_spans`` record into ``Span`` records."""
    if encoding == OTLP_JSON:
        doc = _load_json(value, limits, "resourceSpans", "resource_spans", "resourceMetrics")
        return _spans_from_json(doc, limits)
    req = _parse_proto(value, limits, ExportTraceServiceRequest)
    return _spans_from_proto(req, limits)


def decode_metrics(
    value: bytes | None, encoding: str = OTLP_PROTO, limits: Limits = DEFAULT_LIMITS
) -> Decoded:
    """Decode one ``otlp_metrics`` record into ``MetricPoint`` records."""
    if encoding == OTLP_JSON:
        doc = _load_json(value, limits, "resourceMetrics", "resource_metrics", "resourceSpans")
        return _points_from_json(doc, limits)
    req = _parse_proto(value, limits, ExportMetricsServiceRequest)
    return _points_from_proto(req, limits)


@dataclass(slots=True)
class Failure:
    """A forwarded source record, or items of it, that could not be decoded: to dead-letter.
    ``rejected``: how many items were, when the rest of the record was decoded."""

    record: SourceRecord
    error: BaseException
    reason: str
    rejected: int | None = None


@dataclass(slots=True)
class ForwardedSpans:
    """The span stage's decode of forwarded source records (input keyed by trace id)."""

    routed: Routed
    failures: list[Failure]
    dropped: dict[str, int]


def decode_forwarded_spans(
    data: bytes, encoding: str, max_record_bytes: int, max_future_skew_ns: int,
    seen: Callable[[tuple[str, int, int, int]], bool] = lambda src: False,
) -> ForwardedSpans:
    """Decode a message of forwarded span records (``records.encode_forwarded``) into one
    routed batch, each record a segment that states
    no watermark but its Kafka timestamp (the receiver keeps each source's clock). A record the
    receiver has applied already (``seen``: forwarded again after a restart of ingest) is
    neither decoded nor dead-lettered again; one that cannot be decoded is a ``Failure`` and a
    segment of no items, so that it too is applied once."""
    recs, partitions = decode_forwarded(data)
    items: list[Any] = []
    segments: list[Segment] = []
    failures: list[Failure] = []
    dropped: dict[str, int] = {}
    for r in recs:
        src = (r.topic, r.partition, r.offset, 0)
        if seen(src):
            continue
        ts = r.timestamp_ms
        record_ns = ts * 1_000_000 if ts and ts > 0 else None
        limits = Limits(max_record_bytes=max_record_bytes,
                        max_future_skew_ns=max_future_skew_ns, reference_time_ns=record_ns)
        count = 0
        try:
            decoded = decode_spans(r.value, encoding, limits)
        except DecodeError as exc:
            failures.append(Failure(r, exc, exc.reason))
        except Exception as exc:  # a decoder bug must not stop the stage or lose the record
            failures.append(Failure(r, exc, "internal_error"))
        else:
            if decoded.rejected:
                err = decoded.first_error
                assert err is not None
                failures.append(Failure(r, err, err.reason, decoded.rejected))
            for reason, n in decoded.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
            items += decoded.items
            count = len(decoded.items)
        segments.append(Segment(src, count, None, record_ns))
    return ForwardedSpans(Routed(None, items, None, partitions=partitions or None,
                                 segments=segments), failures, dropped)


def _check_size(value: bytes | None, limits: Limits) -> bytes:
    if not value:
        raise DecodeError("empty_value", "record value is empty (or a tombstone)")
    if len(value) > limits.max_record_bytes:
        raise DecodeError(
            "record_too_large",
            f"record is {len(value)} bytes, over the {limits.max_record_bytes}-byte limit",
        )
    return value


def _is_json(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _is_text(value: bytes) -> bool:
    # Protobuf with random trace ids is almost never valid UTF-8; JSON always is.
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_proto(value: bytes | None, limits: Limits, cls: type) -> Any:
    value = _check_size(value, limits)
    req = cls()
    try:
        req.ParseFromString(value)
    except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
        if _is_json(value):
            raise DecodeError(
                "wrong_encoding",
                "record looks like JSON but the topic is configured for otlp_proto "
                "(set the topic's encoding to otlp_json if its producers write JSON)",
            ) from None
        raise DecodeError("invalid_protobuf", f"not a valid {cls.__name__}: {exc}") from None
    return req


def _load_json(
    value: bytes | None, limits: Limits, key: str, snake_key: str, other_signal: str
) -> dict[str, Any]:
    value = _check_size(value, limits)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if not _is_text(value):
            raise DecodeError(
                "wrong_encoding",
                "record is not JSON but the topic is configured for otlp_json "
                "(set the topic's encoding to otlp_proto if its producers write protobuf)",
            ) from None
        raise DecodeError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("not_otlp", f"OTLP/JSON must be an object, got {type(doc).__name__}")
    if key not in doc and snake_key not in doc:
        if other_signal in doc:
            raise DecodeError(
                "wrong_signal", f"record holds {other_signal!r}, expected {key!r} on this topic"
            )
        raise DecodeError(
            "not_otlp", f"JSON object has no {key!r}: keys are {sorted(doc)[:8]}"
        )
    return doc


# ---------------------------------------------------------------------------------------------
# Resources and attributes


def _any_value_proto(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [_any_value_proto(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value_proto(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return None


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


def _int64(x: Any) -> int:
    """OTLP/JSON 64-bit integers (strings or numbers); outside 64 bits is not OTLP."""
    value = int(x)
    if not INT64_MIN <= value <= UINT64_MAX:
        raise ValueError(f"integer {value} does not fit 64 bits")
    return value


def _attrs_json(kvs: Any, keep: frozenset[str] | None = None) -> dict[str, Any]:
    out = {}
    for kv in kvs or ():
        key = kv.get("key")
        if not isinstance(key, str):
            raise ValueError(f"attribute key {key!r} is not a string")
        if keep is None or key in keep:
            out[key] = _any_value_json(kv.get("value"))
    return out


def _any_value_json(v: Any) -> Any:
    if not isinstance(v, dict) or not v:
        return None
    for k, x in v.items():
        if k in ("stringValue", "string_value"):
            return x
        if k in ("intValue", "int_value"):
            return _int64(x)
        if k in ("doubleValue", "double_value"):
            return float(x)
        if k in ("boolValue", "bool_value"):
            return bool(x)
        if k in ("arrayValue", "array_value"):
            return [_any_value_json(e) for e in (x or {}).get("values", [])]
        if k in ("kvlistValue", "kvlist_value"):
            return _attrs_json((x or {}).get("values", []))
        if k in ("bytesValue", "bytes_value"):
            return base64.b64decode(x).hex()
    return None


def _make_resource(attrs: dict[str, Any]) -> Resource:
    service = attrs.get("service.name")
    if not service:
        # OpenTelemetry's rule for a missing service.name.
        exe = attrs.get("process.executable.name")
        service = f"{UNKNOWN_SERVICE}:{exe}" if exe else UNKNOWN_SERVICE
    host = str(attrs.get("host.name") or "")
    pod = str(attrs.get("k8s.pod.name") or "")
    instance = attrs.get("service.instance.id")
    if not instance:
        if pod:
            ns = attrs.get("k8s.namespace.name")
            instance = f"{ns}/{pod}" if ns else pod
        elif host and attrs.get("process.pid") is not None:
            instance = f"{host}:{attrs['process.pid']}"
        else:
            instance = host
    kept = {k: v for k, v in attrs.items() if k in RESOURCE_ATTRIBUTES}
    return Resource(str(service), str(instance), host, pod, kept)


#: The resource attributes ``_make_resource`` reads: only these are decoded (SDKs send many more,
#: process.command_args and the like).
_RESOURCE_READ = frozenset({
    "service.name", "process.executable.name", "host.name", "k8s.pod.name",
    "service.instance.id", "k8s.namespace.name", "process.pid",
}) | frozenset(RESOURCE_ATTRIBUTES)


def _resource_proto(res: Any) -> Resource:
    return _make_resource({kv.key: _any_value_proto(kv.value) for kv in res.attributes
                           if kv.key in _RESOURCE_READ})


def _resource_json(res: Any) -> Resource:
    return _make_resource(_attrs_json((res or {}).get("attributes")))


def _get(d: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    v = d.get(camel)
    if v is None:
        v = d.get(snake, default)
    return v


# ---------------------------------------------------------------------------------------------
# Spans


def _check_times(start: int, end: int, limits: Limits, what: str) -> DecodeError | None:
    if start < MIN_VALID_TIME_NS or end < MIN_VALID_TIME_NS:
        return DecodeError(
            "invalid_timestamp", f"{what} has a zero or pre-2000 timestamp ({start}, {end})"
        )
    if end < start:
        return DecodeError("invalid_timestamp", f"{what} ends before it starts ({start} > {end})")
    if end > limits.max_time_ns():
        return DecodeError(
            "timestamp_out_of_range",
            f"{what} timestamp {end} is too far in the future "
            f"(limit {limits.max_time_ns()}, from the record timestamp plus the allowed skew)",
        )
    return None


def _span(
    trace_id: str, span_id: str, parent: str, name: str, kind: int, start: int, end: int,
    status: int, attrs: dict[str, Any], resource: Resource, limits: Limits,
) -> Span | DecodeError:
    if len(trace_id) != 32 or trace_id == "0" * 32:
        return DecodeError("invalid_trace_id", f"trace id {trace_id!r} is not 16 non-zero bytes")
    if len(span_id) != 16 or span_id == "0" * 16:
        return DecodeError("invalid_span_id", f"span id {span_id!r} is not 8 non-zero bytes")
    if parent and len(parent) != 16:
        return DecodeError("invalid_span_id", f"parent span id {parent!r} is not 8 bytes")
    err = _check_times(start, end, limits, f"span {span_id}")
    if err is not None:
        return err
    return Span(trace_id, span_id, parent, name, kind, start, end, status, attrs, resource)


def _exception_proto(events: Any, attrs: dict[str, Any]) -> None:
    """The first ``exception`` event's type and bounded message, into ``attrs``."""
    for ev in events:
        if ev.name == "exception":
            for kv in ev.attributes:
                if kv.key in EXCEPTION_KEYS:
                    value = _any_value_proto(kv.value)
                    if value is not None:
                        attrs[kv.key] = str(value)[:MAX_MESSAGE]
            return


def _exception_json(events: Any, attrs: dict[str, Any]) -> None:
    for ev in events:
        if isinstance(ev, dict) and ev.get("name") == "exception":
            for key, value in _attrs_json(ev.get("attributes"), EXCEPTION_KEYS).items():
                if value is not None:
                    attrs[key] = str(value)[:MAX_MESSAGE]
            return


def _server_from_url(attrs: dict[str, Any]) -> None:
    """Replace a span's URL by the ``server.address`` / ``server.port`` it names (unless the
    span sets them itself); the URL is never kept.

    >>> a = {"http.url": "http://user:pw@127.0.0.1:8080/order?id=7"}
    >>> _server_from_url(a); a
    {'server.address': '127.0.0.1', 'server.port': 8080}
    >>> a = {"url.full": "https://[::1]/x", "server.address": "api"}
    >>> _server_from_url(a); a
    {'server.address': 'api'}
    """
    url = None
    for key in URL_KEYS:
        value = attrs.pop(key, None)
        if url is None and isinstance(value, str):
            url = value
    if url is None or "server.address" in attrs:
        return
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if host:
        attrs["server.address"] = host
        if port is not None and "server.port" not in attrs:
            attrs["server.port"] = port


def _spans_from_proto(req: ExportTraceServiceRequest, limits: Limits) -> Decoded:
    out = Decoded()
    keep = limits.span_attributes
    for rs in req.resource_spans:
        resource = _resource_proto(rs.resource)
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {
                    kv.key: _any_value_proto(kv.value) for kv in s.attributes if kv.key in keep
                }
                if "http.url" in attrs or "url.full" in attrs:
                    _server_from_url(attrs)
                parent = s.parent_span_id.hex()
                if parent == "0000000000000000":
                    parent = ""
                status = s.status.code
                if status == STATUS_ERROR and s.status.message:
                    attrs[STATUS_MESSAGE] = s.status.message[:MAX_MESSAGE]
                if s.events:
                    _exception_proto(s.events, attrs)
                item = _span(
                    s.trace_id.hex(), s.span_id.hex(), parent, s.name, s.kind,
                    s.start_time_unix_nano, s.end_time_unix_nano, status, attrs,
                    resource, limits,
                )
                if isinstance(item, DecodeError):
                    out.reject(item)
                else:
                    out.items.append(item)
    return out


_SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_TEMPORALITIES = {
    "AGGREGATION_TEMPORALITY_UNSPECIFIED": 0, "AGGREGATION_TEMPORALITY_DELTA": 1,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": 2,
}


def _enum(v: Any, names: dict[str, int]) -> int:
    if isinstance(v, str):
        return names.get(v, 0) if not v.isdigit() else _int64(v)
    return _int64(v or 0)


def _hex_id(v: Any) -> str:
    """OTLP/JSON ids are hex strings; normalise case. Anything else fails the length check."""
    if not isinstance(v, str):
        return ""
    try:
        binascii.unhexlify(v)
    except (binascii.Error, ValueError):
        return "!" + v  # keeps the original visible in the error, never a valid length
    return v.lower()


def _spans_from_json(doc: dict[str, Any], limits: Limits) -> Decoded:
    out = Decoded()
    keep = limits.span_attributes
    try:
        for rs in _get(doc, "resourceSpans", "resource_spans", []) or []:
            resource = _resource_json(rs.get("resource"))
            for ss in _get(rs, "scopeSpans", "scope_spans", []) or []:
                for s in ss.get("spans") or []:
                    attrs = _attrs_json(s.get("attributes"), keep)
                    if "http.url" in attrs or "url.full" in attrs:
                        _server_from_url(attrs)
                    status = s.get("status") or {}
                    code = _enum(status.get("code", 0), _STATUS_CODES)
                    if code == STATUS_ERROR and isinstance(status.get("message"), str) and (
                            status["message"]):
                        attrs[STATUS_MESSAGE] = status["message"][:MAX_MESSAGE]
                    if s.get("events"):
                        _exception_json(s["events"], attrs)
                    item = _span(
                        _hex_id(_get(s, "traceId", "trace_id", "")),
                        _hex_id(_get(s, "spanId", "span_id", "")),
                        _hex_id(_get(s, "parentSpanId", "parent_span_id", "") or ""),
                        str(s.get("name", "")),
                        _enum(s.get("kind", 0), _SPAN_KINDS),
                        int(_get(s, "startTimeUnixNano", "start_time_unix_nano", 0) or 0),
                        int(_get(s, "endTimeUnixNano", "end_time_unix_nano", 0) or 0),
                        code, attrs, resource, limits,
                    )
                    if isinstance(item, DecodeError):
                        out.reject(item)
                    else:
                        out.items.append(item)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DecodeError("not_otlp", f"JSON does not follow the OTLP schema: {exc}") from None
    return out


# ---------------------------------------------------------------------------------------------
# Metrics

_PointFactory = Callable[..., MetricPoint]


def _points_from_proto(req: ExportMetricsServiceRequest, limits: Limits) -> Decoded:
    out = Decoded()
    max_t = limits.max_time_ns()
    for rm in req.resource_metrics:
        resource = _resource_proto(rm.resource)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if not m.name or kind is None:
                    out.reject(
                        DecodeError(
                            "invalid_metric", f"metric {m.name!r} has no name or no data"
                        )
                    )
                    continue
                data = getattr(m, kind)
                temporality = getattr(data, "aggregation_temporality", TEMPORALITY_UNSPECIFIED)
                monotonic = bool(getattr(data, "is_monotonic", False))
                for dp in data.data_points:
                    t = dp.time_unix_nano
                    if t < MIN_VALID_TIME_NS or t > max_t:
                        out.reject(_time_error(m.name, t, max_t))
                        continue
                    attrs = {kv.key: _any_value_proto(kv.value) for kv in dp.attributes}
                    p = MetricPoint(
                        m.name, kind, m.unit, temporality, monotonic, t,
                        dp.start_time_unix_nano, None, attrs, resource,
                    )
                    if kind in ("gauge", "sum"):
                        p.value = (
                            dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                        )
                    else:
                        p.count, p.sum = dp.count, dp.sum
                        if kind == "histogram":
                            p.bounds = list(dp.explicit_bounds)
                            p.bucket_counts = list(dp.bucket_counts)
                        if kind != "summary":
                            p.min = dp.min if dp.HasField("min") else None
                            p.max = dp.max if dp.HasField("max") else None
                    out.keep_point(p, dp.flags)
    return out


def _time_error(name: str, t: int, max_t: int) -> DecodeError:
    if t < MIN_VALID_TIME_NS:
        return DecodeError("invalid_timestamp", f"metric {name!r} point has time {t}")
    return DecodeError(
        "timestamp_out_of_range", f"metric {name!r} point time {t} is past the limit {max_t}"
    )


_JSON_KINDS = {
    "gauge": "gauge", "sum": "sum", "histogram": "histogram",
    "exponentialHistogram": "exponential_histogram",
    "exponential_histogram": "exponential_histogram", "summary": "summary",
}


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _points_from_json(doc: dict[str, Any], limits: Limits) -> Decoded:
    out = Decoded()
    max_t = limits.max_time_ns()
    try:
        for rm in _get(doc, "resourceMetrics", "resource_metrics", []) or []:
            resource = _resource_json(rm.get("resource"))
            for sm in _get(rm, "scopeMetrics", "scope_metrics", []) or []:
                for m in sm.get("metrics") or []:
                    name = m.get("name") or ""
                    found = [(k, kind) for k, kind in _JSON_KINDS.items() if k in m]
                    if not name or not found:
                        out.reject(
                            DecodeError("invalid_metric", f"metric {name!r} has no name or data")
                        )
                        continue
                    key, kind = found[0]
                    data = m[key] or {}
                    temporality = _enum(
                        _get(data, "aggregationTemporality", "aggregation_temporality", 0),
                        _TEMPORALITIES,
                    )
                    monotonic = bool(_get(data, "isMonotonic", "is_monotonic", False))
                    for dp in _get(data, "dataPoints", "data_points", []) or []:
                        t = int(_get(dp, "timeUnixNano", "time_unix_nano", 0) or 0)
                        if t < MIN_VALID_TIME_NS or t > max_t:
                            out.reject(_time_error(name, t, max_t))
                            continue
                        attrs = _attrs_json(dp.get("attributes"))
                        p = MetricPoint(
                            name, kind, str(m.get("unit", "")), temporality, monotonic, t,
                            int(_get(dp, "startTimeUnixNano", "start_time_unix_nano", 0) or 0),
                            None, attrs, resource,
                        )
                        if kind in ("gauge", "sum"):
                            v = _get(dp, "asDouble", "as_double")
                            p.value = float(v) if v is not None else _int64(
                                _get(dp, "asInt", "as_int", 0)
                            )
                        else:
                            p.count = _int64(dp.get("count", 0) or 0)
                            p.sum = _num(dp.get("sum"))
                            p.min, p.max = _num(dp.get("min")), _num(dp.get("max"))
                            if kind == "histogram":
                                p.bounds = [
                                    float(b)
                                    for b in _get(dp, "explicitBounds", "explicit_bounds", [])
                                ]
                                p.bucket_counts = [
                                    int(c) for c in _get(dp, "bucketCounts", "bucket_counts", [])
                                ]
                        out.keep_point(p, _int64(dp.get("flags", 0) or 0))
    except (AttributeError, TypeError, ValueError) as exc:
        raise DecodeError("not_otlp", f"JSON does not follow the OTLP schema: {exc}") from None
    return out

"""What the model emits and the encoder consumes: resources, scopes, spans and metric points.

These are plain slotted objects, not protobuf messages, so that the model stays independent of
the wire format. Resources, scopes and span templates compare by identity (``eq=False``): they
are created once and reused, and the encoder caches their encoded form keyed by the object.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.simulate.topology import Attrs

# Status codes, as in opentelemetry.proto.trace.v1.Status.StatusCode.
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

GAUGE, SUM, HISTOGRAM = "gauge", "sum", "histogram"

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"


@dataclass(frozen=True, eq=False, slots=True)
class ResourceInfo:
    """The OTLP resource of one emitter (an instance incarnation, or a host's collector)."""

    attributes: Attrs


@dataclass(frozen=True, eq=False, slots=True)
class ScopeInfo:
    """An instrumentation scope (library name and version)."""

    name: str
    version: str = ""


@dataclass(frozen=True, eq=False, slots=True)
class SpanTemplate:
    """The per-operation constant part of a span; only ids, times and status vary."""

    name: str
    kind: int
    scope: ScopeInfo
    attributes: Attrs
    service: str


@dataclass(frozen=True, eq=False, slots=True)
class ErrorInfo:
    """What a failed span carries besides its status, as the OpenTelemetry SDKs write it: the
    ``error.type`` attribute and, if an exception was raised on the span (``record_exception``),
    an ``exception`` event with ``exception.type``, ``exception.message`` and
    ``exception.stacktrace``. An HTTP client span that only received an error status has an
    ``error_type`` (the status code) and no exception. Compared by identity, like templates: the
    model makes one per operation and the encoder caches its encoded attributes."""

    error_type: str
    exception_type: str = ""
    message: str = ""
    stacktrace: str = ""


@dataclass(slots=True)
class SpanEvent:
    """One finished span. Times are as the emitting service's clock reports them."""

    resource: ResourceInfo
    template: SpanTemplate
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    start_ns: int
    end_ns: int
    status: int = STATUS_UNSET
    status_message: str = ""
    http_status: int = 0
    error: ErrorInfo | None = None


@dataclass(slots=True)
class MetricPoint:
    """One data point of one metric stream. ``value`` is int (asInt) or float (asDouble).

    Histograms carry explicit ``bounds`` and cumulative ``bucket_counts``/``count``/``total``.
    """

    resource: ResourceInfo
    scope: ScopeInfo
    name: str
    unit: str
    description: str
    kind: str
    attributes: Attrs
    start_ns: int
    time_ns: int
    value: int | float = 0
    monotonic: bool = False
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()
    count: int = 0
    total: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0


@dataclass(slots=True)
class Tick:
    """What one simulation tick produced: finished traces (each a list of spans, root last) and
    metric points, all stamped no later than ``time_ns`` (the tick's end, in event time)."""

    index: int
    time_ns: int
    traces: list[list[SpanEvent]]
    metrics: list[MetricPoint]

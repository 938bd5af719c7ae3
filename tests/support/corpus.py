"""The corpus of bad records: every kind of input the decoder must dead-letter, with its reason.

Shared by the unit tests (decoder) and the integration test (real broker → anomaly_deadletter).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.otlp_build import T0, metric_request, span_request, to_otlp_json

GOOD_TRACE = bytes(range(1, 17))


@dataclass(frozen=True)
class Case:
    name: str
    signal: str  # spans | metrics
    encoding: str  # otlp_proto | otlp_json
    value: bytes | None
    reason: str
    partial: bool = False  # some items valid: they are processed, the record is dead-lettered
    timestamp_ms: int = T0 // 10**6
    key: bytes | None = None


def _span(**kw: object) -> dict:
    base = {"span_id": b"\x01" * 8, "start": T0, "end": T0 + 10**8}
    base.update(kw)
    return base


def cases(max_record_bytes: int = 64 * 1024) -> list[Case]:
    good_proto = span_request([_span()]).SerializeToString()
    metrics_json = to_otlp_json(metric_request())
    no_data = metric_request()
    no_data.resource_metrics[0].scope_metrics[0].metrics.add().name = "empty.metric"
    return [
        Case("empty value", "spans", "otlp_proto", b"", "empty_value"),
        Case("tombstone", "metrics", "otlp_proto", None, "empty_value", key=b"cart-1"),
        Case("truncated protobuf", "spans", "otlp_proto", good_proto[:-7], "invalid_protobuf"),
        Case("garbage protobuf", "spans", "otlp_proto", b"\xff\xfe\xfd\xfc" * 8,
             "invalid_protobuf"),
        Case("garbage on metrics topic", "metrics", "otlp_proto", b"\x0a\xff\xff\xff\x0f",
             "invalid_protobuf"),
        Case("JSON that is not OTLP", "spans", "otlp_json", b'{"hello": "world"}', "not_otlp"),
        Case("JSON array", "spans", "otlp_json", b"[1, 2, 3]", "not_otlp"),
        Case("broken JSON", "spans", "otlp_json", b'{"resourceSpans": [', "invalid_json"),
        Case("JSON on a protobuf topic", "spans", "otlp_proto", to_otlp_json(
            span_request([_span()])), "wrong_encoding"),
        Case("protobuf on a JSON topic", "spans", "otlp_json", good_proto, "wrong_encoding"),
        Case("metrics on the spans topic", "spans", "otlp_json", metrics_json, "wrong_signal"),
        Case("trace id of 8 bytes", "spans", "otlp_proto",
             span_request([_span(trace_id=b"\x01" * 8)]).SerializeToString(),
             "invalid_trace_id", partial=True),
        Case("span id of 4 bytes, beside a good span", "spans", "otlp_proto",
             span_request([_span(span_id=b"\x02" * 4), _span()]).SerializeToString(),
             "invalid_span_id", partial=True),
        Case("JSON trace id not hex", "spans", "otlp_json",
             to_otlp_json(span_request([_span()])).replace(GOOD_TRACE.hex().encode(),
                                                          b"zz" * 16),
             "invalid_trace_id", partial=True),
        Case("zero timestamps", "spans", "otlp_proto",
             span_request([_span(start=0, end=0)]).SerializeToString(), "invalid_timestamp",
             partial=True),
        Case("far-future timestamp", "spans", "otlp_proto",
             span_request([_span(start=T0 + 7200 * 10**9, end=T0 + 7201 * 10**9)])
             .SerializeToString(), "timestamp_out_of_range", partial=True),
        Case("metric without data", "metrics", "otlp_proto", no_data.SerializeToString(),
             "invalid_metric", partial=True),
        Case("record over the size limit", "spans", "otlp_proto",
             span_request([_span(name="x" * (max_record_bytes + 10))]).SerializeToString(),
             "record_too_large"),
        *json_cases(),
    ]


def json_cases() -> list[Case]:
    """OTLP/JSON that parses as JSON but carries values OTLP cannot hold."""
    base = to_otlp_json(span_request([_span()]))
    return [
        Case("attribute key that is not a string", "spans", "otlp_json",
             base.replace(b'"key":"service.name"', b'"key":7'), "not_otlp"),
        Case("integer over 64 bits", "spans", "otlp_json",
             base.replace(b'"kind":2', b'"kind":"99999999999999999999999"'), "not_otlp"),
    ]

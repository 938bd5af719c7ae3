"""Decoder: golden OTLP payloads (official JSON examples, protobuf built here) and bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline import otlp
from pipeline.records import (
    TEMPORALITY_CUMULATIVE,
    TEMPORALITY_DELTA,
    UNKNOWN_SERVICE,
    decode_points_wire,
    decode_spans_wire,
    encode_points,
    encode_spans,
)
from tests.support import corpus
from tests.support.otlp_build import T0, metric_request, span_request, to_otlp_json

GOLDEN = Path(__file__).parent.parent / "golden" / "otlp"
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def limits(**kw: object) -> otlp.Limits:
    base = {"max_record_bytes": 64 * 1024, "reference_time_ns": T0}
    base.update(kw)
    return otlp.Limits(**base)  # type: ignore[arg-type]


def test_official_trace_example() -> None:
    out = otlp.decode_spans((GOLDEN / "trace.json").read_bytes(), otlp.OTLP_JSON)
    assert out.rejected == 0
    [span] = out.items
    assert span.trace_id == "5b8efff798038103d269b633813fc60c"
    assert span.span_id == "eee19b7ec3c1b174"
    assert span.parent_id == "eee19b7ec3c1b173"
    assert span.name == "I'm a server span"
    assert span.kind == 2
    assert span.duration_ns == 10**9
    assert span.resource.service == "my.service"


def test_official_metrics_example() -> None:
    out = otlp.decode_metrics((GOLDEN / "metrics.json").read_bytes(), otlp.OTLP_JSON)
    assert out.rejected == 0
    by_name = {p.name: p for p in out.items}
    assert set(by_name) == {
        "my.counter", "my.gauge", "my.histogram", "my.exponential.histogram",
    }
    counter = by_name["my.counter"]
    assert (counter.type, counter.value, counter.monotonic) == ("sum", 5.0, True)
    assert counter.temporality == TEMPORALITY_DELTA
    assert counter.attrs == {"my.counter.attr": "some value"}
    assert by_name["my.gauge"].value == 10.0
    hist = by_name["my.histogram"]
    assert (hist.count, hist.sum, hist.min, hist.max) == (2, 2.0, 0.0, 2.0)
    assert hist.bounds == [1.0] and hist.bucket_counts == [1, 1]
    assert by_name["my.exponential.histogram"].count == 3


def _tree() -> list[dict]:
    """A server span with two parallel children and a nested grandchild."""
    return [
        {"span_id": b"\x01" * 8, "name": "GET /users/{id}", "kind": 2, "start": T0,
         "end": T0 + 190 * 10**6, "attrs": {"http.route": "/users/{id}", "ignored": "x"}},
        {"span_id": b"\x02" * 8, "parent": b"\x01" * 8, "name": "SELECT users", "kind": 3,
         "start": T0 + 10**6, "end": T0 + 141 * 10**6,
         "attrs": {"db.system": "postgresql", "db.name": "users"}},
        {"span_id": b"\x03" * 8, "parent": b"\x01" * 8, "name": "GET cache", "kind": 3,
         "start": T0 + 2 * 10**6, "end": T0 + 5 * 10**6, "status": 2,
         "attrs": {"db.system": "redis", "server.address": "cache:6379"}},
    ]


RESOURCE = {
    "service.name": "user-service", "service.instance.id": "user-1", "host.name": "node-a",
    "k8s.pod.name": "user-7d9", "service.version": "1.4.2", "process.pid": 42,
}


@pytest.mark.parametrize("encoding", [otlp.OTLP_PROTO, otlp.OTLP_JSON])
def test_spans_proto_and_json_decode_alike(encoding: str) -> None:
    req = span_request(_tree(), RESOURCE)
    value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
    out = otlp.decode_spans(value, encoding, limits())
    assert out.rejected == 0
    root, db, cache = out.items
    assert root.parent_id == "" and db.parent_id == root.span_id == "01" * 8
    assert root.attrs == {"http.route": "/users/{id}"}  # unlisted attributes are dropped
    assert db.attrs == {"db.system": "postgresql", "db.name": "users"}
    assert db.duration_ns == 140 * 10**6
    assert cache.status == 2 and cache.kind == 3
    r = root.resource
    assert (r.service, r.instance, r.host, r.pod) == ("user-service", "user-1", "node-a",
                                                      "user-7d9")
    assert r.attrs["service.version"] == "1.4.2" and r.attrs["process.pid"] == 42
    assert root.resource is db.resource  # one resource object per ResourceSpans


@pytest.mark.parametrize("encoding", [otlp.OTLP_PROTO, otlp.OTLP_JSON])
def test_exception_events_and_status_message_are_kept_bounded(encoding: str) -> None:
    """What ``record_exception`` writes (an ``exception`` event with type, message and stack
    trace) becomes two bounded attributes; the stack trace and other events are dropped."""
    req = span_request([
        {"span_id": b"\x01" * 8, "status": 2, "attrs": {"http.response.status_code": 500}},
        {"span_id": b"\x02" * 8, "status": 0},
    ])
    first, second = req.resource_spans[0].scope_spans[0].spans
    first.status.message = "ZeroDivisionError: division by zero"
    retry = first.events.add()
    retry.name = "retry"
    ev = first.events.add()
    ev.name, ev.time_unix_nano = "exception", T0
    for key, value in (("exception.type", "ZeroDivisionError"),
                       ("exception.message", "x" * 1000),
                       ("exception.stacktrace", "Traceback (most recent call last): ...")):
        kv = ev.attributes.add()
        kv.key, kv.value.string_value = key, value
    later = first.events.add()
    later.name = "exception"
    kv = later.attributes.add()
    kv.key, kv.value.string_value = "exception.type", "SecondError"
    second.status.message = "ignored: the span is not in error"
    value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
    a, b = otlp.decode_spans(value, encoding, limits()).items
    assert a.attrs == {
        "http.response.status_code": 500,
        "exception.type": "ZeroDivisionError",
        "exception.message": "x" * otlp.MAX_MESSAGE,
        "status.message": "ZeroDivisionError: division by zero",
    }
    assert b.attrs == {}


@pytest.mark.parametrize("encoding", [otlp.OTLP_PROTO, otlp.OTLP_JSON])
def test_metric_shapes(encoding: str) -> None:
    req = metric_request()
    value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
    out = otlp.decode_metrics(value, encoding, limits())
    assert out.rejected == 0
    gauge, conns, gc, hist = out.items
    assert (gauge.type, gauge.value, gauge.attrs["jvm.memory.type"]) == ("gauge", 123456789,
                                                                         "heap")
    assert (conns.type, conns.temporality, conns.monotonic) == ("sum", TEMPORALITY_CUMULATIVE,
                                                                False)
    assert conns.value == 4200 and conns.attrs == {"protocol": "tcp", "state": "TIME_WAIT"}
    assert (gc.temporality, gc.value) == (TEMPORALITY_DELTA, 3.0)
    assert (hist.type, hist.count, hist.sum, hist.min, hist.max) == ("histogram", 10, 0.5,
                                                                      0.01, 0.2)
    assert hist.bounds == [0.01, 0.1, 1.0] and hist.bucket_counts == [1, 6, 3, 0]
    assert gauge.resource.key == "cart|cart-1"


def test_json_accepts_snake_case_and_enum_names() -> None:
    doc = (
        b'{"resource_spans":[{"resource":{"attributes":[]},"scope_spans":[{"spans":[{'
        b'"trace_id":"5B8EFFF798038103D269B633813FC60C","span_id":"EEE19B7EC3C1B174",'
        b'"name":"x","kind":"SPAN_KIND_CLIENT","start_time_unix_nano":"1767600000000000000",'
        b'"end_time_unix_nano":1767600000100000000,"status":{"code":"STATUS_CODE_ERROR"}}]}]}]}'
    )
    [span] = otlp.decode_spans(doc, otlp.OTLP_JSON).items
    assert (span.kind, span.status, span.trace_id[:4]) == (3, 2, "5b8e")


@pytest.mark.parametrize(
    ("attrs", "service", "instance"),
    [
        ({}, UNKNOWN_SERVICE, ""),
        ({"process.executable.name": "java"}, "unknown_service:java", ""),
        ({"service.name": "a", "k8s.pod.name": "p", "k8s.namespace.name": "ns"}, "a", "ns/p"),
        ({"service.name": "a", "host.name": "h", "process.pid": 7}, "a", "h:7"),
        ({"service.name": "a", "host.name": "h"}, "a", "h"),
    ],
)
def test_resource_identity_fallbacks(attrs: dict, service: str, instance: str) -> None:
    req = span_request([{"span_id": b"\x01" * 8}], attrs)
    [span] = otlp.decode_spans(req.SerializeToString(), limits=limits()).items
    assert (span.resource.service, span.resource.instance) == (service, instance)


@pytest.mark.parametrize("case", corpus.cases(), ids=lambda c: c.name)
def test_bad_input_is_rejected_with_its_reason(case: corpus.Case) -> None:
    decode = otlp.decode_spans if case.signal == "spans" else otlp.decode_metrics
    lim = limits(reference_time_ns=case.timestamp_ms * 10**6)
    if case.partial:
        out = decode(case.value, case.encoding, lim)
        assert out.rejected >= 1
        assert out.first_error is not None and out.first_error.reason == case.reason
    else:
        with pytest.raises(otlp.DecodeError) as err:
            decode(case.value, case.encoding, lim)
        assert err.value.reason == case.reason
        assert str(err.value)  # a message a person can act on


def test_partial_record_keeps_valid_items() -> None:
    case = next(c for c in corpus.cases() if c.name.startswith("span id of 4 bytes"))
    out = otlp.decode_spans(case.value, case.encoding, limits())
    assert out.rejected == 1 and len(out.items) == 1


def test_far_future_is_relative_to_the_record_timestamp() -> None:
    value = span_request([{"span_id": b"\x01" * 8, "start": T0 + 7200 * 10**9,
                           "end": T0 + 7201 * 10**9}]).SerializeToString()
    later_record = limits(reference_time_ns=T0 + 7200 * 10**9)
    assert otlp.decode_spans(value, limits=later_record).rejected == 0
    assert otlp.decode_spans(value, limits=limits()).rejected == 1


def test_wire_roundtrip_preserves_records() -> None:
    spans = otlp.decode_spans(span_request(_tree(), RESOURCE).SerializeToString()).items
    back = decode_spans_wire(encode_spans(spans, ("otlp_spans", 3, 41, 2), T0, 8))
    assert back.items == spans and back.source == ("otlp_spans", 3, 41, 2)
    assert back.watermark_ns == T0 and back.partitions == {"otlp_spans": 8}
    points = otlp.decode_metrics(metric_request().SerializeToString()).items
    assert decode_points_wire(encode_points(points)).items == points
    # The first release's wire form (a 3-element source, no watermark): chunk 0.
    old = orjson.dumps({"src": ["otlp_spans", 3, 41], "r": [], "s": []})
    assert decode_spans_wire(old).source == ("otlp_spans", 3, 41, 0)


@pytest.mark.parametrize("encoding", [otlp.OTLP_PROTO, otlp.OTLP_JSON])
def test_points_without_a_value_are_dropped_and_counted(encoding: str) -> None:
    """NaN/Inf values and sums and the no-recorded-value flag (the prometheus receiver's
    staleness marker) leave the point out, counted; the rest of the record is kept and the
    record is not a dead letter."""
    req = metric_request()
    gauge, _, delta, hist = req.resource_metrics[0].scope_metrics[0].metrics
    dp = gauge.gauge.data_points.add()
    dp.time_unix_nano, dp.as_double = T0 + 10**10, float("nan")
    dp = gauge.gauge.data_points.add()
    dp.time_unix_nano, dp.as_double = T0 + 2 * 10**10, float("inf")
    dp = gauge.gauge.data_points.add()
    dp.time_unix_nano, dp.as_double, dp.flags = T0 + 3 * 10**10, 0.0, 1
    dp = delta.sum.data_points.add()
    dp.time_unix_nano, dp.as_double = T0 + 10**10, float("-inf")
    dp = hist.histogram.data_points.add()
    dp.time_unix_nano, dp.count, dp.sum = T0 + 10**10, 3, float("nan")
    dp.explicit_bounds.extend([1.0])
    dp.bucket_counts.extend([1, 2])
    value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
    out = otlp.decode_metrics(value, encoding, limits())
    assert out.rejected == 0
    assert out.dropped == {"non_finite": 4, "no_recorded_value": 1}
    assert len(out.items) == 4  # the four original points
    assert all(p.time_ns == T0 for p in out.items)


@pytest.mark.parametrize("encoding", [otlp.OTLP_PROTO, otlp.OTLP_JSON])
def test_histogram_whose_counts_do_not_match_its_bounds_is_rejected(encoding: str) -> None:
    req = metric_request()
    hist = req.resource_metrics[0].scope_metrics[0].metrics[3]
    dp = hist.histogram.data_points.add()
    dp.time_unix_nano, dp.count, dp.sum = T0 + 10**10, 3, 1.0
    dp.explicit_bounds.extend([0.1, 1.0])
    dp.bucket_counts.extend([1, 2])  # needs 3
    dp = hist.histogram.data_points.add()
    dp.time_unix_nano, dp.count, dp.sum = T0 + 2 * 10**10, 3, 1.0
    dp.explicit_bounds.extend([1.0, 0.1])  # not increasing
    dp.bucket_counts.extend([1, 2, 0])
    value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
    out = otlp.decode_metrics(value, encoding, limits())
    assert out.rejected == 2 and out.first_error is not None
    assert out.first_error.reason == "invalid_metric"
    assert "bucket counts" in str(out.first_error)
    assert len(out.items) == 4  # the valid points stay (partial success)

"""Error faults in the simulator: spans fail the way the OpenTelemetry SDKs write it (status,
``http.response.status_code``, ``error.type``, ``exception`` events), an ``error_origin`` fails
every caller up to the root, its look-alikes (a client's 4xx, a retried 503) leave the root
alone, and the labels say so. Decoded with the pipeline's own decoder. No Kafka."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks import scoring
from pipeline.otlp import decode_spans
from pipeline.records import Span
from pipeline.simulate import (
    FAULT_KINDS,
    NEGATIVE_KINDS,
    build_scenario,
    iter_records,
    label_lines,
)
from pipeline.simulate.topology import LeafCall, Topology, default_topology

SERVER, CLIENT = 2, 3
UNSET, ERROR = 0, 2
STATUS = "http.response.status_code"


def quiet_topology() -> Topology:
    """The default topology without background errors, so every error is the fault's."""
    topo = default_topology()
    services = []
    for s in topo.services:
        endpoints = []
        for ep in s.endpoints:
            steps = tuple(
                tuple(replace(c, error_rate=0.0) if isinstance(c, LeafCall) else c for c in st)
                for st in ep.steps
            )
            endpoints.append(replace(ep, error_rate=0.0, steps=steps))
        services.append(replace(s, endpoints=tuple(endpoints)))
    return replace(topo, services=tuple(services))


def scenario(*specs: str, quiet: bool = True, **kw: Any) -> Any:
    kw = {"seed": 5, "duration": "60s", "rate": 30, **kw}
    if quiet:
        kw["topology"] = quiet_topology()
    return build_scenario("healthy", faults=list(specs), **kw)


def traces_of(sc: Any) -> list[list[Span]]:
    """Every trace of the run, decoded from the simulator's OTLP records."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for rec in iter_records(sc):
        if rec.topic == sc.spans_topic:
            for s in decode_spans(rec.value).items:
                by_trace[s.trace_id].append(s)
    return list(by_trace.values())


def raw_spans(sc: Any) -> list[tuple[str, Any]]:
    """(service, protobuf span) of every span, for what the decoder does not keep."""
    out = []
    for rec in iter_records(sc):
        if rec.topic == sc.spans_topic:
            for rs in ExportTraceServiceRequest.FromString(rec.value).resource_spans:
                svc = next(kv.value.string_value for kv in rs.resource.attributes
                           if kv.key == "service.name")
                out.extend((svc, s) for ss in rs.scope_spans for s in ss.spans)
    return out


def chain_to_root(trace: list[Span], span: Span) -> list[Span]:
    by_id = {s.span_id: s for s in trace}
    chain = [span]
    while chain[-1].parent_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def root(trace: list[Span]) -> Span:
    return next(s for s in trace if not s.parent_id)


def named(trace: list[Span], service: str, name: str, kind: int) -> list[Span]:
    return [s for s in trace
            if s.resource.service == service and s.name == name and s.kind == kind]


# -- error_origin ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_origin() -> list[list[Span]]:
    return traces_of(scenario("error_origin:payment/INSERT payments:0s:60s:0.5"))


def test_database_origin_fails_with_the_driver_exception_up_to_the_root(
    db_origin: list[list[Span]],
) -> None:
    failed = calls = 0
    for trace in db_origin:
        for origin in named(trace, "payment", "INSERT payments", CLIENT):
            calls += 1
            if origin.status != ERROR:
                assert not any(s.status == ERROR for s in trace)  # no other error source
                continue
            failed += 1
            assert origin.attrs["exception.type"] == "*pgconn.PgError"
            assert "statement timeout" in origin.attrs["exception.message"]
            assert origin.attrs["error.type"] == "*pgconn.PgError"
            assert origin.attrs["status.message"]
            assert STATUS not in origin.attrs  # a database call has no HTTP status
            chain = chain_to_root(trace, origin)
            assert [(s.resource.service, s.name, s.kind) for s in chain] == [
                ("payment", "INSERT payments", CLIENT),
                ("payment", "POST /charge", SERVER),
                ("checkout", "POST /charge", CLIENT),
                ("checkout", "POST /checkout", SERVER),
                ("frontend", "POST /checkout", CLIENT),
                ("frontend", "POST /api/checkout", SERVER),
            ]
            assert all(s.status == ERROR and s.attrs[STATUS] == 500 for s in chain[1:])
            # the driver's exception escapes payment's handler: same exception on its span
            assert chain[1].attrs["exception.type"] == "*pgconn.PgError"
            # HTTP clients get a status, no exception; the callers' handlers raise on it
            for client in (chain[2], chain[4]):
                assert client.attrs["error.type"] == "500"
                assert "exception.type" not in client.attrs
            assert chain[3].attrs["exception.type"].startswith(
                "org.springframework.web.client.HttpServerErrorException")
            assert chain[5].attrs["exception.type"] == "AxiosError"
            # every error in the trace is on the chain: the origin is the deepest one
            assert {s.span_id for s in trace if s.status == ERROR} == {s.span_id for s in chain}
    assert calls > 50
    assert failed / calls == pytest.approx(0.5, abs=0.15)


def test_exception_events_carry_the_runtime_stacktrace() -> None:
    sc = scenario("error_origin:payment/INSERT payments:0s:20s:0.5", duration="20s")
    events = {}
    for svc, s in raw_spans(sc):
        for ev in s.events:
            assert ev.name == "exception"
            attrs = {kv.key: kv.value.string_value for kv in ev.attributes}
            assert s.start_time_unix_nano <= ev.time_unix_nano <= s.end_time_unix_nano
            events[(svc, s.name)] = attrs
    go = events[("payment", "INSERT payments")]
    assert set(go) == {"exception.type", "exception.message", "exception.stacktrace"}
    assert go["exception.stacktrace"].startswith("goroutine ")
    java = events[("checkout", "POST /checkout")]
    assert java["exception.stacktrace"].startswith(java["exception.type"] + ": ")
    assert "\tat com.example.checkout." in java["exception.stacktrace"]
    assert events[("frontend", "POST /api/checkout")]["exception.stacktrace"].startswith(
        "AxiosError: Request failed with status code 500\n    at ")


def test_endpoint_origin_fails_after_its_calls_succeeded() -> None:
    traces = traces_of(scenario("error_origin:checkout/POST /checkout:0s:60s:0.4"))
    failed = 0
    for trace in traces:
        for origin in named(trace, "checkout", "POST /checkout", SERVER):
            if origin.status != ERROR:
                continue
            failed += 1
            assert origin.attrs[STATUS] == 500
            assert origin.attrs["exception.type"] == "java.lang.NullPointerException"
            children = [s for s in trace if s.parent_id == origin.span_id]
            assert len(children) >= 5 and all(c.status == UNSET for c in children)
            chain = chain_to_root(trace, origin)
            assert [s.resource.service for s in chain] == ["checkout", "frontend", "frontend"]
            assert all(s.status == ERROR for s in chain)
    assert failed > 20


def test_vendor_origin_is_a_client_span_with_the_vendor_status_and_no_exception() -> None:
    traces = traces_of(scenario("error_origin:payment/POST /v1/charges:0s:60s:0.5"))
    failed = 0
    for trace in traces:
        for origin in named(trace, "payment", "POST /v1/charges", CLIENT):
            if origin.status != ERROR:
                assert origin.attrs[STATUS] == 200
                continue
            failed += 1
            assert origin.attrs[STATUS] == 502 and origin.attrs["error.type"] == "502"
            assert "exception.type" not in origin.attrs and "status.message" not in origin.attrs
            assert origin.attrs["peer.service"] == "payment-gateway"
            handler = chain_to_root(trace, origin)[1]
            assert handler.attrs["exception.type"] == "*fmt.wrapError"
            assert "502 Bad Gateway" in handler.attrs["exception.message"]
            # the handler stopped at the failed charge: no INSERT payments after it
            assert not named(trace, "payment", "INSERT payments", CLIENT)
            assert root(trace).status == ERROR
    assert failed > 20


def test_root_handler_origin_is_the_root_itself() -> None:
    traces = traces_of(scenario("error_origin:frontend/POST /api/cart:0s:60s:0.5"))
    roots = [root(t) for t in traces if root(t).name == "POST /api/cart"]
    bad = [r for r in roots if r.status == ERROR]
    assert len(bad) / len(roots) == pytest.approx(0.5, abs=0.15)
    assert all(r.attrs["exception.type"] == "TypeError" and r.attrs[STATUS] == 500 for r in bad)
    assert all(s.status == UNSET for t in traces for s in t if s.parent_id)


def test_background_errors_exist_and_stay_rare() -> None:
    traces = traces_of(scenario(quiet=False, duration="2m", rate=40))
    spans = [s for t in traces for s in t]
    errors = [s for s in spans if s.status == ERROR]
    assert errors and len(errors) / len(spans) < 0.01
    assert all("error.type" in s.attrs for s in errors)
    assert any("exception.type" in s.attrs for s in errors)


# -- look-alikes -----------------------------------------------------------------------------


def test_client_4xx_is_an_error_on_the_client_only() -> None:
    traces = traces_of(scenario("client_4xx:frontend/GET /products/{id}:0s:60s:0.3"))
    hits = calls = 0
    for trace in traces:
        for client in named(trace, "frontend", "GET /products/{id}", CLIENT):
            calls += 1
            server = next(s for s in trace if s.parent_id == client.span_id)
            assert server.resource.service == "catalog" and server.kind == SERVER
            if client.attrs[STATUS] != 404:
                assert client.status == UNSET and server.attrs[STATUS] == 200
                continue
            hits += 1
            assert client.status == ERROR and client.attrs["error.type"] == "404"
            assert server.status == UNSET and server.attrs[STATUS] == 404
            assert "error.type" not in server.attrs and "exception.type" not in server.attrs
            top = root(trace)
            assert top.status == UNSET and top.attrs[STATUS] == 200
    assert calls > 100 and hits / calls == pytest.approx(0.3, abs=0.1)


def test_flaky_retry_fails_once_then_the_retry_succeeds() -> None:
    sc = scenario("flaky_retry:frontend/GET /cart:0s:60s:0.3")
    retried = total = 0
    for trace in traces_of(sc):
        for parent in {s.parent_id for s in named(trace, "frontend", "GET /cart", CLIENT)}:
            attempts = sorted(
                (s for s in named(trace, "frontend", "GET /cart", CLIENT) if s.parent_id == parent),
                key=lambda s: s.start_ns,
            )
            total += 1
            if len(attempts) == 1:
                assert attempts[0].status == UNSET
                continue
            retried += 1
            first, second = attempts
            assert first.status == ERROR and first.attrs[STATUS] == 503
            assert first.attrs["error.type"] == "503"
            assert second.status == UNSET and second.attrs[STATUS] == 200
            assert second.start_ns >= first.end_ns
            rejected, served = (next(s for s in trace if s.parent_id == a.span_id)
                                for a in attempts)
            assert rejected.status == ERROR and rejected.attrs[STATUS] == 503
            assert not [s for s in trace if s.parent_id == rejected.span_id]  # no work done
            assert served.status == UNSET and served.attrs[STATUS] == 200
            assert root(trace).status == UNSET
    assert total > 100 and retried / total == pytest.approx(0.3, abs=0.1)
    resends = [dict((kv.key, kv.value.int_value) for kv in s.attributes).get(
        "http.request.resend_count") for svc, s in raw_spans(sc)
        if svc == "frontend" and s.name == "GET /cart"]
    assert resends.count(1) == retried and resends.count(None) == total


# -- determinism, metrics, validation ----------------------------------------------------------


def test_error_runs_are_deterministic_and_leave_the_time_before_the_fault_alone() -> None:
    spec = "error_origin:cart/HGETALL:30s:20s:0.5"
    a = list(iter_records(scenario(spec, quiet=False, duration="50s")))
    assert a == list(iter_records(scenario(spec, quiet=False, duration="50s")))
    assert a != list(iter_records(scenario(spec, quiet=False, duration="50s", seed=6)))
    plain = list(iter_records(scenario(quiet=False, duration="50s")))
    before = [r for r in a if r.timestamp_ms < a[0].timestamp_ms + 29_000]
    assert before and before == plain[: len(before)]


def test_json_encoding_carries_the_same_errors_as_protobuf() -> None:
    specs = ("error_origin:cart/HGETALL:0s:20s:0.5", "flaky_retry:frontend/GET /users/{id}:0s:20s")
    decoded = {}
    for encoding in ("otlp_proto", "otlp_json"):
        sc = scenario(*specs, duration="20s", encoding=encoding)
        decoded[encoding] = [
            (s.span_id, s.status, s.attrs)
            for r in iter_records(sc) if r.topic == sc.spans_topic
            for s in decode_spans(r.value, encoding).items
        ]
    assert decoded["otlp_json"] == decoded["otlp_proto"]
    assert sum("exception.type" in a for _, _, a in decoded["otlp_json"]) > 50


def test_metrics_only_mode_draws_errors_and_retries_the_same_way() -> None:
    specs = ["error_origin:user-service/SELECT users:10s:30s:0.5",
             "flaky_retry:checkout/POST /charge:5s:40s:0.5",
             "client_4xx:frontend/GET /products/{id}:0s:60s:0.3"]
    full = scenario(*specs, quiet=False)
    lean = scenario(*specs, quiet=False, emit_spans=False)
    assert [r for r in iter_records(full) if r.topic == "otlp_metrics"] == list(
        iter_records(lean))


def test_error_fault_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="not an endpoint or a downstream call"):
        scenario("error_origin:frontend/GET /cart:0s:10s")  # an HTTP client span
    with pytest.raises(ValueError, match="not an HTTP call"):
        scenario("flaky_retry:cart/HGETALL:0s:10s")
    with pytest.raises(ValueError, match="4xx"):
        scenario("client_4xx:frontend/GET /cart:0s:10s:rate=0.1,status=500")
    assert "error_origin" in FAULT_KINDS
    assert NEGATIVE_KINDS["client_4xx"] == NEGATIVE_KINDS["flaky_retry"] == ("error_origin",)


# -- labels and scoring ----------------------------------------------------------------------


def test_error_labels_name_the_origin_and_the_applied_window() -> None:
    sc = scenario("error_origin:payment/INSERT payments:1.5s:30s:0.4",
                  "client_4xx:frontend/GET /products/{id}:40s:10s", quiet=False)
    _, origin, lookalike = label_lines(sc)
    assert origin["kind"] == "error_origin" and origin["negative"] is False
    assert origin["entity"] == {"service": "payment", "operation": "INSERT payments"}
    # faults act per whole second: from 2 s (the first tick at or after 1.5 s) to 32 s
    assert origin["start_unix_nano"] == sc.start_ns + 2 * 10**9
    assert origin["end_unix_nano"] == sc.start_ns + 32 * 10**9
    truth = origin["truth"]
    assert truth["span_kind"] == "CLIENT" and truth["exception_type"] == "*pgconn.PgError"
    assert truth["error_rate"] == 0.4
    assert [s["service"] for s in truth["chains"][0]][-1] == "frontend"
    assert lookalike["negative"] is True and lookalike["must_not_trigger"] == ["error_origin"]
    assert lookalike["entity_any"][1] == {"service": "catalog", "operation": "GET /products/{id}"}
    assert lookalike["truth"]["server_span_status"] == "UNSET"


def test_errors_preset_is_an_error_origin_accuracy_suite() -> None:
    sc = build_scenario("errors")
    lines = label_lines(sc)
    assert sc.duration_s == 90 * 60 and sc.emit_spans
    origins = [lb for lb in lines[1:] if lb["kind"] == "error_origin"]
    negatives = [lb for lb in lines[1:] if lb["negative"]]
    assert len(origins) >= 6 and len({tuple(lb["entity"].values()) for lb in origins}) == 7
    assert {lb["kind"] for lb in negatives} == {"client_4xx", "flaky_retry"}
    assert all("error_origin" in lb["must_not_trigger"] for lb in negatives)
    kinds = {lb["truth"]["span_kind"] for lb in origins}
    assert kinds == {"SERVER", "CLIENT"}
    assert any(lb["evidence"].get("db_system") == "postgresql" for lb in origins)
    assert max(len(c) for lb in origins for c in lb["truth"]["chains"]) >= 6  # 3 services up
    windows = sorted((lb["start_unix_nano"], lb["end_unix_nano"]) for lb in lines[1:])
    assert windows[0][0] - sc.start_ns >= 20 * 60 * 10**9  # baselines first
    assert all(b[0] - a[1] >= 3 * 60 * 10**9 for a, b in zip(windows, windows[1:], strict=False))


def test_error_origin_is_scored_per_operation_and_lookalikes_catch_false_alarms() -> None:
    sc = build_scenario("errors")
    labels = scoring.LabelSet.from_lines(label_lines(sc))
    m = 60 * 10**9
    at = sc.start_ns
    alerts = [
        ({"service": "payment", "operation": "INSERT payments", "peer_service": "postgres"},
         at + 35 * m),
        ({"service": "checkout", "operation": "POST /checkout"}, at + 35 * m),  # a caller
        ({"service": "catalog", "operation": "GET /products/{id}"}, at + 28 * m),  # the 404s
    ]
    s = scoring.score_rule("t", "error_origin", alerts, labels)
    assert (s.tp, s.fp, s.fn) == (1, 2, 6)
    assert s.hard_negative_false_alarms == 1
    assert s.entity_hours == pytest.approx(labels.entities["operations"] * 1.5)

"""Where failures start: golden traces for ``traces.error_origins`` (and what trace assembly
makes of them), and the ``error_origin`` detector on streams of trace samples."""

from __future__ import annotations

from typing import Any

from pipeline.detectors.errors import ERROR_ORIGIN, ErrorOriginDetector
from pipeline.detectors.trace_assembly import TraceAssembler
from pipeline.records import Resource, Span
from pipeline.traces import analyze, error_origins
from tests.support.traces import MS, T0, S, error_samples

SVC = {name: Resource(name, f"{name}-1", "h", "", {}) for name in
       ("web", "orders", "pricing", "stock", "mailer")}
E500 = {"http.response.status_code": 500}
TID = "ab" * 16


def sp(i: str, parent: str, svc: str, name: str, kind: int, start_ms: float, end_ms: float,
       status: int = 0, **attrs: Any) -> Span:
    return Span(TID, f"{int(i):016x}", f"{int(parent):016x}" if parent else "", name, kind,
                T0 + int(start_ms * MS), T0 + int(end_ms * MS), status, attrs, SVC[svc])


def origins(spans: list[Span]) -> list[tuple[str, bool, list[str], str | None]]:
    a = analyze(spans)
    out = []
    for o in error_origins(a):
        names = [a.spans[i].name for i in o.chain]
        absorbed = a.spans[o.absorbed_by].name if o.absorbed_by is not None else None
        out.append((a.spans[o.index].name, o.surfaced, names, absorbed))
    return sorted(out)


def leaf_failure() -> list[Span]:
    """web -> orders -> its database; the query fails, every span above it fails with it."""
    return [
        sp("1", "", "web", "GET /checkout", 2, 0, 100, 2, **E500),
        sp("2", "1", "web", "POST orders", 3, 5, 90, 2, **E500,
           **{"exception.type": "urllib.error.HTTPError",
              "exception.message": "HTTP Error 500: Internal Server Error"}),
        sp("3", "2", "orders", "POST /orders", 2, 10, 85, 2, **E500),
        sp("4", "3", "orders", "INSERT orders", 3, 20, 30, 2, **{
            "db.system": "sqlite", "exception.type": "sqlite3.OperationalError",
            "exception.message": "database is locked"}),
        sp("5", "3", "orders", "render", 1, 30, 35),
    ]


def test_error_at_a_leaf_is_attributed_to_the_leaf_once() -> None:
    assert origins(leaf_failure()) == [
        ("INSERT orders", True, ["INSERT orders", "POST /orders", "POST orders",
                                 "GET /checkout"], None),
    ]


def test_errors_at_two_levels_are_two_origins() -> None:
    """Two branches fail on their own (pricing's handler raises; orders' query fails), and
    web itself records an exception too: web is explained by its failing children, not an
    origin."""
    spans = leaf_failure() + [
        sp("6", "1", "web", "GET pricing", 3, 40, 60, 2, **E500),
        sp("7", "6", "pricing", "GET /price", 2, 42, 58, 2, **E500,
           **{"exception.type": "KeyError", "exception.message": "'sku-9'"}),
    ]
    spans[0] = sp("1", "", "web", "GET /checkout", 2, 0, 100, 2, **E500,
                  **{"exception.type": "RuntimeError", "exception.message": "checkout failed"})
    got = origins(spans)
    assert [(name, surfaced) for name, surfaced, _, _ in got] == [
        ("GET /price", True), ("INSERT orders", True)]
    assert got[0][2] == ["GET /price", "GET pricing", "GET /checkout"]


def test_a_retry_that_succeeds_absorbs_the_failure() -> None:
    """The first call to stock gets a 503, the retry a 200: the request is fine. The origin
    is stock's failing handler, absorbed by web's handler (which did not fail)."""
    spans = [
        sp("1", "", "web", "GET /checkout", 2, 0, 100),
        sp("2", "1", "web", "GET stock", 3, 5, 20, 2, **{"http.response.status_code": 503}),
        sp("3", "2", "stock", "GET /stock", 2, 6, 19, 2, **{"http.response.status_code": 503}),
        sp("4", "1", "web", "GET stock", 3, 25, 40, 0, **{"http.response.status_code": 200}),
        sp("5", "4", "stock", "GET /stock", 2, 26, 39, 0, **{"http.response.status_code": 200}),
    ]
    assert origins(spans) == [("GET /stock", False, ["GET /stock", "GET stock"],
                               "GET /checkout")]


def test_a_clients_4xx_is_not_a_failure() -> None:
    """A lookup of a missing item: the client span is ERROR (the HTTP client conventions),
    the server answered 404 (not an error there), the caller handled it."""
    spans = [
        sp("1", "", "web", "GET /item", 2, 0, 50, 0, **{"http.response.status_code": 200}),
        sp("2", "1", "web", "GET", 3, 5, 20, 2, **{"http.response.status_code": 404}),
        sp("3", "2", "stock", "GET /stock/{sku}", 2, 6, 19, 0,
           **{"http.response.status_code": 404}),
    ]
    assert origins(spans) == []


def test_async_children_do_not_explain_their_parent() -> None:
    """web fails on its own and, after answering, a fire-and-forget task fails too; a
    message's consumer fails after its producer finished. Each is its own origin: nobody
    waited for the task or the consumer, so their failures surfaced at them."""
    spans = [
        sp("1", "", "web", "POST /signup", 2, 0, 50, 2, **E500,
           **{"exception.type": "ValueError"}),
        sp("2", "1", "web", "send welcome", 1, 60, 80, 2, **{"exception.type": "SMTPError"}),
        sp("3", "1", "web", "publish signup", 4, 10, 12),
        sp("4", "3", "mailer", "process signup", 5, 100, 130, 2,
           **{"exception.type": "TimeoutError"}),
    ]
    assert origins(spans) == [
        ("POST /signup", True, ["POST /signup"], None),
        ("process signup", True, ["process signup"], None),
        ("send welcome", True, ["send welcome"], None),
    ]


def test_fire_and_forget_started_during_the_request_is_its_own_origin() -> None:
    """The welcome mail is sent in a task started while the request runs, which outlives
    it: the request answered 201, so the task's failure was handled by nobody (surfaced)."""
    spans = [
        sp("1", "", "web", "POST /signup", 2, 0, 50, 0, **{"http.response.status_code": 201}),
        sp("2", "1", "web", "send welcome", 1, 45, 300, 2, **{"exception.type": "SMTPError"}),
    ]
    assert origins(spans) == [("send welcome", True, ["send welcome"], None)]


def test_a_retried_failure_does_not_explain_its_callers_own_failure() -> None:
    """stock's first 503 was retried successfully; web then fails on its own (a KeyError):
    web is the origin that reached the root, stock's 503 was absorbed by the retry."""
    spans = [
        sp("1", "", "web", "GET /checkout", 2, 0, 100, 2, **E500,
           **{"exception.type": "KeyError"}),
        sp("2", "1", "web", "GET stock", 3, 5, 20, 2, **{"http.response.status_code": 503}),
        sp("3", "2", "stock", "GET /stock", 2, 6, 19, 2, **{"http.response.status_code": 503}),
        sp("4", "1", "web", "GET stock", 3, 25, 40, 0, **{"http.response.status_code": 200}),
        sp("5", "4", "stock", "GET /stock", 2, 26, 39, 0, **{"http.response.status_code": 200}),
    ]
    assert origins(spans) == [
        ("GET /checkout", True, ["GET /checkout"], None),
        ("GET /stock", False, ["GET /stock", "GET stock"], "GET /checkout"),
    ]


def test_a_grpc_clients_not_found_is_not_a_failure_and_odd_codes_do_not_break() -> None:
    spans = [
        sp("1", "", "web", "GET /quote", 2, 0, 50),
        sp("2", "1", "web", "Quote/Get", 3, 5, 20, 2, **{"rpc.grpc.status_code": 5}),
        sp("3", "2", "pricing", "Quote/Get", 2, 6, 19, 0, **{"rpc.grpc.status_code": [14]}),
    ]
    assert origins(spans) == []
    asm = TraceAssembler(quiet_s=1.0, max_age_s=30.0)
    asm.update(spans)
    asm.advance(T0 + 5 * S)
    assert {s.service for s in asm.drain()} == {"web", "pricing"}


def test_grpc_server_failures_count_without_an_error_status() -> None:
    spans = [
        sp("1", "", "web", "GET /quote", 2, 0, 50, 2, **E500),
        sp("2", "1", "web", "Quote/Get", 3, 5, 20, 2, **{"rpc.grpc.status_code": 14}),
        sp("3", "2", "pricing", "Quote/Get", 2, 6, 19, 0, **{"rpc.grpc.status_code": 14}),
    ]
    assert origins(spans)[0][:2] == ("Quote/Get", True)
    assert origins(spans)[0][2] == ["Quote/Get", "Quote/Get", "GET /quote"]


def test_trace_assembly_counts_failures_at_their_origin_only() -> None:
    asm = TraceAssembler(quiet_s=1.0, max_age_s=30.0)
    asm.update(leaf_failure())
    asm.advance(T0 + 5 * S)
    samples = {s.service: s for s in asm.drain()}
    ops = {(s, o.operation): o for s, sample in samples.items() for o in sample.ops}
    assert {k: o.errors for k, o in ops.items() if o.errors} == {("orders", "INSERT orders"): 1}
    assert all(o.absorbed == 0 for o in ops.values())
    ev = ops[("orders", "INSERT orders")].error
    assert ev["exception.type"] == "sqlite3.OperationalError"
    assert ev["exception.message"] == "database is locked"
    assert ev["chain"] == ["orders: INSERT orders", "orders: POST /orders",
                           "web: POST orders", "web: GET /checkout"]
    assert ev["reached_root"] is True
    # the map: web -> orders (failed), orders -> sqlite (database), user -> web
    edges = {tuple(e[:3]): e[3:5] for s in samples.values() for e in s.edges}
    assert edges == {("web", "orders", ""): [1, 1], ("orders", "sqlite", "database"): [1, 1],
                     ("user", "web", "virtual_node"): [1, 1]}


# -- the detector --------------------------------------------------------------------------


def run(d: ErrorOriginDetector, batches: list[list[Any]]) -> list[Any]:
    out = []
    for batch in batches:
        d.update(batch)
        out += d.advance(max(s.end_ns for s in batch) - 5 * S)
    return out


def test_a_steady_background_rate_does_not_fire_and_a_burst_does() -> None:
    """1.5 % of queries fail all along (learnt as normal); from minute 40 to 45, 30 % do."""
    rate = lambda m: 0.30 if 40 <= m < 45 else 0.015  # noqa: E731
    found = run(ErrorOriginDetector(), error_samples(minutes=55, fail_rate=rate))
    firing = [f for f in found if f.status == "firing"]
    assert len({f.id for f in firing}) == 1
    f = firing[0]
    assert f.kind == ERROR_ORIGIN
    assert f.entity == {"service": "api", "operation": "SELECT users", "peer_service": "users"}
    assert 40 * 60 <= (f.detected_at_ns - T0) / S <= 42 * 60
    ev = f.evidence
    assert ev["baseline"]["error_rate"] < 0.03 and ev["observed"]["error_rate"] > 0.15
    assert ev["exception"]["type"] == "psycopg.errors.UndefinedTable"
    assert ev["exception"]["message"] == 'relation "users" does not exist'
    assert ev["chain"][0] == "api: SELECT users" and ev["reached_root"] is True
    assert ev["callers"] == ["web"]
    assert len(ev["exemplar_trace_ids"]) == 5 and ev["p_value"] < 1e-6
    assert "UndefinedTable" in f.summary and any("users" in s for s in f.next_steps)
    resolved = [x for x in found if x.status == "resolved"]
    assert len(resolved) == 1 and resolved[0].resolved_at_ns > T0 + 45 * 60 * S


def test_no_failures_no_finding_and_callers_are_never_reported() -> None:
    found = run(ErrorOriginDetector(), error_samples(minutes=30, fail_rate=lambda m: 0.0))
    assert found == []
    found = run(ErrorOriginDetector(),
                error_samples(minutes=30, fail_rate=lambda m: 0.5 if m >= 20 else 0.0))
    assert {f.entity["service"] for f in found} == {"api"}  # not web, which only propagated


def test_absorbed_failures_do_not_fire() -> None:
    batches = error_samples(minutes=30, fail_rate=lambda m: 0.5 if m >= 20 else 0.0)
    for batch in batches:  # the same failures, but a caller handled every one of them
        for sample in batch:
            for o in sample.ops:
                o.absorbed, o.errors = o.errors, 0
    d = ErrorOriginDetector()
    assert run(d, batches) == []
    assert d.stats().counters[("anomaly_pipeline_error_origin_absorbed", ())] > 100


def test_sparse_operation_is_judged_on_carried_windows() -> None:
    """One request every 40 s: too few calls per window, judged once enough have gathered.
    The query fails every time from minute 60: found within about ten minutes."""
    batches = error_samples(minutes=90, per_s=1 / 40, fail_rate=lambda m: 1.0 if m >= 60 else 0)
    found = [f for f in run(ErrorOriginDetector(), batches) if f.status == "firing"]
    assert [f.entity["operation"] for f in found] == ["SELECT users"]
    assert 60 * 60 < (found[0].detected_at_ns - T0) / S <= 72 * 60


def test_the_pace_of_the_watermark_does_not_change_the_findings() -> None:
    """The same samples, the watermark moved after every 10 s batch, every 3 minutes, or
    once at the end (a backlog, the end of the input, ``analyze``): the same findings."""
    rate = lambda m: 0.30 if 40 <= m < 45 else (1.0 if 50 <= m < 51 else 0.015)  # noqa: E731
    batches = error_samples(minutes=60, fail_rate=rate)

    def paced(every: int | None) -> list[dict]:
        d, out = ErrorOriginDetector(), []
        for i, batch in enumerate(batches):
            d.update(batch)
            if every is not None and i % every == 0:
                out += d.advance(max(s.end_ns for s in batch) - 5 * S)
        out += d.advance(T0 + 70 * 60 * S)
        return [f.to_dict() for f in out]

    each = paced(1)
    assert {f["status"] for f in each} == {"firing", "resolved"}
    assert paced(18) == each
    assert paced(None) == each

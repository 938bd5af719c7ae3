"""``benchmarks.corpus.summary``: which spans count as error signals, and per label window."""

from __future__ import annotations

from benchmarks.corpus.summary import error_key, summarize
from pipeline.records import Resource, Span


def span(service: str, name: str, start: int, status: int = 0, kind: int = 2,
         parent: str = "", **attrs: object) -> Span:
    return Span(trace_id=f"{start:032x}", span_id=f"{hash((service, name)) & 0xFFFF:016x}",
                parent_id=parent, name=name, kind=kind, start_ns=start, end_ns=start + 5,
                status=status, attrs=dict(attrs), resource=Resource(service, "i", "h", ""))


def test_error_key_reads_status_http_status_and_exceptions() -> None:
    assert error_key(span("a", "GET /x", 1, **{"http.status_code": 200})) is None
    assert error_key(span("a", "GET /x", 1, **{"http.status_code": 404})) == (
        "a", "GET /x", "server", "unset", 404, None)
    assert error_key(span("a", "GET", 1, kind=3, **{"http.response.status_code": 503})) == (
        "a", "GET", "client", "unset", 503, None)
    assert error_key(span("a", "SELECT", 1, status=2, kind=3,
                          **{"exception.type": "sqlite3.OperationalError"})) == (
        "a", "SELECT", "client", "error", None, "sqlite3.OperationalError")
    assert error_key(span("a", "x", 1, status=1, **{"exception.type": "E"})) == (
        "a", "x", "server", "ok", None, "E")


def test_summarize_counts_per_window_and_outside() -> None:
    lines = [{"type": "run"},
             {"type": "label", "kind": "error_origin", "fault": "f", "start_unix_nano": 10,
              "end_unix_nano": 20},
             {"type": "label", "kind": "client_4xx", "negative": True,
              "start_unix_nano": 30, "end_unix_nano": 40}]
    spans = [
        span("fe", "GET /a", 5),  # outside, fine
        span("fe", "GET /a", 12, status=2),  # a failed request
        span("pr", "GET /p", 13, parent="1" * 16, **{"http.status_code": 500}),
        span("pr", "GET /p", 14, parent="1" * 16, **{"http.status_code": 500}),
        span("fe", "GET /a", 35, **{"http.status_code": 404}),  # refused, not failed
        span("fe", "GET /a", 50, **{"http.status_code": 502}),  # outside, failed
    ]
    got = summarize(spans, lines)
    assert (got["spans"], got["traces"], got["error_spans"]) == (6, 6, 5)
    w = got["windows"]
    assert list(w) == ["f (error_origin)", "client_4xx (client_4xx, negative)", "outside"]
    assert {k: w["f (error_origin)"][k] for k in ("spans", "roots", "failed_roots")} == {
        "spans": 3, "roots": 1, "failed_roots": 1}
    assert w["f (error_origin)"]["errors"] == [
        ["pr", "GET /p", "server", "unset", 500, None, 2],
        ["fe", "GET /a", "server", "error", None, None, 1]]
    assert w["client_4xx (client_4xx, negative)"]["failed_roots"] == 0
    assert (w["outside"]["spans"], w["outside"]["failed_roots"]) == (2, 1)

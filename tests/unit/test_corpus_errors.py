"""The real corpus's error faults, without running the programs: their fault flags, the callers'
retry on 503 (against a real loopback server), the labels the injector writes, the ``errors``
schedule, and how ``benchmarks.real_corpus`` scores whether an error's origin was named."""

from __future__ import annotations

import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import scoring
from benchmarks.corpus import programs
from benchmarks.corpus.record import ERROR_FAULTS, SCHEDULES, Run, error_label
from benchmarks.real_corpus import KINDS, origin_named

S = 1_000_000_000


def test_control_reads_the_injectors_flag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CORPUS_CONTROL", raising=False)
    assert programs.control("pricing_error_share") == 0.0  # no control directory: no fault
    monkeypatch.setenv("CORPUS_CONTROL", str(tmp_path))
    assert programs.control("pricing_error_share") == 0.0  # no flag yet
    (tmp_path / "pricing_error_share").write_text("0.3\n")
    assert programs.control("pricing_error_share") == 0.3
    (tmp_path / "pricing_error_share").write_text("garbage")
    assert programs.control("pricing_error_share") == 0.0


def test_run_flag_is_what_the_programs_read(tmp_path: Path, monkeypatch) -> None:
    run = Run(tmp_path, 1.0, 1, "errors")
    monkeypatch.setenv("CORPUS_CONTROL", run.env("catalog")["CORPUS_CONTROL"])
    run.flag("catalog_down_every", 4)
    assert programs.control("catalog_down_every") == 4.0
    run.flag("catalog_down_every", 0)
    assert programs.control("catalog_down_every") == 0.0
    assert not list(run.control.glob(".*"))  # no temporary file left behind


class _Scripted(BaseHTTPRequestHandler):
    """Answers each GET with the next status of the server's script (200 once it runs out)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        script = self.server.script  # type: ignore[attr-defined]
        self.server.seen += 1  # type: ignore[attr-defined]
        code = script.pop(0) if script else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen = [], 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_call_retries_a_503_once_and_raises_other_errors(scripted) -> None:
    url = f"http://127.0.0.1:{scripted.server_address[1]}/item"
    scripted.script[:] = [503]
    assert programs.call(url, retries=1) == b"ok"  # the retry hides the 503
    assert scripted.seen == 2
    scripted.script[:] = [503, 503]
    with pytest.raises(urllib.error.HTTPError) as e:
        programs.call(url, retries=1)  # two in a row: the caller sees it
    assert e.value.code == 503
    scripted.script[:] = [500]
    with pytest.raises(urllib.error.HTTPError) as e:
        programs.call(url, retries=1)  # only a 503 is retried
    assert e.value.code == 500 and scripted.seen == 5
    scripted.script[:] = [503]
    with pytest.raises(urllib.error.HTTPError):
        programs.call(url)  # no retry unless asked


def test_error_labels_in_the_scoring_format() -> None:
    pos = scoring.Label.from_line(error_label("orders_exception", 10 * S, 100 * S, share=0.3))
    assert (pos.kind, pos.negative, pos.entity) == (
        "error_origin", False, {"service": "orders", "operation": "SELECT"})
    assert pos.magnitude == {"share": 0.3} and (pos.start_ns, pos.end_ns) == (10 * S, 100 * S)
    grace = 120 * S  # error_origin's grace in benchmarks.scoring

    def alert(entity: dict[str, str], at_s: float) -> scoring.Alert:
        return scoring.Alert("error_origin", entity, int(at_s * S))

    # the db client span or orders' server span name the origin; a caller does not
    assert pos.matches(alert({"service": "orders", "operation": "SELECT",
                              "operation_detail": "sqlite"}, 50), grace)
    assert pos.matches(alert({"service": "orders", "operation": "POST /order"}, 219), grace)
    assert not pos.matches(alert({"service": "frontend", "operation": "GET /checkout"}, 50),
                           grace)
    assert not pos.matches(alert({"service": "orders", "operation": "SELECT"}, 221), grace)
    pricing = scoring.Label.from_line(error_label("pricing_errors", 0, S))
    assert pricing.entity == {"service": "pricing", "operation": "GET /price"}
    for fault in ("client_404", "catalog_flaky"):
        neg = scoring.Label.from_line(error_label(fault, 10 * S, 100 * S))
        assert neg.negative and neg.must_not_trigger == ("error_origin",)
        assert neg.kind != "error_origin"
        assert neg.matches(alert({"service": "catalog", "operation": "GET /item"}, 50), grace)
    # labels are fresh copies: writing one does not change the next
    first = error_label("orders_exception", 0, 1)
    first["entity_any"][0]["service"] = "x"
    assert error_label("orders_exception", 0, 1)["entity_any"][0]["service"] == "orders"


def test_errors_schedule_leaves_baselines_time_and_does_not_overlap() -> None:
    sc = SCHEDULES["errors"]
    minutes = sc["minutes"]
    windows = sorted((a * minutes, b * minutes, kind) for kind, *_, a, b in sc["faults"])
    assert {kind for *_, kind in windows} == set(ERROR_FAULTS)
    assert windows[0][0] >= 5.0  # normal traffic first, for the baselines
    for (_, b, _), (c, _, _) in zip(windows, windows[1:], strict=False):
        assert c - b >= 1.0  # normal traffic between faults
    for a, b, kind in windows:
        assert 2.0 <= b - a <= 3.0, kind
    assert windows[-1][1] <= minutes - 2.0
    assert min(sc["load_rates"]) >= 1.0
    # the other schedules keep their own load and faults
    assert SCHEDULES["a"].get("load_rates") is None and "minutes" not in SCHEDULES["a"]


def test_origin_named_needs_the_label_service_in_time() -> None:
    truth = scoring.LabelSet.from_lines([
        {"type": "run", "scenario": "errors", "start_unix_nano": 0,
         "end_unix_nano": 1200 * S, "duration_s": 1200.0, "entities": {"operations": 20}},
        error_label("pricing_errors", 300 * S, 450 * S),
        error_label("client_404", 500 * S, 600 * S),
        error_label("orders_exception", 700 * S, 850 * S),
    ])

    def finding(fid: str, service: str, at_s: int, status: str = "firing") -> dict:
        return {"id": fid, "kind": "error_origin", "status": status,
                "entity": {"service": service, "operation": "GET /price"},
                "detected_at": f"1970-01-01T00:{at_s // 60:02d}:{at_s % 60:02d}Z"}

    findings = [
        finding("a", "frontend", 320),  # a caller, not the origin
        finding("b", "pricing", 460),  # the origin, within the grace
        finding("c", "orders", 990, "resolved"),  # resolved records do not count
        finding("d", "orders", 980),  # after the grace
    ]
    got = origin_named(findings, truth)
    assert (got["faults"], got["named"], got["share"]) == (2, 1, 0.5)
    assert [(r["service"], r["named"]) for r in got["detail"]] == [
        ("pricing", True), ("orders", False)]
    assert got["detail"][0]["delay_s"] == 160.0
    assert "error_origin" in KINDS
    assert scoring.grace_ns("error_origin") == 120 * S
    assert truth.entity_hours("error_origin") == pytest.approx(20 * 1200 / 3600)

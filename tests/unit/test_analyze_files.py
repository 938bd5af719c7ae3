"""``python -m pipeline analyze --file`` on simulated traffic written as the Collector's file
exporter writes it (OTLP/JSON lines, length-prefixed protobuf, gzip): every format gives the
same report, every record is read, and a slow query injected by the simulator is the slowest
operation of its range, with its ``bottleneck_span`` finding and exemplar traces of the input."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline import otlp
from pipeline.__main__ import main
from pipeline.findings import rfc3339
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import BOTTLENECK_SPAN
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START

ROOT = Path(__file__).parents[2]
M = 60.0
TARGET = {"service": "user-service", "operation": "SELECT users"}


def write(records: list, path: Path, fmt: str) -> None:
    """As the file exporter: ``json``, one request per line; ``proto``, each request after its
    length as a 4-byte big-endian unsigned integer."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        for r in records:
            if fmt == "json":
                assert b"\n" not in r.value
                f.write(r.value + b"\n")
            else:
                f.write(struct.pack(">I", len(r.value)) + r.value)


def simulate(encoding: str, **kw: object) -> list:
    sc = build_scenario("healthy", seed=4, start=DEFAULT_REPLAY_START, encoding=encoding,
                        keying="unkeyed", **kw)
    return list(iter_records(sc))


def analyze(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as done:
        main(["analyze", "--json", "--no-progress", *args])
    assert done.value.code == 0
    return orjson.loads(capsys.readouterr().out)


def test_json_lines_proto_and_gzip_give_one_report(tmp_path: Path, capsys) -> None:
    as_json = simulate("otlp_json", duration="4m", rate=10)
    as_proto = simulate("otlp_proto", duration="4m", rate=10)
    write(as_json, tmp_path / "traffic.jsonl", "json")
    write(as_json, tmp_path / "traffic.jsonl.gz", "json")
    write(as_proto, tmp_path / "traffic.pb", "proto")
    spans = [s for r in as_proto for s in (otlp.decode_spans(r.value).items
                                           if r.topic == "otlp_spans" else [])]
    docs = {name: analyze(capsys, "--file", str(tmp_path / name), "--service", "frontend",
                          "--latency-threshold", "200ms")
            for name in ("traffic.jsonl", "traffic.jsonl.gz", "traffic.pb")}
    run = docs["traffic.pb"]["run"]
    assert run["records"] == run["requests"] == len(as_proto)
    assert run["spans"] == len(spans) and run["dead_letters"] == {}
    assert run["stopped_early"] is None
    same = [{k: v for k, v in d.items() if k != "run"} for d in docs.values()]
    assert same[0] == same[1] == same[2]
    doc = same[0]
    assert doc["traces"]["count"] > 1000
    ids = {s.trace_id for s in spans}
    for row in doc["slowest_by_critical_path"] + doc["slowest_by_exclusive_time"]:
        assert row["service"] == "frontend" and set(row["exemplar_trace_ids"]) <= ids
    callers = {(e["client"], e["server"]) for e in doc["dependencies"]["callers"]}
    assert callers == {("user", "frontend")}
    assert doc["dependencies"]["callees"]
    # The text report of the same file, as a person runs it.
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "analyze", "--file", str(tmp_path / "traffic.pb"),
         "--service", "frontend"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Analysis of frontend: ")
    assert "Dependency map" in out.stdout and "\n  frontend\n" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 100
    assert out.stderr == ""  # no progress bar when stderr is not a terminal


def test_injected_slow_query_is_the_slowest_operation_of_its_range(tmp_path: Path,
                                                                  capsys) -> None:
    records = simulate("otlp_proto", duration="14m", rate=8,
                       faults=[Fault(BOTTLENECK_SPAN, TARGET, 10 * M, 14 * M,
                                     {"added_ms": 120.0})])
    path = tmp_path / "traffic.pb"
    write(records, path, "proto")
    start = build_scenario("healthy", start=DEFAULT_REPLAY_START).start_ns
    at = lambda m: rfc3339(int(start + m * M * 1e9))  # noqa: E731
    doc = analyze(capsys, "--file", str(path), "--service", "user-service",
                  "--from", at(10.5), "--to", at(14), "--baseline", "10m30s",
                  "--latency-threshold", "100ms")
    assert doc["range"]["from"] == at(10.5) and at(10.5) <= doc["range"]["first_trace"]
    assert doc["range"]["last_trace"] < at(14)
    top = doc["slowest_by_critical_path"][0]
    assert (top["service"], top["operation"]) == ("user-service", "SELECT users")
    assert top["p50_ms"] > 100 and top["share_of_slow_trace_time"] > 0.5
    found = doc["findings"]["latency"]
    assert [(f["kind"], f["entity"]["service"], f["entity"]["operation"]) for f in found] == [
        ("bottleneck_span", "user-service", "SELECT users")]
    ids = {s.trace_id for r in records if r.topic == "otlp_spans"
           for s in otlp.decode_spans(r.value).items}
    assert set(found[0]["evidence"]["exemplar_trace_ids"]) <= ids
    assert doc["limits"]["samples_before_range"] > 0  # the baseline was read, not reported
    # Stopped early: the report says so, and where.
    early = analyze(capsys, "--file", str(path), "--max-records", "100")
    assert early["run"]["records"] == 100
    assert early["run"]["stopped_early"].startswith("--max-records 100 reached at event time")

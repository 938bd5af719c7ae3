"""Real broker, real worker, simulated traffic: a slow database query in one operation becomes a
``bottleneck_span`` finding naming that service and operation, with exemplar trace ids from
the input, and resolves after the fault ends; a later everything-slower period gives no
``bottleneck_span`` finding."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline import otlp
from pipeline.findings import rfc3339
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import BOTTLENECK_SPAN, GLOBAL_SLOWDOWN
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
M = 60.0
TARGET = {"service": "user-service", "operation": "SELECT users"}


async def test_slow_query_found_explained_and_resolved_but_global_slowdown_is_not(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    scenario = build_scenario(
        "healthy", seed=4, duration="24m", rate=15, start=DEFAULT_REPLAY_START,
        faults=[
            Fault(BOTTLENECK_SPAN, TARGET, 11 * M, 15 * M, {"added_ms": 120.0}),
            Fault(GLOBAL_SLOWDOWN, {}, 18 * M, 22 * M, {"factor": 1.6}),
        ],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    records = list(iter_records(scenario))
    trace_ids: set[str] = set()
    n_spans = 0
    for rec in records:
        if rec.topic == scenario.spans_topic:
            spans = otlp.decode_spans(rec.value).items
            n_spans += len(spans)
            trace_ids.update(s.trace_id for s in spans)
    await write_records(records, {"bootstrap_servers": bootstrap}, mode="replay",
                        spans_topic=scenario.spans_topic, progress=lambda line: None)

    worker = workers({**names, "PIPELINE_DETECTORS": ""})
    await wait_for(
        lambda: worker.metric("anomaly_pipeline_items_detected_total", signal="spans")
        >= n_spans or not worker.alive(),
        timeout=300, what="every span applied",
    )
    assert worker.alive(), worker.log()[-3000:]

    def done(recs: list) -> bool:
        return any(orjson.loads(r.value)["kind"] == BOTTLENECK_SPAN
                   and orjson.loads(r.value)["status"] == "resolved" for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], done, timeout=120)
    findings = [orjson.loads(r.value) for r in out]
    for r, f in zip(out, findings, strict=True):
        jsonschema.validate(f, SCHEMA)
        assert r.key == f["fingerprint"].encode()
    bottlenecks = [f for f in findings if f["kind"] == BOTTLENECK_SPAN]
    assert bottlenecks, f"no bottleneck_span finding; got {findings}; log:\n{worker.log()[-3000:]}"
    # Only the injected operation: not its callers, and nothing in the global slowdown.
    assert {(f["entity"]["service"], f["entity"]["operation"]) for f in bottlenecks} == {
        (TARGET["service"], TARGET["operation"])
    }
    fired = next(f for f in bottlenecks if f["status"] == "firing")
    resolved = next(f for f in bottlenecks if f["status"] == "resolved")
    start = scenario.start_ns
    at = lambda m: rfc3339(int(start + m * 60e9))  # noqa: E731
    assert at(11) <= fired["started_at"] and fired["detected_at"] <= at(13)
    assert at(15) < resolved["resolved_at"] <= at(18)
    assert resolved["id"] == fired["id"]
    ev = fired["evidence"]
    assert 0 < len(ev["exemplar_trace_ids"]) <= 5
    assert set(ev["exemplar_trace_ids"]) <= trace_ids
    assert ev["added_latency_ms_per_trace"] == pytest.approx(120, rel=0.25)
    assert ev["resource"].get("db.system")
    assert any("read replica" in step for step in fired["next_steps"])
    assert fired["runbook_url"].endswith("/docs/runbooks/bottleneck_span.md")
    # The global slowdown is named as what it is, per service, if at all: never a bottleneck.
    late = [f for f in findings if f["started_at"] >= at(17)]
    assert all(f["kind"] == "latency_regression" for f in late), [
        (f["kind"], f["status"], f["entity"], f["started_at"], f["summary"]) for f in late]
    assert worker.metric(
        "anomaly_pipeline_findings_total", kind=BOTTLENECK_SPAN, severity="warning",
        status="firing",
    ) >= 1

"""Real broker, real worker, simulated traffic with failures written as the SDKs write them: a
failing database call becomes one ``error_origin`` finding on that call (not on the services
its failure went up through), with its exception, chain and exemplar traces from the input,
and resolves; a flaky dependency hidden by retries and a client's 404s give none."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline import otlp
from pipeline.findings import rfc3339
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import CLIENT_4XX, ERROR_ORIGIN, FLAKY_RETRY
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
M = 60.0
TARGET = {"service": "user-service", "operation": "SELECT users"}


async def test_failing_query_is_the_origin_and_retries_or_404s_are_not(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    scenario = build_scenario(
        "healthy", seed=6, duration="26m", rate=15, start=DEFAULT_REPLAY_START,
        faults=[
            Fault(ERROR_ORIGIN, TARGET, 10 * M, 14 * M, {"error_rate": 0.3}),
            Fault(FLAKY_RETRY, {"service": "frontend", "operation": "GET /cart"}, 16 * M,
                  20 * M, {"rate": 0.3}),
            Fault(CLIENT_4XX, {"service": "frontend", "operation": "GET /products/{id}"},
                  20 * M, 24 * M, {"rate": 0.3}),
        ],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    records = list(iter_records(scenario))
    failing: set[str] = set()  # traces in which the query failed
    n_spans = 0
    for rec in records:
        if rec.topic == scenario.spans_topic:
            spans = otlp.decode_spans(rec.value).items
            n_spans += len(spans)
            failing.update(s.trace_id for s in spans
                           if s.name == TARGET["operation"] and s.status == 2)
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
        return any(orjson.loads(r.value)["kind"] == ERROR_ORIGIN
                   and orjson.loads(r.value)["status"] == "resolved" for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], done, timeout=120)
    findings = [orjson.loads(r.value) for r in out]
    for f in findings:
        jsonschema.validate(f, SCHEMA)
    origins = [f for f in findings if f["kind"] == ERROR_ORIGIN]
    # Only the query: not user-service's handler or frontend, which failed because of it, and
    # nothing for the retried 503s or the 404s.
    assert {(f["entity"]["service"], f["entity"]["operation"]) for f in origins} == {
        (TARGET["service"], TARGET["operation"])}, [f["summary"] for f in origins]
    fired = next(f for f in origins if f["status"] == "firing")
    resolved = next(f for f in origins if f["status"] == "resolved")
    at = lambda m: rfc3339(int(scenario.start_ns + m * 60e9))  # noqa: E731
    assert at(10) <= fired["started_at"] and fired["detected_at"] <= at(12)
    assert at(14) < resolved["resolved_at"] <= at(17)
    ev = fired["evidence"]
    assert ev["observed"]["error_rate"] > 0.15 > 0.02 > ev["baseline"]["error_rate"]
    assert ev["exception"]["type"] and ev["chain"][0] == "user-service: SELECT users"
    assert ev["reached_root"] is True and "frontend" in ev["callers"]
    assert set(ev["exemplar_trace_ids"]) <= failing and ev["exemplar_trace_ids"]
    assert fired["severity"] == "critical" and fired["next_steps"]
    # Absorbed failures (the retried 503s) were counted, not reported.
    assert worker.metric("anomaly_pipeline_error_origin_absorbed_total") > 0

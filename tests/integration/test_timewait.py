"""Real broker, real worker, simulated hosts and traces: ``frontend`` on ``node-2`` stops reusing
its connections to ``cart``. The host's hostmetrics (``system.network.connections``) reach the
TIME_WAIT detector by host; the client spans reach the span stage by trace, which counts calls
per host and sends them on as a side input. The finding names the host, the client and the
destination; the other hosts, and a 3x traffic spike afterwards, give none; it resolves after
reuse comes back."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline import otlp
from pipeline.detectors.timewait import KIND
from pipeline.findings import rfc3339
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import TIME_WAIT_BUILDUP, TRAFFIC_SPIKE
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
M = 60.0


async def test_lost_reuse_found_on_its_host_and_named_from_client_spans(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    scenario = build_scenario(
        "healthy", seed=5, duration="14m", start=DEFAULT_REPLAY_START, rate=30,
        faults=[
            Fault(TIME_WAIT_BUILDUP, {"host": "node-2"}, 6 * M, 10 * M,
                  {"connections_per_call": 1},
                  evidence={"service": "frontend", "destination": "cart"}),
            Fault(TRAFFIC_SPIKE, {}, 11.5 * M, 13.5 * M, {"factor": 3.0}),
        ],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    worker = workers({**names, "PIPELINE_DETECTORS": ""})
    records = list(iter_records(scenario))
    spans = [r for r in records if r.topic == scenario.spans_topic]
    metrics = [r for r in records if r.topic != scenario.spans_topic]
    n_spans = sum(len(otlp.decode_spans(r.value).items) for r in spans)
    kafka = {"bootstrap_servers": bootstrap}
    # Live, spans and metrics arrive as they happen. Replayed as fast as it goes, the metrics
    # would outrun the span stage (the finding would then open unnamed and be amended once the
    # calls are in, ``test_calls_that_arrive_after_the_finding_opened_amend_it``); here the
    # span stage is given its head start, so the join itself is what is tested.
    await write_records(spans, kafka, mode="replay", spans_topic=scenario.spans_topic,
                        progress=lambda line: None)
    await wait_for(
        lambda: worker.metric("anomaly_pipeline_items_detected_total", signal="spans")
        >= n_spans or not worker.alive(), timeout=240, what="the spans applied",
    )
    assert worker.alive(), worker.log()[-3000:]
    await write_records(metrics, kafka, mode="replay", spans_topic=scenario.spans_topic,
                        progress=lambda line: None)

    def resolved(recs: list) -> bool:
        return any(orjson.loads(r.value)["kind"] == KIND
                   and orjson.loads(r.value)["status"] == "resolved" for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], resolved, timeout=300)
    findings = [orjson.loads(r.value) for r in out]
    for f in findings:
        jsonschema.validate(f, SCHEMA)
    tw = [f for f in findings if f["kind"] == KIND]
    assert tw, f"no {KIND} finding: {findings}\n{worker.log()[-3000:]}"
    assert {f["entity"]["host"] for f in tw} == {"node-2"}, "only the host that lost reuse"
    start = scenario.start_ns
    at = lambda m: rfc3339(int(start + m * M * 1e9))  # noqa: E731
    fired = next(f for f in tw if f["status"] == "firing")
    assert at(6) < fired["detected_at"] <= at(9), fired["evidence"]
    # Replayed as fast as it goes, the span stage runs behind the metrics: the finding may
    # open before the client calls of its minutes are in, and is then published again (same
    # id) naming the client.
    named = [f for f in tw if f["status"] == "firing" and f["evidence"]["candidates"]]
    assert named, f"client spans from node-2 should name the client: {tw}"
    assert {f["id"] for f in tw} == {fired["id"]}
    ev = named[0]["evidence"]
    assert (ev["candidates"][0]["service"], ev["candidates"][0]["destination"]) == (
        "frontend", "cart")
    assert "frontend" in ev["top_services"] and "cart" in named[0]["summary"]
    assert ev["time_wait"] > 2 * ev["expected_time_wait"]
    done = next(f for f in tw if f["status"] == "resolved")
    assert done["id"] == fired["id"] and at(10) < done["resolved_at"] <= at(12.5)
    assert worker.metric("anomaly_pipeline_items_derived_total", signal="metrics") > 0

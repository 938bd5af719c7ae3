"""Real broker, real workers, simulated runtime metrics: a memory leak in one Go instance
becomes a ``memory_leak`` finding for that instance only, with a time to OOM. The worker is
killed (SIGKILL) half-way through the leak and replaced by one with an empty data directory:
the finding still comes, at the event time an uninterrupted detector reports it, from state
restored out of the changelog. A restart of the leaking instance then resolves it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline import otlp
from pipeline.detectors.memory import LEAK, MemoryDetector
from pipeline.findings import rfc3339
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import MEMORY_LEAK, RESTART
from pipeline.simulate.labels import label_lines
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
M = 60.0
SLOT = {"service": "user-service", "instance": "user-service#0"}  # a Go instance
KILL_AT_MIN = 15  # after the onset (5), before the detector can call it (about 21)


def offline_first_firing(records: list) -> int:
    """When the same detector, fed the same points without interruption, reports the leak."""
    d = MemoryDetector()
    for rec in records:
        points = otlp.decode_metrics(rec.value).items
        d.update(points)
        for f in d.advance(max(p.time_ns for p in points) - 5 * 10**9):
            if f.kind == LEAK and f.status == "firing":
                return f.detected_at_ns
    raise AssertionError("the offline detector found no leak")


async def test_leak_found_across_a_sigkill_and_resolved_by_a_restart(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    scenario = build_scenario(
        "healthy", seed=4, duration="40m", start=DEFAULT_REPLAY_START, emit_spans=False,
        faults=[
            Fault(MEMORY_LEAK, SLOT, 5 * M, 40 * M, {"rate_pct_limit_per_hour": 60.0}),
            Fault(RESTART, SLOT, 32 * M, 36 * M),
        ],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    label = next(x for x in label_lines(scenario) if x.get("kind") == MEMORY_LEAK)
    leaking = label["entity"]
    records = list(iter_records(scenario))
    assert records and all(r.topic == scenario.metrics_topic for r in records)
    expected_at = offline_first_firing(records)
    start = scenario.start_ns
    cut = start + int(KILL_AT_MIN * M * 1e9)
    first_half = [r for r in records if r.timestamp_ms * 10**6 < cut]
    second_half = [r for r in records if r.timestamp_ms * 10**6 >= cut]
    points_first = sum(len(otlp.decode_metrics(r.value).items) for r in first_half)
    assert expected_at > cut, "the kill must land before the leak can be called"

    env = {**names, "PIPELINE_DETECTORS": "", "KAFKA_SESSION_TIMEOUT_S": "6",
           "STATE_FLUSH_INTERVAL_S": "0.3"}
    first = workers(env, data_dir="first")
    await write_records(first_half, {"bootstrap_servers": bootstrap}, mode="replay",
                        spans_topic=scenario.spans_topic, progress=lambda line: None)
    await wait_for(
        lambda: first.metric("anomaly_pipeline_items_detected_total", signal="metrics")
        >= points_first or not first.alive(),
        timeout=180, what="the first half applied",
    )
    assert first.alive(), first.log()[-3000:]
    # Saved: a few flushes since (a flush follows every change within STATE_FLUSH_INTERVAL_S;
    # heartbeats keep an idle worker flushing its watermarks).
    flushed = first.metric("anomaly_pipeline_state_flushes_total", stream="metrics")
    await wait_for(
        lambda: first.metric("anomaly_pipeline_state_flushes_total", stream="metrics")
        >= flushed + 3 * 4,  # every one of the 4 partitions, three times
        timeout=60, what="state saved after the first half")
    first.kill()  # SIGKILL: no shutdown, no final commit
    await asyncio.sleep(float(env["KAFKA_SESSION_TIMEOUT_S"]) + 1)
    # A fresh data directory: the detector state must come back from the changelog topic.
    second = workers(env, data_dir="second")
    await write_records(second_half, {"bootstrap_servers": bootstrap}, mode="replay",
                        spans_topic=scenario.spans_topic, progress=lambda line: None)

    def resolved(recs: list) -> bool:
        return any(orjson.loads(r.value)["kind"] == LEAK
                   and orjson.loads(r.value)["status"] == "resolved" for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], resolved, timeout=240)
    findings = [orjson.loads(r.value) for r in out]
    for r, f in zip(out, findings, strict=True):
        jsonschema.validate(f, SCHEMA)
        assert r.key == f["fingerprint"].encode()
    leaks = [f for f in findings if f["kind"] == LEAK]
    progress = {k: v for k, v in second.metrics().items()
                if k[0].startswith("anomaly_pipeline_") and "bucket" not in k[0]
                and "_created" not in k[0]}
    assert leaks, f"no memory_leak finding: {findings}\n{progress}\n{second.log()[-3000:]}"
    assert {(f["entity"]["service"], f["entity"]["instance"]) for f in leaks} == {
        (leaking["service"], leaking["instance"])
    }, "only the leaking instance"
    assert "restored metrics partition" in second.log()
    fired = next(f for f in leaks if f["status"] == "firing")
    # On time: when an uninterrupted detector reports it (a minute of slack for watermarks).
    assert rfc3339(expected_at - int(60e9)) <= fired["detected_at"] <= rfc3339(
        expected_at + int(60e9))
    ev = fired["evidence"]
    truth = (label["truth"]["processes"][0]["oom_at_unix_nano"] - expected_at) / 1e9
    assert ev["time_to_oom_s"] == pytest.approx(truth, rel=0.5)
    assert ev["runtime"] == "go" and ev["limit_source"] == "metric"
    assert any("pprof" in step for step in fired["next_steps"])
    # The instance restarts at minute 32: the leak resolves then, saying why.
    done = next(f for f in leaks if f["status"] == "resolved")
    assert done["id"] == fired["id"]
    at = lambda m: rfc3339(int(start + m * M * 1e9))  # noqa: E731
    assert at(32) <= done["resolved_at"] <= at(33)
    assert "restarted" in done["evidence"]["resolved_because"]
    assert second.metric("anomaly_pipeline_findings_total", kind=LEAK, severity=fired["severity"],
                         status="firing") >= 1 or fired["detected_at"] < at(KILL_AT_MIN)

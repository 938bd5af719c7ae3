"""Real broker: a worker killed with SIGKILL mid-stream is replaced; the new one restores the
detector state from the changelog and resumes with no record skipped or counted twice. Every
finding it publishes is valid against the schema and keyed by its fingerprint."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pytest

from tests.integration.conftest import consume, produce, wait_for
from tests.support.otlp_build import T0, span_request

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
N_RECORDS, SPANS_PER_RECORD = 400, 10
SERVICES = ["checkout", "cart", "payment", "canary"]


def records(topic: str) -> tuple[list[tuple], Counter]:
    """Spans over ~6.7 minutes of event time; `canary` only in the first half."""
    out, expected = [], Counter()
    for i in range(N_RECORDS):
        service = SERVICES[i % 3] if (i % 4 or i >= N_RECORDS // 2) else "canary"
        t = T0 + i * 10**9
        spans = [{"trace_id": (i * 100 + j + 1).to_bytes(16, "big"),
                  "span_id": (j + 1).to_bytes(8, "big"), "start": t, "end": t + 10**7}
                 for j in range(SPANS_PER_RECORD)]
        req = span_request(spans, {"service.name": service, "service.instance.id": "i-1"})
        out.append((topic, None, req.SerializeToString(), t // 10**6))
        expected[f"{service}|i-1"] += SPANS_PER_RECORD
    return out, expected


async def changelog_counts(bootstrap: str, app_id: str, expected_total: int) -> Counter:
    """The span counter's persisted state: latest value per key in the changelog topic."""
    latest: dict[bytes, bytes | None] = {}

    def total(recs: list) -> bool:
        for r in recs[len(latest_seen):]:
            latest[r.key] = r.value
        latest_seen.extend(recs[len(latest_seen):])
        return sum(_counts(latest).values()) >= expected_total

    latest_seen: list = []
    await consume(bootstrap, f"{app_id}-spans-state-changelog", total, timeout=60)
    return _counts(latest)


def _counts(latest: dict[bytes, bytes | None]) -> Counter:
    out: Counter = Counter()
    for key, value in latest.items():
        parts = key.decode().split("/", 2)  # partition/detector/key, or partition/__engine__
        is_count = len(parts) == 3 and parts[1] == "test_span_counter" and parts[2][:2] == "c:"
        if is_count and value is not None:
            out[parts[2][2:]] += orjson.loads(value)
    return out


async def test_sigkill_restart_restores_state_and_skips_nothing(
    bootstrap: str, names: dict, workers
) -> None:
    env = {**names, "KAFKA_SESSION_TIMEOUT_S": "6", "STATE_FLUSH_INTERVAL_S": "0.3"}
    first = workers(env, data_dir="first")
    batch, expected = records(names["OTLP_SPANS_TOPIC"])
    total = N_RECORDS * SPANS_PER_RECORD

    async def feed() -> None:  # a steady stream, so the kill lands mid-stream
        for i in range(0, N_RECORDS, 20):
            await produce(bootstrap, batch[i:i + 20])
            await asyncio.sleep(0.25)

    feeding = asyncio.create_task(feed())
    await wait_for(lambda: first.metric("anomaly_pipeline_items_detected_total",
                                        signal="spans") >= total // 4, what="a quarter")
    first.kill()  # SIGKILL: no shutdown, no final commit, no final flush
    done_before_kill = not feeding.done()
    # A fresh data directory: the state must come back from the changelog topic, not from disk.
    second = workers(env, data_dir="second")
    await feeding
    assert done_before_kill, "the kill should land while records are still arriving"

    counts = await changelog_counts(bootstrap, names["PIPELINE_APP_ID"], total)
    assert counts == expected, second.log()[-3000:]  # nothing skipped, nothing counted twice
    assert "restored spans partition" in second.log()
    # The second worker applied only what the first had not saved.
    applied_second = second.metric("anomaly_pipeline_items_detected_total", signal="spans")
    assert 0 < applied_second < total

    findings = await consume(
        bootstrap, names["FINDINGS_TOPIC"],
        lambda recs: any(orjson.loads(r.value)["status"] == "resolved" for r in recs),
        timeout=60,
    )
    assert findings, "the canary should have produced findings"
    statuses = Counter()
    for rec in findings:
        doc = orjson.loads(rec.value)
        jsonschema.validate(doc, SCHEMA)
        assert rec.key == doc["fingerprint"].encode()
        assert doc["entity"] == {"service": "canary"}
        statuses[doc["status"]] += 1
    assert statuses["firing"] >= 1 and statuses["resolved"] >= 1

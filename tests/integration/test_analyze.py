"""``python -m pipeline analyze --source kafka`` on a real broker: it reads exactly the records
of the range asked (by timestamp, across partitions), and leaves the topics and every consumer
group's offsets as they were."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from pipeline import otlp
from pipeline.findings import rfc3339
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration
M = 60 * 10**9


async def _state(bootstrap: str, topics: dict[str, int], group: str, tag: str) -> dict:
    """What analyze must not change: the topics' end offsets, this test's groups and topics
    (other tests create and delete theirs meanwhile), one group's offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        ends = await consumer.end_offsets(tps)
        groups = sorted(str(g[0]) for g in await admin.list_consumer_groups()
                        if str(g[0]).startswith(tag))
        offsets = await admin.list_consumer_group_offsets(group)
        return {"ends": ends, "groups": groups,
                "offsets": {tp: m.offset for tp, m in offsets.items()},
                "topics": sorted(t for t in await admin.list_topics() if t.startswith(tag))}
    finally:
        await consumer.stop()
        await admin.close()


async def test_reads_only_the_range_and_touches_no_offsets(names: dict[str, str],
                                                           bootstrap: str) -> None:
    spans_topic, metrics_topic = names["OTLP_SPANS_TOPIC"], names["OTLP_METRICS_TOPIC"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(spans_topic, 3, 1), NewTopic(metrics_topic, 2, 1)])
    finally:
        await admin.close()
    scenario = build_scenario("healthy", seed=2, duration="8m", rate=6,
                              start=DEFAULT_REPLAY_START, spans_topic=spans_topic,
                              metrics_topic=metrics_topic)
    records = list(iter_records(scenario))
    stats = await write_records(records, {"bootstrap_servers": bootstrap}, mode="replay",
                                spans_topic=spans_topic, progress=lambda line: None)
    assert stats.failed == 0 and stats.records == len(records)

    # A worker's group with committed offsets: analyze must leave them alone.
    group = f"{names['PIPELINE_APP_ID']}-ingest"
    worker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await worker.start()
    try:
        tp = TopicPartition(spans_topic, 0)
        worker.assign([tp])
        await worker.commit({tp: 7})
    finally:
        await worker.stop()
    tag = names["PIPELINE_APP_ID"]
    parts = {spans_topic: 3, metrics_topic: 2}
    before = await _state(bootstrap, parts, group, tag)
    assert before["offsets"] == {TopicPartition(spans_topic, 0): 7}
    assert sum(before["ends"].values()) == len(records)
    assert before["groups"] == [group] and before["topics"] == sorted(parts)

    lo, hi = scenario.start_ns + 3 * M, scenario.start_ns + 6 * M
    in_range = [r for r in records if lo // 10**6 <= r.timestamp_ms < hi // 10**6]
    spans = [s for r in in_range if r.topic == spans_topic
             for s in otlp.decode_spans(r.value).items]
    assert 0 < len(in_range) < len(records)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "analyze", "--source", "kafka", "--json",
         "--from", rfc3339(lo), "--to", rfc3339(hi), "--service", "frontend"],
        cwd=ROOT, capture_output=True, timeout=600,
        env={**os.environ, **names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
             "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    doc = orjson.loads(out.stdout)
    run = doc["run"]
    assert run["records"] == len(in_range) == run["planned_records"]
    assert run["spans"] == len(spans)
    assert run["skipped_out_of_range"] == 0 and run["dead_letters"] == {}
    assert set(run["offsets"]) == {f"{spans_topic}[{p}]" for p in range(3)} | {
        f"{metrics_topic}[{p}]" for p in range(2)}
    assert doc["range"]["from"] == rfc3339(lo) and doc["range"]["to"] == rfc3339(hi)
    assert rfc3339(lo) <= doc["range"]["first_trace"] <= doc["range"]["last_trace"] < rfc3339(hi)
    assert doc["traces"]["count"] > 100
    ids = {s.trace_id for s in spans}
    assert set(doc["slowest_by_critical_path"][0]["exemplar_trace_ids"]) <= ids

    after = await _state(bootstrap, parts, group, tag)
    assert after == before  # no records written, no topic or group created, offsets untouched

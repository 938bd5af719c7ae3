"""Real broker, one worker: input that used to stop or poison the pipeline, all in one stream.

- a valid 15,000-span trace in one ~0.9 MB record: routed in chunks under the topic's message
  limit (it used to be one refused message, re-read for ever), its spans capped and counted;
- a 20 MB record (the topic allows it): dead-lettered as ``record_too_large`` with a 64 KiB
  prefix and the original size and SHA-256 in headers (the whole value used to be refused);
- metric points that are NaN, infinite or flagged no-recorded-value (the staleness marker):
  dropped at decode and counted, the rest of their record used;
- spans from a host whose clock is 20 minutes ahead: counted, and no later record is late;
- a span record that is not protobuf: dead-lettered as ``invalid_protobuf``;
- a plug-in detector that raises on every batch, beside the built-ins: counted, quarantined,
  and the other detectors' findings still published;
- then the input goes quiet: the end of input closes the last windows; and a rerun of older
  records into the saved state is reported at once (log and metric).

Ingest reads every record exactly once (no re-read loop) and the canary finding of the test
detector fires and resolves. All of it twice: spans regrouped by trace id, and with
``OTLP_SPANS_KEYING=trace_id`` (span records forwarded undecoded and decoded, dead-lettered and
clocked by the span stage; a record too large to forward decoded by ingest).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import jsonschema
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import consume, produce, wait_for
from tests.support.otlp_build import T0, span_request

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
S = 10**9
BIG = 20 * 1024 * 1024


def spans_record(topic: str, i: int, service: str, t: int, n: int = 5,
                 host: str = "node-1") -> tuple:
    spans = [{"trace_id": (i * 1000 + j + 1).to_bytes(16, "big"),
              "span_id": (j + 1).to_bytes(8, "big"), "start": t, "end": t + 10**7}
             for j in range(n)]
    req = span_request(spans, {"service.name": service, "service.instance.id": f"{service}-1",
                               "host.name": host})
    return (topic, None, req.SerializeToString(), t // 10**6)


def giant_trace(topic: str, t: int, n: int = 15_000) -> tuple:
    root = {"trace_id": b"\x42" * 16, "span_id": (1).to_bytes(8, "big"), "start": t,
            "end": t + 2 * S, "name": "batch"}
    spans = [root] + [{"trace_id": b"\x42" * 16, "span_id": (j + 2).to_bytes(8, "big"),
                       "parent": root["span_id"], "start": t + j, "end": t + j + 1000,
                       "name": "item", "kind": 1} for j in range(n - 1)]
    req = span_request(spans, {"service.name": "batcher", "service.instance.id": "b-1"})
    return (topic, b"\x42" * 16, req.SerializeToString(), (t + 2 * S) // 10**6)


def bad_points(topic: str, t: int) -> tuple:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "cart"
    g = rm.scope_metrics.add().metrics.add()
    g.name, g.unit = "process.memory.usage", "By"
    for k, (value, flags) in enumerate([(1e8, 0), (float("nan"), 0), (float("inf"), 0),
                                        (0.0, 1), (1.01e8, 0)]):
        dp = g.gauge.data_points.add()
        dp.time_unix_nano, dp.as_double, dp.flags = t + k * S, value, flags
    return (topic, None, req.SerializeToString(), t // 10**6)


@pytest.mark.parametrize("keying", ["any", "trace_id"])
async def test_hostile_input_is_contained_and_nothing_stops(
    names: dict[str, str], workers, bootstrap: str, keying: str
) -> None:
    spans_t, metrics_t = names["OTLP_SPANS_TOPIC"], names["OTLP_METRICS_TOPIC"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(spans_t, 2, 1, topic_configs={"max.message.bytes": str(BIG + 2**20),
                                                   "segment.bytes": str(4 * BIG)}),
            NewTopic(metrics_t, 2, 1),
        ])
    finally:
        await admin.close()

    records = [spans_record(spans_t, i, "canary" if i < 30 else "steady", T0 + i * S)
               for i in range(60)]
    records.append(giant_trace(spans_t, T0 + 61 * S))
    huge = os.urandom(BIG)
    records.append((spans_t, b"huge", huge, (T0 + 62 * S) // 10**6))
    records.append(bad_points(metrics_t, T0 + 62 * S))
    records.append((spans_t, b"garbage", b"\xff\x00 not protobuf", (T0 + 62 * S) // 10**6))
    # A host whose clock runs 20 minutes ahead: its spans end 20 minutes past their record.
    ahead = spans_record(spans_t, 63, "skewed", T0 + 63 * S + 1200 * S, host="node-bad")
    records.append((ahead[0], ahead[1], ahead[2], (T0 + 63 * S) // 10**6))
    records += [spans_record(spans_t, i, "steady", T0 + i * S) for i in range(64, 120)]
    env = {**names, "PIPELINE_DETECTORS": names["PIPELINE_DETECTORS"]
           + ",tests.support.faulty:Raising",
           "SOURCE_IDLE_S": "2", "END_OF_INPUT_S": "3", "END_OF_INPUT_ADVANCE_S": "60",
           "OTLP_SPANS_KEYING": keying}
    w = workers(env)
    await produce(bootstrap, records[:63], max_request_size=BIG + 2**20)
    await produce(bootstrap, records[63:])
    spans_in = sum(1 for r in records if r[0] == spans_t)

    def ended() -> bool:
        return w.metric("anomaly_pipeline_end_of_input_partitions", stream="spans") > 0
    await wait_for(lambda: ended() or not w.alive(), timeout=120, what="the end of the input")
    assert w.alive(), w.log()[-3000:]
    m = w.metric
    # Every record read exactly once: nothing re-read in a loop.
    assert m("anomaly_pipeline_records_consumed_total", topic=spans_t) == spans_in
    # The giant trace reached trace assembly whole (routed in chunks), capped at 1000 spans.
    assert m("anomaly_pipeline_partition_state_evictions", detector="trace_assembly",
             reason="span_cap") == 14_000
    # NaN, Inf and the staleness marker dropped and counted; the two good points used.
    assert m("anomaly_pipeline_items_dropped_total", signal="metrics",
             reason="non_finite") == 2
    assert m("anomaly_pipeline_items_dropped_total", signal="metrics",
             reason="no_recorded_value") == 1
    assert m("anomaly_pipeline_items_detected_total", signal="metrics") == 2
    # The host 20 minutes ahead moved no watermark: nothing after it came late.
    assert m("anomaly_pipeline_clock_adjustments_total", topic=spans_t,
             reason="clock_ahead") == 5
    assert m("anomaly_pipeline_partition_late_items", stream="spans") == 0
    # The plug-in that raises: counted and quarantined; the others went on.
    assert m("anomaly_pipeline_detector_errors_total", detector="raising") >= 5
    assert m("anomaly_pipeline_detector_quarantined", detector="raising") >= 1
    assert "detector raising raised in update" in w.log()

    findings = [orjson.loads(r.value) for r in await consume(
        bootstrap, names["FINDINGS_TOPIC"],
        lambda recs: any(orjson.loads(r.value)["status"] == "resolved" for r in recs),
        timeout=60)]
    for f in findings:
        jsonschema.validate(f, SCHEMA)
    assert {(f["entity"]["service"], f["status"]) for f in findings} >= {
        ("canary", "firing"), ("canary", "resolved")}

    dead = await consume(bootstrap, names["DEADLETTER_TOPIC"], lambda recs: len(recs) >= 2,
                         timeout=30)
    [garbage] = [r for r in dead if r.key == b"garbage"]
    assert dict(garbage.headers)["dlq.error.reason"] == b"invalid_protobuf"
    assert garbage.value == b"\xff\x00 not protobuf"
    assert m("anomaly_pipeline_deadletter_records_total", topic=spans_t,
             reason="invalid_protobuf") == 1
    [dl] = [r for r in dead if r.key == b"huge"]
    h = {k: v.decode() for k, v in dl.headers}
    assert h["dlq.error.reason"] == "record_too_large"
    assert h["dlq.value.truncated"] == "true" and int(h["dlq.value.size"]) == BIG
    assert h["dlq.value.sha256"] == hashlib.sha256(huge).hexdigest()
    assert dl.value == huge[:64 * 1024]

    # A rerun of older telemetry into this state: said at once, for as long as it lasts.
    async def rerun() -> None:
        for i in range(40):
            await produce(bootstrap, [spans_record(spans_t, 200 + i, "steady",
                                                   T0 - 3600 * S + i * S)])
            await asyncio.sleep(0.5)

    def behind() -> float:
        return m("anomaly_pipeline_input_behind_state_seconds", stream="spans")
    rerunning = asyncio.create_task(rerun())
    await wait_for(lambda: behind() > 0, timeout=15, what="the input behind the saved state")
    assert "behind the saved state's watermark" in w.log()
    assert not rerunning.done()
    await rerunning
    # The rerun is over (its input idle): the gauge goes back to 0.
    await wait_for(lambda: behind() == 0, timeout=30, what="the end of the rerun")

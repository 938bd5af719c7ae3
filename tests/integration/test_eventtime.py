"""Real broker, real workers: what is detected does not depend on how the input is read.

1. The ``bursty`` scenario (traffic in 4-minute bursts with 4-minute quiet gaps, keyed by
   trace id over 4 input partitions) read by one worker as a backlog at full speed, and the
   same records written live (80x) for another: the same findings (whole documents, evidence
   included), no late items; both emit
   their last findings once the input ends (processing-time quiet, ``END_OF_INPUT_S``).
2. A worker killed with SIGKILL twice while the detection stage works (restarted once on an
   empty data dir, once on its own): its findings are those of an uninterrupted run of the same
   records (the stages in process, ``pipeline.local``, on the topic's records as stored).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.local import LocalPipeline
from pipeline.settings import Settings
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.writer import write_records
from tests.integration.conftest import read_to_end, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
FAST_END = {"SOURCE_IDLE_S": "2", "END_OF_INPUT_S": "4", "END_OF_INPUT_ADVANCE_S": "120"}


def key(f: dict[str, Any]) -> bytes:
    """A finding as published, whole (evidence and all) but for the worker's runbook link."""
    return orjson.dumps({k: v for k, v in f.items() if k != "runbook_url"},
                        option=orjson.OPT_SORT_KEYS)


async def create(bootstrap: str, topics: list[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # no retention: the records carry old event times
        await admin.create_topics([NewTopic(t, partitions, 1, topic_configs={
            "retention.ms": "-1"}) for t in topics])
    finally:
        await admin.close()


def with_topics(names: dict[str, str], suffix: str) -> dict[str, str]:
    return {**names, "PIPELINE_APP_ID": names["PIPELINE_APP_ID"] + suffix,
            **{k: names[k] + suffix for k in ("OTLP_SPANS_TOPIC", "OTLP_METRICS_TOPIC",
                                               "FINDINGS_TOPIC", "DEADLETTER_TOPIC",
                                               "SERVICE_MAP_TOPIC", "FEEDBACK_TOPIC")}}


def ended(w: Any) -> bool:
    return all(w.metric("anomaly_pipeline_end_of_input_partitions", stream=s) > 0
               for s in ("spans", "metrics"))


async def settled_findings(bootstrap: str, topic: str, quiet_s: float = 6.0,
                           timeout: float = 90.0) -> set[bytes]:
    """The findings once none has come for ``quiet_s``: after the end of the input the trace
    stage follows the span stage's last watermark, later on a loaded machine. A run that
    never publishes some finding still differs once this returns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: set[bytes] | None = None
    since = loop.time()
    while True:
        got = await findings_of(bootstrap, topic)
        if got != last:
            last, since = got, loop.time()
        elif loop.time() - since >= quiet_s or loop.time() > deadline:
            return got
        await asyncio.sleep(1.0)


async def findings_of(bootstrap: str, topic: str) -> set[bytes]:
    docs = [orjson.loads(r.value) for r in await read_to_end(bootstrap, topic)]
    for d in docs:
        jsonschema.validate(d, SCHEMA)
    return {key(d) for d in docs}


async def test_bursty_backlog_at_full_speed_and_paced_find_the_same(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    fast, paced = with_topics(names, ".fast"), with_topics(names, ".paced")
    for env in (fast, paced):
        await create(bootstrap, [env["OTLP_SPANS_TOPIC"], env["OTLP_METRICS_TOPIC"]])
    base = {"PIPELINE_DETECTORS": "", **FAST_END}

    def records(env: dict[str, str]) -> list[Any]:
        return list(iter_records(build_scenario(
            "bursty", seed=3, rate=10.0, spans_topic=env["OTLP_SPANS_TOPIC"],
            metrics_topic=env["OTLP_METRICS_TOPIC"])))

    kwargs = {"bootstrap_servers": bootstrap}
    await write_records(records(fast), kwargs, mode="replay",
                        spans_topic=fast["OTLP_SPANS_TOPIC"], progress=lambda line: None)
    w_fast = workers({**fast, **base}, data_dir="fast")
    w_paced = workers({**paced, **base}, data_dir="paced")
    await write_records(records(paced), kwargs, mode="live", speed=80,
                        spans_topic=paced["OTLP_SPANS_TOPIC"], progress=lambda line: None)
    for w in (w_fast, w_paced):
        await wait_for(lambda w=w: ended(w) or not w.alive(), timeout=180,
                       what="the end of the input")
        assert w.alive(), w.log()[-3000:]
    got_fast = await settled_findings(bootstrap, fast["FINDINGS_TOPIC"])
    got_paced = await settled_findings(bootstrap, paced["FINDINGS_TOPIC"])
    kinds = {orjson.loads(k)["kind"] for k in got_fast}
    assert {"bottleneck_span", "time_wait_buildup", "memory_leak"} <= kinds, got_fast
    assert got_fast == got_paced, (sorted(got_fast - got_paced), sorted(got_paced - got_fast))
    for w in (w_fast, w_paced):
        for stream in ("spans", "metrics", "traces"):
            assert w.metric("anomaly_pipeline_partition_late_items", stream=stream) == 0, stream
        assert w.metric("anomaly_pipeline_partition_state_evictions", detector="bottleneck",
                        reason="late_samples") == 0


async def test_kill_during_detection_finds_what_an_uninterrupted_run_finds(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    env = {**names, **FAST_END, "KAFKA_SESSION_TIMEOUT_S": "6", "STATE_FLUSH_INTERVAL_S": "0.5"}
    spans_t, metrics_t = env["OTLP_SPANS_TOPIC"], env["OTLP_METRICS_TOPIC"]
    await create(bootstrap, [spans_t, metrics_t])
    sc = build_scenario("demo", seed=2, rate=10.0, duration="20m", spans_topic=spans_t,
                        metrics_topic=metrics_t)
    await write_records(iter_records(sc), {"bootstrap_servers": bootstrap}, mode="replay",
                        spans_topic=spans_t, progress=lambda line: None)

    # The reference: the same records, as the topics hold them, through the stages in process.
    stored = []
    for topic in (spans_t, metrics_t):
        stored += await read_to_end(bootstrap, topic)
    stored.sort(key=lambda r: r.timestamp)
    lp = LocalPipeline(Settings.from_env(env), {spans_t: 4, metrics_t: 4})
    want: set[bytes] = set()
    for r in stored:
        for f in lp.feed(r.topic, r.partition, r.offset, r.value, r.timestamp):
            want.add(key(f.to_dict()))
        for f in lp.heartbeat(topics=[r.topic]):
            want.add(key(f.to_dict()))
    want |= {key(f.to_dict()) for f in lp.end_of_input()}
    assert {orjson.loads(k)["kind"] for k in want} >= {
        "bottleneck_span", "memory_leak", "time_wait_buildup"}

    def traces_done(w: Any, n: float) -> bool:
        return w.metric("anomaly_pipeline_items_detected_total", signal="traces") >= n

    w = workers(env, data_dir="a")
    await wait_for(lambda: traces_done(w, 3000) or not w.alive(), timeout=120,
                   what="detection under way")
    w.kill(signal.SIGKILL)  # mid-detection; the next one starts on an empty data dir
    await asyncio.sleep(float(env["KAFKA_SESSION_TIMEOUT_S"]) + 1)
    w = workers(env, data_dir="b")
    await wait_for(lambda: traces_done(w, 3000) or not w.alive(), timeout=120,
                   what="detection under way again")
    w.kill(signal.SIGKILL)  # and again; this time it comes back on its own data dir
    await asyncio.sleep(float(env["KAFKA_SESSION_TIMEOUT_S"]) + 1)
    w = workers(env, data_dir="b")
    await wait_for(lambda: ended(w) or not w.alive(), timeout=180, what="the end of the input")
    assert w.alive(), w.log()[-3000:]
    got = await settled_findings(bootstrap, env["FINDINGS_TOPIC"])
    assert got == want, (sorted(got - want), sorted(want - got))
    assert "restored traces partition" in w.log()

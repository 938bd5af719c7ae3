"""Real broker, live workers: a second and a third worker join while records arrive, then the
first leaves, still under load. Every source record is routed, and every routed record is
applied exactly once by the detection stage's saved state (read back from the changelog as a
restarting worker would). (That findings do not depend on how the input is read is checked
in process, ``tests/unit/test_replay_speed.py``: the test detector here is not built for it.)"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from pipeline import otlp
from tests.integration.conftest import consume, produce, wait_for
from tests.integration.test_restart import read_topic, records, restored_counts, routed_sources

pytestmark = pytest.mark.integration
FEED_EVERY_S = 1.0  # 10 records each time
# The feed is paced by the joins and the leave, not by the clock alone (a slow CI machine
# joins slower): records flow up to each mark while its event is awaited, and pause there
# if the event has not come. The last 50 are sent as the first worker leaves.
STAGES = [(200, "second joined"), (300, "third joined"), (350, "first leaving")]


async def test_workers_join_and_leave_under_load_and_nothing_is_lost_or_applied_twice(
    bootstrap: str, names: dict, workers
) -> None:
    env = {**names, "KAFKA_SESSION_TIMEOUT_S": "6", "STATE_FLUSH_INTERVAL_S": "0.3"}
    batch, expected = records(names["OTLP_SPANS_TOPIC"])
    first = workers(env, data_dir="first")

    events = {name: asyncio.Event() for _, name in STAGES}

    async def feed() -> None:  # a steady stream through every join and leave
        i = 0
        for upto, gate in [*STAGES, (len(batch), None)]:
            while i < upto:
                await produce(bootstrap, batch[i:i + 10])
                i += 10
                await asyncio.sleep(FEED_EVERY_S)
            if gate:
                await events[gate].wait()

    def owned(w) -> float:
        return w.metric("anomaly_pipeline_owned_partitions", stream="spans")

    feeding = asyncio.create_task(feed())
    await wait_for(lambda: first.metric("anomaly_pipeline_items_detected_total",
                                        signal="spans") > 0, what="the first worker detecting")
    second = workers(env, data_dir="second")
    await wait_for(lambda: owned(second) > 0, timeout=60, what="the second worker owning some")
    events["second joined"].set()
    third = workers(env, data_dir="third")
    await wait_for(lambda: owned(third) > 0, timeout=60, what="the third worker owning some")
    events["third joined"].set()
    events["first leaving"].set()
    await asyncio.to_thread(first.stop)  # leaves (SIGTERM) while records still arrive
    await feeding

    app_id = names["PIPELINE_APP_ID"]
    source = {(r.partition, r.offset): r for r in
              await read_topic(bootstrap, names["OTLP_SPANS_TOPIC"])}
    assert len(source) == len(batch)
    service_of = {k: f"{otlp.decode_spans(r.value).items[0].resource.service}|i-1"
                  for k, r in source.items()}
    deadline = asyncio.get_running_loop().time() + 150
    while True:  # settle: the saved state covers what was routed
        routed = await routed_sources(bootstrap, app_id)
        expected_routed: Counter = Counter()
        for k in routed:
            expected_routed[service_of[k]] += 10
        changelog = {r.key.decode(): r.value for r in
                     await read_topic(bootstrap, f"{app_id}-spans-state-changelog")}
        counts = restored_counts(changelog)
        if (counts == expected_routed and len(routed) == len(batch)) or (
                asyncio.get_running_loop().time() > deadline):
            break
        await asyncio.sleep(3)
    logs = "\n".join(w.log()[-1500:] for w in (second, third))
    assert sorted(set(source) - routed) == [], "source records never routed"
    assert counts == expected_routed == expected, logs  # each applied once, none skipped
    assert second.alive() and third.alive()
    assert owned(second) + owned(third) == int(names["PIPELINE_PARTITIONS"])

    # The canary's findings came out, each about the canary, and were resolved.
    got = [orjson.loads(x.value) for x in await consume(
        bootstrap, names["FINDINGS_TOPIC"],
        lambda recs: any(orjson.loads(x.value)["status"] == "resolved" for x in recs),
        timeout=60)]
    assert {f["status"] for f in got} == {"firing", "resolved"}
    assert {orjson.dumps(f["entity"]) for f in got} == {b'{"service":"canary"}'}

"""Real broker, real workers: a slow cache under two callers is one incident rooted at the cache,
an unrelated failure at the same time another; the incidents topic and the incident gauges say
so, and a second worker that takes the correlation over rebuilds the same incidents."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from benchmarks.incident_scoring import latest
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import BOTTLENECK_SPAN, ERROR_ORIGIN
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import read_to_end, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "incident.schema.json").read_text())
M = 60.0


def firing_incidents(worker) -> dict[str, dict[str, str]]:
    return {dict(labels)["incident"]: dict(labels)
            for (name, labels), v in worker.metrics().items()
            if name == "anomaly_pipeline_incident_active" and v == 1}


async def test_a_slow_cache_under_two_callers_is_one_incident(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    # Faults last to the end of the input: the findings and incidents are still firing there.
    scenario = build_scenario(
        "healthy", seed=3, duration="15m", rate=10, start=DEFAULT_REPLAY_START,
        faults=[
            # Two callers' Redis commands in different requests (each on its critical path).
            Fault(BOTTLENECK_SPAN, {"service": "cart", "operation": "HSET"}, 11 * M, 15 * M,
                  {"added_ms": 100.0}),
            Fault(BOTTLENECK_SPAN, {"service": "catalog", "operation": "GET"}, 11 * M, 15 * M,
                  {"added_ms": 100.0}),
            Fault(ERROR_ORIGIN, {"service": "payment", "operation": "INSERT payments"}, 11 * M,
                  15 * M, {"error_rate": 0.4}),
        ],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    await write_records(list(iter_records(scenario)), {"bootstrap_servers": bootstrap},
                        mode="replay", spans_topic=scenario.spans_topic,
                        progress=lambda line: None)
    env = {**names, "PIPELINE_DETECTORS": "", "END_OF_INPUT_S": "5"}
    first = workers(env, data_dir="first")

    def two_open() -> bool:
        found = firing_incidents(first)
        return len(found) >= 2 or not first.alive()

    await wait_for(two_open, timeout=300, what="two open incidents")
    assert first.alive(), first.log()[-3000:]

    def ended() -> bool:  # every stage has closed its last windows: nothing more will come
        return all(first.metric("anomaly_pipeline_end_of_input_partitions", stream=st)
                   >= first.metric("anomaly_pipeline_owned_partitions", stream=st) > 0
                   for st in ("spans", "metrics")) or not first.alive()

    await wait_for(ended, timeout=120, what="the end of the input")
    seen: list[int] = []

    async def settled() -> bool:  # the correlation has caught up with the last findings
        seen.append(len(await read_to_end(bootstrap, names["INCIDENTS_TOPIC"], timeout=30)))
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

    await wait_for(settled, timeout=120, what="the incidents topic to settle")
    records = [orjson.loads(r.value) for r in await read_to_end(
        bootstrap, names["INCIDENTS_TOPIC"], timeout=30) if r.value]
    for doc in records:
        jsonschema.validate(doc, SCHEMA)
    current = {d["id"]: d for d in latest(records)}
    by_root = {d["root"]["name"]: d for d in current.values() if d["status"] == "firing"}
    # The failing INSERT's root is the payments database it goes to.
    assert set(by_root) == {"redis", "payments"}, [d["summary"] for d in current.values()]
    cache = by_root["redis"]
    kinds = {(m["kind"], m["entity"]["service"]) for m in cache["members"]}
    assert {("bottleneck_span", "cart"), ("bottleneck_span", "catalog")} <= kinds, kinds
    assert all(m["kind"] != "error_origin" for m in cache["members"])
    assert cache["summary"].startswith("redis is the probable root")
    assert cache["exemplar_trace_ids"] and cache["next_steps"]
    assert by_root["payments"]["root"]["kind"] == "error_origin"
    # Every member is a finding on the findings topic.
    finding_ids = {orjson.loads(r.value)["id"] for r in await read_to_end(
        bootstrap, names["FINDINGS_TOPIC"], timeout=30) if r.value}
    assert set(cache["member_finding_ids"]) <= finding_ids

    # The gauges: one series per open incident; the cache's findings marked as grouped (their
    # alerts give way to the incident's), the lone payment finding not.
    gauges = firing_incidents(first)
    assert {g["root"] for g in gauges.values()} == {"service:redis", "service:payments"}
    grouped = {dict(labels)["incident"] for (name, labels), v in first.metrics().items()
               if name == "anomaly_pipeline_incident_grouped" and v == 1}
    assert grouped == {cache["id"]}

    # Another worker takes the correlation over: it rebuilds the same incidents from the input.
    first.stop()
    second = workers(env, data_dir="second")
    await wait_for(lambda: set(firing_incidents(second)) == set(gauges) or not second.alive(),
                   timeout=120, what="the same incidents on the new worker")
    assert second.alive(), second.log()[-3000:]
    again = [orjson.loads(r.value) for r in await read_to_end(
        bootstrap, names["INCIDENTS_TOPIC"], timeout=30) if r.value]
    assert {d["id"]: d for d in latest(again)} == current

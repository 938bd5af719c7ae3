"""What is detected does not depend on how fast, or in what interleaving, the input is read.

The stages run in process (``pipeline.local``) on the ``bursty`` scenario — traffic in 4-minute
bursts with 4-minute quiet gaps, keyed by trace id over 4 input partitions — read three ways:

- *backlog*: each input partition read a few hundred records at a time, round robin, partitions
  of one topic far apart in event time (a worker catching up at full speed, unevenly);
- *one topic first*: every span, then every metric point (a stage given a head start);
- *paced*: records as a live feed at 80x with the wall clock simulated, partitions going idle in
  the gaps (processing-time idleness, heartbeats every second) and coming back a little out
  of step (up to 300 ms of processing time apart, 24 s of event time).

- *random*: a partition at random, a random number of records at a time, heartbeats now and
  then (no order at all across partitions).

The backlog and random reads are also routed as the worker's ingest does, *batched*: one
message per (read, routed partition) holding many source records (``LocalPipeline.batched``).
And the backlog, random and paced reads again with ``OTLP_SPANS_KEYING=trace_id``: span
records forwarded whole to the routed partition of their input partition, decoded there, each
source's clock kept by that partition.

All give the same findings — the same documents, evidence included — and no item is late.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections import defaultdict
from typing import Any

import orjson
import pytest

from pipeline.local import LocalPipeline
from pipeline.settings import Settings
from pipeline.simulate import build_scenario, iter_records

PARTITIONS = 4
SETTINGS = Settings(source_idle_s=2.0, end_of_input_s=4.0, end_of_input_advance_s=120.0)


def layout() -> tuple[Any, dict[tuple[str, int], list[tuple[int, bytes, int]]]]:
    sc = build_scenario("bursty", seed=3, rate=10.0)
    parts: dict[tuple[str, int], list[tuple[int, bytes, int]]] = defaultdict(list)
    unkeyed = 0
    for rec in iter_records(sc):
        if rec.key is not None:
            p = zlib.crc32(rec.key) % PARTITIONS
        else:
            p, unkeyed = unkeyed % PARTITIONS, unkeyed + 1
        rows = parts[(rec.topic, p)]
        rows.append((len(rows), rec.value, rec.timestamp_ms))
    return sc, parts


@pytest.fixture(scope="module")
def data() -> tuple[Any, dict[tuple[str, int], list[tuple[int, bytes, int]]]]:
    return layout()


def pipeline(sc: Any, batched: bool = False, keyed: bool = False) -> LocalPipeline:
    settings = dataclasses.replace(SETTINGS, otlp_spans_keying="trace_id") if keyed else SETTINGS
    lp = LocalPipeline(settings, {sc.spans_topic: PARTITIONS, sc.metrics_topic: PARTITIONS},
                       partitions=PARTITIONS)
    lp.batched = batched
    return lp


def result(lp: LocalPipeline, found: list[Any]) -> tuple[list[bytes], dict[str, int]]:
    """Every finding published, as its JSON document, in a canonical order; late items."""
    found += lp.end_of_input()
    return (sorted(orjson.dumps(f.to_dict(), option=orjson.OPT_SORT_KEYS) for f in found),
            lp.late_items())


def kinds(docs: list[bytes]) -> set[str]:
    return {orjson.loads(d)["kind"] for d in docs}


def backlog(sc: Any, parts: dict, step: int = 300, batched: bool = False, keyed: bool = False
            ) -> tuple[list, dict]:
    lp, found, pos = pipeline(sc, batched, keyed), [], dict.fromkeys(parts, 0)
    while any(pos[k] < len(v) for k, v in parts.items()):
        for k in sorted(parts):
            n = step if k[1] % 2 else step // 6  # uneven: odd partitions read 6x faster
            for offset, value, ts in parts[k][pos[k]:pos[k] + n]:
                found += lp.feed(k[0], k[1], offset, value, ts)
            pos[k] += n
            found += lp.heartbeat(topics=[k[0]])
    return result(lp, found)


def topic_first(sc: Any, parts: dict, first: str) -> tuple[list, dict]:
    lp, found = pipeline(sc), []
    for topic in (first, sc.metrics_topic if first == sc.spans_topic else sc.spans_topic):
        for (t, p), rows in sorted(parts.items()):
            if t != topic:
                continue
            for i, (offset, value, ts) in enumerate(rows):
                found += lp.feed(t, p, offset, value, ts)
                if i % 100 == 99:
                    found += lp.heartbeat(topics=[t])
        found += lp.heartbeat({(topic, p): 30.0 for p in range(PARTITIONS)}, topics=[topic])
    return result(lp, found)


def random_reads(sc: Any, parts: dict, seed: int = 1, batched: bool = False,
                 keyed: bool = False) -> tuple[list, dict]:
    rnd = random.Random(seed)
    lp, found, pos = pipeline(sc, batched, keyed), [], dict.fromkeys(parts, 0)
    while left := [k for k in sorted(parts) if pos[k] < len(parts[k])]:
        k = rnd.choice(left)
        n = rnd.randint(1, 400)
        for offset, value, ts in parts[k][pos[k]:pos[k] + n]:
            found += lp.feed(k[0], k[1], offset, value, ts)
        pos[k] += n
        if rnd.random() < 0.3:
            found += lp.heartbeat(topics=[k[0]])
    return result(lp, found)


def paced(sc: Any, parts: dict, speed: float = 80.0, jitter_s: float = 0.3,
          keyed: bool = False) -> tuple[list, dict]:
    """A live feed at ``speed``: each record is read when its event time comes, each partition
    a little late by a delay drawn afresh every half second of processing time (up to
    ``jitter_s``: partitions are fetched separately, so one comes back from a pause before
    another); every second of processing time, a heartbeat with each partition's idleness
    (read to its end: the time since its last record)."""
    rnd = random.Random(7)
    t0 = min(rows[0][2] for rows in parts.values())
    delays: dict[tuple[Any, int], float] = {}
    arrivals = []
    for (t, p), rows in parts.items():
        last = 0.0
        for offset, value, ts in rows:
            due = (ts - t0) / 1000 / speed
            slot = ((t, p), int(due * 2))
            if slot not in delays:
                delays[slot] = rnd.uniform(0, jitter_s)
            at = max(last, due + delays[slot])
            arrivals.append((at, t, p, offset, value, ts))
            last = at
    arrivals.sort(key=lambda a: a[0])
    lp, found = pipeline(sc, keyed=keyed), []
    seen: dict[tuple[str, int], float] = {}
    next_beat = 1.0
    for at, t, p, offset, value, ts in arrivals:
        while next_beat <= at:
            idle = {k: next_beat - seen.get(k, 0.0) for k in parts}
            found += lp.heartbeat(idle)
            next_beat += 1.0
        found += lp.feed(t, p, offset, value, ts)
        seen[(t, p)] = at
    return result(lp, found)


def test_backlog_head_start_and_paced_give_the_same_findings(data: tuple) -> None:
    sc, parts = data
    ref, late = backlog(sc, parts)
    assert {"bottleneck_span", "time_wait_buildup", "memory_leak"} <= kinds(ref), ref
    assert late == {"spans": 0, "metrics": 0, "traces": 0}
    for name, (got, late) in {
        "spans first": topic_first(sc, parts, sc.spans_topic),
        "metrics first": topic_first(sc, parts, sc.metrics_topic),
        "random": random_reads(sc, parts),
        "paced": paced(sc, parts),
        "backlog, batched": backlog(sc, parts, batched=True),
        "random, batched": random_reads(sc, parts, seed=2, batched=True),
        "backlog, keyed": backlog(sc, parts, keyed=True),
        "backlog, batched, keyed": backlog(sc, parts, batched=True, keyed=True),
        "random, batched, keyed": random_reads(sc, parts, seed=3, batched=True, keyed=True),
        "paced, keyed": paced(sc, parts, keyed=True),
    }.items():
        assert late == {"spans": 0, "metrics": 0, "traces": 0}, name
        assert got == ref, (name, [d for d in got if d not in ref][:2])

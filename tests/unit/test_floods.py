"""Floods of valid telemetry (``benchmarks.floods``): every per-key map stays under its cap,
what overflows is counted, entries expire, and a new key at the cap costs O(1), not O(n)."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable

import pytest
from aiokafka.structs import TopicPartition

from benchmarks import floods
from pipeline.detectors.memory import MemoryDetector
from pipeline.ingest import read_fairly
from pipeline.local import LocalPipeline
from pipeline.records import TEMPORALITY_CUMULATIVE, MetricPoint, Resource
from pipeline.settings import Settings
from pipeline.state import DueKeys, Keyed

CAP = 40  # per partition, for every detector
PARTS = 2
SETTINGS = Settings(memory_max_instances=CAP, time_wait_max_hosts=CAP,
                    bottleneck_max_operations=CAP, trace_max_open=CAP)
TOPIC = {"spans": SETTINGS.otlp_spans_topic, "metrics": SETTINGS.otlp_metrics_topic}


def feed(lp: LocalPipeline, recs: Iterable[floods.FloodRecord], offset: int = 0) -> list:
    out = []
    for off, (sig, value, ts) in enumerate(recs, offset):
        out += lp.feed(TOPIC[sig], 0, off, value, ts)
        out += lp.heartbeat(topics=[TOPIC[sig]])
    return out


def pipeline() -> LocalPipeline:
    return LocalPipeline(SETTINGS, {TOPIC["spans"]: 1, TOPIC["metrics"]: 1}, partitions=PARTS)


def stats(lp: LocalPipeline, name: str) -> list:
    return [d.stats() for by_p in lp.engines.values() for e in by_p.values()
            for d in e.detectors if d.name == name]


def test_the_canary_leak_is_found() -> None:
    lp = pipeline()
    findings = feed(lp, floods.canary(duration_s=1500)) + lp.end_of_input()
    leaks = [f for f in findings if f.kind == "memory_leak"]
    assert [f.entity for f in leaks] == [{"service": "canary", "instance": "canary-1"}]
    assert lp.dead_letters == []


def test_the_canary_leak_is_found_during_an_instance_flood() -> None:
    lp = pipeline()
    recs = heapq.merge(floods.canary(duration_s=1500), floods.instances(10 * CAP * PARTS),
                       key=lambda r: r[2])
    findings = feed(lp, recs) + lp.end_of_input()
    assert {"service": "canary", "instance": "canary-1"} in [
        f.entity for f in findings if f.kind == "memory_leak"]


@pytest.mark.parametrize(("flood", "detector", "reason"), [
    ("instances", "memory", "evicted_instances"),
    ("hosts", "timewait", "evicted_hosts"),
    ("span_names", "bottleneck", "evicted_operations"),
    ("services", "bottleneck", "evicted_operations"),
])
def test_a_flood_stays_under_the_caps_and_counts_what_overflows(flood: str, detector: str,
                                                                  reason: str) -> None:
    n = 5 * CAP * PARTS
    lp = pipeline()
    feed(lp, floods.FLOODS[flood](n, batch=20))
    lp.end_of_input()  # the last traces complete
    st = stats(lp, detector)
    assert len(st) == PARTS
    assert all(s.tracked <= CAP for s in st)
    assert sum(s.tracked for s in st) == CAP * PARTS  # full, every partition
    # every key over the caps was counted (a key evicted early can come back and go again)
    assert sum(s.evicted.get(reason, 0) for s in st) >= n - CAP * PARTS
    assert lp.dead_letters == []


def test_open_traces_stay_under_their_cap() -> None:
    lp = pipeline()
    feed(lp, floods.big_trace(3_000))
    feed(lp, floods.span_names(5 * CAP * PARTS, duration_s=1.0, batch=400), offset=100)
    for s in stats(lp, "trace_assembly"):
        assert s.tracked <= CAP


def test_flooded_instances_and_hosts_expire() -> None:
    """Keys that go quiet leave within their time to live (30 min of event time)."""
    lp = pipeline()
    feed(lp, floods.instances(3 * CAP, duration_s=60))
    feed(lp, floods.hosts(3 * CAP, duration_s=60), offset=1_000)
    assert sum(s.tracked for s in stats(lp, "memory")) > 0
    feed(lp, floods.canary(start_ns=floods.T0 + 60 * floods.S, duration_s=2400), offset=2_000)
    assert sum(s.tracked for s in stats(lp, "memory")) == 1  # the canary only
    assert sum(s.tracked for s in stats(lp, "timewait")) == 0


def test_make_room_looks_at_the_stalest_entry_only() -> None:
    """A new key at the cap is O(1): ``protect`` is asked about the stalest entry, not all."""
    k: Keyed[int] = Keyed("k", lambda v: {"v": v}, lambda d, key: d["v"], cap=1000)
    for i in range(1000):
        k.put(str(i), i)
    asked = []
    for i in range(1000, 1100):
        assert k.make_room(protect=lambda key, _v: asked.append(key) or False)
        k.put(str(i), i)
    assert len(asked) == 100 and k.evicted == 100 and len(k) == 1000
    # protected entries (firing findings) are stepped over, the next one goes
    asked.clear()
    assert k.make_room(protect=lambda key, _v: asked.append(key) or key == "100")
    assert asked == ["100", "101"] and "100" in k and "101" not in k


def _point(instance: int, t_ns: int) -> MetricPoint:
    res = Resource("svc", f"svc-{instance}", "node-1", "", {"telemetry.sdk.language": "java"})
    return MetricPoint("jvm.memory.used_after_last_gc", "sum", "By", TEMPORALITY_CUMULATIVE,
                       False, t_ns, t_ns - 10**12, 1e8,
                       {"jvm.memory.type": "heap", "jvm.memory.pool.name": "G1 Old Gen"}, res)


def test_memory_advance_looks_only_at_instances_it_can_move() -> None:
    """A watermark that reaches no waiting instance's sample reads no instance: the advance
    is not a scan of every waiting instance per record (what stalled other streams)."""
    d = MemoryDetector(max_instances=10_000)
    t = floods.T0
    d.update([_point(i, t + i * 10**6) for i in range(5_000)])
    d.advance(t - 10**9)  # the touched instances, once
    reads = []
    get = d._inst.get
    d._inst.get = lambda key, default=None: reads.append(key) or get(key, default)  # type: ignore
    for k in range(100):
        d.advance(t - 10**9 + k)
    assert reads == []
    d.advance(t + 2_500 * 10**6 + 300 * 10**9)  # past half of them (and their clock lag)
    assert 2_400 <= len(reads) <= 2_600


def test_due_keys() -> None:
    q = DueKeys()
    for i in range(10):
        q.wait(f"k{i}", i)
    q.touch("k9")
    q.discard("k0")
    assert q.take(3) == ["k1", "k2", "k3", "k9"]
    assert len(q) == 5 and "k4" in q and "k9" not in q
    q.wait("k4", 100)  # moved later: its old entry is stale
    assert q.take(10) == ["k5", "k6", "k7", "k8"]
    assert q.take(100) == ["k4"] and len(q) == 0


class _Consumer:
    """Hands out fetched records partition after partition up to the count asked, as
    aiokafka's fetcher does."""

    def __init__(self, fetched: dict) -> None:
        self.fetched = fetched

    async def getmany(self, *tps, timeout_ms: int = 0, max_records: int = 0) -> dict:
        out = {}
        for tp in list(self.fetched):
            if tp in tps and max_records > 0:
                recs = self.fetched[tp][:max_records]
                self.fetched[tp] = self.fetched[tp][len(recs):]
                if recs:
                    out[tp] = recs
                max_records -= len(recs)
        return out


def test_a_backlog_on_one_topic_does_not_hold_the_other_back() -> None:
    """Each read takes records of every topic that has some: live spans are not left behind
    a metrics backlog the consumer has fetched first."""
    m0, m1, s0 = (TopicPartition("metrics", 0), TopicPartition("metrics", 1),
                  TopicPartition("spans", 0))
    c = _Consumer({m0: list(range(500)), m1: list(range(500)), s0: ["span"]})
    got = asyncio.run(read_fairly(c, [m0, m1, s0], {"metrics": 200, "spans": 20}))
    assert got[s0] == ["span"] and len(got[m0]) == 200 and m1 not in got
    # one topic: one read, as before
    got = asyncio.run(read_fairly(c, [m0, m1], {"metrics": 200}))
    assert len(got[m0]) == 200

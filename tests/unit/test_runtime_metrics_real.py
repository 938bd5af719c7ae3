"""The memory detector on OTLP payloads shaped as the real SDKs and agents write them.

Shapes read from real exports, not from spec examples:

- OpenTelemetry Python SDK 1.45.1 with opentelemetry-instrumentation-system-metrics 0.66b1
  (60 s export interval): ``process.runtime.cpython.gc_count`` is a *monotonic cumulative* Sum
  in "By" whose values are ``gc.get_count()`` levels (they go up and down); the real counter is
  ``cpython.gc.collections`` in ``{collection}``; RSS in ``process.runtime.cpython.memory``
  (type=rss|vms) and ``process.memory.usage``; every cumulative Sum keeps the process's start
  time; the resource has a random ``service.instance.id`` and ``process.pid``, no start time.
- Containers through the Collector's prometheus receiver (cAdvisor): Gauges with no unit.

Each payload is encoded to protobuf and decoded by ``pipeline.otlp`` as the worker does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client import CollectorRegistry, generate_latest

from pipeline import otlp
from pipeline.detectors.memory import GC, LEAK, RESTARTS_COUNTER, MemoryDetector
from pipeline.runtime_metrics import BUILTIN_RULES, rules_for, unit_scale
from pipeline.settings import Settings
from pipeline.sinks.metrics import PipelineMetrics
from tests.support.otlp_build import _attrs

S = 10**9
MIB = 1024 * 1024
T0 = 1_767_600_000 * S
CUMULATIVE = 2
INSTANCE_ID = "6f1c2b9e-0d4e-4f5a-9b7c-3e8d1a2f4c60"


def _python_resource(service: str, pid: int, instance_id: str) -> dict[str, Any]:
    return {
        "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": "1.45.1", "service.name": service,
        "service.instance.id": instance_id, "host.name": "ip-10-0-3-17",
        "process.pid": pid, "process.parent_pid": 1,
        "process.executable.name": "python3.12",
        "process.executable.path": "/usr/local/bin/python3.12",
        "process.command": "/app/server.py", "process.runtime.name": "cpython",
        "process.runtime.version": "3.12.7",
        "process.runtime.description": "3.12.7 (main, Oct  1 2024, 02:05:46) [GCC 12.2.0]",
    }


def _sum(sm: Any, name: str, unit: str, monotonic: bool, start_ns: int, t_ns: int,
         points: list[tuple[dict[str, Any], int]]) -> None:
    m = sm.metrics.add()
    m.name, m.unit = name, unit
    m.sum.aggregation_temporality, m.sum.is_monotonic = CUMULATIVE, monotonic
    for attrs, value in points:
        dp = m.sum.data_points.add()
        dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int = start_ns, t_ns, int(value)
        _attrs(dp.attributes, attrs)


def python_export(t_ns: int, start_ns: int, *, rss: float, gc_levels: tuple[int, int, int],
                  collections: tuple[int, int, int], service: str = "checkout-py",
                  pid: int = 4242, instance_id: str = INSTANCE_ID) -> bytes:
    """One export of the Python SDK with the system-metrics instrumentation."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, _python_resource(service, pid, instance_id))
    sm = rm.scope_metrics.add()
    sm.scope.name = "opentelemetry.instrumentation.system_metrics"
    sm.scope.version = "0.66b1"
    _sum(sm, "process.runtime.cpython.memory", "By", False, start_ns, t_ns,
         [({"type": "rss"}, rss), ({"type": "vms"}, 2.6 * rss + 300 * MIB)])
    # gc.get_count() levels, exported as a monotonic counter in "By" (sic)
    _sum(sm, "process.runtime.cpython.gc_count", "By", True, start_ns, t_ns,
         [({"count": str(g)}, gc_levels[g]) for g in range(3)])
    _sum(sm, "cpython.gc.collections", "{collection}", True, start_ns, t_ns,
         [({"generation": str(g), "cpython.gc.generation": g}, collections[g])
          for g in range(3)])
    _sum(sm, "process.memory.usage", "By", False, start_ns, t_ns, [({}, rss)])
    _sum(sm, "process.runtime.cpython.thread_count", "{thread}", False, start_ns, t_ns,
         [({}, 7)])
    return req.SerializeToString()


def cadvisor_export(t_ns: int, gauges: dict[str, float], service: str = "postgres") -> bytes:
    """cAdvisor's container metrics through the Collector's prometheus receiver (Gauges, no
    unit), for one container."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {"service.name": service,
                                    "service.instance.id": "10.0.3.17:8080",
                                    "server.address": "10.0.3.17", "server.port": "8080"})
    sm = rm.scope_metrics.add()
    sm.scope.name = "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/" \
                    "prometheusreceiver"
    labels = {"container": "postgres", "namespace": "db", "pod": "postgres-0",
              "image": "postgres:16"}
    for name, value in gauges.items():
        m = sm.metrics.add()
        m.name = name
        dp = m.gauge.data_points.add()
        dp.time_unix_nano, dp.as_double = t_ns, float(value)
        _attrs(dp.attributes, labels)
    return req.SerializeToString()


def feed(d: MemoryDetector, payloads: list[bytes]) -> list[Any]:
    findings = []
    for raw in payloads:
        points = otlp.decode_metrics(raw).items
        d.update(points)
        findings += d.advance(max(p.time_ns for p in points) - 5 * S)
    return findings


def restarts(d: MemoryDetector) -> float:
    return sum(n for (name, _), n in d.stats().counters.items() if name == RESTARTS_COUNTER)


def gc_levels(rng: np.random.Generator) -> tuple[int, int, int]:
    """What gc.get_count() says at a random moment: allocations since the last collection of
    each generation (threshold 700, 10, 10)."""
    return int(rng.integers(0, 700)), int(rng.integers(0, 10)), int(rng.integers(0, 10))


# -- (a) the CPython gc_count level is not a counter ------------------------------------------
def test_a_python_leak_is_found_while_gc_count_levels_go_up_and_down() -> None:
    """RSS grows 8 MB/min from ~45 MB for an hour; gc.get_count() levels go up and down every
    export. The leak is found, and the process never restarts."""
    rng = np.random.default_rng(7)
    start = T0 - 30 * S
    payloads, coll = [], np.zeros(3)
    for k in range(66):
        coll += (40, 3, 0.3)
        rss = 45e6 + 8e6 * k + rng.normal(0, 0.3e6)
        payloads.append(python_export(T0 + k * 60 * S, start, rss=rss, gc_levels=gc_levels(rng),
                                      collections=tuple(int(c) for c in coll)))
    d = MemoryDetector()  # no limit known
    findings = [f for f in feed(d, payloads) if f.kind == LEAK]
    assert [f.status for f in findings] == ["firing"]
    ev = findings[0].evidence
    assert ev["signal"] == {"metric": "process.runtime.cpython.memory", "role": "rss"}
    assert 7e6 < ev["slope_bytes_per_s"] * 60 < 9e6
    assert "last_restart" not in ev
    assert restarts(d) == 0
    assert d.stats().evicted.get("counter_went_back", 0) == 0


# -- (b) {collection} -----------------------------------------------------------------------
def test_cpython_gc_collections_in_collection_units_is_the_gc_count() -> None:
    """``cpython.gc.collections`` ({collection}) is read: with ``gc_from_counts``, a tenfold
    collection rate is GC pressure (CPython reports counts only); by default a count alone, which
    follows the allocation rate (the load), is never called GC pressure."""
    assert unit_scale("{collection}") == 1.0
    assert rules_for("process.runtime.cpython.gc_count", BUILTIN_RULES) == ()
    rng = np.random.default_rng(3)
    start = T0 - 3600 * S
    payloads, coll = [], np.zeros(3)
    for k in range(40):
        coll += (1000, 90, 8) if 25 <= k < 32 else (100, 9, 1)
        payloads.append(python_export(T0 + k * 60 * S, start, rss=80e6 + rng.normal(0, 1e5),
                                      gc_levels=gc_levels(rng),
                                      collections=tuple(int(c) for c in coll)))
    assert [f for f in feed(MemoryDetector(), payloads) if f.kind == GC] == []
    d = MemoryDetector(gc_from_counts=True)
    gc = [f for f in feed(d, payloads) if f.kind == GC]
    assert gc and gc[0].status == "firing"
    assert gc[0].evidence["collections_per_s"] > 10
    assert gc[0].evidence["baseline_collections_per_s"] < 2
    assert restarts(d) == 0


# -- (c) a counter that goes back -----------------------------------------------------------
def _counter_run(start_of: Any, value_of: Any, minutes: int = 12) -> MemoryDetector:
    d = MemoryDetector()
    rng = np.random.default_rng(5)
    feed(d, [python_export(T0 + k * 60 * S, start_of(k), rss=80e6, gc_levels=gc_levels(rng),
                           collections=(value_of(k), 0, 0)) for k in range(minutes)])
    return d


def test_a_counter_going_back_with_the_same_start_time_is_not_a_restart() -> None:
    start = T0 - 3600 * S
    d = _counter_run(lambda k: start, lambda k: 1000 + 100 * k - (600 if k >= 6 else 0))
    assert restarts(d) == 0
    assert d.stats().evicted["counter_went_back"] == 1


def test_a_counter_with_a_new_start_time_is_a_restart() -> None:
    new = T0 + 5 * 60 * S + S

    def start(k: int) -> int:
        return T0 - 3600 * S if k < 6 else new

    d = _counter_run(start, lambda k: 1000 + 100 * k if k < 6 else 100 * (k - 5))
    assert restarts(d) == 1
    assert d.stats().evicted.get("counter_went_back", 0) == 0
    inst = next(iter(d._inst.values()))
    assert "start time" in inst.reset_info["reason"]


def test_a_new_pid_is_a_restart_and_is_exported_as_a_counter() -> None:
    """(f) The restart counter is on /metrics, labelled by service, and only goes up."""
    d = MemoryDetector()
    rng = np.random.default_rng(2)
    feed(d, [python_export(T0 + k * 60 * S, T0 - 3600 * S if k < 4 else T0 + 3 * 60 * S,
                           rss=80e6, gc_levels=gc_levels(rng), collections=(100 * k, 0, 0),
                           pid=4242 if k < 4 else 4243) for k in range(8)])
    assert restarts(d) == 1
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.add_counts(d, d.stats().counters)
    metrics.add_counts(d, d.stats().counters)  # the next refresh: nothing new
    text = generate_latest(registry).decode()
    assert "# TYPE anomaly_pipeline_memory_instance_restarts_total counter" in text
    assert 'anomaly_pipeline_memory_instance_restarts_total{service_name="checkout-py"} 1.0' \
        in text


# -- (d) containers: working set before usage -----------------------------------------------
def test_container_page_cache_growth_is_not_a_leak() -> None:
    """A database's page cache grows container_memory_usage_bytes; its working set is flat."""
    rng = np.random.default_rng(4)
    payloads = [cadvisor_export(T0 + k * 60 * S, {
        "container_memory_usage_bytes": 400 * MIB + 3 * MIB * k,
        "container_memory_working_set_bytes": 200 * MIB + rng.normal(0, MIB),
        "container_memory_rss": 150 * MIB + rng.normal(0, MIB),
        "container_memory_cache": 250 * MIB + 3 * MIB * k,
    }) for k in range(120)]
    d = MemoryDetector()
    assert [f for f in feed(d, payloads) if f.kind == LEAK] == []
    ranks = {n: rules_for(n, BUILTIN_RULES)[0].rank for n in (
        "container_memory_working_set_bytes", "container_memory_rss",
        "container_memory_usage_bytes")}
    assert ranks["container_memory_working_set_bytes"] < ranks["container_memory_rss"] \
        < ranks["container_memory_usage_bytes"]
    k8s = {n: rules_for(n, BUILTIN_RULES)[0].rank for n in (
        "container.memory.working_set", "container.memory.rss", "container.memory.usage")}
    assert k8s["container.memory.working_set"] < k8s["container.memory.rss"] \
        < k8s["container.memory.usage"]


def test_container_usage_is_the_floor_only_when_nothing_better_is_sent() -> None:
    payloads = [cadvisor_export(T0 + k * 60 * S, {
        "container_memory_usage_bytes": 400 * MIB + 2 * MIB * k}) for k in range(60)]
    d = MemoryDetector()
    leaks = [f for f in feed(d, payloads) if f.kind == LEAK]
    assert leaks and leaks[0].evidence["signal"] == {
        "metric": "container_memory_usage_bytes", "role": "rss"}


# -- (e) an absolute minimum growth without a limit ------------------------------------------
def hostmetrics_process_export(t_ns: int, start_ns: int, rss: float) -> bytes:
    """The Collector's hostmetrics receiver (process scraper) on one small process: no
    service.name, a resource per process, ``process.memory.usage`` a non-monotonic Sum."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {"host.name": "node-7", "process.pid": 812,
                                    "process.parent_pid": 1, "process.owner": "root",
                                    "process.executable.name": "node_agent",
                                    "process.executable.path": "/usr/bin/node_agent",
                                    "process.command": "/usr/bin/node_agent"})
    sm = rm.scope_metrics.add()
    sm.scope.name = "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/" \
                    "hostmetricsreceiver/internal/scraper/processscraper"
    _sum(sm, "process.memory.usage", "By", False, start_ns, t_ns, [({}, rss)])
    _sum(sm, "process.memory.virtual", "By", False, start_ns, t_ns, [({}, 40 * rss)])
    return req.SerializeToString()


def _small_process(kib_per_hour: float) -> list[Any]:
    """A 7 MiB process with no limit known, its RSS growing ``kib_per_hour``."""
    rng = np.random.default_rng(11)
    start = T0 - 3600 * S
    payloads = [hostmetrics_process_export(
        T0 + k * 60 * S, start, 7 * MIB + kib_per_hour * 1024 * k / 60 + rng.normal(0, 2048))
        for k in range(150)]
    return [f for f in feed(MemoryDetector.from_settings(Settings()), payloads) if f.kind == LEAK]


def test_a_tiny_process_growing_a_few_hundred_kib_an_hour_is_not_a_leak() -> None:
    assert _small_process(300) == []


def test_a_tiny_process_growing_128_mib_an_hour_is_a_leak() -> None:
    found = _small_process(128 * 1024)
    assert found and found[0].status == "firing"
    rule = found[0].evidence["min_growth"]
    assert rule["rule"] == "no_limit: pct_of_floor_and_bytes_per_hour"
    assert rule["min_bytes_per_hour"] == 64 * MIB


# -- Node.js: the heap in use climbing through mark-compacts is live -------------------------
# @opentelemetry/instrumentation-runtime-node 0.x (sdk-node 0.223, Node 20), as recorded:
# v8js.memory.heap.used is a Gauge per v8js.heap.space.name in "By"; v8js.gc.duration a
# cumulative Histogram in "s" per v8js.gc.type (minor, major, incremental, weakcb); no heap
# limit is exported; the resource has process.pid and host.id but no service.instance.id.
NODE_SPACES = ("read_only_space", "new_space", "old_space", "code_space", "large_object_space")


def node_export(t_ns: int, start_ns: int, *, old_space: float, gcs: dict[str, int],
                service: str = "cart-node", pid: int = 24086) -> bytes:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {
        "service.name": service, "host.id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
        "process.pid": pid, "process.executable.name": "node",
        "process.runtime.version": "20.20.2", "process.runtime.name": "nodejs",
        "telemetry.sdk.language": "nodejs", "telemetry.sdk.name": "opentelemetry"})
    sm = rm.scope_metrics.add()
    sm.scope.name = "@opentelemetry/instrumentation-runtime-node"
    m = sm.metrics.add()
    m.name, m.unit = "v8js.memory.heap.used", "By"
    sizes = {"read_only_space": 0, "new_space": 1.5 * MIB, "old_space": old_space,
             "code_space": 2 * MIB, "large_object_space": 0.6 * MIB}
    for space in NODE_SPACES:
        dp = m.gauge.data_points.add()
        dp.time_unix_nano, dp.as_int = t_ns, int(sizes[space])
        _attrs(dp.attributes, {"v8js.heap.space.name": space})
    m = sm.metrics.add()
    m.name, m.unit = "v8js.gc.duration", "s"
    m.histogram.aggregation_temporality = CUMULATIVE
    for kind, n in gcs.items():
        dp = m.histogram.data_points.add()
        dp.start_time_unix_nano, dp.time_unix_nano = start_ns, t_ns
        dp.count, dp.sum = n, n * 0.004
        dp.explicit_bounds.extend([0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0])
        dp.bucket_counts.extend([n, 0, 0, 0, 0, 0, 0, 0])
        _attrs(dp.attributes, {"v8js.gc.type": kind})
    return req.SerializeToString()


def node_run(minutes: int, leak_mib_per_min: float, majors_per_min: float) -> list[bytes]:
    """Exports every 12 s: a heap that climbs smoothly (the leak outgrows the young
    generation's churn), with minor collections every second and ``majors_per_min``."""
    start = T0 - 30 * S
    out = []
    for i in range(minutes * 5):
        t = T0 + i * 12 * S
        m = i / 5
        gcs = {"minor": int(60 * m), "major": int(majors_per_min * m),
               "incremental": int(majors_per_min * m)}
        out.append(node_export(t, start, old_space=20 * MIB + leak_mib_per_min * m * MIB,
                               gcs=gcs))
    return out


def test_a_node_heap_climbing_through_major_collections_is_a_leak() -> None:
    d = MemoryDetector()
    found = [f for f in feed(d, node_run(40, 4.0, majors_per_min=2)) if f.kind == LEAK]
    assert [(f.status, f.entity["service"]) for f in found] == [("firing", "cart-node")]
    assert found[0].evidence["runtime"] == "nodejs"


def test_a_node_heap_climbing_with_no_major_collection_yet_is_not_judged() -> None:
    # No mark-compact has run: the climb may be garbage the next one frees (a sawtooth's
    # first tooth). Nothing proves the heap in use is live, so no verdict.
    d = MemoryDetector()
    assert [f for f in feed(d, node_run(40, 4.0, majors_per_min=0)) if f.kind == LEAK] == []


# -- JVM (G1): the old generation in use is the floor -----------------------------------------
# OpenTelemetry Java agent 2.33.1 on OpenJDK 17 (-Xmx256m -XX:+UseG1GC), as recorded:
# jvm.memory.used, jvm.memory.used_after_last_gc and jvm.memory.limit are cumulative
# non-monotonic Sums in "By" per jvm.memory.pool.name and jvm.memory.type (the limit only for the
# old generation among heap pools); jvm.gc.duration a cumulative Histogram in "s" per jvm.gc.name
# and jvm.gc.action. G1 reports mixed collections as "G1 Young Generation" / "end of minor GC",
# and sets the old generation's used_after_last_gc only at a full collection: it stays at its
# start-up value.
def jvm_export(t_ns: int, start_ns: int, *, old: float, gcs: dict[tuple[str, str], int],
               old_after: float = 16 * MIB, limit: float = 256 * MIB,
               committed: float | None = 157 * MIB, old_pool: str = "G1 Old Gen",
               service: str = "cart-java", pid: int = 31337) -> bytes:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {
        "service.name": service, "service.instance.id": INSTANCE_ID, "host.name": "vm",
        "process.pid": pid, "process.runtime.name": "OpenJDK Runtime Environment",
        "process.runtime.version": "17.0.15+6-Debian-1deb12u1", "telemetry.sdk.language": "java",
        "telemetry.sdk.name": "opentelemetry"})
    sm = rm.scope_metrics.add()
    sm.scope.name = "io.opentelemetry.runtime-telemetry-java8"
    young = ("G1 Eden Space", "G1 Survivor Space") if old_pool.startswith("G1") else (
        "PS Eden Space", "PS Survivor Space")
    pools = {
        "jvm.memory.used": {young[0]: 40 * MIB, young[1]: 6 * MIB, old_pool: old,
                            "Metaspace": 9 * MIB},
        "jvm.memory.used_after_last_gc": {young[0]: 0, young[1]: 6 * MIB, old_pool: old_after},
        "jvm.memory.limit": {old_pool: limit, "Metaspace": 0},
        # as recorded: eden 90, survivor 9, old 58 MiB committed (the heap's capacity)
        "jvm.memory.committed": {young[0]: 90 * MIB, young[1]: 9 * MIB, old_pool: 58 * MIB,
                                 "Metaspace": 10 * MIB} if committed else {},
    }
    for name, values in pools.items():
        m = sm.metrics.add()
        m.name, m.unit = name, "By"
        m.sum.aggregation_temporality, m.sum.is_monotonic = CUMULATIVE, False
        for pool, value in values.items():
            if name == "jvm.memory.limit" and pool == "Metaspace":
                continue
            dp = m.sum.data_points.add()
            dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int = start_ns, t_ns, int(value)
            _attrs(dp.attributes, {"jvm.memory.pool.name": pool, "jvm.memory.type":
                                   "non_heap" if pool == "Metaspace" else "heap"})
    m = sm.metrics.add()
    m.name, m.unit = "jvm.gc.duration", "s"
    m.histogram.aggregation_temporality = CUMULATIVE
    for (gc, action), n in gcs.items():
        dp = m.histogram.data_points.add()
        dp.start_time_unix_nano, dp.time_unix_nano = start_ns, t_ns
        dp.count, dp.sum = n, n * 0.006
        dp.explicit_bounds.extend([0.01, 0.1, 1.0, 10.0])
        dp.bucket_counts.extend([n, 0, 0, 0, 0])
        _attrs(dp.attributes, {"jvm.gc.name": gc, "jvm.gc.action": action})
    return req.SerializeToString()


def jvm_run(minutes: int, old_at: Any, majors_at: Any = lambda m: 0,
            old_after_at: Any = lambda m: 16 * MIB, limit: float = 256 * MIB,
            committed: bool = True, old_pool: str = "G1 Old Gen") -> list[bytes]:
    """Exports every 15 s (the recorded interval) of a JVM under light load: young collections
    every half minute; the old generation in use is ``old_at(minute)``."""
    start = T0 - 60 * S
    full = "G1 Old Generation" if old_pool.startswith("G1") else "PS MarkSweep"
    minor = "G1 Young Generation" if old_pool.startswith("G1") else "PS Scavenge"
    return [
        jvm_export(T0 + i * 15 * S, start, old=old_at(i / 4), old_after=old_after_at(i / 4),
                   limit=limit, committed=157 * MIB if committed else None,
                   old_pool=old_pool, gcs={
                       (minor, "end of minor GC"): 1 + i // 2,
                       (full, "end of major GC"): majors_at(i / 4)})
        for i in range(minutes * 4)
    ]


def test_a_g1_leak_is_judged_once_g1_would_have_marked_it() -> None:
    # 3 MiB/min in a heap of 157 MiB committed (256 MiB limit): until the old generation holds
    # half of the committed heap nothing tells it from objects that die there; past it with no
    # drop, G1's marking (at 45 %) found them live.
    found = [f for f in feed(MemoryDetector(), jvm_run(50, lambda m: 20 * MIB + 3 * MIB * m))
             if f.kind == LEAK]
    assert [(f.status, f.entity["service"]) for f in found] == [("firing", "cart-java")]
    at_min = (found[0].detected_at_ns - T0) / 60e9
    assert (0.5 * 157 - 20) / 3 <= at_min <= (0.5 * 157 - 20) / 3 + 5
    ev = found[0].evidence
    assert ev["signal"] == {"metric": "jvm.memory.used_after_last_gc", "role": "heap_after_gc",
                            "old_generation": "jvm.memory.used"}
    assert ev["limit_bytes"] == 256 * MIB
    assert ev["slope_bytes_per_s"] == pytest.approx(3 * MIB / 60, rel=0.1)
    assert ev["floor_now_bytes"] > 0.5 * 157 * MIB  # the old generation, not its stale 16 MiB


def test_without_the_committed_heap_half_the_limit_stands_for_it() -> None:
    found = [f for f in feed(MemoryDetector(), jvm_run(
        70, lambda m: 20 * MIB + 3 * MIB * m, committed=False)) if f.kind == LEAK]
    at_min = (found[0].detected_at_ns - T0) / 60e9
    assert (0.5 * 256 - 20) / 3 <= at_min <= (0.5 * 256 - 20) / 3 + 5


def test_a_g1_old_generation_climbing_before_marking_is_not_judged() -> None:
    found = feed(MemoryDetector(), jvm_run(40, lambda m: 20 * MIB + 1.5 * MIB * m))
    assert [f for f in found if f.kind == LEAK] == []


def test_objects_dying_in_the_g1_old_generation_are_not_a_leak() -> None:
    # As the corpus's ttl-java: sessions kept 3 minutes are promoted and die in the old
    # generation, which climbs 3 MiB/min to a third of the committed heap and falls back at
    # the mixed collections after each marking.
    def old(m: float) -> float:
        return 22 * MIB + 3 * MIB * (m % 13)
    assert [f for f in feed(MemoryDetector(), jvm_run(150, old)) if f.kind == LEAK] == []


def test_a_g1_jvm_with_full_collections_is_judged_on_their_post_gc_size() -> None:
    # A 4 GiB heap (half of it is far away) and a full collection every 5 minutes
    # (System.gc(), say): each sets the old generation's post-GC size, the floor from then on.
    def old(m: float) -> float:
        return 20 * MIB + 2 * MIB * m + 15 * MIB * ((m % 5) / 5)
    found = feed(MemoryDetector(), jvm_run(
        45, old, majors_at=lambda m: int(m // 5), limit=4096 * MIB, committed=False,
        old_after_at=lambda m: 20 * MIB + 2 * MIB * (m // 5 * 5)))
    leak = [f for f in found if f.kind == LEAK]
    assert [f.status for f in leak] == ["firing"]
    assert leak[0].evidence["signal"] == {"metric": "jvm.memory.used_after_last_gc",
                                          "role": "heap_after_gc"}
    assert (leak[0].detected_at_ns - T0) / 60e9 < 30


def test_parallel_gc_old_generation_post_gc_size_is_read_as_it_is() -> None:
    # Parallel GC sets the old generation's post-GC size at each full collection: a leak shows
    # as its steps up, whatever the old generation in use does between them.
    found = feed(MemoryDetector(), jvm_run(
        45, lambda m: 60 * MIB + 2 * MIB * m + 30 * MIB * ((m % 5) / 5),
        majors_at=lambda m: int(m // 5), old_after_at=lambda m: 60 * MIB + 2 * MIB * (m // 5 * 5),
        old_pool="PS Old Gen"))
    leak = [f for f in found if f.kind == LEAK]
    assert [f.status for f in leak] == ["firing"]
    assert leak[0].evidence["signal"] == {"metric": "jvm.memory.used_after_last_gc",
                                          "role": "heap_after_gc"}

"""Golden runtime-metric series for the memory detector: each runtime's shape, in event time.

``batches(runtime, minutes, floor=...)`` returns one list of ``MetricPoint`` per 10-second
export, named as that runtime's OpenTelemetry instrumentation names them:

- ``java``: ``jvm.memory.used`` / ``jvm.memory.used_after_last_gc`` by pool (G1 Eden, Old Gen),
  ``jvm.memory.limit`` and the ``jvm.gc.duration`` histogram. The post-GC old generation rises
  with promotion between major collections (every ``period_s``) and falls to the floor at each;
- ``go``: ``go.memory.used`` in a random phase of the GOGC cycle (floor to twice the floor) and
  ``go.memory.limit``;
- ``python``: ``process.runtime.cpython.memory`` (rss, with multiplicative noise ``rss_noise``)
  and ``cpython.gc.collections`` by generation;
- ``nodejs``: ``v8js.memory.heap.used`` by space (new space churn, old space sawtooth),
  ``v8js.memory.heap.limit`` and ``v8js.gc.duration``;
- ``dotnet``: ``dotnet.gc.last_collection.heap.size`` by generation and ``dotnet.gc.pause.time``.

``floor(t_s)`` is the live set in bytes; ``gc_fraction(t_s)`` the share of time in GC;
``load(t_s)`` scales allocation (collection counts); ``restart_at`` restarts the process
(new start time and pid) at that second, and the floor function then sees time since it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.records import TEMPORALITY_CUMULATIVE, MetricPoint, Resource

S = 10**9
T0 = 1_767_600_000 * S
MIB = 1024 * 1024
GIB = 1024 * MIB
GC_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
LANG = {"java": "java", "go": "go", "python": "python", "nodejs": "nodejs", "dotnet": "dotnet"}


def flat(level: float) -> Callable[[float], float]:
    return lambda t: level


def leak(start: float, pct_limit_per_hour: float, limit: float, onset_s: float = 0.0,
         stop_s: float | None = None) -> Callable[[float], float]:
    """A floor at ``start`` growing linearly from ``onset_s`` (until ``stop_s``)."""
    rate = pct_limit_per_hour / 100.0 * limit / 3600.0

    def f(t: float) -> float:
        end = t if stop_s is None else min(t, stop_s)
        return start + rate * max(0.0, end - onset_s)

    return f


def warmup(start: float, rise: float, tau_s: float, onset_s: float = 0.0
           ) -> Callable[[float], float]:
    """A cache warming up: ``rise`` bytes approached exponentially, then flat."""
    return lambda t: start + (rise * (1 - math.exp(-(t - onset_s) / tau_s)) if t > onset_s else 0)


def batches(
    runtime: str,
    minutes: float,
    floor: Callable[[float], float],
    *,
    limit: float = GIB,
    service: str = "svc",
    instance: str = "svc-1",
    period_s: float = 180.0,
    gc_fraction: Callable[[float], float] = lambda t: 0.01,
    load: Callable[[float], float] = lambda t: 1.0,
    rss_noise: float = 0.02,
    restart_at: float | None = None,
    version: Callable[[float], str] = lambda t: "1.0.0",
    seed: int = 1,
    t0: int = T0,
    started_s_before: float = 86400.0,
) -> list[list[MetricPoint]]:
    rng = np.random.default_rng(seed)
    out: list[list[MetricPoint]] = []
    start_ns = t0 - int(started_s_before * S)
    pid = 100
    garbage = 0.0
    last = -started_s_before
    gc_count = [0.0, 0.0]
    gc_sum = [0.0, 0.0]
    buckets = [[0] * (len(GC_BOUNDS) + 1) for _ in range(2)]
    cum_alloc = 0.0
    amp = 0.15 * limit
    for k in range(int(minutes * 6)):
        t = (k + 1) * 10.0
        if restart_at is not None and last < restart_at <= t:
            pid, garbage = pid + 1, 0.0
            start_ns = t0 + int(restart_at * S)
            gc_count, gc_sum = [0.0, 0.0], [0.0, 0.0]
            buckets = [[0] * (len(GC_BOUNDS) + 1) for _ in range(2)]
            cum_alloc = 0.0
        last = t
        live = floor(t)
        tns = t0 + int(t * S)
        res = Resource(service, instance, "node-1", f"{instance}-pod", {
            "telemetry.sdk.language": LANG[runtime], "service.version": version(t),
            "process.pid": pid,
        })
        pts: list[MetricPoint] = []

        def up(name: str, value: float, attrs: dict[str, Any] | None = None,
               unit: str = "By", pts: list[MetricPoint] = pts, tns: int = tns,
               start_ns: int = start_ns, res: Resource = res, monotonic: bool = False) -> None:
            pts.append(MetricPoint(name, "sum", unit, TEMPORALITY_CUMULATIVE, monotonic, tns,
                                   start_ns, float(value), attrs or {}, res))

        # collections this tick: minor ones follow load; time in GC follows gc_fraction
        minors = max(1, int(round(3 * load(t))))
        frac = gc_fraction(t)
        pause = frac * 10.0 / minors
        garbage += amp * 10.0 / period_s * (0.8 + 0.4 * rng.random())
        major = garbage >= amp
        if major:
            garbage = abs(rng.normal()) * 0.005 * limit
        for i, n in ((0, minors), (1, 1 if major else 0)):
            for _ in range(n):
                p = pause * math.exp(0.2 * rng.normal())
                gc_count[i] += 1
                gc_sum[i] += p
                buckets[i][int(np.searchsorted(GC_BOUNDS, p))] += 1
        cum_alloc += 50 * MIB * load(t) * 10
        if runtime == "java":
            eden = rng.random() * 100 * MIB
            old_after = live + garbage
            up("jvm.memory.used", eden, {"jvm.memory.type": "heap",
                                         "jvm.memory.pool.name": "G1 Eden Space"})
            up("jvm.memory.used", old_after, {"jvm.memory.type": "heap",
                                              "jvm.memory.pool.name": "G1 Old Gen"})
            up("jvm.memory.used_after_last_gc", 0, {"jvm.memory.type": "heap",
                                                    "jvm.memory.pool.name": "G1 Eden Space"})
            up("jvm.memory.used_after_last_gc", old_after, {
                "jvm.memory.type": "heap", "jvm.memory.pool.name": "G1 Old Gen"})
            up("jvm.memory.limit", limit, {"jvm.memory.type": "heap",
                                           "jvm.memory.pool.name": "G1 Old Gen"})
            up("jvm.memory.used", 40 * MIB, {"jvm.memory.type": "non_heap",
                                             "jvm.memory.pool.name": "Metaspace"})
            names = ({"jvm.gc.name": "G1 Young Generation", "jvm.gc.action": "end of minor GC"},
                     {"jvm.gc.name": "G1 Old Generation", "jvm.gc.action": "end of major GC"})
            for i in (0, 1):
                pts.append(MetricPoint(
                    "jvm.gc.duration", "histogram", "s", TEMPORALITY_CUMULATIVE, False, tns,
                    start_ns, None, names[i], res, count=int(gc_count[i]), sum=gc_sum[i],
                    bounds=list(GC_BOUNDS), bucket_counts=list(buckets[i])))
        elif runtime == "go":
            up("go.memory.used", live * (1 + rng.random()), {"go.memory.type": "other"})
            up("go.memory.used", 2 * MIB, {"go.memory.type": "stack"})
            up("go.memory.limit", limit)
            up("go.memory.allocated", cum_alloc, monotonic=True)  # a Counter
        elif runtime == "python":
            rss = (live + 30 * MIB) * math.exp(rss_noise * rng.normal())
            up("process.runtime.cpython.memory", rss, {"type": "rss"})
            up("process.runtime.cpython.memory", rss * 2.5, {"type": "vms"})
            for gen in (0, 1, 2):
                pts.append(MetricPoint(
                    "cpython.gc.collections", "sum", "{collection}", TEMPORALITY_CUMULATIVE,
                    True, tns, start_ns, float(int(gc_count[0] * 10 / 10**gen)),
                    {"cpython.gc.generation": gen}, res))
        elif runtime == "nodejs":
            up("v8js.memory.heap.used", rng.random() * 16 * MIB,
               {"v8js.heap.space.name": "new_space"})
            up("v8js.memory.heap.used", live + garbage, {"v8js.heap.space.name": "old_space"})
            up("v8js.memory.heap.limit", limit, {"v8js.heap.space.name": "old_space"})
            up("v8js.memory.heap.limit", 32 * MIB, {"v8js.heap.space.name": "new_space"})
            for i, typ in ((0, "minor"), (1, "major")):
                pts.append(MetricPoint(
                    "v8js.gc.duration", "histogram", "s", TEMPORALITY_CUMULATIVE, False, tns,
                    start_ns, None, {"v8js.gc.type": typ}, res, count=int(gc_count[i]),
                    sum=gc_sum[i], bounds=list(GC_BOUNDS), bucket_counts=list(buckets[i])))
        elif runtime == "dotnet":
            for gen, share in (("gen0", 0.05), ("gen1", 0.05), ("gen2", 0.9)):
                up("dotnet.gc.last_collection.heap.size", (live + garbage) * share,
                   {"dotnet.gc.heap.generation": gen})
            up("dotnet.gc.pause.time", sum(gc_sum), unit="s", monotonic=True)  # a Counter
        else:
            raise ValueError(runtime)
        out.append(pts)
    return out


def run(detector: Any, stream: list[list[MetricPoint]], lateness_s: float = 5.0) -> list[Any]:
    """Feed batches in order, advancing the watermark behind each; return every finding."""
    findings = []
    for batch in stream:
        detector.update(batch)
        findings += detector.advance(max(p.time_ns for p in batch) - int(lateness_s * S))
    return findings


def minute(f: Any) -> float:
    """When a finding was published, in minutes from ``T0``."""
    at = f.detected_at_ns if f.status == "firing" else f.resolved_at_ns
    return (at - T0) / 60e9

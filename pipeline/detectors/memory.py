"""Memory leaks and GC pressure, per instance, from runtime metrics. Pure: no Faust, no Kafka.

Input: metric points routed by emitter (service + instance), so one partition sees every point
of an instance. ``pipeline.runtime_metrics`` says which points are heap, post-GC heap, RSS,
limits and GC activity, for every runtime; points of one metric at one timestamp are summed
(pools, spaces, generations). Everything runs in event time: an instance's sample is folded,
in time order, once the watermark has passed it on the instance's own clock (an instance whose
clock trails the partition's newest is judged that much later), into one-minute buckets.
Counter increases, counter resets and identity changes are taken at fold, in event-time order,
so points arriving out of order across input partitions change nothing.

**The floor.** A leak is growth of what survives collection, not of the heap: the heap is a
sawtooth. The floor signal is the post-GC heap where the runtime reports it (JVM, .NET, and Go's
heap goal over 1 + GOGC/100), else the heap in use, else RSS; each bucket keeps its minimum, the
*lower envelope*. A G1 JVM's floor is its old generation in use: G1 sets the old generation's
post-GC size only at a full collection (``runtime_metrics.G1_OLD``), and what the old generation
holds changes only at collections. Collections show as drops of the floor signal far larger than
its typical move; when they come at regular intervals (a JVM's old generation between major
collections) the floor signal has a sawtooth of its own: its troughs are the samples, and a
trend is judged only over windows spanning six cycles. A climbing in-use heap whose collections
have not been seen yet is taken to cycle at least as slowly as the time since the start, unless
the runtime's collection counter shows two full collections since
(``runtime_metrics.FULL_COLLECTIONS``: V8's mark-compacts, .NET's gen2, a JVM's full
collections) that left it in place: then what is in use is live, and its minute minima are the
floor (a Node.js leak climbs smoothly through mark-compacts). G1's old generation climbing
without a drop is judged in the same way: until two full collections, or until it holds
``G1_MARKED_FRACTION`` (50%) of the committed heap (else of its limit), past the 45% at which G1
marks it and its mixed collections take what died there: objects that outlive a few young
collections and then die (sessions, caches with a time to live) climb like a leak until then. A
G1 leak is therefore found late: 18 to 34 minutes into the real corpus's 2-3 MB/min leaks in a
256 MB heap.

**The trend.** Over windows of 10, 20, 40, 80, 160 and 320 minutes (judged once three-quarters
full; the shorter ones every minute, the longer ones every few), a window is a leak when

- the Mann–Kendall test (Kendall's tau of floor against time, one-sided, ``scipy.stats``) says
  it rises at ``alpha`` (0.005; 0.001 from 80 minutes up: more windows, stricter test), before
  and after the knee of the best flat-then-linear (hinge) fit, where the growth began;
- the Theil–Sen slope since the knee has its 90% interval above zero and is at least
  ``min_growth_pct_per_hour`` (0.25 %/h) of the limit; with no limit known, at least that share
  of the floor **and** ``min_growth_bytes_per_hour`` (64 MiB/h,
  ``MEMORY_MIN_GROWTH_BYTES_PER_HOUR``; 0 turns it off): a small process growing a few hundred
  KiB an hour is not a leak. The finding's ``min_growth`` evidence says which rule applied;
- the growth has lasted ``min_growth_s`` (12 minutes: before that a warm-up and a leak look
  alike) over at least eight samples;
- it is not levelling off: its second half and last third grow at least 0.6 and 0.5 times as
  fast as the whole (a cache warming up grows fast, then slower);
- it is not load: the load signal (bytes allocated, else collections per second) now is under
  1.5x what it was before the growth, or the floor does not follow it (Kendall's tau of floor
  against load since the knee under 0.5: a heap that grows with traffic recedes with it, while
  a leak climbs whatever the load does).

The passing window that saw the most of the growth speaks for the instance. Before a finding
opens, a longer window that sees a step or a slowing rise vetoes shorter ones. A finding opens
after ``open_after`` (2) consecutive passing minutes and resolves after ``resolve_after`` (60)
minutes without one.

**Restarts reset.** A new process starts the floor history afresh, skips ``startup_s`` of
warm-up, and resolves a firing leak at once (``resolved_because`` in its evidence;
``last_restart`` in later findings' evidence, with its reason). A restart is told only by real
identity or by a real counter: a changed ``process.pid`` or ``service.version``, a cumulative
counter with a new start time, or a cumulative counter that went back with no start time to
tell. A cumulative counter that went back with the *same* start time is the same process (a
level exported as a counter, a glitch): its new value is the next base, counted
``counter_went_back``. Only counters feed the counter roles (``runtime_metrics.is_counter``: a
monotonic Sum, a histogram or summary, a Prometheus ``*_total``); a Gauge or non-monotonic Sum
mapped to one is ignored, counted ``level_not_counter``; CPython's
``process.runtime.cpython.gc_count`` (``gc.get_count()`` levels sent as a monotonic Sum) maps
to no role. Restarts are counted per service for the Prometheus counter
``anomaly_pipeline_memory_instance_restarts_total{service_name}`` (``DetectorStats.counters``).
A redeployed pod has a new instance id: the old instance stops reporting, and its state and
findings expire after ``instance_ttl_s``.

**Time to OOM** is the time for the Theil–Sen line to reach ``oom_fraction`` (0.9) of the
limit, with an interval from the slope's 90% bounds. The limit comes from the runtime's limit
metric (``jvm.memory.limit``, ``go.memory.limit``, ...) or ``MEMORY_LIMITS`` (per service).

**GC pressure.** Per bucket: the fraction of time in GC (sum of the pause histogram, or a GC
time counter), pause p99 (histogram buckets) and collections per second, against the
instance's own median and MAD over its last 60 normal buckets (after 15). A bucket is under
pressure when its GC time fraction is at least ``gc_min_fraction`` (10%), twice the baseline and
six MADs over it. Runtimes that report only collection counts (CPython) are not judged unless
``gc_from_counts`` is set (then: four times the baseline collection rate): on the real corpus a
CPython service's young-generation collections rose eightfold with a traffic burst — a count
follows the allocation rate, i.e. the load, and says nothing of time lost. Opens after 3 such
buckets, resolves after 5 normal ones.

**Bounded state.** At most ``max_instances`` per partition (the least recently updated one
without a firing finding is evicted, counted ``evicted_instances``); an instance silent for
``instance_ttl_s`` expires; floor history holds ``history_s`` (6 h); series, pending timestamps
and caches are per instance and small. Instances (``i``), their floor history in hour blocks
(``f``, format 2: the first release saved bare lists) and findings (``ll``, ``lg``) are
``pipeline.state.Keyed`` maps.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding, Lifecycle, Verdict, rfc3339
from pipeline.records import MetricPoint
from pipeline.runtime_metrics import (
    BUILTIN_RULES,
    FLOOR_ROLES,
    G1_OLD_AFTER,
    G1_OLD_GEN,
    IGNORE,
    LEVEL_ROLES,
    Rule,
    is_counter,
    is_full_collection,
    load_rules,
    parse_limits,
    parse_min_growth,
    rules_for,
    unit_scale,
)
from pipeline.state import DueKeys, State

LEAK, GC = "memory_leak", "gc_pressure"
SLOPE_GAUGE = "anomaly_pipeline_memory_leak_slope_bytes_per_second"
TTO_GAUGE = "anomaly_pipeline_memory_leak_time_to_oom_seconds"
GC_GAUGE = "anomaly_pipeline_gc_time_fraction"
#: Restarts seen, by service: a Prometheus counter (``DetectorStats.counters``).
RESTARTS_COUNTER = "anomaly_pipeline_memory_instance_restarts"
MAX_COUNTED_SERVICES = 1_000  # services with their own restart series; the rest are "_other"
NS = 1_000_000_000
WINDOWS_MIN = (10, 20, 40, 80, 160, 320)
MIB = 1024.0 * 1024.0
TICK_TOLERANCE_NS = NS  # points of one instance less than this apart are one sample
MAX_CLOCK_LAG_NS = 300 * NS  # how far behind the partition's newest an instance may report
#: A G1 old generation this full (of the heap's capacity, ``jvm.memory.committed``, else of its
#: limit) with no drop seen is live (``_old_gen``).
G1_MARKED_FRACTION = 0.5
RUNTIME_PREFIXES = (
    ("jvm", "java"), ("go", "go"), ("cpython", "python"), ("process.runtime.cpython", "python"),
    ("python", "python"), ("v8js", "nodejs"), ("nodejs", "nodejs"), ("dotnet", "dotnet"),
)


class _Inst:
    """One instance's state. Everything but ``floors`` is one small document."""

    __slots__ = (
        "service", "instance", "attrs", "runtime", "pick", "series", "pending", "last_t",
        "reset_ns", "limit", "floor_role", "cur", "floors", "gcb", "cache", "seen_ns",
        "reset_info", "drops", "prev", "closed_ns", "full_gcs", "old_gen", "g1_full",
    )

    def __init__(self, service: str, instance: str) -> None:
        self.service, self.instance = service, instance
        self.attrs: dict[str, Any] = {}
        self.runtime = ""
        self.pick: dict[str, list[Any]] = {}  # role -> [rank, metric name]
        self.series: dict[str, list[Any]] = {}  # counter series -> [start_ns, t_ns, value...]
        self.pending: dict[int, dict[str, Any]] = {}  # t_ns -> role -> value, waiting for wm
        self.last_t = 0  # newest folded timestamp
        self.reset_ns = 0  # the floor history starts here (first seen or last restart)
        self.limit: float | None = None
        self.floor_role = ""
        # current bucket: [b, floor min, gc_time, gc_count, alloc, pause bounds, pause counts,
        # floor max, lowest trough (floor right after a collection)]
        self.cur: list[Any] | None = None
        # closed buckets, oldest first: [b, floor min, load or None, max, trough or None]
        self.floors: list[list[Any]] = []
        self.gcb: dict[str, Any] = {"f": [], "q": [], "p": [], "run": 0}
        self.cache: dict[str, Any] = {}  # window minutes -> candidate evidence or None
        self.seen_ns = 0
        self.reset_info: dict[str, Any] | None = None  # the last restart seen, for evidence
        self.drops: list[int] = []  # times of the last collections seen as floor-signal drops
        # the floor signal's last value, mean absolute change, share of moves up (EWMAs)
        self.prev: list[float] | None = None
        self.closed_ns = 0  # end of the last closed bucket: older points are late
        self.full_gcs = 0.0  # full collections counted since the last drop seen (or start)
        # G1_OLD_GEN when the floor is G1's old generation in use (runtime_metrics.G1_OLD)
        self.old_gen = ""
        # the JVM reports full collections, so G1's post-GC size is set (None: state of a
        # release that read it whatever the JVM reported, decided at the next sample)
        self.g1_full: bool | None = False

    def to_doc(self) -> dict[str, Any]:
        return {
            "s": self.service, "i": self.instance, "a": self.attrs, "rt": self.runtime,
            "pk": self.pick, "se": self.series,
            "pe": [[t, v] for t, v in sorted(self.pending.items())],
            "lt": self.last_t, "r": self.reset_ns, "l": self.limit, "fr": self.floor_role,
            "c": self.cur, "g": self.gcb, "ca": self.cache, "sn": self.seen_ns,
            "ri": self.reset_info, "d": self.drops, "pv": self.prev, "cl": self.closed_ns,
            "fg": self.full_gcs, "og": self.old_gen, "g1f": self.g1_full,
        }

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> _Inst:
        x = cls(d["s"], d["i"])
        x.attrs, x.runtime, x.pick, x.series = dict(d["a"]), d["rt"], dict(d["pk"]), dict(d["se"])
        x.pending = {int(t): dict(v) for t, v in d["pe"]}
        x.last_t, x.reset_ns, x.limit, x.floor_role = d["lt"], d["r"], d["l"], d["fr"]
        x.cur, x.gcb, x.cache, x.seen_ns = d["c"], dict(d["g"]), dict(d["ca"]), d["sn"]
        x.reset_info, x.drops, x.prev = d["ri"], list(d["d"]), d["pv"]
        x.closed_ns = d.get("cl", 0)
        x.full_gcs = d.get("fg", 0.0)
        x.old_gen = d.get("og", "")
        x.g1_full = d.get("g1f")
        return x


class MemoryDetector(Detector):
    name = "memory"
    version = "1"
    signal = "metrics"
    kinds = (LEAK, GC)

    def __init__(
        self,
        rules: Mapping[str, tuple[Rule, ...]] | None = None,
        limits: Mapping[str, float] | None = None,
        bucket_s: float = 60.0,
        alpha: float = 0.005,
        alpha_long: float = 0.001,
        min_growth_pct_per_hour: float = 0.25,
        min_growth_bytes_per_hour: float = 64 * MIB,
        gc_from_counts: bool = False,
        oom_fraction: float = 0.9,
        startup_s: float = 300.0,
        min_growth_s: float = 720.0,
        open_after: int = 2,
        resolve_after: int = 60,
        gc_min_fraction: float = 0.10,
        gc_warmup_buckets: int = 15,
        max_instances: int = 2_000,
        instance_ttl_s: float = 1800.0,
        history_s: float = 6 * 3600.0,
        lateness_s: float = 5.0,
    ) -> None:
        if bucket_s <= 0 or not 0 < oom_fraction <= 1:
            raise ValueError("need bucket_s > 0 and 0 < oom_fraction <= 1")
        self.rules = dict(rules) if rules is not None else dict(BUILTIN_RULES)
        self.limits = dict(limits or {})
        self.bucket_ns = int(bucket_s * NS)
        self.alpha, self.alpha_long = alpha, alpha_long
        self.min_growth = min_growth_pct_per_hour / 100.0
        self.min_growth_bytes_h = min_growth_bytes_per_hour  # with no limit known (0: off)
        self.gc_from_counts = gc_from_counts
        self.oom_fraction = oom_fraction
        self.startup_ns = int(startup_s * NS)
        self.min_growth_s = min_growth_s
        self.gc_min_fraction, self.gc_warmup = gc_min_fraction, gc_warmup_buckets
        self.max_instances = max_instances
        self.ttl_ns = int(instance_ttl_s * NS)
        self.history = int(history_s / bucket_s)
        # The watermark trails the newest event time by the allowed lateness: the partition's
        # clock, against which an instance whose own clock trails is judged later.
        self.lateness_ns = int(lateness_s * NS)
        self.state = State()
        self.lc_leak = Lifecycle(LEAK, self.name, self.version, open_after, resolve_after,
                                 max_instances, prefix="ll")
        self.lc_gc = Lifecycle(GC, self.name, self.version, 3, 5, max_instances, prefix="lg")
        self.state.add(self.lc_leak.store)
        self.state.add(self.lc_gc.store)
        self._inst = self.state.keyed("i", encode=_Inst.to_doc,
                                      decode=lambda doc, key: _Inst.from_doc(doc),
                                      cap=max_instances)
        # "<hour block>/<instance key>" -> that hour's floor rows (the same row lists as the
        # instance's ``floors``): written when a bucket closes into it
        self._floors = self.state.keyed(
            "f", encode=lambda rows: {"rows": rows},
            decode=lambda doc, key: [list(r) for r in doc["rows"]],
            version=2, migrate=lambda doc, v: {"rows": doc},
        )
        # instances with pending timestamps or an open bucket, by when the watermark reaches them
        self._waiting = DueKeys()
        self._meta = self.state.cell("meta", {
            "counts": {"evicted_instances": 0, "expired_instances": 0, "late_points": 0,
                       "restarts": 0, "level_not_counter": 0, "counter_went_back": 0},
            "exp": 0,  # when instances were last expired
        })
        # Restarts seen by this object, by service (not saved: the worker adds the increases
        # to a Prometheus counter, which a partition moving between workers cannot take down)
        self._restarts: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> MemoryDetector:
        return cls(
            rules=load_rules(settings.memory_metrics),
            limits=parse_limits(settings.memory_limits),
            oom_fraction=settings.memory_oom_fraction,
            min_growth_pct_per_hour=settings.memory_min_growth_pct_per_hour,
            min_growth_bytes_per_hour=parse_min_growth(settings.memory_min_growth_bytes_per_hour),
            gc_min_fraction=settings.gc_pressure_min_fraction,
            max_instances=settings.memory_max_instances,
        )

    # -- folding points ----------------------------------------------------------------------
    def update(self, records: Sequence[MetricPoint]) -> None:
        with self._inst.batch():  # an instance's change recorded once per batch
            self._update(records)

    def _update(self, records: Sequence[MetricPoint]) -> None:
        rules_map = self.rules
        for p in records:
            rules = rules_for(p.name, rules_map)
            if not rules:
                continue
            rule = next((r for r in rules if r.matches(p.attrs)), None)
            if rule is None or rule.role == IGNORE:
                continue
            scale = unit_scale(p.unit)
            if scale is None:
                continue
            if rule.role not in LEVEL_ROLES and not is_counter(p.name, p.type, p.monotonic):
                # a level (a Gauge, a non-monotonic Sum) mapped to a counter role: its falls
                # would read as restarts
                self._count("level_not_counter")
                continue
            key = p.resource.key
            inst = self._inst.get(key)
            if inst is None:
                if not self._make_room():
                    continue
                inst = _Inst(p.resource.service, p.resource.instance)
                self._inst.put(key, inst)
            t = p.time_ns
            if t <= inst.last_t or t < inst.closed_ns:
                self._count("late_points")
                continue
            self._inst.changed(key)
            self._waiting.touch(key)
            if t > inst.seen_ns:
                inst.seen_ns = t
            if not inst.runtime:
                self._describe(inst, p)
            role = rule.role
            series = rule.series or p.name
            pick = inst.pick.get(role)
            if pick is None or rule.rank < pick[0] or (rule.rank == pick[0] and series < pick[1]):
                if pick is not None and pick[1] != series:
                    for tick in inst.pending.values():
                        tick.pop(role, None)
                inst.pick[role] = [rule.rank, series]
            elif pick[1] != series:
                continue
            tick = inst.pending.get(t)
            if tick is None:
                # one collection's points may carry timestamps a little apart (instruments are
                # read one after another): they are one sample
                near = [k for k in inst.pending if abs(k - t) < TICK_TOLERANCE_NS]
                tick = inst.pending[near[0]] if near else inst.pending.setdefault(t, {})
            if "id" not in tick:  # one resource per sample: its identity once
                ra = p.resource.attrs
                tick["id"] = [ra.get("service.version"), ra.get("process.pid")]
            if p.start_ns > 0 and not inst.last_t and p.start_ns < tick.get("st", t):
                tick["st"] = p.start_ns  # when the process started (for its first sample)
            if role in LEVEL_ROLES:
                if p.value is not None:
                    v = float(p.value) * scale * rule.scale
                    tick[role] = tick.get(role, 0.0) + v
                    if rule.part:
                        tick[rule.part] = tick.get(rule.part, 0.0) + v
            else:  # counters: their increases are taken in event-time order, when folded
                sid = p.name + "|" + "|".join(f"{k}={v}" for k, v in sorted(p.attrs.items()))
                full = is_full_collection(p.name, p.attrs)
                tick.setdefault("c", {})[sid] = [
                    role, scale, p.temporality, p.start_ns, p.value, p.count, p.sum, p.bounds,
                    p.bucket_counts, full,
                ]
                if full and ((p.count or 0) > 0 or (p.value or 0) > 0):
                    tick["full"] = True  # the process reports full collections

    def _describe(self, inst: _Inst, p: MetricPoint) -> None:
        ra = p.resource.attrs
        inst.runtime = _runtime(ra, p.name)
        inst.attrs = {
            k: v for k, v in (
                ("host.name", p.resource.host), ("k8s.pod.name", p.resource.pod),
                *((k, ra[k]) for k in ("k8s.namespace.name", "service.version",
                                       "process.pid", "process.runtime.name",
                                       "telemetry.sdk.language") if k in ra),
            ) if v
        }

    def _identity_changed(self, inst: _Inst, ident: Sequence[Any]) -> str | None:
        """A new ``service.version`` or ``process.pid`` (in event-time order): a new process."""
        change = None
        for attr, new in zip(("service.version", "process.pid"), ident, strict=True):
            old = inst.attrs.get(attr)
            if new is not None and new != old:
                inst.attrs[attr] = new
                if old is not None and change is None:
                    change = f"{attr} changed from {old} to {new}"
        return change

    def _increase(self, inst: _Inst, sid: str, raw: Sequence[Any], cur: list[Any],
                  t: int) -> str | None:
        """Fold one counter or histogram point's increase into the bucket. Returns why the
        process restarted, when the point says so: a cumulative counter with a new start time,
        or one that went back with no start time to tell. One that went back with the same
        start time did not restart (a level sent as a counter, a collector's glitch): its new
        value is the base for the next increase (counted ``counter_went_back``)."""
        role, scale, temporality, start_ns, value, count, total, bounds, buckets = raw[:9]
        full = len(raw) > 9 and raw[9]  # a series of full collections (older state: absent)
        if value is not None:
            count, total, buckets = None, float(value), None
        elif not bounds:
            buckets = None
        if temporality == 1:  # delta
            d_count, d_total, d_buckets = count, total, buckets
        else:
            prev = inst.series.get(sid)
            inst.series[sid] = [start_ns, t, count, total, buckets]
            if prev is None:
                return None
            name = sid.partition("|")[0]
            if start_ns and prev[0] and abs(start_ns - prev[0]) > NS:
                return f"process restarted ({name}: a cumulative counter with a new start time)"
            if (total is not None and prev[3] is not None and total < prev[3]) or (
                count is not None and prev[2] is not None and count < prev[2]
            ):
                if start_ns and prev[0]:  # the same start time: the same process
                    self._count("counter_went_back")
                    return None
                return f"process restarted ({name}: a cumulative counter went back)"
            d_count = None if count is None or prev[2] is None else count - prev[2]
            d_total = None if total is None or prev[3] is None else total - prev[3]
            d_buckets = (
                [a - b for a, b in zip(buckets, prev[4], strict=True)]
                if buckets is not None and prev[4] is not None and len(buckets) == len(prev[4])
                else None
            )
        if role in ("gc", "gc_count"):
            n = d_count if role == "gc" else d_total
            if n and n > 0 and full:
                inst.full_gcs += n
        if role == "gc":
            if d_total is not None:
                cur[2] = (cur[2] or 0.0) + d_total * scale
            if d_count is not None:
                cur[3] = (cur[3] or 0.0) + d_count
            if d_buckets is not None:
                b_scaled = [b * scale for b in bounds]
                if cur[5] is None:
                    cur[5], cur[6] = b_scaled, list(d_buckets)
                elif cur[5] == b_scaled:
                    cur[6] = [a + b for a, b in zip(cur[6], d_buckets, strict=True)]
        elif d_total is not None:
            i = {"gc_time": 2, "gc_count": 3, "alloc": 4}[role]
            cur[i] = (cur[i] or 0.0) + d_total * (scale if role != "gc_count" else 1.0)
        return None

    # -- event time ----------------------------------------------------------------------------
    def advance(self, watermark_ns: int) -> list[Finding]:
        findings: list[Finding] = []
        # Only the instances this watermark can move (``_due``), in key order: a scan of every
        # waiting instance per record stalled the worker under a flood of new instances.
        for key in self._waiting.take(math.inf if self.input_ended else watermark_ns):
            inst = self._inst.get(key)
            if inst is None:
                continue
            # A sample is complete once the watermark passes it on the instance's own clock:
            # an instance whose clock runs behind the partition's (skew, a slower exporter)
            # is judged that much later, up to MAX_CLOCK_LAG_NS. The partition's clock is the
            # watermark, never the newest time seen: one far-ahead point must not delay all.
            # At the end of the input nothing more is coming: every sample is complete.
            lag = 0 if self.input_ended else min(
                max(watermark_ns + self.lateness_ns - inst.seen_ns, 0), MAX_CLOCK_LAG_NS)
            own = watermark_ns - lag
            ready = sorted(t for t in inst.pending if t <= own)
            for t in ready:
                self._fold(key, inst, t, inst.pending.pop(t), findings)
            if ready:
                self._inst.changed(key)
            # A bucket closes once the instance's clock has passed its end (the end of the
            # input, too, closes the last one).
            if inst.cur is not None and (inst.cur[0] + 1) * self.bucket_ns <= own:
                self._close(key, inst, findings)
                self._inst.changed(key)
            if inst.pending or inst.cur is not None:
                self._waiting.wait(key, self._due(inst))
        if watermark_ns - self._meta["exp"] >= self.bucket_ns:
            self._meta["exp"] = watermark_ns
            findings.extend(self._expire(watermark_ns))
        return findings

    def _due(self, inst: _Inst) -> float:
        """The watermark at which ``advance`` can next fold a sample of ``inst`` or close its
        bucket: its own clock (above) reaches the first of them, ``x``, at watermark ``x`` when
        the instance has reported ``lateness`` past it, else at ``x + MAX_CLOCK_LAG_NS``."""
        x = min(inst.pending, default=math.inf)
        if inst.cur is not None:
            x = min(x, (inst.cur[0] + 1) * self.bucket_ns)
        return x if inst.seen_ns - self.lateness_ns >= x else x + MAX_CLOCK_LAG_NS

    def _fold(self, key: str, inst: _Inst, t: int, tick: dict[str, Any],
              findings: list[Finding]) -> None:
        if not inst.last_t:
            # The instance's first sample, in event time (not the first point to arrive: a
            # backlog read unevenly brings a later one first). A process that started recently
            # is still warming up; one found running (the detector started after it) is not.
            st = tick.get("st", 0)
            inst.reset_ns = st if st and t - st < self.startup_ns else t - self.startup_ns
        reason = self._identity_changed(inst, tick["id"]) if "id" in tick else None
        if reason is not None:
            self._reset(key, inst, t, reason, findings)
        b = t // self.bucket_ns
        cur = inst.cur
        if cur is not None and cur[0] != b:
            self._close(key, inst, findings)
            cur = None
        if cur is None:
            cur = inst.cur = [b, None, None, None, None, None, None, None, None]
        role = next((r for r in FLOOR_ROLES if r in inst.pick), None)
        if role is not None and role != inst.floor_role:
            if inst.floor_role:  # a better floor signal appeared: its history starts now
                self._clear_floors(key, inst)
            inst.floor_role = role
        if "limit" in tick and tick["limit"] > 0:
            inst.limit = tick["limit"]
        value = tick.get(inst.floor_role) if inst.floor_role else None
        if value is not None and inst.floor_role == "heap_after_gc" and G1_OLD_GEN in tick:
            value = self._g1_floor(key, inst, tick, value)
        if value is not None:
            if cur[1] is None or value < cur[1]:
                cur[1] = value
            if cur[7] is None or value > cur[7]:
                cur[7] = value
            if self._drop_seen(inst, t, value) and (cur[8] is None or value < cur[8]):
                cur[8] = value
            if inst.floor_role == "heap_after_gc":
                self._old_gen(inst, tick, value)
        restarted = None
        for sid in sorted(tick.get("c", ())):
            why = self._increase(inst, sid, tick["c"][sid], cur, t)
            restarted = restarted or why
        inst.last_t = t
        if restarted:  # counters restart with the process: its history starts afresh
            self._reset(key, inst, t, restarted, findings)

    def _g1_floor(self, key: str, inst: _Inst, tick: Mapping[str, Any], value: float) -> float:
        """G1's floor: its old generation in use, or its post-GC size once the JVM shows full
        collections (a full-collection counter above zero: they set the post-GC size, and G1
        sets it at nothing else). The switch happens once; the floor history starts again."""
        full = "full" in tick
        if inst.g1_full is None or (full and not inst.g1_full):
            # the floor's source changes (a saved history of the post-GC size goes on only
            # if it is still the source): its history starts again
            switch = inst.g1_full is not None or not full
            inst.g1_full = full
            if switch and (inst.floors or inst.prev is not None):
                self._clear_floors(key, inst)
                inst.drops, inst.prev, inst.full_gcs = [], None, 0.0
        after = tick.get(G1_OLD_AFTER)
        if inst.g1_full and after is not None:
            return value - tick[G1_OLD_GEN] + after
        return value

    def _old_gen(self, inst: _Inst, tick: Mapping[str, Any], value: float) -> None:
        """Whether the floor is G1's old generation in use, and whether G1 has shown it live.
        G1 starts marking the old generation once it holds 45% of the heap's current capacity
        (its default InitiatingHeapOccupancyPercent; adaptive only after a few cycles), and its
        mixed collections then take what died there: an old generation that has never dropped
        and holds ``G1_MARKED_FRACTION`` of the committed heap (else of its limit) is live, as
        if two full collections had left it in place. Short of that it may be objects that
        outlived a few young collections and died since (sessions, caches with a time to live):
        the real corpus's ttl-java control climbs like a leak to 36% of its committed heap, then
        drops at G1's mixed collections."""
        inst.old_gen = G1_OLD_GEN if G1_OLD_GEN in tick and not inst.g1_full else ""
        capacity = tick.get("heap_committed") or inst.limit
        if (inst.old_gen and capacity and not inst.drops
                and tick[G1_OLD_GEN] >= G1_MARKED_FRACTION * capacity):
            inst.full_gcs = max(inst.full_gcs, 2.0)

    def _drop_seen(self, inst: _Inst, t: int, value: float) -> bool:
        """Note a collection: the floor signal fell by at least 3% and by four times its typical
        move between samples (an average of recent absolute changes). Only collections make
        heaps shrink; the second bound keeps young-generation churn and RSS noise out (the
        typical move is over samples that changed: a heap goal holds still between
        collections, and its changes are noise around the floor, not a sawtooth)."""
        prev = inst.prev
        if prev is None:
            inst.prev = [value, 0.0, 0.5]
            return False
        if value == prev[0]:
            return False  # unchanged (a heap goal between collections): no information
        inst.prev = [value, 0.9 * prev[1] + 0.1 * abs(value - prev[0]),
                     0.95 * prev[2] + 0.05 * (value > prev[0])]
        if value < prev[0] * 0.97 and prev[0] - value >= 4 * prev[1]:
            inst.drops.append(t)
            inst.full_gcs = 0.0
            del inst.drops[:-9]
            return True
        return False

    def _period(self, inst: _Inst, now_ns: int) -> float:
        """The floor signal's sawtooth period in buckets, or 0 when it has none to speak of.

        A sawtooth shows as collections at regular intervals (drops whose spacing varies by
        less than half its mean) or as a signal that mostly climbs between them. A heap
        sampled at a random phase of fast cycles (Go), or RSS noise, drops at irregular times
        and moves up and down alike: its minute minima are already the floor. A climbing
        signal whose collections have not been seen twice is taken to cycle at least as
        slowly as the time since the last one (or since the start)."""
        d = inst.drops
        climbing = inst.prev is not None and inst.prev[2] >= 0.7
        if len(d) >= 3:
            gaps = np.diff(d)
            if climbing or float(np.std(gaps)) < 0.5 * float(np.mean(gaps)):
                return float(np.median(gaps)) / self.bucket_ns
            return 0.0
        if not climbing or (inst.floor_role != "heap_used" and not inst.old_gen):
            # a post-GC measure (or RSS) that climbs without dropping is the floor rising; an
            # old generation in use climbs between its own collections
            return 0.0
        if inst.full_gcs >= 2:
            # full collections came and left the heap in use where it was: it is live, so
            # its minima are the floor (V8's heap climbing through mark-compacts)
            return 0.0
        since = d[-1] if d else inst.reset_ns
        return (now_ns - since) / self.bucket_ns

    def _reset(self, key: str, inst: _Inst, t: int, reason: str,
               findings: list[Finding]) -> None:
        self._count("restarts")
        svc = inst.service
        if svc not in self._restarts and len(self._restarts) >= MAX_COUNTED_SERVICES:
            svc = "_other"
        self._restarts[svc] = self._restarts.get(svc, 0) + 1
        inst.reset_info = {"at": rfc3339(t), "reason": reason}
        entity = {"service": inst.service, "instance": inst.instance}
        f = self.lc_leak.resolve(entity, t, f"instance restarted: {reason}")
        if f is not None:
            findings.append(f)
        if inst.cur is not None:
            self._close(key, inst, findings, judge=False)
        self._clear_floors(key, inst)
        inst.reset_ns = t
        inst.cache = {}
        inst.drops, inst.prev = [], None
        inst.full_gcs = 0.0
        inst.g1_full = False
        inst.series = {}

    def _clear_floors(self, key: str, inst: _Inst) -> None:
        for blk in {self._block(f[0]) for f in inst.floors}:
            self._floors.pop(f"{blk}/{key}")
        inst.floors = []
        inst.cache = {}

    def _block(self, b: int) -> int:
        return b // 60

    def _block_changed(self, key: str, inst: _Inst, blk: int) -> None:
        """Save the hour block ``blk`` of the instance's floor history (or delete it, gone)."""
        floors = inst.floors
        lo = bisect_left(floors, blk * 60, key=lambda f: f[0])
        hi = bisect_left(floors, (blk + 1) * 60, lo=lo, key=lambda f: f[0])
        name = f"{blk}/{key}"
        if hi > lo:
            self._floors.put(name, floors[lo:hi])
        else:
            self._floors.pop(name)

    # -- judging -------------------------------------------------------------------------------
    def _close(self, key: str, inst: _Inst, findings: list[Finding], judge: bool = True) -> None:
        cur, inst.cur = inst.cur, None
        assert cur is not None
        b, floor, gc_time, gc_count, alloc = cur[0], cur[1], cur[2], cur[3], cur[4]
        end_ns = (b + 1) * self.bucket_ns
        inst.closed_ns = max(inst.closed_ns, end_ns)  # later points of it are late
        bucket_s = self.bucket_ns / NS
        load = alloc / bucket_s if alloc is not None else (
            gc_count / bucket_s if gc_count is not None else None
        )
        if floor is not None:
            inst.floors.append([b, floor, load, cur[7], cur[8]])
            self._block_changed(key, inst, self._block(b))
            if len(inst.floors) > self.history:
                old = inst.floors[: -self.history]
                del inst.floors[: -self.history]
                for blk in {self._block(f[0]) for f in old}:
                    self._block_changed(key, inst, blk)
        if not judge:
            return
        entity = {"service": inst.service, "instance": inst.instance}
        if floor is not None:
            verdict = self._judge_leak(inst, b, end_ns)
            f = self.lc_leak.observe(entity, end_ns, verdict)
            if f is not None:
                findings.append(f)
        if gc_time is not None or gc_count is not None:
            p99 = _hist_quantile(cur[5], cur[6], 0.99) if cur[5] is not None else None
            verdict = self._judge_gc(inst, gc_time, gc_count, p99, bucket_s, end_ns)
            f = self.lc_gc.observe(entity, end_ns, verdict)
            if f is not None:
                findings.append(f)

    def _judge_leak(self, inst: _Inst, b: int, end_ns: int) -> Verdict | None:
        start_b = -(-(inst.reset_ns + self.startup_ns) // self.bucket_ns)
        pts = [f for f in inst.floors if f[0] >= start_b]
        if len(pts) < 6:
            return None
        firing = self.lc_leak.is_firing({"service": inst.service, "instance": inst.instance})
        period = self._period(inst, end_ns)
        g = int(round(period)) if period >= 1.5 else 1
        best: dict[str, Any] | None = None
        span = pts[-1][0] - pts[0][0] + 1
        for w in WINDOWS_MIN:
            # at least six sawtooth cycles, so that a trend persists across collections
            w_buckets = max(int(w * 60 * NS // self.bucket_ns), math.ceil(6 * period))
            if span < 0.75 * w_buckets:  # a window three-quarters full is judged
                inst.cache.pop(str(w), None)
                continue
            # judged every minute up to 40 minutes, longer ones less often; a firing finding
            # needs no fresh verdict every minute (its evidence is published on transitions)
            every = max(2, w // 10) if firing else max(1, w // 40)
            if str(w) not in inst.cache or b % every == 0:
                inst.cache[str(w)] = self._window(inst, pts, w_buckets, g, end_ns)
            cand = inst.cache[str(w)]
            # the window that saw the most of the growth speaks (its slope is the steadiest)
            if cand is not None and cand.get("verdict") == "leak" and (
                best is None or cand["trend_samples"] > best["trend_samples"]
            ):
                best = cand
        if best is None:
            return None
        # Before a finding opens, a longer window that sees the growth slow down or step
        # overrules shorter ones: the tail of a warm-up still rises, slowly, for a long time,
        # and a short window inside a step up sees a rise. Once open, the finding holds until
        # no window sees a leak (or the process restarts).
        entity = {"service": inst.service, "instance": inst.instance}
        if not self.lc_leak.is_firing(entity) and any(
            int(w) * 60 > best["window_s"] and c is not None
            and c.get("verdict") in ("levelling_off", "level_shift")
            for w, c in inst.cache.items()
        ):
            return None
        return self._leak_verdict(inst, best)

    def _window(self, inst: _Inst, pts: list[list[Any]], w_buckets: int, g: int,
                end_ns: int) -> dict[str, Any] | None:
        """Judge one window of floor samples: bucket minima, or with a slow sawtooth (``g`` >
        1) the troughs themselves (the floor right after each collection)."""
        lo_b = pts[-1][0] - w_buckets + 1
        if g > 1:
            rows = [(f[0], f[4], f[2]) for f in pts if f[0] >= lo_b and f[4] is not None]
        else:
            # the lower envelope at a scale of about 20 samples per window: the minimum of
            # more samples sits closer to the floor (a heap caught at a random phase of its
            # collections is noisy one minute at a time)
            size = max(1, w_buckets // 20)
            groups: dict[int, list[Any]] = {}
            for f in pts:
                if f[0] >= lo_b:
                    k = (f[0] - lo_b) // size
                    cur = groups.get(k)
                    if cur is None:
                        cur = groups[k] = [f[0], [], []]
                    cur[0] = f[0]
                    cur[1].append(float(f[1]))
                    if f[2] is not None:
                        cur[2].append(f[2])
            rows = [(r[0] - (size - 1) / 2, float(min(r[1])),
                     sum(r[2]) / len(r[2]) if r[2] else None) for r in groups.values()]
            if len(groups) and size > 1 and (pts[-1][0] - lo_b + 1) % size:
                rows = rows[:-1]  # a group still filling has fewer samples
        if len(rows) < 6:
            return None
        bucket_h = self.bucket_ns / NS / 3600.0
        end_b = pts[-1][0] + 1
        x = np.array([(r[0] + 0.5 - end_b) * bucket_h for r in rows])  # hours before the end
        y = np.array([r[1] for r in rows], dtype=float)
        alpha = self.alpha if w_buckets * bucket_h < 1.2 else self.alpha_long
        # Mann-Kendall's S by numpy first: scipy's exact test only where it could pass (z of
        # 2 is p = 0.023 one-sided, far above alpha), so most windows cost microseconds.
        n = len(y)
        s_stat = float(np.triu(np.sign(y[None, :] - y[:, None]), 1).sum())
        if (s_stat - 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18) < 2.0:
            return None
        tau = stats.kendalltau(x, y, alternative="greater")
        if not tau.pvalue < alpha:
            return None
        onset = _onset(x, y)
        y0 = float(np.median(y[: max(onset, 1)]))
        if onset > len(y) - 6:
            return {"verdict": "too_recent", "end_ns": end_ns}
        xs, ys = x[onset:], y[onset:]
        if onset > 0 and not stats.kendalltau(xs, ys, alternative="greater").pvalue < alpha:
            # it rose once and stayed: a level shift (a cache filled, noise went away), or a
            # growth too recent to call
            return {"verdict": "level_shift", "end_ns": end_ns}
        slope, intercept, lo, hi = (float(v) for v in stats.theilslopes(ys, xs, alpha=0.90))
        limit = self._limit(inst)
        # at least min_growth of the limit per hour; with no limit known, of the floor and, as
        # a small process's floor says little, at least min_growth_bytes_h bytes per hour
        threshold = self.min_growth * (limit if limit else float(np.median(y)))
        if not limit:
            threshold = max(threshold, self.min_growth_bytes_h)
        if not lo > 0 or slope < threshold:
            return None
        doc: dict[str, Any] = {
            "window_s": round(w_buckets * self.bucket_ns / NS),
            "samples": len(rows),
            "trend_samples": len(ys),
            "floor_sample": "troughs" if g > 1 else "minute_minima",
            "tau": round(float(tau.statistic), 4),
            "p": float(tau.pvalue),
            "slope": slope / 3600.0, "lo": lo / 3600.0, "hi": hi / 3600.0,
            "floor_now": float(intercept),
            "floor_start": float(intercept + slope * x[0]) if onset == 0 else float(y0),
            "growing_for_s": round(float(-xs[0]) * 3600 + self.bucket_ns / NS / 2),
            "end_ns": end_ns,
            "verdict": "leak",
            "min_growth_h": threshold,
        }
        # A leak grows steadily; a warming cache grows fast, then slower. Judge the shape only
        # once the growth has lasted ``min_growth_s``: before that the two look alike.
        if doc["growing_for_s"] < self.min_growth_s or len(ys) < 8:
            doc["verdict"] = "too_recent"
            return doc
        half = len(ys) // 2
        if half >= 3:
            s_early = float(stats.theilslopes(ys[:half], xs[:half])[0])
            s_late = float(stats.theilslopes(ys[half:], xs[half:])[0])
            doc["late_to_early_slope"] = round(s_late / s_early, 3) if s_early > 0 else None
            third = max(len(ys) // 3, 4)
            s_recent = float(stats.theilslopes(ys[-third:], xs[-third:])[0])
            doc["recent_to_overall_slope"] = round(s_recent / slope, 3)
            if s_late < 0.6 * max(s_early, slope) or s_recent < 0.5 * slope:
                doc["verdict"] = "levelling_off"
                return doc
            # load before the growth (or at the window's start) against load now
            l1 = [r[2] for r in rows[: max(onset + 1, 3)] if r[2] is not None]
            l2 = [r[2] for r in rows[-third:] if r[2] is not None]
            if l1 and len(l2) >= 3:
                m1, m2 = float(np.median(l1)), float(np.median(l2))
                doc["load_ratio"] = round(m2 / m1, 3) if m1 > 0 else None
                if m1 > 0 and m2 >= 1.5 * m1:
                    # ... and the floor follows the load: a heap grown by traffic rises and
                    # falls with it. A floor that climbs while the load wanders (CPython's
                    # collection count moves with the SDK's own exports) is not load-driven.
                    pairs = [(r[2], r[1]) for r in rows[onset:] if r[2] is not None]
                    follows = None
                    if len(pairs) >= 6:
                        loads, floors = zip(*pairs, strict=True)
                        follows = float(stats.kendalltau(loads, floors).statistic)
                        doc["load_floor_tau"] = round(follows, 3)
                    if follows is None or follows >= 0.5:
                        doc["verdict"] = "load_driven"
        return doc

    def _growth_rule(self, limit: float | None, threshold: float | None) -> dict[str, Any]:
        """Which minimum growth the slope had to pass (evidence): with a limit known, a share
        of it per hour; with none, a share of the floor and an absolute rate."""
        out: dict[str, Any] = {"pct_per_hour": round(self.min_growth * 100, 4)}
        if limit:
            out["rule"] = "limit: pct_of_limit"
        else:
            out["rule"] = "no_limit: pct_of_floor_and_bytes_per_hour"
            out["min_bytes_per_hour"] = round(self.min_growth_bytes_h)
        if threshold is not None:
            out["threshold_bytes_per_hour"] = round(threshold)
        return out

    def _limit(self, inst: _Inst) -> float | None:
        if inst.limit:
            return inst.limit
        return self.limits.get(inst.service) or self.limits.get("*")

    def _leak_verdict(self, inst: _Inst, c: Mapping[str, Any]) -> Verdict:
        limit = self._limit(inst)
        slope, lo, hi = c["slope"], c["lo"], c["hi"]
        floor_now = c["floor_now"]
        tto = tto_lo = tto_hi = None
        if limit:
            headroom = max(self.oom_fraction * limit - floor_now, 0.0)
            tto = headroom / slope
            tto_lo = headroom / hi if hi > 0 else None
            tto_hi = headroom / lo if lo > 0 else None
        base = limit or floor_now
        pct_h = slope * 3600 / base * 100 if base else None
        metric = next(
            (inst.pick[r][1] for r in FLOOR_ROLES if r == inst.floor_role and r in inst.pick), ""
        )
        signal: dict[str, Any] = {"metric": metric, "role": inst.floor_role}
        if inst.old_gen:
            # G1's old generation in use stands for its post-GC size (runtime_metrics.G1_OLD)
            signal["old_generation"] = "jvm.memory.used"
        evidence = {
            "runtime": inst.runtime or "unknown",
            "signal": signal,
            "slope_bytes_per_s": round(slope, 3),
            "slope_interval_bytes_per_s": [round(lo, 3), round(hi, 3)],
            "slope_pct_limit_per_hour" if limit else "slope_pct_floor_per_hour":
                round(pct_h, 4) if pct_h is not None else None,
            "floor_now_bytes": round(floor_now),
            "floor_start_bytes": round(c["floor_start"]),
            "limit_bytes": round(limit) if limit else None,
            "limit_source": "metric" if inst.limit else ("configuration" if limit else None),
            "oom_at_fraction_of_limit": self.oom_fraction if limit else None,
            "min_growth": self._growth_rule(limit, c.get("min_growth_h")),
            "time_to_oom_s": round(tto) if tto is not None else None,
            "time_to_oom_interval_s": [
                round(tto_lo) if tto_lo is not None else None,
                round(tto_hi) if tto_hi is not None else None,
            ],
            "mann_kendall_tau": c["tau"],
            "mann_kendall_p": float(f"{c['p']:.3g}"),
            "samples": c["samples"],
            "window_s": c["window_s"],
            "floor_samples": c["floor_sample"],
            "trend_samples": c["trend_samples"],
            "growing_for_s": c["growing_for_s"],
            "window_end": rfc3339(c["end_ns"]),
            "resource": inst.attrs,
        }
        if inst.reset_info is not None:
            evidence["last_restart"] = inst.reset_info
        severity = "critical" if tto is not None and tto <= 4 * 3600 else "warning"
        where = f"{inst.service} {inst.instance}"
        if tto is not None:
            summary = (
                f"{where}: post-GC memory floor rising {_mib(slope * 3600)} MiB/h "
                f"({pct_h:.2f}% of the {_mib(limit)} MiB limit per hour), "
                f"{_mib(c['floor_start'])} → {_mib(floor_now)} MiB over "
                f"{_dur(c['window_s'])}; out of memory in ~{_dur(tto)} "
                f"({_dur(tto_lo)}–{_dur(tto_hi)})"
            )
        else:
            summary = (
                f"{where}: memory floor rising {_mib(slope * 3600)} MiB/h, "
                f"{_mib(c['floor_start'])} → {_mib(floor_now)} MiB over {_dur(c['window_s'])} "
                "(no memory limit known: set MEMORY_LIMITS for a time to OOM)"
            )
        # started_at is when the growth began, not when the trend became significant
        onset_ns = c["end_ns"] - c["growing_for_s"] * NS
        return Verdict(severity, summary, evidence, _leak_steps(inst), started_at_ns=onset_ns)

    def _judge_gc(self, inst: _Inst, gc_time: float | None, gc_count: float | None,
                  p99: float | None, bucket_s: float, end_ns: int) -> Verdict | None:
        gb = inst.gcb
        frac = gc_time / bucket_s if gc_time is not None else None
        freq = gc_count / bucket_s if gc_count is not None else None
        verdict = None
        if len(gb["f"]) + len(gb["q"]) >= self.gc_warmup and (frac is not None or freq):
            bad = False
            evidence: dict[str, Any] = {"window_s": bucket_s, "window_end": rfc3339(end_ns),
                                        "runtime": inst.runtime or "unknown"}
            if frac is not None and len(gb["f"]) >= self.gc_warmup:
                med, mad = _med_mad(gb["f"])
                thr = max(self.gc_min_fraction, 2 * med, med + 6 * 1.4826 * mad)
                bad = frac >= thr
                evidence.update({"gc_time_fraction": round(frac, 4),
                                 "baseline_gc_time_fraction": round(med, 4),
                                 "threshold": round(thr, 4)})
            elif self.gc_from_counts and freq is not None and len(gb["q"]) >= self.gc_warmup:
                med, mad = _med_mad(gb["q"])
                bad = freq >= max(4 * med, med + 6 * 1.4826 * mad) and freq > 0
                evidence.update({"gc_time_fraction": None,
                                 "note": "this runtime reports collection counts only"})
            if bad:
                if freq is not None:
                    evidence["collections_per_s"] = round(freq, 3)
                    if gb["q"]:
                        evidence["baseline_collections_per_s"] = round(_med_mad(gb["q"])[0], 3)
                if p99 is not None:
                    evidence["pause_p99_s"] = round(p99, 4)
                    if gb["p"]:
                        evidence["baseline_pause_p99_s"] = round(_med_mad(gb["p"])[0], 4)
                evidence["resource"] = inst.attrs
                verdict = self._gc_verdict(inst, evidence)
        if verdict is None or gb["run"] >= 120:
            gb["run"] = 0
            for k, v in (("f", frac), ("q", freq), ("p", p99)):
                if v is not None:
                    gb[k].append(v)
                    del gb[k][:-60]
        else:
            gb["run"] += 1
        return verdict

    def _gc_verdict(self, inst: _Inst, ev: dict[str, Any]) -> Verdict:
        where = f"{inst.service} {inst.instance}"
        if ev.get("gc_time_fraction") is not None:
            summary = (
                f"{where}: {ev['gc_time_fraction']:.1%} of time in garbage collection "
                f"(baseline {ev['baseline_gc_time_fraction']:.1%})"
            )
        else:
            summary = (
                f"{where}: {ev.get('collections_per_s', 0):g} collections/s "
                f"(baseline {ev.get('baseline_collections_per_s', 0):g})"
            )
        severity = "critical" if (ev.get("gc_time_fraction") or 0) >= 0.25 else "warning"
        steps = [
            f"Check {inst.service}'s memory_leak findings and heap usage against its limit: a "
            "heap near its limit collects constantly (raise the limit or fix the leak).",
            "Compare allocation rate and traffic: a new code path or batch job that allocates "
            "heavily shows as more collections at the same traffic.",
        ] + _gc_steps(inst.runtime)
        return Verdict(severity, summary, ev, steps)

    # -- bounds ----------------------------------------------------------------------------
    def _make_room(self) -> bool:
        if not self._inst.at_cap:  # the firing set only when something must go
            return True
        firing = {(st["entity"]["service"], st["entity"]["instance"])
                  for st in self.lc_leak.active() + self.lc_gc.active()}
        return self._inst.make_room(
            protect=lambda _key, x: (x.service, x.instance) in firing, evict=self._evicted)

    def _evicted(self, key: str, inst: _Inst) -> None:
        self._clear_floors(key, inst)
        self._waiting.discard(key)
        self._count("evicted_instances")

    def _drop(self, key: str) -> None:
        inst = self._inst.pop(key)
        if inst is not None:
            self._clear_floors(key, inst)
        self._waiting.discard(key)

    def _expire(self, now_ns: int) -> list[Finding]:
        for key in [k for k, x in self._inst.items() if now_ns - x.seen_ns >= self.ttl_ns]:
            self._drop(key)
            self._count("expired_instances")
        idle = 10 * 60 * NS  # an instance silent for 10 minutes resolves its findings
        return self.lc_leak.expire(now_ns, idle) + self.lc_gc.expire(now_ns, idle)

    def _count(self, reason: str) -> None:
        counts = self._meta["counts"]
        counts[reason] = counts.get(reason, 0) + 1  # (state saved before a reason existed)
        self._meta.changed()

    # -- state -----------------------------------------------------------------------------
    def restored(self) -> None:
        for inst in self._inst.values():
            inst.floors = []
        for name, rows in self._floors.items():
            _, _, key = name.partition("/")
            inst = self._inst.get(key)
            if inst is not None:
                inst.floors.extend(rows)
        for inst in self._inst.values():
            inst.floors.sort(key=lambda f: f[0])
        self._waiting = DueKeys()
        for k, x in self._inst.items():
            if x.pending or x.cur is not None:
                self._waiting.touch(k)

    def stats(self) -> DetectorStats:
        active: dict[tuple[str, str], int] = {}
        gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for kind, lc in ((LEAK, self.lc_leak), (GC, self.lc_gc)):
            for st in lc.active():
                k = (kind, st["severity"])
                active[k] = active.get(k, 0) + 1
                e, ev = st["entity"], st["last"][2]
                labels = (("service_name", e["service"]), ("service_instance", e["instance"]))
                if kind == LEAK:
                    gauges[(SLOPE_GAUGE, labels)] = ev.get("slope_bytes_per_s") or 0.0
                    if ev.get("time_to_oom_s") is not None:
                        gauges[(TTO_GAUGE, labels)] = float(ev["time_to_oom_s"])
                elif ev.get("gc_time_fraction") is not None:
                    gauges[(GC_GAUGE, labels)] = float(ev["gc_time_fraction"])
        evicted = dict(self._meta["counts"])
        evicted.pop("restarts", None)
        evicted["findings_evicted"] = self.lc_leak.evicted + self.lc_gc.evicted
        counters = {(RESTARTS_COUNTER, (("service_name", svc),)): float(n)
                    for svc, n in self._restarts.items()}
        return DetectorStats(tracked=len(self._inst), evicted=evicted, active=active,
                             gauges=gauges, firing=self.lc_leak.firing() + self.lc_gc.firing(),
                             counters=counters)


# -- helpers ------------------------------------------------------------------------------------
def _runtime(attrs: Mapping[str, Any], metric: str) -> str:
    lang = str(attrs.get("telemetry.sdk.language") or "").lower()
    if lang in ("java", "go", "python", "nodejs", "dotnet"):
        return lang
    for prefix, runtime in RUNTIME_PREFIXES:
        if metric.startswith(prefix):
            return runtime
    return ""


def _onset(x: np.ndarray, y: np.ndarray) -> int:
    """Where the growth began: the knee of the best flat-then-linear (hinge) fit by least
    squares, or 0 when growing throughout fits best."""
    n = len(y)
    if n < 5:
        return 0
    knees = x[: n - 3]
    h = np.maximum(x[None, :] - knees[:, None], 0.0)  # one hinge regressor per candidate knee
    sh, shh, shy = h.sum(axis=1), (h * h).sum(axis=1), h @ y
    sy, syy = float(y.sum()), float(y @ y)
    det = n * shh - sh * sh
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (n * shy - sh * sy) / det
        a = (sy - b * sh) / n
        sse = syy - a * sy - b * shy  # least-squares residual of y = a + b * hinge
    sse = np.where(det > 0, sse, np.inf)
    return int(np.argmin(sse))


def _med_mad(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    med = float(np.median(a))
    return med, float(np.median(np.abs(a - med)))


def _hist_quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """Quantile of explicit-bucket counts (upper-inclusive bounds, +Inf last), interpolated
    inside the bucket like Prometheus' ``histogram_quantile``."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0.0
    for i, c in enumerate(counts):
        if acc + c >= rank and c > 0:
            lower = bounds[i - 1] if i > 0 else 0.0
            if i >= len(bounds):
                return float(bounds[-1]) if bounds else None
            return float(lower + (bounds[i] - lower) * (rank - acc) / c)
        acc += c
    return float(bounds[-1]) if bounds else None


def _mib(b: float | None) -> str:
    return "?" if b is None else f"{b / MIB:,.0f}" if abs(b) >= 10 * MIB else f"{b / MIB:.1f}"


def _dur(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = float(s)
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} d"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


_SNAPSHOT_ADVICE = (
    "Take two snapshots a few minutes apart and compare them offline: what grew between them "
    "is the leak."
)


def _leak_steps(inst: _Inst) -> list[str]:
    one = (
        f"Work on one replica of {inst.service} that is not a primary or leader, ideally taken "
        "out of load-balancer rotation, and put a timeout on every command."
    )
    rt = inst.runtime
    if rt == "java":
        steps = [
            "timeout 30 jcmd <pid> GC.heap_info; then timeout 120 jcmd <pid> "
            "GC.class_histogram > histo-1.txt, and again a few minutes later (histo-2.txt). "
            "The class histogram runs a full GC and pauses the JVM.",
            "Diff the histograms: classes whose instance counts keep growing hold the leak. "
            "A heap dump (jcmd <pid> GC.heap_dump) needs disk the size of the heap and a long "
            "pause: take it only from a replica out of rotation.",
        ]
    elif rt == "go":
        steps = [
            "curl --max-time 30 -o heap-1.pb.gz http://<instance>:<port>/debug/pprof/heap "
            "(net/http/pprof), and again a few minutes later (heap-2.pb.gz).",
            "go tool pprof -sample_index=inuse_space -base heap-1.pb.gz heap-2.pb.gz: the "
            "call sites whose in-use bytes grew are the leak; check goroutine counts too "
            "(/debug/pprof/goroutine?debug=1).",
        ]
    elif rt == "python":
        steps = [
            "timeout 30 py-spy dump --pid <pid> shows what the process is doing now; for "
            "allocations, memray attach --duration 60 <pid> (or tracemalloc snapshots in the "
            "app) on the same replica.",
            "Compare two memray or tracemalloc snapshots taken minutes apart: the allocation "
            "sites that kept growing are the leak (module-level caches and lists are usual).",
        ]
    elif rt == "nodejs":
        steps = [
            "Write a heap snapshot (node --heapsnapshot-signal=SIGUSR2, or v8.writeHeapSnapshot "
            "through the inspector): it pauses the process and needs about the heap's size in "
            "extra memory, so only on a replica out of rotation.",
            "Take a second snapshot a few minutes later and use the Comparison view in Chrome "
            "DevTools: constructors whose counts grew hold the leak.",
        ]
    elif rt == "dotnet":
        steps = [
            "timeout 120 dotnet-gcdump collect -p <pid> -o 1.gcdump, and again a few minutes "
            "later (2.gcdump); dotnet-counters monitor -p <pid> System.Runtime shows the heap "
            "by generation meanwhile.",
            "Compare the two gcdumps (Visual Studio or PerfView): types that grew hold the leak.",
        ]
    else:
        steps = [
            "Use the runtime's own heap profiler on that replica (with a time limit), and "
            "check the memory of the container against its limit.",
        ]
    return [one, *steps, _SNAPSHOT_ADVICE,
            "Until it is fixed, a rolling restart before the time to OOM buys time; do not "
            "raise the limit blindly."]


def _gc_steps(runtime: str) -> list[str]:
    if runtime == "java":
        return ["On one replica: timeout 30 jcmd <pid> GC.heap_info, and the GC log "
                "(-Xlog:gc) for pause causes; check young-generation sizing."]
    if runtime == "go":
        return ["Check GOGC and GOMEMLIMIT: a soft limit close to the live heap makes the "
                "collector run continuously; profile allocations with pprof (allocs)."]
    if runtime == "nodejs":
        return ["Run one replica with --trace-gc for a few minutes; check --max-old-space-size "
                "against the live heap."]
    if runtime == "python":
        return ["Check gc.get_stats() and gc thresholds on one replica; large numbers of "
                "short-lived container objects drive generation-0 collections."]
    return []

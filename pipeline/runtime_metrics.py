"""Which metric points say what about a process's memory and garbage collector. Pure.

The memory detectors read a handful of *roles* per instance, whatever runtime or receiver the
points came from:

``heap_after_gc``
    heap in use right after the last collection (the post-GC floor, where a runtime reports it);
``heap_used``
    heap in use now (a sawtooth between collections);
``rss``
    resident memory of the process or container (when no heap metric is sent);
``limit``
    the most the heap (or process) may use;
``gc``
    a histogram or summary of collection pauses (seconds): its sum is GC time, its count
    collections;
``gc_time`` / ``gc_count``
    monotonic counters of seconds in GC / collections (when there is no histogram);
``alloc``
    a monotonic counter of bytes allocated (a load signal).

``BUILTIN_RULES`` maps the OpenTelemetry runtime semantic conventions (JVM, Go, CPython, Node.js,
.NET, ``process.*``, container and Kubernetes) and the Prometheus names that arrive through the
Collector's prometheus receiver to roles. Values of one metric are summed over its data points
(pools, spaces, generations) at one timestamp; when several metrics give one role for one
instance, the one listed first here wins and the others are ignored (never summed together).
Users add or override rules with ``MEMORY_METRICS`` (``load_rules``)::

    {"myapp_heap_bytes": {"role": "heap_used"},
     "jvm_memory_pool_bytes_used": {"role": "heap_used", "where": {"area": "heap"}}}

``where`` keeps only points whose attributes equal one of the given values (case-insensitive);
``scale`` multiplies the value (Go's heap goal is mapped to the post-GC heap with 1/2, for the
default GOGC=100: a service running with GOGC=200 maps it with ``"scale": 0.333``).
Units: ``By``/``KiBy``/``MiBy``/``GiBy`` and ``s``/``ms``/``us``/``ns`` are converted to bytes and
seconds; a point without a unit (Prometheus) is taken as bytes or seconds, as its name says;
``1`` and any UCUM annotation in curly braces (``{collection}``, ``{object}``, ``{thread}``...)
are dimensionless counts, taken as they are. Points in any other unit are ignored.

**Levels are not counters.** Only a point that is a counter may feed a counter role
(``gc``, ``gc_time``, ``gc_count``, ``alloc``: ``COUNTER_ROLES``): a Sum marked monotonic, a
histogram or summary (its count and sum), or a Prometheus ``*_total``. A non-monotonic Sum or a
Gauge mapped to a counter role is ignored (``is_counter``; the memory detector counts it as
``level_not_counter``). Some instrumentations export a level as a monotonic Sum all the same
(CPython's ``process.runtime.cpython.gc_count``): such names map to no role at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.settings import ConfigError

ROLES = ("heap_after_gc", "heap_used", "rss", "limit", "gc", "gc_time", "gc_count", "alloc")
#: Roles read as a level at a point in time (summed over a metric's points at one timestamp).
LEVEL_ROLES = ("heap_after_gc", "heap_used", "rss", "limit", "g1_old_after_gc", "heap_committed")
#: Roles read as counters: their increases between samples (a restart resets them).
COUNTER_ROLES = ("gc", "gc_time", "gc_count", "alloc")
#: Floor signals in order of preference: post-GC heap, then the heap's lower envelope, then RSS.
FLOOR_ROLES = ("heap_after_gc", "heap_used", "rss")

UNIT_SCALE = {
    "By": 1.0, "KiBy": 1024.0, "MiBy": 1024.0**2, "GiBy": 1024.0**3, "kBy": 1e3, "MBy": 1e6,
    "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "": 1.0, "1": 1.0,
}


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    where: tuple[tuple[str, frozenset[str]], ...] = ()
    rank: int = 0  # lower wins when several metrics of one instance give the same role
    scale: float = 1.0  # multiplies the value (after unit conversion)
    # the series the role is read from, when points of two metrics make one signal (summed at
    # a timestamp); empty: the metric's own name
    series: str = ""
    # a second, named sum of the same points, for a detector to read apart (``G1_OLD_GEN``)
    part: str = ""

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        for key, allowed in self.where:
            value = attrs.get(key)
            if value is None or str(value).lower() not in allowed:
                return False
        return True


def _rule(role: str, rank: int, scale: float = 1.0, series: str = "", part: str = "",
          **where: str | frozenset[str]) -> Rule:
    """A built-in rule; ``where`` keys spell dots as ``__`` (``jvm__memory__type``), values
    are one value or a set of them (lower case)."""
    w = tuple(sorted(
        (k.replace("__", "."), v if isinstance(v, frozenset) else frozenset({v.lower()}))
        for k, v in where.items()
    ))
    return Rule(role, w, rank, scale, series, part)


#: A rule with this role drops the points it matches (a metric read only in part).
IGNORE = ""


#: Go's heap goal is the live heap after the last collection times 1 + GOGC/100 (GOGC is 100
#: unless the service sets it; a different GOGC moves the floor's level, not its trend).
GO_GOGC = 100.0


_HEAP = {"jvm__memory__type": "heap"}
#: G1's old generation. Its post-GC size (``jvm.memory.used_after_last_gc``) is set only at a
#: full collection, not at the mixed collections that normally clean it (OpenJDK 17): on the
#: real corpus it stayed at its start-up 17 MB while a leak filled the old generation to 252 of
#: 256 MB. What it holds changes only at collections (young ones promote into it, mixed ones
#: reclaim it; humongous objects aside), so its size in use is itself a post-collection size: a
#: G1 JVM's floor is its old generation in use (``Rule.part`` ``G1_OLD_GEN``), until it reports
#: full collections: from then on their post-GC size (role ``G1_OLD_AFTER``) is the floor. The
#: other collectors' old generations (Parallel, Serial, CMS) set their post-GC size at every
#: collection of the old generation, and are read as they are.
G1_OLD = "g1 old gen"
#: Young pools: their post-GC sizes are left out of the floor (survivors are few and noisy, and
#: what leaks is promoted).
JVM_YOUNG_POOLS = frozenset({
    "g1 eden space", "g1 survivor space", "ps eden space", "ps survivor space", "eden space",
    "survivor space", "par eden space", "par survivor space",
})
G1_OLD_GEN = "g1_old_gen"
#: An internal level role: G1's old generation post-GC size, read once full collections show.
G1_OLD_AFTER = "g1_old_after_gc"
_PROM_HEAP = {"area": "heap"}

#: metric name -> rules (a point takes the first rule whose ``where`` matches).
BUILTIN_RULES: dict[str, tuple[Rule, ...]] = {
    # JVM (runtime-telemetry semantic conventions; Micrometer/jmx_exporter via Prometheus)
    "jvm.memory.used_after_last_gc": (
        _rule(G1_OLD_AFTER, 0, **_HEAP, jvm__memory__pool__name=G1_OLD),
        _rule(IGNORE, 0, **_HEAP, jvm__memory__pool__name=JVM_YOUNG_POOLS),
        _rule("heap_after_gc", 0, **_HEAP),
    ),
    "jvm.memory.used": (
        _rule("heap_after_gc", 0, series="jvm.memory.used_after_last_gc", part=G1_OLD_GEN,
              **_HEAP, jvm__memory__pool__name=G1_OLD),
        _rule("heap_used", 0, **_HEAP),
    ),
    "jvm.memory.limit": (_rule("limit", 0, **_HEAP),),
    # the heap's current capacity: G1 marks the old generation at 45% of it
    "jvm.memory.committed": (_rule("heap_committed", 0, **_HEAP),),
    "jvm.gc.duration": (_rule("gc", 0),),
    "jvm_memory_used_bytes": (_rule("heap_used", 1, **_PROM_HEAP),),
    "jvm_memory_bytes_used": (_rule("heap_used", 2, **_PROM_HEAP),),
    "jvm_memory_max_bytes": (_rule("limit", 1, **_PROM_HEAP),),
    "jvm_memory_bytes_max": (_rule("limit", 2, **_PROM_HEAP),),
    "jvm_gc_collection_seconds": (_rule("gc", 1),),
    "jvm_gc_pause_seconds": (_rule("gc", 2),),
    # Go: the heap goal set at each collection gives the post-GC live heap exactly; sampling
    # go.memory.used catches random phases of cycles far shorter than the export interval.
    "go.memory.gc.goal": (_rule("heap_after_gc", 2, scale=1 / (1 + GO_GOGC / 100)),),
    "go_memstats_next_gc_bytes": (_rule("heap_after_gc", 3, scale=1 / (1 + GO_GOGC / 100)),),
    "go.memory.used": (_rule("heap_used", 3),),
    "go.memory.limit": (_rule("limit", 3),),
    "go.memory.allocated": (_rule("alloc", 0),),
    "go_memstats_heap_inuse_bytes": (_rule("heap_used", 4),),
    "go_memstats_heap_alloc_bytes": (_rule("heap_used", 5),),
    "go_gc_duration_seconds": (_rule("gc", 3),),
    "go_memstats_alloc_bytes_total": (_rule("alloc", 1),),
    "go_memstats_alloc_bytes": (),  # a level, not the counter: ignored on purpose
    # CPython
    "process.runtime.cpython.memory": (_rule("rss", 0, type="rss"),),
    "cpython.gc.collections": (_rule("gc_count", 0),),  # {collection}, monotonic cumulative
    # gc.get_count(): allocations since each generation's last collection, a LEVEL that goes
    # up and down at every collection, though the system-metrics instrumentation exports it as
    # a monotonic cumulative Sum (in "By"). Read as a counter, each fall would look like a
    # process restart: ignored on purpose (cpython.gc.collections is the counter).
    "process.runtime.cpython.gc_count": (),
    "python_gc_collections_total": (_rule("gc_count", 2),),
    "python_gc_collections": (_rule("gc_count", 2),),
    # Node.js
    "v8js.memory.heap.used": (_rule("heap_used", 6),),
    "v8js.memory.heap.limit": (_rule("limit", 4, v8js__heap__space__name="old_space"),),
    "v8js.gc.duration": (_rule("gc", 4),),
    "nodejs_heap_size_used_bytes": (_rule("heap_used", 7),),
    "nodejs_gc_duration_seconds": (_rule("gc", 5),),
    # .NET
    "dotnet.gc.last_collection.heap.size": (_rule("heap_after_gc", 1),),
    "dotnet.gc.pause.time": (_rule("gc_time", 0),),
    "dotnet.gc.collections": (_rule("gc_count", 3),),
    "dotnet.process.memory.working_set": (_rule("rss", 1),),
    "dotnet.gc.heap.total_allocated": (_rule("alloc", 2),),
    # Process and container (any runtime). A container's working set (usage minus inactive
    # page cache: what the OOM killer and kubelet eviction go by) comes first, then its RSS,
    # then its usage, last: usage includes the page cache, so a database's cache filling up
    # (which the kernel reclaims) is not a leak when anything better is sent.
    "process.memory.usage": (_rule("rss", 2),),
    "process_resident_memory_bytes": (_rule("rss", 3),),
    "container.memory.working_set": (_rule("rss", 4),),  # kubeletstats receiver
    "container_memory_working_set_bytes": (_rule("rss", 5),),  # cAdvisor
    "container.memory.rss": (_rule("rss", 6),),  # kubeletstats, docker_stats
    "container_memory_rss": (_rule("rss", 7),),  # cAdvisor
    # docker_stats: usage minus the page cache (total_cache on cgroup v1, inactive_file on v2)
    "container.memory.usage.total": (_rule("rss", 8),),
    "container.memory.usage": (_rule("rss", 9),),  # kubeletstats: includes the page cache
    "container_memory_usage_bytes": (_rule("rss", 10),),  # cAdvisor: includes the page cache
    "k8s.container.memory_limit": (_rule("limit", 5),),  # k8s_cluster receiver
    "container.memory.usage.limit": (_rule("limit", 6),),  # docker_stats
    "container_spec_memory_limit_bytes": (_rule("limit", 7),),  # cAdvisor (0: none set)
}


#: Collection counters' attributes that say a collection was a full one (the whole heap, not
#: only the young generation): metric name -> (attribute, values). A full collection that
#: leaves the heap in use where it was shows that what is in use is live.
FULL_COLLECTIONS: dict[str, tuple[str, frozenset[str]]] = {
    # a JVM's full (G1 Old Generation, PS MarkSweep...) collections; G1's mixed collections
    # are reported as minor ones
    "jvm.gc.duration": ("jvm.gc.action", frozenset({"end of major gc"})),
    "v8js.gc.duration": ("v8js.gc.type", frozenset({"major"})),  # mark-compact
    "nodejs_gc_duration_seconds": ("kind", frozenset({"major"})),  # prom-client
    "dotnet.gc.collections": ("dotnet.gc.heap.generation", frozenset({"gen2"})),
}


def is_full_collection(name: str, attrs: Mapping[str, Any]) -> bool:
    """Whether a collection counter's series counts full collections (``FULL_COLLECTIONS``)."""
    found = FULL_COLLECTIONS.get(name)
    if found is None and name.endswith("_total"):
        found = FULL_COLLECTIONS.get(name[: -len("_total")])
    return found is not None and str(attrs.get(found[0], "")).lower() in found[1]


def rules_for(name: str, rules: Mapping[str, tuple[Rule, ...]]) -> tuple[Rule, ...] | None:
    """Rules for a metric name; Prometheus counters match with or without ``_total``."""
    found = rules.get(name)
    if found is None and name.endswith("_total"):
        found = rules.get(name[: -len("_total")])
    return found


def load_rules(spec: str) -> dict[str, tuple[Rule, ...]]:
    """Built-in rules plus ``spec``: inline JSON or a path to a JSON file (``MEMORY_METRICS``).

    Each entry is ``name: {"role": ..., "where": {attr: value or [values]}}`` or a list of such;
    user rules rank after every built-in of their role unless they replace that name.
    """
    rules = dict(BUILTIN_RULES)
    spec = spec.strip()
    if not spec:
        return rules
    try:
        if spec.startswith("{"):
            doc = orjson.loads(spec)
        else:
            with open(os.path.expanduser(spec), "rb") as fh:
                doc = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"MEMORY_METRICS={spec[:80]!r} is neither readable JSON nor a readable JSON file "
            f"({exc}); e.g. '{{\"myapp_heap_bytes\": {{\"role\": \"heap_used\"}}}}'"
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError("MEMORY_METRICS must be a JSON object: {metric name: rule}")
    for name, entries in doc.items():
        entries = entries if isinstance(entries, list) else [entries]
        parsed = []
        for entry in entries:
            role = entry.get("role") if isinstance(entry, dict) else None
            if role not in ROLES:
                raise ConfigError(
                    f"MEMORY_METRICS rule for {name!r} needs \"role\" set to one of "
                    f"{', '.join(ROLES)}, got {role!r}"
                )
            where = entry.get("where") or {}
            if not isinstance(where, dict):
                raise ConfigError(
                    f"MEMORY_METRICS rule for {name!r}: \"where\" must map attribute names to "
                    "a value or a list of values"
                )
            w = tuple(
                sorted(
                    (str(k), frozenset(str(x).lower() for x in (v if isinstance(v, list) else [v])))
                    for k, v in where.items()
                )
            )
            scale = entry.get("scale", 1.0)
            if not isinstance(scale, (int, float)) or not scale > 0:
                raise ConfigError(
                    f"MEMORY_METRICS rule for {name!r}: \"scale\" must be a number > 0 "
                    "(e.g. 0.5 for Go's heap goal with GOGC=100)"
                )
            parsed.append(Rule(str(role), w, 100, float(scale)))
        rules[str(name)] = tuple(parsed)
    return rules


def unit_scale(unit: str) -> float | None:
    """Factor to bytes or seconds (1 for counts); ``None`` for a unit this module does not
    know (ignored). A UCUM annotation in curly braces is a dimensionless count.

    >>> unit_scale("MiBy"), unit_scale("ms"), unit_scale("{collection}"), unit_scale("1")
    (1048576.0, 0.001, 1.0, 1.0)
    >>> unit_scale("{GC}"), unit_scale("%") is None
    (1.0, True)
    """
    scale = UNIT_SCALE.get(unit)
    if scale is None and len(unit) > 2 and unit[0] == "{" and unit[-1] == "}":
        return 1.0
    return scale


def is_counter(name: str, kind: str, monotonic: bool) -> bool:
    """Whether a point may feed a counter role: a Sum marked monotonic, a histogram or summary,
    or a Prometheus ``*_total`` (untyped Prometheus metrics arrive as Gauges).

    >>> is_counter("cpython.gc.collections", "sum", True)
    True
    >>> is_counter("dotnet.gc.collections", "sum", False), is_counter("x", "gauge", False)
    (False, False)
    >>> is_counter("jvm.gc.duration", "histogram", False)
    True
    >>> is_counter("python_gc_collections_total", "gauge", False)
    True
    """
    if kind == "sum":
        return monotonic or name.endswith("_total")
    if kind in ("histogram", "exponential_histogram", "summary"):
        return True
    return name.endswith("_total")


def parse_limits(spec: str) -> dict[str, float]:
    """``MEMORY_LIMITS``: ``service=bytes`` pairs, comma-separated; ``*`` is the default.
    Sizes take the suffixes Ki, Mi, Gi (and KiB...).

    >>> parse_limits("cart=512Mi, *=1Gi")
    {'cart': 536870912.0, '*': 1073741824.0}
    """
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        service, sep, size = part.partition("=")
        if not sep or not service.strip():
            raise ConfigError(
                f"MEMORY_LIMITS entry {part!r} must look like service=size (e.g. cart=512Mi, "
                "*=1Gi for every other service)"
            )
        out[service.strip()] = parse_size(size.strip(), f"MEMORY_LIMITS entry {part!r}")
    return out


def parse_min_growth(text: str) -> float:
    """``MEMORY_MIN_GROWTH_BYTES_PER_HOUR``: bytes per hour, with the suffixes Ki, Mi, Gi (and
    KiB...); 0 turns the absolute minimum off.

    >>> parse_min_growth("32Mi"), parse_min_growth("1048576"), parse_min_growth("0")
    (33554432.0, 1048576.0, 0.0)
    """
    t = text.strip()
    try:
        if float(t) == 0:
            return 0.0
    except ValueError:
        pass
    return parse_size(t, "MEMORY_MIN_GROWTH_BYTES_PER_HOUR (bytes per hour, e.g. 32Mi; 0: off)")


def parse_size(text: str, what: str) -> float:
    mult = {"ki": 1024.0, "mi": 1024.0**2, "gi": 1024.0**3, "ti": 1024.0**4}
    t = text.lower().removesuffix("b")
    factor = 1.0
    if t[-2:] in mult:
        factor, t = mult[t[-2:]], t[:-2]
    try:
        value = float(t) * factor
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{what}: {text!r} is not a size in bytes (e.g. 536870912, 512Mi, 2Gi)")
    return value

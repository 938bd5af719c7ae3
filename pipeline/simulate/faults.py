"""Labelled faults and hard negatives: what the simulator injects and the labels say happened.

A ``Fault`` is one injected condition over an event-time window. The fault kinds are the
problems detectors must find; the negative kinds are look-alikes they must stay quiet on, and are
labelled too (``negative=True``) so a scorer can count a finding on one as a false alarm.

Fault kinds: ``bottleneck_span`` (one downstream operation slower), ``memory_leak`` (an
instance's live set grows at ``rate_pct_limit_per_hour`` of its limit until the process is
OOM-killed; the container restart keeps ``service.instance.id`` and the leak goes on),
``gc_pressure`` (one Java or Node.js instance spends ``gc_time_fraction`` of its time in GC, 15%
by default: an allocation storm of ``alloc_factor`` x makes young collections more frequent and
its survivors make each pause longer; then it recovers), ``time_wait_buildup`` and
``error_origin`` (one operation, a server endpoint or a downstream call of ``service``, fails
with probability ``error_rate``; the failure propagates up the synchronous callers to the root).

Error look-alikes: ``client_4xx`` (``service``'s HTTP call ``operation`` gets a 4xx at ``rate``:
the client span is ERROR, the callee's server span UNSET, the caller handles it) and
``flaky_retry`` (the callee answers 503 at ``rate``, the caller retries once and the retry
succeeds, so the caller and the root are fine).

Memory look-alikes: ``gc_sawtooth`` (healthy, allocation-heavy sawtooth), ``cache_warmup`` (the
live set rises by ``rise_pct_limit`` with time constant ``tau_s``, then stays flat),
``load_heap_growth`` (the entry traffic rises ``factor`` x and every replica of ``service``
retains per-request state while it lasts, so its live set rises by up to ``rise_pct_limit`` and
falls back with ``tau_s`` after the window; allocation and GC frequency rise with the traffic
everywhere), ``noisy_rss`` (an instance's RSS noise is ``noise_factor`` x larger, no leak),
``restart`` and ``deploy`` (heap resets and start-up warm-ups).

Two negatives change only what is *emitted*, not what the services do (request counters, heaps
and TCP churn are those of the full traffic): ``head_sampling`` keeps a fraction of whole traces,
decided per trace id like the Collector's ``probabilistic_sampler`` (``hash_seed`` mode), and
``missing_spans`` loses single non-root spans, so some of the remaining spans are orphans whose
parent never arrives.

Times are seconds of event time from the scenario start, so a preset can be replayed at any
start time and any length (windows past the end are clipped by the scenario).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.durations import parse_duration_ns

BOTTLENECK_SPAN = "bottleneck_span"
MEMORY_LEAK = "memory_leak"
GC_PRESSURE = "gc_pressure"
TIME_WAIT_BUILDUP = "time_wait_buildup"
ERROR_ORIGIN = "error_origin"
FAULT_KINDS = (BOTTLENECK_SPAN, MEMORY_LEAK, GC_PRESSURE, TIME_WAIT_BUILDUP, ERROR_ORIGIN)

GLOBAL_SLOWDOWN = "global_slowdown"
TRAFFIC_SPIKE = "traffic_spike"
GC_SAWTOOTH = "gc_sawtooth"
CACHE_WARMUP = "cache_warmup"
RESTART = "restart"
DEPLOY = "deploy"
CLOCK_SKEW = "clock_skew"
RECONNECT_STORM = "reconnect_storm"
HEAD_SAMPLING = "head_sampling"
MISSING_SPANS = "missing_spans"
LOAD_HEAP_GROWTH = "load_heap_growth"
NOISY_RSS = "noisy_rss"
CLIENT_4XX = "client_4xx"
FLAKY_RETRY = "flaky_retry"

#: Runtimes whose GC pauses are exported as a duration histogram (``jvm.gc.duration``,
#: ``v8js.gc.duration``): the only ones a ``gc_pressure`` fault can be seen on. CPython exports
#: collection counts only, and the Go runtime metrics no GC time at all.
GC_PRESSURE_RUNTIMES = ("java", "nodejs")

#: Each negative kind, and the finding kinds it must not trigger.
NEGATIVE_KINDS: dict[str, tuple[str, ...]] = {
    GLOBAL_SLOWDOWN: (BOTTLENECK_SPAN,),
    TRAFFIC_SPIKE: (TIME_WAIT_BUILDUP, BOTTLENECK_SPAN, MEMORY_LEAK, GC_PRESSURE),
    GC_SAWTOOTH: (MEMORY_LEAK, GC_PRESSURE),
    CACHE_WARMUP: (MEMORY_LEAK, GC_PRESSURE),
    RESTART: (MEMORY_LEAK, GC_PRESSURE),
    DEPLOY: (MEMORY_LEAK, BOTTLENECK_SPAN, GC_PRESSURE),
    LOAD_HEAP_GROWTH: (MEMORY_LEAK, GC_PRESSURE),
    NOISY_RSS: (MEMORY_LEAK, GC_PRESSURE),
    CLOCK_SKEW: (BOTTLENECK_SPAN,),
    RECONNECT_STORM: (TIME_WAIT_BUILDUP,),
    HEAD_SAMPLING: (BOTTLENECK_SPAN,),
    MISSING_SPANS: (BOTTLENECK_SPAN,),
    CLIENT_4XX: (ERROR_ORIGIN,),
    FLAKY_RETRY: (ERROR_ORIGIN,),
}
ALL_KINDS = FAULT_KINDS + tuple(NEGATIVE_KINDS)

#: Entity keys each kind needs (an empty entity on a global negative means "everything").
ENTITY_KEYS: dict[str, tuple[str, ...]] = {
    BOTTLENECK_SPAN: ("service", "operation"),
    MEMORY_LEAK: ("service", "instance"),
    GC_PRESSURE: ("service", "instance"),
    TIME_WAIT_BUILDUP: ("host",),
    GLOBAL_SLOWDOWN: (),
    TRAFFIC_SPIKE: (),
    GC_SAWTOOTH: ("service", "instance"),
    CACHE_WARMUP: ("service", "instance"),
    RESTART: ("service", "instance"),
    DEPLOY: ("service",),
    CLOCK_SKEW: ("service",),
    RECONNECT_STORM: ("service",),
    HEAD_SAMPLING: (),  # optional "service": only traces whose root span is that service's
    MISSING_SPANS: (),  # optional "service": only that service's spans are lost
    LOAD_HEAP_GROWTH: ("service",),  # every replica's live set grows; traffic rises everywhere
    NOISY_RSS: ("service", "instance"),
    ERROR_ORIGIN: ("service", "operation"),  # a server endpoint or a downstream (leaf) call
    CLIENT_4XX: ("service", "operation"),  # the caller and its HTTP call (the callee's route)
    FLAKY_RETRY: ("service", "operation"),  # the same
}

#: The magnitude key a single number in a ``--fault`` spec sets, per kind.
DEFAULT_MAGNITUDE_KEY: dict[str, str] = {
    BOTTLENECK_SPAN: "added_ms",
    MEMORY_LEAK: "rate_pct_limit_per_hour",
    GC_PRESSURE: "gc_time_fraction",  # also "alloc_factor" (default 4)
    TIME_WAIT_BUILDUP: "connections_per_call",
    GLOBAL_SLOWDOWN: "factor",
    TRAFFIC_SPIKE: "factor",
    GC_SAWTOOTH: "alloc_factor",
    CACHE_WARMUP: "rise_pct_limit",
    RESTART: "new_instance_id",
    DEPLOY: "stagger_s",
    CLOCK_SKEW: "offset_ms",
    RECONNECT_STORM: "duration_s",
    HEAD_SAMPLING: "keep",  # share of traces kept (default 0.1); also "hash_seed" (default 0)
    MISSING_SPANS: "drop",  # probability that a non-root span is lost (default 0.05)
    LOAD_HEAP_GROWTH: "factor",  # traffic x (default 2.5); also "rise_pct_limit", "tau_s"
    NOISY_RSS: "noise_factor",  # RSS noise x (default 5)
    ERROR_ORIGIN: "error_rate",  # share of calls that fail (default 0.3); also
    # "exception_type" and "exception_message" (default: the runtime's, see simulate.errors)
    CLIENT_4XX: "rate",  # share of calls answered with "status" (default 0.2, status 404)
    FLAKY_RETRY: "rate",  # share of calls answered 503 and retried once (default 0.3)
}


@dataclass(frozen=True)
class Fault:
    """One injected fault or hard negative over ``[start_s, end_s)`` of event time.

    ``entity`` holds the keys a finding carries (see ``ENTITY_KEYS``); an instance is named by
    its replica slot, ``"checkout#0"``, and the label resolves it to the ``service.instance.id``
    in force. ``evidence`` holds targeting detail that is not part of the identity (for
    ``time_wait_buildup``: the client ``service`` and the ``destination`` it stops reusing;
    its ``magnitude`` has ``connections_per_call`` and optionally ``ramp_s``, over which the
    share of calls without reuse rises linearly from 0 to 1).
    """

    kind: str
    entity: dict[str, str]
    start_s: float
    end_s: float
    magnitude: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    note: str = ""
    #: Faults with one ``incident`` name are one problem (a cause and its knock-on effects,
    #: injected as separate faults): the incident scorer expects them in one incident, rooted
    #: at ``incident_root`` (an entity, e.g. ``{"service": "redis"}``) or else at the group's
    #: first fault.
    incident: str = ""
    incident_root: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(ALL_KINDS)}")
        missing = [k for k in ENTITY_KEYS[self.kind] if not self.entity.get(k)]
        if missing:
            raise ValueError(f"{self.kind} needs entity keys {missing} (got {self.entity})")
        if not self.end_s > self.start_s >= 0:
            raise ValueError(
                f"{self.kind}: window must satisfy 0 <= start < end, got "
                f"[{self.start_s}, {self.end_s})"
            )

    @property
    def negative(self) -> bool:
        return self.kind in NEGATIVE_KINDS

    @property
    def must_not_trigger(self) -> tuple[str, ...]:
        return NEGATIVE_KINDS.get(self.kind, ())

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s

    def clipped(self, duration_s: float) -> Fault | None:
        """The fault limited to a run of ``duration_s``, or None if it starts after the end."""
        if self.start_s >= duration_s:
            return None
        return replace(self, end_s=min(self.end_s, duration_s))


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"20m"``, ``"1h30m"``, ``"2h"``, ``"1d"``.

    >>> parse_duration("1h30m"), parse_duration("20m"), parse_duration(45)
    (5400.0, 1200.0, 45.0)
    """
    if isinstance(text, int | float):
        return float(text)
    return parse_duration_ns(text) / 1e9


def parse_fault(spec: str) -> Fault:
    """A fault from ``KIND:target:start:duration[:magnitude]``.

    Targets by kind: ``service/operation`` (bottleneck_span, error_origin, client_4xx,
    flaky_retry; for the last two the operation is the HTTP call, named as the callee's route),
    ``service#replica`` (memory_leak, gc_pressure, gc_sawtooth, cache_warmup, restart,
    noisy_rss), ``host[/service[>destination]]``
    (time_wait_buildup), ``service`` (deploy, clock_skew, reconnect_storm, global_slowdown,
    head_sampling, missing_spans, load_heap_growth) and ``*`` for everything (global_slowdown,
    traffic_spike, head_sampling, missing_spans). The magnitude is one number for the kind's main
    knob (``DEFAULT_MAGNITUDE_KEY``), or ``key=value,key=value``.

    >>> f = parse_fault("bottleneck_span:user-service/SELECT users:5m:10m:150")
    >>> f.entity, f.start_s, f.end_s, f.magnitude
    ({'service': 'user-service', 'operation': 'SELECT users'}, 300.0, 900.0, {'added_ms': 150.0})
    >>> parse_fault("time_wait_buildup:node-2/frontend>cart:1m:5m").evidence
    {'service': 'frontend', 'destination': 'cart'}
    >>> f = parse_fault("head_sampling:*:20m:6m:0.1")
    >>> f.entity, f.magnitude, f.must_not_trigger
    ({}, {'keep': 0.1}, ('bottleneck_span',))
    >>> parse_fault("missing_spans:cart:1m:5m:drop=0.2").entity
    {'service': 'cart'}
    >>> f = parse_fault("error_origin:payment/INSERT payments:40m:5m:0.3")
    >>> f.entity, f.magnitude, f.negative
    ({'service': 'payment', 'operation': 'INSERT payments'}, {'error_rate': 0.3}, False)
    >>> parse_fault("client_4xx:frontend/GET /products/{id}:1m:5m:rate=0.2,status=404").magnitude
    {'rate': 0.2, 'status': 404.0}
    >>> f = parse_fault("gc_pressure:catalog#0:30m:25m:0.2")
    >>> f.entity, f.magnitude, f.negative
    ({'service': 'catalog', 'instance': 'catalog#0'}, {'gc_time_fraction': 0.2}, False)
    """
    kind, _, rest = spec.partition(":")
    if kind not in ALL_KINDS:
        raise ValueError(f"--fault {spec!r}: unknown kind {kind!r}; known: {', '.join(ALL_KINDS)}")
    parts = rest.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"--fault {spec!r}: expected KIND:target:start:duration[:magnitude]")
    target, start, duration = parts[:3]
    magnitude = parts[3] if len(parts) == 4 else ""
    start_s = parse_duration(start)
    entity, evidence = _parse_target(kind, target, spec)
    return Fault(
        kind=kind,
        entity=entity,
        evidence=evidence,
        start_s=start_s,
        end_s=start_s + parse_duration(duration),
        magnitude=_parse_magnitude(kind, magnitude),
        note=f"from --fault {spec}",
    )


def _parse_target(kind: str, target: str, spec: str) -> tuple[dict[str, str], dict[str, str]]:
    keys = ENTITY_KEYS[kind]
    if target in ("", "*"):
        if keys:
            raise ValueError(f"--fault {spec!r}: {kind} needs a target ({'/'.join(keys)})")
        return {}, {}
    if kind in (BOTTLENECK_SPAN, ERROR_ORIGIN, CLIENT_4XX, FLAKY_RETRY):
        service, sep, op = target.partition("/")
        if not sep:
            raise ValueError(f"--fault {spec!r}: target must be service/operation")
        return {"service": service, "operation": op}, {}
    if "instance" in keys:
        service, sep, replica = target.partition("#")
        if not sep or not replica.isdigit():
            raise ValueError(f"--fault {spec!r}: target must be service#replica, e.g. cart#0")
        return {"service": service, "instance": target}, {}
    if kind == TIME_WAIT_BUILDUP:
        host, _, rest = target.partition("/")
        service, _, dest = rest.partition(">")
        evidence = {k: v for k, v in (("service", service), ("destination", dest)) if v}
        return {"host": host}, evidence
    return {"service": target}, {}


def _parse_magnitude(kind: str, text: str) -> dict[str, Any]:
    if not text:
        return {}
    if "=" not in text:
        return {DEFAULT_MAGNITUDE_KEY[kind]: float(text)}
    out: dict[str, Any] = {}
    for item in text.split(","):
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out

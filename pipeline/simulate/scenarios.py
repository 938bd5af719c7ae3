"""Named scenarios: topology + traffic settings + faults and hard negatives, fixed by a seed.

Presets (default durations; ``duration`` overrides, clipping the windows):

``healthy`` (1 h)
    No faults, no negatives: the false-alarm baseline.
``demo`` (20 min, used by ``make run``)
    One of each fault (leak on ``checkout#0``, ``SELECT users`` bottleneck in ``user-service``
    from minute 11, after the bottleneck baselines have warmed up,
    TIME_WAIT buildup on ``node-2`` from ``frontend`` to ``cart``) between negatives: a deploy
    of ``catalog`` with its reconnect storm, a ``payment`` slowdown, a traffic spike, a cache
    warm-up, a restart, clock skew on ``cart`` and a busy GC sawtooth.
``bottleneck`` (95 min)
    The accuracy suite for bottleneck spans. 20 healthy minutes (detector baselines warm up),
    then four 6-minute bottlenecks of different sizes on four frequently reached downstream
    calls, +30 ms on ``catalog/GET`` (Redis), +60 ms on ``cart/HGETALL``, +120 ms on
    ``user-service/SELECT users`` and +250 ms on ``cart/HSET``, alternating with hard negatives
    in their own windows: everything 1.5x slower, ``catalog`` 2x slower as a whole, head sampling
    keeping 10% of traces, a 3x traffic spike and 5% of spans lost in transit; clock skew on
    ``checkout`` (-400 ms) throughout. Every window is at least 3 min from the next one.
``leak`` (6 h, metrics only: ``emit_spans=False``)
    The memory accuracy suite (``memory_leak``, ``gc_pressure``); times from the start:

    ========================  ======  ==========  ===========================================
    instance                  runtime window      what
    ========================  ======  ==========  ===========================================
    checkout#0                java    0:20-6:00   leak 0.5%/h of the limit (no OOM)
    user-service#0            go      0:25-3:00   leak 60%/h = 1%/min: OOM-killed ~1:30 and
                                                  ~2:35 (container restart keeps the id)
    cart#1                    python  0:30-6:00   leak 5%/h, in RSS only (limit: configured)
    frontend#0                nodejs  0:35-6:00   leak 20%/h: OOM-killed ~4:00
    payment#0                 go      0:45-6:00   leak 30%/h, restarted mid-leak at 2:30,
                                                  OOM-killed ~4:47
    catalog#0                 java    1:40-2:05   gc_pressure: 15% of the time in GC
    frontend#1                nodejs  3:20-3:45   gc_pressure: 20% of the time in GC
    catalog#1, user-service#1 java/go whole run   steep healthy sawtooth (alloc x3)
    checkout#1, payment#1     java/go whole run   plain healthy sawtooth
    cart#0, frontend#2        py/node 0-3h / 3-6h steep, then plain healthy sawtooth
    checkout#1                java    1:00-1:40   cache warm-up +22% of the limit, then flat
    user-service#2            go      2:10-2:20   container restart
    catalog (both)            java    2:50-3:15   load_heap_growth: 2.5x traffic, +15%, recedes
    cart#0                    python  3:50-4:50   noisy_rss (5x noise)
    user-service (all)        go      4:15-4:25   deploy
    frontend#2                nodejs  4:55-5:35   noisy_rss (5x noise)
    catalog (all)             java    5:00-5:10   deploy
    ========================  ======  ==========  ===========================================
``timewait`` (85 min)
    The TIME_WAIT accuracy suite. The daily load curve is compressed to a "day" of 30 min at
    +-50% (``daily_period_s=1800``, ``daily_amplitude=0.5``): a real day barely moves in an
    85-minute run, so the entry rate instead climbs from 25 to 75 requests/s and back three
    times (troughs at 3:45, 33:45 and 63:45, peaks 15 min later), and every rising flank is
    labelled as a ``daily_load_curve`` hard negative. It also moves the buildups' close rates
    (hence the ranges below; each label's ``truth`` integrates the actual rate). Times from
    the start; closes/s at onset; "exhausts" = the truth's ``time_to_exhaustion_s``:

    ======  ============  ===========================  =====  ==========  ================
    window  host (style)  client > destination         conn.  closes/s    plateau, exhausts
    ======  ============  ===========================  =====  ==========  ================
    10-17   node-1 (hm)   payment > api.payments.ex.   1      2.2-3.7     ~130, no
    11-23   node-4 (prom) cart > redis                 1      23-36       ~1,400, no
    13-21   node-2 (hm)   user-service > postgres      1      11-14       ~650, no
    16-24   node-3 (both) frontend > cart              3      46 (40-49)  ~2,800, no
    30-34   all           traffic spike 4x (at the trough)
    37-41   node-1/2/3    deploy of catalog; its clients' reconnect storm (40 s) recovers
    44-58   node-1 (hm)   catalog > redis (ramp 15m)   40     0 -> 580    rising, 449 s
    47-54   node-3 (both) cart > redis                 30     875-1,069   ~63,000, 27 s
    54-62   node-2 (hm)   frontend > catalog           2      29 -> 12    ~1,700, no
    64-67   all           traffic spike 3x (at the trough)
    72-82   node-4 (prom) catalog > redis (ramp 9m)    28     0 -> 708    rising, 379 s
    ======  ============  ===========================  =====  ==========  ================

    The two ramps lose reuse progressively (``ramp_s``: the share of calls without it rises
    linearly), so TIME_WAIT climbs for minutes before the ports run out and the time to
    exhaustion can be judged when first reported; a steady rate high enough to run the range
    out does so within 60 s (node-3 at 47). Faults on one host are at least 8 minutes apart;
    no buildup overlaps a spike or the deploy. Without faults a host holds ~50-150 sockets in
    TIME_WAIT (pool churn, probes).
``errors`` (90 min)
    The error-origin accuracy suite. 20 healthy minutes (normal traffic has rare background
    errors: endpoints 0.1-0.4%, database calls 0.05-0.1%, the card vendor 1%, each propagating
    to its caller with probability 0.7), then 4-minute windows 3 minutes apart. ``error_origin``
    failures always propagate to the root; the look-alikes never reach it. Times from the start,
    calls/s at 50 requests/s:

    =====  ============  ======================================  ====  =====  ======================
    min    kind          service / operation                     rate  /s     services that fail
    =====  ============  ======================================  ====  =====  ======================
    20-24  error_origin  user-service / SELECT users (Postgres)  0.3   26     user-service >
                                                                                (checkout >)
                                                                                frontend
    27-31  client_4xx    frontend / GET /products/{id}           0.2   12     none (404 handled)
    34-38  error_origin  payment / INSERT payments (Postgres)    0.3   5      payment > checkout >
                                                                                frontend
    41-45  flaky_retry   frontend / GET /cart                    0.3   22     none (503 retried)
    48-52  error_origin  checkout / POST /checkout (mid-chain)   0.2   5      checkout > frontend
    55-59  error_origin  catalog / GET /products/{id}            0.1   12     catalog > frontend
    62-66  flaky_retry   checkout / POST /charge                 0.25  5      none (503 retried)
    69-73  error_origin  cart / HGETALL (Redis)                  0.5   28     cart > (checkout >)
                                                                                frontend
    76-80  error_origin  payment / POST /v1/charges (vendor)     0.3   5      payment > checkout >
                                                                                frontend
    83-87  error_origin  frontend / POST /api/cart (root)        0.2   10     frontend
    =====  ============  ======================================  ====  =====  ======================

    ``/s``: calls of the operation per second; "(checkout >)": some paths go through checkout.
    The look-alikes name the caller's HTTP call (its
    client span has the callee's route as its name). Each label's ``truth.chains`` lists the
    failing spans, origin first.
``negatives`` (1 h)
    Every hard negative and no fault: any finding is a false alarm (head sampling and lost spans
    included, each in a window of its own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from pipeline.simulate.faults import (
    BOTTLENECK_SPAN,
    CACHE_WARMUP,
    CLIENT_4XX,
    CLOCK_SKEW,
    DEPLOY,
    ERROR_ORIGIN,
    FLAKY_RETRY,
    GC_PRESSURE,
    GC_PRESSURE_RUNTIMES,
    GC_SAWTOOTH,
    GLOBAL_SLOWDOWN,
    HEAD_SAMPLING,
    LOAD_HEAP_GROWTH,
    MEMORY_LEAK,
    MISSING_SPANS,
    NOISY_RSS,
    RECONNECT_STORM,
    RESTART,
    TIME_WAIT_BUILDUP,
    TRAFFIC_SPIKE,
    Fault,
    parse_duration,
    parse_fault,
)
from pipeline.simulate.lifecycle import LifecyclePlan, plan_lifecycles
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START, parse_time_ns
from pipeline.simulate.topology import (
    HttpCall,
    LeafCall,
    Topology,
    call_destination,
    default_topology,
)

ENCODINGS = ("otlp_proto", "otlp_json")
KEYINGS = ("keyed", "unkeyed")


@dataclass(frozen=True)
class Scenario:
    """Everything that determines the generated telemetry; same scenario, same bytes."""

    name: str
    seed: int
    start_ns: int
    duration_s: float
    topology: Topology
    faults: tuple[Fault, ...] = ()
    rate: float = 50.0  # entry requests per second (before the daily pattern)
    sample_ratio: float = 1.0  # head sampling, decided per trace id
    metric_interval_s: int = 10
    daily_amplitude: float = 0.25  # request rate swings +-25% over a day of event time
    peak_hour_utc: float = 15.0
    #: Length of the "day" of the load curve, in seconds of event time. A real day (86400) barely
    #: moves in an hour-long run; a preset that wants the daily curve as a look-alike compresses
    #: it (``timewait``: 30 min). ``peak_hour_utc`` is then the same fraction of the period.
    daily_period_s: float = 86400.0
    #: Uneven traffic: requests come in bursts of ``burst_on_s`` with quiet gaps of
    #: ``burst_off_s`` (no requests, so no spans; metrics go on). 0: steady traffic.
    burst_on_s: float = 0.0
    burst_off_s: float = 0.0
    encoding: str = "otlp_proto"
    keying: str = "keyed"
    spans_topic: str = "otlp_spans"
    metrics_topic: str = "otlp_metrics"
    max_spans_per_record: int = 1000  # unkeyed batches stay well under Kafka's 1 MB default
    #: False: metrics only. Requests are still drawn and routed exactly as with spans (so
    #: allocation, GC, connection pools and every metric point are the same), but no span is
    #: built or published: long memory scenarios replay in minutes.
    emit_spans: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.encoding not in ENCODINGS:
            problems.append(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.keying not in KEYINGS:
            problems.append(f"keying must be one of {KEYINGS}, got {self.keying!r}")
        if not 0.0 < self.sample_ratio <= 1.0:
            problems.append(f"sample_ratio must be in (0, 1], got {self.sample_ratio}")
        if self.rate <= 0:
            problems.append(f"rate must be > 0 requests/s, got {self.rate}")
        if self.duration_s < 1:
            problems.append(f"duration must be at least 1 s, got {self.duration_s}")
        if int(self.metric_interval_s) != self.metric_interval_s or self.metric_interval_s < 1:
            problems.append(
                f"metric_interval_s must be a whole number >= 1, got {self.metric_interval_s}"
            )
        if not 0 <= self.daily_amplitude < 1:
            problems.append(f"daily_amplitude must be in [0, 1), got {self.daily_amplitude}")
        if not (math.isfinite(self.daily_period_s) and self.daily_period_s >= 60):
            problems.append(
                f"daily_period_s must be a finite number of seconds >= 60 (86400 for a real day), "
                f"got {self.daily_period_s}"
            )
        if self.burst_on_s < 0 or self.burst_off_s < 0 or (
            self.burst_off_s > 0 and self.burst_on_s <= 0
        ):
            problems.append("burst_on_s must be > 0 when burst_off_s is set (both >= 0)")
        if self.max_spans_per_record < 1:
            problems.append("max_spans_per_record must be >= 1")
        problems += [p for f in self.faults for p in _check_fault(self.topology, f)]
        if problems:
            raise ValueError(f"scenario {self.name!r}: " + "; ".join(problems))

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(round(self.duration_s * 1e9))

    def base_rate_at(self, t_s: float) -> float:
        """Entry requests/s at ``t_s`` from the baseline and the daily sinusoid (no spikes).

        The curve peaks at ``peak_hour_utc`` of each day of ``daily_period_s`` seconds, days
        counted from the Unix epoch (with the default period: the hour of the UTC day).

        >>> sc = build_scenario("healthy", duration="1h", daily_period_s=1800, daily_amplitude=0.5)
        >>> [round(sc.base_rate_at(m * 60), 1) for m in (3.75, 18.75, 33.75)]  # trough, peak
        [25.0, 75.0, 25.0]
        """
        if self.burst_off_s > 0 and t_s % (self.burst_on_s + self.burst_off_s) >= self.burst_on_s:
            return 0.0  # a quiet gap between bursts
        period = self.daily_period_s
        hour = ((self.start_ns / 1e9 + t_s) % period) / (period / 24.0)
        return self.rate * (
            1.0
            + self.daily_amplitude
            * math.sin(2 * math.pi * (hour - self.peak_hour_utc + 6.0) / 24.0)
        )

    @cached_property
    def plan(self) -> LifecyclePlan:
        """Incarnations of every replica (restarts, deploys, OOM kills), computed once."""
        return plan_lifecycles(
            self.topology, self.seed, self.start_ns, self.duration_s, self.faults
        )


def _check_fault(topology: Topology, f: Fault) -> list[str]:
    """Problems with a fault's target, in words that say what to change."""
    try:
        if "service" in f.entity:
            spec = topology.service(f.entity["service"])
        if f.kind == BOTTLENECK_SPAN:
            leaves = topology.leaf_operations()
            if (f.entity["service"], f.entity["operation"]) not in leaves:
                choices = ", ".join(f"{s}/{o}" for s, o in dict.fromkeys(leaves))
                return [
                    f"bottleneck_span target {f.entity} is not a downstream client span of "
                    f"that service; choose one of: {choices}"
                ]
        if f.kind == ERROR_ORIGIN:
            ops = error_origin_operations(topology)
            if (f.entity["service"], f.entity["operation"]) not in ops:
                choices = ", ".join(f"{s}/{o}" for s, o in ops)
                return [
                    f"error_origin target {f.entity} is not an endpoint or a downstream call of "
                    f"that service; choose one of: {choices}"
                ]
            rate = float(f.magnitude.get("error_rate", 0.3))
            if not 0.0 < rate <= 1.0:
                return [f"error_origin: error_rate must be in (0, 1], got {rate}"]
        if f.kind in (CLIENT_4XX, FLAKY_RETRY):
            calls = http_calls(topology)
            if (f.entity["service"], f.entity["operation"]) not in calls:
                choices = ", ".join(f"{s}/{o}" for s, o in calls)
                return [
                    f"{f.kind} target {f.entity} is not an HTTP call of that service (named by "
                    f"the callee's route); choose one of: {choices}"
                ]
            rate = float(f.magnitude.get("rate", 0.2))
            if not 0.0 < rate <= 1.0:
                return [f"{f.kind}: rate must be in (0, 1], got {rate}"]
            status = int(f.magnitude.get("status", 404))
            if f.kind == CLIENT_4XX and not 400 <= status < 500:
                return [f"client_4xx: status must be a 4xx code, got {status}"]
        if f.kind == HEAD_SAMPLING:
            keep = float(f.magnitude.get("keep", 0.1))
            if not 0.0 < keep <= 1.0:
                return [f"head_sampling: keep must be in (0, 1], got {keep}"]
            if "service" in f.entity and not spec.entry:
                entries = ", ".join(s.name for s in topology.services if s.entry)
                return [
                    f"head_sampling: {spec.name} roots no traces, so a sampler on it drops "
                    f"nothing; target an entry service ({entries}) or * for all"
                ]
        if f.kind == GC_PRESSURE:
            if spec.runtime not in GC_PRESSURE_RUNTIMES:
                return [
                    f"gc_pressure: {spec.name} runs {spec.runtime}, which exports no GC pause "
                    f"durations; target a service of runtime {' or '.join(GC_PRESSURE_RUNTIMES)}"
                ]
            fraction = float(f.magnitude.get("gc_time_fraction", 0.15))
            if not 0.0 < fraction < 1.0:
                return [f"gc_pressure: gc_time_fraction must be in (0, 1), got {fraction}"]
        if f.kind == NOISY_RSS and spec.runtime not in ("python", "nodejs"):
            return [
                f"noisy_rss: {spec.name} runs {spec.runtime}, whose telemetry has no RSS; "
                "target a python or nodejs service"
            ]
        if f.kind == MISSING_SPANS:
            drop = float(f.magnitude.get("drop", 0.05))
            if not 0.0 <= drop <= 1.0:
                return [f"missing_spans: drop must be in [0, 1], got {drop}"]
        if "instance" in f.entity:
            svc, _, replica = f.entity["instance"].partition("#")
            if svc != spec.name or not replica.isdigit() or int(replica) >= spec.instances:
                return [
                    f"{f.kind}: instance {f.entity['instance']!r} is not a replica of "
                    f"{spec.name} (use {spec.name}#0..{spec.name}#{spec.instances - 1})"
                ]
        if f.kind == TIME_WAIT_BUILDUP:
            host = topology.host(f.entity["host"]).name
            clients = {s for s, _, h in topology.slots() if h == host}
            svc = f.evidence.get("service")
            if svc and svc not in clients:
                return [
                    f"time_wait_buildup: {svc} has no instance on {host} "
                    f"(instances there: {', '.join(sorted(clients))})"
                ]
            dest = f.evidence.get("destination")
            if dest:
                dests = {
                    d.split(":")[0]
                    for s in topology.services
                    if svc in (None, s.name) and s.name in clients
                    for ep in s.endpoints
                    for step in ep.steps
                    for c in step
                    if (d := call_destination(topology, c))
                }
                if dest.split(":")[0] not in dests:
                    return [
                        f"time_wait_buildup: no client on {host} calls {dest!r} "
                        f"(destinations: {', '.join(sorted(dests))})"
                    ]
    except KeyError as exc:
        return [f"{f.kind}: {exc.args[0]}"]
    return []


def error_origin_operations(topology: Topology) -> list[tuple[str, str]]:
    """(service, span name) an ``error_origin`` can be on: every endpoint (SERVER span) and
    every downstream call to something untraced (CLIENT span: a database, a cache, a vendor)."""
    ops = [(s.name, ep.name) for s in topology.services for ep in s.endpoints]
    return list(dict.fromkeys(ops + topology.leaf_operations()))


def http_calls(topology: Topology) -> dict[tuple[str, str], str]:
    """(calling service, HTTP client span name = the callee's route) -> the callee service:
    the targets of ``client_4xx`` and ``flaky_retry``."""
    return {
        (s.name, c.endpoint): c.service
        for s in topology.services
        for ep in s.endpoints
        for step in ep.steps
        for c in step
        if isinstance(c, HttpCall)
    }


# ---------------------------------------------------------------------------------------------
# Presets

M = 60.0


def _healthy() -> tuple[float, list[Fault], str]:
    return 3600.0, [], "no faults and no negatives: the false-alarm baseline"


def _demo() -> tuple[float, list[Fault], str]:
    faults = [
        Fault(
            MEMORY_LEAK,
            {"service": "checkout", "instance": "checkout#0"},
            2 * M,
            20 * M,
            {"rate_pct_limit_per_hour": 150.0},
            note="Java old-gen floor grows 150%/h",
        ),
        Fault(
            BOTTLENECK_SPAN,
            {"service": "user-service", "operation": "SELECT users"},
            11 * M,
            17 * M,
            {"added_ms": 120.0},
            note="missing index: SELECT users +120 ms",
        ),
        Fault(
            TIME_WAIT_BUILDUP,
            {"host": "node-2"},
            10 * M,
            15 * M,
            {"connections_per_call": 1},
            evidence={"service": "frontend", "destination": "cart"},
            note="frontend on node-2 stops reusing connections to cart",
        ),
        Fault(
            CLOCK_SKEW,
            {"service": "cart"},
            0,
            20 * M,
            {"offset_ms": 350.0},
            note="cart's clock runs 350 ms ahead",
        ),
        Fault(
            GC_SAWTOOTH,
            {"service": "frontend", "instance": "frontend#1"},
            0,
            20 * M,
            {"alloc_factor": 2.5},
            note="allocation-heavy instance: steep, healthy sawtooth",
        ),
        Fault(
            CACHE_WARMUP,
            {"service": "user-service", "instance": "user-service#2"},
            3 * M,
            15 * M,
            {"rise_pct_limit": 12.0, "tau_s": 150.0},
            note="in-process cache fills, then levels off",
        ),
        Fault(
            DEPLOY,
            {"service": "catalog"},
            5 * M,
            10 * M,
            {"stagger_s": 30.0},
            note="rolling deploy of catalog",
        ),
        Fault(
            RECONNECT_STORM,
            {"service": "catalog"},
            5 * M,
            7 * M,
            {"duration_s": 40.0},
            note="clients of catalog reconnect after its deploy",
        ),
        Fault(
            GLOBAL_SLOWDOWN,
            {"service": "payment"},
            13 * M,
            16 * M,
            {"factor": 1.8},
            note="payment's node is CPU-throttled: every operation 1.8x slower",
        ),
        Fault(TRAFFIC_SPIKE, {}, 3 * M, 5 * M, {"factor": 4.0}, note="marketing e-mail: 4x"),
        Fault(
            RESTART,
            {"service": "payment", "instance": "payment#1"},
            17.5 * M,
            20 * M,
            note="container restart (liveness probe)",
        ),
    ]
    return 20 * M, faults, "a mix of all three faults and hard negatives, for make run"


def _bottleneck() -> tuple[float, list[Fault], str]:
    # Each bottleneck is on a downstream call that a good share of entry requests reach (calls
    # per request, default topology: catalog GET 0.70, user-service SELECT users 0.55, cart
    # HGETALL 0.55, cart HSET 0.20). Windows alternate negative / fault, at least 3 min apart,
    # after 20 healthy minutes. Each slowdown precedes every bottleneck on an operation it slows,
    # so a scorer's grace period after a bottleneck never excuses a false alarm on a slowdown.
    faults = [
        Fault(
            CLOCK_SKEW,
            {"service": "checkout"},
            0,
            95 * M,
            {"offset_ms": -400.0},
            note="checkout's clock runs 400 ms behind",
        ),
        Fault(
            GLOBAL_SLOWDOWN,
            {},
            20 * M,
            24 * M,
            {"factor": 1.5},
            note="noisy neighbour: everything 1.5x slower",
        ),
        Fault(
            BOTTLENECK_SPAN,
            {"service": "user-service", "operation": "SELECT users"},
            27 * M,
            33 * M,
            {"added_ms": 120.0},
            note="lock contention on users",
        ),
        Fault(
            GLOBAL_SLOWDOWN,
            {"service": "catalog"},
            36 * M,
            40 * M,
            {"factor": 2.0},
            note="catalog pods CPU-throttled: all its operations slower together",
        ),
        Fault(
            BOTTLENECK_SPAN,
            {"service": "catalog", "operation": "GET"},
            43 * M,
            49 * M,
            {"added_ms": 30.0},
            note="Redis GET of the featured products slowed by a big key",
        ),
        Fault(
            HEAD_SAMPLING,
            {},
            52 * M,
            58 * M,
            {"keep": 0.1},
            note="Collector probabilistic sampler at 10%: whole traces dropped by trace id",
        ),
        Fault(
            BOTTLENECK_SPAN,
            {"service": "cart", "operation": "HGETALL"},
            61 * M,
            67 * M,
            {"added_ms": 60.0},
            note="cart hashes grew: HGETALL slow",
        ),
        Fault(TRAFFIC_SPIKE, {}, 70 * M, 73 * M, {"factor": 3.0}, note="3x traffic"),
        Fault(
            BOTTLENECK_SPAN,
            {"service": "cart", "operation": "HSET"},
            76 * M,
            82 * M,
            {"added_ms": 250.0},
            note="Redis blocked by a slow command: HSET waits",
        ),
        Fault(
            MISSING_SPANS,
            {},
            85 * M,
            91 * M,
            {"drop": 0.05},
            note="exporter queue overflow: 5% of spans lost, their children orphaned",
        ),
    ]
    return (
        95 * M,
        faults,
        "bottleneck accuracy suite: four sizes on four calls against slowdowns, a spike, "
        "head sampling, lost spans and clock skew",
    )


def _leak() -> tuple[float, list[Fault], str]:
    # The memory accuracy suite (metrics only, see PRESET_SETTINGS). Each leaking instance
    # carries no negative, and each negative instance no leak; the one exception is the planned
    # restart of payment#0 mid-leak, which the labels mark as no negative for memory_leak.
    # Transient windows do not overlap each other, and nothing starts before minute 20.
    def inst(slot: str) -> dict[str, str]:
        return {"service": slot.partition("#")[0], "instance": slot}

    def leak(slot: str, start: float, end: float, pct: float, note: str) -> Fault:
        return Fault(
            MEMORY_LEAK, inst(slot), start * M, end * M, {"rate_pct_limit_per_hour": pct}, note=note
        )

    def sawtooth(slot: str, start: float, end: float, factor: float, note: str) -> Fault:
        magnitude = {"alloc_factor": factor}
        return Fault(GC_SAWTOOTH, inst(slot), start * M, end * M, magnitude, note=note)

    faults = [
        leak("checkout#0", 20, 360, 0.5, "slow Java leak (0.5%/h): +2.8% of the limit in 6 h"),
        leak("user-service#0", 25, 180, 60.0, "fast Go leak (1%/min): OOM-killed twice"),
        leak("cart#1", 30, 360, 5.0, "Python leak at 5%/h, seen in RSS only"),
        leak("frontend#0", 35, 360, 20.0, "Node.js old-space leak at 20%/h: OOM-killed near 4h"),
        leak("payment#0", 45, 360, 30.0, "Go leak at 30%/h, restarted mid-leak at 2h30"),
        Fault(
            RESTART,
            inst("payment#0"),
            150 * M,
            160 * M,
            note="container restart of a leaking instance before its OOM: heap resets, the leak "
            "goes on in the new process (same service.instance.id)",
        ),
        Fault(
            GC_PRESSURE,
            inst("catalog#0"),
            100 * M,
            125 * M,
            {"gc_time_fraction": 0.15, "alloc_factor": 4.0},
            note="Java: a batch job's allocation storm, 15% of the time in young collections",
        ),
        Fault(
            GC_PRESSURE,
            inst("frontend#1"),
            200 * M,
            225 * M,
            {"gc_time_fraction": 0.2, "alloc_factor": 3.0},
            note="Node.js: scavenges of a too-small new space, 20% of the time in GC",
        ),
        sawtooth("catalog#1", 0, 360, 3.0, "Java: steep healthy sawtooth"),
        sawtooth("checkout#1", 0, 360, 1.0, "Java: plain healthy sawtooth"),
        sawtooth("user-service#1", 0, 360, 3.0, "Go: steep healthy sawtooth"),
        sawtooth("payment#1", 0, 360, 1.0, "Go: plain healthy sawtooth"),
        sawtooth("cart#0", 0, 180, 3.0, "Python: steep healthy sawtooth"),
        sawtooth("cart#0", 180, 360, 1.0, "Python: plain healthy sawtooth"),
        sawtooth("frontend#2", 0, 180, 3.0, "Node.js: steep healthy sawtooth"),
        sawtooth("frontend#2", 180, 360, 1.0, "Node.js: plain healthy sawtooth"),
        Fault(
            CACHE_WARMUP,
            inst("checkout#1"),
            60 * M,
            100 * M,
            {"rise_pct_limit": 22.0, "tau_s": 480.0},
            note="cache fills +22% of the limit over ~30 min, then stays flat",
        ),
        Fault(
            RESTART,
            inst("user-service#2"),
            130 * M,
            140 * M,
            note="container restart: heap reset, start-up warm-up",
        ),
        Fault(
            LOAD_HEAP_GROWTH,
            {"service": "catalog"},
            170 * M,
            195 * M,
            {"factor": 2.5, "rise_pct_limit": 15.0, "tau_s": 300.0},
            note="2.5x traffic for 25 min; catalog keeps per-request state (+15% of the limit) "
            "that expires after the traffic falls back",
        ),
        Fault(
            NOISY_RSS,
            inst("cart#0"),
            230 * M,
            290 * M,
            {"noise_factor": 5.0},
            note="Python RSS noise 5x (allocator arenas, page cache): no leak",
        ),
        Fault(
            DEPLOY,
            {"service": "user-service"},
            255 * M,
            265 * M,
            {"stagger_s": 30.0},
            note="rolling deploy: new instance ids and version",
        ),
        Fault(
            NOISY_RSS,
            inst("frontend#2"),
            295 * M,
            335 * M,
            {"noise_factor": 5.0},
            note="Node.js RSS noise 5x: no leak",
        ),
        Fault(
            DEPLOY,
            {"service": "catalog"},
            300 * M,
            310 * M,
            {"stagger_s": 30.0},
            note="rolling deploy: new instance ids and version",
        ),
    ]
    return (
        360 * M,
        faults,
        "memory accuracy suite (metrics only): leaks from 0.5%/h to 1%/min in all four runtimes "
        "(OOM kills, a restart mid-leak) and GC pressure, against sawtooths, a cache warm-up, "
        "load-driven heap growth, noisy RSS, restarts and deploys",
    )


def _timewait() -> tuple[float, list[Fault], str]:
    # The TIME_WAIT accuracy suite (see PRESET_SETTINGS: the daily curve compressed to 30 min).
    # Close rates below are at 50 requests/s x the curve at onset; the labels carry the exact
    # truth. Faults on one host are >= 8 min apart; the spikes and the deploy overlap no buildup.
    def buildup(
        host: str, client: str, dest: str, start: float, end: float, per_call: int, note: str,
        ramp_min: float = 0.0,
    ) -> Fault:
        magnitude: dict[str, float] = {"connections_per_call": per_call}
        if ramp_min:
            magnitude["ramp_s"] = ramp_min * M
        return Fault(
            TIME_WAIT_BUILDUP,
            {"host": host},
            start * M,
            end * M,
            magnitude,
            evidence={"service": client, "destination": dest},
            note=note,
        )

    faults = [
        buildup(
            "node-1",
            "payment",
            "api.payments.example",
            10,
            17,
            1,
            "payment's HTTP client to the card vendor loses keep-alive (~2 closes/s)",
        ),
        buildup(
            "node-4",
            "cart",
            "redis",
            11,
            23,
            1,
            "cart opens a Redis connection per command (~23 closes/s, rising to ~36)",
        ),
        buildup(
            "node-2",
            "user-service",
            "postgres",
            13,
            21,
            1,
            "user-service's pool is bypassed: a Postgres connection per query (~11/s)",
        ),
        buildup(
            "node-3",
            "frontend",
            "cart",
            16,
            24,
            3,
            "frontend retries to cart on fresh connections: 3 per call (~47/s)",
        ),
        buildup(
            "node-1",
            "catalog",
            "redis",
            44,
            58,
            40,
            "catalog's Redis client leaks its pool: over 15 minutes every key of a 40-key "
            "fan-out comes to open its own connection (0 -> ~580 closes/s as the load "
            "falls); the ports to redis run out after ~7.5 minutes",
            ramp_min=15,
        ),
        buildup(
            "node-3",
            "cart",
            "redis",
            47,
            54,
            30,
            "cart pipelines 30 Redis commands, each on its own connection (~1,050/s)",
        ),
        buildup(
            "node-2",
            "frontend",
            "catalog",
            54,
            62,
            2,
            "frontend to catalog without keep-alive, 2 connections per call, while the "
            "load falls (~29/s down to ~12/s)",
        ),
        buildup(
            "node-4",
            "catalog",
            "redis",
            72,
            82,
            28,
            "catalog's Redis fan-out loses reuse over 9 minutes on the node_exporter-only "
            "host (0 -> ~530/s and rising with the load): the ports run out after ~9 minutes",
            ramp_min=9,
        ),
        Fault(TRAFFIC_SPIKE, {}, 30 * M, 34 * M, {"factor": 4.0}, note="4x traffic"),
        Fault(
            DEPLOY,
            {"service": "catalog"},
            37 * M,
            41 * M,
            {"stagger_s": 30.0},
            note="rolling deploy of catalog",
        ),
        Fault(
            RECONNECT_STORM,
            {"service": "catalog"},
            37 * M,
            39 * M,
            {"duration_s": 40.0},
            note="clients reconnect to the new catalog pods, then reuse again",
        ),
        Fault(TRAFFIC_SPIKE, {}, 64 * M, 67 * M, {"factor": 3.0}, note="3x traffic"),
    ]
    return (
        85 * M,
        faults,
        "TIME_WAIT accuracy suite: eight buildups from ~2 to ~1,050 closes/s on all four hosts "
        "(three run the ports out), against two traffic spikes, a deploy's reconnect storm and "
        "a daily load curve compressed to 30 min",
    )


def _bursty() -> tuple[float, list[Fault], str]:
    # Traffic in 4-minute bursts with 4-minute quiet gaps (bursts at 0, 8, 16, 24, 32 min):
    # span partitions go silent for minutes while metrics go on. The operations' baselines
    # are learnt over the first three bursts (24 windows); the faults fall in later ones.
    faults = [
        Fault(
            BOTTLENECK_SPAN,
            {"service": "user-service", "operation": "SELECT users"},
            24.5 * M,
            28 * M,
            {"added_ms": 120.0},
            note="missing index during the fourth burst",
        ),
        Fault(
            TIME_WAIT_BUILDUP,
            {"host": "node-2"},
            32 * M,
            36 * M,
            {"connections_per_call": 1},
            evidence={"service": "frontend", "destination": "cart"},
            note="frontend on node-2 stops reusing connections to cart in the fifth burst",
        ),
        Fault(
            MEMORY_LEAK,
            {"service": "checkout", "instance": "checkout#0"},
            4 * M,
            40 * M,
            {"rate_pct_limit_per_hour": 120.0},
            note="Java old-gen floor grows 120%/h, bursts or not",
        ),
    ]
    return 40 * M, faults, (
        "uneven traffic: 4-minute bursts with 4-minute quiet gaps, for replay-speed checks"
    )


def _errors() -> tuple[float, list[Fault], str]:
    # The error-origin accuracy suite: 20 healthy minutes (the background error rates of normal
    # traffic give the baselines), then 4-minute windows 3 minutes apart, faults alternating
    # with the look-alikes. Calls/s below at 50 requests/s (default topology).
    def origin(service: str, op: str, start: float, rate: float, note: str) -> Fault:
        entity = {"service": service, "operation": op}
        return Fault(ERROR_ORIGIN, entity, start * M, (start + 4) * M, {"error_rate": rate},
                     note=note)

    def lookalike(kind: str, service: str, op: str, start: float, rate: float,
                  note: str) -> Fault:
        entity = {"service": service, "operation": op}
        return Fault(kind, entity, start * M, (start + 4) * M, {"rate": rate}, note=note)

    faults = [
        origin("user-service", "SELECT users", 20, 0.3,
               "users query times out: the database call fails, user-service, then frontend "
               "(home page) and checkout -> frontend fail with it (~27 calls/s)"),
        lookalike(CLIENT_4XX, "frontend", "GET /products/{id}", 27, 0.2,
                  "links to withdrawn products: catalog answers 404 (UNSET), frontend's client "
                  "span is ERROR, frontend shows a not-found page (200)"),
        origin("payment", "INSERT payments", 34, 0.3,
               "payments table locked: the deepest call fails, through payment, checkout and "
               "frontend (~5 calls/s)"),
        lookalike(FLAKY_RETRY, "frontend", "GET /cart", 41, 0.3,
                  "a cart replica sheds load: 503, frontend retries at once and succeeds"),
        origin("checkout", "POST /checkout", 48, 0.2,
               "a bad checkout release: its handler raises mid-chain, after its calls "
               "succeeded (~5 calls/s)"),
        origin("catalog", "GET /products/{id}", 55, 0.1,
               "product page handler raises on some products (~12 calls/s)"),
        lookalike(FLAKY_RETRY, "checkout", "POST /charge", 62, 0.25,
                  "payment restarts a pod: 503, checkout retries the charge once and succeeds"),
        origin("cart", "HGETALL", 69, 0.5,
               "Redis connection resets: cart's HGETALL fails half the time (~27 calls/s)"),
        origin("payment", "POST /v1/charges", 76, 0.3,
               "the card vendor answers 502: the origin is a CLIENT span to an untraced peer "
               "(~5 calls/s)"),
        origin("frontend", "POST /api/cart", 83, 0.2,
               "the root's own handler raises (~10 calls/s): origin and root are one span"),
    ]
    return (
        90 * M,
        faults,
        "error-origin accuracy suite: seven error origins (three database or cache calls, a "
        "vendor call, a leaf service, a mid-chain and a root handler) against clients' 404s and "
        "flaky dependencies whose retries succeed",
    )


def _incidents() -> tuple[float, list[Fault], str]:
    # Problems that show as several findings each, injected as a cause and its knock-on faults
    # that share an ``incident`` name (the incident scorer wants each group in one incident,
    # rooted at its cause), beside an unrelated fault at the same time that must stay apart.
    # 20 healthy minutes first (the latency and error baselines).
    faults = [
        *(Fault(BOTTLENECK_SPAN, {"service": svc, "operation": op}, 22 * M, 28 * M,
                {"added_ms": 60.0}, note=f"Redis is slow: every command, {svc}'s {op} too",
                incident="slow-redis", incident_root={"service": "redis"})
          for svc, op in (("cart", "HGETALL"), ("cart", "HSET"), ("cart", "EXPIRE"),
                          ("catalog", "GET"))),
        Fault(ERROR_ORIGIN, {"service": "payment", "operation": "INSERT payments"}, 24 * M,
              28 * M, {"error_rate": 0.3},
              note="meanwhile, unrelated: the payments table is locked"),
        Fault(MEMORY_LEAK, {"service": "checkout", "instance": "checkout#0"}, 32 * M, 75 * M,
              {"rate_pct_limit_per_hour": 240.0}, note="checkout#0 leaks...",
              incident="checkout-leak"),
        Fault(GC_PRESSURE, {"service": "checkout", "instance": "checkout#0"}, 50 * M, 58 * M,
              {"gc_time_fraction": 0.2}, note="...and its collector works ever harder",
              incident="checkout-leak"),
        Fault(TIME_WAIT_BUILDUP, {"host": "node-2"}, 60 * M, 70 * M,
              {"connections_per_call": 1}, evidence={"service": "frontend", "destination": "cart"},
              note="frontend on node-2 opens a connection per call to cart...",
              incident="port-churn"),
        Fault(ERROR_ORIGIN, {"service": "frontend", "operation": "POST /api/cart"}, 63 * M,
              70 * M, {"error_rate": 0.2},
              note="...and its cart handler fails when it cannot get one",
              incident="port-churn"),
    ]
    return (
        75 * M,
        faults,
        "incident suite: a slow cache under two callers, a leak with its GC pressure, port "
        "churn with its client's failures, each one problem, and an unrelated failure beside",
    )


def _negatives() -> tuple[float, list[Fault], str]:
    faults = [
        Fault(GLOBAL_SLOWDOWN, {}, 5 * M, 10 * M, {"factor": 1.6}, note="everything slower"),
        Fault(
            HEAD_SAMPLING,
            {},
            10 * M,
            15 * M,
            {"keep": 0.1},
            note="Collector probabilistic sampler at 10%",
        ),
        Fault(TRAFFIC_SPIKE, {}, 15 * M, 20 * M, {"factor": 4.0}, note="4x traffic"),
        Fault(
            MISSING_SPANS,
            {},
            40 * M,
            45 * M,
            {"drop": 0.05},
            note="5% of spans lost in transit",
        ),
        Fault(
            GC_SAWTOOTH,
            {"service": "catalog", "instance": "catalog#1"},
            0,
            60 * M,
            {"alloc_factor": 3.0},
            note="steep healthy sawtooth",
        ),
        Fault(
            CACHE_WARMUP,
            {"service": "cart", "instance": "cart#0"},
            20 * M,
            40 * M,
            {"rise_pct_limit": 15.0, "tau_s": 240.0},
            note="cache warm-up",
        ),
        Fault(
            RESTART,
            {"service": "checkout", "instance": "checkout#1"},
            25 * M,
            30 * M,
            note="container restart",
        ),
        Fault(
            DEPLOY,
            {"service": "user-service"},
            35 * M,
            40 * M,
            {"stagger_s": 30.0},
            note="rolling deploy",
        ),
        Fault(
            RECONNECT_STORM,
            {"service": "user-service"},
            35 * M,
            37 * M,
            {"duration_s": 40.0},
            note="reconnect after deploy",
        ),
        Fault(
            CLOCK_SKEW,
            {"service": "payment"},
            0,
            60 * M,
            {"offset_ms": 500.0},
            note="payment's clock runs 500 ms ahead",
        ),
        Fault(
            RESTART,
            {"service": "frontend", "instance": "frontend#0"},
            45 * M,
            50 * M,
            {"new_instance_id": True},
            note="restart with a fresh random service.instance.id",
        ),
        Fault(
            GLOBAL_SLOWDOWN,
            {"service": "catalog"},
            50 * M,
            55 * M,
            {"factor": 2.0},
            note="catalog CPU-throttled",
        ),
    ]
    return 60 * M, faults, "every hard negative and no fault"


PRESETS: dict[str, Callable[[], tuple[float, list[Fault], str]]] = {
    "demo": _demo,
    "healthy": _healthy,
    "bottleneck": _bottleneck,
    "leak": _leak,
    "timewait": _timewait,
    "negatives": _negatives,
    "bursty": _bursty,
    "errors": _errors,
    "incidents": _incidents,
}

#: Scenario fields a preset sets (overrides still win).
PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "leak": {"emit_spans": False},
    # A "day" of 30 min at +-50%: the rate goes 25 -> 75 -> 25 requests/s three times in the run
    "timewait": {"daily_period_s": 1800.0, "daily_amplitude": 0.5},
    "bursty": {"burst_on_s": 240.0, "burst_off_s": 240.0, "rate": 30.0},
    "incidents": {"rate": 30.0},
}

_FIELDS = {
    "rate",
    "sample_ratio",
    "metric_interval_s",
    "daily_amplitude",
    "daily_period_s",
    "burst_on_s",
    "burst_off_s",
    "peak_hour_utc",
    "encoding",
    "keying",
    "spans_topic",
    "metrics_topic",
    "max_spans_per_record",
    "emit_spans",
    "topology",
    "description",
}


def build_scenario(name: str = "demo", seed: int = 1, **overrides: Any) -> Scenario:
    """A preset by name, with overrides.

    Overrides: ``duration`` (``"20m"``, seconds), ``start`` (RFC 3339, Unix ns, or ``"now"``;
    default the fixed replay start), ``faults`` (replace the preset's), ``extra_faults``
    (added; ``Fault`` objects or ``--fault`` spec strings), and any ``Scenario`` field in
    ``_FIELDS``. ``None`` values are ignored, so argparse results can be passed straight in.

    >>> sc = build_scenario("demo", seed=7, duration="5m", rate=20)
    >>> sc.duration_s, sc.rate, all(f.start_s < 300 for f in sc.faults)
    (300.0, 20, True)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    default_duration, faults, description = PRESETS[name]()
    duration_s = parse_duration(given.pop("duration", given.pop("duration_s", default_duration)))
    start = given.pop("start", DEFAULT_REPLAY_START)
    start_ns = (time.time_ns() // 10**9) * 10**9 if start == "now" else parse_time_ns(start)
    given = {**PRESET_SETTINGS.get(name, {}), **given}
    if "faults" in given:
        faults = list(_as_faults(given.pop("faults")))
    faults += _as_faults(given.pop("extra_faults", ()))
    unknown = set(given) - _FIELDS
    if unknown:
        raise ValueError(
            f"unknown scenario override(s) {sorted(unknown)}; known: duration, start, faults, "
            f"extra_faults, {', '.join(sorted(_FIELDS))}"
        )
    clipped = tuple(c for f in faults if (c := f.clipped(duration_s)) is not None)
    given.setdefault("description", description)
    given.setdefault("topology", default_topology())
    return Scenario(
        name=name, seed=int(seed), start_ns=start_ns, duration_s=duration_s, faults=clipped, **given
    )


def _as_faults(items: Iterable[Fault | str]) -> list[Fault]:
    return [parse_fault(f) if isinstance(f, str) else f for f in items]


def with_faults(scenario: Scenario, faults: Iterable[Fault]) -> Scenario:
    """The same scenario with a different fault list (a fresh plan is computed)."""
    return replace(scenario, faults=tuple(faults))


def leaf_call(topology: Topology, service: str, operation: str) -> LeafCall:
    """The downstream call a bottleneck targets (first match)."""
    for ep in topology.service(service).endpoints:
        for step in ep.steps:
            for call in step:
                if isinstance(call, LeafCall) and call.name == operation:
                    return call
    raise KeyError(f"{service} makes no downstream call named {operation!r}")

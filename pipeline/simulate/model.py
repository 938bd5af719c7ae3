"""The traffic model: requests, traces, heaps and TCP connections, one event-time tick at a time.

Pure and deterministic: everything random comes from numpy Generators seeded from the scenario
seed (one independent stream per concern, so that e.g. changing the sampling ratio or adding a
fault to one service leaves other streams alone), and nothing reads the wall clock.

Each tick (one second of event time):

1. Lifecycle: replicas whose next incarnation starts now (restart, deploy, OOM kill from the
   plan in ``lifecycle.py``) get a new resource and a reset heap.
2. Faults: windows that opened or closed change per-operation latency, per-service clock offset,
   the request rate, connection reuse and what is emitted (head sampling, lost spans).
3. Traffic: a Poisson number of requests (baseline rate x daily sinusoid x spikes), each a full
   trace: entry SERVER span, CLIENT spans to databases, caches, vendors and other services
   (whose SERVER span is the client span's child), INTERNAL work, parallel fan-out steps.
   Latencies are lognormal per operation. With ``emit_spans`` off (metrics-only scenarios) the
   same routing is drawn in the same order, so request and call counts (and so heaps, GC and
   TCP) are exactly those of the full run, but no span, id or latency is made at all.
   Head sampling keeps a trace if its id falls under the
   ratio, so every trace is generated either way and metrics do not depend on the ratio. A
   ``head_sampling`` negative does the same with the Collector's ``probabilistic_sampler``
   hash (whole traces, by trace id); a ``missing_spans`` negative then loses single non-root
   spans of the kept traces (their children keep the lost parent's id). Neither changes what the
   services did, so metrics are those of the full traffic.
4. Heaps: each instance allocates in proportion to the requests it served; minor and major
   collections produce the sawtooth, and what a major collection leaves is the live set from
   the plan (warm-ups, load-retained state and leaks included) plus noise. Under a
   ``gc_pressure`` fault each young collection (each cycle in Go) pauses for
   ``gc_time_fraction`` x the time the allocation took to fill the young area, so the process
   spends that share of its time in GC while the allocation storm makes collections frequent.
5. Connections: every client call uses a pool per (instance, destination). Pools churn a few
   connections in proportion to calls; a ``time_wait_buildup`` or reconnect storm makes calls
   open and close their own connection. The closing side holds TIME_WAIT for 60 s, so a host's
   TIME_WAIT count is the sum of its closes over the last 60 s: 60 s x close rate.
6. Output: traces whose root has finished, and metric points of every emitter whose export
   (or scrape) falls in this tick, each emitter with its own phase as in real deployments.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from itertools import accumulate

import numpy as np

from pipeline.simulate.errors import db_error, http_error, server_error, status_error
from pipeline.simulate.events import (
    GAUGE,
    HISTOGRAM,
    STATUS_ERROR,
    STATUS_UNSET,
    SUM,
    ErrorInfo,
    MetricPoint,
    ResourceInfo,
    ScopeInfo,
    SpanEvent,
    SpanTemplate,
    Tick,
)
from pipeline.simulate.faults import (
    BOTTLENECK_SPAN,
    CLIENT_4XX,
    CLOCK_SKEW,
    ERROR_ORIGIN,
    FLAKY_RETRY,
    GLOBAL_SLOWDOWN,
    HEAD_SAMPLING,
    LOAD_HEAP_GROWTH,
    MISSING_SPANS,
    RECONNECT_STORM,
    TIME_WAIT_BUILDUP,
    TRAFFIC_SPIKE,
    Fault,
)
from pipeline.simulate.lifecycle import Incarnation, SlotPlan, stable_digest
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.topology import (
    MIB,
    RUNTIMES,
    SPAN_KIND_CLIENT,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    Endpoint,
    HttpCall,
    LeafCall,
    RuntimeProfile,
    ServiceSpec,
    Topology,
    Work,
)

NS = 1_000_000_000
TIME_WAIT_S = 60  # Linux TCP_TIMEWAIT_LEN: fixed, not a sysctl
EPHEMERAL_PORTS = 60999 - 32768 + 1  # net.ipv4.ip_local_port_range default
POOL_CHURN = 0.01  # share of calls that open a new pooled connection (idle expiry, errors)
POOL_LIFETIME_S = 1800.0  # pool max lifetime: every pooled connection is recycled this often
PROBE_OPENS_PER_INSTANCE = 0.2  # kubelet liveness + readiness probes, one connection each
NETWORK_HOP_MS = 0.35
STEP_GAP_NS = 50_000  # a little scheduling time between sequential steps
GC_BOUNDS = (0.01, 0.1, 1.0, 10.0)  # semantic-convention advice for GC duration histograms
BACKGROUND_ALLOC = 1.0 * MIB  # per second per instance: timers, metrics, logging
TCP_STATES = (
    "CLOSE_WAIT",
    "CLOSE",
    "CLOSING",
    "DELETE",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "LISTEN",
    "SYN_SENT",
    "SYN_RECV",
    "TIME_WAIT",
)  # the Collector hostmetrics network scraper's list, in its order

WARMUP_S = 60
LEAF, HTTP, WORK = 0, 1, 2
#: A background failure of a downstream call propagates to the caller (its handler fails too)
#: with this probability per level; otherwise the caller handles it (a fallback, a default
#: value). An injected ``error_origin`` always propagates.
PROPAGATE = 0.7
#: Failure levels a call returns: none, a background failure the caller may absorb, an injected
#: fault's (always propagates).
OK, FAILED, FAULT = 0, 1, 2

#: The Collector probabilistic_sampler's hash_seed mode: FNV-1a (32 bit) over the seed's four
#: little-endian bytes, then the 16 trace id bytes; the low 14 bits pick one of 16384 buckets and
#: a trace is kept if its bucket is below ``sampling_percentage`` x 16384 / 100.
SAMPLER_HASH_BUCKETS = 0x4000
_FNV32_OFFSET, _FNV32_PRIME = 0x811C9DC5, 0x01000193


def _either(p: float, q: float) -> float:
    """Probability that either of two independent causes happens (faults that overlap)."""
    return 1.0 - (1.0 - p) * (1.0 - q)


def sampler_threshold(keep: float) -> int:
    """Buckets kept for a ``keep`` share (``sampling_percentage`` = 100 x keep)."""
    return int(keep * 100.0 * (SAMPLER_HASH_BUCKETS / 100.0))


def sampler_hash(trace_id: bytes, seed: int = 0) -> int:
    """``computeHash(traceID, hashSeed)`` of the Collector's probabilistic sampler (FNV-1a).

    >>> sampler_hash(b"", 0) & 0x3FFF, sampler_hash(bytes(16), 0) & 0x3FFF  # its test vectors
    (13589, 9301)
    """
    h = _FNV32_OFFSET
    for b in (seed & 0xFFFFFFFF).to_bytes(4, "little") + trace_id:
        h = ((h ^ b) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def sampler_keeps(trace_id: bytes, threshold: int, seed: int = 0) -> bool:
    """Whether the hash_seed-mode sampler keeps the trace (``threshold`` from sampler_threshold)."""
    return sampler_hash(trace_id, seed) & (SAMPLER_HASH_BUCKETS - 1) < threshold


class _Draws:
    """Floats drawn from a numpy Generator in blocks: per-call numpy overhead would dominate."""

    __slots__ = ("_draw", "_buf", "_i")

    def __init__(self, draw: Callable[[int], np.ndarray]) -> None:
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._buf = self._draw(65536).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]


class _Ids:
    """Trace and span ids as raw bytes, sliced from a block of generator bytes."""

    __slots__ = ("_rng", "_buf", "_i")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf = b""
        self._i = 0

    def take(self, n: int) -> bytes:
        i = self._i
        if i + n > len(self._buf):
            self._buf = self._rng.bytes(1 << 18)
            i = 0
        self._i = i + n
        return self._buf[i : i + n]


class _Ep:
    """A compiled endpoint; ``slow`` and ``skew_ns`` are set by the active faults."""

    __slots__ = (
        "service",
        "template",
        "median_ns",
        "sigma",
        "error_rate",
        "steps",
        "slow",
        "skew_ns",
        "instances",
        "own_error",
        "fault_rate",
        "fault_error",
    )

    def __init__(self, service: str, template: SpanTemplate, ep: Endpoint) -> None:
        self.service = service
        self.template = template
        self.median_ns = ep.self_ms * 1e6
        self.sigma = ep.sigma
        self.error_rate = ep.error_rate
        self.steps: list[list[_Call]] = []
        self.slow = 1.0
        self.skew_ns = 0
        self.instances: list[_Instance] = []
        self.own_error: ErrorInfo | None = None  # a background failure of the handler
        self.fault_rate = 0.0  # error_origin on this endpoint
        self.fault_error: ErrorInfo | None = None


class _Call:
    """A compiled call of an endpoint (leaf client span, HTTP call or internal work).

    ``error`` is what the call's own span carries when it fails, ``raises`` what the caller's
    handler then raises (the same driver exception for a database call; the HTTP client code's
    exception for an error response); ``fault_*`` are set by an ``error_origin`` on a leaf call,
    ``reject_*`` by a ``client_4xx`` and ``flaky_rate`` by a ``flaky_retry`` on an HTTP call.
    """

    __slots__ = (
        "kind",
        "service",
        "name",
        "template",
        "median_ns",
        "sigma",
        "error_rate",
        "error_message",
        "probability",
        "destination",
        "address",
        "target",
        "slow",
        "add_ns",
        "skew_ns",
        "http_leaf",
        "error_status",
        "error",
        "raises",
        "fault_rate",
        "fault_error",
        "fault_raises",
        "reject_rate",
        "reject_status",
        "flaky_rate",
        "retry_template",
    )

    def __init__(
        self,
        kind: int,
        service: str,
        name: str,
        template: SpanTemplate,
        median_ms: float,
        sigma: float,
        error_rate: float,
        error_message: str,
        probability: float,
        destination: str,
        address: str,
    ) -> None:
        self.kind = kind
        self.service = service
        self.name = name
        self.template = template
        self.median_ns = median_ms * 1e6
        self.sigma = sigma
        self.error_rate = error_rate
        self.error_message = error_message
        self.probability = probability
        self.destination = destination
        self.address = address
        self.target: _Ep | None = None
        self.slow = 1.0
        self.add_ns = 0.0
        self.skew_ns = 0
        self.http_leaf = False  # a vendor HTTP API: status codes, no driver exception
        self.error_status = 0
        self.error: ErrorInfo | None = None
        self.raises: ErrorInfo | None = None
        self.fault_rate = 0.0
        self.fault_error: ErrorInfo | None = None
        self.fault_raises: ErrorInfo | None = None
        self.reject_rate = 0.0
        self.reject_status = 404
        self.flaky_rate = 0.0
        self.retry_template: SpanTemplate | None = None


class _Pool:
    """Client connections of one instance to one destination."""

    __slots__ = (
        "destination",
        "address",
        "server",
        "latency_s",
        "min_idle",
        "rate",
        "size",
        "no_reuse",
        "ramp",
        "inflight",
    )

    def __init__(
        self, destination: str, server: str | None, latency_s: float, min_idle: int
    ) -> None:
        self.destination = destination
        self.address = destination.rsplit(":", 1)[0]
        self.server = server  # simulated service behind it (its hosts see the server side)
        self.latency_s = latency_s
        self.min_idle = min_idle
        self.rate = 0.0  # calls/s, smoothed
        self.size = min_idle
        self.no_reuse = 0  # connections per call while reuse is off (fault or storm)
        # (start_s, ramp_s): reuse is lost progressively, the share of calls without it rising
        # linearly from 0 to 1 over ramp_s (a pool leaking connections, a rollout)
        self.ramp: tuple[float, float] | None = None
        self.inflight = 0.0


class _Heap:
    """GC state of one process; reset on every (re)start."""

    __slots__ = (
        "young",
        "garbage",
        "floor",
        "old_after_gc",
        "survivor",
        "survivor_after_gc",
        "allocated",
        "goal",
        "gen_acc",
        "collections",
        "hist",
        "alloc_rate",
    )

    def __init__(self, live: float, profile: RuntimeProfile) -> None:
        self.young = 0.0
        self.garbage = 0.0
        self.floor = live
        self.old_after_gc = live
        self.survivor = 0.0
        self.survivor_after_gc = 0.0
        self.allocated = 0.0
        self.goal = max(live * profile.gc_goal_factor, live + 4 * MIB)
        self.gen_acc = 0.0
        self.collections = [0, 0, 0]  # CPython generations 0, 1, 2
        self.hist: dict[str, list] = {}  # GC kind -> [bucket counts, count, sum, min, max]
        self.alloc_rate = 0.0  # bytes/s, smoothed over ~20 s


def _stagger_heap(heap: _Heap, p: RuntimeProfile, d: bytes) -> None:
    """Start a long-running process somewhere inside its GC cycles, so that instances are not
    in lockstep at the start of a run."""
    live, limit = heap.floor, float(p.limit_bytes)
    u1, u2 = d[0] / 255.0, d[1] / 255.0
    if p.runtime == "java":
        heap.garbage = u1 * max(p.major_trigger_fraction * limit - live, 0.08 * limit)
    elif p.runtime == "nodejs":
        heap.garbage = u1 * max(live * (p.gc_goal_factor - 1.0), 32 * MIB)
    elif p.runtime == "go":
        heap.young = u1 * (heap.goal - live)
    heap.young = heap.young or u2 * p.young_bytes
    heap.old_after_gc = live + heap.garbage


class _Instance:
    __slots__ = (
        "plan",
        "spec",
        "profile",
        "host",
        "inc",
        "inc_index",
        "resource",
        "requests",
        "calls",
        "pools",
        "heap",
        "phase",
        "skew_ns",
        "scope",
    )

    def __init__(self, plan: SlotPlan, spec: ServiceSpec, host: _Host, phase: int) -> None:
        self.plan = plan
        self.spec = spec
        self.profile = RUNTIMES[spec.runtime]
        self.host = host
        self.inc: Incarnation = plan.incarnations[0]
        self.inc_index = 0
        self.resource = self.inc.resource
        self.requests = 0
        self.calls: dict[str, int] = {}
        self.pools: dict[str, _Pool] = {}
        self.heap = _Heap(plan.live_bytes(0.0, self.inc.start_s), self.profile)
        self.phase = phase
        self.skew_ns = 0
        self.scope = ScopeInfo(self.profile.scope, "2.10.0")


class _Host:
    __slots__ = (
        "name",
        "style",
        "spec_est",
        "spec_listen",
        "closes",
        "closes_sum",
        "opens",
        "extra_closes",
        "active_opens",
        "boot_ns",
        "phase",
        "prom_phase",
        "instances",
        "resource",
        "prom_resource",
        "established",
    )

    def __init__(
        self,
        name: str,
        style: str,
        est: int,
        listen: int,
        boot_ns: int,
        active_opens: int,
        phase: int,
        prom_phase: int,
    ) -> None:
        self.name = name
        self.style = style
        self.spec_est = est
        self.spec_listen = listen
        self.closes: deque[int] = deque([0] * TIME_WAIT_S, maxlen=TIME_WAIT_S)
        self.closes_sum = 0
        self.opens = 0  # this tick
        self.extra_closes = 0  # pools torn down this tick (closed and reopened)
        self.active_opens = active_opens
        self.boot_ns = boot_ns
        self.phase = phase
        self.prom_phase = prom_phase
        self.instances: list[_Instance] = []
        self.established = 0.0
        self.resource = ResourceInfo(
            (("host.name", name), ("os.type", "linux"), ("host.arch", "amd64"))
        )
        self.prom_resource = ResourceInfo(
            (
                ("service.name", "node-exporter"),
                ("service.instance.id", f"{name}:9100"),
                ("server.address", name),
                ("server.port", "9100"),
                ("url.scheme", "http"),
                ("host.name", name),
            )
        )

    def close(self, n: int) -> None:
        """Record this tick's actively closed connections (they sit in TIME_WAIT for 60 s)."""
        self.closes_sum += n - self.closes[0]
        self.closes.append(n)

    @property
    def time_wait(self) -> int:
        return self.closes_sum


HOSTMETRICS_SCOPE = ScopeInfo(
    "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/hostmetricsreceiver/"
    "internal/scraper/networkscraper",
    "0.116.0",
)
PROMETHEUS_SCOPE = ScopeInfo(
    "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/prometheusreceiver",
    "0.116.0",
)


class Simulator:
    """Generates a scenario's telemetry tick by tick: ``for tick in Simulator(sc).ticks()``."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.topology: Topology = scenario.topology
        # Children of a SeedSequence depend only on their index: adding a stream at the end
        # leaves the others (and so every existing scenario's bytes) as they were.
        seeds = np.random.SeedSequence(scenario.seed).spawn(8)
        traffic, latency, ids, memory, network, routing, loss, errors = (
            np.random.default_rng(s) for s in seeds
        )
        self._traffic = traffic
        self._normal = _Draws(latency.standard_normal)
        self._uniform = _Draws(routing.random)
        self._mem_normal = _Draws(memory.standard_normal)
        self._net = network
        self._ids = _Ids(ids)
        self._loss = _Draws(loss.random)  # drawn only while spans are being lost
        # Drawn only while an error fault or look-alike is active (error_origin, client_4xx,
        # flaky_retry), so that adding one leaves every other draw of the run as it was.
        self._errs = _Draws(errors.random)
        self._fault_errors: dict[tuple[str, str, str, str, str], ErrorInfo] = {}
        # Active emission negatives: head samplers (root service or None, threshold, hash seed)
        # and the loss probability of each service's spans.
        self._samplers: list[tuple[str | None, int, int]] = []
        self._span_loss: dict[str, float] = {}
        self._pending: list[tuple[int, int, list[SpanEvent]]] = []
        self._seq = 0
        self._active: tuple[int, ...] | None = None
        self._rate_factor = 1.0
        self._storms_started: set[int] = set()
        self._sample_below = (
            None if scenario.sample_ratio >= 1.0 else int(scenario.sample_ratio * 2**64)
        )
        self._build()

    # -- construction ---------------------------------------------------------------------

    def _build(self) -> None:
        sc, topo = self.scenario, self.topology
        interval = sc.metric_interval_s
        self.hosts: dict[str, _Host] = {}
        for h in topo.hosts:
            d = stable_digest(sc.seed, "host", h.name)
            uptime_s = 86400 * (10 + d[0] % 30)
            self.hosts[h.name] = _Host(
                h.name,
                h.metrics_style,
                h.baseline_established,
                h.baseline_listen,
                boot_ns=sc.start_ns - uptime_s * NS,
                active_opens=int(uptime_s * (20 + d[1])),
                phase=d[2] % interval,
                prom_phase=d[3] % interval,
            )
        self.instances: list[_Instance] = []
        self.by_service: dict[str, list[_Instance]] = {s.name: [] for s in topo.services}
        for service, replica, host in topo.slots():
            plan = sc.plan.slot_of(service, replica)
            phase = stable_digest(sc.seed, "phase", service, replica)[0] % interval
            inst = _Instance(plan, topo.service(service), self.hosts[host], phase)
            _stagger_heap(inst.heap, inst.profile, stable_digest(sc.seed, "heap", service, replica))
            self.instances.append(inst)
            self.by_service[service].append(inst)
            self.hosts[host].instances.append(inst)

        self._eps: dict[tuple[str, str], _Ep] = {}
        self._calls: list[_Call] = []
        self._scopes: dict[tuple[str, str], ScopeInfo] = {}
        for spec in topo.services:
            profile = RUNTIMES[spec.runtime]
            server_scope = self._scope(profile.server_scope, "1.0.0")
            for ep in spec.endpoints:
                attrs = (
                    ("http.request.method", ep.method),
                    ("http.route", ep.route),
                    ("url.scheme", "http"),
                    ("server.address", spec.name),
                    ("server.port", spec.port),
                    ("network.protocol.version", "1.1"),
                )
                tmpl = SpanTemplate(ep.name, SPAN_KIND_SERVER, server_scope, attrs, spec.name)
                cep = _Ep(spec.name, tmpl, ep)
                cep.instances = self.by_service[spec.name]
                cep.own_error = server_error(spec.runtime, spec.name, ep.name, transient=True)
                self._eps[(spec.name, ep.name)] = cep
        for spec in topo.services:
            profile = RUNTIMES[spec.runtime]
            scopes = {
                "http": self._scope(profile.http_client_scope, "1.0.0"),
                "postgres": self._scope(profile.db_scope, "1.0.0"),
                "redis": self._scope(profile.cache_scope, "1.0.0"),
                "work": self._scope(spec.name, spec.version),
            }
            for ep in spec.endpoints:
                cep = self._eps[(spec.name, ep.name)]
                for step in ep.steps:
                    cep.steps.append([self._compile_call(spec, ep.name, c, scopes) for c in step])
            for inst in self.by_service[spec.name]:
                for call in self._calls:
                    if call.service == spec.name and call.destination:
                        inst.pools.setdefault(call.destination, self._new_pool(call))

        entries = [
            (self._eps[(s.name, ep.name)], ep.weight)
            for s in topo.services
            if s.entry
            for ep in s.endpoints
            if ep.weight > 0
        ]
        total = sum(w for _, w in entries)
        self._entry_eps = [e for e, _ in entries]
        self._entry_cum = [c / total for c in accumulate(w for _, w in entries)]

    def _scope(self, name: str, version: str) -> ScopeInfo:
        """One ScopeInfo per (name, version): scopes group by identity in the encoder."""
        scope = self._scopes.get((name, version))
        if scope is None:
            scope = self._scopes[(name, version)] = ScopeInfo(name, version)
        return scope

    def _compile_call(
        self,
        spec: ServiceSpec,
        handler: str,
        call: LeafCall | HttpCall | Work,
        scopes: dict[str, ScopeInfo],
    ) -> _Call:
        """``call`` made by ``spec``'s endpoint ``handler`` (whose span an exception escaping
        the call is recorded on)."""
        if isinstance(call, LeafCall):
            system = dict(call.attributes).get("db.system")
            scope = scopes[
                "postgres" if system == "postgresql" else "redis" if system == "redis" else "http"
            ]
            tmpl = SpanTemplate(call.name, SPAN_KIND_CLIENT, scope, call.attributes, spec.name)
            c = _Call(
                LEAF,
                spec.name,
                call.name,
                tmpl,
                call.latency_ms,
                call.sigma,
                call.error_rate,
                call.error_message,
                call.probability,
                call.destination,
                call.address,
            )
            attrs = dict(call.attributes)
            method = attrs.get("http.request.method")
            if method:
                c.http_leaf, c.error_status = True, call.error_status
                c.error = status_error(call.error_status)
                url = str(attrs.get("url.full", call.address))
                c.raises = http_error(
                    spec.runtime, spec.name, handler, str(method), url, call.error_status
                )
            else:
                c.error = c.raises = db_error(spec.runtime, str(system), spec.name, handler)
            c.fault_error, c.fault_raises = c.error, c.raises
        elif isinstance(call, HttpCall):
            target = self.topology.service(call.service)
            method, _, route = call.endpoint.partition(" ")
            attrs = (
                ("http.request.method", method),
                ("server.address", target.name),
                ("server.port", target.port),
                ("url.template", route),
                ("url.full", f"http://{target.name}:{target.port}{route.replace('{id}', '42')}"),
                ("peer.service", target.name),
                ("network.protocol.version", "1.1"),
            )
            tmpl = SpanTemplate(call.endpoint, SPAN_KIND_CLIENT, scopes["http"], attrs, spec.name)
            c = _Call(
                HTTP,
                spec.name,
                call.endpoint,
                tmpl,
                NETWORK_HOP_MS,
                0.3,
                0.0,
                "",
                call.probability,
                f"{target.name}:{target.port}",
                target.name,
            )
            c.target = self._eps[(target.name, call.endpoint)]
            url = str(dict(attrs)["url.full"])
            c.raises = http_error(spec.runtime, spec.name, handler, method, url, 500)
            c.retry_template = SpanTemplate(
                call.endpoint,
                SPAN_KIND_CLIENT,
                scopes["http"],
                (*attrs, ("http.request.resend_count", 1)),
                spec.name,
            )
        else:
            tmpl = SpanTemplate(call.name, SPAN_KIND_INTERNAL, scopes["work"], (), spec.name)
            c = _Call(
                WORK, spec.name, call.name, tmpl, call.latency_ms, call.sigma, 0.0, "", 1.0, "", ""
            )
        self._calls.append(c)
        return c

    def _new_pool(self, call: _Call) -> _Pool:
        if call.kind == HTTP:
            return _Pool(call.destination, call.address, 0.03, 2)
        min_idle = 4 if call.address == "postgres" else 2
        return _Pool(call.destination, None, call.median_ns / 1e9 * 1.5, min_idle)

    # -- the tick loop --------------------------------------------------------------------

    def ticks(self) -> Iterator[Tick]:
        sc = self.scenario
        n_ticks = int(math.ceil(sc.duration_s))
        # Run a minute before the start so that pools, TIME_WAIT and in-flight traces are in
        # their steady state when output begins; nothing from the warm-up is emitted.
        for k in range(-WARMUP_S, n_ticks):
            t0 = sc.start_ns + k * NS
            t_end = t0 + NS
            self._lifecycle(float(k))
            self._apply_faults(float(k))
            self._traffic_tick(k, t0)
            for inst in self.instances:
                self._heap_tick(inst, float(k + 1))
            self._network_tick(float(k))
            if k < 0:
                self._pending.clear()
                for inst in self.instances:
                    inst.requests = 0
                    inst.calls.clear()
                continue
            traces = []
            pending = self._pending
            while pending and pending[0][0] <= t_end:
                traces.append(heapq.heappop(pending)[2])
            metrics = self._metrics(k + 1, t_end)
            for inst in self.instances:
                inst.requests = 0
                inst.calls.clear()
            yield Tick(k, t_end, traces, metrics)

    def _lifecycle(self, t_s: float) -> None:
        for inst in self.instances:
            incs = inst.plan.incarnations
            j = inst.inc_index
            while j + 1 < len(incs) and incs[j + 1].start_s <= t_s:
                j += 1
            if j != inst.inc_index:
                inst.inc_index = j
                inst.inc = incs[j]
                inst.resource = inst.inc.resource
                inst.heap = _Heap(inst.plan.live_bytes(t_s, inst.inc.start_s), inst.profile)
                for pool in inst.pools.values():  # a new process opens its pools afresh
                    pool.size = pool.min_idle

    def _apply_faults(self, t_s: float) -> None:
        faults = self.scenario.faults
        active = tuple(i for i, f in enumerate(faults) if f.active(t_s))
        if active == self._active:
            return
        self._active = active
        for c in self._calls:
            c.slow, c.add_ns, c.skew_ns = 1.0, 0.0, 0
            c.fault_rate = c.reject_rate = c.flaky_rate = 0.0
        for ep in self._eps.values():
            ep.slow, ep.skew_ns = 1.0, 0
            ep.fault_rate = 0.0
        for inst in self.instances:
            inst.skew_ns = 0
            for pool in inst.pools.values():
                pool.no_reuse = 0
                pool.ramp = None
        self._rate_factor = 1.0
        self._samplers = []
        self._span_loss = {}
        for i in active:
            self._apply_fault(i, faults[i], t_s)

    def _apply_fault(self, index: int, f: Fault, t_s: float) -> None:
        svc = f.entity.get("service")
        if f.kind == TRAFFIC_SPIKE:
            self._rate_factor *= float(f.magnitude.get("factor", 4.0))
        elif f.kind == LOAD_HEAP_GROWTH:
            self._rate_factor *= float(f.magnitude.get("factor", 2.5))
        elif f.kind == GLOBAL_SLOWDOWN:
            factor = float(f.magnitude.get("factor", 1.5))
            for c in self._calls:
                if svc in (None, c.service) and c.kind != HTTP:
                    c.slow *= factor
            for ep in self._eps.values():
                if svc in (None, ep.service):
                    ep.slow *= factor
        elif f.kind == BOTTLENECK_SPAN:
            for c in self._calls:
                if c.service == svc and c.name == f.entity["operation"] and c.kind == LEAF:
                    c.add_ns += float(f.magnitude.get("added_ms", 100.0)) * 1e6
                    c.slow *= float(f.magnitude.get("factor", 1.0))
        elif f.kind == ERROR_ORIGIN:
            self._apply_error_origin(f)
        elif f.kind in (CLIENT_4XX, FLAKY_RETRY):
            rate = float(f.magnitude.get("rate", 0.2 if f.kind == CLIENT_4XX else 0.3))
            for c in self._calls:
                if c.service == svc and c.name == f.entity["operation"] and c.kind == HTTP:
                    if f.kind == CLIENT_4XX:
                        c.reject_rate = _either(c.reject_rate, rate)
                        c.reject_status = int(f.magnitude.get("status", 404))
                    else:
                        c.flaky_rate = _either(c.flaky_rate, rate)
        elif f.kind == CLOCK_SKEW:
            skew = int(float(f.magnitude.get("offset_ms", 300.0)) * 1e6)
            for c in self._calls:
                if c.service == svc:
                    c.skew_ns += skew
            for ep in self._eps.values():
                if ep.service == svc:
                    ep.skew_ns += skew
            for inst in self.by_service[svc or ""]:
                inst.skew_ns += skew
        elif f.kind == TIME_WAIT_BUILDUP:
            per_call = int(f.magnitude.get("connections_per_call", 1))
            client, dest = f.evidence.get("service"), f.evidence.get("destination")
            for inst in self.hosts[f.entity["host"]].instances:
                if client in (None, inst.spec.name):
                    for pool in inst.pools.values():
                        if dest in (None, pool.address, pool.destination):
                            pool.no_reuse = per_call
                            ramp_s = float(f.magnitude.get("ramp_s", 0.0))
                            pool.ramp = (f.start_s, ramp_s) if ramp_s > 0 else None
        elif f.kind == HEAD_SAMPLING:
            keep = float(f.magnitude.get("keep", 0.1))
            seed = int(f.magnitude.get("hash_seed", 0))
            self._samplers.append((svc, sampler_threshold(keep), seed))
        elif f.kind == MISSING_SPANS:
            drop = float(f.magnitude.get("drop", 0.05))
            for name in [svc] if svc else self.by_service:
                kept = 1.0 - self._span_loss.get(name, 0.0)
                self._span_loss[name] = 1.0 - kept * (1.0 - drop)  # independent losses combine
        elif f.kind == RECONNECT_STORM:
            storm_s = float(f.magnitude.get("duration_s", 40.0))
            first = index not in self._storms_started
            self._storms_started.add(index)
            if t_s < f.start_s + storm_s:
                for inst in self.instances:
                    pool = next((p for p in inst.pools.values() if p.server == svc), None)
                    if pool is not None:
                        pool.no_reuse = max(pool.no_reuse, 1)
                        if first:  # the old pool's connections are all closed and reopened
                            inst.host.extra_closes += pool.size
                # Re-evaluate next tick so the storm ends after duration_s.
                self._active = None

    def _apply_error_origin(self, f: Fault) -> None:
        """The endpoint or downstream call ``f`` names fails at ``error_rate``: with the
        runtime's exception (or ``exception_type`` / ``exception_message``)."""
        svc, op = f.entity["service"], f.entity["operation"]
        rate = float(f.magnitude.get("error_rate", 0.3))
        exc_type = str(f.magnitude.get("exception_type", ""))
        message = str(f.magnitude.get("exception_message", ""))
        runtime = self.topology.service(svc).runtime
        for ep in self._eps.values():
            if ep.service == svc and ep.template.name == op:
                ep.fault_rate = _either(ep.fault_rate, rate)
                key = (svc, op, "", exc_type, message)
                if key not in self._fault_errors:
                    self._fault_errors[key] = server_error(
                        runtime, svc, op, exc_type=exc_type, message=message
                    )
                ep.fault_error = self._fault_errors[key]
        for c in self._calls:
            if c.service == svc and c.name == op and c.kind == LEAF:
                c.fault_rate = _either(c.fault_rate, rate)
                c.fault_error, c.fault_raises = c.error, c.raises
                if (exc_type or message) and not c.http_leaf:
                    system = str(dict(c.template.attributes).get("db.system"))
                    key = (svc, op, system, exc_type, message)
                    if key not in self._fault_errors:
                        self._fault_errors[key] = db_error(
                            runtime, system, svc, op, exc_type=exc_type, message=message
                        )
                    c.fault_error = c.fault_raises = self._fault_errors[key]

    # -- traffic --------------------------------------------------------------------------

    def _rate(self, t_s: float) -> float:
        return self.scenario.base_rate_at(t_s) * self._rate_factor

    def _traffic_tick(self, k: int, t0: int) -> None:
        n = int(self._traffic.poisson(self._rate(float(k) + 0.5)))
        if n == 0:
            return
        offsets = self._traffic.random(n)
        uni = self._uniform.next
        eps, cum = self._entry_eps, self._entry_cum
        if not self.scenario.emit_spans:
            for _ in range(n):
                ep = eps[min(bisect_right(cum, uni()), len(eps) - 1)]
                insts = ep.instances
                self._count_serve(ep, insts[int(uni() * len(insts))])
            return
        offsets = np.sort(offsets) * NS
        take = self._ids.take
        below = self._sample_below
        samplers, loss = self._samplers, self._span_loss
        for off in offsets.tolist():
            trace_id = take(16)
            ep = eps[min(bisect_right(cum, uni()), len(eps) - 1)]
            insts = ep.instances
            inst = insts[int(uni() * len(insts))]
            spans: list[SpanEvent] = []
            end = self._serve(ep, inst, t0 + int(off), trace_id, b"", spans)[0]
            if below is not None and int.from_bytes(trace_id[8:], "big") >= below:
                continue
            if samplers and not all(
                svc not in (None, ep.service) or sampler_keeps(trace_id, threshold, seed)
                for svc, threshold, seed in samplers
            ):
                continue
            if loss:
                spans = self._lose_spans(spans, loss)
            self._seq += 1
            heapq.heappush(self._pending, (end, self._seq, spans))

    def _count_serve(self, ep: _Ep, inst: _Instance, mode: int = 0) -> int:
        """``_serve`` without spans: the same uniform and error draws in the same order
        (routing, call probabilities, failures, retries), so request and call counts match a
        run with spans."""
        uni = self._uniform.next
        inst.requests += 1
        if mode == 503:
            return OK
        failure = child = OK
        for step in ep.steps:
            if len(step) == 1:
                c = step[0]
                if c.probability < 1.0 and uni() >= c.probability:
                    continue
                f = self._count_call(c, inst)
                if f == FAULT:
                    failure = FAULT
                elif f:
                    child = f
            else:
                for c in step:
                    if c.probability < 1.0 and uni() >= c.probability:
                        continue
                    uni()  # the parallel call's start offset
                    f = self._count_call(c, inst)
                    if f == FAULT:
                        failure = FAULT
                    elif f:
                        child = f
            if failure:
                break
        if not failure:
            if uni() < ep.error_rate or (child and uni() < PROPAGATE):
                failure = FAILED
            elif ep.fault_rate and self._errs.next() < ep.fault_rate:
                failure = FAULT
        return failure

    def _count_call(self, c: _Call, inst: _Instance) -> int:
        kind = c.kind
        if kind == WORK:
            return OK
        if kind == LEAF:
            failure = OK
            if self._uniform.next() < c.error_rate:
                failure = FAILED
            elif c.fault_rate and self._errs.next() < c.fault_rate:
                failure = FAULT
            calls = inst.calls
            calls[c.destination] = calls.get(c.destination, 0) + 1
            return failure
        mode = self._http_mode(c)
        if mode == 503:
            self._count_http(c, inst, 503)
            mode = 0
        return self._count_http(c, inst, mode)

    def _count_http(self, c: _Call, inst: _Instance, mode: int) -> int:
        target = c.target
        assert target is not None
        insts = target.instances
        failure = self._count_serve(target, insts[int(self._uniform.next() * len(insts))], mode)
        calls = inst.calls
        calls[c.destination] = calls.get(c.destination, 0) + 1
        return failure

    def _http_mode(self, c: _Call) -> int:
        """How the callee answers this call under the active look-alikes: 0 (as it will), the
        ``client_4xx`` status, or 503 (``flaky_retry``: rejected, then retried)."""
        if c.reject_rate and self._errs.next() < c.reject_rate:
            return c.reject_status
        if c.flaky_rate and self._errs.next() < c.flaky_rate:
            return 503
        return 0

    def _lose_spans(self, spans: list[SpanEvent], loss: dict[str, float]) -> list[SpanEvent]:
        """The trace without the spans lost in transit; the root (last) is always kept, and the
        survivors keep their parent ids, so a lost span's children become orphans."""
        u = self._loss.next
        kept = [
            s for s in spans[:-1] if (p := loss.get(s.template.service, 0.0)) <= 0.0 or u() >= p
        ]
        kept.append(spans[-1])
        return kept

    def _serve(
        self,
        ep: _Ep,
        inst: _Instance,
        start: int,
        trace_id: bytes,
        parent: bytes,
        out: list[SpanEvent],
        mode: int = 0,
    ) -> tuple[int, int, int]:
        """``inst`` serves ``ep`` from ``start`` (true time); returns (true end, failure level,
        HTTP status).

        The handler runs its steps in order. A call that fails because of an ``error_origin``
        raises out of the handler: the remaining steps do not run and the span fails with 500
        and that exception. A background failure of a call propagates with probability
        ``PROPAGATE`` once the handler is done (the draws are those of the model before error
        faults existed, so runs without them are unchanged). Otherwise the handler may fail by
        itself (background ``error_rate``, or an ``error_origin`` on it). ``mode`` 404: the
        request is served and answered 404 (status UNSET, a client error) unless it fails;
        503: it is rejected before any work (status ERROR, no exception).
        """
        nrm, uni = self._normal.next, self._uniform.next
        span_id = self._ids.take(8)
        self_ns = ep.median_ns * math.exp(ep.sigma * nrm()) * ep.slow
        skew = ep.skew_ns
        if mode == 503:
            end = start + int(self_ns * 0.3)
            out.append(
                SpanEvent(
                    inst.resource,
                    ep.template,
                    trace_id,
                    span_id,
                    parent,
                    start + skew,
                    end + skew,
                    STATUS_ERROR,
                    "",
                    503,
                    status_error(503),
                )
            )
            inst.requests += 1
            return end, OK, 503
        t = start + int(self_ns * 0.4)
        failure, error = OK, None  # an error_origin's failure: raised at once
        child, child_error = OK, None  # the first background failure of a call
        for step in ep.steps:
            if len(step) == 1:
                c = step[0]
                if c.probability < 1.0 and uni() >= c.probability:
                    continue
                t, f, raised = self._call(c, inst, t, trace_id, span_id, out)
                if f == FAULT:
                    failure, error = FAULT, raised
                elif f and not child:
                    child, child_error = f, raised
            else:
                step_end = t
                for c in step:
                    if c.probability < 1.0 and uni() >= c.probability:
                        continue
                    # Parallel calls start together, give or take scheduling (<0.2 ms).
                    end, f, raised = self._call(
                        c, inst, t + int(uni() * 200_000), trace_id, span_id, out
                    )
                    if f == FAULT:
                        if not failure:
                            failure, error = FAULT, raised
                    elif f and not child:
                        child, child_error = f, raised
                    if end > step_end:
                        step_end = end
                t = step_end
            t += STEP_GAP_NS
            if failure:
                break
        if not failure:
            if uni() < ep.error_rate:
                failure, error = FAILED, ep.own_error
            elif child and uni() < PROPAGATE:
                failure, error = FAILED, child_error
            elif ep.fault_rate and self._errs.next() < ep.fault_rate:
                failure, error = FAULT, ep.fault_error
        end = t + int(self_ns * 0.6)
        status = 500 if failure else (mode or 200)
        out.append(
            SpanEvent(
                inst.resource,
                ep.template,
                trace_id,
                span_id,
                parent,
                start + skew,
                end + skew,
                STATUS_ERROR if failure else STATUS_UNSET,
                "",
                status,
                error,
            )
        )
        inst.requests += 1
        return end, failure, status

    def _call(
        self,
        c: _Call,
        inst: _Instance,
        start: int,
        trace_id: bytes,
        parent: bytes,
        out: list[SpanEvent],
    ) -> tuple[int, int, ErrorInfo | None]:
        """Returns (true end, failure level, what the caller's handler raises if it fails)."""
        nrm = self._normal.next
        kind = c.kind
        if kind == LEAF:
            end = start + int(c.median_ns * math.exp(c.sigma * nrm()) * c.slow + c.add_ns)
            failure, error, raised = OK, None, None
            if self._uniform.next() < c.error_rate:
                failure, error, raised = FAILED, c.error, c.raises
            elif c.fault_rate and self._errs.next() < c.fault_rate:
                failure, error, raised = FAULT, c.fault_error, c.fault_raises
            calls = inst.calls
            calls[c.destination] = calls.get(c.destination, 0) + 1
            if c.http_leaf:
                message, http_status = "", c.error_status if failure else 200
            else:
                message, http_status = c.error_message if failure else "", 0
            out.append(
                SpanEvent(
                    inst.resource,
                    c.template,
                    trace_id,
                    self._ids.take(8),
                    parent,
                    start + c.skew_ns,
                    end + c.skew_ns,
                    STATUS_ERROR if failure else STATUS_UNSET,
                    message,
                    http_status,
                    error,
                )
            )
            return end, failure, raised
        if kind == HTTP:
            template = c.template
            mode = self._http_mode(c)
            if mode == 503:  # rejected: the client retries at once, on a span of its own
                start = self._http(c, inst, start, trace_id, parent, out, 503, template)[0]
                start += STEP_GAP_NS
                mode, template = 0, c.retry_template  # type: ignore[assignment]
            end, failure = self._http(c, inst, start, trace_id, parent, out, mode, template)
            return end, failure, c.raises if failure else None
        end = start + int(c.median_ns * math.exp(c.sigma * nrm()) * c.slow)
        out.append(
            SpanEvent(
                inst.resource,
                c.template,
                trace_id,
                self._ids.take(8),
                parent,
                start + c.skew_ns,
                end + c.skew_ns,
            )
        )
        return end, OK, None

    def _http(
        self,
        c: _Call,
        inst: _Instance,
        start: int,
        trace_id: bytes,
        parent: bytes,
        out: list[SpanEvent],
        mode: int,
        template: SpanTemplate,
    ) -> tuple[int, int]:
        """One HTTP request of ``c`` (its CLIENT span and the callee's SERVER span below it);
        returns (true end, the callee's failure level). The client span is ERROR for any status
        >= 400 (a client's 4xx included), with ``error.type`` = the status code."""
        nrm = self._normal.next
        span_id = self._ids.take(8)
        target = c.target
        assert target is not None
        insts = target.instances
        callee = insts[int(self._uniform.next() * len(insts))]
        hop = c.median_ns
        s_end, failure, status = self._serve(
            target, callee, start + int(hop * math.exp(0.3 * nrm())), trace_id, span_id, out, mode
        )
        end = s_end + int(hop * math.exp(0.3 * nrm()))
        calls = inst.calls
        calls[c.destination] = calls.get(c.destination, 0) + 1
        ok = status < 400
        out.append(
            SpanEvent(
                inst.resource,
                template,
                trace_id,
                span_id,
                parent,
                start + c.skew_ns,
                end + c.skew_ns,
                STATUS_UNSET if ok else STATUS_ERROR,
                "",
                status,
                None if ok else status_error(status),
            )
        )
        return end, failure

    # -- heaps ----------------------------------------------------------------------------

    def _gc(self, heap: _Heap, kind: str, seconds: float) -> None:
        h = heap.hist.get(kind)
        if h is None:
            h = heap.hist[kind] = [[0] * (len(GC_BOUNDS) + 1), 0, 0.0, seconds, seconds]
        h[0][bisect_left(GC_BOUNDS, seconds)] += 1  # OTLP buckets are upper-inclusive
        h[1] += 1
        h[2] += seconds
        h[3] = min(h[3], seconds)
        h[4] = max(h[4], seconds)

    def _heap_tick(self, inst: _Instance, t_s: float) -> None:
        p, heap, plan = inst.profile, inst.heap, inst.plan
        nrm = self._mem_normal.next
        live = plan.live_bytes(t_s, inst.inc.start_s)
        alloc = (
            inst.requests * p.alloc_bytes_per_request * plan.alloc_factor(t_s - 1)
            + BACKGROUND_ALLOC
        ) * math.exp(0.15 * nrm())
        heap.allocated += alloc
        heap.alloc_rate += 0.05 * (alloc - heap.alloc_rate) if heap.alloc_rate else alloc
        limit = float(p.limit_bytes)
        residual = abs(nrm()) * 0.01 * limit
        pressure = plan.gc_time_fraction(t_s - 1) if plan.gc_pressure_windows else 0.0
        if p.runtime in ("java", "nodejs"):
            heap.young += alloc
            while heap.young >= p.young_bytes:
                heap.young -= p.young_bytes
                heap.garbage += p.young_bytes * p.promote_fraction * (0.8 + 0.4 * abs(nrm()))
                heap.survivor = p.young_bytes * 0.04 * math.exp(0.3 * nrm())
                heap.survivor_after_gc = heap.survivor
                # G1's young collections also report the old generation's usage after GC, so
                # the post-GC series has a sawtooth of its own: only major-GC minima are floors.
                heap.old_after_gc = live + heap.garbage
                pause = p.minor_gc_ms / 1e3 * math.exp(0.3 * nrm())
                if pressure:  # survivors of the storm are copied: the pause takes its share
                    pause = max(pause, pressure * p.young_bytes / heap.alloc_rate)
                self._gc(heap, "minor", pause)
            if p.runtime == "java":
                trigger = max(p.major_trigger_fraction * limit, live + 0.08 * limit)
            else:
                trigger = max(heap.floor * p.gc_goal_factor, live + 32 * MIB)
            if live + heap.garbage >= min(trigger, 0.98 * limit):
                heap.garbage = residual
                heap.floor = heap.old_after_gc = live + residual
                self._gc(
                    heap, "major", p.major_gc_ms / 1e3 * (1 + live / limit) * math.exp(0.3 * nrm())
                )
        elif p.runtime == "go":
            heap.young += alloc
            if live + heap.young >= heap.goal:
                heap.young = 0.0
                heap.floor = live + residual
                cycle = heap.goal - heap.floor
                heap.goal = min(
                    max(heap.floor * p.gc_goal_factor, heap.floor + 4 * MIB), 0.98 * limit
                )
                pause = p.major_gc_ms / 1e3 * math.exp(0.3 * nrm())
                if pressure:
                    pause = max(pause, pressure * max(cycle, 4 * MIB) / heap.alloc_rate)
                self._gc(heap, "major", pause)
        else:  # python: reference counting frees most; the cyclic collector handles the rest
            heap.garbage += alloc * p.promote_fraction
            heap.gen_acc += alloc / (256 * 1024)  # gen0 runs every ~700 container allocations
            gen0 = int(heap.gen_acc)
            if gen0:
                heap.gen_acc -= gen0
                before = heap.collections[0]
                heap.collections[0] += gen0
                gen1_new = heap.collections[0] // 10 - before // 10
                if gen1_new:
                    b1 = heap.collections[1]
                    heap.collections[1] += gen1_new
                    if heap.collections[1] // 10 - b1 // 10:
                        heap.collections[2] += heap.collections[1] // 10 - b1 // 10
                        heap.garbage = residual * 0.2
            heap.floor = live

    # -- connections ----------------------------------------------------------------------

    def _network_tick(self, t_s: float) -> None:
        lams: list[float] = []
        items: list[tuple[_Instance, _Pool, int]] = []
        for inst in self.instances:
            calls = inst.calls
            for pool in inst.pools.values():
                n = calls.get(pool.destination, 0)
                pool.rate += 0.1 * (n - pool.rate)
                lams.append(POOL_CHURN * n + pool.size / POOL_LIFETIME_S)
                items.append((inst, pool, n))
        for host in self.hosts.values():
            lams.append(PROBE_OPENS_PER_INSTANCE * len(host.instances))
        draws = self._net.poisson(lams).tolist()
        closes: dict[str, int] = dict.fromkeys(self.hosts, 0)
        for (inst, pool, n), churn in zip(items, draws, strict=False):
            no_reuse = pool.no_reuse * n
            if pool.ramp is not None and no_reuse:
                share = min(1.0, max(0.0, (t_s - pool.ramp[0]) / pool.ramp[1]))
                no_reuse = int(self._net.binomial(no_reuse, share)) if share < 1 else no_reuse
            opens = churn + no_reuse
            pool.size = pool.min_idle + int(pool.rate * pool.latency_s * 3 + 0.5)
            pool.inflight = pool.no_reuse * n * pool.latency_s
            closes[inst.host.name] += opens
            inst.host.opens += opens
        for host, probes in zip(self.hosts.values(), draws[len(items) :], strict=True):
            host.close(closes[host.name] + probes + host.extra_closes)
            host.active_opens += host.opens + probes + host.extra_closes
            host.opens = host.extra_closes = 0
        est = dict.fromkeys(self.hosts, 0.0)
        for inst in self.instances:
            for pool in inst.pools.values():
                est[inst.host.name] += pool.size + pool.inflight
                if pool.server is not None:
                    servers = self.by_service[pool.server]
                    share = (pool.size + pool.inflight) / len(servers)
                    for s in servers:
                        est[s.host.name] += share
        for name, host in self.hosts.items():
            host.established = est[name]

    # -- metrics --------------------------------------------------------------------------

    def _metrics(self, k_end: int, t_ns: int) -> list[MetricPoint]:
        interval = self.scenario.metric_interval_s
        out: list[MetricPoint] = []
        for inst in self.instances:
            if (k_end - inst.phase) % interval == 0:
                self._instance_metrics(inst, float(k_end), t_ns + inst.skew_ns, out)
        for host in self.hosts.values():
            if host.style in ("hostmetrics", "both") and (k_end - host.phase) % interval == 0:
                self._hostmetrics(host, t_ns, out)
            if host.style in ("prometheus", "both") and (k_end - host.prom_phase) % interval == 0:
                self._node_exporter(host, t_ns, out)
        return out

    def _instance_metrics(
        self, inst: _Instance, t_s: float, t_ns: int, out: list[MetricPoint]
    ) -> None:
        p, heap, res, scope = inst.profile, inst.heap, inst.resource, inst.scope
        start = inst.inc.start_ns + inst.skew_ns
        nrm = self._mem_normal.next
        live = inst.plan.live_bytes(t_s, inst.inc.start_s)
        limit = p.limit_bytes

        def updown(name: str, unit: str, desc: str, attrs: tuple, value: float) -> None:
            out.append(
                MetricPoint(res, scope, name, unit, desc, SUM, attrs, start, t_ns, int(value))
            )

        def hist(name: str, desc: str, names: dict[str, tuple]) -> None:
            for kind, h in sorted(heap.hist.items()):
                out.append(
                    MetricPoint(
                        res,
                        scope,
                        name,
                        "s",
                        desc,
                        HISTOGRAM,
                        names[kind],
                        start,
                        t_ns,
                        bounds=GC_BOUNDS,
                        bucket_counts=tuple(h[0]),
                        count=h[1],
                        total=h[2],
                        minimum=h[3],
                        maximum=h[4],
                    )
                )

        noise = 0.02 * inst.plan.rss_noise_factor(t_s) if inst.plan.rss_noise_windows else 0.02
        rss = (live + heap.garbage + heap.young + p.overhead_bytes) * math.exp(noise * nrm())
        if p.runtime == "java":
            old = live + heap.garbage
            pools = (
                ("G1 Eden Space", heap.young),
                ("G1 Survivor Space", heap.survivor),
                ("G1 Old Gen", old),
            )
            d = "Measure of memory used."
            for pool, used in pools:
                attrs = (("jvm.memory.type", "heap"), ("jvm.memory.pool.name", pool))
                updown("jvm.memory.used", "By", d, attrs, used)
            updown(
                "jvm.memory.used",
                "By",
                d,
                (("jvm.memory.type", "non_heap"), ("jvm.memory.pool.name", "Metaspace")),
                96 * MIB + 2 * MIB * abs(nrm()),
            )
            for pool, after in (
                ("G1 Eden Space", 0.0),
                ("G1 Survivor Space", heap.survivor_after_gc),
                ("G1 Old Gen", heap.old_after_gc),
            ):
                updown(
                    "jvm.memory.used_after_last_gc",
                    "By",
                    "Measure of memory used, as measured after the most recent garbage "
                    "collection event on this pool.",
                    (("jvm.memory.type", "heap"), ("jvm.memory.pool.name", pool)),
                    after,
                )
            updown(
                "jvm.memory.limit",
                "By",
                "Measure of max obtainable memory.",
                (("jvm.memory.type", "heap"), ("jvm.memory.pool.name", "G1 Old Gen")),
                limit,
            )
            hist(
                "jvm.gc.duration",
                "Duration of JVM garbage collection actions.",
                {
                    "minor": (
                        ("jvm.gc.name", "G1 Young Generation"),
                        ("jvm.gc.action", "end of minor GC"),
                    ),
                    "major": (
                        ("jvm.gc.name", "G1 Old Generation"),
                        ("jvm.gc.action", "end of major GC"),
                    ),
                },
            )
        elif p.runtime == "go":
            updown(
                "go.memory.used",
                "By",
                "Memory used by the Go runtime.",
                (("go.memory.type", "other"),),
                (live + heap.young) * 1.05 + 8 * MIB,
            )
            updown(
                "go.memory.used",
                "By",
                "Memory used by the Go runtime.",
                (("go.memory.type", "stack"),),
                2 * MIB + 0.5 * MIB * abs(nrm()),
            )
            updown(
                "go.memory.limit",
                "By",
                "Go runtime memory limit configured by the user, if a limit exists.",
                (),
                limit,
            )
            updown(
                "go.memory.gc.goal",
                "By",
                "Heap size target for the end of the GC cycle.",
                (),
                heap.goal,
            )
            out.append(
                MetricPoint(
                    res,
                    scope,
                    "go.memory.allocated",
                    "By",
                    "Memory allocated to the heap by the application.",
                    SUM,
                    (),
                    start,
                    t_ns,
                    int(heap.allocated),
                    monotonic=True,
                )
            )
        elif p.runtime == "python":
            for typ, v in (("rss", rss), ("vms", rss * 2.6 + 300 * MIB)):
                updown(
                    "process.runtime.cpython.memory",
                    "By",
                    "Runtime cpython memory",
                    (("type", typ),),
                    v,
                )
            for gen, n in enumerate(heap.collections):
                out.append(
                    MetricPoint(
                        res,
                        scope,
                        "cpython.gc.collections",
                        "{collection}",
                        "The number of times a generation was collected since interpreter start.",
                        SUM,
                        (("cpython.gc.generation", gen),),
                        start,
                        t_ns,
                        n,
                        monotonic=True,
                    )
                )
        else:
            spaces = (
                ("new_space", heap.young),
                ("old_space", live + heap.garbage),
                ("code_space", 6 * MIB),
                ("large_object_space", 3 * MIB + MIB * abs(nrm())),
            )
            for space, used in spaces:
                updown(
                    "v8js.memory.heap.used",
                    "By",
                    "Heap Memory size allocated.",
                    (("v8js.heap.space.name", space),),
                    used,
                )
            for space, lim in (("new_space", 2 * p.young_bytes), ("old_space", limit)):
                updown(
                    "v8js.memory.heap.limit",
                    "By",
                    "Total heap memory size pre-allocated.",
                    (("v8js.heap.space.name", space),),
                    lim,
                )
            hist(
                "v8js.gc.duration",
                "Garbage collection duration.",
                {"minor": (("v8js.gc.type", "minor"),), "major": (("v8js.gc.type", "major"),)},
            )
        if p.runtime in ("python", "nodejs"):
            updown("process.memory.usage", "By", "The amount of physical memory in use.", (), rss)

    def _hostmetrics(self, host: _Host, t_ns: int, out: list[MetricPoint]) -> None:
        for state, value in self._tcp_states(host).items():
            out.append(
                MetricPoint(
                    host.resource,
                    HOSTMETRICS_SCOPE,
                    "system.network.connections",
                    "{connections}",
                    "The number of connections.",
                    SUM,
                    (("protocol", "tcp"), ("state", state)),
                    host.boot_ns,
                    t_ns,
                    value,
                )
            )

    def _node_exporter(self, host: _Host, t_ns: int, out: list[MetricPoint]) -> None:
        states = self._tcp_states(host)
        res, scope = host.prom_resource, PROMETHEUS_SCOPE
        out.append(
            MetricPoint(
                res,
                scope,
                "node_sockstat_TCP_tw",
                "",
                "Number of TCP sockets in state tw.",
                GAUGE,
                (),
                0,
                t_ns,
                float(states["TIME_WAIT"]),
            )
        )
        out.append(
            MetricPoint(
                res,
                scope,
                "node_netstat_Tcp_ActiveOpens",
                "",
                "Statistic TcpActiveOpens.",
                SUM,
                (),
                host.boot_ns,
                t_ns,
                float(host.active_opens),
                monotonic=True,
            )
        )
        out.append(
            MetricPoint(
                res,
                scope,
                "node_netstat_Tcp_CurrEstab",
                "",
                "Statistic TcpCurrEstab.",
                GAUGE,
                (),
                0,
                t_ns,
                float(states["ESTABLISHED"] + states["CLOSE_WAIT"]),
            )
        )

    def _tcp_states(self, host: _Host) -> dict[str, int]:
        """Connection counts by state now; the small states are noise around their usual
        levels, ESTABLISHED and TIME_WAIT follow the pools and the close history."""
        small = self._net.poisson((0.6, 0.3, 0.8, 0.2, 0.1)).tolist()
        closes_per_s = host.closes_sum / TIME_WAIT_S
        counts = dict.fromkeys(TCP_STATES, 0)
        counts.update(
            {
                "ESTABLISHED": host.spec_est + int(round(host.established)) + small[0],
                "LISTEN": host.spec_listen + 2 * len(host.instances),
                "TIME_WAIT": host.time_wait,
                "CLOSE_WAIT": small[1],
                "FIN_WAIT_2": small[2] + int(closes_per_s * 0.05),
                "LAST_ACK": small[3],
                "SYN_SENT": small[4],
            }
        )
        return counts

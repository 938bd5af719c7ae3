"""Instance lifecycles and live-set sizes, planned before any traffic is generated.

Restarts, deploys and out-of-memory kills decide which ``service.instance.id``, version and
process start time are in force, and the labels must name them before the run. So both are
computed here, from the scenario alone and without randomness: the model follows the plan, and
the label writer reads the same plan, so they cannot disagree.

Identity follows Kubernetes practice. ``service.instance.id`` is derived from the pod (as the
semantic conventions recommend), so a container restart (including an OOM kill) keeps it while
``process.pid``, ``process.creation.time``, ``container.id``, ``k8s.container.restart_count``
and every cumulative metric's start time change. A deploy makes new pods: new instance ids, pod
names and ``service.version``. A ``restart`` negative with ``new_instance_id`` models SDKs that
mint a random id per process instead.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.simulate.events import ResourceInfo
from pipeline.simulate.faults import (
    CACHE_WARMUP,
    DEPLOY,
    GC_PRESSURE,
    GC_SAWTOOTH,
    LOAD_HEAP_GROWTH,
    MEMORY_LEAK,
    NOISY_RSS,
    RESTART,
    Fault,
)
from pipeline.simulate.timefmt import rfc3339
from pipeline.simulate.topology import RUNTIMES, RuntimeProfile, Topology

#: A process is killed when its live set reaches this fraction of its memory limit (before the
#: limit itself, GC thrash makes it unresponsive and the liveness probe or the kernel kills it).
OOM_FRACTION = 0.92
#: A fresh process starts with this fraction of its steady live set missing (caches, pools,
#: JIT) and fills it with this time constant: every restart is a small warm-up.
STARTUP_DEFICIT, STARTUP_TAU_S = 0.3, 90.0
DEPLOY_STAGGER_S = 30.0
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def stable_digest(*parts: object) -> bytes:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def _k8s_suffix(data: bytes, n: int) -> str:
    return "".join(_POD_ALPHABET[b % len(_POD_ALPHABET)] for b in data[:n])


def _bump_patch(version: str) -> str:
    head, _, patch = version.rpartition(".")
    return f"{head}.{int(patch) + 1}" if patch.isdigit() and head else f"{version}-1"


@dataclass(frozen=True, eq=False)
class Incarnation:
    """One process lifetime of one replica slot (``service#replica``)."""

    service: str
    replica: int
    host: str
    runtime: str
    generation: int  # deploys so far
    restart_count: int  # container restarts in this pod
    instance_id: str
    pod: str
    version: str
    pid: int
    container_id: str
    start_s: float  # event time from the scenario start; negative: started before the run
    start_ns: int
    reason: str  # initial | restart | oom | deploy
    resource: ResourceInfo

    @property
    def slot(self) -> str:
        return f"{self.service}#{self.replica}"


@dataclass
class Warmup:
    start_s: float
    rise_bytes: float
    tau_s: float


@dataclass
class Leak:
    start_s: float
    end_s: float
    rate_bytes_per_s: float


@dataclass
class LoadGrowth:
    """State retained per request while the traffic is up: the live set approaches
    ``rise_bytes`` with time constant ``tau_s`` from ``start_s``, and from ``end_s`` (traffic
    back to normal) decays back with the same time constant as sessions expire."""

    start_s: float
    end_s: float
    rise_bytes: float
    tau_s: float

    def extra_bytes(self, t_s: float, since_s: float) -> float:
        start = max(self.start_s, since_s)  # a process started mid-window retains from then
        if t_s <= start:
            return 0.0
        peak = self.rise_bytes * (1.0 - math.exp(-(min(t_s, self.end_s) - start) / self.tau_s))
        if t_s <= self.end_s:
            return peak
        return peak * math.exp(-(t_s - self.end_s) / self.tau_s)


@dataclass
class SlotPlan:
    """Everything about one replica slot that does not depend on traffic."""

    service: str
    replica: int
    host: str
    profile: RuntimeProfile
    base_live_bytes: float
    incarnations: list[Incarnation] = field(default_factory=list)
    warmups: list[Warmup] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    load_growths: list[LoadGrowth] = field(default_factory=list)
    alloc_windows: list[tuple[float, float, float]] = field(default_factory=list)
    #: (start, end, share of time spent in GC) of ``gc_pressure`` faults
    gc_pressure_windows: list[tuple[float, float, float]] = field(default_factory=list)
    #: (start, end, factor on the RSS noise) of ``noisy_rss`` negatives
    rss_noise_windows: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def slot(self) -> str:
        return f"{self.service}#{self.replica}"

    @property
    def limit_bytes(self) -> float:
        return float(self.profile.limit_bytes)

    @property
    def oom_threshold_bytes(self) -> float:
        return OOM_FRACTION * self.profile.limit_bytes

    def incarnation_at(self, t_s: float) -> Incarnation:
        current = self.incarnations[0]
        for inc in self.incarnations:
            if inc.start_s <= t_s:
                current = inc
            else:
                break
        return current

    def live_bytes(self, t_s: float, since_s: float) -> float:
        """Live set at ``t_s`` of a process started at ``since_s`` (what a full GC leaves)."""
        age = t_s - since_s
        live = self.base_live_bytes * (1.0 - STARTUP_DEFICIT * math.exp(-age / STARTUP_TAU_S))
        for w in self.warmups:
            if since_s <= w.start_s <= t_s:
                live += w.rise_bytes * (1.0 - math.exp(-(t_s - w.start_s) / w.tau_s))
        for leak in self.leaks:
            grown = min(t_s, leak.end_s) - max(leak.start_s, since_s)
            if grown > 0:
                live += leak.rate_bytes_per_s * grown
        for g in self.load_growths:
            live += g.extra_bytes(t_s, since_s)
        return live

    def alloc_factor(self, t_s: float) -> float:
        return _product(self.alloc_windows, t_s)

    def gc_time_fraction(self, t_s: float) -> float:
        """The share of time a ``gc_pressure`` fault makes the process spend in GC (0: none)."""
        return max((f for s, e, f in self.gc_pressure_windows if s <= t_s < e), default=0.0)

    def rss_noise_factor(self, t_s: float) -> float:
        return _product(self.rss_noise_windows, t_s)


def _product(windows: list[tuple[float, float, float]], t_s: float) -> float:
    factor = 1.0
    for start, end, f in windows:
        if start <= t_s < end:
            factor *= f
    return factor


@dataclass
class LifecyclePlan:
    slots: dict[str, SlotPlan]

    def slot_of(self, service: str, replica: int) -> SlotPlan:
        return self.slots[f"{service}#{replica}"]

    def incarnations(self) -> list[Incarnation]:
        return [inc for sp in self.slots.values() for inc in sp.incarnations]


def leak_rate_bytes_per_s(fault: Fault, limit_bytes: float) -> float:
    """The leak's growth of the live set: ``rate_pct_limit_per_hour`` (default 20) of the limit,
    or an explicit ``rate_bytes_per_s``."""
    if "rate_bytes_per_s" in fault.magnitude:
        return float(fault.magnitude["rate_bytes_per_s"])
    pct = float(fault.magnitude.get("rate_pct_limit_per_hour", 20.0))
    return pct / 100.0 * limit_bytes / 3600.0


def gc_pressure_magnitude(fault: Fault) -> tuple[float, float]:
    """(share of time in GC, allocation factor) of a ``gc_pressure`` fault: defaults 0.15, 4."""
    return (
        float(fault.magnitude.get("gc_time_fraction", 0.15)),
        float(fault.magnitude.get("alloc_factor", 4.0)),
    )


def plan_lifecycles(
    topology: Topology, seed: int, start_ns: int, duration_s: float, faults: Sequence[Fault]
) -> LifecyclePlan:
    """Incarnations of every replica over the run, OOM kills included."""
    slots: dict[str, SlotPlan] = {}
    for service, replica, host in topology.slots():
        spec = topology.service(service)
        profile = RUNTIMES[spec.runtime]
        jitter = 0.9 + 0.2 * (stable_digest(seed, "live", service, replica)[0] / 255.0)
        sp = SlotPlan(
            service,
            replica,
            host,
            profile,
            base_live_bytes=profile.base_live_fraction * profile.limit_bytes * jitter,
        )
        uptime_s = 86400.0 * (
            1.0 + 5.0 * stable_digest(seed, "uptime", service, replica)[0] / 255.0
        )
        sp.incarnations.append(
            _incarnation(
                topology,
                seed,
                start_ns,
                sp,
                spec.version,
                generation=0,
                restart_count=0,
                start_s=-uptime_s,
                reason="initial",
            )
        )
        slots[sp.slot] = sp

    events: list[tuple[float, str, str, Fault]] = []  # (time, slot, what, fault)
    for f in faults:
        if f.kind == LOAD_HEAP_GROWTH:
            for sp in slots.values():
                if sp.service == f.entity["service"]:
                    rise = float(f.magnitude.get("rise_pct_limit", 15.0)) / 100.0
                    tau = float(f.magnitude.get("tau_s", 300.0))
                    sp.load_growths.append(
                        LoadGrowth(f.start_s, f.end_s, rise * sp.limit_bytes, tau)
                    )
        elif f.kind in (GC_PRESSURE, NOISY_RSS):
            sp = _slot(slots, f)
            if f.kind == GC_PRESSURE:
                fraction, alloc = gc_pressure_magnitude(f)
                sp.gc_pressure_windows.append((f.start_s, f.end_s, fraction))
                sp.alloc_windows.append((f.start_s, f.end_s, alloc))
            else:
                noise = float(f.magnitude.get("noise_factor", 5.0))
                sp.rss_noise_windows.append((f.start_s, f.end_s, noise))
        elif f.kind in (MEMORY_LEAK, CACHE_WARMUP, GC_SAWTOOTH, RESTART):
            sp = _slot(slots, f)
            if f.kind == MEMORY_LEAK:
                sp.leaks.append(Leak(f.start_s, f.end_s, leak_rate_bytes_per_s(f, sp.limit_bytes)))
            elif f.kind == CACHE_WARMUP:
                rise = float(f.magnitude.get("rise_pct_limit", 12.0)) / 100.0 * sp.limit_bytes
                sp.warmups.append(Warmup(f.start_s, rise, float(f.magnitude.get("tau_s", 150.0))))
            elif f.kind == GC_SAWTOOTH:
                factor = float(f.magnitude.get("alloc_factor", 2.5))
                sp.alloc_windows.append((f.start_s, f.end_s, factor))
            else:
                events.append((f.start_s, sp.slot, "restart", f))
        elif f.kind == DEPLOY:
            stagger = float(f.magnitude.get("stagger_s", DEPLOY_STAGGER_S))
            spec = topology.service(f.entity["service"])
            for r in range(spec.instances):
                events.append((f.start_s + r * stagger, f"{spec.name}#{r}", "deploy", f))
    events.sort(key=lambda e: (e[0], e[1]))

    for sp in slots.values():
        mine = [e for e in events if e[1] == sp.slot]
        _walk_slot(topology, seed, start_ns, duration_s, sp, mine)
    return LifecyclePlan(slots)


def _slot(slots: dict[str, SlotPlan], f: Fault) -> SlotPlan:
    name = f.entity["instance"]
    if name not in slots:
        raise ValueError(
            f"{f.kind}: no replica {name!r}; name instances as service#replica "
            f"(known: {', '.join(slots)})"
        )
    if slots[name].service != f.entity["service"]:
        raise ValueError(f"{f.kind}: instance {name!r} is not of service {f.entity['service']!r}")
    return slots[name]


def _walk_slot(
    topology: Topology,
    seed: int,
    start_ns: int,
    duration_s: float,
    sp: SlotPlan,
    events: list[tuple[float, str, str, Fault]],
) -> None:
    """Apply planned restarts/deploys in order, and find OOM kills between them (1 s steps)."""
    boundaries = [e[0] for e in events] + [duration_s]
    for i, bound in enumerate(boundaries):
        if sp.leaks:
            t = max(sp.incarnations[-1].start_s, 0.0) if i == 0 else events[i - 1][0]
            t = math.floor(t) + 1.0
            while t < min(bound, duration_s):
                cur = sp.incarnations[-1]
                if sp.live_bytes(t, cur.start_s) >= sp.oom_threshold_bytes:
                    _restart(topology, seed, start_ns, sp, t, "oom", new_id=False)
                t += 1.0
        if i < len(events):
            t_ev, _, what, fault = events[i]
            if what == "deploy":
                cur = sp.incarnations[-1]
                version = str(fault.magnitude.get("version") or _bump_patch(cur.version))
                sp.incarnations.append(
                    _incarnation(
                        topology,
                        seed,
                        start_ns,
                        sp,
                        version,
                        generation=cur.generation + 1,
                        restart_count=0,
                        start_s=t_ev,
                        reason="deploy",
                    )
                )
            else:
                new_id = bool(fault.magnitude.get("new_instance_id", False))
                _restart(topology, seed, start_ns, sp, t_ev, "restart", new_id=new_id)


def _restart(
    topology: Topology,
    seed: int,
    start_ns: int,
    sp: SlotPlan,
    t_s: float,
    reason: str,
    new_id: bool,
) -> None:
    cur = sp.incarnations[-1]
    sp.incarnations.append(
        _incarnation(
            topology,
            seed,
            start_ns,
            sp,
            cur.version,
            generation=cur.generation,
            restart_count=cur.restart_count + 1,
            start_s=t_s,
            reason=reason,
            instance_id=None if new_id else cur.instance_id,
            pod=cur.pod,
        )
    )


def _incarnation(
    topology: Topology,
    seed: int,
    start_ns: int,
    sp: SlotPlan,
    version: str,
    *,
    generation: int,
    restart_count: int,
    start_s: float,
    reason: str,
    instance_id: str | None = None,
    pod: str | None = None,
) -> Incarnation:
    svc, rep = sp.service, sp.replica
    if pod is None:
        rs_hash = _k8s_suffix(stable_digest(seed, "rs", svc, generation), 10)
        pod = f"{svc}-{rs_hash}-{_k8s_suffix(stable_digest(seed, 'pod', svc, rep, generation), 5)}"
    if instance_id is None:
        raw = stable_digest(seed, "instance", svc, rep, generation, restart_count)[:16]
        instance_id = str(uuid.UUID(bytes=raw, version=4))
    proc = stable_digest(seed, "process", svc, rep, generation, restart_count)
    container_id = proc.hex()
    pid = 7 + proc[0] % 90
    t_ns = start_ns + int(round(start_s * 1e9))
    profile = sp.profile
    attrs: list[tuple[str, str | int | float | bool]] = [
        ("service.name", svc),
        ("service.namespace", topology.namespace),
        ("service.version", version),
        ("service.instance.id", instance_id),
        ("deployment.environment.name", topology.environment),
        ("host.name", sp.host),
        ("k8s.node.name", sp.host),
        ("k8s.namespace.name", topology.namespace),
        ("k8s.deployment.name", svc),
        ("k8s.pod.name", pod),
        ("k8s.container.name", svc),
        ("k8s.container.restart_count", restart_count),
        ("container.id", container_id),
        ("process.pid", pid),
        ("process.creation.time", rfc3339(t_ns)),
        ("process.runtime.name", profile.runtime_name),
        ("process.runtime.version", profile.runtime_version),
        ("telemetry.sdk.name", "opentelemetry"),
        ("telemetry.sdk.language", profile.sdk_language),
        ("telemetry.sdk.version", "1.29.0"),
        *topology.extra_resource,
    ]
    return Incarnation(
        service=svc,
        replica=rep,
        host=sp.host,
        runtime=profile.runtime,
        generation=generation,
        restart_count=restart_count,
        instance_id=instance_id,
        pod=pod,
        version=version,
        pid=pid,
        container_id=container_id,
        start_s=start_s,
        start_ns=t_ns,
        reason=reason,
        resource=ResourceInfo(tuple(attrs)),
    )

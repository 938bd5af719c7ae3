"""Ground truth for scoring: one JSON line for the run, then one per fault or hard negative.

The run line gives the time span and how many entities could have had a finding, so a scorer
can normalise false alarms per entity-hour. Each label line names the entity with the same keys
a finding carries (``service``+``operation``, ``service``+``instance``, ``host``), its event-time
window, the injected magnitude, and ``truth``: what a perfect detector would report (expected
latency, time to OOM at onset, expected TIME_WAIT level). An empty ``entity`` (global negatives)
matches every entity. Labels come from the scenario and its lifecycle plan alone, so they can be
written before any record is produced.

Instance-keyed labels (``memory_leak``, ``gc_pressure``, ``gc_sawtooth``, ...) name the
``service.instance.id`` in force at their start. A container restart or an OOM kill keeps the id,
so one label runs through them; a deploy (or a restart that mints a new id) ends the entity, so
the label is split there: one label per instance id, each from the moment that id appears.

``memory_leak`` truth (``limit_bytes`` is the limit the instance's own telemetry reports:
``jvm.memory.limit`` of G1 Old Gen, ``go.memory.limit``, ``v8js.memory.heap.limit`` of
old_space; CPython reports none, so for Python services it is the configured limit that
``configured_limits`` returns and the run line carries, ``limit_source`` says which)::

    rate_bytes_per_s, rate_pct_limit_per_hour   growth of the live set (post-GC floor)
    limit_bytes, oom_threshold_bytes            the process is killed when its live set reaches
                                                the threshold (OOM_FRACTION = 0.92 of the limit)
    floor_at_onset_bytes                        live set at the label's start
    time_to_oom_s                               true time to OOM at the label's start
    time_to_limit_s                             ... to the limit itself (a projection to 100%)
    oom_kills                                   OOM kills inside the label's window
    processes                                   every process in the window: start, reason,
                                                oom_at (null if the leak stops first)

True time to OOM at a later time ``t`` (seconds, event time): while the first process runs
(before the first entry of ``processes`` after it), ``time_to_oom_s - (t - start)``; after a
restart or OOM kill, ``oom_at - t`` of the process running at ``t`` (its heap started afresh, so
its OOM comes later). ``oom_at`` past the run's end is extrapolated at the same rate.

``time_wait_buildup`` truth (one label per fault, entity ``{"host": ...}``; the client's calls to
the destination each open and close ``connections_per_call`` connections, and the client side,
closing first, holds each in TIME_WAIT for 60 s)::

    expected_close_rate_per_s                   extra closes/s at onset (also the label's
                                                ``magnitude.close_rate_per_s``)
    min/max_close_rate_per_s                    ... over the window (the load moves)
    expected_time_wait                          60 s x the close rate at onset: the plateau
    time_to_exhaustion_s                        seconds from onset until the sockets in
                                                TIME_WAIT to one destination (closes of the last
                                                60 s) fill the ephemeral range, integrating the
                                                request rate second by second (spikes and the
                                                daily curve included); null if that never happens
                                                within the window. A steady rate r gives
                                                ports / r when 60 r > ports, so it is < 60 s.

The simulator does not cap TIME_WAIT at the range (a real client's connects would fail with
``EADDRNOTAVAIL`` from then on), so the count goes on to 60 s x the close rate.

A daily load curve whose rise within the run is large (``DAILY_CURVE_MIN_RISE`` of the base rate
or more, e.g. a compressed ``daily_period_s``) gets one global ``daily_load_curve`` negative per
rising flank (trough to peak): traffic, and every count that follows it, rises for reasons
that are no fault. Real days at the default +-25% get none in runs of up to 6 h.

Error labels (``error_origin``, ``client_4xx``, ``flaky_retry``) carry the window the model
really applied: faults take effect per one-second tick, from the first whole second at or after
``start`` to the first at or after ``end``. ``error_origin`` (entity: the origin span's service and
name) truth::

    span_kind                   SERVER (an endpoint) or CLIENT (a database, cache or vendor call)
    error_rate                  share of the operation's calls that fail
    http_status                 500 for an endpoint, the vendor's status for an HTTP call, else
                                null; exception_type: what the origin span's exception event says
                                (null for an HTTP client span: a status, no exception)
    calls_per_s_at_onset        calls of the operation per second at the start (no failures)
    errors_per_s_at_onset       ... times error_rate: surfaced origins per second
    chains                      the spans each failure fails on, origin first, one list per path
                                to a root: every caller's CLIENT and SERVER span fails with 500

``client_4xx`` and ``flaky_retry`` are named by the caller and its HTTP call (``operation`` = the
callee's route, the client span's name); ``entity_any`` also lists the callee's SERVER span, so a
false alarm on either side is counted against the look-alike.

A planned ``restart`` of an instance that is leaking at that moment (a restart mid-leak) is
labelled with ``memory_leak`` removed from ``must_not_trigger``: the leak label covers it.
A ``load_heap_growth`` also gets a ``traffic_spike`` label (global, same window), because its
traffic rises everywhere.

Example (abridged)::

    {"type": "run", "schema_version": 1, "scenario": "demo", "seed": 1, ...,
     "entities": {"operations": 27, "instances": 17, "hosts": 4, ...}}
    {"type": "label", "scenario": "demo", "kind": "bottleneck_span", "negative": false,
     "entity": {"service": "user-service", "operation": "SELECT users"}, "start": ..., ...}
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.simulate.errors import DB_ERRORS, SERVER_BUG
from pipeline.simulate.faults import (
    BOTTLENECK_SPAN,
    CLIENT_4XX,
    DEPLOY,
    ERROR_ORIGIN,
    FLAKY_RETRY,
    GC_PRESSURE,
    GLOBAL_SLOWDOWN,
    HEAD_SAMPLING,
    LOAD_HEAP_GROWTH,
    MEMORY_LEAK,
    MISSING_SPANS,
    NEGATIVE_KINDS,
    NOISY_RSS,
    RECONNECT_STORM,
    RESTART,
    TIME_WAIT_BUILDUP,
    TRAFFIC_SPIKE,
    Fault,
)
from pipeline.simulate.lifecycle import (
    OOM_FRACTION,
    STARTUP_TAU_S,
    Incarnation,
    SlotPlan,
    gc_pressure_magnitude,
    leak_rate_bytes_per_s,
)
from pipeline.simulate.model import (
    EPHEMERAL_PORTS,
    SAMPLER_HASH_BUCKETS,
    TIME_WAIT_S,
    sampler_threshold,
)
from pipeline.simulate.scenarios import Scenario, http_calls, leaf_call
from pipeline.simulate.timefmt import rfc3339
from pipeline.simulate.topology import (
    RUNTIMES,
    HttpCall,
    LeafCall,
    Topology,
    call_destination,
    call_span_name,
)

LABEL_SCHEMA_VERSION = 1

#: The metric an instance reports its memory limit in, per runtime (None: it reports none).
LIMIT_METRIC: dict[str, str | None] = {
    "java": "jvm.memory.limit",  # jvm.memory.pool.name=G1 Old Gen
    "go": "go.memory.limit",
    "nodejs": "v8js.memory.heap.limit",  # v8js.heap.space.name=old_space
    "python": None,
}
GC_DURATION_METRIC = {"java": "jvm.gc.duration", "nodejs": "v8js.gc.duration"}
RSS_METRIC = {"python": "process.runtime.cpython.memory", "nodejs": "process.memory.usage"}


def configured_limits(scenario: Scenario) -> dict[str, int]:
    """Memory limit in bytes per service whose runtime reports none in its telemetry (CPython):
    what an operator would configure for a leak detector (``{"cart": 536870912}``).

    >>> from pipeline.simulate.scenarios import build_scenario
    >>> configured_limits(build_scenario("leak"))
    {'cart': 536870912}
    """
    return {
        s.name: RUNTIMES[s.runtime].limit_bytes
        for s in scenario.topology.services
        if LIMIT_METRIC[s.runtime] is None
    }


def expected_calls_per_request(topology: Topology) -> dict[tuple[str, str], float]:
    """Mean client calls per entry request, by (calling service, destination address)."""
    return _per_request(topology, by_operation=False)


def expected_operation_calls_per_request(topology: Topology) -> dict[tuple[str, str], float]:
    """Mean client spans per entry request, by (calling service, span name): how often the
    operation a bottleneck targets is reached (several operations can share a destination)."""
    return _per_request(topology, by_operation=True)


def _per_request(topology: Topology, by_operation: bool) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = defaultdict(float)

    def visit(service: str, endpoint: str, weight: float) -> None:
        for step in topology.service(service).endpoint(endpoint).steps:
            for call in step:
                dest = call_destination(topology, call)
                if dest is None:
                    continue
                w = weight * call.probability  # type: ignore[union-attr]
                key = call_span_name(call) if by_operation else dest.rsplit(":", 1)[0]
                out[(service, key)] += w
                if isinstance(call, HttpCall):
                    visit(call.service, call.endpoint, w)

    _from_entries(topology, visit)
    return dict(out)


def _from_entries(topology: Topology, visit: Callable[[str, str, float], None]) -> None:
    """``visit(service, endpoint, share)`` for each entry endpoint, by its share of the
    entry requests."""
    entries = [(s.name, ep) for s in topology.services if s.entry for ep in s.endpoints]
    total = sum(ep.weight for _, ep in entries)
    for service, ep in entries:
        if ep.weight > 0:
            visit(service, ep.name, ep.weight / total)


def _rate_at(scenario: Scenario, t_s: float) -> float:
    factor = 1.0
    for f in scenario.faults:
        if f.kind == TRAFFIC_SPIKE and f.active(t_s):
            factor *= float(f.magnitude.get("factor", 4.0))
        elif f.kind == LOAD_HEAP_GROWTH and f.active(t_s):
            factor *= float(f.magnitude.get("factor", 2.5))
    return scenario.base_rate_at(t_s) * factor


def run_line(scenario: Scenario) -> dict[str, Any]:
    topo = scenario.topology
    incs = scenario.plan.incarnations()
    return {
        "type": "run",
        "schema_version": LABEL_SCHEMA_VERSION,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "description": scenario.description,
        "start": rfc3339(scenario.start_ns),
        "end": rfc3339(scenario.end_ns),
        "start_unix_nano": scenario.start_ns,
        "end_unix_nano": scenario.end_ns,
        "duration_s": scenario.duration_s,
        "rate": scenario.rate,
        "sample_ratio": scenario.sample_ratio,
        "metric_interval_s": scenario.metric_interval_s,
        "encoding": scenario.encoding,
        "keying": scenario.keying,
        "emit_spans": scenario.emit_spans,
        "configured_limits": configured_limits(scenario),
        "entities": {
            "operations": len(topo.operations()),
            "instances": len({i.instance_id for i in incs}),
            "hosts": len(topo.hosts),
            "services": len(topo.services),
            "instance_slots": sum(s.instances for s in topo.services),
            "downstream_operations": len(set(topo.leaf_operations())),
        },
    }


#: A slowdown of whole services is a hard negative for ``bottleneck_span`` and, per slowed
#: service, what a ``latency_regression`` finding should report.
LATENCY_REGRESSION = "latency_regression"
#: A rising flank of the daily load curve: a global hard negative (module docstring).
DAILY_LOAD_CURVE = "daily_load_curve"
DAILY_CURVE_MIN_RISE = 0.5  # of the base rate: a 1.5x climb, like a mild traffic spike


def label_lines(scenario: Scenario) -> list[dict[str, Any]]:
    """The run line, then one line per fault/negative (a reconnect storm: one per client host;
    a global slowdown: also one ``latency_regression`` label per slowed service)."""
    lines = [run_line(scenario)]
    for f in scenario.faults:
        lines.extend(_labels_for(scenario, f))
        if f.kind == GLOBAL_SLOWDOWN:
            lines.extend(_regression_labels(scenario, f))
        if f.kind == LOAD_HEAP_GROWTH:
            spike = _base(scenario, f, {})
            factor = float(f.magnitude.get("factor", 2.5))
            spike.update(
                kind=TRAFFIC_SPIKE,
                must_not_trigger=list(NEGATIVE_KINDS[TRAFFIC_SPIKE]),
                magnitude={"factor": factor},
                note=f"the traffic of the load_heap_growth on {f.entity['service']}",
            )
            lines.append(spike)
    lines.extend(_daily_curve_labels(scenario))
    return lines


def _daily_curve_labels(scenario: Scenario) -> list[dict[str, Any]]:
    """One ``daily_load_curve`` negative per rising flank of the load curve inside the run whose
    rise is at least ``DAILY_CURVE_MIN_RISE`` x the base rate.

    >>> from pipeline.simulate.scenarios import build_scenario
    >>> sc = build_scenario("healthy", duration="1h", daily_period_s=1800, daily_amplitude=0.5)
    >>> [(lb["start"][11:19], lb["end"][11:19]) for lb in _daily_curve_labels(sc)]
    [('08:03:45', '08:18:45'), ('08:33:45', '08:48:45')]
    >>> _daily_curve_labels(build_scenario("leak"))  # 6 h of a real day: +31% at most
    []
    """
    if scenario.daily_amplitude <= 0:
        return []
    period = scenario.daily_period_s
    start_s = scenario.start_ns / 1e9
    # Peaks at peak_hour_utc of each period (counted from the epoch); troughs half a period
    # earlier. Flanks are taken in seconds from the scenario start.
    peak_offset = (scenario.peak_hour_utc % 24.0) / 24.0 * period
    first = math.floor((start_s - peak_offset) / period) * period + peak_offset - start_s
    out = []
    trough = first - period / 2
    while trough < scenario.duration_s:
        lo, hi = max(trough, 0.0), min(trough + period / 2, scenario.duration_s)
        if hi > lo:
            rise = scenario.base_rate_at(hi) - scenario.base_rate_at(lo)
            if rise >= DAILY_CURVE_MIN_RISE * scenario.rate - 1e-9:
                label = _base(scenario, Fault(TRAFFIC_SPIKE, {}, lo, hi), {})
                label.update(
                    kind=DAILY_LOAD_CURVE,
                    magnitude={
                        "from_rate": round(scenario.base_rate_at(lo), 2),
                        "to_rate": round(scenario.base_rate_at(hi), 2),
                        "daily_period_s": period,
                        "daily_amplitude": scenario.daily_amplitude,
                    },
                    note=(
                        f"daily load curve: entry traffic rises from "
                        f"{scenario.base_rate_at(lo):.0f} to {scenario.base_rate_at(hi):.0f} "
                        f"requests/s (a day of {period:.0f} s)"
                    ),
                )
                out.append(label)
        trough += period
    return out


def _regression_labels(scenario: Scenario, f: Fault) -> list[dict[str, Any]]:
    services = (
        [f.entity["service"]]
        if "service" in f.entity
        else [s.name for s in scenario.topology.services]
    )
    out = []
    for service in services:
        label = _base(scenario, f, {"service": service})
        label.update(kind=LATENCY_REGRESSION, negative=False, must_not_trigger=[])
        label["truth"] = {"factor": float(f.magnitude.get("factor", 1.5))}
        out.append(label)
    return out


def write_labels(scenario: Scenario, path: str | Path) -> Path:
    """Write the labels file (JSON Lines); returns its path."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True)
    with p.open("wb") as fh:
        for line in label_lines(scenario):
            fh.write(orjson.dumps(line) + b"\n")
    return p


def _base(
    scenario: Scenario,
    f: Fault,
    entity: dict[str, str],
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    start_s, end_s = window or (f.start_s, f.end_s)
    start_ns = scenario.start_ns + int(round(start_s * 1e9))
    end_ns = scenario.start_ns + int(round(end_s * 1e9))
    out = {
        "type": "label",
        "scenario": scenario.name,
        "kind": f.kind,
        "negative": f.negative,
        "must_not_trigger": list(f.must_not_trigger),
        "entity": entity,
        "evidence": dict(f.evidence),
        "start": rfc3339(start_ns),
        "end": rfc3339(end_ns),
        "start_unix_nano": start_ns,
        "end_unix_nano": end_ns,
        "magnitude": dict(f.magnitude),
        "truth": {},
        "note": f.note,
    }
    if f.incident:
        out["incident"] = f.incident
        if f.incident_root:
            out["incident_root"] = dict(f.incident_root)
    return out


def _labels_for(scenario: Scenario, f: Fault) -> list[dict[str, Any]]:
    plan = scenario.plan
    topo = scenario.topology
    if "instance" in f.entity:
        sp = plan.slots[f.entity["instance"]]
        return [
            _instance_label(scenario, f, sp, window, incs)
            for window, incs in _id_segments(sp, f.start_s, f.end_s)
        ]
    if f.kind == BOTTLENECK_SPAN:
        call: LeafCall = leaf_call(topo, f.entity["service"], f.entity["operation"])
        label = _base(scenario, f, dict(f.entity))
        added = float(f.magnitude.get("added_ms", 100.0))
        rate = _rate_at(scenario, f.start_s)
        per_req = expected_operation_calls_per_request(topo).get(
            (f.entity["service"], f.entity["operation"]), 0.0
        )
        label["truth"] = {
            "span_kind": "CLIENT",
            "baseline_median_ms": call.latency_ms,
            "expected_median_ms": call.latency_ms * float(f.magnitude.get("factor", 1.0)) + added,
            "calls_per_s_at_onset": round(rate * per_req, 2),
        }
        return [label]
    if f.kind == TIME_WAIT_BUILDUP:
        return [_time_wait_label(scenario, f)]
    if f.kind in (ERROR_ORIGIN, CLIENT_4XX, FLAKY_RETRY):
        return [_error_label(scenario, f)]
    if f.kind == RECONNECT_STORM:
        service = f.entity["service"]
        clients: dict[str, set[str]] = defaultdict(set)
        for s, _, host in topo.slots():
            spec = topo.service(s)
            if any(
                isinstance(c, HttpCall) and c.service == service
                for ep in spec.endpoints
                for step in ep.steps
                for c in step
            ):
                clients[host].add(s)
        out = []
        for host in sorted(clients):
            label = _base(scenario, f, {"host": host})
            label["evidence"].update(
                {"service": ",".join(sorted(clients[host])), "destination": service}
            )
            out.append(label)
        return out
    label = _base(scenario, f, dict(f.entity))
    if f.kind == LOAD_HEAP_GROWTH:
        rise = float(f.magnitude.get("rise_pct_limit", 15.0))
        tau = float(f.magnitude.get("tau_s", 300.0))
        label["truth"] = {
            "traffic_factor": float(f.magnitude.get("factor", 2.5)),
            "rise_pct_limit": rise,
            "peak_rise_pct_limit": round(rise * (1 - math.exp(-(f.end_s - f.start_s) / tau)), 2),
            "tau_s": tau,
            # the retained state has expired (< 5% left) this long after the window's end
            "recedes_within_s": round(3 * tau, 1),
        }
    if f.kind == HEAD_SAMPLING:
        threshold = sampler_threshold(float(f.magnitude.get("keep", 0.1)))
        label["truth"] = {
            "kept_trace_fraction": threshold / SAMPLER_HASH_BUCKETS,
            "sampler": "probabilistic_sampler",
            "sampler_mode": "hash_seed",
            "hash_seed": int(f.magnitude.get("hash_seed", 0)),
            "whole_traces": True,
        }
    elif f.kind == MISSING_SPANS:
        label["truth"] = {
            "span_drop_probability": float(f.magnitude.get("drop", 0.05)),
            "roots_dropped": False,
            "orphans_keep_parent_id": True,
        }
    if f.kind == DEPLOY:
        svc = f.entity["service"]
        before, after = [], []
        for sp in plan.slots.values():
            if sp.service == svc:
                before.append(sp.incarnation_at(f.start_s - 1).instance_id)
                after.append(sp.incarnation_at(f.end_s).instance_id)
        label["evidence"].update({"old_instances": before, "new_instances": after})
    return [label]


def _id_segments(
    sp: SlotPlan, start_s: float, end_s: float
) -> list[tuple[tuple[float, float], list[Incarnation]]]:
    """The processes of a slot within ``[start_s, end_s)``, grouped by ``service.instance.id``:
    (window, processes) per id, in order."""
    first = sp.incarnation_at(start_s)
    incs = [i for i in sp.incarnations if i is first or start_s <= i.start_s < end_s]
    out: list[tuple[tuple[float, float], list[Incarnation]]] = []
    for inc in incs:
        if out and out[-1][1][-1].instance_id == inc.instance_id:
            out[-1][1].append(inc)
        else:
            out.append(((max(start_s, inc.start_s), end_s), [inc]))
    return [
        ((w[0], out[k + 1][0][0] if k + 1 < len(out) else w[1]), incs)
        for k, (w, incs) in enumerate(out)
    ]


def _instance_label(
    scenario: Scenario,
    f: Fault,
    sp: SlotPlan,
    window: tuple[float, float],
    incs: list[Incarnation],
) -> dict[str, Any]:
    inc = incs[0]
    label = _base(scenario, f, {"service": sp.service, "instance": inc.instance_id}, window)
    label["evidence"].update(
        {
            "slot": sp.slot,
            "host": sp.host,
            "pod": inc.pod,
            "runtime": sp.profile.runtime,
            "instances": [inc.instance_id],
        }
    )
    if f.kind == MEMORY_LEAK:
        label.update(_leak_truth(scenario, f, sp, window, incs))
    elif f.kind == GC_PRESSURE:
        fraction, alloc = gc_pressure_magnitude(f)
        label["magnitude"] = {"gc_time_fraction": fraction, "alloc_factor": alloc}
        label["truth"] = {
            # young collections (Go: GC cycles) alone take this share of the time; major
            # collections, more frequent under the allocation storm, add a little to it
            "gc_time_fraction": fraction,
            "allocation_factor": alloc,
            "gc_duration_metric": GC_DURATION_METRIC.get(sp.profile.runtime),
        }
    else:
        if f.kind == RESTART and any(lk.start_s <= f.start_s < lk.end_s for lk in sp.leaks):
            label["must_not_trigger"] = [k for k in f.must_not_trigger if k != MEMORY_LEAK]
            label["evidence"]["restart_mid_leak"] = True
        if f.kind == NOISY_RSS:
            factor = float(f.magnitude.get("noise_factor", 5.0))
            label["truth"] = {
                "rss_metric": RSS_METRIC.get(sp.profile.runtime),
                "rss_noise_sigma": 0.02 * factor,  # lognormal sigma of each RSS sample
                "baseline_rss_noise_sigma": 0.02,
            }
        label["truth"]["restarts"] = [
            {"at": rfc3339(i.start_ns), "reason": i.reason, "instance": i.instance_id}
            for i in incs
            if i.start_s >= window[0]
        ]
    return label


def _leak_truth(
    scenario: Scenario,
    f: Fault,
    sp: SlotPlan,
    window: tuple[float, float],
    incs: list[Incarnation],
) -> dict[str, Any]:
    rate = leak_rate_bytes_per_s(f, sp.limit_bytes)
    onset = window[0]
    floor = sp.live_bytes(onset, incs[0].start_s)
    # A leak window that stops before the run's end stops growing; one that reaches it is
    # taken to go on (its OOM may come after the run).
    leak_end = f.end_s if f.end_s < scenario.duration_s else math.inf
    processes = []
    for k, inc in enumerate(incs):
        since = max(onset, inc.start_s)
        nxt = incs[k + 1] if k + 1 < len(incs) else None
        if nxt is not None and nxt.reason == "oom":
            oom_at: float | None = nxt.start_s
        else:
            oom_at = _oom_at(sp, inc.start_s, since, rate, leak_end)
        processes.append(
            {
                "start": rfc3339(scenario.start_ns + int(round(since * 1e9))),
                "start_unix_nano": scenario.start_ns + int(round(since * 1e9)),
                "reason": inc.reason if inc.start_s >= onset else "running",
                "oom_at": None if oom_at is None else rfc3339(_ns(scenario, oom_at)),
                "oom_at_unix_nano": None if oom_at is None else _ns(scenario, oom_at),
            }
        )
    first_oom = (
        incs[1].start_s
        if len(incs) > 1 and incs[1].reason == "oom"
        else _oom_at(sp, incs[0].start_s, onset, rate, math.inf)
    )
    limit_metric = LIMIT_METRIC[sp.profile.runtime]
    return {
        "magnitude": {
            "rate_pct_limit_per_hour": rate * 3600 / sp.limit_bytes * 100,
            "rate_bytes_per_s": rate,
        },
        "truth": {
            "limit_bytes": int(sp.limit_bytes),
            "limit_source": limit_metric or "configured",
            "oom_threshold_bytes": int(sp.oom_threshold_bytes),
            "floor_at_onset_bytes": int(floor),
            "rate_bytes_per_s": rate,
            "rate_pct_limit_per_hour": rate * 3600 / sp.limit_bytes * 100,
            "time_to_oom_s": round(first_oom - onset, 1),
            "time_to_limit_s": round(
                first_oom - onset + (1.0 - OOM_FRACTION) * sp.limit_bytes / rate, 1
            ),
            "oom_kills": [rfc3339(i.start_ns) for i in incs if i.reason == "oom"],
            "processes": processes,
        },
    }


def _ns(scenario: Scenario, t_s: float) -> int:
    return scenario.start_ns + int(round(t_s * 1e9))


def _oom_at(
    sp: SlotPlan, inc_start_s: float, from_s: float, rate: float, leak_end_s: float
) -> float | None:
    """When a process started at ``inc_start_s`` reaches the OOM threshold (None: the leak stops
    first). Once the start-up warm-up has settled the live set grows linearly at ``rate``."""
    threshold = sp.oom_threshold_bytes
    settled = max(from_s, inc_start_s + 10 * STARTUP_TAU_S)
    live = sp.live_bytes(settled, inc_start_s)
    if live < threshold:
        t = settled + (threshold - live) / rate
    else:  # crossed during the warm-up: bisect
        lo, hi = from_s, settled
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if sp.live_bytes(mid, inc_start_s) >= threshold else (mid, hi)
        t = hi
    return t if t <= leak_end_s else None


def endpoint_calls_per_request(topology: Topology) -> dict[tuple[str, str], float]:
    """Mean SERVER spans per entry request, by (service, endpoint name)."""
    out: dict[tuple[str, str], float] = defaultdict(float)

    def visit(service: str, endpoint: str, weight: float) -> None:
        out[(service, endpoint)] += weight
        for step in topology.service(service).endpoint(endpoint).steps:
            for call in step:
                if isinstance(call, HttpCall):
                    visit(call.service, call.endpoint, weight * call.probability)

    _from_entries(topology, visit)
    return dict(out)


def error_chains(topology: Topology, service: str, operation: str) -> list[list[dict[str, str]]]:
    """The spans a failure of ``operation`` (an endpoint or a downstream call of ``service``)
    fails on up to a root, origin first: one list per path through the callers.

    >>> from pipeline.simulate.topology import default_topology
    >>> [[f"{s['service']}/{s['operation']}/{s['kind']}" for s in c]
    ...  for c in error_chains(default_topology(), "payment", "INSERT payments")]
    ... # doctest: +NORMALIZE_WHITESPACE
    [['payment/INSERT payments/CLIENT', 'payment/POST /charge/SERVER',
      'checkout/POST /charge/CLIENT', 'checkout/POST /checkout/SERVER',
      'frontend/POST /checkout/CLIENT', 'frontend/POST /api/checkout/SERVER']]
    """
    callers: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for s in topology.services:
        for ep in s.endpoints:
            for step in ep.steps:
                for call in step:
                    if isinstance(call, HttpCall):
                        callers[(call.service, call.endpoint)].append((s.name, ep.name))

    def up(svc: str, ep_name: str, depth: int) -> list[list[dict[str, str]]]:
        here = {"service": svc, "operation": ep_name, "kind": "SERVER"}
        spec = topology.service(svc)
        paths = [[here]] if spec.entry and spec.endpoint(ep_name).weight > 0 else []
        if depth < 16:
            for csvc, cep in dict.fromkeys(callers[(svc, ep_name)]):
                client = {"service": csvc, "operation": ep_name, "kind": "CLIENT"}
                paths += [[here, client, *rest] for rest in up(csvc, cep, depth + 1)]
        return paths

    spec = topology.service(service)
    if any(ep.name == operation for ep in spec.endpoints):
        return up(service, operation, 0)
    leaf = {"service": service, "operation": operation, "kind": "CLIENT"}
    handlers = [
        ep.name
        for ep in spec.endpoints
        if any(isinstance(c, LeafCall) and c.name == operation for st in ep.steps for c in st)
    ]
    return [[leaf, *rest] for h in handlers for rest in up(service, h, 0)]


def _error_label(scenario: Scenario, f: Fault) -> dict[str, Any]:
    topo = scenario.topology
    svc, op = f.entity["service"], f.entity["operation"]
    # Faults act per one-second tick (Simulator._apply_faults at whole seconds).
    window = (float(math.ceil(f.start_s)), min(float(math.ceil(f.end_s)), scenario.duration_s))
    label = _base(scenario, f, dict(f.entity), window)
    spec = topo.service(svc)
    if f.kind == ERROR_ORIGIN:
        rate = float(f.magnitude.get("error_rate", 0.3))
        label["magnitude"] = {**f.magnitude, "error_rate": rate}
        is_endpoint = any(ep.name == op for ep in spec.endpoints)
        if is_endpoint:
            per_req = endpoint_calls_per_request(topo).get((svc, op), 0.0)
            exc_type = f.magnitude.get("exception_type") or SERVER_BUG[spec.runtime][0]
            truth: dict[str, Any] = {"span_kind": "SERVER", "http_status": 500}
        else:
            call = leaf_call(topo, svc, op)
            attrs = dict(call.attributes)
            per_req = expected_operation_calls_per_request(topo).get((svc, op), 0.0)
            if "http.request.method" in attrs:
                truth = {"span_kind": "CLIENT", "http_status": call.error_status}
                exc_type = None
                label["evidence"]["peer_service"] = str(
                    attrs.get("peer.service", call.address)
                )
            else:
                default = DB_ERRORS.get((spec.runtime, str(attrs.get("db.system"))))
                exc_type = f.magnitude.get("exception_type") or (default or ("Exception",))[0]
                truth = {"span_kind": "CLIENT", "http_status": None}
                label["evidence"]["db_system"] = str(attrs.get("db.system"))
        calls = _rate_at(scenario, window[0]) * per_req
        truth.update(
            exception_type=exc_type,
            error_rate=rate,
            calls_per_s_at_onset=round(calls, 2),
            errors_per_s_at_onset=round(calls * rate, 2),
            chains=error_chains(topo, svc, op),
        )
        label["truth"] = truth
        return label
    callee = http_calls(topo)[(svc, op)]
    label["evidence"]["callee"] = callee
    label["entity_any"] = [dict(f.entity), {"service": callee, "operation": op}]
    per_req = expected_operation_calls_per_request(topo).get((svc, op), 0.0)
    calls = _rate_at(scenario, window[0]) * per_req
    if f.kind == CLIENT_4XX:
        rate = float(f.magnitude.get("rate", 0.2))
        status = int(f.magnitude.get("status", 404))
        label["magnitude"] = {"rate": rate, "status": status}
        label["truth"] = {
            "http_status": status,
            "client_span_status": "ERROR",
            "server_span_status": "UNSET",
            "caller_fails": False,
            "responses_per_s_at_onset": round(calls * rate, 2),
        }
    else:
        rate = float(f.magnitude.get("rate", 0.3))
        label["magnitude"] = {"rate": rate}
        label["truth"] = {
            "http_status": 503,
            "client_span_status": "ERROR",
            "server_span_status": "ERROR",
            "retries": 1,
            "retry_succeeds": True,
            "retry_attribute": "http.request.resend_count",
            "caller_fails": False,
            "absorbed_per_s_at_onset": round(calls * rate, 2),
        }
    return label


def _time_wait_label(scenario: Scenario, f: Fault) -> dict[str, Any]:
    topo = scenario.topology
    host = f.entity["host"]
    client, dest = f.evidence.get("service"), f.evidence.get("destination")
    per_call = float(f.magnitude.get("connections_per_call", 1))
    calls = expected_calls_per_request(topo)
    # Extra closes per entry request, by destination: ports run out per destination.
    per_request: dict[str, float] = defaultdict(float)
    services: list[str] = []
    for s, _, h in topo.slots():
        if h != host or client not in (None, s):
            continue
        services.append(s)
        n_inst = topo.service(s).instances
        for (svc, address), per_req in calls.items():
            if svc == s and dest in (None, address):
                per_request[address] += per_req / n_inst * per_call
    k = sum(per_request.values())
    close_rate = _rate_at(scenario, f.start_s) * k  # at full loss of reuse
    # The request rate of each second of the window, sampled as the simulator draws it; with a
    # ramp (``ramp_s``), the share of calls without reuse rises linearly over it.
    ramp_s = float(f.magnitude.get("ramp_s", 0.0))
    rates = [
        _rate_at(scenario, t + 0.5) * (min(1.0, (t - f.start_s) / ramp_s) if ramp_s > 0 else 1.0)
        for t in range(int(f.start_s), int(math.ceil(f.end_s)))
    ]
    label = _base(scenario, f, {"host": host})
    label["evidence"].update(
        {"service": ",".join(dict.fromkeys(services)), "destination": ",".join(sorted(per_request))}
    )
    label["magnitude"]["close_rate_per_s"] = round(close_rate, 2)
    exhaustion = [t for kd in per_request.values() if (t := _exhaustion_s(rates, kd)) is not None]
    label["truth"] = {
        "expected_close_rate_per_s": round(close_rate, 2),
        "min_close_rate_per_s": round(min(rates, default=0.0) * k, 2),
        "max_close_rate_per_s": round(max(rates, default=0.0) * k, 2),
        "expected_time_wait": round(TIME_WAIT_S * close_rate, 1),
        "time_wait_seconds": TIME_WAIT_S,
        "ephemeral_ports": EPHEMERAL_PORTS,
        # TIME_WAIT grows at the close rate for 60 s, then plateaus at 60 s x rate; ports to
        # one destination run out only if that plateau exceeds the ephemeral range.
        "time_to_exhaustion_s": round(min(exhaustion), 1) if exhaustion else None,
    }
    return label


def _exhaustion_s(rates: list[float], closes_per_request: float) -> float | None:
    """Seconds until the closes of the last ``TIME_WAIT_S`` seconds reach ``EPHEMERAL_PORTS``
    (linear within a second), given the request rate of each second; None if they never do.

    >>> _exhaustion_s([100.0] * 120, 5.0)  # 500 closes/s: 28,232 ports last 56.5 s
    56.464
    >>> _exhaustion_s([100.0] * 120, 4.0) is None  # 400/s holds 24,000 in TIME_WAIT
    True
    """
    window: deque[float] = deque()
    held = 0.0
    for t, rate in enumerate(rates):
        closes = rate * closes_per_request
        expiring = window.popleft() if len(window) == TIME_WAIT_S else 0.0
        if held - expiring + closes >= EPHEMERAL_PORTS:
            # within this second, closes arrive evenly while the expiring ones leave evenly
            net = closes - expiring
            return t + (EPHEMERAL_PORTS - held) / net if net > 0 else float(t)
        held += closes - expiring
        window.append(closes)
    return None

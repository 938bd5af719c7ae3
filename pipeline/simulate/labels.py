"""Ground truth for scoring: one JSON line for the run, then one per fault or hard negative.

The run line gives the time span and how many entities could have had a finding, so a scorer
can normalise false alarms per entity-hour. Each label line names the entity with the same keys
a finding carries (``service``+``operation``, ``service``+``instance``, ``host``), its event-time
window, the injected magnitude, and ``truth``: what a perfect detector would report (expected
latency, time to OOM at onset, expected TIME_WAIT level). An empty ``entity`` (global negatives)
matches every entity. Labels come from the scenario and its lifecycle plan alone, so they can be
written before any record is produced.

Example (abridged)::

    {"type": "run", "schema_version": 1, "scenario": "demo", "seed": 1, ...,
     "entities": {"operations": 27, "instances": 17, "hosts": 4, ...}}
    {"type": "label", "scenario": "demo", "kind": "bottleneck_span", "negative": false,
     "entity": {"service": "user-service", "operation": "SELECT users"}, "start": ..., ...}
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from pipeline.simulate.faults import (
    BOTTLENECK_SPAN,
    DEPLOY,
    GLOBAL_SLOWDOWN,
    HEAD_SAMPLING,
    MEMORY_LEAK,
    MISSING_SPANS,
    RECONNECT_STORM,
    TIME_WAIT_BUILDUP,
    TRAFFIC_SPIKE,
    Fault,
)
from pipeline.simulate.lifecycle import leak_rate_bytes_per_s
from pipeline.simulate.model import (
    EPHEMERAL_PORTS,
    SAMPLER_HASH_BUCKETS,
    TIME_WAIT_S,
    sampler_threshold,
)
from pipeline.simulate.scenarios import Scenario, leaf_call
from pipeline.simulate.timefmt import rfc3339
from pipeline.simulate.topology import (
    HttpCall,
    LeafCall,
    Topology,
    call_destination,
    call_span_name,
)

LABEL_SCHEMA_VERSION = 1


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

    entries = [(s.name, ep) for s in topology.services if s.entry for ep in s.endpoints]
    total = sum(ep.weight for _, ep in entries)
    for service, ep in entries:
        if ep.weight > 0:
            visit(service, ep.name, ep.weight / total)
    return dict(out)


def _rate_at(scenario: Scenario, t_s: float) -> float:
    factor = 1.0
    for f in scenario.faults:
        if f.kind == TRAFFIC_SPIKE and f.active(t_s):
            factor *= float(f.magnitude.get("factor", 4.0))
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


def label_lines(scenario: Scenario) -> list[dict[str, Any]]:
    """The run line, then one line per fault/negative (a reconnect storm: one per client host;
    a global slowdown: also one ``latency_regression`` label per slowed service)."""
    lines = [run_line(scenario)]
    for f in scenario.faults:
        lines.extend(_labels_for(scenario, f))
        if f.kind == GLOBAL_SLOWDOWN:
            lines.extend(_regression_labels(scenario, f))
    return lines


def _regression_labels(scenario: Scenario, f: Fault) -> list[dict[str, Any]]:
    services = [f.entity["service"]] if "service" in f.entity else [
        s.name for s in scenario.topology.services
    ]
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


def _base(scenario: Scenario, f: Fault, entity: dict[str, str]) -> dict[str, Any]:
    start_ns = scenario.start_ns + int(round(f.start_s * 1e9))
    end_ns = scenario.start_ns + int(round(f.end_s * 1e9))
    return {
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


def _labels_for(scenario: Scenario, f: Fault) -> list[dict[str, Any]]:
    plan = scenario.plan
    topo = scenario.topology
    if "instance" in f.entity:
        sp = plan.slots[f.entity["instance"]]
        inc = sp.incarnation_at(f.start_s)
        window = [
            i
            for i in sp.incarnations
            if i.start_s < f.end_s and (i is inc or i.start_s >= f.start_s)
        ]
        label = _base(scenario, f, {"service": sp.service, "instance": inc.instance_id})
        label["evidence"].update(
            {
                "slot": sp.slot,
                "host": sp.host,
                "pod": inc.pod,
                "runtime": sp.profile.runtime,
                "instances": list(dict.fromkeys(i.instance_id for i in window)),
            }
        )
        if f.kind == MEMORY_LEAK:
            rate = leak_rate_bytes_per_s(f, sp.limit_bytes)
            floor = sp.live_bytes(f.start_s, inc.start_s)
            ooms = [i for i in window if i.reason == "oom"]
            label["magnitude"] = {
                "rate_pct_limit_per_hour": rate * 3600 / sp.limit_bytes * 100,
                "rate_bytes_per_s": rate,
            }
            label["truth"] = {
                "limit_bytes": int(sp.limit_bytes),
                "oom_threshold_bytes": int(sp.oom_threshold_bytes),
                "floor_at_onset_bytes": int(floor),
                "time_to_oom_s": round((sp.oom_threshold_bytes - floor) / rate, 1),
                "oom_kills": [rfc3339(i.start_ns) for i in ooms],
            }
        else:
            label["truth"] = {
                "restarts": [
                    {"at": rfc3339(i.start_ns), "reason": i.reason, "instance": i.instance_id}
                    for i in window
                    if i is not inc
                ]
            }
        return [label]
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


def _time_wait_label(scenario: Scenario, f: Fault) -> dict[str, Any]:
    topo = scenario.topology
    host = f.entity["host"]
    client, dest = f.evidence.get("service"), f.evidence.get("destination")
    per_call = float(f.magnitude.get("connections_per_call", 1))
    calls = expected_calls_per_request(topo)
    rate = _rate_at(scenario, f.start_s)
    close_rate = 0.0
    services: list[str] = []
    dests: set[str] = set()
    for s, _, h in topo.slots():
        if h != host or client not in (None, s):
            continue
        services.append(s)
        n_inst = topo.service(s).instances
        for (svc, address), per_req in calls.items():
            if svc == s and dest in (None, address):
                close_rate += rate * per_req / n_inst * per_call
                dests.add(address)
    label = _base(scenario, f, {"host": host})
    label["evidence"].update(
        {"service": ",".join(dict.fromkeys(services)), "destination": ",".join(sorted(dests))}
    )
    expected_tw = TIME_WAIT_S * close_rate
    label["truth"] = {
        "expected_close_rate_per_s": round(close_rate, 2),
        "expected_time_wait": round(expected_tw, 1),
        "time_wait_seconds": TIME_WAIT_S,
        "ephemeral_ports": EPHEMERAL_PORTS,
        # TIME_WAIT grows at the close rate for 60 s, then plateaus at 60 s x rate; ports to
        # one destination run out only if that plateau exceeds the ephemeral range.
        "time_to_exhaustion_s": (
            round(EPHEMERAL_PORTS / close_rate, 1) if expected_tw >= EPHEMERAL_PORTS else None
        ),
    }
    return label

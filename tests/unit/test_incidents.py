"""Incidents: findings that share a cause grouped into one, with the deepest anomalous entity as
the root; unrelated findings kept apart; the same input giving the same incidents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from pipeline import incidents
from pipeline.findings import rfc3339
from pipeline.incident_stage import IncidentStage, finding_record
from pipeline.incidents import Correlator
from pipeline.settings import Settings

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "incident.schema.json").read_text())
T0 = 1_767_600_000 * 10**9
M = 60 * 10**9


def finding(fid: str, kind: str, entity: dict[str, Any], start_m: float, *,
            status: str = "firing", severity: str = "warning", resolved_m: float | None = None,
            evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": fid, "fingerprint": f"fp-{fid}", "kind": kind, "status": status,
        "severity": severity, "entity": entity,
        "started_at": rfc3339(int(T0 + start_m * M)),
        "detected_at": rfc3339(int(T0 + (start_m + 0.5) * M)),
        "resolved_at": None if resolved_m is None else rfc3339(int(T0 + resolved_m * M)),
        "summary": f"{kind} on {entity}", "evidence": evidence or {},
        "next_steps": ["look"],
    }


def resolved(doc: dict[str, Any], at_m: float) -> dict[str, Any]:
    return {**doc, "status": "resolved", "resolved_at": rfc3339(int(T0 + at_m * M))}


def edges(c: Correlator, *pairs: tuple[str, str]) -> None:
    for a, b in pairs:
        c.apply_edge(a, b, rfc3339(T0))


def feed(c: Correlator, *docs: dict[str, Any]) -> None:
    for d in docs:
        c.apply_finding(d)


def groups(c: Correlator) -> list[tuple[str, set[str]]]:
    return sorted((i.root.id, set(i.members)) for i in c.incidents.values())


def test_one_slow_database_across_callers_is_one_incident_rooted_at_the_database() -> None:
    c = Correlator()
    edges(c, ("frontend", "checkout"), ("frontend", "cart"), ("checkout", "postgres"),
          ("cart", "postgres"))
    feed(c,
         finding("b1", "bottleneck_span", {"service": "checkout", "operation": "SELECT",
                                           "peer_service": "postgres"}, 10),
         finding("b2", "bottleneck_span", {"service": "cart", "operation": "SELECT",
                                           "peer_service": "postgres"}, 10.5),
         finding("l1", "latency_regression", {"service": "frontend"}, 11))
    [inc] = c.incidents.values()
    assert set(inc.members) == {"b1", "b2", "l1"}
    assert inc.root.node == "service:postgres" and inc.root.id == "b1"
    doc = incidents.to_dict(inc)
    jsonschema.validate(doc, SCHEMA)
    assert doc["root"]["name"] == "postgres" and doc["summary"].startswith("postgres is")
    assert doc["member_finding_ids"] == ["b1", "b2", "l1"] and len(doc["timeline"]) == 3


def test_leak_gc_pressure_and_latency_of_one_service_root_at_the_leak() -> None:
    c = Correlator()
    edges(c, ("frontend", "cart"))
    inst = {"service": "cart", "instance": "cart-1"}
    # The symptoms come first; the leak is found later and becomes the root.
    feed(c, finding("l", "latency_regression", {"service": "frontend"}, 20),
         finding("g", "gc_pressure", inst, 21),
         finding("m", "memory_leak", inst, 5))
    [inc] = c.incidents.values()
    assert inc.root.id == "m" and inc.root.kind == "memory_leak"
    # The incident keeps the id it got from its first finding.
    assert inc.id == incidents.incident_id("l")


def test_one_replica_s_leak_does_not_explain_another_replica_s_gc_pressure() -> None:
    c = Correlator()
    feed(c, finding("m", "memory_leak", {"service": "cart", "instance": "c1"}, 10),
         finding("g", "gc_pressure", {"service": "cart", "instance": "c2"}, 12),
         finding("m2", "memory_leak", {"service": "cart", "instance": "c3"}, 13))
    # Two replicas leaking after one deploy are one problem; the other's GC pressure is not it.
    assert groups(c) == [("g", {"g"}), ("m", {"m", "m2"})]


def test_host_time_wait_and_its_clients_errors_root_at_the_host() -> None:
    c = Correlator()
    tw = finding("tw", "time_wait_buildup", {"host": "node-2"}, 10, evidence={
        "candidates": [{"service": "frontend", "destination": "cart", "tied": False}]})
    feed(c, tw, finding("e", "error_origin", {"service": "frontend", "operation": "GET"}, 12),
         # a slow query on another service on that host is not the churn's doing
         finding("q", "bottleneck_span", {"service": "users", "operation": "SELECT u"}, 11))
    assert groups(c) == [("q", {"q"}), ("tw", {"tw", "e"})]


def test_a_failure_explained_two_ways_joins_the_cause_still_active() -> None:
    c = Correlator()
    edges(c, ("frontend", "checkout"))
    gc = finding("g", "gc_pressure", {"service": "checkout", "instance": "k1"}, 10)
    tw = finding("tw", "time_wait_buildup", {"host": "node-2"}, 20, evidence={
        "candidates": [{"service": "frontend", "destination": "cart", "tied": True}]})
    # checkout's GC pressure ended just before; the churn on frontend's host goes on.
    feed(c, gc, resolved(gc, 21.5), tw,
         finding("e", "error_origin", {"service": "frontend", "operation": "POST /cart"}, 22))
    assert groups(c) == [("g", {"g"}), ("tw", {"tw", "e"})]


def test_a_late_resolution_does_not_chain_later_failures_to_an_old_symptom() -> None:
    # The real corpus, as a worker saw it: frontend's latency regression resolved at +2 min,
    # but its record came after two later failures below it (its partition was behind).
    c = Correlator()
    edges(c, ("frontend", "orders"), ("frontend", "pricing"), ("orders", "sqlite"))
    lat = finding("l", "latency_regression", {"service": "frontend"}, 0)
    feed(c, lat,
         finding("o", "error_origin", {"service": "orders", "operation": "SELECT",
                                       "peer_service": "sqlite"}, 4),
         finding("p", "error_origin", {"service": "pricing", "operation": "GET"}, 11.5),
         resolved(lat, 2))
    assert groups(c) == [("l", {"l"}), ("o", {"o"}), ("p", {"p"})]


def test_unrelated_or_upstream_problems_stay_apart() -> None:
    c = Correlator()
    edges(c, ("checkout", "payment"), ("frontend", "checkout"))
    # The caller's leak does not explain its callee's slowness, nor the other way round.
    feed(c, finding("m", "memory_leak", {"service": "checkout", "instance": "c1"}, 10),
         finding("p", "latency_regression", {"service": "payment"}, 10.5),
         finding("x", "error_origin", {"service": "search", "operation": "GET /q"}, 10.5))
    assert groups(c) == [("m", {"m"}), ("p", {"p"}), ("x", {"x"})]


def test_findings_further_apart_than_the_gap_are_separate_problems() -> None:
    c = Correlator(gap_s=60)
    a = finding("a", "error_origin", {"service": "pricing", "operation": "GET /price"}, 10)
    b = finding("b", "error_origin", {"service": "pricing", "operation": "GET /price"}, 17)
    feed(c, a, resolved(a, 14), b)
    assert groups(c) == [("a", {"a"}), ("b", {"b"})]
    c2 = Correlator(gap_s=300)
    feed(c2, a, resolved(a, 14), b)
    assert groups(c2) == [("a", {"a", "b"})]


def test_a_leak_that_goes_on_after_an_oom_restart_stays_one_incident() -> None:
    c = Correlator()
    inst = {"service": "cart", "instance": "c1"}
    first = finding("m1", "memory_leak", inst, 10)
    ended = {**resolved(first, 40), "evidence": {
        "resolved_because": "instance restarted: process.pid changed from 7 to 9"}}
    again = {**finding("m2", "memory_leak", inst, 55, evidence={
        "last_restart": {"at": rfc3339(T0 + 40 * M), "reason": "process.pid changed"}}),
        "fingerprint": "fp-m1"}  # the same entity and kind: a new finding id after a restart
    other = finding("m3", "memory_leak", {"service": "orders", "instance": "o1"}, 80)
    feed(c, first, ended, again, other)
    assert groups(c) == [("m1", {"m1", "m2"}), ("m3", {"m3"})]
    assert c.incidents[incidents.incident_id("m1")].status == "firing"


def test_a_cause_found_late_merges_the_incidents_it_explains() -> None:
    c = Correlator()
    edges(c, ("checkout", "postgres"), ("cart", "postgres"))
    feed(c, finding("l1", "latency_regression", {"service": "checkout"}, 10),
         finding("l2", "latency_regression", {"service": "cart"}, 10.2))
    assert len(c.incidents) == 2
    c.apply_finding(finding("db", "bottleneck_span", {"service": "cart", "operation": "q",
                                                      "peer_service": "postgres"}, 9))
    [inc] = c.incidents.values()
    assert set(inc.members) == {"l1", "l2", "db"} and inc.root.id == "db"
    assert c.take_merged() == {incidents.incident_id("l2"): incidents.incident_id("l1")}


def test_lifecycle_severity_only_rises_and_resolves_with_its_last_member() -> None:
    c = Correlator()
    inst = {"service": "cart", "instance": "c1"}
    m = finding("m", "memory_leak", inst, 10, severity="critical")
    g = finding("g", "gc_pressure", inst, 11)
    feed(c, m, g, resolved(m, 20))
    [inc] = c.incidents.values()
    assert inc.status == "firing" and inc.severity == "critical"
    c.apply_finding(m)  # an older record of a finding seen again changes nothing
    assert c.counts["stale_records"] == 1 and inc.members["m"].status == "resolved"
    c.apply_finding(resolved(g, 22))
    assert inc.status == "resolved" and inc.severity == "critical"
    assert inc.resolved_ns == T0 + 22 * M
    assert [e["status"] for e in inc.timeline] == ["firing", "firing", "resolved", "resolved"]


def test_resolved_incidents_are_forgotten_and_the_open_ones_capped() -> None:
    c = Correlator(max_incidents=2, keep_s=600)
    docs = [finding(f"e{i}", "error_origin", {"service": f"s{i}", "operation": "op"}, i)
            for i in range(3)]
    feed(c, *docs)
    assert len(c.incidents) == 2 and c.counts["evicted_incidents"] == 1
    feed(c, resolved(docs[1], 5), resolved(docs[2], 5))
    c.apply_edge("a", "b", rfc3339(T0 + 30 * M))  # the clock moves on
    assert c.incidents == {} and c.counts["expired_incidents"] == 2


def scenario_records() -> list[dict[str, Any]]:
    inst = {"service": "cart", "instance": "c1"}
    m = finding("m", "memory_leak", inst, 10)
    b = finding("b", "bottleneck_span", {"service": "frontend", "operation": "GET",
                                         "peer_service": "cart"}, 12)
    x = finding("x", "error_origin", {"service": "search", "operation": "q"}, 12)
    return [{"edge": {"client": "frontend", "server": "cart", "seen_at": rfc3339(T0)}},
            {"finding": m}, {"finding": x}, {"finding": b}, {"finding": resolved(x, 15)},
            {"finding": resolved(b, 16)}, {"finding": resolved(m, 18)}]


def test_the_same_records_give_the_same_incidents_and_a_snapshot_resumes_them() -> None:
    recs = scenario_records()

    def run(c: Correlator, rs: list[dict[str, Any]]) -> list[bytes]:
        return [incidents.to_json(i) for r in rs for i in c.apply(r)]

    whole = run(Correlator(), recs)
    assert whole == run(Correlator(), recs)
    first = Correlator()
    run(first, recs[:3])
    again = Correlator()
    again.restore(first.snapshot())
    assert run(again, recs[3:]) == whole[len(run(Correlator(), recs[:3])):]


def test_stage_applies_each_input_offset_once_and_throttles_edges() -> None:
    stage = IncidentStage(Settings())
    stage.correlator = stage.new_correlator()
    rec = finding_record(orjson.dumps(finding("e", "error_origin",
                                              {"service": "s", "operation": "o"}, 1)))
    out = stage.take(5, rec)
    assert [k for k, _ in out] == [incidents.incident_id("e").encode()]
    assert stage.take(5, rec) == [] and stage.take(3, rec) == []
    assert stage.take(6, b"not json") == [] and stage.correlator.counts["unreadable"] == 1
    edge = orjson.dumps({"client": "a", "server": "b", "last_seen": rfc3339(T0)})
    later = orjson.dumps({"client": "a", "server": "b", "last_seen": rfc3339(T0 + 5 * M)})
    much_later = orjson.dumps({"client": "a", "server": "b", "last_seen": rfc3339(T0 + 11 * M)})
    assert stage.edge_record(b"k", edge) is not None
    assert stage.edge_record(b"k", later) is None
    assert stage.edge_record(b"k", much_later) is not None
    assert stage.edge_record(b"k", None) is None


@pytest.mark.parametrize("bad", [{}, {"finding": {"kind": "memory_leak"}}, {"edge": {}}])
def test_unreadable_input_is_counted_not_raised(bad: dict[str, Any]) -> None:
    c = Correlator()
    try:
        c.apply(bad)
    except KeyError:
        pytest.fail("a bad record raised")
    assert c.counts["unreadable"] == 1


def test_tail_prints_an_incident_with_its_root_and_members() -> None:
    from pipeline.tail import format_incident

    c = Correlator()
    feed(c, finding("m", "memory_leak", {"service": "cart", "instance": "c1"}, 10),
         finding("g", "gc_pressure", {"service": "cart", "instance": "c1"}, 11))
    text = format_incident(incidents.to_dict(next(iter(c.incidents.values()))))
    head, summary, *rest = text.splitlines()
    assert "FIRING" in head and "root service:cart (memory_leak)" in head
    assert summary.strip().startswith("cart is the probable root")
    assert [line.split()[1] for line in rest if "member:" in line] == ["memory_leak",
                                                                       "gc_pressure"]
    assert format_incident({"id": "a", "status": "merged", "merged_into": "b"}) == (
        "INCIDENT a merged into b")


def test_scoring_one_incident_per_problem_and_its_root() -> None:
    from benchmarks.incident_scoring import score_incidents
    from benchmarks.scoring import LabelSet

    def label(kind: str, entity: dict[str, str], a: float, b: float, **kw: Any) -> dict:
        return {"type": "label", "kind": kind, "entity": entity, "start": rfc3339(int(T0 + a * M)),
                "end": rfc3339(int(T0 + b * M)), **kw}

    truth = LabelSet.from_lines([
        {"type": "run", "start": rfc3339(T0), "end": rfc3339(T0 + 60 * M)},
        label("bottleneck_span", {"service": "orders"}, 10, 14),
        # two faults injected as one problem, rooted at redis
        label("bottleneck_span", {"service": "cart"}, 16, 20, incident="r",
              incident_root={"service": "redis"}),
        label("bottleneck_span", {"peer_service": "redis"}, 16, 20, incident="r",
              incident_root={"service": "redis"}),
    ])
    fs = [finding("a", "bottleneck_span", {"service": "orders", "operation": "q"}, 10),
          # orders' call into redis: matches the orders label only through the grace
          finding("b", "bottleneck_span", {"service": "orders", "peer_service": "redis"}, 16),
          finding("c", "bottleneck_span", {"service": "cart", "peer_service": "redis"}, 16.5)]
    fs.insert(1, resolved(fs[0], 14))
    c = Correlator()
    feed(c, *fs)
    docs = [incidents.to_dict(i) for i in c.incidents.values()]
    s = score_incidents(docs, fs, truth)
    assert (s["faults_with_findings"], s["one_incident"], s["root_correct"]) == (2, 2, 2)
    # Split the redis problem: it is no longer in one incident.
    redis = next(d for d in docs if "c" in d["member_finding_ids"])
    split = [d for d in docs if d is not redis] + [
        {**redis, "member_finding_ids": ["b"]},
        {**redis, "id": "x" * 32, "member_finding_ids": ["c"],
         "root": {**redis["root"], "name": "cart"}}]
    s = score_incidents(split, fs, truth)
    assert (s["one_incident"], s["root_correct"]) == (1, 1)

"""Incidents: findings that share a cause, grouped online into one. Pure: no Kafka, no clock.

A slow database shows as one ``bottleneck_span`` per calling service; a leaking service may also
raise GC pressure and its callers' latency; a host's TIME_WAIT buildup comes with its clients'
failures. ``Correlator`` folds findings (as published on the findings topic) and the service
map's edges into *incidents*: one per problem, with a probable root, its member findings, a
timeline and one summary.

Each finding is *about* a node of the dependency map: ``service:<name>`` (the callee a finding
blames when it names one in ``peer_service``, else its service) or ``host:<name>``. A finding
*explains* another when it is about the same node and is a likelier cause (a leak explains the
same service's GC pressure, which explains its latency), or about a node *downstream* of the
other's (the callee of a caller, through the map's edges, a finding's own ``peer_service`` and
``callers``, or a host and the services whose connections pile up there). Findings that explain
one another while both are active (``gap_s`` of slack) are in one incident; its root is the member
that nothing else in the incident explains: the deepest anomalous entity.

Every time is event time from the records (a finding's ``started_at``, ``detected_at`` and
``resolved_at``, an edge's ``window_end``); the correlator's clock is the newest it has seen.
Applied in the same order, the same records give the same incidents, ids and records: the worker
feeds them from one partition, and a new owner rebuilds the state by replaying that partition.

    >>> c = Correlator()
    >>> f = {"id": "a1", "fingerprint": "fa", "kind": "memory_leak", "status": "firing",
    ...      "severity": "warning", "entity": {"service": "cart", "instance": "cart-1"},
    ...      "started_at": "2026-01-05T08:00:00Z", "detected_at": "2026-01-05T08:05:00Z",
    ...      "summary": "cart-1 heap floor rising"}
    >>> g = dict(f, id="b1", fingerprint="fb", kind="latency_regression",
    ...          entity={"service": "frontend"}, summary="frontend slower")
    >>> _ = c.apply_edge("frontend", "cart", "2026-01-05T08:04:00Z")
    >>> [i.id == c.apply_finding(f)[0].id for i in c.apply_finding(g)]
    [True]
    >>> inc = c.open_incidents()[0]
    >>> inc.root.kind, inc.root.node, len(inc.members)
    ('memory_leak', 'service:cart', 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from pipeline.detectors.trace_assembly import DB_KEYS
from pipeline.findings import KINDS, SEVERITIES, STATUSES, rfc3339

SCHEMA_VERSION = "1.0"
NAME = "incident_correlator"
VERSION = "1"
NS = 1_000_000_000
#: The most one record may move the correlator's clock ahead (a day).
MAX_JUMP_NS = 86_400 * NS
PRUNE_EVERY_NS = 60 * NS
#: How far apart the onsets of a slower or failing call and of its callers' symptoms may be.
ONSET_NS = 180 * NS

#: Within one node, which kind of finding is the likelier cause of which: a leak makes GC work
#: harder, GC pauses make requests slower and fail; a failing call is the reason for the slow or
#: failing spans above it. Lower ranks explain higher ones.
CAUSE_RANK = {
    "time_wait_buildup": 0, "memory_leak": 1, "gc_pressure": 2, "error_origin": 3,
    "bottleneck_span": 4, "latency_regression": 5,
}
#: Kinds about one process (an instance).
PROCESS_KINDS = frozenset({"memory_leak", "gc_pressure"})
#: Kinds that a problem further down a call chain shows up as in its callers.
PROPAGATED = frozenset({"error_origin", "bottleneck_span", "latency_regression"})


def parse_ns(text: str | None) -> int | None:
    """RFC 3339 (as the findings carry it) → Unix nanoseconds.

    >>> parse_ns("2026-01-05T08:00:00.250Z") - parse_ns("2026-01-05T08:00:00Z")
    250000000
    """
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * NS + dt.microsecond * 1000




def subject(kind: str, entity: Mapping[str, Any], evidence: Mapping[str, Any] | None = None
            ) -> str:
    """The dependency-map node a finding is about: the host for TIME_WAIT; the callee a finding
    names in ``peer_service`` (who is to blame); for a database or cache call, the database
    (``operation_detail``, named as the service map names it); else its service.

    >>> subject("bottleneck_span", {"service": "orders", "peer_service": "postgres"})
    'service:postgres'
    >>> subject("bottleneck_span", {"service": "cart", "operation": "HGETALL",
    ...                             "operation_detail": "redis"},
    ...         {"resource": {"db.system": "redis"}})
    'service:redis'
    >>> subject("time_wait_buildup", {"host": "web-1"})
    'host:web-1'
    """
    if kind == "time_wait_buildup" or ("host" in entity and "service" not in entity):
        return f"host:{entity.get('host', '')}"
    peer = entity.get("peer_service")
    if peer:
        return f"service:{peer}"
    attrs = (evidence or {}).get("resource") or {}
    if entity.get("operation_detail") and isinstance(attrs, Mapping) and any(
            k in attrs for k in DB_KEYS):
        return f"service:{entity['operation_detail']}"
    return f"service:{entity.get('service', '')}"


def _upstream_of(kind: str, entity: Mapping[str, Any], evidence: Mapping[str, Any]) -> set[str]:
    """Nodes a finding itself says depend on its subject: its caller when it blames a callee,
    the callers an error reached, the services whose connections pile up on a host."""
    out: set[str] = set()
    if entity.get("service"):  # the caller, when the finding blames what it calls
        out.add(f"service:{entity['service']}")
    for c in evidence.get("callers") or ():
        out.add(f"service:{c}")
    if kind == "time_wait_buildup":  # the clients the extra closes are tied to, else the best
        cands = [c for c in evidence.get("candidates") or () if isinstance(c, Mapping)]
        tied = [c for c in cands if c.get("tied")] or cands[:1]
        for c in tied:
            if c.get("service"):
                out.add(f"service:{c['service']}")
    out.discard(subject(kind, entity, evidence))
    return out


@dataclass(slots=True)
class Member:
    """The latest record of one finding (by id) in an incident."""

    id: str
    fingerprint: str
    kind: str
    status: str
    severity: str
    entity: dict[str, Any]
    node: str
    upstream: frozenset[str]
    started_ns: int
    detected_ns: int
    resolved_ns: int | None
    summary: str
    exemplars: tuple[str, ...] = ()
    next_steps: tuple[str, ...] = ()
    muted: bool = False
    # A restart ended the finding (``resolved_because``), or it opened again after one
    # (``last_restart``: when): the same leak going on in a new process.
    ended_by_restart: bool = False
    after_restart_ns: int | None = None

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def end_ns(self) -> float:
        """When it stopped being active: a firing finding still is (whatever the clock says:
        findings of partitions at other watermarks arrive out of event-time order)."""
        return self.resolved_ns if self.resolved_ns is not None else float("inf")

    def brief(self) -> dict[str, Any]:
        return {
            "id": self.id, "fingerprint": self.fingerprint, "kind": self.kind,
            "status": self.status, "severity": self.severity, "entity": self.entity,
            "started_at": rfc3339(self.started_ns), "resolved_at": rfc3339(self.resolved_ns),
            "summary": self.summary,
        }

    def to_state(self) -> list[Any]:
        return [self.id, self.fingerprint, self.kind, self.status, self.severity, self.entity,
                self.node, sorted(self.upstream), self.started_ns, self.detected_ns,
                self.resolved_ns, self.summary, list(self.exemplars), list(self.next_steps),
                self.muted, self.ended_by_restart, self.after_restart_ns]

    @classmethod
    def from_state(cls, s: list[Any]) -> Member:
        return cls(s[0], s[1], s[2], s[3], s[4], s[5], s[6], frozenset(s[7]), s[8], s[9], s[10],
                   s[11], tuple(s[12]), tuple(s[13]), s[14], s[15], s[16])


@dataclass(slots=True)
class Incident:
    id: str
    opened_ns: int  # event time of the first member's onset
    members: dict[str, Member] = field(default_factory=dict)  # finding id -> latest record
    timeline: list[dict[str, Any]] = field(default_factory=list)
    root_id: str = ""
    severity: str = "info"  # the highest any member reached: it never goes down
    status: str = "firing"
    resolved_ns: int | None = None
    updated_ns: int = 0
    dropped_events: int = 0  # timeline entries beyond the cap

    @property
    def root(self) -> Member:
        return self.members[self.root_id]

    def firing_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.firing]

    @property
    def muted(self) -> bool:
        firing = self.firing_members()
        return bool(firing) and all(m.muted for m in firing)


@dataclass(slots=True)
class Edge:
    client: str
    server: str
    seen_ns: int


class Correlator:
    """Group findings into incidents, online and in event time.

    ``gap_s``: slack between two findings' active spans for them to be one problem.
    ``edge_ttl_s``: how long a service-map edge counts after it was last seen.
    ``keep_s``: how long a resolved incident is kept, for a finding that goes on after a restart
    (a leak after an OOM kill: it reopens), after which it is forgotten. ``max_incidents`` /
    ``max_edges`` / ``max_members``: caps; what is evicted or left out is counted in
    ``counts``.
    """

    def __init__(self, gap_s: float = 60.0, edge_ttl_s: float = 3600.0, keep_s: float = 3600.0,
                 max_incidents: int = 1000, max_edges: int = 10_000, max_members: int = 100,
                 max_timeline: int = 100, max_depth: int = 6) -> None:
        self.gap_ns = int(gap_s * NS)
        self.edge_ttl_ns = int(edge_ttl_s * NS)
        self.keep_ns = int(keep_s * NS)
        self.max_incidents = max_incidents
        self.max_edges = max_edges
        self.max_members = max_members
        self.max_timeline = max_timeline
        self.max_depth = max_depth
        self.now_ns = 0
        self.incidents: dict[str, Incident] = {}
        self.by_finding: dict[str, str] = {}  # finding id -> incident id
        self.edges: dict[tuple[str, str], Edge] = {}
        self._merged: dict[str, str] = {}
        self._adj: dict[str, set[str]] | None = None
        self._prune_at = 0
        self.counts: dict[str, int] = {
            "findings": 0, "stale_records": 0, "unreadable": 0, "evicted_incidents": 0,
            "expired_incidents": 0, "evicted_edges": 0, "members_left_out": 0, "merged": 0,
            "clock_jumps": 0,
        }

    # -- inputs ---------------------------------------------------------------------------------

    def apply(self, record: Mapping[str, Any]) -> list[Incident]:
        """One record of the correlator's input: ``{"finding": {...}}`` or ``{"edge": {...}}``."""
        if isinstance(record.get("finding"), Mapping):
            return self.apply_finding(record["finding"])
        e = record.get("edge")
        if isinstance(e, Mapping) and e.get("client") and e.get("server"):
            try:
                return self.apply_edge(str(e["client"]), str(e["server"]), e.get("seen_at"))
            except ValueError:
                pass
        self.counts["unreadable"] += 1
        return []

    def apply_edge(self, client: str, server: str, seen_at: str | None) -> list[Incident]:
        self._adj = None
        at = parse_ns(seen_at) or self.now_ns
        key = (f"service:{client}", f"service:{server}")
        if key[0] == key[1]:
            return []
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= self.max_edges:
                oldest = min(self.edges.values(), key=lambda e: (e.seen_ns, e.client, e.server))
                del self.edges[(oldest.client, oldest.server)]
                self.counts["evicted_edges"] += 1
            self.edges[key] = Edge(key[0], key[1], at)
        else:
            edge.seen_ns = max(edge.seen_ns, at)
        self._advance(at)
        return []

    def apply_finding(self, doc: Mapping[str, Any]) -> list[Incident]:
        """Fold one finding record in; the incidents it changed, in a stable order."""
        try:
            m = self._member(doc)
        except (KeyError, TypeError, ValueError):
            self.counts["unreadable"] += 1
            return []
        self.counts["findings"] += 1
        self._adj = None
        changed: dict[str, Incident] = {}
        inc_id = self.by_finding.get(m.id)
        if inc_id is not None and inc_id in self.incidents:
            inc = self.incidents[inc_id]
            old = inc.members[m.id]
            if _order(m) < _order(old):  # an older record of the finding, seen again
                self.counts["stale_records"] += 1
                self._advance(max(m.detected_ns, m.resolved_ns or 0))
                return []
            inc.members[m.id] = m
            if (old.status, old.severity, old.muted) != (m.status, m.severity, m.muted):
                self._event(inc, m)
            changed[inc.id] = inc
        else:
            inc = self._place(m)
            changed[inc.id] = inc
        self._refresh(inc)
        self._advance(max(m.detected_ns, m.resolved_ns or 0))
        return sorted(changed.values(), key=lambda i: (i.opened_ns, i.id))

    # -- grouping -------------------------------------------------------------------------------

    def _adjacency(self) -> dict[str, set[str]]:
        """caller -> callees, from live edges and what findings say (kept until the next
        input changes either)."""
        if self._adj is None:
            adj: dict[str, set[str]] = {}
            for (a, b), e in self.edges.items():
                if self.now_ns - e.seen_ns <= self.edge_ttl_ns:
                    adj.setdefault(a, set()).add(b)
            for inc in self.incidents.values():
                for m in inc.members.values():
                    for up in m.upstream:
                        adj.setdefault(up, set()).add(m.node)
            self._adj = adj
        return self._adj

    def downstream(self, node: str) -> set[str]:
        """Nodes ``node`` depends on, through live edges and what findings say, up to
        ``max_depth`` calls away."""
        adj = self._adjacency()
        seen: set[str] = set()
        frontier = {node}
        for _ in range(self.max_depth):
            frontier = {b for a in frontier for b in adj.get(a, ())} - seen - {node}
            if not frontier:
                break
            seen |= frontier
        return seen

    def explains(self, cause: Member, effect: Member, below: set[str] | None = None) -> bool:
        """Whether ``cause`` is a likely reason for ``effect``.

        A cause that began after the effect was over explains nothing. On one node, the likelier
        kind explains the other (the earlier onset, for one kind); across nodes the two must
        overlap (``gap_s`` of slack is for one node's findings only).
        Across nodes, only what propagates up a call is an effect (slower or failing calls:
        ``PROPAGATED``), of a finding about a node it depends on (``below``: the effect's
        downstream set) or that names the effect's node among its own callers; a host's
        TIME_WAIT explains its clients' failures and latency, not one slow query.
        """
        if cause.started_ns > effect.end_ns():
            return False  # it began after the effect was over
        if cause.node == effect.node:
            if (cause.kind != effect.kind and cause.entity.get("instance")
                    and effect.entity.get("instance")
                    and cause.entity["instance"] != effect.entity["instance"]
                    and {cause.kind, effect.kind} <= PROCESS_KINDS):
                return False  # one process's memory does not explain another's GC
            return (CAUSE_RANK.get(cause.kind, 9), cause.started_ns, cause.id) < (
                CAUSE_RANK.get(effect.kind, 9), effect.started_ns, effect.id)
        if effect.kind not in PROPAGATED or effect.started_ns > cause.end_ns():
            return False  # (what a callee did before it began is no reason for it)
        if cause.kind in PROPAGATED and abs(effect.started_ns - cause.started_ns) > ONSET_NS:
            # A slower or failing call shows in its callers at once: onsets minutes apart
            # are two problems (a finding still "firing" here may have resolved already: its
            # record can come late from a partition that is behind).
            return False
        if cause.kind == "time_wait_buildup":  # the churning client's own failures
            return effect.kind in ("error_origin", "latency_regression") and (
                f"service:{effect.entity.get('service', '')}" in cause.upstream)
        if effect.node in cause.upstream:
            return True
        if below is None:
            below = self.downstream(effect.node)
        return cause.node in below

    def _explanation(self, cause: Member, effect: Member) -> tuple[int, int, int]:
        """How well ``cause`` explains ``effect``, best first: still active when the effect
        began (not over already), named by the finding itself (same node, its own caller or
        client) rather than found through the service map, closest in onset."""
        if not self._related(cause, effect) or not self.explains(cause, effect):
            return (9, 9, 0)
        over = int(cause.resolved_ns is not None and cause.resolved_ns < effect.started_ns)
        direct = int(not (cause.node == effect.node or effect.node in cause.upstream
                          or f"service:{effect.entity.get('service', '')}" in cause.upstream))
        return (over, direct, abs(effect.started_ns - cause.started_ns))

    def _related(self, a: Member, b: Member) -> bool:
        if _restarted(b, a) or _restarted(a, b):
            return True  # one problem going on through a restart (a leak after an OOM kill)
        if a.started_ns > b.end_ns() + self.gap_ns or b.started_ns > a.end_ns() + self.gap_ns:
            return False
        return self.explains(a, b) or self.explains(b, a)

    def _place(self, m: Member) -> Incident:
        hits: list[Incident] = []
        full = False
        for inc in sorted(self.incidents.values(), key=lambda i: (i.opened_ns, i.id)):
            if inc.status == "resolved" and m.started_ns > (inc.resolved_ns or 0) + self.keep_ns:
                continue
            for other in inc.members.values():
                if self._related(m, other):
                    if len(inc.members) >= self.max_members:
                        full = True  # related, but it cannot take more
                    else:
                        hits.append(inc)
                    break
        if not hits:
            inc = self._new(m)
        else:
            # The new finding joins every incident it explains (one cause below them all), else
            # the one that explains it best (a caller of two problems is not their common
            # cause, so they stay apart).
            below = [i for i in hits if any(self.explains(m, o) for o in i.members.values())]
            target = below[0] if below else min(hits, key=lambda i: (
                min(self._explanation(o, m) for o in i.members.values()), i.opened_ns, i.id))
            inc = target
            for other in below[1:]:
                self._merge(into=inc, other=other)
            inc.members[m.id] = m
            self.by_finding[m.id] = inc.id
            self._event(inc, m)
        if full and not hits:
            self.counts["members_left_out"] += 1  # a full incident could not take it
        return inc

    def _new(self, m: Member) -> Incident:
        if len(self.incidents) >= self.max_incidents:
            victim = min(self.incidents.values(),
                         key=lambda i: (i.status == "firing", i.updated_ns, i.id))
            self._forget(victim)
            self.counts["evicted_incidents"] += 1
        inc = Incident(id=incident_id(m.id), opened_ns=m.started_ns, updated_ns=m.detected_ns)
        inc.members[m.id] = m
        self.incidents[inc.id] = inc
        self.by_finding[m.id] = inc.id
        self._event(inc, m)
        return inc

    def _merge(self, into: Incident, other: Incident) -> None:
        for fid, m in other.members.items():
            into.members[fid] = m
            self.by_finding[fid] = into.id
        into.timeline = sorted(into.timeline + other.timeline,
                               key=lambda e: (e["at_ns"], e["finding"]))[-self.max_timeline:]
        into.opened_ns = min(into.opened_ns, other.opened_ns)
        into.severity = max(into.severity, other.severity, key=SEVERITIES.index)
        into.dropped_events += other.dropped_events
        del self.incidents[other.id]
        self._merged[other.id] = into.id
        self.counts["merged"] += 1

    def take_merged(self) -> dict[str, str]:
        """Incidents folded into another since last taken (their id -> the one they joined):
        the publisher writes a last record for each, pointing to where it went."""
        out, self._merged = self._merged, {}
        return out

    def _refresh(self, inc: Incident) -> None:
        self._adj = None  # its members changed
        members = list(inc.members.values())
        below = {m.id: self.downstream(m.node) for m in members}
        # The root: the member no other member explains (deepest node; on one node, the
        # likeliest cause); among several such, the likeliest cause, then the earliest.
        unexplained = [m for m in members
                       if not any(o.id != m.id and self.explains(o, m, below[m.id])
                                  for o in members)] or members
        root = min(unexplained, key=lambda m: (CAUSE_RANK.get(m.kind, 9), m.started_ns, m.id))
        inc.root_id = root.id
        inc.severity = max([inc.severity, *(m.severity for m in members)], key=SEVERITIES.index)
        inc.updated_ns = max(m.resolved_ns or m.detected_ns for m in members)
        if any(m.firing for m in members):
            inc.status, inc.resolved_ns = "firing", None
        else:
            inc.status = "resolved"
            inc.resolved_ns = max(m.resolved_ns or m.detected_ns for m in members)

    def _event(self, inc: Incident, m: Member) -> None:
        at = m.resolved_ns if m.resolved_ns is not None else m.detected_ns
        inc.timeline.append({"at_ns": at, "finding": m.id, "kind": m.kind, "status": m.status,
                             "severity": m.severity, "node": m.node, "muted": m.muted})
        inc.timeline.sort(key=lambda e: (e["at_ns"], e["finding"]))
        if len(inc.timeline) > self.max_timeline:
            del inc.timeline[0]
            inc.dropped_events += 1

    def _advance(self, at_ns: int) -> None:
        """Move the clock; forget incidents resolved longer than ``keep_s`` ago and edges past
        their time to live. A record more than ``MAX_JUMP_NS`` ahead of the clock (a broken
        clock somewhere) does not move it."""
        if at_ns <= self.now_ns:
            return
        if self.now_ns and at_ns - self.now_ns > MAX_JUMP_NS:
            self.counts["clock_jumps"] += 1
            return
        self.now_ns = at_ns
        if at_ns < self._prune_at:  # once a minute of event time: a replay stays cheap
            return
        self._prune_at = at_ns + PRUNE_EVERY_NS
        self._adj = None
        for inc in [i for i in self.incidents.values() if i.status == "resolved"
                    and (i.resolved_ns or 0) + self.keep_ns < at_ns]:
            self._forget(inc)
            self.counts["expired_incidents"] += 1
        for key in [k for k, e in self.edges.items() if at_ns - e.seen_ns > 2 * self.edge_ttl_ns]:
            del self.edges[key]

    def _forget(self, inc: Incident) -> None:
        for fid in inc.members:
            if self.by_finding.get(fid) == inc.id:
                del self.by_finding[fid]
        del self.incidents[inc.id]

    def _member(self, doc: Mapping[str, Any]) -> Member:
        kind = str(doc["kind"])
        if kind not in KINDS or doc["status"] not in STATUSES or (
                doc["severity"] not in SEVERITIES):
            raise ValueError(f"not a finding record: {kind!r}, {doc['status']!r}, "
                             f"{doc['severity']!r}")
        entity = dict(doc["entity"])
        evidence = doc.get("evidence") or {}
        started = parse_ns(doc["started_at"])
        detected = parse_ns(doc["detected_at"])
        if started is None or detected is None:
            raise ValueError("a finding without started_at/detected_at")
        return Member(
            id=str(doc["id"]), fingerprint=str(doc["fingerprint"]), kind=kind,
            status=str(doc["status"]), severity=str(doc["severity"]), entity=entity,
            node=subject(kind, entity, evidence),
            upstream=frozenset(_upstream_of(kind, entity, evidence)),
            started_ns=started, detected_ns=detected, resolved_ns=parse_ns(doc.get("resolved_at")),
            summary=str(doc.get("summary", "")),
            exemplars=tuple(str(t) for t in (evidence.get("exemplar_trace_ids") or ())[:3]),
            next_steps=tuple(str(s) for s in (doc.get("next_steps") or ())[:3]),
            muted=bool(doc.get("muted", False)),
            ended_by_restart="restart" in str(evidence.get("resolved_because", "")),
            after_restart_ns=parse_ns((evidence.get("last_restart") or {}).get("at"))
            if isinstance(evidence.get("last_restart"), Mapping) else None,
        )

    # -- outputs --------------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        return sorted((i for i in self.incidents.values() if i.status == "firing"),
                      key=lambda i: (i.opened_ns, i.id))

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "now": self.now_ns, "prune_at": self._prune_at, "counts": self.counts,
            "edges": [[e.client, e.server, e.seen_ns] for e in self.edges.values()],
            "incidents": [[i.id, i.opened_ns, [m.to_state() for m in i.members.values()],
                           i.timeline, i.root_id, i.severity, i.status, i.resolved_ns,
                           i.updated_ns, i.dropped_events] for i in self.incidents.values()],
        })

    def restore(self, blob: bytes) -> None:
        d = orjson.loads(blob)
        self.now_ns, self.counts = d["now"], {**self.counts, **d["counts"]}
        self._prune_at = d.get("prune_at", 0)
        self.edges = {(a, b): Edge(a, b, t) for a, b, t in d["edges"]}
        self.incidents, self.by_finding = {}, {}
        for iid, opened, members, timeline, root, sev, status, res, upd, dropped in d["incidents"]:
            inc = Incident(iid, opened, {s[0]: Member.from_state(s) for s in members},
                           timeline, root, sev, status, res, upd, dropped)
            self.incidents[iid] = inc
            for fid in inc.members:
                self.by_finding[fid] = iid


def _restarted(before: Member, after: Member) -> bool:
    """``after`` is ``before``'s finding again after the restart that ended it."""
    return (before.fingerprint == after.fingerprint and before.ended_by_restart
            and before.resolved_ns is not None and after.after_restart_ns is not None
            and abs(after.after_restart_ns - before.resolved_ns) <= 60 * NS)


def _order(m: Member) -> tuple[int, int, int, int]:
    """Records of one finding in the order its detector wrote them: firing updates (severity
    only rises), then the resolution."""
    return (m.status == "resolved", SEVERITIES.index(m.severity), m.detected_ns,
            m.resolved_ns or 0)


def incident_id(first_finding_id: str) -> str:
    return hashlib.sha256(f"incident:{first_finding_id}".encode()).hexdigest()[:32]


def node_label(node: str) -> tuple[str, str]:
    kind, _, name = node.partition(":")
    return kind, name


def to_dict(inc: Incident, muted_ok: bool = True) -> dict[str, Any]:
    """The incident's record on the incidents topic (``schemas/incident.schema.json``)."""
    members = sorted(inc.members.values(), key=lambda m: (m.started_ns, m.id))
    root = inc.root
    root_type, root_name = node_label(root.node)
    nodes = sorted({m.node for m in members})
    others = [m for m in members if m.id != root.id]
    kinds = sorted({m.kind for m in others}, key=lambda k: (CAUSE_RANK.get(k, 9), k))
    affected = sorted({node_label(m.node)[1] for m in others if m.node != root.node})
    text = f"{root_name} is the probable root: {root.summary.removeprefix('Resolved: ')}"
    if others:
        text += (f"; with {len(others)} more finding{'s' if len(others) > 1 else ''} "
                 f"({', '.join(k for k in kinds)})")
        if affected:
            text += f" on {', '.join(affected[:5])}{' and more' if len(affected) > 5 else ''}"
    exemplars = list(dict.fromkeys(t for m in [root, *others] for t in m.exemplars))[:5]
    steps = [f"Start with the root: {root.kind} on {root_name} (finding {root.id})"
             + ("; the other findings are probably its knock-on effects." if others else "."),
             *root.next_steps]
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": inc.id,
        "status": inc.status,
        "severity": inc.severity,
        "root": {"type": root_type, "name": root_name, "kind": root.kind,
                 "entity": root.entity, "finding_id": root.id,
                 "fingerprint": root.fingerprint},
        "summary": text,
        "started_at": rfc3339(inc.opened_ns),
        "updated_at": rfc3339(inc.updated_ns),
        "resolved_at": rfc3339(inc.resolved_ns),
        "entities": nodes,
        "member_finding_ids": [m.id for m in members],
        "members": [m.brief() for m in members],
        "timeline": [{"at": rfc3339(e["at_ns"]), "finding_id": e["finding"], "kind": e["kind"],
                      "status": e["status"], "severity": e["severity"], "node": e["node"]}
                     for e in inc.timeline],
        "exemplar_trace_ids": exemplars,
        "next_steps": steps,
        "correlator": {"name": NAME, "version": VERSION},
    }
    if inc.dropped_events:
        doc["timeline_dropped"] = inc.dropped_events
    if muted_ok and inc.muted:
        doc["muted"] = True
    return doc


def to_json(inc: Incident) -> bytes:
    return orjson.dumps(to_dict(inc))


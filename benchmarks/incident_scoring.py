"""Score incidents against the injected faults: one incident per fault, and its root right.

An injected *problem* is a positive label, or the labels that share an ``incident`` name (a
cause and its knock-on effects injected as separate faults). Its *findings* are those that match
one of its labels as the per-kind scoring counts them (the label's kind and entity, inside its
window plus the grace). A problem with findings is in *one incident* when exactly one incident
holds them all (none left out) and no other problem's; else it was split or merged. Its root
is right (counted only when it is in one incident) when the incident's root node is the
problem's ``incident_root``, or, for a root finding of one of the problem's kinds, when it
names the problem's first label (its entity or one of its alternatives) or its node is that
label's service or host. A problem of one finding is trivially in one incident: the table says
how many had several. Incidents none of whose members
match a fault are listed apart (a knock-on split off, or a problem nobody injected).

    >>> from benchmarks.scoring import LabelSet
    >>> truth = LabelSet.from_lines([
    ...     {"type": "run", "start": "2026-01-05T08:00:00Z", "end": "2026-01-05T09:00:00Z"},
    ...     {"type": "label", "kind": "memory_leak", "entity": {"service": "cart"},
    ...      "start": "2026-01-05T08:00:00Z", "end": "2026-01-05T08:30:00Z"}])
    >>> f = {"id": "f1", "fingerprint": "x", "kind": "memory_leak", "status": "firing",
    ...      "entity": {"service": "cart", "instance": "c1"}, "detected_at": "2026-01-05T08:10:00Z"}
    >>> inc = {"id": "i1", "member_finding_ids": ["f1"],
    ...        "root": {"finding_id": "f1", "type": "service", "name": "cart",
    ...                 "kind": "memory_leak", "entity": {"service": "cart", "instance": "c1"}}}
    >>> s = score_incidents([inc], [f], truth)
    >>> s["faults_with_findings"], s["one_incident"], s["root_correct"]
    (1, 1, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.scoring import Alert, Label, LabelSet, alerts_from_findings, grace_ns


def latest(incidents: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each incident id (a compacted topic's view); merged-away incidents
    (a record with ``merged_into``) and tombstones dropped."""
    by_id: dict[str, dict[str, Any]] = {}
    for doc in incidents:
        if doc:
            by_id[str(doc["id"])] = dict(doc)
    return [d for d in by_id.values() if not d.get("merged_into")]


def _root_right(labels: Sequence[Label], inc: Mapping[str, Any]) -> bool:
    """Whether the incident's root names the problem: the group's ``incident_root`` if it has
    one, else its first label (its entity or one of its alternatives)."""
    root = inc.get("root") or {}
    name = str(root.get("name", ""))
    first = labels[0]
    if first.incident_root:
        want = [first.incident_root]
    elif root.get("kind") not in {lb.kind for lb in labels}:
        return False  # a knock-on finding as the root, even on the right entity
    else:
        alert = Alert(kind=str(root.get("kind", "")), entity={
            str(k): str(v) for k, v in (root.get("entity") or {}).items()}, fired_at_ns=0)
        if first._names(alert):
            return True
        want = [first.entity, *first.entity_any]
    return any(name and (e.get("service") == name or e.get("host") == name) for e in want)


def problems(truth: LabelSet) -> list[list[Label]]:
    """The injected problems: the positive labels, those sharing an ``incident`` name as one
    (in label order)."""
    out: dict[str, list[Label]] = {}
    for i, lb in enumerate(lb for lb in truth.labels if not lb.negative):
        out.setdefault(lb.incident or f"#{i}", []).append(lb)
    return list(out.values())


def score_incidents(incidents: Sequence[Mapping[str, Any]],
                    findings: Sequence[Mapping[str, Any]], truth: LabelSet,
                    grace_s: Mapping[str, float] | float | None = None) -> dict[str, Any]:
    incidents = latest(incidents)
    holder: dict[str, str] = {}
    for inc in incidents:
        for fid in inc.get("member_finding_ids") or ():
            holder[str(fid)] = str(inc["id"])
    alerts = alerts_from_findings(findings)
    groups = problems(truth)
    of_group: list[list[Alert]] = [[] for _ in groups]
    for a in alerts:
        # A finding counts for one problem: of those it matches, the ones whose window holds
        # it (without the grace after the end) if any (a caller's call into a service slowed
        # later matches the caller's own earlier fault only through the grace).
        hits = [i for i, labels in enumerate(groups)
                if any(a.kind == lb.kind and lb.matches(a, grace_ns(lb.kind, grace_s))
                       for lb in labels)]
        inside = [i for i in hits
                  if any(a.kind == lb.kind and lb.active(a) for lb in groups[i])]
        for i in inside or hits:
            of_group[i].append(a)
    group_of_incident: dict[str, set[int]] = {}
    for i, hits in enumerate(of_group):
        for a in hits:
            if a.id in holder:
                group_of_incident.setdefault(holder[a.id], set()).add(i)
    by_id = {str(inc["id"]): inc for inc in incidents}
    rows = []
    for i, (labels, hits) in enumerate(zip(groups, of_group, strict=True)):
        held = sorted({holder[a.id] for a in hits if a.id in holder})
        first = labels[0]
        row: dict[str, Any] = {
            **first.describe(), "labels": len(labels), "findings": len(hits),
            "kinds_found": sorted({a.kind for a in hits}), "incidents": len(held)}
        if first.incident:
            row["incident"] = first.incident
        if len(held) == 1 and all(a.id in holder for a in hits):
            inc = by_id[held[0]]
            row.update(incident_id=held[0], root=inc.get("root", {}).get("name"),
                       root_kind=inc.get("root", {}).get("kind"),
                       root_correct=_root_right(labels, inc),
                       merged_with=sorted(j for j in group_of_incident.get(held[0], ())
                                          if j != i),
                       members=len(inc.get("member_finding_ids") or ()))
        if any(a.id not in holder for a in hits):
            row["ungrouped"] = sum(a.id not in holder for a in hits)
        rows.append(row)
    with_findings = [r for r in rows if r["findings"]]
    one = [r for r in with_findings if "incident_id" in r and not r.get("merged_with")]
    right = [r for r in one if r.get("root_correct")]
    unmatched = [inc for inc in incidents if str(inc["id"]) not in group_of_incident]
    n = len(with_findings)
    return {
        "problems": len(groups),
        "multi_finding_problems": sum(len(r["kinds_found"]) > 1 or r["findings"] > 1
                                      for r in with_findings),
        "faults_with_findings": n,
        "one_incident": len(one),
        "one_incident_share": round(len(one) / n, 4) if n else None,
        "root_correct": len(right),
        "root_correct_share": round(len(right) / n, 4) if n else None,
        "incidents": len(incidents),
        "finding_ids": len({a.id for a in alerts}),
        "incidents_without_fault": len(unmatched),
        "unmatched": [{"id": inc["id"], "root": (inc.get("root") or {}).get("name"),
                       "kinds": sorted({m.get("kind") for m in inc.get("members") or ()}),
                       "started_at": inc.get("started_at"),
                       "members": len(inc.get("member_finding_ids") or ())}
                      for inc in unmatched],
        "faults_detail": rows,
    }


def table(score: Mapping[str, Any]) -> str:
    lines = [f"incidents: {score['incidents']} from {score['finding_ids']} findings; "
             f"{score['one_incident']}/{score['faults_with_findings']} detected problems in one "
             f"incident of their own ({score['multi_finding_problems']} with several findings), "
             f"root right for {score['root_correct']}; {score['incidents_without_fault']} "
             "incidents match no injected problem"]
    for r in score["faults_detail"]:
        what = r.get("incident") or r["kind"]
        if not r["findings"]:
            lines.append(f"     {what:<18} {r['entity']} not detected")
            continue
        mark = "ok" if "incident_id" in r and not r.get("merged_with") else "!!"
        lines.append(
            f"  {mark} {what:<18} {r['entity']}: {r['findings']} finding(s) "
            f"({', '.join(r['kinds_found'])}) in {r['incidents']} incident(s); root "
            f"{r.get('root_kind')} on {r.get('root')} "
            f"({'right' if r.get('root_correct') else 'wrong'})"
            + (f", merged with problem(s) {r['merged_with']}" if r.get("merged_with") else ""))
    for u in score["unmatched"]:
        lines.append(f"  -- no injected problem: root {u['root']} ({', '.join(u['kinds'])}), "
                     f"{u['members']} finding(s) from {u['started_at']}")
    return "\n".join(lines)

"""Findings: the model users consume, its JSON form, and its lifecycle. Pure: no Kafka, no clock.

A finding is identified by its *fingerprint* (kind + entity), which is also its Kafka key, so a
compacted ``anomaly_findings`` topic holds the latest state of each. Its *id* adds the onset time:
the same incident replayed gives the same id; a new incident on the same entity gets a new one.

``Lifecycle`` turns a detector's per-window verdicts into findings with hysteresis: a finding
opens (``firing``) after ``open_after`` consecutive anomalous windows and resolves after
``resolve_after`` consecutive normal ones, so one noisy window neither opens nor closes anything.
Severity only escalates within a finding, for every detector: a verdict of a higher severity
publishes the finding again with it; a lower one changes nothing (no record says "critical",
then "warning" 30 s later while the same problem goes on). Each record carries the evidence of
the latest anomalous window. ``started_at`` is when the anomaly began in event time: the first
anomalous window, or the onset a detector estimates (``Verdict.started_at_ns``, e.g. when a
leak's growth began); it is fixed when the finding opens, and so is its id.

    >>> lc = Lifecycle("memory_leak", "memory_leak", "1", open_after=2, resolve_after=2)
    >>> e = {"service": "cart", "instance": "cart-1"}
    >>> bad = Verdict(severity="warning", summary="heap floor rising", evidence={})
    >>> [lc.observe(e, t, bad) for t in (1, 2)][1].status
    'firing'
    >>> lc.observe(e, 3, None) is None, lc.observe(e, 4, None).status
    (True, 'resolved')
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.state import Keyed

# 1.1 added runbook_url (optional), 1.2 the error_origin kind, 1.3 muted and acknowledged
# (optional, from the feedback topic: pipeline/feedback.py); see schemas/finding.schema.json
SCHEMA_VERSION = "1.3"
KINDS = (
    "bottleneck_span", "latency_regression", "memory_leak", "gc_pressure", "time_wait_buildup",
    "error_origin",
)
SEVERITIES = ("info", "warning", "critical")  # in rising order: severity only escalates
#: Words a firing finding's summary ends with that no longer hold once it has resolved.
FIRING_ONLY = (" ← BOTTLENECK",)
STATUSES = ("firing", "resolved")


def fingerprint(kind: str, entity: Mapping[str, Any]) -> str:
    """Stable identity of (kind, entity), independent of key order.

    >>> fingerprint("memory_leak", {"service": "a", "instance": "b"}) == \\
    ...     fingerprint("memory_leak", {"instance": "b", "service": "a"})
    True
    """
    doc = orjson.dumps([kind, sorted((str(k), str(v)) for k, v in entity.items())])
    return hashlib.sha256(doc).hexdigest()[:32]


def finding_id(fp: str, started_at_ns: int) -> str:
    return hashlib.sha256(f"{fp}:{started_at_ns}".encode()).hexdigest()[:32]


def rfc3339(ns: int | None) -> str | None:
    """Event time in nanoseconds → RFC 3339 UTC with millisecond precision."""
    if ns is None:
        return None
    dt = datetime.fromtimestamp(ns // 1_000_000 / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Finding:
    kind: str
    status: str
    severity: str
    entity: dict[str, Any]
    started_at_ns: int
    detected_at_ns: int
    summary: str
    evidence: dict[str, Any]
    next_steps: list[str]
    detector: str
    detector_version: str
    resolved_at_ns: int | None = None
    fingerprint: str = ""
    id: str = ""
    runbook_url: str = ""  # set by the publisher (RUNBOOK_BASE_URL + kind); omitted when empty
    # Set by the publisher from the feedback topic (``pipeline.feedback``); omitted when unset.
    muted: bool = False
    acknowledged: dict[str, Any] | None = None  # {"by", "at"}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        self.fingerprint = self.fingerprint or fingerprint(self.kind, self.entity)
        self.id = self.id or finding_id(self.fingerprint, self.started_at_ns)

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "status": self.status,
            "severity": self.severity,
            "entity": self.entity,
            "started_at": rfc3339(self.started_at_ns),
            "detected_at": rfc3339(self.detected_at_ns),
            "resolved_at": rfc3339(self.resolved_at_ns),
            "summary": self.summary,
            "evidence": self.evidence,
            "next_steps": self.next_steps,
            "detector": {"name": self.detector, "version": self.detector_version},
        }
        if self.runbook_url:
            doc["runbook_url"] = self.runbook_url
        if self.muted:
            doc["muted"] = True
        if self.acknowledged:
            doc["acknowledged"] = dict(self.acknowledged)
        return doc

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(slots=True)
class Verdict:
    """A detector's judgement that an entity is anomalous in one window, with its explanation."""

    severity: str
    summary: str
    evidence: dict[str, Any]
    next_steps: list[str] = field(default_factory=list)
    # When the anomaly began (event time, ns) if the detector can tell it before the first
    # anomalous window (a leak's growth starts long before the trend is significant); used
    # when the finding opens, for its started_at and id.
    started_at_ns: int | None = None


class Lifecycle:
    """Hysteresis and identity for one finding kind.

    Detectors call ``observe(entity, window_end_ns, verdict_or_None)`` once per evaluated window;
    it returns the finding to publish on a transition (open, severity change, resolve) and
    ``None`` otherwise. State is per fingerprint (``store``, a ``pipeline.state.Keyed`` under
    ``prefix``), capped at ``max_tracked`` (the longest quiet entries that are not firing go
    first; what is dropped is counted in ``evicted``).
    """

    def __init__(
        self,
        kind: str,
        detector: str,
        version: str,
        open_after: int = 3,
        resolve_after: int = 3,
        max_tracked: int = 10_000,
        prefix: str = "",
    ) -> None:
        if open_after < 1 or resolve_after < 1:
            raise ValueError("open_after and resolve_after must be >= 1")
        self.kind, self.detector, self.version = kind, detector, version
        self.open_after, self.resolve_after, self.max_tracked = (
            open_after, resolve_after, max_tracked,
        )
        self.store: Keyed[dict[str, Any]] = Keyed(
            prefix, encode=dict, decode=lambda doc, fp: doc, cap=max_tracked)
        self._state = self.store

    @property
    def evicted(self) -> int:
        return self.store.evicted

    @property
    def refused(self) -> int:
        """New entities not tracked because every slot held a firing finding."""
        return self.store.refused

    # -- the work --------------------------------------------------------------------------
    def observe(
        self, entity: Mapping[str, Any], at_ns: int, verdict: Verdict | None
    ) -> Finding | None:
        fp = fingerprint(self.kind, entity)
        st = self._state.get(fp)
        if st is None:
            if verdict is None:
                return None  # healthy and never suspicious: keep no state
            # Only the longest-quiet *non-firing* entry is evicted: dropping a firing one would
            # leave its finding firing forever on the compacted topic, with no resolve.
            if not self.store.make_room(protect=lambda _fp, st: st["firing"]):
                return None  # counted in ``refused``
            st = {
                "entity": dict(entity), "bad": 0, "good": 0, "firing": False,
                "started": at_ns, "detected": None, "severity": None, "last": None, "seen": at_ns,
            }
            self.store.put(fp, st)
        self.store.changed(fp)
        st["seen"] = at_ns
        if verdict is not None:
            if st["bad"] == 0 and not st["firing"]:
                st["started"] = at_ns
            st["bad"] += 1
            st["good"] = 0
            st["last"] = [verdict.severity, verdict.summary, verdict.evidence, verdict.next_steps]
            if not st["firing"] and st["bad"] >= self.open_after:
                st["firing"], st["detected"], st["severity"] = True, at_ns, verdict.severity
                if verdict.started_at_ns is not None:  # fixed from here on: the id with it
                    st["started"] = min(st["started"], verdict.started_at_ns)
                return self._finding(fp, st, "firing", None)
            if st["firing"] and _rank(verdict.severity) > _rank(st["severity"]):
                st["severity"] = verdict.severity  # escalates; never back while it fires
                return self._finding(fp, st, "firing", None)
            return None
        st["good"] += 1
        if st["firing"] and st["good"] >= self.resolve_after:
            finding = self._finding(fp, st, "resolved", at_ns)
            self._drop(fp)
            return finding
        if not st["firing"]:
            st["bad"] = 0
            if st["good"] >= self.resolve_after:
                self._drop(fp)
        return None

    def is_firing(self, entity: Mapping[str, Any]) -> bool:
        st = self._state.get(fingerprint(self.kind, entity))
        return bool(st and st["firing"])

    def amend(self, entity: Mapping[str, Any], verdict: Verdict) -> Finding | None:
        """Replace a firing finding's explanation (same id, same severity) and return it to
        publish again: evidence that arrived after it opened (a side input that was behind)."""
        fp = fingerprint(self.kind, entity)
        st = self._state.get(fp)
        if st is None or not st["firing"]:
            return None
        st["last"] = [st["severity"], verdict.summary, verdict.evidence, verdict.next_steps]
        self.store.changed(fp)
        return self._finding(fp, st, "firing", None)

    def severity(self, entity: Mapping[str, Any]) -> str | None:
        """The severity of the entity's firing finding (None if none is firing)."""
        st = self._state.get(fingerprint(self.kind, entity))
        return st["severity"] if st and st["firing"] else None

    def resolve(self, entity: Mapping[str, Any], at_ns: int, reason: str) -> Finding | None:
        """Resolve at once, without waiting for normal windows (the entity restarted, so its
        evidence no longer holds); returns the resolved finding if one was firing."""
        fp = fingerprint(self.kind, entity)
        st = self._state.get(fp)
        if st is None:
            return None
        finding = None
        if st["firing"]:
            finding = self._finding(fp, st, "resolved", at_ns)
            finding.evidence = {**finding.evidence, "resolved_because": reason}
        self._drop(fp)
        return finding

    def expire(self, now_ns: int, idle_ns: int) -> list[Finding]:
        """Resolve and forget entities not observed for ``idle_ns`` (an instance that went away)."""
        out = []
        for fp, st in sorted(self._state.items()):  # a restored state resolves in the same order
            if now_ns - st["seen"] >= idle_ns:
                if st["firing"]:
                    out.append(self._finding(fp, st, "resolved", now_ns))
                self._drop(fp)
        return out

    def open_findings(self) -> list[Finding]:
        """Each firing finding as it stands now (its latest explanation), to publish again
        when something about it changes outside the detector (feedback: a mute, an ack)."""
        return [self._finding(fp, st, "firing", None)
                for fp, st in sorted(self._state.items()) if st["firing"]]

    def active(self) -> list[dict[str, Any]]:
        return [st for st in self._state.values() if st["firing"]]

    def firing(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """``(kind, severity, fingerprint, entity)`` of each firing finding (for metrics)."""
        return [(self.kind, st["severity"], fp, dict(st["entity"]))
                for fp, st in self._state.items() if st["firing"]]

    # -- state -----------------------------------------------------------------------------
    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        """Standalone use; a detector saves ``store`` with its ``State`` instead."""
        return self.store.snapshot(changed_only)

    def restore(self, state: Mapping[str, Any]) -> None:
        self.store.restore(state)

    def __len__(self) -> int:
        return len(self._state)

    # -- helpers ---------------------------------------------------------------------------
    def _finding(self, fp: str, st: dict[str, Any], status: str, resolved: int | None) -> Finding:
        severity, summary, evidence, next_steps = st["last"]
        if status == "resolved":
            for words in FIRING_ONLY:
                summary = summary.replace(words, "")
            summary = f"Resolved: {summary}"
        return Finding(
            kind=self.kind, status=status, severity=st["severity"] or severity,
            entity=dict(st["entity"]), started_at_ns=st["started"],
            detected_at_ns=st["detected"] if st["detected"] is not None else st["seen"],
            resolved_at_ns=resolved, summary=summary, evidence=evidence,
            next_steps=list(next_steps), detector=self.detector, detector_version=self.version,
            fingerprint=fp,
        )

    def _drop(self, fp: str) -> None:
        self.store.pop(fp)  # a None in the next snapshot deletes it from the table


def _rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1

"""Score findings (or any method's alerts) against the simulator's ground-truth labels. Pure.

Inputs are one scenario's labels (``pipeline.simulate.label_lines``: a ``run`` line, then one
line per fault or hard negative) and *alerts*: ``(kind, entity, fired_at_ns)``. Findings become
alerts by distinct ``id`` over ``status == "firing"`` records only (a finding is re-published on
a severity change and on resolve; resolved records are never counted), fired at their
``detected_at``. Any other method (a static threshold, a ``predict_linear`` rule, HalfSpaceTrees)
is scored the same way with ``score_rule``, under the key ``baseline:<name>``.

For one finding kind:

- A **positive label** is a label of that kind with ``negative: false``.
- An alert **matches** a label when the kinds are equal, every key of the label's entity equals
  the alert's entity value for that key (an empty label entity matches every entity), and the
  alert fired within ``[label start, label end + grace]``; grace is per kind (``DEFAULT_GRACE_S``;
  leaks get longer: a slow leak may be provable only well after its onset, and a leak label runs
  through any OOM kill, which keeps the ``service.instance.id``).
- ``tp``: positive labels matched by at least one alert; ``fn``: positive labels matched by none.
- ``fp``: alerts matching no positive label. ``tp_alerts``: alerts matching at least one.
  ``alerts`` = ``tp_alerts`` + ``fp``; a flapping finding that re-opens on the same fault adds to
  ``tp_alerts`` but not to ``tp``, so ``tp_alerts - tp`` shows repeated alerts.
- ``precision`` = tp_alerts / alerts (None without alerts); ``recall`` = tp / positive labels
  (None without positive labels); ``f1`` their harmonic mean (None if either is None).
- ``median_delay_s``: median over detected positive labels of (first matching alert's fired_at -
  label start), in event-time seconds.
- ``false_alarms_per_100h`` = 100 * fp / entity-hours, where entity-hours = the number of
  entities that could have had this kind of finding (from the run line's ``entities``:
  operations for ``bottleneck_span`` and ``error_origin``, instances for ``memory_leak`` /
  ``gc_pressure``, hosts for ``time_wait_buildup``, services for ``latency_regression``) times
  the run's hours.
- ``error_origin``: a label names the origin span's ``service`` and ``operation``, so a finding
  matches only if it names the origin (a finding on a caller the error propagated to is a false
  alarm). "Origin named" (the share of error faults whose origin service a finding named) is
  therefore ``recall``, and is not reported separately.
- ``hard_negative_false_alarms``: false alarms (``fp``) that match, as above, a negative label
  whose ``must_not_trigger`` lists the kind: the look-alikes the detector must stay quiet on.
- **Inhibited alerts** (``INHIBITED_BY``): a ``gc_pressure`` alert that matches no positive
  ``gc_pressure`` label but fired on an instance while that instance has an active positive
  ``memory_leak`` label (every key of the leak label's entity equal, fired within [leak start,
  leak end], no grace) is *ignored*: neither tp nor fp, counted in ``inhibited``. A leak near
  its limit does cause GC pressure, and alerting inhibits ``gc_pressure`` under ``memory_leak``
  (an Alertmanager ``inhibit_rules`` entry with ``equal: [service, instance]``), so such an
  alert would not reach anyone. Applies to findings and baselines alike.
- **Time left** (``TIME_LEFT``: ``time_to_oom`` for ``memory_leak``, ``time_to_exhaustion``
  for ``time_wait_buildup``): for each detected label, the first matching finding's estimate
  (``evidence["time_to_oom_s"]``, ``evidence["time_to_exhaustion_s"]``) at its first firing
  report is compared with the true time left at that report's ``detected_at``: for leaks
  (``true_time_to_oom_s``) from the label's ``truth.processes`` when present (``oom_at`` of the
  process running then, minus then), otherwise, and for TIME_WAIT, the label's truth at onset
  minus the time since (``truth.time_to_oom_s`` / ``truth.time_to_exhaustion_s`` -
  (detected_at - label start)). Reported: ``labels`` (detected labels whose true time left at
  detection is known and positive), ``with_estimate`` (of those, with a numeric estimate;
  ``null`` or a missing field is no estimate), ``median_abs_rel_err`` and ``max_abs_rel_err`` of
  ``|estimate - truth| / truth`` over the estimates, ``within_20pct`` = estimates within +-20 %
  / ``labels`` (a missing estimate counts as outside), and ``late``: detected labels whose
  resource had already run out at the first report (true time left <= 0; not in ``labels``).
  A label whose truth has no time (a leak that stops first, a TIME_WAIT plateau under the
  ephemeral range) is in neither. Baselines carry no evidence, so they have ``with_estimate`` 0.
- ``delay_by_rate_class`` (``RATE_CLASSES_BY_KIND``): per class of the label's rate, labels,
  detected, and the median delay. Leaks by ``magnitude.rate_pct_limit_per_hour`` (<=1 %/h,
  1-10 %/h, 10-40 %/h, >40 %/h: the suite's 0.5, 5, 20-30 and 60 %/h = 1 %/min leaks);
  TIME_WAIT buildups by ``magnitude.close_rate_per_s`` (else ``truth.expected_close_rate_per_s``)
  at onset (<20/s, 20-100/s, >=100/s: a plateau under ~1,200, up to ~6,000, and the fast ones,
  which run a destination's 28,232 ephemeral ports out from ~470/s).

Scores of several scenarios combine with ``merge`` (sums of counts and entity-hours, pooled
delays), then the ratios are recomputed.

>>> labels = LabelSet.from_lines([
...     {"type": "run", "scenario": "s", "start_unix_nano": 0, "end_unix_nano": 3600 * 10**9,
...      "duration_s": 3600.0, "entities": {"hosts": 4}},
...     {"type": "label", "kind": "time_wait_buildup", "negative": False, "entity": {"host": "a"},
...      "start_unix_nano": 600 * 10**9, "end_unix_nano": 1200 * 10**9}])
>>> s = score_rule("static", "time_wait_buildup", [({"host": "a"}, 660 * 10**9)], labels)
>>> s.name, s.tp, s.fp, s.recall, s.median_delay_s
('baseline:static', 1, 0, 1.0, 60.0)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.simulate.timefmt import parse_time_ns, rfc3339

NS = 1_000_000_000
DEFAULT_GRACE_S = 600.0
GRACE_BY_KIND_S: dict[str, float] = {"memory_leak": 1800.0, "error_origin": 120.0}
#: Which count of the run line's ``entities`` could carry each finding kind.
ENTITY_COUNT_BY_KIND: dict[str, str] = {
    "bottleneck_span": "operations",
    "error_origin": "operations",
    "memory_leak": "instances",
    "gc_pressure": "instances",
    "time_wait_buildup": "hosts",
    "latency_regression": "services",
}
#: Alerts of a kind (key) are ignored while a positive label of one of these kinds is active on
#: the same entity (module docstring): Alertmanager-style inhibition.
INHIBITED_BY: dict[str, tuple[str, ...]] = {"gc_pressure": ("memory_leak",)}
#: Leak rate classes for ``delay_by_rate_class``: (upper bound in % of the limit per hour,
#: inclusive; name).
RATE_CLASSES: tuple[tuple[float, str], ...] = (
    (1.0, "<=1%/h"), (10.0, "1-10%/h"), (40.0, "10-40%/h"), (float("inf"), ">40%/h"),
)
#: TIME_WAIT close-rate classes: (upper bound in closes/s, exclusive; name).
CLOSE_RATE_CLASSES: tuple[tuple[float, str], ...] = (
    (20.0, "<20/s"), (100.0, "20-100/s"), (float("inf"), ">=100/s"),
)
TTO_TOLERANCE = 0.2  # +-20 % for ``within_20pct``


@dataclass(frozen=True, slots=True)
class RateClasses:
    """How one kind's labels are classed by rate for ``delay_by_rate_class``."""

    keys: tuple[str, ...]  # the rate: the first of these in the label's magnitude, then truth
    what: str  # for tables: "leak rate"
    bounds: tuple[tuple[float, str], ...]  # (upper bound, name), ascending
    upper_inclusive: bool

    def rate(self, label: Label) -> float | None:
        for source in (label.magnitude, label.truth):
            for key in self.keys:
                if isinstance(source.get(key), int | float):
                    return float(source[key])
        return None

    def of(self, rate: float) -> str:
        for upper, name in self.bounds:
            if rate < upper or (self.upper_inclusive and rate == upper):
                return name
        return self.bounds[-1][1]


RATE_CLASSES_BY_KIND: dict[str, RateClasses] = {
    "memory_leak": RateClasses(("rate_pct_limit_per_hour",), "leak rate", RATE_CLASSES, True),
    "time_wait_buildup": RateClasses(
        ("close_rate_per_s", "expected_close_rate_per_s"), "close rate", CLOSE_RATE_CLASSES,
        False),
}


@dataclass(frozen=True, slots=True)
class TimeLeft:
    """A kind whose findings predict when a resource runs out (module docstring)."""

    field: str  # evidence field of the estimate and truth field at onset, in seconds
    key: str  # name in the scores
    what: str  # for tables


TIME_LEFT: dict[str, TimeLeft] = {
    "memory_leak": TimeLeft("time_to_oom_s", "time_to_oom", "time to OOM"),
    "time_wait_buildup": TimeLeft(
        "time_to_exhaustion_s", "time_to_exhaustion", "time to port exhaustion"),
}


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, slots=True)
class Label:
    kind: str
    entity: dict[str, str]
    start_ns: int
    end_ns: int
    negative: bool = False
    must_not_trigger: tuple[str, ...] = ()
    note: str = ""
    magnitude: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    #: Alternative entities, any of which names the fault (the real corpus's slow downstream:
    #: the caller's call into the service, or the service itself); empty: ``entity`` only.
    entity_any: tuple[dict[str, str], ...] = ()
    #: Labels with one ``incident`` name are one problem (``benchmarks.incident_scoring``),
    #: rooted at ``incident_root`` or else at the group's first label.
    incident: str = ""
    incident_root: dict[str, str] = field(default_factory=dict)

    def _names(self, alert: Alert) -> bool:
        if self.entity_any:
            return any(all(alert.entity.get(k) == v for k, v in e.items())
                       for e in self.entity_any)
        return all(alert.entity.get(k) == v for k, v in self.entity.items())

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> Label:
        return cls(
            kind=line["kind"],
            entity={str(k): str(v) for k, v in (line.get("entity") or {}).items()},
            start_ns=_ns(line, "start"),
            end_ns=_ns(line, "end"),
            negative=bool(line.get("negative", False)),
            must_not_trigger=tuple(line.get("must_not_trigger") or ()),
            note=str(line.get("note", "")),
            magnitude=dict(line.get("magnitude") or {}),
            truth=dict(line.get("truth") or {}),
            entity_any=tuple({str(k): str(v) for k, v in e.items()}
                             for e in line.get("entity_any") or ()),
            incident=str(line.get("incident") or ""),
            incident_root={str(k): str(v) for k, v in (line.get("incident_root") or {}).items()},
        )

    def matches(self, alert: Alert, grace_ns: int) -> bool:
        return (
            self.start_ns <= alert.fired_at_ns <= self.end_ns + grace_ns and self._names(alert)
        )

    def active(self, alert: Alert) -> bool:
        """Whether ``alert`` fired on this label's entity inside its window (no grace)."""
        return self.start_ns <= alert.fired_at_ns <= self.end_ns and self._names(alert)

    def true_time_to_oom_s(self, at_ns: int) -> float | None:
        """True time to OOM at ``at_ns`` (module docstring); None if unknown (no truth, or the
        leak stops before the OOM)."""
        return self.true_time_left_s(at_ns, "time_to_oom_s")

    def true_time_left_s(self, at_ns: int, field: str) -> float | None:
        """True time left at ``at_ns`` (module docstring): the process running then, if the
        truth lists ``processes``, else ``truth[field]`` at onset minus the time since; None
        if the truth has no time (the resource does not run out)."""
        processes = self.truth.get("processes")
        if processes:
            running = None
            for p in processes:
                if int(p["start_unix_nano"]) <= at_ns:
                    running = p
            running = running or processes[0]
            oom_at = running.get("oom_at_unix_nano")
            return None if oom_at is None else (int(oom_at) - at_ns) / NS
        left = self.truth.get(field)
        return None if left is None else float(left) - (at_ns - self.start_ns) / NS

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "entity": self.entity, "start": rfc3339(self.start_ns),
            "end": rfc3339(self.end_ns), **({"note": self.note} if self.note else {}),
        }


@dataclass(frozen=True, slots=True)
class LabelSet:
    """One scenario's ground truth: its run line and its labels."""

    scenario: str
    start_ns: int
    end_ns: int
    entities: dict[str, int]
    labels: tuple[Label, ...]

    @property
    def hours(self) -> float:
        return (self.end_ns - self.start_ns) / NS / 3600

    @classmethod
    def from_lines(cls, lines: Iterable[Mapping[str, Any]]) -> LabelSet:
        sets = split_label_sets(lines)
        if len(sets) != 1:
            raise ValueError(f"expected one run line, found {len(sets)}; use split_label_sets")
        return sets[0]

    @classmethod
    def read(cls, path: str | Path) -> LabelSet:
        return cls.from_lines(read_jsonl(path))

    def entity_hours(self, kind: str) -> float | None:
        key = ENTITY_COUNT_BY_KIND.get(kind)
        if key is None or key not in self.entities:
            return None
        return self.entities[key] * self.hours


def split_label_sets(lines: Iterable[Mapping[str, Any]]) -> list[LabelSet]:
    """Label files may be concatenated: each ``run`` line starts a new scenario."""
    out: list[LabelSet] = []
    run: Mapping[str, Any] | None = None
    labels: list[Label] = []

    def close() -> None:
        if run is not None:
            start = _ns(run, "start")
            end = _ns(run, "end") if ("end_unix_nano" in run or "end" in run) else (
                start + int(float(run["duration_s"]) * NS)
            )
            out.append(LabelSet(
                scenario=str(run.get("scenario", "")), start_ns=start, end_ns=end,
                entities={str(k): int(v) for k, v in (run.get("entities") or {}).items()},
                labels=tuple(labels),
            ))

    for line in lines:
        if line.get("type") == "run":
            close()
            run, labels = line, []
        elif line.get("type") == "label":
            if run is None:
                raise ValueError("a label line comes before any run line")
            labels.append(Label.from_line(line))
    close()
    return out


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of one method: a finding (by id) or a rule firing."""

    kind: str
    entity: dict[str, str]
    fired_at_ns: int
    id: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)  # of the first firing report


def alerts_from_findings(findings: Iterable[Mapping[str, Any]]) -> list[Alert]:
    """One alert per distinct finding ``id`` among ``firing`` records, at its earliest
    ``detected_at``; resolved records are ignored."""
    by_id: dict[str, Alert] = {}
    for f in findings:
        if f.get("status") != "firing":
            continue
        fid = str(f.get("id") or f.get("fingerprint") or "")
        at = parse_time_ns(f["detected_at"])
        seen = by_id.get(fid)
        if seen is None or at < seen.fired_at_ns:
            by_id[fid] = Alert(
                kind=str(f["kind"]),
                entity={str(k): str(v) for k, v in (f.get("entity") or {}).items()},
                fired_at_ns=at, id=fid, evidence=dict(f.get("evidence") or {}),
            )
    return sorted(by_id.values(), key=lambda a: (a.fired_at_ns, a.id))


# ---------------------------------------------------------------------------------------------
# Scores


@dataclass
class KindScore:
    """Counts and detail for one method on one finding kind (one scenario, or merged)."""

    name: str  # the finding kind, or "baseline:<name>"
    kind: str
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tp_alerts: int = 0
    hard_negative_false_alarms: int = 0
    delays_s: list[float] = field(default_factory=list)
    entity_hours: float = 0.0
    labels: list[dict[str, Any]] = field(default_factory=list)
    negatives: list[dict[str, Any]] = field(default_factory=list)
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)
    inhibited: int = 0
    inhibited_alerts: list[dict[str, Any]] = field(default_factory=list)
    #: (estimate or None, truth) per detected label with a known, positive true time left
    tto: list[tuple[float | None, float]] = field(default_factory=list)
    #: detected labels whose resource had run out before the first report
    tto_late: int = 0
    #: rate class -> (delays of detected labels, missed labels)
    by_rate_class: dict[str, tuple[list[float], int]] = field(default_factory=dict)

    @property
    def alerts(self) -> int:
        return self.tp_alerts + self.fp

    @property
    def precision(self) -> float | None:
        return self.tp_alerts / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        positives = self.tp + self.fn
        return self.tp / positives if positives else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def median_delay_s(self) -> float | None:
        return statistics.median(self.delays_s) if self.delays_s else None

    @property
    def false_alarms_per_100h(self) -> float | None:
        return 100.0 * self.fp / self.entity_hours if self.entity_hours else None

    def time_left(self) -> dict[str, Any] | None:
        """Accuracy of the findings' time-left estimates (time to OOM, to port exhaustion;
        module docstring); None if no detected label has a known true time left."""
        if not self.tto and not self.tto_late:
            return None
        errs = [abs(e - t) / t for e, t in self.tto if e is not None]
        within = sum(e <= TTO_TOLERANCE for e in errs)
        return {
            "labels": len(self.tto),
            "with_estimate": len(errs),
            "median_abs_rel_err": _round(statistics.median(errs)) if errs else None,
            "max_abs_rel_err": _round(max(errs)) if errs else None,
            "within_20pct": _round(within / len(self.tto)) if self.tto else None,
            "late": self.tto_late,
        }

    def time_to_oom(self) -> dict[str, Any] | None:
        """``time_left`` of a ``memory_leak`` score."""
        return self.time_left()

    def delay_by_rate_class(self) -> dict[str, dict[str, Any]]:
        classes = RATE_CLASSES_BY_KIND.get(self.kind)
        order = [n for _, n in classes.bounds] if classes else sorted(self.by_rate_class)
        out = {}
        for name in [n for n in order if n in self.by_rate_class]:
            delays, missed = self.by_rate_class[name]
            out[name] = {
                "labels": len(delays) + missed, "detected": len(delays),
                "median_delay_s": _round(statistics.median(delays), 1) if delays else None,
            }
        return out

    def merge(self, other: KindScore) -> KindScore:
        if (self.name, self.kind) != (other.name, other.kind):
            raise ValueError(f"cannot merge {self.name}/{self.kind} with {other.name}/{other.kind}")
        return KindScore(
            name=self.name, kind=self.kind, tp=self.tp + other.tp, fn=self.fn + other.fn,
            fp=self.fp + other.fp, tp_alerts=self.tp_alerts + other.tp_alerts,
            hard_negative_false_alarms=(
                self.hard_negative_false_alarms + other.hard_negative_false_alarms
            ),
            delays_s=self.delays_s + other.delays_s,
            entity_hours=self.entity_hours + other.entity_hours,
            labels=self.labels + other.labels, negatives=self.negatives + other.negatives,
            false_alarms=self.false_alarms + other.false_alarms,
            scenarios=self.scenarios + other.scenarios,
            inhibited=self.inhibited + other.inhibited,
            inhibited_alerts=self.inhibited_alerts + other.inhibited_alerts,
            tto=self.tto + other.tto,
            tto_late=self.tto_late + other.tto_late,
            by_rate_class={
                k: (self.by_rate_class.get(k, ([], 0))[0] + other.by_rate_class.get(k, ([], 0))[0],
                    self.by_rate_class.get(k, ([], 0))[1] + other.by_rate_class.get(k, ([], 0))[1])
                for k in {**self.by_rate_class, **other.by_rate_class}
            },
        )

    def to_dict(self, detail: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
            "median_delay_s": _round(self.median_delay_s, 1),
            "false_alarms_per_100h": _round(self.false_alarms_per_100h, 3),
            "hard_negative_false_alarms": self.hard_negative_false_alarms,
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "tp_alerts": self.tp_alerts, "alerts": self.alerts,
            "positives": self.tp + self.fn,
            "entity_hours": _round(self.entity_hours, 3),
            "scenarios": self.scenarios,
            "inhibited": self.inhibited,
        }
        if (self.tto or self.tto_late) and self.kind in TIME_LEFT:
            out[TIME_LEFT[self.kind].key] = self.time_left()
        if self.by_rate_class:
            out["delay_by_rate_class"] = self.delay_by_rate_class()
        if detail:
            out.update(labels=self.labels, negatives=self.negatives,
                       false_alarms=self.false_alarms, inhibited_alerts=self.inhibited_alerts)
        return out


def grace_ns(kind: str, grace_s: Mapping[str, float] | float | None = None) -> int:
    """Grace after a label's end for ``kind``: a number for every kind, or a per-kind map
    (kinds it omits use ``GRACE_BY_KIND_S`` / ``DEFAULT_GRACE_S``)."""
    if isinstance(grace_s, int | float):
        return int(grace_s * NS)
    table = {**GRACE_BY_KIND_S, **(grace_s or {})}
    return int(table.get(kind, DEFAULT_GRACE_S) * NS)


def score_alerts(
    kind: str,
    alerts: Iterable[Alert],
    labels: LabelSet,
    grace_s: Mapping[str, float] | float | None = None,
    name: str | None = None,
) -> KindScore:
    """Score one method's alerts of ``kind`` (alerts of other kinds are ignored)."""
    grace = grace_ns(kind, grace_s)
    alerts = sorted((a for a in alerts if a.kind == kind), key=lambda a: (a.fired_at_ns, a.id))
    positives = [lb for lb in labels.labels if lb.kind == kind and not lb.negative]
    negatives = [lb for lb in labels.labels if lb.negative and kind in lb.must_not_trigger]
    inhibitors = [lb for lb in labels.labels
                  if not lb.negative and lb.kind in INHIBITED_BY.get(kind, ())]
    score = KindScore(
        name=name or kind, kind=kind, entity_hours=labels.entity_hours(kind) or 0.0,
        scenarios=[labels.scenario],
    )
    matched: list[list[Alert]] = [[] for _ in positives]
    false: list[Alert] = []
    for a in alerts:
        hits = [i for i, lb in enumerate(positives) if lb.matches(a, grace)]
        for i in hits:
            matched[i].append(a)
        if hits:
            score.tp_alerts += 1
        elif any(lb.active(a) for lb in inhibitors):
            score.inhibited += 1
            score.inhibited_alerts.append({
                "scenario": labels.scenario, "entity": a.entity, "fired_at": rfc3339(a.fired_at_ns),
                "id": a.id, "by": sorted({lb.kind for lb in inhibitors if lb.active(a)}),
            })
        else:
            false.append(a)
    for lb, hits in zip(positives, matched, strict=True):
        detail = {"scenario": labels.scenario, **lb.describe(), "detected": bool(hits),
                  "alerts": len(hits)}
        if hits:
            first = hits[0]
            delay = (first.fired_at_ns - lb.start_ns) / NS
            score.tp += 1
            score.delays_s.append(delay)
            detail.update(first_alert_at=rfc3339(first.fired_at_ns), delay_s=round(delay, 3),
                          first_alert_id=first.id)
            left = TIME_LEFT.get(kind)
            if left is not None:
                truth = lb.true_time_left_s(first.fired_at_ns, left.field)
                est = first.evidence.get(left.field)
                est = float(est) if isinstance(est, int | float) else None
                detail.update({f"true_{left.field}": None if truth is None else round(truth, 1),
                               left.field: est})
                if truth is not None and truth > 0:
                    score.tto.append((est, truth))
                    if est is not None:
                        detail[f"{left.key}_rel_err"] = round(abs(est - truth) / truth, 4)
                elif truth is not None:
                    score.tto_late += 1
        else:
            score.fn += 1
        classes = RATE_CLASSES_BY_KIND.get(kind)
        rate = classes.rate(lb) if classes else None
        if classes and rate is not None:
            cls = classes.of(rate)
            detail["rate_class"] = cls
            delays, missed = score.by_rate_class.get(cls, ([], 0))
            score.by_rate_class[cls] = (
                delays + [detail["delay_s"]] if hits else delays, missed + (not hits))
        score.labels.append(detail)
    score.fp = len(false)
    neg_hits = [0] * len(negatives)
    for a in false:
        on = [i for i, lb in enumerate(negatives) if lb.matches(a, grace)]
        for i in on:
            neg_hits[i] += 1
        if on:
            score.hard_negative_false_alarms += 1
        score.false_alarms.append({
            "scenario": labels.scenario, "entity": a.entity, "fired_at": rfc3339(a.fired_at_ns),
            "id": a.id, "negatives": [negatives[i].kind for i in on],
        })
    for lb, n in zip(negatives, neg_hits, strict=True):
        score.negatives.append({"scenario": labels.scenario, **lb.describe(), "false_alarms": n})
    return score


def score_findings(
    findings: Iterable[Mapping[str, Any]],
    labels: LabelSet,
    kinds: Iterable[str],
    grace_s: Mapping[str, float] | float | None = None,
) -> dict[str, KindScore]:
    """Score finding records (as published, any status) for each of ``kinds``."""
    alerts = alerts_from_findings(findings)
    return {kind: score_alerts(kind, alerts, labels, grace_s) for kind in kinds}


def score_rule(
    name: str,
    kind: str,
    alerts: Iterable[tuple[Mapping[str, Any], int]],
    labels: LabelSet,
    grace_s: Mapping[str, float] | float | None = None,
) -> KindScore:
    """Score a baseline that fires ``(entity, fired_at_ns)`` alerts for ``kind``; each tuple is one
    alert (deduplicate a rule's repeated evaluations before calling). Named ``baseline:<name>``."""
    as_alerts = [
        Alert(kind, {str(k): str(v) for k, v in entity.items()}, int(at), id=f"{name}#{i}")
        for i, (entity, at) in enumerate(alerts)
    ]
    return score_alerts(kind, as_alerts, labels, grace_s, name=f"baseline:{name}")


def rate_class(rate: float, kind: str = "memory_leak") -> str:
    """The class name of a rate of ``kind`` (``RATE_CLASSES_BY_KIND``): a leak's % of the limit
    per hour, a TIME_WAIT buildup's closes/s.

    >>> rate_class(5.0), rate_class(20.0, "time_wait_buildup"), rate_class(470, "time_wait_buildup")
    ('1-10%/h', '20-100/s', '>=100/s')
    """
    return RATE_CLASSES_BY_KIND[kind].of(rate)


def merge(scores: Iterable[Mapping[str, KindScore]]) -> dict[str, KindScore]:
    """Combine per-scenario score maps key by key."""
    out: dict[str, KindScore] = {}
    for per_scenario in scores:
        for key, s in per_scenario.items():
            out[key] = out[key].merge(s) if key in out else s
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def _ns(line: Mapping[str, Any], key: str) -> int:
    if f"{key}_unix_nano" in line:
        return int(line[f"{key}_unix_nano"])
    return parse_time_ns(line[key])


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)

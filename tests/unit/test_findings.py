"""Findings: lifecycle hysteresis, identity, JSON form valid against the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from pipeline.findings import Finding, Lifecycle, Verdict, fingerprint, rfc3339

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
S = 10**9
ENTITY = {"service": "user-service", "operation": "SELECT users"}


def bad(severity: str = "warning") -> Verdict:
    return Verdict(
        severity, "SELECT users 140 ms of 190 ms", {"baseline": {"p50_ms": 12}, "observed": {
            "p50_ms": 140}, "exemplar_trace_ids": ["5b8efff798038103d269b633813fc60c"]},
        ["Run EXPLAIN on a read replica."],
    )


def run(lc: Lifecycle, verdicts: list[Verdict | None], t0: int = 1000 * S) -> list[Finding]:
    out = []
    for i, v in enumerate(verdicts):
        f = lc.observe(ENTITY, t0 + i * 60 * S, v)
        if f is not None:
            out.append(f)
    return out


def lifecycle(**kw: int) -> Lifecycle:
    return Lifecycle("bottleneck_span", "bottleneck_span", "1", **kw)


def test_opens_after_n_anomalous_windows_and_resolves_after_m_normal() -> None:
    out = run(lifecycle(open_after=3, resolve_after=2), [bad(), bad(), bad(), None, None])
    assert [f.status for f in out] == ["firing", "resolved"]
    firing, resolved = out
    assert firing.started_at_ns == 1000 * S  # onset: the first anomalous window
    assert firing.detected_at_ns == 1120 * S  # opened on the third
    assert resolved.resolved_at_ns == 1240 * S
    assert firing.id == resolved.id and firing.fingerprint == resolved.fingerprint


def test_interrupted_streaks_do_not_open_or_close() -> None:
    lc = lifecycle(open_after=3, resolve_after=3)
    assert run(lc, [bad(), bad(), None, bad(), bad(), None]) == []
    out = run(lc, [bad(), bad(), bad(), None, bad(), None, None], t0=5000 * S)
    assert [f.status for f in out] == ["firing"]  # the lone bad window reset the resolve count


def test_severity_change_republishes_same_id() -> None:
    out = run(lifecycle(open_after=1), [bad(), bad("critical"), bad("critical")])
    assert [(f.status, f.severity) for f in out] == [("firing", "warning"),
                                                     ("firing", "critical")]
    assert out[0].id == out[1].id


def test_severity_never_decreases_within_a_finding() -> None:
    """critical, then warning 30 s later while the problem goes on: no record says warning;
    each record carries the latest anomalous window's evidence."""
    def verdict(severity: str, observed: int) -> Verdict:
        return Verdict(severity, f"observed {observed}", {"observed": observed})

    seq = [verdict("info", 1), verdict("critical", 2), verdict("warning", 3),
           verdict("info", 4), None, None, None]
    out = run(lifecycle(open_after=1, resolve_after=3), seq)
    assert [(f.status, f.severity) for f in out] == [
        ("firing", "info"), ("firing", "critical"), ("resolved", "critical")]
    assert out[-1].evidence == {"observed": 4} and out[-1].summary == "Resolved: observed 4"
    assert len({f.id for f in out}) == 1


def test_a_verdict_can_date_the_onset_before_the_first_anomalous_window() -> None:
    """A detector that knows when the anomaly began (a leak's growth) sets started_at, and the
    id, when the finding opens; later estimates change neither."""
    def verdict(onset_s: int) -> Verdict:
        return Verdict("warning", "floor rising", {}, started_at_ns=onset_s * S)

    out = run(lifecycle(open_after=2, resolve_after=1),
              [verdict(400), verdict(700), verdict(900), None])
    assert [f.status for f in out] == ["firing", "resolved"]
    assert {f.started_at_ns for f in out} == {700 * S}  # the estimate when it opened
    assert out[0].id == out[1].id
    # an onset estimated after the first anomalous window does not move started_at later
    late = run(lifecycle(open_after=1), [verdict(5000)])
    assert late[0].started_at_ns == 1000 * S


def test_a_resolved_summary_drops_the_firing_only_marker() -> None:
    v = Verdict("warning", "SELECT users 140 ms of 190 ms (baseline 6 ms) ← BOTTLENECK; 2 other "
                "operation(s) of api slower with it", {})
    fired, resolved = run(lifecycle(open_after=1, resolve_after=1), [v, None])
    assert fired.summary.endswith("slower with it") and "← BOTTLENECK" in fired.summary
    assert resolved.summary == ("Resolved: SELECT users 140 ms of 190 ms (baseline 6 ms); 2 "
                                "other operation(s) of api slower with it")


def test_ids_are_deterministic_and_new_per_incident() -> None:
    a = run(lifecycle(open_after=1, resolve_after=1), [bad(), None, bad(), None])
    b = run(lifecycle(open_after=1, resolve_after=1), [bad(), None, bad(), None])
    assert [f.id for f in a] == [f.id for f in b]
    assert a[0].id != a[2].id and a[0].fingerprint == a[2].fingerprint


def test_fingerprint_ignores_entity_key_order() -> None:
    assert fingerprint("memory_leak", {"a": 1, "b": 2}) == fingerprint("memory_leak",
                                                                       {"b": 2, "a": 1})
    assert fingerprint("memory_leak", {"a": 1}) != fingerprint("gc_pressure", {"a": 1})


def test_snapshot_restore_mid_streak_continues_identically() -> None:
    verdicts = [bad(), bad(), None, bad(), bad(), bad(), None, None, None]
    whole = run(lifecycle(), verdicts)
    first = lifecycle()
    part = run(first, verdicts[:4])
    resumed = lifecycle()
    resumed.restore(orjson.loads(orjson.dumps(first.snapshot())))
    part += run(resumed, verdicts[4:], t0=1000 * S + 4 * 60 * S)
    assert [f.to_dict() for f in part] == [f.to_dict() for f in whole]


def test_changed_only_snapshot_reports_deletions() -> None:
    lc = lifecycle(open_after=1, resolve_after=1)
    run(lc, [bad()])
    assert list(lc.snapshot(changed_only=True).values())[0]["firing"] is True
    assert lc.snapshot(changed_only=True) == {}
    run(lc, [None], t0=2000 * S)
    assert list(lc.snapshot(changed_only=True).values()) == [None]


def test_cap_evicts_oldest_quiet_entry_and_counts() -> None:
    lc = Lifecycle("memory_leak", "memory_leak", "1", open_after=2, max_tracked=2)
    lc.observe({"instance": "a"}, 1, bad())
    lc.observe({"instance": "a"}, 2, bad())  # firing: kept despite being oldest
    lc.observe({"instance": "b"}, 3, bad())
    lc.observe({"instance": "c"}, 4, bad())
    assert len(lc) == 2 and lc.evicted == 1
    kept = {st["entity"]["instance"] for st in lc.snapshot().values()}
    assert kept == {"a", "c"}


def test_expire_resolves_silent_entities() -> None:
    lc = lifecycle(open_after=1)
    run(lc, [bad()])
    [f] = lc.expire(now_ns=1000 * S + 3600 * S, idle_ns=1800 * S)
    assert f.status == "resolved" and len(lc) == 0


def test_every_finding_is_valid_against_the_schema() -> None:
    out = run(lifecycle(open_after=1, resolve_after=1), [bad(), bad("critical"), None])
    assert len(out) == 3
    for f in out:
        doc = orjson.loads(f.to_json())
        VALIDATOR.validate(doc)
    assert orjson.loads(out[0].to_json())["resolved_at"] is None
    assert orjson.loads(out[2].to_json())["resolved_at"] == rfc3339(1120 * S)


def test_schema_rejects_a_broken_finding() -> None:
    doc = orjson.loads(run(lifecycle(open_after=1), [bad()])[0].to_json())
    doc["status"] = "open"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(doc)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        Finding("cpu_hot", "firing", "warning", {"a": 1}, 1, 1, "s", {}, [], "d", "1")


def test_a_full_cap_of_firing_findings_refuses_new_entities_instead_of_dropping_one() -> None:
    lc = Lifecycle("memory_leak", "memory_leak", "1", open_after=1, max_tracked=2)
    lc.observe({"instance": "a"}, 1, bad())
    lc.observe({"instance": "b"}, 2, bad())
    assert lc.observe({"instance": "c"}, 3, bad()) is None
    assert lc.refused == 1 and lc.evicted == 0 and len(lc) == 2


def test_tail_shows_the_runbook_link() -> None:
    from pipeline.tail import format_finding

    doc = {"kind": "memory_leak", "status": "firing", "severity": "warning",
           "entity": {"service": "cart"}, "summary": "floor grows", "evidence": {},
           "next_steps": ["look"], "runbook_url": "https://x.example/memory_leak.md"}
    assert format_finding(doc).splitlines()[-1] == "    runbook: https://x.example/memory_leak.md"
    assert "runbook" not in format_finding({**doc, "runbook_url": ""})


def test_tail_heads_a_resolved_finding_with_when_it_resolved() -> None:
    from pipeline.tail import format_finding

    doc = {"kind": "memory_leak", "status": "resolved", "severity": "warning",
           "detected_at": "2026-01-05T08:17:00.000Z", "resolved_at": "2026-01-05T08:40:00.000Z",
           "entity": {}, "summary": "s", "evidence": {}, "next_steps": []}
    assert format_finding(doc).startswith("[2026-01-05T08:40:00.000Z] RESOLVED")
    assert format_finding({**doc, "status": "firing"}).startswith("[2026-01-05T08:17:00.000Z]")


def test_status_line_says_when_the_input_has_gone_quiet_and_ended() -> None:
    """The trace stage never reports idleness (it follows the span stage): the line goes by
    the input streams."""
    from pipeline.tail import status_line

    page = "\n".join([
        "# TYPE anomaly_pipeline_input_idle_seconds gauge",
        'anomaly_pipeline_input_idle_seconds{stream="spans"} 95.0',
        'anomaly_pipeline_input_idle_seconds{stream="metrics"} 80.0',
        'anomaly_pipeline_input_idle_seconds{stream="traces"} 0.0',
        "# TYPE anomaly_pipeline_end_of_input_partitions gauge",
        'anomaly_pipeline_end_of_input_partitions{stream="spans"} 16.0',
        'anomaly_pipeline_end_of_input_partitions{stream="traces"} 0.0',
        "",
    ])
    line = status_line(page)
    assert "input quiet for" in line and "traffic has ended" in line
    assert "input quiet" not in status_line(page.replace(' 80.0', ' 0.0'))

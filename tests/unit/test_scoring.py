"""benchmarks.scoring: one table of small hand-made cases, plus merging and baselines."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.scoring import LabelSet, merge, score_findings, score_rule, split_label_sets
from pipeline.findings import rfc3339

S = 10**9
T0 = 1_767_600_000 * S  # 2026-01-05T08:00:00Z
LEAK = {"service": "cart", "instance": "cart-1"}
OTHER_LEAK = {"service": "cart", "instance": "cart-2"}
SLOW = {"service": "users", "operation": "SELECT users"}


def run(hours: float = 1.0, scenario: str = "s", **entities: int) -> dict[str, Any]:
    return {
        "type": "run", "scenario": scenario, "start_unix_nano": T0,
        "end_unix_nano": T0 + int(hours * 3600 * S), "duration_s": hours * 3600,
        "entities": entities or {"operations": 10, "instances": 5, "hosts": 4, "services": 3},
    }


def label(kind: str, entity: dict[str, str], start_s: float, end_s: float,
          must_not: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "label", "kind": kind, "negative": bool(must_not), "entity": entity,
        "must_not_trigger": list(must_not), "start": rfc3339(T0 + int(start_s * S)),
        "end": rfc3339(T0 + int(end_s * S)),
        "start_unix_nano": T0 + int(start_s * S), "end_unix_nano": T0 + int(end_s * S),
    }


def finding(fid: str, kind: str, entity: dict[str, str], at_s: float, status: str = "firing",
            severity: str = "warning") -> dict[str, Any]:
    return {
        "id": fid, "kind": kind, "entity": entity, "status": status, "severity": severity,
        "detected_at": rfc3339(T0 + int(at_s * S)),
    }


LEAK_LABEL = label("memory_leak", LEAK, 600, 1200)
SLOW_LABEL = label("bottleneck_span", SLOW, 600, 1200)

# (name, label lines after the run line, findings, kind, grace, expected subset of to_dict())
CASES: list[tuple[str, list[dict], list[dict], str, Any, dict[str, Any]]] = [
    ("true positive", [SLOW_LABEL], [finding("a", "bottleneck_span", SLOW, 660)],
     "bottleneck_span", None,
     {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
      "median_delay_s": 60.0}),
    ("extra finding entity keys still match", [SLOW_LABEL],
     [finding("a", "bottleneck_span", {**SLOW, "span_kind": "CLIENT"}, 700)],
     "bottleneck_span", None, {"tp": 1, "fp": 0}),
    ("false positive on another entity", [SLOW_LABEL],
     [finding("a", "bottleneck_span", {"service": "users", "operation": "GET /"}, 660)],
     "bottleneck_span", None,
     {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0,
      "median_delay_s": None}),
    ("false negative: no findings", [SLOW_LABEL], [], "bottleneck_span", None,
     {"tp": 0, "fp": 0, "fn": 1, "precision": None, "recall": 0.0, "f1": None}),
    ("fired before the fault started", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 599)], "bottleneck_span", None,
     {"tp": 0, "fp": 1, "fn": 1}),
    ("median delay over detected labels",
     [SLOW_LABEL, label("bottleneck_span", {"service": "b", "operation": "o"}, 0, 300),
      label("bottleneck_span", {"service": "c", "operation": "o"}, 0, 300)],
     [finding("a", "bottleneck_span", SLOW, 630),
      finding("b", "bottleneck_span", {"service": "b", "operation": "o"}, 90)],
     "bottleneck_span", None,
     {"tp": 2, "fn": 1, "recall": pytest.approx(2 / 3, abs=1e-4), "median_delay_s": 60.0}),
    ("grace boundary: exactly end + grace matches", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 1200 + 60)], "bottleneck_span", 60.0,
     {"tp": 1, "fp": 0}),
    ("grace boundary: 1 ms past end + grace does not", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 1200 + 60.001)], "bottleneck_span", 60.0,
     {"tp": 0, "fp": 1}),
    ("per-kind grace: leaks get 30 min by default", [LEAK_LABEL],
     [finding("a", "memory_leak", LEAK, 1200 + 1700)], "memory_leak", None, {"tp": 1}),
    ("per-kind grace map overrides the default", [LEAK_LABEL],
     [finding("a", "memory_leak", LEAK, 1200 + 1700)], "memory_leak", {"memory_leak": 60.0},
     {"tp": 0, "fp": 1}),
    ("resolved records are not counted", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 700, status="resolved")], "bottleneck_span", None,
     {"tp": 0, "fp": 0, "fn": 1, "alerts": 0}),
    ("re-published id counted once, at its first detection", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 720, severity="critical"),
      finding("a", "bottleneck_span", SLOW, 660),
      finding("a", "bottleneck_span", SLOW, 660, status="resolved")],
     "bottleneck_span", None,
     {"tp": 1, "tp_alerts": 1, "alerts": 1, "median_delay_s": 60.0}),
    ("re-opened finding: two ids on one fault, one tp", [SLOW_LABEL],
     [finding("a", "bottleneck_span", SLOW, 660), finding("b", "bottleneck_span", SLOW, 900)],
     "bottleneck_span", None,
     {"tp": 1, "tp_alerts": 2, "fp": 0, "precision": 1.0, "median_delay_s": 60.0}),
    ("other kinds are ignored", [SLOW_LABEL],
     [finding("a", "memory_leak", LEAK, 660)], "bottleneck_span", None,
     {"tp": 0, "fp": 0, "fn": 1}),
    ("false alarm inside a matching negative window",
     [label("gc_sawtooth", LEAK, 0, 3600, must_not=("memory_leak",))],
     [finding("a", "memory_leak", LEAK, 1800)], "memory_leak", None,
     {"fp": 1, "hard_negative_false_alarms": 1, "recall": None, "precision": 0.0}),
    ("false alarm on another instance is not a hard-negative one",
     [label("gc_sawtooth", LEAK, 0, 3600, must_not=("memory_leak",))],
     [finding("a", "memory_leak", OTHER_LEAK, 1800)], "memory_leak", None,
     {"fp": 1, "hard_negative_false_alarms": 0}),
    ("false alarm after the negative window and its grace",
     [label("restart", LEAK, 0, 300, must_not=("memory_leak",))],
     [finding("a", "memory_leak", LEAK, 300 + 1800 + 1)], "memory_leak", None,
     {"fp": 1, "hard_negative_false_alarms": 0}),
    ("negative that does not list the kind",
     [label("reconnect_storm", {"host": "h1"}, 0, 600, must_not=("time_wait_buildup",))],
     [finding("a", "bottleneck_span", SLOW, 100)], "bottleneck_span", None,
     {"fp": 1, "hard_negative_false_alarms": 0}),
    ("global negative (empty entity) matches every entity",
     [label("traffic_spike", {}, 600, 900, must_not=("time_wait_buildup", "bottleneck_span"))],
     [finding("a", "time_wait_buildup", {"host": "h3"}, 700),
      finding("b", "time_wait_buildup", {"host": "h4"}, 100)],
     "time_wait_buildup", None, {"fp": 2, "hard_negative_false_alarms": 1}),
    ("a true positive inside a negative window is not a false alarm",
     [SLOW_LABEL, label("traffic_spike", {}, 600, 900, must_not=("bottleneck_span",))],
     [finding("a", "bottleneck_span", SLOW, 700)], "bottleneck_span", None,
     {"tp": 1, "fp": 0, "hard_negative_false_alarms": 0}),
    ("false alarms per 100 entity-hours: 4 hosts x 2 h", [],
     [finding("a", "time_wait_buildup", {"host": "h1"}, 10),
      finding("b", "time_wait_buildup", {"host": "h2"}, 20)],
     "time_wait_buildup", None, {"fp": 2, "entity_hours": 8.0, "false_alarms_per_100h": 25.0}),
    ("entity-hours use operations for bottleneck spans", [],
     [finding("a", "bottleneck_span", SLOW, 10)], "bottleneck_span", None,
     {"fp": 1, "entity_hours": 20.0, "false_alarms_per_100h": 5.0}),
]


@pytest.mark.parametrize(
    ("labels", "findings", "kind", "grace", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_score_cases(labels: list[dict], findings: list[dict], kind: str, grace: Any,
                     expected: dict[str, Any]) -> None:
    truth = LabelSet.from_lines([run(hours=2.0), *labels])
    got = score_findings(findings, truth, [kind], grace)[kind].to_dict()
    assert {k: got[k] for k in expected} == expected, got


def test_detail_names_labels_negatives_and_false_alarms() -> None:
    truth = LabelSet.from_lines([
        run(), SLOW_LABEL, label("deploy", {"service": "users"}, 0, 300,
                                 must_not=("bottleneck_span",)),
    ])
    score = score_findings(
        [finding("a", "bottleneck_span", SLOW, 660), finding("b", "bottleneck_span", SLOW, 60)],
        truth, ["bottleneck_span"],
    )["bottleneck_span"].to_dict()
    (lab,) = score["labels"]
    assert lab["detected"] and lab["first_alert_id"] == "a" and lab["delay_s"] == 60.0
    assert score["negatives"][0]["kind"] == "deploy" and score["negatives"][0]["false_alarms"] == 1
    assert score["false_alarms"][0]["id"] == "b"
    assert score["false_alarms"][0]["negatives"] == ["deploy"]


def test_merge_sums_counts_and_pools_delays() -> None:
    a = LabelSet.from_lines([run(scenario="a"), SLOW_LABEL])
    b = LabelSet.from_lines([run(scenario="b"), SLOW_LABEL])
    sa = score_findings([finding("x", "bottleneck_span", SLOW, 620)], a, ["bottleneck_span"])
    sb = score_findings([finding("y", "bottleneck_span", SLOW, 900),
                         finding("z", "bottleneck_span", SLOW, 10)], b, ["bottleneck_span"])
    m = merge([sa, sb])["bottleneck_span"].to_dict(detail=False)
    assert (m["tp"], m["fp"], m["fn"], m["tp_alerts"]) == (2, 1, 0, 2)
    assert m["median_delay_s"] == 160.0  # median of 20 s and 300 s
    assert m["entity_hours"] == 20.0 and m["false_alarms_per_100h"] == 5.0
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4) and m["scenarios"] == ["a", "b"]


def test_score_rule_scores_a_baseline_with_the_same_rules() -> None:
    truth = LabelSet.from_lines([run(), LEAK_LABEL])
    s = score_rule("predict_linear", "memory_leak",
                   [(LEAK, T0 + 900 * S), (OTHER_LEAK, T0 + 900 * S)], truth)
    d = s.to_dict()
    assert s.name == "baseline:predict_linear"
    assert (d["tp"], d["fp"], d["median_delay_s"]) == (1, 1, 300.0)


def test_concatenated_label_files_split_by_run_line() -> None:
    sets = split_label_sets([run(scenario="a"), SLOW_LABEL, run(scenario="b"), LEAK_LABEL,
                             LEAK_LABEL])
    assert [(s.scenario, len(s.labels)) for s in sets] == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="before any run line"):
        split_label_sets([SLOW_LABEL])


# ---------------------------------------------------------------------------------------------
# memory_leak / gc_pressure additions (issue 4)


def leak_label(entity: dict[str, str], start_s: float, end_s: float, rate_pct: float,
               tto_s: float, processes: list[dict] | None = None) -> dict[str, Any]:
    lb = label("memory_leak", entity, start_s, end_s)
    lb["magnitude"] = {"rate_pct_limit_per_hour": rate_pct}
    lb["truth"] = {"time_to_oom_s": tto_s, **({"processes": processes} if processes else {})}
    return lb


def with_evidence(f: dict[str, Any], **evidence: Any) -> dict[str, Any]:
    return {**f, "evidence": evidence}


def test_gc_pressure_under_an_active_leak_is_inhibited() -> None:
    gc_label = label("gc_pressure", OTHER_LEAK, 600, 1200)
    truth = LabelSet.from_lines([run(), LEAK_LABEL, gc_label])
    findings = [
        finding("a", "gc_pressure", LEAK, 700),      # leak active on that instance: ignored
        finding("b", "gc_pressure", LEAK, 1300),     # after the leak's end: a false alarm
        finding("c", "gc_pressure", OTHER_LEAK, 700),  # a real gc_pressure fault: tp
    ]
    s = score_findings(findings, truth, ["gc_pressure"])["gc_pressure"]
    d = s.to_dict()
    assert (d["tp"], d["fp"], d["fn"], d["inhibited"], d["alerts"]) == (1, 1, 0, 1, 2)
    assert d["inhibited_alerts"][0]["id"] == "a" and d["inhibited_alerts"][0]["by"] == [
        "memory_leak"]
    # memory_leak itself is never inhibited, and baselines get the same rule
    r = score_rule("gc_time", "gc_pressure", [(LEAK, T0 + 700 * S)], truth)
    assert (r.fp, r.inhibited) == (0, 1)
    m = merge([{"g": s}, {"g": s}])["g"]
    assert m.inhibited == 2


def test_time_to_oom_accuracy_at_the_first_firing_report() -> None:
    # truth at onset (600 s): 3600 s to OOM; at a report 600 s later: 3000 s.
    a = leak_label(LEAK, 600, 5000, 20.0, 3600.0)
    b = leak_label(OTHER_LEAK, 600, 5000, 20.0, 3600.0)
    c = leak_label({"service": "cart", "instance": "cart-3"}, 600, 5000, 20.0, 3600.0)
    truth = LabelSet.from_lines([run(hours=2), a, b, c])
    findings = [
        with_evidence(finding("a", "memory_leak", LEAK, 1200), time_to_oom_s=3300.0),  # +10 %
        # a later report of the same finding does not count: the first one does
        with_evidence(finding("a", "memory_leak", LEAK, 1500), time_to_oom_s=2700.0),
        with_evidence(finding("b", "memory_leak", OTHER_LEAK, 1200), time_to_oom_s=1500.0),
        with_evidence(finding("c", "memory_leak", {"service": "cart", "instance": "cart-3"},
                              1200), time_to_oom_s=None),
    ]
    s = score_findings(findings, truth, ["memory_leak"])["memory_leak"]
    tto = s.to_dict()["time_to_oom"]
    assert tto == {"labels": 3, "with_estimate": 2, "median_abs_rel_err": 0.3,
                   "max_abs_rel_err": 0.5, "within_20pct": pytest.approx(1 / 3, abs=1e-4),
                   "late": 0}
    first = s.labels[0]
    assert first["true_time_to_oom_s"] == 3000.0 and first["time_to_oom_rel_err"] == 0.1


def test_true_time_to_oom_follows_the_process_running_at_the_report() -> None:
    # first process OOM-killed at 2000 s; the next one (from 2000 s) would OOM at 4000 s
    procs = [
        {"start_unix_nano": T0 + 600 * S, "oom_at_unix_nano": T0 + 2000 * S},
        {"start_unix_nano": T0 + 2000 * S, "oom_at_unix_nano": T0 + 4000 * S},
    ]
    lb = LabelSet.from_lines([run(hours=2), leak_label(LEAK, 600, 5000, 60.0, 1400.0,
                                                       procs)]).labels[0]
    assert lb.true_time_to_oom_s(T0 + 1000 * S) == 1000.0
    assert lb.true_time_to_oom_s(T0 + 2500 * S) == 1500.0
    no_proc = LabelSet.from_lines([run(), leak_label(LEAK, 600, 1200, 5.0, 900.0)]).labels[0]
    assert no_proc.true_time_to_oom_s(T0 + 700 * S) == 800.0


def test_median_delay_by_leak_rate_class() -> None:
    entities = [{"service": "s", "instance": f"i{k}"} for k in range(5)]
    rates = [0.5, 5.0, 20.0, 30.0, 60.0]
    labels = [leak_label(e, 600, 5000, r, 1e5) for e, r in zip(entities, rates, strict=True)]
    truth = LabelSet.from_lines([run(hours=2), *labels])
    findings = [finding("a", "memory_leak", entities[1], 600 + 1800),
                finding("b", "memory_leak", entities[2], 600 + 600),
                finding("c", "memory_leak", entities[3], 600 + 1200),
                finding("d", "memory_leak", entities[4], 600 + 120)]
    d = score_findings(findings, truth, ["memory_leak"])["memory_leak"].to_dict()
    assert d["delay_by_rate_class"] == {
        "<=1%/h": {"labels": 1, "detected": 0, "median_delay_s": None},
        "1-10%/h": {"labels": 1, "detected": 1, "median_delay_s": 1800.0},
        "10-40%/h": {"labels": 2, "detected": 2, "median_delay_s": 900.0},
        ">40%/h": {"labels": 1, "detected": 1, "median_delay_s": 120.0},
    }
    # baselines without evidence: delays by class, no time-to-OOM estimate
    r = score_rule("deriv", "memory_leak", [(entities[4], T0 + 900 * S)], truth).to_dict()
    assert r["delay_by_rate_class"][">40%/h"]["median_delay_s"] == 300.0
    assert r["time_to_oom"]["with_estimate"] == 0


def test_new_memory_kinds_flow_through() -> None:
    # gc_pressure positives (service + instance) score per instance-hour; load_heap_growth and
    # noisy_rss negatives are the look-alikes for both memory kinds
    lines = [
        run(), label("gc_pressure", LEAK, 600, 1200),
        label("load_heap_growth", {"service": "cart"}, 1300, 2000,
              must_not=("memory_leak", "gc_pressure")),
        label("noisy_rss", OTHER_LEAK, 1300, 2000, must_not=("memory_leak", "gc_pressure")),
    ]
    truth = LabelSet.from_lines(lines)
    findings = [finding("a", "gc_pressure", LEAK, 700),
                finding("b", "memory_leak", LEAK, 1400),
                finding("c", "memory_leak", OTHER_LEAK, 1400)]
    s = score_findings(findings, truth, ["memory_leak", "gc_pressure"])
    assert s["gc_pressure"].tp == 1 and s["gc_pressure"].entity_hours == 5.0
    leak = s["memory_leak"].to_dict()
    assert (leak["fp"], leak["hard_negative_false_alarms"]) == (2, 2)
    assert sorted(n["kind"] for n in leak["negatives"]) == ["load_heap_growth", "noisy_rss"]


# ---------------------------------------------------------------------------------------------
# time_wait_buildup: time to port exhaustion and close-rate classes


def tw_label(host: str, start_s: float, end_s: float, close_rate: float | None,
             tte_s: float | None, in_magnitude: bool = True) -> dict[str, Any]:
    lb = label("time_wait_buildup", {"host": host}, start_s, end_s)
    lb["magnitude"] = {"connections_per_call": 1}
    if in_magnitude and close_rate is not None:
        lb["magnitude"]["close_rate_per_s"] = close_rate
    lb["truth"] = {"expected_close_rate_per_s": close_rate, "time_to_exhaustion_s": tte_s}
    return lb


def tw_finding(fid: str, host: str, at_s: float, tte: float | None) -> dict[str, Any]:
    return with_evidence(finding(fid, "time_wait_buildup", {"host": host}, at_s),
                         time_to_exhaustion_s=tte, ephemeral_ports=28232)


def test_time_to_exhaustion_accuracy_at_the_first_firing_report() -> None:
    # each exhausts 50 s after its onset (600 s); reports 20 s in see 30 s left
    hosts = ["h1", "h2", "h3", "h4", "h5"]
    labels = [tw_label(h, 600, 1200, 565.0, 50.0) for h in hosts[:4]]
    labels.append(tw_label("h5", 600, 1200, 30.0, None))  # plateau under the range
    truth = LabelSet.from_lines([run(), *labels])
    findings = [
        tw_finding("a", "h1", 620, 33.0),   # +10 %
        tw_finding("a", "h1", 640, 99.0),   # a later report of the same finding: ignored
        tw_finding("b", "h2", 620, 21.0),   # -30 %
        tw_finding("c", "h3", 620, None),   # no estimate: outside
        tw_finding("d", "h4", 660, 5.0),    # the ports ran out 10 s before: late
        tw_finding("e", "h5", 700, None),   # no true exhaustion: not scored for time left
    ]
    s = score_findings(findings, truth, ["time_wait_buildup"])["time_wait_buildup"]
    d = s.to_dict()
    assert d["tp"] == 5 and "time_to_oom" not in d
    assert d["time_to_exhaustion"] == {
        "labels": 3, "with_estimate": 2, "median_abs_rel_err": 0.2, "max_abs_rel_err": 0.3,
        "within_20pct": pytest.approx(1 / 3, abs=1e-4), "late": 1}
    first = s.labels[0]
    assert first["true_time_to_exhaustion_s"] == 30.0 and first["time_to_exhaustion_s"] == 33.0
    assert first["time_to_exhaustion_rel_err"] == 0.1
    assert s.labels[3]["true_time_to_exhaustion_s"] == -10.0
    assert s.labels[4]["true_time_to_exhaustion_s"] is None
    # merged scenarios pool estimates and late counts; a baseline has no estimates
    m = merge([{"k": s}, {"k": s}])["k"].to_dict(detail=False)["time_to_exhaustion"]
    assert (m["labels"], m["with_estimate"], m["late"]) == (6, 4, 2)
    r = score_rule("tw_static_5000_1m", "time_wait_buildup",
                   [({"host": "h1"}, T0 + 680 * S)], truth).to_dict()
    assert r["time_to_exhaustion"] == {
        "labels": 0, "with_estimate": 0, "median_abs_rel_err": None, "max_abs_rel_err": None,
        "within_20pct": None, "late": 1}


def test_median_delay_by_close_rate_class() -> None:
    rates = [2.0, 19.9, 20.0, 46.0, 100.0, 560.0]
    labels = [tw_label(f"h{k}", 600, 1200, r, None) for k, r in enumerate(rates)]
    # a label without the magnitude field is classed by its truth at onset
    labels.append(tw_label("h9", 600, 1200, 1045.0, 27.0, in_magnitude=False))
    truth = LabelSet.from_lines([run(), *labels])
    findings = [finding("a", "time_wait_buildup", {"host": "h1"}, 600 + 300),
                finding("b", "time_wait_buildup", {"host": "h2"}, 600 + 120),
                finding("c", "time_wait_buildup", {"host": "h3"}, 600 + 60),
                finding("d", "time_wait_buildup", {"host": "h4"}, 600 + 40),
                finding("e", "time_wait_buildup", {"host": "h9"}, 600 + 20)]
    d = score_findings(findings, truth, ["time_wait_buildup"])["time_wait_buildup"].to_dict()
    assert d["delay_by_rate_class"] == {
        "<20/s": {"labels": 2, "detected": 1, "median_delay_s": 300.0},
        "20-100/s": {"labels": 2, "detected": 2, "median_delay_s": 90.0},
        ">=100/s": {"labels": 3, "detected": 2, "median_delay_s": 30.0},
    }
    assert list(d["delay_by_rate_class"]) == ["<20/s", "20-100/s", ">=100/s"]
    assert [lb["rate_class"] for lb in d["labels"]][:3] == ["<20/s", "<20/s", "20-100/s"]

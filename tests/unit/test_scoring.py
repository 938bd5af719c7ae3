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

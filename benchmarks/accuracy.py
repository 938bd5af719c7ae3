"""Accuracy: findings of a real worker on labelled simulator scenarios, scored per finding kind.

``python -m benchmarks.accuracy [--quick] [--scenarios a,b] [--seed N]``

For each scenario (full: ``bottleneck,leak,timewait,errors,negatives,healthy``; ``--quick``:
``demo`` cut to 17 min of event time, which still holds one fault of each kind), the harness:

1. builds the scenario from a fixed start (same seed, same bytes) and writes its ground-truth
   labels to ``.cache/bench/<scenario>/labels.jsonl``;
2. replays it into fresh topics and runs a worker subprocess (fresh application id) until every
   produced span and metric point has been applied to its detectors
   (``anomaly_pipeline_items_detected_total``) and the input has ended (``harness.REPLAY_END``:
   the last windows close), then stops it (SIGTERM: its producer flushes);
3. reads the whole findings topic to ``.cache/bench/<scenario>/findings.jsonl`` and scores it
   with ``benchmarks.scoring`` for the finding kinds the worker's detectors declare (``kinds`` on
   each class in ``pipeline.detectors.BUILTIN``, plus ``--detectors``);
4. deletes the run's topics and consumer group.

Scores are then merged across scenarios (tp/fp/fn and entity-hours summed, delays pooled); see
``benchmarks.scoring`` for every definition. Baselines registered in ``BASELINES`` are scored on
the same scenarios under ``baseline:<name>``: ``p99_static`` and ``halfspacetrees``
(``bottleneck_span``, ``benchmarks.baselines``), ``predict_linear`` and ``deriv``
(``memory_leak``) and ``gc_time`` (``gc_pressure``) (``benchmarks.memory_baselines``), and
``tw_static_5000_1m``, ``tw_static_1000_10m`` and ``tw_static_20000_2m`` (``time_wait_buildup``:
``node_sockstat_TCP_tw > N for D`` per host, ``benchmarks.timewait_baselines``). For
``memory_leak`` the table adds the time-to-OOM accuracy of the findings' first reports and the
median delay per leak-rate class, and for ``time_wait_buildup`` the same with the time to port
exhaustion and close-rate classes (for baselines: how many first alerts came after the ports
had run out); ``gc_pressure`` alerts under an active leak are counted as ``inhibited``, not as
false alarms. ``error_origin`` (the ``errors`` scenario: seven error faults, clients' 404s and
retried 503s as look-alikes) is scored per operation like ``bottleneck_span``; a finding counts
only if it names the origin span's service and operation, so its recall is also the share of
error faults whose origin was named.

Output: a table, then as the last line one JSON object ``{"<kind>": {...},
"baseline:<name>": {...}, "scenarios": [...], "quick": bool, ...}``; the same with per-label
detail goes to ``.cache/bench/accuracy.json`` and each scenario's ``score.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks import baselines, harness, memory_baselines, scoring, timewait_baselines
from benchmarks.harness import RunNames, log
from benchmarks.incident_scoring import score_incidents
from benchmarks.incident_scoring import table as incident_table
from pipeline.findings import KINDS
from pipeline.simulate import PRESETS, build_scenario, label_lines, write_labels
from pipeline.simulate.labels import configured_limits
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START, rfc3339

CACHE = harness.ROOT / ".cache" / "bench"
FULL_SCENARIOS = ("bottleneck", "leak", "timewait", "errors", "incidents", "negatives",
                  "healthy")
QUICK_SCENARIOS = ("demo",)
# The demo's TIME_WAIT fault runs 10-15 min and its bottleneck 11-17 min (after the bottleneck
# detector's 10-minute warm-up): 17 min keeps all three faults and most negatives.
QUICK_DURATION = "17m"

#: A baseline computes its alerts offline from the scenario (the simulator is deterministic, so
#: ``iter_records(scenario)`` or ``Simulator(scenario)`` give the very telemetry the worker saw):
#: ``(scenario) -> (finding kind, [(entity, fired_at_ns), ...])``. Register as name -> function.
Baseline = Callable[[Scenario], tuple[str, list[tuple[dict[str, str], int]]]]
#: p99_static, halfspacetrees (bottleneck_span); predict_linear, deriv (memory_leak); gc_time
#: (gc_pressure); tw_static_5000_1m, tw_static_1000_10m, tw_static_20000_2m (time_wait_buildup).
BASELINES: dict[str, Baseline] = {
    **baselines.BUILTIN, **memory_baselines.BUILTIN, **timewait_baselines.BUILTIN,
}


async def run_scenario(
    name: str, args: argparse.Namespace, kinds: list[str], bootstrap: str
) -> tuple[dict[str, scoring.KindScore], dict[str, Any]]:
    names = RunNames.fresh("bench-acc")
    duration = args.duration or (QUICK_DURATION if args.quick else None)
    scenario = build_scenario(
        name, args.seed, duration=duration, start=DEFAULT_REPLAY_START, rate=args.rate,
        spans_topic=names.spans, metrics_topic=names.metrics,
    )
    if args.quick and not args.duration and not _positives(scenario):
        log(f"accuracy: {name} cut to {duration} has no faults left; using its full length")
        scenario = build_scenario(
            name, args.seed, start=DEFAULT_REPLAY_START, rate=args.rate,
            spans_topic=names.spans, metrics_topic=names.metrics,
        )
    out = CACHE / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_labels(scenario, out / "labels.jsonl")
    truth = scoring.LabelSet.from_lines(label_lines(scenario))
    log(f"accuracy: scenario {name}, seed {scenario.seed}, {rfc3339(scenario.start_ns)} .. "
        f"{rfc3339(scenario.end_ns)}, {len(truth.labels)} labels, topics {names.tag}.*")
    wall0 = time.perf_counter()
    findings: list[dict[str, Any]] = []
    incidents: list[dict[str, Any]] = []
    try:
        await harness.create_input_topics(bootstrap, names, args.partitions)
        produced = await harness.replay(scenario, bootstrap)
        log(f"replay: {produced.total_records:,} records, {produced.items['spans']:,} spans, "
            f"{produced.items['metrics']:,} metric points in {produced.seconds:.1f} s")
        # A finite replay: the input ends, and its last windows close (harness.REPLAY_END).
        env = {**names.worker_env(), **harness.REPLAY_END}
        # What an operator configures: limits of runtimes that report none (CPython).
        limits = configured_limits(scenario)
        if limits:
            env["MEMORY_LIMITS"] = ",".join(f"{svc}={n}" for svc, n in sorted(limits.items()))
        worker = harness.Worker(env, bootstrap, out / "worker.log", args.detectors).start()
        try:
            tl = await harness.wait_until_detected(
                worker, names, produced.items,
                timeout_s=args.timeout or (300 if args.quick else 3600), poll_s=0.5,
            )
            if not tl.timed_out and not await harness.wait_until_ended(worker, 120):
                log(f"{name}: the worker did not reach the end of the input in 120 s; "
                    "scoring what it found")
        finally:
            worker.stop()
        if tl.timed_out:
            raise harness.BenchError(
                f"{name}: worker did not detect every item in time: "
                + harness.progress_line(tl.last, names, produced.items,
                                        time.perf_counter() - worker.started_at)
            )
        worker_s = time.perf_counter() - worker.started_at
        findings = [orjson.loads(r.value) for r in await harness.read_topic(
            bootstrap, names.findings) if r.value]
        incidents = [orjson.loads(r.value) for r in await harness.read_topic(
            bootstrap, names.incidents) if r.value]
    finally:
        await harness.cleanup_logged(bootstrap, names.tag)
    for fname, docs in (("findings", findings), ("incidents", incidents)):
        with open(out / f"{fname}.jsonl", "wb") as fh:
            for d in docs:
                fh.write(orjson.dumps(d) + b"\n")
    grouped = score_incidents(incidents, findings, truth, args.grace)
    log(incident_table(grouped))

    scores = scoring.score_findings(findings, truth, kinds, args.grace)
    for bname, baseline in BASELINES.items():
        kind, alerts = baseline(scenario)
        scores[f"baseline:{bname}"] = scoring.score_rule(bname, kind, alerts, truth, args.grace)
    (out / "score.json").write_bytes(orjson.dumps(
        {k: s.to_dict() for k, s in scores.items()}, option=orjson.OPT_INDENT_2))
    firing = scoring.alerts_from_findings(findings)
    summary = {
        "name": name,
        "seed": scenario.seed,
        "duration_s": scenario.duration_s,
        "rate": scenario.rate,
        "records": produced.total_records,
        "spans": produced.items["spans"],
        "metric_points": produced.items["metrics"],
        "positives": dict(Counter(lb.kind for lb in truth.labels if not lb.negative)),
        "negatives": dict(Counter(lb.kind for lb in truth.labels if lb.negative)),
        "finding_records": len(findings),
        "findings_by_kind": dict(Counter(a.kind for a in firing)),
        "scores": {k: {"tp": s.tp, "fp": s.fp, "fn": s.fn} for k, s in scores.items()},
        "worker_s": round(worker_s, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "output": str(out.relative_to(harness.ROOT)),
        "incidents": {k: v for k, v in grouped.items() if k not in ("faults_detail",)},
    }
    return scores, summary


def _positives(scenario: Scenario) -> list[dict[str, Any]]:
    return [lb for lb in label_lines(scenario)[1:] if not lb["negative"]]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = harness.bootstrap_servers()
    classes = harness.detector_classes(args.detectors)
    declared = {k for c in classes for k in getattr(c, "kinds", ())}
    kinds = [k for k in KINDS if k in declared] + sorted(declared - set(KINDS))
    if not classes:
        log("accuracy: NO DETECTORS ARE REGISTERED (pipeline.detectors.BUILTIN is empty): the "
            "replay and worker still run end to end, but there is nothing to score")
    per_scenario: list[dict[str, scoring.KindScore]] = []
    summaries: list[dict[str, Any]] = []
    for name in args.scenarios:
        scores, summary = await run_scenario(name, args, kinds, bootstrap)
        per_scenario.append(scores)
        summaries.append(summary)
    merged = scoring.merge(per_scenario)
    incidents = merge_incident_scores([s["incidents"] for s in summaries])
    full = {
        **{k: s.to_dict() for k, s in merged.items()},
        "scenarios": summaries,
        "detectors": [c.name for c in classes],
        "kinds": kinds,
        "quick": bool(args.quick),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "accuracy.json").write_bytes(orjson.dumps(full, option=orjson.OPT_INDENT_2))
    print(table(merged, summaries, classes, kinds))
    result: dict[str, Any] = {k: s.to_dict(detail=False) for k, s in merged.items()}
    result.update(scenarios=summaries, detectors=full["detectors"], kinds=kinds,
                  quick=bool(args.quick), incidents=incidents)
    print(f"\nIncidents: {incidents['one_incident']}/{incidents['faults_with_findings']} "
          f"detected problems in one incident of their own "
          f"({incidents['multi_finding_problems']} with several findings), root right for "
          f"{incidents['root_correct']}; {incidents['incidents_without_fault']} incidents "
          "match no injected problem (per scenario: the log above)")
    if not classes:
        result["note"] = "no detectors registered: scores are empty"
    return result


def merge_incident_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("problems", "multi_finding_problems", "faults_with_findings", "one_incident",
            "root_correct", "incidents", "finding_ids", "incidents_without_fault")
    out: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in scores) for k in keys}
    n = out["faults_with_findings"]
    out["one_incident_share"] = round(out["one_incident"] / n, 4) if n else None
    out["root_correct_share"] = round(out["root_correct"] / n, 4) if n else None
    return out


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def table(merged: dict[str, scoring.KindScore], summaries: list[dict[str, Any]],
          classes: list[type], kinds: list[str]) -> str:
    dets = ", ".join(f"{c.name} ({', '.join(getattr(c, 'kinds', ()))})" for c in classes)
    lines = [
        f"Accuracy: detectors: {dets or 'NONE REGISTERED'}",
        "",
        f"  {'scenario':11s} {'minutes':>7s} {'records':>9s} {'spans':>10s} {'points':>8s} "
        f"{'faults':>6s} {'negs':>5s} {'findings':>8s} {'ids':>4s} {'worker s':>8s} "
        f"{'wall s':>7s}",
    ]
    for s in summaries:
        lines.append(
            f"  {s['name']:11s} {s['duration_s'] / 60:7.0f} {s['records']:9,} {s['spans']:10,} "
            f"{s['metric_points']:8,} {sum(s['positives'].values()):6d} "
            f"{sum(s['negatives'].values()):5d} {s['finding_records']:8d} "
            f"{sum(s['findings_by_kind'].values()):4d} {s['worker_s']:8.1f} {s['wall_s']:7.1f}"
        )
    lines.append("")
    if not merged:
        lines.append("  No detectors registered, so no finding kinds to score (scores are empty)."
                     if not classes else "  The registered detectors declare no finding kinds.")
        positives = Counter(k for s in summaries for k, n in s["positives"].items()
                            for _ in range(n))
        if positives:
            lines.append("  Labelled faults that would be scored: "
                         + ", ".join(f"{k} x{n}" for k, n in sorted(positives.items())))
        return "\n".join(lines)
    lines.append(
        f"  {'kind / method':27s} {'prec':>6s} {'recall':>6s} {'f1':>6s} {'delay s':>8s} "
        f"{'FA/100h':>8s} {'hard-neg':>8s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'alerts':>6s}"
    )
    for key, sc in merged.items():
        lines.append(
            f"  {key:27s} {_fmt(sc.precision):>6s} {_fmt(sc.recall):>6s} {_fmt(sc.f1):>6s} "
            f"{_fmt(sc.median_delay_s, '.0f'):>8s} {_fmt(sc.false_alarms_per_100h, '.2f'):>8s} "
            f"{sc.hard_negative_false_alarms:8d} {sc.tp:4d} {sc.fp:4d} {sc.fn:4d} "
            f"{sc.alerts:6d}"
        )
    extra = []
    for key, sc in merged.items():
        left, what = sc.time_left(), scoring.TIME_LEFT.get(sc.kind)
        if left and what and (left["with_estimate"] or not key.startswith("baseline:")):
            extra.append(
                f"  {key:27s} {what.what} at first report: {left['with_estimate']}/"
                f"{left['labels']} with an estimate, median |rel err| "
                f"{_fmt(left['median_abs_rel_err'])}, max {_fmt(left['max_abs_rel_err'])}, "
                f"within +-20% {_fmt(left['within_20pct'], '.2f')}, {left['late']} reported "
                "after it ran out")
        elif left and what and left["late"]:
            extra.append(f"  {key:27s} first alert after the resource ran out: {left['late']}/"
                         f"{left['labels'] + left['late']} of the detected faults that run out")
        by_class = sc.delay_by_rate_class()
        if by_class:
            classes = scoring.RATE_CLASSES_BY_KIND[sc.kind]
            extra.append(f"  {key:27s} median delay by {classes.what}: " + "; ".join(
                f"{c}: {_minutes(v['median_delay_s'])} min ({v['detected']}/{v['labels']})"
                for c, v in by_class.items()))
        if sc.inhibited:
            extra.append(f"  {key:27s} {sc.inhibited} alerts inhibited by an active "
                         f"{'/'.join(scoring.INHIBITED_BY.get(sc.kind, ()))} label (not counted)")
    if extra:
        lines += [""] + extra
    lines += ["", "  labelled faults of the scored kinds:"]
    if not any(sc.labels for sc in merged.values()):
        lines.append("    none in these scenarios: only false alarms can be counted")
    for key, sc in merged.items():
        for lb in sc.labels:
            entity = "/".join(lb["entity"].values())
            what = (f"detected after {lb['delay_s']:.0f} s ({lb['alerts']} alerts)"
                    if lb["detected"] else "MISSED")
            lines.append(f"    {key:27s} {lb['scenario']:10s} {entity:40s} {lb['start'][11:19]}"
                         f"-{lb['end'][11:19]}  {what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"CI size: {', '.join(QUICK_SCENARIOS)} cut to {QUICK_DURATION}")
    parser.add_argument("--scenarios",
                        help=f"comma-separated presets (default {','.join(FULL_SCENARIOS)}; "
                        f"quick: {','.join(QUICK_SCENARIOS)})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", help="event time per scenario (default: the preset's)")
    parser.add_argument("--rate", type=float, help="entry requests/s (default: the preset's)")
    parser.add_argument("--grace", type=float,
                        help="seconds after a label's end a finding still counts, for every kind "
                        f"(default {scoring.DEFAULT_GRACE_S:.0f}, memory_leak "
                        f"{scoring.GRACE_BY_KIND_S['memory_leak']:.0f})")
    parser.add_argument("--partitions", type=int, default=8,
                        help="partitions of the input topics (default 8)")
    parser.add_argument("--detectors", default="",
                        help="extra detectors for the worker (PIPELINE_DETECTORS syntax)")
    parser.add_argument("--timeout", type=float,
                        help="seconds to wait for the worker per scenario (default 300 quick, "
                        "3600)")
    args = parser.parse_args(argv)
    chosen = args.scenarios.split(",") if args.scenarios else (
        QUICK_SCENARIOS if args.quick else FULL_SCENARIOS)
    args.scenarios = [s.strip() for s in chosen if s.strip()]
    unknown = [s for s in args.scenarios if s not in PRESETS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(PRESETS)}")
    started = time.perf_counter()
    result = harness.run_main("accuracy", run(args))
    log(f"accuracy: done in {time.perf_counter() - started:.0f} s; findings and labels under "
        f"{(CACHE).relative_to(harness.ROOT)}/<scenario>/")
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])


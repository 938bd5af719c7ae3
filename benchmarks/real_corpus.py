"""Score the detectors on the real-telemetry corpus, beside the simulator's suite.

    benchmarks/corpus/fetch.sh                         # once: the OTel SDK venv, the Java agent
    python -m benchmarks.corpus.record --minutes 45    # once: record (real programs, real faults)
    python -m benchmarks.real_corpus [--local] [--run .cache/corpus/run]
    python -m benchmarks.real_corpus --run .cache/corpus/errors  # record.py --schedule errors

The recording (``benchmarks/corpus/record.py``) holds every OTLP request the real programs'
official SDKs and agents sent, with its receive time, and the labels the fault injector wrote.
This replays it as the Collector's kafka exporter would have written it (one record per request,
``otlp_proto``, unkeyed, the receive time as the Kafka timestamp) onto fresh topics, runs a
worker subprocess over them as fast as it goes (``harness.Worker``; ``--local`` runs the same
stages in-process with ``pipeline.local.LocalPipeline`` instead, for quick iterations), and
scores the findings against the labels with ``benchmarks.scoring`` (precision, recall, F1,
delay, false alarms per 100 entity-hours), per kind.

It also reports, for the slow-downstream faults, how many were named: a finding matching the
label whose ``entity.peer_service`` (the caller's call into it) or ``entity.service`` is the
slowed service; and for the error faults (``error_origin`` labels), how many had their origin
named: a firing ``error_origin`` finding whose ``entity.service`` is the label's service, within
the label's window and grace. Entity counts for the false-alarm rate come from the recording itself:
operations (service, operation, detail, as trace assembly names them: for
``bottleneck_span`` and ``error_origin``), services with spans,
instances with memory metrics, hosts with connection metrics.

Everything is written to ``.cache/real-corpus/`` (findings, scores); the final line is JSON.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks import harness, scoring
from benchmarks.corpus.recorder import Recording
from benchmarks.error_baselines import error_rate_alerts
from benchmarks.harness import RunNames, log
from benchmarks.incident_scoring import score_incidents
from benchmarks.incident_scoring import table as incident_table
from pipeline import otlp
from pipeline.connections import HOST_METRICS, host_of
from pipeline.detectors.trace_assembly import operation_of
from pipeline.incident_stage import IncidentStage, finding_record
from pipeline.local import LocalPipeline
from pipeline.runtime_metrics import BUILTIN_RULES
from pipeline.settings import Settings
from pipeline.simulate.otlp_encode import SimRecord
from pipeline.simulate.writer import write_records

ROOT = harness.ROOT
RUN = ROOT / ".cache" / "corpus" / "run"
CACHE = ROOT / ".cache" / "real-corpus"
MAX_RECORD_BYTES = 8 * 1024 * 1024  # the worker's MAX_RECORD_BYTES default
KINDS = ("bottleneck_span", "latency_regression", "memory_leak", "gc_pressure",
         "time_wait_buildup", "error_origin")


def records(run: Path, spans_topic: str, metrics_topic: str
            ) -> tuple[list[SimRecord], dict[str, int], list[tuple[str, str, int, int]]]:
    """The recording as Kafka records, the entity counts of the run line, and (service, span
    name, status code, end ns) of every span (for the error-rate baseline)."""
    out: list[SimRecord] = []
    rows: list[tuple[str, str, int, int]] = []
    ops: set[tuple[str, str, str]] = set()
    services: set[str] = set()
    instances: set[tuple[str, str]] = set()
    hosts: set[str] = set()
    for recv_ns, signal, body in Recording(run / "otlp.bin"):
        if signal == "spans":
            items = otlp.decode_spans(body, "otlp_proto").items
            for s in items:
                ops.add((s.resource.service, *operation_of(s)))
                services.add(s.resource.service)
                rows.append((s.resource.service, s.name, s.status, s.end_ns))
            topic = spans_topic
        else:
            items = otlp.decode_metrics(body, "otlp_proto").items
            for p in items:
                if p.name in BUILTIN_RULES:
                    instances.add((p.resource.service, p.resource.instance))
                if p.name in HOST_METRICS:
                    hosts.add(host_of(p.resource))
            topic = metrics_topic
        out.append(SimRecord(topic, None, body, recv_ns // 1_000_000, len(items)))
    entities = {"operations": len(ops), "services": len(services),
                "instances": len(instances), "hosts": len(hosts)}
    return out, entities, rows


def labels(run: Path, entities: dict[str, int]) -> scoring.LabelSet:
    lines = scoring.read_jsonl(run / "labels.jsonl")
    lines[0] = {**lines[0], "entities": entities}
    for line in lines[1:]:  # what the injector knows of the fault, kept as the label's truth
        if "downstream" in line:
            line["truth"] = {**line.get("truth", {}), "downstream": line["downstream"]}
    return scoring.LabelSet.from_lines(lines)


def run_local(recs: list[SimRecord], spans_topic: str, metrics_topic: str,
              partitions: int, overrides: dict[str, str] | None = None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The findings, and the incidents the worker's correlation makes of them and of the
    service-map edges, in the order the stages produced them."""
    settings = Settings.from_env(dict(overrides or {}), otlp_spans_topic=spans_topic,
                                 otlp_metrics_topic=metrics_topic)
    lp = LocalPipeline(settings, {spans_topic: 1, metrics_topic: 1}, partitions=partitions)
    stage = IncidentStage(settings)
    stage.correlator = stage.new_correlator()
    findings: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    def take(found: list[Any]) -> None:
        for _out, key, value in lp.published:
            edge = stage.edge_record(key, value)
            if edge is not None:
                out.extend(orjson.loads(v) for _, v in stage.take(stage.next_offset, edge))
        lp.published.clear()
        for f in found:
            value = f.to_json()
            findings.append(orjson.loads(value))
            out.extend(orjson.loads(v) for _, v in stage.take(stage.next_offset,
                                                               finding_record(value)))

    for i, r in enumerate(recs):
        take(lp.feed(r.topic, 0, i, r.value, r.timestamp_ms))
        take(lp.heartbeat(topics=[r.topic]))
    take(lp.end_of_input())
    return findings, out


async def run_worker(recs: list[SimRecord], names: RunNames, out: Path,
                     timeout_s: float, overrides: dict[str, str] | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The findings and incidents a worker published for the recording."""
    bootstrap = harness.bootstrap_servers()
    try:
        await _create_topics(bootstrap, names)
        stats = await write_records(iter(recs), {**harness.client_kwargs(bootstrap),
                                                 "max_request_size": MAX_RECORD_BYTES},
                                    mode="replay", spans_topic=names.spans, progress=log)
        if stats.failed:
            raise harness.BenchError(f"replay: {stats.failed:,} records were not written "
                                     f"({stats.first_error})")
        items = {"spans": sum(r.items for r in recs if r.topic == names.spans),
                 "metrics": sum(r.items for r in recs if r.topic == names.metrics)}
        log(f"replay: {len(recs):,} records, {items['spans']:,} spans, {items['metrics']:,} "
            f"metric points in {stats.seconds:.1f} s")
        env = {**names.worker_env(), **harness.REPLAY_END, **(overrides or {})}
        worker = harness.Worker(env, bootstrap, out / "worker.log").start()
        try:
            tl = await harness.wait_until_detected(worker, names, items, timeout_s=timeout_s,
                                                   poll_s=0.5)
            if tl.timed_out:
                raise harness.BenchError("the worker did not detect every item in time")
            if not await harness.wait_until_ended(worker, 120):
                log("the worker did not reach the end of the input in 120 s; scoring what it "
                    "found")
        finally:
            worker.stop()
        return [[orjson.loads(r.value) for r in await harness.read_topic(bootstrap, topic)
                 if r.value] for topic in (names.findings, names.incidents)]
    finally:
        await harness.cleanup_logged(bootstrap, names.tag)


async def _create_topics(bootstrap: str, names: RunNames) -> None:
    """The input topics, taking records up to ``MAX_RECORD_BYTES``: the Python SDK's urllib
    instrumentation puts the full URL on its client duration histogram, so one metrics
    export of a busy process can pass the broker's default 1 MB."""
    admin = AIOKafkaAdminClient(**harness.client_kwargs(bootstrap))
    await admin.start()
    try:
        config = {"retention.ms": "-1", "retention.bytes": "-1",
                  "max.message.bytes": str(MAX_RECORD_BYTES)}
        await admin.create_topics([NewTopic(t, 1, 1, topic_configs=config)
                                   for t in (names.spans, names.metrics)])
    finally:
        await admin.close()


def downstream_named(findings: list[dict[str, Any]], truth: scoring.LabelSet,
                     grace_s: float = scoring.DEFAULT_GRACE_S) -> dict[str, Any]:
    """Slow-downstream labels, and those a finding named (``peer_service`` or ``service``
    equal to the slowed service, fired within the label's window and grace)."""
    alerts = scoring.alerts_from_findings(findings)
    rows = []
    for lb in truth.labels:
        callee = lb.truth.get("downstream")
        if callee is None:
            continue
        hit = next((a for a in alerts if lb.start_ns <= a.fired_at_ns <= lb.end_ns
                    + int(grace_s * 1e9) and callee in (a.entity.get("peer_service"),
                                                        a.entity.get("service"))), None)
        rows.append({"downstream": callee, "named": hit is not None,
                     "by": hit.entity if hit else None,
                     "delay_s": (hit.fired_at_ns - lb.start_ns) / 1e9 if hit else None})
    named = sum(r["named"] for r in rows)
    return {"faults": len(rows), "named": named,
            "share": round(named / len(rows), 3) if rows else None, "detail": rows}


def origin_named(findings: list[dict[str, Any]], truth: scoring.LabelSet,
                 grace_s: float | None = None) -> dict[str, Any]:
    """Positive ``error_origin`` labels, and those whose origin service a firing
    ``error_origin`` finding named (``entity.service`` equal to the label's ``entity.service``,
    fired within the label's window and the kind's grace, ``scoring.grace_ns``)."""
    grace = scoring.grace_ns("error_origin", grace_s)
    alerts = [a for a in scoring.alerts_from_findings(findings) if a.kind == "error_origin"]
    rows = []
    for lb in truth.labels:
        if lb.kind != "error_origin" or lb.negative:
            continue
        service = lb.entity.get("service")
        hit = next((a for a in alerts if lb.start_ns <= a.fired_at_ns <= lb.end_ns + grace
                    and a.entity.get("service") == service), None)
        rows.append({"service": service, "operation": lb.entity.get("operation"),
                     "named": hit is not None, "by": hit.entity if hit else None,
                     "delay_s": (hit.fired_at_ns - lb.start_ns) / 1e9 if hit else None})
    named = sum(r["named"] for r in rows)
    return {"faults": len(rows), "named": named,
            "share": round(named / len(rows), 3) if rows else None, "detail": rows}


def table(scores: dict[str, scoring.KindScore], truth: scoring.LabelSet,
          named: dict[str, Any], findings: list[dict[str, Any]],
          origins: dict[str, Any] | None = None) -> str:
    lines = [
        f"Real-telemetry corpus: {truth.scenario}, {truth.hours * 60:.0f} min, entities "
        f"{truth.entities}",
        f"  {'kind':<22} {'prec':>6} {'recall':>6} {'f1':>6} {'delay s':>8} {'FA/100h':>8} "
        f"{'tp':>3} {'fp':>3} {'fn':>3} {'alerts':>6}",
    ]
    for kind, s in scores.items():
        d = s.to_dict()

        def f(v: Any, spec: str = ".3f") -> str:
            return "-" if v is None else format(v, spec)

        lines.append(
            f"  {kind:<22} {f(d['precision']):>6} {f(d['recall']):>6} {f(d['f1']):>6} "
            f"{f(d['median_delay_s'], '.0f'):>8} {f(d['false_alarms_per_100h'], '.2f'):>8} "
            f"{s.tp:>3} {s.fp:>3} {s.fn:>3} {s.tp_alerts + s.fp:>6}")
    lines.append(f"  slow downstream named: {named['named']} of {named['faults']}")
    if origins and origins["faults"]:
        lines.append(f"  error origin named: {origins['named']} of {origins['faults']}")
    for a in scoring.alerts_from_findings(findings):
        lines.append(f"    finding {a.kind:<20} {orjson.dumps(a.entity).decode()} at "
                     f"+{(a.fired_at_ns - truth.start_ns) / 60e9:.1f} min")
    for lb in truth.labels:
        lines.append(f"    label   {lb.kind:<20} {orjson.dumps(lb.entity).decode()} "
                     f"+{(lb.start_ns - truth.start_ns) / 60e9:.1f}..+"
                     f"{(lb.end_ns - truth.start_ns) / 60e9:.1f} min")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    names = RunNames.fresh("bench-real")
    t0 = time.perf_counter()
    recs, entities, rows = records(args.run, names.spans, names.metrics)
    truth = labels(args.run, entities)
    log(f"corpus {args.run}: {len(recs):,} records, entities {entities}, "
        f"{len(truth.labels)} labels")
    out = CACHE / args.run.name
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.local:
        findings, incidents = run_local(recs, names.spans, names.metrics, args.partitions,
                                        overrides)
    else:
        findings, incidents = await run_worker(recs, names, out, args.timeout, overrides)
    for name, docs in (("findings", findings), ("incidents", incidents)):
        with open(out / f"{name}.jsonl", "wb") as fh:
            for d in docs:
                fh.write(orjson.dumps(d) + b"\n")
    scores = scoring.score_findings(findings, truth, list(KINDS))
    if any(lb.kind == "error_origin" for lb in truth.labels):  # the rule users would write
        scores["baseline:error_rate"] = scoring.score_rule(
            "error_rate", "error_origin", error_rate_alerts(rows), truth)
    named = downstream_named(findings, truth)
    origins = origin_named(findings, truth)
    grouped = score_incidents(incidents, findings, truth)
    print(table(scores, truth, named, findings, origins))
    print(incident_table(grouped))
    result = {k: s.to_dict(detail=False) for k, s in scores.items()}
    result.update(corpus=str(args.run.relative_to(ROOT)) if args.run.is_relative_to(ROOT)
                  else str(args.run), mode="local" if args.local else "worker",
                  entities=entities, downstream_named=named,
                  origin_named=origins, settings=overrides,
                  incidents={k: v for k, v in grouped.items() if k != "faults_detail"},
                  findings_by_kind=dict(Counter(a.kind for a in
                                                scoring.alerts_from_findings(findings))),
                  wall_s=round(time.perf_counter() - t0, 1))
    (out / "score.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=RUN, help="a recording (corpus.record --out)")
    ap.add_argument("--local", action="store_true",
                    help="run the stages in-process (no Kafka) instead of a worker")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="a worker setting for this run (e.g. REGRESSION_MIN_ADDED_MS=5)")
    args = ap.parse_args(argv)
    result = harness.run_main("real_corpus", main_async(args))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()

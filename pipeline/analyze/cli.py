"""``python -m pipeline analyze``: the worker's stages in-process over a time range of the input
topics or over Collector files, and a report of what they found (``pipeline.analyze.report``).

Read-only: the Kafka source reads with no consumer group and commits nothing, and nothing is
written anywhere (what the detectors would publish is dropped). Bounded: the stages keep the
worker's caps, the report's aggregates their own (``collect``); ``--max-records`` and
``--time-limit`` stop the reading early, and the report says where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.analyze.sources import FileStats, InputRecord, KafkaRange, SourceError, read_files
from pipeline.analyze.timerange import parse_duration_ns, time_range_ns
from pipeline.settings import ConfigError, Settings

if TYPE_CHECKING:  # (the detectors are imported only when a run starts: --help stays quick)
    from pipeline.analyze.collect import Collector
    from pipeline.findings import Finding

DEFAULT_MAX_RECORDS = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", help="the service to analyse (default: every service)")
    p.add_argument("--since", help="the range is the last DURATION (e.g. 1h, 30m); default 1h "
                   "for --source kafka, the whole files for --file")
    p.add_argument("--from", dest="start", metavar="TIME",
                   help="range start: RFC 3339 (2026-01-05T08:00:00Z), now-2h, -2h, Unix s")
    p.add_argument("--to", dest="end", metavar="TIME", help="range end (default: now / open)")
    p.add_argument("--baseline", default="0", metavar="DURATION",
                   help="also read this much before the range so that the detectors' "
                   "baselines are warm (latency needs ~10 min); only the range is reported")
    p.add_argument("--latency-threshold", metavar="DURATION",
                   help="a trace slower than this is slow (e.g. 500ms): the report gives each "
                   "operation's share of the time of slow traces")
    p.add_argument("--source", choices=("kafka", "file"),
                   help="kafka: the input topics (OTLP_SPANS_TOPIC, OTLP_METRICS_TOPIC); "
                   "file: --file PATH... (default: file when --file is given)")
    p.add_argument("--file", dest="files", nargs="+", metavar="PATH", type=Path,
                   help="Collector file-exporter output: OTLP/JSON lines or proto "
                   "(length-prefixed), traces and/or metrics; gzip is read too")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    p.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS,
                   help=f"stop after reading this many records (default {DEFAULT_MAX_RECORDS:,})")
    p.add_argument("--time-limit", metavar="DURATION",
                   help="stop reading after this much wall-clock time (e.g. 5m)")
    p.add_argument("--partitions", type=int, default=4,
                   help="in-process detection partitions (default 4; each has the worker's "
                   "caps, e.g. TRACE_MAX_OPEN open traces)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", action="store_true", default=None,
                      help="show a progress bar on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")


class _Run:
    """One analysis: the in-process pipeline, the report collector, and what was read."""

    def __init__(self, settings: Settings, inputs: dict[str, int], col: Collector,
                 partitions: int, max_records: int, deadline: float | None) -> None:
        from pipeline.analyze.collect import detector_classes
        from pipeline.detectors import load_detectors
        from pipeline.local import LocalPipeline

        classes = [*load_detectors(settings.pipeline_detectors), *detector_classes(col)]
        self.lp = LocalPipeline(settings, inputs, partitions=partitions,
                                detector_classes=classes, routed_prefix="analyze-")
        self.settings = settings
        self.max_records, self.deadline = max_records, deadline
        self.records = 0
        self.newest_ms: int | None = None
        self.findings: dict[str, Finding] = {}
        self.dead_letters: dict[str, int] = {}
        self.stopped_early = ""
        self.idle: dict[tuple[str, int], float] = {}

    def _take(self, found: Iterable[Finding]) -> None:
        for f in found:
            self.findings[f.id] = f
        lp = self.lp
        for _topic, _p, _o, reason in lp.dead_letters:
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1
        lp.dead_letters.clear()
        lp.published.clear()  # service_map records: the report reads the map from samples

    def should_stop(self) -> bool:
        from pipeline.findings import rfc3339

        if self.records >= self.max_records:
            self.stopped_early = f"--max-records {self.max_records:,} reached"
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.stopped_early = "--time-limit reached"
        else:
            return False
        if self.newest_ms is not None:
            self.stopped_early += f" at event time {rfc3339(self.newest_ms * 1_000_000)}"
        return True

    def feed(self, topic: str, rec: InputRecord, finished: set[tuple[str, int]]) -> None:
        self.records += 1
        if rec.timestamp_ms is not None:
            self.newest_ms = max(self.newest_ms or 0, rec.timestamp_ms)
        found = self.lp.feed(topic, rec.partition, rec.offset, rec.value or b"",
                             rec.timestamp_ms, rec.encoding or None)
        topics = [topic]
        if len(finished) != len(self.idle):  # a partition read to its end: it holds no one
            quiet = self.settings.source_idle_s
            self.idle = {tp: quiet for tp in finished}
            topics = None
        found += self.lp.heartbeat(self.idle, topics=topics)
        self._take(found)

    def finish(self) -> None:
        self._take(self.lp.end_of_input())

    def counters(self) -> dict[str, Any]:
        lp = self.lp
        items = {sig: sum(e.counters.items for e in by_p.values())
                 for sig, by_p in lp.engines.items()}
        traces: dict[str, int] = {}
        for e in lp.engines["spans"].values():
            for d in e.detectors:
                if d.name == "trace_assembly":
                    for k, v in d.stats().evicted.items():
                        traces[k] = traces.get(k, 0) + v
        return {"spans": items["spans"], "points": items["metrics"],
                "late_items": sum(lp.late_items().values()),
                "trace_assembly": {k: v for k, v in sorted(traces.items()) if v},
                "dropped_items": dict(lp.dropped)}


def _progress(enabled: bool | None, total: int, unit: str) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total or None, unit=unit, unit_scale=True, file=sys.stderr,
                disable=not show, leave=False, mininterval=0.5, dynamic_ncols=True)


def _run_files(args: argparse.Namespace, settings: Settings, run_args: dict[str, Any],
               read_from: int | None, to_ns: int | None) -> tuple[_Run, dict[str, Any]]:
    stats = FileStats()
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        raise SourceError(f"no such file: {', '.join(missing)}")
    topics = {"spans": settings.otlp_spans_topic, "metrics": settings.otlp_metrics_topic}
    run = _Run(settings, {t: 1 for t in topics.values()}, **run_args)
    offsets = dict.fromkeys(topics.values(), 0)
    bar = _progress(args.progress, sum(p.stat().st_size for p in args.files), "B")
    try:
        for rec in read_files(args.files, read_from, to_ns, stats):
            if run.should_stop():
                break
            topic = topics[rec.signal]
            rec.offset = offsets[topic]
            offsets[topic] += 1
            run.feed(topic, rec, set())
            bar.update(rec.size)
    finally:
        bar.close()
    run.finish()
    unreadable = dict(stats.unreadable)
    if stats.empty:
        unreadable["empty"] = stats.empty
    info = {"source": f"{len(args.files)} file(s)", "files": [str(p) for p in args.files],
            "requests": stats.requests, "skipped_out_of_range": stats.skipped_out_of_range,
            "unreadable_requests": unreadable}
    return run, info


async def _run_kafka(args: argparse.Namespace, settings: Settings, run_args: dict[str, Any],
                     read_from: int | None, to_ns: int | None) -> tuple[_Run, dict[str, Any]]:
    topics = {settings.otlp_spans_topic: "spans", settings.otlp_metrics_topic: "metrics"}
    src = KafkaRange(settings.aiokafka_kwargs(), topics,
                     None if read_from is None else read_from // 1_000_000,
                     None if to_ns is None else to_ns // 1_000_000)
    try:
        await src.open()
        run = _Run(settings, dict(src.partitions), **run_args)
        bar = _progress(args.progress, src.planned, "rec")
        stream: AsyncIterator[tuple[str, InputRecord]] = src.records()
        try:
            async for topic, rec in stream:
                if run.should_stop():
                    break
                rec.encoding = ""  # the topic's setting
                run.feed(topic, rec, src.finished)
                bar.update(1)
        finally:
            bar.close()
            await stream.aclose()
    finally:
        await src.close()
    run.finish()
    info = {"source": f"kafka {', '.join(topics)} on {settings.kafka_bootstrap_servers}",
            "planned_records": src.planned,
            "skipped_out_of_range": src.skipped_out_of_range,
            "offsets": {f"{tp.topic}[{tp.partition}]": [src.start[tp], src.stop[tp]]
                        for tp in sorted(src.stop, key=lambda tp: (tp.topic, tp.partition))}}
    return run, info


def main(args: argparse.Namespace) -> int:
    import orjson

    from pipeline.analyze import report
    from pipeline.analyze.collect import Collector

    try:
        settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    # Records are fed unkeyed whatever the producers did: spans are regrouped by trace id.
    settings = dataclasses.replace(settings, otlp_spans_keying="any")
    source = args.source or ("file" if args.files else None)
    if source is None:
        sys.exit("analyze: say where to read: --source kafka, or --file PATH...")
    if source == "file" and not args.files:
        sys.exit("analyze: --source file needs --file PATH...")
    if source == "kafka" and args.files:
        sys.exit("analyze: --file and --source kafka exclude each other")
    now = time.time_ns()
    try:
        lo, hi = time_range_ns(args.since, args.start, args.end, now,
                               default_since="1h" if source == "kafka" else None)
        if source == "kafka" and hi is None:
            hi = now
        baseline = parse_duration_ns(args.baseline)
        threshold = (parse_duration_ns(args.latency_threshold)
                     if args.latency_threshold else None)
        limit = parse_duration_ns(args.time_limit) / 1e9 if args.time_limit else None
    except ValueError as exc:
        sys.exit(f"analyze: {exc}")
    if args.top < 1 or args.max_records < 1 or args.partitions < 1:
        sys.exit("analyze: --top, --max-records and --partitions must be at least 1")
    read_from = None if lo is None else lo - baseline
    col = Collector(args.service, lo, hi, threshold)
    run_args = {"col": col, "partitions": args.partitions, "max_records": args.max_records,
                "deadline": time.monotonic() + limit if limit else None}
    started = time.monotonic()
    try:
        if source == "kafka":
            run, info = asyncio.run(_run_kafka(args, settings, run_args, read_from, hi))
        else:
            run, info = _run_files(args, settings, run_args, read_from, hi)
    except SourceError as exc:
        sys.exit(f"analyze: {exc}")
    except OSError as exc:
        sys.exit(f"analyze: cannot read: {exc}")
    except Exception as exc:  # noqa: BLE001 - a Kafka error as one line, not a traceback
        if type(exc).__module__.startswith("aiokafka"):
            sys.exit(f"analyze: Kafka at {settings.kafka_bootstrap_servers}: "
                     f"{type(exc).__name__}: {exc}")
        raise
    notes = []
    if run.stopped_early and run.newest_ms is not None:
        reached = run.newest_ms * 1_000_000
        col.to_ns = reached if col.to_ns is None else min(col.to_ns, reached)
    if lo is not None and hi is not None and not baseline and hi - lo < 15 * 60 * 10**9:
        notes.append("latency findings need about 10 minutes of history per operation: add "
                     "--baseline 15m to read some before the range")
    if col.traces == 0 and args.service:
        known = sorted({c for c, _, _ in col.edges} | {s for _, s, _ in col.edges})
        notes.append(f"no traces of {args.service!r} in range"
                     + (f"; services seen: {', '.join(known[:12])}" if known else ""))
    run_doc = {**info, "records": run.records, **run.counters(),
               "dead_letters": run.dead_letters, "stopped_early": run.stopped_early or None,
               "seconds": round(time.monotonic() - started, 1), "notes": notes}
    query = {"service": args.service, "since": args.since, "from": args.start, "to": args.end,
             "baseline": args.baseline, "latency_threshold": args.latency_threshold,
             "source": source, "top": args.top}
    doc = report.build(col, list(run.findings.values()), top=args.top, query=query,
                       run=run_doc)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2
                                             | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    else:
        sys.stdout.write(report.render(doc, top=args.top))
    return 0

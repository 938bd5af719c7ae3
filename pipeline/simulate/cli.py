"""``python -m pipeline simulate``: arguments, and the run that ties model, labels and writer."""

from __future__ import annotations

import argparse
import os
import sys
import time

from pipeline.simulate.faults import ALL_KINDS
from pipeline.simulate.labels import write_labels
from pipeline.simulate.otlp_encode import iter_records
from pipeline.simulate.scenarios import ENCODINGS, KEYINGS, PRESETS, Scenario, build_scenario
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START, rfc3339

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator's flags on ``parser`` (a subcommand parser or a fresh one)."""
    scenarios = ", ".join(PRESETS)
    parser.add_argument(
        "--scenario",
        default="demo",
        choices=list(PRESETS),
        help=f"preset ({scenarios}); see --list-scenarios",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--mode",
        choices=("live", "replay"),
        default="live",
        help="live: event time follows the wall clock (x --speed); replay: as "
        "fast as the broker takes it (default live)",
    )
    parser.add_argument(
        "--duration", help="event time to simulate, e.g. 90s, 20m, 2h (default: the scenario's)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="live only: event seconds per wall second (default 1)",
    )
    parser.add_argument(
        "--start",
        help="event-time start, RFC 3339 (default: now for live, "
        f"{DEFAULT_REPLAY_START} for replay)",
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="otlp_proto",
        help="record encoding (default otlp_proto)",
    )
    parser.add_argument(
        "--keying",
        choices=KEYINGS,
        default="keyed",
        help="keyed: one record per trace, key = trace id hex; unkeyed: batches "
        "with no key (default keyed)",
    )
    parser.add_argument("--labels", metavar="PATH", help="write ground-truth labels (JSONL)")
    parser.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (default env "
        f"KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_BOOTSTRAP})",
    )
    parser.add_argument("--spans-topic", default="otlp_spans")
    parser.add_argument("--metrics-topic", default="otlp_metrics")
    parser.add_argument(
        "--sample-ratio",
        type=float,
        help="head sampling ratio in (0, 1], decided per trace id (default 1)",
    )
    parser.add_argument("--rate", type=float, help="baseline entry requests/s (default 50)")
    parser.add_argument(
        "--metric-interval", type=int, help="seconds between metric exports/scrapes (default 10)"
    )
    parser.add_argument(
        "--no-spans",
        action="store_true",
        help="metrics only: model the traffic (allocation, GC, TCP) but build and send no "
        "spans (the leak preset's default)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="add KIND:target:start:duration[:magnitude], e.g. "
        "bottleneck_span:user-service/SELECT users:5m:10m:150 "
        f"(kinds: {', '.join(ALL_KINDS)}); repeatable",
    )
    parser.add_argument(
        "--only-faults",
        action="store_true",
        help="drop the preset's faults and negatives; keep only --fault ones",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="generate and encode without Kafka; print throughput"
    )
    parser.add_argument(
        "--list-scenarios", action="store_true", help="describe the presets and exit"
    )


def bootstrap_of(args: argparse.Namespace) -> str:
    """The Kafka the simulator writes to: --bootstrap, else KAFKA_BOOTSTRAP_SERVERS."""
    return args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    start = args.start or ("now" if args.mode == "live" else DEFAULT_REPLAY_START)
    return build_scenario(
        args.scenario,
        args.seed,
        duration=args.duration,
        start=start,
        rate=args.rate,
        sample_ratio=args.sample_ratio,
        metric_interval_s=args.metric_interval,
        encoding=args.encoding,
        keying=args.keying,
        spans_topic=args.spans_topic,
        metrics_topic=args.metrics_topic,
        emit_spans=False if getattr(args, "no_spans", False) else None,
        faults=[] if args.only_faults else None,
        extra_faults=args.fault,
    )


async def run(args: argparse.Namespace) -> None:
    """Build the scenario, write labels, then produce (or, with --dry-run, just generate)."""
    if args.list_scenarios:
        for name, preset in PRESETS.items():
            duration, faults, description = preset()
            kinds = ", ".join(f.kind for f in faults) or "none"
            print(f"{name:11s} {duration / 60:5.0f} min  {description}\n{'':18s}{kinds}")
        return
    try:
        scenario = scenario_from_args(args)
    except (ValueError, KeyError) as exc:
        sys.exit(f"simulate: {exc}")
    print(
        f"simulate: scenario {scenario.name} seed {scenario.seed}, "
        f"{rfc3339(scenario.start_ns)} .. {rfc3339(scenario.end_ns)}, "
        f"{len(scenario.faults)} labelled faults/negatives, {scenario.encoding}, "
        f"{scenario.keying}{'' if scenario.emit_spans else ', metrics only'}",
        flush=True,
    )
    if args.labels:
        print(f"simulate: labels -> {write_labels(scenario, args.labels)}", flush=True)
    records = iter_records(scenario)
    if args.dry_run:
        t0 = time.perf_counter()
        n = spans = points = size = 0
        for rec in records:
            n += 1
            size += len(rec.value)
            if rec.topic == scenario.spans_topic:
                spans += rec.items
            else:
                points += rec.items
        dt = time.perf_counter() - t0
        print(
            f"simulate: dry run: {n:,} records ({size / 1e6:,.1f} MB), {spans:,} spans, "
            f"{points:,} metric points in {dt:.1f} s: {n / dt:,.0f} records/s, "
            f"{spans / dt:,.0f} spans/s",
            flush=True,
        )
        return

    from pipeline.settings import ConfigError, Settings
    from pipeline.simulate.writer import write_records

    bootstrap = bootstrap_of(args)
    try:
        settings = Settings.from_env(
            kafka_bootstrap_servers=bootstrap, otlp_spans_topic=scenario.spans_topic,
            otlp_metrics_topic=scenario.metrics_topic,
        )
    except ConfigError as exc:
        sys.exit(f"simulate: configuration error: {exc}")
    client = settings.aiokafka_kwargs()
    from pipeline.topics import ensure_topics

    # The input topics with the pipeline's partition count, not the broker's auto-creation.
    await ensure_topics(settings, internal=False)
    stats = await write_records(
        records,
        client,
        mode=args.mode,
        speed=args.speed,
        spans_topic=scenario.spans_topic,
        progress=lambda line: print(line, flush=True),
    )
    print(f"simulate: done: {stats.line()}", flush=True)
    if stats.failed:
        sys.exit(f"simulate: {stats.failed:,} records were not written (the broker did not take "
                 "them); the labels still list every fault, so scores against them are off")

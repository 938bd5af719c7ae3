"""Throughput: the worker against the floor of plain aiokafka consume + OTLP decode, same run.

``python -m benchmarks.throughput [--quick] [--scenario healthy] [--duration 10m]
[--keying keyed|unkeyed] [--max-spans-per-record N] [--signal all|metrics]``

``--signal metrics`` measures the metric-point path alone: the scenario (default ``leak``, the
metrics-only memory suite, at its full 6 h; ``--quick`` 30 min) is built without spans
(``emit_spans=False``; a simulator without that setting has its span records filtered out before
the replay), only the metrics topic is replayed and read by the raw passes, and the worker runs
with all its detectors on (spans stage idle). The headline is then ``metric_points_per_s`` (the
worker, detectors on), ``raw_metric_points_per_s`` (plain consume + decode) and
``metric_ratio``; with one signal these are capacities, not the shared rates described below.

One scenario (default ``healthy``: no faults; ``--quick`` 3 min of event time, else 20 min) is
replayed into fresh topics (``bench-tp-<id>.spans`` / ``.metrics``, ``--partitions`` each), then
measured in the same run, on the same topics and broker, in this order:

1. **raw, before**: one plain ``AIOKafkaConsumer`` (no group, all partitions of both topics
   assigned, from the earliest offset, the worker's per-partition fetch size) decodes every
   record with ``pipeline.otlp.decode_spans`` / ``decode_metrics`` (same encoding and ``Limits``
   the worker uses, the Kafka timestamp as reference time), in this process, one thread;
2. **pipeline**: a ``python -m pipeline worker`` subprocess with a fresh application id consumes
   the same topics from the earliest offset, decodes, routes through its internal topics and
   applies every item to its detectors (``pipeline.detectors.BUILTIN``, plus ``--detectors``);
3. **raw, after**: as 1, to show drift (page cache, broker, machine load). Raw figures in the
   JSON are the mean of the two;
4. **raw, one topic alone** (``raw_alone``): as 1 for each topic by itself: the decode capacity
   per signal, which 1 and 3 cannot show for a small signal (see below).

What each number means (``s`` is either signal: spans or metric points):

- ``elapsed_s[s]`` (raw): from the moment ``getmany`` first returned a record of ``s`` to the
  moment the last record of ``s`` was decoded. Both topics are consumed together, interleaved as
  the fetches return them, so this is wall time while the other signal is also being read.
- ``elapsed_s[s]`` (pipeline): from the first /metrics poll that shows
  ``anomaly_pipeline_records_consumed_total{topic=<s topic>} > 0`` to the first poll that shows
  ``anomaly_pipeline_items_detected_total{signal=s}`` equal to the items produced. Worker start-up
  (imports, group join, topic creation) is excluded; polling every ``--poll`` seconds (default
  0.5) bounds the error of each end to one poll interval. Both signals flow concurrently, as in
  raw.
- ``spans_per_s`` / ``metric_points_per_s`` = items of that signal / its own ``elapsed_s``.
- ``items_per_s`` (combined) = (spans + metric points) / (last end - first start over both
  signals): the capacity figure, since per-signal rates share one consumer and one CPU.
- ``ratio`` / ``metric_ratio`` / ``combined_ratio`` = pipeline rate / mean raw rate (1.0 would
  mean the pipeline adds nothing over consume + decode).

Read ``combined_ratio`` (and ``ratio``: spans are ~97% of the items) as the headline. Per-signal
rates of a concurrent pass are rates *while sharing* one consumer and one core with the other
signal, and the metric points are a small signal whose elapsed time depends on when the fetches
happen to return its few records: in raw, if they come in the first fetch, they are decoded in
milliseconds; in the worker, its ingest agent interleaves with the spans agent for most of the
run. So ``metric_points_per_s``, ``raw_metric_points_per_s`` and ``metric_ratio`` are symmetric
by construction but noisy and not capacities; ``raw_alone`` gives the raw capacity.

Also reported:
- ``peak_rss_mb``: the worker's kernel high-water mark of resident memory (``VmHWM`` from
  ``/proc/<pid>/status``) when it is stopped, start-up included.
- ``worker_cpu_s``: the worker's user + system CPU seconds between first consume and done;
  ``worker_cores`` = that / combined elapsed (1.0 = one core busy throughout).
- ``stage_busy_s``: seconds inside each stage's per-record handler
  (``anomaly_pipeline_processing_seconds_sum``, wall time including awaits, so the stages
  overlap), from the worker's last scrape.
- ``first_detect_lag_s``: first consume to the first item detected, per signal: how long the
  detection stage waits for its first routed message.
- ``trace_stage``: the worker's trace-stage counters at the last scrape (when every span had been
  detected): ``samples_derived`` (``anomaly_pipeline_items_derived_total{signal="traces"}``:
  trace samples the assembler derived from completed traces), ``samples_detected``
  (``items_detected{signal="traces"}``: those applied to the bottleneck detector),
  ``tracked_entries`` per detector, the non-zero ``partition_state_evictions`` by
  detector/reason, and per stream the state flushes and table entries written
  (``state_flushes_total``, ``state_writes_total``: each written entry also goes to the
  changelog topic). Traces still open at that moment (the last few seconds of event time, held
  until the watermark passes their quiet period) are not derived yet, so these trail the span
  count; they are not part of the measured rate.
- ``bytes_per_open_trace``, ``bytes_per_operation``, ``max_trace_entry_bytes``: detector state
  memory per open trace and per tracked operation, and the largest changelog entry of a trace at
  the span cap, from ``benchmarks.state_memory`` (pure, ``--quick`` size, run in this process
  after the Kafka passes; see that module for the method and the full-size run).

The last line of stdout is one JSON object with these figures (see ``DESIGN.md``); the table
and progress lines (stderr) come before it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from benchmarks import harness, state_memory
from benchmarks.harness import SIGNALS, RunNames, log
from pipeline import otlp
from pipeline.simulate import PRESETS, build_scenario
from pipeline.simulate.faults import parse_duration
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START

CACHE = harness.ROOT / ".cache" / "bench" / "throughput"
LARGE_RECORD_BYTES = 8 * 1024 * 1024  # the worker's MAX_RECORD_BYTES default
DECODERS = {"spans": otlp.decode_spans, "metrics": otlp.decode_metrics}
METRIC_DERIVED = "anomaly_pipeline_items_derived_total"
METRIC_TRACKED = "anomaly_pipeline_tracked_entries"
METRIC_EVICTIONS = "anomaly_pipeline_partition_state_evictions"
METRIC_FLUSHES = "anomaly_pipeline_state_flushes_total"
METRIC_WRITES = "anomaly_pipeline_state_writes_total"


@dataclass
class Pass:
    """One measured pass over both topics: items per signal and their start/end times."""

    name: str
    items: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    cpu_s: float | None = None
    complete: bool = True
    signals: tuple[str, ...] = SIGNALS  # the signals this pass measures

    def elapsed(self, signal: str | None = None) -> float | None:
        if signal is not None:
            if signal not in self.start or signal not in self.end:
                return None
            return self.end[signal] - self.start[signal]
        if any(s not in self.end for s in self.signals) or not self.start:
            return None
        return (max(self.end[s] for s in self.signals)
                - min(v for k, v in self.start.items() if k in self.signals))

    def rate(self, signal: str | None = None) -> float | None:
        dt = self.elapsed(signal)
        n = (sum(self.items.get(s, 0) for s in self.signals) if signal is None
             else self.items.get(signal, 0))
        return n / dt if dt else None


async def raw_pass(
    bootstrap: str, names: RunNames, encoding: str, label: str,
    signals: tuple[str, ...] = SIGNALS,
) -> Pass:
    """Consume the topics of ``signals`` (default both, together) from the start and decode
    every record (see the module doc)."""
    consumer = AIOKafkaConsumer(
        **harness.client_kwargs(bootstrap), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=harness.WORKER_FETCH_BYTES,
    )
    await consumer.start()
    result = Pass(label, signals=signals)
    try:
        ends = await harness.end_offsets(consumer, [names.topic(s) for s in signals])
        remaining = {tp: n for tp, n in ends.items() if n > 0}
        signal_of = {names.spans: "spans", names.metrics: "metrics"}
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        cpu0 = time.process_time()
        deadline = time.monotonic() + 600
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            got = time.perf_counter()
            for tp, recs in batches.items():
                if not recs:
                    continue
                s = signal_of[tp.topic]
                result.start.setdefault(s, got)
                decode, n = DECODERS[s], 0
                for r in recs:
                    limits = otlp.Limits(reference_time_ns=r.timestamp * 1_000_000)
                    n += len(decode(r.value, encoding, limits).items)
                result.items[s] += n
                result.end[s] = time.perf_counter()
                if recs[-1].offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
        result.cpu_s = time.process_time() - cpu0
        result.complete = not remaining
        for s in SIGNALS:
            if s not in signals:
                result.items.pop(s)
    finally:
        await consumer.stop()
    return result


@dataclass
class PipelineRun:
    measured: Pass
    peak_rss_mb: float
    worker_cpu_s: float | None
    stage_busy_s: dict[str, float]
    startup_s: float | None
    deadletters: float
    exit_code: int | None
    first_detect_lag_s: dict[str, float]
    trace_stage: dict[str, Any]


def trace_stage(samples: harness.Samples) -> dict[str, Any]:
    """The trace stage's counters from one scrape (see the module doc)."""
    evictions = {}
    for (name, labels), v in sorted(samples.items()):
        if name == METRIC_EVICTIONS and v:
            lab = dict(labels)
            evictions[f"{lab.get('detector', '')}/{lab.get('reason', '')}"] = int(v)
    return {
        "samples_derived": int(samples.get_value(METRIC_DERIVED, signal="traces")),
        "samples_detected": int(samples.get_value(harness.METRIC_DETECTED, signal="traces")),
        "tracked_entries": {
            k: int(v) for k, v in sorted(samples.by_label(METRIC_TRACKED, "detector").items())
        },
        "evictions": evictions,
        "state_flushes": {
            k: int(v) for k, v in sorted(samples.by_label(METRIC_FLUSHES, "stream").items())
        },
        "state_writes": {
            k: int(v) for k, v in sorted(samples.by_label(METRIC_WRITES, "stream").items())
        },
    }


async def pipeline_pass(
    bootstrap: str, names: RunNames, produced: harness.Produced, encoding: str,
    detectors: str, timeout_s: float, poll_s: float, signals: tuple[str, ...] = SIGNALS,
) -> PipelineRun:
    env = names.worker_env("w")
    env.update(OTLP_SPANS_ENCODING=encoding, OTLP_METRICS_ENCODING=encoding)
    worker = harness.Worker(env, bootstrap, CACHE / "worker.log", detectors).start()
    log(f"pipeline: worker pid {worker.proc.pid}, log {worker.log_path}")  # type: ignore[union-attr]
    try:
        tl = await harness.wait_until_detected(
            worker, names, produced.items, timeout_s=timeout_s, poll_s=poll_s
        )
    finally:
        code = worker.stop()
    measured = Pass("pipeline", start=dict(tl.first_consumed), end=dict(tl.done),
                    signals=signals)
    for s in SIGNALS:
        measured.items[s] = int(tl.last.get_value(harness.METRIC_DETECTED, signal=s))
    measured.complete = not tl.timed_out
    if tl.timed_out:
        log("pipeline: TIMED OUT: " + harness.progress_line(
            tl.last, names, produced.items, time.perf_counter() - worker.started_at))
    cpu = (
        tl.cpu_at_done - tl.cpu_at_first
        if tl.cpu_at_done is not None and tl.cpu_at_first is not None else None
    )
    first = min(tl.first_consumed.values()) if tl.first_consumed else None
    detect_lag = {
        s: round(tl.first_detected[s] - tl.first_consumed[s], 2)
        for s in SIGNALS if s in tl.first_detected and s in tl.first_consumed
    }
    return PipelineRun(
        measured=measured,
        peak_rss_mb=worker.peak_rss_mb,
        worker_cpu_s=cpu,
        stage_busy_s=harness.stage_seconds(tl.last),
        startup_s=None if first is None else first - worker.started_at,
        deadletters=sum(tl.last.by_label(harness.METRIC_DEADLETTERS, "topic").values()),
        exit_code=code,
        first_detect_lag_s=detect_lag,
        trace_stage=trace_stage(tl.last),
    )


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = harness.bootstrap_servers()
    metrics_only = args.signal == "metrics"
    signals: tuple[str, ...] = ("metrics",) if metrics_only else SIGNALS
    scenario_name = args.scenario or ("leak" if metrics_only else "healthy")
    if metrics_only:
        duration = args.duration or ("30m" if args.quick else None)
    else:
        duration = args.duration or ("3m" if args.quick else "20m")
    names = RunNames.fresh("bench-tp")
    settings: dict[str, Any] = dict(
        duration=duration, start=DEFAULT_REPLAY_START, keying=args.keying,
        encoding=args.encoding, rate=args.rate, spans_topic=names.spans,
        metrics_topic=names.metrics, max_spans_per_record=args.max_spans_per_record,
    )
    if metrics_only:
        try:
            scenario = build_scenario(scenario_name, args.seed, emit_spans=False, **settings)
        except (TypeError, ValueError):  # a simulator without emit_spans: filter the records
            scenario = build_scenario(scenario_name, args.seed, **settings)
    else:
        scenario = build_scenario(scenario_name, args.seed, **settings)
    detector_names = [c.name for c in harness.detector_classes(args.detectors)]
    log(f"throughput: scenario {scenario.name} ({scenario.duration_s:.0f} s of event time, "
        f"{scenario.keying}, {scenario.encoding}), topics {names.tag}.*, broker {bootstrap}, "
        f"detectors: {', '.join(detector_names) or 'none registered'}")
    wall0 = time.perf_counter()
    try:
        # Records of thousands of spans (--max-spans-per-record) are over Kafka's 1 MB default:
        # the topics and the producer take them as a Collector configured for them would.
        big = LARGE_RECORD_BYTES if args.max_spans_per_record else None
        await harness.create_input_topics(bootstrap, names, args.partitions, big)
        produced = await harness.replay(scenario, bootstrap, signals=signals,
                                        max_request_size=big)
        log(f"replay: {produced.total_records:,} records ({produced.bytes / 1e6:,.1f} MB), "
            f"{produced.items['spans']:,} spans, {produced.items['metrics']:,} metric points in "
            f"{produced.seconds:.1f} s")
        raw_before = await raw_pass(bootstrap, names, scenario.encoding, "raw (before)",
                                    signals)
        log(f"raw (before): {raw_before.rate():,.0f} items/s")
        pipe = await pipeline_pass(
            bootstrap, names, produced, scenario.encoding, args.detectors,
            timeout_s=args.timeout or (300 if args.quick else 1800), poll_s=args.poll,
            signals=signals,
        )
        log(f"pipeline: {pipe.measured.rate() or 0:,.0f} items/s")
        raw_after = await raw_pass(bootstrap, names, scenario.encoding, "raw (after)",
                                   signals)
        log(f"raw (after): {raw_after.rate():,.0f} items/s")
        alone = [
            await raw_pass(bootstrap, names, scenario.encoding, f"raw {s} alone", (s,))
            for s in signals
        ]
    finally:
        await harness.cleanup_logged(bootstrap, names.tag)
    log("state memory: benchmarks.state_memory --quick (pure, in this process)")
    mem = state_memory.measure(quick=True, seed=args.seed)
    for p in (raw_before, raw_after):
        if any(p.items.get(s) != produced.items[s] for s in signals):
            log(f"WARNING: {p.name} decoded {p.items}, produced {produced.items}")
            p.complete = False
    pm = pipe.measured
    raw_rates = {
        key: _mean([raw_before.rate(s), raw_after.rate(s)])
        for key, s in (("spans", "spans"), ("metrics", "metrics"), ("items", None))
    }
    combined = pm.elapsed()
    result: dict[str, Any] = {
        "spans_per_s": _r(pm.rate("spans")),
        "raw_spans_per_s": _r(raw_rates["spans"]),
        "ratio": _ratio(pm.rate("spans"), raw_rates["spans"]),
        "metric_points_per_s": _r(pm.rate("metrics")),
        "raw_metric_points_per_s": _r(raw_rates["metrics"]),
        "metric_ratio": _ratio(pm.rate("metrics"), raw_rates["metrics"]),
        "peak_rss_mb": _r(pipe.peak_rss_mb),
        "items_per_s": _r(pm.rate()),
        "raw_items_per_s": _r(raw_rates["items"]),
        "combined_ratio": _ratio(pm.rate(), raw_rates["items"]),
        "spans": produced.items["spans"],
        "metric_points": produced.items["metrics"],
        "records": produced.total_records,
        "span_records": produced.records["spans"],
        "metric_records": produced.records["metrics"],
        "bytes": produced.bytes,
        "signal": args.signal,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "duration_s": scenario.duration_s,
        "keying": scenario.keying,
        "encoding": scenario.encoding,
        "partitions": args.partitions,
        # the worker's settings from the environment that shape the work (defaults otherwise)
        "pipeline_partitions": int(os.environ.get("PIPELINE_PARTITIONS") or 8),
        "otlp_spans_keying": os.environ.get("OTLP_SPANS_KEYING") or "any",
        "detectors": detector_names,
        "quick": bool(args.quick),
        "elapsed_s": {
            p.name: {s: _r(p.elapsed(s), 3) for s in SIGNALS} | {"combined": _r(p.elapsed(), 3)}
            for p in (raw_before, pm, raw_after)
        },
        "raw_runs": {
            p.name: {"spans_per_s": _r(p.rate("spans")),
                     "metric_points_per_s": _r(p.rate("metrics")),
                     "items_per_s": _r(p.rate()), "cpu_s": _r(p.cpu_s, 2)}
            for p in (raw_before, raw_after)
        },
        "worker_cpu_s": _r(pipe.worker_cpu_s, 2),
        "worker_cores": _r(pipe.worker_cpu_s / combined, 2)
        if pipe.worker_cpu_s is not None and combined else None,
        "worker_startup_s": _r(pipe.startup_s, 2),
        "stage_busy_s": {k: _r(v, 2) for k, v in pipe.stage_busy_s.items()},
        "first_detect_lag_s": pipe.first_detect_lag_s,
        "trace_stage": pipe.trace_stage,
        "bytes_per_open_trace": mem["bytes_per_open_trace"],
        "bytes_per_operation": mem["bytes_per_operation"],
        "max_trace_entry_bytes": mem["max_trace_entry_bytes"],
        "deadletters": int(pipe.deadletters),
        "poll_s": args.poll,
        "replay_s": _r(produced.seconds, 2),
        "wall_s": _r(time.perf_counter() - wall0, 1),
        "complete": all(p.complete for p in (raw_before, pm, raw_after)),
    }
    by_signal = dict(zip(signals, alone, strict=True))
    result["raw_alone"] = {
        "spans_per_s": _r(by_signal["spans"].rate("spans")) if "spans" in by_signal else None,
        "metric_points_per_s": _r(by_signal["metrics"].rate("metrics")),
        "elapsed_s": {s: _r(p.elapsed(s), 3) for s, p in by_signal.items()},
    }
    print(table(result, [raw_before, pm, raw_after], by_signal))
    return result


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(r: dict[str, Any], passes: list[Pass], alone: dict[str, Pass]) -> str:
    ts = r["trace_stage"]
    lines = [
        f"Throughput ({'metric points only' if r['signal'] == 'metrics' else 'spans + metrics'})"
        f": scenario {r['scenario']} (seed {r['seed']}, {r['duration_s']:.0f} s event "
        f"time, {r['keying']}, {r['encoding']}, {r['partitions']} partitions), detectors: "
        f"{', '.join(r['detectors']) or 'none registered'}",
        f"  input: {r['records']:,} records ({r['span_records']:,} span, {r['metric_records']:,} "
        f"metric; {r['bytes'] / 1e6:,.1f} MB), {r['spans']:,} spans, {r['metric_points']:,} "
        "metric points",
        "",
        f"  {'pass':14s} {'spans/s':>10s} {'span s':>8s} {'points/s':>10s} {'point s':>8s} "
        f"{'items/s':>10s} {'total s':>8s}",
    ]
    for p in passes:
        lines.append(
            f"  {p.name:14s} {_fmt(p.rate('spans')):>10s} {_fmt(p.elapsed('spans'), '.2f'):>8s} "
            f"{_fmt(p.rate('metrics')):>10s} {_fmt(p.elapsed('metrics'), '.2f'):>8s} "
            f"{_fmt(p.rate()):>10s} {_fmt(p.elapsed(), '.2f'):>8s}"
            + ("" if p.complete else "  INCOMPLETE")
        )
    lines += [
        f"  {'raw (mean)':14s} {_fmt(r['raw_spans_per_s']):>10s} {'':>8s} "
        f"{_fmt(r['raw_metric_points_per_s']):>10s} {'':>8s} {_fmt(r['raw_items_per_s']):>10s}",
        f"  {'pipeline/raw':14s} {_fmt(r['ratio'], '.3f'):>10s} {'':>8s} "
        f"{_fmt(r['metric_ratio'], '.3f'):>10s} {'':>8s} {_fmt(r['combined_ratio'], '.3f'):>10s}",
        f"  {'raw, 1 topic':14s} "
        f"{_fmt(alone['spans'].rate('spans') if 'spans' in alone else None):>10s} "
        f"{_fmt(alone['spans'].elapsed('spans') if 'spans' in alone else None, '.2f'):>8s} "
        f"{_fmt(alone['metrics'].rate('metrics')):>10s} "
        f"{_fmt(alone['metrics'].elapsed('metrics'), '.2f'):>8s}   (each topic alone: decode "
        "capacity)",
        "",
        f"  worker: peak RSS {_fmt(r['peak_rss_mb'], '.1f')} MB, CPU "
        f"{_fmt(r['worker_cpu_s'], '.1f')} s over the measured interval "
        f"({_fmt(r['worker_cores'], '.2f')} cores), start-up to first consume "
        f"{_fmt(r['worker_startup_s'], '.1f')} s, dead letters {r['deadletters']}",
        "  first consume -> first item detected (s): "
        + (", ".join(f"{k} {v:.2f}" for k, v in r["first_detect_lag_s"].items()) or "-"),
        "  worker stage handler time (s): "
        + (", ".join(f"{k} {v:.2f}" for k, v in r["stage_busy_s"].items()) or "-"),
        f"  trace stage at the last scrape: {ts['samples_derived']:,} trace samples derived, "
        f"{ts['samples_detected']:,} detected; tracked "
        + (", ".join(f"{k} {v:,}" for k, v in ts["tracked_entries"].items()) or "-")
        + "; evictions "
        + (", ".join(f"{k} {v:,}" for k, v in ts["evictions"].items()) or "none"),
        "  state table entries written (flushes): "
        + (", ".join(f"{k} {v:,} ({ts['state_flushes'].get(k, 0):,})"
                     for k, v in ts["state_writes"].items()) or "-"),
        f"  state memory (state_memory --quick): {r['bytes_per_open_trace']:,.0f} B per open "
        f"trace, {r['bytes_per_operation']:,.0f} B per operation (60-window baseline); largest "
        f"trace entry at 1000 spans {r['max_trace_entry_bytes']:,} B",
        f"  replay {r['replay_s']:.1f} s; whole run {r['wall_s']:.1f} s; poll interval "
        f"{r['poll_s']} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI size: 3 min of event time")
    parser.add_argument("--scenario", choices=list(PRESETS),
                        help="simulator preset (default healthy; --signal metrics: leak)")
    parser.add_argument("--duration", help="event time to replay, e.g. 10m (default 20m, quick "
                        "3m; --signal metrics: the preset's, quick 30m)")
    parser.add_argument("--signal", choices=("all", "metrics"), default="all",
                        help="all: spans and metric points together (default); metrics: metric "
                        "points only, detectors on vs raw consume + decode")
    parser.add_argument("--keying", choices=("keyed", "unkeyed"), default="keyed",
                        help="span records keyed by trace id or unkeyed batches (default keyed)")
    parser.add_argument("--encoding", choices=("otlp_proto", "otlp_json"), default="otlp_proto")
    parser.add_argument("--max-spans-per-record", type=int,
                        help="unkeyed: spans per record at most (default the scenario's, 1000; "
                             "a batch processor sends up to 8192)")
    parser.add_argument("--rate", type=float, help="entry requests/s (default: the scenario's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8,
                        help="partitions of the input topics (default 8)")
    parser.add_argument("--detectors", default="",
                        help="extra detectors for the worker (PIPELINE_DETECTORS syntax)")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between /metrics polls (default 0.5: each poll renders "
                        "every series; at 0.1 s the polls took ~7%% of the worker's CPU)")
    parser.add_argument("--timeout", type=float,
                        help="seconds to wait for the worker (default 1800; quick 300)")
    args = parser.parse_args(argv)
    try:
        parse_duration(args.duration or "1s")
    except ValueError as exc:
        parser.error(str(exc))
    CACHE.mkdir(parents=True, exist_ok=True)
    result = harness.run_main("throughput", run(args))
    (CACHE / "result.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result).decode(), flush=True)
    if not result["complete"]:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])


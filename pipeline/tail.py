"""``python -m pipeline tail``: show findings (or dead letters) as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import urllib.request
import uuid
from datetime import datetime

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from pipeline.settings import Settings
from pipeline.topics import ensure_topics

COLOURS = {"firing": "\033[31m", "resolved": "\033[32m"}
RESET = "\033[0m"


def format_finding(doc: dict, colour: bool = False) -> str:
    """One readable block per finding: status, kind, entity, summary, key evidence, next step."""
    status = doc.get("status", "?")
    at = doc.get("resolved_at") if status == "resolved" else doc.get("detected_at")
    head = (
        f"[{at}] {status.upper():8} {doc.get('kind')} "
        f"({doc.get('severity')})"
    )
    if colour:
        head = COLOURS.get(status, "") + head + RESET
    entity = ", ".join(f"{k}={v}" for k, v in (doc.get("entity") or {}).items())
    lines = [head, f"    {entity}", f"    {doc.get('summary')}"]
    evidence = doc.get("evidence") or {}
    for key in ("baseline", "observed"):
        if key in evidence:
            lines.append(f"    {key}: {orjson.dumps(evidence[key]).decode()}")
    if evidence.get("exemplar_trace_ids"):
        lines.append(f"    exemplar traces: {', '.join(evidence['exemplar_trace_ids'][:3])}")
    for step in (doc.get("next_steps") or [])[:2]:
        lines.append(f"    next: {step}")
    if doc.get("runbook_url"):
        lines.append(f"    runbook: {doc['runbook_url']}")
    return "\n".join(lines)


def format_incident(doc: dict, colour: bool = False) -> str:
    """One block per incident record: status, root, summary, members, the first next step."""
    status = doc.get("status", "?")
    if status == "merged":
        return f"INCIDENT {doc.get('id')} merged into {doc.get('merged_into')}"
    at = doc.get("resolved_at") if status == "resolved" else doc.get("updated_at")
    root = doc.get("root") or {}
    head = (f"[{at}] {status.upper():8} INCIDENT ({doc.get('severity')}) root "
            f"{root.get('type')}:{root.get('name')} ({root.get('kind')})")
    if colour:
        head = COLOURS.get(status, "") + head + RESET
    lines = [head, f"    {doc.get('summary')}"]
    for m in (doc.get("members") or [])[:6]:
        entity = ", ".join(f"{k}={v}" for k, v in (m.get("entity") or {}).items())
        lines.append(f"    member: {m.get('kind')} {m.get('status')} {entity}")
    for step in (doc.get("next_steps") or [])[:1]:
        lines.append(f"    next: {step}")
    return "\n".join(lines)


def format_deadletter(headers: list[tuple[str, bytes]], value: bytes | None) -> str:
    h = {k: v.decode(errors="replace") for k, v in headers}
    size = 0 if value is None else len(value)
    return (
        f"{h.get('dlq.source.topic')}[{h.get('dlq.source.partition')}]@"
        f"{h.get('dlq.source.offset')} {h.get('dlq.error.reason')}: "
        f"{h.get('dlq.error.message')} ({size} bytes)"
    )


def worker_status(metrics_url: str) -> str:
    """One line of a worker's health from its /metrics, for people watching ``make run``: what
    it analysed, how far behind it is (records not yet read, and each stream's event-time
    lag), and whether the input has gone quiet or is behind the saved state."""

    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as r:
            text = r.read().decode()
    except OSError as exc:
        return f"worker metrics not reachable at {metrics_url}: {exc}"
    return status_line(text)


def status_line(text: str) -> str:
    """``worker_status`` of a /metrics page's text."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    by_stream: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = sample.name
            if "stream" in sample.labels and fam.type == "gauge":
                by_stream.setdefault(key, {})[sample.labels["stream"]] = sample.value
            if sample.name.endswith("_total") or fam.type == "gauge":
                if "signal" in sample.labels:
                    key += ":" + sample.labels["signal"]
                totals[key] = totals.get(key, 0.0) + sample.value
    p = "anomaly_pipeline_"

    def get(name: str) -> int:
        return int(totals.get(p + name, 0))

    parts = [
        f"status: {get('items_detected_total:spans')} spans, "
        f"{get('items_detected_total:metrics')} metric points analysed; "
        f"{get('deadletter_records_total')} dead letters; {get('findings_total')} findings "
        f"published, {get('active_findings')} active",
        f"{get('consumer_lag_records')} records behind",
    ]
    lags = by_stream.get(p + "event_time_lag_seconds", {})
    if lags:
        parts.append("event-time lag " + ", ".join(
            f"{stream} {_duration(lag)}" for stream, lag in sorted(lags.items())))
    # The input streams' idleness: the trace stage follows the span stage's watermark and is
    # never told it is idle, so it would hold the line back for ever.
    idle = {k: v for k, v in by_stream.get(p + "input_idle_seconds", {}).items()
            if k in INPUT_STREAMS}
    ended = by_stream.get(p + "end_of_input_partitions", {})
    if idle and min(idle.values()) > 0:
        quiet = f"input quiet for {_duration(min(idle.values()))}"
        if any(ended.values()):
            quiet += " (traffic has ended: the last windows are closed)"
        parts.append(quiet)
    behind = max(by_stream.get(p + "input_behind_state_seconds", {}).values(), default=0.0)
    if behind > 0:
        parts.append(f"INPUT {_duration(behind)} BEHIND THE SAVED STATE: records are late "
                     "(start clean: make kafka-reset)")
    return "; ".join(parts)


INPUT_STREAMS = ("spans", "metrics")


def _duration(seconds: float) -> str:
    """
    >>> _duration(4.2), _duration(95), _duration(7300)
    ('4.2s', '1m35s', '2h01m')
    """
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


async def tail(settings: Settings, args: argparse.Namespace) -> None:
    """Print the topic's records on stdout, one finding block (or, with ``--json``, one JSON
    line) each; the banner and the worker's status lines go to stderr, so that stdout is only
    records (``| jq`` works)."""
    # Create the output topics as the worker would (a compacted findings topic), rather than
    # let this consumer's metadata request auto-create them with broker defaults.
    await ensure_topics(settings, internal=False)
    topic = settings.deadletter_topic if args.deadletters else settings.findings_topic
    topics = [topic]
    if args.incidents and not args.deadletters:
        topics.append(settings.incidents_topic)
        topic = f"{topic} and {settings.incidents_topic}"
    consumer = AIOKafkaConsumer(
        *topics,
        group_id=None,
        client_id=f"pipeline-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        # `make run` starts tail beside a new worker: see the findings topic soon after the
        # worker creates it, not at the default 5-minute metadata refresh.
        metadata_max_age_ms=5000,
        **settings.aiokafka_kwargs(),
    )
    await consumer.start()
    colour = sys.stdout.isatty() and not args.json
    seen = 0
    order = " in event-time order" if args.time_order else ""
    print(f"tailing {topic} on {settings.kafka_bootstrap_servers}{order} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)

    def show(r: ConsumerRecord) -> bool:
        """Print one record; whether ``--max`` is reached."""
        nonlocal seen
        if args.json:
            print(r.value.decode() if r.value else "null", flush=True)
        elif args.deadletters:
            print(format_deadletter(list(r.headers or []), r.value), flush=True)
        else:
            doc = _finding_doc(r)
            if doc is None:
                print(f"(not a finding at offset {r.offset}: {r.value!r:.80})", file=sys.stderr)
                return False
            if r.topic == settings.incidents_topic:
                # An incident of one finding says what the finding said: shown once it groups
                # two or more (and to its end), or when it was merged into another.
                if len(doc.get("members") or ()) < 2 and doc.get("status") != "merged":
                    return False
                print(format_incident(doc, colour) + "\n", flush=True)
            else:
                print(format_finding(doc, colour) + "\n", flush=True)
        seen += 1
        return bool(args.max and seen >= args.max)

    next_status = time.monotonic() + args.status_every
    try:
        if args.time_order:  # (with --from-beginning: the command line checks)
            backlog, newer = await _read_backlog(consumer)
            for r in sorted(backlog, key=event_time_key) + newer:
                if show(r):
                    return
        idle_s = 0
        while True:
            if args.metrics_url and time.monotonic() >= next_status:
                print(worker_status(args.metrics_url), file=sys.stderr, flush=True)
                next_status = time.monotonic() + args.status_every
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                idle_s += 1
                if args.timeout and idle_s >= args.timeout:
                    return
                continue
            idle_s = 0
            for records in batches.values():
                for r in records:
                    if show(r):
                        return
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()


def _finding_doc(r: ConsumerRecord) -> dict | None:
    try:
        doc = orjson.loads(r.value) if r.value else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def event_time_key(r: ConsumerRecord) -> tuple[int, int, int]:
    """Sort key of a record in ``--time-order``: the event time of the change it reports (when a
    finding was detected, or resolved, as its head line shows), else the Kafka record's
    timestamp (dead letters, anything that is not a finding); then partition and offset.

    >>> from aiokafka.structs import ConsumerRecord as R
    >>> def rec(p, o, value, ts=0):
    ...     return R("t", p, o, ts, 0, None, value, None, 0, len(value), [])
    >>> a = rec(0, 0, b'{"status": "firing", "detected_at": "2026-01-05T08:12:00.000Z"}')
    >>> b = rec(1, 0, b'{"status": "resolved", "resolved_at": "2026-01-05T08:10:00.000Z"}')
    >>> [r.partition for r in sorted([a, b], key=event_time_key)]
    [1, 0]
    """
    doc = _finding_doc(r)
    at = None
    if doc is not None:
        at = doc.get("resolved_at") if doc.get("status") == "resolved" else (
            doc.get("detected_at") or doc.get("updated_at"))  # a finding, else an incident
    ms = r.timestamp
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            ms = int(datetime.fromisoformat(at).timestamp() * 1000)
    return ms, r.partition, r.offset


async def _read_backlog(
    consumer: AIOKafkaConsumer,
) -> tuple[list[ConsumerRecord], list[ConsumerRecord]]:
    """Everything in the assigned partitions up to their end offsets as of now (to be sorted),
    and the records past those ends fetched meanwhile (in arrival order)."""
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    ends = await consumer.end_offsets(list(consumer.assignment()))
    backlog: list[ConsumerRecord] = []
    newer: list[ConsumerRecord] = []
    while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
            for r in records:
                (backlog if r.offset < ends.get(tp, 0) else newer).append(r)
    return backlog, newer

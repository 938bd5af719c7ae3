"""``python -m pipeline tail``: show findings (or dead letters) as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.settings import Settings

COLOURS = {"firing": "\033[31m", "resolved": "\033[32m"}
RESET = "\033[0m"


def format_finding(doc: dict, colour: bool = False) -> str:
    """One readable block per finding: status, kind, entity, summary, key evidence, next step."""
    status = doc.get("status", "?")
    head = f"[{doc.get('detected_at')}] {status.upper():8} {doc.get('kind')} ({doc.get('severity')})"
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
    return "\n".join(lines)


def format_deadletter(headers: list[tuple[str, bytes]], value: bytes | None) -> str:
    h = {k: v.decode(errors="replace") for k, v in headers}
    size = 0 if value is None else len(value)
    return (
        f"{h.get('dlq.source.topic')}[{h.get('dlq.source.partition')}]@"
        f"{h.get('dlq.source.offset')} {h.get('dlq.error.reason')}: "
        f"{h.get('dlq.error.message')} ({size} bytes)"
    )


async def tail(settings: Settings, args: argparse.Namespace) -> None:
    topic = settings.deadletter_topic if args.deadletters else settings.findings_topic
    consumer = AIOKafkaConsumer(
        topic,
        group_id=None,
        client_id=f"pipeline-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        **settings.aiokafka_kwargs(),
    )
    await consumer.start()
    colour = sys.stdout.isatty() and not args.json
    seen = idle_s = 0
    print(f"tailing {topic} on {settings.kafka_bootstrap_servers} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                idle_s += 1
                if args.timeout and idle_s >= args.timeout:
                    return
                continue
            idle_s = 0
            for records in batches.values():
                for r in records:
                    if args.json:
                        print(r.value.decode() if r.value else "null", flush=True)
                    elif args.deadletters:
                        print(format_deadletter(list(r.headers or []), r.value), flush=True)
                    else:
                        print(format_finding(orjson.loads(r.value), colour) + "\n", flush=True)
                    seen += 1
                    if args.max and seen >= args.max:
                        return
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()

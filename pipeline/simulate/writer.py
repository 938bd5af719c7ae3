"""Produce simulated records to Kafka with aiokafka: the only Kafka-aware module of the simulator.

``live`` paces records so that event time follows the wall clock (times ``speed``); ``replay``
sends as fast as the broker accepts, with backpressure from the producer's buffer. Every record
carries its event time as the Kafka timestamp. Topics are not created here: a broker with
auto-creation creates them on first use, and the first sends wait and retry while it does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

from pipeline.simulate.otlp_encode import SimRecord
from pipeline.simulate.timefmt import rfc3339

MAX_IN_FLIGHT = 20_000  # unacknowledged sends before we wait for the oldest
FIRST_SEND_RETRIES = 10  # a topic being auto-created may be briefly unknown or leaderless


@dataclass
class WriteStats:
    records: int = 0
    spans: int = 0
    points: int = 0
    bytes: int = 0
    seconds: float = 0.0
    last_event_ms: int = 0

    def line(self) -> str:
        rate = self.spans / self.seconds if self.seconds else 0.0
        return (
            f"{self.records:,} records ({self.bytes / 1e6:,.1f} MB), {self.spans:,} spans, "
            f"{self.points:,} metric points in {self.seconds:,.1f} s ({rate:,.0f} spans/s)"
        )


async def write_records(
    records: Iterable[SimRecord],
    client_kwargs: dict[str, Any],
    *,
    mode: str = "replay",
    speed: float = 1.0,
    spans_topic: str = "otlp_spans",
    progress: Callable[[str], None] = print,
    progress_every_s: float = 5.0,
) -> WriteStats:
    """Send ``records`` in order; returns counts once every record is acknowledged."""
    if mode not in ("live", "replay"):
        raise ValueError(f"mode must be live or replay, got {mode!r}")
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    producer = AIOKafkaProducer(
        **client_kwargs,
        linger_ms=20,
        max_batch_size=1_000_000,
        compression_type=None,
        acks=1,
        request_timeout_ms=30_000,
    )
    await producer.start()
    stats = WriteStats()
    in_flight: deque[asyncio.Future[Any]] = deque()
    known_topics: set[str] = set()
    wall0 = time.monotonic()
    event0: int | None = None
    next_progress = wall0 + progress_every_s
    try:
        for i, rec in enumerate(records):
            if event0 is None:
                event0 = rec.timestamp_ms
            if mode == "live":
                due = wall0 + (rec.timestamp_ms - event0) / 1000.0 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 256 == 0:
                await asyncio.sleep(0)  # let the producer's sender run between generation bursts
            if rec.topic in known_topics:
                fut = await producer.send(
                    rec.topic, rec.value, key=rec.key, timestamp_ms=rec.timestamp_ms
                )
            else:
                fut = await _first_send(producer, rec, progress)
                known_topics.add(rec.topic)
            in_flight.append(fut)
            while len(in_flight) > MAX_IN_FLIGHT:
                await in_flight.popleft()
            stats.records += 1
            stats.bytes += len(rec.value)
            if rec.topic == spans_topic:
                stats.spans += rec.items
            else:
                stats.points += rec.items
            stats.last_event_ms = rec.timestamp_ms
            now = time.monotonic()
            if now >= next_progress:
                stats.seconds = now - wall0
                progress(
                    f"simulate: event time {rfc3339(rec.timestamp_ms * 1_000_000)} | "
                    + stats.line()
                )
                next_progress = now + progress_every_s
        await producer.flush()
        for fut in in_flight:
            await fut
    finally:
        await producer.stop()
    stats.seconds = time.monotonic() - wall0
    return stats


async def _first_send(
    producer: AIOKafkaProducer, rec: SimRecord, progress: Callable[[str], None]
) -> asyncio.Future[Any]:
    """Send the first record of a topic, retrying while the broker auto-creates the topic."""
    delay = 0.5
    for attempt in range(FIRST_SEND_RETRIES):
        try:
            fut = await producer.send(
                rec.topic, rec.value, key=rec.key, timestamp_ms=rec.timestamp_ms
            )
            await fut
            return fut
        except (KafkaTimeoutError, UnknownTopicOrPartitionError) as exc:
            if attempt == FIRST_SEND_RETRIES - 1:
                raise
            progress(
                f"simulate: topic {rec.topic!r} not ready ({type(exc).__name__}); "
                f"retrying in {delay:.1f} s"
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise KafkaError(f"could not send to {rec.topic!r}")  # unreachable; keeps type checkers calm

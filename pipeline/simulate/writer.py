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
    """What the broker acknowledged (``records``, ``spans``, ``points``, ``bytes``), and the
    records it did not take (``failed``: a send that failed for good, e.g. the broker down for
    longer than the producer's request timeout)."""

    records: int = 0
    spans: int = 0
    points: int = 0
    bytes: int = 0
    seconds: float = 0.0
    last_event_ms: int = 0
    failed: int = 0
    first_error: str = ""

    def line(self) -> str:
        rate = self.spans / self.seconds if self.seconds else 0.0
        lost = (f"; {self.failed:,} records NOT written ({self.first_error})"
                if self.failed else "")
        return (
            f"{self.records:,} records ({self.bytes / 1e6:,.1f} MB), {self.spans:,} spans, "
            f"{self.points:,} metric points in {self.seconds:,.1f} s ({rate:,.0f} spans/s)"
            + lost
        )

    async def settle(self, sent: tuple[asyncio.Future[Any], int, int, int]) -> None:
        """Count one send once the broker has answered it."""
        fut, size, spans, points = sent
        try:
            await fut
        except KafkaError as exc:
            self.failed += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
            return
        self.records += 1
        self.bytes += size
        self.spans += spans
        self.points += points


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
    """Send ``records`` in order; returns, once the broker has answered every send, what it
    acknowledged and how many it did not take (a send that fails is counted, not raised)."""
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
    in_flight: deque[tuple[asyncio.Future[Any], int, int, int]] = deque()
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
                try:
                    fut = await producer.send(
                        rec.topic, rec.value, key=rec.key, timestamp_ms=rec.timestamp_ms
                    )
                except KafkaError as exc:  # refused before sending (no metadata: broker down)
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_exception(exc)
            else:
                fut = await _first_send(producer, rec, progress)
                known_topics.add(rec.topic)
            spans = rec.items if rec.topic == spans_topic else 0
            in_flight.append((fut, len(rec.value), spans, rec.items - spans))
            while len(in_flight) > MAX_IN_FLIGHT or (in_flight and in_flight[0][0].done()):
                await stats.settle(in_flight.popleft())
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
        while in_flight:
            await stats.settle(in_flight.popleft())
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

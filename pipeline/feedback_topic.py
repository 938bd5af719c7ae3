"""The feedback topic on Kafka: follow it whole (every worker), write a word. (Reading it to
its end, for the ``feedback`` command and the accuracy benchmark: ``topics.read_all``.) The
words themselves are in ``pipeline.feedback`` (pure).

Every worker reads every partition from the beginning, with no consumer group and no commits,
and keeps following: each worker publishes findings of its own partitions, so each needs every
word, within seconds of its writing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.feedback import Word
from pipeline.settings import Settings
from pipeline.topics import plain_consumer, wait_partitions

log = logging.getLogger("pipeline.feedback")
POLL_MS = 500
RETRY_S = 5.0


async def follow(settings: Settings,
                 apply: Callable[[list[ConsumerRecord]], Awaitable[None]],
                 caught_up: Callable[[], None]) -> None:
    """Read ``FEEDBACK_TOPIC`` from the beginning and keep following it, handing each batch
    of records (in offset order per partition) to ``apply``; ``caught_up`` is called once the
    end offsets seen at the start have been read. Runs until cancelled: a failure starts a
    new consumer after ``RETRY_S`` at the offsets already applied (nothing read twice)."""
    topic = settings.feedback_topic
    positions: dict[TopicPartition, int] = {}
    told = False
    while True:
        consumer = plain_consumer(settings, "feedback")
        try:
            await consumer.start()
            parts = await wait_partitions(consumer, topic, 30.0)
            if not parts:
                raise RuntimeError(f"topic {topic} not found")
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            for tp in tps:
                if tp in positions:
                    consumer.seek(tp, positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            ends = await consumer.end_offsets(tps) if not told else {}
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=1000)
                records = [r for tp in sorted(batches) for r in batches[tp]]
                if records:
                    await apply(records)
                    for r in records:
                        positions[TopicPartition(r.topic, r.partition)] = r.offset + 1
                if not told:
                    here = {tp: await consumer.position(tp) for tp in tps}
                    if all(here[tp] >= ends.get(tp, 0) for tp in tps):
                        told = True
                        caught_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - follow again; the words held stay
            log.warning("reading the feedback topic %s failed (%s: %s); trying again in "
                        "%.0f s", topic, type(exc).__name__, exc, RETRY_S)
            await asyncio.sleep(RETRY_S)
        finally:
            await consumer.stop()


async def write(settings: Settings, key: str, word: Word | None) -> None:
    """Write a word (or a tombstone under ``key``), acknowledged by every in-sync replica."""
    producer = AIOKafkaProducer(acks="all", client_id=f"pipeline-feedback-{uuid.uuid4().hex[:8]}",
                                **settings.aiokafka_kwargs())
    try:
        await producer.start()
        await producer.send_and_wait(settings.feedback_topic, key=key.encode(),
                                     value=word.to_json() if word is not None else None)
    finally:
        await producer.stop()

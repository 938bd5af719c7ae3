"""What ingest does when the broker refuses a source record's routed messages: retry without
counting on an outage, dead-letter at once what can never be sent, and dead-letter after a few
tries what keeps failing for another reason (stub consumer and futures, no Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    UnknownError,
)
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.ingest import (
    MAX_ROUTE_ATTEMPTS,
    Ingest,
    Pending,
    RouteError,
    route_decision,
)
from pipeline.settings import Settings
from pipeline.sinks.metrics import PipelineMetrics


@pytest.mark.parametrize("error", [KafkaConnectionError(), KafkaTimeoutError()])
def test_an_outage_is_retried_without_counting(error: BaseException) -> None:
    assert route_decision(error, 0) == ("retry", 0)
    assert route_decision(error, MAX_ROUTE_ATTEMPTS - 1) == ("retry", MAX_ROUTE_ATTEMPTS - 1)


def test_a_message_the_broker_can_never_take_is_dead_lettered_at_once() -> None:
    assert route_decision(MessageSizeTooLargeError(), 0) == ("dead_letter", 0)


def test_other_failures_are_retried_until_the_limit() -> None:
    counts = []
    failures = 0
    for _ in range(MAX_ROUTE_ATTEMPTS):
        action, failures = route_decision(UnknownError(), failures)
        counts.append(action)
    assert counts == ["retry"] * (MAX_ROUTE_ATTEMPTS - 1) + ["dead_letter"]


class Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


def record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("otlp_spans", 0, offset, 0, 0, None, b"x", None, 0, 1, [])


def settled(result: Any) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
    return fut


async def commit_once(ingest: Ingest, results: dict[int, list[Any]],
                      dead: list[tuple[int, str, bool]]) -> Consumer:
    """One batch: each source offset's routed messages settle with ``results[offset]``."""
    pending = [Pending(settled(r), record(off), f"otlp_spans:0:{off}")
               for off, rs in results.items() for r in rs]
    consumer = Consumer()
    offsets = {TopicPartition("otlp_spans", 0): max(results) + 1}
    await ingest._commit(consumer, pending, offsets)  # type: ignore[arg-type]
    return consumer


@pytest.fixture
def ingest(monkeypatch: pytest.MonkeyPatch) -> tuple[Ingest, list[tuple[int, str, bool]]]:
    ing = Ingest(Settings.from_env({}), PipelineMetrics(CollectorRegistry()),
                 {"spans": "r_spans", "metrics": "r_metrics"})
    dead: list[tuple[int, str, bool]] = []

    async def dead_letter(rec: ConsumerRecord, error: BaseException, reason: str,
                          pending: list[Pending], rejected: int | None = None,
                          partial: bool = False) -> None:
        dead.append((rec.offset, reason, partial))

    monkeypatch.setattr(ing, "_dead_letter", dead_letter)
    return ing, dead


def test_a_long_outage_dead_letters_nothing(ingest: tuple[Ingest, list[Any]]) -> None:
    ing, dead = ingest

    async def run() -> None:
        for _ in range(MAX_ROUTE_ATTEMPTS * 3):
            with pytest.raises(RouteError):
                await commit_once(ing, {7: [KafkaConnectionError()]}, dead)
        # What re-reading the record after the restart consults: no failure counted.
        assert ing._attempts.get("otlp_spans:0:7", 0) == 0
        consumer = await commit_once(ing, {7: [None]}, dead)
        assert consumer.commits == [{TopicPartition("otlp_spans", 0): 8}]

    asyncio.run(run())
    assert dead == []


def test_a_refused_chunk_dead_letters_its_record_marked_partial_and_commits(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    ing, dead = ingest

    async def run() -> Consumer:
        # offset 3: one chunk taken, one over the broker's limit; offset 4: all refused.
        return await commit_once(ing, {3: [None, MessageSizeTooLargeError()],
                                       4: [MessageSizeTooLargeError()]}, dead)

    consumer = asyncio.run(run())
    assert dead == [(3, "unroutable", True), (4, "unroutable", False)]
    assert consumer.commits == [{TopicPartition("otlp_spans", 0): 5}]


def test_repeated_unknown_failures_dead_letter_after_the_limit_and_success_forgives(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    ing, dead = ingest

    async def run() -> None:
        for _ in range(MAX_ROUTE_ATTEMPTS - 1):
            with pytest.raises(RouteError):
                await commit_once(ing, {5: [UnknownError()]}, dead)
        await commit_once(ing, {5: [None]}, dead)  # delivered in the end: forgiven
        for _ in range(MAX_ROUTE_ATTEMPTS - 1):
            with pytest.raises(RouteError):
                await commit_once(ing, {5: [UnknownError()]}, dead)
        assert dead == []
        await commit_once(ing, {5: [UnknownError()]}, dead)

    asyncio.run(run())
    assert dead == [(5, "unroutable", False)]

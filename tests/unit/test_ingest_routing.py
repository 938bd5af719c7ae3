"""What ingest does when the broker refuses a source record's routed messages: retry without
counting on an outage, dead-letter at once what can never be sent, and dead-letter after a few
tries what keeps failing for another reason; how a read batch is packed into routed messages
(stub consumer, producer and futures, no Kafka)."""

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
    Outgoing,
    Pending,
    RouteError,
    route_decision,
)
from pipeline.records import Resource, Span, decode_spans_wire, encode_batch
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

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("otlp_spans", 0)}


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
    pending = [Pending(settled(r), [(record(off), f"otlp_spans:0:{off}")])
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


class Producer:
    """Takes every message (a settled future); remembers what went where."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    async def send(self, topic: str, value: bytes, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, value))
        return settled(None)


def outgoing(offset: int, n: int = 3) -> Outgoing:
    res = Resource("svc", "svc-1", "h", "", {})
    spans = [Span(f"{offset:016x}{i:016x}", f"{i + 1:016x}", "", "op", 2, 10**18 + i,
                  10**18 + i + 5, 0, {}, res) for i in range(n)]
    return Outgoing(record(offset), f"otlp_spans:0:{offset}",
                    part=(spans, ("otlp_spans", 0, offset, 0), 10**18 + offset), before=0)


def test_a_read_batch_goes_as_one_message_per_partition_split_under_the_limit(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    ing, _ = ingest
    ing.producer = producer = Producer()  # type: ignore[assignment]
    ing.input_partitions = {"otlp_spans": 4}
    for off in range(10):
        ing._outbox.setdefault(("r_spans", off % 2), []).append(outgoing(off))
    pending: list[Pending] = []
    asyncio.run(ing._send_outbox(pending))
    assert [(t, p) for t, p, _ in producer.sent] == [("r_spans", 0), ("r_spans", 1)]
    first = decode_spans_wire(producer.sent[0][2])
    assert first.segments is not None
    assert [s.source for s in first.segments] == [("otlp_spans", 0, o, 0) for o in (0, 2, 4, 6, 8)]
    assert first.partitions == {"otlp_spans": 4} and len(first.items) == 15
    assert [len(p.records) for p in pending] == [5, 5]

    # Under a small limit the same records go in more messages, in order, none over it.
    producer.sent.clear()
    one = len(producer.sent)
    limit = len(encode_batch([outgoing(0).part, outgoing(2).part], {"otlp_spans": 4})) + 10
    ing.limits = {"r_spans": limit}
    for off in range(0, 10, 2):
        ing._outbox.setdefault(("r_spans", 0), []).append(outgoing(off))
    asyncio.run(ing._send_outbox([]))
    sent = [decode_spans_wire(v) for _, _, v in producer.sent[one:]]
    assert len(sent) > 1 and all(len(v) <= limit for _, _, v in producer.sent)
    assert [s.source[2] for m in sent for s in m.segments or ()] == [0, 2, 4, 6, 8]


def test_a_batch_message_refused_is_retried_with_each_record_alone(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    ing, dead = ingest

    async def run() -> Consumer:
        shared = Pending(settled(MessageSizeTooLargeError()),
                         [(record(3), "otlp_spans:0:3"), (record(4), "otlp_spans:0:4")])
        with pytest.raises(RouteError):
            await ing._commit(Consumer(), [shared], {})  # type: ignore[arg-type]
        assert ing._alone and dead == []  # nobody blamed yet: each record goes alone next
        consumer = Consumer()
        await ing._commit(consumer, [  # type: ignore[arg-type]
            Pending(settled(None), [(record(3), "otlp_spans:0:3")]),
            Pending(settled(MessageSizeTooLargeError()), [(record(4), "otlp_spans:0:4")])],
            {TopicPartition("otlp_spans", 0): 5})
        return consumer

    consumer = asyncio.run(run())
    assert dead == [(4, "unroutable", False)]  # alone, the one to blame is found
    assert consumer.commits == [{TopicPartition("otlp_spans", 0): 5}] and not ing._alone


def test_a_rebalance_hands_over_the_revoked_partitions_work_committed(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    """Before partitions are revoked, what was read is sent, waited for and committed; a
    hand-over that cannot finish makes ingest restart from the last commit afterwards."""
    ing, dead = ingest
    tp = TopicPartition("otlp_spans", 0)

    async def run() -> tuple[Consumer, Consumer]:
        ing.producer = Producer()  # type: ignore[assignment]
        ing._outbox[("r_spans", 1)] = [outgoing(9)]
        ing._pending.append(Pending(settled(None), [(record(8), "otlp_spans:0:8")]))
        ing._offsets[tp] = 10
        done = Consumer()
        await ing.hand_over(done, {tp})  # type: ignore[arg-type]
        assert not ing._outbox and not ing._pending and ing._failed is None
        ing._pending.append(Pending(settled(KafkaConnectionError()),
                                    [(record(10), "otlp_spans:0:10")]))
        ing._offsets[tp] = 11
        failed = Consumer()
        await ing.hand_over(failed, {tp})  # type: ignore[arg-type]
        return done, failed

    done, failed = asyncio.run(run())
    assert done.commits == [{tp: 10}] and ing.handovers == 1
    assert failed.commits == [] and isinstance(ing._failed, RouteError) and dead == []


async def test_ingest_restarts_after_any_failure_and_stops_only_when_cancelled(
    ingest: tuple[Ingest, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker outage the Kafka client can fail in ways that are not KafkaError, even
    cancel a request from inside: ingest restarts from the last commit instead of ending
    while the worker lives on reading nothing."""
    ing, _ = ingest
    attempts: list[str] = []
    failures = [ValueError("unexpected"), asyncio.CancelledError(), OSError("reset")]

    async def run_once() -> None:
        attempts.append("run")
        if failures:
            raise failures.pop(0)
        await asyncio.sleep(3600)  # reading, until the worker stops

    monkeypatch.setattr(ing, "_run_once", run_once)
    monkeypatch.setattr("pipeline.ingest.RESTART_S", 0.0)
    task = asyncio.create_task(ing.run())
    for _ in range(200):
        await asyncio.sleep(0.001)
        if len(attempts) == 4:
            break
    assert len(attempts) == 4 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

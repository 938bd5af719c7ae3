"""anomaly_pipeline_consumer_lag_records: records behind the end of each consumed topic, over
the partitions this worker is assigned, without Kafka (stub consumers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from faust.types import TP

from pipeline import app as app_module
from pipeline.app import Pipeline, routed_lag
from pipeline.ingest import Ingest, choose_partitions, forget_unassigned


class StubConsumer:
    """``assignment()``, ``highwater(tp)`` (asserting, as aiokafka does, that tp is assigned),
    ``position(tp)`` (a coroutine) and Faust's committed offsets."""

    def __init__(
        self, highwater: dict[Any, int | None], position: dict[Any, int] | None = None,
        assigned: set[Any] | None = None, committed: dict[Any, int | None] | None = None,
    ) -> None:
        self.high = highwater
        self.pos = position or {}
        self.assigned = set(highwater) if assigned is None else assigned
        self._committed_offset = committed or {}
        self.position_calls: list[Any] = []

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def highwater(self, tp: Any) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.high[tp]

    async def position(self, tp: Any) -> int:
        self.position_calls.append(tp)
        return self.pos[tp]


def ingest_with(consumer: StubConsumer | None, next_offset: dict[TopicPartition, int]) -> Ingest:
    ingest = Ingest.__new__(Ingest)  # lag() reads only the consumer and the positions
    ingest._consumer, ingest._next_offset = consumer, next_offset  # type: ignore[assignment]
    return ingest


# -- input topics (ingest) --------------------------------------------------------------------
S0, S1, S2 = (TopicPartition("otlp_spans", p) for p in range(3))
M0 = TopicPartition("otlp_metrics", 0)


def test_ingest_lag_is_highwater_minus_position() -> None:
    assert ingest_with(StubConsumer({S0: 100}), {S0: 40}).lag() == {"otlp_spans": 60}


def test_ingest_lag_sums_partitions_per_topic() -> None:
    consumer = StubConsumer({S0: 100, S1: 50, S2: 7, M0: 30})
    lag = ingest_with(consumer, {S0: 40, S1: 50, S2: 0, M0: 25}).lag()
    assert lag == {"otlp_spans": 60 + 0 + 7, "otlp_metrics": 5}


def test_ingest_lag_skips_unassigned_partitions() -> None:
    consumer = StubConsumer({S0: 100, S1: 100}, assigned={S0})
    assert ingest_with(consumer, {S0: 90, S1: 0}).lag() == {"otlp_spans": 10}


def test_ingest_lag_skips_unknown_highwater_and_position() -> None:
    consumer = StubConsumer({S0: None, S1: 100, S2: 100})
    assert ingest_with(consumer, {S0: 0, S1: 70}).lag() == {"otlp_spans": 30}


def test_ingest_lag_without_consumer_is_empty() -> None:
    assert ingest_with(None, {S0: 40}).lag() == {}


def test_ingest_lag_survives_a_partition_revoked_while_it_reads() -> None:
    class Revoking(StubConsumer):
        def highwater(self, tp: Any) -> int | None:
            if tp == S1:
                raise AssertionError("Partition is not assigned")
            return super().highwater(tp)

    class Stopped(StubConsumer):
        def assignment(self) -> set[Any]:
            raise RuntimeError("consumer stopped")

    assert ingest_with(Revoking({S0: 10, S1: 10}), {S0: 5, S1: 0}).lag() == {"otlp_spans": 5}
    assert ingest_with(Stopped({S0: 10}), {S0: 5}).lag() == {}


def test_revoked_input_partitions_are_forgotten() -> None:
    next_offset, last_ts, per_ms = {S0: 40, S1: 900}, {S0: 1_000, S1: 99_000}, {S1: 0.5}
    forget_unassigned({S0, S2}, next_offset, last_ts, per_ms)
    assert (next_offset, last_ts, per_ms) == ({S0: 40}, {S0: 1_000}, {})
    # Its lag is no longer computed from the stale position (now unknown, so left out) ...
    consumer = StubConsumer({S0: 100, S1: 1000}, assigned={S0, S1})
    assert ingest_with(consumer, next_offset).lag() == {"otlp_spans": 60}
    # ... and when it comes back it is read first, as a partition not read yet, instead of
    # being held back (or thought caught up) by its old position and record time.
    next_offset[S1] = 200  # the consumer's position, read when its end is known
    assert choose_partitions([S0, S1], {S0: 100, S1: 1000}, next_offset, last_ts) == [S1]


# -- routed topics (detection) ----------------------------------------------------------------
SPANS, METRICS, TRACES = "app-spans-routed", "app-metrics-routed", "app-traces-routed"
R0, R1, R2 = (TP(SPANS, p) for p in range(3))
T0 = TP(TRACES, 0)
CHANGELOG = TP("app-spans-state-changelog", 0)


async def lag_of(
    consumer: StubConsumer, processed: dict[str, dict[int, int]]
) -> dict[str, int]:
    return await routed_lag(
        consumer.assignment(), processed, consumer.highwater,
        consumer._committed_offset.get, consumer.position,
    )


async def test_routed_lag_uses_the_processed_position() -> None:
    consumer = StubConsumer({R0: 100, R1: 80, T0: 10}, committed={R0: 5})
    lag = await lag_of(consumer, {SPANS: {0: 40, 1: 80}, METRICS: {}, TRACES: {0: 4}})
    assert lag == {SPANS: 60, TRACES: 6}
    assert consumer.position_calls == []


async def test_routed_partition_not_processed_yet_counts_from_its_committed_offset() -> None:
    # R1 was just assigned (recovering its state, or its backlog not reached yet).
    consumer = StubConsumer({R0: 100, R1: 500}, position={R1: 490}, committed={R1: 200})
    assert await lag_of(consumer, {SPANS: {0: 100}}) == {SPANS: 300}
    assert consumer.position_calls == []


async def test_routed_partition_without_committed_offset_counts_from_the_position() -> None:
    consumer = StubConsumer({R0: 100, R1: 500}, position={R1: 120}, committed={R1: None})
    assert await lag_of(consumer, {SPANS: {0: 100}}) == {SPANS: 380}
    assert consumer.position_calls == [R1]


async def test_revoked_and_other_partitions_are_not_counted() -> None:
    # R2 was processed here, then revoked; the changelog is assigned but is not a routed topic.
    consumer = StubConsumer({R0: 100, R2: 900, CHANGELOG: 50}, assigned={R0, CHANGELOG},
                            committed={CHANGELOG: 0})
    assert await lag_of(consumer, {SPANS: {0: 90, 2: 10}}) == {SPANS: 10}


async def test_routed_unknowns_and_failures_are_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "POSITION_TIMEOUT_S", 0.01)

    class Failing(StubConsumer):
        async def position(self, tp: Any) -> int:
            if tp == R1:
                raise RuntimeError("not assigned any more")
            if tp == R2:
                await asyncio.sleep(60)  # no valid position yet: given up on
            return await super().position(tp)

    consumer = Failing({R0: None, R1: 50, R2: 50, T0: 30}, position={T0: 0})
    lag = await lag_of(consumer, {SPANS: {}, TRACES: {}})
    assert lag == {TRACES: 30}  # R0: end unknown; R1: position failed; R2: timed out


async def test_routed_lag_gives_up_on_slow_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "POSITION_TIMEOUT_S", 0.01)

    class Slow(StubConsumer):
        async def position(self, tp: Any) -> int:
            await asyncio.sleep(60)
            return 0

    assert await lag_of(Slow({R0: 50, R1: 10}), {SPANS: {1: 4}}) == {SPANS: 6}


async def test_lag_view_adds_ingest_and_every_assigned_routed_partition() -> None:
    consumer = StubConsumer(
        {R0: 100, R1: 70, T0: 20, CHANGELOG: 10**6},
        position={T0: 15},
        committed={R1: 30},
    )
    streams = {
        signal: SimpleNamespace(topic=SimpleNamespace(get_topic_name=lambda t=topic: t),
                                guard=SimpleNamespace(next=position))
        for signal, topic, position in (
            ("spans", SPANS, {0: 90, 2: 3}),  # 2 revoked: its entry is no longer assigned
            ("metrics", METRICS, {}),
            ("traces", TRACES, {}),
        )
    }
    pipeline = SimpleNamespace(
        ingest=ingest_with(StubConsumer({S0: 100}), {S0: 40}),
        app=SimpleNamespace(consumer=consumer),
        streams=streams,
    )
    lag = await Pipeline._build_lag_view(pipeline)  # type: ignore[arg-type]
    assert lag == {"otlp_spans": 60, SPANS: 10 + 40, TRACES: 5}


async def test_lag_view_before_the_consumer_starts_has_the_ingest_lag_only() -> None:
    class NotStarted(StubConsumer):
        def assignment(self) -> set[Any]:
            raise RuntimeError("Consumer thread not yet started")

    pipeline = SimpleNamespace(
        ingest=ingest_with(StubConsumer({S0: 100}), {S0: 40}),
        app=SimpleNamespace(consumer=NotStarted({})),
        streams={},
    )
    assert await Pipeline._build_lag_view(pipeline) == {"otlp_spans": 60}  # type: ignore[arg-type]

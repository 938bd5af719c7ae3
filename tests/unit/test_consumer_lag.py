"""anomaly_pipeline_consumer_lag_records: records behind the end of each consumed topic, over
the partitions this worker is assigned, without Kafka (stub consumers); and, while the broker
cannot be reached, each topic's last known lag with the time of the broker's last fetch answer
(anomaly_pipeline_consumer_last_fetch_timestamp_seconds)."""

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
from pipeline.lagview import LagReading, TopicLag, carry_lag, last_fetched


class StubConsumer:
    """``assignment()``, ``highwater(tp)`` (asserting, as aiokafka does, that tp is assigned),
    ``position(tp)`` (a coroutine) and Faust's committed offsets."""

    def __init__(
        self, highwater: dict[Any, int | None], position: dict[Any, int] | None = None,
        assigned: set[Any] | None = None, committed: dict[Any, int | None] | None = None,
        polled_ms: dict[Any, int | None] | None = None,
    ) -> None:
        self.high = highwater
        self.polled_ms = polled_ms or {}
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

    def last_poll_timestamp(self, tp: Any) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.polled_ms.get(tp)


class FaustConsumer(StubConsumer):
    """Faust's consumer: aiokafka's runs in its consumer thread (``_thread._consumer``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thread = SimpleNamespace(_consumer=self)


INPUT_TOPICS = ("otlp_spans", "otlp_metrics")


def ingest_with(consumer: StubConsumer | None, next_offset: dict[TopicPartition, int],
                assignment_known: bool = True) -> Ingest:
    ingest = Ingest.__new__(Ingest)  # lag() reads only the consumer and the positions
    ingest._consumer, ingest._next_offset = consumer, next_offset  # type: ignore[assignment]
    ingest.by_topic = dict.fromkeys(INPUT_TOPICS)  # type: ignore[arg-type]
    ingest.assignment_known = assignment_known
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


def routed_streams(positions: dict[str, dict[int, int]]) -> dict[str, SimpleNamespace]:
    return {
        topic: SimpleNamespace(topic=SimpleNamespace(get_topic_name=lambda t=topic: t),
                               guard=SimpleNamespace(next=positions.get(topic, {})))
        for topic in (SPANS, METRICS, TRACES)
    }


def pipeline_with(ingest: Ingest, consumer: Any, streams: dict[str, SimpleNamespace],
                  rebalancing: bool = False,
                  view: dict[str, TopicLag] | None = None) -> SimpleNamespace:
    pipeline = SimpleNamespace(
        ingest=ingest, app=SimpleNamespace(consumer=consumer, rebalancing=rebalancing),
        streams=streams, _lag_view=view or {},
    )
    pipeline._routed_reading = lambda: Pipeline._routed_reading(pipeline)  # type: ignore[arg-type]
    return pipeline


async def view_of(pipeline: SimpleNamespace) -> dict[str, TopicLag]:
    return await Pipeline._build_lag_view(pipeline)  # type: ignore[arg-type]


def records(view: dict[str, TopicLag]) -> dict[str, int]:
    return {topic: lag.records for topic, lag in view.items()}


async def test_lag_view_adds_ingest_and_every_assigned_routed_partition() -> None:
    consumer = StubConsumer(
        {R0: 100, R1: 70, T0: 20, CHANGELOG: 10**6},
        position={T0: 15},
        committed={R1: 30},
    )
    # R2 was revoked: its entry is no longer assigned.
    streams = routed_streams({SPANS: {0: 90, 2: 3}})
    pipeline = pipeline_with(ingest_with(StubConsumer({S0: 100}), {S0: 40}), consumer, streams)
    assert records(await view_of(pipeline)) == {"otlp_spans": 60, SPANS: 10 + 40, TRACES: 5}


async def test_lag_view_before_the_consumer_starts_has_the_ingest_lag_only() -> None:
    class NotStarted(StubConsumer):
        def assignment(self) -> set[Any]:
            raise RuntimeError("Consumer thread not yet started")

    pipeline = pipeline_with(ingest_with(StubConsumer({S0: 100}), {S0: 40}), NotStarted({}), {})
    assert records(await view_of(pipeline)) == {"otlp_spans": 60}


# -- the view while the broker cannot be reached ----------------------------------------------
SEEN = 1_700_000_000.0  # Unix seconds of the last fetch answers before the outage


@pytest.mark.parametrize(("case", "reading", "expected"), [
    ("fresh lag replaces the last",
     LagReading({"t": 5}, {"t": SEEN + 9}, keep={"t"}), {"t": TopicLag(5, SEEN + 9)}),
    ("consumer restarting: every topic it reads keeps its last lag",
     LagReading({}, {}, keep={"t", "u"}), {"t": TopicLag(60, SEEN)}),
    ("owned, end not known yet (rejoined, not fetched): the last lag stands",
     LagReading({}, {}, keep={"t"}), {"t": TopicLag(60, SEEN)}),
    ("assignment known, the topic's partitions are another worker's: dropped",
     LagReading({}, {}, keep=set()), {}),
    ("a topic never measured is not invented",
     LagReading({}, {}, keep={"u"}), {}),
    ("lag from a stale end (consumer alive, broker gone): the fetch time says how stale",
     LagReading({"t": 60}, {"t": SEEN}, keep={"t"}), {"t": TopicLag(60, SEEN)}),
])
def test_carry_lag(case: str, reading: LagReading, expected: dict[str, TopicLag]) -> None:
    assert carry_lag({"t": TopicLag(60, SEEN)}, reading) == expected, case


def test_carry_lag_treats_each_consumer_on_its_own() -> None:
    previous = {"otlp_spans": TopicLag(60, SEEN), SPANS: TopicLag(7, SEEN + 1)}
    ingest_down = LagReading({}, {}, keep=INPUT_TOPICS)
    detect_up = LagReading({SPANS: 0}, {SPANS: SEEN + 30}, keep={SPANS})
    assert carry_lag(previous, ingest_down, detect_up) == {
        "otlp_spans": TopicLag(60, SEEN), SPANS: TopicLag(0, SEEN + 30)}


def test_last_fetched_is_the_newest_answer_per_topic() -> None:
    consumer = StubConsumer({S0: 1, S1: 1, S2: 1, M0: 1}, assigned={S0, S1, S2, M0},
                            polled_ms={S0: 1_000_500, S1: 1_002_000, M0: None})
    # S1 is gone from the assignment since it was read (aiokafka asserts): left out.
    assigned = [S0, S1, S2, M0, TopicPartition("otlp_spans", 9)]
    assert last_fetched(assigned, consumer.last_poll_timestamp) == {"otlp_spans": 1_002.0}


def test_ingest_reading_while_its_consumer_restarts_keeps_every_input_topic() -> None:
    reading = ingest_with(None, {}, assignment_known=False).lag_reading()
    assert reading == LagReading({}, {}, INPUT_TOPICS)


def test_ingest_reading_while_it_rejoins_keeps_every_input_topic() -> None:
    # aiokafka's assignment is empty while it rejoins the group (or cannot reach it).
    consumer = StubConsumer({}, assigned=set())
    reading = ingest_with(consumer, {}, assignment_known=False).lag_reading()
    assert reading == LagReading({}, {}, INPUT_TOPICS)


def test_ingest_reading_with_a_known_assignment_keeps_its_topics_only() -> None:
    consumer = StubConsumer({S0: 100, S1: None}, polled_ms={S0: 1_700_000_000_250})
    reading = ingest_with(consumer, {S0: 40}).lag_reading()
    assert reading == LagReading({"otlp_spans": 60}, {"otlp_spans": 1_700_000_000.25},
                                 {"otlp_spans"})


async def test_routed_reading_while_faust_rebalances_keeps_every_routed_topic() -> None:
    consumer = StubConsumer({}, assigned=set())
    pipeline = pipeline_with(ingest_with(None, {}), consumer, routed_streams({}),
                             rebalancing=True)
    assert await Pipeline._routed_reading(pipeline) == LagReading(  # type: ignore[arg-type]
        {}, {}, [SPANS, METRICS, TRACES])


async def test_a_broker_outage_keeps_the_last_lag_and_its_fetch_time() -> None:
    """Before, during (ingest's consumer restarting, Faust rebalancing on an empty assignment)
    and after an outage, as the 5-second view is rebuilt."""
    ms = int(SEEN * 1000)
    faust = FaustConsumer({R0: 100, T0: 20}, polled_ms={R0: ms, T0: ms - 500})
    ingest = ingest_with(StubConsumer({S0: 100}, polled_ms={S0: ms}), {S0: 40})
    streams = routed_streams({SPANS: {0: 90}, TRACES: {0: 20}})
    pipeline = pipeline_with(ingest, faust, streams)
    before = await view_of(pipeline)
    assert before == {"otlp_spans": TopicLag(60, SEEN), SPANS: TopicLag(10, SEEN),
                      TRACES: TopicLag(0, SEEN - 0.5)}
    # The broker goes: ingest's consumer is stopped and restarts; Faust rebalances.
    ingest._consumer, ingest.assignment_known = None, False
    faust.assigned = set()
    pipeline.app.rebalancing, pipeline._lag_view = True, before
    during = await view_of(pipeline)
    assert during == before
    pipeline._lag_view = during
    assert await view_of(pipeline) == before  # and so on for as long as it lasts
    # It is back: a new consumer, rejoined, has fetched; the backlog is measured again.
    ingest._consumer = StubConsumer({S0: 900}, polled_ms={S0: ms + 75_000})
    ingest.assignment_known = True
    faust.assigned, faust.high[R0] = {R0, T0}, 100
    faust.polled_ms = {R0: ms + 76_000, T0: ms + 76_000}
    pipeline.app.rebalancing = False
    after = await view_of(pipeline)
    assert after == {"otlp_spans": TopicLag(860, SEEN + 75), SPANS: TopicLag(10, SEEN + 76),
                     TRACES: TopicLag(0, SEEN + 76)}

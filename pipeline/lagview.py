"""The consumer-lag view a worker exports, kept while the broker cannot be reached.

Lag is the broker's end of each partition minus this worker's position, and only the broker
knows the end. While it is down, ingest's consumer restarts (no consumer, then no assignment
until it rejoins) and Faust's rebalances (no assignment): a view rebuilt from whatever is known
right now loses the input and routed topics, and their lag series vanish from /metrics just when
an operator needs them. So each topic keeps its last known lag, and the time of the broker's
last fetch answer for it, until its consumer knows again which partitions it owns; the lag
cannot grow meanwhile (nobody can measure it), and the fetch time stops, which is what alerts
and operators read. A topic whose consumer knows it owns none of its partitions any more (a
rebalance gave them to another worker) is dropped: its new owner reports it. Pure: no Kafka.

    >>> old = {"otlp_spans": TopicLag(60, 1_000.0)}
    >>> down = LagReading(lag={}, fetched_at={}, keep=("otlp_spans", "otlp_metrics"))
    >>> carry_lag(old, down)
    {'otlp_spans': TopicLag(records=60, fetched_at=1000.0)}
    >>> back = LagReading(lag={"otlp_spans": 900}, fetched_at={"otlp_spans": 1_075.0},
    ...                   keep=("otlp_spans",))
    >>> carry_lag(old, back)
    {'otlp_spans': TopicLag(records=900, fetched_at=1075.0)}
    >>> carry_lag(old, LagReading(lag={}, fetched_at={}, keep=()))  # assigned elsewhere now
    {}
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TopicLag:
    """Records behind the end of a topic (over the partitions this worker owns) and the Unix
    time of the broker's newest fetch answer for any of them (None if none is known)."""

    records: int
    fetched_at: float | None


@dataclass(frozen=True, slots=True)
class LagReading:
    """What one consumer knows now. ``lag``: records behind, per topic, over the owned
    partitions whose end and position are known. ``fetched_at``: per topic, the Unix time of
    the broker's newest fetch answer for an owned partition. ``keep``: the topics whose last
    known lag stands where ``lag`` has none: those with an owned partition, or every topic the
    consumer reads while it does not know its assignment (restarting, rebalancing, or cut off
    from the broker)."""

    lag: Mapping[str, int]
    fetched_at: Mapping[str, float]
    keep: Collection[str]


def carry_lag(previous: Mapping[str, TopicLag], *readings: LagReading) -> dict[str, TopicLag]:
    """The new view: each reading's fresh lag, and the previous entry of each topic it keeps
    but could not measure now. Topics no reading keeps are dropped."""
    out: dict[str, TopicLag] = {}
    for reading in readings:
        for topic in reading.keep:
            if topic in previous and topic not in reading.lag:
                out[topic] = previous[topic]
        for topic, n in reading.lag.items():
            out[topic] = TopicLag(n, reading.fetched_at.get(topic))
    return out


def last_fetched(
    assigned: Iterable[Any], polled_ms: Callable[[Any], int | None]
) -> dict[str, float]:
    """Per topic, the Unix time (seconds) of the broker's newest fetch answer for any of the
    ``assigned`` partitions (``polled_ms``: aiokafka's ``last_poll_timestamp``, Unix ms, None
    before the first). The newest, not the oldest: a partition held back while the others
    catch up is not fetched (its records are already buffered), and the broker still answers.
    Partitions never fetched, or revoked since ``assigned`` was read, are left out.

    >>> from aiokafka.structs import TopicPartition as TP
    >>> polled = {TP("t", 0): 5_000, TP("t", 1): 9_500, TP("u", 0): None}
    >>> last_fetched(polled, polled.get)
    {'t': 9.5}
    """
    out: dict[str, float] = {}
    for tp in assigned:
        try:
            ms = polled_ms(tp)
        except Exception:  # revoked since the assignment was read
            continue
        if ms is not None:
            out[tp.topic] = max(out.get(tp.topic, 0.0), ms / 1000.0)
    return out

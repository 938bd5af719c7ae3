"""Which input partitions the ingest stage reads next: a backlog is read in event-time step."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from pipeline.ingest import ALIGN_MS, choose_partitions

S0, S1, S2 = (TopicPartition("spans", p) for p in range(3))
M0 = TopicPartition("metrics", 0)


def test_a_partition_ahead_waits_for_the_slowest_with_records_waiting() -> None:
    high = {S0: 1000, S1: 1000, S2: 1000}
    pos = {S0: 500, S1: 100, S2: 300}
    ts = {S0: 10 * ALIGN_MS, S1: 0, S2: ALIGN_MS // 2}
    assert choose_partitions([S0, S1, S2], high, pos, ts) == [S1, S2]


def test_partitions_not_read_yet_come_first() -> None:
    high = {S0: 1000, S1: 1000, S2: 0}  # S2 is empty: it holds nobody back
    assert choose_partitions([S0, S1, S2], high, {S0: 200, S1: 0, S2: 0}, {S0: 5}) == [S1]


def test_a_caught_up_partition_holds_nobody_back() -> None:
    high = {S0: 1000, S1: 400}
    pos = {S0: 500, S1: 400}  # S1 has nothing waiting, though its last record is older
    ts = {S0: 10 * ALIGN_MS, S1: 0}
    assert choose_partitions([S0, S1], high, pos, ts) == [S0, S1]


def test_an_unknown_end_holds_nobody_back_and_topics_are_aligned_apart() -> None:
    high = {S0: 1000, S1: None, M0: 50}
    pos = {S0: 10, M0: 10}
    ts = {S0: 0, M0: 99 * ALIGN_MS}
    assert choose_partitions([S0, S1, M0], high, pos, ts) == [M0, S0, S1]

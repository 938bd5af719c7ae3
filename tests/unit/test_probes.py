"""The reliability benchmark's ledgers: a worker's saved ledger against the expected one tells
items lost, applied twice, and both at once; the saved form survives an engine restore."""

from __future__ import annotations

from benchmarks import probes
from pipeline.engine import PartitionEngine
from pipeline.records import Resource, Span

RES = Resource("cart", "cart-1", "node-1", "")
T = 1_767_600_000 * 10**9


def spans(ids: range, t: int = T) -> list[Span]:
    return [Span(f"{i:032x}", f"{i:016x}", "", "op", 2, t, t + 10**6, 0, {}, RES) for i in ids]


def ledger(*batches: list[Span]) -> probes.SpanLedger:
    out = probes.SpanLedger()
    for b in batches:
        out.update(b)
    return out


def test_exact_match_reports_nothing() -> None:
    c = probes.compare(ledger(spans(range(10))), ledger(spans(range(5)), spans(range(5, 10))))
    assert (c.expected, c.applied, c.lost, c.twice, c.keys_mixed) == (10, 10, 0, 0, 0)


def test_lost_and_twice_are_counted() -> None:
    expected = ledger(spans(range(10)), spans(range(10, 20), T + 60 * 10**9))
    got = ledger(spans(range(8)), spans(range(10, 20), T + 60 * 10**9), spans(range(10, 13),
                                                                         T + 60 * 10**9))
    c = probes.compare(expected, got)
    assert (c.lost, c.twice, c.keys_mixed) == (2, 3, 0)


def test_one_lost_and_another_doubled_in_one_key_is_caught_by_the_checksum() -> None:
    c = probes.compare(ledger(spans(range(10))), ledger(spans(range(9)), spans(range(0, 1))))
    assert (c.lost, c.twice, c.keys_mixed) == (0, 0, 1)


def test_saved_state_restores_through_the_engine() -> None:
    live = ledger(spans(range(50)))
    saved = PartitionEngine(3, [live], 0).changes()  # what a flush writes to the table
    back = probes.SpanLedger()
    PartitionEngine(3, [back], 0).restore(saved)
    c = probes.compare(live, back)
    assert (c.applied, c.lost, c.twice, c.keys_mixed) == (50, 0, 0, 0)


def test_merged_partitions_sum() -> None:
    a, b = ledger(spans(range(5))), ledger(spans(range(5, 9)))
    assert probes.compare(ledger(spans(range(9))),
                          probes.merged([a, b], probes.SpanLedger)).astuple()[2:] == (0, 0, 0, 0)

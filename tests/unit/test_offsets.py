"""OffsetGuard: a routed partition's messages reach its engine in order, none skipped."""

from __future__ import annotations

from pipeline.offsets import OffsetGuard


def feed(g: OffsetGuard, offsets: list[int], p: int = 0, now: float = 0.0) -> list[tuple]:
    return [g.check(p, o, now) for o in offsets]


def test_in_order_and_duplicates_are_processed() -> None:
    g = OffsetGuard()
    assert feed(g, [5, 6, 7, 6]) == [("process", 5), ("process", 6), ("process", 7),
                                     ("process", 6)]
    assert g.next == {0: 8} and g.gaps == 0


def test_a_skip_seeks_back_and_waits_for_the_missing_message() -> None:
    g = OffsetGuard()
    feed(g, [0, 1])
    # 2..4 skipped by the consumer: seek back to 2; 6 (fetched before the seek) is skipped.
    assert g.check(0, 5, 0.0) == ("seek", 2)
    assert g.check(0, 6, 1.0) == ("skip", 6)
    assert feed(g, [2, 3, 4, 5, 6], now=1.5) == [("process", o) for o in (2, 3, 4, 5, 6)]
    assert g.gaps == 1 and g.lost == 0 and not g.waiting and g.next[0] == 7
    # other partitions are not held up
    assert g.check(1, 40, 1.0) == ("process", 40)


def test_the_seek_is_repeated_until_the_missing_message_comes() -> None:
    g = OffsetGuard(reseek_s=5.0, give_up_s=60.0)
    feed(g, [0])
    assert g.check(0, 3, 0.0) == ("seek", 1)
    assert g.due(4.0) == []
    assert g.check(0, 4, 4.0) == ("skip", 4)
    assert g.due(5.0) == [(0, 1)]  # whether or not messages come
    assert g.due(6.0) == []
    assert g.due(10.0) == [(0, 1)]
    assert g.check(0, 1, 11.0) == ("process", 1)
    assert g.due(20.0) == []


def test_gone_messages_are_counted_and_the_guard_resumes() -> None:
    g = OffsetGuard(reseek_s=5.0, give_up_s=60.0)
    g.expect(0, 100)  # restored state resumes at 100, but retention deleted 100..119
    assert g.check(0, 120, 0.0) == ("seek", 100)
    assert g.check(0, 121, 30.0) == ("skip", 121)
    # still nothing at 100 after give_up_s: 100..119 are lost, resume from 120
    assert g.check(0, 122, 61.0) == ("seek", 120)
    assert g.lost == 20
    assert feed(g, [120, 121, 122], now=62.0) == [("process", o) for o in (120, 121, 122)]
    assert not g.waiting


def test_messages_deleted_before_they_were_read_are_counted_at_once() -> None:
    g = OffsetGuard()
    feed(g, [0, 1])
    assert g.check(0, 300, 0.0) == ("seek", 2)
    # the partition now starts at 242 (its oldest segments deleted): 2..241 are lost
    assert g.gone(0, 242, 300, 0.0) == ("seek", 242)
    assert g.lost == 240
    assert feed(g, [242, 243], now=1.0) == [("process", 242), ("process", 243)]
    g2 = OffsetGuard()
    feed(g2, [0])
    g2.check(0, 50, 0.0)
    assert g2.gone(0, 50, 50, 0.0) == ("process", 50) and g2.lost == 49 and not g2.waiting
    assert g2.gone(0, 0, 51, 0.0) == ("process", 51)  # nothing waited for: nothing lost


def test_forget_starts_a_reassigned_partition_afresh() -> None:
    g = OffsetGuard()
    feed(g, [0, 1, 2])
    g.forget(0)
    assert g.check(0, 50, 0.0) == ("process", 50)


def test_a_partition_with_no_saved_state_is_applied_from_its_first_offset() -> None:
    """The consumer resumes at 7 (a commit whose state never reached the changelog): with
    nothing saved, the guard seeks back to the partition's first offset, 3."""
    g = OffsetGuard()
    g.expect_first(0)
    assert g.unstarted == {0}
    g.start(0, 3)
    assert not g.unstarted
    assert g.check(0, 7, 0.0) == ("seek", 3)
    assert feed(g, [3, 4, 5, 6, 7]) == [("process", o) for o in (3, 4, 5, 6, 7)]
    assert g.gaps == 1 and g.lost == 0


def test_a_new_partition_read_from_its_start_needs_no_seek() -> None:
    g = OffsetGuard()
    g.expect_first(0)
    g.start(0, 0)
    assert feed(g, [0, 1]) == [("process", 0), ("process", 1)] and g.gaps == 0
    g.expect_first(1)
    g.start(1, None)  # the lookup failed: whatever comes first is taken
    assert g.check(1, 9, 0.0) == ("process", 9)
    g.expect_first(2)
    g.expect(2, 5)  # saved state after all (or a revocation): no lookup pending
    g.expect_first(3)
    g.forget(3)  # revoked while the lookup was on
    g.start(3, 0)
    assert not g.unstarted and 3 not in g.next

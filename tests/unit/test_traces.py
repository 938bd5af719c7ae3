"""Exclusive time and the critical path on golden traces (times in ms for readability)."""

from __future__ import annotations

from pipeline.records import SPAN_KIND_CONSUMER, SPAN_KIND_PRODUCER, Resource, Span
from pipeline.traces import analyze

A = Resource("a", "a-1", "h1", "", {})
B = Resource("b", "b-1", "h2", "", {})


def sp(i: str, parent: str, s: int, e: int, res: Resource = A, kind: int = 1) -> Span:
    return Span("f" * 32, i, parent, f"op-{i}", kind, s, e, 0, {}, res)


def by_id(spans: list[Span], values: list[int]) -> dict[str, int]:
    return {s.span_id: v for s, v in zip(spans, values, strict=True)}


def test_sequential_children() -> None:
    a = analyze([sp("r", "", 0, 100), sp("x", "r", 10, 40), sp("y", "r", 50, 90)])
    assert by_id(a.spans, a.self_ns) == {"r": 30, "x": 30, "y": 40}
    assert by_id(a.spans, a.cp_ns) == {"r": 30, "x": 30, "y": 40}
    assert sum(a.cp_ns) == a.duration_ns == 100


def test_parallel_children_union_and_longest_branch() -> None:
    # x and y run in parallel; y ends last so the path goes through y, then x before y began.
    a = analyze([sp("r", "", 0, 100), sp("x", "r", 10, 70), sp("y", "r", 20, 80)])
    assert by_id(a.spans, a.self_ns)["r"] == 100 - 70  # union [10, 80], not 60 + 60
    cp = by_id(a.spans, a.cp_ns)
    assert cp == {"r": 30, "x": 10, "y": 60}
    assert sum(a.cp_ns) == 100


def test_child_inside_a_longer_sibling_is_off_the_path() -> None:
    a = analyze([sp("r", "", 0, 100), sp("long", "r", 10, 90), sp("short", "r", 20, 30)])
    cp = by_id(a.spans, a.cp_ns)
    assert cp["short"] == 0 and cp["long"] == 80
    assert by_id(a.spans, a.self_ns)["short"] == 10  # its own time still counts as exclusive


def test_nested_path() -> None:
    spans = [sp("r", "", 0, 100), sp("c", "r", 10, 90), sp("g", "c", 20, 80)]
    a = analyze(spans)
    assert by_id(a.spans, a.cp_ns) == {"r": 20, "c": 20, "g": 60}


def test_async_child_outliving_its_parent_is_clipped() -> None:
    a = analyze([sp("r", "", 0, 100), sp("bg", "r", 60, 500)])
    assert by_id(a.spans, a.self_ns) == {"r": 60, "bg": 440}
    assert by_id(a.spans, a.cp_ns) == {"r": 60, "bg": 40}
    assert a.clipped == 1 and a.skew_adjusted == 0  # same service: one clock, never shifted


def test_missing_parent_hangs_under_the_root() -> None:
    # "lost" was never received; its child still takes its time off the root.
    a = analyze([sp("r", "", 0, 100), sp("orphan", "lost", 30, 70)])
    assert a.orphans == 1
    assert by_id(a.spans, a.self_ns)["r"] == 60
    assert by_id(a.spans, a.cp_ns) == {"r": 60, "orphan": 40}


def test_no_root() -> None:
    a = analyze([sp("x", "lost", 0, 10), sp("y", "x", 2, 5)])
    assert a.root is None and a.duration_ns == 0
    assert a.cp_ns == [0, 0]


def test_clock_skew_of_another_service_is_corrected() -> None:
    # b's clock runs 400 ms behind: its server span appears to start before the client call.
    spans = [
        sp("r", "", 1000, 1200),
        sp("client", "r", 1010, 1190, kind=3),
        sp("server", "client", 620, 780, res=B, kind=2),
        sp("db", "server", 640, 760, res=B, kind=3),
    ]
    a = analyze(spans)
    assert a.skew_adjusted == 1
    start = by_id(a.spans, a.start_ns)
    assert start["server"] == 1010 and start["db"] == 1030  # the subtree moved together
    self_ns = by_id(a.spans, a.self_ns)
    assert self_ns["client"] == 180 - 160  # the network hop, not the whole call
    assert self_ns["db"] == 120
    assert sum(a.cp_ns) == 200


def test_skewed_child_ending_late_is_pulled_back() -> None:
    spans = [sp("r", "", 0, 100), sp("s", "r", 50, 130, res=B, kind=2)]
    a = analyze(spans)
    assert by_id(a.spans, a.start_ns)["s"] == 20 and by_id(a.spans, a.end_ns)["s"] == 100


def test_consumer_after_producer_is_not_shifted() -> None:
    spans = [
        sp("r", "", 0, 100),
        sp("p", "r", 10, 20, kind=SPAN_KIND_PRODUCER),
        sp("c", "p", 300, 400, res=B, kind=SPAN_KIND_CONSUMER),
    ]
    a = analyze(spans)
    assert a.skew_adjusted == 0
    assert by_id(a.spans, a.start_ns)["c"] == 300
    assert by_id(a.spans, a.cp_ns)["c"] == 0  # after the request ended: not on its path


def test_duplicates_and_cycles_do_not_break_analysis() -> None:
    spans = [
        sp("r", "", 0, 100), sp("x", "r", 10, 20), sp("x", "r", 10, 20),
        sp("c1", "c2", 30, 40), sp("c2", "c1", 50, 60),
    ]
    a = analyze(spans)
    assert a.duplicates == 1
    assert a.orphans == 2  # the cycle's spans hang under the root
    assert sum(a.cp_ns) == 100


def test_deep_chain_is_bounded() -> None:
    spans = [sp("0", "", 0, 10_000)]
    spans += [sp(str(i), str(i - 1), i, 10_000 - i) for i in range(1, 2000)]
    a = analyze(spans)
    assert sum(a.cp_ns) == 10_000

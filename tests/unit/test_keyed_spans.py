"""Input keyed by trace id (``OTLP_SPANS_KEYING=trace_id``): span records forwarded whole to the
routed partition of their input partition and decoded there (``pipeline.local`` runs the same
code paths as the worker's ingest and span stage)."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import orjson

from pipeline.clock import SourceClock
from pipeline.engine import PartitionEngine
from pipeline.local import LocalPipeline
from pipeline.records import Mark, Routed, Segment, decode_spans_wire, encode_heartbeat
from pipeline.settings import Settings
from pipeline.simulate import build_scenario, iter_records

SETTINGS = Settings(source_idle_s=2.0, end_of_input_s=4.0, end_of_input_advance_s=120.0)
KEYED = dataclasses.replace(SETTINGS, otlp_spans_keying="trace_id")


def records_of(inputs: int) -> tuple[Any, list[tuple[str, int, int, bytes, int]]]:
    """The demo scenario, keyed by trace id, over ``inputs`` input partitions."""
    sc = build_scenario("demo", seed=5, rate=5.0)
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for rec in iter_records(sc):
        p = zlib.crc32(rec.key) % inputs if rec.key is not None else 0
        o = offsets[(rec.topic, p)] = offsets.get((rec.topic, p), -1) + 1
        out.append((rec.topic, p, o, rec.value, rec.timestamp_ms))
    return sc, out


def run(settings: Settings, sc: Any, recs: list, inputs: int, partitions: int,
        batched: bool = True) -> tuple[list[bytes], LocalPipeline]:
    lp = LocalPipeline(settings, {sc.spans_topic: inputs, sc.metrics_topic: inputs},
                       partitions=partitions)
    lp.batched = batched
    found = []
    for i, (topic, p, o, value, ts) in enumerate(recs):
        found += lp.feed(topic, p, o, value, ts)
        if i % 50 == 49:
            found += lp.heartbeat()
    found += lp.end_of_input()
    return sorted(orjson.dumps(f.to_dict(), option=orjson.OPT_SORT_KEYS) for f in found), lp


def test_fewer_input_partitions_than_routed_ones_give_the_same_findings() -> None:
    """2 input partitions, 4 routed: two span partitions get nothing, and the trace stage
    waits for the two that do (not for four)."""
    sc, recs = records_of(2)
    ref, regrouped = run(SETTINGS, sc, recs, 2, 4)
    got, keyed = run(KEYED, sc, recs, 2, 4)
    assert any(orjson.loads(d)["kind"] == "bottleneck_span" for d in ref)
    assert got == ref
    spans = keyed.engines["spans"]
    assert [spans[p].counters.items > 0 for p in range(4)] == [True, True, False, False]
    assert sum(e.counters.items for e in spans.values()) == sum(
        e.counters.items for e in regrouped.engines["spans"].values())
    traces = [e.counters.items for e in keyed.engines["traces"].values()]
    assert traces == [e.counters.items for e in regrouped.engines["traces"].values()]
    assert all(e.expected == {keyed.routed["spans"]: 2} for e in keyed.engines["traces"].values())


def test_bad_record_dead_lettered_once_and_a_forwarded_again_record_applied_once() -> None:
    sc, recs = records_of(1)
    spans = [r for r in recs if r[0] == sc.spans_topic][:200]
    lp = LocalPipeline(KEYED, {sc.spans_topic: 1, sc.metrics_topic: 1}, partitions=2)
    lp.batched = True
    bad = (sc.spans_topic, 0, spans[-1][2] + 1, b"\xff\x00 not protobuf", spans[-1][4])
    for topic, p, o, value, ts in [*spans, bad]:
        lp.feed(topic, p, o, value, ts)
    lp.flush()
    engine = lp.engines["spans"][0]
    items = engine.counters.items
    assert items > 0 and lp.dead_letters == [(sc.spans_topic, 0, bad[2], "invalid_protobuf")]
    # Ingest restarted from an older commit: the last 50 records forwarded again.
    for topic, p, o, value, ts in [*spans[-50:], bad]:
        lp.feed(topic, p, o, value, ts)
    lp.flush()
    assert engine.counters.items == items
    assert len(lp.dead_letters) == 1


class _Item:
    def __init__(self, t: int) -> None:
        self.event_time_ns = t


def _segment(offset: int, t: int) -> Routed:
    return Routed(None, [_Item(t)], None, segments=[Segment(("in", 0, offset, 0), 1, None, None)],
                  partitions={"in": 1})


def test_the_span_stage_keeps_each_source_clock_and_saves_it() -> None:
    s = 1_000_000_000

    def clock() -> SourceClock:
        return SourceClock(5 * s, 300 * s, 60 * s)

    e = PartitionEngine(0, [], 5 * s, expected={"in": 1}, idle_s=2.0, clock=clock)
    e.process(_segment(0, 1000 * s), 0)
    assert e.watermark_ns == 0  # a source's first record waits for its second
    e.process(_segment(1, 1010 * s), 1)
    assert e.watermark_ns == 1005 * s
    e.process(_segment(2, 5000 * s), 2)  # far ahead: held until confirmed
    assert e.watermark_ns == 1005 * s
    again = PartitionEngine(0, [], 5 * s, expected={"in": 1}, idle_s=2.0, clock=clock)
    again.restore(e.changes())
    assert (again.clocks["in:0"].progress_ns, again.clocks["in:0"].held_ns) == (
        1010 * s, 5000 * s)
    # Ingest says the source went idle: what it held counts.
    beat = decode_spans_wire(encode_heartbeat([Mark("in", 0, 0, 3.0)], {"in": 1}))
    again.process(beat, 3)
    assert again.watermark_ns == 4995 * s


def test_state_saved_regrouped_goes_on_when_the_keying_is_set() -> None:
    """An application that ran with ``any`` restarted with ``trace_id``: its saved state
    expected every span partition and every input partition; the trace stage would wait for
    ever on the two span partitions that no longer get anything."""
    sc, recs = records_of(2)
    half = len(recs) // 2  # the demo's bottleneck (11-17 min of 20) comes after the switch
    first = LocalPipeline(SETTINGS, {sc.spans_topic: 2, sc.metrics_topic: 2}, partitions=4)
    first.batched = True
    for i, (topic, p, o, value, ts) in enumerate(recs[:half]):
        first.feed(topic, p, o, value, ts)
        if i % 50 == 49:
            first.heartbeat()
    first.flush()
    tables: dict[str, dict[str, bytes]] = {}
    for sig, writes in first.changes().items():
        table = tables.setdefault(sig, {})
        for key, value in writes:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    second = LocalPipeline(KEYED, {sc.spans_topic: 2, sc.metrics_topic: 2}, partitions=4)
    second.batched = True
    assert second.restore(tables) > 0
    # What was routed under "any" and not applied before the restart: heartbeats naming every
    # input partition, and the trace stage hearing from every span partition. They must not
    # bring the old layout back.
    spans_t, routed = sc.spans_topic, second.routed["spans"]
    beat = encode_heartbeat([Mark(spans_t, i, 10**9, 0.0) for i in range(2)], {spans_t: 2})
    stage = encode_heartbeat([Mark(routed, q, 10**9, 0.0) for q in range(4)], {routed: 4})
    for p in range(4):
        second._deliver("spans", p, beat)
        second._deliver("traces", p, stage)
    found = []
    for i, (topic, p, o, value, ts) in enumerate(recs[half:]):
        found += second.feed(topic, p, o, value, ts)
        if i % 50 == 49:
            found += second.heartbeat()
    found += second.end_of_input()
    assert "bottleneck_span" in {f.kind for f in found}
    newest = max(r[4] for r in recs) * 1_000_000
    assert all(e.watermark_ns > newest - 60 * 10**9 for e in second.engines["traces"].values())


def test_a_chunked_record_moves_the_clock_only_with_its_last_chunk() -> None:
    """A record too large to forward is decoded by ingest and sent in chunks: a later chunk
    may hold older spans than an earlier one, so none of them must be late."""
    s = 1_000_000_000

    def clock() -> SourceClock:
        return SourceClock(5 * s, 300 * s, 60 * s)

    e = PartitionEngine(0, [], 5 * s, expected={"in": 1}, idle_s=2.0, clock=clock)
    e.process(_segment(0, 100 * s), 0)
    e.process(_segment(1, 101 * s), 1)
    assert e.watermark_ns == 96 * s
    first = Routed(("in", 0, 2, 0), [_Item(130 * s)], None, record_ns=131 * s, partial=True)
    last = Routed(("in", 0, 2, 1), [_Item(110 * s)], None, record_ns=131 * s)
    e.process(first, 2)
    assert e.watermark_ns == 96 * s  # not moved by the first chunk
    e.process(last, 3)
    assert e.counters.late_items == 0
    assert e.watermark_ns == 125 * s  # the record's newest span, from either chunk

"""PartitionEngine: watermark, offsets, and state that survives a restart exactly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline import records
from pipeline.engine import PartitionEngine
from pipeline.records import Mark, Resource, Routed, Span
from tests.support.counting import SpanCounter

S = 10**9
T0 = 1_767_600_000 * S


def spans(service: str, n: int, t: int) -> list[Span]:
    res = Resource(service, f"{service}-1", "h", "", {})
    return [
        Span(f"{i:032x}", f"{i + 1:016x}", "", "op", 2, t + i * S, t + i * S + S // 10, 0, {}, res)
        for i in range(n)
    ]


def msg(items: list[Any], source: tuple | None = None, wm: int | None = None,
        side: bool = False, n: int | None = None) -> Routed:
    """A routed message as the detection stage decodes it (source: topic, partition, offset
    and optionally chunk; ``n``: the source topic's partitions)."""
    if source is not None and len(source) == 3:
        source = (*source, 0)
    return Routed(source, items, wm, side,
                  partitions={source[0]: n} if n and source is not None else None)


def beat(*marks: tuple, n: int | None = None) -> Routed:
    """A heartbeat: marks as (topic, partition, watermark, idle seconds)."""
    ms = [Mark(*m) for m in marks]
    counts: dict[str, int] = {}
    for m in ms:
        counts[m.topic] = n or max(counts.get(m.topic, 0), m.partition + 1)
    return Routed(None, [], marks=ms, partitions=counts)


def engine(chunk_bytes: int | None = None, compact_bytes: int | None = None
           ) -> PartitionEngine:
    e = PartitionEngine(3, [SpanCounter()], allowed_lateness_ns=5 * S)
    if chunk_bytes:
        e.chunk_bytes = chunk_bytes
    if compact_bytes is not None:
        e.compact_min_bytes = compact_bytes
    return e


def apply(table: dict[str, bytes], writes: list[tuple[str, bytes | None]]) -> None:
    """What a compacted changelog (and the table restored from it) holds after ``writes``."""
    for k, v in writes:
        if v is None:
            table.pop(k, None)
        else:
            table[k] = v


def test_watermark_is_newest_event_minus_lateness_and_never_regresses() -> None:
    e = engine()
    e.process(msg(spans("a", 10, T0)), offset=0)
    assert e.watermark_ns == T0 + 9 * S + S // 10 - 5 * S
    before = e.watermark_ns
    e.process(msg(spans("a", 2, T0 - 100 * S)), offset=1)  # late data
    assert e.watermark_ns == before
    assert e.counters.late_items == 2


def test_restore_resumes_exactly_and_skips_applied_offsets() -> None:
    batches = [spans("canary" if i % 3 else "svc", 20, T0 + i * 20 * S) for i in range(12)]
    reference = engine()
    ref_findings = [f.to_dict() for i, b in enumerate(batches)
                    for f in reference.process(msg(b), i)]

    first = engine()
    table: dict[str, bytes] = {}
    got = []
    for i, b in enumerate(batches[:7]):
        got += [f.to_dict() for f in first.process(msg(b), i)]
        if i in (2, 5):  # flushes, as the wiring does on its cadence
            apply(table, first.changes())
    # Crash after offset 6: offsets 6 was never flushed, so Kafka redelivers from 6 (and the
    # committed offset can lag further: say from 4).
    second = engine()
    assert second.restore(table.items()) > 0
    assert second.offset == 5
    replayed = []
    for i in range(4, 12):
        replayed += [f.to_dict() for f in second.process(msg(batches[i]), i)]
    assert second.counters.duplicate_messages == 2  # offsets 4 and 5 were already applied
    assert second.detectors[0].counts == reference.detectors[0].counts
    assert second.counters.items == reference.counters.items
    # Everything after the last flush is recomputed identically (same ids), so the published
    # stream is the reference plus at most repeats of findings after the flush point.
    assert [f for f in replayed if f not in ref_findings] == []
    assert ref_findings[-1] == replayed[-1]


def test_restore_ignores_other_partitions() -> None:
    e = engine()
    e.process(msg(spans("a", 3, T0)), offset=0)
    changes = e.changes()
    other = PartitionEngine(4, [SpanCounter()], 5 * S)
    assert other.restore(changes) == 0
    assert other.offset == -1


def test_source_records_rerouted_after_a_crash_apply_once() -> None:
    e = engine()
    e.process(msg(spans("a", 5, T0), ("otlp_spans", 1, 10)), offset=0)
    e.process(msg(spans("a", 5, T0 + 5 * S), ("otlp_spans", 1, 11)), offset=1)
    # The ingest stage restarted from its last commit (source offset 10) and routed again:
    e.process(msg(spans("a", 5, T0), ("otlp_spans", 1, 10)), offset=2)
    e.process(msg(spans("a", 5, T0 + 5 * S), ("otlp_spans", 1, 11)), offset=3)
    e.process(msg(spans("a", 5, T0 + 10 * S), ("otlp_spans", 1, 12)), offset=4)
    e.process(msg(spans("a", 5, T0 + 10 * S), ("otlp_spans", 0, 10)), offset=5)
    assert e.detectors[0].counts == {"a|a-1": 20}
    assert e.counters.duplicate_messages == 2
    restored = engine()
    restored.restore(e.changes())
    assert restored.sources == {"otlp_spans:1": [12, 0], "otlp_spans:0": [10, 0]}


BATCHES = [spans(("a", "b", "canary")[i % 3], 7, T0 + i * 7 * S) for i in range(12)]


def run_from(e: PartitionEngine, start: int, flush_every: int = 2) -> list:
    """Process BATCHES[start:] (as Kafka redelivers them), flushing on a cadence; the writes."""
    log = []
    for i in range(start, len(BATCHES)):
        e.process(msg(BATCHES[i], ("otlp_spans", 0, 100 + i)), offset=i)
        if i % flush_every == flush_every - 1:
            log += e.changes()
    return log


def assert_same_state(e: PartitionEngine, ref: PartitionEngine, offsets: bool = True) -> None:
    """The same state (and routed offset, unless the messages had other offsets)."""
    assert e.detectors[0].counts == ref.detectors[0].counts
    assert e.counters.items == ref.counters.items
    assert e.sources == ref.sources
    assert not offsets or e.offset == ref.offset


@pytest.mark.parametrize(("chunk_bytes", "compact_bytes"),
                         [(None, None), (120, None), (None, 0), (120, 0), (200, 700)])
def test_a_crash_at_any_write_restores_one_whole_flush(chunk_bytes: int | None,
                                                       compact_bytes: int | None) -> None:
    """Cut the changelog after every write (a SIGKILL can land anywhere in a flush: in a log,
    in a base, among the deletes after it), restore, redeliver from the start (the committed
    offset can only be earlier than saved state): the result is always exactly the
    uninterrupted one. Chunked or not; one base and logs, or a base every other flush."""
    ref = engine()
    run_from(ref, 0)
    log = run_from(engine(chunk_bytes, compact_bytes), 0, flush_every=1)
    assert {k.split("/")[1] for k, _ in log} == {"__base__", "__log__"}  # written once
    if compact_bytes is not None:  # bases after the first: the logs before them deleted
        assert sum(k.startswith("3/__base__/") for k, _ in log) > 2
        assert any(v is None and "/__log__/" in k for k, v in log)
    for cut in range(len(log) + 1):
        table: dict[str, bytes] = {}
        apply(table, log[:cut])
        again = engine(chunk_bytes, compact_bytes)
        again.restore(table.items())
        second_log = run_from(again, 0, flush_every=1)
        assert_same_state(again, ref)
        # And a second crash, in the middle of the restored worker's own flushes.
        for cut2 in range(0, len(second_log) + 1, 2):
            table2 = dict(table)
            apply(table2, second_log[:cut2])
            third = engine(chunk_bytes, compact_bytes)
            third.restore(table2.items())
            run_from(third, 0, flush_every=1)
            assert_same_state(third, ref)
        # Whatever was cut, the logs a base made obsolete are deleted after it.
        final = dict(table)
        apply(final, second_log)
        base_seq = max(orjson.loads(v)["seq"] for k, v in final.items() if "/__base__/" in k)
        assert all(orjson.loads(v)["seq"] > base_seq for k, v in final.items()
                   if "/__log__/" in k)


# -- a stage feeding another: trace assembly → trace samples → bottleneck detector --------------
def _two_stage_run(crash_after: int | None) -> tuple[list[tuple], list[dict], int, int]:
    """Routed span messages through a spans engine (trace assembly) whose derived samples feed a
    traces engine (bottleneck detector), flushing both every 4 messages. With ``crash_after``,
    the spans engine is lost after that message and rebuilt from its last flush; the messages
    since are delivered again (as Kafka would: nothing was acknowledged after the flush)."""
    from pipeline.detectors.bottleneck import BottleneckDetector
    from pipeline.detectors.trace_assembly import TraceAssembler
    from pipeline.records import sample_partition
    from tests.support import traces as tr

    # A slow query from minute 11, after the 10-minute warm-up.
    batches = tr.span_batches(minutes=14, per_s=3, seed=9, slow_after_s=11 * 60)
    src = PartitionEngine(0, [TraceAssembler()], 5 * S)
    dst = PartitionEngine(1, [BottleneckDetector()], 5 * S)
    table: dict[str, bytes] = {}
    sent: list[tuple] = []
    findings: list[dict] = []
    skipped = 0
    i = 0
    crashed = False
    while i < len(batches):
        src.process(msg(batches[i]), offset=i)
        for d in src.drain_outbox(lambda sig, it: sample_partition(it, 1)):
            sent.append((d.seq, tuple(repr(x) for x in d.items)))
            before = dst.counters.duplicate_messages
            findings += [f.to_dict() for f in dst.process(
                msg(d.items, ("spans-routed", 0, d.seq), wm=d.watermark()), offset=len(sent))]
            skipped += dst.counters.duplicate_messages - before
        if i % 4 == 3:
            apply(table, src.changes())
            last_flush = i
        if crash_after is not None and i == crash_after and not crashed:
            crashed = True
            src = PartitionEngine(0, [TraceAssembler()], 5 * S)
            src.restore(table.items())
            i = last_flush
        i += 1
    return sent, findings, skipped, dst.detectors[0].stats().evicted["late_samples"]


def test_a_replay_after_a_crash_derives_the_same_messages_and_the_receiver_skips_them() -> None:
    sent_ref, findings_ref, skipped_ref, late_ref = _two_stage_run(crash_after=None)
    sent, findings, skipped, late = _two_stage_run(crash_after=150)
    assert skipped_ref == 0 and skipped > 0
    # The receiver's watermark follows the sender's output watermark: no sample comes late.
    assert late_ref == late == 0
    # Every derived message re-sent after the crash is identical to the one sent before it...
    first: dict[int, tuple] = {}
    for seq, items in sent:
        assert first.setdefault(seq, items) == items
    # ...so the receiver, skipping those it had, ends exactly as without the crash.
    assert sorted(first.items()) == sorted(dict(sent_ref).items())
    assert findings == findings_ref
    assert [f["kind"] for f in findings_ref] == ["bottleneck_span"]


def test_derived_records_are_split_into_bounded_messages() -> None:
    from pipeline.engine import MAX_DERIVED_PER_MESSAGE
    from tests.support.traces import samples

    e = PartitionEngine(0, [], 0)
    items = [s for b in samples(minutes=10) for s in b]  # 2 samples per trace, 1200 traces
    e._outbox.append(("traces", items))
    out = e.drain_outbox(lambda signal, item: 0 if item.service == "api" else 1)
    assert [(d.partition, len(d.items), d.seq, d.last) for d in out] == [
        (0, 200, 1, False), (0, 200, 2, False), (0, 200, 3, False), (0, 200, 4, False),
        (0, 200, 5, False), (0, 200, 6, True),
        (1, 200, 7, False), (1, 200, 8, False), (1, 200, 9, False), (1, 200, 10, False),
        (1, 200, 11, False), (1, 200, 12, True),
    ]
    assert MAX_DERIVED_PER_MESSAGE == 200
    assert [s for d in out for s in d.items] == sorted(items, key=lambda s: s.service != "api")


def test_only_the_last_derived_message_states_the_new_watermark() -> None:
    """Later messages of one batch may hold older records: a message states the watermark
    that holds for everything after it, so only the last one to a partition moves it."""
    from pipeline.detectors.trace_assembly import TraceAssembler
    from tests.support import traces as tr

    src = PartitionEngine(0, [TraceAssembler()], 5 * S, expected={"in": 2})
    batches = tr.span_batches(minutes=3, per_s=5, seed=3)
    for i, b in enumerate(batches):  # input partition 1 is not heard from: nothing completes
        src.process(msg(b, ("in", 0, i), wm=b[-1].end_ns - 5 * S), offset=i)
        src.drain_outbox(lambda sig, it: 0)
    # Partition 1 catches up: every open trace completes at once, more than one message's worth.
    src.process(msg(spans("late", 1, T0 + 3600 * S), ("in", 1, 0), wm=T0 + 3600 * S),
                offset=len(batches))
    out = [d for d in src.drain_outbox(lambda sig, it: 0) if d.signal == "traces"]
    assert len(out) >= 2
    before = out[0].watermark_before  # what this partition stated last (nothing yet: 0)
    assert [d.watermark() for d in out[:-1]] == [before] * (len(out) - 1)
    assert out[-1].watermark() == src.output_watermark_ns("traces") > before
    dst = PartitionEngine(1, [], 5 * S)
    for k, d in enumerate(out):
        dst.process(msg(d.items, ("spans-routed", 0, d.seq), wm=d.watermark()), offset=k)
    assert dst.counters.late_items == 0


def test_watermark_waits_for_the_slowest_source_partition() -> None:
    e = engine()
    # Input partition 0 is read ten minutes ahead of partition 1 (a backlog, an uneven fetch).
    e.process(msg(spans("a", 5, T0 + 600 * S), ("in", 0, 0), wm=T0 + 599 * S, n=2), offset=0)
    assert e.watermark_ns == 0  # partition 1 not heard from yet: it may be behind
    e.process(msg(spans("a", 5, T0), ("in", 1, 0), wm=T0 - 1 * S, n=2), offset=1)
    assert e.counters.late_items == 0  # partition 1's records are not late...
    assert e.watermark_ns == T0 - S  # ...because the watermark follows the slower partition
    e.process(msg(spans("a", 5, T0 + 600 * S), ("in", 1, 1), wm=T0 + 604 * S), offset=2)
    assert e.watermark_ns == T0 + 599 * S
    # How far ahead a source is in event time never makes it idle: partition 0 jumps past a
    # quiet gap of twenty minutes and partition 1, with records still waiting, holds it back.
    e.process(msg(spans("a", 5, T0 + 1900 * S), ("in", 0, 1), wm=T0 + 1899 * S), offset=3)
    assert e.watermark_ns == T0 + 604 * S
    e.process(msg(spans("a", 5, T0 + 700 * S), ("in", 1, 2), wm=T0 + 704 * S), offset=4)
    assert e.counters.late_items == 0 and e.watermark_ns == T0 + 704 * S


def test_idle_sources_stop_holding_the_watermark_and_the_end_of_input_closes_it() -> None:
    e = PartitionEngine(0, [SpanCounter()], 5 * S, idle_s=10, end_of_input_s=60,
                        end_advance_ns=60 * S)
    e.process(beat(("in", 0, 0, 0.0), ("in", 1, 0, 0.0), ("in", 2, 0, 0.0)), offset=0)
    e.process(msg(spans("a", 3, T0), ("in", 0, 0), wm=T0 - 3 * S), offset=1)
    e.process(msg(spans("a", 3, T0 + 5 * S), ("in", 1, 0), wm=T0 + 2 * S), offset=2)
    assert e.watermark_ns == 0  # partition 2, read to its end but not idle yet, holds it
    # Partition 2 (empty) has been read to its end for 12 s of processing time: idle.
    e.process(beat(("in", 0, T0 - 3 * S, 0.0), ("in", 1, T0 + 2 * S, 0.0),
                   ("in", 2, 0, 12.0)), offset=3)
    assert e.watermark_ns == T0 - 3 * S
    # Everything read, everyone idle: the newest of them...
    e.process(beat(("in", 0, T0 - 3 * S, 11.0), ("in", 1, T0 + 2 * S, 11.0),
                   ("in", 2, 0, 23.0)), offset=4)
    assert e.watermark_ns == T0 + 2 * S and not e.ended
    assert e.idle_since_s() == 11.0
    # ...and once quiet for END_OF_INPUT_S more, past the end: the last windows close.
    e.process(beat(("in", 0, T0 - 3 * S, 70.0), ("in", 1, T0 + 2 * S, 70.0),
                   ("in", 2, 0, 82.0)), offset=5)
    assert e.ended and e.watermark_ns == T0 + 2 * S + 5 * S + 60 * S
    # New records later (live traffic resumes) are newer than that: not late.
    e.process(msg(spans("a", 3, T0 + 200 * S), ("in", 0, 1), wm=T0 + 195 * S), offset=6)
    assert e.counters.late_items == 0


def test_the_number_of_sources_is_saved_with_the_state() -> None:
    """A restarted worker must wait for as many sources as before, whatever it knows yet."""
    e = engine()
    e.process(msg(spans("a", 3, T0), ("in", 0, 0), wm=T0 - 5 * S, n=3), offset=0)
    restored = engine()
    restored.restore(e.changes())
    assert restored.expected == {"in": 3}
    restored.process(msg(spans("a", 3, T0 + 10 * S), ("in", 1, 0), wm=T0 + 5 * S), offset=1)
    assert restored.watermark_ns == 0  # partition 2 still unheard of


def test_chunks_of_one_source_record_apply_once_each() -> None:
    e = engine()
    e.process(msg(spans("a", 2, T0), ("in", 0, 7, 0)), offset=0)
    e.process(msg(spans("a", 2, T0), ("in", 0, 7, 1)), offset=1)
    e.process(msg(spans("a", 2, T0), ("in", 0, 7, 0)), offset=2)  # re-routed after a crash
    e.process(msg(spans("a", 2, T0), ("in", 0, 7, 1)), offset=3)
    e.process(msg(spans("a", 2, T0), ("in", 0, 8, 0)), offset=4)
    assert e.detectors[0].counts == {"a|a-1": 6}
    assert e.counters.duplicate_messages == 2


def test_input_behind_the_saved_watermark_is_noticed() -> None:
    e = engine()
    e.process(msg(spans("a", 3, T0 + 3600 * S), ("in", 0, 0)), offset=0)
    assert e.behind_ns == 0
    e.process(msg(spans("a", 3, T0), ("in", 0, 1)), offset=1)  # a rerun from the start
    assert e.behind_ns > 3500 * S and e.counters.late_items == 3
    e.process(msg(spans("a", 3, T0 + 3700 * S), ("in", 0, 2)), offset=2)
    assert e.behind_ns == 0
    e.process(msg(spans("a", 3, T0), ("in", 0, 3)), offset=3)
    assert e.behind_ns > 0
    # The rerun ends: its input goes quiet, and the engine no longer says it is behind.
    e.process(beat(("in", 0, T0, 0.0)), offset=4)
    assert e.behind_ns > 0
    e.process(beat(("in", 0, T0, 12.0)), offset=5)
    assert e.behind_ns == 0


class Raising(SpanCounter):
    name = "raising"

    def update(self, records: list[Any]) -> None:
        raise RuntimeError("plug-in bug")


def test_a_failing_detector_does_not_stop_the_others_and_is_quarantined() -> None:
    errors: list[tuple[str, str]] = []
    e = PartitionEngine(3, [Raising(), SpanCounter()], 5 * S,
                        on_error=lambda d, what, exc: errors.append((d, what)))
    batches = [spans("canary" if i % 3 else "svc", 20, T0 + i * 20 * S) for i in range(12)]
    ref = engine()
    want = [f.to_dict() for i, b in enumerate(batches) for f in ref.process(msg(b), i)]
    got = [f.to_dict() for i, b in enumerate(batches) for f in e.process(msg(b), i)]
    assert got == want and want  # the healthy detector's findings all come out
    assert e.counters.errors == {"raising": 5}  # then it is quarantined: no longer called
    assert errors == [("raising", "update")] * 5
    assert "RuntimeError: plug-in bug" in e.quarantined["raising"]
    writes = e.changes()
    written = [k for _, v in writes if v is not None for k in orjson.loads(v)["entries"]]
    assert any(k.startswith("test_span_counter/") for k in written)
    assert not any(k.startswith("raising/") for k in written)  # its last saved state is kept
    # Logs only while a detector is quarantined (no base without its entries), and they
    # restore.
    assert all("/__log__/" in k for k, _ in writes)
    again = PartitionEngine(3, [Raising(), SpanCounter()], 5 * S)
    again.restore(writes)
    assert again.detectors[1].counts == e.detectors[1].counts and again.offset == e.offset


def test_state_of_the_first_release_engine_restores() -> None:
    """The engine marker of the unversioned release (offsets, per-source watermarks)."""
    import orjson

    old = {"offset": 41, "max_event_ns": T0, "watermark_ns": T0 - 5 * S,
           "sources": {"in:0": 17, "in:1": 9}, "emitted": 3,
           "source_watermarks": {"in:0": T0 - 5 * S, "in:1": T0 - 9 * S},
           "first_progress_ns": T0 - 9 * S, "messages": 40, "items": 400, "late_items": 2,
           "duplicate_messages": 1}
    e = engine()
    e.restore([("3/__engine__", orjson.dumps(old))])
    assert (e.offset, e.watermark_ns, e.emitted) == (41, T0 - 5 * S, 3)
    assert e.sources == {"in:0": [17, 0], "in:1": [9, 0]}
    assert e.marks == {"in:0": [T0 - 5 * S, 0.0], "in:1": [T0 - 9 * S, 0.0]}
    assert e.counters.items == 400 and e.counters.state_dropped == 0
    e.process(msg(spans("a", 1, T0), ("in", 0, 17)), offset=42)
    assert e.counters.duplicate_messages == 2  # source offset 17 was applied before


def test_unreadable_state_is_dropped_and_counted_never_raised() -> None:
    e = engine()
    e.restore([("3/__engine__", b'{"v": 99, "offset": 1}'), ("3/span_counter/x", b"{not json")])
    assert e.counters.state_dropped == 2 and e.offset == -1


def test_side_input_is_applied_once_and_moves_no_watermark() -> None:
    from pipeline.detectors.timewait import TimeWaitDetector
    from pipeline.records import HostCalls

    tw = TimeWaitDetector()
    e = PartitionEngine(0, [tw], 5 * S, expected={"in": 1})
    e.process(msg(spans("a", 5, T0), ("in", 0, 0)), offset=0)
    mark = e.watermark_ns
    calls = [HostCalls("node-1", T0 + 3600 * S, "api", "redis", 60)]
    e.process(msg(calls, ("spans-routed", 3, 1), side=True), offset=1)
    assert e.watermark_ns == mark and "spans-routed:3" not in e.marks
    e.process(msg(calls, ("spans-routed", 3, 1), side=True), offset=2)  # re-sent after a crash
    assert e.counters.duplicate_messages == 1 and e.counters.items == 5  # the spans only
    assert tw._hosts["node-1"].calls == {str(T0 + 3600 * S): {"api\x1fredis": 60}}


def test_detectors_are_never_advanced_before_there_is_a_watermark() -> None:
    """A side input moving before the stream's own watermark exists must not call advance
    with 0 (a detector that steps windows from its first watermark would step from 1970)."""
    seen: list[int] = []

    class Recording(SpanCounter):
        name = "recording"

        def advance(self, watermark_ns: int) -> list:
            seen.append(watermark_ns)
            return super().advance(watermark_ns)

    e = PartitionEngine(0, [Recording()], 5 * S, expected={"in": 1},
                        side_expected={"spans-routed": 1})
    e.process(Routed(None, [], marks=[Mark("spans-routed", 0, T0, 0.0)], side=True), offset=0)
    assert seen == []
    e.process(msg(spans("a", 3, T0), ("in", 0, 0), wm=T0 - 5 * S), offset=1)
    assert seen == [T0 - 5 * S]


def test_a_batch_applies_each_source_record_as_if_it_came_alone() -> None:
    """Ingest sends one message per (read batch, routed partition): its segments are applied
    one by one, each deduplicated by its own source position, each stating its watermark."""
    one, batched = engine(), engine()
    parts = [(BATCHES[i], ("otlp_spans", i % 2, 100 + i, 0), T0 + (i * 7 - 3) * S)
             for i in range(6)]
    for i, (items, src, wm) in enumerate(parts):
        one.process(Routed(src, items, wm, partitions={"otlp_spans": 2}), offset=i)
    wire = records.decode_spans_wire(records.encode_batch(parts, {"otlp_spans": 2}))
    assert wire.segments is not None and [s.count for s in wire.segments] == [7] * 6
    batched.process(wire, offset=0)
    assert_same_state(batched, one, offsets=False)
    assert batched.watermark_ns == one.watermark_ns > 0
    assert batched.marks == one.marks and batched.expected == {"otlp_spans": 2}
    # Ingest restarted from its last commit: records 102..105 come again in the next batch,
    # with two new ones; only the new ones are applied.
    again = [(BATCHES[i], ("otlp_spans", i % 2, 100 + i, 0), T0 + (i * 7 - 3) * S)
             for i in range(2, 8)]
    for i, (items, src, wm) in enumerate(again[4:]):
        one.process(Routed(src, items, wm, partitions={"otlp_spans": 2}), offset=6 + i)
    batched.process(records.decode_spans_wire(records.encode_batch(again, {"otlp_spans": 2})),
                    offset=1)
    assert_same_state(batched, one, offsets=False)
    assert batched.counters.duplicate_messages == 4


def test_a_batch_applied_step_by_step_is_the_batch_applied_at_once() -> None:
    """The detection stage applies a batch a source record at a time, letting other work run
    between them (issue 16): one step per segment, the same state and findings as ``process``,
    and a message applied already gives no step at all."""
    parts = [(BATCHES[i], ("otlp_spans", i % 2, 100 + i, 0), T0 + (i * 7 - 3) * S)
             for i in range(6)]
    wire = records.decode_spans_wire(records.encode_batch(parts, {"otlp_spans": 2}))
    whole, stepped = engine(), engine()
    found = whole.process(wire, offset=0)
    steps = list(stepped.process_steps(wire, offset=0))
    assert len(steps) == 6
    assert [f for step in steps for f in step] == found
    assert_same_state(stepped, whole)
    assert list(stepped.process_steps(wire, offset=0)) == []
    assert stepped.counters.duplicate_messages == 1
    # A heartbeat is one step.
    assert len(list(stepped.process_steps(beat(("otlp_spans", 0, T0, 0.0)), offset=1))) == 1

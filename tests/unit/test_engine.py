"""PartitionEngine: watermark, offsets, and state that survives a restart exactly."""

from __future__ import annotations

import pytest

from pipeline.engine import PartitionEngine
from pipeline.records import Resource, Span
from tests.support.counting import SpanCounter

S = 10**9
T0 = 1_767_600_000 * S


def spans(service: str, n: int, t: int) -> list[Span]:
    res = Resource(service, f"{service}-1", "h", "", {})
    return [
        Span(f"{i:032x}", f"{i + 1:016x}", "", "op", 2, t + i * S, t + i * S + S // 10, 0, {}, res)
        for i in range(n)
    ]


def engine(chunk_bytes: int | None = None) -> PartitionEngine:
    e = PartitionEngine(3, [SpanCounter()], allowed_lateness_ns=5 * S)
    if chunk_bytes:
        e.chunk_bytes = chunk_bytes
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
    e.process(spans("a", 10, T0), offset=0)
    assert e.watermark_ns == T0 + 9 * S + S // 10 - 5 * S
    before = e.watermark_ns
    e.process(spans("a", 2, T0 - 100 * S), offset=1)  # late data
    assert e.watermark_ns == before
    assert e.counters.late_items == 2


def test_restore_resumes_exactly_and_skips_applied_offsets() -> None:
    batches = [spans("canary" if i % 3 else "svc", 20, T0 + i * 20 * S) for i in range(12)]
    reference = engine()
    ref_findings = [f.to_dict() for i, b in enumerate(batches) for f in reference.process(b, i)]

    first = engine()
    table: dict[str, bytes] = {}
    got = []
    for i, b in enumerate(batches[:7]):
        got += [f.to_dict() for f in first.process(b, i)]
        if i in (2, 5):  # flushes, as the wiring does on its cadence
            apply(table, first.changes())
    # Crash after offset 6: offsets 6 was never flushed, so Kafka redelivers from 6 (and the
    # committed offset can lag further: say from 4).
    second = engine()
    assert second.restore(table.items()) > 0
    assert second.offset == 5
    replayed = []
    for i in range(4, 12):
        replayed += [f.to_dict() for f in second.process(batches[i], i)]
    assert second.counters.duplicate_messages == 2  # offsets 4 and 5 were already applied
    assert second.detectors[0].counts == reference.detectors[0].counts
    assert second.counters.items == reference.counters.items
    # Everything after the last flush is recomputed identically (same ids), so the published
    # stream is the reference plus at most repeats of findings after the flush point.
    assert [f for f in replayed if f not in ref_findings] == []
    assert ref_findings[-1] == replayed[-1]


def test_restore_ignores_other_partitions() -> None:
    e = engine()
    e.process(spans("a", 3, T0), offset=0)
    changes = e.changes()
    other = PartitionEngine(4, [SpanCounter()], 5 * S)
    assert other.restore(changes) == 0
    assert other.offset == -1


def test_source_records_rerouted_after_a_crash_apply_once() -> None:
    e = engine()
    e.process(spans("a", 5, T0), offset=0, source=("otlp_spans", 1, 10))
    e.process(spans("a", 5, T0 + 5 * S), offset=1, source=("otlp_spans", 1, 11))
    # The ingest stage restarted from its last commit (source offset 10) and routed again:
    e.process(spans("a", 5, T0), offset=2, source=("otlp_spans", 1, 10))
    e.process(spans("a", 5, T0 + 5 * S), offset=3, source=("otlp_spans", 1, 11))
    e.process(spans("a", 5, T0 + 10 * S), offset=4, source=("otlp_spans", 1, 12))
    e.process(spans("a", 5, T0 + 10 * S), offset=5, source=("otlp_spans", 0, 10))
    assert e.detectors[0].counts == {"a|a-1": 20}
    assert e.counters.duplicate_messages == 2
    restored = engine()
    restored.restore(e.changes())
    assert restored.sources == {"otlp_spans:1": 12, "otlp_spans:0": 10}


BATCHES = [spans(("a", "b", "canary")[i % 3], 7, T0 + i * 7 * S) for i in range(12)]


def run_from(e: PartitionEngine, start: int, flush_every: int = 2) -> list:
    """Process BATCHES[start:] (as Kafka redelivers them), flushing on a cadence; the writes."""
    log = []
    for i in range(start, len(BATCHES)):
        e.process(BATCHES[i], offset=i, source=("otlp_spans", 0, 100 + i))
        if i % flush_every == 1:
            log += e.changes()
    return log


def assert_same_state(e: PartitionEngine, ref: PartitionEngine) -> None:
    assert e.detectors[0].counts == ref.detectors[0].counts
    assert e.counters.items == ref.counters.items
    assert e.offset == ref.offset and e.sources == ref.sources


@pytest.mark.parametrize("chunk_bytes", [None, 120])
def test_a_crash_at_any_write_restores_one_whole_flush(chunk_bytes: int | None) -> None:
    """Cut the changelog after every write (a SIGKILL can land anywhere in a flush), restore,
    redeliver from the start (the committed offset can only be earlier than saved state):
    the result is always exactly the uninterrupted one."""
    ref = engine()
    run_from(ref, 0)
    log = run_from(engine(chunk_bytes), 0)
    assert len(log) > 20
    for cut in range(len(log) + 1):
        table: dict[str, bytes] = {}
        apply(table, log[:cut])
        again = engine(chunk_bytes)
        again.restore(table.items())
        second_log = run_from(again, 0)
        assert_same_state(again, ref)
        # And a second crash, in the middle of the restored worker's own flushes.
        for cut2 in range(0, len(second_log) + 1, 3):
            table2 = dict(table)
            apply(table2, second_log[:cut2])
            third = engine(chunk_bytes)
            third.restore(table2.items())
            run_from(third, 0)
            assert_same_state(third, ref)


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
        src.process(batches[i], offset=i)
        for _sig, _part, items, seq in src.drain_outbox(lambda sig, it: sample_partition(it, 1)):
            sent.append((seq, tuple(repr(x) for x in items)))
            before = dst.counters.duplicate_messages
            findings += [f.to_dict() for f in dst.process(
                items, offset=len(sent), source=("spans-routed", 0, seq),
                source_watermark_ns=src.output_watermark_ns("traces"))]
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
    assert [(part, len(chunk), seq) for _, part, chunk, seq in out] == [
        (0, 200, 1), (0, 200, 2), (0, 200, 3), (0, 200, 4), (0, 200, 5), (0, 200, 6),
        (1, 200, 7), (1, 200, 8), (1, 200, 9), (1, 200, 10), (1, 200, 11), (1, 200, 12),
    ]
    assert MAX_DERIVED_PER_MESSAGE == 200
    assert [s for _, _, chunk, _ in out for s in chunk] == sorted(
        items, key=lambda s: s.service != "api")


def test_watermark_waits_for_the_slowest_source_partition() -> None:
    e = engine()
    e.expected_sources = 2  # the input topic's partitions
    # Input partition 0 is read ten minutes ahead of partition 1 (a backlog, an uneven fetch).
    e.process(spans("a", 5, T0 + 600 * S), offset=0, source=("in", 0, 0))
    e.process(spans("a", 5, T0), offset=1, source=("in", 1, 0))
    assert e.counters.late_items == 0  # partition 1's records are not late...
    assert e.watermark_ns <= T0  # ...because the watermark follows the slower partition
    e.process(spans("a", 5, T0 + 600 * S), offset=2, source=("in", 1, 1))
    assert e.watermark_ns == T0 + 604 * S + S // 10 - 5 * S
    # A source that stopped (no record for 10 minutes of event time) stops holding it back.
    e.process(spans("a", 5, T0 + 1300 * S), offset=3, source=("in", 0, 1))
    assert e.watermark_ns == T0 + 1304 * S + S // 10 - 5 * S


def test_side_input_is_applied_once_and_moves_no_watermark() -> None:
    from pipeline.detectors.timewait import TimeWaitDetector
    from pipeline.records import HostCalls

    tw = TimeWaitDetector()
    e = PartitionEngine(0, [tw], 5 * S, expected_sources=1)
    e.process(spans("a", 5, T0), offset=0, source=("in", 0, 0))
    mark = e.watermark_ns
    calls = [HostCalls("node-1", T0 + 3600 * S, "api", "redis", 60)]
    e.process(calls, offset=1, source=("spans-routed", 3, 1), side=True)
    assert e.watermark_ns == mark and "spans-routed:3" not in e.source_watermarks
    e.process(calls, offset=2, source=("spans-routed", 3, 1), side=True)  # re-sent after a crash
    assert e.counters.duplicate_messages == 1 and e.counters.items == 5  # the spans only
    assert tw._hosts["node-1"].calls == {str(T0 + 3600 * S): {"api\x1fredis": 60}}

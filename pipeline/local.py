"""The worker's stages in one process, without Kafka. Pure: no Faust, no Kafka, no clock.

``LocalPipeline`` does what the ingest stage and the detection agents do, in the same order and
through the same wire format: decode a source record, fold its items into its partition's
``SourceClock``, route them (split like ingest) to the routed partitions' ``PartitionEngine``s,
and move what those derive (trace samples, client calls) and their heartbeats to the next stage.
Processing time is the caller's: ``heartbeat`` says how long each input partition has been idle.

It runs the detectors over recorded telemetry for tests and benchmarks (the same records in
another order, another pace, another partitioning), and captures the state a release writes.

    >>> from pipeline.settings import Settings
    >>> lp = LocalPipeline(Settings(), {"otlp_spans": 1, "otlp_metrics": 1}, partitions=2)
    >>> lp.heartbeat()
    []
    >>> sorted(lp.engines)
    ['metrics', 'spans', 'traces']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline import otlp, records
from pipeline.clock import SourceClock
from pipeline.detectors import load_detectors
from pipeline.detectors.base import Detector
from pipeline.engine import MAX_DERIVED_BYTES, PartitionEngine, keyed_layout
from pipeline.findings import Finding
from pipeline.records import Mark
from pipeline.settings import Settings

#: The routed message size ingest splits at with the broker's default limit.
ROUTED_MAX_BYTES = 1_048_588 - 16 * 1024


class LocalPipeline:
    def __init__(
        self,
        settings: Settings,
        input_partitions: Mapping[str, int],
        partitions: int | None = None,
        detector_classes: Iterable[type[Detector]] | None = None,
        routed_max_bytes: int = ROUTED_MAX_BYTES,
        routed_prefix: str | None = None,
    ) -> None:
        s = self.settings = settings
        self.partitions = partitions or s.pipeline_partitions
        self.input_partitions = dict(input_partitions)
        self.routed_max_bytes = routed_max_bytes
        classes = list(detector_classes or load_detectors(s.pipeline_detectors))
        span_emits = {c.emits for c in classes if c.signal == "spans" and c.emits}
        self.signal_of = {s.otlp_spans_topic: "spans", s.otlp_metrics_topic: "metrics"}
        prefix = f"{s.pipeline_app_id}-" if routed_prefix is None else routed_prefix
        self.routed = {sig: f"{prefix}{sig}-routed" for sig in ("spans", "metrics", "traces")}
        # Input keyed by trace id (``OTLP_SPANS_KEYING=trace_id``): span records are forwarded
        # whole to routed partition <input partition> % partitions, as ingest does.
        self.keyed = s.otlp_spans_keying == "trace_id"
        self.span_senders = records.span_senders(
            self.keyed, self.input_partitions.get(s.otlp_spans_topic, 0), self.partitions)
        self.engines: dict[str, dict[int, PartitionEngine]] = {}
        for signal in ("spans", "metrics", "traces"):
            mine = [c for c in classes if c.signal == signal]
            keyed = self.keyed and signal == "spans"
            self.engines[signal] = {
                p: PartitionEngine(
                    p, [c.from_settings(s) for c in mine], int(s.allowed_lateness_s * 1e9),
                    expected=self._expected(signal, p), idle_s=s.source_idle_s,
                    end_of_input_s=s.end_of_input_s,
                    end_advance_ns=0 if signal == "traces"
                    else int(s.end_of_input_advance_s * 1e9),
                    rebuild=lambda d: type(d).from_settings(s),
                    side_expected={self.routed["spans"]: self.span_senders}
                    if signal in span_emits and signal != "traces" else None,
                    clock=(lambda: SourceClock.from_settings(s)) if keyed else None,
                )
                for p in range(self.partitions)
            }
        self.clocks: dict[tuple[str, int], SourceClock] = {}
        # Routed parts waiting for ``flush`` (as ingest keeps a read batch's), per (signal,
        # partition), when ``batched``; else each record's messages go at once.
        self.batched = False
        self._outbox: dict[tuple[str, int], list[records.BatchPart]] = defaultdict(list)
        self._forwarded: dict[int, list[records.SourceRecord]] = defaultdict(list)
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)  # routed offsets
        self.dropped: dict[str, int] = defaultdict(int)
        self.dead_letters: list[tuple[str, int, int, str]] = []  # topic, partition, offset, why
        # What detectors published for output topics: (topic kind, key, value or None).
        self.published: list[tuple[str, bytes, bytes | None]] = []

    def _expected(self, signal: str, p: int) -> dict[str, int]:
        s = self.settings
        if signal == "traces":
            return {self.routed["spans"]: self.span_senders} if self.span_senders else {}
        if signal == "spans" and self.keyed:
            return self._keyed_counts(s.otlp_spans_topic, p)
        return {}

    def _keyed_counts(self, topic: str, p: int) -> dict[str, int]:
        return records.keyed_counts(topic, self.input_partitions.get(topic, 0),
                                    self.partitions, p)

    # -- ingest -------------------------------------------------------------------------------
    def feed(self, topic: str, partition: int, offset: int, value: bytes,
             timestamp_ms: int | None = None, encoding: str | None = None) -> list[Finding]:
        """One source record, as ingest reads it; the findings it releases. ``encoding``:
        the record's own (``otlp_proto`` / ``otlp_json``) instead of the topic's setting, for
        input that mixes them (files); not with input keyed by trace id."""
        s = self.settings
        signal = self.signal_of[topic]
        keyed = self.keyed and signal == "spans"
        if keyed and encoding is not None:
            raise ValueError("a record's own encoding needs OTLP_SPANS_KEYING=any")
        if keyed and len(value or b"") + len(topic) + 128 <= self.routed_max_bytes:
            rec = records.SourceRecord(topic, partition, offset, timestamp_ms, value)
            dest = partition % self.partitions
            if self.batched:
                self._forwarded[dest].append(rec)
                return []
            return self._deliver(signal, dest, records.encode_forwarded(
                [rec], self._keyed_counts(topic, dest)))
        decode = otlp.decode_spans if signal == "spans" else otlp.decode_metrics
        encoding = encoding or (
            s.otlp_spans_encoding if signal == "spans" else s.otlp_metrics_encoding)
        record_ns = timestamp_ms * 1_000_000 if timestamp_ms and timestamp_ms > 0 else None
        limits = otlp.Limits(max_record_bytes=s.max_record_bytes,
                             max_future_skew_ns=int(s.max_future_skew_s * 1e9),
                             reference_time_ns=record_ns)
        try:
            decoded = decode(value, encoding, limits)
        except otlp.DecodeError as exc:
            self.dead_letters.append((topic, partition, offset, exc.reason))
            return []
        if decoded.rejected:
            assert decoded.first_error is not None
            self.dead_letters.append((topic, partition, offset, decoded.first_error.reason))
        for reason, n in decoded.dropped.items():
            self.dropped[reason] += n
        items = decoded.items
        if not items:
            return []
        if keyed:  # too large to forward: decoded here, to the same partition in chunks
            dest = partition % self.partitions
            n = self._keyed_counts(topic, dest).get(topic)
            try:
                chunks = records.split_encode(items, lambda xs, c, final: records.encode_spans(
                    xs, (topic, partition, offset, c), None, n, record_ns, not final),
                    self.routed_max_bytes)
            except records.TooLarge:
                self.dead_letters.append((topic, partition, offset, "unroutable"))
                return []
            return [f for data in chunks for f in self._deliver(signal, dest, data)]
        clock = self.clock(topic, partition)
        before = clock.watermark_ns
        clock.observe((it.event_time_ns for it in items), record_ns)
        after = clock.watermark_ns
        part = records.span_partition if signal == "spans" else records.point_partition
        encode = records.encode_spans if signal == "spans" else records.encode_points
        groups: dict[int, list[Any]] = defaultdict(list)
        for item in items:
            groups[part(item, self.partitions)].append(item)
        findings: list[Finding] = []
        if self.batched:
            for p, group in sorted(groups.items()):
                self._outbox[(signal, p)].append((group, (topic, partition, offset, 0), after))
            return findings
        for p, group in sorted(groups.items()):
            try:
                chunks = records.split_encode(
                    group, lambda xs, c, final: encode(
                        xs, (topic, partition, offset, c), after if final else before,
                        self.input_partitions.get(topic)),
                    self.routed_max_bytes)
            except records.TooLarge:
                self.dead_letters.append((topic, partition, offset, "unroutable"))
                return findings
            for data in chunks:
                findings += self._deliver(signal, p, data)
        return findings

    def flush(self) -> list[Finding]:
        """Deliver the batched parts: one message per routed partition (``batched``)."""
        outbox, self._outbox = self._outbox, defaultdict(list)
        forwarded, self._forwarded = self._forwarded, defaultdict(list)
        findings: list[Finding] = []
        for p, recs in sorted(forwarded.items()):
            findings += self._deliver("spans", p, records.encode_forwarded(
                recs, self._keyed_counts(recs[0].topic, p)))
        for (signal, p), parts in sorted(outbox.items()):
            findings += self._deliver(signal, p, records.encode_batch(parts, self.input_partitions))
        return findings

    def clock(self, topic: str, partition: int) -> SourceClock:
        c = self.clocks.get((topic, partition))
        if c is None:
            c = self.clocks[(topic, partition)] = SourceClock.from_settings(self.settings)
        return c

    def heartbeat(self, idle_s: Mapping[tuple[str, int], float] | None = None,
                  topics: Iterable[str] | None = None) -> list[Finding]:
        """Ingest's heartbeat to every routed partition: each input partition's mark, idle for
        ``idle_s[(topic, partition)]`` seconds (0 when not given)."""
        idle_s = idle_s or {}
        findings = self.flush()  # what was read goes before the marks that state it
        for topic in topics or self.input_partitions:
            n = self.input_partitions[topic]
            marks = []
            for partition in range(n):
                idle = idle_s.get((topic, partition), 0.0)
                clock = self.clock(topic, partition)
                if idle >= self.settings.source_idle_s:
                    clock.release()
                marks.append(Mark(topic, partition, clock.watermark_ns, idle))
            signal = self.signal_of[topic]
            if signal == "spans" and self.keyed:  # each to the partition it is forwarded to
                for p in range(min(n, self.partitions)):
                    mine = [mk for mk in marks if mk.partition % self.partitions == p]
                    findings += self._deliver(signal, p, records.encode_heartbeat(
                        mine, self._keyed_counts(topic, p)))
                continue
            data = records.encode_heartbeat(marks, {topic: n})
            for p in range(self.partitions):
                findings += self._deliver(signal, p, data)
        return findings

    def end_of_input(self) -> list[Finding]:
        """Every input partition idle long enough: the last windows and traces close."""
        s = self.settings
        quiet = s.source_idle_s + s.end_of_input_s
        return self.heartbeat({(t, p): quiet for t, n in self.input_partitions.items()
                               for p in range(n)})

    # -- detection ------------------------------------------------------------------------------
    def _deliver(self, signal: str, p: int, data: bytes) -> list[Finding]:
        engine = self.engines[signal][p]
        self._offsets[(signal, p)] += 1
        decode = {"spans": records.decode_spans_wire, "metrics": records.decode_points_wire,
                  "traces": records.decode_samples_wire}[signal]
        if records.is_forwarded(data):
            s = self.settings
            out = otlp.decode_forwarded_spans(
                data, s.otlp_spans_encoding, s.max_record_bytes,
                int(s.max_future_skew_s * 1e9), seen=engine.seen)
            for f in out.failures:
                self.dead_letters.append((f.record.topic, f.record.partition, f.record.offset,
                                          f.reason))
            for reason, n in out.dropped.items():
                self.dropped[reason] += n
            routed = out.routed
        else:
            routed = decode(data)
        findings = engine.process(routed, self._offsets[(signal, p)])
        self.published += engine.take_published()
        source_topic = self.routed[signal]
        for d in engine.drain_outbox(self._partitioner):
            for chunk in records.split_encode(d.items, d.encoder(source_topic, p),
                                              MAX_DERIVED_BYTES):
                findings += self._deliver(d.signal, d.partition, chunk)
        for sig in sorted({d.emits for d in engine.detectors if d.emits}):
            mark = engine.heartbeat(sig, source_topic, 0.0, 0.0, side=sig == "metrics")
            if mark is not None:
                beat = records.encode_heartbeat([mark], {source_topic: self.span_senders},
                                                side=sig == "metrics")
                for dest in range(self.partitions):
                    findings += self._deliver(sig, dest, beat)
        return findings

    def _partitioner(self, signal: str, item: Any) -> int:
        if signal == "metrics":
            return records.calls_partition(item, self.partitions)
        return records.sample_partition(item, self.partitions)

    # -- state ----------------------------------------------------------------------------------
    def changes(self) -> dict[str, list[tuple[str, bytes | None]]]:
        """Each stream's table writes since the last call (as the worker flushes them)."""
        return {sig: [w for e in by_p.values() for w in e.changes()]
                for sig, by_p in self.engines.items()}

    def restore(self, tables: Mapping[str, Mapping[str, bytes]]) -> int:
        """Load each stream's table (key -> value); returns the entries read."""
        n = 0
        for sig, by_p in self.engines.items():
            table = tables.get(sig, {})
            for p, e in by_p.items():
                n += e.restore(table.items())
                if self.keyed:  # (the state may have been saved with OTLP_SPANS_KEYING=any)
                    keyed_layout(e, sig, self.settings.otlp_spans_topic, self.routed["spans"],
                                 self.input_partitions.get(self.settings.otlp_spans_topic, 0),
                                 self.partitions)
                # routed offsets go on from the restored ones, as a Kafka topic's would
                self._offsets[(sig, p)] = max(self._offsets[(sig, p)], e.offset)
        return n

    def late_items(self) -> dict[str, int]:
        return {sig: sum(e.counters.late_items for e in by_p.values())
                for sig, by_p in self.engines.items()}


def run(pipeline: LocalPipeline, recs: Iterable[tuple[str, int, int, bytes, int | None]]
        ) -> list[Finding]:
    """Feed ``(topic, partition, offset, value, timestamp_ms)`` records in order with a
    heartbeat after each, then end the input; every finding released."""
    out: list[Finding] = []
    for topic, partition, offset, value, ts in recs:
        out += pipeline.feed(topic, partition, offset, value, ts)
        out += pipeline.heartbeat(topics=[topic])
    return out + pipeline.end_of_input()

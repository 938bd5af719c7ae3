"""One partition's detection state: watermark, detectors, and the offset they have seen. Pure.

The Faust wiring keeps one ``PartitionEngine`` per routed partition it owns. The engine records
the offset of the last routed message it applied and, per source partition, the offset of the
last source record; its state (its own marker plus every detector's changed keys) is written to a
changelog-backed table under keys prefixed by the partition. The wiring acknowledges a message to
Kafka only after the state that includes it has been written, so the committed offset never runs
ahead of saved state.

After a crash two things repeat, and both are caught here: the detection stage re-reads routed
messages after its last commit (skipped by routed offset), and the ingest stage re-routes source
records after *its* last commit, which arrive as new routed messages (skipped by source offset,
since each source partition's records reach a routed partition in order). No record is skipped
and none is applied twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.detectors.base import Detector
from pipeline.findings import Finding

ENGINE_KEY = "__engine__"
FLUSH_KEY = "__flush__"
CHUNK_BYTES = 256 * 1024  # well under Kafka's default 1 MB message limit
# A source whose progress trails the newest by more than this (event time) is idle: it no
# longer holds back the watermark (as Flink's idleness). Long, because a source that is merely
# behind must not be dropped: in a replay, event time runs ~25x faster than the wall clock, and
# a minute of event time is a two-second skew between partitions (a 60 s threshold made 58% of
# trace samples late in a replay).
SOURCE_IDLE_NS = 10 * 60 * 1_000_000_000
# Derived records per message: a burst of completed traces must not exceed Kafka's 1 MB default
# message size (a trace sample is typically well under 2 KB).
MAX_DERIVED_PER_MESSAGE = 200


@dataclass(slots=True)
class EngineCounters:
    messages: int = 0
    items: int = 0
    late_items: int = 0
    duplicate_messages: int = 0


class PartitionEngine:
    def __init__(
        self,
        partition: int,
        detectors: Sequence[Detector],
        allowed_lateness_ns: int,
        expected_sources: int = 0,
    ) -> None:
        self.partition = partition
        # How many sources feed this partition, when known: until each has been seen (or the
        # first progress is SOURCE_IDLE_NS behind), the watermark waits for the missing ones.
        self.expected_sources = expected_sources
        self.first_progress_ns = 0
        self.detectors = list(detectors)
        self.allowed_lateness_ns = allowed_lateness_ns
        self.offset = -1  # last applied routed message offset
        self.sources: dict[str, int] = {}  # "topic:partition" -> last applied source offset
        self.source_watermarks: dict[str, int] = {}  # "topic:partition" -> how far it has got
        self.max_event_ns = 0
        self.watermark_ns = 0
        self.counters = EngineCounters()
        self.prefix = f"{partition}/"
        self.chunk_bytes = CHUNK_BYTES
        self._seq = 0  # flush sequence number
        self._slot = 0  # bundle slot the next flush writes
        self._rematerialize: dict[str, bytes | None] = {}
        # Records detectors derived for downstream streams, and how many messages of them
        # this partition has emitted (their sequence numbers, persisted with the state, let the
        # receiving partition skip what a replay after a crash derives again).
        self._outbox: list[tuple[str, list[Any]]] = []
        self.emitted = 0

    def process(
        self,
        items: Sequence[Any],
        offset: int,
        source: tuple[str, int, int] | None = None,
        source_watermark_ns: int | None = None,
        side: bool = False,
    ) -> list[Finding]:
        """Apply one routed message's records; return findings the watermark released.

        The watermark is the minimum over the sources feeding this partition (each input
        partition, or each upstream partition for derived records) of how far that source has
        got: its newest event time minus the allowed lateness, or, for derived messages, the
        watermark the sender stated. An input partition read behind the others (a backlog, an
        uneven fetch) then holds the watermark back instead of having its records arrive late.
        A source that trails the newest by ``SOURCE_IDLE_NS`` stops holding it back (idle).
        Messages without a source use this partition's newest event time minus the lateness.

        ``side`` records (derived by another stage to enrich this one, such as the client calls
        per host the span stage sends the metrics stream) go to ``Detector.update_side`` and are
        deduplicated like the rest, but move no watermark: a quiet sender must not hold back
        the stream it enriches.
        """
        if offset <= self.offset:
            self.counters.duplicate_messages += 1
            return []
        self.offset = offset
        key = None
        if source is not None:
            key = f"{source[0]}:{source[1]}"
            if source[2] <= self.sources.get(key, -1):
                self.counters.duplicate_messages += 1
                return []
            self.sources[key] = source[2]
        c = self.counters
        c.messages += 1
        if side:  # not counted in ``items``: those are the stream's own records
            for d in self.detectors:
                d.update_side(items)
            return []
        c.items += len(items)
        watermark = self.watermark_ns
        newest = self.max_event_ns
        message_newest = 0
        for item in items:
            t = item.event_time_ns
            if t > message_newest:
                message_newest = t
            if t > newest:
                newest = t
            elif t < watermark:
                c.late_items += 1
        self.max_event_ns = newest
        for d in self.detectors:
            d.update(items)
        if key is not None:
            progress = (
                source_watermark_ns if source_watermark_ns is not None
                else message_newest - self.allowed_lateness_ns
            )
            if progress > self.source_watermarks.get(key, 0):
                self.source_watermarks[key] = progress
            if not self.first_progress_ns:
                self.first_progress_ns = progress
        if self.source_watermarks:
            senders = self.source_watermarks.values()
            active_after = max(senders) - SOURCE_IDLE_NS
            if (
                len(senders) < self.expected_sources
                and self.first_progress_ns >= active_after
            ):
                candidate = 0  # a source not seen yet may be behind: wait (until it is idle)
            else:
                candidate = min(w for w in senders if w >= active_after)
        else:
            candidate = newest - self.allowed_lateness_ns
        if candidate <= watermark:
            return []
        self.watermark_ns = candidate
        findings: list[Finding] = []
        for d in self.detectors:
            findings.extend(d.advance(candidate))
            if d.emits is not None:
                derived = d.drain()
                if derived:
                    self._outbox.append((d.emits, derived))
        return findings

    def output_watermark_ns(self, signal: str) -> int:
        """The watermark derived messages of ``signal`` carry: how far what this partition
        derives is complete (behind its own watermark by what its detectors hold back)."""
        return min(
            (d.output_watermark(self.watermark_ns) for d in self.detectors
             if d.emits == signal),
            default=self.watermark_ns,
        )

    def drain_outbox(
        self, partitioner: Callable[[str, Any], int]
    ) -> list[tuple[str, int, list[Any], int]]:
        """Derived records grouped into messages: ``(signal, partition, records, seq)``.

        Call after every ``process`` and before ``changes``: the state the next flush writes
        no longer holds what was derived, so it must be on its way by then."""
        out = []
        for signal, items in self._outbox:
            groups: dict[int, list[Any]] = defaultdict(list)
            for item in items:
                groups[partitioner(signal, item)].append(item)
            for part in sorted(groups):
                group = groups[part]
                for i in range(0, len(group), MAX_DERIVED_PER_MESSAGE):
                    self.emitted += 1
                    out.append(
                        (signal, part, group[i:i + MAX_DERIVED_PER_MESSAGE], self.emitted)
                    )
        self._outbox = []
        return out

    # -- persistence ------------------------------------------------------------------------
    def changes(self) -> list[tuple[str, bytes | None]]:
        """The table writes for everything changed since the last call, in the order they must
        be written (one changelog partition keeps that order).

        A flush is a *bundle* of all changed entries plus the engine marker, written first as
        one or more chunks under ``<p>/__flush__/<slot>/<i>``, then the same entries under their
        own keys. Restore trusts the newest complete bundle over the per-key entries, so a worker
        killed in the middle of a flush comes back to the state of one whole flush, never a mix
        of two. Bundles alternate between two slots, so the last complete one is never
        overwritten by a flush that may not finish.
        """
        if self._outbox:
            raise RuntimeError("drain_outbox() must be called before changes()")
        entries: dict[str, bytes | None] = dict(self._rematerialize)
        self._rematerialize = {}
        for d in self.detectors:
            base = f"{self.prefix}{d.name}/"
            for key, value in d.snapshot(changed_only=True).items():
                entries[base + key] = None if value is None else orjson.dumps(
                    value, option=orjson.OPT_SERIALIZE_NUMPY
                )
        c = self.counters
        entries[self.prefix + ENGINE_KEY] = orjson.dumps(
            {
                "offset": self.offset, "max_event_ns": self.max_event_ns,
                "watermark_ns": self.watermark_ns, "sources": self.sources,
                "emitted": self.emitted, "source_watermarks": self.source_watermarks,
                "first_progress_ns": self.first_progress_ns,
                "messages": c.messages, "items": c.items,
                "late_items": c.late_items, "duplicate_messages": c.duplicate_messages,
            }
        )
        self._seq += 1
        slot, self._slot = self._slot, 1 - self._slot
        chunks: list[dict[str, Any]] = [{}]
        size = 0
        for key, value in entries.items():
            n = len(key) + (len(value) if value is not None else 4)
            if chunks[-1] and size + n > self.chunk_bytes:
                chunks.append({})
                size = 0
            chunks[-1][key] = None if value is None else orjson.Fragment(value)
            size += n
        writes: list[tuple[str, bytes | None]] = [
            (
                f"{self.prefix}{FLUSH_KEY}/{slot}/{i}",
                orjson.dumps({"seq": self._seq, "n": len(chunks), "entries": chunk}),
            )
            for i, chunk in enumerate(chunks)
        ]
        writes.extend(entries.items())
        return writes

    def restore(self, items: Iterable[tuple[str, bytes | None]]) -> int:
        """Load this partition's entries from the table; returns how many were read."""
        state: dict[str, Any] = {}
        chunks: dict[int, dict[int, dict[str, Any]]] = {0: {}, 1: {}}
        n = 0
        for key, raw in items:
            if not key.startswith(self.prefix) or raw is None:
                continue
            n += 1
            rest = key[len(self.prefix):]
            if rest.startswith(FLUSH_KEY + "/"):
                _, slot, index = rest.split("/")
                chunks[int(slot)][int(index)] = orjson.loads(raw)
            else:
                state[rest] = orjson.loads(raw)
        best_slot, best_seq, max_seq = None, -1, 0
        for slot, parts in chunks.items():
            for doc in parts.values():
                max_seq = max(max_seq, doc["seq"])
            head = parts.get(0)
            if head is None:
                continue
            seq = head["seq"]
            complete = all(
                i in parts and parts[i]["seq"] == seq for i in range(head["n"])
            )
            if complete and seq > best_seq:
                best_slot, best_seq = slot, seq
        if best_slot is not None:
            bundle = chunks[best_slot]
            for i in range(bundle[0]["n"]):
                for key, value in bundle[i]["entries"].items():
                    rest = key[len(self.prefix):]
                    if value is None:
                        state.pop(rest, None)
                    else:
                        state[rest] = value
                    # Its per-key writes may not have landed: write them again next flush.
                    self._rematerialize[key] = None if value is None else orjson.dumps(value)
            self._slot = 1 - best_slot
        self._seq = max_seq
        marker = state.pop(ENGINE_KEY, None)
        if marker is not None:
            self.offset, self.max_event_ns, self.watermark_ns = (
                marker["offset"], marker["max_event_ns"], marker["watermark_ns"],
            )
            self.sources = dict(marker["sources"])
            self.emitted = marker.get("emitted", 0)
            self.source_watermarks = dict(marker.get("source_watermarks", {}))
            self.first_progress_ns = marker.get("first_progress_ns", 0)
            self.counters = EngineCounters(
                marker["messages"], marker["items"], marker["late_items"],
                marker["duplicate_messages"],
            )
        by_detector: dict[str, dict[str, Any]] = {d.name: {} for d in self.detectors}
        for rest, value in state.items():
            name, _, sub = rest.partition("/")
            if name in by_detector:
                by_detector[name][sub] = value
        for d in self.detectors:
            if by_detector[d.name]:
                d.restore(by_detector[d.name])
        return n

    def tracked(self) -> int:
        return sum(d.stats().tracked for d in self.detectors)

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.detectors.base import Detector
from pipeline.findings import Finding

ENGINE_KEY = "__engine__"


@dataclass(slots=True)
class EngineCounters:
    messages: int = 0
    items: int = 0
    late_items: int = 0
    duplicate_messages: int = 0


class PartitionEngine:
    def __init__(
        self, partition: int, detectors: Sequence[Detector], allowed_lateness_ns: int
    ) -> None:
        self.partition = partition
        self.detectors = list(detectors)
        self.allowed_lateness_ns = allowed_lateness_ns
        self.offset = -1  # last applied routed message offset
        self.sources: dict[str, int] = {}  # "topic:partition" -> last applied source offset
        self.max_event_ns = 0
        self.watermark_ns = 0
        self.counters = EngineCounters()
        self.prefix = f"{partition}/"

    def process(
        self, items: Sequence[Any], offset: int, source: tuple[str, int, int] | None = None
    ) -> list[Finding]:
        """Apply one routed message's records; return findings the watermark released."""
        if offset <= self.offset:
            self.counters.duplicate_messages += 1
            return []
        self.offset = offset
        if source is not None:
            key = f"{source[0]}:{source[1]}"
            if source[2] <= self.sources.get(key, -1):
                self.counters.duplicate_messages += 1
                return []
            self.sources[key] = source[2]
        c = self.counters
        c.messages += 1
        c.items += len(items)
        watermark = self.watermark_ns
        newest = self.max_event_ns
        for item in items:
            t = item.event_time_ns
            if t > newest:
                newest = t
            elif t < watermark:
                c.late_items += 1
        self.max_event_ns = newest
        for d in self.detectors:
            d.update(items)
        candidate = newest - self.allowed_lateness_ns
        if candidate <= watermark:
            return []
        self.watermark_ns = candidate
        findings: list[Finding] = []
        for d in self.detectors:
            findings.extend(d.advance(candidate))
        return findings

    # -- persistence ------------------------------------------------------------------------
    def changes(self) -> dict[str, bytes | None]:
        """Table writes for everything changed since the last call; the marker goes last so a
        partially written flush is never mistaken for a complete one."""
        out: dict[str, bytes | None] = {}
        for d in self.detectors:
            base = f"{self.prefix}{d.name}/"
            for key, value in d.snapshot(changed_only=True).items():
                out[base + key] = None if value is None else orjson.dumps(
                    value, option=orjson.OPT_SERIALIZE_NUMPY
                )
        c = self.counters
        out[self.prefix + ENGINE_KEY] = orjson.dumps(
            {
                "offset": self.offset, "max_event_ns": self.max_event_ns,
                "watermark_ns": self.watermark_ns, "sources": self.sources,
                "messages": c.messages, "items": c.items,
                "late_items": c.late_items, "duplicate_messages": c.duplicate_messages,
            }
        )
        return out

    def restore(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Load this partition's entries from the table; returns how many were read."""
        by_detector: dict[str, dict[str, Any]] = {d.name: {} for d in self.detectors}
        n = 0
        for key, raw in items:
            if not key.startswith(self.prefix) or raw is None:
                continue
            n += 1
            rest = key[len(self.prefix):]
            if rest == ENGINE_KEY:
                m = orjson.loads(raw)
                self.offset, self.max_event_ns, self.watermark_ns = (
                    m["offset"], m["max_event_ns"], m["watermark_ns"],
                )
                self.sources = dict(m["sources"])
                self.counters = EngineCounters(
                    m["messages"], m["items"], m["late_items"], m["duplicate_messages"]
                )
                continue
            name, _, sub = rest.partition("/")
            if name in by_detector:
                by_detector[name][sub] = orjson.loads(raw)
        for d in self.detectors:
            if by_detector[d.name]:
                d.restore(by_detector[d.name])
        return n

    def tracked(self) -> int:
        return sum(d.stats().tracked for d in self.detectors)

"""One partition's detection state: watermark, detectors, and the offset they have seen. Pure.

The Faust wiring keeps one ``PartitionEngine`` per routed partition it owns. The engine records
the offset of the last routed message it applied and, per source partition, the position of the
last source record; its state (its own marker plus every detector's changed keys) is written to
a changelog-backed table under keys prefixed by the partition, once per flush, as a log entry
or now and then a whole base (``changes``). The wiring acknowledges a message
to Kafka only after the state that includes it has been written, so the committed offset never
runs ahead of saved state.

After a crash two things repeat, and both are caught here: the detection stage re-reads routed
messages after its last commit (skipped by routed offset), and the ingest stage re-routes source
records after *its* last commit, which arrive as new routed messages (skipped by source position,
since each source partition's records reach a routed partition in order). No record is skipped
and none is applied twice.

**The watermark** is the minimum over the sources feeding this partition (the input topic's
partitions, or the upstream partitions for derived records) of the watermark each states
(``pipeline.clock``), in its data messages and in heartbeats. Until every source has been heard
from (the heartbeats say how many partitions each source topic has; the count is saved with the
state) it does not move. A source the ingest stage reports idle — read to its end with nothing
new for ``idle_s`` of processing time — stops holding it back; when every source is idle it is
the newest of them, and after ``end_of_input_s`` more it moves ``end_advance_ns`` past the
newest event time, so that the last windows and traces of a finite input close (*end of input*).
How fast the input is read changes when the watermark moves, never what is late.

**Detectors are isolated**: an exception in one is counted (``on_error``) and the others go on;
one that fails ``QUARANTINE_AFTER`` times in a row is quarantined in this partition (no longer
called, its last saved state kept) until the worker restarts.

**Saved state is versioned** (``ENGINE_VERSION`` for the marker; detectors version their own
entries, see ``pipeline.state``): state written by the previous release is migrated on restore,
and what cannot be read is dropped and counted, never a crash.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import records
from pipeline.clock import SourceClock
from pipeline.detectors.base import Detector
from pipeline.findings import Finding
from pipeline.records import Mark, Routed

log = logging.getLogger("pipeline.engine")

ENGINE_KEY = "__engine__"
FLUSH_KEY = "__flush__"  # the previous layout's bundles (read on restore, then deleted)
LOG_KEY = "__log__"  # <p>/__log__/<seq>/<chunk>: what one flush changed
BASE_KEY = "__base__"  # <p>/__base__/<slot>/<chunk>: the whole state as of one flush
# A flush writes the whole state (a base) instead of its changes once the changes written since
# the last base add up to this much and to the base's own size: the changelog then holds at
# most about twice the state, and a restore reads a base and the logs after it.
COMPACT_MIN_BYTES = 1024 * 1024
ENGINE_VERSION = 2  # 1: unversioned (sources as offsets, event-time idleness)
CHUNK_BYTES = 256 * 1024  # well under Kafka's default 1 MB message limit
# A state entry larger than this is not written (its key is deleted from the table, counted
# ``state_too_large``): Kafka's default message limit is 1 MB. Detectors bound their entries
# (a trace keeps at most TRACE_MAX_SPANS spans), so this only guards against the unexpected.
MAX_ENTRY_BYTES = 768 * 1024
# Derived messages are split to stay under this many bytes (and MAX_DERIVED_PER_MESSAGE records).
MAX_DERIVED_BYTES = 512 * 1024
MAX_DERIVED_PER_MESSAGE = 200
QUARANTINE_AFTER = 5  # consecutive failures of one detector in one partition
# Records this far behind the watermark when they arrive mean the input went back in time (a
# rerun or replay into saved state): said at once, in the log and a metric.
BEHIND_NS = 300 * 1_000_000_000

ErrorHook = Callable[[str, str, BaseException], None]


@dataclass(slots=True)
class Derived:
    """One message of records derived for the next stage. A message states the watermark
    that holds for everything after it from this partition: the last message to each
    destination states the new output watermark, earlier ones the one stated before (later
    messages of the same batch may hold older records)."""

    signal: str
    partition: int
    items: list[Any]
    seq: int
    watermark_before: int
    watermark_after: int
    last: bool

    def watermark(self, final_chunk: bool = True) -> int:
        return self.watermark_after if self.last and final_chunk else self.watermark_before

    def encoder(self, source_topic: str, partition: int
                ) -> Callable[[list[Any], int, bool], bytes]:
        """How this message's chunks are encoded (``records.split_encode``): each names this
        partition and the message's sequence number, which the receiver deduplicates on."""

        def encode(items: list[Any], chunk: int, final: bool) -> bytes:
            source = (source_topic, partition, self.seq, chunk)
            if self.signal == "traces":
                return records.encode_samples(items, source, self.watermark(final))
            if self.signal == "metrics":  # client calls per host: a side input
                return records.encode_calls(items, source, self.watermark(final))
            raise RuntimeError(f"no routed stream carries derived {self.signal!r} records")

        return encode


@dataclass(slots=True)
class EngineCounters:
    messages: int = 0
    items: int = 0
    late_items: int = 0
    duplicate_messages: int = 0
    state_too_large: int = 0  # state entries not written (over MAX_ENTRY_BYTES)
    state_dropped: int = 0  # saved detector state that could not be read (dropped)
    errors: dict[str, int] = field(default_factory=dict)  # detector -> exceptions


def _log_error(detector: str, what: str, exc: BaseException) -> None:
    log.error("detector %s failed in %s: %s: %s", detector, what, type(exc).__name__, exc,
              exc_info=exc)


class PartitionEngine:
    def __init__(
        self,
        partition: int,
        detectors: Sequence[Detector],
        allowed_lateness_ns: int,
        *,
        expected: Mapping[str, int] | None = None,
        idle_s: float = 10.0,
        end_of_input_s: float = 60.0,
        end_advance_ns: int = 0,
        on_error: ErrorHook | None = None,
        rebuild: Callable[[Detector], Detector] | None = None,
        side_expected: Mapping[str, int] | None = None,
        clock: Callable[[], SourceClock] | None = None,
    ) -> None:
        self.partition = partition
        self.detectors = list(detectors)
        self.allowed_lateness_ns = allowed_lateness_ns
        # Source topic -> partitions: every one of those sources must be heard from before the
        # watermark moves. Given for derived streams, learnt from heartbeats for input topics,
        # and saved with the state (a restarted worker must not wait for fewer).
        self.expected: dict[str, int] = dict(expected or {})
        self.idle_s, self.end_of_input_s, self.end_advance_ns = (
            idle_s, end_of_input_s, end_advance_ns,
        )
        self.on_error = on_error or _log_error
        self._rebuild = rebuild or (lambda d: type(d)())
        self.offset = -1  # last applied routed message offset
        # "topic:partition" -> [offset, chunk] of the last applied source record
        self.sources: dict[str, list[int]] = {}
        # "topic:partition" -> [watermark it stated, seconds it has been idle]
        self.marks: dict[str, list[float]] = {}
        # "topic:partition" -> its clock, for sources whose messages state no watermark but
        # their records' timestamps (input keyed by trace id: records forwarded undecoded, so
        # this partition is the only one that sees their items). ``clock`` makes them.
        self._new_clock = clock
        self.clocks: dict[str, SourceClock] = {}
        # "topic:partition" -> newest event time of a chunked record's chunks before its last
        self._partial: dict[str, int] = {}
        # (side input?, topic) -> which of its partitions this partition hears from
        # (``only_sources``): the marks and partition counts of the others are ignored.
        self._layout: dict[tuple[bool, str], Callable[[int], bool]] = {}
        # "topic:partition" -> idle seconds it must reach before it stops holding the
        # watermark again (a grace after another source came back from a pause)
        self._grace: dict[str, float] = {}
        # Side inputs (records another stage derives to enrich this one): their senders'
        # marks, apart. They move no watermark; detectors that use them wait for them
        # (``Detector.side_watermark_ns``), unless the senders' input has ended.
        self.side_expected: dict[str, int] = dict(side_expected or {})
        self.side_marks: dict[str, list[float]] = {}
        self.side_watermark_ns: int | None = None
        self.max_event_ns = 0
        self.watermark_ns = 0
        self.ended = False  # the watermark moved past the input's end (end of input)
        self.behind_ns = 0  # how far the last data message was behind the watermark (if far)
        self.counters = EngineCounters()
        self.quarantined: dict[str, str] = {}  # detector -> the error that made it stop
        self._fails: dict[str, int] = {}  # "detector.method" -> failures in a row
        self.prefix = f"{partition}/"
        self.chunk_bytes = CHUNK_BYTES
        self.compact_min_bytes = COMPACT_MIN_BYTES
        self._seq = 0  # flush sequence number: of the last flush written
        self._slot = 0  # the base slot the next base goes to (the other holds the last one)
        self._base_bytes = 0  # size of the last base, and of the logs written since
        self._log_bytes = 0
        self._need_base = True  # no base yet: the next flush writes one
        self._garbage: list[str] = []  # keys no restore will read: deleted at the next flush
        self._superseded: list[str] = []  # keys the next base makes obsolete: deleted after it
        # Records detectors derived for downstream streams, and how many messages of them
        # this partition has emitted (their sequence numbers, persisted with the state, let the
        # receiving partition skip what a replay after a crash derives again).
        self._outbox: list[tuple[str, list[Any]]] = []
        # What detectors published for output topics (``Detector.publishes``), to send.
        self.published: list[tuple[str, bytes, bytes | None]] = []
        self.emitted = 0
        # signal -> (watermark, sent at, idle seconds) of the last heartbeat sent
        self._heartbeat: dict[str, tuple[int, float, float]] = {}
        self._stated: dict[str, int] = {}  # signal -> output watermark derived messages stated

    # -- the work ---------------------------------------------------------------------------
    def process(self, msg: Routed, offset: int) -> list[Finding]:
        """Apply one routed message; return the findings the watermark released (all of
        ``process_steps`` at once)."""
        return [f for step in self.process_steps(msg, offset) for f in step]

    def process_steps(self, msg: Routed, offset: int) -> Iterator[list[Finding]]:
        """Apply one routed message a source record at a time, yielding the findings each
        released, so a caller on a shared event loop can let other work run between records
        of a large batch (issue 16: a metrics flood's batches held the live spans back).
        Exhaust it before the next message; until then the message counts as applied.

        ``side`` messages (records another stage derived to enrich this one, such as the
        client calls per host the span stage sends the metrics stream) go to
        ``Detector.update_side`` and are deduplicated like the rest. They move no watermark of
        this stream; their senders' marks give ``side_watermark_ns``, which only the
        detectors that join them wait for.
        """
        if offset <= self.offset:
            self.counters.duplicate_messages += 1
            return
        self.offset = offset
        if msg.partitions:
            for topic, n in msg.partitions.items():
                if n > self.expected.get(topic, 0) and (False, topic) not in self._layout:
                    self.expected[topic] = n
        if msg.marks is not None:  # a heartbeat
            if not msg.side and msg.marks and all(m.idle_s > 0 for m in msg.marks):
                self.behind_ns = 0  # the input it was about has stopped (a rerun ended)
            for m in msg.marks:
                key = f"{m.topic}:{m.partition}"
                if self._layout and not self._hears(msg.side, m.topic, m.partition):
                    continue
                if msg.side:
                    self._side_mark(key, m.watermark_ns, m.idle_s)
                    continue
                wm = m.watermark_ns
                clock = self.clocks.get(key)
                if clock is not None:  # the sender states idleness; the clock is kept here
                    if m.idle_s >= self.idle_s:
                        clock.release()
                    wm = max(wm, clock.watermark_ns)
                self._mark(key, wm, m.idle_s)
            yield self._advance()
            return
        if msg.segments is not None:  # a batch: each source record as if it came alone
            start = 0
            for seg in msg.segments:
                end = start + seg.count
                yield self._apply(seg.source, msg.items[start:end], seg.watermark_ns,
                                  msg.side, seg.record_ns)
                start = end
            return
        yield self._apply(msg.source, msg.items, msg.watermark_ns, msg.side, msg.record_ns,
                          msg.partial)

    def only_sources(self, topic: str, keep: Callable[[int], bool], count: int,
                     side: bool = False) -> None:
        """Hear from ``count`` partitions of ``topic`` only, those ``keep`` accepts: what a
        state saved under another layout (``OTLP_SPANS_KEYING`` changed) expected of the
        others, and their last marks, no longer hold this partition back."""
        self._layout[(side, topic)] = keep
        expected, marks = ((self.side_expected, self.side_marks) if side
                           else (self.expected, self.marks))
        if count:
            expected[topic] = count
        else:
            expected.pop(topic, None)
        prefix = f"{topic}:"
        for key in [k for k in marks if k.startswith(prefix)]:
            if not keep(int(key.rsplit(":", 1)[1])):
                del marks[key]

    def _hears(self, side: bool, topic: str, partition: int) -> bool:
        keep = self._layout.get((side, topic))
        return keep is None or keep(partition)

    def seen(self, src: records.Source) -> bool:
        """Whether this source record (or chunk) has been applied already."""
        last = self.sources.get(f"{src[0]}:{src[1]}")
        return last is not None and (src[2], src[3]) <= (last[0], last[1])

    def clock_counts(self) -> dict[str, int]:
        """The adjustments of the clocks kept here (``pipeline.clock.REASONS``), summed."""
        out: dict[str, int] = {}
        for clock in self.clocks.values():
            for reason, n in clock.counts.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def _apply(self, src: records.Source | None, items: list[Any], stated: int | None,
               side: bool, record_ns: int | None = None, partial: bool = False
               ) -> list[Finding]:
        """One source record's items (or one chunk of them), once."""
        key = None
        if src is not None:
            key = f"{src[0]}:{src[1]}"
            last = self.sources.get(key)
            if last is not None and (src[2], src[3]) <= (last[0], last[1]):
                self.counters.duplicate_messages += 1
                return []
            self.sources[key] = [src[2], src[3]]
        c = self.counters
        c.messages += 1
        if self._layout and src is not None and not self._hears(side, src[0], src[1]):
            key = None  # applied, but it moves no mark: a source of another layout
        if side:  # not counted in ``items``: those are the stream's own records
            for d in self.detectors:
                self._call(d, "update_side", d.update_side, items)
            if key is not None and stated is not None:
                self._side_mark(key, stated, 0.0)
                return self._advance()
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
        self.behind_ns = (
            watermark - message_newest
            if message_newest and watermark - message_newest > BEHIND_NS else 0
        )
        for d in self.detectors:
            self._call(d, "update", d.update, items)
        if key is not None:
            if stated is None and self._new_clock is not None:  # this source's clock is here
                clock = self.clocks.get(key)
                if clock is None:
                    clock = self.clocks[key] = self._new_clock()
                limit = record_ns + clock.ahead_ns if record_ns else None
                if partial:  # a chunk before the record's last: its time counts with the last
                    newest = max((it.event_time_ns for it in items
                                  if limit is None or it.event_time_ns <= limit), default=0)
                    self._partial[key] = max(self._partial.get(key, 0), newest)
                    return []
                held = self._partial.pop(key, 0)
                clock.observe(itertools.chain((item.event_time_ns for item in items),
                                              (held,) if held else ()), record_ns)
                stated = clock.watermark_ns
            elif stated is None:  # a sender that states none: its newest minus the lateness
                stated = message_newest - self.allowed_lateness_ns
            self._mark(key, stated, 0.0)
        return self._advance()

    def _mark(self, key: str, watermark_ns: float, idle_s: float) -> None:
        m = self.marks.get(key)
        if m is None:
            self.marks[key] = [watermark_ns, idle_s]
            return
        resumed = self._idle(key, m) and idle_s < self.idle_s
        if watermark_ns > m[0]:
            m[0] = watermark_ns
        m[1] = idle_s
        if idle_s < self.idle_s:
            self._grace.pop(key, None)
            self.ended = False
        if resumed:
            # Traffic came back on one source after a pause: the others that paused with it
            # may be about to come back too, a little behind it. They hold the watermark for
            # another SOURCE_IDLE_S of idleness, so their first records are not late.
            for other, om in self.marks.items():
                if other != key and om[1] >= self.idle_s:
                    self._grace[other] = om[1] + self.idle_s

    def _side_mark(self, key: str, watermark_ns: float, idle_s: float) -> None:
        m = self.side_marks.get(key)
        if m is None:
            self.side_marks[key] = [watermark_ns, idle_s]
        else:
            m[0], m[1] = max(m[0], watermark_ns), idle_s

    def _side_candidate(self) -> int | None:
        """How far the side inputs are complete. Their senders hold it at their watermarks,
        idle or not (a pause in their input is not its end: when it comes back, this stream
        must not have run ahead of it); None — no constraint — when nothing is expected of
        them, or when every sender's input has ended (quiet for ``idle_s + end_of_input_s``)
        or never had any data: a stage with no input must not hold this one back."""
        if not self.side_expected:
            return None
        if len(self.side_marks) < sum(self.side_expected.values()):
            return 0
        ended = self.idle_s + self.end_of_input_s
        held = [m[0] for m in self.side_marks.values()
                if m[1] < ended and not (m[1] >= self.idle_s and m[0] <= 0)]
        return int(min(held)) if held else None

    def _idle(self, key: str, m: list[float]) -> bool:
        """A source idle long enough (and past any grace) stops holding the watermark."""
        return m[1] >= self.idle_s and m[1] >= self._grace.get(key, 0.0)

    def _candidate(self) -> int:
        marks = self.marks
        if not marks:  # messages without a source (tests, tools): newest minus the lateness
            return self.max_event_ns - self.allowed_lateness_ns
        if len(marks) < sum(self.expected.values()):
            return 0  # a source not heard from yet may be behind: wait for it
        idle_s, grace = self.idle_s, self._grace  # (inlined ``_idle``: once per message)
        active = [m[0] for k, m in marks.items()
                  if m[1] < idle_s or (grace and m[1] < grace.get(k, 0.0))]
        if active:
            return int(min(active))
        newest = int(max(m[0] for m in marks.values()))
        if self.end_advance_ns and min(m[1] for m in marks.values()) >= (
            self.idle_s + self.end_of_input_s
        ):
            self.ended = True
            return newest + self.allowed_lateness_ns + self.end_advance_ns
        return newest

    def _advance(self) -> list[Finding]:
        candidate = self._candidate()
        side = self._side_candidate()
        side_moved = side != self.side_watermark_ns and (
            side is None or self.side_watermark_ns is None or side > self.side_watermark_ns)
        if candidate <= self.watermark_ns and not side_moved:
            return []
        self.watermark_ns = max(candidate, self.watermark_ns)
        if side_moved:
            self.side_watermark_ns = side
        if self.watermark_ns <= 0:  # no watermark yet: nothing to act on
            return []
        findings: list[Finding] = []
        for d in self.detectors:
            d.side_watermark_ns = self.side_watermark_ns
            d.input_ended = self.ended
        candidate = self.watermark_ns
        for d in self.detectors:
            found = self._call(d, "advance", d.advance, candidate)
            if found:
                findings.extend(found)
            if d.emits is not None:
                derived = self._call(d, "drain", d.drain)
                if derived:
                    self._outbox.append((d.emits, derived))
            if d.publishes is not None:
                out = self._call(d, "published", d.published)
                if out:
                    self.published.extend((d.publishes, k, v) for k, v in out)
        return findings

    def take_published(self) -> list[tuple[str, bytes, bytes | None]]:
        """Records detectors published since the last call: (topic name, key, value)."""
        out, self.published = self.published, []
        return out

    def _call(self, d: Detector, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        name = d.name
        if name in self.quarantined:
            return None
        try:
            out = fn(*args)
        except Exception as exc:
            errors = self.counters.errors
            errors[name] = errors.get(name, 0) + 1
            key = f"{name}.{what}"
            fails = self._fails[key] = self._fails.get(key, 0) + 1
            self.on_error(name, what, exc)
            if fails >= QUARANTINE_AFTER:
                self.quarantined[name] = f"{what}: {type(exc).__name__}: {exc}"
                log.error("partition %d: detector %s quarantined after %d failures in a row in "
                          "%s (%s: %s); the other detectors go on", self.partition, name, fails,
                          what, type(exc).__name__, exc)
            return None
        if self._fails:
            self._fails.pop(f"{name}.{what}", None)
        return out

    def idle_since_s(self) -> float:
        """Seconds every source has been idle (0 unless all are): how long the input has
        been quiet, as far as this partition knows."""
        if not self.marks or any(m[1] < self.idle_s for m in self.marks.values()):
            return 0.0
        return min(m[1] for m in self.marks.values())

    def output_watermark_ns(self, signal: str) -> int:
        """The watermark derived messages of ``signal`` carry: how far what this partition
        derives is complete (behind its own watermark by what its detectors hold back)."""
        return min(
            (d.output_watermark(self.watermark_ns) for d in self.detectors
             if d.emits == signal and d.name not in self.quarantined),
            default=self.watermark_ns,
        )

    def heartbeat(self, signal: str, topic: str, now_s: float, every_s: float,
                  side: bool = False) -> Mark | None:
        """The mark to send every partition of the next stage, when this partition's output
        watermark for ``signal`` moved (or, for a ``side`` input, its input went idle or came
        back) and the last one is ``every_s`` old (``now_s`` is the caller's processing
        clock): a receiver that gets no derived records from here still learns how far this
        partition has got. Only a side input's receiver is told of idleness (to stop waiting
        for a stage whose input ended); the next stage proper follows this one's watermark,
        which already moves past a quiet input."""
        last = self._heartbeat.get(signal)
        if last is not None and now_s - last[1] < every_s:
            return None
        wm = self.output_watermark_ns(signal)
        idle = self.idle_since_s() if side else 0.0
        if last is not None and last[0] >= wm and (last[2] > 0) == (idle > 0):
            return None
        self._heartbeat[signal] = (wm, now_s, idle)
        return Mark(topic, self.partition, wm, idle)

    def drain_outbox(self, partitioner: Callable[[str, Any], int]) -> list[Derived]:
        """Derived records grouped into messages, each with its sequence number and watermark.

        Call after every ``process`` and before ``changes``: the state the next flush writes
        no longer holds what was derived, so it must be on its way by then."""
        out: list[Derived] = []
        by_signal: dict[str, list[Any]] = defaultdict(list)
        for signal, items in self._outbox:
            by_signal[signal].extend(items)
        for signal, items in by_signal.items():
            before = self._stated.get(signal, 0)
            after = self.output_watermark_ns(signal)
            self._stated[signal] = max(before, after)
            groups: dict[int, list[Any]] = defaultdict(list)
            for item in items:
                groups[partitioner(signal, item)].append(item)
            for part in sorted(groups):
                group = groups[part]
                for i in range(0, len(group), MAX_DERIVED_PER_MESSAGE):
                    self.emitted += 1
                    out.append(Derived(
                        signal, part, group[i:i + MAX_DERIVED_PER_MESSAGE], self.emitted,
                        before, after, i + MAX_DERIVED_PER_MESSAGE >= len(group),
                    ))
        self._outbox = []
        return out

    # -- persistence ------------------------------------------------------------------------
    def rebase(self, unsaved: Iterable[str] = ()) -> None:
        """Make the next ``changes()`` a base (the whole state): the writes of a flush were not
        all saved (``unsaved``: their keys), and restore stops at the first log missing. If a
        base was among them, the next goes into its slot again: the other holds the last whole
        one."""
        self._need_base = True
        base = f"{self.prefix}{BASE_KEY}/"
        for key in unsaved:
            slot = key[len(base):].partition("/")[0] if key.startswith(base) else ""
            if slot in ("0", "1"):
                self._slot = int(slot)
                return

    def changes(self) -> list[tuple[str, bytes | None]]:
        """The table writes for everything changed since the last call, in the order they must
        be written (one changelog partition keeps that order).

        Written once: a flush is one *log* entry — every detector entry that changed, and the
        engine marker — in one or more chunks under ``<p>/__log__/<seq>/<i>``. Every so often
        (``compact_min_bytes``) a flush writes a *base* instead, the whole state, in chunks
        under ``<p>/__base__/<slot>/<i>``, and then deletes the logs it makes obsolete. Restore
        takes the newest complete base and the complete logs after it, in order, up to the
        first missing one: a worker killed in the middle of a flush comes back to the state
        of one whole flush, never a mix of two. Bases alternate between two slots, so the last
        complete one is never overwritten by one that may not finish.
        """
        if self._outbox:
            raise RuntimeError("drain_outbox() must be called before changes()")
        writes: list[tuple[str, bytes | None]] = [(k, None) for k in self._garbage]
        self._garbage = []
        # No base while a detector is quarantined: its last saved entries, which it no longer
        # writes, stay in the logs until a restart restores it.
        base = not self.quarantined and (
            self._need_base or self._log_bytes >= max(self._base_bytes, self.compact_min_bytes))
        entries: dict[str, bytes | None] = {}
        for d in self.detectors:
            if d.name in self.quarantined:
                continue  # its last saved state stays
            snap = self._call(d, "snapshot", d.snapshot, True)
            if base:  # (the changes above are in it: taken for their bookkeeping)
                full = self._call(d, "snapshot", d.snapshot, False)
                snap = full if full is not None else snap
            if snap is None:
                continue
            prefix = f"{d.name}/"
            for key, value in snap.items():
                raw = None if value is None else orjson.dumps(
                    value, option=orjson.OPT_SERIALIZE_NUMPY
                )
                if raw is not None and len(raw) > MAX_ENTRY_BYTES:
                    self.counters.state_too_large += 1
                    log.warning("state entry %s%s%s is %d bytes, over %d: not saved (a "
                                "restart loses it)", self.prefix, prefix, key, len(raw),
                                MAX_ENTRY_BYTES)
                    raw = None
                if raw is not None or not base:
                    entries[prefix + key] = raw
        entries[ENGINE_KEY] = orjson.dumps(self._marker())
        self._seq += 1
        chunks: list[dict[str, Any]] = [{}]
        size = total = 0
        for key, value in entries.items():
            n = len(key) + (len(value) if value is not None else 4)
            if chunks[-1] and size + n > self.chunk_bytes:
                chunks.append({})
                size = 0
            chunks[-1][key] = None if value is None else orjson.Fragment(value)
            size += n
            total += n
        if base:
            slot, self._slot = self._slot, 1 - self._slot
            name = f"{self.prefix}{BASE_KEY}/{slot}/"
        else:
            name = f"{self.prefix}{LOG_KEY}/{self._seq}/"
        writes += [(f"{name}{i}", orjson.dumps({"seq": self._seq, "n": len(chunks),
                                                "entries": chunk}))
                   for i, chunk in enumerate(chunks)]
        if base:
            writes += [(k, None) for k in self._superseded]
            self._superseded = []
            self._base_bytes, self._log_bytes, self._need_base = total, 0, False
        else:
            self._superseded += [f"{name}{i}" for i in range(len(chunks))]
            self._log_bytes += total
        return writes

    def _marker(self) -> dict[str, Any]:
        c = self.counters
        return {
            "v": ENGINE_VERSION,
            "offset": self.offset, "max_event_ns": self.max_event_ns,
            "watermark_ns": self.watermark_ns, "sources": self.sources, "marks": self.marks,
            "expected": self.expected, "emitted": self.emitted, "ended": self.ended,
            "side_marks": self.side_marks, "side_expected": self.side_expected,
            "clocks": {k: [c.progress_ns, c.held_ns] for k, c in self.clocks.items()},
            "counters": {"messages": c.messages, "items": c.items, "late_items": c.late_items,
                         "duplicate_messages": c.duplicate_messages,
                         "state_too_large": c.state_too_large,
                         "state_dropped": c.state_dropped},
        }

    def _restore_marker(self, m: Mapping[str, Any]) -> None:
        version = m.get("v", 1)
        if version > ENGINE_VERSION:
            raise ValueError(f"engine state version {version} is newer than this release's "
                             f"{ENGINE_VERSION} (a rollback?)")
        self.offset, self.max_event_ns, self.watermark_ns = (
            m["offset"], m["max_event_ns"], m["watermark_ns"],
        )
        self.emitted = m.get("emitted", 0)
        if version == 1:  # sources as bare offsets; each source's watermark, no idleness
            self.sources = {k: [int(v), 0] for k, v in m["sources"].items()}
            self.marks = {k: [v, 0.0] for k, v in m.get("source_watermarks", {}).items()}
            counters = m
        else:
            self.sources = {k: [int(v[0]), int(v[1])] for k, v in m["sources"].items()}
            self.marks = {k: [v[0], v[1]] for k, v in m["marks"].items()}
            for topic, n in m["expected"].items():
                self.expected[topic] = max(self.expected.get(topic, 0), int(n))
            self.side_marks = {k: [v[0], v[1]] for k, v in m.get("side_marks", {}).items()}
            for topic, n in m.get("side_expected", {}).items():
                self.side_expected[topic] = max(self.side_expected.get(topic, 0), int(n))
            self.ended = bool(m.get("ended", False))
            if self._new_clock is not None:
                for k, (progress, held) in m.get("clocks", {}).items():
                    clock = self.clocks[k] = self._new_clock()
                    clock.progress_ns, clock.held_ns = int(progress), held
            counters = m["counters"]
        self.counters = EngineCounters(
            counters["messages"], counters["items"], counters["late_items"],
            counters["duplicate_messages"], counters.get("state_too_large", 0),
            counters.get("state_dropped", 0),
        )

    def restore(self, items: Iterable[tuple[str, bytes | None]]) -> int:
        """Load this partition's entries from the table; returns how many were read."""
        flat: dict[str, Any] = {}  # the previous layout: entries under their own keys
        old: dict[int, dict[int, dict[str, Any]]] = {0: {}, 1: {}}  # and its bundles
        bases: dict[int, dict[int, dict[str, Any]]] = {0: {}, 1: {}}
        logs: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        keys: dict[tuple[str, int, int], str] = {}
        sizes: dict[tuple[str, int], int] = defaultdict(int)  # bytes of each base / log read
        n = unreadable = 0
        for key, raw in items:
            if not key.startswith(self.prefix) or raw is None:
                continue
            n += 1
            rest = key[len(self.prefix):]
            try:
                head, _, tail = rest.partition("/")
                if head in (BASE_KEY, LOG_KEY, FLUSH_KEY) and tail.count("/") == 1:
                    a, i = (int(x) for x in tail.split("/"))
                    into = {BASE_KEY: bases, LOG_KEY: logs, FLUSH_KEY: old}[head]
                    into[a][i] = orjson.loads(raw)
                    keys[(head, a, i)] = key
                    sizes[(head, a)] += len(raw)
                else:
                    flat[rest] = orjson.loads(raw)
            except (ValueError, KeyError) as exc:
                unreadable += 1
                log.error("partition %d: state entry %s cannot be read (%s); dropped",
                          self.partition, key, exc)
        state: dict[str, Any] = {}
        best = _newest_complete(bases)
        if best is not None:  # this layout: the newest whole base
            slot, seq = best
            _apply_entries(state, bases[slot])
            self._base_bytes = sizes[(BASE_KEY, slot)]
            self._slot, self._need_base = 1 - slot, False
            self._garbage += [self.prefix + k for k in flat]
            self._garbage += [key for (head, a, _i), key in sorted(keys.items())
                              if head == FLUSH_KEY or (head == BASE_KEY and a != slot)]
        else:  # the previous layout (or nothing): entries, then its newest whole bundle
            state, seq = flat, 0
            newest = _newest_complete(old)
            if newest is not None:  # (its entries' keys carry the partition prefix)
                _apply_entries(state, old[newest[0]], strip=len(self.prefix))
            # The next flush writes a base; everything read here is obsolete after it.
            self._need_base = True
            self._superseded += [self.prefix + k for k in flat]
            self._superseded += [key for (head, _a, _i), key in sorted(keys.items())
                                 if head != LOG_KEY]
        first = seq
        while _complete(logs.get(seq + 1, {}), seq + 1):  # then the logs after it, in order
            seq += 1
            _apply_entries(state, logs[seq])
            self._log_bytes += sizes[(LOG_KEY, seq)]
        self._seq = seq
        for (head, a, _i), key in sorted(keys.items()):
            if head == LOG_KEY:  # applied: obsolete after the next base; else never read
                (self._superseded if first < a <= seq else self._garbage).append(key)
        marker = state.pop(ENGINE_KEY, None)
        if marker is not None:
            try:
                self._restore_marker(marker)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("partition %d: its engine state cannot be read (%s); starting it "
                          "afresh (records may be applied again)", self.partition, exc)
                unreadable += 1
        by_detector: dict[str, dict[str, Any]] = {d.name: {} for d in self.detectors}
        for rest, value in state.items():
            name, _, sub = rest.partition("/")
            if name in by_detector:
                by_detector[name][sub] = value
        for i, d in enumerate(self.detectors):
            if not by_detector[d.name]:
                continue
            try:
                d.restore(by_detector[d.name])
            except Exception as exc:
                self.counters.state_dropped += len(by_detector[d.name])
                log.error("partition %d: detector %s cannot restore its state (%s: %s); "
                          "it starts afresh", self.partition, d.name, type(exc).__name__, exc)
                self.detectors[i] = self._rebuild(d)
        unreadable += sum(d.dropped_on_restore for d in self.detectors)
        self.counters.state_dropped += unreadable
        return n

    def tracked(self) -> int:
        return sum(d.stats().tracked for d in self.detectors)


def keyed_layout(engine: PartitionEngine, signal: str, spans_topic: str, spans_routed: str,
                 inputs: int, partitions: int) -> None:
    """Input keyed by trace id (``OTLP_SPANS_KEYING=trace_id``), after a restore: a span
    partition hears from the input partitions forwarded to it (``i % partitions``), the next
    stages from the span partitions that get any (``min(inputs, partitions)``). State saved
    before the keying was set expected every one of them, and would wait for ever."""
    senders = records.span_senders(True, inputs, partitions)
    if signal == "spans":
        engine.only_sources(spans_topic, lambda i: i % partitions == engine.partition,
                            records.keyed_sources(inputs, partitions, engine.partition))
    elif signal == "traces":
        engine.only_sources(spans_routed, lambda q: q < senders, senders)
    elif engine.side_expected:
        engine.only_sources(spans_routed, lambda q: q < senders, senders, side=True)


def _complete(chunks: Mapping[int, Mapping[str, Any]], seq: int | None = None) -> bool:
    """Every chunk of one write is there, all of the same write (``seq``, if given)."""
    head = chunks.get(0)
    if head is None or (seq is not None and head["seq"] != seq):
        return False
    return all(i in chunks and chunks[i]["seq"] == head["seq"] for i in range(head["n"]))


def _apply_entries(state: dict[str, Any], chunks: Mapping[int, Mapping[str, Any]],
                   strip: int = 0) -> None:
    """One complete write's entries onto ``state`` in chunk order (None deletes); ``strip``
    characters are cut from each key."""
    for i in range(chunks[0]["n"]):
        for key, value in chunks[i]["entries"].items():
            if value is None:
                state.pop(key[strip:], None)
            else:
                state[key[strip:]] = value


def _newest_complete(slots: Mapping[int, Mapping[int, Mapping[str, Any]]]
                     ) -> tuple[int, int] | None:
    """(slot, seq) of the newest complete write among two alternating slots."""
    best = None
    for slot, chunks in slots.items():
        if _complete(chunks) and (best is None or chunks[0]["seq"] > best[1]):
            best = (slot, chunks[0]["seq"])
    return best

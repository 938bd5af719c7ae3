"""Every routed message processed once, in order: a guard against a consumer that skips. Pure.

Routed topics are plain logs (not compacted, no transactions), so their offsets are
contiguous and a partition's messages must reach its engine one after another. A message past
the next expected one means the consumer skipped some: the broker deleted them before they
were read (a size or time retention shorter than the backlog: the consumer resets to the
partition's first offset), or faust-streaming skipped them around a rebalance
(faust-streaming/faust#216). Either is a silent loss, since the offsets after it are
acknowledged and committed. The first message expected is the one after what the restored
state covers; with nothing saved, the partition's first one (``expect_first``): after a
SIGKILL the consumer was seen to start a partition with no state saved past offsets never
applied, as it starts others past their restored state. ``OffsetGuard`` tells the wiring,
per message, to process it, or to skip it and seek back to the first one missing. Messages that
arrive while it waits for that one are skipped (the seek delivers them again). ``due`` says
which partitions to seek again, every ``reseek_s`` until the missing one comes (a batch the
consumer fetched before the seek can still be in flight and move its read position past the
target again), and after ``give_up_s`` the missing messages are taken as gone
(deleted by retention, say): they are counted as lost and the guard resumes from the first
message it skipped.

Time here is the caller's monotonic clock: this is flow control, not detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["process", "skip", "seek"]


@dataclass
class _Wait:
    target: int  # the first missing offset, sought back to
    since: float  # when the guard started waiting for it
    sought_at: float  # when it last sought
    first_skipped: int  # the lowest offset skipped since


@dataclass
class OffsetGuard:
    reseek_s: float = 5.0
    give_up_s: float = 60.0
    next: dict[int, int] = field(default_factory=dict)  # partition -> next offset expected
    waiting: dict[int, _Wait] = field(default_factory=dict)
    gaps: int = 0  # skips found (each seeks back once at least)
    lost: int = 0  # messages given up on
    # Partitions with no saved state whose first offset the wiring has to look up (``start``).
    unstarted: set[int] = field(default_factory=set)

    def expect(self, partition: int, offset: int) -> None:
        """The next offset of ``partition`` is ``offset`` (restored state resumes after it)."""
        self.next[partition] = offset
        self.waiting.pop(partition, None)
        self.unstarted.discard(partition)

    def expect_first(self, partition: int) -> None:
        """Nothing of ``partition`` was saved, so nothing of it was applied: the next message
        to process is its first available one, whatever the consumer resumes at (offsets
        committed by a worker whose state never reached the changelog). The caller looks that
        offset up and passes it to ``start``."""
        self.forget(partition)
        self.unstarted.add(partition)

    def start(self, partition: int, first: int | None) -> None:
        """``partition``'s first available offset, after ``expect_first`` (None: unknown, so
        whatever comes first is taken). Nothing if the partition was forgotten meanwhile."""
        if partition not in self.unstarted:
            return
        self.unstarted.discard(partition)
        if first is not None:
            self.next[partition] = first

    def forget(self, partition: int) -> None:
        """The partition was revoked: what comes after a new assignment starts afresh."""
        self.next.pop(partition, None)
        self.waiting.pop(partition, None)
        self.unstarted.discard(partition)

    def check(self, partition: int, offset: int, now: float) -> tuple[Action, int]:
        """What to do with the message at ``offset``: ``("process", offset)``,
        ``("skip", offset)`` or ``("seek", to)`` (skip it and seek the partition to ``to``)."""
        wait = self.waiting.get(partition)
        if wait is not None:
            if offset <= wait.target:  # the seek took effect (or an older one, a duplicate)
                if offset == wait.target:
                    del self.waiting[partition]
                    self.next[partition] = offset + 1
                return "process", offset
            wait.first_skipped = min(wait.first_skipped, offset)
            if now - wait.since >= self.give_up_s:  # never came: resume from what did
                return self._resume(partition, wait.first_skipped, offset, now)
            return "skip", offset
        expected = self.next.get(partition)
        if expected is not None and offset > expected:  # a skip
            self.gaps += 1
            self.waiting[partition] = _Wait(expected, now, now, offset)
            return "seek", expected
        if expected is None or offset + 1 > expected:
            self.next[partition] = offset + 1
        return "process", offset

    def gone(self, partition: int, first: int, offset: int, now: float) -> tuple[Action, int]:
        """The partition's first available offset is ``first``: the messages waited for
        before it are gone (deleted by the topic's retention before they were read). Count
        them lost and go on from ``first``; ``offset`` is the message at hand."""
        wait = self.waiting.get(partition)
        if wait is None or first <= wait.target:
            return ("seek", wait.target) if wait is not None else ("process", offset)
        return self._resume(partition, first, offset, now)

    def _resume(self, partition: int, first: int, offset: int, now: float) -> tuple[Action, int]:
        """The messages waited for before ``first`` are lost: count them and go on from
        ``first`` (``offset`` is the message at hand)."""
        wait = self.waiting.pop(partition)
        self.lost += first - wait.target
        if offset == first:
            self.next[partition] = offset + 1
            return "process", offset
        self.waiting[partition] = _Wait(first, now, now, min(wait.first_skipped, offset))
        return "seek", first

    def due(self, now: float) -> list[tuple[int, int]]:
        """Partitions to seek again, with their targets: those waiting for ``reseek_s`` since
        their last seek (called from a timer: once the consumer drops what it re-reads, no
        message may come to prompt it)."""
        out = []
        for partition, wait in sorted(self.waiting.items()):
            if now - wait.sought_at >= self.reseek_s:
                wait.sought_at = now
                out.append((partition, wait.target))
        return out

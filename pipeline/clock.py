"""How far each input partition has got in event time, as the ingest stage reads it. Pure.

The detection stage's watermark is the minimum over the input partitions (*sources*) feeding a
routed partition of how far each has got, so one partition read ahead of another (a backlog,
an uneven fetch, a second worker joining) holds the watermark back instead of making the
others' records late. That only works if each source's progress is robust:

- **A clock ahead of its record.** A record's items are compared with the record's own Kafka
  timestamp (when the exporter sets it, as the Collector does): an item more than
  ``ahead_tolerance_ns`` past it (a host with a bad clock) is processed, but does not move its
  source's progress (counted ``clock_ahead``).
- **A record far ahead of its source.** A record whose newest item is more than ``jump_ns``
  past the source's progress is *held*: it moves the progress only once the next record
  confirms the jump (its time is at or after the held one — a real quiet gap in bursty
  traffic), and is discarded (``jump_discarded``) when the next record falls back (a lone
  record with a bad clock and no usable record timestamp). A source's first record waits for
  its second the same way. A source that goes idle releases what it holds.
- **Idleness is processing time**, as Flink's ``withIdleness``: a source read to its end that
  has had no new record for a while is *idle* and stops holding the watermark back. How far
  it is behind in event time says nothing about that: in a fast replay, a partition past a
  quiet gap is minutes ahead of the others while they still have records waiting.

The watermark a source states is ``progress - lateness``: items older than that are late.

    >>> c = SourceClock(lateness_ns=5, jump_ns=60, ahead_tolerance_ns=30)
    >>> c.observe([100], record_ns=None), c.observe([110], record_ns=None), c.watermark_ns
    (None, None, 105)
    >>> c.observe([2000], record_ns=None), c.watermark_ns  # far ahead: held
    (None, 105)
    >>> c.observe([120], record_ns=None), c.watermark_ns, c.counts["jump_discarded"]
    (None, 115, 1)
    >>> c.observe([130, 900], record_ns=125), c.watermark_ns, c.counts["clock_ahead"]
    (None, 125, 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Counter names (metric label values).
REASONS = ("clock_ahead", "jump_held", "jump_discarded")


class SourceClock:
    """One input partition's progress in event time; see the module docstring."""

    __slots__ = ("lateness_ns", "jump_ns", "ahead_ns", "progress_ns", "held_ns", "counts")

    def __init__(self, lateness_ns: int, jump_ns: int, ahead_tolerance_ns: int) -> None:
        self.lateness_ns, self.jump_ns, self.ahead_ns = lateness_ns, jump_ns, ahead_tolerance_ns
        self.progress_ns = 0  # newest event time this source has reliably reached
        self.held_ns: int | None = None  # a far-ahead record's time, waiting for the next
        self.counts = dict.fromkeys(REASONS, 0)

    @classmethod
    def from_settings(cls, settings: Any) -> SourceClock:
        """``ALLOWED_LATENESS_S``, ``SOURCE_JUMP_S``, ``CLOCK_AHEAD_TOLERANCE_S``."""
        s = settings
        return cls(int(s.allowed_lateness_s * 1e9), int(s.source_jump_s * 1e9),
                   int(s.clock_ahead_tolerance_s * 1e9))

    @property
    def watermark_ns(self) -> int:
        return max(self.progress_ns - self.lateness_ns, 0) if self.progress_ns else 0

    def observe(self, times: Iterable[int], record_ns: int | None) -> None:
        """Fold one record: its items' event times and its Kafka timestamp (None if unset)."""
        limit = record_ns + self.ahead_ns if record_ns else None
        newest = 0
        for t in times:
            if limit is not None and t > limit:
                self.counts["clock_ahead"] += 1
            elif t > newest:
                newest = t
        if newest:
            self._advance(newest)

    def _advance(self, t: int) -> None:
        held = self.held_ns
        if held is not None:
            self.held_ns = None
            if t >= held:  # time went on past the held record: the jump was real
                self.progress_ns = max(self.progress_ns, held)
            else:  # the next record fell back: the held one was ahead of its source
                self.counts["jump_discarded"] += 1
        if not self.progress_ns or t > self.progress_ns + self.jump_ns:
            self.held_ns = t
            self.counts["jump_held"] += 1
        elif t > self.progress_ns:
            self.progress_ns = t

    def release(self) -> None:
        """The source went idle: nothing will confirm or contradict a held record, so it
        counts (a burst that ended with one record)."""
        if self.held_ns is not None:
            self.progress_ns = max(self.progress_ns, self.held_ns)
            self.held_ns = None

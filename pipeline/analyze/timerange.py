"""Durations and times as a person writes them on a command line. Pure.

    >>> parse_duration_ns("1h30m") // 10**9, parse_duration_ns("500ms"), parse_duration_ns("2")
    (5400, 500000000, 2000000000)
    >>> now = 1_767_600_000 * 10**9
    >>> parse_time_ns("now-15m", now) == now - 900 * 10**9, parse_time_ns("-1h", now) < now
    (True, True)
    >>> parse_time_ns("2026-01-05T08:00:00Z", now)
    1767600000000000000
"""

from __future__ import annotations

import re
from datetime import datetime

from pipeline.durations import parse_duration_ns

__all__ = ["parse_duration_ns", "parse_time_ns"]


def parse_time_ns(text: str, now_ns: int) -> int:
    """An RFC 3339 time (``2026-01-05T08:00:00Z``, an offset or ``Z`` required), ``now``,
    ``now-<duration>``, ``-<duration>`` or ``<duration> ago`` (relative to ``now_ns``), or Unix
    seconds."""
    s = text.strip()
    low = s.lower()
    if low == "now":
        return now_ns
    for prefix in ("now-", "-"):
        if low.startswith(prefix):
            return now_ns - parse_duration_ns(low[len(prefix):])
    if low.endswith(" ago"):
        return now_ns - parse_duration_ns(low[:-4])
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return int(float(s) * 10**9)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: write RFC 3339 (2026-01-05T08:00:00Z), "
                         "now, now-1h, -30m or Unix seconds") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset: add Z or +00:00")
    return int(dt.replace(microsecond=0).timestamp()) * 10**9 + dt.microsecond * 1000


def time_range_ns(since: str | None, start: str | None, end: str | None, now_ns: int,
                  default_since: str | None = None) -> tuple[int | None, int | None]:
    """The range ``[from, to)`` of ``--since`` or ``--from``/``--to`` (None: open). ``--since``
    excludes ``--from``/``--to``; ``--to`` alone or ``--from`` alone is open on the other side.

    >>> time_range_ns("1h", None, None, 7200 * 10**9)
    (3600000000000, 7200000000000)
    >>> time_range_ns(None, "-30m", "-10m", 3600 * 10**9)
    (1800000000000, 3000000000000)
    """
    if since and (start or end):
        raise ValueError("give --since or --from/--to, not both")
    if not (since or start or end) and default_since:
        since = default_since
    if since:
        return now_ns - parse_duration_ns(since), now_ns
    lo = parse_time_ns(start, now_ns) if start else None
    hi = parse_time_ns(end, now_ns) if end else None
    if lo is not None and hi is not None and hi <= lo:
        raise ValueError(f"--to ({end}) must be after --from ({start})")
    return lo, hi

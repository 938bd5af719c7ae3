"""Event-time helpers: RFC 3339 text <-> Unix nanoseconds, exactly (no float rounding)."""

from __future__ import annotations

from datetime import UTC, datetime

#: Default replay start: a fixed Monday 08:00 UTC, so replays are byte-for-byte reproducible.
DEFAULT_REPLAY_START = "2026-01-05T08:00:00Z"


def rfc3339(t_ns: int) -> str:
    """``2026-01-05T08:00:00.250Z`` (milliseconds shown only when non-zero).

    >>> rfc3339(1_767_600_000_250_000_000)
    '2026-01-05T08:00:00.250Z'
    """
    secs, rem = divmod(t_ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    ms = rem // 1_000_000
    return f"{base}.{ms:03d}Z" if ms else f"{base}Z"


def parse_time_ns(text: str | int) -> int:
    """Unix nanoseconds from RFC 3339 text (``Z`` or offset), or an int taken as nanoseconds.

    >>> parse_time_ns("2026-01-05T08:00:00Z")
    1767600000000000000
    """
    if isinstance(text, int):
        return text
    s = text.strip()
    if s.isdigit():
        return int(s)
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset; add Z or +00:00")
    whole = int(dt.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + dt.microsecond * 1000

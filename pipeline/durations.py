"""Durations as people write them on command lines and in presets: ``90s``, ``1h30m``,
``500ms``, ``2d``. Pure.

    >>> parse_duration_ns("1h30m") // 10**9, parse_duration_ns("500ms"), parse_duration_ns("45")
    (5400, 500000000, 45000000000)
"""

from __future__ import annotations

import re

UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9, "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")


def parse_duration_ns(text: str) -> int:
    """``90s``, ``1h30m``, ``500ms``, ``2d``; a bare number is seconds."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    try:
        return int(float(s) * 10**9)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * UNITS_NS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 15m, 1h30m, 500ms, 2d")
    return int(total)

"""Log records rate-limited by what they say, so that a broker outage does not flood the log.

With the broker down for 60 s, aiokafka, Faust and asyncio wrote about 18,000 lines: every
reconnect attempt, metadata refresh, fetch, produce and heartbeat failure, and every lost
heartbeat's unretrieved future. ``RateLimit`` lets the first record of each kind through, holds
the same kind for ``every_s``, and then lets one through saying how many it held. A kind is the
logger, the level and the message template (the first line of the message when it has no
arguments: asyncio writes the failed future's repr into it). Pure: no Kafka.

    >>> f = RateLimit(every_s=30.0, clock=iter([0.0, 1.0, 2.0, 40.0]).__next__)
    >>> def rec(msg):
    ...     return logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0, msg, ("x",), None)
    >>> [f.filter(rec("Unable connect to node %s")) for _ in range(3)]
    [True, False, False]
    >>> r = rec("Unable connect to node %s"); f.filter(r), r.getMessage()
    (True, 'Unable connect to node x (2 more like this in the last 40 s)')
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

MAX_KINDS = 1_000  # kinds remembered (the oldest forgotten first)


class RateLimit(logging.Filter):
    def __init__(self, every_s: float = 30.0, min_level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.min_level, self.clock = every_s, min_level, clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or record.name.startswith("pipeline"):
            return True  # the pipeline's own warnings are rate-limited where they are written
        msg = record.msg if isinstance(record.msg, str) else repr(record.msg)
        template = msg if record.args else msg.split("\n", 1)[0]
        kind = (record.name, record.levelno, template)
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.every_s:
            self._last[kind] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last.pop(kind, None)
        self._last[kind] = (now, 0)
        if len(self._last) > MAX_KINDS:
            del self._last[next(iter(self._last))]
        if held:
            since = now - last[0] if last is not None else self.every_s
            record.msg = f"{msg} ({held} more like this in the last {since:.0f} s)"
        return True


def install(every_s: float = 30.0) -> None:
    """Put a ``RateLimit`` on every handler of the root logger, one each (call once logging is
    set up: the records of every library logger pass through those handlers)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RateLimit) for f in handler.filters):
            handler.addFilter(RateLimit(every_s))


def forget(fut: Any) -> None:
    """A send whose outcome nobody waits for (a heartbeat: the next one replaces it): read its
    exception when it fails, so that asyncio does not log it as never retrieved."""
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()

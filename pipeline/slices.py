"""Cooperative time slices on the worker's one event loop. Pure (asyncio only).

Ingest and the detection stages share one event loop. An ``await`` on a coroutine that does
not suspend (a producer send with room in its buffer, a stream whose queue is not empty) does
not hand the loop over, so a task working through a backlog could run for seconds while the
others waited: a metrics flood held the live span stream still for up to 20 s (issue 16),
ingest decoding its fetched records one after another, a few milliseconds each. A task calls
``pause()`` between units of work; once it has run ``slice_s`` since it last handed the loop
over, the call does, and the other ready tasks get their turn. (The slice counts from the
task's last ``pause()`` that yielded, not from its last wait of any kind, so the first call
after a wait may yield early: harmless.)
"""

from __future__ import annotations

import asyncio
import time

SLICE_S = 0.005  # the longest a task works before it lets the others run


class TimeSlice:
    __slots__ = ("slice_s", "_since", "yields")

    def __init__(self, slice_s: float = SLICE_S) -> None:
        self.slice_s = slice_s
        self._since = time.perf_counter()
        self.yields = 0

    async def pause(self) -> None:
        """Hand the loop over if this task has had it for ``slice_s`` or more."""
        if time.perf_counter() - self._since >= self.slice_s:
            await asyncio.sleep(0)
            self.yields += 1
            self._since = time.perf_counter()

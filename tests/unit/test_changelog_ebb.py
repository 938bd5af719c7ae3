"""Back-pressure on Faust's changelog buffer (issue 16): the stage whose flush filled it waits
until it is no fuller than the flush found it (or ``CHANGELOG_BUFFER_HIGH``); a stage that
added little to a buffer others filled waits only for its own share; the conductor, which
delivers every stage's messages, does not wait at all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pipeline import app as app_module
from pipeline.app import CHANGELOG_BUFFER_HIGH, Pipeline
from pipeline.ingest import RateLimitedLog


class Buffer:
    """A changelog buffer that sends ``rate`` messages every 10 ms."""

    def __init__(self, size: int, rate: int) -> None:
        self.size, self.rate = size, rate

    async def drain(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.size = max(0, self.size - self.rate)


def waits(size: int, found: int, rate: int) -> int:
    buffer = Buffer(size, rate)
    p: Any = SimpleNamespace(app=SimpleNamespace(producer=SimpleNamespace(buffer=buffer)),
                             _send_log=RateLimitedLog(app_module.log))

    async def go() -> None:
        draining = asyncio.create_task(buffer.drain())
        try:
            await asyncio.wait_for(Pipeline._changelog_ebb(p, found), timeout=10)
        finally:
            draining.cancel()

    asyncio.run(go())
    return buffer.size


def test_a_flush_that_filled_the_buffer_waits_until_it_is_down_to_the_high_mark() -> None:
    left = waits(size=CHANGELOG_BUFFER_HIGH + 500, found=0, rate=10)
    assert CHANGELOG_BUFFER_HIGH - 10 <= left <= CHANGELOG_BUFFER_HIGH


def test_a_small_flush_into_a_buffer_others_filled_waits_only_for_its_own_writes() -> None:
    # Another stage left 20,000; this flush added 50: it waits for 50 to go, not 19,900.
    left = waits(size=20_050, found=20_000, rate=10)
    assert 19_990 <= left <= 20_000


def test_no_wait_at_or_below_the_high_mark() -> None:
    assert waits(size=CHANGELOG_BUFFER_HIGH, found=0, rate=10) == CHANGELOG_BUFFER_HIGH


def test_the_conductor_no_longer_waits_on_the_buffer(tmp_path) -> None:
    """Faust's own check (``max_messages``: 100) is moved out of the way on the app's buffer
    (no broker is contacted to build the app)."""
    from prometheus_client import CollectorRegistry

    from pipeline.settings import Settings

    p = Pipeline(Settings.from_env({"PIPELINE_DATA_DIR": str(tmp_path)}), CollectorRegistry())
    assert p.app.producer.buffer.max_messages == app_module.CONDUCTOR_BUFFER_LIMIT

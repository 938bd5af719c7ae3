"""A broker outage does not flood the log: library records rate-limited by kind, and failed
heartbeat sends (nobody awaits them) not reported as never-retrieved futures."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from pipeline.loglimit import RateLimit, forget, install


def test_an_outage_worth_of_library_errors_becomes_a_few_lines() -> None:
    t = [0.0]
    limit = RateLimit(every_s=30.0, clock=lambda: t[0])
    passed = []
    for i in range(6001):  # 60 s of reconnect attempts, 100 a second, two kinds
        t[0] = i / 100
        for name, msg, args in (
                ("aiokafka.conn", "Unable connect to node with id %s: %s", (1, "refused")),
                ("aiokafka.cluster", "Unable to update metadata from %s", (1,))):
            rec = logging.LogRecord(name, logging.ERROR, "", 0, msg, args, None)
            if limit.filter(rec):
                passed.append(rec.getMessage())
    assert len(passed) == 6  # each kind at 0, 30 and 60 s
    assert passed[2].endswith("(2999 more like this in the last 30 s)")
    # The pipeline's own records and records below WARNING are not touched.
    own = logging.LogRecord("pipeline.ingest", logging.ERROR, "", 0, "x %s", (1,), None)
    info = logging.LogRecord("aiokafka", logging.INFO, "", 0, "y", None, None)
    assert all(limit.filter(own) for _ in range(3)) and all(limit.filter(info) for _ in range(3))


def test_install_puts_one_filter_on_each_root_handler() -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    saved = root.handlers[:]  # (pytest's own handlers must not get the filter)
    root.handlers[:] = [handler]
    try:
        install()
        install()
        assert sum(isinstance(f, RateLimit) for f in handler.filters) == 1
    finally:
        root.handlers[:] = saved


def test_a_forgotten_failed_send_is_not_logged_as_never_retrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for forgotten in (True, False):
            fut = loop.create_future()
            if forgotten:
                forget(fut)
            fut.set_exception(ConnectionError("broker down"))
            await asyncio.sleep(0)
            del fut
            gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
    never = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(never) == 1  # only the one not forgotten

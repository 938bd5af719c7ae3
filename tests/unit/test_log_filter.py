"""The worker lets Faust's backpressure warning through once a minute, with a count."""

from __future__ import annotations

import logging

from pipeline.__main__ import _EveryMinute


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("faust.transport.producer", logging.WARNING, "", 0, msg, None, None)


def test_repeats_are_held_and_counted_other_messages_pass(monkeypatch) -> None:
    clock = iter([1000.0, 1001.0, 1002.0, 1070.0])
    monkeypatch.setattr("pipeline.__main__.time.monotonic", lambda: next(clock))
    f = _EveryMinute("producer buffer full")
    assert f.filter(record("producer buffer full size 101"))
    assert not f.filter(record("producer buffer full size 102"))
    assert not f.filter(record("producer buffer full size 103"))
    assert f.filter(record("something else"))
    late = record("producer buffer full size 150")
    assert f.filter(late)
    assert "2 more in the last minute" in late.getMessage()

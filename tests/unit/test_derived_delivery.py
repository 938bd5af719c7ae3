"""Derived and dead-letter messages of a partition during a broker outage: sent again after
transient failures, from the first failed message of each destination on and in order; a
permanent failure still exits the worker (it restarts from its last saved state)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, LeaderNotAvailableError, RecordTooLargeError

from pipeline import app as app_module
from pipeline.app import Pipeline, _Send
from pipeline.ingest import RateLimitedLog, failed_send


class FlakyProducer:
    """Fails the first ``failures`` sends of each listed value, acknowledges the rest."""

    def __init__(self, fail: dict[bytes, list[BaseException]]) -> None:
        self.fail = fail
        self.sent: list[tuple[str, int | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, value))
        errors = self.fail.get(value)
        if errors:
            return failed_send(errors.pop(0))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def pipeline_with(producer: FlakyProducer) -> Any:
    p = SimpleNamespace(_send_log=RateLimitedLog(app_module.log))

    async def derived_producer() -> FlakyProducer:
        return producer

    p._derived_producer = derived_producer
    p._send = lambda msg, prod=None: Pipeline._send(p, msg, prod)
    return p


async def queue(p: Any, st: Any, msgs: list[tuple[str, int | None, bytes]]) -> None:
    for topic, partition, value in msgs:
        st.sending[0].append(await p._send(_Send(None, topic, value, partition=partition)))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(app_module.asyncio, "sleep", no_sleep)


async def test_transient_failures_are_sent_again_in_order_from_the_first_failed() -> None:
    producer = FlakyProducer({b"a2": [KafkaConnectionError("down"), LeaderNotAvailableError()],
                              b"b1": [KafkaConnectionError("down")]})
    p, st = pipeline_with(producer), SimpleNamespace(sending=defaultdict(list))
    await queue(p, st, [("t", 0, b"a1"), ("t", 0, b"a2"), ("t", 0, b"a3"), ("t", 1, b"b1"),
                        ("dlq", None, b"d1")])
    await Pipeline._await_derived(p, st, 0)
    # a1 and d1 went through at once; a2 failed twice, so a2 and a3 (after it, same
    # destination) were sent again twice; b1 once more.
    assert [v for _, _, v in producer.sent] == [
        b"a1", b"a2", b"a3", b"b1", b"d1",  # first round
        b"a2", b"a3", b"b1",  # second: from the first failure of each destination
        b"a2", b"a3",  # third
    ]
    assert 0 not in st.sending


async def test_a_permanent_failure_exits_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(app_module.os, "_exit", fake_exit)
    producer = FlakyProducer({b"big": [RecordTooLargeError()]})
    p, st = pipeline_with(producer), SimpleNamespace(sending=defaultdict(list))
    await queue(p, st, [("t", 0, b"big")])
    with pytest.raises(SystemExit):
        await Pipeline._await_derived(p, st, 0)
    assert exits == [70] and len(producer.sent) == 1

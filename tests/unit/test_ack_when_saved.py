"""A flush acknowledges its routed messages only once the broker has the changelog writes
that hold their effects (``Pipeline._ack_when_saved``): Faust commits what is acknowledged,
and a commit ahead of the saved state loses those messages when the worker dies. A failed
write leaves them unacknowledged, for the next flush, which writes the whole state."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from pipeline import app as app_module
from pipeline.app import Pipeline
from pipeline.engine import PartitionEngine
from pipeline.ingest import RateLimitedLog


class Stream:
    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


def pipeline_and_stream(sent: list[asyncio.Future[Any]], engine: PartitionEngine
                        ) -> tuple[Any, Any, Stream]:
    st: Any = SimpleNamespace(table=SimpleNamespace(sent=sent), engines={0: engine},
                              pending=defaultdict(list), signal="spans")
    p: Any = SimpleNamespace(_acking=set(), _send_log=RateLimitedLog(app_module.log))
    p._acknowledge = lambda *a: Pipeline._acknowledge(p, *a)
    return p, st, Stream()


def test_messages_are_acknowledged_only_once_their_state_is_on_the_broker() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        writes = [loop.create_future(), loop.create_future()]
        engine = PartitionEngine(0, [], 0)
        p, st, stream = pipeline_and_stream(list(writes), engine)
        await Pipeline._ack_when_saved(p, stream, st, 0, engine, ["m1", "m2"])
        assert st.table.sent == []  # taken: the next flush collects its own
        await asyncio.sleep(0.01)
        assert stream.acked == []
        writes[0].set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == []  # one write still in flight
        writes[1].set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == ["m1", "m2"] and not p._acking

    asyncio.run(go())


def test_saved_already_acknowledges_at_once() -> None:
    async def go() -> None:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        engine = PartitionEngine(0, [], 0)
        p, st, stream = pipeline_and_stream([done], engine)
        await Pipeline._ack_when_saved(p, stream, st, 0, engine, ["m1"])
        assert stream.acked == ["m1"] and not p._acking

    asyncio.run(go())


def test_a_failed_write_leaves_its_messages_for_the_next_flush_which_writes_a_base() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        engine = PartitionEngine(0, [], 0)
        engine.changes()  # the first base
        p, st, stream = pipeline_and_stream([failed], engine)
        st.pending[0].append("m3")  # applied since
        await Pipeline._ack_when_saved(p, stream, st, 0, engine, ["m1", "m2"])
        failed.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0.01)
        assert stream.acked == []
        assert st.pending[0] == ["m1", "m2", "m3"]
        assert any("/__base__/" in k for k, _ in engine.changes())

    asyncio.run(go())


def test_a_revoked_partition_gets_nothing_back() -> None:
    async def go() -> None:
        failed = asyncio.get_running_loop().create_future()
        engine = PartitionEngine(0, [], 0)
        p, st, stream = pipeline_and_stream([failed], engine)
        await Pipeline._ack_when_saved(p, stream, st, 0, engine, ["m1"])
        st.engines.pop(0)  # revoked meanwhile: the new owner redoes it from the table
        failed.set_exception(RuntimeError("revoked"))
        await asyncio.sleep(0.01)
        assert stream.acked == [] and 0 not in st.pending

    asyncio.run(go())

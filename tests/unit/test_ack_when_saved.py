"""A flush acknowledges its routed messages only once the broker has the changelog writes
that hold their effects (``Pipeline._ack_when_saved``): Faust commits what is acknowledged,
and a commit ahead of the saved state loses those messages when the worker dies. Flushes are
acknowledged in order. A failed write leaves its messages unacknowledged, and those of the
flushes made after it, for the next flush, which writes the whole state."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from pipeline import app as app_module
from pipeline.app import Pipeline, _written_key
from pipeline.engine import PartitionEngine
from pipeline.ingest import RateLimitedLog


class Stream:
    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


class Table:
    """The changelog sends a flush's writes made (``SavedTable.take_sent``)."""

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[Any]] = []

    def take_sent(self) -> list[asyncio.Future[Any]]:
        sent, self.sent = self.sent, []
        return sent


def setup(engine: PartitionEngine) -> tuple[Any, Any, Stream]:
    st: Any = SimpleNamespace(table=Table(), engines={0: engine},
                              pending=defaultdict(list), signal="spans",
                              flushes=defaultdict(int), acks={}, redo_below={})
    p: Any = SimpleNamespace(_acking=set(), _send_log=RateLimitedLog(app_module.log))
    p._acknowledge = lambda *a: Pipeline._acknowledge(p, *a)
    return p, st, Stream()


async def flush(p: Any, st: Any, stream: Stream, events: list[str], n: int = 1
                ) -> list[asyncio.Future[Any]]:
    """A flush of ``n`` changelog writes covering ``events``; its write futures."""
    loop = asyncio.get_running_loop()
    writes = [loop.create_future() for _ in range(n)]
    st.table.sent = list(writes)
    Pipeline._ack_when_saved(p, stream, st, 0, events)
    return writes


def settle() -> Any:
    return asyncio.sleep(0.01)


def test_messages_are_acknowledged_only_once_their_state_is_on_the_broker() -> None:
    async def go() -> None:
        p, st, stream = setup(PartitionEngine(0, [], 0))
        writes = await flush(p, st, stream, ["m1", "m2"], n=2)
        assert st.table.sent == []  # taken: the next flush collects its own
        await settle()
        assert stream.acked == []
        writes[0].set_result(None)
        await settle()
        assert stream.acked == []  # one write still in flight
        writes[1].set_result(None)
        await settle()
        assert stream.acked == ["m1", "m2"] and not p._acking

    asyncio.run(go())


def test_flushes_are_acknowledged_in_order() -> None:
    async def go() -> None:
        p, st, stream = setup(PartitionEngine(0, [], 0))
        first = await flush(p, st, stream, ["m1"])
        second = await flush(p, st, stream, ["m2"])
        second[0].set_result(None)
        await settle()
        assert stream.acked == []  # saved, but after a flush that is not yet
        first[0].set_result(None)
        await settle()
        assert stream.acked == ["m1", "m2"]

    asyncio.run(go())


def test_a_failed_write_holds_back_its_flush_and_later_ones_until_a_base_is_saved() -> None:
    async def go() -> None:
        engine = PartitionEngine(0, [], 0)
        engine.changes()  # the first base
        p, st, stream = setup(engine)
        first = await flush(p, st, stream, ["m1", "m2"])
        second = await flush(p, st, stream, ["m3"])  # made before the failure is known
        second[0].set_result(None)
        first[0].set_exception(RuntimeError("broker gone"))
        await settle()
        assert stream.acked == []
        assert sorted(st.pending[0]) == ["m1", "m2", "m3"]
        assert any("/__base__/" in k for k, _ in engine.changes())  # the next flush
        third = await flush(p, st, stream, list(st.pending[0]))
        third[0].set_result(None)
        await settle()
        assert sorted(stream.acked) == ["m1", "m2", "m3"]

    asyncio.run(go())


def test_a_base_that_failed_is_written_again_in_its_own_slot() -> None:
    engine = PartitionEngine(0, [], 0)
    writes = engine.changes()
    failed_slot = int(next(k for k, _ in writes if "/__base__/" in k).split("/")[2])
    fut = SimpleNamespace(message=SimpleNamespace(key=f"0/__base__/{failed_slot}/0".encode()))
    assert _written_key(fut) == f"0/__base__/{failed_slot}/0"
    engine.rebase([_written_key(fut)])
    again = engine.changes()
    assert any(k.startswith(f"0/__base__/{failed_slot}/") for k, _ in again)


def test_a_failed_log_write_leaves_the_base_slots_alternating() -> None:
    engine = PartitionEngine(0, [], 0)
    first = int(next(k for k, _ in engine.changes() if "/__base__/" in k).split("/")[2])
    engine.rebase(["0/__log__/7/0"])
    again = engine.changes()
    assert any(k.startswith(f"0/__base__/{1 - first}/") for k, _ in again)


def test_a_revoked_partition_gets_nothing_back() -> None:
    async def go() -> None:
        p, st, stream = setup(PartitionEngine(0, [], 0))
        writes = await flush(p, st, stream, ["m1"])
        st.engines.pop(0)  # revoked meanwhile: the new owner redoes it from the table
        writes[0].set_exception(RuntimeError("revoked"))
        await settle()
        assert stream.acked == [] and 0 not in st.pending

    asyncio.run(go())

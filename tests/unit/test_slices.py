"""A task working through a backlog without suspending lets the others run between units."""

from __future__ import annotations

import asyncio
import time

from pipeline.slices import TimeSlice


async def busy(units: int, unit_s: float, slice_: TimeSlice | None) -> None:
    for _ in range(units):
        end = time.perf_counter() + unit_s
        while time.perf_counter() < end:  # synchronous work, as a decode is
            pass
        if slice_ is not None:
            await slice_.pause()


async def turns_while_busy(slice_: TimeSlice | None) -> int:
    """How many times another ready task ran while ``busy`` did 60 units of 10 ms."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = turns
    await busy(60, 0.01, slice_)
    during = turns - before
    task.cancel()
    return during


async def test_without_pauses_the_others_wait_for_the_whole_backlog() -> None:
    assert await turns_while_busy(None) == 0


async def test_with_pauses_the_others_run_once_a_slice() -> None:
    slice_ = TimeSlice(0.05)
    turns = await turns_while_busy(slice_)
    # 0.6 s (or more, on a loaded machine) of work in slices of 0.05 s: a turn every 5 units
    # or so, never after each one.
    assert turns == slice_.yields
    assert 8 <= turns < 40


async def test_a_short_run_does_not_yield() -> None:
    slice_ = TimeSlice(10.0)
    await busy(5, 0.001, slice_)
    assert slice_.yields == 0

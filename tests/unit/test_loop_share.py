"""`on_loop` counts the steps of the awaited coroutine, not what other tasks do while it waits."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.worker.loop_share import on_loop


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def work() -> str:
    busy(0.05)
    await asyncio.sleep(0.2)  # another task runs meanwhile
    busy(0.05)
    return "done"


async def other() -> None:
    await asyncio.sleep(0.01)
    busy(0.15)


def test_only_the_awaited_coroutines_own_steps_are_counted() -> None:
    spent: list[float] = []

    async def main() -> str:
        neighbour = asyncio.ensure_future(other())
        result = await on_loop(work(), spent.append)
        await neighbour
        return result

    started = time.perf_counter()
    assert asyncio.run(main()) == "done"
    wall = time.perf_counter() - started
    assert wall >= 0.3  # the neighbour's 0.15 s and the sleep happened while `work` waited
    # only work's two busy steps (and its awaits' own parts): with the neighbour's it would be >= 0.25
    assert 0.1 <= sum(spent) < 0.2
    assert len(spent) >= 2


def test_errors_and_cancellation_reach_the_coroutine_and_the_caller() -> None:
    spent: list[float] = []
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")

    async def main() -> None:
        task = asyncio.ensure_future(on_loop(waits(), spent.append))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == ["finally"] and spent

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def awaits_it() -> None:
        await on_loop(fails(), spent.append)

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(awaits_it())

"""A stage consumer's `close` while the broker is down: aiokafka's fetcher, cancelled by the stop,
re-raises CancelledError from `AIOKafkaConsumer.stop`. That ended the worker's shutdown before
Faust's consumer thread was stopped (the process then took 72 s to exit); `close` must return."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.worker.consumer import BatchConsumer, StageHooks


class _FetcherCancelledOnStop:
    def __init__(self) -> None:
        self.stopped = False

    def assignment(self) -> set[Any]:
        return set()

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.sleep(0.05)  # closing connections
        raise asyncio.CancelledError  # what aiokafka's Fetcher.close lets out


async def _nothing(*_: Any) -> None:
    return None


def _consumer(stub: _FetcherCancelledOnStop) -> BatchConsumer:
    consumer = BatchConsumer(
        "ingest", "127.0.0.1:9", "group", ["topic"], StageHooks(_nothing, _nothing, _nothing),
        max_records=10, on_failure=_nothing,
    )  # fmt: skip
    consumer._consumer = stub  # type: ignore[assignment]
    return consumer


def test_close_returns_when_the_fetcher_was_cancelled_by_the_stop() -> None:
    stub = _FetcherCancelledOnStop()

    async def stop_then_go_on() -> str:
        await _consumer(stub).close()
        return "went on"

    assert asyncio.run(stop_then_go_on()) == "went on"
    assert stub.stopped


def test_close_itself_cancelled_is_still_cancelled() -> None:
    stub = _FetcherCancelledOnStop()

    async def cancelled_close() -> None:
        task = asyncio.ensure_future(_consumer(stub).close())
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_close())

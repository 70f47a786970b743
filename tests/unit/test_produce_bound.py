"""The wait for a send's deliveries is bounded (`pipeline.worker.produce`): a batch the producer
neither delivers nor fails becomes a retryable `KafkaTimeoutError` after two request timeouts and
the slack, a failed batch fails the send at once, and the worker's producer gets the configured
request timeout instead of Faust's 1,200 s. (The real broker frozen mid-send: the integration test
`test_produce.py`.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from prometheus_client import REGISTRY

from pipeline.config import load_settings
from pipeline.worker import produce
from pipeline.worker.health import is_transient


class _Batch:
    def append(self, **_: Any) -> object:
        return object()


class _Producer:
    """What `send_batched` uses of an `AIOKafkaProducer`; each batch's delivery is a future that
    `settle` resolves, fails, or leaves pending. The first `refusals` hand-overs time out as
    aiokafka's `add_batch` does with a queue of batches on the partition (nothing queued)."""

    def __init__(self, request_timeout_ms: int, settle: Any, refusals: int = 0) -> None:
        self._request_timeout_ms = request_timeout_ms
        self._settle = settle
        self.refusals = refusals
        self.queued: list[_Batch] = []

        async def metadata(topic: str) -> None:
            return None

        self.client = SimpleNamespace(_wait_on_metadata=metadata)

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        if self.refusals:
            self.refusals -= 1
            await asyncio.sleep(0.01)
            raise KafkaTimeoutError()
        self.queued.append(batch)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._settle(future)
        return future


def test_a_delivery_that_never_comes_fails_the_send_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(produce, "DELIVERY_SLACK_SECONDS", 0.2)

    async def run() -> tuple[BaseException, float]:
        began = time.monotonic()
        async with asyncio.timeout(10):  # unbounded (before the fix) it waited for ever
            with pytest.raises(KafkaTimeoutError) as raised:
                await produce.send_batched(_Producer(100, lambda f: None), "t", [(b"k", b"v", None)], 0)
        return raised.value, time.monotonic() - began

    error, took = asyncio.run(run())
    assert is_transient(error)
    assert "1 of 1 record batches to t not delivered" in str(error)
    assert 0.4 <= took < 2.0, took  # 2 x 0.1 s + 0.2 s


def test_a_failed_delivery_fails_the_send_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(produce, "DELIVERY_SLACK_SECONDS", 60.0)
    failure = NotLeaderForPartitionError()

    async def run() -> float:
        began = time.monotonic()
        with pytest.raises(NotLeaderForPartitionError):
            await produce.send_batched(
                _Producer(60_000, lambda f: f.set_exception(failure)), "t", [(b"k", b"v", None)], 0
            )
        return time.monotonic() - began

    assert asyncio.run(run()) < 5.0


def test_delivered_batches_give_the_last_offset() -> None:
    delivered = SimpleNamespace(offset=41)
    producer = _Producer(1_000, lambda f: f.set_result(delivered))
    last = asyncio.run(produce.send_batched(producer, "t", [(b"k", b"v", None), (b"k", b"w", None)], 0))
    assert last == 42  # one batch of two from offset 41


def test_a_refused_hand_over_is_tried_again_and_queued_once() -> None:
    producer = _Producer(60_000, lambda f: f.set_result(SimpleNamespace(offset=7)), refusals=5)
    before = REGISTRY.get_sample_value("touchline_producer_handover_retries_total", {"topic": "refused"}) or 0.0
    assert asyncio.run(produce.send_batched(producer, "refused", [(b"k", b"v", None)], 0)) == 7
    assert len(producer.queued) == 1 and producer.refusals == 0
    after = REGISTRY.get_sample_value("touchline_producer_handover_retries_total", {"topic": "refused"})
    assert after == before + 5


def test_hand_overs_refused_until_the_bound_fail_the_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(produce, "DELIVERY_SLACK_SECONDS", 0.2)
    producer = _Producer(100, lambda f: f.set_result(SimpleNamespace(offset=7)), refusals=10_000)

    async def run() -> None:
        async with asyncio.timeout(10):
            await produce.send_batched(producer, "t", [(b"k", b"v", None)], 0)

    with pytest.raises(KafkaTimeoutError):
        asyncio.run(run())
    assert not producer.queued


def test_the_worker_producer_gets_the_configured_request_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.worker.app import faust_app

    monkeypatch.setenv("TOUCHLINE_KAFKA_PRODUCER_REQUEST_TIMEOUT_SECONDS", "7")
    app = faust_app(load_settings(), tmp_path)

    async def made() -> int:
        timeout: int = app.producer._new_producer()._request_timeout_ms
        return timeout

    assert asyncio.run(made()) == 7_000
    assert load_settings().kafka_producer_request_timeout_seconds == 7.0
    monkeypatch.delenv("TOUCHLINE_KAFKA_PRODUCER_REQUEST_TIMEOUT_SECONDS")
    assert load_settings().kafka_producer_request_timeout_seconds == 30.0  # not Faust's 1,200 s

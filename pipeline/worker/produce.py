"""Producing the worker's outputs straight through the Faust app's producer, in record batches.

Not through Faust's `Topic.send`, which adds per-message machinery (futures, channel, callbacks)
that costs more than the send itself, and not one `send` a message either: aiokafka's `send` made
a future, a partition lookup and an accumulator entry per message, 14.2-15.9 µs of CPU, where
filling record batches (`create_batch`, `send_batch`) took 5.7-6.1 µs (50,000 keyed messages of
300 bytes to a real broker, two runs each, `time.process_time`). The partition lists are read once
per call, not per message as `_partition` does: 8.7-10.5 -> 5.5-5.6 µs a keyed message over 24
partitions (100,000 messages, three alternating runs). These outputs come by the
thousand: SLA events, contact records for the journey stage, journey documents, the journey
tables' changelogs, dead letters.

A message goes to the partition aiokafka's `send` would pick (the producer's partitioner, murmur2
of the key by default), batches of one partition are submitted in order, and `produce` returns once
every batch is delivered (acks as the producer is configured), so callers keep their rule: an
output counts as written only when `produce` returned.

The wait for the deliveries is bounded: a batch aiokafka neither delivers nor fails within two of
the producer's request timeouts (one send and one resend) and a few seconds more raises
`KafkaTimeoutError`, which every caller retries and reports to `/health`. Unbounded, a produce
request whose answer never came stopped a journey stage for five minutes without a word (under
Faust's default 1,200 s request timeout, which the worker now sets to
`TOUCHLINE_KAFKA_PRODUCER_REQUEST_TIMEOUT_SECONDS`).

A batch is handed to aiokafka again when its hand-over times out, until the same bound passes
without it being taken: aiokafka's `add_batch` waits for the partition's previous batch to drain,
and subtracts the time since its start from its timeout after each wait, not the time of that
wait, so with many batches queued on a partition it gave up after 1-2 s of a 30 s timeout
(`benchmarks.journey_worker --workers 2 --standby 0`: 18 and 5 journey-document sends failed that
way in two runs, each retried whole; aio-libs/aiokafka pull request 814, open, would replace that
loop). A batch it refused is not queued, so handing it over again sends nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka.errors import KafkaTimeoutError

from pipeline.worker import metrics
from pipeline.worker.sink import Outgoing

YIELD_EVERY = 1_000  # messages put in batches between two yields to the event loop
DELIVERY_SLACK_SECONDS = 5.0  # over two request timeouts: the resend's backoff and metadata wait


async def produce(app: faust.App, topic: str, messages: Iterable[Outgoing], partition: int | None = None) -> int | None:
    """Send `messages` (to `partition`, or each to its key's) and wait until every one is
    delivered. The highest offset written (to one partition: its last message's), None for none."""
    faust_producer: Any = app.producer
    producer = faust_producer._ensure_producer()  # the AIOKafkaProducer Faust's aiokafka driver wraps
    return await send_batched(producer, topic, messages, partition)


async def send_batched(
    producer: Any, topic: str, messages: Iterable[Outgoing], partition: int | None = None
) -> int | None:
    """`produce` with an `aiokafka.AIOKafkaProducer`. The wait for the topic's metadata and the
    partition choice are what its `send` does (`client._wait_on_metadata`, then the producer's
    partitioner over the topic's partitions), with the partition lists read once per call instead
    of once per message, so keyed messages land where every other Kafka producer would put them."""
    await producer.client._wait_on_metadata(topic)
    if partition is None:
        partitioner = producer._partitioner
        all_partitions = list(producer._metadata.partitions_for_topic(topic))
        available = list(producer._metadata.available_partitions_for_topic(topic))
    filling: dict[int, tuple[Any, int]] = {}  # partition -> (batch being filled, its messages)
    submitted: list[tuple[asyncio.Future[Any], int]] = []  # (delivery, messages in the batch)
    for n, (key, value, headers) in enumerate(messages, start=1):
        target = partition if partition is not None else partitioner(key, all_partitions, available)
        batch, count = filling.get(target) or (producer.create_batch(), 0)
        header_list = list(headers.items()) if headers else []
        if batch.append(key=key, value=value, timestamp=None, headers=header_list) is None:
            # full: submitted, and the message starts the next one (a batch always takes its
            # first message; one over the broker's limit fails there, as a `send` of it would)
            submitted.append((await _hand_over(producer, batch, topic, target), count))
            batch, count = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None, headers=header_list)
        filling[target] = (batch, count + 1)
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    for target, (batch, count) in filling.items():
        submitted.append((await _hand_over(producer, batch, topic, target), count))
    if not submitted:
        return None
    delivered = await _deliveries(producer, topic, [future for future, _ in submitted])
    # a batch's delivery says the offset of its first message; its others follow it
    last: int = max(metadata.offset + count - 1 for metadata, (_, count) in zip(delivered, submitted, strict=True))
    return last


def _bound(producer: Any) -> float:
    request_timeout_ms: int = producer._request_timeout_ms
    return 2 * request_timeout_ms / 1000 + DELIVERY_SLACK_SECONDS


async def _hand_over(producer: Any, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
    """`producer.send_batch`, again while it times out before the bound (module docstring)."""
    deadline = time.monotonic() + _bound(producer)
    while True:
        try:
            future: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
            return future
        except KafkaTimeoutError:
            if time.monotonic() >= deadline:
                raise
            metrics.PRODUCER_HANDOVER_RETRIES.labels(topic).inc()
            await asyncio.sleep(0.01)  # no busy loop if it ever refused at once


async def _deliveries(producer: Any, topic: str, futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The futures' results, in order; the first failure raised; `KafkaTimeoutError` if some are
    still pending after the bound (module docstring). Waited without cancelling them (`wait`, not
    `wait_for`): they are aiokafka's, which may still deliver them."""
    bound = _bound(producer)
    done, pending = await asyncio.wait(futures, timeout=bound, return_when=asyncio.FIRST_EXCEPTION)
    for future in futures:
        error = future.exception() if future in done else None
        if error is not None:
            raise error
    for future in pending:  # their failures, if any come, are this call's, already reported
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
    if pending:
        raise KafkaTimeoutError(
            f"{len(pending)} of {len(futures)} record batches to {topic} not delivered within {bound:.0f} s"
        )
    return [future.result() for future in futures]

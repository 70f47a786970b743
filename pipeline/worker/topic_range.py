"""Reading a range of offsets of one partition again, outside any consumer group: what the journey
stage uses when its group's committed offset has passed messages it never applied (Faust
acknowledges the messages it skips around a rebalance, see `pipeline.worker.journey_agent`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

Messages = list[tuple[int, bytes]]


async def read_range(
    bootstrap_servers: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    *,
    security: Mapping[str, Any] | None = None,
    max_messages: int = 8,
    idle_seconds: float = 30.0,
) -> AsyncIterator[Messages]:
    """The (offset, value) of the messages at offsets [start, end) of `topic`/`partition`, in runs of
    at most `max_messages`. Offsets the log no longer holds (retention) are not there to read: the
    range then begins at the log's start. Raises TimeoutError when no message arrives for
    `idle_seconds` before `end` is reached (the partition does not hold what was expected)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        **(security or {}),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1024 * 1024,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            fetched = await consumer.getmany(tp, timeout_ms=int(idle_seconds * 1000), max_records=max_messages)
            records = fetched.get(tp, [])
            if not records:
                raise TimeoutError(f"{topic}[{partition}]: nothing to read at {await consumer.position(tp)} (< {end})")
            run = [(record.offset, record.value or b"") for record in records if record.offset < end]
            if run:
                yield run
    finally:
        await consumer.stop()

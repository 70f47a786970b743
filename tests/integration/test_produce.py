"""The worker's outputs are sent in record batches (`pipeline.worker.produce`): against the real
broker, every message arrives once, on the partition any Kafka producer would pick for its key
(kafka-python's murmur2, not aiokafka's, is the oracle), in order within its partition, with its
headers; and a send to one partition returns the offset of its last message (what the journey
tables' changelog writes record as persisted)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from pipeline.worker.health import is_transient
from pipeline.worker.produce import DELIVERY_SLACK_SECONDS, send_batched
from pipeline.worker.sink import Outgoing
from tools import broker

from .conftest import free_port

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, partitions: int) -> str:
    name = f"touchline-produce-test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchline-tests")
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


async def _send(bootstrap: str, topic: str, messages: list[Outgoing], partition: int | None) -> int | None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1)
    await producer.start()
    try:
        return await send_batched(producer, topic, messages, partition)
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(60):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records.extend(batch)
        extra = await consumer.getmany(timeout_ms=1000)  # nothing more: each message once
        records.extend(r for batch in extra.values() for r in batch)
    finally:
        await consumer.stop()
    return records


def test_keyed_messages_land_on_their_keys_partitions_in_order_with_headers(kafka: str) -> None:
    topic = _topic(kafka, 4)
    messages: list[Outgoing] = []
    for i in range(3_000):
        key = f"contact-{i % 700:05d}".encode()  # keys repeat: their messages must keep their order
        headers = {"touchline.reason": b"late", "n": str(i).encode()} if i % 3 == 0 else None
        messages.append((key, f"value {i} ".encode() * 8, headers))
    messages.insert(1_234, (b"contact-big", b"x" * 200_000, None))  # larger than a batch (16 KB)
    asyncio.run(_send(kafka, topic, messages, None))

    records = asyncio.run(_read(kafka, topic, len(messages)))
    assert len(records) == len(messages)
    for record in records:
        assert record.key is not None
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 4, record.key
    for partition in range(4):
        sent = [(k, v, dict(h or {})) for k, v, h in messages if (murmur2(k or b"") & 0x7FFFFFFF) % 4 == partition]
        got = [
            (r.key, r.value, {name: value for name, value in r.headers})
            for r in sorted(records, key=lambda r: r.offset)
            if r.partition == partition
        ]
        assert got == sent, f"partition {partition} differs from what was sent to it"


def test_a_send_to_one_partition_returns_its_last_offset(kafka: str) -> None:
    topic = _topic(kafka, 3)
    writes: list[Outgoing] = [(f"k{i}".encode(), None if i % 5 == 0 else b"v" * 300, None) for i in range(2_500)]
    first = asyncio.run(_send(kafka, topic, writes, 2))
    second = asyncio.run(_send(kafka, topic, writes[:10], 2))

    records = asyncio.run(_read(kafka, topic, len(writes) + 10))
    assert {r.partition for r in records} == {2}
    offsets = sorted(r.offset for r in records)
    assert first == offsets[len(writes) - 1] and second == offsets[-1]
    assert [(r.key, r.value) for r in sorted(records, key=lambda r: r.offset)] == [
        (k, v) for k, v, _ in writes + writes[:10]
    ]
    assert asyncio.run(_send(kafka, topic, [], 2)) is None


def test_a_broker_that_stops_answering_fails_the_send_in_time_and_the_retry_delivers(tmp_path: Path) -> None:
    """The broker frozen (SIGSTOP: its connections stay open, no answer comes), as in a stall seen
    once where a journey stage waited five minutes on a produce request: with a request timeout of
    seconds the send fails with a retryable error (here aiokafka's `RequestTimedOutError` after
    2.0 s) within its bound, not when the broker comes back; sent again after the broker thaws,
    every message arrives. This is the premise of the worker's setting
    (`TOUCHLINE_KAFKA_PRODUCER_REQUEST_TIMEOUT_SECONDS`, 30 s; Faust's default was 1,200 s): that the
    worker's producer gets it, and `send_batched`'s own bound, are tested in
    `tests/unit/test_produce_bound.py` (importing the settings here trips a CPython 3.11.7 parser
    bug when pytest's hypothesis plugin first imports hypothesis at the end of a lone run)."""
    kafka_dir = tmp_path / "kafka"
    bootstrap = broker.start(kafka_dir, port=free_port(), controller_port=free_port())
    pid = broker.status(kafka_dir).pid
    assert pid is not None
    try:
        topic = _topic(bootstrap, 2)
        messages: list[Outgoing] = [(f"k{i}".encode(), f"v{i}".encode(), None) for i in range(500)]
        request_timeout = 2.0
        bound = 2 * request_timeout + DELIVERY_SLACK_SECONDS

        async def frozen_then_thawed() -> tuple[BaseException | None, float]:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks=-1, request_timeout_ms=int(request_timeout * 1000)
            )
            await producer.start()
            try:
                await send_batched(producer, topic, messages[:10])  # connected, metadata known
                os.kill(pid, signal.SIGSTOP)
                began = time.monotonic()
                error: BaseException | None = None
                try:
                    await send_batched(producer, topic, messages[10:])
                except Exception as failed:  # what the callers' retries see
                    error = failed
                took = time.monotonic() - began
                os.kill(pid, signal.SIGCONT)
                await send_batched(producer, topic, messages[10:])  # the caller's retry
                return error, took
            finally:
                os.kill(pid, signal.SIGCONT)
                await producer.stop()

        error, took = asyncio.run(frozen_then_thawed())
        assert error is not None, "the send returned while the broker was frozen"
        assert is_transient(error), repr(error)
        assert took <= bound + 1.0, took
        records = asyncio.run(_read(bootstrap, topic, len(messages)))
        # at least once: a batch the frozen broker took before the stop may be there twice
        assert {(r.key, r.value) for r in records} == {(k, v) for k, v, _ in messages}
    finally:
        broker.stop(kafka_dir)

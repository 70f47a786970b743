"""The ingest path: decode each message, drop duplicates, batch rows, write them to ClickHouse off the
event loop, dead-letter what is bad, and only then report the batch's offsets as safe to commit.
Transport-agnostic: the consumer hands in runs of messages of one partition."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from clickhouse_connect.driver.client import Client

from pipeline.events.topics import channel_of_topic
from pipeline.ingest.batch import Batch, Batcher, Source
from pipeline.ingest.decode import Rejection, decode
from pipeline.ingest.dedup import RecentIds
from pipeline.store.clickhouse import BlockingExecutor, insert_rows
from pipeline.store.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, dead_letter_row, event_row
from pipeline.worker import metrics

log = logging.getLogger(__name__)

Outgoing = tuple[bytes | None, bytes | None, Mapping[str, bytes] | None]  # key, value, headers
DeadLetterSender = Callable[[list[Outgoing]], Awaitable[None]]  # returns once all are delivered
RETRY_SECONDS = (0.5, 1, 2, 5, 10, 30)
# ingested_at is the moment the batch is handed to ClickHouse, so `ingested_at - occurred_at` is
# the end-to-end latency of each row; it is filled in at write time
_EPOCH = datetime.fromtimestamp(0, UTC)
_UNWRITTEN = _EPOCH
_MS = timedelta(milliseconds=1)
_INGESTED = EVENT_COLUMNS.index("ingested_at")
assert len(EVENT_COLUMNS) - 1 == _INGESTED, "ingested_at must stay the last column"
_OCCURRED = EVENT_COLUMNS.index("occurred_at")
_CHANNEL = EVENT_COLUMNS.index("channel")


class Message(Protocol):
    """What the sink needs of a consumed message (aiokafka's ConsumerRecord has it)."""

    offset: int
    key: bytes | None
    value: bytes | None


class IngestSink:
    def __init__(
        self,
        client: Client,
        executor: BlockingExecutor,
        send_dead_letters: DeadLetterSender,
        *,
        max_rows: int,
        max_seconds: float,
        max_event_bytes: int,
        dedup_capacity: int,
        on_written: Callable[[dict[Source, int]], None],
    ) -> None:
        self._client = client
        self._executor = executor
        self._send_dead_letters = send_dead_letters
        self._max_event_bytes = max_event_bytes
        self._batcher = Batcher(max_rows, max_seconds)
        self._recent = RecentIds(dedup_capacity)
        self._in_flight: asyncio.Task[None] | None = None
        self._dead_letter_messages: list[Outgoing] = []
        self._on_written = on_written
        self._channels: dict[str, str] = {}
        self._pending = 0
        self._counts: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    async def handle(self, topic: str, partition: int, messages: Sequence[Message]) -> None:
        """Take a run of messages of one partition, in offset order."""
        now = time.monotonic()
        channel = self._channels.get(topic)
        if channel is None:
            known = channel_of_topic(topic)
            channel = self._channels[topic] = known.value if known else "unknown"
        counts = self._counts[channel]
        source = (topic, partition)
        max_bytes = self._max_event_bytes
        batcher = self._batcher
        recent = self._recent
        for message in messages:
            counts[0] += 1
            result = decode(message.value, topic, max_bytes)
            if isinstance(result, Rejection):
                full = self._dead_letter(topic, partition, message, result, channel, now)
            else:
                counts[1] += 1
                if recent.seen(result.event_id):
                    counts[2] += 1
                    full = batcher.add_event(None, source, message.offset, now)
                else:
                    row = event_row(result, topic, partition, message.offset, _UNWRITTEN)
                    full = batcher.add_event(row, source, message.offset, now)
            if full:
                await self.flush()

    def _publish_counts(self) -> None:
        # counted per event in plain ints, published per batch: Prometheus children take a lock each
        for channel, counts in self._counts.items():
            consumed, valid, duplicate = counts
            if consumed:
                metrics.EVENTS_CONSUMED.labels(channel).inc(consumed)
            if valid:
                metrics.EVENTS_VALID.labels(channel).inc(valid)
            if duplicate:
                metrics.EVENTS_DUPLICATE.labels(channel).inc(duplicate)
            counts[:] = [0, 0, 0]
        metrics.PENDING_ROWS.set(self._pending + len(self._batcher))

    def _dead_letter(
        self, topic: str, partition: int, message: Message, rejection: Rejection, channel: str, now: float
    ) -> bool:
        headers = {
            "touchline.reason": rejection.reason.value.encode(),
            "touchline.detail": rejection.detail.encode(),
            "touchline.source.topic": topic.encode(),
            "touchline.source.partition": str(partition).encode(),
            "touchline.source.offset": str(message.offset).encode(),
        }
        self._dead_letter_messages.append((message.key, message.value, headers))
        metrics.EVENTS_DEADLETTERED.labels(channel, rejection.reason.value).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            topic,
            partition,
            message.offset,
            rejection.reason.value,
            rejection.detail,
        )
        row = dead_letter_row(
            datetime.now(UTC),
            topic,
            partition,
            message.offset,
            rejection.reason.value,
            rejection.detail,
            message.key,
            message.value,
        )
        return self._batcher.add_dead_letter(row, (topic, partition), message.offset, now)

    async def tick(self) -> None:
        """Called periodically: writes a batch whose time is up."""
        self._publish_counts()
        if self._batcher.due(time.monotonic()):
            await self.flush()

    async def flush(self) -> None:
        """Hand the current batch to the writer. At most one write is in flight; a second flush
        waits for it, which is the back-pressure on the consumer."""
        if self._in_flight is not None:
            await self._in_flight
        self._publish_counts()
        if not len(self._batcher):
            return
        batch = self._batcher.take()
        dead, self._dead_letter_messages = self._dead_letter_messages, []
        self._pending += len(batch)
        self._in_flight = asyncio.ensure_future(self._write(batch, dead))

    async def drain(self) -> None:
        await self.flush()
        if self._in_flight is not None:
            await self._in_flight

    async def _write(self, batch: Batch, dead: list[Outgoing]) -> None:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                if dead:
                    await self._send_dead_letters(dead)
                    dead = []
                await self._executor.run(self._insert, batch)
                break
            except Exception:
                # No offset is released until the write succeeds, so retrying forever loses nothing;
                # the growing lag and the failure counter tell the operator.
                pause = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                attempt += 1
                metrics.FLUSH_FAILURES.inc()
                log.exception("writing a batch of %d failed (attempt %d); retrying in %ss", len(batch), attempt, pause)
                await asyncio.sleep(pause)
        self._on_written(batch.offsets)
        self._pending -= len(batch)
        metrics.PENDING_ROWS.set(self._pending + len(self._batcher))
        metrics.BATCH_ROWS.observe(len(batch.events) + len(batch.dead_letters))
        metrics.FLUSH_SECONDS.observe(time.monotonic() - started)

    def _insert(self, batch: Batch) -> None:
        written_at = datetime.now(UTC)
        written_ms = (written_at - _EPOCH) // _MS
        # DateTime64(3) columns as integer milliseconds: clickhouse-connect converts datetimes
        # one by one at about three times the cost
        rows = [
            (*r[:_OCCURRED], (r[_OCCURRED] - _EPOCH) // _MS, *r[_OCCURRED + 1 : _INGESTED], written_ms)
            for r in batch.events
        ]
        insert_rows(self._client, "interaction_events", EVENT_COLUMNS, rows)
        insert_rows(self._client, "dead_letters", DEAD_LETTER_COLUMNS, batch.dead_letters)
        latencies: defaultdict[str, list[float]] = defaultdict(list)
        for row in rows:
            latencies[row[_CHANNEL]].append(max(0.0, (written_ms - row[_OCCURRED]) / 1000))
        for channel, values in latencies.items():
            metrics.E2E_SECONDS.observe_many((channel,), values)
            metrics.EVENTS_WRITTEN.labels(channel).inc(len(values))

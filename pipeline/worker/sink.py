"""The ingest path: decode each message, drop duplicates, batch rows, write them to ClickHouse off the
event loop, dead-letter what is bad, and only then report the batch's offsets as safe to commit.
Transport-agnostic: the consumer hands in runs of messages of one partition."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from pipeline.events.topics import TopicNames
from pipeline.ingest.batch import Batch, Batcher, Source
from pipeline.ingest.decode import Rejection, current_policy, plausible_window
from pipeline.ingest.dedup import RecentIds
from pipeline.ingest.fast_rows import row as event_row_of
from pipeline.privacy.erasure import Subject
from pipeline.store.clickhouse import BlockingExecutor, insert_json_rows, insert_rows
from pipeline.store.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, dead_letter_row
from pipeline.worker import metrics
from pipeline.worker.backoff import steps

log = logging.getLogger(__name__)

Outgoing = tuple[bytes | None, bytes | None, Mapping[str, bytes] | None]  # key, value, headers
DeadLetterSender = Callable[[list[Outgoing]], Awaitable[None]]  # returns once all are delivered
RETRY_SECONDS = (0.5, 1, 2, 5, 10, 30)
# the worker's producer refuses requests over 1,000,000 bytes (Kafka's default max.request.size),
# and a refused dead letter would be retried forever: anything larger is cut to a prefix
DEAD_LETTER_MAX_BYTES = 900_000
DEAD_LETTER_PREFIX_BYTES = 65_536
DEAD_LETTER_KEY_BYTES = 1024
REFUSED_BY_STORE = "refused_by_store"
# ClickHouse errors about what is inserted, not about the server's health: retrying the same rows can
# never succeed, so the batch is split and the rows it refuses alone are dead-lettered.
# 252 too many partitions for one INSERT block, 6/27/38/41/72 cannot parse, 53 type mismatch,
# 69 argument out of bound, 70 cannot convert, 117 incorrect data, 131 string too large,
# 321 value out of range, 407 decimal overflow, 469 violated constraint
CONTENT_ERROR_CODES = frozenset({6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 252, 321, 407, 469})
_CODE = re.compile(r"\bCode: (\d+)\b")
# ingested_at is the moment the batch is handed to ClickHouse, so `ingested_at - occurred_at` is
# the end-to-end latency of each row; it is filled in at write time
_INGESTED = EVENT_COLUMNS.index("ingested_at")
assert len(EVENT_COLUMNS) - 1 == _INGESTED, "ingested_at must stay the last column"
_OCCURRED = EVENT_COLUMNS.index("occurred_at")
_CHANNEL = EVENT_COLUMNS.index("channel")


class Message(Protocol):
    """What the sink needs of a consumed message (`FetchedRecord` and aiokafka's `ConsumerRecord` have it)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


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
        topics: TopicNames,
    ) -> None:
        self._topics = topics
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
            known = self._topics.channel_of(topic)
            channel = self._channels[topic] = known.value if known else "unknown"
        counts = self._counts[channel]
        source = (topic, partition)
        max_bytes = self._max_event_bytes
        batcher = self._batcher
        recent = self._recent
        window = plausible_window(current_policy())
        for message in messages:
            counts[0] += 1
            result = event_row_of(message.value, topic, partition, message.offset, max_bytes, message.key, window)
            if isinstance(result, Rejection):
                full = self._dead_letter(topic, partition, message, result, channel, now)
            else:
                counts[1] += 1
                if recent.seen(result[0]):
                    counts[2] += 1
                    full = batcher.add_event(None, source, message.offset, now)
                else:
                    full = batcher.add_event(result, source, message.offset, now)
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
        self._dead_letter_messages.append(fitted_dead_letter(message.key, message.value, headers))
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

    async def forget(self, subject: Subject) -> int:
        """Erasure hook: the person's rows not yet handed to ClickHouse are dropped; a write in
        flight is waited for, so the store's delete that follows covers it. Rows dropped."""
        contacts, identifiers = subject.contact_ids, subject.identifiers
        kinds = [(EVENT_COLUMNS.index(kind), value) for kind, value in identifiers]
        contact_at = EVENT_COLUMNS.index("contact_id")

        def theirs(row: tuple[Any, ...]) -> bool:
            return row[contact_at] in contacts or any(row[i] == v for i, v in kinds)

        dropped = self._batcher.drop(theirs)
        if self._in_flight is not None:
            await self._in_flight
        return dropped

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
        refused: list[tuple[tuple[Any, ...], str]] | None = None

        # No offset is released until the write succeeds, so retrying forever loses nothing; the
        # growing lag and the failure counter tell the operator.
        pauses = steps(RETRY_SECONDS)
        attempt = 0
        while True:
            attempt += 1
            try:
                if dead:
                    await self._send_dead_letters(dead)
                    dead = []
                if refused is None:
                    refused = await self._executor.run(self._insert, batch)
                if refused:
                    await self._dead_letter_refused(refused)
                    refused = []
                break
            except Exception as error:
                metrics.FLUSH_FAILURES.inc()
                pause = next(pauses)
                log.error(
                    "writing a batch of %d failed (attempt %d); retrying in %gs",
                    len(batch),
                    attempt,
                    pause,
                    exc_info=error,
                )
            await asyncio.sleep(pause)
        self._on_written(batch.offsets)
        self._pending -= len(batch)
        metrics.PENDING_ROWS.set(self._pending + len(self._batcher))
        metrics.BATCH_ROWS.observe(len(batch.events) + len(batch.dead_letters))
        metrics.FLUSH_SECONDS.observe(time.monotonic() - started)

    async def _dead_letter_refused(self, refused: list[tuple[tuple[Any, ...], str]]) -> None:
        """Rows ClickHouse refused for their content: to the dead-letter topic and table, as the
        event's stored form (the raw message is not kept past decoding)."""
        messages: list[Outgoing] = []
        rows: list[tuple[Any, ...]] = []
        received = datetime.now(UTC)
        for row, error in refused:
            fields = dict(zip(EVENT_COLUMNS, row, strict=True))
            topic, partition, offset = fields["source_topic"], fields["source_partition"], fields["source_offset"]
            value = json.dumps(fields, default=str).encode()
            key = str(fields["contact_id"]).encode()
            detail = f"ClickHouse refused the row: {error[:500]}"
            headers = {
                "touchline.reason": REFUSED_BY_STORE.encode(),
                "touchline.detail": detail.encode(),
                "touchline.source.topic": str(topic).encode(),
                "touchline.source.partition": str(partition).encode(),
                "touchline.source.offset": str(offset).encode(),
            }
            messages.append(fitted_dead_letter(key, value, headers))
            channel = str(fields["channel"])
            metrics.EVENTS_DEADLETTERED.labels(channel, REFUSED_BY_STORE).inc()
            log.warning("dead-lettered %s[%s]@%s: %s: %s", topic, partition, offset, REFUSED_BY_STORE, detail)
            rows.append(dead_letter_row(received, topic, partition, offset, REFUSED_BY_STORE, detail, key, value))
        await self._send_dead_letters(messages)
        await self._executor.run(insert_rows, self._client, "dead_letters", DEAD_LETTER_COLUMNS, rows)

    def _insert(self, batch: Batch) -> list[tuple[tuple[Any, ...], str]]:
        """Write the batch; the rows ClickHouse refuses for their content, with its reason."""
        written = int(time.time() * 1000) / 1000  # ingested_at, to the millisecond
        # times as float seconds (exact to the millisecond: a row's DateTime64(3) is the same as
        # from clickhouse-connect's Native form, tests/unit/test_fast_rows.py), rows as JSON that
        # ClickHouse parses itself (`insert_json_rows`): 1.6 µs a row on the GIL (`make bench`'s
        # step profile of 483dd59) against 5.4-6.6 for clickhouse-connect's Native form
        rows = stored_rows(batch.events, written)
        refused_at = insert_splitting(self._client, "interaction_events", EVENT_COLUMNS, rows, insert=insert_json_rows)
        insert_rows(self._client, "dead_letters", DEAD_LETTER_COLUMNS, batch.dead_letters)
        refused_rows = {i for i, _ in refused_at}
        latencies: defaultdict[str, list[float]] = defaultdict(list)
        for i, row in enumerate(rows):
            if i not in refused_rows:
                latencies[row[_CHANNEL]].append(max(0.0, written - row[_OCCURRED]))
        for channel, values in latencies.items():
            metrics.E2E_SECONDS.observe_many((channel,), values)
            metrics.EVENTS_WRITTEN.labels(channel).inc(len(values))
        return [(batch.events[i], error) for i, error in refused_at]


def stored_rows(events: Sequence[tuple[Any, ...]], written: float) -> list[tuple[Any, ...]]:
    """Event rows as `insert_json_rows` takes them: times as float seconds, ingested_at set."""
    return [(*r[:_OCCURRED], r[_OCCURRED].timestamp(), *r[_OCCURRED + 1 : _INGESTED], written) for r in events]


def content_error(error: BaseException) -> bool:
    """True when ClickHouse (or the client, serializing) refused an insert for what it holds."""
    if isinstance(error, OverflowError | TypeError | ValueError | UnicodeError) and not isinstance(
        error, ConnectionError
    ):
        return "Code:" not in str(error) or _code(error) in CONTENT_ERROR_CODES
    return _code(error) in CONTENT_ERROR_CODES


def _code(error: BaseException) -> int | None:
    match = _CODE.search(str(error))
    return int(match.group(1)) if match else None


def insert_splitting(
    client: Client,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    start: int = 0,
    insert: Callable[[Client, str, Sequence[str], Sequence[Sequence[Any]]], None] = insert_rows,
) -> list[tuple[int, str]]:
    """Insert `rows`; when ClickHouse refuses them for their content, insert each half on its own,
    down to single rows. Returns (index, error) of each row refused alone. Transient errors raise."""
    try:
        insert(client, table, columns, rows)
        return []
    except Exception as error:
        if not content_error(error):
            raise
        if len(rows) == 1:
            return [(start, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)]
        middle = len(rows) // 2
        return insert_splitting(client, table, columns, rows[:middle], start, insert) + insert_splitting(
            client, table, columns, rows[middle:], start + middle, insert
        )


def fitted_dead_letter(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> Outgoing:
    """A dead letter the producer accepts: a larger one keeps a prefix of its value, with the
    whole value's SHA-256 and size in headers; a long key is cut likewise."""
    size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers.items())
    if size <= DEAD_LETTER_MAX_BYTES and len(key or b"") <= DEAD_LETTER_KEY_BYTES:
        return key, value, headers
    headers = dict(headers)
    if value is not None and len(value) > DEAD_LETTER_PREFIX_BYTES:
        headers["touchline.truncated"] = b"true"
        headers["touchline.original.sha256"] = hashlib.sha256(value).hexdigest().encode()
        headers["touchline.original.size"] = str(len(value)).encode()
        value = value[:DEAD_LETTER_PREFIX_BYTES]
    if key is not None and len(key) > DEAD_LETTER_KEY_BYTES:
        headers["touchline.key.sha256"] = hashlib.sha256(key).hexdigest().encode()
        headers["touchline.key.size"] = str(len(key)).encode()
        key = key[:DEAD_LETTER_KEY_BYTES]
    for name, text in list(headers.items()):
        if len(text) > 4096:
            headers[name] = text[:4096]
    return key, value, headers

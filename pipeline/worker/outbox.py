"""Outputs of the analytics stage that are computed but not yet written: KPI rows and SLA rows for
ClickHouse, SLA outcomes and late events for their topics.

Computing an output only appends it here; nothing waits on ClickHouse or the broker to compute
(the SLA deadline check in particular never waits on a producer). `flush()` writes everything
appended before it was called, retrying transient failures with backoff (visible in `/health` and
the dependency metrics) until they succeed; a terminal failure raises `TerminalError`. A checkpoint
flushes before it writes the state, so state is never saved ahead of its outputs, and offsets are
marked only after both: effectively-once, since every output is idempotent on replay (KPI rows
carry increasing versions, SLA rows deterministic ids, both in ReplacingMergeTree tables).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.kpi.rows import PARTIAL_COLUMNS
from pipeline.sla.clock import SLA_EVENT_COLUMNS
from pipeline.store.clickhouse import BlockingExecutor, insert_rows
from pipeline.worker import metrics
from pipeline.worker.health import Health, retrying
from pipeline.worker.sink import Outgoing

log = logging.getLogger(__name__)

Send = Callable[[str, list[Outgoing]], Awaitable[None]]  # topic, messages: returns once delivered
Forward = Callable[[list[Any]], Awaitable[None]]  # the journey stage's input: returns once delivered


class Outbox:
    def __init__(
        self,
        client: Client,
        executor: BlockingExecutor,
        send: Send,
        forward: Forward,
        health: Health,
        *,
        max_backoff_seconds: float = 10.0,
        insert_rows: int = 5000,
    ) -> None:
        self._client = client
        self._executor = executor
        self._send = send
        self._forward = forward
        self._forwards: list[Any] = []
        self._health = health
        self._max_backoff = max_backoff_seconds
        self._insert_rows = insert_rows
        self._kpi_rows: list[list[Any]] = []
        self._sla_rows: list[tuple[Any, ...]] = []
        self._messages: dict[str, list[Outgoing]] = {}
        self._topics_lock = asyncio.Lock()
        self._rows_lock = asyncio.Lock()

    # -- appending (never waits)

    def kpi_rows(self, rows: Sequence[list[Any]]) -> None:
        self._kpi_rows.extend(rows)
        self._gauge()

    def sla_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._sla_rows.extend(rows)
        self._gauge()

    def messages(self, topic: str, messages: Sequence[Outgoing]) -> None:
        if messages:
            self._messages.setdefault(topic, []).extend(messages)
            self._gauge()

    def forward(self, items: Sequence[Any]) -> None:
        self._forwards.extend(items)
        self._gauge()

    def __len__(self) -> int:
        messages = sum(len(m) for m in self._messages.values())
        return len(self._kpi_rows) + len(self._sla_rows) + messages + len(self._forwards)

    @property
    def flushing(self) -> bool:
        return self._topics_lock.locked() or self._rows_lock.locked()

    async def drop(self, contact_ids: set[str]) -> int:
        """Erasure: drop the outputs of these contacts not yet written (SLA rows and messages, journey
        records; KPI rows hold no person), after any write under way. Returns how many."""
        at = SLA_EVENT_COLUMNS.index("contact_id")
        keys = {c.encode() for c in contact_ids}
        async with self._topics_lock, self._rows_lock:
            before = len(self)
            self._sla_rows = [row for row in self._sla_rows if row[at] not in contact_ids]
            self._messages = {t: [m for m in batch if m[0] not in keys] for t, batch in self._messages.items()}
            self._forwards = [item for item in self._forwards if item[2][0] not in contact_ids]
            self._gauge()
            return before - len(self)

    # -- writing

    async def flush(self) -> None:
        """Write everything appended so far. Topics and ClickHouse are separate lanes, so an SLA page
        does not wait behind a ClickHouse outage, nor KPI rows behind a broker outage."""
        await asyncio.gather(self._flush_topics(), self._flush_rows())

    async def _flush_topics(self) -> None:
        async with self._topics_lock:
            messages, self._messages = self._messages, {}
            forwards, self._forwards = self._forwards, []
            try:
                for topic in list(messages):
                    await self._retry("kafka-producer", self._send, topic, messages[topic])
                    del messages[topic]
                if forwards:
                    await self._retry("kafka-producer", self._forward, forwards)
                    forwards = []
            finally:  # cancelled (shutdown): what is unwritten goes back in front of newer outputs
                for topic, batch in messages.items():
                    self._messages.setdefault(topic, [])[:0] = batch
                self._forwards[:0] = forwards
                self._gauge()

    async def _flush_rows(self) -> None:
        async with self._rows_lock:
            sla, self._sla_rows = self._sla_rows, []
            kpi, self._kpi_rows = self._kpi_rows, []
            try:
                # in inserts of `insert_rows` (TOUCHLINE_BATCH_MAX_ROWS): an emit that catches up
                # leaves tens of thousands of KPI rows, and one insert of them all held its encoded
                # copies at once. What is written leaves the list, so a cancel puts back only the rest
                await self._insert_in_chunks("sla_events", SLA_EVENT_COLUMNS, sla)
                await self._insert_in_chunks("kpi_minute_partials", PARTIAL_COLUMNS, kpi)
            finally:
                self._sla_rows[:0] = sla
                self._kpi_rows[:0] = kpi
                self._gauge()

    async def _insert_in_chunks(self, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        """Write `rows` (retried), removing each chunk from the list once it is written."""
        while rows:
            await self._retry("clickhouse", self._insert, table, columns, rows[: self._insert_rows])
            del rows[: self._insert_rows]

    async def _insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        await self._executor.run(insert_rows, self._client, table, columns, rows)

    async def _retry(self, dependency: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        await retrying(self._health, dependency, fn, *args, max_backoff=self._max_backoff)

    def _gauge(self) -> None:
        metrics.OUTBOX_PENDING.set(len(self))

"""The analytics stage's adapter: batches of channel-topic messages -> KPI windows and SLA clocks
(`Stages`, one state per source partition) and the forward to the journey stage.

It reads the channel topics in its own consumer group, independently of ingest, so each stage can
run in its own worker process (`touchline worker --role`). Recovery: on assignment a partition's
state is restored from its checkpoint and the consumer seeks to the offset after it (to the
beginning when there is none). A checkpoint is taken under the same lock as a batch, after the
batch's forward to the journey stage is delivered, so a checkpoint never covers an event the
journey stage has not got. Offsets are committed only up to a checkpoint, for lag monitoring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client

from pipeline.events.models import EventBase
from pipeline.events.topics import channel_of_topic
from pipeline.ingest.decode import Rejection, decode
from pipeline.ingest.dedup import RecentIds
from pipeline.kpi.windows import LateEvent
from pipeline.sla.clock import SlaEvent
from pipeline.store.clickhouse import BlockingExecutor, insert_rows
from pipeline.worker import metrics
from pipeline.worker.consumer import BatchConsumer, Records
from pipeline.worker.stages import STATE_COLUMNS, PartitionKey, Stages

log = logging.getLogger(__name__)


class AnalyticsStage:
    def __init__(
        self,
        stages: Stages,
        client: Client,
        executor: BlockingExecutor,
        *,
        max_event_bytes: int,
        dedup_capacity: int,
        emit_late: Callable[[list[LateEvent]], Awaitable[None]],
        emit_sla: Callable[[list[SlaEvent]], Awaitable[None]],
        forward: Callable[[list[tuple[EventBase, bytes]]], Awaitable[None]],
    ) -> None:
        self.stages = stages
        self._client = client
        self._executor = executor
        self._max_event_bytes = max_event_bytes
        self._forwarded = RecentIds(dedup_capacity)
        self._emit_late = emit_late
        self._emit_sla = emit_sla
        self._forward = forward
        self._lock = asyncio.Lock()
        self.consumer: BatchConsumer | None = None

    async def handle(self, batches: Records) -> None:
        async with self._lock:
            now = datetime.now(UTC)
            late: list[LateEvent] = []
            sla: list[SlaEvent] = []
            forward: list[tuple[EventBase, bytes]] = []
            stages, max_bytes, forwarded = self.stages, self._max_event_bytes, self._forwarded
            for tp, records in batches.items():
                state = stages.partitions.get((tp.topic, tp.partition))
                if state is None:  # not ours (any more): its new owner reads it
                    continue
                applied = 0
                for record in records:
                    if record.offset <= state.max_offset:
                        # read again: a seek on assignment can overtake a fetch already returned
                        continue
                    event = decode(record.value, tp.topic, max_bytes)
                    if isinstance(event, Rejection):
                        continue  # the ingest stage dead-letters it
                    outputs = stages.apply(state, event, record.offset, now, defer=True)
                    applied += 1
                    if outputs.late:
                        late += outputs.late
                    if outputs.sla:
                        sla += outputs.sla
                    if record.value is not None and not forwarded.seen(event.event_id):
                        forward.append((event, record.value))
                state.kpi.settle()  # each contact's KPI contributions once per batch, not once per event
                channel = channel_of_topic(tp.topic)
                metrics.EVENTS_ANALYSED.labels(channel.value if channel else "unknown").inc(applied)
            if late:
                await self._emit_late(late)
            if sla:
                await self._emit_sla(sla)
            if forward:
                await self._forward(forward)

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        # restored now, not at the partition's next message, so deadlines that fell due while no
        # worker owned the partition fire right after recovery
        consumer = self.consumer
        assert consumer is not None
        for tp in sorted(partitions):  # the consumer reads the channel topics only
            key = (tp.topic, tp.partition)
            state = self.stages.partitions.get(key)
            if state is None:
                state = await self._executor.run(self.stages.load, self._client, key)
                self.stages.partitions[key] = state
            if state.max_offset >= 0:
                consumer.seek(tp, state.max_offset + 1)
            else:
                await consumer.seek_to_beginning(tp)

    async def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        mine = [key for key in keys if key in self.stages.partitions]
        await self.checkpoint(mine)
        for key in mine:
            del self.stages.partitions[key]

    async def checkpoint(self, keys: list[PartitionKey]) -> None:
        """Save the state of `keys`, one partition at a time so the loop (and the SLA check) runs in
        between, and mark their offsets safe to commit."""
        for key in keys:
            async with self._lock:
                rows = self.stages.checkpoint_rows([key])
                if not rows:
                    continue
                await self._executor.run(insert_rows, self._client, "worker_state", STATE_COLUMNS, rows)
                state = self.stages.partitions.get(key)
                if self.consumer is not None and state is not None and state.max_offset >= 0:
                    self.consumer.ready({key: state.max_offset})

    async def checkpoint_all(self) -> None:
        await self.checkpoint(list(self.stages.partitions))

"""The analytics stage: batches of channel-topic messages -> KPI windows and SLA clocks (`Stages`,
one state per source partition) and the journey stage's input.

A stage object with `handle` (a fetched batch), `assigned` / `revoked` (rebalances), `tick_sla`,
`emit_kpis` and `checkpoint`. It reads the channel topics in its own consumer group, so it can run
in a worker process of its own (`touchline worker --role analytics`).

Outputs are never written inline: computing them appends them to the `Outbox`, which a background
flush writes with retries. A checkpoint of the partitions, in this order:
  1. (event-clock mode) release the SLA events the watermark has passed, so nothing is held back;
  2. collect each partition's changed contacts, tombstones and head (a snapshot, on the loop);
  3. flush every output computed so far (retried until written);
  4. write the snapshots' rows (retried): every changed contact first, then heads and tombstones;
  5. only then mark the source offset of each snapshot committable.
A crash anywhere in between leaves the previous checkpoint and offsets in force: the partition is
read again from there and re-derives the same outputs, which are idempotent (effectively-once).

Recovery: on assignment a partition's state is restored from its rows and the consumer seeks to the
offset after the head's (to the beginning when there is none). Downtime is not idle time: the idle
watermark clock starts again when the partition is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client

from pipeline.events.models import EventBase, to_json
from pipeline.events.topics import TopicNames
from pipeline.ingest.decode import Rejection, decode
from pipeline.ingest.dedup import RecentIds
from pipeline.kpi.windows import MAX_WINDOWS_PER_EMIT, LateEvent
from pipeline.sla.clock import SlaEvent
from pipeline.store.clickhouse import BlockingExecutor
from pipeline.worker import metrics
from pipeline.worker.consumer import BatchConsumer, Records
from pipeline.worker.fetched import FetchedRecord
from pipeline.worker.health import Health, TerminalError, retrying
from pipeline.worker.journeys import forward_lines
from pipeline.worker.outbox import Outbox
from pipeline.worker.sink import Outgoing
from pipeline.worker.stages import PartitionKey, PartitionState, Stages, kpi_records, sla_records
from pipeline.worker.state_store import Checkpoint, ContactRecord, StateStore

log = logging.getLogger(__name__)

STAGE = "analytics"
T = TypeVar("T")
# Records applied between two yields of the loop (~100-200 µs each in a ticket backfill)
HANDLE_SLICE = 500
# Contacts serialized per step of a checkpoint, and the time after which a step yields the loop:
# a fixed 2,000 contacts per yield blocked the loop 0.5-1.0 s at a time in a soak's stop
CHECKPOINT_SLICE = 100
CHECKPOINT_YIELD_SECONDS = 0.05
# Changed contacts after which a checkpoint writes what it has collected before it goes on: one
# group for all 24 partitions wrote 88 MB at once in a soak and RSS jumped by 300 MB meanwhile;
# groups of 10,000 still made RSS jump by 150-350 MB while they were written (make soak, day 3-4)
CHECKPOINT_GROUP_ROWS = 4_000
# Outputs waiting to be written beyond which the consumer and a catching-up emit wait for them.
OUTBOX_HIGH_WATER = 50_000
CHECKPOINT_OVERDUE_INTERVALS = 3
# an SLA outcome's message: msgspec writes the JSON of `SlaEvent.to_dict` in 0.5 against 8 µs for
# `json.dumps` (session 31, timeit on a busy host; 0.21 outcomes an event in the simulation)
_SLA_JSON = msgspec.json.Encoder()


class AnalyticsStage:
    def __init__(
        self,
        stages: Stages,
        client: Client,
        executor: BlockingExecutor,
        outbox: Outbox,
        health: Health,
        *,
        max_event_bytes: int,
        dedup_capacity: int,
        on_terminal: Callable[[BaseException], Awaitable[None]],
        topics: TopicNames,
        checkpoint_seconds: float = 10.0,
    ) -> None:
        self.stages = stages
        self.topics = topics
        self.store = StateStore(stages.app_id, STAGE)
        self.outbox = outbox
        self._client = client
        self._executor = executor
        self._health = health
        self._max_event_bytes = max_event_bytes
        self._forwarded = RecentIds(dedup_capacity)
        self._on_terminal = on_terminal
        self._lock = asyncio.Lock()  # a batch, a snapshot and a revocation never interleave
        self._checkpointing = asyncio.Lock()  # one checkpoint at a time, written in order
        self._flush_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._parked: dict[PartitionKey, PartitionState] = {}  # revoked, kept in case they come back
        self._stopped = False
        # a checkpoint this much later than its interval holds the consumer back (see `busy`)
        self._checkpoint_overdue = CHECKPOINT_OVERDUE_INTERVALS * checkpoint_seconds
        self._checkpointed_at = time.monotonic()
        self.consumer: BatchConsumer | None = None
        self.sla_clock = stages.sla_clock

    # ------------------------------------------------------------------ input

    async def handle(self, batches: Records) -> None:
        async with self._lock:
            for tp, records in batches.items():
                state = self.stages.partitions.get((tp.topic, tp.partition))
                if state is None:  # not ours (any more): its new owner reads it
                    continue
                channel = self.topics.channel_of(tp.topic)
                label = channel.value if channel else "unknown"
                for start in range(0, len(records), HANDLE_SLICE):
                    self._apply(state, records[start : start + HANDLE_SLICE], tp.topic, label)
                    await asyncio.sleep(0)  # the SLA check runs between slices of a large batch
        self.flush_soon()

    def _apply(self, state: PartitionState, records: Sequence[FetchedRecord], topic: str, label: str) -> None:
        now = datetime.now(UTC)
        late: list[LateEvent] = []
        sla: list[SlaEvent] = []
        forward: list[EventBase] = []
        stages, max_bytes, forwarded = self.stages, self._max_event_bytes, self._forwarded
        applied = 0
        for record in records:
            if record.offset <= state.max_offset:
                continue  # read again: a seek on assignment can overtake a fetch already returned
            event = decode(record.value, topic, max_bytes, record.key)
            if isinstance(event, Rejection):
                continue  # the ingest stage dead-letters it
            stages.apply_into(state, event, record.offset, now, late, sla, defer=True)
            applied += 1
            if not forwarded.seen(event.event_id):
                forward.append(event)
        state.kpi.settle()  # each contact's KPI contributions once per slice, not once per event
        metrics.EVENTS_ANALYSED.labels(label).inc(applied)
        self._late(late)
        self._sla(sla, now)
        if forward:  # as compact records, so the outbox holds neither the events nor their bytes
            self.outbox.forward(forward_lines(forward))

    # ------------------------------------------------------------------ timers

    def tick_sla(self, now: datetime) -> None:
        """Raise the at-risk and breach events now due. Never waits: they go to the outbox, and a
        flush is started unless one is running."""
        started = time.perf_counter()
        due = self.stages.tick_sla(now)
        metrics.SLA_TICK_SECONDS.observe(time.perf_counter() - started)
        if due:
            self._sla(due, now)
            self.flush_soon()

    async def emit_kpis(self, now: datetime) -> None:
        """Rows of changed and newly final KPI windows into the outbox: every partition in turn, at
        most MAX_WINDOWS_PER_EMIT windows each per pass (the loop free between), passes repeated
        while a partition is behind (a backfill). While any is behind, or the outbox is over its
        mark, `busy()` holds the consumer back, so emitting catches up and memory stays bounded."""
        while True:
            behind = False
            for key in list(self.stages.partitions):
                rows = self.stages.emit_kpis(now, [key], MAX_WINDOWS_PER_EMIT)
                if rows:
                    self.outbox.kpi_rows(kpi_records(rows))
                    for row in rows:
                        metrics.KPI_ROWS.labels(str(row.final).lower()).inc()
                    self.flush_soon()
                state = self.stages.partitions.get(key)
                behind = behind or (state is not None and state.kpi.behind)
                await asyncio.sleep(0)
            if not behind:
                break
            while len(self.outbox) > OUTBOX_HIGH_WATER:  # written before more is computed
                self.flush_soon()
                await asyncio.sleep(0.05)

        # the lag gauge says how far KPIs are final *and written*: set once this emit's rows are.
        # Not awaited: the next emit (and the prune that packs finished contacts) would wait for
        # the write, and on a saturated loop that made RSS grow ~3 KB per event between emits
        if self._gauge_task is None or self._gauge_task.done():
            self._gauge_task = asyncio.ensure_future(self._gauges_when_written(now))

    async def _gauges_when_written(self, now: datetime) -> None:
        await self._flush()
        self._gauges(now)

    def busy(self) -> str | None:
        """Why the consumer should hold back (None: it need not): `outputs` still to write, a
        `checkpoint` overdue, or KPI `windows` still to emit."""
        if len(self.outbox) > OUTBOX_HIGH_WATER:
            self.flush_soon()
            return "outputs"
        if time.monotonic() - self._checkpointed_at > self._checkpoint_overdue:
            # The outputs' producer and the checkpoint run on this loop: with the loop saturated by
            # input (a soak at 500x real time), no checkpoint finished for minutes, so a crash would
            # have re-read minutes, and contacts stayed unpacked (RSS +3 KB per event). Pausing the
            # input lets them finish; a crash re-reads at most a few intervals.
            return "checkpoint"
        if any(state.kpi.behind for state in self.stages.partitions.values()):
            return "windows"
        return None

    def _gauges(self, now: datetime) -> None:
        if self._restoring is not None and not self._restoring.done():
            return  # partitions still being restored: nothing can be said of them yet
        lowest = self.stages.lowest_final()
        if lowest is not None:
            metrics.KPI_WATERMARK_LAG.set((now - lowest).total_seconds())
        metrics.STATE_CONTACTS.labels("kpi").set(sum(s.kpi.live_contacts(k) for k, s in self.stages.partitions.items()))
        metrics.STATE_CONTACTS.labels("sla").set(sum(len(s.sla) for s in self.stages.partitions.values()))

    def flush_soon(self) -> None:
        """Start a background flush of the outbox unless one is running."""
        if len(self.outbox) and (self._flush_task is None or self._flush_task.done()):
            self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            await self.outbox.flush()
        except TerminalError as error:
            if self._stopped:  # the executor is closed under it: what is unwritten is read again
                return
            log.error("%s", error)
            await self._on_terminal(error)

    # ------------------------------------------------------------------ rebalances

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions given to this worker. Their restore runs in the background with the
        partitions paused, so the rebalance callback returns at once: the group's heartbeats wait
        for it, and restoring tens of thousands of contacts took longer than the session timeout
        (a 4-day soak rebalanced in a loop). A partition handed back to this worker is taken from
        the parked state when nobody checkpointed it since."""
        consumer = self.consumer
        assert consumer is not None
        wanted = {(tp.topic, tp.partition): tp for tp in partitions}
        for key in [k for k in self._parked if k not in wanted]:
            del self._parked[key]
        pending: list[tuple[TopicPartition, PartitionState | None]] = []
        kept: list[tuple[TopicPartition, PartitionState]] = []
        for key, tp in sorted(wanted.items()):
            state = self.stages.partitions.get(key)
            if state is not None:
                kept.append((tp, state))
            else:
                pending.append((tp, self._parked.pop(key, None)))
        await self._seek(kept)
        if pending:
            consumer.pause(*[tp for tp, _ in pending])
            self._restoring = asyncio.ensure_future(self._restore(pending))

    async def _restore(self, pending: list[tuple[TopicPartition, PartitionState | None]]) -> None:
        try:
            await self._restore_all(pending)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # paused partitions would stay unread: stop instead
            log.exception("restoring analytics state failed; stopping the worker")
            await self._on_terminal(error)

    async def _restore_all(self, pending: list[tuple[TopicPartition, PartitionState | None]]) -> None:
        consumer = self.consumer
        assert consumer is not None
        began = time.perf_counter()
        restored: list[tuple[TopicPartition, PartitionState]] = []
        # three queries for all the partitions, not three per partition: under load each took
        # 0.1-0.3 s, so 24 partitions of a few dozen contacts each still took 11.7 s in a soak
        keys = [(tp.topic, tp.partition) for tp, _ in pending]
        newest = await self._with_retry("clickhouse", self.store.head_versions, self._client, keys)
        parked = {key: state for key, (_, state) in zip(keys, pending, strict=True) if state is not None}
        stale = [key for key in keys if key not in parked or newest.get(key, 0) > parked[key].version]
        loaded = await self._with_retry("clickhouse", self.store.load_many, self._client, stale) if stale else {}
        states: dict[PartitionKey, PartitionState] = {}
        for key in keys:
            if key not in loaded:
                states[key] = parked[key]  # nobody else has checkpointed it since it was ours
                continue
            started = time.perf_counter()
            states[key] = await self._executor.run(self.stages.restore, key, loaded.pop(key))
            metrics.RESTORE_SECONDS.observe(time.perf_counter() - started)
        floors = {key: (states[key].kpi.head(key) or {}).get("next_final_ms") or 0 for key in stale}
        if floors:
            written = await self._with_retry("clickhouse", provisional_rows, self._client, floors)
            for key in floors:
                states[key].kpi.adopt_written(key, written.get(key, []))
        for tp, _ in pending:
            key = (tp.topic, tp.partition)
            state = states[key]
            if tp not in consumer.assignment():  # another rebalance took it meanwhile
                self._parked[key] = state
                continue
            # from now on deadlines that fell due while no worker owned the partition fire
            self.stages.partitions[key] = state
            restored.append((tp, state))
        await self._seek(restored)
        for tp, _ in restored:
            if tp in consumer.assignment():
                consumer.resume(tp)
        log.info(
            "analytics: %d partitions restored in %.1f s, %d contacts held; reading them",
            len(restored),
            time.perf_counter() - began,
            sum(s.contacts() for _, s in restored),
        )

    async def _seek(self, states: list[tuple[TopicPartition, PartitionState]]) -> None:
        """Each partition to the offset after its checkpoint, or to the beginning without one. The
        seeks to the beginning are one call: each waits for a fetcher cycle (0.5 s), and one per
        partition delayed a fresh worker's 24 partitions (and its SLA deadlines) by 10 s."""
        consumer = self.consumer
        assert consumer is not None
        for tp, state in states:
            if state.max_offset >= 0:
                consumer.seek(tp, state.max_offset + 1)
        from_start = [tp for tp, state in states if state.max_offset < 0 and tp in consumer.assignment()]
        if from_start:
            await consumer.seek_to_beginning(*from_start)

    async def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions taken away: parked, not checkpointed (the callback must be quick, and the
        checkpoint protocol makes any point safe: the next owner re-reads from the last checkpoint).
        A graceful stop checkpoints before it leaves the group."""
        if self._restoring is not None and not self._restoring.done():
            self._restoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restoring
        for tp in partitions:
            key = (tp.topic, tp.partition)
            state = self.stages.partitions.pop(key, None)
            if state is not None:
                self._parked[key] = state

    # ------------------------------------------------------------------ checkpoints

    async def checkpoint(self, keys: list[PartitionKey]) -> None:
        """Checkpoint `keys` in groups: each partition's snapshot in turn, then one flush of the
        outputs and one write of the group's snapshots (see the module docstring for the order).
        One flush and one write per partition made a round of 24 partitions take minutes in a
        soak (97 partition checkpoints in 10 minutes): the partitions at the end of the list were
        hardly ever checkpointed, and a restart read them again from the start. A group closes at
        CHECKPOINT_GROUP_ROWS changed contacts, so the rows waiting to be written stay bounded."""
        async with self._checkpointing:
            started = time.perf_counter()
            group: list[tuple[PartitionKey, Checkpoint]] = []
            rows = 0
            for key in keys:
                if self._stopped:
                    return  # the stop's own checkpoint has had its time: the rest is read again
                async with self._lock:
                    state = self.stages.partitions.get(key)
                    if state is not None:
                        group.append((key, await self._snapshot(state)))
                        rows += len(group[-1][1].changed)
                if rows >= CHECKPOINT_GROUP_ROWS:
                    await self._commit(group)
                    group, rows = [], 0
            if group:
                await self._commit(group)
            self._checkpointed_at = time.monotonic()
            metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)

    async def _commit(self, snapshots: list[tuple[PartitionKey, Checkpoint]]) -> None:
        """Flush the outputs, write the snapshots, then mark their offsets committable."""
        try:
            await self.outbox.flush()  # every output computed before the snapshots were taken
            await self._with_retry("clickhouse", self.store.write, self._client, [s for _, s in snapshots])
        except TerminalError as error:
            if self._stopped:  # the executor is closed under it: not a failure of ClickHouse
                return
            log.error("%s", error)
            await self._on_terminal(error)
            raise
        if self.consumer is not None:
            self.consumer.ready({key: s.max_offset for key, s in snapshots if s.max_offset >= 0})
        metrics.CHECKPOINT_ROWS.inc(sum(s.rows for _, s in snapshots))
        metrics.CHECKPOINT_BYTES.inc(sum(s.bytes for _, s in snapshots))

    async def _snapshot(self, state: PartitionState) -> Checkpoint:
        """The partition's checkpoint rows: changed contacts, tombstones and head (under `_lock`)."""
        if self.sla_clock == "event":
            self._sla(self.stages.tick_partition(state, datetime.now(UTC)), datetime.now(UTC))
        started_at = self.stages.begin_checkpoint(state)
        changed: list[ContactRecord] = []
        dropped: list[str] = []
        state.kpi.hold_evictions = state.sla.hold_evictions = True
        try:
            step = time.perf_counter()
            for i in range(0, len(started_at.contacts), CHECKPOINT_SLICE):
                # a slice at a time, the loop free in between (a backfill changes tens of thousands
                # of contacts between checkpoints); the SLA check goes on, but no contact is dropped
                # until the slices are done
                more, gone = self.stages.contact_records(state, started_at.contacts[i : i + CHECKPOINT_SLICE])
                changed += more
                dropped += gone
                if time.perf_counter() - step > CHECKPOINT_YIELD_SECONDS:
                    await asyncio.sleep(0)
                    step = time.perf_counter()
        finally:
            state.kpi.hold_evictions = state.sla.hold_evictions = False
        return self.stages.end_checkpoint(state, self.store, started_at, changed, dropped)

    async def checkpoint_all(self) -> None:
        await self.checkpoint(list(self.stages.partitions))

    async def stop(self, budget: float) -> None:
        """The last checkpoint of a graceful stop, given `budget` seconds; then no more. Cut short,
        it leaves what a crash leaves: partitions it did not reach are read again from their
        previous checkpoint and their outputs rewritten identically."""
        try:
            await asyncio.wait_for(self.checkpoint_all(), budget)
        except TimeoutError:
            log.warning(
                "stopping: the last checkpoint did not finish in %.0f s; partitions it did not reach "
                "are read again from their previous checkpoint by their next owner",
                budget,
            )
        self._stopped = True

    async def _with_retry(self, dependency: str, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call off the loop, transient failures retried."""
        return await retrying(self._health, dependency, self._executor.run, fn, *args)

    # ------------------------------------------------------------------ outputs

    def _late(self, late: list[LateEvent]) -> None:
        if not late:
            return
        messages: list[Outgoing] = []
        for item in late:
            metrics.EVENTS_LATE.labels(item.event.channel.value).inc()
            headers = {
                "touchline.reason": b"late",
                "touchline.window_start": item.window_start.isoformat().encode(),
                "touchline.watermark": item.watermark.isoformat().encode(),
                "touchline.source.topic": item.partition[0].encode(),
                "touchline.source.partition": str(item.partition[1]).encode(),
            }
            messages.append((item.event.contact_id.encode(), to_json(item.event), headers))
        self.outbox.messages(self.topics.late, messages)

    def _sla(self, events: list[SlaEvent], now: datetime) -> None:
        if not events:
            return
        self.outbox.sla_rows(sla_records(events, now))
        wall = self.sla_clock == "wall"
        counted: Counter[tuple[str, str, str, str]] = Counter()
        for item in events:
            counted[item.channel, item.target.value, item.kind.value, item.policy] += 1
            if wall and item.kind.value == "breached":
                metrics.SLA_DETECTION_SECONDS.observe(max(0.0, (now - item.deadline).total_seconds()))
        for labels, count in counted.items():  # a label lookup per kind, not per outcome
            metrics.SLA_EVENTS.labels(*labels).inc(count)
        self.outbox.messages(self.topics.sla, sla_messages(events))

    # ------------------------------------------------------------------ erasure, introspection

    async def forget(self, contact_ids: set[str]) -> int:
        """Erasure: drop these contacts from the in-memory state and their outputs not yet written;
        their windows keep the aggregates they already count. Then a checkpoint writes their
        tombstones and the offsets read so far are committed: a later owner of the partitions (a
        rebalance, a restart) must not read their events again from an older checkpoint and write
        their rows and journey records back. Returns how many contacts were held."""
        async with self._lock:
            held = 0
            for state in self.stages.partitions.values():
                held += _forget_in(state, contact_ids)
        await self.outbox.drop(contact_ids)
        await self.checkpoint_all()
        if self.consumer is not None:
            await self.consumer.commit(required=True)
        return held

    def state_sizes(self) -> dict[str, int]:
        return {
            "partitions": len(self.stages.partitions),
            "contacts": sum(s.contacts() for s in self.stages.partitions.values()),
            "outbox": len(self.outbox),
        }


def sla_messages(events: Sequence[SlaEvent]) -> list[Outgoing]:
    """The messages of SLA outcomes for the SLA topic: keyed by contact, the JSON of `to_dict`."""
    encode = _SLA_JSON.encode
    return [(item.contact_id.encode(), encode(item.to_dict()), None) for item in events]


def provisional_rows(
    client: Client, floors: dict[PartitionKey, int]
) -> dict[PartitionKey, list[tuple[int, str, str, int, int]]]:
    """KPI rows of each partition's open windows (from its floor, ms) whose latest version is not
    final: written after the last checkpoint, perhaps for a dimension the replay will not fill
    again (blocking; one query for all the partitions)."""
    result = client.query(
        "SELECT source_topic, source_partition, toUnixTimestamp(window_start) * 1000, channel, queue, priority,"
        " max(version) FROM kpi_minute_partials WHERE source_topic IN {t:Array(String)}"
        " AND source_partition IN {p:Array(UInt16)} AND window_start >= toDateTime(intDiv({f:Int64}, 1000), 'UTC')"
        " GROUP BY source_topic, source_partition, window_start, channel, queue, priority"
        " HAVING argMax(final, version) = 0",
        parameters={
            "t": sorted({t for t, _ in floors}),
            "p": sorted({p for _, p in floors}),
            "f": min(floors.values()),
        },
    )
    out: dict[PartitionKey, list[tuple[int, str, str, int, int]]] = {}
    for topic, partition, w, c, q, p, v in result.result_rows:
        key = (str(topic), int(partition))
        if key in floors and int(w) >= floors[key]:
            out.setdefault(key, []).append((int(w), str(c), str(q), int(p), int(v)))
    return out


def _forget_in(state: PartitionState, contact_ids: set[str]) -> int:
    held = 0
    for contact_id in contact_ids:
        known = contact_id in state.sla or bool(state.kpi.contact_events(state.key, contact_id))
        if known:
            held += 1
            state.kpi.forget_contact(state.key, contact_id)
            state.sla.forget(contact_id)
            state.pending = [p for p in state.pending if p[2].contact_id != contact_id]
            state.raised.pop(contact_id, None)
            state.raised_changed.add(contact_id)
    if held:
        heapq.heapify(state.pending)
    return held

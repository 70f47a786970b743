"""Batch consumption of the channel topics with aiokafka, inside the Faust app.

Why not a Faust agent: Faust hands an agent one message at a time through its conductor, channel
queue and stream, which caps even an agent that only counts and acknowledges at about 10,000
messages/s on one core (`make bench` measures it), while aiokafka's `getmany` delivers whole
fetches. The worker's stages work on batches, so the channel topics are read here, one consumer
group per stage, and Faust runs everything else (web, timers, tables, the journey agent, producing).

A stage supplies three coroutines: `handle` for every fetched batch, `assigned` and `revoked` for
rebalances. `handle` and the rebalance callbacks never overlap. Offsets are committed only when the
stage says they are safe (`ready`), by this loop, so a commit never waits inside `handle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from pipeline.worker import fetched, metrics
from pipeline.worker.health import Health

log = logging.getLogger(__name__)

Records = dict[TopicPartition, list[fetched.FetchedRecord]]
PartitionsHook = Callable[[Sequence[TopicPartition]], Awaitable[None]]


@dataclass(frozen=True)
class StageHooks:
    handle: Callable[[Records], Awaitable[None]]
    assigned: PartitionsHook
    revoked: PartitionsHook
    # why not to fetch now (backpressure: outputs to write, ...), None: fetch
    busy: Callable[[], str | None] | None = None


class BatchConsumer:
    def __init__(
        self,
        stage: str,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        hooks: StageHooks,
        *,
        security: Mapping[str, Any] | None = None,
        max_records: int,
        on_failure: Callable[[BaseException], Awaitable[None]],
        health: Health | None = None,
        session_timeout_seconds: float = 10.0,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        client_id: str | None = None,
    ) -> None:
        self.stage = stage
        self._on_failure = on_failure
        self._health = health
        self._topics = list(topics)
        self._hooks = hooks
        self._max_records = max_records
        self._lock = asyncio.Lock()  # a batch and a rebalance callback never interleave
        self._ready: dict[TopicPartition, int] = {}
        self._handed: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            **(security or {}),  # TLS / SASL: pipeline.kafka_security.client_options
            "group_id": group_id,
            "client_id": client_id or group_id,  # with the worker's URL: pipeline.worker.peers
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "value_deserializer": fetched.RAW,  # messages as `FetchedRecord`s (see pipeline.worker.fetched)
            # what a lagging consumer holds fetched but not yet handed over: 4 MB a partition and
            # 64 MB a fetch were up to 2 x 64 MB in a worker running ingest and analytics
            "max_partition_fetch_bytes": 1024 * 1024,
            "fetch_max_bytes": 16 * 1024 * 1024,
            "fetch_min_bytes": fetch_min_bytes,
            "fetch_max_wait_ms": fetch_max_wait_ms,
            # heartbeats share the event loop with the stages, which never block it for more than
            # a second (touchline_loop_stall_seconds); a short session lets a restarted or
            # replacement worker take a dead worker's partitions within seconds
            "session_timeout_ms": int(session_timeout_seconds * 1000),
            "heartbeat_interval_ms": max(500, int(session_timeout_seconds * 1000) // 4),
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._fetching = metrics.CONSUMER_WAIT.labels(stage, "fetch")

    # ------------------------------------------------------------------ called by the stage

    def ready(self, offsets: dict[tuple[str, int], int]) -> None:
        """Mark the highest offset of each partition that is safely processed; it is committed soon."""
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if offset >= self._ready.get(tp, -1):
                self._ready[tp] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.consumer.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.consumer.resume(*partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(tp, offset)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        """One call for many: each call waits for a fetcher cycle."""
        if tps:
            await self.consumer.seek_to_beginning(*tps)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"the {self.stage} consumer is not started")
        return self._consumer

    async def start(self) -> None:
        fetched.install()
        self._consumer = AIOKafkaConsumer(**self._options)  # needs the running loop
        await self.consumer.start()
        self.consumer.subscribe(self._topics, listener=_Listener(self))
        self._task = asyncio.ensure_future(self._run())

    async def halt(self) -> None:
        """Stop reading. What was handed to the stage is the stage's to finish before `close`."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=30)

    async def close(self) -> None:
        """Commit what the stage marked ready and leave the group."""
        if self._consumer is None:
            return
        async with self._lock:
            await self.commit()
        try:
            await self.consumer.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop is being cancelled: let it be
            # aiokafka's fetcher, cancelled by the stop while the broker was down, re-raises that in
            # `stop`: it ended the worker's shutdown there, before Faust's consumer thread was
            # stopped, and that thread held the process for another 70 s
            log.warning("%s: the consumer's fetcher was cancelled while stopping (broker down?)", self.stage)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            held_back = self._hooks.busy() if self._hooks.busy is not None else None
            if held_back is not None:
                # the stage is behind (outputs to write, windows to emit): wait, heartbeats go on
                began = time.perf_counter()
                await self.commit()
                await asyncio.sleep(0.05)
                metrics.CONSUMER_WAIT.labels(self.stage, held_back).inc(time.perf_counter() - began)
                continue
            try:
                began = time.perf_counter()
                batches = await self.consumer.getmany(timeout_ms=100, max_records=self._max_records)
                self._fetching.inc(time.perf_counter() - began)
            except KafkaError as error:
                if self._health is not None:
                    self._health.failed(f"kafka-consumer-{self.stage}", error)
                else:
                    log.warning("%s: fetching failed (%s); retrying", self.stage, error)
                await asyncio.sleep(1)
                continue
            if batches and self._health is not None:  # records came: the broker answers
                self._health.ok(f"kafka-consumer-{self.stage}")
            if batches and not self._stopping.is_set():
                async with self._lock:
                    for tp, records in batches.items():
                        self._handed[tp] = records[-1].offset
                    try:
                        await self._hooks.handle(batches)
                    except Exception as error:
                        # a stage that cannot go on must not leave the worker up but deaf: stop it
                        # (its partitions go to other workers, which read on from the last commit)
                        log.exception("%s: handling a batch failed; stopping the worker", self.stage)
                        await self._on_failure(error)
                        return
            await self.commit()

    async def commit(self, *, required: bool = False) -> None:
        """Commit what `ready` marked. `required`: a failed commit raises (an erasure must know)."""
        if not self._ready:
            return
        offsets = {tp: offset + 1 for tp, offset in self._ready.items() if tp in self.consumer.assignment()}
        self._ready.clear()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as error:  # rebalancing: the partitions' new owners redo what is uncommitted
            log.info("%s: commit skipped (%s); uncommitted messages are read again", self.stage, error)
            if required:
                raise

    async def probe(self, timeout: float = 5.0) -> None:
        """Ask the cluster for its metadata and report the outcome to `/health`: a consumer keeps
        reconnecting quietly while the broker is down, so fetching alone never says so."""
        if self._consumer is None or self._health is None:
            return
        # aiokafka exposes no public liveness check; its client's metadata refresh is one request
        await probe_cluster(self._consumer._client, self._health, f"kafka-consumer-{self.stage}", timeout)

    def measure_lag(self) -> None:
        """Set the lag gauge of every assigned partition: messages after the last one handed to the
        stage (unknown, so not set, until this process has read from the partition)."""
        for tp in self.assignment():
            high = self.consumer.highwater(tp)
            handed = self._handed.get(tp)
            if high is None or handed is None:
                continue
            metrics.CONSUMER_LAG.labels(self.stage, tp.topic, str(tp.partition)).set(max(0, high - handed - 1))


async def probe_cluster(client: Any, health: Health, dependency: str, timeout: float) -> None:
    """One metadata request through an aiokafka client; its outcome reported to `health`."""
    try:
        updated = await asyncio.wait_for(client.force_metadata_update(), timeout)
    except (TimeoutError, KafkaError, OSError) as error:
        health.failed(dependency, error)
        return
    if updated:
        health.ok(dependency)
    else:
        health.failed(dependency, ConnectionError("the broker did not answer a metadata request"))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        owner = self._owner
        async with owner._lock:
            await owner._hooks.revoked(list(revoked))
            await owner.commit()
        for tp in revoked:
            if owner._handed.pop(tp, None) is not None:
                metrics.CONSUMER_LAG.remove(owner.stage, tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._owner._lock:
            await self._owner._hooks.assigned(list(assigned))

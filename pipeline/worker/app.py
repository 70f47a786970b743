"""The worker: a Faust application that hosts the stages and serves `/metrics`, `/health`, the
journey lookup and the read-only `/sql` endpoint on its web port.

The channel topics are read in batches by aiokafka consumers, one consumer group per stage (see
`pipeline.worker.consumer` for why not a Faust agent): ingest (`IngestSink`: validate, dead-letter,
write raw events) and analytics (`AnalyticsStage`: KPI windows, SLA clocks, the forward to the
journey stage). Faust runs the rest: timers, the journey agent and its table, producing, the web
server. `worker_role` chooses the stages a process runs."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pipeline.config import Settings
from pipeline.events.topics import HANDOVER_MAX_BYTES
from pipeline.kafka_security import client_options, faust_credentials
from pipeline.kpi.settings import KpiConfig
from pipeline.privacy import erasure
from pipeline.privacy.runtime import configure_worker, limits_of
from pipeline.sla.policy import load_policies
from pipeline.store.clickhouse import (
    BlockingExecutor,
    clickhouse_memory,
    connect,
    engine_allocator_resident,
    is_embedded,
    redact,
    release_engine_memory,
)
from pipeline.store.migrations import migrate
from pipeline.topics import ensure_topics
from pipeline.worker import metrics, peers
from pipeline.worker.analytics import AnalyticsStage
from pipeline.worker.consumer import BatchConsumer, Records, StageHooks
from pipeline.worker.forget_view import install_forget_view
from pipeline.worker.health import Health
from pipeline.worker.journey_agent import forward_events, install_journey_stage
from pipeline.worker.journey_split_agent import install_split_journey_stage
from pipeline.worker.journeys import ForwardLine
from pipeline.worker.loop_watch import watch_loop
from pipeline.worker.outbox import Outbox
from pipeline.worker.produce import produce
from pipeline.worker.sink import IngestSink, Outgoing
from pipeline.worker.sql_view import ReadonlyPool, install_sql_view
from pipeline.worker.stages import Stages
from pipeline.worker.startup import Startup
from pipeline.worker.table_manager import PromptTableManager

log = logging.getLogger(__name__)
# the collector's policy (see `start_consumers` and `settle_long_lived_objects`)
GC_THRESHOLDS = (10_000, 10, 10)
FREEZE_SECONDS = 10.0

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc only (not musl)

# of a graceful stop's budget (5 s): leaving the groups and Faust's own shutdown took 2.2 s
STOP_CHECKPOINT_SECONDS = 2.5


# aiohttp refuses a charset inside content_type; the exposition format is UTF-8 by definition
METRICS_CONTENT_TYPE = "; ".join(p for p in CONTENT_TYPE_LATEST.split("; ") if not p.startswith("charset"))


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip())


def channel_group(settings: Settings, stage: str) -> str:
    """The consumer group of a stage reading the channel topics (`ingest`, `analytics`)."""
    return f"{settings.app_id}-{stage}"


@dataclass
class Shared:
    """What the stages of one worker share."""

    settings: Settings
    app: faust.App
    client: Client  # KPI rows, SLA events, journeys, checkpoints: one thread, in order
    executor: BlockingExecutor
    consumers: list[BatchConsumer]
    health: Health

    def channel_consumer(self, stage: str, hooks: StageHooks) -> BatchConsumer:
        group = channel_group(self.settings, stage)
        consumer = BatchConsumer(
            stage,
            self.settings.bootstrap_servers,
            group,
            list(self.settings.topics.interactions.values()),
            hooks,
            security=client_options(self.settings),
            max_records=self.settings.batch_max_rows,
            on_failure=self.app.crash,
            health=self.health,
            session_timeout_seconds=self.settings.kafka_session_timeout_seconds,
            fetch_min_bytes=self.settings.kafka_fetch_min_bytes,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            client_id=peers.client_id(group, str(self.app.conf.canonical_url)),
        )
        self.consumers.append(consumer)
        return consumer


def faust_app(settings: Settings, datadir: Path, web_port: int | None = None) -> faust.App:
    """The Faust app of a worker (its producer, the journey stage's group, tables and web server)."""
    return faust.App(
        settings.app_id,
        broker=broker_url(settings.bootstrap_servers),
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store=settings.table_store,
        table_standby_replicas=settings.table_standby_replicas,
        # one directory per worker: RocksDB locks its files
        datadir=str(datadir),
        web_host=settings.worker_advertised_host or settings.worker_web_host,  # other workers reach it there
        web_port=web_port or settings.worker_web_port,
        web_bind=settings.worker_web_host,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # the journey agent's group: a dead worker's journey partition moves within this (Faust's
        # consumer heartbeats from a thread of its own, so a short session is safe)
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=max(0.5, settings.kafka_session_timeout_seconds / 4),
        producer_acks=-1,
        producer_request_timeout=settings.kafka_producer_request_timeout_seconds,
        producer_max_request_size=HANDOVER_MAX_BYTES + 64 * 1024,  # a message plus its batch's framing
        logging_config=None,
        TableManager=PromptTableManager,
    )


def faust_topics(app: faust.App) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """The topics Faust itself declares for the journey stage's group, as `ensure_topics` takes them:
    each table's changelog (compacted, as Faust declares it) and the assignor's leader topic."""
    specs: dict[str, int] = {f"{app.conf.id}-__assignor-__leader": 1}
    configs: dict[str, dict[str, str]] = {}
    for table in app.tables.values():
        name = table.changelog_topic.get_topic_name()
        specs[name] = table.partitions or app.conf.topic_partitions
        configs[name] = {"cleanup.policy": "compact"}
    return specs, configs


def declare_faust_topics(app: faust.App, settings: Settings) -> None:
    """Create the topics Faust would create at start, before its consumer joins the group. Faust
    creates them concurrently with the join: once, a changelog topic created 0.4 s before the
    assignment was still missing from the consumer's metadata, the assignor left it out ("Ignoring
    missing topic"), and until the next rebalance the worker neither restored that table from its
    changelog nor knew who held it (every lookup routed through it answered 503 for minutes;
    session 43's clean-clone run). `ensure_topics` waits until every topic it creates has leaders."""
    specs, configs = faust_topics(app)
    ensure_topics(settings.bootstrap_servers, specs, configs=configs, options=client_options(settings))


def create_app(settings: Settings, *, web_port: int | None = None) -> tuple[faust.App, Startup]:
    configure_worker(settings)  # plausible times, message keys, pseudonyms: before any stage decodes
    ensure_topics(
        settings.bootstrap_servers,
        settings.topics.specs(settings.topic_partitions, settings.journey_builders),
        configs=settings.topics.configs(settings.journey_builders),
        options=client_options(settings),
    )
    client = connect(settings.clickhouse_url, settings.clickhouse_database)
    applied = migrate(client)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    sql_pool = ReadonlyPool(
        settings.clickhouse_url, settings.clickhouse_database, limits_of(settings), settings.sql_connections
    )
    executor = BlockingExecutor()
    embedded = is_embedded(settings.clickhouse_url)

    datadir = settings.data_dir / "faust" / f"{settings.app_id}-{web_port or settings.worker_web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust_app(settings, datadir, web_port)
    shared = Shared(settings, app, client, executor, [], Health())
    startup = Startup(shared.health, settings.bootstrap_servers, client_options(settings))
    roles = settings.worker_stages
    sink = _ingest(shared) if "ingest" in roles else None
    analytics = _analytics(shared) if "analytics" in roles else None
    if "journeys" in roles:
        journey_events = app.topic(settings.topics.journey_events, value_serializer="raw", key_serializer="raw")
        if settings.journey_builders:
            install_split_journey_stage(app, client, executor, journey_events, settings, shared.health)
        else:
            install_journey_stage(app, client, executor, journey_events, settings, shared.health)
        declare_faust_topics(app, settings)
    else:
        # nothing here reads through Faust (the channel topics have their own consumers): no member
        # in the journey stage's group. As a member, an `ingest,analytics` worker was elected its
        # leader, answered a journeys worker's rejoin 1.5 s late when busy, and each of its restarts
        # made the journey owner rebalance and restore its whole state again
        app.producer_only = True

    @app.task
    async def start_consumers() -> None:
        # the stages' state grows to millions of long-lived objects: the collector need not scan
        # what exists at start, and a first generation of 10,000 (not 700) makes collections far
        # rarer. In-process analytics: 13.4k events/s at 700, 18.2k at 50,000 and the same at
        # 10,000; but (50,000, 20) let the second generation reach a million objects, and each of
        # its collections held every thread for 0.55 s on average in a soak (up to 0.8 s).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        for consumer in shared.consumers:
            await consumer.start()
        startup.finished()

    @app.timer(interval=FREEZE_SECONDS)
    async def settle_long_lived_objects() -> None:
        # what survived the young collections is the stages' state: frozen, a full collection
        # (which walks every tracked object while holding the GIL, seconds for millions) never
        # walks it again. Frozen objects are still freed by reference counting; only a cycle
        # among them would stay, and the state holds none (6 simulated hours through the analytics core:
        # 422k tracked objects, no cyclic garbage found while running or once the state was dropped).
        # Every 10 s: frozen once a minute, a minute's survivors made full collections that held
        # every thread for 1.2-1.4 s in a soak at 500x real time.
        if not gc.isenabled():
            # a journey restore on its thread has paused collection (`collection_paused`) and
            # freezes what it made when it ends: a collection now would walk its millions of new
            # objects while holding the GIL (restore and loop both wait)
            return
        gc.collect(1)
        gc.freeze()
        # no gauge of the frozen objects: gc.get_freeze_count() walks all of them, holding the GIL
        # (0.70 s for 3M; 0.55 s a call, 5.6 % of the analytics loop in make bench's load pass)

    @app.timer(interval=60.0)
    async def return_freed_memory() -> None:
        if _MALLOC_TRIM is not None:
            # glibc keeps freed heap pages (a worker's parsed batches, sent outputs) mapped in
            # every thread's arena; handing them back keeps RSS near what the state holds.
            # ctypes releases the GIL for the call: it runs beside the loop, not on it
            await asyncio.to_thread(_MALLOC_TRIM, 0)
        try:
            tracked = await executor.run(clickhouse_memory, client)
            resident = await executor.run(engine_allocator_resident, client) if embedded else 0
        except Exception:  # a failing store shows in its own metrics and /health; this is a gauge only
            return
        metrics.CLICKHOUSE_MEMORY.set(tracked)
        metrics.CLICKHOUSE_RESIDENT.set(resident)

    if embedded:

        @app.timer(interval=2.0)
        async def return_engine_memory() -> None:
            try:
                await executor.run(release_engine_memory, client)
            except Exception:  # a failing store shows in its own metrics and /health
                return

    @app.task
    async def watch_the_loop() -> None:
        await watch_loop()

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        for consumer in shared.consumers:
            consumer.measure_lag()
            await consumer.probe()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust types receivers as sync-or-awaitable unions
    async def stop_stages(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        for consumer in shared.consumers:
            await consumer.halt()
        if sink is not None:
            await sink.drain()
        if analytics is not None:
            # bounded: in a soak (2 cores shared, 23k outputs waiting) this last checkpoint took 12 s
            await analytics.stop(STOP_CHECKPOINT_SECONDS)
        for consumer in shared.consumers:
            try:
                await consumer.close()
            except Exception:  # the others still leave their groups, the store still closes
                log.exception("closing the %s consumer failed", consumer.stage)
        executor.shutdown()

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Request) -> Response:
        response: Response = web.bytes(generate_latest(), content_type=METRICS_CONTENT_TYPE)
        return response

    @app.page("/health")
    async def health(web: Any, request: Request) -> Response:
        stages = {c.stage: len(c.assignment()) for c in shared.consumers}
        if "journeys" in roles:  # partitions of the journey state restored and served here
            stages["journeys"] = int(REGISTRY.get_sample_value("touchline_journey_partitions") or 0)
        channel_stages = [n for stage, n in stages.items() if stage != "journeys"]
        failing = shared.health.report()
        response: Response = web.json(
            {
                # degraded: a dependency (ClickHouse, the broker) is failing and being retried;
                # starting: Faust is starting (the journey agent waits for its partitions), the
                # stages are not reading yet
                "status": "degraded" if failing else "ok" if startup.started else "starting",
                "failing": failing,
                "state": analytics.state_sizes() if analytics is not None else {},
                "app_id": settings.app_id,
                "role": settings.worker_role,
                "embedded_clickhouse": settings.embedded_clickhouse,
                "clickhouse_database": settings.clickhouse_database,
                # identity of the store it holds: `touchline sql` uses this worker only when it names its own
                "store": redact(settings.clickhouse_url),
                # channel-topic partitions of the stage holding fewest: > 0 once every stage reads (a
                # journeys-only worker: the journey partitions it serves)
                "assigned_partitions": min(channel_stages) if channel_stages else stages.get("journeys", 0),
                "stages": stages,
            }
        )
        return response

    install_sql_view(app, sql_pool)
    # stages register their hooks in pipeline.privacy.erasure; every worker's run (forget_view)
    groups = [channel_group(settings, stage) for stage in ("ingest", "analytics")]
    install_forget_view(app, client, executor, settings, groups)
    return app, startup


def _ingest(shared: Shared) -> IngestSink:
    """Validate, dead-letter, deduplicate and write raw events; commit offsets once written."""
    settings, app = shared.settings, shared.app

    async def send_dead_letters(messages: list[Outgoing]) -> None:
        await produce(app, settings.topics.deadletter, messages)

    consumer: BatchConsumer | None = None

    def written(offsets: dict[tuple[str, int], int]) -> None:
        assert consumer is not None
        consumer.ready(offsets)

    # raw events get their own connection and thread, so a batch is never queued behind the
    # analytics writes (KPI rows, journeys, checkpoints); chDB serializes calls per connection only
    sink = IngestSink(
        connect(settings.clickhouse_url, settings.clickhouse_database, own=True),
        BlockingExecutor("ingest"),
        send_dead_letters,
        max_rows=settings.batch_max_rows,
        max_seconds=settings.batch_max_seconds,
        max_event_bytes=settings.max_event_bytes,
        dedup_capacity=settings.dedup_cache_size,
        on_written=written,
        topics=settings.topics,
    )
    erasure.register("ingest", sink.forget)

    async def handle(batches: Records) -> None:
        for tp, records in batches.items():
            await sink.handle(tp.topic, tp.partition, records)

    async def assigned(partitions: Sequence[TopicPartition]) -> None:
        return None

    async def revoked(partitions: Sequence[TopicPartition]) -> None:
        await sink.drain()  # the batch in hand, so its offsets are committed before the handover

    consumer = shared.channel_consumer("ingest", StageHooks(handle, assigned, revoked))

    @app.timer(interval=min(0.2, settings.batch_max_seconds / 2))
    async def flush_due() -> None:
        await sink.tick()

    return sink


# event-clock mode: held events handed to the SLA engine per partition and tick at most; a 90-day
# ticket backfill had one tick of 1.8 s releasing a whole batch's worth
SLA_RELEASE_PER_TICK = 2_000


def _analytics(shared: Shared) -> AnalyticsStage:
    """KPI windows and SLA clocks per source partition; contacts are forwarded to the journey stage."""
    settings, app, client, executor = shared.settings, shared.app, shared.client, shared.executor
    kpi_config = KpiConfig(
        allowed_lateness_seconds=settings.kpi_allowed_lateness_seconds,
        idle_timeout_seconds=settings.kpi_idle_seconds,
        ended_retention_hours=settings.kpi_ended_retention_hours,
        unended_retention_days=settings.kpi_open_retention_days,
    )
    stages = Stages(
        kpi_config,
        load_policies(settings.sla_policies_file),
        app_id=settings.app_id,
        sla_clock=settings.sla_clock,
        sla_closed_retention=timedelta(hours=settings.sla_closed_retention_hours),
        sla_open_retention=timedelta(days=settings.sla_open_retention_days),
    )

    async def send(topic: str, messages: list[Outgoing]) -> None:
        await produce(app, topic, messages)

    async def forward_to_journeys(lines: list[ForwardLine]) -> None:
        await forward_events(app, settings.topics.journey_events, lines)

    stages.release_limit = SLA_RELEASE_PER_TICK
    analytics = AnalyticsStage(
        stages,
        client,
        executor,
        Outbox(client, executor, send, forward_to_journeys, shared.health, insert_rows=settings.batch_max_rows),
        shared.health,
        max_event_bytes=settings.max_event_bytes,
        dedup_capacity=settings.dedup_cache_size,
        on_terminal=app.crash,
        topics=settings.topics,
        checkpoint_seconds=settings.checkpoint_seconds,
    )
    analytics.consumer = shared.channel_consumer(
        "analytics", StageHooks(analytics.handle, analytics.assigned, analytics.revoked, analytics.busy)
    )
    metrics_open_labels: set[tuple[str, str]] = set()

    async def forget(subject: erasure.Subject) -> int:
        return await analytics.forget(set(subject.contact_ids))

    erasure.register("analytics", forget)

    @app.timer(interval=settings.sla_tick_seconds)
    async def sla_deadlines() -> None:
        analytics.tick_sla(datetime.now(UTC))

    @app.timer(interval=5.0)
    async def count_open_obligations() -> None:
        counts = stages.open_obligations()
        for labels in set(metrics_open_labels) - counts.keys():
            metrics.SLA_OPEN.labels(*labels).set(0)
        for labels, n in counts.items():
            metrics.SLA_OPEN.labels(*labels).set(n)
        metrics_open_labels.update(counts)

    @app.timer(interval=settings.kpi_emit_seconds)
    async def kpi_windows() -> None:
        await analytics.emit_kpis(datetime.now(UTC))

    @app.timer(interval=settings.checkpoint_seconds)
    async def checkpoint_all() -> None:
        await analytics.checkpoint_all()

    return analytics

"""The journey stage's Faust shell: the forward from the analytics stage, the agent on
`touchline.journey-events`, its three changelogged tables and the lookup endpoint. The plain parts
are in `pipeline.worker.journeys`, the rules in `pipeline.journeys`.

State, keyed and changelogged (RocksDB + compacted changelog topic, one partition like its input):

* `journey-identity`: smallest identifier -> the identifier members of its identity component.
* `journey-contacts`: contact id -> merged `ContactRecord` (identifiers, links, milestones) and its
  anchor in the identity graph.
* `journey-emitted`: journey id -> `Emitted` (last version written, contacts, content digest).

The identity graph and the customer books are rebuilt from the tables when this worker gets the
partition (`Stitcher.from_state`: components loaded, contacts hung on their anchors; no event is
re-read or re-validated, no union replayed), then kept in memory and updated per round. A round is
the messages that arrive within 50 ms, up to `TAKE_MESSAGES` (each one analytics batch's contact
records), and is finished before the next is taken: apply the records -> journeys that changed ->
retention pass -> write the round down (`mark_round`: a successor restored at its start reads that
round again, whole, before anything else) -> write the journey rows to ClickHouse and the documents
to `touchline.journeys` (retried) -> send the changed keys to the tables' changelogs (identity
components first, so a contact's anchor never precedes its component) and wait for their delivery
(retried), then write them to the stores -> only then are its messages acknowledged. The round's
last state entry is the offset after its last message, so the state says what it has applied: a
message below that offset (redelivered after a crash) is acknowledged without work, and a gap above
it (messages Faust acknowledged while it skipped them, see `read_again`) is read again from the
topic. Every step yields to the loop between slices. Records merge idempotently and versions
continue from `journey-emitted`, so a crash anywhere gives the same result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
from clickhouse_connect.driver.client import Client
from faust.types import TP
from faust.web import Request, Response

from pipeline.config import Settings
from pipeline.journeys.identity import IdentityConfig, placeholder_values
from pipeline.journeys.model import DAY, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord
from pipeline.journeys.rows import JOURNEY_COLUMNS, STEP_COLUMNS
from pipeline.journeys.stitcher import Stitcher, collection_paused
from pipeline.kafka_security import client_options
from pipeline.privacy import access, erasure, pseudonym
from pipeline.store.clickhouse import BlockingExecutor, insert_rows
from pipeline.worker import journey_metrics as jm
from pipeline.worker import journeys as journey_stage
from pipeline.worker import metrics
from pipeline.worker.health import Health
from pipeline.worker.produce import produce
from pipeline.worker.table_writes import write_partition
from pipeline.worker.topic_range import Messages, read_range

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLY_SLICE = 500  # records applied between yields to the loop (~25 ms)
CHANGES_SLICE = 200  # customers whose journeys are rebuilt between yields to the loop
OUTPUT_SLICE = 500  # journey versions rendered, or state keys written, between yields to the loop
# retention heap entries visited between yields to the loop (~50 ms). Every round evicts all that is
# due: a budget of 2,000 per message let retention fall behind when messages carried more records
# (benchmarks/journeys.py --days 4 --windows short: 13,015 of the 145,636 journeys due were still held
# at the end, and 2,700 more contacts on day 3, growing)
EVICT_SLICE = 2_000
LOOKUP_WAIT_SECONDS = 30.0
FORGET_CATCH_UP_SECONDS = 60.0  # above TAIL_IDLE_SECONDS: a skipped tail is read after that
HELD_MARK = "journey partition"  # an erasure's mark: the worker holding the journey state forgot the person
# an owner idle this long while its partition holds messages past the state's offset reads them
# itself: its consumer will not hand them over (acknowledged while skipped, see `read_again`)
TAIL_IDLE_SECONDS = 10.0
# how long a round waits for more messages (TAKE_MESSAGES) once one is there: the journeys' latency
TAKE_WITHIN_SECONDS = 0.05
# `journey-emitted` entries of the stage itself, not journeys
STAGE_KEYS = frozenset({journey_stage.INPUT_OFFSET_KEY, journey_stage.ROUND_KEY})


async def forward_events(app: faust.App, topic: str, lines: list[journey_stage.ForwardLine]) -> None:
    """What the analytics stage hands the journey stage (`journey_stage.forward_lines` of the
    batches' new valid events), delivered before the batches count as checkpointable."""
    await produce(app, topic, journey_stage.forward_chunks(lines))


def _emitted_value(core: Stitcher, journey_id: str) -> bytes | None:
    entry = core.store.emitted(journey_id)
    return None if entry is None else journey_stage.emitted_value(entry)


@dataclass
class _State:
    core: Stitcher | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    builder: asyncio.Task[None] | None = None
    blocked: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    first_offset: int = -1
    # offset of the next input message the state has not applied (None: not known, state written
    # before it was kept; the first round writes it)
    next_offset: int | None = None
    # the base of the journey versions (`journey_stage.round_version`; None: not set yet, the next
    # round sets it)
    version_base: int | None = None
    # where the first round of a restored state must end: the round under way when the last owner
    # stopped (`journey_stage.forced_end`; None: none, or read again already)
    forced_end: int | None = None
    last_round: float = field(default_factory=time.monotonic)
    # held while a message is applied, written and persisted, and while a person is forgotten: an
    # erasure never lands between a message's apply and its persist (nor its outputs)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# RocksDB memory of each journey table. Faust's defaults (three 64 MB write buffers and a 2 GB block
# cache per table, filled by the restore's full read) let the journeys worker's RSS creep while its
# state stayed flat: 981 -> 1,109 MB from day 2 to day 4 of `make soak` (short windows), contacts
# held 70,858 -> 74,726; with these, 899 -> 967 MB, contacts 70,747 -> 74,453 (session 16)
ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
}


OutputRetry = Callable[[str, Callable[[], Awaitable[None]], str, str], Awaitable[None]]


async def write_journey_outputs(
    app: faust.App,
    client: Client,
    executor: BlockingExecutor,
    journeys_topic: str,
    changed: list[JourneyVersion],
    retried: OutputRetry,
) -> None:
    """The `journeys`/`journey_steps` rows of `changed`, then their documents on `journeys_topic`,
    each retried (`retried(what, attempt, output, dependency)`)."""
    journey_rows: list[list[Any]] = []
    steps: list[list[Any]] = []
    documents: list[tuple[bytes, bytes, None]] = []
    for start in range(0, len(changed), OUTPUT_SLICE):  # rendered in slices: the loop keeps serving
        if start:
            await asyncio.sleep(0)
        out = journey_stage.render_outputs(changed[start : start + OUTPUT_SLICE])
        journey_rows += out.journeys
        steps += out.steps
        documents += ((key, value, None) for key, value in out.documents)

    async def insert() -> None:
        await executor.run(insert_rows, client, "journey_steps", STEP_COLUMNS, steps)
        await executor.run(insert_rows, client, "journeys", JOURNEY_COLUMNS, journey_rows)

    await retried("journey rows insert", insert, "clickhouse", "clickhouse")

    async def send() -> None:
        # one task per slice: each sends its slice, then the loop runs others while they deliver
        slices = (documents[i : i + OUTPUT_SLICE] for i in range(0, len(documents), OUTPUT_SLICE))
        await asyncio.gather(*(produce(app, journeys_topic, part) for part in slices))

    await retried("journey documents send", send, "topic", "kafka-producer")
    for version in changed:
        metrics.JOURNEY_UPDATES.labels("deleted" if version.deleted else version.journey.status).inc()


def placeholder_pseudonyms() -> frozenset[str]:
    """The pseudonyms of identity placeholders under this worker's key (none when identifiers are
    not pseudonymised): the graph must refuse them like the clear placeholders."""
    hider = pseudonym.active()
    if hider is None:
        return frozenset()
    return frozenset(
        hider.value(kind.value, raw).lower() for kind, values in placeholder_values().items() for raw in values
    )


def journey_rules(settings: Settings) -> JourneyConfig:
    """The windows of the journey rules the settings give (by default a 7-day repeat window and a
    14-day dormancy)."""
    return JourneyConfig(
        repeat_window_ms=round(settings.journey_repeat_window_days * DAY),
        dormancy_ms=round(settings.journey_dormancy_days * DAY),
    )


async def applied_up_to_end(app: faust.App, topic: str, partition: int, applied: Callable[[], int | None]) -> None:
    """Wait until the stage has applied every message its input partition holds now (`applied`:
    the next offset it will apply): an erasure forgets the person after the last record of theirs
    the stages feeding it sent (`erasure.TIERS`), not before one it would apply later. Raises when
    that takes over FORGET_CATCH_UP_SECONDS (the erasure is refused and sent again)."""
    tp = TP(topic, partition)
    end = (await app.consumer.highwaters(tp)).get(tp)
    deadline = time.monotonic() + FORGET_CATCH_UP_SECONDS
    while end is not None and ((applied() or 0) < end):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the journey stage has not applied {topic}[{partition}] up to offset {end} within "
                f"{FORGET_CATCH_UP_SECONDS:.0f} s"
            )
        await asyncio.sleep(0.05)


def install_journey_stage(
    app: faust.App,
    client: Client,
    executor: BlockingExecutor,
    journey_events_topic: Any,
    settings: Settings,
    health: Health | None = None,
) -> None:
    config = journey_rules(settings)
    keep_ms = int(settings.journey_keep_hours * 3_600_000)
    identity_ms = int(settings.journey_identity_retention_days * DAY)
    journeys_topic = settings.topics.journeys
    input_topic: str = journey_events_topic.get_topic_name()

    def table(name: str) -> Any:
        # options: a dict of its own per table (Faust's RocksDB store changes the one it is given)
        return app.Table(
            name, default=None, partitions=1, key_type=bytes, value_type=bytes, options=dict(ROCKSDB_OPTIONS)
        )

    identity, contacts, emitted = table("journey-identity"), table("journey-contacts"), table("journey-emitted")
    state = _State()

    async def build() -> None:
        """The stitcher the tables describe (the tables hold only this worker's active partition)."""
        started = time.perf_counter()
        guards = IdentityConfig(blocked_values=placeholder_pseudonyms())

        def readable(values: list[bytes]) -> list[ContactRecord]:
            records, rejected = journey_stage.decode_records(values)
            for reason in rejected:  # never seen; a restore must not fail on one entry
                jm.JOURNEY_RECORDS.labels("unreadable").inc()
                log.error("journey state entry skipped at restore (%s)", reason)
            return records

        def restore() -> tuple[Stitcher, int, int, float, int | None, int | None, int | None]:
            with collection_paused(freeze=True):
                raw_components = [value for _, value in stored_items(identity) if value]
                raw_records = [value for _, value in stored_items(contacts) if value]
                raw_entries = [(key, value) for key, value in stored_items(emitted) if value]
                marks = {key: value for key, value in raw_entries if key in STAGE_KEYS}
                raw_entries = [(key, value) for key, value in raw_entries if key not in STAGE_KEYS]
                read = time.perf_counter() - started
                components, broken = journey_stage.decode_components(raw_components)
                for reason in broken:
                    log.error("journey state entry skipped at restore (%s)", reason)
                core = Stitcher.from_state(
                    readable(raw_records),
                    journey_stage.decode_entries(raw_entries),
                    guards,
                    config,
                    keep_ms=keep_ms,
                    identity_retention_ms=identity_ms,
                    components=components,
                )
            if core.record_changes:
                # state written before anchors existed (tied again, written with them at the next round),
                # or a crash between the tables' writes
                log.info("journey state: %d contact(s) tied again from their identifiers", len(core.record_changes))
            next_offset, base = journey_stage.stored_offset(marks.get(journey_stage.INPUT_OFFSET_KEY))
            if next_offset is None and not (raw_components or raw_records or raw_entries):
                next_offset = 0  # nothing applied yet: every message of the partition is still to apply
            end = journey_stage.forced_end(marks.get(journey_stage.ROUND_KEY), next_offset)
            return core, len(raw_records), len(raw_entries), read, next_offset, base, end

        # reading the tables, decoding and the graph's unions are seconds of CPU for a week of
        # contacts: on a thread (nothing else uses the tables or the core until it is built), so
        # the loop keeps serving /health, /metrics and timers without yielding to them in slices
        core, contacts_read, entries_read, read, next_offset, base, end = await asyncio.to_thread(restore)
        state.core, state.next_offset, state.version_base, state.forced_end = core, next_offset, base, end
        changelog = contacts.changelog_topic.get_topic_name()
        jm.JOURNEY_PARTITIONS.set(sum(1 for tp in app.assignor.assigned_actives() if tp.topic == changelog))
        state.blocked, state.refusals = dict(core.graph.blocked), dict(core.graph.refusals)
        took = time.perf_counter() - started
        jm.JOURNEY_RESTORE_SECONDS.set(took)
        jm.JOURNEY_RESTORED_CONTACTS.set(contacts_read)
        jm.JOURNEY_RESTORE_RETIED.set(len(core.record_changes))
        gauges(core)
        log.info(
            "journey state restored: %d contacts, %d journeys in %.2f s (reading the tables %.2f s)%s",
            contacts_read,
            entries_read,
            took,
            read,
            "" if end is None else f"; the round under way (offsets {next_offset} to {end - 1}) is read again first",
        )
        state.last_round = time.monotonic()
        state.ready.set()

    def stored_items(table: Any) -> Iterator[tuple[bytes, bytes]]:
        """The table's entries as stored (this worker's active partitions). RocksDB: read in bulk
        from the store, skipping Faust's per-entry codec lookups (the app's serializers are raw,
        so the bytes are the same)."""
        bulk = getattr(table.data, "_iteritems", None)
        items: Iterator[tuple[bytes, bytes]] = bulk() if callable(bulk) else iter(table.items())
        return items

    async def core_ready(timeout: float | None = None) -> Stitcher | None:
        if state.core is None and state.builder is None:
            state.builder = asyncio.ensure_future(build())
        try:
            await asyncio.wait_for(asyncio.shield(state.ready.wait()), timeout)
        except TimeoutError:
            return None
        return state.core

    async def retried(what: str, attempt: Callable[[], Awaitable[T]], output: str, dependency: str) -> T:
        """`attempt()` retried (`journey_stage.retried`), counted by `output` and reported to /health."""
        on_retry = jm.JOURNEY_FLUSH_RETRIES.labels(output).inc
        return await journey_stage.retried(what, attempt, on_retry=on_retry, health=health, dependency=dependency)

    def gauges(core: Stitcher) -> None:
        jm.JOURNEY_STATE.labels("contacts").set(len(core.records))
        jm.JOURNEY_STATE.labels("customers").set(len(core.store.books))
        jm.JOURNEY_STATE.labels("identity_nodes").set(len(core.graph))
        jm.JOURNEY_STATE.labels("journeys").set(len(core.store._emitted))
        jm.JOURNEY_EVENT_TIME.set(core.as_of_ms / 1000)

    def count_identity(core: Stitcher) -> None:
        # counters only: identifier values never reach the log
        for kind, n in core.graph.blocked.items():
            new = n - state.blocked.get(kind, 0)
            if new > 0:
                jm.JOURNEY_IDENTIFIERS_SKIPPED.labels(kind).inc(new)
                log.warning("skipped %d unusable %s identifier(s) (empty or placeholder values)", new, kind)
        for reason, n in core.graph.refusals.items():
            new = n - state.refusals.get(reason, 0)
            if new > 0:
                metrics.IDENTITY_REFUSALS.labels(reason).inc(new)
                log.warning("refused %d identity link(s) (%s)", new, reason)
        state.blocked, state.refusals = dict(core.graph.blocked), dict(core.graph.refusals)

    async def write_outputs(changed: list[JourneyVersion]) -> None:
        await write_journey_outputs(app, client, executor, journeys_topic, changed, retried)

    async def persist(core: Stitcher, next_offset: int, version_base: int) -> None:
        """Write every changed key to the tables: first to their changelogs, delivered, then to
        their stores, with the changelog offset the store now holds (what a restart on this
        machine recovers from). Sent straight through the producer and awaited here: the tables'
        own writes (`table[key] = value`) queue each change in Faust's producer buffer, which sends
        one message at a time and which Faust waits on only 100 messages per event; in the
        benchmark's whole worker it held 479,352 unsent changelog messages, and a stop waited for
        all of them (more than 120 s)."""

        async def encoded(keys: set[str], value_of: Callable[[str], bytes | None]) -> list[tuple[bytes, bytes | None]]:
            changed = list(keys)
            keys.clear()
            writes: list[tuple[bytes, bytes | None]] = []
            for n, key in enumerate(changed, start=1):
                writes.append((key.encode(), value_of(key)))
                if n % OUTPUT_SLICE == 0:
                    await asyncio.sleep(0)
            return writes

        identity_writes = [
            (journey_stage.component_key(node), None if members is None else journey_stage.component_value(members))
            for node, members in core.identity_changes()
        ]
        contact_writes = await encoded(core.record_changes, core.record_state)
        emitted_writes = await encoded(core.store.emitted_changes, functools.partial(_emitted_value, core))
        # last of the last table: durable only when everything this round changed is
        emitted_writes.append((journey_stage.INPUT_OFFSET_KEY, journey_stage.offset_value(next_offset, version_base)))
        # identity components first: a contact's anchor never reaches a changelog before its component
        for name, table, writes in (
            ("identity", identity, identity_writes),
            ("contacts", contacts, contact_writes),
            ("emitted", emitted, emitted_writes),
        ):
            if writes:
                await write_table(name, table, writes)

    async def write_table(name: str, table: Any, writes: list[tuple[bytes, bytes | None]]) -> None:
        """`writes` to the table's changelog, delivered (retried), then to its store with the
        changelog offset it now holds (what a restart on this machine recovers from)."""
        offset = await retried(
            f"journey {name} changelog send",
            functools.partial(send_changelog, table, writes),
            "changelog",
            "kafka-producer",
        )
        data: Any = table.data  # the store (RocksDB or memory): Faust types it as a mapping
        for start in range(0, len(writes), OUTPUT_SLICE):
            write_partition(data, 0, writes[start : start + OUTPUT_SLICE])
            await asyncio.sleep(0)
        data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), 0), offset)

    async def send_changelog(table: Any, writes: list[tuple[bytes, bytes | None]]) -> int:
        """Send `writes` to the table's changelog (partition 0, the stage's one) and wait until
        every one is delivered; the offset of the last."""
        last = await produce(app, table.changelog_topic.get_topic_name(), ((k, v, None) for k, v in writes), 0)
        assert last is not None, "a changelog send of no writes"
        return last

    def drop_now(core: Stitcher) -> None:
        """Delete the keys the stitcher dropped from both tables now, outside a stream event (an
        erasure: Faust's table methods need the event to pick the partition; the stage's tables
        have one, 0): a tombstone to the changelog, then the entry from the store. Other pending
        changes stay for the next round's `persist` (the identity components' are all written now:
        they come before the contacts')."""
        for node, members in core.identity_changes():
            raw = journey_stage.component_key(node)
            if members is not None:
                value = journey_stage.component_value(members)
                identity.send_changelog(0, raw, value, value_serializer="raw")
                identity.data[raw] = value
            elif raw in identity.data:
                identity.send_changelog(0, raw, None, value_serializer="raw")
                del identity.data[raw]
        for table, changes, held in (
            (contacts, core.record_changes, core.records),
            (emitted, core.store.emitted_changes, core.store._emitted),
        ):
            for key in [k for k in changes if k not in held]:
                raw = key.encode()
                if raw in table.data:
                    table.send_changelog(0, raw, None, value_serializer="raw")
                    del table.data[raw]
                changes.discard(key)

    async def forget(subject: erasure.Subject) -> erasure.Dropped:
        """Erasure: drop the person's identifiers, contacts and journeys from the stitcher and
        delete their entries from both tables (the changelog's tombstones keep a restore from
        bringing them back). Every worker is asked; the one holding the partition says so."""
        changelog = contacts.changelog_topic.get_topic_name()
        if not any(tp.topic == changelog for tp in app.assignor.assigned_actives()):
            return erasure.Dropped(0, wanted=frozenset({HELD_MARK}))
        await core_ready()
        await applied_up_to_end(app, input_topic, 0, lambda: state.next_offset)
        while True:
            core = await core_ready()
            async with state.lock:
                if core is None or state.core is not core:  # replaced by a rebalance meanwhile
                    continue
                await settle(core)
                dropped = core.forget(subject.contact_ids, subject.identifiers, subject.customer_keys)
                drop_now(core)
                gauges(core)
                return erasure.Dropped(dropped, {HELD_MARK: 0}, frozenset({HELD_MARK}))

    erasure.register("journeys", forget, erasure.JOURNEYS)

    @app.agent(journey_events_topic)
    async def stitch(stream: Any) -> None:
        # rounds of the messages that arrive within TAKE_WITHIN_SECONDS, up to TAKE_MESSAGES: a
        # contact spanning them is rebuilt and written once, a round's fixed costs (the insert, the
        # sends) are paid once (a simulated week in benchmarks/journeys.py: 2,832 -> 4,006
        # contacts/s). `take_events` consumes the stream in Faust's background task, where Faust's
        # tables refuse `table[key] = value` (faust-streaming #497); `persist` writes straight to
        # the changelogs and stores, which works there
        async for events in stream.take_events(journey_stage.TAKE_MESSAGES, within=TAKE_WITHIN_SECONDS):
            core = await core_ready()
            assert core is not None
            async with state.lock:
                if state.first_offset < 0:
                    state.first_offset = events[0].message.offset
                    jm.JOURNEY_FIRST_OFFSET.set(state.first_offset)
                messages = [(event.message.offset, event.value) for event in events]
                runs, applied = journey_stage.runs_to_apply(messages, state.next_offset)
                if applied:
                    # applied and persisted before a crash, not yet committed: nothing to do again
                    jm.JOURNEY_INPUT.labels("already_applied").inc(applied)
                for run in runs:
                    expected = state.next_offset
                    if expected is not None and run[0][0] > expected:
                        await read_again(core, run[0][0])
                    await handle(core, run)

    async def read_again(core: Stitcher, end: int) -> None:
        """Apply the messages from the state's next offset up to `end`, read from the topic: the
        consumer group's offset passed them but this state never applied them. Faust acknowledges,
        so commits, the messages it skips while a rebalance changes the group's generation
        (`Stream.__aiter__`); a worker taking the partition over then started past them (the
        two-worker test lost 25 of 2,704 journeys in one of nine runs before this)."""

        async def attempt() -> None:
            start = state.next_offset
            if start is None or start >= end:
                return
            log.warning(
                "journey input: %d message(s) at offsets %d to %d were skipped by the consumer group, "
                "reading them again",
                end - start,
                start,
                end - 1,
            )
            runs = read_range(settings.bootstrap_servers, input_topic, 0, start, end, security=client_options(settings))
            async for run in runs:
                jm.JOURNEY_INPUT.labels("read_again").inc(len(run))
                await handle(core, run)

        await retried("journey input read again", attempt, "input", "kafka-consumer-journeys")

    def partition_end() -> int | None:
        """The offset after the journey partition's last message, when this worker reads it (None:
        not assigned here, or the consumer is starting or stopping: the next tick looks again)."""
        tp = TP(input_topic, 0)
        try:
            end: int | None = app.consumer.highwater(tp) if tp in app.consumer.assignment() else None
        except Exception:
            return None
        return end

    @app.timer(interval=TAIL_IDLE_SECONDS / 2)
    async def read_skipped_tail() -> None:
        """Skipped messages at the end of the partition: no later message comes to show the gap, so
        an owner idle for `TAIL_IDLE_SECONDS` with its partition holding more than it applied reads
        them itself (if its consumer hands them over later, they are already applied)."""
        core, expected = state.core, state.next_offset
        if core is None or expected is None or not state.ready.is_set() or state.lock.locked():
            return
        if time.monotonic() - state.last_round < TAIL_IDLE_SECONDS:
            return
        end = partition_end()
        if end is None or end <= expected:
            return
        async with state.lock:
            if state.core is core:
                await settle(core)
                await read_again(core, end)

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        """Messages of the journey partition the state has not applied yet, on the worker owning it
        (`touchline_consumer_lag_messages{stage="journeys"}`: the consumer-lag alerts cover it)."""
        labels = ("journeys", input_topic, "0")
        end = partition_end()
        expected = state.next_offset if state.core is not None else None
        if end is None or expected is None:
            with contextlib.suppress(KeyError):  # not set: nothing to remove
                metrics.CONSUMER_LAG.remove(*labels)
            return
        metrics.CONSUMER_LAG.labels(*labels).set(max(0, end - expected))

    async def mark_round(start: int, end: int) -> None:
        """Write down, delivered, the round [start, end) before its journeys go out: a successor
        restored at `start` ends its first round at `end` too (`journey_stage.forced_end`). A round
        that changed no journey writes nothing, so needs no mark."""
        await write_table("round mark", emitted, [(journey_stage.ROUND_KEY, journey_stage.round_value(start, end))])

    async def settle(core: Stitcher) -> None:
        """The round under way when the state's last owner stopped, read again from the topic and
        applied whole, before anything else changes the state (`_State.forced_end`)."""
        start, end = state.next_offset, state.forced_end
        if start is None or end is None:
            return

        async def attempt() -> Messages:
            taken: Messages = []
            ranges = read_range(
                settings.bootstrap_servers, input_topic, 0, start, end, security=client_options(settings)
            )
            async for run in ranges:
                taken += run
            return taken

        messages = await retried("journey round read again", attempt, "input", "kafka-consumer-journeys")
        state.forced_end = None
        if messages:
            log.info("journey input: round under way read again (offsets %d to %d)", messages[0][0], messages[-1][0])
            jm.JOURNEY_INPUT.labels("round_again").inc(len(messages))
            await apply_round(core, messages)

    async def handle(core: Stitcher, messages: Messages) -> None:
        """`messages` ((offset, value), in offset order, from the state's next offset) applied in
        one round, after the round under way at a restore (`settle`) if there is one."""
        if state.forced_end is not None:
            await settle(core)
            expected = state.next_offset
            messages = [m for m in messages if expected is None or m[0] >= expected]
            if not messages:
                return
        await apply_round(core, messages)

    async def apply_round(core: Stitcher, messages: Messages) -> None:
        """One round: the contact records of `messages` ((offset, value), in offset order) applied,
        the changed journeys written, the state persisted with the offset after the last."""
        began = time.perf_counter()
        applied = 0
        for offset, value in messages:
            records, rejected = journey_stage.read_records(value)
            if rejected:
                jm.JOURNEY_RECORDS.labels("unreadable").inc(len(rejected))
                log.warning(
                    "skipped %d unreadable contact record(s): %s", len(rejected), "; ".join(sorted(set(rejected)))
                )
            for index, record in enumerate(records):
                try:
                    core.apply(record.with_seq(journey_stage.arrival_seq(offset, index)))
                except Exception as error:  # one bad record must not stop the stage
                    jm.JOURNEY_RECORDS.labels("failed").inc()
                    log.error("contact record of %s skipped (%s)", record.contact_id, type(error).__name__)
                applied += 1
                if applied % APPLY_SLICE == 0:
                    await asyncio.sleep(0)
            jm.JOURNEY_RECORDS.labels("applied").inc(len(records))
        count_identity(core)
        as_of = core.as_of_ms or None
        last = messages[-1][0]
        base = state.version_base
        if base is None:  # a new state, or one written before bases were kept: once
            base = journey_stage.version_base((e.version for e in core.store._emitted.values()), core.as_of_ms)
        version = journey_stage.round_version(base, last + 1)
        changed = core.changes(as_of, CHANGES_SLICE, version)
        while core.store.pending:
            await asyncio.sleep(0)
            changed += core.changes(as_of, CHANGES_SLICE, version)
        while as_of is not None:
            evicted = core.evict_due(as_of, EVICT_SLICE)
            if evicted.journeys:
                jm.JOURNEY_EVICTED.labels("journeys").inc(evicted.journeys)
                jm.JOURNEY_EVICTED.labels("contacts_stripped").inc(len(evicted.stripped))
            if evicted.dropped:
                jm.JOURNEY_EVICTED.labels("contacts_dropped").inc(len(evicted.dropped))
            if not evicted.more:
                break
            await asyncio.sleep(0)
        if changed:
            await mark_round(messages[0][0], last + 1)
            await write_outputs(changed)
        await persist(core, last + 1, base)
        state.next_offset, state.version_base, state.last_round = last + 1, base, time.monotonic()
        gauges(core)
        jm.JOURNEY_BATCHES.inc(len(messages))
        jm.JOURNEY_ROUND_SECONDS.inc(time.perf_counter() - began)
        jm.JOURNEY_OFFSET.set(last)

    def invalidate() -> None:
        if state.builder is not None:
            state.builder.cancel()
        state.core, state.builder, state.forced_end = None, None, None
        state.ready.clear()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        invalidate()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_recovered(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # the tables are recovered: restore now, so lookups answer before the next message
        invalidate()
        state.builder = asyncio.ensure_future(build())

    @app.page("/journeys/lookup")
    @app.table_route(table=contacts, query_param="value")
    async def journey_lookup(web: Any, request: Request) -> Response:
        """GET /journeys/lookup?kind=phone&value=%2B44...: the customer's current journey."""
        refused = access.refusal(request.headers)
        if refused is not None:
            response: Response = web.json({"error": refused[1]}, status=refused[0])
            return response
        kind, value = request.query.get("kind", ""), request.query.get("value", "")
        if kind not in journey_stage.LOOKUP_KINDS or not value:
            kinds = ", ".join(sorted(journey_stage.LOOKUP_KINDS))
            body = {"error": "bad request", "detail": f"give ?kind=<{kinds}>&value=<identifier>"}
            response = web.json(body, status=400)
            return response
        core = await core_ready(LOOKUP_WAIT_SECONDS)
        if core is None:
            response = web.json({"error": "journey state is being restored, retry shortly"}, status=503)
            return response
        try:
            # journeys hold pseudonyms: the value is hashed with the same key (one copied from a table is kept)
            hidden = pseudonym.lookup_value(kind, value)
            customer, current, all_journeys = journey_stage.lookup(core, kind, hidden, core.as_of_ms or None)
        except KeyError:
            response = web.json({"error": "unknown identifier", "kind": kind, "value": value}, status=404)
            return response
        document = {
            "customer": customer,
            "current_journey": None if current is None else journey_stage.journey_document(JourneyVersion(current, 0)),
            "journeys": [j.journey_id for j in all_journeys],
        }
        response = web.json(document)
        return response

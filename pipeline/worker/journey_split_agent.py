"""The split journey stage's Faust shell (`TOUCHLINE_JOURNEY_BUILDERS` >= 1): a resolver agent on
`touchline.journey-events` (one partition) and a builder agent on `touchline.journey-builds` (one
partition per builder, spread over the workers running the `journeys` stage by Faust's group),
each with changelogged tables. The rules are `pipeline.journeys.split` (`Resolver`, `Builder`); the
wire and state formats `pipeline.worker.split_wire`.

* **Resolver round** (the messages that arrive within 50 ms, up to 16): each message read as
  `Resolver.read` does (the unit a crash repeats): its records' identities (the message's identity
  header) tied, each record line routed unparsed (`split_wire.encode_filed`) after the messages its
  merges need, a `Tick` to every builder, retention. The routed messages are sent, each builder's in
  order, everything before a `HandOver` delivered before it is sent (its `Expect` must reach the
  new owner first). Then the checkpoint: the journal (the round's state changes, whole) and the
  offset, delivered; then the keyed entries (identity components, customers, contacts); only then
  are the round's messages acknowledged. A restore applies a journal tagged with the stored offset
  over the keyed entries (a checkpoint cut short lands whole) and reads from the stored offset;
  builders drop what a restored resolver sends again (stamps).
* **Builder round**, per partition, the partitions of one take together: each round written down
  (its first and end offsets) -> the messages received (a Kafka message packs what one input
  message sent the builder, its `Tick` last), journeys taken at each `Tick` (numbered `base + the
  offset after the Tick`) and at the round's end (`base + the offset after the round`) -> every
  partition's rows and documents written together (retried) -> books handed over to other builders
  sent -> each partition's journal and offset with `meta`, then its contacts and journey versions.
  A builder restored at a round's first offset reads exactly that round again first.
* **Gaps**: Faust acknowledges the messages a stream skips while a rebalance changes the group's
  generation; each partition's state holds the offset it applied up to, and a message past it
  makes the stage read the gap from the topic first (as the single stage does).
* **Lookups** take two hops: the resolver's owner finds the customer and its builder, the builder's
  owner answers with the journeys.

* **Metrics**: `touchline_journey_state{what}` counts what this worker holds (customers and identity
  nodes: the resolver; contacts and journeys: its builders), `touchline_journey_round_seconds_total`
  the resolver's rounds (records / it = the resolver partition's contacts/s),
  `touchline_journey_builder_round_seconds_total` the builders', `touchline_journey_restore_seconds`
  the last rebalance's restore of every partition held here (they restore concurrently).

* **Erasure** (`touchline forget`, `POST /forget`) reaches every worker (`pipeline.worker.forget_view`):
  the one holding the resolver drops the person's identity components and customers, sends a
  `Forget` to every builder and checkpoints; every worker then waits until the builders it holds
  have applied it (a builder round under way could otherwise write the person's journey again after
  their rows are removed), and only then are the rows deleted. While no worker holds the resolver
  the erasure is refused (503, nothing deleted) and retried by the caller.

* **Skipped tails**: a partition's owner idle for `TAIL_IDLE_SECONDS` while the partition holds
  messages past its state's offset reads them itself (no later message comes to show the gap), as
  the single stage does; the same timer sets `touchline_consumer_lag_messages{stage="journeys"}`
  for every partition held here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

import faust
from clickhouse_connect.driver.client import Client
from faust.exceptions import SameNode
from faust.types import TP
from faust.web import Request, Response
from yarl import URL

from pipeline.config import Settings
from pipeline.events.topics import HANDOVER_MAX_BYTES
from pipeline.journeys.identity import IdentityConfig
from pipeline.journeys.model import DAY, JourneyVersion
from pipeline.journeys.split import (
    Builder,
    BuilderChanges,
    Forget,
    HandOver,
    Message,
    Resolver,
    ResolverChanges,
    TakeOver,
    Tick,
    stamped,
)
from pipeline.journeys.stitcher import collection_paused
from pipeline.kafka_security import client_options
from pipeline.privacy import access, erasure, pseudonym
from pipeline.store.clickhouse import BlockingExecutor
from pipeline.worker import journey_metrics as jm
from pipeline.worker import journeys as journey_stage
from pipeline.worker import metrics
from pipeline.worker import split_wire as wire
from pipeline.worker.health import Health
from pipeline.worker.journey_agent import (
    APPLY_SLICE,
    OUTPUT_SLICE,
    ROCKSDB_OPTIONS,
    TAIL_IDLE_SECONDS,
    TAKE_WITHIN_SECONDS,
    applied_up_to_end,
    journey_rules,
    placeholder_pseudonyms,
    write_journey_outputs,
)
from pipeline.worker.loop_share import on_loop
from pipeline.worker.produce import produce
from pipeline.worker.table_writes import read_partition, write_partition
from pipeline.worker.topic_range import read_range

log = logging.getLogger(__name__)
T = TypeVar("T")

OFFSET_KEY = b"\x00offset"
# a builder's takes: packs of what one input message (~900 records) sends it, so ~14,000 records in
# a take of four builders' packs, as the single stage's round of TAKE_MESSAGES input messages
BUILDER_TAKE_MESSAGES = 64
# the resolver's takes when a backlog waits: a customer or contact seen in several messages of one
# take is written once at its checkpoint. Against TAKE_MESSAGES (16), a simulated day's backlog
# wrote 46,828 customer entries instead of 58,600; its own loop time gave 14,976-17,189 contacts/s
# (mean 15,837) against 13,700-15,368 (mean 14,899), four alternating runs each (session 42)
RESOLVER_TAKE_MESSAGES = 64
LOOKUP_WAIT_SECONDS = 30.0
FORGET_WAIT_SECONDS = 60.0
RESOLVER_MARK = "journey resolver"  # an erasure's marks (`forget`)
BUILDER_MARK = "journey builder "  # + the partition: the offset of its `Forget`
NO_RESOLVER_CHANGES = ResolverChanges([], [], [], 0, 0)
NO_BUILDER_CHANGES = BuilderChanges([], [], {})
Writes = list[tuple[bytes, bytes | None]]
Incoming = tuple[int, bytes, Any]  # offset, value, headers


class _Line(NamedTuple):
    """A contact record routed by the resolver, unparsed (a `Filed` on the wire)."""

    customer: str
    line: bytes
    seq: int
    as_of_ms: int


@dataclass
class _Part:
    """One partition of the stage held here: its core and where its state stands."""

    core: Any = None
    # offset of the next input message the state has not applied (0: a new state)
    next_offset: int = 0
    version_base: int | None = None  # builders: the base of the journey versions
    forced_end: int | None = None  # builders: where the round under way at the last stop ended
    journal_chunks: int = 0  # chunks of the last journal written (the next journal deletes extra ones)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    last_round: float = field(default_factory=time.monotonic)  # when its last round ended


def _decoded(items: dict[bytes, bytes], decode: Callable[[bytes], T], what: str) -> list[tuple[str, T]]:
    out: list[tuple[str, T]] = []
    for key, value in items.items():
        try:
            out.append((key.decode(), decode(value)))
        except (wire.WireError, UnicodeDecodeError) as error:  # never written so; a restore must not fail on one
            log.error("split journey state: %s entry skipped at restore (%s)", what, error)
    return out


def _journal_writes(chunks: list[bytes], before: int) -> Writes:
    writes: Writes = [(wire.journal_key(i), chunk) for i, chunk in enumerate(chunks)]
    writes += [(wire.journal_key(i), None) for i in range(len(chunks), before)]
    return writes


def _journal_values(items: dict[bytes, bytes]) -> list[bytes]:
    values: list[bytes] = []
    while (value := items.get(wire.journal_key(len(values)))) is not None:
        values.append(value)
    return values


def install_split_journey_stage(
    app: faust.App,
    client: Client,
    executor: BlockingExecutor,
    journey_events_topic: Any,
    settings: Settings,
    health: Health | None = None,
) -> None:
    builders = settings.journey_builders
    config = journey_rules(settings)
    keep_ms = int(settings.journey_keep_hours * 3_600_000)
    identity_ms = int(settings.journey_identity_retention_days * DAY)
    journeys_topic = settings.topics.journeys
    input_topic: str = journey_events_topic.get_topic_name()
    builds_name = settings.topics.journey_builds
    builds_topic = app.topic(builds_name, partitions=builders, value_serializer="raw", key_serializer="raw")
    security = client_options(settings)

    def table(name: str, partitions: int) -> Any:
        return app.Table(
            name, default=None, partitions=partitions, key_type=bytes, value_type=bytes, options=dict(ROCKSDB_OPTIONS)
        )

    r_identity = table("journey-resolver-identity", 1)
    r_customers = table("journey-resolver-customers", 1)
    r_contacts = table("journey-resolver-contacts", 1)
    r_meta = table("journey-resolver-meta", 1)
    b_contacts = table("journey-builder-contacts", builders)
    b_emitted = table("journey-builder-emitted", builders)
    b_meta = table("journey-builder-meta", builders)
    resolver = _Part()
    parts: dict[int, _Part] = {}
    first_offset = [-1]  # the first input offset this process's resolver took (tests see redelivery)
    timer: list[asyncio.Task[None] | None] = [None]  # the last rebalance's restore, timed
    largest_hand_over = [0]

    async def retried(what: str, attempt: Callable[[], Awaitable[T]], output: str, dependency: str) -> T:
        on_retry = jm.JOURNEY_FLUSH_RETRIES.labels(output).inc
        return await journey_stage.retried(what, attempt, on_retry=on_retry, health=health, dependency=dependency)

    async def write_table(what: str, table: Any, partition: int, writes: Writes) -> None:
        """`writes` to the table's changelog partition, delivered (retried), then to its store with
        the changelog offset it now holds."""
        if not writes:
            return
        topic = table.changelog_topic.get_topic_name()

        async def send() -> int | None:
            return await produce(app, topic, ((k, v, None) for k, v in writes), partition)

        offset = await retried(f"journey {what} changelog send", send, "changelog", "kafka-producer")
        data: Any = table.data
        for start in range(0, len(writes), OUTPUT_SLICE):
            write_partition(data, partition, writes[start : start + OUTPUT_SLICE])
            await asyncio.sleep(0)
        if offset is not None:
            data.set_persisted_offset(TP(topic, partition), offset)

    def overlaid(partition: int, keyed: list[tuple[str, Any, Writes]]) -> list[dict[bytes, bytes]]:
        """The stored entries of each of a stage's tables with the keyed writes of the last
        checkpoint's journal (`resolver_keyed`, `builder_keyed`) over them: a checkpoint cut short
        lands whole."""
        out: list[dict[bytes, bytes]] = []
        for _, table_, writes in keyed:
            held = dict(read_partition(table_.data, partition))
            for key, value in writes:
                if value is None:
                    held.pop(key, None)
                else:
                    held[key] = value
            out.append(held)
        return out

    def restoring(restore: Awaitable[None], what: str) -> asyncio.Task[None]:
        """A restore task; a restore that fails stops the worker (the stage cannot go on without it)."""

        async def guarded() -> None:
            try:
                await restore
            except Exception as error:
                log.error(
                    "split journey %s could not be restored (%s: %s); stopping", what, type(error).__name__, error
                )
                await app.crash(error)
                raise

        return asyncio.ensure_future(guarded())

    def active(topic: str, partition: int) -> bool:
        return TP(topic, partition) in app.assignor.assigned_actives()

    def publish_state() -> None:
        """What this worker holds, for `touchline_journey_state` (a few len()s: cheap per round)."""
        held = [p.core for p in parts.values() if p.core is not None]
        r: Resolver | None = resolver.core
        jm.JOURNEY_STATE.labels("customers").set(0 if r is None else len(r.owner))
        jm.JOURNEY_STATE.labels("identity_nodes").set(0 if r is None else len(r.graph))
        jm.JOURNEY_STATE.labels("contacts").set(sum(len(b.records) for b in held))
        jm.JOURNEY_STATE.labels("journeys").set(sum(len(b.store._emitted) for b in held))
        newest = max([0 if r is None else r.as_of_ms, *(b.as_of_ms for b in held)])
        jm.JOURNEY_EVENT_TIME.set(newest / 1000)

    # ---- the resolver ---------------------------------------------------------------------------

    def resolver_keyed(changes: ResolverChanges) -> list[tuple[str, Any, Writes]]:
        return [
            (
                "resolver identity",
                r_identity,
                [
                    (journey_stage.component_key(node), None if m is None else journey_stage.component_value(m))
                    for node, m in changes.components
                ],
            ),
            (
                "resolver customers",
                r_customers,
                [(k.encode(), None if e is None else wire.customer_value(e)) for k, e in changes.customers],
            ),
            (
                "resolver contacts",
                r_contacts,
                [(k.encode(), None if e is None else wire.contact_value(e)) for k, e in changes.contacts],
            ),
        ]

    async def restore_resolver() -> None:
        started = time.perf_counter()
        guards = IdentityConfig(blocked_values=placeholder_pseudonyms())

        @collection_paused(freeze=True)
        def restore() -> tuple[Resolver, int, int, ResolverChanges | None]:
            meta = dict(read_partition(r_meta.data, 0))
            stored = meta.get(OFFSET_KEY)
            offset, as_of, hand_overs = (0, 0, 0) if stored is None else wire.resolver_offset_entry(stored)
            chunks = _journal_values(meta)
            journal = wire.read_resolver_journal(chunks)
            finished = (
                journal[1] if journal is not None and journal[0] == offset else None
            )  # the last checkpoint, whole
            identity, customers, contacts = overlaid(0, resolver_keyed(finished or NO_RESOLVER_CHANGES))
            components, broken = journey_stage.decode_components(list(identity.values()))
            for reason in broken:
                log.error("split journey state entry skipped at restore (%s)", reason)
            core = Resolver.from_state(
                builders,
                guards,
                keep_ms=keep_ms,
                identity_retention_ms=identity_ms,
                customers=_decoded(customers, wire.customer_entry, "customer"),
                components=components,
                contacts=_decoded(contacts, wire.contact_entry, "contact"),
                as_of_ms=as_of,
                hand_overs=hand_overs,
            )
            return core, offset, len(chunks), finished

        core, offset, chunks, finished = await asyncio.to_thread(restore)
        if finished is not None:  # what the cut-short checkpoint did not write yet
            for what, table_, writes in resolver_keyed(finished):
                await write_table(what, table_, 0, writes)
        resolver.core, resolver.next_offset, resolver.journal_chunks = core, offset, chunks
        log.info(
            "split journey resolver restored: %d customers, %d contacts in %.2f s; reading from offset %d",
            len(core.owner),
            len(core.seen),
            time.perf_counter() - started,
            offset,
        )
        resolver.ready.set()
        publish_state()

    async def resolver_ready() -> Resolver:
        if resolver.core is None and resolver.task is None:
            resolver.task = restoring(restore_resolver(), "resolver")
        await resolver.ready.wait()
        core: Resolver = resolver.core
        return core

    def identities_of(value: bytes, headers: Any) -> tuple[list[bytes], list[journey_stage.Identity]]:
        lines = value.strip(b"\n").split(b"\n") if value.strip(b"\n") else []
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        identities = journey_stage.read_identities(pairs, len(lines))
        if identities is not None:
            return lines, identities
        records, rejected = journey_stage.read_records(value)  # sent without the header: the records read
        if rejected:
            jm.JOURNEY_RECORDS.labels("unreadable").inc(len(rejected))
            log.warning("skipped %d unreadable contact record(s): %s", len(rejected), "; ".join(sorted(set(rejected))))
        return [r.to_json() for r in records], [(r.contact_id, r.seen_us, list(r.ids), list(r.links)) for r in records]

    async def resolve_message(core: Resolver, offset: int, value: bytes, headers: Any) -> list[tuple[int, bytes, bool]]:
        """One input message, as `Resolver.read`: its (builder, wire message, is a hand-over)s, stamped."""
        lines, identities = identities_of(value, headers)
        core.naming = str(offset)
        routed: list[tuple[int, Message | _Line]] = []
        for index, (line, identity) in enumerate(zip(lines, identities, strict=True)):
            try:
                contact_id, seen_us, ids, links = identity
                sent, customer, at = core.tie(contact_id, ids, links, int(seen_us))
            except Exception as error:  # one bad record must not stop the stage
                jm.JOURNEY_RECORDS.labels("failed").inc()
                log.error("contact record skipped by the resolver (%s)", type(error).__name__)
                continue
            routed += sent
            routed.append((at, _Line(customer, line, journey_stage.arrival_seq(offset, index), core.as_of_ms)))
            if index % APPLY_SLICE == APPLY_SLICE - 1:
                await asyncio.sleep(0)
        jm.JOURNEY_RECORDS.labels("applied").inc(len(lines))
        routed += core.tick()
        while core.evict_due(2_000):
            await asyncio.sleep(0)
        out: list[tuple[int, bytes, bool]] = []
        for at, stamp, message in stamped(offset, cast(list[tuple[int, Message]], routed)):
            if isinstance(message, _Line):
                encoded = wire.encode_filed(stamp, message.customer, message.line, message.seq, message.as_of_ms)
            else:
                encoded = wire.encode_message(stamp, message)
            out.append((at, encoded, isinstance(message, HandOver)))
        return out

    async def send_routed(per_message: list[list[tuple[int, bytes, bool]]]) -> None:
        """Each builder's messages in order, what one input message sends a builder packed into one
        Kafka message (`wire.packs`: its `Tick` ends it); everything before a hand-over delivered
        before it."""
        segment: dict[int, list[tuple[bytes, bytes, None]]] = {}
        packing: dict[int, list[bytes]] = {}

        def close() -> None:
            for at, frames in packing.items():
                key = str(at).encode()
                segment.setdefault(at, []).extend((key, value, None) for value in wire.packs(frames))
            packing.clear()

        async def flush() -> None:
            close()
            if not segment:
                return
            parts_ = list(segment.items())
            segment.clear()

            async def attempt() -> None:
                await asyncio.gather(*(produce(app, builds_name, messages, at) for at, messages in parts_))

            await retried("journey routed send", attempt, "topic", "kafka-producer")

        for routed in per_message:
            for at, value, hand_over in routed:
                if hand_over:
                    await flush()
                packing.setdefault(at, []).append(value)
            close()
        await flush()

    async def resolver_round(core: Resolver, messages: list[Incoming]) -> None:
        began = time.perf_counter()
        await on_loop(resolver_work(core, messages), jm.JOURNEY_RESOLVER_LOOP_SECONDS.inc)
        jm.JOURNEY_BATCHES.inc(len(messages))
        jm.JOURNEY_ROUND_SECONDS.inc(time.perf_counter() - began)
        jm.JOURNEY_OFFSET.set(messages[-1][0])
        publish_state()

    async def resolver_work(core: Resolver, messages: list[Incoming]) -> None:
        routed = [await resolve_message(core, offset, value, headers) for offset, value, headers in messages]
        await send_routed(routed)
        end = messages[-1][0] + 1
        await checkpoint_resolver(core, end)
        resolver.last_round = time.monotonic()

    async def checkpoint_resolver(core: Resolver, end: int) -> None:
        """The resolver's changes: journal and offset `end` delivered, then the keyed entries."""
        changes = core.state_changes()
        chunks = wire.resolver_journal(end, changes)
        meta_writes = _journal_writes(chunks, resolver.journal_chunks)
        meta_writes.append((OFFSET_KEY, wire.resolver_offset_value(end, changes.as_of_ms, changes.hand_overs)))
        await write_table("resolver journal", r_meta, 0, meta_writes)
        resolver.journal_chunks = len(chunks)
        for what, table_, writes in resolver_keyed(changes):
            await write_table(what, table_, 0, writes)
        resolver.next_offset = end

    async def forget(subject: erasure.Subject) -> erasure.Dropped:
        """Erasure (module docstring), on every worker: the one holding the resolver drops the
        person and sends each builder a `Forget`; its marks are where those landed, which every
        worker's `settle` waits for its builders to pass. The count: the entries the resolver
        dropped (contacts and customers)."""
        wanted = frozenset({RESOLVER_MARK})
        if not active(input_topic, 0):
            return erasure.Dropped(0, wanted=wanted)
        await resolver_ready()
        await applied_up_to_end(app, input_topic, 0, lambda: resolver.next_offset)
        while True:
            core = await resolver_ready()
            async with resolver.lock:
                if resolver.core is not core:  # replaced by a rebalance meanwhile
                    continue
                routed = core.forget(subject.contact_ids, subject.identifiers, subject.customer_keys)
                marks = {RESOLVER_MARK: 0}
                for at, message in routed:  # a `Forget` applies once however often it comes: no stamp
                    value = wire.encode_message(None, message)

                    async def attempt(at: int = at, value: bytes = value) -> int | None:
                        return await produce(app, builds_name, [(str(at).encode(), value, None)], at)

                    offset = await retried("journey erasure send", attempt, "topic", "kafka-producer")
                    if offset is not None:
                        marks[f"{BUILDER_MARK}{at}"] = offset
                await checkpoint_resolver(core, resolver.next_offset)
                dropped = routed[0][1] if routed else None
                break
        count = len(dropped.contacts) + len(dropped.customers) if isinstance(dropped, Forget) else 0
        return erasure.Dropped(count, marks, wanted)

    async def settle(marks: dict[str, int]) -> None:
        """The builders held here have applied the resolver's `Forget` (their mark's offset)."""
        deadline = time.monotonic() + FORGET_WAIT_SECONDS
        for name, offset in marks.items():
            if not name.startswith(BUILDER_MARK):
                continue
            at = int(name.removeprefix(BUILDER_MARK))
            while active(builds_name, at) and time.monotonic() < deadline:
                part = parts.get(at)
                if part is not None and part.core is not None and part.next_offset > offset:
                    break
                await asyncio.sleep(0.05)
        if time.monotonic() >= deadline:
            log.warning("erasure: the builders held here did not apply it within %.0f s", FORGET_WAIT_SECONDS)

    erasure.register("journeys", forget, erasure.JOURNEYS)
    erasure.register_settle("journeys", settle)

    async def read_incoming(topic: str, partition: int, start: int, end: int, what: str) -> list[Incoming]:
        """The messages at offsets [start, end) of the partition, read from the topic (retried)."""

        async def attempt() -> list[Incoming]:
            taken: list[Incoming] = []
            async for run in read_range(settings.bootstrap_servers, topic, partition, start, end, security=security):
                taken += [(offset, value, None) for offset, value in run]
            return taken

        return await retried(what, attempt, "input", "kafka-consumer-journeys")

    async def contiguous(topic: str, partition: int, part: _Part, incoming: list[Incoming]) -> list[Incoming]:
        """`incoming` from the partition's next offset on, with the gaps before its runs (messages
        the consumer group skipped) read again from the topic: consecutive offsets, one round."""
        runs, applied = journey_stage.runs_to_apply(incoming, part.next_offset)
        if applied:  # applied and persisted before a crash, not yet committed
            jm.JOURNEY_INPUT.labels("already_applied").inc(applied)
        out: list[Incoming] = []
        expected = part.next_offset
        for run in runs:
            start = run[0][0]
            if start > expected:
                log.warning(
                    "journey input %s[%d]: %d message(s) at offsets %d to %d were skipped by the consumer group, "
                    "reading them again",
                    topic,
                    partition,
                    start - expected,
                    expected,
                    start - 1,
                )
                gap = await read_incoming(topic, partition, expected, start, "journey input read again")
                jm.JOURNEY_INPUT.labels("read_again").inc(len(gap))
                out += gap
            out += run
            expected = run[-1][0] + 1
        return out

    @app.agent(journey_events_topic)
    async def resolve(stream: Any) -> None:
        async for events in stream.take_events(RESOLVER_TAKE_MESSAGES, within=TAKE_WITHIN_SECONDS):
            core = await resolver_ready()
            async with resolver.lock:
                if resolver.core is not core:
                    continue  # replaced by a rebalance meanwhile: the new owner reads them
                if first_offset[0] < 0:
                    first_offset[0] = events[0].message.offset
                    jm.JOURNEY_FIRST_OFFSET.set(first_offset[0])
                incoming = [(e.message.offset, e.value, e.message.headers) for e in events]
                messages = await contiguous(input_topic, 0, resolver, incoming)
                if messages:
                    await resolver_round(core, messages)

    # ---- the builders ---------------------------------------------------------------------------

    def builder_keyed(changes: BuilderChanges) -> list[tuple[str, Any, Writes]]:
        return [
            (
                "builder contacts",
                b_contacts,
                [(k.encode(), None if e is None else wire.filed_value(e)) for k, e in changes.contacts],
            ),
            (
                "builder journeys",
                b_emitted,
                [(k.encode(), None if e is None else journey_stage.emitted_value(e)) for k, e in changes.emitted],
            ),
        ]

    async def restore_builder(index: int, part: _Part) -> None:
        started = time.perf_counter()

        @collection_paused(freeze=True)
        def restore() -> tuple[Builder, int, int | None, int | None, int, BuilderChanges | None]:
            meta_items = dict(read_partition(b_meta.data, index))
            stored = meta_items.get(OFFSET_KEY)
            offset, base, meta = (0, None, {}) if stored is None else wire.meta_entry(stored)
            chunks = _journal_values(meta_items)
            journal = wire.read_builder_journal(chunks)
            finished = journal[2] if journal is not None and journal[0] == offset else None
            contacts, emitted = overlaid(index, builder_keyed(finished or NO_BUILDER_CHANGES))
            core = Builder.from_state(
                index,
                config,
                keep_ms=keep_ms,
                contacts=_decoded(contacts, wire.filed_entry, "contact"),
                emitted=_decoded(emitted, journey_stage.emitted_entry, "journey"),
                meta=meta,
            )
            end = journey_stage.forced_end(meta_items.get(journey_stage.ROUND_KEY), offset)
            return core, offset, None if stored is None else base, end, len(chunks), finished

        core, offset, base, end, chunks, finished = await asyncio.to_thread(restore)
        if finished is not None:
            for what, table_, writes in builder_keyed(finished):
                await write_table(what, table_, index, writes)
        part.core, part.next_offset, part.version_base, part.forced_end = core, offset, base, end
        part.journal_chunks = chunks
        log.info(
            "split journey builder %d restored: %d contacts, %d journeys in %.2f s; reading from offset %d%s",
            index,
            len(core.records),
            len(core.store._emitted),
            time.perf_counter() - started,
            offset,
            "" if end is None else f"; the round under way (to offset {end - 1}) is read again first",
        )
        part.ready.set()
        publish_state()

    async def builder_ready(index: int) -> tuple[_Part, Builder]:
        part = parts.get(index)
        if part is None:
            part = parts[index] = _Part()
        if part.core is None and part.task is None:
            part.task = restoring(restore_builder(index, part), f"builder {index}")
        await part.ready.wait()
        core: Builder = part.core
        return part, core

    async def builder_round(index: int, part: _Part, core: Builder, messages: list[Incoming]) -> None:
        await builder_rounds([(index, part, core, messages)])

    async def builder_rounds(batch: list[tuple[int, _Part, Builder, list[Incoming]]]) -> None:
        """One round of each partition in `batch` (their locks held), their journey rows written
        together: each round's mark delivered -> the messages applied -> every journey row and
        document of the batch written (one insert per table) -> hand-overs sent -> each partition's
        journal, offset and keyed entries. A partition's crash semantics are its own round's; one
        insert for the batch because a chDB insert costs ~15 ms whatever its size: four builders
        writing apart did 509 records/s (benchmarks/journey_worker.py --days 1 --builders 4)."""
        began = time.perf_counter()
        await asyncio.gather(
            *(
                write_table(
                    "builder round mark",
                    b_meta,
                    index,
                    [(journey_stage.ROUND_KEY, journey_stage.round_value(messages[0][0], messages[-1][0] + 1))],
                )
                for index, _, _, messages in batch
            )
        )
        versions: list[JourneyVersion] = []
        sends: list[tuple[int, Message]] = []
        bases: list[int] = []
        for _, part, core, messages in batch:
            base = await builder_apply(part, core, messages, versions, sends)
            bases.append(base)
        if versions:
            await write_journey_outputs(app, client, executor, journeys_topic, versions, retried)
        if sends:
            await send_hand_overs(sends)
        await asyncio.gather(
            *(
                builder_persist(index, part, core, messages[-1][0] + 1, base)
                for (index, part, core, messages), base in zip(batch, bases, strict=True)
            )
        )
        jm.JOURNEY_BATCHES.inc(sum(len(messages) for *_, messages in batch))
        jm.JOURNEY_BUILDER_ROUND_SECONDS.inc(time.perf_counter() - began)
        publish_state()

    async def builder_apply(
        part: _Part,
        core: Builder,
        messages: list[Incoming],
        versions: list[JourneyVersion],
        sends: list[tuple[int, Message]],
    ) -> int:
        """A partition's round's messages applied: its journey versions and hand-overs added to
        `versions` and `sends`; the base of its versions."""
        end = messages[-1][0] + 1
        base = part.version_base

        def version(next_offset: int) -> int:
            # a new state's base is set when its first journeys are taken: above the event time then
            # (`journey_stage.version_base`), as the single stage's versions are
            nonlocal base
            if base is None:
                base = journey_stage.version_base((e.version for e in core.store._emitted.values()), core.as_of_ms)
            return journey_stage.round_version(base, next_offset)

        n = 0
        for offset, value, _ in messages:
            for frame in wire.frames_of(value):  # a Tick ends its Kafka message: one version per offset
                n += 1
                if n % APPLY_SLICE == 0:
                    await asyncio.sleep(0)
                try:
                    stamp, message = wire.decode_message(frame)
                except wire.WireError as error:
                    jm.JOURNEY_RECORDS.labels("unreadable").inc()
                    log.warning("skipped an unreadable split journey message at offset %d (%s)", offset, error)
                    continue
                try:
                    sends += core.receive(stamp, message)
                except Exception as error:  # one bad message must not stop the stage
                    jm.JOURNEY_RECORDS.labels("failed").inc()
                    log.error("split journey message at offset %d skipped (%s)", offset, type(error).__name__)
                    continue
                if isinstance(message, Tick):
                    versions += core.tick(version=version(offset + 1))
        versions += core.changes(version=version(end))
        assert base is not None
        return base

    async def send_hand_overs(sends: list[tuple[int, Message]]) -> None:
        by_builder: dict[int, list[tuple[bytes, bytes, None]]] = {}
        for to, sent in sends:
            value = wire.encode_message(None, sent)
            if len(value) > largest_hand_over[0]:
                largest_hand_over[0] = len(value)
                jm.JOURNEY_HANDOVER_BYTES.set(len(value))
            if len(value) > HANDOVER_MAX_BYTES:
                await too_large(sent, len(value))
            by_builder.setdefault(to, []).append((str(to).encode(), value, None))

        async def attempt() -> None:
            await asyncio.gather(*(produce(app, builds_name, m, to) for to, m in by_builder.items()))

        await retried("journey hand-over send", attempt, "topic", "kafka-producer")

    async def builder_persist(index: int, part: _Part, core: Builder, end: int, base: int) -> None:
        changes = core.state_changes()
        chunks = wire.builder_journal(end, base, changes)
        meta_writes = _journal_writes(chunks, part.journal_chunks)
        meta_writes.append((OFFSET_KEY, wire.meta_value(end, base, changes.meta)))
        await write_table("builder journal", b_meta, index, meta_writes)
        part.journal_chunks = len(chunks)
        for what, table_, writes in builder_keyed(changes):
            await write_table(what, table_, index, writes)
        part.next_offset, part.version_base = end, base
        part.last_round = time.monotonic()

    async def too_large(sent: Message, size: int) -> None:
        """A book too large for one message: the stage cannot go on exactly without it, so the
        worker stops, saying so (retried, it would block the builder for ever)."""
        contacts = len(sent.records) if isinstance(sent, TakeOver) else 0
        error = RuntimeError(
            f"a customer's book of {contacts} contacts is {size / 1e6:.1f} MB, over the {HANDOVER_MAX_BYTES / 1e6:.1f} MB "
            "a hand-over between journey builders may carry (pipeline.events.topics.HANDOVER_MAX_BYTES); run the single "
            "journey stage (TOUCHLINE_JOURNEY_BUILDERS=0) for this data"
        )
        log.error("split journey builder stopped: %s", error)
        await app.crash(error)
        raise error

    async def settle_builder(index: int, part: _Part, core: Builder) -> None:
        """The round under way when the partition's last owner stopped, read again whole first."""
        start, end = part.next_offset, part.forced_end
        part.forced_end = None
        if end is None or end <= start:
            return

        messages = await read_incoming(builds_name, index, start, end, "journey round read again")
        if messages:
            log.info("split journey builder %d: round under way read again (offsets %d to %d)", index, start, end - 1)
            jm.JOURNEY_INPUT.labels("round_again").inc(len(messages))
            await builder_round(index, part, core, messages)

    async def build_partitions(by_partition: dict[int, list[Incoming]]) -> None:
        """The partitions of one take: each one's messages from its next offset on (gaps read),
        one round of all of them (`builder_rounds`)."""
        held: list[tuple[int, _Part, Builder]] = []
        for index in sorted(by_partition):
            part, core = await builder_ready(index)
            held.append((index, part, core))
        async with contextlib.AsyncExitStack() as locks:
            batch: list[tuple[int, _Part, Builder, list[Incoming]]] = []
            for index, part, core in held:  # in partition order: the tail reader takes one lock only
                await locks.enter_async_context(part.lock)
                if part.core is not core:
                    continue
                if part.forced_end is not None:
                    await settle_builder(index, part, core)
                messages = await contiguous(builds_name, index, part, by_partition[index])
                if messages:
                    batch.append((index, part, core, messages))
            if batch:
                await builder_rounds(batch)

    @app.agent(builds_topic)
    async def build(stream: Any) -> None:
        async for events in stream.take_events(BUILDER_TAKE_MESSAGES, within=TAKE_WITHIN_SECONDS):
            by_partition: dict[int, list[Incoming]] = {}
            for event in events:
                message = event.message
                by_partition.setdefault(message.partition, []).append((message.offset, event.value, None))
            await build_partitions(by_partition)

    # ---- skipped tails and lag ------------------------------------------------------------------

    def partition_end(topic: str, partition: int) -> int | None:
        """The offset after the partition's last message, when this worker reads it (None: not
        assigned here, or the consumer is starting or stopping: the next tick looks again)."""
        tp = TP(topic, partition)
        try:
            end: int | None = app.consumer.highwater(tp) if tp in app.consumer.assignment() else None
        except Exception:
            return None
        return end

    lagging: set[tuple[str, int]] = set()  # partitions whose lag gauge is set

    @app.timer(interval=1.0)  # the lag gauges each second; a tail read after TAIL_IDLE_SECONDS idle
    async def read_skipped_tails() -> None:
        """Each partition held here: its lag, and its skipped tail read (module docstring)."""
        held: list[tuple[str, int, _Part, Callable[[list[Incoming]], Awaitable[None]]]] = []
        if resolver.core is not None:
            held.append((input_topic, 0, resolver, functools.partial(resolver_round, resolver.core)))
        for index, part in list(parts.items()):
            if part.core is not None:
                held.append((builds_name, index, part, functools.partial(builder_round, index, part, part.core)))
        now_lagging: set[tuple[str, int]] = set()
        for topic, partition, part, round_ in held:
            end = partition_end(topic, partition)
            if end is None or not part.ready.is_set():
                continue
            now_lagging.add((topic, partition))
            metrics.CONSUMER_LAG.labels("journeys", topic, str(partition)).set(max(0, end - part.next_offset))
            if end <= part.next_offset or part.lock.locked() or time.monotonic() - part.last_round < TAIL_IDLE_SECONDS:
                continue
            core = part.core
            async with part.lock:
                if part.core is not core:
                    continue
                if topic == builds_name and part.forced_end is not None:
                    await settle_builder(partition, part, core)
                if end > part.next_offset:
                    tail = await read_incoming(topic, partition, part.next_offset, end, "journey input read again")
                    if tail:
                        log.warning(
                            "journey input %s[%d]: %d message(s) at offsets %d to %d were not handed over, read them",
                            topic,
                            partition,
                            len(tail),
                            tail[0][0],
                            tail[-1][0],
                        )
                        jm.JOURNEY_INPUT.labels("read_again").inc(len(tail))
                        await round_(tail)
        for topic, partition in lagging - now_lagging:
            metrics.CONSUMER_LAG.remove("journeys", topic, str(partition))
        lagging.clear()
        lagging.update(now_lagging)

    # ---- rebalances -----------------------------------------------------------------------------

    def invalidate() -> None:
        for part in [resolver, *parts.values()]:
            if part.task is not None:
                part.task.cancel()
        resolver.core, resolver.task = None, None
        resolver.ready.clear()
        parts.clear()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        invalidate()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_recovered(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # the tables are recovered: restore the partitions held here now, so lookups answer at once
        invalidate()
        started = time.perf_counter()
        owned = [i for i in range(builders) if active(builds_name, i)]
        jm.JOURNEY_PARTITIONS.set(len(owned) + active(input_topic, 0))
        tasks: list[asyncio.Task[None]] = []
        if active(input_topic, 0):
            resolver.task = restoring(restore_resolver(), "resolver")
            tasks.append(resolver.task)
        for index in owned:
            part = parts[index] = _Part()
            part.task = restoring(restore_builder(index, part), f"builder {index}")
            tasks.append(part.task)
        if tasks:
            timer[0] = asyncio.ensure_future(timed_restore(tasks, started))

    async def timed_restore(tasks: list[asyncio.Task[None]], started: float) -> None:
        """`touchline_journey_restore_seconds`: until every partition held here is restored."""
        done = await asyncio.gather(*tasks, return_exceptions=True)
        if any(isinstance(d, BaseException) for d in done):
            return  # cancelled by the next rebalance, or failed (the worker stops)
        took = time.perf_counter() - started
        r: Resolver | None = resolver.core
        held = [p.core for p in parts.values() if p.core is not None]
        jm.JOURNEY_RESTORE_SECONDS.set(took)
        jm.JOURNEY_RESTORED_CONTACTS.set((0 if r is None else len(r.seen)) + sum(len(b.records) for b in held))
        log.info("split journey stage: %d partition(s) restored in %.2f s", len(tasks), took)

    # ---- lookups --------------------------------------------------------------------------------

    def owner_url(table_: Any, partition: int) -> URL | None:
        assignor: Any = app.assignor
        url = assignor._tps_url.get(TP(table_.changelog_topic.get_topic_name(), partition))
        return None if url is None else URL(url)

    def unavailable(web: Any, state: str, partition: str) -> Response:
        """503 for a partition not yet ready here; logged, so a client's retries can be explained."""
        log.info("journey lookup answered 503: the %s partition is being %s here", partition, state)
        body = {"error": f"journey state is being {state}, retry shortly", "partition": partition}
        response: Response = web.json(body, status=503)
        return response

    async def routed_to(web: Any, request: Request, url: URL | None, partition: str) -> Response | None:
        """The response of the worker at `url` (None: this worker is that one)."""
        if url is None:
            return unavailable(web, "assigned", partition)
        try:
            router: Any = app.router
            response: Response = await router._route_req(url, web, request)
            return response
        except SameNode:
            return None

    @app.page("/journeys/lookup")
    async def journey_lookup(web: Any, request: Request) -> Response:
        """GET /journeys/lookup?kind=phone&value=%2B44...: the customer's current journey (resolver,
        then builder)."""
        refused = access.refusal(request.headers)
        if refused is not None:
            response: Response = web.json({"error": refused[1]}, status=refused[0])
            return response
        builder_hop = request.query.get("builder")
        if builder_hop is not None:
            return await lookup_at_builder(web, request, builder_hop)
        kind, value = request.query.get("kind", ""), request.query.get("value", "")
        if kind not in journey_stage.LOOKUP_KINDS or not value:
            kinds = ", ".join(sorted(journey_stage.LOOKUP_KINDS))
            body = {"error": "bad request", "detail": f"give ?kind=<{kinds}>&value=<identifier>"}
            response = web.json(body, status=400)
            return response
        elsewhere = await routed_to(web, request, owner_url(r_meta, 0), "resolver")
        if elsewhere is not None:
            return elsewhere
        try:
            core = await asyncio.wait_for(resolver_ready(), LOOKUP_WAIT_SECONDS)
        except TimeoutError:
            return unavailable(web, "restored", "resolver")
        hidden = pseudonym.lookup_value(kind, value)
        customer = core.graph.customer_of_value(kind, hidden)
        at = None if customer is None else core.owner.get(customer)
        if customer is None or at is None:
            response = web.json({"error": "unknown identifier", "kind": kind, "value": value}, status=404)
            return response
        hop: Any = cast(Any, request).clone(
            rel_url=request.rel_url.with_query({"builder": str(at), "customer": customer})
        )
        answered = await routed_to(web, hop, owner_url(b_meta, at), f"builder {at}")
        if answered is not None:
            return answered
        return await lookup_at_builder(web, hop, str(at))

    async def lookup_at_builder(web: Any, request: Request, index_text: str) -> Response:
        customer = request.query.get("customer", "")
        try:
            index = int(index_text)
        except ValueError:
            index = -1
        if not 0 <= index < builders or not customer:
            response: Response = web.json({"error": "bad request", "detail": "builder hop"}, status=400)
            return response
        if not active(builds_name, index):
            return unavailable(web, "assigned", f"builder {index}")
        try:
            _, core = await asyncio.wait_for(builder_ready(index), LOOKUP_WAIT_SECONDS)
        except TimeoutError:
            return unavailable(web, "restored", f"builder {index}")
        journeys = core.store.journeys(customer, core.as_of_ms or None)
        open_ones = [j for j in journeys if j.status == "open"]
        candidates = open_ones or journeys
        current = candidates[-1] if candidates else None
        document = {
            "customer": customer,
            "current_journey": None if current is None else journey_stage.journey_document(JourneyVersion(current, 0)),
            "journeys": [j.journey_id for j in journeys],
        }
        response = web.json(document)
        return response

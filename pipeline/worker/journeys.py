"""The journey stage's plain parts: how the analytics stage's events become compact contact records
on `touchline.journey-events` and are read back, how the stage's keyed state is encoded in its
tables, how journeys are rendered for the topic and the lookup endpoint, and the retry of outputs.
The Faust shell (`pipeline.worker.journey_agent`) owns the tables, the agent and the endpoint.

Wire format: each message is a run of contact records (`pipeline.journeys.record`, one JSON object
with `"v": 1` per line), one record per contact of the analytics batch. Messages are keyed by the
contacts' shard (`shard_of`): the identity graph is global, so there is one shard (and the topic
has one partition) today; a graph partitioned by component would raise the shard count without a
change of format. Records are batched because a Faust agent costs about 100 us per message
(`make bench`: a bare agent that only counts and acknowledges does 9,895 messages/s on one core),
which alone would cap a stage reading one message per contact below 10,000 contacts/s."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from pydantic_core import from_json as parse_json
from pydantic_core import to_json as encode_json

from pipeline.events.models import EventBase, IdentifierKind
from pipeline.journeys.contact import from_ms
from pipeline.journeys.identity import Node
from pipeline.journeys.model import Emitted, Journey, JourneyVersion
from pipeline.journeys.record import ContactRecord, RecordError, records_of
from pipeline.journeys.rows import JOURNEY_COLUMNS, STEP_COLUMNS, STEP_DELETED, journey_values, step_values
from pipeline.journeys.stitcher import Stitcher
from pipeline.worker.backoff import exponential
from pipeline.worker.health import Health

log = logging.getLogger(__name__)

# a forwarded message's record lines; its identity header (`IDENTITY_HEADER`) is smaller than the
# lines it describes (each element is part of its line), so the two stay under the producer's 1 MB
# request limit
MAX_FORWARD_BYTES = 450_000
# the Kafka header of a forwarded message holding, per record line and in their order, what the
# identity graph reads: `[contact id, seen (µs), [[kind, value], ...], [[kind, value, kind, value],
# ...]]`. A resolver partition (`pipeline.journeys.split`, README: scale-out) ties and routes from
# it without parsing the records: 20.6-20.7 µs a record over a simulated week against 26.6-29.8
# parsing them (benchmarks/journey_resolver.py --days 7, with and without --records, alternating).
# Readers that take the records (this stage) ignore it, so a message is readable without it.
IDENTITY_HEADER = "touchline-identities"
SHARDS = 1  # the identity graph is global: one shard, one partition
# messages the stage takes as one round at most (`pipeline.worker.journey_agent`), when that many
# are waiting
TAKE_MESSAGES = 16

T = TypeVar("T")


OffsetFirst = TypeVar("OffsetFirst", bound=tuple[Any, ...])  # a message: (offset, value, ...)


def runs_to_apply(messages: list[OffsetFirst], expected: int | None) -> tuple[list[list[OffsetFirst]], int]:
    """A round's messages `(offset, value, ...)` (offset order) against the state's next offset
    `expected` (None: the state holds none yet): the runs of consecutive offsets to apply, in order,
    and how many messages were applied already (below the offset, or repeated). A run that does not
    start where the state stands follows a gap: what lies between is read again first."""
    runs: list[list[OffsetFirst]] = []
    skipped = 0
    for message in messages:
        offset: int = message[0]
        if expected is not None and offset < expected:
            skipped += 1
            continue
        if runs and offset == expected:
            runs[-1].append(message)
        else:
            runs.append([message])
        expected = offset + 1
    return runs, skipped


def chunks(values: list[bytes], limit: int = MAX_FORWARD_BYTES) -> Iterator[bytes]:
    """Newline-joined runs of `values`, each at most `limit` bytes (a single larger value alone)."""
    run: list[bytes] = []
    size = 0
    for value in values:
        if run and size + len(value) + 1 > limit:
            yield b"\n".join(run)
            run, size = [], 0
        run.append(value)
        size += len(value) + 1
    if run:
        yield b"\n".join(run)


def shard_of(contact_id: str, shards: int = SHARDS) -> int:
    return zlib.crc32(contact_id.encode()) % shards if shards > 1 else 0


# a record's identity, as `IDENTITY_HEADER` carries it: contact id, seen (µs), identifiers, links
Identity = tuple[str, int, list[tuple[str, str]], list[tuple[str, str, str, str]]]
ForwardLine = tuple[int, bytes, Identity]  # shard, record line, identity


def forward_lines(events: Iterable[EventBase], shards: int = SHARDS) -> list[ForwardLine]:
    """One (shard, record line, identity) per contact of `events`: what the analytics stage keeps
    until the journey stage has it (the events themselves can be freed)."""
    return [
        (shard_of(r.contact_id, shards), r.to_json(), (r.contact_id, r.seen_us, list(r.ids), list(r.links)))
        for r in records_of(events)
    ]


def forward_chunks(lines: Iterable[ForwardLine]) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
    """The (key, value, headers) messages carrying `forward_lines` output: grouped by shard, cut
    under the size limit, each with its lines' identities in `IDENTITY_HEADER`."""
    by_shard: dict[int, list[tuple[bytes, Identity]]] = {}
    for shard, line, identity in lines:
        by_shard.setdefault(shard, []).append((line, identity))
    out: list[tuple[bytes, bytes, dict[str, bytes]]] = []
    for shard, items in sorted(by_shard.items()):
        key = f"shard-{shard}".encode()
        start = 0
        for chunk in chunks([line for line, _ in items]):
            end = start + chunk.count(b"\n") + 1  # a record's JSON holds no raw newline
            header = encode_json([identity for _, identity in items[start:end]])
            out.append((key, chunk, {IDENTITY_HEADER: header}))
            start = end
    return out


def forward_messages(events: Iterable[EventBase], shards: int = SHARDS) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
    """The (key, value, headers) messages that carry `events` to the journey stage: one record per
    contact, grouped by shard, cut under the size limit (`forward_chunks`)."""
    return forward_chunks(forward_lines(events, shards))


def read_identities(headers: Iterable[tuple[str, bytes]], lines: int) -> list[Identity] | None:
    """The identities of a forwarded message's `lines` record lines from its Kafka headers, None
    when it has none that fits (sent without, or unreadable: read the records instead)."""
    for name, value in headers:
        if name != IDENTITY_HEADER:
            continue
        try:
            items = parse_json(value, cache_strings=False)
        except ValueError:
            return None
        return items if isinstance(items, list) and len(items) == lines else None
    return None


def read_records(value: bytes) -> tuple[list[ContactRecord], list[str]]:
    """The records of one message, and the reasons of lines that could not be read (skipped)."""
    records: list[ContactRecord] = []
    rejected: list[str] = []
    try:
        # the whole message in one parse (a record's JSON holds no raw newline): half the cost of
        # one parse per line; a message with an unreadable line is read line by line instead
        items: list[Any] = parse_json(b"[" + value.strip(b"\n").replace(b"\n", b",") + b"]", cache_strings=False)
    except ValueError:
        items = []
        for line in value.split(b"\n"):
            if not line:
                continue
            try:
                items.append(parse_json(line, cache_strings=False))
            except ValueError:
                rejected.append("contact record is not JSON")
    for item in items:
        try:
            records.append(ContactRecord.from_dict(item))
        except RecordError as error:
            rejected.append(str(error))
    return records, rejected


def decode_records(values: list[bytes]) -> tuple[list[ContactRecord], list[str]]:
    """The contact records of stored table values (a restore), and the reasons of those that could
    not be read (skipped). One parse per value: parsing runs of values in one call showed no gain
    in the restore benchmark (1 simulated day: 1.30 s and 1.51 s against 0.90 s and 1.06 s)."""
    records: list[ContactRecord] = []
    rejected: list[str] = []
    for value in values:
        try:
            records.append(ContactRecord.from_json(value))
        except RecordError as error:
            rejected.append(str(error))
    return records, rejected


def decode_entries(items: list[tuple[bytes, bytes]]) -> list[tuple[str, Emitted]]:
    """The journey entries of stored `journey-emitted` items (a restore; the caller pauses the
    collector over the whole restore, `collection_paused`)."""
    return [(key.decode(), emitted_entry(value)) for key, value in items]


def component_key(node: Node) -> bytes:
    """Key of an identity component entry: its smallest identifier, `kind:value`."""
    return f"{node[0]}:{node[1]}".encode()


def component_value(members: list[Node]) -> bytes:
    """An identity component entry: its identifier members as `[[kind, value], ...]`."""
    return encode_json(members)


def decode_components(values: list[bytes]) -> tuple[list[list[Node]], list[str]]:
    """The identity components of stored `journey-identity` values (a restore), and the reasons of
    those that could not be read (skipped: their contacts are tied again from their identifiers)."""
    components: list[list[Node]] = []
    rejected: list[str] = []
    for value in values:
        try:
            members = [(sys.intern(kind), sys.intern(node)) for kind, node in parse_json(value, cache_strings=False)]
        except (ValueError, TypeError):
            rejected.append("identity component is not a list of [kind, value]")
            continue
        if members:
            components.append(members)
    return components, rejected


# the `journey-emitted` entry holding the offset of the next input message the state has not applied
# and the base of the journey versions (`round_version`), written with the round's last table, so
# durable only once the round's state is; no journey id starts with a NUL
INPUT_OFFSET_KEY = b"\x00next-input-offset"


def offset_value(offset: int, version_base: int) -> bytes:
    return f"{offset} {version_base}".encode()


def stored_offset(value: bytes | None) -> tuple[int | None, int | None]:
    """The offset and the version base an `INPUT_OFFSET_KEY` entry holds (None: none, unreadable,
    or a base not kept yet: the entry was written before bases were)."""
    parts = [] if value is None else value.split()
    try:
        numbers = [int(part) for part in parts[:2]]
    except ValueError:
        return None, None
    return (numbers[0] if numbers else None), (numbers[1] if len(numbers) > 1 else None)


# the `journey-emitted` entry naming the round under way, `round_value(start, end)`: written and
# delivered before the round's journeys go out (`pipeline.worker.journey_agent`), so a successor
# restored at `start` reads exactly that round again first (`forced_end`)
ROUND_KEY = b"\x00round-under-way"


def round_value(start: int, end: int) -> bytes:
    return f"{start} {end}".encode()


def forced_end(value: bytes | None, next_offset: int | None) -> int | None:
    """Where the first round of a state restored at `next_offset` must end: the end of the round a
    `ROUND_KEY` entry names when that round starts there (its outputs may have gone out, its state
    not), else None (the last round finished, or no entry). A round ending there again writes the
    same journeys at the same versions (`round_version`); ending elsewhere, a journey that existed
    only at the killed round's end (a contact's own, before a merge joins it to an older journey)
    would never be written again nor retracted, and stay live in the `journeys` table."""
    parts = [] if value is None else value.split()
    try:
        start, end = (int(part) for part in parts)
    except ValueError:
        return None
    return end if start == next_offset and end > start else None


def version_base(versions: Iterable[int], as_of_ms: int) -> int:
    """The base of the journey versions of a state that has none yet (new, or written before bases
    were kept): above every version the state holds and every version a first write could have had
    before (`as_of * 1000`, `JourneyStore`)."""
    return max(max(versions, default=0) + 1, as_of_ms * 1000, 1)


def round_version(version_base: int, next_offset: int) -> int:
    """The version of every journey a round writes: the base plus the offset after the round's last
    message. Offsets only grow, so versions do, across restarts and owners; and they are a function
    of where the round ends, not of how many rounds came before it. A worker killed after writing a
    round's rows but before persisting its state wrote them at the version its successor gives the
    same messages: the successor's rounds may end elsewhere (the messages waiting when it starts),
    and a round ending later writes a higher version. With `last version + 1` both wrote the next
    version, the killed one with less in it, and a store keeping either at a tie could keep the
    stale one (the two-worker journey test lost one journey's resolution this way, once)."""
    return version_base + next_offset


def arrival_seq(offset: int, index: int) -> int:
    """Arrival order of the `index`-th record of the message at `offset`: the same when the
    message is read again, so a rebuilt identity graph unites in the original order."""
    return (offset << 20) | min(index, (1 << 20) - 1)


def emitted_value(entry: Emitted) -> bytes:
    return encode_json(entry.to_dict())


def emitted_entry(value: bytes) -> Emitted:
    return Emitted.from_dict(parse_json(value, cache_strings=False))


JOURNEY_TIMES = ("started_at", "last_activity_at", "first_human_at", "resolved_at")
STEP_TIMES = ("started_at", "ended_at", "first_human_at", "resolved_at")
_JOURNEY_TIME_AT = tuple(JOURNEY_COLUMNS.index(c) for c in JOURNEY_TIMES)
_STEP_TIME_AT = tuple(STEP_COLUMNS.index(c) for c in STEP_TIMES)


@lru_cache(maxsize=1 << 16)  # a journey's times are rendered again at each of its versions
def iso_of_ms(epoch_ms: int) -> str:
    return from_ms(epoch_ms).isoformat()


def _same(value: int) -> int:
    return value


def _two_forms(values: list[Any], times: tuple[int, ...]) -> list[Any]:
    """A copy of `values` with the epoch-ms times at `times` as datetimes (the ClickHouse row);
    `values` keeps them as ISO strings (the document)."""
    row = values.copy()
    for i in times:
        ms = values[i]
        if ms is not None:
            row[i], values[i] = from_ms(ms), iso_of_ms(ms)
    return row


def render_outputs(changed: list[JourneyVersion]) -> Outputs:
    """The `journeys` and `journey_steps` rows (value lists in `JOURNEY_COLUMNS` / `STEP_COLUMNS`
    order) and the topic documents `(key, JSON)` of emitted versions, in one pass: each version's
    values are built once with epoch-ms times, then rendered as datetimes for ClickHouse and as ISO
    strings for the documents."""
    journey_rows: list[list[Any]] = []
    steps: list[list[Any]] = []
    documents: list[tuple[bytes, bytes]] = []
    encode, columns, step_columns = encode_json, JOURNEY_COLUMNS, STEP_COLUMNS
    for version in changed:
        values = journey_values(version, _same)
        journey_rows.append(_two_forms(values, _JOURNEY_TIME_AT))
        shown: list[dict[str, Any]] = []
        for step in step_values(version, _same):
            steps.append(_two_forms(step, _STEP_TIME_AT))
            if not step[STEP_DELETED]:
                shown.append(dict(zip(step_columns, step, strict=True)))
        document = dict(zip(columns, values, strict=True))
        document["steps"] = shown
        documents.append((version.journey.journey_id.encode(), encode(document)))
    return Outputs(journey_rows, steps, documents)


@dataclass(frozen=True, slots=True)
class Outputs:
    """What a round writes: `journeys` rows, `journey_steps` rows (column order) and the documents."""

    journeys: list[list[Any]]
    steps: list[list[Any]]
    documents: list[tuple[bytes, bytes]]


def journey_document(version: JourneyVersion) -> dict[str, Any]:
    """The JSON a consumer of `touchline.journeys` (or the lookup endpoint) sees."""
    document: dict[str, Any] = json.loads(journey_json(version))
    return document


def journey_json(version: JourneyVersion) -> bytes:
    """`journey_document` as JSON bytes."""
    return render_outputs([version]).documents[0][1]


LOOKUP_KINDS = {kind.value: kind for kind in IdentifierKind}


def lookup(stitcher: Stitcher, kind: str, value: str, as_of: int | None) -> tuple[str, Journey | None, list[Journey]]:
    """The customer key of an identifier, their current journey (the latest open one, else the
    latest) and all their journeys. Raises KeyError for an unknown or unusable identifier."""
    customer = stitcher.graph.customer_of_value(kind, value)
    if customer is None:
        raise KeyError(kind)
    journeys = stitcher.store.journeys(customer, as_of)
    open_ones = [j for j in journeys if j.status == "open"]
    candidates = open_ones or journeys
    return customer, (candidates[-1] if candidates else None), journeys


async def retried(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[], None] = lambda: None,
    give_up_after: float = 120.0,
    health: Health | None = None,
    dependency: str = "",
) -> T:
    """`attempt()` until it succeeds, waiting 0.2 s, 0.4 s, ... (at most 5 s) between tries; after
    `give_up_after` seconds of failures the last error is raised, and the stage stops the worker
    (ClickHouse or the broker is not coming back by itself). Failures and the recovery are reported
    to `health` under `dependency` (`/health`, `touchline_dependency_up`)."""

    pauses = exponential(0.1, 5.0, least=0.2)
    began = time.monotonic()
    failed = False
    while True:
        try:
            result = await attempt()
        except Exception as error:  # CancelledError is not an Exception: a stop goes through
            if time.monotonic() - began >= give_up_after:
                raise
            on_retry()
            if health is not None:
                health.failed(dependency, error)
                failed = True
            pause = next(pauses)
            log.warning("%s failed (%s), retrying in %.1f s", what, type(error).__name__, pause)
        else:
            if failed and health is not None:
                health.ok(dependency)
            return result
        await asyncio.sleep(pause)

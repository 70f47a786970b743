"""The split journey stage's wire and state formats (`pipeline.worker.split_wire`): every message and
state entry reads back as written; a resolver and four builders restored from their encoded
checkpoints (the last one cut short after its journal) go on exactly as the ones never stopped; and
a journal that is not whole is never read."""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.journeys.model import Emitted, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord
from pipeline.journeys.split import (
    Builder,
    BuilderChanges,
    ContactEntry,
    CustomerEntry,
    Expect,
    Filed,
    FiledContact,
    Forget,
    HandOver,
    Message,
    Renamed,
    Resolver,
    ResolverChanges,
    Stamp,
    TakeOver,
    Tick,
    check_windows,
    stamped,
)
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker import journeys as stage
from pipeline.worker.split_wire import (
    WireError,
    builder_journal,
    contact_entry,
    contact_value,
    customer_entry,
    customer_value,
    decode_message,
    encode_filed,
    encode_message,
    filed_entry,
    filed_value,
    frames_of,
    journal_key,
    meta_entry,
    meta_value,
    packs,
    read_builder_journal,
    read_resolver_journal,
    resolver_journal,
    resolver_offset_entry,
    resolver_offset_value,
)
from tests.unit.test_journey_split import HOUR, RETENTION, WINDOWS, Retention, forwarded, fragmented

BASE = 10**9  # the builders' version base
LIMIT = 20_000  # journal chunks small enough that a checkpoint takes several


# ------------------------------------------------------------------------------------ a split stage

Part = list[tuple[Stamp | None, Message]]


def assert_reads_back(stamp: Stamp | None, message: Message) -> None:
    """A message sent reads back as it was sent (records by their fields and seq too)."""
    got_stamp, got = decode_message(encode_message(stamp, message))
    assert (got_stamp, got) == (stamp, message)
    if isinstance(message, Filed):
        assert isinstance(got, Filed)
        assert got.record.to_dict() == message.record.to_dict() and got.record.seq == message.record.seq
    elif isinstance(message, TakeOver):
        assert isinstance(got, TakeOver)
        assert [r.to_dict() for r in got.records] == [r.to_dict() for r in message.records]


@dataclasses.dataclass
class SplitStage:
    """A resolver and its builders, each builder with its input partition and how far it read it."""

    resolver: Resolver
    builders: list[Builder]
    parts: list[Part]
    read: list[int]
    journeys: list[list[JourneyVersion]]
    on_send: Callable[[Stamp | None, Message], None] = lambda stamp, message: None

    @classmethod
    def new(cls, config: JourneyConfig, retention: Retention, builders: int = 4) -> SplitStage:
        resolver = Resolver(builders, keep_ms=retention.keep_ms, identity_retention_ms=retention.identity_ms)
        parts = [Builder(i, config, keep_ms=retention.keep_ms) for i in range(builders)]
        return cls(resolver, parts, [[] for _ in parts], [0] * builders, [[] for _ in parts])

    def send(self, at: int, stamp: Stamp | None, message: Message) -> None:
        self.on_send(stamp, message)
        self.parts[at].append((stamp, message))

    def route(self, offset: int, records: list[ContactRecord]) -> list[tuple[int, Stamp, Message]]:
        fresh = [ContactRecord.from_json(record.to_json()) for record in records]  # records are merged into
        routed = stamped(offset, self.resolver.read(str(offset), fresh))
        for at, stamp, message in routed:
            self.send(at, stamp, message)
        return routed

    def erase(self, contact_id: str) -> None:
        for at, message in self.resolver.forget([contact_id]):
            self.send(at, None, message)

    def work(self, at: int, upto: int) -> None:
        """Builder `at` reads its partition up to `upto` (as far as it goes) as one round."""
        builder, part = self.builders[at], self.parts[at]
        while self.read[at] < min(upto, len(part)):
            stamp, message = part[self.read[at]]
            self.read[at] += 1
            for to, sent in builder.receive(stamp, message):
                self.send(to, None, sent)
            if isinstance(message, Tick):  # the end of a resolver round: changes and retention
                self.journeys[at] += builder.tick(version=BASE + self.read[at])
        self.journeys[at] += builder.changes(version=BASE + self.read[at])

    def some_work(self, rng: random.Random) -> None:
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(self.builders))
            self.work(at, self.read[at] + rng.randint(1, 60))

    def drain(self) -> None:
        while any(read < len(part) for read, part in zip(self.read, self.parts, strict=True)):
            for at in range(len(self.builders)):
                self.work(at, len(self.parts[at]))


# --------------------------------------------------------------------- tables written as the shell would

Write = tuple[str, bytes, bytes | None]  # table, key, value (None: delete)


class Tables:
    """Changelogged tables of bytes, as a checkpoint writes them."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, bytes]] = collections.defaultdict(dict)

    def write(self, table: str, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.tables[table].pop(key, None)
        else:
            self.tables[table][key] = value

    def __getitem__(self, table: str) -> dict[bytes, bytes]:
        return self.tables[table]

    def journal(self) -> list[bytes]:
        """The journal chunks stored, in index order up to the first missing one."""
        chunks: list[bytes] = []
        held = self.tables["journal"]
        while journal_key(len(chunks)) in held:
            chunks.append(held[journal_key(len(chunks))])
        return chunks


def assert_chunked(chunks: list[bytes], limit: int) -> None:
    """Every chunk within `limit`, unless it holds a single entry (one line after its header)."""
    assert all(len(chunk) <= limit or chunk.count(b"\n") == 1 for chunk in chunks)


def resolver_writes(changes: ResolverChanges) -> list[Write]:
    out: list[Write] = [
        ("customers", key.encode(), None if entry is None else customer_value(entry))
        for key, entry in changes.customers
    ]
    out += [
        ("components", stage.component_key(node), None if members is None else stage.component_value(members))
        for node, members in changes.components
    ]
    return out + [
        ("contacts", key.encode(), None if entry is None else contact_value(entry)) for key, entry in changes.contacts
    ]


def builder_writes(changes: BuilderChanges) -> list[Write]:
    out: list[Write] = [
        ("contacts", key.encode(), None if entry is None else filed_value(entry)) for key, entry in changes.contacts
    ]
    return out + [
        ("emitted", key.encode(), None if entry is None else stage.emitted_value(entry))
        for key, entry in changes.emitted
    ]


def checkpoint_resolver(tables: Tables, offset: int, changes: ResolverChanges, keyed: int | None) -> None:
    """The journal, the offset, then the keyed entries (the first `keyed` of them: killed there)."""
    chunks = resolver_journal(offset, changes, limit=LIMIT)
    assert_chunked(chunks, LIMIT)
    assert read_resolver_journal(chunks) == (offset, changes)  # tuples still tuples, deletions kept
    for index, chunk in enumerate(chunks):
        tables.write("journal", journal_key(index), chunk)
    tables.write("offset", b"offset", resolver_offset_value(offset, changes.as_of_ms, changes.hand_overs))
    for write in resolver_writes(changes)[:keyed]:
        tables.write(*write)


def checkpoint_builder(tables: Tables, offset: int, changes: BuilderChanges, keyed: int | None) -> None:
    chunks = builder_journal(offset, BASE, changes, limit=LIMIT)
    assert_chunked(chunks, LIMIT)
    assert read_builder_journal(chunks) == (offset, BASE, changes)
    for index, chunk in enumerate(chunks):
        tables.write("journal", journal_key(index), chunk)
    tables.write("offset", b"offset", meta_value(offset, BASE, changes.meta))
    for write in builder_writes(changes)[:keyed]:
        tables.write(*write)


def restore_resolver(tables: Tables, retention: Retention) -> tuple[Resolver, int]:
    offset, as_of_ms, hand_overs = resolver_offset_entry(tables["offset"][b"offset"])
    journal = read_resolver_journal(tables.journal())
    assert journal is not None and journal[0] == offset  # the last checkpoint, completed from its journal
    for write in resolver_writes(journal[1]):
        tables.write(*write)
    components, rejected = stage.decode_components(list(tables["components"].values()))
    assert not rejected
    resolver = Resolver.from_state(
        4,
        keep_ms=retention.keep_ms,
        identity_retention_ms=retention.identity_ms,
        customers=[(key.decode(), customer_entry(value)) for key, value in tables["customers"].items()],
        components=components,
        contacts=[(key.decode(), contact_entry(value)) for key, value in tables["contacts"].items()],
        as_of_ms=as_of_ms,
        hand_overs=hand_overs,
    )
    return resolver, offset


def restore_builder(tables: Tables, index: int, config: JourneyConfig, retention: Retention) -> tuple[Builder, int]:
    offset, base, meta = meta_entry(tables["offset"][b"offset"])
    journal = read_builder_journal(tables.journal())
    assert journal is not None and journal[:2] == (offset, base) == (offset, BASE)
    for write in builder_writes(journal[2]):
        tables.write(*write)
    builder = Builder.from_state(
        index,
        config,
        keep_ms=retention.keep_ms,
        contacts=[(key.decode(), filed_entry(value)) for key, value in tables["contacts"].items()],
        emitted=[(key.decode(), stage.emitted_entry(value)) for key, value in tables["emitted"].items()],
        meta=meta,
    )
    return builder, offset


# ------------------------------------------------------------------------------------------ streams

MINUTE = HOUR // 60
SIMULATED_WINDOWS = JourneyConfig(repeat_window_ms=30 * MINUTE, dormancy_ms=15 * MINUTE)
SIMULATED_RETENTION = Retention(keep_ms=15 * MINUTE, identity_ms=45 * MINUTE)


@dataclasses.dataclass(frozen=True)
class Stream:
    messages: list[list[ContactRecord]]
    config: JourneyConfig
    retention: Retention


@pytest.fixture(scope="module")
def streams() -> dict[str, Stream]:
    return {
        # the simulator's records over an hour, with windows short enough that retention runs in both halves
        "simulated": Stream(
            forwarded(hours=1, seed=3, customers=200, batch=60), SIMULATED_WINDOWS, SIMULATED_RETENTION
        ),
        # customers first seen as several and merged later, across builders (about 33 hours)
        "fragmented": Stream(fragmented(2, customers=120, contacts=600), WINDOWS, RETENTION),
    }


def normalised(versions: list[JourneyVersion]) -> list[JourneyVersion]:
    return sorted(versions, key=lambda v: (v.version, v.journey.journey_id))


@pytest.mark.parametrize("name", ["simulated", "fragmented"])
def test_a_split_stage_restored_from_its_encoded_state_goes_on_as_one_never_stopped(
    streams: dict[str, Stream], name: str
) -> None:
    """The resolver and the builders checkpoint twice through the codec (the second time killed
    after the journal, the offset and half the keyed entries); restored from the tables' bytes,
    with the messages in flight read back from the wire, they route, build and keep state exactly as
    the originals fed the same."""
    stream = streams[name]
    messages, config, retention = stream.messages, stream.config, stream.retention
    check_windows(config, retention.keep_ms, retention.identity_ms)
    rng = random.Random(7)
    first, second = len(messages) // 3, 2 * len(messages) // 3
    original = SplitStage.new(config, retention)
    resolver_tables, builder_tables = Tables(), [Tables() for _ in original.builders]
    pending = deleted = 0
    for offset in range(second):
        original.route(offset, messages[offset])
        if offset == first + 2:
            original.erase(messages[offset][0].contact_id)
        original.some_work(rng)
        if offset + 1 in (first, second):
            whole = offset + 1 == first  # the second checkpoint is killed after half its keyed entries
            changes = original.resolver.state_changes()
            deleted += sum(value is None for _, _, value in resolver_writes(changes))
            cut = None if whole else len(resolver_writes(changes)) // 2
            checkpoint_resolver(resolver_tables, offset + 1, changes, cut)
            for at, builder in enumerate(original.builders):
                changed = builder.state_changes()
                pending += len(changed.meta["pending"])
                deleted += sum(value is None for _, _, value in builder_writes(changed))
                cut = None if whole else len(builder_writes(changed)) // 2
                checkpoint_builder(builder_tables[at], original.read[at], changed, cut)

    resolver, offset = restore_resolver(resolver_tables, retention)
    assert offset == second
    restored = SplitStage(resolver, [], [], [], [[] for _ in original.builders])
    marks = [len(journeys) for journeys in original.journeys]
    for at, part in enumerate(original.parts):
        builder, read = restore_builder(builder_tables[at], at, config, retention)
        assert read == original.read[at]
        restored.builders.append(builder)
        restored.read.append(read)
        # what it has not read yet, as it comes off the topic
        restored.parts.append(part[:read] + [decode_message(encode_message(s, m)) for s, m in part[read:]])
    assert sum(len(part) - read for part, read in zip(original.parts, original.read, strict=True)) > 50
    assert deleted > 10  # retention and the erasure deleted entries (a journal carries deletions)
    if name == "fragmented":  # hand-overs were under way at the checkpoints
        assert pending > 0

    for offset in range(second, len(messages)):
        assert restored.route(offset, messages[offset]) == original.route(offset, messages[offset])
        schedule = rng.getstate()
        original.some_work(rng)
        rng.setstate(schedule)
        restored.some_work(rng)
    original.drain()
    restored.drain()

    for at in range(len(original.builders)):
        assert normalised(restored.journeys[at]) == normalised(original.journeys[at][marks[at] :])
        assert original.read[at] == restored.read[at]
    assert sum(len(journeys) for journeys in restored.journeys) > 100
    want, got = original.resolver.state_changes(), restored.resolver.state_changes()
    assert dict(got.customers) == dict(want.customers)
    assert dict(got.components) == dict(want.components)
    assert (got.as_of_ms, got.hand_overs) == (want.as_of_ms, want.hand_overs)
    assert restored.resolver.owner == original.resolver.owner
    # a contact's node goes between `keep` and twice `keep` after its newest event, depending on the
    # order of the retention checks, which a restore rebuilds (`Resolver.from_state`): the two may
    # differ only in nodes due by then
    due = want.as_of_ms - retention.keep_ms
    mine, theirs = restored.resolver.seen, original.resolver.seen
    assert all(mine[c] == theirs[c] for c in mine.keys() & theirs.keys())
    assert all((mine.get(c) or theirs[c]) < due for c in mine.keys() ^ theirs.keys())
    got_contacts, want_contacts = dict(got.contacts), dict(want.contacts)
    for contact_id in got_contacts.keys() | want_contacts.keys():
        if contact_id in mine and contact_id in theirs:
            assert got_contacts.get(contact_id) == want_contacts.get(contact_id)
    for again, never_stopped in zip(restored.builders, original.builders, strict=True):
        got_b, want_b = again.state_changes(), never_stopped.state_changes()
        assert dict(got_b.contacts) == dict(want_b.contacts)
        assert dict(got_b.emitted) == dict(want_b.emitted)
        assert got_b.meta == want_b.meta
        assert again.records == never_stopped.records and again.customer_of == never_stopped.customer_of


# ------------------------------------------------------------------------------------------ messages


def test_every_message_of_a_run_reads_back_as_sent(streams: dict[str, Stream]) -> None:
    """Each message a resolver and its builders send over a stream with merges across builders and
    an erasure, encoded and read back when it is sent (records are merged into once filed)."""
    stream = streams["fragmented"]
    seen: collections.Counter[str] = collections.Counter()

    def check(stamp: Stamp | None, message: Message) -> None:
        seen[type(message).__name__] += 1
        assert_reads_back(stamp, message)

    split = SplitStage.new(stream.config, stream.retention)
    split.on_send = check
    rng = random.Random(3)
    for offset, records in enumerate(stream.messages):
        split.route(offset, records)
        if offset == 10:
            split.erase(records[0].contact_id)
        split.some_work(rng)
    split.drain()
    assert set(seen) == {"Filed", "Renamed", "Expect", "HandOver", "TakeOver", "Tick", "Forget"}
    assert seen["TakeOver"] > 5


def test_a_forwarded_line_is_filed_unparsed_as_its_record() -> None:
    """`encode_filed` splices the analytics stage's record line in: it reads back as the `Filed` the
    resolver makes of that record stamped with its arrival seq, and as `encode_message` of it."""
    start = to_ms(datetime(2026, 3, 2, 9, tzinfo=UTC))
    config = SimConfig(seed=9, start_ms=start, max_contacts=150, rate=4000, customers=200)
    events = [event for _, event in Simulation(config).run()]
    lines = [line for _, value, _ in stage.forward_messages(events) for line in value.split(b"\n")]
    assert len(lines) > 20
    resolver = Resolver(4)
    for index, line in enumerate(lines):
        seq = stage.arrival_seq(3, index)
        *_, (_, filed) = resolver.apply(ContactRecord.from_json(line).with_seq(seq))
        assert isinstance(filed, Filed)
        wire = encode_filed((3, index), filed.customer, line, seq, filed.as_of_ms)
        assert line in wire  # spliced as it came
        assert decode_message(wire) == ((3, index), filed)
        assert decode_message(wire) == decode_message(encode_message((3, index), filed))


# ------------------------------------------------------------------------------ any message or entry

# what JSON escapes or carries as more than a byte, and plain letters
texts = st.text(st.sampled_from(list('ab:"\\/\n\t\x00\x7f\u00e9\u2028\u20ac\U0001f600')), max_size=8)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
times = st.integers(min_value=0, max_value=2**53)
stamps = st.none() | st.tuples(st.integers(0, 2**50), st.integers(0, 2**20))
nodes = st.tuples(texts, texts)


@st.composite
def records(draw: st.DrawFn) -> ContactRecord:
    """Contact records with any text in their fields (their own form: `tests/unit/test_journey_records.py`)."""
    first = draw(st.none() | st.tuples(times, texts, texts))
    return ContactRecord(
        "c" + draw(texts),
        first=first,
        last_us=0 if first is None else draw(times),  # written with a first activity event only
        intent=draw(st.none() | st.tuples(times, texts, texts)),
        ids=draw(st.dictionaries(nodes, times, max_size=2)),
        links=draw(st.dictionaries(st.tuples(texts, texts, texts, texts), times, max_size=1)),
        seq=draw(times),
        seen_us=draw(times),
    )


emitted = st.builds(
    Emitted,
    ints,
    st.booleans(),
    texts,
    st.lists(texts, max_size=3).map(tuple),
    texts,
    st.none() | ints,
    st.none() | texts,
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Filed, texts, st.builds(ContactRecord.with_seq, records(), times), ints),
    st.builds(Renamed, texts, texts),
    st.builds(Expect, texts, texts, ints),
    st.builds(HandOver, texts, texts, st.integers(0, 1024), texts),
    st.builds(
        TakeOver,
        texts,
        st.lists(records(), max_size=3).map(tuple),
        st.lists(st.tuples(texts, emitted), max_size=3).map(tuple),
        texts,
        st.frozensets(texts, max_size=3),
        st.lists(st.tuples(texts, ints), max_size=3).map(tuple),
    ),
    st.builds(Tick, ints),
    st.builds(Forget, st.frozensets(texts, max_size=3), st.frozensets(texts, max_size=3)),
)


@settings(max_examples=40)
@given(stamps, messages)
def test_any_message_reads_back_as_sent(stamp: Stamp | None, message: Message) -> None:
    assert_reads_back(stamp, message)


@settings(max_examples=40)
@given(st.lists(st.tuples(stamps, messages), max_size=12), st.integers(1, 4_000))
def test_packed_messages_read_back_in_order_each_pack_under_its_limit(
    sent: list[tuple[Stamp | None, Message]], limit: int
) -> None:
    frames = [encode_message(stamp, message) for stamp, message in sent]
    values = packs(frames, limit)
    read = [frame for value in values for frame in frames_of(value)]
    assert read == frames  # no message's JSON holds a newline, whatever its text
    # a pack over the limit holds one frame (larger than the limit alone)
    assert all(len(v) <= limit or len(frames_of(v)) == 1 for v in values)
    assert [decode_message(frame) for frame in read] == sent


@pytest.mark.parametrize(
    "value",
    [
        b"garbage",
        b"",
        b"[]",
        b'{"v":2,"t":"t","s":null,"a":1}',  # another version
        b'{"v":true,"t":"t","s":null,"a":1}',
        b'{"v":1,"t":"?","s":null,"a":1}',  # unknown type
        b'{"v":1,"t":["t"],"s":null,"a":1}',
        b'{"v":1,"t":"t","s":null}',  # a field missing
        b'{"v":1,"t":"t","s":null,"a":"1"}',  # of the wrong type
        b'{"v":1,"t":"t","s":[1],"a":1}',  # a stamp of one number
        b'{"v":1,"t":"n","s":null,"ab":"x","sv":7}',
        b'{"v":1,"t":"f","s":[1,0],"c":"x","a":1,"q":0,"r":{"v":9,"c":"c1"}}',  # a record of another version
        b'{"v":1,"t":"f","s":[1,0],"c":"x","a":1,"q":0,"r":{"v":1,"c":"c1"',  # cut short
        b'{"v":1,"t":"k","s":null,"c":"x","ref":"1","ps":[],"tm":[],"em":[["j",{}]],"r":[]}',
    ],
)
def test_an_unreadable_message_raises_wire_error_without_its_value(value: bytes) -> None:
    with pytest.raises(WireError) as raised:
        decode_message(value)
    assert value.decode(errors="replace") not in str(raised.value) or not value


def test_a_wire_error_does_not_repeat_what_it_read() -> None:
    secret = b"+15550100999"
    record = b'{"v":1,"t":"f","s":null,"c":"x","a":1,"q":0,"r":{"v":"' + secret + b'"}}'
    for value in (secret, b'{"v":1,"t":"t","s":null,"a":"' + secret + b'"}', b'["' + secret + b'"]', record):
        with pytest.raises(WireError) as raised:
            decode_message(value)
        assert secret.decode() not in str(raised.value)
    for read in (customer_entry, contact_entry, filed_entry, meta_entry, resolver_offset_entry):
        with pytest.raises(WireError) as raised:
            read(b'["' + secret + b'", 1, 2]')
        assert secret.decode() not in str(raised.value)


# ----------------------------------------------------------------------------------- state entries

customers = st.builds(
    CustomerEntry,
    st.none() | st.integers(0, 1024),
    times,
    st.lists(st.tuples(texts, texts, texts, texts), max_size=3).map(tuple),
)
contacts = st.builds(ContactEntry, times, st.none() | nodes)
filed = st.builds(FiledContact, texts, records().map(ContactRecord.to_json))
json_values = st.recursive(
    st.none() | st.booleans() | ints | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
metas = st.dictionaries(texts, json_values, max_size=4)


@settings(max_examples=30)
@given(customers, contacts, filed, metas, times, times, times)
def test_any_state_entry_reads_back_as_written(
    customer: CustomerEntry,
    contact: ContactEntry,
    filed_contact: FiledContact,
    meta: dict[str, Any],
    a: int,
    b: int,
    c: int,
) -> None:
    assert customer_entry(customer_value(customer)) == customer
    assert contact_entry(contact_value(contact)) == contact
    value = filed_value(filed_contact)
    assert filed_entry(value) == filed_contact
    assert filed_contact.record in value  # spliced, and sliced out again
    assert meta_entry(meta_value(a, b, meta)) == (a, b, meta)
    assert resolver_offset_entry(resolver_offset_value(a, b, c)) == (a, b, c)


@pytest.mark.parametrize(
    ("read", "value"),
    [
        (customer_entry, b"[1,2]"),
        (customer_entry, b'[null,1,[["a","b","c"]]]'),
        (customer_entry, b"{}"),
        (contact_entry, b'[1,["phone"]]'),
        (contact_entry, b'["1",null]'),
        (filed_entry, b'["c1"]'),
        (filed_entry, b'["c1",{"v":1}'),
        (filed_entry, b'["c1,{"v":1}]'),
        (filed_entry, b'{"c":"c1"}'),
        (meta_entry, b'{"o":1,"b":2,"m":[]}'),
        (meta_entry, b'{"o":1,"m":{}}'),
        (resolver_offset_entry, b"[1,2]"),
        (resolver_offset_entry, b"1 2 3"),
    ],
)
def test_an_unreadable_state_entry_raises_wire_error(read: Callable[[bytes], object], value: bytes) -> None:
    with pytest.raises(WireError):
        read(value)


# ----------------------------------------------------------------------------------------- journals

resolver_changes = st.builds(
    ResolverChanges,
    st.lists(st.tuples(texts, st.none() | customers), max_size=5),
    st.lists(st.tuples(nodes, st.none() | st.lists(nodes, max_size=3)), max_size=5),
    st.lists(st.tuples(texts, st.none() | contacts), max_size=5),
    times,
    times,
)
builder_changes = st.builds(
    BuilderChanges,
    st.lists(st.tuples(texts, st.none() | filed), max_size=5),
    st.lists(st.tuples(texts, st.none() | emitted), max_size=5),
    metas,
)


@settings(max_examples=20)
@given(resolver_changes, builder_changes, times, times, st.integers(200, 3000), st.data())
def test_any_journal_reads_back_whole_and_never_in_part(
    resolver: ResolverChanges, builder: BuilderChanges, offset: int, base: int, limit: int, data: st.DataObject
) -> None:
    for chunks, read, want in (
        (resolver_journal(offset, resolver, limit), read_resolver_journal, (offset, resolver)),
        (builder_journal(offset, base, builder, limit), read_builder_journal, (offset, base, builder)),
    ):
        assert_chunked(chunks, limit)
        assert read(chunks) == want
        assert read([*chunks, b"left over from an older journal"]) == want
        cut = data.draw(st.integers(0, len(chunks) - 1))
        assert read(chunks[:cut]) is None
        assert read(chunks[:cut] + chunks[cut + 1 :]) is None


def test_a_journal_cut_short_mixed_or_garbled_is_not_read(streams: dict[str, Stream]) -> None:
    records = [record for batch in streams["fragmented"].messages[:6] for record in batch]
    changes = BuilderChanges(
        [(r.contact_id, FiledContact("email:ann@example.com", r.to_json())) for r in records] + [("c-gone", None)],
        [("j-c1", Emitted(3, False, "email:ann@example.com", ("c1", "c2"), "d1", 5, "billing")), ("j-c9", None)],
        {"as_of": 5, "mark": [3, 1]},
    )
    chunks = builder_journal(10, BASE, changes, limit=2000)
    later = builder_journal(11, BASE, changes, limit=2000)  # the next checkpoint's
    # the checkpoint at 10 written again (after a crash before its offset) with other content
    again = builder_journal(10, BASE, dataclasses.replace(changes, meta={"as_of": 6, "mark": [3, 1]}), limit=2000)
    assert len(chunks) == len(again) > 3
    assert read_builder_journal(chunks) == (10, BASE, changes)
    assert read_builder_journal([*chunks, later[-1]]) == (10, BASE, changes)  # left over from a longer one
    broken = {
        "cut short": chunks[:-1],
        "without its first chunk": chunks[1:],
        "without a middle chunk": [chunks[0], *chunks[2:]],
        "none": [],
        "a chunk of the next checkpoint": [*chunks[:-1], later[-1]],
        "the next checkpoint's, cut short": [*later[:-1], chunks[-1]],
        "a chunk of the same offset written again": [*chunks[:2], again[2], *chunks[3:]],
        "garbage": [b"garbage", *chunks[1:]],
        "an empty chunk": [*chunks[:-1], b""],
        "a truncated chunk": [*chunks[:-1], chunks[-1][:-5]],
    }
    for what, values in broken.items():
        assert read_builder_journal(values) is None, what
    assert read_resolver_journal(chunks) is None  # a builder's journal is no resolver's

    resolver = ResolverChanges(
        [(f"cust:{n}", CustomerEntry(n % 4, n, (("phone", f"+1{n}", "email", f"{n}@x"),))) for n in range(200)],
        [(("phone", f"+1{n}"), [("phone", f"+1{n}")] if n % 3 else None) for n in range(200)],
        [(f"c{n}", ContactEntry(n, None if n % 5 else ("phone", f"+1{n}"))) for n in range(200)],
        1_000,
        7,
    )
    chunks = resolver_journal(4, resolver, limit=3000)
    assert len(chunks) > 3 and read_resolver_journal(chunks) == (4, resolver)
    for values in (chunks[:-1], [*chunks[:-1], resolver_journal(5, resolver, limit=3000)[-1]], [b"{}"], [b"\xff"]):
        assert read_resolver_journal(values) is None
    assert read_builder_journal(chunks) is None


def test_a_large_checkpoint_is_cut_under_the_limit(streams: dict[str, Stream]) -> None:
    """About 3 MB of changes in chunks of at most 900,000 bytes; an entry larger than that alone."""
    lines = [record.to_json() for batch in streams["simulated"].messages for record in batch]
    contacts: list[tuple[str, FiledContact | None]] = [
        (f"c{n}", FiledContact(f"cust:{n % 997}", lines[n % len(lines)]) if n % 50 else None) for n in range(5_000)
    ]
    huge = ContactRecord("c-huge", transfers={f"transfer-{n:07d}" for n in range(50_000)}).to_json()
    assert len(huge) > 900_000
    contacts.insert(2_500, ("c-huge", FiledContact("cust:1", huge)))
    changes = BuilderChanges(contacts, [(f"j-c{n}", None) for n in range(2_000)], {"as_of": 1, "mark": [9, 0]})
    chunks = builder_journal(5, BASE, changes)
    (alone,) = [chunk for chunk in chunks if huge in chunk]
    assert alone.count(b"\n") == 1
    assert all(len(chunk) <= 900_000 for chunk in chunks if chunk is not alone)
    assert sum(map(len, chunks)) > 2_500_000 and len(chunks) >= 4
    assert read_builder_journal(chunks) == (5, BASE, changes)

    links = (
        ("phone", "+15550000000", "email", "someone@example.com"),
        ("email", "someone@example.com", "web_cookie", "ck-" + "0" * 40),
    )
    entries: list[tuple[str, CustomerEntry | None]] = [
        (f"cust:{n}", CustomerEntry(n % 4, 10**12 + n, links)) for n in range(6_000)
    ]
    resolver = ResolverChanges(entries, [], [(f"c{n}", None) for n in range(1_000)], 10**12, 0)
    chunks = resolver_journal(5, resolver)
    assert len(chunks) >= 2 and all(len(chunk) <= 900_000 for chunk in chunks)
    assert read_resolver_journal(chunks) == (5, resolver)

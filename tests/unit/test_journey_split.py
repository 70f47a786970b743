"""The journey stage split into a resolver and builders (`pipeline.journeys.split`) gives the
journeys one `Stitcher` gives, whatever order the builders take their queues in: the oracle is the
single stage's last version of every journey (itself compared with the simulator's truth by the
journey tests), the split's is the highest version each journey id reached on any builder."""

from __future__ import annotations

import collections
import copy
import dataclasses
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.events.models import (
    Channel,
    ContactStarted,
    CustomerIdentifiers,
    Ended,
    EventBase,
    Identifier,
    IdentifierKind,
    IdentityLink,
    Resolved,
)
from pipeline.journeys.model import DAY, Journey, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord, records_of
from pipeline.journeys.split import (
    Builder,
    Expect,
    Filed,
    Forget,
    Message,
    Resolver,
    Routed,
    TakeOver,
    Tick,
    check_windows,
)
from pipeline.journeys.stitcher import Stitcher
from pipeline.journeys.store import JourneyStore
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker import journeys as stage

HOUR = 3_600_000


def forwarded(hours: float, seed: int, customers: int, batch: int) -> list[list[ContactRecord]]:
    """The contact records the analytics stage forwards, message by message, stamped with their
    arrival order as the journey stage stamps them."""
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=seed, start_ms=start, duration_ms=int(hours * HOUR), rate=4000, customers=customers)
    events = [event for _, event in Simulation(config).run()]
    messages: list[list[ContactRecord]] = []
    for at in range(0, len(events), batch):
        for _, value, _ in stage.forward_messages(events[at : at + batch]):
            records, rejected = stage.read_records(value)
            assert not rejected
            offset = len(messages)
            messages.append([r.with_seq(stage.arrival_seq(offset, i)) for i, r in enumerate(records)])
    return messages


def fragmented(seed: int, customers: int, contacts: int) -> list[list[ContactRecord]]:
    """Contacts that mostly carry one identifier of their customer (a phone, an e-mail or a
    cookie), some two, some an identity link: customers are first seen as several and merged
    later, again and again. Events a little out of order, cut into batches of random size (a
    contact's events often span batches), one record per contact per batch."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 8, tzinfo=UTC)
    kinds = ["phone", "email", "web_cookie"]

    def identifier(customer: int, kind: str) -> str:
        return {"phone": f"+1555{customer:07d}", "email": f"c{customer}@example.com"}.get(kind, f"ck-{customer}")

    timed: list[tuple[datetime, EventBase]] = []
    at = start
    for n in range(contacts):
        customer = rng.randrange(customers)
        carried = rng.sample(kinds, 2) if rng.random() < 0.15 else [rng.choice(kinds)]
        who = CustomerIdentifiers(**{kind: identifier(customer, kind) for kind in carried})
        at += timedelta(seconds=rng.randint(5, 400))
        channel = rng.choice([Channel.CHAT, Channel.EMAIL, Channel.VOICE, Channel.WEB])
        common = {"channel": channel, "contact_id": f"c{n}", "customer": who}
        intent = rng.choice(["billing", "technical", "sales"])
        timed.append((at, ContactStarted(event_id=f"c{n}-s", occurred_at=at, intent=intent, **common)))
        end = at + timedelta(minutes=rng.randint(1, 30))
        if rng.random() < 0.6:
            timed.append((end, Resolved(event_id=f"c{n}-r", occurred_at=end, **common)))
        timed.append((end, Ended(event_id=f"c{n}-e", occurred_at=end, **common)))
        if rng.random() < 0.08:
            left, right = rng.sample(kinds, 2)
            link = IdentityLink(
                event_id=f"c{n}-l", occurred_at=end,
                left=Identifier(kind=IdentifierKind(left), value=identifier(customer, left)),
                right=Identifier(kind=IdentifierKind(right), value=identifier(customer, right)),
                **common,
            )  # fmt: skip
            timed.append((end, link))
    timed.sort(key=lambda pair: pair[0] + timedelta(seconds=rng.randint(0, 120)))  # a little late
    events = [event for _, event in timed]
    messages: list[list[ContactRecord]] = []
    at_event = 0
    while at_event < len(events):
        size = rng.randint(1, 120)
        records = records_of(events[at_event : at_event + size])
        offset = len(messages)
        messages.append([r.with_seq(stage.arrival_seq(offset, i)) for i, r in enumerate(records)])
        at_event += size
    return messages


def last_versions(versions: list[JourneyVersion]) -> dict[str, JourneyVersion]:
    """Every journey id's highest version, which no other write of that id may share (a tie at
    the top would leave ClickHouse's `FINAL` to pick between two contents)."""
    out: dict[str, JourneyVersion] = {}
    tied: set[str] = set()
    for version in versions:
        journey_id = version.journey.journey_id
        known = out.get(journey_id)
        if known is None or version.version > known.version:
            out[journey_id] = version
            tied.discard(journey_id)
        elif version.version == known.version:
            tied.add(journey_id)
    assert not tied, sorted(tied)[:5]
    return out


def live(versions: dict[str, JourneyVersion]) -> dict[str, Journey]:
    return {jid: v.journey for jid, v in versions.items() if not v.deleted}


@dataclasses.dataclass(frozen=True)
class Retention:
    keep_ms: int
    identity_ms: int


NONE = Retention(keep_ms=DAY, identity_ms=30 * DAY)  # the resolver's defaults; builders keep everything
Write = tuple[str, Any, Any]  # a state write: table, key, value (None: delete)


class KeyedTables:
    """A stage's state tables, one dict attribute each, as a checkpoint writes them."""

    def write(self, table: str, key: Any, value: Any) -> None:
        held: dict[Any, Any] = getattr(self, table)
        if value is None:
            held.pop(key, None)
        else:
            held[key] = value


@dataclasses.dataclass(frozen=True)
class Erasure:
    """Forget a person after message `at` (their contacts and identifiers, as `touchline forget`
    finds them)."""

    at: int
    contacts: frozenset[str]
    identifiers: frozenset[tuple[str, str]]


def single_stage(
    messages: list[list[ContactRecord]],
    config: JourneyConfig,
    retention: Retention | None = None,
    erasure: Erasure | None = None,
) -> dict[str, JourneyVersion]:
    if retention is None:
        stitcher = Stitcher(journeys=config)
    else:
        stitcher = Stitcher(journeys=config, keep_ms=retention.keep_ms, identity_retention_ms=retention.identity_ms)
    out: list[JourneyVersion] = []
    for at, records in enumerate(copy.deepcopy(messages)):  # records are merged into, and stripped
        for record in records:
            stitcher.apply(record)
        out += stitcher.changes(stitcher.as_of_ms or None)
        if retention is not None:
            while stitcher.evict_due(stitcher.as_of_ms).more:
                pass
        if erasure is not None and erasure.at == at:
            stitcher.forget(erasure.contacts, erasure.identifiers)
    out += stitcher.changes(stitcher.as_of_ms or None)
    return last_versions(out)


@dataclasses.dataclass
class Split:
    """A resolver and its builders after a stream."""

    resolver: Resolver
    builders: list[Builder]
    versions: dict[str, JourneyVersion]
    moved: int


def split_stage(
    messages: list[list[ContactRecord]],
    config: JourneyConfig,
    builders: int,
    seed: int,
    run: int = 400,
    retention: Retention | None = None,
    erasure: Erasure | None = None,
    twice: bool = False,
) -> Split:
    """The records through a resolver and `builders` builders, which take their queues in a random
    interleaving (each a random run of up to `run` messages, then its changes and retention:
    short runs let builders fall behind, so hand-overs arrive after newer records of the same
    contacts); how many books moved. `twice`: every hand-over is delivered again, at once or
    later (as when its sender crashed before saving its state)."""
    rng = random.Random(seed)
    if retention is None:
        resolver = Resolver(builders)
        parts = [Builder(i, config) for i in range(builders)]
    else:
        resolver = Resolver(builders, keep_ms=retention.keep_ms, identity_retention_ms=retention.identity_ms)
        parts = [Builder(i, config, keep_ms=retention.keep_ms) for i in range(builders)]
    queues: list[deque[Message]] = [deque() for _ in range(builders)]
    out: list[JourneyVersion] = []
    moved = 0

    again: list[tuple[int, Routed]] = []  # (work calls to wait, hand-over)

    def send(routed: list[Routed]) -> None:
        for at, message in routed:
            queues[at].append(message)
            if twice and isinstance(message, TakeOver):
                again.append((rng.choice([0, 1, 5, 50, 500]), (at, message)))

    def work(limit: int) -> None:
        nonlocal moved
        for wait, (at, message) in again:
            if not wait:
                queues[at].append(message)
        again[:] = [(wait - 1, routed) for wait, routed in again if wait]
        waiting = [i for i, q in enumerate(queues) if q]
        if not waiting:
            return
        at = rng.choice(waiting)
        for _ in range(rng.randint(1, limit)):
            if not queues[at]:
                break
            message = queues[at].popleft()
            sent = parts[at].handle(message)
            moved += sum(isinstance(m, TakeOver) for _, m in sent)
            send(sent)
            if retention is not None and isinstance(message, Tick):
                out.extend(parts[at].tick())
        out.extend(parts[at].changes())

    for at, records in enumerate(copy.deepcopy(messages)):
        for record in records:
            send(resolver.apply(record))
        send(resolver.tick())
        if retention is not None:
            while resolver.evict_due():
                pass
        if erasure is not None and erasure.at == at:
            send(resolver.forget(erasure.contacts, erasure.identifiers))
            while any(queues):  # hand-overs under way for the person included
                work(run)
            assert_erased(resolver, parts, erasure)
        for _ in range(rng.randint(0, 3)):
            work(run)
    while any(queues) or again:
        work(run)
    for part in parts:
        out += part.tick() if retention is not None else part.changes()
    return Split(resolver, parts, last_versions(out), moved)


@pytest.fixture(scope="module")
def simulated() -> list[list[ContactRecord]]:
    return forwarded(hours=12, seed=11, customers=600, batch=400)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_builders_give_the_journeys_of_one_stage_when_customers_merge_across_them(seed: int) -> None:
    messages = fragmented(seed, customers=150, contacts=2500)  # about 6 days
    # windows of hours, so journeys close, repeat and turn dormant within the stream
    config = JourneyConfig(repeat_window_ms=8 * HOUR, dormancy_ms=4 * HOUR)
    expected = single_stage(messages, config)
    split = split_stage(messages, config, builders=4, seed=seed, run=4)
    got, moved = split.versions, split.moved
    assert moved > 50  # books really changed builder, some more than once
    assert len(live(expected)) > 100
    assert live(got) == live(expected)


def test_builders_give_the_journeys_of_one_stage_on_a_simulated_day(simulated: list[list[ContactRecord]]) -> None:
    config = JourneyConfig()
    expected = single_stage(simulated, config)
    got = split_stage(simulated, config, builders=4, seed=7).versions
    assert len(live(expected)) > 1000
    assert live(got) == live(expected)


def test_a_resolver_reading_the_identity_headers_ties_and_routes_as_one_reading_the_records() -> None:
    """The resolver reads each forwarded message's identity header, not its records: over a
    simulated half day with identity links and merges, every record gets the customer, builder and
    merge messages it gets when the resolver reads the records (`Resolver.apply`)."""
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=5, start_ms=start, duration_ms=12 * HOUR, rate=4000, customers=800)
    events = [event for _, event in Simulation(config).run()]
    from_records, from_headers = Resolver(4), Resolver(4)
    merges = links = 0
    for at in range(0, len(events), 300):
        for _, value, headers in stage.forward_messages(events[at : at + 300]):
            records, _ = stage.read_records(value)
            identities = stage.read_identities(headers.items(), len(records))
            assert identities is not None
            for record, (contact_id, seen_us, ids, tied) in zip(records, identities, strict=True):
                routed = from_records.apply(record)
                *sent, (builder, filed) = routed
                assert isinstance(filed, Filed)
                assert from_headers.tie(contact_id, ids, tied, seen_us) == (sent, filed.customer, builder)
                merges += len(sent)
                links += len(tied)
    assert links > 50 and merges > 0
    assert from_headers.owner == from_records.owner and from_headers.seen == from_records.seen


def test_one_builder_is_one_stage(simulated: list[list[ContactRecord]]) -> None:
    config = JourneyConfig()
    split = split_stage(simulated, config, builders=1, seed=0)
    assert split.moved == 0
    assert live(split.versions) == live(single_stage(simulated, config))


def _store_with(customer: str, *contacts: str) -> JourneyStore:
    store = JourneyStore()
    start = datetime(2026, 3, 2, 9, tzinfo=UTC)
    for n, contact_id in enumerate(contacts):
        at = start + timedelta(minutes=n)
        event = ContactStarted(
            event_id=f"{contact_id}-s", occurred_at=at, channel=Channel.CHAT, contact_id=contact_id,
            customer=CustomerIdentifiers(email="ann@example.com"), intent="billing",
        )  # fmt: skip
        (record,) = records_of([event])
        store.file(record, customer, was=None)
    return store


def test_a_journey_written_by_two_owners_is_written_again_above_both() -> None:
    """The new owner wrote `j-c1` (from a newer record that reached it first) at the same version as
    the old owner, or at a higher or a lower one: after the take-over it writes it again above
    both, even when the content it holds did not change."""
    for handed_version in (-1, 0, 1):
        old_owner, new_owner = _store_with("email:ann@example.com", "c1"), _store_with("cust:A", "c1")
        (old,) = old_owner.changes(1_000)
        (mine,) = new_owner.changes(1_000)
        assert old.version == mine.version  # both from their event time: a tie
        handed = old_owner.hand_over("email:ann@example.com", {"c1"})
        (_, entry) = handed[0]
        entry = dataclasses.replace(entry, version=entry.version + handed_version)
        new_owner.take_over("cust:A", [("j-c1", entry)])
        (again,) = new_owner.changes(1_000)
        assert again.journey.journey_id == "j-c1" and not again.deleted
        assert again.version > max(mine.version, entry.version)


def test_a_hand_over_takes_the_retracted_journeys_of_its_contacts() -> None:
    """A journey retracted by the old owner (its contacts regrouped) keeps its last version there:
    the hand-over takes it along, so a new owner that brings the journey back continues above it."""
    store = _store_with("email:ann@example.com", "c2")
    store.changes(1_000)
    # an earlier contact joins: the journey is `j-c1` now, `j-c2` is retracted
    (earlier,) = records_of(
        [
            ContactStarted(
                event_id="c1-s", occurred_at=datetime(2026, 3, 2, 8, tzinfo=UTC), channel=Channel.CHAT,
                contact_id="c1", customer=CustomerIdentifiers(email="ann@example.com"), intent="billing",
            )
        ]
    )  # fmt: skip
    store.file(earlier, "email:ann@example.com", was=None)
    versions = {v.journey.journey_id: v for v in store.changes(1_000)}
    assert versions["j-c2"].deleted and not versions["j-c1"].deleted
    handed = dict(store.hand_over("email:ann@example.com", {"c1", "c2"}))
    assert handed["j-c2"].deleted and handed["j-c2"].version == versions["j-c2"].version
    assert "j-c1" in handed and store.emitted("j-c2") is None


WINDOWS = JourneyConfig(repeat_window_ms=8 * HOUR, dormancy_ms=4 * HOUR)
RETENTION = Retention(keep_ms=2 * HOUR, identity_ms=12 * HOUR)


def assert_erased(resolver: Resolver, parts: list[Builder], erasure: Erasure) -> None:
    """Nothing of the person is left in either half."""
    keys = {f"{kind}:{value}" for kind, value in erasure.identifiers}
    for kind, value in erasure.identifiers:
        assert resolver.graph.customer_of_value(kind, value) is None
    assert not keys & set(resolver.owner) and not erasure.contacts & set(resolver.seen)
    for part in parts:
        assert not erasure.contacts & set(part.records)
        assert not keys & (set(part.contacts_of) | set(part.store.books) | set(part.pending) | set(part.held))
        assert not keys & {entry.customer for entry in part.store._emitted.values()}


def person(value: str) -> int:
    """The customer number an identifier of `fragmented` carries."""
    return int(value.removeprefix("+1555").removeprefix("ck-").removeprefix("c").split("@")[0])


def person_of_contact(record: ContactRecord) -> int:
    (_, value), *_ = record.ids
    return person(value)


def person_of(journey: Journey) -> Journey:
    """A journey of `fragmented` with its customer key replaced by the person it names."""
    return dataclasses.replace(journey, customer=str(person(journey.customer.partition(":")[2])))


def assert_resolver_bounded(resolver: Resolver, retention: Retention) -> None:
    """The resolver's half of `assert_bounded`."""
    as_of = resolver.as_of_ms
    for contact_id, newest in resolver.seen.items():
        if newest + 2 * retention.keep_ms < as_of:
            component = resolver.graph.component_of_contact(contact_id)
            assert component is not None
            last = component.newest_ms if component.contacts == 1 else newest
            assert last + retention.identity_ms >= as_of


def assert_bounded(split: Split, retention: Retention) -> None:
    """What retention leaves after a stream (with every due entry processed): the resolver keeps a
    contact node up to twice `keep` after the contact's newest event; as its customer's last node,
    within identity retention of the customer's newest event; one that was the last when another
    joined, within identity retention of its own. A builder's record is in a journey still open or
    had an event within `keep`."""
    assert_resolver_bounded(split.resolver, retention)
    as_of = split.resolver.as_of_ms
    for part in split.builders:
        assert part.as_of_ms == as_of
        for contact_id, record in part.records.items():
            customer = part.customer_of[contact_id]
            span = part.store.span_of(customer, contact_id) if record.active else None
            if span is None:
                assert record.seen_us // 1000 + retention.keep_ms >= as_of
            else:
                assert part.store.close_time(span, retention.keep_ms) >= as_of


@pytest.mark.parametrize("seed", [1, 2])
def test_builders_and_resolver_forget_what_one_stage_forgets(seed: int) -> None:
    """With retention windows of hours over ~6 days, most customers are forgotten between their
    contacts (identity retention 12 h, a contact a customer every ~22 h on average), others come
    back within the windows: the journeys are still the single stage's, and each half holds only
    what its rules keep."""
    messages = fragmented(seed, customers=400, contacts=2500)
    check_windows(WINDOWS, RETENTION.keep_ms, RETENTION.identity_ms)
    expected = single_stage(messages, WINDOWS, RETENTION)
    split = split_stage(messages, WINDOWS, builders=4, seed=seed, run=4, retention=RETENTION, twice=True)
    assert split.moved > 8  # fewer than without retention: customers are forgotten before they merge
    got, want = live(split.versions), live(expected)
    assert len(want) > 2000
    # a journey closed before a later merge renamed its customer keeps the key it had when it was
    # evicted, and a builder evicts later while a hand-over to it is under way: the same person
    assert {j: person_of(v) for j, v in got.items()} == {j: person_of(v) for j, v in want.items()}
    renamed = [j for j in want if got[j].customer != want[j].customer]
    assert len(renamed) < len(want) / 200, renamed
    assert_bounded(split, RETENTION)
    contacts = sum(len(records) for records in messages)
    held = sum(len(part.records) for part in split.builders)
    assert len(split.resolver.seen) < contacts / 4 and held < contacts / 4
    assert len(split.resolver.owner) < 400


def test_builders_far_behind_evict_what_one_stage_evicted_before_a_merge() -> None:
    """Builders taking 1-4 messages a turn fall days of event time behind, so a hand-over to a
    customer arrives long after its merge. What one stage evicted from the customer's book before
    the merge must not join the book's journeys when the hand-over arrives: a builder evicts,
    while hand-overs are under way, what was due by the earliest one's merge (`Expect` time).
    Holding every contact instead, this stream gave two journeys other than one stage's (a
    resolved journey evicted before the merge absorbed into an earlier one). Not every stream is
    exact yet: 7 of 24 (12 seeds x two window pairs, 150 customers) still differ in 1-2 journeys,
    against 9 before (README, scale-out)."""
    messages = fragmented(2, customers=150, contacts=2500)
    config = JourneyConfig(repeat_window_ms=4 * HOUR, dormancy_ms=8 * HOUR)
    retention = Retention(keep_ms=2 * HOUR, identity_ms=12 * HOUR)
    expected = single_stage(messages, config, retention)
    split = split_stage(messages, config, builders=4, seed=2, run=4, retention=retention)
    assert split.moved > 8
    got, want = live(split.versions), live(expected)
    assert {j: person_of(v) for j, v in got.items()} == {j: person_of(v) for j, v in want.items()}


def test_a_quiet_spell_longer_than_identity_retention_empties_both_halves() -> None:
    messages = fragmented(3, customers=150, contacts=800)
    last = max(r.seen_us for records in messages for r in records)
    (late,) = records_of(
        [
            ContactStarted(
                event_id="late-s", occurred_at=datetime.fromtimestamp(last / 1e6, UTC) + timedelta(days=2),
                channel=Channel.CHAT, contact_id="late", customer=CustomerIdentifiers(email="new@example.com"),
                intent="billing",
            )
        ]
    )  # fmt: skip
    split = split_stage([*messages, [late.with_seq(10**9)]], WINDOWS, builders=4, seed=3, retention=RETENTION)
    resolver = split.resolver
    assert list(resolver.seen) == ["late"] and list(resolver.owner) == ["email:new@example.com"]
    assert len(resolver.graph) == 2  # the contact and its e-mail
    for part in split.builders:
        assert set(part.records) <= {"late"} and set(part.contacts_of) <= {"email:new@example.com"}
        assert not part.moved and not part.pending and not part.discard and not part.held
        assert set(part.store.books) <= {"email:new@example.com"}
        assert {e.customer for e in part.store._emitted.values()} <= {"email:new@example.com"}


def test_windows_the_resolver_cannot_keep_are_refused() -> None:
    with pytest.raises(ValueError, match="identity retention"):
        check_windows(WINDOWS, RETENTION.keep_ms, 9 * HOUR)
    check_windows(WINDOWS, RETENTION.keep_ms, 10 * HOUR)


@pytest.mark.parametrize("seed", [5, 6])
def test_an_erased_person_is_gone_from_both_halves_and_other_journeys_are_one_stages(seed: int) -> None:
    messages = fragmented(seed, customers=150, contacts=2500)
    at = len(messages) // 2
    seen = [r for records in messages[: at + 1] for r in records]
    person = collections.Counter(person_of_contact(r) for r in seen).most_common(1)[0][0]
    contacts = frozenset(r.contact_id for r in seen if person_of_contact(r) == person)
    identifiers = frozenset(
        {("phone", f"+1555{person:07d}"), ("email", f"c{person}@example.com"), ("web_cookie", f"ck-{person}")}
    )
    erasure = Erasure(at, contacts, identifiers)
    expected = single_stage(messages, WINDOWS, RETENTION, erasure)
    split = split_stage(messages, WINDOWS, builders=4, seed=seed, run=4, retention=RETENTION, erasure=erasure)

    def kept(versions: dict[str, JourneyVersion]) -> dict[str, object]:
        return {j: person_of(v) for j, v in live(versions).items() if not contacts & set(v.contact_ids)}

    assert len(contacts) > 10
    assert kept(split.versions) == kept(expected)


def test_a_hand_over_to_an_erased_customer_is_dropped() -> None:
    (record,) = records_of(
        [
            ContactStarted(
                event_id="c1-s", occurred_at=datetime(2026, 3, 2, 9, tzinfo=UTC), channel=Channel.CHAT,
                contact_id="c1", customer=CustomerIdentifiers(email="ann@example.com"), intent="billing",
            )
        ]
    )  # fmt: skip
    part = Builder(0, WINDOWS, keep_ms=RETENTION.keep_ms)
    part.handle(Expect("cust:A", "1"))
    part.handle(Expect("cust:A", "2"))
    part.handle(Forget(frozenset({"cust:A"}), frozenset()))
    assert part.handle(TakeOver("cust:A", (record,), (), "1")) == []
    assert part.discard == {"cust:A": {"2"}}
    part.handle(TakeOver("cust:A", (record,), (), "2"))
    assert not part.records and not part.store.books and not part.discard and not part.pending

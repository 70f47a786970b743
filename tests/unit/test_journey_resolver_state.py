"""The split journey stage's resolver keeps its state by key (`Resolver.state_changes`,
`Resolver.from_state`): killed anywhere in a round (while its messages go out, or between any two of
its state writes), restored from what was written and fed again from the offset it stored, it
gives the builders the journeys one `Stitcher` gives (the oracle, itself compared with the
simulator's truth by the journey tests) and ends with the builder assignments of a resolver that
never stopped."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import deque
from typing import Any

import pytest

from pipeline.journeys.model import JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord
from pipeline.journeys.split import (
    Builder,
    ContactEntry,
    CustomerEntry,
    HandOver,
    Message,
    Resolver,
    ResolverChanges,
    Stamp,
    Tick,
    stamped,
)
from tests.unit.test_journey_split import (
    HOUR,
    NONE,
    KeyedTables,
    Retention,
    Write,
    fragmented,
    last_versions,
    live,
    single_stage,
)


def keyed_writes(changes: ResolverChanges) -> list[Write]:
    out: list[Write] = [("customers", key, entry) for key, entry in changes.customers]
    out += [("components", key, members) for key, members in changes.components]
    out += [("contacts", key, entry) for key, entry in changes.contacts]
    return out


def writes_of(changes: ResolverChanges, offset: int) -> list[Write]:
    """The state writes of a round, in the order the shell makes them: the journal, the offset,
    the keyed entries (`ResolverChanges`)."""
    out: list[Write] = [("journal", "journal", (offset, changes))]
    out.append(("offset", "offset", (offset, changes.as_of_ms, changes.hand_overs)))
    return out + keyed_writes(changes)


@dataclasses.dataclass
class Tables(KeyedTables):
    customers: dict[str, CustomerEntry] = dataclasses.field(default_factory=dict)
    components: dict[Any, list[Any]] = dataclasses.field(default_factory=dict)
    contacts: dict[str, ContactEntry] = dataclasses.field(default_factory=dict)
    offset: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    journal: dict[str, tuple[int, ResolverChanges]] = dataclasses.field(default_factory=dict)

    def restore(self, builders: int, retention: Retention | None) -> tuple[Resolver, int]:
        retention = retention or NONE
        offset, as_of, hand_overs = self.offset.get("offset", (0, 0, 0))
        tag, changes = self.journal.get("journal", (-1, None))
        if changes is not None and tag == offset:  # the last checkpoint, whole
            for write in keyed_writes(changes):
                self.write(*write)
        resolver = Resolver.from_state(
            builders,
            keep_ms=retention.keep_ms,
            identity_retention_ms=retention.identity_ms,
            customers=list(self.customers.items()),
            components=list(self.components.values()),
            contacts=list(self.contacts.items()),
            as_of_ms=as_of,
            hand_overs=hand_overs,
        )
        return resolver, offset


def delivered_before_crash(
    routed: list[tuple[int, Stamp | None, Message]], rng: random.Random
) -> list[tuple[int, Stamp | None, Message]]:
    """What a resolver killed while sending a round's messages got out: it sends them in order and
    waits for everything before a `HandOver` to be delivered before sending it (its `Expect` must
    arrive first); after the last such wait, each builder's partition got a prefix of its
    messages."""
    sent = routed[: rng.randint(0, len(routed))]
    barrier = max((i for i, (_, _, m) in enumerate(sent) if isinstance(m, HandOver)), default=-1)
    cut: dict[int, int] = {}
    out = sent[: barrier + 1]
    for at, stamp, message in sent[barrier + 1 :]:
        if at not in cut:
            cut[at] = rng.randint(0, len(sent))
        if cut[at] > 0:
            cut[at] -= 1
            out.append((at, stamp, message))
        else:
            cut[at] = 0
    return out


@dataclasses.dataclass
class Crashed:
    versions: dict[str, JourneyVersion]
    resolver: Resolver
    crashes: int
    mid_state: int  # crashes between two keyed state writes of a round whose messages had all gone out
    mid_send: int  # crashes while a round's messages went out, some of them delivered


def crashing_split(
    messages: list[list[ContactRecord]],
    config: JourneyConfig,
    builders: int,
    seed: int,
    retention: Retention | None,
    crash_rate: float,
) -> Crashed:
    """The records through a resolver that persists its state after each round (1-3 messages) and
    is killed in a fraction `crash_rate` of its rounds, at a random point; builders take their
    queues in a random interleaving and never stop (with `retention` None, they keep everything
    and the resolver has its defaults)."""
    rng = random.Random(seed)
    tables = Tables()
    windows = retention or NONE
    resolver = Resolver(builders, keep_ms=windows.keep_ms, identity_retention_ms=windows.identity_ms)
    parts = [Builder(i, config, keep_ms=windows.keep_ms) for i in range(builders)]
    queues: list[deque[tuple[Stamp | None, Message]]] = [deque() for _ in range(builders)]
    out: list[JourneyVersion] = []
    crashes = mid_state = mid_send = 0

    def send(routed: list[tuple[int, Stamp | None, Message]]) -> None:
        for at, stamp, message in routed:
            queues[at].append((stamp, message))

    def work() -> None:
        waiting = [i for i, q in enumerate(queues) if q]
        if not waiting:
            return
        at = rng.choice(waiting)
        for _ in range(rng.randint(1, 40)):
            if not queues[at]:
                break
            stamp, message = queues[at].popleft()
            send([(to, None, sent) for to, sent in parts[at].receive(stamp, message)])
            if retention is not None and isinstance(message, Tick):
                out.extend(parts[at].tick())
        out.extend(parts[at].changes())

    offset = 0
    while offset < len(messages):
        end = min(len(messages), offset + rng.randint(1, 3))
        routed: list[tuple[int, Stamp | None, Message]] = []
        for at in range(offset, end):  # a message read again is read afresh
            routed += stamped(at, resolver.read(str(at), copy.deepcopy(messages[at])))
        writes = writes_of(resolver.state_changes(), end)
        if rng.random() < crash_rate:
            crashes += 1
            if rng.random() < 0.5:  # while sending: no state written
                delivered = delivered_before_crash(routed, rng)
                mid_send += 0 < len(delivered) < len(routed)
                send(delivered)
            else:  # between two state writes
                send(routed)
                done = rng.randint(0, len(writes) - 1)
                mid_state += done > 2  # the journal and the offset written, some keyed entries too
                for write in writes[:done]:
                    tables.write(*write)
            resolver, offset = tables.restore(builders, retention)
        else:
            send(routed)
            for write in writes:
                tables.write(*write)
            offset = end
        for _ in range(rng.randint(0, 3)):
            work()
    while any(queues):
        work()
    for part in parts:
        out += part.tick() if retention is not None else part.changes()
    return Crashed(last_versions(out), resolver, crashes, mid_state, mid_send)


def uninterrupted(messages: list[list[ContactRecord]], builders: int, retention: Retention) -> Resolver:
    resolver = Resolver(builders, keep_ms=retention.keep_ms, identity_retention_ms=retention.identity_ms)
    for records in copy.deepcopy(messages):
        for record in records:
            resolver.apply(record)
        while resolver.evict_due():
            pass
    return resolver


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_resolver_killed_anywhere_and_restored_gives_the_journeys_of_one_stage(seed: int) -> None:
    messages = fragmented(seed, customers=150, contacts=2500)  # about 6 days, customers merging across builders
    config = JourneyConfig(repeat_window_ms=8 * HOUR, dormancy_ms=4 * HOUR)
    expected = single_stage(messages, config)
    got = crashing_split(messages, config, builders=4, seed=seed, retention=None, crash_rate=0.5)
    # the kills really cut rounds: some between state writes, some while messages went out
    assert got.crashes > 25 and got.mid_state > 10 and got.mid_send > 8
    assert len(live(expected)) > 1500
    assert live(got.versions) == live(expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_resolver_killed_anywhere_and_restored_with_retention_decides_as_one_never_killed(seed: int) -> None:
    """With contact nodes and customers forgotten within the stream, a resolver killed again and
    again ends with the builder of every customer a resolver never killed gives, files every
    contact both hold under the same customer, and holds only what its rules keep. (Its builders'
    journeys are not compared with one stage's here: with retention, builders far behind their
    queues still differ from one stage in some streams without any crash, see
    `test_builders_far_behind_evict_what_one_stage_evicted_before_a_merge` and README, "Customer
    journeys", scale-out.)"""
    messages = fragmented(seed, customers=150, contacts=2500)
    config = JourneyConfig(repeat_window_ms=8 * HOUR, dormancy_ms=4 * HOUR)
    retention = Retention(keep_ms=2 * HOUR, identity_ms=16 * HOUR)
    got = crashing_split(messages, config, builders=4, seed=seed, retention=retention, crash_rate=0.5)
    assert got.crashes > 25 and got.mid_state > 10 and got.mid_send > 8
    steady = uninterrupted(messages, 4, retention)
    assert got.resolver.owner == steady.owner
    assert len(steady.seen) < sum(map(len, messages)) / 4  # contact nodes and customers were forgotten
    both = set(got.resolver.seen) & set(steady.seen)
    assert len(both) > len(steady.seen) / 2
    for contact_id in both:
        assert got.resolver.graph.customer_of_contact(contact_id) == steady.graph.customer_of_contact(contact_id)
    as_of = got.resolver.as_of_ms
    for contact_id, newest in got.resolver.seen.items():  # nodes held past `keep` only as their customer's
        component = got.resolver.graph.component_of_contact(contact_id)
        assert component is not None
        assert newest + 2 * retention.keep_ms >= as_of or component.newest_ms + retention.identity_ms >= as_of


def test_a_restored_resolver_holds_only_what_was_written() -> None:
    """An entry that does not fit the others (never written so: checkpoints land whole) is left out
    at a restore and deleted at the next checkpoint: a contact whose component entry is gone."""
    resolver = Resolver(2)
    resolver.tie("c1", [("phone", "+15550000001")], [], 1_000_000)
    changes = resolver.state_changes()
    tables = Tables()
    for write in writes_of(changes, 1):
        tables.write(*write)
    assert set(tables.contacts) == {"c1"} and tables.components and tables.customers
    tables.components.clear()
    tables.journal.clear()
    restored, offset = tables.restore(2, Retention(keep_ms=HOUR, identity_ms=4 * HOUR))
    assert offset == 1 and restored.seen == {}
    assert restored.state_changes().contacts == [("c1", None)]

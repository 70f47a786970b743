"""The journey stage split over partitions, as a pure core: one `Resolver` keeps the identity graph
and routes each contact record to the `Builder` that holds its customer; builders keep the
customers' books and journeys. Built and tested in process (`tests/unit/test_journey_split.py`:
the builders' journeys equal one `Stitcher`'s under any interleaving of their queues, with
retention and erasure); the worker does not run it yet (no Faust shell). Design: README,
"Customer journeys", scale-out.

* **Only the resolver decides who a contact belongs to.** The graph's refusals depend on the order
  of its unions, so builders run no graph: they file what they are given under the key given.
* **A customer stays on the builder it was first routed to** (crc32 of its key at that moment).
  A `Merge(survivor, absorbed)` of the graph (the survivor is always one of the two old keys) on
  one builder is a `Renamed`; across builders the absorbed customer's builder gets a `HandOver`
  and sends its book to the survivor's builder (`TakeOver`): the contacts' records and the
  journeys' last `Emitted` versions. A journey can change owner (its id is `j-<first contact
  id>`); versions stay monotonic because the new owner keeps the higher of its own and the
  handed-over version. Records merge idempotently and commutatively, so a contact whose newer
  record reaches the new owner before its book does ends up the same.
* **Hand-overs are named and awaited.** The resolver names each one (`ref`) and announces it to
  the new owner (`Expect`, delivered before the `HandOver`: the shell must wait for its delivery
  first). A builder keeps the names of the hand-overs to each customer still under way
  (`pending`); a builder that gives up or renames a customer with some under way passes them on
  (`TakeOver.passes`) and keeps a forwarding entry (`moved`) until each has chased through it. So
  every such entry lives exactly until its last hand-over arrived, however late, and a hand-over
  delivered twice (its sender crashed after sending, before its state was saved) is recognised
  and dropped.
* **Event time** is the resolver's (newest event seen, on every `Filed` and `Tick`), so a builder
  judges dormancy as one stage would; it takes its changes and runs retention after each `Tick`
  (`tick`), where one stage does after each round.
* **Retention, each half by event time**, with the single stage's outcome. A builder forgets a
  journey's contacts `close_time` after it (where `Stitcher.evict_due` strips them) and an
  identity-only record `keep` after its newest event, but holds a customer's contacts not due by
  the earliest merge of the hand-overs to it still under way: the contacts they bring may keep
  its journeys open (the single stage had them at the merge). The resolver forgets a contact's
  node `keep` after that contact's newest event (no record of it can come later) when another
  contact of its customer remains, which carries its links and newest time on (a customer who
  keeps coming back holds a node per contact of the last `identity_retention`, not one per
  contact ever made), and drops a
  customer's component, links included, `identity_retention` after the customer's newest event.
  It tells no builder: by then every journey of the customer is closed (`check_windows` refuses
  windows where it would not be) and the builders forget them by themselves. The single stage
  drops a customer at that time too.
* **What can differ from one stage:** the customer key of a journey that was closed when a later
  merge renamed its customer. One stage keeps the old key if it evicted the journey before the
  merge's round, and writes the new one if not (so its own result depends on where its rounds
  fall); a builder holding the journey for a hand-over under way writes the new one. Same person,
  same contacts and content (`test_builders_and_resolver_forget_what_one_stage_forgets`).
* **Erasure** (`Resolver.forget`): the resolver drops the person's components and tells every
  builder (`Forget`), which drops their books, records and journeys, and discards the hand-overs
  to them still under way when they arrive.
"""

from __future__ import annotations

import heapq
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipeline.journeys.identity import CONTACT, IdentityConfig, IdentityGraph, Merge, Node, _Root, key_node
from pipeline.journeys.model import DAY, Emitted, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord, Ident, Link
from pipeline.journeys.store import JourneyStore


@dataclass(frozen=True, slots=True)
class Filed:
    """A contact record (a forwarded delta) for `customer`."""

    customer: str
    record: ContactRecord
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class Renamed:
    """Customer `absorbed` is part of `survivor`, held by the same builder."""

    absorbed: str
    survivor: str


@dataclass(frozen=True, slots=True)
class HandOver:
    """Customer `absorbed` is part of `survivor`, held by builder `to`: send it the book (hand-over
    `ref`)."""

    absorbed: str
    survivor: str
    to: int
    ref: str


@dataclass(frozen=True, slots=True)
class Expect:
    """A book is being handed over to this builder for `customer` (a `TakeOver` named `ref` will
    come); `as_of_ms`: the resolver's event time at its last `Tick` before the merge, when one
    stage last ran retention on the two books apart."""

    customer: str
    ref: str
    as_of_ms: int = 0


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A book handed over (hand-over `ref`): its contacts' records and its journeys' last versions,
    for `customer`; `passes`: the hand-overs its old owner was still waiting for (they follow it)."""

    customer: str
    records: tuple[ContactRecord, ...]
    emitted: tuple[tuple[str, Emitted], ...]
    ref: str
    passes: frozenset[str] = frozenset()
    times: tuple[tuple[str, int], ...] = ()  # the `Expect` times of `passes`


@dataclass(frozen=True, slots=True)
class Tick:
    """The resolver's event time (newest event seen), for builders that got nothing lately."""

    as_of_ms: int


@dataclass(frozen=True, slots=True)
class Forget:
    """Erase a person: the customers `customers` and the contacts `contacts` (sent to every builder)."""

    customers: frozenset[str]
    contacts: frozenset[str]


Message = Filed | Renamed | Expect | HandOver | TakeOver | Tick | Forget


def check_windows(journeys: JourneyConfig, keep_ms: int, identity_retention_ms: int) -> None:
    """Refuse windows with which the resolver could drop a customer whose journey is still open:
    it cannot see journeys, so it relies on every journey being closed (`close_time`) by
    `identity_retention` after the customer's newest event."""
    longest = max(journeys.repeat_window_ms, journeys.dormancy_ms) + keep_ms
    if identity_retention_ms < longest:
        raise ValueError(
            f"identity retention ({identity_retention_ms / DAY:g} days) must be at least the longer of the repeat "
            f"window and the dormancy plus the journey keep ({longest / DAY:g} days)"
        )


Routed = tuple[int, Message]  # (builder, message)
# where a resolver's message comes from: (the input offset of the message it read, its place among
# what that message sent the same builder)
Stamp = tuple[int, int]


def stamped(offset: int, routed: Iterable[Routed]) -> list[tuple[int, Stamp, Message]]:
    """A message's routing (`Resolver.read` of input `offset`) with each builder's messages
    stamped in order, for `Builder.receive`."""
    places: dict[int, int] = {}
    out: list[tuple[int, Stamp, Message]] = []
    for at, message in routed:
        place = places.get(at, 0)
        places[at] = place + 1
        out.append((at, (offset, place), message))
    return out


class CustomerEntry(NamedTuple):
    """What the resolver keeps of a customer beside its component's identifiers: the builder
    holding it (None: none yet), its newest event (ms) and the identity links its contacts tied.
    (Named tuples, not frozen dataclasses: a checkpoint makes two entries a record or so.)"""

    builder: int | None
    newest_ms: int
    links: tuple[Link, ...]


class ContactEntry(NamedTuple):
    """What the resolver keeps of a contact: its newest event (ms) and the identifier node of its
    component it hangs on at a restore (None: alone, a contact without usable identifiers)."""

    newest_ms: int
    anchor: Node | None


@dataclass(frozen=True, slots=True)
class ResolverChanges:
    """The resolver's keyed state changed since the last checkpoint (`Resolver.state_changes`;
    None: delete the entry): `customers`, `components` (the identity graph's entries,
    `IdentityGraph.component_changes`), `contacts`, then `as_of_ms` and `hand_overs` (the counter
    naming hand-overs when the shell names none), which go with the input offset the state has
    applied.

    **A checkpoint must land whole.** The shell writes the changes first as one journal entry
    (chunked to fit a message) tagged with the offset, then the offset, then the keyed entries; a
    restore applies a journal tagged with the stored offset over the keyed entries. Written
    straight to the keyed entries, a crash between two writes left part of a round in the state:
    read again, the round's earlier messages were tied with its later merges already in the graph,
    which filed a journey under another customer key than one stage (`j-c1853` in one of three
    runs of `test_a_resolver_killed_anywhere_and_restored_gives_the_journeys_of_one_stage`), and
    retention then kept nodes past their time."""

    customers: list[tuple[str, CustomerEntry | None]]
    components: list[tuple[Node, list[Node] | None]]
    contacts: list[tuple[str, ContactEntry | None]]
    as_of_ms: int
    hand_overs: int


class FiledContact(NamedTuple):
    """What a builder keeps of a contact: the customer it is filed under and its merged record
    (`ContactRecord.to_json`, encoded at the checkpoint: records are merged into in place)."""

    customer: str
    record: bytes


@dataclass(frozen=True, slots=True)
class BuilderChanges:
    """A builder's keyed state changed since the last checkpoint (`Builder.state_changes`; None:
    delete the entry): its `contacts` and its journeys' last versions (`emitted`), then `meta`,
    one JSON-able entry written whole with the input offset: the hand-overs under way (`pending`
    with their `Expect` times, `moved`, `discard`, `held`: entries live only while a hand-over
    is under way, so this stays small), the customers whose journeys changed since the last
    `changes` (`dirty`), the event time and the last resolver stamp taken.

    The shell numbers a round's journeys as the single stage does (`changes(version=base + the
    offset after the round's last message)`) and keeps two rules (`tests/unit/test_journey_builder_state.py`):

    * **A checkpoint lands whole**, as the resolver's: journal, offset with `meta`, keyed entries.
    * **A round is written down before its outputs go out** (its first and end offsets), and a
      builder restored at that first offset reads exactly that round again first. A builder killed
      after writing a round's journeys but before persisting it may have written a journey that
      exists only at that round's end (a contact's journey before a merge joins it to an older
      one): a successor whose round ended elsewhere never wrote it, so never retracted it, and the
      stale row stayed live (each of 6 streams had 1-2 without the rule). Read again to the same end,
      the round writes the same journeys at the same versions, and the successor knows them."""

    contacts: list[tuple[str, FiledContact | None]]
    emitted: list[tuple[str, Emitted | None]]
    meta: dict[str, Any]


def popped_due(heap: list[tuple[int, str]], as_of: int, budget: int) -> Iterator[str]:
    """The ids of a retention heap's entries due before `as_of`, popped; at most `budget`."""
    while heap and heap[0][0] < as_of and budget > 0:
        budget -= 1
        yield heapq.heappop(heap)[1]


class Resolver:
    """The identity graph and which builder holds each customer."""

    def __init__(
        self,
        builders: int,
        identity: IdentityConfig | None = None,
        *,
        keep_ms: int = DAY,
        identity_retention_ms: int = 30 * DAY,
    ) -> None:
        self.builders = builders
        self.graph = IdentityGraph(identity)
        self.owner: dict[str, int] = {}  # customer key -> builder
        self.as_of_ms = 0
        self.keep_ms = keep_ms
        self.identity_retention_ms = identity_retention_ms
        self.seen: dict[str, int] = {}  # contact node -> its newest event (ms)
        # (check at, contact id), one entry per node in `seen` until it is its customer's last: in
        # the order they were made, due `keep` after a contact's newest event, so almost in time
        # order; a deque, not a heap: the heap's pops were a third of the 6.2 µs a record the
        # first retention took over a simulated week (`benchmarks/journey_resolver.py`, py-spy),
        # 2.6-3.2 µs since. An entry made out of order waits for those before it: a node goes
        # between `keep` and twice `keep` after its contact's newest event.
        self._checks: deque[tuple[int, str]] = deque()
        self._drops: list[tuple[int, str]] = []  # heap (drop at, contact id) of customers' last nodes
        # hand-overs named so far, when `naming` is None. `read` sets `naming` to the input offset
        # of the message: a hand-over is then `<naming>/<absorbed customer>`, named the same when
        # the message is read again after a crash
        self.hand_overs = 0
        self.ticked_ms = 0  # the event time of the last `tick`
        self.naming: str | None = None
        # customer keys and contact ids changed since the last `state_changes`, each with the
        # component it was last seen in (None: looked up then). Kept by object because a lookup by
        # key or contact id cost 3.7 µs an entry over a simulated day's graph (cache misses in its
        # large maps), more than a record's share of the checkpoint
        self._customers_changed: dict[str, _Root | None] = {}
        self._contacts_changed: dict[str, _Root | None] = {}

    def builder_of(self, customer: str) -> int:
        return zlib.crc32(customer.encode()) % self.builders

    def apply(self, delta: ContactRecord) -> list[Routed]:
        """Tie a record's identifiers and links (as `Stitcher.apply` does) and route it, after the
        messages its merges need."""
        out, customer, at = self.tie(delta.contact_id, delta.ids, delta.links, delta.seen_us)
        out.append((at, Filed(customer, delta, self.as_of_ms)))
        return out

    def tie(
        self, contact_id: str, ids: Iterable[Ident], links: Iterable[Link], seen_us: int
    ) -> tuple[list[Routed], str, int]:
        """Tie a contact's identifiers and links: the messages its merges need, its customer key
        and the builder holding that customer."""
        graph, owner, changed = self.graph, self.owner, self._customers_changed
        merges: list[Merge] = list(graph.add_contact_values(contact_id, ids).merges)
        tied: list[Link] = []
        for a, b, c, d in links:  # tuples again (a message's identity header gives lists): kept, compared
            merges += graph.link_values(a, b, c, d).merges
            tied.append((a, b, c, d))
        seen_ms = seen_us // 1000
        known = self.seen.get(contact_id)
        if known is None:
            self.seen[contact_id] = seen_ms
            self._checks.append((seen_ms + self.keep_ms, contact_id))
        elif seen_ms > known:
            self.seen[contact_id] = seen_ms
        self.as_of_ms = max(self.as_of_ms, seen_ms)
        out: list[Routed] = []
        for merge in merges:
            if merge.survivor == merge.absorbed:
                continue
            changed[merge.absorbed] = None
            changed[merge.survivor] = None
            absorbed_at = owner.pop(merge.absorbed, None)
            if absorbed_at is None:
                continue
            survivor_at = owner.get(merge.survivor)
            if survivor_at is None or survivor_at == absorbed_at:
                owner[merge.survivor] = absorbed_at
                out.append((absorbed_at, Renamed(merge.absorbed, merge.survivor)))
            else:
                # announced first: the new owner keeps the survivor's journeys until the book is there
                if self.naming is None:
                    self.hand_overs += 1
                    ref = str(self.hand_overs)
                else:
                    ref = f"{self.naming}/{merge.absorbed}"
                out.append((survivor_at, Expect(merge.survivor, ref, self.ticked_ms)))
                out.append((absorbed_at, HandOver(merge.absorbed, merge.survivor, survivor_at, ref)))
        component = graph.component_of_contact(contact_id)
        assert component is not None
        if seen_ms > component.newest_ms:
            component.newest_ms = seen_ms
        if tied:
            held = component.links
            if held is None:
                component.links = tied
            else:
                held += [link for link in tied if link not in held]
        customer = component.key
        changed[customer] = component
        self._contacts_changed[contact_id] = component  # always: a later record may have joined it to identifiers
        at = owner.get(customer)
        if at is None:
            at = owner[customer] = self.builder_of(customer)
        return out, customer, at

    def tick(self) -> list[Routed]:
        self.ticked_ms = self.as_of_ms
        return [(builder, Tick(self.as_of_ms)) for builder in range(self.builders)]

    def read(self, name: str, records: Iterable[ContactRecord]) -> list[Routed]:
        """One input message named `name` (its offset), the unit a crash repeats: its records tied
        and routed (hand-overs named after it), a `Tick` to every builder, then retention of
        everything due. What a message sends depends only on the messages before it, never on
        where the shell's checkpoints fall: with retention at checkpoints instead, a customer due
        to be dropped just before a message was still held when the message was first read and
        gone when a restored resolver read it again, which filed its contact on two builders
        (`tests/unit/test_journey_resolver_state.py`)."""
        self.naming = name
        out: list[Routed] = []
        for record in records:
            out += self.apply(record)
        out += self.tick()
        while self.evict_due():
            pass
        return out

    def evict_due(self, budget: int = 10_000) -> bool:
        """Retention at the resolver's event time (module docstring), at most `budget` entries;
        True when entries due are left."""
        checks, drops, seen, graph, as_of = self._checks, self._drops, self.seen, self.graph, self.as_of_ms
        while checks and checks[0][0] < as_of and budget > 0:
            budget -= 1
            _, contact_id = checks.popleft()
            newest = seen.get(contact_id)
            if newest is None:
                continue
            if newest + self.keep_ms >= as_of:  # a record of it may still come
                checks.append((newest + self.keep_ms, contact_id))
                continue
            component = graph.component_of_contact(contact_id)
            assert component is not None
            if component.contacts > 1:  # another contact carries the customer on
                graph.forget_contact(contact_id)
                del seen[contact_id]
                self._contacts_changed[contact_id] = None
            else:
                heapq.heappush(drops, (component.newest_ms + self.identity_retention_ms, contact_id))
        for contact_id in popped_due(drops, as_of, budget):
            if contact_id not in seen:
                continue
            component = graph.component_of_contact(contact_id)
            assert component is not None
            if component.contacts > 1:  # joined since: the newer contact carries the customer on
                graph.forget_contact(contact_id)
                del seen[contact_id]
                self._contacts_changed[contact_id] = None
                continue
            drop_at = component.newest_ms + self.identity_retention_ms
            if drop_at >= as_of:
                heapq.heappush(drops, (drop_at, contact_id))
                continue
            self.owner.pop(component.key, None)
            self._customers_changed[component.key] = None
            self._contacts_changed[contact_id] = None
            graph.drop(contact_id)
            for left_kind, left, right_kind, right in component.links or ():
                graph.drop_contactless(left_kind, left)
                graph.drop_contactless(right_kind, right)
            del seen[contact_id]
        return bool(checks and checks[0][0] < as_of) or bool(drops and drops[0][0] < as_of)

    def forget(
        self, contact_ids: Iterable[str], identifiers: Iterable[tuple[str, str]] = (), customers: Iterable[str] = ()
    ) -> list[Routed]:
        """Erase a person (`Stitcher.forget`): drop every component holding one of `contact_ids`,
        `identifiers` or customer keys `customers`; a `Forget` for every builder."""
        contacts, ids = set(contact_ids), set(identifiers)
        keys = set(customers)
        for node in filter(None, map(key_node, keys)):
            if node[0] == CONTACT:
                contacts.add(node[1])
            else:
                ids.add(node)
        found, found_keys = self.graph.forget(contacts, ids)
        keys |= found_keys
        contacts |= found
        for contact_id in found:  # their retention entries go when due
            self.seen.pop(contact_id, None)
        self._contacts_changed.update(dict.fromkeys(found))
        for key in keys:
            self.owner.pop(key, None)
        self._customers_changed.update(dict.fromkeys(keys))
        message = Forget(frozenset(keys), frozenset(contacts))
        return [(builder, message) for builder in range(self.builders)]

    def state_changes(self) -> ResolverChanges:
        """What changed since the last call, to persist (`ResolverChanges`): costs what changed."""
        graph, owner, seen = self.graph, self.owner, self.seen
        written: list[tuple[str, CustomerEntry | None]] = []
        deleted: list[tuple[str, CustomerEntry | None]] = []
        for key, component in self._customers_changed.items():
            if component is None or component.gone or component.key != key:
                component = graph.component_named(key)
            if component is None:
                deleted.append((key, None))
            else:
                entry = CustomerEntry(owner.get(key), component.newest_ms, tuple(component.links or ()))
                written.append((key, entry))
        contacts: list[tuple[str, ContactEntry | None]] = []
        for contact_id, component in self._contacts_changed.items():
            newest = seen.get(contact_id)
            if newest is not None and (component is None or component.gone):
                component = graph.component_of_contact(contact_id)
            if newest is None or component is None:
                contacts.append((contact_id, None))
            else:
                contacts.append((contact_id, ContactEntry(newest, graph.entry_key(component))))
        self._customers_changed = {}
        self._contacts_changed = {}
        return ResolverChanges(written + deleted, graph.component_changes(), contacts, self.as_of_ms, self.hand_overs)

    @classmethod
    def from_state(
        cls,
        builders: int,
        identity: IdentityConfig | None = None,
        *,
        keep_ms: int = DAY,
        identity_retention_ms: int = 30 * DAY,
        customers: Iterable[tuple[str, CustomerEntry]] = (),
        components: Iterable[list[Node]] = (),
        contacts: Iterable[tuple[str, ContactEntry]] = (),
        as_of_ms: int = 0,
        hand_overs: int = 0,
    ) -> Resolver:
        """The resolver its persisted entries describe (every checkpoint whole, see
        `ResolverChanges`); no record is read again. Entries that do not fit (a contact whose
        anchor is in no component, a customer entry naming no component: never written so, but a
        restore must not fail on one) are left out and deleted at the next checkpoint."""
        resolver = cls(builders, identity, keep_ms=keep_ms, identity_retention_ms=identity_retention_ms)
        graph, seen = resolver.graph, resolver.seen
        graph.load_components(components)
        for contact_id, contact in contacts:
            if not graph.attach(contact_id, contact.anchor):
                resolver._contacts_changed[contact_id] = None
                continue
            seen[contact_id] = contact.newest_ms
            component = graph.component_of_contact(contact_id)
            assert component is not None
            component.newest_ms = max(component.newest_ms, contact.newest_ms)
        resolver._checks = deque(sorted((newest + keep_ms, contact_id) for contact_id, newest in seen.items()))
        for key, entry in customers:
            component = graph.component_named(key)
            if component is None:
                resolver._customers_changed[key] = None
                continue
            if entry.builder is not None:
                resolver.owner[key] = entry.builder
            component.newest_ms = max(component.newest_ms, entry.newest_ms)
            if entry.links:
                component.links = list(entry.links)
        resolver.as_of_ms = resolver.ticked_ms = as_of_ms  # a checkpoint follows a message's `Tick`
        resolver.hand_overs = hand_overs
        return resolver


class Builder:
    """One builder partition: its customers' contact records, books and journeys."""

    def __init__(self, index: int, journeys: JourneyConfig | None = None, *, keep_ms: int = DAY) -> None:
        self.index = index
        self.store = JourneyStore(journeys)
        self.keep_ms = keep_ms
        self.records: dict[str, ContactRecord] = {}
        self.customer_of: dict[str, str] = {}  # contact -> the customer it is filed under here
        self.contacts_of: dict[str, set[str]] = {}  # customer -> its contacts held here (any record)
        # hand-overs under way, each entry until the last `TakeOver` it names has arrived:
        # customer -> the hand-overs to it still to arrive (announced by `Expect`s, or passed on)
        self.pending: dict[str, set[str]] = {}
        # customer given up -> (its new key, builder, the hand-overs for it still to forward)
        self.moved: dict[str, tuple[str, int, set[str]]] = {}
        # customer erased while hand-overs to it were under way -> those to discard
        self.discard: dict[str, set[str]] = {}
        # customer -> its contacts whose retention waits for hand-overs under way
        self.held: dict[str, list[str]] = {}
        # hand-over under way to a customer here -> its `Expect` time: before the earliest of a
        # customer's, one stage ran retention on its book alone, so what was due by then goes
        self.ref_time: dict[str, int] = {}
        self._expiry: list[tuple[int, str]] = []  # (check at, contact id): one entry per record
        self.as_of_ms = 0
        # the stamp of the last resolver message taken (`receive`)
        self.resolver_mark: Stamp = (-1, -1)
        self._records_changed: set[str] = set()  # contact ids whose record or customer changed

    def receive(self, stamp: Stamp | None, message: Message) -> list[Routed]:
        """`handle` a message once: a resolver's message (`stamp`) at or below the last one taken
        is one sent again by a resolver restored after a crash, and is dropped. Filed again after
        the customer's `HandOver`, it would make the customer's journeys here again, beside their
        new owner's. The resolver reads each input message the same way whatever its checkpoints
        (`Resolver.read`), so what it sends again carries the same stamps; after a crash between
        its state writes it sends fewer (merges already in its graph), never new ones, since
        everything it sent before was delivered before the first write. Builders' messages
        (`stamp` None: `TakeOver`s) are recognised by their hand-over names instead."""
        if stamp is not None:
            if stamp <= self.resolver_mark:
                return []
            self.resolver_mark = stamp
        return self.handle(message)

    def handle(self, message: Message) -> list[Routed]:
        """Apply one message; the messages it sends to other builders."""
        if isinstance(message, Filed):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
            self._file(message.record, message.customer, delta=True)
        elif isinstance(message, Tick):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
        elif isinstance(message, Expect):
            self.pending.setdefault(message.customer, set()).add(message.ref)
            self.ref_time[message.ref] = message.as_of_ms
        elif isinstance(message, Renamed):
            absorbed, survivor = message.absorbed, message.survivor
            self.store.apply_merge(Merge(survivor, absorbed))
            self._move_contacts(absorbed, survivor)
            waiting = self.pending.pop(absorbed, None)
            if waiting:
                self.pending.setdefault(survivor, set()).update(waiting)
                self.moved[absorbed] = (survivor, self.index, set(waiting))
            held = self.held.pop(absorbed, None)
            if held:
                self.held.setdefault(survivor, []).extend(held)
        elif isinstance(message, HandOver):
            absorbed = message.absorbed
            contacts = self.contacts_of.pop(absorbed, set())
            records = tuple(self.records.pop(c) for c in sorted(contacts))
            self._records_changed |= contacts
            for contact_id in contacts:
                del self.customer_of[contact_id]
            emitted = self.store.hand_over(absorbed, contacts)
            self.held.pop(absorbed, None)
            waiting = self.pending.pop(absorbed, set())
            times = tuple((ref, self.ref_time.pop(ref, 0)) for ref in sorted(waiting))
            if waiting:
                self.moved[absorbed] = (message.survivor, message.to, set(waiting))
            taken = TakeOver(message.survivor, records, emitted, message.ref, frozenset(waiting), times)
            return [(message.to, taken)]
        elif isinstance(message, Forget):
            self._drop(message.customers, message.contacts)
        else:
            return self._take_over(message)
        return []

    def changes(self, version: int | None = None) -> list[JourneyVersion]:
        """The journeys that changed; `version`: the round's (`JourneyStore.changes`)."""
        return self.store.changes(self.as_of_ms or None, version=version)

    def tick(self, version: int | None = None) -> list[JourneyVersion]:
        """After a `Tick` (the end of a resolver's round): the journeys that changed, then retention
        of everything due, as the single stage does after each round. Retention at those points
        only: a journey evicted while a later merge renames its customer keeps its old key, so the
        two halves must evict where one stage would."""
        out = self.changes(version)
        while self.evict_due():
            pass
        return out

    def evict_due(self, budget: int = 10_000) -> bool:
        """Retention at the resolver's event time (module docstring), at most `budget` heap entries;
        True when entries due are left. While hand-overs to a customer are under way, its contacts
        go only if they were due by the earliest one's `Expect` time (one stage evicted them
        before the merge, from the book this builder holds) and wait otherwise: the contacts the
        hand-over brings may join their journeys, as one stage had them at the merge."""
        heap, records, store, as_of = self._expiry, self.records, self.store, self.as_of_ms
        pending, ref_time = self.pending, self.ref_time
        for contact_id in popped_due(heap, as_of, budget):
            record = records.get(contact_id)
            if record is None:
                continue
            customer = self.customer_of[contact_id]
            waiting = pending.get(customer)
            at = as_of if not waiting else min(ref_time.get(ref, 0) for ref in waiting)
            due = store.due_span(customer, contact_id, self.keep_ms, at) if record.active else None
            if isinstance(due, int):
                if waiting:
                    self.held.setdefault(customer, []).append(contact_id)
                else:
                    heapq.heappush(heap, (due, contact_id))
                continue
            if due is not None:
                for member in store.evict_span(due, customer):
                    self._forget_record(member)
                continue
            late_until = record.seen_us // 1000 + self.keep_ms  # identity only: until no record of it can come
            if late_until >= at:
                if waiting:
                    self.held.setdefault(customer, []).append(contact_id)
                else:
                    heapq.heappush(heap, (late_until, contact_id))
                continue
            store.remove(contact_id)
            self._forget_record(contact_id)
        return bool(heap) and heap[0][0] < as_of

    def _take_over(self, message: TakeOver) -> list[Routed]:
        customer, at, ref = message.customer, self.index, message.ref
        while at == self.index:  # chased: the customer moved on
            entry = self.moved.get(customer)
            if entry is None or ref not in entry[2]:
                break
            survivor, at, forwarding = entry
            forwarding.discard(ref)
            if not forwarding:
                del self.moved[customer]
            customer = survivor
        if at != self.index:
            forwarded = TakeOver(customer, message.records, message.emitted, ref, message.passes, message.times)
            return [(at, forwarded)]
        erased = self.discard.get(customer)
        if erased is not None and ref in erased:  # for a customer erased meanwhile: it goes with it
            erased.discard(ref)
            erased |= message.passes
            if not erased:
                del self.discard[customer]
            return []
        waiting = self.pending.get(customer)
        if waiting is None or ref not in waiting:  # delivered again: it was taken over already
            return []
        waiting.discard(ref)
        self.ref_time.pop(ref, None)
        waiting |= message.passes
        self.ref_time.update(message.times)
        for record in message.records:
            self._file(record, customer, delta=False)
        self.store.take_over(customer, message.emitted)
        if not waiting:
            del self.pending[customer]
        for contact_id in self.held.pop(customer, ()):  # checked again at once, by the earliest left
            heapq.heappush(self._expiry, (0, contact_id))
        return []

    def _file(self, incoming: ContactRecord, customer: str, *, delta: bool) -> None:
        """File a record under `customer`: a forwarded delta (its intent before is known, as in
        `Stitcher.apply`) or a whole record handed over (every intent of the customer rebuilt)."""
        record = self.records.get(incoming.contact_id)
        was: str | bool | None = None if delta else False
        self._records_changed.add(incoming.contact_id)
        if record is None:
            record = self.records[incoming.contact_id] = incoming
            heapq.heappush(self._expiry, (self._first_check(record), record.contact_id))
        else:
            if delta and record.active:
                was = None if record.intent is None else record.intent[2]
            record.merge(incoming)
        previous = self.customer_of.get(record.contact_id)
        if previous != customer:
            if previous is not None:
                self._unfile(previous, record.contact_id)
            self.customer_of[record.contact_id] = customer
            self.contacts_of.setdefault(customer, set()).add(record.contact_id)
        if record.active:
            self.store.file(record, customer, was=was)

    def _first_check(self, record: ContactRecord) -> int:
        windows = self.store.config
        return record.seen_us // 1000 + min(windows.repeat_window_ms, windows.dormancy_ms)

    def _move_contacts(self, absorbed: str, survivor: str) -> None:
        contacts = self.contacts_of.pop(absorbed, None)
        if contacts:
            self._records_changed |= contacts
            self.contacts_of.setdefault(survivor, set()).update(contacts)
            for contact_id in contacts:
                self.customer_of[contact_id] = survivor

    def _forget_record(self, contact_id: str) -> None:
        self._records_changed.add(contact_id)
        del self.records[contact_id]
        self._unfile(self.customer_of.pop(contact_id), contact_id)

    def _unfile(self, customer: str, contact_id: str) -> None:
        filed = self.contacts_of.get(customer)
        if filed is not None:
            filed.discard(contact_id)
            if not filed:
                del self.contacts_of[customer]

    def _drop(self, customers: Iterable[str], contacts: Iterable[str]) -> None:
        """Forget customers (their books, records and journeys, and the hand-overs to them still
        under way) and contacts held here."""
        keys = set(customers)
        gone = {c for c in contacts if c in self.records}
        for customer in keys:
            gone |= self.contacts_of.pop(customer, set())
            self.held.pop(customer, None)
            waiting = self.pending.pop(customer, None)
            if waiting:
                self.discard.setdefault(customer, set()).update(waiting)
                for ref in waiting:
                    self.ref_time.pop(ref, None)
        self._records_changed |= gone
        for contact_id in gone:
            self.records.pop(contact_id, None)
            owner = self.customer_of.pop(contact_id, None)
            if owner is not None and owner not in keys:
                self._unfile(owner, contact_id)
        self.store.forget(keys, gone)

    def state_changes(self) -> BuilderChanges:
        """What changed since the last call, to persist (`BuilderChanges`): costs what changed."""
        records, customer_of, store = self.records, self.customer_of, self.store
        contacts: list[tuple[str, FiledContact | None]] = []
        for contact_id in sorted(self._records_changed):
            record = records.get(contact_id)
            contacts.append(
                (contact_id, None if record is None else FiledContact(customer_of[contact_id], record.to_json()))
            )
        emitted = [(journey_id, store.emitted(journey_id)) for journey_id in sorted(store.emitted_changes)]
        self._records_changed = set()
        store.emitted_changes = set()
        meta: dict[str, Any] = {
            "pending": {
                c: {ref: self.ref_time.get(ref, 0) for ref in sorted(refs)} for c, refs in self.pending.items()
            },
            "moved": {c: [survivor, at, sorted(refs)] for c, (survivor, at, refs) in self.moved.items()},
            "discard": {c: sorted(refs) for c, refs in self.discard.items()},
            "held": {c: list(held) for c, held in self.held.items()},
            "dirty": {c: None if i is None else sorted(i, key=str) for c, i in store.dirty.items()},
            "as_of": self.as_of_ms,
            "mark": list(self.resolver_mark),
        }
        return BuilderChanges(contacts, emitted, meta)

    @classmethod
    def from_state(
        cls,
        index: int,
        journeys: JourneyConfig | None = None,
        *,
        keep_ms: int = DAY,
        contacts: Iterable[tuple[str, FiledContact]] = (),
        emitted: Iterable[tuple[str, Emitted]] = (),
        meta: dict[str, Any] | None = None,
    ) -> Builder:
        """The builder its persisted entries describe (every checkpoint whole, see
        `BuilderChanges`); no message is read again. Each contact is filed in its customer's book
        and checked for retention from its first check again (a check that finds it not due
        puts it back where it was), except those held for hand-overs under way."""
        meta = meta or {}
        builder = cls(index, journeys, keep_ms=keep_ms)
        held = {str(c): [str(x) for x in ids] for c, ids in meta.get("held", {}).items()}
        waiting = {contact_id for ids in held.values() for contact_id in ids}
        store, expiry = builder.store, builder._expiry
        for contact_id, filed in contacts:
            record = ContactRecord.from_json(filed.record)
            builder.records[contact_id] = record
            builder.customer_of[contact_id] = filed.customer
            builder.contacts_of.setdefault(filed.customer, set()).add(contact_id)
            if contact_id not in waiting:
                expiry.append((builder._first_check(record), contact_id))
            if record.active:
                store.file(record, filed.customer, dirty=False)
        heapq.heapify(expiry)
        for journey_id, entry in emitted:
            store.restore_emitted(journey_id, entry)
        store.restored()
        store.dirty = {str(c): None if i is None else set(i) for c, i in meta.get("dirty", {}).items()}
        for customer, refs in meta.get("pending", {}).items():
            builder.pending[str(customer)] = set(refs)
            builder.ref_time.update((str(ref), int(at)) for ref, at in refs.items())
        for customer, (survivor, at, refs) in meta.get("moved", {}).items():
            builder.moved[str(customer)] = (str(survivor), int(at), set(refs))
        builder.discard = {str(c): set(refs) for c, refs in meta.get("discard", {}).items()}
        builder.held = held
        builder.as_of_ms = int(meta.get("as_of", 0))
        mark = meta.get("mark", (-1, -1))
        builder.resolver_mark = (int(mark[0]), int(mark[1]))
        return builder

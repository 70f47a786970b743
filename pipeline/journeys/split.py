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
  identity-only record `keep` after its newest event, but holds a customer's contacts while
  hand-overs to it are under way: the contacts they bring may keep its journeys open (the single
  stage had them at the merge). The resolver forgets a contact's node `keep` after that
  contact's newest event (no record of it can come later) when another contact of its customer
  remains, which carries its links and newest time on (a customer who keeps coming back holds a
  node per contact of the last `identity_retention`, not one per contact ever made), and drops a
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

from pipeline.journeys.identity import CONTACT, IdentityConfig, IdentityGraph, Merge, key_node
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
    """A book is being handed over to this builder for `customer` (a `TakeOver` named `ref` will come)."""

    customer: str
    ref: str


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A book handed over (hand-over `ref`): its contacts' records and its journeys' last versions,
    for `customer`; `passes`: the hand-overs its old owner was still waiting for (they follow it)."""

    customer: str
    records: tuple[ContactRecord, ...]
    emitted: tuple[tuple[str, Emitted], ...]
    ref: str
    passes: frozenset[str] = frozenset()


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
        # hand-overs named so far (the shell names them after its input's offsets instead, so that
        # a round read again names them the same)
        self.hand_overs = 0

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
        graph, owner = self.graph, self.owner
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
            absorbed_at = owner.pop(merge.absorbed, None)
            if absorbed_at is None:
                continue
            survivor_at = owner.get(merge.survivor)
            if survivor_at is None or survivor_at == absorbed_at:
                owner[merge.survivor] = absorbed_at
                out.append((absorbed_at, Renamed(merge.absorbed, merge.survivor)))
            else:
                # announced first: the new owner keeps the survivor's journeys until the book is there
                self.hand_overs += 1
                ref = str(self.hand_overs)
                out.append((survivor_at, Expect(merge.survivor, ref)))
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
        at = owner.get(customer)
        if at is None:
            at = owner[customer] = self.builder_of(customer)
        return out, customer, at

    def tick(self) -> list[Routed]:
        return [(builder, Tick(self.as_of_ms)) for builder in range(self.builders)]

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
                continue
            drop_at = component.newest_ms + self.identity_retention_ms
            if drop_at >= as_of:
                heapq.heappush(drops, (drop_at, contact_id))
                continue
            self.owner.pop(component.key, None)
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
        for key in keys:
            self.owner.pop(key, None)
        message = Forget(frozenset(keys), frozenset(contacts))
        return [(builder, message) for builder in range(self.builders)]


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
        self._expiry: list[tuple[int, str]] = []  # (check at, contact id): one entry per record
        self.as_of_ms = 0

    def handle(self, message: Message) -> list[Routed]:
        """Apply one message; the messages it sends to other builders."""
        if isinstance(message, Filed):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
            self._file(message.record, message.customer, delta=True)
        elif isinstance(message, Tick):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
        elif isinstance(message, Expect):
            self.pending.setdefault(message.customer, set()).add(message.ref)
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
            for contact_id in contacts:
                del self.customer_of[contact_id]
            emitted = self.store.hand_over(absorbed, contacts)
            self.held.pop(absorbed, None)
            waiting = self.pending.pop(absorbed, set())
            if waiting:
                self.moved[absorbed] = (message.survivor, message.to, set(waiting))
            return [(message.to, TakeOver(message.survivor, records, emitted, message.ref, frozenset(waiting)))]
        elif isinstance(message, Forget):
            self._drop(message.customers, message.contacts)
        else:
            return self._take_over(message)
        return []

    def changes(self) -> list[JourneyVersion]:
        return self.store.changes(self.as_of_ms or None)

    def tick(self) -> list[JourneyVersion]:
        """After a `Tick` (the end of a resolver's round): the journeys that changed, then retention
        of everything due, as the single stage does after each round. Retention at those points
        only: a journey evicted while a later merge renames its customer keeps its old key, so the
        two halves must evict where one stage would."""
        out = self.changes()
        while self.evict_due():
            pass
        return out

    def evict_due(self, budget: int = 10_000) -> bool:
        """Retention at the resolver's event time (module docstring), at most `budget` heap entries;
        True when entries due are left. A customer's contacts wait while hand-overs to it are under
        way: the contacts they bring may join its journeys (the single stage had them already)."""
        heap, records, store, as_of = self._expiry, self.records, self.store, self.as_of_ms
        for contact_id in popped_due(heap, as_of, budget):
            record = records.get(contact_id)
            if record is None:
                continue
            customer = self.customer_of[contact_id]
            if customer in self.pending:
                self.held.setdefault(customer, []).append(contact_id)
                continue
            due = store.due_span(customer, contact_id, self.keep_ms, as_of) if record.active else None
            if isinstance(due, int):
                heapq.heappush(heap, (due, contact_id))
                continue
            if due is not None:
                for member in store.evict_span(due, customer):
                    self._forget_record(member)
                continue
            late_until = record.seen_us // 1000 + self.keep_ms  # identity only: until no record of it can come
            if late_until >= as_of:
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
            return [(at, TakeOver(customer, message.records, message.emitted, ref, message.passes))]
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
        waiting |= message.passes
        for record in message.records:
            self._file(record, customer, delta=False)
        self.store.take_over(customer, message.emitted)
        if not waiting:
            del self.pending[customer]
            for contact_id in self.held.pop(customer, ()):
                heapq.heappush(self._expiry, (0, contact_id))  # due at once
        return []

    def _file(self, incoming: ContactRecord, customer: str, *, delta: bool) -> None:
        """File a record under `customer`: a forwarded delta (its intent before is known, as in
        `Stitcher.apply`) or a whole record handed over (every intent of the customer rebuilt)."""
        record = self.records.get(incoming.contact_id)
        was: str | bool | None = None if delta else False
        if record is None:
            record = self.records[incoming.contact_id] = incoming
            windows = self.store.config
            first_check = record.seen_us // 1000 + min(windows.repeat_window_ms, windows.dormancy_ms)
            heapq.heappush(self._expiry, (first_check, record.contact_id))
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

    def _move_contacts(self, absorbed: str, survivor: str) -> None:
        contacts = self.contacts_of.pop(absorbed, None)
        if contacts:
            self.contacts_of.setdefault(survivor, set()).update(contacts)
            for contact_id in contacts:
                self.customer_of[contact_id] = survivor

    def _forget_record(self, contact_id: str) -> None:
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
        for contact_id in gone:
            self.records.pop(contact_id, None)
            owner = self.customer_of.pop(contact_id, None)
            if owner is not None and owner not in keys:
                self._unfile(owner, contact_id)
        self.store.forget(keys, gone)

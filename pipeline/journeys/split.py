"""The journey stage split over partitions, as a pure core: one `Resolver` keeps the identity graph
and routes each contact record to the `Builder` that holds its customer; builders keep the
customers' books and journeys. Built and tested in process (`tests/unit/test_journey_split.py`:
the builders' journeys equal one `Stitcher`'s under any interleaving of their queues); the worker
does not run it yet (no Faust shell, no retention, no erasure). Design: README, "Customer
journeys", scale-out.

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
* **A hand-over can chase a customer that moved on:** a builder remembers where each customer it
  gave up went (`moved`) and forwards a `TakeOver` that arrives for it.
* **Event time** is the resolver's (newest event seen, on every `Filed` and `Tick`), so a builder
  judges dormancy as one stage would.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge
from pipeline.journeys.model import Emitted, JourneyConfig, JourneyVersion
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
    """Customer `absorbed` is part of `survivor`, held by builder `to`: send it the book."""

    absorbed: str
    survivor: str
    to: int


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A book handed over: its contacts' records and its journeys' last versions, for `customer`."""

    customer: str
    records: tuple[ContactRecord, ...]
    emitted: tuple[tuple[str, Emitted], ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """The resolver's event time (newest event seen), for builders that got nothing lately."""

    as_of_ms: int


Message = Filed | Renamed | HandOver | TakeOver | Tick
Routed = tuple[int, Message]  # (builder, message)


class Resolver:
    """The identity graph and which builder holds each customer."""

    def __init__(self, builders: int, identity: IdentityConfig | None = None) -> None:
        self.builders = builders
        self.graph = IdentityGraph(identity)
        self.owner: dict[str, int] = {}  # customer key -> builder
        self.as_of_ms = 0

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
        for link in links:
            merges += graph.link_values(*link).merges
        self.as_of_ms = max(self.as_of_ms, seen_us // 1000)
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
                out.append((absorbed_at, HandOver(merge.absorbed, merge.survivor, survivor_at)))
        customer = graph.customer_of_contact(contact_id)
        assert customer is not None
        at = owner.get(customer)
        if at is None:
            at = owner[customer] = self.builder_of(customer)
        return out, customer, at

    def tick(self) -> list[Routed]:
        return [(builder, Tick(self.as_of_ms)) for builder in range(self.builders)]


class Builder:
    """One builder partition: its customers' contact records, books and journeys."""

    def __init__(self, index: int, journeys: JourneyConfig | None = None) -> None:
        self.index = index
        self.store = JourneyStore(journeys)
        self.records: dict[str, ContactRecord] = {}
        self.contacts_of: dict[str, set[str]] = {}  # customer -> its contacts held here (any record)
        self.moved: dict[str, tuple[str, int]] = {}  # customer given up -> (its new key, builder)
        self.as_of_ms = 0

    def handle(self, message: Message) -> list[Routed]:
        """Apply one message; the messages it sends to other builders."""
        if isinstance(message, Filed):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
            self._file(message.record, message.customer, delta=True)
        elif isinstance(message, Tick):
            self.as_of_ms = max(self.as_of_ms, message.as_of_ms)
        elif isinstance(message, Renamed):
            self.store.apply_merge(Merge(message.survivor, message.absorbed))
            self._move_contacts(message.absorbed, message.survivor)
            self.moved[message.absorbed] = (message.survivor, self.index)
        elif isinstance(message, HandOver):
            contacts = self.contacts_of.pop(message.absorbed, set())
            records = tuple(self.records.pop(c) for c in sorted(contacts))
            emitted = self.store.hand_over(message.absorbed, contacts)
            self.moved[message.absorbed] = (message.survivor, message.to)
            return [(message.to, TakeOver(message.survivor, records, emitted))]
        else:
            customer, at = message.customer, self.index
            for _ in range(len(self.moved) + 1):  # keys never come back: a chain, not a cycle
                if customer not in self.moved:
                    break
                customer, at = self.moved[customer]
                if at != self.index:
                    return [(at, TakeOver(customer, message.records, message.emitted))]
            for record in message.records:
                self._file(record, customer, delta=False)
            self.store.take_over(customer, message.emitted)
        return []

    def changes(self) -> list[JourneyVersion]:
        return self.store.changes(self.as_of_ms or None)

    def _file(self, incoming: ContactRecord, customer: str, *, delta: bool) -> None:
        """File a record under `customer`: a forwarded delta (its intent before is known, as in
        `Stitcher.apply`) or a whole record handed over (every intent of the customer rebuilt)."""
        record = self.records.get(incoming.contact_id)
        was: str | bool | None = None if delta else False
        if record is None:
            record = self.records[incoming.contact_id] = incoming
        else:
            if delta and record.active:
                was = None if record.intent is None else record.intent[2]
            record.merge(incoming)
        self.contacts_of.setdefault(customer, set()).add(record.contact_id)
        if record.active:
            self.store.file(record, customer, was=was)

    def _move_contacts(self, absorbed: str, survivor: str) -> None:
        contacts = self.contacts_of.pop(absorbed, None)
        if contacts:
            self.contacts_of.setdefault(survivor, set()).update(contacts)

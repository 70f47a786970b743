"""The journey stage's pure core: the identity graph, every contact's merged record and the journey
store fed together (`Stitcher`), its retention, erasure, snapshot and restore."""

from __future__ import annotations

import gc
import heapq
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline.events.models import EventBase
from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge, Node, Refusal, Resolution
from pipeline.journeys.model import DAY, Emitted, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord
from pipeline.journeys.store import JourneyStore

SNAPSHOT_VERSION = 2


@dataclass(slots=True)
class Evicted:
    """What one eviction pass changed: contacts whose activity was forgotten (their records are
    identity only now) and contacts forgotten entirely (with their customer's identities)."""

    stripped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    journeys: int = 0
    more: bool = False  # the budget ran out with entries still due: call again


class Stitcher:
    """The identity graph, every contact's merged record and the journey store, fed together: the
    pure core of the journey stage.

    Retention (`evict_due`, event time, driven by a heap of due times so a pass touches only what
    is due): a journey is evicted `close_time` after its last change - `repeat_window + keep`
    after its resolution, or `dormancy + keep` after its last activity when unresolved, and never
    before `keep` after its last activity - by when no later contact can join it and late events
    (bounded by `keep`) have arrived. Its contacts keep only their identity (identifiers and
    links), so the customer is recognised when they come back. A customer none of whose contacts
    is in a journey any more is forgotten entirely (identifiers released, records deleted)
    `identity_retention` after its newest event, links included (with identifiers its links tied
    that no contact holds). Every map of the stage (records,
    books, the graph, emitted versions, both heaps) is pruned by these two rules."""

    def __init__(
        self,
        identity: IdentityConfig | None = None,
        journeys: JourneyConfig | None = None,
        *,
        graph: IdentityGraph | None = None,
        store: JourneyStore | None = None,
        keep_ms: int = DAY,
        identity_retention_ms: int = 30 * DAY,
    ) -> None:
        self.graph = graph or IdentityGraph(identity)
        self.store = store or JourneyStore(journeys)
        self.records: dict[str, ContactRecord] = {}
        self.keep_ms = keep_ms
        self.identity_retention_ms = identity_retention_ms
        self.as_of_ms = 0  # newest event time seen (epoch ms)
        self.record_changes: set[str] = set()  # contact ids whose record changed or went (to persist)
        self._expiry: list[tuple[int, str]] = []  # (check at, contact_id): one entry per record
        self._seq = 0  # arrival order of `observe`d events (the stage uses source offsets)

    def observe(self, event: EventBase) -> Resolution:
        """Feed one event (as a one-event record)."""
        self._seq += 1
        record = ContactRecord(event.contact_id).with_seq(self._seq)
        record.add(event)
        return self.apply(record.with_seq(self._seq))

    def apply(self, delta: ContactRecord) -> Resolution:
        """Merge a contact record (a forwarded delta stamped with its arrival `seq`): tie its
        identifiers, apply the merges it caused, file the contact under its customer."""
        contact_id = delta.contact_id
        record = self.records.get(contact_id)
        was: str | bool | None = None  # the contact's intent before this change (a new contact has none)
        graph = self.graph
        if record is None:
            # the delta is the stage's own object (read from a message): it becomes the record
            record = self.records[contact_id] = delta
            heapq.heappush(self._expiry, (self._first_check(record), contact_id))
            self.record_changes.add(contact_id)
            ids: Iterable[tuple[str, str]] = delta.ids
            links: Iterable[tuple[str, str, str, str]] = delta.links
            tie = True
        else:
            if record.active:
                was = None if record.intent is None else record.intent[2]
            # identifiers and links the contact carried before are in the graph already (or were
            # refused): tied once, at their first arrival, as a restore ties them
            ids = [i for i in delta.ids if i not in record.ids]
            links = [link for link in delta.links if link not in record.links]
            tie = bool(ids or links) or graph.customer_of_contact(contact_id) is None
            if record.merge(delta):
                self.record_changes.add(contact_id)
        self.as_of_ms = max(self.as_of_ms, record.seen_us // 1000)
        merges: list[Merge] = []
        refusals: list[Refusal] = []
        if tie:
            first = graph.add_contact_values(contact_id, ids)
            merges += first.merges
            refusals += first.refusals
            for link in links:
                linked = graph.link_values(*link)
                merges += linked.merges
                refusals += linked.refusals
            for merge in merges:
                self.store.apply_merge(merge)
        customer = graph.customer_of_contact(contact_id)
        assert customer is not None
        if record.active:
            # dirty even when nothing changed: after a crash the re-read input must recompute what
            # the lost process had not written yet (unchanged journeys are skipped by digest)
            self.store.file(record, customer, was=was)
        return Resolution(customer, tuple(merges), tuple(refusals))

    def changes(
        self, as_of: int | None = None, limit: int | None = None, version: int | None = None
    ) -> list[JourneyVersion]:
        return self.store.changes(as_of, limit, version)

    def _first_check(self, record: ContactRecord) -> int:
        return record.seen_us // 1000 + min(self.store.config.repeat_window_ms, self.store.config.dormancy_ms)

    def evict_due(self, as_of: int, budget: int = 10_000) -> Evicted:
        """Evict what is due at `as_of` (rules in the class docstring), at most `budget` heap
        entries per call; what is left due (`more`) stays for the next call, so a caller that does
        not call again until nothing is left lets retention fall behind."""
        out = Evicted()
        heap = self._expiry
        store, graph, records = self.store, self.graph, self.records
        while heap and heap[0][0] < as_of and budget > 0:
            budget -= 1
            _, contact_id = heapq.heappop(heap)
            record = records.get(contact_id)
            if record is None:
                continue
            customer = graph.customer_of_contact(contact_id)
            if record.active and customer is not None:
                due = store.due_span(customer, contact_id, self.keep_ms, as_of)
                if isinstance(due, int):
                    heapq.heappush(heap, (due, contact_id))
                    continue
                if due is not None:
                    for member in store.evict_span(due, customer):
                        records[member].strip()
                        self.record_changes.add(member)
                        out.stripped.append(member)
                    out.journeys += 1
                    contact_id = self._compact_identity(contact_id)
            # identity only now: forget the customer once none of its contacts is in a journey
            members = graph.contacts_with(contact_id) or [contact_id]
            if any(records[m].active for m in members if m in records):
                heapq.heappush(heap, (as_of + self.keep_ms, contact_id))
                continue
            newest = max((records[m].seen_us for m in members if m in records), default=0) // 1000
            drop_at = newest + self.identity_retention_ms
            if drop_at >= as_of:
                heapq.heappush(heap, (drop_at, contact_id))
                continue
            links = [link for member in members if member in records for link in records[member].links]
            graph.drop(contact_id)
            for left_kind, left, right_kind, right in links:
                graph.drop_contactless(left_kind, left)
                graph.drop_contactless(right_kind, right)
            for member in members:
                if records.pop(member, None) is not None:
                    self.record_changes.add(member)
                    out.dropped.append(member)
        out.more = bool(heap) and heap[0][0] < as_of
        return out

    def forget(
        self,
        contact_ids: Iterable[str],
        identifiers: Iterable[tuple[str, str]] = (),
        customers: Iterable[str] = (),
    ) -> int:
        """Erase a person (`touchline forget`): every contact, identifier and journey of the
        customers holding one of `contact_ids`, `identifiers` (`(kind, value)` as stored) or
        customer keys `customers`. The records and journey entries dropped are in `record_changes`
        and `store.emitted_changes` (the stage deletes them from its tables). Returns the state
        entries dropped (contact records + journey entries)."""
        store, graph = self.store, self.graph
        contacts = set(contact_ids)
        keys = set(customers)
        pending_ids, pending_contacts = set(identifiers), set(contacts)
        for key in keys:
            book = store.books.get(key)
            if book is not None:
                pending_contacts.update(book.records)
        # a book may hold a contact of a component not named yet (and a component a book's contact):
        # until nothing new turns up
        while pending_contacts or pending_ids:
            found, found_keys = graph.forget(pending_contacts, pending_ids)
            contacts |= pending_contacts
            pending_ids = set()
            new_keys = found_keys - keys
            keys |= found_keys
            more = set(found)
            for key in new_keys:
                book = store.books.get(key)
                if book is not None:
                    more.update(book.records)
            pending_contacts = more - contacts
            contacts |= more
        dropped = 0
        for contact_id in contacts:
            if self.records.pop(contact_id, None) is not None:
                self.record_changes.add(contact_id)
                dropped += 1
            customer = store.customer_of(contact_id)
            if customer is not None:
                keys.add(customer)
        return dropped + store.forget(keys, contacts)

    def _compact_identity(self, contact_id: str) -> str:
        """Fold the identity of every contact of `contact_id`'s customer that is not in a journey
        (evicted contacts, identity links) into one of them, the carrier (the earliest to arrive),
        and forget the others, so a customer who keeps coming back holds one identity-only record,
        not one per contact ever made. Returns the carrier's contact id."""
        records = self.records
        idle = [m for m in self.graph.contacts_with(contact_id) if m in records and not records[m].active]
        if len(idle) < 2:
            return contact_id
        carrier_id = min(idle, key=lambda m: (records[m].seq, m))
        carrier = records[carrier_id]
        for member in idle:
            if member == carrier_id:
                continue
            carrier.merge(records.pop(member))
            self.graph.forget_contact(member)
            self.record_changes.add(member)
        self.record_changes.add(carrier_id)
        return carrier_id

    def record_state(self, contact_id: str) -> bytes | None:
        """A contact's record in its state form (with its anchor in the identity graph), None when
        the contact is gone."""
        record = self.records.get(contact_id)
        if record is None:
            return None
        return record.to_state_json(self.graph.anchor_of(contact_id, record.ids))

    def identity_changes(self) -> list[tuple[Node, list[Node] | None]]:
        """The identity graph's component entries changed since the last call (None: delete)."""
        return self.graph.component_changes()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: every contact record and the emitted journeys (what the stage keeps in
        its tables) plus the pending changes."""
        return {
            "version": SNAPSHOT_VERSION,
            "records": [self.records[c].to_dict() for c in sorted(self.records)],
            "emitted": {j: e.to_dict() for j, e in sorted(self.store._emitted.items())},
            "dirty": {c: None if i is None else sorted(i, key=str) for c, i in sorted(self.store.dirty.items())},
            "seq": self._seq,
        }

    @classmethod
    def restore(
        cls,
        data: Mapping[str, Any],
        identity: IdentityConfig | None = None,
        journeys: JourneyConfig | None = None,
    ) -> Stitcher:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported journey snapshot version {data.get('version')!r}")
        stitcher = cls.from_state(
            (ContactRecord.from_dict(r) for r in data["records"]),
            ((str(j), Emitted.from_dict(e)) for j, e in data["emitted"].items()),
            identity,
            journeys,
        )
        stitcher.store.dirty = {str(c): None if i is None else set(i) for c, i in data["dirty"].items()}
        stitcher._seq = int(data["seq"])
        return stitcher

    @classmethod
    def from_state(
        cls,
        records: Iterable[ContactRecord],
        emitted: Iterable[tuple[str, Emitted]],
        identity: IdentityConfig | None = None,
        journeys: JourneyConfig | None = None,
        *,
        keep_ms: int = DAY,
        identity_retention_ms: int = 30 * DAY,
        components: Iterable[list[Node]] = (),
    ) -> Stitcher:
        """The stitcher the persisted state describes; no event is re-read. The identity graph is
        loaded from its persisted `components` with each record hung on its anchor; a record
        without a usable anchor (state written before anchors existed, or a crash between the
        writes of the two tables) is tied again from its identifiers and links in their original
        arrival order (`seq`), and is then in `record_changes` (with the components it touched in
        `identity_changes`) so the next checkpoint writes it with its anchor."""
        with collection_paused():
            return cls._from_state(records, emitted, identity, journeys, keep_ms, identity_retention_ms, components)

    @classmethod
    def _from_state(
        cls,
        records: Iterable[ContactRecord],
        emitted: Iterable[tuple[str, Emitted]],
        identity: IdentityConfig | None,
        journeys: JourneyConfig | None,
        keep_ms: int,
        identity_retention_ms: int,
        components: Iterable[list[Node]],
    ) -> Stitcher:
        stitcher = cls(identity, journeys, keep_ms=keep_ms, identity_retention_ms=identity_retention_ms)
        graph = stitcher.graph
        graph.load_components(components)
        attach = graph.attach
        ops: list[tuple[int, int, int, str, Any]] = []
        append = ops.append
        kept = stitcher.records
        n = 0
        for record in records:
            contact_id, first_seq, ids = record.contact_id, record.seq, record.ids
            kept[contact_id] = record
            anchor, record.anchor = record.anchor, None
            if anchor is not None and attach(contact_id, anchor or None):
                continue
            stitcher.record_changes.add(contact_id)  # written again, with its anchor
            if all(seq == first_seq for seq in ids.values()):  # the usual case: one arrival
                append((first_seq, 0, n, contact_id, list(ids)))
                n += 1
            else:
                by_seq: dict[int, list[tuple[str, str]]] = {first_seq: []}
                for ident, seq in ids.items():
                    by_seq.setdefault(seq, []).append(ident)
                for seq, idents in by_seq.items():
                    append((seq, 0, n, contact_id, idents))
                    n += 1
            for link, seq in record.links.items():
                append((seq, 1, n, contact_id, link))
                n += 1
        ops.sort()  # n is unique: tuples never compare past it
        graph.restoring = True
        for _, kind, _, contact_id, payload in ops:
            if kind == 0:
                graph.add_contact_values(contact_id, payload)
            else:
                graph.link_values(*payload)
        graph.restoring = False
        store = stitcher.store
        as_of = 0
        expiry = stitcher._expiry
        customers = graph.customers_of_contacts(c for c, r in stitcher.records.items() if r.active)
        for contact_id, record in stitcher.records.items():
            as_of = max(as_of, record.seen_us)
            expiry.append((stitcher._first_check(record), contact_id))
            if record.active:
                store.file(record, customers[contact_id], dirty=False)
        heapq.heapify(expiry)
        stitcher.as_of_ms = as_of // 1000
        for journey_id, entry in emitted:
            store.restore_emitted(journey_id, entry)
        store.restored()
        stitcher._seq = max((r.seq for r in stitcher.records.values()), default=0)
        return stitcher


# the pauses under way (`collection_paused`), shared by the threads that restore at once
_pauses = {"count": 0, "collecting": True, "freeze": False}
_pauses_lock = threading.Lock()


@contextmanager
def collection_paused(*, freeze: bool = False) -> Iterator[None]:
    """No cyclic collection meanwhile. A restore allocates millions of objects that all live on:
    the collector would scan the growing heap again and again for nothing (they are freed by
    reference counting when evicted). Decoding a week's records with it running took 7.3-7.7 s
    instead of 2.7 s (`benchmarks/journeys.py` state, 230k records).

    `freeze`: what exists at the end is moved out of the collector's reach (`gc.freeze`, as the
    worker does with its long-lived objects every 10 s). Otherwise the first collection after it
    scans every object the restore made: three such scans took 4.4 s of a profiled restore.

    Pauses that overlap (nested, or the split stage's resolver and builders restoring on threads at
    once) are one: the collector resumes, and what exists is frozen if any asked, when the last
    ends. A day's restore of four builders took 3.1-4.6 s with each thread's end resuming it
    (benchmarks/journey_worker.py --days 1) and 2.6 s with one pause."""
    with _pauses_lock:
        if _pauses["count"] == 0:
            _pauses["collecting"], _pauses["freeze"] = gc.isenabled(), False
            gc.disable()
        _pauses["count"] += 1
        _pauses["freeze"] = _pauses["freeze"] or freeze
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses["count"] -= 1
            if _pauses["count"] == 0:
                if _pauses["freeze"]:
                    gc.freeze()
                if _pauses["collecting"]:
                    gc.enable()

"""The journey store: customers' books and the journeys emitted from them.

`JourneyStore` keeps a `CustomerBook` (each contact's merged record, so summaries stay a pure
function of the event set) per customer key, applies identity `Merge`s, and `changes(as_of)`
returns every journey whose content changed since the last call with a per-journey `version` that
only grows (for `ReplacingMergeTree(version, is_deleted)`), plus deletions of journeys that no
longer exist (their contacts were regrouped after a merge or a late event).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import operator
from collections.abc import Iterable

from pipeline.frozen import builder
from pipeline.journeys.contact import ContactSummary
from pipeline.journeys.identity import Merge
from pipeline.journeys.model import DAY, Emitted, Journey, JourneyConfig, JourneySpan, JourneyStep, JourneyVersion
from pipeline.journeys.record import ContactRecord
from pipeline.journeys.rules import StepCache, build_journeys, journey_span

_new_emitted = builder(Emitted)
_new_version = builder(JourneyVersion)


class CustomerBook:
    """One customer's contacts with activity: their merged records (by contact_id) and cached
    summaries."""

    def __init__(self, customer: str) -> None:
        self.customer = customer
        self.records: dict[str, ContactRecord] = {}
        self._summaries: dict[str, ContactSummary] = {}
        self._stale: set[str] = set()  # contacts whose summary is to be (re)computed
        self.steps: StepCache = {}  # contact id -> its summary and journey step, for `build_journeys`

    def file(self, record: ContactRecord) -> None:
        """File (or re-file after it changed) a contact's record."""
        self.records[record.contact_id] = record
        self._stale.add(record.contact_id)

    def take(self, contact_id: str) -> ContactRecord | None:
        """Remove a contact, returning its record."""
        self._summaries.pop(contact_id, None)
        self._stale.discard(contact_id)
        self.steps.pop(contact_id, None)
        return self.records.pop(contact_id, None)

    def merge(self, other: CustomerBook) -> None:
        """Absorb another book."""
        for contact_id, record in other.records.items():
            mine = self.records.get(contact_id)
            if mine is None:
                self.records[contact_id] = record
            elif mine is not record:
                mine.merge(record)
            self._stale.add(contact_id)

    @property
    def summaries(self) -> dict[str, ContactSummary]:
        """Contact summaries by contact_id (recomputed for contacts whose records changed only: not
        a walk of a long-standing customer's every contact per change)."""
        if self._stale:
            records, summaries = self.records, self._summaries
            for contact_id in self._stale:
                summaries[contact_id] = records[contact_id].summary()
            self._stale.clear()
        return self._summaries

    def journeys(self, config: JourneyConfig, as_of: int | None = None) -> list[Journey]:
        return build_journeys(self.summaries.values(), config, customer=self.customer, as_of=as_of, steps=self.steps)


_STEP_VALUES = operator.attrgetter(*JourneyStep.__dataclass_fields__)
_JOURNEY_VALUES = operator.attrgetter(
    *(f for f in Journey.__dataclass_fields__ if f not in ("steps", "csat", "ces", "nps"))
)


def digest(journey: Journey) -> str:
    """A stable digest of a journey's content (the same in every process, unlike `hash`): of a
    plain tuple of its values (the dataclasses' own repr, the scores' included, took 3 times longer)."""
    scores = tuple(None if s is None else (s.score, s.at) for s in (journey.csat, journey.ces, journey.nps))
    content = (_JOURNEY_VALUES(journey), scores, [_STEP_VALUES(step) for step in journey.steps])
    return hashlib.blake2b(repr(content).encode(), digest_size=12).hexdigest()


class JourneyStore:
    """Customer books, identity merges, and change tracking with per-journey versions.

    Versions: a caller that numbers its rounds gives `changes` the round's `version`, and every
    journey the round writes gets it (a retraction too), or its last version + 1 if that is higher
    (the journey stage: `pipeline.worker.journeys.round_version`). Otherwise a journey written
    before gets its last version + 1; a journey written for the first time (or again after it was
    evicted) gets `as_of * 1000` (epoch ms of the newest event seen, times 1000), which exceeds every
    version written at an earlier `as_of`. Both are monotonic across restarts because the last
    versions are persisted (`Emitted`) and `as_of` only grows."""

    def __init__(self, config: JourneyConfig | None = None) -> None:
        self.config = config or JourneyConfig()
        self.books: dict[str, CustomerBook] = {}
        self._customer_of: dict[str, str] = {}  # contact_id -> customer key (contacts with activity)
        # customer -> intents whose journeys may have changed (None: all of them). Journeys of one
        # intent depend only on the customer's contacts with that intent, so a contact's change
        # rebuilds its intent's journeys, not all of a long-standing customer's.
        self.dirty: dict[str, set[str | None] | None] = {}
        self._emitted: dict[str, Emitted] = {}
        self._journeys_of: dict[str, set[str]] = {}  # customer -> journey ids emitted live under it
        self._deadlines: list[tuple[int, str]] = []  # (dormant after, customer)
        # the round of `changes` under way (sliced): its customers still to rebuild (last first),
        # what was dirty when it started and the journeys it rebuilt so far; empty between rounds
        self._round_customers: list[str] = []
        self._round_dirty: dict[str, set[str | None] | None] = {}
        self._round_current: dict[str, Journey] = {}
        self.emitted_changes: set[str] = set()  # journey ids whose `Emitted` changed (to persist)

    def mark(self, customer: str, intents: Iterable[str | None] | None = None) -> None:
        """Note that `customer`'s journeys of `intents` (None: all) may have changed."""
        if intents is None:
            self.dirty[customer] = None
            return
        known = self.dirty.get(customer, set())
        if known is not None:
            known.update(intents)
            self.dirty[customer] = known
        elif customer not in self.dirty:
            self.dirty[customer] = set(intents)

    def file(self, record: ContactRecord, customer: str, *, dirty: bool = True, was: str | bool | None = False) -> None:
        """File a contact's (merged) record under `customer` (its key from the identity graph). A
        contact filed under another key before is moved. `was`: the contact's intent before this
        change (False: unknown, so every journey of the customer is recomputed)."""
        contact_id = record.contact_id
        now = None if record.intent is None else record.intent[2]
        intents: set[str | None] | None = None if was is False else {was if isinstance(was, str) else None, now}
        previous = self._customer_of.get(contact_id)
        if previous is not None and previous != customer:
            old = self.books.get(previous)
            if old is not None:
                old.take(contact_id)
                if not old.records:
                    del self.books[previous]
            self.mark(previous, intents)
        self._customer_of[contact_id] = customer
        self._book(customer).file(record)
        if dirty:
            self.mark(customer, intents)

    def remove(self, contact_id: str) -> None:
        """Forget a contact (evicted)."""
        customer = self._customer_of.pop(contact_id, None)
        book = None if customer is None else self.books.get(customer)
        if book is not None:
            book.take(contact_id)
            if not book.records:
                del self.books[book.customer]

    def apply_merge(self, merge: Merge) -> None:
        """Move the absorbed customer's book into the survivor's."""
        if merge.survivor == merge.absorbed:
            return
        absorbed = self.books.pop(merge.absorbed, None)
        self.dirty.pop(merge.absorbed, None)
        owned = self._journeys_of.pop(merge.absorbed, set())
        self._journeys_of.setdefault(merge.survivor, set()).update(owned)
        if absorbed is None:
            return
        self._book(merge.survivor).merge(absorbed)
        for contact_id in absorbed.records:
            self._customer_of[contact_id] = merge.survivor
        self.mark(merge.survivor)

    def hand_over(self, customer: str, contacts: Iterable[str]) -> tuple[tuple[str, Emitted], ...]:
        """Give a customer up (its book moves to another builder, `pipeline.journeys.split`;
        between rounds of `changes`): drop its book and return, dropped, the last versions of its
        journeys and of the journeys named after its `contacts`, so that their new owner continues
        their versions."""
        held = set(contacts)
        book = self.books.pop(customer, None)
        if book is not None:
            held.update(book.records)
        self.dirty.pop(customer, None)
        journey_ids = self._journeys_of.pop(customer, set()) | {f"j-{c}" for c in held}
        for contact_id in held:
            if self._customer_of.get(contact_id) == customer:
                del self._customer_of[contact_id]
        out: list[tuple[str, Emitted]] = []
        for journey_id in sorted(journey_ids):
            entry = self._emitted.pop(journey_id, None)
            if entry is not None:
                out.append((journey_id, entry))
                self.emitted_changes.add(journey_id)
        return tuple(out)

    def take_over(self, customer: str, emitted: Iterable[tuple[str, Emitted]]) -> None:
        """Take the last versions of a customer's journeys handed over with its book (`hand_over`),
        the customer's records being filed already. Two owners may each have written a journey
        (a contact's newer record reached the new owner first), even at the same version (both
        from their event time), so every journey that either holds live is written again at the
        next round, above both versions: as itself, or as a retraction."""
        for journey_id, entry in emitted:
            mine = self._emitted.get(journey_id)
            top = entry if mine is None or entry.version > mine.version else mine
            if entry.deleted and (mine is None or mine.deleted):
                self._emit(journey_id, top)
                continue
            # no digest: written again (with a dormancy deadline under this customer when open)
            self._emit(journey_id, dataclasses.replace(top, deleted=False, digest=""))
            self._journeys_of.setdefault(customer, set()).add(journey_id)
        self.mark(customer)

    def customer_of(self, contact_id: str) -> str | None:
        return self._customer_of.get(contact_id)

    def journeys(self, customer: str, as_of: int | None = None) -> list[Journey]:
        book = self.books.get(customer)
        return [] if book is None else book.journeys(self.config, as_of)

    def all_journeys(self, as_of: int | None = None) -> list[Journey]:
        return [j for customer in sorted(self.books) for j in self.journeys(customer, as_of)]

    def emitted(self, journey_id: str) -> Emitted | None:
        return self._emitted.get(journey_id)

    def _emit(self, journey_id: str, entry: Emitted) -> None:
        self._emitted[journey_id] = entry
        self.emitted_changes.add(journey_id)

    @property
    def pending(self) -> bool:
        """True while a round of `changes(limit=...)` has customers left to rebuild."""
        return bool(self._round_customers)

    def changes(
        self, as_of: int | None = None, limit: int | None = None, version: int | None = None
    ) -> list[JourneyVersion]:
        """Journeys that changed since the last round (including open journeys that became dormant
        by `as_of`) and deletions of journeys that no longer exist. With `limit`, a round is taken
        in slices of at most `limit` customers (call again while `pending`, with the same
        `version`); deletions come with the last slice, once every journey of the round is rebuilt.
        `version`: the round's (class docstring)."""
        if not self._round_customers:  # a new round: what is dirty now
            deadlines = self._deadlines
            while deadlines and as_of is not None and deadlines[0][0] < as_of:
                self.mark(heapq.heappop(deadlines)[1])
            self._round_dirty, self.dirty = self.dirty, {}
            self._round_customers = sorted(self._round_dirty, reverse=True)
            self._round_current = {}
        customers = self._round_customers
        take = len(customers) if limit is None else min(limit, len(customers))
        sliced = [customers.pop() for _ in range(take)]
        out = self._rebuild(sliced, as_of, version)
        if not customers:
            out += self._retract(self._round_dirty, self._round_current, version)
            self._round_dirty, self._round_current = {}, {}
        return out

    def _rebuild(self, customers: list[str], as_of: int | None, round_version: int | None) -> list[JourneyVersion]:
        dirty = self._round_dirty
        deadlines = self._deadlines
        emitted, journeys_of = self._emitted, self._journeys_of
        dormancy = self.config.dormancy_ms
        floor = round_version or (1 if as_of is None else max(1, as_of * 1000))
        current: dict[str, Journey] = {}
        for customer in customers:
            book = self.books.get(customer)
            if book is None:
                continue
            intents = dirty[customer]
            if intents is None:
                rebuilt = book.journeys(self.config, as_of)
            else:
                contacts = [c for c in book.summaries.values() if c.intent in intents]
                rebuilt = build_journeys(contacts, self.config, customer=customer, as_of=as_of, steps=book.steps)
            for journey in rebuilt:
                current[journey.journey_id] = journey
        out: list[JourneyVersion] = []
        for journey_id, journey in current.items():
            previous = emitted.get(journey_id)
            content = digest(journey)
            customer = journey.customer
            if previous is not None and not previous.deleted and previous.digest == content:
                if previous.customer != customer:  # renamed only: keep the index right
                    _discard(journeys_of, previous.customer, journey_id)
                    journeys_of.setdefault(customer, set()).add(journey_id)
                continue
            contact_ids = tuple([step.contact_id for step in journey.steps])
            removed: tuple[str, ...] = ()
            if previous is not None and not previous.deleted:
                if previous.contact_ids != contact_ids:
                    removed = tuple(c for c in previous.contact_ids if c not in contact_ids)
                if previous.customer != customer:
                    _discard(journeys_of, previous.customer, journey_id)
            version = floor if previous is None else max(previous.version + 1, round_version or 0)
            open_since = journey.last_activity_at if journey.status == "open" else None
            self._emit(
                journey_id, _new_emitted(version, False, customer, contact_ids, content, open_since, journey.intent)
            )
            owned = journeys_of.get(customer)
            if owned is None:
                journeys_of[customer] = {journey_id}
            else:
                owned.add(journey_id)
            # one deadline per open period and customer key (not one per version: the heap would grow by
            # every version for the 14 days of dormancy)
            if open_since is not None and (
                previous is None or previous.open_since != open_since or previous.customer != customer
            ):
                heapq.heappush(deadlines, (open_since + dormancy, customer))
            out.append(_new_version(journey, version, False, removed))
        self._round_current.update(current)
        return out

    def _retract(
        self, dirty: dict[str, set[str | None] | None], current: dict[str, Journey], round_version: int | None
    ) -> list[JourneyVersion]:
        out: list[JourneyVersion] = []
        for customer in sorted(dirty):
            intents = dirty[customer]
            # not `set - current.keys()`: that copies all of `current` once per customer
            for journey_id in sorted(j for j in self._journeys_of.get(customer, ()) if j not in current):
                previous = self._emitted.get(journey_id)
                if previous is not None and intents is not None and previous.intent not in intents:
                    continue  # another intent's journey: not rebuilt, so not gone
                self._journeys_of[customer].discard(journey_id)
                if previous is None or previous.deleted:
                    continue
                last = self._retracted(journey_id, previous)
                version = max(previous.version + 1, round_version or 0)
                self._emit(
                    journey_id, Emitted(version, True, previous.customer, (), previous.digest, None, previous.intent)
                )
                out.append(JourneyVersion(last, version, True, previous.contact_ids))
        return out

    def _retracted(self, journey_id: str, previous: Emitted) -> Journey:
        """A stand-in of a retracted journey for its deletion rows (only id, customer and contacts
        matter in a retraction)."""
        steps = tuple(
            JourneyStep(n, c, "", 0, 0, None, None, None, None, False, False, False, 0, False, False, False)
            for n, c in enumerate(previous.contact_ids, start=1)
        )
        return Journey(
            journey_id, previous.customer, None, "open", 0, 0, steps, False, None, None, None, None,
            None, None, None, 0.0,
        )  # fmt: skip

    def span_of(self, customer: str, contact_id: str) -> JourneySpan | None:
        """What retention needs of the journey of `customer` holding `contact_id`."""
        book = self.books.get(customer)
        return None if book is None else journey_span(contact_id, book.summaries, self.config)

    def forget_journey(self, journey: Journey | JourneySpan, customer: str) -> None:
        """Drop what is remembered of an evicted journey of `customer` (and of retracted journeys
        named after its contacts)."""
        for journey_id in (journey.journey_id, *(f"j-{c}" for c in journey.contact_ids)):
            entry = self._emitted.pop(journey_id, None)
            if entry is None:
                continue
            self.emitted_changes.add(journey_id)
            # only the customers it was filed under (not a scan of every customer per journey)
            for owner in {entry.customer, customer}:
                owned = self._journeys_of.get(owner)
                if owned is not None:
                    owned.discard(journey_id)
                    if not owned:
                        del self._journeys_of[owner]

    def due_span(self, customer: str, contact_id: str, keep_ms: int, as_of: int) -> JourneySpan | int | None:
        """Retention of the journey of `customer` holding `contact_id`: the journey when it closed
        before `as_of` (`evict_span` it), the time it closes when not yet, None when the contact
        is in none."""
        journey = self.span_of(customer, contact_id)
        if journey is None:
            return None
        closes = self.close_time(journey, keep_ms)
        return closes if closes >= as_of else journey

    def evict_span(self, journey: JourneySpan, customer: str) -> tuple[str, ...]:
        """Forget a closed journey of `customer` and its contacts (`due_span`); returns them."""
        for contact_id in journey.contact_ids:
            self.remove(contact_id)
        self.forget_journey(journey, customer)
        return journey.contact_ids

    def close_time(self, journey: Journey | JourneySpan, keep_ms: int) -> int:
        """Event time after which no later contact can join `journey` (and late events of its
        contacts, up to `keep_ms` late, have arrived)."""
        if journey.resolved_at is not None:
            closed = journey.resolved_at + self.config.repeat_window_ms + keep_ms
        else:
            closed = journey.last_activity_at + self.config.dormancy_ms + keep_ms
        return max(closed, journey.last_activity_at + keep_ms)

    def evict(self, as_of: int, *, keep_ms: int = DAY) -> int:
        """Forget contacts of journeys no later contact can join any more - resolved more than
        `repeat_window + keep_ms` ago, or inactive for more than `dormancy + keep_ms` - together
        with their emitted versions, scanning every book (the running stage evicts incrementally
        through `Stitcher.evict_due`). Returns the contacts forgotten."""
        forgotten = 0
        for customer in sorted(self.books):
            for journey in self.journeys(customer, as_of):
                if self.close_time(journey, keep_ms) >= as_of:
                    continue
                for contact_id in journey.contact_ids:
                    self.remove(contact_id)
                    forgotten += 1
                self.forget_journey(journey, journey.customer)
        return forgotten

    def forget(self, customers: Iterable[str], contact_ids: Iterable[str]) -> int:
        """Erase a person: their books, pending changes and what is remembered of their journeys
        (under the customer keys, or named after one of their contacts). Nothing is emitted: the
        rows are deleted from the store by the caller. Returns the journey entries dropped."""
        contacts = set(contact_ids)
        for contact_id in contacts:
            self.remove(contact_id)
        journey_ids = {f"j-{c}" for c in contacts}
        for customer in set(customers):
            book = self.books.pop(customer, None)
            for contact_id in () if book is None else book.records:
                self._customer_of.pop(contact_id, None)
            self.dirty.pop(customer, None)
            journey_ids.update(self._journeys_of.pop(customer, ()))
        dropped = 0
        for journey_id in journey_ids:
            entry = self._emitted.pop(journey_id, None)
            if entry is not None:
                self.emitted_changes.add(journey_id)
                owned = self._journeys_of.get(entry.customer)
                if owned is not None:
                    owned.discard(journey_id)
                dropped += 1
        return dropped

    def restored(self) -> None:
        """After `restore_emitted` of every entry: order the dormancy deadlines."""
        heapq.heapify(self._deadlines)

    def restore_emitted(self, journey_id: str, entry: Emitted) -> None:
        self._emitted[journey_id] = entry
        if not entry.deleted:
            self._journeys_of.setdefault(entry.customer, set()).add(journey_id)
            if entry.open_since is not None:
                self._deadlines.append((entry.open_since + self.config.dormancy_ms, entry.customer))

    def _book(self, customer: str) -> CustomerBook:
        book = self.books.get(customer)
        if book is None:
            book = self.books[customer] = CustomerBook(customer)
        return book


def _discard(index: dict[str, set[str]], customer: str, journey_id: str) -> None:
    owned = index.get(customer)
    if owned is not None:
        owned.discard(journey_id)

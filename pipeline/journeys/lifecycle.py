"""Customer journeys: a pure function of one customer's contact summaries, and the store that keeps
them current as events and identity merges arrive.

Rules of `build_journeys` (times epoch ms; they match the simulator's model, `pipeline.simulator`):

* Contacts are taken in `(started_at, contact_id)` order.
* A contact whose intent is unknown (no event carries one) is a journey of its own: it never joins
  a journey and nothing joins it (without an intent there is no issue to match).
* Otherwise the customer's latest journey for the same intent, if any, is joined when
  - it is **unresolved** (its latest contact is not resolved now) and **not dormant** at the new
    contact's start: `start - last_activity_at <= dormancy` (default 14 days), or
  - it is **resolved** and the new contact starts within the repeat-contact window after that
    resolution: `start - resolved_at <= repeat_window` (default 7 days). The journey is then
    **reopened** and cannot be first-contact resolved. (A contact that starts before the latest
    contact's resolution joins by the first rule: the journey was unresolved when it started.)
  Otherwise the contact starts a new journey, which becomes the latest for the intent.
* A journey is **resolved** when its latest contact is resolved now; `resolved_at` is that
  contact's resolution and `resolving_channel` its channel. **Status** at `as_of`: `resolved`;
  else `dormant` when `as_of - last_activity_at > dormancy`; else `open` (never dormant without
  `as_of`).
* **First-contact resolved**: exactly one contact, resolved, never reopened (no `reopened` event
  and no repeat contact) - the simulator truth's definition.
* `journey_id` is `j-<first contact id>`, so recomputation after merges or late events converges.
* Times: `time_to_first_human_s` = first human response in any contact - journey start;
  `time_to_resolution_s` = resolved_at - journey start; seconds with millisecond precision.
* Surveys: the latest CSAT / CES / NPS answer over the journey's contacts (by answer time).
* `effort` is `pipeline.journeys.effort.effort_score` of the journey's metrics.

`JourneyStore` keeps a `CustomerBook` (the events of each contact, so summaries stay a pure
function of the event set) per customer key, applies identity `Merge`s, and `changes(as_of)`
returns every journey whose content changed since the last call with a per-journey `version` that
only grows (for `ReplacingMergeTree(version, is_deleted)`), plus deletions of journeys that no
longer exist (their contacts were regrouped after a merge or a late event).
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import itertools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.events.models import EventBase
from pipeline.journeys.contact import ContactSummary, Score, from_ms
from pipeline.journeys.effort import EffortInputs, effort_score
from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge, Refusal, Resolution
from pipeline.journeys.record import ContactRecord

SECOND = 1000
DAY = 86_400 * SECOND
SNAPSHOT_VERSION = 2

Status = Literal["open", "resolved", "dormant"]


@dataclass(frozen=True, slots=True)
class JourneyConfig:
    """Windows of the journey rules, in milliseconds."""

    repeat_window_ms: int = 7 * DAY
    dormancy_ms: int = 14 * DAY


@dataclass(frozen=True, slots=True)
class JourneyStep:
    """One contact of a journey (step numbers start at 1)."""

    step: int
    contact_id: str
    channel: str
    started_at: int
    last_activity_at: int
    ended_at: int | None
    first_human_at: int | None
    resolved_at: int | None
    resolved_by: str | None
    was_bot: bool
    handed_off: bool
    bot_contained: bool
    transfers: int
    ivr_zero_out: bool
    abandoned: bool
    reopened: bool


@dataclass(frozen=True, slots=True)
class Journey:
    """One customer issue (customer x intent) and the contacts it took."""

    journey_id: str
    customer: str
    intent: str | None
    status: Status
    started_at: int
    last_activity_at: int
    steps: tuple[JourneyStep, ...]
    reopened: bool
    resolved_at: int | None
    resolved_by: str | None
    first_human_at: int | None
    first_human_channel: str | None
    csat: Score | None
    ces: Score | None
    nps: Score | None
    effort: float

    @property
    def contact_ids(self) -> tuple[str, ...]:
        return tuple(s.contact_id for s in self.steps)

    @property
    def channel_path(self) -> tuple[str, ...]:
        return tuple(s.channel for s in self.steps)

    @property
    def contacts(self) -> int:
        return len(self.steps)

    @property
    def channel_switches(self) -> int:
        path = self.channel_path
        return sum(1 for a, b in itertools.pairwise(path) if a != b)

    @property
    def transfers(self) -> int:
        return sum(s.transfers for s in self.steps)

    @property
    def bot_handoffs(self) -> int:
        return sum(1 for s in self.steps if s.handed_off)

    @property
    def bot_contained_contacts(self) -> int:
        return sum(1 for s in self.steps if s.bot_contained)

    @property
    def ivr_zero_outs(self) -> int:
        return sum(1 for s in self.steps if s.ivr_zero_out)

    @property
    def abandoned_contacts(self) -> int:
        return sum(1 for s in self.steps if s.abandoned)

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None

    @property
    def resolving_channel(self) -> str | None:
        return self.steps[-1].channel if self.resolved_at is not None else None

    @property
    def first_contact_resolved(self) -> bool:
        return len(self.steps) == 1 and self.resolved_at is not None and not self.reopened

    @property
    def starts_with_bot(self) -> bool:
        return self.steps[0].was_bot

    @property
    def time_to_first_human_s(self) -> float | None:
        return None if self.first_human_at is None else round((self.first_human_at - self.started_at) / 1000, 3)

    @property
    def time_to_resolution_s(self) -> float | None:
        return None if self.resolved_at is None else round((self.resolved_at - self.started_at) / 1000, 3)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (inverse of `journey_from_dict`)."""
        return asdict(self)


def journey_from_dict(data: Mapping[str, Any]) -> Journey:
    def score(value: Any) -> Score | None:
        return None if value is None else Score(int(value["score"]), int(value["at"]))

    fields = dict(data)
    fields["steps"] = tuple(JourneyStep(**step) for step in data["steps"])
    for name in ("csat", "ces", "nps"):
        fields[name] = score(data[name])
    return Journey(**fields)


# --------------------------------------------------------------------------------------------------
# The pure function


@dataclass(slots=True)
class _Open:
    contacts: list[ContactSummary] = field(default_factory=list)
    reopened: bool = False
    last_activity_at: int = 0


def _order(contact: ContactSummary) -> tuple[int, str]:
    return (contact.started_at, contact.contact_id)


def build_journeys(
    contacts: Iterable[ContactSummary],
    config: JourneyConfig | None = None,
    *,
    customer: str = "",
    as_of: int | None = None,
) -> list[Journey]:
    """The journeys of one customer's contacts (rules in the module docstring), in start order."""
    config = config or JourneyConfig()
    groups: list[_Open] = []
    latest: dict[str, _Open] = {}
    for contact in sorted(contacts, key=_order):
        group: _Open | None = None
        intent = contact.intent
        if intent is not None:
            candidate = latest.get(intent)
            if candidate is not None:
                last = candidate.contacts[-1]
                resolved_at = last.resolved_at
                if resolved_at is None or contact.started_at < resolved_at:
                    if contact.started_at - candidate.last_activity_at <= config.dormancy_ms:
                        group = candidate
                elif contact.started_at - resolved_at <= config.repeat_window_ms:
                    group = candidate
                    group.reopened = True
        if group is None:
            group = _Open()
            groups.append(group)
            if intent is not None:
                latest[intent] = group
        group.contacts.append(contact)
        group.last_activity_at = max(group.last_activity_at, contact.last_activity_at)
    return [_journey(g, customer, config, as_of) for g in groups]


def _latest(scores: Iterable[Score | None]) -> Score | None:
    best: Score | None = None
    for score in scores:
        if score is not None and (best is None or score.at >= best.at):
            best = score
    return best


def _journey(group: _Open, customer: str, config: JourneyConfig, as_of: int | None) -> Journey:
    contacts = group.contacts
    first, last = contacts[0], contacts[-1]
    steps = tuple(
        JourneyStep(
            step=n,
            contact_id=c.contact_id,
            channel=c.channel,
            started_at=c.started_at,
            last_activity_at=c.last_activity_at,
            ended_at=c.ended_at,
            first_human_at=c.first_human_at,
            resolved_at=c.resolved_at,
            resolved_by=c.resolved_by,
            was_bot=c.bot_involved,
            handed_off=c.bot_handoff,
            bot_contained=c.bot_contained,
            transfers=c.transfers,
            ivr_zero_out=c.ivr_zero_out,
            abandoned=c.abandoned,
            reopened=c.reopened,
        )
        for n, c in enumerate(contacts, start=1)
    )
    reopened = group.reopened or any(c.reopened for c in contacts)
    resolved_at = last.resolved_at
    human = min(
        ((c.first_human_at, c.channel) for c in contacts if c.first_human_at is not None),
        default=None,
    )
    status: Status
    if resolved_at is not None:
        status = "resolved"
    elif as_of is not None and as_of - group.last_activity_at > config.dormancy_ms:
        status = "dormant"
    else:
        status = "open"
    csat = _latest(c.csat for c in contacts)
    ces = _latest(c.ces for c in contacts)
    nps = _latest(c.nps for c in contacts)
    path = [c.channel for c in contacts]
    elapsed_ms = (resolved_at if resolved_at is not None else group.last_activity_at) - first.started_at
    effort = effort_score(
        EffortInputs(
            contacts=len(contacts),
            channel_switches=sum(1 for a, b in itertools.pairwise(path) if a != b),
            transfers=sum(c.transfers for c in contacts),
            ivr_zero_outs=sum(1 for c in contacts if c.ivr_zero_out),
            bot_handoffs=sum(1 for c in contacts if c.bot_handoff),
            abandoned_contacts=sum(1 for c in contacts if c.abandoned),
            elapsed_seconds=elapsed_ms / 1000,
            resolved=resolved_at is not None,
            ces=None if ces is None else ces.score,
        )
    )
    return Journey(
        journey_id=f"j-{first.contact_id}",
        customer=customer,
        intent=first.intent,
        status=status,
        started_at=first.started_at,
        last_activity_at=group.last_activity_at,
        steps=steps,
        reopened=reopened,
        resolved_at=resolved_at,
        resolved_by=last.resolved_by if resolved_at is not None else None,
        first_human_at=None if human is None else human[0],
        first_human_channel=None if human is None else human[1],
        csat=csat,
        ces=ces,
        nps=nps,
        effort=effort,
    )


# --------------------------------------------------------------------------------------------------
# State


class CustomerBook:
    """One customer's contacts with activity: their merged records (by contact_id) and cached
    summaries."""

    def __init__(self, customer: str) -> None:
        self.customer = customer
        self.records: dict[str, ContactRecord] = {}
        self._summaries: dict[str, ContactSummary] = {}

    def file(self, record: ContactRecord) -> None:
        """File (or re-file after it changed) a contact's record."""
        self.records[record.contact_id] = record
        self._summaries.pop(record.contact_id, None)

    def take(self, contact_id: str) -> ContactRecord | None:
        """Remove a contact, returning its record."""
        self._summaries.pop(contact_id, None)
        return self.records.pop(contact_id, None)

    def merge(self, other: CustomerBook) -> None:
        """Absorb another book."""
        for contact_id, record in other.records.items():
            mine = self.records.get(contact_id)
            if mine is None:
                self.records[contact_id] = record
            elif mine is not record:
                mine.merge(record)
            self._summaries.pop(contact_id, None)

    @property
    def summaries(self) -> dict[str, ContactSummary]:
        """Contact summaries by contact_id (recomputed for contacts whose records changed)."""
        for contact_id, record in self.records.items():
            if contact_id not in self._summaries:
                self._summaries[contact_id] = record.summary()
        return self._summaries

    def journeys(self, config: JourneyConfig, as_of: int | None = None) -> list[Journey]:
        return build_journeys(self.summaries.values(), config, customer=self.customer, as_of=as_of)


@dataclass(frozen=True, slots=True)
class JourneyVersion:
    """A journey as emitted. `deleted` rows retract a journey that no longer exists;
    `removed_contacts` are contacts that were in the previously emitted version but no longer are
    (their `journey_steps` rows must be retracted)."""

    journey: Journey
    version: int
    deleted: bool = False
    removed_contacts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Emitted:
    """What the store remembers of a journey it wrote (the journey stage persists it per journey
    id, so versions keep growing across restarts and owners): its version, whether that version
    retracted it, its customer and contacts, a digest of its content (unchanged content is not
    written again), and its last activity while it is open (when it turns dormant)."""

    version: int
    deleted: bool
    customer: str
    contact_ids: tuple[str, ...]
    digest: str
    open_since: int | None = None
    intent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "x": int(self.deleted),
            "c": self.customer,
            "ids": list(self.contact_ids),
            "d": self.digest,
            "o": self.open_since,
            "i": self.intent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Emitted:
        return cls(
            int(data["v"]),
            bool(data["x"]),
            str(data["c"]),
            tuple(str(c) for c in data["ids"]),
            str(data["d"]),
            None if data.get("o") is None else int(data["o"]),
            None if data.get("i") is None else str(data["i"]),
        )


_STEP_VALUES = operator.attrgetter(*JourneyStep.__dataclass_fields__)
_JOURNEY_VALUES = operator.attrgetter(*(f for f in Journey.__dataclass_fields__ if f != "steps"))


def digest(journey: Journey) -> str:
    """A stable digest of a journey's content (the same in every process, unlike `hash`): of a
    plain tuple of its values (the dataclasses' own repr took 3 times longer)."""
    content = (_JOURNEY_VALUES(journey), [_STEP_VALUES(step) for step in journey.steps])
    return hashlib.blake2b(repr(content).encode(), digest_size=12).hexdigest()


class JourneyStore:
    """Customer books, identity merges, and change tracking with per-journey versions.

    Versions: a journey written before gets its last version + 1; a journey written for the first
    time (or again after it was evicted) gets `as_of * 1000` (epoch ms of the newest event seen,
    times 1000), which exceeds every version written at an earlier `as_of`. Both are monotonic
    across restarts because the last versions are persisted (`Emitted`) and `as_of` only grows."""

    def __init__(self, config: JourneyConfig | None = None) -> None:
        self.config = config or JourneyConfig()
        self.books: dict[str, CustomerBook] = {}
        self._customer_of: dict[str, str] = {}  # contact_id -> customer key (contacts with activity)
        # customer -> intents whose journeys may have changed (None: all of them). Journeys of one
        # intent depend only on the customer's contacts with that intent, so a contact's change
        # rebuilds its intent's journeys, not all of a long-standing customer's.
        self._dirty: dict[str, set[str | None] | None] = {}
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
            self._dirty[customer] = None
            return
        known = self._dirty.get(customer, set())
        if known is not None:
            known.update(intents)
            self._dirty[customer] = known
        elif customer not in self._dirty:
            self._dirty[customer] = set(intents)

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
        self._dirty.pop(merge.absorbed, None)
        owned = self._journeys_of.pop(merge.absorbed, set())
        self._journeys_of.setdefault(merge.survivor, set()).update(owned)
        if absorbed is None:
            return
        self._book(merge.survivor).merge(absorbed)
        for contact_id in absorbed.records:
            self._customer_of[contact_id] = merge.survivor
        self.mark(merge.survivor)

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

    def changes(self, as_of: int | None = None, limit: int | None = None) -> list[JourneyVersion]:
        """Journeys that changed since the last round (including open journeys that became dormant
        by `as_of`) and deletions of journeys that no longer exist. With `limit`, a round is taken
        in slices of at most `limit` customers (call again while `pending`); deletions come with
        the last slice, once every journey of the round is rebuilt."""
        if not self._round_customers:  # a new round: what is dirty now
            deadlines = self._deadlines
            while deadlines and as_of is not None and deadlines[0][0] < as_of:
                self.mark(heapq.heappop(deadlines)[1])
            self._round_dirty, self._dirty = self._dirty, {}
            self._round_customers = sorted(self._round_dirty, reverse=True)
            self._round_current = {}
        customers = self._round_customers
        take = len(customers) if limit is None else min(limit, len(customers))
        sliced = [customers.pop() for _ in range(take)]
        out = self._rebuild(sliced, as_of)
        if not customers:
            out += self._retract(self._round_dirty, self._round_current)
            self._round_dirty, self._round_current = {}, {}
        return out

    def _rebuild(self, customers: list[str], as_of: int | None) -> list[JourneyVersion]:
        dirty = self._round_dirty
        deadlines = self._deadlines
        floor = 1 if as_of is None else max(1, as_of * 1000)
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
                rebuilt = build_journeys(contacts, self.config, customer=customer, as_of=as_of)
            for journey in rebuilt:
                current[journey.journey_id] = journey
        out: list[JourneyVersion] = []
        for journey_id, journey in current.items():
            previous = self._emitted.get(journey_id)
            content = digest(journey)
            if previous is not None and not previous.deleted and previous.digest == content:
                if previous.customer != journey.customer:  # renamed only: keep the index right
                    self._journeys_of.get(previous.customer, set()).discard(journey_id)
                    self._journeys_of.setdefault(journey.customer, set()).add(journey_id)
                continue
            removed: tuple[str, ...] = ()
            if previous is not None and not previous.deleted:
                keep = set(journey.contact_ids)
                removed = tuple(c for c in previous.contact_ids if c not in keep)
                self._journeys_of.get(previous.customer, set()).discard(journey_id)
            version = previous.version + 1 if previous is not None else floor
            open_since = journey.last_activity_at if journey.status == "open" else None
            self._emit(
                journey_id,
                Emitted(version, False, journey.customer, journey.contact_ids, content, open_since, journey.intent),
            )
            self._journeys_of.setdefault(journey.customer, set()).add(journey_id)
            if open_since is not None:
                heapq.heappush(deadlines, (open_since + self.config.dormancy_ms, journey.customer))
            out.append(JourneyVersion(journey, version, False, removed))
        self._round_current.update(current)
        return out

    def _retract(self, dirty: dict[str, set[str | None] | None], current: dict[str, Journey]) -> list[JourneyVersion]:
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
                self._emit(
                    journey_id,
                    Emitted(previous.version + 1, True, previous.customer, (), previous.digest, None, previous.intent),
                )
                out.append(JourneyVersion(last, previous.version + 1, True, previous.contact_ids))
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

    def forget_journey(self, journey: Journey) -> None:
        """Drop what is remembered of an evicted journey (and of retracted journeys named after
        its contacts)."""
        for journey_id in (journey.journey_id, *(f"j-{c}" for c in journey.contact_ids)):
            entry = self._emitted.pop(journey_id, None)
            if entry is None:
                continue
            self.emitted_changes.add(journey_id)
            # only the customers it was filed under (not a scan of every customer per journey)
            for customer in {entry.customer, journey.customer}:
                owned = self._journeys_of.get(customer)
                if owned is not None:
                    owned.discard(journey_id)
                    if not owned:
                        del self._journeys_of[customer]

    def close_time(self, journey: Journey, keep_ms: int) -> int:
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
                self.forget_journey(journey)
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
            self._dirty.pop(customer, None)
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


@dataclass(slots=True)
class Evicted:
    """What one eviction pass changed: contacts whose activity was forgotten (their records are
    identity only now) and contacts forgotten entirely (with their customer's identities)."""

    stripped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    journeys: int = 0


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
    `identity_retention` after its newest event, links included. Every map of the stage (records,
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

    def changes(self, as_of: int | None = None, limit: int | None = None) -> list[JourneyVersion]:
        return self.store.changes(as_of, limit)

    def _first_check(self, record: ContactRecord) -> int:
        return record.seen_us // 1000 + min(self.store.config.repeat_window_ms, self.store.config.dormancy_ms)

    def evict_due(self, as_of: int, budget: int = 10_000) -> Evicted:
        """Evict what is due at `as_of` (rules in the class docstring), at most `budget` heap
        entries per call (the rest stays due for the next call)."""
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
                journey = next((j for j in store.journeys(customer, as_of) if contact_id in j.contact_ids), None)
                if journey is not None:
                    closes = store.close_time(journey, self.keep_ms)
                    if closes >= as_of:
                        heapq.heappush(heap, (closes, contact_id))
                        continue
                    for member in journey.contact_ids:
                        store.remove(member)
                        records[member].strip()
                        self.record_changes.add(member)
                        out.stripped.append(member)
                    store.forget_journey(journey)
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
            graph.drop(contact_id)
            for member in members:
                if records.pop(member, None) is not None:
                    self.record_changes.add(member)
                    out.dropped.append(member)
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

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: every contact record and the emitted journeys (what the stage keeps in
        its tables) plus the pending changes."""
        return {
            "version": SNAPSHOT_VERSION,
            "records": [self.records[c].to_dict() for c in sorted(self.records)],
            "emitted": {j: e.to_dict() for j, e in sorted(self.store._emitted.items())},
            "dirty": {c: None if i is None else sorted(i, key=str) for c, i in sorted(self.store._dirty.items())},
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
        stitcher.store._dirty = {str(c): None if i is None else set(i) for c, i in data["dirty"].items()}
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
    ) -> Stitcher:
        """The stitcher the persisted state describes: the identity graph rebuilt from the records'
        identifiers and links in their original arrival order (`seq`), so it equals the graph of
        the process that wrote them; no event is re-read."""
        # a restore allocates millions of objects that all live on: the cyclic collector would scan
        # the growing heap again and again for nothing (freed by reference counting when evicted)
        collecting = gc.isenabled()
        gc.disable()
        try:
            return cls._from_state(records, emitted, identity, journeys, keep_ms, identity_retention_ms)
        finally:
            if collecting:
                gc.enable()

    @classmethod
    def _from_state(
        cls,
        records: Iterable[ContactRecord],
        emitted: Iterable[tuple[str, Emitted]],
        identity: IdentityConfig | None,
        journeys: JourneyConfig | None,
        keep_ms: int,
        identity_retention_ms: int,
    ) -> Stitcher:
        stitcher = cls(identity, journeys, keep_ms=keep_ms, identity_retention_ms=identity_retention_ms)
        ops: list[tuple[int, int, int, str, Any]] = []
        append = ops.append
        kept = stitcher.records
        n = 0
        for record in records:
            contact_id, first_seq, ids = record.contact_id, record.seq, record.ids
            kept[contact_id] = record
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
        graph = stitcher.graph
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
        heapq.heapify(store._deadlines)
        stitcher._seq = max((r.seq for r in stitcher.records.values()), default=0)
        return stitcher


# --------------------------------------------------------------------------------------------------
# Rows for ClickHouse (`schemas/clickhouse/0004_journeys.sql`)


def journey_row(emitted: JourneyVersion) -> dict[str, Any]:
    """The `journeys` row of an emitted journey (times as aware datetimes)."""
    j = emitted.journey
    steps = j.steps
    # one pass over the steps (the Journey properties each walk them again: twice the cost)
    contact_ids: list[str] = []
    path: list[str] = []
    switches = transfers = handoffs = contained = zero_outs = abandoned = 0
    previous: str | None = None
    for step in steps:
        contact_ids.append(step.contact_id)
        channel = step.channel
        path.append(channel)
        if previous is not None and channel != previous:
            switches += 1
        previous = channel
        transfers += step.transfers
        handoffs += step.handed_off
        contained += step.bot_contained
        zero_outs += step.ivr_zero_out
        abandoned += step.abandoned
    started, human, resolved_at = j.started_at, j.first_human_at, j.resolved_at
    resolved = resolved_at is not None
    csat, ces, nps = j.csat, j.ces, j.nps
    return {
        "journey_id": j.journey_id,
        "customer_key": j.customer,
        "intent": j.intent or "",
        "status": j.status,
        "started_at": from_ms(started),
        "last_activity_at": from_ms(j.last_activity_at),
        "contact_ids": contact_ids,
        "channel_path": path,
        "contacts": len(steps),
        "channel_switches": switches,
        "transfers": transfers,
        "bot_handoffs": handoffs,
        "bot_contained_contacts": contained,
        "ivr_zero_outs": zero_outs,
        "abandoned_contacts": abandoned,
        "starts_with_bot": int(steps[0].was_bot),
        "first_human_at": None if human is None else from_ms(human),
        "first_human_channel": j.first_human_channel or "",
        "time_to_first_human_s": None if human is None else round((human - started) / 1000, 3),
        "resolved": int(resolved),
        "resolved_at": None if resolved_at is None else from_ms(resolved_at),
        "resolved_by": j.resolved_by or "",
        "resolving_channel": steps[-1].channel if resolved else "",
        "time_to_resolution_s": None if resolved_at is None else round((resolved_at - started) / 1000, 3),
        "first_contact_resolved": int(len(steps) == 1 and resolved and not j.reopened),
        "reopened": int(j.reopened),
        "last_csat": None if csat is None else csat.score,
        "last_ces": None if ces is None else ces.score,
        "last_nps": None if nps is None else nps.score,
        "effort_score": j.effort,
        "version": emitted.version,
        "is_deleted": int(emitted.deleted),
    }


def step_rows(emitted: JourneyVersion) -> list[dict[str, Any]]:
    """The `journey_steps` rows of an emitted journey, retractions of removed contacts included."""
    j = emitted.journey
    rows: list[dict[str, Any]] = []
    for s in j.steps:
        rows.append(
            {
                "journey_id": j.journey_id,
                "contact_id": s.contact_id,
                "step": s.step,
                "customer_key": j.customer,
                "intent": j.intent or "",
                "channel": s.channel,
                "started_at": from_ms(s.started_at),
                "ended_at": None if s.ended_at is None else from_ms(s.ended_at),
                "first_human_at": None if s.first_human_at is None else from_ms(s.first_human_at),
                "resolved_at": None if s.resolved_at is None else from_ms(s.resolved_at),
                "resolved_by": s.resolved_by or "",
                "was_bot": int(s.was_bot),
                "handed_off": int(s.handed_off),
                "bot_contained": int(s.bot_contained),
                "transfers": s.transfers,
                "ivr_zero_out": int(s.ivr_zero_out),
                "abandoned": int(s.abandoned),
                "reopened": int(s.reopened),
                "version": emitted.version,
                "is_deleted": int(emitted.deleted),
            }
        )
    template = rows[0] if rows else None
    for contact_id in emitted.removed_contacts if not emitted.deleted else ():
        assert template is not None
        rows.append({**template, "contact_id": contact_id, "step": 0, "is_deleted": 1})
    return rows

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

import heapq
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.events.models import EVENT_ADAPTER, EventBase, IdentityLink, to_json
from pipeline.journeys.contact import ContactSummary, Score, from_ms, summarise
from pipeline.journeys.effort import EffortInputs, effort_score
from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge, Resolution

SECOND = 1000
DAY = 86_400 * SECOND
SNAPSHOT_VERSION = 1

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
    """One customer's contacts: the event set of each (by contact_id) and cached summaries."""

    def __init__(self, customer: str) -> None:
        self.customer = customer
        self.events: dict[str, dict[str, EventBase]] = {}
        self._summaries: dict[str, ContactSummary] = {}

    def add(self, event: EventBase) -> bool:
        """Add an event; False when it was a duplicate (same event_id)."""
        known = self.events.setdefault(event.contact_id, {})
        if event.event_id in known:
            return False
        known[event.event_id] = event
        self._summaries.pop(event.contact_id, None)
        return True

    def take(self, contact_id: str) -> dict[str, EventBase]:
        """Remove a contact, returning its events."""
        self._summaries.pop(contact_id, None)
        return self.events.pop(contact_id, {})

    def merge(self, other: CustomerBook) -> None:
        """Absorb another book (the union of both event sets)."""
        for contact_id, events in other.events.items():
            mine = self.events.setdefault(contact_id, {})
            for event_id, event in events.items():
                mine.setdefault(event_id, event)
            self._summaries.pop(contact_id, None)

    @property
    def summaries(self) -> dict[str, ContactSummary]:
        """Contact summaries by contact_id (recomputed for contacts whose events changed)."""
        for contact_id, events in self.events.items():
            if contact_id not in self._summaries:
                self._summaries[contact_id] = summarise(events.values())
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


class JourneyStore:
    """Customer books, identity merges, and change tracking with per-journey versions."""

    def __init__(self, config: JourneyConfig | None = None) -> None:
        self.config = config or JourneyConfig()
        self.books: dict[str, CustomerBook] = {}
        self._customer_of: dict[str, str] = {}  # contact_id -> customer key
        self._dirty: set[str] = set()
        self._emitted: dict[str, JourneyVersion] = {}
        self._journeys_of: dict[str, set[str]] = {}  # customer -> journey ids emitted live under it
        self._deadlines: list[tuple[int, str]] = []  # (dormant after, customer)

    def apply(self, event: EventBase, customer: str) -> bool:
        """Add a contact's event under `customer` (its key from the identity graph). A contact
        filed under another key before is moved. False for a duplicate event, and for an
        `identity_link`: links are identity, not contact activity, and are not filed (so a CRM
        merge sent with a synthetic contact id never becomes a contact of a journey)."""
        if isinstance(event, IdentityLink):
            return False
        previous = self._customer_of.get(event.contact_id)
        if previous is not None and previous != customer:
            moved = self.books[previous].take(event.contact_id)
            self._dirty.add(previous)
            book = self._book(customer)
            for old in moved.values():
                book.add(old)
        self._customer_of[event.contact_id] = customer
        added = self._book(customer).add(event)
        if added:
            self._dirty.add(customer)
        return added

    def apply_merge(self, merge: Merge) -> None:
        """Move the absorbed customer's book into the survivor's."""
        if merge.survivor == merge.absorbed:
            return
        absorbed = self.books.pop(merge.absorbed, None)
        self._dirty.discard(merge.absorbed)
        owned = self._journeys_of.pop(merge.absorbed, set())
        self._journeys_of.setdefault(merge.survivor, set()).update(owned)
        if absorbed is None:
            return
        self._book(merge.survivor).merge(absorbed)
        for contact_id in absorbed.events:
            self._customer_of[contact_id] = merge.survivor
        self._dirty.add(merge.survivor)

    def customer_of(self, contact_id: str) -> str | None:
        return self._customer_of.get(contact_id)

    def journeys(self, customer: str, as_of: int | None = None) -> list[Journey]:
        book = self.books.get(customer)
        return [] if book is None else book.journeys(self.config, as_of)

    def all_journeys(self, as_of: int | None = None) -> list[Journey]:
        return [j for customer in sorted(self.books) for j in self.journeys(customer, as_of)]

    def changes(self, as_of: int | None = None) -> list[JourneyVersion]:
        """Journeys that changed since the last call (including open journeys that became dormant
        by `as_of`) and deletions of journeys that no longer exist."""
        deadlines = self._deadlines
        while deadlines and as_of is not None and deadlines[0][0] < as_of:
            self._dirty.add(heapq.heappop(deadlines)[1])
        dirty, self._dirty = self._dirty, set()
        current: dict[str, Journey] = {}
        for customer in sorted(dirty):
            for journey in self.journeys(customer, as_of):
                current[journey.journey_id] = journey
        out: list[JourneyVersion] = []
        for journey_id, journey in current.items():
            previous = self._emitted.get(journey_id)
            if previous is not None and not previous.deleted and previous.journey == journey:
                continue
            removed: tuple[str, ...] = ()
            if previous is not None and not previous.deleted:
                keep = set(journey.contact_ids)
                removed = tuple(c for c in previous.journey.contact_ids if c not in keep)
                self._journeys_of.get(previous.journey.customer, set()).discard(journey_id)
            emitted = JourneyVersion(journey, (previous.version if previous else 0) + 1, False, removed)
            self._emitted[journey_id] = emitted
            self._journeys_of.setdefault(journey.customer, set()).add(journey_id)
            if journey.status == "open":
                heapq.heappush(deadlines, (journey.last_activity_at + self.config.dormancy_ms, journey.customer))
            out.append(emitted)
        for customer in sorted(dirty):
            # not `set - current.keys()`: that copies all of `current` once per customer
            for journey_id in sorted(j for j in self._journeys_of.get(customer, ()) if j not in current):
                previous = self._emitted[journey_id]
                self._journeys_of[customer].discard(journey_id)
                if previous.deleted:
                    continue
                gone = JourneyVersion(previous.journey, previous.version + 1, True, previous.journey.contact_ids)
                self._emitted[journey_id] = gone
                out.append(gone)
        return out

    def evict(self, as_of: int, *, keep_ms: int = DAY) -> int:
        """Forget contacts of journeys no later contact can join any more - resolved more than
        `repeat_window + keep_ms` ago, or inactive for more than `dormancy + keep_ms` - together
        with their emitted versions. `keep_ms` must exceed the lateness bound of events: an event
        of an evicted contact would start a journey afresh. Returns the contacts forgotten."""
        forgotten = 0
        for customer in sorted(self.books):
            book = self.books[customer]
            for journey in book.journeys(self.config, as_of):
                if journey.resolved_at is not None:
                    closed = as_of - journey.resolved_at > self.config.repeat_window_ms + keep_ms
                else:
                    closed = as_of - journey.last_activity_at > self.config.dormancy_ms + keep_ms
                closed = closed and as_of - journey.last_activity_at > keep_ms
                if not closed:
                    continue
                for contact_id in journey.contact_ids:
                    book.take(contact_id)
                    self._customer_of.pop(contact_id, None)
                    forgotten += 1
                self._emitted.pop(journey.journey_id, None)
                self._journeys_of.get(customer, set()).discard(journey.journey_id)
            if not book.events:
                del self.books[customer]
                self._journeys_of.pop(customer, None)
        return forgotten

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: every book's events, the emitted versions and pending changes."""
        return {
            "version": SNAPSHOT_VERSION,
            "books": {
                customer: [json.loads(to_json(e)) for events in book.events.values() for e in events.values()]
                for customer, book in sorted(self.books.items())
            },
            "emitted": {
                journey_id: {
                    "version": v.version,
                    "deleted": v.deleted,
                    "removed_contacts": list(v.removed_contacts),
                    "journey": v.journey.as_dict(),
                }
                for journey_id, v in sorted(self._emitted.items())
            },
            "journeys_of": {c: sorted(ids) for c, ids in sorted(self._journeys_of.items())},
            "dirty": sorted(self._dirty),
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], config: JourneyConfig | None = None) -> JourneyStore:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported journey snapshot version {data.get('version')!r}")
        store = cls(config)
        for customer, events in data["books"].items():
            book = store._book(str(customer))
            for raw in events:
                event = EVENT_ADAPTER.validate_python(raw)
                book.add(event)
                store._customer_of[event.contact_id] = book.customer
        for journey_id, raw in data["emitted"].items():
            journey = journey_from_dict(raw["journey"])
            version = JourneyVersion(journey, int(raw["version"]), bool(raw["deleted"]), tuple(raw["removed_contacts"]))
            store._emitted[str(journey_id)] = version
            if not version.deleted and journey.status == "open":
                store._deadlines.append((journey.last_activity_at + store.config.dormancy_ms, journey.customer))
        heapq.heapify(store._deadlines)
        store._journeys_of = {str(c): set(ids) for c, ids in data["journeys_of"].items()}
        store._dirty = set(data["dirty"])
        return store

    def _book(self, customer: str) -> CustomerBook:
        book = self.books.get(customer)
        if book is None:
            book = self.books[customer] = CustomerBook(customer)
        return book


class Stitcher:
    """An identity graph and a journey store fed together: the pure core of the journey worker."""

    def __init__(
        self,
        identity: IdentityConfig | None = None,
        journeys: JourneyConfig | None = None,
        *,
        graph: IdentityGraph | None = None,
        store: JourneyStore | None = None,
    ) -> None:
        self.graph = graph or IdentityGraph(identity)
        self.store = store or JourneyStore(journeys)

    def observe(self, event: EventBase) -> Resolution:
        """Resolve the event's customer, apply the merges it caused, then file the event."""
        resolution = self.graph.observe(event)
        for merge in resolution.merges:
            self.store.apply_merge(merge)
        assert resolution.customer is not None
        self.store.apply(event, resolution.customer)
        return resolution

    def changes(self, as_of: int | None = None) -> list[JourneyVersion]:
        return self.store.changes(as_of)

    def snapshot(self) -> dict[str, Any]:
        return {"identity": self.graph.snapshot(), "journeys": self.store.snapshot()}

    @classmethod
    def restore(
        cls,
        data: Mapping[str, Any],
        identity: IdentityConfig | None = None,
        journeys: JourneyConfig | None = None,
    ) -> Stitcher:
        return cls(
            graph=IdentityGraph.restore(data["identity"], identity),
            store=JourneyStore.restore(data["journeys"], journeys),
        )


# --------------------------------------------------------------------------------------------------
# Rows for ClickHouse (`schemas/clickhouse/0004_journeys.sql`)


def journey_row(emitted: JourneyVersion) -> dict[str, Any]:
    """The `journeys` row of an emitted journey (times as aware datetimes)."""
    j = emitted.journey

    def at(ms: int | None) -> Any:
        return None if ms is None else from_ms(ms)

    def score(s: Score | None) -> int | None:
        return None if s is None else s.score

    return {
        "journey_id": j.journey_id,
        "customer_key": j.customer,
        "intent": j.intent or "",
        "status": j.status,
        "started_at": at(j.started_at),
        "last_activity_at": at(j.last_activity_at),
        "contact_ids": list(j.contact_ids),
        "channel_path": list(j.channel_path),
        "contacts": j.contacts,
        "channel_switches": j.channel_switches,
        "transfers": j.transfers,
        "bot_handoffs": j.bot_handoffs,
        "bot_contained_contacts": j.bot_contained_contacts,
        "ivr_zero_outs": j.ivr_zero_outs,
        "abandoned_contacts": j.abandoned_contacts,
        "starts_with_bot": int(j.starts_with_bot),
        "first_human_at": at(j.first_human_at),
        "first_human_channel": j.first_human_channel or "",
        "time_to_first_human_s": j.time_to_first_human_s,
        "resolved": int(j.resolved),
        "resolved_at": at(j.resolved_at),
        "resolved_by": j.resolved_by or "",
        "resolving_channel": j.resolving_channel or "",
        "time_to_resolution_s": j.time_to_resolution_s,
        "first_contact_resolved": int(j.first_contact_resolved),
        "reopened": int(j.reopened),
        "last_csat": score(j.csat),
        "last_ces": score(j.ces),
        "last_nps": score(j.nps),
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

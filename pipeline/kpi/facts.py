"""Per-contact facts: a pure function of the SET of a contact's events.

`contact_facts(events)` deduplicates on `event_id`, sorts by `(occurred_at, event_id)` and derives
everything the windowed KPIs need. The same set gives the same facts whatever the arrival order and
however often an event was redelivered.

Rules (times are epoch milliseconds, UTC; durations are seconds):

* **Dimension.** Every measure carries the `(queue, priority)` it is reported under: the queue and
  priority of the queue leg in force at the completing event (the latest leg opened at or before
  it, in sort order), or, before any leg, the completing event's own `queue` (empty when none) and
  `priority`. The contact's channel is the channel of its first event.
* **Queue legs.** A `queued` opens a leg (queue and priority from that event) unless a leg is still
  waiting, in which case it is a repeat and ignored. While a leg waits, the first of
  `agent_assigned` (answered), `abandoned` (abandoned in queue, whatever its `stage`), `transferred`
  (transferred out of the queue) or `ended` (closed) removes it from the queue. A leg's handling
  ends at the next `transferred` or `ended`. A later `queued` opens the next leg.
* **Short abandon.** A queue abandon whose wait is below `short_abandon_seconds` (default 5 s).
* **Contact start** is the earliest event of the contact (normally `contact_started`).
* **Waiting on customer.** `waiting_on_customer` .. `waiting_ended` spans (open-ended when not
  ended) pause response clocks: their overlap is subtracted from FRT and NRT, whatever the reason.
* **Waits by reason** (`waits`). A `waiting_on_customer` opens a wait with its `reason` (`customer`
  when absent) unless one is open; one with another reason while a wait is open closes it and opens
  a wait with the new reason (same instant); the same reason again changes nothing;
  `waiting_ended` closes the open wait. `waiting_ms_by_reason` sums the closed waits per reason.
* **Segment at an instant**: the latest non-empty `segment` of the events at or before it in sort
  order (the contact's first non-empty segment when none is).
* **Ticket facts.** Reopen count = counted reopens (below). Time to first resolution = first
  counted resolution - contact start; time to final resolution = the last counted resolution -
  contact start, only while the contact is resolved (a reopen withdraws it until the next
  resolution). The (queue, priority) at first response and at each resolution are those of its
  Stamp; the segment is the segment at that instant.
* **First response time** = first agent reply (`first_agent_reply` or `agent_reply`, whichever
  is first) - contact start - paused time.
* **Next response time.** After the first agent reply, the first customer message not yet answered
  starts a clock; the next agent reply stops it (one interval per reply that answers pending
  customer messages; later messages before that reply do not start their own clocks).
* **Talk** = first `agent_assigned` .. first `ended`, minus the time later legs spent waiting in
  queue (so the re-queue wait of a transfer is not talk). Hold time is inside talk.
  **ACW** = `ended.acw_seconds` of the first `ended`. **Handle** = talk + ACW, only for contacts
  with an `agent_assigned` that have ended. (For asynchronous channels talk is wall-clock time
  from assignment to close, including time waiting for the customer.)
* **Holds** pair `hold_started` with the next `hold_ended`; an unpaired start runs to `ended`.
* **Transfers**: every `transferred` event.
* **Bot.** Involved: any `bot_turn`. Handoff: the first `bot_handoff`. Contained (contact level):
  at the completing instant - the first of `resolved` by the bot and `ended` - there was a
  `bot_turn` and no `bot_handoff`, `queued`, `agent_assigned` or `abandoned` at or before it.
  Containment across channels within 24 h (the customer did not come back elsewhere) is a journey
  measure and belongs to journey stitching, not here.
* **IVR zero-outs**: every `ivr_zero_out` event.
* **Resolutions.** A `resolved` while the contact is not resolved is a resolution (counted); a
  `reopened` while resolved reopens it. **First-contact resolved** (contact level) is decided at the
  first `ended`: at least one `resolved` and no `reopened` at or before it; it is stamped with the
  `ended` time. Every rule above looks only at events at or before the completing event, which
  is what makes windowed results exact under out-of-order arrival (see `pipeline.kpi.windows`).
"""

from __future__ import annotations

import heapq
import json
from bisect import insort
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import lz4.block
from pydantic import SerializeAsAny, TypeAdapter

from pipeline.events.models import (
    Abandoned,
    Author,
    Ended,
    EventBase,
    InteractionEvent,
    Resolved,
    SurveyResponse,
    Transferred,
    WaitingOnCustomer,
    event_type,
)
from pipeline.events.shared_parts import share_parts
from pipeline.frozen import builder
from pipeline.times import to_ms

DEFAULT_SHORT_ABANDON_SECONDS = 5.0


def _seconds(ms: int) -> float:
    return ms / 1000.0


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a measure completed and the (queue, priority) it is reported under."""

    at_ms: int
    queue: str
    priority: int


@dataclass(frozen=True, slots=True)
class TimedValue:
    """A duration or score that completed at `stamp`."""

    stamp: Stamp
    value: float


@dataclass(frozen=True, slots=True)
class SurveyAnswer:
    stamp: Stamp
    survey: str
    score: int


@dataclass(frozen=True, slots=True)
class QueueLeg:
    """One stay in one queue. `removed_ms` is when it left the queue (None: still waiting)."""

    queue: str
    priority: int
    queued_ms: int
    answered_ms: int | None = None
    abandoned_ms: int | None = None
    transferred_ms: int | None = None  # a transfer ended this leg (waiting or handled)
    closed_ms: int | None = None  # `ended` while still waiting, without an abandon

    @property
    def removed_ms(self) -> int | None:
        """Left the queue: answered, abandoned, transferred out while waiting, or closed."""
        candidates = [
            t for t in (self.answered_ms, self.abandoned_ms, self.transferred_ms, self.closed_ms) if t is not None
        ]
        return min(candidates) if candidates else None

    @property
    def waiting(self) -> bool:
        """Still in the queue: `removed_ms` is None (tested field by field, without its list)."""
        return (
            self.answered_ms is None
            and self.abandoned_ms is None
            and self.transferred_ms is None
            and self.closed_ms is None
        )

    @property
    def handling_open(self) -> bool:
        """Neither transferred out nor closed yet: a `transferred` still ends this leg."""
        return self.transferred_ms is None and self.closed_ms is None

    @property
    def wait_seconds(self) -> float | None:
        """Wait of an answered leg (queued -> agent_assigned)."""
        return None if self.answered_ms is None else _seconds(self.answered_ms - self.queued_ms)

    @property
    def abandon_wait_seconds(self) -> float | None:
        return None if self.abandoned_ms is None else _seconds(self.abandoned_ms - self.queued_ms)

    def waiting_at(self, instant_ms: int) -> bool:
        """In queue just before `instant_ms` (a window's end): queued before it, not removed before it."""
        removed = self.removed_ms
        return self.queued_ms < instant_ms and (removed is None or removed >= instant_ms)


@dataclass(frozen=True, slots=True)
class Wait:
    """One wait on someone: [start_ms, end_ms) (end None: still waiting) and who is waited on."""

    start_ms: int
    end_ms: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Dims:
    """Where a ticket measure is reported: queue, priority and segment at an instant."""

    queue: str
    priority: int
    segment: str


@dataclass(frozen=True, slots=True)
class ContactFacts:
    """Everything the KPIs need about one contact. Build with `contact_facts`."""

    contact_id: str
    channel: str
    priority: int
    segment: str
    started_ms: int
    last_ms: int
    event_count: int
    legs: tuple[QueueLeg, ...] = ()
    abandoned_ms: int | None = None
    abandon_stage: str | None = None
    short_abandon: bool = False
    first_reply: TimedValue | None = None  # value: first response time, seconds
    next_responses: tuple[TimedValue, ...] = ()
    holds: tuple[tuple[int, int], ...] = ()
    waiting_spans: tuple[tuple[int, int | None], ...] = ()
    answered_ms: int | None = None  # first agent_assigned
    ended: Stamp | None = None
    talk_seconds: float | None = None
    acw_seconds: float | None = None
    handle_seconds: float | None = None
    transfers: tuple[Stamp, ...] = ()
    bot_involved: bool = False
    bot_handoff: Stamp | None = None
    bot_contained: Stamp | None = None
    ivr_zero_outs: tuple[Stamp, ...] = ()
    resolutions: tuple[Stamp, ...] = ()
    reopens: tuple[Stamp, ...] = ()
    resolved: bool = False
    first_contact_resolved: Stamp | None = None
    surveys: tuple[SurveyAnswer, ...] = ()
    waits: tuple[Wait, ...] = ()
    first_reply_segment: str = ""  # segment at the first agent reply
    resolution_segments: tuple[str, ...] = ()  # segment at each counted resolution

    @property
    def reopen_count(self) -> int:
        return len(self.reopens)

    @property
    def first_resolution(self) -> Stamp | None:
        return self.resolutions[0] if self.resolutions else None

    @property
    def final_resolution(self) -> Stamp | None:
        """The last resolution while the contact is resolved; None while it is not."""
        return self.resolutions[-1] if self.resolved and self.resolutions else None

    @property
    def ttr_first_seconds(self) -> float | None:
        first = self.first_resolution
        return None if first is None else _seconds(first.at_ms - self.started_ms)

    @property
    def ttr_final_seconds(self) -> float | None:
        final = self.final_resolution
        return None if final is None else _seconds(final.at_ms - self.started_ms)

    @property
    def first_response_dims(self) -> Dims | None:
        if self.first_reply is None:
            return None
        stamp = self.first_reply.stamp
        return Dims(stamp.queue, stamp.priority, self.first_reply_segment)

    @property
    def resolution_dims(self) -> Dims | None:
        """Dims at the final resolution (None while not resolved)."""
        final = self.final_resolution
        return None if final is None else Dims(final.queue, final.priority, self.resolution_segments[-1])

    @property
    def first_resolution_dims(self) -> Dims | None:
        first = self.first_resolution
        return None if first is None else Dims(first.queue, first.priority, self.resolution_segments[0])

    @property
    def waiting_now(self) -> str | None:
        """Reason of the wait still open, None when not waiting."""
        return self.waits[-1].reason if self.waits and self.waits[-1].end_ms is None else None

    def waiting_ms_by_reason(self) -> dict[str, int]:
        """Milliseconds of closed waits per reason."""
        out: dict[str, int] = {}
        for wait in self.waits:
            if wait.end_ms is not None:
                out[wait.reason] = out.get(wait.reason, 0) + wait.end_ms - wait.start_ms
        return out

    @property
    def hold_seconds(self) -> float:
        return sum(_seconds(end - start) for start, end in self.holds)

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(leg.queue for leg in self.legs)

    @property
    def ended_ms(self) -> int | None:
        return None if self.ended is None else self.ended.at_ms


# the fold makes these for every change of a contact: built without their frozen `__init__`, which
# sets each field through `object.__setattr__`: a fold of a simulated contact's events took 14.8 µs
# with them and 10.8 with these (every prefix of 9.4k contacts, 100k events, min of 5)
_new_facts = builder(ContactFacts)
_new_stamp = builder(Stamp)
_new_leg = builder(QueueLeg)
_new_timed = builder(TimedValue)
_new_answer = builder(SurveyAnswer)
_new_wait = builder(Wait)


def sort_events(events: Iterable[EventBase]) -> list[EventBase]:
    """Deduplicate on event_id (first seen wins) and sort by (occurred_at, event_id)."""
    unique: dict[str, EventBase] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    return sorted(unique.values(), key=lambda e: (e.occurred_at, e.event_id))


def _stamp(t: int, current: QueueLeg | None, event: EventBase) -> Stamp:
    """An event's Stamp: the queue leg in force (`current`), else the event's own queue and priority.
    Built only for the events that record one (it was built for every event of every fold)."""
    if current is not None:
        return _new_stamp(t, current.queue, current.priority)
    return _new_stamp(t, event.queue or "", event.priority)


def _leg_with(
    leg: QueueLeg,
    *,
    answered_ms: int | None = None,
    abandoned_ms: int | None = None,
    transferred_ms: int | None = None,
    closed_ms: int | None = None,
) -> QueueLeg:
    """`dataclasses.replace(leg, ...)` for the one field given (replace looks every field up)."""
    return _new_leg(
        leg.queue,
        leg.priority,
        leg.queued_ms,
        leg.answered_ms if answered_ms is None else answered_ms,
        leg.abandoned_ms if abandoned_ms is None else abandoned_ms,
        leg.transferred_ms if transferred_ms is None else transferred_ms,
        leg.closed_ms if closed_ms is None else closed_ms,
    )


def _overlap_ms(start: int, end: int, spans: Iterable[tuple[int, int | None]]) -> int:
    total = 0
    for span_start, span_end in spans:
        lo = max(start, span_start)
        hi = end if span_end is None else min(end, span_end)
        if hi > lo:
            total += hi - lo
    return total


# One event of a contact as the fold reads it: (occurred_at ms, event_id, type, event). A list of
# these sorts as `sort_events` does (occurred_at carries milliseconds, event_ids are unique).
Entry = tuple[int, str, str, EventBase]


def entry_of(event: EventBase, t: int | None = None) -> Entry:
    """`t`: `to_ms(event.occurred_at)` when the caller has it already."""
    return (to_ms(event.occurred_at) if t is None else t, event.event_id, event_type(event), event)


def contact_facts(
    events: Iterable[EventBase], *, short_abandon_seconds: float = DEFAULT_SHORT_ABANDON_SECONDS
) -> ContactFacts:
    """Facts of one contact from the set of its events (see the module docstring for every rule)."""
    ordered = [entry_of(e) for e in sort_events(events)]
    return facts_of_entries(ordered, short_abandon_seconds=short_abandon_seconds)


class _Fold:
    """The fold of a contact's events in (occurred_at, event_id) order, fed a sorted run of entries
    at a time: a contact's events mostly arrive in order, so the tracker feeds only those added
    since the last fold (`ContactTracker.facts`). `facts()` reads it without changing it.

    A reply or resolution before the first event that names a segment takes the contact's segment,
    which a later event may bring: it is recorded as "" and filled in by `facts()`."""

    __slots__ = (
        "abandon_stage",
        "abandoned_ms",
        "acw",
        "answered_ms",
        "bot_handoff",
        "bot_resolved",
        "bot_turn_ms",
        "count",
        "ended",
        "first",
        "first_reply_segment",
        "hold_open",
        "holds",
        "is_resolved",
        "ivr_zero_outs",
        "last_ms",
        "legs",
        "queued_first_ms",
        "reopens",
        "replies",
        "resolution_segments",
        "resolutions",
        "segment",
        "segment_now",
        "start_ms",
        "surveys",
        "transfers",
        "waiting_spans",
        "waits",
    )

    def __init__(self, first: Entry) -> None:
        self.first = first[3]
        self.start_ms = first[0]
        self.last_ms = first[0]
        self.count = 0
        self.segment = ""  # the first segment named by an event
        self.legs: list[QueueLeg] = []  # the last one is replaced as events settle it
        self.waiting_spans: list[tuple[int, int | None]] = []
        self.holds: list[tuple[int, int]] = []
        self.hold_open: int | None = None
        self.transfers: list[Stamp] = []
        self.ivr_zero_outs: list[Stamp] = []
        self.resolutions: list[Stamp] = []
        self.reopens: list[Stamp] = []
        self.surveys: list[SurveyAnswer] = []
        self.replies: list[tuple[int, Stamp | None]] = []  # None marks a customer message
        self.is_resolved = False
        self.abandoned_ms: int | None = None
        self.abandon_stage: str | None = None
        self.answered_ms: int | None = None
        self.ended: Stamp | None = None
        self.acw: float | None = None
        self.bot_turn_ms: int | None = None
        self.bot_handoff: Stamp | None = None
        self.bot_resolved: Stamp | None = None
        self.queued_first_ms: int | None = None
        self.waits: list[Wait] = []
        self.segment_now = ""  # "": the contact's segment (`facts()` fills it in)
        self.first_reply_segment: str | None = None
        self.resolution_segments: list[str] = []

    def feed(self, entries: Sequence[Entry]) -> None:
        """Fold `entries`, which sort after every entry fed before."""
        if not entries:
            return
        # locals in the loop, stored back after it: attribute access per event cost more
        (
            hold_open,
            is_resolved,
            abandoned_ms,
            abandon_stage,
            answered_ms,
            ended,
            acw,
            bot_turn_ms,
            bot_handoff,
            bot_resolved,
            queued_first_ms,
            segment_now,
            first_reply_segment,
        ) = (
            self.hold_open,
            self.is_resolved,
            self.abandoned_ms,
            self.abandon_stage,
            self.answered_ms,
            self.ended,
            self.acw,
            self.bot_turn_ms,
            self.bot_handoff,
            self.bot_resolved,
            self.queued_first_ms,
            self.segment_now,
            self.first_reply_segment,
        )
        (
            legs,
            waiting_spans,
            holds,
            transfers,
            ivr_zero_outs,
            resolutions,
            reopens,
            surveys,
            replies,
            waits,
            resolution_segments,
        ) = (
            self.legs,
            self.waiting_spans,
            self.holds,
            self.transfers,
            self.ivr_zero_outs,
            self.resolutions,
            self.reopens,
            self.surveys,
            self.replies,
            self.waits,
            self.resolution_segments,
        )
        for t, _, kind, event in entries:
            if event.segment:
                segment_now = event.segment
                if not self.segment:
                    self.segment = event.segment
            current = legs[-1] if legs else None
            if kind == "queued":
                if current is None or not current.waiting:
                    legs.append(_new_leg(event.queue or "", event.priority, t))
                    if queued_first_ms is None:
                        queued_first_ms = t
            elif kind == "agent_assigned":
                if answered_ms is None:
                    answered_ms = t
                if current is not None and current.waiting:
                    legs[-1] = _leg_with(current, answered_ms=t)
            elif kind == "abandoned":
                assert isinstance(event, Abandoned)
                if abandoned_ms is None:
                    abandoned_ms, abandon_stage = t, event.stage
                if current is not None and current.waiting:
                    legs[-1] = _leg_with(current, abandoned_ms=t)
            elif kind == "transferred":
                assert isinstance(event, Transferred)
                transfers.append(_stamp(t, current, event))
                if current is not None and current.handling_open:
                    legs[-1] = _leg_with(current, transferred_ms=t)
            elif kind == "ended":
                assert isinstance(event, Ended)
                if ended is None:
                    ended = _stamp(t, current, event)
                    acw = event.acw_seconds
                    if current is not None and current.waiting:
                        legs[-1] = _leg_with(current, closed_ms=t)
                    if hold_open is not None:
                        holds.append((hold_open, t))
                        hold_open = None
            elif kind == "hold_started":
                if hold_open is None and ended is None:
                    hold_open = t
            elif kind == "hold_ended":
                if hold_open is not None:
                    holds.append((hold_open, t))
                    hold_open = None
            elif kind == "waiting_on_customer":
                assert isinstance(event, WaitingOnCustomer)
                if not waiting_spans or waiting_spans[-1][1] is not None:
                    waiting_spans.append((t, None))
                reason = event.wait_reason
                if waits and waits[-1].end_ms is None and waits[-1].reason != reason:
                    waits[-1] = _new_wait(waits[-1].start_ms, t, waits[-1].reason)
                if not waits or waits[-1].end_ms is not None:
                    waits.append(_new_wait(t, None, reason))
            elif kind == "waiting_ended":
                if waiting_spans and waiting_spans[-1][1] is None:
                    waiting_spans[-1] = (waiting_spans[-1][0], t)
                if waits and waits[-1].end_ms is None:
                    waits[-1] = _new_wait(waits[-1].start_ms, t, waits[-1].reason)
            elif kind in ("first_agent_reply", "agent_reply"):
                if first_reply_segment is None:
                    first_reply_segment = segment_now
                replies.append((t, _stamp(t, current, event)))
            elif kind == "customer_message":
                replies.append((t, None))
            elif kind == "bot_turn":
                if bot_turn_ms is None:
                    bot_turn_ms = t
            elif kind == "bot_handoff":
                if bot_handoff is None:
                    bot_handoff = _stamp(t, current, event)
            elif kind == "ivr_zero_out":
                ivr_zero_outs.append(_stamp(t, current, event))
            elif kind == "resolved":
                assert isinstance(event, Resolved)
                stamp = _stamp(t, current, event)
                if not is_resolved:
                    is_resolved = True
                    resolutions.append(stamp)
                    resolution_segments.append(segment_now)
                if event.resolved_by == Author.BOT and bot_resolved is None:
                    bot_resolved = stamp
            elif kind == "reopened":
                if is_resolved:
                    is_resolved = False
                    reopens.append(_stamp(t, current, event))
            elif kind == "survey_response":
                assert isinstance(event, SurveyResponse)
                surveys.append(_new_answer(_stamp(t, current, event), event.survey, event.score))

        (
            self.hold_open,
            self.is_resolved,
            self.abandoned_ms,
            self.abandon_stage,
            self.answered_ms,
            self.ended,
            self.acw,
            self.bot_turn_ms,
            self.bot_handoff,
            self.bot_resolved,
            self.queued_first_ms,
            self.segment_now,
            self.first_reply_segment,
        ) = (
            hold_open,
            is_resolved,
            abandoned_ms,
            abandon_stage,
            answered_ms,
            ended,
            acw,
            bot_turn_ms,
            bot_handoff,
            bot_resolved,
            queued_first_ms,
            segment_now,
            first_reply_segment,
        )
        self.count += len(entries)
        self.last_ms = entries[-1][0]

    def facts(self, short_abandon_seconds: float) -> ContactFacts:
        """The contact's facts from what was fed so far."""
        if not self.count:
            raise ValueError("a contact needs at least one event")
        legs, replies, resolutions, reopens = self.legs, self.replies, self.resolutions, self.reopens
        ended, answered_ms, acw, start_ms = self.ended, self.answered_ms, self.acw, self.start_ms
        bot_resolved, bot_turn_ms, bot_handoff = self.bot_resolved, self.bot_turn_ms, self.bot_handoff
        queued_first_ms, abandoned_ms, segment = self.queued_first_ms, self.abandoned_ms, self.segment
        spans = tuple(self.waiting_spans)

        # first and next response times, walking replies and customer messages in event order
        first_reply: TimedValue | None = None
        next_responses: list[TimedValue] = []
        pending: int | None = None
        for t, reply in replies:
            if reply is None:  # a customer message
                if first_reply is not None and pending is None:
                    pending = t
                continue
            if first_reply is None:
                first_reply = _new_timed(reply, _seconds(t - start_ms - _overlap_ms(start_ms, t, spans)))
            elif pending is not None:
                next_responses.append(_new_timed(reply, _seconds(t - pending - _overlap_ms(pending, t, spans))))
                pending = None

        frozen_legs = tuple(legs)

        short = False
        for leg in frozen_legs:
            wait = leg.abandon_wait_seconds
            if wait is not None and wait < short_abandon_seconds:
                short = True

        talk: float | None = None
        handle: float | None = None
        if ended is not None and answered_ms is not None and ended.at_ms >= answered_ms:
            end = ended.at_ms
            requeue_ms = 0
            for leg in frozen_legs:
                if leg.queued_ms >= answered_ms and leg.queued_ms < end:
                    removed = leg.removed_ms
                    requeue_ms += min(end if removed is None else removed, end) - leg.queued_ms
            talk = _seconds(end - answered_ms - requeue_ms)
            handle = talk + (acw or 0.0)

        contained: Stamp | None = None
        completion: Stamp | None = bot_resolved
        if ended is not None and (completion is None or ended.at_ms < completion.at_ms):
            completion = ended
        if completion is not None and bot_turn_ms is not None and bot_turn_ms <= completion.at_ms:
            blockers = (bot_handoff.at_ms if bot_handoff else None, queued_first_ms, answered_ms, abandoned_ms)
            if not any(b is not None and b <= completion.at_ms for b in blockers):
                contained = completion

        fcr: Stamp | None = None
        if ended is not None:
            resolved_before = any(r.at_ms <= ended.at_ms for r in resolutions)
            reopened_before = any(r.at_ms <= ended.at_ms for r in reopens)
            if resolved_before and not reopened_before:
                fcr = ended

        return _new_facts(
            contact_id=self.first.contact_id,
            channel=self.first.channel.value,
            priority=self.first.priority,
            segment=segment,
            started_ms=start_ms,
            last_ms=self.last_ms,
            event_count=self.count,
            legs=frozen_legs,
            abandoned_ms=abandoned_ms,
            abandon_stage=self.abandon_stage,
            short_abandon=short,
            first_reply=first_reply,
            next_responses=tuple(next_responses),
            holds=tuple(self.holds),
            waiting_spans=spans,
            answered_ms=answered_ms,
            ended=ended,
            talk_seconds=talk,
            acw_seconds=acw,
            handle_seconds=handle,
            transfers=tuple(self.transfers),
            bot_involved=bot_turn_ms is not None,
            bot_handoff=bot_handoff,
            bot_contained=contained,
            ivr_zero_outs=tuple(self.ivr_zero_outs),
            resolutions=tuple(resolutions),
            reopens=tuple(reopens),
            resolved=self.is_resolved,
            first_contact_resolved=fcr,
            surveys=tuple(self.surveys),
            waits=tuple(self.waits),
            first_reply_segment="" if self.first_reply_segment is None else self.first_reply_segment or segment,
            resolution_segments=tuple(s or segment for s in self.resolution_segments),
        )


def facts_of_entries(
    ordered: Sequence[Entry], *, short_abandon_seconds: float = DEFAULT_SHORT_ABANDON_SECONDS
) -> ContactFacts:
    """`contact_facts` of a contact's events given as distinct entries in sorted order."""
    if not ordered:
        raise ValueError("a contact needs at least one event")
    fold = _Fold(ordered[0])
    fold.feed(ordered)
    return fold.facts(short_abandon_seconds)


_EVENT_LIST: TypeAdapter[list[InteractionEvent]] = TypeAdapter(list[InteractionEvent])
_WIRE_LIST: TypeAdapter[list[EventBase]] = TypeAdapter(list[SerializeAsAny[EventBase]])


def _wire(tracked: _Tracked) -> bytes:
    """The contact's events as a JSON array (`ContactTracker.contact_wire`)."""
    if tracked.events is None:
        assert tracked.packed is not None
        return _unpack(tracked.packed)
    ordered = tracked.ordered
    done = tracked.wired
    if tracked.wire is not None and done == len(ordered):
        return tracked.wire
    # one pydantic-core call for the array, each event by its own class's serializer: the same
    # bytes as joining each event's `model_dump_json(exclude_none=True)`, 5.45 -> 4.51 µs an event
    # (20k simulated events, min of 3; through the `InteractionEvent` union: 5.50)
    if tracked.wire is None or not done:
        wire = _WIRE_LIST.dump_json([entry[3] for entry in ordered], exclude_none=True)
    else:  # events appended since the last call: only they are serialized
        tail = _WIRE_LIST.dump_json([entry[3] for entry in ordered[done:]], exclude_none=True)
        wire = tracked.wire[:-1] + b"," + tail[1:]
    tracked.wire, tracked.wired = wire, len(ordered)
    return wire


# A frozen contact's JSON, compressed: this byte, then an LZ4 block. LZ4, not zlib level 1: 2.7
# against 25.9 µs to pack a contact and 1.6 against 11.1 µs to unpack, for 686 against 517 bytes
# (3,893 contacts of 40k simulated events, 3,622 bytes of JSON on average; freezing and unpacking
# were 3.4 % of an analytics worker's loop in a py-spy of `make bench`'s analytics pass). KPI emit,
# which freezes, went from 10.6-11.3 to 8.2-8.9 µs an event (120k simulated events, min of 3 runs).
_PACKED = b"\x00"


def _pack(wire: bytes) -> bytes:
    packed: bytes = lz4.block.compress(wire)
    return _PACKED + packed


def _unpack(packed: bytes) -> bytes:
    # a restore keeps the JSON as read (packing it there took 0.9 s of a 7.2 s restore) and
    # `repack` compresses it later; JSON starts with "["
    if packed[:1] != _PACKED:
        return packed
    wire: bytes = lz4.block.decompress(packed[1:])
    return wire


@dataclass(slots=True)
class _Tracked:
    # None while frozen: an ended contact with no open window keeps its events as `packed` only
    events: dict[str, EventBase] | None
    ended_ms: int | None = None
    last_ms: int = 0
    facts: ContactFacts | None = None
    packed: bytes | None = None  # while frozen: the events' JSON array, LZ4-compressed (`_pack`)
    # the events of `events` as entries in sorted order, kept so on `add` (they mostly come in
    # order: an append) so no fold sorts them again; empty while frozen
    ordered: list[Entry] = field(default_factory=list)
    # `_wire` of `ordered[:wired]` while live: a checkpoint serializes only the events added since
    # the one before, and a freeze none (an event inserted before the last one drops it). ~0.35 KB
    # an event until the contact is frozen; benchmarks/steps.py's emit (which freezes) went from
    # 11.1-11.7 to 5.8 µs an event (200k events, 2 alternating runs)
    wire: bytes | None = None
    wired: int = 0
    # the fold of `ordered[:fold.count]` while live: facts fold only the events added since (a
    # fold read 9.2 entries on average, 3 of them new; an insert before the last event drops it).
    # Apply + settle 30.3-39.1 -> 28.6-32.9 µs an event (120k simulated events, 5 alternating runs)
    fold: _Fold | None = None

    def live(self) -> dict[str, EventBase]:
        """The events, parsed again from `packed` if the contact was frozen (one pydantic-core call)."""
        if self.events is None:
            assert self.packed is not None
            self.events = {e.event_id: e for e in _EVENT_LIST.validate_json(_unpack(self.packed))}
            self.ordered = sorted(entry_of(e) for e in self.events.values())
            previous = None
            for entry in self.ordered:
                previous = share_parts(entry[3], previous)
            self.packed = None
        return self.events

    def insert(self, event: EventBase, t: int | None = None) -> Entry:
        """Add an event not held yet to `events` and `ordered` (the contact must be live)."""
        assert self.events is not None
        share_parts(event, self.ordered[-1][3] if self.ordered else None)
        self.events[event.event_id] = event
        entry = entry_of(event, t)
        if not self.ordered or entry > self.ordered[-1]:
            self.ordered.append(entry)
        else:
            insort(self.ordered, entry)
            self.wire = None
            self.fold = None
        return entry


class ContactTracker:
    """The event sets of live contacts, keyed by contact_id, with cached facts.

    A contact is evicted (by `evict(now_ms)`, `now_ms` an event-time clock such as a watermark) once
    `ended_retention` has passed since its first `ended` (default 26 h, long enough for late surveys,
    resolution and reopen), or `unended_retention` since its last event when it never ended
    (default 7 days, so a contact stuck without `ended` cannot hold memory for ever). An event that
    arrives for an evicted contact starts a fresh event set.
    """

    def __init__(
        self,
        *,
        ended_retention: timedelta = timedelta(hours=26),
        unended_retention: timedelta = timedelta(days=7),
        short_abandon_seconds: float = DEFAULT_SHORT_ABANDON_SECONDS,
    ) -> None:
        self.ended_retention_ms = int(ended_retention.total_seconds() * 1000)
        self.unended_retention_ms = int(unended_retention.total_seconds() * 1000)
        self.short_abandon_seconds = short_abandon_seconds
        self._contacts: dict[str, _Tracked] = {}
        # contacts added to or removed since the last `drain_changes` (incremental checkpoints)
        self._changed: set[str] = set()
        # (due ms, contact_id): when a contact may first be past retention; checked and pushed again
        # later when its due moved (`expired` walked every contact, each prune)
        self._due: list[tuple[int, str]] = []
        self._unpacked: list[str] = []  # restored as read, to be compressed by `repack`

    def __len__(self) -> int:
        return len(self._contacts)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self._contacts

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._contacts))

    def add(self, event: EventBase, t: int | None = None) -> bool:
        """Add an event; False when its event_id is already in the contact's set (a duplicate).
        `t`: `to_ms(event.occurred_at)` when the caller has it already."""
        tracked = self._contacts.get(event.contact_id)
        if tracked is None:
            tracked = self._contacts[event.contact_id] = _Tracked(events={})
            heapq.heappush(self._due, (0, event.contact_id))
        if event.event_id in tracked.live():
            return False
        t, _, kind, _ = tracked.insert(event, t)
        tracked.last_ms = max(tracked.last_ms, t)
        if kind == "ended":
            if tracked.ended_ms is None:  # its retention now runs from here (sooner than unended)
                heapq.heappush(self._due, (t + self.ended_retention_ms, event.contact_id))
            tracked.ended_ms = t if tracked.ended_ms is None else min(tracked.ended_ms, t)
        tracked.facts = None
        self._changed.add(event.contact_id)
        return True

    def events(self, contact_id: str) -> list[EventBase]:
        """The contact's events in (occurred_at, event_id) order."""
        tracked = self._contacts.get(contact_id)
        if tracked is None:
            return []
        tracked.live()
        return [entry[3] for entry in tracked.ordered]

    def facts(self, contact_id: str) -> ContactFacts:
        tracked = self._contacts[contact_id]
        if tracked.facts is None:
            tracked.live()
            fold = tracked.fold
            if fold is None:
                fold = tracked.fold = _Fold(tracked.ordered[0])
            fold.feed(tracked.ordered[fold.count :])
            tracked.facts = fold.facts(self.short_abandon_seconds)
        return tracked.facts

    def _due_ms(self, tracked: _Tracked) -> int | None:
        if tracked.ended_ms is not None:
            return tracked.ended_ms + self.ended_retention_ms
        if self.unended_retention_ms:
            return tracked.last_ms + self.unended_retention_ms
        return None  # kept until it ends

    def expired(self, now_ms: int) -> list[str]:
        """Contacts past retention at event time `now_ms` (not removed). An unended contact is kept
        for ever when `unended_retention` is 0. Costs the contacts that came due, not all."""
        out: list[str] = []
        later: list[tuple[int, str]] = []
        looked: set[str] = set()
        due = self._due
        while due and due[0][0] <= now_ms:
            _, contact_id = heapq.heappop(due)
            tracked = self._contacts.get(contact_id)
            if tracked is None or contact_id in looked:
                continue  # forgotten, or a second entry (one per start and per end): dropped
            looked.add(contact_id)
            at = self._due_ms(tracked)
            if at is None:
                continue  # kept until it ends (`add` files it again then)
            if at > now_ms:
                later.append((at, contact_id))
            else:
                out.append(contact_id)
                later.append((now_ms + 1, contact_id))  # a caller may keep it: look again after now
        for entry in later:
            heapq.heappush(due, entry)
        return out

    def forget(self, contact_id: str) -> None:
        if self._contacts.pop(contact_id, None) is not None:
            self._changed.add(contact_id)

    def evict(self, now_ms: int) -> list[str]:
        """Remove and return the contacts past retention at event time `now_ms`."""
        gone = self.expired(now_ms)
        for contact_id in gone:
            del self._contacts[contact_id]
        self._changed.update(gone)
        return gone

    def drain_changes(self) -> set[str]:
        """Contacts added to, changed or removed since the last call (present or not now)."""
        changed, self._changed = self._changed, set()
        return changed

    def contact_wire(self, contact_id: str) -> str | None:
        """The contact's events as a JSON array; None when unknown. A live contact keeps the bytes
        (`_Tracked.wire`) until it is frozen; a frozen one keeps them compressed."""
        tracked = self._contacts.get(contact_id)
        if tracked is None:
            return None
        return _wire(tracked).decode()

    def freeze(self, contact_id: str) -> None:
        """Keep a contact's events as compressed JSON only, until its next event or read:
        pydantic events take ~2.1 KB each in memory, their JSON ~0.35 KB (a half-day simulation at
        rate 4000: 204k events held, 498 MB RSS; 72 MB as JSON), and LZ4 packs a contact's JSON
        5.3x (`_PACKED`).
        Open contacts are frozen too (an email thread waiting days on the customer): at 06:00 of a
        simulated day 2, 17k of 49k held contacts were open and held 244 MB as pydantic events."""
        tracked = self._contacts.get(contact_id)
        if tracked is not None and tracked.events is not None:
            tracked.packed = _pack(_wire(tracked))
            tracked.events = None
            tracked.ordered = []
            tracked.wire = None
            tracked.facts = None
            tracked.fold = None

    def contact_meta(self, contact_id: str) -> tuple[int | None, int] | None:
        """(first `ended` ms or None, latest event ms) of a held contact."""
        tracked = self._contacts.get(contact_id)
        return None if tracked is None else (tracked.ended_ms, tracked.last_ms)

    def restore_frozen(self, contact_id: str, wire: str, ended_ms: int | None, last_ms: int) -> None:
        """Add a contact as its JSON only, without parsing its events (see `freeze`, `repack`)."""
        self._contacts[contact_id] = _Tracked(events=None, ended_ms=ended_ms, last_ms=last_ms, packed=wire.encode())
        heapq.heappush(self._due, (0, contact_id))
        self._unpacked.append(contact_id)

    def repack(self, budget: int) -> None:
        """Compress up to `budget` contacts a restore left as read."""
        while budget > 0 and self._unpacked:
            budget -= 1
            tracked = self._contacts.get(self._unpacked.pop())
            if tracked is not None and tracked.packed is not None and tracked.packed[:1] != _PACKED:
                tracked.packed = _pack(tracked.packed)

    def restore_contact(self, wire: str | bytes) -> None:
        """Add a contact from its `contact_wire` (one pydantic-core parse for all its events)."""
        for event in _EVENT_LIST.validate_json(wire):
            self.add(event)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: every tracked event in wire form, grouped by contact."""
        state: dict[str, Any] = json.loads(self.snapshot_json())
        return state

    def snapshot_json(self) -> str:
        """`snapshot()` as JSON text (the whole state: for tests and tools; checkpoints are per contact)."""
        parts = [f"{json.dumps(cid)}:{self.contact_wire(cid)}" for cid in self._contacts]
        return '{"contacts":{' + ",".join(parts) + "}}"

    def restore(self, state: dict[str, Any]) -> None:
        self._contacts.clear()
        for raw_events in state.get("contacts", {}).values():
            for event in _EVENT_LIST.validate_python(raw_events):
                self.add(event)

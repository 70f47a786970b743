"""What a journey needs to know about one contact: a pure function of the contact's event SET.

`summarise(events)` deduplicates on `event_id` (first seen wins), sorts by `(occurred_at, event_id)`
and folds. (`pipeline.kpi.facts.ContactFacts` is built the same way but carries no intent, no
resolving author and no voice answer time, and its first-response rule differs, so journeys derive
their own summary here instead of adapting it.)

Rules (times are epoch milliseconds, UTC):

* **channel** of the first event; **intent** is the last non-empty `intent` in sort order (an agent's
  reclassification wins over the IVR's or bot's guess), None when no event carries one.
* **started_at** is the first event's time (normally `contact_started`); **last_activity_at** the
  last event's time, whatever its type; **ended_at** the last `ended`.
* **first_human_at**: for voice the first `agent_assigned` (the call is answered by a human), for
  every other channel the first `first_agent_reply` or `agent_reply`.
* **Resolution.** A `resolved` while not resolved resolves the contact (`resolved_at`,
  `resolved_by` of that event; `resolutions` counts these); a `reopened` while resolved clears
  `resolved_at` / `resolved_by`. Any `reopened` sets `reopened`.
* **transfers** counts `transferred`. **bot_involved**: any `bot_turn` or `bot_handoff`, or any
  event naming a `bot_id`. **bot_handoff**: any `bot_handoff`. **bot_contained**: bot involved,
  resolved now, and no `bot_handoff`, `queued` or `agent_assigned`. **ivr_zero_out**: any
  `ivr_zero_out`. **abandoned**: any `abandoned`.
* **Surveys**: the last answer of each of CSAT, CES and NPS in sort order, with its time.
* `identity_link` events are ignored (they are identity, not contact activity); a set holding
  nothing else is an error, like an empty one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.events.models import Channel, EventBase, IdentityLink, Resolved, SurveyResponse, event_type
from pipeline.kpi.facts import sort_events
from pipeline.times import EPOCH as EPOCH  # re-exported: pipeline.journeys.record imports it from here
from pipeline.times import from_ms as from_ms  # re-exported: journeys.rows and worker.journeys import it from here
from pipeline.times import to_ms


@dataclass(frozen=True, slots=True)
class Score:
    """A survey answer: its score and when it was given (epoch ms)."""

    score: int
    at: int


@dataclass(frozen=True, slots=True)
class ContactSummary:
    """One contact as journeys see it. Build with `summarise`."""

    contact_id: str
    channel: str
    intent: str | None
    started_at: int
    last_activity_at: int
    ended_at: int | None = None
    first_human_at: int | None = None
    resolved_at: int | None = None
    resolved_by: str | None = None
    resolutions: int = 0
    reopened: bool = False
    transfers: int = 0
    bot_involved: bool = False
    bot_handoff: bool = False
    bot_contained: bool = False
    ivr_zero_out: bool = False
    abandoned: bool = False
    csat: Score | None = None
    ces: Score | None = None
    nps: Score | None = None
    events: int = 0

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None


def summarise(events: Iterable[EventBase]) -> ContactSummary:
    """The summary of one contact from the set of its events (rules in the module docstring)."""
    ordered = [e for e in sort_events(events) if not isinstance(e, IdentityLink)]
    if not ordered:
        raise ValueError("a contact needs at least one event")
    first = ordered[0]
    contact_id = first.contact_id
    channel = Channel(first.channel)
    intent: str | None = None
    ended_at: int | None = None
    first_human_at: int | None = None
    resolved_at: int | None = None
    resolved_by: str | None = None
    resolutions = 0
    reopened = False
    transfers = 0
    bot_involved = False
    bot_handoff = False
    routed = False
    zero_out = False
    abandoned = False
    surveys: dict[str, Score] = {}
    human_types = {"agent_assigned"} if channel == Channel.VOICE else {"first_agent_reply", "agent_reply"}
    for event in ordered:
        if event.contact_id != contact_id:
            raise ValueError(f"events of two contacts: {contact_id!r} and {event.contact_id!r}")
        kind = event_type(event)
        t = to_ms(event.occurred_at)
        if event.intent:
            intent = event.intent
        if event.bot_id:
            bot_involved = True
        if kind in human_types and first_human_at is None:
            first_human_at = t
        if kind == "resolved":
            assert isinstance(event, Resolved)
            if resolved_at is None:
                resolved_at, resolved_by = t, str(event.resolved_by.value)
                resolutions += 1
        elif kind == "reopened":
            reopened = True
            resolved_at = resolved_by = None
        elif kind == "ended":
            ended_at = t
        elif kind == "transferred":
            transfers += 1
        elif kind == "bot_turn":
            bot_involved = True
        elif kind == "bot_handoff":
            bot_involved = bot_handoff = True
        elif kind in ("queued", "agent_assigned"):
            routed = True
        elif kind == "ivr_zero_out":
            zero_out = True
        elif kind == "abandoned":
            abandoned = True
        elif kind == "survey_response":
            assert isinstance(event, SurveyResponse)
            surveys[event.survey] = Score(event.score, t)
    return ContactSummary(
        contact_id=contact_id,
        channel=channel.value,
        intent=intent,
        started_at=to_ms(first.occurred_at),
        last_activity_at=to_ms(ordered[-1].occurred_at),
        ended_at=ended_at,
        first_human_at=first_human_at,
        resolved_at=resolved_at,
        resolved_by=resolved_by,
        resolutions=resolutions,
        reopened=reopened,
        transfers=transfers,
        bot_involved=bot_involved,
        bot_handoff=bot_handoff,
        bot_contained=bot_involved and resolved_at is not None and not bot_handoff and not routed,
        ivr_zero_out=zero_out,
        abandoned=abandoned,
        csat=surveys.get("csat"),
        ces=surveys.get("ces"),
        nps=surveys.get("nps"),
        events=len(ordered),
    )

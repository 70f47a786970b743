"""The journey rules: a customer's journeys as a pure function of their contact summaries.

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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.journeys.contact import ContactSummary, Score
from pipeline.journeys.effort import EffortInputs, effort_score
from pipeline.journeys.model import Journey, JourneyConfig, JourneyStep, Status


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

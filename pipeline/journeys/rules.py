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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.frozen import builder
from pipeline.journeys.contact import ContactSummary, Score
from pipeline.journeys.effort import effort_of
from pipeline.journeys.model import Journey, JourneyConfig, JourneySpan, JourneyStep, Status


@dataclass(slots=True)
class _Open:
    contacts: list[ContactSummary] = field(default_factory=list)
    reopened: bool = False
    last_activity_at: int = 0


def _order(contact: ContactSummary) -> tuple[int, str]:
    return (contact.started_at, contact.contact_id)


StepCache = dict[str, tuple[ContactSummary, JourneyStep]]

_new_step = builder(JourneyStep)
_new_journey = builder(Journey)
_new_span = builder(JourneySpan)


def build_journeys(
    contacts: Iterable[ContactSummary],
    config: JourneyConfig | None = None,
    *,
    customer: str = "",
    as_of: int | None = None,
    steps: StepCache | None = None,
) -> list[Journey]:
    """The journeys of one customer's contacts (rules in the module docstring), in start order.
    `steps`: the caller's cache of each contact's step (contact id -> the summary it was made of and
    the step), reused while the contact's summary and place in its journey stay the same."""
    config = config or JourneyConfig()
    cache: StepCache = {} if steps is None else steps
    return [_journey(g, customer, config, as_of, cache) for g in _groups(contacts, config)]


def journey_span(contact_id: str, contacts: Mapping[str, ContactSummary], config: JourneyConfig) -> JourneySpan | None:
    """Of the journey holding `contact_id` among one customer's `contacts`, what retention needs: its
    id, contacts and the times it closes by, without building journeys (building all of the
    customer's per check took 11.3 of eviction's 19.6 s in a profiled run; unprofiled, eviction went
    from 46.7 to 25.2 µs a contact record: benchmarks/journeys.py --days 4 --windows short)."""
    mine = contacts.get(contact_id)
    if mine is None:
        return None
    # journeys never mix intents, and a contact without one is a journey of its own
    same = [mine] if mine.intent is None else [c for c in contacts.values() if c.intent == mine.intent]
    for group in _groups(same, config):
        if any(c.contact_id == contact_id for c in group.contacts):
            ids = tuple([c.contact_id for c in group.contacts])
            return _new_span(f"j-{ids[0]}", ids, group.contacts[-1].resolved_at, group.last_activity_at)
    return None


def _groups(contacts: Iterable[ContactSummary], config: JourneyConfig) -> list[_Open]:
    """The contacts grouped into journeys, in start order."""
    groups: list[_Open] = []
    latest: dict[str, _Open] = {}
    dormancy, repeat_window = config.dormancy_ms, config.repeat_window_ms
    for contact in sorted(contacts, key=_order):
        group: _Open | None = None
        intent = contact.intent
        if intent is not None:
            candidate = latest.get(intent)
            if candidate is not None:
                last = candidate.contacts[-1]
                resolved_at = last.resolved_at
                if resolved_at is None or contact.started_at < resolved_at:
                    if contact.started_at - candidate.last_activity_at <= dormancy:
                        group = candidate
                elif contact.started_at - resolved_at <= repeat_window:
                    group = candidate
                    group.reopened = True
        if group is None:
            group = _Open()
            groups.append(group)
            if intent is not None:
                latest[intent] = group
        group.contacts.append(contact)
        if contact.last_activity_at > group.last_activity_at:
            group.last_activity_at = contact.last_activity_at
    return groups


def _step(n: int, c: ContactSummary) -> JourneyStep:
    return _new_step(
        n, c.contact_id, c.channel, c.started_at, c.last_activity_at, c.ended_at, c.first_human_at,
        c.resolved_at, c.resolved_by, c.bot_involved, c.bot_handoff, c.bot_contained, c.transfers,
        c.ivr_zero_out, c.abandoned, c.reopened,
    )  # fmt: skip


def _journey(group: _Open, customer: str, config: JourneyConfig, as_of: int | None, cache: StepCache) -> Journey:
    contacts = group.contacts
    first, last = contacts[0], contacts[-1]
    # one pass over the contacts for every per-contact figure (a generator per figure cost twice)
    steps: list[JourneyStep] = []
    reopened = group.reopened
    human_at: int | None = None
    human_channel: str | None = None
    csat: Score | None = None
    ces: Score | None = None
    nps: Score | None = None
    switches = transfers = zero_outs = handoffs = abandoned = 0
    previous: str | None = None
    for n, c in enumerate(contacts, start=1):
        cached = cache.get(c.contact_id)
        if cached is not None and cached[0] is c and cached[1].step == n:
            step = cached[1]
        else:
            step = _step(n, c)
            cache[c.contact_id] = (c, step)
        steps.append(step)
        channel = c.channel
        if previous is not None and channel != previous:
            switches += 1
        previous = channel
        if c.reopened:
            reopened = True
        at = c.first_human_at
        # the earliest first human response; equal times: the smallest channel name
        if at is not None and (human_at is None or at < human_at or (at == human_at and channel < human_channel)):  # type: ignore[operator]
            human_at, human_channel = at, channel
        # surveys: the latest answer (equal times: the later contact's)
        score = c.csat
        if score is not None and (csat is None or score.at >= csat.at):
            csat = score
        score = c.ces
        if score is not None and (ces is None or score.at >= ces.at):
            ces = score
        score = c.nps
        if score is not None and (nps is None or score.at >= nps.at):
            nps = score
        transfers += c.transfers
        zero_outs += c.ivr_zero_out
        handoffs += c.bot_handoff
        abandoned += c.abandoned
    resolved_at = last.resolved_at
    status: Status
    if resolved_at is not None:
        status = "resolved"
    elif as_of is not None and as_of - group.last_activity_at > config.dormancy_ms:
        status = "dormant"
    else:
        status = "open"
    elapsed_ms = (resolved_at if resolved_at is not None else group.last_activity_at) - first.started_at
    ces_score = None if ces is None else ces.score
    effort = effort_of(
        len(contacts), switches, transfers, zero_outs, handoffs, abandoned, elapsed_ms / 1000,
        resolved_at is not None, ces_score,
    )  # fmt: skip
    return _new_journey(
        f"j-{first.contact_id}", customer, first.intent, status, first.started_at, group.last_activity_at,
        tuple(steps), reopened, resolved_at, last.resolved_by if resolved_at is not None else None, human_at,
        human_channel, csat, ces, nps, effort,
    )  # fmt: skip

"""One contact's KPI measures per window key, from its facts.

Attribution: each measure lands in the window of the event that completes it
    offered -> `queued`; answered, ASA, service level -> `agent_assigned`; abandoned and short
    abandons -> `abandoned`; Amazon-style "removed within T" -> the removing `agent_assigned` or
    `abandoned`; FRT -> the first agent reply; NRT -> the answering reply; AHT -> `ended`;
    surveys -> `survey_response`; resolved -> `resolved`; first-contact resolved -> `ended`;
    transfers -> `transferred`; bot contained -> first of (`resolved` by bot, `ended`);
    bot handoffs -> first `bot_handoff`; IVR zero-outs -> `ivr_zero_out`.
Backlog and oldest wait are states, not events: they are measured at the window's end instant
(legs queued before the end and not removed before it; see `QueueLeg.waiting_at` and
`pipeline.kpi.backlog`).
"""

from __future__ import annotations

from pipeline.kpi.facts import ContactFacts, Stamp
from pipeline.kpi.measures import Measures, WindowKey, window_of
from pipeline.kpi.settings import KpiConfig


def contributions(facts: ContactFacts, config: KpiConfig) -> dict[WindowKey, Measures]:
    """One contact's measures per window key, each in the window of the event that completes it."""
    out: dict[WindowKey, Measures] = {}
    channel = facts.channel
    threshold = config.threshold(channel)

    def at(stamp: Stamp) -> Measures:
        key = (window_of(stamp.at_ms), channel, stamp.queue, stamp.priority)
        found = out.get(key)
        if found is None:
            found = out[key] = Measures()
        return found

    for leg in facts.legs:
        at(Stamp(leg.queued_ms, leg.queue, leg.priority)).count("offered")
        wait = leg.wait_seconds
        if leg.answered_ms is not None and wait is not None:
            m = at(Stamp(leg.answered_ms, leg.queue, leg.priority))
            m.count("answered")
            m.value("answer_waits", wait)
            if wait <= threshold:
                m.count("answered_within_sl")
                m.count("removed_within_sl")
        abandon_wait = leg.abandon_wait_seconds
        if leg.abandoned_ms is not None and abandon_wait is not None:
            m = at(Stamp(leg.abandoned_ms, leg.queue, leg.priority))
            m.count("abandoned")
            if abandon_wait < config.short_abandon_seconds:
                m.count("short_abandoned")
            if abandon_wait <= threshold:
                m.count("removed_within_sl")
    if facts.first_reply is not None:
        at(facts.first_reply.stamp).value("first_response_times", facts.first_reply.value)
    for nrt in facts.next_responses:
        at(nrt.stamp).value("next_response_times", nrt.value)
    if facts.ended is not None and facts.handle_seconds is not None:
        at(facts.ended).value("handle_times", facts.handle_seconds)
    for stamp in facts.transfers:
        at(stamp).count("transfers")
    if facts.bot_contained is not None:
        at(facts.bot_contained).count("bot_contained")
    if facts.bot_handoff is not None:
        at(facts.bot_handoff).count("bot_handoffs")
    for stamp in facts.ivr_zero_outs:
        at(stamp).count("ivr_zero_outs")
    for stamp in facts.resolutions:
        at(stamp).count("resolved")
    if facts.first_contact_resolved is not None:
        at(facts.first_contact_resolved).count("first_contact_resolved")
    for answer in facts.surveys:
        m = at(answer.stamp)
        if answer.survey == "csat":
            m.count("csat_responses")
            if answer.score >= 4:
                m.count("csat_satisfied")
        elif answer.survey == "ces":
            m.count("ces_responses")
            m.count("ces_score_sum", answer.score)
        elif answer.survey == "nps":
            m.count("nps_responses")
            if answer.score >= 9:
                m.count("nps_promoters")
            elif answer.score <= 6:
                m.count("nps_detractors")
    return {k: v for k, v in out.items() if not v.is_empty()}

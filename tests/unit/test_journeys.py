"""Contact summaries, journey rules, effort, the journey store, and agreement with the simulator."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import (
    Abandoned,
    AgentAssigned,
    Author,
    BotHandoff,
    BotTurn,
    Channel,
    ContactStarted,
    CustomerIdentifiers,
    Ended,
    EventBase,
    FirstAgentReply,
    Identifier,
    IdentifierKind,
    IdentityLink,
    IvrZeroOut,
    Queued,
    Reopened,
    Resolved,
    SurveyResponse,
    Transferred,
)
from pipeline.journeys import (
    ContactSummary,
    EffortInputs,
    JourneyConfig,
    JourneyStore,
    Stitcher,
    build_journeys,
    effort_score,
    journey_row,
    step_rows,
    summarise,
)
from pipeline.journeys.model import Journey, JourneySpan, JourneyVersion
from pipeline.journeys.rules import journey_span
from pipeline.simulator.model import DAY, SimConfig, Simulation
from pipeline.times import iso_ms, to_ms

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T0_MS = to_ms(T0)
HOUR_S = 3600
DAY_S = 86_400
_ids = itertools.count()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ms(seconds: float) -> int:
    return T0_MS + int(seconds * 1000)


def ev(
    model: type[EventBase],
    contact: str,
    seconds: float,
    *,
    channel: Channel = Channel.VOICE,
    intent: str | None = "billing",
    customer: CustomerIdentifiers | None = None,
    **fields: Any,
) -> EventBase:
    return model(
        event_id=f"{contact}-e{next(_ids):06d}",
        occurred_at=at(seconds),
        channel=channel,
        contact_id=contact,
        intent=intent,
        customer=customer or CustomerIdentifiers(),
        **fields,
    )


def contact_events(
    contact: str,
    start: float,
    *,
    channel: Channel = Channel.CHAT,
    intent: str | None = "billing",
    customer: CustomerIdentifiers | None = None,
    resolve_after: float | None = 600,
    reopen_after: float | None = None,
    link: tuple[Identifier, Identifier] | None = None,
) -> list[EventBase]:
    """A simple contact: started, (link), queued, answered, first reply, resolved?, ended."""
    kw: dict[str, Any] = {"channel": channel, "intent": intent, "customer": customer}
    events = [ev(ContactStarted, contact, start, **kw)]
    if link is not None:
        events.append(ev(IdentityLink, contact, start, left=link[0], right=link[1], **kw))
    events += [
        ev(Queued, contact, start + 5, **kw),
        ev(AgentAssigned, contact, start + 60, **kw),
        ev(FirstAgentReply, contact, start + 65, **kw),
    ]
    if resolve_after is not None:
        events.append(ev(Resolved, contact, start + resolve_after, **kw))
        if reopen_after is not None:
            events.append(ev(Reopened, contact, start + resolve_after + reopen_after, **kw))
    events.append(ev(Ended, contact, start + max(resolve_after or 0, 70) + (reopen_after or 0) + 30, **kw))
    return events


def summary(contact: str, start_s: float, **kwargs: Any) -> ContactSummary:
    return summarise(contact_events(contact, start_s, **kwargs))


# -------------------------------------------------------------------------------------------------
# Contact summaries


def test_summary_is_a_function_of_the_event_set() -> None:
    events = contact_events("c1", 0, resolve_after=300)
    shuffled = events[::-1] + events[:3]
    assert summarise(shuffled) == summarise(events)
    s = summarise(events)
    assert (s.contact_id, s.channel, s.intent) == ("c1", "chat", "billing")
    assert s.started_at == ms(0)
    assert s.first_human_at == ms(65)  # chat: first agent reply
    assert s.resolved_at == ms(300) and s.resolved_by == "agent" and s.resolutions == 1
    assert s.ended_at == ms(330) and s.last_activity_at == ms(330)
    assert s.events == len(events)


def test_voice_first_human_is_the_answer_and_reopen_clears_resolution() -> None:
    s = summary("v1", 0, channel=Channel.VOICE, resolve_after=200, reopen_after=100)
    assert s.first_human_at == ms(60)
    assert s.resolved_at is None and s.resolved_by is None and s.reopened and s.resolutions == 1
    again = summarise([*contact_events("v2", 0, resolve_after=200, reopen_after=100), ev(Resolved, "v2", 900)])
    assert again.resolved_at == ms(900) and again.resolutions == 2 and again.reopened


def test_summary_bot_ivr_transfer_abandon_surveys_and_intent() -> None:
    web = Channel.WEB
    contained = summarise(
        [
            ev(ContactStarted, "w1", 0, channel=web, intent=None, bot_id="bot-web"),
            ev(BotTurn, "w1", 5, channel=web, author=Author.CUSTOMER, bot_id="bot-web"),
            ev(Resolved, "w1", 30, channel=web, resolved_by=Author.CUSTOMER, bot_id="bot-web"),
            ev(SurveyResponse, "w1", 40, channel=web, survey="csat", score=2),
            ev(SurveyResponse, "w1", 50, channel=web, survey="csat", score=5),
            ev(SurveyResponse, "w1", 50, channel=web, survey="ces", score=1),
        ]
    )
    assert contained.bot_involved and contained.bot_contained and not contained.bot_handoff
    assert contained.resolved_by == "customer"
    assert contained.csat is not None and contained.csat.score == 5
    assert contained.ces is not None and contained.ces.score == 1 and contained.nps is None
    assert contained.intent == "billing"  # the later events carry it

    handed = summarise(
        [
            ev(ContactStarted, "h1", 0, channel=Channel.CHAT, intent=None, bot_id="bot"),
            ev(BotHandoff, "h1", 20, channel=Channel.CHAT, intent="tech"),
            ev(Queued, "h1", 21, channel=Channel.CHAT, intent="tech"),
            ev(AgentAssigned, "h1", 40, channel=Channel.CHAT, intent="tech"),
            ev(Transferred, "h1", 50, channel=Channel.CHAT, intent="tech"),
            ev(Transferred, "h1", 60, channel=Channel.CHAT, intent="returns"),
            ev(Resolved, "h1", 90, channel=Channel.CHAT, intent="returns"),
        ]
    )
    assert handed.bot_handoff and not handed.bot_contained and handed.transfers == 2
    assert handed.intent == "returns" and handed.first_human_at is None  # no agent reply yet

    call = summarise(
        [
            ev(ContactStarted, "v9", 0, intent=None),
            ev(IvrZeroOut, "v9", 10, intent=None, ivr_node="main"),
            ev(Abandoned, "v9", 30, intent=None, stage="queue"),
        ]
    )
    assert call.ivr_zero_out and call.abandoned and call.intent is None and call.resolved_at is None


# -------------------------------------------------------------------------------------------------
# Journey rules


def ids(journeys: Iterable[Journey]) -> list[tuple[str, ...]]:
    return [j.contact_ids for j in journeys]


def test_first_contact_resolution_and_journey_id() -> None:
    (journey,) = build_journeys([summary("c1", 0, resolve_after=90.5)], customer="cust:C1")
    assert journey.journey_id == "j-c1" and journey.customer == "cust:C1"
    assert journey.status == "resolved" and journey.first_contact_resolved
    assert journey.time_to_resolution_s == 90.5 and journey.time_to_first_human_s == 65.0
    assert journey.resolving_channel == "chat" and journey.resolved_by == "agent"


def test_repeat_contact_within_window_reopens_the_journey() -> None:
    first = summary("c1", 0, resolve_after=600)
    again = summary("c2", 600 + 7 * DAY_S - 1, channel=Channel.VOICE, resolve_after=100)
    (journey,) = build_journeys([again, first])
    assert journey.contact_ids == ("c1", "c2") and journey.reopened and not journey.first_contact_resolved
    assert journey.channel_path == ("chat", "voice") and journey.channel_switches == 1
    assert journey.resolved_at == again.resolved_at
    assert journey.time_to_resolution_s == round((again.started_at + 100_000 - first.started_at) / 1000, 3)
    # just outside the window: a new issue
    late = summary("c3", 600 + 7 * DAY_S + 1, resolve_after=100)
    assert ids(build_journeys([first, late])) == [("c1",), ("c3",)]


def test_unresolved_journey_joins_until_dormant() -> None:
    failed = summary("c1", 0, resolve_after=None)  # ends at 100 s
    back = summary("c2", 100 + 14 * DAY_S, resolve_after=60)
    (journey,) = build_journeys([failed, back])
    assert journey.contact_ids == ("c1", "c2") and not journey.reopened
    assert not journey.first_contact_resolved and journey.status == "resolved"
    too_late = summary("c3", 101 + 14 * DAY_S, resolve_after=60)
    journeys = build_journeys([failed, too_late], as_of=ms(101 + 14 * DAY_S))
    assert ids(journeys) == [("c1",), ("c3",)]
    assert [j.status for j in journeys] == ["dormant", "resolved"]


def test_status_at_as_of() -> None:
    (journey,) = build_journeys([summary("c1", 0, resolve_after=None)], as_of=ms(100 + 14 * DAY_S))
    assert journey.status == "open"
    (journey,) = build_journeys([summary("c1", 0, resolve_after=None)], as_of=ms(101 + 14 * DAY_S))
    assert journey.status == "dormant"
    (journey,) = build_journeys([summary("c1", 0, resolve_after=None)])
    assert journey.status == "open"


def test_intents_and_unknown_intents_make_separate_journeys() -> None:
    contacts = [
        summary("a", 0, intent="billing", resolve_after=None),
        summary("b", 100, intent="tech", resolve_after=None),
        summary("c", 200, intent="billing"),
        summary("d", 300, intent=None),
        summary("e", 400, intent=None),
    ]
    assert ids(build_journeys(contacts)) == [("a", "c"), ("b",), ("d",), ("e",)]


def test_reopened_contact_is_not_first_contact_resolved() -> None:
    (journey,) = build_journeys([summary("c1", 0, resolve_after=100, reopen_after=50)])
    assert not journey.resolved and journey.reopened
    reopened_then_resolved = summarise(
        [*contact_events("c2", 0, resolve_after=100, reopen_after=50), ev(Resolved, "c2", 500, channel=Channel.CHAT)]
    )
    (journey,) = build_journeys([reopened_then_resolved])
    assert journey.resolved and not journey.first_contact_resolved


def test_configurable_windows() -> None:
    config = JourneyConfig(repeat_window_ms=HOUR_S * 1000, dormancy_ms=2 * HOUR_S * 1000)
    first = summary("c1", 0, resolve_after=100)
    assert len(build_journeys([first, summary("c2", 100 + HOUR_S, resolve_after=5)], config)) == 1
    assert len(build_journeys([first, summary("c2", 101 + HOUR_S, resolve_after=5)], config)) == 2
    failed = summary("c1", 0, resolve_after=None)
    assert len(build_journeys([failed, summary("c2", 100 + 2 * HOUR_S)], config)) == 1
    assert len(build_journeys([failed, summary("c2", 101 + 2 * HOUR_S)], config)) == 2


@st.composite
def customer_contacts(draw: st.DrawFn) -> list[ContactSummary]:
    """One customer's contacts over three weeks: intents (or none), resolved or not, reopened."""
    out = []
    for n in range(draw(st.integers(1, 8))):
        out.append(
            summary(
                f"c{n}",
                draw(st.integers(0, 21 * 24)) * 3600 + n,
                intent=draw(st.sampled_from(["billing", "tech", None])),
                resolve_after=draw(st.sampled_from([None, 120, 3600])),
                reopen_after=draw(st.sampled_from([None, None, 600])),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(customer_contacts(), st.sampled_from([JourneyConfig(), JourneyConfig(DAY // 2, DAY)]))
def test_a_journey_span_is_the_built_journey_holding_the_contact(
    contacts: list[ContactSummary], config: JourneyConfig
) -> None:
    by_id = {c.contact_id: c for c in contacts}
    for journey in build_journeys(contacts, config):
        expected = JourneySpan(journey.journey_id, journey.contact_ids, journey.resolved_at, journey.last_activity_at)
        for contact_id in journey.contact_ids:
            assert journey_span(contact_id, by_id, config) == expected
    assert journey_span("nobody", by_id, config) is None


# -------------------------------------------------------------------------------------------------
# Effort


def test_effort_formula_is_pinned() -> None:
    assert effort_score(EffortInputs(contacts=1, resolved=True)) == 0.0
    assert effort_score(EffortInputs(contacts=1, resolved=False)) == 10.0
    assert effort_score(EffortInputs(contacts=1, resolved=True, elapsed_seconds=36 * 3600)) == 10.0
    assert effort_score(EffortInputs(contacts=1, resolved=True, elapsed_seconds=30 * 86_400)) == 20.0
    busy = EffortInputs(
        contacts=3,
        channel_switches=2,
        transfers=1,
        ivr_zero_outs=1,
        bot_handoffs=1,
        abandoned_contacts=1,
        elapsed_seconds=7.2 * 3600,
        resolved=True,
    )
    # 24 + 16 + 6 + 5 + 4 + 5 + 2 = 62
    assert effort_score(busy) == 62.0
    # with CES 4: 0.5 * 62 + 0.5 * 50 = 56
    with_ces = EffortInputs(
        contacts=3,
        channel_switches=2,
        transfers=1,
        ivr_zero_outs=1,
        bot_handoffs=1,
        abandoned_contacts=1,
        elapsed_seconds=7.2 * 3600,
        resolved=True,
        ces=4,
    )
    assert effort_score(with_ces) == 56.0
    assert effort_score(EffortInputs(contacts=1, resolved=True, ces=7)) == 50.0
    capped = EffortInputs(contacts=20, channel_switches=20, transfers=20, resolved=False)
    assert effort_score(capped) == 100.0


def test_journey_effort_uses_the_formula() -> None:
    first = summarise([*contact_events("c1", 0, channel=Channel.VOICE, resolve_after=None), ev(Transferred, "c1", 20)])
    second = summary("c2", 3600, channel=Channel.EMAIL, resolve_after=7200 - 3600)
    (journey,) = build_journeys([first, second])
    expected = effort_score(
        EffortInputs(contacts=2, channel_switches=1, transfers=1, elapsed_seconds=7200, resolved=True)
    )
    assert journey.effort == expected == round(12 + 8 + 6 + 20 * 2 / 72, 1)


# -------------------------------------------------------------------------------------------------
# The store: versions, merges, retractions, dormancy, snapshots


def feed(stitcher: Stitcher, events: Iterable[EventBase]) -> None:
    for event in events:
        stitcher.observe(event)


def latest_state(emitted: Iterable[JourneyVersion]) -> dict[str, Journey]:
    """The table as FINAL would show it: highest version per journey, retractions dropped."""
    best: dict[str, JourneyVersion] = {}
    for v in emitted:
        current = best.get(v.journey.journey_id)
        assert current is None or v.version > current.version
        best[v.journey.journey_id] = v
    return {jid: v.journey for jid, v in best.items() if not v.deleted}


def test_changes_versions_and_no_op_calls() -> None:
    stitcher = Stitcher()
    cookie = CustomerIdentifiers(web_cookie="ck-1")
    events = contact_events("c1", 0, customer=cookie, resolve_after=None)
    feed(stitcher, events[:3])
    (v1,) = stitcher.changes()
    assert (v1.version, v1.journey.status, v1.journey.customer) == (1, "open", "web_cookie:ck-1")
    assert stitcher.changes() == []
    feed(stitcher, events[:3])  # duplicates change nothing
    assert stitcher.changes() == []
    feed(stitcher, events[3:])
    (v2,) = stitcher.changes()
    assert v2.version == 2 and v2.journey.contact_ids == ("c1",)


def test_late_identity_link_regroups_and_retracts() -> None:
    """c2 (cookie only) first looks like another customer's separate journey; the late link shows
    it is C1's repeat contact: j-c2 is retracted and j-c1 gains c2."""
    stitcher = Stitcher()
    known = CustomerIdentifiers(customer_id="C1")
    cookie = CustomerIdentifiers(web_cookie="ck-1")
    link = (
        Identifier(kind=IdentifierKind.WEB_COOKIE, value="ck-1"),
        Identifier(kind=IdentifierKind.CUSTOMER_ID, value="C1"),
    )
    feed(stitcher, contact_events("c1", 0, customer=known, resolve_after=100))
    c2 = contact_events("c2", 3600, channel=Channel.WEB, customer=cookie, resolve_after=100, link=link)
    c2_link = [e for e in c2 if isinstance(e, IdentityLink)]
    feed(stitcher, [e for e in c2 if not isinstance(e, IdentityLink)])
    first = {v.journey.journey_id: v for v in stitcher.changes()}
    assert set(first) == {"j-c1", "j-c2"}
    assert first["j-c2"].journey.customer == "web_cookie:ck-1"
    feed(stitcher, c2_link)
    second = {v.journey.journey_id: v for v in stitcher.changes()}
    assert second["j-c2"].deleted and second["j-c2"].version == 2
    assert second["j-c1"].journey.contact_ids == ("c1", "c2") and second["j-c1"].version == 2
    assert second["j-c1"].journey.reopened and not second["j-c1"].journey.first_contact_resolved
    rows = step_rows(second["j-c2"])
    assert [(r["contact_id"], r["is_deleted"]) for r in rows] == [("c2", 1)]
    assert journey_row(second["j-c2"])["is_deleted"] == 1


def test_contact_leaving_a_journey_retracts_its_step() -> None:
    stitcher = Stitcher()
    cust = CustomerIdentifiers(customer_id="C1")
    feed(stitcher, contact_events("c1", 0, customer=cust, resolve_after=None))
    feed(stitcher, contact_events("c2", 600, customer=cust, resolve_after=100))
    (v1,) = stitcher.changes()
    assert v1.journey.contact_ids == ("c1", "c2")
    # an agent reclassifies c2: it leaves j-c1 and is a journey of its own
    stitcher.observe(ev(Resolved, "c2", 800, channel=Channel.CHAT, intent="tech", customer=cust))
    changed = {v.journey.journey_id: v for v in stitcher.changes()}
    assert changed["j-c1"].removed_contacts == ("c2",) and changed["j-c1"].version == 2
    assert changed["j-c2"].journey.contact_ids == ("c2",) and changed["j-c2"].version == 1
    retracted = [r for r in step_rows(changed["j-c1"]) if r["is_deleted"]]
    assert [(r["journey_id"], r["contact_id"]) for r in retracted] == [("j-c1", "c2")]


def test_open_journey_turns_dormant_without_new_events() -> None:
    stitcher = Stitcher()
    feed(stitcher, contact_events("c1", 0, customer=CustomerIdentifiers(customer_id="C1"), resolve_after=None))
    (v1,) = stitcher.changes(as_of=ms(3600))
    assert v1.journey.status == "open"
    assert stitcher.changes(as_of=ms(14 * DAY_S)) == []
    (v2,) = stitcher.changes(as_of=ms(15 * DAY_S))
    assert v2.journey.status == "dormant" and v2.version == v1.version + 1


def test_snapshot_restore_continues_where_it_left() -> None:
    stitcher = Stitcher()
    cust = CustomerIdentifiers(customer_id="C1")
    feed(stitcher, contact_events("c1", 0, customer=cust, resolve_after=None))
    stitcher.changes()
    feed(stitcher, contact_events("c2", 60, customer=CustomerIdentifiers(phone="+1555"), resolve_after=None)[:2])
    data = json.loads(json.dumps(stitcher.snapshot()))
    restored = Stitcher.restore(data)
    assert restored.snapshot() == stitcher.snapshot()
    assert restored.changes() == stitcher.changes()
    link = ev(
        IdentityLink,
        "c2",
        61,
        customer=CustomerIdentifiers(phone="+1555"),
        left=Identifier(kind=IdentifierKind.PHONE, value="+1555"),
        right=Identifier(kind=IdentifierKind.CUSTOMER_ID, value="C1"),
    )
    restored.observe(link)
    stitcher.observe(link)
    assert restored.changes() == stitcher.changes() != []


def test_evict_forgets_only_closed_journeys() -> None:
    store = JourneyStore()
    cust = CustomerIdentifiers(customer_id="C1")
    stitcher = Stitcher(store=store)
    feed(stitcher, contact_events("old", 0, customer=cust, resolve_after=100))
    feed(stitcher, contact_events("new", 10 * DAY_S, customer=cust, intent="tech", resolve_after=None))
    stitcher.changes()
    assert store.evict(ms(8 * DAY_S)) == 0
    assert store.evict(ms(9 * DAY_S)) == 1
    assert [j.contact_ids for j in store.all_journeys()] == [("new",)]


def test_retention_drops_what_a_dropped_contacts_links_tied() -> None:
    """A contact whose link tied two identifiers it does not carry: once the customer is forgotten
    by retention, so is the component its link made (nothing else would ever reach it)."""
    stitcher = Stitcher()
    email = Identifier(kind=IdentifierKind.EMAIL, value="x@example.org")
    cookie = Identifier(kind=IdentifierKind.WEB_COOKIE, value="ck-x")
    feed(stitcher, contact_events("k1", 0, customer=CustomerIdentifiers(phone="+4411"), link=(email, cookie)))
    stitcher.changes()
    assert stitcher.graph.customer_of_value("web_cookie", "ck-x") == "email:x@example.org"
    assert len(stitcher.graph) == 4  # the contact, its phone, the linked e-mail and cookie
    written = {key for key, members in stitcher.identity_changes() if members is not None}
    assert written == {("phone", "+4411"), ("email", "x@example.org")}
    for days in (9, 20, 40):
        stitcher.evict_due(ms(days * DAY_S))
    assert stitcher.records == {} and len(stitcher.graph) == 0
    assert sorted(stitcher.identity_changes()) == [(key, None) for key in sorted(written)]


def test_forget_erases_the_person_and_everything_stitched_to_them() -> None:
    """Erasure by one identifier: every contact, identifier and journey of the customer goes (the
    cookie-only contact tied to them by a link included) and the tables' entries are marked gone;
    another customer is untouched, and a restore from what is left knows nothing of the person."""
    stitcher = Stitcher()
    known, cookie = CustomerIdentifiers(customer_id="C1"), CustomerIdentifiers(web_cookie="ck-1")
    link = (
        Identifier(kind=IdentifierKind.WEB_COOKIE, value="ck-1"),
        Identifier(kind=IdentifierKind.CUSTOMER_ID, value="C1"),
    )
    feed(stitcher, contact_events("c1", 0, customer=known, resolve_after=100))
    c2 = contact_events("c2", 3600, channel=Channel.WEB, customer=cookie, link=link)
    feed(stitcher, [e for e in c2 if not isinstance(e, IdentityLink)])
    feed(stitcher, contact_events("c3", 60, customer=CustomerIdentifiers(customer_id="C2", phone="+4477")))
    stitcher.changes()
    feed(stitcher, [e for e in c2 if isinstance(e, IdentityLink)])  # j-c2 retracted, c2 joins j-c1
    stitcher.changes()
    stitcher.record_changes.clear()
    stitcher.store.emitted_changes.clear()
    assert stitcher.graph.customer_of_value("web_cookie", "ck-1") == "cust:C1"
    other = stitcher.store.journeys("cust:C2")

    dropped = stitcher.forget(set(), [("customer_id", "C1")])

    assert dropped == 2 + 2  # records c1, c2; journey entries j-c1 and the retracted j-c2
    assert stitcher.record_changes == {"c1", "c2"}
    assert stitcher.store.emitted_changes == {"j-c1", "j-c2"}
    for kind, value in (("customer_id", "C1"), ("web_cookie", "ck-1")):
        assert stitcher.graph.customer_of_value(kind, value) is None
    assert stitcher.graph.customer_of_contact("c1") is stitcher.graph.customer_of_contact("c2") is None
    assert set(stitcher.records) == {"c3"} and set(stitcher.store.books) == {"cust:C2"}
    assert stitcher.store.journeys("cust:C1") == [] and stitcher.changes() == []
    assert stitcher.store.journeys("cust:C2") == other
    assert stitcher.graph.customer_of_value("phone", "+4477") == "cust:C2"
    kept = [(j, e) for j in ("j-c1", "j-c2", "j-c3") if (e := stitcher.store.emitted(j)) is not None]
    restored = Stitcher.from_state(list(stitcher.records.values()), kept)
    assert [j for j, _ in kept] == ["j-c3"]
    assert restored.graph.customer_of_value("customer_id", "C1") is None
    assert restored.store.journeys("cust:C2") == other
    # forgetting again (or someone unknown) finds nothing
    assert stitcher.forget({"c1"}, [("customer_id", "C1")], ["cust:C1"]) == 0


# -------------------------------------------------------------------------------------------------
# Arrival order and duplicates do not matter


@st.composite
def scenarios(draw: st.DrawFn) -> list[EventBase]:
    events: list[EventBase] = []
    n = 0
    for c in range(draw(st.integers(1, 3))):
        cid = Identifier(kind=IdentifierKind.CUSTOMER_ID, value=f"C{c}")
        own = {
            Channel.WEB: Identifier(kind=IdentifierKind.WEB_COOKIE, value=f"ck-{c}"),
            Channel.VOICE: Identifier(kind=IdentifierKind.PHONE, value=f"+1555000{c}"),
            Channel.EMAIL: Identifier(kind=IdentifierKind.EMAIL, value=f"u{c}@example.com"),
        }
        for _ in range(draw(st.integers(1, 4))):
            n += 1
            channel = draw(st.sampled_from(sorted(own)))
            mine = own[channel]
            on_event = draw(st.booleans())
            customer = CustomerIdentifiers(
                **{mine.kind.value: mine.value, **({"customer_id": cid.value} if on_event else {})}
            )
            start = draw(st.integers(0, 20 * 24)) * 3600 + n
            events += contact_events(
                f"k{n:02d}",
                start,
                channel=channel,
                intent=draw(st.sampled_from(["billing", "tech"])),
                customer=customer,
                resolve_after=draw(st.sampled_from([None, 120, 3600])),
                reopen_after=draw(st.sampled_from([None, None, 600])),
                link=None if on_event else (mine, cid),
            )
    return events


def run(events: Iterable[EventBase], rnd: random.Random | None = None) -> tuple[list[Journey], dict[str, Journey]]:
    stitcher = Stitcher()
    emitted: list[JourneyVersion] = []
    for event in events:
        stitcher.observe(event)
        if rnd is not None and rnd.random() < 0.2:
            emitted += stitcher.changes()
    emitted += stitcher.changes()
    return stitcher.store.all_journeys(), latest_state(emitted)


@settings(max_examples=120, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_any_arrival_order_with_duplicates_gives_the_same_journeys(events: list[EventBase], rnd: random.Random) -> None:
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    expected, expected_table = run(ordered)
    assert {j.journey_id: j for j in expected} == expected_table
    # every contact ended at its true customer (links arriving before or after the contact)
    for journey in expected:
        assert journey.customer.startswith("cust:C")
    shuffled = list(events) + rnd.sample(events, k=len(events) // 3)
    rnd.shuffle(shuffled)
    got, table = run(shuffled, rnd)
    assert got == expected
    assert table == expected_table


# -------------------------------------------------------------------------------------------------
# Agreement with the simulator's ground truth (the pure core of the acceptance test)


def _shuffled_with_duplicates(events: list[EventBase], rnd: random.Random) -> list[EventBase]:
    lateness_ms = 120_000
    keyed = [(to_ms(e.occurred_at) + rnd.uniform(0, lateness_ms), e) for e in events]
    keyed += [(to_ms(e.occurred_at) + rnd.uniform(0, lateness_ms), e) for e in rnd.sample(events, len(events) // 20)]
    keyed.sort(key=lambda pair: pair[0])
    return [e for _, e in keyed]


@pytest.mark.parametrize(
    ("seed", "days", "rate", "customers"),
    [
        (11, 1, 150.0, 20_000),  # one busy day
        (4, 40, 20.0, 100),  # few customers over weeks: repeat contacts, reopened and new journeys
    ],
)
def test_journeys_match_the_simulator_truth(seed: int, days: int, rate: float, customers: int) -> None:
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=seed, start_ms=start, duration_ms=days * DAY, rate=rate, customers=customers)
    sim = Simulation(config)
    events = [event for _, event in sim.run()]
    rnd = random.Random(seed)
    stitcher = Stitcher()
    emitted: list[JourneyVersion] = []
    for n, event in enumerate(_shuffled_with_duplicates(events, rnd)):
        stitcher.observe(event)
        if n % 5000 == 0:
            emitted += stitcher.changes(to_ms(event.occurred_at))
    emitted += stitcher.changes(sim.as_of_ms)
    table = latest_state(emitted)
    ours = {frozenset(j.contact_ids): j for j in table.values()}
    mismatches: list[str] = []
    for truth in sim.journeys:
        t = truth.as_dict()
        journey = ours.get(frozenset(t["contact_ids"]))
        if journey is None:
            mismatches.append(f"{t['journey_id']}: contacts {t['contact_ids']} not one journey")
            continue
        customer = f"cust:{t['customer_id']}" if t["customer_id"] else f"anon:{t['contact_ids'][0]}"
        got = (
            journey.customer,
            list(journey.contact_ids),
            list(journey.channel_path),
            journey.intent,
            iso_ms(journey.started_at),
            journey.first_contact_resolved,
            journey.resolved,
            iso_ms(journey.resolved_at),
            journey.time_to_resolution_s,
            journey.reopened,
        )
        want = (
            customer,
            t["contact_ids"],
            t["channels"],
            t["intent"],
            t["started_at"],
            t["first_contact_resolved"],
            t["resolved"],
            t["resolved_at"],
            t["resolution_seconds"],
            t["reopened"],
        )
        if got != want:
            mismatches.append(f"{t['journey_id']}: got {got}, truth {want}")
    compared = len(sim.journeys)
    repeats = sum(1 for j in sim.journeys if len(j.contacts) > 1)
    reopened = sum(1 for j in sim.journeys if j.reopened)
    print(
        f"compared {compared} journeys ({repeats} multi-contact, {reopened} reopened; "
        f"{len(sim.contacts)} contacts, {len(events)} events) with the truth"
    )
    assert compared > 1000
    assert len(table) == compared
    assert mismatches == []


# -------------------------------------------------------------------------------------------------
# DDL and views (embedded ClickHouse)


def _insert(client: Client, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    client.insert(table, [[row[c] for c in columns] for row in rows], column_names=columns)


def test_rows_load_and_views_answer(clickhouse: Client) -> None:
    stitcher = Stitcher()
    known = CustomerIdentifiers(customer_id="VIEW-C1")
    cookie = CustomerIdentifiers(web_cookie="view-ck-1")
    link = (
        Identifier(kind=IdentifierKind.WEB_COOKIE, value="view-ck-1"),
        Identifier(kind=IdentifierKind.CUSTOMER_ID, value="VIEW-C1"),
    )
    emitted: list[JourneyVersion] = []
    web = [
        ev(ContactStarted, "vw1", 0, channel=Channel.WEB, customer=cookie, bot_id="bot"),
        ev(BotTurn, "vw1", 5, channel=Channel.WEB, customer=cookie, bot_id="bot", author=Author.CUSTOMER),
        ev(Abandoned, "vw1", 30, channel=Channel.WEB, customer=cookie, bot_id="bot", stage="bot"),
        ev(Ended, "vw1", 30, channel=Channel.WEB, customer=cookie, bot_id="bot"),
    ]
    feed(stitcher, web)
    feed(stitcher, contact_events("vv1", 600, channel=Channel.VOICE, customer=known, resolve_after=300))
    emitted += stitcher.changes()  # two journeys: the link is still missing
    feed(stitcher, [ev(IdentityLink, "vw1", 0, channel=Channel.WEB, customer=cookie, left=link[0], right=link[1])])
    feed(stitcher, contact_events("ve1", 900, channel=Channel.EMAIL, intent="tech", customer=known, resolve_after=60))
    emitted += stitcher.changes()
    assert any(v.deleted for v in emitted)
    for table, row in (("journeys", journey_row(emitted[0])), ("journey_steps", step_rows(emitted[0])[0])):
        columns = clickhouse.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
            parameters={"t": table},
        ).result_rows
        assert [c for (c,) in columns if c != "updated_at"] == list(row)
    _insert(clickhouse, "journeys", [journey_row(v) for v in emitted])
    _insert(clickhouse, "journey_steps", [row for v in emitted for row in step_rows(v)])

    live = clickhouse.query(
        "SELECT journey_id, contact_ids, channel_path, first_contact_resolved, time_to_resolution_s "
        "FROM journeys FINAL WHERE customer_key = 'cust:VIEW-C1' AND is_deleted = 0 ORDER BY journey_id"
    ).result_rows
    assert live == [("j-ve1", ["ve1"], ["email"], 1, 60.0), ("j-vw1", ["vw1", "vv1"], ["web", "voice"], 0, 900.0)]
    steps = clickhouse.query(
        "SELECT journey_id, contact_id, step FROM journey_steps FINAL "
        "WHERE customer_key = 'cust:VIEW-C1' AND is_deleted = 0 ORDER BY journey_id, step"
    ).result_rows
    assert steps == [("j-ve1", "ve1", 1), ("j-vw1", "vw1", 1), ("j-vw1", "vv1", 2)]

    paths = dict(
        (row[0], row[1:])
        for row in clickhouse.query("SELECT path, journeys, share, fcr_rate FROM journey_top_paths").result_rows
    )
    assert paths["web>voice"][0] >= 1 and paths["email"][0] >= 1
    first = {row[0]: row for row in clickhouse.query("SELECT * FROM journey_fcr_by_first_channel").result_rows}
    assert "web" in first and "email" in first
    days = clickhouse.query("SELECT day, journeys, switch_rate FROM journey_channel_switch_rate").result_rows
    assert any(str(day) == "2026-03-02" for day, _, _ in days)
    bot = clickhouse.query(
        "SELECT first_human_channel, path, journeys FROM journey_bot_escalation_paths WHERE path = 'web>voice'"
    ).result_rows
    assert bot[0][:2] == ("voice", "web>voice")


@pytest.mark.parametrize("survey", ["csat", "ces", "nps"])
def test_latest_survey_of_the_journey_wins(survey: str) -> None:
    scores = {"csat": (1, 5), "ces": (7, 2), "nps": (0, 10)}[survey]
    first = summarise(
        [
            *contact_events("c1", 0, resolve_after=None),
            ev(SurveyResponse, "c1", 50, channel=Channel.CHAT, survey=survey, score=scores[0]),
        ]
    )
    second = summarise(
        [
            *contact_events("c2", 100, resolve_after=60),
            ev(SurveyResponse, "c2", 500, channel=Channel.CHAT, survey=survey, score=scores[1]),
        ]
    )
    (journey,) = build_journeys([first, second])
    answer = getattr(journey, survey)
    assert answer is not None and answer.score == scores[1]


def test_identity_link_alone_is_not_a_contact() -> None:
    stitcher = Stitcher()
    feed(stitcher, contact_events("c1", 0, customer=CustomerIdentifiers(customer_id="C1")))
    crm = ev(
        IdentityLink,
        "crm-merge-1",
        10,
        intent=None,
        customer=CustomerIdentifiers(email="ann@example.com"),
        left=Identifier(kind=IdentifierKind.EMAIL, value="ann@example.com"),
        right=Identifier(kind=IdentifierKind.CUSTOMER_ID, value="C1"),
    )
    assert stitcher.observe(crm).customer == "cust:C1"
    assert [j.contact_ids for j in stitcher.store.all_journeys()] == [("c1",)]
    assert stitcher.store.customer_of("crm-merge-1") is None


def test_overlapping_collection_pauses_resume_the_collector_when_the_last_ends() -> None:
    """Restores on threads at once share one pause: the first to end must not resume collection
    under the others, and the objects made meanwhile are frozen at the end when any pause asked."""
    import gc
    import threading

    from pipeline.journeys.stitcher import collection_paused

    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    first_in, first_out = threading.Event(), threading.Event()

    def first() -> None:
        with collection_paused(freeze=True):
            first_in.set()
            first_out.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with collection_paused():
        assert not gc.isenabled()
        first_out.set()
        thread.join(5)
        assert not gc.isenabled()  # the first pause ended: this one still holds it
        kept = [object() for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(kept)
    gc.unfreeze()

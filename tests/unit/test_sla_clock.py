"""The SLA engine: a scenario per rule, then order-independence, idempotency and snapshot/restore
as properties."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.events.models import MODEL_BY_TYPE, Channel, ContactStarted, EventBase
from pipeline.sla.clock import SLA_EVENT_COLUMNS, SlaEngine, SlaEvent, SlaKind, sla_event_id
from pipeline.sla.policy import PolicySet, Target, parse_policies

DDL = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse" / "0005_sla_events.sql"

POLICIES = """
calendars:
  office:
    timezone: Europe/London
    weekly: {mon: ["08:00-18:00"], tue: ["08:00-18:00"], wed: ["08:00-18:00"], thu: ["08:00-18:00"], fri: ["08:00-18:00"]}
    holidays: [2026-04-03, 2026-04-06]
  ny_days:
    timezone: America/New_York
    weekly: {mon: ["08:00-20:00"], tue: ["08:00-20:00"], wed: ["08:00-20:00"], thu: ["08:00-20:00"],
             fri: ["08:00-20:00"], sat: ["08:00-20:00"], sun: ["08:00-20:00"]}
policies:
  - {name: email, match: {channel: email}, first_response: 24h, next_response: 24h, resolution: 50h, calendar: office}
  - {name: sms, match: {channel: sms}, first_response: 2h, next_response: 2h, resolution: 10h, calendar: ny_days}
  - {name: voice, match: {channel: voice}, first_response: 20s, resolution: 30m}
  - {name: chat-vip, match: {channel: chat, segment: premium}, first_response: 30s, next_response: 30s, resolution: 20m}
  - {name: chat-p2, match: {channel: chat, priority: {min: 2}}, first_response: 45s, resolution: 20m}
  - {name: chat, match: {channel: chat}, first_response: 60s, next_response: 60s, resolution: 30m, at_risk_fraction: 0.5}
  - {name: default, first_response: 5m, next_response: 5m, resolution: 1h}
"""
T0 = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)  # a Friday; New York changes to DST on Sunday 8 March


@pytest.fixture(scope="module")
def policies() -> PolicySet:
    return parse_policies(POLICIES)


_ids = itertools.count()


def ev(kind: str, contact: str, at: datetime | float, channel: str = "chat", **fields: Any) -> EventBase:
    """An event `at` seconds after T0 (or at a datetime)."""
    when = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
    data = {"type": kind, "event_id": f"{contact}-{kind}-{next(_ids)}", "occurred_at": when, "channel": channel}
    if kind == "abandoned":
        data["stage"] = "queue"
    return MODEL_BY_TYPE[kind].model_validate({**data, "contact_id": contact, **fields})


def kinds(events: list[SlaEvent]) -> list[tuple[str, str]]:
    return [(e.kind.value, e.target.value) for e in events]


def run(engine: SlaEngine, *events: EventBase) -> list[SlaEvent]:
    return [out for e in events for out in engine.apply(e)]


# -- first response -------------------------------------------------------------------------------------


def test_voice_answer_in_time_meets_first_response_at_agent_assigned(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    out = run(
        engine,
        ev("contact_started", "v1", 0, "voice"),
        ev("ivr_step", "v1", 30, "voice", ivr_node="main"),
        ev("queued", "v1", 60, "voice", queue="voice.billing"),
        ev("agent_assigned", "v1", 75, "voice"),
    )
    assert kinds(out) == [("met", "first_response")]
    met = out[0]
    assert met.started_at == T0 + timedelta(seconds=60)  # IVR time does not count
    assert (met.elapsed_seconds, met.seconds_late, met.target_seconds, met.queue, met.policy) == (
        15,
        0,
        20,
        "voice.billing",
        "voice",
    )
    assert engine.next_due() == T0 + timedelta(seconds=0.8 * 1800)  # resolution at risk


def test_late_answer_is_breached_then_met_late_whatever_the_advance_calls(policies: PolicySet) -> None:
    events = [ev("queued", "v2", 0, "voice"), ev("agent_assigned", "v2", 25, "voice")]
    direct = run(SlaEngine(policies), *events)
    engine = SlaEngine(policies)
    stepped = engine.apply(events[0]) + engine.advance(T0 + timedelta(seconds=17)) + engine.apply(events[1])
    assert direct == stepped
    assert kinds(direct) == [("at_risk", "first_response"), ("breached", "first_response"), ("met", "first_response")]
    at_risk, breached, met = direct
    assert at_risk.at == T0 + timedelta(seconds=16)
    assert breached.at == breached.deadline == T0 + timedelta(seconds=20)
    assert (met.at, met.seconds_late, met.elapsed_seconds) == (T0 + timedelta(seconds=25), 5, 25)
    assert len({e.sla_event_id for e in direct}) == 3


def test_reply_exactly_at_the_deadline_is_late(policies: PolicySet) -> None:
    out = run(SlaEngine(policies), ev("queued", "v3", 0, "voice"), ev("agent_assigned", "v3", 20, "voice"))
    assert kinds(out)[-2:] == [("breached", "first_response"), ("met", "first_response")]
    assert out[-1].seconds_late == 0


def test_sync_channels_start_at_queued_async_at_arrival(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    run(engine, ev("contact_started", "c", 0), ev("bot_turn", "c", 5, author="customer"))
    assert [e.target for e in engine.advance(T0 + timedelta(hours=2))] == [Target.RESOLUTION] * 2  # no FR
    engine = SlaEngine(policies)
    run(engine, ev("contact_started", "s", 0, "sms"), ev("queued", "s", 600, "sms"))
    out = engine.advance(T0 + timedelta(days=3))
    first = [e for e in out if e.target is Target.FIRST_RESPONSE]
    assert first[0].started_at == T0


def test_policy_is_chosen_with_what_is_known_when_each_obligation_starts(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    out = run(
        engine,
        ev("contact_started", "p", 0),
        ev("queued", "p", 10, segment="premium", queue="chat.billing"),
        ev("first_agent_reply", "p", 15),
        ev("customer_message", "p", 20, priority=0, segment=None),  # unset fields do not erase
        ev("agent_reply", "p", 25),
        ev("resolved", "p", 30),
    )
    assert [(e.target.value, e.policy, e.segment) for e in out] == [
        ("first_response", "chat-vip", "premium"),
        ("next_response", "chat-vip", "premium"),
        ("resolution", "chat", None),
    ]
    engine = SlaEngine(policies)
    out = run(engine, ev("queued", "q", 0, priority=3), ev("first_agent_reply", "q", 1, priority=0))
    assert (out[0].policy, out[0].priority) == ("chat-p2", 3)
    assert run(engine, ev("customer_message", "q", 2)) == []  # chat-p2 has no next_response target
    assert engine.next_due() is None  # no resolution clock: contact_started never came
    # transfers move the queue to the destination
    engine = SlaEngine(policies)
    run(engine, ev("contact_started", "t", 0), ev("transferred", "t", 1, queue="a", to_queue="b"), ev("queued", "t", 2))
    assert run(engine, ev("first_agent_reply", "t", 3))[0].queue == "b"


# -- next response ----------------------------------------------------------------------------------------


def test_next_response_chain(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    early = ev("customer_message", "n", 5)
    out = run(engine, ev("contact_started", "n", 0), ev("queued", "n", 1), early, ev("first_agent_reply", "n", 10))
    assert kinds(out) == [("met", "first_response")]  # a message before the first reply opens nothing
    m1, m2, m3 = ev("customer_message", "n", 20), ev("customer_message", "n", 30), ev("customer_message", "n", 100)
    out = run(engine, m1, m2, ev("agent_reply", "n", 70), m3)
    assert kinds(out) == [("at_risk", "next_response"), ("met", "next_response")]
    assert out[1].started_at == T0 + timedelta(seconds=20) and out[1].opened_by == m1.event_id  # m2 joined m1's
    out = engine.advance(T0 + timedelta(seconds=200))
    assert kinds(out) == [("at_risk", "next_response"), ("breached", "next_response")]
    assert {e.opened_by for e in out} == {m3.event_id}
    assert out[1].sla_event_id == sla_event_id("n", Target.NEXT_RESPONSE, m3.event_id, SlaKind.BREACHED)


# -- pauses ---------------------------------------------------------------------------------------------------


def test_waiting_on_customer_pauses_every_clock(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    run(engine, ev("contact_started", "w", 0), ev("queued", "w", 0), ev("waiting_on_customer", "w", 10))
    assert engine.next_due() is None  # everything paused
    assert engine.advance(T0 + timedelta(hours=5)) == []
    run(engine, ev("waiting_ended", "w", 100))
    # FR 60 s with 10 s used: deadline 150 s; at risk at 50% = 30 s -> 120 s
    assert engine.next_due() == T0 + timedelta(seconds=120)
    out = engine.advance(T0 + timedelta(seconds=150))
    assert [(e.kind.value, e.at) for e in out] == [
        ("at_risk", T0 + timedelta(seconds=120)),
        ("breached", T0 + timedelta(seconds=150)),
    ]
    out = run(engine, ev("resolved", "w", 200))
    assert kinds(out) == [("cancelled", "first_response"), ("met", "resolution")]
    assert out[0].seconds_late == 50  # 110 s of clock time against 60 s
    assert out[1].elapsed_seconds == 110  # 200 s minus the 90 s pause


def test_obligations_opened_during_a_pause_start_paused(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    run(engine, ev("waiting_on_customer", "x", 0), ev("contact_started", "x", 5), ev("queued", "x", 6))
    assert engine.next_due() is None
    out = run(engine, ev("waiting_ended", "x", 1000), ev("first_agent_reply", "x", 1010))
    assert (out[0].elapsed_seconds, out[0].deadline) == (10, T0 + timedelta(seconds=1060))


def test_a_pause_in_business_time_only_moves_the_deadline_by_open_time(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    start = datetime(2026, 3, 5, 17, 0, tzinfo=UTC)  # Thursday 17:00 GMT, one office hour left
    run(engine, ev("contact_started", "e", start, "email"))
    run(engine, ev("waiting_on_customer", "e", start + timedelta(minutes=30), "email"))
    run(engine, ev("waiting_ended", "e", start + timedelta(hours=16), "email"))  # Fri 09:00: 1 h paused
    out = engine.advance(datetime(2026, 3, 20, tzinfo=UTC))
    breach = next(e for e in out if e.kind is SlaKind.BREACHED and e.target is Target.FIRST_RESPONSE)
    # 0.5 h Thu + 9 h Fri (from 09:00) + 10 h Mon + 4.5 h Tue -> Tue 12:30
    assert breach.deadline == datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


# -- business hours over a weekend, a bank holiday and a DST change ----------------------------------------


def test_email_over_a_weekend_and_bank_holidays(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    started = ev("contact_started", "m", datetime(2026, 3, 27, 16, 0, tzinfo=UTC), "email")  # Fri 16:00 GMT
    run(engine, started)
    reply_at = datetime(2026, 4, 6, 16, 0, tzinfo=UTC)  # Easter Monday
    out = engine.advance(reply_at)
    out += run(engine, ev("first_agent_reply", "m", reply_at, "email"))
    out += engine.advance(datetime(2026, 4, 30, tzinfo=UTC))
    due = {(e.kind.value, e.target.value): e.at for e in out}
    # clocks change on Sunday 29 March: office hours are 07:00-17:00 UTC from Monday
    assert due[("at_risk", "first_response")] == datetime(2026, 3, 31, 14, 12, tzinfo=UTC)  # 19.2 h
    assert due[("breached", "first_response")] == datetime(2026, 4, 1, 9, 0, tzinfo=UTC)  # 24 h
    assert due[("at_risk", "resolution")] == datetime(2026, 4, 2, 15, 0, tzinfo=UTC)  # 40 h
    # 50 h: Good Friday 3 April and Easter Monday 6 April are closed -> Tuesday 16:00 BST
    assert due[("breached", "resolution")] == datetime(2026, 4, 7, 15, 0, tzinfo=UTC)
    met = next(e for e in out if e.kind is SlaKind.MET)
    assert met.seconds_late == 18 * 3600 and met.business_time  # late by business time, not 79 h


def test_business_hours_across_the_new_york_dst_change(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    # Saturday 7 March 19:00 EST; open 08:00-20:00 local every day; 2 h target
    run(engine, ev("contact_started", "d", datetime(2026, 3, 8, 0, 0, tzinfo=UTC), "sms"))
    out = engine.advance(datetime(2026, 3, 9, tzinfo=UTC))
    breach = next(e for e in out if e.kind is SlaKind.BREACHED)
    # 1 h on Saturday, then Sunday opens at 08:00 EDT (12:00 UTC, DST began at 02:00): +1 h
    assert breach.at == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)


# -- closing, reopening --------------------------------------------------------------------------------------


def test_resolution_closes_everything_and_reopen_starts_again(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    out = run(
        engine,
        ev("contact_started", "r", 0),
        ev("queued", "r", 1),
        ev("first_agent_reply", "r", 5),
        ev("customer_message", "r", 10),
        ev("resolved", "r", 12),
        ev("customer_message", "r", 20),  # closed: ignored
        ev("agent_reply", "r", 21),
    )
    assert kinds(out) == [("met", "first_response"), ("cancelled", "next_response"), ("met", "resolution")]
    assert engine.next_due() is None
    reopen = ev("reopened", "r", 1000)
    assert run(engine, reopen) == []
    out = engine.advance(T0 + timedelta(hours=2))
    assert kinds(out) == [("at_risk", "resolution"), ("breached", "resolution")]
    assert out[0].opened_by == reopen.event_id and out[0].started_at == T0 + timedelta(seconds=1000)
    out = run(engine, ev("customer_message", "r", 8000), ev("agent_reply", "r", 8010), ev("resolved", "r", 9000))
    assert kinds(out) == [("met", "next_response"), ("met", "resolution")]
    assert out[1].seconds_late == 9000 - 1000 - 1800


def test_abandon_cancels_all(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    out = run(engine, ev("contact_started", "a", 0, "voice"), ev("queued", "a", 1, "voice"))
    out = run(engine, ev("abandoned", "a", 30, "voice"))
    assert kinds(out) == [
        ("at_risk", "first_response"),
        ("breached", "first_response"),
        ("cancelled", "first_response"),
        ("cancelled", "resolution"),
    ]
    assert out[2].seconds_late == 9
    assert engine.next_due() is None


# -- idempotency, eviction, snapshots -------------------------------------------------------------------------


def test_duplicates_and_repeated_advances_change_nothing(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    started, queued = ev("contact_started", "i", 0), ev("queued", "i", 1)
    run(engine, started, queued)
    snapshot = engine.snapshot()
    assert run(engine, started, queued) == []
    assert engine.snapshot() == snapshot
    first = engine.advance(T0 + timedelta(hours=1))
    assert kinds(first) == [
        ("at_risk", "first_response"),
        ("breached", "first_response"),
        ("at_risk", "resolution"),
        ("breached", "resolution"),
    ]
    assert engine.advance(T0 + timedelta(hours=2)) == []
    assert run(engine, queued) == []
    # a redelivered customer message after the reply must not open another next-response clock
    message = ev("customer_message", "j", 10)
    run(engine, ev("contact_started", "j", 0), ev("queued", "j", 1), ev("first_agent_reply", "j", 5), message)
    assert kinds(run(engine, ev("agent_reply", "j", 20))) == [("met", "next_response")]
    before = engine.next_due()
    assert run(engine, message) == [] and engine.next_due() == before


def test_apply_in_order_refuses_an_event_older_than_the_contact_s_latest(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    assert engine.apply_in_order(ev("survey_response", "o", 9, survey="csat", score=5)) == []  # unknown contact
    assert kinds(engine.apply_in_order(ev("contact_started", "o", 10)) or []) == []
    snapshot = engine.snapshot()
    # older than its latest, whatever its kind: nothing applied
    assert engine.apply_in_order(ev("queued", "o", 5)) is None
    assert engine.apply_in_order(ev("survey_response", "o", 5, survey="csat", score=5)) is None
    assert engine.snapshot() == snapshot
    assert engine.apply_in_order(ev("survey_response", "o", 10, survey="csat", score=5)) == []  # same instant: in order
    assert engine.apply_in_order(ev("queued", "o", 11)) == []
    assert "o" in engine and engine.snapshot() != snapshot


def test_closed_and_idle_contacts_are_evicted(policies: PolicySet) -> None:
    engine = SlaEngine(policies, closed_retention=timedelta(hours=1), idle_timeout=timedelta(days=2))
    run(engine, ev("contact_started", "k", 0), ev("resolved", "k", 10), ev("ended", "k", 10))
    run(engine, ev("contact_started", "idle", 0))
    run(engine, ev("bot_turn", "idle", 3000, author="customer"))
    engine.advance(T0 + timedelta(seconds=3609))
    assert len(engine) == 2
    engine.advance(T0 + timedelta(seconds=3610))
    assert len(engine) == 1
    out = engine.advance(T0 + timedelta(days=2, seconds=2999))
    assert kinds(out) == [] and len(engine) == 1  # its breaches fired long ago; idle clock restarted at 3000 s
    engine.advance(T0 + timedelta(days=2, seconds=3000))
    assert len(engine) == 0
    # a reopen after eviction starts a fresh contact with only the new resolution obligation
    out = run(engine, ev("reopened", "k", 90_000))
    assert len(engine) == 1 and engine.next_due() == T0 + timedelta(seconds=90_000 + 900)


def wire_restored(engine: SlaEngine, policies: PolicySet, contacts: list[str]) -> SlaEngine:
    restored = SlaEngine(policies, closed_retention=timedelta(hours=1))
    for contact in contacts:
        wire = engine.contact_wire(contact)
        assert wire is not None
        restored.restore_wire(contact, wire)
    return restored


def test_closed_contacts_restore_unparsed_and_behave_as_if_never_restored(policies: PolicySet) -> None:
    engine = SlaEngine(policies, closed_retention=timedelta(hours=1))
    run(engine, ev("contact_started", "c", 0), ev("queued", "c", 1), ev("resolved", "c", 10), ev("ended", "c", 12))
    run(engine, ev("contact_started", "d", 0), ev("resolved", "d", 20), ev("ended", "d", 20))
    run(engine, ev("contact_started", "o", 0), ev("queued", "o", 1))  # still timing
    restored = wire_restored(engine, policies, ["c", "d", "o"])
    assert sorted(restored._dormant) == ["c", "d"] and list(restored._contacts) == ["o"]
    assert len(restored) == 3 and "c" in restored
    assert restored.contact_wire("c") == engine.contact_wire("c")  # a checkpoint rewrites it unchanged
    restored.drain_changes()
    # a reopen wakes it: the same outcomes as the engine that never stopped
    reopen = ev("reopened", "c", 600)
    assert run(restored, reopen) == run(engine, reopen) and "c" in restored._contacts
    # the others are evicted at exactly the same instant
    for at in (3619, 3620, 4000, 7200):
        now = T0 + timedelta(seconds=at)
        assert kinds(restored.advance(now)) == kinds(engine.advance(now))
        assert sorted(restored.snapshot()["contacts"], key=str) == sorted(engine.snapshot()["contacts"], key=str)
    assert "d" not in restored and "d" in restored.drain_changes()


def test_snapshot_restore_fires_overdue_deadlines(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    run(engine, ev("contact_started", "z", 0, "email"), ev("queued", "z", 1), ev("waiting_on_customer", "z", 2))
    run(engine, ev("contact_started", "y", 0), ev("queued", "y", 1))
    data = json.loads(json.dumps(engine.snapshot()))
    restored = SlaEngine(policies)
    restored.restore(data)
    assert restored.snapshot() == data and restored.next_due() == engine.next_due()
    later = T0 + timedelta(days=1)
    assert restored.advance(later) == engine.advance(later)
    assert run(restored, ev("waiting_ended", "z", 90_000, "email")) == []
    with pytest.raises(ValueError, match="snapshot version"):
        restored.restore({"version": 99, "contacts": []})


def test_nothing_due_with_many_open_contacts(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    at = T0 + timedelta(seconds=1)
    for i in range(100_000):
        engine.apply(
            ContactStarted.model_construct(event_id=f"e{i}", occurred_at=at, channel=Channel.CHAT, contact_id=f"c{i}")
        )
    assert len(engine) == 100_000
    assert engine.next_due() == at + timedelta(minutes=15)
    for _ in range(1000):
        assert engine.advance(at + timedelta(minutes=1)) == []
    assert engine.open_counts() == {("chat", "resolution"): 100_000}


def test_open_counts_follow_obligations_as_they_open_and_close(policies: PolicySet) -> None:
    engine = SlaEngine(policies)
    run(engine, ev("queued", "a", 0, "voice"), ev("queued", "b", 0, "voice"), ev("contact_started", "m", 0, "email"))
    email = {("email", "first_response"): 1, ("email", "resolution"): 1}
    assert engine.open_counts() == {("voice", "first_response"): 2, **email}
    run(engine, ev("agent_assigned", "a", 5, "voice"))
    assert engine.open_counts() == {("voice", "first_response"): 1, **email}


def test_rows_follow_the_ddl(policies: PolicySet) -> None:
    block = DDL.read_text().split("(", 1)[1].split("\n)\n", 1)[0]
    columns = tuple(m.group(1) for m in re.finditer(r"^\s{4}(\w+)\s", block, re.MULTILINE))
    assert columns == SLA_EVENT_COLUMNS
    event = run(SlaEngine(policies), ev("queued", "row", 0, "voice"), ev("agent_assigned", "row", 1, "voice"))[0]
    row = event.to_row(T0)
    assert len(row) == len(SLA_EVENT_COLUMNS) and row[5] == "" and row[-1] == T0
    assert json.loads(json.dumps(event.to_dict()))["at"] == "2026-03-06T15:00:01.000Z"
    assert re.search(r"ReplacingMergeTree\(emitted_at\)", DDL.read_text())


# -- properties ------------------------------------------------------------------------------------------------

STEPS = [
    "queued",
    "agent_assigned",
    "first_agent_reply",
    "agent_reply",
    "customer_message",
    "customer_message",
    "waiting_on_customer",
    "waiting_ended",
    "resolved",
    "reopened",
    "abandoned",
    "transferred",
    "ended",
]


@st.composite
def contacts(draw: st.DrawFn, index: int) -> list[EventBase]:
    """One contact's events in strictly increasing event time (a plausible or a strange order)."""
    cid = f"c{index}"
    channel = draw(st.sampled_from([c.value for c in Channel]))
    at = T0 + timedelta(milliseconds=draw(st.integers(0, 3 * 86_400_000)))
    extra = {"segment": draw(st.sampled_from([None, "premium"])), "priority": draw(st.integers(0, 3))}
    events = [ev("contact_started", cid, at, channel, **extra)]
    for step in draw(st.lists(st.sampled_from(STEPS), max_size=10)):
        at += timedelta(milliseconds=draw(st.one_of(st.integers(1, 120_000), st.integers(1, 8 * 3_600_000))))
        fields: dict[str, Any] = {"priority": draw(st.integers(0, 3))}
        if step == "transferred":
            fields["to_queue"] = draw(st.sampled_from(["a", "b"]))
        if step == "queued":
            fields["queue"] = draw(st.sampled_from(["a", "b", None]))
        events.append(ev(step, cid, at, channel, **fields))
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> list[list[EventBase]]:
    return [draw(contacts(i)) for i in range(draw(st.integers(1, 5)))]


def canonical(policies: PolicySet, streams: list[list[EventBase]]) -> Counter[SlaEvent]:
    engine = SlaEngine(policies, closed_retention=timedelta(days=60))
    out: list[SlaEvent] = []
    for event in sorted((e for s in streams for e in s), key=lambda e: (e.occurred_at, e.contact_id)):
        out += engine.apply(event)
    out += engine.advance(T0 + timedelta(days=90))
    return Counter(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_any_interleaving_with_watermark_advances_duplicates_and_a_restart_gives_the_same_events(
    policies: PolicySet, streams: list[list[EventBase]], data: st.DataObject
) -> None:
    expected = canonical(policies, streams)
    assert all(n == 1 for n in expected.values())  # each event raised once
    assert len({e.sla_event_id for e in expected}) == len(expected)

    engine = SlaEngine(policies, closed_retention=timedelta(days=60))
    pending = [list(s) for s in streams]
    fed: list[EventBase] = []
    out: list[SlaEvent] = []
    while any(pending):
        choice = data.draw(st.sampled_from([i for i, s in enumerate(pending) if s]))
        event = pending[choice].pop(0)
        out += engine.apply(event)
        fed.append(event)
        action = data.draw(
            st.sampled_from(
                ["none", "advance", "duplicate", "duplicate", "checkpoint", "restart", "restart by contact"]
            )
        )
        if action == "checkpoint":
            engine.snapshot_json()  # caches each contact's part: a later restart must not see stale ones
        elif action == "advance" and any(pending):
            watermark = min(s[0].occurred_at for s in pending if s)
            out += engine.advance(watermark - timedelta(milliseconds=data.draw(st.integers(0, 60_000))))
        elif action == "duplicate":
            out += engine.apply(data.draw(st.sampled_from(fed)))
        elif action == "restart":
            restored = SlaEngine(policies, closed_retention=timedelta(days=60))
            restored.restore(json.loads(json.dumps(engine.snapshot())))
            engine = restored
        elif action == "restart by contact":  # as a worker restores its checkpoint rows
            restored = SlaEngine(policies, closed_retention=timedelta(days=60))
            for contact_id in {e.contact_id for e in fed}:
                wire = engine.contact_wire(contact_id)
                if wire is not None:
                    restored.restore_wire(contact_id, wire)
            engine = restored
        assert engine.open_counts() == open_walked(engine)
    out += engine.advance(T0 + timedelta(days=90))
    assert Counter(out) == expected
    assert engine.open_counts() == open_walked(engine)


def open_walked(engine: SlaEngine) -> dict[tuple[str, str], int]:
    """(channel, target) -> obligations open, counted over every contact the engine holds."""
    counts: Counter[tuple[str, str]] = Counter()
    for contact_id in list(engine._contacts) + list(engine._dormant):
        wire = engine.contact_wire(contact_id)
        assert wire is not None
        data = json.loads(wire)  # a dormant contact's wire is JSON too (its eviction time first)
        counts.update((data["channel"], ob["target"]) for ob in data["open"])
    return dict(counts)


def test_open_counts_follow_forgets_and_evictions(policies: PolicySet) -> None:
    engine = SlaEngine(policies, closed_retention=timedelta(hours=1))
    for n in range(3):
        engine.apply(ev("contact_started", f"v{n}", T0, "voice"))
        engine.apply(ev("queued", f"v{n}", T0 + timedelta(seconds=1), "voice", queue="a"))
    assert engine.open_counts() == open_walked(engine) == {("voice", "first_response"): 3, ("voice", "resolution"): 3}
    engine.forget("v0")
    assert engine.open_counts() == open_walked(engine) == {("voice", "first_response"): 2, ("voice", "resolution"): 2}
    engine.apply(ev("abandoned", "v1", T0 + timedelta(seconds=5), "voice"))
    engine.apply(ev("ended", "v1", T0 + timedelta(seconds=5), "voice"))
    engine.advance(T0 + timedelta(hours=2))  # v1 closed an hour ago: evicted
    assert "v1" not in engine
    assert engine.open_counts() == open_walked(engine) == {("voice", "first_response"): 1, ("voice", "resolution"): 1}


def test_a_resolved_contact_that_has_not_ended_is_kept_for_its_reopen(policies: PolicySet) -> None:
    """A ticket resolved, then reopened days later by a customer message: retention must not have
    dropped it, so the message after the reopen opens a next-response clock as for any contact."""
    engine = SlaEngine(policies, closed_retention=timedelta(hours=1))
    run(engine, ev("contact_started", "t", 0), ev("queued", "t", 1), ev("first_agent_reply", "t", 5))
    run(engine, ev("resolved", "t", 10))
    engine.advance(T0 + timedelta(days=3))
    assert len(engine) == 1
    run(engine, ev("reopened", "t", 3 * 86_400 + 1), ev("customer_message", "t", 3 * 86_400 + 2))
    out = engine.advance(T0 + timedelta(days=4))
    assert ("breached", "next_response") in kinds(out)

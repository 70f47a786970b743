"""Per-contact facts: hand-written scenarios for every rule, and a random contact generator shared
with the window tests."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import EVENT_ADAPTER, EventBase
from pipeline.kpi.facts import ContactTracker, contact_facts, sort_events
from pipeline.times import to_ms

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count()


def ev(kind: str, at: float, contact: str = "c1", channel: str = "voice", **fields: Any) -> EventBase:
    """An event `at` seconds after BASE."""
    raw: dict[str, Any] = {
        "type": kind,
        "event_id": f"{contact}-{next(_ids):06d}",
        "occurred_at": (BASE + timedelta(seconds=at)).isoformat(),
        "channel": channel,
        "contact_id": contact,
        "priority": fields.pop("priority", 0),
        **fields,
    }
    event: EventBase = EVENT_ADAPTER.validate_python(raw)
    return event


def random_contact(rng: random.Random, contact: str, channel: str, start: float) -> list[EventBase]:
    """A plausible contact: IVR or bot, queue legs with answers/abandons/transfers, replies, holds,
    resolution and reopen, end, surveys. Some contacts stay open (waiting) at the end."""
    out: list[EventBase] = []
    t = start
    prio = rng.choice([0, 0, 1, 5])
    queue = rng.choice(["q.a", "q.b"])

    def add(kind: str, dt: float = 0.0, **fields: Any) -> None:
        nonlocal t
        t = round(t + dt, 3)
        fields.setdefault("priority", prio)
        out.append(ev(kind, t, contact, channel, **fields))

    add("contact_started")
    if rng.random() < 0.3:
        add("bot_turn", rng.uniform(1, 10), author="customer")
        add("bot_turn", rng.uniform(1, 10), author="bot")
        roll = rng.random()
        if roll < 0.3:
            add("resolved", rng.uniform(1, 5), resolved_by="bot")
            add("ended", 0.0)
            return out
        if roll < 0.4:
            add("abandoned", rng.uniform(1, 5), stage="bot")
            add("ended")
            return out
        add("bot_handoff", rng.uniform(1, 5))
    elif rng.random() < 0.2:
        add("ivr_zero_out", rng.uniform(1, 10), ivr_node="main")
    for leg in range(rng.choice([1, 1, 2])):
        add("queued", rng.uniform(0.5, 5), queue=queue)
        roll = rng.random()
        if roll < 0.15:
            return out  # still waiting
        if roll < 0.3:
            add("abandoned", rng.choice([rng.uniform(0.1, 4.9), rng.uniform(5, 200)]), stage="queue", queue=queue)
            add("ended", 0.0, queue=queue)
            return out
        add("agent_assigned", rng.uniform(0.5, 90), queue=queue)
        add("first_agent_reply" if leg == 0 else "agent_reply", rng.uniform(1, 5), queue=queue)
        for _ in range(rng.randint(0, 3)):
            add("customer_message", rng.uniform(1, 30), queue=queue)
            if rng.random() < 0.3:
                add("customer_message", rng.uniform(1, 30), queue=queue)
            if rng.random() < 0.2:
                add("waiting_on_customer", rng.uniform(1, 5), queue=queue)
                add("waiting_ended", rng.uniform(1, 50), queue=queue)
            add("agent_reply", rng.uniform(1, 60), queue=queue)
        if rng.random() < 0.3:
            add("hold_started", rng.uniform(1, 20), queue=queue)
            add("hold_ended", rng.uniform(1, 90), queue=queue)
        if leg == 0 and rng.random() < 0.4:
            new_queue = "q.c"
            add("transferred", rng.uniform(1, 30), queue=queue, to_queue=new_queue)
            queue = new_queue
            continue
        break
    if rng.random() < 0.6:
        add("resolved", rng.uniform(1, 30), queue=queue)
        if rng.random() < 0.3:
            add("reopened", rng.uniform(1, 60), queue=queue)
            add("customer_message", 0.0, queue=queue)
            add("agent_reply", rng.uniform(1, 60), queue=queue)
            if rng.random() < 0.5:
                add("resolved", rng.uniform(1, 30), queue=queue)
    if rng.random() < 0.9:
        add("ended", rng.uniform(1, 30), queue=queue, acw_seconds=round(rng.uniform(0, 60), 3))
        for survey, high in (("csat", 5), ("ces", 7), ("nps", 10)):
            if rng.random() < 0.4:
                add("survey_response", rng.uniform(1, 60), queue=queue, survey=survey, score=rng.randint(1, high))
    return out


# ------------------------------------------------------------------------------ scenarios


def test_voice_call_with_hold_transfer_and_acw() -> None:
    events = [
        ev("contact_started", 0),
        ev("ivr_step", 2, ivr_node="main"),
        ev("ivr_zero_out", 5, ivr_node="main"),
        ev("queued", 6, queue="voice.general", priority=2),
        ev("agent_assigned", 16, queue="voice.general", priority=2),
        ev("first_agent_reply", 19, queue="voice.general", priority=2),
        ev("hold_started", 40, queue="voice.general", priority=2),
        ev("hold_ended", 70, queue="voice.general", priority=2),
        ev("transferred", 100, queue="voice.general", to_queue="voice.tech", priority=2),
        ev("queued", 100, queue="voice.tech", priority=2),
        ev("agent_assigned", 130, queue="voice.tech", priority=2),
        ev("resolved", 300, queue="voice.tech", priority=2),
        ev("ended", 300, queue="voice.tech", acw_seconds=25.5, priority=2),
    ]
    f = contact_facts(events)
    assert f.channel == "voice" and f.queues == ("voice.general", "voice.tech")
    first, second = f.legs
    assert first.wait_seconds == 10.0 and first.transferred_ms == to_ms(BASE) + 100_000
    assert second.wait_seconds == 30.0 and second.removed_ms == to_ms(BASE) + 130_000
    assert f.first_reply is not None and f.first_reply.value == 19.0
    assert f.hold_seconds == 30.0
    # talk = 16..300 minus the 30 s re-queue wait; hold is inside talk
    assert f.talk_seconds == 254.0 and f.acw_seconds == 25.5 and f.handle_seconds == 279.5
    assert [(s.queue, s.priority) for s in f.transfers] == [("voice.general", 2)]
    assert f.ivr_zero_outs[0].queue == ""  # before any queue leg: the event's own queue
    assert f.ended is not None and f.ended.queue == "voice.tech"
    assert f.first_contact_resolved == f.ended and f.resolved
    assert not f.bot_involved and f.bot_contained is None


def test_short_and_long_abandons_and_waiting_legs() -> None:
    short = contact_facts([ev("queued", 0, queue="q"), ev("abandoned", 4.999, stage="queue"), ev("ended", 5)])
    assert short.short_abandon and short.legs[0].abandon_wait_seconds == 4.999
    long = contact_facts([ev("queued", 0, queue="q"), ev("abandoned", 5, stage="queue")])
    assert not long.short_abandon and long.abandon_stage == "queue"
    waiting = contact_facts([ev("queued", 0, queue="q"), ev("queued", 3, queue="q")])  # a repeat
    assert len(waiting.legs) == 1 and waiting.legs[0].removed_ms is None
    end = to_ms(BASE) + 60_000
    assert waiting.legs[0].waiting_at(end) and not waiting.legs[0].waiting_at(to_ms(BASE))
    ivr = contact_facts([ev("ivr_step", 0, ivr_node="main"), ev("abandoned", 3, stage="ivr")])
    assert ivr.legs == () and ivr.abandoned_ms is not None and ivr.abandon_stage == "ivr"


def test_first_and_next_response_times_pause_while_waiting_on_customer() -> None:
    f = contact_facts(
        [
            ev("contact_started", 0, channel="chat"),
            ev("queued", 1, channel="chat", queue="chat.q"),
            ev("agent_assigned", 11, channel="chat", queue="chat.q"),
            ev("first_agent_reply", 20, channel="chat", queue="chat.q"),
            ev("customer_message", 30, channel="chat"),
            ev("customer_message", 35, channel="chat"),  # does not start its own clock
            ev("agent_reply", 50, channel="chat"),  # NRT 20
            ev("agent_reply", 55, channel="chat"),  # nothing pending
            ev("customer_message", 60, channel="chat"),
            ev("waiting_on_customer", 70, channel="chat"),
            ev("waiting_ended", 100, channel="chat"),
            ev("agent_reply", 110, channel="chat"),  # NRT 50 - 30 paused = 20
        ]
    )
    assert f.first_reply is not None and f.first_reply.value == 20.0
    assert [r.value for r in f.next_responses] == [20.0, 20.0]
    assert f.next_responses[0].stamp.queue == "chat.q"


def test_bot_containment_handoff_and_bot_abandon() -> None:
    contained = contact_facts(
        [
            ev("contact_started", 0, channel="web"),
            ev("bot_turn", 1, channel="web", author="customer"),
            ev("resolved", 9, channel="web", resolved_by="customer"),
            ev("ended", 10, channel="web"),
        ]
    )
    assert contained.bot_involved and contained.bot_contained == contained.ended
    by_bot = contact_facts(
        [ev("bot_turn", 1, channel="chat", author="bot"), ev("resolved", 5, channel="chat", resolved_by="bot")]
    )
    assert by_bot.bot_contained is not None and by_bot.bot_contained.at_ms == to_ms(BASE) + 5000
    handoff = contact_facts(
        [
            ev("bot_turn", 1, channel="chat", author="customer"),
            ev("bot_handoff", 3, channel="chat", reason="customer_request"),
            ev("queued", 3, channel="chat", queue="chat.q"),
            ev("ended", 60, channel="chat"),
        ]
    )
    assert handoff.bot_handoff is not None and handoff.bot_contained is None
    left = contact_facts(
        [
            ev("bot_turn", 1, channel="chat", author="customer"),
            ev("abandoned", 5, channel="chat", stage="bot"),
            ev("ended", 5, channel="chat"),
        ]
    )
    assert left.bot_contained is None and left.legs == ()


def test_resolution_reopen_and_first_contact_resolution() -> None:
    base = [ev("queued", 0, channel="email", queue="mail"), ev("agent_assigned", 60, channel="email", queue="mail")]
    reopened = contact_facts(
        [
            *base,
            ev("resolved", 100, channel="email"),
            ev("resolved", 101, channel="email"),  # already resolved: not a new resolution
            ev("reopened", 200, channel="email"),
            ev("resolved", 300, channel="email"),
            ev("ended", 400, channel="email"),
        ]
    )
    assert len(reopened.resolutions) == 2 and len(reopened.reopens) == 1
    assert reopened.resolved and reopened.first_contact_resolved is None
    fcr = contact_facts([*base, ev("resolved", 100, channel="email"), ev("ended", 400, channel="email")])
    assert fcr.first_contact_resolved is not None and fcr.first_contact_resolved.at_ms == to_ms(BASE) + 400_000
    not_ended = contact_facts([*base, ev("resolved", 100, channel="email")])
    assert not_ended.first_contact_resolved is None and not_ended.resolved


def test_surveys_and_handle_time_only_for_answered_contacts() -> None:
    f = contact_facts(
        [
            ev("ended", 10, acw_seconds=3),
            ev("survey_response", 20, survey="csat", score=5),
            ev("survey_response", 21, survey="nps", score=3),
        ]
    )
    assert [(s.survey, s.score) for s in f.surveys] == [("csat", 5), ("nps", 3)]
    assert f.handle_seconds is None and f.acw_seconds == 3


def _redelivered(seed: int, shuffler: random.Random) -> tuple[list[EventBase], list[EventBase]]:
    """A random contact's events, and them with a few duplicates in a shuffled arrival order."""
    events = random_contact(random.Random(seed), "c", "chat", 0.0)
    arrivals = events + shuffler.sample(events, k=min(3, len(events)))
    shuffler.shuffle(arrivals)
    return events, arrivals


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_facts_are_a_function_of_the_event_set(seed: int, shuffler: random.Random) -> None:
    events, reordered = _redelivered(seed, shuffler)
    assert contact_facts(reordered) == contact_facts(events)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_tracker_facts_match_contact_facts_in_any_arrival_order(seed: int, shuffler: random.Random) -> None:
    # the tracker keeps a contact's events sorted as they arrive (and again after a freeze)
    events, arrivals = _redelivered(seed, shuffler)
    tracker = ContactTracker()
    for i, event in enumerate(arrivals):
        tracker.add(event)
        assert tracker.facts("c") == contact_facts(arrivals[: i + 1])
        if shuffler.random() < 0.3:
            tracker.freeze("c")
    assert tracker.events("c") == sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    assert tracker.facts("c") == contact_facts(events)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_contact_wire_is_the_events_held_in_any_arrival_order(seed: int, shuffler: random.Random) -> None:
    # the wire a live contact keeps between checkpoints (appended to, dropped by an insert before
    # its last event or a freeze) is always every event held so far, in order, and restores them
    _, arrivals = _redelivered(seed, shuffler)
    tracker = ContactTracker()
    for i, event in enumerate(arrivals):
        tracker.add(event)
        if shuffler.random() < 0.5:
            wire = tracker.contact_wire("c")
            assert wire is not None
            held = sort_events(arrivals[: i + 1])
            assert json.loads(wire) == [e.model_dump(mode="json", exclude_none=True) for e in held]
            restored = ContactTracker()
            restored.restore_contact(wire)
            assert restored.events("c") == held
        if shuffler.random() < 0.1:
            tracker.freeze("c")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_a_contact_restored_as_read_is_packed_later_and_reads_back_the_same(seed: int, order: random.Random) -> None:
    # a restore keeps a contact's JSON as read; `repack` compresses it, `freeze` packs a live one:
    # in every form the contact gives back the same events and facts
    events, arrivals = _redelivered(seed, order)
    live = ContactTracker()
    for event in arrivals:
        live.add(event)
    wire = live.contact_wire("c")
    assert wire is not None
    restored = ContactTracker()
    restored.restore_frozen("c", wire, *live.contact_meta("c"))  # type: ignore[misc]
    assert restored.contact_wire("c") == wire
    restored.repack(10)
    packed = restored._contacts["c"].packed
    assert packed is not None and packed != wire.encode() and len(packed) < len(wire)
    assert restored.contact_wire("c") == wire
    live.freeze("c")
    assert live._contacts["c"].packed == packed
    for tracker in (live, restored):
        assert tracker.events("c") == sort_events(events)
        assert tracker.facts("c") == contact_facts(events)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([None, "retail", "premium"]), min_size=6, max_size=6), st.randoms(use_true_random=False)
)
def test_reply_and_resolution_segments(segments: list[str | None], order: random.Random) -> None:
    # a reply or resolution takes the segment last named before it, else the contact's first
    # segment, which a later event may carry; the same in any arrival order
    kinds = [("contact_started", {}), ("agent_reply", {}), ("resolved", {"resolved_by": "agent"}),
             ("reopened", {}), ("resolved", {"resolved_by": "agent"}), ("ended", {})]  # fmt: skip
    events = [
        ev(kind, i, channel="chat", **fields, **({"segment": segment} if segment else {}))
        for i, ((kind, fields), segment) in enumerate(zip(kinds, segments, strict=True))
    ]
    first = next((s for s in segments if s), "")
    arrivals = order.sample(events, len(events))
    tracker = ContactTracker()
    for i, event in enumerate(arrivals):
        tracker.add(event)
        assert tracker.facts("c1") == contact_facts(arrivals[: i + 1])
    facts = tracker.facts("c1")
    assert facts.segment == first

    def segment_at(n: int) -> str:  # the last segment named up to event n, else the first one
        return next((s for s in reversed(segments[: n + 1]) if s), first)

    assert facts.first_reply_segment == segment_at(1)
    assert facts.resolution_segments == (segment_at(2), segment_at(4))


def test_tracker_dedupes_evicts_and_snapshots() -> None:
    tracker = ContactTracker(ended_retention=timedelta(hours=1), unended_retention=timedelta(hours=2))
    done = [ev("queued", 0, "a", queue="q"), ev("ended", 10, "a")]
    open_ = [ev("queued", 0, "b", queue="q")]
    for e in done + open_:
        assert tracker.add(e)
    assert not tracker.add(done[0])
    assert tracker.facts("a").ended is not None
    restored = ContactTracker()
    restored.restore(json.loads(json.dumps(tracker.snapshot())))
    assert restored.facts("a") == tracker.facts("a") and len(restored) == 2
    t0 = to_ms(BASE)
    assert tracker.evict(t0 + 3_600_000) == []
    assert tracker.evict(t0 + 3_610_000) == ["a"]
    assert tracker.evict(t0 + 7_200_000) == ["b"] and len(tracker) == 0


def test_contact_needs_events() -> None:
    with pytest.raises(ValueError):
        contact_facts([])

"""Events held by the analytics stage share equal parts (`pipeline/events/shared_parts.py`), and
every held event still reads as what was sent."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import EVENT_ADAPTER, EventBase
from pipeline.kpi.facts import ContactTracker

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
KINDS = ["contact_started", "queued", "agent_assigned", "customer_message", "ended"]


def raw_event(i: int, customer: dict[str, str | None], contact: str = "c") -> dict[str, Any]:
    raw: dict[str, Any] = {
        "type": KINDS[i % len(KINDS)] if i else "contact_started",
        "event_id": f"{contact}-{i:04d}",
        "occurred_at": (BASE + timedelta(seconds=i)).isoformat(),
        "channel": "chat",
        "contact_id": contact,
        "priority": 0,
        "customer": customer,
    }
    if raw["type"] == "queued":
        raw["queue"] = "q.a"
    if raw["type"] == "agent_assigned":
        raw["agent_id"] = "a-1"
    if raw["type"] == "customer_message":
        raw["author"] = "customer"
    return raw


def parse(raw: dict[str, Any]) -> EventBase:
    event: EventBase = EVENT_ADAPTER.validate_json(json.dumps(raw))
    return event


def test_a_contact_shares_its_identifiers_until_they_change() -> None:
    cookie = {"web_cookie": "ck-1"}
    known = {"web_cookie": "ck-1", "customer_id": "C1"}
    raws = [raw_event(0, cookie), raw_event(1, cookie), raw_event(2, known), raw_event(3, known)]
    tracker = ContactTracker()
    for raw in raws:
        tracker.add(parse(raw))
    held = tracker.events("c")
    assert held[0].customer is held[1].customer
    assert held[2].customer is held[3].customer
    assert held[1].customer is not held[2].customer
    assert [e.customer.model_dump(exclude_none=True) for e in held] == [cookie, cookie, known, known]
    # the same after the contact was packed and parsed again
    tracker.freeze("c")
    again = tracker.events("c")
    assert again[0].customer is again[1].customer and again[1].customer is not again[2].customer
    assert [e.model_dump(mode="json") for e in again] == [parse(r).model_dump(mode="json") for r in raws]


def test_events_of_one_shape_share_their_fields_set_and_keep_their_own_values() -> None:
    tracker = ContactTracker()
    for contact in ("a", "b"):
        tracker.add(parse(raw_event(0, {"phone": f"+4411{contact}"}, contact)))
    a, b = tracker.events("a")[0], tracker.events("b")[0]
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.customer.phone == "+4411a" and b.customer.phone == "+4411b"
    assert a.model_dump(exclude_unset=True) == parse(raw_event(0, {"phone": "+4411a"}, "a")).model_dump(
        exclude_unset=True
    )


def test_identifiers_given_as_null_are_not_shared_with_identifiers_left_out() -> None:
    # equal values, different fields-sets: each event keeps what its JSON carried
    raws = [raw_event(0, {"phone": "+441"}), raw_event(1, {"phone": "+441", "email": None})]
    tracker = ContactTracker()
    for raw in raws:
        tracker.add(parse(raw))
    held = tracker.events("c")
    assert held[0].customer is not held[1].customer
    assert [e.customer.model_dump(exclude_unset=True) for e in held] == [
        {"phone": "+441"},
        {"phone": "+441", "email": None},
    ]


IDENTIFIERS = st.fixed_dictionaries(
    {},
    optional={
        "customer_id": st.sampled_from(["C1", "C2"]),
        "phone": st.sampled_from(["+441", "+442"]),
        "web_cookie": st.sampled_from(["ck-1", "ck-2"]),
    },
)


@settings(max_examples=60, deadline=None)
@given(st.lists(IDENTIFIERS, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_every_held_event_reads_as_sent_whatever_the_order_and_freezes(
    customers: list[dict[str, str]], rng: random.Random
) -> None:
    raws = [raw_event(i, customer) for i, customer in enumerate(customers)]
    arrivals = list(raws)
    rng.shuffle(arrivals)
    tracker = ContactTracker()
    for raw in arrivals:
        tracker.add(parse(raw))
        if rng.random() < 0.3:
            tracker.freeze("c")
    # oracle: each event parsed on its own, sharing nothing
    expected = [parse(r).model_dump(mode="json") for r in raws]
    assert [e.model_dump(mode="json") for e in tracker.events("c")] == expected

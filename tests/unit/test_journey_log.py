"""The journey stage's event log: batches are cut under the size limit and replayed once per event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.events.models import Channel, ContactStarted, CustomerIdentifiers, Queued, to_json
from pipeline.worker import journeys as stage

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def started(n: int, minutes: int = 0) -> ContactStarted:
    return ContactStarted(
        event_id=f"e{n}",
        occurred_at=T0 + timedelta(minutes=minutes),
        channel=Channel.CHAT,
        contact_id=f"c{n}",
        customer=CustomerIdentifiers(customer_id="C1"),
    )


def test_chunks_stay_under_the_limit_and_keep_every_value_in_order() -> None:
    values = [to_json(started(n)) for n in range(200)]
    limit = 5 * len(values[0])
    cut = list(stage.chunks(values, limit))
    assert all(len(chunk) <= limit for chunk in cut) and len(cut) > 1
    assert [line for chunk in cut for line in chunk.split(b"\n")] == values


def test_rebuild_applies_each_event_once_in_event_time_order() -> None:
    late = started(1, minutes=5)
    queued = Queued(event_id="q0", occurred_at=T0 + timedelta(seconds=1), channel=Channel.CHAT, contact_id="c0")
    batches = [stage.batch_value([late, started(0)]), stage.batch_value([started(0), queued])]  # e0 twice
    stitcher, newest, seen = stage.rebuild(batches)
    assert seen == {"e0", "e1", "q0"}
    assert newest == int(late.occurred_at.timestamp() * 1000)
    journeys = stitcher.store.journeys("cust:C1", None)
    assert [c for j in journeys for c in j.contact_ids] == ["c0", "c1"]
    assert stage.batch_key(0, 42) == "batch:0:42"

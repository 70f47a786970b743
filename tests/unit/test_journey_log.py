"""The journey stage's wire format: contact records cut under the size limit, read back, bad lines
skipped; the identity header a resolver reads instead of the records; arrival order stable under
redelivery."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.events.models import Channel, ContactStarted, CustomerIdentifiers, Queued, to_json
from pipeline.journeys.model import Emitted
from pipeline.journeys.record import records_of
from pipeline.worker import journeys as stage
from pipeline.worker.health import Health

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


def test_one_record_per_contact_is_forwarded_and_read_back() -> None:
    queued = Queued(event_id="q0", occurred_at=T0 + timedelta(seconds=1), channel=Channel.CHAT, contact_id="c0")
    events = [started(0), started(1, minutes=5), queued, started(0)]  # e0 twice
    messages = stage.forward_messages(events)
    assert [key for key, _, _ in messages] == [b"shard-0"]
    records, rejected = stage.read_records(messages[0][1])
    assert rejected == []
    assert [r.contact_id for r in records] == ["c0", "c1"]
    assert records == records_of(events)
    assert records[0].summary().first_human_at is None and records[0].flags  # queued: routed
    # smaller than the events they stand for
    assert len(messages[0][1]) < sum(len(to_json(e)) for e in events)


def test_the_identity_header_says_what_each_record_line_carries_and_fits_the_limit() -> None:
    """Every forwarded message's header holds, line by line, the record's contact id, time,
    identifiers and links (the records read back are the oracle), and a message with its header
    stays under the producer's 1 MB request limit, however many contacts a batch holds."""
    events = []
    for n in range(6_000):
        event = started(n, minutes=n % 600)
        ids = {"customer_id": f"C{n % 900}", "phone": f"+4479{n:08d}", "email": f"user{n}@example.com"}
        events.append(event.model_copy(update={"customer": CustomerIdentifiers(**ids)}))
    messages = stage.forward_messages(events)
    assert len(messages) > 1
    read = 0
    for _, value, headers in messages:
        assert len(value) + sum(len(k) + len(v) for k, v in headers.items()) < 1_000_000
        records, rejected = stage.read_records(value)
        identities = stage.read_identities(headers.items(), value.count(b"\n") + 1)
        assert rejected == [] and identities is not None
        expected = [[r.contact_id, r.seen_us, [list(i) for i in r.ids], [list(ln) for ln in r.links]] for r in records]
        assert identities == expected
        read += len(records)
    assert read == 6_000


def test_a_message_without_a_fitting_identity_header_is_read_from_its_records() -> None:
    _, value, headers = stage.forward_messages([started(0), started(1)])[0]
    assert stage.read_identities(headers.items(), 2) is not None
    assert [r.contact_id for r in stage.read_records(value)[0]] == ["c0", "c1"]  # what a reader falls back on
    assert stage.read_identities([], 2) is None  # sent without one
    assert stage.read_identities(headers.items(), 3) is None  # not these lines
    assert stage.read_identities([(stage.IDENTITY_HEADER, b"{not json")], 2) is None


def test_unreadable_lines_are_skipped_with_a_reason_and_no_value() -> None:
    good = records_of([started(0)])[0].to_json()
    value = b"\n".join([good, b"{not json", b'{"v": 99, "c": "x"}', b'{"v": 1}', good])
    records, rejected = stage.read_records(value)
    assert [r.contact_id for r in records] == ["c0", "c0"]
    assert rejected == [
        "contact record is not JSON",
        "unsupported contact record version 99",
        "malformed contact record: KeyError",
    ]


def test_arrival_order_is_the_offset_then_the_position() -> None:
    assert stage.arrival_seq(7, 3) < stage.arrival_seq(7, 4) < stage.arrival_seq(8, 0)


def test_a_round_applies_what_the_state_lacks_in_runs_cut_at_gaps() -> None:
    def m(*offsets: int) -> list[tuple[int, bytes]]:
        return [(o, b"v%d" % o) for o in offsets]

    # a fresh state takes everything, one run while offsets follow each other
    assert stage.runs_to_apply(m(5, 6, 7), None) == ([m(5, 6, 7)], 0)
    # redelivered below the state's offset: skipped, counted
    assert stage.runs_to_apply(m(3, 4, 5, 6), 5) == ([m(5, 6)], 2)
    # a gap (messages acknowledged while skipped) starts a new run: read again before it
    assert stage.runs_to_apply(m(5, 6, 9, 10, 12), 5) == ([m(5, 6), m(9, 10), m(12)], 0)
    assert stage.runs_to_apply(m(8, 9), 5) == ([m(8, 9)], 0)
    # a message repeated within the round (a seek while Faust buffered) is applied once
    assert stage.runs_to_apply(m(5, 6, 6, 7), 5) == ([m(5, 6, 7)], 1)
    assert stage.runs_to_apply(m(1, 2), 5) == ([], 2)


def test_stored_state_is_decoded_in_bulk_and_a_bad_entry_is_skipped_with_its_reason() -> None:
    values = [r.to_json() for r in records_of([started(n) for n in range(3)])]
    records, rejected = stage.decode_records(values)
    assert rejected == [] and [r.to_json() for r in records] == values
    records, rejected = stage.decode_records([values[0], b"{not json", b'{"v": 1}', values[2]])
    assert [r.contact_id for r in records] == ["c0", "c2"]
    assert rejected == ["contact record is not JSON", "malformed contact record: KeyError"]
    entries = [Emitted(3, False, "cust:C1", ("c0", "c1"), "d1", 5, "billing"), Emitted(9, True, "cust:C2", (), "d2")]
    items = [(f"j-{n}".encode(), stage.emitted_value(e)) for n, e in enumerate(entries)]
    assert stage.decode_entries(items) == [("j-0", entries[0]), ("j-1", entries[1])]


def test_a_retried_output_is_reported_failing_then_back_in_health(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage.asyncio, "sleep", _no_wait)
    health = Health()
    seen: list[dict[str, dict[str, object]]] = []
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        seen.append(health.report())
        if calls < 3:
            raise ConnectionError("broker restarting")
        return "written"

    result = asyncio.run(stage.retried("journey rows insert", flaky, health=health, dependency="clickhouse"))
    assert result == "written" and calls == 3
    assert seen[0] == {} and seen[2]["clickhouse"]["errors"] == 2
    assert "broker restarting" in str(seen[2]["clickhouse"]["last_error"])
    assert health.report() == {}  # back


def test_a_failure_that_lasts_is_raised_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage.asyncio, "sleep", _no_wait)

    async def down() -> None:
        raise ConnectionError("no broker")

    with pytest.raises(ConnectionError):
        asyncio.run(stage.retried("journey documents send", down, give_up_after=0.0, health=Health(), dependency="x"))


async def _no_wait(_: float) -> None:
    return None

"""Erasure on (embedded) ClickHouse: one person, found by one identifier and widened through their
journeys, leaves no row in any table; another person's rows stay; KPI aggregates are kept."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from pipeline.events.models import ContactStarted, CustomerIdentifiers, Identifier, IdentityLink
from pipeline.privacy import erasure
from pipeline.privacy.pseudonym import Pseudonymiser
from pipeline.store.clickhouse import insert_rows
from pipeline.store.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, dead_letter_row, event_row

HASHER = Pseudonymiser(b"erasure-test-key-0123456789")
NOW = datetime.now(UTC).replace(microsecond=0)
ANN_PHONE = "+44 20 7946 0001"
BOB_PHONE = "+44 20 7946 0002"


def hidden(kind: str, value: str) -> str:
    return HASHER.value(kind, value)


def seed(client: Client) -> None:
    """Ann: voice contact by phone, web contact by cookie, linked by an identity link; Bob: one call."""
    events = [
        ContactStarted(event_id="er-a1", occurred_at=NOW, channel="voice", contact_id="er-ann-voice",
                       customer=CustomerIdentifiers(phone=hidden("phone", ANN_PHONE))),
        ContactStarted(event_id="er-a2", occurred_at=NOW + timedelta(minutes=1), channel="web", contact_id="er-ann-web",
                       customer=CustomerIdentifiers(web_cookie=hidden("web_cookie", "ck-ann"))),
        IdentityLink(event_id="er-a3", occurred_at=NOW + timedelta(minutes=2), channel="web", contact_id="er-ann-web",
                     left=Identifier(kind="phone", value=hidden("phone", ANN_PHONE)),
                     right=Identifier(kind="web_cookie", value=hidden("web_cookie", "ck-ann"))),
        ContactStarted(event_id="er-b1", occurred_at=NOW, channel="voice", contact_id="er-bob-voice",
                       customer=CustomerIdentifiers(phone=hidden("phone", BOB_PHONE))),
    ]  # fmt: skip
    rows = [event_row(e, f"touchline.interactions.{e.channel.value}", 0, n, NOW) for n, e in enumerate(events)]
    insert_rows(client, "interaction_events", EVENT_COLUMNS, rows)
    ann_key, bob_key = "web_cookie:" + hidden("web_cookie", "ck-ann"), "phone:" + hidden("phone", BOB_PHONE)
    client.insert(
        "journeys",
        [["j-er-ann-voice", ann_key, ["er-ann-voice", "er-ann-web"]], ["j-er-bob-voice", bob_key, ["er-bob-voice"]]],
        column_names=["journey_id", "customer_key", "contact_ids"],
    )
    client.insert(
        "journey_steps",
        [["j-er-ann-voice", "er-ann-voice"], ["j-er-ann-voice", "er-ann-web"], ["j-er-bob-voice", "er-bob-voice"]],
        column_names=["journey_id", "contact_id"],
    )
    client.insert(
        "sla_events",
        [["s-er-1", "er-ann-web", NOW], ["s-er-2", "er-bob-voice", NOW]],
        column_names=["sla_event_id", "contact_id", "at"],
    )
    client.insert(
        "stage_state",
        [["er-app", "analytics", "t", 0, "er-ann-voice"], ["er-app", "analytics", "t", 0, "er-bob-voice"]],
        column_names=["app_id", "stage", "source_topic", "source_partition", "key"],
    )
    bad = json.dumps({"type": "contact_started", "customer": {"phone": ANN_PHONE}, "oops": 1}).encode()
    insert_rows(client, "dead_letters", DEAD_LETTER_COLUMNS,
                [dead_letter_row(NOW, "touchline.interactions.voice", 0, 9, "invalid", "x", b"er-x", bad)])  # fmt: skip


def remaining(client: Client) -> dict[str, int]:
    checks = {
        "interaction_events": "SELECT count() FROM interaction_events WHERE contact_id LIKE 'er-{p}%'",
        "journeys": "SELECT count() FROM journeys WHERE journey_id LIKE 'j-er-{p}%'",
        "journey_steps": "SELECT count() FROM journey_steps WHERE contact_id LIKE 'er-{p}%'",
        "sla_events": "SELECT count() FROM sla_events WHERE contact_id LIKE 'er-{p}%'",
        "stage_state": "SELECT count() FROM stage_state WHERE key LIKE 'er-{p}%'",
    }
    out = {}
    for person in ("ann", "bob"):
        for table, sql in checks.items():
            out[f"{person}:{table}"] = int(client.query(sql.format(p=person)).result_rows[0][0])
    out["ann:dead_letters"] = int(
        client.query("SELECT count() FROM dead_letters WHERE position(raw, '+44 20 7946 0001') > 0").result_rows[0][0]
    )
    return out


def test_forgetting_one_person_removes_every_row_of_theirs_and_nothing_else(clickhouse: Client) -> None:
    seed(clickhouse)
    before = remaining(clickhouse)
    assert all(before.values()), before
    subject = erasure.resolve(clickhouse, "phone", "0044 20 7946 0001", HASHER)
    assert subject.contact_ids == {"er-ann-voice", "er-ann-web"}  # the web contact through the journey
    assert ("web_cookie", hidden("web_cookie", "ck-ann")) in subject.identifiers
    dropped: list[erasure.Subject] = []

    async def stage_hook(who: erasure.Subject) -> int:
        dropped.append(who)
        return 2

    erasure.register("test-stage", stage_hook)
    try:
        state = asyncio.run(erasure.run_hooks(subject))
    finally:
        erasure._hooks.pop("test-stage")
    removed = erasure.delete_rows(clickhouse, subject)
    print(removed)
    assert state.counts == {"test-stage": 2} and dropped == [subject]
    # what another worker receives of the subject is the subject
    assert erasure.Subject.from_wire(json.loads(json.dumps(subject.wire()))) == subject
    assert removed["interaction_events"] == 3 and removed["journeys"] == 1 and removed["dead_letters"] == 1
    after = remaining(clickhouse)
    assert {k: v for k, v in after.items() if k.startswith("ann:")} == dict.fromkeys(
        [k for k in after if k.startswith("ann:")], 0
    )
    assert {k: v for k, v in after.items() if k.startswith("bob:")} == {
        k: v for k, v in before.items() if k.startswith("bob:")
    }


def test_an_unknown_person_removes_nothing(clickhouse: Client) -> None:
    subject = erasure.resolve(clickhouse, "email", "absent.person@example.com", HASHER)
    assert subject.contact_ids == frozenset()
    removed = erasure.delete_rows(clickhouse, subject)
    assert set(removed.values()) == {0}

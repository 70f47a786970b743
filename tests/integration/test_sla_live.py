"""Live mode: a breach is raised by the wall clock within a second of its deadline, with no further
event on the contact, and arrives on the `touchline.sla` topic."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.events.models import Channel, ContactStarted, CustomerIdentifiers, Queued, to_json
from pipeline.events.topics import SLA_TOPIC, interaction_topic

from .conftest import Workspace, wait_until

pytestmark = pytest.mark.integration


def test_breach_is_raised_within_a_second_of_its_deadline(workspace: Workspace) -> None:
    worker = workspace.start_worker()  # default sla_clock = wall
    bootstrap = workspace.env["KAFKA_BOOTSTRAP_SERVERS"]
    now = datetime.now(UTC)
    common = {
        "channel": Channel.VOICE,
        "contact_id": "live-breach-1",
        "customer": CustomerIdentifiers(phone="+441632960001"),
        "queue": "voice.general",
        "segment": "retail",
    }
    events = [
        ContactStarted(event_id="live-1", occurred_at=now - timedelta(seconds=3), **common),
        Queued(event_id="live-2", occurred_at=now, **common),
    ]
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for event in events:
        producer.send(interaction_topic(Channel.VOICE), key=b"live-breach-1", value=to_json(event))
    producer.flush()
    producer.close()

    query = (
        "SELECT target, toString(deadline), dateDiff('millisecond', deadline, emitted_at), policy, target_seconds "
        "FROM sla_events FINAL WHERE contact_id = 'live-breach-1' AND kind = 'breached'"
    )
    rows: list[list[object]] = []

    def breached() -> bool:
        nonlocal rows
        rows = worker.sql(query)
        return bool(rows)

    wait_until(breached, 60, "the first-response breach", interval=0.2)
    target, deadline, delay_ms, policy, target_seconds = rows[0]
    print(f"breach of {target} under {policy} ({target_seconds} s) raised {delay_ms} ms after its deadline {deadline}")
    assert target == "first_response"
    assert float(target_seconds) == 20.0
    assert 0 <= int(str(delay_ms)) < 1000

    consumer = KafkaConsumer(
        SLA_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    kinds = []
    deadline_at = time.monotonic() + 20
    for message in consumer:
        body = json.loads(message.value)
        if body["contact_id"] == "live-breach-1":
            kinds.append((body["target"], body["kind"]))
        if ("first_response", "breached") in kinds or time.monotonic() > deadline_at:
            break
    consumer.close()
    assert ("first_response", "at_risk") in kinds and ("first_response", "breached") in kinds
    assert worker.metric("touchline_sla_events_total") >= 2

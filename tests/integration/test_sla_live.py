"""Live mode: a breach is raised by the wall clock within a second of its deadline, with no further
event on the contact, and arrives on the `touchline.sla` topic."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.events.models import Channel, ContactStarted, CustomerIdentifiers, Queued, to_json
from pipeline.events.topics import SLA_TOPIC, interaction_topic

from .conftest import Worker, Workspace, wait_until

pytestmark = pytest.mark.integration


SHORT_POLICIES = Path(__file__).resolve().parents[1] / "support" / "sla-short.yaml"


def test_breach_is_raised_within_a_second_of_its_deadline(workspace: Workspace) -> None:
    workspace.env["TOUCHLINE_SLA_POLICIES_FILE"] = str(SHORT_POLICIES)  # a 4 s voice first response
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
    assert float(target_seconds) == 4.0
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
    # the call's resolution clock still runs, and its first response is still owed: both are timed
    wait_until(lambda: worker.metric("touchline_sla_open_obligations") >= 2, 30, "the open-obligations gauge")


def test_deadline_survives_a_restart_and_fires_right_after_recovery(workspace: Workspace) -> None:
    """The worker stops with an obligation open; its deadline passes while no worker runs; the next
    worker restores the partition's checkpoint and raises the overdue breach at once."""
    workspace.env["TOUCHLINE_SLA_POLICIES_FILE"] = str(SHORT_POLICIES)  # 10 s on voice.sales
    first = workspace.start_worker()
    bootstrap = workspace.env["KAFKA_BOOTSTRAP_SERVERS"]
    now = datetime.now(UTC)
    common = {"channel": Channel.VOICE, "contact_id": "restart-breach-1", "queue": "voice.sales"}
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for event in (
        ContactStarted(event_id="restart-1", occurred_at=now, **common),
        Queued(event_id="restart-2", occurred_at=now, **common),
    ):
        producer.send(interaction_topic(Channel.VOICE), key=b"restart-breach-1", value=to_json(event))
    producer.flush()
    producer.close()
    query = "SELECT kind FROM sla_events FINAL WHERE contact_id = 'restart-breach-1'"
    wait_until(lambda: worker_has_read(first), 30, "the worker to read the contact")
    first.stop()  # clean stop: the batch is written and the partition state checkpointed
    assert first.process.returncode == 0
    deadline = now + timedelta(seconds=10)
    assert datetime.now(UTC) < deadline, "the first worker stopped after the deadline: not a test of recovery"
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 2)  # the deadline passes with no worker

    second = workspace.start_worker()
    rows: list[list[object]] = []

    def breached() -> bool:
        nonlocal rows
        rows = second.sql(query)
        return ["breached"] in rows

    wait_until(breached, 30, "the overdue breach after recovery", interval=0.2)
    raised_after = datetime.now(UTC) - deadline
    print(f"overdue breach raised {raised_after.total_seconds():.1f} s after its deadline, right after recovery")
    assert ["breached"] in rows


def worker_has_read(worker: Worker) -> bool:
    return worker.metric("touchline_events_written_total") >= 2

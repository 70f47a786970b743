"""Hostile input end to end: the seeded KPI/SLA scenario (tests.support.kpi_sla) with the hostile
corpus and 20,000 seeded fuzzer messages mixed into the chat topic, through the real broker and one
worker. Every hostile message is dead-lettered with a reason, the worker neither crashes nor
stalls, and the KPI windows and SLA breaches still equal the independent oracles exactly.

Only fuzzer messages that are not valid events are sent here (valid ones would be traffic the
oracle does not know); the unit test `tests/unit/test_hostile_input.py` stores the valid ones. The
broker refuses messages over its 1 MB limit before the worker could see them, so the corpus's
larger messages are cut to 900 KB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer

from pipeline.events.models import Channel, EventBase
from pipeline.events.topics import interaction_topic
from pipeline.ingest.decode import Policy, decode
from tests.hostile import corpus, fuzz
from tests.support.kpi_sla import SHOW, finish, prepare

from .conftest import Workspace, wait_until

pytestmark = pytest.mark.integration

FUZZ_MESSAGES = 20_000
BROKER_LIMIT = 900_000
TOPIC = interaction_topic(Channel.CHAT)


def test_hostile_messages_are_dead_lettered_and_the_kpis_stay_exact(workspace: Workspace) -> None:
    run = prepare(workspace)
    now = datetime.now(UTC).replace(microsecond=0)
    # as the worker will judge them: history accepted back to 2000 (the integration env)
    policy = Policy(history_since=datetime(2000, 1, 1, tzinfo=UTC))
    messages = [(k, v) for _, (k, v) in corpus(now)] + list(fuzz(seed=2026, count=FUZZ_MESSAGES * 2, now=now))
    # refused now and an hour on: the worker reads them later, when an event a little too far
    # ahead at this moment would have become plausible
    later = now + timedelta(hours=1)
    hostile = [
        (k, (v or b"")[:BROKER_LIMIT] or None)
        for k, v in messages
        if not isinstance(decode(v, TOPIC, 65536, k, now=now, policy=policy), EventBase)
        and not isinstance(decode(v, TOPIC, 65536, k, now=later, policy=policy), EventBase)
    ][: FUZZ_MESSAGES + 40]
    assert len(hostile) >= FUZZ_MESSAGES
    producer = KafkaProducer(
        bootstrap_servers=workspace.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all", max_request_size=1_048_576
    )
    try:
        for key, value in hostile:
            producer.send(TOPIC, key=key, value=value)
        producer.flush()
    finally:
        producer.close()

    worker = workspace.start_worker()
    everything = run.expected_messages + len(hostile)
    wait_until(
        lambda: worker.metric("touchline_events_consumed_total") >= everything, 600, f"{everything} messages read"
    )
    wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 60, "the last batch to be written")
    stored_hostile = worker.sql(
        "SELECT event_id, toString(occurred_at) FROM interaction_events WHERE event_id LIKE 'fz-%' OR event_id LIKE 'h-%'"
    )
    assert stored_hostile == [], f"hostile messages stored as events: {stored_hostile[:5]}"
    diffs = finish(run, worker, worker)
    assert worker.process.poll() is None, "the worker exited"
    dead = worker.sql("SELECT count(), countIf(reason = '' OR detail = '') FROM dead_letters FINAL")[0]
    reasons = dict(worker.sql("SELECT reason, count() FROM dead_letters FINAL GROUP BY reason ORDER BY reason"))
    print(f"{len(hostile)} hostile messages; dead letters by reason: {reasons}")
    assert dead == [len(hostile), 0]
    assert worker.metric("touchline_events_deadlettered_total") == len(hostile)
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])

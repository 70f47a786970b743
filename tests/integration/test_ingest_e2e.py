"""End to end against the real broker and embedded ClickHouse: the simulator's ground truth is the
oracle for what must land in `interaction_events` and on the dead-letter topic."""

from __future__ import annotations

import base64
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from pipeline.events.topics import DEADLETTER_TOPIC
from pipeline.simulator.truth import read_truth

from .conftest import Workspace, wait_until

pytestmark = pytest.mark.integration

FAULTS = ("--duplicate-rate", "0.05", "--late-rate", "0.05", "--max-lateness", "120", "--bad-rate", "0.01")


def simulate(
    workspace: Workspace, seed: int, duration: str
) -> tuple[dict[str, int], list[dict[str, Any]], dict[str, Any]]:
    truth_path = workspace.path / "truth.jsonl"
    workspace.cli(
        "simulate", "--seed", seed, "--start", "2026-03-02T08:00:00Z", "--duration", duration, "--speed", "0",
        *FAULTS, "--truth", truth_path,
    )  # fmt: skip
    records = read_truth(truth_path)
    per_contact = {r["contact_id"]: r["events"] for r in records if r["kind"] == "contact"}
    bad = [r for r in records if r["kind"] == "bad_message"]
    summary = next(r for r in records if r["kind"] == "summary")
    return per_contact, bad, summary


def stored_per_contact(rows: list[list[Any]]) -> dict[str, int]:
    return {str(contact): int(n) for contact, n in rows}


def dead_letters_on_topic(bootstrap: str) -> list[Any]:
    consumer = KafkaConsumer(
        DEADLETTER_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    try:
        messages = []
        for message in consumer:
            messages.append(message)
        return messages
    finally:
        consumer.close()


def assert_landed_exactly(
    workspace: Workspace, worker_sql: Any, per_contact: dict[str, int], bad: list[dict[str, Any]]
) -> None:
    expected_total = sum(per_contact.values())
    stored = stored_per_contact(
        worker_sql("SELECT contact_id, count() FROM interaction_events FINAL GROUP BY contact_id")
    )
    distinct = worker_sql("SELECT uniqExact(event_id) FROM interaction_events")[0][0]
    print(f"compared {len(per_contact)} contacts, {expected_total} distinct valid events, {len(bad)} bad messages")
    assert distinct == expected_total
    assert sum(stored.values()) == expected_total
    mismatched = {c: (stored.get(c), n) for c, n in per_contact.items() if stored.get(c) != n}
    assert mismatched == {}, f"{len(mismatched)} contacts differ (stored, truth): {list(mismatched.items())[:5]}"
    assert set(stored) <= set(per_contact)

    kafka = workspace.env["KAFKA_BOOTSTRAP_SERVERS"]
    on_topic = dead_letters_on_topic(kafka)
    by_value: dict[bytes, list[Any]] = {}
    for message in on_topic:
        by_value.setdefault(message.value, []).append(message)
    for record in bad:
        raw = base64.b64decode(record["value_b64"])
        assert raw in by_value, f"bad message of kind {record['bad_kind']} is not on {DEADLETTER_TOPIC}"
        headers = dict(by_value[raw][0].headers)
        assert headers["touchline.reason"], "no reason header"
        assert headers["touchline.detail"], "no detail header"
        assert headers["touchline.source.topic"].decode() == record["topic"]
        int(headers["touchline.source.offset"])
    table = worker_sql("SELECT count(), countIf(reason = '' OR detail = '') FROM dead_letters FINAL")[0]
    assert table == [len(bad), 0]


def test_seeded_simulation_lands_exactly_and_bad_messages_are_dead_lettered(workspace: Workspace) -> None:
    per_contact, bad, summary = simulate(workspace, seed=11, duration="3h")
    assert sum(per_contact.values()) > 10_000 and bad, "the scenario should be big enough to mean something"
    assert summary["duplicates"] > 0 and summary["late"] > 0
    worker = workspace.start_worker()
    delivered = summary["messages_delivered"]
    wait_until(
        lambda: worker.metric("touchline_events_consumed_total") >= delivered,
        180,
        f"{delivered} messages read",
    )
    wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 30, "the last batch to be written")
    assert worker.metric("touchline_events_deadlettered_total") == len(bad)
    assert_landed_exactly(workspace, worker.sql, per_contact, bad)
    kinds = Counter(r["bad_kind"] for r in bad)
    reasons = Counter(str(r) for (r,) in worker.sql("SELECT reason FROM dead_letters FINAL"))
    print(f"bad kinds injected {dict(kinds)}; reasons recorded {dict(reasons)}")
    assert sum(reasons.values()) == len(bad)


def test_killed_worker_loses_nothing_and_counts_nothing_twice(workspace: Workspace) -> None:
    per_contact, bad, _summary = simulate(workspace, seed=23, duration="2h")
    expected = sum(per_contact.values())
    first = workspace.start_worker()
    wait_until(lambda: first.metric("touchline_events_written_total") > 0, 120, "the first batch")
    first.stop(signal.SIGKILL)  # no shutdown hooks: unwritten batches were never acknowledged
    second = workspace.start_worker()
    wait_until(
        lambda: second.sql("SELECT uniqExact(event_id) FROM interaction_events")[0][0] == expected,
        180,
        f"{expected} distinct events after the restart",
    )
    wait_until(lambda: second.metric("touchline_pending_rows") == 0, 30, "the last batch to be written")
    assert_landed_exactly(workspace, second.sql, per_contact, bad)


def test_sql_cli_reads_the_store_after_the_worker_stops(workspace: Workspace, tmp_path: Path) -> None:
    per_contact, _bad, summary = simulate(workspace, seed=5, duration="30m")
    worker = workspace.start_worker()
    wait_until(
        lambda: worker.metric("touchline_events_consumed_total") >= summary["messages_delivered"],
        120,
        "all messages read",
    )
    wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 30, "the last batch")
    via_worker = workspace.cli("sql", "--format", "json", "SELECT count() AS n FROM interaction_events FINAL")
    worker.stop()
    via_store = workspace.cli("sql", "--format", "json", "SELECT count() AS n FROM interaction_events FINAL")
    assert via_worker.stdout.strip() == via_store.stdout.strip() == f'[{{"n": {sum(per_contact.values())}}}]'
    refused = workspace.cli("sql", "DROP TABLE interaction_events", check=False)
    assert refused.returncode != 0 and "readonly" in refused.stderr.lower()
    assert "Traceback" not in refused.stderr

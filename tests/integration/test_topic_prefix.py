"""A deployment with its own topic prefix (TOUCHLINE_TOPIC_PREFIX) on a shared broker: the simulator and
the worker use only topics named with it, Faust's internal topics follow it through the app id, and
the events still arrive in ClickHouse."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from pipeline.events.topics import DEFAULT_TOPICS, TopicNames
from tests.integration.conftest import open_workspace, wait_until

pytestmark = pytest.mark.integration


def topic_names(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchline-tests")
    try:
        return {str(name) for name in admin.list_topics()}
    finally:
        admin.close()


def messages_on(bootstrap: str, topics: list[str]) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="touchline-tests")
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_a_prefixed_deployment_uses_only_its_own_topics(kafka: str, tmp_path: Path) -> None:
    prefix = f"acme.tl-{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    with open_workspace(kafka, tmp_path, extra_env={"TOUCHLINE_TOPIC_PREFIX": prefix}) as space:
        del space.env["TOUCHLINE_APP_ID"]  # the app id follows the prefix
        before = topic_names(kafka)
        space.cli(
            "simulate", "--contacts", "30", "--speed", "0", "--seed", "9", "--start", "2026-03-02T09:00Z",
            "--truth", tmp_path / "truth.jsonl", "--quiet",
        )  # fmt: skip
        summary = json.loads((tmp_path / "truth.jsonl").read_text().splitlines()[-1])
        expected = summary["distinct_valid_events"]
        assert expected > 50
        worker = space.start_worker()
        worker.wait_for_events(expected)
        wait_until(lambda: messages_on(kafka, [names.journeys]) > 0, 60, f"journey documents on {names.journeys}")
        # the broker's own (`__consumer_offsets`) aside
        created = {t for t in topic_names(kafka) - before if not t.startswith("__")}
    assert set(names.specs(1)) <= created
    assert f"{prefix}-journey-contacts-changelog" in created  # Faust's own, named from the app id
    assert all(t.startswith((f"{prefix}.", f"{prefix}-")) for t in created), sorted(created)
    assert not any(t.startswith("touchline") for t in created), sorted(created)
    # the default-named channel topics exist (the workspace made them) but nothing was sent there
    assert messages_on(kafka, list(DEFAULT_TOPICS.interactions.values())) == 0
    assert messages_on(kafka, list(names.interactions.values())) == summary["messages_delivered"]

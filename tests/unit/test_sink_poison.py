"""The ingest sink against real (embedded) ClickHouse: a batch ClickHouse refuses for its content is
split and only the rows refused alone are dead-lettered; a dead letter always fits the producer;
transient errors are still retried. None of these may stop the stage."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from pipeline.events.topics import DEFAULT_TOPICS
from pipeline.store.clickhouse import BlockingExecutor
from pipeline.worker import sink as sink_module
from pipeline.worker.sink import DEAD_LETTER_MAX_BYTES, IngestSink, Outgoing, fitted_dead_letter
from tests.unit.test_decode import history  # noqa: F401  (autouse: these events replay history)

TOPIC = "touchline.interactions.chat"
PRODUCER_LIMIT = 1_000_000  # the worker's producer: Kafka's default max.request.size


@dataclass
class Msg:
    offset: int
    key: bytes | None
    value: bytes | None


def chat_event(event_id: str, contact: str, when: datetime, queue: str = "billing") -> Msg:
    body = {
        "type": "queued",
        "event_id": event_id,
        "occurred_at": when.isoformat().replace("+00:00", "Z"),
        "channel": "chat",
        "contact_id": contact,
        "queue": queue,
    }
    return Msg(0, contact.encode(), json.dumps(body).encode())


def run_sink(client: Any, messages: list[Msg], max_rows: int = 5000) -> tuple[list[Outgoing], dict[Any, int]]:
    sent: list[Outgoing] = []
    committed: dict[Any, int] = {}

    async def send(batch: list[Outgoing]) -> None:
        sent.extend(batch)

    async def main() -> None:
        sink = IngestSink(
            client,
            BlockingExecutor("test-ingest"),
            send,
            max_rows=max_rows,
            max_seconds=60,
            max_event_bytes=65536,
            dedup_capacity=0,
            on_written=committed.update,
            topics=DEFAULT_TOPICS,
        )
        for offset, message in enumerate(messages):
            message.offset = offset
        await sink.handle(TOPIC, 0, messages)
        await asyncio.wait_for(sink.drain(), 60)

    asyncio.run(main())
    return sent, committed


def stored(client: Client, prefix: str) -> int:
    return int(
        client.query(f"SELECT count() FROM interaction_events WHERE contact_id LIKE '{prefix}%'").result_rows[0][0]
    )


def test_a_batch_over_101_months_is_split_and_stored_whole(clickhouse: Client) -> None:
    months = [datetime(2010 + i // 12, i % 12 + 1, 3, tzinfo=UTC) for i in range(101)]
    messages = [chat_event(f"months-{i}", f"months-c{i}", when) for i, when in enumerate(months)]
    sent, committed = run_sink(clickhouse, messages)
    assert sent == []
    assert stored(clickhouse, "months-c") == 101
    assert committed == {(TOPIC, 0): 100}


def test_rows_refused_alone_are_dead_lettered_and_the_rest_written(clickhouse: Client) -> None:
    clickhouse.command("ALTER TABLE interaction_events ADD CONSTRAINT no_poison CHECK queue != 'poison'")
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        messages = [
            chat_event(f"refuse-{i}", f"refuse-c{i}", now, "poison" if i == 7 else "billing") for i in range(20)
        ]
        sent, committed = run_sink(clickhouse, messages)
    finally:
        clickhouse.command("ALTER TABLE interaction_events DROP CONSTRAINT no_poison")
    assert stored(clickhouse, "refuse-c") == 19
    assert committed == {(TOPIC, 0): 19}
    assert len(sent) == 1
    key, value, headers = sent[0]
    assert key == b"refuse-c7" and value is not None and json.loads(value)["event_id"] == "refuse-7"
    assert headers is not None and headers["touchline.reason"] == b"refused_by_store"
    assert b"no_poison" in headers["touchline.detail"] and headers["touchline.source.offset"] == b"7"
    rows = clickhouse.query(
        "SELECT reason, source_offset FROM dead_letters WHERE reason = 'refused_by_store' AND source_offset = 7"
        " AND position(raw, 'refuse-7') > 0"
    ).result_rows
    assert rows == [("refused_by_store", 7)]


def test_a_huge_message_is_dead_lettered_within_the_producer_limit(clickhouse: Client) -> None:
    huge = Msg(0, b"k" * 5000, b"x" * 1_500_000)
    sent, committed = run_sink(clickhouse, [huge])
    assert committed == {(TOPIC, 0): 0}
    (key, value, headers) = sent[0]
    assert headers is not None and value is not None and key is not None
    size = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers.items())
    assert size <= DEAD_LETTER_MAX_BYTES < PRODUCER_LIMIT
    assert headers["touchline.reason"] == b"oversized"
    assert headers["touchline.original.size"] == b"1500000"
    assert len(headers["touchline.original.sha256"]) == 64 and value == b"x" * len(value)
    assert headers["touchline.key.size"] == b"5000"


def test_a_small_dead_letter_is_kept_as_it_came() -> None:
    headers = {"touchline.reason": b"not_json"}
    assert fitted_dead_letter(b"k", b"{", headers) == (b"k", b"{", headers)


class FlakyClient:
    """ClickHouse restarting: the first inserts fail with a connection error."""

    def __init__(self, client: Client, failures: int) -> None:
        self.client, self.failures = client, failures

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise OperationalError("Error HTTPConnectionPool: Connection refused")
        return self.client.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # everything else (the insert context) as the client's
        return getattr(self.client, name)


def test_transient_errors_are_retried_not_dead_lettered(clickhouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "RETRY_SECONDS", (0.01,))
    now = datetime.now(UTC).replace(microsecond=0)
    sent, committed = run_sink(FlakyClient(clickhouse, 3), [chat_event("flaky-1", "flaky-c1", now)])
    assert sent == [] and committed == {(TOPIC, 0): 0}
    assert stored(clickhouse, "flaky-c") == 1

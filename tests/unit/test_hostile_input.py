"""Every message of the hostile corpus and of 20,000 seeded fuzzer messages is either a valid,
plausible event or a rejection with a reason; the ingest sink writes every valid one to (embedded)
ClickHouse and dead-letters every other one, and it never raises or stalls."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.events.models import EventBase
from pipeline.events.topics import DEFAULT_TOPICS
from pipeline.ingest.decode import Policy, Reason, Rejection, decode
from pipeline.store.clickhouse import BlockingExecutor
from pipeline.store.rows import event_row
from pipeline.worker.sink import DEAD_LETTER_MAX_BYTES, IngestSink, Outgoing
from tests.hostile import corpus, fuzz, now_utc

TOPIC = "touchline.interactions.chat"
LIMIT = 65536
LIVE = Policy()
FUZZ_MESSAGES = 20_000


def test_every_corpus_message_is_refused_with_a_reason_or_valid() -> None:
    now = now_utc()
    outcomes: dict[str, str] = {}
    for name, (key, value) in corpus(now):
        result = decode(value, TOPIC, LIMIT, key, now=now, policy=LIVE)
        if isinstance(result, Rejection):
            assert result.reason in set(Reason) and result.detail, name
            outcomes[name] = result.reason.value
        else:
            event_row(result, TOPIC, 0, 0, now)
            outcomes[name] = "valid"
    print(outcomes)
    must_refuse = {
        "year 1970": "implausible_time",
        "year 9999": "implausible_time",
        "year 9999 -05:00": "implausible_time",
        "year 1 +05:00": "implausible_time",
        "year 2200": "implausible_time",
        "60 days ahead": "implausible_time",
        "no key": "wrong_key",
        "wrong key": "wrong_key",
        "10 MB": "oversized",
        "empty": "empty",
        "none": "empty",
    }
    assert {name: outcomes[name] for name in must_refuse} == must_refuse
    assert outcomes["offset +14:00"] == "valid"  # any offset is fine: stored in UTC
    for name in ("NaN", "Infinity", "huge number", "empty phone", "10k-char event id", "score out of range"):
        assert outcomes[name] == "invalid", name


def test_seeded_fuzzer_messages_are_each_valid_or_refused_with_a_reason() -> None:
    now = now_utc()
    reasons: dict[str, int] = {}
    for key, value in fuzz(seed=12, count=FUZZ_MESSAGES, now=now):
        result = decode(value, TOPIC, LIMIT, key, now=now, policy=LIVE)
        if isinstance(result, EventBase):
            assert key == result.contact_id.encode()
            assert now - timedelta(days=90) <= result.occurred_at <= now + timedelta(minutes=5)
            event_row(result, TOPIC, 0, 0, now)
            reasons["valid"] = reasons.get("valid", 0) + 1
        else:
            assert result.detail
            reasons[result.reason.value] = reasons.get(result.reason.value, 0) + 1
    print(reasons)
    assert sum(reasons.values()) == FUZZ_MESSAGES
    assert reasons["valid"] > 1000 and reasons["implausible_time"] > 100 and reasons["invalid"] > 1000


class Message:
    __slots__ = ("key", "offset", "value")

    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.offset, self.key, self.value = offset, key, value


def test_the_sink_stores_every_valid_message_and_dead_letters_the_rest(clickhouse: Client) -> None:
    now = now_utc()
    messages = [(k, v) for _, (k, v) in corpus(now)] + list(fuzz(seed=99, count=FUZZ_MESSAGES, now=now))
    decoded = [decode(v, TOPIC, 1_000_000, k, now=now, policy=LIVE) for k, v in messages]
    valid_messages = sum(isinstance(r, EventBase) for r in decoded)
    expected_valid = {r.event_id for r in decoded if isinstance(r, EventBase)}
    sent: list[Outgoing] = []
    committed: dict[Any, int] = {}

    async def send(batch: list[Outgoing]) -> None:
        sent.extend(batch)

    async def main() -> None:
        sink = IngestSink(
            clickhouse, BlockingExecutor("hostile"), send, max_rows=5000, max_seconds=60,
            max_event_bytes=1_000_000, dedup_capacity=0, on_written=committed.update, topics=DEFAULT_TOPICS,
        )  # fmt: skip
        records = [Message(offset, key, value) for offset, (key, value) in enumerate(messages)]
        for start in range(0, len(records), 500):
            await sink.handle(TOPIC, 3, records[start : start + 500])
        await asyncio.wait_for(sink.drain(), 120)

    asyncio.run(main())
    assert committed == {(TOPIC, 3): len(messages) - 1}
    stored = {
        r[0]
        for r in clickhouse.query(
            "SELECT event_id FROM interaction_events WHERE source_topic = {t:String} AND source_partition = 3",
            parameters={"t": TOPIC},
        ).result_rows
    }
    assert stored == expected_valid
    assert len(sent) == len(messages) - valid_messages
    for key, value, headers in sent:
        assert headers is not None and headers["touchline.reason"] and headers["touchline.detail"]
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers.items())
        assert size <= DEAD_LETTER_MAX_BYTES
    table = clickhouse.query(
        "SELECT count(), countIf(reason = '') FROM dead_letters WHERE source_topic = {t:String} AND source_partition = 3",
        parameters={"t": TOPIC},
    ).result_rows[0]
    assert table == (len(sent), 0)
    print(f"{len(messages)} messages: {len(expected_valid)} distinct events stored, {len(sent)} dead-lettered")

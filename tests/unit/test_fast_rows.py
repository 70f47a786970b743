"""The ingest stage's fast way to a row (msgspec mirrors of the event models) gives exactly the row
of the pydantic way (`decode` + `event_row`), or leaves the message to it: on simulated events,
the hostile corpus, the fuzzer and generated variations of valid events, with and without
pseudonymisation. The oracle is the pydantic way, which the rest of the suite checks."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.events.models import to_json
from pipeline.events.topics import interaction_topic
from pipeline.ingest import fast_rows
from pipeline.ingest.decode import Reason, Rejection, decode
from pipeline.privacy import pseudonym
from pipeline.privacy.pseudonym import Pseudonymiser
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.store.clickhouse import insert_json_rows, insert_rows
from pipeline.store.rows import EVENT_COLUMNS, event_row
from pipeline.times import EPOCH, to_ms
from tests.hostile import corpus, fuzz, now_utc, valid

LIMIT = 65536
TOPIC = "touchline.interactions.chat"


@pytest.fixture(params=["clear", "pseudonymised"])
def hashing(request: pytest.FixtureRequest) -> Iterator[None]:
    pseudonym.configure(Pseudonymiser(b"k" * 32, customer_id=True) if request.param == "pseudonymised" else None)
    yield
    pseudonym.configure(None)


def pydantic_way(value: bytes | None, topic: str, key: bytes | None, offset: int = 7) -> tuple[Any, ...] | Rejection:
    event = decode(value, topic, LIMIT, key)
    return event if isinstance(event, Rejection) else event_row(event, topic, 3, offset, EPOCH)


def fast_way(value: bytes | None, topic: str, key: bytes | None, offset: int = 7) -> tuple[Any, ...] | None:
    return fast_rows._fast_row(value, topic, 3, offset, key) if value else None


def simulated(count: int) -> list[tuple[str, bytes, bytes]]:
    start = datetime.now(UTC) - timedelta(days=1)
    config = SimConfig(seed=5, start_ms=to_ms(start), duration_ms=6 * 3_600_000, rate=4000)
    out = []
    for _, made in Simulation(config).run():
        out.append((interaction_topic(made.channel), made.contact_id.encode(), to_json(made)))
        if len(out) == count:
            break
    return out


def test_simulated_events_take_the_fast_way_to_the_same_rows(hashing: None) -> None:
    messages = simulated(20_000)
    fast = 0
    for offset, (topic, key, value) in enumerate(messages):
        made = fast_way(value, topic, key, offset)
        expected = pydantic_way(value, topic, key, offset)
        assert not isinstance(expected, Rejection), expected
        if made is not None:
            fast += 1
            assert made == expected, value
        assert fast_rows.row(value, topic, 3, offset, LIMIT, key) == expected
    assert fast == len(messages), f"only {fast} of {len(messages)} took the fast way"


def test_every_event_type_is_mirrored() -> None:
    assert fast_rows.LEFT_TO_PYDANTIC == []


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "vendor"},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "vendor\n"},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "Vendor"},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "v" * 32},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "v" * 33},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": ""},
        {"type": "waiting_on_customer", "schema_version": 2, "reason": "véndor"},
        {"type": "waiting_on_customer", "schema_version": 1, "reason": "vendor"},
        {"type": "waiting_ended", "reason": None},
        {"type": "waiting_ended"},
        {"type": "survey_response", "survey": "csat", "score": 5},
        {"type": "survey_response", "survey": "csat", "score": 6},
        {"type": "survey_response", "survey": "nps", "score": 0},
        {"type": "survey_response", "survey": "ces", "score": 0},
        {"type": "survey_response", "survey": "ces", "score": 7.0},
    ],
)
def test_the_models_own_validators_decide_on_the_fast_way_too(fields: dict[str, Any]) -> None:
    value = json.dumps(valid(now_utc(), event_id="w-1", contact="wc-1", **fields)).encode()
    expected = pydantic_way(value, TOPIC, b"wc-1")
    made = fast_way(value, TOPIC, b"wc-1")
    assert made is None or made == expected
    got = fast_rows.row(value, TOPIC, 3, 7, LIMIT, b"wc-1")
    assert got == expected
    # what pydantic accepts and msgspec can read, the fast way takes (7.0 is an int only to pydantic)
    assert (made is not None) == (not isinstance(expected, Rejection) and fields.get("score") != 7.0)


def test_hostile_and_fuzzed_messages_get_the_pydantic_verdict(hashing: None) -> None:
    now = now_utc()
    messages = [message for _, message in corpus(now)] + list(fuzz(11, 5_000, now))
    taken = 0
    for key, value in messages:
        expected = pydantic_way(value, TOPIC, key)
        made = fast_way(value, TOPIC, key)
        if made is not None:
            taken += 1
            assert made == expected, value[:300] if value else value
        got = fast_rows.row(value, TOPIC, 3, 7, LIMIT, key)
        if isinstance(expected, Rejection) and expected.reason is Reason.IMPLAUSIBLE_TIME:
            assert isinstance(got, Rejection) and got.reason is expected.reason  # its detail names the clock's window
        else:
            assert got == expected
    assert taken, "no hostile message was valid: the comparison compared nothing"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=140),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [
    "type", "event_id", "occurred_at", "channel", "contact_id", "customer", "queue", "priority", "segment",
    "intent", "agent_id", "bot_id", "author", "schema_version", "direction", "ivr_node", "reason", "to_queue",
    "to_agent_id", "resolved_by", "stage", "acw_seconds", "left", "right", "extra",
]  # fmt: skip
IDENTIFIERS = ["customer_id", "phone", "email", "social_handle", "web_cookie", "other"]
TYPES = [
    "contact_started", "ivr_step", "bot_turn", "transferred", "resolved", "abandoned", "ended", "identity_link",
    "agent_reply", "customer_message", "survey_response", "waiting_on_customer", "nonsense",
]  # fmt: skip
REQUIRED: dict[str, dict[str, Any]] = {
    "ivr_step": {"ivr_node": "menu"},
    "bot_turn": {"author": "bot"},
    "abandoned": {"stage": "queue"},
    "ended": {"acw_seconds": 12.5},
    "identity_link": {"left": {"kind": "phone", "value": "+441632960000"}, "right": {"kind": "email", "value": "n/a"}},
    "survey_response": {"survey": "csat", "score": 4},
}
TIMES = st.sampled_from(["{now}", "{now}+00:00", "{now}\n", "2026-02-30T10:00:00.000Z", "2026-01-01T10:00:00Z"])


@st.composite
def variations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid event with some fields replaced by arbitrary JSON or near-valid values."""
    now = now_utc()
    kind = draw(st.sampled_from(TYPES))
    body: dict[str, Any] = valid(now, event_id="v-1", contact="vc-1", type=kind, **REQUIRED.get(kind, {}))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2 if draw(st.booleans()) else 0)):
        body[name] = draw(
            st.text(max_size=140)
            | JSON_VALUES
            | st.sampled_from(
                ["agent", "bot", "customer", "inbound", "queue", "chat", "", "x" * 128, "x" * 129, 3, 3.0]
            )
            | st.builds(lambda k, v: {"kind": k, "value": v}, st.sampled_from(IDENTIFIERS), st.text(max_size=3))
        )
    customer = body["customer"] = {"phone": "+441632960000", "email": "Ann@Example.com"}
    for name in draw(st.lists(st.sampled_from(IDENTIFIERS), max_size=2)):
        customer[name] = draw(JSON_VALUES | st.sampled_from(["", "n/a", "unknown", "+44 1632 960000"]))
    if draw(st.integers(0, 3)) == 0:
        body["customer"] = draw(JSON_VALUES)
    if draw(st.integers(0, 3)) == 0:
        stamp = now - timedelta(minutes=1)
        text = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body["occurred_at"] = draw(TIMES).replace("{now}", text)
    key = draw(st.sampled_from([b"vc-1", b"vc-1", b"vc-1", b"other"]))
    return key, json.dumps(body, allow_nan=True).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=variations(), pseudonymised=st.booleans())
def test_generated_variations_get_the_pydantic_verdict(message: tuple[bytes, bytes], pseudonymised: bool) -> None:
    key, value = message
    pseudonym.configure(Pseudonymiser(b"k" * 32) if pseudonymised else None)
    try:
        made = fast_way(value, TOPIC, key)
        expected = pydantic_way(value, TOPIC, key)
    finally:
        pseudonym.configure(None)
    event("fast way" if made is not None else "left to pydantic")
    if made is not None:
        assert made == expected


def test_json_rows_are_stored_as_the_native_form_stores_them(clickhouse: Client) -> None:
    """The sink's JSONCompactEachRow insert (times as float seconds) against clickhouse-connect's
    Native insert of the same rows (times as datetimes), into twin tables."""
    rng = random.Random(3)
    texts = ["a\x00b", "😀", '\\"', "é\u2028", "x" * 300, "", "[1,2]", "null", "\x7f\x1f", '{"a":"\\u0000"}']
    rows = []
    for i in range(3000):
        text = rng.choice(texts)
        occurred = datetime(1970, 1, 2, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(0, 4_354_000_000_000))
        written = datetime.now(UTC).replace(microsecond=rng.randrange(1000) * 1000)
        row = ["e", "queued", 2, occurred, "chat", text, text, "", "", "", "", text, 9, "", "", "", "", "", text]
        rows.append((f"j{i}", *row[1:], "t", rng.randrange(2**16), rng.randrange(2**64), written))
    occurred_at, ingested_at = EVENT_COLUMNS.index("occurred_at"), EVENT_COLUMNS.index("ingested_at")
    as_json = [
        (*r[:occurred_at], r[occurred_at].timestamp(), *r[occurred_at + 1 : ingested_at], r[ingested_at].timestamp())
        for r in rows
    ]
    for table in ("twin_native", "twin_json"):
        clickhouse.command(f"DROP TABLE IF EXISTS {table}")
        clickhouse.command(
            f"CREATE TABLE {table} AS interaction_events ENGINE = MergeTree PARTITION BY tuple() ORDER BY event_id"
        )
    insert_rows(clickhouse, "twin_native", EVENT_COLUMNS, rows)
    insert_json_rows(clickhouse, "twin_json", EVENT_COLUMNS, as_json)
    native = clickhouse.query("SELECT * FROM twin_native ORDER BY event_id").result_rows
    parsed = clickhouse.query("SELECT * FROM twin_json ORDER BY event_id").result_rows
    assert len(native) == len(rows)
    assert parsed == native

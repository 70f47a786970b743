from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events.models import ContactStarted, EventBase, SurveyResponse, to_json
from pipeline.ingest import decode as decoding
from pipeline.ingest.decode import Reason, Rejection, decode

TOPIC = "touchline.interactions.voice"
LIMIT = 65536


@pytest.fixture(autouse=True)
def history() -> Iterator[None]:
    """These events are dated 2026-03: decoded as a replay of history."""
    before = decoding.current_policy()
    decoding.configure(decoding.Policy(history_since=datetime(2000, 1, 1, tzinfo=UTC)))
    yield
    decoding.configure(before)


def started(**overrides: object) -> dict[str, object]:
    event = ContactStarted(event_id="e-1", occurred_at="2026-03-01T09:15:02.250Z", channel="voice", contact_id="c-1")
    payload: dict[str, object] = json.loads(to_json(event))
    payload.update(overrides)
    return payload


def test_valid_event_round_trips() -> None:
    result = decode(json.dumps(started()).encode(), TOPIC, LIMIT)
    assert isinstance(result, EventBase)
    assert result.event_id == "e-1"
    assert result.occurred_at.isoformat() == "2026-03-01T09:15:02.250000+00:00"


@pytest.mark.parametrize(
    ("value", "topic", "reason", "says"),
    [
        (b"", TOPIC, Reason.EMPTY, "no value"),
        (b"{not json", TOPIC, Reason.NOT_JSON, "not valid JSON"),
        (b"[1, 2]", TOPIC, Reason.NOT_JSON, "not an object"),
        (json.dumps(started(type="teleported")).encode(), TOPIC, Reason.UNKNOWN_EVENT_TYPE, "'teleported'"),
        (json.dumps(started(channel="pigeon")).encode(), TOPIC, Reason.UNKNOWN_CHANNEL, "channel"),
        (json.dumps(started(channel="chat")).encode(), TOPIC, Reason.WRONG_CHANNEL, "arrived on"),
        (json.dumps(started(occurred_at="2026-03-01T09:15:02")).encode(), TOPIC, Reason.INVALID, "time zone"),
        (
            json.dumps({k: v for k, v in started().items() if k != "event_id"}).encode(),
            TOPIC,
            Reason.INVALID,
            "event_id",
        ),
        (
            json.dumps({k: v for k, v in started().items() if k != "type"}).encode(),
            TOPIC,
            Reason.INVALID,
            "'type'",
        ),
        (json.dumps(started(surprise=1)).encode(), TOPIC, Reason.INVALID, "surprise"),
        (json.dumps(started()).encode(), "touchline.interactions.fax", Reason.UNKNOWN_TOPIC, "fax"),
        (b"{" + b" " * LIMIT + b"}", TOPIC, Reason.OVERSIZED, "limit"),
    ],
)
def test_rejections_say_why(value: bytes, topic: str, reason: Reason, says: str) -> None:
    result = decode(value, topic, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert says in result.detail


def test_survey_score_out_of_range_is_invalid() -> None:
    survey = json.loads(
        to_json(
            SurveyResponse(
                event_id="s",
                occurred_at="2026-03-01T09:15:02Z",
                channel="voice",
                contact_id="c",
                survey="csat",
                score=5,
            )
        )
    )
    survey["score"] = 9
    result = decode(json.dumps(survey).encode(), TOPIC, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID
    assert "csat score must be between 1 and 5" in result.detail


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    result = decode(value, TOPIC, LIMIT)
    assert isinstance(result, EventBase | Rejection)

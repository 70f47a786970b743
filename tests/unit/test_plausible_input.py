"""Events that would poison a stage are refused at decode with a reason: times outside what the
worker's clock makes plausible (and outside what any datetime or ClickHouse column can hold), events
not keyed by their contact, empty identifiers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from pipeline.config import Settings
from pipeline.events.models import EventBase
from pipeline.ingest import decode as decode_module
from pipeline.ingest.decode import WINDOW_SECONDS, Policy, Reason, Rejection, decode, plausible_window
from pipeline.privacy.runtime import decode_policy

TOPIC = "touchline.interactions.voice"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
LIVE = Policy()


def event(occurred_at: str, **fields: object) -> bytes:
    body: dict[str, object] = {"type": "queued", "event_id": "e-1", "occurred_at": occurred_at, "channel": "voice"}
    body.update({"contact_id": "c-1", "queue": "billing", **fields})
    return json.dumps(body).encode()


def reason(value: bytes, key: bytes | None = b"c-1", policy: Policy = LIVE) -> Reason | None:
    result = decode(value, TOPIC, 65536, key, now=NOW, policy=policy)
    return result.reason if isinstance(result, Rejection) else None


@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:00:00+05:00",  # OverflowError in the model before this guard
        "9999-12-31T23:59:59.999-05:00",
        "9999-12-31T23:59:59.999Z",
        "2200-01-01T00:00:00Z",  # overflows the KPI DateTime column
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "2027-01-27T10:00:00Z",  # 60 days ahead: moved the watermark
        "2026-11-28T10:05:01Z",  # just past the 5 minutes allowed ahead
        "2026-08-29T09:59:59Z",  # just over 90 days old
    ],
)
def test_implausible_times_are_refused(occurred_at: str) -> None:
    assert reason(event(occurred_at)) is Reason.IMPLAUSIBLE_TIME


@pytest.mark.parametrize("occurred_at", ["2026-11-28T10:04:59Z", "2026-08-30T10:00:01Z", "2026-11-28T14:59:00+05:00"])
def test_plausible_times_pass(occurred_at: str) -> None:
    assert reason(event(occurred_at)) is None


def test_history_is_accepted_only_when_the_setting_says_so() -> None:
    old = event("2026-03-02T08:00:00Z")
    assert reason(old) is Reason.IMPLAUSIBLE_TIME
    replay = Policy(history_since=datetime(2026, 1, 1, tzinfo=UTC))
    assert reason(old, policy=replay) is None
    assert reason(event("2025-12-31T23:59:59Z"), policy=replay) is Reason.IMPLAUSIBLE_TIME
    # even a replay never takes what ClickHouse DateTime cannot hold, nor the future
    anything = Policy(history_since=datetime(1, 1, 1, tzinfo=UTC))
    assert reason(event("1969-12-31T23:59:59Z"), policy=anything) is Reason.IMPLAUSIBLE_TIME
    assert reason(event("2027-01-27T10:00:00Z"), policy=anything) is Reason.IMPLAUSIBLE_TIME


def test_the_policy_comes_from_settings() -> None:
    policy = decode_policy(
        Settings(max_event_age_days=2, max_event_ahead_seconds=10, history_since=datetime(2026, 1, 1))
    )
    assert policy.max_age == timedelta(days=2) and policy.max_ahead == timedelta(seconds=10)
    assert policy.history_since == datetime(2026, 1, 1, tzinfo=UTC)
    assert reason(event("2026-03-02T08:00:00Z"), policy=policy) is None
    assert reason(event("2026-11-28T10:00:11Z"), policy=policy) is Reason.IMPLAUSIBLE_TIME


@pytest.mark.parametrize(("key", "expected"), [(b"c-1", None), (b"c-2", Reason.WRONG_KEY), (None, Reason.WRONG_KEY)])
def test_the_key_must_be_the_contact_id(key: bytes | None, expected: Reason | None) -> None:
    assert reason(event("2026-11-28T09:00:00Z"), key=key) is expected
    assert reason(event("2026-11-28T09:00:00Z"), key=key, policy=Policy(check_key=False)) is None


def test_a_caller_that_does_not_know_the_key_is_not_refused() -> None:
    assert isinstance(decode(event("2026-11-28T09:00:00Z"), TOPIC, 65536, now=NOW, policy=LIVE), EventBase)


@pytest.mark.parametrize("field", ["customer_id", "phone", "email", "social_handle", "web_cookie"])
def test_empty_identifiers_are_invalid(field: str) -> None:
    assert reason(event("2026-11-28T09:00:00Z", customer={field: ""})) is Reason.INVALID
    assert reason(event("2026-11-28T09:00:00Z", customer={field: "x"})) is None


def test_empty_identity_link_values_are_invalid() -> None:
    link = {"left": {"kind": "phone", "value": ""}, "right": {"kind": "email", "value": "a@b.c"}}
    value = event("2026-11-28T09:00:00Z", type="identity_link", **link)
    assert reason(value) is Reason.INVALID


def test_the_wall_clock_window_follows_a_new_policy_at_once() -> None:
    two_days_old = event((datetime.now(UTC) - timedelta(days=2)).isoformat())
    strict, lenient = Policy(max_age=timedelta(days=1)), Policy(max_age=timedelta(days=3))
    for policy, expected in [(strict, Reason.IMPLAUSIBLE_TIME), (lenient, None), (strict, Reason.IMPLAUSIBLE_TIME)]:
        result = decode(two_days_old, TOPIC, 65536, b"c-1", policy=policy)
        assert (result.reason if isinstance(result, Rejection) else None) is expected


def test_the_wall_clock_window_is_taken_again_after_window_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(decode_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    policy = Policy(max_age=timedelta(days=1), max_ahead=timedelta(minutes=5))

    def taken_at() -> datetime:  # the wall-clock moment the bounds in use were computed at
        earliest, latest = plausible_window(policy)
        assert latest - earliest == policy.max_age + policy.max_ahead
        return latest - policy.max_ahead

    before = datetime.now(UTC)
    first = taken_at()
    assert before <= first <= datetime.now(UTC)
    while datetime.now(UTC) <= first:
        pass
    clock[0] += WINDOW_SECONDS / 2
    assert taken_at() == first
    clock[0] += WINDOW_SECONDS
    assert taken_at() > first

"""`occurred_at` takes a shortcut for the canonical form producers send. Whatever the input, the
event's time must be what pydantic's own datetime parsing and the UTC-milliseconds rule give."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pipeline.events.models import EVENT_ADAPTER
from pipeline.times import iso

_DATETIME = TypeAdapter(datetime)


NO_ZONE = "Value error, occurred_at must carry a time zone (use UTC, e.g. 2026-03-01T09:15:02.250Z)"


def expected(raw: object) -> datetime | str:
    """The oracle: pydantic's datetime parse, then UTC with milliseconds (or why it is refused)."""
    try:
        value = _DATETIME.validate_json(json.dumps(raw))
    except ValidationError as error:
        return error.errors()[0]["msg"]
    if value.tzinfo is None or value.utcoffset() is None:
        return NO_ZONE
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=UTC)


def decoded(raw: object) -> datetime | str:
    event = {
        "schema_version": 1, "event_id": "e-1", "occurred_at": raw, "channel": "chat",
        "contact_id": "c-1", "customer": {}, "type": "queued",
    }  # fmt: skip
    try:
        return EVENT_ADAPTER.validate_json(json.dumps(event)).occurred_at
    except ValidationError as error:
        return error.errors()[0]["msg"]


def same(raw: object) -> None:
    want, got = expected(raw), decoded(raw)
    assert got == want, raw
    if isinstance(got, datetime):
        assert got.tzinfo is UTC and got.microsecond % 1000 == 0, raw  # one zone object for all times


digits = st.text("0123456789", min_size=1, max_size=4)
canonical_shaped = st.builds(
    lambda y, mo, d, h, mi, s, ms, z: f"{y}-{mo}-{d}T{h}:{mi}:{s}.{ms}{z}",
    digits, digits, digits, digits, digits, digits, digits, st.sampled_from(["Z", "z", "+00:00", "-03:30", ""]),
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(canonical_shaped)
def test_times_shaped_like_the_canonical_form_decode_as_pydantic_parses_them(raw: str) -> None:
    same(raw)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()))
def test_any_time_in_any_zone_decodes_to_utc_milliseconds(when: datetime) -> None:
    same(when.isoformat())
    same(when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


@pytest.mark.parametrize(
    "raw",
    [
        "2026-03-01T09:15:02.250Z", "2026-02-29T09:15:02.250Z", "2026-02-30T09:15:02.250Z", "2026-03-01T24:00:00.000Z",
        "2026-03-01T23:59:60.000Z", "0000-03-01T09:15:02.250Z", "2026-W09-7T09:15:02.250Z", "\uff12\uff10\uff12\uff16-03-01T09:15:02.250Z",
        "2026-03-01T09:15:02.250", "2026-03-01 09:15:02.250Z", "2026-03-01T09:15:02.2501Z", 1772356502.25, "",
    ],
)  # fmt: skip
def test_edge_times_decode_as_pydantic_parses_them(raw: object) -> None:
    same(raw)


def test_the_shortcut_is_taken_and_gives_the_standard_utc() -> None:
    assert decoded("2026-03-01T09:15:02.250Z") == datetime(2026, 3, 1, 9, 15, 2, 250_000, tzinfo=UTC)
    assert decoded("2026-03-01T11:15:02.250+02:00") == datetime(2026, 3, 1, 9, 15, 2, 250_000, tzinfo=UTC)
    assert decoded("2026-03-01T09:15:02.250") == NO_ZONE


@settings(max_examples=600, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.one_of(st.none(), st.just(UTC), st.timezones()),
    )
)
def test_iso_writes_what_isoformat_writes_in_milliseconds(when: datetime) -> None:
    """`iso` (msgspec's C writer, cut to milliseconds) against the standard library's form."""
    assert iso(when) == when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

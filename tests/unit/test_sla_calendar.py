"""Business-hours arithmetic against an independent minute-by-minute oracle, plus DST examples."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.sla.calendar import BusinessCalendar

ZONES = ["Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS_9_TO_5 = {d: ["09:00-17:00"] for d in DAYS[:5]}
# 2026 DST changes, all on local Sundays. Kolkata has none; Lord Howe moves by 30 minutes.
# Generated instants start up to 3 days before one of the zone's changes (or in an ordinary June
# week), and spans reach across it.
DST_SUNDAYS = {
    "Europe/London": [date(2026, 3, 29), date(2026, 10, 25)],
    "America/New_York": [date(2026, 3, 8), date(2026, 11, 1)],
    "Asia/Kolkata": [date(2026, 3, 29)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4)],
}
# night shifts that put the DST change inside opening hours
NIGHT_SHIFTS = [
    ["00:00-24:00"],
    ["00:30-02:30"],
    ["01:00-03:00"],
    ["01:30-02:00"],
    ["02:00-04:00"],
    ["00:00-01:30", "02:30-24:00"],
]


Cal = dict[str, Any]  # timezone, weekly, holidays (a set of dates), anchor (start of generated instants)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- the oracle: local wall-clock reading of every UTC minute ---------------------------------------


def _minutes(text: str) -> tuple[int, int]:
    start, end = text.split("-")
    return int(start[:2]) * 60 + int(start[3:]), int(end[:2]) * 60 + int(end[3:])


def oracle_open(cal: Cal, minute: datetime) -> bool:
    """Open at this UTC minute, by the definition: the local reading lies in an opening interval
    of its local weekday and its local date is no holiday."""
    local = minute.astimezone(ZoneInfo(str(cal["timezone"])))
    if local.date() in cal["holidays"]:
        return False
    of_day = local.hour * 60 + local.minute
    shifts: list[str] = cal["weekly"].get(DAYS[local.weekday()], [])
    return any(lo <= of_day < hi for lo, hi in map(_minutes, shifts))


def oracle_between(cal: Cal, start: datetime, end: datetime) -> int:
    """Open minutes in [start, end)."""
    count, minute = 0, start
    while minute < end:
        count += oracle_open(cal, minute)
        minute += timedelta(minutes=1)
    return count


# -- strategies -----------------------------------------------------------------------------------


@st.composite
def shifts(draw: st.DrawFn) -> list[str]:
    """0 to 3 non-overlapping shifts on a 30-minute grid (so gaps and overlaps of DST land inside)."""
    cuts = sorted(draw(st.sets(st.integers(0, 48), max_size=6)))
    if len(cuts) % 2:
        cuts = cuts[:-1]
    return [
        f"{a // 2:02d}:{a % 2 * 30:02d}-{b // 2:02d}:{b % 2 * 30:02d}"
        for a, b in zip(cuts[::2], cuts[1::2], strict=True)
    ]


@st.composite
def calendars(draw: st.DrawFn) -> Cal:
    weekly = {day: s for day in DAYS if (s := draw(shifts()))}
    if draw(st.booleans()):
        weekly["sun"] = draw(st.sampled_from(NIGHT_SHIFTS))
    if not weekly:
        weekly = {"wed": ["00:00-24:00"]}
    zone = draw(st.sampled_from(ZONES))
    sunday = draw(st.sampled_from([*DST_SUNDAYS[zone], date(2026, 6, 14)]))
    anchor = datetime.combine(sunday - timedelta(days=3), datetime.min.time(), UTC)
    holidays = draw(st.sets(st.sampled_from([sunday + timedelta(days=i) for i in range(-3, 5)]), max_size=3))
    return {"timezone": zone, "weekly": weekly, "holidays": holidays, "anchor": anchor}


def build(cal: Cal) -> BusinessCalendar:
    data = {k: v for k, v in cal.items() if k != "anchor"}
    return BusinessCalendar.model_validate({**data, "holidays": sorted(cal["holidays"])})


def at_minute(cal: Cal, minutes: int) -> datetime:
    anchor: datetime = cal["anchor"]
    return anchor + timedelta(minutes=minutes)


def at_ms(cal: Cal, ms: int) -> datetime:
    anchor: datetime = cal["anchor"]
    return anchor + timedelta(milliseconds=ms)


minute_offsets = st.integers(0, 3 * 1440)
# mostly multi-day spans, so that the DST Sunday is inside
minute_spans = st.one_of(st.integers(0, 180), st.integers(1440, 4 * 1440), st.integers(1440, 4 * 1440))
ms_offsets = st.integers(0, 5 * 86_400_000)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties against the oracle --------------------------------------------------------------------


@settings(FAST, max_examples=120)
@given(calendars(), minute_offsets, minute_spans)
def test_between_matches_the_oracle(cal: Cal, offset: int, span: int) -> None:
    start = at_minute(cal, offset)
    end = start + timedelta(minutes=span)
    assert build(cal).business_seconds_between(start, end) == oracle_between(cal, start, end) * 60


@FAST
@given(calendars(), minute_offsets)
def test_is_open_and_next_open_match_the_oracle(cal: Cal, offset: int) -> None:
    at = at_minute(cal, offset)
    calendar = build(cal)
    assert calendar.is_open(at) == oracle_open(cal, at)
    minute = at
    while not oracle_open(cal, minute):
        minute += timedelta(minutes=1)
    assert calendar.next_open(at) == minute


@FAST
@given(calendars(), minute_offsets, st.integers(1, 3 * 1440))
def test_add_matches_the_oracle(cal: Cal, offset: int, minutes: int) -> None:
    start = at_minute(cal, offset)
    remaining, minute = minutes, start
    while True:
        if oracle_open(cal, minute):
            remaining -= 1
            if remaining == 0:
                break
        minute += timedelta(minutes=1)
    assert build(cal).add_business_seconds(start, minutes * 60) == minute + timedelta(minutes=1)


# -- inverse and monotonicity, at millisecond precision -------------------------------------------


@FAST
@given(calendars(), ms_offsets, st.integers(0, 5 * 86_400_000))
def test_add_is_the_inverse_of_between(cal: Cal, offset: int, ms: int) -> None:
    start = at_ms(cal, offset)
    calendar = build(cal)
    end = calendar.add_business_seconds(start, ms / 1000)
    assert end >= start
    assert calendar.business_seconds_between(start, end) == ms / 1000
    if ms > 0:  # earliest such instant: one millisecond less falls short
        assert calendar.business_seconds_between(start, end - timedelta(milliseconds=1)) < ms / 1000
        assert calendar.is_open(end - timedelta(milliseconds=1))


@FAST
@given(calendars(), ms_offsets, st.integers(0, 3 * 86_400_000), st.integers(0, 3 * 86_400_000))
def test_monotonic(cal: Cal, offset: int, a: int, b: int) -> None:
    start = at_ms(cal, offset)
    calendar = build(cal)
    a, b = sorted((a, b))
    assert calendar.add_business_seconds(start, a / 1000) <= calendar.add_business_seconds(start, b / 1000)
    t1, t2 = start + timedelta(milliseconds=a), start + timedelta(milliseconds=b)
    assert calendar.business_seconds_between(start, t1) <= calendar.business_seconds_between(start, t2)
    # additivity over a split point
    assert calendar.business_seconds_between(start, t2) == pytest.approx(
        calendar.business_seconds_between(start, t1) + calendar.business_seconds_between(t1, t2), abs=1e-9
    )
    assert calendar.business_seconds_between(t2, start) == -calendar.business_seconds_between(start, t2)


@FAST
@given(calendars(), ms_offsets)
def test_zero_from_anywhere_is_the_start_and_next_open_is_open(cal: Cal, offset: int) -> None:
    at = at_ms(cal, offset)
    calendar = build(cal)
    assert calendar.add_business_seconds(at, 0) == at
    opens = calendar.next_open(at)
    assert calendar.is_open(opens)
    assert calendar.business_seconds_between(at, opens) == 0


# -- DST examples ---------------------------------------------------------------------------------------


def whole_day(zone: str, day: date) -> BusinessCalendar:
    return BusinessCalendar(timezone=zone, weekly={DAYS[day.weekday()]: ["00:00-24:00"]})


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
        ("Europe/London", date(2026, 3, 29), 23),
        ("Europe/London", date(2026, 10, 25), 25),
        ("Australia/Lord_Howe", date(2026, 4, 5), 24.5),
        ("Australia/Lord_Howe", date(2026, 10, 4), 23.5),
        ("Asia/Kolkata", date(2026, 3, 8), 24),
    ],
)
def test_whole_days_follow_the_wall_clock(zone: str, day: date, hours: float) -> None:
    calendar = whole_day(zone, day)
    week = calendar.business_seconds_between(
        datetime.combine(day - timedelta(days=1), datetime.min.time(), UTC),
        datetime.combine(day + timedelta(days=2), datetime.min.time(), UTC),
    )
    assert week / 3600 == hours


def test_office_hours_are_ten_hours_on_dst_days_and_gaps_are_skipped() -> None:
    office = BusinessCalendar(timezone="Europe/London", weekly={d: ["08:00-18:00"] for d in DAYS})
    for day in (date(2026, 3, 29), date(2026, 10, 25)):
        start = datetime.combine(day, datetime.min.time(), UTC)
        assert office.business_seconds_between(start, start + timedelta(days=1)) == 10 * 3600
    # 01:00-03:00 on New York's spring-forward day: 02:00-03:00 never happens
    gap = BusinessCalendar(timezone="America/New_York", weekly={"sun": ["01:00-03:00"]})
    assert gap.business_seconds_between(utc(2026, 3, 8), utc(2026, 3, 9)) == 3600
    assert gap.next_open(utc(2026, 3, 8)) == utc(2026, 3, 8, 6)  # 01:00 EST
    # 01:00-02:00 on fall-back day happens twice, both count
    twice = BusinessCalendar(timezone="America/New_York", weekly={"sun": ["01:00-02:00"]})
    assert twice.business_seconds_between(utc(2026, 11, 1), utc(2026, 11, 2)) == 7200
    assert twice.is_open(utc(2026, 11, 1, 5, 30)) and twice.is_open(utc(2026, 11, 1, 6, 30))


def test_split_shifts_holidays_and_a_year() -> None:
    uk = BusinessCalendar(
        timezone="Europe/London",
        weekly={d: ["08:00-12:00", "13:00-18:00"] for d in DAYS[:5]},
        holidays=[date(2026, 4, 3), date(2026, 4, 6)],
    )
    assert not uk.is_open(utc(2026, 4, 1, 11, 30))  # 12:30 BST lunch
    assert uk.is_open(utc(2026, 4, 1, 10, 59))
    # Thursday 2 Apr 17:00 BST + 2 h: Good Friday and Easter Monday closed, then Tue 08:00 BST + 1 h
    assert uk.add_business_seconds(utc(2026, 4, 2, 16), 7200) == utc(2026, 4, 7, 8)
    # 2026 has 261 weekdays, minus 2 holidays, 9 h each
    assert uk.business_seconds_between(utc(2026, 1, 1), utc(2027, 1, 1)) == 259 * 9 * 3600
    assert uk.add_business_seconds(utc(2026, 1, 1), 259 * 9 * 3600) == utc(2026, 12, 31, 18)


def test_always_open_and_precision() -> None:
    always = BusinessCalendar.always()
    start = datetime(2026, 3, 8, 1, 2, 3, 456789, tzinfo=UTC)
    assert always.business_seconds_between(start, start + timedelta(hours=30)) == 30 * 3600
    assert always.add_business_seconds(start, 1.5) == datetime(2026, 3, 8, 1, 2, 4, 956000, tzinfo=UTC)
    assert always.is_open(start) and always.next_open(start) == start.replace(microsecond=456000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"timezone": "Mars/Olympus", "weekly": {"mon": ["08:00-18:00"]}}, "unknown IANA time zone"),
        ({"weekly": {"mon": ["8-18"]}}, "must look like"),
        ({"weekly": {"mon": ["18:00-08:00"]}}, "ends before it starts"),
        ({"weekly": {"mon": ["08:00-12:00", "11:00-13:00"]}}, "overlap"),
        ({"weekly": {"mon": ["08:00-24:30"]}}, "not a valid time range"),
        ({"weekly": {"mon": []}}, "no opening hours"),
        ({"always_open": True, "weekly": {"mon": ["08:00-18:00"]}}, "always_open"),
        ({"weekly": {"mon": ["08:00-18:00"]}, "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_calendars_are_rejected(data: Cal, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BusinessCalendar.model_validate(data)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BusinessCalendar.always().is_open(datetime(2026, 1, 1))

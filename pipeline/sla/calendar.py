"""Business-hours arithmetic on aware UTC instants, with millisecond precision.

A `BusinessCalendar` is open at an instant when that instant's *local wall-clock reading* in the
calendar's time zone falls inside one of the opening intervals of its local weekday, and the
local date is not a holiday: neither listed in `holidays` nor a public holiday of the calendar's
`public_holidays` country (and subdivision), which the `holidays` library computes by rule for any
year (Easter, "first Monday in May", substitute days), so no dates need typing in each year. Intervals are half-open, `[start, end)`; `"00:00-24:00"` is the
whole day. A 24x7 calendar (`always_open: true`) is open at every instant.

DST follows from that rule, with no special cases:

* A 08:00-18:00 day is 10 h of open time on normal days, and also on a DST-change day when the
  change happens outside opening hours (as usual, around 02:00).
* Nonexistent local times (the spring-forward gap) never occur, so an interval boundary inside a
  gap is reached at the transition instant: 01:00-03:00 in New York on the spring-forward day
  is open 06:00-07:00 UTC, i.e. 1 h.
* Repeated local times (the fall-back overlap) occur twice and are open both times: 00:00-24:00
  is 25 h on the fall-back day, and 01:00-02:00 in New York on that day is open for 2 h.
* Lord Howe's 30-minute shift is handled the same way (any offset change is).

Each local day's open intervals are converted to UTC epoch milliseconds once and cached, so
arithmetic costs O(days spanned); a year is a few hundred cached look-ups. The zone's offset
changes within a day are found by sampling the offset every 13 h and bisecting to the second
where it differs (real zones never change twice within 13 h).

The `*_ms` methods work on integer UTC epoch milliseconds; the others on aware `datetime`s
(naive ones are rejected) and return UTC `datetime`s.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_rules
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pipeline.times import from_ms as from_ms  # re-exported: pipeline.sla.clock imports it from here
from pipeline.times import to_ms as to_ms  # re-exported: pipeline.sla.clock imports it from here

MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_SHIFT = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_SAMPLE_STEP_S = 13 * 3600

Interval = tuple[int, int]  # [start, end) in ms (of the day, or since the epoch)


_DAY_CACHE = 4_096  # local days whose opening hours a calendar keeps (about 11 years)


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


_WEEKDAYS = list(Weekday)  # index = date.weekday()


def _parse_shift(text: str) -> Interval:
    match = _SHIFT.match(text.strip())
    if match is None:
        raise ValueError(f"opening hours must look like '08:00-18:00', got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"{text!r} is not a valid time range (00:00 to 24:00)")
    start, end = (h1 * 60 + m1) * 60_000, (h2 * 60 + m2) * 60_000
    if start >= end:
        raise ValueError(f"{text!r} ends before it starts (shifts cannot cross midnight; split them)")
    return start, end


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _offset_ms(zone: ZoneInfo, epoch_s: int) -> int:
    offset = datetime.fromtimestamp(epoch_s, zone).utcoffset()
    assert offset is not None
    return offset // timedelta(milliseconds=1)


@lru_cache(maxsize=4096)
def _offset_segments(tz: str, ordinal: int) -> tuple[tuple[int, int, int], ...]:
    """(utc_start_ms, utc_end_ms, offset_ms) pieces of constant offset covering every instant whose
    local reading can fall on local day `ordinal` (offsets are within -14 h..+14 h)."""
    zone = ZoneInfo(tz)
    local_midnight_s = (ordinal - _EPOCH_ORDINAL) * 86_400
    samples = [local_midnight_s - 15 * 3600 + i * _SAMPLE_STEP_S for i in range(5)]  # 52 h window
    offsets = [_offset_ms(zone, s) for s in samples]
    segments: list[tuple[int, int, int]] = []
    start_ms, current = samples[0] * 1000, offsets[0]
    for i in range(len(samples) - 1):
        lo, hi, off_lo, off_hi = samples[i], samples[i + 1], offsets[i], offsets[i + 1]
        if off_lo == off_hi:
            continue
        while hi - lo > 1:  # first second with the new offset
            mid = (lo + hi) // 2
            if _offset_ms(zone, mid) == off_lo:
                lo = mid
            else:
                hi = mid
        segments.append((start_ms, hi * 1000, current))
        start_ms, current = hi * 1000, off_hi
    segments.append((start_ms, samples[-1] * 1000, current))
    return tuple(segments)


@lru_cache(maxsize=65_536)
def _open_on_day(tz: str, day_intervals: tuple[Interval, ...], ordinal: int) -> tuple[Interval, ...]:
    """The UTC epoch-ms intervals during which the local reading is inside `day_intervals` of day
    `ordinal`, sorted and merged."""
    if not day_intervals:
        return ()
    local_midnight_ms = (ordinal - _EPOCH_ORDINAL) * MS_PER_DAY
    pieces: list[Interval] = []
    for seg_start, seg_end, offset in _offset_segments(tz, ordinal):
        for start, end in day_intervals:
            lo = max(local_midnight_ms + start - offset, seg_start)
            hi = min(local_midnight_ms + end - offset, seg_end)
            if lo < hi:
                pieces.append((lo, hi))
    return tuple(_merge(pieces))


class PublicHolidays(BaseModel):
    """Recurring public holidays of a country, optionally of one subdivision (region), by rule for
    every year, from the `holidays` library."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str = Field(description="ISO 3166-1 alpha-2 country code, e.g. `GB`, `US`, `DE`.")
    subdivision: str | None = Field(
        None,
        description="Region code, e.g. `ENG` or `SCT` (GB), `CA` (US), `BY` (DE); national holidays only when absent.",
    )
    observed: bool = Field(True, description="Include substitute days (a holiday on a weekend observed on a weekday).")

    @model_validator(mode="after")
    def _known(self) -> Self:
        supported = holiday_rules.list_supported_countries()
        if self.country not in supported:
            raise ValueError(f"unknown country {self.country!r} for public holidays (ISO codes, e.g. GB, US, DE)")
        regions = supported[self.country]
        if self.subdivision is not None and self.subdivision not in regions:
            raise ValueError(
                f"unknown subdivision {self.subdivision!r} of {self.country} (known: {', '.join(regions) or 'none'})"
            )
        return self

    def rules(self) -> holiday_rules.HolidayBase:
        """The library's holiday table (filled in per year on first use)."""
        return holiday_rules.country_holidays(self.country, subdiv=self.subdivision, observed=self.observed)


class BusinessCalendar(BaseModel):
    """Opening hours in one time zone. See the module docstring for the exact rules.

    YAML form::

        timezone: Europe/London
        weekly: {mon: ["08:00-12:00", "13:00-18:00"], tue: ["08:00-18:00"]}   # missing day = closed
        holidays: [2026-12-24]                                                 # whole local days
        public_holidays: {country: GB, subdivision: ENG}                       # by rule, every year
    or ``always_open: true`` for 24x7.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("UTC", description="IANA time zone name, e.g. `Europe/London`.")
    weekly: dict[Weekday, list[str]] = Field(
        default_factory=dict, description="Opening hours per weekday (`mon`..`sun`); a missing day is closed."
    )
    holidays: list[date] = Field(default_factory=list, description="Local dates closed all day.")
    public_holidays: PublicHolidays | None = Field(
        None, description="Also closed on the public holidays of this country (and subdivision), every year."
    )
    always_open: bool = Field(False, description="Open 24x7 (then `weekly` and `holidays` must be empty).")

    _week: tuple[tuple[Interval, ...], ...] = PrivateAttr(default=((),) * 7)
    _holiday_ordinals: frozenset[int] = PrivateAttr(default=frozenset())
    _public: holiday_rules.HolidayBase | None = PrivateAttr(default=None)
    # local day ordinal -> its opening intervals, cleared when it reaches _DAY_CACHE entries: a
    # restore of 48k contacts computed 42k days (1.15 s of 6.5 s), each through pydantic's
    # private-attribute lookup and the holidays library
    _days: dict[int, tuple[Interval, ...]] = PrivateAttr(default_factory=dict)

    @classmethod
    def always(cls) -> BusinessCalendar:
        """The 24x7 calendar: business time equals elapsed time."""
        return cls(always_open=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/London, America/New_York)") from None
        return value

    @field_validator("weekly")
    @classmethod
    def _valid_shifts(cls, value: dict[Weekday, list[str]]) -> dict[Weekday, list[str]]:
        for day, shifts in value.items():
            parsed = sorted(_parse_shift(s) for s in shifts)
            for (_, end), (start, _) in pairwise(parsed):
                if start < end:
                    raise ValueError(f"{day.value}: shifts {shifts} overlap")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.always_open and (self.weekly or self.holidays or self.public_holidays):
            raise ValueError("an always_open calendar takes no weekly hours or holidays")
        if not self.always_open and not any(self.weekly.values()):
            raise ValueError("weekly has no opening hours (use always_open: true for 24x7)")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._week = tuple(tuple(_merge([_parse_shift(s) for s in self.weekly.get(day, [])])) for day in _WEEKDAYS)
        self._holiday_ordinals = frozenset(d.toordinal() for d in self.holidays)
        self._public = self.public_holidays.rules() if self.public_holidays is not None else None

    def is_holiday(self, day: date) -> bool:
        """Closed all day `day` (local date): a listed holiday or a public holiday."""
        return day.toordinal() in self._holiday_ordinals or (self._public is not None and day in self._public)

    # -- epoch-millisecond core -------------------------------------------------------------

    def _local_ordinal(self, ms: int) -> int:
        return from_ms(ms).astimezone(ZoneInfo(self.timezone)).date().toordinal()

    def _day(self, ordinal: int) -> tuple[Interval, ...]:
        days = self._days
        opening = days.get(ordinal)
        if opening is None:
            day = date.fromordinal(ordinal)
            opening = () if self.is_holiday(day) else _open_on_day(self.timezone, self._week[day.weekday()], ordinal)
            if len(days) >= _DAY_CACHE:
                days.clear()
            days[ordinal] = opening
        return opening

    def is_open_ms(self, ms: int) -> bool:
        if self.always_open:
            return True
        # each instant has exactly one local reading, so only its own local day can contain it
        return any(start <= ms < end for start, end in self._day(self._local_ordinal(ms)))

    def next_open_ms(self, ms: int) -> int:
        """`ms` itself when open, else the start of the next opening."""
        if self.always_open:
            return ms
        ordinal = self._local_ordinal(ms) - 1
        while True:  # terminates: validation guarantees a weekly opening, holidays are finite
            for start, end in self._day(ordinal):
                if end > ms:
                    return max(start, ms)
            ordinal += 1

    def business_ms_between(self, start_ms: int, end_ms: int) -> int:
        """Open milliseconds in `[start_ms, end_ms)`; negative when `end_ms < start_ms`."""
        if end_ms < start_ms:
            return -self.business_ms_between(end_ms, start_ms)
        if self.always_open:
            return end_ms - start_ms
        total = 0
        # a fall-back across midnight can put readings a day outside the end points' local dates
        for ordinal in range(self._local_ordinal(start_ms) - 1, self._local_ordinal(end_ms) + 2):
            for start, end in self._day(ordinal):
                lo, hi = max(start, start_ms), min(end, end_ms)
                if lo < hi:
                    total += hi - lo
        return total

    def add_business_ms(self, start_ms: int, ms: int) -> int:
        """The earliest instant at which `ms` open milliseconds have elapsed after `start_ms`
        (`start_ms` itself for 0, even when closed)."""
        if ms < 0:
            raise ValueError(f"cannot add negative business time ({ms} ms)")
        if ms == 0 or self.always_open:
            return start_ms + ms
        remaining = ms
        ordinal = self._local_ordinal(start_ms) - 1
        while True:  # terminates: see next_open_ms
            for start, end in self._day(ordinal):
                lo = max(start, start_ms)
                if lo >= end:
                    continue
                if remaining <= end - lo:
                    return lo + remaining
                remaining -= end - lo
            ordinal += 1

    # -- datetime API --------------------------------------------------------------------------

    def is_open(self, at: datetime) -> bool:
        """Whether the calendar is open at `at`."""
        return self.is_open_ms(to_ms(at))

    def next_open(self, at: datetime) -> datetime:
        """`at` when open, else the next instant at which the calendar opens (UTC)."""
        return from_ms(self.next_open_ms(to_ms(at)))

    def business_seconds_between(self, start: datetime, end: datetime) -> float:
        """Open time between the two instants in seconds; negative when `end` is before `start`."""
        return self.business_ms_between(to_ms(start), to_ms(end)) / 1000

    def add_business_seconds(self, start: datetime, seconds: float) -> datetime:
        """The earliest instant (UTC) at which `seconds` of open time have elapsed after `start`."""
        return from_ms(self.add_business_ms(to_ms(start), round(seconds * 1000)))


ALWAYS = BusinessCalendar.always()

"""Business calendars with public holidays by rule (`public_holidays: {country, subdivision}`, from
the `holidays` library): the weekday closures of several years equal the published lists, opening
hours and business-time arithmetic honour them, and bad settings are refused readably."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from pipeline.sla.calendar import BusinessCalendar
from pipeline.sla.policy import PolicyError, parse_policies

OFFICE_HOURS = {day: ["08:00-18:00"] for day in ("mon", "tue", "wed", "thu", "fri")}

# Published lists (gov.uk bank holidays, England and Wales; OPM US federal holidays), weekdays only.
ENGLAND = {
    2026: ["01-01", "04-03", "04-06", "05-04", "05-25", "08-31", "12-25", "12-28"],
    2027: ["01-01", "03-26", "03-29", "05-03", "05-31", "08-30", "12-27", "12-28"],
    2028: ["01-03", "04-14", "04-17", "05-01", "05-29", "08-28", "12-25", "12-26"],
}
US_FEDERAL_2027 = [
    "01-01",
    "01-18",
    "02-15",
    "05-31",
    "06-18",
    "07-05",
    "09-06",
    "10-11",
    "11-11",
    "11-25",
    "12-24",
    "12-31",
]


def calendar(country: str, subdivision: str | None = None, timezone: str = "Europe/London") -> BusinessCalendar:
    spec = {"country": country} | ({"subdivision": subdivision} if subdivision else {})
    return BusinessCalendar.model_validate({"timezone": timezone, "weekly": OFFICE_HOURS, "public_holidays": spec})


def weekday_holidays(cal: BusinessCalendar, year: int) -> list[str]:
    day, out = date(year, 1, 1), []
    while day.year == year:
        if day.weekday() < 5 and cal.is_holiday(day):
            out.append(day.strftime("%m-%d"))
        day += timedelta(days=1)
    return out


@pytest.mark.parametrize("year", sorted(ENGLAND))
def test_england_bank_holidays_match_the_published_list(year: int) -> None:
    assert weekday_holidays(calendar("GB", "ENG"), year) == ENGLAND[year]


def test_us_federal_holidays_2027() -> None:
    assert weekday_holidays(calendar("US", timezone="America/New_York"), 2027) == US_FEDERAL_2027


def test_this_year_and_next_are_covered_without_listing_dates() -> None:
    """Whatever today is, the calendar knows this year's and next year's holidays (Christmas, and
    in England, a spring and a summer bank holiday)."""
    cal = calendar("GB", "ENG")
    this_year = datetime.now(UTC).year
    for year in (this_year, this_year + 1):
        assert cal.is_holiday(date(year, 12, 25))
        assert len(weekday_holidays(cal, year)) >= 8


def test_opening_hours_and_business_time_skip_easter() -> None:
    cal = calendar("GB", "ENG")
    thursday_noon = datetime(2027, 3, 25, 12, tzinfo=UTC)  # 12:00 GMT
    assert cal.is_open(thursday_noon)
    assert not cal.is_open(datetime(2027, 3, 26, 12, tzinfo=UTC))  # Good Friday
    assert not cal.is_open(datetime(2027, 3, 29, 12, tzinfo=UTC))  # Easter Monday (BST since the 28th)
    # Thursday 17:00 GMT + 2 business hours: 1 h on Thursday, then Tuesday 08:00-09:00 BST (07:00 UTC)
    start = datetime(2027, 3, 25, 17, tzinfo=UTC)
    assert cal.add_business_seconds(start, 7200) == datetime(2027, 3, 30, 8, tzinfo=UTC)
    assert cal.business_seconds_between(start, datetime(2027, 3, 30, 8, tzinfo=UTC)) == 7200


def test_listed_holidays_add_to_public_ones() -> None:
    cal = BusinessCalendar.model_validate(
        {"weekly": OFFICE_HOURS, "holidays": ["2027-12-24"], "public_holidays": {"country": "GB", "subdivision": "ENG"}}
    )
    assert cal.is_holiday(date(2027, 12, 24)) and cal.is_holiday(date(2027, 12, 27))
    assert not cal.is_holiday(date(2027, 12, 23))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{country: XX}", "unknown country 'XX'"),
        ("{country: GB, subdivision: XYZ}", "unknown subdivision 'XYZ' of GB (known: ENG, NIR, SCT, WLS)"),
        ("{country: GB, region: ENG}", "unknown key 'region'"),
    ],
)
def test_bad_public_holidays_are_refused_readably(spec: str, message: str) -> None:
    text = (
        "calendars:\n  office:\n    timezone: Europe/London\n    weekly: {mon: ['08:00-18:00']}\n"
        f"    public_holidays: {spec}\n"
        "policies:\n  - name: all\n    resolution: 1h\n    calendar: office\n"
    )
    with pytest.raises(PolicyError) as error:
        parse_policies(text)
    assert message in str(error.value), str(error.value)

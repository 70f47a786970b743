"""SLA policy files: matching, durations, the shipped defaults and readable errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pipeline.sla.policy import PolicyError, Target, Terms, load_policies, parse_duration, parse_policies

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "sla-policies.yaml"

SMALL = """
calendars:
  office: {timezone: Europe/London, weekly: {mon: ["09:00-17:00"]}}
policies:
  - name: vip
    match: {segment: [premium, business], priority: {min: 2, max: 8}}
    first_response: 10s
  - name: billing-chat
    match: {channel: chat, queue: chat.billing}
    first_response: 1m
    next_response: 1m30s
  - name: email
    match: {channel: [email]}
    first_response: 24h
    calendar: office
  - name: default
    resolution: 1d
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20s", 20), ("15m", 900), ("24h", 86_400), ("2d", 172_800), ("1h30m", 5400), ("1.5h", 5400), (45, 45)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["20", "20x", "h", "-5s", "0s", "", "1h 30", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_first_match_wins_and_missing_fields_match_anything() -> None:
    policies = parse_policies(SMALL)
    assert policies.match("voice", 3, "premium", None).name == "vip"
    assert policies.match("voice", 9, "premium", None).name == "default"  # above max
    assert policies.match("chat", 1, "premium", "chat.billing").name == "billing-chat"
    assert policies.match("chat", 1, None, "chat.support").name == "default"
    assert policies.match("chat", 1, None, None).name == "default"  # unknown queue matches no queue rule
    email = policies.match("email", 0, None, None)
    assert email.name == "email" and email.uses_business_time
    assert policies.calendar_for(email).timezone == "Europe/London"
    assert policies.calendar_for(policies.match("web", 0, None, None)).always_open
    chat = policies.match("chat", 0, None, "chat.billing")
    assert chat.target_seconds(Target.NEXT_RESPONSE) == 90
    assert chat.target_seconds(Target.RESOLUTION) is None
    assert chat.at_risk_fraction == 0.8


def test_terms_are_the_matched_policy_s_and_memoized() -> None:
    policies = parse_policies(SMALL)
    chat = policies.terms("chat", 0, None, "chat.billing", Target.NEXT_RESPONSE)
    assert chat == Terms("billing-chat", "always", False, 90_000, 72_000, ("customer",))
    assert policies.terms("chat", 0, None, "chat.billing", Target.RESOLUTION) is None  # left out
    assert policies.terms("email", 0, None, None, Target.FIRST_RESPONSE) == Terms(
        "email", "office", True, 86_400_000, 69_120_000, ("customer",)
    )
    assert policies.terms("chat", 0, None, "chat.billing", Target.NEXT_RESPONSE) is chat


def test_shipped_defaults() -> None:
    policies = load_policies(SHIPPED)
    expect = {
        ("voice", 0, None): ("voice", 20, None),
        ("voice", 2, None): ("voice-priority", 10, None),
        ("chat", 0, "retail"): ("chat", 60, 60),
        ("chat", 0, "premium"): ("chat-premium", 30, 30),
        ("sms", 0, None): ("sms", 900, 900),
        ("social", 0, None): ("social", 3600, 3600),
        ("email", 0, None): ("email", 24 * 3600, 24 * 3600),
        ("web", 0, None): ("web", 60, None),
    }
    for (channel, priority, segment), (name, first, following) in expect.items():
        policy = policies.match(channel, priority, segment, None)
        assert (policy.name, policy.first_response, policy.next_response) == (name, first, following)
        assert policy.resolution is not None
    email = policies.match("email", 0, None, None)
    calendar = policies.calendar_for(email)
    assert email.uses_business_time and calendar.timezone == "Europe/London"
    # bank holidays by rule, so the shipped file never runs out of dates
    assert calendar.public_holidays is not None and (
        calendar.public_holidays.country,
        calendar.public_holidays.subdivision,
    ) == ("GB", "ENG")
    rules = calendar.public_holidays.rules()
    assert date(2026, 4, 3) in rules and date(2027, 3, 26) in rules and date(2030, 12, 25) in rules
    assert policies.policies[-1].match.is_catch_all


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policies(text)
    return info.value.problems


def test_errors_name_the_policy_and_field_one_per_line() -> None:
    found = problems(
        """
calendars:
  office: {timezone: Europe/Londn, weekly: {mon: ["09:00-17:00"]}}
policies:
  - name: voice
    match: {channel: [voice, fax], prio: 2}
    first_response: 20x
    at_risk_fraction: 1.5
    fist_response: 20s
  - name: default
"""
    )
    assert found == [
        "calendar 'office': timezone: unknown IANA time zone 'Europe/Londn' (e.g. Europe/London, America/New_York)",
        "policy 'voice' (#1): match.channel.1: Input should be 'voice', 'chat', 'email', 'social', 'sms' or 'web'",
        "policy 'voice' (#1): match: unknown key 'prio'",
        "policy 'voice' (#1): first_response: invalid duration '20x': use a number with a unit, e.g. 20s, 15m, 24h, 2d, 1h30m",
        "policy 'voice' (#1): at_risk_fraction: Input should be less than 1",
        "policy 'voice' (#1): unknown key 'fist_response'",
    ]
    with pytest.raises(PolicyError, match=r"(?s)invalid:\n  - calendar 'office'.*\n  - policy 'x'"):
        parse_policies(
            "calendars: {office: {timezone: Europe/Londn, weekly: {mon: ['09:00-17:00']}}}\npolicies: [{name: x, fist: 1}]"
        )


def test_structural_problems() -> None:
    found = problems(
        """
calendars:
  always: {always_open: true}
policies:
  - {name: a, match: {channel: chat}, calendar: office}
  - {name: a, match: {channel: sms}}
  - {name: b, match: {channel: web}, business_time: true}
  - {name: c, match: {channel: email}}
"""
    )
    assert found == ["policy 'b' (#3): business_time: true needs a `calendar` with opening hours"]
    found = problems(
        """
calendars:
  always: {always_open: true}
policies:
  - {name: a, match: {channel: chat}, calendar: office}
  - {name: a, match: {channel: sms}}
  - {name: all, first_response: 1m}
  - {name: late, match: {channel: email}}
"""
    )
    assert found == [
        "calendar 'always': the name is reserved for the built-in 24x7 calendar",
        "policy 'a' (#1): calendar: unknown calendar 'office' (known: always)",
        "policy 'a' (#2): name is already used by policy #1",
        "policy 'late' (#4): can never match, the catch-all policy 'all' (#3) comes before it",
    ]
    assert problems("policies:\n  - {name: chat, match: {channel: chat}}") == [
        "policies: no catch-all policy; end the list with one that has no `match`"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "must be a mapping"),
        ("policies: [", "not valid YAML"),
        ("policies: []", "policies: List should have at least 1 item"),
        ("rules: []", "document: unknown key 'rules'"),
        ("policies:\n  - {match: {}}", "policy #1: 'name' is required"),
        ("policies:\n  - {name: x, match: {priority: {min: 5, max: 2}}}\n  - {name: d}", "min 5 is above max 2"),
        (
            "policies:\n  - {name: x, match: {priority: 12}}\n  - {name: d}",
            "match.priority.in.0: Input should be less than or equal to 9",
        ),
        ("policies:\n  - {name: x, calendar: always, business_time: false}", None),
    ],
)
def test_document_level_errors(text: str, expected: str | None) -> None:
    if expected is None:
        assert parse_policies(text).policies[0].name == "x"
        return
    assert any(expected in line for line in problems(text)), problems(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policies(tmp_path / "nope.yaml")

"""SLA policies: which targets apply to a contact, loaded from a YAML file (see
`deploy/sla-policies.yaml` for the shipped defaults, commented for operators).

File layout::

    calendars:                      # named business calendars (see pipeline.sla.calendar)
      uk_office: {timezone: Europe/London, weekly: {mon: ["08:00-18:00"]}, holidays: [2026-12-24],
                  public_holidays: {country: GB, subdivision: ENG}}   # by rule, every year
    policies:                       # ordered: the first policy whose `match` fits wins
      - name: email
        match: {channel: email}     # channel, priority, segment, queue; each a value or a list
        first_response: 24h         # durations: 20s, 15m, 24h, 2d, 1h30m (or a number of seconds)
        next_response: 24h
        resolution: 50h
        calendar: uk_office         # targets count open time of this calendar (business time)
        pause_on:                   # wait reasons that stop each target's clock (default: customer)
          first_response: [customer]
          resolution: [customer, vendor]
      - name: default               # a catch-all (no match) is required
        resolution: 24h

Rules:

* A `match` field that is missing matches anything; a list matches any of its values; the fields
  must all match. `priority` is a number, a list, or a range `{min: 2}` / `{min: 2, max: 5}`.
  A contact whose segment or queue is unknown only matches policies that leave that field out.
* A target that is left out is not tracked for contacts under that policy.
* `at_risk_fraction` (default 0.8, strictly between 0 and 1): an at-risk alert is raised once
  that fraction of a target has elapsed.
* `pause_on` names the wait reasons (`reason` of `waiting_on_customer`: customer, vendor,
  internal, other, or any other lower-case label) that stop the clock: a list for every target,
  or a mapping per target (a target left out of the mapping keeps the default). Default
  `[customer]` for every target, which is what a `waiting_on_customer` without a reason means;
  `[]` never pauses.
* `calendar` defaults to `always` (24x7, elapsed time). Naming another calendar makes the targets
  count business time on it; `business_time: false` with a calendar, or `business_time: true`
  without one, is an error. `always` is reserved and cannot be redefined.
* Policy names are unique. There must be a catch-all policy (no `match`, or an empty one), and no
  policy may follow it (it could never match). Unknown keys are rejected everywhere.

Every problem is reported at once in a `PolicyError`, one line per problem naming the policy (or
calendar) and the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from pipeline.events.models import DEFAULT_WAIT_REASON, Channel
from pipeline.sla.calendar import ALWAYS, BusinessCalendar

ALWAYS_CALENDAR = "always"
_UNITS = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


class PolicyError(Exception):
    """The policy file is invalid; `problems` holds one readable line per problem."""

    def __init__(self, problems: Sequence[str], source: str = "SLA policies") -> None:
        self.problems = list(problems)
        super().__init__(f"{source} are invalid:\n" + "\n".join(f"  - {p}" for p in self.problems))


class Target(StrEnum):
    """An SLA obligation kind."""

    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"


def parse_duration(value: Any) -> float:
    """Seconds from `20s`, `15m`, `24h`, `2d`, `1h30m`, `1.5h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {value!r}: use a number with a unit, e.g. 20s, 15m, 24h, 2d, 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"invalid duration {value!r}: use e.g. 20s, 15m, 24h")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


def _priority_form(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"in": [value]}
    if isinstance(value, list):
        return {"in": value}
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
DEFAULT_PAUSE_ON: tuple[str, ...] = (DEFAULT_WAIT_REASON,)
ReasonList = Annotated[tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")], ...], BeforeValidator(_as_list)]
Priority = Annotated[int, Field(ge=0, le=9)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PriorityMatch(_Strict):
    """`priority: 2`, `priority: [1, 2]` or `priority: {min: 2, max: 5}`."""

    values: list[Priority] | None = Field(None, alias="in", min_length=1)
    min: Priority | None = None
    max: Priority | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.values is None and self.min is None and self.max is None:
            raise ValueError("give a priority, a list of priorities, or {min: n} / {max: n}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def matches(self, priority: int) -> bool:
        if self.values is not None and priority not in self.values:
            return False
        if self.min is not None and priority < self.min:
            return False
        return self.max is None or priority <= self.max


Labels = Annotated[list[Annotated[str, Field(min_length=1)]] | None, BeforeValidator(_as_list)]


class Match(_Strict):
    """Which contacts a policy applies to; a missing field matches anything."""

    channel: Annotated[list[Channel] | None, BeforeValidator(_as_list)] = None
    priority: Annotated[PriorityMatch | None, BeforeValidator(_priority_form)] = None
    segment: Labels = None
    queue: Labels = None

    @property
    def is_catch_all(self) -> bool:
        return self.channel is None and self.priority is None and self.segment is None and self.queue is None

    def matches(self, channel: Channel | str, priority: int, segment: str | None, queue: str | None) -> bool:
        if self.channel is not None and channel not in self.channel:
            return False
        if self.priority is not None and not self.priority.matches(priority):
            return False
        if self.segment is not None and segment not in self.segment:
            return False
        return self.queue is None or queue in self.queue


def _pause_form(value: Any) -> Any:
    if isinstance(value, list | tuple | str):
        reasons = _as_list(value)
        return {"first_response": reasons, "next_response": reasons, "resolution": reasons}
    return value


class PauseOn(_Strict):
    """Per target, the wait reasons that stop its clock."""

    first_response: ReasonList = DEFAULT_PAUSE_ON
    next_response: ReasonList = DEFAULT_PAUSE_ON
    resolution: ReasonList = DEFAULT_PAUSE_ON

    def reasons(self, target: Target) -> tuple[str, ...]:
        value: tuple[str, ...] = getattr(self, target.value)
        return value


class Policy(_Strict):
    """One SLA policy: targets (seconds) for the contacts it matches."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(None, description="Free text for operators.")
    match: Match = Field(default_factory=Match)
    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None
    at_risk_fraction: float = Field(0.8, gt=0, lt=1)
    pause_on: Annotated[PauseOn, BeforeValidator(_pause_form)] = Field(default_factory=PauseOn)
    calendar: str = ALWAYS_CALENDAR
    business_time: bool | None = Field(
        None, description="Whether targets count business time; implied by naming a calendar."
    )

    @model_validator(mode="after")
    def _business_time_agrees(self) -> Self:
        if self.business_time is True and self.calendar == ALWAYS_CALENDAR:
            raise ValueError("business_time: true needs a `calendar` with opening hours")
        if self.business_time is False and self.calendar != ALWAYS_CALENDAR:
            raise ValueError(f"calendar {self.calendar!r} has no effect with business_time: false; remove one of them")
        return self

    @property
    def uses_business_time(self) -> bool:
        return self.calendar != ALWAYS_CALENDAR

    def target_seconds(self, target: Target) -> float | None:
        value: float | None = getattr(self, target.value)
        return value

    def pause_reasons(self, target: Target) -> tuple[str, ...]:
        """The wait reasons that stop this target's clock."""
        return self.pause_on.reasons(target)


@dataclass(frozen=True, slots=True)
class Terms:
    """What an obligation of one target takes from the policy chosen for it."""

    policy: str
    calendar: str
    business_time: bool
    target_ms: int
    at_risk_ms: int  # obligation time at which at-risk fires
    pause_on: tuple[str, ...]


_TERMS_CACHE = 4_096  # (channel, priority, segment, queue, target) keys a policy set remembers


class PolicyFile(_Strict):
    """The YAML document."""

    calendars: dict[str, BusinessCalendar] = Field(default_factory=dict)
    policies: list[Policy] = Field(min_length=1)


@dataclass(frozen=True)
class PolicySet:
    """Validated policies in match order, and the calendars they use (including `always`)."""

    policies: tuple[Policy, ...]
    calendars: dict[str, BusinessCalendar]
    # `terms` memo: None where the policy leaves the target out
    _terms: dict[tuple[str, int, str | None, str | None, Target], Terms | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_dict(cls, data: Any, source: str = "SLA policies") -> PolicySet:
        """Validate a parsed document; raises `PolicyError` listing every problem."""
        if not isinstance(data, dict):
            raise PolicyError(["the document must be a mapping with `calendars` and `policies`"], source)
        try:
            parsed = PolicyFile.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(_describe(exc, data), source) from None
        problems = _cross_check(parsed)
        if problems:
            raise PolicyError(problems, source)
        return cls(tuple(parsed.policies), {ALWAYS_CALENDAR: ALWAYS, **parsed.calendars})

    def match(self, channel: Channel | str, priority: int, segment: str | None, queue: str | None) -> Policy:
        """The first policy whose `match` fits (there is always one: the catch-all)."""
        for policy in self.policies:
            if policy.match.matches(channel, priority, segment, queue):
                return policy
        raise AssertionError("validated policy sets end with a catch-all")  # pragma: no cover

    def terms(
        self, channel: Channel | str, priority: int, segment: str | None, queue: str | None, target: Target
    ) -> Terms | None:
        """`target`'s terms under the policy that `match` picks (None: the policy has no such
        target). Memoized: an obligation's opening took 0.6 µs with it, 3.6 µs matching and reading
        the pydantic policy each time (timeit)."""
        key = (channel, priority, segment, queue, target)
        try:
            return self._terms[key]
        except KeyError:
            pass
        policy = self.match(channel, priority, segment, queue)
        seconds = policy.target_seconds(target)
        terms = None
        if seconds is not None:
            target_ms = round(seconds * 1000)
            terms = Terms(
                policy.name,
                policy.calendar,
                policy.uses_business_time,
                target_ms,
                round(target_ms * policy.at_risk_fraction),
                policy.pause_reasons(target),
            )
        if len(self._terms) >= _TERMS_CACHE:  # labels come from events: bound the memo
            self._terms.clear()
        self._terms[key] = terms
        return terms

    def get(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)

    def calendar_for(self, policy: Policy) -> BusinessCalendar:
        """The calendar its targets are counted on (`always` for elapsed time)."""
        return self.calendars[policy.calendar]


def load_policies(path: str | Path) -> PolicySet:
    """Read and validate a policy YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    return parse_policies(text, source=str(path))


def parse_policies(text: str, source: str = "SLA policies") -> PolicySet:
    """Validate policy YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}".replace("\n", " ")], source) from None
    return PolicySet.from_dict(data, source)


def _cross_check(parsed: PolicyFile) -> list[str]:
    problems: list[str] = []
    if ALWAYS_CALENDAR in parsed.calendars:
        problems.append(f"calendar {ALWAYS_CALENDAR!r}: the name is reserved for the built-in 24x7 calendar")
    seen: dict[str, int] = {}
    catch_all: str | None = None
    for number, policy in enumerate(parsed.policies, start=1):
        label = f"policy {policy.name!r} (#{number})"
        if policy.name in seen:
            problems.append(f"{label}: name is already used by policy #{seen[policy.name]}")
        seen.setdefault(policy.name, number)
        if policy.calendar != ALWAYS_CALENDAR and policy.calendar not in parsed.calendars:
            known = ", ".join(sorted({ALWAYS_CALENDAR, *parsed.calendars}))
            problems.append(f"{label}: calendar: unknown calendar {policy.calendar!r} (known: {known})")
        if catch_all is not None:
            problems.append(f"{label}: can never match, the catch-all {catch_all} comes before it")
        elif policy.match.is_catch_all:
            catch_all = label
    if catch_all is None:
        problems.append("policies: no catch-all policy; end the list with one that has no `match`")
    return problems


def _describe(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = "document"
        if loc and loc[0] == "policies" and len(loc) > 1 and isinstance(loc[1], int):
            index = loc[1]
            raw = data.get("policies") or []
            name = raw[index].get("name") if index < len(raw) and isinstance(raw[index], dict) else None
            where = f"policy {name!r} (#{index + 1})" if name else f"policy #{index + 1}"
            loc = loc[2:]
        elif loc and loc[0] == "calendars" and len(loc) > 1:
            where, loc = f"calendar {loc[1]!r}", loc[2:]
        # union/validator plumbing (e.g. 'function-before[...]') is noise in a location
        field = ".".join(str(part) for part in loc if not (isinstance(part, str) and "[" in part))
        if error["type"] == "extra_forbidden":
            *parent, key = field.split(".")
            field, message = ".".join(parent), f"unknown key {key!r}"
        elif error["type"] == "missing":
            *parent, key = field.split(".")
            field, message = ".".join(parent), f"{key!r} is required"
        else:
            message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
    return problems

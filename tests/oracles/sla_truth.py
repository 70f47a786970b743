"""SLA oracle: the set of SLA breaches a run must produce, from the simulator's truth contact
records and the policy YAML, written from the rules documented in `pipeline/sla/clock.py`,
`policy.py` and `calendar.py` (docstrings) without importing them.

How the truth is turned into the obligations' inputs (times epoch ms):
  contact_started  started_at            queued / agent_assigned / transferred  legs[]
  first_agent_reply / agent_reply        agent_replies[] (the first is the first reply)
  customer_message customer_messages[]   waiting_on_customer / waiting_ended    waiting_on_customer[]
  resolved         resolutions[]         reopened                               reopened_at[]
  abandoned        abandoned_at (any stage)
  queue            the latest queued leg's queue; a transfer moves it to the leg's to_queue
  segment, priority  the contact's (every event of a simulated contact carries them)
`ended` does not stop clocks and surveys/identity links are ignored, so nothing else is needed:
every rule is determinable from the truth, including next_response and pauses. Events of one
contact in the same millisecond are ordered as the simulator emits them within one handler
(`_RANK`); this is the only model knowledge used.

Rules (from clock.py):
* first_response: voice/chat/web from the first `queued` (never queued: none); email/social/sms
  from `contact_started` (a later `queued` does not restart it). Met by an agent reply; for voice
  also by `agent_assigned`.
* next_response: once an agent has replied, a customer message opens one unless one is open; met
  by the next agent reply.
* resolution: from `contact_started`, met by `resolved`; `reopened` starts a new one.
* `waiting_on_customer` pauses every open obligation whose policy lists the wait's reason under
  `pause_on` for its target (truth `waiting_reasons[]`, `customer` when absent; `pause_on` is a
  list for all targets or a mapping per target, default `[customer]`) until `waiting_ended`;
  obligations opened during a wait start paused when its reason pauses them. A new wait with
  another reason during a wait switches the reason (the simulator never does this).
* `resolved` / `abandoned` close every open obligation and the contact: later events other than
  `reopened` are ignored.
* The policy is chosen when the obligation starts (first match in file order) from channel,
  latest non-empty queue, segment, highest priority; a target the policy leaves out is untracked.
* Breach: at the deadline D, the earliest instant at which the target's worth of running time
  (business time on the policy calendar, pauses excluded) has elapsed since the start. A close at
  D itself is late. `advance(until)` raises breaches with D <= until.

Business time is computed by stepping UTC minute by minute and asking whether the calendar is open
at the local wall-clock reading of each minute (valid because opening hours are whole local minutes
and zone offsets whole minutes): slow but obviously right, including DST gaps/overlaps, which
follow from the "local reading is inside an interval" rule by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import yaml

from tests.oracles import EPOCH, contact_records, iso, ms_of

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
TARGETS = ("first_response", "next_response", "resolution")
ASYNC_CHANNELS = frozenset({"email", "social", "sms"})
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

# Order of a contact's pseudo-events within one millisecond: the simulator's emission order inside
# one handler (transferred -> queued -> agent_assigned; reply -> waiting_on_customer or resolved;
# reopened -> customer_message; waiting_ended -> customer_message).
_RANK = {
    "contact_started": 0,
    "transferred": 1,
    "queued": 2,
    "agent_assigned": 3,
    "reply": 4,
    "waiting_on_customer": 5,
    "resolved": 6,
    "reopened": 7,
    "waiting_ended": 8,
    "customer_message": 9,
    "abandoned": 10,
}


class Breach(NamedTuple):
    contact_id: str
    target: str
    started_ms: int
    deadline_ms: int
    policy: str

    def describe(self) -> str:
        return f"{self.contact_id} {self.target} started {iso(self.started_ms)} deadline {iso(self.deadline_ms)} ({self.policy})"


# ---------------------------------------------------------------------------------------------
# Policies and calendars, parsed from the YAML


@dataclass(frozen=True)
class Calendar:
    name: str
    always: bool = True
    timezone: str = "UTC"
    weekly: tuple[tuple[tuple[int, int], ...], ...] = ((),) * 7  # minutes of the local day, [start, end)
    holidays: frozenset[date] = frozenset()
    public: tuple[str, str | None, bool] | None = None  # (country, subdivision, observed)

    def open_minute(self, minute_ms: int) -> bool:
        """Open during the UTC minute starting at `minute_ms`."""
        if self.always:
            return True
        # memoised on the instance: `deadline` asks minute by minute (3.7M asks for 35 days of
        # tickets), and hashing the frozen dataclass for `_open_minute`'s cache took 3.0 of its 9.9 s
        memo: dict[int, bool] = self.__dict__.setdefault("_open", {})
        found = memo.get(minute_ms)
        if found is None:
            found = memo[minute_ms] = _open_minute(self, minute_ms)
        return found

    def open_ms_in_hour(self, hour_ms: int) -> int:
        """Open milliseconds in the UTC hour starting at `hour_ms`: its open minutes, summed."""
        memo: dict[int, int] = self.__dict__.setdefault("_open_hours", {})
        found = memo.get(hour_ms)
        if found is None:
            found = memo[hour_ms] = sum(
                MINUTE_MS for m in range(hour_ms, hour_ms + HOUR_MS, MINUTE_MS) if self.open_minute(m)
            )
        return found


@lru_cache(maxsize=1_000_000)
def _open_minute(cal: Calendar, minute_ms: int) -> bool:
    local = datetime.fromtimestamp(minute_ms // 1000, ZoneInfo(cal.timezone))
    offset = local.utcoffset()
    assert offset is not None and offset.total_seconds() % 60 == 0, "minute stepping needs whole-minute offsets"
    if local.date() in cal.holidays or (cal.public is not None and local.date() in _public_days(cal.public)):
        return False
    minute = local.hour * 60 + local.minute
    return any(start <= minute < end for start, end in cal.weekly[local.weekday()])


@lru_cache(maxsize=16)
def _public_days(public: tuple[str, str | None, bool]) -> Any:
    """Public holidays by rule from the `holidays` library (the oracle's only shared dependency with
    the pipeline's calendar; which dates it gives is checked against published lists in the tests)."""
    import holidays

    country, subdivision, observed = public
    return holidays.country_holidays(country, subdiv=subdivision, observed=observed)


@dataclass(frozen=True)
class Policy:
    name: str
    match: Mapping[str, Any]
    targets_ms: Mapping[str, int]
    calendar: str = "always"
    pause_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # target -> reasons

    def pauses(self, target: str, reason: str | None) -> bool:
        return reason is not None and reason in self.pause_on.get(target, ("customer",))

    def matches(self, channel: str, priority: int, segment: str | None, queue: str | None) -> bool:
        m = self.match
        if "channel" in m and channel not in _as_list(m["channel"]):
            return False
        if "priority" in m:
            spec = m["priority"]
            if isinstance(spec, dict):
                if "in" in spec and priority not in spec["in"]:
                    return False
                if "min" in spec and priority < spec["min"]:
                    return False
                if "max" in spec and priority > spec["max"]:
                    return False
            elif priority not in _as_list(spec):
                return False
        if "segment" in m and segment not in _as_list(m["segment"]):
            return False
        return not ("queue" in m and queue not in _as_list(m["queue"]))


@dataclass(frozen=True)
class Policies:
    policies: tuple[Policy, ...]
    calendars: Mapping[str, Calendar]

    def match(self, channel: str, priority: int, segment: str | None, queue: str | None) -> Policy:
        for policy in self.policies:
            if policy.matches(channel, priority, segment, queue):
                return policy
        raise AssertionError("no catch-all policy")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _duration_seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {value!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _shift(text: str) -> tuple[int, int]:
    start, end = text.strip().split("-")
    h1, m1 = (int(x) for x in start.split(":"))
    h2, m2 = (int(x) for x in end.split(":"))
    return h1 * 60 + m1, h2 * 60 + m2


def load_policies(path: str | Path) -> Policies:
    data = yaml.safe_load(Path(path).read_text())
    calendars: dict[str, Calendar] = {"always": Calendar("always")}
    for name, raw in (data.get("calendars") or {}).items():
        if raw.get("always_open"):
            calendars[name] = Calendar(name)
            continue
        weekly = tuple(tuple(sorted(_shift(s) for s in raw.get("weekly", {}).get(day, []))) for day in _WEEKDAYS)
        holidays = frozenset(h if isinstance(h, date) else date.fromisoformat(str(h)) for h in raw.get("holidays", []))
        spec = raw.get("public_holidays")
        public = None if spec is None else (spec["country"], spec.get("subdivision"), spec.get("observed", True))
        calendars[name] = Calendar(name, False, raw.get("timezone", "UTC"), weekly, holidays, public)
    policies = []
    for raw in data["policies"]:
        targets = {t: round(_duration_seconds(raw[t]) * 1000) for t in TARGETS if raw.get(t) is not None}
        spec = raw.get("pause_on", ["customer"])
        if not isinstance(spec, dict):
            spec = {t: spec for t in TARGETS}
        pause_on = {t: tuple(_as_list(spec.get(t, ["customer"]))) for t in TARGETS}
        policies.append(Policy(raw["name"], raw.get("match") or {}, targets, raw.get("calendar", "always"), pause_on))
    return Policies(tuple(policies), calendars)


# ---------------------------------------------------------------------------------------------
# Deadlines


@dataclass
class Obligation:
    target: str
    started: int
    policy: Policy
    pauses: list[list[int | None]] = field(default_factory=list)  # [start, end or None)
    closed: int | None = None

    def running(self) -> list[tuple[int, int | None]]:
        """Stretches [a, b) (b None: open-ended) during which the clock runs."""
        out: list[tuple[int, int | None]] = []
        cursor: int | None = self.started
        for a, b in sorted((p[0], p[1]) for p in self.pauses if p[0] is not None):
            assert a is not None
            if cursor is None:
                break
            if a > cursor:
                out.append((cursor, a))
            cursor = None if b is None else max(cursor, b)
        if cursor is not None:
            out.append((cursor, None))
        return out


def deadline(ob: Obligation, calendar: Calendar, limit: int) -> int | None:
    """The instant at which the target's worth of running time has elapsed, or None when that is
    after `limit`."""
    need = ob.policy.targets_ms[ob.target]
    for lo, hi in ob.running():
        if lo > limit:
            return None
        if calendar.always:
            if hi is None or need <= hi - lo:
                found = lo + need
                return found if found <= limit else None
            need -= hi - lo
            continue
        cursor = lo
        while hi is None or cursor < hi:
            if cursor > limit:
                return None
            if cursor % HOUR_MS == 0 and (hi is None or cursor + HOUR_MS <= hi):
                # a whole hour that cannot hold the deadline is stepped over at once: the sum of its
                # minutes' open time (minute by minute, 35 days of tickets took 3.7M steps)
                open_ms = calendar.open_ms_in_hour(cursor)
                if need > open_ms:
                    need -= open_ms
                    cursor += HOUR_MS
                    continue
            minute = cursor - cursor % MINUTE_MS
            seg_end = minute + MINUTE_MS if hi is None else min(minute + MINUTE_MS, hi)
            if calendar.open_minute(minute):
                chunk = seg_end - cursor
                if need <= chunk:
                    found = cursor + need
                    return found if found <= limit else None
                need -= chunk
            cursor = seg_end
    return None


# ---------------------------------------------------------------------------------------------
# Contacts


@dataclass
class _Contact:
    channel: str
    priority: int
    segment: str | None
    queue: str | None = None
    started: bool = False
    first_opened: bool = False
    replied: bool = False
    waiting: str | None = None  # reason of the current wait
    closed: bool = False
    open: dict[str, Obligation] = field(default_factory=dict)


def _timeline(record: Mapping[str, Any]) -> list[tuple[int, int, int, str, str | None]]:
    """(time, rank, seq, kind, queue or wait reason) pseudo-events of one contact, in event order."""
    raw: list[tuple[int, str, str | None]] = []

    def add(t: int | None, kind: str, queue: str | None = None) -> None:
        if t is not None:
            raw.append((t, kind, queue))

    add(ms_of(record["started_at"]), "contact_started")
    for leg in record["legs"]:
        add(ms_of(leg["queued_at"]), "queued", leg["queue"])
        add(ms_of(leg["answered_at"]), "agent_assigned")
        add(ms_of(leg["transferred_at"]), "transferred", leg["to_queue"])
    for t in record["agent_replies"]:
        add(ms_of(t), "reply")
    for t in record["customer_messages"]:
        add(ms_of(t), "customer_message")
    reasons = record.get("waiting_reasons") or ["customer"] * len(record["waiting_on_customer"])
    for (a, b), reason in zip(record["waiting_on_customer"], reasons, strict=True):
        add(ms_of(a), "waiting_on_customer", reason)
        add(ms_of(b), "waiting_ended")
    for t in record["resolutions"]:
        add(ms_of(t), "resolved")
    for t in record["reopened_at"]:
        add(ms_of(t), "reopened")
    add(ms_of(record["abandoned_at"]), "abandoned")
    return sorted((t, _RANK[kind], i, kind, queue) for i, (t, kind, queue) in enumerate(raw))


def obligations(record: Mapping[str, Any], policies: Policies) -> list[Obligation]:
    """Every obligation the contact's events open, with its pauses and close time."""
    c = _Contact(record["channel"], int(record["priority"]), record.get("segment") or None)
    out: list[Obligation] = []

    def open_(target: str, t: int) -> None:
        policy = policies.match(c.channel, c.priority, c.segment, c.queue)
        if target not in policy.targets_ms:
            return
        ob = Obligation(target, t, policy, [[t, None]] if policy.pauses(target, c.waiting) else [])
        c.open[target] = ob
        out.append(ob)

    def close(target: str, t: int) -> None:
        ob = c.open.pop(target)
        ob.closed = t

    for t, _, _, kind, queue in _timeline(record):
        if c.closed:
            if kind == "reopened":
                c.closed = False
                open_("resolution", t)
            continue
        if kind == "queued" and queue:
            c.queue = queue  # the `queued` event carries its queue (learned before dispatch)
        if kind == "contact_started":
            if not c.started:
                c.started = True
                open_("resolution", t)
                if c.channel in ASYNC_CHANNELS and not c.first_opened:
                    c.first_opened = True
                    open_("first_response", t)
        elif kind == "queued":
            if not c.first_opened and not c.replied:
                c.first_opened = True
                open_("first_response", t)
        elif kind == "reply" or (kind == "agent_assigned" and c.channel == "voice"):
            c.replied = True
            for target in ("first_response", "next_response"):
                if target in c.open:
                    close(target, t)
        elif kind == "customer_message":
            if c.replied and "next_response" not in c.open:
                open_("next_response", t)
        elif kind == "waiting_on_customer":
            if c.waiting != queue:
                c.waiting = queue
                for ob in c.open.values():
                    paused = bool(ob.pauses) and ob.pauses[-1][1] is None
                    if ob.policy.pauses(ob.target, c.waiting) and not paused:
                        ob.pauses.append([t, None])
                    elif paused and not ob.policy.pauses(ob.target, c.waiting):
                        ob.pauses[-1][1] = t
        elif kind == "waiting_ended":
            if c.waiting is not None:
                c.waiting = None
                for ob in c.open.values():
                    if ob.pauses and ob.pauses[-1][1] is None:
                        ob.pauses[-1][1] = t
        elif kind in ("resolved", "abandoned"):
            for target in list(c.open):
                close(target, t)
            c.closed = True
            c.waiting = None
        elif kind == "reopened":
            c.started = True
            if "resolution" not in c.open:
                open_("resolution", t)
        elif kind == "transferred" and queue:
            c.queue = queue
    return out


@dataclass
class SlaOracle:
    breaches: set[Breach]
    contacts: int
    obligations: int


def sla_oracle(records: Iterable[Any], policy_path: str | Path, *, until_ms: int) -> SlaOracle:
    """Breaches with a deadline at or before `until_ms` (and at or before the obligation's close)."""
    policies = load_policies(policy_path)
    breaches: set[Breach] = set()
    contacts = contact_records(records)
    count = 0
    for record in contacts:
        for ob in obligations(record, policies):
            count += 1
            limit = until_ms if ob.closed is None else min(ob.closed, until_ms)
            d = deadline(ob, policies.calendars[ob.policy.calendar], limit)
            if d is not None:
                breaches.add(Breach(record["contact_id"], ob.target, ob.started, d, ob.policy.name))
    return SlaOracle(breaches, len(contacts), count)


def compare_breaches(expected: set[Breach], actual: set[Breach]) -> list[str]:
    diffs = [f"oracle only: {b.describe()}" for b in sorted(expected - actual)]
    diffs += [f"pipeline only: {b.describe()}" for b in sorted(actual - expected)]
    return diffs


BREACH_QUERY = (
    "SELECT contact_id, target, toUnixTimestamp64Milli(started_at), toUnixTimestamp64Milli(deadline), policy"
    " FROM sla_events FINAL WHERE kind = 'breached'"
)


def parse_breach_rows(rows: Iterable[Any]) -> list[Breach]:
    """Rows of `BREACH_QUERY` as breaches (a list: duplicates under different ids stay visible)."""
    return [Breach(str(c), str(t), int(s), int(d), str(p)) for c, t, s, d, p in rows]


def to_ms(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


__all__ = [
    "BREACH_QUERY",
    "Breach",
    "Policies",
    "SlaOracle",
    "compare_breaches",
    "deadline",
    "load_policies",
    "obligations",
    "parse_breach_rows",
    "sla_oracle",
    "to_ms",
]

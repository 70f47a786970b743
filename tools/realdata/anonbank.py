"""The "Anonymous Bank" call log (Technion SEE Center, October 1999) as canonical voice events.

Input: the tab-separated file described in `shared/realdata/README.md`: a header row, then one row
per call with 17 fields (`FIELDS`). Output: one voice contact per call, its events sorted by
(occurred_at, event_id) over the whole file, so `write_jsonl` produces a file `touchline replay`
sends in event-time order (no event is late behind another of its partition).

Conversion rules
----------------
* **Identity.** contact_id = `anonbank-<vru+line>-<call_id>`: `call_id` alone repeats across VRU
  lines within the month, the pair does not. Event ids are `<contact_id>-<n>`, n = 1, 2, ... in
  event order: deterministic, so converting and replaying twice is deduplicated downstream.
* **Time zone.** Clock times have no zone; they are taken as UTC on the row's `date` (yymmdd), so
  KPI days (`kpi_1d`, UTC days) are the bank's own calendar days.
* **Midnight.** A clock time more than `MIDNIGHT_SKEW` (1 h) before `vru_entry` is on the next day
  (a call that crossed midnight); a time less than that before `vru_entry` is clock skew on the
  same day (four rows have the IVR exit up to 71 s before the IVR entry).
* **One clock.** The VRU/queue system stamps vru_entry, vru_exit, q_start and q_exit; the agent
  system stamps ser_start and ser_exit with a clock that disagrees with it (ser_start is usually
  1-2 s before q_exit, minutes off in a few rows, `0:00:00` = missing in 23 AGENT rows). The
  contact is placed on the VRU clock and the service by its length: the call is answered when it
  left the queue (q_exit), or left the IVR (vru_exit) when it never queued, and it ends `ser_time`
  seconds after the answer. Answer waits are then exactly `q_time` and handle times exactly
  `ser_time`, the data set's own durations, and the events are in causal order.
* **Events** (all `channel` voice, `priority` = priority, `segment` = `premium` for priority 2
  else `retail`, `intent` = the service type's meaning (`INTENTS`), `customer.customer_id` =
  customer_id unless `0`; the data has no phone numbers). 15 rows carry the customer_id in a
  spreadsheet's scientific notation (`6.02082E+11`): its digits are lost and it identifies no one,
  so those calls are converted as from an unidentified customer:
    - `contact_started` at vru_entry;
    - `ivr_step` at vru_entry, `ivr_node` = vru+line;
    - `queued` (queue = service type, e.g. `PS`) at q_start when the call queued. An AGENT call
      that never queued (`q_start` 0:00:00) was routed straight to a free agent: it is queued at
      its answer instant, i.e. offered with a zero wait, as ASA and service level count it;
    - `agent_assigned` (AGENT) at the answer instant, `agent_id` = server (none for NO_SERVER);
    - `abandoned` (HANG): stage `queue` at q_exit when it queued, else stage `ivr` at vru_exit;
    - `ended`: AGENT at answer + ser_time with `acw_seconds` 0; HANG at the abandon; PHANTOM at
      vru_exit.
  The queue is set from `queued` on (a call that never reached a queue has none).
* **HANG rows with service times** (67 rows, all NO_SERVER): the outcome wins; they are abandons.
* **AGENT rows without service times** (ser_start = ser_exit = 0:00:00, ser_time 0): answered,
  with a handle time of 0 s (ser_time).
* **PHANTOM** calls "left no trace of a caller" (system artefacts): `contact_started`, `ivr_step`
  and `ended` at vru_exit only. No queue leg, so they are in no queue KPI (not offered, answered or
  abandoned) and have no handle time; they still count as calls.
* **Causal order.** An event is never stamped after the event that follows it: when the IVR clock
  puts the IVR exit (and so q_start) before the IVR entry, contact_started and ivr_step are moved
  back to the first later event. Queue and service instants are never moved.
* **Rejections.** A row with the wrong number of tab-separated fields (the two rows with spaces
  for tabs), an unparsable or out-of-range field, an unknown outcome, durations that disagree with
  the clock times (`vru_time`, `q_time`), a queue time without a queue start, or a repeated
  (vru+line, call_id) is returned as a `Rejection` (file line number, reason, raw line), never
  dropped silently. Blank lines are skipped and counted. A file whose first line is not the
  expected header raises `ValueError`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import ValidationError

from pipeline.events.models import (
    Abandoned,
    AgentAssigned,
    Channel,
    ContactStarted,
    CustomerIdentifiers,
    Ended,
    EventBase,
    IvrStep,
    Queued,
    to_json,
)

FIELDS: tuple[str, ...] = (
    "vru+line",
    "call_id",
    "customer_id",
    "priority",
    "type",
    "date",
    "vru_entry",
    "vru_exit",
    "vru_time",
    "q_start",
    "q_exit",
    "q_time",
    "outcome",
    "ser_start",
    "ser_exit",
    "ser_time",
    "server",
)
NEVER_QUEUED = "0:00:00"
NO_SERVER = "NO_SERVER"
UNIDENTIFIED_CUSTOMER = "0"
PREMIUM_PRIORITY = 2
MIDNIGHT_SKEW = timedelta(hours=1)
ID_PREFIX = "anonbank"

INTENTS: dict[str, str] = {
    "PS": "regular",
    "PE": "regular_english",
    "IN": "internet_consulting",
    "NE": "stock_exchange",
    "NW": "prospect_information",
    "TT": "callback_request",
}

Outcome = Literal["AGENT", "HANG", "PHANTOM"]
OUTCOMES: tuple[Outcome, ...] = ("AGENT", "HANG", "PHANTOM")
_OUTCOME_BY_NAME: dict[str, Outcome] = {o: o for o in OUTCOMES}

_CLOCK = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")
_DATE = re.compile(r"(\d{2})(\d{2})(\d{2})")
_UNSIGNED = re.compile(r"\d{1,18}")
_SIGNED = re.compile(r"-?\d{1,18}")
_LABEL = re.compile(r"[^\s]{1,32}")
_MANGLED_ID = re.compile(r"\d(\.\d+)?E\+\d{1,2}")  # a spreadsheet's scientific notation, e.g. 6.02082E+11


class Rejection(NamedTuple):
    """A row that was not converted: its 1-based file line number, why, and the raw line."""

    line: int
    reason: str
    raw: str


@dataclass(slots=True)
class ConversionResult:
    """Events of every converted call (sorted by occurred_at, event_id), the rejected rows, the
    number of calls converted, and the number of blank lines skipped."""

    events: list[EventBase] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    calls: int = 0
    blank_lines: int = 0


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed row, times absolute (UTC)."""

    line: int
    vru_line: str
    call_id: str
    customer_id: str | None
    priority: int
    service: str
    outcome: Outcome
    vru_entry: datetime
    vru_exit: datetime
    q_start: datetime | None
    q_exit: datetime | None
    ser_seconds: int
    server: str | None

    @property
    def contact_id(self) -> str:
        return f"{ID_PREFIX}-{self.vru_line}-{self.call_id}"

    @property
    def segment(self) -> str:
        return "premium" if self.priority == PREMIUM_PRIORITY else "retail"


class RowError(ValueError):
    """A row cannot be converted; the message is the rejection reason."""


def _clock(name: str, text: str) -> timedelta:
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise RowError(f"{name}: {text!r} is not a H:MM:SS clock time")
    hours, minutes, seconds = (int(g) for g in match.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise RowError(f"{name}: {text!r} is out of range")
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _int(name: str, text: str, *, signed: bool = False) -> int:
    if (_SIGNED if signed else _UNSIGNED).fullmatch(text) is None:
        raise RowError(f"{name}: {text!r} is not {'an' if signed else 'a non-negative'} integer")
    return int(text)


def _label(name: str, text: str) -> str:
    if _LABEL.fullmatch(text) is None:
        raise RowError(f"{name}: {text!r} is not a label (1-32 characters, no spaces)")
    return text


def _date(text: str) -> datetime:
    match = _DATE.fullmatch(text)
    if match is None:
        raise RowError(f"date: {text!r} is not yymmdd")
    yy, mm, dd = (int(g) for g in match.groups())
    try:
        return datetime(1900 + yy if yy >= 70 else 2000 + yy, mm, dd, tzinfo=UTC)
    except ValueError as error:
        raise RowError(f"date: {text!r}: {error}") from None


def _seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


def parse_row(fields: Sequence[str], line: int) -> Call:
    """One row's fields -> `Call`; raises `RowError` with the rejection reason."""
    if len(fields) != len(FIELDS):
        raise RowError(f"expected {len(FIELDS)} tab-separated fields, got {len(fields)}")
    row = dict(zip(FIELDS, (f.strip() for f in fields), strict=True))
    vru_line = _label("vru+line", row["vru+line"])
    call_id = str(_int("call_id", row["call_id"]))
    customer: str | None = None
    if _MANGLED_ID.fullmatch(row["customer_id"]) is None:
        number = str(_int("customer_id", row["customer_id"]))
        customer = None if number == UNIDENTIFIED_CUSTOMER else number
    priority = _int("priority", row["priority"])
    if priority > 9:
        raise RowError(f"priority: {priority} is out of range 0-9")
    service = _label("type", row["type"])
    day = _date(row["date"])
    outcome = _OUTCOME_BY_NAME.get(row["outcome"])
    if outcome is None:
        raise RowError(f"outcome: {row['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    ser_seconds = _int("ser_time", row["ser_time"])
    for name in ("ser_start", "ser_exit"):
        _clock(name, row[name])
    server = _label("server", row["server"])

    entry_clock = _clock("vru_entry", row["vru_entry"])

    def at(name: str) -> datetime:
        clock = _clock(name, row[name])
        moment = day + clock
        if clock < entry_clock - MIDNIGHT_SKEW:
            moment += timedelta(days=1)  # crossed midnight
        return moment

    vru_entry = day + entry_clock
    vru_exit = at("vru_exit")
    vru_time = _int("vru_time", row["vru_time"], signed=True)
    if _seconds(vru_exit - vru_entry) != vru_time:
        raise RowError(f"vru_time {vru_time} disagrees with vru_exit - vru_entry = {_seconds(vru_exit - vru_entry)} s")
    q_time = _int("q_time", row["q_time"])
    q_start: datetime | None = None
    q_exit: datetime | None = None
    if row["q_start"] == NEVER_QUEUED:
        _clock("q_exit", row["q_exit"])
        if row["q_exit"] != NEVER_QUEUED or q_time != 0:
            raise RowError("q_start 0:00:00 (never queued) but q_exit or q_time is set")
    else:
        q_start, q_exit = at("q_start"), at("q_exit")
        if _seconds(q_exit - q_start) != q_time:
            raise RowError(f"q_time {q_time} disagrees with q_exit - q_start = {_seconds(q_exit - q_start)} s")
    return Call(
        line=line,
        vru_line=vru_line,
        call_id=call_id,
        customer_id=customer,
        priority=priority,
        service=service,
        outcome=outcome,
        vru_entry=vru_entry,
        vru_exit=vru_exit,
        q_start=q_start,
        q_exit=q_exit,
        ser_seconds=ser_seconds,
        server=None if server == NO_SERVER else server,
    )


def _plan(call: Call) -> list[tuple[str, datetime]]:
    """(event type, time) of the call's events in causal order, before the causal-order clamp."""
    plan = [("contact_started", call.vru_entry), ("ivr_step", call.vru_entry)]
    if call.outcome == "PHANTOM":
        plan.append(("ended", call.vru_exit))
    elif call.outcome == "AGENT":
        answer = call.q_exit if call.q_exit is not None else call.vru_exit
        queued = call.q_start if call.q_start is not None else answer
        plan += [
            ("queued", queued),
            ("agent_assigned", answer),
            ("ended", answer + timedelta(seconds=call.ser_seconds)),
        ]
    elif call.q_start is not None and call.q_exit is not None:  # HANG in queue
        plan += [("queued", call.q_start), ("abandoned", call.q_exit), ("ended", call.q_exit)]
    else:  # HANG in the IVR
        plan += [("abandoned", call.vru_exit), ("ended", call.vru_exit)]
    return plan


def call_events(call: Call) -> list[EventBase]:
    """The canonical events of one call (see the module docstring for the rules)."""
    plan = _plan(call)
    times = [at for _, at in plan]
    for i in range(len(times) - 2, -1, -1):  # never after the event that follows
        times[i] = min(times[i], times[i + 1])
    contact_id = call.contact_id
    customer = CustomerIdentifiers(customer_id=call.customer_id)
    intent = INTENTS.get(call.service, call.service.lower())
    queue: str | None = None
    events: list[EventBase] = []
    for n, ((kind, _), at) in enumerate(zip(plan, times, strict=True), start=1):
        if kind == "queued":
            queue = call.service
        common: dict[str, Any] = {
            "event_id": f"{contact_id}-{n}",
            "occurred_at": at,
            "channel": Channel.VOICE,
            "contact_id": contact_id,
            "customer": customer,
            "queue": queue,
            "priority": call.priority,
            "segment": call.segment,
            "intent": intent,
        }
        if kind == "contact_started":
            events.append(ContactStarted(**common))
        elif kind == "ivr_step":
            events.append(IvrStep(**common, ivr_node=call.vru_line))
        elif kind == "queued":
            events.append(Queued(**common))
        elif kind == "agent_assigned":
            events.append(AgentAssigned(**common, agent_id=call.server))
        elif kind == "abandoned":
            events.append(Abandoned(**common, stage="queue" if queue is not None else "ivr"))
        else:
            agent = call.server if call.outcome == "AGENT" else None
            events.append(Ended(**common, agent_id=agent, acw_seconds=0.0))
    return events


def _check_header(line: str) -> None:
    found = tuple(f.strip() for f in line.rstrip("\r\n").split("\t"))
    if found != FIELDS:
        raise ValueError(f"not an Anonymous Bank call log: header is {found!r}, expected {FIELDS!r}")


def convert_lines(lines: Iterable[str]) -> ConversionResult:
    """Convert the lines of a call log (the header first). Line numbers are 1-based file lines."""
    result = ConversionResult()
    seen: dict[str, int] = {}
    iterator = iter(lines)
    header = next(iterator, None)
    if header is None:
        raise ValueError("empty file: no header")
    _check_header(header)
    for number, raw in enumerate(iterator, start=2):
        text = raw.rstrip("\r\n")
        if not text.strip():
            result.blank_lines += 1
            continue
        try:
            call = parse_row(text.split("\t"), number)
            first = seen.get(call.contact_id)
            if first is not None:
                raise RowError(f"repeated call (vru+line {call.vru_line}, call_id {call.call_id}) of line {first}")
            events = call_events(call)
        except RowError as error:
            result.rejected.append(Rejection(number, str(error), text))
            continue
        except ValidationError as error:  # a field the canonical model refuses
            first_error = error.errors()[0]
            where = ".".join(str(p) for p in first_error["loc"])
            result.rejected.append(Rejection(number, f"invalid event: {where}: {first_error['msg']}", text))
            continue
        seen[call.contact_id] = number
        result.events.extend(events)
        result.calls += 1
    result.events.sort(key=lambda e: (e.occurred_at, e.event_id))
    return result


def convert(path: str | Path) -> ConversionResult:
    """Convert the call log at `path` (see the module docstring)."""
    with Path(path).open(encoding="utf-8", errors="replace", newline="") as handle:
        return convert_lines(handle)


def write_jsonl(events: Iterable[EventBase], path: str | Path) -> int:
    """Write events as canonical JSON Lines (what `touchline replay FILE` reads), in the given
    order; returns the number written."""
    count = 0
    with Path(path).open("wb") as out:
        for event in events:
            out.write(to_json(event) + b"\n")
            count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.realdata.anonbank IN.tsv OUT.jsonl`: convert and report rejections."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m tools.realdata.anonbank IN.tsv OUT.jsonl", file=sys.stderr)
        return 2
    result = convert(args[0])
    written = write_jsonl(result.events, args[1])
    for rejection in result.rejected:
        print(f"  line {rejection.line}: {rejection.reason}", file=sys.stderr)
    print(f"{result.calls:,} calls -> {written:,} events in {args[1]}; {len(result.rejected)} rows rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one 1-minute window of one channel x queue x priority holds: the measure columns of a
partial row (counts and the raw value lists that exact means and percentiles need), and `Measures`,
their values for one window key (one contact's contribution, or a window's total)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW_MS = 60_000

WindowKey = tuple[int, str, str, int]  # (window start ms, channel, queue, priority)
DimKey = tuple[str, str, int]  # (channel, queue, priority)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    ch_type: str
    comment: str


COUNT_COLUMNS: tuple[Column, ...] = (
    Column("offered", "UInt32", "Queue legs started (`queued`) in the window, legs"),
    Column("answered", "UInt32", "Queue legs answered (`agent_assigned` while waiting), legs"),
    Column("answered_within_sl", "UInt32", "Answered legs with wait <= sl_threshold_seconds, legs"),
    Column("abandoned", "UInt32", "Queue legs abandoned while waiting, short abandons included, legs"),
    Column("short_abandoned", "UInt32", "Queue abandons with wait < short_abandon_seconds, legs"),
    Column("removed_within_sl", "UInt32", "Legs answered or abandoned with wait <= sl_threshold_seconds, legs"),
    Column("transfers", "UInt32", "`transferred` events, count"),
    Column("bot_contained", "UInt32", "Contacts contained by the bot (contact level), contacts"),
    Column("bot_handoffs", "UInt32", "Contacts the bot handed to a human queue, contacts"),
    Column("ivr_zero_outs", "UInt32", "`ivr_zero_out` events, count"),
    Column("resolved", "UInt32", "Resolutions (`resolved` of a contact not already resolved), count"),
    Column("first_contact_resolved", "UInt32", "Contacts ended resolved with no reopen, at `ended`, contacts"),
    Column("csat_responses", "UInt32", "CSAT answers, count"),
    Column("csat_satisfied", "UInt32", "CSAT answers scoring 4 or 5, count"),
    Column("ces_responses", "UInt32", "CES answers, count"),
    Column("ces_score_sum", "UInt32", "Sum of CES scores (1-7), points"),
    Column("nps_responses", "UInt32", "NPS answers, count"),
    Column("nps_promoters", "UInt32", "NPS answers scoring 9-10, count"),
    Column("nps_detractors", "UInt32", "NPS answers scoring 0-6, count"),
)
LIST_COLUMNS: tuple[Column, ...] = (
    Column("answer_waits", "Array(Float64)", "Wait of each answered leg (queued -> agent_assigned), seconds"),
    Column("first_response_times", "Array(Float64)", "First response time of each contact, seconds"),
    Column("next_response_times", "Array(Float64)", "Each next response time, seconds"),
    Column("handle_times", "Array(Float64)", "Handle time (talk incl. hold + ACW) of each ended contact, seconds"),
)
COUNT_NAMES: tuple[str, ...] = tuple(c.name for c in COUNT_COLUMNS)
LIST_NAMES: tuple[str, ...] = tuple(c.name for c in LIST_COLUMNS)


def window_of(epoch_ms: int) -> int:
    """Start (epoch ms) of the 1-minute window holding `epoch_ms`."""
    return epoch_ms - epoch_ms % WINDOW_MS


@dataclass(slots=True)
class Measures:
    """Counts and value lists of one window key (one contact's contribution, or a window's total)."""

    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def value(self, name: str, v: float) -> None:
        self.values.setdefault(name, []).append(v)

    def add(self, other: Measures) -> None:
        counts, values = self.counts, self.values
        for name, n in other.counts.items():
            counts[name] = counts.get(name, 0) + n
        for name, vs in other.values.items():
            found = values.get(name)
            if found is None:
                values[name] = list(vs)
            else:
                found.extend(vs)

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(self.values.values())

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "values": {k: list(v) for k, v in self.values.items()}}

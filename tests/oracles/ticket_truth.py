"""Ticket oracle: per-contact ticket facts and the windowed ticket KPIs a run must produce, from the
simulator's truth contact records, written from the documented rules (`pipeline/kpi/facts.py`,
`pipeline/kpi/tickets.py`, `schemas/clickhouse/0009_contact_facts.sql`) without importing them.

From the truth (times epoch ms):
  reopen_count, first/final resolution
                resolutions[] and reopened_at[] replayed in time order: a resolution counts when
                the contact is not resolved, a reopen when it is. First = first counted resolution;
                final = last counted resolution while the contact is resolved at the end.
  ttr_*         (resolution - started_at) / 1000.
  queue at t    the queue of the latest leg queued at or before t ("" before any leg); priority
                and segment are the contact's (the simulator never changes them).
  waits         waiting_on_customer[] spans with waiting_reasons[] (the simulator never switches
                a reason within a wait); closed spans summed per reason; an open one is `waiting_now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.oracles import contact_records, ms_of


@dataclass(frozen=True)
class TicketFacts:
    contact_id: str
    channel: str
    started: int
    ended: int | None
    priority: int
    segment: str
    first_queue: str
    transfers: int
    resolution_count: int
    reopen_count: int
    first_resolved: int | None
    final_resolved: int | None
    counted_resolutions: tuple[int, ...]
    counted_reopens: tuple[int, ...]
    first_response_queue: str
    first_resolution_queue: str
    resolution_queue: str
    waiting_ms_by_reason: Mapping[str, int]
    waiting_now: str
    legs: tuple[tuple[int, str], ...]  # (queued ms, queue)

    @property
    def ttr_first_seconds(self) -> float | None:
        return None if self.first_resolved is None else (self.first_resolved - self.started) / 1000

    @property
    def ttr_final_seconds(self) -> float | None:
        return None if self.final_resolved is None else (self.final_resolved - self.started) / 1000

    def queue_at(self, t: int) -> str:
        found = ""
        for queued, queue in self.legs:
            if queued <= t:
                found = queue
        return found

    def resolved_at(self, instant: int) -> bool:
        """In the resolved state just before `instant` (its last counted change before it was a resolution)."""
        changes = sorted([(t, 1) for t in self.counted_resolutions] + [(t, 0) for t in self.counted_reopens])
        state = False
        for t, is_resolution in changes:
            if t < instant:
                state = bool(is_resolution)
        return state


def ticket_facts(record: Mapping[str, Any]) -> TicketFacts:
    started = ms_of(record["started_at"])
    assert started is not None
    changes = sorted([(ms_of(t), 1) for t in record["resolutions"]] + [(ms_of(t), 0) for t in record["reopened_at"]])
    resolved = False
    resolutions: list[int] = []
    reopens: list[int] = []
    for t, is_resolution in changes:
        assert t is not None
        if is_resolution and not resolved:
            resolved = True
            resolutions.append(t)
        elif not is_resolution and resolved:
            resolved = False
            reopens.append(t)
    legs = tuple((ms_of(leg["queued_at"]) or 0, str(leg["queue"])) for leg in record["legs"])

    def queue_at(t: int | None) -> str:
        if t is None:
            return ""
        return next((q for queued, q in reversed(legs) if queued <= t), "")

    reasons = record.get("waiting_reasons") or ["customer"] * len(record["waiting_on_customer"])
    waiting: dict[str, int] = {}
    waiting_now = ""
    for (a, b), reason in zip(record["waiting_on_customer"], reasons, strict=True):
        start, end = ms_of(a), ms_of(b)
        assert start is not None
        if end is None:
            waiting_now = reason
        else:
            waiting[reason] = waiting.get(reason, 0) + end - start
    final = resolutions[-1] if resolved else None
    return TicketFacts(
        contact_id=record["contact_id"],
        channel=record["channel"],
        started=started,
        ended=ms_of(record["ended_at"]),
        priority=int(record["priority"]),
        segment=record["segment"] or "",
        first_queue=legs[0][1] if legs else "",
        transfers=int(record["transfers"]),
        resolution_count=len(resolutions),
        reopen_count=len(reopens),
        first_resolved=resolutions[0] if resolutions else None,
        final_resolved=final,
        counted_resolutions=tuple(resolutions),
        counted_reopens=tuple(reopens),
        first_response_queue=queue_at(ms_of(record["first_response_at"])),
        first_resolution_queue=queue_at(resolutions[0] if resolutions else None),
        resolution_queue=queue_at(final),
        waiting_ms_by_reason=waiting,
        waiting_now=waiting_now,
        legs=legs,
    )


def ticket_oracle(records: Iterable[Any]) -> dict[str, TicketFacts]:
    """Facts of every contact record, by contact id."""
    return {r["contact_id"]: ticket_facts(r) for r in contact_records(records)}


COMPARED_FACT_COLUMNS: tuple[str, ...] = (
    "channel",
    "priority",
    "segment",
    "first_queue",
    "transfers",
    "resolution_count",
    "reopen_count",
    "resolved",
    "ttr_first_seconds",
    "ttr_final_seconds",
    "first_response_queue",
    "first_resolution_queue",
    "resolution_queue",
    "resolution_segment",
    "waiting_ms_by_reason",
    "waiting_now",
)


def expected_row(f: TicketFacts) -> dict[str, Any]:
    """The `contact_facts` columns of COMPARED_FACT_COLUMNS, from the oracle."""
    return {
        "channel": f.channel,
        "priority": f.priority,
        "segment": f.segment,
        "first_queue": f.first_queue,
        "transfers": f.transfers,
        "resolution_count": f.resolution_count,
        "reopen_count": f.reopen_count,
        "resolved": int(f.final_resolved is not None),
        "ttr_first_seconds": f.ttr_first_seconds,
        "ttr_final_seconds": f.ttr_final_seconds,
        "first_response_queue": f.first_response_queue,
        "first_resolution_queue": f.first_resolution_queue,
        "resolution_queue": f.resolution_queue,
        "resolution_segment": f.segment if f.final_resolved is not None else "",
        "waiting_ms_by_reason": dict(f.waiting_ms_by_reason),
        "waiting_now": f.waiting_now,
    }


# ---------------------------------------------------------------------------------------------
# Windowed ticket KPIs

TicketKey = tuple[int, str, str, int, str]  # (window start ms, channel, queue, priority, segment)
WINDOW_COUNTS = ("created", "first_resolved", "final_resolved", "reopened_resolved", "backlog_end")
WINDOW_LISTS = ("ttr_first_times", "ttr_final_times", "backlog_ages")


def ticket_windows_oracle(facts: Iterable[TicketFacts], minutes: int, until_ms: int) -> dict[TicketKey, dict[str, Any]]:
    """Window columns of every non-empty window (`minutes` wide, epoch-aligned) ending at or before
    `until_ms`. created at the start [first queue]; first/final resolution at their instants [queue
    at them]; backlog at each window end E: started before E, not ended before E, not resolved just
    before E, age E - start [queue of the latest leg queued before E]. Priority and segment: the
    contact's."""
    width = minutes * 60_000
    out: dict[TicketKey, dict[str, Any]] = {}

    def add(t: int, f: TicketFacts, queue: str, count: str, values: str | None = None, value: float = 0.0) -> None:
        start = t - t % width
        if start + width > until_ms:
            return
        row = out.setdefault(
            (start, f.channel, queue, f.priority, f.segment),
            {**{c: 0 for c in WINDOW_COUNTS}, **{v: [] for v in WINDOW_LISTS}},
        )
        row[count] += 1
        if values is not None:
            row[values].append(value)

    for f in facts:
        add(f.started, f, f.first_queue, "created")
        if f.first_resolved is not None and f.ttr_first_seconds is not None:
            add(f.first_resolved, f, f.first_resolution_queue, "first_resolved", "ttr_first_times", f.ttr_first_seconds)
        if f.final_resolved is not None and f.ttr_final_seconds is not None:
            add(f.final_resolved, f, f.resolution_queue, "final_resolved", "ttr_final_times", f.ttr_final_seconds)
            if f.reopen_count:
                add(f.final_resolved, f, f.resolution_queue, "reopened_resolved")
        end = f.started - f.started % width + width
        while end <= until_ms and (f.ended is None or f.ended >= end):
            if not f.resolved_at(end):
                queue = next((q for queued, q in reversed(f.legs) if queued < end), "")
                add(end - width, f, queue, "backlog_end", "backlog_ages", (end - f.started) / 1000)
            end += width
    for row in out.values():
        for name in WINDOW_LISTS:
            row[name].sort()
    return dict(sorted(out.items()))


def compare_ticket_rows(
    expected: Mapping[Any, Mapping[str, Any]], actual: Mapping[Any, Mapping[str, Any]], columns: Iterable[str]
) -> list[str]:
    """Readable differences between oracle rows and pipeline rows keyed alike (facts by contact id,
    windows by TicketKey); a key on one side only is a difference."""
    names = tuple(columns)
    out = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if e is None or a is None:
            out.append(f"{key}: only in the {'pipeline' if e is None else 'oracle'}")
            continue
        out += [f"{key}: {c}: oracle {e[c]!r} != pipeline {a[c]!r}" for c in names if e[c] != a[c]]
    return out

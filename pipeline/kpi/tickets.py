"""Windowed ticket KPIs, defined once: per hour and per UTC day x channel x queue x priority x segment,
from per-contact facts (`ContactFacts`, or the `contact_facts` view in ClickHouse). The Python
evaluation (`ticket_windows` + `ticket_kpi_values`) and the ClickHouse views `ticket_kpi_hour` /
`ticket_kpi_day` (`render_ticket_ddl`, schemas/clickhouse/0010_ticket_kpis.sql) use the same `Kpi`
expressions over the same window columns.

Window columns and where each measure lands (dimensions in brackets):
* created: a contact, in the window of its start [queue of its first leg ("" if never queued),
  priority of its first event, the contact's segment].
* first_resolved, ttr_first_times: the first counted resolution, in its window [queue and priority of
  its Stamp, segment at it]; the value is the time to first resolution (seconds).
* final_resolved, ttr_final_times, reopened_resolved: the final resolution of a contact resolved now,
  in its window [dims at it]; reopened_resolved counts those with at least one reopen.
* backlog_end, backlog_ages (views: up to the later of now() and the latest stored event): tickets
  open at the window end instant E: started before E, not ended
  before E (`ended` at E still counts, like a queue leg removed at E) and not resolved just before E
  (the last resolution/reopen before E was not a resolution); age = E - start (seconds) [queue and
  priority of the latest leg queued before E (else "" and the first event's priority), the contact's
  segment].
Value lists are sorted; percentiles are `quantileExact` (see `definitions.percentile`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.kpi.definitions import Col, Kpi, Length, Mean, Quantile, Ratio, Signed
from pipeline.kpi.facts import ContactFacts
from pipeline.kpi.measures import Column
from pipeline.resources import data_path

DDL_PATH = data_path("schemas", "clickhouse", "0010_ticket_kpis.sql")
HOUR_MS = 3_600_000
GRAINS: dict[str, int] = {"ticket_kpi_hour": 60, "ticket_kpi_day": 1440}  # view -> minutes

TICKET_COUNTS: tuple[Column, ...] = (
    Column("created", "UInt64", "Contacts started in the window"),
    Column("first_resolved", "UInt64", "First resolutions in the window"),
    Column("final_resolved", "UInt64", "Final resolutions (contact resolved now) in the window"),
    Column("reopened_resolved", "UInt64", "Final resolutions in the window of contacts reopened at least once"),
    Column("backlog_end", "UInt64", "Open tickets at the window end"),
)
TICKET_LISTS: tuple[Column, ...] = (
    Column("ttr_first_times", "Array(Float64)", "Time to first resolution of each first resolution, seconds"),
    Column("ttr_final_times", "Array(Float64)", "Time to final resolution of each final resolution, seconds"),
    Column("backlog_ages", "Array(Float64)", "Age (end - start) of each open ticket at the window end, seconds"),
)
COUNT_NAMES = tuple(c.name for c in TICKET_COUNTS)
LIST_NAMES = tuple(c.name for c in TICKET_LISTS)

TicketKey = tuple[int, str, str, int, str]  # (window start ms, channel, queue, priority, segment)


def _stats(prefix: str, column: str, what: str) -> tuple[Kpi, ...]:
    return (
        Kpi(f"{prefix}_mean_seconds", "s", f"Mean {what}.", Mean(column)),
        Kpi(f"{prefix}_p50_seconds", "s", f"Median {what}: quantileExact(0.5) of {column}.", Quantile(column, 0.5)),
        Kpi(
            f"{prefix}_p90_seconds",
            "s",
            f"90th percentile {what}: quantileExact(0.9) of {column}.",
            Quantile(column, 0.9),
        ),
    )


TICKET_KPIS: tuple[Kpi, ...] = (
    Kpi("created", "tickets", "Tickets created = contacts started in the window.", Col("created")),
    Kpi(
        "resolved",
        "tickets",
        "Tickets resolved = final resolutions in the window (of tickets resolved now).",
        Col("final_resolved"),
    ),
    Kpi(
        "created_minus_resolved",
        "tickets",
        "Created - resolved in the window (> 0: the backlog grows).",
        Signed(((1, "created"), (-1, "final_resolved"))),
    ),
    Kpi("first_resolved", "tickets", "First resolutions in the window.", Col("first_resolved")),
    *_stats("ttr_first", "ttr_first_times", "time to first resolution (start -> first resolution)"),
    *_stats("ttr_final", "ttr_final_times", "time to final resolution (start -> last resolution, resolved now)"),
    Kpi(
        "reopened_share",
        "fraction",
        "Reopened share = final resolutions of tickets reopened at least once / final resolutions.",
        Ratio(Col("reopened_resolved"), Col("final_resolved")),
    ),
    Kpi("backlog", "tickets", "Open tickets at the window end (not ended, not resolved).", Length("backlog_ages")),
    Kpi(
        "backlog_age_p50_seconds",
        "s",
        "Median age of the open tickets at the window end: quantileExact(0.5) of backlog_ages.",
        Quantile("backlog_ages", 0.5),
    ),
    Kpi(
        "backlog_age_p90_seconds",
        "s",
        "90th percentile age of the open tickets at the window end: quantileExact(0.9) of backlog_ages.",
        Quantile("backlog_ages", 0.9),
    ),
    Kpi(
        "backlog_age_max_seconds",
        "s",
        "Age of the oldest open ticket at the window end.",
        Quantile("backlog_ages", 1.0),
    ),
)


@dataclass(slots=True)
class TicketWindow:
    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, count: str, value_list: str | None = None, value: float = 0.0) -> None:
        self.counts[count] = self.counts.get(count, 0) + 1
        if value_list is not None:
            self.values.setdefault(value_list, []).append(value)

    def columns(self) -> dict[str, Any]:
        out: dict[str, Any] = {n: self.counts.get(n, 0) for n in COUNT_NAMES}
        out.update({n: sorted(self.values.get(n, ())) for n in LIST_NAMES})
        return out


def _open_at(f: ContactFacts, end_ms: int) -> bool:
    if f.started_ms >= end_ms or (f.ended_ms is not None and f.ended_ms < end_ms):
        return False
    changes = sorted([(s.at_ms, 1) for s in f.resolutions] + [(s.at_ms, 0) for s in f.reopens])
    resolved = False
    for t, is_resolution in changes:
        if t < end_ms:
            resolved = bool(is_resolution)
    return not resolved


def ticket_windows(facts: Iterable[ContactFacts], minutes: int, until_ms: int) -> dict[TicketKey, dict[str, Any]]:
    """Window columns of every non-empty window (`minutes` wide, aligned to the epoch) that ends at
    or before `until_ms`, by (window start ms, channel, queue, priority, segment)."""
    width = minutes * 60_000
    windows: dict[TicketKey, TicketWindow] = {}

    def at(t: int, channel: str, queue: str, priority: int, segment: str) -> TicketWindow | None:
        start = t - t % width
        if start + width > until_ms:
            return None
        key = (start, channel, queue, priority, segment)
        window = windows.get(key)
        if window is None:
            window = windows[key] = TicketWindow()
        return window

    for f in facts:
        first_queue = f.legs[0].queue if f.legs else ""
        if (w := at(f.started_ms, f.channel, first_queue, f.priority, f.segment)) is not None:
            w.add("created")
        resolutions = (
            ("first_resolved", "ttr_first_times", f.first_resolution, f.first_resolution_dims, f.ttr_first_seconds),
            ("final_resolved", "ttr_final_times", f.final_resolution, f.resolution_dims, f.ttr_final_seconds),
        )
        for count, values, stamp, dims, seconds in resolutions:
            if stamp is None or dims is None or seconds is None:
                continue
            if (w := at(stamp.at_ms, f.channel, dims.queue, dims.priority, dims.segment)) is not None:
                w.add(count, values, seconds)
                if count == "final_resolved" and f.reopen_count:
                    w.add("reopened_resolved")
        end = f.started_ms - f.started_ms % width + width
        last = until_ms if f.ended_ms is None else min(until_ms, f.ended_ms - f.ended_ms % width + width)
        while end <= last:
            if _open_at(f, end):
                leg = next((leg for leg in reversed(f.legs) if leg.queued_ms < end), None)
                queue, priority = (leg.queue, leg.priority) if leg is not None else ("", f.priority)
                w = at(end - width, f.channel, queue, priority, f.segment)
                assert w is not None
                w.add("backlog_end", "backlog_ages", (end - f.started_ms) / 1000.0)
            end += width
    return {k: w.columns() for k, w in sorted(windows.items())}


def ticket_kpi_values(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Every ticket KPI of one window row (from `ticket_windows` or read from a view)."""
    return {k.name: k.eval(row) for k in TICKET_KPIS}


# ---------------------------------------------------------------------------------------------
# The ClickHouse views


def _view(view: str, minutes: int) -> str:
    width = f"INTERVAL {minutes} MINUTE"
    bucket = "toStartOfHour({t})" if minutes == 60 else "toStartOfDay({t})"
    step = "3600000" if minutes == 60 else "86400000"
    empty = "[] :: Array(Float64)"

    def part(select: str, counts: dict[str, str], lists: dict[str, str], tail: str) -> str:
        cols = [f"{counts.get(c, '0')} AS {c}" for c in COUNT_NAMES]
        cols += [f"{lists.get(c, empty)} AS {c}" for c in LIST_NAMES]
        return f"    SELECT {select}, {', '.join(cols)}\n    {tail}"

    created = part(
        f"{bucket.format(t='started_at')} AS window_start, channel, first_queue AS queue, priority, segment",
        {"created": "1"},
        {},
        "FROM contact_facts",
    )
    first = part(
        f"{bucket.format(t='assumeNotNull(first_resolved_at)')} AS window_start, channel, first_resolution_queue AS queue,"
        " assumeNotNull(first_resolution_priority) AS priority, first_resolution_segment AS segment",
        {"first_resolved": "1"},
        {"ttr_first_times": "[assumeNotNull(ttr_first_seconds)]"},
        "FROM contact_facts WHERE first_resolved_at IS NOT NULL",
    )
    final = part(
        f"{bucket.format(t='assumeNotNull(final_resolved_at)')} AS window_start, channel, resolution_queue AS queue,"
        " assumeNotNull(resolution_priority) AS priority, resolution_segment AS segment",
        {"final_resolved": "1", "reopened_resolved": "toUInt64(reopen_count > 0)"},
        {"ttr_final_times": "[assumeNotNull(ttr_final_seconds)]"},
        "FROM contact_facts WHERE final_resolved_at IS NOT NULL",
    )
    backlog = part(
        "fromUnixTimestamp64Milli(end_ms - " + step + ", 'UTC') AS window_start, channel,"
        " if(leg.1 = 0, '', leg.2) AS queue, if(leg.1 = 0, priority, leg.3) AS priority, segment",
        {"backlog_end": "1"},
        {"backlog_ages": "[(end_ms - start_ms) / 1000]"},
        "FROM\n    (\n"
        "        SELECT *, toUnixTimestamp64Milli(started_at) AS start_ms,\n"
        "            greatest(now64(3), (SELECT max(occurred_at) FROM interaction_events)) AS as_of,\n"
        "            arraySort(arrayConcat(arrayMap(t -> (t, 1), resolved_ms), arrayMap(t -> (t, 0), reopened_ms))) AS changes\n"
        "        FROM contact_facts\n"
        "    )\n"
        "    ARRAY JOIN arrayFilter(\n"
        "        end -> end > start_ms AND (ended_at IS NULL OR toUnixTimestamp64Milli(assumeNotNull(ended_at)) >= end)\n"
        "            AND arrayLast(c -> c.1 < end, changes).2 != 1,\n"
        f"        range(intDiv(start_ms, {step}) * {step} + {step},\n"
        "              least(toUnixTimestamp64Milli(ifNull(ended_at, as_of)), toUnixTimestamp64Milli(as_of)) + 1,\n"
        f"              {step})) AS end_ms\n"
        "    ARRAY JOIN [arrayLast(l -> l.1 < end_ms, legs)] AS leg",
    )
    union = "\n    UNION ALL\n".join((created, first, final, backlog))
    inner = [
        "window_start",
        "channel",
        "queue",
        "priority",
        "segment",
        *(f"sum({c}) AS {c}" for c in COUNT_NAMES),
        *(f"arraySort(groupArrayArray({c})) AS {c}" for c in LIST_NAMES),
    ]
    outer = [
        "window_start",
        f"window_start + {width} AS window_end",
        "channel",
        "queue",
        "priority",
        "segment",
        *COUNT_NAMES,
        *LIST_NAMES,
        *(f"{k.sql()} AS {k.name}" for k in TICKET_KPIS if not k.is_column),
    ]
    return (
        f"-- {view}: ticket KPIs per {'hour' if minutes == 60 else 'UTC day'} x channel x queue x priority x"
        " segment, from contact_facts\n"
        "-- (as of the events stored now; backlog rows run up to now(), or the latest event when later).\n"
        f"CREATE VIEW IF NOT EXISTS {view} AS\n"
        "SELECT\n    " + ",\n    ".join(outer) + "\nFROM\n(\n"
        "SELECT\n    " + ",\n    ".join(inner) + "\nFROM\n(\n" + union + "\n)\n"
        "GROUP BY window_start, channel, queue, priority, segment\n);"
    )


def render_ticket_ddl() -> str:
    """The full text of `schemas/clickhouse/0010_ticket_kpis.sql`."""
    docs = ["-- Ticket KPIs (definitions in pipeline/kpi/tickets.py):"]
    docs += [f"--   {k.name} [{k.unit}]: {k.doc.rstrip('.')}." for k in TICKET_KPIS]
    parts = [
        "-- GENERATED by `python -m pipeline.kpi.tickets` from pipeline/kpi/tickets.py. Do not edit by hand.",
        "\n".join(docs),
        *(_view(view, minutes) for view, minutes in GRAINS.items()),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_ticket_ddl()
    if args and args[0] == "--check":
        return 0 if DDL_PATH.exists() and DDL_PATH.read_text() == text else 1
    DDL_PATH.write_text(text)
    print(f"wrote {DDL_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

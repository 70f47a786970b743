"""Acceptance, end to end, for ticket work: three weeks of the simulator's ticket-desk traffic
(`simulate --profile tickets`: long e-mail/social threads, waits on customer, vendor and team,
transfers, reopens, quiet weekends), delivered with duplicates and late messages through the real
broker to a real ingest worker. Read back through the worker's read-only `/sql`, the per-ticket
facts (`contact_facts`) and the hourly and daily ticket KPIs (`ticket_kpi_hour`, `ticket_kpi_day`)
equal the independent oracle computed from the simulator's truth (tests/oracles/ticket_truth.py),
column by column and KPI by KPI; every ticket-dashboard query returns its columns and rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.dashboards import queries as q
from pipeline.kpi.tickets import COUNT_NAMES, GRAINS, LIST_NAMES, TICKET_KPIS, ticket_kpi_values
from pipeline.simulator.truth import read_truth
from tests.oracles import ms_of
from tests.oracles.ticket_truth import (
    COMPARED_FACT_COLUMNS,
    compare_ticket_rows,
    expected_row,
    ticket_oracle,
    ticket_windows_oracle,
)
from tests.support.macros import ALL, TimeRange, Variable, expand

from .conftest import Workspace, wait_until

pytestmark = pytest.mark.integration

START = "2026-03-02T00:00:00Z"
DURATION = "21d"
RATE = "3"
FAULTS = ("--duplicate-rate", "0.03", "--late-rate", "0.03", "--max-lateness", "120")
SHOW = 15


def _facts_query() -> str:
    columns = [f"toJSONString({c})" if c == "waiting_ms_by_reason" else c for c in COMPARED_FACT_COLUMNS]
    return "SELECT contact_id, " + ", ".join(columns) + " FROM contact_facts ORDER BY contact_id"


def _window_query(view: str, until_ms: int) -> tuple[str, list[str]]:
    names = list(dict.fromkeys((*COUNT_NAMES, *LIST_NAMES, *(k.name for k in TICKET_KPIS))))
    sql = (
        "SELECT toUnixTimestamp(window_start) * 1000, channel, queue, priority, segment, "
        + ", ".join(f"`{n}`" for n in names)
        + f" FROM {view} WHERE window_end <= fromUnixTimestamp64Milli({until_ms}, 'UTC')"
    )
    return sql, names


def test_ticket_facts_and_kpis_equal_the_truth(workspace: Workspace) -> None:
    worker = workspace.start_worker(role="ingest")
    truth_path = workspace.path / "truth.jsonl"
    workspace.cli(
        "simulate", "--profile", "tickets", "--seed", "5", "--start", START, "--duration", DURATION,
        "--rate", RATE, "--speed", "0", *FAULTS, "--truth", truth_path, "--quiet",
    )  # fmt: skip
    records = read_truth(truth_path)
    summary = next(r for r in records if r["kind"] == "summary")
    horizon = ms_of(summary["as_of"])
    assert horizon is not None
    wait_until(
        lambda: (
            worker.sql("SELECT uniqExact(event_id) FROM interaction_events")[0][0] == summary["distinct_valid_events"]
        ),
        300,
        "every ticket event stored",
    )
    oracle = ticket_oracle(records)

    # per-ticket facts
    actual: dict[str, dict[str, Any]] = {}
    for row in worker.sql(_facts_query()):
        named = dict(zip(COMPARED_FACT_COLUMNS, row[1:], strict=True))
        named["waiting_ms_by_reason"] = {k: int(v) for k, v in json.loads(named["waiting_ms_by_reason"]).items()}
        actual[str(row[0])] = named
    expected = {cid: expected_row(f) for cid, f in oracle.items()}
    diffs = compare_ticket_rows(expected, actual, COMPARED_FACT_COLUMNS)
    print(f"\n{len(oracle)} tickets, {summary['distinct_valid_events']} events, {summary['duplicates']} duplicates")
    assert len(actual) > 300 and sum(f.reopen_count >= 2 for f in oracle.values()) > 5
    assert not diffs, f"contact_facts: {len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])

    # hourly and daily ticket KPIs
    for view, minutes in GRAINS.items():
        want = ticket_windows_oracle(oracle.values(), minutes, horizon)
        sql, names = _window_query(view, horizon)
        got: dict[Any, dict[str, Any]] = {}
        kpis: dict[Any, dict[str, Any]] = {}
        for row in worker.sql(sql):
            key = (int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]))
            named = dict(zip(names, row[5:], strict=True))
            got[key] = {c: int(named[c]) for c in COUNT_NAMES} | {c: [float(v) for v in named[c]] for c in LIST_NAMES}
            kpis[key] = {k.name: named[k.name] for k in TICKET_KPIS}
        diffs = compare_ticket_rows(want, got, (*COUNT_NAMES, *LIST_NAMES))
        for key, columns in want.items():
            for name, value in ticket_kpi_values(columns).items():
                seen = kpis.get(key, {}).get(name)
                if (value is None) != (seen is None) or (
                    value is not None and seen is not None and abs(value - float(seen)) > 1e-9 * max(1.0, abs(value))
                ):
                    diffs.append(f"{key}: {name}: oracle {value!r} != view {seen!r}")
        totals = {c: sum(r[c] for r in want.values()) for c in COUNT_NAMES}
        print(f"{view}: {len(want)} windows, totals {totals}")
        assert totals["final_resolved"] > 200 and totals["backlog_end"] > 50
        assert not diffs, f"{view}: {len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])

    # the ticket dashboard's queries on these rows
    time_range = TimeRange(
        datetime(2026, 3, 2, tzinfo=UTC), datetime.fromtimestamp(horizon / 1000, UTC), interval_seconds=3600
    )
    selected = {name: Variable([ALL], q.ALL_VALUE) for name in ("channel", "queue", "priority", "segment")}
    for query in q.TICKET_QUERIES:
        request = worker.sql(expand(query.sql, time_range, selected))
        assert request, f"{query.key}: no rows for three weeks of tickets"
        assert len(request[0]) == len(query.columns), query.key

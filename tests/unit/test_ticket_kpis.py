"""Ticket facts and windowed ticket KPIs on the simulator's ticket traffic, against the independent
ticket oracle (tests/oracles/ticket_truth.py, from the simulator's truth):

* `contact_facts` in Python (pipeline/kpi/facts.py) and the `contact_facts` ClickHouse view, on the
  rows the ingest path writes (`event_row`, with redelivered duplicates), equal the oracle per
  contact: reopen count, first/final time to resolution, waits by reason, queue at first response
  and at resolution.
* `ticket_windows` (Python) and the `ticket_kpi_hour` / `ticket_kpi_day` views equal the oracle's
  windows (created, resolutions, TTR lists, reopened, backlog and ages), and every KPI the view
  shows equals `ticket_kpi_values` of the oracle's columns.
* The generated DDL (0010_ticket_kpis.sql) and the README's ticket KPI table match the definitions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.events.models import EventBase
from pipeline.kpi import docs
from pipeline.kpi.facts import ContactFacts, contact_facts
from pipeline.kpi.tickets import (
    COUNT_NAMES,
    DDL_PATH,
    GRAINS,
    LIST_NAMES,
    TICKET_KPIS,
    render_ticket_ddl,
    ticket_kpi_values,
    ticket_windows,
)
from pipeline.simulator.model import DAY, SimConfig, Simulation
from pipeline.store import clickhouse as store
from pipeline.store.clickhouse import connect, insert_rows
from pipeline.store.migrations import migrate
from pipeline.store.rows import EVENT_COLUMNS, event_row
from pipeline.times import to_ms
from tests.oracles.ticket_truth import (
    COMPARED_FACT_COLUMNS,
    TicketFacts,
    compare_ticket_rows,
    expected_row,
    ticket_oracle,
    ticket_windows_oracle,
)

START = to_ms(datetime(2026, 3, 2, tzinfo=UTC))  # a Monday
SHOW = 10


@dataclass
class TicketRun:
    horizon_ms: int
    events: list[EventBase]
    oracle: dict[str, TicketFacts]
    facts: dict[str, ContactFacts]


@pytest.fixture(scope="module")
def run() -> TicketRun:
    sim = Simulation(SimConfig(seed=21, start_ms=START, duration_ms=30 * DAY, rate=4.0, profile="tickets"))
    events = [event for _, event in sim.run()]
    by_contact: dict[str, list[EventBase]] = defaultdict(list)
    for event in events:
        by_contact[event.contact_id].append(event)
    facts = {cid: contact_facts(evs) for cid, evs in by_contact.items()}
    return TicketRun(sim.as_of_ms, events, ticket_oracle(c.as_dict() for c in sim.contacts), facts)


@pytest.fixture(scope="module")
def db(clickhouse: Client, run: TicketRun) -> Iterator[Client]:
    """A database of its own on the session's embedded ClickHouse, migrated, holding the run's
    events as the ingest path writes them, 5 % of them twice (redeliveries collapse under FINAL)."""
    dsn = next(d for (d, _), c in store._clients.items() if c is clickhouse)
    client = connect(dsn, "touchline_tickets")
    migrate(client)
    rng = random.Random(21)
    ingested = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [event_row(e, "touchline.interactions.email", 0, i, ingested) for i, e in enumerate(run.events)]
    rows += [row for row in rows if rng.random() < 0.05]
    insert_rows(client, "interaction_events", EVENT_COLUMNS, rows)
    yield client
    client.command("DROP DATABASE IF EXISTS touchline_tickets")


def python_row(f: ContactFacts) -> dict[str, Any]:
    first_reply, first_res, final = f.first_response_dims, f.first_resolution_dims, f.resolution_dims
    return {
        "channel": f.channel,
        "priority": f.priority,
        "segment": f.segment,
        "first_queue": f.legs[0].queue if f.legs else "",
        "transfers": len(f.transfers),
        "resolution_count": len(f.resolutions),
        "reopen_count": f.reopen_count,
        "resolved": int(f.final_resolution is not None),
        "ttr_first_seconds": f.ttr_first_seconds,
        "ttr_final_seconds": f.ttr_final_seconds,
        "first_response_queue": first_reply.queue if first_reply else "",
        "first_resolution_queue": first_res.queue if first_res else "",
        "resolution_queue": final.queue if final else "",
        "resolution_segment": final.segment if final else "",
        "waiting_ms_by_reason": f.waiting_ms_by_reason(),
        "waiting_now": f.waiting_now or "",
    }


def test_ticket_traffic_exercises_every_fact(run: TicketRun) -> None:
    oracle = run.oracle.values()
    assert sum(1 for f in oracle if f.reopen_count >= 2) > 10
    assert sum(1 for f in oracle if f.first_resolved is not None and f.final_resolved is None) > 10  # reopened, open
    assert sum(1 for f in oracle if f.first_response_queue != f.resolution_queue and f.final_resolved) > 50
    reasons = {r for f in oracle for r in f.waiting_ms_by_reason}
    assert reasons == {"customer", "vendor", "internal"}
    assert sum(1 for f in oracle if f.waiting_now) > 10


def test_contact_facts_equal_the_oracle(run: TicketRun) -> None:
    expected = {cid: expected_row(f) for cid, f in run.oracle.items()}
    actual = {cid: python_row(f) for cid, f in run.facts.items()}
    diffs = compare_ticket_rows(expected, actual, COMPARED_FACT_COLUMNS)
    assert not diffs, f"{len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])


def test_contact_facts_view_equals_the_oracle(db: Client, run: TicketRun) -> None:
    result = db.query("SELECT contact_id, " + ", ".join(COMPARED_FACT_COLUMNS) + " FROM contact_facts")
    actual = {str(row[0]): dict(zip(COMPARED_FACT_COLUMNS, row[1:], strict=True)) for row in result.result_rows}
    expected = {cid: expected_row(f) for cid, f in run.oracle.items()}
    diffs = compare_ticket_rows(expected, actual, COMPARED_FACT_COLUMNS)
    assert len(actual) == len(run.oracle) > 600
    assert not diffs, f"{len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])


def _view_windows(db: Client, view: str, until_ms: int) -> tuple[dict[Any, dict[str, Any]], dict[Any, dict[str, Any]]]:
    kpis = [k.name for k in TICKET_KPIS]
    columns = (*COUNT_NAMES, *LIST_NAMES, *kpis)
    result = db.query(
        "SELECT toUnixTimestamp(window_start) * 1000, channel, queue, priority, segment, "
        + ", ".join(f"`{c}`" for c in dict.fromkeys(columns))
        + f" FROM {view} WHERE window_end <= fromUnixTimestamp64Milli({until_ms}, 'UTC')"
    )
    names = list(dict.fromkeys(columns))
    rows: dict[Any, dict[str, Any]] = {}
    values: dict[Any, dict[str, Any]] = {}
    for row in result.result_rows:
        key = (int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]))
        named = dict(zip(names, row[5:], strict=True))
        rows[key] = {c: int(named[c]) for c in COUNT_NAMES} | {c: [float(v) for v in named[c]] for c in LIST_NAMES}
        values[key] = {k: named[k] for k in kpis}
    return rows, values


@pytest.mark.parametrize("view", list(GRAINS))
def test_ticket_windows_equal_the_oracle(db: Client, run: TicketRun, view: str) -> None:
    minutes = GRAINS[view]
    expected = ticket_windows_oracle(run.oracle.values(), minutes, run.horizon_ms)
    python = ticket_windows(run.facts.values(), minutes, run.horizon_ms)
    sql, sql_kpis = _view_windows(db, view, run.horizon_ms)
    columns = (*COUNT_NAMES, *LIST_NAMES)
    diffs = compare_ticket_rows(expected, python, columns)
    assert not diffs, f"python: {len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])
    diffs = compare_ticket_rows(expected, sql, columns)
    assert not diffs, f"{view}: {len(diffs)} mismatches:\n" + "\n".join(diffs[:SHOW])
    for key, columns_of in expected.items():
        want = ticket_kpi_values(columns_of)
        for name, value in want.items():
            got = sql_kpis[key][name]
            assert (value is None) == (got is None), (key, name, value, got)
            if value is not None:
                assert abs(value - got) <= 1e-9 * max(1.0, abs(value)), (key, name, value, got)
    totals = {c: sum(r[c] for r in expected.values()) for c in COUNT_NAMES}
    print(f"\n{view}: {len(expected)} windows, totals {totals}")
    assert totals["created"] > 600 and totals["final_resolved"] > 400 and totals["reopened_resolved"] > 20
    assert totals["backlog_end"] > 100
    assert any(v["created_minus_resolved"] < 0 for v in sql_kpis.values())  # signed, not wrapped


def test_generated_ticket_ddl_and_readme_table_are_current() -> None:
    assert DDL_PATH.read_text() == render_ticket_ddl(), "run `python -m pipeline.kpi.tickets`"
    readme = docs.README.read_text()
    assert docs.with_table(readme) == readme, "run `touchline generate`"
    for kpi in TICKET_KPIS:
        assert f"| `{kpi.name}` |" in readme

"""A 45-day ticket-desk backfill through the real broker and one worker: long e-mail and social
threads open for days to weeks (some silent for more than 30 days), waits on customers and vendors,
reopens, team transfers, quiet weekends, plus duplicates and late deliveries. Read as fast as the
worker can (a backfill), it must

* never block the event loop for more than a second (`touchline_loop_stall_max_seconds`), although
  a ticket waiting in queue for days is a backlog row per minute;
* give KPI windows and SLA breaches equal to the independent oracles (retention never drops a
  contact that a later event can still change).

Until session 30 a second worker replayed the same input and had to write the same rows (digests
of all columns); that took a third of the test's time. Replays giving the oracles' rows are what
test_analytics_recovery.py (a worker killed three times) and test_kpi_sla_e2e.py (two deployments)
assert on ordinary traffic.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import pytest

from tests.oracles import ms_of
from tests.support.kpi_sla import SHOW, compare_with_oracles, prepare, settle

from .conftest import Workspace

pytestmark = pytest.mark.integration

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:")
# 45 days still hold tickets silent for over 30 days (asserted). With its second replay this test
# took 213-300 s at 90 days (641 tickets), 146 s at 60 days (454) and 76-117 s at 45 days beside the
# other files; without it, 58 s alone at 45 days
SIMULATION = ("--profile", "tickets", "--start", "2026-01-05T00:00:00Z", "--duration", "45d", "--rate", "1")


def longest_silence_days(contact: Any) -> float:
    """The longest gap between the moments the truth records for a ticket, in days."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and ISO.match(value):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(contact)
    moments = sorted(ms_of(v) or 0 for v in found)
    return max((b - a for a, b in pairwise(moments)), default=0) / 86_400_000


def test_forty_five_days_of_tickets_replay_exactly_without_stalling_the_loop(workspace: Workspace) -> None:
    # the minute view of 45 days is ~240k windows: the test reads it whole through /sql
    workspace.env.update(TOUCHLINE_SQL_MAX_RESULT_ROWS="5000000", TOUCHLINE_SQL_MAX_RESULT_BYTES="2000000000")
    workspace.env["TOUCHLINE_SQL_MAX_EXECUTION_SECONDS"] = "300"
    run = prepare(workspace, *SIMULATION)
    silent = [c for c in run.contacts if longest_silence_days(c) > 30]
    print(f"\n{len(run.contacts)} tickets, {run.expected_messages} messages, {len(silent)} silent > 30 days")
    assert silent, "the backfill must hold tickets silent for more than 30 days"

    worker = workspace.start_worker()
    watermark_ms = settle(run, worker, worker, final_timeout=900)
    # the backfill's stalls: read before the oracle comparison, whose reads of all the windows
    # through /sql (row limit raised 50-fold for it) are the test's, not the backfill's (a 90-day
    # run beside another pipeline on the same two cores logged a 1.02 s stall a minute before the
    # worker was stopped, while the test was reading ~480k windows)
    stall = worker.metric("touchline_loop_stall_max_seconds")
    diffs = compare_with_oracles(worker, run.contacts, run.horizon_ms, watermark_ms)
    stall_after_reads = worker.metric("touchline_loop_stall_max_seconds")
    worker.stop()
    print(
        f"longest event-loop stall: {stall:.3f} s in the backfill, {stall_after_reads:.3f} s after the oracle's reads"
    )
    assert not diffs, f"{len(diffs)} mismatches, worker {SHOW}:\n" + "\n".join(diffs[:SHOW])
    assert stall <= 1.0, f"the event loop was blocked for {stall:.2f} s"

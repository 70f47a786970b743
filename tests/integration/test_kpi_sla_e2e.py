"""Acceptance, end to end: a seeded simulation with duplicates and late deliveries goes through the
real broker and worker; every KPI window in ClickHouse (`kpi_minute`, `kpi_15m`, `kpi_1h`) must
equal the simulator's truth exactly, and so must the set of SLA breaches (`sla_events`). The
expected values come from the independent oracles in `tests/oracles` (no pipeline.kpi/sla code);
the run and the comparison are in `tests.support.kpi_sla`.
"""

from __future__ import annotations

import pytest

from tests.support.kpi_sla import SHOW, finish, prepare

from .conftest import Workspace

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("topology", ["one worker", "ingest and analytics workers"])
def test_kpi_windows_and_sla_breaches_equal_the_truth(workspace: Workspace, topology: str) -> None:
    run = prepare(workspace)
    if topology == "one worker":
        worker = ingest = workspace.start_worker()
    else:  # each role in a process of its own, each with its own embedded store
        worker = workspace.start_worker(role="analytics")
        ingest = workspace.start_worker(role="ingest", own_store=True)
    diffs = finish(run, worker, ingest)
    if worker is not ingest:
        assert worker.sql("SELECT count() FROM interaction_events")[0][0] == 0, "analytics wrote raw events"
        assert ingest.sql("SELECT count() FROM kpi_minute_partials")[0][0] == 0, "ingest computed KPIs"
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])

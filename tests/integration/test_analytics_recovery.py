"""Effectively-once analytics under faults, end to end (real broker, embedded ClickHouse, worker
processes), compared with the independent oracles like the acceptance test:

* the analytics worker is killed with SIGKILL three times at random moments and restarted: KPI
  windows (minute, 15 m, 1 h) and SLA breaches equal the oracles, nothing lost or counted twice,
  and the kills really interrupted work that was not yet checkpointed (it was read again);
* ClickHouse writes fail for 30 s mid-run (injected at the client boundary, see
  tests/support/faults): `/health` says degraded, the worker retries, results equal the oracles.

Raw events are ingested by a separate ingest worker with its own store, so only analytics is hit.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from tests.support.kpi_sla import SHOW, finish, prepare

from .conftest import REPO, Workspace, wait_until

pytestmark = pytest.mark.integration

FAULTS = REPO / "tests" / "support" / "faults"
ANALYSED = "touchline_events_analysed_total"


def committed(workspace: Workspace) -> int:
    """Sum of the analytics group's committed offsets (the next message each partition reads)."""
    admin = KafkaAdminClient(bootstrap_servers=workspace.env["KAFKA_BOOTSTRAP_SERVERS"], client_id="recovery-test")
    try:
        group = f"{workspace.env['TOUCHLINE_APP_ID']}-analytics"
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values())


def test_analytics_killed_three_times_equals_the_truth(workspace: Workspace) -> None:
    workspace.env["TOUCHLINE_CHECKPOINT_SECONDS"] = "1"
    run = prepare(workspace)
    ingest = workspace.start_worker(role="ingest", own_store=True)
    worker = workspace.start_worker(role="analytics")
    rng = random.Random(5)
    base = 0  # messages the analytics group had committed when this worker started
    interrupted: list[int] = []
    restarts: list[float] = []
    for _ in range(3):
        target = rng.randint(1_500, 6_000)  # events this worker analyses before it is killed
        wait_until(lambda w=worker, n=target: w.metric(ANALYSED) >= n, 300, f"{target} events analysed")
        analysed = worker.metric(ANALYSED)
        worker.stop(signal.SIGKILL)
        now_committed = committed(workspace)
        # read and applied past the last checkpoint: the next worker must read these again
        interrupted.append(int(base + analysed - now_committed))
        base = now_committed
        started = time.monotonic()
        worker = workspace.start_worker(port=worker.port, role="analytics")
        restarts.append(time.monotonic() - started)
    print(
        f"\nwork interrupted by each kill (messages read again): {interrupted}; restarts to partitions (s): {restarts}"
    )
    assert any(n > 0 for n in interrupted), f"no kill interrupted unacknowledged work: {interrupted}"
    diffs = finish(run, worker, ingest)
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


def test_clickhouse_failing_for_30_s_loses_nothing(workspace: Workspace, tmp_path: Path) -> None:
    run = prepare(workspace)
    ingest = workspace.start_worker(role="ingest", own_store=True)
    flag = tmp_path / "clickhouse-down"
    plain = dict(workspace.env)
    workspace.env["TOUCHLINE_TEST_CLICKHOUSE_FAULT_FILE"] = str(flag)
    workspace.env["PYTHONPATH"] = f"{FAULTS}:{workspace.env['PYTHONPATH']}"
    worker = workspace.start_worker(role="analytics")
    workspace.env.clear()
    workspace.env.update(plain)

    wait_until(lambda: worker.metric(ANALYSED) >= run.expected_messages // 3, 300, "a third of the events analysed")
    flag.touch()
    down_at = time.monotonic()
    wait_until(
        lambda: "clickhouse" in json.loads(worker.get("/health")).get("failing", {}),
        30,
        "/health to report ClickHouse failing",
    )
    health = json.loads(worker.get("/health"))
    assert health["status"] == "degraded", health
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    errors = worker.metric("touchline_dependency_errors_total")
    flag.unlink()
    wait_until(lambda: json.loads(worker.get("/health"))["status"] == "ok", 60, "/health to be ok again")
    print(f"\n{errors:.0f} failed ClickHouse writes retried during the 30 s outage")
    assert errors >= 3
    diffs = finish(run, worker, ingest)
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])

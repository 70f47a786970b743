"""`touchline sql` against a real worker: it goes through the worker holding the configured store,
and never answers from a worker that holds another store, even on the configured port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Workspace, wait_until

pytestmark = pytest.mark.integration


def test_sql_reads_the_configured_store_not_whatever_listens_on_the_port(workspace: Workspace, tmp_path: Path) -> None:
    worker = workspace.start_worker()
    workspace.cli("simulate", "--contacts", "20", "--speed", "0", "--seed", "11", "--start", "2026-03-02T09:00Z")
    wait_until(lambda: worker.sql("SELECT count() FROM interaction_events")[0][0] > 0, 120, "events stored")
    wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 60, "the worker to drain")
    stored = worker.sql("SELECT count() FROM interaction_events FINAL")[0][0]

    mine = workspace.cli("sql", "SELECT count() AS events FROM interaction_events FINAL")
    assert mine.stdout == f"events\n{stored}\n"
    assert f"through the worker at http://127.0.0.1:{worker.port}" in mine.stderr.splitlines()[0]

    # another directory with its own (empty) data dir, same web port: the worker there is not its store
    other = dict(workspace.env, TOUCHLINE_DATA_DIR=str(tmp_path / "elsewhere"))
    original = workspace.env
    workspace.env = other
    try:
        workspace.cli("migrate")
        theirs = workspace.cli("sql", "SELECT count() AS events FROM interaction_events FINAL")
    finally:
        workspace.env = original
    assert theirs.stdout == "events\n0\n"
    first = theirs.stderr.splitlines()[0]
    assert f"reading chdb://{(tmp_path / 'elsewhere' / 'clickhouse').resolve()}" in first
    assert "directly; ignoring it: the worker at" in first

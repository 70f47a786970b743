"""`touchline sql` against a real worker: it goes through the worker holding the configured store,
and never answers from a worker that holds another store, even on the configured port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import Workspace

pytestmark = pytest.mark.integration


def test_sql_reads_the_configured_store_not_whatever_listens_on_the_port(workspace: Workspace, tmp_path: Path) -> None:
    worker = workspace.start_worker()
    truth = tmp_path / "truth.jsonl"
    workspace.cli(
        "simulate", "--contacts", "20", "--speed", "0", "--seed", "11", "--start", "2026-03-02T09:00Z",
        "--truth", truth, "--quiet",
    )  # fmt: skip
    # every event stored, not a first fetch's share of them (a drained writer between two fetches
    # once let this test compare 14 stored events with the 271 the CLI read a moment later)
    expected = json.loads(truth.read_text().splitlines()[-1])["distinct_valid_events"]
    worker.wait_for_events(expected)

    mine = workspace.cli("sql", "SELECT count() AS events FROM interaction_events FINAL")
    assert mine.stdout == f"events\n{expected}\n"
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

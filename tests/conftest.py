"""Shared fixtures. In-process ClickHouse (chDB allows one data path per process) is opened once
per test session at a temporary path; integration tests talk to the worker over HTTP or run the
CLI in subprocesses, which have their own engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.store.clickhouse import connect
from pipeline.store.migrations import migrate


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path: Path = tmp_path_factory.mktemp("chdb")
    client = connect(f"chdb://{path}", "touchline_test")
    migrate(client)
    yield client


# `make test` runs the unit and integration files in one session on two processes (pytest-xdist,
# --dist loadfile: a file at a time; --no-loadscope-reorder: in this order, not the files with the
# most tests first). The longest integration files first, so none starts last and runs alone; then
# the other integration files; the unit files last, filling both processes while the last
# integration files finish. Before, as two sessions reordered by xdist: 777 s + 136-155 s.
LONGEST_FIRST = (
    "test_ticket_backfill.py",
    "test_live_run.py",
    "test_journeys_e2e.py",
    "test_anonbank_replay.py",
    "test_analytics_recovery.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.name
        longest = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return longest, item.path.parent.name != "integration"

    items.sort(key=rank)  # stable: the order within a file and among the others is kept

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

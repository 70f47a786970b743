"""Fault injection for worker subprocesses in the integration tests: with this directory first on
PYTHONPATH and TOUCHLINE_TEST_CLICKHOUSE_FAULT_FILE set, every ClickHouse insert fails with a
connection error (clickhouse-connect's OperationalError) while that file exists: ClickHouse "down"
at the client boundary, without touching the product's code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_FLAG = os.environ.get("TOUCHLINE_TEST_CLICKHOUSE_FAULT_FILE")

if _FLAG:
    from clickhouse_connect.driver.client import Client
    from clickhouse_connect.driver.exceptions import OperationalError

    _insert = Client.insert
    _flag = Path(_FLAG)

    def insert(self: Client, *args: Any, **kwargs: Any) -> Any:
        if _flag.exists():
            raise OperationalError("injected by the test: ClickHouse is unreachable")
        return _insert(self, *args, **kwargs)

    Client.insert = insert  # type: ignore[method-assign]

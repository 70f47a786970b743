"""Read-only SQL for analysts. The engine itself refuses writes, DDL and setting changes:
embedded chDB gets its own connection handle put in `readonly=1` for good; a server connection
sends `readonly=2` with every query (HTTP has no session to pin it to)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.store.clickhouse import open_error


def open_readonly(dsn: str, database: str) -> Client:
    try:
        if dsn.startswith("chdb:"):
            client = clickhouse_connect.get_client(dsn=dsn, database=database)
            client.command("SET readonly = 1")
        else:
            client = clickhouse_connect.get_client(dsn=dsn, database=database, settings={"readonly": 2})
    except Exception as error:
        raise open_error(dsn, error) from error
    return client


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def run_readonly(client: Client, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Columns and JSON-friendly rows of one query on a client from `open_readonly`."""
    result = client.query(sql)
    return list(result.column_names), [[_plain(v) for v in row] for row in result.result_rows]

"""Read-only, bounded SQL for analysts.

Three guards, each enough against a different mistake or attack:
- the statement: only plain SELECT / WITH ... SELECT / SHOW / DESCRIBE / EXPLAIN, judged on ClickHouse's
  own parse of it (`EXPLAIN AST`); no INTO OUTFILE, no SETTINGS clause, no KILL or SYSTEM, no table
  function but the harmless generators;
- the engine: embedded chDB gets its own connection handle put in `readonly=1` for good; a server
  connection sends `readonly=2` with every query (HTTP has no session to pin it to);
- limits: every query runs with max_execution_time, max_memory_usage and max_result_rows/bytes (set
  before readonly on chDB, so a query cannot lift them; on a server a SETTINGS clause is refused).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.store.clickhouse import open_error


class QueryRefused(Exception):
    """The statement is not a plain read; the message says what is allowed."""


ALLOWED = "only SELECT, WITH ... SELECT, SHOW, DESCRIBE and EXPLAIN are allowed"
SAFE_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "values"})


@dataclass(frozen=True)
class Limits:
    max_execution_seconds: float = 30.0
    max_memory_bytes: int = 2_000_000_000
    max_result_rows: int = 100_000
    max_result_bytes: int = 100_000_000

    def settings(self) -> dict[str, Any]:
        return {
            "max_execution_time": self.max_execution_seconds,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
        }


def open_readonly(dsn: str, database: str, limits: Limits | None = None) -> Client:
    bounds = (limits or Limits()).settings()
    try:
        if dsn.startswith("chdb:"):
            client = clickhouse_connect.get_client(dsn=dsn, database=database)
            for name, value in bounds.items():
                client.command(f"SET {name} = {value!r}" if isinstance(value, str) else f"SET {name} = {value}")
            client.command("SET readonly = 1")
        else:
            server = {"readonly": 2, "cancel_http_readonly_queries_on_client_close": 1, **bounds}
            client = clickhouse_connect.get_client(dsn=dsn, database=database, settings=server)
    except Exception as error:
        raise open_error(dsn, error) from error
    return client


_TOKEN = re.compile(
    r"""\s+|--[^\n]*|\#[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`"""
    r"""|\$\$.*?\$\$|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>.)""",
    re.DOTALL,
)


def statement(sql: str) -> str:
    """The one statement in `sql` (a trailing semicolon dropped), or QueryRefused. Lexical: strings,
    quoted names and comments are skipped, so `'INTO OUTFILE'` in a literal is fine."""
    words: list[str] = []
    end = len(sql)
    for match in _TOKEN.finditer(sql):
        if match.group("word"):
            words.append(match.group("word").upper())
        elif match.group("other") == ";":
            if sql[match.end() :].strip(" \t\r\n;"):
                raise QueryRefused("one statement at a time")
            end = match.start()
            break
    if any(a == "INTO" and b == "OUTFILE" for a, b in itertools.pairwise(words)):
        raise QueryRefused("INTO OUTFILE is not allowed: results come back in the answer")
    text = sql[:end].strip()
    if not text:
        raise QueryRefused("no query given")
    return text


def check_parsed(ast: list[str]) -> None:
    """Judge ClickHouse's `EXPLAIN AST` of a statement (one node per line, indented by depth)."""
    root = ast[0].split()[0] if ast and ast[0].strip() else ""
    if not (root.startswith(("Select", "Show", "Describe")) or root == "Explain"):
        raise QueryRefused(f"{root or 'this statement'} is refused: the analyst connection is readonly; {ALLOWED}")
    for number, line in enumerate(ast):
        node = line.strip()
        depth = len(line) - len(line.lstrip(" "))
        if depth == 1 and node.startswith("Literal") and root.startswith("Select"):
            raise QueryRefused("INTO OUTFILE is not allowed: results come back in the answer")
        if node == "Set" or node.startswith("Set "):
            raise QueryRefused("a SETTINGS clause is not allowed: limits are set by the operator")
        if node.startswith("TableExpression") and number + 1 < len(ast):
            inner = ast[number + 1].split()
            if inner[:1] == ["Function"] and len(inner) > 1 and inner[1].lower() not in SAFE_TABLE_FUNCTIONS:
                raise QueryRefused(f"table function {inner[1]}() is not allowed")


def check_statement(client: Client, sql: str) -> str:
    """The statement, if it is a plain read by ClickHouse's own parser; QueryRefused otherwise."""
    text = statement(sql)
    try:
        ast = [str(row[0]) for row in client.query(f"EXPLAIN AST {text}").result_rows]
    except Exception as error:
        raise QueryRefused(f"{_first_line(error)}") from None
    check_parsed(ast)
    return text


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def run_readonly(client: Client, sql: str, query_id: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Columns and JSON-friendly rows of one checked query on a client from `open_readonly`. With a
    `query_id` (from `new_query_id`) the query can be ended from another connection by `cancel`."""
    text = check_statement(client, sql)
    if query_id is None:
        result = client.query(text)
    else:
        # a server takes the query_id; chDB drops it (clickhouse-connect treats it as an HTTP
        # parameter), so the query also starts with a comment naming it, which system.processes keeps
        result = client.query(f"{_mark(query_id)}{text}", settings={"query_id": query_id})
    return list(result.column_names), [[_plain(v) for v in row] for row in result.result_rows]


_QUERY_ID = re.compile(r"^[0-9a-f]{32}$")


def new_query_id() -> str:
    return uuid4().hex


def _mark(query_id: str) -> str:
    if not _QUERY_ID.match(query_id):
        raise ValueError(f"not a query id from new_query_id: {query_id!r}")
    return f"/* touchline-sql {query_id} */ "


def open_control(dsn: str, database: str) -> Client:
    """A connection that may end analysts' queries (`cancel`): the worker's own credentials, on a
    handle of its own so a KILL never waits behind the worker's inserts. Analyst connections cannot
    KILL: the statement guard refuses it."""
    try:
        return clickhouse_connect.get_client(dsn=dsn, database=database)
    except Exception as error:
        raise open_error(dsn, error) from error


def cancel(control: Client, query_id: str) -> None:
    """End the query `run_readonly` runs with `query_id`, if it still runs (without waiting for it).
    Embedded chDB kills in-process; a server needs `control`'s user to hold the KILL QUERY grant
    when analysts' queries run as another user."""
    mark = _mark(query_id)
    control.command(f"KILL QUERY WHERE query_id = '{query_id}' OR startsWith(query, '{mark}') ASYNC")

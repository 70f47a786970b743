"""`touchline sql`: which store to read and how to print what it returns.

The store is the one the configuration names. With the embedded engine a running worker holds it
(chDB allows one process per store), so the query goes through a worker only when that worker's
`/health` names the same store, database and app id; any other process on the port is ignored.
Output is never truncated: an aligned table on a terminal, TSV (ClickHouse's escaping) when piped.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from pipeline.config import Settings
from pipeline.store.clickhouse import redact


@dataclass(frozen=True)
class Route:
    """Where a query goes: `worker_url` set means through that worker."""

    store: str  # the store's URL, password masked
    database: str
    worker_url: str | None = None
    ignored: str | None = None  # why a worker that answered on the port was not used

    def describe(self) -> str:
        via = f"through the worker at {self.worker_url}" if self.worker_url else "directly"
        text = f"reading {self.store} (database {self.database}) {via}"
        return f"{text}; {self.ignored}" if self.ignored else text


def worker_health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return health if isinstance(health, dict) else None


def identity_mismatch(settings: Settings, health: dict[str, Any]) -> str | None:
    """Why the worker that answered is not the one holding the configured store (None: it is)."""
    expected = {
        "store": redact(settings.clickhouse_url),
        "clickhouse_database": settings.clickhouse_database,
        "app_id": settings.app_id,
    }
    for key, value in expected.items():
        if health.get(key) != value:
            return f"the worker at {settings.worker_url} holds {key} {health.get(key)!r}, not {value!r}"
    return None


def route(settings: Settings) -> Route:
    store, database = redact(settings.clickhouse_url), settings.clickhouse_database
    if not settings.embedded_clickhouse:
        return Route(store, database)
    health = worker_health(settings.worker_url)
    if health is None:
        return Route(store, database)
    mismatch = identity_mismatch(settings, health)
    if mismatch is not None:
        return Route(store, database, ignored=f"ignoring it: {mismatch}")
    return Route(store, database, worker_url=settings.worker_url)


_CLICKHOUSE_ERROR = re.compile(r"Code: \d+\. DB::Exception: .*", re.DOTALL)


def clickhouse_message(text: str) -> str:
    """ClickHouse's own message from a driver's error text: `Code: 62. DB::Exception: ...`, without the
    driver's wrapping, the server version, or the statement the client appended (`FORMAT Native`)."""
    match = _CLICKHOUSE_ERROR.search(text)
    message = match.group(0) if match else text.strip()
    message = message.splitlines()[0] if message else message
    message = re.sub(r"\s*\(version [\d.]+[^)]*\)\.?$", "", message)
    message = re.sub(r"\s+FORMAT Native\b", "", message)
    # a syntax error lists every token the parser would accept: the first few say enough
    tokens = re.search(r"(Expected one of: )(.*)$", message)
    if tokens:
        listed = [t.strip() for t in tokens.group(2).split(",")]
        if len(listed) > 6:
            message = message[: tokens.start(2)] + ", ".join(listed[:6]) + f", … ({len(listed) - 6} more)"
    return message


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def tsv_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def rows_label(count: int) -> str:
    return f"{count:,} row" + ("" if count == 1 else "s")


def write_tsv(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    out.write("\t".join(tsv_escape(c) for c in columns) + "\n")
    for row in rows:
        out.write("\t".join("\\N" if v is None else tsv_escape(cell(v)) for v in row) + "\n")


def write_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Aligned columns, every cell in full (a wide result wraps in the terminal, nothing is cut)."""
    texts = [[tsv_escape(cell(v)) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(r[i]) for r in texts)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out.write(line(list(columns)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row_text in texts:
        out.write(line(row_text) + "\n")
    out.write(f"({rows_label(len(rows))})\n")


def result_columns(settings: Settings, target: Route, sql: str, headers: dict[str, str] | None = None) -> list[str]:
    """Column names of a query whose result is empty (ClickHouse then sends no block, so the driver
    knows no names): `DESCRIBE (query)` on the same route. [] when that fails too."""
    from pipeline.store.readonly import open_readonly, run_readonly

    describe = f"DESCRIBE ({sql.strip().rstrip(';')})"
    try:
        if target.worker_url is not None:
            request = urllib.request.Request(
                f"{target.worker_url}/sql?format=json", data=describe.encode(), method="POST", headers=headers or {}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                rows = json.loads(response.read())["rows"]
        else:
            _, rows = run_readonly(open_readonly(settings.clickhouse_url, settings.clickhouse_database), describe)
    except Exception:  # only a nicety: the query itself succeeded
        return []
    return [str(row[0]) for row in rows]

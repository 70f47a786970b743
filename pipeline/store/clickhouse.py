"""One way to reach ClickHouse: clickhouse-connect, with the embedded chDB engine (`chdb://dir`) or
a server (`http(s)://`). chDB runs one engine per process; several clients (connections) may use
it. A client is used by one thread at a time: clickhouse-connect's client and its HTTP session are
not safe to share between threads, and chDB serializes the calls of one connection. So a use that
runs on a thread of its own (the ingest stage beside the analytics writes) opens its own client
(`connect(..., own=True)`); calls are blocking and must be kept off an event loop (see
`BlockingExecutor`)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
import msgspec
from clickhouse_connect.driver import options
from clickhouse_connect.driver.client import Client

T = TypeVar("T")

# clickhouse-connect imports pandas on the first insert only to ask whether the rows are a
# DataFrame; ours never are (lists of tuples): "no pandas" saves every process that writes 0.5 s of
# CPU and 40 MB of RSS (measured: `import pandas` after the worker's imports), 0.7 s of a worker's
# start in py-spy (session 35)
options.pd = None
options.pd_time_test = None

_lock = threading.Lock()
_clients: dict[tuple[str, str], Client] = {}
_owned: list[Client] = []


class StoreError(Exception):
    """ClickHouse cannot be reached or used; the message says why."""


def _embedded_path(dsn: str) -> Path | None:
    if not dsn.startswith("chdb:"):
        return None
    parsed = urlparse(dsn)
    location = parsed.path if not parsed.netloc else parsed.netloc
    return None if location in ("", "memory", ":memory:") else Path(location)


def connect(dsn: str, database: str, *, create_database: bool = True, own: bool = False) -> Client:
    """A client on `database`, created if missing: the process's shared one for this DSN and
    database, or with `own` a new one for a thread of its own (closed by `close_all` too)."""
    key = (dsn, database)
    with _lock:
        if key in _clients and not own:
            return _clients[key]
        path = _embedded_path(dsn)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = clickhouse_connect.get_client(dsn=dsn)
            if create_database:
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
            client = clickhouse_connect.get_client(dsn=dsn, database=database)
        except Exception as error:  # clickhouse-connect raises many kinds; all mean "unusable"
            raise open_error(dsn, error) from error
        if own:
            _owned.append(client)
        else:
            _clients[key] = client
        return client


def open_error(dsn: str, error: Exception) -> StoreError:
    if dsn.startswith("chdb:") and "EmbeddedServer" in str(error):
        return StoreError(
            f"the embedded ClickHouse at {dsn} is in use by another process (a running worker?). "
            "Stop it, or let `touchline sql` reach it: TOUCHLINE_WORKER_WEB_PORT must name its web port."
        )
    return StoreError(f"cannot open ClickHouse at {redact(dsn)}: {error}")


def close_all() -> None:
    with _lock:
        for client in [*_clients.values(), *_owned]:
            client.close()
        _clients.clear()
        _owned.clear()


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise StoreError(f"not a plain identifier: {name!r}")
    return f"`{name}`"


def redact(dsn: str) -> str:
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@")
    return dsn


class BlockingExecutor:
    """Runs blocking ClickHouse calls on one dedicated thread, in submission order, so the
    asyncio loop never waits on the engine and writes to a table never interleave."""

    def __init__(self, name: str = "clickhouse") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # work not yet started is dropped, as in a crash


def insert_rows(client: Client, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        return
    context = client.create_insert_context(table, list(columns), data=rows)
    try:
        client.insert(context=context)
    finally:
        # clickhouse-connect's insert context refers to itself (a bound method kept in an
        # attribute): left alone, it and the rows it holds wait for the cyclic collector, which
        # the worker's 10 s gc.freeze keeps away from whatever it catches in flight (120 contexts
        # every 20 s became cyclic garbage in a worker fed 4,000 events/s, see worker/backoff.py)
        vars(context).clear()


_JSON_ROWS = msgspec.json.Encoder()


def insert_json_rows(client: Client, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows of JSON types (str, int, float, bool, None; times as float seconds, which
    ClickHouse reads to the millisecond, where it reads integers as whole seconds) as JSONCompactEachRow, which ClickHouse parses itself. Encoding takes the caller's thread
    0.5 µs a row (benchmarks/steps.py) against 5.4-6.6 µs to build clickhouse-connect's Native
    form, and chDB parses with the GIL released, beside the event loop."""
    if rows:
        client.raw_insert(table, list(columns), _JSON_ROWS.encode_lines(rows), fmt="JSONCompactEachRow")


def insert_dicts(client: Client, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows given as column -> value dicts (all with the same keys)."""
    if rows:
        columns = list(rows[0])
        insert_rows(client, table, columns, [[row[c] for c in columns] for row in rows])


def clickhouse_memory(client: Client) -> int:
    """Bytes ClickHouse tracks as in use (`MemoryTracking`): the embedded engine's share of this
    process, or the server's."""
    rows = client.query("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'").result_rows
    return int(rows[0][0]) if rows else 0


_RESIDENT = re.compile(r"^Allocated: \d+, active: \d+, metadata: \d+.*?, resident: (\d+)", re.M)


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def release_engine_memory(client: Client) -> None:
    """Hand the embedded engine's freed pages back to the system now. chDB allocates with its own
    jemalloc, which keeps freed pages for 5 s (`dirty_decay_ms`): a worker that writes all the
    time holds seconds of writes' pages. Measured in a bare process: 1,843 MB RSS right after an
    insert and a query of 3M rows that ClickHouse tracked as 3 MB; 290 MB after the purge (0.6 ms)."""
    client.command("SYSTEM JEMALLOC PURGE")


def engine_allocator_resident(client: Client) -> int:
    """Bytes the embedded engine's allocator holds resident (jemalloc's `resident`): what chDB
    adds to this process's RSS beyond its mapped library, freed pages not yet returned included."""
    stats = client.query("SELECT stats FROM system.jemalloc_stats").result_rows
    found = _RESIDENT.search(stats[0][0]) if stats else None
    return int(found.group(1)) if found else 0

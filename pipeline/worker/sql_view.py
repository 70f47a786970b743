"""The read-only `/sql` endpoint of the worker's web server: authorised requests only (see
`pipeline.privacy.access`), checked statements with limits (see `pipeline.store.readonly`), each on
a connection of its own, so one long query never holds up the others."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response, View

from pipeline.privacy import access
from pipeline.sql_client import write_tsv
from pipeline.store.readonly import Limits, QueryRefused, open_readonly, run_readonly

Render = Callable[[list[str], list[list[Any]]], bytes]


class Busy(Exception):
    """Every connection is running a query."""


class ReadonlyPool:
    """`size` read-only connections, each used by one query at a time on a thread of its own."""

    def __init__(self, dsn: str, database: str, limits: Limits, size: int) -> None:
        self._clients = [open_readonly(dsn, database, limits) for _ in range(size)]
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sql")
        self._idle: asyncio.Queue[Client] | None = None
        self.wait_seconds = limits.max_execution_seconds

    def _queue(self) -> asyncio.Queue[Client]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for client in self._clients:
                self._idle.put_nowait(client)
        return self._idle

    async def run(self, sql: str, render: Render) -> bytes:
        """The rendered answer; query and rendering both run on the connection's thread (rendering
        480k rows took 3.2 s, which on the event loop delays every SLA timer by as much)."""
        idle = self._queue()
        try:
            client = await asyncio.wait_for(idle.get(), self.wait_seconds)
        except TimeoutError:
            raise Busy(f"every analyst connection is busy; try again (limit {len(self._clients)})") from None
        future = asyncio.get_running_loop().run_in_executor(self._threads, _answer, client, sql, render)
        # the connection is free again when its query ends, not when a caller that went away stops
        # waiting (the query itself is bounded by max_execution_time)
        future.add_done_callback(lambda _: idle.put_nowait(client))
        return await asyncio.shield(future)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def install_sql_view(app: faust.App, pool: ReadonlyPool) -> None:
    class SqlView(View):
        """POST a read-only SQL query as the body; answers TSV with a header row, or JSON with
        `?format=json`."""

        async def post(self, request: Request) -> Response:
            refused = access.refusal(request.headers)
            if refused is not None:
                return self.text(f"{refused[1]}\n", status=refused[0])
            sql = (await request.text()).strip()
            as_json = request.query.get("format") == "json"
            if not sql:
                return self.text("send a SQL query as the request body\n", status=400)
            try:
                body = await pool.run(sql, _json if as_json else _tsv)
            except QueryRefused as error:
                return self.text(f"refused: {error}\n", status=403)
            except Busy as error:
                return self.text(f"{error}\n", status=503)
            except Exception as error:
                text = str(error).strip()
                return self.text(f"{text.splitlines()[0] if text else type(error).__name__}\n", status=400)
            content_type = "application/json" if as_json else "text/tab-separated-values; charset=utf-8"
            return self.bytes(body, content_type=content_type)

    app.page("/sql")(SqlView)


def _answer(client: Client, sql: str, render: Render) -> bytes:
    return render(*run_readonly(client, sql))


def _json(columns: list[str], rows: list[list[Any]]) -> bytes:
    return json.dumps({"columns": columns, "rows": rows}, default=str).encode()


def _tsv(columns: list[str], rows: list[list[Any]]) -> bytes:
    """TabSeparatedWithNames as ClickHouse writes it: tabs, newlines and backslashes escaped, NULL as \\N."""
    out = io.StringIO()
    write_tsv(columns, rows, out)
    return out.getvalue().encode()

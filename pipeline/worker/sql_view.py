"""The read-only `/sql` endpoint of the worker's web server: authorised requests only (see
`pipeline.privacy.access`), checked statements with limits (see `pipeline.store.readonly`), each on
a connection of its own, so one long query never holds up the others."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response, View

from pipeline.privacy import access
from pipeline.sql_client import write_tsv
from pipeline.store.readonly import (
    Limits,
    QueryRefused,
    cancel,
    new_query_id,
    open_control,
    open_readonly,
    run_readonly,
)

log = logging.getLogger(__name__)

JSON_CHUNK_ROWS = 2_000
Render = Callable[[list[str], list[list[Any]]], bytes]
# how often a running query looks whether its caller is still there: an abandoned query keeps
# its connection and a core at most this long
GONE_POLL_SECONDS = 0.25


class Busy(Exception):
    """Every connection is running a query."""


class ClientGone(Exception):
    """The caller went away before its answer; its query was cancelled."""


class ReadonlyPool:
    """`size` read-only connections, each used by one query at a time on a thread of its own, and
    one control connection that cancels the query of a caller who went away."""

    def __init__(self, dsn: str, database: str, limits: Limits, size: int) -> None:
        self._clients = [open_readonly(dsn, database, limits) for _ in range(size)]
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sql")
        self._control = open_control(dsn, database)
        self._killer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-cancel")
        self._idle: asyncio.Queue[Client] | None = None
        self.wait_seconds = limits.max_execution_seconds

    def _queue(self) -> asyncio.Queue[Client]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for client in self._clients:
                self._idle.put_nowait(client)
        return self._idle

    async def run(self, sql: str, render: Render, gone: Callable[[], bool] | None = None) -> bytes:
        """The rendered answer; query and rendering both run on the connection's thread (rendering
        480k rows took 3.2 s, which on the event loop delays every SLA timer by as much).

        When `gone()` turns true (the caller disconnected) or the awaiting task is cancelled, the
        query is killed in ClickHouse and ClientGone raised: it would otherwise hold its connection
        and a core until max_execution_time. (On an http(s) server DSN the worker->server hop is
        covered by `cancel_http_readonly_queries_on_client_close`, but the worker's connection to
        the server stays open while its thread waits, so the analyst->worker hop needs the KILL.)"""
        idle = self._queue()
        try:
            client = await asyncio.wait_for(idle.get(), self.wait_seconds)
        except TimeoutError:
            raise Busy(f"every analyst connection is busy; try again (limit {len(self._clients)})") from None
        query_id = new_query_id()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, _answer, client, sql, render, query_id)

        def ended(done: asyncio.Future[bytes]) -> None:
            # the connection is free again when its query ends, not when a caller that went away
            # stops waiting; the error of a cancelled query is nobody's to read
            idle.put_nowait(client)
            if not done.cancelled():
                done.exception()

        future.add_done_callback(ended)
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=GONE_POLL_SECONDS)  # never cancels the query's future
                if not future.done() and gone is not None and gone():
                    # again until it ends: a KILL sent while the statement is still being checked
                    # finds no query yet
                    while not future.done():
                        await loop.run_in_executor(self._killer, self._cancel, query_id)
                        await asyncio.wait({future}, timeout=1.0)
                    raise ClientGone("the client went away; its query was cancelled")
        except asyncio.CancelledError:
            if not future.done():
                loop.run_in_executor(self._killer, self._cancel, query_id)
            raise
        return future.result()

    def _cancel(self, query_id: str) -> None:
        try:
            cancel(self._control, query_id)
        except Exception as error:  # the query still ends at max_execution_time
            text = str(error).strip()
            log.warning("could not cancel an abandoned analyst query: %s", text.splitlines()[0] if text else error)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._killer.shutdown(wait=False, cancel_futures=True)


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
                body = await pool.run(sql, _json if as_json else _tsv, gone=lambda: _disconnected(request))
            except ClientGone as error:
                # nobody reads it; nginx's 499 would do, but Faust's monitor takes only an HTTPStatus
                return self.text(f"{error}\n", status=408)
            except QueryRefused as error:
                return self.text(f"refused: {error}\n", status=403)
            except Busy as error:
                return self.text(f"{error}\n", status=503)
            except Exception as error:
                text = str(error).strip()
                return self.text(f"{text.splitlines()[0] if text else type(error).__name__}\n", status=400)
            if as_json:
                return self.bytes(body, content_type="application/json")
            # aiohttp refuses a charset inside content_type (a 500 on every TSV answer until this)
            response = self.bytes(body, content_type="text/tab-separated-values")
            response.charset = "utf-8"  # type: ignore[misc]  # faust types it read-only; aiohttp sets it
            return response

    app.page("/sql")(SqlView)


def _disconnected(request: Request) -> bool:
    # Faust's aiohttp server does not cancel a handler whose client disconnects
    # (AppRunner(handler_cancellation=False), aiohttp 3.14): its transport closes
    transport = getattr(request, "transport", None)
    return transport is None or transport.is_closing()


def _answer(client: Client, sql: str, render: Render, query_id: str) -> bytes:
    return render(*run_readonly(client, sql, query_id))


def _json(columns: list[str], rows: list[list[Any]]) -> bytes:
    """`{"columns": [...], "rows": [[...], ...]}`, encoded JSON_CHUNK_ROWS rows at a time: the C
    encoder holds the GIL for a whole call, and one call over 480k rows blocked the event loop for
    2.6 s although it ran on this thread."""
    chunks = (
        json.dumps(rows[i : i + JSON_CHUNK_ROWS], default=str)[1:-1] for i in range(0, len(rows), JSON_CHUNK_ROWS)
    )
    return ('{"columns":' + json.dumps(columns) + ',"rows":[' + ",".join(chunks) + "]}").encode()


def _tsv(columns: list[str], rows: list[list[Any]]) -> bytes:
    """TabSeparatedWithNames as ClickHouse writes it: tabs, newlines and backslashes escaped, NULL as \\N."""
    out = io.StringIO()
    write_tsv(columns, rows, out)
    return out.getvalue().encode()

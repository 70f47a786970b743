"""The read-only `/sql` endpoint of the worker's web server."""

from __future__ import annotations

import json
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response, View

from pipeline.store.clickhouse import BlockingExecutor
from pipeline.store.readonly import run_readonly


def install_sql_view(app: faust.App, reader: Client, query_executor: BlockingExecutor) -> None:
    class SqlView(View):
        """POST a read-only SQL query as the body; answers TSV with a header row, or JSON with
        `?format=json`. Writes are refused by ClickHouse itself (see pipeline.store.readonly)."""

        async def post(self, request: Request) -> Response:
            sql = (await request.text()).strip()
            as_json = request.query.get("format") == "json"
            if not sql:
                return self.text("send a SQL query as the request body\n", status=400)
            try:
                columns, rows = await query_executor.run(run_readonly, reader, sql)
            except Exception as error:
                return self.text(f"{error}\n", status=400)
            if as_json:
                return self.json({"columns": columns, "rows": rows})
            lines = ["\t".join(columns), *("\t".join(_cell(v) for v in row) for row in rows)]
            return self.text("\n".join(lines) + "\n")

    app.page("/sql")(SqlView)


def _cell(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)

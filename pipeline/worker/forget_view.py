"""`POST /forget` on the worker's web port: erase one person through the running worker, so its
stages drop what they hold of them (registered hooks) before their rows are removed from the store.
Body: {"kind": "phone", "value": "+44..."}; answers what was removed."""

from __future__ import annotations

import json
import logging

import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response, View

from pipeline.privacy import access, erasure, pseudonym
from pipeline.privacy.identifiers import is_placeholder
from pipeline.store.clickhouse import BlockingExecutor

log = logging.getLogger(__name__)


def install_forget_view(app: faust.App, client: Client, executor: BlockingExecutor) -> None:
    class ForgetView(View):
        async def post(self, request: Request) -> Response:
            refused = access.refusal(request.headers)
            if refused is not None:
                return self.json({"error": refused[1]}, status=refused[0])
            try:
                body = json.loads(await request.text())
                kind, value = str(body["kind"]), str(body["value"])
            except (ValueError, KeyError, TypeError):
                return self.json({"error": 'send {"kind": "<identifier kind>", "value": "<identifier>"}'}, status=400)
            if kind not in erasure.KINDS or not value.strip():
                return self.json({"error": f"kind must be one of {', '.join(erasure.KINDS)}"}, status=400)
            if is_placeholder(kind, value):
                return self.json({"error": erasure.placeholder_refusal(kind)}, status=400)
            subject = await executor.run(erasure.resolve, client, kind, value, pseudonym.active())
            state = await erasure.run_hooks(subject)
            tables = await executor.run(erasure.delete_rows, client, subject)
            result = erasure.Erased(subject, tables, state)
            # no identifier in the log, not even hashed: counts only
            log.info("forgot one person (%s): %s", kind, json.dumps(result.document()["tables"]))
            return self.json(result.document())

    app.page("/forget")(ForgetView)

"""`POST /forget` on the worker's web port: erase one person through the running workers, so their
stages drop what they hold of them (registered hooks) before their rows are removed from the store.
Body: {"kind": "phone", "value": "+44..."}; answers what was removed.

With several workers, the one asked finds the others (`pipeline.worker.peers`) and runs the hooks
of every worker at once (`POST /forget/state` on each, with the subject), tier by tier (the stages
feeding the journey stage first: `erasure.TIERS`); a worker that does not
answer, or a holder no worker reported (the journey resolver while it is assigned), fails the
erasure with 503 before any row is deleted, so a retry (erasure is idempotent) finishes it. Then
every worker settles (`POST /forget/settle`: e.g. its journey builders apply the resolver's
`Forget`), and only then are the rows deleted: once, in the ClickHouse server the workers share, or
by each worker in its own embedded store (chDB: one process per store)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response, View

from pipeline.config import Settings
from pipeline.kafka_security import client_options
from pipeline.privacy import access, erasure, pseudonym
from pipeline.privacy.identifiers import is_placeholder
from pipeline.store.clickhouse import BlockingExecutor
from pipeline.worker import peers

log = logging.getLogger(__name__)

STATE_SECONDS = 90.0  # a stage's hook may wait for its state's restore
SETTLE_SECONDS = 90.0  # above the journey builders' wait for the Forget (FORGET_WAIT_SECONDS)
DISCOVER_SECONDS = 10.0


class Refused(Exception):
    """The erasure cannot finish now; nothing was deleted (the message says why and what to do)."""


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        text = await response.text()
        if response.status != 200:
            raise Refused(f"{url} answered {response.status}: {text[:200]}")
        answer: dict[str, Any] = json.loads(text)
        return answer


async def _everywhere(
    others: Sequence[str], path: str, body: dict[str, Any], headers: dict[str, str], timeout: float, local: Any
) -> list[Any]:
    """`local` run here and `path` posted to every other worker at once; Refused naming every
    worker that failed."""
    async with aiohttp.ClientSession(headers=headers) as session:
        answers: list[Any] = await asyncio.gather(
            local, *(_post(session, url.rstrip("/") + path, body, timeout) for url in others), return_exceptions=True
        )
    failed = [
        f"{where}: {answer or type(answer).__name__}"
        for where, answer in zip(["this worker", *others], answers, strict=True)
        if isinstance(answer, BaseException)
    ]
    if failed:
        raise Refused("not every worker dropped the person: " + "; ".join(failed))
    return answers


async def _same(subject: erasure.Subject) -> erasure.Subject:
    return subject


async def fan_out(
    subject: erasure.Subject, app: faust.App, settings: Settings, groups: list[str]
) -> tuple[erasure.Subject, erasure.StateDropped, int]:
    """Every worker's hooks, then every worker's settle (module docstring); the person as every
    store knows them, the merged answers and how many workers took part."""
    own = str(app.conf.canonical_url)
    try:
        others = await peers.discover(
            own, app.assignor, settings.bootstrap_servers, groups, client_options(settings), DISCOVER_SECONDS
        )
    except Exception as error:  # any failure to list the workers refuses the erasure
        raise Refused(f"could not list the other workers through Kafka ({error})") from error
    headers = access.client_headers(settings)
    if settings.embedded_clickhouse and others:  # each worker's store holds part of the person's rows
        found = await _everywhere(
            others,
            "/forget/resolve",
            {"kind": subject.kind, "value": subject.value},
            headers,
            STATE_SECONDS,
            _same(subject),
        )
        for answer in found[1:]:
            subject = subject.union(erasure.Subject.from_wire(answer["subject"]))
    merged = erasure.StateDropped()
    for tier in erasure.TIERS:
        answers = await _everywhere(
            others,
            "/forget/state",
            {"subject": subject.wire(), "tier": tier},
            headers,
            STATE_SECONDS,
            erasure.run_hooks(subject, tier),
        )
        merged.merge(answers[0])
        for answer in answers[1:]:
            merged.merge(erasure.StateDropped.from_wire(answer))
    missing = merged.missing()
    if missing:
        raise Refused(f"no worker holds {', '.join(missing)} right now (being assigned): retry shortly")
    settled = await _everywhere(
        others,
        "/forget/settle",
        {"marks": merged.marks, "subject": subject.wire()},
        headers,
        SETTLE_SECONDS,
        erasure.run_settles(merged.marks),
    )
    for answer in settled[1:]:  # the rows other workers deleted in their own embedded stores
        for table, removed in answer.get("tables", {}).items():
            merged.tables[table] = merged.tables.get(table, 0) + int(removed)
    return subject, merged, 1 + len(others)


def install_forget_view(
    app: faust.App, client: Client, executor: BlockingExecutor, settings: Settings, groups: list[str]
) -> None:
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
            try:
                subject, state, workers = await fan_out(subject, app, settings, groups)
            except Refused as error:
                log.warning("erasure refused, nothing deleted: %s", error)
                return self.json({"error": f"{error}; no row was deleted, send it again"}, status=503)
            tables = await executor.run(erasure.delete_rows, client, subject)
            for table, removed in state.tables.items():
                tables[table] = tables.get(table, 0) + removed
            result = erasure.Erased(subject, tables, state.counts)
            # no identifier in the log, not even hashed: counts only
            log.info(
                "forgot one person (%s) on %d worker(s): %s", kind, workers, json.dumps(result.document()["tables"])
            )
            return self.json({**result.document(), "workers": workers})

    def internal(path: str, answer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        """A step of another worker's erasure (`fan_out`): JSON in, JSON out."""

        class StepView(View):
            async def post(self, request: Request) -> Response:
                refused = access.refusal(request.headers)
                if refused is not None:
                    return self.json({"error": refused[1]}, status=refused[0])
                try:
                    return self.json(await answer(json.loads(await request.text())))
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    return self.json({"error": f"send it as POST /forget's worker does ({error!r})"}, status=400)

        app.page(path)(StepView)

    async def state(document: dict[str, Any]) -> dict[str, Any]:
        """This worker's hooks of one tier."""
        subject = erasure.Subject.from_wire(document["subject"])
        return (await erasure.run_hooks(subject, int(document["tier"]))).wire()

    async def resolve(document: dict[str, Any]) -> dict[str, Any]:
        """The person as this worker's own embedded store knows them (by the stored value)."""
        kind, stored = str(document["kind"]), str(document["value"])
        if kind not in erasure.KINDS:
            raise ValueError(f"kind {kind!r}")
        return {"subject": (await executor.run(erasure.resolve_stored, client, kind, stored)).wire()}

    async def settle(document: dict[str, Any]) -> dict[str, Any]:
        marks = {str(k): int(v) for k, v in document["marks"].items()}
        subject = erasure.Subject.from_wire(document["subject"])
        await erasure.run_settles(marks)
        # a server is shared: the asking worker deletes there; an embedded store is this worker's
        tables = await executor.run(erasure.delete_rows, client, subject) if settings.embedded_clickhouse else {}
        return {"settled": True, "tables": tables}

    app.page("/forget")(ForgetView)
    internal("/forget/state", state)
    internal("/forget/resolve", resolve)
    internal("/forget/settle", settle)

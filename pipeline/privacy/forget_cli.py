"""`touchline forget`: erase one person (see `pipeline.privacy.erasure`), through the running worker
when there is one (its stages drop their state too), else straight in the store."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from pipeline.privacy.erasure import KINDS, placeholder_refusal
from pipeline.privacy.identifiers import is_placeholder

FORGET_BUSY_SECONDS = 120.0
FORGET_BUSY_WAIT = 2.0


@click.command("forget")
@click.option("--kind", type=click.Choice(KINDS), help="Kind of identifier given with --value.")
@click.option("--value", help="The identifier as you know it (a phone number, an e-mail address, ...).")
@click.option("--customer-id", help="Shorthand for --kind customer_id --value <id>.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def forget_command(kind: str | None, value: str | None, customer_id: str | None, fmt: str) -> None:
    """Remove one person from every Touchline table (events, journeys, SLA rows, stage state, dead
    letters) and from the running worker's memory, and say what was removed. KPI aggregates keep
    their counts; Kafka topics keep the messages until their retention ends.

    Example: touchline forget --kind phone --value "+44 20 7946 0000"
    """
    from pipeline.cli import settings_or_exit
    from pipeline.errors import fail
    from pipeline.sql_client import route, worker_health

    if customer_id is not None:
        if kind is not None or value is not None:
            fail("give either --customer-id or --kind with --value", 2)
        kind, value = "customer_id", customer_id
    if kind is None or value is None or not value.strip():
        fail("give --kind and --value (or --customer-id)", 2)
    if is_placeholder(kind, value):
        fail(placeholder_refusal(kind), 2)
    settings = settings_or_exit()
    through = route(settings).worker_url  # the worker holding the embedded store, when one runs
    if through is None and not settings.embedded_clickhouse and worker_health(settings.worker_url):
        through = settings.worker_url  # a worker on a server store: its stages drop their state too
    result = _through_worker(settings, through, kind, value) if through else _in_store(settings, kind, value)
    if fmt == "json":
        click.echo(json.dumps(result))
        return
    subject = result["subject"]
    click.echo(
        f"forgot one person by {subject['kind']}: {subject['contacts']} contacts, {subject['customers']} customers"
    )
    for table, rows in result["tables"].items():
        click.echo(f"  {table:<20} {rows} rows removed")
    if result.get("state"):
        for stage, entries in result["state"].items():
            click.echo(f"  state of {stage:<11} {entries} entries dropped")
        if "workers" in result:
            click.echo(f"  (on {result['workers']} running worker(s))")
    else:
        click.echo("  (no worker running: no in-memory state to drop)")


def _through_worker(settings: Any, url: str, kind: str, value: str) -> dict[str, Any]:
    from pipeline.errors import fail
    from pipeline.privacy.access import client_headers

    request = urllib.request.Request(
        f"{url}/forget",
        data=json.dumps({"kind": kind, "value": value}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **client_headers(settings)},
    )
    # a 503 means a rebalance or restore is under way and nothing was deleted: asked again for up
    # to FORGET_BUSY_SECONDS, as the worker's answer says (erasure is idempotent)
    until = time.monotonic() + FORGET_BUSY_SECONDS
    while True:
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as error:
            reason = error.read().decode(errors="replace").strip()
            if error.code != 503 or time.monotonic() + FORGET_BUSY_WAIT > until:
                fail(f"the worker refused: {reason}")
            click.echo(f"touchline: the worker is busy ({reason}); asking again", err=True)
        time.sleep(FORGET_BUSY_WAIT)


def _in_store(settings: Any, kind: str, value: str) -> dict[str, Any]:
    from pipeline.errors import fail, store_error_message
    from pipeline.privacy import erasure
    from pipeline.privacy.runtime import pseudonymiser_of
    from pipeline.store.clickhouse import StoreError, connect

    try:
        client = connect(settings.clickhouse_url, settings.clickhouse_database, create_database=False)
        subject = erasure.resolve(client, kind, value, pseudonymiser_of(settings))
        tables = erasure.delete_rows(client, subject)
    except StoreError as error:
        fail(store_error_message(error))
    return erasure.Erased(subject, tables, {}).document()

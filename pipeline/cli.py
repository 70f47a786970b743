"""`touchline`: the command line. Each command is a thin adapter over a module of the package."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.errors import fail, port_in_use, store_error_message
from pipeline.sql_client import clickhouse_message, result_columns, route, rows_label, write_table, write_tsv


def quiet_driver() -> None:
    """The ClickHouse driver logs "Unexpected Http Driver Exception" ahead of our one-line cause."""
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as error:
        fail(str(error), 2)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Touchline: live customer-journey and SLA analytics for contact centres.

    Interaction events flow from Kafka (one topic per channel) through a Faust worker into
    ClickHouse. Configuration comes from TOUCHLINE_* environment variables (and
    KAFKA_BOOTSTRAP_SERVERS) or a touchline.toml file; see the README.
    """


@main.command()
@click.option(
    "--with-optional",
    is_flag=True,
    help="Also apply schemas/clickhouse/optional/ (e.g. the read-only analyst role, for a ClickHouse server).",
)
def migrate(with_optional: bool) -> None:
    """Apply pending ClickHouse migrations from schemas/clickhouse/ (each file once)."""
    from pipeline.store.clickhouse import StoreError, connect
    from pipeline.store.migrations import MigrationError, discover
    from pipeline.store.migrations import migrate as run_migrations

    settings = settings_or_exit()
    quiet_driver()
    if with_optional and settings.embedded_clickhouse:
        fail("the optional migrations (the analyst role) need a ClickHouse server with SQL access control", 2)
    if route(settings).worker_url is not None:  # the worker holding this very store
        click.echo("a worker holds the embedded store and applied the migrations when it started")
        return
    try:
        client = connect(settings.clickhouse_url, settings.clickhouse_database)
        applied = run_migrations(client, discover(include_optional=with_optional))
    except (StoreError, MigrationError) as error:
        fail(store_error_message(error))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.option(
    "--web-port",
    type=int,
    default=None,
    help="Port for /metrics, /health and /sql (default from settings: 6066).",
)
@click.option(
    "--role",
    default=None,
    help="Stages to run, comma-separated (default from settings: all). ingest: validate, dead-letter, write raw "
    "events. analytics: KPI windows, SLA clocks. journeys: cross-channel journeys and lookups.",
)
def worker(web_port: int | None, role: str | None) -> None:
    """Run the worker: validate channel events, dead-letter bad ones, write them to ClickHouse, and
    compute KPI windows, SLA clocks and journeys.

    Start more than one (each with its own --web-port) to share the partitions. Ingest and analytics
    read the channel topics in consumer groups of their own (<app_id>-ingest, <app_id>-analytics),
    and the journey stage reads the contacts analytics forwards, so `--role ingest`, `--role
    analytics` and `--role journeys` workers can be scaled separately (`--role ingest,analytics`
    runs two).
    """

    from pipeline.checks import policy_problems
    from pipeline.sla.policy import PolicyError
    from pipeline.store.clickhouse import StoreError
    from pipeline.topics import KafkaAuthenticationError, wait_for_broker

    settings = settings_or_exit(**({"worker_role": role} if role else {}))
    setup_logging(settings.log_level)
    problems = policy_problems(settings.sla_policies_file)  # configuration first: fail before touching Kafka
    if problems:
        fail("invalid SLA policies: " + "\n".join(problems), 2)
    port = web_port or settings.worker_web_port
    taken = port_in_use(settings.worker_web_host, port)
    if taken:
        fail(
            f"web port {settings.worker_web_host}:{port}: {taken} (another worker?); choose another with "
            "--web-port or TOUCHLINE_WORKER_WEB_PORT"
        )
    from pipeline.kafka_security import client_options

    try:
        wait_for_broker(settings.bootstrap_servers, timeout=10, options=client_options(settings))
    except KafkaAuthenticationError as error:
        fail(str(error))
    except Exception as error:
        hint = (
            " (start it with `make run`, or `python -m tools.broker start` in a checkout)"
            if settings.uses_local_broker
            else ""
        )
        fail(f"no Kafka broker at {settings.bootstrap_servers}{hint}: {error}")
    from pipeline.store.clickhouse import close_all
    from pipeline.store.migrations import MigrationError
    from pipeline.worker.app import create_app
    from pipeline.worker.startup import Runner

    try:
        app, startup = create_app(settings, web_port=web_port)
    except (StoreError, MigrationError) as error:
        fail(store_error_message(error))
    except PolicyError as error:
        fail(f"invalid SLA policies in {settings.sla_policies_file}:\n{error}", 2)
    except ConfigError as error:  # e.g. listening beyond loopback without a token
        fail(str(error), 2)
    try:
        runner = Runner(app, startup, loglevel=settings.log_level.upper(), quiet=True)
        # Faust's terminal spinner, at log levels warning and above, sets the root logger to DEBUG
        # (faust/worker.py `_setup_spinner_handler`), so every debug call of every library builds a
        # record: aiokafka logs each message sent. 2 % of an analytics worker's samples (py-spy,
        # `make bench` at log level warning); without the spinner the root keeps the level asked for.
        runner.spinner = None
        # what the imports and the app made lives as long as the process: out of the collector's
        # reach before Faust's first rebalance, whose RocksDB store calls gc.collect() for each
        # table's revoke (0.7 s of a worker's start in py-spy, 0.14 s a collection; session 35)
        gc.freeze()
        runner.execute_from_commandline()
    except SystemExit as done:  # a clean stop: outputs written, checkpoints taken, groups left
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    else:
        code = 0
    # Exit without freeing the heap object by object: with a day of state held that took 8.4 s of
    # a 13.7 s graceful stop in a soak, after the last write. Data is on disk; the store is closed.
    close_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command()
@click.argument("query", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "tsv", "json"]),
    default=None,
    help="table (aligned, every cell in full) on a terminal, tsv when piped, or json. [default: by output]",
)
def sql(query: str | None, fmt: str | None) -> None:
    """Run a read-only SQL QUERY (or read it from stdin) against Touchline's ClickHouse.

    It reads the store the configuration names (TOUCHLINE_DATA_DIR / TOUCHLINE_CLICKHOUSE_DSN) and
    says which on stderr. The embedded store is held by its running worker, so the query goes
    through that worker's /sql, but only when the worker's /health names the same store, database
    and app id; otherwise Touchline opens the store itself. Writes are refused.

    Example: touchline sql "SELECT channel, count() FROM interaction_events FINAL GROUP BY channel"
    """
    from pipeline.privacy.access import client_headers
    from pipeline.privacy.runtime import limits_of
    from pipeline.store.clickhouse import StoreError
    from pipeline.store.readonly import open_readonly, run_readonly

    settings = settings_or_exit()
    quiet_driver()
    text = query if query is not None else sys.stdin.read()
    if not text.strip():
        fail("no query given", 2)
    columns: list[str]
    rows: list[list[Any]]
    target = route(settings)
    click.echo(f"touchline sql: {target.describe()}", err=True)
    if target.worker_url is not None:
        request = urllib.request.Request(
            f"{settings.worker_url}/sql?format=json",
            data=text.encode(),
            method="POST",
            headers=client_headers(settings),
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            fail(clickhouse_message(error.read().decode()))
        columns, rows = body["columns"], body["rows"]
    else:
        try:
            client = open_readonly(settings.clickhouse_url, settings.clickhouse_database, limits_of(settings))
            columns, rows = run_readonly(client, text)
        except StoreError as error:
            fail(store_error_message(error))
        except Exception as error:
            fail(clickhouse_message(str(error)) if str(error) else type(error).__name__)
    if not columns:
        columns = result_columns(settings, target, text, client_headers(settings))
    print_rows(columns, rows, fmt or ("table" if sys.stdout.isatty() else "tsv"))


def print_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str))
        return
    out = click.get_text_stream("stdout")
    if fmt == "tsv":
        write_tsv(columns, rows, out)
        click.echo(f"touchline sql: {rows_label(len(rows))}", err=True)
        return
    write_table(columns, rows, out)


@main.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every generated file that differs.")
def generate(check: bool) -> None:
    """Regenerate every file derived from code: schemas/events/*.json (event models), the KPI DDL
    schemas/clickhouse/0003_kpi_windows.sql (KPI definitions), the README's KPI and configuration
    tables (KPI definitions, settings model), and the Grafana dashboards and alert provisioning."""
    from pipeline import generate as generated

    if check:
        stale = generated.drift()
        if stale:
            lines = [f"  {d.path}: differs from {d.source}" + (f"; {d.note}" if d.note else "") for d in stale]
            fail("generated files are out of date; run `touchline generate`:\n" + "\n".join(lines))
        click.echo(f"{len(generated.render())} generated files match their sources")
        return
    changed = generated.write()
    for path in changed:
        click.echo(f"wrote {path}")
    if not changed:
        click.echo("generated files are up to date")


@main.command(hidden=True)
@click.option("--check", is_flag=True)
@click.pass_context
def schemas(ctx: click.Context, check: bool) -> None:
    """Renamed: `touchline generate`."""
    click.echo("`touchline schemas` is now `touchline generate`", err=True)
    ctx.invoke(generate, check=check)


@main.command()
def check() -> None:
    """Validate the configuration (environment and touchline.toml) and the SLA policy file.

    Prints OK, or one `file:line: problem` per problem and exits 2. Starts nothing.
    """
    from pipeline.checks import config_problems, policy_problems

    path, problems = config_problems()
    if problems:
        fail("configuration is invalid: " + "\n  ".join(problems), 2)
    settings = settings_or_exit()
    policy = policy_problems(settings.sla_policies_file)
    if policy:
        fail("SLA policies are invalid: " + "\n  ".join(policy), 2)
    click.echo(f"OK: configuration ({path or 'environment and defaults, no touchline.toml'})")
    click.echo(f"OK: SLA policies ({settings.sla_policies_file})")


@main.command(name="config")
def config_command() -> None:
    """Print the effective configuration: every setting, its value and where it came from
    (an environment variable, the config file and line, or the default). Secrets are masked."""
    from pipeline.config import config_file, effective_settings

    settings = settings_or_exit()
    path = config_file()
    rows = effective_settings(settings)
    width = max(len(name) for name, _, _ in rows)
    value_width = min(60, max(len(value) for _, value, _ in rows))
    click.echo(f"# configuration file: {path or 'none (touchline.toml not found, TOUCHLINE_CONFIG unset)'}")
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value:<{value_width}}  {source}")


@main.command()
def topics() -> None:
    """Create Touchline's Kafka topics (idempotent) with their partition counts."""
    from pipeline.kafka_security import client_options
    from pipeline.topics import KafkaAuthenticationError, ensure_topics

    settings = settings_or_exit()
    try:
        created = ensure_topics(
            settings.bootstrap_servers,
            settings.topics.specs(settings.topic_partitions, settings.journey_builders),
            configs=settings.topics.configs(settings.journey_builders),
            options=client_options(settings),
        )
    except KafkaAuthenticationError as error:
        fail(str(error))
    except Exception as error:
        fail(f"cannot create topics on {settings.bootstrap_servers}: {error}")
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


def _register() -> None:
    from pipeline.privacy.forget_cli import forget_command
    from pipeline.replay import replay_command
    from pipeline.simulator.cli import simulate_command

    main.add_command(simulate_command)
    main.add_command(replay_command)
    main.add_command(forget_command)


_register()

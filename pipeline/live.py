"""`touchline run`: the local demo. Starts the broker (unless an external one is configured), the
worker and the simulator as child processes, and shows a live terminal view built from the
worker's own /metrics and the rows in ClickHouse. Ctrl-C (or the end of --duration) stops
everything cleanly; the data stays for `touchline sql`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.errors import first_cause, port_in_use
from pipeline.events.models import Channel


@dataclass
class Snapshot:
    at: float
    consumed: dict[str, float] = field(default_factory=dict)
    valid: dict[str, float] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)
    dead: dict[str, float] = field(default_factory=dict)
    duplicates: dict[str, float] = field(default_factory=dict)
    lag: float = 0.0  # of the stage furthest behind
    pending: float = 0.0


def scrape(url: str) -> Snapshot:
    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
        text = response.read().decode()
    snap = Snapshot(at=time.monotonic())
    targets = {
        "touchline_events_consumed": snap.consumed,
        "touchline_events_valid": snap.valid,
        "touchline_events_written": snap.written,
        "touchline_events_deadlettered": snap.dead,
        "touchline_events_duplicate": snap.duplicates,
    }
    lags: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            target = targets.get(family.name)
            if target is not None and sample.name.endswith("_total"):
                channel = sample.labels.get("channel", "?")
                target[channel] = target.get(channel, 0.0) + sample.value
            elif family.name == "touchline_consumer_lag_messages":
                stage = sample.labels.get("stage", "")
                lags[stage] = lags.get(stage, 0.0) + sample.value
            elif family.name == "touchline_pending_rows":
                snap.pending = sample.value
    snap.lag = max(lags.values(), default=0.0)
    return snap


def query(url: str, sql: str) -> list[list[object]]:
    request = urllib.request.Request(f"{url}/sql?format=json", data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        rows: list[list[object]] = json.loads(response.read())["rows"]
    return rows


KPI_QUERY = """
SELECT k.channel, k.n_offered, k.n_answered, k.n_abandoned, k.sl, k.asa, k.n_backlog, b.breaches
FROM (
    SELECT channel, sum(offered) AS n_offered, sum(answered) AS n_answered, sum(abandoned) AS n_abandoned,
           sum(answered_within_sl) / nullIf(sum(answered) + sum(abandoned) - sum(short_abandoned), 0) AS sl,
           arrayAvg(arrayFlatten(groupArray(answer_waits))) AS asa,
           sumIf(backlog, window_start = last) AS n_backlog
    FROM (SELECT *, max(window_start) OVER (PARTITION BY channel) AS last
          FROM kpi_minute WHERE window_start >= (SELECT max(window_start) FROM kpi_minute) - INTERVAL 15 MINUTE)
    GROUP BY channel
) AS k
LEFT JOIN (
    SELECT channel, count() AS breaches FROM sla_events FINAL
    WHERE kind = 'breached' AND at >= (SELECT max(at) FROM sla_events) - INTERVAL 15 MINUTE GROUP BY channel
) AS b ON b.channel = k.channel
ORDER BY k.channel
"""


def kpi_table(rows: list[list[object]]) -> Table:
    """The last 15 minutes of event time: service level, speed of answer, backlog, breaches."""
    table = Table(title="KPIs, last 15 minutes of event time (kpi_minute, sla_events)", expand=True)
    for column in ("channel", "offered", "answered", "abandoned", "service level", "ASA s", "backlog", "breaches"):
        table.add_column(column, justify="right" if column != "channel" else "left")
    for channel, offered, answered, abandoned, sl, asa, backlog, breaches in rows:
        table.add_row(
            str(channel),
            str(offered),
            str(answered),
            str(abandoned),
            "-" if sl is None else f"{float(str(sl)):.1%}",
            "-" if asa is None or asa != asa else f"{float(str(asa)):.1f}",
            str(backlog),
            str(breaches or 0),
        )
    return table


def render(
    first: Snapshot,
    prev: Snapshot,
    now: Snapshot,
    stored: dict[str, int],
    status: str,
    kpis: list[list[object]] | None = None,
) -> Group:
    table = Table(title="Touchline: events by channel", expand=True)
    for column in (
        "channel",
        "read",
        "valid",
        "written/s",
        "written",
        "in ClickHouse",
        "duplicates",
        "dead-lettered",
    ):
        table.add_column(column, justify="right" if column != "channel" else "left")
    span = max(now.at - prev.at, 1e-6)
    for channel in [c.value for c in Channel]:
        rate = (now.written.get(channel, 0) - prev.written.get(channel, 0)) / span
        table.add_row(
            channel,
            f"{now.consumed.get(channel, 0):,.0f}",
            f"{now.valid.get(channel, 0):,.0f}",
            f"{rate:,.1f}",
            f"{now.written.get(channel, 0):,.0f}",
            f"{stored.get(channel, 0):,}",
            f"{now.duplicates.get(channel, 0):,.0f}",
            f"{now.dead.get(channel, 0):,.0f}",
        )
    total_rate = (sum(now.written.values()) - sum(prev.written.values())) / span
    overall = (sum(now.written.values()) - sum(first.written.values())) / max(now.at - first.at, 1e-6)
    summary = (
        f"throughput {total_rate:,.0f} events/s now, {overall:,.0f} events/s on average   "
        f"consumer lag {now.lag:,.0f}   {status}"
    )
    return Group(table, kpi_table(kpis or []), Panel(summary, title="pipeline"))


@contextmanager
def child(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        yield process
    finally:
        stop_child(process)


def stop_child(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_worker(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120, offset: int = 0
) -> None:
    """Wait until the worker has partitions; if it exits, the first line says why (from its log after `offset`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[offset:]
            cause = first_cause(text)
            tail = text.splitlines()[-20:]
            headline = f"the worker exited while starting: {cause}" if cause else "the worker exited while starting"
            raise click.ClickException(f"{headline}\n(full log: {log})\n" + "\n".join(tail))
        with suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            if json.loads(response.read()).get("assigned_partitions", 0) > 0:
                return
        time.sleep(0.5)
    raise click.ClickException(f"the worker did not become ready in {timeout:.0f} s; see {log}")


class WallDuration(click.ParamType):
    """The simulator's duration syntax (`90s`, `10m`, `1h30m`, `45`), in seconds."""

    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from pipeline.simulator.cli import parse_duration

        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value)) / 1000.0
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.command(name="run")
@click.option(
    "--duration",
    type=WallDuration(),
    default=None,
    help="Stop by itself after this much wall-clock time: 90s, 10m, 1h30m, or a number of seconds.",
)
@click.option("--speed", type=float, default=1.0, show_default=True, help="Simulated seconds per wall-clock second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulator seed.")
@click.option(
    "--rate",
    type=float,
    default=None,
    help="Simulator contacts per hour at peak (simulator default if unset).",
)
def run_command(duration: float | None, speed: float, seed: int, rate: float | None) -> None:
    """Local demo: broker + worker + traffic simulator, with a live view. Ctrl-C stops it all.

    Logs go to <data dir>/logs/. Afterwards, query the data with `touchline sql`.
    """
    from pipeline import broker
    from pipeline.checks import policy_problems
    from pipeline.events.topics import topic_specs
    from pipeline.kafka_security import client_options
    from pipeline.topics import ensure_topics

    try:
        settings: Settings = load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    problems = policy_problems(settings.sla_policies_file)
    if problems:
        raise click.ClickException("invalid SLA policies: " + "\n".join(problems))
    taken = port_in_use(settings.worker_web_host, settings.worker_web_port)
    if taken:
        raise click.ClickException(
            f"the worker's web port {settings.worker_web_host}:{settings.worker_web_port}: {taken} "
            "(another `make run` or worker?); set TOUCHLINE_WORKER_WEB_PORT to another port"
        )
    logs = settings.data_dir / "logs"
    started_broker = False
    if settings.uses_local_broker:
        kafka_dir = settings.data_dir / "kafka"
        already = broker.status(kafka_dir).running
        click.echo(
            "starting the local Kafka broker (first start resolves Kafka from Maven Central)..."
            if not already
            else "local Kafka broker is running"
        )
        try:
            broker.start(kafka_dir, port=settings.local_kafka_port)
        except broker.BrokerError as error:
            raise click.ClickException(str(error)) from None
        started_broker = not already
    ensure_topics(settings.bootstrap_servers, topic_specs(settings.topic_partitions), options=client_options(settings))
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        simulated = f"{(duration or 30 * 86400) * max(speed, 1.0):.0f}s"
        # a flat arrival profile so the demo is lively at any hour; `touchline simulate` defaults to the daily one
        sim_args = [
            "simulate",
            "--seed",
            str(seed),
            "--speed",
            str(speed),
            "--duration",
            simulated,
            "--profile",
            "flat",
        ]
        if rate is not None:
            sim_args += ["--rate", str(rate)]
        # simulated time runs `speed` times faster than the wall clock: SLA deadlines must then
        # follow event time, as when replaying history
        worker_env = {} if speed == 1 else {"TOUCHLINE_SLA_CLOCK": "event", "TOUCHLINE_KPI_IDLE_SECONDS": "5"}
        worker_log = logs / "worker.log"
        offset = worker_log.stat().st_size if worker_log.exists() else 0
        with child(["worker"], worker_log, worker_env) as worker_process:
            click.echo(f"starting the worker (log: {worker_log})...")
            wait_for_worker(settings.worker_url, worker_process, worker_log, offset=offset)
            with child(sim_args, logs / "simulator.log") as sim_process:
                watch(settings, worker_process, sim_process, duration, lambda: interrupted)
            click.echo("stopping the worker...")
    finally:
        signal.signal(signal.SIGINT, previous)
        if started_broker:
            click.echo("stopping the local Kafka broker...")
            broker.stop(settings.data_dir / "kafka")
    click.echo(f"done. Data is in {settings.clickhouse_url}; try:")
    click.echo('  touchline sql "SELECT channel, count() FROM interaction_events FINAL GROUP BY channel"')


def watch(
    settings: Settings,
    worker_process: subprocess.Popen[bytes],
    sim_process: subprocess.Popen[bytes],
    duration: float | None,
    interrupted: object,
) -> None:
    url = settings.worker_url
    started = time.monotonic()
    first = prev = scrape(url)
    stored: dict[str, int] = {}
    drained_since: float | None = None
    with Live(render(first, prev, prev, stored, "starting"), refresh_per_second=2, screen=False) as live:
        while True:
            time.sleep(1.0)
            if callable(interrupted) and interrupted():
                break
            if worker_process.poll() is not None:
                raise click.ClickException(
                    f"the worker stopped unexpectedly; see {settings.data_dir / 'logs' / 'worker.log'}"
                )
            try:
                now = scrape(url)
                stored = {
                    str(c): int(str(n))
                    for c, n in query(url, "SELECT channel, count() FROM interaction_events GROUP BY channel")
                }
                kpis = query(url, KPI_QUERY)
            except OSError:
                continue
            elapsed = time.monotonic() - started
            sim_done = sim_process.poll() is not None
            status = f"running {elapsed:,.0f} s" + (f" of {duration:,.0f} s" if duration else "  (Ctrl-C to stop)")
            if sim_done:
                status += "   simulator finished"
            live.update(render(first, prev, now, stored, status, kpis))
            # stop once time is up and the worker has written everything it was sent
            caught_up = sim_done and now.pending == 0 and sum(now.written.values()) == sum(prev.written.values())
            if (duration is not None and elapsed >= duration) or sim_done:
                drained_since = drained_since or time.monotonic()
                if caught_up or time.monotonic() - drained_since > 30:
                    break
            prev = now

"""`python -m tools.run` (what `make run` calls): the local demo. Starts the broker (unless an
external one is configured), the worker and the simulator as child processes, and shows a live
terminal view built from the worker's own /metrics and the rows in ClickHouse. Ctrl-C (or the end
of --duration) stops everything cleanly; the data stays for `touchline sql`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.live import Live

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.errors import first_cause, port_in_use
from pipeline.store.clickhouse import redact
from tools.live_view import Board, query, read_board, render, scrape


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
@click.option(
    "--fresh",
    is_flag=True,
    help="Start from an empty store: delete the data directory's ClickHouse store, worker tables and local "
    "Kafka data first. Without it a rerun continues the data already there.",
)
def run_command(duration: float | None, speed: float, seed: int, rate: float | None, fresh: bool) -> None:
    """Local demo: broker + worker + traffic simulator, with a live view. Ctrl-C stops it all.

    Simulated time never runs ahead of the wall clock: at --speed N > 1 the simulation starts in the
    past and catches up with now. A rerun continues the data already in the store (the simulation
    then starts after its newest event, so nothing is late) unless --fresh is given; it says which.
    Logs go to <data dir>/logs/. Afterwards, query the data with `touchline sql`.
    """
    from pipeline.checks import policy_problems
    from pipeline.kafka_security import client_options
    from pipeline.topics import KafkaAuthenticationError, ensure_topics
    from tools import broker

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
    if fresh:
        click.echo(start_fresh(settings))
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
    try:
        ensure_topics(
            settings.bootstrap_servers,
            settings.topics.specs(settings.topic_partitions),
            options=client_options(settings),
        )
    except KafkaAuthenticationError as error:
        raise click.ClickException(str(error)) from None
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    late = 0
    try:
        # simulated time runs `speed` times faster than the wall clock: SLA deadlines must then
        # follow event time, as when replaying history
        worker_env = {} if speed == 1 else {"TOUCHLINE_SLA_CLOCK": "event", "TOUCHLINE_KPI_IDLE_SECONDS": "5"}
        worker_log = logs / "worker.log"
        offset = worker_log.stat().st_size if worker_log.exists() else 0
        with child(["worker"], worker_log, worker_env) as worker_process:
            click.echo(f"starting the worker (log: {worker_log})...")
            wait_for_worker(settings.worker_url, worker_process, worker_log, offset=offset)
            start, message = simulation_start(settings, duration, speed)
            click.echo(message)
            # a flat arrival profile so the demo is lively at any hour; `touchline simulate` defaults to the daily one
            sim_args = ["simulate", "--seed", str(seed), "--speed", str(speed), "--profile", "flat"]
            sim_args += [
                "--start",
                start.isoformat(),
                "--duration",
                f"{(duration or 30 * 86400) * max(speed, 1.0):.0f}s",
            ]
            if rate is not None:
                sim_args += ["--rate", str(rate)]
            with child(sim_args, logs / "simulator.log") as sim_process:
                late = watch(settings, worker_process, sim_process, duration, lambda: interrupted)
            click.echo("stopping the worker...")
    finally:
        signal.signal(signal.SIGINT, previous)
        if started_broker:
            click.echo("stopping the local Kafka broker...")
            broker.stop(settings.data_dir / "kafka")
    click.echo(
        f"late events this run: {late:,}"
        + (
            f" (they arrived behind the watermark: stored raw and on {settings.topics.late}, left out of the KPIs)"
            if late
            else ""
        )
    )
    click.echo(f"done. Data is in {settings.clickhouse_url}; try:")
    click.echo('  touchline sql "SELECT channel, count() FROM interaction_events FINAL GROUP BY channel"')


def watch(
    settings: Settings,
    worker_process: subprocess.Popen[bytes],
    sim_process: subprocess.Popen[bytes],
    duration: float | None,
    interrupted: object,
) -> int:
    """Refresh the live view every second until the time is up (and the worker has caught up), the
    simulator is done, or Ctrl-C. Returns the late events counted by the worker in this run."""
    url = settings.worker_url
    started = time.monotonic()
    first = prev = now = scrape(url)
    board = Board()
    drained_since: float | None = None
    with Live(render(first, prev, prev, board, "starting"), refresh_per_second=2, screen=False) as live:
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
                board = read_board(url)
            except OSError:
                continue
            elapsed = time.monotonic() - started
            sim_done = sim_process.poll() is not None
            status = f"running {elapsed:,.0f} s" + (f" of {duration:,.0f} s" if duration else "  (Ctrl-C to stop)")
            if sim_done:
                status += "   simulator finished"
            live.update(render(first, prev, now, board, status))
            # stop once time is up and the worker has written everything it was sent
            caught_up = sim_done and now.pending == 0 and sum(now.written.values()) == sum(prev.written.values())
            if (duration is not None and elapsed >= duration) or sim_done:
                drained_since = drained_since or time.monotonic()
                if caught_up or time.monotonic() - drained_since > 30:
                    break
            prev = now
    return now.late_total - first.late_total


def simulation_start(settings: Settings, duration: float | None, speed: float) -> tuple[datetime, str]:
    """Where simulated time starts, and the sentence saying whether this run continues the store.

    Never ahead of the wall clock: at speed N > 1 the simulation starts (duration or 1 h) x (N - 1)
    in the past so it reaches now as the run ends. A store holding events from an earlier run is
    continued after its newest event, so none of this run's events falls behind its watermark."""
    now = datetime.now(UTC).replace(microsecond=0)
    horizon = duration or 3600.0
    start = now - timedelta(seconds=horizon * max(speed - 1.0, 0.0))
    rows = query(settings.worker_url, "SELECT count(), max(occurred_at) FROM interaction_events")
    count = int(str(rows[0][0])) if rows else 0
    if count == 0:
        return (
            start,
            f"fresh store ({redact(settings.clickhouse_url)}): simulated time starts at {start:%Y-%m-%d %H:%M:%S} UTC",
        )
    newest = datetime.fromisoformat(str(rows[0][1]).replace("Z", "+00:00")).astimezone(UTC)
    message = (
        f"continuing the store at {redact(settings.clickhouse_url)}: {count:,} events, the newest at "
        f"{newest:%Y-%m-%d %H:%M:%S} UTC"
    )
    if newest >= start:
        start = (newest + timedelta(seconds=1)).replace(microsecond=0)
        message += f"; simulated time starts after it, at {start:%H:%M:%S}, so no event of this run is late"
        if speed > 1 and (now - start).total_seconds() < horizon * (speed - 1) / 2:
            message += (
                " (event time may not run ahead of the wall clock, so after catching up the simulation runs in "
                "real time; `--fresh`, i.e. `make run FRESH=1`, starts from an empty store)"
            )
    else:
        message += f"; simulated time starts at {start:%Y-%m-%d %H:%M:%S} UTC"
    return start, message


def start_fresh(settings: Settings) -> str:
    """Delete what a run keeps (ClickHouse store, worker tables, local Kafka data); logs stay."""
    from tools import broker

    if settings.uses_local_broker:
        broker.stop(settings.data_dir / "kafka")
    removed = []
    for part in ["clickhouse", "faust"] + (["kafka"] if settings.uses_local_broker else []):
        path = settings.data_dir / part
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    if not settings.embedded_clickhouse:
        return "--fresh: the ClickHouse server's tables are not touched (drop the database yourself); removed " + (
            ", ".join(removed) or "nothing"
        )
    return "starting fresh: removed " + (", ".join(removed) if removed else "nothing (no earlier run here)")


if __name__ == "__main__":
    run_command(prog_name="python -m tools.run")

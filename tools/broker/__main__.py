"""`python -m tools.broker start|stop|status`: start, stop and inspect the local single-node Kafka broker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from pipeline.errors import fail
from pipeline.topics import probe_broker
from tools.broker import KAFKA_VERSION, BrokerError, BrokerPaths, classpath_is_cached, start, status, stop

PROG = "python -m tools.broker"
DATA_DIR_HELP = (
    "Directory for the broker's data, logs, pid file and rendered config. "
    "[default: $TOUCHLINE_DATA_DIR/kafka, i.e. .touchline/kafka]"
)


def default_data_dir() -> Path:
    return Path(os.environ.get("TOUCHLINE_DATA_DIR", ".touchline")) / "kafka"


def _data_dir(value: Path | None) -> Path:
    return value if value is not None else default_data_dir()


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=DATA_DIR_HELP,
)


@click.group(name="broker")
def broker_group() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for development.

    The broker's jars are resolved from Maven Central with `mvn` (first start
    only, then cached) and run on the local JDK 17+. It listens on 127.0.0.1
    only. Set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster instead.
    """


@broker_group.command(name="start")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=9092,
    show_default=True,
    envvar="TOUCHLINE_LOCAL_KAFKA_PORT",
    help="Client port on 127.0.0.1 (env: TOUCHLINE_LOCAL_KAFKA_PORT).",
)
@click.option(
    "--controller-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="KRaft controller port on 127.0.0.1. [default: any free port]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the broker to answer (not counting Maven's first download).",
)
@data_dir_option
def start_command(port: int, controller_port: int | None, timeout: float, data_dir: Path | None) -> None:
    """Start the broker in the background and wait until it answers.

    Does nothing if this data dir's broker is already running. The first start
    formats the storage; data survives `stop` and later starts (delete the
    data dir to start from scratch). Logs: <data-dir>/broker.log and
    <data-dir>/logs/server.log.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        click.echo(
            f"KAFKA_BOOTSTRAP_SERVERS is set ({external}): using that external cluster, not starting a local broker."
        )
        return
    directory = _data_dir(data_dir)
    paths = BrokerPaths(directory)
    before = status(directory)
    if not before.running and not classpath_is_cached(paths):
        click.echo("Resolving Kafka with Maven (first start only; may take a minute)...")
    began = time.monotonic()
    try:
        bootstrap = start(directory, port=port, controller_port=controller_port, timeout=timeout)
    except BrokerError as error:
        fail(str(error), prog=PROG)
    after = status(directory)
    pid = f"pid {after.pid}" if after.pid is not None else "pid unknown"
    if before.running:
        click.echo(f"Kafka is already running at {bootstrap} ({pid}, data {after.data_dir}).")
    else:
        click.echo(
            f"Kafka {KAFKA_VERSION} is ready at {bootstrap} ({pid}, data {after.data_dir}, "
            f"started in {time.monotonic() - began:.1f} s)."
        )
        click.echo(
            f"Logs: {after.log_file} and {paths.log_dir / 'server.log'}. Stop it with `python -m tools.broker stop`."
        )


@broker_group.command(name="stop")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for a clean shutdown before killing the broker.",
)
@data_dir_option
def stop_command(timeout: float, data_dir: Path | None) -> None:
    """Stop the broker (clean shutdown; killed after --timeout). Data is kept."""
    directory = _data_dir(data_dir)
    before = status(directory)
    try:
        stopped = stop(directory, timeout=timeout)
    except BrokerError as error:
        fail(str(error), prog=PROG)
    if stopped:
        click.echo(f"Stopped Kafka (pid {before.pid}).")
    else:
        click.echo(f"No local Kafka broker is running for {BrokerPaths(directory).base}.")


@broker_group.command(name="status")
@data_dir_option
def status_command(data_dir: Path | None) -> None:
    """Show whether the broker is running, its pid and its bootstrap address."""
    directory = _data_dir(data_dir)
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        click.echo(f"KAFKA_BOOTSTRAP_SERVERS is set: Touchline uses the external cluster at {external}.")
    try:
        info = status(directory)
    except BrokerError as error:
        fail(str(error), prog=PROG)
    if not info.running:
        click.echo(f"Local Kafka: not running (data {info.data_dir}). Start it with `python -m tools.broker start`.")
        return
    answering = info.bootstrap is not None and probe_broker(info.bootstrap, timeout=3.0)
    state = "answering" if answering else "not answering yet"
    click.echo(f"Local Kafka: running, pid {info.pid}, bootstrap {info.bootstrap} ({state}), data {info.data_dir}.")
    click.echo(f"Log: {info.log_file}")


if __name__ == "__main__":
    broker_group(prog_name=PROG)

"""The journey stage in the worker, from a backlog: contacts/s through a real broker, then the restore.

    .venv/bin/python -m benchmarks.journey_worker --days 1 --builders 4

Simulated days of contact records (as the analytics stage forwards them: `forward_messages`, one
message per batch of `--batch` events, with the identity header) are written to
`touchline.journey-events` of a fresh broker before a worker `--role journeys` starts, so the
stage reads a backlog as fast as it can: the wall time until every record is applied and every
partition's lag is 0 gives the stage's contacts/s in the worker (Kafka reads and sends, journey
rows into embedded ClickHouse, changelogged state), and the resolver's busy time its partition's
rate (`touchline_journey_round_seconds_total`). `--builders 0` runs the single stage. Then the
worker is stopped (SIGINT) and started again: the restore time of the state it held
(`touchline_journey_restore_seconds`) and the time until a lookup of a known customer answers.
The worker runs the settings' journey windows (7-day repeat window, 30-day identity retention):
nothing is evicted within a week, so `--days 7` restores a week's state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from kafka import KafkaProducer

from benchmarks.bench import free_port, metrics, raw_metrics, start_worker
from benchmarks.soak import wait_partitions
from pipeline.events.topics import DEFAULT_TOPICS
from pipeline.journeys.model import DAY
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.topics import ensure_topics
from pipeline.worker import journeys as stage
from tools import broker


def backlog(
    days: float, rate: float, customers: int, batch: int, seed: int
) -> tuple[list[tuple[bytes, bytes, dict[str, bytes]]], int, int, str]:
    """The forwarded messages of `days` simulated days, their record count, contacts, a customer id."""
    config = SimConfig(
        seed=seed, start_ms=to_ms(datetime(2026, 3, 2, tzinfo=UTC)), duration_ms=int(days * DAY), rate=rate,
        customers=customers,
    )  # fmt: skip
    messages: list[tuple[bytes, bytes, dict[str, bytes]]] = []
    pending = []
    contacts: set[str] = set()
    customer = ""
    for _, event in Simulation(config).run():
        pending.append(event)
        contacts.add(event.contact_id)
        customer = customer or (event.customer.customer_id or "")
        if len(pending) >= batch:
            messages += stage.forward_messages(pending)
            pending = []
    messages += stage.forward_messages(pending)
    records = sum(value.count(b"\n") + 1 for _, value, _ in messages)
    return messages, records, len(contacts), customer


def lookup_answers(url: str, customer: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"{url}/journeys/lookup?kind=customer_id&value={customer}", timeout=30) as r:
                if json.loads(r.read()).get("customer"):
                    return time.monotonic() - started
        except (urllib.error.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise click.ClickException(f"no lookup answer in {timeout:.0f} s")


@click.command()
@click.option("--days", type=float, default=1.0, show_default=True, help="Simulated days in the backlog.")
@click.option("--rate", type=float, default=4000.0, show_default=True, help="Simulator rate (as make soak).")
@click.option("--customers", type=int, default=20_000, show_default=True)
@click.option("--batch", type=int, default=5000, show_default=True, help="Events per analytics batch.")
@click.option("--builders", type=int, default=4, show_default=True, help="TOUCHLINE_JOURNEY_BUILDERS (0: single).")
@click.option("--seed", type=int, default=7, show_default=True)
def main(days: float, rate: float, customers: int, batch: int, builders: int, seed: int) -> None:
    began = time.monotonic()
    messages, records, contacts, customer = backlog(days, rate, customers, batch, seed)
    click.echo(
        f"backlog: {records:,} contact records of {contacts:,} contacts in {len(messages):,} messages "
        f"({days:g} simulated days at rate {rate:g}; built in {time.monotonic() - began:.0f} s)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="touchline-journey-bench-"))
    data = workdir / "broker"
    bootstrap = broker.start(data, port=free_port(), controller_port=free_port())
    worker: subprocess.Popen[bytes] | None = None
    finished = False
    try:
        topic = DEFAULT_TOPICS.journey_events
        ensure_topics(bootstrap, {topic: 1})
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024)
        for key, value, headers in messages:
            producer.send(topic, value=value, key=key, headers=list(headers.items()), partition=0)
        producer.flush()
        producer.close()
        last = len(messages) - 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            TOUCHLINE_DATA_DIR=str(workdir / "data"),
            TOUCHLINE_APP_ID=f"touchline-journey-bench-{uuid.uuid4().hex[:6]}",
            TOUCHLINE_JOURNEY_BUILDERS=str(builders),
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        worker = start_worker(env, port, "journeys", workdir / "worker.log")
        wait_partitions(url, worker, 300)
        reading = time.monotonic()

        def caught_up() -> bool:
            m = raw_metrics(url)
            lags = [v for k, v in m.items() if k.startswith("touchline_consumer_lag_messages{") and "journeys" in k]
            return m.get("touchline_journey_offset", -1) >= last and bool(lags) and not any(lags)

        while not caught_up():
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited; its log: {workdir / 'worker.log'}")
            time.sleep(0.5)
        wall = time.monotonic() - reading
        m = metrics(url)
        busy = m.get("touchline_journey_round_seconds_total", 0.0)
        builders_busy = m.get("touchline_journey_builder_round_seconds_total", 0.0)
        click.echo(
            f"journeys worker ({'split: ' + str(builders) + ' builders' if builders else 'single stage'}): "
            f"{records:,} records in {wall:.1f} s from its first partition (started {reading - started:.1f} s "
            f"after launch): {records / wall:,.0f} records/s, {contacts / wall:,.0f} contacts/s through the worker"
        )
        click.echo(
            f"  {'resolver' if builders else 'stage'} busy {busy:.1f} s: {records / max(busy, 1e-9):,.0f} records/s "
            f"while busy" + (f"; builders busy {builders_busy:.1f} s (all held here)" if builders else "")
        )
        click.echo(f"  largest hand-over {m.get('touchline_journey_handover_bytes_max', 0):,.0f} bytes")
        rss = int(Path(f"/proc/{worker.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        click.echo(f"  RSS {rss:.0f} MB")
        os.killpg(worker.pid, signal.SIGINT)
        worker.wait(120)
        relaunched = time.monotonic()
        worker = start_worker(env, port, "journeys", workdir / "worker-restart.log")
        to_partitions = wait_partitions(url, worker, 300)
        answered = lookup_answers(url, customer, 120)
        total = time.monotonic() - relaunched
        time.sleep(2)
        restore = metrics(url).get("touchline_journey_restore_seconds")
        click.echo(
            f"restart: partitions after {to_partitions:.1f} s, a lookup of a known customer answered "
            f"{answered:.1f} s later ({total:.1f} s after launch); restore of the state "
            f"(touchline_journey_restore_seconds) {restore} s"
        )
        finished = True
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        broker.stop(data)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            click.echo(f"logs kept in {workdir}")


if __name__ == "__main__":
    main()

"""The journey stage in the worker, from a backlog: contacts/s through a real broker, then the restore.

    .venv/bin/python -m benchmarks.journey_worker --days 1 --builders 4

Simulated days of contact records (as the analytics stage forwards them: `forward_messages`, one
message per batch of `--batch` events, with the identity header) are written to
`touchline.journey-events` of a fresh broker at once, once a worker `--role journeys` holds the
stage's partitions, so the stage reads a backlog as fast as it can: the wall time until every record is applied and every
partition's lag is 0 gives the stage's contacts/s in the worker (Kafka reads and sends, journey
rows into embedded ClickHouse, changelogged state), and the resolver's busy time its partition's
rate (`touchline_journey_round_seconds_total`). `--builders 0` runs the single stage; `--workers N` shares the stage
between N workers (the builders spread over them; Faust gives partitions of topics with as many
partitions to the same worker, so with `--builders 1` one worker holds both); the worker holding the
resolver is then killed (SIGKILL) and the takeover by the others timed (`--standby`: how many standby
replicas of each state partition the workers keep, TOUCHLINE_TABLE_STANDBY_REPLICAS). With one worker it is then
stopped (SIGINT) and started again: the restore time of the state it held
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


def takeover(running: list[subprocess.Popen[bytes]], urls: list[str], partitions: int, customer: str) -> None:
    """SIGKILL the worker holding the resolver (or single stage); the time until the others hold
    every partition and one answers a lookup of a known customer."""
    offsets = [metrics(url).get("touchline_journey_offset", -1) for url in urls]
    dead = max(range(len(urls)), key=lambda n: offsets[n])
    survivors = [url for n, url in enumerate(urls) if n != dead]
    os.killpg(running[dead].pid, signal.SIGKILL)
    running[dead].wait()
    killed = time.monotonic()
    while sum(metrics(url).get("touchline_journey_partitions", 0) for url in survivors) != partitions:
        if time.monotonic() - killed > 300:
            raise click.ClickException("the surviving workers did not take every partition over in 300 s")
        time.sleep(0.1)
    held = time.monotonic() - killed
    answered = lookup_answers(survivors[0], customer, 300)
    restore = max(metrics(url).get("touchline_journey_restore_seconds", 0.0) for url in survivors)
    click.echo(
        f"takeover: the resolver's worker killed (SIGKILL); the others held every partition after {held:.1f} s "
        f"(the group notices a dead member after the session timeout), a lookup answered {answered:.1f} s later "
        f"({held + answered:.1f} s after the kill); their last restore (touchline_journey_restore_seconds) {restore} s"
    )


@click.command()
@click.option("--days", type=float, default=1.0, show_default=True, help="Simulated days in the backlog.")
@click.option("--rate", type=float, default=4000.0, show_default=True, help="Simulator rate (as make soak).")
@click.option("--customers", type=int, default=20_000, show_default=True)
@click.option("--batch", type=int, default=5000, show_default=True, help="Events per analytics batch.")
@click.option("--builders", type=int, default=4, show_default=True, help="TOUCHLINE_JOURNEY_BUILDERS (0: single).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Journeys workers sharing the stage.")
@click.option("--standby", type=int, default=None, help="TOUCHLINE_TABLE_STANDBY_REPLICAS (default: the setting's).")
def main(
    days: float, rate: float, customers: int, batch: int, builders: int, seed: int, workers: int, standby: int | None
) -> None:
    began = time.monotonic()
    messages, records, contacts, customer = backlog(days, rate, customers, batch, seed)
    click.echo(
        f"backlog: {records:,} contact records of {contacts:,} contacts in {len(messages):,} messages "
        f"({days:g} simulated days at rate {rate:g}; built in {time.monotonic() - began:.0f} s)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="touchline-journey-bench-"))
    data = workdir / "broker"
    bootstrap = broker.start(data, port=free_port(), controller_port=free_port())
    running: list[subprocess.Popen[bytes]] = []
    finished = False
    try:
        topic = DEFAULT_TOPICS.journey_events
        ensure_topics(bootstrap, {topic: 1})
        last = len(messages) - 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            TOUCHLINE_APP_ID=f"touchline-journey-bench-{uuid.uuid4().hex[:6]}",
            TOUCHLINE_JOURNEY_BUILDERS=str(builders),
        )
        if standby is not None:
            env["TOUCHLINE_TABLE_STANDBY_REPLICAS"] = str(standby)
        ports = [free_port() for _ in range(workers)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        envs = [{**env, "TOUCHLINE_DATA_DIR": str(workdir / f"data-{n}")} for n in range(workers)]
        started = time.monotonic()
        running = [start_worker(envs[n], ports[n], "journeys", workdir / f"worker-{n}.log") for n in range(workers)]
        wait_partitions(urls[0], running[0], 300)  # Faust may give another worker nothing to hold
        partitions = builders + 1 if builders else 1
        while sum(metrics(url).get("touchline_journey_partitions", 0) for url in urls) != partitions:
            if time.monotonic() - started > 300:
                raise click.ClickException("the workers did not hold every partition of the stage in 300 s")
            time.sleep(0.2)  # every partition held (the group settled) before the backlog comes
        reading = time.monotonic()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024)
        for key, value, headers in messages:
            producer.send(topic, value=value, key=key, headers=list(headers.items()), partition=0)
        producer.flush()
        producer.close()

        resolved: list[float | None] = [None]  # when the resolver (or single stage) applied the last message

        def caught_up() -> bool:
            samples = [raw_metrics(url) for url in urls]
            lags = [
                v
                for m in samples
                for k, v in m.items()
                if k.startswith("touchline_consumer_lag_messages{") and 'stage="journeys"' in k
            ]
            offset = max(m.get("touchline_journey_offset", -1) for m in samples)
            if offset >= last and resolved[0] is None:
                resolved[0] = time.monotonic() - reading
            if not builders:  # the single stage's last round is its last offset
                return offset >= last
            return offset >= last and len(lags) == partitions and not any(lags)

        while not caught_up():
            if time.monotonic() - reading > 900:
                raise click.ClickException(f"the workers did not apply the backlog in 900 s; logs in {workdir}")
            for process in running:
                if process.poll() is not None:
                    raise click.ClickException(f"a worker exited; logs in {workdir}")
            time.sleep(0.2)
        wall = time.monotonic() - reading
        each = [metrics(url) for url in urls]
        busy = sum(m.get("touchline_journey_round_seconds_total", 0.0) for m in each)
        on_loop = sum(m.get("touchline_journey_resolver_loop_seconds_total", 0.0) for m in each)
        builders_busy = [m.get("touchline_journey_builder_round_seconds_total", 0.0) for m in each]
        held = [int(m.get("touchline_journey_partitions", 0)) for m in each]
        stage = f"split: {builders} builders" if builders else "single stage"
        click.echo(
            f"journeys workers: {workers} ({stage}; partitions held: {held}): {records:,} records in {wall:.1f} s "
            f"from the backlog's first message (every partition held {reading - started:.1f} s after launch): "
            f"{records / wall:,.0f} records/s, {contacts / wall:,.0f} contacts/s through the workers"
        )
        click.echo(
            f"  {'resolver' if builders else 'stage'} busy {busy:.1f} s: {records / max(busy, 1e-9):,.0f} records/s "
            f"while busy" + (f"; builders busy {', '.join(f'{b:.1f}' for b in builders_busy)} s" if builders else "")
        )
        if builders and on_loop:
            paused = sum(m.get("touchline_gc_pause_seconds_sum", 0.0) for m in each)
            click.echo(
                f"  the resolver's own steps on the loop {on_loop:.1f} s: {records / on_loop:,.0f} records/s, "
                f"{contacts / on_loop:,.0f} contacts/s its partition handles with a core of its own (the "
                f"worker's collector paused {paused:.1f} s in all, in any task's steps)"
            )
        if builders and resolved[0] is not None:
            click.echo(
                f"  the resolver applied the last message after {resolved[0]:.1f} s: "
                f"{records / resolved[0]:,.0f} records/s, {contacts / resolved[0]:,.0f} contacts/s on its partition"
            )
        click.echo(
            f"  largest hand-over {max(m.get('touchline_journey_handover_bytes_max', 0) for m in each):,.0f} bytes"
        )
        click.echo(
            "  producer: batches handed over again "
            f"{sum(m.get('touchline_producer_handover_retries_total', 0) for m in each):,.0f}, journey outputs "
            f"retried {sum(m.get('touchline_journey_flush_retries_total', 0) for m in each):,.0f}"
        )
        rss = [int(Path(f"/proc/{p.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024 for p in running]
        click.echo(f"  RSS {', '.join(f'{r:.0f}' for r in rss)} MB")
        if workers > 1:  # the restore is measured with one worker holding everything
            takeover(running, urls, partitions, customer)
            finished = True
            return
        worker, port, url = running[0], ports[0], urls[0]
        env = envs[0]
        os.killpg(worker.pid, signal.SIGINT)
        worker.wait(120)
        relaunched = time.monotonic()
        worker = start_worker(env, port, "journeys", workdir / "worker-restart.log")
        running.append(worker)
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
        for process in running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        broker.stop(data)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            click.echo(f"logs kept in {workdir}")


if __name__ == "__main__":
    main()

"""`make bench`: ingest throughput and latency against a real broker, in one run.

1. The simulator produces at least N events (as fast as possible) into fresh channel topics.
2. Raw pass: an aiokafka consumer reads every message of those topics and does nothing else; a bare
   Faust agent (count and ack) reads them too, and, when `.venv-quix` exists (`make bench-quix-env`),
   the quix-streams contender (benchmarks/quix_contender.py: count only; pydantic validation and a
   1-minute tumbling count per queue, no ClickHouse sink).
3. Ingest pass: a real `touchline worker --role ingest` (fresh consumer group, fresh embedded
   ClickHouse) reads the same messages, validates and writes them; the rate is measured from its
   first read to its last write. This is the ingest path the throughput target is set for. Then
   an ingest worker on topics of its own (another prefix) gets fresh events at
   `--ingest-latency-rate` (5,000/s): its end-to-end latency at that load.
   Analytics pass: `touchline worker --role analytics` alone reads them too and applies every valid
   one to the KPI windows and SLA clocks (rows into its own store, the journey forward on the
   topic); the rate is measured from its first event applied to its last.
4. Whole-worker pass: `touchline worker --role all` does the same and also applies every event to
   the KPI windows and SLA clocks and forwards it to the journey stage; both rates are reported.
5. Latency, breach-detection and open-contact passes on the whole worker, once its journey stage has
   caught up with the contact records of step 4 (the time it took is printed): fresh events stamped with
   the wall clock at a steady rate below capacity give p50/p99 end-to-end latency
   (`ingested_at - occurred_at`); never-answered calls give the delay of breach detection.
6. Load pass (`--load-rate`, 5,000/s): an ingest worker and an analytics worker on topics of their
   own, simulated traffic generated beforehand and sent at its own times in real time; among it,
   the breach pass's never-answered calls (breach delay under load) and a 200/s latency probe.
7. Profile, after the broker is stopped: benchmarks/steps.py's µs per event of each step of the ingest
   and analytics stages (in-process), beside the raw pass's consume cost per event.
Peak RSS is the worker process's VmHWM. `--skip` leaves passes out for quick checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from pathlib import Path
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaAdminClient, KafkaProducer
from kafka.partitioner.default import murmur2
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.steps import path_sum
from pipeline.events.models import (
    AgentAssigned,
    AgentReply,
    Channel,
    ContactStarted,
    Ended,
    EventBase,
    FirstAgentReply,
    Queued,
    Resolved,
    to_json,
)
from pipeline.events.topics import INTERACTION_TOPICS, TopicNames, interaction_topic, topic_specs
from pipeline.topics import ensure_topics
from tools import broker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_topics(bootstrap: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchline-bench")
    try:
        ours = [t for t in admin.list_topics() if t.startswith("touchline.")]
        if ours:
            admin.delete_topics(ours)
            while any(t in ours for t in admin.list_topics()):
                time.sleep(0.2)
    finally:
        admin.close()
    for _ in range(120):
        try:
            ensure_topics(bootstrap, topic_specs(partitions))
            return
        except Exception:
            time.sleep(0.5)
    ensure_topics(bootstrap, topic_specs(partitions))


def run_cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"touchline {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def produce_simulated(env: dict[str, str], events: int, workdir: Path) -> tuple[int, int, float]:
    """Produce at least `events` simulated events; returns (messages on the topics, of them
    malformed, seconds)."""
    probe = workdir / "probe.jsonl"
    run_cli(
        env,
        "simulate",
        "--seed",
        "1",
        "--contacts",
        "2000",
        "--profile",
        "flat",
        "--speed",
        "0",
        "--quiet",
        "--out",
        str(probe),
    )
    per_contact = sum(1 for _ in probe.open()) / 2000
    contacts = int(events / per_contact * 1.03) + 1
    truth = workdir / "truth.jsonl"
    started = time.monotonic()
    # simulated history ends before now, so the latency and breach passes' fresh events come after it
    start = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_cli(
        env, "simulate", "--seed", "1", "--contacts", str(contacts), "--profile", "flat", "--speed", "0",
        "--start", start, "--quiet", "--truth", str(truth),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    summary = json.loads(truth.read_text().splitlines()[-1])
    return int(summary["messages_delivered"]), int(summary["bad"]), elapsed


async def raw_consume(bootstrap: str, expected: int) -> float:
    """Seconds for a bare aiokafka consumer to read `expected` messages from the channel topics."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in INTERACTION_TOPICS.values()
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.monotonic()
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batches.values():
                seen += len(records)
        return time.monotonic() - started
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


def faust_baseline(bootstrap: str, expected: int, workdir: Path) -> float:
    """Seconds for a bare Faust agent (count and ack, nothing else) to read `expected` messages."""
    result = workdir / "faust-baseline.txt"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_faust_baseline", bootstrap, str(expected), str(result)],
        capture_output=True,
        timeout=1800,
        check=False,
    )
    if not result.exists():
        raise click.ClickException("the Faust baseline agent did not finish")
    return float(result.read_text())


REPO = Path(__file__).resolve().parent.parent
QUIX_PYTHON = REPO / ".venv-quix" / "bin" / "python"


def quix_contender(bootstrap: str, expected: int) -> dict[str, Any]:
    """The quix-streams contender's figures (benchmarks/quix_contender.py, run by its own venv's
    Python: quix-streams needs pydantic < 2.14)."""
    result = subprocess.run(
        [str(QUIX_PYTHON), "-m", "benchmarks.quix_contender", bootstrap, str(expected)],
        cwd=REPO, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise click.ClickException(f"the quix-streams contender failed (exit {result.returncode}):\n{tail}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def steps_profile(events: int, workdir: Path) -> tuple[str, dict[str, Any]]:
    """benchmarks/steps.py's µs-per-step tables (printed) and figures (JSON), in-process, no broker."""
    out = workdir / "steps.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.steps", "--events", str(events), "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not out.exists():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise click.ClickException(f"benchmarks.steps failed (exit {result.returncode}):\n{tail}")
    figures: dict[str, Any] = json.loads(out.read_text())
    return result.stdout, figures


def metrics(url: str, timeout: float = 5) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def raw_metrics(url: str) -> dict[str, float]:
    """Every sample with its labels as the key (benchmarks.bench.metrics sums over labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def sql(url: str, query: str) -> list[list[Any]]:
    request = urllib.request.Request(f"{url}/sql?format=json", data=query.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        rows: list[list[Any]] = json.loads(response.read())["rows"]
        return rows


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_worker(env: dict[str, str], port: int, role: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", "--web-port", str(port), "--role", role],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:  # exited already (its error is being reported)
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        # left running, a worker that ignores the stop takes CPU from every later pass and run (one
        # retrying a broker that was gone ran for 54 minutes beside session 20's final runs)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        raise click.ClickException(f"worker {process.pid} did not stop within 120 s of SIGINT: killed") from None


def worker_exited(process: subprocess.Popen[bytes], log: Path) -> click.ClickException:
    """The error for a worker that exited, with its log copied out of the run's directory (removed
    when the run ends)."""
    kept = Path(tempfile.mkdtemp(prefix="touchline-bench-failed-")) / log.name
    shutil.copyfile(log, kept)
    return click.ClickException(f"worker exited with code {process.returncode}; its log: {kept}")


def scrape(process: subprocess.Popen[bytes], url: str, log: Path) -> dict[str, float] | None:
    """The worker's metrics, None while it does not answer yet; a worker that exited ends the run."""
    if process.poll() is not None:
        raise worker_exited(process, log)
    try:
        return metrics(url)
    except OSError:
        time.sleep(0.2)
        return None


def worker_pass(
    process: subprocess.Popen[bytes], port: int, role: str, expected: int, log: Path
) -> tuple[float, float | None]:
    """Seconds from the worker's first read to the last of `expected` messages written (ingest),
    and to the last applied to the KPI windows and SLA clocks (analytics; None for an ingest-only
    worker)."""
    url = f"http://127.0.0.1:{port}"
    first_read: float | None = None
    ingested: float | None = None
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        m = scrape(process, url, log)
        if m is None:
            continue
        now = time.monotonic()
        if first_read is None and max(m.get(k, 0.0) for k in _READ) > 0:
            first_read = now
        if first_read is None:
            time.sleep(0.1)
            continue
        if ingested is None and sum(m.get(k, 0.0) for k in _DONE) >= expected and m.get("touchline_pending_rows") == 0:
            ingested = now
        if ingested is not None and role == "ingest":
            return ingested - first_read, None
        valid = m.get("touchline_events_valid_total", 0.0)
        if ingested is not None and m.get("touchline_events_analysed_total", 0.0) >= valid:
            return ingested - first_read, now - first_read
        time.sleep(0.25)  # scraping /metrics costs the worker CPU: not too often
    raise click.ClickException("the worker did not finish in 60 minutes")


LATENCY_PREFIX = "touchline-latency"
LATENCY_WARMUP_SECONDS = 10  # the whole worker's latency pass: sent first, measured apart
LOAD_PREFIX = "touchline-load"
# seconds of load before the breach pass's calls start, so they wait among a running load
LOAD_WARMUP_SECONDS = 10
# the workers' metrics read every second: every 5 s changed nothing measurable (analytics 72 against
# 69 CPU seconds of the pass, the bench process 26 against 24; one run each, session 18)
LOAD_SAMPLE_SECONDS = 1.0
LOAD_PROBE_RATE = 200  # events/s stamped when sent, for the latency under load
Load = tuple[float, str, int, bytes, bytes]  # (send at, topic, partition, key, value)
# the sender sends what is due every SEND_EVERY seconds, in one batch per partition
SEND_EVERY = 0.01


def wait_assigned(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 120) -> None:
    """Until the worker holds its partitions (`/health`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise worker_exited(process, log)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if json.loads(response.read()).get("assigned_partitions", 0) > 0:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the worker got no partitions in {timeout:.0f} s; see {log}")


WAITS = {
    reason: f'touchline_consumer_wait_seconds_total{{reason="{reason}",stage="analytics"}}'
    for reason in ("fetch", "outputs", "windows", "checkpoint")
}
# the cyclic collector's pauses (every thread waits), by generation: seconds and collections
COLLECTOR = {
    f"gc{g}{part}": f'touchline_gc_pause_seconds{suffix}{{generation="{g}"}}'
    for g in range(3)
    for part, suffix in (("", "_sum"), (" count", "_count"))
}


def journeys_caught_up(
    process: subprocess.Popen[bytes], url: str, log: Path, quiet: float = 3.0
) -> tuple[float, float]:
    """Seconds until the journey stage's contact records stop moving (none for `quiet` s), and the
    records it applied meanwhile. In the whole worker it still works through the journey topic
    after the analytics stage has applied every event (it handles ~2,900 contacts/s on its one
    partition, issue 11), on the same event loop as the passes that follow."""
    started = time.monotonic()
    first: float | None = None
    records, since = -1.0, started
    while time.monotonic() - started < 600:
        m = scrape(process, url, log)
        if m is None:
            continue
        now, applied = time.monotonic(), m.get("touchline_journey_records_total", 0.0)
        first = applied if first is None else first
        if applied != records:
            records, since = applied, now
        elif now - since >= quiet:
            return since - started, records - first
        time.sleep(0.25)
    raise click.ClickException("the journey stage did not catch up in 10 minutes")


def analytics_pass(
    process: subprocess.Popen[bytes], port: int, valid: int, log: Path
) -> tuple[float, dict[str, float]]:
    """Seconds from an analytics-only worker's first event applied to the last of the `valid`
    messages (the malformed ones it skips: the ingest stage dead-letters them), and the seconds its
    consumer spent meanwhile in fetches and held back (`touchline_consumer_wait_seconds_total`)."""
    url = f"http://127.0.0.1:{port}"
    first: float | None = None
    waited: dict[str, float] = {}
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        m = scrape(process, url, log)
        if m is None:
            continue
        analysed = m.get("touchline_events_analysed_total", 0.0)
        now = time.monotonic()
        if first is None and analysed > 0:
            first = now
            at_first = raw_metrics(url)
            waited = {reason: -at_first.get(name, 0.0) for reason, name in (WAITS | COLLECTOR).items()}
        if first is not None and analysed >= valid:
            at_end = raw_metrics(url)
            return now - first, {
                reason: waited[reason] + at_end.get(name, 0.0) for reason, name in (WAITS | COLLECTOR).items()
            }
        time.sleep(0.25 if first is not None else 0.1)
    raise click.ClickException("the analytics worker did not finish in 60 minutes")


def latency_pass(
    bootstrap: str,
    url: str,
    rate: int,
    seconds: int,
    topic: str = interaction_topic(Channel.WEB),
    warmup: int = 0,
    warmup_figures: dict[str, float] | None = None,
) -> tuple[float, float, int]:
    """p50 and p99 end-to-end latency (ms) of `seconds` of events at `rate`, and the events measured.
    The first `warmup` seconds' events are sent the same way but left out of the figures; their own
    p50 / p99 go into `warmup_figures`."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    run = uuid.uuid4().hex[:8]
    sent = warm = 0
    started = time.monotonic()
    while time.monotonic() - started < warmup + seconds:
        due = int((time.monotonic() - started) * rate)
        while warm + sent < due:
            measured = time.monotonic() - started >= warmup
            prefix = "lat" if measured else "latw"
            n = sent if measured else warm
            event = ContactStarted(
                event_id=f"{prefix}-{run}-{n}",
                occurred_at=datetime.now(UTC),
                channel=Channel.WEB,
                contact_id=f"{prefix}-{run}-{n % 500}",
            )
            producer.send(topic, key=event.contact_id.encode(), value=to_json(event))
            if measured:
                sent += 1
            else:
                warm += 1
        time.sleep(0.002)
    producer.flush()
    producer.close()

    def query(prefix: str) -> str:
        return (
            f"SELECT count(), quantile(0.5)(d), quantile(0.99)(d) FROM (SELECT dateDiff('millisecond', occurred_at, "
            f"ingested_at) AS d FROM interaction_events WHERE event_id LIKE '{prefix}-{run}-%')"
        )

    for _ in range(120):
        count, p50, p99 = sql(url, query("lat"))[0]
        if int(count) >= sent:
            if warmup_figures is not None and warm:
                _, w50, w99 = sql(url, query("latw"))[0]
                warmup_figures |= {"p50_ms": float(w50), "p99_ms": float(w99), "events": float(warm)}
            return float(p50), float(p99), sent
        time.sleep(0.5)
    raise click.ClickException(f"latency events did not all arrive ({count} of {sent})")


def breach_pass(
    bootstrap: str, url: str, contacts: int, topic: str = interaction_topic(Channel.VOICE), spread: float = 5.0
) -> tuple[float, float, int]:
    """Voice calls queued now and never answered, one after another over `spread` seconds: their
    first-response breaches fire on the wall clock. Returns p50/p99 of (raised - deadline) in ms and
    the number of breaches."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    run = uuid.uuid4().hex[:8]
    for n in range(contacts):
        now = datetime.now(UTC)
        common: dict[str, Any] = {"channel": Channel.VOICE, "contact_id": f"brk-{run}-{n}", "queue": "voice.general"}
        for event in (
            ContactStarted(event_id=f"brk-{run}-{n}-s", occurred_at=now, **common),
            Queued(event_id=f"brk-{run}-{n}-q", occurred_at=now, **common),
        ):
            producer.send(topic, key=event.contact_id.encode(), value=to_json(event))
        time.sleep(spread / contacts)
    producer.flush()
    producer.close()
    query = (
        "SELECT count(), quantile(0.5)(d), quantile(0.99)(d) FROM (SELECT dateDiff('millisecond', deadline, emitted_at) AS d "
        f"FROM sla_events FINAL WHERE kind = 'breached' AND target = 'first_response' AND contact_id LIKE 'brk-{run}-%')"
    )
    count = 0
    for _ in range(240):
        count, p50, p99 = sql(url, query)[0]
        if int(count) >= contacts:
            return float(p50), float(p99), int(count)
        time.sleep(0.5)
    raise click.ClickException(f"only {count} of {contacts} breaches were raised")


def load_events(
    env: dict[str, str], events_per_second: int, seconds: int, workdir: Path, partitions: int
) -> tuple[datetime, list[Load]]:
    """Simulated traffic of `seconds` from a start in the near future, as (send at, topic, key,
    value), at about `events_per_second`. Generated before it is sent: the simulator itself made
    about 12,000 events/s here, and beside the two workers and the broker on two cores it sent
    3,707/s when asked for 5,000/s in real time (460,383 events in 124 s instead of 90)."""
    # the --rate (new issues an hour, flat profile) for that: contacts last minutes, so a run's first
    # minutes carry fewer events a second than its steady state; a probe of the same length measures it
    probe_rate = 1_000_000.0
    probe = workdir / "load-probe.jsonl"
    common = ("--seed", "3", "--profile", "flat", "--customers", "200000", "--speed", "0", "--quiet")
    began = time.monotonic()
    run_cli(env, "simulate", *common, "--rate", str(probe_rate), "--duration", f"{seconds}s", "--out", str(probe))
    probe_seconds, probe_events = time.monotonic() - began, max(1, sum(1 for _ in probe.open()))
    issues_per_hour = probe_rate * events_per_second * seconds / probe_events
    # the traffic starts once it is generated and read in, with a margin: the probe says how fast
    # this machine generates (about 12,000 events/s here on a good day; a host at a third of that
    # speed made a fixed lead of a second per 12,000 events too short, session 31), and reading
    # the lines in takes about as long again
    lead = 20 + 2.5 * probe_seconds / probe_events * events_per_second * seconds
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead)
    out = workdir / "load.jsonl"
    run_cli(
        env, "simulate", *common, "--rate", f"{issues_per_hour:.0f}", "--duration", f"{seconds}s",
        "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"), "--out", str(out),
    )  # fmt: skip
    events: list[Load] = []
    with out.open() as lines:
        for line in lines:
            item = json.loads(line)
            at = datetime.fromisoformat(item["at"]).timestamp()
            value = json.dumps(item["value"], separators=(",", ":")).encode()
            key = item["key"].encode()
            # the partition kafka-python's default partitioner picks, worked out before the load
            events.append((at, item["topic"], murmur2(key) % partitions, key, value))
    if time.time() > start.timestamp():
        raise click.ClickException("generating the load took longer than foreseen: its first events would be late")
    return start, events


async def send_at_their_time(bootstrap: str, events: list[Load]) -> None:
    """Each event sent when the wall clock reaches its delivery time (at most SEND_EVERY late).

    The load generator shares the 2 cores with the workers and the broker, so it is built to cost
    little: aiokafka record batches, partitions worked out beforehand. CPU a message sent, 50,000
    simulated events to a local broker as fast as they go (getrusage, session 18): kafka-python's
    `send` 69.3 µs, aiokafka's `send` 30.0, batches of 100 events over 24 partitions 16.6. With
    kafka-python the bench process used 49 of the load pass's 180 CPU seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        sent: list[asyncio.Future[Any]] = []
        i, count = 0, len(events)
        while i < count:
            delay = events[i][0] - time.time()
            if delay > 0:
                await asyncio.sleep(max(delay, SEND_EVERY))
            due = time.time()
            batches: dict[tuple[str, int], Any] = {}
            while i < count and events[i][0] <= due:
                _, topic, partition, key, value = events[i]
                batch = batches.get((topic, partition))
                if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                    if batch is not None:  # full
                        sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[(topic, partition)] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                i += 1
            for (topic, partition), batch in batches.items():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_cpu_seconds() -> float:
    """CPU time every core spent busy (not idle, not waiting for I/O) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def cpu_shares(pids: dict[str, int]) -> Callable[[], dict[str, float]]:
    """Starts counting; the returned function gives the CPU seconds each process used since, and
    `other` (what the rest of the machine used)."""
    first = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine = machine_cpu_seconds()

    def since() -> dict[str, float]:
        used = {name: cpu_seconds(pid) - first[name] for name, pid in pids.items()}
        used["other"] = max(0.0, machine_cpu_seconds() - machine - sum(used.values()))
        return used

    return since


def load_pass(
    env_of: Callable[[str, int], dict[str, str]],
    bootstrap: str,
    rate: int,
    seconds: int,
    workdir: Path,
    partitions: int,
    broker_pid: int | None,
) -> dict[str, float]:
    """Breach detection and latency under load: an ingest worker and an analytics worker (one process
    each, the deployment `--role` is for) on topics of their own, simulated traffic at `rate`
    events/s sent in real time for `seconds`, and after LOAD_WARMUP_SECONDS the breach pass's
    never-answered calls (spread over the rest of it) and a latency probe among that traffic. Also: the analytics worker's
    events/s and the largest consumer lags meanwhile, and how long analytics took to catch up."""
    prefix = {"TOUCHLINE_TOPIC_PREFIX": LOAD_PREFIX}
    names = TopicNames(LOAD_PREFIX)
    ports = {"ingest": free_port(), "analytics": free_port()}
    logs = {role: workdir / f"worker-load-{role}.log" for role in ports}
    workers = {
        role: start_worker(env_of(f"load-{role}", port) | prefix, port, role, logs[role])
        for role, port in ports.items()
    }
    urls = {role: f"http://127.0.0.1:{port}" for role, port in ports.items()}
    try:
        start, events = load_events(env_of("load-simulate", free_port()) | prefix, rate, seconds, workdir, partitions)
        for role, process in workers.items():
            wait_assigned(process, ports[role], logs[role])
        sent_until: list[float] = []

        def send() -> None:
            asyncio.run(send_at_their_time(bootstrap, events))
            sent_until.append(time.monotonic())

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        lag_peak = {role: 0.0 for role in workers}
        samples: list[tuple[float, float]] = []  # (monotonic, events analysed)

        def sample() -> None:
            for role, process in workers.items():
                m = scrape(process, urls[role], logs[role])
                if m is None:
                    continue
                lag_peak[role] = max(lag_peak[role], m.get("touchline_consumer_lag_messages", 0.0))
                if role == "analytics":
                    samples.append((time.monotonic(), m.get("touchline_events_analysed_total", 0.0)))

        time.sleep(max(0.0, start.timestamp() - time.time()))
        sent_from = time.monotonic()
        # where the 2 cores went while the load was sent: the full `make bench` ran this pass
        # slower than a bench of this pass alone (session 17: 3,754 against 4,854 events/s analysed)
        pids = {role: process.pid for role, process in workers.items()} | {"bench (sender, probes)": os.getpid()}
        if broker_pid is not None:
            pids["broker"] = broker_pid
        cpu_since = cpu_shares(pids)
        waits_first = raw_metrics(urls["analytics"])
        while time.monotonic() < sent_from + LOAD_WARMUP_SECONDS:
            sample()
            time.sleep(LOAD_SAMPLE_SECONDS)
        # the breach pass's calls queued one after another over the rest of the load (their last
        # deadline 20 s before its end) and a latency probe (events stamped when sent, a rate small
        # next to the load) beside them; this thread samples the workers' metrics meanwhile
        spread = max(5.0, seconds - LOAD_WARMUP_SECONDS - 30)
        voice, web = names.interaction(Channel.VOICE), names.interaction(Channel.WEB)
        with ThreadPoolExecutor(2) as pool:
            breach = pool.submit(breach_pass, bootstrap, urls["analytics"], 200, voice, spread)
            probe = pool.submit(latency_pass, bootstrap, urls["ingest"], LOAD_PROBE_RATE, int(spread), web)
            while sender.is_alive() or not (breach.done() and probe.done()):
                sample()
                time.sleep(LOAD_SAMPLE_SECONDS)
            b50, b99, breaches = breach.result()
            p50, p99, probes = probe.result()
        load_end = sent_until[0]
        cpu = cpu_since()  # once the breach calls and the probe are done too: seconds after the load
        cpu_window = time.monotonic() - sent_from
        waits_end = raw_metrics(urls["analytics"])
        waits = {reason: waits_end.get(name, 0.0) - waits_first.get(name, 0.0) for reason, name in WAITS.items()}
        produced = len(events) + 2 * breaches + probes
        while not samples or samples[-1][1] < produced:  # until the analytics worker has applied all of it
            if time.monotonic() - load_end > 600:
                raise click.ClickException("the analytics worker did not catch up in 10 minutes")
            time.sleep(0.5)
            sample()
        catch_up = time.monotonic() - load_end
        _, l50, l99 = sql(
            urls["ingest"],
            "SELECT count(), quantile(0.5)(d), quantile(0.99)(d) FROM (SELECT dateDiff('millisecond', occurred_at,"
            " ingested_at) AS d FROM interaction_events WHERE event_id NOT LIKE 'brk-%' AND event_id NOT LIKE 'lat-%')",
        )[0]
    finally:
        for process in workers.values():
            stop_worker(process)
    during = [(t, n) for t, n in samples if t <= load_end]
    analysed_rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else 0.0
    return (
        {
            "rate_asked": rate,
            "seconds": seconds,
            "events": len(events),
            "send_seconds": load_end - sent_from,
            "events_per_second": len(events) / (load_end - sent_from),
            "analysed_per_second": analysed_rate,
            "analytics_lag_peak": lag_peak["analytics"],
            "ingest_lag_peak": lag_peak["ingest"],
            "probe_latency_p50_ms": p50,
            "probe_latency_p99_ms": p99,
            "analytics_catch_up_seconds": catch_up,
            "breach_delay_p50_ms": b50,
            "breach_delay_p99_ms": b99,
            "breaches": breaches,
            "simulated_latency_p50_ms": float(l50),
            "simulated_latency_p99_ms": float(l99),
            "cpu_window_seconds": cpu_window,
        }
        | {f"cpu_seconds {name}": used for name, used in cpu.items()}
        | {f"waited {r}": w for r, w in waits.items()}
    )


def histogram(url: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of a Prometheus histogram."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=120) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding the q-quantile of the observations made between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= q * counts[-1])


def stalls_over(before: dict[float, float], after: dict[float, float], seconds: float) -> int:
    """Event-loop stalls longer than `seconds` (a bucket bound) between two scrapes of the stall histogram."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return int(total - (after.get(seconds, 0.0) - before.get(seconds, 0.0)))


STALL_WARNING = "the event loop has been blocked for over"
GC_WARNING = "a garbage collection (generation"


def stall_sites(log_text: str, top: int = 3) -> list[tuple[str, int]]:
    """Where the worker's loop was when its watchdog saw it blocked for over half a second
    (`pipeline.worker.loop_watch`), most frequent first: the innermost frame of Touchline's own code
    in each logged stack (the innermost frame when none is), and the collector's long pauses."""
    sites: Counter[str] = Counter()
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if GC_WARNING in line:
            sites["the cyclic garbage collector"] += 1
        elif STALL_WARNING in line:
            frames: list[str] = []
            for frame in takewhile(lambda text: text.startswith("  "), islice(lines, i + 1, None)):
                if frame.startswith('  File "'):
                    path, _, rest = frame[len('  File "') :].partition('", line ')
                    number, _, function = rest.partition(", in ")
                    if "/pipeline/" in path:
                        path = "pipeline/" + path.rsplit("/pipeline/", 1)[1]
                    frames.append(f"{path}:{number} {function}")
            ours = [f for f in frames if f.startswith("pipeline/")]
            if frames:
                sites[(ours or frames)[-1]] += 1
    return sites.most_common(top)


def timed_ingest(url: str, producer: KafkaProducer, messages: list[tuple[str, str, bytes]]) -> float:
    """Produce `messages` (topic, key, value) and return the seconds from the worker's first read
    of them to the last written and applied to the KPI windows and SLA clocks."""
    before = metrics(url)
    done_before = sum(before.get(k, 0.0) for k in _DONE)
    analysed_before = before.get("touchline_events_analysed_total", 0.0)
    for topic, key, value in messages:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    first: float | None = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            m = metrics(url)
        except OSError:  # the worker is busy; the pass's clock runs on
            continue
        now = time.monotonic()
        if first is None and any(m.get(k, 0.0) > before.get(k, 0.0) for k in _READ):
            first = now
        if (
            first is not None
            and sum(m.get(k, 0.0) for k in _DONE) - done_before >= len(messages)
            and m.get("touchline_events_analysed_total", 0.0) - analysed_before >= len(messages)
        ):
            return now - first
        time.sleep(0.1)
    raise click.ClickException("the worker did not ingest the pass in 30 minutes")


_DONE = ("touchline_events_written_total", "touchline_events_duplicate_total", "touchline_events_deadlettered_total")
_READ = ("touchline_events_consumed_total", "touchline_events_analysed_total")


Steps = tuple[tuple[type[EventBase], dict[str, Any]], ...]
CLOSED_CHAT: Steps = (
    (ContactStarted, {}), (Queued, {}), (AgentAssigned, {"agent_id": "a1"}), (FirstAgentReply, {"agent_id": "a1"}),
    (AgentReply, {"agent_id": "a1"}), (Resolved, {}), (Ended, {}),
)  # fmt: skip
OPEN_EMAIL: Steps = ((ContactStarted, {}), (Queued, {}))


def contacts_now(run: str, contacts: int, channel: Channel, queue: str, steps: Steps) -> list[tuple[str, str, bytes]]:
    """`contacts` contacts stamped with the wall clock, each going through `steps` a millisecond apart.
    CLOSED_CHAT contacts are answered, resolved and ended; OPEN_EMAIL contacts wait in queue and
    hold first-response and resolution obligations open for hours (24 business hours by the
    shipped policy)."""
    topic = interaction_topic(channel)
    out = []
    for n in range(contacts):
        now = datetime.now(UTC)
        contact = f"{run}-{n}"
        common: dict[str, Any] = {"channel": channel, "contact_id": contact, "queue": queue}
        for i, (model, extra) in enumerate(steps):
            event = model(event_id=f"{contact}-{i}", occurred_at=now + timedelta(milliseconds=i), **common, **extra)
            out.append((topic, contact, to_json(event)))
    return out


def open_contacts_pass(bootstrap: str, url: str, contacts: int, open_contacts: int) -> dict[str, float]:
    """Throughput of the same workload (closed chats) before and after `open_contacts` emails are
    left open, and what one SLA deadline check costs with them open."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    run = uuid.uuid4().hex[:8]
    try:
        workload = contacts_now(f"chat-a-{run}", contacts, Channel.CHAT, "chat.general", CLOSED_CHAT)
        before_s = timed_ingest(url, producer, workload)
        emails = contacts_now(f"open-{run}", open_contacts, Channel.EMAIL, "email.general", OPEN_EMAIL)
        open_s = timed_ingest(url, producer, emails)
        time.sleep(6)  # the open-obligation gauges refresh every 5 s
        # the worker may be busy (its first checkpoint of the new contacts): wait for the answer
        opened = metrics(url, timeout=120).get("touchline_sla_open_obligations", 0.0)
        ticks_before = histogram(url, "touchline_sla_tick_seconds")
        after_s = timed_ingest(
            url, producer, contacts_now(f"chat-b-{run}", contacts, Channel.CHAT, "chat.general", CLOSED_CHAT)
        )
        ticks_after = histogram(url, "touchline_sla_tick_seconds")
    finally:
        producer.close()
    return {
        "workload_events": len(workload),
        "rate_before": len(workload) / before_s,
        "rate_open": len(emails) / open_s,
        "rate_after": len(workload) / after_s,
        "open_obligations": opened,
        "tick_p50_ms": bucket_quantile(ticks_before, ticks_after, 0.5) * 1000,
        "tick_p99_ms": bucket_quantile(ticks_before, ticks_after, 0.99) * 1000,
    }


SKIPPABLE = ("faust", "ingest", "analytics", "all", "load", "steps")


def share(rate: float, raw_rate: float) -> str:
    return f"{rate:>12,.0f} events/s  {rate / raw_rate:>6.1%} of raw"


def print_steps(steps_text: str, steps: dict[str, Any], raw_rate: float) -> None:
    """benchmarks/steps.py's tables, and what reading from Kafka adds to each stage's sum."""
    click.echo("")
    click.echo(steps_text.rstrip())
    consume_us = 1e6 / raw_rate
    click.echo(f"reading from Kafka (raw aiokafka consume, this run): {consume_us:.2f} µs per event")
    for stage in ("ingest", "analytics"):
        total = consume_us + path_sum(steps[f"{stage}_us"])
        click.echo(
            f"  consume + {stage} steps{'':<{10 - len(stage)}} {total:>7.2f} µs = {1e6 / total:>9,.0f} events/s on one core"
        )


@click.command()
@click.option("--events", type=int, default=1_000_000, show_default=True, help="At least this many simulated events.")
@click.option("--partitions", type=int, default=4, show_default=True, help="Partitions per channel topic.")
@click.option(
    "--latency-rate",
    type=int,
    default=500,
    show_default=True,
    help="Events/s in the latency pass (keep it below the worker's capacity).",
)
@click.option("--latency-seconds", type=int, default=20, show_default=True)
@click.option(
    "--ingest-latency-rate",
    type=int,
    default=5000,
    show_default=True,
    help="Events/s in the latency pass on the ingest worker (the issue's 5,000/s; 0 leaves it out).",
)
@click.option(
    "--load-rate",
    type=int,
    default=5000,
    show_default=True,
    help="Simulated events/s sent in real time in the load pass (an ingest and an analytics worker; 0 leaves it out).",
)
@click.option("--load-seconds", type=int, default=90, show_default=True)
@click.option(
    "--open-contacts", type=int, default=100_000, show_default=True, help="Contacts left open in the SLA pass."
)
@click.option(
    "--workload-contacts", type=int, default=15_000, show_default=True, help="Chats (7 events each) per SLA pass."
)
@click.option(
    "--steps-events",
    type=int,
    default=200_000,
    show_default=True,
    help="Events of the µs-per-step profile (benchmarks/steps.py, in-process, after the broker passes).",
)
@click.option(
    "--quix/--no-quix",
    default=None,
    help="Measure the quix-streams contender (default: when .venv-quix exists; make bench-quix-env makes it).",
)
@click.option(
    "--skip",
    type=click.Choice(SKIPPABLE),
    multiple=True,
    help="Leave a pass out (quick checks): faust, ingest, analytics, all (whole worker, latency, breach, SLA), load (breaches under load), steps.",
)
@click.option("--json-out", type=click.Path(path_type=Path), default=None, help="Also write every figure as JSON here.")
def main(
    events: int,
    partitions: int,
    latency_rate: int,
    latency_seconds: int,
    ingest_latency_rate: int,
    load_rate: int,
    load_seconds: int,
    open_contacts: int,
    workload_contacts: int,
    steps_events: int,
    quix: bool | None,
    skip: tuple[str, ...],
    json_out: Path | None,
) -> None:
    """Benchmark the ingest path against a raw aiokafka consumer on the same topics (and a bare Faust
    agent and, optionally, quix-streams), then the whole worker (ingest and analytics), its latency,
    SLA breach detection and open-contact load, then the µs-per-step profile of both stages."""
    if quix and not QUIX_PYTHON.exists():
        raise click.ClickException(f"--quix needs {QUIX_PYTHON.relative_to(REPO)}: run `make bench-quix-env` first")
    with_quix = QUIX_PYTHON.exists() if quix is None else quix
    faust_s = ingest_s = analytics_s = full_ingest_s = full_s = None
    ingest_rss = analytics_rss = 0.0
    ingest_latency: tuple[float, float, int] | None = None
    load: dict[str, float] | None = None
    contender: dict[str, Any] | str | None = None
    with tempfile.TemporaryDirectory(prefix="touchline-bench-") as tmp:
        workdir = Path(tmp)
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        bootstrap = external or broker.start(workdir / "kafka", port=free_port(), controller_port=free_port())
        try:
            fresh_topics(bootstrap, partitions)
            base = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
            base |= {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TOUCHLINE_TOPIC_PARTITIONS": str(partitions),
                "TOUCHLINE_LOG_LEVEL": "warning",
            }

            def worker_env(name: str, port: int) -> dict[str, str]:
                # a fresh consumer group and a fresh embedded ClickHouse per worker
                return base | {
                    "TOUCHLINE_DATA_DIR": str(workdir / name),
                    "TOUCHLINE_APP_ID": f"touchline-bench-{name}-{uuid.uuid4().hex[:6]}",
                    "TOUCHLINE_WORKER_WEB_PORT": str(port),
                }

            click.echo(f"producing ≥{events:,} simulated events to {bootstrap} ...")
            messages, malformed, produce_s = produce_simulated(worker_env("simulate", free_port()), events, workdir)
            click.echo(f"  {messages:,} messages ({malformed:,} malformed) in {produce_s:.1f} s (simulate + produce)")
            raw_s = asyncio.run(raw_consume(bootstrap, messages))
            click.echo(f"  raw aiokafka consume: {raw_s:.1f} s")
            if "faust" not in skip:
                faust_s = faust_baseline(bootstrap, messages, workdir)
                click.echo(f"  bare Faust agent: {faust_s:.1f} s")
            if with_quix:
                try:
                    contender = quix_contender(bootstrap, messages)
                    seconds = ", ".join(f"{p['pass']} {p['seconds']:.1f} s" for p in contender["passes"])
                    click.echo(f"  quix-streams contender: {seconds}")
                except (click.ClickException, subprocess.TimeoutExpired) as exc:
                    contender = str(exc)
                    click.echo(f"  quix-streams contender: {exc}")

            if "ingest" not in skip:
                port = free_port()
                ingest_log = workdir / "worker-ingest.log"
                process = start_worker(worker_env("ingest", port), port, "ingest", ingest_log)
                try:
                    ingest_s, _ = worker_pass(process, port, "ingest", messages, ingest_log)
                    ingest_rss = peak_rss_mb(process.pid)
                finally:
                    stop_worker(process)
                click.echo(f"  ingest worker: {ingest_s:.1f} s")
                if ingest_latency_rate > 0:
                    # an ingest worker of its own on topics of its own (another prefix, created empty
                    # at its start), so the later passes read only the simulated messages
                    port = free_port()
                    names = TopicNames(LATENCY_PREFIX)
                    latency_log = workdir / "worker-ingest-latency.log"
                    env = worker_env("ingest-latency", port) | {"TOUCHLINE_TOPIC_PREFIX": LATENCY_PREFIX}
                    process = start_worker(env, port, "ingest", latency_log)
                    try:
                        wait_assigned(process, port, latency_log)
                        ingest_latency = latency_pass(
                            bootstrap,
                            f"http://127.0.0.1:{port}",
                            ingest_latency_rate,
                            latency_seconds,
                            names.interaction(Channel.WEB),
                        )
                    finally:
                        stop_worker(process)

            if "analytics" not in skip:
                port = free_port()
                analytics_log = workdir / "worker-analytics.log"
                process = start_worker(worker_env("analytics", port), port, "analytics", analytics_log)
                try:
                    analytics_s, waits = analytics_pass(process, port, messages - malformed, analytics_log)
                    analytics_rss = peak_rss_mb(process.pid)
                finally:
                    stop_worker(process)
                click.echo(
                    f"  analytics worker: {analytics_s:.1f} s; its consumer meanwhile in fetches "
                    f"{waits['fetch']:.1f} s, held back for outputs {waits['outputs']:.1f} s, KPI windows "
                    f"{waits['windows']:.1f} s, a checkpoint {waits['checkpoint']:.1f} s"
                )
                click.echo(
                    f"  analytics worker: the cyclic collector held every thread "
                    f"{sum(waits[f'gc{g}'] for g in range(3)):.1f} s of it; generations 0 / 1 / 2: "
                    + " / ".join(f"{waits[f'gc{g}']:.1f} s ({waits[f'gc{g} count']:,.0f})" for g in range(3))
                )

            if "all" not in skip:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                full_log = workdir / "worker-all.log"
                process = start_worker(worker_env("all", port), port, "all", full_log)
                try:
                    full_ingest_s, full_s = worker_pass(process, port, "all", messages, full_log)
                    assert full_s is not None
                    click.echo(f"  whole worker: ingest {full_ingest_s:.1f} s, analytics {full_s:.1f} s")
                    # the latency and breach passes measure the steady state, not the journey stage's backlog
                    journey_s, journey_records = journeys_caught_up(process, url, full_log)
                    click.echo(
                        f"  whole worker: journey stage caught up {journey_s:.1f} s after the analytics "
                        f"({journey_records:,.0f} contact records meanwhile)"
                    )
                    stalls_before = histogram(url, "touchline_loop_stall_seconds")
                    log_offset = full_log.stat().st_size
                    # the pass's first seconds take the worker from the simulated history to the
                    # wall clock (session 20: rows of the first ~6 s up to 2.7 s late, then at most
                    # 0.7 s): they are sent but measured apart
                    warmup_figures: dict[str, float] = {}
                    p50, p99, sent = latency_pass(
                        bootstrap, url, latency_rate, latency_seconds, warmup=LATENCY_WARMUP_SECONDS,
                        warmup_figures=warmup_figures,
                    )  # fmt: skip
                    stalls_after = histogram(url, "touchline_loop_stall_seconds")
                    stalls = {bound: stalls_over(stalls_before, stalls_after, bound) for bound in (0.25, 0.5, 1.0)}
                    with full_log.open("rb") as logged:
                        logged.seek(log_offset)
                        stalled_at = stall_sites(logged.read().decode(errors="replace"))
                    b50, b99, breaches = breach_pass(bootstrap, url, 200)
                    stored_before_open = sql(url, "SELECT count() FROM interaction_events")[0][0]
                    rss_before_open = peak_rss_mb(process.pid)
                    click.echo(
                        f"  SLA pass: {workload_contacts:,} chats, {open_contacts:,} emails left open, chats again ..."
                    )
                    opened = open_contacts_pass(bootstrap, url, workload_contacts, open_contacts)
                    rss = peak_rss_mb(process.pid)
                    stored = stored_before_open - 2 * breaches - int(warmup_figures.get("events", 0))
                finally:
                    stop_worker(process)

            if "load" not in skip and load_rate > 0:
                click.echo(f"  load pass: {load_rate:,} events/s for {load_seconds} s, breaches among them ...")
                broker_pid = None if external else broker.running_pid(workdir / "kafka")
                load = load_pass(worker_env, bootstrap, load_rate, load_seconds, workdir, partitions, broker_pid)
        finally:
            if not external:
                broker.stop(workdir / "kafka")

        steps_text, steps = "", None
        if "steps" not in skip and steps_events > 0:
            click.echo(f"  µs-per-step profile of {steps_events:,} events (benchmarks/steps.py, no broker) ...")
            try:
                steps_text, steps = steps_profile(steps_events, workdir)
            except (click.ClickException, subprocess.TimeoutExpired) as exc:
                steps_text = f"µs-per-step profile: {exc}"

    raw_rate = messages / raw_s
    figures: dict[str, Any] = {"events": messages, "raw_rate": raw_rate}
    click.echo("")
    click.echo("Touchline ingest benchmark")
    click.echo(f"  events (messages on the channel topics)   {messages:>12,}")
    click.echo(f"  raw aiokafka consume                       {share(raw_rate, raw_rate)}")
    if faust_s is not None:
        figures["faust_rate"] = messages / faust_s
        click.echo(f"  bare Faust agent (count + ack only)        {share(messages / faust_s, raw_rate)}")
    if isinstance(contender, dict):
        figures["quix"] = contender
        labels = {
            "count": "quix-streams, count only",
            "validated_window": "quix-streams, validation + 1-min windows",
        }
        for p in contender["passes"]:
            click.echo(f"  {labels.get(p['pass'], p['pass']):<42} {share(p['rate'], raw_rate)}")
        late = sum(p["late_dropped"] for p in contender["passes"])
        click.echo(f"    ({contender['contender']}, pydantic {contender['pydantic']}; {contender['sink']};")
        click.echo(f"     1-min tumbling count per queue on event time; {late:,} events dropped as late)")
    elif isinstance(contender, str):
        figures["quix"] = {"error": contender}
        click.echo("  quix-streams contender: failed (see above)")
    else:
        click.echo("  quix-streams contender: not measured (make bench BENCH_QUIX=1, or make bench-quix-env once)")
    if ingest_s is not None:
        ingest_rate = messages / ingest_s
        figures |= {"ingest_rate": ingest_rate, "ingest_peak_rss_mb": ingest_rss}
        click.echo(f"  ingest path (worker --role ingest)         {share(ingest_rate, raw_rate)}")
        if faust_s is not None:
            click.echo(f"    ratio ingest / bare Faust                {ingest_rate / (messages / faust_s):>12.1%}")
        click.echo(f"    peak RSS                                 {ingest_rss:>12,.0f} MB")
        if ingest_latency is not None:
            lp50, lp99, _ = ingest_latency
            figures |= {"ingest_latency_p50_ms": lp50, "ingest_latency_p99_ms": lp99}
            click.echo(f"    end-to-end latency p50 at {ingest_latency_rate}/s       {lp50:>12,.0f} ms")
            click.echo(f"    end-to-end latency p99 at {ingest_latency_rate}/s       {lp99:>12,.0f} ms")
    if analytics_s is not None:
        analytics_rate = (messages - malformed) / analytics_s
        figures |= {"analytics_rate": analytics_rate, "analytics_peak_rss_mb": analytics_rss}
        click.echo(f"  analytics (worker --role analytics)        {share(analytics_rate, raw_rate)}")
        click.echo(f"    peak RSS                                 {analytics_rss:>12,.0f} MB")
    if full_s is not None and full_ingest_s is not None:
        full_rate = messages / full_s
        figures["all"] = {
            "ingest_rate": messages / full_ingest_s,
            "analytics_rate": full_rate,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "latency_pass_loop_stalls": {str(bound): n for bound, n in stalls.items()},
            "latency_pass_stall_sites": dict(stalled_at),
            "latency_warmup": warmup_figures,
            "journey_catch_up_s": journey_s,
            "journey_catch_up_records": journey_records,
            "breach_delay_p50_ms": b50,
            "breach_delay_p99_ms": b99,
            "peak_rss_before_sla_mb": rss_before_open,
            "sla_pass": opened,
            "peak_rss_after_sla_mb": rss,
        }
        click.echo("  whole worker (--role all)")
        click.echo(f"    ingest to ClickHouse                     {share(messages / full_ingest_s, raw_rate)}")
        click.echo(f"    analytics (KPI windows, SLA clocks)      {share(full_rate, raw_rate)}")
        click.echo(f"    rows written                             {int(stored) - sent:>12,}")
        click.echo(f"    journey stage's backlog after analytics  {journey_s:>12.1f} s")
        click.echo(f"    end-to-end latency p50 at {latency_rate}/s        {p50:>12,.0f} ms")
        click.echo(f"    end-to-end latency p99 at {latency_rate}/s        {p99:>12,.0f} ms")
        if warmup_figures:
            click.echo(
                f"    the {LATENCY_WARMUP_SECONDS} s before it (warm-up) p50 / p99      "
                f"{warmup_figures['p50_ms']:>6,.0f} / {warmup_figures['p99_ms']:,.0f} ms"
            )
        click.echo(
            f"    loop stalls, warm-up too, > 0.25 / 0.5 / 1 s{stalls[0.25]:>5,} /{stalls[0.5]:>3,} /{stalls[1.0]:>3,}"
        )
        for site, seen in stalled_at:  # from the worker's watchdog: where the loop was held > 0.5 s
            click.echo(f"      held > 0.5 s {seen:>3,}x at {site}")
        click.echo(f"    SLA breach detection delay p50 ({breaches})  {b50:>12,.0f} ms")
        click.echo(f"    SLA breach detection delay p99           {b99:>12,.0f} ms")
        click.echo(f"    peak RSS before the SLA pass             {rss_before_open:>12,.0f} MB")
        click.echo(f"  SLA pass (whole worker): closed chats, {opened['workload_events']:,.0f} events")
        click.echo(f"    rate, nothing else open                  {opened['rate_before']:>12,.0f} events/s")
        click.echo(f"    rate opening {open_contacts:,} emails             {opened['rate_open']:>12,.0f} events/s")
        click.echo(f"    obligations open after that              {opened['open_obligations']:>12,.0f}")
        click.echo(f"    rate with them open                      {opened['rate_after']:>12,.0f} events/s")
        click.echo(
            f"    ratio open / not open                    {opened['rate_after'] / opened['rate_before']:>12.1%}"
        )
        click.echo(f"    peak RSS after the SLA pass              {rss:>12,.0f} MB")
        click.echo(
            f"    SLA deadline check p50 / p99 (bucket)    {opened['tick_p50_ms']:>8.2f} / {opened['tick_p99_ms']:.2f} ms"
        )
    if load is not None:
        figures["load"] = load
        click.echo(f"  under load: ingest and analytics workers, simulator in real time for {load_seconds} s")
        click.echo(
            f"    simulated events sent                    {load['events']:>12,.0f} in {load['send_seconds']:.0f} s"
            f" ({load['events_per_second']:,.0f}/s)"
        )
        click.echo(f"    analytics events/s while sent            {load['analysed_per_second']:>12,.0f}")
        click.echo(
            f"    lag, largest: ingest / analytics         {load['ingest_lag_peak']:>8,.0f} / {load['analytics_lag_peak']:,.0f}"
        )
        click.echo(f"    analytics caught up after the load in    {load['analytics_catch_up_seconds']:>12,.1f} s")
        click.echo(
            f"    latency p50 / p99, probe events ({LOAD_PROBE_RATE}/s)   {load['probe_latency_p50_ms']:>8,.0f} / {load['probe_latency_p99_ms']:,.0f} ms"
        )
        click.echo(
            f"    occurred_at -> row p50 / p99, simulated  {load['simulated_latency_p50_ms']:>8,.0f} / {load['simulated_latency_p99_ms']:,.0f} ms"
        )
        click.echo(
            f"    SLA breach detection delay p50 ({load['breaches']:.0f})  {load['breach_delay_p50_ms']:>12,.0f} ms"
        )
        click.echo(f"    SLA breach detection delay p99           {load['breach_delay_p99_ms']:>12,.0f} ms")
        shares = ", ".join(
            f"{name.removeprefix('cpu_seconds ')} {used:.0f} s"
            for name, used in load.items()
            if name.startswith("cpu_seconds ")
        )
        click.echo(f"    CPU while sent and answered (of 2 x {load['cpu_window_seconds']:.0f} s): {shares}")
        click.echo(
            f"    analytics consumer meanwhile: in fetches {load['waited fetch']:.1f} s, held back for outputs "
            f"{load['waited outputs']:.1f} s, KPI windows {load['waited windows']:.1f} s, a checkpoint "
            f"{load['waited checkpoint']:.1f} s"
        )
    if steps is not None:
        figures["steps"] = steps
        print_steps(steps_text, steps, raw_rate)
    elif steps_text:
        click.echo("")
        click.echo(steps_text)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

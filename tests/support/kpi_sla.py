"""A bounded, seeded KPI/SLA run through real workers, and its comparison with the independent
oracles (`tests/oracles`): shared by the acceptance test and the recovery tests.

Ending a bounded replay: windows become final only when a partition's watermark (max event time -
allowed lateness) passes them, and SLA deadlines fire on that watermark (`sla_clock = event`).
After the last simulated event the watermarks would only creep on with the wall clock while the
partitions idle, so the run appends one end-of-stream `contact_started` per channel partition,
END_OF_STREAM after the horizon: every watermark then passes the horizon at once. Those contacts
have no KPI measures and their own SLA obligations are excluded from the comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from pipeline.events.models import Channel, ContactStarted, to_json
from pipeline.events.topics import interaction_topic
from pipeline.simulator.truth import read_truth
from tests.integration.conftest import PARTITIONS, Workspace, wait_until
from tests.oracles import ms_of
from tests.oracles.kpi_truth import compare_kpis, compare_rows, kpi_oracle, parse_view_rows, view_query
from tests.oracles.sla_truth import BREACH_QUERY, Breach, compare_breaches, parse_breach_rows, sla_oracle

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "deploy" / "sla-policies.yaml"
SEED = 7
START = "2026-03-02T08:00:00Z"
DURATION = "6h"
RATE = "600"
FAULTS = ("--duplicate-rate", "0.05", "--late-rate", "0.05", "--max-lateness", "120")

# Worker settings for an exact bounded replay.
WORKER_ENV = {
    # Deadlines must fire on the event-time watermark: the run is in March 2026, so the wall clock
    # would breach every obligation still open as soon as it is read.
    "TOUCHLINE_SLA_CLOCK": "event",
    # Must exceed --max-lateness (120 s) plus the redelivery delay (<= 3 s): no event may be late.
    "TOUCHLINE_KPI_ALLOWED_LATENESS_SECONDS": "300",
    # Idle partitions advance with the wall clock after this long (only matters without END_OF_STREAM).
    "TOUCHLINE_KPI_IDLE_SECONDS": "2",
    # Write changed/final KPI rows often so the test does not wait for the 5 s default.
    "TOUCHLINE_KPI_EMIT_SECONDS": "1",
}
EMIT_SECONDS = float(WORKER_ENV["TOUCHLINE_KPI_EMIT_SECONDS"])
# Event time of the end-of-stream markers after the horizon; must exceed the allowed lateness plus
# one window so every window before the horizon becomes final. None: rely on idle advance only.
END_OF_STREAM: timedelta | None = timedelta(minutes=10)
EOS_PREFIX = "eos-"
CONSUME_TIMEOUT_S = 600
FINAL_TIMEOUT_S = 900 if END_OF_STREAM is None else 180
SHOW = 20

VIEWS = (("kpi_minute", 1), ("kpi_15m", 15), ("kpi_1h", 60))


def simulate(workspace: Workspace, *args: str | int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The seeded simulation (`args` replace the default start, duration and rate)."""
    truth_path = workspace.path / "truth.jsonl"
    shape = args or ("--start", START, "--duration", DURATION, "--rate", RATE)
    workspace.cli(
        "simulate", "--seed", SEED, *shape, "--speed", "0", *FAULTS, "--truth", truth_path, timeout=1200
    )  # fmt: skip
    records = read_truth(truth_path)
    summary = next(r for r in records if r["kind"] == "summary")
    return [r for r in records if r["kind"] == "contact"], summary


def send_end_of_stream(workspace: Workspace, at: datetime) -> int:
    """One `contact_started` at `at` on every partition of every channel topic."""
    producer = KafkaProducer(bootstrap_servers=workspace.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    sent = 0
    try:
        for channel in Channel:
            topic = interaction_topic(channel)
            for partition in range(PARTITIONS):
                contact_id = f"{EOS_PREFIX}{channel.value}-{partition}"
                event = ContactStarted(event_id=contact_id, occurred_at=at, channel=channel, contact_id=contact_id)
                producer.send(topic, key=contact_id.encode(), value=to_json(event), partition=partition)
                sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def lowest_watermark_ms(worker: Any) -> int | None:
    """A lower bound of every partition's KPI watermark, from the lag gauge (wall clock - lowest
    watermark, set after each emit), minus one emit interval for the gauge's age."""
    lag = worker.metric("touchline_kpi_watermark_lag_seconds")
    if lag == 0:
        return None  # not set yet
    return int((time.time() - lag - EMIT_SECONDS - 1) * 1000)


def pipeline_breaches(worker: Any) -> set[Breach]:
    found = parse_breach_rows(worker.sql(BREACH_QUERY))
    assert len(found) == len(set(found)), "a breach is stored twice under different ids"
    return {b for b in found if not b.contact_id.startswith(EOS_PREFIX)}


@dataclass
class Prepared:
    """A simulated run on the channel topics: its truth and what the workers must read."""

    contacts: list[dict[str, Any]]
    summary: dict[str, Any]
    horizon_ms: int
    expected_messages: int


def prepare(workspace: Workspace, *simulation: str | int) -> Prepared:
    """Worker settings for a bounded replay, the seeded simulation and the end-of-stream markers."""
    workspace.env.update(WORKER_ENV)
    contacts, summary = simulate(workspace, *simulation)
    horizon_ms = ms_of(summary["as_of"])
    assert horizon_ms is not None
    assert summary["duplicates"] > 0 and summary["late"] > 0
    expected = int(summary["messages_delivered"])
    if END_OF_STREAM is not None:
        at = datetime.fromtimestamp(horizon_ms / 1000, UTC) + END_OF_STREAM
        expected += send_end_of_stream(workspace, at)
    return Prepared(contacts, summary, horizon_ms, expected)


def finish(run: Prepared, worker: Any, ingest: Any, final_timeout: float = FINAL_TIMEOUT_S) -> list[str]:
    """Wait until every message is read, stored and every window final, then compare with the
    oracles: the mismatches."""
    watermark_ms = settle(run, worker, ingest, final_timeout)
    return compare_with_oracles(worker, run.contacts, run.horizon_ms, watermark_ms)


def settle(run: Prepared, worker: Any, ingest: Any, final_timeout: float = FINAL_TIMEOUT_S) -> int:
    """Wait until every message is read and stored, every partition's watermark has passed the
    horizon and the outputs up to it are written: the lowest watermark (ms)."""
    wait_until(
        lambda: ingest.metric("touchline_events_consumed_total") >= run.expected_messages,
        CONSUME_TIMEOUT_S,
        f"{run.expected_messages} messages read",
    )
    wait_until(lambda: ingest.metric("touchline_pending_rows") == 0, 60, "the last batch to be written")
    stored_events = ingest.sql("SELECT uniqExact(event_id) FROM interaction_events")[0][0]
    end_of_stream = run.expected_messages - int(run.summary["messages_delivered"])
    assert stored_events == sum(int(c["events"]) for c in run.contacts) + end_of_stream
    wait_until(
        lambda: (lowest_watermark_ms(worker) or 0) >= run.horizon_ms,
        final_timeout,
        "every partition's KPI watermark to pass the horizon",
        interval=1.0,
    )
    watermark_ms = lowest_watermark_ms(worker)  # every partition is at least here now
    assert watermark_ms is not None and watermark_ms >= run.horizon_ms
    time.sleep(EMIT_SECONDS + 3)  # the SLA ticks up to that watermark, and their inserts
    assert worker.metric("touchline_events_late_total") == 0, "events were dropped as late"
    return watermark_ms


def compare_with_oracles(worker: Any, contacts: list[dict[str, Any]], horizon_ms: int, watermark_ms: int) -> list[str]:
    """Every KPI window of the three views and every SLA breach up to the watermark, stored vs the
    oracles: the list of mismatches (empty when exact)."""
    # KPI windows
    oracle = kpi_oracle(contacts, until_ms=horizon_ms)
    all_diffs: list[str] = []
    for view, minutes in VIEWS:
        expected = oracle.rows(horizon_ms, minutes)
        stored = parse_view_rows(worker.sql(view_query(view, horizon_ms)))
        diffs = [f"{view}: not final: {key}" for key in stored.not_final]
        diffs += [f"{view}: {d}" for d in compare_rows(expected, stored.columns)]
        diffs += [f"{view}: {d}" for d in compare_kpis(expected, stored.kpis, stored.headlines)]
        print(
            f"\n{view}: {len(expected)} oracle windows vs {len(stored.columns)} stored, {oracle.contacts} contacts; "
            f"{len(diffs)} mismatches"
        )
        all_diffs += diffs
    assert oracle.problems == [], "\n".join(oracle.problems[:SHOW])

    # SLA breaches: exact up to the lowest watermark; beyond it a partition further ahead may
    # already have raised breaches, which must still be the oracle's.
    actual_breaches = pipeline_breaches(worker)
    furthest = max([watermark_ms, *(b.deadline_ms for b in actual_breaches)])
    sla = sla_oracle(contacts, POLICIES, until_ms=furthest)
    expected_breaches = {b for b in sla.breaches if b.deadline_ms <= watermark_ms}
    diffs = compare_breaches(expected_breaches, {b for b in actual_breaches if b.deadline_ms <= watermark_ms})
    diffs += [f"not in the oracle: {b.describe()}" for b in sorted(actual_breaches - sla.breaches)]
    print(
        f"SLA: {sla.contacts} contacts, {sla.obligations} obligations, {len(expected_breaches)} oracle breaches "
        f"up to the watermark vs {len(actual_breaches)} stored; {len(diffs)} mismatches"
    )
    all_diffs += [f"sla: {d}" for d in diffs]
    return all_diffs

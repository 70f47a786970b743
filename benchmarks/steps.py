"""Where the time of one event goes, per step, in the ingest and analytics stages: µs per event.

    .venv/bin/python -m benchmarks.steps --events 200000

In-process, without Kafka (the consume cost is the raw pass of `make bench`): simulated events as
the channel topics carry them are put through each step of the stages' per-event code, one step at
a time over all events, with an embedded ClickHouse for the writes. The sum is what one event costs
the stage's thread (the insert runs on the writer thread beside it). `make bench` prints this.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import click

from pipeline.events.models import EVENT_ADAPTER, EventBase, to_json
from pipeline.events.topics import DEFAULT_TOPICS, interaction_topic
from pipeline.ingest import decode as decoding
from pipeline.ingest import fast_rows
from pipeline.ingest.batch import Batch
from pipeline.ingest.decode import Policy, Rejection, decode
from pipeline.ingest.dedup import RecentIds
from pipeline.journeys.model import DAY
from pipeline.kpi.settings import KpiConfig
from pipeline.kpi.windows import LateEvent
from pipeline.privacy import pseudonym
from pipeline.resources import data_path
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.sla.clock import SlaEvent
from pipeline.sla.policy import load_policies
from pipeline.store import clickhouse
from pipeline.store.migrations import migrate
from pipeline.times import to_ms
from pipeline.worker.analytics import sla_messages
from pipeline.worker.journeys import forward_lines
from pipeline.worker.sink import IngestSink, stored_rows
from pipeline.worker.stages import Stages, kpi_records, sla_records

Message = tuple[str, bytes, bytes]  # topic, key, value
BATCH = 5_000  # TOUCHLINE_BATCH_MAX_ROWS's default: the rows of one insert
SLICE = 500  # the analytics stage's HANDLE_SLICE
CHECKPOINT_EVENTS = 50_000  # TOUCHLINE_CHECKPOINT_SECONDS's default (10 s) at 5,000 events/s


def simulated(events: int, seed: int = 1) -> list[Message]:
    """At least `events` simulated events of the last days, as (topic, key, value)."""
    start = datetime.now(UTC) - timedelta(days=3)
    # ~512k events a simulated day at rate 4000 (make soak); a little over, cut after
    days = events / 480_000 + 0.05
    config = SimConfig(seed=seed, start_ms=to_ms(start), duration_ms=int(days * DAY), rate=4000)
    out: list[Message] = []
    for _, event in Simulation(config).run():
        out.append((interaction_topic(event.channel), event.contact_id.encode(), to_json(event)))
        if len(out) >= events:
            break
    return out


def timed(label: str, steps: dict[str, float], run: Callable[[], Any]) -> Any:
    # as in the worker (app.py): what exists before a step is frozen, the young generation is large
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    result = run()
    steps[label] = steps.get(label, 0.0) + time.perf_counter() - started
    return result


async def _no_dead_letters(_: list[Any]) -> None:
    return None


def _mirrored(value: bytes) -> Any:
    try:
        return fast_rows._DECODER.decode(value)
    except fast_rows._FAILED:
        return None


def ingest_steps(messages: list[Message], client: Any) -> dict[str, float]:
    """Seconds per step of the ingest stage's per-event path, over all `messages`."""
    steps: dict[str, float] = {}
    # an untimed pass first: the first pass over all events also pays for growing the heap
    [EVENT_ADAPTER.validate_json(v) for _, _, v in messages]
    # for reference, not on the path: what pydantic-core's validation alone took per event
    timed("(reference) pydantic validate_json", steps, lambda: [EVENT_ADAPTER.validate_json(v) for _, _, v in messages])
    values = [v for _, _, v in messages]
    timed("msgspec decode (mirrored types)", steps, lambda: [_mirrored(v) for v in values])
    rows: list[Any] = timed(
        "to rows (fast way, pydantic for the rest)",
        steps,
        lambda: [fast_rows.row(v, t, 0, i, 1 << 20, k) for i, (t, k, v) in enumerate(messages)],
    )
    steps["checks, pseudonyms, rows; pydantic for the rest"] = (
        steps.pop("to rows (fast way, pydantic for the rest)") - steps["msgspec decode (mirrored types)"]
    )
    rows = [r for r in rows if not isinstance(r, Rejection)]
    recent = RecentIds(500_000)
    timed("dedup (recent ids)", steps, lambda: [recent.seen(r[0]) for r in rows])
    # the sink's write of a batch, on its writer thread: the rows for ClickHouse and their JSON
    # hold the GIL; chDB's parse and write (the rest of the insert's wall time) do not
    batches = [rows[start : start + BATCH] for start in range(0, len(rows), BATCH)]
    written = time.time()
    stored = timed("rows for ClickHouse (writer thread)", steps, lambda: [stored_rows(b, written) for b in batches])
    timed("rows to JSON (writer thread)", steps, lambda: [clickhouse._JSON_ROWS.encode_lines(b) for b in stored])
    sink = IngestSink(
        client, clickhouse.BlockingExecutor(), _no_dead_letters, max_rows=BATCH, max_seconds=1.0,
        max_event_bytes=1 << 20, dedup_capacity=0, on_written=lambda _: None, topics=DEFAULT_TOPICS,
    )  # fmt: skip
    timed(
        f"{REFERENCE} whole insert, wall (writer thread)",
        steps,
        lambda: [sink._insert(Batch(events=b)) for b in batches],
    )
    return steps


def analytics_steps(messages: list[Message]) -> dict[str, float]:
    """Seconds per step of the analytics stage's per-event path, over all `messages`."""
    stages = Stages(KpiConfig(), load_policies(data_path("sla-policies.yaml")), app_id="steps", sla_clock="wall")
    steps: dict[str, float] = {}
    events = [e for e in timed("decode", steps, lambda: [decode(v, t, 1 << 20, k) for t, k, v in messages])]
    valid = [(t, e) for (t, _, _), e in zip(messages, events, strict=True) if isinstance(e, EventBase)]
    states = {}
    for topic, _ in valid:
        if topic not in states:
            states[topic] = stages.partitions[(topic, 0)] = stages.new_state((topic, 0))
    now = datetime.now(UTC)
    outcomes: list[SlaEvent] = []

    def apply(begin: int, end: int) -> None:
        for start in range(begin, end, SLICE):
            touched = set()
            late: list[LateEvent] = []
            for offset, (topic, event) in enumerate(valid[start : min(start + SLICE, end)], start):
                state = states[topic]
                stages.apply_into(state, event, offset, now, late, outcomes, defer=True)
                touched.add(topic)
            for topic in touched:
                states[topic].kpi.settle()

    def checkpoint() -> None:
        for state in states.values():
            stages.contact_records(state, stages.begin_checkpoint(state).contacts)

    for begin in range(0, len(valid), CHECKPOINT_EVENTS):
        end = min(begin + CHECKPOINT_EVENTS, len(valid))
        timed("KPI windows + SLA clocks (apply + settle)", steps, partial(apply, begin, end))
        timed("checkpoint (changed contacts' state)", steps, checkpoint)
    timed("SLA outcomes (rows, messages)", steps, lambda: (sla_records(outcomes, now), sla_messages(outcomes)))
    forwarded = RecentIds(500_000)
    fresh = timed("forward dedup", steps, lambda: [e for _, e in valid if not forwarded.seen(e.event_id)])
    timed("journey forward (contact records)", steps, lambda: forward_lines(fresh))
    timed("SLA timers (tick)", steps, lambda: stages.tick_sla(now))

    def emit() -> None:
        for key in list(stages.partitions):
            while rows := stages.emit_kpis(now, [key], 100_000):
                kpi_records(rows)
                if not stages.partitions[key].kpi.behind:
                    break

    timed("KPI rows (emit)", steps, emit)
    return steps


REFERENCE = "(reference)"  # a step shown for comparison, not on the path: left out of the sum


def path_sum(per_event: dict[str, float]) -> float:
    return sum(micros for label, micros in per_event.items() if not label.startswith(REFERENCE))


def report(title: str, steps: dict[str, float], events: int, wall_rate: float | None = None) -> dict[str, float]:
    per_event = {label: seconds / events * 1e6 for label, seconds in steps.items()}
    total = path_sum(per_event)
    click.echo(f"{title} — µs per event ({events:,} events)")
    for label, micros in per_event.items():
        share = "" if label.startswith(REFERENCE) else f"{micros / total:>5.1%}"
        click.echo(f"  {label:<45} {micros:>7.2f} µs  {share}")
    click.echo(f"  {'sum':<45} {total:>7.2f} µs  = {1e6 / total:,.0f} events/s on one core")
    if wall_rate:
        click.echo(f"  (for reference: raw Kafka consume {1e6 / wall_rate:.2f} µs per event)")
    return per_event


@click.command()
@click.option("--events", type=int, default=200_000, show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON here.")
def main(events: int, json_out: Path | None) -> None:
    messages = simulated(events)
    gc.set_threshold(10_000, 10, 10)
    decoding.configure(Policy(history_since=datetime.now(UTC) - timedelta(days=30)))
    # as the worker runs by default (TOUCHLINE_PSEUDONYMISE): identifiers hashed where events are decoded
    pseudonym.configure(pseudonym.Pseudonymiser(secrets.token_bytes(32)))
    workdir = Path(tempfile.mkdtemp(prefix="touchline-steps-"))
    try:
        client = clickhouse.connect(f"chdb://{workdir}", "touchline")
        migrate(client)
        ingest = report("ingest stage", ingest_steps(messages, client), len(messages))
        analytics = report("analytics stage", analytics_steps(messages), len(messages))
    finally:
        clickhouse.close_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if json_out is not None:
        json_out.write_text(json.dumps({"events": len(messages), "ingest_us": ingest, "analytics_us": analytics}))


if __name__ == "__main__":
    main()

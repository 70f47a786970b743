"""Keyed, incremental checkpoints of the analytics stage (`Stages` + `StateStore` on real embedded
ClickHouse): a seeded simulation delivered with shuffling and redeliveries, checkpointed as the
worker does, "crashed" three times (state thrown away, restored from `stage_state`, the partitions
read again from the offset after each head), once with a checkpoint cut between its two inserts.
What was written (latest version per KPI row key, one row per SLA event id: the ReplacingMergeTree
rule) must equal the independent oracles exactly, and the crashes must really have redone work."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.events.models import EventBase
from pipeline.kpi.rows import KpiRow
from pipeline.kpi.settings import KpiConfig
from pipeline.sla.clock import SlaEvent
from pipeline.sla.policy import load_policies
from pipeline.times import to_ms
from pipeline.worker.stages import Stages
from pipeline.worker.state_store import StateStore
from tests.oracles.kpi_truth import compare_kpis, compare_rows, kpi_oracle
from tests.oracles.sla_truth import compare_breaches, sla_oracle
from tests.unit.test_truth_oracles import POLICIES, SHOW, Run, breaches_of, make_run, pipeline_columns

SEED = 11
START = datetime(2026, 3, 3, 9, tzinfo=UTC)
CHECKPOINT_EVERY = 700  # deliveries between checkpoints of one partition (chosen at random)


@pytest.fixture(scope="module")
def state_db(clickhouse: Client) -> Client:
    from pipeline.store import clickhouse as store
    from pipeline.store.migrations import migrate

    dsn = next(key[0] for key, client in store._clients.items() if client is clickhouse)
    client = store.connect(dsn, "stage_checkpoints")
    migrate(client)
    client.command("TRUNCATE TABLE IF EXISTS stage_state")
    return client


def new_stages() -> Stages:
    stages = Stages(KpiConfig(), load_policies(POLICIES), app_id="checkpoint-test", sla_clock="event")
    stages.release_limit = 40  # as the worker: held events reach the SLA engine a bounded number at a time
    return stages


class Written:
    """What reached ClickHouse: the latest version of each KPI partial row, each SLA event once."""

    def __init__(self) -> None:
        self.kpi: dict[tuple[Any, ...], KpiRow] = {}
        self.sla: dict[str, SlaEvent] = {}

    def add(self, rows: list[KpiRow], events: list[SlaEvent]) -> None:
        for row in rows:
            previous = self.kpi.get(row.key)
            if previous is None or row.version >= previous.version:
                self.kpi[row.key] = row
        for event in events:
            self.sla[event.sla_event_id] = event

    def provisional(self, part: tuple[str, int], from_ms: int) -> list[tuple[int, str, str, int, int]]:
        """What the worker asks ClickHouse on restore: open-window rows whose latest is not final."""
        return [
            (to_ms(row.window_start), row.channel, row.queue, row.priority, row.version)
            for key, row in self.kpi.items()
            if key[4:] == part and to_ms(row.window_start) >= from_ms and not row.final
        ]


def test_crashes_and_restores_give_the_oracles_rows(state_db: Client) -> None:
    run: Run = make_run(SEED, START, timedelta(hours=3))
    store = StateStore("checkpoint-test", "analytics")
    rng = random.Random(SEED)
    by_partition: dict[tuple[str, int], list[EventBase]] = {}
    for _, part, event in run.arrivals:
        by_partition.setdefault(part, []).append(event)
    order = [part for _, part, _ in run.arrivals]  # the interleaving of the partitions' deliveries
    crash_at = sorted(rng.sample(range(len(order) // 4, len(order)), 3))
    torn = crash_at[1]  # this crash cuts a checkpoint between its contact rows and its head

    written = Written()
    stages = new_stages()
    position = dict.fromkeys(by_partition, 0)  # next offset to deliver per partition
    wall = datetime(2026, 11, 1, tzinfo=UTC)
    redone = 0
    i = 0
    while i < len(order):
        part = order[i]
        i += 1
        offset = position[part]
        if offset >= len(by_partition[part]):
            continue  # already re-read after a restore
        position[part] = offset + 1
        state = stages.partitions.get(part)
        if state is None:
            state = stages.partitions[part] = stages.new_state(part)
        outputs = stages.apply(state, by_partition[part][offset], offset, wall)
        assert not outputs.late
        if i % 97 == 0:
            wall += timedelta(seconds=1)
            written.add(stages.emit_kpis(wall), stages.tick_sla(wall))
        if rng.random() < 1 / CHECKPOINT_EVERY:
            # flush every output, then write the state: the worker's order
            written.add(stages.emit_kpis(wall), stages.tick_partition(state, wall))
            checkpoint = stages.checkpoint(state, store)
            store.write(state_db, checkpoint)
        if crash_at and i >= crash_at[0]:
            crash_at.pop(0)
            if i >= torn and torn >= 0:
                # a checkpoint whose contact rows were written, but not its head and tombstones
                state = stages.partitions[part]
                written.add(stages.emit_kpis(wall), stages.tick_partition(state, wall))
                checkpoint = stages.checkpoint(state, store)
                state_db.insert("stage_state", checkpoint.changed, column_names=list(_columns()))
                torn = -1
            stages = new_stages()  # everything in memory is lost
            wall += timedelta(minutes=1)
            loaded = store.load_many(state_db, list(by_partition))  # as the worker: one read for all
            for key in by_partition:
                restored = stages.restore(key, loaded[key])
                head = restored.kpi.head(key) or {}
                restored.kpi.adopt_written(key, written.provisional(key, head.get("next_final_ms") or 0))
                stages.partitions[key] = restored
                redone += position[key] - (restored.max_offset + 1)
                position[key] = restored.max_offset + 1
            i = 0  # deliveries are re-read in their original interleaving from each restored offset
    horizon = datetime.fromtimestamp(run.horizon_ms / 1000, UTC)
    for key, state in stages.partitions.items():
        state.kpi.advance_watermark(key, horizon)
    wall += timedelta(seconds=1)
    written.add(stages.emit_kpis(wall), stages.tick_sla(wall))
    while any(state.pending for state in stages.partitions.values()):  # released 40 per tick
        written.add([], stages.tick_sla(wall))

    assert redone > 100, f"the crashes redid only {redone} deliveries: they interrupted nothing"
    oracle = kpi_oracle(run.truth, until_ms=run.horizon_ms)
    rows = [row for row in written.kpi.values() if to_ms(row.window_start) < run.horizon_ms]
    expected = oracle.rows(run.horizon_ms, 1)
    actual, kpis, headlines = pipeline_columns(rows, 1)
    diffs = compare_rows(expected, actual) + compare_kpis(expected, kpis, headlines)
    sla = sla_oracle(run.truth, POLICIES, until_ms=run.horizon_ms)
    diffs += compare_breaches(sla.breaches, breaches_of(list(written.sla.values())))
    print(f"\n{redone} deliveries redone after 3 crashes; {len(expected)} windows, {len(sla.breaches)} breaches")
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


def _columns() -> tuple[str, ...]:
    from pipeline.worker.state_store import COLUMNS

    return COLUMNS


def forty_minutes(seed: int) -> tuple[Stages, datetime]:
    """Stages fed 40 simulated minutes on their partitions, and the wall clock they were fed at."""
    run = make_run(seed, START, timedelta(minutes=40))
    stages = new_stages()
    wall = datetime(2026, 11, 1, tzinfo=UTC)
    for offset, (_, part, event) in enumerate(run.arrivals):
        state = stages.partitions.get(part) or stages.partitions.setdefault(part, stages.new_state(part))
        stages.apply(state, event, offset, wall)
    return stages, wall


def test_a_checkpoint_writes_only_what_changed(state_db: Client) -> None:
    stages, wall = forty_minutes(SEED + 1)
    store = StateStore("incremental-test", "analytics")
    part, state = next(iter(stages.partitions.items()))
    first = stages.checkpoint(state, store)
    store.write(state_db, first)
    assert len(first.changed) == len(set(state.kpi.contact_ids(part)) | {c for c in state.raised if c in state.sla})

    quiet = stages.checkpoint(state, store)  # nothing happened since
    assert quiet.changed == [] and len(quiet.head_and_tombstones) == 1

    # the contact heard from last: an event 1 s after its latest is not late
    contact = max(state.kpi.contact_ids(part), key=lambda c: state.kpi.contact_events(part, c)[-1].occurred_at)
    event = state.kpi.contact_events(part, contact)[-1]
    later = event.model_copy(update={"event_id": "one-more", "occurred_at": event.occurred_at + timedelta(seconds=1)})
    stages.apply(state, later, 10**6, wall)
    one = stages.checkpoint(state, store)
    assert [row[4] for row in one.changed] == [contact]
    store.write(state_db, one)

    restored = new_stages().restore(part, store.load_many(state_db, [part])[part])
    assert restored.max_offset == 10**6
    assert sorted(restored.kpi.contact_ids(part)) == sorted(state.kpi.contact_ids(part))
    assert [e.event_id for e in restored.kpi.contact_events(part, contact)][-1] == "one-more"


def test_partitions_checkpointed_together_restore_each_its_own(state_db: Client) -> None:
    """One write for several partitions (the worker's checkpoint) and one read for several (its
    restore); the same partition number on two topics stays apart."""
    stages, _ = forty_minutes(SEED + 2)
    store = StateStore("batched-test", "analytics")
    parts = sorted(stages.partitions)
    assert len({p for _, p in parts}) < len(parts), "needs one partition number on two topics"
    store.write(state_db, [stages.checkpoint(stages.partitions[p], store) for p in parts])
    versions = store.head_versions(state_db, parts)
    assert versions == {p: stages.partitions[p].version for p in parts}
    never = ("touchline.interactions.nowhere", 0)
    loaded = store.load_many(state_db, [*parts, never])
    assert loaded[never].head is None and loaded[never].contacts == []
    for part in parts:
        restored = new_stages().restore(part, loaded[part])
        assert restored.max_offset == stages.partitions[part].max_offset
        assert sorted(restored.kpi.contact_ids(part)) == sorted(stages.partitions[part].kpi.contact_ids(part))

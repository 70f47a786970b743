"""Journey stage benchmark: how many contacts/s one partition of the journey stage handles, how its
state grows with simulated days, and how long a restore of that state takes.

    .venv/bin/python -m benchmarks.journeys --days 7 --rate 4000

The simulator's events (the `make soak` rate by default) are cut into batches as the analytics stage
forwards them, turned into contact-record messages (`forward_messages`), and run through what the
journey agent does per round (the messages waiting, up to `--take`: the stage runs flat out, as in
a backlog): read the records, apply them (identity graph + books), take the changed journeys, evict
what retention allows, build the ClickHouse rows and topic documents, and write every changed key
of state to RocksDB (rocksdict, the store Faust's tables use); each step's time is printed per
contact record. Not measured here: the ClickHouse insert (on the writer thread) and Kafka (the
changelog and topic sends); the integration tests cover those. Then the state as the tables would
hold it is read back from RocksDB and restored (`Stitcher.from_state`), timed.
"""

from __future__ import annotations

import gc
import json
import resource
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import click
from rocksdict import Options, Rdict

from benchmarks.soak import JOURNEY_WINDOWS
from pipeline.config import load_settings
from pipeline.events.models import EventBase
from pipeline.journeys.model import DAY
from pipeline.journeys.stitcher import Stitcher, collection_paused
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker import journeys as stage
from pipeline.worker.app import FREEZE_SECONDS, GC_THRESHOLDS
from pipeline.worker.journey_agent import CHANGES_SLICE, EVICT_SLICE, journey_rules


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.option("--days", type=float, default=7.0, show_default=True, help="Simulated days.")
@click.option("--rate", type=float, default=4000.0, show_default=True, help="Simulator rate (the `make soak` rate).")
@click.option("--customers", type=int, default=20_000, show_default=True)
@click.option("--batch", type=int, default=5000, show_default=True, help="Events per forwarded analytics batch.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--take", type=int, default=stage.TAKE_MESSAGES, show_default=True, help="Messages the stage takes per round."
)
@click.option(
    "--windows",
    type=click.Choice(sorted(JOURNEY_WINDOWS)),
    default="default",
    show_default=True,
    help="The journey windows: the settings' (7-day repeat window, 14-day dormancy, 24-hour margin, 30-day "
    "identity retention) or `make soak`'s short ones (12 hours, 1 day, 6 hours, 12 hours).",
)
def main(days: float, rate: float, customers: int, batch: int, seed: int, take: int, windows: str) -> None:
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=seed, start_ms=start, duration_ms=int(days * DAY), rate=rate, customers=customers)
    workdir = Path(tempfile.mkdtemp(prefix="touchline-journey-bench-"))
    # raw mode, as Faust's RocksDB store opens its databases
    identity_db = Rdict(str(workdir / "identity"), Options(raw_mode=True))
    contacts_db = Rdict(str(workdir / "contacts"), Options(raw_mode=True))
    emitted_db = Rdict(str(workdir / "emitted"), Options(raw_mode=True))
    # the journey stage's windows as the worker derives them, from the settings `make soak` gives
    overrides = {name.removeprefix("TOUCHLINE_").lower(): value for name, value in JOURNEY_WINDOWS[windows].items()}
    settings = load_settings(**overrides)
    rules = journey_rules(settings)
    keep_ms = int(settings.journey_keep_hours * 3_600_000)
    identity_ms = int(settings.journey_identity_retention_days * DAY)
    box = [
        Stitcher(journeys=rules, keep_ms=keep_ms, identity_retention_ms=identity_ms)
    ]  # the journey stage's core (a box, so it can be let go before the restore)
    # the collector as the worker runs it: its thresholds, and what survived frozen every 10 s
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    frozen_at = [time.perf_counter()]
    counts: Counter[str] = Counter()
    seconds = {"forward": 0.0, "stage": 0.0}
    steps: defaultdict[str, float] = defaultdict(float)  # seconds per step of the rounds
    day_end = start + DAY
    pending: list[EventBase] = []
    offset = 0
    click.echo(
        f"simulating {days:g} days at rate {rate:g} ({customers:,} customers), batches of {batch:,} events, "
        f"rounds of up to {take} messages"
    )

    waiting: list[bytes] = []  # messages on the journey topic not taken yet

    def run_batch(events: list[EventBase], last: bool = False) -> None:
        """One analytics batch forwarded; the journey stage takes the waiting messages in rounds of
        `take` (the last ones at the end of the run)."""
        t0 = time.perf_counter()
        messages = stage.forward_messages(events)
        t1 = time.perf_counter()
        waiting.extend(value for _, value, _ in messages)
        while len(waiting) >= take or (last and waiting):
            run_round(waiting[:take])
            del waiting[:take]
        t2 = time.perf_counter()
        seconds["forward"] += t1 - t0
        seconds["stage"] += t2 - t1
        counts["events"] += len(events)
        counts["messages"] += len(messages)

    def run_round(values: list[bytes]) -> None:
        nonlocal offset
        stitcher = box[0]
        t0 = time.perf_counter()
        for value in values:
            started = time.perf_counter()
            records, rejected = stage.read_records(value)
            applying = time.perf_counter()
            steps["reading records"] += applying - started
            counts["unreadable"] += len(rejected)
            for index, record in enumerate(records):
                stitcher.apply(record.with_seq(stage.arrival_seq(offset, index)))
            steps["applying (identity graph, books)"] += time.perf_counter() - applying
            counts["records"] += len(records)
            offset += 1
        counts["rounds"] += 1
        t1 = time.perf_counter()
        as_of = stitcher.as_of_ms or None
        changed = stitcher.changes(as_of, CHANGES_SLICE)
        while stitcher.store.pending:
            changed += stitcher.changes(as_of, CHANGES_SLICE)
        t2 = time.perf_counter()
        while as_of is not None:  # all that is due, in slices (as the agent does)
            evicted = stitcher.evict_due(as_of, EVICT_SLICE)
            counts["evicted_journeys"] += evicted.journeys
            counts["dropped_contacts"] += len(evicted.dropped)
            if not evicted.more:
                break
        t3 = time.perf_counter()
        out = stage.render_outputs(changed)
        t4 = time.perf_counter()
        counts["journey_versions"] += len(out.journeys)
        counts["step_rows"] += len(out.steps)
        counts["document_bytes"] += sum(len(value) for _, value in out.documents)
        for node, members in stitcher.identity_changes():
            if members is not None:
                identity_db[stage.component_key(node)] = stage.component_value(members)
            else:
                identity_db.delete(stage.component_key(node))
            counts["identity_writes"] += 1
        for contact_id in stitcher.record_changes:
            state = stitcher.record_state(contact_id)
            if state is not None:
                contacts_db[contact_id.encode()] = state
            else:
                contacts_db.delete(contact_id.encode())
            counts["record_writes"] += 1
        stitcher.record_changes.clear()
        for journey_id in stitcher.store.emitted_changes:
            entry = stitcher.store.emitted(journey_id)
            if entry is not None:
                emitted_db[journey_id.encode()] = stage.emitted_value(entry)
            else:
                emitted_db.delete(journey_id.encode())
            counts["emitted_writes"] += 1
        stitcher.store.emitted_changes.clear()
        t5 = time.perf_counter()
        if t5 - frozen_at[0] >= FREEZE_SECONDS:  # the worker's timer, on the same loop
            gc.collect(1)
            gc.freeze()
            frozen_at[0] = time.perf_counter()
            steps["collector (collect(1) and freeze every 10 s)"] += frozen_at[0] - t5
            t5 = frozen_at[0]
        steps["rebuilding changed journeys"] += t2 - t1
        steps["eviction"] += t3 - t2
        steps["rendering rows and documents"] += t4 - t3
        steps["encoding and writing state (RocksDB)"] += t5 - t4
        steps["round"] += t5 - t0

    contacts_seen: set[str] = set()
    for _, event in Simulation(config).run():
        if to_ms(event.occurred_at) >= day_end and pending:
            run_batch(pending)
            pending = []
            stitcher = box[0]
            active = sum(1 for r in stitcher.records.values() if r.active)
            click.echo(
                f"  day {(day_end - start) // DAY:>2}: {counts['events']:>10,} events, {len(contacts_seen):>9,} contacts "
                f"so far | held: {len(stitcher.records):>8,} records ({active:,} in journeys), "
                f"{len(stitcher.graph):>8,} identity nodes, {len(stitcher.store._emitted):>8,} journeys | RSS {rss_mb():,.0f} MB"
            )
            day_end += DAY
        pending.append(event)
        contacts_seen.add(event.contact_id)
        if len(pending) >= batch:
            run_batch(pending)
            pending = []
    run_batch(pending, last=True)
    stage_s, forward_s = seconds["stage"], seconds["forward"]
    click.echo(
        f"\n{counts['events']:,} events, {len(contacts_seen):,} contacts, {counts['records']:,} contact records in {counts['messages']:,} messages, {counts['rounds']:,} rounds"
    )
    click.echo(f"  analytics side, events -> record messages     {counts['events'] / forward_s:>12,.0f} events/s")
    click.echo(
        f"  journey stage (one partition), records        {counts['records'] / stage_s:>12,.0f} contact records/s"
    )
    click.echo(
        f"  journey stage (one partition), contacts       {len(contacts_seen) / stage_s:>12,.0f} contacts/s ({counts['records'] / len(contacts_seen):.2f} records per contact)"
    )
    click.echo(f"  journey stage, events it stands for           {counts['events'] / stage_s:>12,.0f} events/s")
    click.echo("  where a round's time goes, µs per contact record:")
    for step, took in steps.items():
        if step != "round":
            click.echo(f"    {step:<42} {took / counts['records'] * 1e6:>8.1f}")
    click.echo(f"    {'whole round':<42} {steps['round'] / counts['records'] * 1e6:>8.1f}")
    click.echo(
        f"  outputs: {counts['journey_versions']:,} journey versions, {counts['step_rows']:,} step rows; state writes: "
        f"{counts['identity_writes']:,} identity components, {counts['record_writes']:,} records, "
        f"{counts['emitted_writes']:,} journey versions"
    )
    click.echo(
        f"  evicted: {counts['evicted_journeys']:,} journeys; {counts['dropped_contacts']:,} contacts dropped entirely"
    )

    # restore: what the tables hold, read back and rebuilt
    held = len(box[0].records)
    record_bytes = sum(len(r.to_json()) for r in box[0].records.values())
    box.clear()
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    with collection_paused(freeze=True):  # as the journey agent restores
        components, _ = stage.decode_components([value for _, value in identity_db.items()])
        records, _ = stage.decode_records([value for _, value in contacts_db.items()])
        read_s = time.perf_counter() - started
        entries = stage.decode_entries([(cast(bytes, key), value) for key, value in emitted_db.items()])  # raw mode
        decoded_s = time.perf_counter() - started
        restored = Stitcher.from_state(
            records, entries, None, rules, keep_ms=keep_ms, identity_retention_ms=identity_ms, components=components
        )
    took = time.perf_counter() - started
    click.echo(
        f"\nrestore of {held:,} contact records ({record_bytes / 1e6:,.1f} MB) and {len(entries):,} journey versions: "
        f"{took:.2f} s (reading and decoding {len(components):,} identity components and the records {read_s:.2f} s, "
        f"the journey versions {decoded_s - read_s:.2f} s; rebuilding {took - decoded_s:.2f} s); "
        f"RSS +{rss_mb() - before:,.0f} MB; contacts tied again from their identifiers: {len(restored.record_changes):,}"
    )
    click.echo(
        json.dumps({"restore_seconds": round(took, 2), "contacts_per_second": round(len(contacts_seen) / stage_s)})
    )
    assert len(restored.records) == held
    # the same state restored the way state written before anchors is (the graph's unions replayed
    # in arrival order): what storing the components saves
    del restored
    with collection_paused(freeze=True):
        records, _ = stage.decode_records([value for _, value in contacts_db.items()])
        for record in records:
            record.anchor = None
        started = time.perf_counter()
        replayed = Stitcher.from_state(
            records, entries, None, rules, keep_ms=keep_ms, identity_retention_ms=identity_ms
        )
    click.echo(
        f"  the same state with the graph's unions replayed instead: rebuilding {time.perf_counter() - started:.2f} s"
    )
    assert len(replayed.records) == held
    identity_db.close()
    contacts_db.close()
    emitted_db.close()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What one partition of a journey stage split in two would handle: a *resolver* that keeps only the
identity graph and routes each contact record, unparsed, to the builder partition of its customer.

    .venv/bin/python -m benchmarks.journey_resolver --days 1

The worker does not run this split yet; its core is `pipeline.journeys.split` (README, "Customer
journeys", scale-out). Today one partition both ties identities and builds journeys
(`benchmarks/journeys.py` prints its contacts/s); 20,000 contacts/s on one partition needs the
per-journey work (rebuilding, rows, documents, state) spread over builder partitions, which leaves
on the one partition what this measures. Per forwarded message, as the stage reads them: its
identity header parsed (`pipeline.worker.journeys.IDENTITY_HEADER`: each record's contact id,
time, identifiers and links; `--records`: the records' JSON parsed instead, as before the header)
and handed to `Resolver.tie` (the graph's unions as `Stitcher.apply` makes them, the messages a
merge needs, the customer key and its builder), its line routed unparsed; then the resolver's
retention (`Resolver.evict_due`: contact nodes forgotten `keep` after their last record, customers
dropped after identity retention) and its keyed state changes (`Resolver.state_changes` after
every round of `TAKE_MESSAGES` messages: customer, component and contact entries; the components
encoded as the stage persists them, the others not, their encoding is not written yet). Not
measured: Kafka (the routed sends, the state's journal and changelog) and the builders.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic_core import from_json as parse_json

from pipeline.journeys.model import DAY
from pipeline.journeys.split import Resolver
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker import journeys as stage
from pipeline.worker.app import FREEZE_SECONDS, GC_THRESHOLDS

Command = TypeVar("Command", bound=Callable[..., Any])


def split_options(days: float, builders: int) -> Callable[[Command], Command]:
    """The options of the split journey stage's benchmarks (this one and `journey_builders`)."""

    def apply(command: Command) -> Command:
        for option in reversed(
            [
                click.option("--days", type=float, default=days, show_default=True, help="Simulated days."),
                click.option("--rate", type=float, default=4000.0, show_default=True, help="Simulator rate."),
                click.option("--customers", type=int, default=20_000, show_default=True),
                click.option("--batch", type=int, default=5000, show_default=True, help="Events per analytics batch."),
                click.option("--builders", type=int, default=builders, show_default=True, help="Builder partitions."),
                click.option("--seed", type=int, default=7, show_default=True),
            ]
        ):
            command = option(command)
        return command

    return apply


@click.command()
@split_options(days=1.0, builders=8)
@click.option("--keep-hours", type=float, default=24.0, show_default=True, help="Journey keep (lateness bound).")
@click.option("--identity-days", type=float, default=30.0, show_default=True, help="Identity retention.")
@click.option("--records", "parse_records", is_flag=True, help="Parse the records instead of the identity header.")
def main(
    days: float,
    rate: float,
    customers: int,
    batch: int,
    builders: int,
    seed: int,
    keep_hours: float,
    identity_days: float,
    parse_records: bool,
) -> None:
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=seed, start_ms=start, duration_ms=int(days * DAY), rate=rate, customers=customers)
    messages: list[tuple[bytes, dict[str, bytes]]] = []
    pending = []
    contacts: set[str] = set()
    for _, event in Simulation(config).run():
        pending.append(event)
        contacts.add(event.contact_id)
        if len(pending) >= batch:
            messages += [
                (value, {} if parse_records else headers) for _, value, headers in stage.forward_messages(pending)
            ]
            pending = []
    messages += [(value, {} if parse_records else headers) for _, value, headers in stage.forward_messages(pending)]
    del pending
    # the collector as the worker runs it: its thresholds, what exists before the run frozen, and
    # what survived young collections frozen every FREEZE_SECONDS
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    resolver = Resolver(builders, keep_ms=int(keep_hours * 3_600_000), identity_retention_ms=int(identity_days * DAY))
    routed: list[list[tuple[bytes, bytes]]] = [[] for _ in range(builders)]
    steps: defaultdict[str, float] = defaultdict(float)
    records = merges = component_writes = other_writes = 0
    began = settled = time.perf_counter()
    for read, (value, headers) in enumerate(messages, 1):
        t0 = time.perf_counter()
        lines = value.split(b"\n")
        identities = stage.read_identities(headers.items(), len(lines))
        if identities is None:  # a message without the header: its records parsed
            items = parse_json(b"[" + b",".join(lines) + b"]", cache_strings=False)
            identities = [
                (i["c"], i.get("s", 0), [(k, v) for k, v, _ in i.get("id", ())], [ln[:4] for ln in i.get("ln", ())])
                for i in items
            ]
        t1 = time.perf_counter()
        for line, (contact_id, seen_us, ids, links) in zip(lines, identities, strict=True):
            sent, customer, at = resolver.tie(contact_id, ids, links, seen_us)
            merges += len(sent)
            routed[at].append((customer.encode(), line))
        records += len(lines)
        t2 = time.perf_counter()
        while resolver.evict_due():
            pass
        t2r = time.perf_counter()
        if read % stage.TAKE_MESSAGES == 0:  # a checkpoint per round, as the stage takes them when busy
            changes = resolver.state_changes()
            for node, members in changes.components:
                stage.component_key(node)
                if members is not None:
                    stage.component_value(members)
            component_writes += len(changes.components)
            other_writes += len(changes.customers) + len(changes.contacts)
        t3 = time.perf_counter()
        if t3 - settled >= FREEZE_SECONDS:  # as the worker settles long-lived objects
            gc.collect(1)
            gc.freeze()
            settled = time.perf_counter()
            steps["collector (settling)"] += settled - t3
        steps["reading the records' JSON" if parse_records else "reading the identity header"] += t1 - t0
        steps["tying identifiers, routing"] += t2 - t1
        steps["retention"] += t2r - t2
        steps["state changes (components encoded)"] += t3 - t2r
    took = time.perf_counter() - began
    click.echo(
        f"{records:,} contact records of {len(contacts):,} contacts in {len(messages):,} messages "
        f"({days:g} simulated days at rate {rate:g}); {merges:,} merges moving a customer's book, "
        f"{component_writes:,} component writes, {other_writes:,} customer and contact writes (not encoded)"
    )
    click.echo(
        f"  resolver (one partition): {records / took:,.0f} contact records/s, {len(contacts) / took:,.0f} contacts/s"
    )
    for step, seconds in steps.items():
        click.echo(f"    {step:<32} {seconds / records * 1e6:>6.1f} µs a record")
    click.echo(f"    {'all':<32} {took / records * 1e6:>6.1f} µs a record")
    click.echo(
        f"  held at the end: {len(resolver.seen):,} contact nodes, {len(resolver.graph):,} graph nodes, "
        f"{len(resolver.owner):,} customers"
    )
    shares = sorted(len(part) for part in routed)
    click.echo(f"  records per builder ({builders}): fewest {shares[0]:,}, most {shares[-1]:,}")


if __name__ == "__main__":
    main()

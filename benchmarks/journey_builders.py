"""What the builder partitions of a journey stage split in two would handle: each keeps the books and
journeys of the customers the resolver routes to it (`pipeline.journeys.split`; README, "Customer
journeys", scale-out).

    .venv/bin/python -m benchmarks.journey_builders --days 7 --builders 4

The simulator's events are forwarded as the analytics stage forwards them; the resolver takes them
in rounds of up to `--take` messages (as the journey agent does), ties each record and routes its
line, unparsed, with the customer key (not timed: `benchmarks/journey_resolver.py` measures it),
and the messages its merges need, then a `Tick`. After each of its rounds every builder takes
what was routed to it, as a round: it parses its lines, applies them in order with the resolver's
other messages and the hand-overs other builders sent it (`Builder.handle`), takes the changed
journeys and runs retention (`Builder.tick`), and renders the rows and documents. Each builder's
time is its own, so its contacts/s is what it would handle in a process of its own. Not measured:
the builders' state (they have no tables yet; the single stage spends about 20 µs a record
encoding and writing its state, `benchmarks/journeys.py`), Kafka and ClickHouse.
"""

from __future__ import annotations

import gc
import time
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime

import click

from benchmarks.journey_resolver import split_options
from benchmarks.soak import JOURNEY_WINDOWS
from pipeline.config import load_settings
from pipeline.events.models import EventBase
from pipeline.journeys.model import DAY
from pipeline.journeys.split import Builder, Filed, Message, Resolver, TakeOver, Tick, check_windows
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker import journeys as stage
from pipeline.worker.app import FREEZE_SECONDS, GC_THRESHOLDS
from pipeline.worker.journey_agent import journey_rules

Routed = tuple[str, bytes, int] | Message  # (customer, line, arrival seq) or another message


@click.command()
@split_options(days=7.0, builders=4)
@click.option("--take", type=int, default=stage.TAKE_MESSAGES, show_default=True, help="Messages a round.")
@click.option(
    "--windows",
    type=click.Choice(sorted(JOURNEY_WINDOWS)),
    default="default",
    show_default=True,
    help="The journey windows: the settings' or `make soak`'s short ones.",
)
def main(
    days: float, rate: float, customers: int, batch: int, builders: int, seed: int, take: int, windows: str
) -> None:
    start = to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    config = SimConfig(seed=seed, start_ms=start, duration_ms=int(days * DAY), rate=rate, customers=customers)
    overrides = {name.removeprefix("TOUCHLINE_").lower(): value for name, value in JOURNEY_WINDOWS[windows].items()}
    settings = load_settings(**overrides)
    rules = journey_rules(settings)
    keep_ms = int(settings.journey_keep_hours * 3_600_000)
    identity_ms = int(settings.journey_identity_retention_days * DAY)
    try:
        check_windows(rules, keep_ms, identity_ms)
    except ValueError as error:  # `make soak`'s short windows keep identities 12 hours only
        raise click.BadParameter(str(error), param_hint="--windows") from None
    resolver = Resolver(builders, keep_ms=keep_ms, identity_retention_ms=identity_ms)
    parts = [Builder(i, rules, keep_ms=keep_ms) for i in range(builders)]
    queues: list[deque[Routed]] = [deque() for _ in range(builders)]
    spent: list[defaultdict[str, float]] = [defaultdict(float) for _ in range(builders)]
    contacts: list[set[str]] = [set() for _ in range(builders)]
    counts: Counter[str] = Counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    settled = [time.perf_counter()]
    offset = 0

    def route(value: bytes) -> None:
        """The resolver's side of one forwarded message (untimed)."""
        nonlocal offset
        lines = value.strip(b"\n").split(b"\n")
        records, rejected = stage.read_records(value)
        assert not rejected and len(records) == len(lines)
        for index, (line, record) in enumerate(zip(lines, records, strict=True)):
            sent, customer, at = resolver.tie(record.contact_id, record.ids, record.links, record.seen_us)
            for to, message in sent:
                queues[to].append(message)
            queues[at].append((customer, line, stage.arrival_seq(offset, index)))
            contacts[at].add(record.contact_id)
        offset += 1
        counts["records"] += len(lines)

    def end_round() -> None:
        while resolver.evict_due():
            pass
        for to, message in resolver.tick():
            queues[to].append(message)
        for index in range(builders):
            run_round(index)

    def run_round(index: int) -> None:
        part, queue, steps = parts[index], queues[index], spent[index]
        taken = list(queue)
        queue.clear()
        t0 = time.perf_counter()
        lines = [item[1] for item in taken if isinstance(item, tuple)]
        records, rejected = stage.read_records(b"\n".join(lines)) if lines else ([], [])
        assert not rejected
        t1 = time.perf_counter()
        read = iter(records)
        versions = []
        ticking = 0.0
        for item in taken:
            if isinstance(item, tuple):
                customer, _, seq = item
                message: Message = Filed(customer, next(read).with_seq(seq), resolver.as_of_ms)
            else:
                message = item
            for to, sent in part.handle(message):
                counts["hand-overs"] += isinstance(sent, TakeOver)
                queues[to].append(sent)
            if isinstance(message, Tick):
                t2 = time.perf_counter()
                versions += part.tick()
                ticking += time.perf_counter() - t2
        t3 = time.perf_counter()
        out = stage.render_outputs(versions)
        t4 = time.perf_counter()
        counts["journey versions"] += len(out.journeys)
        steps["reading records"] += t1 - t0
        steps["applying"] += t3 - t1 - ticking
        steps["journeys and retention (tick)"] += ticking
        steps["rendering rows and documents"] += t4 - t3
        steps["round"] += t4 - t0
        if t4 - settled[0] >= FREEZE_SECONDS:  # each builder's worker would do so on its own
            gc.collect(1)
            gc.freeze()
            settled[0] = time.perf_counter()
            steps["collector (settling)"] += settled[0] - t4

    pending: list[EventBase] = []
    waiting: list[bytes] = []  # forwarded messages the resolver has not taken yet
    for _, event in Simulation(config).run():
        pending.append(event)
        if len(pending) >= batch:
            waiting += [value for _, value, _ in stage.forward_messages(pending)]
            pending = []
            while len(waiting) >= take:
                for value in waiting[:take]:
                    route(value)
                del waiting[:take]
                end_round()
    for value in waiting + [value for _, value, _ in stage.forward_messages(pending)]:
        route(value)
    end_round()
    while any(queues):
        for index in range(builders):
            run_round(index)
    records = counts["records"]
    everyone = sum(len(c) for c in contacts)
    click.echo(
        f"{records:,} contact records of {everyone:,} contacts ({days:g} simulated days at rate {rate:g}, "
        f"{windows} windows); {builders} builders, {counts['hand-overs']:,} books handed over, "
        f"{counts['journey versions']:,} journey versions"
    )
    for index, steps in enumerate(spent):
        mine = steps["round"]
        click.echo(
            f"  builder {index}: {len(contacts[index]):,} contacts, {len(contacts[index]) / mine:,.0f} contacts/s "
            f"in {mine:.1f} s | held at the end: {len(parts[index].records):,} records, "
            f"{len(parts[index].store._emitted):,} journeys"
        )
    total: defaultdict[str, float] = defaultdict(float)
    for steps in spent:
        for step, seconds in steps.items():
            total[step] += seconds
    click.echo(f"  all builders, µs a record: ({everyone / total['round']:,.0f} contacts/s on one core)")
    for step, seconds in total.items():
        click.echo(f"    {step:<36} {seconds / records * 1e6:>6.1f}")


if __name__ == "__main__":
    main()

"""Memory of the analytics core alone (KPI windows + SLA clocks, `pipeline.worker.stages.Stages`),
fed as the worker feeds it: simulated days at a rate, each event applied on its source partition,
KPIs emitted (60 windows per partition per pass), SLA ticked on the event clock and a checkpoint's
records taken every simulated minute (freezing and eviction happen there). No Kafka, no ClickHouse,
no journey stage: what the state itself costs.

    .venv/bin/python -m benchmarks.analytics_memory --days 3 --rate 4000

Prints every simulated quarter day: events, RSS, contacts held by each core.
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from pipeline.kpi.settings import KpiConfig
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.sla.policy import load_policies
from pipeline.times import from_ms
from pipeline.worker.stages import PartitionState, Stages
from tests.unit.test_truth_oracles import partition_of

START = datetime(2026, 3, 2, tzinfo=UTC)
QUARTER_DAY_MS = 21_600_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@click.command()
@click.option("--days", default=3.0, show_default=True)
@click.option("--rate", default=4000.0, show_default=True, help="Simulator rate (new contacts per hour at peak).")
def main(days: float, rate: float) -> None:
    start_ms = int(START.timestamp() * 1000)
    sim = Simulation(SimConfig(seed=1, start_ms=start_ms, duration_ms=int(days * 86_400_000), rate=rate))
    stages = Stages(KpiConfig(), load_policies(Path("deploy/sla-policies.yaml")), app_id="memory", sla_clock="event")
    stages.release_limit = 2_000
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as the worker
    began, events, last_minute, quarter = time.monotonic(), 0, 0, 0
    for offset, (event_ms, event) in enumerate(sim.run()):
        key = partition_of(event)
        state: PartitionState | None = stages.partitions.get(key)
        if state is None:
            state = stages.partitions[key] = stages.new_state(key)
        now = from_ms(event_ms)
        stages.apply(state, event, offset, now)
        events = offset + 1
        if event_ms - last_minute >= 60_000:
            last_minute = event_ms
            stages.emit_kpis(now, None, 60)
            stages.tick_sla(now)
            for held in stages.partitions.values():
                stages.contact_records(held, stages.begin_checkpoint(held).contacts)
        if (event_ms - start_ms) // QUARTER_DAY_MS > quarter:
            quarter = (event_ms - start_ms) // QUARTER_DAY_MS
            gc.collect(1)
            gc.freeze()  # as the worker does every minute
            kpi = sum(s.kpi.live_contacts(s.key) for s in stages.partitions.values())
            sla = sum(len(s.sla) for s in stages.partitions.values())
            click.echo(
                f"day {quarter / 4:.2f}: {events:,} events, RSS {rss_mb():,.0f} MB, "
                f"contacts held: KPI {kpi:,}, SLA {sla:,} ({time.monotonic() - began:.0f} s)"
            )


if __name__ == "__main__":
    main()

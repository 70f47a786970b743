"""Pure-core acceptance: a seeded simulation, shuffled within 2 minutes and 5 % redelivered, fed
through the real KPI windows and SLA engine (no Kafka, no ClickHouse) must reproduce the
independent truth oracles exactly: every 1-minute KPI window (counts, value lists, percentiles,
backlog) and the set of SLA breaches.

Feeding mirrors the worker: events are keyed to (channel topic, murmur2(contact_id) mod 4) like the
Kafka producer does, each partition keeps its own windows and SLA engine, and the run ends by
moving every partition's watermark to the simulation horizon. The SLA engine needs each contact's
events in event-time order, so its feed goes through a reorder buffer released at the partition's
watermark (max event time seen - the 2-minute shuffle bound), and `advance` follows that watermark.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from kafka.partitioner.default import murmur2

from pipeline.events.models import EventBase
from pipeline.events.topics import interaction_topic
from pipeline.kpi.definitions import kpi_values
from pipeline.kpi.rows import KpiRow
from pipeline.kpi.windows import KpiWindows
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.sla.clock import SlaEngine, SlaEvent, SlaKind
from pipeline.sla.policy import load_policies
from pipeline.times import to_ms
from tests.oracles import kpi_truth, sla_truth
from tests.oracles.kpi_truth import (
    COMPARED_COLUMNS,
    compare_kpis,
    compare_rows,
    kpi_oracle,
    parse_view_rows,
    view_query,
)
from tests.oracles.sla_truth import BREACH_QUERY, Breach, compare_breaches, parse_breach_rows, sla_oracle
from tests.support.kpi_reference import merge_partials

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "deploy" / "sla-policies.yaml"
SEED = 3
START = datetime(2026, 3, 2, 8, tzinfo=UTC)  # a Monday, 08:00 UTC (= London time in March)
DURATION = timedelta(hours=6)
RATE = 600.0  # new issues per hour at the daily peak
PARTITIONS = 4
SHUFFLE_MS = 117_000  # arrival delay of every event: uniform in [0, SHUFFLE_MS]
DUPLICATE_RATE = 0.05
DUPLICATE_DELAY_MS = (50, 3_000)  # a redelivery comes this long after the first delivery
ORDER_BOUND_MS = SHUFFLE_MS + DUPLICATE_DELAY_MS[1]  # no message arrives later than this after its event
SHOW = 15  # mismatches printed on failure


@dataclass(frozen=True)
class Run:
    horizon_ms: int
    truth: list[dict[str, Any]]
    arrivals: list[tuple[int, tuple[str, int], EventBase]]  # (arrival ms, partition, event), arrival order
    distinct_events: int


def partition_of(event: EventBase) -> tuple[str, int]:
    """Where the simulator's producer puts the event: its channel's topic, murmur2(key) mod 4."""
    return interaction_topic(event.channel), (murmur2(event.contact_id.encode()) & 0x7FFFFFFF) % PARTITIONS


def make_run(seed: int, start: datetime, duration: timedelta) -> Run:
    """Simulate, then deliver: every event delayed by up to SHUFFLE_MS, DUPLICATE_RATE redelivered."""
    start_ms = to_ms(start)
    duration_ms = int(duration.total_seconds() * 1000)
    sim = Simulation(SimConfig(seed=seed, start_ms=start_ms, duration_ms=duration_ms, rate=RATE))
    rng = random.Random(f"truth-oracles/{seed}")
    arrivals: list[tuple[int, int, tuple[str, int], EventBase]] = []
    n = 0
    for event_ms, event in sim.run():
        part = partition_of(event)
        deliver = event_ms + rng.randint(0, SHUFFLE_MS)
        arrivals.append((deliver, n, part, event))
        n += 1
        if rng.random() < DUPLICATE_RATE:
            arrivals.append((deliver + rng.randint(*DUPLICATE_DELAY_MS), n, part, event))
            n += 1
    arrivals.sort(key=lambda a: (a[0], a[1]))
    assert sim.as_of_ms == start_ms + duration_ms
    distinct = len({a[3].event_id for a in arrivals})
    return Run(sim.as_of_ms, [c.as_dict() for c in sim.contacts], [(a[0], a[2], a[3]) for a in arrivals], distinct)


@pytest.fixture(scope="module")
def run() -> Run:
    return make_run(SEED, START, DURATION)


@pytest.fixture(scope="module")
def easter_run() -> Run:
    """Friday 27 March 2026 afternoon: e-mail business-time deadlines cross a weekend, the UK
    spring-forward (29 March), Good Friday (3 April) and Easter Monday (6 April)."""
    return make_run(SEED + 1, datetime(2026, 3, 27, 12, tzinfo=UTC), timedelta(hours=4))


# ---------------------------------------------------------------------------------------------
# The pipeline side


def pipeline_kpi_rows(run: Run) -> list[KpiRow]:
    """Latest emitted row per partial-row key after the run, with every partition's watermark at
    the horizon."""
    windows = KpiWindows()
    latest: dict[tuple[Any, ...], KpiRow] = {}
    wall = datetime(2026, 11, 1, tzinfo=UTC)
    for i, (_, part, event) in enumerate(run.arrivals):
        late = windows.apply(event, part)
        assert late is None, f"no event may be late here (shuffle < allowed lateness): {late}"
        if i % 500 == 0:
            wall += timedelta(seconds=1)
            for row in windows.emit(wall):
                latest[row.key] = row
    horizon = datetime.fromtimestamp(run.horizon_ms / 1000, UTC)
    for part in windows.partitions:
        windows.advance_watermark(part, horizon)
    for row in windows.emit(wall + timedelta(seconds=1)):
        latest[row.key] = row
    return [row for row in latest.values() if to_ms(row.window_start) < run.horizon_ms]


def pipeline_columns(
    rows: list[KpiRow], minutes: int = 1
) -> tuple[dict[Any, dict[str, Any]], dict[Any, dict[str, Any]], dict[Any, str]]:
    """Merged rows as the kpi_minute (kpi_15m, kpi_1h) view would show them: compared columns, KPI
    values and headline formula per (bucket start ms, channel, queue, priority)."""
    columns: dict[Any, dict[str, Any]] = {}
    kpis: dict[Any, dict[str, Any]] = {}
    headlines: dict[Any, str] = {}
    for merged in merge_partials(rows, minutes):
        key = (to_ms(merged["window_start"]), merged["channel"], merged["queue"], merged["priority"])
        assert merged["final"], f"window {key} is not final"
        columns[key] = {c: merged[c] for c in COMPARED_COLUMNS}
        kpis[key] = kpi_values(merged)
        headlines[key] = merged["sl_headline"]
    return columns, kpis, headlines


class _Reorder:
    """Per-partition buffer releasing events in (event time, event_id) order once the partition's
    watermark (max event time seen - ORDER_BOUND_MS) passes them; nothing older can still come."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, str, int, EventBase]] = []
        self.max_ms: int | None = None
        self.seq = 0

    def push(self, event: EventBase) -> None:
        t = to_ms(event.occurred_at)
        self.seq += 1
        heapq.heappush(self.heap, (t, event.event_id, self.seq, event))
        self.max_ms = t if self.max_ms is None else max(self.max_ms, t)

    def watermark(self) -> int | None:
        return None if self.max_ms is None else self.max_ms - ORDER_BOUND_MS

    def release(self, upto: int | None) -> Iterator[EventBase]:
        while self.heap and (upto is None or self.heap[0][0] <= upto):
            yield heapq.heappop(self.heap)[3]


_SLA_CACHE: dict[tuple[int, int], list[SlaEvent]] = {}


def pipeline_sla_events(run: Run, until_ms: int) -> list[SlaEvent]:
    key = (id(run), until_ms)
    if key not in _SLA_CACHE:
        _SLA_CACHE[key] = _feed_sla(run, until_ms)
    return _SLA_CACHE[key]


def _feed_sla(run: Run, until_ms: int) -> list[SlaEvent]:
    policies = load_policies(POLICIES)
    engines: dict[tuple[str, int], SlaEngine] = {}
    buffers: dict[tuple[str, int], _Reorder] = {}
    out: list[SlaEvent] = []
    for _, part, event in run.arrivals:
        engine = engines.setdefault(part, SlaEngine(policies))
        buffer = buffers.setdefault(part, _Reorder())
        buffer.push(event)
        watermark = buffer.watermark()
        assert watermark is not None
        for ready in buffer.release(watermark):
            out.extend(engine.apply(ready))
        out.extend(engine.advance(datetime.fromtimestamp(watermark / 1000, UTC)))
    until = datetime.fromtimestamp(until_ms / 1000, UTC)
    for part, engine in engines.items():
        for ready in buffers[part].release(None):
            out.extend(engine.apply(ready))
        out.extend(engine.advance(until))
    return out


def breaches_of(events: list[SlaEvent]) -> set[Breach]:
    found = [
        Breach(e.contact_id, e.target.value, to_ms(e.started_at), to_ms(e.deadline), e.policy)
        for e in events
        if e.kind is SlaKind.BREACHED
    ]
    assert len(found) == len(set(found)), "a breach was raised twice"
    return set(found)


# ---------------------------------------------------------------------------------------------
# Tests


def test_oracles_are_consistent_with_the_simulator(run: Run) -> None:
    """The oracles' assumptions about the model hold for this run (no same-ms ambiguities, the
    simulator's own talk/hold and bot-containment agree with the documented definitions)."""
    oracle = kpi_oracle(run.truth, until_ms=run.horizon_ms)
    assert oracle.problems == [], "\n".join(oracle.problems[:SHOW])


@pytest.fixture(scope="module")
def kpi_rows(run: Run) -> list[KpiRow]:
    return pipeline_kpi_rows(run)


@pytest.mark.parametrize("minutes", [1, 15, 60], ids=["kpi_minute", "kpi_15m", "kpi_1h"])
def test_kpi_windows_equal_the_truth(run: Run, kpi_rows: list[KpiRow], minutes: int) -> None:
    oracle = kpi_oracle(run.truth, until_ms=run.horizon_ms)
    expected = oracle.rows(run.horizon_ms, minutes)
    actual, kpis, headlines = pipeline_columns(kpi_rows, minutes)
    diffs = compare_rows(expected, actual)
    diffs += compare_kpis(expected, kpis, headlines)
    zero_rows = len(set(actual) - set(expected))
    totals = Counter({c: sum(r[c] for r in expected.values()) for c in kpi_truth.COUNT_NAMES})
    longest = max(len(r["answer_waits"]) for r in expected.values())
    print(
        f"\nKPI {minutes} min: {len(expected)} oracle windows vs {len(actual)} pipeline windows "
        f"({zero_rows} all-zero pipeline rows, {len(kpi_rows)} partial rows), {oracle.contacts} contacts, "
        f"{run.distinct_events} distinct events in {len(run.arrivals)} deliveries, longest answer_waits list "
        f"{longest}; {len(diffs)} mismatches\n  totals {dict(totals)}"
    )
    assert totals["offered"] > 1000 and totals["abandoned"] > 50 and totals["transfers"] > 20
    assert sum(len(r["next_response_times"]) for r in expected.values()) > 500
    assert sum(r["backlog_end"] for r in expected.values()) > 0
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


@pytest.mark.parametrize(
    ("scenario", "extra_days"),
    [("run", 0), ("run", 10), ("easter_run", 20)],
    ids=["to-horizon", "10-days-after", "easter-dst-20-days-after"],
)
def test_sla_breaches_equal_the_truth(request: pytest.FixtureRequest, scenario: str, extra_days: int) -> None:
    """Breaches raised by `advance(until)`: at the horizon, and days later (nothing happens after
    the horizon, so obligations still open then breach at their deadlines - which exercises the
    business-hours calendar of the e-mail policies)."""
    run: Run = request.getfixturevalue(scenario)
    until_ms = run.horizon_ms + extra_days * 86_400_000
    oracle = sla_oracle(run.truth, POLICIES, until_ms=until_ms)
    actual = breaches_of(pipeline_sla_events(run, until_ms))
    diffs = compare_breaches(oracle.breaches, actual)
    by_target = Counter(b.target for b in oracle.breaches)
    by_policy = Counter(b.policy for b in oracle.breaches)
    print(
        f"\nSLA {scenario} +{extra_days} d: {oracle.contacts} contacts, {oracle.obligations} obligations, "
        f"{len(oracle.breaches)} oracle breaches {dict(by_target)} vs {len(actual)} pipeline breaches; "
        f"{len(diffs)} mismatches\n  by policy {dict(sorted(by_policy.items()))}"
    )
    if scenario == "run" and extra_days == 0:
        assert all(by_target[t] > 10 for t in sla_truth.TARGETS), by_target
    else:
        assert sum(n for p, n in by_policy.items() if p.startswith("email")) > 10, by_policy
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


# ---------------------------------------------------------------------------------------------
# The same rows through the real ClickHouse views (embedded chDB, own database)


@pytest.fixture(scope="module")
def views_db(clickhouse: Client) -> Client:
    """A fresh database beside the session's (other tests write kpi/sla tables there too)."""
    from pipeline.store import clickhouse as store
    from pipeline.store.migrations import migrate

    dsn = next(key[0] for key, client in store._clients.items() if client is clickhouse)
    client = store.connect(dsn, "truth_oracles")
    migrate(client)
    client.command("TRUNCATE TABLE IF EXISTS kpi_minute_partials")
    client.command("TRUNCATE TABLE IF EXISTS sla_events")
    return client


def test_clickhouse_views_equal_the_truth(run: Run, kpi_rows: list[KpiRow], views_db: Client) -> None:
    """The partial rows and SLA events written as the worker writes them, read back through the
    kpi_minute / kpi_15m / kpi_1h views and `sla_events FINAL` with the integration test's queries:
    ClickHouse's merge, quantileExact and FINAL must give the oracle's values too."""
    from pipeline.kpi.rows import PARTIAL_COLUMNS
    from pipeline.sla.clock import SLA_EVENT_COLUMNS
    from pipeline.store.clickhouse import insert_rows
    from pipeline.store.readonly import run_readonly

    insert_rows(views_db, "kpi_minute_partials", PARTIAL_COLUMNS, [list(r.record().values()) for r in kpi_rows])
    emitted = datetime(2026, 11, 1, tzinfo=UTC)
    events = pipeline_sla_events(run, run.horizon_ms)
    insert_rows(views_db, "sla_events", SLA_EVENT_COLUMNS, [e.to_row(emitted) for e in events])
    insert_rows(views_db, "sla_events", SLA_EVENT_COLUMNS, [e.to_row(emitted + timedelta(seconds=1)) for e in events])

    oracle = kpi_oracle(run.truth, until_ms=run.horizon_ms)
    diffs: list[str] = []
    for view, minutes in (("kpi_minute", 1), ("kpi_15m", 15), ("kpi_1h", 60)):
        stored = parse_view_rows(run_readonly(views_db, view_query(view, run.horizon_ms))[1])
        expected = oracle.rows(run.horizon_ms, minutes)
        diffs += [f"{view}: not final: {key}" for key in stored.not_final]
        diffs += [f"{view}: {d}" for d in compare_rows(expected, stored.columns)]
        diffs += [f"{view}: {d}" for d in compare_kpis(expected, stored.kpis, stored.headlines)]
        print(f"\n{view}: {len(expected)} oracle windows vs {len(stored.columns)} in ClickHouse")
    stored_breaches = parse_breach_rows(run_readonly(views_db, BREACH_QUERY)[1])
    assert len(stored_breaches) == len(set(stored_breaches))
    sla = sla_oracle(run.truth, POLICIES, until_ms=run.horizon_ms)
    diffs += compare_breaches(sla.breaches, set(stored_breaches))
    print(f"sla_events FINAL: {len(sla.breaches)} oracle breaches vs {len(stored_breaches)} stored")
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


# ---------------------------------------------------------------------------------------------
# The worker's wiring (pipeline.worker.stages) under the same delivery


def stages_sla_events(run: Run, until_ms: int) -> list[SlaEvent]:
    """The SLA outcomes `Stages` raises with the event-time clock, events in arrival order."""
    from pipeline.kpi.settings import KpiConfig
    from pipeline.worker.stages import Stages

    stages = Stages(KpiConfig(), load_policies(POLICIES), app_id="oracle-test", sla_clock="event")
    wall = datetime(2026, 11, 1, tzinfo=UTC)
    out: list[SlaEvent] = []
    for offset, (_, part, event) in enumerate(run.arrivals):
        state = stages.partitions.get(part)
        if state is None:
            state = stages.partitions[part] = stages.new_state(part)
        outputs = stages.apply(state, event, offset, wall)
        assert not outputs.late
        out.extend(outputs.sla)
        if offset % 200 == 0:
            out.extend(stages.tick_sla(wall))
    until = datetime.fromtimestamp(until_ms / 1000, UTC)
    for key, state in stages.partitions.items():
        state.kpi.advance_watermark(key, until)
    out.extend(stages.tick_sla(wall))
    return out


def test_worker_stages_sla_breaches_equal_the_truth(run: Run) -> None:
    oracle = sla_oracle(run.truth, POLICIES, until_ms=run.horizon_ms)
    actual = breaches_of(stages_sla_events(run, run.horizon_ms))
    diffs = compare_breaches(oracle.breaches, actual)
    print(
        f"\nSLA via Stages: {len(oracle.breaches)} oracle vs {len(actual)} pipeline breaches; {len(diffs)} mismatches"
    )
    assert not diffs, f"{len(diffs)} mismatches, first {SHOW}:\n" + "\n".join(diffs[:SHOW])


def test_worker_stages_late_answer_is_not_a_breach() -> None:
    """Minimal: a voice call answered 1 s after queueing (first_response met, 20 s target); the
    `agent_assigned` is delivered after a `hold_started` 60 s later. No breach may be raised."""
    from pipeline.events.models import AgentAssigned, Channel, ContactStarted, HoldStarted, Queued
    from pipeline.kpi.settings import KpiConfig
    from pipeline.worker.stages import Stages

    t0 = START
    common: dict[str, Any] = {"channel": Channel.VOICE, "contact_id": "c-late", "segment": "retail"}
    started = ContactStarted(event_id="e1", occurred_at=t0, **common)
    queued = Queued(event_id="e2", occurred_at=t0 + timedelta(seconds=5), queue="voice.general", **common)
    answered = AgentAssigned(event_id="e3", occurred_at=t0 + timedelta(seconds=6), queue="voice.general", **common)
    hold = HoldStarted(event_id="e4", occurred_at=t0 + timedelta(seconds=60), queue="voice.general", **common)
    stages = Stages(KpiConfig(), load_policies(POLICIES), app_id="oracle-test", sla_clock="event")
    key = (interaction_topic(Channel.VOICE), 0)
    state = stages.partitions[key] = stages.new_state(key)
    raised: list[SlaEvent] = []
    wall = datetime(2026, 11, 1, tzinfo=UTC)
    for offset, event in enumerate([started, queued, hold, answered]):  # `answered` arrives 54 s late
        raised.extend(stages.apply(state, event, offset, wall).sla)
    raised.extend(stages.tick_sla(wall))
    kinds = [(e.target.value, e.kind.value) for e in raised]
    assert ("first_response", "breached") not in kinds, kinds

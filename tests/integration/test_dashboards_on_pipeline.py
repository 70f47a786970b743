"""Every dashboard panel query and every Grafana alert query, on rows written by a real pipeline run.

A seeded simulation (three morning hours from 2026-03-02T08:00Z, with duplicates, late deliveries
and malformed messages) goes through the real broker and one real worker in event-clock SLA mode,
run to completion as in test_kpi_sla_e2e.py (end-of-stream markers push every watermark past the
horizon, so KPI windows are final and every SLA breach up to the horizon is written). Then each
query of `pipeline.dashboards.queries`, expanded as Grafana's ClickHouse plugin expands it (template
variables, then `$__timeFilter` / `$__timeInterval` / `$__fromTime` / `$__toTime`), runs through the
worker's read-only `/sql` and must return the columns and types its panel expects.

Alerts, against the simulator's truth (the independent SLA oracle of tests/oracles, not the
pipeline's code):
* breach: the 5-minute window in which one channel/queue has the most oracle breaches; the
  SLA-breach alert query over that window returns exactly the channel/queues the oracle says have at
  least BREACH_ALERT_MIN_BREACHES breaches, with those counts;
* healthy: windows in which the truth has no SLA breach, no contact waiting longer than its
  channel's service-level threshold and no (non-short) abandon; every alert query returns no rows.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.dashboards import queries as q
from pipeline.dashboards.alerts import ALERTS, AlertSpec
from pipeline.kpi.settings import DEFAULT_SL_THRESHOLDS
from pipeline.simulator.truth import read_truth
from tests.oracles import ms_of
from tests.oracles.sla_truth import Breach, sla_oracle
from tests.support.kpi_sla import WORKER_ENV, lowest_watermark_ms, send_end_of_stream
from tests.support.macros import ALL, TimeRange, Variable, column_kind, expand

from .conftest import REPO, Worker, open_workspace, wait_until

pytestmark = pytest.mark.integration

POLICIES = REPO / "deploy" / "sla-policies.yaml"
SEED = "11"
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DURATION = "3h"
RATE = "600"
FAULTS = ("--duplicate-rate", "0.05", "--late-rate", "0.05", "--max-lateness", "120", "--bad-rate", "0.01")
END_OF_STREAM = timedelta(minutes=10)
SHORT_ABANDON_SECONDS = 5.0  # the KPI default (pipeline.kpi.settings)
HEALTHY_WINDOWS_CHECKED = 5

ALL_SELECTED = {name: Variable([ALL], q.ALL_VALUE) for name in ("channel", "queue", "priority", "segment")}
ONE_QUEUE = {**ALL_SELECTED, "channel": Variable(["voice"]), "queue": Variable(["voice.general"])}
SELECTIONS = {"all": ALL_SELECTED, "voice.general": ONE_QUEUE}


@dataclass
class Run:
    worker: Worker
    contacts: list[dict[str, Any]]
    start_ms: int
    horizon_ms: int
    breaches: set[Breach]

    @property
    def time_range(self) -> TimeRange:
        return TimeRange(START, datetime.fromtimestamp(self.horizon_ms / 1000, UTC), interval_seconds=60)


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[list[Any]]

    def named(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def sql(worker: Worker, query: str) -> Result:
    """The worker's `/sql` with the column names (Worker.sql keeps only the rows)."""
    request = urllib.request.Request(f"{worker.url}/sql?format=json", data=query.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"query failed: {error.read().decode(errors='replace')}\n{query}") from error
    return Result(body["columns"], body["rows"])


def column_kinds(worker: Worker, expanded: str) -> dict[str, str]:
    """Result columns of an expanded query and their kind, from ClickHouse's own DESCRIBE."""
    return {name: column_kind(kind) for name, kind, *_ in sql(worker, f"DESCRIBE TABLE ({expanded})").rows}


def value_matches(value: Any, kind: str) -> bool:
    if value is None:
        return kind != "string"  # NULL: no value, e.g. an ASA in a bucket without answered contacts
    if kind == "time":
        return isinstance(value, str) and datetime.fromisoformat(value) is not None
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def window(end_ms: int, seconds: int) -> TimeRange:
    end = datetime.fromtimestamp(end_ms / 1000, UTC)
    return TimeRange(end - timedelta(seconds=seconds), end, interval_seconds=60)


# --------------------------------------------------------------------------------------------------
# The pipeline run (once for the module)


@pytest.fixture(scope="module")
def run(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    path = tmp_path_factory.mktemp("dashboards")
    with open_workspace(kafka, path, WORKER_ENV) as space:
        began = time.monotonic()
        truth_path = path / "truth.jsonl"
        space.cli(
            "simulate", "--seed", SEED, "--start", START.isoformat(), "--duration", DURATION, "--rate", RATE,
            "--speed", "0", "--quiet", *FAULTS, "--truth", truth_path,
        )  # fmt: skip
        records = read_truth(truth_path)
        summary = next(r for r in records if r["kind"] == "summary")
        assert summary["duplicates"] > 0 and summary["late"] > 0 and summary["bad"] > 0
        contacts = [r for r in records if r["kind"] == "contact"]
        horizon_ms = ms_of(summary["as_of"])
        assert horizon_ms is not None
        expected = int(summary["messages_delivered"])
        expected += send_end_of_stream(space, datetime.fromtimestamp(horizon_ms / 1000, UTC) + END_OF_STREAM)

        worker = space.start_worker()
        wait_until(lambda: worker.metric("touchline_events_consumed_total") >= expected, 300, "every message read")
        wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 60, "the last batch to be written")
        wait_until(
            lambda: (lowest_watermark_ms(worker) or 0) >= horizon_ms,
            180,
            "every partition's KPI watermark to pass the horizon",
            interval=1.0,
        )
        time.sleep(float(WORKER_ENV["TOUCHLINE_KPI_EMIT_SECONDS"]) + 3)  # last SLA ticks and KPI emits
        journeys: list[int] = []

        def journeys_settled() -> bool:
            journeys.append(int(worker.sql("SELECT count() FROM journeys FINAL")[0][0]))
            return len(journeys) >= 3 and journeys[-1] > 0 and journeys[-1] == journeys[-3]

        wait_until(journeys_settled, 60, "the journeys to be written", interval=1.0)
        assert worker.metric("touchline_events_late_total") == 0
        assert worker.metric("touchline_events_deadlettered_total") > 0  # the malformed messages
        oracle = sla_oracle(contacts, POLICIES, until_ms=horizon_ms)
        print(
            f"\npipeline run: {expected} messages, {len(contacts)} contacts, {len(oracle.breaches)} oracle breaches, "
            f"{journeys[-1]} journeys in {time.monotonic() - began:.0f} s"
        )
        yield Run(worker, contacts, int(ms_of(summary["start"]) or 0), horizon_ms, oracle.breaches)


# --------------------------------------------------------------------------------------------------
# Panels


def _check_panel(run: Run, query: q.PanelQuery, variables: dict[str, Variable]) -> Result:
    expanded = expand(query.sql, run.time_range, variables)
    assert column_kinds(run.worker, expanded) == query.columns, query.key
    result = sql(run.worker, expanded)
    if result.rows:  # the worker's JSON has no column names for an empty result (DESCRIBE has them)
        assert result.columns == list(query.columns), query.key
    for row in result.named():
        for name, kind in query.columns.items():
            assert value_matches(row[name], kind), f"{query.key}: {name} = {row[name]!r} is not a {kind}"
    if query.format == "timeseries" and result.rows:
        times = [datetime.fromisoformat(row[0]).replace(tzinfo=UTC) for row in result.rows]
        assert times == sorted(times), f"{query.key}: a time series comes in time order"
        assert run.time_range.start <= times[0] and times[-1] <= run.time_range.end, query.key
    return result


@pytest.mark.parametrize("query", q.PANEL_QUERIES, ids=lambda pq: pq.key)
def test_panel_query_on_the_pipeline_run(run: Run, query: q.PanelQuery) -> None:
    everything = _check_panel(run, query, ALL_SELECTED)
    assert everything.rows, f"{query.key}: no rows for three hours of traffic"
    one_queue = _check_panel(run, query, ONE_QUEUE)
    for row in one_queue.named():
        for column in ("channel", "first_channel"):
            if column in row:
                assert row[column] == "voice", f"{query.key}: {row}"
        if "queue" in row and "queue" in query.variables:
            assert row["queue"] == "voice.general", f"{query.key}: {row}"


def test_main_panels_show_the_run(run: Run) -> None:
    def named(query: q.PanelQuery, variables: dict[str, Variable] = ALL_SELECTED) -> list[dict[str, Any]]:
        return sql(run.worker, expand(query.sql, run.time_range, variables)).named()

    queues = {(r["channel"], r["queue"]): r for r in named(q.RT_QUEUES)}
    assert ("voice", "voice.general") in queues
    voice = queues["voice", "voice.general"]
    assert voice["offered"] > 0 and voice["answered"] > 0 and 0 <= voice["service_level"] <= 1
    assert voice["sl_target"] == pytest.approx(q.SL_TARGETS["voice"])
    truth_channels = {c["channel"] for c in run.contacts if c["legs"]}
    assert truth_channels <= {channel for channel, _ in queues}

    by_channel = named(q.SLA_BY_CHANNEL)
    assert sum(r["breached"] for r in by_channel) == len(run.breaches)
    top = named(q.SLA_TOP_QUEUES)
    assert top and top[0]["breaches"] == max(r["breaches"] for r in top)
    compliance = named(q.SLA_BY_POLICY_TABLE)
    assert sum(r["breaches"] for r in compliance) == len(run.breaches)

    fcr = {r["first_channel"]: r for r in named(q.J_FCR_BY_FIRST_CHANNEL)}
    assert "voice" in fcr and all(0 <= r["fcr_rate"] <= 1 for r in fcr.values())
    paths = named(q.J_TOP_PATHS)
    assert paths and all(0 < r["share"] <= 1 for r in paths)

    now = named(q.RT_NOW)
    assert len(now) == 1 and now[0]["offered"] == sum(r["offered"] for r in queues.values())


def test_variable_queries_list_queues_and_segments(run: Run) -> None:
    queues = [row[0] for row in sql(run.worker, expand(q.VARIABLE_QUERIES["queue"], run.time_range, ALL_SELECTED)).rows]
    truth_queues = {leg["queue"] for c in run.contacts for leg in c["legs"]}
    assert set(queues) == truth_queues and queues == sorted(queues)
    voice = sql(run.worker, expand(q.VARIABLE_QUERIES["queue"], run.time_range, ONE_QUEUE)).rows
    assert voice and all(row[0].startswith("voice.") for row in voice)
    segments = [row[0] for row in sql(run.worker, expand(q.VARIABLE_QUERIES["segment"], run.time_range)).rows]
    assert set(segments) == {c["segment"] for c in run.contacts if c["segment"]}


# --------------------------------------------------------------------------------------------------
# Alerts


def queue_at(contact: dict[str, Any], moment_ms: int) -> str:
    """The contact's queue at `moment_ms`: its latest queued leg's, moved on by a transfer. An SLA
    event carries the queue its obligation started in (none for a resolution clock started by
    `contact_started` before the contact was queued)."""
    current = ""
    for leg in contact["legs"]:
        if (ms_of(leg["queued_at"]) or 0) <= moment_ms:
            current = leg["queue"]
            if leg["transferred_at"] and leg["to_queue"] and (ms_of(leg["transferred_at"]) or 0) <= moment_ms:
                current = leg["to_queue"]
    return current


def oracle_breaches_by_queue(run: Run, start_ms: int, end_ms: int) -> Counter[tuple[str, str]]:
    by_id = {c["contact_id"]: c for c in run.contacts}
    counts: Counter[tuple[str, str]] = Counter()
    for breach in run.breaches:
        if start_ms <= breach.deadline_ms <= end_ms:
            contact = by_id[breach.contact_id]
            counts[contact["channel"], queue_at(contact, breach.started_ms)] += 1
    return counts


def alert_rows(run: Run, spec: AlertSpec, end_ms: int) -> Result:
    return sql(run.worker, expand(spec.query.sql, window(end_ms, spec.window_seconds), ALL_SELECTED))


@pytest.mark.parametrize("spec", ALERTS, ids=lambda a: a.title)
def test_alert_query_columns(run: Run, spec: AlertSpec) -> None:
    expanded = expand(spec.query.sql, window(run.horizon_ms, spec.window_seconds), ALL_SELECTED)
    kinds = column_kinds(run.worker, expanded)
    assert kinds == spec.query.columns
    assert list(kinds.values()).count("number") == 1 and set(kinds.values()) == {"number", "string"}, (
        "Grafana alerting needs exactly one numeric column; the string columns become labels"
    )
    result = sql(run.worker, expanded)
    assert result.columns == list(spec.query.columns) or not result.rows


def test_breach_alert_fires_for_the_breach_window(run: Run) -> None:
    spec = next(a for a in ALERTS if a.query is q.ALERT_SLA_BREACHES)
    seconds = spec.window_seconds
    # the window (ending on a whole minute) where one channel/queue has the most oracle breaches
    best_end, best = 0, Counter[tuple[str, str]]()
    for end_ms in range(run.start_ms + seconds * 1000, run.horizon_ms + 1, 60_000):
        counts = oracle_breaches_by_queue(run, end_ms - seconds * 1000, end_ms)
        if counts and max(counts.values()) > max(best.values(), default=0):
            best_end, best = end_ms, counts
    assert max(best.values(), default=0) >= q.BREACH_ALERT_MIN_BREACHES, "the run has no breach storm"
    expected = {key: n for key, n in best.items() if n >= q.BREACH_ALERT_MIN_BREACHES}

    rows = alert_rows(run, spec, best_end).rows
    firing = {(channel, queue): value for channel, queue, value in rows}
    print(f"\nbreach window ending {datetime.fromtimestamp(best_end / 1000, UTC):%H:%M}: {firing}")
    assert firing == expected
    assert all(value >= spec.threshold for value in firing.values())


def slow_legs(run: Run) -> list[tuple[str, str, int, int, bool]]:
    """(channel, queue, queued, left, abandoned) of every queue leg of the truth (left: answered,
    abandoned or transferred; the horizon while still waiting)."""
    legs = []
    for contact in run.contacts:
        for leg in contact["legs"]:
            queued = ms_of(leg["queued_at"]) or 0
            left = ms_of(leg["answered_at"] or leg["abandoned_at"] or leg["transferred_at"]) or run.horizon_ms
            legs.append((contact["channel"], leg["queue"], queued, left, bool(leg["abandoned_at"])))
    return legs


@pytest.mark.parametrize("query", [q.ALERT_OLDEST_WAIT, q.ALERT_SERVICE_LEVEL], ids=lambda pq: pq.key)
def test_wait_alerts_fire_only_where_the_truth_has_slow_contacts(run: Run, query: q.PanelQuery) -> None:
    """Over the run, 5-minute windows every 5 minutes: the alert fires somewhere, and every queue it
    fires for had, in the truth, a contact waiting longer than its threshold T in that window (or,
    for the service level, one abandoning after the short-abandon time)."""
    spec = next(a for a in ALERTS if a.query is query)
    legs = slow_legs(run)
    fired = 0
    for end_ms in range(run.start_ms + spec.window_seconds * 1000, run.horizon_ms + 1, spec.window_seconds * 1000):
        start_ms, last_ms = end_ms - spec.window_seconds * 1000, end_ms + 60_000
        for channel, queue, value in alert_rows(run, spec, end_ms).rows:
            fired += 1
            threshold_ms = DEFAULT_SL_THRESHOLDS[channel] * 1000
            explained = any(
                (ch, qu) == (channel, queue)
                and queued <= last_ms
                and left >= start_ms
                and (left - queued > threshold_ms or (abandoned and left - queued >= SHORT_ABANDON_SECONDS * 1000))
                for ch, qu, queued, left, abandoned in legs
            )
            at = datetime.fromtimestamp(end_ms / 1000, UTC)
            assert explained, f"{spec.title} fires for {channel}/{queue} ({value}) at {at:%H:%M} without a slow contact"
    assert fired, f"{spec.title} never fires in three busy hours"


def healthy_windows(run: Run, seconds: int) -> list[int]:
    """Ends of windows (whole minutes) in which the truth is healthy: no SLA breach, no queue leg
    waiting longer than its channel's threshold T (up to the end of the window's last minute), no
    abandon after the short-abandon time, and at least one contact started."""
    legs = slow_legs(run)
    started = [ms_of(c["started_at"]) or 0 for c in run.contacts]
    ends = []
    for end_ms in range(run.start_ms + seconds * 1000, run.horizon_ms - 120_000, 60_000):
        start_ms, last_ms = end_ms - seconds * 1000, end_ms + 60_000
        if any(start_ms <= b.deadline_ms <= end_ms for b in run.breaches):
            continue
        if any(
            queued <= last_ms and left >= start_ms and left - queued > DEFAULT_SL_THRESHOLDS[channel] * 1000
            for channel, _, queued, left, _ in legs
        ):
            continue
        if any(
            start_ms <= left <= last_ms and abandoned and left - queued >= SHORT_ABANDON_SECONDS * 1000
            for _, _, queued, left, abandoned in legs
        ):
            continue
        if any(start_ms <= s <= end_ms for s in started):
            ends.append(end_ms)
    return ends


@pytest.mark.parametrize("spec", ALERTS, ids=lambda a: a.title)
def test_alert_query_is_quiet_in_healthy_windows(run: Run, spec: AlertSpec) -> None:
    ends = healthy_windows(run, spec.window_seconds)
    assert ends, "the run has no healthy window"
    print(f"\nhealthy windows ending {[f'{datetime.fromtimestamp(e / 1000, UTC):%H:%M}' for e in ends]}")
    for end_ms in ends[:HEALTHY_WINDOWS_CHECKED]:
        traffic = sql(run.worker, expand(q.RT_NOW.sql, window(end_ms, spec.window_seconds), ALL_SELECTED)).named()
        assert traffic and traffic[0]["offered"], "a healthy window without traffic proves nothing"
        rows = alert_rows(run, spec, end_ms).rows
        at = datetime.fromtimestamp(end_ms / 1000, UTC)
        assert rows == [], f"{spec.title} fires in the healthy window ending {at:%H:%M}: {rows}"

"""Every dashboard panel query and every Grafana alert query, expanded as Grafana's ClickHouse plugin
expands it (template variables, then macros), runs against the embedded ClickHouse filled with
realistic rows and returns the columns and types its panel expects. In a scenario with an SLA
incident the alert queries return firing rows; in a healthy one they return none.

The rows are written by `fill` (one function per scenario). They are the rows a pipeline run writes
(kpi_minute_partials, sla_events, interaction_events, journeys); a real pipeline run can replace
`fill` without touching the tests. Scenarios live in their own time ranges (2030), so they do not
see other tests' rows, and the rows are deleted again at the end.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.dashboards import queries as q
from pipeline.dashboards.alerts import ALERTS
from pipeline.kpi.settings import DEFAULT_SL_THRESHOLDS
from tests.support.macros import ALL, TimeRange, Variable, column_kind, expand


@dataclass(frozen=True)
class Scenario:
    name: str
    now: datetime
    incident: bool
    """voice/billing: the last 10 minutes answer late, the queue backs up and 5 SLAs breach."""

    @property
    def dashboard_range(self) -> TimeRange:
        return TimeRange(self.now - timedelta(hours=3), self.now, interval_seconds=60)

    def alert_range(self, seconds: int) -> TimeRange:
        return TimeRange(self.now - timedelta(seconds=seconds), self.now, interval_seconds=60)


HEALTHY = Scenario("healthy", datetime(2030, 6, 3, 12, 0, tzinfo=UTC), incident=False)
INCIDENT = Scenario("incident", datetime(2030, 6, 10, 12, 0, tzinfo=UTC), incident=True)
SCENARIOS = (HEALTHY, INCIDENT)
FIRST_DAY = datetime(2030, 1, 1, tzinfo=UTC)

QUEUES = (("voice", "billing", 1), ("chat", "support", 0), ("email", "claims", 0))
ALL_SELECTED = {name: Variable([ALL], q.ALL_VALUE) for name in ("channel", "queue", "priority", "segment")}


# --------------------------------------------------------------------------------------------------
# The fill: what a pipeline run writes for a scenario


def _defaults(client: Client, table: str) -> dict[str, Any]:
    """A zero row of `table`: every column with a neutral value of its type (DEFAULT columns left out)."""
    row: dict[str, Any] = {}
    for name, kind, default_kind in client.query(
        "SELECT name, type, default_kind FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        parameters={"t": table},
    ).result_rows:
        if default_kind:
            continue
        if kind.startswith("Nullable("):
            row[name] = None
        elif kind.startswith("Array("):
            row[name] = []
        elif "String" in kind:
            row[name] = ""
        elif kind.startswith("DateTime"):
            row[name] = FIRST_DAY
        elif kind == "Bool":
            row[name] = False
        else:
            row[name] = 0
    return row


def _insert(client: Client, table: str, rows: list[dict[str, Any]]) -> None:
    base = _defaults(client, table)
    unknown = {key for row in rows for key in row} - set(base)
    assert not unknown, f"{table} has no columns {unknown}"
    columns = list(base)
    client.insert(table, [[{**base, **row}[c] for c in columns] for row in rows], column_names=columns)


def _kpi_rows(s: Scenario) -> list[dict[str, Any]]:
    rows = []
    for minutes_ago in range(1, 181):
        start = s.now - timedelta(minutes=minutes_ago)
        for channel, queue, priority in QUEUES:
            threshold = DEFAULT_SL_THRESHOLDS[channel]
            bad = s.incident and channel == "voice" and minutes_ago <= 10
            for partition in (0, 1):
                waits = [threshold * f for f in ((3.0, 4.0, 5.0, 0.5, 6.0) if bad else (0.1, 0.2, 0.3, 0.4, 0.5))]
                rows.append(
                    {
                        "window_start": start,
                        "channel": channel,
                        "queue": queue,
                        "priority": priority,
                        "source_topic": f"touchline.interactions.{channel}",
                        "source_partition": partition,
                        "sl_threshold_seconds": threshold,
                        "short_abandon_seconds": 5.0,
                        "sl_headline": "connect" if channel == "email" else "genesys",
                        "offered": 6,
                        "answered": 5,
                        "answered_within_sl": sum(w <= threshold for w in waits),
                        "abandoned": 1,
                        "short_abandoned": 1,
                        "removed_within_sl": sum(w <= threshold for w in waits) + 1,
                        "transfers": 1,
                        "bot_contained": 2 if channel == "chat" else 0,
                        "bot_handoffs": 1 if channel == "chat" else 0,
                        "resolved": 4,
                        "first_contact_resolved": 3,
                        "csat_responses": 2,
                        "csat_satisfied": 1 if bad else 2,
                        "ces_responses": 2,
                        "ces_score_sum": 9 if bad else 4,
                        "nps_responses": 2,
                        "nps_promoters": 1,
                        "nps_detractors": 1 if bad else 0,
                        "answer_waits": waits,
                        "first_response_times": waits,
                        "handle_times": [240.0, 300.0, 360.0],
                        "backlog_end": 15 if bad else 1,
                        "oldest_wait_end": threshold * 12 if bad else threshold * 0.3,
                        "final": minutes_ago > 5,
                        "version": 1,
                        "emitted_at": start + timedelta(seconds=61),
                    }
                )
    return rows


def _sla_rows(s: Scenario) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def obligation(
        n: int,
        channel: str,
        queue: str,
        target: str,
        started: datetime,
        target_s: float,
        kinds: list[tuple[str, float]],
    ) -> None:
        """kinds: (kind, seconds after start it was raised at)."""
        deadline = started + timedelta(seconds=target_s)
        for kind, after in kinds:
            at = started + timedelta(seconds=after)
            rows.append(
                {
                    "sla_event_id": f"dash-{s.name}-{n}-{kind}",
                    "kind": kind,
                    "target": target,
                    "contact_id": f"dash-{s.name}-c{n}",
                    "channel": channel,
                    "queue": queue,
                    "priority": 1 if channel == "voice" else 0,
                    "segment": "premium" if n % 3 == 0 else "standard",
                    "policy": channel,
                    "started_at": started,
                    "deadline": deadline,
                    "at": at,
                    "seconds_late": max(0.0, after - target_s) if kind in ("met", "cancelled") else 0.0,
                    "target_seconds": target_s,
                    "elapsed_seconds": min(after, target_s) if kind != "met" else after,
                    "opened_by": f"dash-{s.name}-e{n}",
                    "emitted_at": at + timedelta(seconds=1),
                }
            )

    n = 0
    for minutes_ago in range(170, 5, -8):  # routine: answered on time, sometimes after an at-risk warning
        for channel, queue, _ in QUEUES:
            n += 1
            target_s = {"voice": 20.0, "chat": 60.0, "email": 14400.0}[channel]
            started = s.now - timedelta(minutes=minutes_ago)
            kinds = [("at_risk", target_s * 0.8), ("met", target_s * 0.9)] if n % 4 == 0 else [("met", target_s * 0.5)]
            obligation(n, channel, queue, "first_response", started, target_s, kinds)
    # an old breach, answered late: shows in the SLA dashboard, too old for the alerts
    obligation(
        n + 1,
        "chat",
        "support",
        "first_response",
        s.now - timedelta(hours=2),
        60.0,
        [("at_risk", 48.0), ("breached", 60.0), ("met", 180.0)],
    )
    # an obligation at risk right now (deadline still ahead)
    obligation(n + 2, "chat", "support", "next_response", s.now - timedelta(seconds=50), 60.0, [("at_risk", 48.0)])
    if s.incident:  # five voice callers breach in the last five minutes and are still waiting
        for k in range(5):
            started = s.now - timedelta(minutes=4, seconds=-30 * k)
            obligation(
                n + 3 + k, "voice", "billing", "first_response", started, 20.0, [("at_risk", 14.0), ("breached", 20.0)]
            )
    return rows


def _event_rows(s: Scenario) -> list[dict[str, Any]]:
    rows = []
    for n, (segment, (channel, queue, priority)) in enumerate(
        zip(("premium", "standard", "o'hara"), QUEUES, strict=True)
    ):
        at = s.now - timedelta(minutes=30 + n)
        rows.append(
            {
                "event_id": f"dash-{s.name}-ev{n}",
                "event_type": "contact_started",
                "schema_version": 1,
                "occurred_at": at,
                "channel": channel,
                "contact_id": f"dash-{s.name}-c-ev{n}",
                "customer_id": f"cust-{n}",
                "queue": queue,
                "priority": priority,
                "segment": segment,
                "intent": "billing",
                "details": "{}",
                "source_topic": f"touchline.interactions.{channel}",
                "ingested_at": at + timedelta(milliseconds=300),
            }
        )
    return rows + _ticket_rows(s)


# One e-mail ticket per scenario: queued to `claims`, answered, waits on a vendor, resolved, reopened
# and resolved again; another one stays open (backlog).
_TICKET_STEPS: tuple[tuple[str, str, int, str], ...] = (
    ("t1", "contact_started", 150, ""),
    ("t1", "queued", 150, ""),
    ("t1", "agent_assigned", 145, ""),
    ("t1", "first_agent_reply", 140, ""),
    ("t1", "waiting_on_customer", 139, "vendor"),
    ("t1", "waiting_ended", 100, "vendor"),
    ("t1", "agent_reply", 90, ""),
    ("t1", "resolved", 89, ""),
    ("t1", "reopened", 60, ""),
    ("t1", "customer_message", 60, ""),
    ("t1", "agent_reply", 40, ""),
    ("t1", "resolved", 39, ""),
    ("t2", "contact_started", 170, ""),
    ("t2", "queued", 170, ""),
)


def _ticket_rows(s: Scenario) -> list[dict[str, Any]]:
    rows = []
    for n, (ticket, kind, minutes_ago, reason) in enumerate(_TICKET_STEPS):
        at = s.now - timedelta(minutes=minutes_ago)
        rows.append(
            {
                "event_id": f"dash-{s.name}-tk{n}",
                "event_type": kind,
                "schema_version": 2 if reason else 1,
                "occurred_at": at,
                "channel": "email",
                "contact_id": f"dash-{s.name}-{ticket}",
                "queue": "claims",
                "priority": 0,
                "segment": "premium",
                "intent": "billing",
                "details": f'{{"reason":"{reason}"}}' if reason else "{}",
                "source_topic": "touchline.interactions.email",
                "ingested_at": at + timedelta(milliseconds=300),
            }
        )
    return rows


def _journey_rows(s: Scenario) -> list[dict[str, Any]]:
    shapes: list[dict[str, Any]] = [
        {"channel_path": ["voice"], "resolved": 1, "first_contact_resolved": 1, "effort_score": 10.0},
        {"channel_path": ["voice"], "resolved": 1, "first_contact_resolved": 1, "effort_score": 12.0},
        {"channel_path": ["chat", "email"], "resolved": 1, "channel_switches": 1, "effort_score": 45.0},
        {"channel_path": ["email"], "resolved": 0, "effort_score": 20.0},
        {
            "channel_path": ["web", "chat"],
            "resolved": 1,
            "channel_switches": 1,
            "starts_with_bot": 1,
            "bot_handoffs": 1,
            "first_human_channel": "chat",
            "time_to_first_human_s": 95.0,
            "effort_score": 35.0,
        },
        {
            "channel_path": ["web"],
            "resolved": 1,
            "bot_contained_contacts": 1,
            "starts_with_bot": 1,
            "effort_score": 5.0,
        },
    ]
    rows = []
    for n, shape in enumerate(shapes * 2):
        started = s.now - timedelta(minutes=20 + 13 * n)
        path = shape["channel_path"]
        resolved = shape.get("resolved", 0)
        rows.append(
            {
                **shape,
                "journey_id": f"dash-{s.name}-j{n}",
                "customer_key": f"cust:dash-{n}",
                "intent": "billing",
                "status": "resolved" if resolved else "open",
                "started_at": started,
                "last_activity_at": started + timedelta(minutes=10),
                "contact_ids": [f"dash-{s.name}-j{n}-{i}" for i in range(len(path))],
                "contacts": len(path),
                "first_human_at": started + timedelta(seconds=shape["time_to_first_human_s"])
                if "time_to_first_human_s" in shape
                else None,
                "resolved_at": started + timedelta(minutes=10) if resolved else None,
                "resolved_by": "agent" if resolved else "",
                "resolving_channel": path[-1] if resolved else "",
                "time_to_resolution_s": 600.0 if resolved else None,
                "version": 1,
            }
        )
    return rows


def fill(client: Client, scenario: Scenario) -> None:
    """Writes the rows of `scenario` (the one place to swap in a real pipeline run)."""
    _insert(client, "kpi_minute_partials", _kpi_rows(scenario))
    _insert(client, "sla_events", _sla_rows(scenario))
    _insert(client, "interaction_events", _event_rows(scenario))
    _insert(client, "journeys", _journey_rows(scenario))


def clear(client: Client) -> None:
    first = f"toDateTime64('{FIRST_DAY:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    for table, where in (
        ("kpi_minute_partials", f"window_start >= {first}"),
        ("sla_events", f"at >= {first}"),
        ("interaction_events", f"occurred_at >= {first}"),
        ("journeys", "startsWith(journey_id, 'dash-')"),
    ):
        client.command(f"ALTER TABLE {table} DELETE WHERE {where}", settings={"mutations_sync": 2})


@pytest.fixture(scope="module")
def db(clickhouse: Client) -> Iterator[Client]:
    for scenario in SCENARIOS:
        fill(clickhouse, scenario)
    try:
        yield clickhouse
    finally:
        clear(clickhouse)


def run(db: Client, sql: str, time_range: TimeRange, variables: dict[str, Variable] | None = None) -> Any:
    return db.query(expand(sql, time_range, ALL_SELECTED if variables is None else variables))


def columns(
    db: Client, sql: str, time_range: TimeRange, variables: dict[str, Variable] | None = None
) -> dict[str, str]:
    """Result columns of the expanded query and their kind (time, number, string), rows or not."""
    expanded = expand(sql, time_range, ALL_SELECTED if variables is None else variables)
    return {name: column_kind(kind) for name, kind, *_ in db.query(f"DESCRIBE TABLE ({expanded})").result_rows}


# --------------------------------------------------------------------------------------------------
# Panels


@pytest.mark.parametrize("query", q.PANEL_QUERIES, ids=lambda pq: pq.key)
def test_panel_query_returns_the_columns_and_types_its_panel_expects(db: Client, query: q.PanelQuery) -> None:
    result = run(db, query.sql, INCIDENT.dashboard_range)
    assert result.result_rows, f"{query.key}: no rows"
    assert list(result.column_names) == list(query.columns)
    kinds = {name: column_kind(t.name) for name, t in zip(result.column_names, result.column_types, strict=True)}
    assert kinds == query.columns
    assert columns(db, query.sql, INCIDENT.dashboard_range) == query.columns
    if query.format == "timeseries":
        times = [row[0] for row in result.result_rows]
        assert times == sorted(times), f"{query.key}: a time series must come in time order"
        assert all(INCIDENT.dashboard_range.start <= t.replace(tzinfo=UTC) <= INCIDENT.now for t in times)


@pytest.mark.parametrize("query", q.PANEL_QUERIES, ids=lambda pq: pq.key)
def test_panel_query_honours_the_selected_variables(db: Client, query: q.PanelQuery) -> None:
    selected = {
        "channel": Variable(["voice", "chat"]),
        "queue": Variable(["billing", "support"]),
        "priority": Variable(["0", "1"]),
        "segment": Variable(["premium", "o'hara"]),
    }
    assert columns(db, query.sql, INCIDENT.dashboard_range, selected) == query.columns
    result = run(db, query.sql, INCIDENT.dashboard_range, selected)
    for row in result.named_results():
        if "channel" in row:
            assert row["channel"] in ("voice", "chat")
        if "queue" in row and "queue" in query.variables:
            assert row["queue"] in ("billing", "support")
        if "segment" in row:
            assert row["segment"] in ("premium", "o'hara")
    one_channel = run(db, query.sql, INCIDENT.dashboard_range, {**ALL_SELECTED, "channel": Variable(["email"])})
    for row in one_channel.named_results():
        for column in ("channel", "first_channel"):
            if column in row:
                assert row[column] == "email"


def test_variable_queries_list_queues_and_segments(db: Client) -> None:
    queues = run(db, q.VARIABLE_QUERIES["queue"], INCIDENT.dashboard_range).result_rows
    assert queues == [("billing",), ("claims",), ("support",)]
    voice_only = run(db, q.VARIABLE_QUERIES["queue"], INCIDENT.dashboard_range, {"channel": Variable(["voice"])})
    assert voice_only.result_rows == [("billing",)]
    segments = run(db, q.VARIABLE_QUERIES["segment"], INCIDENT.dashboard_range).result_rows
    assert segments == [("o'hara",), ("premium",), ("standard",)]


def _named(db: Client, query: q.PanelQuery, scenario: Scenario, **variables: list[str]) -> list[dict[str, Any]]:
    chosen = {**ALL_SELECTED, **{k: Variable(v) for k, v in variables.items()}}
    return list(run(db, query.sql, scenario.dashboard_range, chosen).named_results())


def test_queue_table_numbers(db: Client) -> None:
    healthy = {(r["channel"], r["queue"]): r for r in _named(db, q.RT_QUEUES, HEALTHY)}
    assert set(healthy) == {("voice", "billing"), ("chat", "support"), ("email", "claims")}
    voice = healthy["voice", "billing"]
    assert (voice["offered"], voice["answered"], voice["abandoned"]) == (180 * 2 * 6, 180 * 2 * 5, 180 * 2)
    assert voice["service_level"] == pytest.approx(1.0)  # genesys: 5 within / (5 + 1 - 1 short)
    assert healthy["email", "claims"]["service_level"] == pytest.approx(1.0)  # connect: 6 removed within / 6 offered
    assert voice["sl_target"] == pytest.approx(q.SL_TARGETS["voice"])
    assert voice["asa_seconds"] == pytest.approx(20.0 * 0.3)
    assert (voice["backlog"], voice["oldest_wait_seconds"]) == (2, pytest.approx(6.0))

    incident = {(r["channel"], r["queue"]): r for r in _named(db, q.RT_QUEUES, INCIDENT)}["voice", "billing"]
    assert incident["service_level"] == pytest.approx((170 * 2 * 5 + 10 * 2 * 1) / (180 * 2 * 5))
    assert (incident["backlog"], incident["oldest_wait_seconds"]) == (30, pytest.approx(240.0))


def test_live_table_lists_open_breaches_first(db: Client) -> None:
    healthy = _named(db, q.RT_OPEN_OBLIGATIONS, HEALTHY)
    assert [(r["state"], r["channel"], r["target"]) for r in healthy] == [("at_risk", "chat", "next_response")]
    assert healthy[0]["seconds_to_deadline"] == pytest.approx(10.0)
    incident = _named(db, q.RT_OPEN_OBLIGATIONS, INCIDENT)
    assert [r["state"] for r in incident] == ["breached"] * 5 + ["at_risk"]
    assert {(r["channel"], r["queue"]) for r in incident[:5]} == {("voice", "billing")}
    assert incident[0]["seconds_over_deadline"] == pytest.approx(4 * 60 - 20.0)


def test_sla_panels_count_breaches(db: Client) -> None:
    top = _named(db, q.SLA_TOP_QUEUES, INCIDENT)
    assert [(r["channel"], r["queue"], r["breaches"]) for r in top] == [("voice", "billing", 5), ("chat", "support", 1)]
    by_channel = _named(db, q.SLA_BY_CHANNEL, HEALTHY)
    assert sum(r["breached"] for r in by_channel) == 1
    late = _named(db, q.SLA_TIME_OVER_DEADLINE, HEALTHY)
    assert [r["max_seconds_late"] for r in late] == [pytest.approx(120.0)]


def test_journey_panels(db: Client) -> None:
    fcr = {r["first_channel"]: r for r in _named(db, q.J_FCR_BY_FIRST_CHANNEL, HEALTHY)}
    assert fcr["voice"]["journeys"] == 4 and fcr["voice"]["fcr_rate"] == pytest.approx(1.0)
    paths = {r["path"]: r["journeys"] for r in _named(db, q.J_TOP_PATHS, HEALTHY)}
    assert paths == {"voice": 4, "chat > email": 2, "email": 2, "web > chat": 2, "web": 2}
    escalations = _named(db, q.J_BOT_ESCALATIONS, HEALTHY)
    assert [(r["first_human_channel"], r["path"], r["journeys"]) for r in escalations] == [("chat", "web > chat", 2)]


# --------------------------------------------------------------------------------------------------
# Alerts

_OPS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "lt": operator.lt,
    "gte": operator.ge,
    "lte": operator.le,
}


@pytest.mark.parametrize("spec", ALERTS, ids=lambda a: a.title)
def test_alert_query_fires_in_the_incident_only(db: Client, spec: Any) -> None:
    query: q.PanelQuery = spec.query
    healthy = run(db, query.sql, HEALTHY.alert_range(spec.window_seconds))
    assert healthy.result_rows == [], f"{spec.title} fires on a healthy contact centre"

    firing = run(db, query.sql, INCIDENT.alert_range(spec.window_seconds))
    kinds = list(columns(db, query.sql, INCIDENT.alert_range(spec.window_seconds)).values())
    assert list(firing.column_names) == list(query.columns)
    assert dict(zip(query.columns, kinds, strict=True)) == query.columns
    assert kinds.count("number") == 1 and set(kinds) == {"number", "string"}, (
        "Grafana alerting needs exactly one numeric column; the string columns become labels"
    )
    assert [(row[0], row[1]) for row in firing.result_rows] == [("voice", "billing")]
    value = firing.result_rows[0][2]
    assert _OPS[spec.op](value, spec.threshold), f"{spec.title}: value {value} does not pass its threshold"


def test_alert_values_are_the_incident(db: Client) -> None:
    def value(query: q.PanelQuery, seconds: int) -> float:
        rows = run(db, query.sql, INCIDENT.alert_range(seconds)).result_rows
        result: float = rows[0][2]
        return result

    assert value(q.ALERT_SLA_BREACHES, q.BREACH_ALERT_WINDOW_SECONDS) == 5
    assert value(q.ALERT_SERVICE_LEVEL, q.SL_ALERT_WINDOW_SECONDS) == pytest.approx(0.2)
    assert value(q.ALERT_OLDEST_WAIT, q.OLDEST_WAIT_ALERT_WINDOW_SECONDS) == pytest.approx(240.0)

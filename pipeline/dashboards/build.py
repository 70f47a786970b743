"""Touchline's Grafana dashboards, built with grafana-foundation-sdk. The SQL and PromQL of every
panel come from `pipeline.dashboards.queries`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, dashboard, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from pipeline.dashboards import queries as q
from pipeline.dashboards.clickhouse import ClickHouseQuery
from pipeline.dashboards.queries import PanelQuery, PromQuery

CLICKHOUSE = models.DataSourceRef(type_val=q.CLICKHOUSE_TYPE, uid=q.CLICKHOUSE_UID)
PROMETHEUS = models.DataSourceRef(type_val=q.PROMETHEUS_TYPE, uid=q.PROMETHEUS_UID)

TAGS = ["touchline", "generated"]

P = TypeVar("P", timeseries.Panel, table.Panel, stat.Panel, bargauge.Panel)


_IGNORED_FILTERS = {
    q.KPI_VARS: " KPI windows are per channel x queue x priority: the segment filter does not apply.",
    q.JOURNEY_VARS: " Journeys filter on the channel they started on; queue, priority and segment do not apply.",
}
"""What a panel's description adds when its query does not apply every template variable."""


def _ch(panel: P, query: PanelQuery, description: str, units: dict[str, str] | None = None) -> P:
    """`panel` showing `query`; `units` sets the unit of some of its columns (column -> Grafana unit)."""
    units = units or {}
    if unknown := sorted(set(units) - set(query.columns)):
        raise ValueError(f"{query.key} has no column {', '.join(unknown)}")
    panel = (
        panel.datasource(CLICKHOUSE)
        .with_target(ClickHouseQuery().raw_sql(query.sql).query_type(query.format))
        .description(description + _IGNORED_FILTERS.get(query.variables, ""))
    )
    for column, unit in units.items():
        panel = panel.override_by_name(column, _unit(unit))
    return panel


def _prom(panel: P, queries: list[PromQuery], description: str) -> P:
    panel = panel.datasource(PROMETHEUS).description(description)
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(
            prometheus_builders.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(ref)
            .datasource(PROMETHEUS)
            .range()
        )
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


SL_THRESHOLDS = _thresholds(
    (None, "red"), (round(q.DEFAULT_SL_TARGET - 0.1, 2), "orange"), (q.DEFAULT_SL_TARGET, "green")
)


def _series(title: str, unit: str, height: int = 8, span: int = 12) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .height(height)
        .span(span)
        .fill_opacity(10)
        .line_width(1)
        .span_nulls(False)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )


def _table(title: str, height: int = 9, span: int = 24) -> table.Panel:
    return table.Panel().title(title).height(height).span(span)


def _unit(unit: str) -> list[models.DynamicConfigValue]:
    return [models.DynamicConfigValue(id_val="unit", value=unit)]


def _right_axis(panel: timeseries.Panel, unit: str, *, name: str = "", regexp: str = "") -> timeseries.Panel:
    """The field `name`, or the fields matching `regexp`, in `unit` on a second y axis on the right."""
    right = [models.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]
    if regexp:
        return panel.override_by_regexp(regexp, _unit(unit)).override_by_regexp(regexp, right)
    return panel.override_by_name(name, _unit(unit)).override_by_name(name, right)


def _ids(builder: dashboard.Dashboard) -> dict[str, Any]:
    """The dashboard as JSON, panel ids numbered 1.. in layout order (the SDK leaves them 0)."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number
    return data


# --------------------------------------------------------------------------------------------------
# Template variables


def _multi_current() -> models.VariableOption:
    return models.VariableOption(selected=True, text=["All"], value=["$__all"])


V = TypeVar("V", dashboard.QueryVariable, dashboard.CustomVariable)


def _multi(variable: V, all_value: str = q.ALL_VALUE) -> V:
    """Any number of values, or All (`all_value`); All selected."""
    return variable.multi(True).include_all(True).all_value(all_value).current(_multi_current())


def _channel_variable(all_value: str) -> dashboard.CustomVariable:
    return _multi(dashboard.CustomVariable("channel").label("Channel").values(",".join(q.CHANNELS)), all_value)


def _stored_values(name: str, label: str) -> dashboard.QueryVariable:
    """A variable over the values ClickHouse holds (`q.VARIABLE_QUERIES`)."""
    return _multi(
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(CLICKHOUSE)
        .query(q.VARIABLE_QUERIES[name])
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
    )


def clickhouse_variables() -> list[dashboard.QueryVariable | dashboard.CustomVariable]:
    priority = dashboard.CustomVariable("priority").label("Priority").values(",".join(str(p) for p in range(10)))
    return [
        _channel_variable(q.ALL_VALUE),
        _stored_values("queue", "Queue"),
        _multi(priority),
        _stored_values("segment", "Segment"),
    ]


Variables = list[dashboard.QueryVariable | dashboard.CustomVariable]
Panel = timeseries.Panel | table.Panel | stat.Panel | bargauge.Panel
Rows = dict[str, list[Panel]]
"""A dashboard's rows: each row's title -> its panels, in layout order."""

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {}
"""File stem under grafana/dashboards/ -> builder, filled by `_dashboard`."""


def _dashboard(
    stem: str,
    uid: str,
    title: str,
    refresh: str,
    time_from: str,
    variables: Callable[[], Variables] = clickhouse_variables,
) -> Callable[[Callable[[], Rows]], Callable[[], dict[str, Any]]]:
    """Registers a dashboard in `DASHBOARDS`: the decorated function returns its rows, and its docstring
    (whitespace collapsed) is the dashboard's description."""

    def register(rows: Callable[[], Rows]) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            board = (
                dashboard.Dashboard(title)
                .uid(uid)
                .description(" ".join((rows.__doc__ or "").split()))
                .tags(TAGS)
                .editable()
                .refresh(refresh)
                .time(time_from, "now")
                .timezone("browser")
                .tooltip(models.DashboardCursorSync.CROSSHAIR)
                .link(
                    dashboard.DashboardLink("Touchline")
                    .type(models.DashboardLinkType.DASHBOARDS)
                    .tags(["touchline"])
                    .as_dropdown(True)
                    .include_vars(True)
                    .keep_time(True)
                )
            )
            for variable in variables():
                board = board.with_variable(variable)
            for row, panels in rows().items():
                board = board.with_row(dashboard.Row(row))
                for panel in panels:
                    board = board.with_panel(panel)
            return _ids(board)

        build.__doc__ = rows.__doc__
        DASHBOARDS[stem] = build
        return build

    return register


# --------------------------------------------------------------------------------------------------
# Dashboards

_SL_SHARE = [
    models.DynamicConfigValue(id_val="unit", value="percentunit"),
    models.DynamicConfigValue(id_val="thresholds", value=SL_THRESHOLDS.build()),
]
"""A field holding a service-level-like share: percent, with the service-level thresholds."""
_COLOURED_CELL = models.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})


@_dashboard("realtime-operations", "touchline-realtime", "Touchline / Real-time operations", "30s", "now-3h")
def realtime_operations() -> Rows:
    """Service level against target, volumes, backlog and ASA per channel and queue; live SLA breaches and
    at-risk contacts."""
    return {
        "Now": [
            _ch(
                stat.Panel()
                .title("Service level, offered, abandon rate, ASA, backlog, oldest wait")
                .height(5)
                .span(24)
                .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                .graph_mode(common.BigValueGraphMode.NONE)
                .color_mode(common.BigValueColorMode.VALUE)
                .override_by_name("service_level", _SL_SHARE),
                q.RT_NOW,
                "Over the time range: headline service level, offered legs, abandon rate and ASA; "
                "backlog and oldest waiting contact at the end of the latest minute.",
                units={"abandon_rate": "percentunit", "asa_seconds": "s", "oldest_wait_seconds": "s"},
            )
        ],
        "Service level and volume": [
            _ch(
                _series("Service level by channel", "percentunit")
                .min(0)
                .max(1)
                .thresholds(SL_THRESHOLDS)
                .thresholds_style(
                    common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
                ),
                q.RT_SERVICE_LEVEL,
                "Headline service level (Genesys or Connect formula per channel, see pipeline/kpi/definitions.py). "
                "Dashed line: the default target.",
            ),
            _ch(
                _series("Offered, answered, abandoned", "short"),
                q.RT_VOLUME,
                "Queue legs offered (at queued time), answered and abandoned (at their time).",
            ),
            _ch(
                _series("Backlog by queue", "short"),
                q.RT_BACKLOG,
                "Legs waiting at the end of each minute; the worst minute of each interval.",
            ),
            _ch(
                _series("Oldest waiting contact by queue", "s"),
                q.RT_OLDEST_WAIT,
                "Age of the oldest waiting leg at the end of each minute; the worst minute of each interval.",
            ),
            _ch(
                _series("ASA by channel", "s", span=24),
                q.RT_ASA,
                "Average speed of answer: mean wait of the legs answered in each interval.",
            ),
        ],
        "Queues and live SLA": [
            _ch(
                _table("Service level against target by channel and queue").override_by_name(
                    "service_level", [*_SL_SHARE, _COLOURED_CELL]
                ),
                q.RT_QUEUES,
                "Per channel and queue over the time range: offered, answered, abandoned, service level and its "
                "target, ASA; backlog and oldest wait at the latest minute.",
                units={"sl_target": "percentunit", "asa_seconds": "s", "oldest_wait_seconds": "s"},
            ),
            _ch(
                _table("Live: SLA breaches and at-risk contacts", height=10)
                .override_by_name(
                    "state",
                    [
                        models.DynamicConfigValue(
                            id_val="mappings",
                            value=[
                                {
                                    "type": "value",
                                    "options": {
                                        "breached": {"color": "red", "index": 0, "text": "breached"},
                                        "at_risk": {"color": "orange", "index": 1, "text": "at risk"},
                                    },
                                }
                            ],
                        ),
                        _COLOURED_CELL,
                    ],
                )
                .override_by_regexp("seconds_.*|target_seconds", _unit("s")),
                q.RT_OPEN_OBLIGATIONS,
                "Obligations (first response, next response, resolution) whose latest SLA event is at_risk or "
                "breached: not yet answered or closed. Breached first, then by deadline.",
            ),
        ],
    }


def _sla_series(title: str, query: PanelQuery) -> timeseries.Panel:
    return _ch(
        _series(title, "short").draw_style(common.GraphDrawStyle.BARS).fill_opacity(60),
        query,
        "SLA events raised per interval: `breached` (deadline passed unanswered) and `at_risk` "
        "(the policy's at-risk share of the target gone). Counted at their due time.",
    )


@_dashboard("sla", "touchline-sla", "Touchline / SLA", "1m", "now-24h")
def sla() -> Rows:
    """SLA breaches and at-risk events by channel, target, policy and queue; time over deadline; top breaching
    queues."""
    return {
        "Breaches and at-risk over time": [
            _sla_series("By channel", q.SLA_BY_CHANNEL),
            _sla_series("By target type", q.SLA_BY_TARGET),
            _sla_series("By policy", q.SLA_BY_POLICY),
            _sla_series("By queue", q.SLA_BY_QUEUE),
        ],
        "Lateness": [
            _ch(
                _series("Time over deadline (answered or closed late)", "s", span=24),
                q.SLA_TIME_OVER_DEADLINE,
                "seconds_late of obligations met or cancelled after their deadline: median, 90th percentile, "
                "maximum. In the policy's time base (business seconds for business-time targets).",
            )
        ],
        "Who breaches": [
            _ch(
                _table("Top breaching queues", span=12),
                q.SLA_TOP_QUEUES,
                "The 10 channel/queue pairs with the most breached obligations over the time range; breach rate "
                "= breached obligations / obligations with any SLA event.",
                units={"breach_rate": "percentunit", "avg_seconds_late": "s"},
            ),
            _ch(
                _table("Compliance by policy and target", span=12)
                .override_by_name("compliance", [*_SL_SHARE, _COLOURED_CELL])
                .override_by_regexp(".*seconds_late", _unit("s")),
                q.SLA_BY_POLICY_TABLE,
                "Per policy (deploy/sla-policies.yaml) and target: obligations, breaches, compliance = 1 - "
                "breaches / obligations, and lateness of those met late.",
            ),
        ],
    }


@_dashboard("journeys-cx", "touchline-journeys", "Touchline / Journeys and CX", "5m", "now-7d")
def journeys_cx() -> Rows:
    """First-contact resolution, channel switching, journey paths, bot containment and escalation, CSAT, CES,
    NPS and effort."""
    return {
        "Resolution and paths": [
            _ch(
                _table("FCR by first channel", span=10).override_by_regexp("fcr_rate.*", _unit("percentunit")),
                q.J_FCR_BY_FIRST_CHANNEL,
                "Journeys started in the time range, by the channel of their first contact: first-contact "
                "resolution over all journeys and over resolved ones.",
            ),
            _ch(
                _right_axis(_series("Channel switches", "percentunit", span=14), "short", name="avg_switches"),
                q.J_CHANNEL_SWITCHES,
                "Share of journeys that changed channel, share with more than one contact, and mean switches.",
            ),
            _ch(
                _table("Top journey paths", height=10).override_by_regexp("share|fcr_rate", _unit("percentunit")),
                q.J_TOP_PATHS,
                "The 20 most common channel paths (channel of each contact in order), their share, FCR, "
                "contacts and customer effort (0-100, higher = more effort).",
            ),
        ],
        "Bots": [
            _ch(
                _series("Bot containment rate", "percentunit", span=10).min(0).max(1),
                q.J_BOT_CONTAINMENT,
                "Bot-contained contacts / (contained + handed to a human), per channel.",
            ),
            _ch(
                _table("Bot escalations: where bot-first journeys reached a human", span=14),
                q.J_BOT_ESCALATIONS,
                "Journeys whose first contact involved a bot and that later reached a human: by the channel of "
                "the first human response and the path taken.",
                units={"avg_time_to_first_human_s": "s", "resolved_rate": "percentunit"},
            ),
        ],
        "Customer experience": [
            _ch(
                _series("CSAT", "percentunit", span=8).min(0).max(1),
                q.J_CSAT,
                "Share of CSAT answers scoring 4-5, per channel.",
            ),
            _ch(
                _series("CES (1-7, lower is easier)", "short", span=8).min(1).max(7),
                q.J_CES,
                "Mean Customer Effort Score, per channel.",
            ),
            _ch(
                _series("NPS", "short", span=8).min(-100).max(100),
                q.J_NPS,
                "Net Promoter Score = 100 x (promoters 9-10 - detractors 0-6) / answers, per channel.",
            ),
            _ch(
                _series("Customer effort by first channel", "short", span=24).min(0).max(100),
                q.J_EFFORT,
                "Mean journey effort score (0-100, pipeline/journeys/effort.py) of journeys started in each "
                "interval, by first channel.",
            ),
        ],
    }


_TICKET_NOTE = (
    " From the ticket views over the stored events (contact_facts, ticket_kpi_hour), so replayed"
    " history shows too; queue = team."
)


@_dashboard("tickets", "touchline-tickets", "Touchline / Ticket queues", "5m", "now-30d")
def tickets() -> Rows:
    """Ticket-style work (e-mail, social, cases): backlog by age, time to resolution by team and priority,
    reopens, created vs resolved, waits by reason."""
    days = _unit("d")
    hours = _unit("h")
    return {
        "Backlog": [
            _ch(
                _right_axis(_series("Open tickets and their age", "short", span=14), "d", regexp="age_.*"),
                q.TK_BACKLOG,
                "Open tickets (started, not ended, not resolved) at the end of each hour, and their median and "
                "90th-percentile age in days." + _TICKET_NOTE,
            ),
            _ch(
                _table("Backlog by team, latest hour", span=10).override_by_regexp(".*_days", days),
                q.TK_BACKLOG_BY_TEAM,
                "Open tickets per team at the last hour end of the range, with age percentiles and the oldest."
                + _TICKET_NOTE,
            ),
        ],
        "Resolution": [
            _ch(
                _table("Time to resolution by team and priority", span=14).override_by_regexp("ttr_.*", hours),
                q.TK_TTR_BY_TEAM,
                "Tickets resolved in the range per team (queue at the resolution) and priority: time to first and "
                "to final resolution (hours) and the share reopened at least once." + _TICKET_NOTE,
                units={"reopened_share": "percentunit"},
            ),
            _ch(
                _right_axis(_series("Created vs resolved", "short", span=10), "percentunit", name="reopened_share"),
                q.TK_CREATED_RESOLVED,
                "Tickets created and finally resolved per interval, and the reopened share of the resolved."
                + _TICKET_NOTE,
            ),
        ],
        "Reopens and waits": [
            _ch(
                _table("Tickets by number of reopens", span=12).override_by_regexp("avg_ttr_.*", hours),
                q.TK_REOPENS,
                "Tickets started in the range that were resolved at least once, by how often they were reopened: "
                "how many are resolved now and their mean times to first and final resolution." + _TICKET_NOTE,
            ),
            _ch(
                _table("Waiting by reason", span=12).override_by_regexp(".*wait_hours", hours),
                q.TK_WAITS_BY_REASON,
                "Closed waits (waiting_on_customer .. waiting_ended) of tickets started in the range, by reason "
                "(customer, vendor, internal, ...): tickets that waited, total and mean hours." + _TICKET_NOTE,
            ),
        ],
    }


def _prometheus_variables() -> Variables:
    return [
        _multi(
            dashboard.QueryVariable("instance")
            .label("Worker")
            .datasource(PROMETHEUS)
            .query({"query": 'label_values(up{job="touchline-worker"}, instance)', "refId": "instance"})
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED),
            ".*",
        ),
        _channel_variable(".*"),
    ]


@_dashboard(
    "pipeline-health", "touchline-pipeline", "Touchline / Pipeline health", "30s", "now-1h", _prometheus_variables
)
def pipeline_health() -> Rows:
    """The pipeline's own metrics from the workers' /metrics: throughput, lag, dead letters, late events,
    ClickHouse flushes, end-to-end latency, workers up."""
    return {
        "Workers": [
            _prom(
                stat.Panel()
                .title("Workers up")
                .height(5)
                .span(8)
                .mappings(
                    [
                        models.ValueMap(
                            options={
                                "0": models.ValueMappingResult(text="DOWN", color="red"),
                                "1": models.ValueMappingResult(text="UP", color="green"),
                            }
                        )
                    ]
                )
                .thresholds(_thresholds((None, "red"), (1, "green"))),
                [q.P_UP],
                "Prometheus `up` of each worker's /metrics scrape.",
            ),
            _prom(
                _series("Consumer lag by topic", "short", height=5, span=16),
                [q.P_LAG],
                "Messages in the channel topics not yet read by the workers (summed over partitions and workers).",
            ),
        ],
        "Throughput and rejects": [
            _prom(
                _series("Throughput per channel", "ops"),
                [q.P_THROUGHPUT, q.P_CONSUMED],
                "Events per second read from Kafka and written to ClickHouse.",
            ),
            _prom(
                _series("Dead-letter rate", "ops"),
                [q.P_DEADLETTER],
                "Messages per second sent to touchline.deadletter, by channel and reason.",
            ),
            _prom(
                _series("Late-event rate", "ops"),
                [q.P_LATE],
                "Events per second later than the allowed lateness (stored raw, left out of the KPI windows).",
            ),
            _prom(
                _series("SLA events rate", "ops"),
                [q.P_SLA_EVENTS],
                "SLA outcomes raised per second by kind (at_risk, breached, met, cancelled).",
            ),
        ],
        "Latency": [
            _prom(
                _series("ClickHouse flush latency and failures", "s"),
                [q.P_FLUSH_P50, q.P_FLUSH_P99, q.P_FLUSH_FAILURES],
                "Time to write one batch and release its offsets (p50, p99); failed batches per second.",
            ).override_by_regexp(".*failures", _unit("ops")),
            _prom(
                _series("End-to-end latency", "s"),
                [q.P_E2E_P50, q.P_E2E_P99],
                "Event time to written in ClickHouse, per channel (p50, p99).",
            ),
            _prom(
                _series("Open SLA obligations", "short", span=24),
                [q.P_SLA_OPEN],
                "Response and resolution obligations being timed, by channel and target.",
            ),
        ],
    }

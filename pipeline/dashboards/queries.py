"""Every query behind a Touchline dashboard panel or Grafana alert rule, written once.

ClickHouse queries use the Grafana ClickHouse plugin's macros (`$__timeFilter(col)`,
`$__timeInterval(col)`, `$__fromTime`, `$__toTime`) and the dashboard's multi-value template
variables (`${channel:singlequote}` ...). The dashboards (`pipeline.dashboards.build`), the alert
rules (`pipeline.dashboards.alerts`) and the tests all read the SQL from here, so what the tests
run is exactly what Grafana runs.

Conventions
-----------
* Multi-value variables have the custom "All" value `'__all'` (quotes included: Grafana inserts a
  custom all value unformatted), and every filter reads
  `('__all' IN (${v:singlequote}) OR col IN (${v:singlequote}))`, so "All" is one short literal
  instead of a long IN list and also matches values the variable query has not listed yet.
* Versioned tables are read with FINAL: kpi_minute_partials, sla_events, journeys.
* Each `PanelQuery` declares the columns its panel expects and their kind (time, number, string),
  which the tests check against real results. A query whose first column is a time is a time series
  (Grafana's time series format), any other a table.
* Alert queries return exactly one numeric column (the value Grafana's threshold tests) and string
  columns (which become alert labels), and only the rows that breach, so "no rows" = healthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CLICKHOUSE_UID = "touchline-clickhouse"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PROMETHEUS_UID = "touchline-prometheus"
PROMETHEUS_TYPE = "prometheus"

RUNBOOK_BASE = "https://runbooks.touchline.example/alerts"
"""Where the runbooks live (grafana/README.md "Runbooks" has their text). Set it to your wiki's URL;
deploy/prometheus/rules/touchline.yml uses the same base."""

ALL_VALUE = "'__all'"
"""Custom "All" value of the ClickHouse dashboards' multi-value variables (see module docstring)."""

CHANNELS = ("voice", "chat", "email", "social", "sms", "web")

SL_TARGETS: dict[str, float] = {
    "voice": 0.80,
    "chat": 0.80,
    "web": 0.80,
    "sms": 0.85,
    "social": 0.85,
    "email": 0.90,
}
"""Service-level target (share answered within the channel's threshold T) per channel."""
DEFAULT_SL_TARGET = 0.80

BREACH_ALERT_WINDOW_SECONDS = 300
BREACH_ALERT_MIN_BREACHES = 3
"""Breach alert: at least this many SLA breaches of one channel/queue in the window."""
SL_ALERT_WINDOW_SECONDS = 300
SL_ALERT_MIN_CONTACTS = 10
"""Service-level alert: only queues with at least this many answered + abandoned legs in the window."""
OLDEST_WAIT_ALERT_WINDOW_SECONDS = 300
OLDEST_WAIT_FACTOR = 1.0
"""Oldest-wait alert: the oldest waiting contact is over this many times the channel's threshold T."""

Kind = Literal["time", "number", "string"]
Format = Literal["timeseries", "table"]


@dataclass(frozen=True)
class PanelQuery:
    """One ClickHouse query: its SQL (with macros and variables) and the columns it returns."""

    key: str
    sql: str
    columns: dict[str, Kind]
    variables: tuple[str, ...] = field(default=())

    @property
    def format(self) -> Format:
        """A time series when the first column is its time, else a table."""
        return "timeseries" if next(iter(self.columns.values())) == "time" else "table"


@dataclass(frozen=True)
class PromQuery:
    """One PromQL expression of the pipeline-health dashboard."""

    key: str
    expr: str
    legend: str


def var_filter(variable: str, column: str | None = None, *, as_string: bool = False) -> str:
    """SQL condition: `column` is one of the selected values of `variable`, or "All" is selected."""
    expr = column or variable
    if as_string:
        expr = f"toString({expr})"
    values = f"${{{variable}:singlequote}}"
    return f"({ALL_VALUE} IN ({values}) OR {expr} IN ({values}))"


def _filters(*parts: str) -> str:
    return "\n  AND ".join(parts)


KPI_FILTER = _filters(var_filter("channel"), var_filter("queue"), var_filter("priority", as_string=True))
SLA_FILTER = _filters(KPI_FILTER, var_filter("segment"))
JOURNEY_FILTER = var_filter("channel", "channel_path[1]")


def sl_target_sql(channel: str = "channel") -> str:
    """SQL: the service-level target of the channel expression `channel` (SL_TARGETS)."""
    names = ", ".join(f"'{c}'" for c in SL_TARGETS)
    values = ", ".join(f"{v:.2f}" for v in SL_TARGETS.values())
    return f"transform({channel}, [{names}], [{values}], {DEFAULT_SL_TARGET:.2f})"


def _service_level(within: str, denom: str, removed: str, offered: str, headline: str) -> str:
    """Headline service level of aggregated measures (see pipeline/kpi/definitions.py)."""
    return (
        f"if({headline} = 'connect', if({offered} = 0, NULL, {removed} / {offered}), "
        f"if({denom} = 0, NULL, {within} / {denom}))"
    )


SL_OF_PARTIALS = _service_level(
    "sum(answered_within_sl)",
    "(sum(answered) + sum(abandoned) - sum(short_abandoned))",
    "sum(removed_within_sl)",
    "sum(offered)",
    "max(sl_headline)",
)

KPI_VARS = ("channel", "queue", "priority")
SLA_VARS = ("channel", "queue", "priority", "segment")
JOURNEY_VARS = ("channel",)
"""Journey queries filter on the channel a journey started on only."""

# --------------------------------------------------------------------------------------------------
# Template variables

VARIABLE_QUERIES: dict[str, str] = {
    "queue": f"""SELECT DISTINCT queue
FROM kpi_minute_partials
WHERE $__timeFilter(window_start)
  AND queue != ''
  AND {var_filter("channel")}
ORDER BY queue""",
    "segment": """SELECT DISTINCT segment
FROM interaction_events
WHERE $__timeFilter(occurred_at)
  AND segment != ''
ORDER BY segment""",
}

# --------------------------------------------------------------------------------------------------
# Real-time operations

_KPI_PARTIALS = f"""FROM kpi_minute_partials FINAL
WHERE $__timeFilter(window_start)
  AND {KPI_FILTER}"""


def _nested(sql: str) -> str:
    """`sql` indented one more level, as a subquery's clause (the first line takes the template's indent)."""
    return sql.replace("\n", "\n  ")


def _over_time(
    key: str, time_column: str, values: dict[str, str], source: str, variables: tuple[str, ...]
) -> PanelQuery:
    """A time series of `values` (column -> SQL aggregate) per interval of `time_column`, over `source`
    (its FROM and WHERE)."""
    selected = "".join(f",\n  {sql} AS {column}" for column, sql in values.items())
    columns: dict[str, Kind] = {"time": "time"}
    columns.update((column, "number") for column in values)
    return PanelQuery(
        key,
        f"""SELECT
  $__timeInterval({time_column}) AS time{selected}
{source}
GROUP BY time
ORDER BY time""",
        columns,
        variables,
    )


def _per_channel(key: str, value_sql: str, column: str) -> PanelQuery:
    """A time series per channel of one value over the KPI partial rows."""
    return PanelQuery(
        key,
        f"""SELECT
  $__timeInterval(window_start) AS time,
  channel,
  {value_sql} AS {column}
{_KPI_PARTIALS}
GROUP BY time, channel
ORDER BY time, channel""",
        {"time": "time", "channel": "string", column: "number"},
        KPI_VARS,
    )


RT_SERVICE_LEVEL = _per_channel("rt_service_level", SL_OF_PARTIALS, "service_level")

RT_VOLUME = _over_time(
    "rt_volume",
    "window_start",
    {"offered": "sum(offered)", "answered": "sum(answered)", "abandoned": "sum(abandoned)"},
    _KPI_PARTIALS,
    KPI_VARS,
)

RT_ASA = _per_channel(
    "rt_asa",
    "if(sum(length(answer_waits)) = 0, NULL, sum(arraySum(answer_waits)) / sum(length(answer_waits)))",
    "asa_seconds",
)

# Backlog and oldest wait are states at each minute's end: summed (backlog) or maxed (oldest wait)
# over source partitions and priorities per minute first, then the worst minute of each bucket.


def _worst_minute(key: str, minute_sql: str, minute_column: str, column: str) -> PanelQuery:
    """Per queue, the worst minute of each interval of a state summed or maxed per minute (`minute_sql`)."""
    return PanelQuery(
        key,
        f"""SELECT
  $__timeInterval(minute) AS time,
  queue,
  max({minute_column}) AS {column}
FROM
(
  SELECT window_start AS minute, queue, {minute_sql} AS {minute_column}
  {_nested(_KPI_PARTIALS)}
  GROUP BY minute, queue
)
GROUP BY time, queue
ORDER BY time, queue""",
        {"time": "time", "queue": "string", column: "number"},
        KPI_VARS,
    )


RT_BACKLOG = _worst_minute("rt_backlog", "sum(backlog_end)", "minute_backlog", "backlog")
RT_OLDEST_WAIT = _worst_minute("rt_oldest_wait", "max(oldest_wait_end)", "minute_oldest", "oldest_wait_seconds")

_QUEUE_MINUTES = f"""SELECT
    window_start AS minute,
    channel AS m_channel,
    queue AS m_queue,
    max(sl_headline) AS m_headline,
    sum(offered) AS m_offered,
    sum(answered) AS m_answered,
    sum(abandoned) AS m_abandoned,
    sum(answered_within_sl) AS m_within,
    sum(answered) + sum(abandoned) - sum(short_abandoned) AS m_denom,
    sum(removed_within_sl) AS m_removed,
    sum(arraySum(answer_waits)) AS m_wait_sum,
    sum(length(answer_waits)) AS m_waits,
    sum(backlog_end) AS m_backlog,
    max(oldest_wait_end) AS m_oldest
  {_nested(_KPI_PARTIALS)}
  GROUP BY minute, m_channel, m_queue"""

RT_QUEUES = PanelQuery(
    "rt_queues",
    f"""SELECT
  m_channel AS channel,
  m_queue AS queue,
  sum(m_offered) AS offered,
  sum(m_answered) AS answered,
  sum(m_abandoned) AS abandoned,
  {_service_level("sum(m_within)", "sum(m_denom)", "sum(m_removed)", "sum(m_offered)", "max(m_headline)")} AS service_level,
  {sl_target_sql("any(m_channel)")} AS sl_target,
  if(sum(m_waits) = 0, NULL, sum(m_wait_sum) / sum(m_waits)) AS asa_seconds,
  argMax(m_backlog, minute) AS backlog,
  argMax(m_oldest, minute) AS oldest_wait_seconds
FROM
(
  {_QUEUE_MINUTES}
)
GROUP BY channel, queue
ORDER BY channel, queue""",
    {
        "channel": "string",
        "queue": "string",
        "offered": "number",
        "answered": "number",
        "abandoned": "number",
        "service_level": "number",
        "sl_target": "number",
        "asa_seconds": "number",
        "backlog": "number",
        "oldest_wait_seconds": "number",
    },
    KPI_VARS,
)

RT_NOW = PanelQuery(
    "rt_now",
    f"""SELECT
  {_service_level("sum(m_within)", "sum(m_denom)", "sum(m_removed)", "sum(m_offered)", "max(m_headline)")} AS service_level,
  sum(m_offered) AS offered,
  if(sum(m_offered) = 0, NULL, sum(m_abandoned) / sum(m_offered)) AS abandon_rate,
  if(sum(m_waits) = 0, NULL, sum(m_wait_sum) / sum(m_waits)) AS asa_seconds,
  argMax(m_backlog, minute) AS backlog,
  argMax(m_oldest, minute) AS oldest_wait_seconds
FROM
(
  SELECT
    minute,
    max(m_headline) AS m_headline,
    sum(m_offered) AS m_offered,
    sum(m_abandoned) AS m_abandoned,
    sum(m_within) AS m_within,
    sum(m_denom) AS m_denom,
    sum(m_removed) AS m_removed,
    sum(m_wait_sum) AS m_wait_sum,
    sum(m_waits) AS m_waits,
    sum(m_backlog) AS m_backlog,
    max(m_oldest) AS m_oldest
  FROM
  (
  {_QUEUE_MINUTES}
  )
  GROUP BY minute
)""",
    {
        "service_level": "number",
        "offered": "number",
        "abandon_rate": "number",
        "asa_seconds": "number",
        "backlog": "number",
        "oldest_wait_seconds": "number",
    },
    KPI_VARS,
)

_SLA_EVENTS = f"""FROM sla_events FINAL
WHERE $__timeFilter(at)
  AND {SLA_FILTER}"""

# One obligation = (contact, target, opened_by). Its state is its latest SLA event; at equal times
# the later stage wins (at_risk < breached < met/cancelled).
RT_OPEN_OBLIGATIONS = PanelQuery(
    "rt_open_obligations",
    f"""SELECT
  o_state AS state,
  o_contact AS contact_id,
  o_channel AS channel,
  o_queue AS queue,
  o_priority AS priority,
  o_segment AS segment,
  o_policy AS policy,
  o_target AS target,
  o_deadline AS deadline,
  o_target_seconds AS target_seconds,
  greatest(0, toUnixTimestamp($__toTime) - toUnixTimestamp64Milli(o_deadline) / 1000) AS seconds_over_deadline,
  greatest(0, toUnixTimestamp64Milli(o_deadline) / 1000 - toUnixTimestamp($__toTime)) AS seconds_to_deadline
FROM
(
  SELECT
    contact_id AS o_contact,
    target AS o_target,
    opened_by AS o_opened_by,
    any(channel) AS o_channel,
    any(queue) AS o_queue,
    max(priority) AS o_priority,
    any(segment) AS o_segment,
    any(policy) AS o_policy,
    max(deadline) AS o_deadline,
    max(target_seconds) AS o_target_seconds,
    argMax(kind, (at, multiIf(kind = 'at_risk', 1, kind = 'breached', 2, 3))) AS o_state
  {_nested(_SLA_EVENTS)}
  GROUP BY o_contact, o_target, o_opened_by
)
WHERE o_state IN ('at_risk', 'breached')
ORDER BY state = 'breached' DESC, deadline ASC
LIMIT 500""",
    {
        "state": "string",
        "contact_id": "string",
        "channel": "string",
        "queue": "string",
        "priority": "number",
        "segment": "string",
        "policy": "string",
        "target": "string",
        "deadline": "time",
        "target_seconds": "number",
        "seconds_over_deadline": "number",
        "seconds_to_deadline": "number",
    },
    SLA_VARS,
)

# --------------------------------------------------------------------------------------------------
# SLA


def _sla_over_time(key: str, dimension: str) -> PanelQuery:
    return PanelQuery(
        key,
        f"""SELECT
  $__timeInterval(at) AS time,
  {dimension},
  countIf(kind = 'breached') AS breached,
  countIf(kind = 'at_risk') AS at_risk
FROM sla_events FINAL
WHERE $__timeFilter(at)
  AND kind IN ('breached', 'at_risk')
  AND {SLA_FILTER}
GROUP BY time, {dimension}
ORDER BY time, {dimension}""",
        {"time": "time", dimension: "string", "breached": "number", "at_risk": "number"},
        SLA_VARS,
    )


SLA_BY_CHANNEL = _sla_over_time("sla_by_channel", "channel")
SLA_BY_TARGET = _sla_over_time("sla_by_target", "target")
SLA_BY_POLICY = _sla_over_time("sla_by_policy", "policy")
SLA_BY_QUEUE = _sla_over_time("sla_by_queue", "queue")

SLA_TIME_OVER_DEADLINE = _over_time(
    "sla_time_over_deadline",
    "at",
    {
        "p50_seconds_late": "quantileExact(0.5)(seconds_late)",
        "p90_seconds_late": "quantileExact(0.9)(seconds_late)",
        "max_seconds_late": "max(seconds_late)",
    },
    f"""FROM sla_events FINAL
WHERE $__timeFilter(at)
  AND kind IN ('met', 'cancelled')
  AND seconds_late > 0
  AND {SLA_FILTER}""",
    SLA_VARS,
)

SLA_TOP_QUEUES = PanelQuery(
    "sla_top_queues",
    f"""SELECT
  channel,
  queue,
  uniqExactIf((contact_id, target, opened_by), kind = 'breached') AS breaches,
  uniqExactIf((contact_id, target, opened_by), kind = 'at_risk') AS at_risk,
  uniqExact((contact_id, target, opened_by)) AS obligations,
  breaches / obligations AS breach_rate,
  avgIf(seconds_late, kind IN ('met', 'cancelled') AND seconds_late > 0) AS avg_seconds_late
{_SLA_EVENTS}
GROUP BY channel, queue
HAVING breaches > 0
ORDER BY breaches DESC, breach_rate DESC, channel, queue
LIMIT 10""",
    {
        "channel": "string",
        "queue": "string",
        "breaches": "number",
        "at_risk": "number",
        "obligations": "number",
        "breach_rate": "number",
        "avg_seconds_late": "number",
    },
    SLA_VARS,
)

SLA_BY_POLICY_TABLE = PanelQuery(
    "sla_policy_compliance",
    f"""SELECT
  policy,
  target,
  uniqExact((contact_id, opened_by)) AS obligations,
  uniqExactIf((contact_id, opened_by), kind = 'breached') AS breaches,
  1 - breaches / obligations AS compliance,
  countIf(kind = 'met' AND seconds_late > 0) AS met_late,
  quantileExactIf(0.9)(seconds_late, kind IN ('met', 'cancelled') AND seconds_late > 0) AS p90_seconds_late,
  maxIf(seconds_late, kind IN ('met', 'cancelled')) AS max_seconds_late
{_SLA_EVENTS}
GROUP BY policy, target
ORDER BY compliance ASC, policy, target""",
    {
        "policy": "string",
        "target": "string",
        "obligations": "number",
        "breaches": "number",
        "compliance": "number",
        "met_late": "number",
        "p90_seconds_late": "number",
        "max_seconds_late": "number",
    },
    SLA_VARS,
)

# --------------------------------------------------------------------------------------------------
# Journeys and CX

_JOURNEYS = f"""FROM journeys FINAL
WHERE is_deleted = 0
  AND $__timeFilter(started_at)
  AND {JOURNEY_FILTER}"""

J_FCR_BY_FIRST_CHANNEL = PanelQuery(
    "j_fcr_by_first_channel",
    f"""SELECT
  channel_path[1] AS first_channel,
  count() AS journeys,
  countIf(first_contact_resolved = 1) / count() AS fcr_rate,
  if(countIf(resolved = 1) = 0, NULL, countIf(first_contact_resolved = 1) / countIf(resolved = 1)) AS fcr_rate_of_resolved,
  avg(contacts) AS avg_contacts
{_JOURNEYS}
GROUP BY first_channel
ORDER BY journeys DESC, first_channel""",
    {
        "first_channel": "string",
        "journeys": "number",
        "fcr_rate": "number",
        "fcr_rate_of_resolved": "number",
        "avg_contacts": "number",
    },
    JOURNEY_VARS,
)

J_CHANNEL_SWITCHES = _over_time(
    "j_channel_switches",
    "started_at",
    {
        "switch_rate": "countIf(channel_switches > 0) / count()",
        "repeat_contact_rate": "countIf(contacts > 1) / count()",
        "avg_switches": "avg(channel_switches)",
    },
    _JOURNEYS,
    JOURNEY_VARS,
)

J_TOP_PATHS = PanelQuery(
    "j_top_paths",
    f"""SELECT
  arrayStringConcat(channel_path, ' > ') AS path,
  count() AS journeys,
  count() / sum(count()) OVER () AS share,
  countIf(first_contact_resolved = 1) / count() AS fcr_rate,
  avg(contacts) AS avg_contacts,
  avg(effort_score) AS avg_effort
{_JOURNEYS}
GROUP BY path
ORDER BY journeys DESC, path
LIMIT 20""",
    {
        "path": "string",
        "journeys": "number",
        "share": "number",
        "fcr_rate": "number",
        "avg_contacts": "number",
        "avg_effort": "number",
    },
    JOURNEY_VARS,
)

J_BOT_CONTAINMENT = _per_channel(
    "j_bot_containment",
    "if(sum(bot_contained) + sum(bot_handoffs) = 0, NULL, sum(bot_contained) / (sum(bot_contained) + sum(bot_handoffs)))",
    "containment_rate",
)

J_BOT_ESCALATIONS = PanelQuery(
    "j_bot_escalations",
    f"""SELECT
  first_human_channel,
  arrayStringConcat(channel_path, ' > ') AS path,
  count() AS journeys,
  avg(time_to_first_human_s) AS avg_time_to_first_human_s,
  countIf(resolved = 1) / count() AS resolved_rate,
  avg(bot_handoffs) AS avg_bot_handoffs
{_JOURNEYS}
  AND starts_with_bot = 1
  AND first_human_at IS NOT NULL
GROUP BY first_human_channel, path
ORDER BY journeys DESC, first_human_channel, path
LIMIT 20""",
    {
        "first_human_channel": "string",
        "path": "string",
        "journeys": "number",
        "avg_time_to_first_human_s": "number",
        "resolved_rate": "number",
        "avg_bot_handoffs": "number",
    },
    JOURNEY_VARS,
)


J_CSAT = _per_channel("j_csat", "if(sum(csat_responses) = 0, NULL, sum(csat_satisfied) / sum(csat_responses))", "csat")
J_CES = _per_channel("j_ces", "if(sum(ces_responses) = 0, NULL, sum(ces_score_sum) / sum(ces_responses))", "ces")
J_NPS = _per_channel(
    "j_nps",
    "if(sum(nps_responses) = 0, NULL, 100 * (toInt64(sum(nps_promoters)) - toInt64(sum(nps_detractors))) / sum(nps_responses))",
    "nps",
)

J_EFFORT = PanelQuery(
    "j_effort",
    f"""SELECT
  $__timeInterval(started_at) AS time,
  channel_path[1] AS first_channel,
  avg(effort_score) AS avg_effort
{_JOURNEYS}
GROUP BY time, first_channel
ORDER BY time, first_channel""",
    {"time": "time", "first_channel": "string", "avg_effort": "number"},
    JOURNEY_VARS,
)

# --------------------------------------------------------------------------------------------------
# Ticket queues (views contact_facts, ticket_kpi_hour: schemas/clickhouse/0009, 0010)

TICKET_FILTER = SLA_FILTER
TICKET_FACTS_FILTER = _filters(
    var_filter("channel"),
    var_filter("queue", "current_queue"),
    var_filter("priority", as_string=True),
    var_filter("segment"),
)


def _pct(column: str, level: float, scale: float) -> str:
    """Percentile of the concatenated value lists of `column`, divided by `scale`; NULL when empty."""
    values = f"groupArrayArray({column})"
    return f"if(empty({values}), NULL, arrayReduce('quantileExact({level})', {values}) / {scale})"


TK_BACKLOG = PanelQuery(
    "tk_backlog",
    f"""SELECT
  $__timeInterval(as_of) AS time,
  argMax(open_tickets, as_of) AS open_tickets,
  argMax(age_p50_days, as_of) AS age_p50_days,
  argMax(age_p90_days, as_of) AS age_p90_days
FROM
(
  SELECT
    window_end AS as_of,
    sum(backlog) AS open_tickets,
    {_pct("backlog_ages", 0.5, 86400)} AS age_p50_days,
    {_pct("backlog_ages", 0.9, 86400)} AS age_p90_days
  FROM ticket_kpi_hour
  WHERE $__timeFilter(window_end)
    AND backlog > 0
    AND {TICKET_FILTER}
  GROUP BY as_of
)
GROUP BY time
ORDER BY time""",
    {"time": "time", "open_tickets": "number", "age_p50_days": "number", "age_p90_days": "number"},
    SLA_VARS,
)

TK_BACKLOG_BY_TEAM = PanelQuery(
    "tk_backlog_by_team",
    f"""SELECT
  queue AS team,
  sum(backlog) AS open_tickets,
  {_pct("backlog_ages", 0.5, 86400)} AS age_p50_days,
  {_pct("backlog_ages", 0.9, 86400)} AS age_p90_days,
  {_pct("backlog_ages", 1.0, 86400)} AS oldest_days
FROM ticket_kpi_hour
WHERE window_end = (SELECT max(window_end) FROM ticket_kpi_hour WHERE $__timeFilter(window_end) AND backlog > 0)
  AND backlog > 0
  AND {TICKET_FILTER}
GROUP BY team
ORDER BY open_tickets DESC, team""",
    {
        "team": "string",
        "open_tickets": "number",
        "age_p50_days": "number",
        "age_p90_days": "number",
        "oldest_days": "number",
    },
    SLA_VARS,
)

TK_TTR_BY_TEAM = PanelQuery(
    "tk_ttr_by_team",
    f"""SELECT
  queue AS team,
  priority,
  sum(final_resolved) AS resolved_tickets,
  {_pct("ttr_first_times", 0.5, 3600)} AS ttr_first_p50_hours,
  {_pct("ttr_final_times", 0.5, 3600)} AS ttr_final_p50_hours,
  {_pct("ttr_final_times", 0.9, 3600)} AS ttr_final_p90_hours,
  if(resolved_tickets = 0, NULL, sum(reopened_resolved) / resolved_tickets) AS reopened_share
FROM ticket_kpi_hour
WHERE $__timeFilter(window_start)
  AND {TICKET_FILTER}
GROUP BY team, priority
HAVING resolved_tickets + sum(first_resolved) > 0
ORDER BY team, priority""",
    {
        "team": "string",
        "priority": "number",
        "resolved_tickets": "number",
        "ttr_first_p50_hours": "number",
        "ttr_final_p50_hours": "number",
        "ttr_final_p90_hours": "number",
        "reopened_share": "number",
    },
    SLA_VARS,
)

TK_CREATED_RESOLVED = _over_time(
    "tk_created_resolved",
    "window_start",
    {
        "created_tickets": "sum(created)",
        "resolved_tickets": "sum(final_resolved)",
        "reopened_share": "if(sum(final_resolved) = 0, NULL, sum(reopened_resolved) / sum(final_resolved))",
    },
    f"""FROM ticket_kpi_hour
WHERE $__timeFilter(window_start)
  AND {TICKET_FILTER}""",
    SLA_VARS,
)

TK_WAITS_BY_REASON = PanelQuery(
    "tk_waits_by_reason",
    f"""SELECT
  reason,
  count() AS tickets,
  sum(waited_ms) / 3600000 AS wait_hours,
  avg(waited_ms) / 3600000 AS avg_wait_hours
FROM contact_facts
ARRAY JOIN mapKeys(waiting_ms_by_reason) AS reason, mapValues(waiting_ms_by_reason) AS waited_ms
WHERE $__timeFilter(started_at)
  AND {TICKET_FACTS_FILTER}
GROUP BY reason
ORDER BY wait_hours DESC, reason""",
    {"reason": "string", "tickets": "number", "wait_hours": "number", "avg_wait_hours": "number"},
    SLA_VARS,
)

TK_REOPENS = PanelQuery(
    "tk_reopens",
    f"""SELECT
  toString(reopen_count) AS reopens,
  count() AS tickets,
  countIf(resolved = 1) AS resolved_now,
  avg(ttr_first_seconds) / 3600 AS avg_ttr_first_hours,
  avg(ttr_final_seconds) / 3600 AS avg_ttr_final_hours
FROM contact_facts
WHERE $__timeFilter(started_at)
  AND resolution_count > 0
  AND {TICKET_FACTS_FILTER}
GROUP BY reopens
ORDER BY toUInt32(reopens)""",
    {
        "reopens": "string",
        "tickets": "number",
        "resolved_now": "number",
        "avg_ttr_first_hours": "number",
        "avg_ttr_final_hours": "number",
    },
    SLA_VARS,
)

TICKET_QUERIES: tuple[PanelQuery, ...] = (
    TK_BACKLOG,
    TK_BACKLOG_BY_TEAM,
    TK_TTR_BY_TEAM,
    TK_CREATED_RESOLVED,
    TK_WAITS_BY_REASON,
    TK_REOPENS,
)

# --------------------------------------------------------------------------------------------------
# Grafana-managed alert rules (one numeric column, string label columns, only breaching rows)


def _alert(key: str, value_sql: str, column: str, source: str, having: str) -> PanelQuery:
    """An alert query per channel and queue: `value_sql` as the one numeric column, only the groups for
    which `having` holds (see the module docstring)."""
    return PanelQuery(
        key,
        f"""SELECT
  channel,
  queue,
  toFloat64({value_sql}) AS {column}
{source}
GROUP BY channel, queue
HAVING {having}
ORDER BY channel, queue""",
        {"channel": "string", "queue": "string", column: "number"},
    )


ALERT_SLA_BREACHES = _alert(
    "alert_sla_breaches",
    "uniqExact((contact_id, target, opened_by))",
    "breaches",
    """FROM sla_events FINAL
WHERE $__timeFilter(at)
  AND kind = 'breached'""",
    f"breaches >= {BREACH_ALERT_MIN_BREACHES}",
)

ALERT_SERVICE_LEVEL = _alert(
    "alert_service_level",
    SL_OF_PARTIALS,
    "service_level",
    """FROM kpi_minute_partials FINAL
WHERE $__timeFilter(window_start)
  AND queue != ''""",
    f"""sum(answered) + sum(abandoned) - sum(short_abandoned) >= {SL_ALERT_MIN_CONTACTS}
  AND service_level < {sl_target_sql()}""",
)

ALERT_OLDEST_WAIT = PanelQuery(
    "alert_oldest_wait",
    f"""SELECT
  m_channel AS channel,
  m_queue AS queue,
  argMax(m_oldest, minute) AS oldest_wait_seconds
FROM
(
  SELECT
    window_start AS minute,
    channel AS m_channel,
    queue AS m_queue,
    max(oldest_wait_end) AS m_oldest,
    max(sl_threshold_seconds) AS m_threshold
  FROM kpi_minute_partials FINAL
  WHERE $__timeFilter(window_start)
    AND queue != ''
  GROUP BY minute, m_channel, m_queue
)
GROUP BY channel, queue
HAVING oldest_wait_seconds > {OLDEST_WAIT_FACTOR} * argMax(m_threshold, minute)
ORDER BY channel, queue""",
    {"channel": "string", "queue": "string", "oldest_wait_seconds": "number"},
)

ALERT_QUERIES: tuple[PanelQuery, ...] = (ALERT_SLA_BREACHES, ALERT_SERVICE_LEVEL, ALERT_OLDEST_WAIT)

# --------------------------------------------------------------------------------------------------
# Pipeline health (Prometheus)

_CH = 'channel=~"${channel:regex}"'
_INST = 'instance=~"${instance:regex}"'

P_THROUGHPUT = PromQuery(
    "p_throughput",
    f"sum by (channel) (rate(touchline_events_written_total{{{_CH}, {_INST}}}[$__rate_interval]))",
    "{{channel}} written",
)
P_CONSUMED = PromQuery(
    "p_consumed",
    f"sum by (channel) (rate(touchline_events_consumed_total{{{_CH}, {_INST}}}[$__rate_interval]))",
    "{{channel}} consumed",
)
P_LAG = PromQuery(
    "p_lag",
    f"sum by (stage, topic) (touchline_consumer_lag_messages{{{_INST}}})",
    "{{stage}} {{topic}}",
)
P_DEADLETTER = PromQuery(
    "p_deadletter",
    f"sum by (channel, reason) (rate(touchline_events_deadlettered_total{{{_CH}, {_INST}}}[$__rate_interval]))",
    "{{channel}} {{reason}}",
)
P_LATE = PromQuery(
    "p_late",
    f"sum by (channel) (rate(touchline_events_late_total{{{_CH}, {_INST}}}[$__rate_interval]))",
    "{{channel}}",
)
P_FLUSH_P50 = PromQuery(
    "p_flush_p50",
    f"histogram_quantile(0.5, sum by (le) (rate(touchline_flush_seconds_bucket{{{_INST}}}[$__rate_interval])))",
    "p50",
)
P_FLUSH_P99 = PromQuery(
    "p_flush_p99",
    f"histogram_quantile(0.99, sum by (le) (rate(touchline_flush_seconds_bucket{{{_INST}}}[$__rate_interval])))",
    "p99",
)
P_FLUSH_FAILURES = PromQuery(
    "p_flush_failures",
    f"sum by (instance) (rate(touchline_flush_failures_total{{{_INST}}}[$__rate_interval]))",
    "{{instance}} failures",
)
P_E2E_P50 = PromQuery(
    "p_e2e_p50",
    f"histogram_quantile(0.5, sum by (le, channel) (rate(touchline_end_to_end_seconds_bucket{{{_CH}, {_INST}}}[$__rate_interval])))",
    "{{channel}} p50",
)
P_E2E_P99 = PromQuery(
    "p_e2e_p99",
    f"histogram_quantile(0.99, sum by (le, channel) (rate(touchline_end_to_end_seconds_bucket{{{_CH}, {_INST}}}[$__rate_interval])))",
    "{{channel}} p99",
)
P_UP = PromQuery("p_up", f'up{{job="touchline-worker", {_INST}}}', "{{instance}}")
P_SLA_EVENTS = PromQuery(
    "p_sla_events",
    f"sum by (channel, kind) (rate(touchline_sla_events_total{{{_CH}, {_INST}}}[$__rate_interval]))",
    "{{channel}} {{kind}}",
)
P_SLA_OPEN = PromQuery(
    "p_sla_open",
    f"sum by (channel, target) (touchline_sla_open_obligations{{{_CH}, {_INST}}})",
    "{{channel}} {{target}}",
)

PANEL_QUERIES: tuple[PanelQuery, ...] = (
    RT_NOW,
    RT_SERVICE_LEVEL,
    RT_VOLUME,
    RT_ASA,
    RT_BACKLOG,
    RT_OLDEST_WAIT,
    RT_QUEUES,
    RT_OPEN_OBLIGATIONS,
    SLA_BY_CHANNEL,
    SLA_BY_TARGET,
    SLA_BY_POLICY,
    SLA_BY_QUEUE,
    SLA_TIME_OVER_DEADLINE,
    SLA_TOP_QUEUES,
    SLA_BY_POLICY_TABLE,
    J_FCR_BY_FIRST_CHANNEL,
    J_CHANNEL_SWITCHES,
    J_TOP_PATHS,
    J_BOT_CONTAINMENT,
    J_BOT_ESCALATIONS,
    J_CSAT,
    J_CES,
    J_NPS,
    J_EFFORT,
    *TICKET_QUERIES,
)

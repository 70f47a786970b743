"""Generates `schemas/clickhouse/0003_kpi_windows.sql` from the KPI definitions.

`render_kpi_ddl()` returns the file's text; `touchline generate` rewrites the file. A unit
test fails when the committed file differs from the generator's output. The views evaluate every
KPI with `Kpi.sql()`, the same definition `kpi_values` evaluates in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.kpi.definitions import KPIS
from pipeline.kpi.measures import COUNT_COLUMNS, LIST_COLUMNS, Column
from pipeline.resources import data_path

DDL_PATH = data_path("schemas", "clickhouse", "0003_kpi_windows.sql")

_HEAD_COLUMNS: tuple[Column, ...] = (
    Column("window_start", "DateTime('UTC')", "Start of the 1-minute event-time window [start, start + 1 min), UTC"),
    Column("channel", "LowCardinality(String)", "voice, chat, email, social, sms, web"),
    Column("queue", "LowCardinality(String)", "Queue of the measure (leg in force), empty before any queue"),
    Column("priority", "UInt8", "Routing priority 0-9 of the measure"),
    Column("source_topic", "LowCardinality(String)", "Kafka topic the measures were computed from"),
    Column("source_partition", "UInt16", "Kafka partition the measures were computed from"),
    Column("sl_threshold_seconds", "Float64", "Service-level target T of the channel used for *_within_sl, seconds"),
    Column("short_abandon_seconds", "Float64", "Short-abandon threshold used, seconds"),
    Column(
        "sl_headline", "LowCardinality(String)", "Headline service-level formula of the channel: genesys or connect"
    ),
)
_TAIL_COLUMNS: tuple[Column, ...] = (
    Column("backlog_end", "UInt32", "Legs waiting in queue at the window end instant, legs"),
    Column("oldest_wait_end", "Float64", "Age of the oldest waiting leg at the window end, seconds (0 when none)"),
    Column("final", "Bool", "1 when the watermark passed the window end: the row will not change again"),
    Column("version", "UInt64", "Row version, increasing per key (max(previous + 1, emit time in ms)); highest wins"),
    Column("emitted_at", "DateTime64(3, 'UTC')", "When the worker emitted this version"),
)
PARTIAL_TABLE_COLUMNS: tuple[Column, ...] = (*_HEAD_COLUMNS, *COUNT_COLUMNS, *LIST_COLUMNS, *_TAIL_COLUMNS)


@dataclass(frozen=True)
class Rollup:
    view: str
    minutes: int
    bucket_sql: str
    comment: str


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("kpi_minute", 1, "window_start", "1-minute windows"),
    Rollup("kpi_15m", 15, "toStartOfFifteenMinutes(window_start)", "15-minute windows"),
    Rollup("kpi_1h", 60, "toStartOfHour(window_start)", "1-hour windows"),
    Rollup("kpi_1d", 1440, "toStartOfDay(window_start)", "1-day windows (UTC days)"),
)


def _q(name: str) -> str:
    return f"`{name}`"


def _table() -> str:
    width = max(len(c.name) for c in PARTIAL_TABLE_COLUMNS) + 2
    type_width = max(len(c.ch_type) for c in PARTIAL_TABLE_COLUMNS)
    lines = []
    for i, col in enumerate(PARTIAL_TABLE_COLUMNS):
        comma = "," if i < len(PARTIAL_TABLE_COLUMNS) - 1 else ""
        comment = col.comment.replace("'", "\\'")
        lines.append(f"    {_q(col.name):<{width}} {col.ch_type:<{type_width}} COMMENT '{comment}'{comma}")
    body = "\n".join(lines)
    return (
        "-- Partial KPI rows: the measures of one 1-minute event-time window x channel x queue x priority,\n"
        "-- computed by the stream worker per source partition (topic, partition). A row is re-inserted\n"
        "-- with a higher version whenever its window changes and a last time with final = 1; read with\n"
        "-- FINAL (the views do). Value lists keep every duration so means and percentiles stay exact when\n"
        "-- partitions and windows are merged.\n"
        "CREATE TABLE IF NOT EXISTS kpi_minute_partials\n"
        "(\n"
        f"{body}\n"
        ")\n"
        "ENGINE = ReplacingMergeTree(version)\n"
        "PARTITION BY toYYYYMM(window_start)\n"
        "ORDER BY (window_start, channel, queue, priority, source_topic, source_partition)\n"
        "COMMENT 'Windowed KPI measures per source partition; merged by the kpi_minute/15m/1h/1d views';"
    )


def _view(rollup: Rollup) -> str:
    last_minute = (
        "window_start = bucket_start"
        if rollup.minutes == 1
        else f"window_start = bucket_start + INTERVAL {rollup.minutes - 1} MINUTE"
    )
    inner = [
        f"{rollup.bucket_sql} AS bucket_start",
        "channel",
        "queue",
        "priority",
        "count() AS partial_rows",
        "min(`final`) AS all_final",
        "max(sl_threshold_seconds) AS sl_threshold_seconds",
        "max(short_abandon_seconds) AS short_abandon_seconds",
        "max(sl_headline) AS sl_headline",
        *(f"sum({c.name}) AS {c.name}" for c in COUNT_COLUMNS),
        *(f"groupArrayArray({c.name}) AS {c.name}" for c in LIST_COLUMNS),
        f"sumIf(backlog_end, {last_minute}) AS backlog_end",
        f"maxIf(oldest_wait_end, {last_minute}) AS oldest_wait_end",
    ]
    outer = [
        "bucket_start AS window_start",
        f"bucket_start + INTERVAL {rollup.minutes} MINUTE AS window_end",
        "channel",
        "queue",
        "priority",
        "partial_rows",
        "all_final AS `final`",
        "sl_threshold_seconds",
        "short_abandon_seconds",
        "sl_headline",
        *(c.name for c in COUNT_COLUMNS),
        *(c.name for c in LIST_COLUMNS),
        "backlog_end",
        "oldest_wait_end",
        *(
            f"{k.sql()} AS {k.name}"
            for k in KPIS
            if not k.is_column and k.name not in ("backlog", "oldest_wait_seconds")
        ),
        "backlog_end AS backlog",
        "oldest_wait_end AS oldest_wait_seconds",
    ]
    sep = ",\n        "
    outer_sep = ",\n    "
    return (
        f"-- {rollup.view}: KPIs over {rollup.comment}, all source partitions merged (counts summed, value\n"
        "-- lists concatenated, so means and percentiles are exact); backlog and oldest wait are those at the\n"
        "-- end of the bucket's last minute. `final` = every merged partial row is final.\n"
        f"CREATE VIEW IF NOT EXISTS {rollup.view} AS\n"
        "SELECT\n"
        f"    {outer_sep.join(outer)}\n"
        "FROM\n"
        "(\n"
        "    SELECT\n"
        f"        {sep.join(inner)}\n"
        "    FROM kpi_minute_partials FINAL\n"
        "    GROUP BY bucket_start, channel, queue, priority\n"
        ");"
    )


def _kpi_docs() -> str:
    lines = [
        "-- KPIs of the views (definitions in pipeline/kpi/definitions.py; rates are fractions 0-1, NPS -100..100):"
    ]
    for kpi in KPIS:
        doc = kpi.doc.rstrip(".;")
        lines.append(f"--   {kpi.name} [{kpi.unit}]: {doc}.")
    return "\n".join(lines)


def render_kpi_ddl() -> str:
    """The full text of `schemas/clickhouse/0003_kpi_windows.sql`."""
    parts = [
        # the first line is part of an applied migration's checksum: it keeps naming the old command
        "-- GENERATED by `python -m pipeline.kpi.ddl` from pipeline/kpi/definitions.py. Do not edit by hand.",
        _table(),
        _kpi_docs(),
        *(_view(r) for r in ROLLUPS),
    ]
    text = "\n\n".join(parts) + "\n"
    for line in text.splitlines():
        if line.rstrip().endswith(";") and not (line.startswith(");") or line.startswith("COMMENT ")):
            raise AssertionError(f"only statements may end a line with ';' (migrations split there): {line!r}")
    return text

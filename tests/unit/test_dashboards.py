"""The dashboards and Grafana alerting provisioning: committed files equal the code, every panel has a
datasource and a query taken from pipeline/dashboards/queries.py, every ClickHouse query uses the
plugin's macros and the template variables, and the macros expand as the plugin expands them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.dashboards import queries as q
from pipeline.dashboards.alerts import ALERTS, GROUP_BY, provisioning
from pipeline.dashboards.build import DASHBOARDS, _ch, _table
from pipeline.dashboards.generate import ALERTING_FILE, DASHBOARD_DIR
from pipeline.generate import drift
from tests.support.macros import ALL, MacroError, TimeRange, Variable, expand, expand_macros, interpolate

REPO = Path(__file__).resolve().parents[2]
SQL_BY_TEXT = {pq.sql: pq for pq in q.PANEL_QUERIES}
PROM_BY_EXPR = {pq.expr: pq for pq in vars(q).values() if isinstance(pq, q.PromQuery)}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def all_panels() -> list[tuple[str, dict[str, Any]]]:
    return [(stem, panel) for stem, build in DASHBOARDS.items() for panel in panels(build())]


def test_committed_files_equal_the_generated_ones() -> None:
    stale = [d.path for d in drift(REPO) if d.path.parts[0] == "grafana"]
    assert not stale, f"out of date, run `touchline generate`: {[str(p) for p in stale]}"
    committed = {p.name for p in (REPO / DASHBOARD_DIR).glob("*.json")}
    assert committed == {f"{stem}.json" for stem in DASHBOARDS}


def test_the_dashboards_and_their_variables() -> None:
    boards = {stem: build() for stem, build in DASHBOARDS.items()}
    assert {b["title"] for b in boards.values()} == {
        "Touchline / Real-time operations",
        "Touchline / SLA",
        "Touchline / Journeys and CX",
        "Touchline / Ticket queues",
        "Touchline / Pipeline health",
    }
    assert len({b["uid"] for b in boards.values()}) == 5
    for stem in ("realtime-operations", "sla", "journeys-cx", "tickets"):
        variables = {v["name"]: v for v in boards[stem]["templating"]["list"]}
        assert list(variables) == ["channel", "queue", "priority", "segment"]
        for variable in variables.values():
            assert variable["multi"] and variable["includeAll"] and variable["allValue"] == q.ALL_VALUE
        assert variables["channel"]["query"].split(",") == list(q.CHANNELS)
        assert variables["queue"]["query"] == q.VARIABLE_QUERIES["queue"]
        assert variables["queue"]["datasource"]["uid"] == q.CLICKHOUSE_UID
    health_vars = {v["name"] for v in boards["pipeline-health"]["templating"]["list"]}
    assert health_vars == {"instance", "channel"}


@pytest.mark.parametrize(("stem", "panel"), all_panels(), ids=lambda v: v if isinstance(v, str) else v["title"])
def test_every_panel_has_a_datasource_and_a_query_from_queries_py(stem: str, panel: dict[str, Any]) -> None:
    assert panel["title"] and panel.get("description")
    datasource = panel["datasource"]
    assert datasource in (
        {"type": q.CLICKHOUSE_TYPE, "uid": q.CLICKHOUSE_UID},
        {"type": q.PROMETHEUS_TYPE, "uid": q.PROMETHEUS_UID},
    )
    assert panel["targets"]
    for target in panel["targets"]:
        assert target["datasource"] == datasource and target["refId"]
        if datasource["uid"] == q.CLICKHOUSE_UID:
            assert stem != "pipeline-health"
            query = SQL_BY_TEXT.get(target["rawSql"])
            assert query is not None, f"{panel['title']}: SQL not from pipeline/dashboards/queries.py"
            assert target["editorType"] == "sql" and target["queryType"] == query.format
            assert target["format"] == {"timeseries": 0, "table": 1}[query.format]
            assert target["pluginVersion"].startswith("4.")
        else:
            assert stem == "pipeline-health"
            assert target["expr"] in PROM_BY_EXPR, f"{panel['title']}: PromQL not from queries.py"
            assert re.search(r"touchline_|up\{", target["expr"])


def test_every_panel_query_is_on_a_dashboard_once() -> None:
    used = [t["rawSql"] for _, p in all_panels() for t in p["targets"] if "rawSql" in t]
    assert sorted(used) == sorted(SQL_BY_TEXT)


def test_every_field_override_matches_a_column_of_the_panel_query() -> None:
    checked = 0
    for stem, panel in all_panels():
        sql = [t["rawSql"] for t in panel["targets"] if "rawSql" in t]
        columns = SQL_BY_TEXT[sql[0]].columns if sql else {}
        for override in panel.get("fieldConfig", {}).get("overrides", []) if sql else []:
            matcher = override["matcher"]
            if matcher["id"] == "byName":
                hit = matcher["options"] in columns
            else:
                assert matcher["id"] == "byRegexp"
                hit = any(re.fullmatch(matcher["options"], column) for column in columns)
            assert hit, f"{stem}: {panel['title']}: {matcher} matches no column of its query"
            checked += 1
    assert checked >= 20


def test_a_unit_for_a_column_the_query_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="rt_volume has no column answred"):
        _ch(_table("Volume"), q.RT_VOLUME, "Legs.", units={"answred": "short"})


def test_panel_ids_are_unique_and_the_grid_is_24_wide() -> None:
    for build in DASHBOARDS.values():
        board = build()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


@pytest.mark.parametrize("query", (*q.PANEL_QUERIES, *q.ALERT_QUERIES), ids=lambda pq: pq.key)
def test_clickhouse_sql_uses_macros_and_variables(query: q.PanelQuery) -> None:
    sql = query.sql
    assert "$__timeFilter(" in sql, "every query is bounded by the dashboard or alert time range"
    if query.format == "timeseries":
        assert sql.lstrip().startswith("SELECT\n  $__timeInterval(")
    for name in query.variables:
        assert f"${{{name}:singlequote}}" in sql, f"{query.key}: does not filter on ${name}"
    if query in q.ALERT_QUERIES:
        assert "${" not in sql, "alert queries have no dashboard variables"
    for table in ("kpi_minute_partials", "sla_events", "journeys"):
        if re.search(rf"\bFROM {table}\b", sql):
            assert f"FROM {table} FINAL" in sql, f"{query.key}: versioned table {table} read without FINAL"


@pytest.mark.parametrize("query", (*q.PANEL_QUERIES, *q.ALERT_QUERIES), ids=lambda pq: pq.key)
def test_macros_and_variables_expand_completely(query: q.PanelQuery) -> None:
    time_range = TimeRange(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, 3, tzinfo=UTC), 60)
    variables = {name: Variable([ALL], q.ALL_VALUE) for name in ("channel", "queue", "priority", "segment")}
    expanded = expand(query.sql, time_range, variables)
    assert "$" not in expanded
    assert "toDateTime(1893456000)" in expanded  # 2030-01-01T00:00:00Z, the plugin's $__timeFilter form


def test_macro_expansion_matches_the_clickhouse_plugin() -> None:
    tr = TimeRange(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, 0, 0, 30, tzinfo=UTC), 30.0)
    assert expand_macros("$__timeFilter(at)", tr) == "at >= toDateTime(1893456000) AND at <= toDateTime(1893542430)"
    assert expand_macros("$__timeFilter_ms(at)", tr) == (
        "at >= fromUnixTimestamp64Milli(1893456000000) AND at <= fromUnixTimestamp64Milli(1893542430000)"
    )
    assert expand_macros("$__timeInterval(window_start)", tr) == (
        "toStartOfInterval(toDateTime(window_start), INTERVAL 30 second)"
    )
    assert expand_macros("$__timeInterval_ms(at)", tr) == (
        "toStartOfInterval(toDateTime64(at, 3), INTERVAL 30000 millisecond)"
    )
    assert (
        expand_macros("$__fromTime $__toTime $__interval_s", tr) == "toDateTime(1893456000) toDateTime(1893542430) 30"
    )
    assert expand_macros("$__dateFilter(d)", tr) == "d >= toDate('2030-01-01') AND d <= toDate('2030-01-02')"
    assert expand_macros("$__timeFilter(toDateTime(f(a, b)))", tr).startswith("toDateTime(f(a, b)) >= ")
    with pytest.raises(MacroError):
        expand_macros("$__nope(x)", tr)
    with pytest.raises(MacroError):
        expand_macros("$__timeFilter", tr)


def test_variables_interpolate_as_grafana_does() -> None:
    sql = "x IN (${channel:singlequote}) AND y IN (${queue:singlequote}) AND $priority AND [[segment]]"
    got = interpolate(
        sql,
        {
            "channel": Variable(["voice", "chat"]),
            "queue": Variable([ALL], "'__all'"),
            "priority": Variable(["3"]),
            "segment": Variable(["o'hara"]),
        },
    )
    assert got == "x IN ('voice','chat') AND y IN ('__all') AND 3 AND o'hara"
    assert interpolate("${s:singlequote}", {"s": Variable(["o'hara"])}) == "'o\\'hara'"
    assert interpolate("${c:regex}", {"c": Variable(["a.b", "c"])}) == "(a\\.b|c)"
    assert interpolate("${c:singlequote}", {"c": Variable([ALL], None, ["voice", "chat"])}) == "'voice','chat'"
    with pytest.raises(MacroError):
        expand("${unknown}", TimeRange(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC)))


# --------------------------------------------------------------------------------------------------
# Grafana alerting provisioning


def test_alerting_provisioning_file() -> None:
    text = (REPO / ALERTING_FILE).read_text()
    document = yaml.safe_load(text)
    assert document == json.loads(json.dumps(provisioning()))
    (group,) = document["groups"]
    assert group["folder"] == "Touchline" and group["interval"] == "1m"
    rules = {rule["uid"]: rule for rule in group["rules"]}
    assert set(rules) == {spec.uid for spec in ALERTS}
    for spec in ALERTS:
        rule = rules[spec.uid]
        assert rule["title"] == spec.title and rule["for"] == spec.pending
        assert rule["noDataState"] == "OK" and rule["execErrState"] == "Error"
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["labels"]["team"]
        assert "$" not in json.dumps(rule["labels"]), "labels are env-interpolated by Grafana provisioning"
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert rule["annotations"]["runbook_url"].startswith("https://")
        query, threshold = rule["data"]
        assert query["datasourceUid"] == q.CLICKHOUSE_UID
        assert query["model"]["rawSql"] == spec.query.sql
        assert query["relativeTimeRange"] == {"from": spec.window_seconds, "to": 0}
        assert threshold["datasourceUid"] == "__expr__" and threshold["model"]["type"] == "threshold"
        assert threshold["model"]["expression"] == "A" and rule["condition"] == "B"
        # channel and queue come from the query's string columns and label every alert instance
        assert list(spec.query.columns)[:2] == ["channel", "queue"]
    (contact_point,) = document["contactPoints"]
    assert contact_point["receivers"][0]["type"] == "webhook"
    assert contact_point["receivers"][0]["settings"]["url"] == "$PAGER_WEBHOOK_URL"
    (policy,) = document["policies"]
    assert policy["receiver"] == contact_point["name"] and policy["group_by"] == GROUP_BY
    assert {tuple(m) for route in policy["routes"] for m in route["object_matchers"]} == {
        ("severity", "=", "critical"),
        ("severity", "=", "warning"),
    }


def test_grafana_provisioning_points_at_the_generated_files() -> None:
    datasources = yaml.safe_load((REPO / "grafana/provisioning/datasources/touchline.yaml").read_text())
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid[q.CLICKHOUSE_UID]["type"] == q.CLICKHOUSE_TYPE
    assert by_uid[q.PROMETHEUS_UID]["type"] == q.PROMETHEUS_TYPE
    providers = yaml.safe_load((REPO / "grafana/provisioning/dashboards/touchline.yaml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/touchline"
    compose = yaml.safe_load((REPO / "deploy/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "../grafana/dashboards:/var/lib/grafana/dashboards/touchline:ro" in mounts
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in mounts

"""A grafana-foundation-sdk query builder for the official ClickHouse plugin
(grafana-clickhouse-datasource v4), which the SDK has no builder for: raw SQL queries in the
plugin's v4 query model (`editorType: sql`, `queryType`, `format`, `pluginVersion`)."""

from __future__ import annotations

from typing import Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants

from pipeline.dashboards.queries import CLICKHOUSE_TYPE, CLICKHOUSE_UID, Format

PLUGIN_VERSION = "4.10.1"
"""Marks the queries as v4 queries (older ones are migrated by the plugin on load)."""

_SQLUTIL_FORMAT = {"timeseries": 0, "table": 1}  # grafana-plugin-sdk-go sqlutil.FormatQueryOption


class ClickHouseDataquery(cogvariants.Dataquery):
    def __init__(self) -> None:
        self.ref_id = "A"
        self.raw_sql = ""
        self.query_type: Format = "table"
        self.datasource_uid = CLICKHOUSE_UID
        self.hide = False

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": {"type": CLICKHOUSE_TYPE, "uid": self.datasource_uid},
            "editorType": "sql",
            "format": _SQLUTIL_FORMAT[self.query_type],
            "pluginVersion": PLUGIN_VERSION,
            "queryType": self.query_type,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
            **({"hide": True} if self.hide else {}),
        }


class ClickHouseQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder in the SDK's style: `ClickHouseQuery().raw_sql(sql).query_type("timeseries")`."""

    def __init__(self) -> None:
        self._internal = ClickHouseDataquery()

    def build(self) -> ClickHouseDataquery:
        return self._internal

    def raw_sql(self, sql: str) -> Self:
        self._internal.raw_sql = sql
        return self

    def query_type(self, query_type: Format) -> Self:
        self._internal.query_type = query_type
        return self

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def datasource_uid(self, uid: str) -> Self:
        self._internal.datasource_uid = uid
        return self

"""Touchline's operator and analyst faces in Grafana: dashboards (grafana-foundation-sdk) and
Grafana-managed alert rules on ClickHouse, generated into `grafana/` by `touchline generate`.

Modules: `queries` (every panel and alert query, written once), `build` (the dashboards), `alerts`
(alert rules, contact point, notification policy), `clickhouse` (the ClickHouse plugin's query model
for the SDK), `generate` (files and drift check). The tests expand and run every query outside
Grafana with `tests/support/macros.py`.
"""

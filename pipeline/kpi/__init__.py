"""Windowed contact-centre KPIs: per-contact facts, KPI definitions (Python and ClickHouse SQL from
one definition), streaming 1-minute windows per source partition, and the DDL of the KPI tables and
views. Pure Python: no Kafka, Faust or ClickHouse imports."""

from pipeline.kpi.definitions import KPI_BY_NAME, KPIS, kpi_values, percentile
from pipeline.kpi.facts import ContactFacts, ContactTracker, QueueLeg, contact_facts
from pipeline.kpi.rows import PARTIAL_COLUMNS, KpiRow
from pipeline.kpi.settings import KpiConfig
from pipeline.kpi.windows import KpiWindows, LateEvent, PartitionKey

__all__ = [
    "KPIS",
    "KPI_BY_NAME",
    "PARTIAL_COLUMNS",
    "ContactFacts",
    "ContactTracker",
    "KpiConfig",
    "KpiRow",
    "KpiWindows",
    "LateEvent",
    "PartitionKey",
    "QueueLeg",
    "contact_facts",
    "kpi_values",
    "percentile",
]

"""SLA tracking: business-hours arithmetic (`calendar`), policies loaded from YAML (`policy`) and
the deadline-driven clock engine over canonical interaction events (`clock`). Pure Python: no
Kafka, Faust or ClickHouse here; the worker feeds events in and writes `SlaEvent`s out."""

from pipeline.sla.calendar import BusinessCalendar
from pipeline.sla.clock import SLA_EVENT_COLUMNS, SlaEngine, SlaEvent, SlaKind
from pipeline.sla.policy import Policy, PolicyError, PolicySet, Target, load_policies, parse_policies

__all__ = [
    "SLA_EVENT_COLUMNS",
    "BusinessCalendar",
    "Policy",
    "PolicyError",
    "PolicySet",
    "SlaEngine",
    "SlaEvent",
    "SlaKind",
    "Target",
    "load_policies",
    "parse_policies",
]

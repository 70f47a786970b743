"""Grafana-managed alert rules on ClickHouse, with their contact point and notification policy, as a
Grafana file-provisioning document (grafana/provisioning/alerting/touchline.yaml).

Rules are built with grafana-foundation-sdk's alerting builders and turned into the provisioning
file format. Each rule: query A (ClickHouse SQL from `pipeline.dashboards.queries`, returning one
row per breaching channel/queue, string columns become the alert's labels) -> threshold B on A.
No rows means healthy (noDataState OK); a failing query raises Grafana's DatasourceError alert
(execErrState Error). Pending periods make one incident one page, and the notification policy
groups by alertname, channel and queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting
from grafana_foundation_sdk.builders import expr as expr_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

from pipeline.dashboards import queries as q
from pipeline.dashboards.clickhouse import ClickHouseQuery
from pipeline.dashboards.queries import PanelQuery

FOLDER = "Touchline"
GROUP = "touchline-clickhouse"
GROUP_INTERVAL = "1m"
CONTACT_POINT = "touchline-pager"
PAGER_URL_ENV = "PAGER_WEBHOOK_URL"
"""Grafana reads the pager webhook URL from this environment variable (provisioning interpolation)."""
RUNBOOK = q.RUNBOOK_BASE + "#{anchor}"
GROUP_BY = ["alertname", "channel", "queue"]
SUMMARY_PREFIX = "{{ $labels.channel }}/{{ $labels.queue }}: "
"""Every rule fires per channel and queue (its query's label columns); its summary starts with them."""

Op = Literal["gt", "lt", "gte", "lte"]


@dataclass(frozen=True)
class AlertSpec:
    uid: str
    title: str
    query: PanelQuery
    window_seconds: int
    op: Op
    threshold: float
    pending: str
    severity: str
    team: str
    summary: str
    description: str
    runbook_anchor: str


ALERTS: tuple[AlertSpec, ...] = (
    AlertSpec(
        uid="touchline-sla-breaches",
        title="TouchlineSlaBreaches",
        query=q.ALERT_SLA_BREACHES,
        window_seconds=q.BREACH_ALERT_WINDOW_SECONDS,
        op="gte",
        threshold=q.BREACH_ALERT_MIN_BREACHES,
        pending="1m",
        severity="critical",
        team="contact-centre-ops",
        summary="{{ $values.A.Value }} SLA breaches in the last 5 minutes",
        description=(
            f"At least {q.BREACH_ALERT_MIN_BREACHES} response or resolution obligations of queue "
            "{{ $labels.queue }} on {{ $labels.channel }} passed their SLA deadline unanswered in the last "
            "5 minutes. Check staffing and routing of the queue; the SLA dashboard lists the contacts."
        ),
        runbook_anchor="sla-breaches",
    ),
    AlertSpec(
        uid="touchline-service-level-low",
        title="TouchlineServiceLevelBelowTarget",
        query=q.ALERT_SERVICE_LEVEL,
        window_seconds=q.SL_ALERT_WINDOW_SECONDS,
        op="lt",
        threshold=1.0,  # the query keeps only queues below their channel's target
        pending="5m",
        severity="warning",
        team="workforce-management",
        summary="service level {{ humanizePercentage $values.A.Value }} below target for 5 minutes",
        description=(
            "The headline service level of queue {{ $labels.queue }} on {{ $labels.channel }} over the last "
            "5 minutes is below its channel target (pipeline/dashboards/queries.py SL_TARGETS), with at least "
            f"{q.SL_ALERT_MIN_CONTACTS} answered or abandoned contacts, and has stayed there for 5 minutes."
        ),
        runbook_anchor="service-level-below-target",
    ),
    AlertSpec(
        uid="touchline-oldest-wait",
        title="TouchlineOldestWaitingContact",
        query=q.ALERT_OLDEST_WAIT,
        window_seconds=q.OLDEST_WAIT_ALERT_WINDOW_SECONDS,
        op="gt",
        threshold=0.0,
        pending="3m",
        severity="critical",
        team="contact-centre-ops",
        summary="oldest waiting contact has waited {{ humanizeDuration $values.A.Value }}",
        description=(
            "The oldest contact waiting in queue {{ $labels.queue }} on {{ $labels.channel }} has waited "
            "longer than the channel's service-level threshold for 3 minutes: nobody is picking it up."
        ),
        runbook_anchor="oldest-waiting-contact",
    ),
)


def _rule(spec: AlertSpec) -> alerting.Rule:
    query = (
        alerting.Query("A")
        .datasource_uid(q.CLICKHOUSE_UID)
        .relative_time_range(alerting_models.RelativeTimeRange(from_val=spec.window_seconds, to=0))
        .model(ClickHouseQuery().raw_sql(spec.query.sql).query_type("table").ref_id("A"))
    )
    threshold = (
        alerting.Query("B")
        .datasource_uid("__expr__")
        .model(
            expr_builders.TypeThreshold()
            .ref_id("B")
            .expression("A")
            .datasource(dashboard_models.DataSourceRef(type_val="__expr__", uid="__expr__"))
            .conditions(
                [
                    expr_builders.ExprTypeThresholdConditions().evaluator(
                        expr_builders.ExprTypeThresholdConditionsEvaluator().type(spec.op).params([spec.threshold])
                    )
                ]
            )
        )
    )
    return (
        alerting.Rule(spec.title)
        .uid(spec.uid)
        .condition("B")
        .with_query(query)
        .with_query(threshold)
        .for_val(spec.pending)
        .no_data_state("OK")
        .exec_err_state("Error")
        .labels({"severity": spec.severity, "team": spec.team, "source": "touchline-clickhouse"})
        .annotations(
            {
                "summary": SUMMARY_PREFIX + spec.summary,
                "description": spec.description,
                "runbook_url": RUNBOOK.format(anchor=spec.runbook_anchor),
                "__dashboardUid__": "touchline-sla" if "sla" in spec.uid else "touchline-realtime",
            }
        )
    )


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=JSONEncoder))


def _provisioned_rule(spec: AlertSpec) -> dict[str, Any]:
    """A rule in the file-provisioning shape (the API shape minus folder/group/org, which the group holds)."""
    rule: dict[str, Any] = _json(_rule(spec).build())
    for key in ("folderUID", "ruleGroup", "orgID"):
        rule.pop(key, None)
    return rule


def contact_point() -> dict[str, Any]:
    built: dict[str, Any] = _json(
        alerting.ContactPoint()
        .name(CONTACT_POINT)
        .uid("touchline-pager-webhook")
        .type("webhook")
        .settings({"url": f"${PAGER_URL_ENV}", "httpMethod": "POST"})
        .disable_resolve_message(False)
        .build()
    )
    name = built.pop("name")
    return {"orgId": 1, "name": name, "receivers": [built]}


def notification_policy() -> dict[str, Any]:
    def route(severity: str, repeat: str) -> alerting.NotificationPolicy:
        return (
            alerting.NotificationPolicy()
            .receiver(CONTACT_POINT)
            .object_matchers([["severity", "=", severity]])
            .repeat_interval(repeat)
        )

    built: dict[str, Any] = _json(
        alerting.NotificationPolicy()
        .receiver(CONTACT_POINT)
        .group_by(GROUP_BY)
        .group_wait("30s")
        .group_interval("5m")
        .repeat_interval("4h")
        .routes([route("critical", "1h"), route("warning", "4h")])
        .build()
    )
    return {"orgId": 1, **built}


def provisioning() -> dict[str, Any]:
    """The whole alerting provisioning document."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": GROUP,
                "folder": FOLDER,
                "interval": GROUP_INTERVAL,
                "rules": [_provisioned_rule(spec) for spec in ALERTS],
            }
        ],
        "contactPoints": [contact_point()],
        "policies": [notification_policy()],
    }

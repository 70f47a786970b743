"""The topics Faust declares for the journey stage (its tables' changelogs, the assignor's leader
topic) exist before its consumer joins the group: created by the worker itself, with the partitions
and compaction Faust would give them. Faust creating them concurrently with the join once left a
changelog out of the worker's assignment (session 43: "Ignoring missing topic
'...-journey-builder-meta-changelog'", then every lookup through that builder answered 503)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka.admin import ConfigResource

from pipeline.config import Settings
from pipeline.topics import admin_client
from pipeline.worker.app import declare_faust_topics, faust_app
from pipeline.worker.journey_agent import install_journey_stage
from pipeline.worker.journey_split_agent import install_split_journey_stage

pytestmark = pytest.mark.integration

# the tables each stage declares (journey_agent.py, journey_split_agent.py), with their partitions
SINGLE = {"journey-identity": 1, "journey-contacts": 1, "journey-emitted": 1}
SPLIT = {
    "journey-resolver-identity": 1,
    "journey-resolver-customers": 1,
    "journey-resolver-contacts": 1,
    "journey-resolver-meta": 1,
    "journey-builder-contacts": 4,
    "journey-builder-emitted": 4,
    "journey-builder-meta": 4,
}


@pytest.mark.parametrize(("builders", "tables"), [(0, SINGLE), (4, SPLIT)], ids=["single", "split"])
def test_the_journey_stages_topics_exist_before_faust_starts(
    kafka: str, tmp_path: Path, builders: int, tables: dict[str, int]
) -> None:
    app_id = f"touchline-topics-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=kafka, app_id=app_id, data_dir=tmp_path / "data", journey_builders=builders
    )
    app = faust_app(settings, tmp_path / "faust")
    events = app.topic(settings.topics.journey_events, value_serializer="raw", key_serializer="raw")
    install = install_split_journey_stage if builders else install_journey_stage
    install(app, None, None, events, settings)  # type: ignore[arg-type]  # declared only: no store used
    wanted = {f"{app_id}-{table}-changelog": n for table, n in tables.items()}

    declare_faust_topics(app, settings)  # what the worker does before Faust starts

    admin = admin_client(kafka, 30)
    try:
        found = {
            t["name"]: len(t["partitions"]) for t in admin.describe_topics([*wanted, f"{app_id}-__assignor-__leader"])
        }
        described = admin.describe_configs([ConfigResource("TOPIC", name) for name in wanted])
        policies = {name: described["topic"][name]["cleanup.policy"]["value"] for name in wanted}
    finally:
        admin.close()
    assert found == {**wanted, f"{app_id}-__assignor-__leader": 1}
    assert policies == dict.fromkeys(wanted, "compact")

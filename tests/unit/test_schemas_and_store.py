from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.events.jsonschema import drift, generate
from pipeline.events.models import EVENT_ADAPTER, MODEL_BY_TYPE, SurveyResponse, Transferred, to_json
from pipeline.store.migrations import Migration, discover, migrate
from pipeline.store.readonly import open_readonly, run_readonly
from pipeline.store.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, dead_letter_row, event_row


def test_committed_json_schemas_match_the_models() -> None:
    assert drift() == [], "run `touchline generate` and commit schemas/events/"


def test_every_property_of_every_schema_is_documented() -> None:
    def walk(node: object, path: str) -> list[str]:
        missing: list[str] = []
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if "description" not in prop:
                    missing.append(f"{path}.{name}")
            for key, child in node.items():
                missing += walk(child, f"{path}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                missing += walk(child, f"{path}[{i}]")
        return missing

    for name, content in generate().items():
        schema = json.loads(content)
        assert walk(schema, name) == []
        if name != "interaction_event.json":
            assert schema.get("description"), f"{name} has no description"
    assert len(MODEL_BY_TYPE) == 21


def test_schema_file_validates_like_the_model() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(generate()["interaction_event.json"])
    event = Transferred(
        event_id="t",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        channel="chat",
        contact_id="c",
        to_queue="tech",
    )
    jsonschema.validate(json.loads(to_json(event)), schema)


def test_migration_statements_split_on_semicolon_lines() -> None:
    migration = Migration("x.sql", "-- comment\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\n-- only a comment\n")
    assert migration.statements() == ["-- comment\nCREATE TABLE a (x UInt8)\nENGINE = Memory"]


def test_migrations_apply_once_and_refuse_edits(clickhouse: Client, tmp_path: Path) -> None:
    assert migrate(clickhouse) == []  # the fixture applied them already
    names = [m.name for m in discover()]
    recorded = {r[0] for r in clickhouse.query("SELECT name FROM schema_migrations").result_rows}
    assert set(names) <= recorded
    edited = [Migration(names[0], "SELECT 2;")]
    with pytest.raises(Exception, match="changed after it was applied"):
        migrate(clickhouse, edited)


def test_row_layouts_match_the_ddl(clickhouse: Client) -> None:
    def columns(table: str) -> tuple[str, ...]:
        rows = clickhouse.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
            parameters={"t": table},
        ).result_rows
        return tuple(r[0] for r in rows)

    assert columns("interaction_events") == EVENT_COLUMNS
    assert columns("dead_letters") == DEAD_LETTER_COLUMNS


def test_rows_round_trip_through_clickhouse(clickhouse: Client) -> None:
    event = EVENT_ADAPTER.validate_python(
        {
            "type": "survey_response",
            "event_id": "round-trip-1",
            "occurred_at": "2026-03-01T09:15:02.251Z",
            "channel": "sms",
            "contact_id": "c-9",
            "customer": {"phone": "+441234"},
            "survey": "nps",
            "score": 9,
        }
    )
    assert isinstance(event, SurveyResponse)
    now = datetime.now(UTC)
    clickhouse.insert(
        "interaction_events",
        [event_row(event, "touchline.interactions.sms", 2, 77, now)],
        column_names=list(EVENT_COLUMNS),
    )
    bad = b"\xff\x00 not json"
    clickhouse.insert(
        "dead_letters",
        [dead_letter_row(now, "touchline.interactions.sms", 2, 78, "not_json", "nope", b"k", bad)],
        column_names=list(DEAD_LETTER_COLUMNS),
    )
    row = clickhouse.query(
        "SELECT toString(occurred_at), phone, JSONExtractInt(details, 'score'), details FROM interaction_events WHERE event_id = 'round-trip-1'"
    ).result_rows[0]
    assert row == ("2026-03-01 09:15:02.251", "+441234", 9, '{"survey":"nps","score":9}')
    # the store is shared by the session's tests: other dead letters may sit at offset 78 too
    raw = clickhouse.query(
        "SELECT hex(raw), raw_size FROM dead_letters WHERE source_topic = 'touchline.interactions.sms'"
        " AND source_partition = 2 AND source_offset = 78 AND detail = 'nope'"
    ).result_rows[0]
    assert raw == (bad.hex().upper(), len(bad))


def test_readonly_client_refuses_writes(clickhouse: Client) -> None:
    dsn = clickhouse_dsn(clickhouse)
    reader = open_readonly(dsn, "touchline_test")
    assert run_readonly(reader, "SELECT 1 AS one") == (["one"], [[1]])
    for statement in (
        "DROP TABLE dead_letters",
        "INSERT INTO dead_letters (reason) VALUES ('x')",
        "SET readonly = 0",
    ):
        with pytest.raises(Exception, match="readonly"):
            run_readonly(reader, statement)
        with pytest.raises(Exception, match="readonly"):
            reader.query(statement)  # the engine refuses too, without the statement check
    # the writer is unaffected
    assert clickhouse.query("SELECT count() FROM dead_letters").result_rows[0][0] >= 0
    clickhouse.command("CREATE TABLE IF NOT EXISTS scratch (x UInt8) ENGINE = Memory")
    clickhouse.command("DROP TABLE scratch")


def clickhouse_dsn(client: Client) -> str:
    path = client.query("SELECT 1").summary  # noqa: F841 - keeps the engine warm
    from pipeline.store import clickhouse as store

    return next(dsn for (dsn, _db), c in store._clients.items() if c is client)


def test_readme_kpi_table_is_generated_from_the_definitions() -> None:
    from pipeline.kpi import docs
    from pipeline.kpi.definitions import KPIS

    readme = docs.README.read_text()
    assert docs.with_table(readme) == readme, "run `touchline generate`"
    for kpi in KPIS:
        assert f"| `{kpi.name}` |" in readme

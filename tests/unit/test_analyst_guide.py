"""The analyst guide (`schemas/README.md`) is accurate and its examples run.

1. Every table and view the guide documents exists after the migrations, with exactly the columns
   (names and types) the guide's column tables list; every table and view of the schema is documented.
2. Every `sql` block of the guide runs on a read-only connection (`open_readonly`, as `touchline sql`
   uses) against rows written by the pipeline's own stages, and returns rows.
3. The read-only analyst role (`schemas/clickhouse/optional/0100_analyst_role.sql`). Embedded chDB
   has no writable access storage (only `users_xml`) and its `default` user lacks ACCESS MANAGEMENT,
   so `CREATE ROLE` / `CREATE SETTINGS PROFILE` / `GRANT` are refused there and nobody can log in as
   another user. What is proven here instead: the file is what `discover(include_optional=True)`
   applies and only then; it grants nothing but SELECT, on the migrated database only; its profile
   pins `readonly = 2` with a CONST constraint and is attached to the role (and to the commented user
   template); and on this engine a session in `readonly = 2` (the profile's setting) still reads and
   tunes query settings but cannot INSERT, DROP, CREATE, ALTER, TRUNCATE or switch `readonly` off.
   Not proven here: that a server enforces the role for a logged-in user (needs a ClickHouse server). If a future chDB accepts the role
   statements, the test applies them and checks `SHOW GRANTS` instead of skipping that part.

The rows come from an in-process run of the pipeline's transport-free parts (simulator with
duplicates, late and malformed messages -> decode -> `interaction_events` / `dead_letters`; the
worker's `Stages` -> `kpi_minute_partials` and `sla_events`; the journey `Stitcher` -> `journeys` and
`journey_steps`), written in batches as the worker writes them, so re-emitted KPI windows, journey
versions and redelivered duplicates (those not collapsed within their own insert) are present unmerged. The run covers the last few days (so the guide's
`now() - INTERVAL ...` filters find it) and its rows are deleted at the end.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.ingest.decode import Rejection, decode
from pipeline.journeys import Stitcher, journey_row, step_rows
from pipeline.kpi.rows import PARTIAL_COLUMNS
from pipeline.kpi.settings import KpiConfig
from pipeline.simulator import delivered
from pipeline.simulator.faults import FaultConfig, FaultInjector
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.sla.clock import SLA_EVENT_COLUMNS
from pipeline.sla.policy import load_policies
from pipeline.store.clickhouse import insert_dicts, insert_rows
from pipeline.store.migrations import SCHEMA_DIR, Migration, discover
from pipeline.store.readonly import open_readonly, run_readonly
from pipeline.store.rows import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, dead_letter_row, event_row
from pipeline.times import to_ms
from pipeline.worker.stages import Stages, kpi_records, sla_records

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "schemas" / "README.md"
ROLE_FILE = SCHEMA_DIR / "optional" / "0100_analyst_role.sql"
POLICIES = ROOT / "deploy" / "sla-policies.yaml"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DATABASE = "touchline_test"
PARTITIONS = 2
BATCH = 400  # messages per flush, as the worker's sink cuts batches


# --------------------------------------------------------------------------------------------------
# The fill: an in-process pipeline run


@dataclass(frozen=True)
class Run:
    tag: str
    start: datetime
    end: datetime


def _at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def pipeline_run(client: Client, *, contacts: int = 320, seed: int = 11, start: datetime | None = None) -> Run:
    """Simulate `contacts` contacts from `start` (default: three days ago, on the hour) and write what
    the worker would write. Event time drives everything (SLA clock in `event` mode), so the rows do
    not depend on how fast this runs."""
    if start is None:
        start = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    config = SimConfig(
        seed=seed,
        start_ms=to_ms(start),
        duration_ms=2 * 86_400_000,
        max_contacts=contacts,
        rate=200,
        customers=40,
    )
    sim = Simulation(config)
    injector = FaultInjector(
        FaultConfig(duplicate_rate=0.03, late_rate=0.03, max_lateness_s=900, bad_rate=0.01), seed, sim.tag
    )
    stages = Stages(KpiConfig(), load_policies(POLICIES), app_id="guide", sla_clock="event")
    stitcher = Stitcher()
    events: list[tuple[Any, ...]] = []
    dead: list[tuple[Any, ...]] = []
    sla: list[tuple[Any, ...]] = []
    offsets: dict[tuple[str, int], int] = {}
    seen: set[str] = set()
    newest_ms = 0
    wall = start

    def flush(now: datetime) -> None:
        kpis = kpi_records(stages.emit_kpis(now))
        sla.extend(sla_records(stages.tick_sla(now), now))
        changed = stitcher.changes(as_of=newest_ms or None)
        insert_rows(client, "interaction_events", EVENT_COLUMNS, events)
        insert_rows(client, "dead_letters", DEAD_LETTER_COLUMNS, dead)
        insert_rows(client, "sla_events", SLA_EVENT_COLUMNS, sla)
        insert_rows(client, "kpi_minute_partials", PARTIAL_COLUMNS, kpis)
        insert_dicts(client, "journeys", [journey_row(v) for v in changed])
        insert_dicts(client, "journey_steps", [r for v in changed for r in step_rows(v)])
        for buffer in (events, dead, sla):
            buffer.clear()

    for count, message in enumerate(delivered(sim, injector), start=1):
        partition = zlib.crc32(message.key or b"") % PARTITIONS
        key = (message.topic, partition)
        offset = offsets.get(key, 0)
        offsets[key] = offset + 1
        wall = max(wall, _at(message.deliver_ms))
        decoded = decode(message.value, message.topic, 1_000_000)
        if isinstance(decoded, Rejection):
            dead.append(
                dead_letter_row(
                    wall,
                    message.topic,
                    partition,
                    offset,
                    decoded.reason.value,
                    decoded.detail,
                    message.key,
                    message.value,
                )
            )
        else:
            # a redelivered duplicate is written again (the sink's dedup cache is per process), but
            # the stateful stages see each event once
            latency = timedelta(milliseconds=35 + (count * 37) % 400)
            events.append(event_row(decoded, message.topic, partition, offset, wall + latency))
            if decoded.event_id not in seen:
                seen.add(decoded.event_id)
                state = stages.partitions.get(key) or stages.partitions.setdefault(key, stages.new_state(key))
                stages.apply(state, decoded, offset, wall)
                stitcher.observe(decoded)
                newest_ms = max(newest_ms, int(decoded.occurred_at.timestamp() * 1000))
        if count % BATCH == 0:
            flush(wall)
    # the partitions go idle: watermarks pass every window and deadline
    end = max(wall, _at(sim.as_of_ms)) + timedelta(hours=1)
    flush(end)
    return Run(sim.tag, start, end)


def delete_run(client: Client, run: Run) -> None:
    since = run.start - timedelta(days=1)
    until = run.end + timedelta(days=1)
    where = {
        "interaction_events": f"position(contact_id, '{run.tag}') > 0",
        "sla_events": f"position(contact_id, '{run.tag}') > 0",
        "journeys": f"position(journey_id, '{run.tag}') > 0",
        "journey_steps": f"position(journey_id, '{run.tag}') > 0",
        "kpi_minute_partials": "window_start BETWEEN {since:DateTime64(3)} AND {until:DateTime64(3)}",
        "dead_letters": "received_at BETWEEN {since:DateTime64(3)} AND {until:DateTime64(3)}"
        " AND source_partition < {partitions:UInt16}",
    }
    for table, condition in where.items():
        client.command(
            f"DELETE FROM {table} WHERE {condition}",
            parameters={"since": since, "until": until, "partitions": PARTITIONS},
        )


@pytest.fixture(scope="module")
def filled(clickhouse: Client) -> Iterator[Client]:
    run = pipeline_run(clickhouse)
    try:
        yield clickhouse
    finally:
        delete_run(clickhouse, run)


# --------------------------------------------------------------------------------------------------
# The guide, parsed

_HEADING = re.compile(r"^(#{2,3}) (.*)$")
_OBJECT = re.compile(r"`([a-z_0-9]+)`")
_COLUMN_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| (.+) \|$")
_SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def documented_objects(text: str) -> dict[str, list[tuple[str, str]]]:
    """`### \\`name\\`[, \\`name\\`…]` sections under "## Tables and views" -> their (column, type) rows."""
    objects: dict[str, list[tuple[str, str]]] = {}
    current: list[str] = []
    in_section = False
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            level, title = heading.groups()
            if level == "##":
                in_section = title == "Tables and views"
                current = []
            elif in_section:
                current = _OBJECT.findall(title)
                for name in current:
                    objects[name] = []
            continue
        row = _COLUMN_ROW.match(line)
        if row and current:
            name, kind, meaning = row.groups()
            assert meaning.strip(), f"column {name} of {current} has no meaning"
            for obj in current:
                objects[obj].append((name, kind))
    return objects


def sql_examples(text: str) -> list[str]:
    return [block.strip() for block in _SQL_BLOCK.findall(text)]


def test_guide_parses() -> None:
    text = GUIDE.read_text()
    objects = documented_objects(text)
    assert len(objects) >= 15, sorted(objects)
    assert all(columns for columns in objects.values()), [o for o, c in objects.items() if not c]
    examples = sql_examples(text)
    assert len(examples) >= 12
    assert text.count("What it answers:") >= 12


# --------------------------------------------------------------------------------------------------
# (1) every documented table, view and column exists; everything that exists is documented


def _schema(client: Client) -> dict[str, list[tuple[str, str]]]:
    rows = client.query(
        "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() ORDER BY table, position"
    ).result_rows
    schema: dict[str, list[tuple[str, str]]] = {}
    for table, name, kind in rows:
        schema.setdefault(table, []).append((name, kind))
    return schema


def test_every_documented_table_and_column_exists(clickhouse: Client) -> None:
    assert clickhouse.query("SELECT currentDatabase()").result_rows[0][0] == DATABASE
    documented = documented_objects(GUIDE.read_text())
    schema = _schema(clickhouse)
    missing = sorted(set(documented) - set(schema))
    assert not missing, f"the guide documents tables/views that do not exist: {missing}"
    for name, columns in documented.items():
        actual = schema[name]
        assert [c for c, _ in columns] == [c for c, _ in actual], f"{name}: guide columns differ from the schema"
        wrong_types = [(c, t, dict(actual)[c]) for c, t in columns if dict(actual)[c] != t]
        assert not wrong_types, f"{name}: (column, guide type, real type) {wrong_types}"
    # everything the migrations create is documented (other tests' scratch tables aside)
    created = {
        m.group(1)
        for migration in discover()
        for m in re.finditer(r"CREATE (?:TABLE|VIEW) IF NOT EXISTS (\w+)", migration.sql)
    }
    dropped = {
        m.group(1)
        for migration in discover()
        for m in re.finditer(r"DROP (?:TABLE|VIEW) IF EXISTS (\w+)", migration.sql)
    }
    undocumented = sorted((created - dropped | {"schema_migrations"}) - set(documented))
    assert not undocumented, f"not in the guide: {undocumented}"


# --------------------------------------------------------------------------------------------------
# (2) every example runs, read-only, on pipeline-written rows


def _dsn(client: Client) -> str:
    from pipeline.store import clickhouse as store

    return next(dsn for (dsn, _db), known in store._clients.items() if known is client)


@pytest.fixture(scope="module")
def reader(filled: Client) -> Client:
    return open_readonly(_dsn(filled), DATABASE)


@pytest.mark.parametrize("index", range(len(sql_examples(GUIDE.read_text()))))
def test_guide_example_runs_on_pipeline_rows(reader: Client, index: int) -> None:
    sql = sql_examples(GUIDE.read_text())[index]
    columns, rows = run_readonly(reader, sql)
    title = sql.splitlines()[0]
    assert columns, title
    assert rows, f"example {index} returned no rows on a pipeline run:\n{sql}"


def test_fill_has_what_the_guide_talks_about(filled: Client) -> None:
    """The run behind the examples has every kind of row the guide explains."""
    one = lambda sql: filled.query(sql).result_rows[0][0]  # noqa: E731
    assert one("SELECT count() FROM dead_letters FINAL") > 0
    assert one("SELECT count() FROM sla_events FINAL WHERE kind = 'breached'") > 0
    assert one("SELECT count() FROM sla_events FINAL WHERE kind = 'met' AND seconds_late > 0") > 0
    assert one("SELECT count() FROM journeys WHERE version > 1") > 0, "journeys were re-versioned"
    assert one("SELECT count() FROM kpi_minute_partials WHERE NOT final") > 0, "KPI windows were re-emitted"
    assert one("SELECT countIf(event_type = 'survey_response') FROM interaction_events FINAL") > 0
    assert one("SELECT count() FROM journeys FINAL WHERE is_deleted = 0 AND starts_with_bot = 1") > 0


# --------------------------------------------------------------------------------------------------
# (3) the read-only analyst role


def _role_migration() -> Migration:
    [migration] = [m for m in discover(include_optional=True) if m.name == ROLE_FILE.name]
    return migration


def _normalised(client: Client, statement: str) -> str:
    """The statement as ClickHouse's own parser reads it (fails on a syntax error)."""
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0])


def test_role_migration_is_optional_only() -> None:
    assert ROLE_FILE.name not in {m.name for m in discover()}
    assert _role_migration().sql == ROLE_FILE.read_text()


def test_role_grants_only_select_and_pins_readonly(clickhouse: Client) -> None:
    statements = [_normalised(clickhouse, s) for s in _role_migration().statements()]
    kinds = [re.match(r"(CREATE SETTINGS PROFILE|CREATE ROLE|GRANT)\b", s) for s in statements]
    assert all(kinds), f"unexpected statements: {statements}"
    grants = [s for s in statements if s.startswith("GRANT")]
    assert grants == ["GRANT SELECT ON * TO touchline_analyst"], grants  # `*`: the migrated database only
    [profile] = [s for s in statements if s.startswith("CREATE SETTINGS PROFILE")]
    assert "`touchline_analyst_profile`" in profile
    assert re.search(r"\breadonly = 2 CONST\b", profile), profile
    assert re.search(r"\ballow_ddl = 0 CONST\b", profile), profile
    assert " TO " not in profile  # attached through the role, not to everyone
    [role] = [s for s in statements if s.startswith("CREATE ROLE")]
    assert role == "CREATE ROLE IF NOT EXISTS touchline_analyst SETTINGS PROFILE `touchline_analyst_profile`"
    # the commented user template parses too, keeps a placeholder password and gets role and profile
    text = ROLE_FILE.read_text()
    template = "\n".join(line.removeprefix("--").strip() for line in text[text.index("-- CREATE USER") :].splitlines())
    create_user, grant_role = (part.strip() for part in template.split(";") if part.strip())
    user = _normalised(clickhouse, create_user)
    assert "BY '<choose-a-password>'" in user
    assert "DEFAULT ROLE touchline_analyst" in user
    assert "SETTINGS PROFILE `touchline_analyst_profile`" in user
    assert _normalised(clickhouse, grant_role).startswith("GRANT touchline_analyst TO ")


def test_role_on_this_engine(clickhouse: Client) -> None:
    """Embedded chDB refuses access-control DDL (no writable access storage, no ACCESS MANAGEMENT for
    its only user). Should a chDB ever accept it, check what the role really got, then clean up."""
    statements = _role_migration().statements()
    try:
        for statement in statements:
            clickhouse.command(statement)
    except Exception as error:
        assert re.search(r"ACCESS_DENIED|ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND|UNKNOWN_ROLE", str(error)), error
        return
    try:
        grants = [row[0] for row in clickhouse.query("SHOW GRANTS FOR touchline_analyst").result_rows]
        assert grants == [f"GRANT SELECT ON {DATABASE}.* TO touchline_analyst"], grants
    finally:
        clickhouse.command("DROP ROLE IF EXISTS touchline_analyst")
        clickhouse.command("DROP SETTINGS PROFILE IF EXISTS touchline_analyst_profile")


def test_readonly_2_refuses_writes_and_keeps_itself(clickhouse: Client) -> None:
    """What the profile's `readonly = 2` does, on this engine: a session in that mode reads and may
    tune query settings, but cannot write, change the schema, or switch `readonly` off."""
    import clickhouse_connect

    session = clickhouse_connect.get_client(dsn=_dsn(clickhouse), database=DATABASE)
    try:
        session.command("SET readonly = 2")
        session.command("SET max_execution_time = 60")  # allowed in mode 2 (Grafana sends settings)
        assert session.query("SELECT count() >= 0 FROM interaction_events").result_rows == [(True,)]
        for statement in (
            "INSERT INTO dead_letters (reason) VALUES ('analyst')",
            "DROP TABLE dead_letters",
            "TRUNCATE TABLE dead_letters",
            "ALTER TABLE dead_letters DELETE WHERE 1",
            "CREATE TABLE analyst_scratch (x UInt8) ENGINE = Memory",
            "SET readonly = 0",
        ):
            with pytest.raises(Exception, match=r"READONLY|readonly"):
                session.command(statement)
        assert session.query("SELECT getSetting('readonly')").result_rows == [(2,)]
    finally:
        session.close()
    assert clickhouse.query("SELECT count() FROM dead_letters WHERE reason = 'analyst'").result_rows == [(0,)]

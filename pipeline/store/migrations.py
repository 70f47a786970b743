"""Applies the ordered SQL files in `schemas/clickhouse/` once each, recording them in
`schema_migrations`. The same files run on embedded chDB and on a ClickHouse server."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from pipeline.resources import data_path

SCHEMA_DIR = data_path("schemas", "clickhouse")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree ORDER BY name
"""


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """Statements split on lines that end with `;`, comments kept (ClickHouse ignores them)."""
        statements, current = [], []
        for line in self.sql.splitlines():
            current.append(line)
            if line.rstrip().endswith(";"):
                statements.append("\n".join(current).rstrip().rstrip(";"))
                current = []
        tail = "\n".join(current).strip()
        if tail and not all(part.strip().startswith("--") for part in tail.splitlines() if part.strip()):
            statements.append(tail)
        return [s for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def discover(directory: Path = SCHEMA_DIR, *, include_optional: bool = False) -> list[Migration]:
    """Migrations in name order. Files under `optional/` run only when asked for."""
    files = sorted(directory.glob("*.sql"))
    if include_optional:
        files += sorted((directory / "optional").glob("*.sql"))
    return [Migration(name=f.name, sql=f.read_text()) for f in files]


def applied(client: Client) -> dict[str, str]:
    client.command(_LEDGER)
    result = client.query("SELECT name, checksum FROM schema_migrations")
    return {str(name): str(checksum) for name, checksum in result.result_rows}


def migrate(client: Client, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied. A changed, already-applied file is an
    error: write a new migration instead of editing an old one."""
    migrations = discover() if migrations is None else migrations
    done = applied(client)
    ran: list[str] = []
    for migration in migrations:
        if migration.name in done:
            if done[migration.name] != migration.checksum:
                raise MigrationError(f"{migration.name} was changed after it was applied; add a new migration instead")
            continue
        for statement in migration.statements():
            try:
                client.command(statement)
            except Exception as error:
                raise MigrationError(f"{migration.name} failed: {error}") from error
        client.insert("schema_migrations", [[migration.name, migration.checksum]], column_names=["name", "checksum"])
        ran.append(migration.name)
    return ran

"""`touchline sql` output and routing: nothing truncated, TSV when piped, "0 rows", ClickHouse's own
error text, and a worker used only when its /health names the configured store."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_settings
from pipeline.sql_client import clickhouse_message, route, write_table, write_tsv
from tests.support.fake_http import JsonHandler, serving

REPO = Path(__file__).resolve().parents[2]


def test_table_shows_every_cell_in_full() -> None:
    out = io.StringIO()
    long = "x" * 300
    write_table(["long", "n", "maybe"], [[long, 5, None], ["short", 12345, "a\tb\nc"]], out)
    lines = out.getvalue().splitlines()
    assert long in lines[2]
    assert lines[0].split() == ["long", "n", "maybe"]
    assert lines[3].split()[1] == "12345" and lines[2].split()[1] == "5"
    assert lines[2].index("    5") > 0  # numbers right-aligned
    assert "a\\tb\\nc" in lines[3]  # one line per row
    assert lines[-1] == "(2 rows)"


def test_empty_result_prints_header_and_zero_rows() -> None:
    out = io.StringIO()
    write_table(["channel", "events"], [], out)
    assert out.getvalue().splitlines() == ["channel  events", "-------  ------", "(0 rows)"]


def test_tsv_uses_clickhouse_escaping() -> None:
    out = io.StringIO()
    write_tsv(["a", "b"], [["x\ty", None], ["back\\slash\nnew", 3]], out)
    assert out.getvalue() == "a\tb\nx\\ty\t\\N\nback\\\\slash\\nnew\t3\n"


def test_clickhouse_message_is_clickhouses_own_text() -> None:
    driver = (
        "HTTPDriver for http://ch:8123 received ClickHouse error code 62\n Code: 62. DB::Exception: Syntax error: "
        "failed at position 8 (FROM) (line 1, col 8): FROM t FORMAT Native. Expected one of: "
        + ", ".join(f"token{i}" for i in range(40))
        + ". (SYNTAX_ERROR) (version 25.8.1.1 (official build))"
    )
    message = clickhouse_message(driver)
    assert message.startswith("Code: 62. DB::Exception: Syntax error: failed at position 8 (FROM)")
    assert "FORMAT Native" not in message and "HTTPDriver" not in message and "version" not in message
    assert "token5" in message and "token6" not in message and "(34 more)" in message


class _Health(JsonHandler):
    health: dict[str, Any] = {}

    def do_GET(self) -> None:
        self.answer(200, self.health)


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[_Health]]:
    with serving(_Health) as port:
        monkeypatch.setenv("TOUCHLINE_WORKER_WEB_PORT", str(port))
        monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path / "mine"))
        monkeypatch.delenv("TOUCHLINE_CLICKHOUSE_DSN", raising=False)
        monkeypatch.delenv("TOUCHLINE_APP_ID", raising=False)
        yield _Health


def test_a_worker_holding_another_store_is_not_used(fake_worker: type[_Health], tmp_path: Path) -> None:
    fake_worker.health = {
        "status": "ok",
        "store": f"chdb://{(tmp_path / 'other' / 'clickhouse').resolve()}",
        "clickhouse_database": "touchline",
        "app_id": "touchline",
    }
    target = route(load_settings())
    assert target.worker_url is None
    assert f"reading chdb://{(tmp_path / 'mine' / 'clickhouse').resolve()}" in target.describe()
    assert "directly; ignoring it: the worker at" in target.describe()


def test_a_worker_without_identity_is_not_used(fake_worker: type[_Health]) -> None:
    fake_worker.health = {"status": "ok", "assigned_partitions": 4}
    assert route(load_settings()).worker_url is None


def test_the_worker_holding_the_configured_store_is_used(fake_worker: type[_Health], tmp_path: Path) -> None:
    settings = load_settings()
    fake_worker.health = {
        "status": "ok",
        "store": settings.clickhouse_url,
        "clickhouse_database": "touchline",
        "app_id": "touchline",
    }
    target = route(settings)
    assert target.worker_url == settings.worker_url
    assert target.describe().endswith(f"through the worker at {settings.worker_url}")


def touchline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (chDB allows one store per process), stdout piped."""
    env = {"PATH": "/usr/bin:/bin", "TOUCHLINE_DATA_DIR": str(tmp_path / "data"), "TOUCHLINE_WORKER_WEB_PORT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_sql_on_an_empty_store_prints_header_tsv_and_zero_rows(tmp_path: Path) -> None:
    assert touchline(tmp_path, "migrate").returncode == 0
    result = touchline(tmp_path, "sql", "SELECT channel, event_id FROM interaction_events")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "channel\tevent_id\n"  # piped: TSV, header even without rows
    store = f"chdb://{(tmp_path / 'data' / 'clickhouse').resolve()}"
    assert result.stderr.splitlines() == [
        f"touchline sql: reading {store} (database touchline) directly",
        "touchline sql: 0 rows",
    ]
    wide = touchline(tmp_path, "sql", "--format", "table", "SELECT repeat('y', 250) AS wide")
    assert "y" * 250 in wide.stdout and "…" not in wide.stdout and wide.stdout.endswith("(1 row)\n")
    bad = touchline(tmp_path, "sql", "SELECT nosuchcolumn FROM interaction_events")
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[-1].startswith("touchline: Code: 47. DB::Exception: Unknown expression identifier")

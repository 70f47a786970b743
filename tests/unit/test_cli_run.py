from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import load_settings
from tests.support.fake_http import JsonHandler, serving
from tools.run import run_command, simulation_start, start_fresh


@pytest.mark.parametrize(("given", "seconds"), [("1m", 60.0), ("90s", 90.0), ("60", 60.0), ("1h30m", 5400.0)])
def test_run_duration_reads_like_simulate(given: str, seconds: float) -> None:
    context = run_command.make_context("run", ["--duration", given])
    assert context.params["duration"] == seconds


def test_run_duration_rejects_nonsense_readably() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(run_command, ["--duration", "soon"])
    assert result.exit_code == 2
    assert "cannot read duration 'soon'" in result.output
    assert "Traceback" not in result.output


class _Sql(JsonHandler):
    rows: list[list[object]] = []

    def do_POST(self) -> None:
        self.body()
        self.answer(200, {"columns": ["count()", "max(occurred_at)"], "rows": self.rows})


@pytest.fixture
def worker_sql(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[_Sql]]:
    with serving(_Sql) as port:
        monkeypatch.setenv("TOUCHLINE_WORKER_WEB_PORT", str(port))
        monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path / "data"))
        yield _Sql


def test_a_fresh_store_starts_in_the_past_and_reaches_now_at_the_end(worker_sql: type[_Sql]) -> None:
    worker_sql.rows = [[0, None]]
    before = datetime.now(UTC)
    start, message = simulation_start(load_settings(), duration=60, speed=30)
    assert message.startswith("fresh store (chdb://")
    assert abs((before - start).total_seconds() - 60 * 29) < 3  # 30 min of event time, 1 min of it live


def test_a_rerun_continues_after_the_newest_stored_event(worker_sql: type[_Sql]) -> None:
    newest = datetime.now(UTC) - timedelta(minutes=3)
    worker_sql.rows = [[9283, newest.isoformat()]]
    start, message = simulation_start(load_settings(), duration=60, speed=30)
    assert start > newest and (start - newest).total_seconds() <= 1
    assert "continuing the store at chdb://" in message and "9,283 events" in message
    assert "so no event of this run is late" in message and "--fresh" in message


def test_fresh_removes_the_store_tables_and_local_kafka_but_keeps_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for part in ("clickhouse", "faust", "kafka", "logs"):
        (tmp_path / "data" / part).mkdir(parents=True)
        (tmp_path / "data" / part / "file").write_text("x")
    message = start_fresh(load_settings())
    assert message.startswith("starting fresh: removed ")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["logs"]

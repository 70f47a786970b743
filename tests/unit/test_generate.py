"""`touchline generate` is the one command for every file derived from code: it writes them all,
and `--check` names each one that differs (and fails)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pipeline import generate
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_files_match_and_check_says_so() -> None:
    assert generate.drift() == []
    result = CliRunner().invoke(main, ["generate", "--check"])
    assert result.exit_code == 0, result.output
    assert f"{len(generate.render())} generated files match their sources" in result.output


def test_every_kind_of_generated_file_is_covered() -> None:
    paths = {str(p) for p in generate.render()}
    assert "README.md" in paths
    assert "schemas/clickhouse/0003_kpi_windows.sql" in paths
    assert any(p.startswith("schemas/events/") for p in paths)
    assert any(p.startswith("grafana/dashboards/") for p in paths)
    assert "grafana/provisioning/alerting/touchline.yaml" in paths


def test_drift_names_each_differing_file_and_write_repairs_it(tmp_path: Path) -> None:
    assert {d.path for d in generate.drift(tmp_path)} == set(generate.render())  # nothing there yet
    assert set(generate.write(tmp_path)) == set(generate.render())
    assert generate.drift(tmp_path) == []
    ddl = tmp_path / "schemas/clickhouse/0003_kpi_windows.sql"
    ddl.write_text(ddl.read_text() + "-- edited by hand\n")
    board = next((tmp_path / "grafana/dashboards").glob("*.json"))
    board.unlink()
    stale = {d.path: d for d in generate.drift(tmp_path)}
    assert set(stale) == {ddl.relative_to(tmp_path), board.relative_to(tmp_path)}
    assert "new migration" in stale[ddl.relative_to(tmp_path)].note
    assert set(generate.write(tmp_path)) == set(stale)
    assert generate.drift(tmp_path) == []

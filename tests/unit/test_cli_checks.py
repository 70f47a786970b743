"""User mistakes at start: one readable line naming the cause (file and line where there is one),
never a traceback. Covers `touchline check`, `touchline config` and the startup checks of `worker`,
`migrate` and `run`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main
from tools.run import run_command

GOOD_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "sla-policies.yaml"

BAD_HOLIDAY = """\
calendars:
  uk_office:
    timezone: Europe/London
    weekly: {mon: ["08:00-18:00"]}
    holidays: [2026-12-25, 2026-13-01]
policies:
  - name: default
    resolution: 24h
"""

BAD_FIELDS = """\
calendars:
  uk: {timezone: Europe/Lunden, weekly: {mon: ["08:00-18:00"]}}
policies:
  - name: voice
    match: {channel: voice}
    first_response: 20q
  - name: rest
    resolution: 1h
    colour: red
"""


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for name in ("TOUCHLINE_CONFIG", "TOUCHLINE_CLICKHOUSE_DSN", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOUCHLINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TOUCHLINE_SLA_POLICIES_FILE", str(GOOD_POLICIES))
    yield tmp_path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def first_line(result: Result) -> str:
    return result.output.strip().splitlines()[0]


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def test_check_says_ok_for_the_shipped_configuration() -> None:
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "OK: configuration" in result.output and "OK: SLA policies" in result.output


def test_toml_syntax_error_names_file_and_line(clean_env: Path) -> None:
    (clean_env / "touchline.toml").write_text("batch_max_rows = 5\nfoo = = 3\n")
    for command in (["check"], ["config"], ["sql", "SELECT 1"]):
        result = invoke(*command)
        no_traceback(result)
        assert result.exit_code == 2
        assert "touchline.toml:2:7: the Touchline configuration file is not valid TOML: Invalid value" in first_line(
            result
        )


def test_invalid_value_in_config_file_names_its_line(clean_env: Path) -> None:
    (clean_env / "touchline.toml").write_text("batch_max_rows = 0\n\nworker_web_port = 'x'\n")
    result = invoke("check")
    no_traceback(result)
    assert result.exit_code == 2
    assert "touchline.toml:1: batch_max_rows: Input should be greater than or equal to 1" in result.output
    assert "touchline.toml:3: worker_web_port" in result.output


def test_bad_holiday_date_names_file_line_and_cause(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = clean_env / "sla.yaml"
    policies.write_text(BAD_HOLIDAY)
    monkeypatch.setenv("TOUCHLINE_SLA_POLICIES_FILE", str(policies))
    result = invoke("check")
    no_traceback(result)
    assert result.exit_code == 2
    assert f"{policies}:5: not valid YAML: invalid date '2026-13-01': month must be in 1..12" in result.output
    # the worker checks the file before it touches Kafka (no broker runs here)
    result = invoke("worker")
    no_traceback(result)
    assert result.exit_code == 2
    assert first_line(result).startswith(f"touchline: invalid SLA policies: {policies}:5: not valid YAML: invalid date")


def test_policy_problems_point_at_their_lines(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = clean_env / "sla.yaml"
    policies.write_text(BAD_FIELDS)
    monkeypatch.setenv("TOUCHLINE_SLA_POLICIES_FILE", str(policies))
    result = invoke("check")
    assert result.exit_code == 2
    lines = [line.strip().removeprefix("touchline: SLA policies are invalid: ") for line in result.output.splitlines()]
    assert lines == [
        f"{policies}:2: calendar 'uk': timezone: unknown IANA time zone 'Europe/Lunden' "
        "(e.g. Europe/London, America/New_York)",
        f"{policies}:6: policy 'voice' (#1): first_response: invalid duration '20q': use a number with a unit, "
        "e.g. 20s, 15m, 24h, 2d, 1h30m",
        f"{policies}:9: policy 'rest' (#2): unknown key 'colour'",
    ]


def test_config_prints_values_sources_and_masks_passwords(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "touchline.toml").write_text("# tuning\nbatch_max_rows = 1234\n")
    monkeypatch.setenv("TOUCHLINE_CLICKHOUSE_DSN", "https://analyst:s3cr%40t%23@ch.internal:8443")
    monkeypatch.setenv("TOUCHLINE_LOG_LEVEL", "debug")
    result = invoke("config")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if not line.startswith("#")}
    assert rows["batch_max_rows"] == ["1234", "touchline.toml:2"]
    assert rows["log_level"] == ["debug", "env", "TOUCHLINE_LOG_LEVEL"]
    assert rows["worker_web_port"] == ["6066", "default"]
    assert rows["clickhouse_dsn"] == ["https://analyst:***@ch.internal:8443", "env", "TOUCHLINE_CLICKHOUSE_DSN"]
    assert "s3cr" not in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_clickhouse_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_CLICKHOUSE_DSN", f"http://127.0.0.1:{free_port()}")
    result = invoke("migrate")
    no_traceback(result)
    assert result.exit_code == 1
    assert "connection refused" in first_line(result)
    assert "HTTPConnectionPool" not in result.output and "Driver Exception" not in result.output


def test_taken_web_port_is_named_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setenv("TOUCHLINE_WORKER_WEB_PORT", str(port))
        for result in (invoke("worker"), CliRunner().invoke(run_command, ["--duration", "5"])):
            no_traceback(result)
            assert result.exit_code == 1
            assert f"127.0.0.1:{port}: address already in use" in first_line(result), result.output

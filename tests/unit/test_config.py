from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings


def test_defaults_use_local_broker_and_embedded_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = load_settings()
    assert settings.uses_local_broker
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.clickhouse_url.startswith("chdb://")


def test_external_kafka_from_plain_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    settings = load_settings()
    assert not settings.uses_local_broker
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"


def test_every_problem_is_reported_readably(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_BATCH_MAX_ROWS", "0")
    monkeypatch.setenv("TOUCHLINE_CLICKHOUSE_DSN", "mysql://nope")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "TOUCHLINE_BATCH_MAX_ROWS" in message and "greater than or equal to 1" in message
    assert "TOUCHLINE_CLICKHOUSE_DSN" in message and "chdb://" in message
    assert "Traceback" not in message


def test_config_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "touchline.toml"
    config.write_text("batch_max_rows = 1234\nworker_web_port = 7000\n")
    monkeypatch.setenv("TOUCHLINE_CONFIG", str(config))
    monkeypatch.setenv("TOUCHLINE_WORKER_WEB_PORT", "7001")
    settings = load_settings()
    assert settings.batch_max_rows == 1234
    assert settings.worker_web_port == 7001


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_CONFIG", "/nonexistent/touchline.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_unknown_key_in_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "touchline.toml"
    config.write_text("batch_max_rowz = 5\n")
    monkeypatch.setenv("TOUCHLINE_CONFIG", str(config))
    with pytest.raises(ConfigError, match="batch_max_rowz"):
        load_settings()


def test_sasl_needs_credentials_and_tls_files_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TOUCHLINE_KAFKA_SSL_CAFILE", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "SASL_SSL needs kafka_sasl_username and kafka_sasl_password" in message
    assert "kafka_ssl_cafile: no such file" in message


def test_security_settings_map_to_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    from pipeline.kafka_security import client_options, faust_credentials

    monkeypatch.setenv("TOUCHLINE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TOUCHLINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TOUCHLINE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("TOUCHLINE_KAFKA_SASL_PASSWORD", "p@ss")
    settings = load_settings()
    assert client_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "p@ss",
    }
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert "p@ss" not in repr(settings)
    monkeypatch.delenv("TOUCHLINE_KAFKA_SECURITY_PROTOCOL")
    assert client_options(load_settings()) == {} and faust_credentials(load_settings()) is None


def test_readme_configuration_table_is_generated_from_the_settings_model() -> None:
    from pipeline import config_docs
    from pipeline.config import Settings

    readme = config_docs.README.read_text()
    assert config_docs.with_table(readme) == readme, "README configuration table drifted: run `touchline generate`"
    assert config_docs.undocumented() == []
    table = readme.split(config_docs.START)[1].split(config_docs.END)[0]
    for name in Settings.model_fields:
        assert f"| `{name}` |" in table
    assert "`TOUCHLINE_WORKER_WEB_HOST`" in table


def test_schemas_check_fails_when_the_configuration_table_drifts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pipeline import config_docs, generate
    from pipeline.cli import main

    stale = tmp_path / "README.md"
    stale.write_text(config_docs.README.read_text().replace("| `batch_max_rows` |", "| `batch_rows` |"))
    assert [d.path for d in generate.drift(tmp_path) if d.path.name == "README.md"] == [Path("README.md")]
    found = generate.drift(tmp_path)
    monkeypatch.setattr(generate, "drift", lambda: found)  # the check, as if this were the repository
    result = CliRunner().invoke(main, ["generate", "--check"])
    assert result.exit_code == 1
    assert "README.md: differs from the KPI definitions and the settings model" in result.output
    assert "run `touchline generate`" in result.output


@pytest.mark.parametrize(
    ("role", "stages"),
    [
        ("all", {"ingest", "analytics", "journeys"}),
        ("ingest, analytics", {"ingest", "analytics"}),
        ("journeys", {"journeys"}),
    ],
)
def test_worker_role_names_stages(monkeypatch: pytest.MonkeyPatch, role: str, stages: set[str]) -> None:
    monkeypatch.setenv("TOUCHLINE_WORKER_ROLE", role)
    assert load_settings().worker_stages == stages


def test_unknown_worker_stage_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_WORKER_ROLE", "ingest,journey")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "TOUCHLINE_WORKER_ROLE" in str(raised.value) and "'ingest,journey'" in str(raised.value)


def test_journey_windows_reach_the_journey_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.journeys.model import DAY, JourneyConfig
    from pipeline.worker.journey_agent import journey_rules

    assert journey_rules(load_settings()) == JourneyConfig(repeat_window_ms=7 * DAY, dormancy_ms=14 * DAY)
    monkeypatch.setenv("TOUCHLINE_JOURNEY_REPEAT_WINDOW_DAYS", "0.5")
    monkeypatch.setenv("TOUCHLINE_JOURNEY_DORMANCY_DAYS", "1")
    assert journey_rules(load_settings()) == JourneyConfig(repeat_window_ms=DAY // 2, dormancy_ms=DAY)
    monkeypatch.setenv("TOUCHLINE_JOURNEY_DORMANCY_DAYS", "0")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "TOUCHLINE_JOURNEY_DORMANCY_DAYS" in str(raised.value)


def test_a_split_journey_stage_needs_durable_tables_and_identities_kept_past_its_journeys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOUCHLINE_JOURNEY_BUILDERS", "4")
    settings = load_settings()
    assert (
        settings.topics.specs(settings.topic_partitions, settings.journey_builders)[settings.topics.journey_builds] == 4
    )
    assert settings.topics.journey_builds not in settings.topics.specs(settings.topic_partitions)
    monkeypatch.setenv("TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS", "10")  # under 14 days of dormancy + 1 of keep
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "journey_identity_retention_days (10) must be at least" in str(raised.value) and "(15 days)" in str(
        raised.value
    )
    monkeypatch.setenv("TOUCHLINE_JOURNEY_IDENTITY_RETENTION_DAYS", "30")
    monkeypatch.setenv("TOUCHLINE_TABLE_STORE", "memory://")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "needs table_store rocksdb://" in str(raised.value)

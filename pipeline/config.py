"""Runtime configuration: environment variables (`TOUCHLINE_*`, plus `KAFKA_BOOTSTRAP_SERVERS`) and an
optional TOML file (`touchline.toml` in the working directory, or the path in `TOUCHLINE_CONFIG`).

Precedence, highest first: environment, config file, defaults. Settings are validated at start;
`load_settings` turns a validation failure into one readable `ConfigError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "touchline.toml"


class ConfigError(Exception):
    """Configuration is invalid; the message lists every problem, one per line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOUCHLINE_", extra="forbid", validate_default=True)

    data_dir: Path = Field(
        Path(".touchline"), description="Local state: broker data, embedded ClickHouse, worker tables."
    )
    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "TOUCHLINE_KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"
        ),
        description="Your Kafka cluster (host:port,...). Unset: the local broker that `touchline broker start` runs.",
    )
    local_kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the local broker.")
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions of each channel topic when Touchline creates it."
    )
    clickhouse_dsn: str | None = Field(
        None,
        description="`chdb://<dir>` (embedded, default `chdb://<data_dir>/clickhouse`) or `http(s)://user:pass@host:port`.",
    )
    clickhouse_database: str = Field("touchline", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    app_id: str = Field(
        "touchline", min_length=1, description="Faust app id: consumer group and internal topic prefix."
    )
    worker_web_host: str = Field("127.0.0.1")
    worker_web_port: int = Field(6066, ge=1, le=65535, description="Worker HTTP port: /metrics, /sql, lookups.")
    batch_max_rows: int = Field(5000, ge=1, le=1_000_000, description="Rows per ClickHouse insert at most.")
    batch_max_seconds: float = Field(
        1.0, gt=0, le=60, description="A batch is written at the latest this long after its first row."
    )
    max_event_bytes: int = Field(65536, ge=256, description="Larger messages are dead-lettered as oversized.")
    dedup_cache_size: int = Field(
        500_000,
        ge=0,
        description="Recent event ids remembered per worker to drop redelivered duplicates early.",
    )
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error)$")
    kpi_allowed_lateness_seconds: float = Field(
        300.0, ge=0, description="Events later than this behind their partition's newest event are late."
    )
    kpi_idle_seconds: float = Field(
        30.0, gt=0, description="A partition without events this long advances its watermark with the wall clock."
    )
    kpi_emit_seconds: float = Field(5.0, gt=0, description="How often changed KPI windows are written.")
    sla_policies_file: Path = Field(
        Path(__file__).resolve().parents[1] / "deploy" / "sla-policies.yaml", description="SLA policy YAML."
    )
    sla_clock: Literal["wall", "event"] = Field(
        "wall",
        description="`wall`: deadlines fire on the wall clock (live). `event`: on the event-time watermark (replay).",
    )
    sla_tick_seconds: float = Field(0.1, gt=0, le=5, description="How often due SLA deadlines are checked.")
    table_store: str = Field(
        "rocksdb://",
        pattern=r"^(rocksdb|memory)://",
        description="Faust table store: rocksdb:// (durable) or memory://.",
    )
    checkpoint_seconds: float = Field(60.0, gt=0, description="How often per-partition state is checkpointed.")
    worker_role: Literal["all", "ingest", "analytics"] = Field(
        "all",
        description="Stages this worker runs: `ingest` (validate, dead-letter, write raw events), `analytics` "
        "(KPI windows, SLA clocks, journeys) or `all`. Each stage has its own consumer group, so ingest and "
        "analytics workers scale separately.",
    )

    @field_validator("clickhouse_dsn")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("chdb:", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return value

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.local_kafka_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def clickhouse_url(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    @property
    def worker_url(self) -> str:
        return f"http://{self.worker_web_host}:{self.worker_web_port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("TOUCHLINE_CONFIG", DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "settings"
        env = f"TOUCHLINE_{where.upper()}" if item["loc"] else ""
        given = item.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        lines.append(f"  {where}{f' / {env}' if env else ''}: {item['msg']}{shown}")
    return "invalid Touchline configuration:\n" + "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings, raising ConfigError with every problem spelled out."""
    config_path = os.environ.get("TOUCHLINE_CONFIG")
    if config_path and not Path(config_path).is_file():
        raise ConfigError(f"invalid Touchline configuration:\n  TOUCHLINE_CONFIG: no such file {config_path!r}")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None

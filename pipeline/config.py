"""Runtime configuration: environment variables (`TOUCHLINE_*`, plus `KAFKA_BOOTSTRAP_SERVERS`) and an
optional TOML file (`touchline.toml` in the working directory, or the path in `TOUCHLINE_CONFIG`).

Precedence, highest first: environment, config file, defaults. Settings are validated at start;
`load_settings` turns a validation failure into one readable `ConfigError`.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.events.topics import DEFAULT_PREFIX, TopicNames, prefix_problem
from pipeline.resources import data_path

DEFAULT_CONFIG_FILE = "touchline.toml"
#: Settings whose values `touchline config` never prints.
SECRET_SETTINGS: frozenset[str] = frozenset()


class ConfigError(Exception):
    """Configuration is invalid; the message lists every problem, one per line."""


WORKER_STAGES = ("ingest", "analytics", "journeys")


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
        description="Your Kafka cluster (host:port,...). Unset: the local broker that `make run` (or `python -m tools.broker start`) runs.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Touchline client (worker, admin, simulator, replay) talks to Kafka. Managed "
        "clusters usually need `SASL_SSL`.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism with `SASL_PLAINTEXT` / `SASL_SSL`."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (required with SASL_*).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (required with SASL_*).")
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates (SSL / SASL_SSL). "
        "Unset: the system's trusted CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate, for brokers that require client authentication (mutual TLS)."
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of the client key, if encrypted.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Verify that the broker's certificate names the host connected to."
    )
    local_kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the local broker.")
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions of each channel topic when Touchline creates it."
    )
    clickhouse_dsn: str | None = Field(
        None,
        description="`chdb://<dir>` (embedded, default `chdb://<data_dir>/clickhouse`) or "
        "`http(s)://user:password@host:port`; URL-encode `@ / # ? % :` in the user and password (`p@ss` -> `p%40ss`).",
    )
    clickhouse_database: str = Field(
        "touchline",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="ClickHouse database of Touchline's tables (created at start if missing and allowed).",
    )
    clickhouse_user: str | None = Field(
        None, description="ClickHouse server user, if not in the DSN. Any characters: Touchline encodes it."
    )
    clickhouse_password: SecretStr | None = Field(
        None,
        description="ClickHouse server password, if not in the DSN. Any characters (`@ / # ? %`): Touchline "
        "encodes it into the URL.",
    )
    topic_prefix: str = Field(
        DEFAULT_PREFIX,
        description="Start of every Touchline topic name (`<prefix>.interactions.<channel>`, `<prefix>.sla`, "
        "...): letters, digits, `.`, `_`, `-`. Give each deployment sharing a Kafka cluster its own.",
    )
    app_id: str = Field(
        DEFAULT_PREFIX,
        min_length=1,
        description="Faust app id: consumer groups and Faust's internal topics (`<app_id>-...-changelog`). "
        "Unset: the topic_prefix.",
    )
    worker_web_host: str = Field(
        "127.0.0.1",
        description="Address the worker's HTTP server binds to and advertises to other workers for forwarded "
        "lookups: set it to this worker's own reachable address (not 0.0.0.0) when workers run on several hosts.",
    )
    worker_advertised_host: str | None = Field(
        None,
        description="Host other workers use to reach this one (forwarded journey lookups, erasures). Unset: "
        "worker_web_host. Set it when binding to 0.0.0.0, e.g. to the container's service name.",
    )
    worker_web_port: int = Field(6066, ge=1, le=65535, description="Worker HTTP port: /metrics, /sql, lookups.")
    batch_max_rows: int = Field(5000, ge=1, le=1_000_000, description="Rows per ClickHouse insert at most.")
    # 1.0 s put the end-to-end p99 at 1.5 s (make bench, 500 events/s): a row waited up to the
    # whole second in its batch. At high rates batches fill by rows first, so this costs no throughput.
    batch_max_seconds: float = Field(
        0.25, gt=0, le=60, description="A batch is written at the latest this long after its first row."
    )
    max_event_bytes: int = Field(65536, ge=256, description="Larger messages are dead-lettered as oversized.")
    dedup_cache_size: int = Field(
        500_000,
        ge=0,
        description="Recent event ids remembered per worker to drop redelivered duplicates early.",
    )
    log_level: str = Field(
        "info", pattern=r"^(?i:debug|info|warning|error)$", description="`debug`, `info`, `warning` or `error`."
    )
    kpi_allowed_lateness_seconds: float = Field(
        300.0, ge=0, description="Events later than this behind their partition's newest event are late."
    )
    kpi_idle_seconds: float = Field(
        30.0, gt=0, description="A partition without events this long advances its watermark with the wall clock."
    )
    kpi_emit_seconds: float = Field(5.0, gt=0, description="How often changed KPI windows are written.")
    sla_policies_file: Path = Field(data_path("sla-policies.yaml"), description="SLA policy YAML.")
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
    table_standby_replicas: int = Field(
        1,
        ge=0,
        le=8,
        description="Standby copies of each journey state partition that other workers keep up to date from "
        "its changelog, so one of them takes a dead worker's partition over without reading the changelog from "
        "the start. Each standby applies every state write again: 0 frees that CPU (two workers: 3,712 against "
        "1,297 records/s) at the price of a slower takeover (58.6 against 8.9 s; README, journey stage figures).",
    )
    journey_repeat_window_days: float = Field(
        7.0,
        gt=0,
        description="Repeat-contact window: a contact about the same intent within this long after a journey's "
        "resolution reopens it (and it was not resolved at first contact). Changing it applies to journeys "
        "built from then on.",
    )
    journey_dormancy_days: float = Field(
        14.0,
        gt=0,
        description="An unresolved journey without activity this long is `dormant`: a later contact starts a new "
        "journey.",
    )
    journey_keep_hours: float = Field(
        24.0,
        gt=0,
        description="Journey retention margin (event time): a journey is evicted this long after no later "
        "contact can join it (the repeat window after its resolution, or the dormancy period after its last "
        "activity when unresolved); it must exceed how late events arrive.",
    )
    journey_identity_retention_days: float = Field(
        30.0,
        gt=0,
        description="A customer none of whose contacts is in a journey any more is forgotten (identifiers "
        "released) this long after their newest event.",
    )
    journey_builders: int = Field(
        0,
        ge=0,
        le=64,
        description="0: one journey stage keeps the identity graph and builds every journey on one partition. "
        "N >= 1: the stage is split: a resolver (one partition) ties identities and routes each contact to one of "
        "N builder partitions of `<prefix>.journey-builds`, which build the journeys and spread over the workers "
        "running the `journeys` stage. The topic's partitions are created with this count; do not change it on "
        "a running deployment. Its identity retention must cover the longer journey window plus the keep.",
    )
    checkpoint_seconds: float = Field(
        10.0,
        gt=0,
        description="How often the analytics stage checkpoints: outputs flushed, changed contacts written, "
        "offsets committed. A crash re-reads at most this much of each partition.",
    )
    kpi_ended_retention_hours: float = Field(
        26.0,
        gt=0,
        description="KPI state keeps a contact this long (event time) after its first `ended`: late surveys, "
        "resolutions and reopens within it still count.",
    )
    kpi_open_retention_days: float = Field(
        0.0,
        ge=0,
        description="Drop a contact that never ended this long after its last event. 0 (default): keep open "
        "contacts however long they stay silent (exact; any other value trades exactness for memory).",
    )
    sla_closed_retention_hours: float = Field(
        24.0,
        gt=0,
        description="SLA clocks of a resolved or abandoned contact are kept this long (event time) to absorb "
        "duplicates and a reopen; a reopen after it starts a fresh resolution obligation.",
    )
    sla_open_retention_days: float = Field(
        0.0,
        ge=0,
        description="Drop the SLA clocks of an open contact silent this long. 0 (default): never (exact).",
    )
    kafka_session_timeout_seconds: float = Field(
        6.0,
        ge=6,
        le=300,
        description="Consumer-group session timeout of the channel-topic consumers: how long a dead worker "
        "holds its partitions before the group gives them to another.",
    )
    kafka_fetch_min_bytes: int = Field(
        65_536,
        ge=1,
        le=16 * 1024 * 1024,
        description="Bytes the broker gathers before it answers a channel-topic consumer's fetch (or "
        "`TOUCHLINE_KAFKA_FETCH_MAX_WAIT_MS` passes). Fewer, fuller fetches: at 5,000 events/s the ingest worker used "
        "a quarter less CPU and the broker a fifth less than with 1 byte (`make bench`'s load pass).",
    )
    kafka_fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=5_000,
        description="Longest a fetch waits for `TOUCHLINE_KAFKA_FETCH_MIN_BYTES`: what quiet traffic can add to the "
        "latency of an event.",
    )
    kafka_producer_request_timeout_seconds: float = Field(
        30.0,
        ge=1,
        le=1_200,
        description="How long the worker's producer waits for the broker to answer a produce request "
        "before it drops the connection and sends again; a batch neither delivered nor failed within "
        "two of these is reported (`/health`) and sent again. Faust's default, 1,200 s, let one "
        "unanswered request stop a stage silently for minutes.",
    )
    worker_role: str = Field(
        "all",
        description="Stages this worker runs, comma-separated: `ingest` (validate, dead-letter, write raw events), "
        "`analytics` (KPI windows, SLA clocks; forwards contacts to the journey stage), `journeys` (cross-channel "
        "journeys and lookups), or `all` (the three). Each stage has its own consumer group, so each scales "
        "separately; with embedded ClickHouse a process has a store of its own, so split stages over processes "
        "with a ClickHouse server.",
    )
    # privacy and hostile input (README "Privacy and security")
    max_event_age_days: float = Field(
        90.0, gt=0, description="Events older than this by the worker's clock are dead-lettered (implausible_time)."
    )
    max_event_ahead_seconds: float = Field(
        300.0, ge=0, description="Events further in the future than this are dead-lettered (implausible_time)."
    )
    history_since: datetime | None = Field(
        None,
        description="Replaying history: accept events back to this time (ISO-8601, e.g. 2026-01-01T00:00:00Z) "
        "instead of only max_event_age_days old.",
    )
    check_message_key: bool = Field(True, description="Dead-letter events not keyed by their contact_id (wrong_key).")
    pseudonymise: bool = Field(
        True, description="Replace customer identifiers by keyed HMAC-SHA256 pseudonyms before storing them."
    )
    pseudonymise_customer_id: bool = Field(False, description="Pseudonymise the customer id too.")
    pseudonym_key: SecretStr | None = Field(None, description="The pseudonymisation key (else pseudonym_key_file).")
    pseudonym_key_file: Path | None = Field(
        None, description="File holding the key; default <data_dir>/privacy/pseudonym.key, created on first use."
    )
    worker_token: SecretStr | None = Field(
        None,
        description="Bearer token for /sql, /journeys/lookup and /forget; required when worker_web_host is not loopback.",
    )
    sql_max_execution_seconds: float = Field(30.0, gt=0, description="Analyst queries are cancelled after this.")
    sql_max_memory_bytes: int = Field(2_000_000_000, ge=1_000_000, description="Memory one analyst query may use.")
    sql_max_result_rows: int = Field(100_000, ge=1, description="Rows one analyst query may return.")
    sql_max_result_bytes: int = Field(100_000_000, ge=1000, description="Bytes one analyst query may return.")
    sql_connections: int = Field(4, ge=1, le=64, description="Analyst queries running at once (one per connection).")

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        problems = []
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(f"{self.kafka_security_protocol} needs kafka_sasl_username and kafka_sasl_password")
        if self.kafka_security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and (
            self.kafka_ssl_cafile or self.kafka_ssl_certfile or self.kafka_ssl_keyfile
        ):
            problems.append(f"kafka_ssl_* files are set but kafka_security_protocol is {self.kafka_security_protocol}")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            problems.append("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name}: no such file {str(path)!r}")
        if (self.clickhouse_user or self.clickhouse_password) and self.clickhouse_dsn:
            if not self.clickhouse_dsn.startswith("http"):
                problems.append("clickhouse_user / clickhouse_password need an http(s):// clickhouse_dsn")
            elif "@" in urlsplit(self.clickhouse_dsn).netloc:
                problems.append("clickhouse_dsn has credentials and clickhouse_user/clickhouse_password are set")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _split_windows_fit(self) -> Settings:
        if not self.journey_builders:
            return self
        if self.table_store.startswith("memory"):
            raise ValueError(
                "journey_builders needs table_store rocksdb:// (each builder partition keeps a store of its own)"
            )
        longest = max(self.journey_repeat_window_days, self.journey_dormancy_days) + self.journey_keep_hours / 24
        if self.journey_identity_retention_days < longest:
            raise ValueError(
                f"with journey_builders set, journey_identity_retention_days "
                f"({self.journey_identity_retention_days:g}) must be at least the longer of the repeat window and "
                f"the dormancy plus the journey keep ({longest:g} days): the resolver forgets a customer only "
                "when every journey of theirs is closed"
            )
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _legal_prefix(cls, value: str) -> str:
        problem = prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _app_id_follows_prefix(self) -> Settings:
        # consumer groups and Faust's internal topics stay apart from other deployments' too
        if "app_id" not in self.model_fields_set:
            self.app_id = self.topic_prefix
        return self

    @field_validator("worker_role")
    @classmethod
    def _known_stages(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [part for part in parts if part not in (*WORKER_STAGES, "all")]
        if unknown or not parts:
            raise ValueError(f"stages are {', '.join(WORKER_STAGES)} (comma-separated) or all; got {value!r}")
        return ",".join(parts)

    @property
    def worker_stages(self) -> frozenset[str]:
        """The stages `worker_role` names (`all`: every stage)."""
        parts = set(self.worker_role.split(","))
        return frozenset(WORKER_STAGES) if "all" in parts else frozenset(parts)

    @field_validator("clickhouse_dsn")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("chdb:", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return value

    @property
    def topics(self) -> TopicNames:
        """The names of this deployment's topics."""
        return TopicNames(self.topic_prefix)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.local_kafka_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def clickhouse_url(self) -> str:
        if self.clickhouse_dsn is None:
            return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
        if self.clickhouse_user is None and self.clickhouse_password is None:
            return self.clickhouse_dsn
        # credentials given apart from the DSN: percent-encoded here, so no character of theirs can
        # end the user, the password or the host part of the URL
        parsed = urlsplit(self.clickhouse_dsn)
        user = quote(self.clickhouse_user or "default", safe="")
        password = self.clickhouse_password.get_secret_value() if self.clickhouse_password else ""
        host = parsed.netloc.rpartition("@")[2]
        return parsed._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()

    @property
    def worker_advertised_url(self) -> str:
        """How other workers reach this one."""
        return f"http://{self.worker_advertised_host or self.worker_web_host}:{self.worker_web_port}"

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


def config_file() -> Path | None:
    """The TOML file settings are read from, if there is one."""
    path = Path(os.environ.get("TOUCHLINE_CONFIG", DEFAULT_CONFIG_FILE))
    return path if path.is_file() else None


def env_names(name: str) -> tuple[str, ...]:
    """Environment variables that set the field `name`, in the order pydantic-settings tries them."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices if str(choice).isupper())
    return (f"TOUCHLINE_{name.upper()}",)


def _env_value(name: str) -> tuple[str, str] | None:
    upper = {key.upper(): key for key in os.environ}
    for variable in env_names(name):
        if variable in upper:
            return variable, os.environ[upper[variable]]
    return None


def _file_lines(path: Path, text: str) -> dict[str, int]:
    """Line of each top-level key in a TOML file (settings are flat keys)."""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"\s*([A-Za-z0-9_\-]+|\"[^\"]+\")\s*=", line)
        if match:
            lines.setdefault(match.group(1).strip('"'), number)
    return lines


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's settings and the line of each; ConfigError (file:line first) when it is not valid TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the Touchline configuration file: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        where = re.search(r"\(at line (\d+), column (\d+)\)", message)
        cause = message[: where.start()].strip() if where else message
        place = f"{path}:{where.group(1)}:{where.group(2)}" if where else str(path)
        raise ConfigError(f"{place}: the Touchline configuration file is not valid TOML: {cause}") from None
    return data, _file_lines(path, text)


def setting_sources(file_data: dict[str, Any], file_lines: dict[str, int], path: Path | None) -> dict[str, str]:
    """Where each setting's value comes from: an environment variable, the file (with its line), or the default."""
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        env = _env_value(name)
        if env is not None:
            sources[name] = f"env {env[0]}"
        elif name in file_data and path is not None:
            sources[name] = f"{path}:{file_lines.get(name, 1)}"
        else:
            sources[name] = "default"
    return sources


def _describe(error: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "settings"
        field = str(item["loc"][0]) if item["loc"] else ""
        source = sources.get(field, "")
        if source.startswith("env "):
            where += f" / {source.removeprefix('env ')}"
        elif source and source != "default":
            where = f"{source}: {where}"
        elif field in Settings.model_fields:
            where += f" / {env_names(field)[0]}"
        given = item.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "invalid Touchline configuration:\n" + "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings, raising ConfigError with every problem spelled out."""
    config_path = os.environ.get("TOUCHLINE_CONFIG")
    if config_path and not Path(config_path).is_file():
        raise ConfigError(f"invalid Touchline configuration:\n  TOUCHLINE_CONFIG: no such file {config_path!r}")
    path = config_file()
    file_data, file_lines = read_config_file(path) if path is not None else ({}, {})
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error, setting_sources(file_data, file_lines, path))) from None


def _masked(name: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    text = str(value)
    if name in SECRET_SETTINGS or isinstance(value, SecretStr):
        return "***" if text else ""
    if "://" in text:
        parsed = urlsplit(text)
        if parsed.password:
            return text.replace(f":{parsed.password}@", ":***@", 1)
    return text


def effective_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(setting, value with secrets masked, source) for every setting, in model order."""
    path = config_file()
    file_data, file_lines = read_config_file(path) if path is not None else ({}, {})
    sources = setting_sources(file_data, file_lines, path)
    rows = [(name, _masked(name, getattr(settings, name)), sources[name]) for name in Settings.model_fields]
    rows.append(("(derived) bootstrap_servers", settings.bootstrap_servers, "kafka_bootstrap_servers"))
    rows.append(("(derived) clickhouse_url", _masked("clickhouse_url", settings.clickhouse_url), "clickhouse_dsn"))
    return rows

"""What a worker process sets up from its settings before it consumes anything: the decode policy
(plausible times, message keys, pseudonyms) shared by its stages, and who may use its analyst
endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.config import ConfigError, Settings
from pipeline.ingest import decode
from pipeline.privacy import access, pseudonym
from pipeline.store.readonly import Limits


def aware(value: datetime | None) -> datetime | None:
    """A time without zone is taken as UTC (settings are written by people)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def decode_policy(settings: Settings) -> decode.Policy:
    return decode.Policy(
        max_age=timedelta(days=settings.max_event_age_days),
        max_ahead=timedelta(seconds=settings.max_event_ahead_seconds),
        history_since=aware(settings.history_since),
        check_key=settings.check_message_key,
        topics=settings.topics,
    )


def configure_worker(settings: Settings) -> None:
    """ConfigError when the worker must not start (listening beyond loopback without a token)."""
    access.configure(access.token_of(settings))
    decode.configure(decode_policy(settings))
    pseudonym.configure(pseudonymiser_of(settings))


def pseudonymiser_of(settings: Settings) -> pseudonym.Pseudonymiser | None:
    if not settings.pseudonymise:
        return None
    try:
        key = pseudonym.load_key(
            settings.pseudonym_key.get_secret_value() if settings.pseudonym_key is not None else None,
            settings.pseudonym_key_file,
            settings.data_dir / "privacy" / "pseudonym.key",
        )
    except (OSError, ValueError) as error:
        raise ConfigError(f"invalid Touchline configuration:\n  pseudonymisation key: {error}") from None
    return pseudonym.Pseudonymiser(key, customer_id=settings.pseudonymise_customer_id)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_execution_seconds=settings.sql_max_execution_seconds,
        max_memory_bytes=settings.sql_max_memory_bytes,
        max_result_rows=settings.sql_max_result_rows,
        max_result_bytes=settings.sql_max_result_bytes,
    )

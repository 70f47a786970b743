"""What a worker process sets up from its settings before it consumes anything: the decode policy
(plausible times, message keys) shared by its stages, and who may use its analyst endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.config import Settings
from pipeline.ingest import decode
from pipeline.privacy import access
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
    )


def configure_worker(settings: Settings) -> None:
    """ConfigError when the worker must not start (listening beyond loopback without a token)."""
    access.configure(access.token_of(settings))
    decode.configure(decode_policy(settings))


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_execution_seconds=settings.sql_max_execution_seconds,
        max_memory_bytes=settings.sql_max_memory_bytes,
        max_result_rows=settings.sql_max_result_rows,
        max_result_bytes=settings.sql_max_result_bytes,
    )

"""What a worker process sets up from its settings before it consumes anything: the decode policy
(plausible times, message keys). Shared by the ingest and analytics stages of the process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.config import Settings
from pipeline.ingest import decode


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
    decode.configure(decode_policy(settings))

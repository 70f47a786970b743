"""Row layouts for the raw tables, matching `schemas/clickhouse/` (a test checks the columns)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pipeline.events.models import MODEL_BY_TYPE, EventBase, event_type

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_type",
    "schema_version",
    "occurred_at",
    "channel",
    "contact_id",
    "customer_id",
    "phone",
    "email",
    "social_handle",
    "web_cookie",
    "queue",
    "priority",
    "segment",
    "intent",
    "agent_id",
    "bot_id",
    "author",
    "details",
    "source_topic",
    "source_partition",
    "source_offset",
    "ingested_at",
)

DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "received_at",
    "source_topic",
    "source_partition",
    "source_offset",
    "reason",
    "detail",
    "message_key",
    "raw",
    "raw_size",
)

_COMMON = set(EventBase.model_fields) | {"type", "author"}
_DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f in model.model_fields if f not in _COMMON) for name, model in MODEL_BY_TYPE.items()
}

RAW_LIMIT = 65536


def _detail_value(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return getattr(value, "value", value)


def event_row(event: EventBase, topic: str, partition: int, offset: int, ingested_at: datetime) -> tuple[Any, ...]:
    kind = event_type(event)
    details = {f: _detail_value(getattr(event, f)) for f in _DETAIL_FIELDS[kind]}
    ids = event.customer
    author = getattr(event, "author", None)
    return (
        event.event_id,
        kind,
        event.schema_version,
        event.occurred_at,
        event.channel.value,
        event.contact_id,
        ids.customer_id or "",
        ids.phone or "",
        ids.email or "",
        ids.social_handle or "",
        ids.web_cookie or "",
        event.queue or "",
        event.priority,
        event.segment or "",
        event.intent or "",
        event.agent_id or "",
        event.bot_id or "",
        author.value if author is not None else "",
        json.dumps(details, separators=(",", ":")) if details else "",
        topic,
        partition,
        offset,
        ingested_at,
    )


def dead_letter_row(
    received_at: datetime,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    key: bytes | None,
    value: bytes | None,
) -> tuple[Any, ...]:
    raw = value or b""
    return (received_at, topic, partition, offset, reason, detail, key or b"", raw[:RAW_LIMIT], len(raw))

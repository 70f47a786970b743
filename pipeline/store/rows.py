"""Row layouts for the raw tables, matching `schemas/clickhouse/` (a test checks the columns)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic_core import to_json

from pipeline.events.models import MODEL_BY_TYPE, EventBase

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
DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f in model.model_fields if f not in _COMMON) for name, model in MODEL_BY_TYPE.items()
}

RAW_LIMIT = 65536
KEY_LIMIT = 1024


def event_row(event: EventBase, topic: str, partition: int, offset: int, ingested_at: datetime) -> tuple[Any, ...]:
    # read through __dict__: the per-event cost of this function is the ingest path's
    fields = event.__dict__
    kind = fields["type"]
    detail_fields = DETAIL_FIELDS[kind]
    # pydantic-core serializes enums and nested models like the canonical JSON, ~8x faster than json
    details = to_json({f: fields[f] for f in detail_fields}).decode() if detail_fields else ""
    ids = fields["customer"].__dict__
    author = fields.get("author")
    return (
        fields["event_id"],
        kind,
        fields["schema_version"],
        fields["occurred_at"],
        fields["channel"].value,
        fields["contact_id"],
        ids["customer_id"] or "",
        ids["phone"] or "",
        ids["email"] or "",
        ids["social_handle"] or "",
        ids["web_cookie"] or "",
        fields["queue"] or "",
        fields["priority"],
        fields["segment"] or "",
        fields["intent"] or "",
        fields["agent_id"] or "",
        fields["bot_id"] or "",
        author.value if author is not None else "",
        details,
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
    return (
        received_at,
        topic,
        partition,
        offset,
        reason,
        detail[:4096],
        (key or b"")[:KEY_LIMIT],
        raw[:RAW_LIMIT],
        len(raw),
    )

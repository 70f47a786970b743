"""Turns one Kafka message into a validated event or a rejection with a readable reason.
Pure: no Kafka, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from pipeline.events.models import EVENT_ADAPTER, EVENT_TYPES, EventBase
from pipeline.events.topics import channel_of_topic


class Reason(StrEnum):
    EMPTY = "empty"
    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    WRONG_CHANNEL = "wrong_channel"
    INVALID = "invalid"
    UNKNOWN_TOPIC = "unknown_topic"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


def decode(value: bytes | None, topic: str, max_bytes: int) -> EventBase | Rejection:
    """Validate `value` read from `topic`. Events must be on their own channel's topic."""
    if not value:
        return Rejection(Reason.EMPTY, "message has no value")
    if len(value) > max_bytes:
        return Rejection(Reason.OVERSIZED, f"message is {len(value)} bytes; the limit is {max_bytes}")
    topic_channel = channel_of_topic(topic)
    if topic_channel is None:
        return Rejection(Reason.UNKNOWN_TOPIC, f"topic {topic!r} is not a channel topic")
    try:
        event = EVENT_ADAPTER.validate_json(value)
    except ValidationError as error:
        return _explain(value, error)
    if event.channel is not topic_channel:
        return Rejection(
            Reason.WRONG_CHANNEL,
            f"event {event.event_id} says channel {event.channel.value!r} but arrived on {topic!r}",
        )
    return event


def _explain(value: bytes, error: ValidationError) -> Rejection:
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return Rejection(Reason.NOT_JSON, f"not valid JSON: {first['msg']}")
    if first["type"] in ("dict_type", "model_attributes_type") and not first["loc"]:
        return Rejection(Reason.NOT_JSON, "JSON value is not an object")
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        given = _peek(value, "type")
        if given is None:
            return Rejection(Reason.INVALID, "field 'type' is missing")
        return Rejection(
            Reason.UNKNOWN_EVENT_TYPE,
            f"unknown event type {given!r}; known types: {', '.join(sorted(EVENT_TYPES))}",
        )
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"][1:]) or "event"
        problems.append(f"{where}: {item['msg']}")
    more = f" (+{error.error_count() - 5} more)" if error.error_count() > 5 else ""
    reason = Reason.INVALID
    if any(item["loc"][1:2] == ("channel",) and item["type"] == "enum" for item in error.errors()):
        reason = Reason.UNKNOWN_CHANNEL
    return Rejection(reason, "; ".join(problems) + more)


def _peek(value: bytes, field: str) -> object:
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed.get(field) if isinstance(parsed, dict) else None
